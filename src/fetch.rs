//! Layer 2: the metadata-only conversation for a magnet link, before the info dictionary is
//! known (BEP 9 over BEP 10).
//!
//! A `Fetch` talks to peers of one info-hash: it sends our extension handshake (without
//! `metadata_size`, since we have none) and `have_none`, learns each peer's `metadata_size`,
//! asks peers for 16 KiB metadata pieces through `ext::MetadataFetch`, and yields the info
//! dictionary once its SHA-1 matches the info-hash. The engine then builds a `Torrent` from it
//! (`metainfo::parse_info`) and sets `Torrent::info` so the torrent serves it in turn.
//!
//! Contract: pure like `torrent.rs` — no sockets, files or clock; bytes come in through
//! `PeerConn::rx` and go out through `PeerConn::tx`. Nothing a peer says is trusted: sizes are
//! capped by `ext::MAX_METADATA_SIZE`, and peers that sent data contradicting the verified
//! dictionary are banned (`poll_banned`).

use std::net::SocketAddr;

use log::{debug, info, warn};

use crate::ext::{self, MetadataError, MetadataFetch, MetadataMsg, PeerKey};
use crate::peer::{Candidates, CloseReason, PeerConn, Phase};
use crate::time::Instant;
use crate::torrent::our_ext_handshake;
use crate::wire::{self, Message};

/// Failed rounds (assembled dictionary did not hash to the info-hash) after which the fetch
/// gives up: by then every peer that could be told apart has been banned.
pub const MAX_FETCH_FAILURES: u32 = 8;
/// Distinct `metadata_size` values remembered. Peers disagreeing on the size are asked only
/// when their size is the one being fetched; after a failed round the next size is tried.
pub const MAX_SIZES_SEEN: usize = 8;
/// Send-buffer room needed before asking for more metadata (a request is about 40 bytes).
const REQUEST_TX_RESERVE: usize = 64;

/// Why a fetch ended without metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchError {
    TooManyFailures(u32),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::TooManyFailures(n) => {
                write!(f, "metadata failed its hash check {n} times; giving up")
            }
        }
    }
}

impl std::error::Error for FetchError {}

pub struct Fetch {
    pub info_hash: [u8; 20],
    /// The magnet's `dn`, for logs and `status` until the real name is known.
    pub name: Option<String>,
    pub peer_id: [u8; 20],
    pub listen_port: u16,
    pub candidates: Candidates,
    pub max_candidates: usize,
    meta: Option<MetadataFetch>,
    /// Sizes peers announced, first come first; `meta` uses one of them.
    sizes: Vec<u32>,
    /// Connection keys handed out so far; keys start at 1 and are never reused.
    next_key: PeerKey,
    /// Which address each recent connection key belonged to (to ban by address), at most
    /// `ext::MAX_METADATA_PEERS` entries.
    keys: Vec<(PeerKey, SocketAddr)>,
    /// Peers banned since the engine last asked (`poll_banned`).
    banned: Vec<SocketAddr>,
    done: Option<Result<Vec<u8>, String>>,
    finished: bool,
}

impl Fetch {
    pub fn new(
        info_hash: [u8; 20],
        name: Option<String>,
        peer_id: [u8; 20],
        listen_port: u16,
    ) -> Fetch {
        Fetch {
            info_hash,
            name,
            peer_id,
            listen_port,
            candidates: Candidates::new(),
            max_candidates: crate::torrent::DEFAULT_MAX_CANDIDATES,
            meta: None,
            sizes: Vec::new(),
            next_key: 1,
            keys: Vec::new(),
            banned: Vec::new(),
            done: None,
            finished: false,
        }
    }

    /// Metadata size being fetched (once a peer has told it).
    pub fn metadata_size(&self) -> Option<u32> {
        self.meta.as_ref().map(MetadataFetch::size)
    }

