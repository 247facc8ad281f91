//! Placement: a pure function from a registry snapshot and a request to a decision. It decides from
//! its input alone (the queue's fill and the spawns in flight are part of the request) and writes
//! nothing: the caller reserves the slot of an assignment ([`crate::placement`]).
//!
//! With `spawn_only` (an explicit `POST /v1/workers`) only rule 4 applies, without the CPU exception.
//!
//! [`schedule`] decides, in this order:
//! 1. **Assign** to the least loaded assignable worker of the model (online, not fenced, idle or busy
//!    with a free slot counting reservations, hive not leaving, not excluded): lowest share of slots in
//!    use, then highest tokens per second, then worker id ([`least_loaded_first`]). Unless another
//!    assignable worker holds a longer prefix of the prompt (the request's `prefix` fingerprints
//!    against the ones each worker advertises, [`rbee_bus::prefix`]) and its share of slots in use is
//!    at most [`PREFIX_LOAD_SLACK`] above the least loaded one's: then the one holding the longest
//!    prefix (ties: least loaded first). A conversation's next turn goes where its history is, and one
//!    hot conversation cannot pile every job onto one worker while others idle.
//! 2. **Refuse** when nothing is assignable and the queue is full (`queue_len >= queue_capacity`): a
//!    spawn would make the job wait in that queue too.
//! 3. **Queue** while a worker of the model is loading (its heartbeat says `loading`, its hive lists
//!    it as `starting` before its first heartbeat, or the request counts a spawn in flight between the
//!    spawn request and the hive's next heartbeat): its slots come soon, and spawning another for the
//!    same demand would double the memory.
//! 4. **Spawn** on a hive that is online, not leaving, has the model in its catalog and a device whose
//!    free memory is at least the estimate ([`estimate_spawn_bytes`], or the request's
//!    `estimated_bytes`), and not in the request's `exclude_hives`. Accelerators (CUDA, Metal) before
//!    the CPU, then the hive measured fastest for the model (its workers' per-stream decode rate,
//!    `decode_tokens_per_second`) when both hives were measured and one is at least
//!    [`SPEED_MARGIN`] faster (an unmeasured hive is not taken as slow: otherwise the hive that ran
//!    the model first would win every spawn), then the device with the most free memory, then hive
//!    and device id. Busy workers of the model do not prevent a spawn: when every
//!    slot is taken and a hive has room, a new worker is the faster way to serve (this is "unless the
//!    hive has room"). Except on a CPU that already runs a worker of the model (online or suspect, not
//!    fenced, not excluded): that worker already batches its slots over all the cores, so a second
//!    process would only split the same cores and make both slower (on a 2-core machine an extra
//!    worker cut aggregate throughput several times over in `make bench`). The job waits for a slot
//!    there instead; an explicit `POST /v1/workers` still starts one.
//!    A hive whose listing says the model's workers keep failing to load there (`load_failures`: it
//!    waits before the next try, or refuses the model) is no place for a spawn.
//!    When no device has room: **Evict**, if stopping idle workers of other models on one device
//!    (offered by the request, least recently used first, [`crate::eviction`]) makes room there and
//!    no worker of the model is merely full: the job waits while they stop.
//! 5. **Unavailable** when nothing serves the model, nothing is loading it and every online hive
//!    with it refuses it after its workers failed to load: waiting would not help.
//! 6. **Queue** with a reason a person can act on, always naming the model: waiting for a slot on N
//!    workers; no hive is online; no hive has the model; every hive with it is offline or leaving; its
//!    workers failed to load (and when the hive tries again); or the model does not fit (needs N MiB,
//!    most free M MiB), with the hosts that together would hold it split ([`crate::split`]) when
//!    there are such.
//!
//! Cost: one pass over the snapshot's workers and one over the hives' devices, O(workers + devices);
//! excluded ids are looked up in a hash set once there are more than a few.

use std::collections::HashSet;

use rbee_bus::{
    DeviceKind, HiveId, HiveWorkerStatus, LoadFailures, ModelId, ModelSummary, WorkerId, WorkerState,
};
use serde::{Deserialize, Serialize};

use crate::membership::{least_loaded_first, Liveness, RegistrySnapshot, WorkerView};

/// Bytes in a mebibyte.
const MIB: u64 = 1024 * 1024;

/// How much busier (in share of slots in use) than the least loaded worker a worker holding a longer
/// prefix of the prompt may be and still be preferred: with 4 slots, up to 2 more in use.
pub const PREFIX_LOAD_SLACK: f64 = 0.5;

