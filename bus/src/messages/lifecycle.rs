//! Worker lifecycle events, published by the hive that supervises the worker.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{HiveId, ModelId, WorkerId};
use crate::messages::EventMeta;

/// What happened to the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LifecycleEvent {
    /// The process started.
    Started {
        /// Its pid.
        pid: u32,
    },
    /// The process exited after a stop request.
    Exited {
        /// Exit status as text.
        exit: String,
    },
    /// The process exited on its own or was killed.
    Failed {
        /// Exit status as text.
        exit: String,
        /// The last lines of its stderr.
        stderr_tail: Vec<String>,
    },
}

/// Published on `rbee.worker.<worker_id>.lifecycle`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerLifecycle {
    /// Schema version.
    pub v: u32,
    /// Publisher, epoch, sequence and send time.
    pub meta: EventMeta,
    /// The hive.
    pub hive_id: HiveId,
    /// The worker.
    pub worker_id: WorkerId,
    /// Its model.
    pub model_id: ModelId,
    /// What happened.
    #[serde(flatten)]
    pub event: LifecycleEvent,
}
