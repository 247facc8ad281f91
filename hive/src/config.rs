//! What a hive is told at start.

use std::path::PathBuf;
use std::time::Duration;

use rbee_bus::{HiveId, ModelId};

use crate::catalog::CatalogPaths;
use crate::supervisor::RestartPolicy;

/// A model file to import into the catalog at start, unless its id is already there.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelImport {
    /// The GGUF file.
    pub path: PathBuf,
    /// Its id; derived from the file name when absent.
    pub id: Option<ModelId>,
}

impl std::str::FromStr for ModelImport {
    type Err = String;

    /// `PATH` or `PATH=ID`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.rsplit_once('=') {
            Some((path, id)) => {
                let id = id.parse().map_err(|e| format!("{e}"))?;
                Ok(Self { path: PathBuf::from(path), id: Some(id) })
            }
            None => Ok(Self { path: PathBuf::from(s), id: None }),
        }
    }
}

/// Everything a hive needs to run.
#[derive(Debug, Clone)]
pub struct HiveConfig {
    /// This hive's id: its subjects are `rbee.hive.<id>.*`.
    pub hive_id: HiveId,
    /// Root of the catalogs (`workers/`, `models/`) and the pid files (`run/`).
    pub catalog_root: PathBuf,
    /// The worker binary to register at start (the one built with this hive).
    pub worker_binary: Option<PathBuf>,
    /// Models to import at start.
    pub import_models: Vec<ModelImport>,
    /// Heartbeat interval of the hive and of the workers it spawns.
    pub heartbeat_interval: Duration,
    /// On shutdown, how long workers get before they are killed.
    pub stop_deadline: Duration,
    /// Restarts of crashed workers.
    pub restart: RestartPolicy,
    /// Arguments passed to every worker so it reaches NATS (`--nats-url ...`).
    pub worker_nats_args: Vec<String>,
    /// Secure mode: the worker identities this hive may hand out; workers get ids from this pool
    /// only, and a spawn is refused when every identity is in use. Empty: any worker id, and workers
    /// inherit the hive's NATS settings.
    pub worker_pool: Vec<rbee_bus::security::PoolIdentity>,
    /// The hub `hf:` pulls resolve against (`HF_ENDPOINT`, `HF_TOKEN`; the public hub by default).
    pub hf_endpoint: crate::catalog::hf::HfEndpoint,
    /// The largest model a pull may download, in bytes (also refused: more than the free space of
    /// the catalog's filesystem).
    pub max_model_bytes: u64,
    /// Where `models.import` requests may read files from (the catalog root is always allowed; files
    /// are made canonical first, so a symlink out of these is refused). `import_models` above is
    /// configuration and not confined.
    pub import_dirs: Vec<PathBuf>,
    /// How a model whose workers fail to load is retried, then refused.
    pub load_retry: crate::load_failures::LoadRetry,
    /// Declare at most this much memory for the CPU (bytes): its total is capped there and its free
    /// memory is that less the estimates of the workers running on it (for machines shared with
    /// other work, and for tests that make a machine small).
    pub memory_limit: Option<u64>,
}

impl Default for HiveConfig {
    /// The defaults of `rbee-hive`'s flags: the id is the host name (made a valid subject token), the
    /// catalogs are under the platform's cache directory (e.g. `~/.cache/rbee`).
    fn default() -> Self {
        Self {
            hive_id: default_hive_id(),
            catalog_root: CatalogPaths::default_root(),
            worker_binary: None,
            import_models: Vec::new(),
            heartbeat_interval: Duration::from_millis(rbee_bus::DEFAULT_HEARTBEAT_INTERVAL_MS),
            stop_deadline: Duration::from_secs(10),
            restart: RestartPolicy::default(),
            worker_nats_args: Vec::new(),
            worker_pool: Vec::new(),
            hf_endpoint: crate::catalog::hf::HfEndpoint::from_env(|_| None),
            max_model_bytes: crate::catalog::models::DEFAULT_MAX_DOWNLOAD,
            import_dirs: default_import_dirs(),
            load_retry: crate::load_failures::LoadRetry::default(),
            memory_limit: None,
        }
    }
}

/// The default import directory: the user's `~/models` (none without a home directory).
pub fn default_import_dirs() -> Vec<PathBuf> {
    directories::UserDirs::new().map(|dirs| dirs.home_dir().join("models")).into_iter().collect()
}

/// The host name, made a valid subject token (`hive` when there is none).
pub fn default_hive_id() -> HiveId {
    let host = sysinfo::System::host_name().unwrap_or_default();
    let id: String = host
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .collect();
    HiveId::new(id).unwrap_or_else(|_| HiveId::new("hive").unwrap_or_else(|_| HiveId::generate()))
}
