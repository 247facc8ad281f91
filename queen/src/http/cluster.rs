//! The cluster: hives, workers, spawn and stop, draining a hive.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rbee_bus::{
    subject, HiveId, ModelId, SpawnReply, SpawnRequest, StopReply, StopRequest, WorkerId, SCHEMA_VERSION,
};
use serde::Deserialize;

use super::openai::model_id;
use super::JsonBody;
use crate::error::ApiError;
use crate::jobs::spawns::{spawn_request, SPAWN_REPLY_TIMEOUT};
use crate::keep_alive::KeepAlive;
use crate::placement::place;
use crate::scheduler::{Placement, PlacementRequest};
use crate::Queen;

/// `GET /v1/hives`
pub async fn hives(State(queen): State<Arc<Queen>>) -> impl IntoResponse {
    Json(serde_json::json!({ "hives": queen.registry().list_hives(Instant::now()) }))
}

/// `GET /v1/workers`, each with its keep-alive (`keep_alive_s`, null: kept loaded) and, while idle,
/// the seconds until it unloads (`unload_in_s`).
pub async fn workers(State(queen): State<Arc<Queen>>) -> impl IntoResponse {
    Json(serde_json::json!({ "workers": workers_with_keep_alive(&queen) }))
}

/// The registry's workers, each with `keep_alive_s` and `unload_in_s` (also the dashboard's).
pub fn workers_with_keep_alive(queen: &Queen) -> Vec<serde_json::Value> {
    let now = Instant::now();
    let workers = queen.registry().list_workers(now);
    let table = queen.keep_alive();
    let listed: Vec<serde_json::Value> = workers
        .iter()
        .map(|w| {
            let mut v = serde_json::to_value(w).unwrap_or_default();
            v["keep_alive_s"] = serde_json::json!(table.keep_alive(&w.worker_id).seconds());
            v["unload_in_s"] = serde_json::json!(table.unload_in(&w.worker_id, now).map(|d| d.as_secs_f64()));
            v
        })
        .collect();
    listed
}

/// Body of `POST /v1/workers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnBody {
    model: String,
    hive: Option<String>,
    device: Option<String>,
    slots: Option<u32>,
    ctx_per_slot: Option<u32>,
    threads: Option<u32>,
    /// Serve the model from this many distinct hives ([`crate::replicas`]).
    replicas: Option<u32>,
    /// How long the worker stays loaded when idle (`"5m"`, seconds, `-1`); absent: until stopped.
    keep_alive: Option<serde_json::Value>,
}

