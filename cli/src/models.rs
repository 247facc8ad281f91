//! `rbee models ls|import|pull|rm`. Listing asks the hive directly over NATS
//! (`rbee.hive.<hive_id>.models`). Import, pull and remove go through the queen's HTTP API
//! (`POST /v1/models/import`, `POST /v1/models/pull` streamed as server-sent events,
//! `DELETE /v1/models/{id}?hive=`), since the bus has no subjects for them yet.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::bail;
use rbee_bus::rpc::BusError;
use rbee_bus::{subject, HiveId, ListRequest, ModelId, ModelList, SCHEMA_VERSION};
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::args::ModelsCommand;
use crate::client::{encode, Queen};
use crate::config::Config;
use crate::render;
use crate::sse::SseReader;

/// How long a hive may take to list its catalog.
const LIST_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the command.
pub async fn run(config: &Config, command: ModelsCommand) -> anyhow::Result<()> {
    match command {
        ModelsCommand::Ls { hive, json } => list(config, &HiveId::new(hive)?, json).await,
        ModelsCommand::Import { path, id, hive } => {
            let queen = Queen::new(config)?;
            // The hive reads the file: give it an absolute path when the file is here too.
            let path = std::fs::canonicalize(&path).unwrap_or(path);
            let mut body = Map::new();
            body.insert("hive".into(), json!(HiveId::new(hive)?));
            body.insert("path".into(), json!(path));
            if let Some(id) = id {
                body.insert("id".into(), json!(ModelId::new(id)?));
            }
            let reply = queen
                .json(Method::POST, "/v1/models/import", Some(&Value::Object(body)), Duration::from_secs(300))
                .await?;
            outln!("imported model {}", render::text(&reply, &["model_id", "id"]));
            Ok(())
        }
        ModelsCommand::Pull { url, id, sha256, hive } => {
            let queen = Queen::new(config)?;
            let mut body = Map::new();
            body.insert("hive".into(), json!(HiveId::new(hive)?));
            body.insert("url".into(), json!(url));
            if let Some(id) = id {
                body.insert("id".into(), json!(ModelId::new(id)?));
            }
            if let Some(sha256) = sha256 {
                body.insert("sha256".into(), json!(sha256));
            }
            pull(&queen, &Value::Object(body)).await
        }
        ModelsCommand::Rm { id, hive } => {
            let queen = Queen::new(config)?;
            let id = ModelId::new(id)?;
            let hive = HiveId::new(hive)?;
            queen
                .delete(&format!("/v1/models/{}?hive={}", encode(id.as_str()), encode(hive.as_str())))
                .await?;
            outln!("removed model {id} from hive {hive}");
            Ok(())
        }
    }
}

async fn list(config: &Config, hive: &HiveId, json: bool) -> anyhow::Result<()> {
    let bus = crate::nats::connect(config).await?;
    let request = ListRequest { v: SCHEMA_VERSION };
    let reply: ModelList = match bus.request(subject::hive_models(hive), &request, LIST_TIMEOUT).await {
        Ok(reply) => reply,
        Err(BusError::NoResponders { .. }) => {
            bail!("no hive `{hive}` answers on NATS (is it running? `rbee status` lists the hives)")
        }
        Err(BusError::Timeout { .. }) => {
            bail!("hive `{hive}` did not list its models within {} s", LIST_TIMEOUT.as_secs())
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        outln!("{}", serde_json::to_string(&reply)?);
        return Ok(());
    }
    if reply.models.is_empty() {
        outln!("hive {hive} has no models (add one with `rbee models import <path>`)");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = reply
        .models
        .iter()
        .map(|m| {
            vec![
                m.model_id.to_string(),
                render::bytes(m.size_bytes),
                m.architecture.clone(),
                params(m.parameter_count),
                m.quantization.clone(),
                m.context_length.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    outln!("{}", render::table("", &["ID", "SIZE", "ARCH", "PARAMS", "QUANT", "CONTEXT"], &rows).join("\n"));
    Ok(())
}

/// `134.5M`, `7.2B`
fn params(count: u64) -> String {
    match count {
        0 => "-".to_owned(),
        c if c >= 1_000_000_000 => format!("{:.1}B", c as f64 / 1e9),
        c if c >= 1_000_000 => format!("{:.1}M", c as f64 / 1e6),
        c => format!("{:.1}K", c as f64 / 1e3),
    }
}

/// Posts the pull and follows its events: `progress` `{downloaded,total}`, then `done` `{model_id}`
/// or `error`.
async fn pull(queen: &Queen, body: &Value) -> anyhow::Result<()> {
    let response = queen.send(Method::POST, "/v1/models/pull", Some(body), None).await?;
    let mut events = SseReader::new(response);
    let mut progress = Progress::new();
    while let Some(event) = events.next().await? {
        let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::String(event.data.clone()));
        match event.event.as_str() {
            "progress" => progress.show(render::number(&data, "downloaded"), render::number(&data, "total")),
            "done" => {
                progress.end();
                outln!("pulled model {}", render::text(&data, &["model_id", "id"]));
                return Ok(());
            }
            "error" => {
                progress.end();
                let message = data
                    .pointer("/error/message")
                    .or_else(|| data.get("message"))
                    .or_else(|| data.get("error"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| data.to_string());
                bail!("pull failed: {message}");
            }
            _ => {}
        }
    }
    progress.end();
    bail!("the queen closed the pull stream before it said done")
}

/// A download bar on stderr: redrawn in place on a terminal, a line per 10 % otherwise.
struct Progress {
    tty: bool,
    drawn: bool,
    last_decile: Option<u64>,
}

impl Progress {
    fn new() -> Self {
        Self { tty: std::io::stderr().is_terminal(), drawn: false, last_decile: None }
    }

    fn show(&mut self, downloaded: Option<f64>, total: Option<f64>) {
        let downloaded = downloaded.unwrap_or(0.0);
        let line = match total.filter(|t| *t > 0.0) {
            Some(total) => format!(
                "{} {:>5.1}%  {} / {}",
                render::bar(downloaded / total, 30),
                100.0 * downloaded / total,
                render::bytes(downloaded as u64),
                render::bytes(total as u64)
            ),
            None => format!("{} downloaded", render::bytes(downloaded as u64)),
        };
        if self.tty {
            use std::io::Write as _;
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[2K{line}");
            let _ = stderr.flush();
            self.drawn = true;
        } else {
            let decile = total.filter(|t| *t > 0.0).map(|t| (10.0 * downloaded / t) as u64);
            if decile != self.last_decile {
                self.last_decile = decile;
                errln!("{line}");
            }
        }
    }

    fn end(&mut self) {
        if self.drawn {
            errln!();
            self.drawn = false;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parameter_counts_read_well() {
        assert_eq!(super::params(134_515_008), "134.5M");
        assert_eq!(super::params(7_240_000_000), "7.2B");
    }
}
