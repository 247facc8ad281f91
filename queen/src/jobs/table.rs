//! Every job the queen knows, by id: the one owner of job state. Pure apart from the clock of
//! [`Job`]'s buffers: ids come from the caller, time is passed in as milliseconds since the Unix epoch.
//!
//! - Jobs this queen creates ([`JobTable::create`]) are *owned*: they keep their events for readers
//!   and, while they wait with a reason, count in the queue length the scheduler sees
//!   ([`JobTable::queued`]). Jobs first seen
//!   through their status events (another submitter's, or replayed history) get a record only.
//! - Retention: active jobs are never pruned; finished ones are kept while both younger than
//!   `max_age_ms` (since they finished) and among the `max_finished` most recent. The count bound is
//!   enforced as each job finishes; the age bound by [`JobTable::prune`]. Buffered events are dropped
//!   earlier ([`JobTable::drop_old_events`]); the record stays.
//! - Warm start: [`JobTable::replay`] folds a stream of past status events with the same rules.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use rbee_bus::{JobId, JobStatus, ModelId};

use super::job::{Job, JobEvent};
use super::record::{JobPhaseKind, JobRecord, PhaseCounts};

/// How many finished jobs to keep, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobRetention {
    /// Most finished jobs kept (the most recently finished).
    pub max_finished: usize,
    /// Finished jobs older than this (since they finished) are pruned, in milliseconds.
    pub max_age_ms: u64,
    /// Most active jobs kept that this queen did not create (seen only through status events, or
    /// replayed); a status for a new unknown id beyond it is dropped.
    pub max_foreign_active: usize,
    /// An active job this queen did not create that nothing updated for this long is dropped, in
    /// milliseconds.
    pub foreign_active_ttl_ms: u64,
}

impl Default for JobRetention {
    fn default() -> Self {
        Self {
            max_finished: 10_000,
            max_age_ms: 3_600_000,
            max_foreign_active: 1024,
            foreign_active_ttl_ms: 3_600_000,
        }
    }
}

/// A job id already in use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job {job_id} already exists")]
pub struct AlreadyExists {
    /// The id.
    pub job_id: JobId,
}

/// Jobs by id, with bounded retention of finished ones.
#[derive(Debug, Default)]
pub struct JobTable {
    retention: JobRetention,
    jobs: HashMap<JobId, Arc<Job>>,
    /// Finished jobs by the time they finished, oldest first: what pruning takes from.
    finished: BTreeSet<(u64, JobId)>,
    /// Owned jobs in the `queued` phase.
    queued: usize,
    /// Active jobs this queen did not create.
    foreign_active: std::collections::HashSet<JobId>,
    /// Status events for unknown ids dropped because [`JobRetention::max_foreign_active`] was reached.
    foreign_refused: u64,
}

impl JobTable {
    /// An empty table.
    pub fn new(retention: JobRetention) -> Self {
        Self { retention, ..Self::default() }
    }

    /// Creates a job of this queen, queued.
    pub fn create(
        &mut self,
        job_id: JobId,
        model_id: ModelId,
        now_ms: u64,
    ) -> Result<Arc<Job>, AlreadyExists> {
        self.insert_new(job_id, model_id, now_ms, true)
    }

    /// Creates a job a standby forwards to the leader: the leader places it, this queen relays its
    /// events to its own readers.
    pub fn create_relayed(
        &mut self,
        job_id: JobId,
        model_id: ModelId,
        now_ms: u64,
    ) -> Result<Arc<Job>, AlreadyExists> {
        let job = self.insert_new(job_id.clone(), model_id, now_ms, false)?;
        self.foreign_active.insert(job_id);
        Ok(job)
    }

    fn insert_new(
        &mut self,
        job_id: JobId,
        model_id: ModelId,
        now_ms: u64,
        owned: bool,
    ) -> Result<Arc<Job>, AlreadyExists> {
        if self.jobs.contains_key(&job_id) {
            return Err(AlreadyExists { job_id });
        }
        let job = Arc::new(Job::new(JobRecord::new(job_id.clone(), model_id, now_ms), owned));
        self.jobs.insert(job_id, job.clone());
        Ok(job)
    }

