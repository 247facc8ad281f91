//! The queen's "the membership view changed" signal, which jobs waiting for a worker or a free slot
//! (and the watch on a job's worker) wait on. A plain [`Notify`] loses a change that lands between a job's placement decision and the
//! start of its wait (the job then sleeps until its recheck timeout, ~0.5 s, with a slot free); this
//! one also remembers when the last change happened, so a wait for "a change since my decision"
//! returns at once when one already came.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Changes {
    notify: Notify,
    last: Mutex<Option<Instant>>,
}

impl Changes {
    /// Records a change and wakes every waiter.
    pub fn notify(&self) {
        *self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        self.notify.notify_waiters();
    }

    /// When the last change happened (none yet: `None`).
    pub fn last(&self) -> Option<Instant> {
        *self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits for a change made at or after `since` (returns at once if one was), at most `at_most`.
    pub async fn wait_since(&self, since: Instant, at_most: Duration) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        // Registered before the check: a change after it wakes this wait.
        notified.as_mut().enable();
        if self.last().is_some_and(|at| at >= since) {
            return;
        }
        let _ = tokio::time::timeout(at_most, notified).await;
    }
}

#[cfg(test)]
mod tests {
    use super::Changes;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn a_change_before_the_wait_is_not_lost() {
        let changes = Changes::default();
        let decided = Instant::now();
        changes.notify();
        let t = Instant::now();
        changes.wait_since(decided, Duration::from_secs(5)).await;
        assert!(t.elapsed() < Duration::from_secs(1), "the wait did not see the earlier change");
    }

    #[tokio::test]
    async fn an_older_change_does_not_end_the_wait() {
        let changes = Changes::default();
        changes.notify();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let decided = Instant::now();
        let t = Instant::now();
        changes.wait_since(decided, Duration::from_millis(100)).await;
        assert!(t.elapsed() >= Duration::from_millis(100), "a change before the decision ended the wait");
    }

    #[tokio::test]
    async fn a_change_during_the_wait_ends_it() {
        let changes = std::sync::Arc::new(Changes::default());
        let decided = Instant::now();
        let c = changes.clone();
        let waiter = tokio::spawn(async move { c.wait_since(decided, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t = Instant::now();
        changes.notify();
        waiter.await.expect("waiter");
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