/// `POST /v1/workers`: spawns a worker on the named hive, or where the scheduler would.
pub async fn spawn(
    State(queen): State<Arc<Queen>>,
    JsonBody(body): JsonBody<SpawnBody>,
) -> Result<Response, ApiError> {
    let model = model_id(&body.model)?;
    super::ollama::keep_alive(body.keep_alive.as_ref())?;
    if let Some(replicas) = body.replicas {
        return spawn_replicas(&queen, model, replicas, body).await;
    }
    let (hive_id, device) = match &body.hive {
        Some(h) => {
            (h.parse::<HiveId>().map_err(|e| ApiError::invalid("hive", e.to_string()))?, body.device.clone())
        }
        None => {
            // A new worker whatever serves the model now: the scheduler's spawn rule alone.
            let request = PlacementRequest { spawn_only: true, ..PlacementRequest::new(model.clone()) };
            match place(&mut queen.registry(), &request, Instant::now()) {
                Placement::Spawn { hive_id, device } => (hive_id, body.device.clone().or(Some(device))),
                Placement::Queue { reason } | Placement::Refuse { reason } => {
                    return Err(ApiError::Unavailable(reason))
                }
                Placement::Unavailable { reason } => return Err(ApiError::ModelFailing(reason)),
                Placement::Assign { .. } | Placement::Evict { .. } => {
                    return Err(ApiError::Unavailable("no hive can spawn this model".to_owned()))
                }
            }
        }
    };
    let reply = spawn_on(&queen, &hive_id, model, device, &body).await?;
    let body = serde_json::json!({"worker_id": reply.worker_id, "hive_id": hive_id, "pid": reply.pid, "device": reply.device});
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Asks one hive for a worker with the body's sizes.
async fn spawn_on(
    queen: &Queen,
    hive_id: &HiveId,
    model: ModelId,
    device: Option<String>,
    body: &SpawnBody,
) -> Result<SpawnReply, ApiError> {
    let request = SpawnRequest {
        slots: body.slots,
        ctx_per_slot: body.ctx_per_slot,
        threads: body.threads,
        ..spawn_request(model, device, queen.leadership.order_fence())
    };
    let reply: SpawnReply = queen
        .bus
        .request(subject::hive_spawn(hive_id), &request, SPAWN_REPLY_TIMEOUT)
        .await
        .map_err(|e| ApiError::from_hive(hive_id, e))?;
    // Checked before the spawn; an explicit spawn stays loaded unless the body says otherwise.
    let keep_alive = super::ollama::keep_alive(body.keep_alive.as_ref())?.unwrap_or(KeepAlive::Forever);
    queen.keep_alive().spawned(&reply.worker_id, keep_alive, Instant::now());
    Ok(reply)
}

/// `POST /v1/workers` with `replicas: N`: the model served from N distinct hives; the hives that
/// already serve it count, the others are spawned on together. 201 with every replica; when a spawn
/// fails, the error names the replicas that did start (they keep running).
async fn spawn_replicas(
    queen: &Queen,
    model: ModelId,
    replicas: u32,
    body: SpawnBody,
) -> Result<Response, ApiError> {
    if body.hive.is_some() || body.device.is_some() {
        return Err(ApiError::invalid(
            "replicas",
            "replicas picks the hives: leave out hive and device".to_owned(),
        ));
    }
    if replicas == 0 || replicas > crate::replicas::MAX_REPLICAS {
        let message = format!("replicas must be 1 to {}, not {replicas}", crate::replicas::MAX_REPLICAS);
        return Err(ApiError::invalid("replicas", message));
    }
    let snapshot = queen.registry().snapshot(Instant::now());
    let plan = crate::replicas::plan(&snapshot, &model, replicas).map_err(|shortfall| match shortfall {
        crate::replicas::Shortfall::Unavailable(reason) => ApiError::ModelFailing(reason),
        other => ApiError::Unavailable(format!("model {model}: {other}")),
    })?;
    let spawns = plan.spawn.iter().map(|(hive_id, device)| {
        let (model, body) = (model.clone(), &body);
        async move { (hive_id, spawn_on(queen, hive_id, model, Some(device.clone()), body).await) }
    });
    let results = futures::future::join_all(spawns).await;
    let mut workers: Vec<serde_json::Value> = plan
        .serving
        .iter()
        .map(|(hive_id, worker_id)| serde_json::json!({"worker_id": worker_id, "hive_id": hive_id, "spawned": false}))
        .collect();
    let mut failed = Vec::new();
    for (hive_id, result) in results {
        match result {
            Ok(reply) => workers.push(serde_json::json!({"worker_id": reply.worker_id, "hive_id": hive_id,
                "pid": reply.pid, "device": reply.device, "spawned": true})),
            Err(e) => failed.push(format!("hive {hive_id}: {e}")),
        }
    }
    tracing::info!(%model, replicas, started = workers.len(), failed = failed.len(), "replicas spawned");
    if !failed.is_empty() {
        let started: Vec<String> =
            workers.iter().map(|w| w["hive_id"].as_str().unwrap_or_default().to_owned()).collect();
        let message = format!(
            "model {model}: {} of {replicas} replicas failed to spawn ({}); serving on: {}",
            failed.len(),
            failed.join("; "),
            if started.is_empty() { "none".to_owned() } else { started.join(", ") }
        );
        return Err(ApiError::Unavailable(message));
    }
    let body = serde_json::json!({"model": model, "replicas": replicas, "workers": workers});
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `DELETE /v1/workers/{id}`: asks its hive to stop it (graceful, then killed).
pub async fn stop(State(queen): State<Arc<Queen>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let worker_id: WorkerId =
        id.parse().map_err(|e: rbee_bus::IdError| ApiError::invalid("worker_id", e.to_string()))?;
    let hive_id = queen
        .registry()
        .hive_of_worker(&worker_id)
        .ok_or_else(|| ApiError::NotFound(format!("no worker {worker_id}")))?;
    let request = StopRequest {
        v: SCHEMA_VERSION,
        worker_id,
        deadline_ms: Some(10_000),
        fence: queen.leadership.order_fence(),
    };
    let reply: StopReply = queen
        .bus
        .request(subject::hive_stop(&hive_id), &request, Duration::from_secs(20))
        .await
        .map_err(|e| ApiError::from_hive(&hive_id, e))?;
    Ok(Json(reply).into_response())
}

/// Query of `POST /v1/hives/{id}/drain`.
#[derive(Debug, Deserialize)]
pub struct DrainQuery {
    /// Seconds running jobs get to finish before the hive's workers are stopped anyway.
    deadline_s: Option<u64>,
}

fn known_hive(queen: &Queen, id: &str) -> Result<HiveId, ApiError> {
    let hive_id: HiveId =
        id.parse().map_err(|e: rbee_bus::IdError| ApiError::invalid("hive_id", e.to_string()))?;
    if queen.registry().get_hive(&hive_id, Instant::now()).is_none() {
        return Err(ApiError::NotFound(format!("no hive {hive_id}")));
    }
    Ok(hive_id)
}

/// `POST /v1/hives/{id}/drain`: nothing new goes to the hive; its workers stop once their jobs end
/// (or at the deadline).
pub async fn drain(
    State(queen): State<Arc<Queen>>,
    Path(id): Path<String>,
    axum::extract::Query(query): axum::extract::Query<DrainQuery>,
) -> Result<Response, ApiError> {
    let hive_id = known_hive(&queen, &id)?;
    let deadline = query.deadline_s.map_or(crate::drain::DEFAULT_DRAIN_DEADLINE, Duration::from_secs);
    if deadline > crate::drain::MAX_DRAIN_DEADLINE {
        let max = crate::drain::MAX_DRAIN_DEADLINE.as_secs();
        return Err(ApiError::invalid("deadline_s", format!("at most {max} seconds (a day)")));
    }
    let workers = crate::drain::start(&queen, hive_id.clone(), deadline);
    let body = serde_json::json!({"hive_id": hive_id, "draining": true, "workers": workers, "deadline_s": deadline.as_secs()});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `POST /v1/hives/{id}/undrain`: the hive takes work again.
pub async fn undrain(State(queen): State<Arc<Queen>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let hive_id = known_hive(&queen, &id)?;
    let was = crate::drain::stop(&queen, &hive_id);
    Ok(Json(serde_json::json!({"hive_id": hive_id, "draining": false, "was_draining": was})).into_response())
}
