//! Admission: a job as clients submit it (HTTP or NATS) is checked, given its owner in the job table
//! and placed once at once; a full queue is refused here. Failures are a [`SubmitError`], which HTTP
//! ([`crate::error`]) and NATS ([`crate::submit`]) each map once.

use std::sync::Arc;
use std::time::Instant;

use rbee_bus::{
    BusError, ErrorCode, JobAssignment, JobId, ModelId, Prompt, ResponseFormat, SamplingParams, ToolChoice,
    WireError,
};

use super::dispatch;
use super::job::Job;
use super::table::AlreadyExists;
use crate::scheduler::Placement;
use crate::Queen;

/// A job as clients submit it.
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
    /// How long the worker that runs it stays loaded afterwards (Ollama's `keep_alive`); `None`:
    /// as it was.
    pub keep_alive: Option<crate::keep_alive::KeepAlive>,
}

impl JobRequest {
    /// The assignment a worker gets for this job.
    pub fn assignment(&self, job_id: &JobId) -> JobAssignment {
        let mut assignment = JobAssignment::new(
            job_id.clone(),
            self.model_id.clone(),
            self.prompt.clone(),
            self.params.clone(),
        );
        assignment.deadline_ms = self.deadline_ms;
        assignment
    }

    /// True when another worker can go on from what a lost one streamed: no tool calls the model may
    /// make and no response format (their parser and grammar state do not travel).
    pub fn resumable(&self) -> bool {
        (self.prompt.tools().is_empty() || self.params.tool_choice == ToolChoice::None)
            && self.params.response_format == ResponseFormat::Text
    }
}

/// Why a job was not admitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    /// This queen is a standby and the leader could not take the job (none leads, or it did not
    /// answer).
    #[error("{0}")]
    NoLeader(String),
    /// A parameter is out of range or malformed.
    #[error("{message}")]
    InvalidParams {
        /// The parameter.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The prompt is over the queen's limit.
    #[error("{0}")]
    PromptTooLarge(String),
    /// No worker serves the model and no hive has it.
    #[error("model {0} is not served or spawnable on any hive")]
    UnknownModel(ModelId),
    /// The client's job id is taken.
    #[error(transparent)]
    DuplicateId(#[from] AlreadyExists),
    /// The queue is full and no worker has a free slot.
    #[error("{0}")]
    QueueFull(String),
    /// Every hive with the model refuses it after its workers failed to load.
    #[error("{0}")]
    ModelFailing(String),
}

impl From<SubmitError> for WireError {
    fn from(e: SubmitError) -> Self {
        let message = e.to_string();
        match e {
            SubmitError::InvalidParams { field, .. } => WireError::invalid_field(&field, message),
            SubmitError::DuplicateId(_) => WireError::invalid_field("job_id", message),
            SubmitError::PromptTooLarge(_) => WireError::new(ErrorCode::PromptTooLong, message),
            SubmitError::UnknownModel(_) => WireError::new(ErrorCode::UnknownModel, message),
            SubmitError::QueueFull(_) => WireError::new(ErrorCode::QueueFull, message),
            SubmitError::ModelFailing(_) => WireError::new(ErrorCode::ModelFailing, message),
            SubmitError::NoLeader(_) => WireError::new(ErrorCode::NotLeader, message),
        }
    }
}

/// Checks and accepts a job, places it once (a full queue is refused here), and drives it on the
/// queen's tracked tasks. Returns its owner.
pub async fn submit(queen: &Arc<Queen>, request: JobRequest) -> Result<Arc<Job>, SubmitError> {
    check(queen, &request)?;
    if !queen.leadership.leads() {
        return crate::forward::submit(queen, request).await;
    }
    let job_id = request.job_id.clone().unwrap_or_else(JobId::generate);
    if queen.jobs().get(&job_id).is_some_and(|job| !job.is_claimable()) {
        return Err(SubmitError::DuplicateId(AlreadyExists { job_id }));
    }
    // In the table (owned) before its request is stored: a takeover that starts while the write is
    // under way (a new term after a lost NATS connection) finds the job owned and leaves it alone,
    // and a duplicate id never overwrites the request of the job that holds it.
    let job = queen.jobs().create_or_claim(job_id.clone(), request.model_id.clone(), rbee_bus::now_ms())?;
    // Kept before the submitter hears of the job, so a queen that takes over finds it; written
    // before placement, so nothing waits between the queue's reading and the job joining it.
    let kept = super::requests::put(queen, &job_id, &request).await;
    // The queue as it is before this job joins it (a job just created waits with no reason yet, so
    // it is not counted).
    let queue_len = queen.jobs().queued();
    let prefix = queen.config.prompt_prefix(&request.prompt);
    // Before the first decision: a change of the view from here on re-checks a job left waiting.
    let started = Instant::now();
    let first = dispatch::place(queen, &request.model_id, &[], &prefix, queue_len);
    let refusal = match &first {
        Placement::Refuse { reason } => Some(SubmitError::QueueFull(reason.clone())),
        Placement::Unavailable { reason } => Some(SubmitError::ModelFailing(reason.clone())),
        Placement::Assign { .. }
        | Placement::Spawn { .. }
        | Placement::Evict { .. }
        | Placement::Queue { .. } => None,
    };
    if let Some(refusal) = refusal {
        queen.jobs().fail_unannounced(&job_id, refusal.to_string(), rbee_bus::now_ms());
        queen.metrics.refused();
        if kept {
            super::requests::remove(queen, &job_id).await;
        }
        return Err(refusal);
    }
    queen.metrics.submitted();
    let first = dispatch::Start::Place(first);
    queen
        .tasks
        .spawn("dispatch", dispatch::drive(queen.clone(), job.clone(), request, prefix, first, started));
    Ok(job)
}

pub(crate) fn check(queen: &Queen, request: &JobRequest) -> Result<(), SubmitError> {
    request
        .params
        .validate_for(&request.prompt)
        .map_err(|e| SubmitError::InvalidParams { field: e.field.to_string(), message: e.to_string() })?;
    let size = request.prompt.text_len();
    let limit = queen.config.max_prompt_bytes;
    if size > limit {
        return Err(SubmitError::PromptTooLarge(format!(
            "prompt of {size} bytes is over the {limit} byte limit"
        )));
    }
    if let Prompt::Chat { messages, .. } = &request.prompt {
        if messages.is_empty() {
            return Err(SubmitError::InvalidParams {
                field: "messages".to_owned(),
                message: "messages must not be empty".to_owned(),
            });
        }
    }
    if !queen.model_known(&request.model_id) {
        return Err(SubmitError::UnknownModel(request.model_id.clone()));
    }
    // The text limit counts characters as they are; the assignment on the bus carries them JSON
    // encoded (a control character becomes six bytes), and many small messages add their framing.
    let probe = JobId::generate();
    match rbee_bus::rpc::encode("assignment", &request.assignment(&probe)) {
        Ok(_) => Ok(()),
        Err(BusError::TooLarge { size, limit, .. }) => Err(SubmitError::PromptTooLarge(format!(
            "the job encodes to {size} bytes on the bus, over its {limit} byte message limit"
        ))),
        Err(e) => Err(SubmitError::InvalidParams { field: "prompt".to_owned(), message: e.to_string() }),
    }
}
