//! Layer 2: the DHT node (BEP 5, with BEP 32 IPv6) as a pure state machine.
//!
//! `Dht` is a client (iterative find_node / get_peers lookups, announce_peer, bootstrap,
//! bucket refresh, pings of questionable nodes) and a server (answers ping, find_node,
//! get_peers and announce_peer, stores announced peers). It never touches a socket or the
//! clock: the event loop feeds it datagrams (`handle_datagram`) and time (`handle_timeout`,
//! `poll_at`), and drains datagrams to send (`poll_transmit`) and results (`poll_event`).
//! All state is bounded: routing tables (`max_nodes`), pending queries, lookups, candidates
//! per lookup, the peer store and the queues. Answers are rate-limited and never larger than
//! 1024 bytes (BEP 32 "Maximum packet size"), so we cannot be used as an amplifier.
//! KRPC datagrams start with `d`; the event loop demultiplexes them from UDP tracker replies.

pub mod krpc;
pub mod lookup;
pub mod routing;

pub use krpc::{NodeId, NodeInfo};

use crate::hash::Sha1;
use crate::rng::Rng;
use crate::time::Instant;
use krpc::{Body, KrpcError, Msg, Query, Response, Want};
use lookup::Search;
use routing::{Insert, Table, K};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// How long we wait for an answer before counting a query as failed. Real RTTs are well
/// under a second; BEP 5 says "there is no retry", so a lost packet costs one timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Most queries awaiting an answer; bounds the transaction map and our outgoing burst.
pub const MAX_PENDING: usize = 256;
/// How often timers (secret rotation, refresh, pings, bootstrap retries) are checked.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(5);
/// BEP 5: the token secret "changes every five minutes"; the previous one is still accepted,
/// so tokens live 5-10 minutes.
pub const SECRET_ROTATION: Duration = Duration::from_secs(5 * 60);
/// How long an announced peer is kept without a re-announce (BEP 5 leaves it open; clients
/// re-announce every 15-30 minutes).
pub const PEER_TTL: Duration = Duration::from_secs(30 * 60);
/// Largest answer we send (BEP 32: "must not send UDP datagrams with a payload larger than
/// 1024 octets").
pub const MAX_REPLY_LEN: usize = 1024;
/// Bytes of SHA-1 kept as a write token: short, and 64 bits cannot be guessed.
pub const TOKEN_LEN: usize = 8;
/// Datagrams queued for sending; beyond this new ones are dropped (the caller is not
/// draining, so answers would be stale anyway).
pub const MAX_QUEUE: usize = 1024;
/// Events queued for the caller.
pub const MAX_EVENTS: usize = 1024;
/// Questionable nodes pinged per maintenance tick per family.
pub const PINGS_PER_TICK: usize = 4;
/// Stale buckets refreshed per maintenance tick per family.
pub const REFRESH_PER_TICK: usize = 2;
/// Retry the bootstrap this often while the routing table is empty.
pub const BOOTSTRAP_RETRY: Duration = Duration::from_secs(30);
/// Distinct peers reported per lookup.
pub const MAX_LOOKUP_PEERS: usize = 500;
/// Imported nodes kept for bootstrapping.
pub const MAX_IMPORT: usize = 512;
/// Bootstrap router addresses kept (the config allows 32 names, each giving a few addresses).
pub const MAX_BOOTSTRAP: usize = 128;
/// How often the peer store is swept for expired entries.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct Config {
    /// Cap of each routing table (one per address family).
    pub max_nodes: usize,
    /// Nodes asked to find_node(own id) while the table is empty (ids unknown).
    pub bootstrap: Vec<SocketAddr>,
    /// Answers per second (token bucket, burst of one second).
    pub replies_per_sec: u32,
    /// Info-hashes kept in the peer store.
    pub max_info_hashes: usize,
    /// Peers kept per info-hash.
    pub max_peers_per_hash: usize,
    /// Concurrent lookups (user and internal).
    pub max_lookups: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_nodes: 400,
            bootstrap: Vec::new(),
            replies_per_sec: 250,
            max_info_hashes: 1000,
            max_peers_per_hash: 100,
            max_lookups: 16,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LookupId(pub u64);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DhtEvent {
    /// New peers for a get_peers / announce lookup (deduplicated within the lookup).
    Peers {
        lookup: LookupId,
        info_hash: NodeId,
        peers: Vec<SocketAddr>,
    },
    /// A lookup ended. `closest` are the (up to K) closest nodes that answered, per family.
    LookupDone {
        lookup: LookupId,
        target: NodeId,
        closest: Vec<NodeInfo>,
        rounds: u32,
        messages: u32,
        announced: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DhtError {
    TooManyLookups(usize),
}

impl fmt::Display for DhtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DhtError::TooManyLookups(n) => write!(f, "dht: {n} lookups already running"),
        }
    }
}

