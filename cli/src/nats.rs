//! Connecting to NATS from the CLI, with a message a person can act on when nothing answers.

use rbee_bus::connect::ConnectError;
use rbee_bus::{Bus, NatsConfig};

use crate::config::Config;

/// Connects to the configured NATS server.
pub async fn connect(config: &Config) -> anyhow::Result<Bus> {
    connect_url(&config.nats_url.value).await
}

/// Connects to `url`.
pub async fn connect_url(url: &str) -> anyhow::Result<Bus> {
    let mut nats = NatsConfig::url(url);
    nats.name = Some("rbee-cli".to_owned());
    rbee_bus::connect(&nats).await.map_err(|e| match e {
        ConnectError::Connect { .. } => {
            anyhow::anyhow!("nats not reachable at {} (is `rbee up` running?)", host_port(url))
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
