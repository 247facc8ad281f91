//! Tool-call syntaxes of model families, and reading calls out of a model's reply.

use serde_json::Value;

use crate::error::ToolParseError;

/// How a model family writes tool calls in its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolSyntax {
    /// Family name: `"hermes"` (Qwen 2.5, Hermes, and the generic fallback), `"llama3"`, `"mistral"`.
    pub family: &'static str,
    /// Text that starts a call. For llama3 it is `{"`, the start of the call's JSON itself
    /// (see [`ToolSyntax::opener_in_body`]).
    pub opener: &'static str,
    /// Text that ends a call; `None` when the call runs to the end of the reply.
    pub closer: Option<&'static str>,
    /// Key holding the arguments: `"arguments"`, or `"parameters"` for llama 3.x. The other of
    /// the two is accepted too when reading.
    pub arguments_key: &'static str,
    /// The body after the opener is a JSON array of calls (mistral's `[TOOL_CALLS][...]`).
    pub list: bool,
    /// The opener is the first text of the call's JSON, so it stays part of the body given to
    /// [`ToolSyntax::parse_calls`] (llama3).
    pub opener_in_body: bool,
    /// Calls count only at the very start of the reply (after whitespace and an optional
    /// `<|python_tag|>`): the llama3 reply *is* the call, and `{"` elsewhere is plain text.
    pub start_only: bool,
}

/// One tool call read from a reply.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedCall {
    /// Name of the called tool.
    pub name: String,
    /// Its arguments, as JSON (a JSON string holding JSON is parsed; missing or null is `{}`).
    pub arguments: Value,
}

/// A finished reply split into text and tool calls.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ParsedReply {
    /// Everything outside the calls, trimmed when any call was found, verbatim otherwise.
    pub content: String,
    /// The calls, in order.
    pub calls: Vec<ParsedCall>,
}

const PYTHON_TAG: &str = "<|python_tag|>";

impl ToolSyntax {
    /// `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`: Qwen 2.5, Hermes, the generic fallback.
    pub const HERMES: ToolSyntax = ToolSyntax {
        family: "hermes",
        opener: "<tool_call>",
        closer: Some("</tool_call>"),
        arguments_key: "arguments",
        list: false,
        opener_in_body: false,
        start_only: false,
    };

    /// A reply that is `{"name": ..., "parameters": {...}}`: Llama 3.1 / 3.2 / 3.3 with custom tools.
    /// Several calls may follow each other, separated by whitespace or `;`.
    pub const LLAMA3: ToolSyntax = ToolSyntax {
        family: "llama3",
        opener: "{\"",
        closer: None,
        arguments_key: "parameters",
        list: false,
        opener_in_body: true,
        start_only: true,
    };

    /// `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`: Mistral 7B v0.3, Nemo, Small, Large.
    pub const MISTRAL: ToolSyntax = ToolSyntax {
        family: "mistral",
        opener: "[TOOL_CALLS]",
        closer: None,
        arguments_key: "arguments",
        list: true,
        opener_in_body: false,
        start_only: false,
    };

    /// Guesses the syntax from a chat template's source; [`ToolSyntax::HERMES`] when nothing matches.
    pub fn detect(source: &str) -> ToolSyntax {
        if source.contains("[TOOL_CALLS]") {
            ToolSyntax::MISTRAL
        } else if source.contains("<tool_call>") {
            ToolSyntax::HERMES
        } else if source.contains(PYTHON_TAG) || source.contains("<|start_header_id|>") {
            ToolSyntax::LLAMA3
        } else {
            ToolSyntax::HERMES
        }
    }

