//! The published contract: which message travels on which subject, who publishes it and its kind.
//! `schemas/index.json` and the JSON Schemas beside it are generated from this module
//! (`make schemas`), and a test fails when they drift apart.

use schemars::{schema_for, JsonSchema};
use serde::Serialize;

use crate::messages::embed::{EmbedReply, EmbedRequest};
use crate::messages::error::WireError;
use crate::messages::heartbeat::{HiveHeartbeat, QueenHello, WorkerHeartbeat};
use crate::messages::hive::{
    DeviceList, ListRequest, ModelList, SpawnReply, SpawnRequest, StopReply, StopRequest, WorkerList,
};
use crate::messages::job::{
    JobAccepted, JobAssignment, JobCancel, JobStatus, SubmitJob, SubmitJobReply, TokenChunk,
};
use crate::messages::lifecycle::WorkerLifecycle;
use crate::messages::models::{
    ModelImportRequest, ModelPullAccepted, ModelPullEvent, ModelPullRequest, ModelRemoveReply,
    ModelRemoveRequest, ModelReply,
};
use crate::subject as s;

/// How a subject is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Fire-and-forget; any number of subscribers.
    Event,
    /// Request/reply: one responder answers with `reply` or a `WireError`.
    Request,
}

/// One row of `schemas/index.json`.
#[derive(Debug, Clone, Serialize)]
pub struct SubjectEntry {
    /// The subject pattern, `*` in place of each id token.
    pub subject: &'static str,
    /// Event or request.
    pub kind: Kind,
    /// Schema (file stem in `schemas/`) of messages published on the subject.
    pub schema: &'static str,
    /// Schema of the successful reply, for requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<&'static str>,
    /// Schema of the error reply, for requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_reply: Option<&'static str>,
    /// Who publishes (or requests).
    pub publishers: &'static [&'static str],
    /// Who subscribes (or answers).
    pub subscribers: &'static [&'static str],
    /// What it is for.
    pub description: &'static str,
}

const fn event(
    subject: &'static str,
    schema: &'static str,
    publishers: &'static [&'static str],
    subscribers: &'static [&'static str],
    description: &'static str,
) -> SubjectEntry {
    SubjectEntry {
        subject,
        kind: Kind::Event,
        schema,
        reply: None,
        error_reply: None,
        publishers,
        subscribers,
        description,
    }
}

const fn request(
    subject: &'static str,
    schema: &'static str,
    reply: &'static str,
    publishers: &'static [&'static str],
    subscribers: &'static [&'static str],
    description: &'static str,
) -> SubjectEntry {
    let entry = event(subject, schema, publishers, subscribers, description);
    SubjectEntry { kind: Kind::Request, reply: Some(reply), error_reply: Some("WireError"), ..entry }
}

