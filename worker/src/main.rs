//! `rbee-worker`: parses flags, sets up logging and signals, and calls [`rbee_worker::run`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use rbee_bus::{HiveId, ModelId, WorkerId};
use rbee_daemon::NatsArgs;
use rbee_worker::WorkerConfig;

/// One rbee worker: serves one GGUF model over NATS.
#[derive(Debug, Parser)]
#[command(name = "rbee-worker", version)]
struct Args {
    /// This worker's id.
    #[arg(long, env = "RBEE_WORKER_ID")]
    worker_id: WorkerId,
    /// The hive that owns it.
    #[arg(long, env = "RBEE_HIVE_ID", default_value = "local")]
    hive_id: HiveId,
    /// The model id clients use.
    #[arg(long, env = "RBEE_MODEL_ID")]
    model_id: ModelId,
    /// The GGUF file.
    #[arg(long, env = "RBEE_MODEL_PATH")]
    model_path: PathBuf,
    /// Device id (`cpu`, `cuda:0`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Concurrent jobs.
    #[arg(long, default_value_t = rbee_bus::DEFAULT_SLOTS as usize)]
    slots: usize,
    /// Context tokens per slot.
    #[arg(long, default_value_t = rbee_bus::DEFAULT_CTX_PER_SLOT)]
    ctx_per_slot: u32,
    /// Inference threads (default: physical cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Layers to offload to the GPU (CUDA builds).
    #[arg(long, default_value_t = 999)]
    gpu_layers: u32,
    /// Clear each slot's KV cells after every job instead of keeping them for a later prompt with the
    /// same start (prefix reuse is on by default, as in llama-server).
    #[arg(long)]
    no_prefix_cache: bool,
    /// Host RAM, in MiB, for the saved states of prefixes whose slot a later job took (a conversation
    /// that comes back is restored from it instead of read again); 0 keeps none.
    #[arg(long, default_value_t = rbee_worker::engine::DEFAULT_PREFIX_CACHE_MIB)]
    prefix_cache_mib: usize,
    /// RPC servers (`rbee-rpc-server`, `HOST:PORT,...`) whose devices hold the model's layers: one
    /// model split across hosts.
    #[arg(long, value_delimiter = ',')]
    rpc: Vec<String>,
    /// Heartbeat interval in milliseconds.
    #[arg(long, default_value_t = rbee_bus::DEFAULT_HEARTBEAT_INTERVAL_MS)]
    heartbeat_ms: u64,
    /// Drain deadline on SIGTERM, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    drain_ms: u64,
    #[command(flatten)]
    nats: NatsArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    rbee_daemon::logging::init("rbee_worker=info,rbee_bus=info");
    let args = Args::parse();
    let nats = args.nats.config(format!("rbee-worker {}", args.worker_id));
    let config = WorkerConfig {
        worker_id: args.worker_id,
        hive_id: args.hive_id,
        model_id: args.model_id,
        model_path: args.model_path,
        device: args.device,
        slots: args.slots,
        ctx_per_slot: args.ctx_per_slot,
        threads: args.threads,
        gpu_layers: args.gpu_layers,
        prefix_reuse: !args.no_prefix_cache,
        prefix_cache_bytes: args.prefix_cache_mib.saturating_mul(1 << 20),
        rpc_servers: args.rpc,
        heartbeat_interval: Duration::from_millis(args.heartbeat_ms.max(50)),
        drain_deadline: Duration::from_millis(args.drain_ms),
        ..WorkerConfig::default()
    };
    rbee_daemon::main("worker", &nats, |bus, shutdown| rbee_worker::run(config, bus, shutdown)).await
}
