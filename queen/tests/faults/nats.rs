//! Faults of the bus: nats-server killed and restarted, the queen alone partitioned from it, and the
//! machine cut off from everything at once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

use rbee_bus::*;
use serde_json::Value;

use crate::events::*;
use crate::harness::*;

/// nats-server killed (SIGKILL) for a second in the middle of a streamed job, then restarted on the
/// same port and store.
///
/// What the user sees: the job's SSE stream (`/v1/jobs/{id}/stream`, served by the queen over HTTP, which
/// the outage does not touch) pauses, then either carries on to a `finished` status (chunks published
/// while the queen was not yet resubscribed may be missing: their `seq` numbers show the gap), or ends
/// with a `finished` status whose `finish_reason` is `error` and whose `error` says what happened; it
/// never hangs, and a worker that did not die is not blamed or fenced. A job that ended during the
/// outage gets its final status even if the queen missed it (looked up in the JetStream history). Every process reconnects by itself; within a few heartbeats `/v1/hives` and `/v1/workers`
/// show the hive and the worker online again, `/health` says `nats: connected`, and the next job
/// succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_killed_and_restarted_mid_stream() {
    let _turn = TURN.lock().await;
    let _logs = LogGuard::new("nats_restart");
    let mut c = Cluster::start(Options::default()).await;
    let (worker_id, _) = c.spawn_worker("hive-f", 2).await;

    // A long job, followed over HTTP from its first token; and a short one that ends during the outage.
    let (status, job) = c.post("/v1/jobs", long_job(200)).await;
    assert_eq!(status, 202, "{job}");
    let job_id = job["job_id"].as_str().expect("id").to_owned();
    let resp = c.http.get(format!("{}/v1/jobs/{job_id}/stream", c.base)).send().await.expect("stream");
    let mut sse = Sse::new(resp);
    let mut seen = JobEvents::default();
    loop {
        let (event, data) =
            tokio::time::timeout(STALL, sse.next()).await.expect("first token in time").expect("stream open");
        if event == "token" {
            seen.chunks.push(serde_json::from_str(&data).expect("chunk"));
            break;
        }
    }
    let (status, short) = c.post("/v1/jobs", long_job(12)).await;
    assert_eq!(status, 202, "{short}");
    let short_id = short["job_id"].as_str().expect("id").to_owned();
    let resp = c.http.get(format!("{}/v1/jobs/{short_id}/stream", c.base)).send().await.expect("stream");
    let mut short_sse = Sse::new(resp);
    let mut short_seen = JobEvents::default();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Pull the plug for two seconds.
    let mut server = c.server.take().expect("server");
    server.kill();
    let outage = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.server = Some(server.restart());
    eprintln!("nats-server was down for {:?}", outage.elapsed());

    // Both in-flight jobs end, one way or the other; neither hangs.
    for (name, sse, seen) in [("long", &mut sse, &mut seen), ("short", &mut short_sse, &mut short_seen)] {
        assert!(
            JobEvents::read_while_progressing(sse, seen, STALL).await,
            "the {name} in-flight job never ended after the nats restart: its stream hangs ({STALL:?} \
             without an event)"
        );
        let last = seen.last_status.clone().expect("the stream ended without a final status event");
        assert_eq!(last["state"], "finished", "{last}");
        match last["finish_reason"].as_str() {
            Some("stop") | Some("length") => eprintln!(
                "{name} in-flight job completed across the outage: {} chunks, contiguous: {:?}, usage {}",
                seen.chunks.len(),
                seen.check_contiguous(),
                last["usage"]["completion_tokens"]
            ),
            Some("error") => {
                let error = last["error"].as_str().unwrap_or_default();
                assert!(!error.is_empty(), "the {name} job failed without saying why: {last}");
                assert!(!error.contains("died"), "the {name} job blames a worker that did not die: {error}");
                eprintln!("{name} in-flight job ended with a clear error: {error}");
            }
            other => panic!("unexpected end of the {name} in-flight job: {other:?} {last}"),
        }
    }

    // Registries recover: hive and worker online again.
    let recovered = c
        .wait_view("hive and worker online after the restart", Duration::from_secs(60), |h, w| {
            online(hive(h, "hive-f")) && online(worker(w, &worker_id))
        })
        .await;
    eprintln!("registries recovered {recovered:?} after the view was first polled post-restart");
    // The queen's own disconnection did not get the (healthy) worker fenced.
    let (_, workers) = c.get("/v1/workers").await;
    let w = worker(&workers, &worker_id).expect("worker listed");
    assert_eq!(w["fenced"], false, "the worker was fenced for the queen's own disconnection: {w}");
    let (status, health) = c.get("/health").await;
    assert_eq!((status, health["nats"].as_str()), (200, Some("connected")), "{health}");

    // New jobs succeed.
    let (status, body) = c.quick_chat().await;
    assert_eq!(status, 200, "a new job after the nats restart failed: {body}");
    assert!(!body["choices"][0]["message"]["content"].as_str().unwrap_or_default().is_empty(), "{body}");
    // And the job history (JetStream, same store) still knows the in-flight job.
    let record = c.job(&job_id).await;
    assert!(record["state"]["phase"].is_string(), "{record}");
    c.stop().await;
}

