//! How long an idle worker stays loaded: the keep-alive table, pure (no clock of its own, no I/O).
//! Every worker gets the queen's default (`--keep-alive`, 5 minutes, as Ollama does) unless it was
//! spawned explicitly (`POST /v1/workers`: pinned, kept loaded, unless that request named a
//! `keep_alive`). A job's `keep_alive` (Ollama's per-request field: `0` unloads after the job, a
//! negative value keeps it) sets its worker's until the next job, which sets it again or goes back
//! to the default; it never changes a pinned worker (pinning and stopping need the admin key). A
//! worker the queen learns of only from the registry (after a queen restart) is kept until a job
//! runs on it: the queen no longer knows whether it was pinned. Entries follow the worker's pid, so
//! a reused worker id starts afresh. The table watches the registry's workers to learn since when each is
//! idle; [`KeepAliveTable::due`] names the ones whose time is up and [`KeepAliveTable::evictable`]
//! the idle ones a spawn that does not fit may stop, least recently used first. The I/O (stopping
//! them) is [`crate::unload`]'s.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use rbee_bus::{WorkerId, WorkerState};
use serde::{Deserialize, Serialize};

use crate::membership::WorkerView;

/// The keep-alive of a worker spawned on demand when nothing else is said.
pub const DEFAULT_KEEP_ALIVE: KeepAlive = KeepAlive::For(Duration::from_secs(300));
/// How long an entry for a worker the registry has not listed yet is kept (a spawn in flight).
const UNSEEN_TTL: Duration = Duration::from_secs(120);
/// The longest finite keep-alive, a year, in seconds.
const MAX_SECONDS: f64 = 365.0 * 86_400.0;

/// How long an idle worker stays loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeepAlive {
    /// Until it is stopped.
    Forever,
    /// This long after its last job (0: as soon as it is idle).
    For(Duration),
}

impl KeepAlive {
    /// Reads Ollama's forms: a number of seconds, or a Go-style duration (`"5m"`, `"1h30m"`,
    /// `"500ms"`, `"30s"`, or a bare number as seconds); a negative value keeps the worker loaded.
    pub fn parse(raw: &serde_json::Value) -> Result<KeepAlive, String> {
        match raw {
            serde_json::Value::Number(n) => {
                let seconds = n.as_f64().ok_or("is not a number")?;
                Self::from_seconds(seconds)
            }
            serde_json::Value::String(s) => s.parse(),
            _ => Err("must be a duration such as \"5m\" or a number of seconds".to_owned()),
        }
    }

    fn from_seconds(seconds: f64) -> Result<KeepAlive, String> {
        if !seconds.is_finite() {
            return Err("is not a finite duration".to_owned());
        }
        if seconds < 0.0 {
            return Ok(KeepAlive::Forever);
        }
        if seconds > MAX_SECONDS {
            return Err(format!("is over a year ({seconds} s): use -1 to keep a worker loaded"));
        }
        Ok(KeepAlive::For(Duration::from_secs_f64(seconds)))
    }

    /// Seconds, or `None` for forever (how the API shows it).
    pub fn seconds(self) -> Option<f64> {
        match self {
            KeepAlive::Forever => None,
            KeepAlive::For(d) => Some(d.as_secs_f64()),
        }
    }
}

impl std::str::FromStr for KeepAlive {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let shown: String = s.chars().take(40).collect();
        let bad = || format!("{shown:?} is not a duration (examples: 5m, 30s, 1h30m, 0, -1)");
        if let Ok(seconds) = text.parse::<f64>() {
            return KeepAlive::from_seconds(seconds);
        }
        let (negative, mut rest) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        if rest.is_empty() {
            return Err(bad());
        }
        let mut seconds = 0.0;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
            let value: f64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
            let scale = match &rest[..unit_len] {
                "ms" => 0.001,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return Err(bad()),
            };
            seconds += value * scale;
            rest = &rest[unit_len..];
        }
        // "-0s" is zero, as "-0" is; any other negative duration keeps the worker.
        KeepAlive::from_seconds(if negative && seconds > 0.0 { -seconds } else { seconds })
    }
}

impl fmt::Display for KeepAlive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepAlive::Forever => f.write_str("forever"),
            KeepAlive::For(d) => write!(f, "{}s", d.as_secs_f64()),
        }
    }
}

/// An idle worker that may be stopped to make room, with how long it has been idle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evictable {
    /// The worker.
    pub worker_id: WorkerId,
    /// Idle for this long, in ms (the longest idle is the least recently used).
    pub idle_ms: u64,
    /// A stop was already asked for: its memory is on the way back.
    #[serde(default)]
    pub stopping: bool,
}

