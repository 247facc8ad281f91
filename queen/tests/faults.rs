//! Faults injected into a running cluster with the real model: a real nats-server, a real hive (in
//! process or as the `rbee-hive` binary), real `rbee-worker` processes on SmolLM2, and the queen (in
//! process or as the `rbee-queen` binary). Each test says, in a comment and in its assertion messages,
//! what the user sees.
//!
//! They run in `make test` (`make test-faults` runs them alone). The tests take turns (one cluster at a
//! time: two cores), use short heartbeats (250 ms) and small `max_tokens`, and never assert absolute
//! timings: measured times are printed, and waits are generous. A wait on a job that is generating is
//! on its progress, not its total time: it gives up when no event came for [`STALL`] (a hang), not when
//! a loaded machine decodes slowly.
//! Logs of the in-process parts are captured (and written to `$TMPDIR/rbee-faults-<test>.log`); the
//! binaries log to files in the test's temp dir.

use std::io::Write as _;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use rbee_bus::*;
use rbee_hive::{HiveConfig, ModelImport};
use rbee_queen::QueenConfig;
use rbee_testkit::NatsServer;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const MODEL: &str = "smollm2";
const HEARTBEAT: Duration = Duration::from_millis(250);
/// The queen calls a worker offline after 3 silent heartbeat intervals.
const OFFLINE_AFTER: Duration = Duration::from_millis(750);

/// A job whose stream shows no event for this long is hung (a loaded machine decodes slowly, but
/// steadily).
const STALL: Duration = Duration::from_secs(60);

/// One cluster at a time.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ----- captured logs ------------------------------------------------------------------------------------

fn logs() -> &'static rbee_testkit::logs::CapturedLogs {
    rbee_testkit::logs::capture("info,rbee_bus=info,async_nats=warn,hyper=warn,reqwest=warn")
}

fn log_text() -> String {
    logs().text()
}

