//! OpenAI request bodies, read strictly: every parameter of `chat/completions` and `completions` is
//! either honoured (turned into the jobs below) or refused with a 400 that names it. A parameter set
//! to `null` counts as absent; a few are accepted at their no-op value (`store: false`,
//! `service_tier: "auto"`, `modalities: ["text"]`). The README's parameter table is this file.

use std::collections::BTreeMap;

use rbee_bus::{
    ChatMessage, LogitBias, ModelId, Prompt, ResponseFormat, SamplingParams, ToolCall, ToolChoice, ToolDef,
};
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::jobs::admit::JobRequest;

/// Most choices (`n`) one request may ask for: each is a job holding a slot.
pub const MAX_CHOICES: u32 = 8;
/// Most alternatives per token the legacy completions `logprobs` may ask for (OpenAI's limit).
const MAX_COMPLETION_LOGPROBS: u8 = 5;

/// `stop` as OpenAI takes it: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Fields both endpoints take. Unknown fields land in `other` and are refused.
#[derive(Debug, Deserialize)]
struct Common {
    model: String,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    n: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    logit_bias: Option<BTreeMap<String, f32>>,
    seed: Option<u64>,
    stop: Option<StopField>,
    max_tokens: Option<u32>,
    user: Option<String>,
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

/// Body of `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    messages: Vec<Value>,
    max_completion_tokens: Option<u32>,
    logprobs: Option<bool>,
    top_logprobs: Option<u8>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    response_format: Option<Value>,
    #[serde(flatten)]
    common: Common,
}

/// `prompt` as the legacy endpoint takes it.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PromptField {
    One(String),
    Many(Vec<String>),
}

/// Body of `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    prompt: Option<PromptField>,
    logprobs: Option<u8>,
    echo: Option<bool>,
    best_of: Option<u32>,
    #[serde(flatten)]
    common: Common,
}

/// What a request asks for: its jobs (one per choice) and how to answer.
#[derive(Debug)]
pub struct Plan {
    /// The model, as named in the request.
    pub model: String,
    /// One job per choice, in choice order.
    pub jobs: Vec<JobRequest>,
    /// Answer as server-sent events.
    pub stream: bool,
    /// Streaming: end with a chunk carrying usage and no choices.
    pub include_usage: bool,
    /// Answer with log probabilities.
    pub logprobs: bool,
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(param, message.into())
}

/// No-op values of parameters rbee otherwise does not take.
fn is_noop(name: &str, value: &Value) -> bool {
    match name {
        "store" => value == &Value::Bool(false),
        "service_tier" => matches!(value.as_str(), Some("auto" | "default")),
        "modalities" => value == &serde_json::json!(["text"]),
        "metadata" => value.as_object().is_some_and(serde_json::Map::is_empty),
        _ => false,
    }
}

/// Refuses the first parameter rbee does not take.
pub(crate) fn refuse_unknown(other: &serde_json::Map<String, Value>) -> Result<(), ApiError> {
    match other.iter().find(|(k, v)| !v.is_null() && !is_noop(k, v)) {
        None => Ok(()),
        Some((name, _)) => {
            let hint = match name.as_str() {
                "functions" | "function_call" => " (deprecated by OpenAI: use tools and tool_choice)",
                _ => "",
            };
            Err(invalid(name, format!("parameter {name:?} is not supported by rbee{hint}")))
        }
    }
}

