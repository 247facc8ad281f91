//! `rbee-hive`: parses flags, sets up logging and signals, and calls [`rbee_hive::run`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use rbee_bus::{HiveId, NatsConfig};
use rbee_hive::catalog::CatalogPaths;
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
    /// Heartbeat interval in milliseconds (also given to workers).
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// Grace period for workers on shutdown, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    stop_deadline_ms: u64,
    /// Restart crashed workers up to this many times (with backoff); 0 disables.
    #[arg(long, default_value_t = 0)]
    max_restarts: u32,
    /// NATS server URL(s), comma separated.
    #[arg(long, env = "RBEE_NATS_URL", default_value = "nats://127.0.0.1:4222", value_delimiter = ',')]
    nats_url: Vec<String>,
    /// NATS credentials file for the hive.
    #[arg(long, env = "RBEE_NATS_CREDS")]
    nats_creds: Option<PathBuf>,
    /// NATS user for the hive (password from RBEE_NATS_PASSWORD).
    #[arg(long, env = "RBEE_NATS_USER")]
    nats_user: Option<String>,
    /// CA certificate for TLS to NATS.
    #[arg(long, env = "RBEE_NATS_CA")]
    nats_ca: Option<PathBuf>,
    /// Secure mode: JSON file of this hive's worker identities (written by `rbee secure init`).
    #[arg(long, env = "RBEE_WORKER_POOL")]
    worker_pool: Option<PathBuf>,
    /// Prefix of this process's NATS reply inboxes (secure mode: `_INBOX_<user>`).
    #[arg(long, env = "RBEE_NATS_INBOX_PREFIX")]
    nats_inbox_prefix: Option<String>,
}

fn default_hive_id() -> String {
    let host = sysinfo::System::host_name().unwrap_or_else(|| "hive".to_owned());
    let id: String = host
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .collect();
    if id.is_empty() {
        "hive".to_owned()
    } else {
        id
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    rbee_bus::runtime::init("rbee_hive=info,rbee_bus=info");
    let args = Args::parse();
    let hive_id: HiveId = match args.hive_id.clone().unwrap_or_else(default_hive_id).parse() {
        Ok(id) => id,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let nats = NatsConfig {
        urls: args.nats_url.clone(),
        user: args.nats_user.clone(),
        password: std::env::var("RBEE_NATS_PASSWORD").ok(),
        creds_file: args.nats_creds.clone(),
        tls_ca: args.nats_ca.clone(),
        inbox_prefix: args.nats_inbox_prefix.clone(),
        name: Some(format!("rbee-hive {hive_id}")),
        ..NatsConfig::default()
    };
    let mut config = HiveConfig::new(hive_id, args.catalog_dir.unwrap_or_else(CatalogPaths::default_root));
    config.worker_binary = args.worker_bin.or_else(|| {
        let sibling = std::env::current_exe().ok()?.parent()?.join("rbee-worker");
        sibling.is_file().then_some(sibling)
    });
    config.import_models = args.import_model;
    config.heartbeat_interval = Duration::from_millis(args.heartbeat_ms.max(50));
    config.stop_deadline = Duration::from_millis(args.stop_deadline_ms);
    config.restart = RestartPolicy { max_restarts: args.max_restarts, ..RestartPolicy::default() };
    config.worker_nats_args = vec!["--nats-url".to_owned(), args.nats_url.join(",")];
    config.hf_endpoint = rbee_hive::catalog::hf::HfEndpoint::from_env(|name| std::env::var(name).ok());
    if let Some(ca) = &args.nats_ca {
        config.worker_nats_args.extend(["--nats-ca".to_owned(), ca.display().to_string()]);
    }
    if let Some(path) = &args.worker_pool {
        match rbee_bus::security::read_pool(path) {
            Ok(pool) if !pool.is_empty() => config.worker_pool = pool,
            Ok(_) => {
                eprintln!("error: the worker pool {} lists no identity", path.display());
                return std::process::ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("error: {e}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let bus = match rbee_bus::connect(&nats).await {
        Ok(bus) => bus,
        Err(e) => {
            tracing::error!(error = %e, "cannot connect to nats");
            return std::process::ExitCode::from(2);
        }
    };
    let shutdown = rbee_bus::runtime::shutdown_on_signals();
    match rbee_hive::run(config, bus, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "hive failed");
            std::process::ExitCode::FAILURE
        }
    }
}
