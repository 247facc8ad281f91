//! The hive's request/reply handlers, one file per concern: [`workers`] (spawn, stop, the worker
//! listing), [`models`] (list, pull, remove), [`import`] (a
//! local file, confined to the import directories) and [`devices`]. They are served through the NATS
//! service API (`rbee-hive`), so `$SRV.PING/INFO/STATS` list every hive. [`ROUTES`] names every
//! endpoint, its subject and its handler; [`serve`] subscribes to all of them and runs one loop per
//! endpoint, each request answered in its own tracked task.

pub mod devices;
pub mod import;
pub mod models;
pub mod workers;

use std::future::Future;
use std::sync::Arc;

use async_nats::service::{endpoint::Endpoint, Request, Service};
use futures::future::BoxFuture;
use futures::StreamExt;
use rbee_bus::{subject, ErrorCode, HiveId, WireError};
use rbee_daemon::Tasks;
use tokio_util::sync::CancellationToken;

use crate::Hive;

/// One request subject of a hive.
pub struct Route {
    /// The endpoint's name in the service API.
    pub name: &'static str,
    /// Its subject for a hive id.
    pub subject: fn(&HiveId) -> String,
    /// Answers one request.
    pub handle: fn(Arc<Hive>, Request) -> BoxFuture<'static, ()>,
}

/// Every endpoint a hive serves.
pub const ROUTES: [Route; 8] = [
    Route { name: "spawn", subject: subject::hive_spawn, handle: |h, r| Box::pin(spawn(h, r)) },
    Route { name: "stop", subject: subject::hive_stop, handle: |h, r| Box::pin(stop(h, r)) },
    Route { name: "workers", subject: subject::hive_workers, handle: |h, r| Box::pin(worker_list(h, r)) },
    Route { name: "models", subject: subject::hive_models, handle: |h, r| Box::pin(model_list(h, r)) },
    Route { name: "devices", subject: subject::hive_devices, handle: |h, r| Box::pin(device_list(h, r)) },
    Route {
        name: "models-import",
        subject: subject::hive_models_import,
        handle: |h, r| Box::pin(import(h, r)),
    },
    Route { name: "models-pull", subject: subject::hive_models_pull, handle: |h, r| Box::pin(pull(h, r)) },
    Route {
        name: "models-remove",
        subject: subject::hive_models_remove,
        handle: |h, r| Box::pin(remove(h, r)),
    },
];

/// Subscribes to every route, then answers requests in `requests` until `shutdown`.
pub async fn serve(
    hive: &Arc<Hive>,
    service: &Service,
    requests: &Tasks,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut endpoints = Vec::with_capacity(ROUTES.len());
    for route in &ROUTES {
        let subject = (route.subject)(&hive.config.hive_id);
        endpoints.push((route, rbee_daemon::service::endpoint(service, route.name, subject).await?));
    }
    for (route, endpoint) in endpoints {
        requests.spawn(
            route.name,
            endpoint_loop(hive.clone(), route, endpoint, requests.clone(), shutdown.clone()),
        );
    }
    Ok(())
}

async fn endpoint_loop(
    hive: Arc<Hive>,
    route: &'static Route,
    mut endpoint: Endpoint,
    requests: Tasks,
    shutdown: CancellationToken,
) {
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => return,
            request = endpoint.next() => match request { Some(r) => r, None => return },
        };
        requests.spawn(route.name, (route.handle)(hive.clone(), request));
    }
}

async fn spawn(hive: Arc<Hive>, req: Request) {
    answer(&hive, &req, "spawn", |spawn| workers::spawn(&hive, spawn)).await;
    hive.heartbeat_soon();
}

async fn stop(hive: Arc<Hive>, req: Request) {
    answer(&hive, &req, "stop", |stop| workers::stop(&hive, stop)).await;
    hive.heartbeat_soon();
}

async fn worker_list(hive: Arc<Hive>, req: Request) {
    let _ = rbee_bus::rpc::respond_guarded(&req, "worker list", async { Ok(workers::list(&hive)) }).await;
}

async fn model_list(hive: Arc<Hive>, req: Request) {
    let _ = rbee_bus::rpc::respond_guarded(&req, "model list", async { Ok(models::list(&hive)) }).await;
}

async fn device_list(hive: Arc<Hive>, req: Request) {
    let list = tokio::task::spawn_blocking(move || devices::list(&hive))
        .await
        .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()));
    let _ = rbee_bus::rpc::respond_guarded(&req, "device list", async { list }).await;
}

async fn import(hive: Arc<Hive>, req: Request) {
    answer(&hive, &req, "model import", |request| import::import(&hive, request)).await;
    hive.heartbeat_soon();
}

/// Checked (and an `hf:` reference resolved) here; the download runs on as a background task that
/// shutdown cancels.
async fn pull(hive: Arc<Hive>, req: Request) {
    answer(&hive, &req, "model pull", |pull| async {
        let stop = hive.background.token();
        let (accepted, download) = models::pull(&hive, pull, &stop).await?;
        hive.background.spawn("model download", download);
        Ok(accepted)
    })
    .await;
}

async fn remove(hive: Arc<Hive>, req: Request) {
    answer(&hive, &req, "model removal", |remove| async { models::remove(&hive, remove) }).await;
    hive.heartbeat_soon();
}

/// Decodes the request (a message that does not decode is counted as a rejection and answered with
/// `bad_request`), runs `handle`, replies, and logs a refusal as `<what> refused`. A panic in the
/// handler is answered at once with an `internal` error ([`rbee_bus::rpc::respond_guarded`]).
async fn answer<Req, Rep, F, Fut>(hive: &Hive, req: &Request, what: &str, handle: F)
where
    Req: serde::de::DeserializeOwned,
    Rep: serde::Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<Rep, WireError>>,
{
    let decoded = rbee_bus::rpc::decode(&req.message.subject, &req.message.payload).map_err(|e| {
        hive.reject(&req.message.subject, &e);
        WireError::new(ErrorCode::BadRequest, e.to_string())
    });
    let result = rbee_bus::rpc::respond_guarded(req, what, async {
        match decoded {
            Ok(message) => handle(message).await,
            Err(e) => Err(e),
        }
    })
    .await;
    if let Err(e) = &result {
        tracing::info!(code = e.code().as_str(), reason = %e.error.message, "{what} refused");
    }
}
