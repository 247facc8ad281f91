//! The queen's record of jobs, folded from job status events (`rbee.job.<id>.status`). Pure: ids come
//! from the caller, time is passed in as milliseconds since the Unix epoch.
//!
//! - Phases: `Queued` → `Scheduled` → `Running` → one of `Completed`, `Failed`, `Cancelled`. Between
//!   non-terminal phases any move is accepted (a job is requeued when its worker refuses or dies, and
//!   `attempts` counts each placement); terminal phases are sticky: a late event after one is ignored.
//! - Duplicates: events are stamped per publisher (queen, worker) with epoch and sequence; an event at
//!   or below the last sequence seen from the same publisher and epoch is ignored, so a redelivery
//!   does not count an attempt twice.
//! - Retention: active jobs are never pruned; finished ones are kept while both younger than
//!   `max_age_ms` (since they finished) and among the `max_finished` most recent. The count bound is
//!   enforced as each job finishes; the age bound by [`JobRegistry::prune`].
//! - Warm start: [`JobRegistry::replay`] folds a stream of past status events with the same rules.

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;

use rbee_bus::{FinishReason, JobId, JobState, JobStatus, ModelId, Usage, WorkerId};
use serde::{Deserialize, Serialize};

/// Where a job is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum JobPhase {
    /// Waiting in the queen's queue.
    Queued,
    /// Placed on a worker, not yet accepted.
    Scheduled,
    /// Accepted by a worker, generating.
    Running,
    /// Finished with `stop` or `length`.
    Completed,
    /// Finished with an error.
    Failed {
        /// What went wrong.
        reason: String,
    },
    /// Cancelled by request or deadline.
    Cancelled,
}

impl JobPhase {
    /// The phase without its details.
    pub fn kind(&self) -> JobPhaseKind {
        match self {
            JobPhase::Queued => JobPhaseKind::Queued,
            JobPhase::Scheduled => JobPhaseKind::Scheduled,
            JobPhase::Running => JobPhaseKind::Running,
            JobPhase::Completed => JobPhaseKind::Completed,
            JobPhase::Failed { .. } => JobPhaseKind::Failed,
            JobPhase::Cancelled => JobPhaseKind::Cancelled,
        }
    }

    /// True once the job is over.
    pub fn is_terminal(&self) -> bool {
        self.kind().is_terminal()
    }
}

/// A phase without its details: for filters and counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobPhaseKind {
    /// Queued.
    Queued,
    /// Scheduled.
    Scheduled,
    /// Running.
    Running,
    /// Completed.
    Completed,
    /// Failed.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl JobPhaseKind {
    /// The name used on the wire and in query strings.
    pub fn as_str(&self) -> &'static str {
        match self {
            JobPhaseKind::Queued => "queued",
            JobPhaseKind::Scheduled => "scheduled",
            JobPhaseKind::Running => "running",
            JobPhaseKind::Completed => "completed",
            JobPhaseKind::Failed => "failed",
            JobPhaseKind::Cancelled => "cancelled",
        }
    }

    /// True for completed, failed and cancelled.
    pub fn is_terminal(&self) -> bool {
        matches!(self, JobPhaseKind::Completed | JobPhaseKind::Failed | JobPhaseKind::Cancelled)
    }
}

impl FromStr for JobPhaseKind {
    type Err = JobRegistryError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let all = [
            JobPhaseKind::Queued,
            JobPhaseKind::Scheduled,
            JobPhaseKind::Running,
            JobPhaseKind::Completed,
            JobPhaseKind::Failed,
            JobPhaseKind::Cancelled,
        ];
        all.into_iter()
            .find(|kind| kind.as_str() == value)
            .ok_or_else(|| JobRegistryError::UnknownPhase { value: value.to_owned() })
    }
}

/// What can go wrong with the job registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobRegistryError {
    /// A job with this id exists already.
    #[error("job {job_id} already exists")]
    AlreadyExists {
        /// The id.
        job_id: JobId,
    },
    /// Not a phase name.
    #[error("unknown job phase {value:?}")]
    UnknownPhase {
        /// What was given.
        value: String,
    },
}

