//! Jobs: what a worker is asked to run, the tokens it streams and the status it reports.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{JobId, ModelId, WorkerId};
pub use crate::messages::chat::{
    ChatMessage, LogitBias, ResponseFormat, TokenLogprob, ToolCall, ToolCallChunk, ToolChoice, ToolDef,
    TopLogprob, MAX_LOGIT_BIAS, MAX_TOOLS, MAX_TOP_LOGPROBS,
};
use crate::messages::{EventMeta, SCHEMA_VERSION};

/// Longest stop sequence accepted, in bytes.
pub const MAX_STOP_LEN: usize = 256;
/// Most stop sequences per job.
pub const MAX_STOP_SEQUENCES: usize = 8;
/// Most tokens a job may ask for.
pub const MAX_TOKENS_LIMIT: u32 = 32_768;

/// What the model is given: a chat (rendered with the model's own template) or plain text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Prompt {
    /// A plain completion prompt, tokenized as is.
    Text {
        /// The prompt text.
        text: String,
    },
    /// A chat, rendered with the chat template stored in the GGUF.
    Chat {
        /// The conversation so far.
        messages: Vec<ChatMessage>,
        /// Functions the model may call, given to its template (or, for a template that knows no
        /// tools, described in a system message).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tools: Vec<ToolDef>,
    },
}

impl Prompt {
    /// A chat without tools.
    pub fn chat(messages: Vec<ChatMessage>) -> Self {
        Prompt::Chat { messages, tools: Vec::new() }
    }

    /// Total bytes of text in the prompt (a cheap upper bound of its token count).
    pub fn text_len(&self) -> usize {
        match self {
            Prompt::Text { text } => text.len(),
            Prompt::Chat { messages, tools } => {
                messages.iter().map(ChatMessage::text_len).sum::<usize>()
                    + tools.iter().map(|t| serde_json::to_string(t).map_or(0, |s| s.len())).sum::<usize>()
            }
        }
    }

    /// The tools a chat defines (none for plain text).
    pub fn tools(&self) -> &[ToolDef] {
        match self {
            Prompt::Text { .. } => &[],
            Prompt::Chat { tools, .. } => tools,
        }
    }
}

/// Sampling settings. Every field has a default; out-of-range values are refused by [`SamplingParams::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 means greedy; at most 2.
    pub temperature: f32,
    /// Nucleus sampling, in (0, 1].
    pub top_p: f32,
    /// Keep the k most likely tokens; 0 disables.
    pub top_k: u32,
    /// Drop tokens below this fraction of the top probability, in [0, 1].
    pub min_p: f32,
    /// Penalty for repeated tokens, in (0, 2]; 1 disables.
    pub repeat_penalty: f32,
    /// Seed of the sampler; the same seed and input give the same output. Random when absent.
    pub seed: Option<u64>,
    /// Generation stops before any of these strings; the stop text is never emitted.
    pub stop: Vec<String>,
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// OpenAI's presence penalty, in [-2, 2]: subtracted once from every token already generated.
    pub presence_penalty: f32,
    /// OpenAI's frequency penalty, in [-2, 2]: subtracted per occurrence of a generated token.
    pub frequency_penalty: f32,
    /// Biases added to chosen tokens' logits.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logit_bias: Vec<LogitBias>,
    /// Send each generated token's log probability with the text.
    pub logprobs: bool,
    /// With `logprobs`: also the most likely alternatives at each position, at most
    /// [`MAX_TOP_LOGPROBS`].
    pub top_logprobs: u8,
    /// The shape the reply must have.
    pub response_format: ResponseFormat,
    /// Whether the reply must (or may) be tool calls; only with tools in the prompt.
    pub tool_choice: ToolChoice,
    /// Whether several calls may be made in one reply.
    pub parallel_tool_calls: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_p: 0.95,
            top_k: 40,
            min_p: 0.05,
            repeat_penalty: 1.0,
            seed: None,
            stop: Vec::new(),
            max_tokens: 256,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            logprobs: false,
            top_logprobs: 0,
            response_format: ResponseFormat::Text,
            tool_choice: ToolChoice::Auto,
            parallel_tool_calls: true,
        }
    }
}

