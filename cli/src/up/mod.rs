//! `rbee up`: a whole local cluster in one command. Starts nats-server (unless `--nats-url` names a
//! running one), the queen and a hive that imports the default model, spawns one worker, prints how
//! to use it, and on ctrl-c stops everything in order: workers, hive, queen, nats; each with a
//! deadline after which its process group is killed. A second ctrl-c kills everything at once. If a
//! child dies on its own, `rbee up` says which, shows its log tail, stops the rest and fails.
//!
//! With `--host ADDR` the machine is the first of several: nats-server takes clients and cluster
//! routes on ADDR, the API listens on ADDR too, and a join file (`<data_dir>/join.toml`, or one per
//! machine in secure mode) tells `rbee join` ([`join`]) on the other machines where to go.

pub mod banner;
mod cluster;
pub mod join;
pub mod join_file;
pub mod procs;
pub mod root;

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::PathBuf;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::args::UpArgs;
use crate::client::Queen;
use crate::config::{self, Config};
use crate::render::{self, Style};
use cluster::{cluster_check, supervise, wait_for_health, wait_for_hive, wait_for_port, Cluster};
use procs::{Child, KillList};

/// The port nats-server gets when it is free.
const NATS_PORT: u16 = 4222;
/// The hive `rbee up` starts.
const HIVE_ID: &str = "local";
/// The id the default model is imported under.
const DEFAULT_MODEL_ID: &str = "smollm2-135m-instruct";
/// Log lines shown when a child dies.
const TAIL_LINES: usize = 15;

/// The first signal ends startup or supervision; the second kills everything and exits.
struct Interrupt(tokio::sync::watch::Receiver<bool>);

impl Interrupt {
    fn install(kill_list: KillList) -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        // Registered now, before any child starts, so no early ctrl-c takes the default action.
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            let _ = tx.send(true);
            errln!("{}", Style::stderr().yellow("stopping (ctrl-c again to kill everything now)"));
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            kill_list.kill_all();
            errln!("killed");
            std::process::exit(130);
        });
        Ok(Self(rx))
    }

    async fn wait(&mut self) {
        let _ = self.0.wait_for(|fired| *fired).await;
    }
}

/// What `start` needs.
struct Plan {
    root: PathBuf,
    data_dir: PathBuf,
    port: u16,
    model: String,
    no_worker: bool,
    /// An existing NATS server to use instead of starting one, and where that setting came from.
    external_nats: Option<(String, String)>,
    api_key: Option<String>,
    /// `--secure`: TLS, per-process identities and an API key.
    secure: bool,
    /// `--host`: this machine's address on the cluster's network.
    host: Option<IpAddr>,
    /// `--join`: the machines that will join a secure cluster.
    joiners: Vec<crate::secure::cluster::Joiner>,
    /// `--ollama-addr`: the API on Ollama's address too.
    ollama_addr: Option<std::net::SocketAddr>,
    /// `--keep-alive`: how long idle workers stay loaded.
    keep_alive: String,
    /// `--memory-limit`: the most memory the hive declares for the CPU.
    memory_limit: Option<u64>,
}

