//! One choice of an answer in OpenAI's shapes: its text, tool calls and log probabilities as chat
//! messages, deltas or legacy completion choices, and the usage of all choices together.

use rbee_bus::{FinishReason, TokenLogprob, ToolCallChunk, Usage};
use serde_json::{json, Value};

use super::Flavor;

/// What every choice of one answer shares.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) model: String,
    pub(crate) flavor: Flavor,
    pub(crate) logprobs: bool,
    pub(crate) created: u64,
}

impl Answer {
    /// The answer's id and object type.
    pub(crate) fn id_and_object(&self, first_job: &str, stream: bool) -> (String, &'static str) {
        match (self.flavor, stream) {
            (Flavor::Chat, false) => (format!("chatcmpl-{first_job}"), "chat.completion"),
            (Flavor::Chat, true) => (format!("chatcmpl-{first_job}"), "chat.completion.chunk"),
            (Flavor::Completion, _) => (format!("cmpl-{first_job}"), "text_completion"),
        }
    }
}

/// The finish reason as OpenAI names it (`cancelled` has no OpenAI name; it is passed as is).
pub(crate) fn finish_str(reason: FinishReason) -> &'static str {
    reason.as_str()
}

/// Usage of all choices: the prompt counted once (every choice reads the same one), completions
/// summed.
pub(crate) fn usage_json(usages: &[Usage]) -> Value {
    let prompt = usages.first().map_or(0, |u| u.prompt_tokens);
    let cached = usages.first().map_or(0, |u| u.cached_tokens);
    let completion: u32 = usages.iter().map(|u| u.completion_tokens).sum();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": { "cached_tokens": cached },
    })
}

/// Tool calls as a chat message's `tool_calls` (with `index` for stream deltas).
pub(crate) fn tool_calls_json(calls: &[ToolCallChunk], with_index: bool) -> Value {
    calls
        .iter()
        .map(|c| {
            let mut v = json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}});
            if with_index {
                v["index"] = c.index.into();
            }
            v
        })
        .collect()
}

/// Log probabilities in the chat shape: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
pub(crate) fn chat_logprobs(entries: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = entries
        .iter()
        .map(|e| {
            let top: Vec<Value> = e
                .top
                .iter()
                .map(|t| json!({"token": t.token, "logprob": t.logprob, "bytes": t.bytes}))
                .collect();
            json!({"token": e.token, "logprob": e.logprob, "bytes": e.bytes, "top_logprobs": top})
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// Log probabilities in the legacy completions shape; `offset` is the text length before these tokens.
pub(crate) fn completion_logprobs(entries: &[TokenLogprob], mut offset: usize) -> Value {
    let mut tokens = Vec::new();
    let mut token_logprobs = Vec::new();
    let mut top = Vec::new();
    let mut offsets = Vec::new();
    for e in entries {
        tokens.push(Value::from(e.token.clone()));
        token_logprobs.push(Value::from(e.logprob));
        let alternatives: serde_json::Map<String, Value> =
            e.top.iter().map(|t| (t.token.clone(), Value::from(t.logprob))).collect();
        top.push(Value::Object(alternatives));
        offsets.push(Value::from(offset));
        offset += e.token.len();
    }
    json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets})
}

/// What one choice has produced so far.
#[derive(Debug, Default)]
pub(crate) struct Choice {
    pub(crate) text: String,
    pub(crate) calls: Vec<ToolCallChunk>,
    pub(crate) logprobs: Vec<TokenLogprob>,
}

impl Choice {
    /// The finished choice as a `choices[]` entry of a whole answer.
    pub(crate) fn json(&self, answer: &Answer, index: usize, reason: FinishReason) -> Value {
        match answer.flavor {
            Flavor::Chat => {
                let mut message = json!({"role": "assistant", "content": self.text});
                if !self.calls.is_empty() {
                    if self.text.trim().is_empty() {
                        message["content"] = Value::Null;
                    }
                    message["tool_calls"] = tool_calls_json(&self.calls, false);
                }
                let logprobs = if answer.logprobs { chat_logprobs(&self.logprobs) } else { Value::Null };
                json!({"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish_str(reason)})
            }
            Flavor::Completion => {
                let logprobs =
                    if answer.logprobs { completion_logprobs(&self.logprobs, 0) } else { Value::Null };
                json!({"index": index, "text": self.text, "logprobs": logprobs, "finish_reason": finish_str(reason)})
            }
        }
    }
}
