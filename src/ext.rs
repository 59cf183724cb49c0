//! Layers 1–2: the extension protocol (BEP 10) handshake and two extensions on top of it:
//! `ut_metadata` (BEP 9, fetching the info dictionary for magnet links) and `ut_pex` (BEP 11,
//! peer exchange).
//!
//! Codecs take the extended-message payload (after the BEP 10 id byte, which `wire` frames)
//! and return values; `MetadataFetch` assembles metadata pieces from several peers and checks
//! the whole dictionary against the info-hash; `PexState` decides what one peer is told and
//! when. Everything here is pure: no sockets, no clock (time comes in as `Instant`), and
//! nothing received is trusted beyond its named caps — PEX contacts are only candidates and
//! metadata is used only after its SHA-1 matches.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::bencode::{self, Value};
use crate::hash::sha1;
use crate::time::Instant;

// ---------------------------------------------------------------------------------------------
// Constants

pub const UT_METADATA: &str = "ut_metadata";
pub const UT_PEX: &str = "ut_pex";
/// Our local extended message ids (BEP 10: ids are chosen by the receiver, so these are what
/// peers put in the id byte of messages they send to us).
pub const OUR_UT_METADATA_ID: u8 = 1;
pub const OUR_UT_PEX_ID: u8 = 2;

/// Largest extension handshake parsed. Real ones are a few hundred bytes; a bigger payload
/// is refused before decoding.
pub const MAX_EXT_HANDSHAKE_LEN: usize = 16 * 1024;
/// Most entries kept from a handshake's `m` dictionary; clients advertise about ten.
pub const MAX_EXTENSIONS: usize = 64;
/// Longest extension name kept (`ut_metadata`, `lt_donthave`, ... are short).
pub const MAX_EXT_NAME_LEN: usize = 64;
/// Longest client name (`v`) kept, in bytes; it only goes to logs and `status`.
pub const MAX_CLIENT_NAME_LEN: usize = 128;
/// Largest `reqq` believed: it sizes how many requests we queue to the peer, and libtorrent's
/// default is 250, so anything above this is a peer inviting us to over-commit memory.
pub const MAX_REQQ: u32 = 2048;
/// Largest metadata (info dictionary) fetched. An 8 MiB info dictionary holds ~400 000 piece
/// hashes — far beyond real torrents — and the fetch buffer is allocated at this size at most.
/// A handshake announcing more parses with `metadata_size: None` (the peer is simply not used
/// for metadata); a data message claiming more is an error.
pub const MAX_METADATA_SIZE: u32 = 8 * 1024 * 1024;
/// BEP 9: metadata travels in 16 KiB pieces; only the last may be shorter.
pub const METADATA_PIECE_LEN: usize = 16 * 1024;
/// Pieces of the largest metadata we fetch; piece indices at or above it are refused.
pub const MAX_METADATA_PIECES: u32 = MAX_METADATA_SIZE / METADATA_PIECE_LEN as u32;
/// Largest ut_metadata payload: one piece plus its small bencoded header.
pub const MAX_METADATA_MSG_LEN: usize = METADATA_PIECE_LEN + 256;
/// Outstanding metadata requests per peer; small so pieces spread over several peers.
pub const MAX_METADATA_REQUESTS_PER_PEER: usize = 2;
/// A metadata request unanswered this long may be given to another peer.
pub const METADATA_REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Rejects after which a peer is not asked for metadata again during this fetch (BEP 9: a
/// reject means "does not have it"; one reject may be flood protection, several are not).
pub const MAX_METADATA_REJECTS: u32 = 2;
/// Peers remembered per fetch (for rejects and bans); a magnet fetch talks to a few dozen.
pub const MAX_METADATA_PEERS: usize = 128;

/// BEP 11 flags, one byte per added contact.
pub const PEX_FLAG_ENCRYPTION: u8 = 0x01;
pub const PEX_FLAG_SEED: u8 = 0x02;
pub const PEX_FLAG_UTP: u8 = 0x04;
pub const PEX_FLAG_HOLEPUNCH: u8 = 0x08;
pub const PEX_FLAG_REACHABLE: u8 = 0x10;
/// Largest ut_pex payload parsed: 200 IPv6 contacts with flags are under 4 KiB, so 64 KiB is
/// generous for "initial" messages while bounding the decoder.
pub const MAX_PEX_PAYLOAD_LEN: usize = 64 * 1024;
/// BEP 11: "Except for the initial PEX message the combined amount of added v4/v6 contacts
/// should not exceed 50 entries. The same applies to dropped entries." What we send.
pub const PEX_MAX_PER_MESSAGE: usize = 50;
/// Added contacts in our first message to a peer (BEP 11 lets it exceed 50).
pub const PEX_MAX_INITIAL: usize = 100;
/// Added (and, separately, dropped) contacts taken from one received message; the rest are
/// ignored. Senders should respect 50 after their first message; we tolerate four times that.
pub const MAX_PEX_ACCEPTED: usize = 200;
/// BEP 11: "Clients must batch updates to send no more than 1 PEX message per minute."
pub const PEX_INTERVAL: Duration = Duration::from_secs(60);
/// Connected peers considered per PEX diff, and contacts remembered as sent to one peer.
pub const MAX_PEX_TRACKED: usize = 1000;

const V4_COMPACT: usize = 6;
const V6_COMPACT: usize = 18;

// ---------------------------------------------------------------------------------------------
// Errors

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtError {
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    Bencode(bencode::Error),
    NotADict,
    MissingMsgType,
    BadPiece,
    BadTotalSize,
    MetadataTooLarge(i64),
    DataTooLong(usize),
    TrailingData,
}

impl fmt::Display for ExtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExtError::TooLong { what, len, max } => {
                write!(f, "{what} of {len} bytes is longer than {max}")
            }
            ExtError::Bencode(e) => write!(f, "extension message: {e}"),
            ExtError::NotADict => write!(f, "extension message is not a bencoded dictionary"),
            ExtError::MissingMsgType => write!(f, "ut_metadata message has no integer msg_type"),
            ExtError::BadPiece => write!(f, "ut_metadata piece missing or out of range"),
            ExtError::BadTotalSize => write!(f, "ut_metadata data has no valid total_size"),
            ExtError::MetadataTooLarge(n) => {
                write!(
                    f,
                    "metadata size {n} is above the {MAX_METADATA_SIZE}-byte cap"
                )
            }
            ExtError::DataTooLong(n) => write!(
                f,
                "ut_metadata piece of {n} bytes is longer than {METADATA_PIECE_LEN}"
            ),
            ExtError::TrailingData => write!(f, "ut_metadata message has trailing bytes"),
        }
    }
}

impl std::error::Error for ExtError {}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataError {
    SizeOutOfRange(u32),
    PieceOutOfRange(u32),
    WrongLength {
        piece: u32,
        len: usize,
        expected: usize,
    },
    SizeMismatch {
        expected: u32,
        got: u32,
    },
    PeerBanned,
    HashMismatch,
}

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetadataError::SizeOutOfRange(n) => {
                write!(f, "metadata size {n} is not within 1..={MAX_METADATA_SIZE}")
            }
            MetadataError::PieceOutOfRange(p) => write!(f, "metadata piece {p} is out of range"),
            MetadataError::WrongLength {
                piece,
                len,
                expected,
            } => write!(
                f,
                "metadata piece {piece} has {len} bytes, expected {expected}"
            ),
            MetadataError::SizeMismatch { expected, got } => {
                write!(f, "peer says metadata is {got} bytes, expected {expected}")
            }
            MetadataError::PeerBanned => write!(f, "metadata from a peer that sent bad data"),
            MetadataError::HashMismatch => {
                write!(f, "metadata does not match the info-hash; fetching again")
            }
        }
    }
}

