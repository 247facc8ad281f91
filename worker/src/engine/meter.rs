//! Recent decode rate across all slots.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far back [`RateMeter::rate`] looks.
pub(crate) const RATE_WINDOW: Duration = Duration::from_secs(5);

/// Tokens sampled per decode step over a sliding window.
#[derive(Debug, Default)]
pub(crate) struct RateMeter {
    /// (step start, step end, tokens sampled in the step), oldest first.
    steps: VecDeque<(Instant, Instant, u32)>,
}

impl RateMeter {
    /// Records one decode step.
    pub(crate) fn record(&mut self, start: Instant, end: Instant, tokens: u32) {
        if tokens > 0 {
            self.steps.push_back((start, end, tokens));
        }
        self.prune(end);
    }

    /// Tokens per second over the steps that ended in the last [`RATE_WINDOW`], measured from the start
    /// of the oldest of them to `now`: it reads the true rate shortly after work begins and decays to 0
    /// once work stops.
    pub(crate) fn rate(&mut self, now: Instant) -> f64 {
        self.prune(now);
        let Some(&(oldest_start, _, _)) = self.steps.front() else { return 0.0 };
        let window_start = oldest_start.max(now.checked_sub(RATE_WINDOW).unwrap_or(oldest_start));
        let span = now.saturating_duration_since(window_start).as_secs_f64();
        if span <= 0.0 {
            return 0.0;
        }
        let tokens: u64 = self.steps.iter().map(|&(_, _, n)| u64::from(n)).sum();
        tokens as f64 / span
    }

    fn prune(&mut self, now: Instant) {
        while let Some(&(_, end, _)) = self.steps.front() {
            if now.saturating_duration_since(end) > RATE_WINDOW {
                self.steps.pop_front();
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{RateMeter, RATE_WINDOW};
    use std::time::{Duration, Instant};

    #[test]
    fn empty_meter_reads_zero() {
        assert_eq!(RateMeter::default().rate(Instant::now()), 0.0);
    }

    #[test]
    fn steady_work_reads_its_rate() {
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        // 2 tokens every 100 ms for 1 s: 20 tok/s.
        for i in 0..10 {
            let start = t0 + Duration::from_millis(i * 100);
            m.record(start, start + Duration::from_millis(100), 2);
        }
        let rate = m.rate(t0 + Duration::from_secs(1));
        assert!((rate - 20.0).abs() < 1e-6, "{rate}");
    }

    #[test]
    fn rate_decays_to_zero_when_idle() {
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        m.record(t0, t0 + Duration::from_secs(1), 50);
        let later = m.rate(t0 + Duration::from_secs(3));
        assert!(later < 50.0 && later > 0.0, "{later}");
        assert_eq!(m.rate(t0 + Duration::from_secs(1) + RATE_WINDOW + Duration::from_millis(1)), 0.0);
    }
}