impl std::error::Error for DhtError {}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DhtStats {
    pub nodes_v4: usize,
    pub nodes_v6: usize,
    pub good: usize,
    pub questionable: usize,
    pub lookups: usize,
    pub pending: usize,
    pub stored_hashes: usize,
    pub stored_peers: usize,
    pub queries_sent: u64,
    pub replies_sent: u64,
    pub replies_dropped: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    FindNode,
    GetPeers,
    Announce { port: u16, implied_port: bool },
}

struct Lookup {
    id: LookupId,
    target: NodeId,
    kind: Kind,
    /// (family index, search); one per family with nodes.
    searches: Vec<(usize, Search)>,
    /// Started by the caller (events) rather than by maintenance.
    user: bool,
    peers: Vec<SocketAddr>,
}

#[derive(Clone, Copy, Debug)]
enum Purpose {
    Ping,
    Lookup {
        lookup: LookupId,
        fam: usize,
        seed: bool,
    },
    Announce,
}

#[derive(Clone, Debug)]
struct Pending {
    addr: SocketAddr,
    id: Option<NodeId>,
    deadline: Instant,
    purpose: Purpose,
}

struct Stored {
    addr: SocketAddr,
    at: Instant,
}

pub struct Dht {
    own: NodeId,
    cfg: Config,
    /// Index 0: IPv4, index 1: IPv6 (BEP 32: "two distinct routing tables").
    tables: [Table; 2],
    rng: Rng,
    pending: HashMap<u16, Pending>,
    lookups: Vec<Lookup>,
    next_lookup: u64,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<DhtEvent>,
    secret: [u8; 16],
    prev_secret: [u8; 16],
    next_rotate: Instant,
    store: HashMap<NodeId, Vec<Stored>>,
    next_purge: Instant,
    reply_budget_milli: u64,
    last_refill: Instant,
    next_maintenance: Instant,
    bootstrap_lookup: Option<LookupId>,
    bootstrapped: bool,
    last_bootstrap: Option<Instant>,
    imported: Vec<NodeInfo>,
    stats: DhtStats,
}

fn fam(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 0,
        SocketAddr::V6(_) => 1,
    }
}

/// A dual-stack socket reports IPv4 senders as `::ffff:a.b.c.d`; they belong to the IPv4 DHT.
fn normalize(addr: SocketAddr) -> SocketAddr {
    if let SocketAddr::V6(a) = addr {
        if let Some(v4) = a.ip().to_ipv4_mapped() {
            return SocketAddr::from((v4, a.port()));
        }
    }
    addr
}

fn usable(addr: &SocketAddr) -> bool {
    addr.port() != 0 && !addr.ip().is_unspecified() && !addr.ip().is_multicast()
}

