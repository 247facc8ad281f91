//! The inference engine: one GGUF model served by llama.cpp to several concurrent jobs.
//!
//! [`Engine::load`] loads the model and starts a dedicated OS thread that owns the llama context (one
//! context, `slots` sequences of `ctx_per_slot` tokens each) and runs the batch loop: like llama.cpp's
//! own server, every step decodes ONE batch holding a token of every generating job plus chunks of new
//! prompts, then samples each job from its own logits. [`Engine::submit`] is fast and non-blocking:
//! it validates, renders the prompt with the model's chat template, tokenizes, reserves a slot and
//! hands the job to the loop; tokens then arrive as [`GenEvent`]s, UTF-8-whole, with stop sequences
//! never emitted, ending with exactly one [`GenEvent::Finished`].
//!
//! A slot keeps its KV cells after a job; the next job takes the free slot holding the longest prefix
//! of its prompt and decodes only the rest ([`prefix`]), so a chat's later turns skip their history.
//!
//! The llama.cpp backend is process-wide (initialized once, kept for the life of the process); the
//! model is shared read-only between the loop thread and `submit` (tokenizing and template rendering
//! only read it). llama.cpp's own logs are forwarded to `tracing`.

mod arrivals;
mod batch_loop;
mod embed;
mod grammar;
mod load;
pub use load::{backend, default_threads};
mod logprobs;
mod meter;
mod output;
mod prefix;
mod prompt;
mod sampler;
mod slots;
mod stop;
mod tool_stream;
mod utf8;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use llama_cpp_2::model::LlamaModel;
use rbee_bus::{
    FinishReason, ParamError, Prompt, Resume, SamplingParams, TokenLogprob, ToolCallChunk, ToolChoice, Usage,
};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

pub use arrivals::Arriving;
pub use embed::{EmbedError, Embeddings};

use batch_loop::{Command, LoopSetup};
use embed::Embedder;
use grammar::ConstrainedSampler;
use meter::RateMeter;
use output::Output;
use prompt::ChatRenderer;
use slots::{Job, ReserveError, SlotTable};
use tool_stream::ToolStream;

/// Host RAM kept by default for the states of evicted prefixes, MiB (llama-server keeps up to 8 GiB; a
/// 1,000-token conversation of the default model takes about 23 MB).
pub const DEFAULT_PREFIX_CACHE_MIB: usize = 512;

/// How to load and serve a model.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The GGUF file.
    pub model_path: PathBuf,
    /// Threads for decoding and prompt processing; `None` = the number of physical cores.
    pub threads: Option<usize>,
    /// Jobs served at once (sequences in the context).
    pub slots: usize,
    /// Context (prompt + generated tokens) of each slot.
    pub ctx_per_slot: u32,
    /// Layers offloaded to the GPU; used only with the `cuda` feature.
    pub gpu_layers: u32,
    /// Keep each slot's KV cells after a job and let the next job skip the prompt prefix they hold
    /// ([`prefix`]); off for models whose memory cannot be cut (recurrent, hybrid).
    pub prefix_reuse: bool,
    /// Host RAM for the states of evicted prefixes (slots whose cells a later job discarded), in bytes;
    /// 0 keeps none.
    pub prefix_cache_bytes: usize,
    /// RPC servers (`HOST:PORT`) whose devices hold the model's layers, a split across hosts
    /// ([`crate::rpc`]); empty: this host alone.
    pub rpc_servers: Vec<String>,
}

/// What the GGUF says about the loaded model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFacts {
    /// Context length the model was trained with.
    pub n_ctx_train: u32,
    /// Number of parameters.
    pub n_params: u64,
    /// Size of all tensors, in bytes.
    pub size_bytes: u64,
    /// Name, architecture and size label from the GGUF metadata.
    pub description: String,
    /// Whether the GGUF carries a chat template (needed for [`Prompt::Chat`]).
    pub has_chat_template: bool,
    /// Tokens in the vocabulary.
    pub n_vocab: i32,
}

