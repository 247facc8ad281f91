//! Two queens with real processes on loopback: a nats-server with JetStream, queens `qa` and `qb`
//! (the `rbee-queen` binary), a hive (the `rbee-hive` binary) with one SmolLM2 worker of one slot.
//! The leader is SIGKILLed mid-stream: the standby's HTTP client and a NATS subscriber both see their
//! streams complete, and a job queued at the kill is served by the new leader. Then the new leader
//! is paused (SIGSTOP, as a partitioned machine would be) while a job waits: the other queen takes
//! over and places it, the paused one resumes as a standby, and the job ran exactly once; an order
//! with the old fence is refused by the worker and the hive.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rbee_bus::*;
use serde_json::{json, Value};

const MODEL: &str = "smollm2";
/// Short, so the test waits little; the bound asserted below follows from it.
const LEASE_MS: u64 = 1500;

struct Daemon {
    child: Child,
}

impl Daemon {
    fn signal(&self, sig: &str) {
        let status = Command::new("kill").args([sig, &self.child.id().to_string()]).status().expect("kill");
        assert!(status.success(), "kill {sig}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.child.id().to_string()]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn queen(url: &str, id: &str, port: u16, dir: &std::path::Path) -> Daemon {
    let log = std::fs::File::create(dir.join(format!("{id}.log"))).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_rbee-queen"))
        .args(["--http-addr", &format!("127.0.0.1:{port}"), "--nats-url", url, "--queen-id", id])
        .args(["--lease-ms", &LEASE_MS.to_string()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start rbee-queen");
    Daemon { child }
}

fn hive(url: &str, dir: &std::path::Path) -> Daemon {
    let log = std::fs::File::create(dir.join("h1.log")).expect("log");
    let child = Command::new(rbee_testkit::paths::cargo_bin("rbee-hive"))
        .args(["--hive-id", "h1", "--catalog-dir"])
        .arg(dir.join("h1"))
        .arg("--worker-bin")
        .arg(rbee_testkit::paths::cargo_bin("rbee-worker"))
        .arg("--import-model")
        .arg(format!("{}={MODEL}", rbee_testkit::paths::require_default_model().display()))
        .args(["--heartbeat-ms", "250", "--nats-url", url])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start rbee-hive");
    Daemon { child }
}

fn rbee(queens: &str, args: &[&str]) -> std::process::Output {
    Command::new(rbee_testkit::paths::cargo_bin("rbee"))
        .arg("--queen")
        .arg(queens)
        .args(args)
        .env_remove("RBEE_CONFIG")
        .env_remove("RBEE_QUEEN_URL")
        .output()
        .expect("run rbee")
}

async fn get(http: &reqwest::Client, url: String) -> Option<Value> {
    http.get(url).send().await.ok()?.json().await.ok()
}

async fn role(http: &reqwest::Client, base: &str) -> Option<String> {
    let health = get(http, format!("{base}/health")).await?;
    health["leader"]["role"].as_str().map(str::to_owned)
}

async fn wait_for_role(http: &reqwest::Client, base: &str, want: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if role(http, base).await.as_deref() == Some(want) {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{base} is not {want} after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn fence_of(http: &reqwest::Client, base: &str) -> u64 {
    get(http, format!("{base}/health")).await.expect("health")["leader"]["fence"].as_u64().expect("fence")
}

/// Subscribes to a job's status and tokens, submits it over NATS, and returns its events until the
/// final status: (states in order, the text, the final state).
async fn nats_job(
    bus: &Bus,
    prompt: &str,
    max_tokens: u32,
) -> (JobId, tokio::task::JoinHandle<(Vec<JobStatus>, String)>) {
    let job_id = JobId::generate();
    let mut statuses = bus.client().subscribe(subject::job_status(&job_id)).await.expect("sub");
    let mut tokens = bus.client().subscribe(subject::job_tokens(&job_id)).await.expect("sub");
    bus.round_trip().await.expect("rt");
    let submit = SubmitJob {
        v: SCHEMA_VERSION,
        model_id: MODEL.parse().expect("id"),
        prompt: Prompt::Text { text: prompt.to_owned() },
        params: SamplingParams { max_tokens, temperature: 0.0, ..Default::default() },
        job_id: Some(job_id.clone()),
        deadline_ms: None,
        keep_alive_ms: None,
    };
    let reply: SubmitJobReply = bus
        .request(subject::QUEEN_JOBS_SUBMIT.to_owned(), &submit, Duration::from_secs(20))
        .await
        .expect("the leader takes the job over nats");
    assert_eq!(reply.job_id, job_id);
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut text = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => panic!("job did not end: {seen:?}"),
                Some(msg) = statuses.next() => {
                    let status: JobStatus = serde_json::from_slice(&msg.payload).expect("status");
                    let end = status.state.is_terminal();
                    seen.push(status);
                    if end {
                        // Chunks published before the final status are in already (one server).
                        while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(200), tokens.next()).await {
                            let chunk: TokenChunk = serde_json::from_slice(&msg.payload).expect("chunk");
                            text.push_str(&chunk.text);
                        }
                        return (seen, text);
                    }
                }
                Some(msg) = tokens.next() => {
                    let chunk: TokenChunk = serde_json::from_slice(&msg.payload).expect("chunk");
                    text.push_str(&chunk.text);
                }
            }
        }
    });
    (job_id, task)
}

fn finished_ok(statuses: &[JobStatus]) -> bool {
    matches!(
        statuses.last().map(|s| &s.state),
        Some(JobState::Finished { finish_reason: FinishReason::Stop | FinishReason::Length, .. })
    )
}

fn accepted_count(statuses: &[JobStatus]) -> usize {
    statuses.iter().filter(|s| matches!(s.state, JobState::Accepted { .. })).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_takes_over_mid_stream_and_a_paused_old_leader_is_fenced() {
    let server = rbee_testkit::NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().expect("dir");
    let http = reqwest::Client::new();
    let (pa, pb) = (rbee_testkit::nats::free_port(), rbee_testkit::nats::free_port());
    let (a, b) = (format!("http://127.0.0.1:{pa}"), format!("http://127.0.0.1:{pb}"));
    let qa = queen(&url, "qa", pa, dir.path());
    wait_for_role(&http, &a, "leader", Duration::from_secs(30)).await;
    let qb = queen(&url, "qb", pb, dir.path());
    wait_for_role(&http, &b, "standby", Duration::from_secs(30)).await;
    let _hive = hive(&url, dir.path());
    let bus = connect(&NatsConfig::url(&url)).await.expect("connect");

    // One worker of one slot, asked of the leader; the standby refuses to administer, naming it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let spawned = loop {
        let r = http.post(format!("{a}/v1/workers")).json(&json!({"model": MODEL, "slots": 1})).send().await;
        if let Ok(r) = r {
            if r.status().is_success() {
                break r.json::<Value>().await.expect("spawn reply");
            }
        }
        assert!(Instant::now() < deadline, "no worker spawned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let worker_id: WorkerId = spawned["worker_id"].as_str().expect("worker id").parse().expect("id");
    let refused =
        http.post(format!("{b}/v1/workers")).json(&json!({"model": MODEL})).send().await.expect("post");
    assert_eq!(refused.status(), 503);
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "not_leader", "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("qa"), "{body}");
    // The standby's read-only view is warm.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let workers = get(&http, format!("{b}/v1/workers")).await.unwrap_or_default();
        let ready = workers["workers"].as_array().into_iter().flatten().any(|w| {
            w["worker_id"] == worker_id.as_str() && w["state"] == "idle" && w["liveness"] == "online"
        });
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "the standby never listed the ready worker: {workers}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A long answer through the standby's HTTP (it forwards to the leader and relays the tokens).
    let mut first_token = bus.client().subscribe(subject::JOB_TOKENS_ALL).await.expect("sub");
    bus.round_trip().await.expect("rt");
    let chat = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a long story about a dragon and a knight."}],
        "max_tokens": 160, "temperature": 0
    });
    let via_standby = {
        let (http, b, chat) = (http.clone(), b.clone(), chat.clone());
        tokio::spawn(async move {
            let r = http.post(format!("{b}/v1/chat/completions")).json(&chat).send().await.expect("post");
            (r.status(), r.json::<Value>().await.expect("json"))
        })
    };
    tokio::time::timeout(Duration::from_secs(60), first_token.next())
        .await
        .expect("a first token")
        .expect("msg");
    drop(first_token);
    // A job submitted over NATS waits behind it (one slot).
    let (queued_id, queued) = nats_job(&bus, "The capital of France is", 12).await;
    let leader_fence = fence_of(&http, &a).await;

    // The leader dies.
    let killed = Instant::now();
    qa.signal("-KILL");
    let takeover = wait_for_role(&http, &b, "leader", Duration::from_secs(20)).await;
    eprintln!("takeover after SIGKILL: {} ms (lease {LEASE_MS} ms)", takeover.as_millis());
    assert!(takeover <= Duration::from_millis(LEASE_MS * 3), "takeover took {takeover:?}");
    assert!(fence_of(&http, &b).await > leader_fence, "the new term has a higher fence");

    let (status, answer) =
        tokio::time::timeout(Duration::from_secs(240), via_standby).await.expect("answer").expect("task");
    assert_eq!(status, 200, "{answer}");
    let text = answer["choices"][0]["message"]["content"].as_str().expect("content").to_owned();
    assert_eq!(answer["usage"]["completion_tokens"], 160, "{answer}");
    eprintln!(
        "the standby's client got {} chars, {} s after the kill",
        text.len(),
        killed.elapsed().as_secs_f32()
    );
    let (statuses, queued_text) =
        tokio::time::timeout(Duration::from_secs(240), queued).await.expect("queued job").expect("task");
    assert!(finished_ok(&statuses), "the job queued at the kill was served: {statuses:?}");
    assert!(queued_text.contains("Paris"), "{queued_text:?}");
    assert_eq!(accepted_count(&statuses), 1, "placed once: {statuses:?}");
    let _ = queued_id;

    // The same request again, now to the new leader: greedy text equal to the one that lived
    // through the takeover.
    let again: Value = http
        .post(format!("{b}/v1/chat/completions"))
        .json(&chat)
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    assert_eq!(again["choices"][0]["message"]["content"].as_str(), Some(text.as_str()), "same greedy text");

    // The CLI with both addresses: the dead one is skipped.
    let both = format!("{a},{b}");
    let out = rbee(&both, &["workers", "ls"]);
    assert!(out.status.success(), "rbee --queen {both} workers: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(worker_id.as_str()));

    // qa comes back as a standby; then qb (the leader) is paused while a job waits behind another.
    let qa = queen(&url, "qa", pa, dir.path());
    wait_for_role(&http, &a, "standby", Duration::from_secs(30)).await;
    // An administrative command goes on from the standby (not_leader) to the leader.
    let out = rbee(&both, &["hives", "undrain", "h1"]);
    assert!(
        out.status.success(),
        "rbee --queen {both} hives undrain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let old_fence = fence_of(&http, &b).await;
    let (_long_id, long) = nats_job(&bus, "Once upon a time, in a land far away,", 120).await;
    let (waiting_id, waiting) = nats_job(&bus, "The capital of France is", 12).await;
    qb.signal("-STOP");
    let paused = Instant::now();
    wait_for_role(&http, &a, "leader", Duration::from_secs(20)).await;
    eprintln!("takeover from a paused leader: {} ms", paused.elapsed().as_millis());
    let new_fence = fence_of(&http, &a).await;
    assert!(new_fence > old_fence);
    qb.signal("-CONT");
    wait_for_role(&http, &b, "standby", Duration::from_secs(10)).await;

    let (statuses, _) =
        tokio::time::timeout(Duration::from_secs(240), long).await.expect("long job").expect("task");
    assert!(finished_ok(&statuses), "{statuses:?}");
    let (statuses, text) =
        tokio::time::timeout(Duration::from_secs(240), waiting).await.expect("waiting job").expect("task");
    assert!(finished_ok(&statuses), "{statuses:?}");
    assert_eq!(accepted_count(&statuses), 1, "the job waiting at the pause ran exactly once: {statuses:?}");
    assert!(text.contains("Paris"), "{text:?}");

    // Orders with the old fence are refused where the new leader's hello arrived.
    let mut stale = JobAssignment::new(
        waiting_id.clone(),
        MODEL.parse().expect("id"),
        Prompt::Text { text: "hi".into() },
        SamplingParams::default(),
    );
    stale.job_id = JobId::generate();
    stale.fence = Some(old_fence);
    let refused: Result<JobAccepted, BusError> =
        bus.request(subject::worker_jobs(&worker_id), &stale, Duration::from_secs(5)).await;
    match refused {
        Err(BusError::Remote { error, .. }) => assert_eq!(error.code(), ErrorCode::Fenced, "{error:?}"),
        other => panic!("a stale assignment was not refused: {other:?}"),
    }
    let stop = StopRequest {
        v: SCHEMA_VERSION,
        worker_id: worker_id.clone(),
        deadline_ms: None,
        fence: Some(old_fence),
    };
    let refused: Result<StopReply, BusError> =
        bus.request(subject::hive_stop(&"h1".parse().expect("id")), &stop, Duration::from_secs(5)).await;
    match refused {
        Err(BusError::Remote { error, .. }) => assert_eq!(error.code(), ErrorCode::Fenced, "{error:?}"),
        other => panic!("a stale stop was not refused: {other:?}"),
    }
    drop(qa);
    drop(qb);
}
