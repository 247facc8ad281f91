//! Draining a hive for maintenance without failed requests: the registry marks it drained (nothing new
//! is placed or spawned there), and one task per drained hive stops each of its workers once the
//! worker has no job left, until none is left, the hive is taken back (undrained), or the deadline
//! passes (then the remaining workers are stopped as they are).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rbee_bus::{subject, HiveId, StopReply, StopRequest, WorkerId, SCHEMA_VERSION};

use crate::Queen;

/// How long running jobs get to finish by default.
pub const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(300);
/// How often the drain looks at the hive's workers.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Drains `hive_id`: marks it and starts the task that stops its workers. Returns the workers it had.
pub fn start(queen: &Arc<Queen>, hive_id: HiveId, deadline: Duration) -> usize {
    let workers = {
        let mut registry = queen.registry();
        if !registry.set_drained(&hive_id, true) {
            return registry.workers_on_hive(&hive_id, Instant::now()).len();
        }
        registry.workers_on_hive(&hive_id, Instant::now()).len()
    };
    tracing::info!(%hive_id, workers, ?deadline, "draining hive");
    queen.registry_changed.notify_waiters();
    queen.tasks.spawn("drain", run(queen.clone(), hive_id, deadline));
    workers
}

/// Takes a drained hive back; false when it was not drained.
pub fn stop(queen: &Queen, hive_id: &HiveId) -> bool {
    let changed = queen.registry().set_drained(hive_id, false);
    if changed {
        tracing::info!(%hive_id, "hive undrained");
        queen.registry_changed.notify_waiters();
    }
    changed
}

async fn run(queen: Arc<Queen>, hive_id: HiveId, deadline: Duration) {
    let until = Instant::now() + deadline;
    let mut asked: Vec<WorkerId> = Vec::new();
    loop {
        let (drained, workers) = {
            let registry = queen.registry();
            (registry.is_drained(&hive_id), registry.workers_on_hive(&hive_id, Instant::now()))
        };
        if !drained {
            return;
        }
        if workers.is_empty() {
            tracing::info!(%hive_id, "hive drained: no worker left");
            return;
        }
        let late = Instant::now() >= until;
        for worker in workers {
            let idle = worker.slots_busy == 0 && worker.slots_reserved == 0;
            if (idle || late) && !asked.contains(&worker.worker_id) {
                asked.push(worker.worker_id.clone());
                stop_worker(&queen, &hive_id, worker.worker_id).await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            // The queen is stopping: its workers are no longer its to stop.
            _ = queen.draining.cancelled() => return,
        }
    }
}

async fn stop_worker(queen: &Queen, hive_id: &HiveId, worker_id: WorkerId) {
    let request = StopRequest { v: SCHEMA_VERSION, worker_id: worker_id.clone(), deadline_ms: Some(10_000) };
    let reply: Result<StopReply, _> =
        queen.bus.request(subject::hive_stop(hive_id), &request, Duration::from_secs(20)).await;
    match reply {
        Ok(_) => tracing::info!(%hive_id, %worker_id, "drain: worker stopped"),
        Err(e) => tracing::warn!(%hive_id, %worker_id, error = %e, "drain: cannot stop worker"),
    }
}
