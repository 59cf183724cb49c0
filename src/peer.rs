//! Layer 2: the state of one peer connection, without its socket.
//!
//! A `PeerConn` holds the wire-protocol state (handshake progress, choke/interest flags, the
//! peer's pieces, our outstanding requests and its requests to us) and two fixed-capacity
//! byte buffers: `rx` (bytes read from the socket, not yet parsed) and `tx` (encoded bytes not
//! yet written). The event loop moves bytes between the socket and these buffers; `torrent.rs`
//! parses `rx` and fills `tx`. Nothing here touches a socket, a file or the clock, so a test can
//! drive two `PeerConn`s against each other in memory.
//!
//! Buffers are allocated once when the connection pool is built and reused for every
//! connection that occupies the slot, so memory does not grow with the number of peers seen.
//!
//! Also here: `Candidates`, the bounded list of peer addresses to dial, shared by a torrent
//! (`torrent.rs`) and a magnet-link metadata fetch (`fetch.rs`).

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::bitfield::Bitfield;
use crate::ext::{self, ExtError, ExtHandshake};
use crate::picker::BlockRef;
use crate::time::Instant;
use crate::wire::{BlockRequest, Message};

/// Initial send buffer: requests, haves and other control messages; grown for uploads.
pub const TX_INITIAL: usize = 2048;
/// Blocks (with their headers) a send buffer may hold while uploading, whatever the buffer
/// size: with room for one only, every block waits for the previous one's write and a fast
/// downloader gets about 20% less from us (1 GiB to libtorrent on loopback: 2.8-3.3 s with
/// one, 2.2-2.3 s with two).
pub const TX_UPLOAD_BLOCKS: usize = 2;

/// The most a connection's send buffer grows to with `peer_buffer_size` = `buf_size`.
pub fn tx_limit(buf_size: usize) -> usize {
    buf_size
        .max(TX_UPLOAD_BLOCKS * (crate::wire::BLOCK_LEN as usize + crate::wire::PIECE_HEADER_LEN))
}
/// Most requests we keep outstanding at one peer. Beyond a few hundred the gain is nil even on
/// loopback, and each entry costs 16 bytes.
pub const MAX_OUTSTANDING: usize = 384;
/// Requests kept in flight across all peers of one torrent (64 MiB of blocks). One fast peer
/// may use up to `MAX_OUTSTANDING`; with many peers each gets a share of this, so the request
/// queues (and the bytes the peers have been asked for) do not grow with the peer count. Less
/// than ~300 a peer with 10 fast peers was measured to scatter blocks over more windows than
/// the chunk pool holds (most then spill to 16 KiB writes read back for hashing).
pub const MAX_INFLIGHT_PER_TORRENT: usize = 4096;
/// The least a peer's share of `MAX_INFLIGHT_PER_TORRENT` falls to: a 16-block pipeline still
/// covers the round trip of a fast LAN peer.
pub const MIN_INFLIGHT_SHARE: usize = 16;
/// Requests from a peer we queue before refusing more. libtorrent and Transmission advertise
/// 250-500 (`reqq`); a peer sending more than this is flooding.
pub const MAX_INCOMING_REQUESTS: usize = 512;
/// Allowed-fast pieces (BEP 6) remembered per peer; the spec suggests a set of about 10.
pub const MAX_ALLOWED_FAST: usize = 32;
/// Close a connection whose handshake has not completed in this time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// BEP 3: keep-alives are sent every two minutes of silence; we send at 90 s and drop a peer
/// silent for 3 minutes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(90);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(180);
/// A peer that has not delivered a block for this long while we wait on requests is snubbed:
/// its requests go back to the picker for other peers.
pub const SNUB_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a connection was closed, logged once where the peer is removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    ConnectFailed(String),
    Io(String),
    PeerClosed,
    HandshakeTimeout,
    Idle,
    BadHandshake,
    UnknownTorrent,
    SelfConnection,
    Duplicate,
    Protocol(String),
    BadPiece,
    TooManyRequests,
    NotInteresting,
    /// The encryption handshake failed (or the peer does not speak MSE).
    Encryption(String),
    /// A plaintext peer while `enable_encryption = require`.
    PlaintextRefused,
    Shutdown,
    TorrentStopped,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::ConnectFailed(e) => write!(f, "connect failed: {e}"),
            CloseReason::Io(e) => write!(f, "i/o error: {e}"),
            CloseReason::PeerClosed => f.write_str("closed by peer"),
            CloseReason::HandshakeTimeout => f.write_str("handshake timeout"),
            CloseReason::Idle => f.write_str("idle timeout"),
            CloseReason::BadHandshake => f.write_str("bad handshake"),
            CloseReason::UnknownTorrent => f.write_str("unknown info-hash"),
            CloseReason::SelfConnection => f.write_str("connected to ourselves"),
            CloseReason::Duplicate => f.write_str("duplicate connection"),
            CloseReason::Protocol(e) => write!(f, "protocol error: {e}"),
            CloseReason::BadPiece => f.write_str("sent corrupt data"),
            CloseReason::TooManyRequests => f.write_str("request flood"),
            CloseReason::NotInteresting => f.write_str("neither side interested"),
            CloseReason::Encryption(e) => write!(f, "encryption handshake failed: {e}"),
            CloseReason::PlaintextRefused => f.write_str("plaintext refused (encryption required)"),
            CloseReason::Shutdown => f.write_str("shutting down"),
            CloseReason::TorrentStopped => f.write_str("torrent stopped"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Outgoing TCP connect in progress.
    Connecting,
    /// MSE/PE key exchange (BEP 8 style encryption) before the BitTorrent handshake.
    Mse,
    /// Waiting for the remote handshake.
    Handshake,
    Established,
}

