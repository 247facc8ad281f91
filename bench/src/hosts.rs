//! `rbee-bench hosts` (`make bench-cluster`): the cluster across hosts of their own (network
//! namespaces, `rbee_testkit::hosts`), started with the README's commands (`rbee up --host`, `rbee
//! join`). Measured in one run, each against its baseline:
//! - the same streaming chat load (1 stream, then 2 at once; distinct prompts; greedy) through the
//!   queen on host 1 from a worker on host 1 (one host) and from a worker on host 2 (the 3-host
//!   cluster, tokens crossing a NATS route; with 1 ms added to every link where `tc netem` exists);
//! - the gap a client sees when the machine of its stream's worker is lost mid-stream, against the
//!   detection bound (4 heartbeat intervals) plus one prefill (the cluster's TTFT p50).
//!
//! The hosts share this machine's CPUs, so the cluster row differs from the one-host row by the network
//! path only. Needs root and `ip`; says why and exits when they are missing.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rbee_testkit::hosts::Hosts;
use serde_json::{json, Value};

use crate::report::{Fig, Report, Target};
use crate::stats;

/// The section's title.
pub const SECTION: &str = "Cluster across hosts";
const MODEL: &str = "smollm2-135m-instruct";

/// Sizes of the run.
pub struct Plan {
    /// Requests in each round.
    pub requests: usize,
    /// Tokens per answer.
    pub max_tokens: u32,
}

/// A child killed on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One streamed answer: when the first and the last token came, and how many there were.
struct Stream {
    started: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
    tokens: usize,
}

/// The figures of one load round.
struct Round {
    ttft_ms: Vec<f64>,
    decode_tps: Vec<f64>,
    aggregate_tps: f64,
}

fn rbee_on(hosts: &Hosts, i: usize, root: &Path, data_dir: &Path) -> Command {
    let rbee = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|d| d.join("rbee")));
    let mut cmd = hosts.command(i, rbee.unwrap_or_else(|| "rbee".into()));
    cmd.env("RBEE_HOME", root)
        .env("RBEE_DATA_DIR", data_dir)
        .env("NO_COLOR", "1")
        .env_remove("RBEE_NATS_URL")
        .env_remove("RBEE_QUEEN_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd
}

/// Starts `cmd` and waits for a stdout line containing `marker`.
fn start_until(mut cmd: Command, marker: &str, within: Duration) -> anyhow::Result<Guard> {
    let mut child = cmd.spawn().context("cannot start rbee")?;
    let stdout = child.stdout.take().context("stdout")?;
    let guard = Guard(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(marker) => return Ok(guard),
            Ok(_) => {}
            Err(_) => bail!("no {marker:?} within {within:?}"),
        }
    }
}

fn api(hosts: &Hosts, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let url = format!("http://{}:7833{path}", hosts.addr(1));
    let body = body.map(|b| b.to_string());
    let mut args = vec!["-X", method, url.as_str(), "-H", "content-type: application/json"];
    if let Some(b) = &body {
        args.extend(["-d", b.as_str()]);
    }
    let out = hosts.curl(1, &args)?;
    serde_json::from_str(&out).with_context(|| format!("{method} {path}: not json: {out}"))
}

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() > deadline {
            bail!("{what}: not within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn workers(hosts: &Hosts) -> Vec<Value> {
    api(hosts, "GET", "/v1/workers", None)
        .ok()
        .and_then(|w| w["workers"].as_array().cloned())
        .unwrap_or_default()
}

/// Spawns one worker of the model on `hive` and waits until it is idle; returns its id.
fn spawn_worker(hosts: &Hosts, hive: &str) -> anyhow::Result<String> {
    let reply = api(hosts, "POST", "/v1/workers", Some(json!({"model": MODEL, "hive": hive, "slots": 2})))?;
    let id = reply["worker_id"].as_str().with_context(|| format!("spawn on {hive}: {reply}"))?.to_owned();
    wait_for(&format!("worker {id} ready"), Duration::from_secs(90), || {
        workers(hosts).iter().any(|w| w["worker_id"] == id.as_str() && w["state"] == "idle")
    })?;
    Ok(id)
}

/// Takes a hive out of placement (`POST /v1/hives/{id}/drain`) or back in: the queen would otherwise
/// spawn a second worker on another host when a heartbeat still shows the first one's slots busy, and
/// on this one machine that worker would take CPU from the one measured.
fn drain(hosts: &Hosts, hive: &str, on: bool) -> anyhow::Result<()> {
    let action = if on { "drain" } else { "undrain" };
    api(hosts, "POST", &format!("/v1/hives/{hive}/{action}"), None)?;
    Ok(())
}

fn stop_worker(hosts: &Hosts, id: &str) -> anyhow::Result<()> {
    api(hosts, "DELETE", &format!("/v1/workers/{id}"), None)?;
    wait_for(&format!("worker {id} gone"), Duration::from_secs(30), || {
        !workers(hosts).iter().any(|w| w["worker_id"] == id)
    })
}

/// A streamed chat from host 1 on a thread; the SSE lines timed as they arrive.
fn stream_chat(hosts: &Hosts, prompt: String, max_tokens: u32) -> std::thread::JoinHandle<Stream> {
    let url = format!("http://{}:7833/v1/chat/completions", hosts.addr(1));
    let body = json!({"model": MODEL, "max_tokens": max_tokens, "temperature": 0, "stream": true,
        "messages": [{"role": "user", "content": prompt}]})
    .to_string();
    let mut cmd = hosts.command(1, "curl");
    cmd.args(["-sSN", "--max-time", "120", &url, "-H", "content-type: application/json", "-d", &body]);
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut stream = Stream { started, first: None, last: None, tokens: 0 };
        let Ok(mut child) = cmd.stdout(Stdio::piped()).spawn() else { return stream };
        let stdout = child.stdout.take().expect("piped");
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let Some(data) = line.strip_prefix("data:") else { continue };
            let data: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
            let content = data["choices"][0]["delta"]["content"].as_str().unwrap_or_default();
            if !content.is_empty() {
                let now = Instant::now();
                stream.first.get_or_insert(now);
                stream.last = Some(now);
                stream.tokens += 1;
            }
        }
        let _ = child.wait();
        stream
    })
}

