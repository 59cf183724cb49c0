//! Layers 1–2: the UDP tracker protocol (BEP 15) with the BEP 41 `URLData` option.
//!
//! Two parts, both pure:
//! - a packet codec: connect / announce / scrape requests and their responses, error packets,
//!   in both directions (the tracker side exists for tests and loopback fakes);
//! - `UdpAnnounce`, a small client state machine for one announce (or scrape) exchange:
//!   connect, reuse of connection ids for their one-minute lifetime through a `ConnCache` the
//!   caller keeps per tracker address, retransmission after `15 · 2^n` seconds, transaction ids
//!   checked.
//!
//! It must not open sockets, resolve names, read the clock or draw OS randomness: the engine
//! sends and receives the datagrams, demultiplexes them (by source address and transaction
//! id) and passes `now` and an `Rng` in. Peers in replies are only candidates.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::rng::Rng;
use crate::time::Instant;
use crate::tracker::{Event, Url};

/// BEP 15 "Connect": the magic constant that opens every connect request.
pub const PROTOCOL_ID: u64 = 0x0417_2710_1980;
pub const ACTION_CONNECT: u32 = 0;
pub const ACTION_ANNOUNCE: u32 = 1;
pub const ACTION_SCRAPE: u32 = 2;
pub const ACTION_ERROR: u32 = 3;

pub const CONNECT_REQUEST_LEN: usize = 16;
/// BEP 15: the IPv4 announce request is 98 bytes; BEP 41 options start at this offset.
pub const ANNOUNCE_REQUEST_LEN: usize = 98;
const CONNECT_RESPONSE_LEN: usize = 16;
const ANNOUNCE_RESPONSE_HEADER: usize = 20;
/// action + transaction id: the smallest packet BEP 15 lets us inspect at all.
const RESPONSE_HEADER: usize = 8;
const SCRAPE_REQUEST_HEADER: usize = 16;
const SCRAPE_ENTRY_LEN: usize = 12;
const PEER_V4_LEN: usize = 6;
/// BEP 15 "IPv6": peers in replies that came over IPv6 are 16-byte address + port.
const PEER_V6_LEN: usize = 18;

/// BEP 15: "A client can use a connection ID until one minute after it has received it."
pub const CONNECTION_ID_LIFETIME: Duration = Duration::from_secs(60);
/// BEP 15 "Time outs": retransmit after `15 · 2^n` seconds.
pub const DEFAULT_RETRY_BASE: Duration = Duration::from_secs(15);
/// BEP 15 "Time outs": n goes up to 8 (3840 s); after that wait we give up.
pub const MAX_RETRY_EXPONENT: u32 = 8;
/// Most peers taken from one announce reply. Trackers honour `num_want` (default 50); a full
/// 64 KiB datagram could carry ~10 900 IPv4 peers, which must not flood the candidate pool.
pub const MAX_PEERS_PER_RESPONSE: usize = crate::tracker::MAX_PEERS_PER_RESPONSE;
/// BEP 15 "Scrape": "Up to about 74 torrents can be scraped at once" (one MTU-sized packet).
pub const MAX_SCRAPE_HASHES: usize = 74;
/// Longest error message kept from an error packet; the text only goes to logs and `status`.
pub const MAX_ERROR_MESSAGE_LEN: usize = 1024;
/// Longest BEP 41 URLData (path and query) sent or parsed: every URL that `tracker::parse_url`
/// accepts fits, and it bounds the request to a few kilobytes.
pub const MAX_URL_DATA_LEN: usize = crate::tracker::MAX_URL_LEN;
/// BEP 41: one URLData option carries at most 255 bytes (its length is one byte).
const URL_DATA_CHUNK: usize = 255;
/// Most tracker addresses whose connection id `ConnCache` remembers; a torrent lists at most
/// `announce::MAX_TRACKERS` trackers and ids live one minute, so this is plenty.
pub const MAX_CACHED_CONNECTIONS: usize = 64;

const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_URL_DATA: u8 = 2;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UdpTrackerError {
    TooShort { action: u32, len: usize },
    TransactionMismatch { expected: u32, got: u32 },
    UnexpectedAction { expected: u32, got: u32 },
    BadProtocolId,
    UnknownAction(u32),
    BadEvent(u32),
    BadOption,
    UrlDataTooLong,
    TooManyHashes,
    NotExpecting,
}

impl fmt::Display for UdpTrackerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UdpTrackerError::TooShort { action, len } => {
                write!(
                    f,
                    "udp tracker packet of {len} bytes too short for action {action}"
                )
            }
            UdpTrackerError::TransactionMismatch { expected, got } => write!(
                f,
                "udp tracker transaction id {got:#010x} does not match {expected:#010x}"
            ),
            UdpTrackerError::UnexpectedAction { expected, got } => {
                write!(f, "udp tracker reply has action {got}, expected {expected}")
            }
            UdpTrackerError::BadProtocolId => {
                write!(f, "udp connect request has a bad protocol id")
            }
            UdpTrackerError::UnknownAction(a) => write!(f, "udp tracker action {a} is unknown"),
            UdpTrackerError::BadEvent(e) => write!(f, "udp announce event {e} is unknown"),
            UdpTrackerError::BadOption => write!(f, "udp announce option is truncated"),
            UdpTrackerError::UrlDataTooLong => {
                write!(
                    f,
                    "udp tracker url data longer than {MAX_URL_DATA_LEN} bytes"
                )
            }
            UdpTrackerError::TooManyHashes => {
                write!(
                    f,
                    "udp scrape with more than {MAX_SCRAPE_HASHES} info-hashes"
                )
            }
            UdpTrackerError::NotExpecting => write!(f, "udp tracker exchange expects no reply"),
        }
    }
}

impl std::error::Error for UdpTrackerError {}

// ---------------------------------------------------------------------------------------------
// Byte helpers (bounds-checked: wire data never indexes directly)

fn be_u32(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(b.try_into().ok()?))
}

fn be_u64(buf: &[u8], at: usize) -> Option<u64> {
    let b = buf.get(at..at.checked_add(8)?)?;
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

fn be_u16(buf: &[u8], at: usize) -> Option<u16> {
    let b = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes(b.try_into().ok()?))
}

fn arr20(buf: &[u8], at: usize) -> Option<[u8; 20]> {
    buf.get(at..at.checked_add(20)?)?.try_into().ok()
}