impl std::error::Error for MetadataError {}

fn decode_dict<'a>(
    payload: &'a [u8],
    what: &'static str,
    max: usize,
) -> Result<Value<'a>, ExtError> {
    if payload.len() > max {
        return Err(ExtError::TooLong {
            what,
            len: payload.len(),
            max,
        });
    }
    let v = bencode::decode(payload).map_err(ExtError::Bencode)?;
    if !matches!(v, Value::Dict(_)) {
        return Err(ExtError::NotADict);
    }
    Ok(v)
}

/// Text for logs: capped (on a char boundary), control characters blanked.
fn clean_text(b: &[u8], max: usize) -> String {
    let mut s = String::new();
    for c in String::from_utf8_lossy(b).chars() {
        if s.len() + c.len_utf8() > max {
            break;
        }
        s.push(if c.is_control() { ' ' } else { c });
    }
    s
}

fn ipv4_of(b: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(b).ok().map(Ipv4Addr::from)
}

fn ipv6_of(b: &[u8]) -> Option<Ipv6Addr> {
    <[u8; 16]>::try_from(b).ok().map(Ipv6Addr::from)
}

// ---------------------------------------------------------------------------------------------
// BEP 10 extension handshake

/// The BEP 10 handshake dictionary (extended message id 0). Unknown keys are ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtHandshake {
    /// Extension name → the id the *sender* wants for it; 0 means "disabled" (BEP 10 lets a
    /// later handshake switch extensions off). At most `MAX_EXTENSIONS`, names unique.
    pub m: Vec<(String, u8)>,
    /// The sender's TCP listen port.
    pub p: Option<u16>,
    /// Client name and version.
    pub v: Option<String>,
    /// Requests the sender queues without dropping, clamped to `MAX_REQQ`.
    pub reqq: Option<u32>,
    /// BEP 9 metadata size; `None` when absent, zero, negative or above `MAX_METADATA_SIZE`.
    pub metadata_size: Option<u32>,
    /// Our address as the sender sees it.
    pub yourip: Option<IpAddr>,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

impl ExtHandshake {
    /// The id to use when sending extension `name` to this peer (`None` if absent or 0).
    pub fn id_of(&self, name: &str) -> Option<u8> {
        self.m
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| *id)
            .filter(|&id| id != 0)
    }

    /// The bencoded payload (keys sorted, as bencode requires).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![b'd'];
        if let Some(ip) = self.ipv4 {
            bencode::put_kv_bytes(&mut out, "ipv4", &ip.octets());
        }
        if let Some(ip) = self.ipv6 {
            bencode::put_kv_bytes(&mut out, "ipv6", &ip.octets());
        }
        let mut m: Vec<&(String, u8)> = Vec::new();
        for e in &self.m {
            if !m.iter().any(|x| x.0 == e.0) {
                m.push(e);
            }
        }
        m.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        bencode::put_bytes(&mut out, b"m");
        out.push(b'd');
        for (name, id) in m {
            bencode::put_kv_int(&mut out, name, i64::from(*id));
        }
        out.push(b'e');
        if let Some(n) = self.metadata_size {
            bencode::put_kv_int(&mut out, "metadata_size", i64::from(n));
        }
        if let Some(p) = self.p {
            bencode::put_kv_int(&mut out, "p", i64::from(p));
        }
        if let Some(r) = self.reqq {
            bencode::put_kv_int(&mut out, "reqq", i64::from(r));
        }
        if let Some(v) = &self.v {
            bencode::put_kv_bytes(&mut out, "v", v.as_bytes());
        }
        match self.yourip {
            Some(IpAddr::V4(ip)) => bencode::put_kv_bytes(&mut out, "yourip", &ip.octets()),
            Some(IpAddr::V6(ip)) => bencode::put_kv_bytes(&mut out, "yourip", &ip.octets()),
            None => {}
        }
        out.push(b'e');
        out
    }

    /// Parses a handshake payload. Only the envelope can fail (size, bencode, not a dict);
    /// every field that is missing, of the wrong type or out of range is simply `None` (or
    /// skipped, for `m` entries), since BEP 10 makes all of them optional.
    pub fn parse(payload: &[u8]) -> Result<ExtHandshake, ExtError> {
        let v = decode_dict(payload, "extension handshake", MAX_EXT_HANDSHAKE_LEN)?;
        let mut h = ExtHandshake::default();
        if let Some(m) = v.get(b"m").and_then(Value::as_dict) {
            for (k, id) in m {
                if h.m.len() >= MAX_EXTENSIONS {
                    break;
                }
                let Ok(name) = std::str::from_utf8(k) else {
                    continue;
                };
                let Some(id) = id.as_int().and_then(|i| u8::try_from(i).ok()) else {
                    continue;
                };
                if name.len() > MAX_EXT_NAME_LEN || h.m.iter().any(|(n, _)| n == name) {
                    continue;
                }
                h.m.push((name.to_string(), id));
            }
        }
        let int = |key: &[u8]| v.get(key).and_then(Value::as_int);
        h.p = int(b"p")
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p != 0);
        h.v = v
            .get(b"v")
            .and_then(Value::as_bytes)
            .map(|b| clean_text(b, MAX_CLIENT_NAME_LEN));
        h.reqq = int(b"reqq")
            .filter(|&r| r > 0)
            .map(|r| u32::try_from(r.min(i64::from(MAX_REQQ))).unwrap_or(MAX_REQQ));
        h.metadata_size = int(b"metadata_size")
            .and_then(|n| u32::try_from(n).ok())
            .filter(|&n| n > 0 && n <= MAX_METADATA_SIZE);
        let bytes = |key: &[u8]| v.get(key).and_then(Value::as_bytes);
        h.yourip = bytes(b"yourip").and_then(|b| {
            ipv4_of(b)
                .map(IpAddr::V4)
                .or_else(|| ipv6_of(b).map(IpAddr::V6))
        });
        h.ipv4 = bytes(b"ipv4").and_then(ipv4_of);
        h.ipv6 = bytes(b"ipv6").and_then(ipv6_of);
        Ok(h)
    }
}

// ---------------------------------------------------------------------------------------------
// BEP 9 ut_metadata messages

const MSG_REQUEST: i64 = 0;
const MSG_DATA: i64 = 1;
const MSG_REJECT: i64 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetadataMsg<'a> {
    Request {
        piece: u32,
    },
    /// `data` is the raw piece that follows the dictionary.
    Data {
        piece: u32,
        total_size: u32,
        data: &'a [u8],
    },
    Reject {
        piece: u32,
    },
    /// BEP 9: "an unrecognized message ID MUST be ignored".
    Unknown {
        msg_type: i64,
    },
}