/// Clears the captured logs at the start of a test and writes them to a file when it ends (or fails).
struct LogGuard(&'static str);

impl LogGuard {
    fn new(test: &'static str) -> Self {
        logs().clear();
        Self(test)
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        let path = std::env::temp_dir().join(format!("rbee-faults-{}.log", self.0));
        if let Ok(mut f) = std::fs::File::create(&path) {
            let _ = f.write_all(log_text().as_bytes());
        }
        eprintln!("{}: captured logs in {}", self.0, path.display());
    }
}

// ----- the cluster --------------------------------------------------------------------------------------

enum Proc {
    InProcess { stop: CancellationToken, task: tokio::task::JoinHandle<anyhow::Result<()>> },
    Binary(Child),
}

impl Proc {
    /// SIGKILL for a binary; a clean stop for an in-process one.
    async fn stop(self) {
        match self {
            Proc::InProcess { stop, task } => {
                stop.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
            }
            Proc::Binary(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

#[derive(Clone, Copy)]
struct Options {
    queue_capacity: usize,
    queue_timeout: Duration,
    queen_binary: bool,
    /// Job history in JetStream (in-process queens only).
    durable_jobs: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            queue_capacity: 256,
            queue_timeout: Duration::from_secs(60),
            queen_binary: false,
            durable_jobs: true,
        }
    }
}

struct Cluster {
    server: Option<NatsServer>,
    dir: tempfile::TempDir,
    hive_id: HiveId,
    hive: Option<Proc>,
    queen: Option<Proc>,
    base: String,
    http: reqwest::Client,
    /// A plain NATS client, as a third party would use.
    bus: Bus,
}

fn worker_bin() -> std::path::PathBuf {
    let bin = rbee_testkit::paths::cargo_bin("rbee-worker");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --release --workspace --bins` (or `make build`)",
        bin.display()
    );
    bin
}

fn model_import() -> ModelImport {
    ModelImport { path: rbee_testkit::paths::require_default_model(), id: Some(MODEL.parse().expect("id")) }
}

async fn start_in_process_hive(url: &str, hive_id: &HiveId, root: &std::path::Path) -> Proc {
    let mut hive = HiveConfig::new(hive_id.clone(), root.to_path_buf());
    hive.worker_binary = Some(worker_bin());
    hive.import_models = vec![model_import()];
    hive.heartbeat_interval = HEARTBEAT;
    hive.stop_deadline = Duration::from_secs(3);
    hive.worker_nats_args = vec!["--nats-url".into(), url.to_owned()];
    let bus = connect(&NatsConfig::url(url)).await.expect("hive connects");
    let stop = CancellationToken::new();
    let task = tokio::spawn(rbee_hive::run(hive, bus, stop.clone()));
    Proc::InProcess { stop, task }
}

fn start_hive_binary(url: &str, hive_id: &str, root: &std::path::Path) -> Proc {
    let bin = rbee_testkit::paths::cargo_bin("rbee-hive");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --release --workspace --bins` (or `make build`)",
        bin.display()
    );
    let log = std::fs::File::create(root.join(format!("{hive_id}.log"))).expect("log file");
    let child = Command::new(bin)
        .args(["--hive-id", hive_id, "--catalog-dir"])
        .arg(root.join(hive_id))
        .arg("--worker-bin")
        .arg(worker_bin())
        .arg("--import-model")
        .arg(format!("{}={MODEL}", rbee_testkit::paths::require_default_model().display()))
        .args(["--heartbeat-ms", "250", "--stop-deadline-ms", "3000", "--nats-url", url])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start rbee-hive");
    Proc::Binary(child)
}

async fn start_queen(
    server_url: &str,
    options: Options,
    dir: &std::path::Path,
    port: Option<u16>,
) -> (Proc, String) {
    if options.queen_binary {
        let port = port.unwrap_or_else(rbee_testkit::nats::free_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("queen.log"))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_rbee-queen"))
            .args(["--http-addr", &format!("127.0.0.1:{port}"), "--nats-url", server_url])
            .args(["--queue-capacity", &options.queue_capacity.to_string()])
            .args(["--queue-timeout-s", &options.queue_timeout.as_secs().to_string()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start rbee-queen");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{base}/health")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "rbee-queen did not come up at {base}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (Proc::Binary(child), base)
    } else {
        let bus = connect(&NatsConfig::url(server_url)).await.expect("queen connects");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let stop = CancellationToken::new();
        let config = QueenConfig {
            queue_capacity: options.queue_capacity,
            queue_timeout: options.queue_timeout,
            durable_jobs: options.durable_jobs,
            ..QueenConfig::default()
        };
        let task = tokio::spawn(rbee_queen::serve(config, bus, listener, stop.clone()));
        (Proc::InProcess { stop, task }, base)
    }
}

impl Cluster {
    async fn start(options: Options) -> Self {
        let server = NatsServer::start();
        let dir = tempfile::tempdir().expect("tmp");
        let hive_id: HiveId = "hive-f".parse().expect("id");
        let hive = start_in_process_hive(&server.url(), &hive_id, dir.path()).await;
        let (queen, base) = start_queen(&server.url(), options, dir.path(), None).await;
        let bus = connect(&NatsConfig::url(server.url())).await.expect("test client connects");
        let c = Cluster {
            server: Some(server),
            dir,
            hive_id,
            hive: Some(hive),
            queen: Some(queen),
            base,
            http: reqwest::Client::new(),
            bus,
        };
        c.wait_view("the hive in the queen's view", Duration::from_secs(60), |h, _| {
            h["hives"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
        c
    }

    fn url(&self) -> String {
        self.server.as_ref().expect("server").url()
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Polls `/v1/hives` and `/v1/workers` until `check` holds; panics with `what` after `within`.
    async fn wait_view(
        &self,
        what: &str,
        within: Duration,
        mut check: impl FnMut(&Value, &Value) -> bool,
    ) -> Duration {
        let started = Instant::now();
        let mut last = (Value::Null, Value::Null);
        while started.elapsed() < within {
            let (_, hives) = self.get("/v1/hives").await;
            let (_, workers) = self.get("/v1/workers").await;
            if check(&hives, &workers) {
                return started.elapsed();
            }
            last = (hives, workers);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "timed out after {within:?} waiting for {what}; last view: hives {} workers {}",
            last.0, last.1
        );
    }

    /// Asks the queen for a worker on `hive` and waits until it is assignable; returns its id and pid.
    async fn spawn_worker(&self, hive: &str, slots: u32) -> (String, u32) {
        let (status, body) = self
            .post("/v1/workers", json!({"model": MODEL, "hive": hive, "slots": slots, "ctx_per_slot": 512}))
            .await;
        assert_eq!(status, 201, "spawn: {body}");
        let id = body["worker_id"].as_str().expect("worker id").to_owned();
        let pid = body["pid"].as_u64().expect("pid") as u32;
        let wanted = id.clone();
        self.wait_view("the new worker to be assignable", Duration::from_secs(60), |_, w| {
            worker(w, &wanted).is_some_and(|w| w["assignable"] == true)
        })
        .await;
        (id, pid)
    }

    async fn job(&self, id: &str) -> Value {
        self.get(&format!("/v1/jobs/{id}")).await.1
    }

    /// A short chat completion; returns (status, body).
    async fn quick_chat(&self) -> (u16, Value) {
        self.post(
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 8, "temperature": 0}),
        )
        .await
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse::<f64>().ok()))
            .unwrap_or_else(|| panic!("no metric {name} in {text}"))
    }

    async fn stop(mut self) {
        if let Some(q) = self.queen.take() {
            q.stop().await;
        }
        if let Some(h) = self.hive.take() {
            h.stop().await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in [self.queen.take(), self.hive.take()].into_iter().flatten() {
            match p {
                Proc::Binary(mut child) => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                Proc::InProcess { stop, .. } => stop.cancel(),
            }
        }
    }
}

/// A chat job that runs until `max_tokens` (SmolLM2 writes long stories).
fn long_job(max_tokens: u32) -> Value {
    json!({"model": MODEL, "max_tokens": max_tokens, "temperature": 0,
        "messages": [{"role": "user", "content": "Write a very long story about a dragon, a knight and the sea."}]})
}

fn worker<'a>(workers: &'a Value, id: &str) -> Option<&'a Value> {
    workers["workers"].as_array()?.iter().find(|w| w["worker_id"] == id)
}

fn hive<'a>(hives: &'a Value, id: &str) -> Option<&'a Value> {
    hives["hives"].as_array()?.iter().find(|h| h["hive_id"] == id)
}

