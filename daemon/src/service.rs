//! Registration with the NATS service API (`$SRV.PING`, `$SRV.INFO`, `$SRV.STATS`, what `nats micro
//! ls` shows): a daemon registers once with its description, metadata and stats, then adds one
//! endpoint per request subject it answers.

use std::collections::HashMap;

use async_nats::service::{endpoint::Endpoint, Service, ServiceExt};
use rbee_bus::Bus;

/// Registers `name` (`rbee-hive`, `rbee-worker`) at this build's version; `stats` is called for every
/// `$SRV.STATS` request and its JSON is the reply's `data`.
pub async fn register<S>(
    bus: &Bus,
    name: &str,
    description: String,
    metadata: HashMap<String, String>,
    stats: S,
) -> anyhow::Result<Service>
where
    S: Fn() -> serde_json::Value + Send + Sync + 'static,
{
    bus.client()
        .service_builder()
        .description(description)
        .metadata(metadata)
        .stats_handler(move |_endpoint, _stats| stats())
        .start(name, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| anyhow::anyhow!("cannot register with the nats service api: {e}"))
}

/// Adds the endpoint `name` answering `subject`.
pub async fn endpoint(service: &Service, name: &str, subject: String) -> anyhow::Result<Endpoint> {
    service
        .endpoint_builder()
        .name(name)
        .add(subject.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot subscribe to {subject}: {e}"))
}