/// `plan.requests` answers, `concurrent` at a time, with prompts unique to `tag`.
fn round(hosts: &Hosts, plan: &Plan, concurrent: usize, tag: &str) -> Round {
    let started = Instant::now();
    let mut streams = Vec::new();
    for wave in 0..plan.requests.div_ceil(concurrent) {
        let handles: Vec<_> = (0..concurrent)
            .map(|i| {
                let n = wave * concurrent + i;
                let prompt =
                    format!("Story {tag}-{n}: tell a long tale about a lighthouse keeper number {n}.");
                stream_chat(hosts, prompt, plan.max_tokens)
            })
            .collect();
        streams.extend(handles.into_iter().filter_map(|h| h.join().ok()));
    }
    let wall = started.elapsed().as_secs_f64();
    let tokens: usize = streams.iter().map(|s| s.tokens).sum();
    Round {
        ttft_ms: streams
            .iter()
            .filter_map(|s| s.first.map(|f| f.duration_since(s.started).as_secs_f64() * 1000.0))
            .collect(),
        decode_tps: streams
            .iter()
            .filter_map(|s| {
                let span = s.last?.duration_since(s.first?).as_secs_f64();
                (span > 0.0 && s.tokens > 1).then(|| (s.tokens - 1) as f64 / span)
            })
            .collect(),
        aggregate_tps: tokens as f64 / wall,
    }
}

fn p50(values: &[f64]) -> f64 {
    stats::Summary::of(values).p50
}

fn compare(report: &mut Report, key: &str, what: &str, one: &Round, cluster: &Round, delay: &str) {
    let label = |m: &str| format!("{what}, {m}, worker on host 2{delay}");
    report.figure(
        SECTION,
        Fig::new(format!("hosts.{key}.aggregate_tps"), label("aggregate tok/s"))
            .value(cluster.aggregate_tps, "tok/s")
            .vs("worker on host 1", one.aggregate_tps)
            .bar(Target::AtLeast(0.95)),
    );
    report.figure(
        SECTION,
        Fig::new(format!("hosts.{key}.ttft_p50_ms"), label("TTFT p50"))
            .value(p50(&cluster.ttft_ms), "ms")
            .vs("worker on host 1", p50(&one.ttft_ms))
            .bar(Target::AtMost(1.1)),
    );
    report.figure(
        SECTION,
        Fig::new(format!("hosts.{key}.decode_tps_p50"), label("per-stream decode p50"))
            .value(p50(&cluster.decode_tps), "tok/s")
            .vs("worker on host 1", p50(&one.decode_tps)),
    );
}

