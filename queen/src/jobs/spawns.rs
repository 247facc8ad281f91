//! Workers the queen asked hives for on behalf of queued jobs: the markers of spawns in flight
//! ([`SpawnsInFlight`], pure, one owner in [`Queen`]), which the scheduler counts as loading workers so
//! that the same demand is not spawned twice, and the one builder of a [`SpawnRequest`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rbee_bus::{subject, BusError, HiveId, ModelId, SpawnReply, SpawnRequest, SCHEMA_VERSION};

use crate::Queen;

/// How long a hive may take to answer a spawn request (it answers once the process runs).
pub const SPAWN_REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// After the hive's reply, the marker stays this long: until the worker heartbeats and the scheduler
/// sees it loading.
const MARKER_AFTER_REPLY: Duration = Duration::from_secs(5);

/// A spawn request for `model_id` with the hive's defaults for everything but the device, fenced
/// with `fence` ([`crate::leader::Leadership::order_fence`]).
pub fn spawn_request(model_id: ModelId, device: Option<String>, fence: Option<u64>) -> SpawnRequest {
    SpawnRequest {
        v: SCHEMA_VERSION,
        model_id,
        device,
        slots: None,
        ctx_per_slot: None,
        worker_type: None,
        worker_id: None,
        threads: None,
        fence,
    }
}

/// Spawns requested, by hive and model, with when.
#[derive(Debug, Default)]
pub struct SpawnsInFlight {
    started: HashMap<(HiveId, ModelId), Instant>,
}

impl SpawnsInFlight {
    /// Spawns of `model_id` asked for less than `timeout` ago.
    pub fn of_model(&self, model_id: &ModelId, now: Instant, timeout: Duration) -> usize {
        self.started
            .iter()
            .filter(|((_, model), at)| model == model_id && now.duration_since(**at) < timeout)
            .count()
    }

    /// Spawns on `hive_id` asked for less than `timeout` ago.
    pub fn on_hive(&self, hive_id: &HiveId, now: Instant, timeout: Duration) -> usize {
        self.started
            .iter()
            .filter(|((hive, _), at)| hive == hive_id && now.duration_since(**at) < timeout)
            .count()
    }

    /// Marks a spawn as asked for; false when one for the same hive and model is still in flight.
    pub fn begin(&mut self, hive_id: &HiveId, model_id: &ModelId, now: Instant, timeout: Duration) -> bool {
        let key = (hive_id.clone(), model_id.clone());
        if self.started.get(&key).is_some_and(|at| now.duration_since(*at) < timeout) {
            return false;
        }
        self.started.insert(key, now);
        true
    }

    /// Clears the marker.
    pub fn end(&mut self, hive_id: &HiveId, model_id: &ModelId) {
        self.started.remove(&(hive_id.clone(), model_id.clone()));
    }
}

/// Asks a hive for a worker of `model_id` for queued jobs, unless one is already being started there.
pub fn request_spawn(queen: &Arc<Queen>, hive_id: &HiveId, model_id: &ModelId, device: &str) {
    let timeout = queen.config.spawn_timeout;
    if !queen.spawns().begin(hive_id, model_id, Instant::now(), timeout) {
        return;
    }
    let request = spawn_request(model_id.clone(), Some(device.to_owned()), queen.leadership.order_fence());
    let (queen, hive_id, model_id) = (queen.clone(), hive_id.clone(), model_id.clone());
    let tasks = queen.tasks.clone();
    tasks.spawn("spawn request", async move {
        let reply: Result<SpawnReply, BusError> =
            queen.bus.request(subject::hive_spawn(&hive_id), &request, SPAWN_REPLY_TIMEOUT).await;
        match reply {
            Ok(r) => {
                tracing::info!(%hive_id, worker_id = %r.worker_id, pid = r.pid, "worker spawned for queued jobs");
                // A draining queen does not wait for the marker's end; it stays until it times out.
                let draining = tokio::time::timeout(MARKER_AFTER_REPLY, queen.draining.cancelled()).await;
                if draining.is_ok() {
                    return;
                }
            }
            Err(e) => tracing::warn!(%hive_id, error = %e, "spawn for queued jobs failed"),
        }
        queen.spawns().end(&hive_id, &model_id);
        queen.registry_changed.notify();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spawn_in_flight_holds_off_a_second_until_it_ends_or_times_out() {
        let (hive, model): (HiveId, ModelId) = ("h".parse().expect("id"), "m".parse().expect("id"));
        let mut spawns = SpawnsInFlight::default();
        let now = Instant::now();
        let timeout = Duration::from_secs(60);
        assert!(spawns.begin(&hive, &model, now, timeout));
        assert!(!spawns.begin(&hive, &model, now, timeout));
        assert_eq!(spawns.of_model(&model, now, timeout), 1);
        assert_eq!(spawns.on_hive(&hive, now, timeout), 1);
        assert_eq!(spawns.on_hive(&"other".parse().expect("id"), now, timeout), 0);
        assert_eq!(spawns.of_model(&model, now + timeout, timeout), 0, "a stale marker counts no more");
        assert!(spawns.begin(&hive, &model, now + timeout, timeout));
        spawns.end(&hive, &model);
        assert_eq!(spawns.of_model(&model, now, timeout), 0);
    }
}
