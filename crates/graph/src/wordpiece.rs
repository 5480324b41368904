//! BERT WordPiece tokenization (uncased), as text models such as all-MiniLM-L6-v2 expect.
//!
//! Follows the reference BERT tokenizer: clean the text (drop control characters, map whitespace
//! to spaces), pad CJK ideographs with spaces, lowercase and strip accents, split on whitespace
//! and punctuation, then split each word greedily into the longest vocabulary pieces (`##`
//! marks a continuation). Without Unicode category tables, punctuation outside ASCII is
//! recognised by block (Latin-1 punctuation, General and Supplemental Punctuation, CJK and
//! full-width punctuation), which covers the text the demo model is meant for.
//!
//! ```
//! let vocab = "[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\nworld\n!\nplay\n##ing\n";
//! let wp = graph::wordpiece::WordPiece::from_vocab(vocab, true).unwrap();
//! assert_eq!(wp.encode("Hello, playing world!", 16), vec![2, 4, 1, 7, 8, 5, 6, 3]);
//! ```

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use crate::Error;

/// Longest word that is split into pieces; longer ones become `[UNK]`.
const MAX_WORD_CHARS: usize = 100;

/// A WordPiece vocabulary and the rules to apply it.
#[derive(Debug, Clone)]
pub struct WordPiece {
    vocab: Vocab,
    unk: i64,
    cls: i64,
    sep: i64,
    lowercase: bool,
}

impl WordPiece {
    /// Reads a `vocab.txt`: one token per line, the line number is its id. It must hold
    /// `[UNK]`, `[CLS]` and `[SEP]`.
    pub fn from_vocab(text: impl Into<String>, lowercase: bool) -> Result<WordPiece, Error> {
        let vocab = Vocab::new(text.into())?;
        let id = |t: &str| {
            vocab
                .get(t)
                .ok_or_else(|| Error::Load(format!("the vocabulary has no {t} token")))
        };
        Ok(WordPiece {
            unk: id("[UNK]")?,
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            vocab,
            lowercase,
        })
    }

    /// The id of `[PAD]`, or 0.
    pub fn pad(&self) -> i64 {
        self.vocab.get("[PAD]").unwrap_or(0)
    }

    /// Token ids for `text`: `[CLS]`, the pieces, `[SEP]`; at most `max_tokens` in all
    /// (pieces beyond it are dropped, `[SEP]` stays).
    pub fn encode(&self, text: &str, max_tokens: usize) -> Vec<i64> {
        let mut ids = vec![self.cls];
        let room = max_tokens.saturating_sub(2);
        'words: for word in self.words(text) {
            for id in self.pieces(&word) {
                if ids.len() > room {
                    break 'words;
                }
                ids.push(id);
            }
        }
        ids.push(self.sep);
        ids
    }

    fn words(&self, text: &str) -> Vec<String> {
        let mut cleaned = String::with_capacity(text.len());
        for c in text.chars() {
            if c == '\0' || c == '\u{fffd}' || is_control(c) {
                continue;
            }
            if c.is_whitespace() {
                cleaned.push(' ');
            } else if is_cjk(c) {
                cleaned.push(' ');
                cleaned.push(c);
                cleaned.push(' ');
            } else {
                cleaned.push(c);
            }
        }
        let normal: String = if self.lowercase {
            cleaned
                .to_lowercase()
                .nfd()
                .filter(|c| !is_combining_mark(*c))
                .collect()
        } else {
            cleaned
        };
        let mut words = Vec::new();
        for chunk in normal.split(' ').filter(|w| !w.is_empty()) {
            let mut word = String::new();
            for c in chunk.chars() {
                if is_punctuation(c) {
                    if !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    words.push(c.to_string());
                } else {
                    word.push(c);
                }
            }
            if !word.is_empty() {
                words.push(word);
            }
        }
        words
    }

    fn pieces(&self, word: &str) -> Vec<i64> {
        let chars: Vec<char> = word.chars().collect();
        if chars.len() > MAX_WORD_CHARS {
            return vec![self.unk];
        }
        let mut out = Vec::new();
        let mut start = 0;
        while start < chars.len() {
            let mut end = chars.len();
            let mut found = None;
            while start < end {
                let mut piece: String = chars[start..end].iter().collect();
                if start > 0 {
                    piece.insert_str(0, "##");
                }
                if let Some(id) = self.vocab.get(&piece) {
                    found = Some(id);
                    break;
                }
                end -= 1;
            }
            match found {
                Some(id) => out.push(id),
                None => return vec![self.unk],
            }
            start = end;
        }
        out
    }
}

