//! Section 1, token path: one-way latency of a token chunk from its publish on `rbee.job.<id>.tokens` to the
//! client's read, through the queen's OpenAI SSE endpoint, next to the same payload over raw NATS (one
//! hop) and through a minimal relay process (two hops, the floor of any relay) in the same run.
//!
//! The publisher is the [echo worker](crate::echo) inside this process. The client that reads the SSE
//! stream lives in the same process, so both ends read one clock (µs, not the wire's ms `sent_at_ms`).
//! `rbee-bench relay` ([`relay`]) is the relay process. The section's last two figures, the queen hop
//! of the real worker, are measured during the end-to-end runs ([`TokenPath::real_worker_hop`]).

use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use futures::StreamExt;
use rbee_bus::{Bus, EventStamper, JobId, TokenChunk, WorkerId};
use serde_json::{json, Value};

use crate::api::Api;
use crate::cluster::{connect, Env, Proc};
use crate::echo::{chunk, EchoWorker, ECHO_MODEL, ECHO_WORKER};
use crate::report::{Fig, Report, Target};
use crate::sse;
use crate::stats::{self, Summary};

/// The section's title.
pub const SECTION: &str = "1. Token path";

/// Repetitions and pace.
pub struct Plan {
    /// Chunks per run.
    pub chunks: u32,
    /// One chunk every `pace`.
    pub pace: Duration,
    /// Rounds of (raw, relay, queen) runs.
    pub rounds: usize,
}

/// What the token path measured, µs.
pub struct TokenPath {
    /// Raw NATS, one hop.
    pub raw: Summary,
    /// Through the relay process, two hops.
    pub relay: Summary,
    /// Through the queen's SSE.
    pub queen: Summary,
    /// One chunk's size on the wire.
    pub payload_bytes: usize,
    /// One chunk every this many ms.
    pub pace_ms: f64,
    /// Chunks per run.
    pub chunks: u32,
    /// Rounds.
    pub rounds: usize,
    /// Median cores taken by other processes during a round.
    pub foreign_cores: f64,
}

