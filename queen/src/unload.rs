//! Workers unload by themselves: one task folds the registry's workers into the keep-alive table
//! ([`crate::keep_alive`]) every [`CHECK_EVERY`] and asks their hives to stop those idle past their
//! keep-alive; [`evict`] stops the idle workers placement chose to make room ([`crate::eviction`]).
//! [`stop_worker`] is the one place the queen asks a hive to stop a worker for its own reasons
//! (unload, eviction, drain).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rbee_bus::{subject, BusError, ErrorCode, HiveId, StopReply, StopRequest, WorkerId, SCHEMA_VERSION};
use tokio_util::sync::CancellationToken;

use crate::Queen;

/// How often idle workers are looked at.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);
/// How long a stopping worker gets to finish before its hive kills it.
const STOP_GRACE_MS: u64 = 10_000;
/// How long the queen waits for the hive's answer to a stop.
const STOP_REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs until `stop`: unloads workers idle past their keep-alive.
pub async fn run(queen: Arc<Queen>, stop: CancellationToken) {
    loop {
        tick(&queen);
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = stop.cancelled() => return,
            _ = queen.draining.cancelled() => return,
        }
    }
}

fn tick(queen: &Arc<Queen>) {
    let now = Instant::now();
    let workers = queen.registry().list_workers(now);
    let due = {
        let mut table = queen.keep_alive();
        table.observe(&workers, now);
        table.due(now)
    };
    for worker_id in due {
        let Some(worker) = workers.iter().find(|w| w.worker_id == worker_id) else { continue };
        let keep_alive = queen.keep_alive().keep_alive(&worker_id);
        tracing::info!(%worker_id, hive_id = %worker.hive_id, model_id = %worker.model_id, %keep_alive,
            "unloading idle worker");
        stop_in_background(queen, worker.hive_id.clone(), worker_id);
    }
}

/// Stops idle workers on `hive_id` to make room; each is asked once (the table marks them).
pub fn evict(queen: &Arc<Queen>, hive_id: &HiveId, workers: &[WorkerId]) {
    let fresh = queen.keep_alive().stopping(workers, Instant::now());
    for worker_id in fresh {
        tracing::info!(%worker_id, %hive_id, "stopping idle worker to make room");
        stop_in_background(queen, hive_id.clone(), worker_id);
    }
}

fn stop_in_background(queen: &Arc<Queen>, hive_id: HiveId, worker_id: WorkerId) {
    let queen = queen.clone();
    let tasks = queen.tasks.clone();
    tasks.spawn("unload", async move {
        if !stop_worker(&queen, &hive_id, worker_id.clone()).await {
            queen.keep_alive().stop_failed(&worker_id);
        }
        queen.registry_changed.notify();
    });
}

/// Asks the hive to stop the worker (it gets [`STOP_GRACE_MS`] to finish); true when the hive
/// answered, or said the worker no longer runs.
pub async fn stop_worker(queen: &Queen, hive_id: &HiveId, worker_id: WorkerId) -> bool {
    let request = StopRequest {
        v: SCHEMA_VERSION,
        worker_id: worker_id.clone(),
        deadline_ms: Some(STOP_GRACE_MS),
        fence: queen.leadership.order_fence(),
    };
    let reply: Result<StopReply, _> =
        queen.bus.request(subject::hive_stop(hive_id), &request, STOP_REPLY_TIMEOUT).await;
    match reply {
        Ok(reply) => {
            tracing::info!(%hive_id, %worker_id, graceful = reply.graceful, "worker stopped");
            true
        }
        Err(BusError::Remote { error, .. }) if error.code() == ErrorCode::NotFound => {
            tracing::info!(%hive_id, %worker_id, "worker already gone");
            true
        }
        Err(e) => {
            tracing::warn!(%hive_id, %worker_id, error = %e, "cannot stop worker");
            false
        }
    }
}
