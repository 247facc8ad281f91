//! The rbee bus contract. This crate is the only place where NATS subjects and the messages that travel
//! on them are defined: typed ids ([`ids`]), subject builders and wildcards ([`subject`]), one Rust type
//! per message ([`messages`]), and typed publish/request helpers with errors by kind ([`rpc`],
//! [`connect`]), plus the facts every process shares about them: how big a worker is ([`sizing`])
//! and who may use which subject ([`security`]). Third parties read the same contract as JSON
//! Schemas in `schemas/`.

pub mod connect;
pub mod contract;
pub mod ids;
pub mod messages;
pub mod prefix;
pub mod rpc;
pub mod schema_lint;
pub mod security;
pub mod sizing;
pub mod subject;

pub use connect::{connect, NatsConfig};
pub use ids::{HiveId, IdError, JobId, ModelId, PullId, QueenId, WorkerId};
pub use messages::embed::{
    EmbedReply, EmbedRequest, MAX_EMBED_INPUTS, MAX_EMBED_INPUT_BYTES, WORKER_EMBED_BATCH,
};
pub use messages::error::{ErrorBody, ErrorCode, WireError};
pub use messages::heartbeat::{
    Backend, HiveHeartbeat, HiveState, QueenHello, WorkerHeartbeat, WorkerState,
    DEFAULT_HEARTBEAT_INTERVAL_MS,
};
pub use messages::hive::{
    CpuInfo, DeviceInfo, DeviceKind, DeviceList, HiveWorkerStatus, HiveWorkerSummary, ListRequest,
    LoadFailures, MemoryInfo, ModelList, ModelSummary, SpawnReply, SpawnRequest, StopReply, StopRequest,
    WorkerKind, WorkerList,
};
pub use messages::job::{
    new_attempt_key, ChatMessage, FinishReason, JobAccepted, JobAssignment, JobCancel, JobState, JobStatus,
    LogitBias, ParamError, Prompt, ResponseFormat, Resume, SamplingParams, SubmitJob, SubmitJobReply,
    TokenChunk, TokenLogprob, ToolCall, ToolCallChunk, ToolChoice, ToolDef, TopLogprob, Usage,
};
pub use messages::leader::LeaderLease;
pub use messages::lifecycle::{LifecycleEvent, WorkerLifecycle};
pub use messages::models::{
    ModelImportRequest, ModelPullAccepted, ModelPullEvent, ModelPullRequest, ModelRemoveReply,
    ModelRemoveRequest, ModelReply, PullProgress,
};
pub use messages::{now_ms, EventMeta, EventStamper, SCHEMA_VERSION};
pub use rpc::{Bus, BusError};
pub use sizing::{worker_memory_bytes, DEFAULT_CTX_PER_SLOT, DEFAULT_SLOTS};