impl Common {
    /// Sampling params of the fields both endpoints share.
    fn params(&self, max_tokens: Option<u32>) -> Result<SamplingParams, ApiError> {
        let d = SamplingParams::default();
        let logit_bias = match &self.logit_bias {
            None => Vec::new(),
            Some(map) => map
                .iter()
                .map(|(token, &bias)| {
                    let token = token
                        .parse::<u32>()
                        .map_err(|_| invalid("logit_bias", format!("key {token:?} is not a token id")))?;
                    Ok(LogitBias { token, bias })
                })
                .collect::<Result<_, ApiError>>()?,
        };
        Ok(SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_p: self.top_p.unwrap_or(d.top_p),
            top_k: self.top_k.unwrap_or(d.top_k),
            min_p: self.min_p.unwrap_or(d.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(d.repeat_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            logit_bias,
            seed: self.seed,
            stop: match &self.stop {
                None => Vec::new(),
                Some(StopField::One(s)) => vec![s.clone()],
                Some(StopField::Many(v)) => v.clone(),
            },
            max_tokens: max_tokens.or(self.max_tokens).unwrap_or(d.max_tokens),
            ..d
        })
    }

    fn choices(&self) -> Result<u32, ApiError> {
        match self.n.unwrap_or(1) {
            n @ 1..=MAX_CHOICES => Ok(n),
            n => Err(invalid("n", format!("n = {n} is outside [1, {MAX_CHOICES}]"))),
        }
    }

    fn model_id(&self) -> Result<ModelId, ApiError> {
        model_id(&self.model)
    }

    /// `n` jobs of one prompt; choice `i` samples with `seed + i` when a seed is given, so that the
    /// choices differ but the request stays reproducible.
    fn jobs(&self, prompt: Prompt, params: SamplingParams, n: u32) -> Result<Vec<JobRequest>, ApiError> {
        let model_id = self.model_id()?;
        if let Some(user) = &self.user {
            tracing::debug!(user = %user, "request for an end user");
        }
        Ok((0..n)
            .map(|i| JobRequest {
                model_id: model_id.clone(),
                prompt: prompt.clone(),
                params: SamplingParams {
                    seed: params.seed.map(|s| s.wrapping_add(u64::from(i))),
                    ..params.clone()
                },
                deadline_ms: None,
                job_id: None,
                keep_alive: None,
            })
            .collect())
    }
}

/// Parses a model id from a request body.
pub fn model_id(raw: &str) -> Result<ModelId, ApiError> {
    raw.parse().map_err(|e: rbee_bus::IdError| ApiError::invalid("model", e.to_string()))
}

/// One OpenAI message as a bus message.
fn message(i: usize, raw: &Value) -> Result<ChatMessage, ApiError> {
    let param = format!("messages[{i}]");
    let obj = raw.as_object().ok_or_else(|| invalid(&param, "must be an object"))?;
    let role = match obj.get("role").and_then(Value::as_str) {
        Some("developer") => "system",
        Some(r @ ("system" | "user" | "assistant" | "tool")) => r,
        Some(r) => {
            return Err(invalid(
                &param,
                format!("role {r:?} is not system, developer, user, assistant or tool"),
            ))
        }
        None => return Err(invalid(&param, "has no role")),
    };
    let content = match obj.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    (kind, _) => {
                        return Err(invalid(
                            &format!("{param}.content"),
                            format!("content part of type {kind:?} is not supported (text only)"),
                        ))
                    }
                }
            }
            text
        }
        Some(_) => {
            return Err(invalid(&format!("{param}.content"), "must be a string, an array of parts or null"))
        }
    };
    let mut tool_calls = Vec::new();
    if let Some(calls) = obj.get("tool_calls").filter(|v| !v.is_null()) {
        let calls =
            calls.as_array().ok_or_else(|| invalid(&format!("{param}.tool_calls"), "must be an array"))?;
        for (j, call) in calls.iter().enumerate() {
            let p = format!("{param}.tool_calls[{j}]");
            let function = call.get("function").ok_or_else(|| invalid(&p, "has no function"))?;
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(&p, "has no function.name"))?;
            let arguments = match function.get("arguments") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => "{}".to_owned(),
                Some(v) => v.to_string(),
            };
            let id = call.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
            tool_calls.push(ToolCall { id, name: name.to_owned(), arguments });
        }
    }
    let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
    if role == "tool" && text("tool_call_id").is_none() {
        return Err(invalid(&param, "a tool message needs tool_call_id"));
    }
    Ok(ChatMessage {
        role: role.to_owned(),
        content,
        tool_calls,
        tool_call_id: text("tool_call_id"),
        name: text("name"),
    })
}

fn tools(raw: &[Value]) -> Result<Vec<ToolDef>, ApiError> {
    raw.iter()
        .enumerate()
        .map(|(i, t)| {
            let p = format!("tools[{i}]");
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(invalid(&p, "only tools of type \"function\" are supported"));
            }
            let f = t.get("function").ok_or_else(|| invalid(&p, "has no function"))?;
            let name =
                f.get("name").and_then(Value::as_str).ok_or_else(|| invalid(&p, "has no function.name"))?;
            Ok(ToolDef {
                name: name.to_owned(),
                description: f.get("description").and_then(Value::as_str).map(str::to_owned),
                parameters: f.get("parameters").filter(|v| !v.is_null()).cloned(),
            })
        })
        .collect()
}

fn tool_choice(raw: Option<&Value>) -> Result<ToolChoice, ApiError> {
    match raw {
        None | Some(Value::Null) => Ok(ToolChoice::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "none" => Ok(ToolChoice::None),
            "auto" => Ok(ToolChoice::Auto),
            "required" => Ok(ToolChoice::Required),
            other => {
                Err(invalid("tool_choice", format!("{other:?} is not none, auto, required or a function")))
            }
        },
        Some(v) => match v.pointer("/function/name").and_then(Value::as_str) {
            Some(name) if v.get("type").and_then(Value::as_str) == Some("function") => {
                Ok(ToolChoice::Function { name: name.to_owned() })
            }
            _ => {
                Err(invalid("tool_choice", "must be {\"type\": \"function\", \"function\": {\"name\": ...}}"))
            }
        },
    }
}