impl Dht {
    pub fn new(own: NodeId, now: Instant, cfg: Config, mut rng: Rng) -> Dht {
        let mut secret = [0u8; 16];
        rng.fill(&mut secret);
        let mut prev_secret = [0u8; 16];
        rng.fill(&mut prev_secret);
        let max = cfg.max_nodes;
        let budget = u64::from(cfg.replies_per_sec).saturating_mul(1000);
        Dht {
            own,
            tables: [Table::new(own, max, now), Table::new(own, max, now)],
            rng,
            pending: HashMap::new(),
            lookups: Vec::new(),
            next_lookup: 1,
            out: VecDeque::new(),
            events: VecDeque::new(),
            secret,
            prev_secret,
            next_rotate: now + SECRET_ROTATION,
            store: HashMap::new(),
            next_purge: now + PURGE_INTERVAL,
            reply_budget_milli: budget,
            last_refill: now,
            next_maintenance: now,
            bootstrap_lookup: None,
            bootstrapped: false,
            last_bootstrap: None,
            imported: Vec::new(),
            stats: DhtStats::default(),
            cfg,
        }
    }

    pub fn id(&self) -> &NodeId {
        &self.own
    }

    /// The routing table of one family (for inspection and tests).
    pub fn table(&self, v6: bool) -> &Table {
        &self.tables[usize::from(v6)]
    }

    pub fn stats(&self, now: Instant) -> DhtStats {
        let mut s = self.stats;
        s.nodes_v4 = self.tables[0].len();
        s.nodes_v6 = self.tables[1].len();
        for t in &self.tables {
            let (g, q, _) = t.health(now);
            s.good += g;
            s.questionable += q;
        }
        s.lookups = self.lookups.len();
        s.pending = self.pending.len();
        s.stored_hashes = self.store.len();
        s.stored_peers = self.store.values().map(Vec::len).sum();
        s
    }

