//! Model catalogs through the queen: `POST /v1/models/import`, `POST /v1/models/pull` (server-sent
//! events: `progress` `{downloaded,total}`, then `done` `{model_id,hive_id,...}` or `error`) and
//! `DELETE /v1/models/{id}?hive=`. Each asks one hive over its `rbee.hive.<hive_id>.models.*` subjects;
//! `GET /v1/models` (the OpenAI listing) is in [`super::openai`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use rbee_bus::{
    subject, HiveId, ModelImportRequest, ModelPullAccepted, ModelPullEvent, ModelPullRequest,
    ModelRemoveReply, ModelRemoveRequest, ModelReply, PullId, PullProgress, SCHEMA_VERSION,
};
use serde::Deserialize;
use serde_json::json;

use super::openai::model_id;
use super::JsonBody;
use crate::error::ApiError;
use crate::Queen;

/// How long an import may take (the hive copies and hashes the whole file).
const IMPORT_TIMEOUT: Duration = Duration::from_secs(600);
/// A pull that reports nothing for this long is given up on.
const PULL_SILENCE: Duration = Duration::from_secs(120);

/// The hive named, or the only one there is.
fn pick_hive(queen: &Queen, named: Option<&str>) -> Result<HiveId, ApiError> {
    if let Some(name) = named {
        return name.parse().map_err(|e: rbee_bus::IdError| ApiError::invalid("hive", e.to_string()));
    }
    let hives = queen.registry().list_hives(Instant::now());
    match hives.as_slice() {
        [only] => Ok(only.hive_id.clone()),
        [] => Err(ApiError::Unavailable("no hive is online".to_owned())),
        many => {
            let names: Vec<&str> = many.iter().map(|h| h.hive_id.as_str()).collect();
            Err(ApiError::invalid("hive", format!("name the hive: one of {}", names.join(", "))))
        }
    }
}

/// Body of `POST /v1/models/import`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportBody {
    /// The hive (optional when there is one).
    hive: Option<String>,
    /// Absolute path of the file on the hive's machine.
    path: String,
    /// Model id; derived from the file name when absent.
    id: Option<String>,
}

/// `POST /v1/models/import`
pub async fn import(
    State(queen): State<Arc<Queen>>,
    JsonBody(body): JsonBody<ImportBody>,
) -> Result<Response, ApiError> {
    let hive = pick_hive(&queen, body.hive.as_deref())?;
    let model_id = body.id.as_deref().map(model_id).transpose()?;
    let request = ModelImportRequest { v: SCHEMA_VERSION, path: body.path, model_id };
    let reply: ModelReply = queen
        .bus
        .request(subject::hive_models_import(&hive), &request, IMPORT_TIMEOUT)
        .await
        .map_err(|e| ApiError::from_hive(&hive, e))?;
    let mut out = serde_json::to_value(&reply.model).unwrap_or_default();
    out["hive_id"] = json!(hive);
    out["sha256"] = json!(reply.sha256);
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// Body of `POST /v1/models/pull`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullBody {
    /// The hive (optional when there is one).
    hive: Option<String>,
    /// `http(s)://` URL of a GGUF file, or a hub reference (`hf:ORG/REPO/FILE.gguf`, `hf:ORG/REPO:QUANT`)
    /// that the hive resolves.
    url: String,
    /// Model id; derived from the URL when absent.
    id: Option<String>,
    /// Expected sha256, hex.
    sha256: Option<String>,
}

/// One step of a pull, as the hive reports it; the last is `Done` or `Failed`.
pub enum PullStep {
    /// Bytes on disk so far, and the file's size when known.
    Progress {
        /// Bytes so far.
        downloaded: u64,
        /// The whole file.
        total: Option<u64>,
    },
    /// In the catalog: what it recorded, with the hive's id.
    Done(serde_json::Value),
    /// Given up (or the hive went silent): a stable code and why.
    Failed {
        /// The hive's error code, or `unavailable` when its progress was lost.
        code: String,
        /// For a person.
        message: String,
    },
}

