//! The `rbee` command-line tool: start a local cluster (`rbee up`), run prompts (`rbee infer`), look at
//! the cluster (`rbee status`, `rbee workers`, `rbee models`, `rbee jobs`), watch the bus (`rbee watch`)
//! show the effective configuration (`rbee config show`) and write the files of a secure cluster
//! (`rbee secure init`).
//!
//! Talks HTTP to the queen ([`client`]) and NATS to hives and observers ([`watch`], [`models`]). One
//! module per command; [`args`] holds the flags, [`config`] the layered configuration, [`render`] the
//! terminal output helpers, [`secure`] the files of secure mode (with the nats-server configuration,
//! [`secure::server_config`]). Process signals for `rbee up`'s children are `rbee_daemon::signal`'s.

#[macro_use]
pub mod render;
pub mod args;
pub mod client;
pub mod config;
pub mod hives;
pub mod infer;
pub mod jobs;
pub mod models;
pub mod nats;
pub mod secure;
pub mod sse;
pub mod status;
pub mod up;
pub mod watch;
pub mod workers;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command, ConfigCommand};
use crate::config::Config;

/// Parses the command line, runs the command on a single-threaded runtime and turns errors into a
/// one-line message on stderr and a non-zero exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    rbee_daemon::logging::init("warn");
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            errln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let style = render::Style::stderr();
            errln!("{} {e:#}", style.red("error:"));
            ExitCode::FAILURE
        }
    }
}

/// Runs one parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(&cli.flags(), &config::process_env)?;
    if !matches!(cli.command, Command::Up(_) | Command::Join(_) | Command::Secure { .. }) {
        secure::apply_local(&mut config);
    }
    match cli.command {
        Command::Secure { command } => secure::run(command)?,
        Command::Up(args) => up::run(&config, args).await?,
        Command::Join(args) => up::join::run(&config, args).await?,
        Command::Infer(args) => infer::run(&config, args).await?,
        Command::Status(args) => status::run(&config, args).await?,
        Command::Hives { command } => hives::run(&config, command).await?,
        Command::Workers { command } => workers::run(&config, command).await?,
        Command::Models { command } => models::run(&config, command).await?,
        Command::Jobs { command } => jobs::run(&config, command).await?,
        Command::Watch(args) => watch::run(&config, args).await?,
        Command::Config { command: ConfigCommand::Show } => config::show(&config)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// True when the error is a write to a closed pipe (`rbee jobs ls | head`): not worth a message.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
