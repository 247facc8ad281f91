//! The engine on the real model (SmolLM2-135M-Instruct, Q4_1). Skipped, with a message, when the
//! model file is absent. Tests take a shared lock so that only one engine decodes at a time on
//! small machines (timing assertions stay meaningful).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rbee_bus::{ChatMessage, FinishReason, Prompt, SamplingParams, Usage};
use rbee_worker::engine::{
    Engine, EngineConfig, EngineError, GenEvent, Generation, GenerationRequest, SubmitError,
};
use tokio_util::sync::CancellationToken;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const QUESTION: &str = "What is the capital of France? Answer in one sentence.";

fn model_path() -> Option<PathBuf> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.rbee/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("skipping: model not found at {} (see shared/CONTEXT.md to fetch it)", path.display());
        None
    }
}

async fn load(slots: usize, ctx_per_slot: u32) -> Option<Engine> {
    load_with(slots, ctx_per_slot, true).await
}

async fn load_with(slots: usize, ctx_per_slot: u32, prefix_reuse: bool) -> Option<Engine> {
    let model_path = model_path()?;
    let config = EngineConfig {
        model_path,
        threads: None,
        slots,
        ctx_per_slot,
        gpu_layers: 0,
        prefix_reuse,
        prefix_cache_bytes: 64 << 20,
        rpc_servers: Vec::new(),
    };
    let engine = tokio::task::spawn_blocking(move || Engine::load(config))
        .await
        .expect("load task")
        .expect("engine loads");
    Some(engine)
}

fn chat(text: &str) -> Prompt {
    Prompt::chat(vec![ChatMessage::new("user", text)])
}

fn greedy(max_tokens: u32) -> SamplingParams {
    SamplingParams { temperature: 0.0, max_tokens, ..SamplingParams::default() }
}

fn request(prompt: Prompt, params: SamplingParams) -> GenerationRequest {
    GenerationRequest { prompt, params, cancel: CancellationToken::new(), deadline: None, resume: None }
}

/// Everything one generation produced.
#[derive(Debug)]
struct Done {
    text: String,
    reason: FinishReason,
    usage: Usage,
    error: Option<String>,
    first_token_at: Option<Instant>,
    finished_at: Instant,
}

async fn collect(mut generation: Generation) -> Done {
    let mut text = String::new();
    let mut first_token_at = None;
    let deadline = Duration::from_secs(120);
    loop {
        let event = tokio::time::timeout(deadline, generation.events.recv())
            .await
            .expect("an event within 120 s")
            .expect("the stream ends with Finished");
        match event {
            GenEvent::Token { text: piece, .. } => {
                first_token_at.get_or_insert_with(Instant::now);
                text.push_str(&piece);
            }
            GenEvent::ToolCalls { .. } => {}
            GenEvent::Finished { reason, usage, error } => {
                return Done { text, reason, usage, error, first_token_at, finished_at: Instant::now() };
            }
        }
    }
}

#[tokio::test]
async fn chat_answers_paris() {
    let _serial = SERIAL.lock().await;
    let Some(engine) = load(1, 512).await else { return };
    assert!(engine.facts().has_chat_template);
    eprintln!("facts: {:?}, ctx per slot {}", engine.facts(), engine.ctx_per_slot());
    let generation = engine.submit(request(chat(QUESTION), greedy(48))).expect("submit");
    assert!(generation.prompt_tokens > 10);
    let done = collect(generation).await;
    eprintln!("answer: {:?} usage: {:?}", done.text, done.usage);
    assert!(done.text.contains("Paris"), "{:?}", done.text);
    assert_eq!(done.reason, FinishReason::Stop);
    assert_eq!(done.error, None);
    assert!(done.usage.completion_tokens > 0);
    assert!(done.usage.time_to_first_token_ms.is_some());
    assert!(done.usage.decode_tokens_per_second.is_some_and(|r| r > 0.0));
    assert!(engine.tokens_per_second() > 0.0);
    assert_eq!(engine.slots_busy(), 0);
}

