//! Two queens across machines: three hosts of their own (network namespaces), host 1 runs `rbee up
//! --host`, hosts 2 and 3 `rbee join ... --standby-queen` (a standby queen and a JetStream node each, so the
//! lease bucket has three replicas). Whichever queen leads, a worker runs on a second machine and a
//! chat is sent to the standby queen of the third; the leader's machine is then lost as a whole
//! mid-answer: a standby takes the lease, the client gets its whole answer, and the next job is
//! placed by the new leader.
//! Skipped, with the reason, without root or `ip`.

mod common;

use std::time::{Duration, Instant};

use common::hosts::{rbee_on, wait_for, Guard};
use common::{lines_of, read_until};
use rbee_testkit::hosts::Hosts;
use serde_json::{json, Value};

const MODEL: &str = "smollm2-135m-instruct";

/// `curl` on host `i` to the queen on host `on`.
fn api(hosts: &Hosts, i: usize, on: usize, method: &str, path: &str, body: Option<&Value>) -> Option<Value> {
    let url = format!("http://{}:7833{path}", hosts.addr(on));
    let mut args =
        vec!["-sS", "--max-time", "120", "-X", method, url.as_str(), "-H", "content-type: application/json"];
    let body = body.map(Value::to_string);
    if let Some(b) = &body {
        args.extend(["-d", b.as_str()]);
    }
    let out = hosts.curl(i, &args).ok()?;
    serde_json::from_str(&out).ok()
}

fn role(hosts: &Hosts, i: usize) -> Option<String> {
    let health = api(hosts, i, i, "GET", "/health", None)?;
    health["leader"]["role"].as_str().map(str::to_owned)
}

