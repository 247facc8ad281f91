//! A minimal SSE reader that stamps every event with the instant its bytes were read from the socket.

use std::time::Instant;

use anyhow::bail;
use futures::StreamExt;

/// One `data:` payload and when it arrived.
#[derive(Debug)]
pub struct SseData {
    /// When the bytes holding it were read.
    pub at: Instant,
    /// The payload (`[DONE]` for OpenAI's end marker).
    pub data: String,
}

/// Reads `resp` to the end (or `[DONE]`), calling `on_data` for every `data:` payload.
pub async fn read(resp: reqwest::Response, mut on_data: impl FnMut(SseData)) -> anyhow::Result<()> {
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        bail!("stream refused: {status} {body}");
    }
    let mut bytes = resp.bytes_stream();
    let mut buf = String::new();
    while let Some(chunk) = bytes.next().await {
        let at = Instant::now();
        let chunk = chunk?;
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            for line in event.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    let data = data.strip_prefix(' ').unwrap_or(data).to_owned();
                    let done = data == "[DONE]";
                    on_data(SseData { at, data });
                    if done {
                        return Ok(());
                    }
                }
            }
        }
    }
    Ok(())
}
