//! Section 5, control path: spawn request to worker ready, split by the events on the bus (the hive's
//! `started` lifecycle event, the worker's first heartbeat, its first `idle` heartbeat, the queen's
//! listing), and failure detection: a worker killed with SIGKILL until the queen's `GET /v1/workers`
//! shows it offline or gone, with its hive watching (lifecycle event) and without (heartbeats only).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::api::Api;
use crate::cluster::{Cluster, Env, Proc, HIVE_ID, MODEL_ID};
use crate::report::{Fig, Report};
use crate::stats;
use crate::watcher::Watcher;

/// The section's title.
pub const SECTION: &str = "5. Control path";

/// What the control path measured over the run: the first spawn (before every other section; its
/// worker serves them), then failure detection (after the end-to-end section).
pub struct Control {
    /// Every timed spawn, the first one first.
    pub spawns: Vec<SpawnTiming>,
    /// Every failure detection, the hive-watched ones first.
    pub detections: Vec<Detection>,
    /// `GET /health` round trip, measured while the queen still ran.
    http_rtt_ms: f64,
}

impl Control {
    /// Spawns the first worker through the queen and times it.
    pub async fn first_spawn(cluster: &Cluster, threads: u32) -> anyhow::Result<Self> {
        let first = spawn_timed(&cluster.api, &cluster.watcher, HIVE_ID, MODEL_ID, threads).await?;
        println!("  spawned {} in {:.0} ms (pid {})", first.worker_id, first.total_ms, first.pid);
        Ok(Self { spawns: vec![first], detections: Vec::new(), http_rtt_ms: 0.0 })
    }

    /// The first worker.
    pub fn first(&self) -> &SpawnTiming {
        &self.spawns[0]
    }

    /// Spawns and SIGKILLs `hive_kills` workers the hive supervises, then `standalone_kills` workers
    /// with no hive at different offsets after a heartbeat, timing the queen's detection of each.
    pub async fn detect_failures(
        &mut self,
        cluster: &Cluster,
        env: &Env,
        hive_kills: usize,
        standalone_kills: usize,
    ) -> anyhow::Result<()> {
        let (api, watcher) = (&cluster.api, &cluster.watcher);
        for _ in 0..hive_kills {
            let spawn = spawn_timed(api, watcher, HIVE_ID, MODEL_ID, env.threads).await?;
            println!("  spawned {} in {:.0} ms", spawn.worker_id, spawn.total_ms);
            tokio::time::sleep(Duration::from_millis(300)).await;
            let d = kill_supervised(api, watcher, &spawn.worker_id, spawn.pid).await?;
            println!(
                "  SIGKILL {} (hive watching): {} after {:.1} ms",
                spawn.worker_id, d.seen_as, d.kill_to_detect_ms
            );
            self.detections.push(d);
            self.spawns.push(spawn);
        }
        let offsets = [0.2, 0.5, 0.8, 0.35, 0.65];
        for i in 0..standalone_kills {
            let offset = Duration::from_secs_f64(offsets[i % offsets.len()]);
            let worker = Standalone {
                worker_bin: &env.worker_bin,
                model_path: &env.model_path,
                model: MODEL_ID,
                nats: &cluster.url,
                log: &env.logs.join(format!("orphan-{i}.log")),
            };
            let d = kill_standalone(api, watcher, &worker, i, offset).await?;
            println!(
                "  SIGKILL standalone worker {:.0} ms after a heartbeat: {} after {:.0} ms ({:.0} ms after its last heartbeat)",
                offset.as_secs_f64() * 1e3,
                d.seen_as,
                d.kill_to_detect_ms,
                d.last_heartbeat_to_detect_ms
            );
            self.detections.push(d);
        }
        self.http_rtt_ms = http_rtt_ms(api).await?;
        Ok(())
    }

    /// Measures the stages' floors (`load_ms`: `Engine::load` in process; `raw_p50_us`: raw NATS one-way)
    /// and records the section's figures. Runs once the daemons are stopped, nats-server still up.
    pub async fn record(
        &self,
        report: &mut Report,
        env: &Env,
        nats: &str,
        load_ms: f64,
        raw_p50_us: f64,
    ) -> anyhow::Result<()> {
        let floors = Floors {
            true_ms: exec_ms(Path::new("/bin/true"), &[])?,
            worker_version_ms: exec_ms(&env.worker_bin, &["--version"])?,
            connect_ms: connect_floor_ms(nats).await?,
            load_ms,
            notify_ms: raw_p50_us / 1e3 + self.http_rtt_ms,
        };
        self.figures(report, &floors);
        Ok(())
    }