/// One generation to run.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// The input.
    pub prompt: Prompt,
    /// Sampling settings (validated by [`Engine::submit`]).
    pub params: SamplingParams,
    /// Cancelling it ends the generation with [`FinishReason::Cancelled`] within one decode step.
    pub cancel: CancellationToken,
    /// Past this instant the generation ends with [`FinishReason::Cancelled`].
    pub deadline: Option<Instant>,
    /// What earlier attempts on another worker generated: decoded after the prompt, counted as
    /// generated, and continued from. Refused for a job with tools or a grammar.
    pub resume: Option<Resume>,
}

/// An accepted generation: its prompt size and its event stream.
#[derive(Debug)]
pub struct Generation {
    /// Tokens in the rendered prompt.
    pub prompt_tokens: u32,
    /// Text pieces, then exactly one [`GenEvent::Finished`]. Dropping the receiver cancels the job.
    pub events: UnboundedReceiver<GenEvent>,
}

/// What a generation produces.
#[derive(Debug, Clone, PartialEq)]
pub enum GenEvent {
    /// Generated text (whole UTF-8 characters; one or more tokens, possibly held back briefly while it
    /// could be the start of a stop sequence).
    Token {
        /// The text.
        text: String,
        /// Per token of the text, when the job asked for log probabilities (tokens whose text was
        /// held back come with the text that releases them).
        logprobs: Vec<TokenLogprob>,
        /// The ids of the tokens this text releases (like `logprobs`, held-back tokens come with the
        /// text that releases them).
        token_ids: Vec<u32>,
    },
    /// Tool calls the reply completed (their text is never sent as [`GenEvent::Token`]).
    ToolCalls {
        /// The calls, in order.
        calls: Vec<ToolCallChunk>,
    },
    /// The end; nothing follows.
    Finished {
        /// Why it ended.
        reason: FinishReason,
        /// Counts and timings.
        usage: Usage,
        /// What went wrong, when `reason` is [`FinishReason::Error`].
        error: Option<String>,
    },
}

/// Why [`Engine::submit`] refused a job.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Every slot is busy.
    #[error("no free slot (all {total} busy)")]
    NoFreeSlot {
        /// Slots of this engine.
        total: usize,
    },
    /// The prompt does not fit in a slot's context (with room for one generated token).
    #[error("prompt of {prompt_tokens} tokens is longer than the {max} a slot allows")]
    PromptTooLong {
        /// Tokens in the rendered prompt.
        prompt_tokens: u32,
        /// Most prompt tokens accepted.
        max: u32,
    },
    /// A sampling parameter is out of range.
    #[error(transparent)]
    InvalidParams(#[from] ParamError),
    /// The chat could not be rendered.
    #[error("chat template: {0}")]
    Template(String),
    /// The prompt could not be tokenized.
    #[error("tokenize: {0}")]
    Tokenize(String),
    /// The engine is shut down.
    #[error("the engine is shut down")]
    ShutDown,
}

