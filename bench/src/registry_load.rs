//! Section 3, registry: a real queen process folding the heartbeats of 1,000 hives and 10,000 workers, each
//! once a second, published from this process on loopback at the real messages' sizes (the templates
//! are heartbeats captured from the real hive and worker earlier in the run; every simulated hive lists
//! its 10 workers). Measures the fold rate, the queen's CPU and memory, and a burst that finds the
//! fold capacity; the floor is decoding the same bytes with serde in this process.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use rbee_bus::{
    subject, Bus, EventStamper, HiveHeartbeat, HiveId, HiveWorkerStatus, HiveWorkerSummary, WorkerHeartbeat,
    WorkerId,
};

use crate::api::{metric_sum, Api};
use crate::cluster::{Env, Proc};
use crate::report::{Fig, Report};
use crate::stats;

/// The section's title.
pub const SECTION: &str = "3. Registry";

/// Hives simulated.
pub const HIVES: usize = 1_000;
/// Workers per simulated hive.
pub const WORKERS_PER_HIVE: usize = 10;

/// What the registry load measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RegistryResult {
    /// Heartbeats offered per second (published, measured).
    pub offered_per_s: f64,
    /// Heartbeats the queen received per second over the window (`rbee_heartbeats_total`).
    pub folded_per_s: f64,
    /// Window, s.
    pub window_s: f64,
    /// Queen CPU over the window, percent of one core.
    pub queen_cpu_percent: f64,
    /// Queen CPU per heartbeat, µs.
    pub queen_cpu_us_per_heartbeat: f64,
    /// This process (the publishers) CPU over the window, percent of one core.
    pub publisher_cpu_percent: f64,
    /// Queen resident memory before any heartbeat, bytes.
    pub rss_idle_bytes: u64,
    /// Queen resident memory with the whole cluster registered, bytes.
    pub rss_loaded_bytes: u64,
    /// Workers the queen listed online at the end of the window.
    pub workers_online: f64,
    /// Hives the queen listed online at the end of the window.
    pub hives_online: f64,
    /// Workers in `GET /v1/workers`.
    pub workers_listed: usize,
    /// Sequence gaps the queen counted (lost heartbeats).
    pub seq_gaps: f64,
    /// Messages the queen rejected.
    pub rejected: f64,
    /// Bytes of one simulated hive heartbeat (10 workers listed).
    pub hive_bytes: usize,
    /// Bytes of one simulated worker heartbeat.
    pub worker_bytes: usize,
    /// Average heartbeat bytes the queen counted (`rbee_heartbeat_bytes_total` ÷ `rbee_heartbeats_total`).
    pub queen_avg_bytes: f64,
    /// Burst: heartbeats published as fast as possible.
    pub burst_messages: u64,
    /// Burst: heartbeats per second the queen folded (first publish → counter reached).
    pub burst_fold_per_s: f64,
    /// Burst: queen CPU per heartbeat, µs.
    pub burst_cpu_us_per_heartbeat: f64,
    /// Cores other processes took during the window.
    pub foreign_cores: f64,
    /// Floor: serde decode of one worker heartbeat in this process, µs.
    pub decode_worker_us: f64,
    /// Floor: serde decode of one simulated hive heartbeat in this process, µs.
    pub decode_hive_us: f64,
}

struct Publisher {
    subject: String,
    stamper: EventStamper,
    kind: Kind,
}

enum Kind {
    Hive(Box<HiveHeartbeat>),
    Worker(Box<WorkerHeartbeat>),
}

impl Publisher {
    fn payload(&self) -> Bytes {
        let bytes = match &self.kind {
            Kind::Hive(hb) => {
                let mut hb = (**hb).clone();
                hb.meta = self.stamper.next();
                serde_json::to_vec(&hb)
            }
            Kind::Worker(hb) => {
                let mut hb = (**hb).clone();
                hb.meta = self.stamper.next();
                serde_json::to_vec(&hb)
            }
        };
        Bytes::from(bytes.unwrap_or_default())
    }
}

