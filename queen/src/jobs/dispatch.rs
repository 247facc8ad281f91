//! Places jobs: one loop per job over explicit steps. Each turn asks the scheduler where the job goes
//! ([`place`]) and carries the decision out: [`assign`] it to a worker over NATS and follow it to its
//! end, ask a hive to spawn a worker ([`spawn_step`]), or keep it queued with a reason a person can
//! read ([`queue_step`]). A worker that refuses, does not answer, or dies before the first token is
//! fenced at once and the job is tried once elsewhere. A worker lost mid-stream is fenced and the job
//! migrates: a `migrating` status, then placed again with what clients received so far
//! (`JobAssignment.resume`), so the next worker goes on from there and the client's stream continues
//! (jobs with tools or a response format cannot, and fail with a clear reason). The queen's decisions
//! reach the job through [`announce`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use rbee_bus::{
    subject, BusError, ErrorCode, JobAccepted, JobCancel, JobId, JobState, ModelId, WorkerId, SCHEMA_VERSION,
};

use tokio_util::sync::CancellationToken;

use super::admit::JobRequest;
use super::announce::{announce, announce_attempt, cancelled, fail};
use super::job::Job;
use super::spawns::request_spawn;
use super::watch::{watch_worker, WorkerOutcome};
use crate::scheduler::{Placement, PlacementRequest};
use crate::Queen;

/// How long a worker has to accept or refuse an assignment.
const ASSIGN_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per job on different workers (counted again after each migration).
const MAX_ATTEMPTS: u32 = 2;
/// Times one job may move to another worker after losing its worker mid-stream.
const MAX_MIGRATIONS: u32 = 3;
/// A queued job re-checks at least this often (and whenever the membership view changes).
pub(crate) const QUEUE_RECHECK: Duration = Duration::from_millis(500);
/// After the queen's NATS connection came back, a worker not answering an assignment for this long
/// is taken to be resubscribing, not dead.
const RESUBSCRIBE_GRACE: Duration = Duration::from_secs(5);
/// A worker that said it had no free slot is asked again after its next heartbeat, or this long.
const NO_SLOT_RECHECK: Duration = Duration::from_millis(200);

/// What a step leaves to do.
enum Step {
    /// The job has ended (its final status is announced or arrived).
    Done,
    /// Place it again.
    Again,
}

/// One job's placement so far.
struct Attempts {
    /// Workers that refused or died for it.
    exclude: Vec<WorkerId>,
    /// Assignments that counted (since the last migration).
    made: u32,
    /// Moves to another worker after a loss mid-stream.
    migrations: u32,
    /// Assignments sent, each numbered (`JobAssignment.attempt`, from 1).
    placed: u32,
    /// The queue reason last announced.
    last_reason: String,
    /// When it was submitted (the queue timeout counts from here).
    started: Instant,
    /// When the last placement decision began: a waiting job re-checks at once after any change to
    /// the view since then.
    decided: Instant,
}

/// The scheduler's decision for one placement of a job of `model_id`, with the slot of an
/// assignment reserved. The queue's fill and the spawns in flight come from their owners.
pub fn place(
    queen: &Queen,
    model_id: &ModelId,
    exclude: &[WorkerId],
    prefix: &[u64],
    queue_len: usize,
) -> Placement {
    let now = Instant::now();
    // Workers being stopped (unloaded, evicted) take no job.
    let stopping = queen.keep_alive().stopping_ids();
    let exclude_workers: Vec<WorkerId> = exclude.iter().cloned().chain(stopping).collect();
    let request = PlacementRequest {
        exclude_workers,
        queue_len,
        queue_capacity: queen.config.queue_capacity,
        prefix: prefix.to_vec(),
        spawns_in_flight: queen.spawns().of_model(model_id, now, queen.config.spawn_timeout),
        ..PlacementRequest::new(model_id.clone())
    };
    let placement = crate::placement::place(&mut queen.registry(), &request, now);
    // Most jobs are assigned or spawn for: only a job left waiting asks which idle workers could
    // make room (a queued decision reserved nothing, so deciding again is free of side effects).
    if !matches!(placement, Placement::Queue { .. }) {
        return placement;
    }
    let evictable = queen.keep_alive().evictable(now);
    if evictable.is_empty() {
        return placement;
    }
    crate::placement::place(&mut queen.registry(), &PlacementRequest { evictable, ..request }, now)
}

/// Where a job's loop begins.
pub enum Start {
    /// With this placement decision (a new job, or a queued one taken over).
    Place(Placement),
    /// Following the attempt already running on this worker (a job taken over mid-stream).
    Follow {
        /// The worker.
        worker_id: WorkerId,
        /// The attempt's number.
        attempt: u32,
    },
}

