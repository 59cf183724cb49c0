//! Layer 1: the KRPC codec of the DHT (BEP 5 "KRPC Protocol", BEP 32 for IPv6).
//!
//! Turns one UDP datagram into a `Msg` (query, response or error) and back. It knows the four
//! BEP 5 queries (ping, find_node, get_peers, announce_peer), the BEP 32 `want`/`nodes6`
//! additions, and the compact node (26 / 38 bytes) and peer (6 / 18 bytes) encodings.
//! It must not keep state, touch sockets or read the clock: the `Dht` state machine decides
//! what a message means. Every length taken from the wire is checked against a named cap.

use crate::bencode::{self, Value};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// A 160-bit node id or info-hash (BEP 5 "Overview").
pub type NodeId = [u8; 20];

/// Largest datagram we parse. BEP 32 "Maximum packet size": nodes must not send more than 1024
/// bytes but receivers "should be able to receive datagrams with larger payloads"; 2048 is
/// above the Ethernet MTU (1500) with room, and bounds the decoder's work per datagram.
pub const MAX_MESSAGE_LEN: usize = 2048;
/// Longest transaction id accepted. BEP 5: "typically 2 characters are enough"; 16 leaves room
/// for every client seen in the wild while keeping echoed ids small (no amplification).
pub const MAX_TID_LEN: usize = 16;
/// Longest write token accepted. BEP 5 calls it "a short binary string"; clients use 4-20.
pub const MAX_TOKEN_LEN: usize = 64;
/// Most peers read from a `values` list. BEP 32 limits a reply to 1024 bytes, i.e. at most
/// ~120 IPv4 peers; 100 bounds what one reply can make us store or dial.
pub const MAX_VALUES: usize = 100;
/// Most nodes read from one `nodes` / `nodes6` string. BEP 5 replies carry K = 8; some
/// clients send up to 16. Entries beyond this are ignored.
pub const MAX_NODES: usize = 16;
/// Most `want` entries examined (BEP 32 defines two; others must be ignored).
pub const MAX_WANT: usize = 8;
/// Longest error message kept (BEP 5 "Errors"); longer ones are cut.
pub const MAX_ERROR_MSG: usize = 256;

/// Compact node info over IPv4: 20-byte id + 4-byte address + 2-byte port (BEP 5).
pub const COMPACT_NODE_V4: usize = 26;
/// Compact node info over IPv6: 20-byte id + 16-byte address + 2-byte port (BEP 32).
pub const COMPACT_NODE_V6: usize = 38;
/// Compact peer info over IPv4 (BEP 5 "Contact Encoding").
pub const COMPACT_PEER_V4: usize = 6;
/// Compact peer info over IPv6 (BEP 32 "values").
pub const COMPACT_PEER_V6: usize = 18;

/// BEP 5 error codes.
pub const ERR_GENERIC: i64 = 201;
pub const ERR_SERVER: i64 = 202;
pub const ERR_PROTOCOL: i64 = 203;
pub const ERR_METHOD_UNKNOWN: i64 = 204;

/// A node's id and UDP address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    pub id: NodeId,
    pub addr: SocketAddr,
}

/// BEP 32 `want`: which node families the requester asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Want {
    pub n4: bool,
    pub n6: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    Ping {
        id: NodeId,
    },
    FindNode {
        id: NodeId,
        target: NodeId,
        want: Option<Want>,
    },
    GetPeers {
        id: NodeId,
        info_hash: NodeId,
        want: Option<Want>,
    },
    AnnouncePeer {
        id: NodeId,
        info_hash: NodeId,
        port: u16,
        implied_port: bool,
        token: Vec<u8>,
    },
    /// A method we do not know; answered with error 204 (BEP 5 "Errors").
    Unknown {
        id: NodeId,
    },
}

impl Query {
    pub fn id(&self) -> &NodeId {
        match self {
            Query::Ping { id }
            | Query::FindNode { id, .. }
            | Query::GetPeers { id, .. }
            | Query::AnnouncePeer { id, .. }
            | Query::Unknown { id } => id,
        }
    }
}

/// The return values of any response; which fields are set depends on the query answered.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Response {
    pub id: NodeId,
    pub nodes: Vec<NodeInfo>,
    pub nodes6: Vec<NodeInfo>,
    pub values: Vec<SocketAddr>,
    pub token: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Query(Query),
    Response(Response),
    Error { code: i64, message: String },
}

