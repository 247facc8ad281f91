//! Fixture loading and the conversations the tests share.
#![allow(dead_code)]

use std::path::PathBuf;

use chrono::NaiveDate;
use rbee_template::ChatTemplate;
use serde_json::{json, Value};

fn fixture_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(file)
}

/// Contents of `tests/fixtures/<file>`.
pub fn fixture(file: &str) -> String {
    std::fs::read_to_string(fixture_path(file)).unwrap_or_else(|e| panic!("reading fixture {file}: {e}"))
}

/// Special tokens each fixture model uses (as in `reference.py`).
pub fn tokens(name: &str) -> (&'static str, &'static str) {
    match name {
        "smollm2-135m-instruct" => ("<|im_start|>", "<|im_end|>"),
        "qwen2.5-7b-instruct" => ("", "<|im_end|>"),
        "llama-3.1-8b-instruct" | "llama-3.2-3b-instruct" => ("<|begin_of_text|>", "<|eot_id|>"),
        "mistral-nemo-instruct-2407" => ("<s>", "</s>"),
        "gemma-2-2b-it" => ("<bos>", "<eos>"),
        "phi-3.5-mini-instruct" => ("<s>", "<|endoftext|>"),
        "hermes-3-llama-3.1-8b-tool-use" => ("<|begin_of_text|>", "<|im_end|>"),
        other => panic!("no tokens for fixture {other}"),
    }
}

/// The fixture template `name`, with the clock fixed at 2025-03-14 10:30 like `reference.py`.
pub fn template(name: &str) -> ChatTemplate {
    let (bos, eos) = tokens(name);
    let now =
        NaiveDate::from_ymd_opt(2025, 3, 14).and_then(|d| d.and_hms_opt(10, 30, 0)).expect("valid date");
    ChatTemplate::new(&fixture(&format!("{name}.jinja")), bos, eos)
        .unwrap_or_else(|e| panic!("compiling {name}: {e}"))
        .with_now(now)
        .expect("recompile with clock")
}

/// Asserts `actual` equals `tests/fixtures/<case>.expected.txt`, showing the first difference.
pub fn assert_expected(case: &str, actual: &str) {
    let expected = fixture(&format!("{case}.expected.txt"));
    if expected != actual {
        let at = expected.chars().zip(actual.chars()).take_while(|(a, b)| a == b).count();
        let context: String = expected.chars().take(at).collect();
        let tail = &context[context.len().saturating_sub(80)..];
        panic!(
            "{case}: rendering differs after {at} chars (...{tail:?})\n--- expected\n{expected}\n--- actual\n{actual}"
        );
    }
}

/// llama.cpp's tests/test-chat-template.cpp conversation.
pub fn standard_conversation() -> Vec<Value> {
    vec![
        json!({"role": "system", "content": "You are a helpful assistant"}),
        json!({"role": "user", "content": "Hello"}),
        json!({"role": "assistant", "content": "Hi there"}),
        json!({"role": "user", "content": "Who are you"}),
        json!({"role": "assistant", "content": "   I am an assistant   "}),
        json!({"role": "user", "content": "Another question"}),
    ]
}

pub fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "Température actuelle d'une ville",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"]}}})
}

pub fn time_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_time", "description": "Current time in a time zone",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}})
}

/// An OpenAI tool call: `arguments` is a JSON string, as clients send it.
pub fn call(id: &str, name: &str, arguments: &str) -> Value {
    json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})
}

/// Two parallel calls and their results, OpenAI-shaped (null content, string arguments).
pub fn parallel_calls_conversation(system: &str) -> Vec<Value> {
    vec![
        json!({"role": "system", "content": system}),
        json!({"role": "user", "content": "Weather and time in Paris?"}),
        json!({"role": "assistant", "content": null, "tool_calls": [
            call("call_1", "get_weather", r#"{"city": "Paris", "unit": "celsius"}"#),
            call("call_2", "get_time", r#"{"tz":"Europe/Paris"}"#)]}),
        json!({"role": "tool", "content": "{\"temp\": 18}", "tool_call_id": "call_1", "name": "get_weather"}),
        json!({"role": "tool", "content": "10:30", "tool_call_id": "call_2", "name": "get_time"}),
    ]
}
