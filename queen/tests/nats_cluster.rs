//! Beyond one server: the queen, a hive and a worker on a 3-node NATS cluster (three local
//! nats-servers); one node is killed and the cluster keeps serving jobs.

use std::time::{Duration, Instant};

use rbee_bus::{connect, NatsConfig};
use rbee_hive::{HiveConfig, ModelImport};
use rbee_queen::QueenConfig;
use rbee_testkit::NatsCluster;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

async fn chat(http: &reqwest::Client, base: &str) -> (u16, Value) {
    let body = json!({"model": "smollm2", "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}], "temperature": 0, "max_tokens": 20});
    let r = http.post(format!("{base}/v1/chat/completions")).json(&body).send().await.expect("post");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_survives_losing_a_node() {
    let mut cluster = NatsCluster::start();
    let urls = cluster.urls();
    // Each process starts on a different node; all know every URL.
    let rotated = |first: usize| {
        let mut u = urls.clone();
        u.rotate_left(first);
        NatsConfig { urls: u, ..NatsConfig::default() }
    };
    let dir = tempfile::tempdir().expect("tmp");
    let hive = HiveConfig {
        hive_id: "hive-c".parse().expect("id"),
        catalog_root: dir.path().to_path_buf(),
        worker_binary: Some(rbee_testkit::paths::cargo_bin("rbee-worker")),
        import_models: vec![ModelImport {
            path: rbee_testkit::paths::require_default_model(),
            id: Some("smollm2".parse().expect("id")),
        }],
        heartbeat_interval: Duration::from_millis(250),
        worker_nats_args: vec![
            "--nats-url".into(),
            urls[2..].iter().chain(&urls[..2]).cloned().collect::<Vec<_>>().join(","),
        ],
        ..HiveConfig::default()
    };
    let stop = CancellationToken::new();
    // Routes take a moment to form; connecting retries are the client's.
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::spawn(rbee_hive::run(hive, connect(&rotated(1)).await.expect("hive connects"), stop.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let queen_bus = connect(&rotated(0)).await.expect("queen connects");
    let config = QueenConfig { durable_jobs: false, ..QueenConfig::default() };
    tokio::spawn(rbee_queen::serve(config, queen_bus, listener, stop.clone()));
    let http = reqwest::Client::new();

    // The first job spawns a worker (on node 2) and answers through the queen (on node 0).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (status, body) = loop {
        let (status, body) = chat(&http, &base).await;
        if status == 200 || Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(status, 200, "{body}");
    assert!(
        body["choices"][0]["message"]["content"].as_str().unwrap_or_default().contains("Paris"),
        "{body}"
    );

    // Kill the node the queen is connected to: everyone reconnects to the others and jobs still run.
    cluster.nodes[0].kill();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = chat(&http, &base).await;
        if status == 200
            && body["choices"][0]["message"]["content"].as_str().unwrap_or_default().contains("Paris")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no successful job within 60 s of losing a node: {status} {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.cancel();
}
