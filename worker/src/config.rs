//! What a worker is told at start.

use std::path::PathBuf;
use std::time::Duration;

use rbee_bus::{HiveId, ModelId, WorkerId};

/// Everything a worker needs to run; the hive fills it from a spawn request.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This worker's id: its subjects are `rbee.worker.<id>.*`.
    pub worker_id: WorkerId,
    /// The hive that spawned it (reported in heartbeats).
    pub hive_id: HiveId,
    /// The model id clients use.
    pub model_id: ModelId,
    /// The GGUF file.
    pub model_path: PathBuf,
    /// Device id on the hive (`cpu`, `cuda:0`).
    pub device: String,
    /// Concurrent jobs decoded together.
    pub slots: usize,
    /// Context tokens per slot.
    pub ctx_per_slot: u32,
    /// Inference threads; `None` means physical cores.
    pub threads: Option<usize>,
    /// Layers offloaded to the GPU (CUDA builds only).
    pub gpu_layers: u32,
    /// Keep slots' KV cells between jobs and skip a prompt's cached prefix.
    pub prefix_reuse: bool,
    /// Host RAM for states of evicted prefixes, bytes.
    pub prefix_cache_bytes: usize,
    /// RPC servers whose devices hold the model's layers (a split across hosts); empty: none.
    pub rpc_servers: Vec<String>,
    /// How often to heartbeat.
    pub heartbeat_interval: Duration,
    /// On shutdown, how long in-flight jobs may run before they are cancelled.
    pub drain_deadline: Duration,
    /// Longest a token waits to be coalesced with the next ones before it is published.
    pub coalesce_window: Duration,
}

impl Default for WorkerConfig {
    /// The defaults of `rbee-worker`'s flags. Callers set the identity and the model: by default the id
    /// is a fresh random one, the hive `local`, and the model path empty (a load fails).
    fn default() -> Self {
        Self {
            worker_id: WorkerId::generate(),
            hive_id: HiveId::new("local").unwrap_or_else(|_| HiveId::generate()),
            model_id: ModelId::generate(),
            model_path: PathBuf::new(),
            device: "cpu".to_owned(),
            slots: rbee_bus::DEFAULT_SLOTS as usize,
            ctx_per_slot: rbee_bus::DEFAULT_CTX_PER_SLOT,
            threads: None,
            gpu_layers: 999,
            prefix_reuse: true,
            prefix_cache_bytes: crate::engine::DEFAULT_PREFIX_CACHE_MIB << 20,
            rpc_servers: Vec::new(),
            heartbeat_interval: Duration::from_millis(rbee_bus::DEFAULT_HEARTBEAT_INTERVAL_MS),
            drain_deadline: Duration::from_secs(10),
            coalesce_window: Duration::from_millis(4),
        }
    }
}
