//! `rbee infer`: one prompt through the queen's OpenAI-compatible API, streamed as server-sent events.
//! Tokens go to stdout as they come; the figures (time to first token measured here, tokens per second,
//! finish reason) go to stderr, or everything into one JSON object with `--json`.

use std::time::Instant;

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::args::InferArgs;
use crate::client::Queen;
use crate::config::Config;
use crate::render::Style;
use crate::sse::SseReader;

/// What one streamed completion produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The generated text.
    pub text: String,
    /// Why it ended, as the server said.
    pub finish_reason: Option<String>,
    /// The server's usage object, when sent.
    pub usage: Option<Value>,
    /// The model that answered.
    pub model: Option<String>,
    /// Content chunks received (a stand-in for tokens when no usage comes).
    pub chunks: u64,
    /// From sending the request to the first content, in milliseconds.
    pub time_to_first_token_ms: Option<f64>,
    /// From the first content to the end, in seconds.
    pub decode_secs: f64,
}

impl Outcome {
    /// Tokens generated: from usage, else the chunk count.
    pub fn completion_tokens(&self) -> u64 {
        self.usage
            .as_ref()
            .and_then(|u| u.get("completion_tokens"))
            .and_then(Value::as_u64)
            .unwrap_or(self.chunks)
    }

    /// Tokens per second after the first, measured here.
    pub fn tokens_per_second(&self) -> Option<f64> {
        let tokens = self.completion_tokens();
        (tokens > 1 && self.decode_secs > 0.0).then(|| (tokens - 1) as f64 / self.decode_secs)
    }
}

/// Runs the command.
pub async fn run(config: &Config, args: InferArgs) -> anyhow::Result<()> {
    let queen = Queen::new(config)?;
    let model = args.model.clone().unwrap_or_else(|| config.default_model.value.clone());
    let (path, body) = request_body(&args, &model);
    let json_output = args.json;
    let outcome = stream(&queen, path, &body, args.chat, |piece| {
        if !json_output {
            out!("{piece}");
        }
        Ok(())
    })
    .await?;

    if json_output {
        let object = json!({
            "text": outcome.text,
            "finish_reason": outcome.finish_reason,
            "usage": outcome.usage,
            "time_to_first_token_ms": outcome.time_to_first_token_ms.map(|ms| round(ms, 1)),
            "tokens_per_second": outcome.tokens_per_second().map(|tps| round(tps, 2)),
            "model": outcome.model.clone().unwrap_or(model),
        });
        outln!("{object}");
        return Ok(());
    }
    if !outcome.text.ends_with('\n') {
        outln!();
    }
    let style = Style::stderr();
    let ttft = outcome.time_to_first_token_ms.map(|ms| format!("{ms:.0} ms")).unwrap_or_else(|| "-".into());
    let tps =
        outcome.tokens_per_second().map(|t| format!("{t:.1} tok/s")).unwrap_or_else(|| "- tok/s".into());
    let finish = outcome.finish_reason.as_deref().unwrap_or("-");
    errln!(
        "{}",
        style.dim(format!(
            "-- {} tokens, first token {ttft}, {tps}, finish: {finish}",
            outcome.completion_tokens()
        ))
    );
    if outcome.finish_reason.as_deref() == Some("error") {
        bail!("the job failed on the worker");
    }
    Ok(())
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// The endpoint and body for the arguments.
pub fn request_body(args: &InferArgs, model: &str) -> (&'static str, Value) {
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("stream".into(), json!(true));
    body.insert("stream_options".into(), json!({"include_usage": true}));
    let path = if args.chat {
        body.insert("messages".into(), json!([{"role": "user", "content": args.prompt}]));
        "/v1/chat/completions"
    } else {
        body.insert("prompt".into(), json!(args.prompt));
        "/v1/completions"
    };
    let optional = [
        ("temperature", args.temperature.map(|v| json!(v))),
        ("top_p", args.top_p.map(|v| json!(v))),
        ("top_k", args.top_k.map(|v| json!(v))),
        ("min_p", args.min_p.map(|v| json!(v))),
        ("repeat_penalty", args.repeat_penalty.map(|v| json!(v))),
        ("seed", args.seed.map(|v| json!(v))),
        ("max_tokens", args.max_tokens.map(|v| json!(v))),
        ("stop", (!args.stop.is_empty()).then(|| json!(args.stop))),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            body.insert(key.into(), value);
        }
    }
    (path, Value::Object(body))
}

/// Posts a streaming completion and reads it to the end, calling `on_text` for every piece of content.
pub async fn stream(
    queen: &Queen,
    path: &str,
    body: &Value,
    chat: bool,
    mut on_text: impl FnMut(&str) -> anyhow::Result<()>,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let response = queen.send(Method::POST, path, Some(body), None).await?;
    let mut outcome = Outcome::default();
    let is_json = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        // A server that ignored `stream`: one complete reply.
        let reply: Value = response.json().await.context("the queen's reply is not JSON")?;
        outcome.time_to_first_token_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
        apply_chunk(&mut outcome, &reply);
        let choice = &reply["choices"][0];
        let text = choice["message"]["content"].as_str().or(choice["text"].as_str()).unwrap_or("");
        outcome.text = text.to_owned();
        outcome.chunks = 1;
        on_text(text)?;
        return Ok(outcome);
    }
    let mut events = SseReader::new(response);
    let mut first_at = None;
    while let Some(event) = events.next().await? {
        let data = event.data.trim();
        if data == "[DONE]" {
            break;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else { continue };
        if let Some(error) = chunk.get("error") {
            let message = error.get("message").and_then(Value::as_str).map(str::to_owned);
            bail!("{}", message.unwrap_or_else(|| error.to_string()));
        }
        apply_chunk(&mut outcome, &chunk);
        let piece = content(&chunk, chat);
        if !piece.is_empty() {
            if first_at.is_none() {
                first_at = Some(Instant::now());
                outcome.time_to_first_token_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
            }
            outcome.chunks += 1;
            outcome.text.push_str(piece);
            on_text(piece)?;
        }
    }
    if let Some(first) = first_at {
        outcome.decode_secs = first.elapsed().as_secs_f64();
    }
    Ok(outcome)
}

/// The content of one chunk: `choices[0].delta.content` for chat, `choices[0].text` for completions
/// (either accepted in both modes).
fn content(chunk: &Value, chat: bool) -> &str {
    let choice = &chunk["choices"][0];
    let delta = choice["delta"]["content"].as_str();
    let text = choice["text"].as_str();
    if chat { delta.or(text) } else { text.or(delta) }.unwrap_or("")
}

fn apply_chunk(outcome: &mut Outcome, chunk: &Value) {
    if let Some(model) = chunk.get("model").and_then(Value::as_str) {
        outcome.model = Some(model.to_owned());
    }
    if let Some(reason) = chunk["choices"][0]["finish_reason"].as_str() {
        outcome.finish_reason = Some(reason.to_owned());
    }
    if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
        outcome.usage = Some(usage.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_of_both_apis_give_content() {
        let chat = json!({"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]});
        let completion =
            json!({"choices":[{"text":" there","finish_reason":"stop"}],"usage":{"completion_tokens":2}});
        assert_eq!(content(&chat, true), "Hi");
        assert_eq!(content(&completion, false), " there");
        let mut outcome = Outcome::default();
        apply_chunk(&mut outcome, &completion);
        assert_eq!(outcome.finish_reason.as_deref(), Some("stop"));
        assert_eq!(outcome.completion_tokens(), 2);
    }
}
