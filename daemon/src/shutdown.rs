//! The shutdown step, the same in every daemon: the first SIGINT or SIGTERM cancels a token (a second
//! one exits at once with 130), the daemon stops taking work, drains its tracked tasks under a deadline
//! ([`crate::Tasks::drain`]), and every step that talks to NATS is [`bounded`]: with the server gone,
//! a daemon still exits on the one SIGTERM it gets.

use std::future::Future;
use std::time::Duration;

use rbee_bus::Bus;
use tokio_util::sync::CancellationToken;

/// How long one NATS step of a shutdown may take (a publish waits for the reconnect once the client's
/// buffer is full, a flush until the server is back).
pub const STEP: Duration = Duration::from_secs(2);

/// A token cancelled on the first SIGINT or SIGTERM; a second signal exits the process at once (130).
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested, press ctrl-c again to force");
        cancel.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal, exiting now");
        std::process::exit(130);
    });
    token
}

/// Runs one shutdown step for at most [`STEP`]; returns whether it finished (a warning names it when
/// it did not).
pub async fn bounded<F: Future>(step: &str, future: F) -> bool {
    let finished = tokio::time::timeout(STEP, future).await.is_ok();
    if !finished {
        tracing::warn!(step, "nats unreachable during shutdown, not waiting for it");
    }
    finished
}

/// The last step: flushes what is still buffered for NATS, [`bounded`].
pub async fn flush(bus: &Bus) -> bool {
    bounded("flush", bus.client().flush()).await
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
