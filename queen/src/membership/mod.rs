//! The queen's registry of hives and workers: a view folded from heartbeats.
//!
//! Hives heartbeat on `rbee.hive.<id>.heartbeat` (devices with free memory, model catalog, the worker
//! processes they supervise); workers heartbeat on `rbee.worker.<id>.heartbeat` (state, slots,
//! tokens per second). A task owned by the caller feeds them in with [`Registry::apply_hive`] and
//! [`Registry::apply_worker`], and calls [`Registry::expire`] on a tick. Every call returns the
//! membership [`Change`]s it caused (added / updated with the previous state / removed, liveness
//! transitions, fences), quickwit style.
//!
//! # Consistency contract
//!
//! - **Pure and single-writer.** No I/O, no clock reads, no tasks. Every `now` is the queen's monotonic
//!   receive time, passed in. The caller serializes writers (one lock around the registry); queries
//!   take `&self` and cost one pass over the entries at worst.
//! - **Liveness by receive time only.** An entry is `Online` while its last heartbeat is at most
//!   `2 × interval` old, `Suspect` up to `3 × interval`, then `Offline`; [`expire`](Registry::expire)
//!   removes it past `10 × interval` (all in [`RegistryConfig`]; the interval is the one the publisher
//!   announces, clamped). The sender's `sent_at_ms` is never read. Queries compute liveness at the
//!   `now` they are given, so an answer is never stale-online even if `expire` has not run; `expire`
//!   reports each transition once, as a change.
//! - **Any message is a sign of life.** For a worker, every message it publishes in its current epoch
//!   counts like a heartbeat for liveness ([`apply_worker_activity`](Registry::apply_worker_activity),
//!   fed with its token chunks and job statuses): a worker streaming tokens is alive even when a
//!   starved CPU delays its heartbeats. Its age (`age_ms`) is that of the last message of either kind.
//!   Its figures (state, slots, sequence) still come from heartbeats only, and a message of another
//!   epoch, or of a worker not yet heard, changes nothing.
//! - **Ordering per publisher.** A publisher is the heartbeat's `hive_id` / `worker_id` (the subject's
//!   id). Within one epoch, a sequence number at or below the last one is a duplicate or out of order:
//!   ignored and counted (`stale_ignored`); a jump counts the skipped numbers as `seq_gaps` (per entry
//!   and in total) and is applied. The first heartbeat of an epoch is the baseline. A new epoch is a
//!   restart; a late heartbeat from one of the last few replaced epochs is stale, not a restart.
//! - **Hive restart.** A hive heartbeat with a new epoch removes every worker that names that hive:
//!   all of them were heard before the new epoch was (receive order), and the old hive process that
//!   supervised them is gone. Their epochs are tombstoned, so a late heartbeat from one of them does
//!   not bring it back; a worker restarted under the new hive comes with a new epoch and is welcome.
//!   A hive seen for the first time (queen start, or after its removal) drops nothing, and a hive
//!   removed by expiry leaves its workers be: they heartbeat on their own and expire on their own.
//! - **Stopped workers** are removed at once, and their epoch tombstoned. A worker lifecycle event
//!   `exited` / `failed` from its hive removes it too (without a tombstone: the event does not say
//!   which epoch died).
//! - **Leaving hives** stay in the registry with `leaving = true`: nothing is spawned there, and their
//!   workers are not assignable.
//! - **Fences.** [`fence_worker`](Registry::fence_worker) takes a worker out of every scheduling query
//!   at once (it refused a job, its reply timed out). The fence holds until the worker heartbeats with
//!   a new epoch (it restarted) or `fence_timeout` passes (30 s by default); heartbeats of the same
//!   epoch do not lift it. Fenced workers still appear in listings, marked `fenced`.
//! - **Slot reservations.** [`reserve_slot`](Registry::reserve_slot) counts a placement the queen made
//!   since the worker's last heartbeat, so two jobs placed between heartbeats do not both take its last
//!   free slot. The next heartbeat's `slots_busy` is authoritative: it clears every reservation older
//!   than `reservation_settle` (250 ms; a younger one may not be counted by the worker yet). When the
//!   worker accepted the job the caller says so with its number ([`slot_accepted`](Registry::slot_accepted),
//!   `JobAccepted::accepted_seq`), and the first heartbeat whose `jobs_accepted` reaches it drops the
//!   reservation however young (a young one counted twice held a free slot for a heartbeat interval);
//!   it calls [`release_slot`](Registry::release_slot) when the worker refused or did not answer. A
//!   new epoch clears all reservations.
//! - **Eventual.** The view lags the cluster by up to one interval plus transit. An answer is a
//!   well-founded hint; the worker has the last word (it may refuse, and the caller then fences or
//!   releases).
//!
//! # The spec's 18 queries, mapped
//!
//! Hive side (queen-hive-registry.md, "Hive Management Functions"):
//!
//! | spec | here |
//! |---|---|
//! | `update_hive_state` | [`Registry::apply_hive`] |
//! | `get_hive_state` | [`Registry::get_hive`] |
//! | `list_active_hives(max_age)` | [`Registry::list_online_hives`] (age judged by the config) |
//! | `get_available_resources` | [`Registry::hive_resources`] (real device and worker figures) |
//! | `remove_hive` | [`Registry::remove_hive`] (its workers too) |
//! | `list_all_hives` | [`Registry::list_hives`] |
//! | `get_worker_count(hive)` | [`Registry::worker_count_on_hive`] |
//! | `is_hive_online` | [`Registry::is_hive_online`] |
//! | `hive_count` | [`Registry::hive_count`], [`Registry::online_hive_count`] |
//!
//! Worker side ("Worker Registry Functions"):
//!
//! | spec | here |
//! |---|---|
//! | `get_worker` | [`Registry::get_worker`] (the view carries `hive_id`) |
//! | `get_worker_url` | [`Registry::worker_jobs_subject`] (workers take jobs on a subject, not a URL) |
//! | `list_all_workers` | [`Registry::list_workers`] |
//! | `find_idle_workers` | [`Registry::list_idle_workers`] |
//! | `find_workers_by_model` | [`Registry::list_workers_for_model`] |
//! | `find_workers_by_backend` | [`Registry::list_workers_by_backend`] |
//! | `find_best_worker_for_model` | [`Registry::find_best_worker_for_model`] |
//! | `total_worker_count` | [`Registry::worker_count`] |
//! | `get_workers_on_hive` | [`Registry::workers_on_hive`] |
//!
//! Beyond the spec: [`Registry::find_hives_with_model`], [`Registry::find_hives_with_device_memory`],
//! [`Registry::hive_of_worker`], [`Registry::total_resources`], [`Registry::count_workers_by_state`],
//! [`Registry::snapshot`], [`Registry::snapshot_for_model`], [`Registry::stats`].

