//! Slots: the sequence ids of the shared llama context, who holds them, and a held slot's state.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::output::Output;
use super::GenEvent;

/// Which sequence ids are free. Shared by [`super::Engine::submit`] (reserves) and the batch loop
/// (releases, after clearing the sequence's KV cache).
#[derive(Debug)]
pub(crate) struct SlotTable {
    total: usize,
    state: Mutex<TableState>,
}

#[derive(Debug)]
struct TableState {
    free: Vec<i32>,
    /// Set once the loop stops taking jobs; nothing is reserved after that.
    closed: bool,
}

/// Why a slot could not be reserved.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReserveError {
    /// All slots are held.
    Full,
    /// The engine is shut down.
    Closed,
}

impl SlotTable {
    /// `total` free slots, sequence ids `0..total`.
    pub(crate) fn new(total: usize) -> Self {
        let total_i32 = i32::try_from(total).unwrap_or(i32::MAX);
        // Lowest ids are handed out first.
        let free = (0..total_i32).rev().collect();
        Self { total, state: Mutex::new(TableState { free, closed: false }) }
    }

    fn lock(&self) -> MutexGuard<'_, TableState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of slots.
    pub(crate) fn total(&self) -> usize {
        self.total
    }

    /// Slots held by jobs.
    pub(crate) fn busy(&self) -> usize {
        self.total - self.lock().free.len()
    }

    /// Reserves a slot and runs `hand_over` with its id while the table is locked, so that a hand-over
    /// is never lost to a concurrent [`SlotTable::close`]. If `hand_over` fails the slot is freed again.
    pub(crate) fn reserve_with<E>(
        &self,
        hand_over: impl FnOnce(i32) -> Result<(), E>,
    ) -> Result<i32, Result<ReserveError, E>> {
        let mut state = self.lock();
        if state.closed {
            return Err(Ok(ReserveError::Closed));
        }
        let seq = state.free.pop().ok_or(Ok(ReserveError::Full))?;
        match hand_over(seq) {
            Ok(()) => Ok(seq),
            Err(e) => {
                state.free.push(seq);
                Err(Err(e))
            }
        }
    }

    /// Gives a slot back.
    pub(crate) fn release(&self, seq: i32) {
        let mut state = self.lock();
        if !state.free.contains(&seq) {
            state.free.push(seq);
        }
    }

    /// Refuses every later reservation. Every hand-over made before returns has completed.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
    }
}

/// A job on its way from `submit` to the batch loop.
pub(crate) struct Job {
    pub(crate) seq: i32,
    pub(crate) tokens: Vec<LlamaToken>,
    pub(crate) sampler: LlamaSampler,
    pub(crate) output: Output,
    pub(crate) seed: u64,
    pub(crate) cancel: CancellationToken,
    pub(crate) deadline: Option<Instant>,
    pub(crate) events: UnboundedSender<GenEvent>,
}

/// A job holding a slot in the batch loop.
pub(crate) struct Slot {
    pub(crate) job: Job,
    /// Prompt tokens already decoded.
    pub(crate) prefilled: usize,
    /// Positions filled in this sequence's KV cache.
    pub(crate) n_past: i32,
    /// Sampled token still to be fed to the model.
    pub(crate) next: Option<LlamaToken>,
    /// Index, in the current batch, of the token whose logits this slot samples from.
    pub(crate) logits_at: Option<i32>,
    /// Whether the current batch holds tokens of this slot.
    pub(crate) in_batch: bool,
}

impl Slot {
    /// A slot starting its prompt.
    pub(crate) fn new(job: Job) -> Self {
        Self { job, prefilled: 0, n_past: 0, next: None, logits_at: None, in_batch: false }
    }

    /// Prompt tokens not yet decoded.
    pub(crate) fn prompt_left(&self) -> usize {
        self.job.tokens.len() - self.prefilled
    }

    /// Why this job must stop now, if it must: cancelled, past its deadline, or nobody listening.
    pub(crate) fn interrupted(&self, now: Instant) -> Option<&'static str> {
        if self.job.cancel.is_cancelled() {
            Some("cancelled")
        } else if self.job.deadline.is_some_and(|d| now >= d) {
            Some("deadline passed")
        } else if self.job.events.is_closed() {
            Some("receiver dropped")
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ReserveError, SlotTable};

    #[test]
    fn reserve_until_full_then_release() {
        let t = SlotTable::new(2);
        let ok = |_| Ok::<(), ()>(());
        assert_eq!(t.reserve_with(ok), Ok(0));
        assert_eq!(t.reserve_with(ok), Ok(1));
        assert_eq!(t.busy(), 2);
        assert_eq!(t.reserve_with(ok), Err(Ok(ReserveError::Full)));
        t.release(0);
        t.release(0);
        assert_eq!(t.busy(), 1);
        assert_eq!(t.reserve_with(ok), Ok(0));
    }

    #[test]
    fn failed_hand_over_frees_the_slot_and_close_refuses() {
        let t = SlotTable::new(1);
        assert_eq!(t.reserve_with(|_| Err::<(), _>("gone")), Err(Err("gone")));
        assert_eq!(t.busy(), 0);
        t.close();
        assert_eq!(t.reserve_with(|_| Ok::<(), ()>(())), Err(Ok(ReserveError::Closed)));
    }
}
