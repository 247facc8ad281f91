//! The pieces of a real one-machine cluster the end-to-end tests start (`mod cluster;` in each test
//! binary): a hive on the real model whose workers are the real `rbee-worker`, and a queen on a free
//! port.

#![allow(dead_code)] // each test binary uses part of it

use std::path::Path;
use std::time::{Duration, Instant};

use rbee_bus::{connect, NatsConfig};
use rbee_hive::{HiveConfig, ModelImport};
use rbee_queen::QueenConfig;
use rbee_testkit::NatsServer;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The id the real model is imported under.
pub const MODEL: &str = "smollm2";

/// Starts a hive named `hive_id` with the real model imported, its catalog in `dir`; stopped by the
/// token.
pub async fn start_hive(server: &NatsServer, hive_id: &str, dir: &Path) -> CancellationToken {
    run_hive(server, hive_config(server, hive_id, dir)).await
}

/// Runs a hive with this configuration; stopped by the token.
pub async fn run_hive(server: &NatsServer, hive: HiveConfig) -> CancellationToken {
    let bus = connect(&NatsConfig::url(server.url())).await.expect("hive connects");
    let stop = CancellationToken::new();
    tokio::spawn(rbee_hive::run(hive, bus, stop.clone()));
    stop
}

/// The configuration of [`start_hive`].
pub fn hive_config(server: &NatsServer, hive_id: &str, dir: &Path) -> HiveConfig {
    HiveConfig {
        hive_id: hive_id.parse().expect("id"),
        catalog_root: dir.to_path_buf(),
        worker_binary: Some(rbee_testkit::paths::cargo_bin("rbee-worker")),
        import_models: vec![ModelImport {
            path: rbee_testkit::paths::require_default_model(),
            id: Some(MODEL.parse().expect("id")),
        }],
        heartbeat_interval: Duration::from_millis(250),
        worker_nats_args: vec!["--nats-url".into(), server.url()],
        ..HiveConfig::default()
    }
}

/// A queen serving on a free loopback port: its stop token, its task and its base URL.
pub async fn start_queen(
    server: &NatsServer,
    config: QueenConfig,
) -> (CancellationToken, tokio::task::JoinHandle<anyhow::Result<()>>, String) {
    let bus = connect(&NatsConfig::url(server.url())).await.expect("queen connects");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let task = tokio::spawn(rbee_queen::serve(config, bus, listener, stop.clone()));
    (stop, task, base)
}

/// nats-server, a hive with the real model and a queen, with HTTP helpers.
pub struct Cluster {
    /// The server.
    pub server: NatsServer,
    /// The hive's catalog.
    pub dir: tempfile::TempDir,
    /// Stops the hive.
    pub hive_stop: CancellationToken,
    /// Stops the queen.
    pub queen_stop: CancellationToken,
    /// The queen's task.
    pub queen_task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The queen's base URL.
    pub base: String,
    /// An HTTP client.
    pub http: reqwest::Client,
}

impl Cluster {
    /// Starts the three on a fresh server.
    pub async fn start(hive_id: &str, config: QueenConfig) -> Self {
        let server = NatsServer::start();
        let dir = tempfile::tempdir().expect("tmp");
        let hive_stop = start_hive(&server, hive_id, dir.path()).await;
        let (queen_stop, queen_task, base) = start_queen(&server, config).await;
        Cluster { server, dir, hive_stop, queen_stop, queen_task, base, http: reqwest::Client::new() }
    }

    /// `GET` and its JSON body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(format!("{}{path}", self.base)).send().await.expect("get");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `POST` a JSON body and its JSON answer.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self.http.post(format!("{}{path}", self.base)).json(&body).send().await.expect("post");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Polls `/v1/hives` and `/v1/workers` until `check` holds (90 s at most).
    pub async fn wait_until(&self, what: &str, mut check: impl FnMut(&Value, &Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            let (_, hives) = self.get("/v1/hives").await;
            let (_, workers) = self.get("/v1/workers").await;
            if check(&hives, &workers) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("timed out waiting for {what}");
    }
}
