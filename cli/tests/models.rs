//! `rbee models import|pull|ls|rm` as a person runs them, against a real cluster: a nats-server, the
//! `rbee-queen` and `rbee-hive` binaries, and a plain HTTP server on loopback to pull from. The model
//! files are tiny random-weight GGUFs, so the catalog path is exercised without the big download.

mod common;
mod hub;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::free_port;
use rbee_testkit::NatsServer;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Kills the process on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Serves `file` at `/tiny.gguf`, 404 for anything else, on a thread; returns the base URL.
fn serve_file(file: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or("");
            if path == "/tiny.gguf" {
                let body = std::fs::read(&file).expect("read model");
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: application/octet-stream\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            } else {
                let _ = stream
                    .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            }
        }
    });
    base
}

fn rbee(queen: &str, nats: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rbee"));
    c.args(["--queen", queen, "--nats-url", nats]).env("NO_COLOR", "1").env_remove("RBEE_CONFIG");
    c
}

fn run(command: &mut Command) -> (Output, String, String) {
    let out = command.output().expect("run rbee");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

fn catalog(queen: &str, nats: &str) -> Vec<String> {
    let (out, stdout, stderr) = run(rbee(queen, nats).args(["models", "ls", "--hive", "local", "--json"]));
    assert!(out.status.success(), "models ls failed: {stderr}");
    let list: Value = serde_json::from_str(&stdout).expect("models ls --json prints json");
    list["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|m| m["model_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sha256_of(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).expect("read")))
}

/// A nats-server, an `rbee-queen` and an `rbee-hive` (id `local`, catalog under `dir`, `hive_env` in its
/// environment, its log in `dir/hive.log`), the hive seen by the queen.
struct Cluster {
    _server: NatsServer,
    _queen: Proc,
    _hive: Proc,
    queen: String,
    nats: String,
}

fn start_cluster(dir: &Path, hive_env: &[(&str, &str)]) -> Cluster {
    let server = NatsServer::start();
    let nats = server.url();
    let port = free_port();
    let queen = format!("http://127.0.0.1:{port}");
    let mut queen_cmd = Command::new(rbee_testkit::paths::cargo_bin("rbee-queen"));
    queen_cmd.args(["--http-addr", &format!("127.0.0.1:{port}"), "--nats-url", &nats]);
    queen_cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let queen_proc = Proc(queen_cmd.spawn().expect("start rbee-queen"));
    let mut hive_cmd = Command::new(rbee_testkit::paths::cargo_bin("rbee-hive"));
    hive_cmd
        .args(["--hive-id", "local", "--heartbeat-ms", "250", "--nats-url", &nats, "--catalog-dir"])
        .arg(dir.join("catalog"))
        // The test's model files lie in `dir`: imports are confined to the import directories.
        .arg("--import-dir")
        .arg(dir)
        .arg("--worker-bin")
        .arg(rbee_testkit::paths::cargo_bin("rbee-worker"))
        .envs(hive_env.iter().copied())
        .env("NO_COLOR", "1");
    let log = std::fs::File::create(dir.join("hive.log")).expect("hive log");
    hive_cmd.stdout(log.try_clone().expect("log")).stderr(log);
    let hive_proc = Proc(hive_cmd.spawn().expect("start rbee-hive"));
    wait_for("the hive in the queen's view", || {
        run(rbee(&queen, &nats).args(["status", "--json"])).1.contains("\"local\"")
    });
    Cluster { _server: server, _queen: queen_proc, _hive: hive_proc, queen, nats }
}

