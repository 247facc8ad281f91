//! `rbee workers ls|spawn|stop`: the queen's `/v1/workers` endpoints, and waiting until a new worker
//! is ready (shared with `rbee up`).

use std::time::{Duration, Instant};

use anyhow::bail;
use rbee_bus::{HiveId, ModelId, WorkerId};
use serde_json::{json, Map, Value};

use crate::args::WorkersCommand;
use crate::client::{encode, Queen};
use crate::config::Config;
use crate::render::{self, Style};

/// How long `spawn` waits for the worker to load its model.
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs the command.
pub async fn run(config: &Config, command: WorkersCommand) -> anyhow::Result<()> {
    let queen = Queen::new(config)?;
    match command {
        WorkersCommand::Ls { json } => {
            let mut workers = queen.get("/v1/workers").await?;
            if json {
                render::redact_secrets(&mut workers);
                outln!("{workers}");
                return Ok(());
            }
            let workers = render::list(&workers, "workers");
            if workers.is_empty() {
                outln!("no workers (start one with `rbee workers spawn <model>`)");
            } else {
                outln!("{}", crate::status::worker_table(workers).join("\n"));
            }
        }
        WorkersCommand::Spawn {
            model,
            replicas: Some(replicas),
            slots,
            ctx_per_slot,
            no_wait,
            keep_alive,
            ..
        } => {
            let model = ModelId::new(model)?;
            let mut body = json!({"model": model, "replicas": replicas});
            if let Some(keep_alive) = keep_alive {
                body["keep_alive"] = json!(keep_alive);
            }
            if let Some(slots) = slots {
                body["slots"] = json!(slots);
            }
            if let Some(ctx) = ctx_per_slot {
                body["ctx_per_slot"] = json!(ctx);
            }
            let reply = queen
                .json(reqwest::Method::POST, "/v1/workers", Some(&body), Duration::from_secs(60))
                .await?;
            for worker in render::list(&reply, "workers") {
                let worker_id = render::text(worker, &["worker_id"]);
                let hive = render::text(worker, &["hive_id"]);
                if worker.get("spawned").and_then(Value::as_bool) == Some(true) {
                    outln!("spawned worker {worker_id} on hive {hive}");
                } else {
                    outln!("hive {hive} already serves it (worker {worker_id})");
                }
            }
            if !no_wait {
                for worker in render::list(&reply, "workers") {
                    let worker_id = render::text(worker, &["worker_id"]);
                    let ready = wait_ready(&queen, &worker_id, READY_TIMEOUT, &mut || Ok(())).await?;
                    outln!("worker {worker_id} is {}", render::text(&ready, &["state"]));
                }
            }
        }
        WorkersCommand::Spawn {
            model,
            hive,
            device,
            slots,
            ctx_per_slot,
            no_wait,
            replicas: None,
            keep_alive,
        } => {
            let model = ModelId::new(model)?;
            let hive = hive.map(HiveId::new).transpose()?;
            let sizes = Sizes { slots, ctx_per_slot, keep_alive };
            let reply = spawn(&queen, &model, hive.as_ref(), device, sizes).await?;
            let worker_id = render::text(&reply, &["worker_id"]);
            outln!(
                "spawned worker {worker_id} on hive {} (pid {}, device {})",
                render::text(&reply, &["hive_id"]),
                render::text(&reply, &["pid"]),
                render::text(&reply, &["device"])
            );
            if !no_wait {
                let worker = wait_ready(&queen, &worker_id, READY_TIMEOUT, &mut || Ok(())).await?;
                outln!("worker {worker_id} is {}", render::text(&worker, &["state"]));
            }
        }
        WorkersCommand::Stop { worker_id } => {
            let worker_id = WorkerId::new(worker_id)?;
            queen.delete(&format!("/v1/workers/{}", encode(worker_id.as_str()))).await?;
            outln!("stopped worker {worker_id}");
        }
    }
    Ok(())
}

/// What a spawn may set beyond where it goes.
#[derive(Debug, Default)]
pub struct Sizes {
    /// Concurrent jobs.
    pub slots: Option<u32>,
    /// Context tokens per slot.
    pub ctx_per_slot: Option<u32>,
    /// How long it stays loaded when idle (absent: until stopped).
    pub keep_alive: Option<String>,
}

/// `POST /v1/workers`; the reply is `{"worker_id","hive_id","pid","device"}`.
pub async fn spawn(
    queen: &Queen,
    model: &ModelId,
    hive: Option<&HiveId>,
    device: Option<String>,
    sizes: Sizes,
) -> anyhow::Result<Value> {
    let Sizes { slots, ctx_per_slot, keep_alive } = sizes;
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    if let Some(hive) = hive {
        body.insert("hive".into(), json!(hive));
    }
    if let Some(device) = device {
        body.insert("device".into(), json!(device));
    }
    if let Some(slots) = slots {
        body.insert("slots".into(), json!(slots));
    }
    if let Some(ctx) = ctx_per_slot {
        body.insert("ctx_per_slot".into(), json!(ctx));
    }
    if let Some(keep_alive) = keep_alive {
        body.insert("keep_alive".into(), json!(keep_alive));
    }
    // Spawning waits for the process to start on the hive: allow more than a plain request.
    let reply = queen
        .json(reqwest::Method::POST, "/v1/workers", Some(&Value::Object(body)), Duration::from_secs(60))
        .await?;
    if reply.get("worker_id").and_then(Value::as_str).is_none() {
        bail!("the queen's reply to POST /v1/workers has no worker_id: {reply}");
    }
    Ok(reply)
}

/// Polls `GET /v1/workers` until the worker is idle or busy; fails when it is reported failed or
/// stopped, or after `timeout`. `check` runs every poll (for `rbee up`, to notice a dead child).
pub async fn wait_ready(
    queen: &Queen,
    worker_id: &str,
    timeout: Duration,
    check: &mut dyn FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Value> {
    let style = Style::stderr();
    let started = Instant::now();
    let mut last_state = String::new();
    loop {
        check()?;
        let workers = queen.get("/v1/workers").await?;
        let worker = render::list(&workers, "workers")
            .iter()
            .find(|w| w.get("worker_id").and_then(Value::as_str) == Some(worker_id))
            .cloned();
        if let Some(worker) = worker {
            let state = render::text(&worker, &["state"]);
            let liveness = render::text(&worker, &["liveness"]);
            match state.as_str() {
                "idle" | "busy" => return Ok(worker),
                "failed" | "stopped" | "error" => {
                    bail!("worker {worker_id} is {state} (see `rbee status` and the hive's log)")
                }
                _ if matches!(liveness.as_str(), "dead" | "offline" | "gone") => {
                    bail!("worker {worker_id} is {liveness} before becoming ready")
                }
                _ => {}
            }
            if state != last_state {
                errln!("{}", style.dim(format!("worker {worker_id}: {state}")));
                last_state = state;
            }
        }
        if started.elapsed() > timeout {
            bail!("worker {worker_id} was not ready after {} s (see `rbee status`)", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
