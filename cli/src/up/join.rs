//! `rbee join FILE --host ADDR`: this machine joins a cluster another machine started with `rbee up
//! --host`. Starts a nats-server that joins the cluster's routes (clients on ADDR:4222, routes on
//! ADDR:6222) and a hive on it, with the default model when this machine has its file; waits until
//! the queen lists the hive; on ctrl-c stops the hive (and its workers) and nats-server.
//!
//! A secure join file ([`crate::secure::cluster`]) has an entry for this machine's address: the node
//! then serves TLS with that entry's certificate, takes routes over TLS with the route password, lets
//! in only this hive and its workers, and the hive connects with its own identity. Joined is then
//! when the node has a route to the cluster (its monitoring endpoint on loopback says so): this
//! machine holds no key of the queen's API to ask it.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::cluster::{supervise, wait_for_port, Cluster};
use super::join_file::{JoinFile, CLUSTER_NAME, ROUTE_PORT};
use super::procs::{Child, KillList};
use super::{root, Interrupt};
use crate::args::JoinArgs;
use crate::client::Queen;
use crate::config::{self, Config};

/// Replicas of the queens' lease and job-request buckets in a cluster of machines: three JetStream
/// nodes (the first machine and two `rbee join --standby-queen`) survive the loss of any one.
pub const LEASE_REPLICAS: usize = 3;

/// nats-server flags that make it a node of the cluster on `ip`, soliciting `routes`.
pub fn cluster_args(ip: IpAddr, routes: &[String]) -> Vec<String> {
    let mut args = vec![
        "--cluster".to_owned(),
        format!("nats://{}", std::net::SocketAddr::new(ip, ROUTE_PORT)),
        "--cluster_name".to_owned(),
        CLUSTER_NAME.to_owned(),
        "--server_name".to_owned(),
        format!("rbee-{ip}"),
    ];
    if !routes.is_empty() {
        args.extend(["--routes".to_owned(), routes.join(",")]);
    }
    args
}

/// The machine's host name as a hive id (what `rbee-hive` defaults to as well).
fn host_name_id() -> anyhow::Result<rbee_bus::HiveId> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let id: String = name
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .collect();
    rbee_bus::HiveId::new(id).context("cannot make a hive id of the host name: give --hive-id")
}

/// Runs the command until ctrl-c or a child's death.
pub async fn run(config: &Config, args: JoinArgs) -> anyhow::Result<()> {
    let file = JoinFile::read(&args.file)?;
    let root = root::find_root(&config::process_env)?;
    let data_dir = config.data_dir.value.clone().unwrap_or_else(|| root::default_data_dir(&root));
    let data_dir = std::path::absolute(&data_dir).unwrap_or(data_dir);
    for sub in ["logs", "catalog"] {
        std::fs::create_dir_all(data_dir.join(sub))
            .with_context(|| format!("cannot create {}", data_dir.join(sub).display()))?;
    }
    let machine = match &file.secure {
        Some(secure) => {
            let Some(machine) = secure.machines.iter().find(|m| m.host == args.host) else {
                let named: Vec<String> = secure.machines.iter().map(|m| m.host.to_string()).collect();
                bail!(
                    "{} has no entry for {}: it was made for {} (name this machine with --join HIVE_ID={} \
                     on the first one)",
                    args.file.display(),
                    args.host,
                    named.join(", "),
                    args.host
                );
            };
            Some(machine.clone())
        }
        None => None,
    };
    let hive_id = match (args.hive_id, &machine) {
        (Some(id), Some(m)) if id != m.hive_id.as_str() => {
            bail!("{} names this machine's hive {}, not {id}", args.file.display(), m.hive_id)
        }
        (_, Some(m)) => m.hive_id.clone(),
        (Some(id), None) => rbee_bus::HiveId::new(id)?,
        (None, None) => host_name_id()?,
    };
    let kill_list = KillList::default();
    let mut interrupt = Interrupt::install(kill_list.clone())?;
    let mut cluster = Cluster {
        nats: None,
        queen: None,
        hive: None,
        api: None,
        worker_pids: Vec::new(),
        kill_list,
        hive_id: hive_id.to_string(),
    };
    let started = tokio::select! {
        result = start(&mut cluster, &root, &data_dir, &file, machine.as_ref(), (args.host, args.memory_limit, args.standby_queen)) => Some(result),
        _ = interrupt.wait() => None,
    };
    let result = match started {
        Some(Ok(())) => {
            let standby = if args.standby_queen {
                format!(", a standby queen on http://{}:{}", args.host, QUEEN_PORT)
            } else {
                String::new()
            };
            outln!("joined: hive {hive_id} on {}, queen at {}{standby}; ctrl-c leaves", args.host, file.api);
            tokio::select! {
                result = supervise(&mut cluster) => result,
                _ = interrupt.wait() => Ok(()),
            }
        }
        Some(Err(e)) => Err(e),
        None => Ok(()),
    };
    cluster.stop().await;
    result
}

