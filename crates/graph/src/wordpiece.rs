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
    pub fn from_vocab(text: &str, lowercase: bool) -> Result<WordPiece, Error> {
        let vocab = Vocab::new(text)?;
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
/// every call's fresh instance, so it must be cheap): the tokens are slices of one copy of the
/// text, found through an open-addressing table of ids keyed by FNV-1a. A token listed twice
/// takes the later line's id.
#[derive(Debug, Clone)]
struct Vocab {
    text: String,
    /// Each id's token, as a byte range of `text`.
    spans: Vec<(u32, u32)>,
    /// 0: empty; else an id + 1. A power of two, at least twice the tokens.
    slots: Vec<u32>,
}

impl Vocab {
    fn new(text: &str) -> Result<Vocab, Error> {
        if text.len() >= u32::MAX as usize {
            return Err(Error::Load("the vocabulary is larger than 4 GiB".into()));
        }
        let body = text.strip_suffix('\n').unwrap_or(text);
        let mut spans = Vec::new();
        let mut start = 0usize;
        if !text.is_empty() {
            for line in body.split('\n') {
                let token = line.trim_end_matches('\r');
                spans.push((start as u32, (start + token.len()) as u32));
                start += line.len() + 1;
            }
        }
        let mut vocab = Vocab {
            text: text.to_string(),
            slots: vec![0; (2 * spans.len()).max(16).next_power_of_two()],
            spans,
        };
        for id in 0..vocab.spans.len() {
            let at = vocab.find(vocab.token(id));
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
        let mask = self.slots.len() - 1;
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in token.as_bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        let mut at = hash as usize & mask;
        loop {
            match self.slots[at] {
                0 => return at,
                id if self.token(id as usize - 1) == token => return at,
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
            tokens in proptest::collection::vec("[a-c#\\[\\]]{0,3}", 0..64),
            crlf: bool,
            trailing: bool,
            probes in proptest::collection::vec("[a-c#]{0,3}", 0..16),
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
            let vocab = Vocab::new(&text).expect("vocab");
            for t in tokens.iter().chain(&probes) {
                proptest::prop_assert_eq!(vocab.get(t), map.get(t).copied(), "{:?} in {:?}", t, text);
            }
        }
    }

    #[test]
    fn requires_special_tokens() {
        assert!(WordPiece::from_vocab("a\nb\n", true).is_err());
    }
}
