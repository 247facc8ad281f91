//! `rbee-bench`: what `make bench` runs. Starts its own nats-server, the release `rbee-queen` and
//! `rbee-hive`, spawns a worker of the default model through the queen, and measures every hop against
//! its floor in the same run: the token path, end to end inference, the registry under 11,000
//! heartbeats a second, the scheduler, and the control path. Prints each figure with its baseline and
//! ratio as it goes, then writes `BENCHMARKS.md` and `BENCHMARKS.json`.
//!
//! Each section is a module that measures and records its own figures: [`token_path`] (with its
//! [`echo`] worker), [`e2e`] (on [`chat`] runs), [`multi_turn`], [`routing`], [`llama_server`], [`control`],
//! [`takeover`], [`sched`] and [`registry_load`]; [`cluster`] starts what they measure, [`report`] holds the figures
//! and [`notes`] the prose written from them. This file parses the flags and runs the sections in
//! order.
//!
//! `rbee-bench relay` is the minimal relay process the token path's two-hop floor goes through.

mod api;
mod chat;
mod cluster;
mod control;
mod e2e;
mod echo;
mod engine_only;
mod grammar;
mod hosts;
mod llama_server;
mod multi_turn;
mod notes;
mod registry_load;
mod report;
mod routing;
mod sched;
mod sse;
mod stats;
mod takeover;
mod token_path;
mod watcher;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};

use cluster::{Cluster, Env};
use control::Control;
use report::Report;

/// Measures every rbee hop against its floor; writes BENCHMARKS.md and BENCHMARKS.json.
#[derive(Debug, Parser)]
#[command(name = "rbee-bench", version)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Repository root (the model in `.rbee/models`, outputs written here).
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Fewer repetitions (a smoke run; figures are noisier).
    #[arg(long)]
    quick: bool,
    /// Inference threads, for the worker and for llama.cpp driven directly alike.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Where to write the Markdown report (default `<root>/BENCHMARKS.md`).
    #[arg(long)]
    md: Option<PathBuf>,
    /// Where to write the JSON report (default `<root>/BENCHMARKS.json`).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Relays every message from one subject to another (the token path's two-hop floor).
    Relay {
        /// NATS URL.
        #[arg(long)]
        nats: String,
        /// Subject to read.
        #[arg(long)]
        from: String,
        /// Subject to publish on.
        #[arg(long)]
        to: String,
    },
    /// Only the grammar-constrained decoding comparison of `make bench`, printed (no report written).
    Grammar,
    /// Only the queen takeover rounds of `make bench`, printed (no report written).
    Takeover,
    /// The worker's engine alone, in process, on the llama-server workloads (printed only).
    Engine,
    /// Only the routing comparison of `make bench` (prefix routing against load only), printed.
    Routing,
    /// `make bench-cluster`: the cluster across three hosts of their own (needs root and `ip`);
    /// prints the figures and writes them to `target/bench-cluster.json`.
    Hosts,
}

/// Repetitions and sizes of every section.
struct Plan {
    token_path: token_path::Plan,
    e2e: e2e::Plan,
    hive_kills: usize,
    standalone_kills: usize,
    takeovers: usize,
    sched_sizes: [(usize, usize); 3],
    registry_window: Duration,
}