fn metadata_header(out: &mut Vec<u8>, msg_type: i64, piece: u32, total_size: Option<u32>) {
    out.push(b'd');
    bencode::put_kv_int(out, "msg_type", msg_type);
    bencode::put_kv_int(out, "piece", i64::from(piece));
    if let Some(n) = total_size {
        bencode::put_kv_int(out, "total_size", i64::from(n));
    }
    out.push(b'e');
}

pub fn encode_metadata_request(piece: u32) -> Vec<u8> {
    let mut out = Vec::new();
    metadata_header(&mut out, MSG_REQUEST, piece, None);
    out
}

/// A data message: the dictionary, then the piece bytes (BEP 9 "data").
pub fn encode_metadata_data(piece: u32, total_size: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    metadata_header(&mut out, MSG_DATA, piece, Some(total_size));
    out.extend_from_slice(data);
    out
}

pub fn encode_metadata_reject(piece: u32) -> Vec<u8> {
    let mut out = Vec::new();
    metadata_header(&mut out, MSG_REJECT, piece, None);
    out
}

/// Parses a ut_metadata payload. The dictionary is decoded with `decode_prefix` because a data
/// message carries the raw piece after it; requests and rejects must have nothing after it.
pub fn parse_metadata_msg(payload: &[u8]) -> Result<MetadataMsg<'_>, ExtError> {
    if payload.len() > MAX_METADATA_MSG_LEN {
        return Err(ExtError::TooLong {
            what: "ut_metadata message",
            len: payload.len(),
            max: MAX_METADATA_MSG_LEN,
        });
    }
    let (v, used) = bencode::decode_prefix(payload).map_err(ExtError::Bencode)?;
    if !matches!(v, Value::Dict(_)) {
        return Err(ExtError::NotADict);
    }
    let rest = payload.get(used..).unwrap_or(&[]);
    let msg_type = v
        .get(b"msg_type")
        .and_then(Value::as_int)
        .ok_or(ExtError::MissingMsgType)?;
    if !matches!(msg_type, MSG_REQUEST | MSG_DATA | MSG_REJECT) {
        return Ok(MetadataMsg::Unknown { msg_type });
    }
    let piece = v
        .get(b"piece")
        .and_then(Value::as_int)
        .and_then(|p| u32::try_from(p).ok())
        .filter(|&p| p < MAX_METADATA_PIECES)
        .ok_or(ExtError::BadPiece)?;
    match msg_type {
        MSG_DATA => {
            let total = v
                .get(b"total_size")
                .and_then(Value::as_int)
                .ok_or(ExtError::BadTotalSize)?;
            if total > i64::from(MAX_METADATA_SIZE) {
                return Err(ExtError::MetadataTooLarge(total));
            }
            let total_size = u32::try_from(total)
                .ok()
                .filter(|&n| n > 0)
                .ok_or(ExtError::BadTotalSize)?;
            if rest.len() > METADATA_PIECE_LEN {
                return Err(ExtError::DataTooLong(rest.len()));
            }
            Ok(MetadataMsg::Data {
                piece,
                total_size,
                data: rest,
            })
        }
        _ if !rest.is_empty() => Err(ExtError::TrailingData),
        MSG_REQUEST => Ok(MetadataMsg::Request { piece }),
        _ => Ok(MetadataMsg::Reject { piece }),
    }
}

/// Number of 16 KiB pieces in `size` bytes of metadata.
pub fn metadata_piece_count(size: u32) -> u32 {
    size.div_ceil(METADATA_PIECE_LEN as u32)
}

/// The bytes of metadata piece `piece` (for answering requests when serving), or `None` when
/// out of range — answer that with a reject.
pub fn metadata_piece(metadata: &[u8], piece: u32) -> Option<&[u8]> {
    let start = (piece as usize).checked_mul(METADATA_PIECE_LEN)?;
    if start >= metadata.len() {
        return None;
    }
    let end = start.saturating_add(METADATA_PIECE_LEN).min(metadata.len());
    metadata.get(start..end)
}

// ---------------------------------------------------------------------------------------------
// Metadata assembly

/// Whatever the engine uses to tell peers apart. Keys must not be reused for another peer
/// during one fetch (bans are remembered by key).
pub type PeerKey = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Missing,
    Requested { peer: PeerKey, at: Instant },
    Have { from: PeerKey },
}

#[derive(Clone, Copy, Debug)]
struct PeerRecord {
    key: PeerKey,
    rejects: u32,
}

/// Fetches one info dictionary over ut_metadata from any number of peers.
///
/// The engine asks `next_request(now, peer)` for each peer that advertised ut_metadata and a
/// matching `metadata_size`, sends the request, and feeds `on_data` / `on_reject`; when
/// `finish()` returns `Some`, the round is over: `Ok(info)` is the verified info dictionary,
/// `Err(HashMismatch)` means the pieces were reset and the fetch continues.
///
/// Bad peers: a failed round fetched from a single peer bans it at once; otherwise the next
/// round gives each piece to a different peer than last time where it can, and when that round
/// verifies, every peer whose earlier piece differs from the verified one is banned. Banned
/// peers get no requests and their data is refused (`bad_peers()` lists them for the engine).
#[derive(Clone, Debug)]
pub struct MetadataFetch {
    info_hash: [u8; 20],
    size: u32,
    buf: Vec<u8>,
    slots: Vec<Slot>,
    /// Per piece, the SHA-1 of what the last failed round received and from whom.
    previous: Option<Vec<([u8; 20], PeerKey)>>,
    peers: Vec<PeerRecord>,
    banned: Vec<PeerKey>,
    failures: u32,
    done: bool,
}

