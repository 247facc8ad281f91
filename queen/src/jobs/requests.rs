//! The requests of jobs not yet ended, kept in the JetStream KV bucket
//! [`subject::JOB_REQUESTS_BUCKET`] (a [`SubmitJob`] by job id) while a leader lease is in use: the
//! leader stores a job's request before it answers the submission and deletes it when the job ends,
//! so the queen that takes over can place what was queued and move what was running
//! ([`crate::leader::takeover`]). Entries expire after [`KEPT_FOR`] whatever happens. The prompts
//! are on the NATS server's disk for that time; `--no-durable-jobs` keeps nothing.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use rbee_bus::{subject, JobId, SubmitJob, SCHEMA_VERSION};

use super::admit::JobRequest;
use crate::keep_alive::KeepAlive;
use crate::Queen;

/// Longest a request is kept, ended or not.
pub const KEPT_FOR: Duration = Duration::from_secs(24 * 3600);

/// How long one write may take before the submission goes on without it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Opens (or creates) the bucket; `None` when JetStream cannot.
pub async fn open(queen: &Queen) -> Option<kv::Store> {
    let js = jetstream::new(queen.bus.client().clone());
    if let Ok(store) = js.get_key_value(subject::JOB_REQUESTS_BUCKET).await {
        return Some(store);
    }
    let config = kv::Config {
        bucket: subject::JOB_REQUESTS_BUCKET.to_owned(),
        description: "rbee: requests of jobs not yet ended (SubmitJob by job id)".to_owned(),
        history: 1,
        max_age: KEPT_FOR,
        max_value_size: rbee_bus::rpc::MAX_MESSAGE_BYTES as i32,
        max_bytes: i64::try_from(queen.config.job_history_max_bytes).unwrap_or(i64::MAX),
        storage: jetstream::stream::StorageType::File,
        num_replicas: queen.config.lease_replicas,
        ..Default::default()
    };
    let replicas = config.num_replicas;
    let created = match js.create_key_value(config.clone()).await {
        Err(e) if replicas > 1 => {
            tracing::warn!(error = %e, "job requests with one replica until more jetstream nodes join");
            js.create_key_value(kv::Config { num_replicas: 1, ..config }).await
        }
        other => other,
    };
    match created {
        Ok(store) => Some(store),
        Err(e) => {
            tracing::warn!(error = %e, "job requests not kept (jetstream kv unavailable): no takeover of queued jobs");
            None
        }
    }
}

/// The request as stored.
pub fn to_wire(job_id: &JobId, request: &JobRequest) -> SubmitJob {
    SubmitJob {
        v: SCHEMA_VERSION,
        model_id: request.model_id.clone(),
        prompt: request.prompt.clone(),
        params: request.params.clone(),
        job_id: Some(job_id.clone()),
        deadline_ms: request.deadline_ms,
        keep_alive_ms: request.keep_alive.map(keep_alive_ms),
    }
}

/// A stored or forwarded request as the queen takes it.
pub fn from_wire(submit: SubmitJob) -> JobRequest {
    JobRequest {
        model_id: submit.model_id,
        prompt: submit.prompt,
        params: submit.params,
        deadline_ms: submit.deadline_ms,
        job_id: submit.job_id,
        keep_alive: submit.keep_alive_ms.map(|ms| {
            if ms < 0 {
                KeepAlive::Forever
            } else {
                KeepAlive::For(Duration::from_millis(ms as u64))
            }
        }),
    }
}

fn keep_alive_ms(k: KeepAlive) -> i64 {
    match k {
        KeepAlive::Forever => -1,
        KeepAlive::For(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
    }
}

/// Stores a job's request; false when it could not (the job runs, but a queen that takes over
/// cannot place it again).
pub async fn put(queen: &Queen, job_id: &JobId, request: &JobRequest) -> bool {
    let Some(store) = queen.requests.get() else { return false };
    let Ok(body) = serde_json::to_vec(&to_wire(job_id, request)) else { return false };
    match tokio::time::timeout(WRITE_TIMEOUT, store.put(job_id.as_str(), body.into())).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            tracing::warn!(%job_id, error = %e, "cannot keep the job's request for a takeover");
            false
        }
        Err(_) => {
            tracing::warn!(%job_id, "keeping the job's request for a takeover timed out");
            false
        }
    }
}

/// Forgets an ended job's request.
pub async fn remove(queen: &Queen, job_id: &JobId) {
    let Some(store) = queen.requests.get() else { return };
    if let Ok(Err(e)) = tokio::time::timeout(WRITE_TIMEOUT, store.purge(job_id.as_str())).await {
        tracing::debug!(%job_id, error = %e, "cannot forget the job's request");
    }
}

/// Every stored request: job id, the request (`None` when unreadable) and its age.
pub async fn list(queen: &Queen) -> Vec<(JobId, Option<JobRequest>, Duration)> {
    let Some(store) = queen.requests.get() else { return Vec::new() };
    let keys: Vec<String> = match store.keys().await {
        Ok(keys) => keys.filter_map(|k| async move { k.ok() }).collect().await,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the requests the last leader left");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for key in keys {
        let Ok(job_id) = JobId::new(key.as_str()) else { continue };
        let Ok(Some(entry)) = store.entry(key.as_str()).await else { continue };
        if entry.operation != kv::Operation::Put {
            continue;
        }
        let created_ms = u64::try_from(entry.created.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let age = Duration::from_millis(rbee_bus::now_ms().saturating_sub(created_ms));
        let request =
            rbee_bus::rpc::decode::<SubmitJob>(subject::QUEEN_JOBS_SUBMIT, &entry.value).ok().map(from_wire);
        out.push((job_id, request, age));
    }
    out
}
