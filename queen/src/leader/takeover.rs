//! A new leader takes over the jobs the last one left: every request still in
//! [`crate::jobs::requests`] is a job that had not ended when it was stored. An ended one is
//! forgotten; one running on a worker is followed from where it is (and moves if that worker dies,
//! when this queen saw its stream from the start); one queued, or waiting to move, is placed; one
//! older than the queue timeout that never ran fails with a reason.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::jobs::dispatch::{self, Start};
use crate::jobs::record::JobPhase;
use crate::jobs::{announce, requests};
use crate::Queen;

/// What one takeover did, for the log.
#[derive(Debug, Default)]
struct Tally {
    placed: usize,
    followed: usize,
    ended: usize,
    expired: usize,
}

/// Takes over every job left in the requests bucket.
pub async fn adopt(queen: &Arc<Queen>) {
    let started = Instant::now();
    let left = requests::list(queen).await;
    let mut tally = Tally::default();
    for (job_id, request, age) in left {
        if !queen.leadership.leads() {
            return;
        }
        let Some(request) = request else {
            requests::remove(queen, &job_id).await;
            continue;
        };
        let known = queen.jobs().get(&job_id);
        if let Some(job) = &known {
            if job.is_finished() {
                requests::remove(queen, &job_id).await;
                tally.ended += 1;
                continue;
            }
            if job.is_owned() {
                continue;
            }
        }
        // A final status this queen missed (its NATS connection was down) is in the job history.
        if known.is_some() && crate::jobs::watch::recover_final_status(queen, &job_id).await {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if known.as_ref().is_some_and(|job| job.is_finished()) {
                requests::remove(queen, &job_id).await;
                tally.ended += 1;
                continue;
            }
        }
        let created_at_ms = rbee_bus::now_ms().saturating_sub(age.as_millis() as u64);
        let job = queen.jobs().adopt(&job_id, &request.model_id, created_at_ms);
        let record = job.record();
        let running_on = match &record.state {
            JobPhase::Scheduled | JobPhase::Running => {
                job.placement().map(|(worker_id, attempt, _)| (worker_id, attempt))
            }
            _ => None,
        };
        let waited = Duration::from_millis(rbee_bus::now_ms().saturating_sub(record.created_at_ms));
        let first = match running_on {
            Some((worker_id, attempt)) => {
                tally.followed += 1;
                tracing::info!(%job_id, %worker_id, "taking over a running job");
                Start::Follow { worker_id, attempt }
            }
            None if waited > queen.config.queue_timeout => {
                tally.expired += 1;
                let message = format!(
                    "the queen that queued the job went away, and the job had waited {}s, over the \
                     queue timeout, when the next leader took over",
                    waited.as_secs()
                );
                announce::fail(queen, &job_id, &request.model_id, message, None).await;
                requests::remove(queen, &job_id).await;
                continue;
            }
            None => {
                tally.placed += 1;
                tracing::info!(%job_id, "taking over a queued job");
                let prefix = queen.config.prompt_prefix(&request.prompt);
                let queue_len = queen.jobs().queued();
                Start::Place(dispatch::place(queen, &request.model_id, &[], &prefix, queue_len))
            }
        };
        let since = Instant::now().checked_sub(waited).unwrap_or_else(Instant::now);
        let prefix = queen.config.prompt_prefix(&request.prompt);
        queen.tasks.spawn("dispatch", dispatch::drive(queen.clone(), job, request, prefix, first, since));
    }
    tracing::info!(
        placed = tally.placed,
        followed = tally.followed,
        ended = tally.ended,
        expired = tally.expired,
        took_ms = started.elapsed().as_millis() as u64,
        "took over the jobs the last leader left"
    );
}