    fn figures(&self, report: &mut Report, f: &Floors) {
        let (spawns, detections) = (&self.spawns, &self.detections);
        let med = |g: fn(&SpawnTiming) -> f64| stats::median(&spawns.iter().map(g).collect::<Vec<_>>());
        let n = spawns.len();
        let figures = [
            Fig::new(
                "control.spawn.process_start_ms",
                format!("spawn request → process started (hive's `started` event), median of {n}"),
            )
            .value(med(|s| s.process_start_ms), "ms")
            .vs("start and reap `/bin/true`", f.true_ms),
            Fig::new("control.spawn.first_heartbeat_ms", "process started → first heartbeat (`loading`)")
                .value(med(|s| s.first_heartbeat_ms), "ms")
                .vs("`rbee-worker --version` run + NATS connect", f.worker_version_ms + f.connect_ms),
            Fig::new("control.spawn.model_load_ms", "first heartbeat → `idle` heartbeat (model load)")
                .value(med(|s| s.model_load_ms), "ms")
                .vs("Engine::load in process (llama.cpp direct)", f.load_ms),
            Fig::new(
                "control.spawn.queen_ready_ms",
                "`idle` heartbeat → queen lists it idle (polled every 1 ms)",
            )
            .value(med(|s| s.queen_ready_ms), "ms")
            .vs("raw NATS one-way + GET round trip", f.notify_ms),
            Fig::new("control.spawn.total_ms", "spawn request → ready in the queen (total)")
                .value(med(|s| s.total_ms), "ms")
                .vs(
                    "sum of the floors above",
                    f.true_ms + f.worker_version_ms + f.connect_ms + f.load_ms + f.notify_ms,
                ),
        ];
        for fig in figures {
            report.figure(SECTION, fig);
        }
        let of_mode = |mode: &str, g: fn(&Detection) -> f64| -> Vec<f64> {
            detections.iter().filter(|d| d.mode == mode).map(g).collect()
        };
        let hive = of_mode("hive", |d| d.kill_to_detect_ms);
        let solo = of_mode("standalone", |d| d.kill_to_detect_ms);
        let solo_last = of_mode("standalone", |d| d.last_heartbeat_to_detect_ms);
        let bound = 3.0 * 1000.0;
        let expiry = "heartbeat expiry bound 3 × 1 s";
        if !hive.is_empty() {
            let label = format!("SIGKILL → queen drops it, hive watching (median of {})", hive.len());
            report.figure(
                SECTION,
                Fig::new("control.detect.hive_ms", label).value(stats::median(&hive), "ms").vs(expiry, bound),
            );
        }
        if !solo.is_empty() {
            let label =
                format!("SIGKILL → queen lists it offline, heartbeats only (median of {})", solo.len());
            let figures = [
                Fig::new("control.detect.heartbeat_ms", label)
                    .value(stats::median(&solo), "ms")
                    .vs(expiry, bound),
                Fig::new("control.detect.heartbeat_max_ms", "SIGKILL → offline, heartbeats only, worst")
                    .value(solo.iter().copied().fold(0.0, f64::max), "ms")
                    .vs(expiry, bound),
                Fig::new(
                    "control.detect.since_last_heartbeat_ms",
                    "last heartbeat → offline, heartbeats only (median)",
                )
                .value(stats::median(&solo_last), "ms")
                .vs("3 × 1 s", bound),
            ];
            for fig in figures {
                report.figure(SECTION, fig);
            }
        }
        report.detail(
            "control_path",
            json!({"spawns": spawns, "detections": detections, "floors_ms": f, "heartbeat_interval_ms": 1000}),
        );
    }
}

/// Floors of the control path's stages, ms.
#[derive(Debug, serde::Serialize)]
struct Floors {
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

/// How to start a worker with no hive.
struct Standalone<'a> {
    worker_bin: &'a Path,
    model_path: &'a Path,
    model: &'a str,
    nats: &'a str,
    log: &'a Path,
}

