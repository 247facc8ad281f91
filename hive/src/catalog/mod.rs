//! The hive's on-disk catalogs: worker binaries and GGUF models.
//!
//! Both are a [`FilesystemCatalog`]: one directory per entry with a `metadata.json`, written
//! atomically, with broken entries reported and skipped rather than fatal. The layout under the
//! catalog root ([`CatalogPaths`]) is:
//!
//! ```text
//! <root>/workers/cpu-llm-worker-rbee-v0.1.0-linux/{metadata.json, cpu-llm-worker-rbee}
//! <root>/models/smollm2-135m-instruct/{metadata.json, smollm2-135m-instruct.gguf}
//! <root>/models/.downloads/   downloads in progress (`.part` files, resumable)
//! <root>/*/.staging/          entries being assembled
//! ```
//!
//! - [`artifact`]: the generic catalog and its errors.
//! - [`workers`]: worker binaries by type, version and platform.
//! - [`models`]: GGUF models, imported from a local file or downloaded.
//! - [`gguf`]: the GGUF header reader that gives models their real metadata.
//! - [`download`]: resumable, sha256-checked HTTP download.
//! - [`hf`]: `hf:ORG/REPO:QUANT` references resolved against a Hugging Face style hub.

use std::path::{Path, PathBuf};

pub mod artifact;
pub mod download;
pub mod gguf;
pub mod hf;
pub mod models;
pub mod workers;

pub use artifact::{Artifact, CatalogEntry, CatalogError, CatalogProblem, FilesystemCatalog};
pub use download::{
    download_file, download_file_with, DownloadError, DownloadLimits, DownloadProgress, Downloaded,
};
pub use gguf::{read_gguf_info, GgufError, GgufInfo};
pub use models::{ModelCatalog, ModelCatalogError, ModelEntry};
pub use workers::{Platform, WorkerBinary, WorkerCatalog, WorkerType};

/// Where the catalogs live on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogPaths {
    /// The directory holding `workers/` and `models/`.
    pub root: PathBuf,
}

impl CatalogPaths {
    /// Catalogs under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The user's cache directory for rbee (`~/.cache/rbee` on Linux), or `./.rbee-cache` when the
    /// system has no home directory.
    pub fn default_root() -> PathBuf {
        directories::ProjectDirs::from("", "", "rbee")
            .map(|dirs| dirs.cache_dir().to_path_buf())
            .unwrap_or_else(|| PathBuf::from(".rbee-cache"))
    }

    /// The catalog root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where worker binaries are stored: `<root>/workers`.
    pub fn workers_dir(&self) -> PathBuf {
        self.root.join("workers")
    }

    /// Where models are stored: `<root>/models`.
    pub fn models_dir(&self) -> PathBuf {
        self.root.join("models")
    }
}

impl Default for CatalogPaths {
    /// Catalogs under [`CatalogPaths::default_root`].
    fn default() -> Self {
        Self::new(Self::default_root())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_hang_off_the_root() {
        let paths = CatalogPaths::new("/srv/rbee");
        assert_eq!(paths.workers_dir(), PathBuf::from("/srv/rbee/workers"));
        assert_eq!(paths.models_dir(), PathBuf::from("/srv/rbee/models"));
        assert!(
            CatalogPaths::default().root().ends_with("rbee")
                || CatalogPaths::default().root().ends_with(".rbee-cache")
        );
    }
}
