//! Ollama-compatible endpoints under `/api/`, so apps that speak Ollama first (Open WebUI, editor
//! plugins, the `ollama` client libraries) use rbee unchanged: `GET /api/tags`, `/api/ps`,
//! `/api/version`, `POST /api/show`, `/api/chat` and `/api/generate` (NDJSON stream by default, or
//! one object with `stream: false`), `/api/embed`, and `/api/pull` ([`pull`], an administrative route). Bodies are read strictly ([`request`]), answers
//! built from the job's events ([`answer`]); errors come in Ollama's shape, `{"error": "..."}`, with
//! the status rbee's own API gives. The queen serves them on its API port and, with `--ollama-addr`,
//! on Ollama's own address too.

mod answer;
mod pull;
mod request;

pub use pull::pull;
pub use request::keep_alive;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rbee_bus::{EmbedRequest, SCHEMA_VERSION};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::http::openai::{self, model_id, CancelOnDrop};
use crate::jobs::admit;
use crate::keep_alive::KeepAlive;
use crate::Queen;
use answer::{Answer, Kind};

/// An [`ApiError`] in Ollama's body shape.
pub struct OllamaError(pub ApiError);

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        // Ollama's body has no field for the parameter: name it in the text.
        let text = match &self.0 {
            ApiError::InvalidParams { param, message } if !message.contains(param.as_str()) => {
                format!("{param}: {message}")
            }
            other => other.to_string(),
        };
        (self.0.status(), Json(json!({"error": text}))).into_response()
    }
}

impl From<ApiError> for OllamaError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

/// Reads a JSON body, answering a malformed one in Ollama's shape.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, OllamaError> {
    serde_json::from_slice(bytes)
        .map_err(|e| OllamaError(ApiError::BadRequest(format!("invalid request body: {e}"))))
}

/// `GET /api/version`: rbee's version.
pub async fn version() -> Json<Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION")}))
}

/// "135M" for 135,000,000 parameters.
fn parameter_size(count: u64) -> String {
    match count {
        0 => String::new(),
        n if n >= 1_000_000_000 => format!("{:.1}B", n as f64 / 1e9),
        n => format!("{}M", n / 1_000_000),
    }
}

/// `GET /api/tags`: every model in a hive's catalog, once.
pub async fn tags(State(queen): State<Arc<Queen>>) -> Json<Value> {
    let mut models: std::collections::BTreeMap<String, Value> = Default::default();
    for hive in queen.registry().list_hives(Instant::now()) {
        for m in &hive.models {
            models.entry(m.model_id.to_string()).or_insert_with(|| {
                json!({
                    "name": m.model_id, "model": m.model_id, "size": m.size_bytes,
                    "details": {"format": "gguf", "family": m.architecture, "families": [m.architecture],
                        "parameter_size": parameter_size(m.parameter_count), "quantization_level": m.quantization},
                })
            });
        }
    }
    Json(json!({"models": models.into_values().collect::<Vec<_>>()}))
}

/// `GET /api/ps`: the models loaded now, one entry per worker.
pub async fn ps(State(queen): State<Arc<Queen>>) -> Json<Value> {
    let now = Instant::now();
    let workers = queen.registry().list_workers(now);
    let table = queen.keep_alive();
    let models: Vec<Value> = workers
        .into_iter()
        .map(|w| {
            let vram = if w.backend == rbee_bus::Backend::Cpu { 0 } else { w.memory_bytes };
            // Idle: when it unloads; busy: its keep-alive after now; kept loaded: no time.
            let expires = table
                .unload_in(&w.worker_id, now)
                .or_else(|| table.keep_alive(&w.worker_id).seconds().map(std::time::Duration::from_secs_f64))
                .map(|left| answer::created_at(rbee_bus::now_ms().saturating_add(left.as_millis() as u64)));
            json!({"name": w.model_id, "model": w.model_id, "size": w.memory_bytes, "size_vram": vram,
                "context_length": w.ctx_per_slot, "worker_id": w.worker_id, "hive_id": w.hive_id,
                "expires_at": expires, "details": {"format": "gguf"}})
        })
        .collect();
    Json(json!({"models": models}))
}

#[derive(Deserialize)]
struct ShowBody {
    #[serde(alias = "name")]
    model: String,
    #[serde(default)]
    verbose: bool,
}

/// `POST /api/show`: what the catalogs know of a model.
pub async fn show(State(queen): State<Arc<Queen>>, bytes: Bytes) -> Result<Json<Value>, OllamaError> {
    let req: ShowBody = body(&bytes)?;
    let _ = req.verbose;
    let id = model_id(&req.model)?;
    let hives = queen.registry().list_hives(Instant::now());
    let found = hives.iter().flat_map(|h| h.models.iter()).find(|m| m.model_id == id);
    let Some(m) = found else {
        return Err(ApiError::UnknownModel(format!("model {id} is in no hive's catalog")).into());
    };
    Ok(Json(json!({
        "details": {"format": "gguf", "family": m.architecture, "families": [m.architecture],
            "parameter_size": parameter_size(m.parameter_count), "quantization_level": m.quantization},
        "model_info": {"general.architecture": m.architecture, "general.parameter_count": m.parameter_count,
            format!("{}.context_length", m.architecture): m.context_length},
        "capabilities": ["completion"],
    })))
}