/// Bytes per second over a short window: a per-second counter folded into an exponential
/// average at each `tick` (called once a second with the elapsed time).
#[derive(Clone, Copy, Debug, Default)]
pub struct Rate {
    pending: u64,
    rate: u64,
    pub total: u64,
}

impl Rate {
    pub fn add(&mut self, n: usize) {
        self.pending += n as u64;
        self.total += n as u64;
    }

    pub fn tick(&mut self, elapsed: Duration) {
        let ms = elapsed.as_millis().max(1) as u64;
        let now = self.pending.saturating_mul(1000) / ms;
        // Weight 1/2: reacts within a few seconds, smooth enough for choking decisions.
        self.rate = (self.rate + now) / 2;
        self.pending = 0;
    }

    pub fn get(&self) -> u64 {
        self.rate
    }
}

/// A request we sent and the peer has not answered yet (8 bytes: the per-peer queues are the
/// bulk of what grows with the number of connections).
#[derive(Clone, Copy, Debug)]
pub struct Outstanding {
    pub block: BlockRef,
}

/// A piece message whose payload is read from the socket straight into the pool chunk that
/// assembles its window, instead of through `rx` (which would cost a copy of every byte).
/// The torrent checks before every read that the target is still this block's (see
/// `Torrent::direct_target`); when it is not, the rest of the payload is read and dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectRx {
    pub block: BlockRef,
    /// The chunk and its generation when the receive began (a released chunk's generation
    /// changes, so a stale target is never written).
    pub chunk: u32,
    pub gen: u32,
    /// Offset of the block within the chunk.
    pub at: u32,
    /// Payload bytes received so far, of `len`.
    pub done: u32,
    pub len: u32,
}

pub struct PeerConn {
    pub addr: SocketAddr,
    pub outgoing: bool,
    pub phase: Phase,
    /// Index of the torrent this connection belongs to, once known.
    pub torrent: Option<usize>,
    pub peer_id: [u8; 20],
    pub reserved: [u8; 8],
    pub fast: bool,
    pub extended: bool,
    /// Whether the peer has said what it has (bitfield, have, have_all or have_none).
    pub got_first_message: bool,

    pub am_choking: bool,
    pub am_interested: bool,
    pub peer_choking: bool,
    pub peer_interested: bool,

    pub have: Bitfield,
    pub seed: bool,
    /// The peer's `reqq` from its extended handshake (how many requests it queues).
    pub peer_reqq: usize,
    pub outstanding: Vec<Outstanding>,
    pub incoming: VecDeque<BlockRequest>,
    pub allowed_fast: Vec<u32>,

    pub down: Rate,
    pub up: Rate,
    pub connected_at: Instant,
    pub last_rx: Instant,
    pub last_tx: Instant,
    pub last_block: Instant,
    pub snubbed: bool,
    pub unexpected_blocks: u32,
    pub hash_failures: u32,
    pub close: Option<CloseReason>,