fn publishers(hive: &HiveHeartbeat, worker: &WorkerHeartbeat) -> anyhow::Result<Vec<Publisher>> {
    let mut out = Vec::with_capacity(HIVES * (WORKERS_PER_HIVE + 1));
    for h in 0..HIVES {
        let hive_id: HiveId = format!("sim-h{h:04}").parse()?;
        let mut workers = Vec::new();
        for w in 0..WORKERS_PER_HIVE {
            let worker_id: WorkerId = format!("sim-w{:05}", h * WORKERS_PER_HIVE + w).parse()?;
            let mut hb = worker.clone();
            hb.worker_id = worker_id.clone();
            hb.hive_id = hive_id.clone();
            hb.pid = 10_000 + (h * WORKERS_PER_HIVE + w) as u32;
            workers.push(HiveWorkerSummary {
                worker_id: worker_id.clone(),
                model_id: hb.model_id.clone(),
                device: hb.device.clone(),
                pid: hb.pid,
                status: HiveWorkerStatus::Ready,
                started_at_ms: rbee_bus::now_ms(),
            });
            out.push(Publisher {
                subject: subject::worker_heartbeat(&worker_id),
                stamper: EventStamper::new(worker_id.as_str()),
                kind: Kind::Worker(Box::new(hb)),
            });
        }
        let mut hb = hive.clone();
        hb.hive_id = hive_id.clone();
        hb.hostname = format!("sim-host-{h:04}");
        hb.workers = workers;
        out.push(Publisher {
            subject: subject::hive_heartbeat(&hive_id),
            stamper: EventStamper::new(hive_id.as_str()),
            kind: Kind::Hive(Box::new(hb)),
        });
    }
    Ok(out)
}

fn decode_us<T: serde::de::DeserializeOwned>(bytes: &[u8], rounds: u32) -> f64 {
    let t = Instant::now();
    for _ in 0..rounds {
        let v: Result<T, _> = serde_json::from_slice(std::hint::black_box(bytes));
        std::hint::black_box(v.is_ok());
    }
    stats::us(t.elapsed()) / f64::from(rounds)
}

/// Runs the load (for `window`) against a queen started here on `nats`, simulating hives and workers
/// from the real `templates`, and records the section's figures.
pub async fn section(
    report: &mut Report,
    env: &Env,
    nats: &str,
    templates: &(HiveHeartbeat, WorkerHeartbeat),
    window: Duration,
) -> anyhow::Result<RegistryResult> {
    let r = run(nats, &env.queen_bin, &env.logs, &templates.0, &templates.1, window).await?;
    figures(report, &r, templates);
    Ok(r)
}

