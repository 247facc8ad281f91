//! The scheduler over registry snapshots: readable reasons in plain cases, and properties over random
//! clusters (hives with devices and catalogs, workers in every state, fences, reservations).

mod common;

use std::time::{Duration, Instant};

use common::{hive_id, model_id, worker_id};
use proptest::prelude::*;
use rbee_bus::{
    Backend, CpuInfo, DeviceInfo, DeviceKind, EventMeta, HiveHeartbeat, HiveId, HiveState, HiveWorkerStatus,
    HiveWorkerSummary, MemoryInfo, ModelSummary, WorkerHeartbeat, WorkerId, WorkerState,
};
use rbee_queen::membership::{Liveness, Registry, RegistryConfig, RegistrySnapshot, WorkerView};
use rbee_queen::placement::place;
use rbee_queen::scheduler::{estimate_spawn_bytes, schedule, Placement, PlacementRequest, PREFIX_LOAD_SLACK};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn meta(publisher: &str) -> EventMeta {
    EventMeta { publisher: publisher.into(), epoch: "e1".into(), seq: 1, sent_at_ms: 0 }
}

fn device(id: &str, kind: DeviceKind, free_bytes: u64) -> DeviceInfo {
    DeviceInfo {
        id: id.into(),
        kind,
        index: 0,
        name: id.into(),
        uuid: None,
        total_bytes: free_bytes.max(GIB) * 2,
        free_bytes,
        utilization_percent: None,
        compute_capability: None,
    }
}

fn model(n: usize, size_bytes: u64) -> ModelSummary {
    ModelSummary {
        model_id: model_id(n),
        size_bytes,
        architecture: "llama".into(),
        parameter_count: size_bytes * 2,
        quantization: "Q4_1".into(),
        context_length: Some(8192),
        load_failures: None,
    }
}

fn hive_beat(
    hive: usize,
    state: HiveState,
    devices: Vec<DeviceInfo>,
    models: Vec<ModelSummary>,
) -> HiveHeartbeat {
    let id = hive_id(hive);
    HiveHeartbeat {
        v: 1,
        meta: meta(id.as_str()),
        hive_id: id,
        hostname: format!("host-{hive}"),
        version: "0.1.0".into(),
        state,
        interval_ms: 1000,
        cpu: CpuInfo::default(),
        ram: MemoryInfo { total_bytes: 24 * GIB, available_bytes: 16 * GIB },
        devices,
        workers: Vec::new(),
        models,
    }
}

#[allow(clippy::too_many_arguments)]
fn worker_beat(
    worker: usize,
    hive: usize,
    model: usize,
    state: WorkerState,
    slots_total: u32,
    slots_busy: u32,
    tokens_per_second: f64,
) -> WorkerHeartbeat {
    let id = worker_id(worker);
    WorkerHeartbeat {
        v: 1,
        meta: meta(id.as_str()),
        worker_id: id,
        hive_id: hive_id(hive),
        model_id: model_id(model),
        state,
        backend: Backend::Cpu,
        device: "cpu".into(),
        slots_total,
        slots_busy,
        ctx_per_slot: 2048,
        tokens_per_second,
        memory_bytes: 100 * MIB,
        pid: 1,
        interval_ms: 1000,
        prefix_fingerprints: Vec::new(),
        jobs_accepted: None,
    }
}

fn request(model: usize) -> PlacementRequest {
    PlacementRequest { queue_capacity: 8, ..PlacementRequest::new(model_id(model)) }
}

fn reason(placement: &Placement) -> &str {
    match placement {
        Placement::Queue { reason } | Placement::Refuse { reason } => reason,
        _ => "",
    }
}

// ----- plain cases -----

#[test]
fn a_model_no_host_can_hold_alone_names_the_hosts_that_together_could() {
    let now = Instant::now();
    let mut registry = Registry::new(RegistryConfig::default());
    let cpu = |gib: u64| vec![device("cpu", DeviceKind::Cpu, gib * GIB)];
    registry.apply_hive(&hive_beat(0, HiveState::Online, cpu(2), vec![model(0, 4 * GIB)]), now);
    registry.apply_hive(&hive_beat(1, HiveState::Online, cpu(3), vec![]), now);
    let why = reason(&schedule(&registry.snapshot(now), &request(0))).to_owned();
    assert_eq!(
        why,
        "model model-0 does not fit the free memory of any hive (needs 4788 MiB, most free 2048 MiB); \
         split across 2 hosts (hive-0 40%, hive-1 60%) it would fit, which rbee does not run yet"
    );
    // Less pooled memory than the model needs: no split is offered.
    let mut smaller = hive_beat(1, HiveState::Online, cpu(1), vec![]);
    smaller.meta.seq = 2;
    registry.apply_hive(&smaller, now);
    let why = reason(&schedule(&registry.snapshot(now), &request(0))).to_owned();
    assert!(!why.contains("split"), "{why}");
}

