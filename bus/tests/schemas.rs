//! The JSON Schemas in `schemas/` are generated from the Rust types; real values of every message type
//! validate against them; every message type and every subject has a schema; the README's subject
//! table matches `schemas/index.json`. `UPDATE_SCHEMAS=1` (or `make schemas`) rewrites the files.

mod samples;

use std::collections::BTreeSet;
use std::path::PathBuf;

use rbee_bus::contract;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).expect("json") + "\n"
}

#[test]
fn schema_files_match_the_rust_types() {
    let dir = root().join("schemas");
    let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
    let mut files = contract::schemas()
        .into_iter()
        .map(|(name, schema)| (format!("{name}.json"), pretty(&schema)))
        .collect::<Vec<_>>();
    files.push(("index.json".to_owned(), pretty(&contract::index())));
    let mut stale = Vec::new();
    for (file, content) in &files {
        let path = dir.join(file);
        if update {
            std::fs::write(&path, content).expect("write schema");
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(content.as_str()) {
            stale.push(file.clone());
        }
    }
    assert!(stale.is_empty(), "schemas out of date: {stale:?}; run `make schemas` and commit schemas/");
    // No orphan schema files.
    let expected: BTreeSet<_> = files.iter().map(|(f, _)| f.clone()).collect();
    for entry in std::fs::read_dir(&dir).expect("schemas dir") {
        let name = entry.expect("entry").file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") {
            assert!(expected.contains(&name), "schemas/{name} belongs to no message type");
        }
    }
}

#[test]
fn real_values_validate_against_their_schemas() {
    let schemas: std::collections::HashMap<_, _> = contract::schemas().into_iter().collect();
    let samples = samples::all();
    for (name, value) in &samples {
        let schema = schemas.get(name).unwrap_or_else(|| panic!("no schema named {name}"));
        let validator = jsonschema::draft202012::new(schema).expect("schema compiles");
        let errors: Vec<String> = validator.iter_errors(value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{name} sample does not validate: {errors:?}\n{value:#}");
        assert_eq!(value["v"], 1, "{name} carries no schema version");
    }
    // Every schema has at least one real value.
    let sampled: BTreeSet<_> = samples.iter().map(|(n, _)| *n).collect();
    for name in schemas.keys() {
        assert!(sampled.contains(name), "no sample value for {name}");
    }
}

#[test]
fn invalid_values_do_not_validate() {
    let schemas: std::collections::HashMap<_, _> = contract::schemas().into_iter().collect();
    let validator = jsonschema::draft202012::new(&schemas["WorkerHeartbeat"]).expect("schema compiles");
    let mut value = samples::all().into_iter().find(|(n, _)| *n == "WorkerHeartbeat").expect("sample").1;
    value["worker_id"] = "bad.id".into();
    assert!(!validator.is_valid(&value), "an id with a dot validated");
    value["worker_id"] = "wrk-1".into();
    value["state"] = "sleeping".into();
    assert!(!validator.is_valid(&value), "an unknown state validated");
}

#[test]
fn every_subject_and_message_type_has_a_schema() {
    let index = contract::subjects();
    let names: BTreeSet<_> = contract::schemas().into_iter().map(|(n, _)| n).collect();
    for entry in &index {
        assert!(names.contains(entry.schema), "{} names unknown schema {}", entry.subject, entry.schema);
        if let Some(reply) = entry.reply {
            assert!(names.contains(reply), "{} names unknown reply schema {reply}", entry.subject);
        }
    }
    // Every wildcard constant in subject.rs is in the index.
    let subject_src = std::fs::read_to_string(root().join("bus/src/subject.rs")).expect("subject.rs");
    let listed: BTreeSet<_> = index.iter().map(|e| e.subject).collect();
    for line in subject_src.lines().filter(|l| l.starts_with("pub const") && l.contains("\"rbee.")) {
        let pattern = line.split('"').nth(1).expect("quoted subject");
        if pattern == "rbee.>" {
            continue;
        }
        assert!(listed.contains(pattern), "subject {pattern} has no entry in the contract index");
    }
    // Every message struct (a struct with a `v` field) in bus/src/messages has a schema of its name.
    for file in std::fs::read_dir(root().join("bus/src/messages")).expect("messages dir") {
        let src = std::fs::read_to_string(file.expect("file").path()).expect("source");
        let mut current = None;
        for line in src.lines() {
            if let Some(rest) = line.strip_prefix("pub struct ") {
                current = rest.split([' ', '{', '(']).next().map(str::to_owned);
            }
            if line.trim() == "pub v: u32," {
                let name = current.clone().expect("field inside a struct");
                assert!(names.contains(name.as_str()), "message type {name} has no schema");
            }
        }
    }
}

#[test]
fn readme_subject_table_matches_the_index() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    for entry in contract::subjects() {
        let row = format!("| `{}` |", entry.subject);
        assert!(readme.contains(&row), "README.md subject table lacks a row starting {row}");
        let line = readme.lines().find(|l| l.starts_with(&row)).expect("row");
        assert!(
            line.contains(entry.schema),
            "README row for {} does not name {}",
            entry.subject,
            entry.schema
        );
    }
    let table_rows = readme.lines().filter(|l| l.starts_with("| `rbee.")).count();
    assert_eq!(table_rows, contract::subjects().len(), "README.md lists subjects the index does not have");
}
