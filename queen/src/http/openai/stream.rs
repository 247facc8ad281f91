//! A streamed answer: server-sent events in OpenAI's chunk shapes, the choices' events interleaved as
//! they come (each chunk names its choice's `index`), `[DONE]` last. A client that goes away cancels
//! every choice still running.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use rbee_bus::{FinishReason, JobState, TokenChunk, Usage};
use serde_json::{json, Value};

use super::choice::{chat_logprobs, completion_logprobs, finish_str, tool_calls_json, usage_json, Answer};
use super::{CancelOnDrop, Flavor, Started};
use crate::jobs::job::JobEvent;

/// One choice's events, the pending ones first, tagged with its index; ends after the final status.
fn events(index: usize, started: Started) -> impl Stream<Item = (usize, JobEvent)> {
    let Started { pending, reader, .. } = started;
    futures::stream::unfold(
        (VecDeque::from(pending), reader, false),
        move |(mut pending, mut reader, ended)| async move {
            if ended {
                return None;
            }
            let event = match pending.pop_front() {
                Some(e) => e,
                None => reader.next().await?,
            };
            let ended = event.is_terminal();
            Some(((index, event), (pending, reader, ended)))
        },
    )
}

/// Per-choice state of the stream.
#[derive(Default)]
struct ChoiceState {
    /// The role was sent (chat: in the first delta).
    opened: bool,
    /// Text sent so far (legacy logprobs' offsets).
    sent: usize,
}

/// Builds the chunks of one answer.
struct Chunks {
    answer: Answer,
    id: String,
    object: &'static str,
    include_usage: bool,
    choices: Vec<ChoiceState>,
    usages: Vec<Option<Usage>>,
}

impl Chunks {
    fn body(&self, choices: Vec<Value>) -> Value {
        json!({"id": self.id, "object": self.object, "created": self.answer.created, "model": self.answer.model, "choices": choices})
    }

    fn token(&mut self, index: usize, chunk: TokenChunk) -> Event {
        let state = &mut self.choices[index];
        let choice = match self.answer.flavor {
            Flavor::Chat => {
                let mut delta = serde_json::Map::new();
                if !state.opened {
                    delta.insert("role".into(), "assistant".into());
                }
                if !chunk.text.is_empty() || chunk.tool_calls.is_empty() {
                    delta.insert("content".into(), chunk.text.clone().into());
                }
                if !chunk.tool_calls.is_empty() {
                    delta.insert("tool_calls".into(), tool_calls_json(&chunk.tool_calls, true));
                }
                let logprobs =
                    if self.answer.logprobs { chat_logprobs(&chunk.logprobs) } else { Value::Null };
                json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": null})
            }
            Flavor::Completion => {
                let logprobs = if self.answer.logprobs {
                    completion_logprobs(&chunk.logprobs, state.sent)
                } else {
                    Value::Null
                };
                json!({"index": index, "text": chunk.text, "logprobs": logprobs, "finish_reason": null})
            }
        };
        state.opened = true;
        state.sent += chunk.text.len();
        Event::default().data(self.body(vec![choice]).to_string())
    }

    fn finished(&mut self, index: usize, reason: FinishReason, usage: Usage) -> Event {
        let opened = self.choices[index].opened;
        let choice = match self.answer.flavor {
            Flavor::Chat => {
                let delta = if opened { json!({}) } else { json!({"role": "assistant", "content": ""}) };
                json!({"index": index, "delta": delta, "logprobs": null, "finish_reason": finish_str(reason)})
            }
            Flavor::Completion => {
                json!({"index": index, "text": "", "logprobs": null, "finish_reason": finish_str(reason)})
            }
        };
        let mut body = self.body(vec![choice]);
        // Without `stream_options.include_usage`, a single choice's last chunk carries its usage (as
        // rbee always did); with it, the usage comes alone at the end, as OpenAI sends it.
        if !self.include_usage && self.usages.len() == 1 {
            body["usage"] = usage_json(std::slice::from_ref(&usage));
        }
        self.usages[index] = Some(usage);
        Event::default().data(body.to_string())
    }

    fn usage(&self) -> Option<Event> {
        if !self.include_usage {
            return None;
        }
        let usages: Vec<Usage> = self.usages.iter().flatten().cloned().collect();
        let mut body = self.body(Vec::new());
        body["usage"] = usage_json(&usages);
        Some(Event::default().data(body.to_string()))
    }
}

fn error_event(message: String) -> Event {
    let body = json!({"error": {"message": message, "type": "server_error", "code": "job_failed"}});
    Event::default().data(body.to_string())
}

/// The SSE answer of `started` choices.
pub(crate) fn sse(
    answer: Answer,
    started: Vec<Started>,
    guard: CancelOnDrop,
    include_usage: bool,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let first_job = started.first().map(|s| s.job_id.to_string()).unwrap_or_default();
    let (id, object) = answer.id_and_object(&first_job, true);
    let n = started.len();
    let chunks = Chunks {
        answer,
        id,
        object,
        include_usage,
        choices: (0..n).map(|_| ChoiceState::default()).collect(),
        usages: vec![None; n],
    };
    let merged =
        futures::stream::select_all(started.into_iter().enumerate().map(|(i, s)| events(i, s).boxed()));
    // State: the merged events, the chunk builder, the guard, how many choices are still open, and
    // whether the stream has ended.
    let state = (merged, chunks, guard, n, false);
    let stream =
        futures::stream::unfold(state, |(mut merged, mut chunks, mut guard, mut open, ended)| async move {
            if ended {
                return None;
            }
            loop {
                let Some((index, event)) = merged.next().await else {
                    // Every choice's events are over (a job table dropped them, or all finished).
                    guard.done = true;
                    let mut out: Vec<Event> = chunks.usage().into_iter().collect();
                    out.push(Event::default().data("[DONE]"));
                    return Some((out, (merged, chunks, guard, open, true)));
                };
                match event {
                    JobEvent::Token(chunk) => {
                        let ev = chunks.token(index, chunk);
                        return Some((vec![ev], (merged, chunks, guard, open, false)));
                    }
                    JobEvent::Status(s) => {
                        let JobState::Finished { finish_reason, usage, error, .. } = s.state else {
                            continue;
                        };
                        open = open.saturating_sub(1);
                        if finish_reason == FinishReason::Error {
                            // One failed choice fails the answer; the guard cancels the others.
                            let out =
                                vec![error_event(error.unwrap_or_default()), Event::default().data("[DONE]")];
                            return Some((out, (merged, chunks, guard, open, true)));
                        }
                        let mut out = vec![chunks.finished(index, finish_reason, usage)];
                        if open == 0 {
                            guard.done = true;
                            out.extend(chunks.usage());
                            out.push(Event::default().data("[DONE]"));
                            return Some((out, (merged, chunks, guard, open, true)));
                        }
                        return Some((out, (merged, chunks, guard, open, false)));
                    }
                }
            }
        });
    let flat = stream.flat_map(|events| futures::stream::iter(events.into_iter().map(Ok)));
    Sse::new(flat).keep_alive(KeepAlive::default())
}
