//! What llama.cpp's JSON-Schema converter refuses, found before it runs so that the 400 names the part
//! (the converter itself only says that it failed): a `$ref` that is not a local `#/...` pointer or
//! does not resolve, a `type` that JSON Schema does not define, and a schema that is neither an object
//! nor a boolean. Each finding is a JSON pointer and a reason. Pure: the queen refuses such a schema
//! before placing a job; the worker's tests hold the lint to the real converter.

use serde_json::Value;

const TYPES: [&str; 7] = ["string", "number", "integer", "boolean", "object", "array", "null"];

/// Keywords whose value is one subschema.
const ONE: [&str; 6] =
    ["items", "additionalProperties", "not", "contains", "propertyNames", "additionalItems"];
/// Keywords whose value is a list of subschemas.
const LIST: [&str; 4] = ["anyOf", "oneOf", "allOf", "prefixItems"];
/// Keywords whose value maps names to subschemas.
const MAP: [&str; 4] = ["properties", "patternProperties", "$defs", "definitions"];

/// The first part of `root` the converter cannot express, as (JSON pointer, reason).
pub fn first_problem(root: &Value) -> Option<(String, String)> {
    walk(root, root, String::new())
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn walk(root: &Value, schema: &Value, at: String) -> Option<(String, String)> {
    let object = match schema {
        Value::Bool(_) => return None,
        Value::Object(o) => o,
        _ => return Some((at, "a schema must be an object or a boolean".to_owned())),
    };
    if let Some(r) = object.get("$ref") {
        let ok = r.as_str().is_some_and(|r| r.starts_with('#') && root.pointer(&r[1..]).is_some());
        if !ok {
            return Some((
                format!("{at}/$ref"),
                format!("{r} is not a local reference that resolves (#/$defs/...)"),
            ));
        }
    }
    if let Some(t) = object.get("type") {
        let known = |v: &Value| v.as_str().is_some_and(|s| TYPES.contains(&s));
        let ok = match t {
            Value::Array(list) => list.iter().all(known),
            other => known(other),
        };
        if !ok {
            return Some((format!("{at}/type"), format!("{t} is not a JSON Schema type")));
        }
    }
    for key in ONE {
        if let Some(sub) = object.get(key) {
            if let Some(found) = walk(root, sub, format!("{at}/{key}")) {
                return Some(found);
            }
        }
    }
    for key in LIST {
        if let Some(Value::Array(subs)) = object.get(key) {
            for (i, sub) in subs.iter().enumerate() {
                if let Some(found) = walk(root, sub, format!("{at}/{key}/{i}")) {
                    return Some(found);
                }
            }
        }
    }
    for key in MAP {
        if let Some(Value::Object(subs)) = object.get(key) {
            for (name, sub) in subs {
                if let Some(found) = walk(root, sub, format!("{at}/{key}/{}", escape(name))) {
                    return Some(found);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::first_problem;

    #[test]
    fn a_good_schema_has_no_problem() {
        let s = json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}, "b": {"type": ["string", "null"], "pattern": "[a-z]+"}}, "$defs": {"x": {"type": "integer"}}});
        assert_eq!(first_problem(&s), None);
    }

    #[test]
    fn the_offending_part_is_named() {
        let remote = json!({"properties": {"a": {"$ref": "https://example.org/s.json"}}});
        assert_eq!(first_problem(&remote).map(|p| p.0), Some("/properties/a/$ref".to_owned()));
        let dangling = json!({"items": {"$ref": "#/$defs/missing"}});
        assert_eq!(first_problem(&dangling).map(|p| p.0), Some("/items/$ref".to_owned()));
        let typed = json!({"anyOf": [{"type": "string"}, {"type": ["string", "text"]}]});
        assert_eq!(first_problem(&typed).map(|p| p.0), Some("/anyOf/1/type".to_owned()));
        let typo = json!({"properties": {"a/b": {"type": "strin"}}});
        assert_eq!(first_problem(&typo).map(|p| p.0), Some("/properties/a~1b/type".to_owned()));
        assert!(first_problem(&json!(3)).is_some());
    }
}
