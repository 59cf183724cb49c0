//! Layer 1: magnet URIs (BEP 9 "magnet URI format", BEP 53 select-only) to and from `Magnet`.
//!
//! A magnet link names a torrent by its v1 info-hash (`xt=urn:btih:`, 40 hex digits or 32
//! base32 characters) and may add a display name (`dn`), trackers (`tr`), peer addresses
//! (`x.pe`) and the file indices to download (`so`). The link is user input from anywhere:
//! every count is capped and nothing panics. Pure: no I/O, no clock.

use crate::hash::{self, Digest};
use std::fmt;

/// Longest URI accepted. Real magnets are a few hundred bytes to a few KiB (many trackers).
pub const MAX_URI_BYTES: usize = 64 * 1024;
/// Most `tr` trackers kept; real magnets carry a few dozen at most.
pub const MAX_TRACKERS: usize = 100;
/// Most `x.pe` peers kept; they only seed the first connections.
pub const MAX_PEERS: usize = 100;
/// Most `so` ranges; each becomes per-file selection work after the metadata arrives.
pub const MAX_SELECT_RANGES: usize = 1000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Magnet {
    pub info_hash: Digest,
    pub name: Option<String>,
    pub trackers: Vec<String>,
    /// BEP 9 `x.pe` peer addresses, `host:port` as written.
    pub peers: Vec<String>,
    /// BEP 53 `so`: inclusive, zero-based file index ranges to download.
    pub select_only: Option<Vec<(u32, u32)>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MagnetError {
    NotMagnet,
    TooLong(usize),
    MissingInfoHash,
    V2Only,
    BadInfoHash(String),
    ConflictingInfoHashes,
    BadSelectOnly(String),
    TooManySelectRanges,
}

impl fmt::Display for MagnetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use MagnetError::*;
        f.write_str("magnet: ")?;
        match self {
            NotMagnet => f.write_str("link does not start with 'magnet:?'"),
            TooLong(n) => write!(f, "link is {n} bytes, longer than {MAX_URI_BYTES}"),
            MissingInfoHash => f.write_str("no 'xt=urn:btih:' info-hash"),
            V2Only => f.write_str("v2-only magnet not supported (urn:btmh without urn:btih)"),
            BadInfoHash(h) => write!(
                f,
                "info-hash {h:?} is neither 40 hex digits nor 32 base32 characters"
            ),
            ConflictingInfoHashes => f.write_str("several different 'urn:btih' info-hashes"),
            BadSelectOnly(s) => write!(f, "malformed 'so' value {s:?}"),
            TooManySelectRanges => {
                write!(f, "more than {MAX_SELECT_RANGES} 'so' ranges")
            }
        }
    }
}

impl std::error::Error for MagnetError {}

/// Parses a magnet URI. Unknown parameters are ignored; so are unusable trackers and peers.
pub fn parse(uri: &str) -> Result<Magnet, MagnetError> {
    use MagnetError as E;
    if uri.len() > MAX_URI_BYTES {
        return Err(E::TooLong(uri.len()));
    }
    let uri = uri.trim();
    let query = strip_prefix_ci(uri, "magnet:?").ok_or(E::NotMagnet)?;
    let mut info_hash: Option<Digest> = None;
    let mut saw_btmh = false;
    let mut name = None;
    let mut trackers: Vec<String> = Vec::new();
    let mut peers: Vec<String> = Vec::new();
    let mut select: Option<Vec<(u32, u32)>> = None;
    for param in query.split('&') {
        let Some((key, value)) = param.split_once('=') else {
            continue;
        };
        // Links copied out of HTML often keep the `&amp;` entity.
        let key = key.strip_prefix("amp;").unwrap_or(key);
        // The magnet scheme allows numbered repeats such as `xt.1` and `tr.2`.
        let key = match key.split_once('.') {
            Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
            _ => key,
        };
        match key {
            "xt" => {
                let v = percent_decode(value);
                let v = String::from_utf8_lossy(&v);
                if let Some(h) = strip_prefix_ci(&v, "urn:btih:") {
                    let h = decode_hash(h).ok_or_else(|| E::BadInfoHash(h.to_string()))?;
                    match info_hash {
                        Some(prev) if prev != h => return Err(E::ConflictingInfoHashes),
                        _ => info_hash = Some(h),
                    }
                } else if strip_prefix_ci(&v, "urn:btmh:").is_some() {
                    saw_btmh = true;
                }
            }
            "dn" => {
                // BEP 9 follows HTML form encoding here: '+' is a space, "%2B" a plus.
                let v = percent_decode(&value.replace('+', " "));
                name = Some(String::from_utf8_lossy(&v).into_owned());
            }
            "tr" => {
                let v = percent_decode(value);
                if let Ok(url) = String::from_utf8(v) {
                    let url = url.trim().to_string();
                    if !url.is_empty() && trackers.len() < MAX_TRACKERS && !trackers.contains(&url)
                    {
                        trackers.push(url);
                    }
                }
            }
            "x.pe" => {
                let v = percent_decode(value);
                if let Ok(peer) = String::from_utf8(v) {
                    if valid_peer(&peer) && peers.len() < MAX_PEERS && !peers.contains(&peer) {
                        peers.push(peer);
                    }
                }
            }
            "so" => {
                let v = percent_decode(value);
                let v = String::from_utf8_lossy(&v);
                let list = select.get_or_insert_with(Vec::new);
                parse_select(&v, list)?;
            }
            _ => {}
        }
    }
    let info_hash = match info_hash {
        Some(h) => h,
        None if saw_btmh => return Err(E::V2Only),
        None => return Err(E::MissingInfoHash),
    };
    Ok(Magnet {
        info_hash,
        name,
        trackers,
        peers,
        select_only: select,
    })
}

