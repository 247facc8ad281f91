//! JSON text written the way Python's `json.dumps` writes it, which is what Hugging Face's `tojson`
//! filter produces (`", "` and `": "` separators, key order kept, non-ASCII kept unless asked).
//!
//! Models were trained on prompts printed this way, so minijinja's compact, HTML-escaping `tojson`
//! is replaced by this one.

use serde_json::Value;

/// Options of `json.dumps` that chat templates use.
#[derive(Debug, Clone, Default)]
pub(crate) struct DumpOptions {
    /// Spaces per nesting level; `None` writes everything on one line.
    pub indent: Option<usize>,
    /// Escape every non-ASCII character as `\uXXXX`.
    pub ensure_ascii: bool,
    /// Write object keys sorted.
    pub sort_keys: bool,
    /// Item and key separators; defaults to `(", ", ": ")`, or `(",", ": ")` with an indent.
    pub separators: Option<(String, String)>,
}

/// `json.dumps(value, ensure_ascii=False)`.
pub(crate) fn dumps(value: &Value) -> String {
    dumps_with(value, &DumpOptions::default())
}

/// `json.dumps(value, **options)`.
pub(crate) fn dumps_with(value: &Value, options: &DumpOptions) -> String {
    let (item_sep, key_sep) = match &options.separators {
        Some((item, key)) => (item.as_str(), key.as_str()),
        None if options.indent.is_some() => (",", ": "),
        None => (", ", ": "),
    };
    let mut writer = Writer { out: String::new(), options, item_sep, key_sep };
    writer.value(value, 0);
    writer.out
}

struct Writer<'a> {
    out: String,
    options: &'a DumpOptions,
    item_sep: &'a str,
    key_sep: &'a str,
}

impl Writer<'_> {
    fn value(&mut self, value: &Value, depth: usize) {
        match value {
            Value::Null => self.out.push_str("null"),
            Value::Bool(b) => self.out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => self.out.push_str(&n.to_string()),
            Value::String(s) => self.string(s),
            Value::Array(items) if items.is_empty() => self.out.push_str("[]"),
            Value::Array(items) => {
                self.out.push('[');
                for (i, item) in items.iter().enumerate() {
                    self.separator(i, depth + 1);
                    self.value(item, depth + 1);
                }
                self.newline(depth);
                self.out.push(']');
            }
            Value::Object(map) if map.is_empty() => self.out.push_str("{}"),
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                if self.options.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                }
                self.out.push('{');
                for (i, (key, item)) in entries.into_iter().enumerate() {
                    self.separator(i, depth + 1);
                    self.string(key);
                    self.out.push_str(self.key_sep);
                    self.value(item, depth + 1);
                }
                self.newline(depth);
                self.out.push('}');
            }
        }
    }

    fn separator(&mut self, index: usize, depth: usize) {
        if index > 0 {
            self.out.push_str(self.item_sep);
        }
        self.newline(depth);
    }

    fn newline(&mut self, depth: usize) {
        if let Some(indent) = self.options.indent {
            self.out.push('\n');
            self.out.extend(std::iter::repeat_n(' ', indent * depth));
        }
    }

    fn string(&mut self, s: &str) {
        // serde_json escapes exactly what Python does: `"`, `\`, \b \f \n \r \t, other controls as \u00xx.
        let quoted = serde_json::Value::String(s.to_owned()).to_string();
        if !self.options.ensure_ascii {
            self.out.push_str(&quoted);
            return;
        }
        for c in quoted.chars() {
            if c.is_ascii() {
                self.out.push(c);
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    self.out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_like_python() {
        let v = json!({"b": [1, 2.5, null], "a": {"x": "é\n\"", "e": {}, "l": []}, "t": true});
        assert_eq!(dumps(&v), r#"{"b": [1, 2.5, null], "a": {"x": "é\n\"", "e": {}, "l": []}, "t": true}"#);
        let indented = dumps_with(&v, &DumpOptions { indent: Some(2), ..DumpOptions::default() });
        assert_eq!(
            indented,
            "{\n  \"b\": [\n    1,\n    2.5,\n    null\n  ],\n  \"a\": {\n    \"x\": \"é\\n\\\"\",\n    \"e\": {},\n    \"l\": []\n  },\n  \"t\": true\n}"
        );
    }

    #[test]
    fn ascii_sorting_and_separators() {
        let v = json!({"z": "é😀", "a": 1});
        let opts = DumpOptions {
            ensure_ascii: true,
            sort_keys: true,
            separators: Some((",".into(), ":".into())),
            ..DumpOptions::default()
        };
        assert_eq!(dumps_with(&v, &opts), r#"{"a":1,"z":"\u00e9\ud83d\ude00"}"#);
    }
}
