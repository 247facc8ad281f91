//! Runs of concurrent streaming chats, the unit of the end-to-end sections: through an OpenAI-style
//! server (the queen: HTTP → queen → NATS → worker process → NATS → queen → SSE; or llama-server), or
//! on the worker's own engine (`rbee_worker::engine::Engine`) loaded in this process with the worker's
//! threads, slots and context, minus NATS and HTTP. Each stream's time to first token and decode rate.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use rbee_bus::{Bus, ChatMessage, JobState, JobStatus, Prompt, SamplingParams, TokenChunk};
use rbee_worker::engine::{Engine, EngineConfig, GenEvent, GenerationRequest};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::api::Api;
use crate::sse;

/// Slots of the in-process engine (the worker's default).
pub const SLOTS: usize = rbee_bus::sizing::DEFAULT_SLOTS as usize;
/// Context per slot of the in-process engine (the worker's default).
pub const CTX_PER_SLOT: u32 = rbee_bus::sizing::DEFAULT_CTX_PER_SLOT;

/// Loads the worker's engine in this process: `threads`, [`SLOTS`] slots of [`CTX_PER_SLOT`], prefix
/// reuse on or off (`--no-prefix-cache`).
pub async fn load_engine(model_path: &Path, threads: usize, prefix_reuse: bool) -> anyhow::Result<Engine> {
    let config = EngineConfig {
        model_path: model_path.to_path_buf(),
        threads: Some(threads),
        slots: SLOTS,
        ctx_per_slot: CTX_PER_SLOT,
        gpu_layers: 0,
        prefix_reuse,
        prefix_cache_bytes: rbee_worker::engine::DEFAULT_PREFIX_CACHE_MIB << 20,
        rpc_servers: Vec::new(),
    };
    Ok(tokio::task::spawn_blocking(move || Engine::load(config)).await??)
}

/// The prompt every run uses (greedy, so both sides generate the same text).
pub const PROMPT: &str = "Write a long story about a dragon who learns to bake bread.";

/// One workload of the comparison with llama-server (and of `rbee-bench engine`).
pub struct Workload {
    /// Its name in the report.
    pub name: &'static str,
    streams: usize,
    distinct: bool,
}

/// 1 stream, 4 streams of one prompt, 4 streams of distinct prompts.
pub const WORKLOADS: [Workload; 3] = [
    Workload { name: "1 stream", streams: 1, distinct: false },
    Workload { name: "4 streams, repeated prompts", streams: 4, distinct: false },
    Workload { name: "4 streams, every prompt distinct", streams: 4, distinct: true },
];

impl Workload {
    /// The prompts of run `run` (from 1). Distinct prompts stay distinct from run to run too, so no
    /// run reuses an earlier run's prefix.
    pub fn prompts(&self, run: usize) -> Vec<String> {
        (0..self.streams)
            .map(|i| {
                if self.distinct {
                    format!("Story number {}. {PROMPT} (run {run})", i + 1)
                } else {
                    PROMPT.to_owned()
                }
            })
            .collect()
    }
}

/// One stream's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamResult {
    /// Request sent (or submitted) → first token read, ms.
    pub ttft_ms: f64,
    /// (completion tokens − 1) ÷ (last token − first token), tokens/s.
    pub decode_tps: f64,
    /// Completion tokens.
    pub tokens: u32,
}

/// One run of `c` concurrent streams.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunResult {
    /// Each stream.
    pub streams: Vec<StreamResult>,
    /// All completion tokens ÷ (first request → last token), tokens/s.
    pub aggregate_tps: f64,
}

fn aggregate(streams: Vec<(StreamResult, Instant)>, t0: Instant) -> RunResult {
    let end = streams.iter().map(|(_, last)| *last).max().unwrap_or(t0);
    let tokens: u32 = streams.iter().map(|(s, _)| s.tokens).sum();
    let secs = end.saturating_duration_since(t0).as_secs_f64();
    RunResult {
        aggregate_tps: if secs > 0.0 { f64::from(tokens) / secs } else { 0.0 },
        streams: streams.into_iter().map(|(s, _)| s).collect(),
    }
}

fn stream_result(
    sent: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
    tokens: u32,
) -> anyhow::Result<StreamResult> {
    let (Some(first), Some(last)) = (first, last) else { bail!("the stream produced no token") };
    let span = last.saturating_duration_since(first).as_secs_f64();
    Ok(StreamResult {
        ttft_ms: crate::stats::ms(first.saturating_duration_since(sent)),
        decode_tps: if span > 0.0 && tokens > 1 { f64::from(tokens - 1) / span } else { 0.0 },
        tokens,
    })
}