impl MetadataFetch {
    /// `size` comes from the peer's handshake (`metadata_size`) and must be within
    /// 1..=`MAX_METADATA_SIZE`; the buffer is allocated at that size.
    pub fn new(info_hash: [u8; 20], size: u32) -> Result<MetadataFetch, MetadataError> {
        if size == 0 || size > MAX_METADATA_SIZE {
            return Err(MetadataError::SizeOutOfRange(size));
        }
        let n = metadata_piece_count(size) as usize;
        Ok(MetadataFetch {
            info_hash,
            size,
            buf: vec![0; size as usize],
            slots: vec![Slot::Missing; n],
            previous: None,
            peers: Vec::new(),
            banned: Vec::new(),
            failures: 0,
            done: false,
        })
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    pub fn piece_count(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Rounds that failed the hash check so far (the engine may give up after a few).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Peers identified as having sent bad metadata.
    pub fn bad_peers(&self) -> &[PeerKey] {
        &self.banned
    }

    pub fn pieces_have(&self) -> u32 {
        self.slots
            .iter()
            .filter(|s| matches!(s, Slot::Have { .. }))
            .count() as u32
    }

    fn piece_len(&self, piece: u32) -> usize {
        let start = (piece as usize).saturating_mul(METADATA_PIECE_LEN);
        (self.size as usize)
            .saturating_sub(start)
            .min(METADATA_PIECE_LEN)
    }

    fn record(&mut self, peer: PeerKey) -> Option<&mut PeerRecord> {
        if let Some(i) = self.peers.iter().position(|p| p.key == peer) {
            return self.peers.get_mut(i);
        }
        if self.peers.len() >= MAX_METADATA_PEERS {
            return None;
        }
        self.peers.push(PeerRecord {
            key: peer,
            rejects: 0,
        });
        self.peers.last_mut()
    }

    /// The piece to request from `peer` now, if any. Each peer has at most
    /// `MAX_METADATA_REQUESTS_PER_PEER` requests out, so pieces spread over the peers that
    /// ask; after a failed round a piece goes preferably to another peer than last time; when
    /// nothing is missing, a request older than `METADATA_REQUEST_TIMEOUT` is re-issued.
    pub fn next_request(&mut self, now: Instant, peer: PeerKey) -> Option<u32> {
        if self.done || self.banned.contains(&peer) {
            return None;
        }
        if self.record(peer)?.rejects >= MAX_METADATA_REJECTS {
            return None;
        }
        let outstanding = self
            .slots
            .iter()
            .filter(|s| matches!(s, Slot::Requested { peer: p, .. } if *p == peer))
            .count();
        if outstanding >= MAX_METADATA_REQUESTS_PER_PEER {
            return None;
        }
        let prev_from = |i: usize| {
            self.previous
                .as_ref()
                .and_then(|p| p.get(i))
                .map(|(_, from)| *from)
        };
        let missing = |s: &Slot| *s == Slot::Missing;
        let pick = (0..self.slots.len())
            .find(|&i| self.slots.get(i).is_some_and(missing) && prev_from(i) != Some(peer))
            .or_else(|| self.slots.iter().position(missing))
            .or_else(|| {
                self.slots.iter().position(|s| {
                    matches!(s, Slot::Requested { peer: p, at }
                        if *p != peer && now.since(*at) >= METADATA_REQUEST_TIMEOUT)
                })
            })?;
        *self.slots.get_mut(pick)? = Slot::Requested { peer, at: now };
        Some(pick as u32)
    }

    /// Stores a data message's piece. Data for a piece we already have is ignored; data we did
    /// not ask this peer for is still accepted (it is checked by the hash like any other).
    pub fn on_data(
        &mut self,
        peer: PeerKey,
        piece: u32,
        total_size: u32,
        data: &[u8],
    ) -> Result<(), MetadataError> {
        if self.banned.contains(&peer) {
            return Err(MetadataError::PeerBanned);
        }
        if total_size != self.size {
            return Err(MetadataError::SizeMismatch {
                expected: self.size,
                got: total_size,
            });
        }
        let expected = self.piece_len(piece);
        let slot = *self
            .slots
            .get(piece as usize)
            .ok_or(MetadataError::PieceOutOfRange(piece))?;
        if data.len() != expected {
            return Err(MetadataError::WrongLength {
                piece,
                len: data.len(),
                expected,
            });
        }
        if self.done || matches!(slot, Slot::Have { .. }) {
            return Ok(());
        }
        let start = (piece as usize).saturating_mul(METADATA_PIECE_LEN);
        let dst = self
            .buf
            .get_mut(start..start.saturating_add(expected))
            .ok_or(MetadataError::PieceOutOfRange(piece))?;
        dst.copy_from_slice(data);
        if let Some(s) = self.slots.get_mut(piece as usize) {
            *s = Slot::Have { from: peer };
        }
        Ok(())
    }

    /// BEP 9 reject: the piece goes back to the pool; a peer that keeps rejecting is not asked
    /// again in this fetch.
    pub fn on_reject(&mut self, peer: PeerKey, piece: u32) {
        if let Some(s) = self.slots.get_mut(piece as usize) {
            if matches!(s, Slot::Requested { peer: p, .. } if *p == peer) {
                *s = Slot::Missing;
            }
        }
        if let Some(r) = self.record(peer) {
            r.rejects = r.rejects.saturating_add(1);
        }
    }

    /// The peer disconnected: its outstanding requests go back to the pool.
    pub fn on_peer_gone(&mut self, peer: PeerKey) {
        for s in &mut self.slots {
            if matches!(s, Slot::Requested { peer: p, .. } if *p == peer) {
                *s = Slot::Missing;
            }
        }
        self.peers.retain(|p| p.key != peer);
    }

    fn ban(&mut self, peer: PeerKey) {
        if self.banned.contains(&peer) {
            return;
        }
        if self.banned.len() >= MAX_METADATA_PEERS {
            self.banned.remove(0);
        }
        self.banned.push(peer);
        self.on_peer_gone(peer);
    }

    /// `None` until every piece is in (and after success). Then checks SHA-1 of the whole
    /// dictionary against the info-hash (BEP 9: metadata is validated by the info-hash): on a
    /// match returns the dictionary, otherwise resets every piece and returns `HashMismatch`.
    pub fn finish(&mut self) -> Option<Result<Vec<u8>, MetadataError>> {
        if self.done || !self.slots.iter().all(|s| matches!(s, Slot::Have { .. })) {
            return None;
        }
        let from: Vec<PeerKey> = self
            .slots
            .iter()
            .map(|s| match s {
                Slot::Have { from } => *from,
                _ => 0,
            })
            .collect();
        let piece_hashes: Vec<[u8; 20]> = self
            .buf
            .chunks(METADATA_PIECE_LEN)
            .map(crate::hash::sha1)
            .collect();
        if sha1(&self.buf) == self.info_hash {
            if let Some(prev) = self.previous.take() {
                for ((old, peer), new) in prev.iter().zip(&piece_hashes) {
                    if old != new {
                        self.ban(*peer);
                    }
                }
            }
            self.done = true;
            return Some(Ok(std::mem::take(&mut self.buf)));
        }
        self.failures = self.failures.saturating_add(1);
        if let Some(first) = from.first() {
            if from.iter().all(|p| p == first) {
                self.ban(*first);
            }
        }
        self.previous = Some(piece_hashes.into_iter().zip(from).collect());
        for s in &mut self.slots {
            *s = Slot::Missing;
        }
        Some(Err(MetadataError::HashMismatch))
    }
}

// ---------------------------------------------------------------------------------------------
// BEP 11 ut_pex

/// One ut_pex message; IPv4 and IPv6 contacts together (split by family on the wire).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PexMessage {
    /// Contacts with their BEP 11 flags (`PEX_FLAG_*`).
    pub added: Vec<(SocketAddr, u8)>,
    pub dropped: Vec<SocketAddr>,
}

fn compact(sa: &SocketAddr) -> (bool, Vec<u8>) {
    let mut b = Vec::with_capacity(V6_COMPACT);
    let v6 = match sa.ip().to_canonical() {
        IpAddr::V4(ip) => {
            b.extend_from_slice(&ip.octets());
            false
        }
        IpAddr::V6(ip) => {
            b.extend_from_slice(&ip.octets());
            true
        }
    };
    b.extend_from_slice(&sa.port().to_be_bytes());
    (v6, b)
}

fn contact(c: &[u8]) -> Option<SocketAddr> {
    let (ip, port) = match c.len() {
        V4_COMPACT => (IpAddr::V4(ipv4_of(c.get(..4)?)?), c.get(4..6)?),
        V6_COMPACT => (IpAddr::V6(ipv6_of(c.get(..16)?)?), c.get(16..18)?),
        _ => return None,
    };
    let port = u16::from_be_bytes(port.try_into().ok()?);
    let ip = ip.to_canonical();
    if port == 0 || ip.is_unspecified() {
        return None;
    }
    Some(SocketAddr::new(ip, port))
}

impl PexMessage {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.dropped.is_empty()
    }

