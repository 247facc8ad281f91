//! Models load and unload by themselves, on a real cluster (nats-server, a hive, real workers on the
//! real model, the queen): a worker spawned on demand unloads after a short `keep_alive` and says
//! when in `GET /v1/workers`; Ollama's load call with `keep_alive: 0` unloads at once; and on a hive
//! whose memory is limited to one worker, a second model evicts the idle first (the job's queued
//! reason says so) and is answered.

use std::time::{Duration, Instant};

use rbee_bus::ModelSummary;
use rbee_hive::ModelImport;
use rbee_queen::keep_alive::KeepAlive;
use rbee_queen::QueenConfig;
use serde_json::{json, Value};

mod cluster;

use cluster::MODEL;

/// The second model: the same GGUF under another id (a second model as far as rbee can tell).
const OTHER: &str = "smollm2-b";

struct Fixture {
    server: rbee_testkit::NatsServer,
    _dir: tempfile::TempDir,
    hive_stop: tokio_util::sync::CancellationToken,
    queen_stop: tokio_util::sync::CancellationToken,
    base: String,
    http: reqwest::Client,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.queen_stop.cancel();
        self.hive_stop.cancel();
        let _ = &self.server;
    }
}

impl Fixture {
    async fn start(keep_alive: KeepAlive, memory_limit: Option<u64>) -> Fixture {
        let server = rbee_testkit::NatsServer::start();
        let dir = tempfile::tempdir().expect("tmp");
        let mut hive = cluster::hive_config(&server, "hive-keep", dir.path());
        hive.import_models.push(ModelImport {
            path: rbee_testkit::paths::require_default_model(),
            id: Some(OTHER.parse().expect("id")),
        });
        hive.memory_limit = memory_limit;
        let hive_stop = cluster::run_hive(&server, hive).await;
        let config =
            QueenConfig { keep_alive, queue_timeout: Duration::from_secs(90), ..QueenConfig::default() };
        let (queen_stop, _task, base) = cluster::start_queen(&server, config).await;
        Fixture { server, _dir: dir, hive_stop, queen_stop, base, http: reqwest::Client::new() }
    }

    async fn get(&self, path: &str) -> Value {
        let r = self.http.get(format!("{}{path}", self.base)).send().await.expect("get");
        r.json().await.unwrap_or(Value::Null)
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self.http.post(format!("{}{path}", self.base)).json(&body).send().await.expect("post");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn workers(&self) -> Vec<Value> {
        self.get("/v1/workers").await["workers"].as_array().cloned().unwrap_or_default()
    }

    async fn wait_for(&self, what: &str, within: Duration, mut check: impl FnMut(&[Value]) -> bool) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if check(&self.workers().await) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("timed out waiting for {what}: {:?}", self.workers().await);
    }

    async fn chat(&self, model: &str, keep_alive: Option<&str>) -> Value {
        let mut body = json!({"model": model, "stream": false,
            "messages": [{"role": "user", "content": "Name a color."}], "options": {"num_predict": 4}});
        if let Some(k) = keep_alive {
            body["keep_alive"] = json!(k);
        }
        let (status, answer) = self.post("/api/chat", body).await;
        assert_eq!(status, 200, "{answer}");
        answer
    }