#[test]
fn queue_reasons_name_the_model_and_the_obstacle() {
    let now = Instant::now();
    let mut registry = Registry::new(RegistryConfig::default());
    let empty = registry.snapshot(now);
    assert_eq!(reason(&schedule(&empty, &request(0))), "no hive is online to run model model-0");

    let cpu = || vec![device("cpu", DeviceKind::Cpu, 2 * GIB)];
    registry.apply_hive(&hive_beat(0, HiveState::Online, cpu(), vec![model(1, 4 * GIB)]), now);
    assert_eq!(reason(&schedule(&registry.snapshot(now), &request(0))), "no hive has model model-0");

    registry.apply_hive(&hive_beat(1, HiveState::Online, cpu(), vec![model(0, 4 * GIB)]), now);
    assert_eq!(
        reason(&schedule(&registry.snapshot(now), &request(0))),
        "model model-0 does not fit the free memory of any hive (needs 4788 MiB, most free 2048 MiB)"
    );

    let mut leaving = hive_beat(1, HiveState::Leaving, cpu(), vec![model(0, 4 * GIB)]);
    leaving.meta.seq = 2;
    registry.apply_hive(&leaving, now);
    assert_eq!(
        reason(&schedule(&registry.snapshot(now), &request(0))),
        "no online hive has model model-0 (1 hive with it offline or leaving)"
    );

    for worker in [0, 1] {
        registry.apply_worker(&worker_beat(worker, 0, 1, WorkerState::Busy, 2, 2, 10.0), now);
    }
    assert_eq!(
        reason(&schedule(&registry.snapshot(now), &request(1))),
        "waiting for a slot on 2 workers of model model-1"
    );

    registry.apply_worker(&worker_beat(2, 0, 1, WorkerState::Loading, 2, 0, 0.0), now);
    assert_eq!(
        reason(&schedule(&registry.snapshot(now), &request(1))),
        "waiting for 1 worker loading model model-1"
    );

    let full = PlacementRequest { queue_len: 8, ..request(1) };
    assert_eq!(
        schedule(&registry.snapshot(now), &full),
        Placement::Refuse {
            reason: "queue is full (8 of 8 jobs waiting) and no worker of model model-1 has a free slot"
                .into()
        }
    );
}

#[test]
fn spawn_prefers_an_accelerator_then_the_most_free_memory() {
    let now = Instant::now();
    let mut registry = Registry::new(RegistryConfig::default());
    let small = model(0, GIB);
    registry.apply_hive(
        &hive_beat(
            0,
            HiveState::Online,
            vec![device("cpu", DeviceKind::Cpu, 20 * GIB), device("cuda:0", DeviceKind::Cuda, 3 * GIB)],
            vec![small.clone()],
        ),
        now,
    );
    registry.apply_hive(
        &hive_beat(
            1,
            HiveState::Online,
            vec![device("cuda:0", DeviceKind::Cuda, 6 * GIB)],
            vec![small.clone()],
        ),
        now,
    );
    registry.apply_hive(
        &hive_beat(2, HiveState::Online, vec![device("cuda:0", DeviceKind::Cuda, 23 * GIB)], vec![]),
        now,
    );
    let decision = schedule(&registry.snapshot(now), &request(0));
    assert_eq!(decision, Placement::Spawn { hive_id: hive_id(1), device: "cuda:0".into() });
    // An explicit estimate beyond every GPU leaves the CPU.
    let big = PlacementRequest { estimated_bytes: Some(10 * GIB), ..request(0) };
    assert_eq!(
        schedule(&registry.snapshot(now), &big),
        Placement::Spawn { hive_id: hive_id(0), device: "cpu".into() }
    );
    assert_eq!(estimate_spawn_bytes(&small), (GIB + 256 * MIB) * 11 / 10);
    // Busy workers of the model do not block a spawn when a hive has room.
    registry.apply_worker(&worker_beat(0, 1, 0, WorkerState::Busy, 1, 1, 10.0), now);
    assert!(matches!(schedule(&registry.snapshot(now), &request(0)), Placement::Spawn { .. }));
}

