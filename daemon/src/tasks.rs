//! [`Tasks`]: the tasks a daemon started and waits for when it stops. Every task gets a name (for the
//! warning when a drain runs out of time) and may watch [`Tasks::token`], which [`Tasks::cancel`]
//! cancels. A shutdown is: stop taking work, [`Tasks::drain`] (or [`Tasks::cancel_and_drain`]) under
//! a deadline, then the daemon's last messages.
//!
//! ```no_run
//! # async fn demo() {
//! use std::time::Duration;
//! let tasks = rbee_daemon::Tasks::new();
//! let stop = tasks.token();
//! tasks.spawn("ticker", async move { stop.cancelled().await });
//! let drained = tasks.cancel_and_drain(Duration::from_secs(2)).await;
//! assert!(drained);
//! # }
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A set of named, tracked tasks with one cancellation token; clones share the set.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    token: CancellationToken,
    running: Arc<Mutex<BTreeMap<&'static str, usize>>>,
}

impl Tasks {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `future` as a task named `name`, tracked until it ends.
    pub fn spawn<F>(&self, name: &'static str, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let guard = Running::enter(self.running.clone(), name);
        self.tracker.spawn(async move {
            let output = future.await;
            drop(guard);
            output
        })
    }

    /// The token long-running tasks watch to know they should end; cancelled by [`Tasks::cancel`].
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Asks every task watching [`Tasks::token`] to end.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// Tasks not ended yet.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// True when no task is running.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// The names of the tasks not ended yet, one entry per task, sorted.
    pub fn running(&self) -> Vec<&'static str> {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        running.iter().flat_map(|(name, n)| std::iter::repeat_n(*name, *n)).collect()
    }

    /// Waits up to `deadline` for every task to end; returns whether they all did (a warning names the
    /// ones still running when not). Tasks spawned meanwhile are waited for too.
    pub async fn drain(&self, deadline: Duration) -> bool {
        self.tracker.close();
        let drained = tokio::time::timeout(deadline, self.tracker.wait()).await.is_ok();
        self.tracker.reopen();
        if !drained {
            tracing::warn!(running = ?self.running(), deadline_ms = deadline.as_millis() as u64, "tasks did not end in time");
        }
        drained
    }

    /// [`Tasks::cancel`], then [`Tasks::drain`].
    pub async fn cancel_and_drain(&self, deadline: Duration) -> bool {
        self.cancel();
        self.drain(deadline).await
    }
}

/// Counts a task under its name while it runs (also when it panics or is aborted).
struct Running {
    running: Arc<Mutex<BTreeMap<&'static str, usize>>>,
    name: &'static str,
}

impl Running {
    fn enter(running: Arc<Mutex<BTreeMap<&'static str, usize>>>, name: &'static str) -> Self {
        *running.lock().unwrap_or_else(PoisonError::into_inner).entry(name).or_default() += 1;
        Self { running, name }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = running.get_mut(self.name) {
            *n -= 1;
            if *n == 0 {
                running.remove(self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_tasks_and_names_the_late_ones() {
        let tasks = Tasks::new();
        let stop = tasks.token();
        tasks.spawn("watcher", async move { stop.cancelled().await });
        tasks.spawn("sleeper", tokio::time::sleep(Duration::from_secs(60)));
        assert_eq!(tasks.running(), vec!["sleeper", "watcher"]);
        assert!(!tasks.drain(Duration::from_millis(20)).await);
        tasks.cancel();
        assert!(!tasks.drain(Duration::from_millis(200)).await);
        assert_eq!(tasks.running(), vec!["sleeper"]);
        assert_eq!(tasks.len(), 1);
    }

    #[tokio::test]
    async fn cancel_and_drain_ends_watching_tasks() {
        let tasks = Tasks::new();
        for _ in 0..3 {
            let stop = tasks.token();
            tasks.spawn("watcher", async move { stop.cancelled().await });
        }
        assert_eq!(tasks.len(), 3);
        assert!(tasks.cancel_and_drain(Duration::from_secs(2)).await);
        assert!(tasks.is_empty());
        assert!(tasks.running().is_empty());
    }
}
