//! The token path's publisher: an echo worker inside this process. It heartbeats like a worker of model
//! `bench-echo`, accepts the queen's assignment like a worker, and publishes real `TokenChunk`s at a
//! fixed pace, stamping each with this process's monotonic clock just before the publish call.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use rbee_bus::{
    subject, Backend, Bus, EventStamper, FinishReason, HiveId, JobAccepted, JobAssignment, JobId, JobState,
    JobStatus, ModelId, TokenChunk, Usage, WorkerHeartbeat, WorkerId, WorkerState, SCHEMA_VERSION,
};
use tokio_util::sync::CancellationToken;

/// The model the echo worker serves.
pub const ECHO_MODEL: &str = "bench-echo";
/// The echo worker's id.
pub const ECHO_WORKER: &str = "bench-echo-worker";

type Stamps = Arc<Mutex<Vec<Option<Instant>>>>;

/// A fake worker that streams numbered chunks at a fixed pace.
pub struct EchoWorker {
    stop: CancellationToken,
    published: Stamps,
    bus: Bus,
    stamper: Arc<EventStamper>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EchoWorker {
    /// Starts heartbeating and serving assignments on `bus`, publishing a chunk every `pace`.
    pub async fn start(bus: Bus, pace: Duration) -> anyhow::Result<Self> {
        let worker_id: WorkerId = ECHO_WORKER.parse()?;
        let stamper = Arc::new(EventStamper::new(ECHO_WORKER));
        let stop = CancellationToken::new();
        let published: Stamps = Arc::default();
        let mut jobs = bus.client().subscribe(subject::worker_jobs(&worker_id)).await?;
        bus.round_trip().await?;
        // Heartbeats.
        {
            let (bus, stamper, stop) = (bus.clone(), stamper.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let hb = heartbeat(&stamper, WorkerState::Idle);
                    let _ = bus.publish(subject::worker_heartbeat(&hb.worker_id), &hb).await;
                }
            });
        }
        // Assignments.
        {
            let (bus, stamper, stop, published) =
                (bus.clone(), stamper.clone(), stop.clone(), published.clone());
            tokio::spawn(async move {
                loop {
                    let msg = tokio::select! {
                        _ = stop.cancelled() => return,
                        msg = jobs.next() => match msg { Some(m) => m, None => return },
                    };
                    let Ok(job) = serde_json::from_slice::<JobAssignment>(&msg.payload) else { continue };
                    let accepted = JobAccepted {
                        v: SCHEMA_VERSION,
                        job_id: job.job_id.clone(),
                        worker_id: worker_id.clone(),
                        prompt_tokens: 1,
                        accepted_seq: None,
                    };
                    let _ = bus.reply(&msg, Ok::<_, rbee_bus::WireError>(accepted)).await;
                    let stream = stream_job(
                        bus.clone(),
                        stamper.clone(),
                        job.job_id,
                        job.attempt_key,
                        job.params.max_tokens,
                        pace,
                        published.clone(),
                    );
                    tokio::spawn(stream);
                }
            });
        }
        Ok(Self { stop, published, bus, stamper })
    }

    /// Publish instants of the last job's chunks, by chunk number.
    pub fn published(&self) -> Vec<Option<Instant>> {
        lock(&self.published).clone()
    }

    /// Stops it; a `stopped` heartbeat removes it from the queen's registry at once.
    pub async fn stop(self) {
        self.stop.cancel();
        let hb = heartbeat(&self.stamper, WorkerState::Stopped);
        let _ = self.bus.publish(subject::worker_heartbeat(&hb.worker_id), &hb).await;
        let _ = self.bus.client().flush().await;
    }
}

fn heartbeat(stamper: &EventStamper, state: WorkerState) -> WorkerHeartbeat {
    WorkerHeartbeat {
        v: SCHEMA_VERSION,
        meta: stamper.next(),
        worker_id: WorkerId::new(ECHO_WORKER).unwrap_or_else(|_| WorkerId::generate()),
        hive_id: HiveId::new("bench-echo-hive").unwrap_or_else(|_| HiveId::generate()),
        model_id: ModelId::new(ECHO_MODEL).unwrap_or_else(|_| ModelId::generate()),
        state,
        backend: Backend::Cpu,
        device: "cpu".to_owned(),
        slots_total: 64,
        slots_busy: 0,
        ctx_per_slot: 2048,
        tokens_per_second: 0.0,
        memory_bytes: 0,
        pid: std::process::id(),
        interval_ms: 1000,
        prefix_fingerprints: Vec::new(),
        jobs_accepted: None,
    }
}

/// A token chunk like a worker's: `{i:05} ` as text (one token), with the assignment's key.
pub fn chunk(
    stamper: &EventStamper,
    job_id: &JobId,
    worker_id: &WorkerId,
    attempt_key: Option<String>,
    i: u64,
) -> TokenChunk {
    TokenChunk {
        v: SCHEMA_VERSION,
        meta: stamper.next(),
        job_id: job_id.clone(),
        worker_id: worker_id.clone(),
        seq: i,
        text: format!("{i:05} "),
        tokens: 1,
        total_tokens: u32::try_from(i + 1).unwrap_or(u32::MAX),
        attempt: 0,
        attempt_key,
        tool_calls: Vec::new(),
        logprobs: Vec::new(),
        token_ids: Vec::new(),
    }
}

async fn stream_job(
    bus: Bus,
    stamper: Arc<EventStamper>,
    job_id: JobId,
    attempt_key: Option<String>,
    n: u32,
    pace: Duration,
    published: Stamps,
) {
    let worker_id = WorkerId::new(ECHO_WORKER).unwrap_or_else(|_| WorkerId::generate());
    let model_id = ModelId::new(ECHO_MODEL).ok();
    let status = |state: JobState| JobStatus {
        v: SCHEMA_VERSION,
        meta: stamper.next(),
        job_id: job_id.clone(),
        model_id: model_id.clone(),
        state,
        attempt: 0,
        attempt_key: attempt_key.clone(),
    };
    let status_subject = subject::job_status(&job_id);
    let accepted = status(JobState::Accepted { worker_id: worker_id.clone(), prompt_tokens: 1 });
    let _ = bus.publish(status_subject.clone(), &accepted).await;
    // The queen answers the HTTP request once the job is accepted: give the client time to open its
    // stream, so no chunk is measured while it is still connecting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = bus
        .publish(status_subject.clone(), &status(JobState::Running { worker_id: worker_id.clone() }))
        .await;
    *lock(&published) = vec![None; n as usize];
    let tokens_subject = subject::job_tokens(&job_id);
    let mut tick = tokio::time::interval(pace);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 0..u64::from(n) {
        tick.tick().await;
        let payload = Bytes::from(
            serde_json::to_vec(&chunk(&stamper, &job_id, &worker_id, attempt_key.clone(), i))
                .unwrap_or_default(),
        );
        let at = Instant::now();
        if let Some(slot) = lock(&published).get_mut(i as usize) {
            *slot = Some(at);
        }
        let _ = bus.client().publish(tokens_subject.clone(), payload).await;
    }
    tokio::time::sleep(pace).await;
    let usage = Usage { prompt_tokens: 1, completion_tokens: n, ..Usage::default() };
    let finished = status(JobState::Finished {
        finish_reason: FinishReason::Length,
        usage,
        error: None,
        worker_id: Some(worker_id),
    });
    let _ = bus.publish(status_subject, &finished).await;
}