    /// The bencoded payload. Keys with nothing to say are left out, except that an empty
    /// message still carries `added` (BEP 11: at least one of the four lists must be present).
    pub fn encode(&self) -> Vec<u8> {
        let (mut a4, mut f4, mut a6, mut f6, mut d4, mut d6) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for (sa, flags) in &self.added {
            let (v6, b) = compact(sa);
            if v6 {
                a6.extend_from_slice(&b);
                f6.push(*flags);
            } else {
                a4.extend_from_slice(&b);
                f4.push(*flags);
            }
        }
        for sa in &self.dropped {
            let (v6, b) = compact(sa);
            if v6 {
                d6.extend_from_slice(&b);
            } else {
                d4.extend_from_slice(&b);
            }
        }
        let mut out = vec![b'd'];
        // Sorted key order: added, added.f, added6, added6.f, dropped, dropped6.
        let empty = self.is_empty();
        for (k, v) in [
            ("added", &a4),
            ("added.f", &f4),
            ("added6", &a6),
            ("added6.f", &f6),
            ("dropped", &d4),
            ("dropped6", &d6),
        ] {
            if !v.is_empty() || (empty && k == "added") {
                bencode::put_kv_bytes(&mut out, k, v);
            }
        }
        out.push(b'e');
        out
    }

    /// Parses a ut_pex payload. Compact strings keep their whole entries (a trailing partial
    /// one is ignored); flags missing for an entry count as 0; port-0, unspecified and duplicate
    /// contacts are dropped; at most `MAX_PEX_ACCEPTED` added and as many dropped are kept
    /// (IPv4 first). Lists of the wrong type count as absent.
    pub fn parse(payload: &[u8]) -> Result<PexMessage, ExtError> {
        let v = decode_dict(payload, "ut_pex message", MAX_PEX_PAYLOAD_LEN)?;
        let bytes = |k: &[u8]| v.get(k).and_then(Value::as_bytes).unwrap_or(&[]);
        let mut m = PexMessage::default();
        for (list, flags, stride) in [
            (bytes(b"added"), bytes(b"added.f"), V4_COMPACT),
            (bytes(b"added6"), bytes(b"added6.f"), V6_COMPACT),
        ] {
            for (i, c) in list.chunks_exact(stride).enumerate() {
                if m.added.len() >= MAX_PEX_ACCEPTED {
                    break;
                }
                let Some(sa) = contact(c) else { continue };
                if !m.added.iter().any(|(a, _)| *a == sa) {
                    m.added.push((sa, flags.get(i).copied().unwrap_or(0)));
                }
            }
        }
        for (list, stride) in [
            (bytes(b"dropped"), V4_COMPACT),
            (bytes(b"dropped6"), V6_COMPACT),
        ] {
            for c in list.chunks_exact(stride) {
                if m.dropped.len() >= MAX_PEX_ACCEPTED {
                    break;
                }
                let Some(sa) = contact(c) else { continue };
                if !m.dropped.contains(&sa) {
                    m.dropped.push(sa);
                }
            }
        }
        Ok(m)
    }
}

/// What one peer has been told over PEX, and when.
///
/// `poll(now, current)` gets the contacts we are connected to right now (excluding the peer
/// this state belongs to; for private torrents, BEP 27, PEX is never used at all) and returns
/// the message to send, if one is due: contacts not yet sent are `added`, contacts sent
/// earlier but gone are `dropped`. At most one message per `PEX_INTERVAL` (BEP 11); what does
/// not fit under the per-message caps waits for the next one.
#[derive(Clone, Debug, Default)]
pub struct PexState {
    sent: Vec<SocketAddr>,
    last: Option<Instant>,
}

impl PexState {
    pub fn new() -> PexState {
        PexState::default()
    }

    /// Earliest time the next message may go out.
    pub fn poll_at(&self) -> Instant {
        self.last.map_or(Instant::ZERO, |t| t + PEX_INTERVAL)
    }

    /// Contacts this peer currently believes we are connected to.
    pub fn sent(&self) -> &[SocketAddr] {
        &self.sent
    }

    pub fn poll(&mut self, now: Instant, current: &[(SocketAddr, u8)]) -> Option<PexMessage> {
        if self.last.is_some() && now < self.poll_at() {
            return None;
        }
        let add_cap = if self.last.is_none() {
            PEX_MAX_INITIAL
        } else {
            PEX_MAX_PER_MESSAGE
        };
        let current: Vec<(SocketAddr, u8)> = current
            .iter()
            .take(MAX_PEX_TRACKED)
            .filter(|(sa, _)| sa.port() != 0 && !sa.ip().is_unspecified())
            .map(|(sa, f)| (SocketAddr::new(sa.ip().to_canonical(), sa.port()), *f))
            .collect();
        let now_set: HashSet<SocketAddr> = current.iter().map(|(sa, _)| *sa).collect();
        let sent_set: HashSet<SocketAddr> = self.sent.iter().copied().collect();
        let mut msg = PexMessage::default();
        for sa in &self.sent {
            if msg.dropped.len() >= PEX_MAX_PER_MESSAGE {
                break;
            }
            if !now_set.contains(sa) {
                msg.dropped.push(*sa);
            }
        }
        let room =
            MAX_PEX_TRACKED.saturating_sub(self.sent.len().saturating_sub(msg.dropped.len()));
        let mut added_set = HashSet::new();
        for (sa, flags) in current {
            if msg.added.len() >= add_cap.min(room) {
                break;
            }
            if !sent_set.contains(&sa) && added_set.insert(sa) {
                msg.added.push((sa, flags));
            }
        }
        if msg.is_empty() {
            return None;
        }
        let dropped: HashSet<SocketAddr> = msg.dropped.iter().copied().collect();
        self.sent.retain(|sa| !dropped.contains(sa));
        self.sent.extend(msg.added.iter().map(|(sa, _)| *sa));
        self.last = Some(now);
        Some(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn mutate(rng: &mut Rng, v: &[u8]) -> Vec<u8> {
        let mut m = v.to_vec();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(m.len().max(1));
            match rng.below(4) {
                0 if i < m.len() => m[i] = rng.next_u32() as u8,
                1 if i < m.len() => m[i] ^= 1 << rng.below(8),
                2 if i < m.len() => {
                    m.remove(i);
                }
                _ => m.insert(i.min(m.len()), rng.next_u32() as u8),
            }
        }
        m
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn at(s: u64) -> Instant {
        Instant::from_secs(s)
    }

    // ---- handshake ----

    fn sample_handshake() -> ExtHandshake {
        ExtHandshake {
            m: vec![
                (UT_PEX.into(), OUR_UT_PEX_ID),
                (UT_METADATA.into(), OUR_UT_METADATA_ID),
            ],
            p: Some(6881),
            v: Some("atorrent 0.1".into()),
            reqq: Some(250),
            metadata_size: Some(31235),
            yourip: Some(IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4))),
            ipv4: None,
            ipv6: Some(Ipv6Addr::LOCALHOST),
        }
    }