fn online(entry: Option<&Value>) -> bool {
    entry.is_some_and(|e| e["liveness"] == "online")
}

fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2).is_none_or(|state| state != "Z"))
        .unwrap_or(false)
}

// ----- reading server-sent events ----------------------------------------------------------------------

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// Reads an SSE body event by event: `(event name, data)`.
struct Sse {
    body: Body,
    buf: String,
    event: String,
}

impl Sse {
    fn new(resp: reqwest::Response) -> Self {
        Self { body: Box::pin(resp.bytes_stream()), buf: String::new(), event: "message".into() }
    }

    async fn next(&mut self) -> Option<(String, String)> {
        loop {
            while let Some(pos) = self.buf.find('\n') {
                let line = self.buf[..pos].trim_end_matches('\r').to_owned();
                self.buf.drain(..=pos);
                if let Some(name) = line.strip_prefix("event:") {
                    self.event = name.trim().to_owned();
                } else if let Some(data) = line.strip_prefix("data:") {
                    return Some((self.event.clone(), data.trim().to_owned()));
                } else if line.is_empty() {
                    self.event = "message".into();
                }
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                Some(Err(_)) | None => return None,
            }
        }
    }
}

/// What a `/v1/jobs/{id}/stream` reader saw.
#[derive(Debug, Default)]
struct JobEvents {
    chunks: Vec<Value>,
    last_status: Option<Value>,
}

impl JobEvents {
    async fn read_to_end(sse: &mut Sse, into: &mut JobEvents) {
        while let Some((event, data)) = sse.next().await {
            if into.take(&event, &data) {
                return;
            }
        }
    }

    /// Reads to the end of the stream as long as it makes progress; false when no event came for
    /// `stall` (the job hangs).
    async fn read_while_progressing(sse: &mut Sse, into: &mut JobEvents, stall: Duration) -> bool {
        loop {
            match tokio::time::timeout(stall, sse.next()).await {
                Err(_) => return false,
                Ok(None) => return true,
                Ok(Some((event, data))) => {
                    if into.take(&event, &data) {
                        return true;
                    }
                }
            }
        }
    }

    /// Records one event; true for the final status.
    fn take(&mut self, event: &str, data: &str) -> bool {
        let value: Value = serde_json::from_str(data).unwrap_or(Value::Null);
        match event {
            "token" => self.chunks.push(value),
            "status" => {
                let terminal = value["state"] == "finished";
                self.last_status = Some(value);
                return terminal;
            }
            _ => {}
        }
        false
    }

