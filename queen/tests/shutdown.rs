//! A queen that is told to stop drains: with a real nats-server, a real hive and a real worker on the
//! real model, a job submitted over NATS just before the stop still ends on the worker before `serve`
//! returns; and a job still queued at the drain deadline fails with a reason instead of vanishing.

use std::time::{Duration, Instant};

use futures::StreamExt;
use rbee_bus::*;
use rbee_hive::HiveConfig;
use rbee_queen::QueenConfig;
use rbee_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

mod cluster;

use cluster::{start_hive, MODEL};

async fn start_queen(
    server: &NatsServer,
    drain_deadline: Duration,
) -> (CancellationToken, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let config = QueenConfig { drain_deadline, durable_jobs: false, ..QueenConfig::default() };
    let (stop, task, _) = cluster::start_queen(server, config).await;
    (stop, task)
}

/// Submits over NATS until the queen answers (it may still be warming up); returns the reply.
async fn submit(bus: &Bus, max_tokens: u32) -> SubmitJobReply {
    let params = SamplingParams { max_tokens, ..SamplingParams::default() };
    let submit = SubmitJob {
        v: SCHEMA_VERSION,
        model_id: MODEL.parse().expect("id"),
        prompt: Prompt::Text { text: "Count from one to twenty:".into() },
        params,
        deadline_ms: None,
        job_id: None,
        keep_alive_ms: None,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match bus
            .request::<_, SubmitJobReply>(
                subject::QUEEN_JOBS_SUBMIT.to_owned(),
                &submit,
                Duration::from_secs(5),
            )
            .await
        {
            Ok(reply) => return reply,
            Err(e) => {
                assert!(Instant::now() < deadline, "the queen never took the job: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The final status of a job, from a subscription made before it was submitted.
async fn final_status(statuses: &mut async_nats::Subscriber, job_id: &JobId, within: Duration) -> JobStatus {
    let deadline = Instant::now() + within;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline.into(), statuses.next()).await {
        if let Ok(status) = rpc::decode::<JobStatus>(&msg.subject, &msg.payload) {
            if &status.job_id == job_id && status.state.is_terminal() {
                return status;
            }
        }
    }
    panic!("no final status for {job_id} within {within:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_queen_lets_its_jobs_end_and_fails_what_is_still_queued() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let client = connect(&NatsConfig::url(server.url())).await.expect("client connects");
    let mut statuses = client.client().subscribe(subject::JOB_STATUS_ALL).await.expect("sub");
    client.round_trip().await.expect("round trip");

    // A hive whose worker binary is missing: every spawn is refused, so the job is still queued at
    // the drain deadline.
    let broken = HiveConfig {
        worker_binary: Some(dir.path().join("no-such-rbee-worker")),
        ..cluster::hive_config(&server, "hive-drain", dir.path())
    };
    let broken_stop = cluster::run_hive(&server, broken).await;
    let (stop, queen) = start_queen(&server, Duration::from_millis(300)).await;
    let queued = submit(&client, 8).await;
    stop.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(15), queen).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "serve returned after the deadline: {stopped:?}");
    let status = final_status(&mut statuses, &queued.job_id, Duration::from_secs(5)).await;
    match status.state {
        JobState::Finished { finish_reason: FinishReason::Error, error: Some(error), .. } => {
            assert!(error.contains("queen stopped while the job was queued"), "{error}");
        }
        other => panic!("a job queued at the deadline must fail with a reason, got {other:?}"),
    }

    broken_stop.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A working hive: a job on its worker ends before serve returns.
    let hive_stop = start_hive(&server, "hive-drain", dir.path()).await;
    let (stop, queen) = start_queen(&server, Duration::from_secs(60)).await;
    let running = submit(&client, 160).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut tokens = client.client().subscribe(running.tokens_subject.clone()).await.expect("sub");
    // Stop as soon as the worker streams: the job is in flight on it.
    let first = tokio::time::timeout_at(deadline.into(), tokens.next()).await;
    assert!(matches!(first, Ok(Some(_))), "no token of the running job");
    stop.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(60), queen).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "serve did not return: {stopped:?}");
    let status = tokio::time::timeout(Duration::from_millis(100), async {
        final_status(&mut statuses, &running.job_id, Duration::from_millis(100)).await
    })
    .await
    .expect("the job's final status was published before serve returned");
    assert!(
        matches!(
            status.state,
            JobState::Finished { finish_reason: FinishReason::Stop | FinishReason::Length, .. }
        ),
        "the job ran to its end: {:?}",
        status.state
    );
    hive_stop.cancel();
}