    #[test]
    fn handshake_encode_vector_and_roundtrip() {
        let h = sample_handshake();
        let enc = h.encode();
        let mut want = b"d4:ipv616:".to_vec();
        want.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        want.extend_from_slice(
            b"1:md11:ut_metadatai1e6:ut_pexi2ee13:metadata_sizei31235e1:pi6881e\
              4:reqqi250e1:v12:atorrent 0.16:yourip4:\x01\x02\x03\x04e",
        );
        assert_eq!(enc, want);
        let back = ExtHandshake::parse(&enc).unwrap();
        // `m` comes back in the sorted wire order.
        assert_eq!(back.id_of(UT_METADATA), Some(1));
        assert_eq!(back.id_of(UT_PEX), Some(2));
        assert_eq!(
            ExtHandshake {
                m: vec![],
                ..back.clone()
            },
            ExtHandshake { m: vec![], ..h }
        );
    }

    #[test]
    fn handshake_parses_bep10_example_and_ignores_junk() {
        // BEP 10's example, with the length of "\u{b5}T_PEX" corrected to 7 bytes.
        let p = b"d1:md11:LT_metadatai1e7:\xc2\xb5T_PEXi2ee1:pi6881e1:v13:\xc2\xb5Torrent 1.2e";
        let h = ExtHandshake::parse(p).unwrap();
        assert_eq!(h.id_of("LT_metadata"), Some(1));
        assert_eq!(h.id_of("\u{b5}T_PEX"), Some(2));
        assert_eq!(h.p, Some(6881));
        assert_eq!(h.v.as_deref(), Some("\u{b5}Torrent 1.2"));
        // Disabled (0), out-of-range and mistyped entries; bad p, reqq, yourip.
        let p = b"d1:md1:ai0e1:bi256e1:c1:xe1:pi0e4:reqqi999999e6:yourip3:abc1:v3:a\nbe";
        let h = ExtHandshake::parse(p).unwrap();
        assert_eq!(h.m, vec![("a".to_string(), 0)]);
        assert_eq!(h.id_of("a"), None);
        assert_eq!((h.p, h.yourip), (None, None));
        assert_eq!(h.reqq, Some(MAX_REQQ));
        assert_eq!(h.v.as_deref(), Some("a b"));
        assert_eq!(ExtHandshake::parse(b"le"), Err(ExtError::NotADict));
        assert!(matches!(
            ExtHandshake::parse(&vec![b' '; MAX_EXT_HANDSHAKE_LEN + 1]),
            Err(ExtError::TooLong { .. })
        ));
    }

    #[test]
    fn handshake_oversize_metadata_size_is_none() {
        let mut h = sample_handshake();
        h.metadata_size = Some(MAX_METADATA_SIZE);
        assert_eq!(
            ExtHandshake::parse(&h.encode()).unwrap().metadata_size,
            Some(MAX_METADATA_SIZE)
        );
        h.metadata_size = Some(MAX_METADATA_SIZE + 1);
        assert_eq!(
            ExtHandshake::parse(&h.encode()).unwrap().metadata_size,
            None
        );
        let h = ExtHandshake::parse(b"d13:metadata_sizei-5ee").unwrap();
        assert_eq!(h.metadata_size, None);
        assert!(MetadataFetch::new([0; 20], MAX_METADATA_SIZE + 1).is_err());
        assert!(MetadataFetch::new([0; 20], 0).is_err());
    }

    #[test]
    fn handshake_caps_extension_count() {
        let mut p = b"d1:md".to_vec();
        for i in 0..(MAX_EXTENSIONS + 20) {
            bencode::put_kv_int(&mut p, &format!("x{i:03}"), 1);
        }
        p.extend_from_slice(b"ee");
        assert_eq!(ExtHandshake::parse(&p).unwrap().m.len(), MAX_EXTENSIONS);
    }

    // ---- ut_metadata messages ----

    #[test]
    fn metadata_message_vectors() {
        assert_eq!(encode_metadata_request(0), b"d8:msg_typei0e5:piecei0ee");
        assert_eq!(encode_metadata_reject(3), b"d8:msg_typei2e5:piecei3ee");
        let d = encode_metadata_data(1, 34256, b"xyz");
        assert_eq!(d, b"d8:msg_typei1e5:piecei1e10:total_sizei34256eexyz");
        assert_eq!(
            parse_metadata_msg(&d),
            Ok(MetadataMsg::Data {
                piece: 1,
                total_size: 34256,
                data: b"xyz"
            })
        );
        assert_eq!(
            parse_metadata_msg(b"d8:msg_typei0e5:piecei0ee"),
            Ok(MetadataMsg::Request { piece: 0 })
        );
        assert_eq!(
            parse_metadata_msg(b"d8:msg_typei2e5:piecei3ee"),
            Ok(MetadataMsg::Reject { piece: 3 })
        );
        assert_eq!(
            parse_metadata_msg(b"d8:msg_typei7ee"),
            Ok(MetadataMsg::Unknown { msg_type: 7 })
        );
    }

    #[test]
    fn metadata_message_rejects_bad_fields() {
        let big = i64::from(MAX_METADATA_SIZE) + 1;
        let m = format!("d8:msg_typei1e5:piecei0e10:total_sizei{big}ee");
        assert_eq!(
            parse_metadata_msg(m.as_bytes()),
            Err(ExtError::MetadataTooLarge(big))
        );
        let cases: [(&[u8], ExtError); 6] = [
            (b"d5:piecei0ee", ExtError::MissingMsgType),
            (b"d8:msg_typei0ee", ExtError::BadPiece),
            (b"d8:msg_typei0e5:piecei-1ee", ExtError::BadPiece),
            (b"d8:msg_typei1e5:piecei0ee", ExtError::BadTotalSize),
            (b"d8:msg_typei0e5:piecei0eex", ExtError::TrailingData),
            (b"i1e", ExtError::NotADict),
        ];
        for (p, e) in cases {
            assert_eq!(
                parse_metadata_msg(p),
                Err(e),
                "{}",
                String::from_utf8_lossy(p)
            );
        }
        let p = format!("d8:msg_typei0e5:piecei{MAX_METADATA_PIECES}ee");
        assert_eq!(parse_metadata_msg(p.as_bytes()), Err(ExtError::BadPiece));
        let d = encode_metadata_data(0, 100_000, &[0; METADATA_PIECE_LEN + 1]);
        assert_eq!(
            parse_metadata_msg(&d),
            Err(ExtError::DataTooLong(METADATA_PIECE_LEN + 1))
        );
    }

    #[test]
    fn metadata_piece_slices_for_serving() {
        let meta = vec![7u8; METADATA_PIECE_LEN + 10];
        assert_eq!(metadata_piece_count(meta.len() as u32), 2);
        assert_eq!(metadata_piece(&meta, 0).unwrap().len(), METADATA_PIECE_LEN);
        assert_eq!(metadata_piece(&meta, 1).unwrap().len(), 10);
        assert_eq!(metadata_piece(&meta, 2), None);
        assert_eq!(metadata_piece(&meta, u32::MAX), None);
    }

    // ---- metadata assembly ----

    /// A real info dictionary of about 40 KiB (three metadata pieces).
    fn info_dict() -> Vec<u8> {
        let mut pieces = vec![0u8; 20 * 2000];
        Rng::new(9).fill(&mut pieces);
        let mut out = b"d".to_vec();
        bencode::put_kv_int(&mut out, "length", 2000 * 16384);
        bencode::put_kv_bytes(&mut out, "name", b"test.bin");
        bencode::put_kv_int(&mut out, "piece length", 16384);
        bencode::put_kv_bytes(&mut out, "pieces", &pieces);
        out.push(b'e');
        out
    }

