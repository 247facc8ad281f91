//! Writes: heartbeats, lifecycle events, the passing of time, and the queen's own marks (fences,
//! slot reservations, removals on request).

use std::collections::btree_map::Entry;
use std::time::Instant;

use rbee_bus::{
    EventMeta, HiveHeartbeat, HiveId, LifecycleEvent, WorkerHeartbeat, WorkerId, WorkerLifecycle, WorkerState,
};

use super::change::{Change, RemovalReason, UnfenceReason};
use super::entry::{Fence, HiveEntry, Reservation, Tombstone, WorkerEntry};
use super::liveness::Liveness;
use super::Registry;
use crate::sequence::{Sequence, Verdict};

impl Registry {
    /// Folds in a hive heartbeat received at `now`.
    pub fn apply_hive(&mut self, heartbeat: &HiveHeartbeat, now: Instant) -> Vec<Change> {
        let hive_id = &heartbeat.hive_id;
        let entry = match self.hives.entry(hive_id.clone()) {
            Entry::Vacant(vacant) => {
                vacant.insert(HiveEntry::new(heartbeat, now, &self.config));
                self.note_applied(now);
                return vec![Change::HiveAdded {
                    hive_id: hive_id.clone(),
                    epoch: heartbeat.meta.epoch.clone(),
                }];
            }
            Entry::Occupied(occupied) => occupied.into_mut(),
        };
        let retired = self.config.retired_epochs_kept;
        let judged =
            judge(&mut entry.sequence, &heartbeat.meta, retired, &mut self.stale_ignored, &mut self.seq_gaps);
        let Some(verdict) = judged else { return Vec::new() };
        let restarted = verdict == Verdict::NewEpoch;
        let mut changes = Vec::new();
        if let Some(previous) = entry.heard.heard(now, self.config.interval(heartbeat.interval_ms)) {
            changes.push(Change::HiveLiveness {
                hive_id: hive_id.clone(),
                previous,
                liveness: Liveness::Online,
            });
        }
        if restarted || hive_materially_changed(&entry.heartbeat, heartbeat) {
            changes.push(Change::HiveUpdated {
                hive_id: hive_id.clone(),
                previous_state: entry.heartbeat.state,
                state: heartbeat.state,
                previous_epoch: entry.heartbeat.meta.epoch.clone(),
                epoch: heartbeat.meta.epoch.clone(),
            });
        }
        entry.heartbeat = heartbeat.clone();
        self.note_applied(now);
        if restarted {
            changes.extend(self.drop_workers_of_hive(hive_id, now, RemovalReason::HiveRestarted));
        }
        changes
    }

