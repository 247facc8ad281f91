//! Load: two hundred concurrent streams against one small worker; each gets a complete answer or a
//! clean refusal.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::events::*;
use crate::harness::*;

#[derive(Debug)]
enum Outcome {
    /// 200 and a complete stream.
    Completed,
    /// 429/503 with Retry-After.
    Refused(u16),
    /// Anything else: a broken promise.
    Broken(String),
}

async fn chat_stream(http: reqwest::Client, base: String, i: usize) -> Outcome {
    let body = json!({"model": MODEL, "stream": true, "max_tokens": 8, "temperature": 0,
        "messages": [{"role": "user", "content": format!("Say a word about the number {i}.")}]});
    let resp = match http.post(format!("{base}/v1/chat/completions")).json(&body).send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Broken(format!("chat {i}: {e}")),
    };
    let status = resp.status().as_u16();
    if status == 429 || status == 503 {
        return match resp.headers().get("retry-after") {
            Some(_) => Outcome::Refused(status),
            None => Outcome::Broken(format!("chat {i}: {status} without Retry-After")),
        };
    }
    if status != 200 {
        return Outcome::Broken(format!("chat {i}: {status} {}", resp.text().await.unwrap_or_default()));
    }
    let mut sse = Sse::new(resp);
    let (mut text, mut chunks, mut usage, mut done, mut finish) = (String::new(), 0u64, None, false, None);
    while let Some((_, data)) = sse.next().await {
        if data == "[DONE]" {
            done = true;
            break;
        }
        let v: Value = match serde_json::from_str(&data) {
            Ok(v) => v,
            Err(e) => return Outcome::Broken(format!("chat {i}: bad chunk {data}: {e}")),
        };
        if v.get("error").is_some() {
            return Outcome::Broken(format!("chat {i}: error in a started stream: {v}"));
        }
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
            chunks += 1;
        }
        if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
            finish = Some(f.to_owned());
        }
        if v["usage"].is_object() {
            usage = v["usage"]["completion_tokens"].as_u64();
        }
    }
    match (done, finish.as_deref(), usage) {
        (true, Some("stop" | "length"), Some(n)) if !text.is_empty() && chunks <= n && n > 0 => Outcome::Completed,
        _ => Outcome::Broken(format!(
            "chat {i}: incomplete stream: done={done} finish={finish:?} usage={usage:?} chunks={chunks} text={text:?}"
        )),
    }
}

async fn job_stream(http: reqwest::Client, base: String, i: usize) -> Outcome {
    let body = json!({"model": MODEL, "max_tokens": 8, "temperature": 0, "prompt": format!("Number {i} is")});
    let resp = match http.post(format!("{base}/v1/jobs")).json(&body).send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Broken(format!("job {i}: {e}")),
    };
    let status = resp.status().as_u16();
    if status == 429 || status == 503 {
        return match resp.headers().get("retry-after") {
            Some(_) => Outcome::Refused(status),
            None => Outcome::Broken(format!("job {i}: {status} without Retry-After")),
        };
    }
    let created: Value = resp.json().await.unwrap_or(Value::Null);
    if status != 202 {
        return Outcome::Broken(format!("job {i}: {status} {created}"));
    }
    let Some(url) = created["sse_url"].as_str() else {
        return Outcome::Broken(format!("job {i}: {created}"));
    };
    let resp = match http.get(format!("{base}{url}")).send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Broken(format!("job {i} stream: {e}")),
    };
    let mut sse = Sse::new(resp);
    let mut seen = JobEvents::default();
    JobEvents::read_to_end(&mut sse, &mut seen).await;
    let Some(last) = seen.last_status.clone() else {
        return Outcome::Broken(format!("job {i}: no final status"));
    };
    match last["finish_reason"].as_str() {
        Some("stop" | "length") => {}
        // An admitted (202) job may end in error only by waiting longer than the queue timeout.
        Some("error") if last["error"].as_str().is_some_and(|e| e.starts_with("gave up after")) => {
            return Outcome::Refused(0)
        }
        _ => return Outcome::Broken(format!("job {i}: ended {last}")),
    }
    let total = match seen.check_contiguous() {
        Ok(t) => t,
        Err(e) => return Outcome::Broken(format!("job {i}: {e}")),
    };
    let usage = last["usage"]["completion_tokens"].as_u64().unwrap_or(0);
    if u64::from(total) != usage || usage == 0 {
        return Outcome::Broken(format!("job {i}: chunks carry {total} tokens, usage says {usage}"));
    }
    Outcome::Completed
}