/// A sampling parameter outside its range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct ParamError {
    /// The offending field, as named on the wire.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl SamplingParams {
    /// Checks every field's range; the error names the first bad field.
    pub fn validate(&self) -> Result<(), ParamError> {
        let bad = |field, message: String| Err(ParamError { field, message });
        if !self.temperature.is_finite() || !(0.0..=2.0).contains(&self.temperature) {
            return bad("temperature", format!("{} is outside [0, 2]", self.temperature));
        }
        if !self.top_p.is_finite() || self.top_p <= 0.0 || self.top_p > 1.0 {
            return bad("top_p", format!("{} is outside (0, 1]", self.top_p));
        }
        if self.top_k > 100_000 {
            return bad("top_k", format!("{} is above 100000", self.top_k));
        }
        if !self.min_p.is_finite() || !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", format!("{} is outside [0, 1]", self.min_p));
        }
        if !self.repeat_penalty.is_finite() || self.repeat_penalty <= 0.0 || self.repeat_penalty > 2.0 {
            return bad("repeat_penalty", format!("{} is outside (0, 2]", self.repeat_penalty));
        }
        if self.max_tokens == 0 || self.max_tokens > MAX_TOKENS_LIMIT {
            return bad("max_tokens", format!("{} is outside [1, {MAX_TOKENS_LIMIT}]", self.max_tokens));
        }
        if self.stop.len() > MAX_STOP_SEQUENCES {
            return bad("stop", format!("{} sequences given, at most {MAX_STOP_SEQUENCES}", self.stop.len()));
        }
        if let Some(s) = self.stop.iter().find(|s| s.is_empty() || s.len() > MAX_STOP_LEN) {
            return bad("stop", format!("sequence of {} bytes, must be 1 to {MAX_STOP_LEN}", s.len()));
        }
        for (field, v) in
            [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)]
        {
            if !v.is_finite() || !(-2.0..=2.0).contains(&v) {
                return bad(field, format!("{v} is outside [-2, 2]"));
            }
        }
        if self.logit_bias.len() > MAX_LOGIT_BIAS {
            return bad("logit_bias", format!("{} entries, at most {MAX_LOGIT_BIAS}", self.logit_bias.len()));
        }
        if let Some(b) =
            self.logit_bias.iter().find(|b| !b.bias.is_finite() || !(-100.0..=100.0).contains(&b.bias))
        {
            return bad("logit_bias", format!("bias {} of token {} is outside [-100, 100]", b.bias, b.token));
        }
        if self.top_logprobs > MAX_TOP_LOGPROBS {
            return bad("top_logprobs", format!("{} is above {MAX_TOP_LOGPROBS}", self.top_logprobs));
        }
        if self.top_logprobs > 0 && !self.logprobs {
            return bad("top_logprobs", "needs logprobs: true".to_owned());
        }
        if let ResponseFormat::JsonSchema { schema, .. } = &self.response_format {
            if !schema.is_object() && !schema.is_boolean() {
                return bad("response_format", "json_schema.schema must be a JSON Schema object".to_owned());
            }
        }
        Ok(())
    }

    /// [`SamplingParams::validate`], then what depends on the prompt: a tool choice needs tools (and a
    /// named function one of them), tools need a chat, and one reply has one constraint.
    pub fn validate_for(&self, prompt: &Prompt) -> Result<(), ParamError> {
        self.validate()?;
        let bad = |field, message: String| Err(ParamError { field, message });
        let tools = prompt.tools();
        if tools.len() > MAX_TOOLS {
            return bad("tools", format!("{} tools, at most {MAX_TOOLS}", tools.len()));
        }
        let mut names = std::collections::HashSet::new();
        for t in tools {
            if t.name.is_empty()
                || t.name.len() > 64
                || !t.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return bad(
                    "tools",
                    format!("function name {:?} must be 1 to 64 of a-z, A-Z, 0-9, _ and -", t.name),
                );
            }
            if !names.insert(t.name.as_str()) {
                return bad("tools", format!("function {:?} is defined twice", t.name));
            }
            if let Some(p) = &t.parameters {
                if !p.is_object() {
                    return bad("tools", format!("parameters of {:?} must be a JSON Schema object", t.name));
                }
                if let Some((at, why)) = crate::schema_lint::first_problem(p) {
                    return bad(
                        "tools",
                        format!("parameters of {:?} cannot be turned into a grammar: {at}: {why}", t.name),
                    );
                }
            }
        }
        match &self.tool_choice {
            ToolChoice::Required if tools.is_empty() => {
                return bad("tool_choice", "\"required\" needs tools".to_owned());
            }
            ToolChoice::Function { name } if !tools.iter().any(|t| &t.name == name) => {
                return bad("tool_choice", format!("function {name:?} is not among the tools"));
            }
            _ => {}
        }
        if let ResponseFormat::JsonSchema { schema, .. } = &self.response_format {
            if let Some((at, why)) = crate::schema_lint::first_problem(schema) {
                let at = if at.is_empty() { "the schema".to_owned() } else { at };
                return bad(
                    "response_format",
                    format!("the JSON Schema cannot be turned into a grammar: {at}: {why}"),
                );
            }
        }
        let calls_possible = !tools.is_empty() && self.tool_choice != ToolChoice::None;
        if calls_possible && self.response_format != ResponseFormat::Text {
            return bad(
                "response_format",
                "cannot be combined with tools the model may call (set tool_choice to \"none\")".to_owned(),
            );
        }
        Ok(())
    }
}

