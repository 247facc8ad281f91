//! rbee hive: one per machine. It knows the machine ([`inventory`]), keeps what is installed there
//! ([`catalog`]: worker binaries and GGUF models on disk), starts and watches worker processes
//! ([`supervisor`], [`running`]; [`load_failures`] holds off models that keep failing to load), answers requests about workers, models and devices ([`handlers`],
//! one task per endpoint) and tells the cluster about all of it ([`heartbeat`]). The daemon plumbing
//! (service registration, hello, heartbeat loop, task draining) is `rbee_daemon`'s. [`run`] is the
//! whole hive; `main.rs` only parses flags.

pub mod catalog;
pub mod config;
pub mod handlers;
pub mod heartbeat;
pub mod inventory;
pub mod load_failures;
pub mod running;
pub mod supervisor;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use futures::StreamExt;
use rbee_bus::{subject, Bus, EventStamper, HiveState, WorkerHeartbeat, WorkerState};
use rbee_daemon::Tasks;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use catalog::{CatalogPaths, ModelCatalog, WorkerCatalog, WorkerType};
pub use config::{HiveConfig, ModelImport};
use inventory::{Inventory, Snapshot};
use running::{RunningWorkers, WorkerStatus};
use supervisor::{Supervisor, SupervisorConfig};

/// The hive's state, shared by its tasks and handlers.
pub struct Hive {
    /// Its configuration.
    pub config: HiveConfig,
    /// The NATS connection.
    pub bus: Bus,
    /// Stamps its events.
    pub stamper: Arc<EventStamper>,
    /// The machine's host name.
    pub hostname: String,
    /// Worker binaries.
    pub workers_catalog: WorkerCatalog,
    /// Models.
    pub models: ModelCatalog,
    /// Spawned workers.
    pub workers: RunningWorkers,
    /// Starts and stops them.
    pub supervisor: Supervisor,
    /// Background tasks (heartbeat, listeners, model downloads), cancelled and drained on shutdown.
    pub background: Tasks,
    inventory: Mutex<Inventory>,
    shutting_down: AtomicBool,
    beat_now: Arc<Notify>,
    /// The highest queen leader fence seen: spawns and stops below it are refused.
    pub fence: Arc<rbee_daemon::fence::Fence>,
    rejected: Arc<AtomicU64>,
}

impl Hive {
    /// A fresh reading of devices and memory, within [`HiveConfig::memory_limit`] when one is set.
    pub fn inventory_snapshot(&self) -> Snapshot {
        let mut snapshot = self.inventory.lock().unwrap_or_else(PoisonError::into_inner).read();
        if let Some(limit) = self.config.memory_limit {
            let used: u64 = self
                .workers
                .list()
                .iter()
                .filter(|w| w.is_running() && w.device == "cpu")
                .fold(0u64, |sum, w| sum.saturating_add(w.memory_bytes));
            for cpu in snapshot.devices.iter_mut().filter(|d| d.kind == rbee_bus::DeviceKind::Cpu) {
                cpu.total_bytes = cpu.total_bytes.min(limit);
                cpu.free_bytes = cpu.free_bytes.min(limit.saturating_sub(used));
            }
            snapshot.ram.total_bytes = snapshot.ram.total_bytes.min(limit);
            snapshot.ram.available_bytes = snapshot.ram.available_bytes.min(limit.saturating_sub(used));
        }
        snapshot
    }

    /// Sends a heartbeat now rather than at the next interval (after the catalog or a worker changed).
    pub fn heartbeat_soon(&self) {
        self.beat_now.notify_one();
    }

    /// Counts and logs a message that did not decode; the hive goes on.
    pub fn reject(&self, subject: &str, error: &dyn std::fmt::Display) {
        let total = self.rejected.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(%subject, %error, rejected_total = total, "malformed message rejected");
    }