#[tokio::test]
async fn text_prompt_generates() {
    let _serial = SERIAL.lock().await;
    let Some(engine) = load(1, 256).await else { return };
    let prompt = Prompt::Text { text: "The capital of France is".into() };
    let done = collect(engine.submit(request(prompt, greedy(8))).expect("submit")).await;
    eprintln!("completion: {:?}", done.text);
    assert!(!done.text.is_empty());
    assert!(matches!(done.reason, FinishReason::Stop | FinishReason::Length));
}

#[tokio::test]
async fn same_seed_gives_same_text() {
    let _serial = SERIAL.lock().await;
    let Some(engine) = load(1, 512).await else { return };
    let params =
        SamplingParams { temperature: 0.8, seed: Some(1234), max_tokens: 32, ..SamplingParams::default() };
    let prompt = chat("Write one sentence about the sea.");
    let a = collect(engine.submit(request(prompt.clone(), params.clone())).expect("submit")).await;
    let b = collect(engine.submit(request(prompt, params)).expect("submit")).await;
    eprintln!("seeded: {:?}", a.text);
    assert!(!a.text.is_empty());
    assert_eq!(a.text, b.text);
}

#[tokio::test]
async fn stop_sequence_is_never_emitted() {
    let _serial = SERIAL.lock().await;
    let Some(engine) = load(1, 512).await else { return };
    for stop in [" Paris", "capital"] {
        let params = SamplingParams { stop: vec![stop.into()], ..greedy(48) };
        let done = collect(engine.submit(request(chat(QUESTION), params)).expect("submit")).await;
        eprintln!("stop {stop:?}: {:?}", done.text);
        assert!(!done.text.contains(stop), "{:?}", done.text);
        assert_eq!(done.reason, FinishReason::Stop);
    }
}

#[tokio::test]
async fn cancel_ends_a_long_generation() {
    let _serial = SERIAL.lock().await;
    let Some(engine) = load(1, 4096).await else { return };
    let params =
        SamplingParams { temperature: 0.8, seed: Some(7), max_tokens: 2000, ..SamplingParams::default() };
    let req = request(chat("Write a very long story about a dragon."), params);
    let cancel = req.cancel.clone();
    let mut generation = engine.submit(req).expect("submit");
    assert_eq!(engine.slots_busy(), 1);
    let mut tokens = 0;
    while tokens < 5 {
        match generation.events.recv().await {
            Some(GenEvent::Token { .. }) => tokens += 1,
            other => panic!("ended before 5 tokens: {other:?}"),
        }
    }
    let cancelled_at = Instant::now();
    cancel.cancel();
    let done = collect(generation).await;
    eprintln!("cancel took {:?}", done.finished_at - cancelled_at);
    assert_eq!(done.reason, FinishReason::Cancelled);
    assert!(done.usage.completion_tokens < 2000);
    assert!(done.finished_at - cancelled_at < Duration::from_secs(2));
    assert_eq!(engine.slots_busy(), 0);
}

#[tokio::test]
async fn deadline_cancels() {
    let _serial = SERIAL.lock().await;
    let Some(engine) = load(1, 4096).await else { return };
    let params = SamplingParams { max_tokens: 2000, ..SamplingParams::default() };
    let mut req = request(chat("Write a very long story about a dragon."), params);
    req.deadline = Some(Instant::now() + Duration::from_millis(300));
    let done = collect(engine.submit(req).expect("submit")).await;
    assert_eq!(done.reason, FinishReason::Cancelled);
    assert_eq!(engine.slots_busy(), 0);
}

async fn run_concurrently(engine: &Engine, n: usize) {
    let prompts = ["Write a poem about the sea.", "Describe a cat in detail.", "Explain how rain forms."];
    let mut tasks = Vec::new();
    for prompt in prompts.iter().take(n) {
        let generation = engine.submit(request(chat(prompt), greedy(24))).expect("submit");
        tasks.push(tokio::spawn(collect(generation)));
    }
    assert_eq!(engine.slots_busy(), n);
    let mut done = Vec::new();
    for task in tasks {
        done.push(task.await.expect("collect task"));
    }
    for d in &done {
        assert_ne!(d.reason, FinishReason::Error, "{:?}", d.error);
        assert!(!d.text.is_empty());
    }
    let last_first_token = done.iter().map(|d| d.first_token_at.expect("a token")).max().expect("jobs");
    let first_finish = done.iter().map(|d| d.finished_at).min().expect("jobs");
    assert!(last_first_token < first_finish, "all {n} jobs must stream before any finishes");
    eprintln!(
        "{n} concurrent: {:?}, engine rate {:.1} tok/s",
        done.iter()
            .map(|d| (d.usage.completion_tokens, d.usage.decode_tokens_per_second))
            .collect::<Vec<_>>(),
        engine.tokens_per_second()
    );
    assert_eq!(engine.slots_busy(), 0);
}

