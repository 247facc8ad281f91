//! Reads: the spec's hive and worker queries, snapshots and stats. Every query that depends on
//! liveness takes the `now` to judge it at. `find_*` answers hold only entries usable now; `list_*`
//! answers hold every entry, each marked with its liveness.

use std::collections::HashMap;
use std::time::Instant;

use rbee_bus::{Backend, HiveId, ModelId, WorkerId, WorkerState};

use super::entry::{millis, WorkerEntry};
use super::liveness::Liveness;
use super::view::{
    compare_load, HiveView, RegistrySnapshot, RegistryStats, Resources, WorkerStateCounts, WorkerTotals,
    WorkerView,
};
use super::Registry;

impl Registry {
    // ----- hives -----

    /// One hive (spec `get_hive_state`).
    pub fn get_hive(&self, hive_id: &HiveId, now: Instant) -> Option<HiveView> {
        let entry = self.hives.get(hive_id)?;
        let mut totals = WorkerTotals::default();
        for worker in self.workers.values().filter(|worker| &worker.heartbeat.hive_id == hive_id) {
            totals.add(&worker.heartbeat, worker.heard.liveness(now, &self.config));
        }
        Some(entry.view(now, &self.config, Some(totals)))
    }

    /// Every hive, whatever its liveness (spec `list_all_hives`).
    pub fn list_hives(&self, now: Instant) -> Vec<HiveView> {
        self.hive_views(now, true, |_| true)
    }

    /// Hives whose liveness is online, leaving ones included (spec `list_active_hives`).
    pub fn list_online_hives(&self, now: Instant) -> Vec<HiveView> {
        self.hive_views(now, true, |view| view.liveness == Liveness::Online)
    }

    /// True when the hive is known and online (spec `is_hive_online`).
    pub fn is_hive_online(&self, hive_id: &HiveId, now: Instant) -> bool {
        self.hives
            .get(hive_id)
            .is_some_and(|entry| entry.heard.liveness(now, &self.config) == Liveness::Online)
    }

    /// Hives in the registry, whatever their liveness (spec `hive_count`).
    pub fn hive_count(&self) -> usize {
        self.hives.len()
    }

    /// Hives online now.
    pub fn online_hive_count(&self, now: Instant) -> usize {
        self.hives
            .values()
            .filter(|entry| entry.heard.liveness(now, &self.config) == Liveness::Online)
            .count()
    }

    /// Workers that name this hive, or `None` for an unknown hive (spec `get_worker_count`).
    pub fn worker_count_on_hive(&self, hive_id: &HiveId) -> Option<usize> {
        self.hives.get(hive_id)?;
        Some(self.workers.values().filter(|worker| &worker.heartbeat.hive_id == hive_id).count())
    }

    /// A hive's devices, memory and workers by their last figures (spec `get_available_resources`).
    pub fn hive_resources(&self, hive_id: &HiveId, now: Instant) -> Option<Resources> {
        let view = self.get_hive(hive_id, now)?;
        let entry = self.hives.get(hive_id)?;
        let mut resources = Resources::default();
        resources.add_hive(&entry.heartbeat);
        resources.workers = view.workers.unwrap_or_default();
        Some(resources)
    }

    /// Devices, memory and workers of the whole cluster: online hives and online workers.
    pub fn total_resources(&self, now: Instant) -> Resources {
        let mut resources = Resources::default();
        for entry in self.hives.values() {
            if entry.heard.liveness(now, &self.config) == Liveness::Online {
                resources.add_hive(&entry.heartbeat);
            }
        }
        for worker in self.workers.values() {
            let liveness = worker.heard.liveness(now, &self.config);
            if liveness == Liveness::Online {
                resources.workers.add(&worker.heartbeat, liveness);
            }
        }
        resources
    }

    /// Online hives whose catalog has the model.
    pub fn find_hives_with_model(&self, model_id: &ModelId, now: Instant) -> Vec<HiveView> {
        self.hive_views(now, true, |view| view.liveness == Liveness::Online && view.model(model_id).is_some())
    }

