//! Real model templates render like Hugging Face `transformers` does (expected files written by
//! `tests/fixtures/reference.py` with Jinja2; see the fixtures README for how they were checked).

mod common;

use common::{assert_expected, call, parallel_calls_conversation, standard_conversation, template};
use rbee_template::ToolSyntax;
use serde_json::json;

fn assert_standard(name: &str) {
    let prompt = template(name).render(&standard_conversation(), &[], true).expect("render");
    assert_expected(&format!("{name}.standard"), &prompt);
}

#[test]
fn smollm2_standard() {
    assert_standard("smollm2-135m-instruct");
}

#[test]
fn qwen25_standard() {
    assert_standard("qwen2.5-7b-instruct");
}

#[test]
fn llama31_standard() {
    assert_standard("llama-3.1-8b-instruct");
}

#[test]
fn llama32_standard_uses_the_injected_date() {
    assert_standard("llama-3.2-3b-instruct");
}

#[test]
fn mistral_nemo_standard() {
    assert_standard("mistral-nemo-instruct-2407");
}

#[test]
fn gemma2_standard_moves_system_into_first_user() {
    assert_standard("gemma-2-2b-it");
}

#[test]
fn phi35_standard() {
    assert_standard("phi-3.5-mini-instruct");
}

#[test]
fn no_generation_prompt_leaves_the_assistant_header_out() {
    let t = template("qwen2.5-7b-instruct");
    let prompt = t.render(&standard_conversation(), &[], false).expect("render");
    assert!(prompt.ends_with("<|im_start|>user\nAnother question<|im_end|>\n"), "{prompt}");
    let phi = template("phi-3.5-mini-instruct").render(&standard_conversation(), &[], false).expect("render");
    assert!(phi.ends_with("<|end|>\n<|endoftext|>"), "{phi}");
}

#[test]
fn smollm2_adds_its_default_system_prompt() {
    let t = template("smollm2-135m-instruct");
    let prompt = t.render(&[json!({"role": "user", "content": "Hi"})], &[], true).expect("render");
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn qwen25_with_tools_and_tool_results() {
    let t = template("qwen2.5-7b-instruct");
    let messages = parallel_calls_conversation("You are a weather bot.");
    let prompt = t.render(&messages, &[common::weather_tool(), common::time_tool()], true).expect("render");
    assert_expected("qwen2.5-7b-instruct.tools", &prompt);
}

#[test]
fn hermes3_with_tools_and_tool_results() {
    let t = template("hermes-3-llama-3.1-8b-tool-use");
    let messages = parallel_calls_conversation("You are a weather bot.");
    let prompt = t.render(&messages, &[common::weather_tool(), common::time_tool()], true).expect("render");
    assert_expected("hermes-3-llama-3.1-8b-tool-use.tools", &prompt);
}

#[test]
fn llama31_with_tools_and_tool_result() {
    let t = template("llama-3.1-8b-instruct");
    let messages = vec![
        json!({"role": "system", "content": "You are a weather bot."}),
        json!({"role": "user", "content": "Weather in Paris?"}),
        json!({"role": "assistant", "content": null, "tool_calls": [call("call_1", "get_weather", r#"{"city":"Paris"}"#)]}),
        json!({"role": "tool", "content": "{\"temp\": 18}", "tool_call_id": "call_1", "name": "get_weather"}),
    ];
    let prompt = t.render(&messages, &[common::weather_tool()], true).expect("render");
    assert_expected("llama-3.1-8b-instruct.tools", &prompt);
}

#[test]
fn llama31_without_tools_has_no_ipython_environment() {
    // `tools` must be `none`, not `[]`, or the template announces an empty tool list.
    let prompt =
        template("llama-3.1-8b-instruct").render(&standard_conversation(), &[], true).expect("render");
    assert!(!prompt.contains("Environment: ipython"), "{prompt}");
}

#[test]
fn mistral_nemo_with_tools_and_tool_result() {
    let t = template("mistral-nemo-instruct-2407");
    let messages = vec![
        json!({"role": "user", "content": "Weather in Paris?"}),
        json!({"role": "assistant", "content": null, "tool_calls": [call("abcDEF123", "get_weather", r#"{"city": "Paris"}"#)]}),
        json!({"role": "tool", "content": "{\"temp\": 18}", "tool_call_id": "abcDEF123", "name": "get_weather"}),
        json!({"role": "assistant", "content": "It is 18 °C."}),
        json!({"role": "user", "content": "Thanks!"}),
    ];
    let prompt = t.render(&messages, &[common::weather_tool()], true).expect("render");
    assert_expected("mistral-nemo-instruct-2407.tools", &prompt);
}

#[test]
fn capabilities_and_tool_syntax_per_family() {
    // (fixture, supports tools, supports system role, supports tool messages, syntax)
    let cases = [
        ("smollm2-135m-instruct", false, true, false, ToolSyntax::HERMES),
        ("qwen2.5-7b-instruct", true, true, true, ToolSyntax::HERMES),
        ("hermes-3-llama-3.1-8b-tool-use", true, true, true, ToolSyntax::HERMES),
        ("llama-3.1-8b-instruct", true, true, true, ToolSyntax::LLAMA3),
        ("llama-3.2-3b-instruct", true, true, true, ToolSyntax::LLAMA3),
        ("mistral-nemo-instruct-2407", true, true, true, ToolSyntax::MISTRAL),
        ("gemma-2-2b-it", false, false, false, ToolSyntax::HERMES),
        ("phi-3.5-mini-instruct", false, true, false, ToolSyntax::HERMES),
    ];
    for (name, tools, system, tool_messages, syntax) in cases {
        let t = template(name);
        assert_eq!(t.supports_tools(), tools, "{name}: supports_tools");
        assert_eq!(t.supports_system_role(), system, "{name}: supports_system_role");
        assert_eq!(t.supports_tool_messages(), tool_messages, "{name}: supports_tool_messages");
        assert_eq!(t.tool_syntax(), syntax, "{name}: tool_syntax");
    }
}
