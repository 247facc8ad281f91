//! Secure mode across machines. Every machine runs its own nats-server node; the nodes talk over
//! routes with TLS both ways (each end shows a certificate of the cluster's CA, valid for its own
//! address) and one route password. A node lets in only the processes of its machine: the first
//! machine's node every identity of the cluster, a joining machine's node its hive and that hive's
//! worker pool, each with the permissions of its role, enforced where a client connects.
//!
//! What that does not protect against: routes are trusted. A node with the route password is a
//! full member of the cluster, and NATS applies no permissions to what arrives over a route, so
//! whoever is root on a joined machine can change its node's configuration, let in an identity of
//! their own and publish or subscribe anything. Secure mode keeps out the network, not a machine's
//! owner. The queen's HTTP API on `--host ADDR` is plain HTTP (the API key crosses the network in
//! cleartext): put it behind TLS or keep clients on the first machine.
//!
//! The first machine knows the others up front (`rbee up --host ADDR --secure --join ID=ADDR`): it
//! issues each a certificate for its address and the identities of its hive and workers, and writes
//! each its own join file ([`SecureJoin`] with one [`Machine`], mode 0600) with the CA certificate
//! and the route password. The CA key, the queen's identity and the HTTP keys stay on the first
//! machine. Treat a join file as a secret: the route password lets a node into the cluster.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rbee_bus::security::{self, Identity, PoolIdentity, Role, SecurityConfig};
use rbee_bus::HiveId;
use serde::{Deserialize, Serialize};

use super::server_config::{self, ClusterOptions, ServerOptions, TlsFiles};
use crate::up::join_file::{CLUSTER_NAME, ROUTE_PORT};

/// The user every route authenticates as.
pub const ROUTE_USER: &str = "route";

/// A machine that will join: its hive id and its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joiner {
    /// The hive it runs.
    pub hive_id: HiveId,
    /// Its address on the network the machines share.
    pub host: IpAddr,
}

impl std::str::FromStr for Joiner {
    type Err = anyhow::Error;

    /// `HIVE_ID=ADDR`.
    fn from_str(text: &str) -> anyhow::Result<Self> {
        let (id, addr) = text.split_once('=').with_context(|| format!("{text}: expected HIVE_ID=ADDR"))?;
        let hive_id = HiveId::new(id).with_context(|| format!("{text}: bad hive id"))?;
        let host = addr.parse().with_context(|| format!("{text}: {addr} is not an IP address"))?;
        Ok(Self { hive_id, host })
    }
}

/// The secure part of a join file: what the joining machines need, and nothing of the first machine's.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecureJoin {
    /// The CA certificate (PEM) every node and client checks certificates against.
    pub ca: String,
    /// The password of [`ROUTE_USER`].
    pub route_password: String,
    /// One entry per machine that may join.
    pub machines: Vec<Machine>,
}

/// What one joining machine gets.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// Its address; `rbee join --host` picks the entry by it.
    pub host: IpAddr,
    /// Its hive.
    pub hive_id: HiveId,
    /// Its node's certificate (PEM), for its address, localhost and 127.0.0.1.
    pub cert: String,
    /// The certificate's key (PEM).
    pub key: String,
    /// The hive's NATS user.
    pub hive_user: String,
    /// The hive's NATS password.
    pub hive_password: String,
    /// The identities of the workers the hive may start.
    pub pool: Vec<PoolIdentity>,
}

impl std::fmt::Debug for SecureJoin {
    // Keys and passwords never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let machines: Vec<String> =
            self.machines.iter().map(|m| format!("{}={}", m.hive_id, m.host)).collect();
        f.debug_struct("SecureJoin").field("machines", &machines).finish_non_exhaustive()
    }
}

/// The route password kept in `<dir>/route-password` (made the first time), so nodes that joined
/// earlier still get in after the first machine restarts.
pub fn route_password(dir: &Path) -> anyhow::Result<String> {
    let file = dir.join("route-password");
    if let Ok(text) = std::fs::read_to_string(&file) {
        if text.trim().len() >= 32 {
            return Ok(text.trim().to_owned());
        }
    }
    let password = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    security::write_private(&file, format!("{password}\n").as_bytes())
        .with_context(|| format!("cannot write {}", file.display()))?;
    Ok(password)
}

/// The cluster block of `host`'s node.
pub fn cluster_options(host: IpAddr, routes: &[String], password: &str, ca: &Path) -> ClusterOptions {
    ClusterOptions {
        server_name: format!("rbee-{host}"),
        name: CLUSTER_NAME.to_owned(),
        listen: std::net::SocketAddr::new(host, ROUTE_PORT).to_string(),
        routes: routes.to_vec(),
        user: ROUTE_USER.to_owned(),
        password: password.to_owned(),
        ca: ca.to_path_buf(),
    }
}