#[test]
fn spawn_prefers_the_hive_measured_fastest_and_replicas_skip_hives_taken() {
    let now = Instant::now();
    let mut registry = Registry::new(RegistryConfig::default());
    for hive in 0..3 {
        let free = if hive == 0 { 20 * GIB } else { 10 * GIB };
        registry.apply_hive(
            &hive_beat(
                hive,
                HiveState::Online,
                vec![device("cpu", DeviceKind::Cpu, free)],
                vec![model(0, GIB)],
            ),
            now,
        );
    }
    // Unmeasured: the most free memory.
    let explicit = PlacementRequest { spawn_only: true, ..request(0) };
    assert_eq!(
        schedule(&registry.snapshot(now), &explicit),
        Placement::Spawn { hive_id: hive_id(0), device: "cpu".into() }
    );
    // Hive 2 alone measured: not a reason to pass over hive 0's memory (unmeasured is not slow).
    registry.apply_worker(&worker_beat(7, 2, 0, WorkerState::Busy, 4, 1, 60.0), now);
    registry.remove_worker(&worker_id(7));
    assert_eq!(
        schedule(&registry.snapshot(now), &explicit),
        Placement::Spawn { hive_id: hive_id(0), device: "cpu".into() }
    );
    // Hive 0 measured within the margin (2 streams at 110 tok/s: 55 per stream): memory still decides.
    registry.apply_worker(&worker_beat(8, 0, 0, WorkerState::Busy, 4, 2, 110.0), now);
    registry.remove_worker(&worker_id(8));
    assert_eq!(
        schedule(&registry.snapshot(now), &explicit),
        Placement::Spawn { hive_id: hive_id(0), device: "cpu".into() }
    );
    // Hive 0 then at 20 tok/s per stream (2 streams at 40; smoothed, 44.5) against hive 2's 60: hive 2
    // first, even after its worker is gone.
    registry.apply_worker(&worker_beat(9, 0, 0, WorkerState::Busy, 4, 2, 40.0), now);
    registry.remove_worker(&worker_id(9));
    assert_eq!(
        schedule(&registry.snapshot(now), &explicit),
        Placement::Spawn { hive_id: hive_id(2), device: "cpu".into() }
    );
    // Replicas: hives already taken are skipped, fastest next.
    let second = PlacementRequest { exclude_hives: vec![hive_id(2)], ..explicit.clone() };
    assert_eq!(
        schedule(&registry.snapshot(now), &second),
        Placement::Spawn { hive_id: hive_id(0), device: "cpu".into() }
    );
    let none = PlacementRequest { exclude_hives: (0..3).map(hive_id).collect(), ..explicit };
    assert!(matches!(schedule(&registry.snapshot(now), &none), Placement::Queue { .. }));
}

#[test]
fn a_model_that_fits_nowhere_evicts_the_least_recently_used_idle_worker_never_a_busy_one() {
    use rbee_queen::keep_alive::Evictable;
    let now = Instant::now();
    let mut registry = Registry::new(RegistryConfig::default());
    // 100 MiB free of 2 GiB: model 0 (300 MiB) fits only once another worker goes.
    registry.apply_hive(
        &hive_beat(
            0,
            HiveState::Online,
            vec![device("cpu", DeviceKind::Cpu, 100 * MIB)],
            vec![model(0, 300 * MIB), model(1, 300 * MIB), model(2, 300 * MIB)],
        ),
        now,
    );
    registry.apply_worker(&worker_beat(5, 0, 1, WorkerState::Idle, 4, 0, 0.0), now);
    registry.apply_worker(&worker_beat(6, 0, 2, WorkerState::Idle, 4, 0, 0.0), now);
    let offered = |ids: &[usize]| -> Vec<Evictable> {
        ids.iter()
            .enumerate()
            .map(|(i, n)| Evictable { worker_id: worker_id(*n), idle_ms: 1000 - i as u64, stopping: false })
            .collect()
    };
    assert!(reason(&place(&mut registry, &request(0), now)).contains("does not fit"), "nothing offered");
    // Worker 6 idle the longest: it goes, and one is enough.
    let evict = PlacementRequest { evictable: offered(&[6, 5]), ..request(0) };
    match place(&mut registry, &evict, now) {
        Placement::Evict { hive_id: h, workers, reason } => {
            assert_eq!((h, workers), (hive_id(0), vec![worker_id(6)]));
            assert!(reason.contains("worker-6") || reason.contains(worker_id(6).as_str()), "{reason}");
            assert!(reason.contains(model_id(0).as_str()), "{reason}");
        }
        other => panic!("expected an eviction, got {other:?}"),
    }
    // Busy, it is not taken even when offered; the idle one is.
    let later = |mut beat: WorkerHeartbeat| {
        beat.meta.seq = 2;
        beat
    };
    registry.apply_worker(&later(worker_beat(6, 0, 2, WorkerState::Busy, 4, 1, 30.0)), now);
    assert_eq!(
        place(&mut registry, &evict, now),
        Placement::Evict {
            hive_id: hive_id(0),
            workers: vec![worker_id(5)],
            reason: format!(
                "waiting for idle worker {} on hive {} to unload to make room for model {}",
                worker_id(5),
                hive_id(0),
                model_id(0)
            )
        }
    );
    registry.apply_worker(&later(worker_beat(5, 0, 1, WorkerState::Busy, 4, 1, 30.0)), now);
    assert!(reason(&place(&mut registry, &evict, now)).contains("does not fit"), "every worker busy");
}

