//! Embeddings: a second llama.cpp context of the same model with embeddings on, created at the first
//! request and kept, on a thread of its own so that embedding never waits on (or stalls) the batch
//! loop's generation. Each text is decoded alone and pooled the way its GGUF says (`<arch>.pooling_type`:
//! mean, CLS or last token), mean otherwise (a chat model's GGUF says nothing), then L2-normalized.

use std::num::NonZeroU32;
use std::sync::mpsc;
use std::sync::{Arc, PoisonError};

use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;

use super::load::CONTEXT_CREATION;

/// The most tokens one text may have (and the embedding context's size, when slots are larger).
const MAX_EMBED_TOKENS: u32 = 2048;

/// The vectors of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One unit-length vector per text, in order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens read, all texts together.
    pub prompt_tokens: u32,
    /// Length of each vector.
    pub dimensions: u32,
    /// `mean`, `cls` or `last`.
    pub pooling: &'static str,
}

/// Why an embedding request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EmbedError {
    /// One text cannot be embedded (too long, no tokens).
    #[error("text {index}: {message}")]
    Input {
        /// Its position in the request.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// The embedding context could not be created or decode failed.
    #[error("embedding: {0}")]
    Engine(String),
    /// The engine is shut down.
    #[error("the engine is shut down")]
    ShutDown,
}

struct Request {
    inputs: Vec<String>,
    reply: tokio::sync::oneshot::Sender<Result<Embeddings, EmbedError>>,
}

/// The embedding thread's handle; the thread ends when the handle is dropped.
pub(crate) struct Embedder {
    tx: mpsc::Sender<Request>,
}

/// How `model`'s GGUF pools token states into one vector, mean when it does not say.
fn pooling(model: &LlamaModel) -> (LlamaPoolingType, &'static str) {
    let arch = model.meta_val_str("general.architecture").unwrap_or_default();
    let declared =
        model.meta_val_str(&format!("{arch}.pooling_type")).ok().and_then(|v| v.trim().parse::<i32>().ok());
    match declared.map(LlamaPoolingType::from) {
        Some(LlamaPoolingType::Cls) => (LlamaPoolingType::Cls, "cls"),
        Some(LlamaPoolingType::Last) => (LlamaPoolingType::Last, "last"),
        _ => (LlamaPoolingType::Mean, "mean"),
    }
}

/// Scales `v` to unit length (a zero vector stays zero).
fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    if norm > 0.0 {
        for x in v.iter_mut() {
            *x = (f64::from(*x) / norm) as f32;
        }
    }
}

impl Embedder {
    /// Starts the thread and creates its context (blocking: tens to hundreds of ms).
    pub(crate) fn start(
        backend: &'static LlamaBackend,
        model: Arc<LlamaModel>,
        ctx_per_slot: u32,
        threads: i32,
    ) -> Result<Self, EmbedError> {
        let (tx, rx) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("rbee-embed".to_owned())
            .spawn(move || run(backend, &model, ctx_per_slot.min(MAX_EMBED_TOKENS), threads, &rx, &ready_tx))
            .map_err(|e| EmbedError::Engine(format!("cannot start the embedding thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self { tx }),
            Ok(Err(message)) => Err(EmbedError::Engine(message)),
            Err(_) => Err(EmbedError::Engine("the embedding thread ended during setup".to_owned())),
        }
    }

    /// Embeds `inputs`, in order.
    pub(crate) async fn embed(&self, inputs: Vec<String>) -> Result<Embeddings, EmbedError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx.send(Request { inputs, reply }).map_err(|_| EmbedError::ShutDown)?;
        rx.await.map_err(|_| EmbedError::ShutDown)?
    }
}

fn run(
    backend: &'static LlamaBackend,
    model: &LlamaModel,
    n_ctx: u32,
    threads: i32,
    rx: &mpsc::Receiver<Request>,
    ready: &mpsc::SyncSender<Result<(), String>>,
) {
    let (pooling_type, pooling_name) = pooling(model);
    // The whole text goes in one micro-batch: pooling reads every token's state at once.
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(n_ctx)
        .with_n_ubatch(n_ctx)
        .with_n_seq_max(1)
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
        .with_embeddings(true)
        .with_pooling_type(pooling_type);
    let created = {
        let _guard = CONTEXT_CREATION.lock().unwrap_or_else(PoisonError::into_inner);
        model.new_context(backend, params)
    };
    let mut ctx = match created {
        Ok(ctx) => ctx,
        Err(e) => {
            let _ = ready.send(Err(format!("llama.cpp could not create the embedding context ({e})")));
            return;
        }
    };
    if ready.send(Ok(())).is_err() {
        return;
    }
    let dimensions = u32::try_from(model.n_embd()).unwrap_or(0);
    tracing::info!(n_ctx, pooling = pooling_name, dimensions, "embedding context ready");
    let mut batch = LlamaBatch::new(n_ctx as usize, 1);
    while let Ok(Request { inputs, reply }) = rx.recv() {
        let mut vectors = Vec::with_capacity(inputs.len());
        let mut prompt_tokens = 0u32;
        let mut result = Ok(());
        for (index, text) in inputs.iter().enumerate() {
            // User text: special-token syntax in it stays text.
            let tokens = model.vocab().tokenize(text.as_bytes(), true, false);
            let n = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
            if n == 0 || n > n_ctx {
                let message = if n == 0 {
                    "has no tokens".to_owned()
                } else {
                    format!("has {n} tokens, more than the {n_ctx} an embedding reads")
                };
                result = Err(EmbedError::Input { index, message });
                break;
            }
            ctx.clear_kv_cache();
            batch.clear();
            let added = tokens.iter().zip(0i32..).try_for_each(|(t, pos)| batch.add(*t, pos, &[0], true));
            let decoded = added
                .map_err(|e| e.to_string())
                .and_then(|()| ctx.decode(&mut batch).map_err(|e| e.to_string()));
            let vector = decoded
                .and_then(|()| ctx.embeddings_seq_ith(0).map(<[f32]>::to_vec).map_err(|e| e.to_string()));
            match vector {
                Ok(mut v) => {
                    normalize(&mut v);
                    prompt_tokens = prompt_tokens.saturating_add(n);
                    vectors.push(v);
                }
                Err(e) => {
                    result = Err(EmbedError::Engine(format!("text {index}: {e}")));
                    break;
                }
            }
        }
        let _ = reply.send(result.map(|()| Embeddings {
            vectors,
            prompt_tokens,
            dimensions,
            pooling: pooling_name,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn normalized_vectors_have_unit_length() {
        let mut v = vec![3.0, 4.0];
        normalize(&mut v);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        let mut zero = vec![0.0, 0.0];
        normalize(&mut zero);
        assert_eq!(zero, [0.0, 0.0]);
    }
}
