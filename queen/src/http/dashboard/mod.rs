//! The dashboard: one page at `/` ([`page`], HTML, CSS and script embedded in the binary, nothing
//! fetched from elsewhere) fed by one SSE stream, `GET /v1/dashboard/events` ([`events`]): a
//! `snapshot` event every [`SNAPSHOT_EVERY`] (hives, workers with their keep-alive, the queue with
//! each waiting job's reason, recent jobs) and a `bus` event for each message on the subjects the
//! queen reads (heartbeats, lifecycle, pulls, every job subject: what `rbee watch` shows), at most
//! [`BUS_EVENTS_PER_SECOND`] a second (the rest are counted as skipped). The page itself holds no
//! data and needs no key; the stream is guarded like the rest of the API, and in secure mode the
//! page asks for the key and sends it in a header, never in a URL.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use futures::{Stream, StreamExt};
use rbee_bus::subject;
use serde_json::{json, Value};

use crate::jobs::record::JobPhaseKind;
use crate::Queen;

/// How often the page gets the whole picture.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);
/// Bus messages relayed to one page per second at most.
pub const BUS_EVENTS_PER_SECOND: u32 = 20;
/// Recent jobs in a snapshot.
const RECENT_JOBS: usize = 15;
/// The longest payload relayed as JSON, in bytes (larger ones are shown by size).
const MAX_PAYLOAD: usize = 2048;

const PAGE: &str = include_str!("index.html");

/// `GET /`
pub async fn page() -> Response {
    ([(axum::http::header::CACHE_CONTROL, "no-store")], Html(PAGE)).into_response()
}

/// The whole picture, as the page draws it.
fn snapshot(queen: &Queen) -> Value {
    let now = std::time::Instant::now();
    let hives = queen.registry().list_hives(now);
    let workers = super::cluster::workers_with_keep_alive(queen);
    let (queued, recent) = {
        let jobs = queen.jobs();
        (jobs.list(100, Some(JobPhaseKind::Queued)), jobs.list(RECENT_JOBS, None))
    };
    json!({"hives": hives, "workers": workers, "queue": queued, "jobs": recent, "at_ms": rbee_bus::now_ms()})
}

/// One bus message for the page: its subject, and its JSON body (or its size).
fn bus_event(message: &async_nats::Message) -> Value {
    let body = if message.payload.len() <= MAX_PAYLOAD {
        serde_json::from_slice::<Value>(&message.payload).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    json!({"subject": message.subject.as_str(), "bytes": message.payload.len(), "body": body,
        "at_ms": rbee_bus::now_ms()})
}

/// `GET /v1/dashboard/events`
pub async fn events(State(queen): State<Arc<Queen>>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let client = queen.bus.client().clone();
    let mut subscriptions = Vec::new();
    for pattern in [
        subject::HIVE_HEARTBEAT_ALL,
        subject::WORKER_HEARTBEAT_ALL,
        subject::WORKER_LIFECYCLE_ALL,
        subject::HIVE_PULLS_ALL,
        "rbee.job.>",
    ] {
        match client.subscribe(pattern).await {
            Ok(s) => subscriptions.push(s),
            Err(e) => tracing::warn!(%pattern, error = %e, "dashboard cannot watch a subject"),
        }
    }
    let bus = futures::stream::select_all(subscriptions);
    let snapshots = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(SNAPSHOT_EVERY));
    enum Item {
        Snapshot,
        Bus(Box<async_nats::Message>),
    }
    let merged =
        futures::stream::select(snapshots.map(|_| Item::Snapshot), bus.map(|m| Item::Bus(Box::new(m))));
    let mut window = (std::time::Instant::now(), 0u32, 0u64);
    let stream = merged.filter_map(move |item| {
        let event = match item {
            Item::Snapshot => {
                let mut data = snapshot(&queen);
                data["bus_skipped"] = json!(window.2);
                Some(Event::default().event("snapshot").data(data.to_string()))
            }
            Item::Bus(message) => {
                let (started, sent, skipped) = &mut window;
                if started.elapsed() >= Duration::from_secs(1) {
                    *started = std::time::Instant::now();
                    *sent = 0;
                }
                if *sent >= BUS_EVENTS_PER_SECOND {
                    *skipped += 1;
                    None
                } else {
                    *sent += 1;
                    Some(Event::default().event("bus").data(bus_event(&message).to_string()))
                }
            }
        };
        std::future::ready(event.map(Ok))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
