//! Layer 3: the event loop. The only owner of mio, of every socket and of the clock.
//!
//! One thread, one `mio::Poll`. Each turn: read the clock, wait for readiness (at most until
//! the next one-second tick), move bytes between sockets and the pure state machines
//! (`torrent`, `announce`, the tracker and DNS codecs), then write what they produced.
//!
//! Rules followed (mio's own): sockets are edge-triggered, so every read and write drains to
//! `WouldBlock`; a peer whose read budget ran out is remembered in `again` and serviced on
//! the next turn without waiting for an event; spurious events are harmless; events for a
//! slot whose generation changed are ignored. Peer connections come from a fixed pool of
//! `max_connections` slots whose buffers were allocated at start.
//!
//! Tokens: `kind << 28 | generation (12 bits) << 16 | slot index (16 bits)`, which fits a
//! 32-bit `usize` on the ARM and MIPS targets.

use std::io::{self, IsTerminal, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token};

use crate::announce::{Announcer, Job, Reply};
use crate::config::Encryption;
use crate::dht::{self as dhtmod, Dht, DhtEvent};
use crate::dns;
use crate::fetch::Fetch;
use crate::magnet::Magnet;
use crate::metainfo::{FileEntry, Metainfo};
use crate::mse::{self, CryptoSet};
use crate::net;
use crate::peer::{CloseReason, PeerConn, Phase, HANDSHAKE_TIMEOUT};
use crate::pool::{Handle, Slots};
use crate::ratelimit::{Limiter, TokenBucket};
use crate::storage::{DirectIo, MemStore, Storage};
use crate::time::Instant;
use crate::torrent::{Buffers, Event as TorrentEvent, State, Torrent};
use crate::tracker::{self, Announce, Event as TrackerEvent, Scheme, Url};
use crate::udp_tracker::{
    self, AnnounceParams, ConnCache, Outcome as UdpOutcome, RetryConfig, UdpAnnounce,
};
use crate::wire::{self, Handshake};

mod bootstrap;
mod daemon;
pub use daemon::{run_daemon, DaemonSettings};

const KIND_LISTENER: usize = 1;
const KIND_PEER: usize = 2;
const KIND_TRACKER: usize = 3;
const KIND_UDP: usize = 4;
const KIND_SIGNAL: usize = 5;
const KIND_CTL_LISTENER: usize = 6;
const KIND_CTL: usize = 7;
/// The shared UDP socket (DHT and UDP trackers, demultiplexed on the first byte).
const KIND_UDP_MAIN: usize = 8;

/// Most bytes read from one peer per turn before the others get a go.
const READ_BUDGET: usize = 1 << 20;
/// Descriptors kept free for everything but peers and data files: listeners, UDP sockets,
/// signal pipe, lock and log files, the control listener and its clients.
const FD_RESERVE: usize = 16;
/// Datagrams read from the shared UDP socket per readiness event before other work.
const UDP_READ_BUDGET: usize = 256;
/// DHT datagrams sent per loop turn (the DHT queues the rest).
const DHT_SEND_BUDGET: usize = 64;
const DHT_ANNOUNCE_DOWNLOADING: Duration = Duration::from_secs(300);
const DHT_ANNOUNCE_SEEDING: Duration = Duration::from_secs(900);
const DHT_RETRY_EMPTY: Duration = Duration::from_secs(15);
/// Scrapes (swarm counts for `status`) at most this often per torrent.
const SCRAPE_INTERVAL: Duration = Duration::from_secs(600);
/// Fill-and-write rounds per peer per turn (each round sends up to one buffer).
const WRITE_ROUNDS: usize = 32;
/// Outgoing TCP connects that take longer than this are abandoned.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Whole tracker exchange (resolve, connect, request, response).
const TRACKER_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest tracker response kept (a compact reply with 1000 peers is about 6 KiB).
const MAX_TRACKER_RESPONSE: usize = 512 * 1024;
/// Concurrent tracker exchanges.
const MAX_TRACKER_CONNS: usize = 16;
/// How long shutdown waits for `stopped` announces.
const STOP_ANNOUNCE_WAIT: Duration = Duration::from_secs(3);
/// Peers asked of a tracker per announce.
const NUMWANT: u32 = 80;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// One live line rewritten in place.
    Tty,
    /// A plain line every few seconds.
    Lines,
    Quiet,
}

pub struct Options {
    pub listen_port: u16,
    pub bind: Option<IpAddr>,
    pub enable_ipv6: bool,
    pub max_connections: usize,
    pub max_half_open: usize,
    pub peer_buffer_size: usize,
    /// 256 KiB assembly chunks shared by all torrents.
    pub chunks: usize,
    /// Write completed chunks through kernel AIO where the kernel and file system allow.
    pub async_io: bool,
    /// Keep running and seeding once complete.
    pub seed: bool,
    /// MSE/PE: off (plaintext only), prefer (try encrypted, fall back), require.
    pub encryption: Encryption,
    /// Global rate limits in bytes/s (None = unlimited), counting every byte on peer sockets.
    pub down_limit: Option<u64>,
    pub up_limit: Option<u64>,
    /// Alternative limits and when they apply (`alt_limits`, `alt_schedule`).
    pub alt_limits: Option<(Option<u64>, Option<u64>, crate::config::Schedule)>,
    /// Seeding stops at this upload/size ratio (0 = never) or after this many seconds.
    pub seed_ratio: f64,
    pub seed_time: u64,
    pub progress: Progress,
    /// UDP port shared by the DHT and UDP trackers (0 = any).
    pub dht_port: u16,
    /// DHT on, with these bootstrap addresses, host names (resolved inside the loop) and
    /// table cap.
    pub enable_dht: bool,
    pub dht_bootstrap: Vec<SocketAddr>,
    pub dht_bootstrap_names: Vec<(String, u16)>,
    pub dht_max_nodes: usize,
    /// Where the DHT routing table is saved between runs (daemon).
    pub dht_state: Option<std::path::PathBuf>,
    /// Storage settings for torrents the engine creates itself (magnets, daemon).
    pub direct_io: DirectIo,
    pub max_open_files: usize,
    /// Settings for torrents the engine creates itself.
    pub upload_slots: usize,
    pub max_known_peers: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Complete,
    Interrupted,
    Failed(String),
}

struct TrackerConn {
    torrent: usize,
    /// The BEP 15 exchange for a `udp://` tracker (no TCP stream then).
    udp: Option<UdpAnnounce>,
    /// A scrape (BEP 48 / BEP 15) rather than an announce: only fills in seeder counts.
    scrape: bool,
    /// BEP 7: the same announce over our other address family. Its peers are used, but the
    /// announce schedule follows the primary exchange only.
    secondary: bool,
    job: Job,
    url: Url,
    stream: Option<TcpStream>,
    dns_id: Option<u16>,
    dns_qtype: dns::QType,
    req: Vec<u8>,
    sent: usize,
    resp: Vec<u8>,
    deadline: Instant,
    redirects: u32,
}

impl TrackerConn {
    /// A tracker exchange (announce, or scrape with `scrape`) not yet resolved or connected.
    fn new(torrent: usize, job: Job, url: Url, scrape: bool, now: Instant) -> TrackerConn {
        TrackerConn {
            torrent,
            job,
            url,
            stream: None,
            dns_id: None,
            dns_qtype: dns::QType::A,
            req: Vec::new(),
            sent: 0,
            resp: Vec::new(),
            deadline: now + TRACKER_TIMEOUT,
            redirects: 0,
            udp: None,
            scrape,
            secondary: false,
        }
    }
}

struct Entry {
    /// Stable small integer shown to users (daemon); 1 in `download`.
    id: u32,
    t: Torrent,
    ann: Announcer,
    finished_reported: bool,
    dir: std::path::PathBuf,
    added_at: u64,
    completed_at: Option<u64>,
    /// Resume data is out of date.
    dirty: bool,
    last_saved: Instant,
    /// Next piece to verify while `t.state == Checking`.
    check_cursor: u32,
    /// Go to `Stopped` instead of `Queued` when checking ends (`start --paused`).
    paused: bool,
    /// Bytes counted in earlier sessions (from resume data), for status and ratio.
    base_downloaded: u64,
    base_uploaded: u64,
    /// Per-torrent rate limits (`atorrent limit ID --down/--up`), boxed because few torrents
    /// have one: `None` means both unlimited, and an unlimited bucket keeps no state that
    /// matters.
    limits: Option<Box<Limits>>,
    /// When this torrent started seeding (for `seed_time`).
    seeding_since: Option<Instant>,
    /// What few torrents have (notes, own seeding limits, a magnet's file selection), boxed
    /// so the many idle seeds of a daemon do not carry it; `None` when all of it is unset.
    extra: Option<Box<Extra>>,
    /// A magnet link still fetching its metadata (BEP 9): peers talk to this instead of `t`,
    /// which is a placeholder until the info dictionary arrives.
    fetch: Option<Box<Fetch>>,
    /// Next DHT announce (and peer lookup) for this torrent.
    dht_next: Instant,
    /// Last scrape sent for this torrent.
    scraped_at: Option<Instant>,
}

struct Limits {
    down: TokenBucket,
    up: TokenBucket,
}

#[derive(Default)]
struct Extra {
    /// Why the torrent stopped by itself (seeding limits), shown in `status`.
    note: Option<String>,
    /// Per-torrent seeding limits (`atorrent limit ID --ratio/--seed-time`) over the global.
    seed_ratio: Option<f64>,
    seed_time: Option<u64>,
    /// BEP 53 `so=` file selection from a magnet, applied once the metadata is in.
    select: Option<Vec<(u32, u32)>>,
}

impl Entry {
    /// This torrent's own upload (`up`) or download bucket, or `spare` (an unlimited bucket)
    /// when it has no limits.
    fn bucket<'a>(&'a mut self, up: bool, spare: &'a mut TokenBucket) -> &'a mut TokenBucket {
        match self.limits.as_deref_mut() {
            Some(l) if up => &mut l.up,
            Some(l) => &mut l.down,
            None => spare,
        }
    }

    /// Sets one direction's limit (`None`: unlimited); drops the box once neither is limited.
    fn set_limit(&mut self, now: Instant, up: bool, rate: Option<u64>) {
        if rate.is_none() && self.limits.is_none() {
            return;
        }
        let l = self.limits.get_or_insert_with(|| {
            Box::new(Limits {
                down: TokenBucket::unlimited(),
                up: TokenBucket::unlimited(),
            })
        });
        let b = if up { &mut l.up } else { &mut l.down };
        b.set_rate(now, rate, rate.map_or(0, crate::ratelimit::default_burst));
        if l.up.rate().is_none() && l.down.rate().is_none() {
            self.limits = None;
        }
    }

    fn limit_rate(&self, up: bool) -> Option<u64> {
        let l = self.limits.as_deref()?;
        if up {
            l.up.rate()
        } else {
            l.down.rate()
        }
    }

    /// The rare fields for writing; `set` is false for a value that is unset, which then
    /// needs no box.
    fn extra_mut(&mut self, set: bool) -> Option<&mut Extra> {
        if set {
            Some(self.extra.get_or_insert_with(Box::default))
        } else {
            self.extra.as_deref_mut()
        }
    }

