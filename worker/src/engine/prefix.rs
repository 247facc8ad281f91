//! Prefix reuse, the pure part: which free slot a new prompt takes, and how much of what that slot's
//! KV cells already hold it keeps.
//!
//! After a job a slot keeps its tokens (prompt plus the generated tokens that were fed back) and their
//! KV cells, as llama.cpp's own server does. A new job takes the free slot whose cached tokens share
//! the longest prefix with its prompt, when that prefix is at least [`MIN_SIMILARITY`] of the prompt;
//! otherwise the least recently used free slot (keeping the others' conversations warm), which still
//! keeps whatever prefix it shares with the prompt (a chat template's system turn, say). The job then
//! decodes only the tokens past the shared prefix, and always at least the last prompt token, whose
//! logits it samples from.
//!
//! A slot whose cells a new job is about to discard first saves them ([`Saved`]): a bounded host-RAM
//! store of sequence states, least recently saved out first. A later prompt that shares more with a
//! saved state than with any free slot has it restored into a slot, so a conversation that lost its
//! slot to others comes back without reading its history again.

/// Share of the prompt a slot's cache must hold as a prefix to be chosen for it over the least recently
/// used free slot (llama-server's `--slot-prompt-similarity` default).
pub const MIN_SIMILARITY: f64 = 0.5;

/// Fewest tokens a job must be about to discard from a slot's cells for their state to be saved first.
/// Saving and restoring copy the whole sequence (a few MB, a few ms on CPU for the default model); a
/// short reply plus its question is already about 15 tokens, some 30 ms to read again on 2 cores.
pub const MIN_SAVED_TAIL: usize = 8;

/// Fewest prompt tokens a job must gain over its own slot's cells to copy them from a running slot
/// instead (the copy moves the whole source sequence, as a save and a restore do).
pub const MIN_SHARED: usize = 8;

/// What the slot table knows of a free slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached<'a, T> {
    /// The sequence id.
    pub seq: i32,
    /// The tokens its KV cells hold, positions `0..len`.
    pub tokens: &'a [T],
    /// When it was last released (a counter: larger is later).
    pub released_at: u64,
}

/// The slot a prompt takes and the cached tokens it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// Index of the chosen slot in the list given.
    pub index: usize,
    /// Tokens of the prompt already in that slot's cells (`< prompt.len()`).
    pub reuse: usize,
}

