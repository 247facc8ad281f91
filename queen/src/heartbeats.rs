//! The heartbeat path: folds `rbee.hive.*.heartbeat`, `rbee.worker.*.heartbeat` and
//! `rbee.worker.*.lifecycle` into the registry, expires silent entries on a tick, and says hello at
//! start so every hive and worker heartbeats at once (warm start in well under a second; the leader
//! says it again with its fence: [`crate::leader::term`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rbee_bus::{
    subject, HiveHeartbeat, LifecycleEvent, QueenHello, WorkerHeartbeat, WorkerLifecycle, SCHEMA_VERSION,
};
use rbee_daemon::Tasks;
use tokio_util::sync::CancellationToken;

use crate::membership::Change;
use crate::Queen;

/// Subscribes to every heartbeat; returns once the subscriptions are confirmed by the server, so the
/// hello that follows cannot be answered before the queen listens.
pub async fn start(queen: Arc<Queen>, tasks: &Tasks, stop: CancellationToken) -> anyhow::Result<()> {
    let client = queen.bus.client();
    let hives = client.subscribe(subject::HIVE_HEARTBEAT_ALL).await?;
    let workers = client.subscribe(subject::WORKER_HEARTBEAT_ALL).await?;
    let lifecycle = client.subscribe(subject::WORKER_LIFECYCLE_ALL).await?;
    queen.bus.round_trip().await?;
    let merged = futures::stream::select(futures::stream::select(hives, workers), lifecycle);
    tasks.spawn("heartbeat fold", fold(queen.clone(), merged, stop.clone()));
    tasks.spawn("liveness tick", expire_tick(queen.clone(), stop));
    // Every queen warms its view at once; the leader says hello again with its fence when its term
    // starts ([`crate::leader::term`]).
    let hello = QueenHello { v: SCHEMA_VERSION, meta: queen.stamper.next(), fence: None };
    queen.bus.publish(subject::QUEEN_HELLO.to_owned(), &hello).await?;
    Ok(())
}

async fn fold(
    queen: Arc<Queen>,
    mut messages: impl futures::Stream<Item = async_nats::Message> + Unpin,
    stop: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            msg = messages.next() => match msg { Some(m) => m, None => return },
        };
        let now = Instant::now();
        let subject = msg.subject.as_str();
        queen.metrics.heartbeat_bytes(msg.payload.len());
        let changes = if subject::matches(subject::HIVE_HEARTBEAT_ALL, subject) {
            match rbee_bus::rpc::decode::<HiveHeartbeat>(subject, &msg.payload) {
                Ok(hb) if subject::token(subject, 2) == Some(hb.hive_id.as_str()) => {
                    queen.registry().apply_hive(&hb, now)
                }
                Ok(_) => reject(&queen, subject, "hive id does not match the subject"),
                Err(e) => reject(&queen, subject, &e.to_string()),
            }
        } else if subject::matches(subject::WORKER_HEARTBEAT_ALL, subject) {
            match rbee_bus::rpc::decode::<WorkerHeartbeat>(subject, &msg.payload) {
                Ok(hb) if subject::token(subject, 2) == Some(hb.worker_id.as_str()) => {
                    let mut registry = queen.registry();
                    match registry.check_worker_claims(&hb) {
                        Ok(()) => registry.apply_worker(&hb, now),
                        Err(reason) => {
                            drop(registry);
                            reject(&queen, subject, &reason)
                        }
                    }
                }
                Ok(_) => reject(&queen, subject, "worker id does not match the subject"),
                Err(e) => reject(&queen, subject, &e.to_string()),
            }
        } else {
            match rbee_bus::rpc::decode::<WorkerLifecycle>(subject, &msg.payload) {
                Ok(event) => {
                    let mut registry = queen.registry();
                    match registry
                        .check_lifecycle_claims(subject::token(subject, 2).unwrap_or_default(), &event)
                    {
                        Ok(()) => {
                            let changes = registry.apply_lifecycle(&event, now);
                            drop(registry);
                            if let LifecycleEvent::Failed { .. } = event.event {
                                // The worker a spawn asked for may be this one: nothing is loading
                                // there any more, and the scheduler may decide again at once.
                                queen.spawns().end(&event.hive_id, &event.model_id);
                                queen.registry_changed.notify();
                            }
                            changes
                        }
                        Err(reason) => {
                            drop(registry);
                            reject(&queen, subject, &reason)
                        }
                    }
                }
                Err(e) => reject(&queen, subject, &e.to_string()),
            }
        };
        log_changes(&changes);
        if !changes.is_empty() {
            queen.registry_changed.notify();
        }
    }
}

fn reject(queen: &Queen, subject: &str, reason: &str) -> Vec<Change> {
    queen.metrics.rejected_message();
    tracing::warn!(%subject, %reason, "heartbeat rejected");
    Vec::new()
}

fn log_changes(changes: &[Change]) {
    for change in changes {
        tracing::info!(change = ?change, "registry change");
    }
}

async fn expire_tick(queen: Arc<Queen>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let changes = queen.registry().expire(Instant::now());
        log_changes(&changes);
        if !changes.is_empty() {
            queen.registry_changed.notify();
        }
    }
}