    /// Whether the peer's BEP 10 extension handshake has arrived.
    pub got_ext_handshake: bool,
    /// Extended message ids the peer wants for ut_metadata and ut_pex (BEP 10: the receiver
    /// chooses), `None` when it does not support them.
    pub ext_ut_metadata: Option<u8>,
    pub ext_ut_pex: Option<u8>,
    /// BEP 9 `metadata_size` from the peer's handshake (already capped by `ext`).
    pub ext_metadata_size: Option<u32>,
    /// The peer's TCP listen port (`p`), which for incoming peers differs from `addr`'s port.
    pub ext_listen_port: Option<u16>,
    /// What we have told this peer over ut_pex (BEP 11); `Some` once it advertised ut_pex on a
    /// public torrent.
    pub pex: Option<ext::PexState>,
    /// When the peer's last ut_pex message was accepted (more often is ignored, BEP 11).
    pub pex_rx_at: Option<Instant>,
    /// ut_metadata pieces we have answered with data on this connection.
    pub metadata_served: u32,
    /// Key of this connection within a metadata fetch (`fetch.rs`); unique per connection.
    pub fetch_key: u64,

    /// The encryption handshake while `phase == Mse`.
    pub mse: Option<Box<crate::mse::Handshake>>,
    /// RC4 keystreams once MSE selected RC4: `rc4_in` decrypts what is read, `rc4_out`
    /// encrypts `tx` bytes up to `tx_crypted` just before they are written.
    pub rc4_in: Option<crate::mse::Rc4>,
    pub rc4_out: Option<crate::mse::Rc4>,
    pub tx_crypted: usize,
    /// Whether the stream is encrypted (MSE selected RC4).
    pub encrypted: bool,

    /// A piece payload being received into a pool chunk (see `DirectRx`).
    pub direct: Option<DirectRx>,
    /// Payload bytes still to be read and dropped: the rest of a direct receive whose target
    /// was taken (another peer delivered the block first, or the piece was abandoned).
    pub discard: u32,

    /// Size of `rx`, and the most `tx` may grow to.
    pub buf_size: usize,
    pub rx: Vec<u8>,
    pub rx_len: usize,
    pub tx: Vec<u8>,
    pub tx_pos: usize,
    pub tx_len: usize,
}

impl PeerConn {
    /// A new connection whose buffers have `buf_size` bytes each. The engine calls this once
    /// per pool slot and then `reset` for every connection that uses the slot.
    pub fn with_buffers(buf_size: usize) -> PeerConn {
        PeerConn {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            outgoing: false,
            phase: Phase::Handshake,
            torrent: None,
            peer_id: [0; 20],
            reserved: [0; 8],
            fast: false,
            extended: false,
            got_first_message: false,
            am_choking: true,
            am_interested: false,
            peer_choking: true,
            peer_interested: false,
            have: Bitfield::new(0),
            seed: false,
            peer_reqq: 250,
            outstanding: Vec::new(),
            incoming: VecDeque::new(),
            allowed_fast: Vec::new(),
            down: Rate::default(),
            up: Rate::default(),
            connected_at: Instant::ZERO,
            last_rx: Instant::ZERO,
            last_tx: Instant::ZERO,
            last_block: Instant::ZERO,
            snubbed: false,
            unexpected_blocks: 0,
            hash_failures: 0,
            close: None,
            got_ext_handshake: false,
            ext_ut_metadata: None,
            ext_ut_pex: None,
            ext_metadata_size: None,
            ext_listen_port: None,
            pex: None,
            pex_rx_at: None,
            metadata_served: 0,
            fetch_key: 0,
            mse: None,
            rc4_in: None,
            rc4_out: None,
            tx_crypted: 0,
            encrypted: false,
            direct: None,
            discard: 0,
            buf_size,
            // Allocated by `commit` (the engine's pool, at start) or at the latest when the slot
            // first carries a connection (`reset`); a slot keeps them for later connections.
            rx: Vec::new(),
            rx_len: 0,
            tx: Vec::new(),
            tx_pos: 0,
            tx_len: 0,
        }
    }