/// A job given to one worker on `rbee.worker.<worker_id>.jobs`; answered at once with [`JobAccepted`]
/// or a [`crate::WireError`] (codes `no_free_slot`, `prompt_too_long`, `invalid_params`, `wrong_model`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobAssignment {
    /// Schema version.
    pub v: u32,
    /// The job's id; tokens go to `rbee.job.<job_id>.tokens`.
    pub job_id: JobId,
    /// The model the job was placed for; a worker serving another model refuses it.
    pub model_id: ModelId,
    /// The input.
    pub prompt: Prompt,
    /// Sampling settings.
    pub params: SamplingParams,
    /// Wall-clock budget in milliseconds from acceptance; generation stops with `cancelled` after it.
    pub deadline_ms: Option<u64>,
    /// Which placement of the job this is: 1 for the first, 2 for the retry on another worker after
    /// the first did not answer, and so on; 0 (or absent) from a queen that does not count. The
    /// worker copies it into every [`TokenChunk`] and [`JobStatus`] it publishes for this job.
    #[serde(default)]
    pub attempt: u32,
    /// A secret of this attempt, chosen by the queen: the worker copies it into every chunk and status
    /// it publishes for the job, and the queen takes none without it. In secure mode only the queen
    /// and the assigned worker's identity can read an assignment, and no identity that may publish
    /// token or status events may read them, so another worker cannot forge this attempt's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_key: Option<String>,
    /// Set when the job moves here mid-stream from a worker that was lost: what clients already
    /// received. The worker decodes it after the prompt, as if it had generated it, and goes on from
    /// there; its chunks continue the job's `seq` and `total_tokens`. A job with tools or a
    /// `response_format` is never resumed (its parser and grammar state would have to travel too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Resume>,
    /// The leading queen's fencing epoch ([`crate::LeaderLease::fence`]): a worker refuses an
    /// assignment whose fence is below the highest it has seen (`fenced`), so a queen that lost its
    /// lease cannot place a job twice. Absent from a queen that runs without a lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
}

/// What earlier attempts of a job already streamed to clients ([`JobAssignment::resume`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Resume {
    /// Every chunk's text so far, in order.
    pub text: String,
    /// The token ids the chunks carried ([`TokenChunk::token_ids`]), in order: the tokens of a prefix
    /// of `text` when the model is the same. The worker uses the longest run of them whose text is a
    /// prefix of `text` and tokenizes the rest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_ids: Vec<u32>,
    /// The `seq` of the next chunk (chunks received so far).
    pub next_seq: u64,
    /// Tokens generated so far (the last chunk's `total_tokens`).
    pub completion_tokens: u32,
}

impl JobAssignment {
    /// A new assignment at the current schema version (attempt 0: not counted, no key).
    pub fn new(job_id: JobId, model_id: ModelId, prompt: Prompt, params: SamplingParams) -> Self {
        Self {
            v: SCHEMA_VERSION,
            job_id,
            model_id,
            prompt,
            params,
            deadline_ms: None,
            attempt: 0,
            attempt_key: None,
            resume: None,
            fence: None,
        }
    }
}

/// A fresh attempt key: 128 random bits, hex.
pub fn new_attempt_key() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A worker's reply: the job holds a slot and will stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobAccepted {
    /// Schema version.
    pub v: u32,
    /// The job accepted.
    pub job_id: JobId,
    /// The worker that took it.
    pub worker_id: WorkerId,
    /// Tokens in the rendered prompt.
    pub prompt_tokens: u32,
    /// This job's number among the assignments the worker process accepted (from 1): its heartbeats'
    /// [`WorkerHeartbeat::jobs_accepted`](crate::WorkerHeartbeat::jobs_accepted) reach it once they
    /// count the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_seq: Option<u64>,
}

