//! `rbee jobs ls|show|cancel|tail`: the queen's `/v1/jobs` endpoints. `tail` follows
//! `GET /v1/jobs/{id}/stream`: `token` events (a TokenChunk, its `text` printed) and `status` events (a
//! JobStatus), until a status whose state is `finished`.

use anyhow::bail;
use rbee_bus::JobId;
use reqwest::Method;
use serde_json::Value;

use crate::args::JobsCommand;
use crate::client::{encode, Queen};
use crate::config::Config;
use crate::render::{self, Style};
use crate::sse::SseReader;

/// Runs the command.
pub async fn run(config: &Config, command: JobsCommand) -> anyhow::Result<()> {
    let queen = Queen::new(config)?;
    match command {
        JobsCommand::Ls { limit, json } => {
            let mut jobs = queen.get(&format!("/v1/jobs?limit={limit}")).await?;
            if json {
                render::redact_secrets(&mut jobs);
                outln!("{jobs}");
                return Ok(());
            }
            let jobs = render::list(&jobs, "jobs");
            if jobs.is_empty() {
                outln!("no jobs yet");
            } else {
                outln!("{}", crate::status::job_table(jobs).join("\n"));
            }
        }
        JobsCommand::Show { job_id, json } => {
            let job_id = JobId::new(job_id)?;
            let mut job = queen.get(&format!("/v1/jobs/{}", encode(job_id.as_str()))).await?;
            render::redact_secrets(&mut job);
            if json {
                outln!("{job}");
            } else {
                show(&job)?;
            }
        }
        JobsCommand::Cancel { job_id } => {
            let job_id = JobId::new(job_id)?;
            queen.delete(&format!("/v1/jobs/{}", encode(job_id.as_str()))).await?;
            outln!("cancel requested for job {job_id}");
        }
        JobsCommand::Tail { job_id } => tail(&queen, &JobId::new(job_id)?).await?,
    }
    Ok(())
}

/// Every top-level field as `key: value`, nested values as compact JSON.
fn show(job: &Value) -> anyhow::Result<()> {
    let Some(fields) = job.as_object() else {
        outln!("{job}");
        return Ok(());
    };
    let style = Style::stdout();
    let width = fields.keys().map(String::len).max().unwrap_or(0);
    for (key, value) in fields {
        let shown = match value {
            Value::String(s) => s.clone(),
            Value::Null => "-".to_owned(),
            other => other.to_string(),
        };
        let shown = if key == "state" { style.state(&shown) } else { shown };
        outln!("{key:<width$}  {shown}");
    }
    Ok(())
}

async fn tail(queen: &Queen, job_id: &JobId) -> anyhow::Result<()> {
    let path = format!("/v1/jobs/{}/stream", encode(job_id.as_str()));
    let response = queen.send(Method::GET, &path, None, None).await?;
    let mut events = SseReader::new(response);
    let style = Style::stderr();
    let mut ends_with_newline = true;
    while let Some(event) = events.next().await? {
        let Ok(data) = serde_json::from_str::<Value>(&event.data) else { continue };
        match event.event.as_str() {
            "token" => {
                let text = render::text(&data, &["text"]);
                if text != "-" {
                    out!("{text}");
                    ends_with_newline = text.ends_with('\n');
                }
            }
            "status" => {
                let state = render::text(&data, &["state"]);
                if state == "finished" {
                    if !ends_with_newline {
                        outln!();
                    }
                    let reason = render::text(&data, &["finish_reason"]);
                    let usage = data.get("usage").cloned().unwrap_or(Value::Null);
                    errln!(
                        "{}",
                        style.dim(format!(
                            "-- finished: {reason}, {} prompt + {} generated tokens",
                            render::text(&usage, &["prompt_tokens"]),
                            render::text(&usage, &["completion_tokens"])
                        ))
                    );
                    if let Some(error) = data.get("error").and_then(Value::as_str) {
                        bail!("job {job_id} failed: {error}");
                    }
                    return Ok(());
                }
                let detail = render::text(&data, &["reason", "worker_id"]);
                errln!(
                    "{}",
                    style.cyan(format!(
                        "[{state}{}]",
                        if detail == "-" { String::new() } else { format!(": {detail}") }
                    ))
                );
            }
            "error" => {
                let message = data.pointer("/error/message").and_then(Value::as_str).unwrap_or_default();
                bail!("{}", if message.is_empty() { data.to_string() } else { message.to_owned() });
            }
            _ => {}
        }
    }
    if !ends_with_newline {
        outln!();
    }
    bail!("the stream of job {job_id} ended before the job finished")
}
