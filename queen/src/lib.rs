//! rbee queen: the scheduler and the front door. Its view of hives and workers is folded from
//! heartbeats ([`heartbeats`] feeds [`membership`]); every job has one owner in the [`jobs`] table,
//! which the token relay ([`jobs::relay`]) and the queen's own decisions ([`jobs::announce`]) feed.
//! A job is admitted ([`jobs::admit`]), placed by the pure [`scheduler`] (its slot reserved by
//! [`placement`]) and carried out over NATS by [`jobs::dispatch`] (assign, spawn, queue, retry).
//! Idle workers unload after their keep-alive ([`keep_alive`], [`unload`]), and idle ones make room
//! for a model that fits nowhere ([`eviction`]).
//! [`http`] serves the OpenAI-compatible API on 127.0.0.1:7833 and [`submit`] takes jobs over NATS.
//! Several queens may run: one leads by a lease in JetStream KV ([`leader`]), the others keep warm
//! views, serve the read-only API and forward jobs to it ([`forward`]).
//! [`run`] is the whole queen; `main.rs` only parses flags.

pub mod changes;
pub mod config;
pub mod drain;
pub mod embed;
pub mod error;
pub mod eviction;
pub mod forward;
pub mod heartbeats;
pub mod http;
pub mod jobs;
pub mod keep_alive;
pub mod leader;
pub mod membership;
pub mod metrics;
pub mod placement;
pub mod replicas;
pub mod scheduler;
mod sequence;
pub mod split;
pub mod submit;
pub mod unload;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use rbee_bus::{Bus, EventStamper, ModelId, QueenId};
use rbee_daemon::Tasks;
use tokio_util::sync::CancellationToken;

pub use config::QueenConfig;
use jobs::spawns::SpawnsInFlight;
use jobs::table::{JobRetention, JobTable};
use membership::{Registry, RegistryConfig};

/// The publisher name on the queen's own events.
pub const QUEEN_PUBLISHER: &str = "queen";

/// Longest a starting queen waits for JetStream to finish starting.
const JETSTREAM_WAIT: Duration = Duration::from_secs(3);

/// How long the services (relay, heartbeats, submission) get to stop after the jobs drained.
const SERVICES_STOP: Duration = Duration::from_secs(2);

/// The queen's state, shared by its tasks and handlers. Each piece has one owner: the membership
/// view, the job table and the spawns in flight each behind their own lock (held briefly, never
/// across an await).
pub struct Queen {
    /// Its configuration.
    pub config: QueenConfig,
    /// The NATS connection.
    pub bus: Bus,
    /// Stamps its events (status, cancel, hello).
    pub stamper: EventStamper,
    /// Counters and histograms.
    pub metrics: metrics::Metrics,
    /// Notified whenever the membership view changes (jobs waiting in the queue re-check).
    pub registry_changed: changes::Changes,
    /// The work of jobs (placement loops, spawn requests): drained at shutdown; their token is
    /// cancelled at the drain deadline, when placement loops stop following their jobs.
    pub tasks: Tasks,
    /// Cancelled when the queen starts draining: nothing new is waited for (spawn markers end).
    pub draining: CancellationToken,
    /// What the warm start read of the JetStream job history (none before it ran, or without it).
    pub history: std::sync::OnceLock<jobs::store::ReplayReport>,
    registry: Mutex<Registry>,
    jobs: Mutex<JobTable>,
    spawns: Mutex<SpawnsInFlight>,
    keep_alive: Mutex<keep_alive::KeepAliveTable>,
    /// The bus feed the dashboards share.
    pub dashboard: http::dashboard::Feed,
    /// When the queen's NATS connection last came back (read by [`Queen::reconnected_within`]).
    reconnected_at: Mutex<Option<Instant>>,
    /// Whether this queen leads, and its term.
    pub leadership: leader::Leadership,
    /// The bucket of requests of jobs not yet ended (with a leader lease only).
    pub requests: std::sync::OnceLock<async_nats::jetstream::kv::Store>,
}