#[derive(Debug, Clone)]
struct Entry {
    keep_alive: KeepAlive,
    /// Spawned explicitly without a keep-alive: requests do not change it.
    pinned: bool,
    /// The worker's pid once the registry listed it (a new pid is a new worker).
    pid: Option<u32>,
    /// Since when it has had no job; `None` while busy or not yet listed.
    idle_since: Option<Instant>,
    /// When the entry was made, and whether the registry has listed the worker since.
    created: Instant,
    seen: bool,
    /// A stop was asked for (at this time): not asked again, not offered for eviction.
    stopping: Option<Instant>,
}

/// Each worker's keep-alive and idle time.
#[derive(Debug)]
pub struct KeepAliveTable {
    default: KeepAlive,
    workers: HashMap<WorkerId, Entry>,
}

impl KeepAliveTable {
    /// A table giving unnamed workers `default`.
    pub fn new(default: KeepAlive) -> Self {
        Self { default, workers: HashMap::new() }
    }

    fn entry(&mut self, worker_id: &WorkerId, now: Instant) -> &mut Entry {
        let default = self.default;
        self.workers.entry(worker_id.clone()).or_insert_with(|| Entry {
            keep_alive: default,
            pinned: false,
            pid: None,
            idle_since: None,
            created: now,
            seen: false,
            stopping: None,
        })
    }

    /// An explicit spawn's keep-alive: `Forever` pins the worker (requests do not change it).
    pub fn spawned(&mut self, worker_id: &WorkerId, keep_alive: KeepAlive, now: Instant) {
        let entry = self.entry(worker_id, now);
        entry.keep_alive = keep_alive;
        entry.pinned = keep_alive == KeepAlive::Forever;
    }

    /// A job starts on the worker: busy from now (before its heartbeat says so), and its keep-alive
    /// is the job's, else the default (a pinned worker keeps its own).
    pub fn job_started(&mut self, worker_id: &WorkerId, wanted: Option<KeepAlive>, now: Instant) {
        let default = self.default;
        let entry = self.entry(worker_id, now);
        entry.idle_since = None;
        if !entry.pinned {
            entry.keep_alive = wanted.unwrap_or(default);
        }
    }

    /// A request without a job (Ollama's load call) sets an idle worker's keep-alive; false when
    /// the worker is pinned.
    pub fn requested(&mut self, worker_id: &WorkerId, keep_alive: KeepAlive, now: Instant) -> bool {
        let entry = self.entry(worker_id, now);
        if !entry.pinned {
            entry.keep_alive = keep_alive;
        }
        !entry.pinned
    }

    /// Folds the registry's workers in: since when each is idle; entries of workers gone are dropped.
    pub fn observe(&mut self, workers: &[WorkerView], now: Instant) {
        for worker in workers {
            let known = self.workers.contains_key(&worker.worker_id);
            let entry = self.entry(&worker.worker_id, now);
            if !known {
                // Learnt of from the registry alone (a queen restart): kept until a job runs on it.
                entry.keep_alive = KeepAlive::Forever;
            }
            if entry.pid.is_some_and(|pid| pid != worker.pid) {
                // The same id on a new process (a pool identity reused): a new worker.
                entry.idle_since = None;
                entry.stopping = None;
                entry.pinned = false;
                entry.keep_alive = KeepAlive::Forever;
            }
            entry.pid = Some(worker.pid);
            entry.seen = true;
            let idle = worker.state == WorkerState::Idle && worker.slots_used() == 0;
            if !idle {
                entry.idle_since = None;
            } else if entry.idle_since.is_none() {
                entry.idle_since = Some(now);
            }
        }
        let listed: std::collections::HashSet<&WorkerId> = workers.iter().map(|w| &w.worker_id).collect();
        self.workers.retain(|id, entry| {
            listed.contains(id) || (!entry.seen && now.duration_since(entry.created) < UNSEEN_TTL)
        });
    }

    /// Workers idle past their keep-alive and not being stopped yet; marks them stopping.
    pub fn due(&mut self, now: Instant) -> Vec<WorkerId> {
        let mut due = Vec::new();
        for (id, entry) in &mut self.workers {
            let (KeepAlive::For(keep), Some(since)) = (entry.keep_alive, entry.idle_since) else { continue };
            if entry.stopping.is_none() && now.duration_since(since) >= keep {
                entry.stopping = Some(now);
                due.push(id.clone());
            }
        }
        due.sort();
        due
    }

    /// Marks workers as being stopped (for room); returns those not already stopping.
    pub fn stopping(&mut self, workers: &[WorkerId], now: Instant) -> Vec<WorkerId> {
        let mut fresh = Vec::new();
        for id in workers {
            let entry = self.entry(id, now);
            if entry.stopping.is_none() {
                entry.stopping = Some(now);
                fresh.push(id.clone());
            }
        }
        fresh
    }

    /// Workers being stopped: no job goes to them.
    pub fn stopping_ids(&self) -> Vec<WorkerId> {
        self.workers.iter().filter(|(_, e)| e.stopping.is_some()).map(|(id, _)| id.clone()).collect()
    }

