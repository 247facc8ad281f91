//! Requests about models: list the catalog, import a file on this machine ([`super::import`]), pull one from a URL with progress
//! events on `rbee.hive.<hive_id>.pulls.<pull_id>` (or by name from a Hugging Face style hub,
//! `hf:ORG/REPO:QUANT`, see [`crate::catalog::hf`]), and remove one no running worker uses. The catalog
//! itself (files, manifests, checksums, resumable downloads) is [`crate::catalog`]; this module turns
//! its results into replies and wire errors.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rbee_bus::{
    subject, ErrorCode, ModelId, ModelList, ModelPullAccepted, ModelPullEvent, ModelPullRequest,
    ModelRemoveReply, ModelRemoveRequest, ModelSummary, PullProgress, WireError, SCHEMA_VERSION,
};
use tokio_util::sync::CancellationToken;

use crate::catalog::artifact::validate_entry_id;
use crate::catalog::download::{DownloadError, DownloadProgress};
use crate::catalog::{hf, CatalogError, ModelCatalog, ModelCatalogError, ModelEntry};
use crate::Hive;

/// A catalog entry as listed on the bus.
pub fn summary(m: &ModelEntry) -> ModelSummary {
    ModelSummary {
        model_id: m.id.clone(),
        size_bytes: m.size,
        architecture: m.architecture.clone(),
        parameter_count: m.parameter_count,
        quantization: m.quantization.clone(),
        context_length: m.context_length,
        load_failures: None,
    }
}

/// Every model in the catalog, as listed on the bus.
pub fn summaries(hive: &Hive) -> Vec<ModelSummary> {
    hive.models
        .list()
        .iter()
        .map(|m| ModelSummary { load_failures: hive.workers.load_failures(&m.id), ..summary(m) })
        .collect()
}

/// The model listing.
pub fn list(hive: &Hive) -> ModelList {
    ModelList { v: SCHEMA_VERSION, models: summaries(hive) }
}

/// How often a running pull publishes its progress, at most.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);

pub(crate) fn catalog_error(e: ModelCatalogError) -> WireError {
    match e {
        ModelCatalogError::Catalog(CatalogError::AlreadyExists { id }) => {
            WireError::new(ErrorCode::Conflict, format!("model {id} is already in the catalog"))
        }
        ModelCatalogError::DownloadInProgress { id } => {
            WireError::new(ErrorCode::Conflict, format!("model {id} is already being downloaded"))
        }
        ModelCatalogError::NoDefaultId { .. } => {
            WireError::invalid_field("model_id", format!("{e}; pass a model id"))
        }
        ModelCatalogError::Download(DownloadError::TooLarge { .. }) => {
            WireError::new(ErrorCode::ModelDoesNotFit, e.to_string())
        }
        ModelCatalogError::Catalog(_) | ModelCatalogError::HttpClient(_) => {
            WireError::new(ErrorCode::Internal, e.to_string())
        }
        other => WireError::new(ErrorCode::BadRequest, other.to_string()),
    }
}

/// The id a pulled file gets when none is given: from the last path segment of the URL.
fn id_from_url(url: &reqwest::Url) -> Result<ModelId, WireError> {
    let name = url.path_segments().and_then(|mut s| s.next_back()).filter(|s| !s.is_empty()).unwrap_or("");
    ModelCatalog::model_id_default_for(Path::new(name)).map_err(|_| {
        WireError::invalid_field("model_id", format!("cannot derive a model id from {url}; pass one"))
    })
}