/// Runs the command until ctrl-c or a child's death.
pub async fn run(config: &Config, args: UpArgs) -> anyhow::Result<()> {
    let root = root::find_root(&config::process_env)?;
    let data_dir = config.data_dir.value.clone().unwrap_or_else(|| root::default_data_dir(&root));
    let data_dir = std::path::absolute(&data_dir).unwrap_or(data_dir);
    for sub in ["logs", "nats", "catalog"] {
        std::fs::create_dir_all(data_dir.join(sub))
            .with_context(|| format!("cannot create {}", data_dir.join(sub).display()))?;
    }
    if TcpListener::bind(("127.0.0.1", args.port)).is_err() {
        bail!(
            "port {} is already in use (is another `rbee up` running?); pick another with --port",
            args.port
        );
    }
    let plan = Plan {
        root,
        data_dir,
        port: args.port,
        model: args.model.unwrap_or_else(|| config.default_model.value.clone()),
        no_worker: args.no_worker,
        external_nats: config
            .nats_url
            .is_explicit()
            .then(|| (config.nats_url.value.clone(), config.nats_url.source.to_string())),
        api_key: config.api_key.value.clone(),
        secure: args.secure,
        host: args.host,
        joiners: args.joiners,
        ollama_addr: args.ollama_addr,
        keep_alive: args.keep_alive,
        memory_limit: args.memory_limit,
    };
    let first_of_secure_machines = plan.secure && plan.host.is_some();
    if !plan.joiners.is_empty() && !first_of_secure_machines {
        bail!("--join names the machines of a secure cluster: it goes with --host ADDR --secure");
    }
    if first_of_secure_machines && plan.joiners.is_empty() {
        bail!(
            "--host with --secure needs the machines that will join, named up front: --join HIVE_ID=ADDR \
             for each (each gets a join file with a certificate for its address and the identities of its hive)"
        );
    }
    for (i, joiner) in plan.joiners.iter().enumerate() {
        let twice = plan.joiners[..i].iter().any(|j| j.hive_id == joiner.hive_id || j.host == joiner.host);
        if twice || joiner.hive_id.as_str() == HIVE_ID || Some(joiner.host) == plan.host {
            bail!(
                "--join {}={}: each machine needs a hive id and an address of its own",
                joiner.hive_id,
                joiner.host
            );
        }
    }
    if plan.host.is_some() && plan.external_nats.is_some() {
        bail!("--host starts its own nats-server that other machines join; leave nats_url unset");
    }
    if plan.secure && plan.external_nats.is_some() {
        bail!(
            "--secure starts its own nats-server with generated permissions; for an existing server use \
             `rbee secure init` and its files (see the README's security section)"
        );
    }
    // The CLI uses `secure/cli.env` while a secure cluster runs: never leave one behind for a plain one.
    let cli_env = plan.data_dir.join("secure").join("cli.env");
    let _ = std::fs::remove_file(&cli_env);

    let kill_list = KillList::default();
    let mut interrupt = Interrupt::install(kill_list.clone())?;
    let mut cluster = Cluster {
        nats: None,
        queen: None,
        hive: None,
        api: None,
        worker_pids: Vec::new(),
        kill_list,
        hive_id: HIVE_ID.to_owned(),
    };
    let started = tokio::select! {
        result = start(&mut cluster, &plan) => Some(result),
        _ = interrupt.wait() => None,
    };
    let result = match started {
        Some(Ok((ready, secure_join))) => {
            banner::print(&ready)?;
            if let Some(host) = plan.host {
                let files = write_join_files(&plan, host, secure_join)?;
                if plan.joiners.is_empty() {
                    let join = files.first().map(|(_, path)| path.display().to_string()).unwrap_or_default();
                    outln!("other machines join with:  rbee join {join} --host <their address>");
                } else {
                    outln!("copy each machine its own join file (it is secret: the route password lets a node in), then:");
                    for (host, path) in &files {
                        let name =
                            path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                        outln!("  on {host}:  rbee join {name} --host {host}   ({})", path.display());
                    }
                }
            }
            tokio::select! {
                result = supervise(&mut cluster) => result,
                _ = interrupt.wait() => Ok(()),
            }
        }
        Some(Err(e)) => Err(e),
        None => Ok(()),
    };
    cluster.stop().await;
    let _ = std::fs::remove_file(&cli_env);
    result
}