/// One job as the queen knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job.
    pub job_id: JobId,
    /// The model asked for.
    pub model_id: ModelId,
    /// Where it is.
    pub state: JobPhase,
    /// When it was created, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// When it last changed, ms since the Unix epoch.
    pub updated_at_ms: u64,
    /// The worker it was last placed on.
    pub worker_id: Option<WorkerId>,
    /// Counts and timings, once finished.
    pub usage: Option<Usage>,
    /// Why it finished.
    pub finish_reason: Option<FinishReason>,
    /// What went wrong, when it failed.
    pub error: Option<String>,
    /// Placements so far (1 once scheduled; more after requeues).
    pub attempts: u32,
    /// Tokens in the prompt, once a worker accepted it.
    pub prompt_tokens: Option<u32>,
    /// Why it waits, while queued.
    pub queue_reason: Option<String>,
}

/// How many finished jobs to keep, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobRetention {
    /// Most finished jobs kept (the most recently finished).
    pub max_finished: usize,
    /// Finished jobs older than this (since they finished) are pruned, in milliseconds.
    pub max_age_ms: u64,
}

impl Default for JobRetention {
    fn default() -> Self {
        Self { max_finished: 10_000, max_age_ms: 3_600_000 }
    }
}

/// Jobs by phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseCounts {
    /// Queued.
    pub queued: usize,
    /// Scheduled.
    pub scheduled: usize,
    /// Running.
    pub running: usize,
    /// Completed.
    pub completed: usize,
    /// Failed.
    pub failed: usize,
    /// Cancelled.
    pub cancelled: usize,
}

impl PhaseCounts {
    /// Jobs not yet finished.
    pub fn active(&self) -> usize {
        self.queued + self.scheduled + self.running
    }

    /// All jobs.
    pub fn total(&self) -> usize {
        self.active() + self.completed + self.failed + self.cancelled
    }
}

/// A record and the last sequence seen from each publisher of its events.
#[derive(Debug, Clone)]
struct Tracked {
    /// The record.
    record: JobRecord,
    /// `(publisher, epoch, last seq)`; a job has two or three publishers.
    seen: Vec<(String, String, u64)>,
}

impl Tracked {
    /// True when the event is new from its publisher; remembers it.
    fn first_sight(&mut self, meta: &rbee_bus::EventMeta) -> bool {
        match self.seen.iter_mut().find(|(publisher, _, _)| publisher == &meta.publisher) {
            Some((_, epoch, seq)) if epoch == &meta.epoch => {
                if meta.seq <= *seq {
                    return false;
                }
                *seq = meta.seq;
            }
            Some((_, epoch, seq)) => {
                epoch.clone_from(&meta.epoch);
                *seq = meta.seq;
            }
            None => self.seen.push((meta.publisher.clone(), meta.epoch.clone(), meta.seq)),
        }
        true
    }
}

/// Jobs by id, with bounded retention of finished ones.
#[derive(Debug, Clone, Default)]
pub struct JobRegistry {
    /// How many finished jobs to keep, and how long.
    retention: JobRetention,
    /// Every job kept.
    jobs: HashMap<JobId, Tracked>,
    /// Finished jobs by the time they finished, oldest first: what pruning takes from.
    finished: BTreeSet<(u64, JobId)>,
}

impl JobRegistry {
    /// An empty registry.
    pub fn new(retention: JobRetention) -> Self {
        Self { retention, ..Self::default() }
    }

    /// Records a new job, queued.
    pub fn create(
        &mut self,
        job_id: JobId,
        model_id: ModelId,
        now_ms: u64,
    ) -> Result<JobRecord, JobRegistryError> {
        if self.jobs.contains_key(&job_id) {
            return Err(JobRegistryError::AlreadyExists { job_id });
        }
        let record = new_record(job_id.clone(), model_id, now_ms);
        self.jobs.insert(job_id, Tracked { record: record.clone(), seen: Vec::new() });
        Ok(record)
    }