    /// Every chunk in order (seq 0..n), their token counts adding up to each `total_tokens`.
    fn check_contiguous(&self) -> Result<u32, String> {
        let mut total = 0u64;
        for (i, c) in self.chunks.iter().enumerate() {
            if c["seq"].as_u64() != Some(i as u64) {
                return Err(format!("chunk {i} has seq {}", c["seq"]));
            }
            total += c["tokens"].as_u64().unwrap_or(0);
            if c["total_tokens"].as_u64() != Some(total) {
                return Err(format!(
                    "chunk {i}: total_tokens {} but the chunks add up to {total}",
                    c["total_tokens"]
                ));
            }
        }
        Ok(total as u32)
    }
}

// ----- the faults --------------------------------------------------------------------------------------

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

/// A worker killed with SIGKILL in the middle of a job.
///
/// What the user sees: the job ends (`GET /v1/jobs/{id}` says `failed`, reason "worker ... died
/// mid-job after N token chunks"; its stream ends with a `finished`/`error` status saying the same) —
/// or, if it died before its first token, the job is retried elsewhere and completes. The hive reports
/// the crash: a `failed` lifecycle event on `rbee.worker.<id>.lifecycle` with `signal: 9 (SIGKILL)` and
/// the worker listed as failed by `rbee.hive.<id>.workers`. The worker leaves the queen's view (offline
/// or removed) within about the offline threshold, and the next job succeeds on a new worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_sigkilled_mid_job() {
    let _turn = TURN.lock().await;
    let _logs = LogGuard::new("worker_sigkill");
    let c = Cluster::start(Options::default()).await;
    let mut lifecycle = c.bus.client().subscribe(subject::WORKER_LIFECYCLE_ALL).await.expect("sub");
    c.bus.round_trip().await.expect("rt");
    let (worker_id, pid) = c.spawn_worker("hive-f", 2).await;

    let job_id = "job-sigkill".to_owned();
    let mut tokens = c.bus.client().subscribe(format!("rbee.job.{job_id}.tokens")).await.expect("sub");
    c.bus.round_trip().await.expect("rt");
    let mut body = long_job(300);
    body["job_id"] = json!(job_id);
    let (status, job) = c.post("/v1/jobs", body).await;
    assert_eq!(status, 202, "{job}");
    // Kill it once tokens flow.
    for _ in 0..3 {
        tokio::time::timeout(STALL, tokens.next()).await.expect("tokens flow before the kill").expect("open");
    }
    rbee_hive::supervisor::signal(pid, rbee_hive::supervisor::Signal::Kill);
    let killed = Instant::now();

    // Out of the view.
    let wid = worker_id.clone();
    let gone = c
        .wait_view("the killed worker out of the queen's view", Duration::from_secs(30), |_, w| {
            worker(w, &wid).is_none_or(|w| w["liveness"] != "online" || w["assignable"] == false)
        })
        .await;
    eprintln!("killed worker out of the view after {gone:?} (offline threshold {OFFLINE_AFTER:?})");

    // The job ends with a clear reason.
    let deadline = Instant::now() + Duration::from_secs(120);
    let record = loop {
        let record = c.job(&job_id).await;
        let phase = record["state"]["phase"].as_str().unwrap_or_default().to_owned();
        if phase == "failed" || phase == "completed" {
            break record;
        }
        assert!(Instant::now() < deadline, "the job never ended after its worker died: {record}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("job ended {:?} after the kill: {}", killed.elapsed(), record["state"]);
    if record["state"]["phase"] == "failed" {
        let reason = record["state"]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("died") && reason.contains(&worker_id), "unclear failure: {record}");
        // The stream a client follows says the same.
        let resp = c.http.get(format!("{}/v1/jobs/{job_id}/stream", c.base)).send().await.expect("stream");
        let mut sse = Sse::new(resp);
        let mut seen = JobEvents::default();
        tokio::time::timeout(Duration::from_secs(10), JobEvents::read_to_end(&mut sse, &mut seen))
            .await
            .expect("stream of a failed job ends");
        let last = seen.last_status.expect("final status");
        assert_eq!(last["finish_reason"], "error", "{last}");
        assert!(last["error"].as_str().unwrap_or_default().contains("died"), "{last}");
    }

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
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let record = c.job(job_id.as_str()).await;
        if record["state"]["phase"] == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "the restarted queen never saw the job complete: {record}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

/// Malformed and oversized messages on every rbee subject, and garbage HTTP bodies.
///
/// What the user sees: nothing breaks. Requests with garbage get an error reply (`bad_request`) at
/// once instead of a timeout; events with garbage are dropped, counted
/// (`rbee_rejected_messages_total` on the queen's `/metrics`, `malformed` in the worker's `$SRV.STATS`)
/// and logged (a warning naming the subject); a payload over the server's `max_payload` is refused at
/// the publisher with an error. Garbage HTTP bodies get a 4xx with an OpenAI-style error body, never a
/// 5xx. Queen, hive and worker keep running (same worker pid, still online) and the next job succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_and_garbage_http() {
    let _turn = TURN.lock().await;
    let _logs = LogGuard::new("malformed");
    let c = Cluster::start(Options::default()).await;
    let (worker_id, pid) = c.spawn_worker("hive-f", 2).await;
    let wid = WorkerId::new(worker_id.clone()).expect("id");
    let job = JobId::new("job-garbage").expect("id");
    let rejected_before = c.metric("rbee_rejected_messages_total").await;
    let malformed_before = worker_malformed(&c.bus).await;

    let deep = "[".repeat(100_000);
    let big = format!("{{\"v\":1,\"text\":\"{}\"}}", "a".repeat(1_000_000));
    let mut payloads: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"not json".to_vec(),
        b"{}".to_vec(),
        b"[]".to_vec(),
        b"null".to_vec(),
        b"{\"v\":1}".to_vec(),
        b"{\"v\":999,\"worker_id\":\"a.b\",\"job_id\":\"*\"}".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x80, 0xc3],
        deep.into_bytes(),
        big.into_bytes(),
    ];
    // A heartbeat that names another worker than its subject.
    let mut mismatched: Value = json!({"v": 1});
    mismatched["worker_id"] = json!("someone-else");
    payloads.push(serde_json::to_vec(&mismatched).expect("json"));

    let events = [
        subject::hive_heartbeat(&c.hive_id),
        subject::worker_heartbeat(&wid),
        subject::worker_lifecycle(&wid),
        subject::job_tokens(&job),
        subject::job_status(&job),
        subject::job_cancel(&job),
        subject::QUEEN_HELLO.to_owned(),
    ];
    let requests = [
        subject::hive_spawn(&c.hive_id),
        subject::hive_stop(&c.hive_id),
        subject::hive_workers(&c.hive_id),
        subject::hive_models(&c.hive_id),
        subject::hive_devices(&c.hive_id),
        subject::worker_jobs(&wid),
        subject::QUEEN_JOBS_SUBMIT.to_owned(),
    ];
    let client = c.bus.client();
    for subject in &events {
        for p in &payloads {
            client.publish(subject.clone(), p.clone().into()).await.expect("publish");
        }
    }
    let mut replies = 0;
    for subject in &requests {
        for p in &payloads {
            let req =
                async_nats::Request::new().payload(p.clone().into()).timeout(Some(Duration::from_secs(10)));
            let reply = client.send_request(subject.clone(), req).await.unwrap_or_else(|e| {
                panic!("garbage request on {subject} got no reply (a hang for the caller): {e}")
            });
            replies += 1;
            let listing = subject.ends_with(".workers")
                || subject.ends_with(".models")
                || subject.ends_with(".devices");
            if !listing {
                let err = rpc::decode_reply::<Value>(subject, &reply.payload);
                let is_error = matches!(&err, Err(BusError::Remote { .. }));
                assert!(
                    is_error,
                    "garbage on {subject} was not refused: {:?}",
                    String::from_utf8_lossy(&reply.payload)
                );
            }
        }
    }
    // Over the server's max_payload: refused at the publisher, with an error.
    let huge = vec![b'x'; 2 * 1024 * 1024];
    let over = client.publish(subject::job_tokens(&job), huge.into()).await;
    assert!(over.is_err(), "a 2 MiB publish was not refused");
    client.flush().await.expect("flush");
    eprintln!(
        "{} garbage events published, {replies} garbage requests answered",
        events.len() * payloads.len()
    );

    // Garbage HTTP bodies: 4xx, never 5xx, never a hang.
    let huge_body = format!("{{\"model\":\"{MODEL}\",\"prompt\":\"{}\"}}", "x".repeat(5 * 1024 * 1024));
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("application/json", b"".to_vec()),
        ("application/json", b"{not json".to_vec()),
        ("application/json", b"null".to_vec()),
        ("application/json", b"[]".to_vec()),
        ("application/json", b"{}".to_vec()),
        ("application/json", b"{\"model\":5}".to_vec()),
        ("application/json", format!("{{\"model\":\"{MODEL}\",\"messages\":\"x\"}}").into_bytes()),
        ("application/json", format!("{{\"model\":\"{MODEL}\",\"messages\":[],\"prompt\":7}}").into_bytes()),
        ("application/json", format!("{{\"model\":\"{MODEL}\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}],\"temperature\":\"hot\"}}").into_bytes()),
        ("application/json", format!("{{\"model\":\"{MODEL}\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}],\"max_tokens\":-1}}").into_bytes()),
        ("application/json", b"{\"model\":\"a.b\",\"prompt\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}".to_vec()),
        ("application/json", vec![0xff, 0xfe, 0x00, 0x80]),
        ("application/json", "[".repeat(100_000).into_bytes()),
        ("text/plain", b"hello".to_vec()),
        ("application/json", huge_body.into_bytes()),
    ];
    for path in ["/v1/chat/completions", "/v1/completions", "/v1/jobs", "/v1/workers"] {
        for (content_type, body) in &bodies {
            // `{"model": "smollm2", ...}` with extra fields is a valid spawn body: not garbage there.
            let names_model = String::from_utf8_lossy(body).contains(&format!("\"model\":\"{MODEL}\""));
            if path == "/v1/workers" && names_model && body.len() < 1024 {
                continue;
            }
            let r = c
                .http
                .post(format!("{}{path}", c.base))
                .header("content-type", *content_type)
                .body(body.clone())
                .timeout(Duration::from_secs(30))
                .send()
                .await;
            let shown: String = String::from_utf8_lossy(body).chars().take(80).collect();
            let r = match r {
                Ok(r) => r,
                // Over the 4 MiB limit the queen answers 413 before reading the whole body and closes
                // the connection; a client still writing may see the reset instead of the 413.
                Err(e) if body.len() > 4 * 1024 * 1024 => {
                    eprintln!("POST {path} with a {} byte body: {e}", body.len());
                    continue;
                }
                Err(e) => panic!("POST {path} {shown:?}: {e}"),
            };
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            assert!((400..500).contains(&status), "POST {path} {shown:?} -> {status} {text}");
            if status != 413 && status != 415 {
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                assert!(v["error"]["message"].is_string(), "POST {path} {shown:?}: no error body: {text}");
            }
        }
    }
    for (method, path) in [
        ("GET", "/v1/jobs/a.b"),
        ("GET", "/v1/jobs/%ff%fe"),
        ("GET", "/v1/jobs?limit=abc"),
        ("GET", "/v1/jobs?state=zzz"),
        ("GET", "/v1/jobs/job-nope/stream"),
        ("DELETE", "/v1/jobs/job-nope"),
        ("DELETE", "/v1/workers/a*b"),
        ("GET", "/v1/nothing"),
    ] {
        let r = c
            .http
            .request(method.parse().expect("method"), format!("{}{path}", c.base))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        assert!((400..500).contains(&status), "{method} {path} -> {status}");
    }

    // Everyone is still there.
    let (status, health) = c.get("/health").await;
    assert_eq!(status, 200, "{health}");
    assert!(
        matches!(c.hive.as_ref(), Some(Proc::InProcess { task, .. }) if !task.is_finished()),
        "the hive stopped"
    );
    assert!(process_alive(pid), "the worker process died");
    let wid2 = worker_id.clone();
    c.wait_view("hive and worker still online", Duration::from_secs(30), |h, w| {
        online(hive(h, "hive-f"))
            && worker(w, &wid2).is_some_and(|w| w["liveness"] == "online" && w["pid"] == pid)
    })
    .await;

    // Counted and logged.
    let rejected = c.metric("rbee_rejected_messages_total").await - rejected_before;
    let malformed = worker_malformed(&c.bus).await - malformed_before;
    eprintln!("queen rejected {rejected} messages, worker counted {malformed} malformed assignments");
    assert!(rejected >= (5 * payloads.len()) as f64, "queen counted only {rejected} rejections");
    assert!(malformed >= payloads.len() as u64, "worker counted only {malformed} malformed assignments");
    let text = log_text();
    for line in [
        "heartbeat rejected",
        "malformed token chunk ignored",
        "malformed job status ignored",
        "malformed job assignment refused",
        "malformed cancel ignored",
        "spawn refused",
    ] {
        assert!(text.contains(line), "no {line:?} in the logs");
    }

    // The next valid job succeeds.
    let (status, body) = c.quick_chat().await;
    assert_eq!(status, 200, "{body}");
    assert!(!body["choices"][0]["message"]["content"].as_str().unwrap_or_default().is_empty(), "{body}");
    c.stop().await;
}

