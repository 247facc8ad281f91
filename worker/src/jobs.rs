//! The token path: takes assignments on `rbee.worker.<id>.jobs`, replies accept or refuse at once, then
//! streams each job's tokens on `rbee.job.<id>.tokens` and its status on `rbee.job.<id>.status`.
//!
//! Every chunk and status of a job carries its assignment's `attempt` and `attempt_key`, so a consumer can drop the
//! output of a placement the queen superseded. An assignment for a job cancelled shortly before
//! ([`crate::cancels`]) is accepted and ends `cancelled` at once. A job task that panics still ends
//! its job with an `error` status.
//!
//! Coalescing: the first token of a job is published at once. After that, tokens that arrive within
//! `coalesce_window` of the previous publish are gathered into one chunk, so no token waits longer than
//! the window, and at high rates (GPU) there are fewer, larger messages.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use rbee_bus::{
    subject, ErrorCode, FinishReason, JobAccepted, JobAssignment, JobId, JobState, JobStatus, TokenChunk,
    Usage, WireError, SCHEMA_VERSION,
};
use rbee_daemon::Tasks;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, GenEvent, GenerationRequest, SubmitError};
use crate::WorkerShared;

/// Counters shown in `$SRV.STATS` and logs.
#[derive(Debug, Default)]
pub struct JobCounters {
    /// Assignments accepted.
    pub accepted: AtomicU64,
    /// Assignments refused (no slot, too long, bad parameters, wrong model, draining).
    pub refused: AtomicU64,
    /// Assignments that did not decode.
    pub malformed: AtomicU64,
    /// Jobs finished, any reason.
    pub finished: AtomicU64,
}

/// Jobs running on this worker, by id, with the token that cancels each.
#[derive(Debug, Default, Clone)]
pub struct ActiveJobs {
    inner: Arc<Mutex<HashMap<JobId, CancellationToken>>>,
}

impl ActiveJobs {
    fn insert(&self, job: JobId, cancel: CancellationToken) {
        if let Ok(mut map) = self.inner.lock() {
            map.insert(job, cancel);
        }
    }

    fn remove(&self, job: &JobId) {
        if let Ok(mut map) = self.inner.lock() {
            map.remove(job);
        }
    }

    /// Cancels one job; false when it is not running here.
    pub fn cancel(&self, job: &JobId) -> bool {
        match self.inner.lock().ok().and_then(|map| map.get(job).cloned()) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// Cancels every job.
    pub fn cancel_all(&self) {
        if let Ok(map) = self.inner.lock() {
            map.values().for_each(CancellationToken::cancel);
        }
    }

    /// Jobs running.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// True when none run.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Decides on one raw assignment: starts the job and returns the acceptance, or the refusal.
pub fn handle_assignment(
    shared: &Arc<WorkerShared>,
    engine: &Engine,
    tasks: &Tasks,
    payload: &[u8],
) -> Result<JobAccepted, WireError> {
    let counters = &shared.counters;
    let assignment: JobAssignment = match rbee_bus::rpc::decode(&shared.jobs_subject, payload) {
        Ok(a) => a,
        Err(e) => {
            counters.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "malformed job assignment refused");
            return Err(WireError::new(ErrorCode::BadRequest, e.to_string()));
        }
    };
    let refuse = |e: WireError| {
        counters.refused.fetch_add(1, Ordering::Relaxed);
        tracing::info!(job_id = %assignment.job_id, code = e.code().as_str(), reason = %e.error.message, "job refused");
        Err(e)
    };
    if let Err(e) = shared.fence.admit(assignment.fence, "assignment") {
        return refuse(e);
    }
    if shared.draining() {
        return refuse(WireError::new(ErrorCode::ShuttingDown, "worker is draining"));
    }
    if assignment.model_id != shared.config.model_id {
        return refuse(WireError::new(
            ErrorCode::WrongModel,
            format!("this worker serves {}, not {}", shared.config.model_id, assignment.model_id),
        ));
    }
    if shared.early_cancels.contains(&assignment.job_id, Instant::now()) {
        let seq = counters.accepted.fetch_add(1, Ordering::AcqRel) + 1;
        tracing::info!(job_id = %assignment.job_id, attempt = assignment.attempt, "job cancelled before its assignment came, ending it");
        let accepted = JobAccepted {
            v: SCHEMA_VERSION,
            job_id: assignment.job_id.clone(),
            worker_id: shared.config.worker_id.clone(),
            prompt_tokens: 0,
            accepted_seq: Some(seq),
        };
        let stream = JobStream {
            shared: shared.clone(),
            job_id: assignment.job_id,
            model_id: assignment.model_id,
            prompt_tokens: 0,
            attempt: assignment.attempt,
            attempt_key: assignment.attempt_key,
            first_seq: 0,
            generated_before: 0,
        };
        tasks.spawn("job", stream.end_cancelled());
        return Ok(accepted);
    }
    let cancel = CancellationToken::new();
    // A deadline too far to add to the clock is no deadline.
    let deadline =
        assignment.deadline_ms.and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms)));
    let request = GenerationRequest {
        prompt: assignment.prompt.clone(),
        params: assignment.params.clone(),
        cancel: cancel.clone(),
        deadline,
        resume: assignment.resume.clone(),
    };
    let generation = match engine.submit(request) {
        Ok(g) => g,
        Err(e) => return refuse(submit_error_to_wire(e)),
    };
    // Counted after the engine took the slot (a heartbeat that counts this job counts its slot).
    let seq = counters.accepted.fetch_add(1, Ordering::AcqRel) + 1;
    let accepted = JobAccepted {
        v: SCHEMA_VERSION,
        job_id: assignment.job_id.clone(),
        worker_id: shared.config.worker_id.clone(),
        prompt_tokens: generation.prompt_tokens,
        accepted_seq: Some(seq),
    };
    let (first_seq, generated_before) =
        assignment.resume.as_ref().map_or((0, 0), |r| (r.next_seq, r.completion_tokens));
    tracing::info!(
        job_id = %assignment.job_id,
        prompt_tokens = generation.prompt_tokens,
        resumed_at_seq = assignment.resume.is_some().then_some(first_seq),
        "job accepted"
    );
    shared.active.insert(assignment.job_id.clone(), cancel.clone());
    // A cancel that came between the check above and the insert was remembered, not delivered.
    if shared.early_cancels.contains(&assignment.job_id, Instant::now()) {
        cancel.cancel();
    }
    let stream = JobStream {
        shared: shared.clone(),
        job_id: assignment.job_id,
        model_id: assignment.model_id,
        prompt_tokens: generation.prompt_tokens,
        attempt: assignment.attempt,
        attempt_key: assignment.attempt_key,
        first_seq,
        generated_before,
    };
    tasks.spawn("job", stream.run_guarded(generation.events));
    Ok(accepted)
}