impl Queen {
    /// A queen with an empty view and job table.
    pub fn new(config: QueenConfig, bus: Bus) -> Self {
        let retention = JobRetention {
            max_finished: config.max_finished_jobs,
            max_age_ms: config.finished_job_ttl.as_millis() as u64,
            ..JobRetention::default()
        };
        Self {
            stamper: EventStamper::new(
                QueenId::new(QUEEN_PUBLISHER).map(|q| q.to_string()).unwrap_or_default(),
            ),
            metrics: metrics::Metrics::default(),
            registry_changed: changes::Changes::default(),
            tasks: Tasks::new(),
            draining: CancellationToken::new(),
            history: std::sync::OnceLock::new(),
            registry: Mutex::new(Registry::new(RegistryConfig::default())),
            jobs: Mutex::new(JobTable::new(retention)),
            spawns: Mutex::new(SpawnsInFlight::default()),
            keep_alive: Mutex::new(keep_alive::KeepAliveTable::new(config.keep_alive)),
            dashboard: http::dashboard::Feed::default(),
            leadership: leader::Leadership::default(),
            reconnected_at: Mutex::new(None),
            requests: std::sync::OnceLock::new(),
            config,
            bus,
        }
    }

    /// The membership view of hives and workers.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The job table.
    pub fn jobs(&self) -> MutexGuard<'_, JobTable> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spawns asked of hives for queued jobs.
    pub fn spawns(&self) -> MutexGuard<'_, SpawnsInFlight> {
        self.spawns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long each worker stays loaded when idle.
    pub fn keep_alive(&self) -> MutexGuard<'_, keep_alive::KeepAliveTable> {
        self.keep_alive.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// True when the queen's own NATS connection came back less than `window` ago: daemons are
    /// still resubscribing, so a missing responder says nothing about them yet.
    pub fn reconnected_within(&self, window: Duration) -> bool {
        self.reconnected_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < window)
    }

    /// Notes every reconnection of the queen's NATS connection, until `stop`.
    async fn watch_reconnects(self: Arc<Self>, stop: CancellationToken) {
        use std::sync::atomic::Ordering;
        let connects = || self.bus.client().statistics().connects.load(Ordering::Relaxed);
        let mut seen = connects();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            let now = connects();
            if now != seen {
                seen = now;
                *self.reconnected_at.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
            }
        }
    }

    /// True when a worker serves the model or a hive has it in its catalog.
    pub fn model_known(&self, model_id: &ModelId) -> bool {
        let now = Instant::now();
        let registry = self.registry();
        !registry.list_workers_for_model(model_id, now).is_empty()
            || !registry.find_hives_with_model(model_id, now).is_empty()
    }
}

/// Runs a queen until `shutdown`: warm-starts the view (hello) and the job history (JetStream),
/// then serves NATS submissions and HTTP. Returns after it drained (see [`serve`]).
pub async fn run(config: QueenConfig, bus: Bus, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut listeners = Vec::new();
    for addr in std::iter::once(config.http_addr).chain(config.also_http_addrs.iter().copied()) {
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        listeners.push(listener);
    }
    serve_on(config, bus, listeners, shutdown).await
}

/// [`run`] on a listener the caller bound (tests bind port 0). At `shutdown`: HTTP stops taking
/// requests and finishes those in flight, NATS submission stops, then the jobs this queen placed get
/// up to [`QueenConfig::drain_deadline`] to end (the relay still follows them); jobs still queued
/// then fail, and the services stop.
pub async fn serve(
    config: QueenConfig,
    bus: Bus,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_on(config, bus, vec![listener], shutdown).await
}

