//! Reads an SSE response with the CLI's parser ([`rbee_cli::sse::SseParser`]), stamping every event with
//! the instant its bytes were read from the socket.

use std::time::Instant;

use anyhow::bail;
use futures::StreamExt;
use rbee_cli::sse::SseParser;

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
    let mut parser = SseParser::new();
    while let Some(chunk) = bytes.next().await {
        let at = Instant::now();
        for event in parser.push(&chunk?) {
            let done = event.data == "[DONE]";
            on_data(SseData { at, data: event.data });
            if done {
                return Ok(());
            }
        }
    }
    Ok(())
}
