//! OpenAI-compatible endpoints: chat completions, completions (stream and non-stream) and models.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rbee_bus::{ChatMessage, FinishReason, JobId, JobState, ModelId, Prompt, SamplingParams, Usage};
use serde::Deserialize;

use super::JsonBody;
use crate::error::ApiError;
use crate::jobs::admit::{self, JobRequest};
use crate::jobs::dispatch;
use crate::jobs::job::{JobEvent, JobReader};
use crate::Queen;

/// `stop` as OpenAI takes it: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    /// One stop sequence.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// Sampling fields shared by both endpoints (OpenAI's names, plus llama.cpp's `top_k`, `min_p`,
/// `repeat_penalty`).
#[derive(Debug, Default, Deserialize)]
pub struct SamplingFields {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    seed: Option<u64>,
    stop: Option<StopField>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
}

impl SamplingFields {
    /// Sampling params with our defaults for what is absent.
    pub fn params(self) -> SamplingParams {
        let d = SamplingParams::default();
        SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_p: self.top_p.unwrap_or(d.top_p),
            top_k: self.top_k.unwrap_or(d.top_k),
            min_p: self.min_p.unwrap_or(d.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(d.repeat_penalty),
            seed: self.seed,
            stop: match self.stop {
                None => Vec::new(),
                Some(StopField::One(s)) => vec![s],
                Some(StopField::Many(v)) => v,
            },
            max_tokens: self.max_completion_tokens.or(self.max_tokens).unwrap_or(d.max_tokens),
        }
    }
}

/// Body of `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    model: String,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(flatten)]
    sampling: SamplingFields,
}

/// `prompt` as OpenAI takes it.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    /// One prompt.
    One(String),
    /// Several (joined: one completion per request here).
    Many(Vec<String>),
}

/// Body of `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    model: String,
    prompt: PromptField,
    #[serde(default)]
    stream: bool,
    #[serde(flatten)]
    sampling: SamplingFields,
}

/// Parses a model id from a request body.
pub fn model_id(raw: &str) -> Result<ModelId, ApiError> {
    raw.parse().map_err(|e: rbee_bus::IdError| ApiError::invalid("model", e.to_string()))
}

#[derive(Clone, Copy, PartialEq)]
enum Flavor {
    Chat,
    Completion,
}

/// `POST /v1/chat/completions`
pub async fn chat_completions(
    State(queen): State<Arc<Queen>>,
    JsonBody(req): JsonBody<ChatRequest>,
) -> Response {
    let model = match model_id(&req.model) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    let job = JobRequest {
        model_id: model,
        prompt: Prompt::Chat { messages: req.messages },
        params: req.sampling.params(),
        deadline_ms: None,
        job_id: None,
    };
    run(queen, job, req.stream, Flavor::Chat).await
}

/// `POST /v1/completions`
pub async fn completions(
    State(queen): State<Arc<Queen>>,
    JsonBody(req): JsonBody<CompletionRequest>,
) -> Response {
    let model = match model_id(&req.model) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    let text = match req.prompt {
        PromptField::One(s) => s,
        PromptField::Many(v) => v.concat(),
    };
    let job = JobRequest {
        model_id: model,
        prompt: Prompt::Text { text },
        params: req.sampling.params(),
        deadline_ms: None,
        job_id: None,
    };
    run(queen, job, req.stream, Flavor::Completion).await
}

async fn run(queen: Arc<Queen>, job: JobRequest, stream: bool, flavor: Flavor) -> Response {
    let model = job.model_id.to_string();
    let job = match admit::submit(&queen, job).await {
        Ok(job) => job,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let job_id = job.job_id.clone();
    let Some(mut reader) = job.reader() else {
        return ApiError::JobFailed("the job keeps no events".to_owned()).into_response();
    };
    // Until the worker accepts, a failure is still an HTTP error (400/413/503), not a broken stream.
    let mut pending = Vec::new();
    loop {
        let Some(event) = reader.next().await else { break };
        let started = matches!(&event, JobEvent::Token(_))
            || matches!(&event, JobEvent::Status(s) if matches!(s.state, JobState::Accepted { .. } | JobState::Running { .. }));
        if let JobEvent::Status(s) = &event {
            if let JobState::Finished { finish_reason: FinishReason::Error, error, .. } = &s.state {
                let message = error.clone().unwrap_or_else(|| "job failed".to_owned());
                return ApiError::from_job_failure(reader.job().failure(), message).into_response();
            }
        }
        pending.push(event);
        if started || pending.last().is_some_and(JobEvent::is_terminal) {
            break;
        }
    }
    if stream {
        sse(queen, job_id, model, flavor, pending, reader).into_response()
    } else {
        collect(job_id, model, flavor, pending, reader).await
    }
}

fn created() -> u64 {
    rbee_bus::now_ms() / 1000
}

fn finish_str(reason: FinishReason) -> &'static str {
    reason.as_str()
}

fn usage_json(usage: &Usage) -> serde_json::Value {
    serde_json::json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": usage.cached_tokens },
    })
}

