//! The batch loop: one OS thread owns the llama context and decodes every slot together.
//!
//! Each step: take new jobs, end interrupted ones, build ONE batch holding the pending sampled token of
//! every generating slot plus prompt chunks of prefilling slots (at most [`prefill_per_step`] prompt
//! tokens per step, shared fairly), decode it once, then sample each slot whose last token of the step
//! asked for logits.

use std::num::NonZeroU32;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::{LlamaStateSeqFlags, SeqState};
use rbee_bus::FinishReason;

use super::arrivals::{GATHER_CAP, GATHER_POLL};
use super::load::CONTEXT_CREATION;
use super::logprobs;
use super::prefix::{MIN_SAVED_TAIL, MIN_SHARED};
use super::slots::{Job, Slot};
use super::{GenEvent, Shared};

/// Most prompt tokens decoded in one step, all prefilling slots together: bounds how long one step
/// (and so every generating slot's next token) can take while a long prompt is read. On CPU
/// (~200 prompt tokens/s for a 135M model on 2 cores) 256 tokens is about a second; a GPU reads far
/// more in the same time.
pub(crate) fn prefill_per_step(gpu_offload: bool) -> usize {
    if gpu_offload {
        1024
    } else {
        256
    }
}

/// A message to the loop thread.
pub(crate) enum Command {
    /// Start a job in its reserved slot.
    Start(Box<Job>),
    /// Cancel everything and exit.
    Shutdown,
}

/// What the loop thread needs.
pub(crate) struct LoopSetup {
    pub(crate) backend: &'static LlamaBackend,
    pub(crate) model: Arc<LlamaModel>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) rx: Receiver<Command>,
    pub(crate) slots: usize,
    pub(crate) ctx_per_slot: u32,
    pub(crate) threads: i32,
    pub(crate) prefill_per_step: usize,
}

/// Thread body: creates the context, reports the usable context per slot (or the error) on `ready`,
/// then runs the loop until shutdown.
pub(crate) fn run(setup: LoopSetup, ready: SyncSender<Result<u32, String>>) {
    let LoopSetup { backend, model, shared, rx, slots, ctx_per_slot, threads, prefill_per_step } = setup;
    let n_batch = prefill_per_step + slots;
    let total_ctx = ctx_per_slot.saturating_mul(u32::try_from(slots).unwrap_or(u32::MAX));
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(total_ctx))
        .with_n_seq_max(u32::try_from(slots).unwrap_or(u32::MAX))
        .with_n_batch(u32::try_from(n_batch).unwrap_or(u32::MAX))
        .with_n_ubatch(u32::try_from(n_batch.min(512)).unwrap_or(512))
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
        // One KV stream per sequence: each slot gets exactly its own `n_ctx / n_seq_max` cells.
        .with_kv_unified(false);
    let created = {
        let _guard = CONTEXT_CREATION.lock().unwrap_or_else(PoisonError::into_inner);
        model.new_context(backend, params)
    };
    let ctx = match created {
        Ok(ctx) => ctx,
        Err(e) => {
            let _ = ready.send(Err(format!(
                "llama.cpp could not create the context ({e}): n_ctx {total_ctx} may not fit in memory"
            )));
            return;
        }
    };
    let per_slot = ctx_per_slot.min(ctx.n_ctx() / u32::try_from(slots).unwrap_or(u32::MAX).max(1));
    if ready.send(Ok(per_slot)).is_err() {
        return;
    }
    tracing::info!(n_ctx = ctx.n_ctx(), slots, per_slot, n_batch, threads, "batch loop started");
    let mut batch_loop = BatchLoop {
        model: &model,
        ctx,
        batch: LlamaBatch::new(n_batch, 1),
        shared: &shared,
        active: Vec::with_capacity(slots),
        slots,
        per_slot,
        prefill_per_step,
    };
    batch_loop.run(&rx);
    // Nothing is reserved from now on; every hand-over made so far is in the channel.
    shared.slots.close();
    tracing::info!(running = batch_loop.active.len(), "batch loop stopping, cancelling running jobs");
    for slot in std::mem::take(&mut batch_loop.active) {
        batch_loop.finish(slot, FinishReason::Cancelled, None);
    }
    while let Ok(cmd) = rx.try_recv() {
        if let Command::Start(job) = cmd {
            batch_loop.finish(Slot::new(*job), FinishReason::Cancelled, None);
        }
    }
    tracing::info!("batch loop stopped");
}