#[test]
fn a_prompt_goes_to_the_worker_holding_its_prefix_unless_that_one_is_much_busier() {
    let now = Instant::now();
    let mut registry = Registry::new(RegistryConfig::default());
    registry.apply_hive(&hive_beat(0, HiveState::Online, vec![], vec![model(0, 100 * MIB)]), now);
    let chain = conversation();
    // Worker 0 is the least loaded by every figure; worker 1 holds the first three messages.
    registry.apply_worker(&worker_beat(0, 0, 0, WorkerState::Idle, 4, 0, 90.0), now);
    let mut holder = worker_beat(1, 0, 0, WorkerState::Busy, 4, 1, 10.0);
    holder.prefix_fingerprints = chain[..3].to_vec();
    registry.apply_worker(&holder, now);
    let turn = PlacementRequest { prefix: chain.clone(), ..request(0) };
    assert_eq!(schedule(&registry.snapshot(now), &turn), Placement::Assign { worker_id: worker_id(1) });
    // Without fingerprints, by load.
    assert_eq!(schedule(&registry.snapshot(now), &request(0)), Placement::Assign { worker_id: worker_id(0) });
    // Three of four slots busy against none: past the slack, the idle worker takes it.
    holder.slots_busy = 3;
    holder.meta.seq += 1;
    registry.apply_worker(&holder, now);
    assert_eq!(schedule(&registry.snapshot(now), &turn), Placement::Assign { worker_id: worker_id(0) });
}

#[test]
fn a_cpu_already_running_the_model_gets_no_second_worker() {
    let now = Instant::now();
    let mut registry = Registry::new(RegistryConfig::default());
    let cpu_hive = |seq: u64, devices| {
        let mut beat = hive_beat(0, HiveState::Online, devices, vec![model(0, 100 * MIB)]);
        beat.meta.seq = seq;
        beat
    };
    registry.apply_hive(&cpu_hive(1, vec![device("cpu", DeviceKind::Cpu, 16 * GIB)]), now);
    // One CPU worker with every slot taken: the job waits for a slot, though the memory has room.
    registry.apply_worker(&worker_beat(0, 0, 0, WorkerState::Busy, 4, 4, 50.0), now);
    assert_eq!(
        reason(&schedule(&registry.snapshot(now), &request(0))),
        "waiting for a slot on 1 worker of model model-0"
    );
    // Excluded (it refused this job), it no longer holds the CPU.
    let retry = PlacementRequest { exclude_workers: vec![worker_id(0)], ..request(0) };
    assert_eq!(
        schedule(&registry.snapshot(now), &retry),
        Placement::Spawn { hive_id: hive_id(0), device: "cpu".into() }
    );
    // A GPU on the same hive still gets a worker.
    registry.apply_hive(
        &cpu_hive(
            2,
            vec![device("cpu", DeviceKind::Cpu, 16 * GIB), device("cuda:0", DeviceKind::Cuda, 8 * GIB)],
        ),
        now,
    );
    assert_eq!(
        schedule(&registry.snapshot(now), &request(0)),
        Placement::Spawn { hive_id: hive_id(0), device: "cuda:0".into() }
    );
}

#[test]
fn a_worker_the_hive_reports_as_starting_holds_off_a_second_spawn() {
    let now = Instant::now();
    let mut registry = Registry::new(RegistryConfig::default());
    let mut beat = hive_beat(
        0,
        HiveState::Online,
        vec![device("cpu", DeviceKind::Cpu, 8 * GIB)],
        vec![model(0, 100 * MIB)],
    );
    beat.workers.push(HiveWorkerSummary {
        worker_id: worker_id(9),
        model_id: model_id(0),
        device: "cpu".into(),
        pid: 9,
        status: HiveWorkerStatus::Starting,
        started_at_ms: 0,
    });
    registry.apply_hive(&beat, now);
    assert_eq!(
        reason(&schedule(&registry.snapshot(now), &request(0))),
        "waiting for 1 worker loading model model-0"
    );
}

#[test]
fn a_spawn_in_flight_holds_off_a_second_and_an_explicit_spawn_ignores_the_workers() {
    let now = Instant::now();
    let mut registry = Registry::new(RegistryConfig::default());
    let beat = hive_beat(
        0,
        HiveState::Online,
        vec![device("cpu", DeviceKind::Cpu, 8 * GIB)],
        vec![model(0, 100 * MIB)],
    );
    registry.apply_hive(&beat, now);
    assert!(matches!(schedule(&registry.snapshot(now), &request(0)), Placement::Spawn { .. }));
    let asked = PlacementRequest { spawns_in_flight: 1, ..request(0) };
    assert_eq!(
        reason(&schedule(&registry.snapshot(now), &asked)),
        "waiting for 1 worker loading model model-0"
    );
    // A worker of the model on that CPU: jobs wait for its slots, an explicit spawn still starts one.
    registry.apply_worker(&worker_beat(0, 0, 0, WorkerState::Busy, 1, 1, 10.0), now);
    assert!(matches!(schedule(&registry.snapshot(now), &request(0)), Placement::Queue { .. }));
    let explicit = PlacementRequest { spawn_only: true, ..request(0) };
    assert_eq!(
        place(&mut registry, &explicit, now),
        Placement::Spawn { hive_id: hive_id(0), device: "cpu".into() }
    );
    let unknown = PlacementRequest { spawn_only: true, ..request(1) };
    assert_eq!(reason(&schedule(&registry.snapshot(now), &unknown)), "no hive has model model-1");
}

