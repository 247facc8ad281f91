//! Hive control: spawn and stop (request/reply), listings, and the inventory types they share.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{ModelId, WorkerId};

/// The CPU of a machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CpuInfo {
    /// Model name, as the OS reports it.
    pub model: String,
    /// Physical cores.
    pub physical_cores: u32,
    /// Logical cores (hardware threads).
    pub logical_cores: u32,
}

/// Memory totals, in bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MemoryInfo {
    /// Installed.
    pub total_bytes: u64,
    /// Available now.
    pub available_bytes: u64,
}

/// Kind of compute device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// The CPU and system RAM.
    Cpu,
    /// An NVIDIA GPU.
    Cuda,
    /// An Apple GPU.
    Metal,
}

/// A device a worker can run on, with real figures read on the hive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeviceInfo {
    /// `cpu` or `cuda:<index>`.
    pub id: String,
    /// Kind of device.
    pub kind: DeviceKind,
    /// Index among devices of its kind.
    pub index: u32,
    /// Product name.
    pub name: String,
    /// GPU uuid, when known.
    pub uuid: Option<String>,
    /// Total memory, in bytes.
    pub total_bytes: u64,
    /// Free memory now, in bytes.
    pub free_bytes: u64,
    /// Utilization in percent, when known.
    pub utilization_percent: Option<u32>,
    /// CUDA compute capability such as `8.9`, when known.
    pub compute_capability: Option<String>,
}

/// Status of a worker process as its hive sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum HiveWorkerStatus {
    /// Process started, model not yet ready.
    Starting,
    /// Ready for jobs.
    Ready,
    /// Running jobs.
    Busy,
    /// Stopped on request.
    Stopped,
    /// Exited on its own or crashed.
    Failed {
        /// Exit status and the last lines of stderr.
        error: String,
    },
}

/// A worker as listed by its hive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HiveWorkerSummary {
    /// The worker.
    pub worker_id: WorkerId,
    /// Its model.
    pub model_id: ModelId,
    /// Its device.
    pub device: String,
    /// Its process id.
    pub pid: u32,
    /// Its status.
    #[serde(flatten)]
    pub status: HiveWorkerStatus,
    /// When it was started, ms since the Unix epoch.
    pub started_at_ms: u64,
}

/// A model in a hive's catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelSummary {
    /// Its id.
    pub model_id: ModelId,
    /// Bytes on disk.
    pub size_bytes: u64,
    /// Architecture from the GGUF header (`llama`).
    pub architecture: String,
    /// Parameters, counted from the tensors.
    pub parameter_count: u64,
    /// Quantization (`Q4_1`).
    pub quantization: String,
    /// Trained context length.
    pub context_length: Option<u64>,
    /// Present while the hive holds off spawning the model because its workers failed to load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_failures: Option<LoadFailures>,
}

/// Workers of a model that exited before they were ready, one after another, on one hive: the hive
/// waits before it spawns the model again (the wait doubles each time) and, after a bound, refuses it
/// until the model is imported or pulled again (or the hive restarts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LoadFailures {
    /// Failures in a row (a worker that becomes ready resets them).
    pub failures: u32,
    /// The last one's exit status and stderr.
    pub last_error: String,
    /// While waiting: when the hive spawns the model again, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at_ms: Option<u64>,
    /// True once the hive refuses the model.
    pub refused: bool,
}

/// Which kind of worker binary to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum WorkerKind {
    /// CPU llama.cpp worker.
    CpuLlm,
    /// CUDA llama.cpp worker.
    CudaLlm,
    /// Metal llama.cpp worker.
    MetalLlm,
}

/// Asks a hive on `rbee.hive.<hive_id>.spawn` to start a worker; answered with [`SpawnReply`] once the
/// process has started, or a wire error (`unknown_model`, `missing_worker_binary`, `model_does_not_fit`,
/// `unknown_device`, `invalid_params`, `shutting_down`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SpawnRequest {
    /// Schema version.
    pub v: u32,
    /// The model to load.
    pub model_id: ModelId,
    /// Device id (`cpu`, `cuda:0`); the hive picks when absent.
    pub device: Option<String>,
    /// Concurrent jobs; default 4.
    pub slots: Option<u32>,
    /// Context tokens per slot; default 2048.
    pub ctx_per_slot: Option<u32>,
    /// Binary to use; chosen from the device when absent.
    pub worker_type: Option<WorkerKind>,
    /// Id for the new worker; generated when absent.
    pub worker_id: Option<WorkerId>,
    /// Inference threads; default physical cores.
    pub threads: Option<u32>,
    /// The leading queen's fencing epoch: a hive refuses a spawn below the highest it has seen
    /// (`fenced`). Absent from a queen without a lease, and from other callers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
}

/// The hive's answer to a spawn: the process is running; readiness shows in its heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SpawnReply {
    /// Schema version.
    pub v: u32,
    /// The new worker.
    pub worker_id: WorkerId,
    /// Its process id.
    pub pid: u32,
    /// The device it runs on.
    pub device: String,
}

/// Asks a hive on `rbee.hive.<hive_id>.stop` to stop a worker: SIGTERM, then SIGKILL after the deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StopRequest {
    /// Schema version.
    pub v: u32,
    /// The worker.
    pub worker_id: WorkerId,
    /// Grace period before SIGKILL, in milliseconds; default 10000.
    pub deadline_ms: Option<u64>,
    /// The leading queen's fencing epoch: a hive refuses a stop below the highest it has seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
}

/// The hive's answer to a stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StopReply {
    /// Schema version.
    pub v: u32,
    /// The worker.
    pub worker_id: WorkerId,
    /// True when it exited in the grace period, false when it had to be killed.
    pub graceful: bool,
    /// Exit status as text (`exit status: 0`, `signal: 9`).
    pub exit: String,
}

/// A listing request on `rbee.hive.<hive_id>.workers`, `.models` or `.devices` (empty apart from `v`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ListRequest {
    /// Schema version.
    #[serde(default = "crate::messages::hive::schema_version")]
    pub v: u32,
}

/// Used as a serde default.
pub fn schema_version() -> u32 {
    crate::messages::SCHEMA_VERSION
}

/// Reply to `rbee.hive.<hive_id>.workers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerList {
    /// Schema version.
    pub v: u32,
    /// Every worker the hive knows of, running or not.
    pub workers: Vec<HiveWorkerSummary>,
}

/// Reply to `rbee.hive.<hive_id>.models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelList {
    /// Schema version.
    pub v: u32,
    /// The catalog.
    pub models: Vec<ModelSummary>,
}

/// Reply to `rbee.hive.<hive_id>.devices`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeviceList {
    /// Schema version.
    pub v: u32,
    /// The CPU.
    pub cpu: CpuInfo,
    /// System memory.
    pub ram: MemoryInfo,
    /// Devices.
    pub devices: Vec<DeviceInfo>,
}
