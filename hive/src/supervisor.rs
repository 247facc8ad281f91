//! Spawns worker processes and watches them. A worker that exits on its own or crashes becomes
//! `Failed` with its exit status and the last lines of its stderr, and a lifecycle event is published;
//! an optional restart policy starts it again with backoff. Stop is SIGTERM, then SIGKILL after a
//! deadline. Pid files let a restarted hive kill the workers of its previous life.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rbee_bus::{
    subject, Bus, EventStamper, HiveId, LifecycleEvent, ModelId, StopReply, WorkerId, WorkerLifecycle,
    SCHEMA_VERSION,
};
use rbee_daemon::signal::{die_with_parent, send_to_pid};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;

use crate::running::{RunningWorkers, WorkerEntry, WorkerStatus};

/// Lines of a worker's stderr kept for the failure report.
const STDERR_TAIL: usize = 20;
/// The longest stderr line kept in the tail, in bytes (the tail goes into lifecycle events).
const STDERR_LINE_MAX: usize = 512;
/// How long an exited worker's stderr may take to reach its end before its tail is read.
const STDERR_DRAIN: Duration = Duration::from_secs(1);

/// Everything needed to start one worker process (kept to restart it).
#[derive(Debug, Clone)]
pub struct LaunchPlan {
    /// The worker's id.
    pub worker_id: WorkerId,
    /// The model id.
    pub model_id: ModelId,
    /// The GGUF file.
    pub model_path: PathBuf,
    /// Device id.
    pub device: String,
    /// Slots.
    pub slots: u32,
    /// Context per slot.
    pub ctx_per_slot: u32,
    /// Threads, when set.
    pub threads: Option<u32>,
    /// The worker binary.
    pub binary: PathBuf,
    /// In secure mode, the pool identity the worker connects to NATS with.
    pub identity: Option<rbee_bus::security::PoolIdentity>,
    /// The memory it is estimated to need (weights plus KV cache), in bytes.
    pub memory_bytes: u64,
}

/// `GOMP_SPINCOUNT` of spawned workers unless the hive's environment sets one (see `start_process`).
pub const WORKER_GOMP_SPINCOUNT: &str = "10000";

/// Whether crashed workers are started again.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// Restarts allowed per worker; 0 disables.
    pub max_restarts: u32,
    /// First backoff; doubles each time, at most 30 s.
    pub initial_backoff: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self { max_restarts: 0, initial_backoff: Duration::from_secs(1) }
    }
}

/// How a worker process ended.
#[derive(Debug, Clone, PartialEq)]
pub struct ExitInfo {
    /// `exit status: 0`, `signal: 9 (SIGKILL)`.
    pub status: String,
    /// It exited because it was asked to.
    pub requested: bool,
}

struct Running {
    pid: u32,
    exited: watch::Receiver<Option<ExitInfo>>,
    stop_requested: Arc<std::sync::atomic::AtomicBool>,
}

/// Starts, watches and stops worker processes.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

/// What a supervisor is started with.
pub struct SupervisorConfig {
    /// The hive's id, given to every worker.
    pub hive_id: HiveId,
    /// Where lifecycle events are published.
    pub bus: Bus,
    /// Stamps them.
    pub stamper: Arc<EventStamper>,
    /// Where spawned workers are registered.
    pub workers: RunningWorkers,
    /// Where pid files are written.
    pub run_dir: PathBuf,
    /// Passed to every worker: its NATS URLs and credentials options.
    pub worker_nats_args: Vec<String>,
    /// The workers' heartbeat interval.
    pub heartbeat_ms: u64,
    /// Whether crashed workers are started again.
    pub restart: RestartPolicy,
}

struct Inner {
    config: SupervisorConfig,
    running: Mutex<HashMap<WorkerId, Running>>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").field("hive_id", &self.inner.config.hive_id).finish()
    }
}

