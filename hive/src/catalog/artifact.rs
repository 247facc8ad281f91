//! The one on-disk catalog abstraction that models and worker binaries share.
//!
//! A [`FilesystemCatalog`] is a directory with one subdirectory per entry, named by the entry id.
//! Each entry directory holds `metadata.json` (a [`CatalogEntry`]) and usually the artifact file
//! itself. Entries are written whole: an entry with its file is assembled under `<root>/.staging/`
//! and renamed into place ([`FilesystemCatalog::install`]), and every metadata write goes through a
//! temporary `metadata.json.tmp.*`, fsynced, then renamed. A reader therefore sees an entry's
//! metadata either complete or not at all.
//!
//! Whatever is still found broken on disk (unparseable metadata, a missing or truncated artifact file,
//! a directory whose name is not the id inside it) is reported, logged and skipped; it never stops
//! the rest of the catalog from listing.
//!
//! Consistency contract: one process writes a catalog root at a time (the hive that owns it).
//! Readers in other processes are safe at any time.

use std::fs::{self, File};
use std::io::{self, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

/// Name of the metadata file inside every entry directory.
pub const METADATA_FILE: &str = "metadata.json";

/// Hidden directory under the root where entries and files are assembled before they are renamed
/// into place. Names starting with `.` are never listed as entries.
pub const STAGING_DIR: &str = ".staging";

/// Longest entry id accepted, in bytes (a common file-name limit).
pub const MAX_ENTRY_ID_LEN: usize = 255;

/// Something a catalog stores: a file (or a record of one) with a stable id.
pub trait Artifact: Serialize + DeserializeOwned + Clone {
    /// The entry id, which is also the entry's directory name.
    fn id(&self) -> &str;
    /// Where the artifact file lies.
    fn path(&self) -> &Path;
    /// The artifact file's size in bytes, as recorded when it was added.
    fn size(&self) -> u64;
}

/// The content of an entry's `metadata.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatalogEntry<T> {
    /// The stored artifact.
    pub artifact: T,
    /// When the entry was written, in milliseconds since the Unix epoch.
    pub added_at: u64,
    /// When the entry was last marked as used ([`FilesystemCatalog::touch`]), if ever.
    pub last_accessed: Option<u64>,
}

/// A broken entry found while listing: skipped, and reported here so callers can show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogProblem {
    /// The entry directory or file at fault.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

