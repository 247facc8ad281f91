//! The NATS flags every daemon takes (flatten [`NatsArgs`] into its clap arguments) and the connect
//! that gives up at once: a daemon that cannot reach NATS at start exits with code 2.

use std::path::PathBuf;

use rbee_bus::{Bus, NatsConfig};

/// `--nats-url`, `--nats-creds`, `--nats-user`, `--nats-ca`, `--nats-inbox-prefix` (each also from its
/// `RBEE_NATS_*` variable); the password only ever comes from `RBEE_NATS_PASSWORD`.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma separated.
    #[arg(long, env = "RBEE_NATS_URL", default_value = "nats://127.0.0.1:4222", value_delimiter = ',')]
    pub nats_url: Vec<String>,
    /// NATS credentials file.
    #[arg(long, env = "RBEE_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// NATS user (password from RBEE_NATS_PASSWORD).
    #[arg(long, env = "RBEE_NATS_USER")]
    pub nats_user: Option<String>,
    /// CA certificate for TLS to NATS.
    #[arg(long, env = "RBEE_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
    /// Prefix of this process's NATS reply inboxes (secure mode: `_INBOX_<user>`).
    #[arg(long, env = "RBEE_NATS_INBOX_PREFIX")]
    pub nats_inbox_prefix: Option<String>,
}

impl NatsArgs {
    /// The connection settings, with `name` as the client name the server shows.
    pub fn config(&self, name: impl Into<String>) -> NatsConfig {
        NatsConfig {
            urls: self.nats_url.clone(),
            user: self.nats_user.clone(),
            password: std::env::var("RBEE_NATS_PASSWORD").ok(),
            creds_file: self.nats_creds.clone(),
            tls_ca: self.nats_ca.clone(),
            inbox_prefix: self.nats_inbox_prefix.clone(),
            name: Some(name.into()),
            ..NatsConfig::default()
        }
    }
}

/// The connection, or `None` after logging why there is none (the caller exits with code 2).
pub async fn connect_or_exit(config: &NatsConfig) -> Option<Bus> {
    match rbee_bus::connect(config).await {
        Ok(bus) => Some(bus),
        Err(e) => {
            tracing::error!(error = %e, "cannot connect to nats");
            None
        }
    }
}
