//! `rbee up --secure` as a person uses it: TLS to NATS with a generated CA, every process on its own
//! NATS identity (the worker on one of its hive's pool identities), and the HTTP API key enforced. From
//! outside: `rbee infer` works (it finds the identity and key by itself), the API refuses a request
//! without the key, NATS refuses a client without credentials and one without TLS, no secret appears
//! in any log or in `rbee status`/`rbee config show`, and Ctrl-C leaves nothing running.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn rbee(data: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rbee"));
    c.env("RBEE_HOME", rbee_testkit::paths::workspace_root())
        .env("RBEE_DATA_DIR", data)
        .env("NO_COLOR", "1")
        .env_remove("RBEE_NATS_URL")
        .env_remove("RBEE_API_KEY")
        .env_remove("RBEE_NATS_USER")
        .env_remove("RBEE_NATS_PASSWORD")
        .env_remove("RBEE_CONFIG");
    c
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

/// Tries a NATS connection the way a third party would, with the python client `make setup` installs.
fn python_nats(url: &str, ca: Option<&Path>) -> String {
    let tls = match ca {
        Some(ca) => format!("tls=ssl.create_default_context(cafile={:?}),", ca.display().to_string()),
        None => String::new(),
    };
    let script = format!(
        "import asyncio, ssl, nats\n\
         async def main():\n    \
           try:\n        \
             nc = await nats.connect({url:?}, {tls} connect_timeout=3, allow_reconnect=False, max_reconnect_attempts=0)\n        \
             print('CONNECTED')\n        \
             await nc.close()\n    \
           except Exception as e:\n        \
             print('REFUSED', type(e).__name__, e)\n\
         asyncio.run(main())\n"
    );
    let python = rbee_testkit::paths::workspace_root().join(".venv/bin/python");
    let out = Command::new(python).arg("-c").arg(script).output().expect("python");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn secure_up_enforces_tls_identities_and_the_api_key() {
    rbee_testkit::paths::require_default_model();
    let data = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let queen = format!("http://127.0.0.1:{port}");
    let mut up = rbee(data.path())
        .args(["up", "--secure", "--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rbee up --secure");
    let (tx, rx) = std::sync::mpsc::channel();
    for stream in [
        Box::new(up.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
        Box::new(up.stderr.take().expect("stderr")),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut printed = Vec::new();
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("rbee up --secure did not come up:\n{}", printed.join("\n")));
        printed.push(line.clone());
        if line.contains("press ctrl-c") {
            break;
        }
    }
    let banner = printed.join("\n");
    let nats_url = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("nats").map(str::trim))
        .filter(|u| u.starts_with("tls://"))
        .unwrap_or_else(|| panic!("no tls:// nats url in the banner:\n{banner}"))
        .to_owned();
    assert!(banner.contains("serving smollm2"), "{banner}");
    let secure = data.path().join("secure");
    let key = std::fs::read_to_string(secure.join("api-key")).expect("api key file").trim().to_owned();
    assert!(!banner.contains(&key), "the banner printed the api key");

    // The CLI finds its identity and the key by itself; the worker runs on a pool identity.
    let out = rbee(data.path())
        .args(["infer", "--queen", &queen, "--chat", "--json", "--temperature", "0", "--max-tokens", "20"])
        .arg("What is the capital of France? Answer in one sentence.")
        .output()
        .expect("infer");
    assert!(out.status.success(), "infer failed in secure mode: {}", text(&out));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(answer["text"].as_str().unwrap_or_default().contains("Paris"), "{answer}");
    let out = rbee(data.path()).args(["status", "--json", "--queen", &queen]).output().expect("status");
    assert!(out.status.success(), "{}", text(&out));
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(status.contains("\"local-w0\""), "the worker is not on a pool identity: {status}");
    let out = rbee(data.path()).args(["models", "ls"]).output().expect("models ls");
    assert!(out.status.success(), "models ls over nats as the cli identity: {}", text(&out));
    let shown = rbee(data.path()).args(["config", "show"]).output().expect("config show");

    // Without the key, the API refuses.
    let out = rbee(data.path())
        .env("RBEE_API_KEY", "wrong-key")
        .args(["status", "--queen", &queen])
        .output()
        .expect("status");
    assert!(!out.status.success(), "a wrong api key was accepted");
    assert!(text(&out).contains("401") || text(&out).to_lowercase().contains("api key"), "{}", text(&out));

    // NATS: no credentials, no TLS, or a CA it does not know: refused.
    let ca = secure.join("ca.pem");
    let anonymous = python_nats(&nats_url, Some(&ca));
    assert!(anonymous.starts_with("REFUSED") && anonymous.contains("Authorization"), "{anonymous}");
    let plain = python_nats(&nats_url.replace("tls://", "nats://"), None);
    assert!(plain.starts_with("REFUSED"), "a client without the CA got in: {plain}");
    let out = Command::new(env!("CARGO_BIN_EXE_rbee"))
        .args(["models", "ls", "--nats-url", &nats_url])
        .env("RBEE_DATA_DIR", data.path().join("elsewhere"))
        .env("RBEE_HOME", rbee_testkit::paths::workspace_root())
        .env_remove("RBEE_NATS_USER")
        .output()
        .expect("models ls");
    assert!(!out.status.success());

    // Ctrl-C stops everything.
    let pids: Vec<u32> = std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.contains(&data.path().display().to_string()) || cmd.contains("local-w0")
        })
        .collect();
    assert!(pids.len() >= 3, "expected nats, queen, hive and worker, found {pids:?}");
    assert!(Command::new("kill").args(["-INT", &up.id().to_string()]).status().expect("kill").success());
    let stopped = Instant::now();
    while up.try_wait().expect("wait").is_none() {
        assert!(stopped.elapsed() < Duration::from_secs(20), "rbee up --secure did not stop within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let alive = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.split(") ").nth(1).unwrap_or_default().starts_with('Z'))
            .unwrap_or(false)
    };
    let left: Vec<u32> = pids.into_iter().filter(alive).collect();
    assert!(left.is_empty(), "processes left running after ctrl-c: {left:?}");
    while let Ok(line) = rx.try_recv() {
        printed.push(line);
    }
    assert!(!secure.join("cli.env").exists(), "cli.env outlived the secure cluster");

    // No secret in any log, in what rbee up printed, or in `rbee config show`.
    let mut secrets = vec![key];
    for entry in std::fs::read_dir(&secure).expect("secure dir").flatten() {
        let body = std::fs::read_to_string(entry.path()).unwrap_or_default();
        secrets.extend(body.lines().filter_map(|l| l.strip_prefix("RBEE_NATS_PASSWORD=")).map(str::to_owned));
        secrets.extend(
            body.lines()
                .filter_map(|l| l.trim().strip_prefix("\"password\": "))
                .map(|v| v.trim_matches(|c| c == '"' || c == ',').to_owned()),
        );
    }
    assert!(secrets.len() >= 4, "expected the key and several passwords, found {}", secrets.len());
    let mut places =
        vec![("rbee up output".to_owned(), printed.join("\n")), ("config show".to_owned(), text(&shown))];
    places.push(("status".to_owned(), status));
    for entry in std::fs::read_dir(data.path().join("logs")).expect("logs").flatten() {
        places.push((
            entry.path().display().to_string(),
            std::fs::read_to_string(entry.path()).unwrap_or_default(),
        ));
    }
    for (place, body) in &places {
        for secret in &secrets {
            assert!(!body.contains(secret.as_str()), "a secret appears in {place}");
        }
    }
}
