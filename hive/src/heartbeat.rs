//! The hive heartbeat on `rbee.hive.<id>.heartbeat`: hostname, version, devices with free memory, RAM,
//! workers and models, every interval, at once when the queen says hello, and a last one when leaving.

use std::sync::Arc;

use rbee_bus::{subject, HiveHeartbeat, HiveState, SCHEMA_VERSION};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::Hive;

/// Publishes one heartbeat now.
pub async fn send(hive: &Hive, state: HiveState) {
    let snap = hive.inventory_snapshot();
    let heartbeat = HiveHeartbeat {
        v: SCHEMA_VERSION,
        meta: hive.stamper.next(),
        hive_id: hive.config.hive_id.clone(),
        hostname: hive.hostname.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        state,
        interval_ms: hive.config.heartbeat_interval.as_millis() as u64,
        cpu: snap.cpu,
        ram: snap.ram,
        devices: snap.devices,
        workers: hive.workers.list().iter().map(|w| w.summary()).collect(),
        models: crate::handlers::models::summaries(hive),
    };
    if let Err(e) = hive.bus.publish(subject::hive_heartbeat(&hive.config.hive_id), &heartbeat).await {
        tracing::warn!(error = %e, "cannot publish hive heartbeat");
    }
}

/// Heartbeats every interval and whenever `now` is notified, until `stop`.
pub async fn run(hive: Arc<Hive>, now: Arc<Notify>, stop: CancellationToken) {
    let interval = hive.config.heartbeat_interval;
    rbee_daemon::heartbeat::run(interval, now, stop, || send(&hive, HiveState::Online)).await;
}
