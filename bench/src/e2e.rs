//! Section 2, end to end: time to first token and decode tokens/s through the queen's OpenAI endpoint (HTTP →
//! queen → NATS → worker process → NATS → queen → SSE), next to the same model driven directly through
//! llama.cpp in this process (`rbee_worker::engine::Engine`: the worker's own engine, same threads,
//! slots, context, prompt and sampling, minus NATS and HTTP). Runs alternate between the two; a pair
//! during which other processes took the CPU is measured again.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{json, Value};

use crate::api::Api;
use crate::chat::{self, RunResult, TtftSplit};
use crate::cluster::{Env, MODEL_ID};
use crate::report::{Fig, Report, Target};
use crate::stats::{self, FOREIGN_MAX_CORES};

/// The section's title.
pub const SECTION: &str = "2. End to end";

/// Repetitions and sizes.
pub struct Plan {
    /// Per concurrency, runs each way.
    pub reps: [(usize, usize); 3],
    /// Completion tokens per stream.
    pub max_tokens: u32,
    /// After this long, a pair is kept whatever the foreign load.
    pub budget: Duration,
}

/// The processes the queen path runs through, for their CPU time.
pub struct Pids<'a> {
    /// The queen.
    pub queen: u32,
    /// The worker every run goes to.
    pub worker: u32,
    /// Its id.
    pub worker_id: &'a str,
}

/// What the end-to-end runs measured.
pub struct EndToEnd {
    /// `Engine::load` in this process, ms.
    pub load_ms: f64,
    /// Per concurrency: (direct runs, queen runs).
    pub runs: Vec<(usize, Vec<RunResult>, Vec<RunResult>)>,
    /// Real-worker queen hop samples, µs.
    pub hops: Vec<f64>,
    /// Completion tokens per stream.
    pub max_tokens: u32,
    /// CPU the queen path took.
    pub cpu: CpuTally,
    /// Single-stream TTFT splits.
    pub splits: Vec<TtftSplit>,
    /// Pairs measured again because other processes took the CPU.
    pub discarded: usize,
    /// Workers the queen spawned on its own during the runs (stopped before the next run).
    pub extra_workers: usize,
}

/// CPU seconds spent while the queen path ran, and the tokens it carried.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuTally {
    /// The queen's CPU seconds.
    pub queen: f64,
    /// The worker's.
    pub worker: f64,
    /// This process's (the client's).
    pub client: f64,
    /// Completion tokens carried.
    pub tokens: u64,
}

impl CpuTally {
    fn add(&mut self, other: &CpuTally) {
        self.queen += other.queen;
        self.worker += other.worker;
        self.client += other.client;
        self.tokens += other.tokens;
    }

    /// `seconds` per token carried, µs.
    pub fn per_token_us(&self, seconds: f64) -> f64 {
        if self.tokens == 0 {
            0.0
        } else {
            seconds * 1e6 / self.tokens as f64
        }
    }
}

