//! Process plumbing the three rbee daemons (queen, hive, worker) share, in one place: the NATS flags
//! every daemon takes and the connect that exits 2 when it fails ([`nats`]), logging ([`logging`]),
//! the shutdown step (first signal cancels a token, tracked tasks then drain under a deadline, each
//! NATS step bounded: [`shutdown`], [`tasks`]), registration with the NATS service API
//! ([`service`]), the heartbeat loop and the `hello` listener ([`heartbeat`]), the leader fence orders are checked
//! against ([`fence`]), and the unix signal
//! helpers for child processes ([`signal`], the workspace's only `unsafe`). [`main`] is the whole
//! `main` of a daemon once its flags are parsed.

pub mod fence;
pub mod heartbeat;
pub mod logging;
pub mod nats;
pub mod service;
pub mod shutdown;
pub mod signal;
pub mod tasks;

use std::future::Future;
use std::process::ExitCode;

use rbee_bus::{Bus, NatsConfig};
use tokio_util::sync::CancellationToken;

pub use nats::NatsArgs;
pub use tasks::Tasks;

/// Connects to NATS (exit code 2 when it cannot), cancels a token on the first SIGINT or SIGTERM, and
/// runs the daemon with both: success, or exit code 1 with the error logged as `<what> failed`.
pub async fn main<F, Fut>(what: &str, nats: &NatsConfig, run: F) -> ExitCode
where
    F: FnOnce(Bus, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let Some(bus) = nats::connect_or_exit(nats).await else { return ExitCode::from(2) };
    let shutdown = shutdown::on_signals();
    match run(bus, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "{what} failed");
            ExitCode::FAILURE
        }
    }
}
