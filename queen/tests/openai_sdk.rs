//! The official `openai` Python SDK against a real cluster (nats-server, a hive, a real worker on the
//! real model, the queen): tool calls named, required and streamed, a follow-up turn with a tool's
//! answer, `json_object`, `parse()` with a pydantic model, `n`, `logprobs`, embeddings and refusals.
//! The checks are in `openai_sdk.py`; this test starts the cluster, runs it with the project's `.venv`
//! Python and fails with its output when a check fails. Then the same embeddings over NATS
//! (`rbee.queen.embed`), as a third-party program would ask for them, and the refusals there.

use std::time::Duration;

use rbee_bus::{connect, subject, BusError, EmbedReply, EmbedRequest, ErrorCode, NatsConfig, SCHEMA_VERSION};
use rbee_queen::QueenConfig;
use serde_json::json;

mod cluster;

use cluster::{Cluster, MODEL};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_gets_tools_structured_outputs_choices_logprobs_and_embeddings() {
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

    // n = 3 of one prompt: the first choice reads the prompt, the other two copy its cells.
    let ask = json!({"model": MODEL, "n": 3, "max_tokens": 4, "seed": 5, "messages": [{"role": "user",
        "content": "Name three rivers of Europe and say which sea each one flows into."}]});
    let (status, body) = c.post("/v1/chat/completions", ask).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"].as_array().map(Vec::len), Some(3), "{body}");
    let prompt_tokens = body["usage"]["prompt_tokens"].as_u64().expect("prompt tokens");
    let (_, jobs) = c.get("/v1/jobs").await;
    let mut jobs = jobs["jobs"].as_array().cloned().unwrap_or_default();
    jobs.sort_by_key(|j| std::cmp::Reverse(j["created_at_ms"].as_u64()));
    let cached: Vec<u64> =
        jobs.iter().take(3).map(|j| j["usage"]["cached_tokens"].as_u64().unwrap_or(0)).collect();
    assert_eq!(
        cached.iter().filter(|c| **c + 1 >= prompt_tokens).count(),
        2,
        "{cached:?} of {prompt_tokens}"
    );

    // Over NATS: 10 texts (two batches of the worker's 8), in order, unit length, same text same vector.
    let bus = connect(&NatsConfig::url(c.server.url())).await.expect("connect");
    let texts: Vec<String> = (0..10).map(|i| format!("sentence number {}", i % 5)).collect();
    let request = EmbedRequest { v: SCHEMA_VERSION, model_id: MODEL.parse().expect("id"), inputs: texts };
    let t = Duration::from_secs(60);
    let reply: EmbedReply =
        bus.request(subject::QUEEN_EMBED.to_owned(), &request, t).await.expect("embed reply");
    assert_eq!(reply.embeddings.len(), 10);
    assert!(reply.dimensions > 0 && reply.embeddings.iter().all(|v| v.len() == reply.dimensions as usize));
    assert_eq!(reply.pooling, "mean");
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum::<f64>();
    for (i, v) in reply.embeddings.iter().enumerate() {
        assert!((dot(v, v) - 1.0).abs() < 1e-3, "vector {i} is not unit length");
    }
    // Text 7 is text 2 again, in the other batch.
    assert!((dot(&reply.embeddings[2], &reply.embeddings[7]) - 1.0).abs() < 1e-4);
    assert!(reply.prompt_tokens >= 10, "{}", reply.prompt_tokens);
    // Refused with the field named: an empty text, an unknown model, a body that is not a request.
    let empty = EmbedRequest { inputs: vec![String::new()], ..request.clone() };
    match bus.request::<_, EmbedReply>(subject::QUEEN_EMBED.to_owned(), &empty, t).await {
        Err(BusError::Remote { error, .. }) => {
            assert_eq!(error.code(), ErrorCode::InvalidParams);
            assert_eq!(error.error.field.as_deref(), Some("input"));
        }
        other => panic!("an empty text was not refused: {other:?}"),
    }
    let unknown = EmbedRequest { model_id: "no-such-model".parse().expect("id"), ..request.clone() };
    match bus.request::<_, EmbedReply>(subject::QUEEN_EMBED.to_owned(), &unknown, t).await {
        Err(BusError::Remote { error, .. }) => assert_eq!(error.code(), ErrorCode::UnknownModel),
        other => panic!("an unknown model was not refused: {other:?}"),
    }
    match bus.request::<_, EmbedReply>(subject::QUEEN_EMBED.to_owned(), &json!({"inputs": 3}), t).await {
        Err(BusError::Remote { error, .. }) => assert_eq!(error.code(), ErrorCode::BadRequest),
        other => panic!("a malformed request was not refused: {other:?}"),
    }
}