/// The worker's `malformed` counter, from the NATS service API (`$SRV.STATS.rbee-worker`).
async fn worker_malformed(bus: &Bus) -> u64 {
    let reply = bus.client().request("$SRV.STATS.rbee-worker", "".into()).await.expect("stats");
    let stats: Value = serde_json::from_slice(&reply.payload).expect("stats json");
    stats["endpoints"][0]["data"]["malformed"]
        .as_u64()
        .unwrap_or_else(|| panic!("no malformed counter in {stats}"))
}

#[derive(Debug)]
enum Outcome {
    /// 200 and a complete stream.
    Completed,
    /// 429/503 with Retry-After.
    Refused(u16),
    /// Anything else: a broken promise.
    Broken(String),
}

async fn chat_stream(http: reqwest::Client, base: String, i: usize) -> Outcome {
    let body = json!({"model": MODEL, "stream": true, "max_tokens": 8, "temperature": 0,
        "messages": [{"role": "user", "content": format!("Say a word about the number {i}.")}]});
    let resp = match http.post(format!("{base}/v1/chat/completions")).json(&body).send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Broken(format!("chat {i}: {e}")),
    };
    let status = resp.status().as_u16();
    if status == 429 || status == 503 {
        return match resp.headers().get("retry-after") {
            Some(_) => Outcome::Refused(status),
            None => Outcome::Broken(format!("chat {i}: {status} without Retry-After")),
        };
    }
    if status != 200 {
        return Outcome::Broken(format!("chat {i}: {status} {}", resp.text().await.unwrap_or_default()));
    }
    let mut sse = Sse::new(resp);
    let (mut text, mut chunks, mut usage, mut done, mut finish) = (String::new(), 0u64, None, false, None);
    while let Some((_, data)) = sse.next().await {
        if data == "[DONE]" {
            done = true;
            break;
        }
        let v: Value = match serde_json::from_str(&data) {
            Ok(v) => v,
            Err(e) => return Outcome::Broken(format!("chat {i}: bad chunk {data}: {e}")),
        };
        if v.get("error").is_some() {
            return Outcome::Broken(format!("chat {i}: error in a started stream: {v}"));
        }
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
            chunks += 1;
        }
        if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
            finish = Some(f.to_owned());
        }
        if v["usage"].is_object() {
            usage = v["usage"]["completion_tokens"].as_u64();
        }
    }
    match (done, finish.as_deref(), usage) {
        (true, Some("stop" | "length"), Some(n)) if !text.is_empty() && chunks <= n && n > 0 => Outcome::Completed,
        _ => Outcome::Broken(format!(
            "chat {i}: incomplete stream: done={done} finish={finish:?} usage={usage:?} chunks={chunks} text={text:?}"
        )),
    }
}