struct BatchLoop<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    shared: &'m Shared,
    /// Slots in admission order.
    active: Vec<Slot>,
    /// How many jobs may run at once.
    slots: usize,
    per_slot: u32,
    prefill_per_step: usize,
}

impl BatchLoop<'_> {
    fn run(&mut self, rx: &Receiver<Command>) {
        loop {
            // Wait for work when idle; otherwise take whatever arrived without waiting.
            if self.active.is_empty() {
                match self.wait_idle(rx) {
                    Some(job) => self.admit(*job),
                    None => return,
                }
                // Jobs sent together reach an idle worker one after another (one NATS assignment each,
                // prepared in turn): while others are on their way in, wait for them so their prompts
                // share the first step instead of the later ones waiting a whole prefill step for it.
                let until = Instant::now() + GATHER_CAP;
                while self.active.len() < self.slots && self.shared.arrivals.any() {
                    let wait = until.saturating_duration_since(Instant::now()).min(GATHER_POLL);
                    if wait.is_zero() {
                        break;
                    }
                    match rx.recv_timeout(wait) {
                        Ok(Command::Start(job)) => self.admit(*job),
                        Ok(Command::Shutdown) | Err(RecvTimeoutError::Disconnected) => return,
                        Err(RecvTimeoutError::Timeout) => {}
                    }
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(Command::Start(job)) => self.admit(*job),
                    Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => return,
                    Err(TryRecvError::Empty) => break,
                }
            }
            self.reap_interrupted();
            if !self.active.is_empty() {
                self.step();
            }
        }
    }

    /// Waits for the next job while idle, saving the free slots' states to the RAM store in the meantime
    /// (one at a time, looking for a job between them), so that a job evicting a slot later does not
    /// pay for the save before its first token. `None` on shutdown.
    fn wait_idle(&mut self, rx: &Receiver<Command>) -> Option<Box<Job>> {
        loop {
            match rx.try_recv() {
                Ok(Command::Start(job)) => return Some(job),
                Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            let Some((seq, tokens, fingerprints)) = self.shared.slots.next_unoffered(MIN_SAVED_TAIL) else {
                break;
            };
            self.save_state(seq, tokens, fingerprints, "idle");
        }
        match rx.recv() {
            Ok(Command::Start(job)) => Some(job),
            Ok(Command::Shutdown) | Err(_) => None,
        }
    }

    /// Takes a job into its slot: keeps the cached prefix chosen at reservation when the cells can be
    /// cut after it, else clears the sequence and reads the whole prompt.
    fn admit(&mut self, job: Job) {
        let mut slot = Slot::new(job);
        let seq = slot.job.seq;
        let restore = slot.job.restore.take();
        // What of the slot's own cells the job keeps; the rest is saved to RAM first, when worth it.
        let keeps = if restore.is_some() { 0 } else { slot.job.reuse };
        self.save_evicted(seq, keeps);
        let mut reuse = slot.job.reuse;
        if let Some((tokens, state)) = restore {
            if !self.restore(seq, &tokens, &state) {
                reuse = 0;
            }
        }
        // A running job that has already read more of this prompt than the slot holds (another choice
        // of the same request, say): its cells are copied, and this job reads only the rest.
        if let Some((src, common)) = self.live_prefix(&slot.job.tokens, reuse) {
            if self.copy_cells(src, seq, common) {
                reuse = common;
            }
        }
        let kept = self.keep_prefix(seq, reuse);
        slot.prefilled = kept;
        slot.n_past = i32::try_from(kept).unwrap_or(0);
        slot.job.output.set_cached_tokens(u32::try_from(kept).unwrap_or(0));
        tracing::debug!(
            seq,
            prompt_tokens = slot.job.tokens.len(),
            cached_tokens = kept,
            seed = slot.job.seed,
            "job admitted"
        );
        self.active.push(slot);
    }

    /// The running slot whose decoded prompt shares the longest prefix with `tokens`, and that prefix's
    /// length, when it beats `reuse` by at least [`MIN_SHARED`] tokens. One token of the prompt is
    /// always left to read, for the logits of the first sampled token.
    fn live_prefix(&self, tokens: &[LlamaToken], reuse: usize) -> Option<(i32, usize)> {
        if !self.shared.slots.reuse_enabled() {
            return None;
        }
        let most = tokens.len().saturating_sub(1);
        self.active
            .iter()
            .map(|s| {
                let decoded = &s.job.tokens[..s.prefilled.min(s.job.tokens.len())];
                (s.job.seq, decoded.iter().zip(tokens).take_while(|(a, b)| a == b).count().min(most))
            })
            .filter(|(_, common)| *common >= reuse + MIN_SHARED)
            .max_by_key(|(_, common)| *common)
    }

    /// Copies sequence `src`'s cells into `dst` (whose own are dropped), to be cut after `common`
    /// positions; false (`dst` cleared) when llama.cpp refuses.
    fn copy_cells(&mut self, src: i32, dst: i32, common: usize) -> bool {
        let Ok(dst_u32) = u32::try_from(dst) else { return false };
        let state = match self.ctx.state_seq_get(src, LlamaStateSeqFlags::empty()) {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(src, dst, error = %e, "could not read a running slot's state to share it");
                return false;
            }
        };
        let _ = self.ctx.clear_kv_cache_seq(Some(dst_u32), None, None);
        match self.ctx.state_seq_set(&state, dst) {
            Ok(()) if self.ctx.kv_cache_seq_pos_max(dst) + 1 >= i32::try_from(common).unwrap_or(i32::MAX) => {
                tracing::debug!(src, dst, shared_tokens = common, "prompt cells copied from a running slot");
                true
            }
            other => {
                tracing::warn!(src, dst, result = ?other.err(), "could not copy a running slot's cells; reading the whole prompt");
                let _ = self.ctx.clear_kv_cache_seq(Some(dst_u32), None, None);
                false
            }
        }
    }

    /// Cuts sequence `seq`'s cells after its first `reuse` positions and returns how many are kept: `reuse`,
    /// or 0 when the sequence was cleared instead (nothing to keep, cells missing at the start, as a
    /// sliding window leaves them, or a memory that cannot be cut, which turns reuse off for good).
    fn keep_prefix(&mut self, seq: i32, reuse: usize) -> usize {
        let Ok(seq_u32) = u32::try_from(seq) else { return 0 };
        if reuse > 0 && self.ctx.kv_cache_seq_pos_min(seq) <= 0 {
            match self.ctx.clear_kv_cache_seq(Some(seq_u32), u32::try_from(reuse).ok(), None) {
                Ok(true) => return reuse,
                other => {
                    tracing::warn!(seq, result = ?other, "this model's memory cannot be cut after a prefix; prefix reuse is off");
                    self.shared.slots.disable_reuse();
                }
            }
        }
        match self.ctx.clear_kv_cache_seq(Some(seq_u32), None, None) {
            Ok(true) => {}
            other => tracing::warn!(seq, result = ?other, "could not clear the slot's kv cache"),
        }
        0
    }

    /// Before a job cuts sequence `seq`'s cells after its first `keeps` positions, keeps the whole state
    /// in host RAM (bounded) when at least [`MIN_SAVED_TAIL`] tokens would be lost: another conversation
    /// that shares only a system prompt with this one then does not wipe it out.
    fn save_evicted(&mut self, seq: i32, keeps: usize) {
        let (tokens, fingerprints) = self.shared.slots.cached(seq);
        if tokens.len() < keeps + MIN_SAVED_TAIL
            || !self.shared.slots.reuse_enabled()
            || self.shared.slots.offered(seq)
        {
            return;
        }
        self.save_state(seq, tokens, fingerprints, "evicted");
    }

    /// Copies sequence `seq`'s state (holding `tokens`) into the RAM store.
    fn save_state(&mut self, seq: i32, tokens: Vec<LlamaToken>, fingerprints: Vec<u64>, when: &'static str) {
        let started = Instant::now();
        match self.ctx.state_seq_get(seq, LlamaStateSeqFlags::empty()) {
            Ok(state) => {
                let (n, bytes) = (tokens.len(), state.byte_len());
                let kept = self.shared.slots.save(tokens, state, fingerprints);
                let took_us = started.elapsed().as_micros();
                tracing::debug!(seq, tokens = n, bytes, kept, took_us, when, "slot state saved to host ram");
            }
            Err(e) => tracing::warn!(seq, error = %e, "could not save the slot's state"),
        }
    }

    /// Loads a saved state into sequence `seq`; false (the sequence cleared) when llama.cpp refuses it.
    fn restore(&mut self, seq: i32, tokens: &[llama_cpp_2::token::LlamaToken], state: &SeqState) -> bool {
        let Ok(seq_u32) = u32::try_from(seq) else { return false };
        let _ = self.ctx.clear_kv_cache_seq(Some(seq_u32), None, None);
        match self.ctx.state_seq_set(state, seq) {
            Ok(()) if self.ctx.kv_cache_seq_pos_max(seq) + 1 == i32::try_from(tokens.len()).unwrap_or(-1) => {
                tracing::debug!(seq, tokens = tokens.len(), "slot state restored from host ram");
                true
            }
            other => {
                tracing::warn!(seq, result = ?other.err(), "could not restore a saved slot state; reading the whole prompt");
                let _ = self.ctx.clear_kv_cache_seq(Some(seq_u32), None, None);
                false
            }
        }
    }

    /// Ends cancelled jobs, jobs past their deadline and jobs nobody listens to.
    fn reap_interrupted(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.active.len() {
            if let Some(why) = self.active[i].interrupted(now) {
                let slot = self.active.remove(i);
                tracing::debug!(seq = slot.job.seq, reason = why, "job interrupted");
                self.finish(slot, FinishReason::Cancelled, None);
            } else {
                i += 1;
            }
        }
    }

    /// One decode step over all active slots.
    fn step(&mut self) {
        let started = Instant::now();
        self.batch.clear();
        for slot in &mut self.active {
            slot.logits_at = None;
            slot.in_batch = false;
        }
        if let Err(e) = self.fill_batch() {
            self.fail_batch(&format!("could not build the batch: {e}"));
            return;
        }
        if self.batch.n_tokens() == 0 {
            return;
        }
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            tracing::error!(error = %e, n_tokens = self.batch.n_tokens(), "decode failed");
            self.fail_batch(&format!("decode failed: {e}"));
            return;
        }
        let sampled = self.sample_all();
        let ended = Instant::now();
        self.shared.meter().record(started, ended, sampled);
    }

    /// Adds each generating slot's pending token and prompt chunks of prefilling slots within the
    /// step's prefill budget, slot by slot in increasing sequence id: with one KV stream per sequence,
    /// llama.cpp decodes in one pass only the sequences that come in increasing, consecutive ids
    /// (`split_equal`); in any other order the same tokens take a forward pass per run of ids (up to
    /// one per slot, every weight read again each time).
    fn fill_batch(&mut self) -> Result<(), llama_cpp_2::llama_batch::BatchAddError> {
        let takes = self.prefill_takes();
        let mut order: Vec<usize> = (0..self.active.len()).collect();
        order.sort_by_key(|&i| self.active[i].job.seq);
        for i in order {
            let slot = &mut self.active[i];
            if let Some(token) = slot.next.take() {
                self.batch.add(token, slot.n_past, &[slot.job.seq], true)?;
                slot.n_past += 1;
                slot.fed.push(token);
                slot.logits_at = Some(self.batch.n_tokens() - 1);
                slot.in_batch = true;
                continue;
            }
            let take = takes[i];
            if take == 0 {
                continue;
            }
            let start = slot.prefilled;
            for (k, &token) in slot.job.tokens[start..start + take].iter().enumerate() {
                let last_of_prompt = start + k + 1 == slot.job.tokens.len();
                self.batch.add(token, slot.n_past, &[slot.job.seq], last_of_prompt)?;
                slot.n_past += 1;
                if last_of_prompt {
                    slot.logits_at = Some(self.batch.n_tokens() - 1);
                }
            }
            slot.prefilled += take;
            slot.in_batch = true;
        }
        Ok(())
    }

    /// How many prompt tokens each active slot reads this step (by its index in `active`): within the
    /// prefill budget, first an equal share each (oldest first), then what is left over, oldest first.
    fn prefill_takes(&self) -> Vec<usize> {
        let mut takes = vec![0; self.active.len()];
        // A generating slot has read its whole prompt (nothing left), so only prefilling ones count.
        let prefilling = self.active.iter().filter(|s| s.prompt_left() > 0).count();
        if prefilling == 0 {
            return takes;
        }
        let mut budget = self.prefill_per_step;
        let share = (self.prefill_per_step / prefilling).max(1);
        for pass_limit in [share, usize::MAX] {
            for (i, slot) in self.active.iter().enumerate() {
                let take = (slot.prompt_left() - takes[i]).min(pass_limit).min(budget);
                takes[i] += take;
                budget -= take;
            }
        }
        takes
    }

    /// Samples every slot that has logits in this step; returns how many tokens were sampled.
    fn sample_all(&mut self) -> u32 {
        let model = self.model;
        let vocab = model.vocab();
        let mut sampled = 0;
        let mut i = 0;
        while i < self.active.len() {
            let slot = &mut self.active[i];
            let Some(at) = slot.logits_at else {
                i += 1;
                continue;
            };
            let token = slot.job.sampler.sample(&self.ctx, at);
            sampled += 1;
            let eog = vocab.is_eog(token);
            let piece = if eog { Vec::new() } else { vocab.token_to_piece(token, false, None) };
            if let (Some(top), false) = (slot.job.logprobs, eog) {
                let piece_of = |t: usize| {
                    i32::try_from(t)
                        .map_or_else(|_| Vec::new(), |t| vocab.token_to_piece(LlamaToken(t), false, None))
                };
                let id = usize::try_from(token.0).unwrap_or(usize::MAX);
                slot.logprobs.push(logprobs::entry(self.ctx.get_logits_ith(at), id, top, piece_of));
            }
            if !eog {
                slot.held_ids.push(u32::try_from(token.0).unwrap_or_default());
            }
            let outcome = slot.job.output.on_token(&piece, eog, Instant::now());
            // A closed receiver is noticed by `reap_interrupted` before the next step.
            slot.send(outcome.emit, outcome.calls);
            let finish = outcome.finish.or_else(|| {
                // No room left in this slot's context for the token just sampled.
                (u32::try_from(slot.n_past).unwrap_or(u32::MAX) >= self.per_slot)
                    .then_some(FinishReason::Length)
            });
            match finish {
                Some(reason) => {
                    let slot = self.active.remove(i);
                    self.finish(slot, reason, None);
                }
                None => {
                    slot.next = Some(token);
                    i += 1;
                }
            }
        }
        sampled
    }

    /// Ends every slot that had tokens in the failed batch with an error.
    fn fail_batch(&mut self, message: &str) {
        let (failed, kept): (Vec<Slot>, Vec<Slot>) =
            std::mem::take(&mut self.active).into_iter().partition(|s| s.in_batch);
        self.active = kept;
        for slot in failed {
            self.finish(slot, FinishReason::Error, Some(message.to_owned()));
        }
    }

    /// Frees the slot (its KV cells kept for the next job, or cleared) and sends the final event.
    fn finish(&mut self, mut slot: Slot, reason: FinishReason, error: Option<String>) {
        let seq = slot.job.seq;
        if reason == FinishReason::Length {
            let (tail, calls) = slot.job.output.flush();
            slot.send(tail, calls);
        }
        let usage = slot.job.output.usage();
        tracing::info!(
            seq,
            reason = reason.as_str(),
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            ttft_ms = usage.time_to_first_token_ms,
            decode_tps = usage.decode_tokens_per_second,
            error = error.as_deref(),
            "generation finished"
        );
        // The cells stay for the next job of this slot, described exactly; after a failed decode their
        // state is unknown, so they are cleared and nothing is trusted.
        let (cached, fingerprints) = if reason == FinishReason::Error || !self.shared.slots.reuse_enabled() {
            if let Err(e) = u32::try_from(seq).map(|s| self.ctx.clear_kv_cache_seq(Some(s), None, None)) {
                tracing::warn!(seq, error = %e, "could not clear the slot's kv cache");
            }
            (Vec::new(), Vec::new())
        } else {
            (slot.cached_tokens(), slot.held_fingerprints())
        };
        // Freed before the final event, so whoever sees `Finished` can use the slot at once.
        self.shared.slots.release(seq, cached, fingerprints);
        let _ = slot.job.events.send(GenEvent::Finished { reason, usage, error });
    }
}
