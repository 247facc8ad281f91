//! `rbee up --secure` as a person uses it: TLS to NATS with a generated CA, every process on its own
//! NATS identity (the worker on one of its hive's pool identities), and the HTTP API key enforced. From
//! outside: `rbee infer` works (it finds the identity and key by itself), the API refuses a request
//! without the key, NATS refuses a client without credentials and one without TLS, no secret appears
//! in any log or in `rbee status`/`rbee config show`, and Ctrl-C leaves nothing running.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{free_port, interrupt_and_check, lines_of, pids_where, read_until};

fn rbee(data: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rbee"));
    c.env("RBEE_HOME", rbee_testkit::paths::workspace_root())
        .env("RBEE_DATA_DIR", data)
        .env("NO_COLOR", "1")
        .env_remove("RBEE_NATS_URL")
        .env_remove("RBEE_API_KEY")
        .env_remove("RBEE_ADMIN_KEY")
        .env_remove("RBEE_NATS_USER")
        .env_remove("RBEE_NATS_PASSWORD")
        .env_remove("RBEE_CONFIG");
    c
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
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
    let rx = lines_of(vec![
        Box::new(up.stdout.take().expect("stdout")),
        Box::new(up.stderr.take().expect("stderr")),
    ]);
    let mut printed = read_until(&rx, "press ctrl-c", Duration::from_secs(120));
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

    // Administration takes the admin key: the CLI finds it in cli.env and gets through (404 for a
    // worker that does not exist); the API key is refused with 403.
    let admin_key =
        std::fs::read_to_string(secure.join("admin-key")).expect("admin key file").trim().to_owned();
    assert_ne!(admin_key, key);
    let out = rbee(data.path())
        .args(["workers", "stop", "no-such-worker", "--queen", &queen])
        .output()
        .expect("stop");
    assert!(!text(&out).contains("403") && !text(&out).contains("admin key"), "{}", text(&out));
    let out = rbee(data.path())
        .env("RBEE_ADMIN_KEY", &key)
        .args(["workers", "stop", "no-such-worker", "--queen", &queen])
        .output()
        .expect("stop");
    assert!(
        !out.status.success() && text(&out).contains("admin key"),
        "the api key administered: {}",
        text(&out)
    );

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
    let data_path = data.path().display().to_string();
    let pids = pids_where(|cmd| cmd.contains(&data_path) || cmd.contains("local-w0"));
    assert!(pids.len() >= 3, "expected nats, queen, hive and worker, found {pids:?}");
    interrupt_and_check(&mut up, pids, Duration::from_secs(20));
    while let Ok(line) = rx.try_recv() {
        printed.push(line);
    }
    assert!(!secure.join("cli.env").exists(), "cli.env outlived the secure cluster");

    // No secret in any log, in what rbee up printed, or in `rbee config show`.
    let mut secrets = vec![key, admin_key];
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
