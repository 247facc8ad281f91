//! Secure mode files: a CA for a home lab and a server certificate signed by it (rcgen), one NATS
//! identity per process with the permissions of its role (`rbee_bus::security`), the nats-server
//! configuration that enforces them ([`server_config`], checked with `nats-server -t`), and the HTTP
//! API key.
//! `rbee secure init` writes them for a multi-machine cluster; `rbee up --secure` writes them under its
//! data directory and starts every process with its own identity.
//!
//! Files in the directory (secrets mode 0600):
//! - `ca.pem` (give to every machine), `ca-key.pem` (keep here), `server-cert.pem`, `server-key.pem`
//! - `nats.conf`: the server's configuration (users, permissions, TLS)
//! - `queen.env`, `hive-<id>.env`, `cli.env`, `observer.env`: `RBEE_NATS_USER`, `RBEE_NATS_PASSWORD`,
//!   `RBEE_NATS_INBOX_PREFIX`, `RBEE_NATS_CA` (and `RBEE_WORKER_POOL` for a hive, `RBEE_API_KEY` for the
//!   queen and the cli), in `KEY=value` lines for `env_file:` or `set -a; . file`
//! - `hive-<id>-pool.json`: the worker identities a hive hands to the workers it starts
//! - `api-key`: the bearer key of the HTTP API (inference, reading, cancelling)
//! - `admin-key`: the only key the queen takes for administration (spawn, stop, model import, pull and
//!   remove); in `queen.env` and `cli.env` as `RBEE_ADMIN_KEY`
//!
//! The CA and the keys are kept when the directory already has them (clients that trust the CA
//! or know the key keep working); identities and the server certificate are made anew each time.

pub mod cluster;
pub mod server_config;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::{Config, NatsIdentity, Setting, Source};
use rbee_bus::security::{self, Role, SecurityConfig};
use rbee_bus::HiveId;
use server_config::{ServerOptions, TlsFiles};

/// Workers per hive in secure mode: a hive can run at most this many at once.
pub const DEFAULT_POOL: usize = 8;

/// What to generate.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Where the files go.
    pub dir: PathBuf,
    /// Names and addresses the nats-server is reached at (the certificate's subject alt names).
    pub hosts: Vec<String>,
    /// Hives that get an identity and a worker pool.
    pub hives: Vec<HiveId>,
    /// Worker identities per hive.
    pub pool: usize,
    /// `listen` of the server (`0.0.0.0:4222`).
    pub listen: String,
    /// JetStream store of the server.
    pub jetstream_store: PathBuf,
    /// The first machine of several (`rbee up --host --secure`): its node takes routes, and the
    /// machines named join with what [`Bundle::join`] holds.
    pub cluster: Option<ClusterPlan>,
}

/// The first machine's address and the machines that will join it.
#[derive(Debug, Clone)]
pub struct ClusterPlan {
    /// This machine's address.
    pub host: std::net::IpAddr,
    /// The others.
    pub joiners: Vec<cluster::Joiner>,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The directory.
    pub dir: PathBuf,
    /// The nats-server configuration.
    pub nats_conf: PathBuf,
    /// The CA certificate clients trust.
    pub ca: PathBuf,
    /// The HTTP API key file.
    pub api_key_file: PathBuf,
    /// The admin key file.
    pub admin_key_file: PathBuf,
    /// With [`InitOptions::cluster`]: what goes in the join file.
    pub join: Option<cluster::SecureJoin>,
}

impl Bundle {
    /// The env file of a role: `queen.env`, `hive-<id>.env`, `cli.env`, `observer.env`.
    pub fn env_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.env"))
    }

    /// The API key.
    pub fn api_key(&self) -> anyhow::Result<String> {
        read_key(&self.api_key_file)
    }

    /// The admin key.
    pub fn admin_key(&self) -> anyhow::Result<String> {
        read_key(&self.admin_key_file)
    }
}

fn read_key(path: &Path) -> anyhow::Result<String> {
    let key = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(key.trim().to_owned())
}

fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    security::write_private(path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

/// The CA: loaded from `ca-key.pem` when there, else made and written.
fn certificate_authority(dir: &Path) -> anyhow::Result<(rcgen::Certificate, rcgen::KeyPair)> {
    let key_file = dir.join("ca-key.pem");
    let key = match std::fs::read_to_string(&key_file) {
        Ok(pem) => {
            rcgen::KeyPair::from_pem(&pem).with_context(|| format!("{} is not a key", key_file.display()))?
        }
        Err(_) => {
            let key = rcgen::KeyPair::generate().context("cannot generate the CA key")?;
            write_secret(&key_file, &key.serialize_pem())?;
            key
        }
    };
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).context("ca parameters")?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "rbee cluster CA");
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "rbee");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    // The same name and key sign the same way, so a CA made again from its key verifies what the
    // first one signed, and `ca.pem` stays valid for clients that already have it.
    let cert = params.self_signed(&key).context("cannot sign the CA certificate")?;
    let ca_file = dir.join("ca.pem");
    if !ca_file.exists() {
        std::fs::write(&ca_file, cert.pem())
            .with_context(|| format!("cannot write {}", ca_file.display()))?;
    }
    Ok((cert, key))
}