    /// Next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<DhtEvent> {
        self.events.pop_front()
    }

    /// When `handle_timeout` should next be called.
    pub fn poll_at(&self) -> Instant {
        self.pending
            .values()
            .map(|p| p.deadline)
            .fold(self.next_maintenance, Instant::min)
    }

    /// Nodes worth saving for the next start (the integrator writes them to a file).
    pub fn export_nodes(&self) -> Vec<NodeInfo> {
        self.tables
            .iter()
            .flat_map(|t| t.nodes())
            .filter(|n| n.fails == 0)
            .map(|n| n.info())
            .collect()
    }

    /// Nodes saved by a previous run: used as lookup seeds while the table is empty.
    pub fn import_nodes(&mut self, now: Instant, nodes: &[NodeInfo]) {
        for n in nodes {
            if self.imported.len() >= MAX_IMPORT {
                break;
            }
            if usable(&n.addr) && n.id != self.own {
                self.imported.push(NodeInfo {
                    id: n.id,
                    addr: normalize(n.addr),
                });
            }
        }
        self.bootstrapped = false;
        self.last_bootstrap = None;
        self.next_maintenance = self.next_maintenance.min(now);
    }

    /// A bootstrap router whose address became known after start (its host name was
    /// resolved): while the table is empty it is asked at the next maintenance, not after
    /// the bootstrap retry interval.
    pub fn add_bootstrap(&mut self, now: Instant, addr: SocketAddr) {
        if self.cfg.bootstrap.len() >= MAX_BOOTSTRAP || self.cfg.bootstrap.contains(&addr) {
            return;
        }
        self.cfg.bootstrap.push(addr);
        self.last_bootstrap = None;
        self.next_maintenance = self.next_maintenance.min(now);
    }

    /// Starts an iterative get_peers lookup; peers arrive as `DhtEvent::Peers`.
    pub fn get_peers(&mut self, now: Instant, info_hash: NodeId) -> Result<LookupId, DhtError> {
        self.start_lookup(now, info_hash, Kind::GetPeers, true)
    }

    /// get_peers, then announce_peer to the K closest nodes that gave a token. With
    /// `port == 0` the nodes use our UDP source port (BEP 5 `implied_port`).
    pub fn announce(
        &mut self,
        now: Instant,
        info_hash: NodeId,
        port: u16,
    ) -> Result<LookupId, DhtError> {
        let kind = Kind::Announce {
            port,
            implied_port: port == 0,
        };
        self.start_lookup(now, info_hash, kind, true)
    }

    /// An iterative find_node lookup (BEP 5); the result is in `DhtEvent::LookupDone`.
    pub fn find_node(&mut self, now: Instant, target: NodeId) -> Result<LookupId, DhtError> {
        self.start_lookup(now, target, Kind::FindNode, true)
    }

    /// Handles one received datagram. Errors are for logging only; the state is unchanged.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), KrpcError> {
        let from = normalize(from);
        if !usable(&from) {
            return Ok(());
        }
        let msg = krpc::parse(bytes)?;
        match msg.body {
            Body::Query(q) => self.on_query(now, from, msg.tid, q),
            Body::Response(r) => self.on_response(now, from, &msg.tid, r),
            Body::Error { .. } => self.on_error(from, &msg.tid),
        }
        self.drive(now);
        Ok(())
    }

    /// Expires queries, runs maintenance and advances lookups.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<u16> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for tid in expired {
            if let Some(p) = self.pending.remove(&tid) {
                self.on_timeout(now, p);
            }
        }
        if now >= self.next_maintenance {
            self.next_maintenance = now + MAINTENANCE_INTERVAL;
            self.maintenance(now);
        }
        self.drive(now);
    }

    // ---- client side ----

    fn start_lookup(
        &mut self,
        now: Instant,
        target: NodeId,
        kind: Kind,
        user: bool,
    ) -> Result<LookupId, DhtError> {
        if self.lookups.len() >= self.cfg.max_lookups {
            return Err(DhtError::TooManyLookups(self.lookups.len()));
        }
        let id = LookupId(self.next_lookup);
        self.next_lookup = self.next_lookup.saturating_add(1);
        let mut searches = Vec::new();
        for f in 0..2 {
            let mut s = Search::new(self.own, target);
            for n in self.tables[f].closest(&target, lookup::MAX_CANDIDATES, now) {
                s.add(n, 0);
            }
            if s.cands.is_empty() {
                for n in self.imported.iter().filter(|n| fam(&n.addr) == f) {
                    s.add(*n, 0);
                }
            }
            searches.push((f, s));
        }
        let mut l = Lookup {
            id,
            target,
            kind,
            searches,
            user,
            peers: Vec::new(),
        };
        // Empty table: ask the bootstrap routers, whose ids we do not know.
        if l.searches.iter().all(|(_, s)| s.cands.is_empty()) {
            let boot: Vec<SocketAddr> = self
                .cfg
                .bootstrap
                .iter()
                .map(|a| normalize(*a))
                .filter(usable)
                .take(lookup::MAX_SEEDS)
                .collect();
            for addr in boot {
                let f = fam(&addr);
                let q = self.lookup_query(kind, target);
                let purpose = Purpose::Lookup {
                    lookup: id,
                    fam: f,
                    seed: true,
                };
                if self.send_query(now, addr, None, q, purpose) {
                    if let Some((_, s)) = l.searches.iter_mut().find(|(x, _)| *x == f) {
                        s.seeds_in_flight += 1;
                        s.messages = s.messages.saturating_add(1);
                    }
                }
            }
        }
        // A family with nothing to ask is dropped.
        l.searches
            .retain(|(_, s)| !s.cands.is_empty() || s.seeds_in_flight > 0);
        self.lookups.push(l);
        self.drive(now);
        Ok(id)
    }

    fn lookup_query(&self, kind: Kind, target: NodeId) -> Query {
        match kind {
            Kind::FindNode => Query::FindNode {
                id: self.own,
                target,
                want: None,
            },
            Kind::GetPeers | Kind::Announce { .. } => Query::GetPeers {
                id: self.own,
                info_hash: target,
                want: None,
            },
        }
    }

    fn new_tid(&mut self) -> Option<u16> {
        for _ in 0..16 {
            let t = self.rng.next_u32() as u16;
            if !self.pending.contains_key(&t) {
                return Some(t);
            }
        }
        None
    }

    fn send_query(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        id: Option<NodeId>,
        q: Query,
        purpose: Purpose,
    ) -> bool {
        if self.pending.len() >= MAX_PENDING || self.out.len() >= MAX_QUEUE {
            return false;
        }
        let Some(tid) = self.new_tid() else {
            return false;
        };
        let msg = Msg {
            tid: tid.to_be_bytes().to_vec(),
            body: Body::Query(q),
        };
        let mut buf = Vec::with_capacity(128);
        krpc::encode(&msg, &mut buf);
        self.out.push_back((addr, buf));
        self.pending.insert(
            tid,
            Pending {
                addr,
                id,
                deadline: now + REQUEST_TIMEOUT,
                purpose,
            },
        );
        self.stats.queries_sent += 1;
        true
    }

    fn send_ping(&mut self, now: Instant, n: NodeInfo) {
        let already = self
            .pending
            .values()
            .any(|p| p.addr == n.addr && matches!(p.purpose, Purpose::Ping));
        if !already {
            let q = Query::Ping { id: self.own };
            self.send_query(now, n.addr, Some(n.id), q, Purpose::Ping);
        }
    }

    fn take_pending(&mut self, from: SocketAddr, tid: &[u8]) -> Option<Pending> {
        let t = u16::from_be_bytes(tid.try_into().ok()?);
        // The answer must come from the address we asked (BEP 5 ties transactions to nodes).
        if self.pending.get(&t)?.addr != from {
            return None;
        }
        self.pending.remove(&t)
    }

    fn on_response(&mut self, now: Instant, from: SocketAddr, tid: &[u8], r: Response) {
        let Some(p) = self.take_pending(from, tid) else {
            return;
        };
        if r.id == self.own {
            return;
        }
        let f = fam(&from);
        if let Insert::Full { ping: Some(n) } = self.tables[f].on_response(now, &r.id, from) {
            self.send_ping(now, n);
        }
        let Purpose::Lookup {
            lookup: lid,
            fam: sf,
            seed,
        } = p.purpose
        else {
            return;
        };
        let Some(l) = self.lookups.iter_mut().find(|l| l.id == lid) else {
            return;
        };
        let nodes: Vec<NodeInfo> = if sf == 0 { &r.nodes } else { &r.nodes6 }
            .iter()
            .filter(|n| usable(&n.addr) && fam(&n.addr) == sf)
            .copied()
            .collect();
        if let Some((_, s)) = l.searches.iter_mut().find(|(x, _)| *x == sf) {
            if seed {
                s.seeds_in_flight = s.seeds_in_flight.saturating_sub(1);
            }
            s.on_response(
                NodeInfo {
                    id: r.id,
                    addr: from,
                },
                r.token,
                &nodes,
            );
        }
        if l.kind != Kind::FindNode && !r.values.is_empty() {
            let mut fresh = Vec::new();
            for v in r.values.iter().filter(|v| usable(v)) {
                if l.peers.len() >= MAX_LOOKUP_PEERS {
                    break;
                }
                if !l.peers.contains(v) {
                    l.peers.push(*v);
                    fresh.push(*v);
                }
            }
            if !fresh.is_empty() && l.user && self.events.len() < MAX_EVENTS {
                self.events.push_back(DhtEvent::Peers {
                    lookup: lid,
                    info_hash: l.target,
                    peers: fresh,
                });
            }
        }
    }

    fn on_error(&mut self, from: SocketAddr, tid: &[u8]) {
        // It answered, so it is alive; it just has nothing for this lookup.
        if let Some(p) = self.take_pending(from, tid) {
            self.lookup_failed(&p);
        }
    }

    fn on_timeout(&mut self, now: Instant, p: Pending) {
        if let Some(id) = p.id {
            self.tables[fam(&p.addr)].on_failure(now, &id, p.addr);
        }
        self.lookup_failed(&p);
    }

    fn lookup_failed(&mut self, p: &Pending) {
        let Purpose::Lookup { lookup, fam, seed } = p.purpose else {
            return;
        };
        let Some(l) = self.lookups.iter_mut().find(|l| l.id == lookup) else {
            return;
        };
        if let Some((_, s)) = l.searches.iter_mut().find(|(x, _)| *x == fam) {
            if seed {
                s.seeds_in_flight = s.seeds_in_flight.saturating_sub(1);
            } else {
                s.on_failure(&p.addr);
            }
        }
    }

    /// Sends the next queries of every lookup and finishes the lookups that are done.
    fn drive(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.lookups.len() {
            let mut room = MAX_PENDING
                .saturating_sub(self.pending.len())
                .min(MAX_QUEUE.saturating_sub(self.out.len()));
            let mut sends = Vec::new();
            let Some(l) = self.lookups.get_mut(i) else {
                break;
            };
            for (f, s) in l.searches.iter_mut() {
                while room > 0 {
                    let Some(n) = s.next_query() else {
                        break;
                    };
                    room -= 1;
                    sends.push((*f, n));
                }
            }
            let (lid, kind, target) = (l.id, l.kind, l.target);
            for (f, n) in sends {
                let q = self.lookup_query(kind, target);
                let purpose = Purpose::Lookup {
                    lookup: lid,
                    fam: f,
                    seed: false,
                };
                self.send_query(now, n.addr, Some(n.id), q, purpose);
            }
            let done = self
                .lookups
                .get(i)
                .is_some_and(|l| l.searches.iter().all(|(_, s)| s.is_done()));
            if done {
                let l = self.lookups.swap_remove(i);
                self.finish(now, l);
            } else {
                i += 1;
            }
        }
    }

    fn finish(&mut self, now: Instant, l: Lookup) {
        let mut closest = Vec::new();
        let mut rounds = 0;
        let mut messages = 0u32;
        let mut announced = 0u32;
        let mut announces = Vec::new();
        for (_, s) in &l.searches {
            rounds = rounds.max(s.rounds());
            messages = messages.saturating_add(s.messages);
            for c in s.closest_responded() {
                closest.push(c.info);
                if let (Kind::Announce { .. }, Some(t)) = (l.kind, &c.token) {
                    announces.push((c.info, t.clone()));
                }
            }
        }
        if let Kind::Announce { port, implied_port } = l.kind {
            for (n, token) in announces {
                let q = Query::AnnouncePeer {
                    id: self.own,
                    info_hash: l.target,
                    port,
                    implied_port,
                    token,
                };
                if self.send_query(now, n.addr, Some(n.id), q, Purpose::Announce) {
                    announced += 1;
                    messages = messages.saturating_add(1);
                }
            }
        }
        if self.bootstrap_lookup == Some(l.id) {
            self.bootstrap_lookup = None;
            self.bootstrapped = !closest.is_empty();
        }
        if l.user && self.events.len() < MAX_EVENTS {
            self.events.push_back(DhtEvent::LookupDone {
                lookup: l.id,
                target: l.target,
                closest,
                rounds,
                messages,
                announced,
            });
        }
    }

    fn maintenance(&mut self, now: Instant) {
        if now >= self.next_rotate {
            self.prev_secret = self.secret;
            self.rng.fill(&mut self.secret);
            self.next_rotate = now + SECRET_ROTATION;
        }
        if now >= self.next_purge {
            self.next_purge = now + PURGE_INTERVAL;
            self.store.retain(|_, peers| {
                peers.retain(|p| now.since(p.at) < PEER_TTL);
                !peers.is_empty()
            });
        }
        let empty = self.tables.iter().all(Table::is_empty);
        let retry = self
            .last_bootstrap
            .map_or(true, |t| now.since(t) >= BOOTSTRAP_RETRY);
        // BEP 5: on start (and while empty) find the nodes closest to ourselves.
        if self.bootstrap_lookup.is_none() && (!self.bootstrapped || empty) && retry {
            self.last_bootstrap = Some(now);
            if let Ok(id) = self.start_lookup(now, self.own, Kind::FindNode, false) {
                // With nothing to ask (no router known yet) the lookup has already finished;
                // remembering it would block every later bootstrap.
                if self.lookups.iter().any(|l| l.id == id) {
                    self.bootstrap_lookup = Some(id);
                }
            }
        }
        // Refresh stale buckets, keeping half the lookup slots for the caller.
        for f in 0..2 {
            if self.tables[f].is_empty() {
                continue;
            }
            for n in self.tables[f].take_questionable(now, PINGS_PER_TICK) {
                self.send_ping(now, n);
            }
            let free = (self.cfg.max_lookups / 2).saturating_sub(self.lookups.len());
            let targets =
                self.tables[f].refresh_targets(now, &mut self.rng, free.min(REFRESH_PER_TICK));
            for t in targets {
                let _ = self.start_lookup(now, t, Kind::FindNode, false);
            }
        }
    }

    // ---- server side ----

    fn token_for(secret: &[u8; 16], ip: &IpAddr) -> Vec<u8> {
        let mut h = Sha1::new();
        h.update(secret);
        match ip {
            IpAddr::V4(a) => h.update(&a.octets()),
            IpAddr::V6(a) => h.update(&a.octets()),
        }
        h.finish().get(..TOKEN_LEN).unwrap_or_default().to_vec()
    }

    fn token_ok(&self, token: &[u8], ip: &IpAddr) -> bool {
        token == Self::token_for(&self.secret, ip).as_slice()
            || token == Self::token_for(&self.prev_secret, ip).as_slice()
    }

    fn take_reply_budget(&mut self, now: Instant) -> bool {
        let rate = u64::from(self.cfg.replies_per_sec);
        let cap = rate.saturating_mul(1000);
        let elapsed = now
            .since(self.last_refill)
            .as_millis()
            .min(u128::from(u64::MAX)) as u64;
        self.last_refill = now;
        self.reply_budget_milli = self
            .reply_budget_milli
            .saturating_add(elapsed.saturating_mul(rate))
            .min(cap);
        if self.reply_budget_milli >= 1000 {
            self.reply_budget_milli -= 1000;
            true
        } else {
            false
        }
    }

    /// The nodes to put in an answer: BEP 32 `want`, or the requester's own family.
    fn reply_nodes(
        &self,
        now: Instant,
        target: &NodeId,
        from: &SocketAddr,
        want: Option<Want>,
        r: &mut Response,
    ) {
        let want = want.unwrap_or(Want {
            n4: fam(from) == 0,
            n6: fam(from) == 1,
        });
        if want.n4 {
            r.nodes = self.tables[0].closest(target, K, now);
        }
        if want.n6 {
            r.nodes6 = self.tables[1].closest(target, K, now);
        }
    }

    fn on_query(&mut self, now: Instant, from: SocketAddr, tid: Vec<u8>, q: Query) {
        let id = *q.id();
        if id == self.own {
            return;
        }
        let f = fam(&from);
        // BEP 5: a querying node is only added once it answers one of our queries.
        if !self.tables[f].on_query(now, &id, from) && self.tables[f].would_accept(&id, now) {
            self.send_ping(now, NodeInfo { id, addr: from });
        }
        if self.out.len() >= MAX_QUEUE || !self.take_reply_budget(now) {
            self.stats.replies_dropped += 1;
            return;
        }
        let mut r = Response {
            id: self.own,
            ..Response::default()
        };
        let body = match q {
            Query::Ping { .. } => Body::Response(r),
            Query::FindNode { target, want, .. } => {
                self.reply_nodes(now, &target, &from, want, &mut r);
                Body::Response(r)
            }
            Query::GetPeers {
                info_hash, want, ..
            } => {
                self.reply_nodes(now, &info_hash, &from, want, &mut r);
                r.token = Some(Self::token_for(&self.secret, &from.ip()));
                self.fill_values(&info_hash, f, &tid, &mut r);
                Body::Response(r)
            }
            Query::AnnouncePeer {
                info_hash,
                port,
                implied_port,
                token,
                ..
            } => {
                if self.token_ok(&token, &from.ip()) {
                    let port = if implied_port { from.port() } else { port };
                    self.store_peer(now, info_hash, SocketAddr::new(from.ip(), port));
                    Body::Response(r)
                } else {
                    Body::Error {
                        code: krpc::ERR_PROTOCOL,
                        message: "bad token".into(),
                    }
                }
            }
            Query::Unknown { .. } => Body::Error {
                code: krpc::ERR_METHOD_UNKNOWN,
                message: "method unknown".into(),
            },
        };
        let mut buf = Vec::with_capacity(256);
        krpc::encode(&Msg { tid, body }, &mut buf);
        if buf.len() <= MAX_REPLY_LEN {
            self.out.push_back((from, buf));
            self.stats.replies_sent += 1;
        }
    }

    /// Adds stored peers of the requester's family to `r`, as many as fit in MAX_REPLY_LEN.
    fn fill_values(&mut self, info_hash: &NodeId, f: usize, tid: &[u8], r: &mut Response) {
        let Some(peers) = self.store.get(info_hash) else {
            return;
        };
        // BEP 32: values only in the family the request came over.
        let mut mine: Vec<SocketAddr> = peers
            .iter()
            .map(|p| p.addr)
            .filter(|a| fam(a) == f)
            .collect();
        if mine.is_empty() {
            return;
        }
        let mut probe = Vec::with_capacity(512);
        krpc::encode(
            &Msg {
                tid: tid.to_vec(),
                body: Body::Response(r.clone()),
            },
            &mut probe,
        );
        // "6:values" + "l" + "e", and per value its length prefix plus compact bytes.
        let per = if f == 0 { 2 + 6 } else { 3 + 18 };
        let room = MAX_REPLY_LEN.saturating_sub(probe.len() + 10) / per;
        if mine.len() > room {
            self.rng.shuffle(&mut mine);
            mine.truncate(room);
        }
        r.values = mine;
    }

    fn store_peer(&mut self, now: Instant, info_hash: NodeId, addr: SocketAddr) {
        if !self.store.contains_key(&info_hash) && self.store.len() >= self.cfg.max_info_hashes {
            return;
        }
        let peers = self.store.entry(info_hash).or_default();
        if let Some(p) = peers.iter_mut().find(|p| p.addr == addr) {
            p.at = now;
            return;
        }
        if peers.len() >= self.cfg.max_peers_per_hash {
            if let Some(oldest) = peers.iter_mut().min_by_key(|p| p.at) {
                *oldest = Stored { addr, at: now };
            }
            return;
        }
        peers.push(Stored { addr, at: now });
    }
}