    /// Allocates the slot's receive buffer and initial send buffer now and makes them resident,
    /// so the connection pool's memory is fixed from start-up (the engine does this for every
    /// slot) instead of growing with the number of peers seen.
    pub fn commit(&mut self) {
        if self.rx.len() < self.buf_size {
            self.rx = vec![0; self.buf_size];
        }
        if self.tx.is_empty() {
            self.tx = vec![0; TX_INITIAL.min(self.buf_size)];
        }
        crate::sys::touch_pages(&mut self.rx);
        crate::sys::touch_pages(&mut self.tx);
    }

    /// Prepares the slot for a new connection, keeping the buffers' memory.
    pub fn reset(&mut self, addr: SocketAddr, outgoing: bool, now: Instant) {
        let buf_size = self.buf_size;
        let mut rx = std::mem::take(&mut self.rx);
        let mut tx = std::mem::take(&mut self.tx);
        if rx.len() < buf_size {
            rx = vec![0; buf_size];
        }
        if tx.is_empty() {
            // Requests and control messages fit in a few KiB; `ensure_tx` grows it (up to
            // `buf_size`) when the peer downloads from us.
            tx = vec![0; TX_INITIAL.min(buf_size)];
        }
        let mut outstanding = std::mem::take(&mut self.outstanding);
        let mut incoming = std::mem::take(&mut self.incoming);
        outstanding.clear();
        incoming.clear();
        *self = PeerConn {
            addr,
            outgoing,
            phase: if outgoing {
                Phase::Connecting
            } else {
                Phase::Handshake
            },
            connected_at: now,
            last_rx: now,
            last_tx: now,
            last_block: now,
            outstanding,
            incoming,
            rx,
            tx,
            ..PeerConn::with_buffers(buf_size)
        };
    }

    pub fn is_established(&self) -> bool {
        self.phase == Phase::Established
    }

    pub fn tx_pending(&self) -> &[u8] {
        &self.tx[self.tx_pos..self.tx_len]
    }

    pub fn tx_consumed(&mut self, n: usize) {
        self.tx_pos = (self.tx_pos + n).min(self.tx_len);
        if self.tx_pos == self.tx_len {
            self.tx_pos = 0;
            self.tx_len = 0;
            self.tx_crypted = 0;
        }
    }

    /// Free space at the end of `tx` after compacting.
    pub fn tx_space(&mut self) -> usize {
        if self.tx_pos > 0 && self.tx.len() - self.tx_len < self.tx.len() / 2 {
            self.tx.copy_within(self.tx_pos..self.tx_len, 0);
            self.tx_len -= self.tx_pos;
            self.tx_crypted = self.tx_crypted.saturating_sub(self.tx_pos);
            self.tx_pos = 0;
        }
        self.tx.len() - self.tx_len
    }

    /// Bytes that could be queued in `tx` now, counting what it may still grow by.
    pub fn tx_room(&mut self) -> usize {
        self.tx_space() + self.tx_max().saturating_sub(self.tx.len())
    }
    pub fn tx_max(&self) -> usize {
        tx_limit(self.buf_size)
    }

    /// Makes room for `need` more bytes in `tx` by growing it, never past `tx_max()`.
    pub fn ensure_tx(&mut self, need: usize) {
        if self.tx_space() >= need || self.tx.len() >= self.tx_max() {
            return;
        }
        let want = (self.tx.len() * 2)
            .max(self.tx_len + need)
            .min(self.tx_max());
        if want > self.tx.len() {
            self.tx.resize(want, 0);
        }
    }

    /// Appends raw bytes; false (nothing written) when they do not fit.
    pub fn push_bytes(&mut self, b: &[u8]) -> bool {
        self.ensure_tx(b.len());
        if self.tx_space() < b.len() {
            return false;
        }
        self.tx[self.tx_len..self.tx_len + b.len()].copy_from_slice(b);
        self.tx_len += b.len();
        true
    }

    /// Encodes a message into `tx`; false when it does not fit.
    pub fn push(&mut self, m: &Message<'_>) -> bool {
        let need = m.encoded_len();
        self.ensure_tx(need);
        if self.tx_space() < need {
            return false;
        }
        match m.encode(&mut self.tx[self.tx_len..]) {
            Some(n) => {
                self.tx_len += n;
                true
            }
            None => false,
        }
    }