/// Checks a pull: the reply that says it started, and the download to run in the background (it
/// publishes progress, then `done` or `failed`; cancelled by `stop`, it says so and leaves the part
/// file to resume from). An `hf:` reference is resolved against the hub first (one request, bounded by
/// [`hf::LIST_TIMEOUT`]), so a reference that matches nothing is refused with what the repo has.
pub async fn pull(
    hive: &Arc<Hive>,
    req: ModelPullRequest,
    stop: &CancellationToken,
) -> Result<(ModelPullAccepted, impl std::future::Future<Output = ()> + Send + 'static), WireError> {
    if hive.shutting_down() {
        return Err(WireError::new(
            ErrorCode::ShuttingDown,
            format!("hive {} is shutting down", hive.config.hive_id),
        ));
    }
    if let Some(sha) = &req.sha256 {
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(WireError::invalid_field("sha256", format!("sha256 {sha:?} is not 64 hex digits")));
        }
    }
    let source = if hf::is_hf_ref(&req.url) { hub_source(hive, &req).await? } else { url_source(&req)? };
    let model_id = match req.model_id.clone() {
        Some(id) => id,
        None => id_from_url(&source.url)?,
    };
    // Before any byte is written: the id names a file and a folder under the catalog root.
    validate_entry_id(model_id.as_str()).map_err(|e| WireError::invalid_field("model_id", e.to_string()))?;
    if hive.models.contains(&model_id) {
        return Err(WireError::new(
            ErrorCode::Conflict,
            format!("model {model_id} is already in the catalog"),
        ));
    }
    if hive.models.is_downloading(&model_id) {
        return Err(WireError::new(
            ErrorCode::Conflict,
            format!("model {model_id} is already being downloaded"),
        ));
    }
    let accepted =
        ModelPullAccepted { v: SCHEMA_VERSION, pull_id: req.pull_id.clone(), model_id: model_id.clone() };
    let task = PullTask { hive: hive.clone(), model_id, source, req };
    Ok((accepted, task.run(stop.clone())))
}

/// Where a pull's bytes come from, once the request is understood.
struct Source {
    /// The http(s) URL downloaded.
    url: reqwest::Url,
    /// The sha256 to check: the request's, else the hub's.
    sha256: Option<String>,
    /// Sent as a bearer token with the download (the hub's `HF_TOKEN`); never logged.
    bearer: Option<String>,
}

/// A plain `http(s)://` pull.
fn url_source(req: &ModelPullRequest) -> Result<Source, WireError> {
    let url = reqwest::Url::parse(&req.url)
        .map_err(|e| WireError::invalid_field("url", format!("invalid url {:?}: {e}", req.url)))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(WireError::invalid_field(
            "url",
            format!("url {url} is not http, https or hf:ORG/REPO[/FILE.gguf|:QUANT]"),
        ));
    }
    Ok(Source { url, sha256: req.sha256.clone(), bearer: None })
}

/// An `hf:` pull: the file the reference means, its URL and the hub's sha256.
async fn hub_source(hive: &Hive, req: &ModelPullRequest) -> Result<Source, WireError> {
    let reference = hf::HfRef::parse(&req.url).map_err(|e| WireError::invalid_field("url", e.to_string()))?;
    let client = hive.models.http_client().map_err(catalog_error)?;
    let endpoint = &hive.config.hf_endpoint;
    let resolved = hf::resolve(&client, endpoint, &reference).await.map_err(|e| match e {
        hf::HfError::List { .. } => WireError::new(ErrorCode::Internal, e.to_string()),
        hf::HfError::NoRepo { .. } => WireError::new(ErrorCode::UnknownModel, e.to_string()),
        e => WireError::invalid_field("url", e.to_string()),
    })?;
    if let (Some(given), Some(hub)) = (&req.sha256, &resolved.sha256) {
        if !given.eq_ignore_ascii_case(hub) {
            return Err(WireError::invalid_field(
                "sha256",
                format!("sha256 {given} is not the hub's {hub} for {}", resolved.file),
            ));
        }
    }
    let url = reqwest::Url::parse(&resolved.url)
        .map_err(|e| WireError::invalid_field("url", format!("the hub gives no usable url ({e})")))?;
    tracing::info!(reference = %reference.display(), file = %resolved.file, size = ?resolved.size, "hub reference resolved");
    Ok(Source {
        url,
        sha256: req.sha256.clone().or(resolved.sha256),
        bearer: endpoint.token().map(str::to_owned),
    })
}