/// Encodes nodes for the state file: a bencoded dictionary with compact `nodes` (26-byte)
/// and `nodes6` (38-byte) strings, the same encodings as on the wire.
pub fn save_nodes(nodes: &[NodeInfo]) -> Vec<u8> {
    let (v4, v6): (Vec<NodeInfo>, Vec<NodeInfo>) = nodes
        .iter()
        .take(MAX_IMPORT)
        .partition(|n| fam(&n.addr) == 0);
    let mut b4 = Vec::new();
    krpc::put_nodes(&mut b4, &v4);
    let mut b6 = Vec::new();
    krpc::put_nodes(&mut b6, &v6);
    let mut out = Vec::with_capacity(b4.len() + b6.len() + 32);
    out.push(b'd');
    crate::bencode::put_kv_bytes(&mut out, "nodes", &b4);
    crate::bencode::put_kv_bytes(&mut out, "nodes6", &b6);
    out.push(b'e');
    out
}

/// Decodes a state file written by `save_nodes`; at most `MAX_IMPORT` nodes, malformed input
/// gives an empty list (the DHT then bootstraps from the routers).
pub fn load_nodes(buf: &[u8]) -> Vec<NodeInfo> {
    let Ok(v) = crate::bencode::decode(buf) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, size) in [
        (&b"nodes"[..], krpc::COMPACT_NODE_V4),
        (&b"nodes6"[..], krpc::COMPACT_NODE_V6),
    ] {
        let Some(b) = v.get(key).and_then(|x| x.as_bytes()) else {
            continue;
        };
        for chunk in b.chunks_exact(size) {
            if out.len() >= MAX_IMPORT {
                break;
            }
            let id: Option<NodeId> = chunk.get(..20).and_then(|x| x.try_into().ok());
            let addr = chunk.get(20..).and_then(krpc::decode_peer);
            if let (Some(id), Some(addr)) = (id, addr) {
                out.push(NodeInfo { id, addr });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