/// One KRPC message: a transaction id and a body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Msg {
    pub tid: Vec<u8>,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KrpcError {
    TooLarge(usize),
    Bencode(bencode::Error),
    NotADict,
    Missing(&'static str),
    WrongType(&'static str),
    BadLength(&'static str),
    TidTooLong(usize),
    TokenTooLong(usize),
    BadPort(i64),
    UnknownType,
}

impl fmt::Display for KrpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KrpcError::TooLarge(n) => {
                write!(f, "krpc: datagram of {n} bytes exceeds {MAX_MESSAGE_LEN}")
            }
            KrpcError::Bencode(e) => write!(f, "krpc: {e}"),
            KrpcError::NotADict => write!(f, "krpc: message is not a dictionary"),
            KrpcError::Missing(k) => write!(f, "krpc: missing key {k:?}"),
            KrpcError::WrongType(k) => write!(f, "krpc: key {k:?} has the wrong type"),
            KrpcError::BadLength(k) => write!(f, "krpc: key {k:?} has a bad length"),
            KrpcError::TidTooLong(n) => {
                write!(f, "krpc: transaction id of {n} bytes exceeds {MAX_TID_LEN}")
            }
            KrpcError::TokenTooLong(n) => {
                write!(f, "krpc: token of {n} bytes exceeds {MAX_TOKEN_LEN}")
            }
            KrpcError::BadPort(p) => write!(f, "krpc: port {p} out of range"),
            KrpcError::UnknownType => write!(f, "krpc: unknown message type"),
        }
    }
}

impl std::error::Error for KrpcError {}

/// Parses one datagram.
pub fn parse(buf: &[u8]) -> Result<Msg, KrpcError> {
    if buf.len() > MAX_MESSAGE_LEN {
        return Err(KrpcError::TooLarge(buf.len()));
    }
    let v = bencode::decode(buf).map_err(KrpcError::Bencode)?;
    if v.as_dict().is_none() {
        return Err(KrpcError::NotADict);
    }
    let tid = bytes(&v, "t")?;
    if tid.len() > MAX_TID_LEN {
        return Err(KrpcError::TidTooLong(tid.len()));
    }
    let y = bytes(&v, "y")?;
    let body = match y {
        b"q" => Body::Query(parse_query(&v)?),
        b"r" => Body::Response(parse_response(&v)?),
        b"e" => parse_error(&v)?,
        _ => return Err(KrpcError::UnknownType),
    };
    Ok(Msg {
        tid: tid.to_vec(),
        body,
    })
}

fn get<'v, 'a>(v: &'v Value<'a>, key: &'static str) -> Result<&'v Value<'a>, KrpcError> {
    v.get(key.as_bytes()).ok_or(KrpcError::Missing(key))
}

fn bytes<'a>(v: &Value<'a>, key: &'static str) -> Result<&'a [u8], KrpcError> {
    get(v, key)?.as_bytes().ok_or(KrpcError::WrongType(key))
}

fn id20(v: &Value<'_>, key: &'static str) -> Result<NodeId, KrpcError> {
    let b = bytes(v, key)?;
    b.try_into().map_err(|_| KrpcError::BadLength(key))
}

fn parse_want(a: &Value<'_>) -> Result<Option<Want>, KrpcError> {
    let Some(w) = a.get(b"want") else {
        return Ok(None);
    };
    let list = w.as_list().ok_or(KrpcError::WrongType("want"))?;
    let mut want = Want::default();
    // BEP 32 "want": unknown strings must be silently ignored; only the first few are read.
    for item in list.iter().take(MAX_WANT) {
        match item.as_bytes() {
            Some(b"n4") => want.n4 = true,
            Some(b"n6") => want.n6 = true,
            _ => {}
        }
    }
    Ok(Some(want))
}

