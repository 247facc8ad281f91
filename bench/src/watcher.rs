//! A watcher on the bus: heartbeats and lifecycle events of every worker with this process's receive
//! instants (the control path's stages), and the latest real hive and worker heartbeats (the templates
//! of the simulated cluster in the registry and scheduler sections).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use futures::StreamExt;
use rbee_bus::{subject, Bus, HiveHeartbeat, LifecycleEvent, WorkerHeartbeat, WorkerLifecycle, WorkerState};
use tokio_util::sync::CancellationToken;

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