/// A TCP proxy between the queen and nats-server that the test can cut, to partition the queen alone.
struct Proxy {
    url: String,
    blocked: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream_port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let url = format!("nats://{}", listener.local_addr().expect("addr"));
        let blocked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (b, cs) = (blocked.clone(), conns.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if b.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close
                }
                let handle = tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                cs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(handle.abort_handle());
            }
        });
        Self { url, blocked, conns, task }
    }

    /// Drops every connection and refuses new ones.
    fn cut(&self) {
        self.blocked.store(true, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.blocked.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

/// The queen alone cut off from NATS for three seconds (a partition: nats-server, hive and worker keep
/// running) while a job runs; the job ends during the cut, so the queen misses its last tokens and
/// its final status.
///
/// What the user sees: the job's stream (`/v1/jobs/{id}/stream`) pauses and then ends with the job's
/// real final status (`finished`, `stop`/`length`, with its usage), recovered from the JetStream job
/// history once the queen is back; chunks published during the cut are missing from that stream
/// (a gap in `seq`). The worker, which never stopped, is not blamed, not fenced, and takes the next
/// job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queen_partitioned_from_nats_mid_job() {
    let _turn = TURN.lock().await;
    let _logs = LogGuard::new("queen_partition");
    partition(true).await;
}

/// The same partition, with a queen that keeps no job history (`durable_jobs: false`).
///
/// What the user sees: the stream pauses, and about ten seconds after the partition heals (the grace
/// the queen gives workers to reconnect) it ends with `finish_reason: error` and an error that says
/// what happened ("lost the end of the job: the nats connection was interrupted and worker ... is
/// idle, but its final status never arrived") instead of hanging forever or blaming the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queen_partitioned_without_job_history() {
    let _turn = TURN.lock().await;
    let _logs = LogGuard::new("queen_partition_no_history");
    partition(false).await;
}

