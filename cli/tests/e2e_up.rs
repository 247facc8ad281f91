//! The CLI as a person uses it: `rbee up` starts a real cluster (its own nats-server, queen, hive and a
//! worker of the real model); `rbee infer`, `rbee status`, `rbee workers ls` and `rbee jobs ls` talk to
//! it as subprocesses; Ctrl-C (SIGINT) stops everything and leaves no process behind.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, interrupt_and_check, lines_of, pids_where, read_until};

fn rbee() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rbee"))
}

#[test]
fn up_infer_status_and_ctrl_c_leaves_nothing_running() {
    rbee_testkit::paths::require_default_model();
    let data = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let queen = format!("http://127.0.0.1:{port}");
    let mut up = rbee()
        .args(["up", "--port", &port.to_string(), "--data-dir"])
        .arg(data.path())
        .env("RBEE_HOME", rbee_testkit::paths::workspace_root())
        .env_remove("RBEE_NATS_URL")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("rbee up");
    let rx = lines_of(vec![Box::new(up.stdout.take().expect("stdout"))]);
    let mut banner = read_until(&rx, "rbee is up", Duration::from_secs(120));
    // Let the rest of the banner arrive.
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
        banner.push(line);
    }
    let banner = banner.join("\n");
    assert!(banner.contains("/v1/chat/completions"), "no curl example:\n{banner}");
    assert!(banner.contains("OpenAI("), "no OpenAI client example:\n{banner}");

    // rbee infer, machine output.
    let out = rbee()
        .args(["infer", "--queen", &queen, "--chat", "--json", "--temperature", "0", "--max-tokens", "30"])
        .arg("What is the capital of France? Answer in one sentence.")
        .output()
        .expect("rbee infer");
    assert!(out.status.success(), "infer failed: {}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("infer --json prints json");
    assert!(answer["text"].as_str().unwrap_or_default().contains("Paris"), "{answer}");

    // Streaming to the terminal, with the timing line on stderr.
    let out = rbee()
        .args(["infer", "--queen", &queen, "--max-tokens", "8", "Once upon a time"])
        .output()
        .expect("infer");
    assert!(out.status.success());
    assert!(!out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("tok/s"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Status, workers, jobs.
    let out = rbee().args(["status", "--json", "--queen", &queen]).output().expect("status");
    assert!(out.status.success());
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    let workers = status["workers"]["workers"]
        .as_array()
        .or_else(|| status["workers"].as_array())
        .cloned()
        .unwrap_or_default();
    assert_eq!(workers.len(), 1, "{status}");
    let worker_pid = workers[0]["pid"].as_u64().expect("pid") as u32;
    let out = rbee().args(["jobs", "ls", "--queen", &queen]).output().expect("jobs");
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("completed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Every process of the cluster, to check none survives Ctrl-C.
    let data_path = data.path().display().to_string();
    let queen_addr = format!("127.0.0.1:{port}");
    let mut pids = pids_where(|cmd| cmd.contains(&data_path) || cmd.contains(&queen_addr));
    pids.push(worker_pid);
    assert!(pids.len() >= 3, "expected nats, queen and hive processes, found {pids:?}");
    interrupt_and_check(&mut up, pids, Duration::from_secs(20));

    // With nothing running, the CLI says what to do.
    let out = rbee().args(["status", "--queen", &queen]).output().expect("status");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is `rbee up` running?"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
