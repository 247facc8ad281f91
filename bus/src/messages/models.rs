//! A hive's model catalog over the bus: import a file that is on the hive's machine, pull one from a
//! URL (progress published as events while it downloads), and remove one. Listing is
//! `rbee.hive.<hive_id>.models` ([`crate::ListRequest`] → [`crate::ModelList`]).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{HiveId, ModelId, PullId};
use crate::messages::error::ErrorBody;
use crate::messages::hive::ModelSummary;
use crate::messages::EventMeta;

/// Asks a hive on `rbee.hive.<hive_id>.models.import` to copy a GGUF file that lies on the hive's
/// machine into its catalog. Answered with [`ModelReply`] once the copy is checked and stored, or a wire
/// error (`bad_request` for a file that is missing or not GGUF, `conflict` for an id already stored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelImportRequest {
    /// Schema version.
    pub v: u32,
    /// Absolute path of the file on the hive's machine.
    pub path: String,
    /// The id to store it as; derived from the file name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<ModelId>,
}

/// A model now in the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelReply {
    /// Schema version.
    pub v: u32,
    /// What the catalog recorded.
    pub model: ModelSummary,
    /// Its sha256, lowercase hex.
    pub sha256: String,
}

/// Asks a hive on `rbee.hive.<hive_id>.models.pull` to download a GGUF file into its catalog. The hive
/// answers at once with [`ModelPullAccepted`] (or a wire error), then publishes [`ModelPullEvent`]s on
/// `rbee.hive.<hive_id>.pulls.<pull_id>` until `done` or `failed`: subscribe there before asking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelPullRequest {
    /// Schema version.
    pub v: u32,
    /// Chosen by the requester; names the progress subject.
    pub pull_id: PullId,
    /// `http://` or `https://` URL of the file, or a Hugging Face style hub reference that the hive
    /// resolves: `hf:ORG/REPO/FILE.gguf`, `hf:ORG/REPO:QUANT` or `hf:ORG/REPO`.
    pub url: String,
    /// The id to store it as; derived from the URL's file name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<ModelId>,
    /// Expected sha256 (64 hex digits); the file is refused when it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// The hive took a pull on: progress follows on `rbee.hive.<hive_id>.pulls.<pull_id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelPullAccepted {
    /// Schema version.
    pub v: u32,
    /// The pull.
    pub pull_id: PullId,
    /// The id the model will have.
    pub model_id: ModelId,
}

/// Where a pull stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PullProgress {
    /// Bytes arrived (published at most every 250 ms).
    Progress {
        /// Bytes on disk so far, a resumed part included.
        downloaded: u64,
        /// Size of the file, when the server said.
        total: Option<u64>,
    },
    /// Stored in the catalog: the last event of a pull.
    Done {
        /// What the catalog recorded.
        model: ModelSummary,
    },
    /// Gave up; nothing entered the catalog: the last event of a pull.
    Failed {
        /// Why.
        error: ErrorBody,
    },
}

/// Progress of one pull, on `rbee.hive.<hive_id>.pulls.<pull_id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelPullEvent {
    /// Schema version.
    pub v: u32,
    /// Publisher, epoch, sequence and time.
    pub meta: EventMeta,
    /// The hive downloading.
    pub hive_id: HiveId,
    /// The pull.
    pub pull_id: PullId,
    /// The model being pulled.
    pub model_id: ModelId,
    /// Where it stands.
    #[serde(flatten)]
    pub progress: PullProgress,
}

/// Asks a hive on `rbee.hive.<hive_id>.models.remove` to delete a model and its file. Refused with
/// `conflict` while a running worker of that hive uses it, `unknown_model` when it is not there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelRemoveRequest {
    /// Schema version.
    pub v: u32,
    /// The model.
    pub model_id: ModelId,
}

/// The model is gone from the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelRemoveReply {
    /// Schema version.
    pub v: u32,
    /// The model.
    pub model_id: ModelId,
    /// Bytes of disk given back.
    pub freed_bytes: u64,
}