/// [`serve`] with the same API on several listeners.
async fn serve_on(
    config: QueenConfig,
    bus: Bus,
    listeners: Vec<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let durable = config.durable_jobs;
    let queen = Arc::new(Queen::new(config, bus));
    let services = Tasks::new();
    let stop_services = services.token();
    jobs::relay::start(queen.clone(), &services, stop_services.clone())
        .await
        .context("cannot subscribe to job events")?;
    if durable {
        wait_for_jetstream(&queen).await;
        match jobs::store::replay(&queen).await {
            Ok(report) => {
                if report.complete {
                    tracing::info!(events = report.events, "job history replayed from jetstream");
                } else {
                    tracing::warn!(
                        events = report.events,
                        read_to = report.read_to,
                        last = report.last_sequence,
                        error = report.error.as_deref().unwrap_or_default(),
                        "job history replayed in part"
                    );
                }
                let _ = queen.history.set(report);
            }
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "job history not durable (jetstream unavailable)")
            }
        }
    }
    services.spawn("reconnects", queen.clone().watch_reconnects(stop_services.clone()));
    heartbeats::start(queen.clone(), &services, stop_services.clone())
        .await
        .context("cannot subscribe to heartbeats")?;
    let lease = if durable { leader::open(&queen).await } else { None };
    match lease {
        Some(store) => {
            if let Some(requests) = jobs::requests::open(&queen).await {
                let _ = queen.requests.set(requests);
            }
            // The first read and write happen at once: a queen alone leads within a round trip.
            let lease = leader::run(queen.clone(), store, services.clone(), stop_services.clone());
            services.spawn("leader lease", lease);
            queen.leadership.first_round(Duration::from_secs(5)).await;
        }
        None => {
            if queen.config.standby {
                tracing::warn!("no leader lease yet: this standby waits for jetstream and places nothing");
                queen.leadership.wait_for_lease();
            } else {
                leader::term::start(queen.clone(), &services, None, queen.leadership.solo_term()).await;
            }
            if durable {
                // JetStream may come later (a cluster's first node elects its JetStream leader once
                // others join): the lease is taken then.
                let later = leader::open_later(queen.clone(), services.clone(), stop_services.clone());
                services.spawn("leader lease", later);
            }
        }
    }
    http::dashboard::Feed::start(&queen);
    let app = http::router(queen.clone());
    let servers = listeners.into_iter().map(|listener| {
        let addr = listener.local_addr().ok();
        tracing::info!(addr = ?addr, "queen serving http");
        let stop = shutdown.clone();
        axum::serve(listener, app.clone()).with_graceful_shutdown(async move { stop.cancelled().await })
    });
    for result in futures::future::join_all(servers.map(|s| async move { s.await })).await {
        result?;
    }
    drain_jobs(&queen).await;
    services.cancel_and_drain(SERVICES_STOP).await;
    // Bounded: with the server gone, the queen still exits.
    rbee_daemon::shutdown::flush(&queen.bus).await;
    tracing::info!("queen stopped");
    Ok(())
}

/// Waits up to [`JETSTREAM_WAIT`] while JetStream says it is not ready yet (a node of a cluster
/// elects its JetStream leader for a few seconds after it starts), so the job history and the
/// leader lease are not given up at once.
async fn wait_for_jetstream(queen: &Queen) {
    let js = async_nats::jetstream::new(queen.bus.client().clone());
    let started = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(2), js.query_account()).await {
            Ok(Ok(_)) => return,
            Ok(Err(e)) if e.to_string().contains("temporarily unavailable") => {}
            // No JetStream at all, or no permission: nothing to wait for.
            Ok(Err(_)) => return,
            Err(_) => {}
        }
        if started.elapsed() > JETSTREAM_WAIT {
            tracing::warn!("jetstream still not ready: going on without waiting");
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits for the jobs this queen placed, up to the drain deadline; then stops following them (their
/// workers go on, and the job history keeps their end) and fails those still queued.
async fn drain_jobs(queen: &Arc<Queen>) {
    queen.draining.cancel();
    let deadline = queen.config.drain_deadline;
    let active = queen.tasks.len();
    if active > 0 {
        tracing::info!(jobs = active, ?deadline, "draining jobs");
    }
    if queen.tasks.drain(deadline).await {
        return;
    }
    queen.tasks.cancel_and_drain(SERVICES_STOP).await;
    let waiting = queen.jobs().waiting();
    tracing::warn!(queued = waiting.len(), "jobs still queued at the drain deadline fail");
    for job in waiting {
        let model_id = job.record().model_id;
        let message = "the queen stopped while the job was queued".to_owned();
        jobs::announce::fail(queen, &job.job_id, &model_id, message, None).await;
    }
}
