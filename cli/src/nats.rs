//! Connecting to NATS from the CLI, with a message a person can act on when nothing answers.

use rbee_bus::connect::ConnectError;
use rbee_bus::{Bus, NatsConfig};

use crate::config::{Config, NatsIdentity};

/// Connects to the configured NATS server, as the configured identity if there is one.
pub async fn connect(config: &Config) -> anyhow::Result<Bus> {
    connect_as(&config.nats_url.value, config.nats_identity.as_ref().map(|s| &s.value)).await
}

/// Connects to `url` without credentials.
pub async fn connect_url(url: &str) -> anyhow::Result<Bus> {
    connect_as(url, None).await
}

/// Connects to `url` as `identity`.
pub async fn connect_as(url: &str, identity: Option<&NatsIdentity>) -> anyhow::Result<Bus> {
    let mut nats = NatsConfig::url(url);
    nats.name = Some("rbee-cli".to_owned());
    if let Some(identity) = identity {
        nats.user = Some(identity.user.clone());
        nats.password = Some(identity.password.clone());
        nats.inbox_prefix = identity.inbox_prefix.clone();
        nats.tls_ca = identity.ca.clone();
    }
    rbee_bus::connect(&nats).await.map_err(|e| match e {
        ConnectError::Connect { source, .. } => {
            use async_nats::ConnectErrorKind as Kind;
            let at = host_port(url);
            match source.kind() {
                Kind::AuthorizationViolation => anyhow::anyhow!(
                    "nats at {at} refused {} (secure mode: set RBEE_NATS_USER and RBEE_NATS_PASSWORD, or \
                     `set -a; . <secure dir>/cli.env`)",
                    if identity.is_some() { "these credentials" } else { "a client without credentials" }
                ),
                Kind::Tls => anyhow::anyhow!(
                    "tls to nats at {at} failed: {source} (secure mode: set RBEE_NATS_CA to the cluster's ca.pem)"
                ),
                _ => anyhow::anyhow!("nats not reachable at {at} (is `rbee up` running?)"),
            }
        }
        other => anyhow::Error::new(other),
    })
}

/// `host:port` of a NATS URL, credentials left out.
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, rest)| rest).unwrap_or(url);
    let rest = rest.rsplit_once('@').map(|(_, host)| host).unwrap_or(rest);
    rest.trim_end_matches('/').to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_port_drops_scheme_and_credentials() {
        assert_eq!(super::host_port("nats://u:p@h:4222"), "h:4222");
        assert_eq!(super::host_port("127.0.0.1:4222"), "127.0.0.1:4222");
    }
}