    /// Folds in a worker heartbeat received at `now`. A `stopped` heartbeat removes the worker.
    pub fn apply_worker(&mut self, heartbeat: &WorkerHeartbeat, now: Instant) -> Vec<Change> {
        let worker_id = &heartbeat.worker_id;
        let buried = self.tombstones.get(worker_id).is_some_and(|tombstones| {
            tombstones.iter().any(|tombstone| tombstone.epoch == heartbeat.meta.epoch)
        });
        if buried {
            self.stale_ignored += 1;
            return Vec::new();
        }
        let stopped = heartbeat.state == WorkerState::Stopped;
        let mut occupied = match self.workers.entry(worker_id.clone()) {
            Entry::Vacant(vacant) => {
                if stopped {
                    self.note_applied(now);
                    self.bury(worker_id, &heartbeat.meta.epoch, now);
                    return Vec::new();
                }
                vacant.insert(WorkerEntry::new(heartbeat, now, &self.config));
                self.speeds.observe(heartbeat);
                self.note_applied(now);
                return vec![Change::WorkerAdded {
                    worker_id: worker_id.clone(),
                    hive_id: heartbeat.hive_id.clone(),
                    model_id: heartbeat.model_id.clone(),
                    state: heartbeat.state,
                }];
            }
            Entry::Occupied(occupied) => occupied,
        };
        let retired = self.config.retired_epochs_kept;
        let sequence = &mut occupied.get_mut().sequence;
        let judged = judge(sequence, &heartbeat.meta, retired, &mut self.stale_ignored, &mut self.seq_gaps);
        let Some(verdict) = judged else { return Vec::new() };
        if stopped {
            let removed = occupied.remove();
            self.note_applied(now);
            self.bury(worker_id, &heartbeat.meta.epoch, now);
            let hive_id = removed.heartbeat.hive_id;
            return vec![Change::WorkerRemoved {
                worker_id: worker_id.clone(),
                hive_id,
                reason: RemovalReason::Stopped,
            }];
        }
        let entry = occupied.into_mut();
        let restarted = verdict == Verdict::NewEpoch;
        let mut changes = Vec::new();
        if let Some(previous) = entry.heard.heard(now, self.config.interval(heartbeat.interval_ms)) {
            changes.push(Change::WorkerLiveness {
                worker_id: worker_id.clone(),
                previous,
                liveness: Liveness::Online,
            });
        }
        if restarted || worker_materially_changed(&entry.heartbeat, heartbeat) {
            changes.push(Change::WorkerUpdated {
                worker_id: worker_id.clone(),
                previous_state: entry.heartbeat.state,
                state: heartbeat.state,
                previous_slots_busy: entry.heartbeat.slots_busy,
                slots_busy: heartbeat.slots_busy,
                restarted,
            });
        }
        if restarted {
            entry.reservations.clear();
            if entry.fence.take().is_some() {
                changes.push(Change::WorkerUnfenced {
                    worker_id: worker_id.clone(),
                    reason: UnfenceReason::NewEpoch,
                });
            }
        } else {
            // A reservation the worker accepted is counted by a heartbeat that reached its number;
            // any other, by one that came `reservation_settle` after it (an earlier one may have been
            // built before the worker took the job).
            let settle = self.config.reservation_settle;
            let counted = heartbeat.jobs_accepted;
            entry.reservations.retain(|r| match (r.accepted_seq, counted) {
                (Some(seq), Some(n)) => seq > n,
                _ => now.saturating_duration_since(r.at) < settle,
            });
        }
        entry.set_heartbeat(heartbeat);
        self.speeds.observe(heartbeat);
        self.note_applied(now);
        changes
    }

    /// Folds in a sign of life from a worker other than its heartbeat, received at `now`: a token chunk
    /// or a job status it published, stamped with its `epoch`. A worker busy generating is alive even
    /// when its heartbeats are late (a starved CPU delays the heartbeat timer, not the tokens already
    /// decoded), so its liveness counts from the later of the two. Liveness only: state, slots,
    /// sequence, reservations and fences still follow heartbeats alone. Ignored for an unknown worker
    /// (its first heartbeat adds it) and for any epoch but its current one (a message of a process that
    /// was replaced proves nothing about the new one). Returns the recovery to `online` when the worker
    /// was last reported suspect or offline.
    pub fn apply_worker_activity(&mut self, worker_id: &WorkerId, epoch: &str, now: Instant) -> Vec<Change> {
        let Some(entry) = self.workers.get_mut(worker_id) else {
            return Vec::new();
        };
        if entry.sequence.epoch != epoch {
            return Vec::new();
        }
        match entry.heard.alive(now) {
            Some(previous) => vec![Change::WorkerLiveness {
                worker_id: worker_id.clone(),
                previous,
                liveness: Liveness::Online,
            }],
            None => Vec::new(),
        }
    }

    /// Folds in a worker lifecycle event from its hive: `exited` and `failed` remove the worker at
    /// once instead of waiting for its heartbeats to age; `started` changes nothing (the worker's own
    /// heartbeat adds it).
    pub fn apply_lifecycle(&mut self, event: &WorkerLifecycle, _now: Instant) -> Vec<Change> {
        match event.event {
            LifecycleEvent::Started { .. } => Vec::new(),
            LifecycleEvent::Exited { .. } | LifecycleEvent::Failed { .. } => {
                self.remove_worker_with(&event.worker_id, RemovalReason::Exited).into_iter().collect()
            }
        }
    }

