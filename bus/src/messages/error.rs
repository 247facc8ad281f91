//! The wire error: what a responder sends instead of its typed reply.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::messages::SCHEMA_VERSION;

/// Stable error codes. Clients match on these, never on the message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request could not be decoded.
    BadRequest,
    /// A parameter is out of range; `field` names it.
    InvalidParams,
    /// No such model.
    UnknownModel,
    /// The worker serves another model.
    WrongModel,
    /// Every slot of the worker is busy; try another worker or later.
    NoFreeSlot,
    /// The prompt does not fit the context.
    PromptTooLong,
    /// The model does not fit the device's free memory.
    ModelDoesNotFit,
    /// No worker binary of the asked type for this platform.
    MissingWorkerBinary,
    /// No such device.
    UnknownDevice,
    /// No such worker or job.
    NotFound,
    /// The queue is full; retry later.
    QueueFull,
    /// The responder is shutting down.
    ShuttingDown,
    /// Something failed inside the responder.
    Internal,
    /// The request clashes with what is there: an id already stored, a download of it already running,
    /// a model a running worker still uses.
    Conflict,
    /// The model's workers keep failing to load on this hive: it waits before the next try, or refuses
    /// the model until its file is imported or pulled again.
    ModelFailing,
    /// An order from a queen that no longer leads: its fence is below the highest one seen.
    Fenced,
    /// The queen answering is a standby: only the leader does this (the message names it).
    NotLeader,
}

impl ErrorCode {
    /// The snake_case name used on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidParams => "invalid_params",
            ErrorCode::UnknownModel => "unknown_model",
            ErrorCode::WrongModel => "wrong_model",
            ErrorCode::NoFreeSlot => "no_free_slot",
            ErrorCode::PromptTooLong => "prompt_too_long",
            ErrorCode::ModelDoesNotFit => "model_does_not_fit",
            ErrorCode::MissingWorkerBinary => "missing_worker_binary",
            ErrorCode::UnknownDevice => "unknown_device",
            ErrorCode::NotFound => "not_found",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
            ErrorCode::Conflict => "conflict",
            ErrorCode::ModelFailing => "model_failing",
            ErrorCode::Fenced => "fenced",
            ErrorCode::NotLeader => "not_leader",
        }
    }
}

/// The body of a wire error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    /// Stable code.
    pub code: ErrorCode,
    /// For a person.
    pub message: String,
    /// The offending field, for `invalid_params`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An error reply: `{"v":1,"error":{"code":"...","message":"..."}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, thiserror::Error)]
#[error("{} ({})", error.message, error.code.as_str())]
pub struct WireError {
    /// Schema version.
    pub v: u32,
    /// What went wrong.
    pub error: ErrorBody,
}

impl WireError {
    /// A wire error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { v: SCHEMA_VERSION, error: ErrorBody { code, message: message.into(), field: None } }
    }

    /// An `invalid_params` error naming the field.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new(ErrorCode::InvalidParams, message);
        e.error.field = Some(field.to_owned());
        e
    }

    /// The code.
    pub fn code(&self) -> ErrorCode {
        self.error.code
    }
}

impl From<crate::messages::job::ParamError> for WireError {
    fn from(e: crate::messages::job::ParamError) -> Self {
        WireError::invalid_field(e.field, e.to_string())
    }
}
