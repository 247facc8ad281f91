//! Slots: the sequence ids of the shared llama context, who holds them, and a held slot's state.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::SeqState;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::grammar::ConstrainedSampler;
use super::output::Output;
use super::{prefix, GenEvent};

/// Which sequence ids are free, and what each one's KV cells still hold. Shared by
/// [`super::Engine::submit`] (reserves, choosing by [`prefix::choose`]) and the batch loop (releases,
/// saying what the sequence's cells hold now).
#[derive(Debug)]
pub(crate) struct SlotTable {
    total: usize,
    state: Mutex<TableState>,
}

#[derive(Debug)]
struct TableState {
    free: Vec<i32>,
    /// By sequence id: the tokens its KV cells hold (positions `0..len`), empty when cleared.
    cached: Vec<Vec<LlamaToken>>,
    /// By sequence id: fingerprints of the prompt prefixes its cells hold ([`rbee_bus::prefix`]).
    fingerprints: Vec<Vec<u64>>,
    /// By sequence id: the release clock when it was last released.
    released_at: Vec<u64>,
    /// By sequence id: whether what its cells hold now was already offered to the RAM store (saved,
    /// refused, or found there), so that evicting it costs nothing more.
    offered: Vec<bool>,
    clock: u64,
    /// Whether a job may keep a slot's cached prefix (off by flag, or for a model whose memory cannot
    /// be truncated).
    reuse: bool,
    /// States of slots whose cells a job discarded, in host RAM.
    saved: prefix::Saved<LlamaToken, (SeqState, Vec<u64>)>,
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

/// A reserved slot.
#[derive(Debug)]
pub(crate) struct Reserved {
    /// The sequence id.
    pub(crate) seq: i32,
    /// Prompt tokens already in its KV cells (or in `restore`), which the job keeps.
    pub(crate) reuse: usize,
    /// A saved state to load into the slot first, with the tokens it holds.
    pub(crate) restore: Option<(Vec<LlamaToken>, SeqState)>,
}

impl SlotTable {
    /// `total` free slots, sequence ids `0..total`, empty caches; `reuse` turns prefix reuse on, and
    /// `saved_bytes` bounds the host-RAM store of states of evicted prefixes.
    pub(crate) fn new(total: usize, reuse: bool, saved_bytes: usize) -> Self {
        let total_i32 = i32::try_from(total).unwrap_or(i32::MAX);
        let state = TableState {
            free: (0..total_i32).collect(),
            cached: vec![Vec::new(); total],
            fingerprints: vec![Vec::new(); total],
            released_at: vec![0; total],
            offered: vec![false; total],
            clock: 0,
            reuse,
            saved: prefix::Saved::new(saved_bytes),
            closed: false,
        };
        Self { total, state: Mutex::new(state) }
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

    /// Whether jobs keep cached prefixes.
    pub(crate) fn reuse_enabled(&self) -> bool {
        self.lock().reuse
    }

    /// Turns prefix reuse off for good (the model's memory cannot be truncated).
    pub(crate) fn disable_reuse(&self) {
        let mut state = self.lock();
        state.reuse = false;
        state.saved = prefix::Saved::new(0);
    }

    /// What sequence `seq`'s cells hold, as last released: the tokens and their fingerprints.
    pub(crate) fn cached(&self, seq: i32) -> (Vec<LlamaToken>, Vec<u64>) {
        let state = self.lock();
        let Ok(i) = usize::try_from(seq) else { return Default::default() };
        (
            state.cached.get(i).cloned().unwrap_or_default(),
            state.fingerprints.get(i).cloned().unwrap_or_default(),
        )
    }

    /// A free slot holding at least `min` tokens not yet offered to the RAM store, with those tokens and
    /// their fingerprints; marked offered. Slots whose tokens the store already holds (within a longer
    /// state) are marked on the way and skipped.
    pub(crate) fn next_unoffered(&self, min: usize) -> Option<(i32, Vec<LlamaToken>, Vec<u64>)> {
        let mut guard = self.lock();
        let state = &mut *guard;
        if !state.reuse {
            return None;
        }
        for &seq in &state.free {
            let Ok(i) = usize::try_from(seq) else { continue };
            if state.offered[i] || state.cached[i].len() < min {
                continue;
            }
            state.offered[i] = true;
            if !state.saved.covers(&state.cached[i]) {
                return Some((seq, state.cached[i].clone(), state.fingerprints[i].clone()));
            }
        }
        None
    }

    /// Whether what sequence `seq`'s cells hold was already offered to the RAM store.
    pub(crate) fn offered(&self, seq: i32) -> bool {
        let state = self.lock();
        usize::try_from(seq).ok().and_then(|i| state.offered.get(i).copied()).unwrap_or(false)
    }

    /// Keeps the state of cells a job is about to discard, for a later prompt that starts the same way.
    pub(crate) fn save(&self, tokens: Vec<LlamaToken>, state: SeqState, fingerprints: Vec<u64>) -> bool {
        let size = state.byte_len();
        let mut table = self.lock();
        table.reuse && table.saved.insert(tokens, (state, fingerprints), size)
    }

    /// The fingerprints of every prefix the slots and the RAM store hold, sorted, at most
    /// [`rbee_bus::prefix::MAX_ADVERTISED`] (the deepest links of each chain first).
    pub(crate) fn fingerprints(&self) -> Vec<u64> {
        const PER_CHAIN: usize = 32;
        let state = self.lock();
        let chains = state.fingerprints.iter().chain(state.saved.states().map(|(_, f)| f));
        let mut all: Vec<u64> =
            chains.flat_map(|chain| chain.iter().rev().take(PER_CHAIN)).copied().collect();
        all.truncate(rbee_bus::prefix::MAX_ADVERTISED);
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Bytes of saved states in host RAM, and how many.
    pub(crate) fn saved_usage(&self) -> (usize, usize) {
        let state = self.lock();
        (state.saved.bytes(), state.saved.len())
    }

    /// Reserves the slot best for `prompt` ([`prefix::choose`]) and runs `hand_over` with it while the
    /// table is locked, so that a hand-over is never lost to a concurrent [`SlotTable::close`]. If
    /// `hand_over` fails the slot is freed again.
    pub(crate) fn reserve_with<E>(
        &self,
        prompt: &[LlamaToken],
        hand_over: impl FnOnce(Reserved) -> Result<(), E>,
    ) -> Result<i32, Result<ReserveError, E>> {
        let mut state = self.lock();
        if state.closed {
            return Err(Ok(ReserveError::Closed));
        }
        let (mut reserved, lru) = {
            let candidates: Vec<prefix::Cached<'_, LlamaToken>> = state
                .free
                .iter()
                .map(|&seq| {
                    let i = usize::try_from(seq).unwrap_or_default();
                    let tokens = if state.reuse { state.cached[i].as_slice() } else { &[] };
                    prefix::Cached { seq, tokens, released_at: state.released_at[i] }
                })
                .collect();
            let choice = prefix::choose(&candidates, prompt).ok_or(Ok(ReserveError::Full))?;
            let chosen = candidates[choice.index].seq;
            let lru = candidates.iter().min_by_key(|c| c.released_at).map_or(chosen, |c| c.seq);
            (Reserved { seq: chosen, reuse: choice.reuse, restore: None }, lru)
        };
        if state.reuse {
            if let Some((tokens, (saved, _), common)) = state.saved.take_best(prompt, reserved.reuse) {
                // The saved state holds more of this prompt than any free slot: it goes into the least
                // recently used free slot, whose own cells are the least likely to be wanted next.
                let reuse = common.min(prompt.len().saturating_sub(1));
                reserved = Reserved { seq: lru, reuse, restore: Some((tokens, saved)) };
            }
        }
        let seq = reserved.seq;
        state.free.retain(|&s| s != seq);
        match hand_over(reserved) {
            Ok(()) => Ok(seq),
            Err(e) => {
                state.free.push(seq);
                Err(Err(e))
            }
        }
    }

    /// Gives a slot back, with the tokens its KV cells now hold (empty when they were cleared) and
    /// their fingerprints.
    pub(crate) fn release(&self, seq: i32, cached: Vec<LlamaToken>, fingerprints: Vec<u64>) {
        let mut state = self.lock();
        let Ok(i) = usize::try_from(seq) else { return };
        if i >= state.cached.len() {
            return;
        }
        state.clock += 1;
        state.released_at[i] = state.clock;
        state.cached[i] = cached;
        state.fingerprints[i] = fingerprints;
        state.offered[i] = false;
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
    /// Prompt tokens already in the slot's KV cells (chosen at reservation); the loop checks it can keep
    /// them before it trusts them.
    pub(crate) reuse: usize,
    /// A saved state to load into the slot before the prompt, and the tokens it holds.
    pub(crate) restore: Option<(Vec<LlamaToken>, SeqState)>,
    /// Fingerprints of the prompt ([`rbee_bus::prefix::fingerprints`]).
    pub(crate) fingerprints: Vec<u64>,
    /// The last chat message of the prompt was followed by this reply when it is a chat (the slot then
    /// also holds the conversation with the reply, which the next turn starts with).
    pub(crate) chat: bool,
    /// The reply so far: what earlier attempts streamed, for a resumed job; empty otherwise.
    pub(crate) reply: String,
    pub(crate) tokens: Vec<LlamaToken>,
    pub(crate) sampler: ConstrainedSampler,
    /// Send log probabilities, with this many alternatives.
    pub(crate) logprobs: Option<u8>,
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
    /// Generated tokens fed back into the KV cells, in order (after the prompt).
    pub(crate) fed: Vec<LlamaToken>,
    /// The text sent to the client so far.
    pub(crate) reply: String,
    /// Log probabilities of tokens whose text is still held back.
    pub(crate) logprobs: Vec<rbee_bus::TokenLogprob>,
    /// Ids of the tokens whose text is still held back.
    pub(crate) held_ids: Vec<u32>,
}

impl Slot {
    /// Sends released text (with the log probabilities of its tokens) and completed tool calls to the
    /// job's receiver; nothing when both are empty. A closed receiver is not an error here.
    pub(crate) fn send(&mut self, text: String, calls: Vec<rbee_bus::ToolCallChunk>) {
        if !text.is_empty() {
            self.reply.push_str(&text);
            let logprobs = std::mem::take(&mut self.logprobs);
            let token_ids = std::mem::take(&mut self.held_ids);
            let _ = self.job.events.send(GenEvent::Token { text, logprobs, token_ids });
        }
        if !calls.is_empty() {
            let _ = self.job.events.send(GenEvent::ToolCalls { calls });
        }
    }

    /// A slot starting its prompt.
    pub(crate) fn new(mut job: Job) -> Self {
        let reply = std::mem::take(&mut job.reply);
        Self {
            job,
            prefilled: 0,
            n_past: 0,
            next: None,
            logits_at: None,
            in_batch: false,
            fed: Vec::new(),
            reply,
            logprobs: Vec::new(),
            held_ids: Vec::new(),
        }
    }

    /// Fingerprints of what this slot holds after the job: the prompt's, and for a chat the conversation
    /// with this reply as the assistant's message; none when the prompt was not read whole.
    pub(crate) fn held_fingerprints(&self) -> Vec<u64> {
        if self.prompt_left() > 0 {
            // Cut off while reading the prompt: the cells hold only part of its messages.
            return Vec::new();
        }
        let mut held = self.job.fingerprints.clone();
        if self.job.chat {
            if let Some(&last) = held.last() {
                let reply = rbee_bus::ChatMessage::new("assistant", self.reply.clone());
                held.push(rbee_bus::prefix::chat_link(last, &reply));
            }
        }
        held
    }

    /// The tokens this sequence's KV cells hold: the prompt decoded so far, then the fed tokens.
    pub(crate) fn cached_tokens(&self) -> Vec<LlamaToken> {
        let mut tokens = self.job.tokens[..self.prefilled].to_vec();
        tokens.extend_from_slice(&self.fed);
        tokens
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
    use llama_cpp_2::token::LlamaToken;

    use super::{ReserveError, Reserved, SlotTable};

    fn tokens(ids: &[i32]) -> Vec<LlamaToken> {
        ids.iter().map(|&i| LlamaToken(i)).collect()
    }

    /// Reserves a slot for `prompt`: its sequence id and how many prompt tokens it keeps.
    fn reserve(t: &SlotTable, prompt: &[i32]) -> (i32, usize) {
        let mut got = None;
        t.reserve_with(&tokens(prompt), |r: Reserved| {
            got = Some((r.seq, r.reuse));
            Ok::<(), ()>(())
        })
        .expect("a free slot");
        got.expect("handed over")
    }

    #[test]
    fn reserve_until_full_then_release() {
        let t = SlotTable::new(2, true, 0);
        let ok = |_| Ok::<(), ()>(());
        let prompt = tokens(&[1, 2]);
        assert_eq!(t.reserve_with(&prompt, ok), Ok(0));
        assert_eq!(t.reserve_with(&prompt, ok), Ok(1));
        assert_eq!(t.busy(), 2);
        assert_eq!(t.reserve_with(&prompt, ok), Err(Ok(ReserveError::Full)));
        t.release(0, Vec::new(), Vec::new());
        t.release(0, Vec::new(), Vec::new());
        assert_eq!(t.busy(), 1);
        assert_eq!(t.reserve_with(&prompt, ok), Ok(0));
    }

    #[test]
    fn a_released_slot_is_chosen_for_a_prompt_it_holds_the_start_of() {
        let t = SlotTable::new(3, true, 0);
        let ok = |_| Ok::<(), ()>(());
        for _ in 0..3 {
            t.reserve_with(&tokens(&[9]), ok).expect("free slot");
        }
        t.release(1, tokens(&[1, 2, 3, 4, 5]), Vec::new());
        t.release(0, tokens(&[7, 7]), Vec::new());
        t.release(2, Vec::new(), Vec::new());
        assert_eq!(reserve(&t, &[1, 2, 3, 4, 5, 6, 7]), (1, 5));
        // Nothing in common: the least recently released of the rest.
        assert_eq!(reserve(&t, &[3]), (0, 0));
        // With reuse off, nothing is kept.
        t.release(1, tokens(&[1, 2, 3]), Vec::new());
        t.disable_reuse();
        assert_eq!(reserve(&t, &[1, 2, 3, 4]).1, 0);
    }

    #[test]
    fn failed_hand_over_frees_the_slot_and_close_refuses() {
        let t = SlotTable::new(1, true, 0);
        assert_eq!(t.reserve_with(&tokens(&[1]), |_| Err::<(), _>("gone")), Err(Err("gone")));
        assert_eq!(t.busy(), 0);
        t.close();
        assert_eq!(t.reserve_with(&tokens(&[1]), |_| Ok::<(), ()>(())), Err(Ok(ReserveError::Closed)));
    }
}