impl Plan {
    fn new(quick: bool) -> Self {
        let pace = Duration::from_millis(5);
        if quick {
            Self {
                token_path: token_path::Plan { chunks: 100, pace, rounds: 1 },
                e2e: e2e::Plan {
                    reps: [(1, 1), (2, 1), (4, 1)],
                    max_tokens: 32,
                    budget: Duration::from_secs(120),
                },
                hive_kills: 1,
                standalone_kills: 1,
                takeovers: 1,
                sched_sizes: [(100, 300), (1_000, 100), (10_000, 20)],
                registry_window: Duration::from_secs(3),
            }
        } else {
            Self {
                token_path: token_path::Plan { chunks: 400, pace, rounds: 3 },
                e2e: e2e::Plan {
                    reps: [(1, 5), (2, 3), (4, 3)],
                    max_tokens: 128,
                    budget: Duration::from_secs(420),
                },
                hive_kills: 2,
                standalone_kills: 3,
                takeovers: 3,
                sched_sizes: [(100, 3_000), (1_000, 1_000), (10_000, 200)],
                registry_window: Duration::from_secs(10),
            }
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Some(Cmd::Relay { ref nats, ref from, ref to }) => token_path::relay(nats, from, to).await,
        Some(Cmd::Grammar) => grammar_only(&args).await,
        Some(Cmd::Hosts) => hosts_only(&args).await,
        Some(Cmd::Takeover) => takeover_only(&args).await,
        Some(Cmd::Engine) => engine_only(&args).await,
        Some(Cmd::Routing) => routing_only(&args).await,
        None => bench(&args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rbee-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn grammar_only(args: &Args) -> anyhow::Result<()> {
    let env = Env::new(&args.root, args.threads)?;
    let note = grammar::section(&mut Report::default(), &env).await?;
    println!("{note}");
    Ok(())
}

async fn routing_only(args: &Args) -> anyhow::Result<()> {
    let env = Env::new(&args.root, args.threads)?;
    let note = routing::section(&mut Report::default(), &env).await?;
    println!("{note}");
    Ok(())
}

async fn takeover_only(args: &Args) -> anyhow::Result<()> {
    let env = Env::new(&args.root, args.threads)?;
    let nats = rbee_testkit::NatsServer::start();
    let mut report = Report::default();
    heading(takeover::SECTION);
    // Each figure is printed as it is recorded.
    takeover::section(&mut report, &env, &nats.url(), if args.quick { 1 } else { 3 }).await
}

async fn engine_only(args: &Args) -> anyhow::Result<()> {
    let env = Env::new(&args.root, args.threads)?;
    heading("The worker's engine alone (in process)");
    let (runs, max_tokens) = if args.quick { (1, 32) } else { (3, 128) };
    engine_only::run(&env, runs, max_tokens).await
}

async fn hosts_only(args: &Args) -> anyhow::Result<()> {
    let env = Env::new(&args.root, args.threads)?;
    let mut report = start_report(&env, args.quick);
    heading(hosts::SECTION);
    let plan = hosts::Plan {
        requests: if args.quick { 2 } else { 6 },
        max_tokens: if args.quick { 32 } else { 96 },
    };
    tokio::task::block_in_place(|| hosts::run(&mut report, &plan, &env.root))?;
    let json = env.root.join("target").join("bench-cluster.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("cannot write {}", json.display()))?;
    println!("wrote {}", json.display());
    Ok(())
}

fn heading(title: &str) {
    println!("\n== {title} ==");
}

/// A report with the run's date, commit and machine; prints them.
fn start_report(env: &Env, quick: bool) -> Report {
    let report = Report {
        date: report::run_text("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        commit: report::commit(&env.root),
        machine: report::Machine::detect(),
        load_average_start: stats::load_average(),
        ..Report::default()
    };
    println!(
        "rbee-bench{}: {} ({} logical cpus, {:.1} GiB), commit {}, {}",
        if quick { " --quick" } else { "" },
        report.machine.cpu,
        report.machine.logical_cpus,
        report.machine.memory_bytes as f64 / 1073741824.0,
        report.commit,
        report.date
    );
    println!("logs in {}", env.logs.display());
    report
}

async fn bench(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let env = Env::new(&args.root, args.threads)?;
    let plan = Plan::new(args.quick);
    let mut report = start_report(&env, args.quick);
    let quiet = stats::ForeignLoad::start();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy = quiet.cores();
    if busy > stats::FOREIGN_MAX_CORES {
        println!(
            "warning: other processes take {busy:.2} cores of {} now; runs wait for quiet moments and the figures \
             will be noisier",
            report.machine.logical_cpus
        );
    }
    let mut cluster = Cluster::start(&env).await?;
    let api = &cluster.api;

    heading("5. Control path: first spawn");
    let mut control = Control::first_spawn(&cluster, env.threads).await?;

    heading(token_path::SECTION);
    let tp = token_path::section(&mut report, api, &cluster.url, &env, &plan.token_path).await?;

    // Templates for the simulated cluster: the real hive (listing the first worker) and worker heartbeats.
    let templates = cluster.watcher.templates().context("no real hive/worker heartbeat captured")?;

    heading(e2e::SECTION);
    let first = control.first();
    let pids = e2e::Pids { queen: cluster.queen.pid(), worker: first.pid, worker_id: &first.worker_id };
    let e2e = e2e::section(&mut report, api, &cluster.bus, &env, &plan.e2e, pids).await?;
    tp.real_worker_hop(&mut report, &e2e.hops);
    let multi_turn_note = multi_turn::section(&mut report, api, &env).await?;
    heading("2. End to end: routing by prefix");
    let routing_note = routing::section(&mut report, &env).await?;
    let grammar_note = grammar::section(&mut report, &env).await?;
    heading("2. End to end: against llama-server");
    let llama_server_note = llama_server::section(&mut report, api, &env).await?;

    heading("5. Control path: failure detection");
    control.detect_failures(&cluster, &env, plan.hive_kills, plan.standalone_kills).await?;
    cluster.stop_daemons();
    control.record(&mut report, &env, &cluster.url, e2e.load_ms, tp.raw.p50).await?;

    heading(takeover::SECTION);
    takeover::section(&mut report, &env, &cluster.url, plan.takeovers).await?;

    heading(sched::SECTION);
    let sched = sched::section(&mut report, &plan.sched_sizes, &templates.0, &templates.1)?;

    heading(registry_load::SECTION);
    let reg =
        registry_load::section(&mut report, &env, &cluster.url, &templates, plan.registry_window).await?;
    drop(cluster);

    report.load_average_end = stats::load_average();
    notes::write(&mut report, &tp, &e2e, &reg, &sched, &control);
    for note in
        [multi_turn_note, routing_note, grammar_note, llama_server_note].into_iter().filter(|n| !n.is_empty())
    {
        report.note(e2e::SECTION, note);
    }
    report.run_seconds = started.elapsed().as_secs_f64();
    let md = args.md.clone().unwrap_or_else(|| env.root.join("BENCHMARKS.md"));
    let json_path = args.json.clone().unwrap_or_else(|| env.root.join("BENCHMARKS.json"));
    report.write(&md, &json_path)?;
    let missed: Vec<&str> =
        report.figures.iter().filter(|f| f.met == Some(false)).map(|f| f.label.as_str()).collect();
    println!("\nwrote {} and {} in {:.0} s", md.display(), json_path.display(), report.run_seconds);
    if !missed.is_empty() {
        println!("bars missed (explained in {}): {}", md.display(), missed.join("; "));
    }
    Ok(())
}