/// Above this many excluded workers, they are looked up in a hash set.
const EXCLUDE_LINEAR_MAX: usize = 8;

/// What to place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacementRequest {
    /// The model the job needs.
    pub model_id: ModelId,
    /// Workers not to use (they already failed or refused this job).
    pub exclude_workers: Vec<WorkerId>,
    /// Memory a new worker needs (model plus KV cache), in bytes; estimated from the catalog when
    /// absent.
    pub estimated_bytes: Option<u64>,
    /// Jobs waiting in the queue now.
    pub queue_len: usize,
    /// Jobs the queue may hold.
    pub queue_capacity: usize,
    /// Fingerprints of the prompt ([`rbee_bus::prefix::fingerprints`]); empty: placement by load only.
    #[serde(default)]
    pub prefix: Vec<u64>,
    /// Workers of the model the queen asked a hive for that have not heartbeated yet.
    #[serde(default)]
    pub spawns_in_flight: usize,
    /// Place a new worker whatever serves the model now (an explicit `POST /v1/workers`): only
    /// `Spawn` or `Queue` come back.
    #[serde(default)]
    pub spawn_only: bool,
    /// Hives not to spawn on (`replicas` of one `POST /v1/workers` go to distinct hives).
    #[serde(default)]
    pub exclude_hives: Vec<HiveId>,
    /// Idle workers that may be stopped to make room, least recently used first
    /// ([`crate::keep_alive`]); empty: no eviction.
    #[serde(default)]
    pub evictable: Vec<crate::keep_alive::Evictable>,
}

