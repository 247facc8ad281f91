//! Thresholds of the registry: liveness in heartbeat intervals, fences, reservations, tombstones.

use std::time::Duration;

/// How the registry judges liveness and how long it remembers things. Thresholds are counted in the
/// interval each publisher announces in its own heartbeat (`interval_ms`), clamped to
/// [`min_interval`](Self::min_interval)..=[`max_interval`](Self::max_interval) so that a bogus interval
/// can neither flap an entry nor keep a ghost forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Suspect once the last heartbeat is older than this many intervals (default 2).
    pub suspect_after_intervals: u32,
    /// Offline once the last heartbeat is older than this many intervals (default 3).
    pub offline_after_intervals: u32,
    /// Removed by [`expire`](super::Registry::expire) once older than this many intervals (default 10).
    pub remove_after_intervals: u32,
    /// Smallest interval believed, whatever a heartbeat announces (default 100 ms).
    pub min_interval: Duration,
    /// Largest interval believed, whatever a heartbeat announces (default 60 s).
    pub max_interval: Duration,
    /// How long a fenced worker stays out of scheduling unless it restarts first (default 30 s).
    pub fence_timeout: Duration,
    /// A slot reservation younger than this survives the worker's next heartbeat, because that
    /// heartbeat may have been sent before the worker accepted the job (default 250 ms).
    pub reservation_settle: Duration,
    /// How long the epoch of a worker removed on purpose (stopped, its hive restarted) is remembered,
    /// so that late heartbeats of that epoch do not bring it back (default 10 min).
    pub tombstone_ttl: Duration,
    /// How many previous epochs of one publisher are remembered: a late heartbeat from one of them is
    /// stale, not a restart (default 4).
    pub retired_epochs_kept: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            suspect_after_intervals: 2,
            offline_after_intervals: 3,
            remove_after_intervals: 10,
            min_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(60),
            fence_timeout: Duration::from_secs(30),
            reservation_settle: Duration::from_millis(250),
            tombstone_ttl: Duration::from_secs(600),
            retired_epochs_kept: 4,
        }
    }
}

impl RegistryConfig {
    /// The same configuration made consistent: at least one interval before suspect, offline no
    /// sooner than suspect, removal no sooner than offline, a non-zero minimum interval and a maximum
    /// no smaller than the minimum.
    pub fn normalized(mut self) -> Self {
        self.suspect_after_intervals = self.suspect_after_intervals.max(1);
        self.offline_after_intervals = self.offline_after_intervals.max(self.suspect_after_intervals);
        self.remove_after_intervals = self.remove_after_intervals.max(self.offline_after_intervals);
        self.min_interval = self.min_interval.max(Duration::from_millis(1));
        self.max_interval = self.max_interval.max(self.min_interval);
        self
    }

    /// The interval believed for a heartbeat that announces `interval_ms`.
    pub fn interval(&self, interval_ms: u64) -> Duration {
        Duration::from_millis(interval_ms).max(self.min_interval).min(self.max_interval)
    }

    /// Age after which an entry with this interval is removed.
    pub fn removal_age(&self, interval: Duration) -> Duration {
        interval.saturating_mul(self.remove_after_intervals)
    }
}
