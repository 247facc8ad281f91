//! rbee's own job API: submit, follow as SSE, look up, list, cancel.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rbee_bus::{ChatMessage, JobId, JobState, JobStatus, Prompt, SamplingParams, ToolDef};
use serde::Deserialize;

use super::openai::model_id;
use super::JsonBody;
use crate::error::ApiError;
use crate::jobs::admit::{self, JobRequest};
use crate::jobs::dispatch;
use crate::jobs::job::JobEvent;
use crate::jobs::record::JobPhaseKind;
use crate::Queen;

/// Body of `POST /v1/jobs`: a `prompt` (completion) or `messages` (chat, optionally with `tools`),
/// with the bus's sampling fields ([`SamplingParams`], by their names there). Anything else is refused.
#[derive(Debug, Deserialize)]
pub struct CreateJob {
    model: String,
    prompt: Option<String>,
    messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    tools: Vec<ToolDef>,
    deadline_ms: Option<u64>,
    job_id: Option<String>,
    #[serde(flatten)]
    params: SamplingParams,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

fn parse_job_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse().map_err(|e: rbee_bus::IdError| ApiError::invalid("job_id", e.to_string()))
}

/// `POST /v1/jobs` → 202 `{job_id, sse_url}`.
pub async fn create(
    State(queen): State<Arc<Queen>>,
    JsonBody(body): JsonBody<CreateJob>,
) -> Result<Response, ApiError> {
    if let Some(name) = body.other.keys().next() {
        return Err(ApiError::invalid(name.as_str(), format!("parameter {name:?} is not supported by rbee")));
    }
    let prompt = match (body.prompt, body.messages) {
        (Some(text), None) if body.tools.is_empty() => Prompt::Text { text },
        (None, Some(messages)) => Prompt::Chat { messages, tools: body.tools },
        (Some(_), None) => return Err(ApiError::invalid("tools", "tools need messages (a chat)".to_owned())),
        _ => return Err(ApiError::invalid("prompt", "give exactly one of prompt or messages".to_owned())),
    };
    let job_id = body.job_id.as_deref().map(parse_job_id).transpose()?;
    let request = JobRequest {
        model_id: model_id(&body.model)?,
        prompt,
        params: body.params,
        deadline_ms: body.deadline_ms,
        job_id,
        keep_alive: None,
    };
    let job_id = admit::submit(&queen, request).await?.job_id.clone();
    let body = serde_json::json!({
        "job_id": job_id,
        "sse_url": format!("/v1/jobs/{job_id}/stream"),
        "status_url": format!("/v1/jobs/{job_id}"),
        "tokens_subject": rbee_bus::subject::job_tokens(&job_id),
    });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `GET /v1/jobs/{id}`
pub async fn show(State(queen): State<Arc<Queen>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let job_id = parse_job_id(&id)?;
    let record =
        queen.jobs().record(&job_id).ok_or_else(|| ApiError::NotFound(format!("no job {job_id}")))?;
    Ok(Json(record).into_response())
}

/// Query of `GET /v1/jobs`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
    state: Option<String>,
}

/// `GET /v1/jobs?limit=&state=`
pub async fn list(State(queen): State<Arc<Queen>>, Query(q): Query<ListQuery>) -> Result<Response, ApiError> {
    let phase = match q.state.as_deref() {
        Some(s) => Some(
            s.parse::<JobPhaseKind>()
                .map_err(|_| ApiError::invalid("state", format!("unknown job state {s}")))?,
        ),
        None => None,
    };
    let jobs = queen.jobs().list(q.limit.unwrap_or(50).min(1000), phase);
    Ok(Json(serde_json::json!({ "jobs": jobs })).into_response())
}

/// `DELETE /v1/jobs/{id}`: cancels; the worker stops within one decode step.
pub async fn cancel(State(queen): State<Arc<Queen>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let job_id = parse_job_id(&id)?;
    let record =
        queen.jobs().record(&job_id).ok_or_else(|| ApiError::NotFound(format!("no job {job_id}")))?;
    if record.state.is_terminal() {
        let body =
            serde_json::json!({"job_id": job_id, "cancelled": false, "reason": "the job already ended"});
        return Ok((StatusCode::CONFLICT, Json(body)).into_response());
    }
    dispatch::cancel(&queen, &job_id, "cancelled over http").await;
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"job_id": job_id, "cancelled": true}))).into_response())
}

/// `GET /v1/jobs/{id}/stream`: `event: token` (TokenChunk) and `event: status` (JobStatus), from the
/// start of the job, ending after the final status.
pub async fn stream(State(queen): State<Arc<Queen>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let job_id = parse_job_id(&id)?;
    let job = queen.jobs().get(&job_id).ok_or_else(|| ApiError::NotFound(format!("no job {job_id}")))?;
    let Some(reader) = job.reader() else {
        // Known but no longer buffered (older, or from before a restart): its record only.
        let record = job.record();
        let event = Event::default()
            .event("record")
            .json_data(record)
            .map_err(|e| ApiError::JobFailed(e.to_string()))?;
        let once = futures::stream::iter([Ok::<_, Infallible>(event)]);
        return Ok(Sse::new(once).into_response());
    };
    let events = futures::stream::unfold(reader, |mut reader| async move {
        let event = reader.next().await?;
        let sse = match &event {
            JobEvent::Token(chunk) => Event::default().event("token").json_data(chunk),
            JobEvent::Status(status) => Event::default().event("status").json_data(status),
        }
        .unwrap_or_else(|_| Event::default().comment("unencodable event"));
        Some((Ok::<_, Infallible>(sse), reader))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

/// True for a terminal status (used by tests and the CLI contract).
pub fn is_final(status: &JobStatus) -> bool {
    matches!(status.state, JobState::Finished { .. })
}
