//! A model no host can hold alone, on a real cluster (nats-server, two hives whose memory is limited
//! with `--memory-limit` below what the real model needs, the queen): `GET /v1/models` says the model
//! needs a split and names the hosts and shares, the model's host first, and a job for it stays
//! queued with a reason naming the split (rbee plans splits; it does not run them yet).

use std::time::{Duration, Instant};

use rbee_queen::QueenConfig;
use serde_json::{json, Value};

mod cluster;

use cluster::MODEL;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_no_hive_can_hold_alone_is_planned_across_two() {
    let server = rbee_testkit::NatsServer::start();
    let model_file = rbee_testkit::paths::require_default_model();
    let file_bytes = std::fs::metadata(&model_file).expect("model file").len();
    let needed = rbee_bus::sizing::worker_memory_bytes(
        file_bytes,
        rbee_bus::sizing::TYPICAL_KV_BYTES_PER_TOKEN,
        rbee_bus::sizing::DEFAULT_SLOTS,
        rbee_bus::sizing::DEFAULT_CTX_PER_SLOT,
    );
    // Each hive declares 60% and 50% of what a worker needs: neither alone, both together.
    let (dir_a, dir_b) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
    let mut with_model = cluster::hive_config(&server, "hive-a", dir_a.path());
    with_model.memory_limit = Some(needed * 6 / 10);
    let mut without_model = cluster::hive_config(&server, "hive-b", dir_b.path());
    without_model.import_models.clear();
    without_model.memory_limit = Some(needed / 2);
    let stop_a = cluster::run_hive(&server, with_model).await;
    let stop_b = cluster::run_hive(&server, without_model).await;
    let config = QueenConfig { queue_timeout: Duration::from_secs(60), ..QueenConfig::default() };
    let (queen_stop, _task, base) = cluster::start_queen(&server, config).await;
    let http = reqwest::Client::new();
    let get = |path: String| {
        let http = http.clone();
        async move { http.get(path).send().await.expect("get").json::<Value>().await.expect("json") }
    };

    let deadline = Instant::now() + Duration::from_secs(60);
    let model = loop {
        let models = get(format!("{base}/v1/models")).await;
        let listed = models["data"].as_array().and_then(|d| d.iter().find(|m| m["id"] == MODEL).cloned());
        if let Some(m) =
            listed.filter(|m| m["memory_plan"]["shares"].as_array().is_some_and(|s| s.len() == 2))
        {
            break m;
        }
        assert!(Instant::now() < deadline, "the model was never planned across both hives: {models}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(model["needs_split"], true, "{model}");
    assert_eq!(model["workers"], 0, "{model}");
    let plan = &model["memory_plan"];
    assert_eq!(plan["outcome"], "split", "{model}");
    assert_eq!(plan["needed_bytes"], needed, "{model}");
    let shares = plan["shares"].as_array().expect("shares");
    assert_eq!(shares[0]["hive_id"], "hive-a", "the worker's host has the model: {model}");
    assert_eq!(shares[1]["hive_id"], "hive-b", "{model}");
    let bytes: u64 = shares.iter().map(|s| s["bytes"].as_u64().expect("bytes")).sum();
    assert_eq!(bytes, needed, "{model}");
    let fraction_a = shares[0]["fraction"].as_f64().expect("fraction");
    assert!((fraction_a - 6.0 / 11.0).abs() < 0.01, "shares follow free memory: {model}");

    // A job for it waits, and its reason names the split; no worker is spawned.
    let (status, job) = {
        let r = http
            .post(format!("{base}/v1/jobs"))
            .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}))
            .send()
            .await
            .expect("post");
        (r.status().as_u16(), r.json::<Value>().await.expect("json"))
    };
    assert_eq!(status, 202, "{job}");
    let job_id = job["job_id"].as_str().expect("job id");
    let deadline = Instant::now() + Duration::from_secs(20);
    let record = loop {
        let record = get(format!("{base}/v1/jobs/{job_id}")).await;
        if record["queue_reason"].as_str().is_some_and(|r| r.contains("split across 2 hosts")) {
            break record;
        }
        assert!(Instant::now() < deadline, "the queued job never named the split: {record}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(record["state"]["phase"], "queued", "{record}");
    let reason = record["queue_reason"].as_str().unwrap_or_default();
    eprintln!("queued: {reason}");
    assert!(
        reason.contains("hive-a") && reason.contains("hive-b") && reason.contains("does not run yet"),
        "{reason}"
    );
    let workers = get(format!("{base}/v1/workers")).await;
    assert!(workers["workers"].as_array().is_some_and(Vec::is_empty), "a worker was spawned: {workers}");

    queen_stop.cancel();
    stop_a.cancel();
    stop_b.cancel();
}