impl Supervisor {
    /// A supervisor writing pid files under `config.run_dir`.
    pub fn new(config: SupervisorConfig) -> Self {
        Self { inner: Arc::new(Inner { config, running: Mutex::new(HashMap::new()) }) }
    }

    /// Kills worker processes left by a previous life of this hive (found by their pid files).
    pub fn kill_orphans(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.inner.config.run_dir) else { return 0 };
        let mut killed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("pid") {
                continue;
            }
            let pid = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<u32>().ok());
            if let Some(pid) = pid {
                let cmdline = process_cmdline(pid);
                tracing::debug!(pid, cmdline = %cmdline, "pid file of a previous worker");
                if cmdline.contains("rbee-worker") {
                    tracing::warn!(pid, file = %path.display(), "killing orphan worker from a previous hive");
                    send_to_pid(pid, Signal::Kill);
                    killed += 1;
                }
            }
            let _ = std::fs::remove_file(&path);
        }
        killed
    }

    /// Starts a worker process and registers it as `Starting`; returns its pid.
    pub async fn spawn(&self, plan: LaunchPlan) -> std::io::Result<u32> {
        self.spawn_attempt(plan, 0).await
    }

    fn spawn_attempt(
        &self,
        plan: LaunchPlan,
        restarts: u32,
    ) -> futures::future::BoxFuture<'static, std::io::Result<u32>> {
        let this = self.clone();
        Box::pin(async move { this.start_process(plan, restarts).await })
    }

    async fn start_process(&self, plan: LaunchPlan, restarts: u32) -> std::io::Result<u32> {
        let inner = &self.inner;
        let mut cmd = tokio::process::Command::new(&plan.binary);
        cmd.arg("--worker-id")
            .arg(plan.worker_id.as_str())
            .arg("--hive-id")
            .arg(inner.config.hive_id.as_str())
            .arg("--model-id")
            .arg(plan.model_id.as_str())
            .arg("--model-path")
            .arg(&plan.model_path)
            .arg("--device")
            .arg(&plan.device)
            .arg("--slots")
            .arg(plan.slots.to_string())
            .arg("--ctx-per-slot")
            .arg(plan.ctx_per_slot.to_string())
            .arg("--heartbeat-ms")
            .arg(inner.config.heartbeat_ms.to_string())
            .args(&inner.config.worker_nats_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        if let Some(threads) = plan.threads {
            cmd.arg("--threads").arg(threads.to_string());
        }
        if let Some(identity) = &plan.identity {
            // The worker's own identity, never the hive's: the password and inbox prefix go in the
            // environment (not argv, which any local user can read), the hive's own secrets are removed.
            for var in [
                "RBEE_NATS_USER",
                "RBEE_NATS_PASSWORD",
                "RBEE_NATS_INBOX_PREFIX",
                "RBEE_NATS_CREDS",
                "RBEE_WORKER_POOL",
                "RBEE_API_KEY",
            ] {
                cmd.env_remove(var);
            }
            cmd.arg("--nats-user")
                .arg(&identity.user)
                .env("RBEE_NATS_PASSWORD", &identity.password)
                .env("RBEE_NATS_INBOX_PREFIX", &identity.inbox_prefix);
        }
        // The hub token is the hive's, for pulls; a worker never needs it.
        cmd.env_remove("HF_TOKEN");
        // llama.cpp's OpenMP threads spin-wait for each other between ops by default. On a machine whose
        // cores are shared (the queen, nats-server and clients wake for every token), a spinning thread
        // burns the core its partner needs, and decoding slowed 6-30x in the fault tests under load; a
        // short spin then sleep cost 13% idle and kept it within 2.6x. OpenMP reads this at process
        // start, so it is set here; a value set by the user is kept.
        if std::env::var_os("GOMP_SPINCOUNT").is_none() && std::env::var_os("OMP_WAIT_POLICY").is_none() {
            cmd.env("GOMP_SPINCOUNT", WORKER_GOMP_SPINCOUNT);
        }
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn()?;
        let pid = child.id().unwrap_or_default();
        let _ = std::fs::create_dir_all(&inner.config.run_dir);
        let pid_file = inner.config.run_dir.join(format!("{}.pid", plan.worker_id));
        let _ = std::fs::write(&pid_file, pid.to_string());

        let mut entry =
            WorkerEntry::new(plan.worker_id.clone(), plan.model_id.clone(), plan.device.clone(), pid);
        entry.memory_bytes = plan.memory_bytes;
        let _ = inner.config.workers.remove(&plan.worker_id);
        let _ = inner.config.workers.register(entry);
        let (exit_tx, exit_rx) = watch::channel(None);
        let stop_requested = Arc::new(std::sync::atomic::AtomicBool::new(false));
        inner.running.lock().unwrap_or_else(PoisonError::into_inner).insert(
            plan.worker_id.clone(),
            Running { pid, exited: exit_rx, stop_requested: stop_requested.clone() },
        );
        tracing::info!(worker_id = %plan.worker_id, pid, model = %plan.model_id, device = %plan.device, "worker process started");
        self.lifecycle(&plan, LifecycleEvent::Started { pid }).await;

        // Keep the last lines of stderr, and pass them on to the hive's log.
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
        let mut reader = None;
        if let Some(stderr) = child.stderr.take() {
            let tail = tail.clone();
            let worker_id = plan.worker_id.clone();
            reader = Some(tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(target: "rbee_hive::worker_log", %worker_id, "{line}");
                    let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
                    if tail.len() == STDERR_TAIL {
                        tail.pop_front();
                    }
                    let mut line = strip_ansi(&line);
                    if line.len() > STDERR_LINE_MAX {
                        let cut =
                            (0..=STDERR_LINE_MAX).rev().find(|&i| line.is_char_boundary(i)).unwrap_or(0);
                        line.truncate(cut);
                    }
                    tail.push_back(line);
                }
            }));
        }

        let this = self.clone();
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(s) => describe_exit(s),
                Err(e) => format!("wait failed: {e}"),
            };
            // Let the stderr reader take the last lines: it ends at the pipe's end, which a child the
            // worker left behind could hold open, so not for long.
            if let Some(reader) = reader {
                let _ = tokio::time::timeout(STDERR_DRAIN, reader).await;
            }
            let requested = stop_requested.load(std::sync::atomic::Ordering::SeqCst);
            let _ = std::fs::remove_file(&pid_file);
            let stderr_tail: Vec<String> =
                tail.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect();
            this.on_exit(plan, restarts, status, requested, stderr_tail, exit_tx).await;
        });
        Ok(pid)
    }

    async fn on_exit(
        &self,
        plan: LaunchPlan,
        restarts: u32,
        status: String,
        requested: bool,
        stderr_tail: Vec<String>,
        exit_tx: watch::Sender<Option<ExitInfo>>,
    ) {
        let inner = &self.inner;
        if requested {
            tracing::info!(worker_id = %plan.worker_id, exit = %status, "worker stopped");
            let _ = inner.config.workers.update_status(&plan.worker_id, WorkerStatus::Stopped);
            self.lifecycle(&plan, LifecycleEvent::Exited { exit: status.clone() }).await;
        } else {
            let last = stderr_tail.iter().rev().take(3).rev().cloned().collect::<Vec<_>>().join(" | ");
            let error = if last.is_empty() { status.clone() } else { format!("{status}; stderr: {last}") };
            tracing::error!(worker_id = %plan.worker_id, exit = %status, "worker failed");
            let _ = inner.config.workers.update_status(&plan.worker_id, WorkerStatus::Failed { error });
            self.lifecycle(&plan, LifecycleEvent::Failed { exit: status.clone(), stderr_tail }).await;
        }
        inner.running.lock().unwrap_or_else(PoisonError::into_inner).remove(&plan.worker_id);
        let _ = exit_tx.send(Some(ExitInfo { status, requested }));

        let policy = inner.config.restart;
        if !requested && restarts < policy.max_restarts {
            let backoff =
                (policy.initial_backoff * 2u32.saturating_pow(restarts)).min(Duration::from_secs(30));
            tracing::info!(worker_id = %plan.worker_id, attempt = restarts + 1, backoff_ms = backoff.as_millis() as u64, "restarting worker");
            let this = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(backoff).await;
                if let Err(e) = this.spawn_attempt(plan.clone(), restarts + 1).await {
                    tracing::error!(worker_id = %plan.worker_id, error = %e, "worker restart failed");
                }
            });
        }
    }

    async fn lifecycle(&self, plan: &LaunchPlan, event: LifecycleEvent) {
        let inner = &self.inner;
        let message = WorkerLifecycle {
            v: SCHEMA_VERSION,
            meta: inner.config.stamper.next(),
            hive_id: inner.config.hive_id.clone(),
            worker_id: plan.worker_id.clone(),
            model_id: plan.model_id.clone(),
            event,
        };
        if let Err(e) = inner.config.bus.publish(subject::worker_lifecycle(&plan.worker_id), &message).await {
            tracing::warn!(worker_id = %plan.worker_id, error = %e, "cannot publish lifecycle event");
        }
    }

    /// Stops a worker: SIGTERM, then SIGKILL when it has not exited within `deadline`.
    pub async fn stop(&self, worker_id: &WorkerId, deadline: Duration) -> Option<StopReply> {
        let (pid, mut exited, flag) = {
            let running = self.inner.running.lock().unwrap_or_else(PoisonError::into_inner);
            let r = running.get(worker_id)?;
            (r.pid, r.exited.clone(), r.stop_requested.clone())
        };
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(%worker_id, pid, "stopping worker");
        send_to_pid(pid, Signal::Term);
        let graceful = tokio::time::timeout(deadline, exited.wait_for(Option::is_some)).await.is_ok();
        if !graceful {
            tracing::warn!(%worker_id, pid, "worker did not stop in time, killing it");
            send_to_pid(pid, Signal::Kill);
            let _ = tokio::time::timeout(Duration::from_secs(5), exited.wait_for(Option::is_some)).await;
        }
        let exit = exited.borrow().as_ref().map(|e| e.status.clone()).unwrap_or_else(|| "unknown".to_owned());
        Some(StopReply { v: SCHEMA_VERSION, worker_id: worker_id.clone(), graceful, exit })
    }

    /// Stops every running worker, in parallel, within `deadline` (then killed).
    pub async fn stop_all(&self, deadline: Duration) {
        let ids: Vec<WorkerId> =
            self.inner.running.lock().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect();
        let stops = ids.iter().map(|id| self.stop(id, deadline));
        futures::future::join_all(stops).await;
    }

    /// Workers with a live process.
    pub fn running_count(&self) -> usize {
        self.inner.running.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// The directory holding pid files.
    pub fn run_dir(&self) -> &Path {
        &self.inner.config.run_dir
    }
}

/// A process's command line; empty when it does not exist. Retries briefly, because a process that has
/// only just exec'd may show an empty command line for a moment.
fn process_cmdline(pid: u32) -> String {
    for _ in 0..10 {
        match std::fs::read(format!("/proc/{pid}/cmdline")) {
            Ok(bytes) if !bytes.is_empty() => return String::from_utf8_lossy(&bytes).into_owned(),
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => return String::new(),
        }
    }
    String::new()
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status: {code}"),
        (None, Some(9)) => "signal: 9 (SIGKILL)".to_owned(),
        (None, Some(15)) => "signal: 15 (SIGTERM)".to_owned(),
        (None, Some(sig)) => format!("signal: {sig}"),
        _ => "unknown".to_owned(),
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub use rbee_daemon::signal::Signal;
