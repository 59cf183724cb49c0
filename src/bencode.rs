//! Layer 1: bencode (BEP 3) decoder and encoder.
//!
//! The decoder borrows from its input (`Value<'a>` holds slices of it) and enforces named caps
//! on nesting depth and on the number of values, so hostile input cannot exhaust the stack or
//! the heap: every allocation it makes is bounded by `MAX_VALUES` entries and by the input
//! length. Integers follow the strict rules of the spec (no leading zeros, no `-0`, no empty
//! digits, must fit an i64). Dictionary keys keep their input order, so `encode(decode(x)) == x`
//! for every input that decodes; key order is not enforced because real torrents break it.
//!
//! `raw_dict_value` returns the exact bytes of one key's value inside a dictionary: the
//! info-hash is SHA-1 of those bytes, never of a re-encoding.

use std::fmt;

/// Deepest nesting accepted. Real torrents, tracker replies and KRPC use fewer than 8 levels.
pub const MAX_DEPTH: usize = 64;
/// Most values (ints, strings, lists, dicts) in one document. A 100k-file torrent needs about
/// 600k; this bounds the decoder's heap to a few tens of MiB in the worst case.
pub const MAX_VALUES: usize = 2_000_000;

#[derive(Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Int(i64),
    Bytes(&'a [u8]),
    List(Vec<Value<'a>>),
    Dict(Vec<(&'a [u8], Value<'a>)>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    UnexpectedEnd,
    UnexpectedByte(u8),
    BadInt,
    BadLength,
    TooDeep,
    TooManyValues,
    TrailingData,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub offset: usize,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ErrorKind::UnexpectedEnd => "unexpected end of data".to_string(),
            ErrorKind::UnexpectedByte(b) => format!("unexpected byte 0x{b:02x}"),
            ErrorKind::BadInt => "malformed integer".to_string(),
            ErrorKind::BadLength => "malformed string length".to_string(),
            ErrorKind::TooDeep => format!("nesting deeper than {MAX_DEPTH}"),
            ErrorKind::TooManyValues => format!("more than {MAX_VALUES} values"),
            ErrorKind::TrailingData => "trailing data after value".to_string(),
        };
        write!(f, "bencode: {what} at offset {}", self.offset)
    }
}

impl std::error::Error for Error {}

impl<'a> fmt::Debug for Value<'a> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) if b.len() <= 64 => write!(f, "{s:?}"),
                _ => write!(f, "<{} bytes>", b.len()),
            },
            Value::List(l) => f.debug_list().entries(l).finish(),
            Value::Dict(d) => {
                let mut m = f.debug_map();
                for (k, v) in d {
                    m.entry(&String::from_utf8_lossy(k), v);
                }
                m.finish()
            }
        }
    }
}

impl<'a> Value<'a> {
    /// Looks a key up in a dictionary (first match); `None` for other kinds.
    pub fn get(&self, key: &[u8]) -> Option<&Value<'a>> {
        match self {
            Value::Dict(d) => d.iter().find(|(k, _)| *k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&'a str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }
    pub fn as_list(&self) -> Option<&[Value<'a>]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }
    pub fn as_dict(&self) -> Option<&[(&'a [u8], Value<'a>)]> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }
}

/// Decodes one complete document; trailing bytes are an error.
pub fn decode(buf: &[u8]) -> Result<Value<'_>, Error> {
    let (v, used) = decode_prefix(buf)?;
    if used != buf.len() {
        return Err(Error {
            kind: ErrorKind::TrailingData,
            offset: used,
        });
    }
    Ok(v)
}

/// Decodes one value at the start of `buf` and returns it with the number of bytes it used
/// (ut_metadata data messages carry raw bytes after the bencoded dictionary).
pub fn decode_prefix(buf: &[u8]) -> Result<(Value<'_>, usize), Error> {
    let mut d = Decoder {
        buf,
        pos: 0,
        values: 0,
    };
    let v = d.value(0)?;
    Ok((v, d.pos))
}

/// The raw bytes of `key`'s value in the top-level dictionary `buf` (which must decode).
pub fn raw_dict_value<'a>(buf: &'a [u8], key: &[u8]) -> Result<Option<&'a [u8]>, Error> {
    Ok(raw_dict_range(buf, key)?.map(|r| &buf[r]))
}

