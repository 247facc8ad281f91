//! OpenAI-compatible endpoints: chat completions and completions (stream and not, `n` choices, tool
//! calls, log probabilities) and models. Requests are read strictly ([`request`]); each choice is one
//! job; answers are built from the jobs' events ([`choice`]), whole ([`reply`]) or as server-sent
//! events ([`stream`]).

mod choice;
mod embeddings;
mod reply;
mod request;
mod stream;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rbee_bus::{FinishReason, JobId, JobState};

pub use embeddings::embeddings;
pub use request::{model_id, ChatRequest, CompletionRequest, Plan, MAX_CHOICES};

use super::JsonBody;
use crate::error::ApiError;
use crate::jobs::admit;
use crate::jobs::dispatch;
use crate::jobs::job::{JobEvent, JobReader};
use crate::Queen;

/// Which endpoint answers.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Flavor {
    Chat,
    Completion,
}

/// `POST /v1/chat/completions`
pub async fn chat_completions(
    State(queen): State<Arc<Queen>>,
    JsonBody(req): JsonBody<ChatRequest>,
) -> Response {
    match req.plan() {
        Ok(plan) => run(queen, plan, Flavor::Chat).await,
        Err(e) => e.into_response(),
    }
}

/// `POST /v1/completions`
pub async fn completions(
    State(queen): State<Arc<Queen>>,
    JsonBody(req): JsonBody<CompletionRequest>,
) -> Response {
    match req.plan() {
        Ok(plan) => run(queen, plan, Flavor::Completion).await,
        Err(e) => e.into_response(),
    }
}

/// A started choice: its job and the events read while waiting for it to start.
pub(crate) struct Started {
    pub(crate) job_id: JobId,
    pub(crate) pending: Vec<JobEvent>,
    pub(crate) reader: JobReader,
}

/// Cancels jobs when the answer is dropped before they end (a client gone, a sibling choice failed).
pub(crate) struct CancelOnDrop {
    queen: Arc<Queen>,
    jobs: Vec<JobId>,
    /// Set once every job has ended.
    pub(crate) done: bool,
}

impl CancelOnDrop {
    pub(crate) fn new(queen: Arc<Queen>) -> Self {
        Self { queen, jobs: Vec::new(), done: false }
    }

    /// Every job has ended: nothing to cancel on drop. (A method, so that a closure calling it owns
    /// the whole guard, not a copy of its flag.)
    pub(crate) fn finish(&mut self) {
        self.done = true;
    }

    /// Cancels `job_id` too when dropped before the end.
    pub(crate) fn push(&mut self, job_id: JobId) {
        self.jobs.push(job_id);
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        for job_id in self.jobs.drain(..) {
            let queen = self.queen.clone();
            tracing::info!(%job_id, "answer dropped before the job ended, cancelling it");
            tokio::spawn(async move { dispatch::cancel(&queen, &job_id, "client disconnected").await });
        }
    }
}

/// Waits until a submitted job's worker accepts it (with `read`, until its first token: the prompt is
/// read): until then a failure is an HTTP error (400/413/503), not a broken stream.
pub(crate) async fn started(
    job_id: JobId,
    reader: Option<JobReader>,
    read: bool,
) -> Result<Started, ApiError> {
    let Some(mut reader) = reader else {
        return Err(ApiError::JobFailed("the job keeps no events".to_owned()));
    };
    let mut pending = Vec::new();
    while let Some(event) = reader.next().await {
        let started = matches!(&event, JobEvent::Token(_))
            || (!read
                && matches!(&event, JobEvent::Status(s) if matches!(s.state, JobState::Accepted { .. } | JobState::Running { .. })));
        if let JobEvent::Status(s) = &event {
            if let JobState::Finished { finish_reason: FinishReason::Error, error, .. } = &s.state {
                let message = error.clone().unwrap_or_else(|| "job failed".to_owned());
                return Err(ApiError::from_job_failure(reader.job().failure(), message));
            }
        }
        let terminal = event.is_terminal();
        pending.push(event);
        if started || terminal {
            break;
        }
    }
    Ok(Started { job_id, pending, reader })
}

