//! Deterministic CBOR (RFC 8949 §4.2.1), the one encoding of everything moxnet hashes or signs.
//!
//! The encoder always produces the *core deterministic* form:
//! - integers, lengths and tags use the shortest head;
//! - no indefinite-length items;
//! - map keys are sorted by the bytewise order of their encodings, and unique;
//! - floats use the shortest of half/single/double precision that keeps the value exactly;
//!   NaN is always `0xf97e00`.
//!
//! The decoder is *strict*: it accepts only bytes the encoder could have produced, so
//! `encode(decode(b)) == b` for every accepted `b`. It never panics and bounds what it builds:
//! a length is checked against the bytes that remain, at most [`MAX_PREALLOC`] items are reserved
//! ahead of the items themselves (a count is the sender's claim), a decode builds at most
//! [`MAX_VALUES`] items in all (a `Value` is 32 bytes or more, so a 16 MiB frame of one-byte
//! items would otherwise become half a GiB), nesting deeper than [`MAX_DEPTH`] is refused, and
//! tags, `undefined` and other simple values moxnet does not use are rejected.

use crate::DecodeError;

/// Deepest nesting of arrays and maps the decoder accepts.
pub const MAX_DEPTH: usize = 16;
/// Most items (of any kind, at any depth) one decode builds: enough for a manifest listing
/// [`crate::MAX_FILES`] files (7 items each), about 64 MiB of decoded values at most.
pub const MAX_VALUES: usize = 1 << 20;
/// Most array or map entries reserved before they are read.
pub const MAX_PREALLOC: usize = 1024;

/// A CBOR data item, restricted to the kinds moxnet uses.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Major type 0: an unsigned integer.
    Uint(u64),
    /// Major type 1: the integer `-1 - n`.
    Nint(u64),
    /// Major type 2: a byte string.
    Bytes(Vec<u8>),
    /// Major type 3: a UTF-8 text string.
    Text(String),
    /// Major type 4: an array.
    Array(Vec<Value>),
    /// Major type 5: a map. Order here does not matter; the encoder sorts.
    Map(Vec<(Value, Value)>),
    /// Simple values 20 and 21.
    Bool(bool),
    /// Simple value 22.
    Null,
    /// Major type 7 floats (half, single or double on the wire).
    Float(f64),
}

impl Value {
    /// A text value.
    pub fn text(s: impl Into<String>) -> Value {
        Value::Text(s.into())
    }

    /// Encodes this value in deterministic form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Appends the deterministic encoding of this value to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Value::Uint(n) => head(out, 0, *n),
            Value::Nint(n) => head(out, 1, *n),
            Value::Bytes(b) => {
                head(out, 2, b.len() as u64);
                out.extend_from_slice(b);
            }
            Value::Text(s) => {
                head(out, 3, s.len() as u64);
                out.extend_from_slice(s.as_bytes());
            }
            Value::Array(items) => {
                head(out, 4, items.len() as u64);
                for item in items {
                    item.encode_into(out);
                }
            }
            Value::Map(entries) if entries.iter().all(|(k, _)| matches!(k, Value::Text(_))) => {
                // Text keys (every map of the protocol): encoded, they order by length, then
                // bytewise, so they are sorted without encoding them first.
                fn key<'a>(e: &&'a (Value, Value)) -> (usize, &'a [u8]) {
                    match &e.0 {
                        Value::Text(k) => (k.len(), k.as_bytes()),
                        _ => (0, &[]),
                    }
                }
                let mut sorted: Vec<&(Value, Value)> = entries.iter().collect();
                sorted.sort_by(|a, b| key(a).cmp(&key(b)));
                sorted.dedup_by(|a, b| key(a) == key(b));
                head(out, 5, sorted.len() as u64);
                for (k, v) in sorted {
                    k.encode_into(out);
                    v.encode_into(out);
                }
            }
            Value::Map(entries) => {
                let mut encoded: Vec<(Vec<u8>, Vec<u8>)> = entries
                    .iter()
                    .map(|(k, v)| (k.encode(), v.encode()))
                    .collect();
                encoded.sort_by(|a, b| a.0.cmp(&b.0));
                encoded.dedup_by(|a, b| a.0 == b.0);
                head(out, 5, encoded.len() as u64);
                for (k, v) in encoded {
                    out.extend_from_slice(&k);
                    out.extend_from_slice(&v);
                }
            }
            Value::Bool(false) => out.push(0xf4),
            Value::Bool(true) => out.push(0xf5),
            Value::Null => out.push(0xf6),
            Value::Float(x) => encode_float(out, *x),
        }
    }

    /// Decodes exactly one value from `bytes`, strictly (see the module docs).
    ///
    /// `max_len` bounds the input; longer input is rejected before any parsing.
    pub fn decode(bytes: &[u8], max_len: usize) -> Result<Value, DecodeError> {
        if bytes.len() > max_len {
            return Err(DecodeError::TooLarge {
                limit: max_len,
                actual: bytes.len(),
            });
        }
        let mut dec = Decoder {
            bytes,
            pos: 0,
            values: 0,
        };
        let value = dec.value(0)?;
        if dec.pos != bytes.len() {
            return Err(DecodeError::TrailingBytes {
                extra: bytes.len() - dec.pos,
            });
        }
        Ok(value)
    }
}

