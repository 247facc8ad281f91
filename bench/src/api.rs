//! A small HTTP client for the queen's API (and for llama-server's OpenAI API, the same calls).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::Value;

use crate::cluster::Proc;

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

    /// `method path` with an optional JSON body, sent.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> anyhow::Result<reqwest::Response> {
        let mut request = self.http.request(method.clone(), format!("{}{path}", self.base)).timeout(timeout);
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await.with_context(|| format!("{method} {path}"))
    }

    /// `method path`; the reply as JSON, an error unless 2xx.
    async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let resp = self.send(method.clone(), path, body, timeout).await?;
        let status = resp.status();
        let body: Value = resp.json().await.with_context(|| format!("{method} {path}: body"))?;
        if !status.is_success() {
            bail!("{method} {path}: {status} {body}");
        }
        Ok(body)
    }

    /// `GET path` as JSON.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.json(Method::GET, path, None, Duration::from_secs(30)).await
    }

    /// `GET path` as text.
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        Ok(self.send(Method::GET, path, None, Duration::from_secs(30)).await?.text().await?)
    }

    /// `POST path` with a JSON body; the reply as JSON, an error unless 2xx.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.json(Method::POST, path, Some(body), Duration::from_secs(60)).await
    }

    /// `POST /v1/chat/completions` with a streaming request; the response, its status unchecked (the
    /// SSE reader checks it).
    pub async fn stream_chat(&self, body: &Value, timeout: Duration) -> anyhow::Result<reqwest::Response> {
        self.send(Method::POST, "/v1/chat/completions", Some(body), timeout).await
    }

    /// `DELETE path`; an error unless 2xx.
    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        let resp = self.send(Method::DELETE, path, None, Duration::from_secs(30)).await?;
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