/// Maps an engine refusal to the wire error the queen acts on.
pub fn submit_error_to_wire(e: SubmitError) -> WireError {
    match e {
        SubmitError::NoFreeSlot { .. } => WireError::new(ErrorCode::NoFreeSlot, e.to_string()),
        SubmitError::PromptTooLong { .. } => WireError::new(ErrorCode::PromptTooLong, e.to_string()),
        SubmitError::InvalidParams(p) => p.into(),
        SubmitError::ShutDown => WireError::new(ErrorCode::ShuttingDown, e.to_string()),
        other => WireError::new(ErrorCode::BadRequest, other.to_string()),
    }
}

#[derive(Clone)]
struct JobStream {
    shared: Arc<WorkerShared>,
    job_id: JobId,
    model_id: rbee_bus::ModelId,
    prompt_tokens: u32,
    /// The assignment's attempt and its key, copied into every chunk and status.
    attempt: u32,
    attempt_key: Option<String>,
    /// A resumed job's chunks continue the earlier attempts' `seq` and `total_tokens`.
    first_seq: u64,
    generated_before: u32,
}

impl JobStream {
    async fn status(&self, state: JobState) {
        let status = JobStatus {
            v: SCHEMA_VERSION,
            meta: self.shared.stamper.next(),
            job_id: self.job_id.clone(),
            model_id: Some(self.model_id.clone()),
            state,
            attempt: self.attempt,
            attempt_key: self.attempt_key.clone(),
        };
        if let Err(e) = self.shared.bus.publish(subject::job_status(&self.job_id), &status).await {
            tracing::warn!(job_id = %self.job_id, error = %e, "cannot publish job status");
        }
    }

    /// [`JobStream::run`], ending the job with an `error` status if it panics.
    async fn run_guarded(self, events: UnboundedReceiver<GenEvent>) {
        let fallback = self.clone();
        if let Err(panic) = AssertUnwindSafe(self.run(events)).catch_unwind().await {
            let reason = rbee_bus::rpc::panic_text(panic.as_ref());
            tracing::error!(job_id = %fallback.job_id, panic = %reason, "job task panicked, failing the job");
            fallback.shared.active.remove(&fallback.job_id);
            fallback.shared.counters.finished.fetch_add(1, Ordering::Relaxed);
            let state = JobState::Finished {
                finish_reason: FinishReason::Error,
                usage: Usage { prompt_tokens: fallback.prompt_tokens, ..Usage::default() },
                error: Some(format!("the worker failed while streaming: {reason}")),
                worker_id: Some(fallback.shared.config.worker_id.clone()),
            };
            fallback.status(state).await;
        }
    }