    /// Messages rejected so far.
    pub fn rejected_count(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// True once shutdown began: spawns are refused.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
}

/// Runs a hive until `shutdown`: then it stops taking spawns, stops every worker within the deadline,
/// sends a last heartbeat saying it leaves, and returns.
pub async fn run(config: HiveConfig, bus: Bus, shutdown: CancellationToken) -> anyhow::Result<()> {
    let paths = CatalogPaths::new(&config.catalog_root);
    let workers_catalog =
        WorkerCatalog::new(paths.workers_dir()).context("cannot open the worker catalog")?;
    let models = ModelCatalog::new(paths.models_dir())
        .context("cannot open the model catalog")?
        .with_max_download(config.max_model_bytes);
    let stamper = Arc::new(EventStamper::new(config.hive_id.as_str()));
    let workers = RunningWorkers::with_load_retry(config.load_retry);
    let supervisor = Supervisor::new(SupervisorConfig {
        hive_id: config.hive_id.clone(),
        bus: bus.clone(),
        stamper: stamper.clone(),
        workers: workers.clone(),
        run_dir: config.catalog_root.join("run").join(config.hive_id.as_str()),
        worker_nats_args: config.worker_nats_args.clone(),
        heartbeat_ms: config.heartbeat_interval.as_millis() as u64,
        restart: config.restart,
    });
    let orphans = supervisor.kill_orphans();
    if orphans > 0 {
        tracing::warn!(orphans, "killed worker processes left by a previous hive");
    }
    if let Some(bin) = &config.worker_binary {
        match workers_catalog.register_binary(WorkerType::CpuLlm, env!("CARGO_PKG_VERSION"), bin) {
            Ok(b) => tracing::info!(id = %b.id, path = %b.path.display(), "worker binary registered"),
            Err(e) => tracing::warn!(path = %bin.display(), error = %e, "cannot register the worker binary"),
        }
    }
    for import in &config.import_models {
        import_model(&models, import).await;
    }
    let (_, problems) = models.list_with_problems();
    for p in problems {
        tracing::warn!(path = %p.path.display(), reason = %p.reason, "skipping broken model catalog entry");
    }

    let beat_now = Arc::new(Notify::new());
    let rejected = Arc::new(AtomicU64::new(0));
    let hive = Arc::new(Hive {
        beat_now: beat_now.clone(),
        fence: Arc::default(),
        rejected: rejected.clone(),
        hostname: sysinfo::System::host_name().unwrap_or_else(|| "unknown".to_owned()),
        inventory: Mutex::new(Inventory::detect()),
        shutting_down: AtomicBool::new(false),
        config,
        bus: bus.clone(),
        stamper,
        workers_catalog,
        models,
        workers,
        supervisor,
        background: Tasks::new(),
    });

    let metadata = [("hive_id".to_owned(), hive.config.hive_id.to_string())].into();
    let stats = {
        let hive = hive.clone();
        move || {
            serde_json::json!({
                "workers_running": hive.supervisor.running_count(),
                "models": hive.models.list().len(),
                "rejected_messages": hive.rejected_count(),
            })
        }
    };
    let description = format!("rbee hive {}", hive.config.hive_id);
    let service = rbee_daemon::service::register(&bus, "rbee-hive", description, metadata, stats).await?;
    let tasks = hive.background.clone();
    let background_stop = tasks.token();
    let hello = rbee_daemon::heartbeat::subscribe_hello(&bus).await?;
    let worker_beats = bus
        .client()
        .subscribe(subject::WORKER_HEARTBEAT_ALL)
        .await
        .context("subscribe to worker heartbeats")?;
    let requests = Tasks::new();
    handlers::serve(&hive, &service, &requests, &shutdown).await?;
    bus.round_trip().await.context("nats round trip after subscribing")?;
    tasks.spawn("heartbeat", heartbeat::run(hive.clone(), beat_now.clone(), background_stop.clone()));
    tasks.spawn(
        "hello",
        rbee_daemon::heartbeat::listen_for_hello(
            hello,
            beat_now.clone(),
            hive.fence.clone(),
            background_stop.clone(),
        ),
    );
    tasks.spawn(
        "worker states",
        track_worker_states(hive.clone(), worker_beats, beat_now.clone(), background_stop.clone()),
    );
    tracing::info!(hive_id = %hive.config.hive_id, models = hive.models.list().len(), "hive ready");

    shutdown.cancelled().await;

    tracing::info!(workers = hive.supervisor.running_count(), "hive shutting down");
    hive.shutting_down.store(true, Ordering::Release);
    hive.supervisor.stop_all(hive.config.stop_deadline).await;
    requests.drain(std::time::Duration::from_secs(5)).await;
    // Every step that talks to NATS is bounded: with the server gone, the hive still exits.
    tasks.cancel_and_drain(rbee_daemon::shutdown::STEP * 2).await;
    rbee_daemon::shutdown::bounded("leaving heartbeat", heartbeat::send(&hive, HiveState::Leaving)).await;
    rbee_daemon::shutdown::bounded("service stop", service.stop()).await;
    rbee_daemon::shutdown::flush(&bus).await;
    tracing::info!(hive_id = %hive.config.hive_id, "hive stopped");
    Ok(())
}

async fn import_model(models: &ModelCatalog, import: &ModelImport) {
    let id = match &import.id {
        Some(id) => id.clone(),
        None => match ModelCatalog::model_id_default_for(&import.path) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(path = %import.path.display(), error = %e, "cannot derive a model id");
                return;
            }
        },
    };
    if models.contains(&id) {
        return;
    }
    let models = models.clone();
    let path = import.path.clone();
    let result = tokio::task::spawn_blocking(move || models.import_local(&path, Some(id))).await;
    match result {
        Ok(Ok(entry)) => tracing::info!(model_id = %entry.id, size = entry.size, "model imported"),
        Ok(Err(e)) => tracing::warn!(path = %import.path.display(), error = %e, "cannot import model"),
        Err(e) => tracing::warn!(error = %e, "model import task failed"),
    }
}

/// Follows the heartbeats of this hive's workers to keep their status current.
async fn track_worker_states(
    hive: Arc<Hive>,
    mut sub: async_nats::Subscriber,
    now: Arc<Notify>,
    stop: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            msg = sub.next() => match msg { Some(m) => m, None => return },
        };
        let hb = match rbee_bus::rpc::decode::<WorkerHeartbeat>(&msg.subject, &msg.payload) {
            Ok(hb) => hb,
            Err(e) => {
                hive.reject(&msg.subject, &e);
                continue;
            }
        };
        if hb.hive_id != hive.config.hive_id {
            continue;
        }
        let Ok(entry) = hive.workers.get(&hb.worker_id) else { continue };
        if !entry.is_running() {
            continue;
        }
        let status = match hb.state {
            WorkerState::Loading => WorkerStatus::Starting,
            WorkerState::Idle => WorkerStatus::Ready,
            WorkerState::Busy | WorkerState::Draining => WorkerStatus::Busy,
            WorkerState::Stopped => continue,
        };
        if entry.status != status {
            let _ = hive.workers.update_status(&hb.worker_id, status);
            now.notify_one();
        }
    }
}