#[test]
fn place_reserves_so_the_next_job_goes_elsewhere() {
    let now = Instant::now();
    let mut registry = Registry::new(RegistryConfig::default());
    registry.apply_worker(&worker_beat(0, 0, 0, WorkerState::Idle, 1, 0, 80.0), now);
    registry.apply_worker(&worker_beat(1, 0, 0, WorkerState::Idle, 1, 0, 20.0), now);
    assert_eq!(place(&mut registry, &request(0), now), Placement::Assign { worker_id: worker_id(0) });
    assert_eq!(place(&mut registry, &request(0), now), Placement::Assign { worker_id: worker_id(1) });
    assert_eq!(
        reason(&place(&mut registry, &request(0), now)),
        "waiting for a slot on 2 workers of model model-0"
    );
    let excluded = PlacementRequest { exclude_workers: vec![worker_id(0)], ..request(0) };
    registry.release_slot(&worker_id(0));
    assert!(matches!(place(&mut registry, &excluded, now), Placement::Queue { .. }));
}

#[test]
fn scheduling_ten_thousand_workers_is_linear() {
    let now = Instant::now();
    let mut registry = Registry::new(RegistryConfig::default());
    for worker in 0..10_000 {
        registry.apply_worker(
            &worker_beat(worker, worker % 50, worker % 10, WorkerState::Busy, 4, 3, worker as f64),
            now,
        );
    }
    let snapshot = registry.snapshot(now);
    let started = Instant::now();
    for _ in 0..100 {
        assert!(matches!(schedule(&snapshot, &request(3)), Placement::Assign { .. }));
    }
    // 100 decisions over 10,000 workers: far under a second even unoptimized on a loaded machine.
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

// ----- properties -----

#[derive(Debug, Clone)]
struct HiveSpec {
    age_ms: u64,
    leaving: bool,
    devices: Vec<(bool, u64)>,
    /// Model, size, and its load failures there: 0 none, 1 waiting before the next try, 2 refused.
    models: Vec<(usize, u64, u8)>,
    starting: Option<usize>,
}

#[derive(Debug, Clone)]
struct WorkerSpec {
    hive: usize,
    model: usize,
    state: WorkerState,
    slots_total: u32,
    slots_busy: u32,
    tokens_per_second: u32,
    age_ms: u64,
    fenced: bool,
    reserved: u32,
    /// How many leading links of [`conversation`]'s fingerprints it advertises.
    holds: usize,
}

#[derive(Debug, Clone)]
struct Scenario {
    hives: Vec<HiveSpec>,
    workers: Vec<WorkerSpec>,
    model: usize,
    exclude: Vec<usize>,
    estimated_bytes: Option<u64>,
    queue_len: usize,
    queue_capacity: usize,
    /// Whether the request carries the fingerprints of [`conversation`].
    with_prefix: bool,
}

/// Messages in the conversation whose fingerprints workers advertise in these scenarios.
const CONVERSATION_LEN: usize = 4;

/// The fingerprints of a fixed conversation of [`CONVERSATION_LEN`] messages.
fn conversation() -> Vec<u64> {
    let messages =
        (0..CONVERSATION_LEN).map(|i| rbee_bus::ChatMessage::new("user", format!("message {i}"))).collect();
    rbee_bus::prefix::fingerprints(&rbee_bus::Prompt::chat(messages))
}

const HIVES: usize = 4;
const MODELS: usize = 4; // model-3 is in no catalog

fn free_bytes() -> impl Strategy<Value = u64> {
    prop::sample::select(vec![0, 200 * MIB, 512 * MIB, GIB, 2 * GIB, 4 * GIB, 8 * GIB, 16 * GIB])
}

fn age() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..2000, 1 => 2001u64..9000]
}

fn hive_spec() -> impl Strategy<Value = HiveSpec> {
    let devices = prop::collection::vec((any::<bool>(), free_bytes()), 0..3);
    let sizes = prop::sample::select(vec![50 * MIB, 100 * MIB, 500 * MIB, GIB, 4 * GIB, 8 * GIB]);
    let failing = prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)];
    let models = prop::collection::vec((0..MODELS - 1, sizes, failing), 0..3);
    (age(), prop::bool::weighted(0.2), devices, models, prop::option::weighted(0.15, 0..MODELS)).prop_map(
        |(age_ms, leaving, devices, models, starting)| HiveSpec {
            age_ms,
            leaving,
            devices,
            models,
            starting,
        },
    )
}