    /// A job cancelled before it was assigned: accepted, then finished `cancelled` with nothing generated.
    async fn end_cancelled(self) {
        let worker_id = self.shared.config.worker_id.clone();
        self.status(JobState::Accepted { worker_id: worker_id.clone(), prompt_tokens: 0 }).await;
        self.shared.counters.finished.fetch_add(1, Ordering::Relaxed);
        let state = JobState::Finished {
            finish_reason: FinishReason::Cancelled,
            usage: Usage::default(),
            error: None,
            worker_id: Some(worker_id),
        };
        self.status(state).await;
    }

    async fn run(self, mut events: UnboundedReceiver<GenEvent>) {
        let worker_id = self.shared.config.worker_id.clone();
        self.status(JobState::Accepted { worker_id: worker_id.clone(), prompt_tokens: self.prompt_tokens })
            .await;
        let window = self.shared.config.coalesce_window;
        let tokens_subject = subject::job_tokens(&self.job_id);
        let mut seq = self.first_seq;
        let mut total = self.generated_before;
        let mut last_publish: Option<Instant> = None;
        let mut finished = None;
        while finished.is_none() {
            let Some(first) = events.recv().await else {
                finished = Some((FinishReason::Error, Usage::default(), Some("engine stopped".to_owned())));
                break;
            };
            let mut text = String::new();
            let mut tokens = 0u32;
            let mut logprobs = Vec::new();
            let mut token_ids = Vec::new();
            let mut tool_calls = Vec::new();
            let mut absorb = |event: GenEvent, finished: &mut Option<_>| match event {
                GenEvent::Token { text: piece, logprobs: lp, token_ids: ids } => {
                    text.push_str(&piece);
                    logprobs.extend(lp);
                    tokens = tokens.saturating_add(u32::try_from(ids.len()).unwrap_or(u32::MAX));
                    token_ids.extend(ids);
                }
                GenEvent::ToolCalls { calls } => tool_calls.extend(calls),
                GenEvent::Finished { reason, usage, error } => *finished = Some((reason, usage, error)),
            };
            absorb(first, &mut finished);
            // Gather what is ready now, and within the window after the previous publish.
            if let Some(last) = last_publish {
                let until = last + window;
                while finished.is_none() {
                    match events.try_recv() {
                        Ok(ev) => absorb(ev, &mut finished),
                        Err(_) => {
                            let now = Instant::now();
                            if now >= until {
                                break;
                            }
                            match tokio::time::timeout(until - now, events.recv()).await {
                                Ok(Some(ev)) => absorb(ev, &mut finished),
                                Ok(None) | Err(_) => break,
                            }
                        }
                    }
                }
            }
            if text.is_empty() && tokens == 0 && tool_calls.is_empty() {
                continue;
            }
            total = total.saturating_add(tokens);
            if seq == self.first_seq {
                self.status(JobState::Running { worker_id: worker_id.clone() }).await;
            }
            let chunk = TokenChunk {
                v: SCHEMA_VERSION,
                meta: self.shared.stamper.next(),
                job_id: self.job_id.clone(),
                worker_id: worker_id.clone(),
                seq,
                text,
                tokens,
                total_tokens: total,
                attempt: self.attempt,
                attempt_key: self.attempt_key.clone(),
                tool_calls,
                logprobs,
                token_ids,
            };
            if let Err(e) = self.shared.bus.publish(tokens_subject.clone(), &chunk).await {
                tracing::warn!(job_id = %self.job_id, error = %e, "cannot publish tokens");
            }
            seq += 1;
            last_publish = Some(Instant::now());
        }
        let (finish_reason, usage, error) =
            finished.unwrap_or((FinishReason::Error, Usage::default(), Some("no result".to_owned())));
        self.shared.active.remove(&self.job_id);
        self.shared.counters.finished.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            job_id = %self.job_id,
            finish_reason = finish_reason.as_str(),
            completion_tokens = usage.completion_tokens,
            tokens_per_second = usage.decode_tokens_per_second.unwrap_or_default(),
            "job finished"
        );
        self.status(JobState::Finished { finish_reason, usage, error, worker_id: Some(worker_id) }).await;
        // A slot is free again: say so now, not at the next interval. The queen counts this worker's
        // slots from its last heartbeat (plus its own placements since), so until then it believes the
        // slot busy and queues a job that would fill it, for up to a heartbeat interval (~1 s for the
        // 4th of 4 jobs sent right after one job ended, and for a full worker's next job in `make
        // bench`). The heartbeat also carries the prefixes the slot now holds, for routing the
        // conversation's next turn. Jobs ending together share one beat (the notification is kept
        // once until the heartbeat loop takes it).
        self.shared.beat_now.notify_one();
    }
}
