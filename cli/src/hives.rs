//! `rbee hives ls|drain|undrain`: the queen's `/v1/hives` endpoints. Draining waits (unless told not
//! to) until the hive has no worker left, showing how many are still finishing their jobs.

use std::time::{Duration, Instant};

use anyhow::bail;
use rbee_bus::HiveId;
use serde_json::Value;

use crate::args::HivesCommand;
use crate::client::{encode, Queen};
use crate::config::Config;
use crate::render::{self, Style};

/// How long after the drain deadline (which the queen's reply states) workers get to stop.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Runs the command.
pub async fn run(config: &Config, command: HivesCommand) -> anyhow::Result<()> {
    let queen = Queen::new(config)?;
    match command {
        HivesCommand::Ls { json } => {
            let mut hives = queen.get("/v1/hives").await?;
            if json {
                render::redact_secrets(&mut hives);
                outln!("{hives}");
            } else {
                crate::status::print_hives(&Style::stdout(), render::list(&hives, "hives"))?;
            }
        }
        HivesCommand::Drain { hive_id, deadline_s, no_wait } => {
            let hive_id = HiveId::new(hive_id)?;
            let mut path = format!("/v1/hives/{}/drain", encode(hive_id.as_str()));
            if let Some(deadline) = deadline_s {
                path.push_str(&format!("?deadline_s={deadline}"));
            }
            let reply = queen.post(&path, &Value::Null).await?;
            outln!(
                "draining hive {hive_id}: {} worker(s), running jobs get {} s",
                render::text(&reply, &["workers"]),
                render::text(&reply, &["deadline_s"])
            );
            if !no_wait {
                let deadline = render::number(&reply, "deadline_s").unwrap_or(0.0) as u64;
                let wait = Duration::from_secs(deadline) + STOP_GRACE;
                wait_drained(&queen, &hive_id, wait).await?;
                outln!("hive {hive_id} is drained: no worker left (`rbee hives undrain {hive_id}` takes it back)");
            }
        }
        HivesCommand::Undrain { hive_id } => {
            let hive_id = HiveId::new(hive_id)?;
            let reply =
                queen.post(&format!("/v1/hives/{}/undrain", encode(hive_id.as_str())), &Value::Null).await?;
            if reply.get("was_draining").and_then(Value::as_bool) == Some(false) {
                outln!("hive {hive_id} was not draining");
            } else {
                outln!("hive {hive_id} takes work again");
            }
        }
    }
    Ok(())
}

/// Polls `GET /v1/workers` until no worker of the hive is left.
async fn wait_drained(queen: &Queen, hive_id: &HiveId, timeout: Duration) -> anyhow::Result<()> {
    let style = Style::stderr();
    let started = Instant::now();
    let mut last = usize::MAX;
    loop {
        let workers = queen.get("/v1/workers").await?;
        let left = render::list(&workers, "workers")
            .iter()
            .filter(|w| w.get("hive_id").and_then(Value::as_str) == Some(hive_id.as_str()))
            .filter(|w| !matches!(render::text(w, &["state"]).as_str(), "stopped" | "failed"))
            .count();
        if left == 0 {
            return Ok(());
        }
        if left != last {
            errln!("{}", style.dim(format!("hive {hive_id}: {left} worker(s) left")));
            last = left;
        }
        if started.elapsed() > timeout {
            bail!(
                "hive {hive_id} still has {left} worker(s) after {} s (see `rbee status`)",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
