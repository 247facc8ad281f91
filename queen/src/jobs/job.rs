//! One job's owner in the queen: a handle that holds its [`JobRecord`], the buffer of its events (token
//! chunks and statuses, in order, for any number of [`JobReader`]s), the cancel request and the code of
//! a refusal that ended it. Every change goes through [`Job::apply`], whether the event came from the
//! bus (a worker's tokens and statuses) or from the queen's own decision (queued, scheduled, failed):
//! an event already seen from the same publisher (its epoch and sequence) is dropped, so the queen's
//! own statuses coming back from the bus change nothing.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use rbee_bus::{ErrorCode, EventMeta, JobId, JobState, JobStatus, Resume, TokenChunk, WorkerId};
use tokio::sync::watch;

use super::record::{JobPhaseKind, JobRecord};
use crate::sequence::{Sequence, Verdict};
use crate::QUEEN_PUBLISHER;

/// Epochs a publisher had before that are still recognised as stale.
const RETIRED_EPOCHS_KEPT: usize = 4;

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

/// What [`Job::apply`] did with an event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// The event was new and taken (into the record, the buffer, or both).
    pub taken: bool,
    /// The event ended the job.
    pub finished: bool,
}

/// One job: see the module documentation.
#[derive(Debug)]
pub struct Job {
    /// Its id.
    pub job_id: JobId,
    /// When the queen created or first saw it (for time-to-first-token).
    pub created: Instant,
    /// True while this queen places it (it created it, or took it over as leader).
    owned: std::sync::atomic::AtomicBool,
    state: Mutex<State>,
    len: watch::Sender<usize>,
}

#[derive(Debug)]
struct State {
    record: JobRecord,
    publishers: Vec<(String, Sequence)>,
    /// Events kept for readers; `None` once dropped (not followed here, or finished long ago).
    events: Option<Vec<JobEvent>>,
    finished_at: Option<Instant>,
    last_token_at: Option<Instant>,
    cancel_requested: bool,
    failure: Option<ErrorCode>,
    /// The worker, attempt number and attempt key of the latest `scheduled` status: only that
    /// attempt's chunks and statuses are taken.
    placement: Option<(WorkerId, u32, Option<String>)>,
    /// Events dropped as another attempt's (or a stranger's).
    superseded: u64,
}

impl Job {
    /// A job with this record, `owned` when this queen places it. Every job keeps its events for
    /// readers (a standby relays the jobs it forwarded, and needs what clients received of any job
    /// it may take over).
    pub fn new(record: JobRecord, owned: bool) -> Self {
        Self {
            job_id: record.job_id.clone(),
            created: Instant::now(),
            owned: std::sync::atomic::AtomicBool::new(owned),
            state: Mutex::new(State {
                record,
                publishers: Vec::new(),
                events: Some(Vec::new()),
                finished_at: None,
                last_token_at: None,
                cancel_requested: false,
                failure: None,
                placement: None,
                superseded: 0,
            }),
            len: watch::channel(0).0,
        }
    }

