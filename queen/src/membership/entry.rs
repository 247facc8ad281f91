//! The registry's own records of hives and workers, and how they are turned into views.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rbee_bus::{HiveHeartbeat, HiveState, WorkerHeartbeat, WorkerState};

use super::config::RegistryConfig;
use super::liveness::{Heard, Liveness};
use super::view::{HiveView, Presence, WorkerTotals, WorkerView};
use crate::sequence::Sequence;

/// Milliseconds in a duration, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A hive: its last accepted heartbeat and when it came.
#[derive(Debug, Clone)]
pub(crate) struct HiveEntry {
    /// The last accepted heartbeat, figures and all.
    pub heartbeat: HiveHeartbeat,
    /// Receive time and interval.
    pub heard: Heard,
    /// Epoch and sequence.
    pub sequence: Sequence,
}

impl HiveEntry {
    /// A hive first heard at `now`.
    pub fn new(heartbeat: &HiveHeartbeat, now: Instant, config: &RegistryConfig) -> Self {
        Self {
            heard: Heard::new(now, config.interval(heartbeat.interval_ms)),
            sequence: Sequence::new(&heartbeat.meta),
            heartbeat: heartbeat.clone(),
        }
    }

    /// True when it announced it is leaving.
    pub fn leaving(&self) -> bool {
        self.heartbeat.state == HiveState::Leaving
    }

    /// True when workers may be spawned there at `now`.
    pub fn schedulable(&self, now: Instant, config: &RegistryConfig) -> bool {
        !self.leaving() && self.heard.liveness(now, config) == Liveness::Online
    }

    /// Its view at `now`, with the totals of its workers when counted.
    pub fn view(&self, now: Instant, config: &RegistryConfig, workers: Option<WorkerTotals>) -> HiveView {
        let heartbeat = &self.heartbeat;
        HiveView {
            hive_id: heartbeat.hive_id.clone(),
            hostname: heartbeat.hostname.clone(),
            version: heartbeat.version.clone(),
            state: heartbeat.state,
            leaving: self.leaving(),
            liveness: self.heard.liveness(now, config),
            presence: presence(&self.sequence, &self.heard, heartbeat.interval_ms, now),
            schedulable: self.schedulable(now, config),
            draining: false,
            cpu: heartbeat.cpu.clone(),
            ram: heartbeat.ram.clone(),
            devices: heartbeat.devices.clone(),
            models: heartbeat.models.clone(),
            decode_tokens_per_second: Default::default(),
            reported_workers: heartbeat.workers.clone(),
            workers,
        }
    }
}

/// The queen's decision to keep a worker out of scheduling.
#[derive(Debug, Clone)]
pub(crate) struct Fence {
    /// When it was fenced (or fenced again).
    pub at: Instant,
    /// Why, for a person.
    pub reason: String,
}

/// A worker: its last accepted heartbeat, when it came, and the queen's own marks on it.
#[derive(Debug, Clone)]
pub(crate) struct WorkerEntry {
    /// The last accepted heartbeat.
    pub heartbeat: WorkerHeartbeat,
    /// Receive time and interval.
    pub heard: Heard,
    /// Epoch and sequence.
    pub sequence: Sequence,
    /// Set by `fence_worker`; lifted by a new epoch or the fence timeout.
    pub fence: Option<Fence>,
    /// The slot reservations made since the last heartbeat that counted them.
    pub reservations: Vec<Reservation>,
    /// The prompt-prefix fingerprints of the last heartbeat, sorted (taken out of `heartbeat`, so that
    /// views share them instead of copying).
    pub prefixes: Arc<[u64]>,
}

/// A placement the queen made on a worker that its heartbeats may not count yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// When the placement was made.
    pub at: Instant,
    /// The worker's number for the job once it accepted it (`JobAccepted::accepted_seq`): a heartbeat
    /// whose `jobs_accepted` reaches it counts the job.
    pub accepted_seq: Option<u64>,
}

impl WorkerEntry {
    /// A worker first heard at `now`.
    pub fn new(heartbeat: &WorkerHeartbeat, now: Instant, config: &RegistryConfig) -> Self {
        let mut entry = Self {
            heard: Heard::new(now, config.interval(heartbeat.interval_ms)),
            sequence: Sequence::new(&heartbeat.meta),
            heartbeat: heartbeat.clone(),
            fence: None,
            reservations: Vec::new(),
            prefixes: Arc::default(),
        };
        entry.set_heartbeat(heartbeat);
        entry
    }

