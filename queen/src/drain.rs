//! Draining a hive for maintenance without failed requests: the registry marks it drained (nothing new
//! is placed or spawned there), and one task per drained hive stops each of its workers once the
//! worker has no job left, until none is left, the hive is taken back (undrained), or the deadline
//! passes (then the remaining workers are stopped as they are). A stop that fails is asked again;
//! the task waits for spawns already asked of the hive, so none leaves a worker behind it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rbee_bus::{HiveId, WorkerId};

use crate::Queen;

/// How long running jobs get to finish by default.
pub const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(300);
/// The longest deadline a drain takes (a day).
pub const MAX_DRAIN_DEADLINE: Duration = Duration::from_secs(86_400);
/// How often the drain looks at the hive's workers.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// How long after a failed stop the drain asks again.
const RETRY_STOP_AFTER: Duration = Duration::from_secs(2);

/// Drains `hive_id`: marks it and starts the task that stops its workers. Returns the workers it had.
/// `deadline` is capped at [`MAX_DRAIN_DEADLINE`].
pub fn start(queen: &Arc<Queen>, hive_id: HiveId, deadline: Duration) -> usize {
    let deadline = deadline.min(MAX_DRAIN_DEADLINE);
    let (workers, generation) = {
        let mut registry = queen.registry();
        let fresh = registry.set_drained(&hive_id, true);
        let workers = registry.workers_on_hive(&hive_id, Instant::now()).len();
        match registry.drain_generation(&hive_id) {
            Some(generation) if fresh => (workers, generation),
            _ => return workers,
        }
    };
    tracing::info!(%hive_id, workers, ?deadline, "draining hive");
    queen.registry_changed.notify();
    queen.tasks.spawn("drain", run(queen.clone(), hive_id, deadline, generation));
    workers
}

/// Takes a drained hive back; false when it was not drained.
pub fn stop(queen: &Queen, hive_id: &HiveId) -> bool {
    let changed = queen.registry().set_drained(hive_id, false);
    if changed {
        tracing::info!(%hive_id, "hive undrained");
        queen.registry_changed.notify();
    }
    changed
}

async fn run(queen: Arc<Queen>, hive_id: HiveId, deadline: Duration, generation: u64) {
    let started = Instant::now();
    // Stops asked for (and answered), or failed, with when.
    let mut stopped: Vec<WorkerId> = Vec::new();
    let mut failed: Vec<(WorkerId, Instant)> = Vec::new();
    loop {
        let now = Instant::now();
        let (ours, workers) = {
            let registry = queen.registry();
            (registry.drain_generation(&hive_id) == Some(generation), registry.workers_on_hive(&hive_id, now))
        };
        if !ours {
            return;
        }
        let spawning = queen.spawns().on_hive(&hive_id, now, queen.config.spawn_timeout);
        if workers.is_empty() && spawning == 0 {
            tracing::info!(%hive_id, "hive drained: no worker left");
            return;
        }
        let late = now.duration_since(started) >= deadline;
        failed.retain(|(_, at)| now.duration_since(*at) < RETRY_STOP_AFTER);
        for worker in workers {
            let idle = worker.slots_busy == 0 && worker.slots_reserved == 0;
            let id = &worker.worker_id;
            if (idle || late) && !stopped.contains(id) && !failed.iter().any(|(w, _)| w == id) {
                if crate::unload::stop_worker(&queen, &hive_id, id.clone()).await {
                    stopped.push(id.clone());
                } else {
                    failed.push((id.clone(), Instant::now()));
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            // The queen is stopping: its workers are no longer its to stop.
            _ = queen.draining.cancelled() => return,
        }
    }
}
