//! The cluster: hives, workers, spawn and stop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rbee_bus::{
    subject, BusError, HiveId, SpawnReply, SpawnRequest, StopReply, StopRequest, WorkerId, SCHEMA_VERSION,
};
use serde::Deserialize;

use super::openai::model_id;
use super::JsonBody;
use crate::error::ApiError;
use crate::scheduler::{schedule, Placement, PlacementRequest};
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

fn bus_error(e: BusError) -> ApiError {
    match e {
        BusError::Remote { error, .. } => match error.code() {
            rbee_bus::ErrorCode::UnknownModel => ApiError::UnknownModel(error.error.message),
            rbee_bus::ErrorCode::NotFound => ApiError::NotFound(error.error.message),
            rbee_bus::ErrorCode::InvalidParams => {
                ApiError::invalid(error.error.field.clone().unwrap_or_default(), error.error.message)
            }
            rbee_bus::ErrorCode::ModelDoesNotFit
            | rbee_bus::ErrorCode::MissingWorkerBinary
            | rbee_bus::ErrorCode::UnknownDevice => ApiError::BadRequest(error.error.message),
            _ => ApiError::Unavailable(error.error.message),
        },
        other => ApiError::Unavailable(other.to_string()),
    }
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
            let snapshot = queen.registry().snapshot(Instant::now());
            let req = PlacementRequest {
                model_id: model.clone(),
                exclude_workers: Vec::new(),
                estimated_bytes: None,
                queue_len: 0,
                queue_capacity: 1,
                prefix: Vec::new(),
            };
            // Spawn even when a worker already serves the model: ask the scheduler as if none did.
            let mut without_workers = snapshot.clone();
            without_workers.workers.clear();
            match schedule(&without_workers, &req) {
                Placement::Spawn { hive_id, device } => (hive_id, body.device.or(Some(device))),
                Placement::Queue { reason } | Placement::Refuse { reason } => {
                    return Err(ApiError::Unavailable(reason))
                }
                Placement::Assign { .. } => {
                    return Err(ApiError::Unavailable("no hive can spawn this model".to_owned()))
                }
            }
        }
    };
    let request = SpawnRequest {
        v: SCHEMA_VERSION,
        model_id: model,
        device,
        slots: body.slots,
        ctx_per_slot: body.ctx_per_slot,
        worker_type: None,
        worker_id: None,
        threads: body.threads,
    };
    let reply: SpawnReply = queen
        .bus
        .request(subject::hive_spawn(&hive_id), &request, Duration::from_secs(30))
        .await
        .map_err(bus_error)?;
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
        .map_err(bus_error)?;
    Ok(Json(reply).into_response())
}
