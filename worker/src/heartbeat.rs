//! The worker's heartbeat on `rbee.worker.<id>.heartbeat`: state, slots, throughput and memory, every
//! interval, and at once when the queen says hello or the state changes.

use std::sync::Arc;

use rbee_bus::{subject, Backend, WorkerHeartbeat, WorkerState, SCHEMA_VERSION};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::WorkerShared;

/// Builds the heartbeat from the current state.
pub fn current(shared: &WorkerShared) -> WorkerHeartbeat {
    let engine = shared.engine.get();
    // Before the slots: every job counted here already holds its slot (or has ended).
    let jobs_accepted = shared.counters.accepted.load(std::sync::atomic::Ordering::Acquire);
    let slots_busy = engine.map(|e| e.slots_busy()).unwrap_or(0) as u32;
    let mut state = shared.state();
    if state == WorkerState::Idle && slots_busy > 0 {
        state = WorkerState::Busy;
    }
    WorkerHeartbeat {
        v: SCHEMA_VERSION,
        meta: shared.stamper.next(),
        worker_id: shared.config.worker_id.clone(),
        hive_id: shared.config.hive_id.clone(),
        model_id: shared.config.model_id.clone(),
        state,
        backend: backend(),
        device: shared.config.device.clone(),
        slots_total: shared.config.slots as u32,
        slots_busy,
        ctx_per_slot: shared.config.ctx_per_slot,
        tokens_per_second: engine.map(|e| e.tokens_per_second()).unwrap_or(0.0),
        memory_bytes: resident_memory_bytes(),
        pid: std::process::id(),
        interval_ms: shared.config.heartbeat_interval.as_millis() as u64,
        prefix_fingerprints: engine.map(|e| e.prefix_fingerprints()).unwrap_or_default(),
        jobs_accepted: Some(jobs_accepted),
    }
}

/// Publishes one heartbeat now.
pub async fn send(shared: &WorkerShared) {
    let hb = current(shared);
    if let Err(e) = shared.bus.publish(subject::worker_heartbeat(&shared.config.worker_id), &hb).await {
        tracing::warn!(error = %e, "cannot publish heartbeat");
    }
}

/// Heartbeats every interval, and whenever `now` is notified, until `stop`.
pub async fn run(shared: Arc<WorkerShared>, now: Arc<Notify>, stop: CancellationToken) {
    let interval = shared.config.heartbeat_interval;
    rbee_daemon::heartbeat::run(interval, now, stop, || send(&shared)).await;
}

/// The backend this binary was built for.
pub fn backend() -> Backend {
    if cfg!(feature = "cuda") {
        Backend::Cuda
    } else {
        Backend::Cpu
    }
}

/// Resident set size of this process, from `/proc/self/statm` (0 where unavailable).
pub fn resident_memory_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else { return 0 };
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}