async fn partition(durable: bool) {
    let mut c = Cluster::start(Options::default()).await;
    // Replace the queen by one that reaches NATS through the proxy.
    c.queen.take().expect("queen").stop().await;
    let proxy = Proxy::start(c.server.as_ref().expect("server").port()).await;
    let options = Options { durable_jobs: durable, ..Options::default() };
    let (queen, base) = start_queen(&proxy.url, options, c.dir.path(), None).await;
    c.queen = Some(queen);
    c.base = base;
    c.wait_view("the hive in the new queen's view", Duration::from_secs(30), |h, _| {
        online(hive(h, "hive-f"))
    })
    .await;
    let (worker_id, _) = c.spawn_worker("hive-f", 2).await;

    let (status, job) = c.post("/v1/jobs", long_job(40)).await;
    assert_eq!(status, 202, "{job}");
    let job_id = job["job_id"].as_str().expect("id").to_owned();
    let mut statuses = c.bus.client().subscribe(format!("rbee.job.{job_id}.status")).await.expect("sub");
    let mut tokens = c.bus.client().subscribe(format!("rbee.job.{job_id}.tokens")).await.expect("sub");
    c.bus.round_trip().await.expect("rt");
    let resp = c.http.get(format!("{}/v1/jobs/{job_id}/stream", c.base)).send().await.expect("stream");
    let mut sse = Sse::new(resp);
    let mut seen = JobEvents::default();
    loop {
        let (event, data) =
            tokio::time::timeout(STALL, sse.next()).await.expect("first token").expect("open");
        if event == "token" {
            seen.chunks.push(serde_json::from_str(&data).expect("chunk"));
            break;
        }
    }
    proxy.cut();
    let cut = Instant::now();
    // The job ends while the queen cannot hear it (a NATS subscriber can), tokens flowing till then.
    let end = loop {
        tokio::select! {
            Some(msg) = statuses.next() => {
                let s: JobStatus = rpc::decode(&msg.subject, &msg.payload).expect("status");
                if s.state.is_terminal() {
                    break s;
                }
            }
            Some(_) = tokens.next() => {}
            _ = tokio::time::sleep(STALL) => panic!("the job hangs on the worker: {STALL:?} without a token"),
        }
    };
    let left = Duration::from_secs(3).saturating_sub(cut.elapsed());
    tokio::time::sleep(left).await;
    proxy.restore();
    eprintln!("queen partitioned for {:?}; the job ended during the cut: {:?}", cut.elapsed(), end.state);

    assert!(
        JobEvents::read_while_progressing(&mut sse, &mut seen, STALL).await,
        "the job's stream never ended after the partition healed: it hangs"
    );
    let last = seen.last_status.clone().expect("final status");
    if !durable {
        let error = last["error"].as_str().unwrap_or_default();
        assert!(
            last["finish_reason"] == "error" && error.contains("lost the end of the job"),
            "without history the user should get a clear error: {last}"
        );
        eprintln!("stream ended {:?} after the cut with: {error}", cut.elapsed());
    } else {
        check_recovered(&c, &last, &end, &seen, cut).await;
    }
    let wid = worker_id.clone();
    c.wait_view("the worker online and not fenced", Duration::from_secs(30), |_, w| {
        worker(w, &wid).is_some_and(|w| w["liveness"] == "online" && w["fenced"] == false)
    })
    .await;
    let (status, body) = c.quick_chat().await;
    assert_eq!(status, 200, "{body}");
    c.stop().await;
    drop(proxy);
}

async fn check_recovered(c: &Cluster, last: &Value, end: &JobStatus, seen: &JobEvents, cut: Instant) {
    assert!(
        matches!(last["finish_reason"].as_str(), Some("stop" | "length")),
        "the user was not given the job's real end: {last}"
    );
    let JobState::Finished { usage, .. } = &end.state else { unreachable!() };
    assert_eq!(last["usage"]["completion_tokens"], usage.completion_tokens, "{last}");
    eprintln!(
        "stream ended {:?} after the cut with the real final status; {} of {} chunks reached it ({:?})",
        cut.elapsed(),
        seen.chunks.len(),
        usage.completion_tokens,
        seen.check_contiguous()
    );
    assert!(
        log_text().contains("final status recovered from the job history"),
        "not recovered from JetStream"
    );
    let (_, record) = c.get(&format!("/v1/jobs/{}", end.job_id)).await;
    assert_eq!(record["state"]["phase"], "completed", "{record}");
}

/// The machine cut off from everything: nats-server gone, then the hive (binary) killed with SIGKILL.
///
/// What the user sees: no orphan. The worker gets SIGTERM from the kernel when its hive dies, cannot
/// say goodbye over NATS, and exits anyway within seconds, freeing its memory (before the fix, it
/// waited for NATS forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hive_and_nats_lost_together_leave_no_orphan_worker() {
    let _turn = TURN.lock().await;
    let _logs = LogGuard::new("hive_and_nats_lost");
    let mut c = Cluster::start(Options::default()).await;
    let hive_a = start_hive_binary(&c.url(), "hive-a", c.dir.path());
    c.wait_view("hive-a online", Duration::from_secs(60), |h, _| online(hive(h, "hive-a"))).await;
    let (_, pid) = c.spawn_worker("hive-a", 2).await;
    c.queen.take().expect("queen").stop().await;
    c.hive.take().expect("hive").stop().await;
    c.server.take().expect("server").kill();
    tokio::time::sleep(Duration::from_secs(1)).await; // the worker notices and starts reconnecting
    hive_a.stop().await; // SIGKILL
    let killed = Instant::now();
    while process_alive(pid) {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the worker (pid {pid}) of a dead hive with nats gone is still running after 30 s: an orphan"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("the orphaned worker exited {:?} after its hive died", killed.elapsed());
}
