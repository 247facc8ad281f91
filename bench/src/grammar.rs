//! Section 2, grammar-constrained decoding: what `response_format` costs. On the worker's own engine in
//! this process, greedy, [`TOKENS`] tokens a stream: one stream held to a JSON schema with nested
//! objects and arrays against one free stream; then four streams sharing the batch with one of them
//! constrained against four free ones, read on the three free streams (a slot's grammar must not slow
//! the others down). Runs alternate and repeat [`REPS`] times; medians are reported.

use anyhow::bail;
use rbee_bus::{ChatMessage, Prompt, ResponseFormat, SamplingParams};
use rbee_worker::engine::Engine;
use serde_json::json;

use crate::chat::{direct_run_each, load_engine, RunResult, PROMPT};
use crate::cluster::Env;
use crate::e2e::SECTION;
use crate::report::{Fig, Report, Target};
use crate::stats::median;

/// Tokens per stream.
pub const TOKENS: u32 = 128;
/// Alternating repetitions of each comparison.
pub const REPS: usize = 3;

const JSON_PROMPT: &str =
    "List eight dragons as JSON: for each its name, its home (city and country), its age and its favourite bread.";

/// Nested objects and an array long enough that the reply cannot end before [`TOKENS`].
fn schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "dragons": {
                "type": "array",
                "minItems": 8,
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "home": {
                            "type": "object",
                            "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
                            "required": ["city", "country"]
                        },
                        "age": {"type": "integer"},
                        "bread": {"type": "string"}
                    },
                    "required": ["name", "home", "age", "bread"]
                }
            }
        },
        "required": ["dragons"]
    })
}

fn free() -> (Prompt, SamplingParams) {
    let params = SamplingParams { temperature: 0.0, max_tokens: TOKENS, ..SamplingParams::default() };
    (Prompt::chat(vec![ChatMessage::new("user", PROMPT)]), params)
}

fn constrained() -> (Prompt, SamplingParams) {
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: TOKENS,
        response_format: ResponseFormat::JsonSchema {
            name: "dragons".into(),
            schema: schema(),
            strict: true,
        },
        ..SamplingParams::default()
    };
    (Prompt::chat(vec![ChatMessage::new("user", JSON_PROMPT)]), params)
}

/// Mean decode rate of the streams of `run` at `indices`.
fn decode_tps(run: &RunResult, indices: std::ops::Range<usize>) -> f64 {
    let picked: Vec<f64> = run.streams[indices].iter().map(|s| s.decode_tps).collect();
    picked.iter().sum::<f64>() / picked.len().max(1) as f64
}

/// Measures and records the section's figures; returns the note for `BENCHMARKS.md`.
pub async fn section(report: &mut Report, env: &Env) -> anyhow::Result<String> {
    let engine: Engine = load_engine(&env.model_path, env.threads as usize, true).await?;
    // Warm up both paths (the grammar's first compile included).
    direct_run_each(&engine, vec![free()]).await?;
    direct_run_each(&engine, vec![constrained()]).await?;
    let (mut one_free, mut one_held, mut four_free, mut four_mixed) = (vec![], vec![], vec![], vec![]);
    let mut held_tokens = Vec::new();
    for rep in 0..REPS {
        for side in if rep % 2 == 0 { [0, 1] } else { [1, 0] } {
            if side == 0 {
                one_free.push(decode_tps(&direct_run_each(&engine, vec![free()]).await?, 0..1));
                four_free.push(decode_tps(&direct_run_each(&engine, vec![free(); 4]).await?, 1..4));
            } else {
                let run = direct_run_each(&engine, vec![constrained()]).await?;
                held_tokens.push(run.streams[0].tokens);
                one_held.push(decode_tps(&run, 0..1));
                let mixed = direct_run_each(&engine, vec![constrained(), free(), free(), free()]).await?;
                four_mixed.push(decode_tps(&mixed, 1..4));
            }
        }
    }
    if held_tokens.iter().any(|t| *t < TOKENS) {
        bail!("a constrained stream ended before {TOKENS} tokens ({held_tokens:?}): the comparison is not like for like");
    }
    let (f1, h1, f4, m4) = (median(&one_free), median(&one_held), median(&four_free), median(&four_mixed));
    println!(
        "  grammar: 1 stream {h1:.1} tok/s held to a JSON schema vs {f1:.1} free; 4 streams, the 3 free ones \
         {m4:.1} tok/s beside a constrained one vs {f4:.1} beside free ones"
    );
    let figures = [
        Fig::new("grammar.one_stream_decode_tps", "decode held to a nested JSON schema (1 stream)")
            .value(h1, "tok/s")
            .vs("the same engine, unconstrained, same length", f1)
            .bar(Target::AtLeast(0.8)),
        Fig::new("grammar.neighbours_decode_tps", "4 streams: the 3 free ones beside a constrained stream")
            .value(m4, "tok/s")
            .vs("the 3 free ones beside a fourth free stream", f4)
            .bar(Target::AtLeast(0.9)),
    ];
    for fig in figures {
        report.figure(SECTION, fig);
    }
    report.detail(
        "grammar",
        json!({"one_free": one_free, "one_held": one_held, "four_free": four_free, "four_mixed": four_mixed}),
    );
    engine.shutdown();
    Ok(format!(
        "**Grammar-constrained decoding** (worker engine in process, greedy, {TOKENS} tokens a stream, a JSON \
         schema of an array of at least eight objects with a nested object each): one constrained stream decodes \
         at {h1:.1} tok/s against {f1:.1} unconstrained; with four streams in the batch, the three free ones \
         decode at {m4:.1} tok/s beside a constrained stream against {f4:.1} beside a free one. The grammar is \
         checked on the token the sampler picks first and applied to the whole vocabulary only when it refuses \
         that token (llama.cpp's server does the same)."
    ))
}
