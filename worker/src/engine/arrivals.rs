//! Jobs on their way in: how the batch loop knows, when a job reaches it idle, whether others sent at
//! the same time are still being prepared (decoded, rendered, tokenized) and worth waiting for.
//!
//! Whoever takes a request that will become a job holds an [`Arriving`] from the moment it has the
//! request until `submit` has handed the job over (or refused it): the worker for each assignment it
//! takes off the bus, an in-process caller around a burst of submissions. The loop gathers while any
//! is held, so a lone job starts its first step at once and jobs sent together share it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::Shared;

/// Longest an idle loop holds its first job while others are still on their way in: preparing a job
/// takes well under a millisecond for a chat prompt, tens for a very long one; past this the first job
/// goes alone rather than wait on a slow one.
pub(crate) const GATHER_CAP: Duration = Duration::from_millis(10);

/// How often a gathering loop looks again whether jobs are still on their way in.
pub(crate) const GATHER_POLL: Duration = Duration::from_micros(100);

/// How many [`Arriving`] are held.
#[derive(Debug, Default)]
pub(crate) struct Arrivals {
    held: AtomicUsize,
}

impl Arrivals {
    /// Whether some job is still on its way in.
    pub(crate) fn any(&self) -> bool {
        self.held.load(Ordering::Acquire) > 0
    }
}

/// Held while a job is on its way into the engine ([`super::Engine::arriving`]); dropping it says the
/// job has been handed over or refused.
#[must_use = "the loop waits for arrivals only while this is held"]
pub struct Arriving {
    shared: Arc<Shared>,
}

impl Arriving {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        shared.arrivals.held.fetch_add(1, Ordering::AcqRel);
        Self { shared }
    }
}

impl Drop for Arriving {
    fn drop(&mut self) {
        self.shared.arrivals.held.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Arriving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Arriving")
    }
}
