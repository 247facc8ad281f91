//! Processes killed without warning: a worker mid-job, the queen mid-job, a hive while another serves
//! the same model.

use std::time::{Duration, Instant};

use futures::StreamExt;

use rbee_bus::*;
use serde_json::{json, Value};

use crate::events::*;
use crate::harness::*;

/// A worker killed with SIGKILL in the middle of a job.
///
/// What the user sees: the stream goes on. The queen publishes a `migrating` status, places the job
/// on another worker (the hive starts one) with what was streamed so far, and the client's stream
/// continues with no duplicate and no missing text: at temperature 0 the whole answer equals the one
/// an uninterrupted run gives, `seq` and `total_tokens` run on without a gap, and usage counts each
/// token once. `GET /v1/jobs/{id}` says `completed` with `migrations: 1`. The hive reports the crash: a
/// `failed` lifecycle event on `rbee.worker.<id>.lifecycle` with `signal: 9 (SIGKILL)` and the worker
/// listed as failed by `rbee.hive.<id>.workers`. The worker leaves the queen's view within about the
/// offline threshold, and the next job succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_sigkilled_mid_job() {
    let _turn = TURN.lock().await;
    let _logs = LogGuard::new("worker_sigkill");
    let c = Cluster::start(Options::default()).await;
    let mut lifecycle = c.bus.client().subscribe(subject::WORKER_LIFECYCLE_ALL).await.expect("sub");
    c.bus.round_trip().await.expect("rt");
    let (worker_id, pid) = c.spawn_worker("hive-f", 2).await;

    // The answer without a fault, from the same worker.
    let (status, reference) = c.post("/v1/chat/completions", long_job(160)).await;
    assert_eq!(status, 200, "{reference}");
    let expected = reference["choices"][0]["message"]["content"].as_str().expect("text").to_owned();
    let expected_tokens = reference["usage"]["completion_tokens"].as_u64().expect("usage");

    let job_id = "job-sigkill".to_owned();
    let mut tokens = c.bus.client().subscribe(format!("rbee.job.{job_id}.tokens")).await.expect("sub");
    c.bus.round_trip().await.expect("rt");
    let mut body = long_job(160);
    body["job_id"] = json!(job_id);
    let (status, job) = c.post("/v1/jobs", body).await;
    assert_eq!(status, 202, "{job}");
    let resp = c.http.get(format!("{}/v1/jobs/{job_id}/stream", c.base)).send().await.expect("stream");
    let client = tokio::spawn(async move {
        let mut sse = Sse::new(resp);
        let (mut seen, mut statuses) = (JobEvents::default(), Vec::new());
        while let Some((event, data)) =
            tokio::time::timeout(Duration::from_secs(60), sse.next()).await.ok().flatten()
        {
            if event == "status" {
                statuses.push(serde_json::from_str::<Value>(&data).unwrap_or(Value::Null));
            }
            if seen.take(&event, &data) {
                break;
            }
        }
        (seen, statuses)
    });
    // Kill it once tokens flow.
    for _ in 0..3 {
        tokio::time::timeout(STALL, tokens.next()).await.expect("tokens flow before the kill").expect("open");
    }
    rbee_daemon::signal::send_to_pid(pid, rbee_daemon::signal::Signal::Kill);
    let killed = Instant::now();

    // Out of the view.
    let wid = worker_id.clone();
    let gone = c
        .wait_view("the killed worker out of the queen's view", Duration::from_secs(30), |_, w| {
            worker(w, &wid).is_none_or(|w| w["liveness"] != "online" || w["assignable"] == false)
        })
        .await;
    eprintln!("killed worker out of the view after {gone:?} (offline threshold {OFFLINE_AFTER:?})");

    // The client's stream went on to the end: the same text as without the fault, nothing twice.
    let (seen, statuses) =
        tokio::time::timeout(Duration::from_secs(120), client).await.expect("stream ends").expect("client");
    eprintln!("stream ended {:?} after the kill", killed.elapsed());
    let last = seen.last_status.clone().expect("final status");
    assert_eq!(last["finish_reason"], "length", "the migrated job did not complete: {last}");
    let text: String = seen.chunks.iter().map(|c| c["text"].as_str().unwrap_or_default()).collect();
    assert_eq!(text, expected, "the migrated answer differs from the uninterrupted one");
    let total = seen.check_contiguous().expect("seq and total_tokens run on across the migration");
    assert_eq!(u64::from(total), expected_tokens, "tokens counted once");
    assert_eq!(last["usage"]["completion_tokens"].as_u64(), Some(expected_tokens), "{last}");
    let workers: std::collections::BTreeSet<&str> =
        seen.chunks.iter().filter_map(|c| c["worker_id"].as_str()).collect();
    assert!(workers.len() == 2 && workers.contains(worker_id.as_str()), "chunks came from {workers:?}");
    let migrating = statuses.iter().find(|s| s["state"] == "migrating").expect("a migrating status");
    assert_eq!(migrating["from_worker"], json!(worker_id), "{migrating}");
    let (_, record) = c.get(&format!("/v1/jobs/{job_id}")).await;
    assert_eq!(record["state"]["phase"], "completed", "{record}");
    assert_eq!(record["migrations"], 1, "{record}");

    // The hive reports the crash.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let msg = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), lifecycle.next())
            .await
            .expect("no lifecycle event reported the crash")
            .expect("open");
        let event: WorkerLifecycle = rpc::decode(&msg.subject, &msg.payload).expect("lifecycle decodes");
        if event.worker_id.as_str() == worker_id {
            if let LifecycleEvent::Failed { exit, .. } = &event.event {
                assert!(exit.contains("SIGKILL"), "{event:?}");
                break;
            }
        }
    }
    let list: WorkerList = c
        .bus
        .request(subject::hive_workers(&c.hive_id), &ListRequest { v: 1 }, Duration::from_secs(5))
        .await
        .expect("hive listing");
    let entry = list.workers.iter().find(|w| w.worker_id.as_str() == worker_id).expect("listed");
    let shown = serde_json::to_string(entry).expect("json");
    assert!(
        shown.contains("failed") && shown.contains("SIGKILL"),
        "the hive does not report the crash: {shown}"
    );

    // The next job succeeds (the queen starts another worker).
    let (status, body) = c.quick_chat().await;
    assert_eq!(status, 200, "a job after the crash failed: {body}");
    c.stop().await;
}

