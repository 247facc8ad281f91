//! The catalog of worker binaries, by worker type, version and platform.
//!
//! Entry ids read `{type}-v{version}-{platform}`, for example `cpu-llm-worker-rbee-v0.1.0-linux`;
//! each entry directory holds `metadata.json` and the binary itself.

use std::cmp::Ordering;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::info;

use super::artifact::{io_err, now_ms, Artifact, CatalogError, CatalogProblem, FilesystemCatalog};

/// Which worker program a binary is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WorkerType {
    /// LLM inference on the CPU: `cpu-llm-worker-rbee`.
    CpuLlm,
    /// LLM inference on an NVIDIA GPU: `cuda-llm-worker-rbee`.
    CudaLlm,
    /// LLM inference on Apple silicon: `metal-llm-worker-rbee` (macOS only).
    MetalLlm,
}

impl WorkerType {
    /// Every worker type.
    pub const ALL: [WorkerType; 3] = [WorkerType::CpuLlm, WorkerType::CudaLlm, WorkerType::MetalLlm];

    /// The program name, which is also the first part of catalog ids.
    pub fn binary_name(self) -> &'static str {
        match self {
            WorkerType::CpuLlm => "cpu-llm-worker-rbee",
            WorkerType::CudaLlm => "cuda-llm-worker-rbee",
            WorkerType::MetalLlm => "metal-llm-worker-rbee",
        }
    }
}

impl fmt::Display for WorkerType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.binary_name())
    }
}

/// The operating system a binary runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Platform {
    /// Linux.
    Linux,
    /// macOS.
    MacOS,
    /// Windows.
    Windows,
}

impl Platform {
    /// The platform this program was built for. Unix systems other than macOS count as Linux.
    pub fn current() -> Self {
        if cfg!(target_os = "macos") {
            Platform::MacOS
        } else if cfg!(target_os = "windows") {
            Platform::Windows
        } else {
            Platform::Linux
        }
    }

    /// The lowercase name used in catalog ids: `linux`, `macos` or `windows`.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Linux => "linux",
            Platform::MacOS => "macos",
            Platform::Windows => "windows",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One worker binary in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerBinary {
    /// `{type}-v{version}-{platform}`, also the entry's directory name.
    pub id: String,
    /// Which worker program this is.
    pub worker_type: WorkerType,
    /// The operating system it runs on.
    pub platform: Platform,
    /// Where the executable lies.
    pub path: PathBuf,
    /// The executable's size in bytes, to notice a truncated or replaced file.
    pub size: u64,
    /// The program version, as in `0.1.0`.
    pub version: String,
    /// When it was added, in milliseconds since the Unix epoch.
    pub added_at: u64,
}

impl WorkerBinary {
    /// The catalog id of a binary: `{type}-v{version}-{platform}`.
    pub fn id_for(worker_type: WorkerType, version: &str, platform: Platform) -> String {
        format!("{}-v{version}-{}", worker_type.binary_name(), platform.as_str())
    }

    /// A record for the binary at `path`, with its id derived and `added_at` set to now.
    pub fn new(
        worker_type: WorkerType,
        platform: Platform,
        version: impl Into<String>,
        path: impl Into<PathBuf>,
        size: u64,
    ) -> Self {
        let version = version.into();
        Self {
            id: Self::id_for(worker_type, &version, platform),
            worker_type,
            platform,
            path: path.into(),
            size,
            version,
            added_at: now_ms(),
        }
    }
}

impl Artifact for WorkerBinary {
    fn id(&self) -> &str {
        &self.id
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn size(&self) -> u64 {
        self.size
    }
}

/// Worker binaries stored under one directory (normally [`super::CatalogPaths::workers_dir`]).
#[derive(Debug, Clone)]
pub struct WorkerCatalog {
    /// The generic store underneath.
    inner: FilesystemCatalog<WorkerBinary>,
}

impl WorkerCatalog {
    /// Opens the worker catalog at `root`, creating the directory if needed.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, CatalogError> {
        Ok(Self { inner: FilesystemCatalog::new(root)? })
    }

    /// The catalog's root directory.
    pub fn root(&self) -> &Path {
        self.inner.root()
    }

    /// Records a binary whose file already lies at `binary.path`; refuses an id already stored.
    pub fn add(&self, binary: WorkerBinary) -> Result<(), CatalogError> {
        self.inner.add(binary)
    }

    /// The binary stored as `id`.
    pub fn get(&self, id: &str) -> Result<WorkerBinary, CatalogError> {
        self.inner.get(id)
    }

    /// Whether a binary is stored as `id`.
    pub fn contains(&self, id: &str) -> bool {
        self.inner.contains(id)
    }

    /// All sound entries, sorted by id; broken ones are logged and skipped.
    pub fn list(&self) -> Vec<WorkerBinary> {
        self.inner.list()
    }

    /// All sound entries, and the broken ones with why they were skipped.
    pub fn list_with_problems(&self) -> (Vec<WorkerBinary>, Vec<CatalogProblem>) {
        self.inner.list_with_problems()
    }

    /// Deletes entry `id`, with the binary inside its directory.
    pub fn remove(&self, id: &str) -> Result<(), CatalogError> {
        self.inner.remove(id)
    }

    /// The newest binary of `worker_type` for `platform`, if any.
    pub fn find_by_type_and_platform(
        &self,
        worker_type: WorkerType,
        platform: Platform,
    ) -> Option<WorkerBinary> {
        self.list()
            .into_iter()
            .filter(|binary| binary.worker_type == worker_type && binary.platform == platform)
            .max_by(|a, b| compare_versions(&a.version, &b.version))
    }

