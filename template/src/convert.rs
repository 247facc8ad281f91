//! Turns OpenAI-shaped messages and tools into what Hugging Face chat templates expect, and
//! rewrites what a template cannot render (tools, tool calls, role `tool`, system messages) into
//! plain text it can.

use serde_json::{json, Map, Value};

use crate::error::TemplateError;
use crate::pyjson;

/// What a template can render, found by rendering probe conversations at compile time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Caps {
    /// A system message's text reaches the prompt.
    pub system: bool,
    /// Tool definitions passed as `tools` reach the prompt.
    pub tools: bool,
    /// An assistant message's `tool_calls` reach the prompt.
    pub tool_calls: bool,
    /// A role `tool` message's content reaches the prompt.
    pub tool_role: bool,
}

/// The conversation ready for the template.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub messages: Vec<Value>,
    /// `None` when there are no tools for the template (it then sees `tools = none`).
    pub tools: Option<Vec<Value>>,
}

/// Text of the system prompt that describes tools to a model whose template cannot.
///
/// `{tools}` is replaced by one JSON line per tool definition.
pub const GENERIC_TOOLS_PROMPT: &str = "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>\n\nThe results of the calls are given back to you within <tool_response></tool_response> XML tags.";

/// Builds the generic tools system prompt for `tools`.
pub(crate) fn generic_tools_prompt(tools: &[Value]) -> String {
    let lines: Vec<String> = tools.iter().map(pyjson::dumps).collect();
    GENERIC_TOOLS_PROMPT.replace("{tools}", &lines.join("\n"))
}

pub(crate) fn prepare(messages: &[Value], tools: &[Value], caps: &Caps) -> Result<Prepared, TemplateError> {
    for (index, tool) in tools.iter().enumerate() {
        check_tool(index, tool)?;
    }
    let mut out = Vec::with_capacity(messages.len() + 1);
    for (index, message) in messages.iter().enumerate() {
        out.push(normalize(index, message)?);
    }
    let uses_tools =
        !tools.is_empty() || out.iter().any(|m| m.get("tool_calls").is_some() || role(m) == "tool");
    // Generic mode: the template knows nothing of tools, so every tool artefact becomes text.
    let generic = uses_tools && !caps.tools;
    let mut tools_for_template = (!tools.is_empty()).then(|| tools.to_vec());
    if generic {
        if let Some(tools) = tools_for_template.take() {
            add_system_text(&mut out, &generic_tools_prompt(&tools));
        }
    }
    if generic || !caps.tool_calls {
        out.iter_mut().for_each(calls_to_text);
    }
    if generic || !caps.tool_role {
        out = tool_results_to_user(out);
    }
    if !caps.system {
        out = system_into_user(out);
    }
    Ok(Prepared { messages: out, tools: tools_for_template })
}

fn role(message: &Value) -> &str {
    message.get("role").and_then(Value::as_str).unwrap_or_default()
}

fn check_tool(index: usize, tool: &Value) -> Result<(), TemplateError> {
    let name = tool.pointer("/function/name").and_then(Value::as_str);
    if name.is_none() {
        return Err(TemplateError::BadTool { index, reason: "it has no string function.name".into() });
    }
    Ok(())
}

/// Checks one message and brings it into the Hugging Face shape.
fn normalize(index: usize, message: &Value) -> Result<Value, TemplateError> {
    let bad = |reason: &str| TemplateError::BadMessage { index, reason: reason.to_owned() };
    let object = message.as_object().ok_or_else(|| bad("it is not a JSON object"))?;
    let role = object.get("role").and_then(Value::as_str).ok_or_else(|| bad("it has no string role"))?;
    let role = match role {
        "system" | "user" | "assistant" | "tool" => role,
        "developer" => "system",
        other => return Err(TemplateError::UnknownRole { index, role: other.to_owned() }),
    };
    let mut out = Map::new();
    out.insert("role".into(), role.into());
    out.insert("content".into(), content_text(object.get("content")).map_err(|r| bad(&r))?.into());
    for (key, value) in object {
        match key.as_str() {
            "role" | "content" => {}
            "tool_calls" => {
                if let Some(calls) = tool_calls(value).map_err(|r| bad(&r))? {
                    out.insert(key.clone(), calls);
                }
            }
            _ if value.is_null() => {}
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    Ok(Value::Object(out))
}

/// Content as one string: null or missing is empty, text parts are joined with newlines.
fn content_text(content: Option<&Value>) -> Result<String, String> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for part in parts {
                match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(text)) => texts.push(text),
                    _ => return Err("only text content parts are supported".into()),
                }
            }
            Ok(texts.join("\n"))
        }
        Some(_) => Err("content must be a string, an array of text parts or null".into()),
    }
}

/// Tool calls with `function.arguments` parsed from a JSON string to JSON; `None` when there are none.
fn tool_calls(value: &Value) -> Result<Option<Value>, String> {
    let calls = match value {
        Value::Null => return Ok(None),
        Value::Array(calls) if calls.is_empty() => return Ok(None),
        Value::Array(calls) => calls,
        _ => return Err("tool_calls must be an array".into()),
    };
    let mut out = Vec::with_capacity(calls.len());
    for call in calls {
        let mut call = call.as_object().cloned().ok_or("a tool call is not an object")?;
        let function =
            call.get_mut("function").and_then(Value::as_object_mut).ok_or("a tool call has no function")?;
        if !function.get("name").is_some_and(Value::is_string) {
            return Err("a tool call has no string function.name".into());
        }
        let arguments = match function.remove("arguments") {
            None | Some(Value::Null) => json!({}),
            Some(Value::String(text)) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
            Some(other) => other,
        };
        function.insert("arguments".into(), arguments);
        out.push(Value::Object(call));
    }
    Ok(Some(Value::Array(out)))
}

