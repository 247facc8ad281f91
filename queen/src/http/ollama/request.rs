//! Ollama request bodies, read strictly like the OpenAI ones: every field and every `options` key is
//! honoured or refused with a 400 naming it. `options` map to rbee's sampling (`num_predict` is
//! `max_tokens`), `format` to structured output (`"json"` or a JSON schema). `/api/generate` renders
//! its prompt with the model's chat template (with `system` first), as Ollama does, unless `raw`.

use rbee_bus::{ChatMessage, ModelId, Prompt, ResponseFormat, SamplingParams};
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::http::openai::model_id;
use crate::jobs::admit::JobRequest;
use crate::keep_alive::KeepAlive;

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(param, message.into())
}

/// Null or an empty list: what clients send for a field they leave unset (the `ollama` client sends
/// `tools: []`).
fn unset(value: &Value) -> bool {
    value.is_null() || value.as_array().is_some_and(Vec::is_empty)
}

/// Refuses the first field rbee does not take (unset counts as absent).
fn refuse_unknown(other: &serde_json::Map<String, Value>, hints: &[(&str, &str)]) -> Result<(), ApiError> {
    let Some((name, _)) = other.iter().find(|(_, v)| !unset(v)) else { return Ok(()) };
    let hint = hints.iter().find(|(k, _)| k == name).map(|(_, h)| *h).unwrap_or("");
    Err(invalid(name, format!("{name:?} is not supported by rbee{hint}")))
}

/// Hints for fields rbee refuses on both endpoints.
const HINTS: &[(&str, &str)] = &[
    ("tools", " on /api/chat yet: use /v1/chat/completions for tool calls"),
    ("images", ": the models rbee serves read text only"),
    ("think", ": rbee has no separate thinking output"),
];

