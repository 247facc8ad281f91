//! Section 4, scheduler: decision latency with 100, 1,000 and 10,000 workers in the view, in process. Timed:
//! `place` (what the queen runs under its registry lock for every job: snapshot of the model's workers
//! and every hive, `schedule`, slot reservation) and `schedule` alone on a ready snapshot. Floor: one
//! bare pass over the same workers picking the least loaded (the least any decision must do).
//! Worst case: every worker serves the requested model, so every one is a candidate.

use std::time::Instant;

use rbee_bus::{
    HiveHeartbeat, HiveId, HiveWorkerStatus, HiveWorkerSummary, ModelId, WorkerHeartbeat, WorkerId,
    WorkerState,
};
use rbee_queen::membership::{Registry, RegistryConfig};
use rbee_queen::placement::place;
use rbee_queen::scheduler::{schedule, Placement, PlacementRequest};

use crate::report::{num, Fig, Report};
use crate::stats::{self, Summary};

/// The section's title.
pub const SECTION: &str = "4. Scheduler";

/// Figures at one registry size.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SchedResult {
    /// Workers in the view.
    pub workers: usize,
    /// Hives in the view.
    pub hives: usize,
    /// Decisions timed.
    pub iterations: usize,
    /// `place`, µs.
    pub place_us: Summary,
    /// `snapshot_for_model` alone (the copy `place` makes), µs.
    pub snapshot_us: Summary,
    /// `schedule` on a ready snapshot, µs.
    pub schedule_us: Summary,
    /// Bare least-loaded pass, µs.
    pub floor_us: Summary,
}

/// Builds a registry of `workers` workers (10 per hive) from the real templates, all at `now`.
fn registry(
    workers: usize,
    hive: &HiveHeartbeat,
    worker: &WorkerHeartbeat,
    now: Instant,
) -> anyhow::Result<(Registry, ModelId)> {
    let mut reg = Registry::new(RegistryConfig::default());
    let model = worker.model_id.clone();
    let hives = workers.div_ceil(10);
    let mut n = 0usize;
    for h in 0..hives {
        let hive_id: HiveId = format!("sched-h{h:05}").parse()?;
        let mut summaries = Vec::new();
        for i in 0..10 {
            if n >= workers {
                break;
            }
            let worker_id: WorkerId = format!("sched-w{n:06}").parse()?;
            let mut hb = worker.clone();
            hb.worker_id = worker_id.clone();
            hb.hive_id = hive_id.clone();
            hb.meta = rbee_bus::EventStamper::new(worker_id.as_str()).next();
            // A spread of loads and speeds, so the comparison does real work.
            hb.slots_total = 4;
            hb.slots_busy = ((n * 7 + i) % 4) as u32;
            hb.state = if hb.slots_busy > 0 { WorkerState::Busy } else { WorkerState::Idle };
            hb.tokens_per_second = 20.0 + ((n * 13) % 100) as f64;
            summaries.push(HiveWorkerSummary {
                worker_id: worker_id.clone(),
                model_id: hb.model_id.clone(),
                device: hb.device.clone(),
                pid: n as u32 + 1,
                status: HiveWorkerStatus::Ready,
                started_at_ms: 0,
            });
            reg.apply_worker(&hb, now);
            n += 1;
        }
        let mut hb = hive.clone();
        hb.hive_id = hive_id.clone();
        hb.meta = rbee_bus::EventStamper::new(hive_id.as_str()).next();
        hb.workers = summaries;
        reg.apply_hive(&hb, now);
    }
    Ok((reg, model))
}

/// Times decisions at each size (registries built from the real `hive` and `worker` heartbeats) and
/// records the section's figures.
pub fn section(
    report: &mut Report,
    sizes: &[(usize, usize)],
    hive: &HiveHeartbeat,
    worker: &WorkerHeartbeat,
) -> anyhow::Result<Vec<SchedResult>> {
    let sched = run(sizes, hive, worker)?;
    for s in &sched {
        let (w, n) = (s.workers, num(s.workers as f64));
        let floor = "bare least-loaded pass";
        let figures = [
            Fig::new(format!("scheduler.place.{w}.p50_us"), format!("place(), {n} workers, p50"))
                .value(s.place_us.p50, "µs")
                .vs(format!("{floor} p50"), s.floor_us.p50),
            Fig::new(format!("scheduler.place.{w}.p99_us"), format!("place(), {n} workers, p99"))
                .value(s.place_us.p99, "µs")
                .vs(format!("{floor} p99"), s.floor_us.p99),
            Fig::new(
                format!("scheduler.schedule.{w}.p50_us"),
                format!("schedule() on a ready snapshot, {n} workers, p50"),
            )
            .value(s.schedule_us.p50, "µs")
            .vs(format!("{floor} p50"), s.floor_us.p50),
        ];
        for fig in figures {
            report.figure(SECTION, fig);
        }
    }
    report.detail("scheduler", serde_json::json!(sched));
    Ok(sched)
}

/// Times decisions at each size.
fn run(
    sizes: &[(usize, usize)],
    hive: &HiveHeartbeat,
    worker: &WorkerHeartbeat,
) -> anyhow::Result<Vec<SchedResult>> {
    let mut out = Vec::new();
    for &(workers, iterations) in sizes {
        let now = Instant::now();
        let (mut reg, model) = registry(workers, hive, worker, now)?;
        let request = PlacementRequest { queue_capacity: 256, ..PlacementRequest::new(model.clone()) };
        let at = now + std::time::Duration::from_millis(10);
        let (mut place_us, mut schedule_us, mut floor_us, mut snapshot_us) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let snapshot = reg.snapshot_for_model(&model, at);
        anyhow::ensure!(
            snapshot.workers.len() == workers,
            "view has {} workers, not {workers}",
            snapshot.workers.len()
        );
        for _ in 0..iterations {
            let t = Instant::now();
            let placement = place(&mut reg, &request, at);
            place_us.push(stats::us(t.elapsed()));
            let Placement::Assign { worker_id } = placement else {
                anyhow::bail!("expected an assignment with {workers} workers, got {placement:?}");
            };
            reg.release_slot(&worker_id);

            let t = Instant::now();
            // What `place` copies before it can assign: the model's workers (the hives only for a spawn).
            let copy = reg.list_workers_for_model(&model, at);
            snapshot_us.push(stats::us(t.elapsed()));
            drop(std::hint::black_box(copy));

            let t = Instant::now();
            let decision = schedule(std::hint::black_box(&snapshot), &request);
            schedule_us.push(stats::us(t.elapsed()));
            std::hint::black_box(decision);

            let t = Instant::now();
            let best = snapshot.workers.iter().filter(|w| w.assignable).min_by_key(|w| {
                (
                    w.slots_used() * 1000 / w.slots_total.max(1),
                    std::cmp::Reverse((w.tokens_per_second * 1000.0) as u64),
                )
            });
            floor_us.push(stats::us(t.elapsed()));
            std::hint::black_box(best);
        }
        out.push(SchedResult {
            workers,
            hives: workers.div_ceil(10),
            iterations,
            place_us: Summary::of(&place_us),
            snapshot_us: Summary::of(&snapshot_us),
            schedule_us: Summary::of(&schedule_us),
            floor_us: Summary::of(&floor_us),
        });
    }
    Ok(out)
}
