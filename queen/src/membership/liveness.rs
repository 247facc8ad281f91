//! Liveness by the queen's own receive clock: the age of the last heartbeat (for a worker, of the last
//! message it published, heartbeat or not), counted in the interval the publisher announced. The
//! sender's `sent_at_ms` is never used (clock skew between machines made other systems declare healthy
//! nodes lost).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::config::RegistryConfig;

/// How recently an entry was heard from. Ordered: `Online < Suspect < Offline`, so liveness only
/// grows with age between two heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    /// Last heartbeat at most `suspect_after_intervals` intervals old.
    Online,
    /// Older than that, at most `offline_after_intervals` intervals: not used for scheduling.
    Suspect,
    /// Older than `offline_after_intervals` intervals; removed later by `expire`.
    Offline,
}

impl Liveness {
    /// The name used in views and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Liveness::Online => "online",
            Liveness::Suspect => "suspect",
            Liveness::Offline => "offline",
        }
    }

    /// Liveness of an entry whose last heartbeat is `age` old and which heartbeats every `interval`.
    pub fn for_age(age: Duration, interval: Duration, config: &RegistryConfig) -> Liveness {
        if age > interval.saturating_mul(config.offline_after_intervals) {
            Liveness::Offline
        } else if age > interval.saturating_mul(config.suspect_after_intervals) {
            Liveness::Suspect
        } else {
            Liveness::Online
        }
    }
}

/// When an entry was heard from, at which interval, and the liveness last reported as a change.
#[derive(Debug, Clone)]
pub(crate) struct Heard {
    /// Receive time of the last accepted heartbeat or, for a worker, of the last other message it
    /// published in its current epoch (a token chunk, a job status), whichever came later.
    pub last_seen: Instant,
    /// The interval believed for this publisher (announced, then clamped).
    pub interval: Duration,
    /// The liveness last reported through a change, so transitions are reported once.
    pub reported: Liveness,
}

impl Heard {
    /// Heard for the first time at `now`.
    pub fn new(now: Instant, interval: Duration) -> Self {
        Self { last_seen: now, interval, reported: Liveness::Online }
    }

    /// Age of the last heartbeat at `now` (zero if `now` is earlier).
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_seen)
    }

    /// Liveness at `now`.
    pub fn liveness(&self, now: Instant, config: &RegistryConfig) -> Liveness {
        Liveness::for_age(self.age(now), self.interval, config)
    }

    /// True once the entry is older than the removal grace.
    pub fn past_removal(&self, now: Instant, config: &RegistryConfig) -> bool {
        self.age(now) > config.removal_age(self.interval)
    }

    /// Records a heartbeat received at `now`. Returns the previously reported liveness when it was not
    /// `Online`, so the caller can report the recovery. A `now` earlier than the last heartbeat (the
    /// caller's clock is monotonic, so only a caller mistake) never moves `last_seen` back.
    pub fn heard(&mut self, now: Instant, interval: Duration) -> Option<Liveness> {
        self.interval = interval;
        self.alive(now)
    }

    /// Records a sign of life other than a heartbeat, received at `now`: like [`heard`](Self::heard),
    /// but the interval stays the one the last heartbeat announced.
    pub fn alive(&mut self, now: Instant) -> Option<Liveness> {
        self.last_seen = self.last_seen.max(now);
        let previous = std::mem::replace(&mut self.reported, Liveness::Online);
        (previous != Liveness::Online).then_some(previous)
    }
}
