//! Several machines for real: three hosts of their own (network namespaces linked only to each other,
//! `rbee_testkit::hosts`), each with its own nats-server node of one cluster, its own hive and data
//! dir. Host 1 runs `rbee up --host 198.18.0.1 --no-worker`, hosts 2 and 3 run `rbee join
//! <data_dir>/join.toml --host 198.18.0.<i>`: the commands the README gives. A client on host 1 streams
//! a job from a worker on host 2 or 3; that whole machine is then lost (every process killed at once,
//! no hive left to report it), and the stream goes on from the other host with the text an
//! uninterrupted run gives. Then the other joined host is cut off for 10 s mid-stream and heals, a
//! hive is drained without a failed request, and `--replicas 2` puts the model on two hosts. Skipped,
//! with the reason, without root or `ip`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::hosts::{rbee_on, wait_for, Guard};
use common::{lines_of, read_until};
use rbee_testkit::hosts::Hosts;
use serde_json::{json, Value};

const MODEL: &str = "smollm2-135m-instruct";

fn api(hosts: &Hosts, i: usize, method: &str, path: &str, body: Option<Value>) -> Value {
    let url = format!("http://{}:7833{path}", hosts.addr(1));
    let mut args = vec!["-X", method, url.as_str(), "-H", "content-type: application/json"];
    let body = body.map(|b| b.to_string());
    if let Some(b) = &body {
        args.extend(["-d", b.as_str()]);
    }
    let out = hosts.curl(i, &args).unwrap_or_else(|e| panic!("{method} {path}: {e:#}"));
    serde_json::from_str(&out).unwrap_or_else(|_| panic!("{method} {path}: not json: {out}"))
}

/// The events of a job's SSE stream read on host `i`, as (event, data, when) on a channel.
fn follow(hosts: &Hosts, i: usize, job_id: &str) -> (Guard, mpsc::Receiver<(String, Value, Instant)>) {
    let url = format!("http://{}:7833/v1/jobs/{job_id}/stream", hosts.addr(1));
    let mut child = hosts
        .command(i, "curl")
        .args(["-sSN", "--max-time", "120", &url])
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut event = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_owned();
            } else if let Some(d) = line.strip_prefix("data:") {
                let data = serde_json::from_str(d.trim()).unwrap_or(Value::Null);
                if tx.send((event.clone(), data, Instant::now())).is_err() {
                    break;
                }
            }
        }
    });
    (Guard(child), rx)
}