    /// Parses the text between opener and closer (or to the end) into calls.
    ///
    /// The body may hold one call object, an array of them, or several of either separated by
    /// whitespace, `,` or `;`. Anything else (no JSON, broken JSON, text after the JSON, an object
    /// without a string `name`, arguments that are a non-JSON string) is an error.
    pub fn parse_calls(&self, body: &str) -> Result<Vec<ParsedCall>, ToolParseError> {
        let body = body.trim_start();
        let mut rest = body.strip_prefix(PYTHON_TAG).unwrap_or(body);
        let mut calls = Vec::new();
        loop {
            rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',' || c == ';');
            if rest.is_empty() {
                break;
            }
            let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
            let value = match stream.next() {
                Some(Ok(value)) => value,
                Some(Err(e)) => return Err(ToolParseError::Json(e.to_string())),
                None => break,
            };
            rest = &rest[stream.byte_offset()..];
            match value {
                Value::Array(items) => {
                    for item in items {
                        calls.push(self.call(item)?);
                    }
                }
                other => calls.push(self.call(other)?),
            }
        }
        if calls.is_empty() {
            return Err(ToolParseError::Empty);
        }
        Ok(calls)
    }

    fn call(&self, value: Value) -> Result<ParsedCall, ToolParseError> {
        let Value::Object(mut object) = value else {
            return Err(ToolParseError::NoName(value.to_string()));
        };
        // Some models wrap the call as {"type": "function", "function": {...}}.
        if let Some(Value::Object(inner)) = object.get("function") {
            if inner.contains_key("name") {
                object = inner.clone();
            }
        }
        let Some(Value::String(name)) = object.remove("name") else {
            return Err(ToolParseError::NoName(Value::Object(object).to_string()));
        };
        let other_key = if self.arguments_key == "arguments" { "parameters" } else { "arguments" };
        let arguments = object.remove(self.arguments_key).or_else(|| object.remove(other_key));
        let arguments = match arguments {
            None | Some(Value::Null) => Value::Object(serde_json::Map::new()),
            Some(Value::String(text)) => serde_json::from_str(&text)
                .map_err(|e| ToolParseError::BadArguments { name: name.clone(), message: e.to_string() })?,
            Some(other) => other,
        };
        Ok(ParsedCall { name, arguments })
    }

    /// Splits a whole finished reply into plain content and tool calls.
    ///
    /// Everything outside calls is content. A call whose body does not parse (see
    /// [`ToolSyntax::parse_calls`]) is kept as content, opener and closer included, so nothing the
    /// model wrote is lost. An opener without its closer (the reply was cut off) runs to the end.
    pub fn split_reply(&self, reply: &str) -> ParsedReply {
        if self.start_only {
            return self.split_at_start(reply);
        }
        let mut content = String::new();
        let mut calls = Vec::new();
        let mut rest = reply;
        while let Some(start) = rest.find(self.opener) {
            content.push_str(&rest[..start]);
            let after = &rest[start + self.opener.len()..];
            let (body, next) = match self.closer.and_then(|c| after.find(c).map(|end| (end, c))) {
                Some((end, closer)) => (&after[..end], &after[end + closer.len()..]),
                None => (after, ""),
            };
            match self.parse_calls(body) {
                Ok(found) => calls.extend(found),
                Err(_) => content.push_str(&rest[start..rest.len() - next.len()]),
            }
            rest = next;
        }
        content.push_str(rest);
        finish(content, calls, reply)
    }

    fn split_at_start(&self, reply: &str) -> ParsedReply {
        let trimmed = reply.trim_start();
        let body = trimmed.strip_prefix(PYTHON_TAG).unwrap_or(trimmed).trim_start();
        if body.starts_with(self.opener) {
            if let Ok(calls) = self.parse_calls(body) {
                return ParsedReply { content: String::new(), calls };
            }
        }
        ParsedReply { content: reply.to_owned(), calls: Vec::new() }
    }
}

fn finish(content: String, calls: Vec<ParsedCall>, reply: &str) -> ParsedReply {
    if calls.is_empty() {
        ParsedReply { content: reply.to_owned(), calls }
    } else {
        ParsedReply { content: content.trim().to_owned(), calls }
    }
}
