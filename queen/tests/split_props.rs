//! The split planner against a brute force over every set of hosts: it splits only when no single
//! device has room, its hosts are as few as any valid set, the main host has the model, every share
//! fits its host and the shares add up; and it finds no split exactly when no valid set exists.

use proptest::prelude::*;
use rbee_queen::split::{plan, HostOffer, SplitOutcome, MAX_SPLIT_HOSTS, MIN_SHARE_BYTES};

const MIB: u64 = 1 << 20;

fn hosts() -> impl Strategy<Value = Vec<HostOffer>> {
    // Up to 7 hosts of 1 or 2 devices each, some with the model.
    prop::collection::vec(
        (1usize..=2, any::<bool>(), prop::collection::vec((0u64..4096, any::<bool>()), 2)),
        0..=7,
    )
    .prop_map(|hosts| {
        hosts
            .into_iter()
            .enumerate()
            .flat_map(|(i, (devices, has_model, sizes))| {
                sizes.into_iter().take(devices).enumerate().map(move |(d, (free_mib, accelerator))| {
                    HostOffer {
                        hive_id: format!("hive-{i}").parse().expect("hive id"),
                        device: format!("dev{d}"),
                        accelerator,
                        free_bytes: free_mib * MIB,
                        has_model,
                    }
                })
            })
            .collect()
    })
}

/// Each host's best free memory and whether it has the model.
fn per_host(devices: &[HostOffer]) -> Vec<(String, u64, bool)> {
    let mut out: Vec<(String, u64, bool)> = Vec::new();
    for d in devices {
        match out.iter_mut().find(|(id, ..)| id == d.hive_id.as_str()) {
            Some(entry) => entry.1 = entry.1.max(d.free_bytes),
            None => out.push((d.hive_id.to_string(), d.free_bytes, d.has_model)),
        }
    }
    out
}

/// The fewest hosts of a valid set (2 to the limit, one with the model, each with at least the
/// minimum share) that pool `needed`, by trying every set.
fn fewest_hosts(needed: u64, devices: &[HostOffer]) -> Option<usize> {
    let hosts: Vec<_> = per_host(devices).into_iter().filter(|h| h.1 >= MIN_SHARE_BYTES).collect();
    let mut best: Option<usize> = None;
    for mask in 1u32..(1 << hosts.len()) {
        let set: Vec<_> =
            hosts.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, h)| h).collect();
        if set.len() > MAX_SPLIT_HOSTS || !set.iter().any(|h| h.2) {
            continue;
        }
        if set.iter().map(|h| h.1).sum::<u64>() >= needed {
            best = Some(best.map_or(set.len(), |b| b.min(set.len())));
        }
    }
    best
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn plans_match_a_brute_force(devices in hosts(), needed_mib in 1u64..12_000) {
        let needed = needed_mib * MIB;
        let single = devices.iter().any(|d| d.has_model && d.free_bytes >= needed);
        match plan(needed, &devices) {
            SplitOutcome::Single { hive_id, device } => {
                prop_assert!(single);
                let d = devices.iter().find(|d| d.hive_id == hive_id && d.device == device).expect("a listed device");
                prop_assert!(d.has_model && d.free_bytes >= needed);
            }
            SplitOutcome::Split(split) => {
                prop_assert!(!single, "split a model one device has room for");
                let hosts = per_host(&devices);
                let free_of = |id: &str| hosts.iter().find(|h| h.0 == id).map(|h| (h.1, h.2)).expect("a listed host");
                prop_assert!(free_of(split.shares[0].hive_id.as_str()).1, "the main host lacks the model");
                prop_assert!(split.shares.len() >= 2 && split.shares.len() <= MAX_SPLIT_HOSTS);
                prop_assert_eq!(Some(split.shares.len()), fewest_hosts(needed, &devices), "not the fewest hosts");
                let mut ids: Vec<_> = split.shares.iter().map(|s| s.hive_id.as_str()).collect();
                ids.sort_unstable();
                ids.dedup();
                prop_assert_eq!(ids.len(), split.shares.len(), "a host twice");
                prop_assert_eq!(split.shares.iter().map(|s| s.bytes).sum::<u64>(), needed);
                prop_assert!((split.shares.iter().map(|s| s.fraction).sum::<f64>() - 1.0).abs() < 1e-9);
                for share in &split.shares {
                    let (free, _) = free_of(share.hive_id.as_str());
                    prop_assert!(share.bytes <= free, "a share over its host's free memory: {share:?}");
                    prop_assert!(free >= MIN_SHARE_BYTES);
                }
            }
            SplitOutcome::Impossible { needed_bytes, most_pooled_bytes, reason } => {
                prop_assert!(!single);
                prop_assert_eq!(needed_bytes, needed);
                prop_assert!(most_pooled_bytes < needed);
                prop_assert!(!reason.is_empty());
                prop_assert_eq!(fewest_hosts(needed, &devices), None, "a valid split exists");
            }
        }
    }
}
