//! A whole (non-streamed) answer: every choice read to its end, then one JSON body.

use axum::response::{IntoResponse, Response};
use axum::Json;
use rbee_bus::{FinishReason, JobState, Usage};

use super::choice::{usage_json, Answer, Choice};
use super::{CancelOnDrop, Started};
use crate::error::ApiError;
use crate::jobs::job::JobEvent;

/// Reads one choice to its end: what it produced and its final status.
async fn read(started: Started) -> Result<(Choice, FinishReason, Usage), ApiError> {
    let Started { mut pending, mut reader, .. } = started;
    let mut choice = Choice::default();
    let mut pending = pending.drain(..).collect::<std::collections::VecDeque<_>>();
    loop {
        let event = match pending.pop_front() {
            Some(e) => Some(e),
            None => reader.next().await,
        };
        match event {
            Some(JobEvent::Token(chunk)) => {
                choice.text.push_str(&chunk.text);
                choice.calls.extend(chunk.tool_calls);
                choice.logprobs.extend(chunk.logprobs);
            }
            Some(JobEvent::Status(s)) => {
                if let JobState::Finished { finish_reason, usage, error, .. } = s.state {
                    if finish_reason == FinishReason::Error {
                        return Err(ApiError::JobFailed(error.unwrap_or_else(|| "job failed".to_owned())));
                    }
                    return Ok((choice, finish_reason, usage));
                }
            }
            None => return Err(ApiError::JobFailed("the job ended without a result".to_owned())),
        }
    }
}

/// Reads every choice (side by side) and answers with them all, or with the first failure.
pub(crate) async fn collect(answer: Answer, started: Vec<Started>, mut guard: CancelOnDrop) -> Response {
    let first_job = started.first().map(|s| s.job_id.to_string()).unwrap_or_default();
    let results = futures::future::join_all(started.into_iter().map(read)).await;
    let mut choices = Vec::with_capacity(results.len());
    let mut usages = Vec::with_capacity(results.len());
    for (index, result) in results.into_iter().enumerate() {
        match result {
            Ok((choice, reason, usage)) => {
                choices.push(choice.json(&answer, index, reason));
                usages.push(usage);
            }
            Err(e) => return e.into_response(),
        }
    }
    guard.done = true;
    let (id, object) = answer.id_and_object(&first_job, false);
    let body = serde_json::json!({
        "id": id,
        "object": object,
        "created": answer.created,
        "model": answer.model,
        "choices": choices,
        "usage": usage_json(&usages),
    });
    Json(body).into_response()
}