async fn run(queen: Arc<Queen>, plan: Plan, flavor: Flavor) -> Response {
    let mut guard = CancelOnDrop::new(queen.clone());
    // Choices of one prompt (`n`): the first reads the prompt alone, then the others start and their
    // worker copies its cells instead of reading the prompt again. Different prompts all start at once.
    let shared = plan.jobs.len() > 1 && plan.jobs.iter().all(|j| j.prompt == plan.jobs[0].prompt);
    let mut started = Vec::with_capacity(plan.jobs.len());
    let mut waits = Vec::with_capacity(plan.jobs.len());
    for (i, request) in plan.jobs.into_iter().enumerate() {
        let job = match admit::submit(&queen, request).await {
            Ok(job) => job,
            Err(e) => return ApiError::from(e).into_response(),
        };
        guard.jobs.push(job.job_id.clone());
        if shared && i == 0 {
            match self::started(job.job_id.clone(), job.reader(), true).await {
                Ok(s) => started.push(s),
                Err(e) => return e.into_response(),
            }
        } else {
            waits.push(self::started(job.job_id.clone(), job.reader(), false));
        }
    }
    for result in futures::future::join_all(waits).await {
        match result {
            Ok(s) => started.push(s),
            // The guard cancels the choices that did start.
            Err(e) => return e.into_response(),
        }
    }
    let answer = choice::Answer { model: plan.model, flavor, logprobs: plan.logprobs, created: created() };
    if plan.stream {
        stream::sse(answer, started, guard, plan.include_usage).into_response()
    } else {
        reply::collect(answer, started, guard).await
    }
}

fn created() -> u64 {
    rbee_bus::now_ms() / 1000
}

/// `GET /v1/models`: every model served by a worker or present in a hive's catalog, with the hives
/// that hold it off because its workers failed to load there (`load_failures`, when any). A model no
/// worker serves says whether it needs a split across hosts to run (`needs_split`) and the plan
/// ([`crate::split`]: `memory_plan`, one device, a split, or why neither).
pub async fn models(State(queen): State<Arc<Queen>>) -> impl IntoResponse {
    let now = Instant::now();
    let registry = queen.registry();
    let snapshot = registry.snapshot(now);
    #[derive(Default)]
    struct Listed {
        workers: usize,
        hives: Vec<String>,
        failures: Vec<serde_json::Value>,
        /// The smallest estimate of the memory a worker of it needs, among hives with it.
        needed_bytes: Option<u64>,
    }
    let mut models: std::collections::BTreeMap<String, Listed> = Default::default();
    for w in registry.list_workers(now) {
        models.entry(w.model_id.to_string()).or_default().workers += 1;
    }
    for h in registry.list_hives(now) {
        for m in &h.models {
            let listed = models.entry(m.model_id.to_string()).or_default();
            let needed = crate::scheduler::estimate_spawn_bytes(m);
            listed.needed_bytes = Some(listed.needed_bytes.map_or(needed, |n| n.min(needed)));
            match &m.load_failures {
                Some(f) => {
                    let mut failure = serde_json::to_value(f).unwrap_or_default();
                    failure["hive_id"] = serde_json::json!(h.hive_id);
                    listed.failures.push(failure);
                }
                None => listed.hives.push(h.hive_id.to_string()),
            }
        }
    }
    let data: Vec<_> = models
        .into_iter()
        .map(|(id, listed)| {
            let mut model = serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "rbee", "workers": listed.workers, "spawnable_on": listed.hives});
            if !listed.failures.is_empty() {
                model["load_failures"] = serde_json::Value::Array(listed.failures);
            }
            if let (0, Some(needed)) = (listed.workers, listed.needed_bytes) {
                let outcome = match id.parse() {
                    Ok(model_id) => crate::split::plan(needed, &crate::split::offers(&snapshot, &model_id)),
                    Err(_) => return model,
                };
                model["needs_split"] = serde_json::json!(matches!(outcome, crate::split::SplitOutcome::Split(_)));
                model["memory_plan"] = serde_json::to_value(&outcome).unwrap_or_default();
            }
            model
        })
        .collect();
    Json(serde_json::json!({"object": "list", "data": data}))
}
