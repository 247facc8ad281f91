//! Connecting to NATS: one or more URLs, every credential kind async-nats offers (including credentials
//! written in the URL, which async-nats would otherwise ignore), a short ping interval, and every
//! connection event logged.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::rpc::{Bus, Denials};

/// Default ping interval: a silent partition shows within about two of these, not after 60 s.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(5);

/// How to reach NATS and who to be there.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URLs (`nats://host:4222`, `tls://host:4222`); credentials in a URL are honoured.
    pub urls: Vec<String>,
    /// User name.
    pub user: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Token.
    pub token: Option<String>,
    /// An nkey seed (`SU...`).
    pub nkey_seed: Option<String>,
    /// A `.creds` file (JWT and seed).
    pub creds_file: Option<PathBuf>,
    /// A CA certificate (PEM) to trust; implies TLS.
    pub tls_ca: Option<PathBuf>,
    /// Require TLS even without a CA file.
    pub tls_required: bool,
    /// Prefix of reply inboxes (per identity in secure mode, so no identity can read another's replies).
    pub inbox_prefix: Option<String>,
    /// Connection name shown by the server's monitoring.
    pub name: Option<String>,
}

impl std::fmt::Debug for NatsConfig {
    // Secrets never reach a log: only whether they are set.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("urls", &self.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>())
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("nkey_seed", &self.nkey_seed.as_ref().map(|_| "<redacted>"))
            .field("creds_file", &self.creds_file)
            .field("tls_ca", &self.tls_ca)
            .field("tls_required", &self.tls_required)
            .field("inbox_prefix", &self.inbox_prefix)
            .field("name", &self.name)
            .finish()
    }
}

impl NatsConfig {
    /// A config for one URL and nothing else.
    pub fn url(url: impl Into<String>) -> Self {
        Self { urls: vec![url.into()], ..Self::default() }
    }
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A URL did not parse.
    #[error("invalid nats url {url}: {reason}")]
    BadUrl {
        /// The URL, credentials redacted.
        url: String,
        /// Why.
        reason: String,
    },
    /// The creds file could not be read.
    #[error("cannot read nats credentials file {path}: {source}")]
    Creds {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The server refused or could not be reached.
    #[error("cannot connect to nats at {urls}: {source}")]
    Connect {
        /// The URLs, credentials redacted.
        urls: String,
        /// Why.
        source: async_nats::ConnectError,
    },
}

/// A URL with any password or token replaced, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((creds, host)) => {
                let user = creds.split(':').next().unwrap_or_default();
                if creds.contains(':') {
                    format!("{scheme}://{user}:<redacted>@{host}")
                } else {
                    format!("{scheme}://<redacted>@{host}")
                }
            }
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Connects with retries on the initial connection left to the caller: the error is returned at once
/// so a CLI can say what to do. Reconnects after that are unlimited.
pub async fn connect(config: &NatsConfig) -> Result<Bus, ConnectError> {
    let urls =
        if config.urls.is_empty() { vec!["nats://127.0.0.1:4222".to_owned()] } else { config.urls.clone() };
    let redacted = urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>().join(",");
    let mut addrs = Vec::new();
    let mut url_user = None;
    let mut url_token = None;
    let mut tls_in_url = false;
    for raw in &urls {
        let addr: async_nats::ServerAddr = raw.parse().map_err(|e: std::io::Error| ConnectError::BadUrl {
            url: redact_url(raw),
            reason: e.to_string(),
        })?;
        tls_in_url |= addr.tls_required();
        match (addr.username(), addr.password()) {
            (Some(u), Some(p)) if !u.is_empty() => url_user = Some((u.to_owned(), p.to_owned())),
            (Some(t), None) if !t.is_empty() => url_token = Some(t.to_owned()),
            _ => {}
        }
        addrs.push(addr);
    }

    let denials = Denials::default();
    let events = denials.clone();
    let mut opts = async_nats::ConnectOptions::new()
        .ping_interval(DEFAULT_PING_INTERVAL)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .subscription_capacity(65_536)
        .event_callback(move |event| {
            let events = events.clone();
            async move { log_event(&events, event) }
        });
    if let Some(name) = &config.name {
        opts = opts.name(name);
    }
    if let Some((u, p)) = config.user.clone().zip(config.password.clone()).or(url_user) {
        opts = opts.user_and_password(u, p);
    }
    if let Some(t) = config.token.clone().or(url_token) {
        opts = opts.token(t);
    }
    if let Some(seed) = &config.nkey_seed {
        opts = opts.nkey(seed.clone());
    }
    if let Some(path) = &config.creds_file {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|source| ConnectError::Creds { path: path.clone(), source })?;
    }
    if let Some(ca) = &config.tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    } else if config.tls_required || tls_in_url {
        opts = opts.require_tls(true);
    }
    if let Some(prefix) = &config.inbox_prefix {
        opts = opts.custom_inbox_prefix(prefix);
    }
    let client = opts
        .connect(addrs)
        .await
        .map_err(|source| ConnectError::Connect { urls: redacted.clone(), source })?;
    tracing::debug!(urls = %redacted, "connected to nats");
    Ok(Bus::new(client, Arc::new(denials)))
}

fn log_event(denials: &Denials, event: async_nats::Event) {
    use async_nats::{Event, ServerError};
    match event {
        Event::Connected => tracing::info!("nats connected"),
        Event::Disconnected => tracing::warn!("nats disconnected, reconnecting"),
        Event::LameDuckMode => tracing::warn!("nats server entered lame duck mode"),
        Event::Draining => tracing::info!("nats connection draining"),
        Event::Closed => tracing::info!("nats connection closed"),
        Event::SlowConsumer(sid) => tracing::warn!(sid, "nats slow consumer: messages were dropped"),
        Event::ServerError(ServerError::Other(text))
            if text.to_ascii_lowercase().contains("permissions violation") =>
        {
            tracing::error!(error = %text, "nats permission denied");
            denials.record(&text);
        }
        Event::ServerError(ServerError::AuthorizationViolation) => {
            tracing::error!("nats authorization violation")
        }
        Event::ServerError(e) => tracing::error!(error = %e, "nats server error"),
        Event::ClientError(e) => tracing::error!(error = %e, "nats client error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_and_tokens() {
        assert_eq!(redact_url("nats://u:secret@h:4222"), "nats://u:<redacted>@h:4222");
        assert_eq!(redact_url("nats://tok@h:4222"), "nats://<redacted>@h:4222");
        assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
        let cfg = NatsConfig {
            password: Some("secret".into()),
            urls: vec!["nats://u:pw@h".into()],
            ..Default::default()
        };
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("secret") && !shown.contains("pw@"), "{shown}");
    }
}