    /// Stores the binary built at `source` as `worker_type` at `version` for this platform, and
    /// records it, replacing an earlier record with the same id. The file is hard-linked into the
    /// catalog when it is already executable and on the same filesystem, else copied; either way
    /// it is staged under a temporary name, made executable, and renamed into place.
    pub fn register_binary(
        &self,
        worker_type: WorkerType,
        version: &str,
        source: &Path,
    ) -> Result<WorkerBinary, CatalogError> {
        validate_version(version)?;
        let platform = Platform::current();
        let id = WorkerBinary::id_for(worker_type, version, platform);
        let source_meta = fs::metadata(source).map_err(io_err(source))?;
        if !source_meta.is_file() {
            return Err(CatalogError::Io {
                path: source.to_path_buf(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
            });
        }
        let staged = self.inner.staging_path(&id)?;
        if let Err(error) = stage_executable(source, &source_meta, &staged) {
            let _ = fs::remove_file(&staged);
            return Err(error);
        }
        let file_name = format!("{}{}", worker_type.binary_name(), std::env::consts::EXE_SUFFIX);
        let added_at = now_ms();
        let result = self.inner.install(&id, &staged, &file_name, true, |path, size| WorkerBinary {
            id: id.clone(),
            worker_type,
            platform,
            path,
            size,
            version: version.to_owned(),
            added_at,
        });
        if result.is_err() {
            let _ = fs::remove_file(&staged);
        }
        let binary = result?;
        info!(id = %binary.id, path = %binary.path.display(), size = binary.size, "worker binary registered");
        Ok(binary)
    }
}

/// Puts an executable copy of `source` at `staged`: a hard link when `source` is already executable
/// (so the link changes nothing about the source), otherwise a synced copy with the executable bits set.
fn stage_executable(source: &Path, source_meta: &fs::Metadata, staged: &Path) -> Result<(), CatalogError> {
    if is_executable(source_meta) && fs::hard_link(source, staged).is_ok() {
        return Ok(());
    }
    fs::copy(source, staged).map_err(io_err(staged))?;
    set_executable(staged)?;
    File::open(staged).and_then(|file| file.sync_all()).map_err(io_err(staged))
}

#[cfg(unix)]
fn is_executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 == 0o111
}

#[cfg(not(unix))]
fn is_executable(_meta: &fs::Metadata) -> bool {
    true
}

#[cfg(unix)]
fn set_executable(path: &Path) -> Result<(), CatalogError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path).map_err(io_err(path))?.permissions().mode();
    fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o755)).map_err(io_err(path))
}

#[cfg(not(unix))]
fn set_executable(_path: &Path) -> Result<(), CatalogError> {
    Ok(())
}

/// Refuses a version that would make an odd id: it must be short and use only `[A-Za-z0-9.+_-]`.
fn validate_version(version: &str) -> Result<(), CatalogError> {
    let valid = !version.is_empty()
        && version.len() <= 64
        && !version.contains("..")
        && version.chars().all(|c| c.is_ascii_alphanumeric() || ".+_-".contains(c));
    if valid {
        return Ok(());
    }
    Err(CatalogError::InvalidId {
        id: version.to_owned(),
        reason: "a version must be 1-64 characters of [A-Za-z0-9.+_-] without '..'",
    })
}

/// One dot-separated version component; numbers order numerically and before text.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum VersionPart<'a> {
    Number(u64),
    Text(&'a str),
}

fn version_parts(text: &str) -> Vec<VersionPart<'_>> {
    text.split('.').map(|part| part.parse().map_or(VersionPart::Text(part), VersionPart::Number)).collect()
}

/// Orders versions the semver way where they are semver (`0.10.0 > 0.9.1`, `1.0.0 > 1.0.0-rc1`,
/// build metadata after `+` ignored) and sensibly where they are not.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn split(version: &str) -> (&str, Option<&str>) {
        let version = version.split_once('+').map_or(version, |(core, _build)| core);
        match version.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (version, None),
        }
    }
    let ((a_core, a_pre), (b_core, b_pre)) = (split(a), split(b));
    version_parts(a_core).cmp(&version_parts(b_core)).then_with(|| match (a_pre, b_pre) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(a_pre), Some(b_pre)) => version_parts(a_pre).cmp(&version_parts(b_pre)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_naming_convention() {
        let id = WorkerBinary::id_for(WorkerType::CpuLlm, "0.1.0", Platform::Linux);
        assert_eq!(id, "cpu-llm-worker-rbee-v0.1.0-linux");
        let id = WorkerBinary::id_for(WorkerType::MetalLlm, "1.2.3", Platform::MacOS);
        assert_eq!(id, "metal-llm-worker-rbee-v1.2.3-macos");
    }

    #[test]
    fn versions_order_like_semver() {
        assert_eq!(compare_versions("0.10.0", "0.9.1"), Ordering::Greater);
        assert_eq!(compare_versions("1.0.0", "1.0.0-rc1"), Ordering::Greater);
        assert_eq!(compare_versions("1.0.0-rc.2", "1.0.0-rc.10"), Ordering::Less);
        assert_eq!(compare_versions("1.0.0+abc", "1.0.0"), Ordering::Equal);
        assert_eq!(compare_versions("1.0", "1.0.1"), Ordering::Less);
    }

    #[test]
    fn odd_versions_are_refused() {
        for bad in ["", "1/2", "..", "1 0", "a".repeat(65).as_str()] {
            assert!(validate_version(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_version("0.1.0-rc.1+build_7").is_ok());
    }
}