/// Why [`Engine::load`] failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No file at the path.
    #[error("model file not found: {path}")]
    ModelNotFound {
        /// The path given.
        path: PathBuf,
    },
    /// The file does not start with the GGUF magic bytes.
    #[error("not a gguf file: {path}")]
    NotGguf {
        /// The path given.
        path: PathBuf,
    },
    /// The file could not be read.
    #[error("cannot read model file {path}: {source}")]
    Io {
        /// The path given.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The configuration is unusable.
    #[error("invalid engine config: {0}")]
    InvalidConfig(String),
    /// The llama.cpp backend could not be initialized.
    #[error("llama.cpp backend: {0}")]
    Backend(String),
    /// llama.cpp refused the model.
    #[error("cannot load model {path}: {message}")]
    ModelLoad {
        /// The path given.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The RPC servers of a split could not be used.
    #[error("rpc: {0}")]
    Rpc(#[from] crate::rpc::RpcError),
    /// The context could not be created.
    #[error("cannot create the llama context: {0}")]
    Context(String),
    /// The loop thread could not be started.
    #[error("cannot start the engine thread: {0}")]
    Thread(std::io::Error),
}

/// State shared by the handle and the loop thread.
pub(crate) struct Shared {
    pub(crate) slots: SlotTable,
    pub(crate) arrivals: arrivals::Arrivals,
    meter: Mutex<RateMeter>,
}

impl Shared {
    pub(crate) fn meter(&self) -> MutexGuard<'_, RateMeter> {
        self.meter.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A loaded model serving generations. Cheap to clone; the last clone dropped shuts the engine down.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    facts: ModelFacts,
    model: Arc<LlamaModel>,
    renderer: ChatRenderer,
    shared: Arc<Shared>,
    tx: Sender<Command>,
    thread: Mutex<Option<JoinHandle<()>>>,
    shut_down: AtomicBool,
    /// Usable context per slot (what llama.cpp gave, at most the configured value).
    ctx_per_slot: u32,
    threads: i32,
    /// The embedding context, made at the first embedding request.
    embedder: Mutex<Option<Arc<Embedder>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.inner.facts.description)
            .field("slots_total", &self.slots_total())
            .field("slots_busy", &self.slots_busy())
            .field("ctx_per_slot", &self.inner.ctx_per_slot)
            .finish()
    }
}

impl Engine {
    /// Loads the model and starts the batch loop. Blocking (hundreds of ms to minutes): call it from
    /// `spawn_blocking` or a plain thread.
    pub fn load(config: EngineConfig) -> Result<Engine, EngineError> {
        let started = Instant::now();
        load::check_config(&config)?;
        load::check_model_file(&config.model_path)?;
        let backend = load::backend()?;
        let model = Arc::new(load::load_model(backend, &config)?);
        let facts = load::facts(&model);
        let renderer = ChatRenderer::for_model(&model);
        if config.ctx_per_slot > facts.n_ctx_train {
            tracing::warn!(
                ctx_per_slot = config.ctx_per_slot,
                n_ctx_train = facts.n_ctx_train,
                "context per slot exceeds the model's training context"
            );
        }
        let threads = config.threads.unwrap_or_else(load::default_threads);
        let truncatable = !model.is_recurrent() && !model.is_hybrid();
        if config.prefix_reuse && !truncatable {
            tracing::warn!(
                "recurrent or hybrid model: its memory cannot be cut after a prefix; prefix reuse is off"
            );
        }
        let reuse = config.prefix_reuse && truncatable;
        let shared = Arc::new(Shared {
            slots: SlotTable::new(config.slots, reuse, config.prefix_cache_bytes),
            arrivals: arrivals::Arrivals::default(),
            meter: Mutex::default(),
        });
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let setup = LoopSetup {
            backend,
            model: Arc::clone(&model),
            shared: Arc::clone(&shared),
            rx,
            slots: config.slots,
            ctx_per_slot: config.ctx_per_slot,
            threads: i32::try_from(threads).unwrap_or(i32::MAX),
            prefill_per_step: batch_loop::prefill_per_step(cfg!(feature = "cuda") && config.gpu_layers > 0),
        };
        let thread = std::thread::Builder::new()
            .name("rbee-engine".to_owned())
            .spawn(move || batch_loop::run(setup, ready_tx))
            .map_err(EngineError::Thread)?;
        let ctx_per_slot = match ready_rx.recv() {
            Ok(Ok(n)) => n,
            Ok(Err(message)) => return Err(EngineError::Context(message)),
            Err(_) => return Err(EngineError::Context("the engine thread ended during setup".to_owned())),
        };
        tracing::info!(
            model = %config.model_path.display(),
            description = %facts.description,
            slots = config.slots,
            ctx_per_slot,
            threads,
            load_ms = started.elapsed().as_secs_f64() * 1e3,
            "engine loaded"
        );
        Ok(Engine {
            inner: Arc::new(Inner {
                facts,
                model,
                renderer,
                shared,
                tx,
                thread: Mutex::new(Some(thread)),
                shut_down: AtomicBool::new(false),
                ctx_per_slot,
                threads: i32::try_from(threads).unwrap_or(i32::MAX),
                embedder: Mutex::new(None),
            }),
        })
    }

