//! Which queen leads: the value of key [`crate::subject::LEADER_KEY`] in the JetStream KV bucket
//! [`crate::subject::LEADER_BUCKET`]. The leader rewrites it (compare-and-set on the entry's revision)
//! every third of the lease; a standby takes it over, with a compare-and-set on the revision it saw,
//! once that revision went unchanged for a whole lease. Third parties read it to find the leader.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The leader lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LeaderLease {
    /// Schema version.
    pub v: u32,
    /// The leading queen (`rbee-queen --queen-id`).
    pub queen_id: String,
    /// Its process epoch (the `meta.epoch` of its events).
    pub epoch: String,
    /// The fencing epoch: the KV revision at which this queen took the lease, so it only grows from
    /// one leader to the next. 0 on the very first write of a term (its revision is the fence).
    pub fence: u64,
    /// Where its HTTP API listens, as URLs (`http://198.18.0.1:7833`).
    #[serde(default)]
    pub http: Vec<String>,
    /// How long the lease lasts without a renewal, in milliseconds.
    pub lease_ms: u64,
    /// The leader's clock at the write (informational: standbys judge expiry by their own clock).
    pub renewed_at_ms: u64,
}
