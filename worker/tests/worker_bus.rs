//! A real worker process on the real model, driven over a real nats-server.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rbee_bus::*;
use rbee_testkit::NatsServer;

struct WorkerProcess {
    child: Child,
    id: WorkerId,
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_worker(server: &NatsServer, id: &str, slots: usize) -> WorkerProcess {
    let model = rbee_testkit::paths::require_default_model();
    let child = Command::new(env!("CARGO_BIN_EXE_rbee-worker"))
        .args(["--worker-id", id, "--hive-id", "test-hive", "--model-id", "smollm2"])
        .arg("--model-path")
        .arg(model)
        .args(["--slots", &slots.to_string(), "--ctx-per-slot", "1024", "--heartbeat-ms", "200"])
        .args(["--nats-url", &server.url()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn rbee-worker");
    WorkerProcess { child, id: id.parse().expect("id") }
}

async fn wait_for_state(bus: &Bus, worker: &WorkerId, want: WorkerState) -> WorkerHeartbeat {
    let mut sub = bus.client().subscribe(subject::worker_heartbeat(worker)).await.expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(5), sub.next()).await else { continue };
        let hb: WorkerHeartbeat = rpc::decode(&msg.subject, &msg.payload).expect("heartbeat decodes");
        if hb.state == want {
            return hb;
        }
    }
    panic!("worker {worker} never reported {want:?}");
}

fn chat(q: &str) -> Prompt {
    Prompt::chat(vec![ChatMessage::new("user", q)])
}

struct Collected {
    chunks: Vec<TokenChunk>,
    finished: JobState,
    states: Vec<String>,
}

impl Collected {
    fn text(&self) -> String {
        self.chunks.iter().map(|c| c.text.as_str()).collect()
    }
}

async fn submit_and_collect(bus: &Bus, worker: &WorkerId, job: JobAssignment) -> Result<Collected, BusError> {
    let mut tokens = bus.client().subscribe(subject::job_tokens(&job.job_id)).await.expect("sub");
    let mut status = bus.client().subscribe(subject::job_status(&job.job_id)).await.expect("sub");
    bus.round_trip().await.expect("rt");
    let _accepted: JobAccepted =
        bus.request(subject::worker_jobs(worker), &job, Duration::from_secs(5)).await?;
    let mut states = Vec::new();
    let finished = loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), status.next())
            .await
            .expect("status in time")
            .expect("open");
        let s: JobStatus = rpc::decode(&msg.subject, &msg.payload).expect("status decodes");
        states.push(
            serde_json::to_value(&s.state).expect("json")["state"].as_str().unwrap_or_default().to_owned(),
        );
        if s.state.is_terminal() {
            break s.state;
        }
    };
    let mut chunks = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(300), tokens.next()).await {
        chunks.push(rpc::decode::<TokenChunk>(&msg.subject, &msg.payload).expect("chunk decodes"));
    }
    Ok(Collected { chunks, finished, states })
}

