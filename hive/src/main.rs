//! `rbee-hive`: parses flags, sets up logging and signals, and calls [`rbee_hive::run`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use rbee_bus::HiveId;
use rbee_daemon::NatsArgs;
use rbee_hive::catalog::CatalogPaths;
use rbee_hive::load_failures::LoadRetry;
use rbee_hive::supervisor::RestartPolicy;
use rbee_hive::{HiveConfig, ModelImport};

/// One rbee hive: this machine's inventory, catalogs and workers, over NATS.
#[derive(Debug, Parser)]
#[command(name = "rbee-hive", version)]
struct Args {
    /// This hive's id (default: the host name, made a valid subject token).
    #[arg(long, env = "RBEE_HIVE_ID")]
    hive_id: Option<String>,
    /// Root of the catalogs (default: the platform's cache directory, e.g. ~/.cache/rbee).
    #[arg(long, env = "RBEE_CATALOG_DIR")]
    catalog_dir: Option<PathBuf>,
    /// The rbee-worker binary to register (default: next to this executable).
    #[arg(long, env = "RBEE_WORKER_BIN")]
    worker_bin: Option<PathBuf>,
    /// Import a GGUF at start: PATH or PATH=MODEL_ID (repeatable).
    #[arg(long = "import-model")]
    import_model: Vec<ModelImport>,
    /// A directory `rbee models import` may read GGUF files from (repeatable; default: ~/models). The
    /// catalog directory is always allowed; --import-model files are not confined.
    #[arg(long = "import-dir")]
    import_dir: Vec<PathBuf>,
    /// Heartbeat interval in milliseconds (also given to workers).
    #[arg(long, default_value_t = rbee_bus::DEFAULT_HEARTBEAT_INTERVAL_MS)]
    heartbeat_ms: u64,
    /// Grace period for workers on shutdown, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    stop_deadline_ms: u64,
    /// Restart crashed workers up to this many times (with backoff); 0 disables.
    #[arg(long, default_value_t = 0)]
    max_restarts: u32,
    /// Refuse a model after this many of its workers in a row failed to load (the waits between
    /// tries start at 5 s and double up to 60 s); importing or pulling it again resets the count.
    #[arg(long, default_value_t = 5)]
    refuse_after_load_failures: u32,
    /// The largest model `rbee models pull` may download, in GiB (pulls over the free disk space of
    /// the catalog are refused too).
    #[arg(long, env = "RBEE_MAX_MODEL_GIB", default_value_t = 256)]
    max_model_gib: u64,
    /// Declare at most this many bytes of memory for the CPU device (its workers' estimates count
    /// against it).
    #[arg(long, env = "RBEE_MEMORY_LIMIT", value_name = "BYTES")]
    memory_limit: Option<u64>,
    /// Secure mode: JSON file of this hive's worker identities (written by `rbee secure init`).
    #[arg(long, env = "RBEE_WORKER_POOL")]
    worker_pool: Option<PathBuf>,
    #[command(flatten)]
    nats: NatsArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    rbee_daemon::logging::init("rbee_hive=info,rbee_bus=info");
    let args = Args::parse();
    let hive_id: HiveId = match args.hive_id.as_deref().map(str::parse).transpose() {
        Ok(id) => id.unwrap_or_else(rbee_hive::config::default_hive_id),
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let nats = args.nats.config(format!("rbee-hive {hive_id}"));
    let mut worker_nats_args = vec!["--nats-url".to_owned(), args.nats.nats_url.join(",")];
    if let Some(ca) = &args.nats.nats_ca {
        worker_nats_args.extend(["--nats-ca".to_owned(), ca.display().to_string()]);
    }
    let worker_pool = match &args.worker_pool {
        None => Vec::new(),
        Some(path) => match rbee_bus::security::read_pool(path) {
            Ok(pool) if !pool.is_empty() => pool,
            Ok(_) => {
                eprintln!("error: the worker pool {} lists no identity", path.display());
                return std::process::ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("error: {e}");
                return std::process::ExitCode::from(2);
            }
        },
    };
    let config = HiveConfig {
        hive_id,
        catalog_root: args.catalog_dir.unwrap_or_else(CatalogPaths::default_root),
        worker_binary: args.worker_bin.or_else(|| {
            let sibling = std::env::current_exe().ok()?.parent()?.join("rbee-worker");
            sibling.is_file().then_some(sibling)
        }),
        import_models: args.import_model,
        heartbeat_interval: Duration::from_millis(args.heartbeat_ms.max(50)),
        stop_deadline: Duration::from_millis(args.stop_deadline_ms),
        restart: RestartPolicy { max_restarts: args.max_restarts, ..RestartPolicy::default() },
        worker_nats_args,
        worker_pool,
        hf_endpoint: rbee_hive::catalog::hf::HfEndpoint::from_env(|name| std::env::var(name).ok()),
        max_model_bytes: args.max_model_gib.saturating_mul(1 << 30),
        import_dirs: if args.import_dir.is_empty() {
            rbee_hive::config::default_import_dirs()
        } else {
            args.import_dir
        },
        memory_limit: args.memory_limit,
        load_retry: LoadRetry {
            refuse_after: args.refuse_after_load_failures.max(1),
            ..LoadRetry::default()
        },
    };
    rbee_daemon::main("hive", &nats, |bus, shutdown| rbee_hive::run(config, bus, shutdown)).await
}
