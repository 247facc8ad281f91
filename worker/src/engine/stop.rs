//! Stop-sequence matching over streamed text.
//!
//! Text that could still be the start of a stop sequence is held back; it is released as soon as it
//! can no longer be one. The stop sequence itself, and anything after it, is never released.

/// What [`StopMatcher::push`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct StopScan {
    /// Text safe to emit now.
    pub(crate) emit: String,
    /// True when a stop sequence was found: generation must end, nothing more is emitted.
    pub(crate) stopped: bool,
}

/// Streams text through a set of stop sequences.
#[derive(Debug)]
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    /// A matcher for `stops`; empty strings are ignored.
    pub(crate) fn new(stops: &[String]) -> Self {
        Self { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), held: String::new() }
    }

    /// Adds `text` and returns what may be emitted.
    pub(crate) fn push(&mut self, text: &str) -> StopScan {
        if self.stops.is_empty() {
            return StopScan { emit: text.to_owned(), stopped: false };
        }
        self.held.push_str(text);
        // Earliest complete match of any stop sequence.
        let first_match = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min();
        if let Some(at) = first_match {
            let emit = self.held[..at].to_owned();
            self.held.clear();
            return StopScan { emit, stopped: true };
        }
        // Keep the longest suffix that is a proper prefix of some stop sequence.
        let keep_from = self.partial_match_start();
        let emit = self.held[..keep_from].to_owned();
        self.held.drain(..keep_from);
        StopScan { emit, stopped: false }
    }

    /// Releases the held text at the end of generation (no stop sequence can complete any more).
    pub(crate) fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Smallest char boundary `p` such that `held[p..]` is a prefix of a stop sequence, or `held.len()`.
    fn partial_match_start(&self) -> usize {
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let lowest = self.held.len().saturating_sub(longest);
        (lowest..self.held.len())
            .filter(|&p| self.held.is_char_boundary(p))
            .find(|&p| {
                let tail = &self.held[p..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.held.len())
    }
}

#[cfg(test)]
mod tests {
    use super::{StopMatcher, StopScan};

    fn matcher(stops: &[&str]) -> StopMatcher {
        StopMatcher::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = matcher(stops);
        let mut out = String::new();
        for piece in pieces {
            let StopScan { emit, stopped } = m.push(piece);
            out.push_str(&emit);
            if stopped {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn no_stops_passes_everything_at_once() {
        let mut m = matcher(&[]);
        assert_eq!(m.push("abc"), StopScan { emit: "abc".into(), stopped: false });
    }

    #[test]
    fn stop_inside_one_piece_cuts_before_it() {
        assert_eq!(run(&["STOP"], &["hello STOP world"]), ("hello ".into(), true));
    }

    #[test]
    fn stop_split_across_pieces_is_never_emitted() {
        assert_eq!(run(&["capital"], &["The cap", "it", "al of"]), ("The ".into(), true));
    }

    #[test]
    fn possible_prefix_is_held_then_released() {
        let mut m = matcher(&["Paris"]);
        assert_eq!(m.push("in Par").emit, "in ");
        // "Part" can no longer become "Paris".
        assert_eq!(m.push("t"), StopScan { emit: "Part".into(), stopped: false });
    }

    #[test]
    fn held_text_is_released_at_the_end() {
        assert_eq!(run(&["Paris."], &["It is Paris"]), ("It is Paris".into(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["world", "lo w"], &["hello world"]), ("hel".into(), true));
    }

    #[test]
    fn overlapping_prefix_restarts_correctly() {
        // "aab" must be found in "aaab" even though the first "aa" fails.
        assert_eq!(run(&["aab"], &["a", "a", "a", "b", "c"]), ("a".into(), true));
    }

    #[test]
    fn multibyte_text_keeps_char_boundaries() {
        assert_eq!(run(&["日本"], &["é日", "本語"]), ("é".into(), true));
        assert_eq!(run(&["🦀!"], &["x🦀", "?"]), ("x🦀?".into(), false));
    }

    #[test]
    fn emitted_text_never_contains_a_stop_for_any_split() {
        let text = "The capital of France is Paris. Paris is nice.";
        for cut in 1..text.len() {
            let (a, b) = text.split_at(cut);
            let (out, stopped) = run(&[" Paris"], &[a, b]);
            assert!(stopped);
            assert_eq!(out, "The capital of France is", "cut at {cut}");
        }
    }
}