async fn start(
    cluster: &mut Cluster,
    root: &std::path::Path,
    data_dir: &std::path::Path,
    file: &JoinFile,
    machine: Option<&crate::secure::cluster::Machine>,
    (host, args_memory_limit, standby): (IpAddr, Option<u64>, bool),
) -> anyhow::Result<()> {
    if standby && file.secure.is_some() {
        bail!(
            "--standby-queen runs in plain mode only: a secure cluster's queen identity stays on the first machine \
             (join files do not carry it)"
        );
    }
    let logs = data_dir.join("logs");
    let nats_bin = root::setup_file(root, root::NATS_SERVER)?;
    let hive_bin = root::sibling_binary("rbee-hive")?;
    if std::net::TcpListener::bind((host, file.nats_port)).is_err() {
        bail!(
            "cannot listen on {host}:{}: is {host} this machine's address, and the port free?",
            file.nats_port
        );
    }
    let listen = std::net::SocketAddr::new(host, file.nats_port);
    let (args, hive_env, monitor) = match (&file.secure, machine) {
        (Some(secure), Some(machine)) => {
            let monitor = std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?;
            let node = crate::secure::cluster::write_node(
                &data_dir.join("secure"),
                secure,
                machine,
                &file.routes,
                listen.to_string(),
                monitor.to_string(),
                &nats_bin,
            )?;
            (vec!["-c".to_owned(), node.nats_conf.display().to_string()], node.hive_env, Some(monitor))
        }
        _ => {
            let mut args =
                vec!["-a".to_owned(), host.to_string(), "-p".to_owned(), file.nats_port.to_string()];
            if standby {
                // A JetStream node too, for the lease's replicas.
                args.extend([
                    "-js".to_owned(),
                    "-sd".to_owned(),
                    data_dir.join("nats").display().to_string(),
                ]);
            }
            args.extend(cluster_args(host, &file.routes));
            (args, Vec::new(), None)
        }
    };
    let nats = Child::spawn("nats", &nats_bin, &args, &[], &logs.join("nats.log"), &cluster.kill_list)?;
    errln!(
        "started nats-server on {host}:{} (pid {}, log {})",
        file.nats_port,
        nats.pid(),
        nats.log.display()
    );
    cluster.nats = Some(nats);
    wait_for_port(cluster, host, file.nats_port).await?;
    let scheme = if monitor.is_some() { "tls" } else { "nats" };
    let nats_url = format!("{scheme}://{listen}");
    if standby {
        start_standby(cluster, &logs, &nats_url, host)?;
    }

    let mut args = vec![
        "--hive-id".to_owned(),
        cluster.hive_id.clone(),
        "--nats-url".to_owned(),
        nats_url,
        "--catalog-dir".to_owned(),
        data_dir.join("catalog").display().to_string(),
    ];
    match root::setup_file(root, root::DEFAULT_MODEL_FILE) {
        Ok(model_file) => {
            args.extend(["--import-model".to_owned(), format!("{}={}", model_file.display(), file.model)])
        }
        Err(_) => errln!("this machine has no copy of {}: the hive starts with its catalog only", file.model),
    }
    if let Some(limit) = args_memory_limit {
        args.extend(["--memory-limit".to_owned(), limit.to_string()]);
    }
    let envs: Vec<(&str, String)> = hive_env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let hive = Child::spawn("hive", &hive_bin, &args, &envs, &logs.join("hive.log"), &cluster.kill_list)?;
    errln!("started hive {} (pid {}, log {})", cluster.hive_id, hive.pid(), hive.log.display());
    cluster.hive = Some(hive);
    if let Some(monitor) = monitor {
        return wait_for_route(cluster, monitor).await;
    }

    // Joined once the queen lists the hive (its heartbeats crossed the cluster).
    let api = Queen::with_url(&file.api, None)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        cluster.check()?;
        let hives = api.json(reqwest::Method::GET, "/v1/hives", None, Duration::from_secs(2)).await;
        let listed = hives.as_ref().is_ok_and(|h| {
            crate::render::list(h, "hives")
                .iter()
                .any(|h| h.get("hive_id").and_then(serde_json::Value::as_str) == Some(&cluster.hive_id))
        });
        if listed {
            return Ok(());
        }
        if Instant::now() > deadline {
            let why = hives.err().map(|e| format!(" ({e:#})")).unwrap_or_default();
            bail!("the queen at {} did not list hive {} within 60 s{why}", file.api, cluster.hive_id);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The port of a standby queen's API (the same as the first machine's).
const QUEEN_PORT: u16 = 7833;

/// Starts a standby queen on this machine: `queen-<hive id>` in the lease, its API on loopback and
/// on `host`.
fn start_standby(
    cluster: &mut Cluster,
    logs: &std::path::Path,
    nats_url: &str,
    host: IpAddr,
) -> anyhow::Result<()> {
    let queen_bin = root::sibling_binary("rbee-queen")?;
    let args = vec![
        "--http-addr".to_owned(),
        format!("127.0.0.1:{QUEEN_PORT}"),
        "--also-http-addr".to_owned(),
        std::net::SocketAddr::new(host, QUEEN_PORT).to_string(),
        "--nats-url".to_owned(),
        nats_url.to_owned(),
        "--queen-id".to_owned(),
        format!("queen-{}", cluster.hive_id),
        "--lease-replicas".to_owned(),
        LEASE_REPLICAS.to_string(),
        "--standby".to_owned(),
    ];
    let queen = Child::spawn("queen", &queen_bin, &args, &[], &logs.join("queen.log"), &cluster.kill_list)?;
    errln!(
        "started a standby queen on {host}:{QUEEN_PORT} (pid {}, log {})",
        queen.pid(),
        queen.log.display()
    );
    cluster.queen = Some(queen);
    Ok(())
}

/// Secure mode: joined once this machine's node has a route to the cluster (`/routez` of its
/// monitoring endpoint on loopback) and the hive still runs.
async fn wait_for_route(cluster: &mut Cluster, monitor: std::net::SocketAddr) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let url = format!("http://{monitor}/routez");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        cluster.check()?;
        let routes = match client.get(&url).send().await {
            Ok(reply) => reply.json::<serde_json::Value>().await.ok().and_then(|v| v["num_routes"].as_u64()),
            Err(_) => None,
        };
        if routes.is_some_and(|n| n > 0) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("this machine's nats-server has no route to the cluster after 60 s: see its log");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