/// Length of the common prefix.
pub fn common_prefix<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Chooses among free slots for `prompt` (non-empty). `None` only when `free` is empty.
pub fn choose<T: PartialEq>(free: &[Cached<'_, T>], prompt: &[T]) -> Option<Choice> {
    let best = free
        .iter()
        .enumerate()
        .map(|(i, slot)| (i, common_prefix(slot.tokens, prompt)))
        // Longest prefix; among equals the least recently used, so a hotter cache is kept.
        .max_by(|(ia, a), (ib, b)| a.cmp(b).then(free[*ib].released_at.cmp(&free[*ia].released_at)))?;
    let (index, common) = best;
    let similar = !prompt.is_empty() && common as f64 >= MIN_SIMILARITY * prompt.len() as f64;
    if common > 0 && similar {
        return Some(Choice { index, reuse: common.min(prompt.len().saturating_sub(1)) });
    }
    // The least recently used slot keeps what it shares with the prompt all the same: the cells past it
    // are cut either way, and the shared start (the template's system turn) need not be read again.
    let (lru, slot) = free.iter().enumerate().min_by_key(|(_, s)| s.released_at)?;
    let reuse = common_prefix(slot.tokens, prompt).min(prompt.len().saturating_sub(1));
    Some(Choice { index: lru, reuse })
}

/// Sequence states saved from slots, in host RAM, at most `bound` bytes together.
#[derive(Debug)]
pub struct Saved<T, S> {
    entries: Vec<SavedEntry<T, S>>,
    bytes: usize,
    bound: usize,
}

#[derive(Debug)]
struct SavedEntry<T, S> {
    tokens: Vec<T>,
    state: S,
    size: usize,
}

impl<T: PartialEq, S> Saved<T, S> {
    /// An empty store of at most `bound` bytes (0 keeps nothing).
    pub fn new(bound: usize) -> Self {
        Self { entries: Vec::new(), bytes: 0, bound }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// States held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Keeps `state` (of `size` bytes) for `tokens`, dropping the oldest entries to stay within the
    /// bound, and any entry whose tokens are a prefix of these (this one holds more). Returns false,
    /// keeping nothing, when it alone exceeds the bound.
    pub fn insert(&mut self, tokens: Vec<T>, state: S, size: usize) -> bool {
        if size > self.bound || tokens.is_empty() {
            return false;
        }
        let mut i = 0;
        while i < self.entries.len() {
            if tokens.starts_with(&self.entries[i].tokens) {
                self.bytes -= self.entries.remove(i).size;
            } else {
                i += 1;
            }
        }
        while self.bytes + size > self.bound && !self.entries.is_empty() {
            self.bytes -= self.entries.remove(0).size;
        }
        self.bytes += size;
        self.entries.push(SavedEntry { tokens, state, size });
        true
    }

    /// Whether some state holds all of `tokens` (as its tokens or a prefix of them).
    pub fn covers(&self, tokens: &[T]) -> bool {
        self.entries.iter().any(|e| e.tokens.starts_with(tokens))
    }

    /// The states held, oldest first.
    pub fn states(&self) -> impl Iterator<Item = &S> {
        self.entries.iter().map(|e| &e.state)
    }

    /// Takes out the state holding the longest prefix of `prompt`, when it holds more than `beat` tokens
    /// of it and at least [`MIN_SIMILARITY`] of it: its tokens, the state, and the shared length.
    pub fn take_best(&mut self, prompt: &[T], beat: usize) -> Option<(Vec<T>, S, usize)> {
        let (index, common) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(&e.tokens, prompt)))
            .max_by_key(|(_, common)| *common)?;
        if common <= beat || (common as f64) < MIN_SIMILARITY * prompt.len() as f64 {
            return None;
        }
        let entry = self.entries.remove(index);
        self.bytes -= entry.size;
        Some((entry.tokens, entry.state, common))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn slot(seq: i32, tokens: &[u32], released_at: u64) -> Cached<'_, u32> {
        Cached { seq, tokens, released_at }
    }

    #[test]
    fn the_longest_similar_prefix_wins() {
        let free = [slot(0, &[1, 2, 3], 5), slot(1, &[1, 2, 3, 4, 5, 9], 1), slot(2, &[7], 0)];
        assert_eq!(choose(&free, &[1, 2, 3, 4, 5, 6]), Some(Choice { index: 1, reuse: 5 }));
    }

    #[test]
    fn a_prompt_equal_to_the_cache_still_decodes_its_last_token() {
        let free = [slot(0, &[1, 2, 3, 4], 0)];
        assert_eq!(choose(&free, &[1, 2, 3, 4]), Some(Choice { index: 0, reuse: 3 }));
        assert_eq!(choose(&free, &[1, 2]), Some(Choice { index: 0, reuse: 1 }));
    }

    #[test]
    fn too_little_in_common_takes_the_least_recently_used() {
        let free = [slot(0, &[1, 9, 9, 9], 3), slot(1, &[5, 5], 1), slot(2, &[], 2)];
        assert_eq!(choose(&free, &[1, 2, 3, 4, 5]), Some(Choice { index: 1, reuse: 0 }));
        assert_eq!(choose::<u32>(&[], &[1]), None);
    }

    #[test]
    fn the_least_recently_used_slot_keeps_the_start_it_shares() {
        // The template's system turn (1, 2) is shared, too little of the prompt to pick a slot by, but
        // the slot taken keeps it rather than reading it again.
        let free = [slot(0, &[1, 2, 7, 7, 7, 7], 3), slot(1, &[1, 2, 8, 8, 8], 1)];
        assert_eq!(choose(&free, &[1, 2, 3, 4, 5, 6]), Some(Choice { index: 1, reuse: 2 }));
    }

    #[test]
    fn saved_states_stay_within_their_bound_and_the_best_comes_back() {
        let mut saved: Saved<u32, &str> = Saved::new(100);
        assert!(saved.insert(vec![1, 2, 3], "a", 40));
        assert!(saved.insert(vec![5, 6], "b", 40));
        assert!(!saved.insert(vec![9], "huge", 101), "larger than the bound");
        // A third one pushes out the oldest.
        assert!(saved.insert(vec![7, 8, 9], "c", 40));
        assert_eq!((saved.len(), saved.bytes()), (2, 80));
        assert!(saved.take_best(&[1, 2, 3, 4], 0).is_none(), "the oldest went out");
        assert!(saved.covers(&[7, 8]) && saved.covers(&[7, 8, 9]) && !saved.covers(&[7, 8, 9, 1]));
        // Not better than what a slot already has, or too little of the prompt: stays.
        assert!(saved.take_best(&[7, 8, 9, 1], 3).is_none());
        assert!(saved.take_best(&[7, 0, 0, 0, 0], 0).is_none());
        let (tokens, state, common) = saved.take_best(&[7, 8, 9, 1], 1).expect("c comes back");
        assert_eq!((tokens, state, common), (vec![7, 8, 9], "c", 3));
        assert_eq!((saved.len(), saved.bytes()), (1, 40));
        // A longer state of the same conversation replaces the shorter one.
        assert!(saved.insert(vec![5, 6, 7, 8], "b2", 50));
        assert_eq!((saved.len(), saved.bytes()), (1, 50));
    }

    proptest! {
        #[test]
        fn reuse_is_a_true_prefix_and_leaves_a_token_to_decode(
            caches in proptest::collection::vec((proptest::collection::vec(0u32..4, 0..12), 0u64..50), 1..6),
            prompt in proptest::collection::vec(0u32..4, 1..12),
        ) {
            let free: Vec<_> = caches.iter().enumerate()
                .map(|(i, (t, r))| slot(i as i32, t, *r)).collect();
            let choice = choose(&free, &prompt).expect("a free slot");
            prop_assert!(choice.index < free.len());
            prop_assert!(choice.reuse < prompt.len());
            prop_assert_eq!(&free[choice.index].tokens[..choice.reuse], &prompt[..choice.reuse]);
            // The chosen slot keeps all it shares with the prompt (less the last token)...
            let own = common_prefix(free[choice.index].tokens, &prompt);
            prop_assert_eq!(choice.reuse, own.min(prompt.len() - 1));
            // ...and when some slot holds a similar prefix, no other slot holds a longer one.
            let best = free.iter().map(|s| common_prefix(s.tokens, &prompt)).max().unwrap_or(0);
            if best as f64 >= MIN_SIMILARITY * prompt.len() as f64 && best > 0 {
                prop_assert_eq!(own, best);
            }
        }
    }
}