/// Appends the head of a data item of major type `major` (0–7) with argument `n`, in the
/// shortest form (for writers that stream items without building a [`Value`]).
pub fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if n <= u8::MAX as u64 {
        out.push(m | 24);
        out.push(n as u8);
    } else if n <= u16::MAX as u64 {
        out.push(m | 25);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= u32::MAX as u64 {
        out.push(m | 26);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn encode_float(out: &mut Vec<u8>, x: f64) {
    if x.is_nan() {
        out.extend_from_slice(&[0xf9, 0x7e, 0x00]);
        return;
    }
    let h = half::f16::from_f64(x);
    if h.to_f64() == x {
        out.push(0xf9);
        out.extend_from_slice(&h.to_bits().to_be_bytes());
        return;
    }
    let s = x as f32;
    if s as f64 == x {
        out.push(0xfa);
        out.extend_from_slice(&s.to_bits().to_be_bytes());
        return;
    }
    out.push(0xfb);
    out.extend_from_slice(&x.to_bits().to_be_bytes());
}

struct Decoder<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Items built so far (see [`MAX_VALUES`]).
    values: usize,
}

impl Decoder<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let slice = self
            .bytes
            .get(self.pos..end)
            .ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(slice)
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// Reads the argument of a head whose additional info is `ai`, insisting on the shortest form.
    fn argument(&mut self, ai: u8) -> Result<u64, DecodeError> {
        let (n, min) = match ai {
            0..=23 => return Ok(ai as u64),
            24 => (self.take(1)?[0] as u64, 24),
            25 => (be(self.take(2)?), 1 << 8),
            26 => (be(self.take(4)?), 1 << 16),
            27 => (be(self.take(8)?), 1 << 32),
            31 => return Err(DecodeError::NotCanonical("indefinite-length item")),
            _ => return Err(DecodeError::NotCanonical("reserved additional information")),
        };
        if n < min {
            return Err(DecodeError::NotCanonical(
                "integer or length not in shortest form",
            ));
        }
        Ok(n)
    }

    /// A length that must fit in what remains (each item takes at least one byte).
    fn length(&mut self, ai: u8) -> Result<usize, DecodeError> {
        let n = self.argument(ai)?;
        if n > self.remaining() as u64 {
            return Err(DecodeError::Truncated);
        }
        Ok(n as usize)
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep { limit: MAX_DEPTH });
        }
        self.values += 1;
        if self.values > MAX_VALUES {
            return Err(DecodeError::TooManyItems { limit: MAX_VALUES });
        }
        let initial = self.take(1)?[0];
        let (major, ai) = (initial >> 5, initial & 0x1f);
        match major {
            0 => Ok(Value::Uint(self.argument(ai)?)),
            1 => Ok(Value::Nint(self.argument(ai)?)),
            2 => {
                let n = self.length(ai)?;
                Ok(Value::Bytes(self.take(n)?.to_vec()))
            }
            3 => {
                let n = self.length(ai)?;
                let raw = self.take(n)?;
                let s = std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8)?;
                Ok(Value::Text(s.to_owned()))
            }
            4 => {
                let n = self.length(ai)?;
                let mut items = Vec::with_capacity(n.min(MAX_PREALLOC));
                for _ in 0..n {
                    items.push(self.value(depth + 1)?);
                }
                Ok(Value::Array(items))
            }
            5 => {
                let n = self.length(ai)?;
                let mut entries = Vec::with_capacity(n.min(MAX_PREALLOC));
                let mut previous_key: Option<&[u8]> = None;
                let bytes = self.bytes;
                for _ in 0..n {
                    let key_start = self.pos;
                    let key = self.value(depth + 1)?;
                    let key_bytes = &bytes[key_start..self.pos];
                    if let Some(prev) = previous_key
                        && prev >= key_bytes
                    {
                        return Err(DecodeError::NotCanonical(
                            "map keys not in strictly ascending order",
                        ));
                    }
                    previous_key = Some(key_bytes);
                    let value = self.value(depth + 1)?;
                    entries.push((key, value));
                }
                Ok(Value::Map(entries))
            }
            6 => Err(DecodeError::Unsupported("tags")),
            _ => self.simple(ai),
        }
    }

    fn simple(&mut self, ai: u8) -> Result<Value, DecodeError> {
        match ai {
            20 => Ok(Value::Bool(false)),
            21 => Ok(Value::Bool(true)),
            22 => Ok(Value::Null),
            25 => {
                let bits = be(self.take(2)?) as u16;
                let x = half::f16::from_bits(bits).to_f64();
                if x.is_nan() && bits != 0x7e00 {
                    return Err(DecodeError::NotCanonical("NaN must be encoded as 0xf97e00"));
                }
                Ok(Value::Float(x))
            }
            26 => {
                let x = f32::from_bits(be(self.take(4)?) as u32) as f64;
                check_shortest_float(x, 4)?;
                Ok(Value::Float(x))
            }
            27 => {
                let x = f64::from_bits(be(self.take(8)?));
                check_shortest_float(x, 8)?;
                Ok(Value::Float(x))
            }
            _ => Err(DecodeError::Unsupported("simple value")),
        }
    }
}

