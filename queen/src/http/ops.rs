//! `GET /health` and `GET /metrics`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::Json;

use crate::Queen;

/// Liveness of the queen and its NATS connection, with registry sizes.
pub async fn health(State(queen): State<Arc<Queen>>) -> impl IntoResponse {
    let stats = queen.registry().stats(Instant::now());
    let nats = match queen.bus.client().connection_state() {
        async_nats::connection::State::Connected => "connected",
        async_nats::connection::State::Disconnected => "disconnected",
        async_nats::connection::State::Pending => "connecting",
    };
    let status = if nats == "connected" {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if nats == "connected" { "ok" } else { "degraded" },
        "nats": nats,
        "hives": stats.hives.total(),
        "workers": stats.workers.total(),
        "version": env!("CARGO_PKG_VERSION"),
        "job_history": queen.history.get(),
        "leader": queen.leadership.report(),
    });
    (status, Json(body))
}

/// Prometheus text.
pub async fn metrics(State(queen): State<Arc<Queen>>) -> impl IntoResponse {
    let now = Instant::now();
    let stats = queen.registry().stats(now);
    let counts = queen.jobs().counts_by_phase();
    let mut gauges: Vec<(&str, &str, String, f64)> = Vec::new();
    for (phase, n) in [
        ("queued", counts.queued),
        ("scheduled", counts.scheduled),
        ("running", counts.running),
        ("completed", counts.completed),
        ("failed", counts.failed),
        ("cancelled", counts.cancelled),
    ] {
        gauges.push((
            "rbee_jobs",
            "jobs known to the queen, by state",
            format!("{{state=\"{phase}\"}}"),
            n as f64,
        ));
    }
    gauges.push((
        "rbee_queue_depth",
        "jobs waiting for a slot or a spawn",
        String::new(),
        queen.jobs().queued() as f64,
    ));
    for (kind, counts) in [("hive", &stats.hives), ("worker", &stats.workers)] {
        for (liveness, n) in
            [("online", counts.online), ("suspect", counts.suspect), ("offline", counts.offline)]
        {
            gauges.push((
                "rbee_registry_entries",
                "registry entries by kind and liveness",
                format!("{{kind=\"{kind}\",liveness=\"{liveness}\"}}"),
                n as f64,
            ));
        }
    }
    gauges.push((
        "rbee_heartbeat_seq_gaps",
        "heartbeats lost (sequence gaps)",
        String::new(),
        stats.seq_gaps as f64,
    ));
    gauges.push((
        "rbee_heartbeat_lag_seconds",
        "age of the most recent heartbeat received",
        String::new(),
        stats.last_heartbeat_age_ms.unwrap_or(0) as f64 / 1000.0,
    ));
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], queen.metrics.render(&gauges))
}