impl PlacementRequest {
    /// A job of `model_id` with nothing excluded, no queue and no prompt fingerprints.
    pub fn new(model_id: ModelId) -> Self {
        Self {
            model_id,
            exclude_workers: Vec::new(),
            estimated_bytes: None,
            queue_len: 0,
            queue_capacity: 1,
            prefix: Vec::new(),
            spawns_in_flight: 0,
            spawn_only: false,
            exclude_hives: Vec::new(),
            evictable: Vec::new(),
        }
    }
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Placement {
    /// Send the job to this worker.
    Assign {
        /// The worker.
        worker_id: WorkerId,
    },
    /// Ask this hive to spawn a worker of the model on this device, and queue the job meanwhile.
    Spawn {
        /// The hive.
        hive_id: HiveId,
        /// The device id (`cuda:0`, `cpu`).
        device: String,
    },
    /// Stop these idle workers on the hive to make room for a worker of the model, and queue the
    /// job meanwhile.
    Evict {
        /// The hive.
        hive_id: HiveId,
        /// The workers, least recently used first.
        workers: Vec<WorkerId>,
        /// Why the job waits, for a person.
        reason: String,
    },
    /// Keep the job queued.
    Queue {
        /// Why, for a person.
        reason: String,
    },
    /// Turn the job away: the queue is full.
    Refuse {
        /// Why, for a person.
        reason: String,
    },
    /// Fail the job: no hive will run the model (each refuses it after its workers failed to load).
    Unavailable {
        /// Why, for a person, with the last load error.
        reason: String,
    },
}

/// Memory a new worker of this model needs, by the one estimate ([`rbee_bus::sizing`]): the file
/// plus the KV cache of the default slots and context at a typical size per token. The queen has no
/// model's shape (the hive does, and checks the real fit, refusing with `model_does_not_fit`).
pub fn estimate_spawn_bytes(model: &ModelSummary) -> u64 {
    rbee_bus::sizing::worker_memory_bytes(
        model.size_bytes,
        rbee_bus::sizing::TYPICAL_KV_BYTES_PER_TOKEN,
        rbee_bus::sizing::DEFAULT_SLOTS,
        rbee_bus::sizing::DEFAULT_CTX_PER_SLOT,
    )
}

/// Decides where a job goes. Pure; see the module documentation for the rules.
pub fn schedule(snapshot: &RegistrySnapshot, request: &PlacementRequest) -> Placement {
    if request.spawn_only {
        return spawn_anywhere(snapshot, request);
    }
    let model_id = &request.model_id;
    let excluded = Excluded::new(&request.exclude_workers);
    let mut tally = WorkerTally::default();
    let mut best: Option<&WorkerView> = None;
    // Assignable workers holding some prefix of the prompt, with how much of it.
    let mut holders: Vec<(&WorkerView, usize)> = Vec::new();
    for worker in snapshot.workers.iter().filter(|worker| &worker.model_id == model_id) {
        if excluded.contains(&worker.worker_id) {
            tally.excluded += 1;
        } else if worker.assignable {
            if best.is_none_or(|current| least_loaded_first(worker, current).is_lt()) {
                best = Some(worker);
            }
            let held = rbee_bus::prefix::held_prefix(&request.prefix, &worker.prefixes);
            if held > 0 {
                holders.push((worker, held));
            }
        } else {
            tally.count_unassignable(worker);
        }
    }
    if let Some(least) = best {
        let limit = load_share(least) + PREFIX_LOAD_SLACK;
        let holder = holders
            .into_iter()
            .filter(|(worker, _)| load_share(worker) <= limit)
            .max_by(|(a, held_a), (b, held_b)| held_a.cmp(held_b).then_with(|| least_loaded_first(b, a)));
        let chosen = holder.map_or(least, |(worker, _)| worker);
        return Placement::Assign { worker_id: chosen.worker_id.clone() };
    }
    if request.queue_len >= request.queue_capacity {
        return Placement::Refuse {
            reason: format!(
                "queue is full ({} of {} jobs waiting) and no worker of model {model_id} has a free slot",
                request.queue_len, request.queue_capacity
            ),
        };
    }
    tally.loading += starting_on_hives(snapshot, model_id).max(request.spawns_in_flight);
    // CPUs that already run a worker of the model: no second one there.
    let occupied_cpus: HashSet<&HiveId> = snapshot
        .workers
        .iter()
        .filter(|w| &w.model_id == model_id && w.device == "cpu")
        .filter(|w| w.liveness != Liveness::Offline && !w.fenced && !excluded.contains(&w.worker_id))
        .filter(|w| !matches!(w.state, WorkerState::Draining | WorkerState::Stopped))
        .map(|w| &w.hive_id)
        .collect();
    if tally.loading > 0 {
        return Placement::Queue {
            reason: format!("waiting for {} loading model {model_id}", plural(tally.loading, "worker")),
        };
    }
    let hives = survey_hives(snapshot, request, &occupied_cpus);
    if let Some(spawn) = hives.best_spawn {
        return Placement::Spawn { hive_id: spawn.hive_id.clone(), device: spawn.device.to_owned() };
    }
    if tally.full == 0 {
        if let Some(eviction) = crate::eviction::plan(snapshot, request, &occupied_cpus) {
            let names: Vec<String> = eviction.workers.iter().map(ToString::to_string).collect();
            let reason = format!(
                "waiting for idle {} {} on hive {} to unload to make room for model {model_id}",
                if names.len() == 1 { "worker" } else { "workers" },
                names.join(", "),
                eviction.hive_id
            );
            return Placement::Evict { hive_id: eviction.hive_id, workers: eviction.workers, reason };
        }
    }
    let reason = queue_reason(model_id, &tally, &hives);
    if hives.all_refuse() && tally.full == 0 && tally.unusable().is_empty() {
        return Placement::Unavailable { reason };
    }
    Placement::Queue { reason }
}

/// Where a new worker of the model goes, ignoring the workers there are: the best device with room.
fn spawn_anywhere(snapshot: &RegistrySnapshot, request: &PlacementRequest) -> Placement {
    let hives = survey_hives(snapshot, request, &HashSet::new());
    let reason = || queue_reason(&request.model_id, &WorkerTally::default(), &hives);
    match hives.best_spawn {
        Some(spawn) => Placement::Spawn { hive_id: spawn.hive_id.clone(), device: spawn.device.to_owned() },
        None if hives.all_refuse() => Placement::Unavailable { reason: reason() },
        None => Placement::Queue { reason: reason() },
    }
}

/// Share of a worker's slots in use, reservations included (1 when it has none).
fn load_share(worker: &WorkerView) -> f64 {
    if worker.slots_total == 0 {
        return 1.0;
    }
    f64::from(worker.slots_used()) / f64::from(worker.slots_total)
}

/// The excluded workers, in a slice or a hash set by size.
enum Excluded<'a> {
    /// Few: a linear scan is cheapest.
    Few(&'a [WorkerId]),
    /// Many.
    Many(HashSet<&'a WorkerId>),
}

impl<'a> Excluded<'a> {
    fn new(ids: &'a [WorkerId]) -> Self {
        if ids.len() <= EXCLUDE_LINEAR_MAX {
            Excluded::Few(ids)
        } else {
            Excluded::Many(ids.iter().collect())
        }
    }

    fn contains(&self, id: &WorkerId) -> bool {
        match self {
            Excluded::Few(ids) => ids.contains(id),
            Excluded::Many(ids) => ids.contains(id),
        }
    }
}

/// Workers of the model that could not take the job, by why.
#[derive(Debug, Default)]
struct WorkerTally {
    /// Online, usable, every slot taken.
    full: usize,
    /// Loading the model (or starting, per their hive).
    loading: usize,
    /// Excluded by the request.
    excluded: usize,
    /// Fenced by the queen.
    fenced: usize,
    /// Suspect or offline.
    unresponsive: usize,
    /// Draining, or on a leaving hive.
    leaving: usize,
}

impl WorkerTally {
    fn count_unassignable(&mut self, worker: &WorkerView) {
        if worker.liveness != Liveness::Online {
            self.unresponsive += 1;
        } else if worker.fenced {
            self.fenced += 1;
        } else if worker.hive_leaving || worker.state == WorkerState::Draining {
            self.leaving += 1;
        } else if worker.state == WorkerState::Loading {
            self.loading += 1;
        } else if matches!(worker.state, WorkerState::Idle | WorkerState::Busy) {
            self.full += 1;
        }
    }

    /// "2 fenced, 1 excluded", or empty.
    fn unusable(&self) -> String {
        [
            (self.fenced, "fenced"),
            (self.excluded, "excluded"),
            (self.unresponsive, "not responding"),
            (self.leaving, "draining"),
        ]
        .iter()
        .filter(|(count, _)| *count > 0)
        .map(|(count, what)| format!("{count} {what}"))
        .collect::<Vec<_>>()
        .join(", ")
    }
}

/// Workers of the model that an online hive lists as `starting` and that have not heartbeated yet.
fn starting_on_hives(snapshot: &RegistrySnapshot, model_id: &ModelId) -> usize {
    let starting = snapshot
        .hives
        .iter()
        .filter(|hive| hive.liveness == Liveness::Online)
        .flat_map(|hive| &hive.reported_workers)
        .filter(|worker| &worker.model_id == model_id && worker.status == HiveWorkerStatus::Starting);
    let mut count = 0;
    for summary in starting {
        if !snapshot.workers.iter().any(|worker| worker.worker_id == summary.worker_id) {
            count += 1;
        }
    }
    count
}

/// How much faster a measured hive must be than another measured one for speed to decide a spawn
/// (below that, measurement noise would decide).
pub const SPEED_MARGIN: f64 = 1.2;

/// Where a spawn could go, and the figures for a refusal.
#[derive(Debug, Default)]
struct HiveSurvey<'a> {
    /// Hives online now.
    online: usize,
    /// Hives (any liveness) whose catalog has the model.
    with_model: usize,
    /// Online, non-leaving hives whose catalog has the model.
    eligible: usize,
    /// Eligible hives that hold off the model because its workers failed to load there.
    failing: Vec<(&'a HiveId, &'a LoadFailures)>,
    /// The smallest estimate among eligible hives, in bytes.
    needed_bytes: Option<u64>,
    /// The largest free device memory among eligible hives, in bytes.
    most_free_bytes: u64,
    /// CPUs with room that already run a worker of the model.
    occupied_cpus: usize,
    /// The best fitting device.
    best_spawn: Option<SpawnCandidate<'a>>,
    /// When no device has room: the hosts that together would ([`crate::split`]), for the reason.
    split: Option<crate::split::SplitPlan>,
}

/// A device a worker fits on.
#[derive(Debug, Clone, Copy)]
struct SpawnCandidate<'a> {
    hive_id: &'a HiveId,
    device: &'a str,
    accelerator: bool,
    /// Measured per-stream decode tokens per second of the model on the hive.
    speed: Option<f64>,
    free_bytes: u64,
}