/// Drives a job from its first placement to its end, or until the queen abandons its jobs at the
/// drain deadline, or its term as leader ends (the next leader takes the job over). An ended job's
/// request is forgotten ([`super::requests`]).
pub async fn drive(
    queen: Arc<Queen>,
    job: Arc<Job>,
    request: JobRequest,
    prefix: Vec<u64>,
    first: Start,
    started: Instant,
) {
    let abandon = queen.tasks.token();
    // A queen alone follows its jobs to their end even when a lease term replaces its own.
    let term = if queen.leadership.is_solo() { CancellationToken::new() } else { queen.leadership.term() };
    tokio::select! {
        _ = abandon.cancelled() => tracing::info!(job_id = %job.job_id, "queen stopping: job no longer followed"),
        _ = term.cancelled() => tracing::info!(job_id = %job.job_id, "no longer the leader: job left to the next"),
        _ = steps(&queen, &job, &request, &prefix, first, started) => {}
    }
    if job.is_finished() {
        super::requests::remove(&queen, &job.job_id).await;
    } else if !queen.leadership.leads() {
        queen.jobs().disown(&job.job_id);
    }
}

async fn steps(
    queen: &Arc<Queen>,
    job: &Job,
    request: &JobRequest,
    prefix: &[u64],
    first: Start,
    started: Instant,
) {
    let model_id = request.model_id.clone();
    let mut attempts = Attempts {
        exclude: Vec::new(),
        made: 0,
        migrations: 0,
        placed: 0,
        last_reason: String::new(),
        started,
        decided: started,
    };
    let mut next = match first {
        Start::Place(placement) => Some(placement),
        Start::Follow { worker_id, attempt } => {
            attempts.made = 1;
            attempts.placed = attempt;
            if let Step::Done = follow(queen, job, request, worker_id, &mut attempts).await {
                return;
            }
            None
        }
    };
    loop {
        if job.is_finished() || !queen.leadership.leads() {
            return;
        }
        if job.cancel_requested() {
            cancelled(queen, &job.job_id, &model_id).await;
            return;
        }
        let placement = next.take().unwrap_or_else(|| {
            attempts.decided = Instant::now();
            let queue_len = queen.jobs().queued();
            place(queen, &model_id, &attempts.exclude, prefix, queue_len)
        });
        let step = match placement {
            Placement::Assign { worker_id } => assign(queen, job, request, worker_id, &mut attempts).await,
            Placement::Spawn { hive_id, device } => {
                let reason = format!("starting a worker of {model_id} on hive {hive_id} ({device})");
                queue_note(queen, job, &model_id, reason, &mut attempts).await;
                request_spawn(queen, &hive_id, &model_id, &device);
                wait_for_change(queen, attempts.decided, QUEUE_RECHECK).await;
                Step::Again
            }
            Placement::Evict { hive_id, workers, reason } => {
                crate::unload::evict(queen, &hive_id, &workers);
                queue_step(queen, job, &model_id, reason, &mut attempts).await
            }
            // Only new jobs are refused (429 at submit). A job already admitted keeps waiting, up to
            // the queue timeout, even when the queue filled up behind it.
            Placement::Queue { reason } | Placement::Refuse { reason } => {
                queue_step(queen, job, &model_id, reason, &mut attempts).await
            }
            Placement::Unavailable { reason } => {
                job.set_failure(ErrorCode::ModelFailing);
                fail(queen, &job.job_id, &model_id, reason, None).await;
                Step::Done
            }
        };
        if let Step::Done = step {
            return;
        }
    }
}

