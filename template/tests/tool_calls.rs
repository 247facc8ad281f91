//! Reading tool calls out of replies in the hermes, llama3 and mistral syntaxes.

use rbee_template::{ParsedCall, ParsedReply, ToolParseError, ToolSyntax};
use serde_json::json;

fn call(name: &str, arguments: serde_json::Value) -> ParsedCall {
    ParsedCall { name: name.into(), arguments }
}

#[test]
fn hermes_single_call_with_text_before() {
    let reply = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    let parsed = ToolSyntax::HERMES.split_reply(reply);
    assert_eq!(parsed.content, "Let me check.");
    assert_eq!(parsed.calls, vec![call("get_weather", json!({"city": "Paris"}))]);
}

#[test]
fn hermes_parallel_calls_and_text_between() {
    let reply = "<tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\": 1}}\n</tool_call>\nand\n\
                 <tool_call>{\"name\": \"b\", \"arguments\": {}}</tool_call>";
    let parsed = ToolSyntax::HERMES.split_reply(reply);
    assert_eq!(parsed.calls, vec![call("a", json!({"x": 1})), call("b", json!({}))]);
    assert_eq!(parsed.content, "and");
}

#[test]
fn hermes_arguments_as_json_string_or_missing() {
    let calls = ToolSyntax::HERMES
        .parse_calls("{\"name\": \"a\", \"arguments\": \"{\\\"x\\\": [1, 2]}\"} {\"name\": \"b\"}")
        .expect("parse");
    assert_eq!(calls, vec![call("a", json!({"x": [1, 2]})), call("b", json!({}))]);
    let err =
        ToolSyntax::HERMES.parse_calls("{\"name\": \"a\", \"arguments\": \"x=1\"}").expect_err("bad args");
    assert!(matches!(err, ToolParseError::BadArguments { ref name, .. } if name == "a"), "{err:?}");
}

#[test]
fn hermes_malformed_call_stays_content() {
    let reply = "Sure.\n<tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\": }\n</tool_call>\nDone.";
    let parsed = ToolSyntax::HERMES.split_reply(reply);
    assert!(parsed.calls.is_empty());
    assert_eq!(parsed.content, reply);
    assert!(matches!(
        ToolSyntax::HERMES.parse_calls("{\"name\": \"a\", \"arguments\": {\"x\": }"),
        Err(ToolParseError::Json(_))
    ));
    // A good call next to a broken one: the good one is read, the broken one kept as text.
    let mixed = "<tool_call>{\"name\": \"ok\"}</tool_call><tool_call>{oops}</tool_call>";
    let parsed = ToolSyntax::HERMES.split_reply(mixed);
    assert_eq!(parsed.calls, vec![call("ok", json!({}))]);
    assert_eq!(parsed.content, "<tool_call>{oops}</tool_call>");
}

#[test]
fn hermes_unclosed_call_runs_to_the_end() {
    let parsed =
        ToolSyntax::HERMES.split_reply("<tool_call>\n{\"name\": \"a\", \"arguments\": {\"q\": \"x\"}}\n");
    assert_eq!(parsed, ParsedReply { content: String::new(), calls: vec![call("a", json!({"q": "x"}))] });
}

#[test]
fn plain_text_is_kept_verbatim() {
    let reply = "  Just text, with {\"json\": true} inside.\n";
    for syntax in [ToolSyntax::HERMES, ToolSyntax::LLAMA3, ToolSyntax::MISTRAL] {
        let parsed = syntax.split_reply(reply);
        assert_eq!(parsed.content, reply, "{}", syntax.family);
        assert!(parsed.calls.is_empty(), "{}", syntax.family);
    }
}

#[test]
fn llama3_reply_is_the_call() {
    let parsed =
        ToolSyntax::LLAMA3.split_reply(" {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}");
    assert_eq!(parsed.content, "");
    assert_eq!(parsed.calls, vec![call("get_weather", json!({"city": "Paris"}))]);
    // The python tag some GGUFs let through, and "arguments" instead of "parameters".
    let parsed = ToolSyntax::LLAMA3.split_reply("<|python_tag|>{\"name\": \"f\", \"arguments\": {\"a\": 1}}");
    assert_eq!(parsed.calls, vec![call("f", json!({"a": 1}))]);
}

#[test]
fn llama3_parallel_calls_separated_by_semicolons() {
    let body = "{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"parameters\": \"{\\\"k\\\": \\\"v\\\"}\"}";
    let calls = ToolSyntax::LLAMA3.parse_calls(body).expect("parse");
    assert_eq!(calls, vec![call("a", json!({})), call("b", json!({"k": "v"}))]);
}

#[test]
fn llama3_wrapped_function_object() {
    let body = "{\"type\": \"function\", \"function\": {\"name\": \"a\", \"parameters\": {\"x\": 2}}}";
    assert_eq!(ToolSyntax::LLAMA3.parse_calls(body).expect("parse"), vec![call("a", json!({"x": 2}))]);
}

#[test]
fn llama3_json_not_at_the_start_or_not_a_call_is_content() {
    let reply = "Here is JSON: {\"name\": \"a\", \"parameters\": {}}";
    assert_eq!(ToolSyntax::LLAMA3.split_reply(reply).content, reply);
    let not_call = "{\"answer\": 42}";
    let parsed = ToolSyntax::LLAMA3.split_reply(not_call);
    assert_eq!(parsed.content, not_call);
    assert!(parsed.calls.is_empty());
    assert!(matches!(ToolSyntax::LLAMA3.parse_calls(not_call), Err(ToolParseError::NoName(_))));
    // Trailing text after the JSON makes it not a call.
    let trailing = "{\"name\": \"a\", \"parameters\": {}} and more";
    assert_eq!(ToolSyntax::LLAMA3.split_reply(trailing).content, trailing);
}

#[test]
fn mistral_list_of_calls() {
    let reply = "[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {\"x\": 1}, \"id\": \"abcDEF123\"}, \
                 {\"name\": \"b\", \"arguments\": \"{}\"}]";
    let parsed = ToolSyntax::MISTRAL.split_reply(reply);
    assert_eq!(parsed.content, "");
    assert_eq!(parsed.calls, vec![call("a", json!({"x": 1})), call("b", json!({}))]);
}

#[test]
fn mistral_text_before_and_space_after_opener() {
    let parsed =
        ToolSyntax::MISTRAL.split_reply("Checking. [TOOL_CALLS] [{\"name\": \"a\", \"arguments\": {}}]");
    assert_eq!(parsed.content, "Checking.");
    assert_eq!(parsed.calls, vec![call("a", json!({}))]);
}

#[test]
fn mistral_malformed_and_empty() {
    let reply = "[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {]";
    let parsed = ToolSyntax::MISTRAL.split_reply(reply);
    assert!(parsed.calls.is_empty());
    assert_eq!(parsed.content, reply);
    assert_eq!(ToolSyntax::MISTRAL.parse_calls("  "), Err(ToolParseError::Empty));
    assert_eq!(ToolSyntax::MISTRAL.parse_calls("[]"), Err(ToolParseError::Empty));
}

#[test]
fn detection_from_source() {
    assert_eq!(ToolSyntax::detect("{{ '[TOOL_CALLS][' }}"), ToolSyntax::MISTRAL);
    assert_eq!(ToolSyntax::detect("{{ '<tool_call>' }}<|im_start|>"), ToolSyntax::HERMES);
    assert_eq!(ToolSyntax::detect("<|start_header_id|>"), ToolSyntax::LLAMA3);
    assert_eq!(ToolSyntax::detect("{{ messages }}"), ToolSyntax::HERMES);
}