fn worker_spec() -> impl Strategy<Value = WorkerSpec> {
    let state = prop_oneof![
        1 => Just(WorkerState::Loading),
        3 => Just(WorkerState::Idle),
        3 => Just(WorkerState::Busy),
        1 => Just(WorkerState::Draining),
    ];
    let figures = (0u32..5, 0u32..5, 0u32..100, age());
    (0..HIVES, 0..MODELS, state, figures, prop::bool::weighted(0.15), 0u32..3, 0usize..=CONVERSATION_LEN)
        .prop_map(
            |(
                hive,
                model,
                state,
                (slots_total, slots_busy, tokens_per_second, age_ms),
                fenced,
                reserved,
                holds,
            )| {
                WorkerSpec {
                    hive,
                    model,
                    state,
                    slots_total,
                    slots_busy,
                    tokens_per_second,
                    age_ms,
                    fenced,
                    reserved,
                    holds,
                }
            },
        )
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        prop::collection::vec(hive_spec(), 0..HIVES),
        prop::collection::vec(worker_spec(), 0..14),
        0..MODELS,
        prop::collection::vec(0usize..14, 0..4),
        prop::option::weighted(0.3, prop::sample::select(vec![100 * MIB, GIB, 6 * GIB])),
        (0usize..4, 0usize..4),
        any::<bool>(),
    )
        .prop_map(
            |(hives, workers, model, exclude, estimated_bytes, (queue_len, queue_capacity), with_prefix)| {
                Scenario {
                    hives,
                    workers,
                    model,
                    exclude,
                    estimated_bytes,
                    queue_len,
                    queue_capacity,
                    with_prefix,
                }
            },
        )
}

/// Builds the registry the scenario describes, as seen at the returned instant.
fn build(scenario: &Scenario) -> (Registry, Instant) {
    let base = Instant::now();
    let now = base + Duration::from_secs(100);
    let mut registry = Registry::new(RegistryConfig::default());
    for (n, spec) in scenario.hives.iter().enumerate() {
        let devices = spec
            .devices
            .iter()
            .enumerate()
            .map(|(i, (gpu, free))| {
                if *gpu {
                    device(&format!("cuda:{i}"), DeviceKind::Cuda, *free)
                } else {
                    device(&format!("cpu{i}"), DeviceKind::Cpu, *free)
                }
            })
            .collect();
        let models = spec
            .models
            .iter()
            .map(|(m, size, failing)| ModelSummary {
                load_failures: (*failing > 0).then(|| rbee_bus::LoadFailures {
                    failures: u32::from(*failing),
                    last_error: "exit status: 1".into(),
                    retry_at_ms: (*failing == 1).then_some(1),
                    refused: *failing == 2,
                }),
                ..model(*m, *size)
            })
            .collect();
        let state = if spec.leaving { HiveState::Leaving } else { HiveState::Online };
        let mut beat = hive_beat(n, state, devices, models);
        if let Some(m) = spec.starting {
            beat.workers.push(HiveWorkerSummary {
                worker_id: WorkerId::new(format!("starting-{n}")).expect("valid id"),
                model_id: model_id(m),
                device: "cpu".into(),
                pid: 1,
                status: HiveWorkerStatus::Starting,
                started_at_ms: 0,
            });
        }
        registry.apply_hive(&beat, now - Duration::from_millis(spec.age_ms));
    }
    let chain = conversation();
    for (n, spec) in scenario.workers.iter().enumerate() {
        let mut beat = worker_beat(
            n,
            spec.hive,
            spec.model,
            spec.state,
            spec.slots_total,
            spec.slots_busy,
            f64::from(spec.tokens_per_second),
        );
        beat.prefix_fingerprints = chain[..spec.holds].to_vec();
        registry.apply_worker(&beat, now - Duration::from_millis(spec.age_ms));
        if spec.fenced {
            registry.fence_worker(&worker_id(n), "refused", now - Duration::from_millis(1));
        }
        for _ in 0..spec.reserved {
            registry.reserve_slot(&worker_id(n), now);
        }
    }
    (registry, now)
}

fn usable(worker: &WorkerView, request: &PlacementRequest) -> bool {
    worker.model_id == request.model_id
        && !request.exclude_workers.contains(&worker.worker_id)
        && worker.liveness == Liveness::Online
        && !worker.fenced
        && !worker.hive_leaving
        && matches!(worker.state, WorkerState::Idle | WorkerState::Busy)
        && worker.slots_busy + worker.slots_reserved < worker.slots_total
}

