//! Terminal output: print macros that never panic on a closed pipe, colors that respect `NO_COLOR` and
//! non-terminals, memory bars, byte sizes, aligned tables and tolerant reads of JSON values.

use std::io::IsTerminal;

use serde_json::Value;

/// `writeln!` to stdout; a failed write (closed pipe) becomes an error the caller returns with `?`.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

/// `write!` to stdout and flush, for text that arrives piece by piece.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        write!(stdout, $($arg)*)?;
        stdout.flush()?
    }};
}

/// `writeln!` to stderr, ignoring failures (there is nowhere left to report them).
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// Whether to color one stream.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    /// Emit ANSI escapes.
    pub color: bool,
}

impl Style {
    /// For stdout: color only on a terminal and without `NO_COLOR`.
    pub fn stdout() -> Self {
        Self { color: std::io::stdout().is_terminal() && !no_color() }
    }

    /// For stderr.
    pub fn stderr() -> Self {
        Self { color: std::io::stderr().is_terminal() && !no_color() }
    }

    fn paint(&self, code: &str, text: impl AsRef<str>) -> String {
        if self.color {
            format!("\x1b[{code}m{}\x1b[0m", text.as_ref())
        } else {
            text.as_ref().to_owned()
        }
    }

    /// Dim (heartbeats, figures).
    pub fn dim(&self, text: impl AsRef<str>) -> String {
        self.paint("2", text)
    }
    /// Bold (headings).
    pub fn bold(&self, text: impl AsRef<str>) -> String {
        self.paint("1", text)
    }
    /// Red (errors).
    pub fn red(&self, text: impl AsRef<str>) -> String {
        self.paint("31", text)
    }
    /// Green (tokens, healthy).
    pub fn green(&self, text: impl AsRef<str>) -> String {
        self.paint("32", text)
    }
    /// Yellow (warnings, lifecycle).
    pub fn yellow(&self, text: impl AsRef<str>) -> String {
        self.paint("33", text)
    }
    /// Blue (requests).
    pub fn blue(&self, text: impl AsRef<str>) -> String {
        self.paint("34", text)
    }
    /// Magenta (queen events).
    pub fn magenta(&self, text: impl AsRef<str>) -> String {
        self.paint("35", text)
    }
    /// Cyan (job status).
    pub fn cyan(&self, text: impl AsRef<str>) -> String {
        self.paint("36", text)
    }

    /// A liveness or state word colored by meaning.
    pub fn state(&self, state: &str) -> String {
        match state {
            "online" | "idle" | "ready" | "finished" | "stop" | "running" => self.green(state),
            "busy" | "loading" | "starting" | "queued" | "scheduled" | "draining" | "suspect" | "stale" => {
                self.yellow(state)
            }
            "offline" | "dead" | "failed" | "error" | "gone" | "lost" => self.red(state),
            _ => state.to_owned(),
        }
    }
}

fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// A bar `[#####-----]` of `width` cells filled to `fraction` (clamped to 0..=1).
pub fn bar(fraction: f64, width: usize) -> String {
    let fraction = if fraction.is_finite() { fraction.clamp(0.0, 1.0) } else { 0.0 };
    let filled = (fraction * width as f64).round() as usize;
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

/// Bytes as a short human figure: `512 B`, `98.2 MiB`, `23.4 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// At most `max` characters of `text`, with `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let cut: String = text.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

/// Rows of cells as aligned columns; every line starts with `indent`. Cells are plain text (color is
/// applied by the caller to whole lines, so widths stay right).
pub fn table(indent: &str, header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths.get(i).copied().unwrap_or(0)))
            .collect();
        format!("{indent}{}", padded.join("  ").trim_end())
    };
    let mut lines = vec![line(header.iter().map(|h| h.to_string()).collect())];
    lines.extend(rows.iter().map(|r| line(r.clone())));
    lines
}

/// A field of a JSON object as display text: strings as is, numbers and booleans printed, `-` when
/// missing or null. The first key present wins.
pub fn text(value: &Value, keys: &[&str]) -> String {
    for key in keys {
        match value.get(key) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => return s.clone(),
            Some(Value::Number(n)) => return n.to_string(),
            Some(Value::Bool(b)) => return b.to_string(),
            // Tagged states such as a job's `{"phase":"failed","reason":"..."}`.
            Some(Value::Object(o)) if o.get("phase").is_some_and(Value::is_string) => {
                let phase = o.get("phase").and_then(Value::as_str).unwrap_or_default();
                return match o.get("reason").and_then(Value::as_str) {
                    Some(reason) => format!("{phase}: {reason}"),
                    None => phase.to_owned(),
                };
            }
            Some(other) => return other.to_string(),
        }
    }
    "-".to_owned()
}

/// A numeric field as `f64`, when present.
pub fn number(value: &Value, key: &str) -> Option<f64> {
    value.get(key).and_then(Value::as_f64)
}

/// The array under `key` of a wrapper object (`{"workers":[...]}`), or the value itself when it is
/// already an array; empty otherwise.
pub fn list<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    match value {
        Value::Array(items) => items,
        _ => value.get(key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]),
    }
}

/// A figure with one decimal, or `-`.
pub fn rate(value: Option<f64>) -> String {
    value.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".to_owned())
}

/// How long ago a millisecond timestamp was, as `12s`, `5m`, `3h`, `2d`.
pub fn age(at_ms: Option<f64>) -> String {
    let Some(at_ms) = at_ms else { return "-".to_owned() };
    let now = rbee_bus::now_ms() as f64;
    let secs = ((now - at_ms) / 1000.0).max(0.0) as u64;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86_399 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// Replaces the value of every key that looks secret (`api_key`, `token`, `password`, ...) by
/// `<redacted>`, at any depth.
pub fn redact_secrets(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                let lower = key.to_ascii_lowercase();
                let secret = ["api_key", "apikey", "token", "password", "secret", "authorization"]
                    .iter()
                    .any(|s| lower == *s || lower.ends_with(&format!("_{s}")));
                if secret && !inner.is_null() {
                    *inner = Value::String("<redacted>".into());
                } else {
                    redact_secrets(inner);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_secrets),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_and_sizes() {
        assert_eq!(bar(0.5, 10), "[#####-----]");
        assert_eq!(bar(2.0, 4), "[####]");
        assert_eq!(bar(f64::NAN, 2), "[--]");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
    }

    #[test]
    fn tables_align_and_text_is_tolerant() {
        let lines = table("", &["A", "B"], &[vec!["long".into(), "x".into()]]);
        assert_eq!(lines, vec!["A     B", "long  x"]);
        let v = serde_json::json!({"a": 1, "b": null, "c": "s"});
        assert_eq!(text(&v, &["b", "a"]), "1");
        assert_eq!(text(&v, &["z"]), "-");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }

    #[test]
    fn secrets_are_redacted() {
        let mut v = serde_json::json!({"api_key": "k", "nested": [{"auth_token": "t", "tokens": 3}]});
        redact_secrets(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"api_key": "<redacted>", "nested": [{"auth_token": "<redacted>", "tokens": 3}]})
        );
    }
}
