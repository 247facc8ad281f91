//! Process plumbing every rbee daemon shares: structured logging and the shutdown signal.

use tokio_util::sync::CancellationToken;

/// Sets up `tracing` to stderr. `RUST_LOG` overrides `default_filter`; `RBEE_LOG_FORMAT=json` gives one
/// JSON object per line.
pub fn init(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // A write error (stderr a pipe to a hive that died) is dropped: with the default, tracing reports
    // it with `eprintln!`, which panics on the same broken pipe and takes down the task that logged
    // (a worker then never handled its SIGTERM).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colors only on a terminal: log files (`rbee up` writes one per process) stay plain text.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none(),
        )
        .log_internal_errors(false);
    let result = if std::env::var("RBEE_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    let _ = result;
}

/// A token cancelled on the first SIGINT or SIGTERM; a second signal exits the process at once (130).
pub fn shutdown_on_signals() -> CancellationToken {
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