    /// Keeps `heartbeat` as the last one, its fingerprints (at most
    /// [`rbee_bus::prefix::MAX_ADVERTISED`], sorted) apart.
    pub fn set_heartbeat(&mut self, heartbeat: &WorkerHeartbeat) {
        let mut prefixes = heartbeat.prefix_fingerprints.clone();
        prefixes.truncate(rbee_bus::prefix::MAX_ADVERTISED);
        prefixes.sort_unstable();
        self.prefixes = prefixes.into();
        self.heartbeat = WorkerHeartbeat { prefix_fingerprints: Vec::new(), ..heartbeat.clone() };
    }

    /// The fence in force at `now`, if any.
    pub fn active_fence(&self, now: Instant, config: &RegistryConfig) -> Option<&Fence> {
        self.fence.as_ref().filter(|fence| now.saturating_duration_since(fence.at) < config.fence_timeout)
    }

    /// Reservations held.
    pub fn slots_reserved(&self) -> u32 {
        u32::try_from(self.reservations.len()).unwrap_or(u32::MAX)
    }

    /// Slots neither busy at the last heartbeat nor reserved since.
    pub fn slots_free(&self) -> u32 {
        self.heartbeat
            .slots_total
            .saturating_sub(self.heartbeat.slots_busy)
            .saturating_sub(self.slots_reserved())
    }

    /// Slots in use, reservations included, capped at the total.
    pub fn slots_used(&self) -> u32 {
        self.heartbeat.slots_busy.saturating_add(self.slots_reserved()).min(self.heartbeat.slots_total)
    }

    /// True when a job may be placed on it at `now`.
    pub fn assignable(&self, now: Instant, config: &RegistryConfig, hive_leaving: bool) -> bool {
        matches!(self.heartbeat.state, WorkerState::Idle | WorkerState::Busy)
            && self.slots_free() > 0
            && !hive_leaving
            && self.heard.liveness(now, config) == Liveness::Online
            && self.active_fence(now, config).is_none()
    }

    /// Its view at `now`.
    pub fn view(&self, now: Instant, config: &RegistryConfig, hive_leaving: bool) -> WorkerView {
        let heartbeat = &self.heartbeat;
        let fence = self.active_fence(now, config);
        WorkerView {
            worker_id: heartbeat.worker_id.clone(),
            hive_id: heartbeat.hive_id.clone(),
            model_id: heartbeat.model_id.clone(),
            state: heartbeat.state,
            backend: heartbeat.backend,
            device: heartbeat.device.clone(),
            slots_total: heartbeat.slots_total,
            slots_busy: heartbeat.slots_busy,
            slots_reserved: self.slots_reserved(),
            slots_free: self.slots_free(),
            ctx_per_slot: heartbeat.ctx_per_slot,
            tokens_per_second: heartbeat.tokens_per_second,
            memory_bytes: heartbeat.memory_bytes,
            pid: heartbeat.pid,
            liveness: self.heard.liveness(now, config),
            presence: presence(&self.sequence, &self.heard, heartbeat.interval_ms, now),
            fenced: fence.is_some(),
            fence_reason: fence.map(|fence| fence.reason.clone()),
            hive_leaving,
            assignable: self.assignable(now, config, hive_leaving),
            prefixes: self.prefixes.clone(),
        }
    }
}

/// The epoch of a worker removed on purpose: heartbeats of that epoch arriving late are ignored.
#[derive(Debug, Clone)]
pub(crate) struct Tombstone {
    /// The removed epoch.
    pub epoch: String,
    /// When it was removed.
    pub at: Instant,
}

/// What the queen heard of a publisher, for its view.
fn presence(sequence: &Sequence, heard: &Heard, interval_ms: u64, now: Instant) -> Presence {
    Presence {
        interval_ms,
        epoch: sequence.epoch.clone(),
        seq: sequence.last_seq,
        seq_gaps: sequence.gaps,
        age_ms: millis(heard.age(now)),
    }
}