fn job(prompt: Prompt, params: SamplingParams) -> JobAssignment {
    JobAssignment::new(JobId::generate(), "smollm2".parse().expect("id"), prompt, params)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_answers_streams_and_cancels() {
    let server = NatsServer::start();
    let bus = connect(&NatsConfig::url(server.url())).await.expect("connect");
    let worker = spawn_worker(&server, "wrk-t1", 3);
    let ready = wait_for_state(&bus, &worker.id, WorkerState::Idle).await;
    assert_eq!(ready.slots_total, 3);
    assert_eq!(ready.model_id.as_str(), "smollm2");
    assert!(ready.memory_bytes > 0);

    // The capital of France, streamed over several chunks, in order.
    let params = SamplingParams { temperature: 0.0, max_tokens: 40, ..Default::default() };
    let got = submit_and_collect(
        &bus,
        &worker.id,
        job(chat("What is the capital of France? Answer in one sentence."), params.clone()),
    )
    .await
    .expect("accepted");
    assert!(got.text().contains("Paris"), "answer: {:?}", got.text());
    assert!(got.chunks.len() >= 2, "only {} chunks", got.chunks.len());
    assert!(got.chunks.iter().enumerate().all(|(i, c)| c.seq == i as u64), "chunk sequence has gaps");
    assert_eq!(got.states.first().map(String::as_str), Some("accepted"));
    assert!(got.states.contains(&"running".to_owned()));
    match &got.finished {
        JobState::Finished { finish_reason, usage, .. } => {
            assert_eq!(*finish_reason, FinishReason::Stop);
            assert!(usage.prompt_tokens > 5 && usage.completion_tokens > 3, "{usage:?}");
            assert!(usage.time_to_first_token_ms.is_some());
            assert_eq!(usage.completion_tokens, got.chunks.last().map(|c| c.total_tokens).unwrap_or(0));
        }
        other => panic!("not finished: {other:?}"),
    }

    // A malformed assignment gets an error reply, and the worker keeps serving.
    let raw =
        bus.client().request(subject::worker_jobs(&worker.id), "{\"garbage\":".into()).await.expect("reply");
    let err = rpc::decode_reply::<JobAccepted>("x", &raw.payload).expect_err("refused");
    assert_eq!(err.remote().map(|e| e.code()), Some(ErrorCode::BadRequest));
    // One carrying line breaks where a decode error may quote them (NATS headers may not hold them):
    // refused like any other, and the worker goes on serving.
    let quoting = r#"{"v":1,"job_id":"job-nl","model_id":"m","prompt":{"kind":"line
break
"}}"#;
    let raw = bus.client().request(subject::worker_jobs(&worker.id), quoting.into()).await.expect("reply");
    let err = rpc::decode_reply::<JobAccepted>("x", &raw.payload).expect_err("refused");
    assert_eq!(err.remote().map(|e| e.code()), Some(ErrorCode::BadRequest), "{err:?}");
    // Impossible parameters are refused, naming the field.
    let bad = job(chat("hi"), SamplingParams { temperature: 9.0, ..Default::default() });
    let err = bus
        .request::<_, JobAccepted>(subject::worker_jobs(&worker.id), &bad, Duration::from_secs(5))
        .await
        .expect_err("refused");
    let wire = err.remote().expect("wire error");
    assert_eq!((wire.code(), wire.error.field.as_deref()), (ErrorCode::InvalidParams, Some("temperature")));
    // A prompt longer than the context is refused.
    let long = job(Prompt::Text { text: "word ".repeat(3000) }, SamplingParams::default());
    let err = bus
        .request::<_, JobAccepted>(subject::worker_jobs(&worker.id), &long, Duration::from_secs(5))
        .await
        .expect_err("refused");
    assert_eq!(err.remote().map(|e| e.code()), Some(ErrorCode::PromptTooLong));
    // A job for another model is refused.
    let mut other = job(chat("hi"), SamplingParams::default());
    other.model_id = "another".parse().expect("id");
    let err = bus
        .request::<_, JobAccepted>(subject::worker_jobs(&worker.id), &other, Duration::from_secs(5))
        .await
        .expect_err("refused");
    assert_eq!(err.remote().map(|e| e.code()), Some(ErrorCode::WrongModel));

    // Three jobs decode together; a fourth finds no slot.
    let long_params =
        SamplingParams { temperature: 0.8, max_tokens: 2000, seed: Some(1), ..Default::default() };
    let mut subs = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let j = job(Prompt::Text { text: "Once upon a time".into() }, long_params.clone());
        subs.push(bus.client().subscribe(subject::job_tokens(&j.job_id)).await.expect("sub"));
        bus.round_trip().await.expect("rt");
        let _: JobAccepted = bus
            .request(subject::worker_jobs(&worker.id), &j, Duration::from_secs(5))
            .await
            .expect("accepted");
        ids.push(j.job_id);
    }
    let fourth = job(chat("hi"), SamplingParams::default());
    let err = bus
        .request::<_, JobAccepted>(subject::worker_jobs(&worker.id), &fourth, Duration::from_secs(5))
        .await
        .expect_err("no slot");
    assert_eq!(err.remote().map(|e| e.code()), Some(ErrorCode::NoFreeSlot));
    // All three stream at the same time.
    for sub in subs.iter_mut() {
        let first = tokio::time::timeout(Duration::from_secs(20), sub.next()).await.expect("tokens in time");
        assert!(first.is_some());
    }
    let busy = wait_for_state(&bus, &worker.id, WorkerState::Busy).await;
    assert_eq!(busy.slots_busy, 3);

    // Cancel them mid-generation: they end cancelled and the slots come back.
    let mut status_subs = Vec::new();
    for id in &ids {
        status_subs.push(bus.client().subscribe(subject::job_status(id)).await.expect("sub"));
    }
    bus.round_trip().await.expect("rt");
    for id in &ids {
        let cancel = JobCancel {
            v: 1,
            meta: EventStamper::new("test").next(),
            job_id: id.clone(),
            reason: "test".into(),
            worker_id: None,
            fence: None,
        };
        bus.publish(subject::job_cancel(id), &cancel).await.expect("publish cancel");
    }
    for sub in status_subs.iter_mut() {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .expect("cancelled in time")
                .expect("open");
            let s: JobStatus = rpc::decode(&msg.subject, &msg.payload).expect("decodes");
            if let JobState::Finished { finish_reason, usage, .. } = s.state {
                assert_eq!(finish_reason, FinishReason::Cancelled);
                assert!(usage.completion_tokens < 2000);
                break;
            }
        }
    }
    let idle = wait_for_state(&bus, &worker.id, WorkerState::Idle).await;
    assert_eq!(idle.slots_busy, 0);

    // Embeddings on the worker's own subject: in order, unit length; refusals name what is wrong.
    let t = Duration::from_secs(60);
    let embed = |inputs: Vec<&str>, model: &str| EmbedRequest {
        v: SCHEMA_VERSION,
        model_id: model.parse().expect("id"),
        inputs: inputs.into_iter().map(str::to_owned).collect(),
    };
    let reply: EmbedReply = bus
        .request(
            subject::worker_embed(&worker.id),
            &embed(vec!["a red apple", "a red apple", "tax law"], "smollm2"),
            t,
        )
        .await
        .expect("embeddings");
    assert_eq!((reply.embeddings.len(), reply.workers.clone()), (3, vec![worker.id.clone()]));
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum::<f64>();
    assert!((dot(&reply.embeddings[0], &reply.embeddings[1]) - 1.0).abs() < 1e-4);
    assert!(dot(&reply.embeddings[0], &reply.embeddings[2]) < 0.9999);
    let refused = |r: Result<EmbedReply, BusError>| match r {
        Err(BusError::Remote { error, .. }) => error.code(),
        other => panic!("not refused: {other:?}"),
    };
    let wrong = bus.request(subject::worker_embed(&worker.id), &embed(vec!["x"], "other-model"), t).await;
    assert_eq!(refused(wrong), ErrorCode::WrongModel);
    let nine = bus.request(subject::worker_embed(&worker.id), &embed(vec!["x"; 9], "smollm2"), t).await;
    assert_eq!(refused(nine), ErrorCode::InvalidParams);
    let long = "word ".repeat(5000);
    let too_long =
        bus.request(subject::worker_embed(&worker.id), &embed(vec![long.as_str()], "smollm2"), t).await;
    assert_eq!(refused(too_long), ErrorCode::InvalidParams);
    let raw = bus.client().request(subject::worker_embed(&worker.id), "[1,".into()).await.expect("reply");
    assert_eq!(
        refused(rpc::decode_reply(&subject::worker_embed(&worker.id), &raw.payload)),
        ErrorCode::BadRequest
    );

    // The NATS service API lists the worker with its counts.
    let ping = bus.client().request("$SRV.PING.rbee-worker", "".into()).await.expect("service ping");
    let ping: serde_json::Value = serde_json::from_slice(&ping.payload).expect("json");
    assert_eq!(ping["name"], "rbee-worker");
    let stats = bus.client().request("$SRV.STATS.rbee-worker", "".into()).await.expect("service stats");
    let stats: serde_json::Value = serde_json::from_slice(&stats.payload).expect("json");
    let endpoints = stats["endpoints"].as_array().cloned().unwrap_or_default();
    let endpoint = endpoints.iter().find(|e| e["name"] == "jobs").expect("a jobs endpoint");
    assert!(
        endpoints.iter().any(|e| e["name"] == "embed" && e["num_requests"].as_u64() >= Some(5)),
        "{stats}"
    );
    assert!(endpoint["num_requests"].as_u64().unwrap_or(0) >= 8, "{stats}");
    assert!(endpoint["data"]["refused"].as_u64().unwrap_or(0) >= 4, "{stats}");
    assert!(endpoint["data"]["malformed"].as_u64().unwrap_or(0) >= 1, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_says_stopped() {
    let server = NatsServer::start();
    let bus = connect(&NatsConfig::url(server.url())).await.expect("connect");
    let mut worker = spawn_worker(&server, "wrk-t2", 2);
    wait_for_state(&bus, &worker.id, WorkerState::Idle).await;
    let j = job(
        chat("Tell me a story about a cat."),
        SamplingParams { max_tokens: 30, temperature: 0.0, ..Default::default() },
    );
    let mut status = bus.client().subscribe(subject::job_status(&j.job_id)).await.expect("sub");
    let mut beats = bus.client().subscribe(subject::worker_heartbeat(&worker.id)).await.expect("sub");
    bus.round_trip().await.expect("rt");
    let _: JobAccepted =
        bus.request(subject::worker_jobs(&worker.id), &j, Duration::from_secs(5)).await.expect("accepted");
    // SIGTERM while the job runs: it still finishes, then a stopped heartbeat, then exit 0.
    let pid = worker.child.id() as i32;
    assert_eq!(unsafe_kill(pid), 0);
    let mut finished = false;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(20), status.next()).await {
        let s: JobStatus = rpc::decode(&msg.subject, &msg.payload).expect("decodes");
        if let JobState::Finished { finish_reason, .. } = s.state {
            assert_ne!(finish_reason, FinishReason::Error);
            finished = true;
            break;
        }
    }
    assert!(finished, "the in-flight job did not finish");
    let mut stopped = false;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(10), beats.next()).await {
        let hb: WorkerHeartbeat = rpc::decode(&msg.subject, &msg.payload).expect("decodes");
        if hb.state == WorkerState::Stopped {
            stopped = true;
            break;
        }
    }
    assert!(stopped, "no stopped heartbeat");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = worker.child.try_wait().expect("wait") {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "worker did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn unsafe_kill(pid: i32) -> i32 {
    // SIGTERM through the kill command keeps the test free of unsafe code.
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .map(|s| if s.success() { 0 } else { 1 })
        .unwrap_or(1)
}

