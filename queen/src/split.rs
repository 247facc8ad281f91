//! Planning one model across several hosts, for a model no single device has the memory for (the
//! planning half of issue 20: the queen reports the plan in `GET /v1/models` and in a queued job's
//! reason; it does not start RPC servers or split workers yet). Pure: hosts and the memory needed
//! in, a plan out.
//!
//! Rules ([`plan`]):
//! - **No split** when one device has room ([`SplitOutcome::Single`]): a split only costs speed.
//! - Each host offers one device, the one with the most free memory (an accelerator before the
//!   CPU at equal room). A host whose best device has less than [`MIN_SHARE_BYTES`] free is no use
//!   (its share would hold less than a layer of a model worth splitting).
//! - **The worker's host** (the main host) must have the model in its catalog: the others only
//!   receive tensors over the wire. It is the host with the model and the most free memory.
//! - **Fewest hosts first**: the other hosts join by free memory, largest first, until the pooled
//!   memory covers the need; at most [`MAX_SPLIT_HOSTS`] hosts in all. Taking the largest main
//!   host and then the largest others gives the fewest hosts any valid choice could (a set that
//!   does not hold the largest main host gets no smaller by swapping it in).
//! - **Shares proportional to free memory**: host `i` holds `free_i / pooled` of the model's
//!   layers, so every host is filled to the same fraction of what it offers.

use rbee_bus::{DeviceKind, HiveId, ModelId};
use serde::Serialize;

use crate::membership::{Liveness, RegistrySnapshot};

/// Most hosts one split may span (each adds a network hop to every token).
pub const MAX_SPLIT_HOSTS: usize = 4;

/// A host offering less free memory than this takes no share.
pub const MIN_SHARE_BYTES: u64 = 64 * 1024 * 1024;

/// What one host offers a split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostOffer {
    /// The host's hive.
    pub hive_id: HiveId,
    /// Its device with the most free memory.
    pub device: String,
    /// True for a CUDA or Metal device.
    pub accelerator: bool,
    /// Free bytes on that device.
    pub free_bytes: u64,
    /// True when the hive's catalog has the model (it can run the worker).
    pub has_model: bool,
}

/// One host's part of a split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitShare {
    /// The host's hive.
    pub hive_id: HiveId,
    /// The device it offers.
    pub device: String,
    /// Bytes of the model it holds.
    pub bytes: u64,
    /// Its share of the layers, 0 to 1; the shares of a plan sum to 1.
    pub fraction: f64,
}

/// Hosts and shares for one model; the first share is the main host's (it runs the worker).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitPlan {
    /// The memory the model needs, in bytes.
    pub needed_bytes: u64,
    /// The shares, the main host first.
    pub shares: Vec<SplitShare>,
}

/// What [`plan`] found.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SplitOutcome {
    /// One device has room: no split.
    Single {
        /// The host.
        hive_id: HiveId,
        /// Its device.
        device: String,
    },
    /// Several hosts together have room.
    Split(SplitPlan),
    /// Not even [`MAX_SPLIT_HOSTS`] hosts together have room, or no host has the model.
    Impossible {
        /// The memory the model needs, in bytes.
        needed_bytes: u64,
        /// The most a valid set of hosts pools, in bytes.
        most_pooled_bytes: u64,
        /// Why, for a person.
        reason: String,
    },
}

/// Where a model needing `needed` bytes goes: one device with room and the model
/// ([`SplitOutcome::Single`]), otherwise a split by the rules of the module, or why there is none.
/// `devices` lists every device of every host; a split takes each host's best one.
pub fn plan(needed: u64, devices: &[HostOffer]) -> SplitOutcome {
    if let Some(single) =
        devices.iter().filter(|d| d.has_model && d.free_bytes >= needed).max_by(|a, b| better(a, b))
    {
        return SplitOutcome::Single { hive_id: single.hive_id.clone(), device: single.device.clone() };
    }
    let mut hosts = best_per_host(devices);
    hosts.retain(|h| h.free_bytes >= MIN_SHARE_BYTES);
    hosts.sort_by(|a, b| better(b, a));
    let Some(main_at) = hosts.iter().position(|h| h.has_model) else {
        return SplitOutcome::Impossible {
            needed_bytes: needed,
            most_pooled_bytes: 0,
            reason: "no host with enough free memory to take a share has the model".to_owned(),
        };
    };
    let main = hosts.remove(main_at);
    let mut chosen = vec![main];
    let mut pooled = chosen[0].free_bytes;
    for host in hosts {
        if pooled >= needed || chosen.len() == MAX_SPLIT_HOSTS {
            break;
        }
        pooled = pooled.saturating_add(host.free_bytes);
        chosen.push(host);
    }
    if pooled < needed {
        return SplitOutcome::Impossible {
            needed_bytes: needed,
            most_pooled_bytes: pooled,
            reason: format!(
                "{} hosts together offer {} MiB, under the {} MiB the model needs",
                chosen.len(),
                pooled / MIB,
                needed.div_ceil(MIB)
            ),
        };
    }
    SplitOutcome::Split(SplitPlan { needed_bytes: needed, shares: proportional(needed, pooled, &chosen) })
}

