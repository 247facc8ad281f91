//! `rbee-bench engine`: the worker's llama.cpp engine alone, in this process (no NATS, no HTTP), on
//! the workloads `make bench` compares with llama-server: 1 stream, 4 streams of one prompt, 4 streams
//! of distinct prompts. For profiling the engine (`perf record -p`) and for trying engine settings
//! without the rest of the cluster; prints figures, writes no report.

use rbee_bus::{ChatMessage, Prompt, SamplingParams};
use rbee_worker::engine::Engine;

use crate::chat::{self, RunResult};
use crate::cluster::Env;
use crate::stats;

/// Runs each workload `runs` times (after one warm-up) and prints medians.
pub async fn run(env: &Env, runs: usize, max_tokens: u32) -> anyhow::Result<()> {
    let engine = chat::load_engine(&env.model_path, env.threads as usize, true).await?;
    chat::direct_run(&engine, 1, 8).await?;
    let distinct = |c: usize| (0..c).map(|i| format!("Story number {}. {}", i + 1, chat::PROMPT)).collect();
    let workloads: [(&str, Vec<String>); 3] = [
        ("1 stream", vec![chat::PROMPT.to_owned()]),
        ("4 streams, repeated prompts", vec![chat::PROMPT.to_owned(); 4]),
        ("4 streams, every prompt distinct", distinct(4)),
    ];
    println!(
        "  engine: {} threads, {} slots, {max_tokens} tokens a stream, {runs} runs each",
        env.threads,
        chat::SLOTS
    );
    for (name, prompts) in workloads {
        let mut results = Vec::with_capacity(runs);
        for _ in 0..runs {
            results.push(once(&engine, &prompts, max_tokens).await?);
        }
        let aggregate: Vec<f64> = results.iter().map(|r| r.aggregate_tps).collect();
        let ttft: Vec<f64> = results.iter().flat_map(|r| r.streams.iter().map(|s| s.ttft_ms)).collect();
        let decode: Vec<f64> = results.iter().flat_map(|r| r.streams.iter().map(|s| s.decode_tps)).collect();
        println!(
            "  {name:<34} aggregate {:>6.1} tok/s  ttft p50 {:>6.1} ms  decode per stream {:>6.1} tok/s",
            stats::median(&aggregate),
            stats::median(&ttft),
            stats::median(&decode)
        );
    }
    Ok(())
}

async fn once(engine: &Engine, prompts: &[String], max_tokens: u32) -> anyhow::Result<RunResult> {
    let params = SamplingParams { temperature: 0.0, max_tokens, ..SamplingParams::default() };
    let jobs = prompts
        .iter()
        .map(|p| (Prompt::chat(vec![ChatMessage::new("user", p.as_str())]), params.clone()))
        .collect();
    chat::direct_run_each(engine, jobs).await
}
