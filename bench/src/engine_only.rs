//! `rbee-bench engine`: the worker's llama.cpp engine alone, in this process (no NATS, no HTTP), on
//! the workloads `make bench` compares with llama-server: 1 stream, 4 streams of one prompt, 4 streams
//! of distinct prompts. For profiling the engine (`perf record -p`) and for trying engine settings
//! without the rest of the cluster; prints figures, writes no report.

use rbee_bus::{ChatMessage, Prompt};
use rbee_worker::engine::Engine;

use crate::chat::{self, RunResult};
use crate::cluster::Env;
use crate::stats;

/// Runs each workload `runs` times (after one warm-up) and prints medians.
pub async fn run(env: &Env, runs: usize, max_tokens: u32) -> anyhow::Result<()> {
    let engine = chat::load_engine(&env.model_path, env.threads as usize, true).await?;
    chat::direct_run(&engine, 1, 8).await?;
    println!(
        "  engine: {} threads, {} slots, {max_tokens} tokens a stream, {runs} runs each",
        env.threads,
        chat::SLOTS
    );
    for workload in &chat::WORKLOADS {
        let mut results = Vec::with_capacity(runs);
        for run in 1..=runs {
            results.push(once(&engine, &workload.prompts(run), max_tokens).await?);
        }
        let aggregate: Vec<f64> = results.iter().map(|r| r.aggregate_tps).collect();
        let ttft: Vec<f64> = results.iter().flat_map(|r| r.streams.iter().map(|s| s.ttft_ms)).collect();
        let decode: Vec<f64> = results.iter().flat_map(|r| r.streams.iter().map(|s| s.decode_tps)).collect();
        println!(
            "  {:<34} aggregate {:>6.1} tok/s  ttft p50 {:>6.1} ms  decode per stream {:>6.1} tok/s",
            workload.name,
            stats::median(&aggregate),
            stats::median(&ttft),
            stats::median(&decode)
        );
    }
    Ok(())
}

async fn once(engine: &Engine, prompts: &[String], max_tokens: u32) -> anyhow::Result<RunResult> {
    let jobs = prompts
        .iter()
        .map(|p| (Prompt::chat(vec![ChatMessage::new("user", p.as_str())]), chat::params(max_tokens)))
        .collect();
    chat::direct_run_each(engine, jobs).await
}
