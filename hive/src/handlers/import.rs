//! `models.import`: copies a GGUF file on the hive's machine into the catalog, but only from the
//! hive's import directories ([`crate::HiveConfig::import_dirs`], plus the catalog root).
//!
//! The path asked for is made canonical first (symlinks and `..` resolved), so a link inside an
//! import directory that points outside is refused like the outside path itself. A path that does not
//! exist, cannot be read, is not a regular file or lies outside gets one and the same answer, so a
//! request cannot probe which paths exist; and no error carries the file's bytes. The hive's own
//! `--import-model` files at start are configuration, not requests, and are not confined.

use std::path::{Path, PathBuf};

use rbee_bus::{ErrorCode, ModelImportRequest, ModelReply, WireError, SCHEMA_VERSION};

use super::models::{catalog_error, summary};
use crate::catalog::ModelCatalogError;
use crate::Hive;

/// The canonical directories imports may read from: the configured ones that exist, and the catalog
/// root.
pub fn allowed_dirs(hive: &Hive) -> Vec<PathBuf> {
    hive.config
        .import_dirs
        .iter()
        .chain(std::iter::once(&hive.config.catalog_root))
        .filter_map(|dir| std::fs::canonicalize(dir).ok())
        .collect()
}

/// `path` made canonical, when it is a regular file under one of `dirs` (canonical themselves).
pub fn confine(path: &Path, dirs: &[PathBuf]) -> Option<PathBuf> {
    let canonical = std::fs::canonicalize(path).ok()?;
    let inside = dirs.iter().any(|dir| canonical.starts_with(dir));
    (inside && canonical.is_file()).then_some(canonical)
}

/// Copies a GGUF file on this machine into the catalog.
pub async fn import(hive: &Hive, req: ModelImportRequest) -> Result<ModelReply, WireError> {
    let path = Path::new(&req.path);
    if !path.is_absolute() {
        return Err(WireError::invalid_field(
            "path",
            format!("path {:?} is not absolute (the hive reads it on its own machine)", req.path),
        ));
    }
    let dirs = allowed_dirs(hive);
    let Some(canonical) = confine(path, &dirs) else {
        tracing::warn!(path = ?req.path, "model import refused: not a file under the import directories");
        let listed: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        return Err(WireError::invalid_field(
            "path",
            format!(
                "cannot import {:?}: hive {} imports only files it can read under its import \
                 directories ({}; add one with --import-dir)",
                req.path,
                hive.config.hive_id,
                listed.join(", ")
            ),
        ));
    };
    let models = hive.models.clone();
    let entry = tokio::task::spawn_blocking(move || models.import_local(&canonical, req.model_id))
        .await
        .map_err(|e| WireError::new(ErrorCode::Internal, format!("import task failed: {e}")))?
        .map_err(|e| match e {
            // An io error names the canonical path and the os error; the path asked for is enough.
            ModelCatalogError::Io { .. } => {
                WireError::invalid_field("path", format!("cannot read {:?} on this hive", req.path))
            }
            e => catalog_error(e),
        })?;
    hive.workers.forget_load_failures(&entry.id);
    Ok(ModelReply {
        v: SCHEMA_VERSION,
        sha256: entry.sha256.clone().unwrap_or_default(),
        model: summary(&entry),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_under_the_dirs_pass() -> std::io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let allowed = tmp.path().join("allowed");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(allowed.join("sub"))?;
        std::fs::create_dir_all(&outside)?;
        std::fs::write(allowed.join("sub/m.gguf"), "x")?;
        std::fs::write(outside.join("secret"), "x")?;
        let dirs = vec![std::fs::canonicalize(&allowed)?];
        assert!(confine(&allowed.join("sub/m.gguf"), &dirs).is_some());
        assert!(confine(&allowed.join("sub/../sub/m.gguf"), &dirs).is_some());
        assert!(confine(&allowed.join("../outside/secret"), &dirs).is_none());
        assert!(confine(&allowed.join("sub"), &dirs).is_none(), "a directory is not a file");
        assert!(confine(&allowed.join("missing"), &dirs).is_none());
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(outside.join("secret"), allowed.join("link"))?;
            assert!(confine(&allowed.join("link"), &dirs).is_none());
        }
        // A sibling whose name starts like the allowed dir is not inside it.
        std::fs::create_dir_all(tmp.path().join("allowed2"))?;
        std::fs::write(tmp.path().join("allowed2/m.gguf"), "x")?;
        assert!(confine(&tmp.path().join("allowed2/m.gguf"), &dirs).is_none());
        Ok(())
    }
}