fn too_short(action: u32, buf: &[u8]) -> UdpTrackerError {
    UdpTrackerError::TooShort {
        action,
        len: buf.len(),
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

/// BEP 15 announce `event`: 0 none, 1 completed, 2 started, 3 stopped.
pub fn event_code(e: Event) -> u32 {
    match e {
        Event::None => 0,
        Event::Completed => 1,
        Event::Started => 2,
        Event::Stopped => 3,
    }
}

fn event_from_code(c: u32) -> Option<Event> {
    match c {
        0 => Some(Event::None),
        1 => Some(Event::Completed),
        2 => Some(Event::Started),
        3 => Some(Event::Stopped),
        _ => None,
    }
}

/// Everything an announce request carries besides the ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceParams {
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
    pub downloaded: u64,
    pub left: u64,
    pub uploaded: u64,
    pub event: Event,
    /// BEP 15 "IPv6": use the same key for the v4 and v6 announces of a torrent.
    pub key: u32,
    /// `None` sends -1 (the tracker's default).
    pub num_want: Option<u32>,
    pub port: u16,
    /// BEP 41 URLData: the tracker URL's path and query; empty sends no option.
    pub url_data: Vec<u8>,
}

/// BEP 41 URLData for a tracker URL: its path and query, or nothing when the path is just "/".
pub fn url_data(url: &Url) -> Vec<u8> {
    if url.path == "/" {
        Vec::new()
    } else {
        url.path.as_bytes().to_vec()
    }
}

pub fn encode_connect_request(transaction_id: u32) -> [u8; CONNECT_REQUEST_LEN] {
    let mut b = [0u8; CONNECT_REQUEST_LEN];
    b[..8].copy_from_slice(&PROTOCOL_ID.to_be_bytes());
    b[8..12].copy_from_slice(&ACTION_CONNECT.to_be_bytes());
    b[12..].copy_from_slice(&transaction_id.to_be_bytes());
    b
}

/// Appends an announce request (98 bytes plus BEP 41 options). The `IP address` field is
/// always 0: BEP 15 says it is unusable under IPv6 and trackers mostly ignore it anyway.
pub fn encode_announce_request(
    connection_id: u64,
    transaction_id: u32,
    p: &AnnounceParams,
    out: &mut Vec<u8>,
) -> Result<(), UdpTrackerError> {
    if p.url_data.len() > MAX_URL_DATA_LEN {
        return Err(UdpTrackerError::UrlDataTooLong);
    }
    out.extend_from_slice(&connection_id.to_be_bytes());
    out.extend_from_slice(&ACTION_ANNOUNCE.to_be_bytes());
    out.extend_from_slice(&transaction_id.to_be_bytes());
    out.extend_from_slice(&p.info_hash);
    out.extend_from_slice(&p.peer_id);
    out.extend_from_slice(&p.downloaded.to_be_bytes());
    out.extend_from_slice(&p.left.to_be_bytes());
    out.extend_from_slice(&p.uploaded.to_be_bytes());
    out.extend_from_slice(&event_code(p.event).to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&p.key.to_be_bytes());
    let num_want: i32 = match p.num_want {
        Some(n) => i32::try_from(n).unwrap_or(i32::MAX),
        None => -1,
    };
    out.extend_from_slice(&num_want.to_be_bytes());
    out.extend_from_slice(&p.port.to_be_bytes());
    // BEP 41: URLData in chunks of at most 255 bytes, concatenated by the tracker.
    for chunk in p.url_data.chunks(URL_DATA_CHUNK) {
        out.push(OPT_URL_DATA);
        out.push(chunk.len() as u8);
        out.extend_from_slice(chunk);
    }
    Ok(())
}

pub fn encode_scrape_request(
    connection_id: u64,
    transaction_id: u32,
    info_hashes: &[[u8; 20]],
    out: &mut Vec<u8>,
) -> Result<(), UdpTrackerError> {
    if info_hashes.len() > MAX_SCRAPE_HASHES {
        return Err(UdpTrackerError::TooManyHashes);
    }
    out.extend_from_slice(&connection_id.to_be_bytes());
    out.extend_from_slice(&ACTION_SCRAPE.to_be_bytes());
    out.extend_from_slice(&transaction_id.to_be_bytes());
    for h in info_hashes {
        out.extend_from_slice(h);
    }
    Ok(())
}

/// A request as a tracker sees it (used by tests and loopback fake trackers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Connect {
        transaction_id: u32,
    },
    Announce {
        connection_id: u64,
        transaction_id: u32,
        params: AnnounceParams,
    },
    Scrape {
        connection_id: u64,
        transaction_id: u32,
        info_hashes: Vec<[u8; 20]>,
    },
}

/// Parses a request datagram. Scrapes with more than `MAX_SCRAPE_HASHES` hashes keep the
/// first ones; a trailing partial hash is ignored (BEP 15: do not expect exact sizes).
pub fn parse_request(buf: &[u8]) -> Result<Request, UdpTrackerError> {
    let connection_id = be_u64(buf, 0).ok_or(too_short(ACTION_CONNECT, buf))?;
    let action = be_u32(buf, 8).ok_or(too_short(ACTION_CONNECT, buf))?;
    let transaction_id = be_u32(buf, 12).ok_or(too_short(action, buf))?;
    match action {
        ACTION_CONNECT => {
            if connection_id != PROTOCOL_ID {
                return Err(UdpTrackerError::BadProtocolId);
            }
            Ok(Request::Connect { transaction_id })
        }
        ACTION_ANNOUNCE => {
            let short = || too_short(ACTION_ANNOUNCE, buf);
            let code = be_u32(buf, 80).ok_or_else(short)?;
            let num_want = be_u32(buf, 92).ok_or_else(short)? as i32;
            let params = AnnounceParams {
                info_hash: arr20(buf, 16).ok_or_else(short)?,
                peer_id: arr20(buf, 36).ok_or_else(short)?,
                downloaded: be_u64(buf, 56).ok_or_else(short)?,
                left: be_u64(buf, 64).ok_or_else(short)?,
                uploaded: be_u64(buf, 72).ok_or_else(short)?,
                event: event_from_code(code).ok_or(UdpTrackerError::BadEvent(code))?,
                key: be_u32(buf, 88).ok_or_else(short)?,
                num_want: u32::try_from(num_want).ok(),
                port: be_u16(buf, 96).ok_or_else(short)?,
                url_data: parse_options(buf.get(ANNOUNCE_REQUEST_LEN..).unwrap_or(&[]))?,
            };
            Ok(Request::Announce {
                connection_id,
                transaction_id,
                params,
            })
        }
        ACTION_SCRAPE => {
            let body = buf.get(SCRAPE_REQUEST_HEADER..).unwrap_or(&[]);
            let info_hashes = body
                .chunks_exact(20)
                .take(MAX_SCRAPE_HASHES)
                .filter_map(|c| c.try_into().ok())
                .collect();
            Ok(Request::Scrape {
                connection_id,
                transaction_id,
                info_hashes,
            })
        }
        a => Err(UdpTrackerError::UnknownAction(a)),
    }
}

/// BEP 41 option list: 0 ends, 1 is a one-byte NOP, every other type has a length byte; the
/// data of all URLData options is concatenated, unknown options are skipped.
fn parse_options(mut opts: &[u8]) -> Result<Vec<u8>, UdpTrackerError> {
    let mut url = Vec::new();
    while let Some((&kind, rest)) = opts.split_first() {
        match kind {
            OPT_END => break,
            OPT_NOP => opts = rest,
            _ => {
                let (&len, rest) = rest.split_first().ok_or(UdpTrackerError::BadOption)?;
                let data = rest.get(..len as usize).ok_or(UdpTrackerError::BadOption)?;
                if kind == OPT_URL_DATA {
                    if url.len().saturating_add(data.len()) > MAX_URL_DATA_LEN {
                        return Err(UdpTrackerError::UrlDataTooLong);
                    }
                    url.extend_from_slice(data);
                }
                opts = rest.get(len as usize..).unwrap_or(&[]);
            }
        }
    }
    Ok(url)
}

