//! `rbee-queen`: parses flags, sets up logging and signals, and calls [`rbee_queen::run`].

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use rbee_daemon::NatsArgs;
use rbee_queen::QueenConfig;

/// The rbee queen: scheduler, job tracking and the HTTP API.
#[derive(Debug, Parser)]
#[command(name = "rbee-queen", version)]
struct Args {
    /// HTTP listen address.
    #[arg(long, env = "RBEE_HTTP_ADDR", default_value = "127.0.0.1:7833")]
    http_addr: SocketAddr,
    /// Another address the HTTP API listens on as well (repeatable), e.g. the machine's cluster
    /// address next to 127.0.0.1.
    #[arg(long = "also-http-addr", value_name = "ADDR")]
    also_http_addrs: Vec<SocketAddr>,
    /// Serve the API on Ollama's address as well (`127.0.0.1:11434`), so Ollama apps find rbee there
    /// unchanged; its `/api/` routes are the Ollama-compatible ones.
    #[arg(long, env = "RBEE_OLLAMA_ADDR", value_name = "ADDR")]
    ollama_addr: Option<SocketAddr>,
    /// Require this bearer key on the HTTP API (never logged).
    #[arg(long, env = "RBEE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Require this bearer key, and no other, on administrative routes (spawn, stop, model import,
    /// pull and remove); it is accepted everywhere else too (never logged).
    #[arg(long, env = "RBEE_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// Jobs that may wait at once; more get 429.
    #[arg(long, default_value_t = 256)]
    queue_capacity: usize,
    /// Seconds a job may wait in the queue.
    #[arg(long, default_value_t = 120)]
    queue_timeout_s: u64,
    /// Do not keep job history in JetStream.
    #[arg(long)]
    no_durable_jobs: bool,
    /// MiB the JetStream job history may hold (the oldest status events go first).
    #[arg(long, default_value_t = 256)]
    job_history_max_mib: u64,
    /// How long a worker stays loaded after its last job unless a request or an explicit spawn says
    /// otherwise: `5m`, `30s`, `1h30m`, `0` (unload when idle), `-1` (keep loaded).
    #[arg(long, env = "RBEE_KEEP_ALIVE", default_value = "5m", value_parser = keep_alive, allow_hyphen_values = true)]
    keep_alive: rbee_queen::keep_alive::KeepAlive,
    /// This queen's name in the leader lease: several queens (one leads, the others stand by) need
    /// distinct ones.
    #[arg(long, env = "RBEE_QUEEN_ID", default_value = "queen")]
    queen_id: String,
    /// Milliseconds the leader lease lasts without a renewal: a standby takes over after about this
    /// long once the leader is gone.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(400..=600_000))]
    lease_ms: u64,
    /// Replicas of the lease and job-request buckets in JetStream (at most the cluster's JetStream
    /// nodes; 3 survives the loss of one).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=5))]
    lease_replicas: u64,
    /// Start as a standby: never lead without holding the lease, even while JetStream is not ready
    /// (without it a queen that cannot open the lease bucket leads alone).
    #[arg(long)]
    standby: bool,
    /// Place jobs by load only, not on the worker holding the longest prefix of the prompt (for
    /// comparison: `make bench` measures prefix routing against this).
    #[arg(long)]
    no_prefix_routing: bool,
    #[command(flatten)]
    nats: NatsArgs,
}

fn keep_alive(s: &str) -> Result<rbee_queen::keep_alive::KeepAlive, String> {
    s.parse()
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    rbee_daemon::logging::init("rbee_queen=info,rbee_bus=info");
    let args = Args::parse();
    let nats = args.nats.config("rbee-queen");
    let config = QueenConfig {
        http_addr: args.http_addr,
        also_http_addrs: args.also_http_addrs.into_iter().chain(args.ollama_addr).collect(),
        api_key: args.api_key.filter(|k| !k.is_empty()),
        admin_key: args.admin_key.filter(|k| !k.is_empty()),
        queue_capacity: args.queue_capacity,
        queue_timeout: Duration::from_secs(args.queue_timeout_s),
        durable_jobs: !args.no_durable_jobs,
        job_history_max_bytes: args.job_history_max_mib.saturating_mul(1024 * 1024),
        keep_alive: args.keep_alive,
        queen_id: args.queen_id,
        lease: Duration::from_millis(args.lease_ms),
        lease_replicas: args.lease_replicas as usize,
        standby: args.standby,
        prefix_routing: !args.no_prefix_routing,
        ..QueenConfig::default()
    };
    rbee_daemon::main("queen", &nats, |bus, shutdown| rbee_queen::run(config, bus, shutdown)).await
}