async fn collect(
    job_id: JobId,
    model: String,
    flavor: Flavor,
    pending: Vec<JobEvent>,
    mut reader: JobReader,
) -> Response {
    let mut text = String::new();
    let mut end = None;
    let mut events = pending.into_iter().map(Some).collect::<std::collections::VecDeque<_>>();
    loop {
        let event = match events.pop_front() {
            Some(e) => e,
            None => reader.next().await,
        };
        match event {
            Some(JobEvent::Token(chunk)) => text.push_str(&chunk.text),
            Some(JobEvent::Status(s)) => {
                if let JobState::Finished { finish_reason, usage, error, .. } = s.state {
                    end = Some((finish_reason, usage, error));
                    break;
                }
            }
            None => break,
        }
    }
    let Some((reason, usage, error)) = end else {
        return ApiError::JobFailed("the job ended without a result".to_owned()).into_response();
    };
    if reason == FinishReason::Error {
        return ApiError::JobFailed(error.unwrap_or_else(|| "job failed".to_owned())).into_response();
    }
    let body = match flavor {
        Flavor::Chat => serde_json::json!({
            "id": format!("chatcmpl-{job_id}"),
            "object": "chat.completion",
            "created": created(),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_str(reason)}],
            "usage": usage_json(&usage),
        }),
        Flavor::Completion => serde_json::json!({
            "id": format!("cmpl-{job_id}"),
            "object": "text_completion",
            "created": created(),
            "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish_str(reason)}],
            "usage": usage_json(&usage),
        }),
    };
    Json(body).into_response()
}

/// Cancels the job when the client goes away before it ends.
struct CancelOnDrop {
    queen: Arc<Queen>,
    job_id: JobId,
    done: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.done {
            let queen = self.queen.clone();
            let job_id = self.job_id.clone();
            tracing::info!(%job_id, "client disconnected, cancelling job");
            tokio::spawn(async move { dispatch::cancel(&queen, &job_id, "client disconnected").await });
        }
    }
}

fn sse(
    queen: Arc<Queen>,
    job_id: JobId,
    model: String,
    flavor: Flavor,
    pending: Vec<JobEvent>,
    reader: JobReader,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let (id, object) = match flavor {
        Flavor::Chat => (format!("chatcmpl-{job_id}"), "chat.completion.chunk"),
        Flavor::Completion => (format!("cmpl-{job_id}"), "text_completion"),
    };
    let guard = CancelOnDrop { queen, job_id, done: false };
    let created = created();
    let chunk = move |delta: Option<&str>, finish: Option<&str>, usage: Option<&Usage>, first: bool| {
        let choice = match flavor {
            Flavor::Chat => {
                let mut d = serde_json::Map::new();
                if first {
                    d.insert("role".into(), "assistant".into());
                }
                if let Some(t) = delta {
                    d.insert("content".into(), t.into());
                }
                serde_json::json!({"index": 0, "delta": d, "finish_reason": finish})
            }
            Flavor::Completion => {
                serde_json::json!({"index": 0, "text": delta.unwrap_or(""), "logprobs": null, "finish_reason": finish})
            }
        };
        let mut body = serde_json::json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]});
        if let Some(u) = usage {
            body["usage"] = usage_json(u);
        }
        Event::default().data(body.to_string())
    };
    let state = (guard, reader, pending.into_iter().collect::<std::collections::VecDeque<_>>(), true, false);
    let stream = futures::stream::unfold(
        state,
        move |(mut guard, mut reader, mut pending, mut first, finished)| {
            let chunk = chunk.clone();
            async move {
                if finished {
                    return None;
                }
                loop {
                    let event = match pending.pop_front() {
                        Some(e) => Some(e),
                        None => reader.next().await,
                    };
                    match event {
                        Some(JobEvent::Token(c)) => {
                            let ev = chunk(Some(&c.text), None, None, first);
                            first = false;
                            return Some((vec![Ok(ev)], (guard, reader, pending, first, false)));
                        }
                        Some(JobEvent::Status(s)) => {
                            if let JobState::Finished { finish_reason, usage, error, .. } = s.state {
                                guard.done = true;
                                let mut out = Vec::new();
                                if finish_reason == FinishReason::Error {
                                    let body = serde_json::json!({"error": {"message": error.unwrap_or_default(), "type": "server_error", "code": "job_failed"}});
                                    out.push(Ok(Event::default().data(body.to_string())));
                                } else {
                                    out.push(Ok(chunk(
                                        None,
                                        Some(finish_str(finish_reason)),
                                        Some(&usage),
                                        first,
                                    )));
                                }
                                out.push(Ok(Event::default().data("[DONE]")));
                                return Some((out, (guard, reader, pending, first, true)));
                            }
                        }
                        None => {
                            guard.done = true;
                            return Some((
                                vec![Ok(Event::default().data("[DONE]"))],
                                (guard, reader, pending, first, true),
                            ));
                        }
                    }
                }
            }
        },
    );
    let flat = futures::StreamExt::flat_map(stream, futures::stream::iter);
    Sse::new(flat).keep_alive(KeepAlive::default())
}

/// `GET /v1/models`: every model served by a worker or present in a hive's catalog.
pub async fn models(State(queen): State<Arc<Queen>>) -> impl IntoResponse {
    let now = Instant::now();
    let registry = queen.registry();
    let mut models: std::collections::BTreeMap<String, (usize, Vec<String>)> = Default::default();
    for w in registry.list_workers(now) {
        models.entry(w.model_id.to_string()).or_default().0 += 1;
    }
    for h in registry.list_hives(now) {
        for m in &h.models {
            models.entry(m.model_id.to_string()).or_default().1.push(h.hive_id.to_string());
        }
    }
    let data: Vec<_> = models
        .into_iter()
        .map(|(id, (workers, hives))| {
            serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "rbee", "workers": workers, "spawnable_on": hives})
        })
        .collect();
    Json(serde_json::json!({"object": "list", "data": data}))
}
