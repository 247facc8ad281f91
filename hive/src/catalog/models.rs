//! The catalog of GGUF models this hive can load.
//!
//! Each entry directory holds `metadata.json` and `<id>.gguf`. A model gets in by
//! [`ModelCatalog::import_local`] (copied from a local file) or [`ModelCatalog::download`]; either
//! way its GGUF header is read first, so the entry carries the real architecture, parameter count,
//! quantization and context length, and a file that is not GGUF never enters.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rbee_bus::ModelId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::info;

use super::artifact::{now_ms, Artifact, CatalogError, CatalogProblem, FilesystemCatalog};
use super::download::{download_file_with, DownloadError, DownloadLimits, DownloadProgress};
use super::gguf::{read_gguf_info, GgufError, GgufInfo};

/// Hidden directory under the models root where downloads in progress (`.part` files) wait.
const DOWNLOADS_DIR: &str = ".downloads";

/// One model in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelEntry {
    /// The model id clients use; also the entry's directory name.
    pub id: ModelId,
    /// Where the GGUF file lies.
    pub path: PathBuf,
    /// File size in bytes.
    pub size: u64,
    /// `general.architecture`, as in `llama`.
    pub architecture: String,
    /// Parameters, counted from the tensor shapes.
    pub parameter_count: u64,
    /// Quantization name, as in `Q4_1`.
    pub quantization: String,
    /// Context length the model was trained for, in tokens.
    pub context_length: Option<u64>,
    /// sha256 of the file, lowercase hex, when known.
    pub sha256: Option<String>,
    /// Where it came from: the download url, or `file://` and the imported path.
    pub source: String,
    /// When it was added, in milliseconds since the Unix epoch.
    pub added_at: u64,
}

impl ModelEntry {
    fn from_gguf(
        id: ModelId,
        path: PathBuf,
        size: u64,
        info: GgufInfo,
        sha256: String,
        source: String,
    ) -> Self {
        Self {
            id,
            path,
            size,
            architecture: info.architecture,
            parameter_count: info.parameter_count,
            quantization: info.quantization,
            context_length: info.context_length,
            sha256: Some(sha256),
            source,
            added_at: now_ms(),
        }
    }
}

impl Artifact for ModelEntry {
    fn id(&self) -> &str {
        self.id.as_str()
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn size(&self) -> u64 {
        self.size
    }
}

/// Why a model catalog operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelCatalogError {
    /// The store underneath refused (not found, already there, disk error...).
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The file is not a GGUF model this hive can read.
    #[error("{} is not a usable GGUF model: {source}", path.display())]
    NotGguf {
        /// The file.
        path: PathBuf,
        /// What the GGUF reader found.
        source: GgufError,
    },
    /// The download failed.
    #[error(transparent)]
    Download(#[from] DownloadError),
    /// No model id can be made from this file name; pass one.
    #[error("cannot derive a model id from {}", path.display())]
    NoDefaultId {
        /// The file.
        path: PathBuf,
    },
    /// This model is being downloaded already.
    #[error("model {id} is already being downloaded")]
    DownloadInProgress {
        /// The model.
        id: ModelId,
    },
    /// Reading or copying a local file failed.
    #[error("io error at {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The HTTP client could not be built.
    #[error("cannot build an HTTP client: {0}")]
    HttpClient(reqwest::Error),
}

/// Models stored under one directory (normally [`super::CatalogPaths::models_dir`]).
#[derive(Debug, Clone)]
pub struct ModelCatalog {
    /// The generic store underneath.
    inner: FilesystemCatalog<ModelEntry>,
    /// The client downloads use; one is built on first use when none was given.
    http: Option<reqwest::Client>,
    /// Models being downloaded by this process, so two downloads never share one `.part` file.
    downloading: Arc<Mutex<HashSet<ModelId>>>,
    /// The largest model a download may bring, in bytes.
    max_download: u64,
}

/// The default of [`ModelCatalog::with_max_download`]: 256 GiB.
pub const DEFAULT_MAX_DOWNLOAD: u64 = 256 << 30;

impl ModelCatalog {
    /// Opens the model catalog at `root`, creating the directory if needed.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, CatalogError> {
        Ok(Self {
            inner: FilesystemCatalog::new(root)?,
            http: None,
            downloading: Arc::default(),
            max_download: DEFAULT_MAX_DOWNLOAD,
        })
    }

    /// Refuses downloads larger than `bytes` (announced or reached); the default is
    /// [`DEFAULT_MAX_DOWNLOAD`]. Downloads are also refused when they do not fit the free space.
    pub fn with_max_download(mut self, bytes: u64) -> Self {
        self.max_download = bytes;
        self
    }

    /// Uses `client` for downloads (for proxies, timeouts or tests).
    pub fn with_http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// The catalog's root directory.
    pub fn root(&self) -> &Path {
        self.inner.root()
    }