async fn job_stream(http: reqwest::Client, base: String, i: usize) -> Outcome {
    let body = json!({"model": MODEL, "max_tokens": 8, "temperature": 0, "prompt": format!("Number {i} is")});
    let resp = match http.post(format!("{base}/v1/jobs")).json(&body).send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Broken(format!("job {i}: {e}")),
    };
    let status = resp.status().as_u16();
    if status == 429 || status == 503 {
        return match resp.headers().get("retry-after") {
            Some(_) => Outcome::Refused(status),
            None => Outcome::Broken(format!("job {i}: {status} without Retry-After")),
        };
    }
    let created: Value = resp.json().await.unwrap_or(Value::Null);
    if status != 202 {
        return Outcome::Broken(format!("job {i}: {status} {created}"));
    }
    let Some(url) = created["sse_url"].as_str() else {
        return Outcome::Broken(format!("job {i}: {created}"));
    };
    let resp = match http.get(format!("{base}{url}")).send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Broken(format!("job {i} stream: {e}")),
    };
    let mut sse = Sse::new(resp);
    let mut seen = JobEvents::default();
    JobEvents::read_to_end(&mut sse, &mut seen).await;
    let Some(last) = seen.last_status.clone() else {
        return Outcome::Broken(format!("job {i}: no final status"));
    };
    match last["finish_reason"].as_str() {
        Some("stop" | "length") => {}
        // An admitted (202) job may end in error only by waiting longer than the queue timeout.
        Some("error") if last["error"].as_str().is_some_and(|e| e.starts_with("gave up after")) => {
            return Outcome::Refused(0)
        }
        _ => return Outcome::Broken(format!("job {i}: ended {last}")),
    }
    let total = match seen.check_contiguous() {
        Ok(t) => t,
        Err(e) => return Outcome::Broken(format!("job {i}: {e}")),
    };
    let usage = last["usage"]["completion_tokens"].as_u64().unwrap_or(0);
    if u64::from(total) != usage || usage == 0 {
        return Outcome::Broken(format!("job {i}: chunks carry {total} tokens, usage says {usage}"));
    }
    Outcome::Completed
}

