//! Places jobs: asks the pure scheduler where a job goes, then assigns it to a worker over NATS, asks a
//! hive to spawn a worker, or keeps it queued with a reason a person can read. A worker that refuses,
//! does not answer, or dies before the first token is fenced at once and the job is tried once
//! elsewhere; a worker that dies mid-job fails the job with a clear reason.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rbee_bus::{
    subject, BusError, ErrorCode, FinishReason, JobAccepted, JobAssignment, JobCancel, JobId, JobState,
    JobStatus, ModelId, Prompt, SamplingParams, SpawnReply, SpawnRequest, Usage, SCHEMA_VERSION,
};

use crate::error::ApiError;
use crate::jobs::stream::JobStream;
use crate::scheduler::{place, Placement, PlacementRequest};
use crate::Queen;

/// How long a worker has to accept or refuse an assignment.
const ASSIGN_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per job on different workers.
const MAX_ATTEMPTS: u32 = 2;
/// After the queen's own NATS connection was down, the silence of a worker says nothing about it for
/// this long after the connection is back: workers reconnect on their own backoff (up to seconds),
/// then heartbeat.
const RECONNECT_GRACE: Duration = Duration::from_secs(10);

/// A job as clients submit it (HTTP or NATS).
#[derive(Debug, Clone)]
pub struct JobRequest {
    /// The model.
    pub model_id: ModelId,
    /// The input.
    pub prompt: Prompt,
    /// Sampling settings.
    pub params: SamplingParams,
    /// Wall-clock budget.
    pub deadline_ms: Option<u64>,
    /// An id chosen by the client.
    pub job_id: Option<JobId>,
}

/// Validates and accepts a job, places it once at once (a full queue is refused here), and drives it
/// in the background. Returns its id and buffer.
pub async fn submit(queen: &Arc<Queen>, request: JobRequest) -> Result<(JobId, Arc<JobStream>), ApiError> {
    request.params.validate().map_err(|e| ApiError::invalid(e.field, e.to_string()))?;
    let size = request.prompt.text_len();
    if size > queen.config.max_prompt_bytes {
        return Err(ApiError::PromptTooLarge(format!(
            "prompt of {size} bytes is over the {} byte limit",
            queen.config.max_prompt_bytes
        )));
    }
    if let Prompt::Chat { messages } = &request.prompt {
        if messages.is_empty() {
            return Err(ApiError::invalid("messages", "messages must not be empty".to_owned()));
        }
    }
    if !queen.model_known(&request.model_id) {
        return Err(ApiError::UnknownModel(request.model_id.to_string()));
    }
    let job_id = request.job_id.clone().unwrap_or_else(JobId::generate);
    {
        let mut jobs = queen.jobs();
        jobs.create(job_id.clone(), request.model_id.clone(), rbee_bus::now_ms())
            .map_err(|e| ApiError::invalid("job_id", e.to_string()))?;
    }
    let stream = queen.streams.open(&job_id);
    let prefix = rbee_bus::prefix::fingerprints(&request.prompt);
    let first = {
        let mut registry = queen.registry();
        place(
            &mut registry,
            &placement_request(queen, &request.model_id, &[], prefix.clone()),
            Instant::now(),
        )
    };
    if let Placement::Refuse { reason } = &first {
        queen.jobs().mark_failed(&job_id, reason.clone(), rbee_bus::now_ms());
        queen.metrics.refused();
        return Err(ApiError::QueueFull(reason.clone()));
    }
    queen.metrics.submitted();
    tokio::spawn(drive(queen.clone(), job_id.clone(), request, prefix, stream.clone(), first));
    Ok((job_id, stream))
}

/// What to place: the model, the workers to avoid, the queue's fill and the prompt's fingerprints.
fn placement_request(
    queen: &Queen,
    model_id: &ModelId,
    exclude: &[rbee_bus::WorkerId],
    prefix: Vec<u64>,
) -> PlacementRequest {
    PlacementRequest {
        model_id: model_id.clone(),
        exclude_workers: exclude.to_vec(),
        estimated_bytes: None,
        queue_len: queen.queued.load(Ordering::Relaxed),
        queue_capacity: queen.config.queue_capacity,
        prefix,
    }
}

/// Publishes a status event for a job (the relay folds it into the registry and the buffer).
pub async fn publish_status(queen: &Queen, job_id: &JobId, model_id: &ModelId, state: JobState) {
    let status = JobStatus {
        v: SCHEMA_VERSION,
        meta: queen.stamper.next(),
        job_id: job_id.clone(),
        model_id: Some(model_id.clone()),
        state,
    };
    if let Err(e) = queen.bus.publish(subject::job_status(job_id), &status).await {
        tracing::warn!(%job_id, error = %e, "cannot publish job status");
    }
}

