//! What a run starts: its environment (the release binaries, the model, the log directory), the
//! cluster every section measures (nats-server, the `rbee-queen` and `rbee-hive` binaries, a watcher on
//! the bus), and the processes behind it (queen, hive, stand-alone workers, the relay), each logging to
//! a file and stopped on drop (SIGTERM, then SIGKILL).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::api::Api;
use crate::stats;
use crate::watcher::Watcher;

/// The model id the hive imports the default model under.
pub const MODEL_ID: &str = "smollm2-135m-instruct";
/// The hive this run starts.
pub const HIVE_ID: &str = "bench-hive";

/// Where the run's binaries, model and logs are.
pub struct Env {
    /// Repository root.
    pub root: PathBuf,
    /// `target/bench`, emptied at the start.
    pub logs: PathBuf,
    /// `rbee-queen`, next to this executable.
    pub queen_bin: PathBuf,
    /// `rbee-hive`.
    pub hive_bin: PathBuf,
    /// `rbee-worker`.
    pub worker_bin: PathBuf,
    /// The default model's GGUF.
    pub model_path: PathBuf,
    /// Inference threads, for the worker and for llama.cpp driven directly alike.
    pub threads: u32,
}

impl Env {
    /// Checks the binaries and the model under `root`; empties the log directory.
    pub fn new(root: &Path, threads: u32) -> anyhow::Result<Self> {
        let root = std::fs::canonicalize(root).with_context(|| format!("no directory {}", root.display()))?;
        let exe = std::env::current_exe()?;
        let bin_dir = exe.parent().context("executable without a directory")?.to_path_buf();
        let bin = |name: &str| {
            let p = bin_dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                bail!("{} is missing: run `make release` first", p.display())
            }
        };
        let model_path = root.join(".rbee/models/SmolLM2-135M-Instruct.Q4_1.gguf");
        if !model_path.is_file() {
            bail!("the default model is missing at {}: run `make setup`", model_path.display());
        }
        let logs = root.join("target/bench");
        let _ = std::fs::remove_dir_all(&logs);
        std::fs::create_dir_all(&logs)?;
        Ok(Self {
            queen_bin: bin("rbee-queen")?,
            hive_bin: bin("rbee-hive")?,
            worker_bin: bin("rbee-worker")?,
            root,
            logs,
            model_path,
            threads,
        })
    }
}

/// A NATS connection to `url`.
pub async fn connect(url: &str) -> anyhow::Result<rbee_bus::Bus> {
    Ok(rbee_bus::connect(&rbee_bus::NatsConfig::url(url)).await?)
}

/// nats-server, the queen and the hive (offering [`MODEL_ID`]), and a watcher on the bus.
pub struct Cluster {
    /// The nats-server, held until the cluster is dropped (which stops it).
    _nats: rbee_testkit::NatsServer,
    /// Its URL.
    pub url: String,
    /// A plain connection, as a third party would use.
    pub bus: rbee_bus::Bus,
    /// Heartbeats and lifecycle events as this process receives them.
    pub watcher: Watcher,
    /// The `rbee-queen` binary.
    pub queen: Proc,
    /// The `rbee-hive` binary.
    pub hive: Proc,
    /// The queen's HTTP API.
    pub api: Api,
}

impl Cluster {
    /// Starts everything and waits until the queen offers the model on the hive.
    pub async fn start(env: &Env) -> anyhow::Result<Self> {
        Self::start_tagged(env, "", &[]).await
    }

    /// [`Cluster::start`] with more queen arguments; `tag` names its logs and catalog apart from
    /// another cluster's (`queen<tag>.log`).
    pub async fn start_tagged(env: &Env, tag: &str, queen_extra: &[&str]) -> anyhow::Result<Self> {
        let nats = rbee_testkit::NatsServer::start();
        let url = nats.url();
        let bus = connect(&url).await?;
        let watcher = Watcher::start(&bus, HIVE_ID).await?;
        let port = free_port();
        let mut args = queen_args(&url, port);
        args.extend(queen_extra.iter().map(|a| (*a).to_owned()));
        let mut queen =
            Proc::spawn("queen", &env.queen_bin, &args, &env.logs.join(format!("queen{tag}.log")))?;
        let api = Api::new(port);
        api.wait_healthy(&mut queen, Duration::from_secs(30)).await?;
        let hive_args: Vec<String> = vec![
            "--hive-id".into(),
            HIVE_ID.into(),
            "--catalog-dir".into(),
            env.logs.join(format!("catalog{tag}")).display().to_string(),
            "--import-model".into(),
            format!("{}={MODEL_ID}", env.model_path.display()),
            "--worker-bin".into(),
            env.worker_bin.display().to_string(),
            "--nats-url".into(),
            url.clone(),
        ];
        let hive = Proc::spawn("hive", &env.hive_bin, &hive_args, &env.logs.join(format!("hive{tag}.log")))?;
        let mut cluster = Self { _nats: nats, url, bus, watcher, queen, hive, api };
        cluster.wait_spawnable().await?;
        Ok(cluster)
    }

    async fn wait_spawnable(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            self.hive.check()?;
            self.queen.check()?;
            if let Ok(models) = self.api.get("/v1/models").await {
                let ready = models.get("data").and_then(Value::as_array).is_some_and(|data| {
                    data.iter().any(|m| {
                        m.get("id").and_then(Value::as_str) == Some(MODEL_ID)
                            && m.get("spawnable_on")
                                .and_then(Value::as_array)
                                .is_some_and(|h| h.iter().any(|h| h == HIVE_ID))
                    })
                });
                if ready {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("the hive did not offer {MODEL_ID} within 120 s; hive log:\n{}", self.hive.tail(15));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops watching, then the hive and the queen (nats-server stays, for the registry load).
    pub fn stop_daemons(&mut self) {
        self.watcher.stop();
        self.hive.stop(Duration::from_secs(15));
        self.queen.stop(Duration::from_secs(5));
    }
}

/// A child process with its log file.
pub struct Proc {
    /// For messages.
    pub name: String,
    /// Its log.
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    /// Starts `program args`, stdout and stderr to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> anyhow::Result<Self> {
        let file = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let child = Command::new(program)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        Ok(Self { name: name.to_owned(), log: log.to_path_buf(), child })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails, with the log's tail, when the process has exited.
    pub fn check(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.tail(15)
            );
        }
        Ok(())
    }

    /// The last `n` lines of its log.
    pub fn tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGTERM, then SIGKILL after `grace`; waits for it.
    pub fn stop(&mut self, grace: Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        stats::signal(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL now, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    rbee_testkit::nats::free_port()
}

/// Arguments of a queen on `port` connected to `nats`.
pub fn queen_args(nats: &str, port: u16) -> Vec<String> {
    vec!["--http-addr".into(), format!("127.0.0.1:{port}"), "--nats-url".into(), nats.into()]
}