    fn note(&self) -> Option<&String> {
        self.extra.as_ref().and_then(|x| x.note.as_ref())
    }

    fn set_note(&mut self, note: Option<String>) {
        if let Some(x) = self.extra_mut(note.is_some()) {
            x.note = note;
        }
    }

    fn seed_ratio(&self) -> Option<f64> {
        self.extra.as_ref().and_then(|x| x.seed_ratio)
    }

    fn set_seed_ratio(&mut self, ratio: Option<f64>) {
        if let Some(x) = self.extra_mut(ratio.is_some()) {
            x.seed_ratio = ratio;
        }
    }

    fn seed_time(&self) -> Option<u64> {
        self.extra.as_ref().and_then(|x| x.seed_time)
    }

    fn set_seed_time(&mut self, secs: Option<u64>) {
        if let Some(x) = self.extra_mut(secs.is_some()) {
            x.seed_time = secs;
        }
    }

    fn select(&self) -> Option<&[(u32, u32)]> {
        self.extra.as_ref().and_then(|x| x.select.as_deref())
    }

    fn set_select(&mut self, select: Option<Vec<(u32, u32)>>) {
        if let Some(x) = self.extra_mut(select.is_some()) {
            x.select = select;
        }
    }
}

pub struct Engine {
    poll: Poll,
    start: std::time::Instant,
    opts: Options,
    listeners: Vec<TcpListener>,
    udp: Option<UdpSocket>,
    signal_fd: Option<i32>,
    peers: Slots<PeerConn>,
    streams: Vec<Option<TcpStream>>,
    spare: Vec<PeerConn>,
    /// Peers with unread input left after their budget ran out.
    again: Vec<Handle>,
    /// The peer handles `after_io` walks each turn, kept so the loop allocates nothing.
    turn_handles: Vec<Handle>,
    trackers: Slots<TrackerConn>,
    resolvers: Vec<SocketAddr>,
    dns_next_id: u16,
    /// DHT bootstrap names waiting for their DNS answer.
    boot_names: Vec<bootstrap::BootName>,
    torrents: Vec<Entry>,
    /// The shared DHT/UDP-tracker sockets: [IPv4, IPv6].
    udp_main: [Option<UdpSocket>; 2],
    udp_cache: ConnCache,
    dht: Option<Dht>,
    down: Limiter,
    up: Limiter,
    /// Peers whose reads wait for download tokens, and when tokens return.
    throttled: Vec<Handle>,
    wake_at: Option<Instant>,
    alt_active: bool,
    bufs: Buffers,
    daemon: Option<daemon::DaemonState>,
    peer_id: [u8; 20],
    listen_port: u16,
    shutdown: Option<Instant>,
    /// New candidates arrived: dial them this turn rather than at the next tick.
    connect_soon: bool,
    outcome: Option<Outcome>,
    last_tick: Instant,
    last_progress: Instant,
    started_at: Instant,
    rng: crate::rng::Rng,
}

fn token(kind: usize, h: Handle) -> Token {
    Token(kind << 28 | ((h.gen as usize) & 0xfff) << 16 | (h.index as usize & 0xffff))
}

fn split(t: Token) -> (usize, u32, u32) {
    (
        t.0 >> 28,
        ((t.0 >> 16) & 0xfff) as u32,
        (t.0 & 0xffff) as u32,
    )
}

impl Engine {
    pub fn new(opts: Options) -> io::Result<Engine> {
        let poll = Poll::new()?;
        let mut seed = [0u8; 8];
        crate::sys::getrandom(&mut seed)?;
        let mut rng = crate::rng::Rng::new(u64::from_le_bytes(seed));
        let mut peer_id = [0u8; 20];
        peer_id[..8].copy_from_slice(b"-AT0100-");
        const ALNUM: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        for b in &mut peer_id[8..] {
            *b = ALNUM[rng.below(ALNUM.len())];
        }
        // Descriptors: raise the soft limit to the hard one, then keep a reserve for the
        // listeners, the control socket and its clients, trackers, DNS and data files, so
        // that peers can never starve the control socket (`ulimit -n 64` still answers).
        let nofile = crate::sys::raise_nofile_limit() as usize;
        let reserve = FD_RESERVE + opts.max_open_files.min(nofile / 4);
        let by_fds = if nofile == 0 {
            usize::MAX
        } else {
            nofile.saturating_sub(reserve).max(1)
        };
        if by_fds < opts.max_connections {
            warn!(
                "engine: open-file limit {nofile} allows only {by_fds} peer connections (max_connections {})",
                opts.max_connections
            );
        }
        let n = opts.max_connections.min(by_fds).clamp(1, 0xffff);
        let mut spare = Vec::with_capacity(n);
        for _ in 0..n {
            let mut p = PeerConn::with_buffers(opts.peer_buffer_size);
            p.commit();
            spare.push(p);
        }
        let mut e = Engine {
            poll,
            start: std::time::Instant::now(),
            listeners: Vec::new(),
            udp: None,
            signal_fd: None,
            peers: Slots::with_capacity(n),
            streams: (0..n).map(|_| None).collect(),
            spare,
            again: Vec::new(),
            turn_handles: Vec::new(),
            trackers: Slots::with_capacity(MAX_TRACKER_CONNS),
            resolvers: Vec::new(),
            dns_next_id: (rng.next_u32() & 0xffff) as u16,
            boot_names: Vec::new(),
            torrents: Vec::new(),
            udp_main: [None, None],
            udp_cache: ConnCache::new(),
            dht: None,
            down: Limiter::new(opts.down_limit),
            up: Limiter::new(opts.up_limit),
            throttled: Vec::new(),
            wake_at: None,
            alt_active: false,
            bufs: {
                let mut b = Buffers::with_aio(opts.chunks, opts.async_io);
                b.commit();
                b
            },
            daemon: None,
            peer_id,
            listen_port: opts.listen_port,
            shutdown: None,
            connect_soon: false,
            outcome: None,
            last_tick: Instant::ZERO,
            last_progress: Instant::ZERO,
            started_at: Instant::ZERO,
            rng,
            opts,
        };
        e.setup_listeners()?;
        e.setup_signals();
        e.setup_udp();
        Ok(e)
    }

    pub fn peer_id(&self) -> [u8; 20] {
        self.peer_id
    }

    pub fn listen_port(&self) -> u16 {
        self.listen_port
    }