impl Magnet {
    /// Formats the magnet as a URI; `parse(&m.to_uri()) == Ok(m)` for any `m` that `parse`
    /// produced.
    pub fn to_uri(&self) -> String {
        let mut s = format!("magnet:?xt=urn:btih:{}", hash::hex(&self.info_hash));
        if let Some(n) = &self.name {
            s.push_str("&dn=");
            percent_encode(n, &mut s);
        }
        for t in &self.trackers {
            s.push_str("&tr=");
            percent_encode(t, &mut s);
        }
        for p in &self.peers {
            s.push_str("&x.pe=");
            percent_encode(p, &mut s);
        }
        if let Some(sel) = &self.select_only {
            s.push_str("&so=");
            for (i, &(a, b)) in sel.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                if a == b {
                    s.push_str(&a.to_string());
                } else {
                    s.push_str(&format!("{a}-{b}"));
                }
            }
        }
        s
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    match s.get(..prefix.len()) {
        Some(p) if p.eq_ignore_ascii_case(prefix) => s.get(prefix.len()..),
        _ => None,
    }
}

/// 40 hex digits or 32 RFC 4648 base32 characters, either case.
fn decode_hash(s: &str) -> Option<Digest> {
    let b = s.as_bytes();
    let mut out = [0u8; 20];
    match b.len() {
        40 => {
            for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
                let hi = (pair[0] as char).to_digit(16)?;
                let lo = (pair[1] as char).to_digit(16)?;
                *o = (hi * 16 + lo) as u8;
            }
        }
        32 => {
            // 32 symbols of 5 bits are exactly 160 bits: no padding, no leftover bits.
            let mut acc: u64 = 0;
            let mut bits = 0;
            let mut n = 0;
            for &c in b {
                let v = match c.to_ascii_uppercase() {
                    c @ b'A'..=b'Z' => c - b'A',
                    c @ b'2'..=b'7' => c - b'2' + 26,
                    _ => return None,
                };
                acc = (acc << 5) | v as u64;
                bits += 5;
                if bits >= 8 {
                    bits -= 8;
                    *out.get_mut(n)? = (acc >> bits) as u8;
                    acc &= (1 << bits) - 1;
                    n += 1;
                }
            }
        }
        _ => return None,
    }
    Some(out)
}

/// Decodes `%XY` escapes; a '%' not followed by two hex digits is kept as it is (links typed or
/// pasted by hand often contain a bare '%').
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = hex {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Escapes everything except RFC 3986 unreserved characters.
fn percent_encode(s: &str, out: &mut String) {
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// `host:port` with a non-zero port; the host may be a bracketed IPv6 literal.
fn valid_peer(p: &str) -> bool {
    match p.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(char::is_whitespace)
                && matches!(port.parse::<u16>(), Ok(n) if n != 0)
        }
        None => false,
    }
}