    /// What the GGUF says about the model.
    pub fn facts(&self) -> &ModelFacts {
        &self.inner.facts
    }

    /// Slots (jobs served at once).
    pub fn slots_total(&self) -> usize {
        self.inner.shared.slots.total()
    }

    /// Slots held by running jobs.
    pub fn slots_busy(&self) -> usize {
        self.inner.shared.slots.busy()
    }

    /// Usable context per slot, in tokens; prompts may use all but one of them.
    pub fn ctx_per_slot(&self) -> u32 {
        self.inner.ctx_per_slot
    }

    /// Fingerprints of the prompt prefixes the slots and the RAM store hold, for the heartbeat.
    pub fn prefix_fingerprints(&self) -> Vec<u64> {
        self.inner.shared.slots.fingerprints()
    }

    /// Host RAM held by saved prefix states: bytes and how many.
    pub fn prefix_cache_usage(&self) -> (usize, usize) {
        self.inner.shared.slots.saved_usage()
    }

    /// Tokens sampled per second across all slots over the last few seconds (0 when idle).
    pub fn tokens_per_second(&self) -> f64 {
        self.inner.shared.meter().rate(Instant::now())
    }

    /// Says that a job is on its way in (its request taken, not yet submitted), until the guard is
    /// dropped: an idle batch loop holding another job waits for it (at most a few milliseconds), so
    /// jobs sent together share their first step while a lone one starts at once.
    pub fn arriving(&self) -> Arriving {
        Arriving::new(Arc::clone(&self.inner.shared))
    }

