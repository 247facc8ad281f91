//! Tool calls out of a streamed reply: text passes through until the model writes its family's call
//! opener; from there the text is held, and once the call is complete (its closer, or the end of the
//! reply for families without one) it leaves as a [`ToolCallChunk`], never as text. A held piece that
//! could still become the opener waits one token, as a stop sequence does. No llama.cpp types here.

use rbee_bus::ToolCallChunk;
use rbee_template::ToolSyntax;

/// What one push produced.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Piece {
    /// Text to send now.
    pub(crate) text: String,
    /// Calls completed now.
    pub(crate) calls: Vec<ToolCallChunk>,
}

/// Splits one reply into text and calls.
#[derive(Debug)]
pub(crate) struct ToolStream {
    syntax: ToolSyntax,
    /// Text not yet sent: it may be the start of the opener.
    held: String,
    /// Inside a call: its text after the opener.
    body: Option<String>,
    /// Nothing but whitespace has been sent yet (families whose call is the whole reply only open one
    /// at the start).
    at_start: bool,
    calls: u32,
    id_base: u64,
    /// The grammar holds the reply to calls: text outside them is only the whitespace it allows, or
    /// a call cut short by `max_tokens`, and is not sent.
    calls_only: bool,
}

/// The longest suffix of `text` that is a proper prefix of `opener`, as a byte index into `text`.
fn partial_opener_at(text: &str, opener: &str) -> usize {
    (1..opener.len().min(text.len() + 1))
        .rev()
        .filter(|&n| text.is_char_boundary(text.len() - n) && opener.is_char_boundary(n))
        .find(|&n| text.ends_with(&opener[..n]))
        .map_or(text.len(), |n| text.len() - n)
}

impl ToolStream {
    /// A stream for one reply; `id_base` makes the call ids of this reply distinct from others'.
    pub(crate) fn new(syntax: ToolSyntax, id_base: u64) -> Self {
        Self { syntax, held: String::new(), body: None, at_start: true, calls: 0, id_base, calls_only: false }
    }

    /// For replies the grammar holds to calls (`tool_choice` `required` or a named function).
    pub(crate) fn calls_only(mut self) -> Self {
        self.calls_only = true;
        self
    }

    /// Whether the reply has made a call.
    pub(crate) fn made_calls(&self) -> bool {
        self.calls > 0
    }

    /// The call opens only where the family allows it: anywhere, or at the reply's start.
    fn opener_at(&self) -> Option<usize> {
        if !self.syntax.start_only {
            return self.held.find(self.syntax.opener);
        }
        let trimmed = self.held.trim_start();
        (self.at_start && trimmed.starts_with(self.syntax.opener)).then(|| self.held.len() - trimmed.len())
    }

    /// Takes the next piece of reply text.
    pub(crate) fn push(&mut self, text: &str) -> Piece {
        let mut out = self.split(text);
        if self.calls_only {
            out.text.clear();
        }
        out
    }

    fn split(&mut self, text: &str) -> Piece {
        let mut out = Piece::default();
        match self.body.as_mut() {
            Some(body) => body.push_str(text),
            None => self.held.push_str(text),
        }
        loop {
            if let Some(body) = self.body.as_mut() {
                let Some(closer) = self.syntax.closer else { return out };
                let Some(end) = body.find(closer) else { return out };
                let rest = body.split_off(end + closer.len());
                body.truncate(end);
                let call = std::mem::take(body);
                self.body = None;
                self.emit_call(&call, &mut out);
                self.held = rest;
                continue;
            }
            if let Some(at) = self.opener_at() {
                let opener = self.syntax.opener;
                let mut body = self.held.split_off(at);
                out.text.push_str(&self.held);
                // A family whose opener begins the call's JSON keeps it in the body.
                if !self.syntax.opener_in_body {
                    body.drain(..opener.len());
                }
                self.held.clear();
                self.body = Some(body);
                self.at_start = false;
                continue;
            }
            let send_to = if self.syntax.start_only {
                // Only a reply's start can open a call: hold leading whitespace and a partial opener.
                let trimmed = self.held.trim_start();
                if self.at_start && self.syntax.opener.starts_with(trimmed) {
                    0
                } else {
                    self.held.len()
                }
            } else {
                partial_opener_at(&self.held, self.syntax.opener)
            };
            let sent: String = self.held.drain(..send_to).collect();
            if !sent.trim().is_empty() {
                self.at_start = false;
            }
            out.text.push_str(&sent);
            return out;
        }
    }

    /// The end of the reply: a call still open ends here; held text is sent.
    pub(crate) fn finish(&mut self) -> Piece {
        let mut out = Piece::default();
        if let Some(body) = self.body.take() {
            self.emit_call(&body, &mut out);
        }
        out.text.push_str(&std::mem::take(&mut self.held));
        if self.calls_only {
            out.text.clear();
        }
        out
    }

