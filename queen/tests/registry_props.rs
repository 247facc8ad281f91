//! The registry folded from heartbeats: thresholds with injected time, and properties over random
//! sequences of heartbeats, restarts, reordering, fences, reservations and time steps.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{hive_id, model_id, worker_id};
use proptest::prelude::*;
use rbee_bus::{
    Backend, CpuInfo, DeviceInfo, DeviceKind, EventMeta, HiveHeartbeat, HiveState, MemoryInfo, ModelSummary,
    WorkerHeartbeat, WorkerId, WorkerState,
};
use rbee_queen::membership::{
    least_loaded_first, Change, Liveness, Registry, RegistryConfig, RemovalReason, UnfenceReason, WorkerView,
};

// ----- builders -----

fn meta(publisher: &str, epoch: &str, seq: u64) -> EventMeta {
    // sent_at_ms is deliberately nonsense: liveness must not read it.
    EventMeta { publisher: publisher.into(), epoch: epoch.into(), seq, sent_at_ms: 7 }
}

fn hive_beat(hive: usize, epoch: &str, seq: u64, interval_ms: u64, state: HiveState) -> HiveHeartbeat {
    let id = hive_id(hive);
    HiveHeartbeat {
        v: 1,
        meta: meta(id.as_str(), epoch, seq),
        hive_id: id,
        hostname: format!("host-{hive}"),
        version: "0.1.0".into(),
        state,
        interval_ms,
        cpu: CpuInfo { model: "cpu".into(), physical_cores: 2, logical_cores: 2 },
        ram: MemoryInfo { total_bytes: 24 << 30, available_bytes: 20 << 30 },
        devices: vec![DeviceInfo {
            id: "cpu".into(),
            kind: DeviceKind::Cpu,
            index: 0,
            name: "cpu".into(),
            uuid: None,
            total_bytes: 24 << 30,
            free_bytes: 20 << 30,
            utilization_percent: None,
            compute_capability: None,
        }],
        workers: Vec::new(),
        models: vec![ModelSummary {
            model_id: model_id(0),
            size_bytes: 100 << 20,
            architecture: "llama".into(),
            parameter_count: 135_000_000,
            quantization: "Q4_1".into(),
            context_length: Some(8192),
            load_failures: None,
        }],
    }
}

/// Figures of one worker heartbeat.
#[derive(Debug, Clone)]
struct WorkerFigures {
    state: WorkerState,
    slots_total: u32,
    slots_busy: u32,
    tokens_per_second: f64,
    interval_ms: u64,
}

impl Default for WorkerFigures {
    fn default() -> Self {
        Self {
            state: WorkerState::Idle,
            slots_total: 4,
            slots_busy: 0,
            tokens_per_second: 50.0,
            interval_ms: 1000,
        }
    }
}

/// Worker `n` lives on hive `n % 3` and serves model `n % 2`.
fn worker_beat(worker: usize, epoch: &str, seq: u64, figures: &WorkerFigures) -> WorkerHeartbeat {
    let id = worker_id(worker);
    WorkerHeartbeat {
        v: 1,
        meta: meta(id.as_str(), epoch, seq),
        worker_id: id,
        hive_id: hive_id(worker % 3),
        model_id: model_id(worker % 2),
        state: figures.state,
        backend: Backend::Cpu,
        device: "cpu".into(),
        slots_total: figures.slots_total,
        slots_busy: figures.slots_busy,
        ctx_per_slot: 2048,
        tokens_per_second: figures.tokens_per_second,
        memory_bytes: 200 << 20,
        pid: 1000 + worker as u32,
        interval_ms: figures.interval_ms,
        prefix_fingerprints: Vec::new(),
        jobs_accepted: None,
    }
}

fn at(base: Instant, ms: u64) -> Instant {
    base + Duration::from_millis(ms)
}

// ----- thresholds and behaviours, with injected time -----

#[test]
fn liveness_thresholds_follow_the_receive_clock() {
    let base = Instant::now();
    let mut registry = Registry::new(RegistryConfig::default());
    registry.apply_worker(&worker_beat(0, "e1", 1, &WorkerFigures::default()), base);
    let liveness =
        |registry: &Registry, ms| registry.get_worker(&worker_id(0), at(base, ms)).map(|w| w.liveness);
    assert_eq!(liveness(&registry, 1_900), Some(Liveness::Online));
    assert_eq!(liveness(&registry, 2_100), Some(Liveness::Suspect));
    assert_eq!(liveness(&registry, 3_100), Some(Liveness::Offline));
    assert!(
        registry.find_best_worker_for_model(&model_id(0), at(base, 2_100)).is_none(),
        "suspect is not used"
    );

    let changes = registry.expire(at(base, 2_100));
    let suspect = Change::WorkerLiveness {
        worker_id: worker_id(0),
        previous: Liveness::Online,
        liveness: Liveness::Suspect,
    };
    assert_eq!(changes, vec![suspect]);
    assert!(registry.expire(at(base, 2_200)).is_empty(), "a transition is reported once");
    assert_eq!(registry.expire(at(base, 3_100)).len(), 1);
    assert!(registry.expire(at(base, 10_000)).is_empty(), "kept up to 10 intervals");
    let removed = registry.expire(at(base, 10_001));
    let expected = Change::WorkerRemoved {
        worker_id: worker_id(0),
        hive_id: hive_id(0),
        reason: RemovalReason::Expired,
    };
    assert_eq!(removed, vec![expected]);
}