/// Token → id, built in one pass over the vocabulary's text (a model's instance builds it on
/// every call's fresh instance, so it must be cheap: in a wasm guest the text is scanned
/// eight bytes at a time and each token hashed a word at a time): the tokens are slices of the
/// text, found through an open-addressing table of ids, each token's hash kept beside it so
/// that a probe compares bytes only when hashes agree. A token listed twice takes the later
/// line's id.
#[derive(Debug, Clone)]
struct Vocab {
    text: String,
    /// Each id's token, as a byte range of `text`.
    spans: Vec<(u32, u32)>,
    /// Each id's token's [`hash`].
    hashes: Vec<u32>,
    /// 0: empty; else an id + 1. A power of two, at least twice the tokens.
    slots: Vec<u32>,
}

/// Multiplier of the token hash (2^64 / φ).
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// A token's hash: its bytes taken eight at a time (the last word zero-padded), each mixed in
/// by a multiply and a shift, then folded to 32 bits.
fn hash(token: &[u8]) -> u32 {
    let mix = |h: u64, word: u64| {
        let h = (h ^ word).wrapping_mul(GOLDEN);
        h ^ (h >> 29)
    };
    let (words, rest) = token.as_chunks::<8>();
    let mut h = words
        .iter()
        .fold((token.len() as u64).wrapping_mul(GOLDEN), |h, w| {
            mix(h, u64::from_le_bytes(*w))
        });
    if !rest.is_empty() {
        // Composed byte by byte: a copy into a padded buffer would call `memcpy` (in a wasm
        // guest, a call out of the guest), the largest cost of a whole vocabulary's hashing.
        h = mix(h, rest.iter().rev().fold(0, |w, &b| w << 8 | u64::from(b)));
    }
    (h ^ (h >> 32)) as u32
}

/// Where the next `\n` at or after `from` is: eight bytes at a time (a word holds one where
/// `x - 0x01…01 & !x & 0x80…80` is not zero, `x` being the word xor `\n` in every byte; its
/// lowest set bit marks the first).
fn next_newline(bytes: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let rest = bytes.get(from..)?;
    let (words, tail) = rest.as_chunks::<8>();
    for (i, word) in words.iter().enumerate() {
        let x = u64::from_le_bytes(*word) ^ (ONES * u64::from(b'\n'));
        let found = x.wrapping_sub(ONES) & !x & HIGHS;
        if found != 0 {
            return Some(from + i * 8 + (found.trailing_zeros() / 8) as usize);
        }
    }
    let at = from + words.len() * 8;
    tail.iter().position(|&b| b == b'\n').map(|p| at + p)
}

impl Vocab {
    fn new(text: String) -> Result<Vocab, Error> {
        if text.len() >= u32::MAX as usize {
            return Err(Error::Load("the vocabulary is larger than 4 GiB".into()));
        }
        let bytes = text.as_bytes();
        let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        // A guess at the line count (vocabularies' tokens are short), so that little grows.
        let mut spans = Vec::with_capacity(body.len() / 6);
        let mut hashes = Vec::with_capacity(body.len() / 6);
        let mut start = 0;
        while !text.is_empty() && start <= body.len() {
            let end = next_newline(body, start).unwrap_or(body.len());
            let line = &body[start..end];
            let token = match line.iter().rposition(|&b| b != b'\r') {
                Some(last) => &line[..=last],
                None => &[],
            };
            spans.push((start as u32, (start + token.len()) as u32));
            hashes.push(hash(token));
            start = end + 1;
        }
        let mut vocab = Vocab {
            slots: vec![0; (2 * spans.len()).max(16).next_power_of_two()],
            text,
            spans,
            hashes,
        };
        for id in 0..vocab.spans.len() {
            let at = vocab.find_hashed(vocab.token(id).as_bytes(), vocab.hashes[id]);
            vocab.slots[at] = id as u32 + 1;
        }
        Ok(vocab)
    }

    fn token(&self, id: usize) -> &str {
        let (a, b) = self.spans[id];
        &self.text[a as usize..b as usize]
    }

    /// The slot holding `token`, or the empty one where it would go.
    fn find(&self, token: &str) -> usize {
        self.find_hashed(token.as_bytes(), hash(token.as_bytes()))
    }

    /// [`Vocab::find`] for a token whose hash is known.
    fn find_hashed(&self, token: &[u8], hash: u32) -> usize {
        let mask = self.slots.len() - 1;
        let mut at = hash as usize & mask;
        loop {
            match self.slots[at] {
                0 => return at,
                id if self.hashes[id as usize - 1] == hash
                    && self.token(id as usize - 1).as_bytes() == token =>
                {
                    return at;
                }
                _ => at = (at + 1) & mask,
            }
        }
    }

    fn get(&self, token: &str) -> Option<i64> {
        match self.slots[self.find(token)] {
            0 => None,
            id => Some(i64::from(id) - 1),
        }
    }
}

