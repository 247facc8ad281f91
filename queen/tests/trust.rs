//! A hostile or unlucky client against a real cluster (nats-server, a hive on the real model, its
//! worker, the queen): what is refused, and that a refusal takes no worker out of scheduling.

use std::time::{Duration, Instant};

use rbee_queen::QueenConfig;
use serde_json::{json, Value};

mod cluster;

use cluster::{Cluster, MODEL};

fn workers_fenced(workers: &Value) -> usize {
    workers["workers"].as_array().map_or(0, |w| w.iter().filter(|w| w["fenced"] == true).count())
}

/// A prompt under the queen's text limit whose assignment encodes over the bus's message limit
/// (control characters are six bytes each in JSON; many small messages add their framing) is refused
/// at once with 413 naming the limit, and fences nobody (issue 15 item 1: before, the local
/// `TooLarge` was taken for a dead worker, which was fenced, and the job retried on the next).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_that_encode_over_the_bus_limit_are_413_and_fence_no_one() {
    let c = Cluster::start("hive-trust", QueenConfig::default()).await;
    c.wait_until("the hive with the model", |hives, _| hives.to_string().contains(MODEL)).await;
    let hello =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4});
    let (status, body) = c.post("/v1/chat/completions", hello.clone()).await;
    assert_eq!(status, 200, "{body}");

    let escaped = "\u{1}".repeat(200_000);
    let many: Vec<Value> = (0..40_000).map(|_| json!({"role": "user", "content": "a"})).collect();
    let cases = [
        json!({"model": MODEL, "messages": [{"role": "user", "content": escaped}], "max_tokens": 4}),
        json!({"model": MODEL, "messages": many, "max_tokens": 4}),
    ];
    for case in cases {
        let started = Instant::now();
        let (status, body) = c.post("/v1/chat/completions", case).await;
        assert_eq!(status, 413, "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("1048576 byte message limit"), "the limit is named: {message}");
        assert!(started.elapsed() < Duration::from_secs(5), "refused at once, not after retries");
    }
    let (_, workers) = c.get("/v1/workers").await;
    assert_eq!(workers_fenced(&workers), 0, "no worker fenced: {workers}");
    assert_eq!(workers["workers"].as_array().map_or(0, Vec::len), 1, "no second worker spawned: {workers}");
    let (status, body) = c.post("/v1/chat/completions", hello).await;
    assert_eq!(status, 200, "the next job runs: {body}");
    c.hive_stop.cancel();
    c.queen_stop.cancel();
}