    /// A simulated peer answering a request through the real codec.
    fn serve(meta: &[u8], piece: u32, corrupt: bool) -> Vec<u8> {
        let mut data = metadata_piece(meta, piece).unwrap().to_vec();
        if corrupt {
            data[5] ^= 0xff;
        }
        encode_metadata_data(piece, meta.len() as u32, &data)
    }

    fn deliver(f: &mut MetadataFetch, peer: PeerKey, msg: &[u8]) -> Result<(), MetadataError> {
        match parse_metadata_msg(msg).unwrap() {
            MetadataMsg::Data {
                piece,
                total_size,
                data,
            } => f.on_data(peer, piece, total_size, data),
            MetadataMsg::Reject { piece } => {
                f.on_reject(peer, piece);
                Ok(())
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fetch_two_peers_bad_piece_and_reject_then_verified() {
        let meta = info_dict();
        let info_hash = sha1(&meta);
        let (a, b) = (1, 2);
        let mut f = MetadataFetch::new(info_hash, meta.len() as u32).unwrap();
        assert_eq!(f.piece_count(), 3);
        // Round 1: pieces spread over both peers; A rejects one; B corrupts piece 1.
        let t = at(0);
        assert_eq!(f.next_request(t, a), Some(0));
        assert_eq!(f.next_request(t, b), Some(1));
        assert_eq!(f.next_request(t, a), Some(2));
        assert_eq!(f.next_request(t, a), None, "two outstanding per peer");
        deliver(&mut f, a, &encode_metadata_reject(2)).unwrap();
        assert_eq!(f.next_request(t, b), Some(2));
        deliver(&mut f, a, &serve(&meta, 0, false)).unwrap();
        assert_eq!(f.finish(), None);
        deliver(&mut f, b, &serve(&meta, 1, true)).unwrap();
        deliver(&mut f, b, &serve(&meta, 2, false)).unwrap();
        assert_eq!(f.finish(), Some(Err(MetadataError::HashMismatch)));
        assert_eq!(f.failures(), 1);
        assert_eq!(f.pieces_have(), 0, "the whole fetch restarts");
        assert!(
            f.bad_peers().is_empty(),
            "two contributors: not yet known who"
        );
        // Round 2: each piece preferably from the other peer than last time.
        assert_eq!(f.next_request(t, a), Some(1));
        assert_eq!(f.next_request(t, b), Some(0));
        assert_eq!(f.next_request(t, a), Some(2));
        deliver(&mut f, a, &serve(&meta, 1, false)).unwrap();
        deliver(&mut f, b, &serve(&meta, 0, false)).unwrap();
        deliver(&mut f, a, &serve(&meta, 2, false)).unwrap();
        let got = f.finish().unwrap().unwrap();
        assert_eq!(got, meta);
        assert_eq!(
            f.bad_peers(),
            &[b],
            "B's earlier piece 1 differed from the verified one"
        );
        let parsed = crate::metainfo::parse_info(&got, vec![]).unwrap();
        assert_eq!(parsed.meta.info_hash, info_hash);
        assert_eq!(f.finish(), None);
        assert_eq!(f.next_request(t, a), None);
    }

    #[test]
    fn fetch_tampered_dict_from_one_peer_is_caught_and_peer_banned() {
        let meta = info_dict();
        let mut tampered = meta.clone();
        tampered[20] ^= 1;
        let mut f = MetadataFetch::new(sha1(&meta), meta.len() as u32).unwrap();
        let (bad, good) = (7, 8);
        while let Some(p) = f.next_request(at(0), bad) {
            deliver(&mut f, bad, &serve(&tampered, p, false)).unwrap();
        }
        assert_eq!(f.finish(), Some(Err(MetadataError::HashMismatch)));
        assert_eq!(f.bad_peers(), &[bad]);
        assert_eq!(f.next_request(at(1), bad), None);
        assert_eq!(
            deliver(&mut f, bad, &serve(&meta, 0, false)),
            Err(MetadataError::PeerBanned)
        );
        while let Some(p) = f.next_request(at(1), good) {
            deliver(&mut f, good, &serve(&meta, p, false)).unwrap();
        }
        assert_eq!(f.finish(), Some(Ok(meta)));
    }

    #[test]
    fn fetch_refuses_wrong_sizes_and_reassigns_stale_requests() {
        let meta = info_dict();
        let mut f = MetadataFetch::new(sha1(&meta), meta.len() as u32).unwrap();
        assert_eq!(
            f.on_data(1, 0, 5, &[0; 5]),
            Err(MetadataError::SizeMismatch {
                expected: meta.len() as u32,
                got: 5
            })
        );
        assert_eq!(
            f.on_data(1, 3, meta.len() as u32, &[]),
            Err(MetadataError::PieceOutOfRange(3))
        );
        assert!(matches!(
            f.on_data(1, 0, meta.len() as u32, &[0; 100]),
            Err(MetadataError::WrongLength { .. })
        ));
        assert!(matches!(
            f.on_data(1, 2, meta.len() as u32, &[0; METADATA_PIECE_LEN]),
            Err(MetadataError::WrongLength { .. })
        ));
        // Peer 1 takes two pieces, peer 2 one; peer 2 then has nothing until they go stale.
        assert_eq!(f.next_request(at(0), 1), Some(0));
        assert_eq!(f.next_request(at(0), 1), Some(1));
        assert_eq!(f.next_request(at(0), 2), Some(2));
        assert_eq!(f.next_request(at(5), 2), None);
        assert_eq!(f.next_request(at(20), 2), Some(0));
        // A peer that leaves gives its requests back.
        f.on_peer_gone(1);
        assert_eq!(f.next_request(at(21), 3), Some(1));
        // A peer that keeps rejecting is not asked again.
        f.on_reject(3, 1);
        f.on_reject(3, 1);
        assert_eq!(f.next_request(at(22), 3), None);
    }

    // ---- ut_pex ----

    #[test]
    fn pex_vector_both_families() {
        let m = PexMessage {
            added: vec![
                (sa("1.2.3.4:6881"), PEX_FLAG_SEED | PEX_FLAG_REACHABLE),
                (sa("[2001:db8::1]:80"), PEX_FLAG_UTP),
                (sa("[::ffff:5.6.7.8]:1"), 0),
            ],
            dropped: vec![sa("9.9.9.9:9"), sa("[::1]:2")],
        };
        let enc = m.encode();
        let mut want = b"d5:added12:\x01\x02\x03\x04\x1a\xe1\x05\x06\x07\x08\x00\x01".to_vec();
        want.extend_from_slice(b"7:added.f2:\x12\x006:added618:");
        want.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        want.extend_from_slice(b"\x00\x508:added6.f1:\x047:dropped6:\x09\x09\x09\x09\x00\x09");
        want.extend_from_slice(b"8:dropped618:");
        want.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        want.extend_from_slice(b"\x00\x02e");
        assert_eq!(enc, want);
        let back = PexMessage::parse(&enc).unwrap();
        assert_eq!(
            back.added,
            vec![
                (sa("1.2.3.4:6881"), 0x12),
                (sa("5.6.7.8:1"), 0),
                (sa("[2001:db8::1]:80"), PEX_FLAG_UTP),
            ]
        );
        assert_eq!(back.dropped, m.dropped);
        assert_eq!(PexMessage::default().encode(), b"d5:added0:e");
    }

    #[test]
    fn pex_parse_caps_filters_and_tolerates() {
        let mut added = Vec::new();
        for i in 0..(MAX_PEX_ACCEPTED as u32 + 30) {
            added.extend_from_slice(&(0x0a00_0000 + i).to_be_bytes());
            added.extend_from_slice(&[0, 1]);
        }
        added.extend_from_slice(&[0, 0, 0, 0, 0, 1]); // unspecified
        added.extend_from_slice(&[1, 1, 1, 1]); // partial
        let mut p = b"d".to_vec();
        bencode::put_kv_bytes(&mut p, "added", &added);
        bencode::put_kv_bytes(&mut p, "added.f", &[3]); // too short: the rest are 0
        bencode::put_kv_int(&mut p, "dropped", 5); // wrong type: absent
        p.push(b'e');
        let m = PexMessage::parse(&p).unwrap();
        assert_eq!(m.added.len(), MAX_PEX_ACCEPTED);
        assert_eq!(m.added[0], (sa("10.0.0.0:1"), 3));
        assert_eq!(m.added[1].1, 0);
        assert!(m.dropped.is_empty());
        let dup = b"d5:added12:\x01\x01\x01\x01\x00\x01\x01\x01\x01\x01\x00\x01e";
        assert_eq!(PexMessage::parse(dup).unwrap().added.len(), 1);
        assert!(matches!(
            PexMessage::parse(&vec![b'd'; MAX_PEX_PAYLOAD_LEN + 1]),
            Err(ExtError::TooLong { .. })
        ));
        assert_eq!(PexMessage::parse(b"i0e"), Err(ExtError::NotADict));
    }

    #[test]
    fn pex_state_diffs_and_rate_limits() {
        let (p1, p2, p3) = (sa("10.0.0.1:1"), sa("10.0.0.2:2"), sa("[2001:db8::3]:3"));
        let mut s = PexState::new();
        assert_eq!(s.poll(at(0), &[]), None, "nothing to say yet");
        let m = s.poll(at(1), &[(p1, 0), (p2, PEX_FLAG_REACHABLE)]).unwrap();
        assert_eq!(m.added, vec![(p1, 0), (p2, PEX_FLAG_REACHABLE)]);
        assert!(m.dropped.is_empty());
        assert_eq!(s.poll_at(), at(61));
        // Changes within the minute wait.
        assert_eq!(s.poll(at(30), &[(p2, 0), (p3, 0)]), None);
        let m = s.poll(at(61), &[(p2, 0), (p3, 0)]).unwrap();
        assert_eq!(m.added, vec![(p3, 0)]);
        assert_eq!(m.dropped, vec![p1]);
        assert_eq!(s.sent(), &[p2, p3]);
        // Nothing changed: no message, and the clock is not reset.
        assert_eq!(s.poll(at(200), &[(p2, 0), (p3, 0)]), None);
        let m = s.poll(at(201), &[(p2, 0)]).unwrap();
        assert_eq!(m.dropped, vec![p3]);
        // A connect-disconnect between messages is elided.
        assert_eq!(s.poll(at(230), &[(p1, 0), (p2, 0)]), None);
        assert_eq!(s.poll(at(261), &[(p2, 0)]), None);
    }

    #[test]
    fn pex_state_caps_messages_after_the_first() {
        let peers: Vec<(SocketAddr, u8)> = (0..300u32)
            .map(|i| {
                (
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0001 + i)), 1),
                    0,
                )
            })
            .collect();
        let mut s = PexState::new();
        assert_eq!(s.poll(at(0), &peers).unwrap().added.len(), PEX_MAX_INITIAL);
        let m = s.poll(at(60), &peers).unwrap();
        assert_eq!(m.added.len(), PEX_MAX_PER_MESSAGE);
        assert_eq!(m.added[0].0, peers[PEX_MAX_INITIAL].0);
        let m = s.poll(at(120), &peers[200..]).unwrap();
        assert_eq!(m.dropped.len(), PEX_MAX_PER_MESSAGE);
        assert_eq!(m.added.len(), PEX_MAX_PER_MESSAGE);
        // Never added and dropped in one message.
        assert!(m.added.iter().all(|(a, _)| !m.dropped.contains(a)));
    }

