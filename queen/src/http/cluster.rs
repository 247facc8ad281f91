//! The cluster: hives, workers, spawn and stop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rbee_bus::{subject, HiveId, SpawnReply, SpawnRequest, StopReply, StopRequest, WorkerId, SCHEMA_VERSION};
use serde::Deserialize;

use super::openai::model_id;
use super::JsonBody;
use crate::error::ApiError;
use crate::jobs::spawns::{spawn_request, SPAWN_REPLY_TIMEOUT};
use crate::placement::place;
use crate::scheduler::{Placement, PlacementRequest};
use crate::Queen;

/// `GET /v1/hives`
pub async fn hives(State(queen): State<Arc<Queen>>) -> impl IntoResponse {
    Json(serde_json::json!({ "hives": queen.registry().list_hives(Instant::now()) }))
}

/// `GET /v1/workers`
pub async fn workers(State(queen): State<Arc<Queen>>) -> impl IntoResponse {
    Json(serde_json::json!({ "workers": queen.registry().list_workers(Instant::now()) }))
}

/// Body of `POST /v1/workers`.
#[derive(Debug, Deserialize)]
pub struct SpawnBody {
    model: String,
    hive: Option<String>,
    device: Option<String>,
    slots: Option<u32>,
    ctx_per_slot: Option<u32>,
    threads: Option<u32>,
}

/// `POST /v1/workers`: spawns a worker on the named hive, or where the scheduler would.
pub async fn spawn(
    State(queen): State<Arc<Queen>>,
    JsonBody(body): JsonBody<SpawnBody>,
) -> Result<Response, ApiError> {
    let model = model_id(&body.model)?;
    let (hive_id, device) = match body.hive {
        Some(h) => (h.parse::<HiveId>().map_err(|e| ApiError::invalid("hive", e.to_string()))?, body.device),
        None => {
            // A new worker whatever serves the model now: the scheduler's spawn rule alone.
            let request = PlacementRequest { spawn_only: true, ..PlacementRequest::new(model.clone()) };
            match place(&mut queen.registry(), &request, Instant::now()) {
                Placement::Spawn { hive_id, device } => (hive_id, body.device.or(Some(device))),
                Placement::Queue { reason } | Placement::Refuse { reason } => {
                    return Err(ApiError::Unavailable(reason))
                }
                Placement::Unavailable { reason } => return Err(ApiError::ModelFailing(reason)),
                Placement::Assign { .. } => {
                    return Err(ApiError::Unavailable("no hive can spawn this model".to_owned()))
                }
            }
        }
    };
    let request = SpawnRequest {
        slots: body.slots,
        ctx_per_slot: body.ctx_per_slot,
        threads: body.threads,
        ..spawn_request(model, device)
    };
    let reply: SpawnReply = queen
        .bus
        .request(subject::hive_spawn(&hive_id), &request, SPAWN_REPLY_TIMEOUT)
        .await
        .map_err(|e| ApiError::from_hive(&hive_id, e))?;
    let body = serde_json::json!({"worker_id": reply.worker_id, "hive_id": hive_id, "pid": reply.pid, "device": reply.device});
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
    let request = StopRequest { v: SCHEMA_VERSION, worker_id, deadline_ms: Some(10_000) };
    let reply: StopReply = queen
        .bus
        .request(subject::hive_stop(&hive_id), &request, Duration::from_secs(20))
        .await
        .map_err(|e| ApiError::from_hive(&hive_id, e))?;
    Ok(Json(reply).into_response())
}
