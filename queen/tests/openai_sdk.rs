//! The official `openai` Python SDK against a real cluster (nats-server, a hive, a real worker on the
//! real model, the queen): tool calls named, required and streamed, a follow-up turn with a tool's
//! answer, `json_object`, `parse()` with a pydantic model, `n`, `logprobs` and refusals. The checks are
//! in `openai_sdk.py`; this test starts the cluster, runs it with the project's `.venv` Python and fails
//! with its output when a check fails.

use std::time::Duration;

use rbee_queen::QueenConfig;
use serde_json::json;

mod cluster;

use cluster::{Cluster, MODEL};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_gets_tools_structured_outputs_choices_and_logprobs() {
    let python = rbee_testkit::paths::workspace_root().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run `make setup`", python.display());
    let config = QueenConfig { queue_timeout: Duration::from_secs(60), ..QueenConfig::default() };
    let c = Cluster::start("hive-sdk", config).await;
    c.wait_until("the hive", |h, _| h["hives"].as_array().is_some_and(|a| !a.is_empty())).await;
    // The first request spawns the worker; wait for it so that the SDK's timeouts measure answers.
    let (status, body) = c
        .post(
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let script = rbee_testkit::paths::workspace_root().join("queen/tests/openai_sdk.py");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(format!("{}/v1", c.base))
        .arg(MODEL)
        .output()
        .await
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(out.status.success(), "openai sdk checks failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all openai sdk checks passed"), "{stdout}");
}