    /// Hives a worker could be spawned on now (online, not leaving) with a device that has at least
    /// `min_free_bytes` free.
    pub fn find_hives_with_device_memory(&self, min_free_bytes: u64, now: Instant) -> Vec<HiveView> {
        self.hive_views(now, true, |view| view.schedulable && view.largest_free_bytes() >= min_free_bytes)
    }

    /// The hive a worker names.
    pub fn hive_of_worker(&self, worker_id: &WorkerId) -> Option<HiveId> {
        self.workers.get(worker_id).map(|worker| worker.heartbeat.hive_id.clone())
    }

    // ----- workers -----

    /// One worker (spec `get_worker`; the view carries its hive).
    pub fn get_worker(&self, worker_id: &WorkerId, now: Instant) -> Option<WorkerView> {
        self.workers.get(worker_id).map(|entry| self.worker_view(entry, now))
    }

    /// The subject a known worker takes jobs on (spec `get_worker_url`: on the bus a worker is
    /// addressed by subject, not URL).
    pub fn worker_jobs_subject(&self, worker_id: &WorkerId) -> Option<String> {
        self.workers.get(worker_id).map(|_| rbee_bus::subject::worker_jobs(worker_id))
    }

    /// Every worker, whatever its liveness (spec `list_all_workers`).
    pub fn list_workers(&self, now: Instant) -> Vec<WorkerView> {
        self.worker_views(now, |_| true)
    }

    /// Idle workers a job could be placed on now (spec `find_idle_workers`).
    pub fn list_idle_workers(&self, now: Instant) -> Vec<WorkerView> {
        self.worker_views(now, |entry| {
            entry.heartbeat.state == WorkerState::Idle
                && entry.assignable(now, &self.config, self.hive_leaving(&entry.heartbeat.hive_id))
        })
    }

    /// Every worker serving the model, whatever its state (spec `find_workers_by_model`).
    pub fn list_workers_for_model(&self, model_id: &ModelId, now: Instant) -> Vec<WorkerView> {
        self.worker_views(now, |entry| &entry.heartbeat.model_id == model_id)
    }

    /// Every worker on the backend (spec `find_workers_by_backend`).
    pub fn list_workers_by_backend(&self, backend: Backend, now: Instant) -> Vec<WorkerView> {
        self.worker_views(now, |entry| entry.heartbeat.backend == backend)
    }

    /// The worker to place a job for this model on now (spec `find_best_worker_for_model`): online,
    /// not fenced, idle or busy with a free slot (reservations counted), its hive not leaving; least
    /// loaded first (lowest share of slots in use, then highest tokens per second, then id).
    pub fn find_best_worker_for_model(&self, model_id: &ModelId, now: Instant) -> Option<WorkerView> {
        self.workers
            .values()
            .filter(|entry| &entry.heartbeat.model_id == model_id)
            .filter(|entry| entry.assignable(now, &self.config, self.hive_leaving(&entry.heartbeat.hive_id)))
            .min_by(|a, b| compare_load(load_of(a), load_of(b)))
            .map(|entry| self.worker_view(entry, now))
    }

    /// Workers in the registry, whatever their liveness (spec `total_worker_count`).
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Every worker that names this hive (spec `get_workers_on_hive`).
    pub fn workers_on_hive(&self, hive_id: &HiveId, now: Instant) -> Vec<WorkerView> {
        self.worker_views(now, |entry| &entry.heartbeat.hive_id == hive_id)
    }

    /// Workers by the state they reported.
    pub fn count_workers_by_state(&self) -> WorkerStateCounts {
        let mut counts = WorkerStateCounts::default();
        for worker in self.workers.values() {
            counts.add(worker.heartbeat.state);
        }
        counts
    }

    // ----- snapshots and stats -----

    /// Every hive and worker at `now`, for the scheduler.
    pub fn snapshot(&self, now: Instant) -> RegistrySnapshot {
        RegistrySnapshot { hives: self.list_hives(now), workers: self.list_workers(now) }
    }

