//! Requests about worker processes: `spawn` (checks the model, the fit and the binary, then starts one
//! through the [`crate::supervisor`]), `stop`, and the listing of the workers running here.

use std::time::Duration;

use rbee_bus::sizing::KvShape;
use rbee_bus::{
    DeviceInfo, DeviceKind, ErrorCode, SpawnReply, SpawnRequest, StopReply, StopRequest, WireError, WorkerId,
    WorkerKind, WorkerList, DEFAULT_CTX_PER_SLOT, DEFAULT_SLOTS, SCHEMA_VERSION,
};

use crate::catalog::gguf::read_gguf_info;
use crate::catalog::{ModelEntry, Platform, WorkerType};
use crate::running::Reservation;
use crate::supervisor::LaunchPlan;
use crate::Hive;

/// Default grace period of a stop.
pub const DEFAULT_STOP_DEADLINE: Duration = Duration::from_secs(10);

/// Bytes of memory a worker of `model` with `slots * ctx_per_slot` context needs
/// ([`rbee_bus::worker_memory_bytes`] with the GGUF's own shape, [`KvShape::LARGE`] where the header
/// does not say). A header that cannot be read, or claims an absurd shape, refuses the spawn: its
/// numbers are untrusted and would size memory.
pub fn estimate_worker_bytes(model: &ModelEntry, slots: u32, ctx_per_slot: u32) -> Result<u64, WireError> {
    let refuse = |why: String| {
        WireError::new(ErrorCode::ModelDoesNotFit, format!("model {} cannot be sized: {why}", model.id))
    };
    let info = read_gguf_info(&model.path).map_err(|e| refuse(e.to_string()))?;
    let shape = KvShape::checked(
        info.block_count.unwrap_or(KvShape::LARGE.layers),
        info.embedding_length.unwrap_or(KvShape::LARGE.embedding),
    )
    .map_err(refuse)?;
    Ok(rbee_bus::worker_memory_bytes(model.size, shape.bytes_per_token(), slots, ctx_per_slot))
}

/// Starts a worker, or says why not.
pub async fn spawn(hive: &Hive, req: SpawnRequest) -> Result<SpawnReply, WireError> {
    hive.fence.admit(req.fence, "spawn")?;
    if hive.shutting_down() {
        return Err(WireError::new(
            ErrorCode::ShuttingDown,
            format!("hive {} is shutting down", hive.config.hive_id),
        ));
    }
    let model = hive.models.get(&req.model_id).map_err(|_| {
        let have: Vec<String> = hive.models.list().into_iter().map(|m| m.id.to_string()).collect();
        WireError::new(
            ErrorCode::UnknownModel,
            format!(
                "hive {} has no model {} (it has: {})",
                hive.config.hive_id,
                req.model_id,
                have.join(", ")
            ),
        )
    })?;
    if let Some(refusal) = hive.workers.load_refusal(&model.id) {
        return Err(WireError::new(ErrorCode::ModelFailing, refusal));
    }
    let slots = req.slots.unwrap_or(DEFAULT_SLOTS);
    if !(1..=64).contains(&slots) {
        return Err(WireError::invalid_field("slots", format!("invalid slots: {slots} is outside [1, 64]")));
    }
    let ctx = req.ctx_per_slot.unwrap_or(DEFAULT_CTX_PER_SLOT);
    if !(64..=131_072).contains(&ctx) {
        return Err(WireError::invalid_field(
            "ctx_per_slot",
            format!("invalid ctx_per_slot: {ctx} is outside [64, 131072]"),
        ));
    }
    if let Some(threads) = req.threads {
        if !(1..=1024).contains(&threads) {
            return Err(WireError::invalid_field(
                "threads",
                format!("invalid threads: {threads} is outside [1, 1024]"),
            ));
        }
    }
    let needed = estimate_worker_bytes(&model, slots, ctx)?;
    let devices = hive.inventory_snapshot().devices;
    let device = pick_device(&devices, req.device.as_deref(), needed)?;
    let worker_type = match (req.worker_type, device.kind) {
        (Some(WorkerKind::CpuLlm), _) | (None, DeviceKind::Cpu) => WorkerType::CpuLlm,
        (Some(WorkerKind::CudaLlm), _) | (None, DeviceKind::Cuda) => WorkerType::CudaLlm,
        (Some(WorkerKind::MetalLlm), _) | (None, DeviceKind::Metal) => WorkerType::MetalLlm,
    };
    let binary = hive
        .workers_catalog
        .find_by_type_and_platform(worker_type, Platform::current())
        .ok_or_else(|| {
            WireError::new(
                ErrorCode::MissingWorkerBinary,
                format!(
                    "hive {} has no {} worker binary for {}",
                    hive.config.hive_id,
                    worker_type,
                    Platform::current()
                ),
            )
        })?;
    // Held until the process is registered: a concurrent spawn cannot take the same id or identity.
    let (reservation, identity) = worker_identity(hive, req.worker_id)?;
    let worker_id = reservation.id().clone();
    let plan = LaunchPlan {
        worker_id: worker_id.clone(),
        model_id: model.id.clone(),
        model_path: model.path.clone(),
        device: device.id.clone(),
        slots,
        ctx_per_slot: ctx,
        threads: req.threads,
        binary: binary.path.clone(),
        identity,
        memory_bytes: needed,
    };
    let pid = hive.supervisor.spawn(plan).await.map_err(|e| {
        WireError::new(ErrorCode::Internal, format!("cannot start {}: {e}", binary.path.display()))
    })?;
    drop(reservation);
    let _ = hive.models.touch(&model.id);
    Ok(SpawnReply { v: SCHEMA_VERSION, worker_id, pid, device: device.id.clone() })
}