/// Workers of the model loading (or reported starting by an online hive) that are not excluded.
fn loading(snapshot: &RegistrySnapshot, request: &PlacementRequest) -> usize {
    let heartbeating = snapshot
        .workers
        .iter()
        .filter(|w| w.model_id == request.model_id && !request.exclude_workers.contains(&w.worker_id))
        .filter(|w| {
            w.liveness == Liveness::Online && !w.fenced && !w.hive_leaving && w.state == WorkerState::Loading
        })
        .count();
    let starting = snapshot
        .hives
        .iter()
        .filter(|h| h.liveness == Liveness::Online)
        .flat_map(|h| &h.reported_workers)
        .filter(|s| s.model_id == request.model_id && s.status == HiveWorkerStatus::Starting)
        .count();
    heartbeating + starting
}

/// True when some online, non-leaving hive with the model has a device that fits it.
fn spawnable(snapshot: &RegistrySnapshot, request: &PlacementRequest) -> bool {
    snapshot.hives.iter().filter(|h| h.liveness == Liveness::Online && !h.leaving).any(|hive| {
        hive.model(&request.model_id).filter(|model| model.load_failures.is_none()).is_some_and(|model| {
            let needed = request.estimated_bytes.unwrap_or_else(|| estimate_spawn_bytes(model));
            hive.devices.iter().any(|device| {
                device.free_bytes >= needed
                    && !(device.kind == DeviceKind::Cpu && cpu_occupied(snapshot, request, &hive.hive_id))
            })
        })
    })
}

/// The hive's CPU already runs a worker of the model that still counts (not offline, fenced,
/// excluded or draining): no second one is spawned there.
fn cpu_occupied(snapshot: &RegistrySnapshot, request: &PlacementRequest, hive_id: &HiveId) -> bool {
    snapshot.workers.iter().any(|w| {
        &w.hive_id == hive_id
            && w.model_id == request.model_id
            && w.device == "cpu"
            && w.liveness != Liveness::Offline
            && !w.fenced
            && !request.exclude_workers.contains(&w.worker_id)
            && !matches!(w.state, WorkerState::Draining | WorkerState::Stopped)
    })
}

/// `a` strictly less loaded than `b`: lower share of slots in use, or the same share and faster.
fn strictly_less_loaded(a: &WorkerView, b: &WorkerView) -> bool {
    let used = |w: &WorkerView| u64::from(w.slots_busy + w.slots_reserved);
    let left = used(a) * u64::from(b.slots_total);
    let right = used(b) * u64::from(a.slots_total);
    left < right || (left == right && a.tokens_per_second > b.tokens_per_second)
}

