//! NATS-native requests to the queen, served through the NATS service API (`rbee-queen`): job
//! submission (`rbee.queen.jobs.submit` takes the same job as `POST /v1/jobs` and answers with its id
//! and subjects, so a NATS client can submit and read the tokens itself) and embeddings
//! (`rbee.queen.embed`, the same as `POST /v1/embeddings`, answered with the vectors).

use std::sync::Arc;

use futures::StreamExt;
use rbee_bus::{
    subject, EmbedReply, EmbedRequest, ErrorCode, SubmitJob, SubmitJobReply, WireError, SCHEMA_VERSION,
};
use rbee_daemon::Tasks;
use tokio_util::sync::CancellationToken;

use crate::jobs::admit::{self, JobRequest};
use crate::Queen;

/// Serves submissions on `tasks` until `stop`.
pub async fn serve(queen: Arc<Queen>, tasks: &Tasks, stop: CancellationToken) -> anyhow::Result<()> {
    use async_nats::service::ServiceExt;
    let service = queen
        .bus
        .client()
        .service_builder()
        .description("rbee queen: job submission")
        .start("rbee-queen", env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| anyhow::anyhow!("cannot register with the nats service api: {e}"))?;
    let mut endpoint = service
        .endpoint_builder()
        .name("submit")
        .add(subject::QUEEN_JOBS_SUBMIT)
        .await
        .map_err(|e| anyhow::anyhow!("cannot subscribe to {}: {e}", subject::QUEEN_JOBS_SUBMIT))?;
    let mut embed_endpoint = service
        .endpoint_builder()
        .name("embed")
        .add(subject::QUEEN_EMBED)
        .await
        .map_err(|e| anyhow::anyhow!("cannot subscribe to {}: {e}", subject::QUEEN_EMBED))?;
    let (embed_queen, embed_handlers, embed_stop) = (queen.clone(), tasks.clone(), stop.clone());
    tasks.spawn("embed endpoint", async move {
        loop {
            let request = tokio::select! {
                _ = embed_stop.cancelled() => break,
                r = embed_endpoint.next() => match r { Some(r) => r, None => break },
            };
            let queen = embed_queen.clone();
            embed_handlers.spawn("embed", async move {
                let reply = embed(&queen, &request.message.payload);
                let _ = rbee_bus::rpc::respond_guarded(&request, "embed request", reply).await;
            });
        }
    });
    let handlers = tasks.clone();
    tasks.spawn("submit endpoint", async move {
        loop {
            let request = tokio::select! {
                _ = stop.cancelled() => break,
                r = endpoint.next() => match r { Some(r) => r, None => break },
            };
            let queen = queen.clone();
            handlers.spawn("submit", async move {
                let submission = handle(&queen, &request.message.payload);
                let _ = rbee_bus::rpc::respond_guarded(&request, "job submission", submission).await;
            });
        }
        let _ = service.stop().await;
    });
    Ok(())
}

async fn handle(queen: &Arc<Queen>, payload: &[u8]) -> Result<SubmitJobReply, WireError> {
    let submit: SubmitJob = rbee_bus::rpc::decode(subject::QUEEN_JOBS_SUBMIT, payload).map_err(|e| {
        queen.metrics.rejected_message();
        WireError::new(ErrorCode::BadRequest, e.to_string())
    })?;
    let request = JobRequest {
        model_id: submit.model_id,
        prompt: submit.prompt,
        params: submit.params,
        deadline_ms: submit.deadline_ms,
        job_id: submit.job_id,
    };
    let job = admit::submit(queen, request).await?;
    let job_id = job.job_id.clone();
    Ok(SubmitJobReply {
        v: SCHEMA_VERSION,
        tokens_subject: subject::job_tokens(&job_id),
        status_subject: subject::job_status(&job_id),
        job_id,
    })
}

async fn embed(queen: &Arc<Queen>, payload: &[u8]) -> Result<EmbedReply, WireError> {
    let request: EmbedRequest = rbee_bus::rpc::decode(subject::QUEEN_EMBED, payload).map_err(|e| {
        queen.metrics.rejected_message();
        WireError::new(ErrorCode::BadRequest, e.to_string())
    })?;
    Ok(crate::embed::embed(queen, request).await?)
}
