//! The official `ollama` Python client against a real cluster (nats-server, a hive, a real worker on
//! the real model, the queen): list, a streamed and a whole chat, generate (with `system`, with
//! `format: "json"`), embed, ps, show, and refusals in Ollama's error shape. The checks are in
//! `ollama_client.py`; this test starts the cluster, runs it with the project's `.venv` Python and fails
//! with its output when a check fails. Then what the client does not reach: `/api/version`, a load-only
//! generate, and a malformed body answered as `{"error": ...}`.

use std::time::Duration;

use rbee_queen::QueenConfig;
use serde_json::json;

mod cluster;

use cluster::{Cluster, MODEL};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ollama_client_lists_chats_generates_and_embeds() {
    let python = rbee_testkit::paths::workspace_root().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run `make setup`", python.display());
    let config = QueenConfig { queue_timeout: Duration::from_secs(60), ..QueenConfig::default() };
    let c = Cluster::start("hive-ollama", config).await;
    c.wait_until("the hive", |h, _| h["hives"].as_array().is_some_and(|a| !a.is_empty())).await;
    // An empty prompt is Ollama's "load the model": answered at once, no job.
    let (status, body) = c.post("/api/generate", json!({"model": MODEL})).await;
    assert_eq!((status, &body["done_reason"]), (200, &json!("load")), "{body}");
    // The first request spawns the worker; wait for it so that the client's timeouts measure answers.
    let (status, body) = c
        .post(
            "/api/chat",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
            "stream": false, "options": {"num_predict": 1}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["done"], true, "{body}");
    let script = rbee_testkit::paths::workspace_root().join("queen/tests/ollama_client.py");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(&c.base)
        .arg(MODEL)
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(out.status.success(), "ollama client checks failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all ollama client checks passed"), "{stdout}");

    let (status, body) = c.get("/api/version").await;
    assert_eq!(status, 200);
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    let r = c.http.post(format!("{}/api/chat", c.base)).body("{not json").send().await.expect("post");
    assert_eq!(r.status().as_u16(), 400);
    let body: serde_json::Value = r.json().await.expect("json");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("invalid request body")), "{body}");
    // No message is Ollama's load call for chat, checked like a job first.
    let (status, body) = c.post("/api/chat", json!({"model": MODEL, "messages": []})).await;
    assert_eq!((status, &body["done_reason"]), (200, &json!("load")), "{body}");
    let (status, body) = c.post("/api/generate", json!({"model": MODEL, "options": {"mirostat": 1}})).await;
    assert_eq!(status, 400, "a load call is checked too: {body}");
}