/// Where `key`'s raw value lies in the top-level dictionary `buf` (which must decode); the
/// first match, as `Value::get` finds. Lets a caller keep one copy of `buf` and index into it.
pub fn raw_dict_range(buf: &[u8], key: &[u8]) -> Result<Option<std::ops::Range<usize>>, Error> {
    let mut d = Decoder {
        buf,
        pos: 0,
        values: 0,
    };
    if d.peek()? != b'd' {
        return Err(d.err(ErrorKind::UnexpectedByte(buf[0])));
    }
    d.pos += 1;
    let mut found = None;
    loop {
        if d.peek()? == b'e' {
            d.pos += 1;
            break;
        }
        let k = d.bytes()?;
        let start = d.pos;
        d.skip(1)?;
        if k == key && found.is_none() {
            found = Some(start..d.pos);
        }
    }
    if d.pos != buf.len() {
        return Err(d.err(ErrorKind::TrailingData));
    }
    Ok(found)
}

struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    values: usize,
}

impl<'a> Decoder<'a> {
    fn err(&self, kind: ErrorKind) -> Error {
        Error {
            kind,
            offset: self.pos,
        }
    }

    fn peek(&self) -> Result<u8, Error> {
        self.buf
            .get(self.pos)
            .copied()
            .ok_or(self.err(ErrorKind::UnexpectedEnd))
    }

