//! Jobs nobody follows: after a restart the queen replays the job history, and a job that was queued
//! or running when the old queen went away has no placement loop. A job this queen did not create
//! that is still active after [`ORPHAN_GRACE_MS`] without an update, and whose worker is not busy
//! (gone, offline, or idle: the job cannot still be running there), is failed with a clear reason,
//! announced on the bus so the history agrees. One whose worker still streams goes on and ends with
//! the worker's own final status.

use std::time::Instant;

use super::announce;
use super::record::JobRecord;
use crate::membership::Liveness;
use crate::Queen;

/// How long an active job nobody placed may go without an update before it is failed.
pub const ORPHAN_GRACE_MS: u64 = 60_000;

/// True when the job is an orphan at `now_ms`; `worker_busy`: its worker is online with a busy slot.
pub fn is_orphan(record: &JobRecord, now_ms: u64, worker_busy: bool) -> bool {
    !record.state.is_terminal()
        && now_ms.saturating_sub(record.updated_at_ms) > ORPHAN_GRACE_MS
        && !worker_busy
}

/// Fails the orphans among the active jobs this queen did not create.
pub async fn sweep(queen: &Queen) {
    let (foreign, refused) = queen.jobs().foreign_active();
    if refused > 0 {
        tracing::debug!(refused, "status events for unknown job ids dropped (too many active)");
    }
    let now_ms = rbee_bus::now_ms();
    for job in foreign {
        let record = job.record();
        let worker_busy = record.worker_id.as_ref().is_some_and(|worker_id| {
            queen
                .registry()
                .get_worker(worker_id, Instant::now())
                .is_some_and(|w| w.liveness == Liveness::Online && w.slots_busy > 0)
        });
        if is_orphan(&record, now_ms, worker_busy) {
            let message = "no one followed the job any more (the queen that placed it stopped) and its \
                           worker is not running it"
                .to_owned();
            announce::fail(queen, &record.job_id, &record.model_id, message, record.worker_id.clone()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_active_job_is_an_orphan_only_when_silent_past_the_grace_and_not_running() {
        let record = JobRecord::new("j".parse().expect("id"), "m".parse().expect("id"), 1_000);
        assert!(!is_orphan(&record, 1_000 + ORPHAN_GRACE_MS, false), "within the grace");
        assert!(is_orphan(&record, 1_001 + ORPHAN_GRACE_MS, false));
        assert!(!is_orphan(&record, 1_001 + ORPHAN_GRACE_MS, true), "its worker still runs it");
        let mut done = record.clone();
        done.fail("over".into(), 2_000);
        assert!(!is_orphan(&done, u64::MAX, false), "a finished job is no orphan");
    }
}