    async fn hive_summary(&self) -> ModelSummary {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let hives = self.get("/v1/hives").await;
            let model = hives["hives"][0]["models"].as_array().and_then(|m| m.first().cloned());
            if let Some(model) = model {
                return serde_json::from_value(model).expect("model summary");
            }
            assert!(Instant::now() < deadline, "the hive never listed its models: {hives}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn of_model<'a>(workers: &'a [Value], model: &str) -> Vec<&'a Value> {
    workers.iter().filter(|w| w["model_id"] == model && w["state"] != "stopped").collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_unloads_after_its_keep_alive_and_a_load_call_with_zero_unloads_at_once() {
    let f = Fixture::start(KeepAlive::For(Duration::from_secs(2)), None).await;
    f.hive_summary().await;
    // On demand, the queen's default: 2 s.
    f.chat(MODEL, None).await;
    let workers = f.workers().await;
    let worker = of_model(&workers, MODEL).first().cloned().cloned().expect("a worker of the model");
    assert_eq!(worker["keep_alive_s"], 2.0, "{worker}");
    f.wait_for("the idle worker to show its unload time", Duration::from_secs(10), |w| {
        of_model(w, MODEL).iter().any(|w| w["unload_in_s"].as_f64().is_some_and(|s| s <= 2.0))
    })
    .await;
    let idle_at = Instant::now();
    f.wait_for("the worker to unload", Duration::from_secs(20), |w| of_model(w, MODEL).is_empty()).await;
    let unloaded_after = idle_at.elapsed();
    eprintln!("unloaded {unloaded_after:?} after its unload time showed");
    assert!(unloaded_after < Duration::from_secs(15), "{unloaded_after:?}");

    // A request's keep_alive wins: -1 keeps it.
    f.chat(MODEL, Some("-1")).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let workers = f.workers().await;
    let kept = of_model(&workers, MODEL);
    assert_eq!(kept.len(), 1, "kept loaded past the default: {workers:?}");
    assert!(kept[0]["keep_alive_s"].is_null() && kept[0]["unload_in_s"].is_null(), "{:?}", kept[0]);
    // Ollama's load call with keep_alive 0: "unload", and the worker goes.
    let (status, body) = f.post("/api/generate", json!({"model": MODEL, "keep_alive": 0})).await;
    assert_eq!((status, &body["done_reason"]), (200, &json!("unload")), "{body}");
    f.wait_for("keep_alive 0 to unload it", Duration::from_secs(15), |w| of_model(w, MODEL).is_empty()).await;
    // A keep_alive that is no duration is refused by name.
    let (status, body) = f.post("/api/generate", json!({"model": MODEL, "keep_alive": "soon"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("keep_alive")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_model_evicts_the_idle_first_on_a_hive_with_room_for_one() {
    // Room for one worker: 1.3 times the larger of the queen's and the hive's estimates.
    let summary = {
        let probe = Fixture::start(KeepAlive::Forever, None).await;
        probe.hive_summary().await
    };
    let queen_estimate = rbee_queen::scheduler::estimate_spawn_bytes(&summary);
    let hive_estimate = {
        let entry = rbee_hive::catalog::models::ModelEntry {
            id: MODEL.parse().expect("id"),
            path: rbee_testkit::paths::require_default_model(),
            size: summary.size_bytes,
            architecture: summary.architecture.clone(),
            parameter_count: summary.parameter_count,
            quantization: summary.quantization.clone(),
            context_length: None,
            sha256: None,
            source: "test".into(),
            added_at: 0,
        };
        rbee_hive::handlers::workers::estimate_worker_bytes(
            &entry,
            rbee_bus::DEFAULT_SLOTS,
            rbee_bus::DEFAULT_CTX_PER_SLOT,
        )
        .expect("estimate")
    };
    let limit = queen_estimate.max(hive_estimate) * 13 / 10;
    let f = Fixture::start(KeepAlive::For(Duration::from_secs(600)), Some(limit)).await;
    f.hive_summary().await;
    f.chat(MODEL, None).await;
    f.wait_for("the first model's worker idle", Duration::from_secs(10), |w| {
        of_model(w, MODEL).iter().any(|w| w["state"] == "idle" && w["unload_in_s"].is_number())
    })
    .await;
    let first = of_model(&f.workers().await, MODEL)[0]["worker_id"].as_str().expect("id").to_owned();

    // The second model does not fit beside it: the job waits for the idle first to unload, then runs.
    let (status, job) = f
        .post(
            "/v1/jobs",
            json!({"model": OTHER, "messages": [{"role": "user", "content": "Name a color."}], "max_tokens": 4}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let job_id = job["job_id"].as_str().expect("job id").to_owned();
    let stream = f
        .http
        .get(format!("{}/v1/jobs/{job_id}/stream", f.base))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .expect("stream")
        .text()
        .await
        .expect("text");
    assert!(
        stream.contains(&format!("waiting for idle worker {first}")) && stream.contains("to make room"),
        "the queued reason names the eviction: {stream}"
    );
    let record = f.get(&format!("/v1/jobs/{job_id}")).await;
    assert_eq!(record["state"]["phase"], "completed", "{record}");
    let workers = f.workers().await;
    assert!(of_model(&workers, MODEL).is_empty(), "the first model was evicted: {workers:?}");
    assert_eq!(of_model(&workers, OTHER).len(), 1, "{workers:?}");
}