fn parse_query(v: &Value<'_>) -> Result<Query, KrpcError> {
    let method = bytes(v, "q")?;
    let a = get(v, "a")?;
    if a.as_dict().is_none() {
        return Err(KrpcError::WrongType("a"));
    }
    let id = id20(a, "id")?;
    Ok(match method {
        b"ping" => Query::Ping { id },
        b"find_node" => Query::FindNode {
            id,
            target: id20(a, "target")?,
            want: parse_want(a)?,
        },
        b"get_peers" => Query::GetPeers {
            id,
            info_hash: id20(a, "info_hash")?,
            want: parse_want(a)?,
        },
        b"announce_peer" => {
            let info_hash = id20(a, "info_hash")?;
            let token = bytes(a, "token")?;
            if token.len() > MAX_TOKEN_LEN {
                return Err(KrpcError::TokenTooLong(token.len()));
            }
            // BEP 5 announce_peer: implied_port non-zero means "use the UDP source port".
            let implied_port = match a.get(b"implied_port") {
                None => false,
                Some(x) => x.as_int().ok_or(KrpcError::WrongType("implied_port"))? != 0,
            };
            let port = match a.get(b"port") {
                // Some clients omit `port` when `implied_port` is set.
                None if implied_port => 0,
                None => return Err(KrpcError::Missing("port")),
                Some(p) => {
                    let p = p.as_int().ok_or(KrpcError::WrongType("port"))?;
                    match u16::try_from(p) {
                        Ok(p) => p,
                        Err(_) => return Err(KrpcError::BadPort(p)),
                    }
                }
            };
            if port == 0 && !implied_port {
                return Err(KrpcError::BadPort(0));
            }
            Query::AnnouncePeer {
                id,
                info_hash,
                port,
                implied_port,
                token: token.to_vec(),
            }
        }
        _ => Query::Unknown { id },
    })
}

fn parse_response(v: &Value<'_>) -> Result<Response, KrpcError> {
    let r = get(v, "r")?;
    if r.as_dict().is_none() {
        return Err(KrpcError::WrongType("r"));
    }
    let id = id20(r, "id")?;
    let nodes = match r.get(b"nodes") {
        None => Vec::new(),
        Some(n) => {
            let b = n.as_bytes().ok_or(KrpcError::WrongType("nodes"))?;
            decode_nodes(b, false).ok_or(KrpcError::BadLength("nodes"))?
        }
    };
    let nodes6 = match r.get(b"nodes6") {
        None => Vec::new(),
        Some(n) => {
            let b = n.as_bytes().ok_or(KrpcError::WrongType("nodes6"))?;
            decode_nodes(b, true).ok_or(KrpcError::BadLength("nodes6"))?
        }
    };
    let token = match r.get(b"token") {
        None => None,
        Some(t) => {
            let t = t.as_bytes().ok_or(KrpcError::WrongType("token"))?;
            if t.len() > MAX_TOKEN_LEN {
                return Err(KrpcError::TokenTooLong(t.len()));
            }
            Some(t.to_vec())
        }
    };
    let mut values = Vec::new();
    if let Some(vals) = r.get(b"values") {
        let list = vals.as_list().ok_or(KrpcError::WrongType("values"))?;
        // BEP 32: lists may mix 6- and 18-byte entries; malformed entries are skipped and
        // at most MAX_VALUES are read.
        for item in list.iter().take(MAX_VALUES) {
            if let Some(p) = item.as_bytes().and_then(decode_peer) {
                values.push(p);
            }
        }
    }
    Ok(Response {
        id,
        nodes,
        nodes6,
        values,
        token,
    })
}

fn parse_error(v: &Value<'_>) -> Result<Body, KrpcError> {
    let e = get(v, "e")?.as_list().ok_or(KrpcError::WrongType("e"))?;
    let code = e
        .first()
        .and_then(|c| c.as_int())
        .ok_or(KrpcError::WrongType("e"))?;
    let msg = e.get(1).and_then(|m| m.as_bytes()).unwrap_or(b"");
    let msg = msg.get(..MAX_ERROR_MSG).unwrap_or(msg);
    Ok(Body::Error {
        code,
        message: String::from_utf8_lossy(msg).into_owned(),
    })
}

/// Decodes a compact peer (6 bytes IPv4, 18 bytes IPv6); `None` for any other length.
pub fn decode_peer(b: &[u8]) -> Option<SocketAddr> {
    match b.len() {
        COMPACT_PEER_V4 => {
            let ip: [u8; 4] = b.get(..4)?.try_into().ok()?;
            let port = u16::from_be_bytes(b.get(4..6)?.try_into().ok()?);
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        COMPACT_PEER_V6 => {
            let ip: [u8; 16] = b.get(..16)?.try_into().ok()?;
            let port = u16::from_be_bytes(b.get(16..18)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                0,
                0,
            )))
        }
        _ => None,
    }
}

