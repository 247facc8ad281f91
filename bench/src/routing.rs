//! Section 2, routing by prefix: two workers of the model (one inference thread each, as two small
//! machines would be), four conversations at once, every turn resending its whole history. Measured
//! twice in the same run, each on a cluster of its own: a queen that prefers the worker holding the
//! longest prefix of the prompt (as `rbee up` runs it) and one placing by load only
//! (`rbee-queen --no-prefix-routing`). Figures: later turns' TTFT, the share of their prompt a worker
//! already held, and how often a conversation changed worker.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rbee_bus::ChatMessage;
use serde_json::{json, Value};

use crate::api::Api;
use crate::cluster::{Cluster, Env, HIVE_ID, MODEL_ID};
use crate::e2e::SECTION;
use crate::multi_turn::{ask, SYSTEM, TOKENS_PER_TURN};
use crate::report::{Fig, Report, Target};
use crate::stats::Summary;

/// Conversations going on at once.
pub const CONVERSATIONS: usize = 4;
/// Turns per conversation.
pub const TURNS: usize = 5;
/// Slots per worker: together room for every conversation twice over.
const SLOTS: u32 = 4;
/// Each conversation's pause between an answer and the next question, ms: users do not type in
/// step, so the conversations' turns arrive at different moments and find the workers differently
/// loaded (in step, two per worker, placement by load alone would keep them where they are by chance).
const THINK_MS: [u64; CONVERSATIONS] = [150, 400, 750, 1100];

const OPENERS: [&str; CONVERSATIONS] = [
    "What is the capital of France?",
    "What is the capital of Japan?",
    "What is the capital of Brazil?",
    "What is the capital of Egypt?",
];
const FOLLOW_UPS: [&str; TURNS - 1] = [
    "Which river flows through it?",
    "Name a large port of that country.",
    "Which country lies next to it?",
    "What language do people speak there?",
];

/// One turn as the client saw it, and where the queen put it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoutedTurn {
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
    /// The worker that answered.
    pub worker: String,
}

/// The later turns' figures of one way of placing.
struct Summed {
    ttft_p50: f64,
    ttft_mean: f64,
    ttft_max: f64,
    cached_share: f64,
    moves: usize,
}

fn sum(turns: &[RoutedTurn]) -> Summed {
    let later: Vec<&RoutedTurn> = turns.iter().filter(|t| t.turn > 0).collect();
    let ttft: Vec<f64> = later.iter().map(|t| t.ttft_ms).collect();
    let prompt: u32 = later.iter().map(|t| t.prompt_tokens).sum();
    let cached: u32 = later.iter().map(|t| t.cached_tokens).sum();
    let moves = later
        .iter()
        .filter(|t| {
            turns
                .iter()
                .any(|p| p.conversation == t.conversation && p.turn + 1 == t.turn && p.worker != t.worker)
        })
        .count();
    let summary = Summary::of(&ttft);
    Summed {
        ttft_p50: summary.p50,
        ttft_mean: summary.mean,
        ttft_max: summary.max,
        cached_share: if prompt == 0 { 0.0 } else { f64::from(cached) / f64::from(prompt) },
        moves,
    }
}

/// The worker that ran the job behind completion `id`.
async fn worker_of(api: &Api, id: &str) -> anyhow::Result<String> {
    let job = api.get(&format!("/v1/jobs/{}", id.trim_start_matches("chatcmpl-"))).await?;
    job.get("worker_id").and_then(Value::as_str).map(str::to_owned).context("a job record without its worker")
}

/// One conversation, turn after turn.
async fn conversation(api: Api, index: usize) -> anyhow::Result<Vec<RoutedTurn>> {
    let mut history = vec![ChatMessage::new("system", SYSTEM)];
    let questions = std::iter::once(OPENERS[index]).chain(FOLLOW_UPS);
    let mut turns = Vec::new();
    for (turn, question) in questions.enumerate() {
        history.push(ChatMessage::new("user", question));
        let answer = ask(&api, MODEL_ID, &history, TOKENS_PER_TURN).await?;
        history.push(ChatMessage::new("assistant", &answer.text));
        let worker = worker_of(&api, &answer.id).await?;
        turns.push(RoutedTurn {
            conversation: index,
            turn,
            ttft_ms: answer.ttft_ms,
            prompt_tokens: answer.prompt_tokens,
            cached_tokens: answer.cached_tokens,
            worker,
        });
        tokio::time::sleep(Duration::from_millis(THINK_MS[index])).await;
    }
    Ok(turns)
}

