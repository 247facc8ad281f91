//! Section 5, control path: spawn request to worker ready, split by the events on the bus (the hive's
//! `started` lifecycle event, the worker's first heartbeat, its first `idle` heartbeat, the queen's
//! listing), and failure detection: a worker killed with SIGKILL until the queen's `GET /v1/workers`
//! shows it offline or gone, with its hive watching (lifecycle event) and without (heartbeats only).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use rbee_bus::{subject, Bus, HiveHeartbeat, LifecycleEvent, WorkerHeartbeat, WorkerLifecycle, WorkerState};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::cluster::{Api, Proc};
use crate::stats;

/// What the bus said about one worker, with this process's receive instants.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// The hive's `started` lifecycle event.
    pub started: Option<Instant>,
    /// The first heartbeat.
    pub first_heartbeat: Option<Instant>,
    /// The first `idle` heartbeat.
    pub idle: Option<Instant>,
    /// The latest heartbeat.
    pub last_heartbeat: Option<Instant>,
    /// Heartbeats seen.
    pub heartbeats: u64,
}

/// Watches heartbeats and lifecycle events; keeps the latest real hive and worker heartbeats as
/// templates for the registry load.
#[derive(Clone)]
pub struct Watcher {
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    hive: Arc<Mutex<Option<HiveHeartbeat>>>,
    worker: Arc<Mutex<Option<WorkerHeartbeat>>>,
    stop: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Watcher {
    /// Subscribes on `bus` (confirmed by a round trip before it returns).
    pub async fn start(bus: &Bus, real_hive: &str) -> anyhow::Result<Self> {
        let client = bus.client();
        let workers = client.subscribe(subject::WORKER_HEARTBEAT_ALL).await?;
        let lifecycle = client.subscribe(subject::WORKER_LIFECYCLE_ALL).await?;
        let hives = client.subscribe(subject::HIVE_HEARTBEAT_ALL).await?;
        bus.round_trip().await?;
        let w = Self {
            seen: Arc::default(),
            hive: Arc::default(),
            worker: Arc::default(),
            stop: CancellationToken::new(),
        };
        let me = w.clone();
        let real_hive = real_hive.to_owned();
        let mut merged = futures::stream::select(futures::stream::select(workers, lifecycle), hives);
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = me.stop.cancelled() => return,
                    msg = merged.next() => match msg { Some(m) => m, None => return },
                };
                let at = Instant::now();
                let subj = msg.subject.as_str();
                if subject::matches(subject::WORKER_HEARTBEAT_ALL, subj) {
                    let Ok(hb) = serde_json::from_slice::<WorkerHeartbeat>(&msg.payload) else { continue };
                    {
                        let mut seen = lock(&me.seen);
                        let s = seen.entry(hb.worker_id.to_string()).or_default();
                        s.first_heartbeat.get_or_insert(at);
                        s.last_heartbeat = Some(at);
                        s.heartbeats += 1;
                        if hb.state == WorkerState::Idle {
                            s.idle.get_or_insert(at);
                        }
                    }
                    if hb.hive_id.as_str() == real_hive && hb.state == WorkerState::Idle {
                        *lock(&me.worker) = Some(hb);
                    }
                } else if subject::matches(subject::WORKER_LIFECYCLE_ALL, subj) {
                    let Ok(ev) = serde_json::from_slice::<WorkerLifecycle>(&msg.payload) else { continue };
                    if matches!(ev.event, LifecycleEvent::Started { .. }) {
                        lock(&me.seen).entry(ev.worker_id.to_string()).or_default().started.get_or_insert(at);
                    }
                } else if let Ok(hb) = serde_json::from_slice::<HiveHeartbeat>(&msg.payload) {
                    if hb.hive_id.as_str() == real_hive && !hb.workers.is_empty() {
                        *lock(&me.hive) = Some(hb);
                    }
                }
            }
        });
        Ok(w)
    }

    /// What was seen of a worker.
    pub fn seen(&self, worker_id: &str) -> Seen {
        lock(&self.seen).get(worker_id).cloned().unwrap_or_default()
    }

    /// The latest real hive heartbeat that listed a worker, and the latest real idle worker heartbeat.
    pub fn templates(&self) -> Option<(HiveHeartbeat, WorkerHeartbeat)> {
        Some((lock(&self.hive).clone()?, lock(&self.worker).clone()?))
    }

    /// Stops watching.
    pub fn stop(&self) {
        self.stop.cancel();
    }
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
pub async fn spawn_timed(
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
pub async fn kill_supervised(
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
#[allow(clippy::too_many_arguments)]
pub async fn kill_standalone(
    api: &Api,
    watcher: &Watcher,
    worker_bin: &std::path::Path,
    model_path: &std::path::Path,
    model: &str,
    nats: &str,
    log: &std::path::Path,
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
        model,
        "--slots",
        "1",
        "--ctx-per-slot",
        "256",
        "--threads",
        "1",
        "--heartbeat-ms",
        "1000",
        "--nats-url",
        nats,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain(["--model-path".to_owned(), model_path.display().to_string()])
    .collect();
    let mut proc = Proc::spawn(&worker_id, worker_bin, &args, log)?;
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
pub fn exec_ms(program: &std::path::Path, args: &[&str]) -> anyhow::Result<f64> {
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
pub async fn http_rtt_ms(api: &Api) -> anyhow::Result<f64> {
    let mut samples = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        api.get("/health").await?;
        samples.push(stats::ms(t.elapsed()));
    }
    Ok(stats::median(&samples))
}

/// Floor of "first heartbeat": a fresh NATS connection plus one round trip from this process, ms.
pub async fn connect_floor_ms(nats: &str) -> anyhow::Result<f64> {
    let mut samples = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let bus = rbee_bus::connect(&rbee_bus::NatsConfig::url(nats)).await?;
        bus.round_trip().await?;
        samples.push(stats::ms(t.elapsed()));
    }
    Ok(stats::median(&samples))
}
