//! `rbee-bench`: what `make bench` runs. Starts its own nats-server, the release `rbee-queen` and
//! `rbee-hive`, spawns a worker of the default model through the queen, and measures every hop against
//! its floor in the same run: the token path, end to end inference, the registry under 11,000
//! heartbeats a second, the scheduler, and the control path. Prints each figure with its baseline and
//! ratio as it goes, then writes `BENCHMARKS.md` and `BENCHMARKS.json`.
//!
//! `rbee-bench relay` is the minimal relay process the token path's two-hop floor goes through.

mod cluster;
mod control;
mod e2e;
mod llama_server;
mod multi_turn;
mod notes;
mod registry_load;
mod report;
mod sched;
mod sse;
mod stats;
mod token_path;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use serde_json::{json, Value};

use cluster::{Api, Proc};
use report::{Report, Target};
use stats::Summary;

/// The model id the hive imports the default model under.
const MODEL_ID: &str = "smollm2-135m-instruct";
/// The hive this run starts.
const HIVE_ID: &str = "bench-hive";

const S1: &str = "1. Token path";
const S2: &str = "2. End to end";
const S3: &str = "3. Registry";
const S4: &str = "4. Scheduler";
const S5: &str = "5. Control path";

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
}

/// Repetitions and sizes.
struct Plan {
    chunks: u32,
    pace: Duration,
    rounds: usize,
    max_tokens: u32,
    reps: [(usize, usize); 3],
    hive_kills: usize,
    standalone_kills: usize,
    sched_sizes: [(usize, usize); 3],
    registry_window: Duration,
    e2e_budget: Duration,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                chunks: 100,
                pace: Duration::from_millis(5),
                rounds: 1,
                max_tokens: 32,
                reps: [(1, 1), (2, 1), (4, 1)],
                hive_kills: 1,
                standalone_kills: 1,
                sched_sizes: [(100, 300), (1_000, 100), (10_000, 20)],
                registry_window: Duration::from_secs(3),
                e2e_budget: Duration::from_secs(120),
            }
        } else {
            Self {
                chunks: 400,
                pace: Duration::from_millis(5),
                rounds: 3,
                max_tokens: 128,
                reps: [(1, 5), (2, 3), (4, 3)],
                hive_kills: 2,
                standalone_kills: 3,
                sched_sizes: [(100, 3_000), (1_000, 1_000), (10_000, 200)],
                registry_window: Duration::from_secs(10),
                e2e_budget: Duration::from_secs(420),
            }
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Some(Cmd::Relay { nats, from, to }) => relay(&nats, &from, &to).await,
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

async fn relay(nats: &str, from: &str, to: &str) -> anyhow::Result<()> {
    let bus = rbee_bus::connect(&rbee_bus::NatsConfig::url(nats)).await?;
    let mut sub = bus.client().subscribe(from.to_owned()).await?;
    bus.round_trip().await?;
    println!("ready");
    let to = async_nats::Subject::from(to);
    while let Some(msg) = sub.next().await {
        bus.client().publish(to.clone(), msg.payload).await?;
    }
    Ok(())
}

struct Env {
    root: PathBuf,
    logs: PathBuf,
    queen_bin: PathBuf,
    hive_bin: PathBuf,
    worker_bin: PathBuf,
    model_path: PathBuf,
    threads: u32,
}

impl Env {
    fn new(args: &Args) -> anyhow::Result<Self> {
        let root = std::fs::canonicalize(&args.root)
            .with_context(|| format!("no directory {}", args.root.display()))?;
        let exe = std::env::current_exe()?;
        let bin_dir = exe.parent().context("executable without a directory")?.to_path_buf();
        let bin = |name: &str| {
            let p = bin_dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                bail!("{} is missing: run `make release` first", p.display())
            }
        };
        let model_path = root.join(".rbee/models/SmolLM2-135M-Instruct.Q4_1.gguf");
        if !model_path.is_file() {
            bail!("the default model is missing at {}: run `make setup`", model_path.display());
        }
        let logs = root.join("target/bench");
        let _ = std::fs::remove_dir_all(&logs);
        std::fs::create_dir_all(&logs)?;
        Ok(Self {
            queen_bin: bin("rbee-queen")?,
            hive_bin: bin("rbee-hive")?,
            worker_bin: bin("rbee-worker")?,
            root,
            logs,
            model_path,
            threads: args.threads,
        })
    }
}

async fn connect(url: &str) -> anyhow::Result<rbee_bus::Bus> {
    Ok(rbee_bus::connect(&rbee_bus::NatsConfig::url(url)).await?)
}