/// Every subject of the contract.
pub fn subjects() -> Vec<SubjectEntry> {
    vec![
        event(
            s::HIVE_HEARTBEAT_ALL,
            "HiveHeartbeat",
            &["hive"],
            &["queen", "observers"],
            "hive inventory, workers and models, every interval",
        ),
        event(
            s::WORKER_HEARTBEAT_ALL,
            "WorkerHeartbeat",
            &["worker"],
            &["queen", "observers"],
            "worker state, slots and throughput, every interval",
        ),
        event(
            s::WORKER_LIFECYCLE_ALL,
            "WorkerLifecycle",
            &["hive"],
            &["queen", "observers"],
            "worker process started, exited or failed",
        ),
        request(
            s::HIVE_SPAWN_ALL,
            "SpawnRequest",
            "SpawnReply",
            &["queen"],
            &["hive"],
            "start a worker process",
        ),
        request(
            s::HIVE_STOP_ALL,
            "StopRequest",
            "StopReply",
            &["queen"],
            &["hive"],
            "stop a worker: SIGTERM, then SIGKILL after the deadline",
        ),
        request(
            s::HIVE_WORKERS_ALL,
            "ListRequest",
            "WorkerList",
            &["queen", "cli"],
            &["hive"],
            "list the hive's workers",
        ),
        request(
            s::HIVE_MODELS_ALL,
            "ListRequest",
            "ModelList",
            &["queen", "cli"],
            &["hive"],
            "list the hive's model catalog",
        ),
        request(
            s::HIVE_MODELS_IMPORT_ALL,
            "ModelImportRequest",
            "ModelReply",
            &["queen"],
            &["hive"],
            "copy a GGUF file on the hive's machine into its catalog",
        ),
        request(
            s::HIVE_MODELS_PULL_ALL,
            "ModelPullRequest",
            "ModelPullAccepted",
            &["queen"],
            &["hive"],
            "download a GGUF file into the catalog; progress follows on the pull's subject",
        ),
        event(
            s::HIVE_PULLS_ALL,
            "ModelPullEvent",
            &["hive"],
            &["queen", "observers"],
            "progress of one pull, then done or failed",
        ),
        request(
            s::HIVE_MODELS_REMOVE_ALL,
            "ModelRemoveRequest",
            "ModelRemoveReply",
            &["queen"],
            &["hive"],
            "delete a model no running worker uses",
        ),
        request(
            s::HIVE_DEVICES_ALL,
            "ListRequest",
            "DeviceList",
            &["queen", "cli"],
            &["hive"],
            "list the hive's devices with free memory",
        ),
        request(
            s::WORKER_JOBS_ALL,
            "JobAssignment",
            "JobAccepted",
            &["queen"],
            &["worker"],
            "assign a job to one worker; accepted or refused at once",
        ),
        event(
            s::JOB_TOKENS_ALL,
            "TokenChunk",
            &["worker"],
            &["queen", "clients", "observers"],
            "generated text, in order, coalesced at high rates",
        ),
        event(
            s::JOB_STATUS_ALL,
            "JobStatus",
            &["queen", "worker"],
            &["queen", "clients", "observers"],
            "queued, scheduled, accepted, running, finished",
        ),
        event(
            s::JOB_CANCEL_ALL,
            "JobCancel",
            &["queen", "clients"],
            &["worker"],
            "stop a job within one decode step",
        ),
        request(
            s::QUEEN_JOBS_SUBMIT,
            "SubmitJob",
            "SubmitJobReply",
            &["clients"],
            &["queen"],
            "submit a job over NATS; the reply names its subjects",
        ),
        request(
            s::WORKER_EMBED_ALL,
            "EmbedRequest",
            "EmbedReply",
            &["queen"],
            &["worker"],
            "embed up to 8 texts with the worker's model",
        ),
        request(
            s::QUEEN_EMBED,
            "EmbedRequest",
            "EmbedReply",
            &["clients"],
            &["queen"],
            "embed up to 256 texts; the queen places them on workers of the model",
        ),
        event(s::QUEEN_HELLO, "QueenHello", &["queen"], &["hive", "worker"], "queen started: heartbeat now"),
    ]
}

fn schema<T: JsonSchema>() -> serde_json::Value {
    serde_json::to_value(schema_for!(T)).unwrap_or_default()
}

/// Every message schema, by name (the file stem in `schemas/`).
pub fn schemas() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        ("HiveHeartbeat", schema::<HiveHeartbeat>()),
        ("WorkerHeartbeat", schema::<WorkerHeartbeat>()),
        ("WorkerLifecycle", schema::<WorkerLifecycle>()),
        ("SpawnRequest", schema::<SpawnRequest>()),
        ("SpawnReply", schema::<SpawnReply>()),
        ("StopRequest", schema::<StopRequest>()),
        ("StopReply", schema::<StopReply>()),
        ("ListRequest", schema::<ListRequest>()),
        ("WorkerList", schema::<WorkerList>()),
        ("ModelList", schema::<ModelList>()),
        ("DeviceList", schema::<DeviceList>()),
        ("ModelImportRequest", schema::<ModelImportRequest>()),
        ("ModelReply", schema::<ModelReply>()),
        ("ModelPullRequest", schema::<ModelPullRequest>()),
        ("ModelPullAccepted", schema::<ModelPullAccepted>()),
        ("ModelPullEvent", schema::<ModelPullEvent>()),
        ("ModelRemoveRequest", schema::<ModelRemoveRequest>()),
        ("ModelRemoveReply", schema::<ModelRemoveReply>()),
        ("JobAssignment", schema::<JobAssignment>()),
        ("JobAccepted", schema::<JobAccepted>()),
        ("TokenChunk", schema::<TokenChunk>()),
        ("JobStatus", schema::<JobStatus>()),
        ("JobCancel", schema::<JobCancel>()),
        ("SubmitJob", schema::<SubmitJob>()),
        ("SubmitJobReply", schema::<SubmitJobReply>()),
        ("EmbedRequest", schema::<EmbedRequest>()),
        ("EmbedReply", schema::<EmbedReply>()),
        ("QueenHello", schema::<QueenHello>()),
        ("LeaderLease", schema::<crate::LeaderLease>()),
        ("WireError", schema::<WireError>()),
    ]
}

/// The content of `schemas/index.json`.
pub fn index() -> serde_json::Value {
    serde_json::json!({
        "schema_version": crate::SCHEMA_VERSION,
        "subjects": subjects(),
    })
}