    fn count(&mut self) -> Result<(), Error> {
        self.values += 1;
        if self.values > MAX_VALUES {
            return Err(self.err(ErrorKind::TooManyValues));
        }
        Ok(())
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, Error> {
        if depth >= MAX_DEPTH {
            return Err(self.err(ErrorKind::TooDeep));
        }
        self.count()?;
        match self.peek()? {
            b'i' => Ok(Value::Int(self.int()?)),
            b'0'..=b'9' => Ok(Value::Bytes(self.bytes()?)),
            b'l' => {
                self.pos += 1;
                let mut items = Vec::new();
                while self.peek()? != b'e' {
                    items.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Value::List(items))
            }
            b'd' => {
                self.pos += 1;
                let mut items = Vec::new();
                while self.peek()? != b'e' {
                    if !self.peek()?.is_ascii_digit() {
                        return Err(self.err(ErrorKind::UnexpectedByte(self.peek()?)));
                    }
                    let k = self.bytes()?;
                    let v = self.value(depth + 1)?;
                    items.push((k, v));
                }
                self.pos += 1;
                Ok(Value::Dict(items))
            }
            b => Err(self.err(ErrorKind::UnexpectedByte(b))),
        }
    }

    /// Skips `n` values without building them (same checks as `value`).
    fn skip(&mut self, depth: usize) -> Result<(), Error> {
        if depth >= MAX_DEPTH {
            return Err(self.err(ErrorKind::TooDeep));
        }
        self.count()?;
        match self.peek()? {
            b'i' => self.int().map(|_| ()),
            b'0'..=b'9' => self.bytes().map(|_| ()),
            b'l' => {
                self.pos += 1;
                while self.peek()? != b'e' {
                    self.skip(depth + 1)?;
                }
                self.pos += 1;
                Ok(())
            }
            b'd' => {
                self.pos += 1;
                while self.peek()? != b'e' {
                    if !self.peek()?.is_ascii_digit() {
                        return Err(self.err(ErrorKind::UnexpectedByte(self.peek()?)));
                    }
                    self.bytes()?;
                    self.skip(depth + 1)?;
                }
                self.pos += 1;
                Ok(())
            }
            b => Err(self.err(ErrorKind::UnexpectedByte(b))),
        }
    }

    fn int(&mut self) -> Result<i64, Error> {
        let start = self.pos;
        self.pos += 1; // 'i'
        let rest = &self.buf[self.pos..];
        let end = match rest.iter().position(|&b| b == b'e') {
            Some(e) => e,
            None => {
                self.pos = self.buf.len();
                return Err(self.err(ErrorKind::UnexpectedEnd));
            }
        };
        let digits = &rest[..end];
        let bad = Error {
            kind: ErrorKind::BadInt,
            offset: start,
        };
        let (neg, body) = match digits.first() {
            Some(b'-') => (true, &digits[1..]),
            _ => (false, digits),
        };
        if body.is_empty()
            || body.len() > 19
            || !body.iter().all(u8::is_ascii_digit)
            || (body[0] == b'0' && (body.len() > 1 || neg))
        {
            return Err(bad);
        }
        let mut v: i64 = 0;
        for &c in body {
            let d = (c - b'0') as i64;
            v = v.checked_mul(10).ok_or(bad)?;
            v = if neg {
                v.checked_sub(d).ok_or(bad)?
            } else {
                v.checked_add(d).ok_or(bad)?
            };
        }
        self.pos += end + 1;
        Ok(v)
    }

    fn bytes(&mut self) -> Result<&'a [u8], Error> {
        let start = self.pos;
        let rest = &self.buf[self.pos..];
        let colon = match rest.iter().take(21).position(|&b| b == b':') {
            Some(c) => c,
            None if rest.len() < 21 && rest.iter().all(u8::is_ascii_digit) => {
                return Err(Error {
                    kind: ErrorKind::UnexpectedEnd,
                    offset: self.buf.len(),
                })
            }
            None => {
                return Err(Error {
                    kind: ErrorKind::BadLength,
                    offset: start,
                })
            }
        };
        let digits = &rest[..colon];
        if digits.is_empty()
            || !digits.iter().all(u8::is_ascii_digit)
            || (digits[0] == b'0' && digits.len() > 1)
        {
            return Err(Error {
                kind: ErrorKind::BadLength,
                offset: start,
            });
        }
        let mut len: u64 = 0;
        for &c in digits {
            len = len.saturating_mul(10).saturating_add((c - b'0') as u64);
        }
        let body_start = self.pos + colon + 1;
        let avail = (self.buf.len() - body_start) as u64;
        if len > avail {
            self.pos = self.buf.len();
            return Err(self.err(ErrorKind::UnexpectedEnd));
        }
        let end = body_start + len as usize;
        self.pos = end;
        Ok(&self.buf[body_start..end])
    }
}

/// Appends the canonical encoding of `v` to `out`.
pub fn encode(v: &Value<'_>, out: &mut Vec<u8>) {
    match v {
        Value::Int(i) => put_int(out, *i),
        Value::Bytes(b) => put_bytes(out, b),
        Value::List(l) => {
            out.push(b'l');
            for x in l {
                encode(x, out);
            }
            out.push(b'e');
        }
        Value::Dict(d) => {
            out.push(b'd');
            for (k, x) in d {
                put_bytes(out, k);
                encode(x, out);
            }
            out.push(b'e');
        }
    }
}

pub fn put_int(out: &mut Vec<u8>, i: i64) {
    out.push(b'i');
    out.extend_from_slice(i.to_string().as_bytes());
    out.push(b'e');
}

pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

/// `put_bytes` for a key/value pair whose value is a string.
pub fn put_kv_bytes(out: &mut Vec<u8>, k: &str, v: &[u8]) {
    put_bytes(out, k.as_bytes());
    put_bytes(out, v);
}