    fn emit_call(&mut self, body: &str, out: &mut Piece) {
        match self.syntax.parse_calls(body) {
            Ok(calls) if !calls.is_empty() => {
                for call in calls {
                    let arguments = match &call.arguments {
                        serde_json::Value::String(s) => s.clone(),
                        v => v.to_string(),
                    };
                    out.calls.push(ToolCallChunk {
                        index: self.calls,
                        id: format!("call_{:012x}{:02}", self.id_base & 0xffff_ffff_ffff, self.calls),
                        name: call.name,
                        arguments,
                    });
                    self.calls += 1;
                }
            }
            // Not a call after all (malformed): the text goes out as written.
            _ => {
                tracing::debug!(family = self.syntax.family, "tool call did not parse; sent as text");
                if !self.syntax.opener_in_body {
                    out.text.push_str(self.syntax.opener);
                }
                out.text.push_str(body);
                if let Some(closer) = self.syntax.closer {
                    out.text.push_str(closer);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rbee_template::ToolSyntax;

    use super::{partial_opener_at, Piece, ToolStream};

    /// Feeds `pieces` one at a time, then finishes; returns all text and calls.
    fn run(syntax: ToolSyntax, pieces: &[&str]) -> Piece {
        let mut stream = ToolStream::new(syntax, 0xabc);
        let mut all = Piece::default();
        for p in pieces {
            let out = stream.push(p);
            all.text.push_str(&out.text);
            all.calls.extend(out.calls);
        }
        let out = stream.finish();
        all.text.push_str(&out.text);
        all.calls.extend(out.calls);
        all
    }

    #[test]
    fn partial_opener_is_held_back() {
        assert_eq!(partial_opener_at("hello <tool", "<tool_call>"), 6);
        assert_eq!(partial_opener_at("hello", "<tool_call>"), 5);
        assert_eq!(partial_opener_at("a<", "<tool_call>"), 1);
    }

    #[test]
    fn hermes_call_split_across_tokens_leaves_as_a_call() {
        let out = run(
            ToolSyntax::HERMES,
            &[
                "Let me check.",
                " <to",
                "ol_call>\n{\"name\": \"get",
                "_weather\", \"arguments\": {\"city\": \"Paris\"}}",
                "\n</tool_call>",
            ],
        );
        assert_eq!(out.text, "Let me check. ");
        assert_eq!(out.calls.len(), 1);
        assert_eq!(out.calls[0].name, "get_weather");
        assert_eq!(out.calls[0].index, 0);
        let args: serde_json::Value =
            serde_json::from_str(&out.calls[0].arguments).expect("arguments are json");
        assert_eq!(args, serde_json::json!({"city": "Paris"}));
        assert!(out.calls[0].id.starts_with("call_"));
    }

    #[test]
    fn two_hermes_calls_get_distinct_indices_and_ids() {
        let call = |c: &str| {
            format!("<tool_call>{{\"name\": \"f\", \"arguments\": {{\"c\": \"{c}\"}}}}</tool_call>")
        };
        let a = call("a");
        let b = call("b");
        let out = run(ToolSyntax::HERMES, &[&a, "\n", &b]);
        assert_eq!(out.calls.len(), 2);
        assert_eq!((out.calls[0].index, out.calls[1].index), (0, 1));
        assert_ne!(out.calls[0].id, out.calls[1].id);
        assert_eq!(out.text.trim(), "");
    }

    #[test]
    fn a_malformed_call_goes_out_as_text() {
        let out = run(ToolSyntax::HERMES, &["<tool_call>not json</tool_call> after"]);
        assert!(out.calls.is_empty());
        assert_eq!(out.text, "<tool_call>not json</tool_call> after");
    }

    #[test]
    fn an_unclosed_call_ends_with_the_reply() {
        let out = run(ToolSyntax::HERMES, &["<tool_call>{\"name\": \"f\", \"arguments\": {}}"]);
        assert_eq!(out.calls.len(), 1);
        assert_eq!(out.calls[0].arguments, "{}");
    }

    #[test]
    fn llama3_call_only_at_the_start() {
        let out = run(ToolSyntax::LLAMA3, &[" {\"na", "me\": \"f\", \"parameters\": {\"x\": 1}}"]);
        assert_eq!(out.calls.len(), 1, "{out:?}");
        assert_eq!(out.calls[0].name, "f");
        let text = run(ToolSyntax::LLAMA3, &["The JSON is ", "{\"name\": \"f\"}"]);
        assert!(text.calls.is_empty());
        assert_eq!(text.text, "The JSON is {\"name\": \"f\"}");
    }

    #[test]
    fn mistral_list_gives_every_call() {
        let out = run(
            ToolSyntax::MISTRAL,
            &[
                "[TOOL_CALLS]",
                "[{\"name\": \"a\", \"arguments\": {}}, {\"name\": \"b\", \"arguments\": {\"k\": true}}]",
            ],
        );
        let names: Vec<&str> = out.calls.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(out.text, "");
    }

    #[test]
    fn calls_only_drops_filler_and_a_cut_call() {
        let mut stream = ToolStream::new(ToolSyntax::HERMES, 1).calls_only();
        let mut calls = Vec::new();
        let mut text = String::new();
        for p in ["\n\n<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>", "\n\n<tool_c"] {
            let out = stream.push(p);
            text.push_str(&out.text);
            calls.extend(out.calls);
        }
        text.push_str(&stream.finish().text);
        assert_eq!(calls.len(), 1);
        assert_eq!(text, "");
    }

    #[test]
    fn plain_text_passes_through_whole() {
        let out = run(ToolSyntax::HERMES, &["no calls ", "here <b>", " at all <"]);
        assert!(out.calls.is_empty());
        assert_eq!(out.text, "no calls here <b> at all <");
    }
}