/// Sends the job to a worker and follows it to its end; a refusal or a death before the first token
/// excludes the worker and leaves the job to be placed again.
async fn assign(
    queen: &Queen,
    job: &Job,
    request: &JobRequest,
    worker_id: WorkerId,
    attempts: &mut Attempts,
) -> Step {
    let (job_id, model_id) = (&job.job_id, &request.model_id);
    attempts.made += 1;
    attempts.placed += 1;
    let attempt = attempts.placed;
    let scheduled = JobState::Scheduled { worker_id: worker_id.clone() };
    let key = rbee_bus::new_attempt_key();
    announce_attempt(queen, job_id, model_id, scheduled, attempt, Some(key.clone())).await;
    let mut assignment = request.assignment(job_id);
    assignment.attempt = attempt;
    assignment.attempt_key = Some(key);
    // Taken after the `scheduled` status: no chunk of an earlier attempt gets in any more, so this is
    // exactly what clients received.
    assignment.resume = job.resume_point();
    assignment.fence = queen.leadership.order_fence();
    let reply: Result<JobAccepted, BusError> =
        queen.bus.request(subject::worker_jobs(&worker_id), &assignment, ASSIGN_TIMEOUT).await;
    match reply {
        Ok(accepted) => {
            if let Some(seq) = accepted.accepted_seq {
                queen.registry().slot_accepted(&worker_id, seq);
            }
            queen.keep_alive().job_started(&worker_id, request.keep_alive, Instant::now());
            if job.cancel_requested() {
                // The cancel may have overtaken the assignment: tell this attempt again.
                cancel_attempt(queen, job_id, &worker_id, "cancelled while the assignment was in flight")
                    .await;
            }
            return follow(queen, job, request, worker_id, attempts).await;
        }
        Err(BusError::Remote { error, .. }) => {
            queen.registry().release_slot(&worker_id);
            match error.code() {
                ErrorCode::NoFreeSlot => {
                    // The heartbeat was behind: not an attempt; wait in the queue for the next one.
                    attempts.made -= 1;
                    let reason =
                        format!("waiting for a free slot of model {model_id} (worker {worker_id} was full)");
                    queue_note(queen, job, model_id, reason, attempts).await;
                    wait_for_change(queen, attempts.decided, NO_SLOT_RECHECK).await;
                    return Step::Again;
                }
                code @ (ErrorCode::PromptTooLong | ErrorCode::InvalidParams | ErrorCode::BadRequest) => {
                    job.set_failure(code);
                    fail(queen, job_id, model_id, error.error.message.clone(), Some(worker_id)).await;
                    return Step::Done;
                }
                _ => {
                    fence(queen, &worker_id, &error.to_string());
                    attempts.exclude.push(worker_id);
                }
            }
        }
        Err(e @ (BusError::TooLarge { .. } | BusError::Decode { .. })) => {
            // The queen's own message could not go out: nothing is wrong with the worker.
            queen.registry().release_slot(&worker_id);
            job.set_failure(ErrorCode::PromptTooLong);
            fail(queen, job_id, model_id, e.to_string(), None).await;
            return Step::Done;
        }
        Err(BusError::NoResponders { .. }) if queen.reconnected_within(RESUBSCRIBE_GRACE) => {
            // The queen's connection just came back and the worker has not resubscribed yet: not
            // its fault, and not an attempt.
            queen.registry().release_slot(&worker_id);
            attempts.made -= 1;
            wait_for_change(queen, attempts.decided, NO_SLOT_RECHECK).await;
            return Step::Again;
        }
        Err(e) => {
            // No answer in time: the worker may still have taken the job; that attempt is abandoned.
            queen.registry().release_slot(&worker_id);
            fence(queen, &worker_id, &e.to_string());
            cancel_attempt(queen, job_id, &worker_id, "the assignment was not answered in time").await;
            attempts.exclude.push(worker_id);
        }
    }
    retry_or_fail(queen, job, model_id, attempts).await
}

/// Follows an accepted attempt to the job's end; a worker that died before its first token is
/// fenced, its attempt cancelled, and the job placed again.
async fn follow(
    queen: &Queen,
    job: &Job,
    request: &JobRequest,
    worker_id: WorkerId,
    attempts: &mut Attempts,
) -> Step {
    let (job_id, model_id) = (&job.job_id, &request.model_id);
    // A queen that took the job over mid-stream may lack its first chunks: it cannot resume it.
    let complete = job.chunks_complete();
    let resumable = request.resumable() && complete;
    match watch_worker(queen, job, &worker_id, job_id).await {
        WorkerOutcome::Finished => Step::Done,
        WorkerOutcome::Lost => {
            let message = format!(
                "lost the end of the job: the nats connection was interrupted and worker {worker_id} \
                 is idle, but its final status never arrived"
            );
            fail(queen, job_id, model_id, message, Some(worker_id)).await;
            Step::Done
        }
        WorkerOutcome::Died { tokens: 0 } if attempts.made < MAX_ATTEMPTS => {
            fence(queen, &worker_id, "died before the first token");
            cancel_attempt(queen, job_id, &worker_id, "the worker was taken for dead").await;
            attempts.exclude.push(worker_id);
            retry_or_fail(queen, job, model_id, attempts).await
        }
        WorkerOutcome::Died { tokens } if resumable && attempts.migrations < MAX_MIGRATIONS => {
            fence(queen, &worker_id, "died during a job");
            cancel_attempt(queen, job_id, &worker_id, "the worker was taken for dead").await;
            let completion_tokens = job.resume_point().map_or(0, |r| r.completion_tokens);
            let reason = format!(
                "worker {worker_id} was lost after {tokens} token chunks: moving the job to another worker"
            );
            tracing::warn!(%job_id, %worker_id, tokens, "worker lost mid-job, migrating");
            let state = JobState::Migrating { from_worker: worker_id.clone(), completion_tokens, reason };
            announce(queen, job_id, model_id, state).await;
            attempts.exclude.push(worker_id);
            attempts.migrations += 1;
            attempts.made = 0;
            queen.metrics.migrated();
            Step::Again
        }
        WorkerOutcome::Died { tokens } => {
            fence(queen, &worker_id, "died during a job");
            let why = if resumable {
                format!("after {MAX_MIGRATIONS} migrations")
            } else if !complete {
                "(this queen took the job over without its first chunks, so it cannot move it)".to_owned()
            } else {
                "(a job with tools or a response_format cannot move to another worker)".to_owned()
            };
            let message = format!("worker {worker_id} died mid-job after {tokens} token chunks {why}");
            fail(queen, job_id, model_id, message, Some(worker_id)).await;
            Step::Done
        }
    }
}