mod apply;
mod change;
mod claims;
mod config;
mod entry;
mod liveness;
mod queries;
mod speeds;
mod view;

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use rbee_bus::{HiveId, WorkerId};

pub use change::{Change, RemovalReason, UnfenceReason};
pub use claims::MAX_CLAIMED_SLOTS;
pub use config::RegistryConfig;
pub use liveness::Liveness;
pub use view::{
    least_loaded_first, HiveView, LivenessCounts, Presence, RegistrySnapshot, RegistryStats, Resources,
    WorkerStateCounts, WorkerTotals, WorkerView,
};

use entry::{HiveEntry, Tombstone, WorkerEntry};

/// Hives and workers as their heartbeats describe them. See the module documentation for the
/// consistency contract.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    /// Thresholds, normalized at construction.
    config: RegistryConfig,
    /// Hives by id; ordered so that listings and changes come in a repeatable order.
    hives: BTreeMap<HiveId, HiveEntry>,
    /// Workers by id.
    workers: BTreeMap<WorkerId, WorkerEntry>,
    /// Epochs of workers removed on purpose (the last few per worker), so their late heartbeats stay
    /// out.
    tombstones: HashMap<WorkerId, Vec<Tombstone>>,
    /// Heartbeats accepted.
    heartbeats_applied: u64,
    /// Sequence numbers skipped, every publisher and epoch together.
    seq_gaps: u64,
    /// Heartbeats ignored as stale.
    stale_ignored: u64,
    /// Receive time of the most recent heartbeat.
    last_heartbeat_at: Option<Instant>,
    /// Hives drained by an operator (`POST /v1/hives/{id}/drain`): treated as leaving, whatever they
    /// announce, until undrained; each with the generation of its drain (a drain task ends when its
    /// generation is no longer the hive's, so drain, undrain, drain leaves one task running).
    drained: std::collections::BTreeMap<HiveId, u64>,
    /// The last drain generation handed out.
    drain_generation: u64,
    /// Measured decode speed by hive and model, from busy workers' heartbeats.
    speeds: speeds::Speeds,
}

impl Registry {
    /// An empty registry with these thresholds (normalized, see [`RegistryConfig::normalized`]).
    pub fn new(config: RegistryConfig) -> Self {
        Self { config: config.normalized(), ..Self::default() }
    }

    /// Drains a hive (`on`) or takes it back: nothing new is placed or spawned on a drained hive. True
    /// when that changed anything.
    pub fn set_drained(&mut self, hive_id: &HiveId, on: bool) -> bool {
        if !on {
            return self.drained.remove(hive_id).is_some();
        }
        if self.drained.contains_key(hive_id) {
            return false;
        }
        self.drain_generation += 1;
        self.drained.insert(hive_id.clone(), self.drain_generation);
        true
    }

    /// The generation of the hive's drain while it is drained, `None` when it is not.
    pub fn drain_generation(&self, hive_id: &HiveId) -> Option<u64> {
        self.drained.get(hive_id).copied()
    }

    /// The thresholds in force.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }
}