/// The devices of the online, schedulable hives, for `model_id`.
pub fn offers(snapshot: &RegistrySnapshot, model_id: &ModelId) -> Vec<HostOffer> {
    snapshot
        .hives
        .iter()
        .filter(|h| h.liveness == Liveness::Online && h.schedulable)
        .flat_map(|h| {
            let has_model = h.model(model_id).is_some_and(|m| m.load_failures.is_none());
            h.devices.iter().map(move |d| HostOffer {
                hive_id: h.hive_id.clone(),
                device: d.id.clone(),
                accelerator: d.kind != DeviceKind::Cpu,
                free_bytes: d.free_bytes,
                has_model,
            })
        })
        .collect()
}

const MIB: u64 = 1024 * 1024;

/// Orders offers: more free memory, then an accelerator, then the lower hive and device id.
fn better(a: &HostOffer, b: &HostOffer) -> std::cmp::Ordering {
    a.free_bytes
        .cmp(&b.free_bytes)
        .then(a.accelerator.cmp(&b.accelerator))
        .then(b.hive_id.cmp(&a.hive_id))
        .then(b.device.cmp(&a.device))
}

fn best_per_host(devices: &[HostOffer]) -> Vec<HostOffer> {
    let mut best: std::collections::BTreeMap<&HiveId, &HostOffer> = Default::default();
    for d in devices {
        best.entry(&d.hive_id)
            .and_modify(|b| {
                if better(d, b).is_gt() {
                    *b = d;
                }
            })
            .or_insert(d);
    }
    best.into_values().cloned().collect()
}

/// Shares of `needed` bytes in proportion to each host's free memory; the bytes sum to `needed`
/// (the main host takes the rounding).
fn proportional(needed: u64, pooled: u64, chosen: &[HostOffer]) -> Vec<SplitShare> {
    let mut shares: Vec<SplitShare> = chosen
        .iter()
        .map(|h| SplitShare {
            hive_id: h.hive_id.clone(),
            device: h.device.clone(),
            bytes: ((u128::from(needed) * u128::from(h.free_bytes)) / u128::from(pooled)) as u64,
            fraction: h.free_bytes as f64 / pooled as f64,
        })
        .collect();
    let assigned: u64 = shares.iter().map(|s| s.bytes).sum();
    shares[0].bytes += needed - assigned;
    shares
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(hive: &str, free_mib: u64, has_model: bool) -> HostOffer {
        HostOffer {
            hive_id: hive.parse().expect("hive id"),
            device: "cpu".to_owned(),
            accelerator: false,
            free_bytes: free_mib * MIB,
            has_model,
        }
    }

    #[test]
    fn a_model_that_fits_one_device_is_not_split() {
        let outcome = plan(100 * MIB, &[offer("hive-a", 80, true), offer("hive-b", 120, true)]);
        assert_eq!(
            outcome,
            SplitOutcome::Single { hive_id: "hive-b".parse().expect("hive id"), device: "cpu".into() }
        );
    }

    #[test]
    fn the_main_host_has_the_model_and_shares_follow_free_memory() {
        let hosts = [offer("hive-a", 300, false), offer("hive-b", 100, true), offer("hive-c", 200, false)];
        let SplitOutcome::Split(plan) = plan(350 * MIB, &hosts) else { panic!("no split") };
        let ids: Vec<&str> = plan.shares.iter().map(|s| s.hive_id.as_str()).collect();
        assert_eq!(ids, ["hive-b", "hive-a"], "the model's host first, then the largest other");
        assert!((plan.shares[1].fraction - 0.75).abs() < 1e-9, "{plan:?}");
        assert_eq!(plan.shares.iter().map(|s| s.bytes).sum::<u64>(), 350 * MIB);
    }

    #[test]
    fn too_little_memory_or_no_host_with_the_model_says_why() {
        let SplitOutcome::Impossible { reason, .. } = plan(500 * MIB, &[offer("hive-a", 300, false)]) else {
            panic!("planned without the model")
        };
        assert!(reason.contains("has the model"), "{reason}");
        let hosts: Vec<_> = (0..6).map(|i| offer(&format!("hive-{i}"), 100, true)).collect();
        let SplitOutcome::Impossible { reason, most_pooled_bytes, .. } = plan(1000 * MIB, &hosts) else {
            panic!("split over more than the limit")
        };
        assert_eq!(most_pooled_bytes, MAX_SPLIT_HOSTS as u64 * 100 * MIB);
        assert!(reason.contains("under the 1000 MiB"), "{reason}");
    }
}