/// Part of a job's output on `rbee.job.<job_id>.tokens`. Consecutive tokens may be coalesced into
/// one chunk; `seq` starts at 0 and has no gaps in one attempt. A job placed twice (the first worker
/// timed out, the queen retried elsewhere) may get chunks from both workers: consumers drop every chunk
/// whose (`worker_id`, `attempt`) is not that of the job's latest `scheduled` status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TokenChunk {
    /// Schema version.
    pub v: u32,
    /// Publisher, epoch, sequence and send time.
    pub meta: EventMeta,
    /// The job.
    pub job_id: JobId,
    /// The worker generating it.
    pub worker_id: WorkerId,
    /// Chunk number within the job, from 0.
    pub seq: u64,
    /// The text of the tokens in this chunk (UTF-8; a multi-byte character is never split).
    pub text: String,
    /// Tokens in this chunk.
    pub tokens: u32,
    /// Tokens generated so far, this chunk included.
    pub total_tokens: u32,
    /// The attempt of the assignment this chunk answers (its `JobAssignment.attempt`); 0 (or absent)
    /// when the queen did not count. Drop the chunk unless it is the job's latest scheduled attempt.
    #[serde(default)]
    pub attempt: u32,
    /// The assignment's `attempt_key`, when it had one: a chunk whose key is not the one of the job's
    /// latest `scheduled` status is not that attempt's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_key: Option<String>,
    /// Tool calls completed in this chunk (their text is not in `text`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallChunk>,
    /// Per generated token of this chunk, when the job asked for `logprobs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<TokenLogprob>,
    /// The ids of the tokens whose text this chunk releases, in the model's vocabulary (so that a job
    /// moved to another worker of the same model goes on from exactly these tokens). Absent from older
    /// workers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_ids: Vec<u32>,
}

/// Why a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End of generation token or a stop sequence.
    Stop,
    /// `max_tokens` reached, or the context was full.
    Length,
    /// Cancelled by request or deadline.
    Cancelled,
    /// Failed; the status carries the message.
    Error,
    /// The reply is one or more tool calls.
    ToolCalls,
}

impl FinishReason {
    /// The string used on the wire and by OpenAI's API.
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Error => "error",
            FinishReason::ToolCalls => "tool_calls",
        }
    }
}

/// Token counts and timings of one job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// From acceptance to the first generated token, in milliseconds.
    pub time_to_first_token_ms: Option<f64>,
    /// Generated tokens per second after the first.
    pub decode_tokens_per_second: Option<f64>,
    /// Prompt tokens the worker did not decode because its slot already held them (a reused prefix);
    /// OpenAI's `usage.prompt_tokens_details.cached_tokens`. Absent from older workers: 0.
    #[serde(default)]
    pub cached_tokens: u32,
}

/// The state a job status event announces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobState {
    /// Waiting in the queen's queue.
    Queued {
        /// Why it waits, for a person ("waiting for a slot on 2 workers").
        reason: String,
    },
    /// Placed on a worker by the queen.
    Scheduled {
        /// Where it was placed.
        worker_id: WorkerId,
    },
    /// A worker accepted it.
    Accepted {
        /// The worker.
        worker_id: WorkerId,
        /// Tokens in the prompt.
        prompt_tokens: u32,
    },
    /// The first token was generated.
    Running {
        /// The worker.
        worker_id: WorkerId,
    },
    /// Its worker was lost mid-stream: the queen places it again and the next worker goes on from what
    /// clients received ([`JobAssignment::resume`]); a `scheduled` status follows.
    Migrating {
        /// The worker that was lost.
        from_worker: WorkerId,
        /// Tokens generated before.
        completion_tokens: u32,
        /// What happened, for a person.
        reason: String,
    },
    /// Terminal: done, for the reason given.
    Finished {
        /// stop, length, cancelled or error.
        finish_reason: FinishReason,
        /// Counts and timings.
        usage: Usage,
        /// What went wrong, when `finish_reason` is `error`.
        error: Option<String>,
        /// The worker, when one ran it.
        worker_id: Option<WorkerId>,
    },
}

impl JobState {
    /// True for the terminal state.
    pub fn is_terminal(&self) -> bool {
        matches!(self, JobState::Finished { .. })
    }
}

/// A job status event on `rbee.job.<job_id>.status`, published by the queen and the worker. As with
/// [`TokenChunk`], a worker's status whose (`worker_id`, `attempt`) is not the job's latest `scheduled`
/// one comes from a superseded placement and is dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobStatus {
    /// Schema version.
    pub v: u32,
    /// Publisher, epoch, sequence and send time.
    pub meta: EventMeta,
    /// The job.
    pub job_id: JobId,
    /// The model asked for.
    pub model_id: Option<ModelId>,
    /// What happened.
    #[serde(flatten)]
    pub state: JobState,
    /// The placement this status belongs to: the queen's `scheduled` status names the attempt it
    /// assigns (`JobAssignment.attempt`), a worker copies the assignment's; 0 (or absent) when not
    /// counted (queued, or an older publisher).
    #[serde(default)]
    pub attempt: u32,
    /// On the queen's `scheduled` status: the key it gave the attempt; on a worker's status: the key of
    /// the assignment it answers. Absent where there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_key: Option<String>,
}

