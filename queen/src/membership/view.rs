//! Serializable views of the registry, for the scheduler and the HTTP API. Every figure is the last
//! one a heartbeat reported; `age_ms` and `liveness` are computed at the `now` the view was taken.

use std::cmp::Ordering;

use rbee_bus::{
    Backend, CpuInfo, DeviceInfo, HiveId, HiveState, HiveWorkerSummary, MemoryInfo, ModelId, ModelSummary,
    WorkerId, WorkerState,
};
use serde::{Deserialize, Serialize};

use super::liveness::Liveness;

/// How the queen hears from a hive or a worker (flattened into its view on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// Heartbeat interval it announced, in milliseconds.
    pub interval_ms: u64,
    /// Its process epoch.
    pub epoch: String,
    /// Sequence number of its last accepted heartbeat.
    pub seq: u64,
    /// Heartbeats lost (sequence numbers skipped).
    pub seq_gaps: u64,
    /// Milliseconds since its last heartbeat was received.
    pub age_ms: u64,
}

/// A worker as the queen knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerView {
    /// The worker.
    pub worker_id: WorkerId,
    /// The hive that spawned it.
    pub hive_id: HiveId,
    /// The model it serves.
    pub model_id: ModelId,
    /// What it said it was doing.
    pub state: WorkerState,
    /// cpu, cuda or metal.
    pub backend: Backend,
    /// Device id on its hive (`cpu`, `cuda:0`).
    pub device: String,
    /// Slots in all.
    pub slots_total: u32,
    /// Slots busy at its last heartbeat.
    pub slots_busy: u32,
    /// Slots the queen placed jobs on since that heartbeat (see `reserve_slot`).
    pub slots_reserved: u32,
    /// `slots_total - slots_busy - slots_reserved`, never below zero.
    pub slots_free: u32,
    /// Context tokens per slot.
    pub ctx_per_slot: u32,
    /// Decode tokens per second, all slots together.
    pub tokens_per_second: f64,
    /// Resident memory of the process, in bytes.
    pub memory_bytes: u64,
    /// Process id on its hive's machine.
    pub pid: u32,
    /// Liveness by the age of its last heartbeat.
    pub liveness: Liveness,
    /// Its heartbeats: interval, epoch, sequence, age.
    #[serde(flatten)]
    pub presence: Presence,
    /// True while the queen keeps it out of scheduling.
    pub fenced: bool,
    /// Why it was fenced, while fenced.
    pub fence_reason: Option<String>,
    /// True when its hive announced it is leaving.
    pub hive_leaving: bool,
    /// True when a job may be placed on it now: online, not fenced, idle or busy with a free slot,
    /// its hive not leaving.
    pub assignable: bool,
    /// Fingerprints of the prompt prefixes it holds, sorted ([`rbee_bus::prefix`]); for the scheduler.
    #[serde(skip)]
    pub prefixes: std::sync::Arc<[u64]>,
}

impl WorkerView {
    /// Slots in use, reservations included, capped at the total.
    pub fn slots_used(&self) -> u32 {
        self.slots_busy.saturating_add(self.slots_reserved).min(self.slots_total)
    }
}

/// Orders workers least loaded first: lowest share of slots in use (reservations included), then
/// highest tokens per second, then worker id so that the order is total and repeatable.
pub fn least_loaded_first(a: &WorkerView, b: &WorkerView) -> Ordering {
    compare_load(
        (a.slots_used(), a.slots_total, a.tokens_per_second, &a.worker_id),
        (b.slots_used(), b.slots_total, b.tokens_per_second, &b.worker_id),
    )
}

/// [`least_loaded_first`] on raw figures: `(used, total, tokens_per_second, id)`.
pub(crate) fn compare_load(a: (u32, u32, f64, &WorkerId), b: (u32, u32, f64, &WorkerId)) -> Ordering {
    // used_a / total_a < used_b / total_b, without division; a zero total counts as full.
    let ratio =
        |used: u32, total: u32| if total == 0 { (1u64, 1u64) } else { (u64::from(used), u64::from(total)) };
    let (used_a, total_a) = ratio(a.0, a.1);
    let (used_b, total_b) = ratio(b.0, b.1);
    (used_a * total_b).cmp(&(used_b * total_a)).then_with(|| b.2.total_cmp(&a.2)).then_with(|| a.3.cmp(b.3))
}

/// Workers of one hive, summed from the workers' own heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerTotals {
    /// Workers in the registry that name this hive.
    pub count: usize,
    /// Of those, online.
    pub online: usize,
    /// Slots of online workers.
    pub slots_total: u64,
    /// Busy slots of online workers.
    pub slots_busy: u64,
    /// Resident memory of online workers, in bytes.
    pub memory_bytes: u64,
    /// Decode tokens per second of online workers.
    pub tokens_per_second: f64,
}

impl WorkerTotals {
    /// Adds one worker.
    pub(crate) fn add(&mut self, worker: &rbee_bus::WorkerHeartbeat, liveness: Liveness) {
        self.count += 1;
        if liveness != Liveness::Online {
            return;
        }
        self.online += 1;
        self.slots_total += u64::from(worker.slots_total);
        self.slots_busy += u64::from(worker.slots_busy);
        self.memory_bytes += worker.memory_bytes;
        self.tokens_per_second += worker.tokens_per_second;
    }
}