fn check_shortest_float(x: f64, width: usize) -> Result<(), DecodeError> {
    let mut canonical = Vec::with_capacity(9);
    encode_float(&mut canonical, x);
    if canonical.len() != width + 1 {
        return Err(DecodeError::NotCanonical(
            "float not in shortest exact form",
        ));
    }
    Ok(())
}

fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, b| (acc << 8) | *b as u64)
}

/// Typed access to the entries of a decoded map whose keys are text.
///
/// Every field must be taken; [`MapReader::finish`] rejects any key left over, so an object never
/// silently drops data it did not understand.
#[derive(Debug)]
pub struct MapReader {
    what: &'static str,
    entries: Vec<(String, Value)>,
}

impl MapReader {
    /// Starts reading `value`, which must be a map with text keys; `what` names it in errors.
    pub fn new(what: &'static str, value: Value) -> Result<Self, DecodeError> {
        let Value::Map(raw) = value else {
            return Err(DecodeError::invalid(what, "expected a map"));
        };
        let mut entries = Vec::with_capacity(raw.len());
        for (k, v) in raw {
            let Value::Text(k) = k else {
                return Err(DecodeError::invalid(what, "map keys must be text"));
            };
            entries.push((k, v));
        }
        Ok(MapReader { what, entries })
    }

    /// Takes an optional field.
    pub fn optional(&mut self, key: &str) -> Option<Value> {
        let idx = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.swap_remove(idx).1)
    }

    /// Takes a required field.
    pub fn required(&mut self, key: &str) -> Result<Value, DecodeError> {
        self.optional(key)
            .ok_or_else(|| DecodeError::invalid(self.what, format!("missing field `{key}`")))
    }

    /// Takes the `v` field and checks it equals `supported`.
    pub fn version(&mut self, supported: u64) -> Result<(), DecodeError> {
        let found = as_u64(self.what, self.required("v")?)?;
        if found != supported {
            return Err(DecodeError::UnsupportedVersion {
                what: self.what,
                found,
                supported,
            });
        }
        Ok(())
    }

    /// Ends reading; fails if a field was not taken.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.entries.first() {
            None => Ok(()),
            Some((k, _)) => Err(DecodeError::invalid(
                self.what,
                format!("unknown field `{k}`"),
            )),
        }
    }
}