// ---------------------------------------------------------------------------------------------
// Responses

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnnounceReply {
    /// Seconds until the next announce, as the tracker sent it (the caller clamps it).
    pub interval: u32,
    pub leechers: u32,
    pub seeders: u32,
    pub peers: Vec<SocketAddr>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScrapeEntry {
    pub seeders: u32,
    pub completed: u32,
    pub leechers: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Connect {
        connection_id: u64,
    },
    Announce(AnnounceReply),
    /// One entry per requested info-hash, in request order.
    Scrape(Vec<ScrapeEntry>),
    /// BEP 15 "Errors": the tracker's message (capped, control characters blanked).
    Error(String),
}

pub fn encode_connect_response(transaction_id: u32, connection_id: u64) -> [u8; 16] {
    let mut b = [0u8; CONNECT_RESPONSE_LEN];
    b[..4].copy_from_slice(&ACTION_CONNECT.to_be_bytes());
    b[4..8].copy_from_slice(&transaction_id.to_be_bytes());
    b[8..].copy_from_slice(&connection_id.to_be_bytes());
    b
}

/// Appends an announce response; with `ipv6` false only IPv4 peers are written (6 bytes each),
/// with `ipv6` true only IPv6 peers (18 bytes each), as BEP 15 ties the format to the family.
pub fn encode_announce_response(
    transaction_id: u32,
    r: &AnnounceReply,
    ipv6: bool,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(&ACTION_ANNOUNCE.to_be_bytes());
    out.extend_from_slice(&transaction_id.to_be_bytes());
    out.extend_from_slice(&r.interval.to_be_bytes());
    out.extend_from_slice(&r.leechers.to_be_bytes());
    out.extend_from_slice(&r.seeders.to_be_bytes());
    for p in &r.peers {
        match (p.ip(), ipv6) {
            (IpAddr::V4(ip), false) => out.extend_from_slice(&ip.octets()),
            (IpAddr::V6(ip), true) => out.extend_from_slice(&ip.octets()),
            _ => continue,
        }
        out.extend_from_slice(&p.port().to_be_bytes());
    }
}

pub fn encode_scrape_response(transaction_id: u32, entries: &[ScrapeEntry], out: &mut Vec<u8>) {
    out.extend_from_slice(&ACTION_SCRAPE.to_be_bytes());
    out.extend_from_slice(&transaction_id.to_be_bytes());
    for e in entries {
        out.extend_from_slice(&e.seeders.to_be_bytes());
        out.extend_from_slice(&e.completed.to_be_bytes());
        out.extend_from_slice(&e.leechers.to_be_bytes());
    }
}

pub fn encode_error_response(transaction_id: u32, message: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&ACTION_ERROR.to_be_bytes());
    out.extend_from_slice(&transaction_id.to_be_bytes());
    out.extend_from_slice(message.as_bytes());
}

/// Tracker text for logs: capped, trailing NULs removed (some trackers send C strings),
/// control characters blanked.
fn message(b: &[u8]) -> String {
    let b = b.get(..b.len().min(MAX_ERROR_MESSAGE_LEN)).unwrap_or(&[]);
    let end = b.iter().rposition(|&c| c != 0).map_or(0, |i| i + 1);
    String::from_utf8_lossy(b.get(..end).unwrap_or(&[]))
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The transaction id of a response datagram, for routing it to the exchange that owns it
/// when several run against one tracker address.
pub fn response_transaction_id(buf: &[u8]) -> Option<u32> {
    be_u32(buf, 4)
}

/// Whether a datagram on a socket shared with the DHT can be a tracker response: actions are
/// small big-endian integers, so the first byte is 0, while KRPC messages start with `d`.
pub fn looks_like_tracker_response(buf: &[u8]) -> bool {
    buf.len() >= RESPONSE_HEADER && buf.first() == Some(&0)
}

/// Parses a response datagram following BEP 15's checks: at least 8 bytes, the transaction id
/// we chose, then the action we expect — except that an error packet (action 3) answers any
/// request. `ipv6` is the address family the datagram came over (it selects the 6- or 18-byte
/// peer format). Extra bytes and a trailing partial entry are ignored ("do not expect packets
/// to be exactly of a certain size"); peers with port 0 or an unspecified address and duplicates
/// are dropped; at most `MAX_PEERS_PER_RESPONSE` peers and `MAX_SCRAPE_HASHES` scrape entries
/// are kept.
pub fn parse_response(
    buf: &[u8],
    expected_tid: u32,
    expected_action: u32,
    ipv6: bool,
) -> Result<Response, UdpTrackerError> {
    let action = be_u32(buf, 0).ok_or(too_short(expected_action, buf))?;
    let tid = be_u32(buf, 4).ok_or(too_short(expected_action, buf))?;
    if tid != expected_tid {
        return Err(UdpTrackerError::TransactionMismatch {
            expected: expected_tid,
            got: tid,
        });
    }
    if action == ACTION_ERROR {
        return Ok(Response::Error(message(
            buf.get(RESPONSE_HEADER..).unwrap_or(&[]),
        )));
    }
    if action != expected_action {
        return Err(UdpTrackerError::UnexpectedAction {
            expected: expected_action,
            got: action,
        });
    }
    match action {
        ACTION_CONNECT => Ok(Response::Connect {
            connection_id: be_u64(buf, 8).ok_or(too_short(action, buf))?,
        }),
        ACTION_ANNOUNCE => {
            if buf.len() < ANNOUNCE_RESPONSE_HEADER {
                return Err(too_short(action, buf));
            }
            let mut r = AnnounceReply {
                interval: be_u32(buf, 8).ok_or(too_short(action, buf))?,
                leechers: be_u32(buf, 12).ok_or(too_short(action, buf))?,
                seeders: be_u32(buf, 16).ok_or(too_short(action, buf))?,
                peers: Vec::new(),
            };
            let body = buf.get(ANNOUNCE_RESPONSE_HEADER..).unwrap_or(&[]);
            let stride = if ipv6 { PEER_V6_LEN } else { PEER_V4_LEN };
            for c in body.chunks_exact(stride) {
                if r.peers.len() >= MAX_PEERS_PER_RESPONSE {
                    break;
                }
                let (ip, port) = if ipv6 {
                    let o: [u8; 16] = match c.get(..16).and_then(|s| s.try_into().ok()) {
                        Some(o) => o,
                        None => continue,
                    };
                    (IpAddr::V6(Ipv6Addr::from(o)), be_u16(c, 16))
                } else {
                    let o: [u8; 4] = match c.get(..4).and_then(|s| s.try_into().ok()) {
                        Some(o) => o,
                        None => continue,
                    };
                    (IpAddr::V4(Ipv4Addr::from(o)), be_u16(c, 4))
                };
                let port = port.unwrap_or(0);
                let ip = ip.to_canonical();
                if port == 0 || ip.is_unspecified() {
                    continue;
                }
                let sa = SocketAddr::new(ip, port);
                if !r.peers.contains(&sa) {
                    r.peers.push(sa);
                }
            }
            Ok(Response::Announce(r))
        }
        ACTION_SCRAPE => {
            let body = buf.get(RESPONSE_HEADER..).unwrap_or(&[]);
            let entries = body
                .chunks_exact(SCRAPE_ENTRY_LEN)
                .take(MAX_SCRAPE_HASHES)
                .map(|c| ScrapeEntry {
                    seeders: be_u32(c, 0).unwrap_or(0),
                    completed: be_u32(c, 4).unwrap_or(0),
                    leechers: be_u32(c, 8).unwrap_or(0),
                })
                .collect();
            Ok(Response::Scrape(entries))
        }
        a => Err(UdpTrackerError::UnknownAction(a)),
    }
}

// ---------------------------------------------------------------------------------------------
// Connection ids

#[derive(Clone, Copy, Debug)]
struct CachedConn {
    tracker: SocketAddr,
    id: u64,
    received: Instant,
}

/// Connection ids per tracker address, valid for `CONNECTION_ID_LIFETIME` after they were
/// received (BEP 15), so announces and scrapes within a minute skip the connect round trip.
/// The engine keeps one and lends it to every `UdpAnnounce`.
#[derive(Clone, Debug, Default)]
pub struct ConnCache {
    entries: Vec<CachedConn>,
}

impl ConnCache {
    pub fn new() -> ConnCache {
        ConnCache::default()
    }

    /// The still-valid connection id for `tracker` and when it was received.
    pub fn get(&self, tracker: SocketAddr, now: Instant) -> Option<(u64, Instant)> {
        self.entries
            .iter()
            .find(|e| e.tracker == tracker && now.since(e.received) < CONNECTION_ID_LIFETIME)
            .map(|e| (e.id, e.received))
    }

    pub fn insert(&mut self, tracker: SocketAddr, id: u64, now: Instant) {
        self.entries
            .retain(|e| e.tracker != tracker && now.since(e.received) < CONNECTION_ID_LIFETIME);
        if self.entries.len() >= MAX_CACHED_CONNECTIONS {
            // Evict the oldest: it expires first anyway.
            if let Some(i) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].received) {
                self.entries.swap_remove(i);
            }
        }
        self.entries.push(CachedConn {
            tracker,
            id,
            received: now,
        });
    }

    pub fn forget(&mut self, tracker: SocketAddr) {
        self.entries.retain(|e| e.tracker != tracker);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

// ---------------------------------------------------------------------------------------------
// Client state machine

/// Retransmission schedule: wait `base · 2^n` after the n-th transmission, n = 0..=max_exponent,
/// then give up. BEP 15 uses base 15 s and n up to 8; tests and the engine may shorten both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryConfig {
    pub base: Duration,
    /// Clamped to `MAX_RETRY_EXPONENT`.
    pub max_exponent: u32,
}

