//! Follows a job placed on a worker until it ends, watching the worker's liveness: the dispatcher's
//! wait between an accepted assignment and the job's final status.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rbee_bus::{subject, JobId, JobStatus};

use super::job::Job;
use crate::Queen;

/// After the queen's own NATS connection was down, the silence of a worker says nothing about it for
/// this long after the connection is back: workers reconnect on their own backoff (up to seconds),
/// then heartbeat.
const RECONNECT_GRACE: Duration = Duration::from_secs(10);

/// How often a watched worker's liveness is looked at when nothing in the registry changes (a tenth of
/// a second against a detection bound of seconds; a registry lookup each time).
const LIVENESS_POLL: Duration = Duration::from_millis(100);

/// How a placed job ended, as far as its worker goes.
pub enum WorkerOutcome {
    /// The final status arrived.
    Finished,
    /// The worker died; it had sent this many token chunks.
    Died {
        /// Token chunks received before.
        tokens: usize,
    },
    /// The worker is alive and idle after a NATS interruption, and the job's end was lost.
    Lost,
}

/// Follows a placed job until it ends, watching its worker's liveness. The worker is dead when the
/// registry no longer lists it, or lists it offline (no heartbeat, token chunk or status from it for 3
/// intervals: a worker streaming tokens is never offline) and [`confirm_silent`] agrees. While the
/// queen's own NATS connection is down, and for [`RECONNECT_GRACE`] after it is back, every worker
/// looks silent: that silence is not taken as a death. After an interruption, a final status the
/// queen missed (published before it had resubscribed) is looked up in the job history and announced
/// again.
pub async fn watch_worker(
    queen: &Queen,
    job: &Job,
    worker_id: &rbee_bus::WorkerId,
    job_id: &JobId,
) -> WorkerOutcome {
    let client = queen.bus.client();
    let connects = || client.statistics().connects.load(Ordering::Relaxed);
    let mut seen_connects = connects();
    let mut interrupted_at: Option<Instant> = None;
    let mut last_lookup: Option<Instant> = None;
    loop {
        if job.is_finished() {
            return WorkerOutcome::Finished;
        }
        let connected = client.connection_state() == async_nats::connection::State::Connected;
        let now_connects = connects();
        if !connected || now_connects != seen_connects {
            seen_connects = now_connects;
            interrupted_at = Some(Instant::now());
        }
        let in_grace = interrupted_at.is_some_and(|at| at.elapsed() < RECONNECT_GRACE);
        if interrupted_at.is_some()
            && connected
            && last_lookup.is_none_or(|at| at.elapsed() > Duration::from_secs(1))
        {
            last_lookup = Some(Instant::now());
            if recover_final_status(queen, job_id).await {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let looked = Instant::now();
        let worker = queen.registry().get_worker(worker_id, looked);
        let alive = worker.as_ref().is_some_and(|w| w.liveness != crate::membership::Liveness::Offline);
        if !alive && !in_grace {
            // Listed but offline: first make sure the silence is the worker's, not a backlog of the
            // queen's own. Removed (its hive saw it exit, it stopped, or it was silent past the removal
            // age): gone.
            if let Some(w) = &worker {
                let interval = queen.registry().config().interval(w.presence.interval_ms);
                if !confirm_silent(queen, worker_id, interval).await {
                    continue;
                }
            }
            // One more look: the final status may be in flight.
            tokio::time::sleep(Duration::from_millis(100)).await;
            if job.is_finished() {
                return WorkerOutcome::Finished;
            }
            return WorkerOutcome::Died { tokens: job.token_count() };
        }
        let idle = worker.as_ref().is_some_and(|w| {
            w.liveness == crate::membership::Liveness::Online && w.slots_busy == 0 && w.slots_reserved == 0
        });
        if interrupted_at.is_some() && !in_grace && idle {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if job.is_finished() {
                return WorkerOutcome::Finished;
            }
            return WorkerOutcome::Lost;
        }
        // Liveness is judged on read, so a silence becomes offline without a registry change: look
        // again at least every LIVENESS_POLL.
        queen.registry_changed.wait_since(looked, LIVENESS_POLL).await;
    }
}

/// Confirms that a worker the registry lists offline is really silent before its job is failed: the
/// queen catches up with what NATS already delivered to it (a server round trip: every message the
/// server sent before the reply is then in the queen's subscriptions), and gives the heartbeat fold and
/// the token relay up to one more `interval` to apply it. A worker whose heartbeats or tokens were only
/// waiting behind a busy queen is online again (false); one that is silent stays offline or is removed
/// (true). Costs a round trip and at most one interval, and only when a death is suspected.
async fn confirm_silent(queen: &Queen, worker_id: &rbee_bus::WorkerId, interval: Duration) -> bool {
    let _ = tokio::time::timeout(Duration::from_secs(2), queen.bus.round_trip()).await;
    let deadline = Instant::now() + interval;
    loop {
        let looked = Instant::now();
        match queen.registry().get_worker(worker_id, looked) {
            None => return true,
            Some(w) if w.liveness != crate::membership::Liveness::Offline => {
                tracing::info!(%worker_id, "worker looked silent but its messages were waiting: not dead");
                return false;
            }
            Some(_) => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        queen.registry_changed.wait_since(looked, left).await;
    }
}

/// Looks up the job's last status in the JetStream history; when it is final, publishes it again so
/// the queen (and every subscriber that missed it) sees the end. True when it did.
pub(crate) async fn recover_final_status(queen: &Queen, job_id: &JobId) -> bool {
    if !queen.config.durable_jobs {
        return false;
    }
    let js = async_nats::jetstream::new(queen.bus.client().clone());
    let lookup = async {
        let stream = js.get_stream(crate::jobs::store::STREAM).await.ok()?;
        stream.get_last_raw_message_by_subject(&subject::job_status(job_id)).await.ok()
    };
    let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(2), lookup).await else { return false };
    let Ok(status) = rbee_bus::rpc::decode::<JobStatus>(&message.subject, &message.payload) else {
        return false;
    };
    if !status.state.is_terminal() {
        return false;
    }
    tracing::warn!(%job_id, "final status recovered from the job history after a nats interruption");
    queen.bus.publish(subject::job_status(job_id), &status).await.is_ok()
}