/// 200 concurrent streams against one small worker (4 slots), with a queue of 32.
///
/// What the user sees: every request ends. Either a 200 stream that ends with a `stop`/`length` chunk
/// carrying `usage`, then `[DONE]` (no token missing: on `/v1/jobs/{id}/stream` the chunks are numbered
/// 0..n and their token counts add up to `usage.completion_tokens`), or at once a 429 (`queue_full`) or
/// 503 with `Retry-After`. Nothing hangs, the queue drains, and the next job succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_streams_against_one_small_worker() {
    let _turn = TURN.lock().await;
    let _logs = LogGuard::new("load");
    const CAPACITY: usize = 32;
    let options =
        Options { queue_capacity: CAPACITY, queue_timeout: Duration::from_secs(120), ..Options::default() };
    let c = Cluster::start(options).await;
    c.spawn_worker("hive-f", 4).await;

    // Watch the queue depth while the storm runs.
    let stop_watch = CancellationToken::new();
    let watcher = {
        let (http, base, stop) = (c.http.clone(), c.base.clone(), stop_watch.clone());
        tokio::spawn(async move {
            let mut max = 0f64;
            while !stop.is_cancelled() {
                if let Ok(r) = http.get(format!("{base}/metrics")).send().await {
                    let text = r.text().await.unwrap_or_default();
                    if let Some(v) = text.lines().find_map(|l| l.strip_prefix("rbee_queue_depth ")) {
                        max = max.max(v.trim().parse().unwrap_or(0.0));
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            max
        })
    };

    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build().expect("client");
    let started = Instant::now();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (http, base) = (http.clone(), c.base.clone());
            tokio::spawn(async move {
                let run = async {
                    if i % 2 == 0 {
                        chat_stream(http, base, i).await
                    } else {
                        job_stream(http, base, i).await
                    }
                };
                match tokio::time::timeout(Duration::from_secs(300), run).await {
                    Ok(o) => o,
                    Err(_) => Outcome::Broken(format!("request {i} hung for 300 s")),
                }
            })
        })
        .collect();
    let mut completed = 0;
    let mut refused = 0;
    let mut refused_by = std::collections::BTreeMap::new();
    let mut broken = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            Outcome::Completed => completed += 1,
            Outcome::Refused(status) => {
                refused += 1;
                *refused_by.entry(status).or_insert(0) += 1;
            }
            Outcome::Broken(why) => broken.push(why),
        }
    }
    let elapsed = started.elapsed();
    stop_watch.cancel();
    let max_depth = watcher.await.unwrap_or(0.0);
    eprintln!(
        "200 streams in {elapsed:?}: {completed} completed, {refused} refused (by status, 0 = failed in the queue: {refused_by:?}), {} broken; max queue depth seen {max_depth}",
        broken.len()
    );
    let (_, workers) = c.get("/v1/workers").await;
    eprintln!(
        "workers after the storm: {} (the queen spawns more CPU workers while jobs queue)",
        workers["workers"].as_array().map_or(0, Vec::len)
    );
    assert!(broken.is_empty(), "{} requests broke their promise:\n{}", broken.len(), broken.join("\n"));
    assert!(completed >= 1, "nothing completed");
    assert!(
        refused >= 1,
        "200 concurrent streams against a queue of {CAPACITY} and 4 slots were never refused"
    );
    // Admissions stop at the capacity; a job admitted straight to a worker that then had no slot
    // joins the queue after, so the depth may pass the capacity by at most the worker's slots.
    assert!(max_depth <= (CAPACITY + 4) as f64, "the queue held {max_depth} jobs, capacity {CAPACITY}");

    // The queue drains and the next job succeeds.
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.metric("rbee_queue_depth").await > 0.0 {
        assert!(Instant::now() < deadline, "the queue never drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = c.quick_chat().await;
    assert_eq!(status, 200, "{body}");
    c.stop().await;
}