/// One spawn, split into stages (ms).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SpawnTiming {
    /// The worker.
    pub worker_id: String,
    /// Its pid.
    pub pid: u32,
    /// `POST /v1/workers` → the hive's `started` event (hive validated, forked, exec'd).
    pub process_start_ms: f64,
    /// `started` → the worker's first heartbeat (`loading`: runtime up, NATS connected).
    pub first_heartbeat_ms: f64,
    /// First heartbeat → first `idle` heartbeat (model loaded, context created, subscribed).
    pub model_load_ms: f64,
    /// `idle` heartbeat → the queen lists it idle (polled every millisecond).
    pub queen_ready_ms: f64,
    /// `POST /v1/workers` → the queen lists it idle.
    pub total_ms: f64,
    /// `POST /v1/workers` → its HTTP reply.
    pub reply_ms: f64,
}

async fn worker_entry(api: &Api, worker_id: &str) -> anyhow::Result<Option<Value>> {
    Ok(api
        .workers()
        .await?
        .into_iter()
        .find(|w| w.get("worker_id").and_then(Value::as_str) == Some(worker_id)))
}

async fn wait_listed_idle(api: &Api, worker_id: &str, within: Duration) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + within;
    loop {
        let entry = worker_entry(api, worker_id).await?;
        let now = Instant::now();
        if entry.as_ref().and_then(|w| w.get("state")).and_then(Value::as_str) == Some("idle") {
            return Ok(now);
        }
        if now > deadline {
            bail!("worker {worker_id} was not listed idle within {within:?} (last: {entry:?})");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Spawns a worker of `model` on `hive` through the queen and times its way to ready.
async fn spawn_timed(
    api: &Api,
    watcher: &Watcher,
    hive: &str,
    model: &str,
    threads: u32,
) -> anyhow::Result<SpawnTiming> {
    let t0 = Instant::now();
    let reply = api
        .post("/v1/workers", &json!({"model": model, "hive": hive, "slots": 4, "threads": threads}))
        .await?;
    let t_reply = Instant::now();
    let worker_id =
        reply.get("worker_id").and_then(Value::as_str).context("spawn reply without worker_id")?.to_owned();
    let pid = reply.get("pid").and_then(Value::as_u64).unwrap_or(0) as u32;
    let t_queen = wait_listed_idle(api, &worker_id, Duration::from_secs(120)).await?;
    // The queen may fold the `idle` heartbeat before this process's own subscriber has handled it: give
    // the subscriber a moment to catch up (the times it records are its receive stamps, so waiting here
    // changes no figure).
    let mut seen = watcher.seen(&worker_id);
    let catch_up = Instant::now() + Duration::from_secs(2);
    while (seen.started.is_none() || seen.first_heartbeat.is_none() || seen.idle.is_none())
        && Instant::now() < catch_up
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
        seen = watcher.seen(&worker_id);
    }
    let (Some(started), Some(first), Some(idle)) = (seen.started, seen.first_heartbeat, seen.idle) else {
        bail!("missing bus events for worker {worker_id}: {seen:?}");
    };
    let span = |a: Instant, b: Instant| stats::ms(b.saturating_duration_since(a));
    Ok(SpawnTiming {
        worker_id,
        pid,
        process_start_ms: span(t0, started),
        first_heartbeat_ms: span(started, first),
        model_load_ms: span(first, idle),
        queen_ready_ms: span(idle, t_queen),
        total_ms: span(t0, t_queen),
        reply_ms: span(t0, t_reply),
    })
}

/// Polls `GET /v1/workers` every millisecond until `worker_id` is offline or gone; the instant it was seen so.
async fn wait_offline(
    api: &Api,
    worker_id: &str,
    within: Duration,
) -> anyhow::Result<(Instant, &'static str)> {
    let deadline = Instant::now() + within;
    loop {
        let entry = worker_entry(api, worker_id).await?;
        let now = Instant::now();
        match entry.as_ref().and_then(|w| w.get("liveness")).and_then(Value::as_str) {
            None => return Ok((now, "removed")),
            Some("offline") => return Ok((now, "offline")),
            _ => {}
        }
        if now > deadline {
            bail!("worker {worker_id} still listed alive {within:?} after SIGKILL");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// One failure detection.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Detection {
    /// How the worker was run: `hive` (supervised) or `standalone` (heartbeats only).
    pub mode: String,
    /// SIGKILL → the queen lists it offline or gone, ms.
    pub kill_to_detect_ms: f64,
    /// Its last heartbeat (as received here) → detection, ms.
    pub last_heartbeat_to_detect_ms: f64,
    /// `offline` or `removed`.
    pub seen_as: String,
}

/// SIGKILLs a worker the hive supervises and times the queen's detection.
async fn kill_supervised(
    api: &Api,
    watcher: &Watcher,
    worker_id: &str,
    pid: u32,
) -> anyhow::Result<Detection> {
    if !stats::signal(pid, libc::SIGKILL) {
        bail!("cannot SIGKILL worker pid {pid}");
    }
    let killed = Instant::now();
    let (at, how) = wait_offline(api, worker_id, Duration::from_secs(30)).await?;
    let last = watcher.seen(worker_id).last_heartbeat.unwrap_or(killed);
    Ok(Detection {
        mode: "hive".to_owned(),
        kill_to_detect_ms: stats::ms(at.saturating_duration_since(killed)),
        last_heartbeat_to_detect_ms: stats::ms(at.saturating_duration_since(last)),
        seen_as: how.to_owned(),
    })
}

/// Starts a worker with no hive (so nothing reports its death but the silence of its heartbeats),
/// SIGKILLs it `offset` after one of its heartbeats, and times the queen's detection.
async fn kill_standalone(
    api: &Api,
    watcher: &Watcher,
    worker: &Standalone<'_>,
    n: usize,
    offset: Duration,
) -> anyhow::Result<Detection> {
    let worker_id = format!("bench-orphan-{n}");
    let args: Vec<String> = [
        "--worker-id",
        &worker_id,
        "--hive-id",
        "bench-no-hive",
        "--model-id",
        worker.model,
        "--slots",
        "1",
        "--ctx-per-slot",
        "256",
        "--threads",
        "1",
        "--heartbeat-ms",
        "1000",
        "--nats-url",
        worker.nats,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain(["--model-path".to_owned(), worker.model_path.display().to_string()])
    .collect();
    let mut proc = Proc::spawn(&worker_id, worker.worker_bin, &args, worker.log)?;
    wait_listed_idle(api, &worker_id, Duration::from_secs(60)).await?;
    // Wait for a fresh heartbeat, then kill `offset` after it.
    let before = watcher.seen(&worker_id).heartbeats;
    let deadline = Instant::now() + Duration::from_secs(5);
    while watcher.seen(&worker_id).heartbeats == before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let beat = watcher.seen(&worker_id).last_heartbeat.unwrap_or_else(Instant::now);
    tokio::time::sleep_until((beat + offset).into()).await;
    proc.check()?;
    proc.kill();
    let killed = Instant::now();
    let (at, how) = wait_offline(api, &worker_id, Duration::from_secs(30)).await?;
    let last = watcher.seen(&worker_id).last_heartbeat.unwrap_or(beat);
    Ok(Detection {
        mode: "standalone".to_owned(),
        kill_to_detect_ms: stats::ms(at.saturating_duration_since(killed)),
        last_heartbeat_to_detect_ms: stats::ms(at.saturating_duration_since(last)),
        seen_as: how.to_owned(),
    })
}

/// Median time to start `program args` and wait for its exit, ms (5 runs).
fn exec_ms(program: &Path, args: &[&str]) -> anyhow::Result<f64> {
    let mut samples = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let status = std::process::Command::new(program)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()?;
        if !status.success() {
            bail!("{} {} failed", program.display(), args.join(" "));
        }
        samples.push(stats::ms(t.elapsed()));
    }
    Ok(stats::median(&samples))
}

/// Median round trip of `GET /health` on the queen, ms (20 requests).
async fn http_rtt_ms(api: &Api) -> anyhow::Result<f64> {
    let mut samples = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        api.get("/health").await?;
        samples.push(stats::ms(t.elapsed()));
    }
    Ok(stats::median(&samples))
}

/// Floor of "first heartbeat": a fresh NATS connection plus one round trip from this process, ms.
async fn connect_floor_ms(nats: &str) -> anyhow::Result<f64> {
    let mut samples = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let bus = rbee_bus::connect(&rbee_bus::NatsConfig::url(nats)).await?;
        bus.round_trip().await?;
        samples.push(stats::ms(t.elapsed()));
    }
    Ok(stats::median(&samples))
}