/// Submits the job and answers it: NDJSON or one object.
async fn run(queen: Arc<Queen>, plan: request::Plan, kind: Kind) -> Response {
    let answer = Answer { kind, model: plan.model, started: Instant::now() };
    let mut guard = CancelOnDrop::new(queen.clone());
    let job = match admit::submit(&queen, plan.job).await {
        Ok(job) => job,
        Err(e) => return OllamaError(ApiError::from(e)).into_response(),
    };
    guard.push(job.job_id.clone());
    let started = match openai::started(job.job_id.clone(), job.reader(), false).await {
        Ok(s) => s,
        Err(e) => return OllamaError(e).into_response(),
    };
    if plan.stream {
        answer::ndjson(answer, started, guard)
    } else {
        answer::collect(answer, started, guard).await
    }
}

/// The answer to Ollama's "load the model" call (no prompt, or no message): at once, with
/// `done_reason: "load"`, when the model is known. The body was checked as a job's first. Its
/// `keep_alive` applies to the model's workers now, but for pinned ones: `0` unloads the idle ones
/// (`done_reason: "unload"`).
fn loaded(queen: &Queen, plan: &request::Plan, kind: Kind) -> Response {
    let model = &plan.model;
    let id = &plan.job.model_id;
    if !queen.model_known(id) {
        return OllamaError(ApiError::UnknownModel(format!("model {id} is not known"))).into_response();
    }
    let mut reason = "load";
    if let Some(keep_alive) = plan.job.keep_alive {
        let now = Instant::now();
        let workers = queen.registry().list_workers_for_model(id, now);
        let mut table = queen.keep_alive();
        for worker in &workers {
            table.requested(&worker.worker_id, keep_alive, now);
        }
        if keep_alive == KeepAlive::For(std::time::Duration::ZERO) {
            reason = "unload";
        }
    }
    let now = answer::created_at(rbee_bus::now_ms());
    let body = match kind {
        Kind::Chat => json!({"model": model, "created_at": now,
            "message": {"role": "assistant", "content": ""}, "done": true, "done_reason": reason}),
        Kind::Generate => {
            json!({"model": model, "created_at": now, "response": "", "done": true, "done_reason": reason})
        }
    };
    Json(body).into_response()
}

/// A checked body: answered at once when it only loads the model, else run as a job.
async fn respond(
    queen: Arc<Queen>,
    load: bool,
    plan: Result<request::Plan, ApiError>,
    kind: Kind,
) -> Response {
    match plan {
        Ok(plan) if load => loaded(&queen, &plan, kind),
        Ok(plan) => run(queen, plan, kind).await,
        Err(e) => OllamaError(e).into_response(),
    }
}

/// `POST /api/chat`. No message loads the model.
pub async fn chat(State(queen): State<Arc<Queen>>, bytes: Bytes) -> Response {
    match body::<request::ChatBody>(&bytes) {
        Ok(req) => respond(queen, req.load_only(), req.plan(), Kind::Chat).await,
        Err(e) => e.into_response(),
    }
}

/// `POST /api/generate`. An empty prompt loads the model.
pub async fn generate(State(queen): State<Arc<Queen>>, bytes: Bytes) -> Response {
    match body::<request::GenerateBody>(&bytes) {
        Ok(req) => respond(queen, req.load_only(), req.plan(), Kind::Generate).await,
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct EmbedBody {
    model: String,
    input: Value,
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

/// `POST /api/embed`: `input` a string or a list of strings.
pub async fn embed(State(queen): State<Arc<Queen>>, bytes: Bytes) -> Result<Json<Value>, OllamaError> {
    let req: EmbedBody = body(&bytes)?;
    if let Some((name, _)) = req.other.iter().find(|(k, v)| !v.is_null() && *k != "truncate") {
        return Err(ApiError::invalid(name, format!("{name:?} is not supported by rbee")).into());
    }
    match req.other.get("truncate") {
        None | Some(Value::Null) | Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => {
            let message = "rbee always truncates inputs to the context".to_owned();
            return Err(ApiError::invalid("truncate", message).into());
        }
        Some(_) => return Err(ApiError::invalid("truncate", "must be true or false".to_owned()).into()),
    }
    let inputs = match req.input {
        Value::String(s) => vec![s],
        Value::Array(items) => {
            items.into_iter().map(|v| v.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>().ok_or_else(
                || ApiError::invalid("input", "must be a string or a list of strings".to_owned()),
            )?
        }
        _ => {
            return Err(ApiError::invalid("input", "must be a string or a list of strings".to_owned()).into())
        }
    };
    let started = Instant::now();
    let request = EmbedRequest { v: SCHEMA_VERSION, model_id: model_id(&req.model)?, inputs };
    let reply = crate::embed::embed(&queen, request).await.map_err(ApiError::from)?;
    Ok(Json(json!({
        "model": req.model, "embeddings": reply.embeddings, "total_duration": started.elapsed().as_nanos() as u64,
        "load_duration": 0, "prompt_eval_count": reply.prompt_tokens,
    })))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parameter_sizes_read_like_ollamas() {
        assert_eq!(super::parameter_size(134_515_008), "134M");
        assert_eq!(super::parameter_size(7_241_732_096), "7.2B");
        assert_eq!(super::parameter_size(0), "");
    }
}
