//! A standby queen's way of taking work: it checks a job as the leader would (clear errors without a
//! round trip), gives it an id and a relayed entry in its own job table (so its HTTP clients follow
//! the job's events from the bus like any other), and submits it to the leader on
//! `rbee.queen.jobs.submit`. Embeddings go to `rbee.queen.embed` the same way. While no leader
//! answers (a takeover under way) it tries again for up to [`PATIENCE`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use rbee_bus::{subject, BusError, EmbedReply, EmbedRequest, ErrorCode, JobId, SubmitJobReply, WireError};

use crate::embed::EmbedFailure;
use crate::jobs::admit::{JobRequest, SubmitError};
use crate::jobs::job::Job;
use crate::jobs::requests;
use crate::Queen;

/// How long a standby keeps trying to reach a leader.
pub const PATIENCE: Duration = Duration::from_secs(15);
/// How long the leader has to answer one submission.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the leader has to answer an embedding request (it waits for workers).
const EMBED_TIMEOUT: Duration = Duration::from_secs(180);
/// The pause between tries.
const RETRY_EVERY: Duration = Duration::from_millis(200);

/// Forwards a checked job to the leader; returns the relayed job.
pub async fn submit(queen: &Arc<Queen>, request: JobRequest) -> Result<Arc<Job>, SubmitError> {
    let job_id = request.job_id.clone().unwrap_or_else(JobId::generate);
    let job = queen.jobs().create_relayed(job_id.clone(), request.model_id.clone(), rbee_bus::now_ms())?;
    let wire = requests::to_wire(&job_id, &request);
    let deadline = Instant::now() + PATIENCE;
    let mut tried = false;
    let outcome = loop {
        let reply: Result<SubmitJobReply, BusError> =
            queen.bus.request(subject::QUEEN_JOBS_SUBMIT.to_owned(), &wire, SUBMIT_TIMEOUT).await;
        match reply {
            Ok(_) => break Ok(()),
            // A try that timed out may have reached the leader: the id it took is this job.
            Err(BusError::Remote { error, .. })
                if tried && error.error.field.as_deref() == Some("job_id") =>
            {
                break Ok(())
            }
            Err(BusError::Remote { error, .. })
                if !matches!(error.code(), ErrorCode::NotLeader | ErrorCode::ShuttingDown) =>
            {
                break Err(refusal(error, &request.model_id));
            }
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(%job_id, error = %e, "no leader took the job yet, trying again");
            }
            Err(e) => break Err(SubmitError::NoLeader(no_leader(queen, &e))),
        }
        tried = true;
        tokio::time::sleep(RETRY_EVERY).await;
    };
    match outcome {
        Ok(()) => {
            tracing::info!(%job_id, "job forwarded to the leader");
            Ok(job)
        }
        Err(e) => {
            queen.jobs().fail_unannounced(&job_id, e.to_string(), rbee_bus::now_ms());
            Err(e)
        }
    }
}

/// Forwards an embedding request to the leader.
pub async fn embed(queen: &Arc<Queen>, request: &EmbedRequest) -> Result<EmbedReply, EmbedFailure> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let reply: Result<EmbedReply, BusError> =
            queen.bus.request(subject::QUEEN_EMBED.to_owned(), request, EMBED_TIMEOUT).await;
        match reply {
            Ok(reply) => return Ok(reply),
            Err(BusError::Remote { error, .. }) if error.code() != ErrorCode::NotLeader => {
                let message = error.error.message.clone();
                return Err(match error.code() {
                    ErrorCode::InvalidParams | ErrorCode::BadRequest | ErrorCode::PromptTooLong => {
                        EmbedFailure::Invalid { field: error.error.field.unwrap_or_default(), message }
                    }
                    ErrorCode::UnknownModel => EmbedFailure::UnknownModel(request.model_id.clone()),
                    ErrorCode::QueueFull => EmbedFailure::Unavailable(message),
                    _ => EmbedFailure::Failed(message),
                });
            }
            Err(e @ (BusError::NoResponders { .. } | BusError::Remote { .. }))
                if Instant::now() < deadline =>
            {
                tracing::debug!(error = %e, "no leader took the embedding request yet, trying again");
            }
            Err(e) => return Err(EmbedFailure::Unavailable(no_leader(queen, &e))),
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

fn refusal(error: WireError, model_id: &rbee_bus::ModelId) -> SubmitError {
    let message = error.error.message.clone();
    match error.code() {
        ErrorCode::InvalidParams | ErrorCode::BadRequest => {
            SubmitError::InvalidParams { field: error.error.field.unwrap_or_default(), message }
        }
        ErrorCode::PromptTooLong => SubmitError::PromptTooLarge(message),
        ErrorCode::QueueFull => SubmitError::QueueFull(message),
        ErrorCode::ModelFailing => SubmitError::ModelFailing(message),
        ErrorCode::UnknownModel => SubmitError::UnknownModel(model_id.clone()),
        _ => SubmitError::NoLeader(format!("the leader refused the job: {message}")),
    }
}

fn no_leader(queen: &Queen, e: &BusError) -> String {
    format!(
        "{} (last try: {e}, after {} s)",
        queen.leadership.not_leader_message("placing jobs"),
        PATIENCE.as_secs()
    )
}