pub fn params(max_tokens: u32) -> SamplingParams {
    SamplingParams { temperature: 0.0, max_tokens, ..SamplingParams::default() }
}

/// `c` generations submitted together to the in-process engine.
pub async fn direct_run(engine: &Engine, c: usize, max_tokens: u32) -> anyhow::Result<RunResult> {
    let prompt = Prompt::chat(vec![ChatMessage::new("user", PROMPT)]);
    direct_run_each(engine, (0..c).map(|_| (prompt.clone(), params(max_tokens))).collect()).await
}

/// Generations submitted together to the in-process engine, one per (prompt, params); the streams
/// come back in the same order.
pub async fn direct_run_each(
    engine: &Engine,
    jobs: Vec<(Prompt, SamplingParams)>,
) -> anyhow::Result<RunResult> {
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    // Sent together: the engine is told they are on their way in, as the worker tells it of each
    // assignment it has taken off the bus, so they share the first step.
    let mut arriving: Vec<_> = jobs.iter().map(|_| engine.arriving()).collect();
    for (prompt, params) in jobs {
        let sent = Instant::now();
        let request = GenerationRequest {
            prompt,
            params,
            cancel: CancellationToken::new(),
            deadline: None,
            resume: None,
        };
        let submitted = engine.submit(request);
        drop(arriving.pop());
        let mut generation = submitted.map_err(|e| anyhow::anyhow!("direct submit: {e}"))?;
        tasks.push(tokio::spawn(async move {
            let (mut first, mut last) = (None, None);
            while let Some(event) = generation.events.recv().await {
                match event {
                    GenEvent::Token { .. } => {
                        let now = Instant::now();
                        first.get_or_insert(now);
                        last = Some(now);
                    }
                    GenEvent::ToolCalls { .. } => {}
                    GenEvent::Finished { usage, error, .. } => {
                        if let Some(e) = error {
                            bail!("direct generation failed: {e}");
                        }
                        let r = stream_result(sent, first, last, usage.completion_tokens)?;
                        return Ok((r, last.unwrap_or(sent)));
                    }
                }
            }
            bail!("the direct generation ended without a result")
        }));
    }
    let mut streams = Vec::new();
    for t in tasks {
        streams.push(t.await??);
    }
    Ok(aggregate(streams, t0))
}

/// Arrival instants at a plain NATS subscriber: token chunks by (job id, seq), and the `scheduled` and
/// `accepted` status events by job id.
#[derive(Default)]
struct Arrivals {
    chunks: HashMap<(String, u64), Instant>,
    scheduled: HashMap<String, Instant>,
    accepted: HashMap<String, Instant>,
}

/// Where the time to first token of one stream through the queen goes, ms.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct TtftSplit {
    /// Request sent → the queen's `scheduled` status on the bus (HTTP, validation, placement).
    pub to_scheduled: f64,
    /// `scheduled` → the worker's `accepted` status (NATS assignment, worker validates, tokenizes).
    pub to_accepted: f64,
    /// `accepted` → the first token chunk on the bus (prefill and the first decode step).
    pub to_first_chunk: f64,
    /// First chunk on the bus → first SSE event read by the client (the queen relay).
    pub to_client: f64,
}

/// One run through the queen.
pub struct QueenRun {
    /// Its figures.
    pub result: RunResult,
    /// Per chunk, SSE read − direct NATS read, µs (only when watched).
    pub hops: Vec<f64>,
    /// Per stream, where the time to first token went (only when watched).
    pub splits: Vec<TtftSplit>,
}

/// `c` concurrent streaming chat completions of [`PROMPT`] through the queen. When `watch` is given, a
/// plain NATS subscriber also records every token chunk and job status, for the queen hop and the TTFT
/// split.
pub async fn queen_run(
    api: &Api,
    model: &str,
    c: usize,
    max_tokens: u32,
    watch: Option<&Bus>,
) -> anyhow::Result<QueenRun> {
    queen_run_prompts(api, model, &vec![PROMPT.to_owned(); c], max_tokens, watch).await
}