/// `put_int` for a key/value pair whose value is an integer.
pub fn put_kv_int(out: &mut Vec<u8>, k: &str, v: i64) {
    put_bytes(out, k.as_bytes());
    put_int(out, v);
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTORS: &[&[u8]] = &[
        b"i0e",
        b"i-42e",
        b"4:spam",
        b"0:",
        b"le",
        b"de",
        b"l4:spami42ee",
        b"d3:cow3:moo4:spaml1:a1:bee",
        b"d4:infod6:lengthi5e4:name1:x12:piece lengthi16384e6:pieces20:aaaaaaaaaaaaaaaaaaaaee",
        b"i9223372036854775807e",
        b"i-9223372036854775808e",
    ];

    #[test]
    fn decode_encode_round_trips() {
        for v in VECTORS {
            let d = decode(v).unwrap();
            let mut out = Vec::new();
            encode(&d, &mut out);
            assert_eq!(&out[..], *v);
        }
    }

    #[test]
    fn decode_rejects_non_canonical_ints() {
        for bad in [
            &b"i-0e"[..],
            b"i03e",
            b"ie",
            b"i-e",
            b"i1x2e",
            b"i9223372036854775808e",
            b"i99999999999999999999e",
            b"01:a",
            b"-1:a",
        ] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn decode_every_truncation_errors() {
        for v in VECTORS {
            for n in 0..v.len() {
                let e = decode(&v[..n]).unwrap_err();
                assert_eq!(e.kind, ErrorKind::UnexpectedEnd, "{:?}", &v[..n]);
            }
        }
    }

    #[test]
    fn decode_caps_depth_and_trailing() {
        let deep: Vec<u8> = std::iter::repeat_n(b'l', 100)
            .chain(std::iter::repeat_n(b'e', 100))
            .collect();
        assert_eq!(decode(&deep).unwrap_err().kind, ErrorKind::TooDeep);
        assert_eq!(decode(b"i1ei2e").unwrap_err().kind, ErrorKind::TrailingData);
        assert_eq!(decode_prefix(b"i1ei2e").unwrap().1, 3);
        assert!(decode(b"d1:ae").is_err());
        assert!(decode(b"di1e1:ae").is_err());
        assert!(decode(b"99999999999999999999999:x").is_err());
    }

    #[test]
    fn raw_dict_value_returns_exact_bytes() {
        let doc = b"d8:announce3:url4:infod4:name1:xe1:zi1ee";
        assert_eq!(
            raw_dict_value(doc, b"info").unwrap(),
            Some(&b"d4:name1:xe"[..])
        );
        assert_eq!(raw_dict_value(doc, b"nope").unwrap(), None);
        assert!(raw_dict_value(b"d4:infod", b"info").is_err());
        assert!(raw_dict_value(b"le", b"info").is_err());
    }

    #[test]
    fn raw_dict_range_points_at_the_value_get_finds() {
        let doc = b"d1:a3:xyz6:pieces4:ABCD1:zi1ee";
        let r = raw_dict_range(doc, b"pieces").unwrap().unwrap();
        assert_eq!(&doc[r.clone()], b"4:ABCD");
        // A string's bytes end its raw encoding: what a caller slices in place.
        let v = decode(doc).unwrap();
        let got = v.get(b"pieces").and_then(Value::as_bytes).unwrap();
        assert_eq!(&doc[r.end - got.len()..r.end], got);
        assert_eq!(raw_dict_range(doc, b"nope").unwrap(), None);
        assert!(raw_dict_range(b"d6:pieces", b"pieces").is_err());
    }

    #[test]
    fn accessors_find_values() {
        let v = decode(b"d1:ai7e1:b2:hi1:lli1eee").unwrap();
        assert_eq!(v.get(b"a").and_then(Value::as_int), Some(7));
        assert_eq!(v.get(b"b").and_then(Value::as_str), Some("hi"));
        assert_eq!(
            v.get(b"l").and_then(Value::as_list).map(|l| l.len()),
            Some(1)
        );
        assert!(v.get(b"zz").is_none());
    }

    #[test]
    fn mutation_sweep_never_panics() {
        let mut rng = crate::rng::Rng::new(7);
        for v in VECTORS {
            for _ in 0..2000 {
                let mut m = v.to_vec();
                let i = rng.below(m.len());
                m[i] = rng.next_u32() as u8;
                if let Ok(d) = decode(&m) {
                    let mut out = Vec::new();
                    encode(&d, &mut out);
                    assert_eq!(out, m);
                }
            }
        }
    }
}
