//! Templates that know nothing of tools get the generic `<tool_call>` prompt, and tool messages
//! become text they can render.

mod common;

use common::{assert_expected, call, parallel_calls_conversation, template, time_tool, weather_tool};
use rbee_template::{ChatTemplate, ToolSyntax, GENERIC_TOOLS_PROMPT};
use serde_json::json;

/// The parallel-calls conversation as `reference.py` writes it for the fallback cases.
fn fallback_conversation(system: Option<&str>, text: Option<&str>) -> Vec<serde_json::Value> {
    let mut messages = parallel_calls_conversation(system.unwrap_or_default());
    if system.is_none() {
        messages.remove(0);
    }
    let assistant = messages.iter_mut().find(|m| m["role"] == "assistant").expect("assistant");
    assistant["content"] = json!(text);
    assistant["tool_calls"][0]["function"]["arguments"] = json!(r#"{"city": "Paris"}"#);
    messages
}

#[test]
fn smollm2_with_tools_uses_the_generic_prompt() {
    let t = template("smollm2-135m-instruct");
    assert!(!t.supports_tools());
    assert_eq!(t.tool_syntax(), ToolSyntax::HERMES);
    let prompt = t.render(
        &fallback_conversation(Some("You are terse."), Some("Let me look.")),
        &[weather_tool(), time_tool()],
        true,
    );
    assert_expected("smollm2-135m-instruct.fallback", &prompt.expect("render"));
}

#[test]
fn generic_prompt_is_prepended_when_there_is_no_system_message() {
    let t = template("smollm2-135m-instruct");
    let messages = vec![json!({"role": "user", "content": "Hi"})];
    let prompt = t.render(&messages, &[weather_tool()], true).expect("render");
    let expected_start = format!(
        "<|im_start|>system\n{}<|im_end|>\n<|im_start|>user\nHi",
        GENERIC_TOOLS_PROMPT.replace("{tools}", &fixture_tool_line())
    );
    assert!(prompt.starts_with(&expected_start), "{prompt}");
    // SmolLM2's own default system prompt is not added: the conversation now starts with a system message.
    assert!(!prompt.contains("SmolLM"), "{prompt}");
}

fn fixture_tool_line() -> String {
    let text = common::fixture("qwen2.5-7b-instruct.tools.expected.txt");
    text.lines().find(|l| l.contains("\"get_weather\"")).expect("tool line").to_owned()
}

#[test]
fn gemma2_with_tools_keeps_strict_alternation() {
    let t = template("gemma-2-2b-it");
    let prompt =
        t.render(&fallback_conversation(None, None), &[weather_tool(), time_tool()], true).expect("render");
    assert_expected("gemma-2-2b-it.fallback", &prompt);
}

#[test]
fn tool_messages_without_tools_still_render_as_text() {
    // A history with tool calls but no tools this turn, on a template that knows no tools.
    let t = template("phi-3.5-mini-instruct");
    let messages = vec![
        json!({"role": "user", "content": "Weather?"}),
        json!({"role": "assistant", "content": null, "tool_calls": [call("c1", "get_weather", r#"{"city":"Oslo"}"#)]}),
        json!({"role": "tool", "content": "cold", "tool_call_id": "c1"}),
    ];
    let prompt = t.render(&messages, &[], true).expect("render");
    assert_eq!(
        prompt,
        "<|user|>\nWeather?<|end|>\n<|assistant|>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": \
         {\"city\": \"Oslo\"}}\n</tool_call><|end|>\n<|user|>\n<tool_response>\ncold\n</tool_response><|end|>\n<|assistant|>\n"
    );
}

#[test]
fn templates_with_tools_keep_their_own_tool_format() {
    // Qwen prints tool results itself: no generic prompt, no user-role rewriting.
    let t = template("qwen2.5-7b-instruct");
    let prompt = t.render(&parallel_calls_conversation("S"), &[weather_tool()], true).expect("render");
    assert!(!prompt.contains("The results of the calls are given back"), "{prompt}");
    assert!(prompt
        .contains("<|im_start|>user\n<tool_response>\n{\"temp\": 18}\n</tool_response>\n<tool_response>"));
}

#[test]
fn template_with_tools_but_no_tool_role_gets_results_as_user_text() {
    // Reads `tools` and prints tool calls, but silently drops role "tool".
    let source = "{% if tools %}[{{ tools | map(attribute='function.name') | join(',') }}]{% endif %}\
        {% for m in messages %}{% if m.tool_calls %}<call>{{ m.tool_calls[0].function.name }}</call>\
        {% elif m.role in ['user', 'assistant', 'system'] %}<{{ m.role }}>{{ m.content }}{% endif %}{% endfor %}";
    let t = ChatTemplate::new(source, "", "").expect("compile");
    assert!(t.supports_tools());
    assert!(!t.supports_tool_messages());
    let messages = vec![
        json!({"role": "user", "content": "q"}),
        json!({"role": "assistant", "tool_calls": [call("c1", "get_weather", "{}")]}),
        json!({"role": "tool", "content": "r1"}),
        json!({"role": "tool", "content": "r2"}),
    ];
    let prompt = t.render(&messages, &[weather_tool()], false).expect("render");
    assert_eq!(
        prompt,
        "[get_weather]<user>q<call>get_weather</call>\
         <user><tool_response>\nr1\n</tool_response>\n<tool_response>\nr2\n</tool_response>"
    );
}
