//! The harness of the fault tests: captured logs, a cluster of real processes (nats-server, a hive in
//! process or as the `rbee-hive` binary, the queen in process or as the `rbee-queen` binary, workers
//! on SmolLM2) and the queries the tests make of it.

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rbee_bus::*;
use rbee_hive::{HiveConfig, ModelImport};
use rbee_queen::QueenConfig;
use rbee_testkit::NatsServer;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub const MODEL: &str = "smollm2";
pub const HEARTBEAT: Duration = Duration::from_millis(250);
/// The queen calls a worker offline after 3 silent heartbeat intervals.
pub const OFFLINE_AFTER: Duration = Duration::from_millis(750);

/// A job whose stream shows no event for this long is hung (a loaded machine decodes slowly, but
/// steadily).
pub const STALL: Duration = Duration::from_secs(60);

/// One cluster at a time.
pub static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ----- captured logs ------------------------------------------------------------------------------------

pub fn logs() -> &'static rbee_testkit::logs::CapturedLogs {
    rbee_testkit::logs::capture("info,rbee_bus=info,async_nats=warn,hyper=warn,reqwest=warn")
}

pub fn log_text() -> String {
    logs().text()
}

/// Clears the captured logs at the start of a test and writes them to a file when it ends (or fails).
pub struct LogGuard(&'static str);

impl LogGuard {
    pub fn new(test: &'static str) -> Self {
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

pub enum Proc {
    InProcess { stop: CancellationToken, task: tokio::task::JoinHandle<anyhow::Result<()>> },
    Binary(Child),
}

impl Proc {
    /// SIGKILL for a binary; a clean stop for an in-process one.
    pub async fn stop(self) {
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
pub struct Options {
    pub queue_capacity: usize,
    pub queue_timeout: Duration,
    pub queen_binary: bool,
    /// Job history in JetStream (in-process queens only).
    pub durable_jobs: bool,
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

pub struct Cluster {
    pub server: Option<NatsServer>,
    pub dir: tempfile::TempDir,
    pub hive_id: HiveId,
    pub hive: Option<Proc>,
    pub queen: Option<Proc>,
    pub base: String,
    pub http: reqwest::Client,
    /// A plain NATS client, as a third party would use.
    pub bus: Bus,
}

pub fn worker_bin() -> std::path::PathBuf {
    let bin = rbee_testkit::paths::cargo_bin("rbee-worker");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --release --workspace --bins` (or `make build`)",
        bin.display()
    );
    bin
}

pub fn model_import() -> ModelImport {
    ModelImport { path: rbee_testkit::paths::require_default_model(), id: Some(MODEL.parse().expect("id")) }
}

pub async fn start_in_process_hive(url: &str, hive_id: &HiveId, root: &std::path::Path) -> Proc {
    let hive = HiveConfig {
        hive_id: hive_id.clone(),
        catalog_root: root.to_path_buf(),
        worker_binary: Some(worker_bin()),
        import_models: vec![model_import()],
        heartbeat_interval: HEARTBEAT,
        stop_deadline: Duration::from_secs(3),
        worker_nats_args: vec!["--nats-url".into(), url.to_owned()],
        ..HiveConfig::default()
    };
    let bus = connect(&NatsConfig::url(url)).await.expect("hive connects");
    let stop = CancellationToken::new();
    let task = tokio::spawn(rbee_hive::run(hive, bus, stop.clone()));
    Proc::InProcess { stop, task }
}

pub fn start_hive_binary(url: &str, hive_id: &str, root: &std::path::Path) -> Proc {
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

pub async fn start_queen(
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
    pub async fn start(options: Options) -> Self {
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

    pub fn url(&self) -> String {
        self.server.as_ref().expect("server").url()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
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

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
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
    pub async fn wait_view(
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
    pub async fn spawn_worker(&self, hive: &str, slots: u32) -> (String, u32) {
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

    pub async fn job(&self, id: &str) -> Value {
        self.get(&format!("/v1/jobs/{id}")).await.1
    }

    /// Polls `GET /v1/jobs/{id}` every 100 ms until `done` holds for its record, which it returns;
    /// panics with `what` and the last record after `within`.
    pub async fn wait_job(
        &self,
        id: &str,
        within: Duration,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let record = self.job(id).await;
            if done(&record) {
                return record;
            }
            assert!(Instant::now() < deadline, "{what}: {record}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A short chat completion; returns (status, body).
    pub async fn quick_chat(&self) -> (u16, Value) {
        self.post(
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 8, "temperature": 0}),
        )
        .await
    }

    pub async fn metric(&self, name: &str) -> f64 {
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

    pub async fn stop(mut self) {
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
pub fn long_job(max_tokens: u32) -> Value {
    json!({"model": MODEL, "max_tokens": max_tokens, "temperature": 0,
        "messages": [{"role": "user", "content": "Write a very long story about a dragon, a knight and the sea."}]})
}

pub fn worker<'a>(workers: &'a Value, id: &str) -> Option<&'a Value> {
    workers["workers"].as_array()?.iter().find(|w| w["worker_id"] == id)
}

pub fn hive<'a>(hives: &'a Value, id: &str) -> Option<&'a Value> {
    hives["hives"].as_array()?.iter().find(|h| h["hive_id"] == id)
}

pub fn online(entry: Option<&Value>) -> bool {
    entry.is_some_and(|e| e["liveness"] == "online")
}

pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2).is_none_or(|state| state != "Z"))
        .unwrap_or(false)
}
