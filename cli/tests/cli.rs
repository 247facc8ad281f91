//! Black-box tests of the `rbee` binary that need no queen: help, actionable errors, configuration
//! layering and secrecy, and `rbee watch` against a real nats-server.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{free_port, lines_of};
use rbee_bus::{Backend, EventMeta, HiveId, ModelId, WorkerHeartbeat, WorkerId, WorkerState, SCHEMA_VERSION};

/// `rbee` with a clean environment: no user config, no `RBEE_*` variables, no colors.
fn rbee(home: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rbee"));
    for var in [
        "RBEE_CONFIG",
        "RBEE_QUEEN_URL",
        "RBEE_API_KEY",
        "RBEE_NATS_URL",
        "RBEE_DEFAULT_MODEL",
        "RBEE_DATA_DIR",
        "XDG_CONFIG_HOME",
    ] {
        command.env_remove(var);
    }
    command.env("HOME", home).env("NO_COLOR", "1");
    command
}

fn run(command: &mut Command) -> (Output, String, String) {
    let output = command.output().expect("rbee runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}

#[test]
fn help_lists_every_command() {
    let home = tempfile::tempdir().expect("tempdir");
    let (output, stdout, _) = run(rbee(home.path()).arg("--help"));
    assert!(output.status.success());
    for command in ["up", "infer", "status", "workers", "models", "jobs", "watch", "config"] {
        assert!(stdout.lines().any(|l| l.trim_start().starts_with(command)), "{command} missing:\n{stdout}");
    }
}

#[test]
fn status_against_a_closed_port_says_what_to_do() {
    let home = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let (output, stdout, stderr) =
        run(rbee(home.path()).args(["status", "--queen", &format!("http://127.0.0.1:{port}")]));
    assert!(!output.status.success());
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(
        stderr.trim(),
        format!("error: queen not reachable at 127.0.0.1:{port} (is `rbee up` running?)"),
        "{stderr}"
    );
}

#[test]
fn models_ls_against_a_closed_nats_port_says_what_to_do() {
    let home = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let (output, _, stderr) =
        run(rbee(home.path()).args(["models", "ls", "--nats-url", &format!("nats://127.0.0.1:{port}")]));
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!("error: nats not reachable at 127.0.0.1:{port} (is `rbee up` running?)")),
        "{stderr}"
    );
}

#[test]
fn an_unknown_config_key_is_refused_by_name() {
    let home = tempfile::tempdir().expect("tempdir");
    let file = home.path().join("rbee.toml");
    std::fs::write(&file, "queen_url = \"http://127.0.0.1:1\"\nnats_urll = \"nats://x:1\"\n").expect("write");
    let (output, _, stderr) = run(rbee(home.path()).args(["config", "show", "--config"]).arg(&file));
    assert!(!output.status.success());
    assert!(stderr.contains("unknown key `nats_urll`"), "{stderr}");
}

#[test]
fn environment_beats_the_file_and_flags_beat_both() {
    let home = tempfile::tempdir().expect("tempdir");
    let file = home.path().join("rbee.toml");
    std::fs::write(
        &file,
        "queen_url = \"http://file:1\"\nnats_url = \"nats://file:2\"\ndefault_model = \"m-file\"\n",
    )
    .expect("write");
    let (output, stdout, stderr) = run(rbee(home.path())
        .env("RBEE_CONFIG", &file)
        .env("RBEE_QUEEN_URL", "http://env:3")
        .env("RBEE_NATS_URL", "nats://env:4")
        .args(["config", "show", "--nats-url", "nats://flag:5"]));
    assert!(output.status.success(), "{stderr}");
    let line = |key: &str| stdout.lines().find(|l| l.starts_with(key)).unwrap_or_default().to_owned();
    assert!(
        line("queen_url").contains("http://env:3") && line("queen_url").contains("env RBEE_QUEEN_URL"),
        "{stdout}"
    );
    assert!(
        line("nats_url").contains("nats://flag:5") && line("nats_url").contains("flag --nats-url"),
        "{stdout}"
    );
    assert!(line("default_model").contains("m-file") && line("default_model").contains("file "), "{stdout}");
}

#[test]
fn the_user_config_file_is_found_under_home() {
    let home = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(home.path().join(".config/rbee")).expect("mkdir");
    std::fs::write(home.path().join(".config/rbee/config.toml"), "queen_url = \"http://home:7\"\n")
        .expect("write");
    let (output, stdout, _) = run(rbee(home.path()).args(["config", "show"]));
    assert!(output.status.success());
    assert!(stdout.contains("http://home:7"), "{stdout}");
}