/// Asks a hive (`hive`, or the only one) to pull `request`'s file: refusals (bad URL, id taken, no
/// such hive) come back as errors; once the hive took it, its steps until the last. The download goes
/// on on the hive when the stream is dropped.
pub async fn start_pull(
    queen: &Queen,
    hive: Option<&str>,
    url: String,
    model_id: Option<rbee_bus::ModelId>,
    sha256: Option<String>,
) -> Result<(rbee_bus::ModelId, impl futures::Stream<Item = PullStep>), ApiError> {
    let hive = pick_hive(queen, hive)?;
    let pull_id = PullId::generate();
    // Subscribe before asking, so no event is missed.
    let progress = queen
        .bus
        .client()
        .subscribe(subject::hive_pull(&hive, &pull_id))
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot subscribe to pull progress: {e}")))?;
    let request = ModelPullRequest { v: SCHEMA_VERSION, pull_id: pull_id.clone(), url, model_id, sha256 };
    let accepted: ModelPullAccepted = queen
        .bus
        .request(subject::hive_models_pull(&hive), &request, Duration::from_secs(10))
        .await
        .map_err(|e| ApiError::from_hive(&hive, e))?;
    tracing::info!(%pull_id, hive_id = %hive, model_id = %accepted.model_id, "model pull accepted");
    let model = accepted.model_id.clone();
    let state = (progress, hive, accepted.model_id, false);
    let steps = futures::stream::unfold(state, |(mut sub, hive, model, ended)| async move {
        if ended {
            return None;
        }
        let step = match tokio::time::timeout(PULL_SILENCE, sub.next()).await {
            Ok(Some(msg)) => match rbee_bus::rpc::decode::<ModelPullEvent>(&msg.subject, &msg.payload) {
                Ok(e) => pull_step(&hive, e),
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable pull progress");
                    return Some((None, (sub, hive, model, false)));
                }
            },
            Ok(None) => unavailable(format!("lost the progress of the pull of {model} from hive {hive}")),
            Err(_) => unavailable(format!(
                "hive {hive} said nothing about the pull of {model} for {} s",
                PULL_SILENCE.as_secs()
            )),
        };
        let end = !matches!(step, PullStep::Progress { .. });
        Some((Some(step), (sub, hive, model, end)))
    });
    Ok((model, steps.filter_map(std::future::ready)))
}

fn pull_step(hive: &HiveId, event: ModelPullEvent) -> PullStep {
    match event.progress {
        PullProgress::Progress { downloaded, total } => PullStep::Progress { downloaded, total },
        PullProgress::Done { model } => {
            let mut body = serde_json::to_value(&model).unwrap_or_default();
            body["hive_id"] = json!(hive);
            PullStep::Done(body)
        }
        PullProgress::Failed { error } => {
            PullStep::Failed { code: error.code.as_str().to_owned(), message: error.message }
        }
    }
}

fn unavailable(message: String) -> PullStep {
    PullStep::Failed { code: "unavailable".to_owned(), message }
}

/// `POST /v1/models/pull`: refusals (bad URL, id taken, no such hive) come back as plain errors;
/// once the hive took the pull, its progress streams as server-sent events. The download goes on
/// on the hive when the client leaves.
pub async fn pull(
    State(queen): State<Arc<Queen>>,
    JsonBody(body): JsonBody<PullBody>,
) -> Result<Response, ApiError> {
    let model_id = body.id.as_deref().map(model_id).transpose()?;
    let (_, steps) = start_pull(&queen, body.hive.as_deref(), body.url, model_id, body.sha256).await?;
    let events = steps.map(|step| {
        Ok::<_, Infallible>(match step {
            PullStep::Progress { downloaded, total } => Event::default()
                .event("progress")
                .data(json!({"downloaded": downloaded, "total": total}).to_string()),
            PullStep::Done(body) => Event::default().event("done").data(body.to_string()),
            PullStep::Failed { code, message } => Event::default()
                .event("error")
                .data(json!({"error": {"code": code, "message": message}}).to_string()),
        })
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

/// Query of `DELETE /v1/models/{id}`.
#[derive(Debug, Deserialize)]
pub struct RemoveQuery {
    /// The hive; when absent, the one hive whose catalog has the model.
    hive: Option<String>,
}

/// `DELETE /v1/models/{id}?hive=`
pub async fn remove(
    State(queen): State<Arc<Queen>>,
    Path(id): Path<String>,
    Query(query): Query<RemoveQuery>,
) -> Result<Response, ApiError> {
    let model = model_id(&id)?;
    let hive = match query.hive.as_deref() {
        Some(name) => pick_hive(&queen, Some(name))?,
        None => {
            let holders: Vec<HiveId> = queen
                .registry()
                .list_hives(Instant::now())
                .into_iter()
                .filter(|h| h.model(&model).is_some())
                .map(|h| h.hive_id)
                .collect();
            match holders.as_slice() {
                [only] => only.clone(),
                [] => return Err(ApiError::NotFound(format!("no hive has model {model}"))),
                many => {
                    let names: Vec<&str> = many.iter().map(HiveId::as_str).collect();
                    return Err(ApiError::invalid(
                        "hive",
                        format!("name the hive: {model} is on {}", names.join(", ")),
                    ));
                }
            }
        }
    };
    let request = ModelRemoveRequest { v: SCHEMA_VERSION, model_id: model };
    let reply: ModelRemoveReply = queen
        .bus
        .request(subject::hive_models_remove(&hive), &request, Duration::from_secs(30))
        .await
        .map_err(|e| ApiError::from_hive(&hive, e))?;
    Ok(Json(json!({"model_id": reply.model_id, "hive_id": hive, "freed_bytes": reply.freed_bytes}))
        .into_response())
}
