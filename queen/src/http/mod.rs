//! The HTTP front door (axum): OpenAI-compatible endpoints ([`openai`]), Ollama-compatible ones
//! ([`ollama`]), rbee jobs ([`jobs`]), the
//! cluster ([`cluster`]), model catalogs ([`models`]), health and metrics ([`ops`]), and the dashboard
//! at `/` ([`dashboard`]). An optional bearer key guards everything but `/health` and the dashboard's
//! page (which holds no data); an optional admin key is then the only one that may administer (spawn and stop
//! workers, drain hives, import, pull and remove models).

pub mod cluster;
pub mod dashboard;
pub mod jobs;
pub mod models;
pub mod ollama;
pub mod openai;
pub mod ops;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;

use crate::error::ApiError;
use crate::Queen;

/// The whole API.
pub fn router(queen: Arc<Queen>) -> Router {
    let admin = Router::new()
        .route("/v1/models/import", post(models::import))
        .route("/v1/models/pull", post(models::pull))
        .route("/v1/models/{id}", delete(models::remove))
        .route("/v1/workers", post(cluster::spawn))
        .route("/v1/workers/{id}", delete(cluster::stop))
        .route("/v1/hives/{id}/drain", post(cluster::drain))
        .route("/v1/hives/{id}/undrain", post(cluster::undrain))
        .route("/api/pull", post(ollama::pull))
        .layer(axum::middleware::from_fn_with_state(queen.clone(), require_leader))
        .layer(axum::middleware::from_fn_with_state(queen.clone(), require_admin_key));
    let guarded = Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/models", get(openai::models))
        .route("/v1/jobs", post(jobs::create).get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::show).delete(jobs::cancel))
        .route("/v1/jobs/{id}/stream", get(jobs::stream))
        .route("/v1/hives", get(cluster::hives))
        .route("/v1/workers", get(cluster::workers))
        .route("/metrics", get(ops::metrics))
        .route("/v1/dashboard/events", get(dashboard::events))
        .route("/api/tags", get(ollama::tags))
        .route("/api/ps", get(ollama::ps))
        .route("/api/version", get(ollama::version))
        .route("/api/show", post(ollama::show))
        .route("/api/chat", post(ollama::chat))
        .route("/api/generate", post(ollama::generate))
        .route("/api/embed", post(ollama::embed))
        .merge(admin)
        .layer(axum::middleware::from_fn_with_state(queen.clone(), require_key));
    Router::new()
        .route("/health", get(ops::health))
        .route("/", get(dashboard::page))
        .merge(guarded)
        .fallback(|| async { ApiError::NotFound("no such endpoint".to_owned()) })
        .layer(axum::extract::DefaultBodyLimit::max(4 * 1024 * 1024))
        .with_state(queen)
}

fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

fn matches(given: Option<&str>, key: &Option<String>) -> bool {
    match (given, key) {
        (Some(g), Some(k)) => constant_time_eq(g.as_bytes(), k.as_bytes()),
        _ => false,
    }
}

/// Any route but `/health`: the API key or the admin key, when either is set.
async fn require_key(State(queen): State<Arc<Queen>>, request: Request, next: Next) -> Response {
    let config = &queen.config;
    if config.api_key.is_some() || config.admin_key.is_some() {
        let given = bearer(&request);
        if !matches(given, &config.api_key) && !matches(given, &config.admin_key) {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(request).await
}

/// Administrative routes: only the admin key, when one is set (runs after [`require_key`]).
async fn require_admin_key(State(queen): State<Arc<Queen>>, request: Request, next: Next) -> Response {
    if queen.config.admin_key.is_some() && !matches(bearer(&request), &queen.config.admin_key) {
        return ApiError::Forbidden("this route administers the cluster: it needs the admin key".to_owned())
            .into_response();
    }
    next.run(request).await
}

/// Administrative routes act on the cluster: only the leader does (a standby names it).
async fn require_leader(State(queen): State<Arc<Queen>>, request: Request, next: Next) -> Response {
    if !queen.leadership.leads() {
        let what = format!("{} {}", request.method(), request.uri().path());
        return ApiError::NotLeader(queen.leadership.not_leader_message(&what)).into_response();
    }
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parses a JSON body into `T`, turning axum's rejection into an OpenAI-style 400.
pub struct JsonBody<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => {
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    Err(ApiError::BodyTooLarge("request body is over the 4 MiB limit".to_owned()))
                } else {
                    Err(ApiError::BadRequest(rejection.body_text()))
                }
            }
        }
    }
}