#[tokio::test]
async fn jobs_decode_together() {
    let _serial = SERIAL.lock().await;
    let Some(engine) = load(3, 512).await else { return };
    run_concurrently(&engine, 2).await;
    run_concurrently(&engine, 3).await;
}

/// Jobs an idle engine is told are on their way in (`Engine::arriving`, as the worker marks each
/// assignment it takes off the bus) share their first step: every job's first token comes out of it,
/// before any job's second. A job that missed it would read its prompt in the second step, alongside
/// the first job's second token (sampled first, in admission order).
#[tokio::test]
async fn jobs_arriving_together_share_the_first_step() {
    use futures::StreamExt;
    let _serial = SERIAL.lock().await;
    let Some(engine) = load(3, 512).await else { return };
    let prompts = ["Write a poem about the sea.", "Describe a cat in detail.", "Explain how rain forms."];
    for round in 0..3 {
        let mut arriving: Vec<_> = prompts.iter().map(|_| engine.arriving()).collect();
        let mut streams = Vec::new();
        for (i, prompt) in prompts.iter().enumerate() {
            let text = format!("{prompt} (round {round})");
            let generation = engine.submit(request(chat(&text), greedy(6))).expect("submit");
            drop(arriving.pop());
            let events = futures::stream::unfold(generation.events, |mut rx| async move {
                rx.recv().await.map(|event| (event, rx))
            });
            streams.push(events.map(move |e| (i, e)).boxed());
        }
        let mut events = futures::stream::select_all(streams);
        let mut tokens = [0usize; 3];
        let mut order = Vec::new();
        while let Some((i, event)) = events.next().await {
            if let GenEvent::Token { token_ids, .. } = event {
                tokens[i] += token_ids.len();
                order.push((i, tokens[i]));
            }
        }
        let firsts_before = order.iter().position(|&(_, n)| n >= 2).unwrap_or(order.len());
        let mut started: Vec<usize> = order[..firsts_before].iter().map(|&(i, _)| i).collect();
        started.sort_unstable();
        started.dedup();
        assert_eq!(started, vec![0, 1, 2], "round {round}: token events in order {order:?}");
    }
}

#[tokio::test]
async fn long_prompt_does_not_hold_up_a_short_one() {
    let _serial = SERIAL.lock().await;
    let Some(engine) = load(2, 1024).await else { return };
    let long = Prompt::Text { text: "The quick brown fox jumps over the lazy dog. ".repeat(70) };
    let long = engine.submit(request(long, greedy(4))).expect("submit long");
    assert!(long.prompt_tokens > 600, "{}", long.prompt_tokens);
    let short = engine.submit(request(chat(QUESTION), greedy(4))).expect("submit short");
    let long = tokio::spawn(collect(long));
    let short = collect(short).await;
    let long = long.await.expect("collect task");
    let (short_first, long_first) =
        (short.first_token_at.expect("token"), long.first_token_at.expect("token"));
    eprintln!(
        "ttft short {:?} ms, long {:?} ms",
        short.usage.time_to_first_token_ms, long.usage.time_to_first_token_ms
    );
    assert!(short_first < long_first, "the short prompt must not wait for the long prefill");
}

#[tokio::test]
async fn job_beyond_free_slots_is_refused() {
    let _serial = SERIAL.lock().await;
    let Some(engine) = load(1, 512).await else { return };
    let req = request(chat(QUESTION), greedy(64));
    let cancel = req.cancel.clone();
    let generation = engine.submit(req).expect("submit");
    let refused = engine.submit(request(chat(QUESTION), greedy(8))).expect_err("no free slot");
    assert!(matches!(refused, SubmitError::NoFreeSlot { total: 1 }), "{refused:?}");
    cancel.cancel();
    collect(generation).await;
    assert_eq!(engine.slots_busy(), 0);
    // The slot is usable again.
    collect(engine.submit(request(chat(QUESTION), greedy(4))).expect("submit after release")).await;
}