    /// Every hive, and only the workers of one model: all the scheduler reads for that model, at the
    /// cost of copying that model's workers only. The hives' worker totals are left out (`None`): they
    /// would cost a pass over every worker, and the scheduler does not read them.
    pub fn snapshot_for_model(&self, model_id: &ModelId, now: Instant) -> RegistrySnapshot {
        RegistrySnapshot {
            hives: self.hive_views(now, false, |_| true),
            workers: self.list_workers_for_model(model_id, now),
        }
    }

    /// Every hive at `now` without worker totals: the hive half of [`snapshot_for_model`](Self::snapshot_for_model).
    pub fn hive_snapshot(&self, now: Instant) -> Vec<HiveView> {
        self.hive_views(now, false, |_| true)
    }

    /// Counts for metrics.
    pub fn stats(&self, now: Instant) -> RegistryStats {
        let mut stats = RegistryStats {
            heartbeats_applied: self.heartbeats_applied,
            seq_gaps: self.seq_gaps,
            stale_ignored: self.stale_ignored,
            last_heartbeat_age_ms: self.last_heartbeat_at.map(|at| millis(now.saturating_duration_since(at))),
            workers_by_state: self.count_workers_by_state(),
            ..RegistryStats::default()
        };
        for entry in self.hives.values() {
            stats.hives.add(entry.heard.liveness(now, &self.config));
            stats.hives_leaving += usize::from(entry.leaving());
        }
        for entry in self.workers.values() {
            stats.workers.add(entry.heard.liveness(now, &self.config));
            stats.workers_fenced += usize::from(entry.active_fence(now, &self.config).is_some());
        }
        stats
    }

    // ----- helpers -----

    /// True when the hive is known and announced it is leaving.
    fn hive_leaving(&self, hive_id: &HiveId) -> bool {
        self.drained.contains_key(hive_id) || self.hives.get(hive_id).is_some_and(|entry| entry.leaving())
    }

    /// A worker's view at `now`.
    fn worker_view(&self, entry: &WorkerEntry, now: Instant) -> WorkerView {
        entry.view(now, &self.config, self.hive_leaving(&entry.heartbeat.hive_id))
    }

    /// Views of the workers whose entries pass `keep`, in id order.
    fn worker_views(&self, now: Instant, keep: impl Fn(&WorkerEntry) -> bool) -> Vec<WorkerView> {
        self.workers.values().filter(|entry| keep(entry)).map(|entry| self.worker_view(entry, now)).collect()
    }

    /// Views of the hives that pass `keep`, in id order; with their worker totals when `with_totals`
    /// (one pass over the workers).
    fn hive_views(&self, now: Instant, with_totals: bool, keep: impl Fn(&HiveView) -> bool) -> Vec<HiveView> {
        let mut totals: HashMap<&HiveId, WorkerTotals> = HashMap::new();
        if with_totals && !self.hives.is_empty() {
            for worker in self.workers.values() {
                let liveness = worker.heard.liveness(now, &self.config);
                totals.entry(&worker.heartbeat.hive_id).or_default().add(&worker.heartbeat, liveness);
            }
        }
        self.hives
            .iter()
            .map(|(hive_id, entry)| {
                let workers = with_totals.then(|| totals.remove(hive_id).unwrap_or_default());
                let mut view = entry.view(now, &self.config, workers);
                view.decode_tokens_per_second = self.speeds.of_hive(hive_id);
                if self.drained.contains_key(hive_id) {
                    view.draining = true;
                    view.schedulable = false;
                }
                view
            })
            .filter(|view| keep(view))
            .collect()
    }
}

/// The figures least-loaded ordering compares.
fn load_of(entry: &WorkerEntry) -> (u32, u32, f64, &WorkerId) {
    (
        entry.slots_used(),
        entry.heartbeat.slots_total,
        entry.heartbeat.tokens_per_second,
        &entry.heartbeat.worker_id,
    )
}