fn response_format(raw: Option<&Value>) -> Result<ResponseFormat, ApiError> {
    let Some(v) = raw.filter(|v| !v.is_null()) else { return Ok(ResponseFormat::Text) };
    match v.get("type").and_then(Value::as_str) {
        Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => {
            let spec =
                v.get("json_schema").ok_or_else(|| invalid("response_format", "has no json_schema"))?;
            let schema = spec.get("schema").cloned().unwrap_or_else(|| serde_json::json!({"type": "object"}));
            Ok(ResponseFormat::JsonSchema {
                name: spec.get("name").and_then(Value::as_str).unwrap_or("response").to_owned(),
                schema,
                strict: spec.get("strict").and_then(Value::as_bool).unwrap_or(false),
            })
        }
        other => {
            Err(invalid("response_format", format!("type {other:?} is not text, json_object or json_schema")))
        }
    }
}

impl ChatRequest {
    /// The jobs and the answer's shape, or the first parameter refused.
    pub fn plan(self) -> Result<Plan, ApiError> {
        refuse_unknown(&self.common.other)?;
        let messages =
            self.messages.iter().enumerate().map(|(i, m)| message(i, m)).collect::<Result<Vec<_>, _>>()?;
        let tools = tools(self.tools.as_deref().unwrap_or_default())?;
        let logprobs = self.logprobs.unwrap_or(false);
        let mut params = self.common.params(self.max_completion_tokens)?;
        params.logprobs = logprobs;
        params.top_logprobs = self.top_logprobs.unwrap_or(0);
        params.tool_choice = tool_choice(self.tool_choice.as_ref())?;
        params.parallel_tool_calls = self.parallel_tool_calls.unwrap_or(true);
        params.response_format = response_format(self.response_format.as_ref())?;
        let n = self.common.choices()?;
        let prompt = Prompt::Chat { messages, tools };
        params.validate_for(&prompt).map_err(|e| invalid(e.field, e.to_string()))?;
        Ok(Plan {
            model: self.common.model.clone(),
            jobs: self.common.jobs(prompt, params, n)?,
            stream: self.common.stream,
            include_usage: self.common.stream_options.as_ref().is_some_and(|o| o.include_usage),
            logprobs,
        })
    }
}

impl CompletionRequest {
    /// The jobs (one per prompt and choice, prompt-major as OpenAI orders them) and the answer's shape.
    pub fn plan(self) -> Result<Plan, ApiError> {
        refuse_unknown(&self.common.other)?;
        if self.echo == Some(true) {
            return Err(invalid("echo", "echo is not supported by rbee"));
        }
        let n = self.common.choices()?;
        if let Some(best_of) = self.best_of.filter(|&b| b != n) {
            return Err(invalid("best_of", format!("{best_of} differs from n: rbee does not rank choices")));
        }
        let prompts = match self.prompt {
            None => return Err(invalid("prompt", "is required")),
            Some(PromptField::One(s)) => vec![s],
            Some(PromptField::Many(v)) if !v.is_empty() => v,
            Some(PromptField::Many(_)) => return Err(invalid("prompt", "must not be an empty list")),
        };
        if prompts.len() as u32 * n > MAX_CHOICES {
            return Err(invalid(
                "prompt",
                format!("{} prompts x n={n} choices is over {MAX_CHOICES}", prompts.len()),
            ));
        }
        let mut params = self.common.params(None)?;
        if let Some(top) = self.logprobs {
            if top > MAX_COMPLETION_LOGPROBS {
                return Err(invalid("logprobs", format!("{top} is above {MAX_COMPLETION_LOGPROBS}")));
            }
            params.logprobs = true;
            params.top_logprobs = top;
        }
        let mut jobs = Vec::new();
        for text in prompts {
            let prompt = Prompt::Text { text };
            params.validate_for(&prompt).map_err(|e| invalid(e.field, e.to_string()))?;
            jobs.extend(self.common.jobs(prompt, params.clone(), n)?);
        }
        Ok(Plan {
            model: self.common.model.clone(),
            jobs,
            stream: self.common.stream,
            include_usage: self.common.stream_options.as_ref().is_some_and(|o| o.include_usage),
            logprobs: params.logprobs,
        })
    }
}