/// A hive as the queen knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HiveView {
    /// The hive.
    pub hive_id: HiveId,
    /// Its machine's host name.
    pub hostname: String,
    /// The rbee version it runs.
    pub version: String,
    /// Online or leaving, as it said.
    pub state: HiveState,
    /// True when it announced it is leaving.
    pub leaving: bool,
    /// Liveness by the age of its last heartbeat.
    pub liveness: Liveness,
    /// Its heartbeats: interval, epoch, sequence, age.
    #[serde(flatten)]
    pub presence: Presence,
    /// True when workers may be spawned there: online, not leaving and not drained.
    pub schedulable: bool,
    /// True while an operator drains it: nothing new goes there, its workers stop once idle.
    pub draining: bool,
    /// The CPU.
    pub cpu: CpuInfo,
    /// System memory.
    pub ram: MemoryInfo,
    /// Devices with their free memory at the last heartbeat.
    pub devices: Vec<DeviceInfo>,
    /// Models in its catalog.
    pub models: Vec<ModelSummary>,
    /// Per-stream decode tokens per second its workers reported while busy, by model, smoothed; it
    /// outlives the workers. The scheduler places a model's next worker on the fastest host.
    pub decode_tokens_per_second: std::collections::BTreeMap<ModelId, f64>,
    /// Worker processes as the hive itself reports them.
    pub reported_workers: Vec<HiveWorkerSummary>,
    /// Workers heartbeating for this hive, summed; `None` in a `snapshot_for_model`.
    pub workers: Option<WorkerTotals>,
}

impl HiveView {
    /// The catalog entry of `model_id`, if the hive has it.
    pub fn model(&self, model_id: &ModelId) -> Option<&ModelSummary> {
        self.models.iter().find(|model| &model.model_id == model_id)
    }

    /// The largest free memory of any of its devices, in bytes.
    pub fn largest_free_bytes(&self) -> u64 {
        self.devices.iter().map(|device| device.free_bytes).max().unwrap_or(0)
    }
}

/// Resources of one hive or of the whole cluster (online hives and online workers only), from the
/// figures of the last heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Hives counted.
    pub hives: usize,
    /// Devices of those hives (the CPU is one).
    pub devices: usize,
    /// Memory of those devices, in bytes.
    pub device_total_bytes: u64,
    /// Free memory of those devices, in bytes.
    pub device_free_bytes: u64,
    /// The largest free memory of any one device, in bytes: the biggest model that could be placed.
    pub largest_device_free_bytes: u64,
    /// System memory installed, in bytes.
    pub ram_total_bytes: u64,
    /// System memory available, in bytes.
    pub ram_available_bytes: u64,
    /// Workers, summed from their heartbeats.
    pub workers: WorkerTotals,
}

impl Resources {
    /// Adds one hive's devices and memory (not its workers).
    pub(crate) fn add_hive(&mut self, hive: &rbee_bus::HiveHeartbeat) {
        self.hives += 1;
        self.devices += hive.devices.len();
        for device in &hive.devices {
            self.device_total_bytes += device.total_bytes;
            self.device_free_bytes += device.free_bytes;
            self.largest_device_free_bytes = self.largest_device_free_bytes.max(device.free_bytes);
        }
        self.ram_total_bytes += hive.ram.total_bytes;
        self.ram_available_bytes += hive.ram.available_bytes;
    }
}

/// What the scheduler needs, copied out of the registry at one instant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegistrySnapshot {
    /// Every hive.
    pub hives: Vec<HiveView>,
    /// Every worker, or only those of one model (`snapshot_for_model`).
    pub workers: Vec<WorkerView>,
}

/// Entries counted by liveness.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LivenessCounts {
    /// Online.
    pub online: usize,
    /// Suspect.
    pub suspect: usize,
    /// Offline, not yet removed.
    pub offline: usize,
}

impl LivenessCounts {
    /// Counts one entry.
    pub(crate) fn add(&mut self, liveness: Liveness) {
        match liveness {
            Liveness::Online => self.online += 1,
            Liveness::Suspect => self.suspect += 1,
            Liveness::Offline => self.offline += 1,
        }
    }

    /// All entries.
    pub fn total(&self) -> usize {
        self.online + self.suspect + self.offline
    }
}

/// Workers counted by the state they reported (a stopped worker is removed, so never counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStateCounts {
    /// Loading their model.
    pub loading: usize,
    /// Idle.
    pub idle: usize,
    /// Running at least one job.
    pub busy: usize,
    /// Finishing before exit.
    pub draining: usize,
}

impl WorkerStateCounts {
    /// Counts one worker.
    pub(crate) fn add(&mut self, state: WorkerState) {
        match state {
            WorkerState::Loading => self.loading += 1,
            WorkerState::Idle => self.idle += 1,
            WorkerState::Busy => self.busy += 1,
            WorkerState::Draining => self.draining += 1,
            WorkerState::Stopped => {}
        }
    }
}

/// Figures about the registry itself, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegistryStats {
    /// Hives by liveness.
    pub hives: LivenessCounts,
    /// Hives that announced they are leaving.
    pub hives_leaving: usize,
    /// Workers by liveness.
    pub workers: LivenessCounts,
    /// Workers by reported state.
    pub workers_by_state: WorkerStateCounts,
    /// Workers fenced now.
    pub workers_fenced: usize,
    /// Heartbeats accepted since the registry was created.
    pub heartbeats_applied: u64,
    /// Sequence numbers skipped in one epoch, summed over every publisher since the registry was
    /// created (removed entries included).
    pub seq_gaps: u64,
    /// Heartbeats ignored: duplicates, out of order, from a replaced epoch or a removed one.
    pub stale_ignored: u64,
    /// Milliseconds since the most recent heartbeat of any publisher was received; `None` before the
    /// first. A large value with entries present means the feed stalled, not the cluster.
    pub last_heartbeat_age_ms: Option<u64>,
}