/// The join entries of `joiners`: a certificate each (signed by `issue`, which gets the SANs) and the
/// identities `config` holds for their hives.
pub fn machines(
    config: &SecurityConfig,
    joiners: &[Joiner],
    mut issue: impl FnMut(&[String]) -> anyhow::Result<(String, String)>,
) -> anyhow::Result<Vec<Machine>> {
    let mut out = Vec::new();
    for joiner in joiners {
        let hive = config
            .by_role(&Role::Hive { hive_id: joiner.hive_id.clone() })
            .with_context(|| format!("no identity for hive {}", joiner.hive_id))?;
        let sans = ["localhost".to_owned(), "127.0.0.1".to_owned(), joiner.host.to_string()];
        let (cert, key) = issue(&sans)?;
        out.push(Machine {
            host: joiner.host,
            hive_id: joiner.hive_id.clone(),
            cert,
            key,
            hive_user: hive.user().to_owned(),
            hive_password: hive.password().to_owned(),
            pool: config.pool_identities(&joiner.hive_id),
        });
    }
    Ok(out)
}

/// A joining machine's files, written under `dir`.
pub struct Node {
    /// Its nats-server configuration.
    pub nats_conf: PathBuf,
    /// The hive's environment: NATS identity, CA, worker pool.
    pub hive_env: Vec<(String, String)>,
}

/// Writes a joining machine's node: CA, certificate, the configuration that lets in its hive and
/// workers only and routes to `routes`, the pool file; checks it with `nats-server -t`.
pub fn write_node(
    dir: &Path,
    join: &SecureJoin,
    machine: &Machine,
    routes: &[String],
    listen: String,
    monitor: String,
    nats_server: &Path,
) -> anyhow::Result<Node> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &join.ca).with_context(|| format!("cannot write {}", ca.display()))?;
    let tls = TlsFiles { cert: dir.join("node-cert.pem"), key: dir.join("node-key.pem") };
    std::fs::write(&tls.cert, &machine.cert)
        .with_context(|| format!("cannot write {}", tls.cert.display()))?;
    security::write_private(&tls.key, machine.key.as_bytes())
        .with_context(|| format!("cannot write {}", tls.key.display()))?;

    let hive_id = &machine.hive_id;
    let mut config = SecurityConfig::new();
    let hive = Identity::with_password(
        Role::Hive { hive_id: hive_id.clone() },
        &machine.hive_user,
        &machine.hive_password,
    )?;
    let inbox_prefix = hive.inbox_prefix();
    config.push(hive)?;
    for worker in &machine.pool {
        let role = Role::Worker { worker_id: worker.worker_id.clone(), hive_id: hive_id.clone() };
        config.push(Identity::with_password(role, &worker.user, &worker.password)?)?;
    }
    let pool_file = dir.join(format!("hive-{hive_id}-pool.json"));
    config.write_pool(hive_id, &pool_file)?;

    let nats_conf = dir.join("nats.conf");
    let options = ServerOptions {
        listen: Some(listen),
        jetstream_store: None,
        tls: Some(tls),
        cluster: Some(cluster_options(machine.host, routes, &join.route_password, &ca)),
        monitor: Some(monitor),
    };
    server_config::write(&config, &nats_conf, &options)?;
    server_config::check(nats_server, &nats_conf)?;
    let hive_env = vec![
        ("RBEE_NATS_USER".to_owned(), machine.hive_user.clone()),
        ("RBEE_NATS_PASSWORD".to_owned(), machine.hive_password.clone()),
        ("RBEE_NATS_INBOX_PREFIX".to_owned(), inbox_prefix),
        ("RBEE_NATS_CA".to_owned(), ca.display().to_string()),
        ("RBEE_WORKER_POOL".to_owned(), pool_file.display().to_string()),
    ];
    Ok(Node { nats_conf, hive_env })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joiners_parse_and_bad_ones_are_refused() {
        let j: Joiner = "h2=198.18.0.2".parse().expect("parse");
        assert_eq!(j.hive_id.as_str(), "h2");
        assert_eq!(j.host.to_string(), "198.18.0.2");
        assert!("h2".parse::<Joiner>().is_err());
        assert!("h2=host.lan".parse::<Joiner>().is_err());
        assert!("h 2=198.18.0.2".parse::<Joiner>().is_err());
    }

    #[test]
    fn a_machine_gets_its_hive_and_pool_and_nothing_else() {
        let mut config = SecurityConfig::new();
        config.add(Role::Queen).expect("queen");
        let hive_id = HiveId::new("h2").expect("id");
        config.add(Role::Hive { hive_id: hive_id.clone() }).expect("hive");
        config.add_worker_pool(&hive_id, 2).expect("pool");
        let joiner = Joiner { hive_id, host: "198.18.0.2".parse().expect("ip") };
        let mut sans_seen = Vec::new();
        let machines = machines(&config, &[joiner], |sans| {
            sans_seen = sans.to_vec();
            Ok(("cert".into(), "key".into()))
        })
        .expect("machines");
        assert_eq!(sans_seen, ["localhost", "127.0.0.1", "198.18.0.2"]);
        assert_eq!(machines[0].hive_user, "hive_h2");
        assert_eq!(machines[0].pool.len(), 2);
        let queen = config.by_role(&Role::Queen).expect("queen");
        let text = toml::to_string(&SecureJoin { ca: "ca".into(), route_password: "p".into(), machines })
            .expect("toml");
        assert!(!text.contains(queen.password()), "the queen's password is not in the join file");
        let unknown =
            Joiner { hive_id: HiveId::new("h9").expect("id"), host: "198.18.0.9".parse().expect("ip") };
        assert!(super::machines(&config, &[unknown], |_| Ok((String::new(), String::new()))).is_err());
    }
}
