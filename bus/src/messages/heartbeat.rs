//! Heartbeats: the events the queen's registries are folded from.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{HiveId, ModelId, WorkerId};
use crate::messages::hive::{CpuInfo, DeviceInfo, HiveWorkerSummary, MemoryInfo, ModelSummary};
use crate::messages::EventMeta;

/// How often hives and workers heartbeat unless told otherwise (`--heartbeat-ms`), in milliseconds.
/// The queen takes a publisher for offline after 3 intervals without a sign of life and confirms it
/// within one more, so a machine that vanishes is out of the view, and its jobs migrating, about 4
/// intervals later: 2 s at this default. Each interval halved doubles the heartbeats the queen folds.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 500;

/// What a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Loading the model; not yet taking jobs.
    Loading,
    /// Ready, no job running.
    Idle,
    /// Running at least one job (it may still have free slots).
    Busy,
    /// Finishing its jobs before exit; takes no new ones.
    Draining,
    /// Last heartbeat before exit.
    Stopped,
}

/// The compute backend a worker runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// CPU only.
    Cpu,
    /// NVIDIA CUDA.
    Cuda,
    /// Apple Metal.
    Metal,
}

/// Published by a worker on `rbee.worker.<worker_id>.heartbeat` every interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerHeartbeat {
    /// Schema version.
    pub v: u32,
    /// Publisher, epoch, sequence and send time.
    pub meta: EventMeta,
    /// The worker.
    pub worker_id: WorkerId,
    /// The hive that spawned it.
    pub hive_id: HiveId,
    /// The model it serves.
    pub model_id: ModelId,
    /// What it is doing.
    pub state: WorkerState,
    /// cpu, cuda or metal.
    pub backend: Backend,
    /// Device id on its hive (`cpu`, `cuda:0`).
    pub device: String,
    /// Slots (concurrent jobs) in all.
    pub slots_total: u32,
    /// Slots running a job.
    pub slots_busy: u32,
    /// Context tokens per slot (prompt plus generation).
    pub ctx_per_slot: u32,
    /// Decode tokens per second over the last few seconds, all slots together.
    pub tokens_per_second: f64,
    /// Resident memory of the worker process, in bytes.
    pub memory_bytes: u64,
    /// Process id on its hive's machine.
    pub pid: u32,
    /// The interval the worker heartbeats at, in milliseconds (the receiver's liveness clock uses it).
    pub interval_ms: u64,
    /// Fingerprints of the prompt prefixes its slots and its RAM cache hold ([`crate::prefix`]): the
    /// queen prefers the worker holding the longest prefix of a new prompt. At most
    /// [`crate::prefix::MAX_ADVERTISED`]; absent from workers without prefix reuse.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefix_fingerprints: Vec<u64>,
    /// Assignments this process has accepted so far, read before `slots_busy`: every job whose
    /// [`JobAccepted::accepted_seq`](crate::JobAccepted::accepted_seq) is at most this is counted in
    /// `slots_busy` (or has ended), so the queen drops its own count of those placements at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs_accepted: Option<u64>,
}

/// Whether a hive is up or leaving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HiveState {
    /// Serving.
    Online,
    /// Shutting down: take no spawns there. Its last heartbeat says so.
    Leaving,
}

/// Published by a hive on `rbee.hive.<hive_id>.heartbeat` every interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HiveHeartbeat {
    /// Schema version.
    pub v: u32,
    /// Publisher, epoch, sequence and send time.
    pub meta: EventMeta,
    /// The hive.
    pub hive_id: HiveId,
    /// Its machine's host name.
    pub hostname: String,
    /// The rbee version it runs.
    pub version: String,
    /// Online or leaving.
    pub state: HiveState,
    /// The interval it heartbeats at, in milliseconds.
    pub interval_ms: u64,
    /// The CPU.
    pub cpu: CpuInfo,
    /// System memory.
    pub ram: MemoryInfo,
    /// Devices workers can run on, with free memory now (the CPU is device `cpu`).
    pub devices: Vec<DeviceInfo>,
    /// Workers it spawned and their status.
    pub workers: Vec<HiveWorkerSummary>,
    /// Models in its catalog.
    pub models: Vec<ModelSummary>,
}

/// Published by the queen on `rbee.queen.hello` when it starts: every hive and worker answers by
/// heartbeating at once, so a restarted queen has the whole view without waiting an interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QueenHello {
    /// Schema version.
    pub v: u32,
    /// Publisher, epoch, sequence and send time.
    pub meta: EventMeta,
    /// The fencing epoch of a queen that took the leader lease: hives and workers refuse orders
    /// with a lower fence from then on. Absent from a queen without a lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
}