#[test]
fn three_hosts_join_and_a_lost_machine_does_not_lose_the_answer() {
    rbee_testkit::paths::require_default_model();
    let hosts = match Hosts::create(3) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("skipping: {e:#}");
            return;
        }
    };
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tmp")).collect();

    // Host 1: the first machine.
    let mut up = rbee_on(&hosts, 1)
        .args(["up", "--host", &hosts.addr(1), "--no-worker", "--data-dir"])
        .arg(dirs[0].path())
        .spawn()
        .expect("rbee up --host");
    let up_out = lines_of(vec![Box::new(up.stdout.take().expect("stdout"))]);
    let _up = Guard(up);
    let banner = read_until(&up_out, "rbee join", Duration::from_secs(120)).join("\n");
    let join_file = dirs[0].path().join("join.toml");
    assert!(banner.contains(&format!("rbee join {}", join_file.display())), "{banner}");
    let join = std::fs::read_to_string(&join_file).expect("join.toml");
    assert!(join.contains("nats-route://198.18.0.1:6222"), "{join}");

    // Hosts 2 and 3 join, as the banner says.
    let mut joined = Vec::new();
    for i in 2..=3 {
        let mut child = rbee_on(&hosts, i)
            .arg("join")
            .arg(&join_file)
            .args(["--host", &hosts.addr(i), "--hive-id", &format!("h{i}"), "--data-dir"])
            .arg(dirs[i - 1].path())
            .spawn()
            .expect("rbee join");
        let out = lines_of(vec![Box::new(child.stdout.take().expect("stdout"))]);
        joined.push(Guard(child));
        read_until(&out, "joined: hive", Duration::from_secs(90));
    }
    let hives = api(&hosts, 3, "GET", "/v1/hives", None);
    for id in ["local", "h2", "h3"] {
        assert!(hives["hives"].as_array().is_some_and(|a| a.iter().any(|h| h["hive_id"] == id)), "{hives}");
    }

    // One worker on each joined host, spawned through the queen on host 1.
    for id in ["h2", "h3"] {
        let reply =
            api(&hosts, 1, "POST", "/v1/workers", Some(json!({"model": MODEL, "hive": id, "slots": 1})));
        assert!(reply["worker_id"].is_string(), "spawn on {id}: {reply}");
    }
    wait_for("both workers ready", Duration::from_secs(90), || {
        let workers = api(&hosts, 1, "GET", "/v1/workers", None);
        let ready = workers["workers"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|w| w["liveness"] == "online" && w["state"] == "idle").count());
        ready == 2
    });

    // The answer without a fault.
    let job = json!({"model": MODEL, "max_tokens": 150, "temperature": 0,
        "messages": [{"role": "user", "content": "Write a very long story about a dragon, a knight and the sea."}]});
    let reference = api(&hosts, 1, "POST", "/v1/chat/completions", Some(job.clone()));
    let expected = reference["choices"][0]["message"]["content"].as_str().expect("text").to_owned();

    // The same job streamed; its worker's machine is lost after a few tokens.
    let mut body = job.clone();
    body["job_id"] = json!("job-lost-host");
    let created = api(&hosts, 1, "POST", "/v1/jobs", Some(body));
    assert_eq!(created["job_id"], "job-lost-host", "{created}");
    let (_curl, events) = follow(&hosts, 1, "job-lost-host");
    let mut text = String::new();
    let mut seen = Vec::new();
    let mut tokens_before = 0;
    while tokens_before < 3 {
        let (event, data, at) = events.recv_timeout(Duration::from_secs(60)).expect("tokens flow");
        if event == "token" {
            text.push_str(data["text"].as_str().unwrap_or_default());
            tokens_before += 1;
        }
        seen.push((event, data, at));
    }
    let record = api(&hosts, 1, "GET", "/v1/jobs/job-lost-host", None);
    let worker_id = record["worker_id"].as_str().expect("placed").to_owned();
    let workers = api(&hosts, 1, "GET", "/v1/workers", None);
    let hive = workers["workers"]
        .as_array()
        .and_then(|a| a.iter().find(|w| w["worker_id"] == worker_id.as_str()))
        .and_then(|w| w["hive_id"].as_str())
        .expect("the worker's hive")
        .to_owned();
    let lost = if hive == "h2" { 2 } else { 3 };
    let last_before = Instant::now();
    let killed = hosts.kill_host(lost);
    eprintln!("host {lost} (hive {hive}, worker {worker_id}) lost: {killed} processes killed");

    let mut first_after = None;
    let last = loop {
        let (event, data, at) = events.recv_timeout(Duration::from_secs(60)).expect("the stream goes on");
        if event == "token" {
            if data["worker_id"] != worker_id.as_str() && first_after.is_none() {
                first_after = Some(at);
            }
            text.push_str(data["text"].as_str().unwrap_or_default());
        }
        let end = event == "status" && data["state"] == "finished";
        seen.push((event, data.clone(), at));
        if end {
            break data;
        }
    };
    let gap = first_after.map(|at| at.duration_since(last_before));
    let migrating_at = seen
        .iter()
        .find(|(e, d, _)| e == "status" && d["state"] == "migrating")
        .map(|(_, _, at)| at.duration_since(last_before));
    eprintln!("lost machine: migrating after {migrating_at:?}, stream gap {gap:?}");
    // The default bound (500 ms heartbeats: offline after 3 silent intervals, confirmed within one).
    assert!(
        migrating_at.is_some_and(|d| d <= Duration::from_secs(3)),
        "migrating only after {migrating_at:?}"
    );
    assert_eq!(last["finish_reason"], "length", "{last}");
    assert_eq!(text, expected, "the answer after the migration differs from the uninterrupted one");
    assert!(
        seen.iter().any(|(e, d, _)| e == "status"
            && d["state"] == "migrating"
            && d["from_worker"] == worker_id.as_str()),
        "no migrating status"
    );
    let record = api(&hosts, 1, "GET", "/v1/jobs/job-lost-host", None);
    assert_eq!(record["migrations"], 1, "{record}");
    assert_ne!(record["worker_id"], json!(worker_id), "{record}");

    let survivor = if lost == 2 { 3 } else { 2 };
    partition_heals(&hosts, &job, &expected, survivor);
    let drained = drain_without_a_failed_request(&hosts, &job);
    replicas_on_two_hosts(&hosts, &drained);
}