/// Two workers on a cluster of its own, the conversations at once on them.
async fn run(env: &Env, tag: &str, queen_extra: &[&str]) -> anyhow::Result<Vec<RoutedTurn>> {
    let mut cluster = Cluster::start_tagged(env, tag, queen_extra).await?;
    let api = cluster.api.clone();
    for _ in 0..2 {
        api.post("/v1/workers", &json!({"model": MODEL_ID, "hive": HIVE_ID, "slots": SLOTS, "threads": 1}))
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let workers = api.workers().await?;
        let ready = workers.iter().filter(|w| w["state"] == "idle" && w["liveness"] == "online").count();
        if ready == 2 {
            break;
        }
        cluster.hive.check()?;
        if Instant::now() > deadline {
            bail!("two workers were not idle within 90 s; hive log:\n{}", cluster.hive.tail(15));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let runs = futures::future::join_all((0..CONVERSATIONS).map(|c| conversation(api.clone(), c))).await;
    cluster.stop_daemons();
    let mut turns = Vec::new();
    for run in runs {
        turns.extend(run?);
    }
    turns.sort_by_key(|t| (t.turn, t.conversation));
    Ok(turns)
}

/// Runs both ways of placing, prints each turn, records later-turn TTFT with prefix routing against
/// load-only placement. Returns the paragraph for `BENCHMARKS.md`.
pub async fn section(report: &mut Report, env: &Env) -> anyhow::Result<String> {
    let routed = run(env, "-routing", &[]).await?;
    let by_load = run(env, "-by-load", &["--no-prefix-routing"]).await?;
    println!(
        "  2 workers x {SLOTS} slots (1 thread each), {CONVERSATIONS} conversations at once x {TURNS} turns, \
         history resent, {TOKENS_PER_TURN} tokens a turn"
    );
    println!("  turn  conv  prompt  | by prefix ttft  cached  worker | by load ttft  cached  worker");
    for (r, l) in routed.iter().zip(&by_load) {
        println!(
            "  {:>4}  {:>4}  {:>6}  | {:>11.0} ms  {:>6}  {:>6} | {:>9.0} ms  {:>6}  {:>6}",
            r.turn + 1,
            r.conversation + 1,
            r.prompt_tokens,
            r.ttft_ms,
            r.cached_tokens,
            short(&r.worker),
            l.ttft_ms,
            l.cached_tokens,
            short(&l.worker)
        );
    }
    let (r, l) = (sum(&routed), sum(&by_load));
    let later = CONVERSATIONS * (TURNS - 1);
    println!(
        "  later turns: by prefix ttft p50 {:.0} ms (mean {:.0}, worst {:.0}), {:.0}% of prompt tokens held, {} of \
         {later} moved worker; by load {:.0} ms (mean {:.0}, worst {:.0}), {:.0}%, {} moved",
        r.ttft_p50,
        r.ttft_mean,
        r.ttft_max,
        r.cached_share * 100.0,
        r.moves,
        l.ttft_p50,
        l.ttft_mean,
        l.ttft_max,
        l.cached_share * 100.0,
        l.moves
    );
    report.figure(
        SECTION,
        Fig::new(
            "routing.later_ttft_p50_ms",
            "two workers, 4 conversations: later-turn TTFT p50, placed by prefix",
        )
        .value(r.ttft_p50, "ms")
        .vs("placed by load only (rbee-queen --no-prefix-routing), same run", l.ttft_p50)
        .bar(Target::AtMost(0.5)),
    );
    report.figure(
        SECTION,
        Fig::new(
            "routing.later_ttft_mean_ms",
            "two workers, 4 conversations: later-turn TTFT mean, placed by prefix",
        )
        .value(r.ttft_mean, "ms")
        .vs("placed by load only, same run", l.ttft_mean),
    );
    report.detail("routing", json!({"by_prefix": routed, "by_load": by_load}));
    Ok(format!(
        "**Routing by prefix** (2 workers of {SLOTS} slots with one inference thread each, {CONVERSATIONS} \
         conversations at once, {TURNS} turns each, the ~250-token system prompt shared, the whole history resent, \
         {TOKENS_PER_TURN} tokens a turn, each conversation pausing {THINK_MS:?} ms between an answer and its \
         next question): later-turn TTFT p50 {:.0} ms when the queen places by prefix against {:.0} ms when it places by load only (mean \
         {:.0} against {:.0} ms, worst {:.0} against {:.0} ms); {:.0}% against \
         {:.0}% of the later turns' prompt tokens were already held by the worker that got them, and {} against \
         {} of the {later} later turns went to another worker than the turn before. Placement by load alone \
         breaks ties between equally loaded workers by their recent tokens per second, which favours the worker \
         that has just answered, often the same conversation's: some turns stay put by that accident; those \
         that move read their history again.",
        r.ttft_p50,
        l.ttft_p50,
        r.ttft_mean,
        l.ttft_mean,
        r.ttft_max,
        l.ttft_max,
        r.cached_share * 100.0,
        l.cached_share * 100.0,
        r.moves,
        l.moves
    ))
}

/// The last characters of a worker id, for the table.
fn short(id: &str) -> &str {
    let start = id.char_indices().rev().nth(5).map_or(0, |(i, _)| i);
    &id[start..]
}