    /// A stop that failed: the worker may be asked again.
    pub fn stop_failed(&mut self, worker_id: &WorkerId) {
        if let Some(entry) = self.workers.get_mut(worker_id) {
            entry.stopping = None;
        }
    }

    /// Workers whose memory can make room: those being stopped first, then the idle ones not kept
    /// forever, least recently used first.
    pub fn evictable(&self, now: Instant) -> Vec<Evictable> {
        let mut idle: Vec<Evictable> = self
            .workers
            .iter()
            .filter_map(|(id, e)| {
                let idle_ms = e.idle_since.map(|since| now.duration_since(since).as_millis() as u64);
                let offered =
                    e.stopping.is_some() || (e.keep_alive != KeepAlive::Forever && idle_ms.is_some());
                offered.then(|| Evictable {
                    worker_id: id.clone(),
                    idle_ms: idle_ms.unwrap_or(u64::MAX),
                    stopping: e.stopping.is_some(),
                })
            })
            .collect();
        idle.sort_by(|a, b| {
            b.stopping
                .cmp(&a.stopping)
                .then(b.idle_ms.cmp(&a.idle_ms))
                .then_with(|| a.worker_id.cmp(&b.worker_id))
        });
        idle
    }

    /// A worker's keep-alive (the default for one not in the table).
    pub fn keep_alive(&self, worker_id: &WorkerId) -> KeepAlive {
        self.workers.get(worker_id).map_or(self.default, |e| e.keep_alive)
    }

    /// Time until the worker unloads: `None` while busy, kept forever, or unknown.
    pub fn unload_in(&self, worker_id: &WorkerId, now: Instant) -> Option<Duration> {
        let entry = self.workers.get(worker_id)?;
        let (KeepAlive::For(keep), Some(since)) = (entry.keep_alive, entry.idle_since) else { return None };
        Some(keep.saturating_sub(now.duration_since(since)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_ollamas() {
        let secs = |s: &str| s.parse::<KeepAlive>().map(KeepAlive::seconds);
        assert_eq!(secs("5m"), Ok(Some(300.0)));
        assert_eq!(secs("1h30m"), Ok(Some(5400.0)));
        assert_eq!(secs("500ms"), Ok(Some(0.5)));
        assert_eq!(secs("30"), Ok(Some(30.0)));
        assert_eq!(secs("0"), Ok(Some(0.0)));
        assert_eq!(secs("-1"), Ok(None));
        assert_eq!(secs("-1m"), Ok(None));
        for bad in ["", "5x", "m", "-", "1h-2m", "NaN", "inf"] {
            assert!(bad.parse::<KeepAlive>().is_err(), "{bad:?} was taken");
        }
        assert_eq!(secs("-0s"), Ok(Some(0.0)), "minus zero is zero");
        assert!("9999999999h".parse::<KeepAlive>().is_err(), "over a year is refused, not forever");
        assert_eq!(KeepAlive::parse(&serde_json::json!(0)), Ok(KeepAlive::For(Duration::ZERO)));
        assert_eq!(KeepAlive::parse(&serde_json::json!(-1)), Ok(KeepAlive::Forever));
        assert!(KeepAlive::parse(&serde_json::json!(true)).is_err());
    }

    #[test]
    fn a_pinned_worker_keeps_its_keep_alive_and_jobs_set_the_others() {
        let now = Instant::now();
        let five = KeepAlive::For(Duration::from_secs(300));
        let mut table = KeepAliveTable::new(five);
        let (pinned, other): (WorkerId, WorkerId) =
            ("wrk-a".parse().expect("id"), "wrk-b".parse().expect("id"));
        table.spawned(&pinned, KeepAlive::Forever, now);
        table.job_started(&pinned, Some(KeepAlive::For(Duration::ZERO)), now);
        assert!(!table.requested(&pinned, KeepAlive::For(Duration::ZERO), now));
        assert_eq!(table.keep_alive(&pinned), KeepAlive::Forever, "requests do not change a pinned worker");
        table.job_started(&other, Some(KeepAlive::For(Duration::ZERO)), now);
        assert_eq!(table.keep_alive(&other), KeepAlive::For(Duration::ZERO));
        table.job_started(&other, None, now);
        assert_eq!(table.keep_alive(&other), five, "the next job without one goes back to the default");
        assert!(table.requested(&other, KeepAlive::Forever, now));
        assert_eq!(table.keep_alive(&other), KeepAlive::Forever);
        assert_eq!(table.stopping(std::slice::from_ref(&other), now), vec![other.clone()]);
        assert!(table.stopping(std::slice::from_ref(&other), now).is_empty(), "asked once");
        assert_eq!(table.stopping_ids(), vec![other.clone()]);
        table.stop_failed(&other);
        assert!(table.stopping_ids().is_empty());
    }
}
