//! Job cancels: [`listener`] reads `rbee.job.*.cancel` and cancels the jobs that run here. A cancel for
//! a job this worker does not run is remembered in [`EarlyCancels`] for a while, because it may have
//! overtaken the job's assignment (a client's `DELETE /v1/jobs/{id}` while the queen's assignment is
//! in flight): that assignment is then accepted and ends `cancelled` at once, without generating.
//! Every worker sees every cancel, so the memory is bounded in age and in count.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rbee_bus::{JobCancel, JobId};
use tokio_util::sync::CancellationToken;

use crate::WorkerShared;

/// How long a cancel for an unknown job is remembered.
pub const EARLY_CANCEL_TTL: Duration = Duration::from_secs(60);
/// Most cancels for unknown jobs remembered; the oldest is forgotten first.
pub const EARLY_CANCEL_MAX: usize = 1024;

/// Cancels of jobs not running here, newest last, each with when it came.
#[derive(Debug, Clone)]
pub struct EarlyCancels {
    inner: Arc<Mutex<VecDeque<(Instant, JobId)>>>,
    ttl: Duration,
    max: usize,
}

impl Default for EarlyCancels {
    fn default() -> Self {
        Self::new(EARLY_CANCEL_TTL, EARLY_CANCEL_MAX)
    }
}

impl EarlyCancels {
    /// A memory keeping at most `max` cancels, each for `ttl`.
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self { inner: Arc::default(), ttl, max }
    }

    /// Remembers a cancel for `job` received at `now`.
    pub fn remember(&self, job: JobId, now: Instant) {
        let mut recent = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        self.expire(&mut recent, now);
        if self.max == 0 {
            return;
        }
        while recent.len() >= self.max {
            recent.pop_front();
        }
        recent.push_back((now, job));
    }

    /// True when `job` was cancelled within the last `ttl` (and not forgotten for room).
    pub fn contains(&self, job: &JobId, now: Instant) -> bool {
        let mut recent = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        self.expire(&mut recent, now);
        recent.iter().any(|(_, id)| id == job)
    }

    /// Cancels remembered now.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// True when none is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expire(&self, recent: &mut VecDeque<(Instant, JobId)>, now: Instant) {
        while recent.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) >= self.ttl) {
            recent.pop_front();
        }
    }
}

/// Reads `rbee.job.*.cancel` until `stop`: cancels the job when it runs here, else remembers the
/// cancel (first, so an assignment being accepted at the same moment sees one or the other). Bad
/// messages are logged and dropped.
pub async fn listener(shared: Arc<WorkerShared>, mut sub: async_nats::Subscriber, stop: CancellationToken) {
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            msg = sub.next() => match msg { Some(m) => m, None => return },
        };
        match rbee_bus::rpc::decode::<JobCancel>(&msg.subject, &msg.payload) {
            Ok(cancel) if cancel.worker_id.as_ref().is_some_and(|w| w != &shared.config.worker_id) => {
                tracing::debug!(job_id = %cancel.job_id, "cancel for another worker's attempt ignored");
            }
            Ok(cancel) if shared.fence.admit(cancel.fence, "cancel").is_err() => {
                tracing::info!(job_id = %cancel.job_id, "cancel from a fenced queen ignored");
            }
            Ok(cancel) => {
                shared.early_cancels.remember(cancel.job_id.clone(), Instant::now());
                if shared.active.cancel(&cancel.job_id) {
                    tracing::info!(job_id = %cancel.job_id, reason = %cancel.reason, "job cancel requested");
                } else {
                    tracing::debug!(job_id = %cancel.job_id, "cancel for a job not running here remembered");
                }
            }
            Err(e) => tracing::warn!(subject = %msg.subject, error = %e, "malformed cancel ignored"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> JobId {
        s.parse().expect("job id")
    }

    #[test]
    fn remembers_for_a_while_and_up_to_a_count() {
        let t0 = Instant::now();
        let early = EarlyCancels::new(Duration::from_secs(60), 3);
        early.remember(id("a"), t0);
        assert!(early.contains(&id("a"), t0 + Duration::from_secs(59)));
        assert!(!early.contains(&id("b"), t0));
        assert!(!early.contains(&id("a"), t0 + Duration::from_secs(60)), "expired");
        assert!(early.is_empty());
        for (i, job) in ["a", "b", "c", "d"].into_iter().enumerate() {
            early.remember(id(job), t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(early.len(), 3);
        assert!(!early.contains(&id("a"), t0), "the oldest made room");
        assert!(early.contains(&id("d"), t0));
        let none = EarlyCancels::new(Duration::from_secs(60), 0);
        none.remember(id("a"), t0);
        assert!(none.is_empty());
    }
}