/// Expects an unsigned integer.
pub fn as_u64(what: &'static str, v: Value) -> Result<u64, DecodeError> {
    match v {
        Value::Uint(n) => Ok(n),
        _ => Err(DecodeError::invalid(what, "expected an unsigned integer")),
    }
}

/// Expects a text string no longer than `max` bytes.
pub fn as_text(what: &'static str, v: Value, max: usize) -> Result<String, DecodeError> {
    match v {
        Value::Text(s) if s.len() <= max => Ok(s),
        Value::Text(s) => Err(DecodeError::invalid(
            what,
            format!("text of {} bytes exceeds the limit of {max}", s.len()),
        )),
        _ => Err(DecodeError::invalid(what, "expected text")),
    }
}

/// Expects a byte string of exactly `N` bytes.
pub fn as_array<const N: usize>(what: &'static str, v: Value) -> Result<[u8; N], DecodeError> {
    match v {
        Value::Bytes(b) => b
            .try_into()
            .map_err(|_| DecodeError::invalid(what, format!("expected {N} bytes"))),
        _ => Err(DecodeError::invalid(what, "expected a byte string")),
    }
}

/// Expects an array of at most `max` items and converts each with `f`.
pub fn as_list<T>(
    what: &'static str,
    v: Value,
    max: usize,
    f: impl FnMut(Value) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    match v {
        Value::Array(items) if items.len() <= max => items.into_iter().map(f).collect(),
        Value::Array(items) => Err(DecodeError::invalid(
            what,
            format!("{} items exceed the limit of {max}", items.len()),
        )),
        _ => Err(DecodeError::invalid(what, "expected an array")),
    }
}

