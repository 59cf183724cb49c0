//! Layer 1: a tiny DNS stub-resolver codec (RFC 1035) so tracker host names never block the
//! event loop.
//!
//! Pure: it builds A/AAAA query packets, parses the matching UDP responses (name compression,
//! CNAME chains inside one packet), and reads the text of `/etc/resolv.conf` and `/etc/hosts`
//! handed in by the caller. It must not open sockets, read files, keep a cache or read the
//! clock: the event loop sends the query, owns timeouts/retries and caches by the returned TTL.
//! No EDNS, no TCP fallback: a response with the TC bit set is reported as an error.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// Longest host name in text form (RFC 1035 §2.3.4: 255 octets on the wire).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;
/// Longest name on the wire, length bytes and root included (RFC 1035 §2.3.4). Bounds the
/// work spent decoding one name, whatever pointers the packet holds.
const MAX_WIRE_NAME: usize = 255;
/// Compression pointers followed while reading one name. Real packets use one per name; the
/// cap (with the backward-only rule) stops pointer loops.
pub const MAX_POINTER_JUMPS: usize = 32;
/// Answer records examined per response. A tracker host has a handful of addresses; the cap
/// bounds work and memory for a packet that claims 65535 answers.
pub const MAX_RECORDS: usize = 64;
/// Addresses returned per response; more than this are of no use for one tracker.
pub const MAX_ADDRS: usize = 16;
/// CNAME links followed inside one response (resolvers rarely return chains longer than 3).
pub const MAX_CNAME_HOPS: usize = 8;
/// Name servers taken from resolv.conf (glibc's MAXNS is 3).
pub const MAX_NAMESERVERS: usize = 3;
/// Addresses returned from /etc/hosts for one name.
pub const MAX_HOSTS_ADDRS: usize = 16;

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const HEADER_LEN: usize = 12;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QType {
    A,
    Aaaa,
}

impl QType {
    pub fn code(self) -> u16 {
        match self {
            QType::A => TYPE_A,
            QType::Aaaa => TYPE_AAAA,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsError {
    EmptyLabel,
    LabelTooLong,
    NameTooLong,
    BadNameChar,
    Truncated,
    IdMismatch,
    NotAResponse,
    TruncatedFlag,
    NoSuchName,
    ServerFailure(u8),
    QuestionMismatch,
    BadPointer,
    BadLabel,
    BadRecord,
    NoAddresses,
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsError::EmptyLabel => write!(f, "dns name has an empty label"),
            DnsError::LabelTooLong => write!(f, "dns label longer than {MAX_LABEL_LEN} bytes"),
            DnsError::NameTooLong => write!(f, "dns name longer than {MAX_NAME_LEN} bytes"),
            DnsError::BadNameChar => write!(f, "dns name has a character outside a-z 0-9 - _"),
            DnsError::Truncated => write!(f, "dns response ends early"),
            DnsError::IdMismatch => write!(f, "dns response id does not match the query"),
            DnsError::NotAResponse => write!(f, "dns packet is not a standard query response"),
            DnsError::TruncatedFlag => write!(f, "dns response has the truncation bit set"),
            DnsError::NoSuchName => write!(f, "dns name does not exist"),
            DnsError::ServerFailure(r) => write!(f, "dns server returned rcode {r}"),
            DnsError::QuestionMismatch => {
                write!(f, "dns response question does not match the query")
            }
            DnsError::BadPointer => write!(f, "dns compression pointer loops or points forward"),
            DnsError::BadLabel => write!(f, "dns name uses an unsupported label type"),
            DnsError::BadRecord => write!(f, "dns address record has the wrong length"),
            DnsError::NoAddresses => write!(f, "dns response has no address of the asked type"),
        }
    }
}

impl std::error::Error for DnsError {}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub addrs: Vec<IpAddr>,
    /// Smallest TTL (seconds) among the records used, CNAMEs included.
    pub ttl: u32,
}