/// The queen (the `rbee-queen` binary) killed with SIGKILL mid-job and started again.
///
/// What the user sees: a NATS subscriber of `rbee.job.<id>.tokens` keeps receiving tokens while no
/// queen runs, and then the job's final status; no chunk is lost (seq contiguous, token counts add up
/// to `usage.completion_tokens`). The restarted queen lists the hive and the worker at once (hello) and
/// knows the job (`GET /v1/jobs/{id}`, from the JetStream history), and records its completion. An
/// HTTP client of the old queen loses its connection (the old process is gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queen_killed_and_restarted_mid_job() {
    let _turn = TURN.lock().await;
    let _logs = LogGuard::new("queen_restart");
    let options = Options { queen_binary: true, ..Options::default() };
    let mut c = Cluster::start(options).await;
    let (worker_id, _) = c.spawn_worker("hive-f", 2).await;
    let job_id = JobId::new("job-queen-restart").expect("id");
    let mut tokens = c.bus.client().subscribe(subject::job_tokens(&job_id)).await.expect("sub");
    let mut statuses = c.bus.client().subscribe(subject::job_status(&job_id)).await.expect("sub");
    c.bus.round_trip().await.expect("rt");
    let (status, body) = c
        .post("/v1/jobs", {
            let mut body = long_job(200);
            body["job_id"] = json!(job_id);
            body
        })
        .await;
    assert_eq!(status, 202, "{body}");
    let mut chunks: Vec<TokenChunk> = Vec::new();
    let first = tokio::time::timeout(STALL, tokens.next()).await.expect("first token").expect("open");
    chunks.push(rpc::decode(&first.subject, &first.payload).expect("chunk"));

    let port: u16 = c.base.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    c.queen.take().expect("queen").stop().await; // SIGKILL
    let before = chunks.len();
    let down = Instant::now();
    // At least one chunk (decode may crawl on a loaded machine), then whatever a second brings.
    let msg = tokio::time::timeout(STALL, tokens.next())
        .await
        .expect("no token reached the NATS subscriber while the queen was down")
        .expect("open");
    chunks.push(rpc::decode(&msg.subject, &msg.payload).expect("chunk"));
    let window = Instant::now() + Duration::from_secs(1);
    while let Ok(Some(msg)) =
        tokio::time::timeout(window.saturating_duration_since(Instant::now()), tokens.next()).await
    {
        chunks.push(rpc::decode(&msg.subject, &msg.payload).expect("chunk"));
    }
    eprintln!("queen down for {:?} so far", down.elapsed());
    eprintln!("{} chunks arrived while no queen ran", chunks.len() - before);

    let restarted = Instant::now();
    let (queen, base) = start_queen(&c.url(), options, c.dir.path(), Some(port)).await;
    c.queen = Some(queen);
    c.base = base;
    let wid = worker_id.clone();
    let seen = c
        .wait_view("the restarted queen to know the cluster", Duration::from_secs(30), |h, w| {
            online(hive(h, "hive-f")) && online(worker(w, &wid))
        })
        .await;
    eprintln!(
        "restarted queen knew the cluster {:?} after start ({seen:?} after it answered)",
        restarted.elapsed()
    );
    let record = c.job(job_id.as_str()).await;
    assert_eq!(record["job_id"], job_id.as_str(), "the restarted queen does not know the job: {record}");

    // Tokens keep flowing to the end; the final status arrives.
    let finished: JobStatus = loop {
        tokio::select! {
            Some(msg) = tokens.next() => chunks.push(rpc::decode(&msg.subject, &msg.payload).expect("chunk")),
            Some(msg) = statuses.next() => {
                let s: JobStatus = rpc::decode(&msg.subject, &msg.payload).expect("status");
                if s.state.is_terminal() { break s; }
            }
            _ = tokio::time::sleep(STALL) => {
                panic!("the job never finished after the queen restart: {STALL:?} without a token")
            }
        }
    };
    // Tokens published before the status are delivered before it (one publisher); drain stragglers.
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(200), tokens.next()).await {
        chunks.push(rpc::decode(&msg.subject, &msg.payload).expect("chunk"));
    }
    let JobState::Finished { finish_reason, usage, .. } = &finished.state else { unreachable!() };
    assert!(matches!(finish_reason, FinishReason::Stop | FinishReason::Length), "{finished:?}");
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.seq, i as u64, "a token chunk was lost or reordered around the queen restart");
    }
    let sum: u32 = chunks.iter().map(|c| c.tokens).sum();
    assert_eq!(
        sum, usage.completion_tokens,
        "tokens lost: chunks add up to {sum}, usage says {}",
        usage.completion_tokens
    );

    // The restarted queen records the completion.
    let what = "the restarted queen never saw the job complete";
    c.wait_job(job_id.as_str(), Duration::from_secs(20), what, |record| {
        record["state"]["phase"] == "completed"
    })
    .await;
    let (status, body) = c.quick_chat().await;
    assert_eq!(status, 200, "a job on the restarted queen failed: {body}");
    c.stop().await;
}

