//! Embeddings across the cluster, for `POST /v1/embeddings` and `rbee.queen.embed` alike. A request's
//! texts are cut into batches of [`WORKER_EMBED_BATCH`]; each batch is placed by the scheduler as a job
//! is (a worker of the model with a free slot, else a spawn on a hive, else a wait up to the queue
//! timeout) and sent to its worker as a request on `rbee.worker.<id>.embed`. A worker that refuses for
//! its own reasons or does not answer is excluded and the batch tried once elsewhere; a refusal of the
//! input itself (a text too long for the model) is the client's error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rbee_bus::{
    subject, BusError, EmbedReply, EmbedRequest, ErrorCode, ModelId, WireError, WorkerId, MAX_EMBED_INPUTS,
    SCHEMA_VERSION, WORKER_EMBED_BATCH,
};

use crate::jobs::dispatch::{place, wait_for_change, QUEUE_RECHECK};
use crate::jobs::spawns::request_spawn;
use crate::scheduler::Placement;
use crate::Queen;

/// How long a worker has to embed one batch (a long text on a CPU takes seconds).
const EMBED_TIMEOUT: Duration = Duration::from_secs(120);
/// Workers tried per batch.
const MAX_ATTEMPTS: u32 = 2;

/// Why embedding failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EmbedFailure {
    /// The request is malformed or a text cannot be embedded.
    #[error("{message}")]
    Invalid {
        /// The parameter at fault.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No hive serves or can spawn the model.
    #[error("model {0} is not served or spawnable on any hive")]
    UnknownModel(ModelId),
    /// No worker took the batch within the queue timeout.
    #[error("{0}")]
    Unavailable(String),
    /// Workers failed it.
    #[error("{0}")]
    Failed(String),
}

impl From<EmbedFailure> for WireError {
    fn from(e: EmbedFailure) -> Self {
        let message = e.to_string();
        match e {
            EmbedFailure::Invalid { field, .. } => WireError::invalid_field(&field, message),
            EmbedFailure::UnknownModel(_) => WireError::new(ErrorCode::UnknownModel, message),
            EmbedFailure::Unavailable(_) => WireError::new(ErrorCode::QueueFull, message),
            EmbedFailure::Failed(_) => WireError::new(ErrorCode::Internal, message),
        }
    }
}

/// Embeds every text of `request`, in order.
pub async fn embed(queen: &Arc<Queen>, request: EmbedRequest) -> Result<EmbedReply, EmbedFailure> {
    request
        .validate(MAX_EMBED_INPUTS)
        .map_err(|e| EmbedFailure::Invalid { field: e.field.to_owned(), message: e.to_string() })?;
    if !queen.model_known(&request.model_id) {
        return Err(EmbedFailure::UnknownModel(request.model_id));
    }
    if !queen.leadership.leads() {
        return crate::forward::embed(queen, &request).await;
    }
    let model_id = request.model_id;
    let batches = request.inputs.chunks(WORKER_EMBED_BATCH).enumerate().map(|(i, texts)| {
        let model_id = &model_id;
        async move {
            // Errors about a text name its place in the whole request, not in its batch.
            embed_batch(queen, model_id, texts.to_vec()).await.map_err(|e| match e {
                EmbedFailure::Invalid { field, message } => EmbedFailure::Invalid {
                    field,
                    message: format!("{message} (batch from text {})", i * WORKER_EMBED_BATCH),
                },
                other => other,
            })
        }
    });
    let replies = futures::future::try_join_all(batches).await?;
    let mut out = EmbedReply {
        v: SCHEMA_VERSION,
        model_id: model_id.clone(),
        workers: Vec::new(),
        dimensions: replies.first().map_or(0, |r| r.dimensions),
        pooling: replies.first().map(|r| r.pooling.clone()).unwrap_or_default(),
        embeddings: Vec::with_capacity(request.inputs.len()),
        prompt_tokens: 0,
    };
    for reply in replies {
        if reply.dimensions != out.dimensions
            || reply.embeddings.iter().any(|v| v.len() != out.dimensions as usize)
        {
            return Err(EmbedFailure::Failed(format!(
                "workers of {model_id} gave vectors of different lengths ({} and {})",
                out.dimensions, reply.dimensions
            )));
        }
        for worker in reply.workers {
            if !out.workers.contains(&worker) {
                out.workers.push(worker);
            }
        }
        out.embeddings.extend(reply.embeddings);
        out.prompt_tokens = out.prompt_tokens.saturating_add(reply.prompt_tokens);
    }
    Ok(out)
}

/// One batch, placed and retried like a job.
async fn embed_batch(
    queen: &Arc<Queen>,
    model_id: &ModelId,
    inputs: Vec<String>,
) -> Result<EmbedReply, EmbedFailure> {
    let started = Instant::now();
    let mut exclude: Vec<WorkerId> = Vec::new();
    let mut attempts = 0;
    let expected = inputs.len();
    let request = EmbedRequest { v: SCHEMA_VERSION, model_id: model_id.clone(), inputs };
    loop {
        let queued = queen.jobs().queued();
        let decided = Instant::now();
        let placement = place(queen, model_id, &exclude, &[], queued);
        match placement {
            Placement::Assign { worker_id } => {
                attempts += 1;
                queen.keep_alive().job_started(&worker_id, None, Instant::now());
                let reply: Result<EmbedReply, BusError> =
                    queen.bus.request(subject::worker_embed(&worker_id), &request, EMBED_TIMEOUT).await;
                queen.registry().release_slot(&worker_id);
                let why = match reply {
                    Ok(reply) if reply.embeddings.len() == expected => return Ok(reply),
                    Ok(reply) => format!("answered {} vectors for {expected} texts", reply.embeddings.len()),
                    Err(BusError::Remote { error, .. })
                        if matches!(error.code(), ErrorCode::InvalidParams | ErrorCode::BadRequest) =>
                    {
                        let field = error.error.field.clone().unwrap_or_else(|| "input".to_owned());
                        return Err(EmbedFailure::Invalid { field, message: error.error.message });
                    }
                    Err(e) => e.to_string(),
                };
                tracing::warn!(%worker_id, %model_id, reason = %why, "embedding batch failed on a worker");
                if attempts >= MAX_ATTEMPTS {
                    return Err(EmbedFailure::Failed(format!("no worker embedded the texts: {why}")));
                }
                exclude.push(worker_id);
            }
            Placement::Spawn { hive_id, device } => {
                request_spawn(queen, &hive_id, model_id, &device);
                wait_for_change(queen, decided, QUEUE_RECHECK).await;
            }
            Placement::Evict { hive_id, workers, .. } => {
                crate::unload::evict(queen, &hive_id, &workers);
                wait_for_change(queen, decided, QUEUE_RECHECK).await;
            }
            Placement::Unavailable { reason } => return Err(EmbedFailure::Unavailable(reason)),
            Placement::Queue { reason } | Placement::Refuse { reason } => {
                let timeout = queen.config.queue_timeout;
                if started.elapsed() > timeout {
                    return Err(EmbedFailure::Unavailable(format!(
                        "gave up after {timeout:?} waiting: {reason}"
                    )));
                }
                wait_for_change(queen, decided, QUEUE_RECHECK).await;
            }
        }
    }
}