/// Schedules once in the scenario and checks the decision against the rules.
fn check_placement(scenario: &Scenario) -> Result<(), TestCaseError> {
    let (mut registry, now) = build(scenario);
    let request = PlacementRequest {
        model_id: model_id(scenario.model),
        exclude_workers: scenario.exclude.iter().map(|n| worker_id(*n)).collect(),
        estimated_bytes: scenario.estimated_bytes,
        queue_len: scenario.queue_len,
        queue_capacity: scenario.queue_capacity,
        prefix: if scenario.with_prefix { conversation() } else { Vec::new() },
        spawns_in_flight: 0,
        spawn_only: false,
        exclude_hives: Vec::new(),
        evictable: Vec::new(),
    };
    let snapshot = registry.snapshot(now);
    let decision = schedule(&snapshot, &request);
    prop_assert_eq!(&schedule(&registry.snapshot_for_model(&request.model_id, now), &request), &decision);

    let candidates: Vec<&WorkerView> = snapshot.workers.iter().filter(|w| usable(w, &request)).collect();
    let queue_full = request.queue_len >= request.queue_capacity;
    prop_assert_eq!(matches!(decision, Placement::Refuse { .. }), queue_full && candidates.is_empty());
    match &decision {
        Placement::Assign { worker_id } => {
            let chosen = snapshot.workers.iter().find(|w| &w.worker_id == worker_id);
            prop_assert!(
                chosen.is_some_and(|w| usable(w, &request)),
                "assigned to an unusable worker {:?}",
                chosen
            );
            if let Some(chosen) = chosen {
                // Least loaded, unless it holds more of the prompt and is within the slack of the least
                // loaded; and no worker within that slack holds more than the chosen one.
                let held = |w: &WorkerView| rbee_bus::prefix::held_prefix(&request.prefix, &w.prefixes);
                let share = |w: &WorkerView| {
                    if w.slots_total == 0 {
                        1.0
                    } else {
                        f64::from(w.slots_used()) / f64::from(w.slots_total)
                    }
                };
                let least = candidates.iter().map(|w| share(w)).fold(f64::INFINITY, f64::min);
                let within = |w: &WorkerView| share(w) <= least + PREFIX_LOAD_SLACK;
                for other in &candidates {
                    if held(chosen) == 0 {
                        prop_assert!(
                            !strictly_less_loaded(other, chosen),
                            "{:?} is less loaded than {:?}",
                            other,
                            chosen
                        );
                    }
                    if within(other) {
                        prop_assert!(held(other) <= held(chosen), "{:?} holds more than {:?}", other, chosen);
                    }
                }
                prop_assert!(held(chosen) == 0 || within(chosen), "{:?} is too busy to be preferred", chosen);
                if !scenario.with_prefix {
                    prop_assert_eq!(held(chosen), 0);
                }
            }
        }
        Placement::Spawn { hive_id, device } => {
            prop_assert!(candidates.is_empty() && !queue_full);
            prop_assert_eq!(loading(&snapshot, &request), 0, "spawned while a worker loads");
            let hive = snapshot.hives.iter().find(|h| &h.hive_id == hive_id);
            prop_assert!(hive.is_some());
            if let Some(hive) = hive {
                prop_assert!(hive.liveness == Liveness::Online && !hive.leaving);
                let model = hive.model(&request.model_id);
                prop_assert!(model.is_some(), "spawn on a hive without the model");
                prop_assert!(
                    model.is_some_and(|m| m.load_failures.is_none()),
                    "spawn on a hive that holds the model off"
                );
                let needed =
                    request.estimated_bytes.unwrap_or_else(|| model.map_or(u64::MAX, estimate_spawn_bytes));
                let fits = hive.devices.iter().any(|d| &d.id == device && d.free_bytes >= needed);
                prop_assert!(fits, "device {} of {} does not fit {} bytes", device, hive_id, needed);
                let cpu = hive.devices.iter().any(|d| &d.id == device && d.kind == DeviceKind::Cpu);
                prop_assert!(
                    !(cpu && cpu_occupied(&snapshot, &request, hive_id)),
                    "a second worker of the model spawned on the cpu of {}",
                    hive_id
                );
            }
        }
        Placement::Queue { reason } => {
            prop_assert!(candidates.is_empty() && !queue_full);
            prop_assert!(reason.contains(request.model_id.as_str()), "reason {:?}", reason);
            if spawnable(&snapshot, &request) {
                prop_assert!(
                    loading(&snapshot, &request) > 0 && reason.contains("loading"),
                    "missed a spawn: {:?}",
                    reason
                );
            }
        }
        Placement::Refuse { reason } => {
            prop_assert!(reason.contains(request.model_id.as_str()), "reason {:?}", reason);
        }
        Placement::Evict { .. } => prop_assert!(false, "an eviction with no worker offered: {:?}", decision),
        Placement::Unavailable { reason } => {
            // Only when nothing serves or loads the model and every online hive with it refuses it.
            prop_assert!(candidates.is_empty() && !queue_full);
            prop_assert_eq!(loading(&snapshot, &request), 0);
            let with_model: Vec<_> = snapshot
                .hives
                .iter()
                .filter(|h| h.liveness == Liveness::Online && !h.leaving)
                .filter_map(|h| h.model(&request.model_id))
                .collect();
            prop_assert!(!with_model.is_empty());
            prop_assert!(with_model.iter().all(|m| m.load_failures.as_ref().is_some_and(|f| f.refused)));
            prop_assert!(reason.contains("failed to load"), "reason {:?}", reason);
        }
    }
    // Every online hive with the model refusing it, and nothing else to wait for: the job fails.
    let refusing = snapshot
        .hives
        .iter()
        .filter(|h| h.liveness == Liveness::Online && !h.leaving)
        .filter_map(|h| h.model(&request.model_id))
        .collect::<Vec<_>>();
    let all_refuse =
        !refusing.is_empty() && refusing.iter().all(|m| m.load_failures.as_ref().is_some_and(|f| f.refused));
    if all_refuse && candidates.is_empty() && !queue_full && loading(&snapshot, &request) == 0 {
        let waiting_for_slot = matches!(&decision, Placement::Queue { reason } if reason.contains("slot") || reason.contains("usable"));
        prop_assert!(matches!(decision, Placement::Unavailable { .. }) || waiting_for_slot, "{:?}", decision);
    }

    // `place` decides the same and, when it assigns, holds the slot.
    let reserved_before = snapshot.workers.iter().map(|w| w.slots_reserved).sum::<u32>();
    let placed = place(&mut registry, &request, now);
    prop_assert_eq!(&placed, &decision);
    let reserved_after = registry.list_workers(now).iter().map(|w| w.slots_reserved).sum::<u32>();
    prop_assert_eq!(reserved_after, reserved_before + u32::from(matches!(placed, Placement::Assign { .. })));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn placements_respect_the_rules(scenario in scenario()) {
        check_placement(&scenario)?;
    }
}
