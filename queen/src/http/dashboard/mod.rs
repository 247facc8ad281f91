//! The dashboard: one page at `/` ([`page`], HTML, CSS and script embedded in the binary, nothing
//! fetched from elsewhere) fed by one SSE stream, `GET /v1/dashboard/events` ([`events`]): a
//! `snapshot` event every [`SNAPSHOT_EVERY`] (hives, workers with their keep-alive, the queue with
//! each waiting job's reason, recent jobs) and a `bus` event for each message on the subjects the
//! queen reads (heartbeats, lifecycle, pulls, every job subject: what `rbee watch` shows), at most
//! [`BUS_EVENTS_PER_SECOND`] a second for all pages together (the rest are counted as skipped), from
//! one shared feed ([`Feed`]); at most [`MAX_CLIENTS`] pages at once. The page itself holds no
//! data and needs no key; the stream is guarded like the rest of the API, and in secure mode the
//! page asks for the key and sends it in a header, never in a URL.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use futures::StreamExt;
use rbee_bus::subject;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::error::ApiError;
use crate::jobs::record::JobPhaseKind;
use crate::Queen;

/// How often the page gets the whole picture.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);
/// Bus messages relayed to one page per second at most.
pub const BUS_EVENTS_PER_SECOND: u32 = 20;
/// Dashboards open at once.
pub const MAX_CLIENTS: usize = 16;
/// Bus lines buffered for pages; one further behind skips.
const FEED_CAPACITY: usize = 64;
/// Bus lines a page opens with.
const RECENT_LINES: usize = 40;
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

/// The bus feed every dashboard shares: one set of subscriptions, started with the queen
/// ([`Feed::start`]), rate-limited once for all, handed out through a bounded broadcast (a page that
/// falls behind skips), with the last [`RECENT_LINES`] kept so a page opens on the recent bus.
#[derive(Default)]
pub struct Feed {
    sender: std::sync::OnceLock<broadcast::Sender<Arc<str>>>,
    recent: Arc<std::sync::Mutex<std::collections::VecDeque<Arc<str>>>>,
    clients: Arc<AtomicUsize>,
    skipped: Arc<AtomicU64>,
}

impl Feed {
    /// Starts the feed's subscriptions (once; later calls do nothing).
    pub fn start(queen: &Arc<Queen>) {
        let feed = &queen.dashboard;
        feed.sender.get_or_init(|| {
            let (sender, _) = broadcast::channel(FEED_CAPACITY);
            let (recent, skipped) = (feed.recent.clone(), feed.skipped.clone());
            tokio::spawn(relay(queen.clone(), sender.clone(), recent, skipped));
            sender
        });
    }

    /// The recent lines and a receiver of what comes after them.
    fn receiver(queen: &Arc<Queen>) -> (Vec<Arc<str>>, broadcast::Receiver<Arc<str>>) {
        Feed::start(queen);
        let feed = &queen.dashboard;
        let recent = feed.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Under the lock the relay pushes with: nothing falls between the two.
        let receiver = feed.sender.get().map(broadcast::Sender::subscribe);
        let receiver = receiver.unwrap_or_else(|| broadcast::channel(1).1);
        (recent.iter().cloned().collect(), receiver)
    }
}

async fn relay(
    queen: Arc<Queen>,
    sender: broadcast::Sender<Arc<str>>,
    recent: Arc<std::sync::Mutex<std::collections::VecDeque<Arc<str>>>>,
    skipped: Arc<AtomicU64>,
) {
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
    let mut bus = futures::stream::select_all(subscriptions);
    let (mut window, mut sent) = (std::time::Instant::now(), 0u32);
    loop {
        let message = tokio::select! {
            m = bus.next() => m,
            _ = queen.draining.cancelled() => None,
        };
        let Some(message) = message else { return };
        if window.elapsed() >= Duration::from_secs(1) {
            (window, sent) = (std::time::Instant::now(), 0);
        }
        if sent >= BUS_EVENTS_PER_SECOND {
            skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        sent += 1;
        let line: Arc<str> = bus_event(&message).to_string().into();
        let mut kept = recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if kept.len() >= RECENT_LINES {
            kept.pop_front();
        }
        kept.push_back(line.clone());
        // Sent under the lock a new page copies the recent lines with. No page listening is fine.
        let _ = sender.send(line);
        drop(kept);
    }
}

/// Counts a page's stream while it lasts.
struct Client(Arc<AtomicUsize>);

impl Drop for Client {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `GET /v1/dashboard/events`: 503 beyond [`MAX_CLIENTS`] pages at once.
pub async fn events(State(queen): State<Arc<Queen>>) -> Response {
    let feed = &queen.dashboard;
    if feed.clients.fetch_add(1, Ordering::Relaxed) >= MAX_CLIENTS {
        feed.clients.fetch_sub(1, Ordering::Relaxed);
        return ApiError::Unavailable(format!("{MAX_CLIENTS} dashboards are open already")).into_response();
    }
    let client = Client(feed.clients.clone());
    let (recent, receiver) = Feed::receiver(&queen);
    // A page that fell behind the broadcast skips what it missed.
    let live = futures::stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(line) => return Some((line, receiver)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let snapshots = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(SNAPSHOT_EVERY));
    let skipped = feed.skipped.clone();
    let snapshot_events = snapshots.map(move |_| {
        let _ = &client;
        let mut data = snapshot(&queen);
        data["bus_skipped"] = json!(skipped.load(Ordering::Relaxed));
        Some(Event::default().event("snapshot").data(data.to_string()))
    });
    let bus = futures::stream::iter(recent).chain(live);
    let bus_events = bus.map(|line| Some(Event::default().event("bus").data(&*line)));
    let stream = futures::stream::select(snapshot_events, bus_events)
        .filter_map(|event| std::future::ready(event.map(Ok::<_, Infallible>)));
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}