/// A request to cancel a job, published on `rbee.job.<job_id>.cancel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobCancel {
    /// Schema version.
    pub v: u32,
    /// Publisher, epoch, sequence and send time.
    pub meta: EventMeta,
    /// The job.
    pub job_id: JobId,
    /// Why, for the log.
    pub reason: String,
    /// Set when the cancel is for one worker's attempt only (the queen abandoning an attempt it
    /// placed elsewhere since): other workers ignore it and do not remember it. Absent: every attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<WorkerId>,
    /// The sending queen's fencing epoch, when it leads by a lease: a cancel below the highest fence a
    /// worker has seen is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
}

/// A job submitted over NATS on `rbee.queen.jobs.submit`; the queen replies with [`SubmitJobReply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SubmitJob {
    /// Schema version.
    pub v: u32,
    /// The model to run.
    pub model_id: ModelId,
    /// The input.
    pub prompt: Prompt,
    /// Sampling settings.
    #[serde(default)]
    pub params: SamplingParams,
    /// Optional id chosen by the client, so it can subscribe to the job's subjects before submitting.
    pub job_id: Option<JobId>,
    /// Wall-clock budget in milliseconds.
    pub deadline_ms: Option<u64>,
    /// How long the worker that runs the job stays loaded after it, in milliseconds; negative: until
    /// stopped. Absent: as it was (Ollama's `keep_alive`, carried when a standby queen forwards a job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive_ms: Option<i64>,
}

/// The queen's answer to [`SubmitJob`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SubmitJobReply {
    /// Schema version.
    pub v: u32,
    /// The job's id.
    pub job_id: JobId,
    /// Where its tokens stream.
    pub tokens_subject: String,
    /// Where its status events go.
    pub status_subject: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_a_grammar_cannot_express_are_refused_with_the_field_and_the_part() {
        let prompt = Prompt::chat(vec![ChatMessage::new("user", "hi")]);
        let schema = serde_json::json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/gone"}}});
        let params = SamplingParams {
            response_format: ResponseFormat::JsonSchema {
                name: "x".into(),
                schema: schema.clone(),
                strict: true,
            },
            ..SamplingParams::default()
        };
        let e = params.validate_for(&prompt).expect_err("refused");
        assert_eq!(e.field, "response_format");
        assert!(e.message.contains("/properties/a/$ref"), "{e}");
        let tool = ToolDef { name: "f".into(), description: None, parameters: Some(schema) };
        let with_tool = Prompt::Chat { messages: vec![ChatMessage::new("user", "hi")], tools: vec![tool] };
        let e = SamplingParams::default().validate_for(&with_tool).expect_err("refused");
        assert_eq!(e.field, "tools");
        assert!(e.message.contains("/properties/a/$ref"), "{e}");
    }

    #[test]
    fn attempt_is_optional_on_the_wire_and_kept_when_given() {
        let old = r#"{"v":1,"job_id":"j1","model_id":"m","prompt":{"kind":"text","text":"hi"},
            "params":{},"deadline_ms":null}"#;
        let assignment: JobAssignment = serde_json::from_str(old).expect("an older queen's assignment");
        assert_eq!(assignment.attempt, 0);
        let mut retried = assignment.clone();
        retried.attempt = 2;
        let back: JobAssignment =
            serde_json::from_str(&serde_json::to_string(&retried).expect("json")).expect("decodes");
        assert_eq!(back.attempt, 2);
        let chunk = r#"{"v":1,"meta":{"publisher":"w","epoch":"e","seq":1,"sent_at_ms":1},"job_id":"j1",
            "worker_id":"w1","seq":0,"text":"a","tokens":1,"total_tokens":1}"#;
        assert_eq!(serde_json::from_str::<TokenChunk>(chunk).expect("an older worker's chunk").attempt, 0);
        let status = r#"{"v":1,"meta":{"publisher":"w","epoch":"e","seq":1,"sent_at_ms":1},"job_id":"j1",
            "model_id":null,"state":"running","worker_id":"w1","attempt":3}"#;
        let status: JobStatus = serde_json::from_str(status).expect("status decodes");
        assert_eq!(
            (status.attempt, status.state),
            (3, JobState::Running { worker_id: "w1".parse().expect("id") })
        );
    }
}