/// 200 concurrent streams against one small worker (4 slots), with a queue of 32.
///
/// What the user sees: every request ends. Either a 200 stream that ends with a `stop`/`length` chunk
/// carrying `usage`, then `[DONE]` (no token missing: on `/v1/jobs/{id}/stream` the chunks are numbered
/// 0..n and their token counts add up to `usage.completion_tokens`), or at once a 429 (`queue_full`) or
/// 503 with `Retry-After`. Nothing hangs, the queue drains, and the next job succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_streams_against_one_small_worker() {
    let _turn = TURN.lock().await;
    let _logs = LogGuard::new("load");
    const CAPACITY: usize = 32;
    let options =
        Options { queue_capacity: CAPACITY, queue_timeout: Duration::from_secs(120), ..Options::default() };
    let c = Cluster::start(options).await;
    c.spawn_worker("hive-f", 4).await;

    // Watch the queue depth while the storm runs.
    let stop_watch = CancellationToken::new();
    let watcher = {
        let (http, base, stop) = (c.http.clone(), c.base.clone(), stop_watch.clone());
        tokio::spawn(async move {
            let mut max = 0f64;
            while !stop.is_cancelled() {
                if let Ok(r) = http.get(format!("{base}/metrics")).send().await {
                    let text = r.text().await.unwrap_or_default();
                    if let Some(v) = text.lines().find_map(|l| l.strip_prefix("rbee_queue_depth ")) {
                        max = max.max(v.trim().parse().unwrap_or(0.0));
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            max
        })
    };

    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build().expect("client");
    let started = Instant::now();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (http, base) = (http.clone(), c.base.clone());
            tokio::spawn(async move {
                let run = async {
                    if i % 2 == 0 {
                        chat_stream(http, base, i).await
                    } else {
                        job_stream(http, base, i).await
                    }
                };
                match tokio::time::timeout(Duration::from_secs(300), run).await {
                    Ok(o) => o,
                    Err(_) => Outcome::Broken(format!("request {i} hung for 300 s")),
                }
            })
        })
        .collect();
    let mut completed = 0;
    let mut refused = 0;
    let mut refused_by = std::collections::BTreeMap::new();
    let mut broken = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            Outcome::Completed => completed += 1,
            Outcome::Refused(status) => {
                refused += 1;
                *refused_by.entry(status).or_insert(0) += 1;
            }
            Outcome::Broken(why) => broken.push(why),
        }
    }
    let elapsed = started.elapsed();
    stop_watch.cancel();
    let max_depth = watcher.await.unwrap_or(0.0);
    eprintln!(
        "200 streams in {elapsed:?}: {completed} completed, {refused} refused (by status, 0 = failed in the queue: {refused_by:?}), {} broken; max queue depth seen {max_depth}",
        broken.len()
    );
    let (_, workers) = c.get("/v1/workers").await;
    eprintln!(
        "workers after the storm: {} (the queen spawns more CPU workers while jobs queue)",
        workers["workers"].as_array().map_or(0, Vec::len)
    );
    assert!(broken.is_empty(), "{} requests broke their promise:\n{}", broken.len(), broken.join("\n"));
    assert!(completed >= 1, "nothing completed");
    assert!(
        refused >= 1,
        "200 concurrent streams against a queue of {CAPACITY} and 4 slots were never refused"
    );
    // Admissions stop at the capacity; a job admitted straight to a worker that then had no slot
    // joins the queue after, so the depth may pass the capacity by at most the worker's slots.
    assert!(max_depth <= (CAPACITY + 4) as f64, "the queue held {max_depth} jobs, capacity {CAPACITY}");

    // The queue drains and the next job succeeds.
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.metric("rbee_queue_depth").await > 0.0 {
        assert!(Instant::now() < deadline, "the queue never drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = c.quick_chat().await;
    assert_eq!(status, 200, "{body}");
    c.stop().await;
}
