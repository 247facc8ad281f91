//! The join file `rbee up --host` writes and `rbee join` reads on another machine: where the
//! cluster's NATS routes and the queen's API are, and the default model. In plain mode it is
//! `<data_dir>/join.toml` and holds no secret; in secure mode each machine named with `--join` gets
//! its own, `<data_dir>/join-<HIVE_ID>.toml`, mode 0600, with what it needs ([`SecureJoin`]: CA
//! certificate, route password, its certificate and identities, no other machine's).

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::secure::cluster::SecureJoin;

/// The port nats-server takes cluster routes on, on every machine.
pub const ROUTE_PORT: u16 = 6222;
/// The name of the NATS cluster every machine's nats-server joins.
pub const CLUSTER_NAME: &str = "rbee";

/// What another machine needs to join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinFile {
    /// Cluster routes of the nats-servers to join (`nats-route://ADDR:6222`).
    pub routes: Vec<String>,
    /// The port nats-server takes clients on, on every machine.
    pub nats_port: u16,
    /// The queen's HTTP API, as other machines reach it.
    pub api: String,
    /// The model a joining hive imports when the machine has its file.
    pub model: String,
    /// Secure mode: TLS routes and the joining machines' identities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure: Option<SecureJoin>,
}

impl JoinFile {
    /// Reads and checks a join file.
    pub fn read(path: &Path) -> anyhow::Result<JoinFile> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        // The parser's own message may quote the file, and a join file holds passwords: only where.
        let file: JoinFile = toml::from_str(&text).map_err(|e| {
            let before = text.get(..e.span().map_or(0, |span| span.start)).unwrap_or("");
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            anyhow::anyhow!("{} is not a join file (line {line}, column {column})", path.display())
        })?;
        if file.routes.is_empty() || file.routes.iter().any(|r| !r.starts_with("nats-route://")) {
            anyhow::bail!("{}: routes must be nats-route://HOST:PORT URLs", path.display());
        }
        if file.secure.as_ref().is_some_and(|s| s.machines.is_empty()) {
            anyhow::bail!("{}: a secure join file names no machine", path.display());
        }
        Ok(file)
    }

    /// Writes it, with a comment saying what it is for.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let body = toml::to_string(self).context("cannot encode the join file")?;
        let text = format!(
            "# rbee join file, written by `rbee up --host`. On another machine of the same network:\n\
             #   rbee join {} --host <that machine's address>\n{body}",
            path.display()
        );
        let written = match self.secure {
            Some(_) => rbee_bus::security::write_private(path, text.as_bytes()),
            None => std::fs::write(path, text),
        };
        written.with_context(|| format!("cannot write {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_file_reads_back_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("join.toml");
        let file = JoinFile {
            routes: vec!["nats-route://198.18.0.1:6222".into()],
            nats_port: 4222,
            api: "http://198.18.0.1:7833".into(),
            model: "smollm2-135m-instruct".into(),
            secure: None,
        };
        file.write(&path).expect("write");
        assert_eq!(JoinFile::read(&path).expect("read"), file);
        std::fs::write(&path, "routes = [\"http://x\"]\nnats_port = 1\napi = \"a\"\nmodel = \"m\"\n")
            .expect("w");
        assert!(JoinFile::read(&path).is_err());
        std::fs::write(&path, "nonsense").expect("w");
        assert!(JoinFile::read(&path).is_err());
        // A broken value next to a secret: the error says where, and quotes nothing.
        std::fs::write(&path, "routes = [\"nats-route://x:1\"]\nnats_port = \"s3cret-pw\"\n").expect("w");
        let error = JoinFile::read(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("line 2") && !error.contains("s3cret"), "{error}");
    }
}