impl SpawnCandidate<'_> {
    /// True when `self` is a better place than `other`.
    fn better_than(&self, other: &SpawnCandidate<'_>) -> bool {
        self.accelerator
            .cmp(&other.accelerator)
            .then(speed_order(self.speed, other.speed))
            .then(self.free_bytes.cmp(&other.free_bytes))
            .then(other.hive_id.cmp(self.hive_id))
            .then(other.device.cmp(self.device))
            .is_gt()
    }
}

/// Speed decides only between two measured hives at least [`SPEED_MARGIN`] apart.
fn speed_order(a: Option<f64>, b: Option<f64>) -> std::cmp::Ordering {
    match (a, b) {
        (Some(a), Some(b)) if a.max(b) >= SPEED_MARGIN * a.min(b) => a.total_cmp(&b),
        _ => std::cmp::Ordering::Equal,
    }
}

impl HiveSurvey<'_> {
    /// True when there are eligible hives and each refuses the model.
    fn all_refuse(&self) -> bool {
        self.eligible > 0
            && self.failing.len() == self.eligible
            && self.failing.iter().all(|(_, failures)| failures.refused)
    }
}

fn survey_hives<'a>(
    snapshot: &'a RegistrySnapshot,
    request: &PlacementRequest,
    occupied_cpus: &HashSet<&HiveId>,
) -> HiveSurvey<'a> {
    let mut survey = HiveSurvey::default();
    for hive in &snapshot.hives {
        let online = hive.liveness == Liveness::Online;
        survey.online += usize::from(online);
        let Some(model) = hive.model(&request.model_id) else {
            continue;
        };
        survey.with_model += 1;
        if !hive.schedulable || request.exclude_hives.contains(&hive.hive_id) {
            continue;
        }
        let speed = hive.decode_tokens_per_second.get(&request.model_id).copied();
        survey.eligible += 1;
        if let Some(failures) = &model.load_failures {
            survey.failing.push((&hive.hive_id, failures));
            continue;
        }
        let needed = request.estimated_bytes.unwrap_or_else(|| estimate_spawn_bytes(model));
        survey.needed_bytes = Some(survey.needed_bytes.map_or(needed, |n| n.min(needed)));
        for device in &hive.devices {
            survey.most_free_bytes = survey.most_free_bytes.max(device.free_bytes);
            if device.free_bytes < needed {
                continue;
            }
            if device.kind == DeviceKind::Cpu && occupied_cpus.contains(&hive.hive_id) {
                survey.occupied_cpus += 1;
                continue;
            }
            let candidate = SpawnCandidate {
                hive_id: &hive.hive_id,
                device: &device.id,
                accelerator: device.kind != DeviceKind::Cpu,
                speed,
                free_bytes: device.free_bytes,
            };
            if survey.best_spawn.is_none_or(|best| candidate.better_than(&best)) {
                survey.best_spawn = Some(candidate);
            }
        }
    }
    if survey.best_spawn.is_none() && survey.occupied_cpus == 0 {
        if let Some(needed) = survey.needed_bytes {
            let offers = crate::split::offers(snapshot, &request.model_id);
            if let crate::split::SplitOutcome::Split(plan) = crate::split::plan(needed, &offers) {
                survey.split = Some(plan);
            }
        }
    }
    survey
}