/// The id of the new worker, reserved, and, in secure mode, its NATS identity: the one asked for (which
/// must be in the pool in secure mode and free), else a free pool identity, else a fresh id.
fn worker_identity(
    hive: &Hive,
    wanted: Option<WorkerId>,
) -> Result<(Reservation, Option<rbee_bus::security::PoolIdentity>), WireError> {
    let pool = &hive.config.worker_pool;
    let taken =
        |id: &WorkerId| WireError::invalid_field("worker_id", format!("worker {id} is already running"));
    if pool.is_empty() {
        let id = wanted.unwrap_or_else(WorkerId::generate);
        return hive.workers.reserve(&id).map(|r| (r, None)).ok_or_else(|| taken(&id));
    }
    match &wanted {
        Some(id) => {
            let found = pool.iter().find(|p| &p.worker_id == id).ok_or_else(|| {
                WireError::invalid_field(
                    "worker_id",
                    format!(
                        "worker id {id} is not in the worker pool of hive {} (secure mode)",
                        hive.config.hive_id
                    ),
                )
            })?;
            let reservation = hive.workers.reserve(id).ok_or_else(|| taken(id))?;
            Ok((reservation, Some(found.clone())))
        }
        None => pool
            .iter()
            .find_map(|p| hive.workers.reserve(&p.worker_id).map(|r| (r, Some(p.clone()))))
            .ok_or_else(|| {
                WireError::new(
                    ErrorCode::Conflict,
                    format!(
                        "all {} worker identities of hive {} are in use; stop a worker first",
                        pool.len(),
                        hive.config.hive_id
                    ),
                )
            }),
    }
}

/// The device to run on: the one asked for, or the fitting GPU with the most free memory, else the CPU.
fn pick_device<'a>(
    devices: &'a [DeviceInfo],
    wanted: Option<&str>,
    needed: u64,
) -> Result<&'a DeviceInfo, WireError> {
    let mib = |b: u64| b / (1024 * 1024);
    let device = match wanted {
        Some(id) => devices.iter().find(|d| d.id == id).ok_or_else(|| {
            let have: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
            WireError::new(ErrorCode::UnknownDevice, format!("no device {id} (devices: {})", have.join(", ")))
        })?,
        None => devices
            .iter()
            .filter(|d| d.kind != DeviceKind::Cpu && d.free_bytes >= needed)
            .max_by_key(|d| d.free_bytes)
            .or_else(|| devices.iter().find(|d| d.kind == DeviceKind::Cpu))
            .ok_or_else(|| WireError::new(ErrorCode::UnknownDevice, "the hive has no devices"))?,
    };
    if device.free_bytes < needed {
        return Err(WireError::new(
            ErrorCode::ModelDoesNotFit,
            format!(
                "model needs about {} MiB (weights plus kv cache) but {} has {} MiB free",
                mib(needed),
                device.id,
                mib(device.free_bytes)
            ),
        ));
    }
    Ok(device)
}

/// Stops a worker.
pub async fn stop(hive: &Hive, req: StopRequest) -> Result<StopReply, WireError> {
    hive.fence.admit(req.fence, "stop")?;
    let deadline = req.deadline_ms.map(Duration::from_millis).unwrap_or(DEFAULT_STOP_DEADLINE);
    hive.supervisor.stop(&req.worker_id, deadline).await.ok_or_else(|| {
        WireError::new(
            ErrorCode::NotFound,
            format!("no running worker {} on hive {}", req.worker_id, hive.config.hive_id),
        )
    })
}

/// The worker listing.
pub fn list(hive: &Hive) -> WorkerList {
    WorkerList { v: SCHEMA_VERSION, workers: hive.workers.list().iter().map(|w| w.summary()).collect() }
}