/// A nats-server certificate for `hosts` signed by the CA, and its key (PEM). Good for clients' TLS
/// and for both ends of a cluster route.
fn issue_certificate(
    hosts: &[String],
    ca: &rcgen::Certificate,
    ca_key: &rcgen::KeyPair,
) -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate().context("cannot generate the server key")?;
    let mut params =
        rcgen::CertificateParams::new(hosts.to_vec()).context("invalid host name for the certificate")?;
    params.distinguished_name.push(rcgen::DnType::CommonName, hosts.last().cloned().unwrap_or_default());
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, ca, ca_key).context("cannot sign the server certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn server_certificate(
    dir: &Path,
    hosts: &[String],
    ca: &rcgen::Certificate,
    ca_key: &rcgen::KeyPair,
) -> anyhow::Result<TlsFiles> {
    let (cert, key) = issue_certificate(hosts, ca, ca_key)?;
    let files = TlsFiles { cert: dir.join("server-cert.pem"), key: dir.join("server-key.pem") };
    std::fs::write(&files.cert, cert).with_context(|| format!("cannot write {}", files.cert.display()))?;
    write_secret(&files.key, &key)?;
    Ok(files)
}

fn env_text(identity: &security::Identity, ca: &Path, extra: &[(&str, String)]) -> String {
    let mut out = String::from("# rbee secure mode: this process's NATS identity. Keep it private.\n");
    let _ = writeln!(out, "RBEE_NATS_USER={}", identity.user());
    let _ = writeln!(out, "RBEE_NATS_PASSWORD={}", identity.password());
    let _ = writeln!(out, "RBEE_NATS_INBOX_PREFIX={}", identity.inbox_prefix());
    let _ = writeln!(out, "RBEE_NATS_CA={}", ca.display());
    for (k, v) in extra {
        let _ = writeln!(out, "{k}={v}");
    }
    out
}

/// Writes every file, checks the server configuration with `nats-server -t`, and says where they are.
pub fn init(options: &InitOptions, nats_server: &Path) -> anyhow::Result<Bundle> {
    let dir = std::path::absolute(&options.dir).unwrap_or_else(|_| options.dir.clone());
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    }
    let (ca, ca_key) = certificate_authority(&dir)?;
    let tls = server_certificate(&dir, &options.hosts, &ca, &ca_key)?;
    let ca_file = dir.join("ca.pem");

    let api_key_file = dir.join("api-key");
    let admin_key_file = dir.join("admin-key");
    for (file, prefix) in [(&api_key_file, "rbee"), (&admin_key_file, "rbee-admin")] {
        if read_key(file).map(|k| k.len() < 32).unwrap_or(true) {
            let key = format!("{prefix}-{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
            write_secret(file, &format!("{key}\n"))?;
        }
    }
    let api_key = read_key(&api_key_file)?;
    let admin_key = read_key(&admin_key_file)?;

    let mut config = SecurityConfig::new();
    let queen = config.add(Role::Queen)?.clone();
    let cli = config.add(Role::Cli)?.clone();
    let observer = config.add(Role::Observer)?.clone();
    let keys = [("RBEE_API_KEY", api_key), ("RBEE_ADMIN_KEY", admin_key)];
    write_secret(&dir.join("queen.env"), &env_text(&queen, &ca_file, &keys))?;
    write_secret(&dir.join("cli.env"), &env_text(&cli, &ca_file, &keys))?;
    write_secret(&dir.join("observer.env"), &env_text(&observer, &ca_file, &[]))?;
    for hive_id in &options.hives {
        let hive = config.add(Role::Hive { hive_id: hive_id.clone() })?.clone();
        config.add_worker_pool(hive_id, options.pool)?;
        let pool_file = dir.join(format!("hive-{hive_id}-pool.json"));
        config.write_pool(hive_id, &pool_file)?;
        let extra =
            [("RBEE_HIVE_ID", hive_id.to_string()), ("RBEE_WORKER_POOL", pool_file.display().to_string())];
        write_secret(&dir.join(format!("hive-{hive_id}.env")), &env_text(&hive, &ca_file, &extra))?;
    }
    let mut join = None;
    let mut cluster_block = None;
    if let Some(plan) = &options.cluster {
        let password = cluster::route_password(&dir)?;
        let own = format!(
            "nats-route://{}",
            std::net::SocketAddr::new(plan.host, crate::up::join_file::ROUTE_PORT)
        );
        cluster_block = Some(cluster::cluster_options(plan.host, &[own], &password, &ca_file));
        let machines =
            cluster::machines(&config, &plan.joiners, |sans| issue_certificate(sans, &ca, &ca_key))?;
        let ca_pem = std::fs::read_to_string(&ca_file)
            .with_context(|| format!("cannot read {}", ca_file.display()))?;
        join = Some(cluster::SecureJoin { ca: ca_pem, route_password: password, machines });
    }
    let nats_conf = dir.join("nats.conf");
    let server = ServerOptions {
        listen: Some(options.listen.clone()),
        jetstream_store: Some(options.jetstream_store.clone()),
        tls: Some(tls),
        cluster: cluster_block,
        monitor: None,
    };
    server_config::write(&config, &nats_conf, &server)?;
    server_config::check(nats_server, &nats_conf)?;
    Ok(Bundle { dir, nats_conf, ca: ca_file, api_key_file, admin_key_file, join })
}

