//! Errors name what failed: the template's own `raise_exception` message, compile errors with
//! their line, bad input.

mod common;

use common::{call, standard_conversation, template};
use rbee_template::{ChatTemplate, TemplateError};
use serde_json::json;

#[test]
fn gemma2_rejects_broken_alternation_with_its_own_message() {
    let t = template("gemma-2-2b-it");
    let messages = vec![json!({"role": "user", "content": "a"}), json!({"role": "user", "content": "b"})];
    let err = t.render(&messages, &[], true).expect_err("alternation");
    assert_eq!(
        err,
        TemplateError::Raised("Conversation roles must alternate user/assistant/user/assistant/...".into())
    );
    assert_eq!(
        err.to_string(),
        "chat template raised an exception: Conversation roles must alternate user/assistant/user/assistant/..."
    );
}

#[test]
fn gemma2_raw_render_rejects_a_system_message() {
    // Without rbee's rewriting the template refuses the system role itself.
    let t = template("gemma-2-2b-it");
    let messages = vec![json!({"role": "system", "content": "s"}), json!({"role": "user", "content": "u"})];
    let err = t.render_raw(&messages, None, true).expect_err("system");
    assert_eq!(err, TemplateError::Raised("System role not supported".into()));
}

#[test]
fn mistral_nemo_rejects_assistant_first() {
    let t = template("mistral-nemo-instruct-2407");
    let mut messages = standard_conversation();
    messages.remove(1);
    let err = t.render(&messages, &[], true).expect_err("alternation");
    let TemplateError::Raised(message) = err else { panic!("expected Raised, got {err:?}") };
    assert!(message.starts_with("After the optional system message, conversation roles must alternate"));
}

#[test]
fn mistral_nemo_checks_tool_call_ids() {
    let t = template("mistral-nemo-instruct-2407");
    let messages = vec![
        json!({"role": "user", "content": "q"}),
        json!({"role": "assistant", "tool_calls": [call("call_1", "get_weather", "{}")]}),
    ];
    let err = t.render(&messages, &[common::weather_tool()], false).expect_err("id length");
    assert_eq!(
        err,
        TemplateError::Raised("Tool call IDs should be alphanumeric strings with length 9!".into())
    );
}

#[test]
fn llama31_rejects_parallel_calls() {
    let t = template("llama-3.1-8b-instruct");
    let messages = vec![
        json!({"role": "user", "content": "q"}),
        json!({"role": "assistant", "tool_calls": [call("a", "f", "{}"), call("b", "g", "{}")]}),
    ];
    let err = t.render(&messages, &[common::weather_tool()], false).expect_err("parallel");
    assert_eq!(err, TemplateError::Raised("This model only supports single tool-calls at once!".into()));
}

#[test]
fn broken_syntax_fails_at_new_with_the_line() {
    let err = ChatTemplate::new("{% for m in messages %}\n{{ m.content }\n{% endfor %}", "", "")
        .expect_err("syntax");
    let TemplateError::Compile { line, message } = &err else { panic!("expected Compile, got {err:?}") };
    assert_eq!(*line, Some(2));
    assert!(message.contains("syntax error"), "{message}");
    assert!(err.to_string().starts_with("chat template does not compile at line 2: syntax error"), "{err}");

    let err = ChatTemplate::new("{% if x %}never closed", "", "").expect_err("unclosed");
    assert!(matches!(err, TemplateError::Compile { .. }), "{err:?}");
}

#[test]
fn render_errors_carry_the_line() {
    let t = ChatTemplate::new("line one\n{{ messages[0].content + 1 }}", "", "").expect("compile");
    let err = t.render(&[json!({"role": "user", "content": "x"})], &[], false).expect_err("type error");
    let TemplateError::Render { line, .. } = &err else { panic!("expected Render, got {err:?}") };
    assert_eq!(*line, Some(2));
    assert!(err.to_string().starts_with("chat template failed to render at line 2: "), "{err}");
}

#[test]
fn unknown_role_and_bad_messages() {
    let t = template("qwen2.5-7b-instruct");
    let err = t.render(&[json!({"role": "wizard", "content": "x"})], &[], true).expect_err("role");
    assert_eq!(
        err.to_string(),
        "message 0 has unknown role `wizard` (expected system, user, assistant or tool)"
    );
    let err = t.render(&[json!({"content": "x"})], &[], true).expect_err("no role");
    assert_eq!(err.to_string(), "message 0 is invalid: it has no string role");
    let image = json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]});
    let err = t.render(&[image], &[], true).expect_err("image");
    assert_eq!(err.to_string(), "message 0 is invalid: only text content parts are supported");
    let err = t.render(&[json!({"role": "user", "content": "x"})], &[json!({"type": "function"})], true);
    assert_eq!(err.expect_err("tool").to_string(), "tool 0 is invalid: it has no string function.name");
}