/// Makes the first worker the only one of the model, assignable, before a run through the queen: a
/// worker starved by other load misses heartbeats, and the queen then (rightly) spawns another.
async fn single_worker(api: &Api, keep: &str) -> anyhow::Result<usize> {
    let mut stopped = 0;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let workers = api.workers().await?;
        let mut ready = false;
        for w in &workers {
            let id = w.get("worker_id").and_then(Value::as_str).unwrap_or_default();
            let model = w.get("model_id").and_then(Value::as_str).unwrap_or_default();
            if id == keep {
                ready = w.get("assignable").and_then(Value::as_bool) == Some(true)
                    && w.get("slots_busy").and_then(Value::as_u64) == Some(0);
            } else if model == MODEL_ID {
                println!("  stopping {id}: the queen spawned it while the first worker was starved");
                let _ = api.delete(&format!("/v1/workers/{id}")).await;
                stopped += 1;
            }
        }
        let others = workers.iter().any(|w| {
            w.get("model_id").and_then(Value::as_str) == Some(MODEL_ID)
                && w.get("worker_id").and_then(Value::as_str) != Some(keep)
        });
        if ready && !others {
            return Ok(stopped);
        }
        if Instant::now() > deadline {
            bail!("worker {keep} did not become the only assignable worker of {MODEL_ID} within 40 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs every concurrency of `plan` both ways, in alternating pairs, and records the section's figures.
pub async fn section(
    report: &mut Report,
    api: &Api,
    bus: &rbee_bus::Bus,
    env: &Env,
    plan: &Plan,
    pids: Pids<'_>,
) -> anyhow::Result<EndToEnd> {
    let Pids { queen: queen_pid, worker: worker_pid, worker_id } = pids;
    let t = Instant::now();
    let engine = chat::load_engine(&env.model_path, env.threads as usize, true).await?;
    let load_ms = stats::ms(t.elapsed());
    println!(
        "  llama.cpp direct: Engine::load in {load_ms:.0} ms ({} threads, {} slots)",
        env.threads,
        chat::SLOTS
    );
    chat::direct_run(&engine, 1, 16).await?;
    chat::queen_run(api, MODEL_ID, 1, 16, None).await?;
    let mut runs = Vec::new();
    let mut hops = Vec::new();
    let mut splits = Vec::new();
    let mut discarded = Vec::new();
    let mut foreign = Vec::new();
    let mut extra_workers = 0;
    let deadline = Instant::now() + plan.budget;
    // CPU seconds used while the queen path ran: (queen, worker, this process), and tokens it carried.
    let mut cpu = CpuTally::default();
    let cpu_now = || {
        (
            stats::cpu_seconds(queen_pid).unwrap_or(0.0),
            stats::cpu_seconds(worker_pid).unwrap_or(0.0),
            stats::cpu_seconds(std::process::id()).unwrap_or(0.0),
        )
    };
    for (c, reps) in plan.reps {
        let (mut direct, mut queen) = (Vec::new(), Vec::new());
        let mut rep = 0;
        while rep < reps {
            stats::wait_quiet(
                Duration::from_secs(15).min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
            extra_workers += single_worker(api, worker_id).await?;
            let watch = (c == 1).then_some(bus);
            let meter = stats::ForeignLoad::start();
            let mut pair = (None, None, CpuTally::default());
            for side in if rep % 2 == 0 { [0, 1] } else { [1, 0] } {
                if side == 0 {
                    pair.0 = Some(chat::direct_run(&engine, c, plan.max_tokens).await?);
                    continue;
                }
                let before = cpu_now();
                let q = chat::queen_run(api, MODEL_ID, c, plan.max_tokens, watch).await?;
                let after = cpu_now();
                pair.2 = CpuTally {
                    queen: after.0 - before.0,
                    worker: after.1 - before.1,
                    client: after.2 - before.2,
                    tokens: q.result.streams.iter().map(|s| u64::from(s.tokens)).sum(),
                };
                pair.1 = Some(q);
            }
            let (Some(d), Some(q), tally) = pair else { bail!("a run pair did not complete") };
            let cores = meter.cores();
            if cores > FOREIGN_MAX_CORES && Instant::now() < deadline {
                println!(
                    "  discarded a {c}-stream pair: other processes took {cores:.2} cores meanwhile \
                     (direct {:.1} tok/s, queen {:.1} tok/s); measuring it again",
                    d.aggregate_tps, q.result.aggregate_tps
                );
                discarded.push(json!({
                    "concurrency": c, "foreign_cores": cores,
                    "direct_aggregate_tps": d.aggregate_tps, "queen_aggregate_tps": q.result.aggregate_tps,
                }));
                continue;
            }
            foreign.push(cores);
            cpu.add(&tally);
            hops.extend(q.hops);
            splits.extend(q.splits);
            direct.push(d);
            queen.push(q.result);
            rep += 1;
        }
        let ttft = |runs: &[RunResult]| {
            stats::median(&runs.iter().flat_map(|r| r.streams.iter().map(|s| s.ttft_ms)).collect::<Vec<_>>())
        };
        let decode = |runs: &[RunResult]| {
            stats::median(
                &runs.iter().flat_map(|r| r.streams.iter().map(|s| s.decode_tps)).collect::<Vec<_>>(),
            )
        };
        let agg =
            |runs: &[RunResult]| stats::median(&runs.iter().map(|r| r.aggregate_tps).collect::<Vec<_>>());
        let tokens: Vec<u32> =
            direct.iter().chain(&queen).flat_map(|r| r.streams.iter().map(|s| s.tokens)).collect();
        println!("  {c} stream(s), {reps} run(s) each way, completion tokens per stream: {tokens:?}");
        let streams = if c == 1 { "1 stream".to_owned() } else { format!("{c} concurrent streams") };
        let figures = [
            Fig::new(format!("e2e.c{c}.ttft_ms"), format!("time to first token, {streams} (median)"))
                .value(ttft(&queen), "ms")
                .vs("llama.cpp direct", ttft(&direct))
                .bar(Target::AtMost(1.11)),
            Fig::new(
                format!("e2e.c{c}.decode_tps"),
                format!("decode tokens/s per stream, {streams} (median)"),
            )
            .value(decode(&queen), "tok/s")
            .vs("llama.cpp direct", decode(&direct))
            .bar(Target::AtLeast(0.9)),
            Fig::new(
                format!("e2e.c{c}.aggregate_tps"),
                format!("aggregate tokens/s, {streams} (median run)"),
            )
            .value(agg(&queen), "tok/s")
            .vs("llama.cpp direct", agg(&direct))
            .bar(Target::AtLeast(0.9)),
        ];
        for fig in figures {
            report.figure(SECTION, fig);
        }
        runs.push((c, direct, queen));
    }
    engine.shutdown();
    println!(
        "  CPU per token through the queen: queen {:.0} µs, worker {:.0} µs, client {:.0} µs; {} pair(s) discarded for foreign load",
        cpu.per_token_us(cpu.queen),
        cpu.per_token_us(cpu.worker),
        cpu.per_token_us(cpu.client),
        discarded.len()
    );
    let med = |f: fn(&TtftSplit) -> f64| stats::median(&splits.iter().map(f).collect::<Vec<_>>());
    let split = json!({
        "sent_to_scheduled_ms": med(|s| s.to_scheduled), "scheduled_to_accepted_ms": med(|s| s.to_accepted),
        "accepted_to_first_chunk_ms": med(|s| s.to_first_chunk), "first_chunk_to_client_ms": med(|s| s.to_client),
    });
    println!("  single-stream TTFT through the queen, medians: {split}");
    report.detail(
        "end_to_end",
        json!({
            "cpu_per_token_us": {"queen": cpu.per_token_us(cpu.queen), "worker": cpu.per_token_us(cpu.worker), "client": cpu.per_token_us(cpu.client)},
            "ttft_split_single_stream": split, "ttft_splits": splits,
            "discarded_pairs": discarded, "foreign_cores_per_kept_pair": foreign, "extra_workers_stopped": extra_workers,
            "prompt": chat::PROMPT, "max_tokens": plan.max_tokens, "temperature": 0.0, "threads": env.threads,
            "slots": chat::SLOTS, "ctx_per_slot": chat::CTX_PER_SLOT, "engine_load_ms": load_ms,
            "runs": runs.iter().map(|(c, d, q)| json!({"concurrency": c, "direct": d, "queen": q})).collect::<Vec<_>>(),
        }),
    );
    Ok(EndToEnd {
        load_ms,
        runs,
        hops,
        max_tokens: plan.max_tokens,
        cpu,
        splits,
        discarded: discarded.len(),
        extra_workers,
    })
}