#[test]
fn import_pull_list_and_remove_through_the_queen() {
    let dir = tempfile::tempdir().expect("tmp");
    let tiny = rbee_testkit::gguf::tiny_llama_in(dir.path()).expect("tiny model");
    let base = serve_file(tiny.clone());
    let cluster = start_cluster(dir.path(), &[]);
    let (queen, nats) = (cluster.queen.clone(), cluster.nats.clone());
    assert!(catalog(&queen, &nats).is_empty());

    // Import a file that is on the hive's machine.
    let (out, stdout, stderr) =
        run(rbee(&queen, &nats).args(["models", "import"]).arg(&tiny).args(["--id", "tiny-a"]));
    assert!(out.status.success(), "import failed: {stderr}");
    assert!(stdout.contains("imported model tiny-a"), "{stdout}");
    assert_eq!(catalog(&queen, &nats), vec!["tiny-a"]);

    // The same id again, a file that is not GGUF, a file that is not there: clear refusals.
    let (out, _, stderr) =
        run(rbee(&queen, &nats).args(["models", "import"]).arg(&tiny).args(["--id", "tiny-a"]));
    assert!(!out.status.success());
    assert!(stderr.contains("already in the catalog"), "{stderr}");
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"not a model at all").expect("write");
    let (out, _, stderr) = run(rbee(&queen, &nats).args(["models", "import"]).arg(&junk));
    assert!(!out.status.success());
    assert!(stderr.to_lowercase().contains("gguf"), "{stderr}");
    let (out, _, stderr) = run(rbee(&queen, &nats).args(["models", "import", "/nowhere/model.gguf"]));
    assert!(!out.status.success());
    assert!(stderr.contains(r#"cannot import "/nowhere/model.gguf""#), "{stderr}");
    // Outside the import directories: the same refusal, whether the file exists or not.
    let (out, _, stderr) = run(rbee(&queen, &nats).args(["models", "import", "/etc/passwd"]));
    assert!(!out.status.success());
    assert!(stderr.contains("import directories") && !stderr.contains("root:"), "{stderr}");
    // A newline in the path ends up in the hive's error text: answered at once (it used to panic the
    // reply helper, NATS headers may not hold CR/LF, and the queen waited out its 600 s import timeout).
    let started = Instant::now();
    let (status, body) = post(&queen, "/v1/models/import", r#"{"path": "/a\nb"}"#);
    assert!(status.contains("400"), "{status}: {body}");
    assert!(body.contains(r#"cannot import \"/a\\nb\""#), "{body}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());

    // Pull over HTTP with the right checksum: progress, then done.
    let sha = sha256_of(&tiny);
    let url = format!("{base}/tiny.gguf");
    let (out, stdout, stderr) =
        run(rbee(&queen, &nats).args(["models", "pull", &url, "--id", "tiny-b", "--sha256", &sha]));
    assert!(out.status.success(), "pull failed: {stderr}");
    assert!(stdout.contains("pulled model tiny-b"), "{stdout}");
    assert!(stderr.contains("100.0%"), "no progress shown: {stderr}");
    assert_eq!(catalog(&queen, &nats), vec!["tiny-a", "tiny-b"]);

    // A wrong checksum and a missing file fail with the reason; nothing enters the catalog.
    let wrong = "0".repeat(64);
    let (out, _, stderr) =
        run(rbee(&queen, &nats).args(["models", "pull", &url, "--id", "tiny-c", "--sha256", &wrong]));
    assert!(!out.status.success());
    assert!(stderr.contains("sha256"), "{stderr}");
    let (out, _, stderr) = run(rbee(&queen, &nats).args(["models", "pull", &format!("{base}/missing.gguf")]));
    assert!(!out.status.success());
    assert!(stderr.contains("404"), "{stderr}");
    // An id that is a path is refused before any byte is written (it used to download to that path).
    // (A folder whose path has no '.', which a model id may not hold.)
    let outside = PathBuf::from(format!("/tmp/rbee-escape-{}", std::process::id()));
    std::fs::create_dir_all(&outside).expect("outside folder");
    let escape = outside.join("escaped");
    let (out, _, stderr) = run(rbee(&queen, &nats).args(["models", "pull", &url, "--id"]).arg(&escape));
    assert!(!out.status.success());
    assert!(stderr.contains("path separator"), "{stderr}");
    let written: Vec<_> = std::fs::read_dir(&outside).expect("list").filter_map(|e| e.ok()).collect();
    let _ = std::fs::remove_dir_all(&outside);
    assert!(written.is_empty(), "a pull wrote {written:?}");
    let (out, _, stderr) = run(rbee(&queen, &nats).args(["models", "pull", "ftp://example.org/x.gguf"]));
    assert!(!out.status.success());
    assert!(stderr.contains("is not http, https or hf:"), "{stderr}");
    assert_eq!(catalog(&queen, &nats), vec!["tiny-a", "tiny-b"]);

    // The queen's view follows the hive's catalog.
    wait_for("tiny-b in the queen's view", || {
        run(rbee(&queen, &nats).args(["status", "--json"])).1.contains("tiny-b")
    });

    // A model a running worker uses cannot be removed; once the worker stops, it can.
    let (out, stdout, stderr) =
        run(rbee(&queen, &nats).args(["workers", "spawn", "tiny-a", "--hive", "local", "--slots", "1"]));
    assert!(out.status.success(), "spawn failed: {stderr}");
    let worker = stdout
        .split_whitespace()
        .find(|w| w.starts_with("wrk-"))
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric() && c != '-').to_owned())
        .unwrap_or_else(|| panic!("no worker id in {stdout}"));
    let (out, _, stderr) = run(rbee(&queen, &nats).args(["models", "rm", "tiny-a"]));
    assert!(!out.status.success());
    assert!(stderr.contains("in use by worker"), "{stderr}");
    let (out, _, stderr) = run(rbee(&queen, &nats).args(["workers", "stop", &worker]));
    assert!(out.status.success(), "stop failed: {stderr}");

    for id in ["tiny-a", "tiny-b"] {
        let (out, stdout, stderr) = run(rbee(&queen, &nats).args(["models", "rm", id]));
        assert!(out.status.success(), "rm {id} failed: {stderr}");
        assert!(stdout.contains(&format!("removed model {id}")), "{stdout}");
    }
    assert!(catalog(&queen, &nats).is_empty());
    let (out, _, stderr) = run(rbee(&queen, &nats).args(["models", "rm", "tiny-a"]));
    assert!(!out.status.success());
    assert!(stderr.contains("no model tiny-a"), "{stderr}");
}

/// A POST with `Connection: close`, read to the end: the status line and the body (SSE events for a pull).
fn post(base: &str, path: &str, body: &str) -> (String, String) {
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the queen");
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).expect("read the response");
    let status = response.lines().next().unwrap_or_default().to_owned();
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

#[test]
fn pull_by_name_from_a_hub_mirror() {
    const TOKEN: &str = "hf_test_secret_token_1234";
    let dir = tempfile::tempdir().expect("tmp");
    let tiny =
        std::fs::read(rbee_testkit::gguf::tiny_llama_in(dir.path()).expect("tiny model")).expect("read");
    let files = [
        "README.md",
        "tiny-Q4_K_M.gguf",
        "tiny-Q8_0.gguf",
        "tiny-Q4_K_S-00001-of-00002.gguf",
        "tiny-Q4_K_S-00002-of-00002.gguf",
    ];
    let mirror = hub::start(
        "test-org/tiny-GGUF",
        files
            .iter()
            .map(|f| (f.to_string(), if f.ends_with(".md") { b"# tiny".to_vec() } else { tiny.clone() }))
            .collect(),
        TOKEN,
        "tiny-Q4_K_M.gguf",
    );
    let cluster = start_cluster(dir.path(), &[("HF_ENDPOINT", &mirror.base), ("HF_TOKEN", TOKEN)]);
    let (queen, nats) = (cluster.queen.clone(), cluster.nats.clone());

    // From the CLI, by quantization: the first transfer is cut off half-way, so it must resume.
    let (out, stdout, stderr) =
        run(rbee(&queen, &nats).args(["models", "pull", "hf:test-org/tiny-GGUF:Q4_K_M"]));
    assert!(out.status.success(), "pull failed: {stderr}");
    assert!(stdout.contains("pulled model tiny-q4_k_m"), "{stdout}");
    assert!(stderr.contains("100.0%"), "no progress shown: {stderr}");
    let seen = mirror.seen();
    assert!(
        seen.iter().any(|s| s.path.starts_with("/cdn/tiny-Q4_K_M.gguf") && s.range.is_some()),
        "the cut-off download was not resumed with a range request: {seen:?}"
    );
    let bearer = format!("Bearer {TOKEN}");
    for s in seen.iter().filter(|s| s.path.starts_with("/api/") || s.path.contains("/resolve/")) {
        assert_eq!(s.auth.as_deref(), Some(bearer.as_str()), "HF_TOKEN not sent to {}", s.path);
    }

    // Over HTTP, by file name: progress, then done.
    let (status, body) = post(
        &queen,
        "/v1/models/pull",
        r#"{"url": "hf:test-org/tiny-GGUF/tiny-Q8_0.gguf", "id": "tiny-eight"}"#,
    );
    assert!(status.contains("200"), "{status}: {body}");
    assert!(body.contains("event: progress") && body.contains("event: done"), "{body}");
    assert!(body.contains("tiny-eight"), "{body}");
    assert_eq!(catalog(&queen, &nats), vec!["tiny-eight", "tiny-q4_k_m"]);

    // A given sha256 that is not the hub's is refused before any byte moves.
    let (status, body) = post(
        &queen,
        "/v1/models/pull",
        &format!(
            r#"{{"url": "hf:test-org/tiny-GGUF:Q8_0", "id": "tiny-x", "sha256": "{}"}}"#,
            "0".repeat(64)
        ),
    );
    assert!(status.contains("400"), "{status}: {body}");
    assert!(body.contains("is not the hub's"), "{body}");

    // An id that is a path is refused before any byte moves (it used to download the whole file first).
    let cdn_requests = |m: &hub::HubMirror| m.seen().iter().filter(|s| s.path.starts_with("/cdn/")).count();
    let before = cdn_requests(&mirror);
    let outside = format!("/tmp/rbee-escape-hub-{}/escaped", std::process::id());
    let (out, _, stderr) =
        run(rbee(&queen, &nats).args(["models", "pull", "hf:test-org/tiny-GGUF:Q8_0", "--id", &outside]));
    assert!(!out.status.success());
    assert!(stderr.contains("path separator"), "{stderr}");
    assert_eq!(cdn_requests(&mirror), before, "bytes were fetched for a refused id");

    // What matches nothing, or several files, is refused with what the repo has.
    let (out, _, stderr) = run(rbee(&queen, &nats).args(["models", "pull", "hf:test-org/tiny-GGUF:Q5_K_M"]));
    assert!(!out.status.success());
    assert!(
        stderr.contains("matches no GGUF")
            && stderr.contains("tiny-Q8_0.gguf")
            && stderr.contains("README.md"),
        "{stderr}"
    );
    let (out, _, stderr) = run(rbee(&queen, &nats).args(["models", "pull", "hf:test-org/tiny-GGUF:Q4_K_S"]));
    assert!(!out.status.success());
    assert!(stderr.contains("several") && stderr.contains("tiny-Q4_K_S-00002-of-00002.gguf"), "{stderr}");
    let (out, _, stderr) = run(rbee(&queen, &nats).args(["models", "pull", "hf:test-org/tiny-GGUF"]));
    assert!(!out.status.success());
    assert!(stderr.contains("several"), "{stderr}");
    let (out, _, stderr) = run(rbee(&queen, &nats).args(["models", "pull", "hf:test-org/missing:Q4_K_M"]));
    assert!(!out.status.success());
    assert!(stderr.contains("no such repo"), "{stderr}");
    let (out, _, stderr) = run(rbee(&queen, &nats).args(["models", "pull", "hf:../etc/passwd.gguf"]));
    assert!(!out.status.success());
    assert!(stderr.contains("not a hub reference"), "{stderr}");
    assert_eq!(catalog(&queen, &nats), vec!["tiny-eight", "tiny-q4_k_m"]);

    // Ollama's pull, by Ollama's name of a Hugging Face GGUF: NDJSON progress lines, then success.
    let (status, body) = post(&queen, "/api/pull", r#"{"model": "hf.co/test-org/tiny-GGUF:Q8_0"}"#);
    assert!(status.contains("200"), "{status}: {body}");
    // (The body is chunked: the chunk sizes between the lines are not objects.)
    let lines: Vec<serde_json::Value> =
        body.lines().filter_map(|l| serde_json::from_str(l).ok()).filter(Value::is_object).collect();
    assert_eq!(lines.first().map(|l| &l["status"]), Some(&serde_json::json!("pulling manifest")), "{body}");
    assert!(lines.iter().any(|l| l["status"] == "downloading" && l["completed"].is_u64()), "{body}");
    assert_eq!(lines.last().map(|l| &l["status"]), Some(&serde_json::json!("success")), "{body}");
    assert!(catalog(&queen, &nats).contains(&"tiny-q8_0".to_owned()));
    // An Ollama-library name has no GGUF to fetch: refused, in Ollama's error shape.
    let (status, body) = post(&queen, "/api/pull", r#"{"model": "llama3.2:1b"}"#);
    assert!(status.contains("400") && body.contains("hf.co/ORG/REPO:QUANT"), "{status}: {body}");

    // The token never lands in the hive's log.
    let log = std::fs::read_to_string(dir.path().join("hive.log")).expect("hive log");
    assert!(log.contains("hub reference resolved"), "{log}");
    assert!(!log.contains(TOKEN), "HF_TOKEN in the hive log");
}
