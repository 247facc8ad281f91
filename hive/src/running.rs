//! The worker processes this hive spawned and their state ([`RunningWorkers`]): id, model, device,
//! pid, status and start time. Safe under concurrent use; a poisoned lock is recovered, never a panic.
//!
//! Ended workers (stopped or failed) stay listed for a while so their exit can be read, but only the
//! last [`MAX_ENDED`], with a failure's text cut to [`MAX_ERROR_LEN`] bytes: the list goes into every
//! heartbeat, which must stay under the payload limit however many workers have come and gone.
//!
//! A worker that goes from `starting` to `failed` counts a load failure of its model, and one that
//! becomes ready clears them ([`crate::load_failures`], read through [`RunningWorkers::load_failures`]).
//!
//! A spawn first [`RunningWorkers::reserve`]s its worker id (in secure mode: its pool identity) and
//! holds the [`Reservation`] until the process is registered, so two spawns at once never pick the
//! same id: the check and the reservation happen under one lock.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rbee_bus::{HiveWorkerStatus, HiveWorkerSummary, LoadFailures, ModelId, WorkerId};

use crate::load_failures::{LoadFailureTable, LoadRetry};

/// How many ended workers stay listed (the oldest go first).
pub const MAX_ENDED: usize = 16;
/// The longest failure text kept for a worker, in bytes.
pub const MAX_ERROR_LEN: usize = 1024;

/// A worker's status, as its hive sees it.
pub type WorkerStatus = HiveWorkerStatus;

/// One spawned worker.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerEntry {
    /// Its id.
    pub id: WorkerId,
    /// The model it serves.
    pub model_id: ModelId,
    /// The device it runs on (`cpu`, `cuda:0`).
    pub device: String,
    /// Its process id.
    pub pid: u32,
    /// Its status.
    pub status: WorkerStatus,
    /// When it was started, ms since the Unix epoch.
    pub started_at_ms: u64,
    /// The memory it was estimated to need at spawn, in bytes.
    pub memory_bytes: u64,
}

impl WorkerEntry {
    /// A new entry in `Starting`.
    pub fn new(id: WorkerId, model_id: ModelId, device: String, pid: u32) -> Self {
        Self {
            id,
            model_id,
            device,
            pid,
            status: WorkerStatus::Starting,
            started_at_ms: rbee_bus::now_ms(),
            memory_bytes: 0,
        }
    }

    /// Ready for jobs.
    pub fn is_ready(&self) -> bool {
        matches!(self.status, WorkerStatus::Ready)
    }

    /// Neither stopped nor failed.
    pub fn is_running(&self) -> bool {
        !matches!(self.status, WorkerStatus::Stopped | WorkerStatus::Failed { .. })
    }

    /// As listed on the bus.
    pub fn summary(&self) -> HiveWorkerSummary {
        HiveWorkerSummary {
            worker_id: self.id.clone(),
            model_id: self.model_id.clone(),
            device: self.device.clone(),
            pid: self.pid,
            status: self.status.clone(),
            started_at_ms: self.started_at_ms,
        }
    }
}

/// Why an operation on the running workers failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RunningWorkersError {
    /// The id is taken.
    #[error("worker {0} already exists")]
    AlreadyExists(WorkerId),
    /// No such worker.
    #[error("worker {0} not found")]
    NotFound(WorkerId),
}

/// The spawned workers, by id; clones share them.
#[derive(Debug, Clone, Default)]
pub struct RunningWorkers {
    workers: Arc<RwLock<HashMap<WorkerId, WorkerEntry>>>,
    /// Ids a spawn in progress has claimed; only changed with `workers` write-locked.
    reserved: Arc<Mutex<HashSet<WorkerId>>>,
    /// Models whose workers failed before they were ready (its own lock, taken after `workers` when
    /// both are held).
    load_failures: Arc<Mutex<LoadFailureTable>>,
}

/// A worker id claimed by a spawn in progress; released when dropped (by then the worker is
/// registered, or the spawn failed).
#[derive(Debug)]
pub struct Reservation {
    reserved: Arc<Mutex<HashSet<WorkerId>>>,
    id: WorkerId,
}

impl Reservation {
    /// The id claimed.
    pub fn id(&self) -> &WorkerId {
        &self.id
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.reserved.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.id);
    }
}