/// BEP 53: comma-separated indices or inclusive `a-b` ranges.
fn parse_select(v: &str, list: &mut Vec<(u32, u32)>) -> Result<(), MagnetError> {
    let bad = || MagnetError::BadSelectOnly(v.chars().take(64).collect());
    for item in v.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let num = |s: &str| -> Result<u32, MagnetError> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            s.parse().map_err(|_| bad())
        };
        let range = match item.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let n = num(item)?;
                (n, n)
            }
        };
        if range.0 > range.1 {
            return Err(bad());
        }
        if list.len() >= MAX_SELECT_RANGES {
            return Err(MagnetError::TooManySelectRanges);
        }
        list.push(range);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a";
    const B32: &str = "YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK";

    fn hash() -> Digest {
        let mut h = [0u8; 20];
        for (i, o) in h.iter_mut().enumerate() {
            *o = u8::from_str_radix(&HEX[i * 2..i * 2 + 2], 16).unwrap();
        }
        h
    }

    fn vectors() -> Vec<String> {
        vec![
            format!("magnet:?xt=urn:btih:{HEX}"),
            format!("magnet:?xt=urn:btih:{B32}&dn=a+b%2Bc&tr=udp%3A%2F%2Ft%3A80"),
            format!("magnet:?xt=urn:btih:{HEX}&x.pe=1.2.3.4:6881&so=0,2,4-6"),
        ]
    }

    #[test]
    fn hex_link_parses() {
        let m = parse(&format!("magnet:?xt=urn:btih:{HEX}")).unwrap();
        assert_eq!(
            m,
            Magnet {
                info_hash: hash(),
                name: None,
                trackers: vec![],
                peers: vec![],
                select_only: None
            }
        );
        let upper = parse(&format!("MAGNET:?xt=URN:BTIH:{}", HEX.to_uppercase())).unwrap();
        assert_eq!(upper.info_hash, hash());
    }

    #[test]
    fn base32_link_parses_either_case() {
        for h in [B32.to_string(), B32.to_lowercase()] {
            let m = parse(&format!("magnet:?xt=urn:btih:{h}")).unwrap();
            assert_eq!(m.info_hash, hash());
        }
    }

    #[test]
    fn full_link_decodes_every_field() {
        let uri = format!(
            "magnet:?xt=urn:btih:{HEX}&dn=Some+Name%2B%C3%A9&tr=udp%3A%2F%2Ftracker%3A1337\
             &tr=http://t2/announce&tr=http://t2/announce&tr=&x.pe=10.0.0.1:6881\
             &x.pe=%5B%3A%3A1%5D%3A51413&x.pe=bad&x.pe=h:0&so=0,2,4-6&so=9&zz=ignored&noval"
        );
        let m = parse(&uri).unwrap();
        assert_eq!(m.name.as_deref(), Some("Some Name+é"));
        assert_eq!(m.trackers, vec!["udp://tracker:1337", "http://t2/announce"]);
        assert_eq!(m.peers, vec!["10.0.0.1:6881", "[::1]:51413"]);
        assert_eq!(m.select_only, Some(vec![(0, 0), (2, 2), (4, 6), (9, 9)]));
    }

    #[test]
    fn numbered_and_html_escaped_keys_accepted() {
        let m = parse(&format!(
            "magnet:?xt.1=urn:btih:{HEX}&amp;tr.1=udp://a:1&amp;dn=x"
        ))
        .unwrap();
        assert_eq!(m.info_hash, hash());
        assert_eq!(m.trackers, vec!["udp://a:1"]);
        assert_eq!(m.name.as_deref(), Some("x"));
    }

    #[test]
    fn hybrid_link_uses_btih_and_v2_only_errs() {
        let v2 = "urn:btmh:1220caf1e1c30e81cb361b9ee167c4aa64228a7fa4fa9f6105232b28ad099f3a302e";
        let m = parse(&format!("magnet:?xt={v2}&xt=urn:btih:{HEX}")).unwrap();
        assert_eq!(m.info_hash, hash());
        let e = parse(&format!("magnet:?xt={v2}&dn=x")).unwrap_err();
        assert_eq!(e, MagnetError::V2Only);
        assert!(e.to_string().contains("v2-only magnet not supported"));
    }

    #[test]
    fn bad_links_rejected() {
        use MagnetError as E;
        let long = format!("magnet:?xt=urn:btih:{HEX}&dn={}", "a".repeat(MAX_URI_BYTES));
        let cases: Vec<(String, MagnetError)> = vec![
            ("http://x".into(), E::NotMagnet),
            ("magnet:".into(), E::NotMagnet),
            ("magnet:?dn=x".into(), E::MissingInfoHash),
            ("magnet:?xt=urn:sha1:abc".into(), E::MissingInfoHash),
            (
                format!("magnet:?xt=urn:btih:{}", &HEX[..39]),
                E::BadInfoHash(HEX[..39].into()),
            ),
            (
                "magnet:?xt=urn:btih:YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKE1".into(),
                E::BadInfoHash("YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKE1".into()),
            ),
            (
                format!("magnet:?xt=urn:btih:{}g", &HEX[..39]),
                E::BadInfoHash(format!("{}g", &HEX[..39])),
            ),
            (
                format!("magnet:?xt=urn:btih:{HEX}&xt=urn:btih:{}", "0".repeat(40)),
                E::ConflictingInfoHashes,
            ),
            (
                format!("magnet:?xt=urn:btih:{HEX}&so=3-1"),
                E::BadSelectOnly("3-1".into()),
            ),
            (
                format!("magnet:?xt=urn:btih:{HEX}&so=a"),
                E::BadSelectOnly("a".into()),
            ),
            (
                format!("magnet:?xt=urn:btih:{HEX}&so=-2"),
                E::BadSelectOnly("-2".into()),
            ),
            (
                format!("magnet:?xt=urn:btih:{HEX}&so=99999999999"),
                E::BadSelectOnly("99999999999".into()),
            ),
            (long.clone(), E::TooLong(long.len())),
        ];
        for (uri, want) in cases {
            assert_eq!(parse(&uri).unwrap_err(), want, "{uri}");
        }
        // The same hash twice (hex and base32) is not a conflict.
        assert!(parse(&format!("magnet:?xt=urn:btih:{HEX}&xt=urn:btih:{B32}")).is_ok());
    }

    #[test]
    fn counts_capped() {
        let mut uri = format!("magnet:?xt=urn:btih:{HEX}");
        for i in 0..MAX_TRACKERS + 5 {
            uri.push_str(&format!("&tr=udp://t{i}:1&x.pe=1.1.1.1:{}", i + 1));
        }
        let m = parse(&uri).unwrap();
        assert_eq!(m.trackers.len(), MAX_TRACKERS);
        assert_eq!(m.peers.len(), MAX_PEERS);
        let so: Vec<String> = (0..=MAX_SELECT_RANGES).map(|i| i.to_string()).collect();
        let uri = format!("magnet:?xt=urn:btih:{HEX}&so={}", so.join(","));
        assert_eq!(parse(&uri).unwrap_err(), MagnetError::TooManySelectRanges);
    }

    #[test]
    fn to_uri_round_trips() {
        let m = Magnet {
            info_hash: hash(),
            name: Some("a b+c&d=é%".into()),
            trackers: vec!["udp://t:1/x?y=1&z".into(), "http://u".into()],
            peers: vec!["[::1]:5".into()],
            select_only: Some(vec![(0, 0), (3, 7)]),
        };
        let uri = m.to_uri();
        assert!(uri.starts_with(&format!("magnet:?xt=urn:btih:{HEX}&dn=a%20b%2Bc")));
        assert!(uri.ends_with("&so=0,3-7"));
        assert_eq!(parse(&uri).unwrap(), m);
        for v in vectors() {
            let m = parse(&v).unwrap();
            assert_eq!(parse(&m.to_uri()).unwrap(), m);
        }
    }

    #[test]
    fn every_truncation_errs_or_parses_without_panic() {
        // A magnet's optional fields can be cut anywhere and still leave a valid link, so
        // prefixes that keep the whole info-hash may parse; shorter ones must err.
        for v in vectors() {
            let hash_end = v.find("&").unwrap_or(v.len());
            for n in 0..v.len() {
                let Some(prefix) = v.get(..n) else { continue };
                let r = parse(prefix);
                if n < hash_end {
                    assert!(r.is_err(), "{prefix}");
                }
            }
        }
    }

    #[test]
    fn mutation_sweep_never_panics() {
        let mut rng = crate::rng::Rng::new(0x3a9);
        let specials = b"%&=+,-:.0123456789abcdefABXZ";
        let mut accepted = 0;
        for v in vectors() {
            for _ in 0..3000 {
                let mut m = v.clone().into_bytes();
                for _ in 0..1 + rng.below(3) {
                    let i = rng.below(m.len());
                    m[i] = if rng.below(2) == 0 {
                        specials[rng.below(specials.len())]
                    } else {
                        rng.next_u32() as u8
                    };
                }
                let s = String::from_utf8_lossy(&m);
                if let Ok(mag) = parse(&s) {
                    accepted += 1;
                    assert!(mag.trackers.len() <= MAX_TRACKERS);
                    assert_eq!(parse(&mag.to_uri()).unwrap(), mag);
                }
            }
        }
        assert!(accepted > 100, "{accepted}");
    }
}
