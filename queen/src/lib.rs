//! rbee queen: the scheduler and the front door. Its registry of hives and workers is a view folded from
//! heartbeats ([`heartbeats`] feeds [`registry`]); the pure [`scheduler`] places every job, which
//! [`jobs::dispatch`] carries out over NATS (assign, spawn, queue, retry); [`jobs::stream`] relays
//! tokens; [`http`] serves the OpenAI-compatible API on 127.0.0.1:7833 and [`submit`] takes jobs over
//! NATS. [`run`] is the whole queen; `main.rs` only parses flags.

pub mod config;
pub mod error;
pub mod heartbeats;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod registry;
pub mod scheduler;
pub mod submit;

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use anyhow::Context;
use rbee_bus::{Bus, EventStamper, HiveId, ModelId, QueenId};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use config::QueenConfig;
use jobs::registry::{JobRegistry, JobRetention};
use jobs::stream::JobStreams;
use registry::{Registry, RegistryConfig};

/// The queen's state, shared by its tasks and handlers.
pub struct Queen {
    /// Its configuration.
    pub config: QueenConfig,
    /// The NATS connection.
    pub bus: Bus,
    /// Stamps its events (status, cancel, hello).
    pub stamper: EventStamper,
    /// Buffers of running and recent jobs.
    pub streams: JobStreams,
    /// Counters and histograms.
    pub metrics: metrics::Metrics,
    /// Notified whenever the registry changes (jobs waiting in the queue re-check).
    pub registry_changed: Notify,
    /// Jobs waiting for a slot or a spawn.
    pub queued: AtomicUsize,
    /// Spawns requested for queued jobs, by hive and model, with when.
    pub spawning: Mutex<HashMap<(HiveId, ModelId), Instant>>,
    registry: Mutex<Registry>,
    jobs: Mutex<JobRegistry>,
}

impl Queen {
    /// A queen with empty registries.
    pub fn new(config: QueenConfig, bus: Bus) -> Self {
        let retention = JobRetention {
            max_finished: config.max_finished_jobs,
            max_age_ms: config.finished_job_ttl.as_millis() as u64,
        };
        Self {
            stamper: EventStamper::new(QueenId::new("queen").map(|q| q.to_string()).unwrap_or_default()),
            streams: JobStreams::default(),
            metrics: metrics::Metrics::default(),
            registry_changed: Notify::new(),
            queued: AtomicUsize::new(0),
            spawning: Mutex::new(HashMap::new()),
            registry: Mutex::new(Registry::new(RegistryConfig::default())),
            jobs: Mutex::new(JobRegistry::new(retention)),
            config,
            bus,
        }
    }

    /// The registry (held briefly: never across an await).
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The job registry (held briefly: never across an await).
    pub fn jobs(&self) -> MutexGuard<'_, JobRegistry> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// True when a worker serves the model or a hive has it in its catalog.
    pub fn model_known(&self, model_id: &ModelId) -> bool {
        let now = Instant::now();
        let registry = self.registry();
        !registry.list_workers_for_model(model_id, now).is_empty()
            || !registry.find_hives_with_model(model_id, now).is_empty()
    }
}

/// Runs a queen until `shutdown`: warm-starts the registry (hello) and the job history (JetStream),
/// then serves NATS submissions and HTTP. Returns after HTTP has drained.
pub async fn run(config: QueenConfig, bus: Bus, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.http_addr))?;
    serve(config, bus, listener, shutdown).await
}

/// [`run`] on a listener the caller bound (tests bind port 0).
pub async fn serve(
    config: QueenConfig,
    bus: Bus,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let durable = config.durable_jobs;
    let queen = Arc::new(Queen::new(config, bus));
    let background = CancellationToken::new();
    jobs::stream::start(queen.clone(), background.clone()).await.context("cannot subscribe to job events")?;
    if durable {
        match jobs::store::replay(&queen).await {
            Ok(n) => tracing::info!(events = n, "job history replayed from jetstream"),
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "job history not durable (jetstream unavailable)")
            }
        }
    }
    heartbeats::start(queen.clone(), background.clone()).await.context("cannot subscribe to heartbeats")?;
    submit::serve(queen.clone(), background.clone()).await?;
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "queen serving http");
    let app = http::router(queen.clone());
    let stop = shutdown.clone();
    axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await?;
    background.cancel();
    // Bounded: with the server gone, the queen still exits.
    if tokio::time::timeout(std::time::Duration::from_secs(2), queen.bus.client().flush()).await.is_err() {
        tracing::warn!("could not flush the last messages to nats");
    }
    tracing::info!("queen stopped");
    Ok(())
}
