//! The processes `rbee up` started, how it waits on them, and how it stops them: workers through the
//! queen, then hive, queen and nats, each under a deadline.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::bail;
use rbee_daemon::signal::{self, Signal};
use serde_json::Value;

use super::procs::{Child, KillList};
use super::TAIL_LINES;
use crate::client::Queen;
use crate::render::{self, Style};

/// The running cluster: what was started, and what to stop.
pub(super) struct Cluster {
    /// nats-server, unless an existing one is used.
    pub nats: Option<Child>,
    /// rbee-queen.
    pub queen: Option<Child>,
    /// rbee-hive.
    pub hive: Option<Child>,
    /// The queen's API, once started.
    pub api: Option<Queen>,
    /// Pids of workers spawned through the queen on this machine, killed if still alive at the end.
    pub worker_pids: Vec<i32>,
    /// Everything to SIGKILL on a second ctrl-c.
    pub kill_list: KillList,
    /// The hive this command started.
    pub hive_id: String,
}

/// Fails when a child has exited, naming it and showing its log tail.
pub(super) fn cluster_check(
    nats: &mut Option<Child>,
    queen: &mut Option<Child>,
    hive: &mut Option<Child>,
) -> anyhow::Result<()> {
    for child in [nats, queen, hive].into_iter().flatten() {
        if let Some(status) = child.exited() {
            bail!(
                "{} exited unexpectedly ({status}); last lines of {}:\n{}",
                child.name,
                child.log.display(),
                child.log_tail(TAIL_LINES)
            );
        }
    }
    Ok(())
}

impl Cluster {
    pub(super) fn check(&mut self) -> anyhow::Result<()> {
        cluster_check(&mut self.nats, &mut self.queen, &mut self.hive)
    }

    /// Stops everything in order, each step under its deadline.
    pub(super) async fn stop(&mut self) {
        let style = Style::stderr();
        if let (Some(api), Some(queen)) = (&self.api, &mut self.queen) {
            if queen.exited().is_none() {
                let stopped = stop_workers(api, &self.hive_id).await;
                if stopped > 0 {
                    errln!("{}", style.dim(format!("asked the queen to stop {stopped} worker(s)")));
                }
            }
        }
        for (child, grace) in [(&mut self.hive, 3), (&mut self.queen, 2), (&mut self.nats, 2)] {
            if let Some(child) = child {
                let outcome = child.stop(Duration::from_secs(grace)).await;
                errln!("{}", style.dim(format!("{}: {outcome}", child.name)));
            }
        }
        for pid in &self.worker_pids {
            if signal::alive(*pid) {
                signal::send(*pid, Signal::Kill);
                errln!("{}", style.dim(format!("worker pid {pid} was still running: killed")));
            }
        }
    }
}

/// `DELETE /v1/workers/{id}` for every worker of this command's hive, best effort, within about 2 s.
async fn stop_workers(api: &Queen, hive_id: &str) -> usize {
    let short = Duration::from_millis(800);
    let Ok(workers) = api.json(reqwest::Method::GET, "/v1/workers", None, short).await else { return 0 };
    let ids: Vec<String> = render::list(&workers, "workers")
        .iter()
        .filter(|w| w.get("hive_id").and_then(Value::as_str).is_none_or(|h| h == hive_id))
        .filter_map(|w| w.get("worker_id").and_then(Value::as_str).map(str::to_owned))
        .collect();
    let deletes = ids.iter().map(|id| {
        let path = format!("/v1/workers/{}", crate::client::encode(id));
        async move { api.json(reqwest::Method::DELETE, &path, None, Duration::from_millis(1500)).await }
    });
    let _ = tokio::time::timeout(Duration::from_secs(2), futures::future::join_all(deletes)).await;
    ids.len()
}

/// Polls every child while waiting.
pub(super) async fn supervise(cluster: &mut Cluster) -> anyhow::Result<()> {
    loop {
        cluster.check()?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub(super) async fn wait_for_port(
    cluster: &mut Cluster,
    ip: std::net::IpAddr,
    port: u16,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect((ip, port)).is_err() {
        cluster.check()?;
        if Instant::now() > deadline {
            bail!("nats-server did not accept connections on port {port} within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

pub(super) async fn wait_for_health(cluster: &mut Cluster, api: &Queen) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        cluster.check()?;
        if api.send(reqwest::Method::GET, "/health", None, Some(Duration::from_secs(1))).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the queen did not answer GET /health within 30 s; see {}", log_of(&cluster.queen));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the hive is in `GET /v1/hives` with `model` among its models.
pub(super) async fn wait_for_hive(cluster: &mut Cluster, api: &Queen, model: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let hive_id = cluster.hive_id.clone();
    loop {
        cluster.check()?;
        if let Ok(hives) = api.json(reqwest::Method::GET, "/v1/hives", None, Duration::from_secs(2)).await {
            let hive = render::list(&hives, "hives")
                .iter()
                .find(|h| h.get("hive_id").and_then(Value::as_str) == Some(hive_id.as_str()))
                .cloned();
            if let Some(hive) = hive {
                if has_model(&hive, model) {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            bail!(
                "hive {hive_id} did not register with model {model} within 90 s; see {}",
                log_of(&cluster.hive)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// True when the hive lists `model` (as an id string or an object with `model_id`), or lists no
/// models field at all (nothing to wait for then).
pub(super) fn has_model(hive: &Value, model: &str) -> bool {
    let Some(models) = hive.get("models").and_then(Value::as_array) else { return true };
    models.iter().any(|m| {
        m.as_str() == Some(model)
            || m.get("model_id").and_then(Value::as_str) == Some(model)
            || m.get("id").and_then(Value::as_str) == Some(model)
    })
}

fn log_of(child: &Option<Child>) -> String {
    child.as_ref().map(|c| c.log.display().to_string()).unwrap_or_else(|| "its log".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hive_models_in_either_shape() {
        let hive = serde_json::json!({"hive_id":"local","models":[{"model_id":"m1"},"m2"]});
        assert!(has_model(&hive, "m1") && has_model(&hive, "m2") && !has_model(&hive, "m3"));
        assert!(has_model(&serde_json::json!({"hive_id":"local"}), "m"));
    }
}
