//! Section 2, multi-turn chat: the workload where prefix reuse matters. Two conversations of five turns
//! each, a system prompt of about 250 tokens, every turn resending the whole history plus a new
//! question (as chat clients do), greedy, 24 tokens a turn, the conversations taking turns. Measured
//! through the queen (HTTP → queen → worker process with prefix reuse, as `rbee up` runs it) and on the
//! worker's own engine in this process with reuse on and off (`--no-prefix-cache`), in the same run.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rbee_bus::{ChatMessage, Prompt, SamplingParams};
use rbee_worker::engine::{Engine, GenEvent, GenerationRequest};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::api::Api;
use crate::chat::load_engine;
use crate::cluster::{Env, MODEL_ID};
use crate::e2e::SECTION;
use crate::report::{Fig, Report, Target};
use crate::sse;

/// Conversations, turns each, tokens a turn.
pub const CONVERSATIONS: usize = 2;
/// Turns per conversation.
pub const TURNS: usize = 5;
/// Completion tokens per turn.
pub const TOKENS_PER_TURN: u32 = 24;

pub const SYSTEM: &str =
    "You are a patient and precise tutor of world geography for adult learners. Every answer \
    you give is short: one or two sentences, never a list. Name the country, the region and, where it \
    helps, a neighbouring country, so that the learner can place it on a map. Do not greet the learner, do \
    not thank them, and do not end with a question of your own. When a question is ambiguous, pick the \
    most common reading and say which one you picked in a few words. When you do not know an answer, say \
    so plainly instead of guessing. Prefer the names used in English-language atlases, give populations \
    rounded to the nearest million, give areas in square kilometres, and give heights in metres. Keep the \
    tone friendly but plain, and use no emoji, no markdown, no headings and no bold text. If the learner \
    asks about history, answer only with the facts that help locate the place today. If the learner asks \
    for a comparison, compare at most two places. Never invent a place, a river, a mountain or a city.";

/// By turn, each conversation's question.
const QUESTIONS: [[&str; CONVERSATIONS]; TURNS] = [
    ["What is the capital of France?", "What is the capital of Japan?"],
    ["Which river flows through it?", "Which is the highest mountain of that country?"],
    ["Which sea does that river reach?", "On which island does it stand?"],
    ["Name a large port on that coast.", "Name another large city on that island."],
    ["Which country lies just across the channel from it?", "Which ocean lies to the east of it?"],
];

/// One turn's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Turn {
    /// Conversation index.
    pub conversation: usize,
    /// Turn index, from 0.
    pub turn: usize,
    /// Request sent → first token, ms.
    pub ttft_ms: f64,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Prompt tokens the worker already held.
    pub cached_tokens: u32,
}

/// The first turn's TTFT (the first conversation's, which finds nothing cached; the second conversation
/// shares its system prompt) and the later turns' TTFT median.
pub fn split(turns: &[Turn]) -> (f64, f64) {
    let first: Vec<f64> =
        turns.iter().filter(|t| t.turn == 0 && t.conversation == 0).map(|t| t.ttft_ms).collect();
    let later: Vec<f64> = turns.iter().filter(|t| t.turn > 0).map(|t| t.ttft_ms).collect();
    (crate::stats::Summary::of(&first).p50, crate::stats::Summary::of(&later).p50)
}

fn message(role: &str, content: &str) -> ChatMessage {
    ChatMessage::new(role, content)
}