    /// [`JobTable::create`], or the job this queen relayed under the same id while a standby, when
    /// nothing happened to it yet: the queen became the leader and the forwarded submission reached
    /// itself.
    pub fn create_or_claim(
        &mut self,
        job_id: JobId,
        model_id: ModelId,
        now_ms: u64,
    ) -> Result<Arc<Job>, AlreadyExists> {
        match self.jobs.get(&job_id).cloned() {
            Some(job) if job.is_claimable() => Ok(self.adopt(&job_id, &model_id, now_ms)),
            Some(_) => Err(AlreadyExists { job_id }),
            None => self.create(job_id, model_id, now_ms),
        }
    }

    /// Makes this queen the one that places a job (a takeover); an id it never saw gets a record
    /// created at `created_at_ms`.
    pub fn adopt(&mut self, job_id: &JobId, model_id: &ModelId, created_at_ms: u64) -> Arc<Job> {
        let job = match self.jobs.get(job_id) {
            Some(job) => job.clone(),
            None => {
                let record = JobRecord::new(job_id.clone(), model_id.clone(), created_at_ms);
                let job = Arc::new(Job::new(record, false));
                self.jobs.insert(job_id.clone(), job.clone());
                job
            }
        };
        if !job.is_owned() {
            job.set_owned(true);
            self.foreign_active.remove(job_id);
            self.queued += usize::from(job.is_waiting());
        }
        job
    }

    /// This queen stops placing a job (its term ended); another queen's statuses reach it again.
    pub fn disown(&mut self, job_id: &JobId) {
        let Some(job) = self.jobs.get(job_id).cloned() else { return };
        if job.is_owned() {
            self.queued -= usize::from(job.is_waiting());
            job.set_owned(false);
            if !job.is_finished() {
                self.foreign_active.insert(job_id.clone());
            }
        }
    }

    /// Hands an event to its job; returns the job when the event was taken. A status for an unknown
    /// job creates its record when the status names the model (a job seen first through its events);
    /// a token chunk for an unknown job, a duplicate, or anything after the job finished is dropped.
    pub fn apply(&mut self, event: JobEvent, now_ms: u64) -> Option<Arc<Job>> {
        let job = match &event {
            JobEvent::Token(chunk) => self.jobs.get(&chunk.job_id)?.clone(),
            JobEvent::Status(status) => match self.jobs.get(&status.job_id) {
                Some(job) => job.clone(),
                None => {
                    let model_id = status.model_id.clone()?;
                    if !status.state.is_terminal()
                        && self.foreign_active.len() >= self.retention.max_foreign_active
                    {
                        self.foreign_refused += 1;
                        return None;
                    }
                    let record = JobRecord::new(status.job_id.clone(), model_id, now_ms);
                    let job = Arc::new(Job::new(record, false));
                    self.jobs.insert(status.job_id.clone(), job.clone());
                    self.foreign_active.insert(status.job_id.clone());
                    job
                }
            },
        };
        let was_waiting = job.is_owned() && job.is_waiting();
        let applied = job.apply(event, now_ms);
        if !applied.taken {
            return None;
        }
        let waiting = job.is_owned() && job.is_waiting();
        self.queued = self.queued + usize::from(waiting) - usize::from(was_waiting);
        if applied.finished {
            self.note_finished(&job);
        }
        Some(job)
    }

    /// Ends an owned job that never got a status event (refused at submission).
    pub fn fail_unannounced(&mut self, job_id: &JobId, reason: String, now_ms: u64) {
        let Some(job) = self.jobs.get(job_id).cloned() else { return };
        let was_waiting = job.is_owned() && job.is_waiting();
        if job.fail_unannounced(reason, now_ms) {
            self.queued -= usize::from(was_waiting);
            self.note_finished(&job);
        }
    }

    /// One job.
    pub fn get(&self, job_id: &JobId) -> Option<Arc<Job>> {
        self.jobs.get(job_id).cloned()
    }

    /// One job's record.
    pub fn record(&self, job_id: &JobId) -> Option<JobRecord> {
        self.jobs.get(job_id).map(|job| job.record())
    }

    /// Owned jobs waiting in the queue, the dispatcher having queued them with a reason (what the
    /// scheduler weighs against the queue's capacity).
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Active jobs this queen did not create (replayed, or seen on the bus), and how many status
    /// events for new unknown ids were dropped because there were too many.
    pub fn foreign_active(&self) -> (Vec<Arc<Job>>, u64) {
        let jobs = self.foreign_active.iter().filter_map(|id| self.jobs.get(id).cloned()).collect();
        (jobs, self.foreign_refused)
    }