#[test]
fn a_heartbeat_after_silence_reports_the_recovery() {
    let base = Instant::now();
    let mut registry = Registry::new(RegistryConfig::default());
    registry.apply_hive(&hive_beat(0, "h1", 1, 1000, HiveState::Online), base);
    registry.expire(at(base, 3_500));
    let changes = registry.apply_hive(&hive_beat(0, "h1", 2, 1000, HiveState::Online), at(base, 3_600));
    let recovered =
        Change::HiveLiveness { hive_id: hive_id(0), previous: Liveness::Offline, liveness: Liveness::Online };
    assert_eq!(changes, vec![recovered]);
    assert!(registry.is_hive_online(&hive_id(0), at(base, 3_600)));
}

#[test]
fn tokens_and_statuses_of_the_current_epoch_keep_a_busy_worker_alive() {
    let base = Instant::now();
    let mut registry = Registry::new(RegistryConfig::default());
    let busy = WorkerFigures { state: WorkerState::Busy, slots_busy: 3, ..WorkerFigures::default() };
    registry.apply_worker(&worker_beat(0, "e1", 1, &busy), base);
    assert!(registry.reserve_slot(&worker_id(0), at(base, 100)));
    let before = registry.get_worker(&worker_id(0), at(base, 100)).expect("listed");
    let applied = registry.stats(base).heartbeats_applied;
    let liveness =
        |registry: &Registry, ms| registry.get_worker(&worker_id(0), at(base, ms)).map(|w| w.liveness);

    // Its heartbeats stop (a starved timer) but its tokens keep coming: online all along.
    for ms in (500..=6_000).step_by(500) {
        assert_eq!(registry.apply_worker_activity(&worker_id(0), "e1", at(base, ms)), Vec::new());
        assert_eq!(registry.expire(at(base, ms + 400)), Vec::new(), "a transition at {ms} ms");
        assert_eq!(liveness(&registry, ms + 400), Some(Liveness::Online));
    }
    let after = registry.get_worker(&worker_id(0), at(base, 6_000)).expect("listed");
    assert_eq!(after.presence.age_ms, 0, "the age counts from the last sign of life");
    // Liveness only: the figures, sequence and reservations are the heartbeat's.
    assert_eq!(
        (after.state, after.slots_busy, after.slots_reserved, after.presence.seq, &after.presence.epoch),
        (before.state, before.slots_busy, before.slots_reserved, before.presence.seq, &before.presence.epoch)
    );
    assert_eq!(registry.stats(base).heartbeats_applied, applied, "a token is not a heartbeat");

    // Then everything stops: suspect, offline and removed on the usual schedule from the last token.
    assert_eq!(liveness(&registry, 8_100), Some(Liveness::Suspect));
    assert_eq!(liveness(&registry, 9_100), Some(Liveness::Offline));
    registry.expire(at(base, 9_100));
    // A late token of the same process brings it back, and says so.
    let recovered = Change::WorkerLiveness {
        worker_id: worker_id(0),
        previous: Liveness::Offline,
        liveness: Liveness::Online,
    };
    assert_eq!(registry.apply_worker_activity(&worker_id(0), "e1", at(base, 9_200)), vec![recovered]);
    assert_eq!(liveness(&registry, 9_200), Some(Liveness::Online));
    let removed = registry.expire(at(base, 19_300));
    assert!(
        matches!(&removed[..], [Change::WorkerRemoved { reason: RemovalReason::Expired, .. }]),
        "{removed:?}"
    );
}

#[test]
fn messages_of_another_epoch_or_an_unknown_worker_prove_nothing() {
    let base = Instant::now();
    let mut registry = Registry::new(RegistryConfig::default());
    // Not heard yet: a token does not add it (it has no figures to list).
    assert_eq!(registry.apply_worker_activity(&worker_id(0), "e1", base), Vec::new());
    assert!(registry.get_worker(&worker_id(0), base).is_none());

    registry.apply_worker(&worker_beat(0, "e2", 1, &WorkerFigures::default()), base);
    // A late chunk of the process it replaced, or of one not heard yet, does not vouch for this one.
    for epoch in ["e1", "e3"] {
        assert_eq!(registry.apply_worker_activity(&worker_id(0), epoch, at(base, 2_500)), Vec::new());
    }
    let view = registry.get_worker(&worker_id(0), at(base, 3_100)).expect("listed");
    assert_eq!((view.liveness, view.presence.age_ms), (Liveness::Offline, 3_100));
    // Nor does one of another worker.
    registry.apply_worker(&worker_beat(1, "e1", 1, &WorkerFigures::default()), base);
    registry.apply_worker_activity(&worker_id(0), "e1", at(base, 3_000));
    assert_eq!(
        registry.get_worker(&worker_id(1), at(base, 3_100)).map(|w| w.liveness),
        Some(Liveness::Offline)
    );
}