/// The workers the queen lists.
fn workers(hosts: &Hosts) -> Vec<Value> {
    api(hosts, 1, "GET", "/v1/workers", None)["workers"].as_array().cloned().unwrap_or_default()
}

/// The hive of a job's current worker.
fn hive_of_job(hosts: &Hosts, job_id: &str) -> (String, String) {
    let record = api(hosts, 1, "GET", &format!("/v1/jobs/{job_id}"), None);
    let worker_id = record["worker_id"].as_str().unwrap_or_else(|| panic!("not placed: {record}")).to_owned();
    let hive = workers(hosts)
        .iter()
        .find(|w| w["worker_id"] == worker_id.as_str())
        .and_then(|w| w["hive_id"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no worker {worker_id}"));
    (worker_id, hive)
}

/// Submits `job` as `job_id` and follows it from host 1; returns the stream after `tokens` tokens
/// with the text so far.
fn start_stream(
    hosts: &Hosts,
    job: &Value,
    job_id: &str,
    tokens: usize,
) -> (Guard, mpsc::Receiver<(String, Value, Instant)>, String) {
    let mut body = job.clone();
    body["job_id"] = json!(job_id);
    let created = api(hosts, 1, "POST", "/v1/jobs", Some(body));
    assert_eq!(created["job_id"], job_id, "{created}");
    let (curl, events) = follow(hosts, 1, job_id);
    let mut text = String::new();
    let mut seen = 0;
    while seen < tokens {
        let (event, data, _) = events.recv_timeout(Duration::from_secs(60)).expect("tokens flow");
        if event == "token" {
            text.push_str(data["text"].as_str().unwrap_or_default());
            seen += 1;
        }
    }
    (curl, events, text)
}

/// Reads a stream to its final status: the text, the statuses seen, the last one.
fn finish_stream(
    events: &mpsc::Receiver<(String, Value, Instant)>,
    mut text: String,
) -> (String, Vec<Value>) {
    let mut statuses = Vec::new();
    loop {
        let (event, data, _) = events.recv_timeout(Duration::from_secs(90)).expect("the stream goes on");
        if event == "token" {
            text.push_str(data["text"].as_str().unwrap_or_default());
        } else if event == "status" {
            let end = matches!(data["state"].as_str(), Some("finished" | "failed" | "cancelled"));
            statuses.push(data);
            if end {
                return (text, statuses);
            }
        }
    }
}

/// Host `survivor` is cut off for 10 s while a job streams from its worker (the only other one is
/// gone): the job migrates to a worker the queen spawns on host 1, the client gets the uninterrupted
/// text once (the cut attempt's chunks, delivered when the link comes back, are dropped), and after
/// healing the host's hive and worker are back in the view.
fn partition_heals(hosts: &Hosts, job: &Value, expected: &str, survivor: usize) {
    let hive = format!("h{survivor}");
    let (_curl, events, text) = start_stream(hosts, job, "job-partition", 3);
    let (cut_worker, on) = hive_of_job(hosts, "job-partition");
    assert_eq!(on, hive, "the job runs on the one worker left");
    let cut_at = Instant::now();
    hosts.cut(survivor).expect("cut");
    eprintln!("host {survivor} cut off");
    let (text, statuses) = finish_stream(&events, text);
    let last = statuses.last().expect("a final status");
    assert_eq!(last["state"], "finished", "{last}");
    assert_eq!(text, expected, "the answer across the partition differs from the uninterrupted one");
    assert!(statuses.iter().any(|s| s["state"] == "migrating" && s["from_worker"] == cut_worker.as_str()));
    let (_, now_on) = hive_of_job(hosts, "job-partition");
    assert_eq!(now_on, "local", "migrated to a worker spawned on host 1");
    eprintln!("partition: job finished {:?} after the cut", cut_at.elapsed());

    std::thread::sleep(Duration::from_secs(10).saturating_sub(cut_at.elapsed()));
    hosts.restore(survivor).expect("restore");
    let healed = Instant::now();
    wait_for("the cut host back in the view", Duration::from_secs(30), || {
        let hives = api(hosts, 1, "GET", "/v1/hives", None);
        let hive_back = hives["hives"]
            .as_array()
            .is_some_and(|a| a.iter().any(|h| h["hive_id"] == hive.as_str() && h["liveness"] == "online"));
        let worker_back =
            workers(hosts).iter().any(|w| w["worker_id"] == cut_worker.as_str() && w["liveness"] == "online");
        hive_back && worker_back
    });
    let back = healed.elapsed();
    eprintln!(
        "partition healed: hive {hive} and worker {cut_worker} online {back:?} after the link came back"
    );
    // Two heartbeats (500 ms each by default), plus the nats route's reconnect (it retries every
    // second): back within two heartbeats of the route being up.
    assert!(back <= Duration::from_secs(3), "back only after {back:?}");
    // The job's record kept what the client got: nothing from the cut attempt after the fact.
    let record = api(hosts, 1, "GET", "/v1/jobs/job-partition", None);
    assert_eq!(record["state"]["phase"], "completed", "{record}");
    assert_eq!(record["migrations"], 1, "{record}");
}

/// `rbee hives drain` on the hive of a running job: that job finishes, the next goes elsewhere, the
/// hive's worker stops; `rbee hives undrain` takes it back. Returns the drained hive.
fn drain_without_a_failed_request(hosts: &Hosts, job: &Value) -> String {
    wait_for("two workers ready", Duration::from_secs(60), || {
        workers(hosts).iter().filter(|w| w["liveness"] == "online" && w["state"] == "idle").count() == 2
    });
    let (_curl, events, text) = start_stream(hosts, job, "job-drain", 2);
    let (_, hive) = hive_of_job(hosts, "job-drain");
    let mut drain = rbee_on(hosts, 1).args(["hives", "drain", &hive]).spawn().expect("rbee hives drain");
    let drain_out = lines_of(vec![Box::new(drain.stdout.take().expect("stdout"))]);
    let drain = Guard(drain);
    read_until(&drain_out, "draining hive", Duration::from_secs(10));
    let hives = api(hosts, 1, "GET", "/v1/hives", None);
    let view =
        hives["hives"].as_array().and_then(|a| a.iter().find(|h| h["hive_id"] == hive.as_str()).cloned());
    assert_eq!(
        view.as_ref().map(|h| (&h["draining"], &h["schedulable"])),
        Some((&json!(true), &json!(false)))
    );
    // A job submitted during the drain goes to the other hive.
    let during = api(
        hosts,
        1,
        "POST",
        "/v1/chat/completions",
        Some(json!({"model": MODEL, "max_tokens": 8,
        "messages": [{"role": "user", "content": "Say hi."}]})),
    );
    assert!(during["choices"][0]["message"]["content"].is_string(), "{during}");
    let (text, statuses) = finish_stream(&events, text);
    assert_eq!(statuses.last().map(|s| &s["state"]), Some(&json!("finished")), "{statuses:?}");
    assert!(!text.is_empty());
    assert!(!statuses.iter().any(|s| s["state"] == "migrating"), "the drained job finished where it ran");
    read_until(&drain_out, "is drained", Duration::from_secs(60));
    drop(drain);
    assert!(!workers(hosts).iter().any(|w| w["hive_id"] == hive.as_str()), "a worker is left on {hive}");
    let out = rbee_on(hosts, 1).args(["hives", "undrain", &hive]).output().expect("rbee hives undrain");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("takes work again"), "{said}");
    hive
}

/// `rbee workers spawn MODEL --replicas 2`: the hive already serving counts, the drained-and-back
/// one gets a new worker; three are refused with the reason (the lost host's hive is offline).
fn replicas_on_two_hosts(hosts: &Hosts, empty_hive: &str) {
    let out = rbee_on(hosts, 1).args(["workers", "spawn", MODEL, "--replicas", "2"]).output().expect("spawn");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(said.contains(&format!("on hive {empty_hive}")) && said.contains("already serves"), "{said}");
    let serving: std::collections::BTreeSet<String> = workers(hosts)
        .iter()
        .filter(|w| w["model_id"] == MODEL && w["liveness"] == "online")
        .filter_map(|w| w["hive_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(serving.len(), 2, "{serving:?}");
    let url = format!("http://{}:7833/v1/workers", hosts.addr(1));
    let body = json!({"model": MODEL, "replicas": 3}).to_string();
    let refused = hosts
        .curl(
            1,
            &[
                "-w",
                "\n%{http_code}",
                "-X",
                "POST",
                &url,
                "-H",
                "content-type: application/json",
                "-d",
                &body,
            ],
        )
        .expect("curl");
    assert!(refused.ends_with("503") && refused.contains("replicas: 3 needs 3 hives"), "{refused}");
}