impl Default for RetryConfig {
    fn default() -> RetryConfig {
        RetryConfig {
            base: DEFAULT_RETRY_BASE,
            max_exponent: MAX_RETRY_EXPONENT,
        }
    }
}

/// How an exchange ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Announced(AnnounceReply),
    Scraped(Vec<ScrapeEntry>),
    /// The tracker answered with an error packet.
    TrackerError(String),
}

#[derive(Clone, Debug)]
enum Job {
    Announce(AnnounceParams),
    Scrape(Vec<[u8; 20]>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Connecting,
    Requesting {
        connection_id: u64,
        received: Instant,
    },
    Done,
    TimedOut,
}

/// One announce (or scrape) exchange with one tracker address.
///
/// Drive it with `poll_transmit` whenever `now >= poll_at()` and send what it returns to
/// `tracker()`; pass every datagram from that address to `handle_response`. Errors from
/// `handle_response` mean "not for us / malformed": ignore the datagram and keep waiting. Once
/// `timed_out()` the tracker counts as failed (BEP 12 moves on to the next one).
#[derive(Clone, Debug)]
pub struct UdpAnnounce {
    tracker: SocketAddr,
    job: Job,
    cfg: RetryConfig,
    phase: Phase,
    /// The transaction id of the current phase; retransmissions reuse it so a late reply to an
    /// earlier copy still counts. A new phase (connect, then announce) draws a new one.
    tid: Option<u32>,
    /// BEP 15's n: transmissions so far minus one. Not reset by a connect reply, so a tracker
    /// that answers connects but never announces still runs out of retries.
    attempt: u32,
    /// Whether the current phase's packet has gone out at least once.
    sent: bool,
    /// When to (re)transmit next.
    deadline: Instant,
}

impl UdpAnnounce {
    pub fn new(
        now: Instant,
        tracker: SocketAddr,
        params: AnnounceParams,
        cfg: RetryConfig,
    ) -> Result<UdpAnnounce, UdpTrackerError> {
        if params.url_data.len() > MAX_URL_DATA_LEN {
            return Err(UdpTrackerError::UrlDataTooLong);
        }
        Ok(UdpAnnounce::start(now, tracker, Job::Announce(params), cfg))
    }

    pub fn new_scrape(
        now: Instant,
        tracker: SocketAddr,
        info_hashes: Vec<[u8; 20]>,
        cfg: RetryConfig,
    ) -> Result<UdpAnnounce, UdpTrackerError> {
        if info_hashes.len() > MAX_SCRAPE_HASHES {
            return Err(UdpTrackerError::TooManyHashes);
        }
        Ok(UdpAnnounce::start(
            now,
            tracker,
            Job::Scrape(info_hashes),
            cfg,
        ))
    }

    fn start(now: Instant, tracker: SocketAddr, job: Job, cfg: RetryConfig) -> UdpAnnounce {
        UdpAnnounce {
            tracker,
            job,
            cfg: RetryConfig {
                base: cfg.base,
                max_exponent: cfg.max_exponent.min(MAX_RETRY_EXPONENT),
            },
            phase: Phase::Connecting,
            tid: None,
            attempt: 0,
            sent: false,
            deadline: now,
        }
    }

    pub fn tracker(&self) -> SocketAddr {
        self.tracker
    }

    /// The transaction id of the request in flight (`None` before the first transmission
    /// and between a connect reply and the following request).
    pub fn transaction_id(&self) -> Option<u32> {
        self.tid
    }

    /// When `poll_transmit` next wants to run; `None` once finished or timed out.
    pub fn poll_at(&self) -> Option<Instant> {
        match self.phase {
            Phase::Done | Phase::TimedOut => None,
            _ => Some(self.deadline),
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done | Phase::TimedOut)
    }

    /// True once the last retransmission went unanswered for its full wait.
    pub fn timed_out(&self) -> bool {
        self.phase == Phase::TimedOut
    }

    fn set_phase(&mut self, phase: Phase) {
        self.phase = phase;
        self.tid = None;
        self.sent = false;
    }