    /// (pieces received, pieces total) of the current round, for `status`.
    pub fn progress(&self) -> (u32, u32) {
        self.meta
            .as_ref()
            .map_or((0, 0), |m| (m.pieces_have(), m.piece_count()))
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    // ----- candidates (same rules as a torrent's) -----

    pub fn add_candidate(&mut self, addr: SocketAddr, now: Instant) -> bool {
        self.candidates.add(addr, now, self.max_candidates)
    }

    pub fn next_candidate(&mut self, now: Instant) -> Option<SocketAddr> {
        if self.finished {
            return None;
        }
        self.candidates.next(now)
    }

    pub fn candidate_connected(&mut self, addr: SocketAddr) {
        self.candidates.connected(addr)
    }

    pub fn candidate_closed(&mut self, addr: SocketAddr, reason: &CloseReason, now: Instant) {
        self.candidates.closed(addr, reason, now)
    }

    pub fn mark_plain_only(&mut self, addr: SocketAddr, now: Instant) {
        self.candidates.mark_plain_only(addr, now)
    }

    pub fn candidate_plain_only(&self, addr: &SocketAddr) -> bool {
        self.candidates.plain_only(addr)
    }

    /// Whether `addr` sent bad metadata; the engine refuses or closes it.
    pub fn should_drop(&self, addr: &SocketAddr) -> bool {
        self.candidates.is_banned(addr)
    }

    /// A peer banned for bad metadata since the last call; the engine closes its connection.
    pub fn poll_banned(&mut self) -> Option<SocketAddr> {
        self.banned.pop()
    }

    /// The candidate list, for the torrent that follows the fetch (every entry made
    /// dialable again).
    pub fn take_candidates(&mut self, now: Instant) -> Candidates {
        let mut c = std::mem::take(&mut self.candidates);
        c.reset_connections(now);
        c
    }

    /// The verified info dictionary (`Ok`) or why the fetch gave up (`Err`), once.
    pub fn poll_done(&mut self) -> Option<Result<Vec<u8>, String>> {
        self.done.take()
    }

    // ----- connection lifecycle -----

    /// The remote handshake for our info-hash was accepted: sends our extension handshake
    /// (no `metadata_size`, no ut_pex: the torrent may turn out private, BEP 27) and, with
    /// the fast extension, `have_none`. No bitfield: we do not know the piece count.
    pub fn on_established(&mut self, p: &mut PeerConn, now: Instant) {
        p.phase = Phase::Established;
        p.last_rx = now;
        p.fetch_key = self.next_key;
        self.next_key = self.next_key.saturating_add(1);
        if self.keys.len() >= ext::MAX_METADATA_PEERS {
            self.keys.remove(0);
        }
        self.keys.push((p.fetch_key, p.addr));
        if !p.extended {
            // BEP 9 needs BEP 10: this peer cannot give us metadata.
            p.close(CloseReason::NotInteresting);
            return;
        }
        if p.fast {
            p.push(&Message::HaveNone);
        }
        let payload = our_ext_handshake(None, false, self.listen_port);
        p.push(&Message::Extended {
            id: wire::EXTENDED_HANDSHAKE_ID,
            payload: &payload,
        });
    }

    /// The connection ended: its outstanding metadata requests go to other peers.
    pub fn on_closed(&mut self, p: &mut PeerConn, now: Instant) {
        if let Some(m) = self.meta.as_mut() {
            m.on_peer_gone(p.fetch_key);
        }
        let reason = p.close.clone().unwrap_or(CloseReason::PeerClosed);
        self.candidate_closed(p.addr, &reason, now);
    }

    // ----- input -----

    /// Parses and handles every complete message in `p.rx`. Protocol violations set `p.close`.
    pub fn handle_rx(&mut self, p: &mut PeerConn, now: Instant) {
        let rx = std::mem::take(&mut p.rx);
        let max = u32::try_from(rx.len()).unwrap_or(u32::MAX);
        let mut used = 0;
        while p.close.is_none() {
            let buf = rx.get(used..p.rx_len).unwrap_or(&[]);
            match wire::decode(buf, max) {
                Ok(Some((msg, n))) => {
                    used += n;
                    p.last_rx = now;
                    self.handle_message(p, msg, now);
                    if self.candidates.is_banned(&p.addr) {
                        p.close(CloseReason::BadPiece);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    p.close(CloseReason::Protocol(e.to_string()));
                    break;
                }
            }
        }
        p.rx = rx;
        p.rx_consume(used);
    }

    fn handle_message(&mut self, p: &mut PeerConn, msg: Message<'_>, now: Instant) {
        match msg {
            Message::Extended { id, payload } => match id {
                wire::EXTENDED_HANDSHAKE_ID => self.on_ext_handshake(p, payload),
                ext::OUR_UT_METADATA_ID => self.on_metadata_msg(p, payload, now),
                // ut_pex and anything else: not advertised, so not expected; ignored.
                _ => {}
            },
            Message::Request(r) => {
                // We have nothing; BEP 6 wants an explicit reject, BEP 3 peers are ignored.
                if p.fast {
                    p.push(&Message::Reject(r));
                }
            }
            Message::Choke => p.peer_choking = true,
            Message::Unchoke => p.peer_choking = false,
            Message::Interested => p.peer_interested = true,
            Message::NotInterested => p.peer_interested = false,
            // What the peer has matters only once the torrent exists.
            _ => {}
        }
    }

    fn on_ext_handshake(&mut self, p: &mut PeerConn, payload: &[u8]) {
        if let Err(e) = p.on_ext_handshake(payload) {
            p.close(CloseReason::Protocol(e.to_string()));
            return;
        }
        // A peer without ut_metadata, or whose size is missing or above the cap (`ext`
        // parses those as `None`), cannot help.
        let (Some(_), Some(size)) = (p.ext_ut_metadata, p.ext_metadata_size) else {
            p.close(CloseReason::NotInteresting);
            return;
        };
        if !self.sizes.contains(&size) && self.sizes.len() < MAX_SIZES_SEEN {
            self.sizes.push(size);
        }
        if self.meta.is_none() && !self.finished {
            self.start_round(size);
        }
    }

    fn start_round(&mut self, size: u32) {
        match MetadataFetch::new(self.info_hash, size) {
            Ok(m) => {
                debug!("magnet {}: fetching {size} bytes of metadata", self.label());
                self.meta = Some(m);
            }
            Err(e) => debug!("magnet {}: {e}", self.label()),
        }
    }

    fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| crate::hash::hex(&self.info_hash))
    }

