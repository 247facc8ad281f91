//! Structured logging for every rbee process: `tracing` to stderr, plain or JSON. A panic is logged
//! the same way (`panic`, with its message and location), so it shows in the process's log even where
//! a guard turns it into an error reply and the process goes on.

/// Sets up `tracing` to stderr. `RUST_LOG` overrides `default_filter`, to which this crate's own
/// `info` is always added (its lines are the daemon's start, stop and the error it exits with: a worker
/// whose model fails to load says why there); `RBEE_LOG_FORMAT=json` gives one JSON object per line.
pub fn init(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default_filter},{}=info", env!("CARGO_CRATE_NAME"))));
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
    std::panic::set_hook(Box::new(|info| {
        let message = rbee_bus::rpc::panic_text(info.payload());
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        tracing::error!(reason = %message, location = %location, "panic");
    }));
}