/// Encodes a host name in wire form, lower-cased (labels, then the root byte). One trailing
/// dot is allowed. Only letters, digits, '-' and '_' are accepted: tracker hosts come from
/// `tracker::parse_url`, which allows no more.
fn encode_name(name: &str) -> Result<Vec<u8>, DnsError> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.len() > MAX_NAME_LEN {
        return Err(DnsError::NameTooLong);
    }
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.split('.') {
        if label.is_empty() {
            return Err(DnsError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(DnsError::LabelTooLong);
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(DnsError::BadNameChar);
        }
        out.push(label.len() as u8);
        out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    out.push(0);
    Ok(out)
}

/// Writes a standard recursive query (RD=1) for `name`/`qtype`, class IN, into `out`.
pub fn build_query(id: u16, name: &str, qtype: QType, out: &mut Vec<u8>) -> Result<(), DnsError> {
    let qname = encode_name(name)?;
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&0x0100u16.to_be_bytes()); // RD: ask the server to recurse.
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // QDCOUNT=1, no other sections.
    out.extend_from_slice(&qname);
    out.extend_from_slice(&qtype.code().to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(())
}

fn be16(buf: &[u8], pos: usize) -> Result<u16, DnsError> {
    let b = buf
        .get(pos..pos.saturating_add(2))
        .ok_or(DnsError::Truncated)?;
    let b: [u8; 2] = b.try_into().map_err(|_| DnsError::Truncated)?;
    Ok(u16::from_be_bytes(b))
}

fn be32(buf: &[u8], pos: usize) -> Result<u32, DnsError> {
    let b = buf
        .get(pos..pos.saturating_add(4))
        .ok_or(DnsError::Truncated)?;
    let b: [u8; 4] = b.try_into().map_err(|_| DnsError::Truncated)?;
    Ok(u32::from_be_bytes(b))
}

/// Reads a possibly compressed name at `pos` (RFC 1035 §4.1.4). Returns it in lower-cased
/// wire form (comparable with `encode_name`) and the offset just past it at `pos`.
fn read_name(buf: &[u8], start: usize) -> Result<(Vec<u8>, usize), DnsError> {
    let mut name = Vec::new();
    let mut pos = start;
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *buf.get(pos).ok_or(DnsError::Truncated)?;
        match len & 0xC0 {
            0x00 => {
                let len = usize::from(len);
                if name.len() + 1 + len > MAX_WIRE_NAME {
                    return Err(DnsError::NameTooLong);
                }
                if len == 0 {
                    name.push(0);
                    return Ok((name, end.unwrap_or(pos + 1)));
                }
                let label = buf.get(pos + 1..pos + 1 + len).ok_or(DnsError::Truncated)?;
                name.push(len as u8);
                name.extend(label.iter().map(u8::to_ascii_lowercase));
                pos += 1 + len;
            }
            0xC0 => {
                let lo = *buf.get(pos + 1).ok_or(DnsError::Truncated)?;
                if end.is_none() {
                    end = Some(pos + 2);
                }
                jumps += 1;
                let target = usize::from(len & 0x3F) << 8 | usize::from(lo);
                // Pointers refer to a prior occurrence (§4.1.4); together with the jump cap
                // this rules out loops.
                if jumps > MAX_POINTER_JUMPS || target >= pos {
                    return Err(DnsError::BadPointer);
                }
                pos = target;
            }
            // 0x40 (extended labels, RFC 6891) and 0x80 are not used in answers we ask for.
            _ => return Err(DnsError::BadLabel),
        }
    }
}

struct Record {
    owner: Vec<u8>,
    rtype: u16,
    class: u16,
    ttl: u32,
    rdata: usize,
    rdlen: usize,
}