/// Runs the conversations, taking turns, with `ask` answering one history: (text, turn figures).
async fn conversations<F, Fut>(mut ask: F) -> anyhow::Result<Vec<Turn>>
where
    F: FnMut(Vec<ChatMessage>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(String, f64, u32, u32)>>,
{
    let mut histories: Vec<Vec<ChatMessage>> = vec![vec![message("system", SYSTEM)]; CONVERSATIONS];
    let mut turns = Vec::new();
    for (turn, round) in QUESTIONS.iter().enumerate() {
        for (conversation, (history, question)) in histories.iter_mut().zip(round).enumerate() {
            history.push(message("user", question));
            let (text, ttft_ms, prompt_tokens, cached_tokens) = ask(history.clone()).await?;
            history.push(message("assistant", &text));
            turns.push(Turn { conversation, turn, ttft_ms, prompt_tokens, cached_tokens });
        }
    }
    Ok(turns)
}

/// The conversations on an in-process engine (reuse on or off as it was loaded).
pub async fn direct(engine: &Engine) -> anyhow::Result<Vec<Turn>> {
    conversations(|messages| async move {
        let sent = Instant::now();
        let request = GenerationRequest {
            prompt: Prompt::chat(messages),
            params: SamplingParams {
                temperature: 0.0,
                max_tokens: TOKENS_PER_TURN,
                ..SamplingParams::default()
            },
            cancel: CancellationToken::new(),
            deadline: None,
            resume: None,
        };
        let mut generation = engine.submit(request).map_err(|e| anyhow::anyhow!("direct submit: {e}"))?;
        let (mut text, mut first) = (String::new(), None);
        while let Some(event) = generation.events.recv().await {
            match event {
                GenEvent::Token { text: piece, .. } => {
                    first.get_or_insert_with(Instant::now);
                    text.push_str(&piece);
                }
                GenEvent::ToolCalls { .. } => {}
                GenEvent::Finished { usage, error, .. } => {
                    if let Some(e) = error {
                        bail!("direct generation failed: {e}");
                    }
                    let first = first.context("no token")?;
                    let ttft = crate::stats::ms(first.saturating_duration_since(sent));
                    return Ok((text, ttft, usage.prompt_tokens, usage.cached_tokens));
                }
            }
        }
        bail!("the direct generation ended without a result")
    })
    .await
}

/// One streamed answer through the queen.
pub struct Answer {
    /// The text.
    pub text: String,
    /// Request sent → first token, ms.
    pub ttft_ms: f64,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Prompt tokens the worker already held.
    pub cached_tokens: u32,
    /// The completion's id (`chatcmpl-<job id>`).
    pub id: String,
}

/// Asks the queen's streaming chat completions for `max_tokens` greedy tokens after `messages`.
pub async fn ask(
    api: &Api,
    model: &str,
    messages: &[ChatMessage],
    max_tokens: u32,
) -> anyhow::Result<Answer> {
    let body = json!({
        "model": model,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
        "temperature": 0.0,
        "max_tokens": max_tokens,
    });
    let sent = Instant::now();
    let resp = api.stream_chat(&body, Duration::from_secs(300)).await?;
    let (mut text, mut first, mut usage, mut id) = (String::new(), None, None, String::new());
    sse::read(resp, |ev| {
        let Ok(v) = serde_json::from_str::<Value>(&ev.data) else { return };
        if id.is_empty() {
            id = v.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
        }
        if let Some(piece) = v.pointer("/choices/0/delta/content").and_then(Value::as_str) {
            first.get_or_insert(ev.at);
            text.push_str(piece);
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            usage = Some(u.clone());
        }
    })
    .await?;
    let first = first.context("the stream produced no token")?;
    let usage = usage.unwrap_or_default();
    let number = |p: &str| usage.pointer(p).and_then(Value::as_u64).unwrap_or(0) as u32;
    Ok(Answer {
        text,
        ttft_ms: crate::stats::ms(first.saturating_duration_since(sent)),
        prompt_tokens: number("/prompt_tokens"),
        cached_tokens: number("/prompt_tokens_details/cached_tokens"),
        id,
    })
}

/// The conversations through the queen's streaming chat completions.
pub async fn through_queen(api: &Api, model: &str) -> anyhow::Result<Vec<Turn>> {
    conversations(|messages| async move {
        let a = ask(api, model, &messages, TOKENS_PER_TURN).await?;
        Ok((a.text, a.ttft_ms, a.prompt_tokens, a.cached_tokens))
    })
    .await
}

/// Runs the three variants, prints each turn, and reports later-turn TTFT against the first turn's and
/// against the same engine with reuse off. Returns the paragraph for `BENCHMARKS.md`.
pub async fn section(report: &mut Report, api: &Api, env: &Env) -> anyhow::Result<String> {
    let threads = env.threads as usize;
    let queen = through_queen(api, MODEL_ID).await?;
    let reuse = {
        let engine = load_engine(&env.model_path, threads, true).await?;
        direct(&engine).await?
    };
    let plain = {
        let engine = load_engine(&env.model_path, threads, false).await?;
        direct(&engine).await?
    };
    println!(
        "  {CONVERSATIONS} conversations x {TURNS} turns, ~250-token system prompt, history resent, {TOKENS_PER_TURN} tokens a turn"
    );
    println!("  turn  conv  prompt  | queen ttft  cached | direct ttft  cached | reuse off ttft");
    for ((q, r), p) in queen.iter().zip(&reuse).zip(&plain) {
        println!(
            "  {:>4}  {:>4}  {:>6}  | {:>7.0} ms  {:>6} | {:>8.0} ms  {:>6} | {:>9.0} ms",
            q.turn + 1,
            q.conversation + 1,
            q.prompt_tokens,
            q.ttft_ms,
            q.cached_tokens,
            r.ttft_ms,
            r.cached_tokens,
            p.ttft_ms
        );
    }
    let (q_first, q_later) = split(&queen);
    let (r_first, r_later) = split(&reuse);
    let (p_first, p_later) = split(&plain);
    println!(
        "  later-turn ttft p50: queen {q_later:.0} ms (first {q_first:.0}), direct {r_later:.0} ms (first {r_first:.0}), \
         reuse off {p_later:.0} ms (first {p_first:.0})"
    );
    let figures = [
        Fig::new("multi_turn.queen.later_ttft_p50_ms", "multi-turn through the queen: later-turn TTFT p50")
            .value(q_later, "ms")
            .vs("first turn of the first conversation, same run", q_first)
            .bar(Target::AtMost(0.3)),
        Fig::new(
            "multi_turn.direct.later_ttft_p50_ms",
            "multi-turn, worker engine with prefix reuse: later-turn TTFT p50",
        )
        .value(r_later, "ms")
        .vs("the same engine with reuse off (--no-prefix-cache)", p_later)
        .bar(Target::AtMost(0.3)),
    ];
    for fig in figures {
        report.figure(SECTION, fig);
    }
    report.detail("multi_turn", json!({"queen": queen, "direct_reuse": reuse, "direct_reuse_off": plain}));
    let cached: Vec<u32> = queen.iter().map(|t| t.cached_tokens).collect();
    Ok(format!(
        "**Multi-turn chat** ({CONVERSATIONS} conversations x {TURNS} turns, the same ~250-token system prompt, the \
         whole history resent each turn, {TOKENS_PER_TURN} tokens a turn, the conversations taking turns): a later \
         turn decodes only what is new. Later-turn TTFT p50 {q_later:.0} ms through the queen, against {q_first:.0} ms \
         for the first turn of the first conversation; the worker's engine in process {r_later:.0} ms with reuse and \
         {p_later:.0} ms with reuse off. Prompt tokens reused per turn through the queen: {cached:?}. The second \
         conversation's first turn reuses the shared system prompt from the first one's slot; the first \
         conversation's history is saved to RAM before that slot is cut and restored on its next turn."
    ))
}