    // ---- sweeps ----

    fn vectors() -> Vec<Vec<u8>> {
        let mut v = vec![
            sample_handshake().encode(),
            encode_metadata_request(2),
            encode_metadata_reject(2),
            encode_metadata_data(1, 20000, &[0xab; 40]),
            PexMessage {
                added: vec![(sa("1.2.3.4:5"), 1), (sa("[::2]:3"), 2)],
                dropped: vec![sa("6.7.8.9:10"), sa("[::3]:4")],
            }
            .encode(),
        ];
        v.push(b"d1:md11:LT_metadatai1ee13:metadata_sizei5ee".to_vec());
        v
    }

    fn parse_all(b: &[u8]) -> bool {
        let mut ok = false;
        if let Ok(h) = ExtHandshake::parse(b) {
            ok = true;
            assert!(h.m.len() <= MAX_EXTENSIONS);
            assert!(h.metadata_size.is_none_or(|n| n <= MAX_METADATA_SIZE));
        }
        if let Ok(m) = parse_metadata_msg(b) {
            ok = true;
            if let MetadataMsg::Data { data, .. } = m {
                assert!(data.len() <= METADATA_PIECE_LEN);
            }
        }
        if let Ok(p) = PexMessage::parse(b) {
            ok = true;
            assert!(p.added.len() <= MAX_PEX_ACCEPTED);
            assert!(p.added.iter().all(|(a, _)| a.port() != 0));
        }
        ok
    }

    #[test]
    fn ext_truncation_sweep() {
        for v in vectors() {
            let dict_end = bencode::decode_prefix(&v).unwrap().1;
            for n in 0..v.len() {
                let ok = parse_all(&v[..n]);
                if n < dict_end {
                    assert!(
                        !ok,
                        "prefix {n} of {:?} parsed",
                        String::from_utf8_lossy(&v)
                    );
                }
            }
        }
    }

    #[test]
    fn ext_mutation_sweep() {
        let mut rng = Rng::new(0x0910);
        for v in vectors() {
            for _ in 0..3000 {
                let m = mutate(&mut rng, &v);
                parse_all(&m);
            }
        }
    }

    #[test]
    fn fetch_random_events_never_panic() {
        let meta = info_dict();
        let mut rng = Rng::new(0xfe7c);
        let mut f = MetadataFetch::new(sha1(&meta), meta.len() as u32).unwrap();
        for step in 0..5000u64 {
            let peer = rng.below(5) as u64;
            let now = Instant::from_millis(step * 100);
            match rng.below(5) {
                0 => {
                    let _ = f.next_request(now, peer);
                }
                1 => {
                    let p = rng.below(4) as u32;
                    let len = [0, 10, METADATA_PIECE_LEN, meta.len() % METADATA_PIECE_LEN];
                    let data = vec![rng.next_u32() as u8; len[rng.below(4)]];
                    let _ = f.on_data(peer, p, meta.len() as u32, &data);
                }
                2 => f.on_reject(peer, rng.below(4) as u32),
                3 => f.on_peer_gone(peer),
                _ => {
                    let _ = f.finish();
                }
            }
        }
    }
}