    /// Marks the connection for closing; the first reason wins.
    pub fn close(&mut self, reason: CloseReason) {
        if self.close.is_none() {
            self.close = Some(reason);
        }
    }

    /// Encrypts bytes queued since the last call (no-op on a plaintext stream). Called just
    /// before writing, so every byte is encrypted exactly once and in stream order.
    pub fn encrypt_pending(&mut self) {
        if let Some(rc4) = self.rc4_out.as_mut() {
            if self.tx_crypted < self.tx_len {
                rc4.apply(&mut self.tx[self.tx_crypted..self.tx_len]);
            }
        }
        self.tx_crypted = self.tx_len;
    }

    /// Decrypts `n` bytes just read into `rx` at `start` (no-op on a plaintext stream).
    pub fn decrypt_received(&mut self, start: usize, n: usize) {
        if let Some(rc4) = self.rc4_in.as_mut() {
            rc4.apply(&mut self.rx[start..start + n]);
        }
    }

    /// Decrypts bytes read outside `rx` (a direct payload), in stream order with `rx`'s.
    pub fn decrypt_payload(&mut self, buf: &mut [u8]) {
        if let Some(rc4) = self.rc4_in.as_mut() {
            rc4.apply(buf);
        }
    }

    /// Whether a piece payload is being read outside `rx` (into a chunk, or dropped).
    pub fn in_payload(&self) -> bool {
        self.direct.is_some() || self.discard > 0
    }

    pub fn rx_free(&mut self) -> &mut [u8] {
        &mut self.rx[self.rx_len..]
    }

    /// Drops the first `n` parsed bytes of `rx`, moving the remainder to the front.
    pub fn rx_consume(&mut self, n: usize) {
        let n = n.min(self.rx_len);
        if n == 0 {
            return;
        }
        self.rx.copy_within(n..self.rx_len, 0);
        self.rx_len -= n;
    }

    /// Records the peer's BEP 10 extension handshake. A later handshake replaces the earlier
    /// one's settings (BEP 10 allows re-sending it; an id of 0 switches an extension off).
    pub fn on_ext_handshake(&mut self, payload: &[u8]) -> Result<ExtHandshake, ExtError> {
        let h = ExtHandshake::parse(payload)?;
        self.got_ext_handshake = true;
        self.ext_ut_metadata = h.id_of(ext::UT_METADATA);
        self.ext_ut_pex = h.id_of(ext::UT_PEX);
        self.ext_metadata_size = h.metadata_size;
        if h.p.is_some() {
            self.ext_listen_port = h.p;
        }
        if let Some(q) = h.reqq {
            self.peer_reqq = (q as usize).clamp(1, MAX_OUTSTANDING);
        }
        Ok(h)
    }