    /// Accepts a generation: validates, renders and tokenizes the prompt, reserves a slot and hands
    /// the job to the batch loop. Does not wait for the model (tokenizing is the costliest part).
    pub fn submit(&self, req: GenerationRequest) -> Result<Generation, SubmitError> {
        let submitted_at = Instant::now();
        let inner = &*self.inner;
        if inner.shut_down.load(Ordering::Acquire) {
            return Err(SubmitError::ShutDown);
        }
        req.params.validate_for(&req.prompt)?;
        let total = self.slots_total();
        if self.slots_busy() >= total {
            return Err(SubmitError::NoFreeSlot { total });
        }
        let text = prompt::render(&inner.model, &inner.renderer, &req.prompt)?;
        let tokens = prompt::tokenize(&inner.model, &text);
        let prompt_tokens = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
        if tokens.is_empty() {
            return Err(SubmitError::Tokenize("the prompt has no tokens".to_owned()));
        }
        let max = inner.ctx_per_slot.saturating_sub(1);
        if prompt_tokens > max {
            return Err(SubmitError::PromptTooLong { prompt_tokens, max });
        }
        let seed = sampler::job_seed(req.params.seed);
        // Tools the model may call: its family's syntax is split out of the text and, when a call is
        // required (or once the model opens one), held to the tools' schemas.
        let tools = req.prompt.tools();
        let syntax = (!tools.is_empty() && req.params.tool_choice != ToolChoice::None)
            .then(|| inner.renderer.tool_syntax())
            .flatten();
        let constraint = grammar::for_job(&req.params, syntax.as_ref().map(|s| (tools, s)))?;
        let resumed = match &req.resume {
            None => Vec::new(),
            Some(_) if syntax.is_some() || constraint.is_some() => {
                return Err(SubmitError::InvalidParams(ParamError {
                    field: "resume",
                    message: "a job with tools or a response_format cannot be resumed".to_owned(),
                }))
            }
            Some(resume) => prompt::resume_tokens(&inner.model, resume),
        };
        let all = prompt_tokens.saturating_add(u32::try_from(resumed.len()).unwrap_or(u32::MAX));
        if all > max {
            return Err(SubmitError::PromptTooLong { prompt_tokens: all, max });
        }
        let chain = sampler::build(&req.params, inner.facts.n_vocab, seed)?;
        let mut sampler = ConstrainedSampler::new(chain, &inner.model, constraint.as_ref())?;
        // The penalties count what was generated before, as if this worker had sampled it.
        sampler.accept_resumed(&resumed);
        let mut output = Output::new(prompt_tokens, req.params.max_tokens, &req.params.stop, submitted_at)
            .resumed(u32::try_from(resumed.len()).unwrap_or(u32::MAX));
        if let Some(syntax) = syntax {
            let stream = ToolStream::new(syntax, seed);
            let forced = matches!(req.params.tool_choice, ToolChoice::Required | ToolChoice::Function { .. });
            output = output.with_tools(if forced { stream.calls_only() } else { stream });
        }
        let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
        let mut tokens = tokens;
        tokens.extend_from_slice(&resumed);
        let prompt = tokens.clone();
        let mut job = Some(Job {
            seq: -1,
            reuse: 0,
            restore: None,
            fingerprints: rbee_bus::prefix::fingerprints(&req.prompt),
            chat: matches!(req.prompt, Prompt::Chat { .. }),
            reply: req.resume.map(|r| r.text).unwrap_or_default(),
            sampler,
            logprobs: req.params.logprobs.then_some(req.params.top_logprobs),
            output,
            tokens,
            seed,
            cancel: req.cancel,
            deadline: req.deadline,
            events: events_tx,
        });
        let reserved = inner.shared.slots.reserve_with(&prompt, |reserved| {
            let mut job = job.take().ok_or(())?;
            job.seq = reserved.seq;
            job.reuse = reserved.reuse;
            job.restore = reserved.restore;
            inner.tx.send(Command::Start(Box::new(job))).map_err(|_| ())
        });
        match reserved {
            Ok(seq) => {
                tracing::debug!(seq, prompt_tokens, "job submitted");
                Ok(Generation { prompt_tokens, events })
            }
            Err(Ok(ReserveError::Full)) => Err(SubmitError::NoFreeSlot { total }),
            Err(Ok(ReserveError::Closed) | Err(())) => Err(SubmitError::ShutDown),
        }
    }

    /// Embeds `inputs` (each alone, pooled and L2-normalized) on this model's embedding context,
    /// created at the first call and kept; generation goes on meanwhile.
    pub async fn embed(&self, inputs: Vec<String>) -> Result<Embeddings, EmbedError> {
        if self.inner.shut_down.load(Ordering::Acquire) {
            return Err(EmbedError::ShutDown);
        }
        let inner = Arc::clone(&self.inner);
        let embedder = tokio::task::spawn_blocking(move || inner.embedder())
            .await
            .map_err(|e| EmbedError::Engine(format!("the embedding setup task failed: {e}")))??;
        embedder.embed(inputs).await
    }

    /// Stops the loop thread: running and queued generations end with [`FinishReason::Cancelled`],
    /// later submits fail with [`SubmitError::ShutDown`]. Blocks until the thread has exited (at most
    /// one decode step). Idempotent.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }
}

impl Inner {
    /// The embedding context, created now if this is the first request.
    fn embedder(&self) -> Result<Arc<Embedder>, EmbedError> {
        let mut slot = self.embedder.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = slot.as_ref() {
            return Ok(Arc::clone(e));
        }
        let backend = load::backend().map_err(|e| EmbedError::Engine(e.to_string()))?;
        let embedder =
            Arc::new(Embedder::start(backend, Arc::clone(&self.model), self.ctx_per_slot, self.threads)?);
        *slot = Some(Arc::clone(&embedder));
        Ok(embedder)
    }

    fn shutdown(&self) {
        if self.shut_down.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = self.tx.send(Command::Shutdown);
        let handle = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("the engine thread panicked");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}
