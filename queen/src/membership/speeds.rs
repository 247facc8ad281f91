//! How fast each hive runs each model, measured: the per-stream decode rate its workers reported
//! while busy (`tokens_per_second / slots_busy` from their heartbeats), smoothed. It outlives the
//! workers, so the scheduler can place a model's next worker on the host that ran it fastest.

use std::collections::BTreeMap;

use rbee_bus::{HiveId, ModelId, WorkerHeartbeat};

/// Weight of a new measurement in the smoothed rate.
const SMOOTHING: f64 = 0.3;

/// Measured per-stream decode tokens per second by hive and model.
#[derive(Debug, Clone, Default)]
pub struct Speeds {
    rates: BTreeMap<HiveId, BTreeMap<ModelId, f64>>,
}

impl Speeds {
    /// Folds in a worker heartbeat: a busy worker's rate per busy slot; idle ones say nothing.
    pub fn observe(&mut self, heartbeat: &WorkerHeartbeat) {
        let rate = heartbeat.tokens_per_second / f64::from(heartbeat.slots_busy.max(1));
        if heartbeat.slots_busy == 0 || !rate.is_finite() || rate <= 0.0 {
            return;
        }
        let models = self.rates.entry(heartbeat.hive_id.clone()).or_default();
        models
            .entry(heartbeat.model_id.clone())
            .and_modify(|smoothed| *smoothed += SMOOTHING * (rate - *smoothed))
            .or_insert(rate);
    }

    /// The rates measured on one hive, by model.
    pub fn of_hive(&self, hive_id: &HiveId) -> BTreeMap<ModelId, f64> {
        self.rates.get(hive_id).cloned().unwrap_or_default()
    }

    /// Forgets a hive (it was removed from the registry).
    pub fn forget(&mut self, hive_id: &HiveId) {
        self.rates.remove(hive_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(hive: &str, tps: f64, busy: u32) -> WorkerHeartbeat {
        WorkerHeartbeat {
            v: 1,
            meta: rbee_bus::EventMeta { publisher: "w".into(), epoch: "e".into(), seq: 1, sent_at_ms: 0 },
            worker_id: rbee_bus::WorkerId::new("w").expect("id"),
            hive_id: HiveId::new(hive).expect("id"),
            model_id: ModelId::new("m").expect("id"),
            state: rbee_bus::WorkerState::Busy,
            backend: rbee_bus::Backend::Cpu,
            device: "cpu".into(),
            slots_total: 4,
            slots_busy: busy,
            ctx_per_slot: 2048,
            tokens_per_second: tps,
            memory_bytes: 0,
            pid: 1,
            interval_ms: 1000,
            prefix_fingerprints: Vec::new(),
            jobs_accepted: None,
        }
    }

    #[test]
    fn busy_heartbeats_measure_per_stream_speed_and_idle_ones_do_not() {
        let mut speeds = Speeds::default();
        speeds.observe(&beat("a", 80.0, 2));
        speeds.observe(&beat("a", 0.0, 0));
        speeds.observe(&beat("b", 30.0, 0));
        let a = speeds.of_hive(&HiveId::new("a").expect("id"));
        assert_eq!(a.values().copied().collect::<Vec<_>>(), vec![40.0]);
        assert!(speeds.of_hive(&HiveId::new("b").expect("id")).is_empty());
        speeds.observe(&beat("a", 50.0, 1));
        let smoothed = speeds.of_hive(&HiveId::new("a").expect("id")).values().copied().sum::<f64>();
        assert!((smoothed - 43.0).abs() < 1e-9, "{smoothed}");
        speeds.forget(&HiveId::new("a").expect("id"));
        assert!(speeds.of_hive(&HiveId::new("a").expect("id")).is_empty());
    }
}