/// Parses the response to a query built by `build_query(id, name, qtype)`.
///
/// Checks id, QR, opcode, RCODE (3 → `NoSuchName`), TC and that the echoed question is ours;
/// then walks up to `MAX_RECORDS` answers, follows the CNAME chain from `name` inside the
/// packet and returns the A or AAAA addresses (at most `MAX_ADDRS`) of any name on the chain.
/// A packet that ends early is `Truncated`.
pub fn parse_response(buf: &[u8], id: u16, name: &str, qtype: QType) -> Result<Answer, DnsError> {
    let want = encode_name(name)?;
    if buf.len() < HEADER_LEN {
        return Err(DnsError::Truncated);
    }
    if be16(buf, 0)? != id {
        return Err(DnsError::IdMismatch);
    }
    let flags = be16(buf, 2)?;
    if flags & 0x8000 == 0 || (flags >> 11) & 0xF != 0 {
        return Err(DnsError::NotAResponse);
    }
    match flags & 0xF {
        0 => {}
        3 => return Err(DnsError::NoSuchName),
        r => return Err(DnsError::ServerFailure(r as u8)),
    }
    if flags & 0x0200 != 0 {
        return Err(DnsError::TruncatedFlag);
    }
    if be16(buf, 4)? != 1 {
        return Err(DnsError::QuestionMismatch);
    }
    let ancount = usize::from(be16(buf, 6)?);
    let (qname, mut pos) = read_name(buf, HEADER_LEN)?;
    if be16(buf, pos)? != qtype.code() || be16(buf, pos + 2)? != CLASS_IN {
        return Err(DnsError::QuestionMismatch);
    }
    if qname != want {
        return Err(DnsError::QuestionMismatch);
    }
    pos += 4;

    let mut records = Vec::with_capacity(ancount.min(MAX_RECORDS));
    for _ in 0..ancount.min(MAX_RECORDS) {
        let (owner, p) = read_name(buf, pos)?;
        let rtype = be16(buf, p)?;
        let class = be16(buf, p + 2)?;
        let ttl = be32(buf, p + 4)?;
        let rdlen = usize::from(be16(buf, p + 8)?);
        let rdata = p + 10;
        if buf.len() < rdata + rdlen {
            return Err(DnsError::Truncated);
        }
        records.push(Record {
            owner,
            rtype,
            class,
            // RFC 2181 §8: a TTL with the top bit set is treated as zero.
            ttl: if ttl & 0x8000_0000 != 0 { 0 } else { ttl },
            rdata,
            rdlen,
        });
        pos = rdata + rdlen;
    }

    let mut ttl = u32::MAX;
    let mut chain = vec![want];
    for _ in 0..MAX_CNAME_HOPS {
        let Some(cur) = chain.last() else { break };
        let Some(rec) = records
            .iter()
            .find(|r| r.rtype == TYPE_CNAME && r.class == CLASS_IN && r.owner == *cur)
        else {
            break;
        };
        let (target, _) = read_name(buf, rec.rdata)?;
        if chain.contains(&target) {
            break; // CNAME loop: stop following.
        }
        ttl = ttl.min(rec.ttl);
        chain.push(target);
    }

    let mut addrs = Vec::new();
    let mut addr_ttl = u32::MAX;
    for r in &records {
        if r.rtype != qtype.code() || r.class != CLASS_IN || !chain.contains(&r.owner) {
            continue;
        }
        let rdata = buf
            .get(r.rdata..r.rdata + r.rdlen)
            .ok_or(DnsError::Truncated)?;
        let ip = match qtype {
            QType::A => IpAddr::V4(Ipv4Addr::from(
                <[u8; 4]>::try_from(rdata).map_err(|_| DnsError::BadRecord)?,
            )),
            QType::Aaaa => IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(rdata).map_err(|_| DnsError::BadRecord)?,
            )),
        };
        addr_ttl = addr_ttl.min(r.ttl);
        if !addrs.contains(&ip) {
            addrs.push(ip);
        }
        if addrs.len() >= MAX_ADDRS {
            break;
        }
    }
    if addrs.is_empty() {
        return Err(DnsError::NoAddresses);
    }
    Ok(Answer {
        addrs,
        ttl: ttl.min(addr_ttl),
    })
}

