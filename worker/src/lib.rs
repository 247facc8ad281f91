//! rbee worker: one process serving one loaded model. It generates tokens with llama.cpp ([`engine`]),
//! takes jobs and streams tokens over NATS ([`jobs`]), cancels them ([`cancels`]), and heartbeats its state ([`heartbeat`]). It
//! speaks nothing but NATS; the daemon plumbing (service registration, hello, heartbeat loop, task
//! draining, the shutdown step) is `rbee_daemon`'s. [`run`] is the whole worker; `main.rs` only
//! parses flags.

pub mod cancels;
pub mod config;
pub mod embed;
pub mod engine;
pub mod heartbeat;
pub mod jobs;
pub mod rpc;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use futures::StreamExt;
use rbee_bus::{subject, Bus, EventStamper, WorkerState};
use rbee_daemon::shutdown::{self, bounded};
use rbee_daemon::Tasks;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use config::WorkerConfig;
use engine::{Engine, EngineConfig};
use jobs::{ActiveJobs, JobCounters};

/// Assignments taken off the bus and not yet decided, at most (the bus holds any more).
const ASSIGNMENTS_IN_HAND: usize = 64;

/// State shared by the worker's tasks.
#[derive(Debug)]
pub struct WorkerShared {
    /// The configuration it was started with.
    pub config: WorkerConfig,
    /// The NATS connection.
    pub bus: Bus,
    /// Stamps every event this worker publishes.
    pub stamper: EventStamper,
    /// The engine, once the model is loaded.
    pub engine: OnceLock<Engine>,
    /// Jobs running now.
    pub active: ActiveJobs,
    /// Recent cancels of jobs not running here (they may overtake their assignment).
    pub early_cancels: cancels::EarlyCancels,
    /// Accepted/refused/malformed counts.
    pub counters: Arc<JobCounters>,
    /// `rbee.worker.<id>.jobs`, kept for error messages.
    pub jobs_subject: String,
    /// Wakes the heartbeat loop for a heartbeat now.
    pub beat_now: Arc<Notify>,
    /// The highest queen leader fence seen (orders below it are refused).
    pub fence: Arc<rbee_daemon::fence::Fence>,
    state: AtomicU8,
}

impl WorkerShared {
    /// The announced state.
    pub fn state(&self) -> WorkerState {
        match self.state.load(Ordering::Acquire) {
            0 => WorkerState::Loading,
            1 => WorkerState::Idle,
            2 => WorkerState::Draining,
            _ => WorkerState::Stopped,
        }
    }

    fn set_state(&self, state: WorkerState) {
        let code = match state {
            WorkerState::Loading => 0,
            WorkerState::Idle | WorkerState::Busy => 1,
            WorkerState::Draining => 2,
            WorkerState::Stopped => 3,
        };
        self.state.store(code, Ordering::Release);
    }

    /// True once shutdown began.
    pub fn draining(&self) -> bool {
        matches!(self.state(), WorkerState::Draining | WorkerState::Stopped)
    }
}