    fn on_metadata_msg(&mut self, p: &mut PeerConn, payload: &[u8], now: Instant) {
        let msg = match ext::parse_metadata_msg(payload) {
            Ok(m) => m,
            Err(e) => {
                p.close(CloseReason::Protocol(e.to_string()));
                return;
            }
        };
        let key = p.fetch_key;
        match msg {
            MetadataMsg::Request { piece } => {
                if let Some(id) = p.ext_ut_metadata {
                    p.push(&Message::Extended {
                        id,
                        payload: &ext::encode_metadata_reject(piece),
                    });
                }
            }
            MetadataMsg::Reject { piece } => {
                if let Some(m) = self.meta.as_mut() {
                    m.on_reject(key, piece);
                }
            }
            MetadataMsg::Unknown { .. } => {}
            MetadataMsg::Data {
                piece,
                total_size,
                data,
            } => {
                let Some(m) = self.meta.as_mut() else {
                    return;
                };
                if p.ext_metadata_size != Some(m.size()) {
                    // Not asked (its size is not the one fetched): unsolicited, dropped.
                    return;
                }
                match m.on_data(key, piece, total_size, data) {
                    Ok(()) => {}
                    Err(MetadataError::PeerBanned) => {
                        p.close(CloseReason::BadPiece);
                        return;
                    }
                    Err(e) => {
                        p.close(CloseReason::Protocol(e.to_string()));
                        return;
                    }
                }
                self.check_finished(now);
            }
        }
    }

    /// After a piece arrived: verifies a complete round, bans peers found lying, and on a
    /// failed round possibly moves on to another announced size.
    fn check_finished(&mut self, now: Instant) {
        let Some(m) = self.meta.as_mut() else {
            return;
        };
        let Some(result) = m.finish() else {
            return;
        };
        let bad: Vec<PeerKey> = m.bad_peers().to_vec();
        let failures = m.failures();
        let size = m.size();
        for key in bad {
            self.ban_key(key, now);
        }
        match result {
            Ok(info) => {
                info!(
                    "magnet {}: metadata verified ({} bytes)",
                    self.label(),
                    info.len()
                );
                self.finished = true;
                self.meta = None;
                self.done = Some(Ok(info));
            }
            Err(e) => {
                warn!("magnet {}: {e}", self.label());
                if failures >= MAX_FETCH_FAILURES {
                    self.finished = true;
                    self.meta = None;
                    self.done = Some(Err(FetchError::TooManyFailures(failures).to_string()));
                    return;
                }
                // A peer may have lied about the size: try the next size announced, if any
                // (the pieces were reset anyway).
                let next = self
                    .sizes
                    .iter()
                    .position(|&s| s == size)
                    .and_then(|i| self.sizes.get(i + 1).or(self.sizes.first()))
                    .copied()
                    .filter(|&s| s != size);
                if let Some(s) = next {
                    self.start_round(s);
                }
            }
        }
    }

    fn ban_key(&mut self, key: PeerKey, now: Instant) {
        let Some(&(_, addr)) = self.keys.iter().find(|(k, _)| *k == key) else {
            return;
        };
        if self.candidates.ban(addr, now, self.max_candidates) {
            warn!(
                "magnet {}: peer {addr} sent bad metadata; banned",
                self.label()
            );
            self.banned.push(addr);
        }
    }

    // ----- output -----

    /// Sends ut_metadata requests to `p` as the assembler allows (a couple per peer).
    pub fn fill_tx(&mut self, p: &mut PeerConn, now: Instant) {
        if !p.is_established() || p.close.is_some() {
            return;
        }
        let (Some(m), Some(id)) = (self.meta.as_mut(), p.ext_ut_metadata) else {
            return;
        };
        if p.ext_metadata_size != Some(m.size()) {
            return;
        }
        while p.tx_space() >= REQUEST_TX_RESERVE {
            let Some(piece) = m.next_request(now, p.fetch_key) else {
                break;
            };
            p.push(&Message::Extended {
                id,
                payload: &ext::encode_metadata_request(piece),
            });
        }
    }

    /// Once a second: idle peers are closed, quiet ones get a keep-alive.
    pub fn tick<'a>(&mut self, now: Instant, peers: impl Iterator<Item = &'a mut PeerConn>) {
        for p in peers.filter(|p| p.is_established()) {
            if now.since(p.last_rx) > crate::peer::IDLE_TIMEOUT {
                p.close(CloseReason::Idle);
            } else if now.since(p.last_tx) >= crate::peer::KEEPALIVE_INTERVAL
                && p.tx_pending().is_empty()
            {
                p.push(&Message::KeepAlive);
            }
        }
    }
}