    /// The model stored as `id`.
    pub fn get(&self, id: &ModelId) -> Result<ModelEntry, CatalogError> {
        self.inner.get(id.as_str())
    }

    /// Where the GGUF file of model `id` lies.
    pub fn path_of(&self, id: &ModelId) -> Result<PathBuf, CatalogError> {
        self.get(id).map(|entry| entry.path)
    }

    /// Whether model `id` is stored.
    pub fn contains(&self, id: &ModelId) -> bool {
        self.inner.contains(id.as_str())
    }

    /// All sound entries, sorted by id; broken ones are logged and skipped.
    pub fn list(&self) -> Vec<ModelEntry> {
        self.inner.list()
    }

    /// All sound entries, and the broken ones with why they were skipped.
    pub fn list_with_problems(&self) -> (Vec<ModelEntry>, Vec<CatalogProblem>) {
        self.inner.list_with_problems()
    }

    /// Whether this process is downloading model `id` now.
    pub fn is_downloading(&self, id: &ModelId) -> bool {
        self.downloading.lock().unwrap_or_else(PoisonError::into_inner).contains(id)
    }

    /// Marks model `id` as used now (its `last_accessed`).
    pub fn touch(&self, id: &ModelId) -> Result<(), CatalogError> {
        self.inner.touch(id.as_str())
    }

    /// Deletes model `id` and its file.
    pub fn remove(&self, id: &ModelId) -> Result<(), CatalogError> {
        self.inner.remove(id.as_str())
    }

    /// The id a model file gets when none is given: its file stem, lowercased, with `.` and
    /// whitespace turned into `-` and anything but ASCII letters, digits, `-` and `_` dropped
    /// (`SmolLM2-135M-Instruct.Q4_1.gguf` becomes `smollm2-135m-instruct-q4_1`).
    pub fn model_id_default_for(path: &Path) -> Result<ModelId, ModelCatalogError> {
        let no_id = || ModelCatalogError::NoDefaultId { path: path.to_path_buf() };
        let stem = path.file_stem().and_then(|stem| stem.to_str()).ok_or_else(no_id)?;
        let mut id = String::new();
        for c in stem.chars() {
            let c = if c == '.' || c.is_whitespace() { '-' } else { c.to_ascii_lowercase() };
            let keep =
                c.is_ascii_alphanumeric() || c == '_' || (c == '-' && !id.is_empty() && !id.ends_with('-'));
            if keep {
                id.push(c);
            }
        }
        let id = id.trim_end_matches('-');
        let id = id.get(..rbee_bus::ids::MAX_ID_LEN).unwrap_or(id);
        ModelId::new(id).map_err(|_| no_id())
    }

    /// Copies the GGUF file at `path` into the catalog as `id` (derived from the file name when
    /// `None`), recording what its header says and its sha256. Refuses a file that is not GGUF and
    /// an id already stored. Blocking: large files take a while, so call it off the async runtime.
    pub fn import_local(&self, path: &Path, id: Option<ModelId>) -> Result<ModelEntry, ModelCatalogError> {
        let info = read_gguf_info(path).map_err(|error| gguf_error(path, error))?;
        let id = match id {
            Some(id) => id,
            None => Self::model_id_default_for(path)?,
        };
        if self.contains(&id) {
            return Err(CatalogError::AlreadyExists { id: id.to_string() }.into());
        }
        let staged = self.inner.staging_path(id.as_str())?;
        let result = copy_hashing(path, &staged).and_then(|(size, sha256)| {
            if size != info.file_size {
                let error = io::Error::other("the file changed while it was being copied");
                return Err(ModelCatalogError::Io { path: path.to_path_buf(), source: error });
            }
            let source =
                format!("file://{}", std::path::absolute(path).unwrap_or_else(|_| path.into()).display());
            let file_name = format!("{id}.gguf");
            let entry = self.inner.install(id.as_str(), &staged, &file_name, false, |final_path, size| {
                ModelEntry::from_gguf(id.clone(), final_path, size, info, sha256, source)
            })?;
            Ok(entry)
        });
        if result.is_err() {
            let _ = fs::remove_file(&staged);
        }
        let entry = result?;
        info!(id = %entry.id, path = %entry.path.display(), params = entry.parameter_count, "model imported");
        Ok(entry)
    }