    /// The address other peers can dial this peer at: the connected address for outgoing
    /// connections, the handshake's listen port for incoming ones (`None` if not known).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        if self.outgoing {
            Some(self.addr)
        } else {
            self.ext_listen_port
                .map(|port| SocketAddr::new(self.addr.ip(), port))
        }
    }

    pub fn client_name(&self) -> String {
        // Azureus-style ids: -XX1234-
        let id = &self.peer_id;
        if id[0] == b'-' && id[7] == b'-' && id[1..7].iter().all(|c| c.is_ascii_alphanumeric()) {
            String::from_utf8_lossy(&id[1..7]).into_owned()
        } else {
            String::from("?")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Candidates

#[derive(Clone, Debug)]
pub struct Candidate {
    pub addr: SocketAddr,
    pub connected: bool,
    pub failures: u8,
    pub next_attempt: Instant,
    pub banned: bool,
    /// The peer failed the encryption handshake: with `prefer`, dial it in plaintext.
    pub plain_only: bool,
}

/// Peer addresses to dial (from trackers, `--peer`, magnet `x.pe`, PEX, incoming
/// connections), with per-address backoff and bans. At most `max` entries (the caller's
/// setting), so a hostile source cannot grow it.
#[derive(Clone, Debug, Default)]
pub struct Candidates {
    list: Vec<Candidate>,
}

impl Candidates {
    pub fn new() -> Candidates {
        Candidates::default()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Candidate> {
        self.list.iter()
    }

    pub fn contains(&self, addr: &SocketAddr) -> bool {
        self.list.iter().any(|c| c.addr == *addr)
    }

    /// Adds `addr` unless known, port 0 or unspecified; when `max` entries are held a failed,
    /// unconnected one makes room, otherwise the new one is dropped. True when added.
    pub fn add(&mut self, addr: SocketAddr, now: Instant, max: usize) -> bool {
        if addr.port() == 0 || addr.ip().is_unspecified() || self.contains(&addr) {
            return false;
        }
        if self.list.len() >= max {
            match self
                .list
                .iter()
                .position(|c| !c.connected && c.failures > 0)
            {
                Some(i) => {
                    self.list.swap_remove(i);
                }
                None => return false,
            }
        }
        self.list.push(Candidate {
            addr,
            connected: false,
            failures: 0,
            next_attempt: now,
            banned: false,
            plain_only: false,
        });
        true
    }

    /// The next candidate to dial, marking it connected.
    pub fn next(&mut self, now: Instant) -> Option<SocketAddr> {
        let c = self
            .list
            .iter_mut()
            .filter(|c| !c.connected && !c.banned && c.next_attempt <= now)
            .min_by_key(|c| (c.failures, c.next_attempt))?;
        c.connected = true;
        Some(c.addr)
    }

    pub fn connected(&mut self, addr: SocketAddr) {
        if let Some(c) = self.list.iter_mut().find(|c| c.addr == addr) {
            c.connected = true;
        }
    }

    /// A connection to `addr` ended; back off before dialling it again.
    pub fn closed(&mut self, addr: SocketAddr, reason: &CloseReason, now: Instant) {
        let Some(c) = self.list.iter_mut().find(|c| c.addr == addr) else {
            return;
        };
        c.connected = false;
        match reason {
            CloseReason::SelfConnection | CloseReason::BadPiece => c.banned = true,
            CloseReason::Shutdown | CloseReason::TorrentStopped | CloseReason::Duplicate => {}
            _ => {
                c.failures = c.failures.saturating_add(1);
                let backoff = 5u64 << c.failures.min(6);
                c.next_attempt = now + Duration::from_secs(backoff);
            }
        }
    }

    /// Retry `addr` at once without encryption (it refused or failed MSE).
    pub fn mark_plain_only(&mut self, addr: SocketAddr, now: Instant) {
        if let Some(c) = self.list.iter_mut().find(|c| c.addr == addr) {
            if !c.plain_only {
                c.plain_only = true;
                c.next_attempt = now;
            }
        }
    }

    pub fn plain_only(&self, addr: &SocketAddr) -> bool {
        self.list.iter().any(|c| c.addr == *addr && c.plain_only)
    }

    pub fn is_banned(&self, addr: &SocketAddr) -> bool {
        self.list.iter().any(|c| c.addr == *addr && c.banned)
    }

    /// Counts a failure against `addr` (corrupt data it contributed to); returns its failure
    /// count, `None` if it is not a candidate.
    pub fn note_failure(&mut self, addr: &SocketAddr) -> Option<u8> {
        let c = self.list.iter_mut().find(|c| c.addr == *addr)?;
        c.failures = c.failures.saturating_add(1);
        Some(c.failures)
    }

    /// Bans `addr` (adding it if unknown, so an incoming peer stays refused). True when it was
    /// not banned before.
    pub fn ban(&mut self, addr: SocketAddr, now: Instant, max: usize) -> bool {
        if !self.contains(&addr) && !self.add(addr, now, max) {
            return false;
        }
        match self.list.iter_mut().find(|c| c.addr == addr) {
            Some(c) if !c.banned => {
                c.banned = true;
                true
            }
            _ => false,
        }
    }

    /// Every candidate becomes dialable at once (connections were handed back, e.g. when a
    /// metadata fetch turns into a torrent).
    pub fn reset_connections(&mut self, now: Instant) {
        for c in &mut self.list {
            c.connected = false;
            c.next_attempt = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_tick_averages() {
        let mut r = Rate::default();
        r.add(1000);
        r.tick(Duration::from_secs(1));
        assert_eq!(r.get(), 500);
        r.add(1000);
        r.tick(Duration::from_secs(1));
        assert_eq!(r.get(), 750);
        assert_eq!(r.total, 2000);
    }

    #[test]
    fn tx_buffer_compacts_and_refuses_overflow() {
        let mut p = PeerConn::with_buffers(64);
        // Even with a tiny peer_buffer_size, two blocks fit for uploading.
        let max = tx_limit(64);
        assert_eq!(max, 2 * (16384 + 13));
        assert!(p.push_bytes(&vec![1; max - 10]));
        assert!(!p.push_bytes(&[2; 40]));
        p.tx_consumed(30);
        assert!(p.push_bytes(&[3; 40]));
        assert_eq!(p.tx_pending().len(), max);
        assert_eq!(p.tx_pending()[0], 1);
        assert_eq!(p.tx_pending()[max - 1], 3);
    }

    #[test]
    fn pool_slot_allocates_on_first_use_and_keeps_buffers() {
        let mut p = PeerConn::with_buffers(64 * 1024);
        assert!(
            p.rx.is_empty() && p.tx.is_empty(),
            "an unused slot costs no buffers"
        );
        let a = SocketAddr::from(([127, 0, 0, 1], 1));
        p.reset(a, true, Instant::from_secs(3));
        assert_eq!(p.rx.len(), 64 * 1024);
        assert_eq!(p.tx.len(), TX_INITIAL);
        // An upload grows tx up to buf_size (here above two blocks), never beyond.
        assert!(p.push_bytes(&[1; 20_000]));
        assert!(p.tx.len() >= 20_000 && p.tx.len() <= 64 * 1024);
        assert!(!p.push_bytes(&[2; 60_000]));
        let grown = p.tx.len();
        p.reset(a, false, Instant::from_secs(4));
        assert_eq!(
            p.tx.len(),
            grown,
            "buffers are kept for the next connection"
        );
        assert_eq!(p.tx_len, 0);
        assert_eq!(p.phase, Phase::Handshake);
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn candidates_full_list_evicts_failed_and_bans_stick() {
        let t0 = Instant::ZERO;
        let mut c = Candidates::new();
        assert!(c.add(sa("10.0.0.1:1"), t0, 2));
        assert!(!c.add(sa("10.0.0.1:1"), t0, 2), "duplicate");
        assert!(!c.add(sa("10.0.0.9:0"), t0, 2), "port 0");
        assert!(!c.add(sa("0.0.0.0:5"), t0, 2), "unspecified");
        assert!(c.add(sa("10.0.0.2:1"), t0, 2));
        assert!(!c.add(sa("10.0.0.3:1"), t0, 2), "full, nothing failed");
        let a = c.next(t0).unwrap();
        c.closed(a, &CloseReason::Idle, t0);
        assert_eq!(
            c.next(t0),
            Some(sa("10.0.0.2:1")),
            "the failed one backs off"
        );
        assert!(c.add(sa("10.0.0.3:1"), t0, 2), "the failed one made room");
        assert_eq!(c.len(), 2);
        assert!(c.ban(sa("10.0.0.4:1"), t0, 3));
        assert!(!c.ban(sa("10.0.0.4:1"), t0, 3));
        assert!(c.is_banned(&sa("10.0.0.4:1")));
        c.reset_connections(t0);
        let mut both = [c.next(t0).unwrap(), c.next(t0).unwrap()];
        both.sort();
        assert_eq!(both, [sa("10.0.0.2:1"), sa("10.0.0.3:1")]);
        assert_eq!(c.next(t0), None, "banned is never dialled");
    }

    #[test]
    fn ext_handshake_sets_peer_fields() {
        let mut p = PeerConn::with_buffers(0);
        p.reset(sa("10.0.0.5:40000"), false, Instant::ZERO);
        assert_eq!(p.listen_addr(), None);
        let h = ExtHandshake {
            m: vec![("ut_metadata".into(), 3), ("ut_pex".into(), 0)],
            p: Some(6881),
            reqq: Some(5000),
            metadata_size: Some(1234),
            ..ExtHandshake::default()
        };
        p.on_ext_handshake(&h.encode()).unwrap();
        assert_eq!(p.ext_ut_metadata, Some(3));
        assert_eq!(p.ext_ut_pex, None, "id 0 means disabled");
        assert_eq!(p.ext_metadata_size, Some(1234));
        assert_eq!(p.peer_reqq, MAX_OUTSTANDING);
        assert_eq!(p.listen_addr(), Some(sa("10.0.0.5:6881")));
        assert!(p.on_ext_handshake(b"i1e").is_err());
    }
}