/// One concurrent streaming chat completion per prompt, through any OpenAI-style server at `api`
/// (the queen, or llama-server as the baseline).
pub async fn queen_run_prompts(
    api: &Api,
    model: &str,
    prompts: &[String],
    max_tokens: u32,
    watch: Option<&Bus>,
) -> anyhow::Result<QueenRun> {
    let arrivals: Arc<Mutex<Arrivals>> = Arc::default();
    let stop = CancellationToken::new();
    if let Some(bus) = watch {
        let tokens = bus.client().subscribe(rbee_bus::subject::JOB_TOKENS_ALL).await?;
        let statuses = bus.client().subscribe(rbee_bus::subject::JOB_STATUS_ALL).await?;
        bus.round_trip().await?;
        let mut merged = futures::stream::select(tokens, statuses);
        let (arrivals, stop) = (arrivals.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => return,
                    msg = merged.next() => match msg { Some(m) => m, None => return },
                };
                let at = Instant::now();
                let mut a = arrivals.lock().unwrap_or_else(PoisonError::into_inner);
                if let Ok(chunk) = serde_json::from_slice::<TokenChunk>(&msg.payload) {
                    a.chunks.insert((chunk.job_id.to_string(), chunk.seq), at);
                } else if let Ok(status) = serde_json::from_slice::<JobStatus>(&msg.payload) {
                    let job = status.job_id.to_string();
                    match status.state {
                        JobState::Scheduled { .. } => {
                            a.scheduled.entry(job).or_insert(at);
                        }
                        JobState::Accepted { .. } => {
                            a.accepted.entry(job).or_insert(at);
                        }
                        _ => {}
                    }
                }
            }
        });
    }
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for prompt in prompts {
        let body = json!({
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "stream": true,
            "stream_options": {"include_usage": true},
            "temperature": 0.0,
            "max_tokens": max_tokens,
        });
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let resp = api.stream_chat(&body, Duration::from_secs(300)).await?;
            let mut chunks: Vec<Instant> = Vec::new();
            let mut job = String::new();
            let mut tokens = None;
            sse::read(resp, |ev| {
                let Ok(v) = serde_json::from_str::<Value>(&ev.data) else { return };
                if job.is_empty() {
                    if let Some(id) = v.get("id").and_then(Value::as_str) {
                        job = id.trim_start_matches("chatcmpl-").to_owned();
                    }
                }
                if v.pointer("/choices/0/delta/content").is_some() {
                    chunks.push(ev.at);
                }
                if let Some(n) = v.pointer("/usage/completion_tokens").and_then(Value::as_u64) {
                    tokens = Some(u32::try_from(n).unwrap_or(u32::MAX));
                }
            })
            .await?;
            let tokens = tokens.context("the stream ended without usage")?;
            let r = stream_result(sent, chunks.first().copied(), chunks.last().copied(), tokens)?;
            let last = chunks.last().copied().unwrap_or(sent);
            anyhow::Ok((r, last, job, sent, chunks))
        }));
    }
    let mut streams = Vec::new();
    let mut per_job = Vec::new();
    for t in tasks {
        let (r, last, job, sent, chunks) = t.await??;
        streams.push((r, last));
        per_job.push((job, sent, chunks));
    }
    // Let the direct subscriber see the last chunks (it normally has them long before the SSE).
    tokio::time::sleep(Duration::from_millis(20)).await;
    stop.cancel();
    let signed_us = |later: Instant, earlier: Instant| match later.checked_duration_since(earlier) {
        Some(d) => crate::stats::us(d),
        None => -crate::stats::us(earlier.saturating_duration_since(later)),
    };
    let mut hops = Vec::new();
    let mut splits = Vec::new();
    if watch.is_some() {
        let a = arrivals.lock().unwrap_or_else(PoisonError::into_inner);
        for (job, sent, chunks) in &per_job {
            for (seq, sse_at) in chunks.iter().enumerate() {
                if let Some(nats_at) = a.chunks.get(&(job.clone(), seq as u64)) {
                    hops.push(signed_us(*sse_at, *nats_at));
                }
            }
            let first_nats = a.chunks.get(&(job.clone(), 0));
            if let (Some(sch), Some(acc), Some(first), Some(sse)) =
                (a.scheduled.get(job), a.accepted.get(job), first_nats, chunks.first())
            {
                splits.push(TtftSplit {
                    to_scheduled: signed_us(*sch, *sent) / 1e3,
                    to_accepted: signed_us(*acc, *sch) / 1e3,
                    to_first_chunk: signed_us(*first, *acc) / 1e3,
                    to_client: signed_us(*sse, *first) / 1e3,
                });
            }
        }
    }
    Ok(QueenRun { result: aggregate(streams, t0), hops, splits })
}