    /// True while this queen places it.
    pub fn is_owned(&self) -> bool {
        self.owned.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Takes or gives up placing it (through the table, which counts the queue).
    pub(super) fn set_owned(&self, owned: bool) {
        self.owned.store(owned, std::sync::atomic::Ordering::SeqCst);
    }

    /// True for a job this queen relayed that nothing happened to yet (no event, not placed, not
    /// ended): the leader may take it as its own.
    pub fn is_claimable(&self) -> bool {
        let state = self.lock();
        !self.is_owned()
            && state.placement.is_none()
            && state.finished_at.is_none()
            && state.events.as_ref().is_some_and(Vec::is_empty)
    }

    /// The worker, attempt number and key of its latest placement.
    pub fn placement(&self) -> Option<(WorkerId, u32, Option<String>)> {
        self.lock().placement.clone()
    }

    /// True when the token chunks kept start at the job's first (`seq` 0) and follow without a gap,
    /// so [`Job::resume_point`] is what clients received (a standby that started mid-stream has
    /// only the rest).
    pub fn chunks_complete(&self) -> bool {
        let state = self.lock();
        let mut next = 0u64;
        for event in state.events.iter().flatten() {
            let JobEvent::Token(chunk) = event else { continue };
            if chunk.seq > next {
                return false;
            }
            next = next.max(chunk.seq + 1);
        }
        state.events.is_some()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one event at `now_ms`: a status folds into the record (unless its publisher sent it
    /// already, or the job is over) and is buffered; a token chunk is buffered. Nothing is taken after
    /// the final status.
    pub(super) fn apply(&self, event: JobEvent, now_ms: u64) -> Applied {
        let mut state = self.lock();
        if state.record.state.is_terminal() {
            return Applied::default();
        }
        let mut applied = Applied { taken: true, ..Applied::default() };
        if !state.is_current_attempt(&event, self.is_owned()) {
            state.superseded += 1;
            return Applied::default();
        }
        if let JobEvent::Status(status) = &event {
            if !state.first_sight(&status.meta) {
                return Applied::default();
            }
            if let JobState::Scheduled { worker_id } = &status.state {
                state.placement = Some((worker_id.clone(), status.attempt, status.attempt_key.clone()));
            }
            state.record.apply(&status.state, now_ms);
            applied.finished = state.record.state.is_terminal();
        }
        if applied.finished {
            state.finished_at = Some(Instant::now());
        }
        let Some(events) = state.events.as_mut() else { return applied };
        events.push(event);
        let n = events.len();
        drop(state);
        self.len.send_replace(n);
        applied
    }

    /// Ends a job that never got a status event (refused at submission); false when it had ended.
    pub(super) fn fail_unannounced(&self, reason: String, now_ms: u64) -> bool {
        let mut state = self.lock();
        let failed = state.record.fail(reason, now_ms);
        if failed {
            state.finished_at = Some(Instant::now());
        }
        failed
    }

    /// A copy of its record.
    pub fn record(&self) -> JobRecord {
        self.lock().record.clone()
    }

    /// Its phase.
    pub fn phase(&self) -> JobPhaseKind {
        self.lock().record.state.kind()
    }

    /// True while it waits in the queue: queued with a reason (a job just created has none yet).
    pub fn is_waiting(&self) -> bool {
        let state = self.lock();
        state.record.state.kind() == JobPhaseKind::Queued && state.record.queue_reason.is_some()
    }

    /// A reader from the first event, or `None` when its events are not kept.
    pub fn reader(self: &Arc<Self>) -> Option<JobReader> {
        self.lock().events.as_ref()?;
        Some(JobReader { job: self.clone(), next: 0, len: self.len.subscribe() })
    }

    /// Drops the buffered events of a job finished before `cutoff` (its record stays); true when it did.
    pub fn drop_events_if_finished_before(&self, cutoff: Instant) -> bool {
        let mut state = self.lock();
        if state.events.is_some() && state.finished_at.is_some_and(|at| at < cutoff) {
            state.events = None;
            return true;
        }
        false
    }

    /// Events dropped as another attempt's.
    pub fn superseded(&self) -> u64 {
        self.lock().superseded
    }

    /// Token chunks received so far.
    pub fn token_count(&self) -> usize {
        let state = self.lock();
        state.events.iter().flatten().filter(|e| matches!(e, JobEvent::Token(_))).count()
    }

    /// What clients have received so far, for the next attempt to go on from: the text and token ids
    /// of every chunk taken, in order; `None` before the first chunk.
    pub fn resume_point(&self) -> Option<Resume> {
        let state = self.lock();
        let mut resume: Option<Resume> = None;
        for event in state.events.iter().flatten() {
            let JobEvent::Token(chunk) = event else { continue };
            let r = resume.get_or_insert_with(Resume::default);
            r.text.push_str(&chunk.text);
            r.token_ids.extend_from_slice(&chunk.token_ids);
            r.next_seq = r.next_seq.max(chunk.seq.saturating_add(1));
            r.completion_tokens = r.completion_tokens.max(chunk.total_tokens);
        }
        resume
    }

    /// True once the job is over.
    pub fn is_finished(&self) -> bool {
        self.lock().finished_at.is_some()
    }

    /// Records when the latest token arrived; returns the previous time.
    pub fn swap_last_token_at(&self, now: Instant) -> Option<Instant> {
        self.lock().last_token_at.replace(now)
    }

    /// Asks the dispatcher to stop placing it.
    pub fn request_cancel(&self) {
        self.lock().cancel_requested = true;
    }

    /// True once cancelling was asked for.
    pub fn cancel_requested(&self) -> bool {
        self.lock().cancel_requested
    }

    /// Records why the job was refused, so HTTP can answer with a fitting status.
    pub fn set_failure(&self, code: ErrorCode) {
        self.lock().failure = Some(code);
    }

    /// Why the job was refused, if it was.
    pub fn failure(&self) -> Option<ErrorCode> {
        self.lock().failure
    }
}

impl State {
    /// True unless the event is a worker's for another attempt than the latest placement (a chunk or
    /// status of an abandoned attempt, or of a publisher that was never assigned the job). Attempt 0
    /// (not counted by an older queen or worker) matches any attempt of the same worker. A job this
    /// queen owns takes no worker event before it placed the job. When the placement has a key, the
    /// event must carry the same: a worker that was never given the assignment cannot know it.
    fn is_current_attempt(&self, event: &JobEvent, owned: bool) -> bool {
        let (publisher, attempt, key) = match event {
            JobEvent::Token(chunk) => (chunk.worker_id.as_str(), chunk.attempt, &chunk.attempt_key),
            JobEvent::Status(status) if status.meta.publisher == QUEEN_PUBLISHER => return true,
            JobEvent::Status(status) => (status.meta.publisher.as_str(), status.attempt, &status.attempt_key),
        };
        match &self.placement {
            None => !owned,
            Some((worker_id, placed, placed_key)) => {
                worker_id.as_str() == publisher
                    && (attempt == 0 || *placed == 0 || attempt == *placed)
                    && (placed_key.is_none() || placed_key == key)
            }
        }
    }

    /// True when the event is new from its publisher (same epoch, higher sequence, or a new epoch).
    fn first_sight(&mut self, meta: &EventMeta) -> bool {
        match self.publishers.iter_mut().find(|(publisher, _)| publisher == &meta.publisher) {
            Some((_, sequence)) => sequence.observe(meta, RETIRED_EPOCHS_KEPT) != Verdict::Stale,
            None => {
                self.publishers.push((meta.publisher.clone(), Sequence::new(meta)));
                true
            }
        }
    }
}

/// Follows one job's events from the start.
#[derive(Debug)]
pub struct JobReader {
    job: Arc<Job>,
    next: usize,
    len: watch::Receiver<usize>,
}

impl JobReader {
    /// The next event; `None` after the final status (or when the buffer was dropped).
    pub async fn next(&mut self) -> Option<JobEvent> {
        loop {
            {
                let state = self.job.lock();
                let events = state.events.as_ref()?;
                if let Some(event) = events.get(self.next) {
                    self.next += 1;
                    return Some(event.clone());
                }
                if state.finished_at.is_some() {
                    return None;
                }
            }
            if self.len.changed().await.is_err() {
                return None;
            }
        }
    }

    /// The job it reads.
    pub fn job(&self) -> &Arc<Job> {
        &self.job
    }
}
