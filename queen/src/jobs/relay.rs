//! The token path inside the queen: one subscription to `rbee.job.>` (one subscription, so a job's
//! tokens and its final status arrive in the order the worker published them) hands every token chunk
//! and status to its job in the [`JobTable`](super::table::JobTable), and nothing else: readers (SSE
//! clients, non-streaming waiters, the dispatcher) follow the job's buffer. Every chunk or status a
//! worker published that its job took (the current attempt's, with its key) also counts in the
//! membership view as a sign of life of that worker (its current epoch), like a heartbeat.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rbee_bus::{subject, JobState, JobStatus, TokenChunk, WorkerId};
use rbee_daemon::Tasks;
use tokio_util::sync::CancellationToken;

use super::job::{Job, JobEvent};
use crate::Queen;

/// How long a finished job's events stay buffered for late readers.
const EVENTS_KEPT_FOR: Duration = Duration::from_secs(300);
/// How often old buffers and records are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Subscribes to `rbee.job.>`; returns once the server confirmed the subscription, with the relay
/// running on `tasks`.
pub async fn start(queen: Arc<Queen>, tasks: &Tasks, stop: CancellationToken) -> anyhow::Result<()> {
    let sub = queen.bus.client().subscribe("rbee.job.>").await?;
    queen.bus.round_trip().await?;
    tasks.spawn("relay", relay(queen, sub, stop));
    Ok(())
}

async fn relay(queen: Arc<Queen>, mut sub: async_nats::Subscriber, stop: CancellationToken) {
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            _ = sweep.tick() => {
                {
                    let mut jobs = queen.jobs();
                    if let Some(cutoff) = Instant::now().checked_sub(EVENTS_KEPT_FOR) {
                        jobs.drop_old_events(cutoff);
                    }
                    jobs.prune(rbee_bus::now_ms());
                }
                if queen.leadership.leads() {
                    super::orphans::sweep(&queen).await;
                }
                continue;
            }
            msg = sub.next() => match msg { Some(m) => m, None => return },
        };
        let subject = msg.subject.as_str();
        if subject::matches(subject::JOB_TOKENS_ALL, subject) {
            match rbee_bus::rpc::decode::<TokenChunk>(subject, &msg.payload) {
                Ok(chunk) => token(&queen, chunk),
                Err(e) => {
                    queen.metrics.rejected_message();
                    tracing::warn!(%subject, error = %e, "malformed token chunk ignored");
                }
            }
        } else if subject::matches(subject::JOB_STATUS_ALL, subject) {
            match rbee_bus::rpc::decode::<JobStatus>(subject, &msg.payload) {
                Ok(status) => self::status(&queen, status),
                Err(e) => {
                    queen.metrics.rejected_message();
                    tracing::warn!(%subject, error = %e, "malformed job status ignored");
                }
            }
        }
    }
}

fn token(queen: &Queen, chunk: TokenChunk) {
    let sender = (chunk.meta.publisher == chunk.worker_id.as_str())
        .then(|| (chunk.worker_id.clone(), chunk.meta.epoch.clone()));
    take_from(queen, JobEvent::Token(chunk), sender);
}

fn status(queen: &Queen, status: JobStatus) {
    if status.meta.publisher == crate::QUEEN_PUBLISHER
        && queen.jobs().get(&status.job_id).is_some_and(|job| job.is_owned())
    {
        // This queen took its own statuses when it decided them: one on the bus in its name is the
        // echo, or someone else's forgery.
        return;
    }
    // The worker's own statuses (accepted, running, finished) are signs of life too.
    let sender = WorkerId::new(status.meta.publisher.as_str()).ok().map(|w| (w, status.meta.epoch.clone()));
    take_from(queen, JobEvent::Status(status), sender);
}

/// [`take`] of an event a worker published (`sender`: its id and epoch, when the event names its
/// publisher as a worker): only an event its job took (the current attempt's, with its key) speaks
/// for the worker's life.
fn take_from(queen: &Queen, event: JobEvent, sender: Option<(WorkerId, String)>) {
    if take(queen, event).is_some() {
        if let Some((worker_id, epoch)) = sender {
            worker_alive(queen, &worker_id, &epoch);
        }
    }
}

/// Hands an event to its job and counts it in the metrics when the job took it; the one way events
/// reach a job, from the bus or from the queen's own decisions.
pub fn take(queen: &Queen, event: JobEvent) -> Option<Arc<Job>> {
    let tokens = match &event {
        JobEvent::Token(chunk) => Some(chunk.tokens),
        JobEvent::Status(_) => None,
    };
    let finish = match &event {
        JobEvent::Status(JobStatus { state: JobState::Finished { finish_reason, .. }, .. }) => {
            Some(*finish_reason)
        }
        _ => None,
    };
    let job = queen.jobs().apply(event, rbee_bus::now_ms())?;
    if let Some(n) = tokens {
        queen.metrics.tokens(&job, n);
    }
    if let Some(reason) = finish {
        queen.metrics.job_finished(reason);
    }
    Some(job)
}

/// A message a worker published on a job subject proves it alive (see
/// [`Registry::apply_worker_activity`](crate::membership::Registry::apply_worker_activity)): a worker
/// busy streaming tokens is not declared offline, nor its jobs failed, because its heartbeats are late.
fn worker_alive(queen: &Queen, worker_id: &WorkerId, epoch: &str) {
    let changes = queen.registry().apply_worker_activity(worker_id, epoch, Instant::now());
    if !changes.is_empty() {
        for change in &changes {
            tracing::info!(change = ?change, "registry change (a sign of life other than a heartbeat)");
        }
        queen.registry_changed.notify();
    }
}