    /// Folds in a status event; returns the record when it changed. An event for an unknown job
    /// creates it when the event names the model (a job seen first through its events); a duplicate,
    /// an event after the job finished, or one for an unknown job without a model is ignored.
    pub fn apply_status(&mut self, status: &JobStatus, now_ms: u64) -> Option<JobRecord> {
        let tracked = match self.jobs.entry(status.job_id.clone()) {
            std::collections::hash_map::Entry::Occupied(occupied) => occupied.into_mut(),
            std::collections::hash_map::Entry::Vacant(vacant) => {
                let model_id = status.model_id.clone()?;
                let record = new_record(status.job_id.clone(), model_id, now_ms);
                vacant.insert(Tracked { record, seen: Vec::new() })
            }
        };
        if tracked.record.state.is_terminal() || !tracked.first_sight(&status.meta) {
            return None;
        }
        let record = &mut tracked.record;
        match &status.state {
            JobState::Queued { reason } => {
                record.state = JobPhase::Queued;
                record.queue_reason = Some(reason.clone());
            }
            JobState::Scheduled { worker_id } => {
                record.state = JobPhase::Scheduled;
                record.worker_id = Some(worker_id.clone());
                record.attempts += 1;
                record.queue_reason = None;
            }
            JobState::Accepted { worker_id, prompt_tokens } => {
                record.state = JobPhase::Running;
                record.worker_id = Some(worker_id.clone());
                record.prompt_tokens = Some(*prompt_tokens);
                record.attempts = record.attempts.max(1);
                record.queue_reason = None;
            }
            JobState::Running { worker_id } => {
                record.state = JobPhase::Running;
                record.worker_id = Some(worker_id.clone());
                record.attempts = record.attempts.max(1);
                record.queue_reason = None;
            }
            JobState::Finished { finish_reason, usage, error, worker_id } => {
                record.state = match finish_reason {
                    FinishReason::Stop | FinishReason::Length => JobPhase::Completed,
                    FinishReason::Cancelled => JobPhase::Cancelled,
                    FinishReason::Error => {
                        JobPhase::Failed { reason: error.clone().unwrap_or_else(|| "error".to_owned()) }
                    }
                };
                record.finish_reason = Some(*finish_reason);
                record.usage = Some(usage.clone());
                record.error.clone_from(error);
                if worker_id.is_some() {
                    record.worker_id.clone_from(worker_id);
                }
                if record.prompt_tokens.is_none() && usage.prompt_tokens > 0 {
                    record.prompt_tokens = Some(usage.prompt_tokens);
                }
                record.queue_reason = None;
            }
        }
        record.updated_at_ms = record.updated_at_ms.max(now_ms);
        let record = record.clone();
        if record.state.is_terminal() {
            self.note_finished(&record);
        }
        Some(record)
    }

    /// Marks an active job failed (it could not be placed, its worker vanished); `None` when the job
    /// is unknown or already finished.
    pub fn mark_failed(
        &mut self,
        job_id: &JobId,
        reason: impl Into<String>,
        now_ms: u64,
    ) -> Option<JobRecord> {
        let record = &mut self.jobs.get_mut(job_id)?.record;
        if record.state.is_terminal() {
            return None;
        }
        let reason = reason.into();
        record.state = JobPhase::Failed { reason: reason.clone() };
        record.finish_reason = Some(FinishReason::Error);
        record.error = Some(reason);
        record.queue_reason = None;
        record.updated_at_ms = record.updated_at_ms.max(now_ms);
        let record = record.clone();
        self.note_finished(&record);
        Some(record)
    }

    /// One job.
    pub fn get(&self, job_id: &JobId) -> Option<&JobRecord> {
        self.jobs.get(job_id).map(|tracked| &tracked.record)
    }