/// `rbee secure init`: writes the files and says which goes where.
pub fn run(command: crate::args::SecureCommand) -> anyhow::Result<()> {
    let crate::args::SecureCommand::Init { dir, hosts, hives, pool, listen, jetstream_store } = command;
    if !(1..=256).contains(&pool) {
        anyhow::bail!("--pool {pool} is outside [1, 256]");
    }
    let root = crate::up::root::find_root(&crate::config::process_env)?;
    let nats_server = crate::up::root::setup_file(&root, crate::up::root::NATS_SERVER)?;
    let mut all_hosts = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    for h in hosts {
        if !all_hosts.contains(&h) {
            all_hosts.push(h);
        }
    }
    let hives = hives.into_iter().map(HiveId::new).collect::<Result<Vec<_>, _>>()?;
    let options = InitOptions {
        dir,
        hosts: all_hosts.clone(),
        hives: hives.clone(),
        pool,
        listen,
        jetstream_store,
        cluster: None,
    };
    let bundle = init(&options, &nats_server)?;
    let d = bundle.dir.display();
    outln!("wrote the secure cluster files to {d} (checked with nats-server -t)");
    outln!("  nats-server   nats-server -c {d}/nats.conf   (TLS for {})", all_hosts.join(", "));
    outln!("  queen         set -a; . {d}/queen.env; rbee-queen --nats-url tls://<nats-host>:4222");
    for h in &hives {
        outln!(
            "  hive {h:<8} copy hive-{h}.env, hive-{h}-pool.json and ca.pem to its machine, fix the paths in \
             hive-{h}.env, then: set -a; . hive-{h}.env; rbee-hive --nats-url tls://<nats-host>:4222"
        );
    }
    outln!("  cli           set -a; . {d}/cli.env   (NATS identity, API key and admin key for rbee)");
    outln!("  http clients  {d}/api-key (inference, reading) or {d}/admin-key (also spawn, stop, import, pull, remove), as Authorization: Bearer ...");
    outln!("  observers     {d}/observer.env: subscribe to tokens, status and heartbeats; publish nothing");
    outln!("keep ca-key.pem on this machine: rerun `rbee secure init` here to add hives or rotate passwords");
    Ok(())
}

/// `<data_dir>/secure`, where `rbee up --secure` keeps its files.
pub fn local_dir(config: &Config) -> Option<PathBuf> {
    let data_dir = match &config.data_dir.value {
        Some(dir) => dir.clone(),
        None => {
            crate::up::root::default_data_dir(&crate::up::root::find_root(&crate::config::process_env).ok()?)
        }
    };
    Some(data_dir.join("secure"))
}

/// While `rbee up --secure` runs, its `cli.env` is there: the CLI then uses that identity and API key
/// unless the environment or the config file name others.
pub fn apply_local(config: &mut Config) {
    let Some(dir) = local_dir(config) else { return };
    let cli_env = dir.join("cli.env");
    let Ok(vars) = read_env_file(&cli_env) else { return };
    let get = |k: &str| vars.iter().find(|(name, _)| name == k).map(|(_, v)| v.clone());
    if config.nats_identity.is_none() {
        config.nats_identity = NatsIdentity::from_vars(get)
            .map(|identity| Setting { value: identity, source: Source::Secure(cli_env.clone()) });
    }
    if config.api_key.value.is_none() {
        if let Some(key) = get("RBEE_ADMIN_KEY").or_else(|| get("RBEE_API_KEY")) {
            config.api_key = Setting { value: Some(key), source: Source::Secure(cli_env) };
        }
    }
}

/// Reads `KEY=value` lines.
pub fn read_env_file(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_parse_back() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("x.env");
        std::fs::write(&path, "# comment\nRBEE_NATS_USER=cli\n\nRBEE_NATS_PASSWORD=a=b\n").expect("write");
        let vars = read_env_file(&path).expect("read");
        assert_eq!(
            vars,
            vec![("RBEE_NATS_USER".into(), "cli".into()), ("RBEE_NATS_PASSWORD".into(), "a=b".into())]
        );
    }
}
