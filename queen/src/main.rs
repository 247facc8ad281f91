//! `rbee-queen`: parses flags, sets up logging and signals, and calls [`rbee_queen::run`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use rbee_bus::NatsConfig;
use rbee_queen::QueenConfig;

/// The rbee queen: scheduler, job tracking and the HTTP API.
#[derive(Debug, Parser)]
#[command(name = "rbee-queen", version)]
struct Args {
    /// HTTP listen address.
    #[arg(long, env = "RBEE_HTTP_ADDR", default_value = "127.0.0.1:7833")]
    http_addr: SocketAddr,
    /// Require this bearer key on the HTTP API (never logged).
    #[arg(long, env = "RBEE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Jobs that may wait at once; more get 429.
    #[arg(long, default_value_t = 256)]
    queue_capacity: usize,
    /// Seconds a job may wait in the queue.
    #[arg(long, default_value_t = 120)]
    queue_timeout_s: u64,
    /// Do not keep job history in JetStream.
    #[arg(long)]
    no_durable_jobs: bool,
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
    rbee_bus::runtime::init("rbee_queen=info,rbee_bus=info");
    let args = Args::parse();
    let nats = NatsConfig {
        urls: args.nats_url.clone(),
        user: args.nats_user.clone(),
        password: std::env::var("RBEE_NATS_PASSWORD").ok(),
        creds_file: args.nats_creds.clone(),
        tls_ca: args.nats_ca.clone(),
        inbox_prefix: args.nats_inbox_prefix.clone(),
        name: Some("rbee-queen".to_owned()),
        ..NatsConfig::default()
    };
    let config = QueenConfig {
        http_addr: args.http_addr,
        api_key: args.api_key.filter(|k| !k.is_empty()),
        queue_capacity: args.queue_capacity,
        queue_timeout: Duration::from_secs(args.queue_timeout_s),
        durable_jobs: !args.no_durable_jobs,
        ..QueenConfig::default()
    };
    let bus = match rbee_bus::connect(&nats).await {
        Ok(bus) => bus,
        Err(e) => {
            tracing::error!(error = %e, "cannot connect to nats");
            return std::process::ExitCode::from(2);
        }
    };
    let shutdown = rbee_bus::runtime::shutdown_on_signals();
    match rbee_queen::run(config, bus, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "queen failed");
            std::process::ExitCode::FAILURE
        }
    }
}
