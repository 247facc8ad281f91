//! Embedding requests on `rbee.worker.<id>.embed`: decoded, checked against this worker's model and
//! the per-request limit, and answered with the engine's vectors. Served one at a time (the engine has
//! one embedding context); a malformed or refused request gets a clear error and the loop goes on.

use std::sync::Arc;

use futures::StreamExt;
use rbee_bus::{subject, EmbedReply, EmbedRequest, ErrorCode, WireError, SCHEMA_VERSION, WORKER_EMBED_BATCH};
use tokio_util::sync::CancellationToken;

use crate::engine::{EmbedError, Engine};
use crate::WorkerShared;

/// Answers embedding requests until `stop`.
pub async fn serve(
    shared: Arc<WorkerShared>,
    engine: Engine,
    mut requests: async_nats::service::endpoint::Endpoint,
    stop: CancellationToken,
) {
    loop {
        let request = tokio::select! {
            _ = stop.cancelled() => return,
            request = requests.next() => match request { Some(r) => r, None => return },
        };
        let _ = rbee_bus::rpc::respond_guarded(
            &request,
            "embed request",
            handle(&shared, &engine, &request.message.payload),
        )
        .await;
    }
}

async fn handle(shared: &WorkerShared, engine: &Engine, payload: &[u8]) -> Result<EmbedReply, WireError> {
    let worker_id = &shared.config.worker_id;
    let request: EmbedRequest =
        rbee_bus::rpc::decode(&subject::worker_embed(worker_id), payload).map_err(|e| {
            tracing::warn!(error = %e, "malformed embed request refused");
            WireError::new(ErrorCode::BadRequest, e.to_string())
        })?;
    if shared.draining() {
        return Err(WireError::new(ErrorCode::ShuttingDown, "worker is draining"));
    }
    if request.model_id != shared.config.model_id {
        return Err(WireError::new(
            ErrorCode::WrongModel,
            format!("this worker serves {}, not {}", shared.config.model_id, request.model_id),
        ));
    }
    request.validate(WORKER_EMBED_BATCH).map_err(|e| WireError::invalid_field(e.field, e.to_string()))?;
    let texts = request.inputs.len();
    let started = std::time::Instant::now();
    let out = engine.embed(request.inputs).await.map_err(|e| match &e {
        EmbedError::Input { .. } => WireError::invalid_field("input", e.to_string()),
        EmbedError::ShutDown => WireError::new(ErrorCode::ShuttingDown, e.to_string()),
        EmbedError::Engine(_) => WireError::new(ErrorCode::Internal, e.to_string()),
    })?;
    tracing::debug!(texts, tokens = out.prompt_tokens, ms = started.elapsed().as_millis() as u64, "embedded");
    Ok(EmbedReply {
        v: SCHEMA_VERSION,
        model_id: request.model_id,
        workers: vec![worker_id.clone()],
        dimensions: out.dimensions,
        pooling: out.pooling.to_owned(),
        embeddings: out.vectors,
        prompt_tokens: out.prompt_tokens,
    })
}
