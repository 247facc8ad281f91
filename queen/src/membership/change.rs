//! Membership changes: what applying an event or the passing of time did to the registry.

use rbee_bus::{HiveId, HiveState, ModelId, WorkerId, WorkerState};
use serde::Serialize;

use super::liveness::Liveness;

/// One change to the registry, in the order it happened. Routine heartbeats that only refresh live
/// figures (free memory, tokens per second, resident memory) produce none.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// A hive was heard from for the first time (or again after it was removed).
    HiveAdded {
        /// The hive.
        hive_id: HiveId,
        /// Its epoch.
        epoch: String,
    },
    /// A hive restarted (new epoch), changed state (leaving), or changed its devices, catalog or the
    /// workers it reports.
    HiveUpdated {
        /// The hive.
        hive_id: HiveId,
        /// State before the heartbeat.
        previous_state: HiveState,
        /// State now.
        state: HiveState,
        /// Epoch before the heartbeat.
        previous_epoch: String,
        /// Epoch now (differs on a restart).
        epoch: String,
    },
    /// A hive left the registry.
    HiveRemoved {
        /// The hive.
        hive_id: HiveId,
        /// Why.
        reason: RemovalReason,
    },
    /// A hive's liveness changed.
    HiveLiveness {
        /// The hive.
        hive_id: HiveId,
        /// Liveness last reported.
        previous: Liveness,
        /// Liveness now.
        liveness: Liveness,
    },
    /// A worker was heard from for the first time (or again after it was removed).
    WorkerAdded {
        /// The worker.
        worker_id: WorkerId,
        /// Its hive.
        hive_id: HiveId,
        /// Its model.
        model_id: ModelId,
        /// Its state.
        state: WorkerState,
    },
    /// A worker restarted (new epoch) or changed state, slots, model, device or hive.
    WorkerUpdated {
        /// The worker.
        worker_id: WorkerId,
        /// State before the heartbeat.
        previous_state: WorkerState,
        /// State now.
        state: WorkerState,
        /// Busy slots before the heartbeat.
        previous_slots_busy: u32,
        /// Busy slots now.
        slots_busy: u32,
        /// True when the heartbeat came with a new epoch.
        restarted: bool,
    },
    /// A worker left the registry.
    WorkerRemoved {
        /// The worker.
        worker_id: WorkerId,
        /// Its hive.
        hive_id: HiveId,
        /// Why.
        reason: RemovalReason,
    },
    /// A worker's liveness changed.
    WorkerLiveness {
        /// The worker.
        worker_id: WorkerId,
        /// Liveness last reported.
        previous: Liveness,
        /// Liveness now.
        liveness: Liveness,
    },
    /// The queen took a worker out of scheduling.
    WorkerFenced {
        /// The worker.
        worker_id: WorkerId,
        /// Why, for a person.
        reason: String,
    },
    /// A fence was lifted.
    WorkerUnfenced {
        /// The worker.
        worker_id: WorkerId,
        /// Why.
        reason: UnfenceReason,
    },
}

/// Why an entry left the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RemovalReason {
    /// No heartbeat for longer than the removal grace.
    Expired,
    /// The worker's last heartbeat said `stopped`.
    Stopped,
    /// Its hive reported the process exited (a lifecycle event).
    Exited,
    /// Its hive heartbeated with a new epoch: the workers it had before are gone.
    HiveRestarted,
    /// Removed on request (`remove_hive`, `remove_worker`).
    Removed,
}

/// Why a fence was lifted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnfenceReason {
    /// The worker heartbeated with a new epoch (it restarted).
    NewEpoch,
    /// The fence timeout passed.
    Timeout,
}
