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

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::bitfield::Bitfield;
use crate::picker::BlockRef;
use crate::time::Instant;
use crate::wire::{BlockRequest, Message};

/// Most requests we keep outstanding at one peer. Beyond a few hundred the gain is nil even on
/// loopback, and each entry costs 16 bytes.
pub const MAX_OUTSTANDING: usize = 384;
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

#[derive(Clone, Copy, Debug)]
pub struct Outstanding {
    pub block: BlockRef,
    pub sent_at: Instant,
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

    /// The encryption handshake while `phase == Mse`.
    pub mse: Option<Box<crate::mse::Handshake>>,
    /// RC4 keystreams once MSE selected RC4: `rc4_in` decrypts what is read, `rc4_out`
    /// encrypts `tx` bytes up to `tx_crypted` just before they are written.
    pub rc4_in: Option<crate::mse::Rc4>,
    pub rc4_out: Option<crate::mse::Rc4>,
    pub tx_crypted: usize,
    /// Whether the stream is encrypted (MSE selected RC4).
    pub encrypted: bool,

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
            mse: None,
            rc4_in: None,
            rc4_out: None,
            tx_crypted: 0,
            encrypted: false,
            rx: vec![0; buf_size],
            rx_len: 0,
            tx: vec![0; buf_size],
            tx_pos: 0,
            tx_len: 0,
        }
    }

    /// Prepares the slot for a new connection, keeping the buffers' memory.
    pub fn reset(&mut self, addr: SocketAddr, outgoing: bool, now: Instant) {
        let rx = std::mem::take(&mut self.rx);
        let tx = std::mem::take(&mut self.tx);
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
            ..PeerConn::with_buffers(0)
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

    /// Appends raw bytes; false (nothing written) when they do not fit.
    pub fn push_bytes(&mut self, b: &[u8]) -> bool {
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
        assert!(p.push_bytes(&[1; 40]));
        assert!(!p.push_bytes(&[2; 40]));
        p.tx_consumed(30);
        assert!(p.push_bytes(&[3; 40]));
        assert_eq!(p.tx_pending().len(), 50);
        assert_eq!(p.tx_pending()[0], 1);
        assert_eq!(p.tx_pending()[49], 3);
    }

    #[test]
    fn reset_keeps_buffer_capacity() {
        let mut p = PeerConn::with_buffers(128);
        p.push_bytes(&[1; 10]);
        p.reset(
            SocketAddr::from(([127, 0, 0, 1], 1)),
            true,
            Instant::from_secs(3),
        );
        assert_eq!(p.tx.len(), 128);
        assert_eq!(p.rx.len(), 128);
        assert_eq!(p.tx_len, 0);
        assert_eq!(p.phase, Phase::Connecting);
    }
}
