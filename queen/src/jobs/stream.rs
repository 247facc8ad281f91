//! The token path inside the queen: one subscription to `rbee.job.>` (one subscription, so a job's
//! tokens and its final status arrive in the order the worker published them) feeds a per-job buffer
//! that any number of readers (SSE clients, non-streaming waiters, the dispatcher) follow from the
//! start. Status events also fold into the job registry, and every chunk or status a worker published
//! counts in the registry as a sign of life of that worker (its current epoch), like a heartbeat.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rbee_bus::{subject, ErrorCode, JobId, JobState, JobStatus, TokenChunk, WorkerId};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::Queen;

/// Something that happened to a job, in order.
#[derive(Debug, Clone)]
pub enum JobEvent {
    /// Generated text.
    Token(TokenChunk),
    /// A status event.
    Status(JobStatus),
}

impl JobEvent {
    /// True for the final status.
    pub fn is_terminal(&self) -> bool {
        matches!(self, JobEvent::Status(s) if s.state.is_terminal())
    }
}

/// The buffered events of one job.
#[derive(Debug)]
pub struct JobStream {
    /// When the queen created the job (for time-to-first-token).
    pub created: Instant,
    events: Mutex<Vec<JobEvent>>,
    len: watch::Sender<usize>,
    /// Set by a cancel request; the dispatcher reads it while the job waits in the queue.
    pub cancel_requested: AtomicBool,
    /// The code of a refusal that ended the job, so HTTP can answer with a fitting status.
    pub failure_code: Mutex<Option<ErrorCode>>,
    finished_at: Mutex<Option<Instant>>,
    last_token_at: Mutex<Option<Instant>>,
}

impl JobStream {
    /// Records when the latest token arrived; returns the previous time.
    pub fn swap_last_token_at(&self, now: Instant) -> Option<Instant> {
        self.last_token_at.lock().unwrap_or_else(PoisonError::into_inner).replace(now)
    }

    fn new() -> Self {
        Self {
            created: Instant::now(),
            events: Mutex::new(Vec::new()),
            len: watch::channel(0).0,
            cancel_requested: AtomicBool::new(false),
            failure_code: Mutex::new(None),
            finished_at: Mutex::new(None),
            last_token_at: Mutex::new(None),
        }
    }

    fn push(&self, event: JobEvent) {
        let terminal = event.is_terminal();
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        if events.last().is_some_and(JobEvent::is_terminal) {
            return; // nothing after the end
        }
        events.push(event);
        let n = events.len();
        drop(events);
        if terminal {
            *self.finished_at.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        }
        self.len.send_replace(n);
    }

    /// A reader from the first event.
    pub fn reader(self: &Arc<Self>) -> JobReader {
        JobReader { stream: self.clone(), next: 0, len: self.len.subscribe() }
    }

