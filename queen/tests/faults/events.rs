//! Reading the queen's server-sent events with the CLI's parser ([`rbee_cli::sse`]), and what a job's
//! stream showed.

use std::time::Duration;

use rbee_cli::sse::SseReader;
use serde_json::Value;

/// Reads an SSE body event by event: `(event name, data)`.
pub struct Sse(SseReader);

impl Sse {
    pub fn new(resp: reqwest::Response) -> Self {
        Self(SseReader::new(resp))
    }

    /// The next event; `None` at the end of the stream or when it broke off.
    pub async fn next(&mut self) -> Option<(String, String)> {
        self.0.next().await.ok().flatten().map(|event| (event.event, event.data))
    }
}

/// What a `/v1/jobs/{id}/stream` reader saw.
#[derive(Debug, Default)]
pub struct JobEvents {
    pub chunks: Vec<Value>,
    pub last_status: Option<Value>,
}

impl JobEvents {
    pub async fn read_to_end(sse: &mut Sse, into: &mut JobEvents) {
        while let Some((event, data)) = sse.next().await {
            if into.take(&event, &data) {
                return;
            }
        }
    }

    /// Reads to the end of the stream as long as it makes progress; false when no event came for
    /// `stall` (the job hangs).
    pub async fn read_while_progressing(sse: &mut Sse, into: &mut JobEvents, stall: Duration) -> bool {
        loop {
            match tokio::time::timeout(stall, sse.next()).await {
                Err(_) => return false,
                Ok(None) => return true,
                Ok(Some((event, data))) => {
                    if into.take(&event, &data) {
                        return true;
                    }
                }
            }
        }
    }

    /// Records one event; true for the final status.
    pub fn take(&mut self, event: &str, data: &str) -> bool {
        let value: Value = serde_json::from_str(data).unwrap_or(Value::Null);
        match event {
            "token" => self.chunks.push(value),
            "status" => {
                let terminal = value["state"] == "finished";
                self.last_status = Some(value);
                return terminal;
            }
            _ => {}
        }
        false
    }

    /// Every chunk in order (seq 0..n), their token counts adding up to each `total_tokens`.
    pub fn check_contiguous(&self) -> Result<u32, String> {
        let mut total = 0u64;
        for (i, c) in self.chunks.iter().enumerate() {
            if c["seq"].as_u64() != Some(i as u64) {
                return Err(format!("chunk {i} has seq {}", c["seq"]));
            }
            total += c["tokens"].as_u64().unwrap_or(0);
            if c["total_tokens"].as_u64() != Some(total) {
                return Err(format!(
                    "chunk {i}: total_tokens {} but the chunks add up to {total}",
                    c["total_tokens"]
                ));
            }
        }
        Ok(total as u32)
    }
}