/// Why the job waits, naming the model.
fn queue_reason(model_id: &ModelId, tally: &WorkerTally, hives: &HiveSurvey<'_>) -> String {
    let hive_reason = if hives.online == 0 {
        format!("no hive is online to run model {model_id}")
    } else if hives.with_model == 0 {
        format!("no hive has model {model_id}")
    } else if hives.eligible == 0 {
        format!(
            "no online hive has model {model_id} ({} with it offline or leaving)",
            plural(hives.with_model, "hive")
        )
    } else if let Some((hive_id, failures)) =
        hives.failing.first().filter(|_| hives.failing.len() == hives.eligible)
    {
        let retry = match failures.retry_at_ms {
            Some(_) => "it waits before it tries again",
            None => "it refuses the model until it is imported or pulled again",
        };
        format!(
            "workers of model {model_id} failed to load on hive {hive_id} ({} in a row; {retry}): {}",
            plural(failures.failures as usize, "failure"),
            failures.last_error
        )
    } else if hives.occupied_cpus > 0 {
        format!("every cpu with room for model {model_id} already runs a worker of it")
    } else {
        let split = hives.split.as_ref().map_or_else(String::new, |plan| {
            let shares: Vec<String> =
                plan.shares.iter().map(|s| format!("{} {:.0}%", s.hive_id, s.fraction * 100.0)).collect();
            format!(
                "; split across {} hosts ({}) it would fit, which rbee does not run yet",
                plan.shares.len(),
                shares.join(", ")
            )
        });
        format!(
            "model {model_id} does not fit the free memory of any hive (needs {} MiB, most free {} MiB){split}",
            hives.needed_bytes.unwrap_or(0).div_ceil(MIB),
            hives.most_free_bytes / MIB
        )
    };
    if tally.full > 0 {
        return format!("waiting for a slot on {} of model {model_id}", plural(tally.full, "worker"));
    }
    let unusable = tally.unusable();
    if unusable.is_empty() {
        return hive_reason;
    }
    format!("no usable worker of model {model_id} ({unusable}); {hive_reason}")
}

/// "1 worker", "2 workers".
fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}