    /// Tokens received so far.
    pub fn token_count(&self) -> usize {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|e| matches!(e, JobEvent::Token(_)))
            .count()
    }

    /// True once the final status arrived.
    pub fn is_finished(&self) -> bool {
        self.finished_at.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    /// Records why the job was refused.
    pub fn set_failure_code(&self, code: ErrorCode) {
        *self.failure_code.lock().unwrap_or_else(PoisonError::into_inner) = Some(code);
    }

    /// Why the job was refused, if it was.
    pub fn failure(&self) -> Option<ErrorCode> {
        *self.failure_code.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Follows one job's events from the start.
#[derive(Debug)]
pub struct JobReader {
    stream: Arc<JobStream>,
    next: usize,
    len: watch::Receiver<usize>,
}

impl JobReader {
    /// The next event; `None` after the final status.
    pub async fn next(&mut self) -> Option<JobEvent> {
        loop {
            {
                let events = self.stream.events.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(event) = events.get(self.next) {
                    self.next += 1;
                    return Some(event.clone());
                }
                if events.last().is_some_and(JobEvent::is_terminal) {
                    return None;
                }
            }
            if self.len.changed().await.is_err() {
                return None;
            }
        }
    }

    /// The stream it reads.
    pub fn stream(&self) -> &Arc<JobStream> {
        &self.stream
    }
}

/// Buffers of the jobs this queen created, by id.
#[derive(Debug, Default)]
pub struct JobStreams {
    map: Mutex<HashMap<JobId, Arc<JobStream>>>,
}

impl JobStreams {
    /// Creates the buffer of a new job.
    pub fn open(&self, job_id: &JobId) -> Arc<JobStream> {
        let stream = Arc::new(JobStream::new());
        self.map.lock().unwrap_or_else(PoisonError::into_inner).insert(job_id.clone(), stream.clone());
        stream
    }

    /// The buffer of a job, while kept.
    pub fn get(&self, job_id: &JobId) -> Option<Arc<JobStream>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).get(job_id).cloned()
    }

    fn push(&self, job_id: &JobId, event: JobEvent) -> Option<Arc<JobStream>> {
        let stream = self.get(job_id)?;
        stream.push(event);
        Some(stream)
    }

    /// Drops buffers of jobs finished longer ago than `keep`.
    pub fn sweep(&self, keep: Duration) {
        let now = Instant::now();
        self.map.lock().unwrap_or_else(PoisonError::into_inner).retain(|_, s| {
            s.finished_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_none_or(|at| now.duration_since(at) < keep)
        });
    }

    /// Jobs with a buffer.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// True when none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Subscribes to `rbee.job.>`; returns once the server confirmed the subscription.
pub async fn start(queen: Arc<Queen>, stop: CancellationToken) -> anyhow::Result<()> {
    let sub = queen.bus.client().subscribe("rbee.job.>").await?;
    queen.bus.round_trip().await?;
    tokio::spawn(relay(queen, sub, stop));
    Ok(())
}

async fn relay(queen: Arc<Queen>, mut sub: async_nats::Subscriber, stop: CancellationToken) {
    let mut sweep = tokio::time::interval(Duration::from_secs(30));
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            _ = sweep.tick() => {
                queen.streams.sweep(Duration::from_secs(300));
                let now = rbee_bus::now_ms();
                queen.jobs().prune(now);
                continue;
            }
            msg = sub.next() => match msg { Some(m) => m, None => return },
        };
        let subject = msg.subject.as_str();
        if subject::matches(subject::JOB_TOKENS_ALL, subject) {
            match rbee_bus::rpc::decode::<TokenChunk>(subject, &msg.payload) {
                Ok(chunk) => {
                    if chunk.meta.publisher == chunk.worker_id.as_str() {
                        worker_alive(&queen, &chunk.worker_id, &chunk.meta.epoch);
                    }
                    let job_id = chunk.job_id.clone();
                    let tokens = chunk.tokens;
                    if let Some(stream) = queen.streams.push(&job_id, JobEvent::Token(chunk)) {
                        queen.metrics.tokens(&stream, tokens);
                    }
                }
                Err(e) => {
                    queen.metrics.rejected_message();
                    tracing::warn!(%subject, error = %e, "malformed token chunk ignored");
                }
            }
        } else if subject::matches(subject::JOB_STATUS_ALL, subject) {
            match rbee_bus::rpc::decode::<JobStatus>(subject, &msg.payload) {
                Ok(status) => {
                    // The worker's own statuses (accepted, running, finished) are signs of life too.
                    if let Ok(worker_id) = WorkerId::new(status.meta.publisher.as_str()) {
                        worker_alive(&queen, &worker_id, &status.meta.epoch);
                    }
                    queen.jobs().apply_status(&status, rbee_bus::now_ms());
                    let job_id = status.job_id.clone();
                    if let JobState::Finished { finish_reason, .. } = &status.state {
                        queen.metrics.job_finished(*finish_reason);
                    }
                    queen.streams.push(&job_id, JobEvent::Status(status));
                }
                Err(e) => {
                    queen.metrics.rejected_message();
                    tracing::warn!(%subject, error = %e, "malformed job status ignored");
                }
            }
        }
    }
}

/// A message a worker published on a job subject proves it alive (see
/// [`Registry::apply_worker_activity`](crate::registry::Registry::apply_worker_activity)): a worker
/// busy streaming tokens is not declared offline, nor its jobs failed, because its heartbeats are late.
fn worker_alive(queen: &Queen, worker_id: &WorkerId, epoch: &str) {
    let changes = queen.registry().apply_worker_activity(worker_id, epoch, Instant::now());
    if !changes.is_empty() {
        for change in &changes {
            tracing::info!(change = ?change, "registry change (a sign of life other than a heartbeat)");
        }
        queen.registry_changed.notify_waiters();
    }
}
