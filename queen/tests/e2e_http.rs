//! End to end over HTTP: a real nats-server, a real hive spawning a real worker on the real model, and
//! the queen in front. Stream and non-stream, chat and completion, errors, jobs, cancel, NATS submit,
//! a worker killed mid-job, and a restarted queen that keeps the view and the job history.

use std::time::{Duration, Instant};

use futures::StreamExt;
use rbee_bus::*;
use rbee_queen::QueenConfig;
use serde_json::{json, Value};

mod cluster;

use cluster::{start_queen, Cluster, MODEL};

/// The queen's settings in these tests.
fn queen_config() -> QueenConfig {
    QueenConfig { queue_timeout: Duration::from_secs(30), ..QueenConfig::default() }
}

async fn start() -> Cluster {
    Cluster::start("hive-e2e", queen_config()).await
}

/// Reads an SSE body into its `data:` payloads (and event names), with the CLI's parser.
async fn sse_events(resp: reqwest::Response) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut reader = rbee_cli::sse::SseReader::new(resp);
    while let Some(event) = reader.next().await.expect("chunk") {
        out.push((event.event, event.data));
    }
    out
}

fn chat(q: &str) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": q}], "temperature": 0, "max_tokens": 40})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_endpoints_jobs_and_failures() {
    let c = start().await;
    c.wait_until("the hive", |h, _| h["hives"].as_array().is_some_and(|a| !a.is_empty())).await;
    let (status, models) = c.get("/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(models["data"][0]["id"], MODEL, "{models}");

    // Errors before anything runs.
    let (status, body) = c
        .post(
            "/v1/chat/completions",
            json!({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found");
    let (status, body) = c
        .post(
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 7}),
        )
        .await;
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("temperature")), "{body}");
    let garbage = c
        .http
        .post(format!("{}/v1/chat/completions", c.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("post");
    assert_eq!(garbage.status().as_u16(), 400);

    // A job while no worker exists: the queen asks the hive to spawn one, then runs it.
    let (status, body) =
        c.post("/v1/chat/completions", chat("What is the capital of France? Answer in one sentence.")).await;
    assert_eq!(status, 200, "{body}");
    let text = body["choices"][0]["message"]["content"].as_str().unwrap_or_default();
    assert!(text.contains("Paris"), "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0, "{body}");
    let (_, workers) = c.get("/v1/workers").await;
    assert_eq!(workers["workers"].as_array().map(Vec::len), Some(1), "{workers}");

    // Streaming chat: OpenAI chunks ending with [DONE].
    let resp = c.http.post(format!("{}/v1/chat/completions", c.base)).json(&json!({"stream": true, "model": MODEL, "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}], "temperature": 0, "max_tokens": 40})).send().await.expect("post");
    assert_eq!(resp.status().as_u16(), 200);
    let events = sse_events(resp).await;
    assert_eq!(events.last().map(|e| e.1.as_str()), Some("[DONE]"));
    let chunks: Vec<Value> = events
        .iter()
        .filter(|e| e.1 != "[DONE]")
        .map(|e| serde_json::from_str(&e.1).expect("chunk json"))
        .collect();
    assert!(chunks.len() >= 3, "{chunks:?}");
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    let streamed: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert!(streamed.contains("Paris"), "{streamed}");
    let last = chunks.last().expect("last");
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert!(last["usage"]["total_tokens"].as_u64().unwrap_or(0) > 0);

    // Completions, plain and streamed.
    let (status, body) = c
        .post(
            "/v1/completions",
            json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert!(!body["choices"][0]["text"].as_str().unwrap_or_default().is_empty());
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    let resp = c
        .http
        .post(format!("{}/v1/completions", c.base))
        .json(&json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 8, "stream": true}))
        .send()
        .await
        .expect("post");
    let events = sse_events(resp).await;
    assert_eq!(events.last().map(|e| e.1.as_str()), Some("[DONE]"));

    // A prompt longer than the worker's context: 413.
    let long = "word ".repeat(6000);
    let (status, body) = c.post("/v1/completions", json!({"model": MODEL, "prompt": long})).await;
    assert_eq!(status, 413, "{body}");

    // rbee jobs: submit, stream, look up.
    let (status, job) = c.post("/v1/jobs", json!({"model": MODEL, "messages": [{"role": "user", "content": "Name a color."}], "max_tokens": 10})).await;
    assert_eq!(status, 202, "{job}");
    let job_id = job["job_id"].as_str().expect("job id").to_owned();
    let resp = c
        .http
        .get(format!("{}{}", c.base, job["sse_url"].as_str().expect("sse url")))
        .send()
        .await
        .expect("stream");
    let events = sse_events(resp).await;
    assert!(events.iter().any(|e| e.0 == "token"), "{events:?}");
    let last: Value = serde_json::from_str(&events.last().expect("events").1).expect("status json");
    assert_eq!(last["state"], "finished", "{last}");
    let (status, record) = c.get(&format!("/v1/jobs/{job_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(record["state"]["phase"], "completed", "{record}");

    // Cancel a long job mid-stream: it ends cancelled and the worker frees the slot.
    let (_, job) = c
        .post("/v1/jobs", json!({"model": MODEL, "messages": [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}], "temperature": 0, "max_tokens": 2000}))
        .await;
    let job_id = job["job_id"].as_str().expect("id").to_owned();
    let resp = c.http.get(format!("{}/v1/jobs/{job_id}/stream", c.base)).send().await.expect("stream");
    let mut body = resp.bytes_stream();
    let _first = body.next().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancel = c.http.delete(format!("{}/v1/jobs/{job_id}", c.base)).send().await.expect("delete");
    assert_eq!(cancel.status().as_u16(), 202);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, record) = c.get(&format!("/v1/jobs/{job_id}")).await;
        if record["state"]["phase"] == "cancelled" {
            break;
        }
        assert!(Instant::now() < deadline, "not cancelled: {record}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A client that disconnects mid-stream cancels its job.
    let resp = c.http.post(format!("{}/v1/chat/completions", c.base)).json(&json!({"stream": true, "model": MODEL, "messages": [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}], "temperature": 0, "max_tokens": 2000})).send().await.expect("post");
    let mut body = resp.bytes_stream();
    let _ = body.next().await;
    drop(body);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, jobs) = c.get("/v1/jobs?limit=1").await;
        if jobs["jobs"][0]["state"]["phase"] == "cancelled" {
            break;
        }
        assert!(Instant::now() < deadline, "disconnect did not cancel: {jobs}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // NATS-native submission.
    let bus = connect(&NatsConfig::url(c.server.url())).await.expect("connect");
    let mine = JobId::new("job-from-nats").expect("id");
    let mut status_sub = bus.client().subscribe(subject::job_status(&mine)).await.expect("sub");
    bus.round_trip().await.expect("rt");
    let submit = SubmitJob {
        v: 1,
        model_id: MODEL.parse().expect("id"),
        prompt: Prompt::Text { text: "Hello".into() },
        params: SamplingParams { max_tokens: 5, ..Default::default() },
        job_id: Some(mine.clone()),
        deadline_ms: None,
        keep_alive_ms: None,
    };
    let reply: SubmitJobReply = bus
        .request(subject::QUEEN_JOBS_SUBMIT.into(), &submit, Duration::from_secs(5))
        .await
        .expect("submitted");
    assert_eq!(reply.job_id, mine);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), status_sub.next())
            .await
            .expect("status")
            .expect("open");
        let s: JobStatus = rpc::decode(&msg.subject, &msg.payload).expect("decodes");
        if s.state.is_terminal() {
            assert!(
                matches!(s.state, JobState::Finished { finish_reason: FinishReason::Length, .. }),
                "{s:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline);
    }
    let raw = bus.client().request(subject::QUEEN_JOBS_SUBMIT, "garbage".into()).await.expect("reply");
    assert_eq!(
        rpc::decode_reply::<SubmitJobReply>("x", &raw.payload)
            .expect_err("refused")
            .remote()
            .map(|e| e.code()),
        Some(ErrorCode::BadRequest)
    );

    // Metrics.
    let metrics =
        c.http.get(format!("{}/metrics", c.base)).send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("rbee_jobs{state=\"completed\"}"), "{metrics}");
    assert!(metrics.contains("rbee_time_to_first_token_seconds_count"));

    // A worker killed mid-job: the job ends with a clear failure (or completes on a retry).
    let (_, workers) = c.get("/v1/workers").await;
    let pid = workers["workers"][0]["pid"].as_u64().expect("pid") as u32;
    let (_, job) = c
        .post("/v1/jobs", json!({"model": MODEL, "messages": [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}], "temperature": 0, "max_tokens": 300}))
        .await;
    let job_id = job["job_id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, record) = c.get(&format!("/v1/jobs/{job_id}")).await;
        if record["state"]["phase"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "never ran: {record}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rbee_daemon::signal::send_to_pid(pid, rbee_daemon::signal::Signal::Kill);
    let deadline = Instant::now() + Duration::from_secs(90);
    let record = loop {
        let (_, record) = c.get(&format!("/v1/jobs/{job_id}")).await;
        if record["state"]["phase"] == "failed" || record["state"]["phase"] == "completed" {
            break record;
        }
        assert!(Instant::now() < deadline, "job never ended after its worker died: {record}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if record["state"]["phase"] == "failed" {
        let reason = record["state"]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("died"), "{record}");
    }

    // A restarted queen has the cluster view within about a second, and the job history.
    let (_, before) = c.get("/v1/jobs?limit=100").await;
    let known = before["jobs"].as_array().map(|a| a.len()).unwrap_or(0);
    c.queen_stop.cancel();
    let _ = c.queen_task.await;
    // The stream an older queen made had no byte or message-size limit: this one sets them.
    let js = async_nats::jetstream::new(async_nats::connect(c.server.url()).await.expect("nats"));
    let mut unbounded = rbee_queen::jobs::store::stream_config(&queen_config());
    (unbounded.max_bytes, unbounded.max_message_size) = (-1, -1);
    js.update_stream(unbounded).await.expect("an unbounded history stream");
    let (stop, _task, base) = start_queen(&c.server, queen_config()).await;
    let restarted = Instant::now();
    let http = reqwest::Client::new();
    loop {
        let hives: Value =
            http.get(format!("{base}/v1/hives")).send().await.expect("hives").json().await.expect("json");
        if hives["hives"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        assert!(restarted.elapsed() < Duration::from_secs(5), "the restarted queen has no view after 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen_after = restarted.elapsed();
    let after: Value =
        http.get(format!("{base}/v1/jobs?limit=100")).send().await.expect("jobs").json().await.expect("json");
    assert!(after["jobs"].as_array().map(|a| a.len()).unwrap_or(0) >= known.min(5), "history lost: {after}");
    let record: Value = http
        .get(format!("{base}/v1/jobs/job-from-nats"))
        .send()
        .await
        .expect("job")
        .json()
        .await
        .expect("json");
    assert_eq!(record["state"]["phase"], "completed", "{record}");
    let health: Value =
        http.get(format!("{base}/health")).send().await.expect("health").json().await.expect("json");
    assert_eq!(health["job_history"]["complete"], true, "{health}");
    assert!(health["job_history"]["events"].as_u64().unwrap_or(0) >= known as u64, "{health}");
    let mut stream = js.get_stream(rbee_queen::jobs::store::STREAM).await.expect("stream");
    let bounds = stream.info().await.expect("stream info").config.clone();
    assert_eq!(bounds.max_bytes, QueenConfig::default().job_history_max_bytes as i64);
    assert_eq!(bounds.max_message_size, rbee_bus::rpc::MAX_MESSAGE_BYTES as i32);
    eprintln!("restarted queen saw the cluster after {seen_after:?}, history {}", health["job_history"]);
    stop.cancel();
    c.hive_stop.cancel();
}

/// The worker that ran a job, from the job's record.
async fn job_worker(c: &Cluster, body: &Value) -> String {
    let id = body["id"].as_str().unwrap_or_default().trim_start_matches("chatcmpl-").to_owned();
    let (status, job) = c.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(status, 200, "{job}");
    job["worker_id"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_turns_go_to_the_worker_that_holds_the_conversation() {
    let c = start().await;
    c.wait_until("the hive with the model", |hives, _| hives.to_string().contains(MODEL)).await;
    for _ in 0..2 {
        let (status, body) =
            c.post("/v1/workers", json!({"model": MODEL, "hive": "hive-e2e", "slots": 2})).await;
        assert!(status < 300, "spawn: {status} {body}");
    }
    c.wait_until("two idle workers", |_, workers| {
        workers["workers"].as_array().is_some_and(|w| {
            w.len() == 2 && w.iter().all(|w| w["state"] == "idle" && w["liveness"] == "online")
        })
    })
    .await;
    let system = json!({"role": "system", "content": "You are a concise geography tutor. Answer in one sentence and name the continent."});
    let turn = |history: &Vec<Value>| json!({"model": MODEL, "messages": history, "temperature": 0, "max_tokens": 24});
    let a = vec![system.clone(), json!({"role": "user", "content": "What is the capital of France?"})];
    let b = vec![system, json!({"role": "user", "content": "What is the capital of Japan?"})];
    // Sent together, the first turns land on different workers (the second placement sees the first's
    // reserved slot).
    let ((sa, a1), (sb, b1)) =
        tokio::join!(c.post("/v1/chat/completions", turn(&a)), c.post("/v1/chat/completions", turn(&b)));
    assert_eq!((sa, sb), (200, 200), "{a1} {b1}");
    let (wa, wb) = (job_worker(&c, &a1).await, job_worker(&c, &b1).await);
    assert_ne!(wa, wb, "the first turns should have gone to different workers");
    // Let both heartbeats carry what the slots now hold.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut conversations = [(a, a1, wa), (b, b1, wb)];
    let questions = [
        "And which river flows through it?",
        "Name a large port of that country.",
        "And its highest mountain?",
    ];
    for question in questions {
        for (history, last, worker) in conversations.iter_mut() {
            history.push(
                json!({"role": "assistant", "content": last["choices"][0]["message"]["content"].clone()}),
            );
            history.push(json!({"role": "user", "content": question}));
            let (status, body) = c.post("/v1/chat/completions", turn(history)).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(
                &job_worker(&c, &body).await,
                worker,
                "the conversation moved to another worker: {body}"
            );
            let cached = body["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0);
            assert!(cached > 20, "the turn reused only {cached} tokens: {body}");
            *last = body;
        }
        // Let the heartbeats carry what the slots now hold.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    c.hive_stop.cancel();
    c.queen_stop.cancel();
}
