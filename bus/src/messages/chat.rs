//! What a chat job carries besides plain text: messages with tool calls, the tools the model may call,
//! the output a job is held to (a JSON object, a JSON Schema, a tool call), and what a worker streams
//! back besides text (tool calls as calls, per-token log probabilities). OpenAI's shapes, flattened
//! where OpenAI nests for no reason (`function.name` is `name` here).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Most tools one job may define.
pub const MAX_TOOLS: usize = 128;
/// Most alternatives `top_logprobs` may ask for per token (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: u8 = 20;
/// Most `logit_bias` entries per job.
pub const MAX_LOGIT_BIAS: usize = 1024;

/// One chat message, as in OpenAI's API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The message text (empty for an assistant turn that only called tools).
    #[serde(default)]
    pub content: String,
    /// Calls an assistant turn made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a `tool` message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// For a `tool` message: the function that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    /// A plain text message.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }

    /// Bytes of text in the message (content, role, calls): a cheap upper bound of its token count.
    pub fn text_len(&self) -> usize {
        self.role.len()
            + self.content.len()
            + self.tool_calls.iter().map(|c| c.name.len() + c.arguments.len()).sum::<usize>()
            + self.tool_call_id.as_ref().map_or(0, String::len)
    }
}

/// A call of a function, made by the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ToolCall {
    /// The call's id (`call_...`); a `tool` message answers it by this id.
    pub id: String,
    /// The function called.
    pub name: String,
    /// The arguments, as JSON text (as OpenAI sends them).
    pub arguments: String,
}

/// A function the model may call (OpenAI's `tools[].function`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ToolDef {
    /// The function's name.
    pub name: String,
    /// What it does, for the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema of its arguments (an object schema); absent: no arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Value>,
}

/// Whether and how the model must call a tool (OpenAI's `tool_choice`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum ToolChoice {
    /// Never call; answer in text.
    None,
    /// The model chooses; a call it starts is held to the tools' schemas.
    #[default]
    Auto,
    /// The reply is one or more calls (constrained by a grammar).
    Required,
    /// The reply is a call of this function (constrained by a grammar).
    Function {
        /// The function.
        name: String,
    },
}

/// The shape the reply must have (OpenAI's `response_format`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Free text.
    #[default]
    Text,
    /// Any JSON object (constrained by a grammar).
    JsonObject,
    /// JSON valid against `schema` (constrained by a grammar built from it).
    JsonSchema {
        /// The schema's name, as the client gave it.
        name: String,
        /// The JSON Schema.
        schema: serde_json::Value,
        /// OpenAI's `strict`: recorded; rbee always holds the reply to the schema.
        #[serde(default)]
        strict: bool,
    },
}

/// A bias added to one token's logit before sampling (OpenAI's `logit_bias`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LogitBias {
    /// The token id in the model's vocabulary.
    pub token: u32,
    /// Added to the logit, in [-100, 100]; -100 bans the token.
    pub bias: f32,
}

/// A tool call in a worker's output (`TokenChunk.tool_calls`): the whole call, sent once it is
/// complete; its text is never in the chunk's `text`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ToolCallChunk {
    /// The call's position in the reply, from 0.
    pub index: u32,
    /// The call's id, chosen by the worker.
    pub id: String,
    /// The function called.
    pub name: String,
    /// The arguments, as JSON text.
    pub arguments: String,
}

/// One generated token and how likely it was (natural log of its probability under the model,
/// before sampling settings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TokenLogprob {
    /// The token's text (lossy when it is part of a character).
    pub token: String,
    /// The token's bytes.
    pub bytes: Vec<u8>,
    /// Its log probability.
    pub logprob: f32,
    /// The most likely tokens at this position, most likely first (`top_logprobs` of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top: Vec<TopLogprob>,
}

/// An alternative at one position of the output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TopLogprob {
    /// The token's text.
    pub token: String,
    /// The token's bytes.
    pub bytes: Vec<u8>,
    /// Its log probability.
    pub logprob: f32,
}
