//! `rbee watch`: subscribe to a subject (default `rbee.>`) and print one line per message: the time
//! (UTC), the subject colored by kind, and a summary decoded with the bus types chosen by subject
//! pattern. A payload that does not decode is shown as truncated JSON, or as its size when it is not JSON.

use anyhow::Context;
use futures::StreamExt;
use rbee_bus::subject::{self, matches};
use rbee_bus::{
    HiveHeartbeat, JobAssignment, JobCancel, JobState, JobStatus, LifecycleEvent, QueenHello, SpawnRequest,
    StopRequest, SubmitJob, TokenChunk, WorkerHeartbeat, WorkerLifecycle,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::args::WatchArgs;
use crate::config::Config;
use crate::render::{self, Style};

/// Longest raw JSON shown for a message that does not decode.
const RAW_LIMIT: usize = 200;

/// What a message is, for its color.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Hive and worker heartbeats (dim).
    Heartbeat,
    /// Job tokens (green).
    Token,
    /// Job status (cyan).
    Status,
    /// Errors and failures (red).
    Error,
    /// Lifecycle, cancel, queen hello (yellow).
    Event,
    /// Requests to hives, workers and the queen (blue).
    Request,
    /// Anything else.
    Other,
}

/// Runs the command until ctrl-c.
pub async fn run(config: &Config, args: WatchArgs) -> anyhow::Result<()> {
    let bus = crate::nats::connect(config).await?;
    // In secure mode the cli identity may not read all of `rbee.>` (assignments carry prompts): the
    // default watch then covers what it may read, one subscription per wildcard.
    let subjects: Vec<String> = if config.nats_identity.is_some() && args.subject == rbee_bus::subject::ALL {
        [
            rbee_bus::subject::HIVE_HEARTBEAT_ALL,
            rbee_bus::subject::WORKER_HEARTBEAT_ALL,
            rbee_bus::subject::WORKER_LIFECYCLE_ALL,
            rbee_bus::subject::JOB_TOKENS_ALL,
            rbee_bus::subject::JOB_STATUS_ALL,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    } else {
        vec![args.subject.clone()]
    };
    let mut streams = Vec::new();
    for subject in &subjects {
        let sub = bus
            .client()
            .subscribe(subject.clone())
            .await
            .with_context(|| format!("cannot subscribe to {subject}"))?;
        streams.push(sub);
    }
    let mut messages = futures::stream::select_all(streams);
    // After one round trip the server knows the subscription: nothing published from now on is missed.
    bus.round_trip().await?;
    let err_style = Style::stderr();
    errln!(
        "{}",
        err_style.dim(format!(
            "watching {} on {} (ctrl-c to stop)",
            subjects.join(", "),
            crate::nats::host_port(&config.nats_url.value)
        ))
    );
    let style = Style::stdout();
    loop {
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else {
                    anyhow::bail!("the nats connection closed");
                };
                outln!("{}", line(&style, rbee_bus::now_ms(), message.subject.as_str(), &message.payload));
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// One printed line for a message received at `at_ms`.
pub fn line(style: &Style, at_ms: u64, subject: &str, payload: &[u8]) -> String {
    let (kind, summary) = summarize(subject, payload);
    let subject_text = match kind {
        Kind::Heartbeat => style.dim(subject),
        Kind::Token => style.green(subject),
        Kind::Status => style.cyan(subject),
        Kind::Error => style.red(subject),
        Kind::Event => style.yellow(subject),
        Kind::Request => style.blue(subject),
        Kind::Other => subject.to_owned(),
    };
    let summary = if kind == Kind::Heartbeat { style.dim(summary) } else { summary };
    format!("{} {subject_text} {summary}", style.dim(clock(at_ms)))
}

/// `HH:MM:SS.mmm` (UTC) of a millisecond timestamp.
pub fn clock(at_ms: u64) -> String {
    let day_ms = at_ms % 86_400_000;
    let (h, m, s, ms) = (day_ms / 3_600_000, day_ms / 60_000 % 60, day_ms / 1000 % 60, day_ms % 1000);
    format!("{h:02}:{m:02}:{s:02}.{ms:03}")
}

fn typed<T: DeserializeOwned>(payload: &[u8]) -> Option<T> {
    serde_json::from_slice(payload).ok()
}

/// The kind and a one-line summary of a message.
pub fn summarize(subject: &str, payload: &[u8]) -> (Kind, String) {
    let Ok(json) = serde_json::from_slice::<Value>(payload) else {
        return (Kind::Other, format!("<{} bytes, not JSON>", payload.len()));
    };
    if let Some(error) = json.get("error").filter(|e| e.is_object()) {
        let code = render::text(error, &["code"]);
        return (Kind::Error, format!("error {code}: {}", render::text(error, &["message"])));
    }
    decoded(subject, payload).unwrap_or_else(|| (Kind::Other, render::truncate(&json.to_string(), RAW_LIMIT)))
}

fn decoded(subject: &str, payload: &[u8]) -> Option<(Kind, String)> {
    if matches(subject::WORKER_HEARTBEAT_ALL, subject) {
        let hb: WorkerHeartbeat = typed(payload)?;
        return Some((
            Kind::Heartbeat,
            format!(
                "{} {} on {} slots {}/{} {:.1} tok/s mem {}",
                json_word(&hb.state),
                hb.model_id,
                hb.device,
                hb.slots_busy,
                hb.slots_total,
                hb.tokens_per_second,
                render::bytes(hb.memory_bytes)
            ),
        ));
    }
    if matches(subject::HIVE_HEARTBEAT_ALL, subject) {
        let hb: HiveHeartbeat = typed(payload)?;
        return Some((
            Kind::Heartbeat,
            format!(
                "{} host {} workers {} models {} devices {} ram {} free of {}",
                json_word(&hb.state),
                hb.hostname,
                hb.workers.len(),
                hb.models.len(),
                hb.devices.len(),
                render::bytes(hb.ram.available_bytes),
                render::bytes(hb.ram.total_bytes)
            ),
        ));
    }
    if matches(subject::WORKER_LIFECYCLE_ALL, subject) {
        let event: WorkerLifecycle = typed(payload)?;
        return Some(match &event.event {
            LifecycleEvent::Started { pid } => {
                (Kind::Event, format!("started pid {pid} model {} hive {}", event.model_id, event.hive_id))
            }
            LifecycleEvent::Exited { exit } => (Kind::Event, format!("exited ({exit})")),
            LifecycleEvent::Failed { exit, stderr_tail } => (
                Kind::Error,
                format!(
                    "failed ({exit}): {}",
                    render::truncate(stderr_tail.last().map_or("", String::as_str), 120)
                ),
            ),
        });
    }
    if matches(subject::JOB_TOKENS_ALL, subject) {
        let chunk: TokenChunk = typed(payload)?;
        return Some((
            Kind::Token,
            format!("#{} {:?} ({} tok, {} total)", chunk.seq, chunk.text, chunk.tokens, chunk.total_tokens),
        ));
    }
    if matches(subject::JOB_STATUS_ALL, subject) {
        let status: JobStatus = typed(payload)?;
        return Some(job_status(&status));
    }
    if matches(subject::JOB_CANCEL_ALL, subject) {
        let cancel: JobCancel = typed(payload)?;
        return Some((Kind::Event, format!("cancel: {}", cancel.reason)));
    }
    if matches(subject::WORKER_JOBS_ALL, subject) {
        let job: JobAssignment = typed(payload)?;
        return Some((
            Kind::Request,
            format!(
                "assign {} model {} prompt {} bytes max_tokens {}",
                job.job_id,
                job.model_id,
                job.prompt.text_len(),
                job.params.max_tokens
            ),
        ));
    }
    if subject == subject::QUEEN_JOBS_SUBMIT {
        let job: SubmitJob = typed(payload)?;
        return Some((
            Kind::Request,
            format!("submit model {} prompt {} bytes", job.model_id, job.prompt.text_len()),
        ));
    }
    if matches(subject::HIVE_SPAWN_ALL, subject) {
        let spawn: SpawnRequest = typed(payload)?;
        let device = spawn.device.unwrap_or_else(|| "any device".into());
        return Some((Kind::Request, format!("spawn {} on {device}", spawn.model_id)));
    }
    if matches(subject::HIVE_STOP_ALL, subject) {
        let stop: StopRequest = typed(payload)?;
        return Some((Kind::Request, format!("stop {}", stop.worker_id)));
    }
    if [subject::HIVE_WORKERS_ALL, subject::HIVE_MODELS_ALL, subject::HIVE_DEVICES_ALL]
        .iter()
        .any(|pattern| matches(pattern, subject))
    {
        return Some((Kind::Request, "list request".to_owned()));
    }
    if subject == subject::QUEEN_HELLO {
        let hello: QueenHello = typed(payload)?;
        return Some((
            Kind::Event,
            format!("queen {} started (epoch {})", hello.meta.publisher, hello.meta.epoch),
        ));
    }
    None
}

fn job_status(status: &JobStatus) -> (Kind, String) {
    match &status.state {
        JobState::Queued { reason } => (Kind::Status, format!("queued: {reason}")),
        JobState::Migrating { reason, .. } => (Kind::Error, format!("migrating: {reason}")),
        JobState::Finished { finish_reason, usage, error, .. } => {
            let kind =
                if error.is_some() || finish_reason.as_str() == "error" { Kind::Error } else { Kind::Status };
            let mut text = format!(
                "finished {} prompt {} completion {}",
                finish_reason.as_str(),
                usage.prompt_tokens,
                usage.completion_tokens
            );
            if let Some(tps) = usage.decode_tokens_per_second {
                text.push_str(&format!(" {tps:.1} tok/s"));
            }
            if let Some(error) = error {
                text.push_str(&format!(": {error}"));
            }
            (kind, text)
        }
        other => {
            // Scheduled, running and any later state: its name and the worker when there is one.
            let value = serde_json::to_value(other).unwrap_or(Value::Null);
            let state = render::text(&value, &["state"]);
            match value.get("worker_id").and_then(Value::as_str) {
                Some(worker) => (Kind::Status, format!("{state} on {worker}")),
                None => (Kind::Status, state),
            }
        }
    }
}

/// A unit enum's wire name (`idle`, `online`).
fn json_word<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(word)) => word,
        _ => "?".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_utc_time_of_day() {
        assert_eq!(clock(0), "00:00:00.000");
        assert_eq!(clock(86_400_000 + 3_723_004), "01:02:03.004");
    }

    #[test]
    fn undecodable_payloads_fall_back() {
        assert_eq!(summarize("rbee.x", b"\xff\x00"), (Kind::Other, "<2 bytes, not JSON>".to_owned()));
        let (kind, text) = summarize("rbee.worker.w.heartbeat", br#"{"odd":true}"#);
        assert_eq!((kind, text.as_str()), (Kind::Other, r#"{"odd":true}"#));
        let (kind, text) =
            summarize("_INBOX.x", br#"{"v":1,"error":{"code":"not_found","message":"no such worker"}}"#);
        assert_eq!((kind, text.as_str()), (Kind::Error, "error not_found: no such worker"));
    }
}
