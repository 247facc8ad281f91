//! What one generation has produced: text streaming (UTF-8 buffering, stop sequences, tool calls
//! split out), token counts, timings and the end conditions that depend only on the sampled tokens.
//! No llama.cpp types here.

use std::time::Instant;

use rbee_bus::{FinishReason, ToolCallChunk, Usage};

use super::stop::StopMatcher;
use super::tool_stream::ToolStream;
use super::utf8::Utf8Stream;

/// The outcome of one sampled token.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct TokenOutcome {
    /// Text to send now (may be empty).
    pub(crate) emit: String,
    /// Tool calls completed now.
    pub(crate) calls: Vec<ToolCallChunk>,
    /// Set when the generation is over.
    pub(crate) finish: Option<FinishReason>,
}

/// Text and accounting of one generation.
#[derive(Debug)]
pub(crate) struct Output {
    utf8: Utf8Stream,
    stop: StopMatcher,
    /// Splits tool calls out of the text, for a chat with tools the model may call.
    tools: Option<ToolStream>,
    max_tokens: u32,
    prompt_tokens: u32,
    /// Tokens generated, the end-of-generation token excluded.
    completion_tokens: u32,
    /// Tokens sampled, the end-of-generation token included (for the decode rate).
    sampled: u32,
    submitted_at: Instant,
    first_at: Option<Instant>,
    last_at: Option<Instant>,
    /// Prompt tokens the slot already held.
    cached_tokens: u32,
}

impl Output {
    /// A new output for a prompt of `prompt_tokens` submitted at `submitted_at`.
    pub(crate) fn new(prompt_tokens: u32, max_tokens: u32, stop: &[String], submitted_at: Instant) -> Self {
        Self {
            utf8: Utf8Stream::default(),
            stop: StopMatcher::new(stop),
            tools: None,
            max_tokens,
            prompt_tokens,
            completion_tokens: 0,
            sampled: 0,
            submitted_at,
            first_at: None,
            last_at: None,
            cached_tokens: 0,
        }
    }

    /// Counts `tokens` generated before, by earlier attempts of the job (toward `max_tokens` and usage).
    pub(crate) fn resumed(mut self, tokens: u32) -> Self {
        self.completion_tokens = tokens;
        self
    }

    /// Splits tool calls out of the reply with `tools`.
    pub(crate) fn with_tools(mut self, tools: ToolStream) -> Self {
        self.tools = Some(tools);
        self
    }

    /// Takes one sampled token: its piece (bytes) and whether it ends generation.
    pub(crate) fn on_token(&mut self, piece: &[u8], end_of_generation: bool, now: Instant) -> TokenOutcome {
        self.first_at.get_or_insert(now);
        self.last_at = Some(now);
        self.sampled = self.sampled.saturating_add(1);
        if end_of_generation {
            let (emit, calls) = self.flush();
            return TokenOutcome { emit, calls, finish: Some(self.stopped()) };
        }
        self.completion_tokens = self.completion_tokens.saturating_add(1);
        let text = self.utf8.push(piece);
        let scan = self.stop.push(&text);
        if scan.stopped {
            let (emit, calls) = self.through_tools(&scan.emit, true);
            return TokenOutcome { emit, calls, finish: Some(self.stopped()) };
        }
        let (mut emit, mut calls) = self.through_tools(&scan.emit, false);
        if self.completion_tokens >= self.max_tokens {
            let (tail, more) = self.flush();
            emit.push_str(&tail);
            calls.extend(more);
            return TokenOutcome { emit, calls, finish: Some(FinishReason::Length) };
        }
        TokenOutcome { emit, calls, finish: None }
    }

    /// A natural end: `tool_calls` when the reply made calls, `stop` otherwise.
    fn stopped(&self) -> FinishReason {
        if self.tools.as_ref().is_some_and(ToolStream::made_calls) {
            FinishReason::ToolCalls
        } else {
            FinishReason::Stop
        }
    }

    /// Passes released text through the tool-call splitter (when there is one); `last` ends the reply.
    fn through_tools(&mut self, text: &str, last: bool) -> (String, Vec<ToolCallChunk>) {
        let Some(tools) = self.tools.as_mut() else { return (text.to_owned(), Vec::new()) };
        let mut piece = tools.push(text);
        if last {
            let end = tools.finish();
            piece.text.push_str(&end.text);
            piece.calls.extend(end.calls);
        }
        (piece.text, piece.calls)
    }

