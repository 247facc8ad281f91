//! Prefix reuse, the pure part: which free slot a new prompt takes, and how much of what that slot's
//! KV cells already hold it keeps.
//!
//! After a job a slot keeps its tokens (prompt plus the generated tokens that were fed back) and their
//! KV cells, as llama.cpp's own server does. A new job takes the free slot whose cached tokens share
//! the longest prefix with its prompt, when that prefix is at least [`MIN_SIMILARITY`] of the prompt;
//! otherwise the least recently used free slot (keeping the others' conversations warm). The job then
//! decodes only the tokens past the shared prefix, and always at least the last prompt token, whose
//! logits it samples from.

/// Share of the prompt a slot's cache must hold as a prefix to be chosen for it over the least recently
/// used free slot (llama-server's `--slot-prompt-similarity` default).
pub const MIN_SIMILARITY: f64 = 0.5;

/// What the slot table knows of a free slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached<T> {
    /// The sequence id.
    pub seq: i32,
    /// The tokens its KV cells hold, positions `0..len`.
    pub tokens: Vec<T>,
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
pub fn choose<T: PartialEq>(free: &[Cached<T>], prompt: &[T]) -> Option<Choice> {
    let best = free
        .iter()
        .enumerate()
        .map(|(i, slot)| (i, common_prefix(&slot.tokens, prompt)))
        // Longest prefix; among equals the least recently used, so a hotter cache is kept.
        .max_by(|(ia, a), (ib, b)| a.cmp(b).then(free[*ib].released_at.cmp(&free[*ia].released_at)))?;
    let (index, common) = best;
    let similar = !prompt.is_empty() && common as f64 >= MIN_SIMILARITY * prompt.len() as f64;
    if common > 0 && similar {
        return Some(Choice { index, reuse: common.min(prompt.len().saturating_sub(1)) });
    }
    let lru = free.iter().enumerate().min_by_key(|(_, s)| s.released_at).map(|(i, _)| i)?;
    Some(Choice { index: lru, reuse: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn slot(seq: i32, tokens: &[u32], released_at: u64) -> Cached<u32> {
        Cached { seq, tokens: tokens.to_vec(), released_at }
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
            // No other slot holds a longer similar prefix.
            let best = free.iter().map(|s| common_prefix(&s.tokens, &prompt)).max().unwrap_or(0);
            if choice.reuse > 0 {
                prop_assert!(choice.reuse == best.min(prompt.len() - 1));
            }
        }
    }
}