    /// Reports liveness transitions since the last report, lifts timed-out fences, and removes
    /// entries older than the removal grace (`remove_after_intervals`). Call it on a tick.
    pub fn expire(&mut self, now: Instant) -> Vec<Change> {
        let config = &self.config;
        let mut changes = Vec::new();
        let mut expired_hives = Vec::new();
        for (hive_id, entry) in &mut self.hives {
            if entry.heard.past_removal(now, config) {
                expired_hives.push(hive_id.clone());
                continue;
            }
            let liveness = entry.heard.liveness(now, config);
            if liveness != entry.heard.reported {
                let previous = std::mem::replace(&mut entry.heard.reported, liveness);
                changes.push(Change::HiveLiveness { hive_id: hive_id.clone(), previous, liveness });
            }
        }
        for hive_id in expired_hives {
            self.hives.remove(&hive_id);
            self.speeds.forget(&hive_id);
            changes.push(Change::HiveRemoved { hive_id, reason: RemovalReason::Expired });
        }
        let mut expired_workers = Vec::new();
        for (worker_id, entry) in &mut self.workers {
            if entry.heard.past_removal(now, config) {
                expired_workers.push(worker_id.clone());
                continue;
            }
            let liveness = entry.heard.liveness(now, config);
            if liveness != entry.heard.reported {
                let previous = std::mem::replace(&mut entry.heard.reported, liveness);
                changes.push(Change::WorkerLiveness { worker_id: worker_id.clone(), previous, liveness });
            }
            if entry.fence.is_some() && entry.active_fence(now, config).is_none() {
                entry.fence = None;
                changes.push(Change::WorkerUnfenced {
                    worker_id: worker_id.clone(),
                    reason: UnfenceReason::Timeout,
                });
            }
        }
        for worker_id in expired_workers {
            changes.extend(self.remove_worker_with(&worker_id, RemovalReason::Expired));
        }
        let ttl = self.config.tombstone_ttl;
        self.tombstones.retain(|_, tombstones| {
            tombstones.retain(|tombstone| now.saturating_duration_since(tombstone.at) < ttl);
            !tombstones.is_empty()
        });
        changes
    }

    /// Takes a worker out of scheduling at once (it refused a job, or did not answer). Lifted by a
    /// heartbeat with a new epoch or after `fence_timeout`. Fencing a fenced worker restarts its
    /// timeout and reports nothing; an unknown worker is ignored.
    pub fn fence_worker(
        &mut self,
        worker_id: &WorkerId,
        reason: impl Into<String>,
        now: Instant,
    ) -> Vec<Change> {
        let Some(entry) = self.workers.get_mut(worker_id) else {
            return Vec::new();
        };
        let was_fenced = entry.active_fence(now, &self.config).is_some();
        let reason = reason.into();
        entry.fence = Some(Fence { at: now, reason: reason.clone() });
        if was_fenced {
            return Vec::new();
        }
        vec![Change::WorkerFenced { worker_id: worker_id.clone(), reason }]
    }

    /// Counts a job the queen just placed on this worker, so the slot is not handed out twice before
    /// the worker's next heartbeat. False, and nothing reserved, when the worker is unknown or has no
    /// free slot left.
    pub fn reserve_slot(&mut self, worker_id: &WorkerId, now: Instant) -> bool {
        let Some(entry) = self.workers.get_mut(worker_id) else {
            return false;
        };
        if entry.slots_free() == 0 {
            return false;
        }
        entry.reservations.push(Reservation { at: now, accepted_seq: None });
        true
    }

    /// The worker accepted a job placed on it as its `accepted_seq`-th assignment: the oldest
    /// reservation not yet accepted is that job's (they all count alike). It goes at once when the
    /// last heartbeat already counted the job (the reply and the heartbeat race to the queen), else
    /// with the first heartbeat that does. False when none was waiting.
    pub fn slot_accepted(&mut self, worker_id: &WorkerId, accepted_seq: u64) -> bool {
        let Some(entry) = self.workers.get_mut(worker_id) else { return false };
        let Some(i) = entry.reservations.iter().position(|r| r.accepted_seq.is_none()) else { return false };
        if entry.heartbeat.jobs_accepted.is_some_and(|n| n >= accepted_seq) {
            entry.reservations.remove(i);
        } else {
            entry.reservations[i].accepted_seq = Some(accepted_seq);
        }
        true
    }

    /// Gives back the most recent reservation on this worker that it did not accept (it refused the
    /// job or did not answer). False when it held none.
    pub fn release_slot(&mut self, worker_id: &WorkerId) -> bool {
        let Some(entry) = self.workers.get_mut(worker_id) else { return false };
        let last = entry.reservations.iter().rposition(|r| r.accepted_seq.is_none());
        match last.or_else(|| entry.reservations.len().checked_sub(1)) {
            Some(i) => {
                entry.reservations.remove(i);
                true
            }
            None => false,
        }
    }

