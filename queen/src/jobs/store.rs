//! Job history that survives a queen restart: a JetStream stream keeps every `rbee.job.*.status`
//! event, bounded by count, age, bytes and message size ([`stream_config`]); a starting queen replays
//! it into the job registry as it reads it ([`replay`], a batch at a time, never the whole stream in
//! memory) and says whether it read everything ([`ReplayReport`], in `GET /health`).

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::{Stream, StreamExt};
use rbee_bus::JobStatus;
use serde::Serialize;

use crate::Queen;

/// Name of the stream.
pub const STREAM: &str = rbee_bus::subject::JOBS_STREAM;

/// Status events folded into the job table per lock.
const REPLAY_BATCH: usize = 256;

/// How long replay waits for the next message before it calls the history partial.
const REPLAY_IDLE: Duration = Duration::from_secs(5);

/// What a replay read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Status events taken into the job table.
    pub events: usize,
    /// Messages in the stream that were not a status event this queen can read (skipped).
    pub unreadable: usize,
    /// The stream's last sequence when replay began.
    pub last_sequence: u64,
    /// The last sequence read.
    pub read_to: u64,
    /// True when replay read up to `last_sequence`.
    pub complete: bool,
    /// Why replay stopped early, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The stream's configuration from the queen's: every status subject, at most `max_finished_jobs`
/// x 8 events (at least 1,000), `finished_job_ttl` old, `job_history_max_bytes` in all, and no
/// message over the bus limit. The oldest events go first.
pub fn stream_config(config: &crate::QueenConfig) -> stream::Config {
    stream::Config {
        name: STREAM.to_owned(),
        subjects: vec![rbee_bus::subject::JOB_STATUS_ALL.to_owned()],
        max_messages: (config.max_finished_jobs as i64).saturating_mul(8).max(1000),
        max_bytes: i64::try_from(config.job_history_max_bytes).unwrap_or(i64::MAX),
        max_message_size: rbee_bus::rpc::MAX_MESSAGE_BYTES as i32,
        max_age: config.finished_job_ttl,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    }
}

/// Creates (or updates) the stream and replays what it holds into the job registry.
pub async fn replay(queen: &Queen) -> anyhow::Result<ReplayReport> {
    let js = jetstream::new(queen.bus.client().clone());
    let config = stream_config(&queen.config);
    let mut stream = match js.get_stream(STREAM).await {
        Ok(existing) => {
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
        return Ok(ReplayReport { complete: true, ..ReplayReport::default() });
    }
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("cannot create replay consumer: {e}"))?;
    let messages = consumer.messages().await.map_err(|e| anyhow::anyhow!("replay: {e}"))?.map(|next| {
        next.map(|msg| {
            let seq = msg.info().map(|i| i.stream_sequence).ok();
            (seq, rbee_bus::rpc::decode::<JobStatus>(&msg.subject, &msg.payload).ok())
        })
        .map_err(|e| e.to_string())
    });
    Ok(fold(messages, last, REPLAY_IDLE, |batch| queen.jobs().replay(batch.iter(), rbee_bus::now_ms())).await)
}

/// Reads `(sequence, status)` pairs until sequence `last`, handing them to `apply` a batch at a
/// time. A read error, the end of the messages or `idle` without one ends the replay early, and the
/// report says so.
async fn fold<S, E>(
    messages: S,
    last: u64,
    idle: Duration,
    mut apply: impl FnMut(&[JobStatus]) -> usize,
) -> ReplayReport
where
    S: Stream<Item = Result<(Option<u64>, Option<JobStatus>), E>>,
    E: std::fmt::Display,
{
    let mut report = ReplayReport { last_sequence: last, ..ReplayReport::default() };
    let mut batch = Vec::with_capacity(REPLAY_BATCH);
    let mut messages = std::pin::pin!(messages);
    while report.read_to < last {
        match tokio::time::timeout(idle, messages.next()).await {
            Ok(Some(Ok((seq, status)))) => {
                report.read_to = seq.unwrap_or(report.read_to + 1);
                match status {
                    Some(status) => batch.push(status),
                    None => report.unreadable += 1,
                }
                if batch.len() >= REPLAY_BATCH {
                    report.events += apply(&batch);
                    batch.clear();
                }
            }
            Ok(Some(Err(e))) => {
                report.error =
                    Some(format!("reading the stream failed after sequence {}: {e}", report.read_to));
                break;
            }
            Ok(None) => {
                report.error = Some(format!("the stream ended at sequence {}", report.read_to));
                break;
            }
            Err(_) => {
                report.error =
                    Some(format!("no message for {} s after sequence {}", idle.as_secs(), report.read_to));
                break;
            }
        }
    }
    if !batch.is_empty() {
        report.events += apply(&batch);
    }
    report.complete = report.error.is_none();
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbee_bus::{EventMeta, JobId, JobState, ModelId};

    fn status(i: u64) -> JobStatus {
        JobStatus {
            v: rbee_bus::SCHEMA_VERSION,
            meta: EventMeta { publisher: "queen".into(), epoch: "e".into(), seq: i, sent_at_ms: 1_000 + i },
            job_id: JobId::generate(),
            model_id: Some("m".parse::<ModelId>().expect("id")),
            state: JobState::Queued { reason: "test".into() },
            attempt: 0,
            attempt_key: None,
        }
    }

    #[tokio::test]
    async fn replay_folds_in_batches_and_reports_a_read_error_as_partial() {
        let total = REPLAY_BATCH as u64 * 2 + 10;
        let broken_at = REPLAY_BATCH as u64 + 5;
        let items = (1..=total).map(move |seq| {
            if seq == broken_at {
                Err("consumer heartbeat missed")
            } else {
                Ok((Some(seq), Some(status(seq))))
            }
        });
        let mut batches = Vec::new();
        let report = fold(futures::stream::iter(items), total, Duration::from_secs(1), |b| {
            batches.push(b.len());
            b.len()
        })
        .await;
        assert!(!report.complete);
        assert_eq!(report.events, broken_at as usize - 1, "everything before the error is kept");
        assert_eq!(report.read_to, broken_at - 1);
        assert!(
            report.error.as_deref().is_some_and(|e| e.contains("consumer heartbeat missed")),
            "{report:?}"
        );
        assert!(batches.iter().all(|&n| n <= REPLAY_BATCH), "{batches:?}");
    }

    #[tokio::test]
    async fn replay_to_the_last_sequence_is_complete_and_counts_unreadable_messages() {
        let items = (1..=5u64)
            .map(|seq| Ok::<_, String>((Some(seq), (seq != 3).then(|| status(seq)))))
            .chain(std::iter::once(Ok((Some(6), Some(status(6))))));
        let report = fold(futures::stream::iter(items), 5, Duration::from_secs(1), |b| b.len()).await;
        assert!(report.complete, "{report:?}");
        assert_eq!((report.events, report.unreadable, report.read_to), (4, 1, 5));
    }

    #[tokio::test]
    async fn a_stream_that_stops_short_is_partial() {
        let items = (1..=3u64).map(|seq| Ok::<_, String>((Some(seq), Some(status(seq)))));
        let report = fold(futures::stream::iter(items), 10, Duration::from_secs(1), |b| b.len()).await;
        assert!(!report.complete);
        assert_eq!(report.events, 3);
        let stalled =
            fold(futures::stream::pending::<Result<_, String>>(), 10, Duration::from_millis(50), |b| b.len())
                .await;
        assert!(stalled.error.as_deref().is_some_and(|e| e.contains("no message")), "{stalled:?}");
    }
}
