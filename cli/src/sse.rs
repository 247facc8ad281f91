//! Server-sent events: an incremental parser that takes bytes as they arrive (an event, a line or a
//! UTF-8 character may be split across reads) and a reader over a streaming HTTP response.

use std::collections::VecDeque;

use anyhow::Context;
use futures::StreamExt;

/// One event: its type (`message` when the server named none) and its data lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, or `message`.
    pub event: String,
    /// The `data:` lines joined with newlines.
    pub data: String,
}

/// Incremental SSE parser.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of an incomplete line.
    partial: Vec<u8>,
    /// `event:` of the event being read.
    event: Option<String>,
    /// `data:` lines of the event being read.
    data: Vec<String>,
}

impl SseParser {
    /// A parser with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the events completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        self.partial.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(offset) = self.partial[start..].iter().position(|&b| b == b'\n') {
            let end = start + offset;
            let mut line = &self.partial[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let line = String::from_utf8_lossy(line).into_owned();
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
            start = end + 1;
        }
        self.partial.drain(..start);
        events
    }

    /// At end of stream: the event still being read, if it has data (a server that forgot the final
    /// blank line).
    pub fn finish(&mut self) -> Option<SseEvent> {
        if !self.partial.is_empty() {
            let line = String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned();
            if let Some(event) = self.line(line.trim_end_matches('\r')) {
                return Some(event);
            }
        }
        self.dispatch()
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => self.data.push(value.to_owned()),
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        if self.data.is_empty() {
            return None;
        }
        let data = std::mem::take(&mut self.data).join("\n");
        Some(SseEvent { event: event.unwrap_or_else(|| "message".to_owned()), data })
    }
}

/// Reads events from a streaming HTTP response.
pub struct SseReader {
    stream: futures::stream::BoxStream<'static, reqwest::Result<Vec<u8>>>,
    parser: SseParser,
    ready: VecDeque<SseEvent>,
    ended: bool,
}

impl SseReader {
    /// Wraps a response whose status was already checked.
    pub fn new(response: reqwest::Response) -> Self {
        let stream = response.bytes_stream().map(|chunk| chunk.map(|bytes| bytes.to_vec())).boxed();
        Self { stream, parser: SseParser::new(), ready: VecDeque::new(), ended: false }
    }

    /// The next event, or `None` when the server closed the stream.
    pub async fn next(&mut self) -> anyhow::Result<Option<SseEvent>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(Some(event));
            }
            if self.ended {
                return Ok(None);
            }
            match self.stream.next().await {
                Some(chunk) => {
                    let chunk = chunk.context("the event stream from the queen broke off")?;
                    self.ready.extend(self.parser.push(&chunk));
                }
                None => {
                    self.ended = true;
                    self.ready.extend(self.parser.finish());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent { event: event.into(), data: data.into() }
    }

    #[test]
    fn parses_openai_chunks_and_done() {
        let mut p = SseParser::new();
        let got = p.push(b"data: {\"a\":1}\n\ndata: [DONE]\n\n");
        assert_eq!(got, vec![ev("message", "{\"a\":1}"), ev("message", "[DONE]")]);
    }

    #[test]
    fn events_split_across_reads_at_every_byte() {
        let input = "event: progress\r\ndata: {\"downloaded\":1}\r\n\r\n: comment\n\nevent: done\ndata: é\ndata:x\n\n";
        let whole = SseParser::new().push(input.as_bytes());
        assert_eq!(whole, vec![ev("progress", "{\"downloaded\":1}"), ev("done", "é\nx")]);
        for split in 0..input.len() {
            let mut p = SseParser::new();
            let mut got = p.push(&input.as_bytes()[..split]);
            got.extend(p.push(&input.as_bytes()[split..]));
            assert_eq!(got, whole, "split at {split}");
        }
        // One byte at a time, including inside the two-byte `é`.
        let mut p = SseParser::new();
        let got: Vec<_> = input.as_bytes().iter().flat_map(|b| p.push(std::slice::from_ref(b))).collect();
        assert_eq!(got, whole);
    }

    #[test]
    fn trailing_event_without_blank_line_is_kept_at_finish() {
        let mut p = SseParser::new();
        assert!(p.push(b"data: last").is_empty());
        assert_eq!(p.finish(), Some(ev("message", "last")));
        assert_eq!(p.finish(), None);
    }

    #[test]
    fn event_without_data_is_dropped() {
        let mut p = SseParser::new();
        assert!(p.push(b"event: ping\n\n").is_empty());
        assert_eq!(p.push(b"data: x\n\n"), vec![ev("message", "x")]);
    }
}