    /// The datagram to send now, if any: the first transmission, a retransmission after a
    /// timeout, or the announce right after a connect reply. Uses a still-valid connection id
    /// from `cache` instead of connecting; a connection id older than a minute is dropped and
    /// a new connect sent (BEP 15 "Time outs").
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        cache: &ConnCache,
        rng: &mut Rng,
    ) -> Option<Vec<u8>> {
        if self.is_done() || now < self.deadline {
            return None;
        }
        if self.sent {
            if self.attempt >= self.cfg.max_exponent {
                self.phase = Phase::TimedOut;
                return None;
            }
            self.attempt += 1;
        }
        if let Phase::Requesting { received, .. } = self.phase {
            if now.since(received) >= CONNECTION_ID_LIFETIME {
                self.set_phase(Phase::Connecting);
            }
        }
        if self.phase == Phase::Connecting {
            if let Some((connection_id, received)) = cache.get(self.tracker, now) {
                self.set_phase(Phase::Requesting {
                    connection_id,
                    received,
                });
            }
        }
        let tid = *self.tid.get_or_insert_with(|| rng.next_u32());
        let mut out = Vec::new();
        match (self.phase, &self.job) {
            (Phase::Connecting, _) => out.extend_from_slice(&encode_connect_request(tid)),
            (Phase::Requesting { connection_id, .. }, Job::Announce(p)) => {
                // Length checked in `new`.
                encode_announce_request(connection_id, tid, p, &mut out).ok()?;
            }
            (Phase::Requesting { connection_id, .. }, Job::Scrape(h)) => {
                encode_scrape_request(connection_id, tid, h, &mut out).ok()?;
            }
            (Phase::Done | Phase::TimedOut, _) => return None,
        }
        self.sent = true;
        let wait = self
            .cfg
            .base
            .saturating_mul(1u32.checked_shl(self.attempt).unwrap_or(u32::MAX));
        self.deadline = now + wait;
        Some(out)
    }