fn cancel_of(job_id: &JobId) -> JobCancel {
    JobCancel {
        v: 1,
        meta: EventStamper::new("test").next(),
        job_id: job_id.clone(),
        reason: "test".into(),
        worker_id: None,
        fence: None,
    }
}

/// Every status of one job until the terminal one, and the chunks that came meanwhile.
async fn statuses_until_finished(
    status: &mut async_nats::Subscriber,
    tokens: &mut async_nats::Subscriber,
) -> (Vec<JobStatus>, Vec<TokenChunk>) {
    let mut seen = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), status.next())
            .await
            .expect("status in time")
            .expect("open");
        let s: JobStatus = rpc::decode(&msg.subject, &msg.payload).expect("status decodes");
        let done = s.state.is_terminal();
        seen.push(s);
        if done {
            break;
        }
    }
    let mut chunks = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(300), tokens.next()).await {
        chunks.push(rpc::decode::<TokenChunk>(&msg.subject, &msg.payload).expect("chunk decodes"));
    }
    (seen, chunks)
}

/// Issue 15: malformed input while a job runs, the attempt number, a cancel that beats its assignment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_early_cancels_and_bad_input_while_a_job_runs() {
    let server = NatsServer::start();
    let bus = connect(&NatsConfig::url(server.url())).await.expect("connect");
    let worker = spawn_worker(&server, "wrk-t3", 2);
    wait_for_state(&bus, &worker.id, WorkerState::Idle).await;

    // A long job, placed as attempt 7.
    let mut long = job(
        Prompt::Text { text: "Once upon a time".into() },
        SamplingParams { temperature: 0.8, max_tokens: 120, seed: Some(3), ..Default::default() },
    );
    long.attempt = 7;
    long.attempt_key = Some("key-of-attempt-7".into());
    let mut tokens = bus.client().subscribe(subject::job_tokens(&long.job_id)).await.expect("sub");
    let mut status = bus.client().subscribe(subject::job_status(&long.job_id)).await.expect("sub");
    bus.round_trip().await.expect("rt");
    let _: JobAccepted =
        bus.request(subject::worker_jobs(&worker.id), &long, Duration::from_secs(5)).await.expect("accepted");
    let first = tokio::time::timeout(Duration::from_secs(20), tokens.next()).await.expect("tokens in time");
    let first: TokenChunk = rpc::decode("t", &first.expect("open").payload).expect("chunk decodes");
    assert_eq!(first.attempt, 7, "the chunk carries the assignment's attempt");
    assert_eq!(first.attempt_key.as_deref(), Some("key-of-attempt-7"), "and its key");

    // A cancel that names another worker (the queen cancelling an abandoned attempt elsewhere) leaves
    // this worker's attempt running.
    let elsewhere =
        JobCancel { worker_id: Some("wrk-elsewhere".parse().expect("id")), ..cancel_of(&long.job_id) };
    bus.publish(subject::job_cancel(&long.job_id), &elsewhere).await.expect("cancel");

    // While it runs: an assignment whose invalid prompt kind holds a line break (`\n` escaped in the
    // JSON), which serde's decode error quotes as is. It gets an error reply and nothing else happens.
    let newline = r#"{"v":1,"job_id":"job-nl2","model_id":"smollm2","prompt":{"kind":"te\nxt","text":"hi"},
        "params":{},"deadline_ms":null}"#;
    let raw = tokio::time::timeout(
        Duration::from_secs(5),
        bus.client().request(subject::worker_jobs(&worker.id), newline.into()),
    )
    .await
    .expect("a reply in time")
    .expect("a reply");
    let err = rpc::decode_reply::<JobAccepted>("x", &raw.payload).expect_err("refused");
    let wire = err.remote().expect("wire error");
    assert_eq!(wire.code(), ErrorCode::BadRequest, "{err:?}");
    assert!(wire.error.message.contains("te\nxt"), "the error quotes the line break: {wire:?}");

    // A deadline too far to add to a clock means no deadline, not a crash.
    let mut forever =
        job(chat("hi"), SamplingParams { max_tokens: 3, temperature: 0.0, ..Default::default() });
    forever.deadline_ms = Some(u64::MAX);
    let got = submit_and_collect(&bus, &worker.id, forever).await.expect("accepted");
    assert!(matches!(got.finished, JobState::Finished { finish_reason: FinishReason::Length, .. }));

    // A cancel that arrives before its assignment (the queen's DELETE while the assignment is in
    // flight) is remembered: the assignment is accepted and ends cancelled at once, generating nothing.
    let mut early =
        job(chat("Tell me a long story."), SamplingParams { max_tokens: 500, ..Default::default() });
    early.attempt = 2;
    bus.publish(subject::job_cancel(&early.job_id), &cancel_of(&early.job_id)).await.expect("cancel");
    bus.round_trip().await.expect("rt");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut early_tokens = bus.client().subscribe(subject::job_tokens(&early.job_id)).await.expect("sub");
    let mut early_status = bus.client().subscribe(subject::job_status(&early.job_id)).await.expect("sub");
    bus.round_trip().await.expect("rt");
    let _: JobAccepted = bus
        .request(subject::worker_jobs(&worker.id), &early, Duration::from_secs(5))
        .await
        .expect("accepted");
    let (states, chunks) = statuses_until_finished(&mut early_status, &mut early_tokens).await;
    assert!(chunks.is_empty(), "a cancelled job generated {} chunks", chunks.len());
    match &states.last().expect("a status").state {
        JobState::Finished { finish_reason, usage, .. } => {
            assert_eq!(*finish_reason, FinishReason::Cancelled);
            assert_eq!(usage.completion_tokens, 0);
        }
        other => panic!("not finished: {other:?}"),
    }
    assert!(states.iter().all(|s| s.attempt == 2), "{states:?}");

    // The long job went on through all of it and ends normally; every chunk and status it published
    // names attempt 7.
    let (states, mut chunks) = statuses_until_finished(&mut status, &mut tokens).await;
    chunks.insert(0, first);
    match &states.last().expect("a status").state {
        JobState::Finished { finish_reason, .. } => {
            assert!(
                !matches!(finish_reason, FinishReason::Error | FinishReason::Cancelled),
                "{finish_reason:?}"
            )
        }
        other => panic!("not finished: {other:?}"),
    }
    assert!(states.iter().all(|s| s.attempt == 7 && s.attempt_key == long.attempt_key), "{states:?}");
    assert!(chunks
        .iter()
        .all(|c| c.attempt == 7 && c.worker_id == worker.id && c.attempt_key == long.attempt_key));
    assert!(chunks.iter().enumerate().all(|(i, c)| c.seq == i as u64), "chunk sequence has gaps");
    // And the worker still heartbeats.
    let idle = wait_for_state(&bus, &worker.id, WorkerState::Idle).await;
    assert_eq!(idle.slots_busy, 0);
}
