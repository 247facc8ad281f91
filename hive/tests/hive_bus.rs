//! A real hive over a real nats-server: spawn a real worker, run a job on it, kill -9 it, stop another
//! gracefully, refuse spawns that cannot work, list, and leave no orphans.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rbee_bus::*;
use rbee_hive::{HiveConfig, ModelImport};
use rbee_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

const MODEL: &str = "smollm2";

fn config(server: &NatsServer, hive: &str, root: &Path, with_worker: bool) -> HiveConfig {
    HiveConfig {
        hive_id: hive.parse().expect("id"),
        catalog_root: root.to_path_buf(),
        worker_binary: with_worker.then(|| rbee_testkit::paths::cargo_bin("rbee-worker")),
        import_models: vec![ModelImport {
            path: rbee_testkit::paths::require_default_model(),
            id: Some(MODEL.parse().expect("id")),
        }],
        heartbeat_interval: Duration::from_millis(200),
        stop_deadline: Duration::from_secs(5),
        worker_nats_args: vec!["--nats-url".into(), server.url()],
        ..HiveConfig::default()
    }
}

fn spawn_req(slots: u32, ctx: u32) -> SpawnRequest {
    SpawnRequest {
        v: 1,
        model_id: MODEL.parse().expect("id"),
        device: None,
        slots: Some(slots),
        ctx_per_slot: Some(ctx),
        worker_type: None,
        worker_id: None,
        threads: Some(1),
        fence: None,
    }
}

async fn next_matching<T: serde::de::DeserializeOwned>(
    sub: &mut async_nats::Subscriber,
    within: Duration,
    pred: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
            if let Ok(value) = rpc::decode::<T>(&msg.subject, &msg.payload) {
                if pred(&value) {
                    return value;
                }
            }
        }
    }
    panic!("no matching message within {within:?}");
}

