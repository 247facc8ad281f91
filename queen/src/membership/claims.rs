//! What a heartbeat or lifecycle body claims, checked against what the registry already knows before
//! it is folded in (the subject's id is checked by the heartbeat path). NATS permissions bind each
//! identity to its own subjects; these checks bind the bodies to them: a worker stays with the hive it
//! was first heard from, a hive's own listing of its workers is the authority on their models, slot
//! counts are sane, and a lifecycle event speaks only of the worker its subject names. A refusal is a
//! reason for the log and the `rejected` counter; the registry is left as it was.

use rbee_bus::{WorkerHeartbeat, WorkerLifecycle};

use super::Registry;

/// Most slots a worker may claim (a real worker has a handful).
pub const MAX_CLAIMED_SLOTS: u32 = 1024;

impl Registry {
    /// Refuses a worker heartbeat whose body contradicts the registry, with the reason.
    pub fn check_worker_claims(&self, heartbeat: &WorkerHeartbeat) -> Result<(), String> {
        let (worker, hive) = (&heartbeat.worker_id, &heartbeat.hive_id);
        if heartbeat.slots_total > MAX_CLAIMED_SLOTS || heartbeat.slots_busy > heartbeat.slots_total {
            return Err(format!(
                "worker {worker} claims {} of {} slots busy (at most {MAX_CLAIMED_SLOTS})",
                heartbeat.slots_busy, heartbeat.slots_total
            ));
        }
        if let Some(known) = self.workers.get(worker) {
            if &known.heartbeat.hive_id != hive {
                return Err(format!(
                    "worker {worker} belongs to hive {}, not {hive}",
                    known.heartbeat.hive_id
                ));
            }
        }
        if let Some(listed) =
            self.hives.get(hive).and_then(|h| h.heartbeat.workers.iter().find(|w| &w.worker_id == worker))
        {
            if listed.model_id != heartbeat.model_id {
                return Err(format!(
                    "worker {worker} claims model {}, its hive {hive} says {}",
                    heartbeat.model_id, listed.model_id
                ));
            }
        }
        Ok(())
    }

    /// Refuses a lifecycle event published on `rbee.worker.<subject_worker>.lifecycle` whose body
    /// speaks of another worker, or of this worker under another hive than the one it belongs to.
    pub fn check_lifecycle_claims(
        &self,
        subject_worker: &str,
        event: &WorkerLifecycle,
    ) -> Result<(), String> {
        let (worker, hive) = (&event.worker_id, &event.hive_id);
        if worker.as_str() != subject_worker {
            return Err(format!(
                "a lifecycle event on worker {subject_worker}'s subject names worker {worker}"
            ));
        }
        if let Some(known) = self.workers.get(worker) {
            if &known.heartbeat.hive_id != hive {
                return Err(format!(
                    "lifecycle of worker {worker} from hive {hive}; it belongs to hive {}",
                    known.heartbeat.hive_id
                ));
            }
        }
        Ok(())
    }
}