/// Expects a float; integers are not accepted in its place (one value, one encoding).
pub fn as_f64(what: &'static str, v: Value) -> Result<f64, DecodeError> {
    match v {
        Value::Float(x) => Ok(x),
        _ => Err(DecodeError::invalid(what, "expected a float")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(v: &Value) -> String {
        hex::encode(v.encode())
    }

    #[test]
    fn rfc8949_appendix_a_examples() {
        // Examples from RFC 8949 Appendix A that are already in deterministic form.
        assert_eq!(hex(&Value::Uint(0)), "00");
        assert_eq!(hex(&Value::Uint(23)), "17");
        assert_eq!(hex(&Value::Uint(24)), "1818");
        assert_eq!(hex(&Value::Uint(1000)), "1903e8");
        assert_eq!(hex(&Value::Uint(1_000_000)), "1a000f4240");
        assert_eq!(hex(&Value::Uint(u64::MAX)), "1bffffffffffffffff");
        assert_eq!(hex(&Value::Nint(0)), "20");
        assert_eq!(hex(&Value::Nint(999)), "3903e7");
        assert_eq!(hex(&Value::Float(0.0)), "f90000");
        assert_eq!(hex(&Value::Float(-0.0)), "f98000");
        assert_eq!(hex(&Value::Float(1.5)), "f93e00");
        assert_eq!(hex(&Value::Float(100000.0)), "fa47c35000");
        assert_eq!(hex(&Value::Float(1.1)), "fb3ff199999999999a");
        assert_eq!(hex(&Value::Float(f64::INFINITY)), "f97c00");
        assert_eq!(hex(&Value::Float(f64::NAN)), "f97e00");
        assert_eq!(hex(&Value::Bool(true)), "f5");
        assert_eq!(hex(&Value::Null), "f6");
        assert_eq!(hex(&Value::text("IETF")), "6449455446");
        assert_eq!(hex(&Value::Bytes(vec![1, 2, 3, 4])), "4401020304");
        let map = Value::Map(vec![
            (Value::text("b"), Value::Uint(2)),
            (Value::text("a"), Value::Uint(1)),
        ]);
        assert_eq!(hex(&map), "a2616101616202");
    }

    #[test]
    fn map_keys_sort_by_encoded_bytes_shorter_first() {
        let map = Value::Map(vec![
            (Value::text("aa"), Value::Uint(1)),
            (Value::text("b"), Value::Uint(2)),
        ]);
        // "b" (0x6162) sorts before "aa" (0x626161) because its head is smaller.
        assert_eq!(hex(&map), "a261620262616101");
    }

    #[test]
    fn decoder_rejects_non_canonical_forms() {
        let bad: &[(&str, &str)] = &[
            ("1817", "non-shortest integer"),
            ("190017", "non-shortest integer"),
            ("5f4101ff", "indefinite bytes"),
            ("a2616202616101", "unsorted map keys"),
            ("a2616101616102", "duplicate map key"),
            ("fa3fc00000", "float that fits in half"),
            ("fb3ff8000000000000", "double that fits in half"),
            ("f97e01", "non-canonical NaN"),
            ("c11a514b67b0", "tag"),
            ("f7", "undefined"),
            ("62c328", "invalid utf-8"),
            ("0000", "trailing bytes"),
            ("5bffffffffffffffff", "length beyond input"),
            ("9b00000000ffffffff", "array length beyond input"),
        ];
        for (input, why) in bad {
            let bytes = hex::decode(input).expect("test hex");
            assert!(
                Value::decode(&bytes, 1024).is_err(),
                "accepted {why}: {input}"
            );
        }
    }

    #[test]
    fn decoder_enforces_depth_and_size() {
        let mut nested = Value::Uint(1);
        for _ in 0..=MAX_DEPTH {
            nested = Value::Array(vec![nested]);
        }
        let bytes = nested.encode();
        assert!(matches!(
            Value::decode(&bytes, 1024),
            Err(DecodeError::TooDeep { .. })
        ));
        assert!(matches!(
            Value::decode(&[0; 10], 9),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn arb_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                any::<u64>().prop_map(Value::Uint),
                any::<u64>().prop_map(Value::Nint),
                proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
                ".{0,20}".prop_map(Value::Text),
                any::<bool>().prop_map(Value::Bool),
                Just(Value::Null),
                any::<f64>().prop_map(Value::Float),
                any::<f32>().prop_map(|f| Value::Float(f as f64)),
            ];
            leaf.prop_recursive(4, 64, 8, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                    proptest::collection::vec((".{0,6}".prop_map(Value::Text), inner), 0..8)
                        .prop_map(Value::Map),
                ]
            })
        }

        proptest! {
            #[test]
            fn encode_decode_encode_is_identity(v in arb_value()) {
                let bytes = v.encode();
                let decoded = Value::decode(&bytes, usize::MAX).expect("own encoding decodes");
                prop_assert_eq!(decoded.encode(), bytes);
            }

            /// Text-keyed maps are sorted without encoding their keys: the same bytes as
            /// sorting the encoded keys (duplicates: the first one stays).
            #[test]
            fn text_keys_sort_as_their_encodings(
                entries in proptest::collection::vec(("[a-c]{0,3}|.{20,30}", arb_value()), 0..12)
            ) {
                let map: Vec<(Value, Value)> =
                    entries.into_iter().map(|(k, v)| (Value::Text(k), v)).collect();
                let mut encoded: Vec<(Vec<u8>, Vec<u8>)> =
                    map.iter().map(|(k, v)| (k.encode(), v.encode())).collect();
                encoded.sort_by(|a, b| a.0.cmp(&b.0));
                encoded.dedup_by(|a, b| a.0 == b.0);
                let mut expected = Vec::new();
                head(&mut expected, 5, encoded.len() as u64);
                for (k, v) in encoded {
                    expected.extend_from_slice(&k);
                    expected.extend_from_slice(&v);
                }
                prop_assert_eq!(Value::Map(map).encode(), expected);
            }

            #[test]
            fn decoder_never_panics_and_accepts_only_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                if let Ok(v) = Value::decode(&bytes, 1 << 20) {
                    prop_assert_eq!(v.encode(), bytes);
                }
            }
        }
    }
}