    /// Owned jobs waiting in the queue.
    pub fn waiting(&self) -> Vec<Arc<Job>> {
        self.jobs.values().filter(|job| job.is_owned() && job.is_waiting()).cloned().collect()
    }

    /// Up to `limit` jobs, newest first, only those in `phase` when given.
    pub fn list(&self, limit: usize, phase: Option<JobPhaseKind>) -> Vec<JobRecord> {
        let mut records: Vec<JobRecord> = self
            .jobs
            .values()
            .map(|job| job.record())
            .filter(|record| phase.is_none_or(|phase| record.state.kind() == phase))
            .collect();
        records.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then_with(|| b.job_id.cmp(&a.job_id)));
        records.truncate(limit);
        records
    }

    /// Jobs by phase.
    pub fn counts_by_phase(&self) -> PhaseCounts {
        let mut counts = PhaseCounts::default();
        for job in self.jobs.values() {
            counts.add(job.phase());
        }
        counts
    }

    /// Jobs kept.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// True when no job is kept.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Drops the buffered events of jobs finished before `cutoff`; their records stay.
    pub fn drop_old_events(&self, cutoff: Instant) {
        for job in self.jobs.values() {
            job.drop_events_if_finished_before(cutoff);
        }
    }

    /// Drops finished jobs older than `max_age_ms` at `now_ms`, then the oldest finished beyond
    /// `max_finished`. Returns the ids dropped, oldest first.
    pub fn prune(&mut self, now_ms: u64) -> Vec<JobId> {
        let ttl = self.retention.foreign_active_ttl_ms;
        let stale: Vec<JobId> = self
            .foreign_active
            .iter()
            .filter(|id| {
                self.jobs.get(*id).is_none_or(|job| now_ms.saturating_sub(job.record().updated_at_ms) > ttl)
            })
            .cloned()
            .collect();
        let mut pruned = Vec::new();
        for job_id in stale {
            self.foreign_active.remove(&job_id);
            self.jobs.remove(&job_id);
            pruned.push(job_id);
        }
        while let Some((finished_at, _)) = self.finished.first() {
            if now_ms.saturating_sub(*finished_at) <= self.retention.max_age_ms {
                break;
            }
            pruned.extend(self.drop_oldest_finished());
        }
        pruned.extend(self.enforce_count_bound());
        pruned
    }

    /// Folds past status events in order (a warm start from a stream), each at the time its sender
    /// stamped (never later than `now_ms`), then prunes at `now_ms`. Returns how many were taken.
    pub fn replay<'a>(&mut self, statuses: impl IntoIterator<Item = &'a JobStatus>, now_ms: u64) -> usize {
        let mut applied = 0;
        for status in statuses {
            let at = status.meta.sent_at_ms.min(now_ms);
            applied += usize::from(self.apply(JobEvent::Status(status.clone()), at).is_some());
        }
        self.prune(now_ms);
        applied
    }

    /// Indexes a job that just finished and enforces the count bound.
    fn note_finished(&mut self, job: &Job) {
        self.foreign_active.remove(&job.job_id);
        self.finished.insert((job.record().updated_at_ms, job.job_id.clone()));
        self.enforce_count_bound();
    }

    /// Drops the oldest finished jobs beyond `max_finished`.
    fn enforce_count_bound(&mut self) -> Vec<JobId> {
        let mut pruned = Vec::new();
        while self.finished.len() > self.retention.max_finished {
            pruned.extend(self.drop_oldest_finished());
        }
        pruned
    }

    /// Drops the oldest finished job.
    fn drop_oldest_finished(&mut self) -> Option<JobId> {
        let (_, job_id) = self.finished.pop_first()?;
        self.jobs.remove(&job_id);
        Some(job_id)
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use rbee_bus::{EventMeta, FinishReason, JobState, Usage, WorkerId};

    use super::*;
    use crate::jobs::record::JobPhase;

    fn id<T: FromStr>(value: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        value.parse().expect("valid id")
    }

    fn status(job: &str, publisher: &str, seq: u64, state: JobState) -> JobEvent {
        JobEvent::Status(JobStatus {
            v: 1,
            meta: EventMeta { publisher: publisher.into(), epoch: "e1".into(), seq, sent_at_ms: seq * 10 },
            job_id: id(job),
            model_id: Some(id("smol")),
            state,
            attempt: 0,
            attempt_key: None,
        })
    }

    fn finished(reason: FinishReason, error: Option<&str>) -> JobState {
        JobState::Finished {
            finish_reason: reason,
            usage: Usage { prompt_tokens: 7, completion_tokens: 3, ..Usage::default() },
            error: error.map(str::to_owned),
            worker_id: None,
        }
    }

    #[test]
    fn folds_the_life_of_a_job_and_keeps_terminal_states() {
        let mut jobs = JobTable::new(JobRetention::default());
        jobs.create(id("j1"), id("smol"), 100).expect("new id");
        assert!(jobs.create(id("j1"), id("smol"), 100).is_err());
        assert_eq!(jobs.queued(), 0, "not yet placed");
        jobs.apply(status("j1", "queen", 1, JobState::Queued { reason: "no slot".into() }), 105);
        assert_eq!(jobs.queued(), 1);
        let worker: WorkerId = id("w1");
        jobs.apply(status("j1", "queen", 2, JobState::Scheduled { worker_id: worker.clone() }), 110);
        assert_eq!(jobs.queued(), 0, "a scheduled job left the queue");
        // A redelivered event does not count a second attempt.
        assert!(jobs
            .apply(status("j1", "queen", 2, JobState::Scheduled { worker_id: worker.clone() }), 111)
            .is_none());
        let accepted = JobState::Accepted { worker_id: worker.clone(), prompt_tokens: 7 };
        let record = jobs.apply(status("j1", "w1", 1, accepted), 120).expect("changed").record();
        assert_eq!(
            (record.state.clone(), record.attempts, record.prompt_tokens),
            (JobPhase::Running, 1, Some(7))
        );
        let done =
            jobs.apply(status("j1", "w1", 2, finished(FinishReason::Length, None)), 130).expect("changed");
        let done = done.record();
        assert_eq!(done.state, JobPhase::Completed);
        assert_eq!(done.usage.map(|usage| usage.completion_tokens), Some(3));
        let late = JobState::Running { worker_id: worker };
        assert!(jobs.apply(status("j1", "w1", 3, late), 140).is_none(), "terminal is sticky");
        assert_eq!(jobs.record(&id("j1")).map(|r| r.updated_at_ms), Some(130));
        jobs.fail_unannounced(&id("j1"), "too late".into(), 150);
        assert_eq!(jobs.record(&id("j1")).map(|r| r.state), Some(JobPhase::Completed));
    }

    #[test]
    fn an_owned_job_buffers_its_events_once_each() {
        let mut jobs = JobTable::new(JobRetention::default());
        let job = jobs.create(id("j1"), id("smol"), 0).expect("new id");
        let scheduled = status("j1", "queen", 1, JobState::Scheduled { worker_id: id("w1") });
        jobs.apply(scheduled.clone(), 1);
        // The queen's own status, coming back from the bus, is not buffered twice.
        jobs.apply(scheduled, 2);
        jobs.apply(status("j1", "w1", 1, finished(FinishReason::Stop, None)), 3);
        assert_eq!(job.reader().map(|r| r.job().token_count()), Some(0));
        assert!(job.is_finished());
        let past = Instant::now() + std::time::Duration::from_secs(1);
        jobs.drop_old_events(past);
        assert!(job.reader().is_none(), "events dropped");
        assert_eq!(jobs.record(&id("j1")).map(|r| r.state), Some(JobPhase::Completed), "record kept");
    }

    fn attempt(event: JobEvent, n: u32) -> JobEvent {
        match event {
            JobEvent::Status(mut status) => {
                status.attempt = n;
                JobEvent::Status(status)
            }
            JobEvent::Token(mut chunk) => {
                chunk.attempt = n;
                JobEvent::Token(chunk)
            }
        }
    }

    fn token(job: &str, worker: &str, n: u32) -> JobEvent {
        JobEvent::Token(rbee_bus::TokenChunk {
            v: 1,
            meta: EventMeta { publisher: worker.into(), epoch: "e1".into(), seq: 1, sent_at_ms: 0 },
            job_id: id(job),
            worker_id: id(worker),
            seq: 0,
            text: "hi".into(),
            tokens: 1,
            total_tokens: 1,
            attempt: n,
            attempt_key: None,
            tool_calls: Vec::new(),
            logprobs: Vec::new(),
            token_ids: Vec::new(),
        })
    }

    #[test]
    fn only_the_latest_attempt_speaks_for_an_owned_job() {
        let mut jobs = JobTable::new(JobRetention::default());
        let job = jobs.create(id("j1"), id("smol"), 0).expect("new id");
        assert!(jobs.apply(token("j1", "w1", 1), 1).is_none(), "nothing before the job is placed");
        jobs.apply(attempt(status("j1", "queen", 1, JobState::Scheduled { worker_id: id("w1") }), 1), 1);
        assert!(jobs.apply(token("j1", "w1", 1), 2).is_some());
        // The assignment timed out; the job went to w2.
        jobs.apply(attempt(status("j1", "queen", 2, JobState::Scheduled { worker_id: id("w2") }), 2), 3);
        assert!(jobs.apply(token("j1", "w1", 1), 4).is_none(), "the abandoned attempt's chunk");
        let stale_end = attempt(status("j1", "w1", 1, finished(FinishReason::Error, Some("boom"))), 1);
        assert!(jobs.apply(stale_end, 5).is_none(), "the abandoned attempt cannot end the job");
        let forged = status("j1", "w9", 1, finished(FinishReason::Stop, None));
        assert!(jobs.apply(forged, 6).is_none(), "a worker never assigned the job");
        assert!(jobs.apply(token("j1", "w2", 2), 7).is_some());
        assert!(jobs
            .apply(attempt(status("j1", "w2", 1, finished(FinishReason::Stop, None)), 2), 8)
            .is_some());
        assert_eq!((job.phase(), job.token_count(), job.superseded()), (JobPhaseKind::Completed, 2, 4));
    }

    #[test]
    fn a_keyed_attempt_takes_only_events_with_its_key() {
        let mut jobs = JobTable::new(JobRetention::default());
        let job = jobs.create(id("j1"), id("smol"), 0).expect("new id");
        let keyed = |event: JobEvent, key: Option<&str>| match event {
            JobEvent::Status(mut status) => {
                status.attempt_key = key.map(str::to_owned);
                JobEvent::Status(status)
            }
            JobEvent::Token(mut chunk) => {
                chunk.attempt_key = key.map(str::to_owned);
                JobEvent::Token(chunk)
            }
        };
        let scheduled = attempt(status("j1", "queen", 1, JobState::Scheduled { worker_id: id("w1") }), 1);
        jobs.apply(keyed(scheduled, Some("k1")), 1);
        // Another worker forging w1's chunks and end, without the key or with a guess.
        assert!(jobs.apply(token("j1", "w1", 1), 2).is_none(), "a chunk without the key");
        assert!(jobs.apply(keyed(token("j1", "w1", 1), Some("guess")), 3).is_none(), "a wrong key");
        let forged_end = attempt(status("j1", "w1", 1, finished(FinishReason::Stop, None)), 1);
        assert!(jobs.apply(forged_end, 4).is_none(), "an end without the key");
        assert!(jobs.apply(keyed(token("j1", "w1", 1), Some("k1")), 5).is_some());
        let end = attempt(status("j1", "w1", 2, finished(FinishReason::Stop, None)), 1);
        assert!(jobs.apply(keyed(end, Some("k1")), 6).is_some());
        assert_eq!((job.phase(), job.token_count(), job.superseded()), (JobPhaseKind::Completed, 1, 3));
    }

    #[test]
    fn records_of_unknown_active_jobs_are_bounded_and_expire() {
        let retention =
            JobRetention { max_foreign_active: 2, foreign_active_ttl_ms: 1_000, ..JobRetention::default() };
        let mut jobs = JobTable::new(retention);
        let running = |job: &str| status(job, "w", 1, JobState::Running { worker_id: id("w") });
        assert!(jobs.apply(running("f1"), 0).is_some());
        assert!(jobs.apply(running("f2"), 500).is_some());
        assert!(jobs.apply(running("f3"), 600).is_none(), "a third forged id is dropped");
        assert_eq!(jobs.foreign_active().1, 1);
        // A finished one frees its place; a final status for an unknown id still records the end.
        jobs.apply(status("f1", "w", 2, finished(FinishReason::Stop, None)), 700);
        assert!(jobs.apply(running("f3"), 800).is_some());
        assert_eq!(jobs.prune(1_600), vec![id::<JobId>("f2")], "silent for over the ttl");
        assert!(jobs.get(&id("f3")).is_some() && jobs.get(&id("f1")).is_some());
        assert_eq!(jobs.foreign_active().0.len(), 1);
    }

    #[test]
    fn finish_reasons_map_to_phases() {
        let mut jobs = JobTable::new(JobRetention::default());
        let cases = [
            ("a", finished(FinishReason::Stop, None), JobPhaseKind::Completed),
            ("b", finished(FinishReason::Cancelled, None), JobPhaseKind::Cancelled),
            ("c", finished(FinishReason::Error, Some("cuda oom")), JobPhaseKind::Failed),
            ("d", JobState::Queued { reason: "waiting".into() }, JobPhaseKind::Queued),
        ];
        for (job, state, kind) in cases {
            let job = jobs.apply(status(job, "w", 1, state), 5).expect("unknown job with a model is created");
            assert_eq!(job.phase(), kind);
        }
        assert_eq!(jobs.queued(), 0, "jobs seen on the bus are not this queen's queue");
        assert_eq!(
            jobs.record(&id("c")).map(|r| r.state),
            Some(JobPhase::Failed { reason: "cuda oom".into() })
        );
        let counts = jobs.counts_by_phase();
        assert_eq!(
            (counts.completed, counts.cancelled, counts.failed, counts.queued, counts.total()),
            (1, 1, 1, 1, 4)
        );
        assert_eq!(jobs.list(10, Some(JobPhaseKind::Failed)).len(), 1);
        assert_eq!("cancelled".parse::<JobPhaseKind>().ok(), Some(JobPhaseKind::Cancelled));
        let json = serde_json::to_value(jobs.record(&id("c")).map(|r| r.state)).expect("serializes");
        assert_eq!(json, serde_json::json!({"phase": "failed", "reason": "cuda oom"}));
    }

    #[test]
    fn retention_bounds_finished_jobs_by_count_and_age_never_active_ones() {
        let mut jobs =
            JobTable::new(JobRetention { max_finished: 2, max_age_ms: 1_000, ..JobRetention::default() });
        jobs.create(id("active"), id("smol"), 0).expect("new id");
        jobs.apply(status("active", "queen", 1, JobState::Queued { reason: "waiting".into() }), 0);
        for (n, job) in ["f1", "f2", "f3"].into_iter().enumerate() {
            jobs.create(id(job), id("smol"), 0).expect("new id");
            jobs.apply(status(job, "queen", 1, JobState::Queued { reason: "waiting".into() }), 0);
            jobs.fail_unannounced(&id(job), "boom".into(), 100 * (n as u64 + 1));
        }
        assert!(jobs.get(&id("f1")).is_none(), "count bound drops the oldest finished");
        assert_eq!(jobs.len(), 3);
        assert_eq!(jobs.queued(), 1);
        assert_eq!(jobs.prune(1_250), vec![id::<JobId>("f2")]);
        assert_eq!(jobs.prune(10_000), vec![id::<JobId>("f3")]);
        assert!(jobs.get(&id("active")).is_some());
    }

    #[test]
    fn replay_rebuilds_the_same_records() {
        let events = [
            status("r1", "queen", 1, JobState::Queued { reason: "no hive has model smol".into() }),
            status("r1", "queen", 2, JobState::Scheduled { worker_id: id("w1") }),
            status("r1", "w1", 1, JobState::Running { worker_id: id("w1") }),
            status("r1", "w1", 2, finished(FinishReason::Stop, None)),
            status("r2", "queen", 3, JobState::Queued { reason: "waiting".into() }),
        ];
        let statuses: Vec<JobStatus> = events
            .iter()
            .filter_map(|e| match e {
                JobEvent::Status(s) => Some(s.clone()),
                JobEvent::Token(_) => None,
            })
            .collect();
        let mut live = JobTable::new(JobRetention::default());
        for status in &statuses {
            live.apply(JobEvent::Status(status.clone()), status.meta.sent_at_ms);
        }
        let mut warm = JobTable::new(JobRetention::default());
        assert_eq!(warm.replay(&statuses, 1_000), 5);
        assert_eq!(warm.list(10, None), live.list(10, None));
        assert_eq!(warm.record(&id("r1")).map(|r| r.state), Some(JobPhase::Completed));
    }
}
