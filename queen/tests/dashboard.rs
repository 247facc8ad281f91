//! The dashboard in a real headless browser (Debian's Chromium, installed by `make setup`) against a
//! real cluster (nats-server, a hive, a real worker on the real model, the queen): the page at `/`
//! renders the live worker, its model and hive, the bus and a job, from the SSE stream alone; its
//! screenshot is written to `target/dashboard.png` and named in the test output. With an API key the
//! page asks for it and shows no data; the stream refuses no key. The page fetches nothing from
//! elsewhere.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rbee_queen::QueenConfig;
use serde_json::json;

mod cluster;

use cluster::{Cluster, MODEL};

fn chromium() -> PathBuf {
    for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"] {
        if std::path::Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!("chromium is missing: run `make setup` (it installs Debian's chromium)");
}

/// Loads `url` in headless Chromium for a few seconds; `what` is `--dump-dom` or `--screenshot=...`.
fn browse(url: &str, what: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"])
        .args(["--window-size=1280,900", "--timeout=6000", "--virtual-time-budget=6000"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(what)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_the_live_cluster_in_a_headless_browser() {
    let c = Cluster::start("hive-dash", QueenConfig::default()).await;
    c.wait_until("the hive", |h, _| h["hives"].as_array().is_some_and(|a| !a.is_empty())).await;
    let (status, body) = c
        .post(
            "/api/chat",
            json!({"model": MODEL, "stream": false, "messages": [{"role": "user", "content": "hi"}],
                "options": {"num_predict": 2}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, workers) = c.get("/v1/workers").await;
    let worker_id = workers["workers"][0]["worker_id"].as_str().expect("a worker").to_owned();

    let page = c.http.get(format!("{}/", c.base)).send().await.expect("page");
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.expect("html");
    assert!(html.contains("<title>rbee</title>"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page fetches nothing from elsewhere"
    );

    // A job streams while the browser looks: the page shows the worker busy and the bus live.
    let http = c.http.clone();
    let url = format!("{}/api/chat", c.base);
    let busy = tokio::spawn(async move {
        let body = json!({"model": MODEL, "stream": false, "options": {"num_predict": 400, "temperature": 0},
            "messages": [{"role": "user", "content": "Write a long story about bees."}]});
        http.post(url).json(&body).send().await.map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = c.base.clone();
    let dom =
        tokio::task::spawn_blocking(move || browse(&format!("{base}/"), "--dump-dom")).await.expect("dom");
    for needle in [worker_id.as_str(), MODEL, "hive-dash", "● live", "class=\"s\">rbee.", "tok/s"] {
        assert!(dom.contains(needle), "the rendered page lacks {needle:?}:\n{dom}");
    }
    assert!(dom.contains("completed"), "the finished job is listed:\n{dom}");

    let shot = rbee_testkit::paths::workspace_root().join("target/dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let base = c.base.clone();
    let arg = format!("--screenshot={}", shot.display());
    tokio::task::spawn_blocking(move || browse(&format!("{base}/"), &arg)).await.expect("screenshot");
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "a screenshot of the page: {} ({size} bytes)", shot.display());
    eprintln!("dashboard screenshot: {} ({size} bytes)", shot.display());
    assert_eq!(busy.await.expect("join").ok(), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_api_key_the_page_asks_for_it_and_the_stream_refuses_no_key() {
    let key = "dash-test-key-0123456789";
    let config = QueenConfig { api_key: Some(key.to_owned()), ..QueenConfig::default() };
    let c = Cluster::start("hive-dash-key", config).await;
    let r = c.http.get(format!("{}/v1/dashboard/events", c.base)).send().await.expect("events");
    assert_eq!(r.status().as_u16(), 401, "the stream needs the key");
    let mut r = c
        .http
        .get(format!("{}/v1/dashboard/events", c.base))
        .bearer_auth(key)
        .send()
        .await
        .expect("events with the key");
    assert_eq!(r.status().as_u16(), 200);
    let first = tokio::time::timeout(Duration::from_secs(5), r.chunk()).await.expect("an event in time");
    let first = String::from_utf8_lossy(&first.expect("chunk").expect("bytes")).into_owned();
    assert!(first.contains("event: snapshot") || first.contains("event: bus"), "{first}");
    drop(r);
    let base = c.base.clone();
    let dom =
        tokio::task::spawn_blocking(move || browse(&format!("{base}/"), "--dump-dom")).await.expect("dom");
    assert!(dom.contains("key needed"), "the page asks for the key:\n{dom}");
    assert!(!dom.contains("hive-dash-key"), "no data without the key:\n{dom}");
}
