//! Ids the property tests build their registries from (`mod common;` in each test binary).

use rbee_bus::{HiveId, ModelId, WorkerId};

/// `hive-<n>`.
pub fn hive_id(n: usize) -> HiveId {
    HiveId::new(format!("hive-{n}")).expect("valid id")
}

/// `wrk-<n>`.
pub fn worker_id(n: usize) -> WorkerId {
    WorkerId::new(format!("wrk-{n}")).expect("valid id")
}

/// `model-<n>`.
pub fn model_id(n: usize) -> ModelId {
    ModelId::new(format!("model-{n}")).expect("valid id")
}