/// Runs a worker until `shutdown` is cancelled: loads the model, serves jobs, then drains in-flight jobs
/// (cancelling what is left after the drain deadline), sends a last `stopped` heartbeat and returns.
pub async fn run(config: WorkerConfig, bus: Bus, shutdown: CancellationToken) -> anyhow::Result<()> {
    let jobs_subject = subject::worker_jobs(&config.worker_id);
    let shared = Arc::new(WorkerShared {
        stamper: EventStamper::new(config.worker_id.as_str()),
        bus: bus.clone(),
        engine: OnceLock::new(),
        active: ActiveJobs::default(),
        early_cancels: cancels::EarlyCancels::default(),
        counters: Arc::new(JobCounters::default()),
        jobs_subject: jobs_subject.clone(),
        beat_now: Arc::new(Notify::new()),
        fence: Arc::default(),
        state: AtomicU8::new(0),
        config,
    });
    let tasks = Tasks::new();
    let background_stop = tasks.token();
    let beat_now = shared.beat_now.clone();
    let hello = rbee_daemon::heartbeat::subscribe_hello(&bus).await?;
    tasks.spawn("heartbeat", heartbeat::run(shared.clone(), beat_now.clone(), background_stop.clone()));
    tasks.spawn(
        "hello",
        rbee_daemon::heartbeat::listen_for_hello(
            hello,
            beat_now.clone(),
            shared.fence.clone(),
            background_stop.clone(),
        ),
    );

    let engine_config = EngineConfig {
        model_path: shared.config.model_path.clone(),
        threads: shared.config.threads,
        slots: shared.config.slots,
        ctx_per_slot: shared.config.ctx_per_slot,
        gpu_layers: shared.config.gpu_layers,
        prefix_reuse: shared.config.prefix_reuse,
        prefix_cache_bytes: shared.config.prefix_cache_bytes,
        rpc_servers: shared.config.rpc_servers.clone(),
    };
    let started = std::time::Instant::now();
    let load = tokio::task::spawn_blocking(move || Engine::load(engine_config));
    let engine = tokio::select! {
        _ = shutdown.cancelled() => {
            finish(&shared, &tasks).await;
            return Ok(());
        }
        loaded = load => loaded.context("model load task failed")?.context("cannot load the model")?,
    };
    tracing::info!(load_ms = started.elapsed().as_millis() as u64, model = %shared.config.model_id, "model loaded");
    let _ = shared.engine.set(engine.clone());

    let service = register_service(&shared).await?;
    let mut jobs = rbee_daemon::service::endpoint(&service, "jobs", jobs_subject.clone()).await?;
    let cancels =
        bus.client().subscribe(subject::JOB_CANCEL_ALL).await.context("cannot subscribe to cancels")?;
    tasks.spawn("cancels", cancels::listener(shared.clone(), cancels, background_stop.clone()));
    let embeds =
        rbee_daemon::service::endpoint(&service, "embed", subject::worker_embed(&shared.config.worker_id))
            .await?;
    tasks.spawn("embed", embed::serve(shared.clone(), engine.clone(), embeds, background_stop.clone()));
    // Ready means a job sent now is accepted: confirm the subscriptions with a server round trip first.
    bus.round_trip().await.context("nats round trip after subscribing")?;
    shared.set_state(WorkerState::Idle);
    heartbeat::send(&shared).await;
    tracing::info!(worker_id = %shared.config.worker_id, subject = %jobs_subject, "worker ready");

    // Assignments are taken off the bus as they come, each marked as on its way into the engine until
    // it is decided ([`Engine::arriving`]): an idle batch loop holding one job waits for the others
    // sent with it, and a lone job starts at once.
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::channel(ASSIGNMENTS_IN_HAND);
    let (take_engine, take_stop) = (engine.clone(), shutdown.clone());
    tasks.spawn("assignments", async move {
        loop {
            let request = tokio::select! {
                _ = take_stop.cancelled() => break,
                request = jobs.next() => match request { Some(r) => r, None => break },
            };
            if arrived_tx.send((take_engine.arriving(), request)).await.is_err() {
                break;
            }
        }
    });
    let job_tasks = Tasks::new();
    loop {
        let (arriving, request) = tokio::select! {
            _ = shutdown.cancelled() => break,
            arrived = arrived.recv() => match arrived { Some(a) => a, None => break },
        };
        // A panic while deciding is answered with an `internal` error; the worker and its jobs go on.
        let result = rbee_bus::rpc::respond_guarded(&request, "job assignment", async {
            let decided = jobs::handle_assignment(&shared, &engine, &job_tasks, &request.message.payload);
            drop(arriving);
            decided
        })
        .await;
        if result.is_ok() {
            beat_now.notify_one();
        }
    }

    // Drain: no new jobs; in-flight ones finish or are cancelled at the deadline.
    shared.set_state(WorkerState::Draining);
    bounded("draining heartbeat", heartbeat::send(&shared)).await;
    tracing::info!(in_flight = shared.active.len(), "worker draining");
    if !job_tasks.drain(shared.config.drain_deadline).await {
        tracing::warn!(in_flight = shared.active.len(), "drain deadline passed, cancelling jobs");
        shared.active.cancel_all();
        job_tasks.drain(std::time::Duration::from_secs(5)).await;
    }
    bounded("service stop", service.stop()).await;
    engine.shutdown();
    finish(&shared, &tasks).await;
    Ok(())
}

async fn finish(shared: &WorkerShared, tasks: &Tasks) {
    tasks.cancel_and_drain(shutdown::STEP).await;
    shared.set_state(WorkerState::Stopped);
    bounded("stopped heartbeat", heartbeat::send(shared)).await;
    shutdown::flush(&shared.bus).await;
    tracing::info!(worker_id = %shared.config.worker_id, "worker stopped");
}

async fn register_service(shared: &WorkerShared) -> anyhow::Result<async_nats::service::Service> {
    let c = &shared.config;
    let metadata = HashMap::from([
        ("worker_id".to_owned(), c.worker_id.to_string()),
        ("hive_id".to_owned(), c.hive_id.to_string()),
        ("model_id".to_owned(), c.model_id.to_string()),
        ("device".to_owned(), c.device.clone()),
    ]);
    let active = shared.active.clone();
    let counters = shared.counters.clone();
    let stats = move || {
        serde_json::json!({
            "active_jobs": active.len(),
            "accepted": counters.accepted.load(Ordering::Relaxed),
            "refused": counters.refused.load(Ordering::Relaxed),
            "malformed": counters.malformed.load(Ordering::Relaxed),
            "finished": counters.finished.load(Ordering::Relaxed),
        })
    };
    let description = format!("rbee worker {} serving {}", c.worker_id, c.model_id);
    rbee_daemon::service::register(&shared.bus, "rbee-worker", description, metadata, stats).await
}