/// Merges `text` into the first message when it is a system message, else prepends one.
fn add_system_text(messages: &mut Vec<Value>, text: &str) {
    if let Some(first) = messages.first_mut().filter(|m| role(m) == "system") {
        let content = first["content"].as_str().unwrap_or_default();
        let merged = if content.is_empty() { text.to_owned() } else { format!("{content}\n\n{text}") };
        first["content"] = merged.into();
    } else {
        messages.insert(0, json!({"role": "system", "content": text}));
    }
}

/// The generic `<tool_call>` text of one call.
pub(crate) fn call_text(call: &Value) -> String {
    let function = &call["function"];
    let body = json!({"name": function["name"], "arguments": function["arguments"]});
    format!("<tool_call>\n{}\n</tool_call>", pyjson::dumps(&body))
}

/// Moves an assistant message's tool calls into its content as `<tool_call>` blocks.
fn calls_to_text(message: &mut Value) {
    let Some(Value::Array(calls)) = message.as_object_mut().and_then(|m| m.remove("tool_calls")) else {
        return;
    };
    let mut parts: Vec<String> = Vec::with_capacity(calls.len() + 1);
    if let Some(content) = message["content"].as_str().filter(|c| !c.is_empty()) {
        parts.push(content.to_owned());
    }
    parts.extend(calls.iter().map(call_text));
    message["content"] = parts.join("\n").into();
}

/// Turns role `tool` messages into user messages of `<tool_response>` blocks, one per run of results.
fn tool_results_to_user(messages: Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::with_capacity(messages.len());
    let mut previous_was_tool = false;
    for message in messages {
        if role(&message) != "tool" {
            previous_was_tool = false;
            out.push(message);
            continue;
        }
        let block =
            format!("<tool_response>\n{}\n</tool_response>", message["content"].as_str().unwrap_or_default());
        match out.last_mut() {
            Some(last) if previous_was_tool => {
                let joined = format!("{}\n{block}", last["content"].as_str().unwrap_or_default());
                last["content"] = joined.into();
            }
            _ => out.push(json!({"role": "user", "content": block})),
        }
        previous_was_tool = true;
    }
    out
}

/// For templates without a system role: each system message's text goes before the next user
/// message's (joined by a newline); one with no user message after it becomes a user message.
fn system_into_user(messages: Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::with_capacity(messages.len());
    let mut pending: Vec<String> = Vec::new();
    for mut message in messages {
        match role(&message) {
            "system" => pending.push(message["content"].as_str().unwrap_or_default().to_owned()),
            "user" if !pending.is_empty() => {
                pending.push(message["content"].as_str().unwrap_or_default().to_owned());
                message["content"] = pending.join("\n").into();
                pending.clear();
                out.push(message);
            }
            _ => out.push(message),
        }
    }
    if !pending.is_empty() {
        out.push(json!({"role": "user", "content": pending.join("\n")}));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_openai_messages() {
        let caps = Caps { system: true, tools: true, tool_calls: true, tool_role: true };
        let messages = vec![
            json!({"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}),
            json!({"role": "assistant", "content": null, "tool_calls": []}),
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}},
                {"id": "2", "type": "function", "function": {"name": "g", "arguments": "not json"}}
            ]}),
        ];
        let prepared = prepare(&messages, &[], &caps).expect("prepare");
        assert_eq!(prepared.messages[0], json!({"role": "system", "content": "a\nb"}));
        assert_eq!(prepared.messages[1], json!({"role": "assistant", "content": ""}));
        assert_eq!(prepared.messages[2]["tool_calls"][0]["function"]["arguments"], json!({"x": 1}));
        assert_eq!(prepared.messages[2]["tool_calls"][1]["function"]["arguments"], json!("not json"));
        assert!(prepared.tools.is_none());
    }

    #[test]
    fn system_goes_into_next_user() {
        let caps = Caps { system: false, tools: true, tool_calls: true, tool_role: true };
        let messages =
            vec![json!({"role": "system", "content": "S"}), json!({"role": "user", "content": "U"})];
        let prepared = prepare(&messages, &[], &caps).expect("prepare");
        assert_eq!(prepared.messages, vec![json!({"role": "user", "content": "S\nU"})]);
    }

    #[test]
    fn rejects_bad_input() {
        let caps = Caps::default();
        let err = prepare(&[json!({"role": "robot", "content": "x"})], &[], &caps).expect_err("role");
        assert_eq!(err, TemplateError::UnknownRole { index: 0, role: "robot".into() });
        let err = prepare(&[json!("hi")], &[], &caps).expect_err("shape");
        assert!(matches!(err, TemplateError::BadMessage { index: 0, .. }));
        let err = prepare(&[], &[json!({"type": "function"})], &caps).expect_err("tool");
        assert!(matches!(err, TemplateError::BadTool { index: 0, .. }));
    }
}