struct PullTask {
    hive: Arc<Hive>,
    /// The id the model gets (the request's, or derived from the URL).
    model_id: ModelId,
    /// What is downloaded.
    source: Source,
    req: ModelPullRequest,
}

impl PullTask {
    async fn publish(&self, progress: PullProgress) {
        let event = ModelPullEvent {
            v: SCHEMA_VERSION,
            meta: self.hive.stamper.next(),
            hive_id: self.hive.config.hive_id.clone(),
            pull_id: self.req.pull_id.clone(),
            model_id: self.model_id.clone(),
            progress,
        };
        let subject = subject::hive_pull(&self.hive.config.hive_id, &self.req.pull_id);
        if let Err(e) = self.hive.bus.publish(subject, &event).await {
            tracing::warn!(pull_id = %self.req.pull_id, error = %e, "cannot publish pull progress");
        }
    }

    async fn run(self, stop: CancellationToken) {
        let id = self.model_id.clone();
        tracing::info!(pull_id = %self.req.pull_id, model_id = %id, url = %self.req.url, "model pull started");
        let (tx, mut rx) = tokio::sync::watch::channel(DownloadProgress { downloaded: 0, total: None });
        let source = &self.source;
        let download = self.hive.models.download(
            source.url.as_str(),
            source.bearer.as_deref(),
            id.clone(),
            source.sha256.as_deref(),
            move |p| {
                let _ = tx.send(p);
            },
        );
        tokio::pin!(download);
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                result = &mut download => break Some(result),
                _ = stop.cancelled() => break None,
                _ = tick.tick() => {
                    if rx.has_changed().unwrap_or(false) {
                        let p = *rx.borrow_and_update();
                        self.publish(PullProgress::Progress { downloaded: p.downloaded, total: p.total }).await;
                    }
                }
            }
        };
        match result {
            Some(Ok(entry)) => {
                let p = *rx.borrow();
                self.publish(PullProgress::Progress {
                    downloaded: entry.size,
                    total: p.total.or(Some(entry.size)),
                })
                .await;
                tracing::info!(pull_id = %self.req.pull_id, model_id = %id, size = entry.size, "model pull done");
                self.hive.workers.forget_load_failures(&entry.id);
                self.publish(PullProgress::Done { model: summary(&entry) }).await;
            }
            Some(Err(e)) => {
                let error = catalog_error(e).error;
                tracing::warn!(pull_id = %self.req.pull_id, model_id = %id, error = %error.message, "model pull failed");
                self.publish(PullProgress::Failed { error }).await;
            }
            None => {
                let error = WireError::new(
                    ErrorCode::ShuttingDown,
                    format!(
                        "hive {} stopped during the download; pull again to resume it",
                        self.hive.config.hive_id
                    ),
                )
                .error;
                self.publish(PullProgress::Failed { error }).await;
            }
        }
        self.hive.heartbeat_soon();
    }
}

/// Deletes a model that no running worker of this hive uses.
pub fn remove(hive: &Hive, req: ModelRemoveRequest) -> Result<ModelRemoveReply, WireError> {
    let entry = hive.models.get(&req.model_id).map_err(|_| {
        WireError::new(
            ErrorCode::UnknownModel,
            format!("hive {} has no model {}", hive.config.hive_id, req.model_id),
        )
    })?;
    let users: Vec<String> = hive
        .workers
        .list()
        .into_iter()
        .filter(|w| w.is_running() && w.model_id == req.model_id)
        .map(|w| w.id.to_string())
        .collect();
    if !users.is_empty() {
        return Err(WireError::new(
            ErrorCode::Conflict,
            format!("model {} is in use by worker(s) {}; stop them first", req.model_id, users.join(", ")),
        ));
    }
    hive.models.remove(&req.model_id).map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
    hive.workers.forget_load_failures(&req.model_id);
    tracing::info!(model_id = %req.model_id, freed = entry.size, "model removed");
    Ok(ModelRemoveReply { v: SCHEMA_VERSION, model_id: req.model_id, freed_bytes: entry.size })
}
