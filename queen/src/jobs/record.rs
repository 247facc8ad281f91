//! One job's record as the queen shows it (`GET /v1/jobs/{id}`), and the pure state machine that
//! folds its status events into it ([`JobRecord::apply`]).
//!
//! Phases: `Queued` → `Scheduled` → `Running` → one of `Completed`, `Failed`, `Cancelled`. Between
//! non-terminal phases any move is accepted (a job is requeued when its worker refuses or dies, and
//! `attempts` counts each placement); terminal phases are sticky: a late event after one is ignored.

use std::str::FromStr;

use rbee_bus::{FinishReason, JobId, JobState, ModelId, Usage, WorkerId};
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
    type Err = RecordError;

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
            .ok_or_else(|| RecordError::UnknownPhase { value: value.to_owned() })
    }
}

/// A query string that names no phase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
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
    /// Times it moved to another worker mid-stream after its worker was lost.
    #[serde(default)]
    pub migrations: u32,
}

impl JobRecord {
    /// A job just created, queued.
    pub fn new(job_id: JobId, model_id: ModelId, now_ms: u64) -> Self {
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
            migrations: 0,
        }
    }

    /// Folds in one status; false when the job had already finished (terminal phases are sticky).
    pub fn apply(&mut self, state: &JobState, now_ms: u64) -> bool {
        if self.state.is_terminal() {
            return false;
        }
        match state {
            JobState::Queued { reason } => {
                self.state = JobPhase::Queued;
                self.queue_reason = Some(reason.clone());
            }
            JobState::Migrating { reason, .. } => {
                self.state = JobPhase::Queued;
                self.queue_reason = Some(reason.clone());
                self.migrations += 1;
            }
            JobState::Scheduled { worker_id } => {
                self.state = JobPhase::Scheduled;
                self.worker_id = Some(worker_id.clone());
                self.attempts += 1;
                self.queue_reason = None;
            }
            JobState::Accepted { worker_id, prompt_tokens } => {
                self.running_on(worker_id);
                self.prompt_tokens = Some(*prompt_tokens);
            }
            JobState::Running { worker_id } => self.running_on(worker_id),
            JobState::Finished { finish_reason, usage, error, worker_id } => {
                self.state = match finish_reason {
                    FinishReason::Stop | FinishReason::Length | FinishReason::ToolCalls => {
                        JobPhase::Completed
                    }
                    FinishReason::Cancelled => JobPhase::Cancelled,
                    FinishReason::Error => {
                        JobPhase::Failed { reason: error.clone().unwrap_or_else(|| "error".to_owned()) }
                    }
                };
                self.finish_reason = Some(*finish_reason);
                self.usage = Some(usage.clone());
                self.error.clone_from(error);
                if worker_id.is_some() {
                    self.worker_id.clone_from(worker_id);
                }
                if self.prompt_tokens.is_none() && usage.prompt_tokens > 0 {
                    self.prompt_tokens = Some(usage.prompt_tokens);
                }
                self.queue_reason = None;
            }
        }
        self.updated_at_ms = self.updated_at_ms.max(now_ms);
        true
    }

    /// Marks the job failed without a status event (refused at submission); false when it had
    /// already finished.
    pub fn fail(&mut self, reason: String, now_ms: u64) -> bool {
        if self.state.is_terminal() {
            return false;
        }
        self.state = JobPhase::Failed { reason: reason.clone() };
        self.finish_reason = Some(FinishReason::Error);
        self.error = Some(reason);
        self.queue_reason = None;
        self.updated_at_ms = self.updated_at_ms.max(now_ms);
        true
    }

    fn running_on(&mut self, worker_id: &WorkerId) {
        self.state = JobPhase::Running;
        self.worker_id = Some(worker_id.clone());
        self.attempts = self.attempts.max(1);
        self.queue_reason = None;
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
    /// Counts one more job in `kind`.
    pub fn add(&mut self, kind: JobPhaseKind) {
        let slot = match kind {
            JobPhaseKind::Queued => &mut self.queued,
            JobPhaseKind::Scheduled => &mut self.scheduled,
            JobPhaseKind::Running => &mut self.running,
            JobPhaseKind::Completed => &mut self.completed,
            JobPhaseKind::Failed => &mut self.failed,
            JobPhaseKind::Cancelled => &mut self.cancelled,
        };
        *slot += 1;
    }

    /// Jobs not yet finished.
    pub fn active(&self) -> usize {
        self.queued + self.scheduled + self.running
    }

    /// All jobs.
    pub fn total(&self) -> usize {
        self.active() + self.completed + self.failed + self.cancelled
    }
}
