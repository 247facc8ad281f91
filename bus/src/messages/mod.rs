//! One Rust type per message on the bus. Every message carries `v`, the schema version; events also
//! carry [`EventMeta`]: who published, the publisher's epoch (re-rolled at every process start), a
//! per-publisher monotonic sequence number and the sender's clock.

pub mod chat;
pub mod embed;
pub mod error;
pub mod heartbeat;
pub mod hive;
pub mod job;
pub mod leader;
pub mod lifecycle;
pub mod models;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The schema version this build speaks. Adding an optional field keeps it; anything else bumps it.
pub const SCHEMA_VERSION: u32 = 1;

/// Envelope fields of every event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EventMeta {
    /// The publisher's id (a hive, worker or queen id).
    pub publisher: String,
    /// Random per process start: a new epoch means the publisher restarted.
    pub epoch: String,
    /// Monotonic per publisher and epoch, from 1; a gap means lost events.
    pub seq: u64,
    /// The sender's clock, milliseconds since the Unix epoch (informational: receivers judge liveness by
    /// their own clock).
    pub sent_at_ms: u64,
}

/// Stamps events of one publisher: holds its id, its epoch and the sequence counter.
#[derive(Debug)]
pub struct EventStamper {
    publisher: String,
    epoch: String,
    seq: AtomicU64,
}

impl EventStamper {
    /// A stamper with a fresh epoch.
    pub fn new(publisher: impl Into<String>) -> Self {
        Self {
            publisher: publisher.into(),
            epoch: uuid::Uuid::new_v4().simple().to_string()[..16].to_owned(),
            seq: AtomicU64::new(0),
        }
    }

    /// The epoch of this process.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The publisher id.
    pub fn publisher(&self) -> &str {
        &self.publisher
    }

    /// The next envelope: sequence incremented, clock read now.
    pub fn next(&self) -> EventMeta {
        EventMeta {
            publisher: self.publisher.clone(),
            epoch: self.epoch.clone(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            sent_at_ms: now_ms(),
        }
    }
}

/// Milliseconds since the Unix epoch by this machine's clock.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