fn heading(title: &str) {
    println!("\n== {title} ==");
}

async fn bench(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let env = Env::new(args)?;
    let plan = Plan::new(args.quick);
    let mut report = Report {
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
        if args.quick { " --quick" } else { "" },
        report.machine.cpu,
        report.machine.logical_cpus,
        report.machine.memory_bytes as f64 / 1073741824.0,
        report.commit,
        report.date
    );
    println!("logs in {}", env.logs.display());
    let quiet = stats::ForeignLoad::start();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy = quiet.cores();
    if busy > FOREIGN_MAX_CORES {
        println!(
            "warning: other processes take {busy:.2} cores of {} now; runs wait for quiet moments and the figures \
             will be noisier",
            report.machine.logical_cpus
        );
    }

    let nats = rbee_testkit::NatsServer::start();
    let url = nats.url();
    let bus = connect(&url).await?;
    let watcher = control::Watcher::start(&bus, HIVE_ID).await?;

    let port = cluster::free_port();
    let mut queen =
        Proc::spawn("queen", &env.queen_bin, &cluster::queen_args(&url, port), &env.logs.join("queen.log"))?;
    let api = Api::new(port);
    api.wait_healthy(&mut queen, Duration::from_secs(30)).await?;
    let hive_args: Vec<String> = vec![
        "--hive-id".into(),
        HIVE_ID.into(),
        "--catalog-dir".into(),
        env.logs.join("catalog").display().to_string(),
        "--import-model".into(),
        format!("{}={MODEL_ID}", env.model_path.display()),
        "--worker-bin".into(),
        env.worker_bin.display().to_string(),
        "--nats-url".into(),
        url.clone(),
    ];
    let mut hive = Proc::spawn("hive", &env.hive_bin, &hive_args, &env.logs.join("hive.log"))?;
    wait_spawnable(&api, &mut hive, &mut queen).await?;

    heading("5. Control path: first spawn");
    let first = control::spawn_timed(&api, &watcher, HIVE_ID, MODEL_ID, env.threads).await?;
    println!("  spawned {} in {:.0} ms (pid {})", first.worker_id, first.total_ms, first.pid);
    let mut spawns = vec![first];

    heading(S1);
    let tp = token_path(&mut report, &api, &url, &env, &plan).await?;

    // Templates for the simulated cluster: the real hive (listing the first worker) and worker heartbeats.
    let templates = watcher.templates().context("no real hive/worker heartbeat captured")?;

    heading(S2);
    let pids = (queen.pid(), spawns[0].pid, spawns[0].worker_id.as_str());
    let e2e = end_to_end(&mut report, &api, &bus, &env, &plan, pids).await?;
    let hops = Summary::of(&e2e.hops);
    report.figure(
        S1,
        "token_path.real_worker_queen_hop.p50_us",
        "real worker: SSE read − direct NATS subscriber read, p50",
        hops.p50,
        "µs",
        "raw NATS p50",
        Some(tp.raw.p50),
        None,
    );
    report.figure(
        S1,
        "token_path.real_worker_queen_hop.p99_us",
        "real worker: SSE read − direct NATS subscriber read, p99",
        hops.p99,
        "µs",
        "raw NATS p99",
        Some(tp.raw.p99),
        None,
    );
    report.detail("token_path_real_worker_hop_us", json!(hops));
    let multi_turn_note =
        multi_turn::section(&mut report, S2, &api, MODEL_ID, &env.model_path, env.threads as usize).await?;
    heading("2. End to end: against llama-server");
    let llama_server_note = llama_server::section(
        &mut report,
        S2,
        &api,
        MODEL_ID,
        &env.root,
        &env.model_path,
        env.threads,
        &env.logs,
    )
    .await?;

    heading("5. Control path: failure detection");
    let mut detections = Vec::new();
    for _ in 0..plan.hive_kills {
        let spawn = control::spawn_timed(&api, &watcher, HIVE_ID, MODEL_ID, env.threads).await?;
        println!("  spawned {} in {:.0} ms", spawn.worker_id, spawn.total_ms);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let d = control::kill_supervised(&api, &watcher, &spawn.worker_id, spawn.pid).await?;
        println!(
            "  SIGKILL {} (hive watching): {} after {:.1} ms",
            spawn.worker_id, d.seen_as, d.kill_to_detect_ms
        );
        detections.push(d);
        spawns.push(spawn);
    }
    let offsets = [0.2, 0.5, 0.8, 0.35, 0.65];
    for i in 0..plan.standalone_kills {
        let offset = Duration::from_secs_f64(offsets[i % offsets.len()]);
        let log = env.logs.join(format!("orphan-{i}.log"));
        let d = control::kill_standalone(
            &api,
            &watcher,
            &env.worker_bin,
            &env.model_path,
            MODEL_ID,
            &url,
            &log,
            i,
            offset,
        )
        .await?;
        println!(
            "  SIGKILL standalone worker {:.0} ms after a heartbeat: {} after {:.0} ms ({:.0} ms after its last heartbeat)",
            offset.as_secs_f64() * 1e3,
            d.seen_as,
            d.kill_to_detect_ms,
            d.last_heartbeat_to_detect_ms
        );
        detections.push(d);
    }
    let http_rtt_ms = control::http_rtt_ms(&api).await?;
    watcher.stop();
    hive.stop(Duration::from_secs(15));
    queen.stop(Duration::from_secs(5));
    let floors = Floors {
        true_ms: control::exec_ms(Path::new("/bin/true"), &[])?,
        worker_version_ms: control::exec_ms(&env.worker_bin, &["--version"])?,
        connect_ms: control::connect_floor_ms(&url).await?,
        load_ms: e2e.load_ms,
        notify_ms: tp.raw.p50 / 1e3 + http_rtt_ms,
    };
    control_figures(&mut report, &spawns, &detections, &floors);

    heading(S4);
    let sched = sched::run(&plan.sched_sizes, &templates.0, &templates.1)?;
    for s in &sched {
        let n = report::num(s.workers as f64);
        report.figure(
            S4,
            &format!("scheduler.place.{}.p50_us", s.workers),
            &format!("place(), {n} workers, p50"),
            s.place_us.p50,
            "µs",
            "bare least-loaded pass p50",
            Some(s.floor_us.p50),
            None,
        );
        report.figure(
            S4,
            &format!("scheduler.place.{}.p99_us", s.workers),
            &format!("place(), {n} workers, p99"),
            s.place_us.p99,
            "µs",
            "bare least-loaded pass p99",
            Some(s.floor_us.p99),
            None,
        );
        report.figure(
            S4,
            &format!("scheduler.schedule.{}.p50_us", s.workers),
            &format!("schedule() on a ready snapshot, {n} workers, p50"),
            s.schedule_us.p50,
            "µs",
            "bare least-loaded pass p50",
            Some(s.floor_us.p50),
            None,
        );
    }
    report.detail("scheduler", json!(sched));

    heading(S3);
    let reg =
        registry_load::run(&url, &env.queen_bin, &env.logs, &templates.0, &templates.1, plan.registry_window)
            .await?;
    registry_figures(&mut report, &reg, &templates);
    drop(nats);

    report.load_average_end = stats::load_average();
    notes::write(&mut report, &tp, &e2e, &reg, &sched, &spawns, &detections);
    for note in [multi_turn_note, llama_server_note].into_iter().filter(|n| !n.is_empty()) {
        report.note(S2, note);
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

async fn wait_spawnable(api: &Api, hive: &mut Proc, queen: &mut Proc) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        hive.check()?;
        queen.check()?;
        if let Ok(models) = api.get("/v1/models").await {
            let ready = models.get("data").and_then(Value::as_array).is_some_and(|data| {
                data.iter().any(|m| {
                    m.get("id").and_then(Value::as_str) == Some(MODEL_ID)
                        && m.get("spawnable_on")
                            .and_then(Value::as_array)
                            .is_some_and(|h| h.iter().any(|h| h == HIVE_ID))
                })
            });
            if ready {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the hive did not offer {MODEL_ID} within 120 s; hive log:\n{}", hive.tail(15));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the token path measured, µs.
pub struct TokenPath {
    raw: Summary,
    relay: Summary,
    queen: Summary,
    payload_bytes: usize,
    pace_ms: f64,
    chunks: u32,
    rounds: usize,
    /// Median cores taken by other processes during a round.
    foreign_cores: f64,
}

async fn token_path(
    report: &mut Report,
    api: &Api,
    url: &str,
    env: &Env,
    plan: &Plan,
) -> anyhow::Result<TokenPath> {
    let echo = token_path::EchoWorker::start(connect(url).await?, plan.pace).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !api
        .workers()
        .await?
        .iter()
        .any(|w| w.get("worker_id").and_then(Value::as_str) == Some(token_path::ECHO_WORKER))
    {
        if Instant::now() > deadline {
            bail!("the queen did not list the echo worker");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (publisher, reader) = (connect(url).await?, connect(url).await?);
    let exe = std::env::current_exe()?;
    let relay_args: Vec<String> =
        ["relay", "--nats", url, "--from", "bench.relay.in", "--to", "bench.relay.out"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
    let relay_log = env.logs.join("relay.log");
    let mut relay = Proc::spawn("relay", &exe, &relay_args, &relay_log)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&relay_log).unwrap_or_default().contains("ready") {
        relay.check()?;
        if Instant::now() > deadline {
            bail!("the relay did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut raw, mut relayed, mut queen) = (Vec::new(), Vec::new(), Vec::new());
    let mut foreign = Vec::new();
    // Warm-up, not counted.
    token_path::nats_run(&publisher, &reader, "bench.raw", "bench.raw", 50, plan.pace).await?;
    token_path::nats_run(&publisher, &reader, "bench.relay.in", "bench.relay.out", 50, plan.pace).await?;
    token_path::queen_run(api, &echo, 50).await?;
    for _ in 0..plan.rounds {
        wait_quiet(Duration::from_secs(10)).await;
        let meter = stats::ForeignLoad::start();
        raw.extend(
            token_path::nats_run(&publisher, &reader, "bench.raw", "bench.raw", plan.chunks, plan.pace)
                .await?,
        );
        relayed.extend(
            token_path::nats_run(
                &publisher,
                &reader,
                "bench.relay.in",
                "bench.relay.out",
                plan.chunks,
                plan.pace,
            )
            .await?,
        );
        queen.extend(token_path::queen_run(api, &echo, plan.chunks).await?);
        foreign.push(meter.cores());
    }
    echo.stop().await;
    relay.stop(Duration::from_secs(2));
    let stamper = rbee_bus::EventStamper::new("bench-raw");
    let sample =
        token_path::chunk(&stamper, &rbee_bus::JobId::generate(), &token_path::ECHO_WORKER.parse()?, 123);
    let tp = TokenPath {
        raw: Summary::of(&raw),
        relay: Summary::of(&relayed),
        queen: Summary::of(&queen),
        payload_bytes: serde_json::to_vec(&sample)?.len(),
        pace_ms: plan.pace.as_secs_f64() * 1e3,
        chunks: plan.chunks,
        rounds: plan.rounds,
        foreign_cores: stats::median(&foreign),
    };
    report.figure(
        S1,
        "token_path.queen_sse.p50_us",
        "queen SSE (OpenAI stream), p50",
        tp.queen.p50,
        "µs",
        "raw NATS pub→sub p50",
        Some(tp.raw.p50),
        Some(Target::AtMost(1.5)),
    );
    report.figure(
        S1,
        "token_path.queen_sse.p99_us",
        "queen SSE (OpenAI stream), p99",
        tp.queen.p99,
        "µs",
        "raw NATS pub→sub p99",
        Some(tp.raw.p99),
        Some(Target::AtMost(1.5)),
    );
    report.figure(
        S1,
        "token_path.relay_floor.p50_us",
        "two-hop floor: NATS → relay process → NATS, p50",
        tp.relay.p50,
        "µs",
        "raw NATS p50",
        Some(tp.raw.p50),
        None,
    );
    report.figure(
        S1,
        "token_path.relay_floor.p99_us",
        "two-hop floor: NATS → relay process → NATS, p99",
        tp.relay.p99,
        "µs",
        "raw NATS p99",
        Some(tp.raw.p99),
        None,
    );
    report.figure(
        S1,
        "token_path.queen_vs_relay.p50_us",
        "queen SSE p50 against the two-hop floor",
        tp.queen.p50,
        "µs",
        "relay p50",
        Some(tp.relay.p50),
        None,
    );
    report.detail(
        "token_path",
        json!({
            "chunks_per_run": plan.chunks, "runs": plan.rounds, "pace_ms": plan.pace.as_secs_f64() * 1e3,
            "payload_bytes": tp.payload_bytes, "foreign_cores": tp.foreign_cores, "raw_us": tp.raw, "relay_us": tp.relay, "queen_sse_us": tp.queen,
        }),
    );
    Ok(tp)
}

/// What the end-to-end runs measured.
pub struct EndToEnd {
    /// `Engine::load` in this process, ms.
    load_ms: f64,
    /// Per concurrency: (direct runs, queen runs).
    runs: Vec<(usize, Vec<e2e::RunResult>, Vec<e2e::RunResult>)>,
    /// Real-worker queen hop samples, µs.
    hops: Vec<f64>,
    max_tokens: u32,
    cpu: CpuTally,
    /// Single-stream TTFT splits.
    splits: Vec<e2e::TtftSplit>,
    /// Pairs measured again because other processes took the CPU.
    discarded: usize,
    /// Workers the queen spawned on its own during the runs (stopped before the next run).
    extra_workers: usize,
}

/// Above this many cores of CPU taken by other processes during a direct/queen pair, the pair is
/// measured again (llama.cpp's threads on a 2-core machine slow down many times over when anything else
/// runs): other users of the machine, not rbee, would decide the figures otherwise.
pub const FOREIGN_MAX_CORES: f64 = 0.25;

/// Waits (up to `within`) for a second in which other processes take less than [`FOREIGN_MAX_CORES`].
async fn wait_quiet(within: Duration) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let meter = stats::ForeignLoad::start();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let cores = meter.cores();
        if cores < FOREIGN_MAX_CORES || Instant::now() > deadline {
            return cores;
        }
    }
}

/// Makes the first worker the only one of the model, assignable, before a run through the queen: a
/// worker starved by other load misses heartbeats, and the queen then (rightly) spawns another.
async fn single_worker(api: &Api, keep: &str) -> anyhow::Result<usize> {
    let mut stopped = 0;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let workers = api.workers().await?;
        let mut ready = false;
        for w in &workers {
            let id = w.get("worker_id").and_then(Value::as_str).unwrap_or_default();
            let model = w.get("model_id").and_then(Value::as_str).unwrap_or_default();
            if id == keep {
                ready = w.get("assignable").and_then(Value::as_bool) == Some(true)
                    && w.get("slots_busy").and_then(Value::as_u64) == Some(0);
            } else if model == MODEL_ID {
                println!("  stopping {id}: the queen spawned it while the first worker was starved");
                let _ = api.delete(&format!("/v1/workers/{id}")).await;
                stopped += 1;
            }
        }
        let others = workers.iter().any(|w| {
            w.get("model_id").and_then(Value::as_str) == Some(MODEL_ID)
                && w.get("worker_id").and_then(Value::as_str) != Some(keep)
        });
        if ready && !others {
            return Ok(stopped);
        }
        if Instant::now() > deadline {
            bail!("worker {keep} did not become the only assignable worker of {MODEL_ID} within 40 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn end_to_end(
    report: &mut Report,
    api: &Api,
    bus: &rbee_bus::Bus,
    env: &Env,
    plan: &Plan,
    (queen_pid, worker_pid, worker_id): (u32, u32, &str),
) -> anyhow::Result<EndToEnd> {
    use rbee_worker::engine::{Engine, EngineConfig};
    let config = EngineConfig {
        model_path: env.model_path.clone(),
        threads: Some(env.threads as usize),
        slots: 4,
        ctx_per_slot: 2048,
        gpu_layers: 0,
        prefix_reuse: true,
        prefix_cache_bytes: rbee_worker::engine::DEFAULT_PREFIX_CACHE_MIB << 20,
    };
    let t = Instant::now();
    let engine = tokio::task::spawn_blocking(move || Engine::load(config)).await??;
    let load_ms = stats::ms(t.elapsed());
    println!("  llama.cpp direct: Engine::load in {load_ms:.0} ms ({} threads, 4 slots)", env.threads);
    e2e::direct_run(&engine, 1, 16).await?;
    e2e::queen_run(api, MODEL_ID, 1, 16, None).await?;
    let mut runs = Vec::new();
    let mut hops = Vec::new();
    let mut splits = Vec::new();
    let mut discarded = Vec::new();
    let mut foreign = Vec::new();
    let mut extra_workers = 0;
    let deadline = Instant::now() + plan.e2e_budget;
    // CPU seconds used while the queen path ran: (queen, worker, this process), and tokens it carried.
    let mut cpu = CpuTally::default();
    let cpu_now = || {
        (
            stats::cpu_seconds(queen_pid).unwrap_or(0.0),
            stats::cpu_seconds(worker_pid).unwrap_or(0.0),
            stats::cpu_seconds(std::process::id()).unwrap_or(0.0),
        )
    };
    for (c, reps) in plan.reps {
        let (mut direct, mut queen) = (Vec::new(), Vec::new());
        let mut rep = 0;
        while rep < reps {
            wait_quiet(Duration::from_secs(15).min(deadline.saturating_duration_since(Instant::now()))).await;
            extra_workers += single_worker(api, worker_id).await?;
            let watch = (c == 1).then_some(bus);
            let meter = stats::ForeignLoad::start();
            let mut pair = (None, None, CpuTally::default());
            for side in if rep % 2 == 0 { [0, 1] } else { [1, 0] } {
                if side == 0 {
                    pair.0 = Some(e2e::direct_run(&engine, c, plan.max_tokens).await?);
                    continue;
                }
                let before = cpu_now();
                let q = e2e::queen_run(api, MODEL_ID, c, plan.max_tokens, watch).await?;
                let after = cpu_now();
                pair.2 = CpuTally {
                    queen: after.0 - before.0,
                    worker: after.1 - before.1,
                    client: after.2 - before.2,
                    tokens: q.result.streams.iter().map(|s| u64::from(s.tokens)).sum(),
                };
                pair.1 = Some(q);
            }
            let (Some(d), Some(q), tally) = pair else { bail!("a run pair did not complete") };
            let cores = meter.cores();
            if cores > FOREIGN_MAX_CORES && Instant::now() < deadline {
                println!(
                    "  discarded a {c}-stream pair: other processes took {cores:.2} cores meanwhile \
                     (direct {:.1} tok/s, queen {:.1} tok/s); measuring it again",
                    d.aggregate_tps, q.result.aggregate_tps
                );
                discarded.push(json!({
                    "concurrency": c, "foreign_cores": cores,
                    "direct_aggregate_tps": d.aggregate_tps, "queen_aggregate_tps": q.result.aggregate_tps,
                }));
                continue;
            }
            foreign.push(cores);
            cpu.add(&tally);
            hops.extend(q.hops);
            splits.extend(q.splits);
            direct.push(d);
            queen.push(q.result);
            rep += 1;
        }
        let ttft = |runs: &[e2e::RunResult]| {
            stats::median(&runs.iter().flat_map(|r| r.streams.iter().map(|s| s.ttft_ms)).collect::<Vec<_>>())
        };
        let decode = |runs: &[e2e::RunResult]| {
            stats::median(
                &runs.iter().flat_map(|r| r.streams.iter().map(|s| s.decode_tps)).collect::<Vec<_>>(),
            )
        };
        let agg = |runs: &[e2e::RunResult]| {
            stats::median(&runs.iter().map(|r| r.aggregate_tps).collect::<Vec<_>>())
        };
        let tokens: Vec<u32> =
            direct.iter().chain(&queen).flat_map(|r| r.streams.iter().map(|s| s.tokens)).collect();
        println!("  {c} stream(s), {reps} run(s) each way, completion tokens per stream: {tokens:?}");
        let streams = if c == 1 { "1 stream".to_owned() } else { format!("{c} concurrent streams") };
        report.figure(
            S2,
            &format!("e2e.c{c}.ttft_ms"),
            &format!("time to first token, {streams} (median)"),
            ttft(&queen),
            "ms",
            "llama.cpp direct",
            Some(ttft(&direct)),
            Some(Target::AtMost(1.11)),
        );
        report.figure(
            S2,
            &format!("e2e.c{c}.decode_tps"),
            &format!("decode tokens/s per stream, {streams} (median)"),
            decode(&queen),
            "tok/s",
            "llama.cpp direct",
            Some(decode(&direct)),
            Some(Target::AtLeast(0.9)),
        );
        report.figure(
            S2,
            &format!("e2e.c{c}.aggregate_tps"),
            &format!("aggregate tokens/s, {streams} (median run)"),
            agg(&queen),
            "tok/s",
            "llama.cpp direct",
            Some(agg(&direct)),
            Some(Target::AtLeast(0.9)),
        );
        runs.push((c, direct, queen));
    }
    engine.shutdown();
    println!(
        "  CPU per token through the queen: queen {:.0} µs, worker {:.0} µs, client {:.0} µs; {} pair(s) discarded for foreign load",
        cpu.per_token_us(cpu.queen),
        cpu.per_token_us(cpu.worker),
        cpu.per_token_us(cpu.client),
        discarded.len()
    );
    let med = |f: fn(&e2e::TtftSplit) -> f64| stats::median(&splits.iter().map(f).collect::<Vec<_>>());
    let split = json!({
        "sent_to_scheduled_ms": med(|s| s.to_scheduled), "scheduled_to_accepted_ms": med(|s| s.to_accepted),
        "accepted_to_first_chunk_ms": med(|s| s.to_first_chunk), "first_chunk_to_client_ms": med(|s| s.to_client),
    });
    println!("  single-stream TTFT through the queen, medians: {split}");
    report.detail(
        "end_to_end",
        json!({
            "cpu_per_token_us": {"queen": cpu.per_token_us(cpu.queen), "worker": cpu.per_token_us(cpu.worker), "client": cpu.per_token_us(cpu.client)},
            "ttft_split_single_stream": split, "ttft_splits": splits,
            "discarded_pairs": discarded, "foreign_cores_per_kept_pair": foreign, "extra_workers_stopped": extra_workers,
            "prompt": e2e::PROMPT, "max_tokens": plan.max_tokens, "temperature": 0.0, "threads": env.threads,
            "slots": 4, "ctx_per_slot": 2048, "engine_load_ms": load_ms,
            "runs": runs.iter().map(|(c, d, q)| json!({"concurrency": c, "direct": d, "queen": q})).collect::<Vec<_>>(),
        }),
    );
    Ok(EndToEnd {
        load_ms,
        runs,
        hops,
        max_tokens: plan.max_tokens,
        cpu,
        splits,
        discarded: discarded.len(),
        extra_workers,
    })
}

/// CPU seconds spent while the queen path ran, and the tokens it carried.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuTally {
    queen: f64,
    worker: f64,
    client: f64,
    tokens: u64,
}

impl CpuTally {
    fn add(&mut self, other: &CpuTally) {
        self.queen += other.queen;
        self.worker += other.worker;
        self.client += other.client;
        self.tokens += other.tokens;
    }

    fn per_token_us(&self, seconds: f64) -> f64 {
        if self.tokens == 0 {
            0.0
        } else {
            seconds * 1e6 / self.tokens as f64
        }
    }
}

/// Floors of the control path's stages, ms.
#[derive(Debug, serde::Serialize)]
pub struct Floors {
    /// Start `/bin/true` and wait for it.
    true_ms: f64,
    /// Start `rbee-worker --version` and wait for it.
    worker_version_ms: f64,
    /// A fresh NATS connection plus a round trip, in process.
    connect_ms: f64,
    /// `Engine::load` in process.
    load_ms: f64,
    /// Raw NATS one-way p50 plus a `GET /health` round trip.
    notify_ms: f64,
}

fn control_figures(
    report: &mut Report,
    spawns: &[control::SpawnTiming],
    detections: &[control::Detection],
    f: &Floors,
) {
    let med = |g: fn(&control::SpawnTiming) -> f64| stats::median(&spawns.iter().map(g).collect::<Vec<_>>());
    let n = spawns.len();
    report.figure(
        S5,
        "control.spawn.process_start_ms",
        &format!("spawn request → process started (hive's `started` event), median of {n}"),
        med(|s| s.process_start_ms),
        "ms",
        "start and reap `/bin/true`",
        Some(f.true_ms),
        None,
    );
    report.figure(
        S5,
        "control.spawn.first_heartbeat_ms",
        "process started → first heartbeat (`loading`)",
        med(|s| s.first_heartbeat_ms),
        "ms",
        "`rbee-worker --version` run + NATS connect",
        Some(f.worker_version_ms + f.connect_ms),
        None,
    );
    report.figure(
        S5,
        "control.spawn.model_load_ms",
        "first heartbeat → `idle` heartbeat (model load)",
        med(|s| s.model_load_ms),
        "ms",
        "Engine::load in process (llama.cpp direct)",
        Some(f.load_ms),
        None,
    );
    report.figure(
        S5,
        "control.spawn.queen_ready_ms",
        "`idle` heartbeat → queen lists it idle (polled every 1 ms)",
        med(|s| s.queen_ready_ms),
        "ms",
        "raw NATS one-way + GET round trip",
        Some(f.notify_ms),
        None,
    );
    report.figure(
        S5,
        "control.spawn.total_ms",
        "spawn request → ready in the queen (total)",
        med(|s| s.total_ms),
        "ms",
        "sum of the floors above",
        Some(f.true_ms + f.worker_version_ms + f.connect_ms + f.load_ms + f.notify_ms),
        None,
    );
    let hive: Vec<f64> =
        detections.iter().filter(|d| d.mode == "hive").map(|d| d.kill_to_detect_ms).collect();
    let solo: Vec<f64> =
        detections.iter().filter(|d| d.mode == "standalone").map(|d| d.kill_to_detect_ms).collect();
    let solo_last: Vec<f64> =
        detections.iter().filter(|d| d.mode == "standalone").map(|d| d.last_heartbeat_to_detect_ms).collect();
    let bound = 3.0 * 1000.0;
    if !hive.is_empty() {
        report.figure(
            S5,
            "control.detect.hive_ms",
            &format!("SIGKILL → queen drops it, hive watching (median of {})", hive.len()),
            stats::median(&hive),
            "ms",
            "heartbeat expiry bound 3 × 1 s",
            Some(bound),
            None,
        );
    }
    if !solo.is_empty() {
        report.figure(
            S5,
            "control.detect.heartbeat_ms",
            &format!("SIGKILL → queen lists it offline, heartbeats only (median of {})", solo.len()),
            stats::median(&solo),
            "ms",
            "heartbeat expiry bound 3 × 1 s",
            Some(bound),
            None,
        );
        report.figure(
            S5,
            "control.detect.heartbeat_max_ms",
            "SIGKILL → offline, heartbeats only, worst",
            solo.iter().copied().fold(0.0, f64::max),
            "ms",
            "heartbeat expiry bound 3 × 1 s",
            Some(bound),
            None,
        );
        report.figure(
            S5,
            "control.detect.since_last_heartbeat_ms",
            "last heartbeat → offline, heartbeats only (median)",
            stats::median(&solo_last),
            "ms",
            "3 × 1 s",
            Some(bound),
            None,
        );
    }
    report.detail(
        "control_path",
        json!({"spawns": spawns, "detections": detections, "floors_ms": f, "heartbeat_interval_ms": 1000}),
    );
}

fn registry_figures(
    report: &mut Report,
    r: &registry_load::RegistryResult,
    templates: &(rbee_bus::HiveHeartbeat, rbee_bus::WorkerHeartbeat),
) {
    let entries = (registry_load::HIVES * (registry_load::WORKERS_PER_HIVE + 1)) as f64;
    let mix_decode_us = (r.decode_hive_us + r.decode_worker_us * registry_load::WORKERS_PER_HIVE as f64)
        / (registry_load::WORKERS_PER_HIVE + 1) as f64;
    let real_hive = serde_json::to_vec(&templates.0).map_or(0, |v| v.len());
    let real_worker = serde_json::to_vec(&templates.1).map_or(0, |v| v.len());
    let avg_bytes = (r.hive_bytes as f64 + r.worker_bytes as f64 * registry_load::WORKERS_PER_HIVE as f64)
        / (registry_load::WORKERS_PER_HIVE + 1) as f64;
    report.figure(
        S3,
        "registry.folded_per_s",
        "heartbeats folded per second (1,000 hives + 10,000 workers at 1/s)",
        r.folded_per_s,
        "/s",
        "offered",
        Some(r.offered_per_s),
        None,
    );
    report.figure(
        S3,
        "registry.workers_online",
        "workers the queen lists online",
        r.workers_online,
        "",
        "simulated",
        Some(10_000.0),
        None,
    );
    report.figure(
        S3,
        "registry.queen_cpu_percent",
        "queen CPU at that load (% of one core)",
        r.queen_cpu_percent,
        "%",
        "serde decode of the same messages",
        Some(mix_decode_us * r.offered_per_s / 1e4),
        None,
    );
    report.figure(
        S3,
        "registry.queen_cpu_us_per_heartbeat",
        "queen CPU per heartbeat",
        r.queen_cpu_us_per_heartbeat,
        "µs",
        "serde decode only",
        Some(mix_decode_us),
        None,
    );
    report.figure(
        S3,
        "registry.burst_fold_per_s",
        "fold capacity: 50,000 worker heartbeats in a burst",
        r.burst_fold_per_s,
        "/s",
        "serde decode only, one core",
        Some(1e6 / r.decode_worker_us),
        None,
    );
    report.figure(
        S3,
        "registry.queen_rss_mib",
        "queen resident memory, 11,000 entries",
        r.rss_loaded_bytes as f64 / 1048576.0,
        "MiB",
        "queen idle",
        Some(r.rss_idle_bytes as f64 / 1048576.0),
        None,
    );
    report.figure(
        S3,
        "registry.bytes_per_entry",
        "queen memory per entry ((loaded − idle) ÷ 11,000)",
        (r.rss_loaded_bytes.saturating_sub(r.rss_idle_bytes)) as f64 / entries,
        "B",
        "average heartbeat size",
        Some(avg_bytes),
        None,
    );
    let real_label = format!("real hive heartbeat ({} worker listed)", templates.0.workers.len());
    report.figure(
        S3,
        "registry.hive_bytes",
        "bytes per hive heartbeat (10 workers listed)",
        r.hive_bytes as f64,
        "B",
        &real_label,
        Some(real_hive as f64),
        None,
    );
    report.figure(
        S3,
        "registry.worker_bytes",
        "bytes per worker heartbeat",
        r.worker_bytes as f64,
        "B",
        "real worker heartbeat",
        Some(real_worker as f64),
        None,
    );
    report.figure(
        S3,
        "registry.bus_bytes_per_s",
        "heartbeat bytes into the queen per second",
        r.folded_per_s * r.queen_avg_bytes,
        "B/s",
        "",
        None,
        None,
    );
    report.detail("registry", json!(r));
}
