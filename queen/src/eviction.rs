//! Making room, pure: when a worker of a model fits nowhere, which idle workers to stop so that it
//! does. Only workers the request offers ([`PlacementRequest::evictable`]: idle, not kept forever,
//! from [`crate::keep_alive`]) and that the snapshot also shows idle, never a busy one; workers
//! already being stopped count first, so a job keeps waiting on the same eviction. On each
//! device where the model would fit the whole memory, the least recently used of them are counted
//! until the free memory plus theirs covers the estimate; the device needing the fewest stops wins
//! (then the most free memory, then hive and device id). A worker's memory is the larger of what it
//! reports (resident) and the estimate for its model, so the count errs towards stopping enough.

use std::collections::HashSet;

use rbee_bus::{DeviceKind, HiveId, WorkerId, WorkerState};

use crate::keep_alive::Evictable;
use crate::membership::{Liveness, RegistrySnapshot};
use crate::scheduler::{estimate_spawn_bytes, PlacementRequest};

/// Idle workers to stop on one hive so a worker of the model fits there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    /// The hive.
    pub hive_id: HiveId,
    /// The device the new worker will go on.
    pub device: String,
    /// The workers to stop, least recently used first.
    pub workers: Vec<WorkerId>,
}

/// The eviction that makes room for the request's model, if one does. CPUs in `occupied_cpus` (that
/// already run a worker of the model) are left alone, as for a spawn.
pub fn plan(
    snapshot: &RegistrySnapshot,
    request: &PlacementRequest,
    occupied_cpus: &HashSet<&HiveId>,
) -> Option<Eviction> {
    if request.evictable.is_empty() {
        return None;
    }
    let mut best: Option<(Eviction, u64)> = None;
    for hive in &snapshot.hives {
        let Some(model) = hive.model(&request.model_id) else { continue };
        if !hive.schedulable
            || hive.liveness != Liveness::Online
            || model.load_failures.is_some()
            || request.exclude_hives.contains(&hive.hive_id)
        {
            continue;
        }
        let needed = request.estimated_bytes.unwrap_or_else(|| estimate_spawn_bytes(model));
        let fits_emptied = |d: &&rbee_bus::DeviceInfo| d.total_bytes >= needed && d.free_bytes < needed;
        let occupied =
            |d: &&rbee_bus::DeviceInfo| d.kind == DeviceKind::Cpu && occupied_cpus.contains(&hive.hive_id);
        for device in hive.devices.iter().filter(fits_emptied).filter(|d| !occupied(d)) {
            let mut freed = device.free_bytes;
            let mut workers = Vec::new();
            for Evictable { worker_id, stopping, .. } in &request.evictable {
                let Some(worker) = snapshot.workers.iter().find(|w| &w.worker_id == worker_id) else {
                    continue;
                };
                let idle = worker.state == WorkerState::Idle && worker.slots_used() == 0;
                if worker.hive_id != hive.hive_id || worker.device != device.id || !(idle || *stopping) {
                    continue;
                }
                let estimate = hive.model(&worker.model_id).map_or(0, estimate_spawn_bytes);
                freed = freed.saturating_add(worker.memory_bytes.max(estimate));
                workers.push(worker_id.clone());
                if freed >= needed {
                    break;
                }
            }
            if freed < needed {
                continue;
            }
            let candidate = Eviction { hive_id: hive.hive_id.clone(), device: device.id.clone(), workers };
            let better = best.as_ref().is_none_or(|(b, free)| {
                candidate
                    .workers
                    .len()
                    .cmp(&b.workers.len())
                    .then(free.cmp(&device.free_bytes))
                    .then(candidate.hive_id.cmp(&b.hive_id))
                    .then(candidate.device.cmp(&b.device))
                    .is_lt()
            });
            if better {
                best = Some((candidate, device.free_bytes));
            }
        }
    }
    best.map(|(eviction, _)| eviction)
}