#[test]
fn a_standby_on_another_machine_takes_over_when_the_first_machine_is_lost() {
    rbee_testkit::paths::require_default_model();
    let hosts = match Hosts::create(3) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("skipping: {e:#}");
            return;
        }
    };
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tmp")).collect();
    let mut up = rbee_on(&hosts, 1)
        .args(["up", "--host", &hosts.addr(1), "--no-worker", "--data-dir"])
        .arg(dirs[0].path())
        .spawn()
        .expect("rbee up --host");
    let up_out = lines_of(vec![Box::new(up.stdout.take().expect("stdout"))]);
    let _up = Guard(up);
    read_until(&up_out, "rbee join", Duration::from_secs(120));
    let join_file = dirs[0].path().join("join.toml");
    let mut joined = Vec::new();
    for i in 2..=3 {
        let mut child = rbee_on(&hosts, i)
            .arg("join")
            .arg(&join_file)
            .args(["--host", &hosts.addr(i), "--hive-id", &format!("h{i}"), "--standby-queen", "--data-dir"])
            .arg(dirs[i - 1].path())
            .spawn()
            .expect("rbee join --standby-queen");
        let out = lines_of(vec![Box::new(child.stdout.take().expect("stdout"))]);
        joined.push(Guard(child));
        let line = read_until(&out, "joined: hive", Duration::from_secs(90)).join("\n");
        assert!(line.contains("a standby queen on"), "{line}");
    }
    let log = dirs[0].path().join("logs").join("queen.log");
    let tail = |path: &std::path::Path| {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines().rev().filter(|l| !l.contains("heartbeat")).take(60).collect::<Vec<_>>().join("\n")
    };
    // JetStream elects its leader once the other JetStream nodes joined; the first machine's queen
    // led alone until then, and now one of the three queens takes the lease, the others stand by.
    let deadline = Instant::now() + Duration::from_secs(60);
    let leader = loop {
        let roles: Vec<Option<String>> = (1..=3).map(|i| role(&hosts, i)).collect();
        let leaders: Vec<usize> = (1..=3).filter(|&i| roles[i - 1].as_deref() == Some("leader")).collect();
        if leaders.len() == 1 && roles.iter().filter(|r| r.as_deref() == Some("standby")).count() == 2 {
            break leaders[0];
        }
        assert!(
            Instant::now() < deadline,
            "no single leader: {roles:?}; host 1's queen log:\n{}",
            tail(&log)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("host {leader}'s queen leads");
    // The worker on a machine that does not lead, the client on the third.
    let worker_host = if leader == 3 { 2 } else { 3 };
    let client = 6 - leader - worker_host;
    let hive = if worker_host == 1 { "local".to_owned() } else { format!("h{worker_host}") };
    // Both buckets (the lease and the job requests), each raised in its own update.
    wait_for("the lease and request buckets replicated on three nodes", Duration::from_secs(60), || {
        let replicated: Vec<String> = (1..=3)
            .flat_map(|i| {
                let log = dirs[i - 1].path().join("logs").join("queen.log");
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                text.lines()
                    .filter(|l| l.contains("bucket replicated across jetstream nodes"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        ["RBEE_QUEEN_LEADER", "RBEE_JOB_REQUESTS"]
            .iter()
            .all(|bucket| replicated.iter().any(|l| l.contains(bucket)))
    });

    let spawned = api(
        &hosts,
        leader,
        leader,
        "POST",
        "/v1/workers",
        Some(&json!({"model": MODEL, "hive": hive, "slots": 2})),
    )
    .expect("spawn");
    assert!(spawned["worker_id"].is_string(), "{spawned}");
    wait_for("the worker ready, seen by the client's queen", Duration::from_secs(90), || {
        api(&hosts, client, client, "GET", "/v1/workers", None).is_some_and(|w| {
            w["workers"]
                .as_array()
                .is_some_and(|a| a.iter().any(|w| w["state"] == "idle" && w["liveness"] == "online"))
        })
    });

    // A long answer through the client's standby; the leader's machine is lost while it streams.
    let job = json!({"model": MODEL, "max_tokens": 400, "temperature": 0,
        "messages": [{"role": "user", "content": "Write a very long story about a dragon, a knight and the sea."}]});
    let answer = {
        let mut cmd = hosts.command(client, "curl");
        cmd.args([
            "-sS",
            "--max-time",
            "200",
            "-X",
            "POST",
            &format!("http://{}:7833/v1/chat/completions", hosts.addr(client)),
        ])
        .args(["-H", "content-type: application/json", "-d", &job.to_string()])
        .stdout(std::process::Stdio::piped());
        cmd.spawn().expect("curl")
    };
    wait_for("the job running", Duration::from_secs(60), || {
        api(&hosts, client, client, "GET", "/v1/workers", None)
            .is_some_and(|w| w["workers"].as_array().is_some_and(|a| a.iter().any(|w| w["slots_busy"] == 1)))
    });
    let lost = Instant::now();
    let killed = hosts.kill_host(leader);
    assert!(killed > 0, "the leader's host had processes");
    let mut next_leader = None;
    while lost.elapsed() < Duration::from_secs(60) && next_leader.is_none() {
        next_leader =
            [client, worker_host].into_iter().find(|&i| role(&hosts, i).as_deref() == Some("leader"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let Some(next_leader) = next_leader else {
        let logs: Vec<String> = [client, worker_host]
            .into_iter()
            .map(|i| {
                let dir = dirs[i - 1].path().join("logs");
                format!(
                    "host {i}'s queen log:\n{}\nhost {i}'s nats log:\n{}",
                    tail(&dir.join("queen.log")),
                    tail(&dir.join("nats.log"))
                )
            })
            .collect();
        panic!("no standby took the lease within 60 s of losing host {leader}\n{}", logs.join("\n"));
    };
    eprintln!(
        "host {next_leader}'s queen leads {} ms after host {leader} was lost",
        lost.elapsed().as_millis()
    );
    let out = answer.wait_with_output().expect("curl output");
    let body: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        let log = dirs[client - 1].path().join("logs").join("queen.log");
        panic!(
            "in-flight answer lost: {:?}; the client's queen log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            tail(&log)
        )
    });
    let tokens = body["usage"]["completion_tokens"].as_u64().unwrap_or(0);
    eprintln!("in-flight answer: {tokens} completion tokens, finish {}", body["choices"][0]["finish_reason"]);
    assert!(
        tokens > 0 && body["choices"][0]["message"]["content"].as_str().is_some_and(|t| !t.is_empty()),
        "{body}"
    );

    // The next job, sent to the other joined machine, is placed by the new leader.
    let short = json!({"model": MODEL, "max_tokens": 8, "temperature": 0,
        "messages": [{"role": "user", "content": "What is the capital of France?"}]});
    let next = api(&hosts, client, client, "POST", "/v1/chat/completions", Some(&short)).expect("next job");
    assert!(next["choices"][0]["message"]["content"].is_string(), "{next}");
    drop(joined);
}