/// A hive (the `rbee-hive` binary) killed with SIGKILL, without a goodbye, while a second hive serves
/// the same model.
///
/// What the user sees: in `/v1/hives` the dead hive goes offline (then disappears), in `/v1/workers`
/// its workers go offline or disappear (on Linux they get SIGTERM when their hive dies and say they
/// stopped); jobs keep succeeding, all of them on the surviving hive, and the queen asks the dead hive
/// for nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hive_killed_without_warning() {
    let _turn = TURN.lock().await;
    let _logs = LogGuard::new("hive_killed");
    let c = Cluster::start(Options::default()).await;
    // A second hive, as its own process.
    let hive_a = start_hive_binary(&c.url(), "hive-a", c.dir.path());
    c.wait_view("hive-a online", Duration::from_secs(60), |h, _| online(hive(h, "hive-a"))).await;
    let (worker_a, pid_a) = c.spawn_worker("hive-a", 2).await;
    let (worker_f, _) = c.spawn_worker("hive-f", 2).await;
    let mut asked = c.bus.client().subscribe("rbee.hive.hive-a.>").await.expect("sub");
    c.bus.round_trip().await.expect("rt");

    hive_a.stop().await; // SIGKILL
    let killed = Instant::now();
    let wa = worker_a.clone();
    let out = c
        .wait_view("hive-a and its worker out of the view", Duration::from_secs(30), |h, w| {
            !online(hive(h, "hive-a")) && !online(worker(w, &wa))
        })
        .await;
    eprintln!(
        "dead hive and its worker out of the view {:?} after the kill ({out:?} polling)",
        killed.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while process_alive(pid_a) {
        assert!(Instant::now() < deadline, "the worker of the killed hive is still running (pid {pid_a})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Nothing is scheduled there: every job runs on hive-f's worker.
    for i in 0..3 {
        let (status, body) = c
            .post("/v1/jobs", json!({"model": MODEL, "prompt": format!("Count to {i}."), "max_tokens": 6}))
            .await;
        assert_eq!(status, 202, "{body}");
        let id = body["job_id"].as_str().expect("id").to_owned();
        let resp = c.http.get(format!("{}/v1/jobs/{id}/stream", c.base)).send().await.expect("stream");
        let mut sse = Sse::new(resp);
        let mut seen = JobEvents::default();
        assert!(JobEvents::read_while_progressing(&mut sse, &mut seen, STALL).await, "job {i} hangs");
        let last = seen.last_status.expect("final status");
        assert!(matches!(last["finish_reason"].as_str(), Some("stop" | "length")), "{last}");
        // On hive-f: the worker spawned at the start, or one the queen added there.
        let ran_on = last["worker_id"].as_str().unwrap_or_default().to_owned();
        let (_, workers) = c.get("/v1/workers").await;
        let hive_of = worker(&workers, &ran_on).map(|w| w["hive_id"].clone());
        assert!(
            ran_on == worker_f || hive_of == Some(json!("hive-f")),
            "job {i} ran on {ran_on} (hive {hive_of:?}) after hive-a died"
        );
    }
    // The queen sent nothing to the dead hive (the heartbeats it will never answer aside).
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(200), asked.next()).await {
        assert!(msg.subject.ends_with(".heartbeat"), "the queen asked the dead hive: {}", msg.subject);
    }
    c.stop().await;
}
