//! Ollama's answer shapes built from a job's events: NDJSON lines (one per token chunk, then a last one
//! with `done: true`, `done_reason` and the counts and durations in nanoseconds) or one object with
//! the whole text. A failure mid-stream is a line `{"error": ...}`, as Ollama sends it. A client that
//! goes away cancels the job.

use std::collections::VecDeque;
use std::time::Instant;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use rbee_bus::{FinishReason, JobState, Usage};
use serde_json::{json, Value};

use super::OllamaError;
use crate::error::ApiError;
use crate::http::openai::{CancelOnDrop, Started};
use crate::jobs::job::JobEvent;

/// Which endpoint answers: chat puts text in `message.content`, generate in `response`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Chat,
    Generate,
}

/// The fixed parts of every line.
pub struct Answer {
    pub kind: Kind,
    pub model: String,
    pub started: Instant,
}

impl Answer {
    fn line(&self, text: &str, done: bool) -> Value {
        let mut line =
            json!({"model": self.model, "created_at": created_at(rbee_bus::now_ms()), "done": done});
        match self.kind {
            Kind::Chat => line["message"] = json!({"role": "assistant", "content": text}),
            Kind::Generate => line["response"] = json!(text),
        }
        line
    }

    fn last(&self, text: &str, reason: FinishReason, usage: &Usage) -> Value {
        let mut line = self.line(text, true);
        let ns = |ms: f64| (ms * 1e6).round() as u64;
        let eval_ms = match usage.decode_tokens_per_second {
            Some(tps) if tps > 0.0 => f64::from(usage.completion_tokens) / tps * 1000.0,
            _ => 0.0,
        };
        line["done_reason"] = json!(match reason {
            FinishReason::Length => "length",
            _ => "stop",
        });
        line["total_duration"] = json!(self.started.elapsed().as_nanos() as u64);
        line["load_duration"] = json!(0);
        line["prompt_eval_count"] = json!(usage.prompt_tokens);
        line["prompt_eval_duration"] = json!(ns(usage.time_to_first_token_ms.unwrap_or(0.0)));
        line["eval_count"] = json!(usage.completion_tokens);
        line["eval_duration"] = json!(ns(eval_ms));
        line
    }
}

/// `ms` since the epoch as RFC 3339 UTC with milliseconds (`2026-12-03T08:30:00.123Z`).
pub fn created_at(ms: u64) -> String {
    let (days, rest) = ((ms / 86_400_000) as i64, ms % 86_400_000);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, milli) = (rest / 3_600_000, rest / 60_000 % 60, rest / 1000 % 60, rest % 1000);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

/// The job's events, the pending ones first; ends after the final status.
fn events(started: Started) -> impl futures::Stream<Item = JobEvent> {
    let Started { pending, reader, .. } = started;
    futures::stream::unfold(
        (VecDeque::from(pending), reader, false),
        |(mut pending, mut reader, ended)| async move {
            if ended {
                return None;
            }
            let event = match pending.pop_front() {
                Some(e) => e,
                None => reader.next().await?,
            };
            let ended = event.is_terminal();
            Some((event, (pending, reader, ended)))
        },
    )
}

/// What a final status means for the answer: the last line, or the error.
fn ending(answer: &Answer, state: JobState, text: &str) -> Option<Result<Value, String>> {
    let JobState::Finished { finish_reason, usage, error, .. } = state else { return None };
    Some(match finish_reason {
        FinishReason::Error => Err(error.unwrap_or_else(|| "job failed".to_owned())),
        FinishReason::Cancelled => Err("the job was cancelled".to_owned()),
        reason => Ok(answer.last(text, reason, &usage)),
    })
}

/// The NDJSON answer.
pub fn ndjson(answer: Answer, started: Started, mut guard: CancelOnDrop) -> Response {
    let lines = events(started).filter_map(move |event| {
        let line = match event {
            JobEvent::Token(chunk) if !chunk.text.is_empty() => Some(answer.line(&chunk.text, false)),
            JobEvent::Token(_) => None,
            JobEvent::Status(s) => match ending(&answer, s.state, "") {
                None => None,
                Some(result) => {
                    guard.finish();
                    Some(result.unwrap_or_else(|error| json!({"error": error})))
                }
            },
        };
        std::future::ready(line.map(|l| Ok::<_, std::convert::Infallible>(format!("{l}\n"))))
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response()
}

/// The whole answer as one object.
pub async fn collect(answer: Answer, started: Started, mut guard: CancelOnDrop) -> Response {
    let mut text = String::new();
    let mut events = Box::pin(events(started));
    while let Some(event) = events.next().await {
        match event {
            JobEvent::Token(chunk) => text.push_str(&chunk.text),
            JobEvent::Status(s) => match ending(&answer, s.state, &text) {
                None => {}
                Some(result) => {
                    guard.finish();
                    return match result {
                        Ok(line) => axum::Json(line).into_response(),
                        Err(error) => OllamaError(ApiError::JobFailed(error)).into_response(),
                    };
                }
            },
        }
    }
    OllamaError(ApiError::JobFailed("the job's events ended before it finished".to_owned())).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(super::created_at(0), "1970-01-01T00:00:00.000Z");
        // 2026-12-03T08:30:00.123Z
        assert_eq!(super::created_at(1_796_286_600_123), "2026-12-03T08:30:00.123Z");
        assert_eq!(super::created_at(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
