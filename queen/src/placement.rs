//! Carries the scheduler's decision into the membership view: [`place`] asks the pure
//! [`scheduler`](crate::scheduler) on a fresh snapshot and, when it assigns, reserves the worker's slot,
//! so that the next placement before that worker's heartbeat sees the slot taken. The dispatcher
//! releases the reservation when the worker refuses.

use std::time::Instant;

use crate::membership::{Registry, RegistrySnapshot};
use crate::scheduler::{schedule, Placement, PlacementRequest};

/// Decides where a job goes and reserves the slot of an assignment. The caller holds the registry's
/// lock across this call.
pub fn place(registry: &mut Registry, request: &PlacementRequest, now: Instant) -> Placement {
    // Most jobs go to a worker, and assigning (or refusing on a full queue) reads the model's workers
    // only: decide from those first, and copy the hives only when a spawn or the queue is the answer.
    // The caller holds the registry lock all along, so copying less is time the heartbeats do not wait.
    let workers_only = RegistrySnapshot {
        hives: Vec::new(),
        workers: if request.spawn_only {
            Vec::new()
        } else {
            registry.list_workers_for_model(&request.model_id, now)
        },
    };
    let first = schedule(&workers_only, request);
    let placement = if matches!(first, Placement::Assign { .. } | Placement::Refuse { .. }) {
        first
    } else {
        let RegistrySnapshot { mut workers, .. } = workers_only;
        // Workers that may make room are of other models: the eviction rule reads them.
        workers.extend(request.evictable.iter().filter_map(|e| registry.get_worker(&e.worker_id, now)));
        let snapshot = RegistrySnapshot { hives: registry.hive_snapshot(now), workers };
        schedule(&snapshot, request)
    };
    if let Placement::Assign { worker_id } = &placement {
        // The snapshot said the worker has a free slot, so the reservation succeeds.
        registry.reserve_slot(worker_id, now);
    }
    placement
}