#[test]
fn a_new_hive_epoch_drops_its_old_workers_and_keeps_them_out() {
    let base = Instant::now();
    let mut registry = Registry::new(RegistryConfig::default());
    registry.apply_hive(&hive_beat(0, "h1", 1, 1000, HiveState::Online), base);
    for worker in [0, 3, 1] {
        registry.apply_worker(&worker_beat(worker, "w1", 1, &WorkerFigures::default()), base);
    }
    let changes = registry.apply_hive(&hive_beat(0, "h2", 1, 1000, HiveState::Online), at(base, 500));
    let removed: HashSet<WorkerId> = changes
        .iter()
        .filter_map(|change| match change {
            Change::WorkerRemoved { worker_id, reason: RemovalReason::HiveRestarted, .. } => {
                Some(worker_id.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(removed, HashSet::from([worker_id(0), worker_id(3)]));
    let restarted = |change: &Change| match change {
        Change::HiveUpdated { previous_epoch, epoch, .. } => previous_epoch == "h1" && epoch == "h2",
        _ => false,
    };
    assert!(restarted(&changes[0]));
    assert!(registry.workers_on_hive(&hive_id(0), at(base, 500)).is_empty());
    assert!(registry.get_worker(&worker_id(1), at(base, 500)).is_some(), "another hive's worker stays");

    // A late heartbeat of an old worker's epoch stays out; a restarted worker is welcome.
    assert!(registry
        .apply_worker(&worker_beat(0, "w1", 2, &WorkerFigures::default()), at(base, 600))
        .is_empty());
    assert!(registry.get_worker(&worker_id(0), at(base, 600)).is_none());
    registry.apply_worker(&worker_beat(0, "w2", 1, &WorkerFigures::default()), at(base, 700));
    assert!(registry.get_worker(&worker_id(0), at(base, 700)).is_some());
    // A late heartbeat from the hive's old epoch is stale, not another restart.
    assert!(registry.apply_hive(&hive_beat(0, "h1", 9, 1000, HiveState::Online), at(base, 800)).is_empty());
    assert!(registry.get_worker(&worker_id(0), at(base, 800)).is_some());
}

#[test]
fn a_stopped_worker_is_removed_at_once_and_stays_out() {
    let base = Instant::now();
    let mut registry = Registry::new(RegistryConfig::default());
    registry.apply_worker(&worker_beat(0, "w1", 1, &WorkerFigures::default()), base);
    let stopped = WorkerFigures { state: WorkerState::Stopped, ..WorkerFigures::default() };
    let changes = registry.apply_worker(&worker_beat(0, "w1", 2, &stopped), at(base, 10));
    assert!(matches!(&changes[..], [Change::WorkerRemoved { reason: RemovalReason::Stopped, .. }]));
    // A heartbeat of the same epoch delivered late does not resurrect it.
    registry.apply_worker(&worker_beat(0, "w1", 3, &WorkerFigures::default()), at(base, 20));
    assert_eq!(registry.worker_count(), 0);
}

#[test]
fn a_fence_holds_until_a_new_epoch_or_the_timeout() {
    let base = Instant::now();
    let config = RegistryConfig { fence_timeout: Duration::from_secs(5), ..RegistryConfig::default() };
    let mut registry = Registry::new(config);
    let idle = WorkerFigures::default();
    registry.apply_worker(&worker_beat(0, "w1", 1, &idle), base);
    let fenced = registry.fence_worker(&worker_id(0), "refused: no_free_slot", at(base, 100));
    assert_eq!(fenced.len(), 1);
    registry.apply_worker(&worker_beat(0, "w1", 2, &idle), at(base, 1_000));
    assert!(
        registry.find_best_worker_for_model(&model_id(0), at(base, 1_000)).is_none(),
        "same epoch keeps it"
    );
    let view = registry.get_worker(&worker_id(0), at(base, 1_000)).expect("listed");
    assert!(view.fenced && !view.assignable);
    assert_eq!(view.fence_reason.as_deref(), Some("refused: no_free_slot"));
    // Timeout.
    registry.apply_worker(&worker_beat(0, "w1", 3, &idle), at(base, 5_100));
    assert!(registry.find_best_worker_for_model(&model_id(0), at(base, 5_100)).is_some());
    let lifted = Change::WorkerUnfenced { worker_id: worker_id(0), reason: UnfenceReason::Timeout };
    assert_eq!(registry.expire(at(base, 5_100)), vec![lifted]);
    // New epoch.
    registry.fence_worker(&worker_id(0), "timed out", at(base, 5_200));
    let changes = registry.apply_worker(&worker_beat(0, "w2", 1, &idle), at(base, 5_300));
    assert!(changes
        .contains(&Change::WorkerUnfenced { worker_id: worker_id(0), reason: UnfenceReason::NewEpoch }));
    assert!(registry.find_best_worker_for_model(&model_id(0), at(base, 5_300)).is_some());
}

#[test]
fn reservations_keep_two_placements_off_the_last_slot() {
    let base = Instant::now();
    let mut registry = Registry::new(RegistryConfig::default());
    let one_free =
        WorkerFigures { state: WorkerState::Busy, slots_total: 2, slots_busy: 1, ..WorkerFigures::default() };
    registry.apply_worker(&worker_beat(0, "w1", 1, &one_free), base);
    assert!(registry.reserve_slot(&worker_id(0), at(base, 10)));
    assert!(!registry.reserve_slot(&worker_id(0), at(base, 11)), "no second job on the last slot");
    assert!(registry.find_best_worker_for_model(&model_id(0), at(base, 12)).is_none());
    // A heartbeat right after may predate the acceptance: the reservation survives it.
    registry.apply_worker(&worker_beat(0, "w1", 2, &one_free), at(base, 100));
    assert_eq!(registry.get_worker(&worker_id(0), at(base, 100)).map(|w| w.slots_reserved), Some(1));
    // A later one is authoritative.
    let full = WorkerFigures { slots_busy: 2, ..one_free.clone() };
    registry.apply_worker(&worker_beat(0, "w1", 3, &full), at(base, 1_000));
    let view = registry.get_worker(&worker_id(0), at(base, 1_000)).expect("known");
    assert_eq!((view.slots_reserved, view.slots_free), (0, 0));
    // A refused job gives its slot back.
    registry.apply_worker(&worker_beat(0, "w1", 4, &one_free), at(base, 2_000));
    assert!(registry.reserve_slot(&worker_id(0), at(base, 2_010)));
    assert!(registry.release_slot(&worker_id(0)));
    assert!(registry.find_best_worker_for_model(&model_id(0), at(base, 2_020)).is_some());
}

/// Four jobs placed on a 4-slot worker right after one ended: the heartbeat the worker sends as they
/// start counts 3 of them (busy 3) within a few ms. With the old rule alone its 3 young reservations
/// stay as well (busy 3 + 3 reserved: full), and the 4th job waited a heartbeat interval with a slot
/// free. Accepted reservations go as soon as a heartbeat's `jobs_accepted` reaches their number.
#[test]
fn a_heartbeat_that_counts_the_accepted_jobs_drops_their_reservations_at_once() {
    let base = Instant::now();
    let mut registry = Registry::new(RegistryConfig::default());
    let idle = WorkerFigures { slots_total: 4, slots_busy: 0, ..WorkerFigures::default() };
    let mut beat = worker_beat(0, "w1", 1, &idle);
    beat.jobs_accepted = Some(10);
    registry.apply_worker(&beat, base);
    for (i, seq) in [11, 12, 13].into_iter().enumerate() {
        assert!(registry.reserve_slot(&worker_id(0), at(base, 1 + i as u64)));
        assert!(registry.slot_accepted(&worker_id(0), seq));
    }
    let busy = WorkerFigures { state: WorkerState::Busy, slots_busy: 3, ..idle.clone() };
    let mut beat = worker_beat(0, "w1", 2, &busy);
    beat.jobs_accepted = Some(13);
    registry.apply_worker(&beat, at(base, 10));
    let view = registry.get_worker(&worker_id(0), at(base, 10)).expect("known");
    assert_eq!((view.slots_reserved, view.slots_free), (0, 1), "the 4th slot is free at once");
    // A heartbeat that counts only some of them keeps the others, however young.
    assert!(registry.reserve_slot(&worker_id(0), at(base, 11)));
    assert!(registry.slot_accepted(&worker_id(0), 14));
    let mut beat = worker_beat(0, "w1", 3, &busy);
    beat.jobs_accepted = Some(13);
    registry.apply_worker(&beat, at(base, 20));
    assert_eq!(registry.get_worker(&worker_id(0), at(base, 20)).map(|w| w.slots_reserved), Some(1));
    // A placement not accepted yet follows the settle rule, and a refusal gives back that one, not an
    // accepted one.
    let full = WorkerFigures { slots_busy: 3, ..busy.clone() };
    let mut beat = worker_beat(0, "w1", 4, &full);
    beat.jobs_accepted = Some(14);
    registry.apply_worker(&beat, at(base, 30));
    assert!(registry.reserve_slot(&worker_id(0), at(base, 31)));
    assert!(registry.release_slot(&worker_id(0)));
    assert_eq!(registry.get_worker(&worker_id(0), at(base, 32)).map(|w| w.slots_free), Some(1));
    // The heartbeat that counts a job can come before its acceptance reaches the queen.
    assert!(registry.reserve_slot(&worker_id(0), at(base, 40)));
    let mut beat = worker_beat(0, "w1", 5, &WorkerFigures { slots_busy: 4, ..full.clone() });
    beat.jobs_accepted = Some(15);
    registry.apply_worker(&beat, at(base, 41));
    assert_eq!(registry.get_worker(&worker_id(0), at(base, 41)).map(|w| w.slots_reserved), Some(1));
    assert!(registry.slot_accepted(&worker_id(0), 15));
    assert_eq!(registry.get_worker(&worker_id(0), at(base, 42)).map(|w| w.slots_reserved), Some(0));
}

#[test]
fn a_leaving_hive_takes_no_work() {
    let base = Instant::now();
    let mut registry = Registry::new(RegistryConfig::default());
    registry.apply_hive(&hive_beat(0, "h1", 1, 1000, HiveState::Online), base);
    registry.apply_worker(&worker_beat(0, "w1", 1, &WorkerFigures::default()), base);
    let changes = registry.apply_hive(&hive_beat(0, "h1", 2, 1000, HiveState::Leaving), at(base, 10));
    assert!(matches!(
        &changes[..],
        [Change::HiveUpdated { previous_state: HiveState::Online, state: HiveState::Leaving, .. }]
    ));
    let hive = registry.get_hive(&hive_id(0), at(base, 10)).expect("kept");
    assert!(hive.leaving && !hive.schedulable);
    assert!(registry.find_best_worker_for_model(&model_id(0), at(base, 10)).is_none());
    assert!(registry.find_hives_with_device_memory(1, at(base, 10)).is_empty());
}

#[test]
fn sequence_gaps_and_stale_heartbeats_are_counted() {
    let base = Instant::now();
    let mut registry = Registry::new(RegistryConfig::default());
    let figures = WorkerFigures::default();
    for (seq, ms) in [(10, 0), (11, 10), (15, 20), (13, 30), (15, 40), (16, 50)] {
        registry.apply_worker(&worker_beat(0, "w1", seq, &figures), at(base, ms));
    }
    let stats = registry.stats(at(base, 60));
    assert_eq!((stats.seq_gaps, stats.stale_ignored, stats.heartbeats_applied), (3, 2, 4));
    assert_eq!(
        registry.get_worker(&worker_id(0), at(base, 60)).map(|w| (w.presence.seq, w.presence.seq_gaps)),
        Some((16, 3))
    );
    assert_eq!(stats.last_heartbeat_age_ms, Some(10));
}

#[test]
fn the_best_worker_is_the_least_loaded_then_the_fastest() {
    let base = Instant::now();
    let mut registry = Registry::new(RegistryConfig::default());
    let figures = [(0, 4, 2, 90.0), (2, 4, 1, 10.0), (4, 2, 0, 20.0), (6, 8, 0, 30.0), (8, 4, 4, 500.0)];
    for (worker, total, busy, tps) in figures {
        let state = if busy == 0 { WorkerState::Idle } else { WorkerState::Busy };
        let figures = WorkerFigures {
            state,
            slots_total: total,
            slots_busy: busy,
            tokens_per_second: tps,
            ..Default::default()
        };
        registry.apply_worker(&worker_beat(worker, "w1", 1, &figures), base);
    }
    let best = registry.find_best_worker_for_model(&model_id(0), base).map(|w| w.worker_id);
    assert_eq!(best, Some(worker_id(6)), "idle, and faster than the other idle one");
    registry.reserve_slot(&worker_id(6), base);
    registry.reserve_slot(&worker_id(4), base);
    // worker 6: 1/8 in use; worker 4: 1/2; worker 2: 1/4.
    let best = registry.find_best_worker_for_model(&model_id(0), base).map(|w| w.worker_id);
    assert_eq!(best, Some(worker_id(6)));
    assert_eq!(registry.list_idle_workers(base).len(), 2);
    assert_eq!(registry.count_workers_by_state().busy, 3);
}

#[test]
fn hive_queries_report_real_figures() {
    let base = Instant::now();
    let mut registry = Registry::new(RegistryConfig::default());
    registry.apply_hive(&hive_beat(0, "h1", 1, 1000, HiveState::Online), base);
    registry.apply_hive(&hive_beat(1, "h1", 1, 1000, HiveState::Online), at(base, 5_000));
    registry.apply_worker(&worker_beat(0, "w1", 1, &WorkerFigures::default()), at(base, 5_000));
    let now = at(base, 5_000);
    assert_eq!((registry.hive_count(), registry.online_hive_count(now)), (2, 1));
    assert_eq!(registry.list_online_hives(now).len(), 1);
    assert_eq!(registry.find_hives_with_model(&model_id(0), now).len(), 1);
    assert_eq!(registry.find_hives_with_device_memory(20 << 30, now).len(), 1);
    assert!(registry.find_hives_with_device_memory((20 << 30) + 1, now).is_empty());
    assert_eq!(registry.worker_count_on_hive(&hive_id(0)), Some(1));
    assert_eq!(registry.worker_count_on_hive(&hive_id(7)), None);
    assert_eq!(registry.hive_of_worker(&worker_id(0)), Some(hive_id(0)));
    assert_eq!(registry.worker_jobs_subject(&worker_id(0)).as_deref(), Some("rbee.worker.wrk-0.jobs"));
    let resources = registry.hive_resources(&hive_id(0), now).expect("known");
    assert_eq!(
        (resources.device_free_bytes, resources.workers.count, resources.workers.memory_bytes),
        (20 << 30, 1, 200 << 20)
    );
    let total = registry.total_resources(now);
    assert_eq!((total.hives, total.workers.online, total.workers.slots_total), (1, 1, 4));
    let removed = registry.remove_hive(&hive_id(0), now);
    assert_eq!(removed.len(), 2, "the hive and its worker");
    let json = serde_json::to_value(registry.list_hives(now)).expect("serializes");
    assert_eq!(json[0]["liveness"], "online");
}

// ----- properties -----

/// One step of a random history.
#[derive(Debug, Clone)]
enum Op {
    /// A hive heartbeat. `epoch_choice`: 0 = restart, 1 = a late one from the previous epoch.
    Hive { hive: usize, epoch_choice: u8, seq_step: i64, leaving: bool, interval_ms: u64 },
    /// A worker heartbeat.
    Worker { worker: usize, epoch_choice: u8, seq_step: i64, figures: WorkerFigures },
    /// Time passes.
    Advance(u64),
    /// The expiry tick.
    Expire,
    /// The queen fences a worker.
    Fence(usize),
    /// The queen reserves a slot.
    Reserve(usize),
    /// The queen releases a slot.
    Release(usize),
    /// A token chunk or job status from a worker, of its current epoch or another one.
    Activity { worker: usize, current_epoch: bool },
}

const HIVES: usize = 3;
const WORKERS: usize = 6;

fn interval() -> impl Strategy<Value = u64> {
    prop_oneof![Just(50u64), Just(500), Just(1000), Just(2000)]
}

fn worker_state() -> impl Strategy<Value = WorkerState> {
    prop_oneof![
        1 => Just(WorkerState::Loading),
        3 => Just(WorkerState::Idle),
        3 => Just(WorkerState::Busy),
        1 => Just(WorkerState::Draining),
        1 => Just(WorkerState::Stopped),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let figures = (worker_state(), 0u32..5, 0u32..6, 0u32..200, interval()).prop_map(
        |(state, slots_total, slots_busy, tps, interval_ms)| WorkerFigures {
            state,
            slots_total,
            slots_busy,
            tokens_per_second: f64::from(tps),
            interval_ms,
        },
    );
    prop_oneof![
        3 => (0..HIVES, 0u8..12, -2i64..5, prop::bool::weighted(0.15), interval())
            .prop_map(|(hive, epoch_choice, seq_step, leaving, interval_ms)| {
                Op::Hive { hive, epoch_choice, seq_step, leaving, interval_ms }
            }),
        6 => (0..WORKERS, 0u8..12, -2i64..5, figures)
            .prop_map(|(worker, epoch_choice, seq_step, figures)| {
                Op::Worker { worker, epoch_choice, seq_step, figures }
            }),
        3 => (0u64..7000).prop_map(Op::Advance),
        2 => Just(Op::Expire),
        1 => (0..WORKERS).prop_map(Op::Fence),
        1 => (0..WORKERS).prop_map(Op::Reserve),
        1 => (0..WORKERS).prop_map(Op::Release),
        2 => (0..WORKERS, prop::bool::weighted(0.8))
            .prop_map(|(worker, current_epoch)| Op::Activity { worker, current_epoch }),
    ]
}

/// What the test knows about one publisher's stream.
#[derive(Debug, Default, Clone)]
struct Stream {
    epoch: u32,
    last_seq: u64,
}

impl Stream {
    /// The envelope of the next heartbeat: a restart, a late one from the previous epoch, or the
    /// current epoch with the sequence moved by `step` (duplicates, reordering and gaps).
    fn next(&mut self, prefix: &str, epoch_choice: u8, step: i64) -> (String, u64) {
        match epoch_choice {
            0 => {
                self.epoch += 1;
                self.last_seq = 1;
                (format!("{prefix}{}", self.epoch), 1)
            }
            1 if self.epoch > 0 => (format!("{prefix}{}", self.epoch - 1), 1_000),
            _ => {
                self.last_seq = self.last_seq.saturating_add_signed(step).max(1);
                (format!("{prefix}{}", self.epoch), self.last_seq)
            }
        }
    }
}

/// The test's own model of fences: (epoch at fencing, when).
type Fences = HashMap<WorkerId, (String, Instant)>;

fn assignable_by_fields(view: &WorkerView) -> bool {
    view.liveness == Liveness::Online
        && !view.fenced
        && !view.hive_leaving
        && matches!(view.state, WorkerState::Idle | WorkerState::Busy)
        && view.slots_busy.saturating_add(view.slots_reserved) < view.slots_total
}

fn expected_liveness(age_ms: u64, interval_ms: u64, config: &RegistryConfig) -> Liveness {
    let interval = config.interval(interval_ms).as_millis() as u64;
    if age_ms > 3 * interval {
        Liveness::Offline
    } else if age_ms > 2 * interval {
        Liveness::Suspect
    } else {
        Liveness::Online
    }
}

fn check_views(
    registry: &Registry,
    now: Instant,
    fences: &Fences,
    config: &RegistryConfig,
) -> Result<(), TestCaseError> {
    let workers = registry.list_workers(now);
    for view in &workers {
        prop_assert_eq!(
            view.liveness,
            expected_liveness(view.presence.age_ms, view.presence.interval_ms, config)
        );
        prop_assert_eq!(view.assignable, assignable_by_fields(view), "assignable flag of {:?}", view);
        let leaving = registry.get_hive(&view.hive_id, now).is_some_and(|hive| hive.leaving);
        prop_assert_eq!(view.hive_leaving, leaving);
        if let Some((epoch, fenced_at)) = fences.get(&view.worker_id) {
            let in_force = *epoch == view.presence.epoch
                && now.saturating_duration_since(*fenced_at) < config.fence_timeout;
            prop_assert_eq!(view.fenced, in_force, "fence of {:?}", view.worker_id);
        }
    }
    for hive in registry.list_hives(now) {
        prop_assert_eq!(
            hive.liveness,
            expected_liveness(hive.presence.age_ms, hive.presence.interval_ms, config)
        );
    }
    for model in 0..2 {
        let best = registry.find_best_worker_for_model(&model_id(model), now);
        let candidates: Vec<&WorkerView> =
            workers.iter().filter(|w| w.model_id == model_id(model) && assignable_by_fields(w)).collect();
        match best {
            None => prop_assert!(candidates.is_empty(), "no best worker but {:?}", candidates),
            Some(best) => {
                prop_assert!(assignable_by_fields(&best), "best worker not usable: {:?}", best);
                prop_assert!(!matches!(
                    best.state,
                    WorkerState::Loading | WorkerState::Draining | WorkerState::Stopped
                ));
                for other in candidates {
                    prop_assert!(
                        least_loaded_first(other, &best).is_ge(),
                        "{:?} is less loaded than {:?}",
                        other,
                        best
                    );
                }
            }
        }
    }
    let stats = registry.stats(now);
    prop_assert_eq!(stats.workers.total(), registry.worker_count());
    prop_assert_eq!(stats.hives.total(), registry.hive_count());
    Ok(())
}

fn liveness_map(registry: &Registry, now: Instant) -> HashMap<String, Liveness> {
    let hives = registry.list_hives(now).into_iter().map(|h| (format!("h/{}", h.hive_id), h.liveness));
    let workers = registry.list_workers(now).into_iter().map(|w| (format!("w/{}", w.worker_id), w.liveness));
    hives.chain(workers).collect()
}

/// Runs one random history, checking the invariants after every step.
fn run_history(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let config = RegistryConfig::default();
    let base = Instant::now();
    let mut now = base;
    let mut registry = Registry::new(config.clone());
    let mut hive_streams = vec![Stream::default(); HIVES];
    let mut worker_streams = vec![Stream::default(); WORKERS];
    let mut expected_gaps = 0u64;
    let mut fences = Fences::new();
    // (worker, epoch) removed on purpose, and when: must not come back within the tombstone ttl.
    let mut buried: Vec<(WorkerId, String, Instant)> = Vec::new();

    for op in ops {
        let changes = match op {
            Op::Hive { hive, epoch_choice, seq_step, leaving, interval_ms } => {
                let (epoch, seq) = hive_streams[hive].next("h", epoch_choice, seq_step);
                let state = if leaving { HiveState::Leaving } else { HiveState::Online };
                let before = registry.get_hive(&hive_id(hive), now);
                let workers_before: Vec<WorkerView> = registry.workers_on_hive(&hive_id(hive), now);
                if let Some(view) = &before {
                    if view.presence.epoch == epoch && seq > view.presence.seq + 1 {
                        expected_gaps += seq - view.presence.seq - 1;
                    }
                }
                let changes = registry.apply_hive(&hive_beat(hive, &epoch, seq, interval_ms, state), now);
                let after = registry.get_hive(&hive_id(hive), now);
                let restarted =
                    matches!((&before, &after), (Some(b), Some(a)) if b.presence.epoch != a.presence.epoch);
                if restarted {
                    prop_assert!(
                        registry.workers_on_hive(&hive_id(hive), now).is_empty(),
                        "old-epoch workers left"
                    );
                    for worker in workers_before {
                        buried.push((worker.worker_id, worker.presence.epoch, now));
                    }
                }
                changes
            }
            Op::Worker { worker, epoch_choice, seq_step, figures } => {
                let (epoch, seq) = worker_streams[worker].next("w", epoch_choice, seq_step);
                if let Some(view) = registry.get_worker(&worker_id(worker), now) {
                    if view.presence.epoch == epoch && seq > view.presence.seq + 1 {
                        expected_gaps += seq - view.presence.seq - 1;
                    }
                }
                let stale_before = registry.stats(now).stale_ignored;
                let changes = registry.apply_worker(&worker_beat(worker, &epoch, seq, &figures), now);
                let accepted = registry.stats(now).stale_ignored == stale_before;
                if figures.state == WorkerState::Stopped && accepted {
                    prop_assert!(
                        registry.get_worker(&worker_id(worker), now).is_none(),
                        "stopped worker kept"
                    );
                    buried.push((worker_id(worker), epoch, now));
                }
                changes
            }
            Op::Advance(ms) => {
                let before = liveness_map(&registry, now);
                now += Duration::from_millis(ms);
                let after = liveness_map(&registry, now);
                for (id, liveness) in before {
                    prop_assert!(
                        after.get(&id).is_some_and(|later| *later >= liveness),
                        "{} went back from {:?}",
                        id,
                        liveness
                    );
                }
                Vec::new()
            }
            Op::Expire => {
                let hives = registry.list_hives(now);
                let workers = registry.list_workers(now);
                let changes = registry.expire(now);
                for hive in hives {
                    let removal_ms =
                        config.removal_age(config.interval(hive.presence.interval_ms)).as_millis() as u64;
                    let kept = registry.get_hive(&hive.hive_id, now).is_some();
                    prop_assert_eq!(
                        kept,
                        hive.presence.age_ms <= removal_ms,
                        "hive {} aged {} ms",
                        hive.hive_id,
                        hive.presence.age_ms
                    );
                }
                for worker in workers {
                    let removal_ms =
                        config.removal_age(config.interval(worker.presence.interval_ms)).as_millis() as u64;
                    let kept = registry.get_worker(&worker.worker_id, now).is_some();
                    prop_assert_eq!(
                        kept,
                        worker.presence.age_ms <= removal_ms,
                        "worker {} aged {} ms",
                        worker.worker_id,
                        worker.presence.age_ms
                    );
                }
                changes
            }
            Op::Fence(worker) => {
                if let Some(view) = registry.get_worker(&worker_id(worker), now) {
                    fences.insert(worker_id(worker), (view.presence.epoch, now));
                }
                registry.fence_worker(&worker_id(worker), "refused", now)
            }
            Op::Reserve(worker) => {
                let free = registry.get_worker(&worker_id(worker), now).map(|view| view.slots_free);
                let reserved = registry.reserve_slot(&worker_id(worker), now);
                prop_assert_eq!(reserved, free.is_some_and(|free| free > 0));
                Vec::new()
            }
            Op::Release(worker) => {
                registry.release_slot(&worker_id(worker));
                Vec::new()
            }
            Op::Activity { worker, current_epoch } => {
                let before = registry.get_worker(&worker_id(worker), now);
                let epoch = match (&before, current_epoch) {
                    (Some(view), true) => view.presence.epoch.clone(),
                    _ => "w-other".to_owned(),
                };
                let changes = registry.apply_worker_activity(&worker_id(worker), &epoch, now);
                let after = registry.get_worker(&worker_id(worker), now);
                match (&before, &after) {
                    (None, None) => prop_assert!(changes.is_empty()),
                    (Some(b), Some(a)) => {
                        // Liveness only: the heartbeat's figures and the queen's marks stay.
                        prop_assert_eq!(
                            (
                                a.state,
                                a.slots_busy,
                                a.slots_reserved,
                                a.presence.seq,
                                &a.presence.epoch,
                                a.fenced
                            ),
                            (
                                b.state,
                                b.slots_busy,
                                b.slots_reserved,
                                b.presence.seq,
                                &b.presence.epoch,
                                b.fenced
                            )
                        );
                        if b.presence.epoch == epoch {
                            prop_assert_eq!((a.presence.age_ms, a.liveness), (0, Liveness::Online));
                        } else {
                            prop_assert_eq!(a.presence.age_ms, b.presence.age_ms);
                            prop_assert!(changes.is_empty());
                        }
                    }
                    _ => prop_assert!(false, "a sign of life added or removed a worker"),
                }
                changes
            }
        };
        for change in &changes {
            if let Change::WorkerRemoved { worker_id, .. } = change {
                fences.remove(worker_id);
            }
        }
        prop_assert_eq!(registry.stats(now).seq_gaps, expected_gaps);
        for (worker, epoch, at) in &buried {
            if now.saturating_duration_since(*at) < config.tombstone_ttl {
                let back = registry.get_worker(worker, now).is_some_and(|view| &view.presence.epoch == epoch);
                prop_assert!(!back, "{} came back with buried epoch {}", worker, epoch);
            }
        }
        check_views(&registry, now, &fences, &config)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_histories_keep_the_registry_honest(ops in prop::collection::vec(op(), 1..80)) {
        run_history(ops)?;
    }
}
