//! `replicas: N` on `POST /v1/workers`: a model served from N distinct hives, so that a lost machine
//! leaves it served. [`plan`] is pure: from a registry snapshot it keeps the hives that already serve
//! the model (a live worker there, hive schedulable) and picks the others one at a time by the
//! scheduler's spawn rule (accelerators, then the hive measured fastest for the model, then free
//! memory), each pick excluded from the next. Asking again for the same N adds nothing.

use rbee_bus::{HiveId, ModelId, WorkerId, WorkerState};

use crate::membership::{Liveness, RegistrySnapshot};
use crate::scheduler::{schedule, Placement, PlacementRequest};

/// The most replicas one request may ask for.
pub const MAX_REPLICAS: u32 = 64;

/// Where the replicas are and go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Hives that already serve the model, with one of their workers.
    pub serving: Vec<(HiveId, WorkerId)>,
    /// New workers to spawn: hive and device.
    pub spawn: Vec<(HiveId, String)>,
}

/// Why a plan cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shortfall {
    /// Fewer hives can run the model than asked for (the scheduler's reason for the first one missing).
    TooFewHives {
        /// Replicas asked for.
        wanted: u32,
        /// Hives that can serve it (already serving plus spawnable).
        possible: usize,
        /// Why the next hive could not be found.
        reason: String,
    },
    /// Every hive with the model refuses it.
    Unavailable(String),
}

/// Plans `replicas` hives for `model_id`.
pub fn plan(snapshot: &RegistrySnapshot, model_id: &ModelId, replicas: u32) -> Result<Plan, Shortfall> {
    let schedulable =
        |hive_id: &HiveId| snapshot.hives.iter().any(|h| &h.hive_id == hive_id && h.schedulable);
    let mut serving: Vec<(HiveId, WorkerId)> = Vec::new();
    for worker in &snapshot.workers {
        let live = worker.liveness != Liveness::Offline
            && !worker.fenced
            && !matches!(worker.state, WorkerState::Draining | WorkerState::Stopped);
        if &worker.model_id == model_id
            && live
            && schedulable(&worker.hive_id)
            && !serving.iter().any(|(h, _)| h == &worker.hive_id)
        {
            serving.push((worker.hive_id.clone(), worker.worker_id.clone()));
        }
    }
    serving.truncate(replicas as usize);
    let mut request = PlacementRequest { spawn_only: true, ..PlacementRequest::new(model_id.clone()) };
    request.exclude_hives = serving.iter().map(|(h, _)| h.clone()).collect();
    let mut spawn = Vec::new();
    while serving.len() + spawn.len() < replicas as usize {
        match schedule(snapshot, &request) {
            Placement::Spawn { hive_id, device } => {
                request.exclude_hives.push(hive_id.clone());
                spawn.push((hive_id, device));
            }
            Placement::Unavailable { reason } if serving.is_empty() && spawn.is_empty() => {
                return Err(Shortfall::Unavailable(reason))
            }
            other => {
                let reason = match other {
                    Placement::Queue { reason }
                    | Placement::Refuse { reason }
                    | Placement::Unavailable { reason } => reason,
                    // A spawn-only request is never assigned; were it, no hive was picked either.
                    Placement::Assign { .. } | Placement::Spawn { .. } | Placement::Evict { .. } => {
                        format!("no further hive can spawn model {model_id}")
                    }
                };
                return Err(Shortfall::TooFewHives {
                    wanted: replicas,
                    possible: serving.len() + spawn.len(),
                    reason,
                });
            }
        }
    }
    Ok(Plan { serving, spawn })
}

impl std::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shortfall::TooFewHives { wanted, possible, reason } => {
                write!(f, "replicas: {wanted} needs {wanted} hives that can run the model; {possible} can ({reason})")
            }
            Shortfall::Unavailable(reason) => f.write_str(reason),
        }
    }
}