    /// Everything still held back (an incomplete character, a possible stop-sequence start, an open
    /// tool call), for an end that is not a stop sequence. A stop sequence completed by the flushed
    /// text still cuts it.
    pub(crate) fn flush(&mut self) -> (String, Vec<ToolCallChunk>) {
        let tail = self.utf8.finish();
        let scan = self.stop.push(&tail);
        if scan.stopped {
            return self.through_tools(&scan.emit, true);
        }
        let mut out = scan.emit;
        out.push_str(&self.stop.finish());
        self.through_tools(&out, true)
    }

    /// Records how many prompt tokens the slot already held (not decoded again).
    pub(crate) fn set_cached_tokens(&mut self, cached: u32) {
        self.cached_tokens = cached;
    }

    /// Counts and timings so far.
    pub(crate) fn usage(&self) -> Usage {
        let ttft = self.first_at.map(|t| t.saturating_duration_since(self.submitted_at).as_secs_f64() * 1e3);
        let rate = match (self.first_at, self.last_at) {
            (Some(first), Some(last)) if self.sampled > 1 => {
                let secs = last.saturating_duration_since(first).as_secs_f64();
                (secs > 0.0).then(|| f64::from(self.sampled - 1) / secs)
            }
            _ => None,
        };
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            time_to_first_token_ms: ttft,
            decode_tokens_per_second: rate,
            cached_tokens: self.cached_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Output;
    use rbee_bus::FinishReason;
    use std::time::{Duration, Instant};

    fn feed(out: &mut Output, pieces: &[&[u8]]) -> (String, Option<FinishReason>) {
        let mut text = String::new();
        let t0 = Instant::now();
        for (i, piece) in pieces.iter().enumerate() {
            let o = out.on_token(piece, false, t0 + Duration::from_millis(10 * i as u64));
            text.push_str(&o.emit);
            if o.finish.is_some() {
                return (text, o.finish);
            }
        }
        (text, None)
    }

    #[test]
    fn max_tokens_ends_with_length_and_flushes() {
        let mut out = Output::new(5, 3, &["Par".into()], Instant::now());
        let (text, finish) = feed(&mut out, &[b"in", b" ", b"Pa"]);
        assert_eq!(finish, Some(FinishReason::Length));
        assert_eq!(text, "in Pa");
        assert_eq!(out.usage().completion_tokens, 3);
    }

    #[test]
    fn stop_sequence_ends_with_stop_and_hides_it() {
        let mut out = Output::new(5, 100, &[" Paris".into()], Instant::now());
        let (text, finish) = feed(&mut out, &[b"It", b" is", b" Par", b"is."]);
        assert_eq!(finish, Some(FinishReason::Stop));
        assert_eq!(text, "It is");
    }

    #[test]
    fn end_of_generation_flushes_held_text_and_is_not_counted() {
        let mut out = Output::new(5, 100, &["Paris!".into()], Instant::now());
        let (text, finish) = feed(&mut out, &[b"Paris"]);
        assert_eq!((text.as_str(), finish), ("", None));
        let o = out.on_token(b"", true, Instant::now());
        assert_eq!(o.finish, Some(FinishReason::Stop));
        assert_eq!(o.emit, "Paris");
        assert_eq!(out.usage().completion_tokens, 1);
    }

    #[test]
    fn split_character_is_emitted_whole() {
        let crab = "🦀".as_bytes();
        let mut out = Output::new(1, 10, &[], Instant::now());
        let (text, _) = feed(&mut out, &[&crab[..2], &crab[2..]]);
        assert_eq!(text, "🦀");
    }

    #[test]
    fn usage_measures_first_token_and_rate() {
        let t0 = Instant::now();
        let mut out = Output::new(7, 100, &[], t0);
        assert_eq!(out.usage().time_to_first_token_ms, None);
        out.on_token(b"a", false, t0 + Duration::from_millis(50));
        assert_eq!(out.usage().decode_tokens_per_second, None);
        for i in 1..=10 {
            out.on_token(b"b", false, t0 + Duration::from_millis(50 + 20 * i));
        }
        let usage = out.usage();
        assert_eq!(usage.prompt_tokens, 7);
        assert_eq!(usage.completion_tokens, 11);
        assert!((usage.time_to_first_token_ms.unwrap_or(0.0) - 50.0).abs() < 1e-6);
        assert!((usage.decode_tokens_per_second.unwrap_or(0.0) - 50.0).abs() < 1e-6);
    }
}