impl RunningWorkers {
    /// None yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// None yet, with this retry policy for models that fail to load.
    pub fn with_load_retry(policy: LoadRetry) -> Self {
        Self { load_failures: Arc::new(Mutex::new(LoadFailureTable::new(policy))), ..Self::default() }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, LoadFailureTable> {
        self.load_failures.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What holds off a spawn of `model_id` now (see [`LoadFailureTable::state`]).
    pub fn load_failures(&self, model_id: &ModelId) -> Option<LoadFailures> {
        self.failures().state(model_id, rbee_bus::now_ms())
    }

    /// Why a spawn of `model_id` is refused now, for a person; `None` when it may go ahead.
    pub fn load_refusal(&self, model_id: &ModelId) -> Option<String> {
        self.failures().refusal(model_id, rbee_bus::now_ms())
    }

    /// The model's file was imported or pulled again: its failures are forgotten.
    pub fn forget_load_failures(&self, model_id: &ModelId) {
        self.failures().clear(model_id);
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<WorkerId, WorkerEntry>> {
        self.workers.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<WorkerId, WorkerEntry>> {
        self.workers.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Claims `id` for a spawn: `None` when a running worker has it or another spawn claimed it.
    pub fn reserve(&self, id: &WorkerId) -> Option<Reservation> {
        let workers = self.write();
        let mut reserved = self.reserved.lock().unwrap_or_else(PoisonError::into_inner);
        if workers.get(id).is_some_and(WorkerEntry::is_running) || !reserved.insert(id.clone()) {
            return None;
        }
        drop(reserved);
        drop(workers);
        Some(Reservation { reserved: self.reserved.clone(), id: id.clone() })
    }

    /// Adds a worker; its id must be new.
    pub fn register(&self, worker: WorkerEntry) -> Result<(), RunningWorkersError> {
        let mut workers = self.write();
        if workers.contains_key(&worker.id) {
            return Err(RunningWorkersError::AlreadyExists(worker.id));
        }
        workers.insert(worker.id.clone(), worker);
        Ok(())
    }

    /// One worker.
    pub fn get(&self, id: &WorkerId) -> Result<WorkerEntry, RunningWorkersError> {
        self.read().get(id).cloned().ok_or_else(|| RunningWorkersError::NotFound(id.clone()))
    }

    /// Removes a worker and returns it.
    pub fn remove(&self, id: &WorkerId) -> Result<WorkerEntry, RunningWorkersError> {
        self.write().remove(id).ok_or_else(|| RunningWorkersError::NotFound(id.clone()))
    }

    /// Every worker, oldest first.
    pub fn list(&self) -> Vec<WorkerEntry> {
        let mut all: Vec<_> = self.read().values().cloned().collect();
        all.sort_by(|a, b| a.started_at_ms.cmp(&b.started_at_ms).then_with(|| a.id.cmp(&b.id)));
        all
    }

    /// Workers whose status passes `filter`.
    pub fn list_by_status(&self, filter: impl Fn(&WorkerStatus) -> bool) -> Vec<WorkerEntry> {
        self.list().into_iter().filter(|w| filter(&w.status)).collect()
    }

    /// Sets a worker's status.
    pub fn update_status(&self, id: &WorkerId, status: WorkerStatus) -> Result<(), RunningWorkersError> {
        let mut workers = self.write();
        let worker = workers.get_mut(id).ok_or_else(|| RunningWorkersError::NotFound(id.clone()))?;
        match (&worker.status, &status) {
            (WorkerStatus::Starting, WorkerStatus::Failed { error }) => {
                self.failures().failed(&worker.model_id, error, rbee_bus::now_ms())
            }
            (_, WorkerStatus::Ready | WorkerStatus::Busy) => self.failures().clear(&worker.model_id),
            _ => {}
        }
        worker.status = status;
        if let WorkerStatus::Failed { error } = &mut worker.status {
            truncate_at_char(error, MAX_ERROR_LEN);
        }
        if !worker.is_running() {
            prune_ended(&mut workers);
        }
        Ok(())
    }

    /// True when the id is registered.
    pub fn contains(&self, id: &WorkerId) -> bool {
        self.read().contains_key(id)
    }

    /// Number of workers.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Cuts `text` to at most `max` bytes, at a char boundary.
fn truncate_at_char(text: &mut String, max: usize) {
    if text.len() > max {
        let cut = (0..=max).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.truncate(cut);
    }
}

/// Forgets the oldest ended workers beyond [`MAX_ENDED`].
fn prune_ended(workers: &mut HashMap<WorkerId, WorkerEntry>) {
    let mut ended: Vec<(u64, WorkerId)> =
        workers.values().filter(|w| !w.is_running()).map(|w| (w.started_at_ms, w.id.clone())).collect();
    if ended.len() <= MAX_ENDED {
        return;
    }
    ended.sort();
    for (_, id) in ended.iter().take(ended.len() - MAX_ENDED) {
        workers.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> WorkerEntry {
        WorkerEntry::new(id.parse().expect("id"), "m".parse().expect("id"), "cpu".into(), 1)
    }

    #[test]
    fn crud_and_status() {
        let reg = RunningWorkers::new();
        reg.register(entry("w1")).expect("register");
        assert_eq!(
            reg.register(entry("w1")),
            Err(RunningWorkersError::AlreadyExists("w1".parse().expect("id")))
        );
        reg.register(entry("w2")).expect("register");
        let w1: WorkerId = "w1".parse().expect("id");
        reg.update_status(&w1, WorkerStatus::Ready).expect("update");
        assert!(reg.get(&w1).expect("get").is_ready());
        assert_eq!(reg.list_by_status(|s| matches!(s, WorkerStatus::Ready)).len(), 1);
        reg.update_status(&w1, WorkerStatus::Failed { error: "signal: 9".into() }).expect("update");
        assert!(!reg.get(&w1).expect("get").is_running());
        assert_eq!(reg.remove(&w1).map(|w| w.id.to_string()), Ok("w1".into()));
        assert!(reg.get(&w1).is_err());
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn ended_workers_are_a_bounded_history() {
        let reg = RunningWorkers::new();
        reg.register(entry("live")).expect("register");
        for i in 0..100 {
            let mut e = entry(&format!("w{i}"));
            e.started_at_ms = i;
            reg.register(e).expect("register");
            let error = format!("exit 1; stderr: {}", "é".repeat(10_000));
            reg.update_status(&format!("w{i}").parse().expect("id"), WorkerStatus::Failed { error })
                .expect("update");
        }
        assert_eq!(reg.len(), MAX_ENDED + 1, "the running one and the last {MAX_ENDED} ended");
        assert!(reg.contains(&"live".parse().expect("id")) && reg.contains(&"w99".parse().expect("id")));
        assert!(!reg.contains(&"w0".parse().expect("id")));
        for w in reg.list() {
            if let WorkerStatus::Failed { error } = w.status {
                assert!(error.len() <= MAX_ERROR_LEN, "{} bytes", error.len());
            }
        }
        // 100 failures later the listing is still small (it goes into every heartbeat).
        let json =
            serde_json::to_vec(&reg.list().iter().map(|w| w.summary()).collect::<Vec<_>>()).expect("json");
        assert!(json.len() < 32 * 1024, "{} bytes", json.len());
    }

    #[test]
    fn an_id_is_reserved_once_and_not_while_running() {
        let reg = RunningWorkers::new();
        let w1: WorkerId = "w1".parse().expect("id");
        let first = reg.reserve(&w1).expect("free");
        assert!(reg.reserve(&w1).is_none(), "reserved twice");
        drop(first);
        assert!(reg.reserve(&w1).is_some(), "released on drop");
        reg.register(entry("w1")).expect("register");
        assert!(reg.reserve(&w1).is_none(), "running");
        reg.update_status(&w1, WorkerStatus::Stopped).expect("update");
        assert!(reg.reserve(&w1).is_some(), "stopped: free again");
    }

    #[test]
    fn survives_a_panic_while_locked_and_concurrent_use() {
        let reg = RunningWorkers::new();
        let poisoner = reg.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.workers.write();
            panic!("poison the lock");
        })
        .join();
        reg.register(entry("after-poison")).expect("works after a poisoned lock");
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let reg = reg.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let id = format!("w-{t}-{i}");
                        reg.register(entry(&id)).expect("register");
                        let _ = reg.list();
                        reg.update_status(&id.parse().expect("id"), WorkerStatus::Busy).expect("update");
                    }
                })
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().expect("thread"));
        assert_eq!(reg.len(), 801);
    }
}
