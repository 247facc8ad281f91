//! The leader lease as a pure state machine over what a queen reads of the lease entry and the time
//! on its own monotonic clock. A standby takes over an entry only after seeing the same revision
//! for a whole lease (measured from when *it* first saw that revision, so clocks never compare
//! across machines); a leader counts its lease valid until the send time of its last successful
//! write plus the lease minus [`Lease::margin`], so it stops acting before any standby may start.

use std::time::{Duration, Instant};

/// What the queen should do next with the KV entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// No lease exists: create it (fails if another queen just did).
    Create,
    /// The lease at this revision went unrenewed for a whole lease: replace it (compare-and-set).
    TakeOver {
        /// The revision seen.
        revision: u64,
    },
    /// Another queen holds a live lease: read again later.
    Wait,
    /// Renew our lease, written last at this revision (compare-and-set).
    Renew {
        /// Our last write.
        revision: u64,
    },
}

/// This queen's standing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// It holds the lease with this fence, written last at `revision`, valid until `valid_until`.
    Leader {
        /// The term's fence.
        fence: u64,
        /// The last write.
        revision: u64,
        /// When it stops counting on the lease.
        valid_until: Instant,
    },
    /// It does not; `seen` is the revision last read and when this queen first saw it.
    Standby {
        /// The revision last read and when it was first seen.
        seen: Option<(u64, Instant)>,
    },
}

/// The lease state of one queen.
#[derive(Debug, Clone)]
pub struct Lease {
    /// How long a lease lasts without a renewal.
    pub ttl: Duration,
    standing: Standing,
    /// The revision this queen wrote last: when the entry still has it after this queen's lease ran
    /// out (it lost NATS for a while, nobody else wrote), taking it back cannot overlap another term.
    last_written: Option<u64>,
}