/// `options`, each key Ollama documents for sampling; the rest are refused by name.
#[derive(Debug, Default, Deserialize)]
struct Options {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    seed: Option<i64>,
    stop: Option<Vec<String>>,
    num_predict: Option<i64>,
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

impl Options {
    fn params(self) -> Result<SamplingParams, ApiError> {
        let hints: &[(&str, &str)] = &[
            ("num_ctx", ": the context is a worker's (rbee workers spawn MODEL --ctx-per-slot N)"),
            ("num_thread", ": threads are a worker's (rbee workers spawn MODEL --threads N)"),
            ("num_gpu", ": rbee places the whole model on the device it picks"),
        ];
        if let Some((name, _)) = self.other.iter().find(|(_, v)| !v.is_null()) {
            let hint = hints.iter().find(|(k, _)| k == name).map(|(_, h)| *h).unwrap_or("");
            return Err(invalid(
                &format!("options.{name}"),
                format!("option {name:?} is not supported by rbee{hint}"),
            ));
        }
        let d = SamplingParams::default();
        let max_tokens = match self.num_predict {
            None => d.max_tokens,
            Some(n) if n > 0 => u32::try_from(n).unwrap_or(u32::MAX),
            Some(n) => {
                return Err(invalid(
                    "options.num_predict",
                    format!(
                    "num_predict {n} (no limit) is not supported by rbee: give the most tokens to generate"
                ),
                ))
            }
        };
        let seed = match self.seed {
            // Ollama's "a random seed".
            None | Some(-1) => None,
            Some(s) => {
                Some(u64::try_from(s).map_err(|_| invalid("options.seed", format!("seed {s} is negative")))?)
            }
        };
        Ok(SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_p: self.top_p.unwrap_or(d.top_p),
            top_k: self.top_k.unwrap_or(d.top_k),
            min_p: self.min_p.unwrap_or(d.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(d.repeat_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            seed,
            stop: self.stop.unwrap_or_default(),
            max_tokens,
            ..d
        })
    }
}

/// `format`: `"json"`, a JSON schema, or absent / `""`.
fn response_format(raw: Option<&Value>) -> Result<ResponseFormat, ApiError> {
    match raw {
        None | Some(Value::Null) => Ok(ResponseFormat::Text),
        Some(Value::String(s)) if s.is_empty() => Ok(ResponseFormat::Text),
        Some(Value::String(s)) if s == "json" => Ok(ResponseFormat::JsonObject),
        Some(schema @ Value::Object(_)) => Ok(ResponseFormat::JsonSchema {
            name: "response".to_owned(),
            schema: schema.clone(),
            strict: true,
        }),
        Some(other) => Err(invalid("format", format!("format {other} is not \"json\" or a JSON schema"))),
    }
}

/// What one request asks for.
#[derive(Debug)]
pub struct Plan {
    /// The model, as named.
    pub model: String,
    /// The job.
    pub job: JobRequest,
    /// Answer as NDJSON lines (Ollama's default) or one object.
    pub stream: bool,
}

/// `keep_alive`: Ollama's duration (`"5m"`, seconds, negative: keep loaded); null: unset.
pub fn keep_alive(raw: Option<&Value>) -> Result<Option<KeepAlive>, ApiError> {
    match raw {
        None | Some(Value::Null) => Ok(None),
        Some(value) => {
            KeepAlive::parse(value).map(Some).map_err(|e| invalid("keep_alive", format!("keep_alive {e}")))
        }
    }
}

fn plan(
    model: &str,
    prompt: Prompt,
    options: Option<Options>,
    format: Option<&Value>,
    stream: Option<bool>,
    keep_alive_raw: Option<&Value>,
) -> Result<Plan, ApiError> {
    let model_id: ModelId = model_id(model)?;
    let keep_alive = keep_alive(keep_alive_raw)?;
    let mut params = options.unwrap_or_default().params()?;
    params.response_format = response_format(format)?;
    params.validate_for(&prompt).map_err(|e| invalid(e.field, e.to_string()))?;
    Ok(Plan {
        model: model.to_owned(),
        job: JobRequest { model_id, prompt, params, deadline_ms: None, job_id: None, keep_alive },
        stream: stream.unwrap_or(true),
    })
}

/// Body of `POST /api/chat`.
#[derive(Debug, Deserialize)]
pub struct ChatBody {
    model: String,
    #[serde(default)]
    messages: Vec<Value>,
    stream: Option<bool>,
    format: Option<Value>,
    options: Option<Options>,
    keep_alive: Option<Value>,
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

/// One Ollama message: role and text content (images and tool calls are refused).
fn message(i: usize, raw: &Value) -> Result<ChatMessage, ApiError> {
    let param = format!("messages[{i}]");
    let obj = raw.as_object().ok_or_else(|| invalid(&param, "must be an object"))?;
    let role = match obj.get("role").and_then(Value::as_str) {
        Some(r @ ("system" | "user" | "assistant")) => r,
        Some(r) => return Err(invalid(&param, format!("role {r:?} is not system, user or assistant"))),
        None => return Err(invalid(&param, "has no role")),
    };
    for (key, value) in obj {
        match key.as_str() {
            "role" | "content" => {}
            _ if unset(value) => {}
            other => {
                return Err(invalid(
                    &format!("{param}.{other}"),
                    format!("{other:?} in a message is not supported by rbee"),
                ))
            }
        }
    }
    let content = match obj.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(invalid(&format!("{param}.content"), "must be a string")),
    };
    Ok(ChatMessage { role: role.to_owned(), content, tool_calls: Vec::new(), tool_call_id: None, name: None })
}

impl ChatBody {
    /// True when there is no message (Ollama's "load the model" call).
    pub fn load_only(&self) -> bool {
        self.messages.is_empty()
    }

    /// The job and the answer's shape, or the first field refused.
    pub fn plan(self) -> Result<Plan, ApiError> {
        refuse_unknown(&self.other, HINTS)?;
        let messages =
            self.messages.iter().enumerate().map(|(i, m)| message(i, m)).collect::<Result<Vec<_>, _>>()?;
        plan(
            &self.model,
            Prompt::Chat { messages, tools: Vec::new() },
            self.options,
            self.format.as_ref(),
            self.stream,
            self.keep_alive.as_ref(),
        )
    }
}

/// Body of `POST /api/generate`.
#[derive(Debug, Deserialize)]
pub struct GenerateBody {
    model: String,
    #[serde(default)]
    prompt: String,
    system: Option<String>,
    #[serde(default)]
    raw: bool,
    stream: Option<bool>,
    format: Option<Value>,
    options: Option<Options>,
    keep_alive: Option<Value>,
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

impl GenerateBody {
    /// True when the prompt is empty (Ollama's "load the model" call).
    pub fn load_only(&self) -> bool {
        self.prompt.is_empty()
    }

