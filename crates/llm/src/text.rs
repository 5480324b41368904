//! Turning a stream of token pieces into the text a user sees: whole UTF-8 characters only,
//! cut at the first stop string (which is never shown).
//!
//! A token's piece may end inside a UTF-8 character (byte-level vocabularies split emoji and
//! CJK characters across tokens), and a stop string may span several tokens. [`Visible`]
//! holds back exactly what it must: an incomplete character, and the longest tail that could
//! still become a stop string. Everything else is released at once, so that tokens stream as
//! they are made. I/O-free.

/// Text released from a stream of pieces.
#[derive(Debug, Clone, Default)]
pub struct Visible {
    stops: Vec<String>,
    /// Bytes of an incomplete UTF-8 character.
    partial: Vec<u8>,
    /// Decoded text not yet released (it may be the start of a stop string).
    held: String,
    stopped: bool,
}

impl Visible {
    /// A stream cut at the first of `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Visible {
        Visible {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            ..Visible::default()
        }
    }

    /// Whether a stop string was met (nothing more is released).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Feeds a piece's bytes; returns the text that can be shown now.
    pub fn push(&mut self, piece: &[u8]) -> String {
        if self.stopped {
            return String::new();
        }
        self.partial.extend_from_slice(piece);
        self.decode();
        self.release(false)
    }

    /// The end of the stream: releases what was held (an incomplete character as U+FFFD).
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        if !self.partial.is_empty() {
            self.held
                .push_str(&String::from_utf8_lossy(&std::mem::take(&mut self.partial)));
        }
        self.release(true)
    }

    /// Moves the complete characters of `partial` into `held` (invalid bytes as U+FFFD).
    fn decode(&mut self) {
        let mut rest: &[u8] = &self.partial;
        let mut out = String::new();
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        // Invalid bytes: replaced, and decoding goes on after them.
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &bad[n..];
                        }
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            rest = bad;
                            break;
                        }
                    }
                }
            }
        }
        self.partial = rest.to_vec();
        self.held.push_str(&out);
    }

    fn release(&mut self, end: bool) -> String {
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s)).min() {
            self.stopped = true;
            self.held.truncate(at);
            return std::mem::take(&mut self.held);
        }
        if end {
            return std::mem::take(&mut self.held);
        }
        // Hold back the longest tail that is a proper prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .map(|s| longest_tail_prefix(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let rest = self.held.split_off(cut);
        std::mem::replace(&mut self.held, rest)
    }
}

/// The length of the longest suffix of `text` that is a proper prefix of `stop`, on character
/// boundaries.
fn longest_tail_prefix(text: &str, stop: &str) -> usize {
    let max = (stop.len() - 1).min(text.len());
    (1..=max)
        .rev()
        .find(|&n| {
            let start = text.len() - n;
            text.is_char_boundary(start) && stop.starts_with(&text[start..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(pieces: &[&[u8]], stops: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut v = Visible::new(&stops);
        let mut out = String::new();
        for p in pieces {
            out += &v.push(p);
        }
        out += &v.finish();
        (out, v.stopped())
    }

    #[test]
    fn characters_split_across_pieces_are_joined() {
        let e = "é😀".as_bytes();
        assert_eq!(run(&[&e[..1], &e[1..3], &e[3..]], &[]).0, "é😀");
        // An incomplete character at the very end is shown as U+FFFD.
        assert_eq!(run(&[b"ok", &[0xF0, 0x9F]], &[]).0, "ok\u{FFFD}");
        assert_eq!(run(&[b"a", &[0xFF], b"b"], &[]).0, "a\u{FFFD}b");
    }

    #[test]
    fn a_stop_string_across_pieces_ends_the_text_without_showing_it() {
        let (out, stopped) = run(&[b"Hello <|im", b"_end|> more"], &["<|im_end|>"]);
        assert_eq!(out, "Hello ");
        assert!(stopped);
        // A tail that only looks like a stop string is released at the end.
        assert_eq!(
            run(&[b"Hello <|im"], &["<|im_end|>"]),
            ("Hello <|im".into(), false)
        );
    }

    #[test]
    fn text_is_released_as_soon_as_it_cannot_start_a_stop_string() {
        let mut v = Visible::new(&["END".to_string()]);
        assert_eq!(v.push(b"abc E"), "abc ");
        assert_eq!(v.push(b"x"), "Ex");
        assert_eq!(v.push(b" EN"), " ");
        assert_eq!(v.push(b"D!"), "");
        assert!(v.stopped());
    }

    proptest! {
        #[test]
        fn any_split_shows_the_text_up_to_the_first_stop(
            text in "[a-cé😀 ]{0,40}",
            stop in "[a-c😀]{1,3}",
            cuts in proptest::collection::vec(0usize..200, 0..10),
        ) {
            let bytes = text.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut last = 0;
            for c in cuts {
                pieces.push(&bytes[last..c]);
                last = c;
            }
            pieces.push(&bytes[last..]);
            let (out, stopped) = run(&pieces, &[stop.as_str()]);
            let expected = text.find(&stop).map_or(text.as_str(), |i| &text[..i]);
            prop_assert_eq!(out, expected);
            prop_assert_eq!(stopped, text.contains(&stop));
        }
    }
}