/// Starts every process and waits until the cluster serves.
async fn start(
    cluster: &mut Cluster,
    plan: &Plan,
) -> anyhow::Result<(banner::Ready, Option<crate::secure::cluster::SecureJoin>)> {
    let style = Style::stderr();
    let logs = plan.data_dir.join("logs");
    let queen_bin = root::sibling_binary("rbee-queen")?;
    let hive_bin = root::sibling_binary("rbee-hive")?;
    let model_file = root::setup_file(&plan.root, root::DEFAULT_MODEL_FILE)?;

    let mut secure: Option<crate::secure::Bundle> = None;
    let nats_url = match &plan.external_nats {
        Some((url, source)) => {
            if crate::nats::connect_url(url).await.is_err() {
                bail!(
                    "no nats server answers at {} (nats_url from {source}): start it, or leave nats_url \
                     unset so `rbee up` starts its own",
                    crate::nats::host_port(url)
                );
            }
            errln!("using nats at {}", crate::nats::host_port(url));
            url.clone()
        }
        None => {
            let nats_bin = root::setup_file(&plan.root, root::NATS_SERVER)?;
            let ip = plan.host.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
            let port = if TcpListener::bind((ip, NATS_PORT)).is_ok() {
                NATS_PORT
            } else if plan.host.is_some() {
                bail!("port {NATS_PORT} on {ip} is taken: the machines of a cluster all use it for NATS");
            } else {
                let port = TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port();
                errln!(
                    "{}",
                    style.yellow(format!("port {NATS_PORT} is taken: nats-server gets port {port}"))
                );
                port
            };
            if plan.secure {
                let mut hosts = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
                hosts.extend(plan.host.map(|h| h.to_string()));
                let mut hives = vec![rbee_bus::HiveId::new(HIVE_ID)?];
                hives.extend(plan.joiners.iter().map(|j| j.hive_id.clone()));
                let options = crate::secure::InitOptions {
                    dir: plan.data_dir.join("secure"),
                    hosts,
                    hives,
                    pool: crate::secure::DEFAULT_POOL,
                    listen: format!("{ip}:{port}"),
                    jetstream_store: plan.data_dir.join("nats"),
                    cluster: plan
                        .host
                        .map(|host| crate::secure::ClusterPlan { host, joiners: plan.joiners.clone() }),
                };
                let bundle = crate::secure::init(&options, &nats_bin)?;
                errln!(
                    "secure mode: TLS with the CA {}, one NATS identity per process, API key in {}",
                    bundle.ca.display(),
                    bundle.api_key_file.display()
                );
                secure = Some(bundle);
            }
            let mut args = match &secure {
                Some(bundle) => vec!["-c".to_owned(), bundle.nats_conf.display().to_string()],
                None => ["-a", &ip.to_string(), "-p", &port.to_string(), "-js", "-sd"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain([plan.data_dir.join("nats").display().to_string()])
                    .collect::<Vec<_>>(),
            };
            if plan.host.is_some() && secure.is_none() {
                // (In secure mode the cluster block is in the configuration: routes over TLS.)
                // JetStream in a cluster wants routes: the first machine's names itself (nats-server
                // skips a route to itself) until others join.
                let own = format!("nats-route://{}", std::net::SocketAddr::new(ip, join_file::ROUTE_PORT));
                args.extend(join::cluster_args(ip, &[own]));
            }
            let child =
                Child::spawn("nats", &nats_bin, &args, &[], &logs.join("nats.log"), &cluster.kill_list)?;
            errln!("started nats-server on {ip}:{port} (pid {}, log {})", child.pid(), child.log.display());
            cluster.nats = Some(child);
            wait_for_port(cluster, ip, port).await?;
            let scheme = if secure.is_some() { "tls" } else { "nats" };
            format!("{scheme}://{ip}:{port}")
        }
    };

    let http_addr = format!("127.0.0.1:{}", plan.port);
    let identity_env = |name: &str| -> anyhow::Result<Vec<(String, String)>> {
        match &secure {
            Some(bundle) => crate::secure::read_env_file(&bundle.env_file(name)),
            None => Ok(Vec::new()),
        }
    };
    let api_key = match &secure {
        Some(bundle) => Some(bundle.api_key()?),
        None => plan.api_key.clone(),
    };
    let mut queen_env = identity_env("queen")?;
    if secure.is_none() {
        queen_env.extend(api_key.iter().map(|key| ("RBEE_API_KEY".to_owned(), key.clone())));
    }
    let envs: Vec<(&str, String)> = queen_env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let mut args = vec![
        "--http-addr".to_owned(),
        http_addr.clone(),
        "--nats-url".to_owned(),
        nats_url.clone(),
        format!("--keep-alive={}", plan.keep_alive),
    ];
    if let Some(host) = plan.host {
        args.extend(["--also-http-addr".to_owned(), std::net::SocketAddr::new(host, plan.port).to_string()]);
        // Replicated once three JetStream nodes exist (this one and two `rbee join --standby-queen`), so a
        // standby can take over when this machine is lost.
        args.extend(["--lease-replicas".to_owned(), join::LEASE_REPLICAS.to_string()]);
    }
    if let Some(addr) = plan.ollama_addr {
        if TcpListener::bind(addr).is_err() {
            bail!("{addr} is taken (is Ollama itself running?): pick another --ollama-addr");
        }
        args.extend(["--ollama-addr".to_owned(), addr.to_string()]);
    }
    let queen = Child::spawn("queen", &queen_bin, &args, &envs, &logs.join("queen.log"), &cluster.kill_list)?;
    errln!("started queen on {http_addr} (pid {}, log {})", queen.pid(), queen.log.display());
    cluster.queen = Some(queen);

    let import = format!("{}={DEFAULT_MODEL_ID}", model_file.display());
    let args = [
        "--hive-id",
        HIVE_ID,
        "--nats-url",
        &nats_url,
        "--catalog-dir",
        &plan.data_dir.join("catalog").display().to_string(),
        "--import-model",
        &import,
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(plan.memory_limit.iter().flat_map(|limit| ["--memory-limit".to_owned(), limit.to_string()]))
    .collect::<Vec<_>>();
    let hive_env = identity_env(&format!("hive-{HIVE_ID}"))?;
    let envs: Vec<(&str, String)> = hive_env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let hive = Child::spawn("hive", &hive_bin, &args, &envs, &logs.join("hive.log"), &cluster.kill_list)?;
    errln!("started hive {HIVE_ID} (pid {}, log {})", hive.pid(), hive.log.display());
    cluster.hive = Some(hive);

    // `rbee up` administers its cluster (it spawns the worker): in secure mode it uses the admin key.
    let client_key = match &secure {
        Some(bundle) => Some(bundle.admin_key()?),
        None => api_key.clone(),
    };
    let api = Queen::with_url(&format!("http://{http_addr}"), client_key)?;
    cluster.api = Some(api.clone());
    wait_for_health(cluster, &api).await?;
    wait_for_hive(cluster, &api, &plan.model).await?;
    errln!("hive {HIVE_ID} registered with model {}", plan.model);

    let mut worker = None;
    if !plan.no_worker {
        let model = rbee_bus::ModelId::new(plan.model.clone())?;
        let hive_id = rbee_bus::HiveId::new(HIVE_ID)?;
        // This command's worker unloads when idle like any other (`--keep-alive`).
        let sizes = crate::workers::Sizes { keep_alive: Some(plan.keep_alive.clone()), ..Default::default() };
        let reply = crate::workers::spawn(&api, &model, Some(&hive_id), None, sizes).await?;
        let worker_id = render::text(&reply, &["worker_id"]);
        if let Some(pid) = reply.get("pid").and_then(Value::as_i64).and_then(|p| i32::try_from(p).ok()) {
            cluster.worker_pids.push(pid);
            cluster.kill_list.add(pid);
        }
        errln!("spawned worker {worker_id}, loading {}", plan.model);
        let mut check = || cluster_check(&mut cluster.nats, &mut cluster.queen, &mut cluster.hive);
        let ready =
            crate::workers::wait_ready(&api, &worker_id, crate::workers::READY_TIMEOUT, &mut check).await?;
        worker = Some((worker_id, render::text(&ready, &["device"])));
    }
    let secure_join = secure.as_ref().and_then(|b| b.join.clone());
    let ready = banner::Ready {
        api: format!("http://{http_addr}"),
        default_port: plan.port == 7833,
        nats_url,
        external_nats: plan.external_nats.is_some(),
        model: plan.model.clone(),
        worker,
        logs,
        api_key_set: api_key.is_some(),
        api_key_file: secure.as_ref().map(|b| b.api_key_file.clone()),
        rbee: std::env::current_exe()
            .map(|exe| root::rbee_command(&exe, std::env::var_os("PATH").as_deref()))
            .unwrap_or_else(|_| "rbee".to_owned()),
    };
    Ok((ready, secure_join))
}

/// Writes the join files for the other machines: `<data_dir>/join.toml` in plain mode, one
/// `<data_dir>/join-<hive_id>.toml` per named machine in secure mode, each holding that machine's
/// certificate and identities and no other's. Returns each with the host it is for.
fn write_join_files(
    plan: &Plan,
    host: IpAddr,
    secure: Option<crate::secure::cluster::SecureJoin>,
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let file = join_file::JoinFile {
        routes: vec![format!("nats-route://{}", std::net::SocketAddr::new(host, join_file::ROUTE_PORT))],
        nats_port: NATS_PORT,
        api: format!("http://{}", std::net::SocketAddr::new(host, plan.port)),
        model: plan.model.clone(),
        secure: None,
    };
    let Some(secure) = secure else {
        let path = plan.data_dir.join("join.toml");
        file.write(&path)?;
        return Ok(vec![("<their address>".to_owned(), path)]);
    };
    let mut written = Vec::new();
    for machine in &secure.machines {
        let path = plan.data_dir.join(format!("join-{}.toml", machine.hive_id));
        let own = crate::secure::cluster::SecureJoin { machines: vec![machine.clone()], ..secure.clone() };
        join_file::JoinFile { secure: Some(own), ..file.clone() }.write(&path)?;
        written.push((machine.host.to_string(), path));
    }
    Ok(written)
}
