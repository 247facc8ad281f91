//! `rbee-rpc-server`: serves this host's memory and cores to a worker on another host over
//! llama.cpp's RPC protocol ([`rbee_worker::rpc::serve`]), for a model split across hosts. The
//! protocol has no authentication: bind it to an address only the cluster reaches (the default is
//! loopback).

use clap::Parser;

/// Serves this host's CPU memory to rbee workers elsewhere (llama.cpp RPC).
#[derive(Debug, Parser)]
#[command(name = "rbee-rpc-server", version)]
struct Args {
    /// Address to listen on (never 0.0.0.0 unless every host that can reach it is trusted).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 50052)]
    port: u16,
    /// Compute threads (default: physical cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> std::process::ExitCode {
    rbee_daemon::logging::init("rbee_worker=info");
    let args = Args::parse();
    let backend = match rbee_worker::engine::backend() {
        Ok(backend) => backend,
        Err(e) => {
            eprintln!("rbee-rpc-server: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let threads = args.threads.unwrap_or_else(rbee_worker::engine::default_threads);
    let endpoint = if args.host.contains(':') {
        format!("[{}]:{}", args.host, args.port)
    } else {
        format!("{}:{}", args.host, args.port)
    };
    match rbee_worker::rpc::serve(backend, &endpoint, threads) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rbee-rpc-server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