/// Streams a long job from host 1, kills the host of its worker after a few tokens; the gap between
/// the last token before and the first from the other worker.
fn lost_machine_gap(hosts: &Hosts) -> anyhow::Result<Duration> {
    let body = json!({"model": MODEL, "max_tokens": 200, "temperature": 0, "job_id": "bench-lost-host",
        "messages": [{"role": "user", "content": "Write a very long story about a dragon, a knight and the sea."}]});
    api(hosts, "POST", "/v1/jobs", Some(body))?;
    let url = format!("http://{}:7833/v1/jobs/bench-lost-host/stream", hosts.addr(1));
    let mut child =
        hosts.command(1, "curl").args(["-sSN", "--max-time", "120", &url]).stdout(Stdio::piped()).spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let _curl = Guard(child);
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    let mut worker: Option<String> = None;
    let mut tokens = 0;
    let mut last_before = Instant::now();
    let mut killed = false;
    let mut event = String::new();
    for line in &mut lines {
        if let Some(e) = line.strip_prefix("event:") {
            event = e.trim().to_owned();
            continue;
        }
        let Some(data) = line.strip_prefix("data:") else { continue };
        let data: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
        let Some(from) = data["worker_id"].as_str().filter(|_| event == "token") else { continue };
        match &worker {
            None => worker = Some(from.to_owned()),
            Some(w) if killed && w != from => return Ok(last_before.elapsed()),
            Some(_) => {}
        }
        tokens += 1;
        last_before = Instant::now();
        if tokens == 5 && !killed {
            let w = worker.as_deref().unwrap_or_default();
            let hive = workers(hosts)
                .iter()
                .find(|x| x["worker_id"] == w)
                .and_then(|x| x["hive_id"].as_str().map(str::to_owned))
                .context("the job's worker")?;
            let host = match hive.as_str() {
                "h2" => 2,
                "h3" => 3,
                other => bail!("the job runs on hive {other}, not on a joined host"),
            };
            hosts.kill_host(host);
            killed = true;
        }
    }
    bail!("the stream ended without tokens from another worker")
}

/// Runs the section; prints every figure and returns them in `report`.
pub fn run(report: &mut Report, plan: &Plan, root: &Path) -> anyhow::Result<()> {
    let hosts = Hosts::create(3).context("hosts of their own")?;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir()).collect::<Result<_, _>>()?;
    let mut up = rbee_on(&hosts, 1, root, dirs[0].path());
    up.args(["up", "--host", &hosts.addr(1), "--no-worker"]);
    let _up = start_until(up, "rbee join", Duration::from_secs(120))?;
    let join_file = dirs[0].path().join("join.toml");
    let mut joined = Vec::new();
    for i in 2..=3 {
        let mut join = rbee_on(&hosts, i, root, dirs[i - 1].path());
        join.arg("join").arg(&join_file).args(["--host", &hosts.addr(i), "--hive-id", &format!("h{i}")]);
        joined.push(start_until(join, "joined: hive", Duration::from_secs(90))?);
    }

    // One worker serves each round: the other hives are drained meanwhile.
    drain(&hosts, "h2", true)?;
    drain(&hosts, "h3", true)?;
    let local = spawn_worker(&hosts, "local")?;
    let one = [round(&hosts, plan, 1, "a"), round(&hosts, plan, 2, "b")];
    stop_worker(&hosts, &local)?;
    drain(&hosts, "local", true)?;
    drain(&hosts, "h2", false)?;
    let delayed = (1..=3).all(|i| hosts.delay(i, Duration::from_millis(1)));
    let delay = if delayed { ", 1 ms on every link" } else { " (no tc netem here: no added delay)" };
    spawn_worker(&hosts, "h2")?;
    let cluster = [round(&hosts, plan, 1, "c"), round(&hosts, plan, 2, "d")];
    compare(report, "one_stream", "1 stream", &one[0], &cluster[0], delay);
    compare(report, "two_streams", "2 streams", &one[1], &cluster[1], delay);

    drain(&hosts, "h3", false)?;
    spawn_worker(&hosts, "h3")?;
    let gap = lost_machine_gap(&hosts)?;
    let interval = Duration::from_millis(rbee_bus::DEFAULT_HEARTBEAT_INTERVAL_MS);
    let detection = interval * 4;
    let prefill_ms = p50(&cluster[0].ttft_ms);
    report.figure(
        SECTION,
        Fig::new("hosts.lost_machine.gap_ms", "machine lost mid-stream: gap between tokens")
            .value(gap.as_secs_f64() * 1000.0, "ms")
            .vs("detection bound + one prefill", detection.as_secs_f64() * 1000.0 + prefill_ms)
            .bar(Target::AtMost(1.0)),
    );
    report.note(
        SECTION,
        format!(
            "Detection bound: {} ms heartbeats, offline after 3 silent intervals, confirmed within one \
             more ({} ms); one prefill: the 1-stream TTFT p50 through the cluster ({prefill_ms:.0} ms). \
             The hosts share this machine's CPUs, so the host-1 and host-2 rows differ by the network \
             path only{delay}.",
            interval.as_millis(),
            detection.as_millis()
        ),
    );
    Ok(())
}