    /// Feeds one datagram from `tracker()`. `Ok(None)`: a connect reply was taken (the id goes
    /// into `cache`, and `poll_at()` is now); `Ok(Some(_))`: the exchange is over. `Err`: the
    /// datagram is not a valid reply to the request in flight and changes nothing.
    pub fn handle_response(
        &mut self,
        now: Instant,
        buf: &[u8],
        cache: &mut ConnCache,
    ) -> Result<Option<Outcome>, UdpTrackerError> {
        let tid = match (self.phase, self.tid) {
            (Phase::Done | Phase::TimedOut, _) | (_, None) => {
                return Err(UdpTrackerError::NotExpecting)
            }
            (_, Some(t)) => t,
        };
        let expected = match (self.phase, &self.job) {
            (Phase::Requesting { .. }, Job::Announce(_)) => ACTION_ANNOUNCE,
            (Phase::Requesting { .. }, Job::Scrape(_)) => ACTION_SCRAPE,
            _ => ACTION_CONNECT,
        };
        // BEP 15 "IPv6": the reply format follows the family the datagram travelled over.
        let ipv6 = self.tracker.ip().to_canonical().is_ipv6();
        match parse_response(buf, tid, expected, ipv6)? {
            Response::Connect { connection_id } => {
                cache.insert(self.tracker, connection_id, now);
                self.set_phase(Phase::Requesting {
                    connection_id,
                    received: now,
                });
                self.deadline = now;
                Ok(None)
            }
            Response::Announce(r) => {
                self.set_phase(Phase::Done);
                Ok(Some(Outcome::Announced(r)))
            }
            Response::Scrape(s) => {
                self.set_phase(Phase::Done);
                Ok(Some(Outcome::Scraped(s)))
            }
            Response::Error(m) => {
                if matches!(self.phase, Phase::Requesting { .. }) {
                    // The error may be about our connection id; the next exchange reconnects.
                    cache.forget(self.tracker);
                }
                self.set_phase(Phase::Done);
                Ok(Some(Outcome::TrackerError(m)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

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

    fn params() -> AnnounceParams {
        AnnounceParams {
            info_hash: [0xaa; 20],
            peer_id: *b"-AT0001-abcdefghijkl",
            downloaded: 0x0102,
            left: 0x0304,
            uploaded: 0x0506,
            event: Event::Started,
            key: 0xdead_beef,
            num_want: None,
            port: 6881,
            url_data: Vec::new(),
        }
    }

    fn v4() -> SocketAddr {
        "10.0.0.1:6969".parse().unwrap()
    }

    fn at(s: u64) -> Instant {
        Instant::from_secs(s)
    }

    fn tid_of(req: &[u8]) -> u32 {
        u32::from_be_bytes(req[12..16].try_into().unwrap())
    }

    fn action_of(req: &[u8]) -> u32 {
        u32::from_be_bytes(req[8..12].try_into().unwrap())
    }

    // ---- packet vectors ----

    #[test]
    fn connect_request_vector() {
        assert_eq!(
            encode_connect_request(0x1234_5678).to_vec(),
            hex("0000041727101980 00000000 12345678")
        );
        assert_eq!(
            parse_request(&encode_connect_request(7)),
            Ok(Request::Connect { transaction_id: 7 })
        );
    }

    #[test]
    fn announce_request_vector_with_url_data() {
        let mut p = params();
        p.url_data = b"/dir?a=b&c=d".to_vec();
        let mut out = Vec::new();
        encode_announce_request(0x1122_3344_5566_7788, 9, &p, &mut out).unwrap();
        let mut want = hex("1122334455667788 00000001 00000009");
        want.extend_from_slice(&[0xaa; 20]);
        want.extend_from_slice(b"-AT0001-abcdefghijkl");
        want.extend(hex(
            "0000000000000102 0000000000000304 0000000000000506 00000002 00000000
             deadbeef ffffffff 1ae1",
        ));
        // BEP 41's example option bytes.
        want.extend_from_slice(&[0x2, 0xC]);
        want.extend_from_slice(b"/dir?a=b&c=d");
        assert_eq!(out, want);
        assert_eq!(
            parse_request(&out),
            Ok(Request::Announce {
                connection_id: 0x1122_3344_5566_7788,
                transaction_id: 9,
                params: p,
            })
        );
    }

    #[test]
    fn announce_request_long_url_data_is_chunked() {
        let mut p = params();
        p.url_data = vec![b'x'; 300];
        p.num_want = Some(50);
        let mut out = Vec::new();
        encode_announce_request(1, 2, &p, &mut out).unwrap();
        assert_eq!(out.len(), 98 + 2 + 255 + 2 + 45);
        assert_eq!(&out[98..100], &[2, 255]);
        assert_eq!(&out[355..357], &[2, 45]);
        match parse_request(&out) {
            Ok(Request::Announce { params, .. }) => assert_eq!(params, p),
            other => panic!("{other:?}"),
        }
        p.url_data = vec![b'x'; MAX_URL_DATA_LEN + 1];
        assert_eq!(
            encode_announce_request(1, 2, &p, &mut Vec::new()),
            Err(UdpTrackerError::UrlDataTooLong)
        );
    }

    #[test]
    fn announce_options_nop_end_and_unknown_are_handled() {
        let mut out = Vec::new();
        encode_announce_request(1, 2, &params(), &mut out).unwrap();
        // NOP, unknown option 9 with 2 bytes, URLData "/a", empty URLData, end, garbage.
        out.extend_from_slice(&[1, 9, 2, 0xff, 0xff, 2, 2, b'/', b'a', 2, 0, 0, 0xee]);
        match parse_request(&out) {
            Ok(Request::Announce { params, .. }) => assert_eq!(params.url_data, b"/a"),
            other => panic!("{other:?}"),
        }
        // A length byte running past the end is rejected.
        let mut bad = out[..98].to_vec();
        bad.extend_from_slice(&[2, 5, b'/']);
        assert_eq!(parse_request(&bad), Err(UdpTrackerError::BadOption));
    }

    #[test]
    fn url_data_from_tracker_url() {
        let u = crate::tracker::parse_url("udp://t.example:80/dir?a=b&c=d").unwrap();
        assert_eq!(url_data(&u), b"/dir?a=b&c=d");
        let u = crate::tracker::parse_url("udp://t.example:80").unwrap();
        assert!(url_data(&u).is_empty());
    }

    #[test]
    fn scrape_request_vector() {
        let mut out = Vec::new();
        encode_scrape_request(5, 6, &[[1; 20], [2; 20]], &mut out).unwrap();
        let mut want = hex("0000000000000005 00000002 00000006");
        want.extend_from_slice(&[1; 20]);
        want.extend_from_slice(&[2; 20]);
        assert_eq!(out, want);
        assert_eq!(
            parse_request(&out),
            Ok(Request::Scrape {
                connection_id: 5,
                transaction_id: 6,
                info_hashes: vec![[1; 20], [2; 20]],
            })
        );
        let many = vec![[0u8; 20]; MAX_SCRAPE_HASHES + 1];
        assert_eq!(
            encode_scrape_request(5, 6, &many, &mut Vec::new()),
            Err(UdpTrackerError::TooManyHashes)
        );
    }

    #[test]
    fn connect_response_vector() {
        let b = encode_connect_response(0xabcd, 0x0102_0304_0506_0708);
        assert_eq!(b.to_vec(), hex("00000000 0000abcd 0102030405060708"));
        assert_eq!(
            parse_response(&b, 0xabcd, ACTION_CONNECT, false),
            Ok(Response::Connect {
                connection_id: 0x0102_0304_0506_0708
            })
        );
    }

    #[test]
    fn announce_response_v4_vector() {
        let b = hex("00000001 00000011 00000708 00000003 00000004
             0a000002 1ae1  c0a80101 0050  00000000 1ae1  0a000002 1ae1  0a000003 0000  ffff");
        let r = parse_response(&b, 0x11, ACTION_ANNOUNCE, false).unwrap();
        assert_eq!(
            r,
            Response::Announce(AnnounceReply {
                interval: 1800,
                leechers: 3,
                seeders: 4,
                // unspecified, duplicate, port 0 and the partial trailing entry are dropped
                peers: vec![
                    "10.0.0.2:6881".parse().unwrap(),
                    "192.168.1.1:80".parse().unwrap()
                ],
            })
        );
        let Response::Announce(a) = r else { panic!() };
        let mut out = Vec::new();
        encode_announce_response(0x11, &a, false, &mut out);
        assert_eq!(out, b[..32]);
    }

    #[test]
    fn announce_response_v6_uses_18_byte_peers() {
        let reply = AnnounceReply {
            interval: 60,
            leechers: 1,
            seeders: 2,
            peers: vec![
                "[2001:db8::1]:6881".parse().unwrap(),
                "10.9.9.9:1".parse().unwrap(), // not written in the v6 format
            ],
        };
        let mut out = Vec::new();
        encode_announce_response(3, &reply, true, &mut out);
        let mut want = hex("00000001 00000003 0000003c 00000001 00000002");
        want.extend(hex("20010db8000000000000000000000001 1ae1"));
        assert_eq!(out, want);
        let Ok(Response::Announce(r)) = parse_response(&out, 3, ACTION_ANNOUNCE, true) else {
            panic!()
        };
        assert_eq!(r.peers, vec!["[2001:db8::1]:6881".parse().unwrap()]);
        // Read as IPv4 the same bytes are three 6-byte entries (two with port 0): the
        // family matters.
        let Ok(Response::Announce(r4)) = parse_response(&out, 3, ACTION_ANNOUNCE, false) else {
            panic!()
        };
        assert_eq!(r4.peers, vec!["0.0.0.1:6881".parse().unwrap()]);
    }

    #[test]
    fn scrape_response_vector() {
        let e = [
            ScrapeEntry {
                seeders: 1,
                completed: 2,
                leechers: 3,
            },
            ScrapeEntry {
                seeders: 4,
                completed: 5,
                leechers: 6,
            },
        ];
        let mut out = Vec::new();
        encode_scrape_response(8, &e, &mut out);
        assert_eq!(
            out,
            hex("00000002 00000008 00000001 00000002 00000003 00000004 00000005 00000006")
        );
        assert_eq!(
            parse_response(&out, 8, ACTION_SCRAPE, false),
            Ok(Response::Scrape(e.to_vec()))
        );
    }

    #[test]
    fn error_response_answers_any_request() {
        let mut out = Vec::new();
        encode_error_response(4, "bad\ninfo_hash\0", &mut out);
        assert_eq!(&out[..8], &hex("00000003 00000004")[..]);
        for action in [ACTION_CONNECT, ACTION_ANNOUNCE, ACTION_SCRAPE] {
            assert_eq!(
                parse_response(&out, 4, action, false),
                Ok(Response::Error("bad info_hash".into()))
            );
        }
        let long = vec![b'e'; 5000];
        let mut out = hex("00000003 00000004");
        out.extend_from_slice(&long);
        let Ok(Response::Error(m)) = parse_response(&out, 4, ACTION_ANNOUNCE, false) else {
            panic!()
        };
        assert_eq!(m.len(), MAX_ERROR_MESSAGE_LEN);
    }

    #[test]
    fn demux_helpers() {
        let b = encode_connect_response(0x55, 1);
        assert_eq!(response_transaction_id(&b), Some(0x55));
        assert_eq!(response_transaction_id(&b[..7]), None);
        assert!(looks_like_tracker_response(&b));
        assert!(!looks_like_tracker_response(
            b"d1:rd2:id20:aaaaaaaaaaaaaaaaaaaae1:t2:aa1:y1:re"
        ));
        assert!(!looks_like_tracker_response(&b[..7]));
    }

    #[test]
    fn response_checks_tid_action_and_length() {
        let b = encode_connect_response(1, 2);
        assert_eq!(
            parse_response(&b, 2, ACTION_CONNECT, false),
            Err(UdpTrackerError::TransactionMismatch {
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            parse_response(&b, 1, ACTION_ANNOUNCE, false),
            Err(UdpTrackerError::UnexpectedAction {
                expected: 1,
                got: 0
            })
        );
        assert!(matches!(
            parse_response(&b[..15], 1, ACTION_CONNECT, false),
            Err(UdpTrackerError::TooShort { .. })
        ));
        assert!(matches!(
            parse_response(
                &hex("00000001 00000001 00000001"),
                1,
                ACTION_ANNOUNCE,
                false
            ),
            Err(UdpTrackerError::TooShort { .. })
        ));
    }

    #[test]
    fn announce_response_caps_peers() {
        let mut b = hex("00000001 00000001 00000001 00000001 00000001");
        for i in 0..(MAX_PEERS_PER_RESPONSE as u32 + 50) {
            b.extend_from_slice(&(0x0a00_0000 + i + 1).to_be_bytes());
            b.extend_from_slice(&[0x1a, 0xe1]);
        }
        let Ok(Response::Announce(r)) = parse_response(&b, 1, ACTION_ANNOUNCE, false) else {
            panic!()
        };
        assert_eq!(r.peers.len(), MAX_PEERS_PER_RESPONSE);
    }

    fn vectors() -> Vec<Vec<u8>> {
        let mut v = vec![encode_connect_request(1).to_vec()];
        let mut p = params();
        p.url_data = b"/announce?pk=1".to_vec();
        let mut a = Vec::new();
        encode_announce_request(3, 4, &p, &mut a).unwrap();
        v.push(a);
        let mut s = Vec::new();
        encode_scrape_request(3, 4, &[[9; 20]], &mut s).unwrap();
        v.push(s);
        v.push(encode_connect_response(1, 2).to_vec());
        let reply = AnnounceReply {
            interval: 1,
            leechers: 2,
            seeders: 3,
            peers: vec![
                "1.2.3.4:5".parse().unwrap(),
                "[::1]:7".parse().unwrap(),
                "5.6.7.8:9".parse().unwrap(),
            ],
        };
        for ipv6 in [false, true] {
            let mut r = Vec::new();
            encode_announce_response(1, &reply, ipv6, &mut r);
            v.push(r);
        }
        let mut r = Vec::new();
        encode_scrape_response(1, &[ScrapeEntry::default()], &mut r);
        v.push(r);
        let mut r = Vec::new();
        encode_error_response(1, "nope", &mut r);
        v.push(r);
        v
    }

    fn parse_all(b: &[u8]) -> bool {
        let mut ok = parse_request(b).is_ok();
        for action in 0..4 {
            for ipv6 in [false, true] {
                if let Ok(r) = parse_response(b, 1, action, ipv6) {
                    ok = true;
                    if let Response::Announce(a) = r {
                        assert!(a.peers.len() <= MAX_PEERS_PER_RESPONSE);
                        assert!(a.peers.iter().all(|p| p.port() != 0));
                    }
                }
            }
        }
        ok
    }

    #[test]
    fn packets_truncation_sweep() {
        for v in vectors() {
            for n in 0..v.len() {
                let prefix = &v[..n];
                let ok = parse_all(prefix);
                if n < RESPONSE_HEADER {
                    assert!(!ok, "prefix of {n} bytes parsed");
                }
            }
            // Fixed-size packets reject every strict prefix.
            if v.len() == 16 {
                for n in 0..16 {
                    assert!(parse_request(&v[..n]).is_err() || n >= 16);
                    assert!(parse_response(&v[..n], 1, ACTION_CONNECT, false).is_err());
                }
            }
        }
        let mut a = Vec::new();
        encode_announce_request(3, 4, &params(), &mut a).unwrap();
        for n in 0..ANNOUNCE_REQUEST_LEN {
            assert!(parse_request(&a[..n]).is_err());
        }
    }

    #[test]
    fn packets_mutation_sweep() {
        let mut rng = Rng::new(0x15);
        for v in vectors() {
            for _ in 0..3000 {
                let m = mutate(&mut rng, &v);
                parse_all(&m);
            }
        }
    }

    // ---- state machine ----

    fn fake_tracker_reply(req: &[u8], conn_id: u64, peers: &[SocketAddr]) -> Vec<u8> {
        match parse_request(req).unwrap() {
            Request::Connect { transaction_id } => {
                encode_connect_response(transaction_id, conn_id).to_vec()
            }
            Request::Announce {
                connection_id,
                transaction_id,
                ..
            } => {
                assert_eq!(connection_id, conn_id);
                let mut out = Vec::new();
                let r = AnnounceReply {
                    interval: 900,
                    leechers: 1,
                    seeders: 2,
                    peers: peers.to_vec(),
                };
                encode_announce_response(transaction_id, &r, false, &mut out);
                out
            }
            Request::Scrape { transaction_id, .. } => {
                let mut out = Vec::new();
                encode_scrape_response(transaction_id, &[ScrapeEntry::default()], &mut out);
                out
            }
        }
    }

    #[test]
    fn connecting_timeout_retransmits_then_announce_completes() {
        let mut rng = Rng::new(1);
        let mut cache = ConnCache::new();
        let mut x = UdpAnnounce::new(at(0), v4(), params(), RetryConfig::default()).unwrap();
        assert_eq!(x.poll_at(), Some(at(0)));
        assert_eq!(x.transaction_id(), None);
        let c1 = x.poll_transmit(at(0), &cache, &mut rng).unwrap();
        assert_eq!(action_of(&c1), ACTION_CONNECT);
        assert_eq!(x.transaction_id(), Some(tid_of(&c1)));
        assert_eq!(x.poll_at(), Some(at(15)));
        assert_eq!(x.poll_transmit(at(14), &cache, &mut rng), None);
        // Lost; retransmitted at t = 15 with the same transaction id.
        let c2 = x.poll_transmit(at(15), &cache, &mut rng).unwrap();
        assert_eq!(c2, c1);
        assert_eq!(x.poll_at(), Some(at(45)));
        let peer: SocketAddr = "10.0.0.7:51413".parse().unwrap();
        let reply = fake_tracker_reply(&c2, 77, &[peer]);
        assert_eq!(x.handle_response(at(16), &reply, &mut cache), Ok(None));
        assert_eq!(cache.get(v4(), at(16)), Some((77, at(16))));
        assert_eq!(x.poll_at(), Some(at(16)));
        let a = x.poll_transmit(at(16), &cache, &mut rng).unwrap();
        assert_eq!(action_of(&a), ACTION_ANNOUNCE);
        assert_ne!(
            tid_of(&a),
            tid_of(&c1),
            "a new phase draws a new transaction id"
        );
        // n keeps counting: the announce waits 15 * 2^1.
        assert_eq!(x.poll_at(), Some(at(16 + 30)));
        let reply = fake_tracker_reply(&a, 77, &[peer]);
        let out = x.handle_response(at(17), &reply, &mut cache).unwrap();
        assert_eq!(
            out,
            Some(Outcome::Announced(AnnounceReply {
                interval: 900,
                leechers: 1,
                seeders: 2,
                peers: vec![peer],
            }))
        );
        assert!(x.is_done() && !x.timed_out());
        assert_eq!(x.poll_at(), None);
        assert_eq!(x.poll_transmit(at(100), &cache, &mut rng), None);
        assert_eq!(
            x.handle_response(at(18), &reply, &mut cache),
            Err(UdpTrackerError::NotExpecting)
        );
    }

    #[test]
    fn announcing_follows_bep15_timeout_example() {
        // BEP 15 "Announce times out": connect 0, reply 1, announce 2, 17, 47, connect 107, 227.
        let mut rng = Rng::new(2);
        let mut cache = ConnCache::new();
        let mut x = UdpAnnounce::new(at(0), v4(), params(), RetryConfig::default()).unwrap();
        let c = x.poll_transmit(at(0), &cache, &mut rng).unwrap();
        x.handle_response(at(1), &fake_tracker_reply(&c, 5, &[]), &mut cache)
            .unwrap();
        let mut sent = Vec::new();
        let mut t = at(2);
        while let Some(p) = x.poll_transmit(t, &cache, &mut rng) {
            sent.push((t.as_millis() / 1000, action_of(&p)));
            if sent.len() == 5 {
                break;
            }
            t = x.poll_at().unwrap();
        }
        assert_eq!(
            sent,
            vec![(2, 1), (17, 1), (47, 1), (107, 0), (227, 0)],
            "announce retries, then a connect once the id expired"
        );
    }

    #[test]
    fn connecting_gives_up_after_max_exponent() {
        let mut rng = Rng::new(3);
        let cache = ConnCache::new();
        let cfg = RetryConfig {
            base: Duration::from_millis(10),
            max_exponent: 2,
        };
        let mut x = UdpAnnounce::new(Instant::ZERO, v4(), params(), cfg).unwrap();
        let mut times = Vec::new();
        while let Some(t) = x.poll_at() {
            if x.poll_transmit(t, &cache, &mut rng).is_some() {
                times.push(t.as_millis());
            }
        }
        assert_eq!(times, vec![0, 10, 30]);
        assert!(x.timed_out());
    }

    #[test]
    fn connection_id_reused_within_a_minute_only() {
        let mut rng = Rng::new(4);
        let mut cache = ConnCache::new();
        cache.insert(v4(), 99, at(10));
        let mut x = UdpAnnounce::new(at(30), v4(), params(), RetryConfig::default()).unwrap();
        let a = x.poll_transmit(at(30), &cache, &mut rng).unwrap();
        assert_eq!(action_of(&a), ACTION_ANNOUNCE);
        assert_eq!(&a[..8], &99u64.to_be_bytes());
        // A retransmission past the id's lifetime reconnects.
        assert_eq!(x.poll_at(), Some(at(45)));
        let a2 = x.poll_transmit(at(45), &cache, &mut rng).unwrap();
        assert_eq!(action_of(&a2), ACTION_ANNOUNCE);
        assert_eq!(x.poll_at(), Some(at(75)));
        let c = x.poll_transmit(at(75), &cache, &mut rng).unwrap();
        assert_eq!(action_of(&c), ACTION_CONNECT);
        // Another exchange started after expiry connects first too.
        let mut y = UdpAnnounce::new(at(70), v4(), params(), RetryConfig::default()).unwrap();
        let c = y.poll_transmit(at(70), &cache, &mut rng).unwrap();
        assert_eq!(action_of(&c), ACTION_CONNECT);
        // ...and a different tracker address never shares the id.
        let other: SocketAddr = "10.0.0.2:6969".parse().unwrap();
        let mut z = UdpAnnounce::new(at(30), other, params(), RetryConfig::default()).unwrap();
        let c = z.poll_transmit(at(30), &cache, &mut rng).unwrap();
        assert_eq!(action_of(&c), ACTION_CONNECT);
    }

    #[test]
    fn requesting_wrong_tid_is_ignored() {
        let mut rng = Rng::new(5);
        let mut cache = ConnCache::new();
        let mut x = UdpAnnounce::new(at(0), v4(), params(), RetryConfig::default()).unwrap();
        let c = x.poll_transmit(at(0), &cache, &mut rng).unwrap();
        let good = fake_tracker_reply(&c, 5, &[]);
        let mut forged = good.clone();
        forged[7] ^= 1;
        assert!(matches!(
            x.handle_response(at(1), &forged, &mut cache),
            Err(UdpTrackerError::TransactionMismatch { .. })
        ));
        assert!(cache.is_empty());
        assert_eq!(x.poll_at(), Some(at(15)));
        assert!(matches!(
            x.handle_response(at(1), &good[..10], &mut cache),
            Err(UdpTrackerError::TooShort { .. })
        ));
        assert_eq!(x.handle_response(at(1), &good, &mut cache), Ok(None));
        // The connect reply replayed during the announce phase is a mismatch too.
        let _a = x.poll_transmit(at(1), &cache, &mut rng).unwrap();
        assert!(x.handle_response(at(2), &good, &mut cache).is_err());
        assert!(!x.is_done());
    }

    #[test]
    fn requesting_tracker_error_ends_and_forgets_id() {
        let mut rng = Rng::new(6);
        let mut cache = ConnCache::new();
        cache.insert(v4(), 1, at(0));
        let mut x = UdpAnnounce::new(at(0), v4(), params(), RetryConfig::default()).unwrap();
        let a = x.poll_transmit(at(0), &cache, &mut rng).unwrap();
        let mut err = Vec::new();
        encode_error_response(tid_of(&a), "unregistered torrent", &mut err);
        assert_eq!(
            x.handle_response(at(1), &err, &mut cache),
            Ok(Some(Outcome::TrackerError("unregistered torrent".into())))
        );
        assert!(cache.get(v4(), at(1)).is_none());
    }

    #[test]
    fn scrape_exchange_over_ipv6() {
        let mut rng = Rng::new(7);
        let mut cache = ConnCache::new();
        let t6: SocketAddr = "[2001:db8::5]:6969".parse().unwrap();
        assert!(UdpAnnounce::new_scrape(
            at(0),
            t6,
            vec![[0; 20]; MAX_SCRAPE_HASHES + 1],
            RetryConfig::default()
        )
        .is_err());
        let mut x =
            UdpAnnounce::new_scrape(at(0), t6, vec![[3; 20]], RetryConfig::default()).unwrap();
        let c = x.poll_transmit(at(0), &cache, &mut rng).unwrap();
        x.handle_response(at(0), &fake_tracker_reply(&c, 8, &[]), &mut cache)
            .unwrap();
        let s = x.poll_transmit(at(0), &cache, &mut rng).unwrap();
        assert_eq!(action_of(&s), ACTION_SCRAPE);
        assert_eq!(
            x.handle_response(at(1), &fake_tracker_reply(&s, 8, &[]), &mut cache),
            Ok(Some(Outcome::Scraped(vec![ScrapeEntry::default()])))
        );
    }

    #[test]
    fn conn_cache_is_bounded() {
        let mut cache = ConnCache::new();
        for i in 0..(MAX_CACHED_CONNECTIONS as u64 + 10) {
            let a = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(i as u32)), 1);
            cache.insert(a, i, Instant::from_millis(i));
        }
        assert_eq!(cache.len(), MAX_CACHED_CONNECTIONS);
        // The newest survive.
        let last = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(MAX_CACHED_CONNECTIONS as u32 + 9)),
            1,
        );
        assert!(cache.get(last, at(1)).is_some());
        cache.forget(last);
        assert!(cache.get(last, at(1)).is_none());
    }
}
