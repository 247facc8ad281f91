//! Per-publisher ordering: epoch (re-rolled at every process start) and sequence number.

use std::collections::VecDeque;

use rbee_bus::EventMeta;

/// What one heartbeat's envelope means next to the last one accepted from the same publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Same epoch, the next sequence number.
    InOrder,
    /// Same epoch, this many sequence numbers skipped (lost heartbeats).
    Gap(u64),
    /// A new epoch: the publisher restarted.
    NewEpoch,
    /// Same epoch with a sequence number at or below the last one (duplicate or out of order), or
    /// an epoch already replaced: ignored.
    Stale,
}

/// The ordering state of one publisher. Gaps are counted only between two heartbeats of the same
/// epoch: the first heartbeat seen of an epoch is the baseline, whatever its number.
#[derive(Debug, Clone)]
pub(crate) struct Sequence {
    /// Current epoch.
    pub epoch: String,
    /// Highest sequence number accepted in the current epoch.
    pub last_seq: u64,
    /// Epochs this publisher had before, newest last.
    retired: VecDeque<String>,
    /// Sequence numbers skipped, all epochs together.
    pub gaps: u64,
    /// Heartbeats ignored as stale.
    pub stale: u64,
}

impl Sequence {
    /// Starts from the first accepted envelope.
    pub fn new(meta: &EventMeta) -> Self {
        Self { epoch: meta.epoch.clone(), last_seq: meta.seq, retired: VecDeque::new(), gaps: 0, stale: 0 }
    }

    /// Judges `meta` and, unless stale, accepts it as the newest.
    pub fn observe(&mut self, meta: &EventMeta, retired_epochs_kept: usize) -> Verdict {
        if meta.epoch == self.epoch {
            if meta.seq <= self.last_seq {
                self.stale += 1;
                return Verdict::Stale;
            }
            let skipped = meta.seq - self.last_seq - 1;
            self.last_seq = meta.seq;
            if skipped == 0 {
                return Verdict::InOrder;
            }
            self.gaps += skipped;
            return Verdict::Gap(skipped);
        }
        if self.retired.contains(&meta.epoch) {
            self.stale += 1;
            return Verdict::Stale;
        }
        let previous = std::mem::replace(&mut self.epoch, meta.epoch.clone());
        self.retired.push_back(previous);
        while self.retired.len() > retired_epochs_kept {
            self.retired.pop_front();
        }
        self.last_seq = meta.seq;
        Verdict::NewEpoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(epoch: &str, seq: u64) -> EventMeta {
        EventMeta { publisher: "p".into(), epoch: epoch.into(), seq, sent_at_ms: 0 }
    }

    #[test]
    fn gaps_duplicates_and_restarts() {
        let mut sequence = Sequence::new(&meta("a", 5));
        assert_eq!(sequence.observe(&meta("a", 6), 4), Verdict::InOrder);
        assert_eq!(sequence.observe(&meta("a", 9), 4), Verdict::Gap(2));
        assert_eq!(sequence.observe(&meta("a", 9), 4), Verdict::Stale);
        assert_eq!(sequence.observe(&meta("a", 7), 4), Verdict::Stale);
        assert_eq!(sequence.observe(&meta("b", 1), 4), Verdict::NewEpoch);
        assert_eq!(
            sequence.observe(&meta("a", 10), 4),
            Verdict::Stale,
            "a late heartbeat of a replaced epoch"
        );
        assert_eq!((sequence.gaps, sequence.stale), (2, 3));
    }
}
