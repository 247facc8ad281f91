//! The processes a run starts (queen, hive, stand-alone workers, the relay), each logging to a file and
//! stopped on drop (SIGTERM, then SIGKILL), and a small HTTP client for the queen's API.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::stats;

/// A child process with its log file.
pub struct Proc {
    /// For messages.
    pub name: String,
    /// Its log.
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    /// Starts `program args`, stdout and stderr to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> anyhow::Result<Self> {
        let file = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let child = Command::new(program)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        Ok(Self { name: name.to_owned(), log: log.to_path_buf(), child })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails, with the log's tail, when the process has exited.
    pub fn check(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.tail(15)
            );
        }
        Ok(())
    }

    /// The last `n` lines of its log.
    pub fn tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGTERM, then SIGKILL after `grace`; waits for it.
    pub fn stop(&mut self, grace: Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        stats::signal(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL now, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// The queen's HTTP API.
#[derive(Clone)]
pub struct Api {
    /// `http://127.0.0.1:<port>`
    pub base: String,
    /// A client (pooled connections).
    pub http: reqwest::Client,
}

impl Api {
    /// A client for the queen on `port`.
    pub fn new(port: u16) -> Self {
        let http = reqwest::Client::builder().no_proxy().tcp_nodelay(true).build().unwrap_or_default();
        Self { base: format!("http://127.0.0.1:{port}"), http }
    }

    /// A client that opens a connection per request, for a server that closes idle keep-alive
    /// connections under a pooled client (llama-server did, mid-run: "connection closed before message
    /// completed").
    pub fn unpooled(port: u16) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(0)
            .build()
            .unwrap_or_default();
        Self { base: format!("http://127.0.0.1:{port}"), http }
    }

    /// `GET path` as JSON.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = resp.status();
        let body: Value = resp.json().await.with_context(|| format!("GET {path}: body"))?;
        if !status.is_success() {
            bail!("GET {path}: {status} {body}");
        }
        Ok(body)
    }

    /// `GET path` as text.
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        Ok(resp.text().await?)
    }

    /// `POST path` with a JSON body; the reply as JSON, an error unless 2xx.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = resp.status();
        let body: Value = resp.json().await.with_context(|| format!("POST {path}: body"))?;
        if !status.is_success() {
            bail!("POST {path}: {status} {body}");
        }
        Ok(body)
    }

    /// `DELETE path`; an error unless 2xx.
    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        let resp = self
            .http
            .delete(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("DELETE {path}"))?;
        if !resp.status().is_success() {
            bail!("DELETE {path}: {}", resp.status());
        }
        Ok(())
    }

    /// The workers the queen lists.
    pub async fn workers(&self) -> anyhow::Result<Vec<Value>> {
        let body = self.get("/v1/workers").await?;
        Ok(body.get("workers").and_then(Value::as_array).cloned().unwrap_or_default())
    }

    /// A counter or gauge from `/metrics` (the sum of every series of that name).
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let text = self.get_text("/metrics").await?;
        Ok(metric_sum(&text, name, None))
    }

    /// Waits until `/health` answers ok.
    pub async fn wait_healthy(&self, proc: &mut Proc, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            proc.check()?;
            if let Ok(resp) = self.http.get(format!("{}/health", self.base)).send().await {
                if resp.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("the queen did not become healthy within {within:?}; log:\n{}", proc.tail(15));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Sum of the series of metric `name` in Prometheus text, optionally only those whose labels contain
/// `label`.
pub fn metric_sum(text: &str, name: &str, label: Option<&str>) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && label.is_none_or(|want| labels.contains(want)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// A free loopback port.
pub fn free_port() -> u16 {
    rbee_testkit::nats::free_port()
}

/// Arguments of a queen on `port` connected to `nats`.
pub fn queen_args(nats: &str, port: u16) -> Vec<String> {
    vec!["--http-addr".into(), format!("127.0.0.1:{port}"), "--nats-url".into(), nats.into()]
}

#[cfg(test)]
mod tests {
    use super::metric_sum;

    #[test]
    fn sums_metric_series() {
        let text = "# HELP x\nrbee_heartbeats_total 42\nrbee_registry_entries{kind=\"worker\",liveness=\"online\"} 3\n\
                    rbee_registry_entries{kind=\"hive\",liveness=\"online\"} 1\n";
        assert_eq!(metric_sum(text, "rbee_heartbeats_total", None), 42.0);
        assert_eq!(metric_sum(text, "rbee_registry_entries", None), 4.0);
        assert_eq!(metric_sum(text, "rbee_registry_entries", Some("kind=\"worker\"")), 3.0);
    }
}