    /// The job and the answer's shape, or the first field refused.
    pub fn plan(self) -> Result<Plan, ApiError> {
        let hints = [
            HINTS,
            &[
                ("context", ": send the conversation to /api/chat instead of a context"),
                ("template", ": rbee renders the model's own chat template (or none with raw)"),
                ("suffix", ": rbee does not fill in the middle"),
            ],
        ]
        .concat();
        refuse_unknown(&self.other, &hints)?;
        let prompt = if self.raw {
            if self.system.is_some() {
                return Err(invalid("system", "a raw prompt has no template to put a system prompt in"));
            }
            Prompt::Text { text: self.prompt }
        } else {
            let mut messages = Vec::new();
            for (role, content) in [("system", self.system), ("user", Some(self.prompt))] {
                if let Some(content) = content {
                    messages.push(ChatMessage {
                        role: role.to_owned(),
                        content,
                        tool_calls: Vec::new(),
                        tool_call_id: None,
                        name: None,
                    });
                }
            }
            Prompt::Chat { messages, tools: Vec::new() }
        };
        plan(&self.model, prompt, self.options, self.format.as_ref(), self.stream, self.keep_alive.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn chat(body: Value) -> Result<Plan, ApiError> {
        serde_json::from_value::<ChatBody>(body).expect("body").plan()
    }

    #[test]
    fn options_map_to_sampling_and_the_rest_is_refused_by_name() {
        let plan = chat(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "options": {"temperature": 0, "num_predict": 7, "seed": 3, "stop": ["x"]}, "stream": false}))
        .expect("plan");
        assert_eq!(plan.job.params.max_tokens, 7);
        assert_eq!(plan.job.params.temperature, 0.0);
        assert_eq!(plan.job.params.seed, Some(3));
        assert_eq!(plan.job.params.stop, vec!["x".to_owned()]);
        assert!(!plan.stream);
        let refused = |body: Value| chat(body).err().map(|e| e.to_string()).unwrap_or_default();
        let base = |extra: Value| {
            let mut b = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            b.as_object_mut().expect("obj").extend(extra.as_object().expect("obj").clone());
            b
        };
        assert!(refused(base(json!({"options": {"mirostat": 1}}))).contains("mirostat"));
        assert!(refused(base(json!({"options": {"num_ctx": 8192}}))).contains("--ctx-per-slot"));
        assert!(refused(base(json!({"options": {"num_predict": -1}}))).contains("num_predict"));
        assert_eq!(
            chat(base(json!({"keep_alive": "5m"}))).expect("5m").job.keep_alive.and_then(KeepAlive::seconds),
            Some(300.0)
        );
        assert!(refused(base(json!({"keep_alive": "soon"}))).contains("keep_alive"));
        assert!(refused(base(json!({"tools": [{}]}))).contains("/v1/chat/completions"));
        assert!(refused(
            json!({"model": "m", "messages": [{"role": "user", "content": "hi", "images": ["x"]}]})
        )
        .contains("images"));
        assert!(chat(base(json!({"keep_alive": null}))).is_ok(), "null counts as absent");
        assert!(chat(base(json!({"tools": []}))).is_ok(), "an empty list counts as absent");
    }

    #[test]
    fn format_and_generate_prompts() {
        let plan =
            chat(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "format": "json"}))
                .expect("plan");
        assert_eq!(plan.job.params.response_format, ResponseFormat::JsonObject);
        assert!(plan.stream, "Ollama streams unless told not to");
        let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        let plan =
            chat(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "format": schema}))
                .expect("plan");
        assert!(matches!(plan.job.params.response_format, ResponseFormat::JsonSchema { .. }));
        let generate = |b: Value| serde_json::from_value::<GenerateBody>(b).expect("body").plan();
        let plan = generate(json!({"model": "m", "prompt": "p", "system": "s"})).expect("plan");
        assert!(
            matches!(&plan.job.prompt, Prompt::Chat { messages, .. } if messages.len() == 2 && messages[0].role == "system")
        );
        let plan = generate(json!({"model": "m", "prompt": "p", "raw": true})).expect("plan");
        assert!(matches!(plan.job.prompt, Prompt::Text { .. }));
        assert!(generate(json!({"model": "m", "prompt": "p", "context": [1, 2]})).is_err());
        assert!(generate(json!({"model": "m", "prompt": "p", "raw": true, "system": "s"})).is_err());
    }
}
