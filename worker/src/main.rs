//! `rbee-worker`: parses flags, sets up logging and signals, and calls [`rbee_worker::run`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use rbee_bus::{HiveId, ModelId, NatsConfig, WorkerId};
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
    #[arg(long, default_value_t = 4)]
    slots: usize,
    /// Context tokens per slot.
    #[arg(long, default_value_t = 2048)]
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
    /// Heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// Drain deadline on SIGTERM, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    drain_ms: u64,
    /// NATS server URL(s), comma separated.
    #[arg(long, env = "RBEE_NATS_URL", default_value = "nats://127.0.0.1:4222", value_delimiter = ',')]
    nats_url: Vec<String>,
    /// NATS credentials file.
    #[arg(long, env = "RBEE_NATS_CREDS")]
    nats_creds: Option<PathBuf>,
    /// NATS user (password from RBEE_NATS_PASSWORD).
    #[arg(long, env = "RBEE_NATS_USER")]
    nats_user: Option<String>,
    /// CA certificate for TLS to NATS.
    #[arg(long, env = "RBEE_NATS_CA")]
    nats_ca: Option<PathBuf>,
    /// Prefix of this process's NATS reply inboxes (secure mode: `_INBOX_<user>`).
    #[arg(long, env = "RBEE_NATS_INBOX_PREFIX")]
    nats_inbox_prefix: Option<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    rbee_bus::runtime::init("rbee_worker=info,rbee_bus=info");
    let args = Args::parse();
    let nats = NatsConfig {
        urls: args.nats_url.clone(),
        user: args.nats_user.clone(),
        password: std::env::var("RBEE_NATS_PASSWORD").ok(),
        creds_file: args.nats_creds.clone(),
        tls_ca: args.nats_ca.clone(),
        inbox_prefix: args.nats_inbox_prefix.clone(),
        name: Some(format!("rbee-worker {}", args.worker_id)),
        ..NatsConfig::default()
    };
    let mut config = WorkerConfig::new(args.worker_id, args.hive_id, args.model_id, args.model_path);
    config.device = args.device;
    config.slots = args.slots;
    config.ctx_per_slot = args.ctx_per_slot;
    config.threads = args.threads;
    config.gpu_layers = args.gpu_layers;
    config.prefix_reuse = !args.no_prefix_cache;
    config.prefix_cache_bytes = args.prefix_cache_mib.saturating_mul(1 << 20);
    config.heartbeat_interval = Duration::from_millis(args.heartbeat_ms.max(50));
    config.drain_deadline = Duration::from_millis(args.drain_ms);
    let bus = match rbee_bus::connect(&nats).await {
        Ok(bus) => bus,
        Err(e) => {
            tracing::error!(error = %e, "cannot connect to nats");
            return std::process::ExitCode::from(2);
        }
    };
    let shutdown = rbee_bus::runtime::shutdown_on_signals();
    match rbee_worker::run(config, bus, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "worker failed");
            std::process::ExitCode::FAILURE
        }
    }
}