/// The `nameserver` entries of a resolv.conf text (port 53), at most `MAX_NAMESERVERS`.
/// `#` and `;` start comments. IPv6 zones are accepted in numeric form (`fe80::1%2`); a named
/// zone (`%eth0`) needs an interface lookup this pure module cannot do, so such a line is
/// skipped. An empty result means the caller should fall back to `127.0.0.1:53`, as libc does.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut toks = line.split_whitespace();
        if toks.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = toks.next() else { continue };
        let sa = if let Ok(ip) = addr.parse::<IpAddr>() {
            SocketAddr::new(ip, 53)
        } else if let Some((ip, zone)) = addr.split_once('%') {
            match (ip.parse::<Ipv6Addr>(), zone.parse::<u32>()) {
                (Ok(ip), Ok(scope)) => SocketAddr::V6(SocketAddrV6::new(ip, 53, 0, scope)),
                _ => continue,
            }
        } else {
            continue;
        };
        if !out.contains(&sa) {
            out.push(sa);
        }
        if out.len() >= MAX_NAMESERVERS {
            break;
        }
    }
    out
}

/// Addresses for `name` in an /etc/hosts text: "address canonical-name [aliases...]" lines,
/// `#` comments, names compared case-insensitively (one trailing dot ignored). Addresses with
/// a zone cannot be held in an `IpAddr` and are skipped. At most `MAX_HOSTS_ADDRS`.
pub fn lookup_hosts(text: &str, name: &str) -> Vec<IpAddr> {
    let want = name.strip_suffix('.').unwrap_or(name);
    let mut out = Vec::new();
    if want.is_empty() {
        return out;
    }
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut toks = line.split_whitespace();
        let Some(Ok(ip)) = toks.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        let hit = toks.any(|t| t.strip_suffix('.').unwrap_or(t).eq_ignore_ascii_case(want));
        if hit && !out.contains(&ip) {
            out.push(ip);
            if out.len() >= MAX_HOSTS_ADDRS {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    const ID: u16 = 0xbeef;

    fn header(id: u16, flags: u16, qd: u16, an: u16) -> Vec<u8> {
        let mut h = Vec::new();
        for v in [id, flags, qd, an, 0, 0] {
            h.extend_from_slice(&v.to_be_bytes());
        }
        h
    }

    fn rr(out: &mut Vec<u8>, owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) {
        out.extend_from_slice(owner);
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(rdata);
    }

    /// www.example.com A: CNAME to cdn1.example.com (compressed), two A records for the
    /// target, one unrelated A record and one AAAA record that must be ignored.
    fn cname_response() -> Vec<u8> {
        let mut p = header(ID, 0x8180, 1, 5);
        p.extend_from_slice(b"\x03www\x07example\x03com\x00"); // offset 12..29
        p.extend_from_slice(&[0, 1, 0, 1]);
        // CNAME rdata starts at 33 + 2 + 10 = 45: "cdn1" + pointer to "example.com" (16).
        rr(&mut p, &[0xC0, 12], TYPE_CNAME, 300, b"\x04cdn1\xC0\x10");
        rr(&mut p, &[0xC0, 45], TYPE_A, 60, &[93, 184, 216, 34]);
        rr(&mut p, &[0xC0, 45], TYPE_A, 120, &[1, 2, 3, 4]);
        rr(&mut p, b"\x05other\x00", TYPE_A, 5, &[9, 9, 9, 9]);
        rr(&mut p, &[0xC0, 45], TYPE_AAAA, 1, &[0; 16]);
        p
    }

    fn aaaa_response() -> Vec<u8> {
        let mut p = header(ID, 0x8180, 1, 1);
        p.extend_from_slice(b"\x07tracker\x02io\x00");
        p.extend_from_slice(&[0, 28, 0, 1]);
        let mut ip = [0u8; 16];
        ip[0] = 0x20;
        ip[1] = 0x01;
        ip[15] = 7;
        rr(&mut p, &[0xC0, 12], TYPE_AAAA, 0x8000_0001, &ip);
        p
    }

    #[test]
    fn query_exact_bytes() {
        let mut out = Vec::new();
        build_query(0x1234, "Tracker.Example.com.", QType::Aaaa, &mut out).unwrap();
        let mut want = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        want.extend_from_slice(b"\x07tracker\x07example\x03com\x00\x00\x1c\x00\x01");
        assert_eq!(out, want);
    }

    #[test]
    fn query_bad_names_rejected() {
        let mut out = Vec::new();
        let e = |n: &str| build_query(1, n, QType::A, &mut Vec::new()).unwrap_err();
        assert_eq!(e(""), DnsError::EmptyLabel);
        assert_eq!(e("a..b"), DnsError::EmptyLabel);
        assert_eq!(e(&"a".repeat(64)), DnsError::LabelTooLong);
        assert!(build_query(1, &"a".repeat(63), QType::A, &mut out).is_ok());
        let long = vec!["a".repeat(63); 4].join(".");
        assert_eq!(long.len(), 255);
        assert_eq!(e(&long), DnsError::NameTooLong);
        assert!(build_query(1, &long[..253], QType::A, &mut out).is_ok());
        assert_eq!(e("a b"), DnsError::BadNameChar);
        assert_eq!(e("a\\.b"), DnsError::BadNameChar);
    }

    #[test]
    fn response_cname_chain_with_compression() {
        let a = parse_response(&cname_response(), ID, "WWW.example.com", QType::A).unwrap();
        assert_eq!(
            a.addrs,
            vec![
                IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34)),
                IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4))
            ]
        );
        assert_eq!(a.ttl, 60);
    }

    #[test]
    fn response_aaaa_and_high_bit_ttl() {
        let a = parse_response(&aaaa_response(), ID, "tracker.io", QType::Aaaa).unwrap();
        assert_eq!(a.addrs, vec!["2001::7".parse::<IpAddr>().unwrap()]);
        assert_eq!(a.ttl, 0, "RFC 2181: top-bit TTL means zero");
    }

    #[test]
    fn response_header_checks() {
        let good = cname_response();
        let p = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut v = good.clone();
            f(&mut v);
            parse_response(&v, ID, "www.example.com", QType::A)
        };
        assert_eq!(p(&|v| v[1] ^= 1), Err(DnsError::IdMismatch));
        assert_eq!(p(&|v| v[2] &= 0x7f), Err(DnsError::NotAResponse));
        assert_eq!(p(&|v| v[2] |= 0x08), Err(DnsError::NotAResponse));
        assert_eq!(p(&|v| v[3] = 0x83), Err(DnsError::NoSuchName));
        assert_eq!(p(&|v| v[3] = 0x82), Err(DnsError::ServerFailure(2)));
        assert_eq!(p(&|v| v[2] |= 0x02), Err(DnsError::TruncatedFlag));
        assert_eq!(p(&|v| v[5] = 2), Err(DnsError::QuestionMismatch));
        assert_eq!(p(&|v| v[13] = b'x'), Err(DnsError::QuestionMismatch));
        assert_eq!(p(&|v| v[30] = 28), Err(DnsError::QuestionMismatch));
        assert_eq!(p(&|v| v[7] = 0), Err(DnsError::NoAddresses));
        assert_eq!(
            parse_response(&good, ID, "www.example.com", QType::Aaaa),
            Err(DnsError::QuestionMismatch)
        );
        assert_eq!(
            parse_response(&good, ID, "other.example.com", QType::A),
            Err(DnsError::QuestionMismatch)
        );
    }

    #[test]
    fn response_unrelated_records_only_is_no_addresses() {
        let mut p = header(ID, 0x8180, 1, 1);
        p.extend_from_slice(b"\x01a\x00\x00\x01\x00\x01");
        rr(&mut p, b"\x01b\x00", TYPE_A, 5, &[1, 1, 1, 1]);
        assert_eq!(
            parse_response(&p, ID, "a", QType::A),
            Err(DnsError::NoAddresses)
        );
    }

    #[test]
    fn response_bad_address_length_rejected() {
        let mut p = header(ID, 0x8180, 1, 1);
        p.extend_from_slice(b"\x01a\x00\x00\x01\x00\x01");
        rr(&mut p, &[0xC0, 12], TYPE_A, 5, &[1, 1, 1]);
        assert_eq!(
            parse_response(&p, ID, "a", QType::A),
            Err(DnsError::BadRecord)
        );
    }

    #[test]
    fn response_pointer_loops_rejected() {
        // Self-pointer as an answer owner.
        let mut p = header(ID, 0x8180, 1, 1);
        p.extend_from_slice(b"\x01a\x00\x00\x01\x00\x01");
        let at = p.len() as u8;
        rr(&mut p, &[0xC0, at], TYPE_A, 5, &[1, 1, 1, 1]);
        assert_eq!(
            parse_response(&p, ID, "a", QType::A),
            Err(DnsError::BadPointer)
        );
        // Backward pointer into a label that leads back to the same pointer.
        let mut p = header(ID, 0x8180, 1, 1);
        p.extend_from_slice(b"\x01a\x00\x00\x01\x00\x01");
        let at = p.len() as u8;
        let mut owner = b"\x01x".to_vec();
        owner.extend_from_slice(&[0xC0, at]);
        rr(&mut p, &owner, TYPE_A, 5, &[1, 1, 1, 1]);
        assert!(parse_response(&p, ID, "a", QType::A).is_err());
        // Forward pointer in the question.
        let mut p = header(ID, 0x8180, 1, 0);
        p.extend_from_slice(&[0xC0, 20, 0, 1, 0, 1, 0, 0, 1, b'a', 0]);
        assert_eq!(
            parse_response(&p, ID, "a", QType::A),
            Err(DnsError::BadPointer)
        );
        // Extended label types.
        let mut p = header(ID, 0x8180, 1, 0);
        p.extend_from_slice(&[0x41, 0, 0, 1, 0, 1]);
        assert_eq!(
            parse_response(&p, ID, "a", QType::A),
            Err(DnsError::BadLabel)
        );
    }

    #[test]
    fn response_cname_loop_terminates() {
        let mut p = header(ID, 0x8180, 1, 3);
        p.extend_from_slice(b"\x01a\x00\x00\x01\x00\x01"); // "a" at 12
        rr(&mut p, &[0xC0, 12], TYPE_CNAME, 5, b"\x01b\x00"); // rdata at 31
        rr(&mut p, &[0xC0, 31], TYPE_CNAME, 5, &[0xC0, 12]);
        rr(&mut p, &[0xC0, 31], TYPE_A, 9, &[5, 5, 5, 5]);
        let a = parse_response(&p, ID, "a", QType::A).unwrap();
        assert_eq!(a.addrs, vec![IpAddr::V4(Ipv4Addr::new(5, 5, 5, 5))]);
        assert_eq!(a.ttl, 5);
    }

    #[test]
    fn response_answers_capped() {
        let n = 200u16;
        let mut p = header(ID, 0x8180, 1, n);
        p.extend_from_slice(b"\x01a\x00\x00\x01\x00\x01");
        for i in 0..n {
            rr(
                &mut p,
                &[0xC0, 12],
                TYPE_A,
                5,
                &[10, 0, (i >> 8) as u8, i as u8],
            );
        }
        let a = parse_response(&p, ID, "a", QType::A).unwrap();
        assert_eq!(a.addrs.len(), MAX_ADDRS);
        // A count larger than the packet holds errors only if a walked record is missing.
        let mut q = header(ID, 0x8180, 1, 65535);
        q.extend_from_slice(&p[HEADER_LEN..]);
        assert_eq!(
            parse_response(&q, ID, "a", QType::A).unwrap().addrs.len(),
            MAX_ADDRS
        );
    }

    #[test]
    fn response_truncation_sweep() {
        for (v, name, qt) in [
            (cname_response(), "www.example.com", QType::A),
            (aaaa_response(), "tracker.io", QType::Aaaa),
        ] {
            assert!(parse_response(&v, ID, name, qt).is_ok());
            for n in 0..v.len() {
                assert!(parse_response(&v[..n], ID, name, qt).is_err(), "prefix {n}");
            }
        }
    }

    #[test]
    fn response_mutation_sweep() {
        let mut rng = Rng::new(1035);
        for (v, name, qt) in [
            (cname_response(), "www.example.com", QType::A),
            (aaaa_response(), "tracker.io", QType::Aaaa),
        ] {
            for _ in 0..5000 {
                let mut m = v.clone();
                for _ in 0..1 + rng.below(3) {
                    let i = rng.below(m.len());
                    match rng.below(3) {
                        0 => m[i] = rng.next_u32() as u8,
                        1 => m[i] ^= 1 << rng.below(8),
                        _ => m.truncate(i.max(1)),
                    }
                }
                if let Ok(a) = parse_response(&m, ID, name, qt) {
                    assert!(!a.addrs.is_empty() && a.addrs.len() <= MAX_ADDRS);
                    assert!(a.addrs.iter().all(|ip| ip.is_ipv4() == (qt == QType::A)));
                }
            }
        }
    }

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# comment\nsearch lan\nnameserver 192.168.1.1 # router\n\
            nameserver   ::1\n; nameserver 9.9.9.9\nnameserver fe80::1%2\nnameserver 8.8.8.8\n\
            nameserver 1.1.1.1\n";
        let ns = parse_resolv_conf(text);
        assert_eq!(
            ns,
            vec![
                "192.168.1.1:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap(),
                SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 2)),
            ]
        );
        let ns = parse_resolv_conf(
            "nameserver fe80::1%eth0\nnameserver bogus\nnameserver\nnameserver 10.0.0.1",
        );
        assert_eq!(ns, vec!["10.0.0.1:53".parse::<SocketAddr>().unwrap()]);
        assert!(parse_resolv_conf("").is_empty());
    }

    #[test]
    fn hosts_lookup_aliases_and_case() {
        let text = "127.0.0.1 localhost\n::1 localhost ip6-localhost # v6\n\
            10.0.0.5\tTracker.LAN tr alias2\n# 10.0.0.6 tracker.lan\nbad line tracker.lan\n\
            10.0.0.7 other\n10.0.0.5 tracker.lan\nfe80::1%eth0 tracker.lan\n";
        assert_eq!(
            lookup_hosts(text, "tracker.lan"),
            vec!["10.0.0.5".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            lookup_hosts(text, "TR."),
            vec!["10.0.0.5".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            lookup_hosts(text, "localhost"),
            vec![
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert!(lookup_hosts(text, "missing").is_empty());
        assert!(lookup_hosts(text, "").is_empty());
        assert!(lookup_hosts(text, "#").is_empty());
    }

    #[test]
    fn text_parsers_mutation_sweep() {
        let mut rng = Rng::new(53);
        let seeds: [&[u8]; 2] = [
            b"nameserver 1.2.3.4\nnameserver fe80::1%3\n",
            b"10.0.0.5 tracker.lan tr\n::1 localhost\n",
        ];
        for s in seeds {
            for _ in 0..2000 {
                let mut m = s.to_vec();
                let i = rng.below(m.len());
                m[i] = rng.next_u32() as u8;
                let t = String::from_utf8_lossy(&m);
                assert!(parse_resolv_conf(&t).len() <= MAX_NAMESERVERS);
                assert!(lookup_hosts(&t, "tracker.lan").len() <= MAX_HOSTS_ADDRS);
            }
        }
    }

    #[test]
    fn errors_display_lowercase() {
        for e in [
            DnsError::NoSuchName,
            DnsError::ServerFailure(2),
            DnsError::BadPointer,
        ] {
            let s = e.to_string();
            assert!(s.starts_with("dns "), "{s}");
        }
    }
}
