//! One model over llama.cpp's RPC backend, on the real model: two real `rbee-rpc-server` processes on
//! loopback hold every layer, and a worker's engine using them answers the greedy text of an engine
//! on this host alone; a worker pointed at an RPC server that is not there exits with a clear error
//! instead of aborting.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rbee_bus::{ChatMessage, Prompt, SamplingParams};
use rbee_worker::engine::{Engine, EngineConfig, GenEvent, GenerationRequest};
use tokio_util::sync::CancellationToken;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// An `rbee-rpc-server` on loopback, killed when dropped.
struct RpcServer {
    child: Child,
    endpoint: String,
}

impl RpcServer {
    fn start() -> Self {
        let port = free_port();
        let child = Command::new(rbee_testkit::paths::cargo_bin("rbee-rpc-server"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--threads", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("rbee-rpc-server starts (cargo build --release --workspace --bins)");
        let endpoint = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&endpoint).is_err() {
            assert!(Instant::now() < deadline, "rbee-rpc-server never listened on {endpoint}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, endpoint }
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(model_path: PathBuf, rpc_servers: Vec<String>) -> EngineConfig {
    EngineConfig {
        model_path,
        threads: Some(1),
        slots: 1,
        ctx_per_slot: 512,
        gpu_layers: 0,
        prefix_reuse: false,
        prefix_cache_bytes: 0,
        rpc_servers,
    }
}

/// Resident memory of a process, bytes (Linux).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS");
    kib * 1024
}

async fn greedy_answer(config: EngineConfig, after_load: impl FnOnce()) -> (String, f64) {
    let engine = tokio::task::spawn_blocking(move || Engine::load(config))
        .await
        .expect("load task")
        .expect("engine loads");
    after_load();
    let prompt = Prompt::chat(vec![ChatMessage::new(
        "user",
        "What is the capital of France? Answer in one sentence.",
    )]);
    let params = SamplingParams { temperature: 0.0, max_tokens: 24, ..SamplingParams::default() };
    let request =
        GenerationRequest { prompt, params, cancel: CancellationToken::new(), deadline: None, resume: None };
    let mut generation = engine.submit(request).expect("submit");
    let mut text = String::new();
    let started = Instant::now();
    let mut tokens = 0u32;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(120), generation.events.recv())
            .await
            .expect("an event within 120 s")
            .expect("the stream ends with Finished");
        match event {
            GenEvent::Token { text: piece, .. } => {
                tokens += 1;
                text.push_str(&piece);
            }
            GenEvent::ToolCalls { .. } => {}
            GenEvent::Finished { error, .. } => {
                assert_eq!(error, None, "{text}");
                return (text, f64::from(tokens) / started.elapsed().as_secs_f64());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_on_two_rpc_servers_answers_as_on_one_host() {
    let model = rbee_testkit::paths::require_default_model();
    let (local, local_rate) = greedy_answer(config(model.clone(), Vec::new()), || {}).await;
    let servers = [RpcServer::start(), RpcServer::start()];
    let endpoints: Vec<String> = servers.iter().map(|s| s.endpoint.clone()).collect();
    let before: Vec<u64> = servers.iter().map(|s| rss_bytes(s.child.id())).collect();
    let (split, split_rate) = greedy_answer(config(model, endpoints.clone()), || {
        // Each server holds its share of the layers in its own memory.
        for (server, before) in servers.iter().zip(&before) {
            let grown = rss_bytes(server.child.id()).saturating_sub(*before);
            eprintln!("rpc server {} holds {} MiB more after the load", server.endpoint, grown >> 20);
            assert!(grown > 16 << 20, "rpc server {} took no layers ({grown} bytes)", server.endpoint);
        }
    })
    .await;
    eprintln!("one host: {local:?} ({local_rate:.1} tok/s); over rpc {endpoints:?}: {split:?} ({split_rate:.1} tok/s)");
    assert!(split.contains("Paris"), "{split:?}");
    assert_eq!(split, local, "the greedy text over rpc differs from one host's");
}

#[test]
fn a_worker_pointed_at_a_missing_rpc_server_exits_with_a_clear_error() {
    let model = rbee_testkit::paths::require_default_model();
    let server = rbee_testkit::NatsServer::start();
    let missing = format!("127.0.0.1:{}", free_port());
    let output = Command::new(rbee_testkit::paths::cargo_bin("rbee-worker"))
        .args(["--worker-id", "wrk-rpc-missing", "--model-id", "smollm2", "--nats-url", &server.url()])
        .arg("--model-path")
        .arg(&model)
        .args(["--rpc", &missing])
        .output()
        .expect("rbee-worker runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert_eq!(output.status.code(), Some(1), "exited by a signal (an abort?): {stderr}");
    assert!(stderr.contains(&format!("rpc server {missing} gave no device")), "{stderr}");
}