async fn fail(
    queen: &Queen,
    job_id: &JobId,
    model_id: &ModelId,
    message: String,
    worker_id: Option<rbee_bus::WorkerId>,
) {
    tracing::warn!(%job_id, reason = %message, "job failed");
    let state = JobState::Finished {
        finish_reason: FinishReason::Error,
        usage: Usage::default(),
        error: Some(message),
        worker_id,
    };
    publish_status(queen, job_id, model_id, state).await;
}

struct Queued<'a>(&'a Queen);

impl<'a> Queued<'a> {
    fn enter(queen: &'a Queen) -> Self {
        queen.queued.fetch_add(1, Ordering::Relaxed);
        Self(queen)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn drive(
    queen: Arc<Queen>,
    job_id: JobId,
    request: JobRequest,
    prefix: Vec<u64>,
    stream: Arc<JobStream>,
    first: Placement,
) {
    let model_id = request.model_id.clone();
    let started = Instant::now();
    let mut exclude = Vec::new();
    let mut attempts = 0u32;
    let mut last_reason = String::new();
    let mut placement = Some(first);
    let mut queued: Option<Queued> = None;
    loop {
        if stream.cancel_requested.load(Ordering::Acquire) {
            let state = JobState::Finished {
                finish_reason: FinishReason::Cancelled,
                usage: Usage::default(),
                error: None,
                worker_id: None,
            };
            publish_status(&queen, &job_id, &model_id, state).await;
            return;
        }
        let decision = match placement.take() {
            Some(p) => p,
            None => {
                let mut registry = queen.registry();
                let request = placement_request(&queen, &model_id, &exclude, prefix.clone());
                place(&mut registry, &request, Instant::now())
            }
        };
        match decision {
            Placement::Assign { worker_id } => {
                queued = None;
                attempts += 1;
                publish_status(
                    &queen,
                    &job_id,
                    &model_id,
                    JobState::Scheduled { worker_id: worker_id.clone() },
                )
                .await;
                let mut assignment = JobAssignment::new(
                    job_id.clone(),
                    model_id.clone(),
                    request.prompt.clone(),
                    request.params.clone(),
                );
                assignment.deadline_ms = request.deadline_ms;
                let reply: Result<JobAccepted, BusError> =
                    queen.bus.request(subject::worker_jobs(&worker_id), &assignment, ASSIGN_TIMEOUT).await;
                match reply {
                    Ok(_) => match watch_worker(&queen, &stream, &worker_id, &job_id).await {
                        WorkerOutcome::Finished => return,
                        WorkerOutcome::Lost => {
                            let message = format!(
                                "lost the end of the job: the nats connection was interrupted and worker \
                                 {worker_id} is idle, but its final status never arrived"
                            );
                            fail(&queen, &job_id, &model_id, message, Some(worker_id)).await;
                            return;
                        }
                        WorkerOutcome::Died { tokens: 0 } if attempts < MAX_ATTEMPTS => {
                            fence(&queen, &worker_id, "died before the first token");
                            exclude.push(worker_id);
                        }
                        WorkerOutcome::Died { tokens } => {
                            fence(&queen, &worker_id, "died during a job");
                            let message =
                                format!("worker {worker_id} died mid-job after {tokens} token chunks");
                            fail(&queen, &job_id, &model_id, message, Some(worker_id)).await;
                            return;
                        }
                    },
                    Err(BusError::Remote { error, .. }) => {
                        queen.registry().release_slot(&worker_id);
                        match error.code() {
                            ErrorCode::NoFreeSlot => {
                                // The heartbeat was behind; wait for the next one.
                                attempts -= 1;
                                queued.get_or_insert_with(|| Queued::enter(&queen));
                                wait_for_change(&queen, Duration::from_millis(200)).await;
                            }
                            ErrorCode::PromptTooLong | ErrorCode::InvalidParams | ErrorCode::BadRequest => {
                                stream.set_failure_code(error.code());
                                fail(
                                    &queen,
                                    &job_id,
                                    &model_id,
                                    error.error.message.clone(),
                                    Some(worker_id),
                                )
                                .await;
                                return;
                            }
                            _ => {
                                fence(&queen, &worker_id, &error.to_string());
                                exclude.push(worker_id);
                            }
                        }
                    }
                    Err(e) => {
                        queen.registry().release_slot(&worker_id);
                        fence(&queen, &worker_id, &e.to_string());
                        exclude.push(worker_id);
                    }
                }
                if attempts >= MAX_ATTEMPTS {
                    fail(
                        &queen,
                        &job_id,
                        &model_id,
                        format!("no worker accepted the job after {attempts} attempts"),
                        None,
                    )
                    .await;
                    return;
                }
            }
            Placement::Spawn { hive_id, device } => {
                queued.get_or_insert_with(|| Queued::enter(&queen));
                let reason = format!("starting a worker of {model_id} on hive {hive_id} ({device})");
                if reason != last_reason {
                    publish_status(&queen, &job_id, &model_id, JobState::Queued { reason: reason.clone() })
                        .await;
                    last_reason = reason;
                }
                request_spawn(&queen, &hive_id, &model_id, &device);
                wait_for_change(&queen, Duration::from_millis(500)).await;
            }
            Placement::Queue { reason } => {
                queued.get_or_insert_with(|| Queued::enter(&queen));
                if reason != last_reason {
                    publish_status(&queen, &job_id, &model_id, JobState::Queued { reason: reason.clone() })
                        .await;
                    last_reason = reason.clone();
                }
                if started.elapsed() > queen.config.queue_timeout {
                    stream.set_failure_code(ErrorCode::QueueFull);
                    fail(
                        &queen,
                        &job_id,
                        &model_id,
                        format!("gave up after {:?} in the queue: {reason}", queen.config.queue_timeout),
                        None,
                    )
                    .await;
                    return;
                }
                wait_for_change(&queen, Duration::from_millis(500)).await;
            }
            Placement::Refuse { reason } => {
                // Only new jobs are refused (429 at submit). A job already admitted keeps waiting, up
                // to the queue timeout, even when the queue filled up behind it.
                placement = Some(Placement::Queue { reason });
            }
        }
    }
}

fn fence(queen: &Queen, worker_id: &rbee_bus::WorkerId, reason: &str) {
    tracing::warn!(%worker_id, %reason, "fencing worker");
    queen.registry().fence_worker(worker_id, reason.to_owned(), Instant::now());
}

async fn wait_for_change(queen: &Queen, at_most: Duration) {
    let _ = tokio::time::timeout(at_most, queen.registry_changed.notified()).await;
}

/// Asks a hive for a worker of `model_id`, unless one is already being started there.
fn request_spawn(queen: &Arc<Queen>, hive_id: &rbee_bus::HiveId, model_id: &ModelId, device: &str) {
    let key = (hive_id.clone(), model_id.clone());
    {
        let mut spawning = queen.spawning.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(at) = spawning.get(&key) {
            if at.elapsed() < queen.config.spawn_timeout {
                return;
            }
        }
        spawning.insert(key.clone(), Instant::now());
    }
    let queen = queen.clone();
    let request = SpawnRequest {
        v: SCHEMA_VERSION,
        model_id: model_id.clone(),
        device: Some(device.to_owned()),
        slots: None,
        ctx_per_slot: None,
        worker_type: None,
        worker_id: None,
        threads: None,
    };
    let hive_id = hive_id.clone();
    tokio::spawn(async move {
        let reply: Result<SpawnReply, BusError> =
            queen.bus.request(subject::hive_spawn(&hive_id), &request, Duration::from_secs(30)).await;
        match reply {
            Ok(r) => {
                tracing::info!(%hive_id, worker_id = %r.worker_id, pid = r.pid, "worker spawned for queued jobs");
                // Keep the marker until the worker heartbeats (the scheduler then sees it loading).
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Err(e) => tracing::warn!(%hive_id, error = %e, "spawn for queued jobs failed"),
        }
        queen.spawning.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&key);
        queen.registry_changed.notify_waiters();
    });
}

enum WorkerOutcome {
    Finished,
    Died {
        tokens: usize,
    },
    /// The worker is alive and idle after a NATS interruption, and the job's end was lost.
    Lost,
}

/// Follows a placed job until it ends, watching its worker's liveness. The worker is dead when the
/// registry no longer lists it, or lists it offline (no heartbeat, token chunk or status from it for 3
/// intervals: a worker streaming tokens is never offline) and [`confirm_silent`] agrees. While the
/// queen's own NATS connection is down, and for [`RECONNECT_GRACE`] after it is back, every worker
/// looks silent: that silence is not taken as a death. After an interruption, a final status the
/// queen missed (published before it had resubscribed) is looked up in the job history and announced
/// again.
async fn watch_worker(
    queen: &Queen,
    stream: &Arc<JobStream>,
    worker_id: &rbee_bus::WorkerId,
    job_id: &JobId,
) -> WorkerOutcome {
    let client = queen.bus.client();
    let connects = || client.statistics().connects.load(Ordering::Relaxed);
    let mut seen_connects = connects();
    let mut interrupted_at: Option<Instant> = None;
    let mut last_lookup: Option<Instant> = None;
    loop {
        if stream.is_finished() {
            return WorkerOutcome::Finished;
        }
        let connected = client.connection_state() == async_nats::connection::State::Connected;
        let now_connects = connects();
        if !connected || now_connects != seen_connects {
            seen_connects = now_connects;
            interrupted_at = Some(Instant::now());
        }
        let in_grace = interrupted_at.is_some_and(|at| at.elapsed() < RECONNECT_GRACE);
        if interrupted_at.is_some()
            && connected
            && last_lookup.is_none_or(|at| at.elapsed() > Duration::from_secs(1))
        {
            last_lookup = Some(Instant::now());
            if recover_final_status(queen, job_id).await {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let worker = queen.registry().get_worker(worker_id, Instant::now());
        let alive = worker.as_ref().is_some_and(|w| w.liveness != crate::registry::Liveness::Offline);
        if !alive && !in_grace {
            // Listed but offline: first make sure the silence is the worker's, not a backlog of the
            // queen's own. Removed (its hive saw it exit, it stopped, or it was silent past the removal
            // age): gone.
            if let Some(w) = &worker {
                let interval = queen.registry().config().interval(w.interval_ms);
                if !confirm_silent(queen, worker_id, interval).await {
                    continue;
                }
            }
            // One more look: the final status may be in flight.
            tokio::time::sleep(Duration::from_millis(100)).await;
            if stream.is_finished() {
                return WorkerOutcome::Finished;
            }
            return WorkerOutcome::Died { tokens: stream.token_count() };
        }
        let idle = worker.as_ref().is_some_and(|w| {
            w.liveness == crate::registry::Liveness::Online && w.slots_busy == 0 && w.slots_reserved == 0
        });
        if interrupted_at.is_some() && !in_grace && idle {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if stream.is_finished() {
                return WorkerOutcome::Finished;
            }
            return WorkerOutcome::Lost;
        }
        let _ = tokio::time::timeout(Duration::from_millis(250), queen.registry_changed.notified()).await;
    }
}

/// Confirms that a worker the registry lists offline is really silent before its job is failed: the
/// queen catches up with what NATS already delivered to it (a server round trip: every message the
/// server sent before the reply is then in the queen's subscriptions), and gives the heartbeat fold and
/// the token relay up to one more `interval` to apply it. A worker whose heartbeats or tokens were only
/// waiting behind a busy queen is online again (false); one that is silent stays offline or is removed
/// (true). Costs a round trip and at most one interval, and only when a death is suspected.
async fn confirm_silent(queen: &Queen, worker_id: &rbee_bus::WorkerId, interval: Duration) -> bool {
    let _ = tokio::time::timeout(Duration::from_secs(2), queen.bus.round_trip()).await;
    let deadline = Instant::now() + interval;
    loop {
        match queen.registry().get_worker(worker_id, Instant::now()) {
            None => return true,
            Some(w) if w.liveness != crate::registry::Liveness::Offline => {
                tracing::info!(%worker_id, "worker looked silent but its messages were waiting: not dead");
                return false;
            }
            Some(_) => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        let _ = tokio::time::timeout(left, queen.registry_changed.notified()).await;
    }
}

/// Looks up the job's last status in the JetStream history; when it is final, publishes it again so
/// the queen (and every subscriber that missed it) sees the end. True when it did.
async fn recover_final_status(queen: &Queen, job_id: &JobId) -> bool {
    if !queen.config.durable_jobs {
        return false;
    }
    let js = async_nats::jetstream::new(queen.bus.client().clone());
    let lookup = async {
        let stream = js.get_stream(crate::jobs::store::STREAM).await.ok()?;
        stream.get_last_raw_message_by_subject(&subject::job_status(job_id)).await.ok()
    };
    let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(2), lookup).await else { return false };
    let Ok(status) = rbee_bus::rpc::decode::<JobStatus>(&message.subject, &message.payload) else {
        return false;
    };
    if !status.state.is_terminal() {
        return false;
    }
    tracing::warn!(%job_id, "final status recovered from the job history after a nats interruption");
    queen.bus.publish(subject::job_status(job_id), &status).await.is_ok()
}

/// Cancels a job: queued jobs end at once; running ones are told on `rbee.job.<id>.cancel`.
pub async fn cancel(queen: &Queen, job_id: &JobId, reason: &str) {
    if let Some(stream) = queen.streams.get(job_id) {
        stream.cancel_requested.store(true, Ordering::Release);
    }
    let cancel = JobCancel {
        v: SCHEMA_VERSION,
        meta: queen.stamper.next(),
        job_id: job_id.clone(),
        reason: reason.to_owned(),
    };
    if let Err(e) = queen.bus.publish(subject::job_cancel(job_id), &cancel).await {
        tracing::warn!(%job_id, error = %e, "cannot publish cancel");
    }
    queen.registry_changed.notify_waiters();
}
