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
            // We have nothing; BEP 6 wants an explicit reject, BEP 3 peers are ignored.
            Message::Request(r) if p.fast => {
                p.push(&Message::Reject(r));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bencode;
    use crate::bitfield::Bitfield;
    use crate::ext::ExtHandshake;
    use crate::hash::sha1;
    use crate::rng::Rng;
    use crate::storage::MemStore;
    use crate::torrent::{Buffers, Settings, Torrent};
    use std::time::Duration;

    const DATA_LEN: usize = 50_000;
    const PIECE_LEN: u32 = 16384;

    fn data() -> Vec<u8> {
        let mut d = vec![0u8; DATA_LEN];
        Rng::new(5).fill(&mut d);
        d
    }

    /// A real info dictionary padded with an unknown key to three metadata pieces.
    fn info_dict(data: &[u8]) -> Vec<u8> {
        let mut pieces = Vec::new();
        for c in data.chunks(PIECE_LEN as usize) {
            pieces.extend_from_slice(&sha1(c));
        }
        let mut pad = vec![0u8; 40_000];
        Rng::new(6).fill(&mut pad);
        let mut out = b"d".to_vec();
        bencode::put_kv_int(&mut out, "length", data.len() as i64);
        bencode::put_kv_bytes(&mut out, "name", b"magnet.bin");
        bencode::put_kv_int(&mut out, "piece length", i64::from(PIECE_LEN));
        bencode::put_kv_bytes(&mut out, "pieces", &pieces);
        bencode::put_kv_bytes(&mut out, "x-padding", &pad);
        out.push(b'e');
        out
    }

    /// A seeding torrent of `info`'s data that serves `served` (a dictionary of the same
    /// geometry, perhaps tampered) as its metadata.
    fn seeder(info: &[u8], served: &[u8]) -> Torrent {
        let mut meta = crate::metainfo::parse_info(served, vec![]).unwrap().meta;
        // A tampered copy hashes differently; the seeder still claims the real torrent.
        meta.info_hash = sha1(info);
        let n = meta.piece_count();
        let t = Torrent::new(
            meta,
            Bitfield::full(n),
            Box::new(MemStore::from_bytes(data())),
            1,
            [1; 20],
            Settings {
                upload_slots: 4,
                max_candidates: 50,
                listen_port: 6881,
            },
            Rng::new(1),
        )
        .unwrap();
        assert_eq!(t.meta.info_dict(), Some(served));
        t
    }

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, n], 6881))
    }

    fn pipe(from: &mut PeerConn, to: &mut PeerConn) {
        let pending = from.tx_pending().len();
        let n = pending.min(to.rx.len() - to.rx_len);
        let start = from.tx_pos;
        to.rx[to.rx_len..to.rx_len + n].copy_from_slice(&from.tx[start..start + n]);
        to.rx_len += n;
        from.tx_consumed(n);
    }

    /// One seeder link: the seeder's side `s` and the fetch's side `f`.
    struct Link {
        t: Torrent,
        s: PeerConn,
        f: PeerConn,
        bufs: Buffers,
    }

    fn link(fetch: &mut Fetch, t: Torrent, n: u8) -> Link {
        let now = Instant::ZERO;
        let mut s = PeerConn::with_buffers(64 * 1024);
        let mut f = PeerConn::with_buffers(64 * 1024);
        s.reset(SocketAddr::from(([127, 0, 1, n], 50000)), false, now);
        f.reset(addr(n), true, now);
        for p in [&mut s, &mut f] {
            p.fast = true;
            p.extended = true;
        }
        fetch.add_candidate(addr(n), now);
        assert_eq!(fetch.next_candidate(now), Some(addr(n)));
        let mut t = t;
        t.on_established(&mut s, now);
        fetch.on_established(&mut f, now);
        Link {
            t,
            s,
            f,
            bufs: Buffers::new(1),
        }
    }

    /// Runs the links until the fetch is done or nothing is left open; closed links are
    /// reported to the fetch once.
    fn run(fetch: &mut Fetch, links: &mut [Link]) -> Option<Result<Vec<u8>, String>> {
        let mut now = Instant::ZERO;
        let mut reported = vec![false; links.len()];
        for _ in 0..500 {
            now = now + Duration::from_millis(10);
            for (i, l) in links.iter_mut().enumerate() {
                if reported[i] {
                    continue;
                }
                pipe(&mut l.s, &mut l.f);
                fetch.handle_rx(&mut l.f, now);
                pipe(&mut l.f, &mut l.s);
                l.t.handle_rx(&mut l.s, now, &mut l.bufs);
                l.t.fill_tx(&mut l.s, &mut l.bufs);
                fetch.fill_tx(&mut l.f, now);
                if l.f.close.is_some() || l.s.close.is_some() {
                    fetch.on_closed(&mut l.f, now);
                    reported[i] = true;
                }
            }
            if let Some(r) = fetch.poll_done() {
                return Some(r);
            }
            if reported.iter().all(|&r| r) {
                return None;
            }
        }
        None
    }

    #[test]
    fn fetch_from_seeder_yields_verified_info() {
        let info = info_dict(&data());
        assert!(info.len() > 2 * ext::METADATA_PIECE_LEN);
        let hash = sha1(&info);
        let mut fetch = Fetch::new(hash, Some("m".into()), [2; 20], 6882);
        let mut links = vec![link(&mut fetch, seeder(&info, &info), 1)];
        let got = run(&mut fetch, &mut links).expect("done").unwrap();
        assert_eq!(got, info);
        assert!(fetch.is_finished());
        assert_eq!(fetch.poll_done(), None, "reported once");
        let parsed = crate::metainfo::parse_info(&got, vec![]).unwrap();
        assert_eq!(parsed.meta.info_hash, hash);
        assert_eq!(parsed.meta.total_length, DATA_LEN as u64);
        assert!(links[0].f.close.is_none());
    }

    #[test]
    fn fetch_tampered_peer_banned_then_honest_peer_completes() {
        let info = info_dict(&data());
        let mut bad = info.clone();
        bad[info.len() - 100] ^= 0x55;
        let mut fetch = Fetch::new(sha1(&info), None, [2; 20], 6882);
        let mut links = vec![link(&mut fetch, seeder(&info, &bad), 1)];
        assert_eq!(run(&mut fetch, &mut links), None);
        assert_eq!(links[0].f.close, Some(CloseReason::BadPiece));
        assert_eq!(fetch.poll_banned(), Some(addr(1)));
        assert!(fetch.should_drop(&addr(1)));
        assert_eq!(fetch.progress().0, 0, "the round restarted");
        // The banned peer is not dialled again; an honest one finishes the job.
        assert_eq!(fetch.next_candidate(Instant::from_secs(3600)), None);
        links.push(link(&mut fetch, seeder(&info, &info), 2));
        let got = run(&mut fetch, &mut links[1..]).expect("done").unwrap();
        assert_eq!(got, info);
    }

    #[test]
    fn fetch_peer_with_oversized_metadata_is_not_used() {
        let mut fetch = Fetch::new([9; 20], None, [2; 20], 6882);
        let mut p = PeerConn::with_buffers(4096);
        p.reset(addr(3), true, Instant::ZERO);
        p.extended = true;
        fetch.on_established(&mut p, Instant::ZERO);
        let h = ExtHandshake {
            m: vec![(ext::UT_METADATA.into(), 3)],
            metadata_size: Some(ext::MAX_METADATA_SIZE + 1),
            ..ExtHandshake::default()
        };
        let payload = h.encode();
        let m = Message::Extended {
            id: 0,
            payload: &payload,
        };
        p.rx_len = m.encode(&mut p.rx).unwrap();
        fetch.handle_rx(&mut p, Instant::ZERO);
        assert_eq!(p.close, Some(CloseReason::NotInteresting));
        assert_eq!(fetch.metadata_size(), None, "no buffer allocated");
        let before = p.tx_pending().len();
        fetch.fill_tx(&mut p, Instant::ZERO);
        assert_eq!(p.tx_pending().len(), before, "nothing requested");
    }

    #[test]
    fn fetch_handshake_has_no_metadata_size_or_pex_and_garbage_closes() {
        let mut fetch = Fetch::new([9; 20], None, [2; 20], 6882);
        let mut p = PeerConn::with_buffers(4096);
        p.reset(addr(4), true, Instant::ZERO);
        p.extended = true;
        p.fast = true;
        fetch.on_established(&mut p, Instant::ZERO);
        let tx = p.tx_pending().to_vec();
        let (first, n) = wire::decode(&tx, 4096).unwrap().unwrap();
        assert_eq!(first, Message::HaveNone);
        let Some((Message::Extended { id: 0, payload }, _)) = wire::decode(&tx[n..], 4096).unwrap()
        else {
            panic!("no extension handshake");
        };
        let h = ExtHandshake::parse(payload).unwrap();
        assert_eq!(h.id_of(ext::UT_METADATA), Some(ext::OUR_UT_METADATA_ID));
        assert_eq!(h.id_of(ext::UT_PEX), None);
        assert_eq!(h.metadata_size, None);
        assert_eq!(h.p, Some(6882));
        // A malformed ut_metadata message is a protocol error.
        let m = Message::Extended {
            id: ext::OUR_UT_METADATA_ID,
            payload: b"d8:msg_typei1ee",
        };
        p.rx_len = m.encode(&mut p.rx).unwrap();
        fetch.handle_rx(&mut p, Instant::ZERO);
        assert!(matches!(p.close, Some(CloseReason::Protocol(_))));
    }

    #[test]
    fn fetch_keys_are_unique_per_connection() {
        let mut fetch = Fetch::new([9; 20], None, [2; 20], 6882);
        let mut p = PeerConn::with_buffers(1024);
        let mut keys = Vec::new();
        for _ in 0..3 {
            p.reset(addr(5), true, Instant::ZERO);
            p.extended = true;
            fetch.on_established(&mut p, Instant::ZERO);
            keys.push(p.fetch_key);
            fetch.on_closed(&mut p, Instant::ZERO);
        }
        assert_eq!(keys, vec![1, 2, 3]);
    }
}