impl Lease {
    /// A standby that has read nothing yet.
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, standing: Standing::Standby { seen: None }, last_written: None }
    }

    /// How much earlier than a standby could take over the leader stops counting on its lease.
    pub fn margin(&self) -> Duration {
        self.ttl / 4
    }

    /// How often the leader renews and a standby reads.
    pub fn interval(&self) -> Duration {
        self.ttl / 4
    }

    /// Its standing.
    pub fn standing(&self) -> &Standing {
        &self.standing
    }

    /// The fence while the lease is valid at `now`.
    pub fn fence(&self, now: Instant) -> Option<u64> {
        match &self.standing {
            Standing::Leader { fence, valid_until, .. } if now < *valid_until => Some(*fence),
            _ => None,
        }
    }

    /// The next step of a leader (renew, or step down when its lease ran out) or of a standby that
    /// read `entry` (the revision of a live lease entry, or none: absent or deleted) at `now`.
    pub fn next(&mut self, entry: Option<u64>, now: Instant) -> Action {
        if let Standing::Leader { revision, valid_until, .. } = &self.standing {
            if now < *valid_until {
                return Action::Renew { revision: *revision };
            }
            self.standing = Standing::Standby { seen: None };
        }
        let Some(revision) = entry else { return Action::Create };
        if self.last_written == Some(revision) {
            return Action::TakeOver { revision };
        }
        let Standing::Standby { seen } = &mut self.standing else { return Action::Wait };
        match seen {
            Some((seen_revision, since)) if *seen_revision == revision => {
                if now.duration_since(*since) >= self.ttl {
                    Action::TakeOver { revision }
                } else {
                    Action::Wait
                }
            }
            _ => {
                *seen = Some((revision, now));
                Action::Wait
            }
        }
    }

    /// A write sent at `sent` succeeded at `revision`: a create or takeover starts a term (the new
    /// revision is the fence), a renewal extends it. True when a term started.
    pub fn written(&mut self, revision: u64, sent: Instant) -> bool {
        self.last_written = Some(revision);
        let valid_until = sent + self.ttl - self.margin();
        match &mut self.standing {
            Standing::Leader { revision: r, valid_until: v, .. } => {
                *r = revision;
                *v = valid_until;
                false
            }
            Standing::Standby { .. } => {
                self.standing = Standing::Leader { fence: revision, revision, valid_until };
                true
            }
        }
    }

    /// Another queen wrote the entry (a compare-and-set failed): step down at once. True when this
    /// ended a term.
    pub fn lost(&mut self) -> bool {
        self.last_written = None;
        let was_leader = matches!(self.standing, Standing::Leader { .. });
        self.standing = Standing::Standby { seen: None };
        was_leader
    }

    /// True when a term ended by time alone (checked before acting).
    pub fn expired(&self, now: Instant) -> bool {
        matches!(&self.standing, Standing::Leader { valid_until, .. } if now >= *valid_until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(4);

    #[test]
    fn a_standby_takes_over_only_after_a_whole_lease_of_the_same_revision() {
        let t0 = Instant::now();
        let mut lease = Lease::new(TTL);
        assert_eq!(lease.next(Some(7), t0), Action::Wait);
        assert_eq!(lease.next(Some(7), t0 + TTL - Duration::from_millis(1)), Action::Wait);
        assert_eq!(lease.next(Some(9), t0 + TTL), Action::Wait, "renewed: the wait starts again");
        assert_eq!(lease.next(Some(9), t0 + TTL * 2 - Duration::from_millis(1)), Action::Wait);
        assert_eq!(lease.next(Some(9), t0 + TTL * 2), Action::TakeOver { revision: 9 });
        assert_eq!(lease.next(None, t0), Action::Create);
    }

    #[test]
    fn a_leader_stops_counting_on_its_lease_before_a_standby_may_take_it() {
        let t0 = Instant::now();
        let mut leader = Lease::new(TTL);
        assert_eq!(leader.next(None, t0), Action::Create);
        assert!(leader.written(10, t0), "a term starts");
        assert_eq!(leader.fence(t0), Some(10));
        assert_eq!(leader.next(None, t0 + Duration::from_secs(1)), Action::Renew { revision: 10 });
        assert!(!leader.written(11, t0 + Duration::from_secs(1)), "a renewal is no new term");
        assert_eq!(leader.fence(t0 + Duration::from_secs(1)), Some(10), "the fence stays");
        // A standby saw revision 11 no earlier than it was written.
        let mut standby = Lease::new(TTL);
        let seen = t0 + Duration::from_secs(1);
        standby.next(Some(11), seen);
        let leader_ends = seen + TTL - leader.margin();
        assert_eq!(leader.fence(leader_ends), None);
        assert!(leader.expired(leader_ends));
        for t in [leader_ends, seen + TTL - Duration::from_millis(1)] {
            assert_eq!(standby.next(Some(11), t), Action::Wait, "no overlap");
        }
        assert_eq!(standby.next(Some(11), seen + TTL), Action::TakeOver { revision: 11 });
        // The old leader, once past its validity, is a standby again and reads like one.
        assert_eq!(leader.next(Some(12), leader_ends), Action::Wait);
        assert_eq!(leader.fence(leader_ends), None);
    }

    #[test]
    fn a_leader_cut_off_from_nats_takes_back_at_once_the_lease_nobody_wrote_since() {
        let t0 = Instant::now();
        let mut lease = Lease::new(TTL);
        lease.next(None, t0);
        lease.written(5, t0);
        let later = t0 + TTL;
        assert_eq!(lease.fence(later), None, "ran out while cut off");
        assert_eq!(lease.next(Some(5), later), Action::TakeOver { revision: 5 }, "still its own write");
        let mut other = lease.clone();
        assert_eq!(other.next(Some(6), later), Action::Wait, "another queen wrote since: wait a lease");
    }

    #[test]
    fn a_lost_compare_and_set_ends_the_term_at_once() {
        let t0 = Instant::now();
        let mut lease = Lease::new(TTL);
        lease.next(None, t0);
        lease.written(3, t0);
        assert!(lease.lost());
        assert_eq!(lease.fence(t0), None);
        assert!(!lease.lost(), "already a standby");
    }
}
