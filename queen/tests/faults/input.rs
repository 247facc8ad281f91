//! Garbage in: malformed and oversized messages on every rbee subject, and garbage HTTP bodies.

use std::time::Duration;

use rbee_bus::*;
use serde_json::{json, Value};

use crate::harness::*;

/// Malformed and oversized messages on every rbee subject, and garbage HTTP bodies.
///
/// What the user sees: nothing breaks. Requests with garbage get an error reply (`bad_request`) at
/// once instead of a timeout; events with garbage are dropped, counted
/// (`rbee_rejected_messages_total` on the queen's `/metrics`, `malformed` in the worker's `$SRV.STATS`)
/// and logged (a warning naming the subject); a payload over the server's `max_payload` is refused at
/// the publisher with an error. Garbage HTTP bodies get a 4xx with an OpenAI-style error body, never a
/// 5xx. Queen, hive and worker keep running (same worker pid, still online) and the next job succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_and_garbage_http() {
    let _turn = TURN.lock().await;
    let _logs = LogGuard::new("malformed");
    let c = Cluster::start(Options::default()).await;
    let (worker_id, pid) = c.spawn_worker("hive-f", 2).await;
    let wid = WorkerId::new(worker_id.clone()).expect("id");
    let job = JobId::new("job-garbage").expect("id");
    let rejected_before = c.metric("rbee_rejected_messages_total").await;
    let malformed_before = worker_malformed(&c.bus).await;

    let deep = "[".repeat(100_000);
    let big = format!("{{\"v\":1,\"text\":\"{}\"}}", "a".repeat(1_000_000));
    let mut payloads: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"not json".to_vec(),
        b"{}".to_vec(),
        b"[]".to_vec(),
        b"null".to_vec(),
        b"{\"v\":1}".to_vec(),
        b"{\"v\":999,\"worker_id\":\"a.b\",\"job_id\":\"*\"}".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x80, 0xc3],
        deep.into_bytes(),
        big.into_bytes(),
    ];
    // A heartbeat that names another worker than its subject.
    let mut mismatched: Value = json!({"v": 1});
    mismatched["worker_id"] = json!("someone-else");
    payloads.push(serde_json::to_vec(&mismatched).expect("json"));

    let events = [
        subject::hive_heartbeat(&c.hive_id),
        subject::worker_heartbeat(&wid),
        subject::worker_lifecycle(&wid),
        subject::job_tokens(&job),
        subject::job_status(&job),
        subject::job_cancel(&job),
        subject::QUEEN_HELLO.to_owned(),
    ];
    let requests = [
        subject::hive_spawn(&c.hive_id),
        subject::hive_stop(&c.hive_id),
        subject::hive_workers(&c.hive_id),
        subject::hive_models(&c.hive_id),
        subject::hive_devices(&c.hive_id),
        subject::worker_jobs(&wid),
        subject::QUEEN_JOBS_SUBMIT.to_owned(),
    ];
    let client = c.bus.client();
    for subject in &events {
        for p in &payloads {
            client.publish(subject.clone(), p.clone().into()).await.expect("publish");
        }
    }
    let mut replies = 0;
    for subject in &requests {
        for p in &payloads {
            let req =
                async_nats::Request::new().payload(p.clone().into()).timeout(Some(Duration::from_secs(10)));
            let reply = client.send_request(subject.clone(), req).await.unwrap_or_else(|e| {
                panic!("garbage request on {subject} got no reply (a hang for the caller): {e}")
            });
            replies += 1;
            let listing = subject.ends_with(".workers")
                || subject.ends_with(".models")
                || subject.ends_with(".devices");
            if !listing {
                let err = rpc::decode_reply::<Value>(subject, &reply.payload);
                let is_error = matches!(&err, Err(BusError::Remote { .. }));
                assert!(
                    is_error,
                    "garbage on {subject} was not refused: {:?}",
                    String::from_utf8_lossy(&reply.payload)
                );
            }
        }
    }
    // Over the server's max_payload: refused at the publisher, with an error.
    let huge = vec![b'x'; 2 * 1024 * 1024];
    let over = client.publish(subject::job_tokens(&job), huge.into()).await;
    assert!(over.is_err(), "a 2 MiB publish was not refused");
    client.flush().await.expect("flush");
    eprintln!(
        "{} garbage events published, {replies} garbage requests answered",
        events.len() * payloads.len()
    );

    // Garbage HTTP bodies: 4xx, never 5xx, never a hang.
    let huge_body = format!("{{\"model\":\"{MODEL}\",\"prompt\":\"{}\"}}", "x".repeat(5 * 1024 * 1024));
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("application/json", b"".to_vec()),
        ("application/json", b"{not json".to_vec()),
        ("application/json", b"null".to_vec()),
        ("application/json", b"[]".to_vec()),
        ("application/json", b"{}".to_vec()),
        ("application/json", b"{\"model\":5}".to_vec()),
        ("application/json", format!("{{\"model\":\"{MODEL}\",\"messages\":\"x\"}}").into_bytes()),
        ("application/json", format!("{{\"model\":\"{MODEL}\",\"messages\":[],\"prompt\":7}}").into_bytes()),
        ("application/json", format!("{{\"model\":\"{MODEL}\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}],\"temperature\":\"hot\"}}").into_bytes()),
        ("application/json", format!("{{\"model\":\"{MODEL}\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}],\"max_tokens\":-1}}").into_bytes()),
        ("application/json", b"{\"model\":\"a.b\",\"prompt\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}".to_vec()),
        ("application/json", vec![0xff, 0xfe, 0x00, 0x80]),
        ("application/json", "[".repeat(100_000).into_bytes()),
        ("text/plain", b"hello".to_vec()),
        ("application/json", huge_body.into_bytes()),
    ];
    for path in ["/v1/chat/completions", "/v1/completions", "/v1/jobs", "/v1/workers"] {
        for (content_type, body) in &bodies {
            // `{"model": "smollm2", ...}` with extra fields is a valid spawn body: not garbage there.
            let names_model = String::from_utf8_lossy(body).contains(&format!("\"model\":\"{MODEL}\""));
            if path == "/v1/workers" && names_model && body.len() < 1024 {
                continue;
            }
            let r = c
                .http
                .post(format!("{}{path}", c.base))
                .header("content-type", *content_type)
                .body(body.clone())
                .timeout(Duration::from_secs(30))
                .send()
                .await;
            let shown: String = String::from_utf8_lossy(body).chars().take(80).collect();
            let r = match r {
                Ok(r) => r,
                // Over the 4 MiB limit the queen answers 413 before reading the whole body and closes
                // the connection; a client still writing may see the reset instead of the 413.
                Err(e) if body.len() > 4 * 1024 * 1024 => {
                    eprintln!("POST {path} with a {} byte body: {e}", body.len());
                    continue;
                }
                Err(e) => panic!("POST {path} {shown:?}: {e}"),
            };
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            assert!((400..500).contains(&status), "POST {path} {shown:?} -> {status} {text}");
            if status != 413 && status != 415 {
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                assert!(v["error"]["message"].is_string(), "POST {path} {shown:?}: no error body: {text}");
            }
        }
    }
    for (method, path) in [
        ("GET", "/v1/jobs/a.b"),
        ("GET", "/v1/jobs/%ff%fe"),
        ("GET", "/v1/jobs?limit=abc"),
        ("GET", "/v1/jobs?state=zzz"),
        ("GET", "/v1/jobs/job-nope/stream"),
        ("DELETE", "/v1/jobs/job-nope"),
        ("DELETE", "/v1/workers/a*b"),
        ("GET", "/v1/nothing"),
    ] {
        let r = c
            .http
            .request(method.parse().expect("method"), format!("{}{path}", c.base))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        assert!((400..500).contains(&status), "{method} {path} -> {status}");
    }

    // Everyone is still there.
    let (status, health) = c.get("/health").await;
    assert_eq!(status, 200, "{health}");
    assert!(
        matches!(c.hive.as_ref(), Some(Proc::InProcess { task, .. }) if !task.is_finished()),
        "the hive stopped"
    );
    assert!(process_alive(pid), "the worker process died");
    let wid2 = worker_id.clone();
    c.wait_view("hive and worker still online", Duration::from_secs(30), |h, w| {
        online(hive(h, "hive-f"))
            && worker(w, &wid2).is_some_and(|w| w["liveness"] == "online" && w["pid"] == pid)
    })
    .await;

    // Counted and logged.
    let rejected = c.metric("rbee_rejected_messages_total").await - rejected_before;
    let malformed = worker_malformed(&c.bus).await - malformed_before;
    eprintln!("queen rejected {rejected} messages, worker counted {malformed} malformed assignments");
    assert!(rejected >= (5 * payloads.len()) as f64, "queen counted only {rejected} rejections");
    assert!(malformed >= payloads.len() as u64, "worker counted only {malformed} malformed assignments");
    let text = log_text();
    for line in [
        "heartbeat rejected",
        "malformed token chunk ignored",
        "malformed job status ignored",
        "malformed job assignment refused",
        "malformed cancel ignored",
        "spawn refused",
    ] {
        assert!(text.contains(line), "no {line:?} in the logs");
    }

    // The next valid job succeeds.
    let (status, body) = c.quick_chat().await;
    assert_eq!(status, 200, "{body}");
    assert!(!body["choices"][0]["message"]["content"].as_str().unwrap_or_default().is_empty(), "{body}");
    c.stop().await;
}

/// The worker's `malformed` counter, from the NATS service API (`$SRV.STATS.rbee-worker`).
async fn worker_malformed(bus: &Bus) -> u64 {
    let reply = bus.client().request("$SRV.STATS.rbee-worker", "".into()).await.expect("stats");
    let stats: Value = serde_json::from_slice(&reply.payload).expect("stats json");
    stats["endpoints"][0]["data"]["malformed"]
        .as_u64()
        .unwrap_or_else(|| panic!("no malformed counter in {stats}"))
}