fn figures(report: &mut Report, r: &RegistryResult, templates: &(HiveHeartbeat, WorkerHeartbeat)) {
    let per_hive = WORKERS_PER_HIVE as f64;
    let entries = (HIVES * (WORKERS_PER_HIVE + 1)) as f64;
    let mix_decode_us = (r.decode_hive_us + r.decode_worker_us * per_hive) / (per_hive + 1.0);
    let real_hive = serde_json::to_vec(&templates.0).map_or(0, |v| v.len());
    let real_worker = serde_json::to_vec(&templates.1).map_or(0, |v| v.len());
    let avg_bytes = (r.hive_bytes as f64 + r.worker_bytes as f64 * per_hive) / (per_hive + 1.0);
    let real_label = format!("real hive heartbeat ({} worker listed)", templates.0.workers.len());
    let figures = [
        Fig::new(
            "registry.folded_per_s",
            "heartbeats folded per second (1,000 hives + 10,000 workers at 1/s)",
        )
        .value(r.folded_per_s, "/s")
        .vs("offered", r.offered_per_s),
        Fig::new("registry.workers_online", "workers the queen lists online")
            .value(r.workers_online, "")
            .vs("simulated", 10_000.0),
        Fig::new("registry.queen_cpu_percent", "queen CPU at that load (% of one core)")
            .value(r.queen_cpu_percent, "%")
            .vs("serde decode of the same messages", mix_decode_us * r.offered_per_s / 1e4),
        Fig::new("registry.queen_cpu_us_per_heartbeat", "queen CPU per heartbeat")
            .value(r.queen_cpu_us_per_heartbeat, "µs")
            .vs("serde decode only", mix_decode_us),
        Fig::new("registry.burst_fold_per_s", "fold capacity: 50,000 worker heartbeats in a burst")
            .value(r.burst_fold_per_s, "/s")
            .vs("serde decode only, one core", 1e6 / r.decode_worker_us),
        Fig::new("registry.queen_rss_mib", "queen resident memory, 11,000 entries")
            .value(r.rss_loaded_bytes as f64 / 1048576.0, "MiB")
            .vs("queen idle", r.rss_idle_bytes as f64 / 1048576.0),
        Fig::new("registry.bytes_per_entry", "queen memory per entry ((loaded − idle) ÷ 11,000)")
            .value((r.rss_loaded_bytes.saturating_sub(r.rss_idle_bytes)) as f64 / entries, "B")
            .vs("average heartbeat size", avg_bytes),
        Fig::new("registry.hive_bytes", "bytes per hive heartbeat (10 workers listed)")
            .value(r.hive_bytes as f64, "B")
            .vs(real_label, real_hive as f64),
        Fig::new("registry.worker_bytes", "bytes per worker heartbeat")
            .value(r.worker_bytes as f64, "B")
            .vs("real worker heartbeat", real_worker as f64),
        Fig::new("registry.bus_bytes_per_s", "heartbeat bytes into the queen per second")
            .value(r.folded_per_s * r.queen_avg_bytes, "B/s"),
    ];
    for fig in figures {
        report.figure(SECTION, fig);
    }
    report.detail("registry", serde_json::json!(r));
}