/// Places the job again, unless it ran out of attempts.
async fn retry_or_fail(queen: &Queen, job: &Job, model_id: &ModelId, attempts: &Attempts) -> Step {
    if attempts.made >= MAX_ATTEMPTS {
        let message = format!("no worker accepted the job after {} attempts", attempts.made);
        fail(queen, &job.job_id, model_id, message, None).await;
        return Step::Done;
    }
    Step::Again
}

/// Tells one worker to drop its attempt at the job (a cancel naming the worker; the others ignore it).
async fn cancel_attempt(queen: &Queen, job_id: &JobId, worker_id: &WorkerId, reason: &str) {
    let cancel = JobCancel {
        v: SCHEMA_VERSION,
        meta: queen.stamper.next(),
        job_id: job_id.clone(),
        reason: reason.to_owned(),
        worker_id: Some(worker_id.clone()),
        fence: queen.leadership.order_fence(),
    };
    if let Err(e) = queen.bus.publish(subject::job_cancel(job_id), &cancel).await {
        tracing::warn!(%job_id, %worker_id, error = %e, "cannot publish the cancel of an abandoned attempt");
    }
}

/// Keeps the job queued for `reason`, up to the queue timeout.
async fn queue_step(
    queen: &Queen,
    job: &Job,
    model_id: &ModelId,
    reason: String,
    attempts: &mut Attempts,
) -> Step {
    queue_note(queen, job, model_id, reason.clone(), attempts).await;
    let timeout = queen.config.queue_timeout;
    if attempts.started.elapsed() > timeout {
        job.set_failure(ErrorCode::QueueFull);
        let message = format!("gave up after {timeout:?} in the queue: {reason}");
        fail(queen, &job.job_id, model_id, message, None).await;
        return Step::Done;
    }
    wait_for_change(queen, attempts.decided, QUEUE_RECHECK).await;
    Step::Again
}

/// Announces why the job waits, when the reason changed.
async fn queue_note(queen: &Queen, job: &Job, model_id: &ModelId, reason: String, attempts: &mut Attempts) {
    if reason != attempts.last_reason {
        announce(queen, &job.job_id, model_id, JobState::Queued { reason: reason.clone() }).await;
        attempts.last_reason = reason;
    }
}

fn fence(queen: &Queen, worker_id: &WorkerId, reason: &str) {
    tracing::warn!(%worker_id, %reason, "fencing worker");
    queen.registry().fence_worker(worker_id, reason.to_owned(), Instant::now());
}

/// Waits until the membership view changes after `decided` (at once when it already did), or
/// `at_most`.
pub(crate) async fn wait_for_change(queen: &Queen, decided: Instant, at_most: Duration) {
    queen.registry_changed.wait_since(decided, at_most).await;
}

/// Cancels a job: queued jobs end at once; running ones are told on `rbee.job.<id>.cancel`.
pub async fn cancel(queen: &Queen, job_id: &JobId, reason: &str) {
    let job = queen.jobs().get(job_id);
    if let Some(job) = job {
        job.request_cancel();
        if !job.is_owned() && !job.is_finished() && queen.leadership.leads() {
            // No placement loop follows it (replayed after a restart, or seen on the bus): end it here.
            cancelled(queen, job_id, &job.record().model_id).await;
        }
    }
    let cancel = JobCancel {
        v: SCHEMA_VERSION,
        meta: queen.stamper.next(),
        job_id: job_id.clone(),
        reason: reason.to_owned(),
        worker_id: None,
        // A standby passes a client's cancel on as a client would, unfenced.
        fence: if queen.leadership.leads() { queen.leadership.order_fence() } else { None },
    };
    if let Err(e) = queen.bus.publish(subject::job_cancel(job_id), &cancel).await {
        tracing::warn!(%job_id, error = %e, "cannot publish cancel");
    }
    queen.registry_changed.notify();
}
