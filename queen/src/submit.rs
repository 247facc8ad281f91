//! NATS-native requests to the queen, served through the NATS service API (`rbee-queen`): job
//! submission (`rbee.queen.jobs.submit` takes the same job as `POST /v1/jobs` and answers with its id
//! and subjects, so a NATS client can submit and read the tokens itself) and embeddings
//! (`rbee.queen.embed`, the same as `POST /v1/embeddings`, answered with the vectors).

use std::sync::Arc;

use async_nats::service::endpoint::Endpoint;
use bytes::Bytes;
use futures::StreamExt;
use rbee_bus::{
    subject, EmbedReply, EmbedRequest, ErrorCode, SubmitJob, SubmitJobReply, WireError, SCHEMA_VERSION,
};
use rbee_daemon::service::endpoint;
use rbee_daemon::Tasks;
use tokio_util::sync::CancellationToken;

use crate::jobs::admit::{self, JobRequest};
use crate::Queen;

/// Serves submissions and embedding requests on `tasks` until `stop`.
pub async fn serve(queen: Arc<Queen>, tasks: &Tasks, stop: CancellationToken) -> anyhow::Result<()> {
    use async_nats::service::ServiceExt;
    let service = queen
        .bus
        .client()
        .service_builder()
        .description("rbee queen: job submission and embeddings")
        .start("rbee-queen", env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| anyhow::anyhow!("cannot register with the nats service api: {e}"))?;
    let submits = endpoint(&service, "submit", subject::QUEEN_JOBS_SUBMIT.to_owned()).await?;
    let embeds = endpoint(&service, "embed", subject::QUEEN_EMBED.to_owned()).await?;
    let answer_submits =
        answer(queen.clone(), tasks.clone(), stop.clone(), submits, "job submission", handle);
    tasks.spawn("submit endpoint", answer_submits);
    tasks.spawn("embed endpoint", answer(queen, tasks.clone(), stop.clone(), embeds, "embed request", embed));
    tasks.spawn("queen service", async move {
        stop.cancelled().await;
        let _ = service.stop().await;
    });
    Ok(())
}

/// Answers each request on `endpoint` with `handler`, on a task of its own and through
/// `respond_guarded` (a panic is an `internal` reply), until `stop`.
async fn answer<T, Fut>(
    queen: Arc<Queen>,
    tasks: Tasks,
    stop: CancellationToken,
    mut endpoint: Endpoint,
    what: &'static str,
    handler: fn(Arc<Queen>, Bytes) -> Fut,
) where
    T: serde::Serialize + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<T, WireError>> + Send + 'static,
{
    loop {
        let request = tokio::select! {
            _ = stop.cancelled() => break,
            r = endpoint.next() => match r { Some(r) => r, None => break },
        };
        let reply = handler(queen.clone(), request.message.payload.clone());
        tasks.spawn(what, async move {
            let _ = rbee_bus::rpc::respond_guarded(&request, what, reply).await;
        });
    }
}

async fn handle(queen: Arc<Queen>, payload: Bytes) -> Result<SubmitJobReply, WireError> {
    let submit: SubmitJob = rbee_bus::rpc::decode(subject::QUEEN_JOBS_SUBMIT, &payload).map_err(|e| {
        queen.metrics.rejected_message();
        WireError::new(ErrorCode::BadRequest, e.to_string())
    })?;
    let request = JobRequest {
        model_id: submit.model_id,
        prompt: submit.prompt,
        params: submit.params,
        deadline_ms: submit.deadline_ms,
        job_id: submit.job_id,
        keep_alive: None,
    };
    let job = admit::submit(&queen, request).await?;
    let job_id = job.job_id.clone();
    Ok(SubmitJobReply {
        v: SCHEMA_VERSION,
        tokens_subject: subject::job_tokens(&job_id),
        status_subject: subject::job_status(&job_id),
        job_id,
    })
}

async fn embed(queen: Arc<Queen>, payload: Bytes) -> Result<EmbedReply, WireError> {
    let request: EmbedRequest = rbee_bus::rpc::decode(subject::QUEEN_EMBED, &payload).map_err(|e| {
        queen.metrics.rejected_message();
        WireError::new(ErrorCode::BadRequest, e.to_string())
    })?;
    Ok(crate::embed::embed(&queen, request).await?)
}
