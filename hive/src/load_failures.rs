//! Models whose workers keep failing to load ([`LoadFailureTable`], pure): a worker that exits before
//! it was ever ready counts one failure of its model; a worker of the model that becomes ready clears
//! them. After each failure the hive waits before spawning the model again ([`LoadRetry`]: the first
//! wait, doubling up to a cap) and after `refuse_after` failures in a row it refuses the model until
//! it is imported or pulled again, or the hive restarts. [`LoadFailureTable::state`] is what the
//! model listing and the spawn handler read.

use std::collections::HashMap;
use std::time::Duration;

use rbee_bus::{LoadFailures, ModelId};

/// How the hive retries a model whose workers fail to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadRetry {
    /// Wait after the first failure; doubles with each one after it.
    pub first_wait: Duration,
    /// The longest wait.
    pub max_wait: Duration,
    /// Failures in a row after which the model is refused.
    pub refuse_after: u32,
}

impl Default for LoadRetry {
    fn default() -> Self {
        Self { first_wait: Duration::from_secs(5), max_wait: Duration::from_secs(60), refuse_after: 5 }
    }
}

impl LoadRetry {
    /// The wait after `failures` failures in a row (at least one).
    fn wait_after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        self.first_wait.saturating_mul(1 << doublings).min(self.max_wait)
    }
}

#[derive(Debug, Clone)]
struct Record {
    failures: u32,
    last_error: String,
    last_at_ms: u64,
}

/// Load failures by model, with the policy that turns them into waits and refusals.
#[derive(Debug, Default)]
pub struct LoadFailureTable {
    policy: LoadRetry,
    models: HashMap<ModelId, Record>,
}

impl LoadFailureTable {
    /// An empty table with this policy.
    pub fn new(policy: LoadRetry) -> Self {
        Self { policy, models: HashMap::new() }
    }

    /// A worker of `model_id` exited before it was ready, at `now_ms`.
    pub fn failed(&mut self, model_id: &ModelId, error: &str, now_ms: u64) {
        let record = self.models.entry(model_id.clone()).or_insert(Record {
            failures: 0,
            last_error: String::new(),
            last_at_ms: 0,
        });
        record.failures = record.failures.saturating_add(1);
        record.last_error = error.to_owned();
        record.last_at_ms = now_ms;
    }

    /// A worker of `model_id` became ready, or the model's file was replaced: it starts afresh.
    pub fn clear(&mut self, model_id: &ModelId) {
        self.models.remove(model_id);
    }

    /// What stands in the way of spawning `model_id` at `now_ms`: `None` when nothing does (no
    /// failures, or the wait after the last one has passed and it is not refused).
    pub fn state(&self, model_id: &ModelId, now_ms: u64) -> Option<LoadFailures> {
        let record = self.models.get(model_id)?;
        let refused = record.failures >= self.policy.refuse_after;
        let wait = u64::try_from(self.policy.wait_after(record.failures).as_millis()).unwrap_or(u64::MAX);
        let retry_at_ms = record.last_at_ms.saturating_add(wait);
        if !refused && retry_at_ms <= now_ms {
            return None;
        }
        Some(LoadFailures {
            failures: record.failures,
            last_error: record.last_error.clone(),
            retry_at_ms: (!refused).then_some(retry_at_ms),
            refused,
        })
    }

    /// Why a spawn of `model_id` is refused at `now_ms`, for a person; `None` when it may go ahead.
    pub fn refusal(&self, model_id: &ModelId, now_ms: u64) -> Option<String> {
        let state = self.state(model_id, now_ms)?;
        let times = if state.failures == 1 {
            "once".to_owned()
        } else {
            format!("{} times in a row", state.failures)
        };
        Some(match state.retry_at_ms {
            Some(at) => format!(
                "workers of model {model_id} failed to load {times}; the hive tries again in {} s (last: {})",
                at.saturating_sub(now_ms).div_ceil(1000),
                state.last_error
            ),
            None => format!(
                "workers of model {model_id} failed to load {times}; the hive refuses it until it is imported \
                 or pulled again (last: {})",
                state.last_error
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_wait_longer_each_time_then_refuse_until_cleared() {
        let policy = LoadRetry {
            first_wait: Duration::from_secs(1),
            max_wait: Duration::from_secs(3),
            refuse_after: 4,
        };
        let mut table = LoadFailureTable::new(policy);
        let model: ModelId = "broken".parse().expect("id");
        assert_eq!(table.state(&model, 0), None);
        table.failed(&model, "exit status: 1", 10_000);
        let state = table.state(&model, 10_000).expect("waiting");
        assert_eq!((state.failures, state.retry_at_ms, state.refused), (1, Some(11_000), false));
        assert!(table
            .refusal(&model, 10_000)
            .is_some_and(|r| r.contains("in 1 s") && r.contains("exit status: 1")));
        assert_eq!(table.state(&model, 11_000), None, "the wait has passed");
        table.failed(&model, "e", 20_000);
        assert_eq!(table.state(&model, 20_000).and_then(|s| s.retry_at_ms), Some(22_000));
        table.failed(&model, "e", 30_000);
        assert_eq!(table.state(&model, 30_000).and_then(|s| s.retry_at_ms), Some(33_000), "capped at 3 s");
        table.failed(&model, "last", 40_000);
        let refused = table.state(&model, u64::MAX).expect("refused");
        assert!(refused.refused && refused.retry_at_ms.is_none());
        assert!(table.refusal(&model, 50_000).is_some_and(|r| r.contains("imported or pulled again")));
        table.clear(&model);
        assert_eq!(table.state(&model, 50_000), None);
        let other: ModelId = "other".parse().expect("id");
        assert_eq!(table.state(&other, 0), None, "models are counted apart");
    }

    #[test]
    fn huge_counts_and_times_do_not_overflow() {
        let mut table = LoadFailureTable::new(LoadRetry { refuse_after: u32::MAX, ..LoadRetry::default() });
        let model: ModelId = "m".parse().expect("id");
        for _ in 0..100 {
            table.failed(&model, "e", u64::MAX - 1);
        }
        let state = table.state(&model, u64::MAX - 1).expect("waiting");
        assert_eq!(state.retry_at_ms, Some(u64::MAX));
    }
}