    fn setup_listeners(&mut self) -> io::Result<()> {
        let mut addrs = Vec::new();
        match self.opts.bind {
            Some(ip) => addrs.push(SocketAddr::new(ip, self.opts.listen_port)),
            None => {
                addrs.push(SocketAddr::new(
                    net::unspecified(false),
                    self.opts.listen_port,
                ));
                if self.opts.enable_ipv6 {
                    addrs.push(SocketAddr::new(
                        net::unspecified(true),
                        self.opts.listen_port,
                    ));
                }
            }
        }
        for (i, mut addr) in addrs.into_iter().enumerate() {
            if self.listen_port != 0 {
                addr.set_port(self.listen_port);
            }
            match net::listen(addr) {
                Ok(mut l) => {
                    if self.listen_port == 0 {
                        self.listen_port = l.local_addr()?.port();
                    }
                    self.poll.registry().register(
                        &mut l,
                        Token(KIND_LISTENER << 28 | i),
                        Interest::READABLE,
                    )?;
                    info!("net: listening on {}", l.local_addr()?);
                    self.listeners.push(l);
                }
                Err(e) if i > 0 => {
                    info!("net: no IPv6 listener ({e}); continuing with IPv4 only");
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot listen on {addr}: {e}"),
                    ))
                }
            }
        }
        Ok(())
    }

    fn setup_signals(&mut self) {
        match crate::sys::signal_pipe() {
            Ok(fd) => {
                let r = self.poll.registry().register(
                    &mut mio::unix::SourceFd(&fd),
                    Token(KIND_SIGNAL << 28),
                    Interest::READABLE,
                );
                if r.is_ok() {
                    self.signal_fd = Some(fd);
                }
            }
            Err(e) => warn!("engine: signals not handled: {e}"),
        }
    }

    fn now(&self) -> Instant {
        Instant::from_millis(self.start.elapsed().as_millis() as u64)
    }

    pub fn add_torrent(&mut self, t: Torrent) -> usize {
        self.push_entry(t, 1, std::path::PathBuf::new())
    }

    fn push_entry(&mut self, t: Torrent, id: u32, dir: std::path::PathBuf) -> usize {
        let ann = Announcer::new(&t.meta.trackers, &mut self.rng);
        self.torrents.push(Entry {
            id,
            t,
            ann,
            finished_reported: false,
            dir,
            added_at: daemon::unix_now(),
            completed_at: None,
            dirty: false,
            last_saved: Instant::ZERO,
            check_cursor: 0,
            paused: false,
            base_downloaded: 0,
            base_uploaded: 0,
            limits: None,
            seeding_since: None,
            extra: None,
            fetch: None,
            dht_next: Instant::ZERO,
            scraped_at: None,
        });
        self.torrents.len() - 1
    }

    /// Chunk count of the shared pool (torrents size their partial-piece tables from it).
    pub fn chunks(&self) -> usize {
        self.bufs.pool.capacity()
    }

    pub fn all_complete(&self) -> bool {
        self.torrents.iter().all(|e| e.t.is_complete())
    }

    pub fn torrent_mut(&mut self, i: usize) -> Option<&mut Torrent> {
        self.torrents.get_mut(i).map(|e| &mut e.t)
    }

    /// Runs until every torrent is complete (without `seed`), a signal, or an error.
    pub fn run(&mut self) -> Outcome {
        let mut events = Events::with_capacity(256);
        self.started_at = self.now();
        self.report_initial_state();
        let now = self.now();
        self.last_tick = now;
        self.tick(now, Duration::from_secs(1));
        loop {
            let now = self.now();
            if let Some(o) = self.check_done(now) {
                self.print_progress(now, true);
                return o;
            }
            let next_tick = self.last_tick + Duration::from_secs(1);
            let checking = self.shutdown.is_none() && self.check_torrents();
            let timeout = if !self.again.is_empty() || checking {
                Duration::ZERO
            } else {
                let mut wake = self.wake_at.map_or(next_tick, |w| w.min(next_tick));
                if let Some(d) = &self.dht {
                    wake = wake.min(d.poll_at());
                }
                let mut t = wake.since(now).min(Duration::from_millis(1000));
                if self.bufs.pool.inflight() > 0 {
                    // Chunks come back only when their writes are reaped.
                    t = t.min(Duration::from_millis(1));
                }
                t
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Outcome::Failed(format!("poll failed: {e}"));
                }
            }
            let now = self.now();
            let mut touched = std::mem::take(&mut self.again);
            if self.wake_at.is_some_and(|w| now >= w) {
                self.wake_at = None;
                touched.append(&mut self.throttled);
            }
            for ev in events.iter() {
                let (kind, gen, index) = split(ev.token());
                match kind {
                    KIND_LISTENER => self.accept(index as usize, now),
                    KIND_PEER => {
                        let h = Handle { index, gen };
                        if self.peers.get(h).is_some() {
                            if ev.is_writable() || ev.is_error() {
                                self.on_writable(h, now);
                            }
                            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                                touched.push(h);
                            }
                        }
                    }
                    KIND_TRACKER => {
                        let h = Handle { index, gen };
                        self.tracker_io(h, now);
                    }
                    KIND_UDP => self.udp_readable(now),
                    KIND_UDP_MAIN => self.udp_main_readable((index & 1) as usize, now),
                    KIND_SIGNAL => self.on_signal(now),
                    KIND_CTL_LISTENER => self.ctl_accept(now),
                    KIND_CTL => self.ctl_io(Handle { index, gen }, now),
                    _ => {}
                }
            }
            touched.sort_by_key(|h| h.index);
            touched.dedup();
            for h in touched {
                self.read_peer(h, now);
            }
            self.dht_drive(now);
            self.reap_writes();
            self.after_io(now);
            if now.since(self.last_tick) >= Duration::from_secs(1) {
                let elapsed = now.since(self.last_tick);
                self.last_tick = now;
                self.tick(now, elapsed);
            }
        }
    }

    fn report_initial_state(&mut self) {
        for e in &mut self.torrents {
            if e.t.is_complete() && !e.finished_reported {
                e.finished_reported = true;
                if self.opts.seed {
                    println!(
                        "seeding {} {}",
                        crate::hash::hex(&e.t.meta.info_hash),
                        e.t.meta.name
                    );
                }
            }
        }
    }

    fn check_done(&mut self, now: Instant) -> Option<Outcome> {
        let daemon = self.daemon.is_some();
        if !daemon && self.outcome.is_none() && !self.opts.seed && !self.torrents.is_empty() {
            let all = self.torrents.iter().all(|e| e.t.is_complete());
            if all {
                self.begin_shutdown(now, Outcome::Complete);
            }
        }
        if !daemon && self.outcome.is_none() {
            if let Some(e) = self.torrents.iter().find_map(|e| match &e.t.state {
                State::Error(s) => Some(s.clone()),
                _ => None,
            }) {
                self.begin_shutdown(now, Outcome::Failed(e));
            }
        }
        let deadline = self.shutdown?;
        if self.trackers.is_empty() || now >= deadline {
            for e in &mut self.torrents {
                e.t.flush_storage(&mut self.bufs);
            }
            return self.outcome.take();
        }
        None
    }

    fn begin_shutdown(&mut self, now: Instant, outcome: Outcome) {
        if self.shutdown.is_some() {
            return;
        }
        info!("engine: shutting down ({outcome:?})");
        self.outcome = Some(outcome);
        self.shutdown = Some(now + STOP_ANNOUNCE_WAIT);
        let handles: Vec<Handle> = self.peers.iter().map(|(h, _)| h).collect();
        for h in handles {
            if let Some(p) = self.peers.get_mut(h) {
                p.close(CloseReason::Shutdown);
            }
            self.close_peer(h, now);
        }
        let hs: Vec<Handle> = self.trackers.iter().map(|(h, _)| h).collect();
        for h in hs {
            self.drop_tracker(h);
        }
        for i in 0..self.torrents.len() {
            if let Some(job) = self.torrents[i].ann.stop_job() {
                self.start_tracker(i, job, now);
            }
        }
    }

    fn on_signal(&mut self, now: Instant) {
        let mask = self.signal_fd.map_or(0, crate::sys::drain_signals);
        if mask & (1 << crate::sys::SIGHUP) != 0 {
            self.reload_config();
        }
        if mask & !(1 << crate::sys::SIGHUP) == 0 {
            return;
        }
        if self.shutdown.is_none() {
            self.begin_shutdown(now, Outcome::Interrupted);
        } else {
            // A second signal: stop waiting for trackers.
            self.shutdown = Some(now);
        }
    }

    // ----- peers -----

    fn accept(&mut self, li: usize, now: Instant) {
        loop {
            let Some(l) = self.listeners.get(li) else {
                return;
            };
            match l.accept() {
                Ok((stream, addr)) => {
                    if self.shutdown.is_some() || self.spare.is_empty() {
                        debug!("net: refusing {addr}: connection pool full");
                        continue;
                    }
                    if self.torrents.iter().any(|e| e.t.should_drop(&addr)) {
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    self.insert_peer(stream, addr, false, None, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: stop accepting this turn rather than spin.
                    warn!("net: accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn insert_peer(
        &mut self,
        mut stream: TcpStream,
        addr: SocketAddr,
        outgoing: bool,
        torrent: Option<usize>,
        now: Instant,
    ) -> bool {
        let Some(mut p) = self.spare.pop() else {
            return false;
        };
        p.reset(addr, outgoing, now);
        p.torrent = torrent;
        if let Some(ti) = torrent {
            let info_hash = self.torrents[ti].t.meta.info_hash;
            let hs = Handshake {
                reserved: wire::RESERVED_OURS,
                info_hash,
                peer_id: self.peer_id,
            };
            let encrypt = match self.opts.encryption {
                Encryption::Off => false,
                Encryption::Prefer => !self.torrents[ti].t.candidate_plain_only(&addr),
                Encryption::Require => true,
            };
            if encrypt {
                // Our BitTorrent handshake rides in the MSE initial payload (IA).
                let provide = match self.opts.encryption {
                    Encryption::Require => CryptoSet::RC4,
                    _ => CryptoSet::BOTH,
                };
                match self.mse_keys() {
                    Ok((key, pad)) => {
                        match mse::Handshake::initiator(info_hash, key, &pad, provide, &hs.encode())
                        {
                            Ok(mut m) => {
                                let mut out = Vec::new();
                                m.poll_transmit(&mut out);
                                p.push_bytes(&out);
                                p.mse = Some(Box::new(m));
                            }
                            Err(e) => p.close(CloseReason::Encryption(e.to_string())),
                        }
                    }
                    Err(e) => p.close(CloseReason::Encryption(e.to_string())),
                }
            } else {
                p.push_bytes(&hs.encode());
            }
        }
        let Some(h) = self.peers.insert(p) else {
            return false;
        };
        let tok = token(KIND_PEER, h);
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut stream, tok, Interest::READABLE | Interest::WRITABLE)
        {
            warn!("net: register failed: {e}");
            if let Some(p) = self.peers.remove(h) {
                self.spare.push(p);
            }
            return false;
        }
        self.streams[h.index as usize] = Some(stream);
        true
    }

    fn on_writable(&mut self, h: Handle, now: Instant) {
        let Some(p) = self.peers.get_mut(h) else {
            return;
        };
        if p.phase == Phase::Connecting {
            let Some(s) = self.streams[h.index as usize].as_ref() else {
                return;
            };
            match s.take_error() {
                Ok(Some(e)) | Err(e) => {
                    p.close(CloseReason::ConnectFailed(e.to_string()));
                    return;
                }
                Ok(None) => {}
            }
            match s.peer_addr() {
                Ok(_) => {
                    p.phase = if p.mse.is_some() {
                        Phase::Mse
                    } else {
                        Phase::Handshake
                    };
                    debug!("peer {}: connected", p.addr);
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => {
                    p.close(CloseReason::ConnectFailed(e.to_string()));
                    return;
                }
            }
        }
        self.flush_peer(h, now);
    }

    /// Alternates filling `tx` (requests, uploads) and writing it until the socket is full,
    /// nothing is left to send, or the per-turn budget is spent (then the peer is revisited
    /// next turn without waiting for an event: writability is edge-triggered).
    fn pump_peer(&mut self, h: Handle, now: Instant) {
        for _ in 0..WRITE_ROUNDS {
            let Some(p) = self.peers.get_mut(h) else {
                return;
            };
            if p.close.is_some() {
                return;
            }
            if let Some(ti) = p.torrent {
                let e = &mut self.torrents[ti];
                match e.fetch.as_mut() {
                    Some(f) => f.fill_tx(p, now),
                    None => e.t.fill_tx(p, &mut self.bufs),
                }
            }
            if p.tx_pending().is_empty() {
                return;
            }
            self.flush_peer(h, now);
            let Some(p) = self.peers.get(h) else { return };
            if !p.tx_pending().is_empty() {
                // Socket full: the next writable event resumes.
                return;
            }
        }
        self.again.push(h);
    }

    fn flush_peer(&mut self, h: Handle, now: Instant) {
        let Some(p) = self.peers.get_mut(h) else {
            return;
        };
        if p.phase == Phase::Connecting {
            return;
        }
        let Some(s) = self.streams[h.index as usize].as_mut() else {
            return;
        };
        p.encrypt_pending();
        // Upload limit: write only what the global and per-torrent buckets grant; the rest
        // waits for the wake-up at which tokens return.
        let pending = p.tx_pending().len() as u64;
        let mut spare = TokenBucket::unlimited();
        let mut granted = match p.torrent.and_then(|ti| self.torrents.get_mut(ti)) {
            Some(e) if pending > 0 => self.up.grant(now, e.bucket(true, &mut spare), pending),
            _ => pending,
        };
        if granted < pending {
            if let Some(e) = p.torrent.and_then(|ti| self.torrents.get_mut(ti)) {
                let b = e.bucket(true, &mut spare);
                let want = (pending - granted).min(b.burst().max(1));
                if let Some(w) = self.up.next_available_at(now, b, want) {
                    self.wake_at = Some(self.wake_at.map_or(w, |x| x.min(w)));
                }
            }
        }
        while granted > 0 && !p.tx_pending().is_empty() {
            let n = (granted as usize).min(p.tx_pending().len());
            match s.write(&p.tx_pending()[..n]) {
                Ok(0) => {
                    p.close(CloseReason::PeerClosed);
                    break;
                }
                Ok(n) => {
                    p.tx_consumed(n);
                    p.last_tx = now;
                    granted -= n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    p.close(CloseReason::Io(format!("write: {e}")));
                    break;
                }
            }
        }
        if granted > 0 {
            if let Some(e) = p.torrent.and_then(|ti| self.torrents.get_mut(ti)) {
                self.up.refund(e.bucket(true, &mut spare), granted);
            }
        }
    }

    /// Collects finished asynchronous chunk writes (freeing their chunks) and fails the
    /// torrents whose writes failed.
    fn reap_writes(&mut self) {
        if self.bufs.pool.inflight() == 0 {
            return;
        }
        self.bufs.pool.poll(false);
        while let Some(owner) = self.bufs.pool.error_owner() {
            match self.torrents.iter_mut().find(|e| e.t.io_owner() == owner) {
                Some(e) => e.t.io_failed(&mut self.bufs),
                None => {
                    // The torrent is gone: nothing to fail.
                    let _ = self.bufs.pool.take_error(owner);
                }
            }
        }
    }

    fn read_peer(&mut self, h: Handle, now: Instant) {
        let mut budget = READ_BUDGET;
        loop {
            let Some(p) = self.peers.get_mut(h) else {
                return;
            };
            if p.close.is_some() || p.phase == Phase::Connecting {
                return;
            }
            let Some(s) = self.streams[h.index as usize].as_mut() else {
                return;
            };
            let mut would_block = false;
            if p.in_payload() {
                // A piece payload goes straight to its chunk; then at most one piece header
                // into `rx`, so the next payload can start there without a copy too.
                let Some(e) = p.torrent.and_then(|ti| self.torrents.get_mut(ti)) else {
                    p.close(CloseReason::Protocol(
                        "piece payload without a torrent".into(),
                    ));
                    return;
                };
                let buf = e.t.payload_buf(p, &mut self.bufs);
                let peek = (p.rx.len() - p.rx_len).min(wire::PIECE_HEADER_LEN);
                let want = (buf.len() + peek) as u64;
                let mut spare = TokenBucket::unlimited();
                let b = e.bucket(false, &mut spare);
                let granted = self.down.grant(now, b, want);
                if granted == 0 {
                    if let Some(w) = self
                        .down
                        .next_available_at(now, b, want.min(b.burst().max(1)))
                    {
                        self.wake_at = Some(self.wake_at.map_or(w, |x| x.min(w)));
                    }
                    self.throttled.push(h);
                    return;
                }
                let to_buf = buf.len().min(granted as usize);
                let to_rx = granted as usize - to_buf;
                let start = p.rx_len;
                let mut iov = [
                    io::IoSliceMut::new(&mut buf[..to_buf]),
                    io::IoSliceMut::new(&mut p.rx[start..start + to_rx]),
                ];
                let mut got = 0;
                match s.read_vectored(&mut iov) {
                    Ok(0) => p.close(CloseReason::PeerClosed),
                    Ok(n) => got = n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => would_block = true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => p.close(CloseReason::Io(format!("read: {e}"))),
                }
                if (got as u64) < granted {
                    self.down
                        .refund(e.bucket(false, &mut spare), granted - got as u64);
                }
                let in_buf = got.min(to_buf);
                e.t.payload_received(p, in_buf, now, &mut self.bufs);
                p.decrypt_received(start, got - in_buf);
                p.rx_len += got - in_buf;
                budget = budget.saturating_sub(got);
            } else if p.rx_len < p.rx.len() {
                // Download limit: read only what the buckets grant (handshakes are free).
                let free = (p.rx.len() - p.rx_len) as u64;
                let entry = match p.phase {
                    Phase::Established => p.torrent.and_then(|ti| self.torrents.get_mut(ti)),
                    _ => None,
                };
                let mut spare = TokenBucket::unlimited();
                let granted = match entry {
                    Some(e) => {
                        let b = e.bucket(false, &mut spare);
                        let g = self.down.grant(now, b, free);
                        if g == 0 {
                            let want = free.min(b.burst().max(1));
                            if let Some(w) = self.down.next_available_at(now, b, want) {
                                self.wake_at = Some(self.wake_at.map_or(w, |x| x.min(w)));
                            }
                            self.throttled.push(h);
                            return;
                        }
                        g
                    }
                    None => free,
                };
                let end = p.rx_len + granted as usize;
                let mut got = 0u64;
                match s.read(&mut p.rx[p.rx_len..end]) {
                    Ok(0) => {
                        p.close(CloseReason::PeerClosed);
                    }
                    Ok(n) => {
                        let start = p.rx_len;
                        p.decrypt_received(start, n);
                        p.rx_len += n;
                        budget = budget.saturating_sub(n);
                        got = n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => would_block = true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => p.close(CloseReason::Io(format!("read: {e}"))),
                }
                if got < granted {
                    if let Some(e) = p.torrent.and_then(|ti| self.torrents.get_mut(ti)) {
                        if p.phase == Phase::Established {
                            self.down.refund(e.bucket(false, &mut spare), granted - got);
                        }
                    }
                }
            }
            let before = p.rx_len;
            self.process_input(h, now);
            let Some(p) = self.peers.get(h) else { return };
            if p.close.is_some() {
                return;
            }
            if p.rx_len == p.rx.len() && p.rx_len == before {
                // Buffer full and nothing parsable: the decoder's cap is the buffer size, so
                // this cannot happen with a well-formed stream.
                if let Some(p) = self.peers.get_mut(h) {
                    p.close(CloseReason::Protocol(
                        "message larger than receive buffer".into(),
                    ));
                }
                return;
            }
            if would_block {
                return;
            }
            if budget == 0 {
                self.again.push(h);
                return;
            }
        }
    }

    /// Handshake handling (which needs the torrent list) and then the torrent's parser.
    fn process_input(&mut self, h: Handle, now: Instant) {
        self.process_encryption(h);
        let Some(p) = self.peers.get_mut(h) else {
            return;
        };
        if p.close.is_some() {
            return;
        }
        if p.phase == Phase::Handshake {
            let hs = match Handshake::decode(&p.rx[..p.rx_len]) {
                Ok(Some(hs)) => hs,
                Ok(None) => return,
                Err(_) => {
                    p.close(CloseReason::BadHandshake);
                    return;
                }
            };
            let ti = match p.torrent {
                Some(ti) => {
                    if self.torrents[ti].t.meta.info_hash != hs.info_hash {
                        p.close(CloseReason::UnknownTorrent);
                        return;
                    }
                    ti
                }
                None => match self.torrents.iter().position(|e| {
                    e.t.meta.info_hash == hs.info_hash
                        && matches!(e.t.state, State::Downloading | State::Seeding)
                }) {
                    Some(ti) => {
                        let reply = Handshake {
                            reserved: wire::RESERVED_OURS,
                            info_hash: hs.info_hash,
                            peer_id: self.peer_id,
                        };
                        p.torrent = Some(ti);
                        p.push_bytes(&reply.encode());
                        ti
                    }
                    None => {
                        p.close(CloseReason::UnknownTorrent);
                        return;
                    }
                },
            };
            if hs.peer_id == self.peer_id {
                p.close(CloseReason::SelfConnection);
                return;
            }
            p.peer_id = hs.peer_id;
            p.reserved = hs.reserved;
            p.fast = wire::supports_fast(&hs.reserved);
            p.extended = wire::supports_extended(&hs.reserved);
            p.rx_consume(wire::HANDSHAKE_LEN);
            let pid = hs.peer_id;
            let addr = p.addr;
            let dup = self.peers.iter().any(|(o, q)| {
                o != h && q.torrent == Some(ti) && q.is_established() && q.peer_id == pid
            });
            let p = self.peers.get_mut(h).expect("present");
            if dup {
                p.close(CloseReason::Duplicate);
                return;
            }
            let e = &mut self.torrents[ti];
            if !p.outgoing {
                e.t.add_candidate(addr, now);
                e.t.candidate_connected(addr);
            }
            match e.fetch.as_mut() {
                Some(f) => f.on_established(p, now),
                None => e.t.on_established(p, now),
            }
            debug!("peer {}: handshake ok ({})", addr, p.client_name());
        }
        let Some(p) = self.peers.get_mut(h) else {
            return;
        };
        if let (Phase::Established, Some(ti)) = (p.phase, p.torrent) {
            let e = &mut self.torrents[ti];
            match e.fetch.as_mut() {
                Some(f) => f.handle_rx(p, now),
                None => e.t.handle_rx(p, now, &mut self.bufs),
            }
        }
    }

    /// A private key (from the OS) and random padding for one MSE handshake.
    fn mse_keys(&mut self) -> io::Result<([u8; 20], Vec<u8>)> {
        let mut key = [0u8; 20];
        crate::sys::getrandom(&mut key)?;
        // Padding hides the handshake's length; its content need not be secret.
        let mut pad = vec![0u8; self.rng.below(mse::MAX_PAD_LEN + 1)];
        self.rng.fill(&mut pad);
        Ok((key, pad))
    }

    /// Incoming streams: tells MSE from a plaintext handshake. Then runs the MSE handshake
    /// (either side) until it completes and hands the decrypted remainder to the BitTorrent
    /// handshake.
    fn process_encryption(&mut self, h: Handle) {
        let encryption = self.opts.encryption;
        let Some(p) = self.peers.get_mut(h) else {
            return;
        };
        if p.phase == Phase::Handshake && !p.outgoing && p.torrent.is_none() && p.mse.is_none() {
            let first = &p.rx[..p.rx_len.min(20)];
            let plain_prefix =
                first.is_empty() || (first[0] == 19 && wire::PROTOCOL.starts_with(&first[1..]));
            if plain_prefix && first.len() < 20 {
                return; // not enough to tell yet
            }
            if mse::looks_like_plain_bt(first) {
                if encryption == Encryption::Require {
                    p.close(CloseReason::PlaintextRefused);
                }
                return;
            }
            if encryption == Encryption::Off {
                p.close(CloseReason::BadHandshake);
                return;
            }
            let hashes: Vec<[u8; 20]> = self
                .torrents
                .iter()
                .filter(|e| matches!(e.t.state, State::Downloading | State::Seeding))
                .map(|e| e.t.meta.info_hash)
                .collect();
            let allowed = match encryption {
                Encryption::Require => CryptoSet::RC4,
                _ => CryptoSet::BOTH,
            };
            let keys = self.mse_keys();
            let Some(p) = self.peers.get_mut(h) else {
                return;
            };
            match keys.map_err(|e| e.to_string()).and_then(|(key, pad)| {
                mse::Handshake::responder(&hashes, key, &pad, allowed).map_err(|e| e.to_string())
            }) {
                Ok(m) => {
                    p.mse = Some(Box::new(m));
                    p.phase = Phase::Mse;
                }
                Err(e) => {
                    p.close(CloseReason::Encryption(e));
                    return;
                }
            }
        }
        let Some(p) = self.peers.get_mut(h) else {
            return;
        };
        if p.phase != Phase::Mse {
            return;
        }
        let Some(m) = p.mse.as_mut() else {
            return;
        };
        let result = m.handle_bytes(&p.rx[..p.rx_len]);
        let mut out = Vec::new();
        m.poll_transmit(&mut out);
        let outcome = if m.is_done() { m.take_outcome() } else { None };
        match result {
            Ok(n) => p.rx_consume(n),
            Err(e) => {
                p.close(CloseReason::Encryption(e.to_string()));
                return;
            }
        }
        if !p.push_bytes(&out) {
            p.close(CloseReason::Encryption(
                "handshake does not fit the send buffer".into(),
            ));
            return;
        }
        let Some(o) = outcome else {
            return;
        };
        p.mse = None;
        p.phase = Phase::Handshake;
        // Everything queued so far is the MSE handshake itself, already in its final form.
        p.tx_crypted = p.tx_len;
        if let Some((rc4_in, rc4_out)) = o.cipher {
            p.rc4_in = Some(rc4_in);
            p.rc4_out = Some(rc4_out);
            p.encrypted = true;
        }
        // The peer's BitTorrent handshake (the responder's IA) and whatever followed the MSE
        // handshake, already decrypted, go in front of any bytes still unparsed.
        let mut front = o.initial_payload;
        front.extend_from_slice(&o.leftover);
        let rest = p.rx_len;
        if front.len() + rest > p.rx.len() {
            p.close(CloseReason::Encryption(
                "handshake payload too large".into(),
            ));
            return;
        }
        p.rx.copy_within(0..rest, front.len());
        p.rx[..front.len()].copy_from_slice(&front);
        p.rx_len += front.len();
        debug!(
            "peer {}: encryption {}",
            p.addr,
            if p.encrypted { "rc4" } else { "plaintext" }
        );
    }

    fn close_peer(&mut self, h: Handle, now: Instant) {
        let Some(mut p) = self.peers.remove(h) else {
            return;
        };
        if let Some(mut s) = self.streams[h.index as usize].take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        let mse_failed = p.phase == Phase::Mse && p.outgoing;
        if p.phase == Phase::Mse && matches!(p.close, None | Some(CloseReason::PeerClosed)) {
            p.close = Some(CloseReason::Encryption(
                "peer closed during the handshake".into(),
            ));
        }
        let reason = p.close.clone().unwrap_or(CloseReason::PeerClosed);
        debug!("peer {}: closed: {}", p.addr, reason);
        if let Some(ti) = p.torrent {
            if let Some(e) = self.torrents.get_mut(ti) {
                if let Some(f) = e.fetch.as_mut() {
                    f.on_closed(&mut p, now);
                }
                e.t.on_closed(&mut p, now);
                if mse_failed && self.opts.encryption == Encryption::Prefer {
                    // The peer may not speak MSE: dial it again in plaintext.
                    debug!("peer {}: retrying in plaintext", p.addr);
                    e.t.mark_plain_only(p.addr, now);
                    self.connect_soon = true;
                }
            }
        }
        self.spare.push(p);
    }

    /// After input: broadcasts, refill requests and uploads, write, close the dead.
    fn after_io(&mut self, now: Instant) {
        for ti in 0..self.torrents.len() {
            let peers = self
                .peers
                .iter_mut()
                .filter(|(_, p)| p.torrent == Some(ti))
                .map(|(_, p)| p);
            self.torrents[ti].t.broadcast(peers);
        }
        let mut handles = std::mem::take(&mut self.turn_handles);
        handles.clear();
        handles.extend(self.peers.iter().map(|(h, _)| h));
        for &h in &handles {
            self.pump_peer(h, now);
            let dead = self.peers.get(h).is_some_and(|p| p.close.is_some());
            if dead {
                self.close_peer(h, now);
            }
        }
        self.turn_handles = handles;
        self.handle_torrent_events(now);
        if self.connect_soon && self.shutdown.is_none() {
            self.connect_soon = false;
            self.connect_candidates(now);
        }
    }

    fn handle_torrent_events(&mut self, now: Instant) {
        for i in 0..self.torrents.len() {
            self.poll_fetch(i, now);
            while let Some(addr) = self.torrents[i].t.poll_banned() {
                let hs: Vec<Handle> = self
                    .peers
                    .iter()
                    .filter(|(_, p)| p.torrent == Some(i) && p.addr == addr)
                    .map(|(h, _)| h)
                    .collect();
                for h in hs {
                    if let Some(p) = self.peers.get_mut(h) {
                        p.close(CloseReason::BadPiece);
                    }
                    self.close_peer(h, now);
                }
            }
            while let Some(ev) = self.torrents[i].t.poll_event() {
                match ev {
                    TorrentEvent::PieceVerified(_) => self.torrents[i].dirty = true,
                    TorrentEvent::Completed if self.daemon.is_some() => {
                        self.torrents[i].ann.completed(now);
                        self.on_completed(i);
                    }
                    TorrentEvent::Completed => {
                        let e = &mut self.torrents[i];
                        e.ann.completed(now);
                        if !e.finished_reported {
                            e.finished_reported = true;
                            let secs = now.since(self.started_at).as_secs_f64().max(0.001);
                            let bytes = e.t.meta.total_length;
                            println!(
                                "complete {} {} {} bytes in {:.2} s ({:.1} MB/s)",
                                crate::hash::hex(&e.t.meta.info_hash),
                                e.t.meta.name,
                                bytes,
                                secs,
                                e.t.downloaded as f64 / secs / 1e6
                            );
                            if self.opts.seed {
                                println!(
                                    "seeding {} {}",
                                    crate::hash::hex(&e.t.meta.info_hash),
                                    e.t.meta.name
                                );
                            }
                        }
                    }
                    TorrentEvent::StorageError(msg) => {
                        eprintln!("atorrent: {}: {}", self.torrents[i].t.meta.name, msg);
                    }
                }
            }
        }
    }

    fn tick(&mut self, now: Instant, elapsed: Duration) {
        // Connection and handshake timeouts.
        let handles: Vec<Handle> = self.peers.iter().map(|(h, _)| h).collect();
        for &h in &handles {
            if let Some(p) = self.peers.get_mut(h) {
                let age = now.since(p.connected_at);
                match p.phase {
                    Phase::Connecting if age > CONNECT_TIMEOUT => {
                        p.close(CloseReason::ConnectFailed("timed out".into()))
                    }
                    Phase::Handshake | Phase::Mse if age > HANDSHAKE_TIMEOUT => {
                        p.close(CloseReason::HandshakeTimeout)
                    }
                    _ => {}
                }
                if let Some(ti) = p.torrent {
                    if self.torrents[ti].t.should_drop(&p.addr) {
                        p.close(CloseReason::BadPiece);
                    }
                }
            }
        }
        for ti in 0..self.torrents.len() {
            let peers = self
                .peers
                .iter_mut()
                .filter(|(_, p)| p.torrent == Some(ti))
                .map(|(_, p)| p);
            let e = &mut self.torrents[ti];
            match e.fetch.as_mut() {
                Some(f) => f.tick(now, peers),
                None => e.t.tick(now, elapsed, peers, &mut self.bufs),
            }
        }
        if self.shutdown.is_none() {
            self.connect_candidates(now);
            self.announce(now);
            // Listeners are edge-triggered: after an accept failed (EMFILE) no new event may
            // come for connections already queued, so look once a second.
            for li in 0..self.listeners.len() {
                self.accept(li, now);
            }
            if self.daemon.is_some() {
                self.ctl_accept(now);
            }
        }
        self.tracker_timeouts(now);
        self.boot_dns_timeouts(now);
        self.udp_trackers_poll(now);
        self.dht_announce(now);
        self.apply_alt_schedule(now);
        self.seeding_policy(now);
        self.daemon_tick(now);
        self.after_io(now);
        self.print_progress(now, false);
    }

    fn connect_candidates(&mut self, now: Instant) {
        let mut half_open = self
            .peers
            .iter()
            .filter(|(_, p)| p.phase == Phase::Connecting)
            .count();
        for ti in 0..self.torrents.len() {
            if !matches!(
                self.torrents[ti].t.state,
                State::Downloading | State::Seeding
            ) {
                continue;
            }
            while half_open < self.opts.max_half_open && !self.spare.is_empty() {
                let Some(addr) = self.torrents[ti].t.next_candidate(now) else {
                    break;
                };
                // Skip addresses we are already connected to.
                if self.peers.iter().any(|(_, p)| p.addr == addr) {
                    continue;
                }
                match net::connect(addr, self.opts.bind) {
                    Ok(stream) => {
                        if self.insert_peer(stream, addr, true, Some(ti), now) {
                            half_open += 1;
                        }
                    }
                    Err(e) => {
                        debug!("peer {addr}: connect failed: {e}");
                        self.torrents[ti].t.candidate_closed(
                            addr,
                            &CloseReason::ConnectFailed(e.to_string()),
                            now,
                        );
                    }
                }
            }
        }
    }

    /// Switches between the normal and the alternative limits as `alt_schedule` says.
    fn apply_alt_schedule(&mut self, now: Instant) {
        let Some((alt_down, alt_up, sched)) = &self.opts.alt_limits else {
            return;
        };
        let (day, minute) = crate::sys::local_weekday_minute();
        let active = sched.active(day, minute);
        if active == self.alt_active {
            return;
        }
        self.alt_active = active;
        let (d, u) = if active {
            (*alt_down, *alt_up)
        } else {
            (self.opts.down_limit, self.opts.up_limit)
        };
        info!(
            "limits: {} (down {:?} up {:?})",
            if active { "alternative" } else { "normal" },
            d,
            u
        );
        self.down.set_global_rate(now, d);
        self.up.set_global_rate(now, u);
    }

    /// Sets the global limits at run time (`atorrent limit`), outside any alt schedule.
    pub fn set_global_limits(
        &mut self,
        now: Instant,
        down: Option<Option<u64>>,
        up: Option<Option<u64>>,
    ) {
        if let Some(d) = down {
            self.opts.down_limit = d;
            if !self.alt_active {
                self.down.set_global_rate(now, d);
            }
        }
        if let Some(u) = up {
            self.opts.up_limit = u;
            if !self.alt_active {
                self.up.set_global_rate(now, u);
            }
        }
    }

    /// Stops seeding torrents that reached `seed_ratio` (uploaded / size) or `seed_time`.
    fn seeding_policy(&mut self, now: Instant) {
        let (ratio_limit, time_limit) = (self.opts.seed_ratio, self.opts.seed_time);
        for i in 0..self.torrents.len() {
            let e = &mut self.torrents[i];
            if e.t.state != State::Seeding {
                e.seeding_since = None;
                continue;
            }
            let since = *e.seeding_since.get_or_insert(now);
            let ratio_limit = e.seed_ratio().unwrap_or(ratio_limit);
            let time_limit = e.seed_time().unwrap_or(time_limit);
            if ratio_limit <= 0.0 && time_limit == 0 {
                continue;
            }
            let size = e.t.meta.total_length.max(1) as f64;
            let ratio = (e.base_uploaded + e.t.uploaded) as f64 / size;
            let seeded = now.since(since).as_secs();
            let why = if ratio_limit > 0.0 && ratio >= ratio_limit {
                format!("seeding stopped: ratio {ratio:.2} reached the limit {ratio_limit:.2}")
            } else if time_limit > 0 && seeded >= time_limit {
                format!("seeding stopped: seeded for {seeded} s (limit {time_limit} s)")
            } else {
                continue;
            };
            info!("torrent {}: {}", e.id, why);
            e.set_note(Some(why.clone()));
            if self.daemon.is_some() {
                self.torrents[i].paused = true;
                self.deactivate(i, State::Stopped, now);
            } else {
                println!("{why}");
                self.begin_shutdown(now, Outcome::Complete);
            }
        }
    }

    /// Adds a magnet link: a placeholder torrent whose peers speak only the metadata exchange
    /// (BEP 9) until the info dictionary has arrived and matched the info-hash.
    pub fn add_magnet(
        &mut self,
        m: &Magnet,
        dir: std::path::PathBuf,
        id: u32,
    ) -> Result<usize, String> {
        let name = m
            .name
            .clone()
            .unwrap_or_else(|| crate::hash::hex(&m.info_hash));
        let placeholder = Metainfo {
            info_hash: m.info_hash,
            name: name.clone(),
            piece_length: 16384,
            // No dictionary yet: metadata requests are rejected until the fetch finishes.
            info: crate::metainfo::InfoDict::bare_hashes(vec![0; 20]),
            files: vec![FileEntry {
                path: vec![name.clone()],
                length: 1,
                offset: 0,
                pad: false,
            }],
            total_length: 1,
            private: false,
            trackers: m.trackers.iter().map(|t| vec![t.clone()]).collect(),
            multi_file: false,
        };
        let settings = crate::torrent::Settings {
            upload_slots: self.opts.upload_slots,
            max_candidates: self.opts.max_known_peers,
            listen_port: self.listen_port,
        };
        let seed = self.rng.next_u64();
        let t = Torrent::new(
            placeholder,
            crate::bitfield::Bitfield::new(1),
            Box::new(MemStore::new(1)),
            self.bufs.pool.capacity(),
            self.peer_id,
            settings,
            crate::rng::Rng::new(seed),
        )?;
        let i = self.push_entry(t, id, dir);
        let now = self.now();
        let e = &mut self.torrents[i];
        e.fetch = Some(Box::new(Fetch::new(
            m.info_hash,
            m.name.clone(),
            self.peer_id,
            self.listen_port,
        )));
        e.set_select(m.select_only.clone());
        for p in &m.peers {
            if let Ok(a) = p.parse::<SocketAddr>() {
                e.t.add_candidate(a, now);
            }
        }
        self.connect_soon = true;
        Ok(i)
    }

    /// Drains a metadata fetch: closes peers that sent bad metadata, and once the verified
    /// info dictionary is in, replaces the placeholder with the real torrent.
    fn poll_fetch(&mut self, i: usize, now: Instant) {
        let Some(f) = self.torrents[i].fetch.as_mut() else {
            return;
        };
        let mut banned = Vec::new();
        while let Some(a) = f.poll_banned() {
            banned.push(a);
        }
        let done = f.poll_done();
        for a in banned {
            self.torrents[i]
                .t
                .candidates
                .ban(a, now, self.opts.max_known_peers);
            let hs: Vec<Handle> = self
                .peers
                .iter()
                .filter(|(_, p)| p.torrent == Some(i) && p.addr == a)
                .map(|(h, _)| h)
                .collect();
            for h in hs {
                if let Some(p) = self.peers.get_mut(h) {
                    p.close(CloseReason::BadPiece);
                }
                self.close_peer(h, now);
            }
        }
        match done {
            None => {}
            Some(Err(e)) => {
                warn!("magnet {}: {e}", self.torrents[i].t.meta.name);
                self.torrents[i].t.state = State::Error(e);
            }
            Some(Ok(info)) => {
                if let Err(e) = self.finish_magnet(i, info, now) {
                    warn!("magnet {}: {e}", self.torrents[i].t.meta.name);
                    self.torrents[i].t.state = State::Error(e);
                }
            }
        }
    }

    fn finish_magnet(&mut self, i: usize, info: Vec<u8>, now: Instant) -> Result<(), String> {
        let trackers = self.torrents[i].t.meta.trackers.clone();
        let parsed = crate::metainfo::parse_info(&info, trackers).map_err(|e| e.to_string())?;
        // The metainfo keeps its own copy, which it serves to peers in turn.
        drop(info);
        for w in &parsed.warnings {
            warn!("torrent {}: {}", parsed.meta.name, w);
        }
        let meta = parsed.meta;
        let dir = self.torrents[i].dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let storage = Storage::open(&dir, &meta, self.opts.direct_io, self.opts.max_open_files)
            .map_err(|e| e.to_string())?;
        let settings = crate::torrent::Settings {
            upload_slots: self.opts.upload_slots,
            max_candidates: self.opts.max_known_peers,
            listen_port: self.listen_port,
        };
        let n = meta.piece_count();
        let seed = self.rng.next_u64();
        let mut t = Torrent::new(
            meta,
            crate::bitfield::Bitfield::new(n),
            Box::new(storage),
            self.bufs.pool.capacity(),
            self.peer_id,
            settings,
            crate::rng::Rng::new(seed),
        )?;
        // The metadata peers were spoken to as a fetch: reconnect them as torrent peers.
        let hs: Vec<Handle> = self
            .peers
            .iter()
            .filter(|(_, p)| p.torrent == Some(i))
            .map(|(h, _)| h)
            .collect();
        for h in hs {
            if let Some(p) = self.peers.get_mut(h) {
                p.close(CloseReason::Shutdown);
            }
            self.close_peer(h, now);
        }
        let e = &mut self.torrents[i];
        t.candidates = std::mem::replace(&mut e.t.candidates, crate::peer::Candidates::new());
        t.candidates.reset_connections(now);
        if let Some(sel) = e.select() {
            t.select_files(sel);
        }
        info!(
            "magnet {}: metadata verified: {} ({} pieces)",
            crate::hash::hex(&t.meta.info_hash),
            t.meta.name,
            n
        );
        if self.daemon.is_none() {
            println!(
                "metadata {} {}",
                crate::hash::hex(&t.meta.info_hash),
                t.meta.name
            );
        }
        // Data already in the directory (a restart, or the same files) is verified first.
        t.state = State::Checking;
        e.t = t;
        e.fetch = None;
        e.check_cursor = 0;
        e.dirty = true;
        self.connect_soon = true;
        self.save_fetched_torrent(i);
        Ok(())
    }

    /// Dials `addr` for torrent `ti` now (used for `--peer`).
    pub fn add_peer(&mut self, ti: usize, addr: SocketAddr) {
        let now = self.now();
        if let Some(e) = self.torrents.get_mut(ti) {
            e.t.add_candidate(addr, now);
        }
        self.connect_soon = true;
    }

    // ----- progress -----

    fn print_progress(&mut self, now: Instant, last: bool) {
        let every = match self.opts.progress {
            Progress::Quiet => return,
            Progress::Tty => Duration::from_secs(1),
            Progress::Lines => Duration::from_secs(5),
        };
        if !last && now.since(self.last_progress) < every {
            return;
        }
        self.last_progress = now;
        for e in &self.torrents {
            let t = &e.t;
            let have = t.bytes_have();
            let total = t.wanted_total();
            let pct = if total == 0 {
                100.0
            } else {
                have as f64 * 100.0 / total as f64
            };
            let (mut down, mut up, mut n) = (0u64, 0u64, 0usize);
            for (_, p) in self.peers.iter() {
                if p.torrent.is_some() && p.is_established() {
                    down += p.down.get();
                    up += p.up.get();
                    n += 1;
                }
            }
            let eta = if down > 0 && have < total {
                format!("{}s", (total - have) / down)
            } else {
                "-".to_string()
            };
            let line = format!(
                "{} {:5.1}% down {}/s up {}/s peers {} eta {}",
                t.state.name(),
                pct,
                human(down),
                human(up),
                n,
                eta
            );
            if self.opts.progress == Progress::Tty && io::stdout().is_terminal() {
                print!("\r{line:<72}");
                if last {
                    println!();
                }
                let _ = io::stdout().flush();
            } else {
                println!("{line}");
            }
        }
    }

    // ----- UDP: DHT and UDP trackers -----

    fn setup_udp(&mut self) {
        let ips = match self.opts.bind {
            Some(ip) => vec![ip],
            None if self.opts.enable_ipv6 => vec![net::unspecified(false), net::unspecified(true)],
            None => vec![net::unspecified(false)],
        };
        for ip in ips {
            let fam = usize::from(ip.is_ipv6());
            let addr = SocketAddr::new(ip, self.opts.dht_port);
            match net::udp(addr) {
                Ok(mut s) => {
                    let tok = Token(KIND_UDP_MAIN << 28 | fam);
                    if self
                        .poll
                        .registry()
                        .register(&mut s, tok, Interest::READABLE)
                        .is_ok()
                    {
                        info!(
                            "net: udp on {}",
                            s.local_addr().map(|a| a.to_string()).unwrap_or_default()
                        );
                        self.udp_main[fam] = Some(s);
                    }
                }
                Err(e) if fam == 1 => info!("net: no IPv6 UDP socket ({e}); IPv4 only"),
                Err(e) => warn!("net: no UDP socket on {addr} ({e}): no IPv4 DHT or UDP trackers"),
            }
        }
        if self.opts.enable_dht && self.udp_main.iter().any(Option::is_some) {
            let mut id = [0u8; 20];
            if crate::sys::getrandom(&mut id).is_err() {
                self.rng.fill(&mut id);
            }
            let cfg = dhtmod::Config {
                max_nodes: self.opts.dht_max_nodes.max(8),
                bootstrap: self.opts.dht_bootstrap.clone(),
                ..dhtmod::Config::default()
            };
            let now = self.now();
            let mut d = Dht::new(id, now, cfg, crate::rng::Rng::new(self.rng.next_u64()));
            if let Some(path) = &self.opts.dht_state {
                if let Ok(bytes) = std::fs::read(path) {
                    let nodes = dhtmod::load_nodes(&bytes);
                    info!("dht: {} nodes from {}", nodes.len(), path.display());
                    d.import_nodes(now, &nodes);
                }
            }
            self.dht = Some(d);
            self.bootstrap_names_start(now);
        }
    }

    /// Saves the DHT routing table for the next start (daemon).
    pub(crate) fn save_dht(&self) {
        if let (Some(d), Some(path)) = (&self.dht, &self.opts.dht_state) {
            let bytes = dhtmod::save_nodes(&d.export_nodes());
            if let Err(e) = crate::state::atomic_write(path, &bytes) {
                warn!("dht: saving {}: {e}", path.display());
            }
        }
    }

    fn udp_main_readable(&mut self, fam: usize, now: Instant) {
        let mut buf = [0u8; 2048];
        for _ in 0..UDP_READ_BUDGET {
            let Some(s) = self.udp_main[fam].as_ref() else {
                return;
            };
            let (n, from) = match s.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let pkt = &buf[..n];
            // KRPC messages are bencoded dictionaries ('d'); tracker replies start with a
            // 32-bit action (0..3), so their first byte is 0.
            if pkt.first() == Some(&b'd') {
                if let Some(d) = self.dht.as_mut() {
                    let _ = d.handle_datagram(now, from, pkt);
                }
            } else if udp_tracker::looks_like_tracker_response(pkt) {
                self.udp_tracker_response(from, pkt, now);
            }
        }
    }

    fn udp_send(&mut self, to: SocketAddr, bytes: &[u8]) {
        if let Some(s) = self.udp_main[usize::from(to.is_ipv6())].as_ref() {
            if let Err(e) = s.send_to(bytes, to) {
                debug!("net: udp send to {to}: {e}");
            }
        }
    }

    fn udp_tracker_response(&mut self, from: SocketAddr, pkt: &[u8], now: Instant) {
        let tid = udp_tracker::response_transaction_id(pkt);
        let found = self
            .trackers
            .iter()
            .find(|(_, c)| {
                c.udp
                    .as_ref()
                    .is_some_and(|u| u.tracker() == from && u.transaction_id() == tid)
            })
            .map(|(h, _)| h);
        let Some(h) = found else { return };
        let Some(c) = self.trackers.get_mut(h) else {
            return;
        };
        let Some(u) = c.udp.as_mut() else { return };
        match u.handle_response(now, pkt, &mut self.udp_cache) {
            Ok(None) => self.udp_trackers_poll(now),
            Ok(Some(UdpOutcome::Announced(r))) => {
                let resp = tracker::AnnounceResponse {
                    interval: Some(r.interval),
                    complete: Some(r.seeders),
                    incomplete: Some(r.leechers),
                    peers: r.peers,
                    ..Default::default()
                };
                self.tracker_done(h, resp, now);
            }
            Ok(Some(UdpOutcome::TrackerError(msg))) => {
                let resp = tracker::AnnounceResponse {
                    failure: Some(msg),
                    ..Default::default()
                };
                self.tracker_done(h, resp, now);
            }
            Ok(Some(UdpOutcome::Scraped(entries))) => match entries.first() {
                Some(x) => self.scrape_done(h, x.seeders, x.leechers),
                None => self.drop_tracker(h),
            },
            Err(_) => {}
        }
    }

    /// Sends due UDP tracker packets and fails exchanges that ran out of retries.
    fn udp_trackers_poll(&mut self, now: Instant) {
        let hs: Vec<Handle> = self
            .trackers
            .iter()
            .filter(|(_, c)| c.udp.is_some())
            .map(|(h, _)| h)
            .collect();
        for h in hs {
            let Some(c) = self.trackers.get_mut(h) else {
                continue;
            };
            let Some(u) = c.udp.as_mut() else { continue };
            let pkt = u.poll_transmit(now, &self.udp_cache, &mut self.rng);
            let to = u.tracker();
            let timed_out = u.timed_out();
            if let Some(pkt) = pkt {
                self.udp_send(to, &pkt);
            }
            if timed_out {
                self.tracker_failed(h, "timed out".into(), now);
            }
        }
    }

    /// Runs the DHT's timers, sends what it queued and routes the peers it found.
    fn dht_drive(&mut self, now: Instant) {
        let Some(d) = self.dht.as_mut() else { return };
        if now >= d.poll_at() {
            d.handle_timeout(now);
        }
        let mut out = Vec::new();
        for _ in 0..DHT_SEND_BUDGET {
            match d.poll_transmit() {
                Some(x) => out.push(x),
                None => break,
            }
        }
        let mut found = Vec::new();
        while let Some(ev) = d.poll_event() {
            if let DhtEvent::Peers {
                info_hash, peers, ..
            } = ev
            {
                found.push((info_hash, peers));
            }
        }
        for (to, bytes) in out {
            self.udp_send(to, &bytes);
        }
        let (port, bind) = (self.listen_port, self.opts.bind);
        for (hash, peers) in found {
            if let Some(e) = self
                .torrents
                .iter_mut()
                .find(|e| e.t.meta.info_hash == hash && !e.t.meta.private)
            {
                for a in peers.iter().filter(|a| !is_self(a, port, bind)) {
                    e.t.add_candidate(*a, now);
                }
                debug!("dht: {} peers for torrent {}", peers.len(), e.id);
                self.connect_soon = true;
            }
        }
    }

    /// Announces active public torrents into the DHT (which also looks their peers up), once
    /// the routing table has nodes: every 5 min while downloading, 15 min while seeding.
    fn dht_announce(&mut self, now: Instant) {
        let Some(d) = self.dht.as_mut() else { return };
        let st = d.stats(now);
        if st.nodes_v4 + st.nodes_v6 == 0 {
            return;
        }
        let port = self.listen_port;
        for e in &mut self.torrents {
            if e.t.meta.private || now < e.dht_next {
                continue;
            }
            let wait = match e.t.state {
                // Nothing to connect to yet: look again soon (the swarm may be announcing).
                State::Downloading if e.t.candidates.is_empty() => DHT_RETRY_EMPTY,
                State::Downloading => DHT_ANNOUNCE_DOWNLOADING,
                State::Seeding => DHT_ANNOUNCE_SEEDING,
                _ => continue,
            };
            if d.announce(now, e.t.meta.info_hash, port).is_ok() {
                debug!("dht: announcing torrent {}", e.id);
                e.dht_next = now + wait;
            }
        }
    }

    // ----- trackers -----

    fn announce(&mut self, now: Instant) {
        for ti in 0..self.torrents.len() {
            if self.trackers.len() >= MAX_TRACKER_CONNS {
                return;
            }
            if !matches!(
                self.torrents[ti].t.state,
                State::Downloading | State::Seeding
            ) {
                continue;
            }
            if let Some(job) = self.torrents[ti].ann.poll(now) {
                self.start_tracker(ti, job, now);
            }
        }
    }

    fn start_tracker(&mut self, ti: usize, job: Job, now: Instant) {
        let url = match tracker::parse_url(&job.url) {
            Ok(u) if u.scheme == Scheme::Http || u.scheme == Scheme::Udp => u,
            Ok(_) => {
                self.torrents[ti].ann.on_failure(
                    now,
                    &job,
                    "https:// trackers are not supported (no TLS)".into(),
                );
                return;
            }
            Err(e) => {
                self.torrents[ti].ann.on_failure(now, &job, e.to_string());
                return;
            }
        };
        let Some(h) = self
            .trackers
            .insert(TrackerConn::new(ti, job, url, false, now))
        else {
            return;
        };
        self.tracker_begin(h, now);
    }

    /// Asks the tracker that just answered for swarm counts (scrape), at most every 10 min.
    fn start_scrape(&mut self, ti: usize, job: Job, now: Instant) {
        let Some(e) = self.torrents.get_mut(ti) else {
            return;
        };
        if e.scraped_at.is_some_and(|t| now.since(t) < SCRAPE_INTERVAL) || self.trackers.is_full() {
            return;
        }
        e.scraped_at = Some(now);
        let Ok(url) = tracker::parse_url(&job.url) else {
            return;
        };
        if url.scheme == Scheme::Http && tracker::scrape_url(&url).is_none() {
            return;
        }
        if let Some(h) = self
            .trackers
            .insert(TrackerConn::new(ti, job, url, true, now))
        {
            self.tracker_begin(h, now);
        }
    }

    fn scrape_done(&mut self, h: Handle, seeders: u32, leechers: u32) {
        let Some(c) = self.trackers.get(h) else {
            return;
        };
        let (ti, url) = (c.torrent, c.job.url.clone());
        self.drop_tracker(h);
        info!("tracker {url}: scrape: {seeders} seeders, {leechers} leechers");
        if let Some(e) = self.torrents.get_mut(ti) {
            e.ann.set_scrape(&url, seeders, leechers);
        }
    }

    /// Resolves (or connects, when the host is an address) and sends the request.
    fn tracker_begin(&mut self, h: Handle, now: Instant) {
        let Some(c) = self.trackers.get_mut(h) else {
            return;
        };
        let host = c.url.host.clone();
        let addrs = match c.url.host_is_ip() {
            Some(ip) => vec![ip],
            None => net::hosts_lookup(&host),
        };
        // BEP 7: announce over each address family we listen on that the tracker has; the
        // primary exchange prefers IPv4.
        let primary = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied();
        match primary {
            Some(ip) => {
                if let Some(other) = addrs.iter().find(|a| a.is_ipv4() != ip.is_ipv4()).copied() {
                    self.tracker_sibling(h, Some(other), now);
                }
                self.tracker_connect(h, ip, now)
            }
            None => self.tracker_resolve(h, dns::QType::A, now),
        }
    }

    /// Starts the BEP 7 announce over our other address family for exchange `h` (an announce,
    /// not a scrape): to `ip` when known, else after an AAAA lookup. Only when we listen on
    /// IPv6 too.
    fn tracker_sibling(&mut self, h: Handle, ip: Option<IpAddr>, now: Instant) {
        let listens_v6 = self
            .listeners
            .iter()
            .any(|l| l.local_addr().is_ok_and(|a| a.is_ipv6()));
        let Some(c) = self.trackers.get(h) else {
            return;
        };
        if c.scrape || c.secondary || !listens_v6 || self.trackers.is_full() {
            return;
        }
        let mut sib = TrackerConn::new(c.torrent, c.job.clone(), c.url.clone(), false, now);
        sib.secondary = true;
        let Some(s) = self.trackers.insert(sib) else {
            return;
        };
        match ip {
            Some(ip) => self.tracker_connect(s, ip, now),
            None => self.tracker_resolve(s, dns::QType::Aaaa, now),
        }
    }

    /// Opens the resolver socket (shared by tracker and DHT bootstrap lookups) on first use.
    fn dns_socket(&mut self) -> Result<(), String> {
        if self.udp.is_none() {
            if self.resolvers.is_empty() {
                self.resolvers = net::system_resolvers();
            }
            let mut s = net::udp(SocketAddr::new(net::unspecified(false), 0))
                .map_err(|e| format!("dns socket: {e}"))?;
            if self
                .poll
                .registry()
                .register(&mut s, Token(KIND_UDP << 28), Interest::READABLE)
                .is_ok()
            {
                self.udp = Some(s);
            }
        }
        Ok(())
    }

    fn tracker_resolve(&mut self, h: Handle, qtype: dns::QType, now: Instant) {
        if let Err(e) = self.dns_socket() {
            self.tracker_failed(h, e, now);
            return;
        }
        self.dns_next_id = self.dns_next_id.wrapping_add(1);
        let id = self.dns_next_id;
        let Some(c) = self.trackers.get_mut(h) else {
            return;
        };
        let mut q = Vec::with_capacity(64);
        if let Err(e) = dns::build_query(id, &c.url.host, qtype, &mut q) {
            let msg = format!("cannot resolve {}: {e}", c.url.host);
            self.tracker_failed(h, msg, now);
            return;
        }
        c.dns_id = Some(id);
        c.dns_qtype = qtype;
        let (Some(udp), Some(server)) = (self.udp.as_ref(), self.resolvers.first()) else {
            return;
        };
        if let Err(e) = udp.send_to(&q, *server) {
            self.tracker_failed(h, format!("dns send: {e}"), now);
        }
    }

    fn udp_readable(&mut self, now: Instant) {
        let mut buf = [0u8; 1500];
        loop {
            let Some(udp) = self.udp.as_ref() else { return };
            let (n, from) = match udp.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return,
            };
            if !self.resolvers.contains(&from) {
                continue;
            }
            let pkt = &buf[..n];
            let found = self
                .trackers
                .iter()
                .find(|(_, c)| {
                    c.dns_id.is_some()
                        && pkt.len() >= 2
                        && c.dns_id == Some(u16::from_be_bytes([pkt[0], pkt[1]]))
                })
                .map(|(h, _)| h);
            let Some(h) = found else {
                self.boot_dns_answer(pkt, now);
                continue;
            };
            let (host, qtype, id) = {
                let c = self.trackers.get(h).expect("found");
                (c.url.host.clone(), c.dns_qtype, c.dns_id.unwrap_or(0))
            };
            match dns::parse_response(pkt, id, &host, qtype) {
                Ok(ans) if !ans.addrs.is_empty() => {
                    if let Some(c) = self.trackers.get_mut(h) {
                        c.dns_id = None;
                    }
                    if qtype == dns::QType::A {
                        // BEP 7: the IPv6 announce resolves its own AAAA record.
                        self.tracker_sibling(h, None, now);
                    }
                    self.tracker_connect(h, ans.addrs[0], now);
                }
                Ok(_) if qtype == dns::QType::A => self.tracker_resolve(h, dns::QType::Aaaa, now),
                Ok(_) => self.tracker_failed(h, format!("{host}: no address"), now),
                Err(e) => self.tracker_failed(h, format!("{host}: {e}"), now),
            }
        }
    }

    fn tracker_connect(&mut self, h: Handle, ip: IpAddr, now: Instant) {
        let Some(c) = self.trackers.get_mut(h) else {
            return;
        };
        let addr = SocketAddr::new(ip, c.url.port);
        let e = &self.torrents[c.torrent];
        let t = &e.t;
        if c.scrape {
            if c.url.scheme == Scheme::Udp {
                let cfg = RetryConfig {
                    base: Duration::from_secs(5),
                    max_exponent: 1,
                };
                match UdpAnnounce::new_scrape(now, addr, vec![t.meta.info_hash], cfg) {
                    Ok(u) => {
                        c.udp = Some(u);
                        self.udp_trackers_poll(now);
                    }
                    Err(_) => self.drop_tracker(h),
                }
                return;
            }
            let Some(surl) = tracker::scrape_url(&c.url) else {
                self.drop_tracker(h);
                return;
            };
            c.req.clear();
            tracker::build_scrape(&surl, &[t.meta.info_hash], &mut c.req);
            c.sent = 0;
            c.resp.clear();
            let bind = self.opts.bind.filter(|b| b.is_ipv4() == ip.is_ipv4());
            match net::connect(addr, bind) {
                Ok(mut s) => {
                    if self
                        .poll
                        .registry()
                        .register(
                            &mut s,
                            token(KIND_TRACKER, h),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .is_err()
                    {
                        self.drop_tracker(h);
                        return;
                    }
                    c.stream = Some(s);
                }
                Err(_) => self.drop_tracker(h),
            }
            return;
        }
        if c.url.scheme == Scheme::Udp {
            let params = AnnounceParams {
                info_hash: t.meta.info_hash,
                peer_id: self.peer_id,
                downloaded: t.downloaded,
                left: t.bytes_left(),
                uploaded: t.uploaded,
                event: c.job.event,
                key: u32::from_le_bytes([
                    self.peer_id[8],
                    self.peer_id[9],
                    self.peer_id[10],
                    self.peer_id[11],
                ]),
                num_want: if c.job.event == TrackerEvent::Stopped {
                    Some(0)
                } else {
                    Some(NUMWANT)
                },
                port: self.listen_port,
                url_data: udp_tracker::url_data(&c.url),
            };
            // The whole exchange is bounded by TRACKER_TIMEOUT; retries come every 5 s.
            let cfg = RetryConfig {
                base: Duration::from_secs(5),
                max_exponent: 1,
            };
            match UdpAnnounce::new(now, addr, params, cfg) {
                Ok(u) => {
                    c.udp = Some(u);
                    self.udp_trackers_poll(now);
                }
                Err(e) => self.tracker_failed(h, e.to_string(), now),
            }
            return;
        }
        let a = Announce {
            info_hash: &t.meta.info_hash,
            peer_id: &self.peer_id,
            port: self.listen_port,
            uploaded: t.uploaded,
            downloaded: t.downloaded,
            left: t.bytes_left(),
            event: c.job.event,
            numwant: if c.job.event == TrackerEvent::Stopped {
                0
            } else {
                NUMWANT
            },
            key: u32::from_le_bytes([
                self.peer_id[8],
                self.peer_id[9],
                self.peer_id[10],
                self.peer_id[11],
            ]),
            tracker_id: None,
        };
        c.req.clear();
        tracker::build_announce(&c.url, &a, &mut c.req);
        c.sent = 0;
        c.resp.clear();
        let bind = self.opts.bind.filter(|b| b.is_ipv4() == ip.is_ipv4());
        match net::connect(addr, bind) {
            Ok(mut s) => {
                if let Err(e) = self.poll.registry().register(
                    &mut s,
                    token(KIND_TRACKER, h),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    self.tracker_failed(h, format!("register: {e}"), now);
                    return;
                }
                c.stream = Some(s);
            }
            Err(e) => self.tracker_failed(h, format!("connect {addr}: {e}"), now),
        }
    }

    fn tracker_io(&mut self, h: Handle, now: Instant) {
        let Some(c) = self.trackers.get_mut(h) else {
            return;
        };
        let Some(s) = c.stream.as_mut() else { return };
        // Write the request.
        while c.sent < c.req.len() {
            match s.write(&c.req[c.sent..]) {
                Ok(n) => c.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let msg = format!("{}: {e}", c.url.host);
                    self.tracker_failed(h, msg, now);
                    return;
                }
            }
        }
        // Read the response until it is complete or the server closes.
        let mut closed = false;
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    if c.resp.len() + n > MAX_TRACKER_RESPONSE {
                        self.tracker_failed(h, "response too large".into(), now);
                        return;
                    }
                    c.resp.extend_from_slice(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let msg = format!("{}: {e}", c.url.host);
                    self.tracker_failed(h, msg, now);
                    return;
                }
            }
        }
        if c.resp.is_empty() && !closed {
            return;
        }
        let resp = std::mem::take(&mut c.resp);
        let parsed = tracker::parse_http_response(&resp, closed);
        match parsed {
            Ok(None) if !closed => {
                c.resp = resp;
            }
            Ok(None) => self.tracker_failed(h, "truncated response".into(), now),
            Err(e) => self.tracker_failed(h, e.to_string(), now),
            Ok(Some(r)) => {
                if matches!(r.status, 301 | 302 | 303 | 307 | 308) {
                    let loc = r.location.map(str::to_string);
                    self.tracker_redirect(h, loc, now);
                } else if r.status != 200 {
                    self.tracker_failed(h, format!("HTTP status {}", r.status), now);
                } else if c.scrape {
                    let hash = self.torrents[c.torrent].t.meta.info_hash;
                    match tracker::parse_scrape(&r.body, &hash) {
                        Ok(Some((seeders, leechers, _))) => self.scrape_done(h, seeders, leechers),
                        _ => self.drop_tracker(h),
                    }
                } else {
                    match tracker::parse_announce(&r.body) {
                        Ok(a) => self.tracker_done(h, a, now),
                        Err(e) => self.tracker_failed(h, e.to_string(), now),
                    }
                }
            }
        }
    }

    fn tracker_redirect(&mut self, h: Handle, loc: Option<String>, now: Instant) {
        let Some(c) = self.trackers.get_mut(h) else {
            return;
        };
        let Some(loc) = loc else {
            self.tracker_failed(h, "redirect without location".into(), now);
            return;
        };
        c.redirects += 1;
        if c.redirects > tracker::MAX_REDIRECTS {
            self.tracker_failed(h, "too many redirects".into(), now);
            return;
        }
        match tracker::resolve_redirect(&c.url, &loc) {
            Ok(u) if u.scheme == Scheme::Http => {
                c.url = u;
                if let Some(mut s) = c.stream.take() {
                    let _ = self.poll.registry().deregister(&mut s);
                }
                self.tracker_begin(h, now);
            }
            Ok(_) => self.tracker_failed(h, "redirect to unsupported scheme".into(), now),
            Err(e) => self.tracker_failed(h, e.to_string(), now),
        }
    }

    fn tracker_done(&mut self, h: Handle, a: tracker::AnnounceResponse, now: Instant) {
        let Some(c) = self.trackers.get(h) else {
            return;
        };
        let ti = c.torrent;
        let job = c.job.clone();
        let secondary = c.secondary;
        self.drop_tracker(h);
        let e = &mut self.torrents[ti];
        if secondary {
            // BEP 7 second-family announce: its peers count, the schedule does not.
            if a.failure.is_none() {
                debug!(
                    "tracker {}: {} peers (other address family)",
                    job.url,
                    a.peers.len()
                );
                let (port, bind) = (self.listen_port, self.opts.bind);
                for addr in a.peers.iter().filter(|x| !is_self(x, port, bind)) {
                    e.t.add_candidate(*addr, now);
                }
                self.connect_soon = true;
            }
            return;
        }
        if let Some(f) = a.failure {
            warn!("tracker {}: failure: {}", job.url, f);
            eprintln!("atorrent: tracker {}: {}", job.url, f);
            e.ann.on_failure(now, &job, f);
            return;
        }
        if let Some(w) = &a.warning {
            warn!("tracker {}: warning: {}", job.url, w);
        }
        info!("tracker {}: {} peers", job.url, a.peers.len());
        self.connect_soon = true;
        let (port, bind) = (self.listen_port, self.opts.bind);
        for addr in &a.peers {
            if !is_self(addr, port, bind) {
                e.t.add_candidate(*addr, now);
            }
        }
        e.ann.on_success(
            now,
            &job,
            Reply {
                interval: a.interval,
                min_interval: a.min_interval,
                warning: a.warning.clone(),
                peers: a.peers.len(),
                seeders: a.complete,
                leechers: a.incomplete,
            },
        );
        if job.event != TrackerEvent::Stopped {
            self.start_scrape(ti, job, now);
        }
    }

    fn tracker_failed(&mut self, h: Handle, err: String, now: Instant) {
        let Some(c) = self.trackers.get(h) else {
            return;
        };
        let ti = c.torrent;
        let job = c.job.clone();
        let scrape = c.scrape || c.secondary;
        self.drop_tracker(h);
        if scrape {
            debug!("tracker {}: scrape failed: {}", job.url, err);
        } else if job.event != TrackerEvent::Stopped {
            warn!("tracker {}: {}", job.url, err);
            self.torrents[ti].ann.on_failure(now, &job, err);
        }
    }

    fn drop_tracker(&mut self, h: Handle) {
        if let Some(mut c) = self.trackers.remove(h) {
            if let Some(mut s) = c.stream.take() {
                let _ = self.poll.registry().deregister(&mut s);
            }
        }
    }

    fn tracker_timeouts(&mut self, now: Instant) {
        let late: Vec<Handle> = self
            .trackers
            .iter()
            .filter(|(_, c)| now >= c.deadline)
            .map(|(h, _)| h)
            .collect();
        for h in late {
            self.tracker_failed(h, "timed out".into(), now);
        }
    }
}

/// Whether a tracker-supplied address is this process (trackers list the announcer too).
fn is_self(addr: &SocketAddr, port: u16, bind: Option<IpAddr>) -> bool {
    addr.port() == port
        && match bind {
            Some(b) => addr.ip() == b,
            None => addr.ip().is_loopback(),
        }
}

/// Bytes in a short human unit (KiB-based, as most clients show).
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
#[cfg(test)]
mod size_tests {
    /// Issue 8: a daemon holds thousands of mostly idle torrents, so every byte of an entry
    /// counts per torrent. Download state, piece assembly, the choker, rate limits and rare
    /// settings are boxed; this fails when a field lands inline again (64-bit layout: Entry
    /// 624, Torrent 416, Storage 152 bytes now).
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn entry_inline_size_stays_under_a_kib() {
        assert!(std::mem::size_of::<super::Entry>() <= 640);
        assert!(std::mem::size_of::<crate::torrent::Torrent>() <= 424);
        assert!(std::mem::size_of::<crate::storage::Storage>() <= 160);
    }
}