fn is_control(c: char) -> bool {
    if matches!(c, '\t' | '\n' | '\r') {
        return false;
    }
    c.is_control()
        || matches!(c, '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}')
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(c,
            '\u{a1}' | '\u{a7}' | '\u{ab}' | '\u{b6}' | '\u{b7}' | '\u{bb}' | '\u{bf}'
            | '\u{2010}'..='\u{2027}' | '\u{2030}'..='\u{205e}'
            | '\u{2e00}'..='\u{2e7f}' | '\u{3001}'..='\u{3003}' | '\u{3008}'..='\u{3011}'
            | '\u{3014}'..='\u{301f}' | '\u{ff01}'..='\u{ff0f}' | '\u{ff1a}'..='\u{ff20}'
            | '\u{ff3b}'..='\u{ff40}' | '\u{ff5b}'..='\u{ff65}')
}

fn is_cjk(c: char) -> bool {
    matches!(c,
        '\u{4e00}'..='\u{9fff}' | '\u{3400}'..='\u{4dbf}' | '\u{20000}'..='\u{2a6df}'
        | '\u{2a700}'..='\u{2b73f}' | '\u{2b740}'..='\u{2b81f}' | '\u{2b820}'..='\u{2ceaf}'
        | '\u{f900}'..='\u{faff}' | '\u{2f800}'..='\u{2fa1f}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wp() -> WordPiece {
        let vocab = "[PAD]\n[UNK]\n[CLS]\n[SEP]\nun\n##aff\n##able\ncafe\n.\n中\n";
        WordPiece::from_vocab(vocab, true).expect("vocab")
    }

    #[test]
    fn splits_words_into_longest_pieces() {
        assert_eq!(wp().encode("unaffable", 32), vec![2, 4, 5, 6, 3]);
    }

    #[test]
    fn lowercases_strips_accents_and_splits_punctuation() {
        assert_eq!(wp().encode("CAFÉ.", 32), vec![2, 7, 8, 3]);
        assert_eq!(wp().encode("x\u{200b}中", 32), vec![2, 1, 9, 3]);
    }

    #[test]
    fn truncates_but_keeps_sep() {
        assert_eq!(wp().encode("cafe cafe cafe cafe", 4), vec![2, 7, 7, 3]);
        assert_eq!(wp().encode("", 4), vec![2, 3]);
    }

    proptest::proptest! {
        /// The table finds every token as a map built from `str::lines` does (the later line
        /// wins a duplicate), and nothing else.
        #[test]
        fn the_vocabulary_table_agrees_with_a_map(
            tokens in proptest::collection::vec("[a-c#\\[\\]\r]{0,3}|[a-c]{4,19}", 0..64),
            crlf: bool,
            trailing: bool,
            probes in proptest::collection::vec("[a-c#]{0,3}|[a-c]{4,19}", 0..16),
        ) {
            let mut text = tokens.join(if crlf { "\r\n" } else { "\n" });
            if trailing {
                text.push('\n');
            }
            let map: std::collections::HashMap<String, i64> = text
                .lines()
                .enumerate()
                .map(|(i, t)| (t.trim_end_matches('\r').to_string(), i as i64))
                .collect();
            let vocab = Vocab::new(text.clone()).expect("vocab");
            for t in tokens.iter().chain(&probes) {
                proptest::prop_assert_eq!(vocab.get(t), map.get(t).copied(), "{:?} in {:?}", t, text);
            }
        }
    }

    proptest::proptest! {
        /// The word-at-a-time search finds the first newline from any offset, as a byte loop does.
        #[test]
        fn newlines_are_found_as_a_byte_loop_finds_them(
            text in proptest::collection::vec(proptest::prop_oneof![proptest::strategy::Just(b'\n'), proptest::strategy::Just(b'a'), proptest::strategy::Just(0x8a_u8), proptest::strategy::Just(0x0b_u8), proptest::strategy::Just(0x09_u8)], 0..40),
            from in 0usize..45,
        ) {
            let expected = text.get(from..).and_then(|r| r.iter().position(|&b| b == b'\n')).map(|p| p + from);
            proptest::prop_assert_eq!(next_newline(&text, from), expected);
        }
    }

    #[test]
    fn every_byte_of_a_token_is_hashed() {
        for n in 1..=40 {
            let token: Vec<u8> = (0..n as u8).map(|i| b'a' + i % 26).collect();
            for at in 0..n {
                let mut other = token.clone();
                other[at] ^= 0x20;
                assert_ne!(hash(&token), hash(&other), "length {n}, byte {at}");
            }
        }
    }

    #[test]
    fn requires_special_tokens() {
        assert!(WordPiece::from_vocab("a\nb\n", true).is_err());
    }
}