#[tokio::test]
async fn prompt_longer_than_context_is_refused() {
    let _serial = SERIAL.lock().await;
    let Some(engine) = load(1, 64).await else { return };
    let prompt = Prompt::Text { text: "hello ".repeat(200) };
    match engine.submit(request(prompt, greedy(4))) {
        Err(SubmitError::PromptTooLong { prompt_tokens, max }) => {
            assert_eq!(max, 63);
            assert!(prompt_tokens > 63);
        }
        other => panic!("expected PromptTooLong, got {other:?}"),
    }
    assert_eq!(engine.slots_busy(), 0);
}

#[tokio::test]
async fn context_full_ends_with_length() {
    let _serial = SERIAL.lock().await;
    let Some(engine) = load(1, 48).await else { return };
    let generation = engine.submit(request(chat("Write a long story."), greedy(1000))).expect("submit");
    let prompt_tokens = generation.prompt_tokens;
    let done = collect(generation).await;
    assert_eq!(done.reason, FinishReason::Length);
    assert!(done.usage.completion_tokens <= 48 - prompt_tokens + 1);
}

#[tokio::test]
async fn invalid_temperature_is_refused() {
    let _serial = SERIAL.lock().await;
    let Some(engine) = load(1, 128).await else { return };
    let params = SamplingParams { temperature: 3.0, ..SamplingParams::default() };
    match engine.submit(request(chat(QUESTION), params)) {
        Err(SubmitError::InvalidParams(e)) => {
            assert_eq!(e.field, "temperature");
            assert!(e.to_string().contains("temperature"));
        }
        other => panic!("expected InvalidParams, got {other:?}"),
    }
}

#[tokio::test]
async fn shutdown_cancels_running_jobs() {
    let _serial = SERIAL.lock().await;
    let Some(engine) = load(2, 512).await else { return };
    let mut generation = engine.submit(request(chat(QUESTION), greedy(400))).expect("submit");
    let _ = generation.events.recv().await;
    let handle = engine.clone();
    tokio::task::spawn_blocking(move || handle.shutdown()).await.expect("shutdown task");
    let done = collect(generation).await;
    assert_eq!(done.reason, FinishReason::Cancelled);
    assert!(matches!(engine.submit(request(chat(QUESTION), greedy(4))), Err(SubmitError::ShutDown)));
}