/// Runs raw, relay and queen rounds in turns (each once the machine is quiet) on the NATS at `url` and
/// records the section's figures but the real worker's.
pub async fn section(
    report: &mut Report,
    api: &Api,
    url: &str,
    env: &Env,
    plan: &Plan,
) -> anyhow::Result<TokenPath> {
    let echo = EchoWorker::start(connect(url).await?, plan.pace).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !api
        .workers()
        .await?
        .iter()
        .any(|w| w.get("worker_id").and_then(Value::as_str) == Some(ECHO_WORKER))
    {
        if Instant::now() > deadline {
            bail!("the queen did not list the echo worker");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (publisher, reader) = (connect(url).await?, connect(url).await?);
    let exe = std::env::current_exe()?;
    let relay_args: Vec<String> =
        ["relay", "--nats", url, "--from", "bench.relay.in", "--to", "bench.relay.out"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
    let relay_log = env.logs.join("relay.log");
    let mut relay = Proc::spawn("relay", &exe, &relay_args, &relay_log)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&relay_log).unwrap_or_default().contains("ready") {
        relay.check()?;
        if Instant::now() > deadline {
            bail!("the relay did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut raw, mut relayed, mut queen) = (Vec::new(), Vec::new(), Vec::new());
    let mut foreign = Vec::new();
    // Warm-up, not counted.
    nats_run(&publisher, &reader, "bench.raw", "bench.raw", 50, plan.pace).await?;
    nats_run(&publisher, &reader, "bench.relay.in", "bench.relay.out", 50, plan.pace).await?;
    queen_run(api, &echo, 50).await?;
    for _ in 0..plan.rounds {
        stats::wait_quiet(Duration::from_secs(10)).await;
        let meter = stats::ForeignLoad::start();
        raw.extend(nats_run(&publisher, &reader, "bench.raw", "bench.raw", plan.chunks, plan.pace).await?);
        relayed.extend(
            nats_run(&publisher, &reader, "bench.relay.in", "bench.relay.out", plan.chunks, plan.pace)
                .await?,
        );
        queen.extend(queen_run(api, &echo, plan.chunks).await?);
        foreign.push(meter.cores());
    }
    echo.stop().await;
    relay.stop(Duration::from_secs(2));
    let stamper = rbee_bus::EventStamper::new("bench-raw");
    let sample = chunk(&stamper, &rbee_bus::JobId::generate(), &ECHO_WORKER.parse()?, None, 123);
    let tp = TokenPath {
        raw: Summary::of(&raw),
        relay: Summary::of(&relayed),
        queen: Summary::of(&queen),
        payload_bytes: serde_json::to_vec(&sample)?.len(),
        pace_ms: plan.pace.as_secs_f64() * 1e3,
        chunks: plan.chunks,
        rounds: plan.rounds,
        foreign_cores: stats::median(&foreign),
    };
    let figures = [
        Fig::new("token_path.queen_sse.p50_us", "queen SSE (OpenAI stream), p50")
            .value(tp.queen.p50, "µs")
            .vs("raw NATS pub→sub p50", tp.raw.p50)
            .bar(Target::AtMost(1.5)),
        Fig::new("token_path.queen_sse.p99_us", "queen SSE (OpenAI stream), p99")
            .value(tp.queen.p99, "µs")
            .vs("raw NATS pub→sub p99", tp.raw.p99)
            .bar(Target::AtMost(1.5)),
        Fig::new("token_path.relay_floor.p50_us", "two-hop floor: NATS → relay process → NATS, p50")
            .value(tp.relay.p50, "µs")
            .vs("raw NATS p50", tp.raw.p50),
        Fig::new("token_path.relay_floor.p99_us", "two-hop floor: NATS → relay process → NATS, p99")
            .value(tp.relay.p99, "µs")
            .vs("raw NATS p99", tp.raw.p99),
        Fig::new("token_path.queen_vs_relay.p50_us", "queen SSE p50 against the two-hop floor")
            .value(tp.queen.p50, "µs")
            .vs("relay p50", tp.relay.p50),
    ];
    for fig in figures {
        report.figure(SECTION, fig);
    }
    report.detail(
        "token_path",
        json!({
            "chunks_per_run": plan.chunks, "runs": plan.rounds, "pace_ms": plan.pace.as_secs_f64() * 1e3,
            "payload_bytes": tp.payload_bytes, "foreign_cores": tp.foreign_cores, "raw_us": tp.raw, "relay_us": tp.relay, "queen_sse_us": tp.queen,
        }),
    );
    Ok(tp)
}

impl TokenPath {
    /// Records the real worker's queen hop: per chunk of the single-stream end-to-end runs, the SSE
    /// read less a direct NATS subscriber's read (`hops`, µs), against raw NATS.
    pub fn real_worker_hop(&self, report: &mut Report, hops: &[f64]) {
        let hops = Summary::of(hops);
        let label = "real worker: SSE read − direct NATS subscriber read";
        let figures = [
            Fig::new("token_path.real_worker_queen_hop.p50_us", format!("{label}, p50"))
                .value(hops.p50, "µs")
                .vs("raw NATS p50", self.raw.p50),
            Fig::new("token_path.real_worker_queen_hop.p99_us", format!("{label}, p99"))
                .value(hops.p99, "µs")
                .vs("raw NATS p99", self.raw.p99),
        ];
        for fig in figures {
            report.figure(SECTION, fig);
        }
        report.detail("token_path_real_worker_hop_us", json!(hops));
    }
}

/// `rbee-bench relay`: republishes every message from one subject on another (the two-hop floor).
pub async fn relay(nats: &str, from: &str, to: &str) -> anyhow::Result<()> {
    let bus = connect(nats).await?;
    let mut sub = bus.client().subscribe(from.to_owned()).await?;
    bus.round_trip().await?;
    println!("ready");
    let to = async_nats::Subject::from(to);
    while let Some(msg) = sub.next().await {
        bus.client().publish(to.clone(), msg.payload).await?;
    }
    Ok(())
}

/// Latencies (µs) of `n` chunks published at `pace` on `publish_to` by `publisher` and read on
/// `read_from` by `reader` (the same subject for one hop, or through a relay).
pub async fn nats_run(
    publisher: &Bus,
    reader: &Bus,
    publish_to: &str,
    read_from: &str,
    n: u32,
    pace: Duration,
) -> anyhow::Result<Vec<f64>> {
    let mut sub = reader.client().subscribe(read_from.to_owned()).await?;
    reader.round_trip().await?;
    let stamper = EventStamper::new("bench-raw");
    let job_id = JobId::generate();
    let worker_id: WorkerId = ECHO_WORKER.parse()?;
    let receiver = tokio::spawn(async move {
        let mut received = vec![None; n as usize];
        for _ in 0..n {
            let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(5), sub.next()).await else { break };
            let at = Instant::now();
            if let Ok(chunk) = serde_json::from_slice::<TokenChunk>(&msg.payload) {
                if let Some(slot) = received.get_mut(chunk.seq as usize) {
                    *slot = Some(at);
                }
            }
        }
        received
    });
    let mut published = vec![None; n as usize];
    let mut tick = tokio::time::interval(pace);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 0..u64::from(n) {
        tick.tick().await;
        let payload = Bytes::from(serde_json::to_vec(&chunk(&stamper, &job_id, &worker_id, None, i))?);
        published[i as usize] = Some(Instant::now());
        publisher.client().publish(publish_to.to_owned(), payload).await?;
    }
    let received = receiver.await?;
    pair(&published, &received)
}

/// Latencies (µs) of the chunks of one echo job read through the queen's `/v1/chat/completions` SSE.
pub async fn queen_run(api: &Api, echo: &EchoWorker, n: u32) -> anyhow::Result<Vec<f64>> {
    let body = json!({
        "model": ECHO_MODEL,
        "messages": [{"role": "user", "content": "count"}],
        "stream": true,
        "max_tokens": n,
    });
    let resp = api.stream_chat(&body, Duration::from_secs(120)).await?;
    let mut received = vec![None; n as usize];
    sse::read(resp, |ev| {
        let Ok(v) = serde_json::from_str::<Value>(&ev.data) else { return };
        let Some(text) = v.pointer("/choices/0/delta/content").and_then(Value::as_str) else { return };
        // A chunk may hold several chunks' text if the queen ever merged them: stamp each number.
        for part in text.split_whitespace() {
            if let Ok(i) = part.parse::<usize>() {
                if let Some(slot) = received.get_mut(i) {
                    *slot = Some(ev.at);
                }
            }
        }
    })
    .await?;
    pair(&echo.published(), &received)
}

fn pair(published: &[Option<Instant>], received: &[Option<Instant>]) -> anyhow::Result<Vec<f64>> {
    let latencies: Vec<f64> = published
        .iter()
        .zip(received)
        .filter_map(|(p, r)| Some(stats::us(r.as_ref()?.saturating_duration_since(*p.as_ref()?))))
        .collect();
    if latencies.len() < published.len() {
        bail!("{} of {} chunks arrived", latencies.len(), published.len());
    }
    Ok(latencies)
}
