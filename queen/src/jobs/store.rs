//! Job history that survives a queen restart: a JetStream stream keeps every `rbee.job.*.status`
//! event (bounded by count and age); a starting queen replays it into the job registry.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use rbee_bus::JobStatus;

use crate::Queen;

/// Name of the stream.
pub const STREAM: &str = rbee_bus::subject::JOBS_STREAM;

/// Creates (or updates) the stream and replays what it holds into the job registry. Returns the
/// number of status events replayed.
pub async fn replay(queen: &Queen) -> anyhow::Result<usize> {
    let js = jetstream::new(queen.bus.client().clone());
    let config = stream::Config {
        name: STREAM.to_owned(),
        subjects: vec![rbee_bus::subject::JOB_STATUS_ALL.to_owned()],
        max_messages: (queen.config.max_finished_jobs as i64).saturating_mul(8).max(1000),
        max_age: queen.config.finished_job_ttl,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    };
    let mut stream = match js.get_stream(STREAM).await {
        Ok(mut existing) => {
            let _ = existing.info().await;
            js.update_stream(config)
                .await
                .map_err(|e| anyhow::anyhow!("cannot update stream {STREAM}: {e}"))?;
            existing
        }
        Err(_) => js
            .create_stream(config)
            .await
            .map_err(|e| anyhow::anyhow!("cannot create stream {STREAM}: {e}"))?,
    };
    let last = stream.info().await.map_err(|e| anyhow::anyhow!("stream info: {e}"))?.state.last_sequence;
    if last == 0 {
        return Ok(0);
    }
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("cannot create replay consumer: {e}"))?;
    let mut messages = consumer.messages().await.map_err(|e| anyhow::anyhow!("replay: {e}"))?;
    let mut statuses = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
        let Ok(Some(Ok(msg))) = next else { break };
        let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(last);
        if let Ok(status) = rbee_bus::rpc::decode::<JobStatus>(&msg.subject, &msg.payload) {
            statuses.push(status);
        }
        if seq >= last {
            break;
        }
    }
    let n = queen.jobs().replay(statuses.iter(), rbee_bus::now_ms());
    Ok(n)
}