#[test]
fn load_errors_are_clear() {
    let missing = EngineConfig {
        model_path: "/nonexistent/model.gguf".into(),
        threads: Some(1),
        slots: 1,
        ctx_per_slot: 128,
        gpu_layers: 0,
        prefix_reuse: true,
        prefix_cache_bytes: 0,
        rpc_servers: Vec::new(),
    };
    let err = Engine::load(missing.clone()).expect_err("missing file");
    assert!(matches!(err, EngineError::ModelNotFound { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/model.gguf"));

    let dir = tempfile::tempdir().expect("tempdir");
    let fake = dir.path().join("fake.gguf");
    std::fs::write(&fake, b"not a model at all").expect("write");
    let err = Engine::load(EngineConfig { model_path: fake, ..missing.clone() }).expect_err("not gguf");
    assert!(matches!(err, EngineError::NotGguf { .. }), "{err}");

    let err = Engine::load(EngineConfig { slots: 0, ..missing }).expect_err("zero slots");
    assert!(matches!(err, EngineError::InvalidConfig(_)), "{err}");
}

/// Plumbing on the tiny random-weight GGUF from `rbee-testkit` (runs without the real model): slots
/// decoding together stay independent, and a released slot's KV cache is really cleared.
#[tokio::test]
async fn tiny_model_slots_are_isolated_and_reusable() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let model_path = rbee_testkit::gguf::tiny_llama_in(dir.path()).expect("tiny gguf");
    let config = EngineConfig {
        model_path,
        threads: Some(1),
        slots: 2,
        ctx_per_slot: 64,
        gpu_layers: 0,
        prefix_reuse: true,
        prefix_cache_bytes: 0,
        rpc_servers: Vec::new(),
    };
    let engine =
        tokio::task::spawn_blocking(move || Engine::load(config)).await.expect("task").expect("load");
    let run_pair = || async {
        let a = engine.submit(request(chat("hi there"), greedy(10))).expect("submit a");
        let b = engine.submit(request(chat("hi there"), greedy(10))).expect("submit b");
        (collect(a).await, collect(b).await)
    };
    let (a, b) = run_pair().await;
    assert_eq!(a.reason, FinishReason::Length);
    assert_eq!(a.usage.completion_tokens, 10);
    assert_eq!(a.text, b.text, "two slots decoding the same prompt together must agree");
    let (c, _) = run_pair().await;
    assert_eq!(a.text, c.text, "a reused slot must start from an empty kv cache");
    assert_eq!(engine.slots_busy(), 0);
}

/// A model whose memory cannot be cut after a prefix (Mamba, a recurrent state per sequence; the tiny
/// random-weight one from `rbee-testkit` stands in for a real one): prefix reuse is off even when asked
/// for, every job reads its whole prompt, nothing is advertised or saved, and a slot's state is really
/// cleared between jobs (the same greedy text each time, as on a fresh engine).
#[tokio::test]
async fn a_recurrent_model_falls_back_to_reading_the_whole_prompt() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let model_path = rbee_testkit::gguf::tiny_mamba_in(dir.path()).expect("tiny mamba gguf");
    let config = |model_path| EngineConfig {
        model_path,
        threads: Some(1),
        slots: 1,
        ctx_per_slot: 128,
        gpu_layers: 0,
        prefix_reuse: true,
        prefix_cache_bytes: 1 << 20,
        rpc_servers: Vec::new(),
    };
    let load = |config: EngineConfig| async move {
        tokio::task::spawn_blocking(move || Engine::load(config)).await.expect("task").expect("load mamba")
    };
    let engine = load(config(model_path.clone())).await;
    let turn1 = vec![message("user", "hello world")];
    let first =
        collect(engine.submit(request(Prompt::chat(turn1.clone()), greedy(8))).expect("submit")).await;
    assert_eq!(first.usage.completion_tokens, 8, "{:?}", first.reason);
    assert!(engine.prefix_fingerprints().is_empty(), "a recurrent model must not advertise prefixes");
    assert_eq!(engine.prefix_cache_usage().0, 0, "nothing is saved for a model that cannot be cut");

    // The next turn extends the first: with reuse it would skip the history; here it reads it all.
    let mut turn2 = turn1.clone();
    turn2.push(message("assistant", &first.text));
    turn2.push(message("user", "and again"));
    let second =
        collect(engine.submit(request(Prompt::chat(turn2.clone()), greedy(8))).expect("submit")).await;
    assert_eq!(second.usage.cached_tokens, 0, "{:?}", second.usage);
    assert!(second.usage.prompt_tokens > first.usage.prompt_tokens);
    let again = collect(engine.submit(request(Prompt::chat(turn1), greedy(8))).expect("submit")).await;
    assert_eq!(again.usage.cached_tokens, 0);
    assert_eq!(again.text, first.text, "the slot's recurrent state was not cleared between jobs");
    drop(engine);

    let fresh = load(config(model_path)).await;
    let alone = collect(fresh.submit(request(Prompt::chat(turn2), greedy(8))).expect("submit")).await;
    assert_eq!(alone.text, second.text, "turn 2 differs from the same turn on a fresh engine");
}

fn message(role: &str, content: &str) -> ChatMessage {
    ChatMessage::new(role, content)
}

const SYSTEM: &str = "You are a concise geography tutor. Answer every question in one short sentence, \
    name the country and the continent, and never add a greeting or a follow-up question.";

#[tokio::test]
async fn later_chat_turns_reuse_the_slot_and_greedy_text_is_unchanged() {
    let _serial = SERIAL.lock().await;
    let Some(engine) = load(2, 1024).await else { return };
    let turn1 = vec![message("system", SYSTEM), message("user", QUESTION)];
    let first =
        collect(engine.submit(request(Prompt::chat(turn1.clone()), greedy(24))).expect("submit")).await;
    assert_eq!(first.usage.cached_tokens, 0, "a fresh engine holds nothing");

    // The next turn resends the history, as chat clients do: only the new part is decoded.
    let mut turn2 = turn1.clone();
    turn2.push(message("assistant", &first.text));
    turn2.push(message("user", "And the capital of Italy?"));
    let second =
        collect(engine.submit(request(Prompt::chat(turn2.clone()), greedy(24))).expect("submit")).await;
    eprintln!("turn 1 {:?}\nturn 2 {:?} {:?}", first.usage, second.text, second.usage);
    assert!(
        second.usage.cached_tokens >= first.usage.prompt_tokens,
        "turn 2 reused {} tokens; turn 1's prompt alone was {}",
        second.usage.cached_tokens,
        first.usage.prompt_tokens
    );
    assert!(second.usage.cached_tokens < second.usage.prompt_tokens);

    // Another conversation meanwhile takes the other slot and leaves this one warm.
    let other =
        collect(engine.submit(request(chat("Name a large river in Africa."), greedy(16))).expect("submit"))
            .await;
    assert_eq!(other.usage.cached_tokens, 0, "{:?}", other.usage);

    // The same turn again: all but the last prompt token come from the cache, same greedy text.
    let again =
        collect(engine.submit(request(Prompt::chat(turn2.clone()), greedy(24))).expect("submit")).await;
    assert_eq!(again.usage.cached_tokens, again.usage.prompt_tokens - 1, "{:?}", again.usage);
    assert_eq!(again.text, second.text);

    // A cancelled job leaves only what it really decoded; the next one trusts no more than that.
    let long = request(Prompt::chat(turn2.clone()), greedy(400));
    let cancel = long.cancel.clone();
    let mut generation = engine.submit(long).expect("submit");
    match generation.events.recv().await {
        Some(GenEvent::Token { .. }) => cancel.cancel(),
        other => panic!("expected a token first, got {other:?}"),
    }
    assert_eq!(collect(generation).await.reason, FinishReason::Cancelled);
    let after =
        collect(engine.submit(request(Prompt::chat(turn2.clone()), greedy(24))).expect("submit")).await;
    assert_eq!(after.text, second.text);
    drop(engine);

    // Reuse off: the same turn decodes its whole prompt and says the same.
    let Some(plain) = load_with(2, 1024, false).await else { return };
    let _ = collect(plain.submit(request(Prompt::chat(turn1), greedy(24))).expect("submit")).await;
    let fresh = collect(plain.submit(request(Prompt::chat(turn2), greedy(24))).expect("submit")).await;
    assert_eq!(fresh.usage.cached_tokens, 0);
    assert_eq!(fresh.text, second.text, "greedy text with reuse differs from the text without it");
}

/// Waits (at most 5 s) until the engine's RAM store holds `n` states, and fails if it does not.
async fn saved_states_reach(engine: &Engine, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while engine.prefix_cache_usage().1 != n {
        assert!(Instant::now() < deadline, "saved states {:?}, expected {n}", engine.prefix_cache_usage());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_evicted_conversation_comes_back_from_host_ram() {
    let _serial = SERIAL.lock().await;
    // One slot: every other conversation takes it away.
    let Some(engine) = load(1, 1024).await else { return };
    let a1 = vec![message("system", SYSTEM), message("user", QUESTION)];
    let first = collect(engine.submit(request(Prompt::chat(a1.clone()), greedy(24))).expect("submit")).await;
    // The idle worker saves the finished conversation's state to host RAM, before anything evicts it.
    saved_states_reach(&engine, 1).await;

    // Another conversation takes the slot; it shares at most the chat template's opening with A.
    let b = vec![message("user", "Name a large river in Africa, and the sea it reaches.")];
    let other = collect(engine.submit(request(Prompt::chat(b), greedy(16))).expect("submit")).await;
    assert!(other.usage.cached_tokens < 8, "B kept {} of A's tokens", other.usage.cached_tokens);
    assert!(engine.prefix_cache_usage().0 > 0);
    saved_states_reach(&engine, 2).await;

    // A's next turn: the one slot holds B, so only a restore from host RAM gives it turn 1 back.
    let mut a2 = a1.clone();
    a2.push(message("assistant", &first.text));
    a2.push(message("user", "And the capital of Italy?"));
    let second = collect(engine.submit(request(Prompt::chat(a2.clone()), greedy(24))).expect("submit")).await;
    eprintln!("restored turn: {:?} {:?}, cache {:?}", second.text, second.usage, engine.prefix_cache_usage());
    assert!(
        second.usage.cached_tokens >= first.usage.prompt_tokens,
        "restored {} tokens; turn 1's prompt was {}",
        second.usage.cached_tokens,
        first.usage.prompt_tokens
    );
    // B and A's longer state (turn 1's was taken out, or replaced by it).
    saved_states_reach(&engine, 2).await;
    drop(engine);

    // The same as with no cache at all.
    let Some(plain) = load_with(1, 1024, false).await else { return };
    let fresh = collect(plain.submit(request(Prompt::chat(a2), greedy(24))).expect("submit")).await;
    assert_eq!(fresh.text, second.text, "greedy text after a restore differs from the text without reuse");
}

#[tokio::test]
async fn two_conversations_sharing_a_system_prompt_keep_their_histories() {
    let _serial = SERIAL.lock().await;
    let Some(engine) = load(2, 1024).await else { return };
    let a1 = vec![message("system", SYSTEM), message("user", QUESTION)];
    let b1 = vec![
        message("system", SYSTEM),
        message("user", "What is the capital of Japan? Answer in one sentence."),
    ];
    let a_first =
        collect(engine.submit(request(Prompt::chat(a1.clone()), greedy(24))).expect("submit")).await;
    // B shares A's system prompt: it takes A's slot for it, and A's history goes to RAM first.
    let b_first =
        collect(engine.submit(request(Prompt::chat(b1.clone()), greedy(24))).expect("submit")).await;
    assert!(b_first.usage.cached_tokens > 0, "B should reuse the shared system prompt: {:?}", b_first.usage);
    for (history, first) in [(a1, &a_first), (b1, &b_first)] {
        let mut next = history.clone();
        next.push(message("assistant", &first.text));
        next.push(message("user", "And which river flows through it?"));
        let done = collect(engine.submit(request(Prompt::chat(next), greedy(16))).expect("submit")).await;
        assert!(
            done.usage.cached_tokens >= first.usage.prompt_tokens,
            "a later turn reused {} tokens; its first turn's prompt was {}",
            done.usage.cached_tokens,
            first.usage.prompt_tokens
        );
    }
}

#[tokio::test]
async fn a_job_copies_the_prompt_a_running_slot_has_read_and_greedy_text_is_unchanged() {
    let _serial = SERIAL.lock().await;
    // A prompt whose answer runs long, so that the first job is still running when the second starts.
    let prompt = Prompt::chat(vec![
        message("system", SYSTEM),
        message("user", "Write a long story about a lighthouse keeper."),
    ]);
    // The text the copy must reproduce, from an engine that reuses nothing.
    let Some(plain) = load_with(1, 1024, false).await else { return };
    let alone = collect(plain.submit(request(prompt.clone(), greedy(24))).expect("submit")).await;
    plain.shutdown();
    // A fresh engine holds nothing, in its slots or in RAM: once the first job has read its prompt (its
    // first token is out), a second with the same prompt can only get it from the running slot.
    let Some(engine) = load(2, 1024).await else { return };
    let mut first = engine.submit(request(prompt.clone(), greedy(300))).expect("submit");
    let mut head = String::new();
    loop {
        match first.events.recv().await.expect("event") {
            GenEvent::Token { text, .. } => {
                head.push_str(&text);
                break;
            }
            GenEvent::ToolCalls { .. } => {}
            GenEvent::Finished { .. } => panic!("the first job ended before a token"),
        }
    }
    let second = collect(engine.submit(request(prompt.clone(), greedy(24))).expect("submit")).await;
    eprintln!("alone {:?} {:?}\nsecond {:?} {:?}", alone.text, alone.usage, second.text, second.usage);
    assert_eq!(second.usage.cached_tokens, second.usage.prompt_tokens - 1, "{:?}", second.usage);
    assert_eq!(second.text, alone.text, "the copied cells give the same greedy text");
    let rest = collect(first).await;
    assert!(rest.usage.completion_tokens > 24, "the first job ran beside the second: {:?}", rest.usage);
    assert!(format!("{head}{}", rest.text).starts_with(&alone.text), "the source job is unharmed");
    engine.shutdown();
}

/// The events of one generation, kept as they came (text and token ids per piece).
async fn pieces(mut generation: Generation) -> (Vec<(String, Vec<u32>)>, Usage) {
    let mut out = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(120), generation.events.recv())
            .await
            .expect("an event within 120 s")
            .expect("the stream ends with Finished");
        match event {
            GenEvent::Token { text, token_ids, .. } => out.push((text, token_ids)),
            GenEvent::ToolCalls { .. } => {}
            GenEvent::Finished { usage, .. } => return (out, usage),
        }
    }
}

/// A job moved mid-stream (what the queen does when a worker is lost): another engine given the text
/// and token ids streamed so far goes on from there, and at temperature 0 the whole reply equals the
/// uninterrupted one, counted once; with the ids dropped (text only) it still goes on from the text.
#[tokio::test]
async fn a_resumed_job_goes_on_from_what_was_streamed() {
    let _serial = SERIAL.lock().await;
    let Some(engine) = load(2, 1024).await else { return };
    let prompt = chat("Write a short story about a dragon who learns to bake bread.");
    let stop = SamplingParams { stop: vec!["\n\n".into()], ..greedy(80) };
    let (whole, usage) = pieces(engine.submit(request(prompt.clone(), stop.clone())).expect("submit")).await;
    let full: String = whole.iter().map(|(t, _)| t.as_str()).collect();
    let ids: usize = whole.iter().map(|(_, ids)| ids.len()).sum();
    eprintln!("uninterrupted: {} pieces, {ids} ids, usage {usage:?}: {full:?}", whole.len());
    assert!(whole.len() > 20, "too short to cut: {full:?}");
    // Every released token's id came with its text; the tokens of the stop sequence never do.
    let held = usage.completion_tokens - ids as u32;
    assert!(held <= 4, "{ids} ids for {} tokens", usage.completion_tokens);
    for (cut, with_ids) in [(7, true), (whole.len() / 2, false)] {
        let before = &whole[..cut];
        let resume = rbee_bus::Resume {
            text: before.iter().map(|(t, _)| t.as_str()).collect(),
            token_ids: if with_ids {
                before.iter().flat_map(|(_, ids)| ids.clone()).collect()
            } else {
                vec![]
            },
            next_seq: cut as u64,
            completion_tokens: before.iter().map(|(_, ids)| ids.len() as u32).sum(),
        };
        let mut req = request(prompt.clone(), stop.clone());
        req.resume = Some(resume.clone());
        let generation = engine.submit(req).expect("resume accepted");
        let (rest, resumed_usage) = pieces(generation).await;
        let rest: String = rest.iter().map(|(t, _)| t.as_str()).collect();
        eprintln!("cut at piece {cut} (ids {with_ids}): usage {resumed_usage:?}");
        assert_eq!(
            format!("{}{rest}", resume.text),
            full,
            "resumed text differs (cut {cut}, ids {with_ids})"
        );
        assert_eq!(resumed_usage.prompt_tokens, usage.prompt_tokens, "the prompt is counted as before");
        assert_eq!(resumed_usage.completion_tokens, usage.completion_tokens, "tokens counted once");
    }
    // A job with a response format cannot be resumed: refused, not run unconstrained.
    let mut req = request(
        prompt,
        SamplingParams { response_format: rbee_bus::ResponseFormat::JsonObject, ..greedy(8) },
    );
    req.resume = Some(rbee_bus::Resume { text: "{".into(), ..Default::default() });
    assert!(matches!(engine.submit(req), Err(SubmitError::InvalidParams(_))));
}