async fn wait_hive(bus: &Bus, hive: &HiveId) {
    let mut hb = bus.client().subscribe(subject::hive_heartbeat(hive)).await.expect("sub");
    let _: HiveHeartbeat =
        next_matching(&mut hb, Duration::from_secs(60), |h: &HiveHeartbeat| !h.models.is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hive_spawns_supervises_and_stops_workers() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let bus = connect(&NatsConfig::url(server.url())).await.expect("connect");
    let hive_id: HiveId = "hive-t".parse().expect("id");
    let shutdown = CancellationToken::new();
    let hive_bus = connect(&NatsConfig::url(server.url())).await.expect("connect");
    let hive_task =
        tokio::spawn(rbee_hive::run(config(&server, "hive-t", dir.path(), true), hive_bus, shutdown.clone()));
    wait_hive(&bus, &hive_id).await;
    let t = Duration::from_secs(10);

    // Listings.
    let models: ModelList =
        bus.request(subject::hive_models(&hive_id), &ListRequest { v: 1 }, t).await.expect("models");
    let m = &models.models[0];
    assert_eq!(
        (m.model_id.as_str(), m.architecture.as_str(), m.quantization.as_str()),
        (MODEL, "llama", "Q4_1")
    );
    let devices: DeviceList =
        bus.request(subject::hive_devices(&hive_id), &ListRequest { v: 1 }, t).await.expect("devices");
    assert_eq!(devices.devices[0].id, "cpu");
    assert!(devices.devices[0].free_bytes > 0);

    // Refusals with clear codes.
    let mut unknown = spawn_req(1, 512);
    unknown.model_id = "no-such-model".parse().expect("id");
    let err =
        bus.request::<_, SpawnReply>(subject::hive_spawn(&hive_id), &unknown, t).await.expect_err("refused");
    assert_eq!(err.remote().map(|e| e.code()), Some(ErrorCode::UnknownModel), "{err}");
    let err = bus
        .request::<_, SpawnReply>(subject::hive_spawn(&hive_id), &spawn_req(64, 131_072), t)
        .await
        .expect_err("refused");
    let wire = err.remote().expect("wire error");
    assert_eq!(wire.code(), ErrorCode::ModelDoesNotFit, "{err}");
    assert!(wire.error.message.contains("MiB free"), "{}", wire.error.message);
    let mut bad_device = spawn_req(1, 512);
    bad_device.device = Some("cuda:7".into());
    let err = bus
        .request::<_, SpawnReply>(subject::hive_spawn(&hive_id), &bad_device, t)
        .await
        .expect_err("refused");
    assert_eq!(err.remote().map(|e| e.code()), Some(ErrorCode::UnknownDevice));
    let raw = bus.client().request(subject::hive_spawn(&hive_id), "{]".into()).await.expect("reply");
    let err = rpc::decode_reply::<SpawnReply>("x", &raw.payload).expect_err("bad request");
    assert_eq!(err.remote().map(|e| e.code()), Some(ErrorCode::BadRequest));

    // Spawn a real worker; it heartbeats idle; a job runs on it.
    let mut lifecycle = bus.client().subscribe(subject::WORKER_LIFECYCLE_ALL).await.expect("sub");
    let mut worker_beats = bus.client().subscribe(subject::WORKER_HEARTBEAT_ALL).await.expect("sub");
    bus.round_trip().await.expect("rt");
    let first: SpawnReply =
        bus.request(subject::hive_spawn(&hive_id), &spawn_req(2, 512), t).await.expect("spawned");
    assert!(first.pid > 0);
    let started: WorkerLifecycle =
        next_matching(&mut lifecycle, t, |l: &WorkerLifecycle| l.worker_id == first.worker_id).await;
    assert!(matches!(started.event, LifecycleEvent::Started { pid } if pid == first.pid));
    let ready: WorkerHeartbeat =
        next_matching(&mut worker_beats, Duration::from_secs(60), |h: &WorkerHeartbeat| {
            h.worker_id == first.worker_id && h.state == WorkerState::Idle
        })
        .await;
    assert_eq!((ready.hive_id.as_str(), ready.slots_total, ready.pid), ("hive-t", 2, first.pid));

    let job = JobAssignment::new(
        JobId::generate(),
        MODEL.parse().expect("id"),
        Prompt::chat(vec![ChatMessage::new(
            "user",
            "What is the capital of France? Answer in one sentence.",
        )]),
        SamplingParams { temperature: 0.0, max_tokens: 30, ..Default::default() },
    );
    let mut status = bus.client().subscribe(subject::job_status(&job.job_id)).await.expect("sub");
    let mut tokens = bus.client().subscribe(subject::job_tokens(&job.job_id)).await.expect("sub");
    bus.round_trip().await.expect("rt");
    let _: JobAccepted =
        bus.request(subject::worker_jobs(&first.worker_id), &job, t).await.expect("accepted");
    let done: JobStatus =
        next_matching(&mut status, Duration::from_secs(60), |s: &JobStatus| s.state.is_terminal()).await;
    assert!(matches!(done.state, JobState::Finished { finish_reason: FinishReason::Stop, .. }), "{done:?}");
    let mut text = String::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(300), tokens.next()).await {
        text.push_str(&rpc::decode::<TokenChunk>(&msg.subject, &msg.payload).expect("chunk").text);
    }
    assert!(text.contains("Paris"), "{text}");

    // The hive lists it as ready.
    let list: WorkerList =
        bus.request(subject::hive_workers(&hive_id), &ListRequest { v: 1 }, t).await.expect("workers");
    let entry = list.workers.iter().find(|w| w.worker_id == first.worker_id).expect("listed");
    assert_eq!(entry.status, HiveWorkerStatus::Ready);

    // kill -9: Failed with the exit status, and a lifecycle event.
    rbee_daemon::signal::send_to_pid(first.pid, rbee_daemon::signal::Signal::Kill);
    let failed: WorkerLifecycle = next_matching(&mut lifecycle, t, |l: &WorkerLifecycle| {
        l.worker_id == first.worker_id && matches!(l.event, LifecycleEvent::Failed { .. })
    })
    .await;
    match failed.event {
        LifecycleEvent::Failed { exit, .. } => assert!(exit.contains("signal: 9"), "{exit}"),
        other => panic!("{other:?}"),
    }
    let list: WorkerList =
        bus.request(subject::hive_workers(&hive_id), &ListRequest { v: 1 }, t).await.expect("workers");
    let entry = list.workers.iter().find(|w| w.worker_id == first.worker_id).expect("listed");
    assert!(
        matches!(&entry.status, HiveWorkerStatus::Failed { error } if error.contains("signal: 9")),
        "{entry:?}"
    );

    // Another worker, stopped gracefully.
    let second: SpawnReply =
        bus.request(subject::hive_spawn(&hive_id), &spawn_req(1, 512), t).await.expect("spawned");
    let _: WorkerHeartbeat =
        next_matching(&mut worker_beats, Duration::from_secs(60), |h: &WorkerHeartbeat| {
            h.worker_id == second.worker_id && h.state == WorkerState::Idle
        })
        .await;
    let stop =
        StopRequest { v: 1, worker_id: second.worker_id.clone(), deadline_ms: Some(5000), fence: None };
    let stopped: StopReply = bus.request(subject::hive_stop(&hive_id), &stop, t).await.expect("stopped");
    assert!(stopped.graceful, "{stopped:?}");
    assert_eq!(stopped.exit, "exit status: 0");
    let exited: WorkerLifecycle = next_matching(&mut lifecycle, t, |l: &WorkerLifecycle| {
        l.worker_id == second.worker_id && matches!(l.event, LifecycleEvent::Exited { .. })
    })
    .await;
    assert_eq!(exited.hive_id, hive_id);
    let err =
        bus.request::<_, StopReply>(subject::hive_stop(&hive_id), &stop, t).await.expect_err("not running");
    assert_eq!(err.remote().map(|e| e.code()), Some(ErrorCode::NotFound));

    // Shutdown stops the remaining worker and says the hive leaves.
    let third: SpawnReply =
        bus.request(subject::hive_spawn(&hive_id), &spawn_req(1, 512), t).await.expect("spawned");
    let mut hive_beats = bus.client().subscribe(subject::hive_heartbeat(&hive_id)).await.expect("sub");
    bus.round_trip().await.expect("rt");
    shutdown.cancel();
    let leaving: HiveHeartbeat =
        next_matching(&mut hive_beats, Duration::from_secs(20), |h: &HiveHeartbeat| {
            h.state == HiveState::Leaving
        })
        .await;
    let w = leaving.workers.iter().find(|w| w.worker_id == third.worker_id).expect("listed");
    assert_eq!(w.status, HiveWorkerStatus::Stopped);
    hive_task.await.expect("join").expect("hive ran");
    assert!(!Path::new(&format!("/proc/{}", third.pid)).exists(), "worker {} still running", third.pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_worker_binary_is_refused_and_orphans_are_killed() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let bus = connect(&NatsConfig::url(server.url())).await.expect("connect");
    // An orphan from a "previous life": a real worker process with a pid file in the hive's run dir.
    let run_dir = dir.path().join("run").join("hive-o");
    std::fs::create_dir_all(&run_dir).expect("run dir");
    let mut orphan = std::process::Command::new(rbee_testkit::paths::cargo_bin("rbee-worker"))
        .args(["--worker-id", "orphan", "--model-id", MODEL, "--nats-url", &server.url()])
        .arg("--model-path")
        .arg(rbee_testkit::paths::require_default_model())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn orphan");
    std::fs::write(run_dir.join("orphan.pid"), orphan.id().to_string()).expect("pid file");

    let hive_id: HiveId = "hive-o".parse().expect("id");
    let shutdown = CancellationToken::new();
    let hive_bus = connect(&NatsConfig::url(server.url())).await.expect("connect");
    let hive_task = tokio::spawn(rbee_hive::run(
        config(&server, "hive-o", dir.path(), false),
        hive_bus,
        shutdown.clone(),
    ));
    wait_hive(&bus, &hive_id).await;
    let status = orphan.wait().expect("orphan waited");
    assert!(!status.success(), "the orphan was not killed: {status}");

    let err = bus
        .request::<_, SpawnReply>(subject::hive_spawn(&hive_id), &spawn_req(1, 512), Duration::from_secs(5))
        .await
        .expect_err("refused");
    assert_eq!(err.remote().map(|e| e.code()), Some(ErrorCode::MissingWorkerBinary), "{err}");
    shutdown.cancel();
    hive_task.await.expect("join").expect("hive ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_counted_and_the_hive_goes_on() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let bus = connect(&NatsConfig::url(server.url())).await.expect("connect");
    let hive_id: HiveId = "hive-m".parse().expect("id");
    let shutdown = CancellationToken::new();
    let hive_bus = connect(&NatsConfig::url(server.url())).await.expect("connect");
    let hive_task = tokio::spawn(rbee_hive::run(
        config(&server, "hive-m", dir.path(), false),
        hive_bus,
        shutdown.clone(),
    ));
    wait_hive(&bus, &hive_id).await;

    // Garbage on each request subject gets a bad_request reply, not silence.
    let garbage = bytes::Bytes::from_static(b"{\"v\":1,\"model_id\":\"a.b\"");
    for subject in [
        subject::hive_spawn(&hive_id),
        subject::hive_stop(&hive_id),
        subject::hive_models_import(&hive_id),
        subject::hive_models_pull(&hive_id),
        subject::hive_models_remove(&hive_id),
    ] {
        let reply = bus.client().request(subject.clone(), garbage.clone()).await.expect("a reply");
        let error: WireError = serde_json::from_slice(&reply.payload).expect("a wire error");
        assert_eq!(error.code(), ErrorCode::BadRequest, "{subject}: {error}");
    }
    // A forged worker heartbeat that does not decode is dropped and counted too.
    bus.client().publish("rbee.worker.x.heartbeat", garbage.clone()).await.expect("publish");
    bus.round_trip().await.expect("flush");

    // The hive still answers, and its service stats count every rejection.
    let models: ModelList = bus
        .request(subject::hive_models(&hive_id), &ListRequest { v: 1 }, Duration::from_secs(5))
        .await
        .expect("list");
    assert_eq!(models.models.len(), 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = bus.client().request("$SRV.STATS.rbee-hive", bytes::Bytes::new()).await.expect("stats");
        let stats: serde_json::Value = serde_json::from_slice(&stats.payload).expect("json");
        let rejected = stats["endpoints"][0]["data"]["rejected_messages"].as_u64().unwrap_or(0);
        if rejected >= 6 {
            break;
        }
        assert!(Instant::now() < deadline, "the hive counted {rejected} of 6 rejections: {stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    hive_task.await.expect("join").expect("hive ran");
}
