//! UTF-8-safe streaming of token bytes.
//!
//! A token's piece is a run of bytes that may end in the middle of a multi-byte character (byte-level
//! BPE splits emoji and CJK characters across tokens). [`Utf8Stream`] buffers the incomplete tail and
//! only ever returns whole characters.

/// Turns a stream of byte chunks into whole UTF-8 text, holding back an incomplete trailing sequence.
#[derive(Debug, Default)]
pub(crate) struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Appends `bytes` and returns every complete character now available. Invalid bytes become
    /// U+FFFD; an incomplete sequence at the end stays buffered for the next call.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(text) => {
                    out.push_str(text);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid_end = start + e.valid_up_to();
                    // The prefix up to `valid_end` was just checked as valid UTF-8.
                    out.push_str(&String::from_utf8_lossy(&self.pending[start..valid_end]));
                    match e.error_len() {
                        // Incomplete sequence at the end: keep it for the next piece.
                        None => {
                            start = valid_end;
                            break;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start = valid_end + bad;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// Ends the stream: an incomplete trailing sequence becomes U+FFFD.
    pub(crate) fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::Utf8Stream;

    #[test]
    fn ascii_passes_through() {
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(b"Hello"), "Hello");
        assert_eq!(s.push(b", world"), ", world");
        assert_eq!(s.finish(), "");
    }

    #[test]
    fn split_multibyte_char_is_held_until_complete() {
        let crab = "🦀".as_bytes(); // 4 bytes
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(&crab[..1]), "");
        assert_eq!(s.push(&crab[1..3]), "");
        assert_eq!(s.push(&crab[3..]), "🦀");
    }

    #[test]
    fn text_before_a_split_char_is_emitted_at_once() {
        let bytes = "ab é".as_bytes();
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(&bytes[..4]), "ab ");
        assert_eq!(s.push(&bytes[4..]), "é");
    }

    #[test]
    fn every_split_point_reassembles_the_text() {
        let text = "naïve 日本語 🦀 ok";
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let mut s = Utf8Stream::default();
            let mut got = s.push(&bytes[..cut]);
            got.push_str(&s.push(&bytes[cut..]));
            got.push_str(&s.finish());
            assert_eq!(got, text, "cut at {cut}");
        }
        let mut s = Utf8Stream::default();
        let got: String = bytes.iter().map(|b| s.push(&[*b])).collect();
        assert_eq!(got, text);
    }

    #[test]
    fn invalid_bytes_become_replacement_chars() {
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(b"a\xffb"), "a\u{fffd}b");
        // A lone continuation byte is invalid, not incomplete.
        assert_eq!(s.push(b"\x80c"), "\u{fffd}c");
    }

    #[test]
    fn incomplete_tail_at_end_is_replaced_on_finish() {
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(&"é".as_bytes()[..1]), "");
        assert_eq!(s.finish(), "\u{fffd}");
        assert_eq!(s.finish(), "");
    }
}