/// Runs the load against a queen started here, on `nats`; `queen_bin` is the release binary.
async fn run(
    nats: &str,
    queen_bin: &std::path::Path,
    log_dir: &std::path::Path,
    hive_template: &HiveHeartbeat,
    worker_template: &WorkerHeartbeat,
    window: Duration,
) -> anyhow::Result<RegistryResult> {
    let mut r = RegistryResult::default();
    let pubs = Arc::new(publishers(hive_template, worker_template)?);
    let total = pubs.len();
    r.hive_bytes = pubs.iter().find(|p| matches!(p.kind, Kind::Hive(_))).map_or(0, |p| p.payload().len());
    r.worker_bytes = pubs.iter().find(|p| matches!(p.kind, Kind::Worker(_))).map_or(0, |p| p.payload().len());

    // The floor: decoding the same bytes.
    let hive_sample =
        pubs.iter().find(|p| matches!(p.kind, Kind::Hive(_))).map(|p| p.payload()).unwrap_or_default();
    let worker_sample =
        pubs.iter().find(|p| matches!(p.kind, Kind::Worker(_))).map(|p| p.payload()).unwrap_or_default();
    r.decode_hive_us = decode_us::<HiveHeartbeat>(&hive_sample, 5_000);
    r.decode_worker_us = decode_us::<WorkerHeartbeat>(&worker_sample, 20_000);

    let port = crate::cluster::free_port();
    let mut queen = Proc::spawn(
        "queen (registry load)",
        queen_bin,
        &crate::cluster::queen_args(nats, port),
        &log_dir.join("queen-registry.log"),
    )?;
    let api = Api::new(port);
    api.wait_healthy(&mut queen, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let qpid = queen.pid();
    r.rss_idle_bytes = stats::rss_bytes(qpid);

    let bus: Bus = rbee_bus::connect(&rbee_bus::NatsConfig::url(nats)).await?;
    let paused = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let task = {
        let (bus, pubs, paused, stop, published) =
            (bus.clone(), pubs.clone(), paused.clone(), stop.clone(), published.clone());
        tokio::spawn(async move {
            // 100 ticks a second, each publishing a hundredth of the cluster: every publisher once a second.
            let per_tick = total.div_ceil(100);
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut next = 0usize;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if paused.load(Ordering::Relaxed) {
                    continue;
                }
                for _ in 0..per_tick {
                    let p = &pubs[next];
                    next = (next + 1) % total;
                    if bus.client().publish(p.subject.clone(), p.payload()).await.is_err() {
                        return;
                    }
                    published.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    // Warm up: every publisher heard at least twice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    queen.check()?;
    let hb0 = api.metric("rbee_heartbeats_total").await?;
    let bytes0 = api.metric("rbee_heartbeat_bytes_total").await?;
    let pub0 = published.load(Ordering::Relaxed);
    let cpu0 = stats::cpu_seconds(qpid).context("queen cpu")?;
    let self0 = stats::cpu_seconds(std::process::id()).unwrap_or(0.0);
    let foreign = stats::ForeignLoad::start();
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let cpu1 = stats::cpu_seconds(qpid).context("queen cpu")?;
    let self1 = stats::cpu_seconds(std::process::id()).unwrap_or(0.0);
    let elapsed = t0.elapsed().as_secs_f64();
    r.foreign_cores = foreign.cores();
    let pub1 = published.load(Ordering::Relaxed);
    let metrics = api.get_text("/metrics").await?;
    let hb1 = metric_sum(&metrics, "rbee_heartbeats_total", None);
    let bytes1 = metric_sum(&metrics, "rbee_heartbeat_bytes_total", None);
    r.window_s = elapsed;
    r.offered_per_s = (pub1 - pub0) as f64 / elapsed;
    r.folded_per_s = (hb1 - hb0) / elapsed;
    r.queen_cpu_percent = (cpu1 - cpu0) / elapsed * 100.0;
    r.queen_cpu_us_per_heartbeat = if hb1 > hb0 { (cpu1 - cpu0) * 1e6 / (hb1 - hb0) } else { 0.0 };
    r.publisher_cpu_percent = (self1 - self0) / elapsed * 100.0;
    r.queen_avg_bytes = if hb1 > hb0 { (bytes1 - bytes0) / (hb1 - hb0) } else { 0.0 };
    r.rss_loaded_bytes = stats::rss_bytes(qpid);
    r.workers_online =
        metric_sum(&metrics, "rbee_registry_entries", Some("kind=\"worker\",liveness=\"online\""));
    r.hives_online = metric_sum(&metrics, "rbee_registry_entries", Some("kind=\"hive\",liveness=\"online\""));
    r.seq_gaps = metric_sum(&metrics, "rbee_heartbeat_seq_gaps", None);
    r.rejected = metric_sum(&metrics, "rbee_rejected_messages_total", None);
    r.workers_listed = api.workers().await?.len();

    // Burst: as fast as this process can publish, to find how fast the queen folds.
    paused.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let burst: Vec<&Publisher> = pubs.iter().filter(|p| matches!(p.kind, Kind::Worker(_))).collect();
    let rounds = 5u64;
    let payloads: Vec<(String, Bytes)> = (0..rounds)
        .flat_map(|_| burst.iter().map(|p| (p.subject.clone(), p.payload())).collect::<Vec<_>>())
        .collect();
    r.burst_messages = payloads.len() as u64;
    let base = api.metric("rbee_heartbeats_total").await?;
    let cpu_b0 = stats::cpu_seconds(qpid).context("queen cpu")?;
    let tb = Instant::now();
    for (subject, payload) in payloads {
        bus.client().publish(subject, payload).await?;
    }
    bus.client().flush().await?;
    let target = base + r.burst_messages as f64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let done_at = loop {
        let seen = api.metric("rbee_heartbeats_total").await?;
        if seen >= target {
            break Instant::now();
        }
        if Instant::now() > deadline {
            bail!("the queen received {} of {} burst heartbeats within 60 s", seen - base, r.burst_messages);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let cpu_b1 = stats::cpu_seconds(qpid).context("queen cpu")?;
    r.burst_fold_per_s = r.burst_messages as f64 / done_at.saturating_duration_since(tb).as_secs_f64();
    // Includes the queen's answers to the /metrics polls (every 25 ms): an upper bound.
    r.burst_cpu_us_per_heartbeat = (cpu_b1 - cpu_b0) * 1e6 / r.burst_messages as f64;

    stop.store(true, Ordering::Relaxed);
    let _ = task.await;
    queen.stop(Duration::from_secs(5));
    Ok(r)
}