    /// The HTTP client downloads and hub lookups use: the one set with the catalog, else a new one with
    /// bounded connect and read timeouts and [`super::download::redirect_policy`].
    pub fn http_client(&self) -> Result<reqwest::Client, ModelCatalogError> {
        match &self.http {
            Some(client) => Ok(client.clone()),
            None => reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(30))
                .read_timeout(std::time::Duration::from_secs(60))
                .redirect(super::download::redirect_policy())
                .build()
                .map_err(ModelCatalogError::HttpClient),
        }
    }

    /// Downloads the GGUF model at `url` into the catalog as `id`, resuming an earlier cut-off
    /// download of the same url, checking `expected_sha256` when given, and calling `progress`
    /// as bytes arrive. The size is capped (the maximum and the free space) and the GGUF magic is
    /// checked from the first bytes. On any failure nothing enters the catalog and no part is left.
    pub async fn download(
        &self,
        url: &str,
        bearer: Option<&str>,
        id: ModelId,
        expected_sha256: Option<&str>,
        progress: impl FnMut(DownloadProgress),
    ) -> Result<ModelEntry, ModelCatalogError> {
        super::artifact::validate_entry_id(id.as_str())?;
        if self.contains(&id) {
            return Err(CatalogError::AlreadyExists { id: id.to_string() }.into());
        }
        let _claim = DownloadClaim::new(&self.downloading, &id)?;
        let client = self.http_client()?;
        let downloads = self.root().join(DOWNLOADS_DIR);
        tokio::fs::create_dir_all(&downloads)
            .await
            .map_err(|source| ModelCatalogError::Io { path: downloads.clone(), source })?;
        // The url is part of the name so a `.part` is only ever resumed from the same source.
        let url_tag = &hex::encode(Sha256::digest(url.as_bytes()))[..12];
        let dest = downloads.join(format!("{id}-{url_tag}.gguf"));
        let limits = DownloadLimits {
            max_bytes: self.max_download,
            check_free_space: true,
            check_head: Some(super::gguf::check_head),
        };
        let done = download_file_with(&client, url, bearer, &dest, expected_sha256, limits, progress).await?;

        let catalog = self.clone();
        let source = url.to_owned();
        let install = move || {
            let info = read_gguf_info(&done.path).map_err(|error| gguf_error(&done.path, error))?;
            let file_name = format!("{id}.gguf");
            let entry = catalog.inner.install(id.as_str(), &done.path, &file_name, false, |path, size| {
                ModelEntry::from_gguf(id.clone(), path, size, info, done.sha256, source)
            })?;
            Ok(entry)
        };
        let result = tokio::task::spawn_blocking(install).await.unwrap_or_else(|join_error| {
            Err(ModelCatalogError::Io { path: dest.clone(), source: io::Error::other(join_error) })
        });
        if result.is_err() {
            let _ = tokio::fs::remove_file(&dest).await;
        }
        let entry = result?;
        info!(id = %entry.id, %url, params = entry.parameter_count, "model downloaded");
        Ok(entry)
    }
}

/// Maps a GGUF reader failure: a file that cannot be read is an io error, anything else means the
/// file is not a usable model.
fn gguf_error(path: &Path, error: GgufError) -> ModelCatalogError {
    match error {
        GgufError::Io { source, .. } => ModelCatalogError::Io { path: path.to_path_buf(), source },
        source => ModelCatalogError::NotGguf { path: path.to_path_buf(), source },
    }
}

/// Copies `from` to a new file `to`, synced, returning its size and sha256.
fn copy_hashing(from: &Path, to: &Path) -> Result<(u64, String), ModelCatalogError> {
    let io_from = |source| ModelCatalogError::Io { path: from.to_path_buf(), source };
    let io_to = |source| ModelCatalogError::Io { path: to.to_path_buf(), source };
    let mut reader = File::open(from).map_err(io_from)?;
    let mut writer = File::options().write(true).create_new(true).open(to).map_err(io_to)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let read = reader.read(&mut buf).map_err(io_from)?;
        if read == 0 {
            break;
        }
        writer.write_all(&buf[..read]).map_err(io_to)?;
        hasher.update(&buf[..read]);
        size += read as u64;
    }
    writer.sync_all().map_err(io_to)?;
    Ok((size, hex::encode(hasher.finalize())))
}

/// Marks a model as being downloaded by this process until dropped.
struct DownloadClaim {
    set: Arc<Mutex<HashSet<ModelId>>>,
    id: ModelId,
}

impl DownloadClaim {
    fn new(set: &Arc<Mutex<HashSet<ModelId>>>, id: &ModelId) -> Result<Self, ModelCatalogError> {
        let fresh = set.lock().unwrap_or_else(PoisonError::into_inner).insert(id.clone());
        if !fresh {
            return Err(ModelCatalogError::DownloadInProgress { id: id.clone() });
        }
        Ok(Self { set: Arc::clone(set), id: id.clone() })
    }
}

impl Drop for DownloadClaim {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ids_come_from_the_file_stem() {
        let id =
            |name: &str| ModelCatalog::model_id_default_for(Path::new(name)).map(|id| id.to_string()).ok();
        assert_eq!(id("/m/SmolLM2-135M-Instruct.Q4_1.gguf").as_deref(), Some("smollm2-135m-instruct-q4_1"));
        assert_eq!(id("My Model *v2*.gguf").as_deref(), Some("my-model-v2"));
        assert_eq!(id("..gguf"), None);
        assert_eq!(id("***.gguf"), None);
    }
}