/// Appends the compact form of `addr` (6 or 18 bytes).
pub fn put_peer(out: &mut Vec<u8>, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// Decodes a compact node string (26-byte IPv4 or 38-byte IPv6 entries). `None` when the
/// length is not a multiple of the entry size; entries beyond `MAX_NODES` are ignored.
pub fn decode_nodes(b: &[u8], v6: bool) -> Option<Vec<NodeInfo>> {
    let size = if v6 { COMPACT_NODE_V6 } else { COMPACT_NODE_V4 };
    if b.len() % size != 0 {
        return None;
    }
    let mut out = Vec::with_capacity((b.len() / size).min(MAX_NODES));
    for chunk in b.chunks_exact(size).take(MAX_NODES) {
        let id: NodeId = chunk.get(..20)?.try_into().ok()?;
        let addr = decode_peer(chunk.get(20..)?)?;
        out.push(NodeInfo { id, addr });
    }
    Some(out)
}

/// Appends compact node info for each node (26 or 38 bytes each, by address family).
pub fn put_nodes(out: &mut Vec<u8>, nodes: &[NodeInfo]) {
    for n in nodes {
        out.extend_from_slice(&n.id);
        put_peer(out, &n.addr);
    }
}

fn put_key(out: &mut Vec<u8>, k: &str) {
    bencode::put_bytes(out, k.as_bytes());
}

fn put_want(out: &mut Vec<u8>, want: &Option<Want>) {
    if let Some(w) = want {
        put_key(out, "want");
        out.push(b'l');
        if w.n4 {
            bencode::put_bytes(out, b"n4");
        }
        if w.n6 {
            bencode::put_bytes(out, b"n6");
        }
        out.push(b'e');
    }
}

/// Appends the bencoding of `msg`. Keys are written in sorted order (BEP 3 dictionaries).
pub fn encode(msg: &Msg, out: &mut Vec<u8>) {
    out.push(b'd');
    let y: &[u8] = match &msg.body {
        Body::Query(q) => {
            put_key(out, "a");
            out.push(b'd');
            bencode::put_kv_bytes(out, "id", q.id());
            let method: &[u8] = match q {
                Query::Ping { .. } => b"ping",
                Query::FindNode { target, want, .. } => {
                    bencode::put_kv_bytes(out, "target", target);
                    put_want(out, want);
                    b"find_node"
                }
                Query::GetPeers {
                    info_hash, want, ..
                } => {
                    bencode::put_kv_bytes(out, "info_hash", info_hash);
                    put_want(out, want);
                    b"get_peers"
                }
                Query::AnnouncePeer {
                    info_hash,
                    port,
                    implied_port,
                    token,
                    ..
                } => {
                    // Sorted: id < implied_port < info_hash < port < token.
                    let mut tail = Vec::new();
                    bencode::put_kv_int(&mut tail, "port", i64::from(*port));
                    bencode::put_kv_bytes(&mut tail, "token", token);
                    if *implied_port {
                        bencode::put_kv_int(out, "implied_port", 1);
                    }
                    bencode::put_kv_bytes(out, "info_hash", info_hash);
                    out.extend_from_slice(&tail);
                    b"announce_peer"
                }
                Query::Unknown { .. } => b"unknown",
            };
            out.push(b'e');
            bencode::put_kv_bytes(out, "q", method);
            b"q"
        }
        Body::Response(r) => {
            put_key(out, "r");
            out.push(b'd');
            bencode::put_kv_bytes(out, "id", &r.id);
            if !r.nodes.is_empty() {
                put_key(out, "nodes");
                let mut b = Vec::with_capacity(r.nodes.len() * COMPACT_NODE_V6);
                put_nodes(&mut b, &r.nodes);
                bencode::put_bytes(out, &b);
            }
            if !r.nodes6.is_empty() {
                put_key(out, "nodes6");
                let mut b = Vec::with_capacity(r.nodes6.len() * COMPACT_NODE_V6);
                put_nodes(&mut b, &r.nodes6);
                bencode::put_bytes(out, &b);
            }
            if let Some(t) = &r.token {
                bencode::put_kv_bytes(out, "token", t);
            }
            if !r.values.is_empty() {
                put_key(out, "values");
                out.push(b'l');
                for p in &r.values {
                    let mut b = Vec::with_capacity(COMPACT_PEER_V6);
                    put_peer(&mut b, p);
                    bencode::put_bytes(out, &b);
                }
                out.push(b'e');
            }
            out.push(b'e');
            b"r"
        }
        Body::Error { code, message } => {
            put_key(out, "e");
            out.push(b'l');
            bencode::put_int(out, *code);
            bencode::put_bytes(out, message.as_bytes());
            out.push(b'e');
            b"e"
        }
    };
    bencode::put_kv_bytes(out, "t", &msg.tid);
    bencode::put_kv_bytes(out, "y", y);
    out.push(b'e');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn v4(a: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((a, port))
    }

    fn v6(port: u16) -> SocketAddr {
        SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], port))
    }

    /// The BEP 5 example packets, byte for byte.
    const SPEC_VECTORS: &[&[u8]] = &[
        b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe",
        b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re",
        b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q9:find_node1:t2:aa1:y1:qe",
        b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz123456e1:q9:get_peers1:t2:aa1:y1:qe",
        b"d1:rd2:id20:abcdefghij01234567895:token8:aoeusnth6:valuesl6:axje.u6:idhtnmee1:t2:aa1:y1:re",
        b"d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe",
        b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee",
    ];

    fn sample_msgs() -> Vec<Msg> {
        let n4 = NodeInfo {
            id: [7; 20],
            addr: v4([10, 0, 0, 1], 6881),
        };
        let n6 = NodeInfo {
            id: [8; 20],
            addr: v6(6882),
        };
        vec![
            Msg {
                tid: b"xy".to_vec(),
                body: Body::Query(Query::FindNode {
                    id: [1; 20],
                    target: [2; 20],
                    want: Some(Want { n4: true, n6: true }),
                }),
            },
            Msg {
                tid: b"zz".to_vec(),
                body: Body::Query(Query::AnnouncePeer {
                    id: [1; 20],
                    info_hash: [3; 20],
                    port: 51413,
                    implied_port: false,
                    token: b"tok".to_vec(),
                }),
            },
            Msg {
                tid: vec![0, 1],
                body: Body::Response(Response {
                    id: [4; 20],
                    nodes: vec![n4, n4],
                    nodes6: vec![n6],
                    values: vec![v4([1, 2, 3, 4], 5), v6(7)],
                    token: Some(vec![9; 8]),
                }),
            },
            Msg {
                tid: vec![0xff],
                body: Body::Error {
                    code: ERR_PROTOCOL,
                    message: "bad token".into(),
                },
            },
        ]
    }

    fn all_vectors() -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = SPEC_VECTORS.iter().map(|x| x.to_vec()).collect();
        for m in sample_msgs() {
            let mut out = Vec::new();
            encode(&m, &mut out);
            v.push(out);
        }
        v
    }

    #[test]
    fn spec_vectors_parse_and_reencode_identically() {
        for vec in SPEC_VECTORS {
            let m = parse(vec).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(vec)));
            let mut out = Vec::new();
            encode(&m, &mut out);
            assert_eq!(out, *vec, "{}", String::from_utf8_lossy(vec));
        }
    }

    #[test]
    fn spec_get_peers_reply_values_decode_as_peers() {
        let m = parse(SPEC_VECTORS[4]).unwrap();
        let Body::Response(r) = m.body else {
            panic!("not a response")
        };
        assert_eq!(r.token.as_deref(), Some(&b"aoeusnth"[..]));
        assert_eq!(r.values.len(), 2);
        assert_eq!(r.values[0], v4(*b"axje", u16::from_be_bytes(*b".u")));
    }

    #[test]
    fn announce_implied_port_parses() {
        let m = parse(SPEC_VECTORS[5]).unwrap();
        match m.body {
            Body::Query(Query::AnnouncePeer {
                port, implied_port, ..
            }) => {
                assert_eq!(port, 6881);
                assert!(implied_port);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sample_messages_roundtrip() {
        for m in sample_msgs() {
            let mut out = Vec::new();
            encode(&m, &mut out);
            assert!(bencode::decode(&out).is_ok());
            assert_eq!(parse(&out).unwrap(), m);
        }
    }

    #[test]
    fn compact_nodes_bad_length_rejected() {
        let mut r = b"d1:rd2:id20:abcdefghij01234567895:nodes25:".to_vec();
        r.extend_from_slice(&[0; 25]);
        r.extend_from_slice(b"e1:t2:aa1:y1:re");
        assert_eq!(parse(&r), Err(KrpcError::BadLength("nodes")));
        assert!(decode_nodes(&[0; 38 * 2], true).unwrap().len() == 2);
        assert!(decode_nodes(&[0; 38], false).is_none());
    }

    #[test]
    fn compact_nodes_beyond_cap_ignored() {
        let many = vec![1u8; COMPACT_NODE_V4 * (MAX_NODES + 5)];
        assert_eq!(decode_nodes(&many, false).unwrap().len(), MAX_NODES);
    }

    #[test]
    fn values_beyond_cap_and_malformed_entries_ignored() {
        let mut r = b"d1:rd2:id20:abcdefghij01234567896:valuesl".to_vec();
        r.extend_from_slice(b"3:abc");
        for _ in 0..(MAX_VALUES + 20) {
            r.extend_from_slice(b"6:abcdef");
        }
        r.extend_from_slice(b"ee1:t2:aa1:y1:re");
        let Body::Response(resp) = parse(&r).unwrap().body else {
            panic!()
        };
        assert_eq!(resp.values.len(), MAX_VALUES - 1);
    }

    #[test]
    fn oversized_datagram_rejected() {
        let big = vec![b'd'; MAX_MESSAGE_LEN + 1];
        assert_eq!(parse(&big), Err(KrpcError::TooLarge(MAX_MESSAGE_LEN + 1)));
    }

    #[test]
    fn long_tid_and_token_rejected() {
        let tid = format!(
            "d1:rd2:id20:abcdefghij0123456789e1:t17:{}1:y1:re",
            "a".repeat(17)
        );
        assert_eq!(parse(tid.as_bytes()), Err(KrpcError::TidTooLong(17)));
        let tok = format!(
            "d1:rd2:id20:abcdefghij01234567895:token65:{}e1:t2:aa1:y1:re",
            "a".repeat(65)
        );
        assert_eq!(parse(tok.as_bytes()), Err(KrpcError::TokenTooLong(65)));
    }

    #[test]
    fn bad_ids_and_ports_rejected() {
        assert_eq!(
            parse(b"d1:ad2:id3:abce1:q4:ping1:t2:aa1:y1:qe"),
            Err(KrpcError::BadLength("id"))
        );
        let p = b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti70000e5:token1:xe1:q13:announce_peer1:t2:aa1:y1:qe";
        assert_eq!(parse(p), Err(KrpcError::BadPort(70000)));
        assert_eq!(parse(b"d1:t2:aa1:y1:xe"), Err(KrpcError::UnknownType));
        assert_eq!(parse(b"li1ee"), Err(KrpcError::NotADict));
    }

    #[test]
    fn unknown_method_parses_as_unknown() {
        let m = parse(b"d1:ad2:id20:abcdefghij0123456789e1:q3:put1:t2:aa1:y1:qe").unwrap();
        assert_eq!(
            m.body,
            Body::Query(Query::Unknown {
                id: *b"abcdefghij0123456789"
            })
        );
    }

    #[test]
    fn want_unknown_entries_ignored() {
        let m = parse(b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz1234564:wantl2:n62:xxee1:q9:find_node1:t2:aa1:y1:qe").unwrap();
        match m.body {
            Body::Query(Query::FindNode { want, .. }) => {
                assert_eq!(
                    want,
                    Some(Want {
                        n4: false,
                        n6: true
                    })
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncation_sweep_never_panics_and_fails() {
        for v in all_vectors() {
            for i in 0..v.len() {
                assert!(parse(&v[..i]).is_err(), "prefix {i} of {:?}", v);
            }
        }
    }

    #[test]
    fn mutation_sweep_never_panics() {
        let mut rng = Rng::new(0x05ee_dd47);
        let vectors = all_vectors();
        for round in 0..20_000 {
            let mut v = vectors[round % vectors.len()].clone();
            let n = 1 + rng.below(4);
            for _ in 0..n {
                let i = rng.below(v.len());
                match rng.below(3) {
                    0 => v[i] = rng.next_u32() as u8,
                    1 => v[i] = b"0123456789:ediel"[rng.below(16)],
                    _ => {
                        v.remove(i);
                    }
                }
                if v.is_empty() {
                    break;
                }
            }
            if let Ok(m) = parse(&v) {
                // Whatever parses must re-encode into something that parses the same.
                let mut out = Vec::new();
                encode(&m, &mut out);
                assert_eq!(parse(&out).ok().as_ref(), Some(&m));
            }
        }
    }
}
