//! Embeddings: a list of texts in, one vector per text out. The same pair of types travels on two
//! request subjects: `rbee.queen.embed` (a client asks the queen, which places the work like a job) and
//! `rbee.worker.<id>.embed` (the queen asks one worker, at most [`WORKER_EMBED_BATCH`] texts at a time).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{ModelId, WorkerId};
use crate::messages::job::ParamError;

/// Most texts in one request to the queen (HTTP or NATS).
pub const MAX_EMBED_INPUTS: usize = 256;
/// Most texts the queen sends one worker in one request: a reply of 8 vectors of 4096 floats stays
/// well inside NATS's default 1 MiB message.
pub const WORKER_EMBED_BATCH: usize = 8;
/// Most bytes of one text (the worker also refuses a text longer than its context in tokens).
pub const MAX_EMBED_INPUT_BYTES: usize = 64 * 1024;

/// Texts to embed with one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EmbedRequest {
    /// Schema version.
    pub v: u32,
    /// The model whose embeddings are asked for.
    pub model_id: ModelId,
    /// The texts, each embedded on its own (none empty).
    pub inputs: Vec<String>,
}

impl EmbedRequest {
    /// Checks the inputs against a limit on their count (`max`: [`MAX_EMBED_INPUTS`] for the queen,
    /// [`WORKER_EMBED_BATCH`] for a worker); the error names `input`.
    pub fn validate(&self, max: usize) -> Result<(), ParamError> {
        let bad = |message: String| Err(ParamError { field: "input", message });
        if self.inputs.is_empty() {
            return bad("no texts to embed".to_owned());
        }
        if self.inputs.len() > max {
            return bad(format!("{} texts, at most {max} in one request", self.inputs.len()));
        }
        if let Some(i) = self.inputs.iter().position(|t| t.is_empty()) {
            return bad(format!("text {i} is empty"));
        }
        if let Some(i) = self.inputs.iter().position(|t| t.len() > MAX_EMBED_INPUT_BYTES) {
            return bad(format!("text {i} is over {MAX_EMBED_INPUT_BYTES} bytes"));
        }
        Ok(())
    }
}

/// The vectors, in the order of the request's inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EmbedReply {
    /// Schema version.
    pub v: u32,
    /// The model that embedded them.
    pub model_id: ModelId,
    /// The workers that did (one for a worker's reply; the queen's may list several).
    pub workers: Vec<WorkerId>,
    /// Length of every vector.
    pub dimensions: u32,
    /// How token states became one vector: `mean`, `cls`, `last` (from the GGUF, mean otherwise).
    pub pooling: String,
    /// One unit-length (L2-normalized) vector per input.
    pub embeddings: Vec<Vec<f32>>,
    /// Tokens read, all inputs together.
    pub prompt_tokens: u32,
}