    /// Up to `limit` jobs, newest first, only those in `phase` when given.
    pub fn list(&self, limit: usize, phase: Option<JobPhaseKind>) -> Vec<JobRecord> {
        let mut records: Vec<&JobRecord> = self
            .jobs
            .values()
            .map(|tracked| &tracked.record)
            .filter(|record| phase.is_none_or(|phase| record.state.kind() == phase))
            .collect();
        records.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then_with(|| b.job_id.cmp(&a.job_id)));
        records.into_iter().take(limit).cloned().collect()
    }

    /// Jobs by phase.
    pub fn counts_by_phase(&self) -> PhaseCounts {
        let mut counts = PhaseCounts::default();
        for tracked in self.jobs.values() {
            let slot = match tracked.record.state.kind() {
                JobPhaseKind::Queued => &mut counts.queued,
                JobPhaseKind::Scheduled => &mut counts.scheduled,
                JobPhaseKind::Running => &mut counts.running,
                JobPhaseKind::Completed => &mut counts.completed,
                JobPhaseKind::Failed => &mut counts.failed,
                JobPhaseKind::Cancelled => &mut counts.cancelled,
            };
            *slot += 1;
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

    /// Drops finished jobs older than `max_age_ms` at `now_ms`, then the oldest finished beyond
    /// `max_finished`. Returns the ids dropped, oldest first.
    pub fn prune(&mut self, now_ms: u64) -> Vec<JobId> {
        let mut pruned = Vec::new();
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
    /// stamped (never later than `now_ms`), then prunes at `now_ms`. Returns how many changed a record.
    pub fn replay<'a>(&mut self, statuses: impl IntoIterator<Item = &'a JobStatus>, now_ms: u64) -> usize {
        let mut applied = 0;
        for status in statuses {
            applied += usize::from(self.apply_status(status, status.meta.sent_at_ms.min(now_ms)).is_some());
        }
        self.prune(now_ms);
        applied
    }

    /// Indexes a job that just finished and enforces the count bound.
    fn note_finished(&mut self, record: &JobRecord) {
        self.finished.insert((record.updated_at_ms, record.job_id.clone()));
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

/// A job just created, queued.
fn new_record(job_id: JobId, model_id: ModelId, now_ms: u64) -> JobRecord {
    JobRecord {
        job_id,
        model_id,
        state: JobPhase::Queued,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
        worker_id: None,
        usage: None,
        finish_reason: None,
        error: None,
        attempts: 0,
        prompt_tokens: None,
        queue_reason: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbee_bus::EventMeta;

    fn id<T: FromStr>(value: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        value.parse().expect("valid id")
    }

    fn status(job: &str, publisher: &str, seq: u64, state: JobState) -> JobStatus {
        JobStatus {
            v: 1,
            meta: EventMeta { publisher: publisher.into(), epoch: "e1".into(), seq, sent_at_ms: seq * 10 },
            job_id: id(job),
            model_id: Some(id("smol")),
            state,
        }
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
        let mut jobs = JobRegistry::new(JobRetention::default());
        jobs.create(id("j1"), id("smol"), 100).expect("new id");
        assert!(jobs.create(id("j1"), id("smol"), 100).is_err());
        let worker: WorkerId = id("w1");
        jobs.apply_status(&status("j1", "queen", 1, JobState::Scheduled { worker_id: worker.clone() }), 110);
        // A redelivered event does not count a second attempt.
        assert!(jobs
            .apply_status(&status("j1", "queen", 1, JobState::Scheduled { worker_id: worker.clone() }), 111)
            .is_none());
        let accepted = JobState::Accepted { worker_id: worker.clone(), prompt_tokens: 7 };
        let record = jobs.apply_status(&status("j1", "w1", 1, accepted), 120).expect("changed");
        assert_eq!(
            (record.state.clone(), record.attempts, record.prompt_tokens),
            (JobPhase::Running, 1, Some(7))
        );
        let done = jobs
            .apply_status(&status("j1", "w1", 2, finished(FinishReason::Length, None)), 130)
            .expect("changed");
        assert_eq!(done.state, JobPhase::Completed);
        assert_eq!(done.usage.map(|usage| usage.completion_tokens), Some(3));
        let late = JobState::Running { worker_id: worker };
        assert!(jobs.apply_status(&status("j1", "w1", 3, late), 140).is_none(), "terminal is sticky");
        assert_eq!(jobs.get(&id("j1")).map(|r| r.updated_at_ms), Some(130));
        assert!(jobs.mark_failed(&id("j1"), "too late", 150).is_none());
    }

    #[test]
    fn finish_reasons_map_to_phases() {
        let mut jobs = JobRegistry::new(JobRetention::default());
        let cases = [
            ("a", finished(FinishReason::Stop, None), JobPhaseKind::Completed),
            ("b", finished(FinishReason::Cancelled, None), JobPhaseKind::Cancelled),
            ("c", finished(FinishReason::Error, Some("cuda oom")), JobPhaseKind::Failed),
            ("d", JobState::Queued { reason: "waiting".into() }, JobPhaseKind::Queued),
        ];
        for (job, state, kind) in cases {
            let record = jobs
                .apply_status(&status(job, "w", 1, state), 5)
                .expect("unknown job with a model is created");
            assert_eq!(record.state.kind(), kind);
        }
        assert_eq!(
            jobs.get(&id("c")).map(|r| r.state.clone()),
            Some(JobPhase::Failed { reason: "cuda oom".into() })
        );
        let counts = jobs.counts_by_phase();
        assert_eq!(
            (counts.completed, counts.cancelled, counts.failed, counts.queued, counts.total()),
            (1, 1, 1, 1, 4)
        );
        assert_eq!(jobs.list(10, Some(JobPhaseKind::Failed)).len(), 1);
        assert_eq!("cancelled".parse::<JobPhaseKind>().ok(), Some(JobPhaseKind::Cancelled));
        let json = serde_json::to_value(jobs.get(&id("c")).map(|r| r.state.clone())).expect("serializes");
        assert_eq!(json, serde_json::json!({"phase": "failed", "reason": "cuda oom"}));
    }

    #[test]
    fn retention_bounds_finished_jobs_by_count_and_age_never_active_ones() {
        let mut jobs = JobRegistry::new(JobRetention { max_finished: 2, max_age_ms: 1_000 });
        jobs.create(id("active"), id("smol"), 0).expect("new id");
        for (n, job) in ["f1", "f2", "f3"].into_iter().enumerate() {
            jobs.create(id(job), id("smol"), 0).expect("new id");
            jobs.mark_failed(&id(job), "boom", 100 * (n as u64 + 1));
        }
        assert!(jobs.get(&id("f1")).is_none(), "count bound drops the oldest finished");
        assert_eq!(jobs.len(), 3);
        assert_eq!(jobs.prune(1_250), vec![id::<JobId>("f2")]);
        assert_eq!(jobs.prune(10_000), vec![id::<JobId>("f3")]);
        assert!(jobs.get(&id("active")).is_some());
    }

    #[test]
    fn replay_rebuilds_the_same_records() {
        let events = vec![
            status("r1", "queen", 1, JobState::Queued { reason: "no hive has model smol".into() }),
            status("r1", "queen", 2, JobState::Scheduled { worker_id: id("w1") }),
            status("r1", "w1", 1, JobState::Running { worker_id: id("w1") }),
            status("r1", "w1", 2, finished(FinishReason::Stop, None)),
            status("r2", "queen", 3, JobState::Queued { reason: "waiting".into() }),
        ];
        let mut live = JobRegistry::new(JobRetention::default());
        for event in &events {
            live.apply_status(event, event.meta.sent_at_ms);
        }
        let mut warm = JobRegistry::new(JobRetention::default());
        assert_eq!(warm.replay(&events, 1_000), 5);
        assert_eq!(warm.list(10, None), live.list(10, None));
        assert_eq!(warm.get(&id("r1")).map(|r| r.state.clone()), Some(JobPhase::Completed));
    }
}
