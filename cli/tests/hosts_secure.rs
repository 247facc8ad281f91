//! Secure mode across machines, with the README's commands: host 1 runs `rbee up --host 198.18.0.1
//! --secure --no-worker --join h2=198.18.0.2 --join h3=...`, host 2 runs `rbee join
//! <data_dir>/join-h2.toml --host 198.18.0.2`. Host 2's node serves TLS with the certificate issued for its address, routes to host 1
//! over TLS with the route password, and lets in only hive h2 and its workers. A worker spawned on
//! host 2 through the queen answers a chat sent from host 2 with the API key; without the key the
//! API refuses, and without an identity host 2's NATS node refuses. The join file is mode 0600 and
//! holds none of the first machine's secrets, nor another joining machine's. Skipped, with the reason, without root or `ip`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::hosts::{rbee_on, wait_for, Guard};
use common::{lines_of, read_until};
use rbee_testkit::hosts::Hosts;
use serde_json::{json, Value};

const MODEL: &str = "smollm2-135m-instruct";

/// A request to the queen on host 1 from host `i` with `key` as bearer; the status and the body.
fn api(
    hosts: &Hosts,
    i: usize,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("http://{}:7833{path}", hosts.addr(1));
    let auth = key.map(|k| format!("authorization: Bearer {k}"));
    let mut args = vec![
        "-sS",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
        url.as_str(),
        "-H",
        "content-type: application/json",
    ];
    if let Some(a) = &auth {
        args.extend(["-H", a.as_str()]);
    }
    let body = body.map(|b| b.to_string());
    if let Some(b) = &body {
        args.extend(["-d", b.as_str()]);
    }
    let out = hosts.curl(i, &args).unwrap_or_else(|e| panic!("{method} {path}: {e:#}"));
    let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
    (code.parse().unwrap_or(0), serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn two_hosts_join_in_secure_mode() {
    rbee_testkit::paths::require_default_model();
    let hosts = match Hosts::create(2) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("skipping: {e:#}");
            return;
        }
    };
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().expect("tmp")).collect();
    let join_arg = format!("h2={}", hosts.addr(2));
    // A third machine is named but never started: its join file must not reach host 2.
    let mut up = rbee_on(&hosts, 1)
        .args(["up", "--host", &hosts.addr(1), "--secure", "--no-worker", "--join", &join_arg])
        .args(["--join", "h3=198.18.0.99", "--data-dir"])
        .arg(dirs[0].path())
        .spawn()
        .expect("rbee up --host --secure");
    let up_out = lines_of(vec![Box::new(up.stdout.take().expect("stdout"))]);
    let _up = Guard(up);
    let banner = read_until(&up_out, "rbee join join-h3.toml", Duration::from_secs(120)).join("\n");
    assert!(banner.contains(&format!("rbee join join-h2.toml --host {}", hosts.addr(2))), "{banner}");

    let secure = dirs[0].path().join("secure");
    let read = |name: &str| std::fs::read_to_string(secure.join(name)).expect(name).trim().to_owned();
    let (api_key, admin_key) = (read("api-key"), read("admin-key"));
    let join_file = dirs[0].path().join("join-h2.toml");
    let join = std::fs::read_to_string(&join_file).expect("join-h2.toml");
    let mode = std::fs::metadata(&join_file).expect("join-h2.toml").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the secure join file is private");
    let other: toml::Value =
        toml::from_str(&std::fs::read_to_string(dirs[0].path().join("join-h3.toml")).expect("join-h3.toml"))
            .expect("toml");
    let h3 = &other["secure"]["machines"][0];
    for field in ["key", "hive_password"] {
        let secret = h3[field].as_str().expect(field);
        assert!(!join.contains(secret), "host 3's {field} is in host 2's join file");
    }
    let queen_password = read("queen.env")
        .lines()
        .find_map(|l| l.strip_prefix("RBEE_NATS_PASSWORD="))
        .expect("queen password")
        .to_owned();
    for secret in [&api_key, &admin_key, &queen_password, &read("ca-key.pem")] {
        assert!(!join.contains(secret.as_str()), "a secret of the first machine is in join.toml");
    }

    // Host 2 joins with the copied file (a second data dir stands in for the other disk).
    let copied = dirs[1].path().join("join.toml");
    std::fs::copy(&join_file, &copied).expect("copy join.toml");
    let mut child = rbee_on(&hosts, 2)
        .arg("join")
        .arg(&copied)
        .args(["--host", &hosts.addr(2), "--data-dir"])
        .arg(dirs[1].path())
        .spawn()
        .expect("rbee join");
    let out = lines_of(vec![Box::new(child.stdout.take().expect("stdout"))]);
    let _join = Guard(child);
    read_until(&out, "joined: hive h2", Duration::from_secs(90));
    wait_for("hive h2 in the queen's view", Duration::from_secs(30), || {
        let (_, hives) = api(&hosts, 2, Some(&api_key), "GET", "/v1/hives", None);
        hives["hives"]
            .as_array()
            .is_some_and(|a| a.iter().any(|h| h["hive_id"] == "h2" && h["liveness"] == "online"))
    });
    let (status, _) = api(&hosts, 2, None, "GET", "/v1/hives", None);
    assert_eq!(status, 401, "the API without a key");

    // A worker on host 2, spawned with the admin key (the API key may not), answers from host 2.
    let spawn = json!({"model": MODEL, "hive": "h2", "slots": 1});
    let (status, _) = api(&hosts, 2, Some(&api_key), "POST", "/v1/workers", Some(spawn.clone()));
    assert_eq!(status, 403, "the api key spawned a worker");
    let (status, reply) = api(&hosts, 2, Some(&admin_key), "POST", "/v1/workers", Some(spawn));
    assert_eq!(status, 201, "{reply}");
    wait_for("the worker on h2 ready", Duration::from_secs(90), || {
        let (_, workers) = api(&hosts, 2, Some(&api_key), "GET", "/v1/workers", None);
        workers["workers"]
            .as_array()
            .is_some_and(|a| a.iter().any(|w| w["hive_id"] == "h2" && w["state"] == "idle"))
    });
    let chat = json!({"model": MODEL, "max_tokens": 12, "temperature": 0,
        "messages": [{"role": "user", "content": "Say hello."}]});
    let (status, reply) = api(&hosts, 2, Some(&api_key), "POST", "/v1/chat/completions", Some(chat));
    assert_eq!(status, 200, "{reply}");
    let text = reply["choices"][0]["message"]["content"].as_str().unwrap_or_default();
    assert!(!text.is_empty(), "{reply}");

    // Host 2's node lets in its own hive and workers only: the first machine's CLI identity (its
    // cli.env, which the CLI reads from that data dir) gets into host 1's node and is refused by host 2's.
    let models_ls = |node: usize| {
        let url = format!("tls://{}:4222", hosts.addr(node));
        let out = rbee_on(&hosts, 2)
            .args(["models", "ls", "--nats-url", &url])
            .env("RBEE_DATA_DIR", dirs[0].path())
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("rbee models ls");
        let said =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), said)
    };
    let (ok, said) = models_ls(1);
    assert!(ok && said.contains(MODEL), "the cli identity on host 1's node: {said}");
    let (ok, said) = models_ls(2);
    assert!(!ok && said.contains("refused these credentials"), "host 2's node let the cli in: {said}");
    eprintln!("host 2's node to the first machine's cli identity: {}", said.trim());

    // No password of the join file in any log of either machine or in what `rbee up` printed.
    let secrets: Vec<String> = join
        .lines()
        .filter_map(|l| l.split_once("password = ").map(|(_, v)| v.trim().trim_matches('"').to_owned()))
        .collect();
    assert!(secrets.len() >= 2, "route and hive passwords: {secrets:?}");
    let mut printed = banner;
    while let Ok(line) = up_out.try_recv() {
        printed.push_str(&line);
    }
    for dir in &dirs {
        for entry in std::fs::read_dir(dir.path().join("logs")).expect("logs").flatten() {
            let log = std::fs::read_to_string(entry.path()).unwrap_or_default();
            assert!(
                !secrets.iter().any(|s| log.contains(s.as_str())),
                "a password in {}",
                entry.path().display()
            );
        }
    }
    assert!(!secrets.iter().any(|s| printed.contains(s.as_str())), "a password in rbee up's output");
}
