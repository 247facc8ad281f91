//! The child processes of `rbee up`: each in its own process group (so the terminal's ctrl-c reaches
//! only `rbee`, which stops them in order), output appended to a log file, SIGTERM on `rbee`'s death,
//! and a stop that escalates from SIGTERM to SIGKILL of the whole group after a deadline.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rbee_daemon::signal::{self, Signal};

/// Process ids to SIGKILL on a forced exit (second ctrl-c): process groups (negative) and single pids.
#[derive(Debug, Clone, Default)]
pub struct KillList(Arc<Mutex<Vec<i32>>>);

impl KillList {
    /// Remembers a target: `-pgid` for a group, `pid` for one process.
    pub fn add(&self, target: i32) {
        if let Ok(mut list) = self.0.lock() {
            list.push(target);
        }
    }

    /// SIGKILLs everything remembered.
    pub fn kill_all(&self) {
        let targets = self.0.lock().map(|list| list.clone()).unwrap_or_default();
        for target in targets {
            signal::send(target, Signal::Kill);
        }
    }
}

/// One child process.
pub struct Child {
    /// `nats`, `queen` or `hive`, for messages.
    pub name: &'static str,
    /// Its log file.
    pub log: PathBuf,
    /// Where this run's output starts in the log.
    log_start: u64,
    /// Its pid, which is also its process group id.
    pid: i32,
    child: tokio::process::Child,
    /// Set once it has been reaped.
    status: Option<ExitStatus>,
}

impl Child {
    /// Starts `program args` in a new process group, stdout and stderr appended to `log`.
    pub fn spawn(
        name: &'static str,
        program: &Path,
        args: &[String],
        envs: &[(&str, String)],
        log: &Path,
        kill_list: &KillList,
    ) -> anyhow::Result<Self> {
        let mut file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open log file {}", log.display()))?;
        writeln!(file, "==== rbee up: {} {} ====", program.display(), args.join(" "))?;
        let log_start = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            // Their output goes to files: no color escapes there.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0)
            .kill_on_drop(false);
        // The CLI runs on a single-threaded runtime: the forking thread lives as long as `rbee`.
        signal::die_with_parent(&mut command);
        let child = command.spawn().with_context(|| format!("cannot start {}", program.display()))?;
        let pid = child.id().and_then(|id| i32::try_from(id).ok()).unwrap_or(0);
        kill_list.add(-pid);
        Ok(Self { name, log: log.to_path_buf(), log_start, pid, child, status: None })
    }

    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The exit status, if it has exited (reaps it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL of its whole group. Afterwards the group is
    /// SIGKILLed anyway, so nothing it started outlives it. Returns how it ended.
    pub async fn stop(&mut self, grace: Duration) -> String {
        let outcome = if let Some(status) = self.exited() {
            format!("had already exited ({status})")
        } else {
            signal::send(self.pid, Signal::Term);
            match tokio::time::timeout(grace, self.child.wait()).await {
                Ok(Ok(status)) => {
                    self.status = Some(status);
                    "stopped".to_owned()
                }
                _ => {
                    signal::send(-self.pid, Signal::Kill);
                    self.status = self.child.wait().await.ok();
                    format!("killed after {} s", grace.as_secs_f32())
                }
            }
        };
        signal::send(-self.pid, Signal::Kill);
        outcome
    }

    /// The last `lines` lines this run wrote to its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.log) {
            let _ = file.seek(SeekFrom::Start(self.log_start));
            let _ = file.read_to_string(&mut text);
        }
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..]
            .iter()
            .map(|l| format!("  | {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