    /// Removes a hive and every worker that names it.
    pub fn remove_hive(&mut self, hive_id: &HiveId, now: Instant) -> Vec<Change> {
        if self.hives.remove(hive_id).is_none() {
            return Vec::new();
        }
        self.speeds.forget(hive_id);
        let mut changes =
            vec![Change::HiveRemoved { hive_id: hive_id.clone(), reason: RemovalReason::Removed }];
        changes.extend(self.drop_workers_of_hive(hive_id, now, RemovalReason::Removed));
        changes
    }

    /// Removes a worker.
    pub fn remove_worker(&mut self, worker_id: &WorkerId) -> Vec<Change> {
        self.remove_worker_with(worker_id, RemovalReason::Removed).into_iter().collect()
    }

    /// Removes a worker, reporting why.
    fn remove_worker_with(&mut self, worker_id: &WorkerId, reason: RemovalReason) -> Option<Change> {
        let removed = self.workers.remove(worker_id)?;
        Some(Change::WorkerRemoved {
            worker_id: worker_id.clone(),
            hive_id: removed.heartbeat.hive_id,
            reason,
        })
    }

    /// Removes every worker that names `hive_id`, tombstoning their epochs.
    fn drop_workers_of_hive(&mut self, hive_id: &HiveId, now: Instant, reason: RemovalReason) -> Vec<Change> {
        let doomed: Vec<(WorkerId, String)> = self
            .workers
            .iter()
            .filter(|(_, entry)| &entry.heartbeat.hive_id == hive_id)
            .map(|(worker_id, entry)| (worker_id.clone(), entry.sequence.epoch.clone()))
            .collect();
        let mut changes = Vec::with_capacity(doomed.len());
        for (worker_id, epoch) in doomed {
            self.bury(&worker_id, &epoch, now);
            changes.extend(self.remove_worker_with(&worker_id, reason));
        }
        changes
    }

    /// Remembers that `epoch` of this worker is gone (the last few epochs per worker).
    fn bury(&mut self, worker_id: &WorkerId, epoch: &str, now: Instant) {
        let tombstones = self.tombstones.entry(worker_id.clone()).or_default();
        tombstones.retain(|tombstone| tombstone.epoch != epoch);
        tombstones.push(Tombstone { epoch: epoch.to_owned(), at: now });
        let excess = tombstones.len().saturating_sub(self.config.retired_epochs_kept.max(1));
        tombstones.drain(..excess);
    }

    /// Counts an accepted heartbeat.
    fn note_applied(&mut self, now: Instant) {
        self.heartbeats_applied += 1;
        self.last_heartbeat_at = Some(self.last_heartbeat_at.map_or(now, |last| last.max(now)));
    }
}

/// True when a hive heartbeat changes more than the live figures (free memory, utilization).
fn hive_materially_changed(before: &HiveHeartbeat, after: &HiveHeartbeat) -> bool {
    before.state != after.state
        || before.hostname != after.hostname
        || before.version != after.version
        || !before
            .devices
            .iter()
            .map(|d| (&d.id, d.total_bytes))
            .eq(after.devices.iter().map(|d| (&d.id, d.total_bytes)))
        || before.models != after.models
        || !before
            .workers
            .iter()
            .map(|w| (&w.worker_id, &w.status))
            .eq(after.workers.iter().map(|w| (&w.worker_id, &w.status)))
}

/// True when a worker heartbeat changes more than the live figures (tokens per second, memory).
fn worker_materially_changed(before: &WorkerHeartbeat, after: &WorkerHeartbeat) -> bool {
    before.state != after.state
        || before.slots_busy != after.slots_busy
        || before.slots_total != after.slots_total
        || before.model_id != after.model_id
        || before.device != after.device
        || before.hive_id != after.hive_id
}

/// Observes a heartbeat's envelope, counting skipped sequence numbers in `gaps` and a stale one in
/// `stale`; `None` when stale (the heartbeat is ignored).
fn judge(
    sequence: &mut Sequence,
    meta: &EventMeta,
    retired: usize,
    stale: &mut u64,
    gaps: &mut u64,
) -> Option<Verdict> {
    match sequence.observe(meta, retired) {
        Verdict::Stale => {
            *stale += 1;
            None
        }
        verdict => {
            if let Verdict::Gap(skipped) = verdict {
                *gaps += skipped;
            }
            Some(verdict)
        }
    }
}