/// Why a catalog operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// No entry with this id.
    #[error("no catalog entry {id:?}")]
    NotFound {
        /// The id looked up.
        id: String,
    },
    /// An entry with this id is already stored.
    #[error("catalog entry {id:?} already exists")]
    AlreadyExists {
        /// The id that clashed.
        id: String,
    },
    /// The id cannot be used as a directory name.
    #[error("invalid catalog entry id {id:?}: {reason}")]
    InvalidId {
        /// The refused id.
        id: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A filesystem operation failed.
    #[error("io error at {}: {source}", path.display())]
    Io {
        /// The path the operation was on.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The entry exists on disk but is unusable.
    #[error("corrupt catalog entry at {}: {reason}", path.display())]
    Corrupt {
        /// The entry directory or file at fault.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Shorthand for wrapping an [`io::Error`] with the path it happened at.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CatalogError + '_ {
    move |source| CatalogError::Io { path: path.to_path_buf(), source }
}

/// Milliseconds since the Unix epoch, now (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Checks that `id` is safe to use as one directory name under the catalog root.
pub fn validate_entry_id(id: &str) -> Result<(), CatalogError> {
    let refuse = |reason| Err(CatalogError::InvalidId { id: id.to_owned(), reason });
    if id.is_empty() {
        return refuse("it is empty");
    }
    if id.len() > MAX_ENTRY_ID_LEN {
        return refuse("it is longer than 255 bytes");
    }
    if id.starts_with('.') {
        return refuse("it starts with '.', which is reserved for hidden files");
    }
    if id.contains("..") {
        return refuse("it contains '..'");
    }
    if id.chars().any(|c| matches!(c, '/' | '\\' | ':') || c.is_control()) {
        return refuse("it contains a path separator, ':' or a control character");
    }
    Ok(())
}

/// A catalog of artifacts of one kind, stored under one root directory.
#[derive(Debug, Clone)]
pub struct FilesystemCatalog<T> {
    /// The directory holding one subdirectory per entry.
    root: PathBuf,
    /// The catalog stores `T` but owns none.
    _artifact: PhantomData<fn() -> T>,
}

impl<T: Artifact> FilesystemCatalog<T> {
    /// Opens the catalog at `root`, creating the directory if needed.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, CatalogError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        Ok(Self { root, _artifact: PhantomData })
    }

    /// The catalog's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory entry `id` lives (or would live) in.
    pub fn entry_dir(&self, id: &str) -> Result<PathBuf, CatalogError> {
        validate_entry_id(id)?;
        Ok(self.root.join(id))
    }

    /// A fresh, unused path under the staging directory, on the same filesystem as the entries,
    /// for assembling a file that [`FilesystemCatalog::install`] will move into an entry.
    pub fn staging_path(&self, hint: &str) -> Result<PathBuf, CatalogError> {
        let staging = self.root.join(STAGING_DIR);
        fs::create_dir_all(&staging).map_err(io_err(&staging))?;
        let hint: String = hint.chars().filter(|c| c.is_ascii_alphanumeric() || "-_".contains(*c)).collect();
        Ok(staging.join(format!("{hint}.{}", uuid::Uuid::new_v4().simple())))
    }

    /// Whether a readable-looking entry `id` exists (its metadata file is present).
    pub fn contains(&self, id: &str) -> bool {
        self.entry_dir(id).map(|dir| dir.join(METADATA_FILE).is_file()).unwrap_or(false)
    }

    /// Records `artifact`, whose file is already where [`Artifact::path`] says. Refuses an id that
    /// is already stored.
    pub fn add(&self, artifact: T) -> Result<(), CatalogError> {
        self.write_entry(artifact, false)
    }

    /// Records `artifact`, replacing the metadata of any entry with the same id (other files in
    /// the entry directory stay).
    pub fn replace(&self, artifact: T) -> Result<(), CatalogError> {
        self.write_entry(artifact, true)
    }

    fn write_entry(&self, artifact: T, replace: bool) -> Result<(), CatalogError> {
        let id = artifact.id().to_owned();
        let dir = self.entry_dir(&id)?;
        if !replace && self.contains(&id) {
            return Err(CatalogError::AlreadyExists { id });
        }
        let file = artifact.path().to_path_buf();
        fs::metadata(&file).map_err(io_err(&file))?;
        // The artifact file may already lie inside the entry directory, so only the metadata file
        // is swapped (atomically); the directory stays.
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        sync_dir(&self.root);
        let entry = CatalogEntry { artifact, added_at: now_ms(), last_accessed: None };
        write_metadata(&dir, &entry)?;
        debug!(%id, root = %self.root.display(), "catalog entry written");
        Ok(())
    }

    /// Moves the file at `staged_file` (usually from [`FilesystemCatalog::staging_path`]) into entry
    /// `id` as `file_name`, builds the artifact from its final path and size with `make`, and
    /// records it; the entry appears whole or not at all. With `replace`, an existing entry with the
    /// same id is swapped out, otherwise it is refused and `staged_file` is left untouched.
    pub fn install(
        &self,
        id: &str,
        staged_file: &Path,
        file_name: &str,
        replace: bool,
        make: impl FnOnce(PathBuf, u64) -> T,
    ) -> Result<T, CatalogError> {
        let dir = self.entry_dir(id)?;
        validate_entry_id(file_name)?;
        if !replace && dir.exists() {
            return Err(CatalogError::AlreadyExists { id: id.to_owned() });
        }
        let size = fs::metadata(staged_file).map_err(io_err(staged_file))?.len();
        let artifact = make(dir.join(file_name), size);
        if artifact.id() != id {
            return Err(CatalogError::InvalidId {
                id: artifact.id().to_owned(),
                reason: "the artifact's id differs from the entry it is installed as",
            });
        }
        let staged_dir = self.staging_path(id)?;
        fs::create_dir(&staged_dir).map_err(io_err(&staged_dir))?;
        let staged_target = staged_dir.join(file_name);
        if let Err(source) = fs::rename(staged_file, &staged_target) {
            let _ = fs::remove_dir_all(&staged_dir);
            return Err(CatalogError::Io { path: staged_file.to_path_buf(), source });
        }
        let entry = CatalogEntry { artifact: artifact.clone(), added_at: now_ms(), last_accessed: None };
        let result =
            write_metadata(&staged_dir, &entry).and_then(|()| self.swap_in(id, &staged_dir, replace));
        if let Err(error) = result {
            // Hand the file back so the caller can retry or clean it up.
            let _ = fs::rename(&staged_target, staged_file);
            let _ = fs::remove_dir_all(&staged_dir);
            return Err(error);
        }
        Ok(artifact)
    }

    /// Renames a fully assembled entry directory into place as `id`.
    fn swap_in(&self, id: &str, staged_dir: &Path, replace: bool) -> Result<(), CatalogError> {
        let dir = self.root.join(id);
        let mut retired = None;
        if dir.exists() {
            if !replace {
                return Err(CatalogError::AlreadyExists { id: id.to_owned() });
            }
            let trash = self.staging_path(&format!("{id}-old"))?;
            fs::rename(&dir, &trash).map_err(io_err(&dir))?;
            retired = Some(trash);
        }
        if let Err(source) = fs::rename(staged_dir, &dir) {
            if let Some(trash) = &retired {
                let _ = fs::rename(trash, &dir);
            }
            return Err(CatalogError::Io { path: dir, source });
        }
        sync_dir(&self.root);
        if let Some(trash) = retired {
            if let Err(error) = fs::remove_dir_all(&trash) {
                warn!(path = %trash.display(), %error, "could not delete a replaced catalog entry");
            }
        }
        debug!(%id, root = %self.root.display(), "catalog entry written");
        Ok(())
    }

    /// The full record of entry `id`, checked like [`FilesystemCatalog::list`] checks entries.
    pub fn entry(&self, id: &str) -> Result<CatalogEntry<T>, CatalogError> {
        let dir = self.entry_dir(id)?;
        if !dir.exists() {
            return Err(CatalogError::NotFound { id: id.to_owned() });
        }
        read_entry(&dir).map_err(|reason| CatalogError::Corrupt { path: dir, reason })
    }

    /// The artifact stored as `id`.
    pub fn get(&self, id: &str) -> Result<T, CatalogError> {
        self.entry(id).map(|entry| entry.artifact)
    }

    /// Marks entry `id` as used now.
    pub fn touch(&self, id: &str) -> Result<(), CatalogError> {
        let mut entry = self.entry(id)?;
        entry.last_accessed = Some(now_ms());
        write_metadata(&self.root.join(id), &entry)
    }

    /// All sound entries, sorted by id. Broken entries are logged and skipped.
    pub fn list(&self) -> Vec<T> {
        self.list_with_problems().0
    }

    /// All sound entries sorted by id, and every broken one found, each with why it was skipped.
    pub fn list_with_problems(&self) -> (Vec<T>, Vec<CatalogProblem>) {
        let mut artifacts = Vec::new();
        let mut problems = Vec::new();
        let mut report = |path: PathBuf, reason: String| {
            warn!(path = %path.display(), %reason, "skipping broken catalog entry");
            problems.push(CatalogProblem { path, reason });
        };
        let dir_entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(error) => {
                report(self.root.clone(), format!("cannot read catalog directory: {error}"));
                return (artifacts, problems);
            }
        };
        for dir_entry in dir_entries {
            let dir_entry = match dir_entry {
                Ok(dir_entry) => dir_entry,
                Err(error) => {
                    report(self.root.clone(), format!("cannot read catalog directory: {error}"));
                    continue;
                }
            };
            let path = dir_entry.path();
            let name = dir_entry.file_name();
            let Some(name) = name.to_str() else {
                report(path, "entry name is not valid UTF-8".to_owned());
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            if !path.is_dir() {
                report(path, "not a directory".to_owned());
                continue;
            }
            match read_entry::<T>(&path) {
                Ok(entry) => artifacts.push(entry.artifact),
                Err(reason) => report(path, reason),
            }
        }
        artifacts.sort_by(|a, b| a.id().cmp(b.id()));
        (artifacts, problems)
    }

    /// Deletes entry `id` and everything in its directory.
    pub fn remove(&self, id: &str) -> Result<(), CatalogError> {
        let dir = self.entry_dir(id)?;
        if !dir.exists() {
            return Err(CatalogError::NotFound { id: id.to_owned() });
        }
        // Move it out of sight first, so a half-deleted entry is never listed.
        let trash = self.staging_path(&format!("{id}-removed"))?;
        fs::rename(&dir, &trash).map_err(io_err(&dir))?;
        fs::remove_dir_all(&trash).map_err(io_err(&trash))?;
        debug!(%id, root = %self.root.display(), "catalog entry removed");
        Ok(())
    }
}

/// Reads and checks one entry directory; the error is the reason it is unusable.
fn read_entry<T: Artifact>(dir: &Path) -> Result<CatalogEntry<T>, String> {
    let metadata_path = dir.join(METADATA_FILE);
    let bytes = match fs::read(&metadata_path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(format!("{METADATA_FILE} is missing"));
        }
        Err(error) => return Err(format!("cannot read {METADATA_FILE}: {error}")),
    };
    let entry: CatalogEntry<T> =
        serde_json::from_slice(&bytes).map_err(|error| format!("unparseable {METADATA_FILE}: {error}"))?;
    let name = dir.file_name().and_then(|name| name.to_str()).unwrap_or_default();
    let artifact = &entry.artifact;
    if artifact.id() != name {
        return Err(format!("metadata id {:?} does not match directory name {name:?}", artifact.id()));
    }
    match fs::metadata(artifact.path()) {
        Ok(meta) if !meta.is_file() => {
            Err(format!("artifact {} is not a regular file", artifact.path().display()))
        }
        Ok(meta) if meta.len() != artifact.size() => Err(format!(
            "artifact {} is {} bytes, metadata says {}",
            artifact.path().display(),
            meta.len(),
            artifact.size()
        )),
        Ok(_) => Ok(entry),
        Err(error) => Err(format!("artifact {} is unreadable: {error}", artifact.path().display())),
    }
}