#[test]
fn config_show_never_prints_the_api_key() {
    let home = tempfile::tempdir().expect("tempdir");
    let file = home.path().join("rbee.toml");
    std::fs::write(&file, "api_key = \"file-secret-123\"\n").expect("write");
    let (output, stdout, stderr) = run(rbee(home.path()).args(["config", "show", "--config"]).arg(&file));
    assert!(output.status.success(), "{stderr}");
    assert!(!stdout.contains("file-secret-123") && !stderr.contains("file-secret-123"), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("api_key") && l.contains("<set>")), "{stdout}");

    let (_, stdout, stderr) =
        run(rbee(home.path()).env("RBEE_API_KEY", "env-secret-456").args(["config", "show"]));
    assert!(!stdout.contains("env-secret-456") && !stderr.contains("env-secret-456"), "{stdout}");
    assert!(stdout.contains("<set>") && stdout.contains("env RBEE_API_KEY"), "{stdout}");

    let (_, stdout, _) = run(rbee(home.path()).args(["config", "show"]));
    assert!(stdout.lines().any(|l| l.starts_with("api_key") && l.contains("<not set>")), "{stdout}");
}

fn heartbeat() -> WorkerHeartbeat {
    WorkerHeartbeat {
        v: SCHEMA_VERSION,
        meta: EventMeta { publisher: "wrk-test".into(), epoch: "e1".into(), seq: 1, sent_at_ms: 0 },
        worker_id: WorkerId::new("wrk-test").expect("id"),
        hive_id: HiveId::new("local").expect("id"),
        model_id: ModelId::new("smollm2-135m-instruct").expect("id"),
        state: WorkerState::Busy,
        backend: Backend::Cpu,
        device: "cpu".into(),
        slots_total: 4,
        slots_busy: 3,
        ctx_per_slot: 2048,
        tokens_per_second: 71.5,
        memory_bytes: 168 * 1024 * 1024,
        pid: 4242,
        interval_ms: 1000,
        prefix_fingerprints: Vec::new(),
        jobs_accepted: None,
    }
}

#[tokio::test]
async fn watch_prints_a_decoded_worker_heartbeat() {
    let server = rbee_testkit::NatsServer::start();
    let home = tempfile::tempdir().expect("tempdir");
    let mut child = rbee(home.path())
        .args(["watch", "--nats-url", &server.url()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rbee watch starts");
    let stdout = lines_of(vec![Box::new(child.stdout.take().expect("stdout"))]);
    let stderr = lines_of(vec![Box::new(child.stderr.take().expect("stderr"))]);

    // `rbee watch` says it is watching once its subscription is known to the server.
    let ready = stderr.recv_timeout(Duration::from_secs(10));
    let result = async {
        let ready = ready.map_err(|_| "rbee watch did not start".to_owned())?;
        if !ready.contains("watching rbee.>") {
            return Err(format!("unexpected first stderr line: {ready}"));
        }
        let bus =
            rbee_bus::connect(&rbee_bus::NatsConfig::url(server.url())).await.map_err(|e| e.to_string())?;
        let hb = heartbeat();
        bus.publish(rbee_bus::subject::worker_heartbeat(&hb.worker_id), &hb)
            .await
            .map_err(|e| e.to_string())?;
        bus.client().publish("rbee.other", vec![0xff, 0x00].into()).await.map_err(|e| e.to_string())?;
        bus.client().flush().await.map_err(|e| e.to_string())?;
        let first = stdout
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "no line for the heartbeat".to_owned())?;
        let second =
            stdout.recv_timeout(Duration::from_secs(10)).map_err(|_| "no line for raw bytes".to_owned())?;
        Ok::<_, String>((first, second))
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let (first, second) = result.expect("watch output");
    assert!(first.contains("rbee.worker.wrk-test.heartbeat"), "{first}");
    for part in ["busy", "smollm2-135m-instruct", "slots 3/4", "71.5 tok/s", "168.0 MiB"] {
        assert!(first.contains(part), "{part:?} missing in {first}");
    }
    assert!(!first.contains('\x1b'), "colors despite NO_COLOR: {first:?}");
    assert!(second.contains("rbee.other") && second.contains("<2 bytes, not JSON>"), "{second}");
}
