//! The queen's own decisions about a job (queued with a reason, scheduled on a worker, failed,
//! cancelled while queued): taken by the job at once ([`relay::take`]), then published on
//! `rbee.job.<id>.status` for every other subscriber and the job history. The copy that comes back
//! from the bus is a duplicate and changes nothing.

use rbee_bus::{subject, FinishReason, JobId, JobState, JobStatus, ModelId, Usage, WorkerId, SCHEMA_VERSION};

use super::job::JobEvent;
use super::relay;
use crate::Queen;

/// Applies and publishes a status the queen decided.
pub async fn announce(queen: &Queen, job_id: &JobId, model_id: &ModelId, state: JobState) {
    announce_attempt(queen, job_id, model_id, state, 0, None).await;
}

/// [`announce`] of a status that belongs to one placement (`scheduled`, numbered from 1, with the
/// attempt's key).
pub async fn announce_attempt(
    queen: &Queen,
    job_id: &JobId,
    model_id: &ModelId,
    state: JobState,
    attempt: u32,
    attempt_key: Option<String>,
) {
    if !queen.leadership.leads() {
        // A queen whose lease ran out decides nothing any more: the next leader has the job.
        tracing::info!(%job_id, state = ?state, "status not announced: no longer the leader");
        return;
    }
    let status = JobStatus {
        v: SCHEMA_VERSION,
        meta: queen.stamper.next(),
        job_id: job_id.clone(),
        model_id: Some(model_id.clone()),
        state,
        attempt,
        attempt_key,
    };
    relay::take(queen, JobEvent::Status(status.clone()));
    if let Err(e) = queen.bus.publish(subject::job_status(job_id), &status).await {
        tracing::warn!(%job_id, error = %e, "cannot publish job status");
    }
}

/// Ends a job with an error.
pub async fn fail(
    queen: &Queen,
    job_id: &JobId,
    model_id: &ModelId,
    message: String,
    worker_id: Option<WorkerId>,
) {
    tracing::warn!(%job_id, reason = %message, "job failed");
    let state = JobState::Finished {
        finish_reason: FinishReason::Error,
        usage: Usage::default(),
        error: Some(message),
        worker_id,
    };
    announce(queen, job_id, model_id, state).await;
}

/// Ends a job that was cancelled before a worker took it.
pub async fn cancelled(queen: &Queen, job_id: &JobId, model_id: &ModelId) {
    let state = JobState::Finished {
        finish_reason: FinishReason::Cancelled,
        usage: Usage::default(),
        error: None,
        worker_id: None,
    };
    announce(queen, job_id, model_id, state).await;
}