/// Writes `metadata.json` in `dir` atomically: a temporary `metadata.json.tmp.*`, fsync, rename.
fn write_metadata<T: Serialize>(dir: &Path, entry: &CatalogEntry<T>) -> Result<(), CatalogError> {
    let json = serde_json::to_vec_pretty(entry).map_err(|error| CatalogError::Corrupt {
        path: dir.to_path_buf(),
        reason: format!("cannot serialize metadata: {error}"),
    })?;
    // Unique per write, so two writers of the same entry never publish each other's half file.
    let tmp = dir.join(format!("{METADATA_FILE}.tmp.{}", uuid::Uuid::new_v4().simple()));
    let written = File::create(&tmp).and_then(|mut file| {
        file.write_all(&json)?;
        file.sync_all()
    });
    let target = dir.join(METADATA_FILE);
    if let Err(source) = written.and_then(|()| fs::rename(&tmp, &target)) {
        let _ = fs::remove_file(&tmp);
        return Err(CatalogError::Io { path: target, source });
    }
    sync_dir(dir);
    Ok(())
}

/// Flushes a directory's entries (renames) to disk where the platform allows it; best effort.
pub(crate) fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Err(error) = File::open(dir).and_then(|d| d.sync_all()) {
        debug!(path = %dir.display(), %error, "directory fsync failed");
    }
    #[cfg(not(unix))]
    let _ = dir;
}
