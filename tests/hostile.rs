//! Hostile peers (issue 7, part 2): a small misbehaving BitTorrent peer written here with
//! blocking std sockets, run on loopback against a real atorrent process. Each case checks
//! three things: atorrent does not crash, the offender's connection is dropped (EOF or reset
//! within a bound, and a `peer ADDR: closed: REASON` line in the -v log), and an honest
//! atorrent peer on the same torrent still gets correct bytes.
//!
//! The hostile peer dials a seeder (cases a-f) or is dialled by a downloader given
//! `--peer hostile --peer honest` (cases g, h). Only the encoders it needs are written here;
//! they are deliberately independent of the crate's `wire` module so a bug there cannot hide.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;

/// Per-test bound asked for by the issue (the harness allows more).
const CASE_LIMIT: Duration = Duration::from_secs(60);
/// How long atorrent may take to drop an offender it can detect from one message.
const DROP_WITHIN: Duration = Duration::from_secs(5);
const BLOCK: u32 = 16 * 1024;
const PIECE_LEN: u32 = 32 * 1024;
/// Not a multiple of the piece length, so the last piece is short (6 913 bytes).
const FILE_LEN: u64 = 40 * PIECE_LEN as u64 + 6_913;

// ---------------------------------------------------------------------------------------------
// Wire encoders (BEP 3, BEP 6)

mod id {
    pub const CHOKE: u8 = 0;
    pub const UNCHOKE: u8 = 1;
    pub const INTERESTED: u8 = 2;
    pub const HAVE: u8 = 4;
    pub const BITFIELD: u8 = 5;
    pub const REQUEST: u8 = 6;
    pub const PIECE: u8 = 7;
}

fn handshake(info_hash: &[u8; 20], peer_id: &[u8; 20], fast: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(68);
    v.push(19);
    v.extend_from_slice(b"BitTorrent protocol");
    let mut reserved = [0u8; 8];
    if fast {
        reserved[7] |= 0x04;
    }
    v.extend_from_slice(&reserved);
    v.extend_from_slice(info_hash);
    v.extend_from_slice(peer_id);
    v
}

fn msg(mid: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + payload.len());
    v.extend_from_slice(&(payload.len() as u32 + 1).to_be_bytes());
    v.push(mid);
    v.extend_from_slice(payload);
    v
}

fn u32s(vals: &[u32]) -> Vec<u8> {
    vals.iter().flat_map(|v| v.to_be_bytes()).collect()
}

fn request(index: u32, begin: u32, length: u32) -> Vec<u8> {
    msg(id::REQUEST, &u32s(&[index, begin, length]))
}

fn have(index: u32) -> Vec<u8> {
    msg(id::HAVE, &index.to_be_bytes())
}

fn piece(index: u32, begin: u32, data: &[u8]) -> Vec<u8> {
    let mut p = u32s(&[index, begin]);
    p.extend_from_slice(data);
    msg(id::PIECE, &p)
}

/// A bitfield payload with the first `n` bits set and the spare bits clear.
fn full_bitfield(n: u32) -> Vec<u8> {
    let mut b = vec![0xFFu8; n.div_ceil(8) as usize];
    if n % 8 != 0 {
        *b.last_mut().unwrap() = 0xFF << (8 - n % 8);
    }
    b
}

fn peer_id(tag: &str) -> [u8; 20] {
    let mut id = *b"-HX0001-000000000000";
    for (d, s) in id[8..].iter_mut().zip(tag.bytes()) {
        *d = s;
    }
    id
}

fn parse_hash(hex: &str) -> [u8; 20] {
    let mut h = [0u8; 20];
    for (i, b) in h.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex info-hash");
    }
    h
}

// ---------------------------------------------------------------------------------------------
// The hostile peer's connection

/// One blocking connection of the hostile peer; every read has a timeout.
struct Conn {
    s: TcpStream,
}

impl Conn {
    /// Dials `to` from a fresh loopback address of our own, so the log line names only us.
    fn dial(to: SocketAddrV4) -> Conn {
        let from = SocketAddr::V4(SocketAddrV4::new(loopback_ip(), 0));
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        sock.bind(&from.into()).expect("bind hostile peer");
        sock.connect_timeout(&SocketAddr::V4(to).into(), secs(5))
            .unwrap_or_else(|e| panic!("hostile peer cannot reach {to}: {e}"));
        Conn::wrap(sock.into())
    }

    fn wrap(s: TcpStream) -> Conn {
        s.set_read_timeout(Some(Duration::from_millis(200))).ok();
        s.set_write_timeout(Some(secs(5))).ok();
        s.set_nodelay(true).ok();
        Conn { s }
    }

    fn local(&self) -> SocketAddr {
        self.s.local_addr().expect("local_addr")
    }

    /// Sends bytes; an error means atorrent already dropped us (the caller decides).
    fn send(&mut self, b: &[u8]) -> io::Result<()> {
        self.s.write_all(b)
    }

    /// Reads exactly `n` bytes before `within` runs out.
    fn read_exact_within(&mut self, n: usize, within: Duration) -> io::Result<Vec<u8>> {
        let end = Instant::now() + within;
        let mut buf = vec![0u8; n];
        let mut got = 0;
        while got < n {
            match self.s.read(&mut buf[got..]) {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(k) => got += k,
                Err(e) if is_timeout(&e) => {
                    if Instant::now() >= end {
                        return Err(ErrorKind::TimedOut.into());
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(buf)
    }

    /// Reads the remote handshake; returns its info-hash.
    fn read_handshake(&mut self) -> io::Result<[u8; 20]> {
        let hs = self.read_exact_within(68, secs(10))?;
        if hs[0] != 19 || &hs[1..20] != b"BitTorrent protocol" {
            return Err(io::Error::new(ErrorKind::InvalidData, "not a handshake"));
        }
        Ok(hs[28..48].try_into().unwrap())
    }

    /// Reads one message (None for keep-alive); lengths above 1 MiB are a test failure.
    fn read_msg(&mut self, within: Duration) -> io::Result<Option<(u8, Vec<u8>)>> {
        let len = self.read_exact_within(4, within)?;
        let len = u32::from_be_bytes(len.try_into().unwrap()) as usize;
        if len == 0 {
            return Ok(None);
        }
        assert!(len <= 1 << 20, "atorrent sent a {len}-byte message");
        let body = self.read_exact_within(len, within)?;
        Ok(Some((body[0], body[1..].to_vec())))
    }

    /// Waits for a message with id `want`, skipping others.
    fn wait_msg(&mut self, want: u8, within: Duration) -> Vec<u8> {
        let end = Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.read_msg(left) {
                Ok(Some((m, p))) if m == want => return p,
                Ok(_) => {}
                Err(e) => panic!("waiting for message {want}: {e}"),
            }
        }
    }

    /// Like `wait_msg`, but returns false instead of panicking on timeout.
    fn try_wait_msg(&mut self, want: u8, within: Duration) -> bool {
        let end = Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.read_msg(left) {
                Ok(Some((m, _))) if m == want => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }

    /// Reads and discards until EOF or reset; panics if the connection is still open after
    /// `within`. Returns how long it took.
    fn expect_dropped(&mut self, what: &str, within: Duration) -> Duration {
        let start = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => return start.elapsed(),
                Ok(_) => {}
                Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return start.elapsed(), // reset: dropped as well
            }
            assert!(
                start.elapsed() < within,
                "{what}: atorrent did not drop the hostile connection within {within:?}"
            );
        }
    }

    /// True if the connection is still open after reading for `for_` (data is discarded).
    fn still_open_after(&mut self, for_: Duration) -> bool {
        let end = Instant::now() + for_;
        let mut buf = vec![0u8; 64 * 1024];
        while Instant::now() < end {
            match self.s.read(&mut buf) {
                Ok(0) => return false,
                Ok(_) => {}
                Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

// ---------------------------------------------------------------------------------------------
// Process checks

/// True while the process exists and is not a zombie.
fn alive(p: &Proc) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", p.pid())) else {
        return false;
    };
    // Field 3, after the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .map(|(_, r)| r.trim_start().chars().next());
    !matches!(state, Some(Some('Z' | 'X')) | None)
}

/// Resident set size in KiB.
fn rss_kib(p: &Proc) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{}/status", p.pid())).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn assert_alive(p: &mut Proc) {
    let err = p.stderr_text();
    assert!(!err.contains("panicked"), "{} panicked:\n{err}", p.name);
    assert!(alive(p), "{} is no longer running:\n{err}", p.name);
}

/// Every log line (stdout and stderr) containing `needle`.
fn log_lines(p: &mut Proc, needle: &str) -> Vec<String> {
    let mut v: Vec<String> = p
        .lines()
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect();
    v.extend(
        p.stderr_text()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string),
    );
    v
}

/// Waits for a log line `peer ADDR: closed: ...` and asserts it contains `reason`.
fn expect_closed_log(w: &Work, p: &mut Proc, addr: SocketAddr, reason: &str) -> String {
    let needle = format!("peer {addr}: closed: ");
    let end = Instant::now() + w.cap(DROP_WITHIN);
    loop {
        if let Some(l) = log_lines(p, &needle).into_iter().next() {
            assert!(
                l.contains(reason),
                "{addr} was closed for another reason than {reason:?}: {l}"
            );
            return l;
        }
        assert!(
            Instant::now() < end,
            "no `{needle}` line in {}'s log",
            p.name
        );
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A torrent of one random file and a verbose atorrent seeder for it.
struct Seeded {
    w: Work,
    src: PathBuf,
    torrent: PathBuf,
    hash: [u8; 20],
    seed: Proc,
    addr: SocketAddrV4,
    pieces: u32,
}

impl Seeded {
    fn start(name: &str) -> Seeded {
        let w = Work::with_limit(name, CASE_LIMIT);
        let seed_dir = w.mkdir("seed");
        let src = seed_dir.join("data.bin");
        write_random_file(&src, FILE_LEN, 7);
        let torrent = w.path("data.torrent");
        create_torrent(&w, &src, &torrent);
        let addr = endpoint();
        let mut seed = atorrent_download(
            &w,
            "seed",
            &torrent,
            &seed_dir,
            addr,
            &["--seed", "--no-dht", "-v"],
        );
        let line = seed.wait_line(&w, "seeding ", secs(20));
        let hex = line.split_whitespace().nth(1).expect("seeding <hash>");
        wait_listening(&w, addr, "atorrent seeder", secs(5));
        Seeded {
            hash: parse_hash(hex),
            w,
            src,
            torrent,
            seed,
            addr,
            pieces: FILE_LEN.div_ceil(PIECE_LEN as u64) as u32,
        }
    }

    /// A hostile connection past the handshake (atorrent's reply is read).
    fn hostile(&self, tag: &str, fast: bool) -> Conn {
        let mut c = Conn::dial(self.addr);
        c.send(&handshake(&self.hash, &peer_id(tag), fast))
            .expect("send handshake");
        let h = c.read_handshake().expect("seeder's handshake");
        assert_eq!(h, self.hash, "seeder answered with another info-hash");
        c
    }

    /// An honest atorrent downloader fetching from the seeder; asserts the bytes.
    fn honest_download(&mut self, name: &str) {
        let peer = self.addr.to_string();
        let dl = self.w.mkdir(name);
        let mut p = atorrent_download(
            &self.w,
            name,
            &self.torrent,
            &dl,
            endpoint(),
            &["--peer", &peer, "--no-dht"],
        );
        p.wait_line(&self.w, "complete ", secs(40));
        p.expect_success(&self.w, secs(10));
        assert_same_file(&self.src, &dl.join("data.bin"));
        assert_alive(&mut self.seed);
    }
}

fn create_torrent(w: &Work, src: &Path, out: &Path) {
    let mut cmd = Command::new(atorrent_bin());
    cmd.arg("create")
        .arg(src)
        .arg("-o")
        .arg(out)
        .arg("--piece-length")
        .arg(PIECE_LEN.to_string());
    let o = run(w, cmd, secs(20));
    assert!(o.status.success(), "atorrent create failed: {}", o.stderr);
}

// ---------------------------------------------------------------------------------------------
// a. length prefix near 4 GiB

#[test]
fn seeder_drops_length_prefix_near_4gib() {
    let mut s = Seeded::start("hostile_4gib");
    let mut c = s.hostile("len4g", false);
    let from = c.local();
    // The prefix alone must be enough: atorrent must not wait for (or buffer) 4 GiB.
    c.send(&0xFFFF_FFF0u32.to_be_bytes()).expect("send prefix");
    let _ = c.send(&[id::PIECE, 0, 0, 0, 0]);
    c.expect_dropped("4 GiB length prefix", DROP_WITHIN);
    expect_closed_log(&s.w, &mut s.seed, from, "exceeds cap");
    assert!(rss_kib(&s.seed) < 64 * 1024, "seeder RSS grew past 64 MiB");
    s.honest_download("honest");
}

// ---------------------------------------------------------------------------------------------
// b. bad requests

#[test]
fn seeder_drops_out_of_range_requests() {
    let mut s = Seeded::start("hostile_requests");
    let last = s.pieces - 1;
    let last_len = (FILE_LEN - last as u64 * PIECE_LEN as u64) as u32;
    let cases: [(&str, Vec<u8>); 6] = [
        ("index == piece count", request(s.pieces, 0, BLOCK)),
        ("index u32::MAX", request(u32::MAX, 0, BLOCK)),
        (
            "begin+length past the piece end",
            request(0, PIECE_LEN - BLOCK + 1, BLOCK),
        ),
        (
            "begin+length past the short last piece",
            request(last, 0, last_len + 1),
        ),
        (
            "begin+length overflows u32",
            request(0, u32::MAX - 10, BLOCK),
        ),
        ("length > 16 KiB", request(0, 0, 2 * BLOCK)),
    ];
    for (i, (what, req)) in cases.iter().enumerate() {
        // Interested and unchoked first, so the request is not just ignored as a choked one.
        // The wait allows for a rechoke (10 s): closed peers keep their unchoke slot until then
        // (see `seeder_frees_the_unchoke_slot_of_a_closed_peer`).
        let mut c = s.hostile(&format!("req{i}"), i % 2 == 0);
        let from = c.local();
        c.send(&msg(id::INTERESTED, &[])).expect("interested");
        assert!(
            c.try_wait_msg(id::UNCHOKE, secs(12)),
            "{what}: never unchoked"
        );
        c.send(req).expect("send request");
        c.expect_dropped(what, DROP_WITHIN);
        expect_closed_log(&s.w, &mut s.seed, from, "bad request");
        assert_alive(&mut s.seed);
    }
    // A request while still choked is checked as well.
    let mut c = s.hostile("reqchoked", false);
    let from = c.local();
    c.send(&request(s.pieces + 5, 0, BLOCK))
        .expect("send request");
    c.expect_dropped("bad request while choked", DROP_WITHIN);
    expect_closed_log(&s.w, &mut s.seed, from, "bad request");
    s.honest_download("honest");
}

// ---------------------------------------------------------------------------------------------
// c. bitfield of the wrong length

#[test]
fn seeder_drops_bitfields_of_the_wrong_length() {
    let mut s = Seeded::start("hostile_bitfield");
    let good = full_bitfield(s.pieces);
    let mut long = good.clone();
    long.push(0);
    let short = good[..good.len() - 1].to_vec();
    let mut spare = good.clone();
    *spare.last_mut().unwrap() |= 1; // a bit past the last piece (41 pieces: 7 spare bits)
    let huge = vec![0xFFu8; 20_000]; // fits the 32 KiB receive buffer, 4000x too long
    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("one byte too long", long, "bad bitfield"),
        ("one byte too short", short, "bad bitfield"),
        ("spare bits set", spare, "bad bitfield"),
        ("empty", Vec::new(), "bad bitfield"),
        ("20 000 bytes", huge, "bad bitfield"),
    ];
    for (i, (what, bits, reason)) in cases.iter().enumerate() {
        let mut c = s.hostile(&format!("bf{i}"), false);
        let from = c.local();
        c.send(&msg(id::BITFIELD, bits)).expect("send bitfield");
        c.expect_dropped(what, DROP_WITHIN);
        expect_closed_log(&s.w, &mut s.seed, from, reason);
        assert_alive(&mut s.seed);
    }
    s.honest_download("honest");
}

// ---------------------------------------------------------------------------------------------
// d. request and have floods

#[test]
fn seeder_survives_request_and_have_floods() {
    let mut s = Seeded::start("hostile_flood");
    let rss0 = rss_kib(&s.seed);
    let n = s.pieces;
    let flood: Vec<u8> = (0..5000u32)
        .flat_map(|k| request(k % (n - 1), 0, BLOCK)) // the last piece is short
        .collect();

    // Choked, no fast extension: BEP 3 says ignore; the connection may stay.
    let mut c = s.hostile("floodchoked", false);
    let from = c.local();
    c.send(&flood).expect("flood while choked");
    let open = c.still_open_after(secs(2));
    assert_alive(&mut s.seed);
    if !open {
        expect_closed_log(&s.w, &mut s.seed, from, "request flood");
    }
    drop(c);

    // Choked, fast extension: every request is rejected, not queued; we never read, so the
    // rejects back up and atorrent must neither block nor grow.
    let mut c = s.hostile("floodfast", true);
    for _ in 0..4 {
        if c.send(&flood).is_err() {
            break;
        }
    }
    assert_alive(&mut s.seed);
    drop(c);

    // Unchoked: 5000 requests without reading a byte. atorrent keeps at most
    // MAX_INCOMING_REQUESTS (512) queued, so it must drop us as a flood.
    let mut c = s.hostile("floodopen", false);
    let from = c.local();
    c.send(&msg(id::INTERESTED, &[])).expect("interested");
    c.wait_msg(id::UNCHOKE, secs(5));
    let _ = c.send(&flood);
    c.expect_dropped("5000 requests while unchoked", secs(10));
    expect_closed_log(&s.w, &mut s.seed, from, "request flood");
    assert_alive(&mut s.seed);

    // Have flood: 100 000 valid haves are fine (never all pieces: a seeder drops a fellow seed
    // as uninteresting), then one out of range gets us dropped.
    let mut c = s.hostile("haveflood", false);
    let from = c.local();
    let haves: Vec<u8> = (0..100_000u32).flat_map(|k| have(k % (n - 1))).collect();
    c.send(&haves).expect("have flood");
    assert!(c.still_open_after(secs(1)), "valid haves got us dropped");
    let _ = c.send(&have(n));
    c.expect_dropped("have with index == piece count", DROP_WITHIN);
    expect_closed_log(&s.w, &mut s.seed, from, "out of range");

    let rss1 = rss_kib(&s.seed);
    assert!(
        rss1 < rss0 + 16 * 1024,
        "seeder RSS grew from {rss0} KiB to {rss1} KiB under floods"
    );
    s.honest_download("honest");
}

// ---------------------------------------------------------------------------------------------
// e. slow handshake

#[test]
fn seeder_times_out_a_handshake_that_never_completes() {
    let mut s = Seeded::start("hostile_slow_handshake");
    let c = Conn::dial(s.addr);
    let from = c.local();
    let started = Instant::now();
    let hs = handshake(&s.hash, &peer_id("slow"), false);
    // Trickle one byte a second; 67 bytes would take longer than the 20 s timeout.
    let mut tx = c.s.try_clone().expect("clone");
    let trickle = thread::spawn(move || {
        for b in &hs[..67] {
            if tx.write_all(std::slice::from_ref(b)).is_err() {
                return;
            }
            thread::sleep(secs(1));
        }
    });
    // The seeder keeps serving meanwhile.
    s.honest_download("honest");
    let mut c = c;
    let left = secs(30).saturating_sub(started.elapsed());
    c.expect_dropped("slow handshake", left);
    let took = started.elapsed();
    assert!(
        took >= secs(19),
        "dropped after {took:?}, before the 20 s handshake timeout"
    );
    expect_closed_log(&s.w, &mut s.seed, from, "handshake timeout");
    assert_alive(&mut s.seed);
    trickle.join().unwrap();
}

// ---------------------------------------------------------------------------------------------
// f. wrong info-hash

#[test]
fn seeder_drops_a_wrong_info_hash_at_once() {
    let mut s = Seeded::start("hostile_wrong_hash");
    let mut wrong = s.hash;
    wrong[0] ^= 0x80;
    let mut c = Conn::dial(s.addr);
    let from = c.local();
    c.send(&handshake(&wrong, &peer_id("wronghash"), true))
        .expect("send handshake");
    // Nothing of ours may leak to a peer for another torrent: EOF before any byte.
    let mut b = [0u8; 1];
    let start = Instant::now();
    loop {
        match c.s.read(&mut b) {
            Ok(0) => break,
            Ok(_) => panic!("seeder answered a handshake for a torrent it does not have"),
            Err(e) if is_timeout(&e) => {
                assert!(
                    start.elapsed() < secs(2),
                    "wrong info-hash not dropped in 2 s"
                )
            }
            Err(_) => break,
        }
    }
    expect_closed_log(&s.w, &mut s.seed, from, "unknown info-hash");
    s.honest_download("honest");
}

// ---------------------------------------------------------------------------------------------
// g, h. hostile seeders dialled by an atorrent downloader

/// What a hostile seeder does with requests.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Answers every request at once with garbage of the right length.
    Garbage,
    /// Unchokes and then never answers.
    Silent,
}

#[derive(Default)]
struct Stats {
    connections: AtomicU32,
    /// Connections that ended with EOF/reset from atorrent's side.
    dropped: AtomicU32,
    blocks_sent: AtomicU32,
    requests_seen: AtomicU32,
    stop: AtomicBool,
    errors: Mutex<Vec<String>>,
}

/// A listening hostile seeder on its own loopback address; serves connections one at a time.
struct HostileSeeder {
    addr: SocketAddrV4,
    stats: Arc<Stats>,
    thread: Option<thread::JoinHandle<()>>,
}

impl HostileSeeder {
    fn start(mode: Mode, pieces: u32) -> HostileSeeder {
        let ip: Ipv4Addr = loopback_ip();
        let l = TcpListener::bind(SocketAddrV4::new(ip, 0)).expect("bind hostile seeder");
        let addr = match l.local_addr().unwrap() {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!(),
        };
        l.set_nonblocking(true).unwrap();
        let stats = Arc::new(Stats::default());
        let st = stats.clone();
        let thread = thread::spawn(move || {
            while !st.stop.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).ok();
                        st.connections.fetch_add(1, Ordering::SeqCst);
                        let c = Conn::wrap(s);
                        if let Err(e) = serve(c, mode, pieces, &st) {
                            st.errors.lock().unwrap().push(e);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => {
                        st.errors.lock().unwrap().push(format!("accept: {e}"));
                        return;
                    }
                }
            }
        });
        HostileSeeder {
            addr,
            stats,
            thread: Some(thread),
        }
    }

    fn connections(&self) -> u32 {
        self.stats.connections.load(Ordering::SeqCst)
    }
}

impl Drop for HostileSeeder {
    fn drop(&mut self) {
        self.stats.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection from the downloader: handshake, have-all bitfield, unchoke, then requests.
fn serve(mut c: Conn, mode: Mode, pieces: u32, st: &Stats) -> Result<(), String> {
    let ih = c.read_handshake().map_err(|e| format!("handshake: {e}"))?;
    c.send(&handshake(&ih, &peer_id("hostileseed"), false))
        .map_err(|e| format!("send handshake: {e}"))?;
    c.send(&msg(id::BITFIELD, &full_bitfield(pieces)))
        .map_err(|e| format!("send bitfield: {e}"))?;
    c.send(&msg(id::UNCHOKE, &[]))
        .map_err(|e| format!("send unchoke: {e}"))?;
    let mut junk = Prng::new(0xBAD);
    loop {
        if st.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        match c.read_msg(Duration::from_millis(300)) {
            Ok(Some((id::REQUEST, p))) if p.len() == 12 => {
                st.requests_seen.fetch_add(1, Ordering::SeqCst);
                if mode == Mode::Garbage {
                    let f = |i: usize| u32::from_be_bytes(p[i..i + 4].try_into().unwrap());
                    let (index, begin, len) = (f(0), f(4), f(8));
                    let mut data = vec![0u8; len.min(BLOCK) as usize];
                    junk.fill(&mut data);
                    if c.send(&piece(index, begin, &data)).is_err() {
                        st.dropped.fetch_add(1, Ordering::SeqCst);
                        return Ok(());
                    }
                    st.blocks_sent.fetch_add(1, Ordering::SeqCst);
                }
            }
            Ok(Some((id::CHOKE, _))) | Ok(Some(_)) | Ok(None) => {}
            Err(e) if e.kind() == ErrorKind::TimedOut => {}
            Err(_) => {
                st.dropped.fetch_add(1, Ordering::SeqCst);
                return Ok(());
            }
        }
    }
}

/// A hostile seeder, an atorrent downloader given `--peer hostile`, and an honest atorrent
/// seeder. On loopback the honest seeder alone delivers the whole file in tens of
/// milliseconds, before the hostile one is even asked for a block, so the honest seeder is
/// started only once the hostile one has been sent requests, and then dials the downloader
/// (`--peer downloader`). Returns how long the download took from the downloader's start.
fn download_beside_hostile_seeder(name: &str, mode: Mode) -> (Work, Proc, HostileSeeder, Duration) {
    let w = Work::with_limit(name, CASE_LIMIT);
    let seed_dir = w.mkdir("seed");
    let src = seed_dir.join("data.bin");
    write_random_file(&src, FILE_LEN * 4, 9);
    let torrent = w.path("data.torrent");
    create_torrent(&w, &src, &torrent);
    let pieces = (FILE_LEN * 4).div_ceil(PIECE_LEN as u64) as u32;

    let hostile = HostileSeeder::start(mode, pieces);
    let dl = w.mkdir("dl");
    let dl_addr = endpoint();
    let hp = hostile.addr.to_string();
    let started = Instant::now();
    let mut p = atorrent_download(
        &w,
        "downloader",
        &torrent,
        &dl,
        dl_addr,
        &["--peer", &hp, "--no-dht", "-v"],
    );
    let end = Instant::now() + w.cap(secs(10));
    while hostile.stats.requests_seen.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < end,
            "the downloader sent the hostile seeder no request in 10 s"
        );
        thread::sleep(Duration::from_millis(10));
    }
    wait_listening(&w, dl_addr, "downloader", secs(5));

    let dp = dl_addr.to_string();
    let mut honest = atorrent_download(
        &w,
        "honest-seed",
        &torrent,
        &seed_dir,
        endpoint(),
        &["--seed", "--no-dht", "--peer", &dp],
    );
    p.wait_line(&w, "complete ", secs(45));
    let took = started.elapsed();
    p.expect_success(&w, secs(10));
    assert_same_file(&src, &dl.join("data.bin"));
    assert_alive(&mut honest);
    (w, p, hostile, took)
}

#[test]
fn downloader_bans_a_seeder_sending_corrupt_pieces() {
    let (_w, mut p, hostile, _) = download_beside_hostile_seeder("hostile_corrupt", Mode::Garbage);
    let st = &hostile.stats;
    let sent = st.blocks_sent.load(Ordering::SeqCst);
    assert!(sent > 0, "the hostile seeder was never asked for a block");
    let conns = hostile.connections();
    assert!(
        conns <= 3,
        "the corrupt seeder was dialled {conns} times; it should be banned"
    );
    let closed = log_lines(&mut p, &format!("peer {}: closed: ", hostile.addr));
    assert!(
        closed.iter().any(|l| l.contains("sent corrupt data")),
        "downloader did not drop {} for corrupt data ({sent} garbage blocks sent); \
         close lines: {closed:?}",
        hostile.addr
    );
    let hash_fail = log_lines(&mut p, "failed its hash check");
    assert!(!hash_fail.is_empty(), "no hash failure was logged");
    eprintln!(
        "corrupt seeder: {conns} connection(s), {sent} garbage blocks, {} hash failures; {}",
        hash_fail.len(),
        closed.join(" | ")
    );
}

#[test]
fn downloader_completes_beside_a_seeder_that_never_answers() {
    let (_w, _p, hostile, took) = download_beside_hostile_seeder("hostile_silent", Mode::Silent);
    let asked = hostile.stats.requests_seen.load(Ordering::SeqCst);
    assert!(
        hostile.connections() >= 1,
        "the downloader never dialled the silent seeder"
    );
    // Not an assertion on atorrent, but a check that the case tested what it says.
    eprintln!("silent seeder was sent {asked} requests; download took {took:?}");
}

/// Smart ban must bound the damage by count, not by time: once a peer is banned for a corrupt
/// piece it must get no more requests and be closed before the next piece fails.
#[test]
fn downloader_bounds_the_corrupt_pieces_it_accepts_from_a_banned_peer() {
    let (_w, mut p, hostile, _) =
        download_beside_hostile_seeder("hostile_corrupt_bound", Mode::Garbage);
    let fails = log_lines(&mut p, "failed its hash check").len();
    let sent = hostile.stats.blocks_sent.load(Ordering::SeqCst);
    assert!(
        fails <= 8,
        "{fails} pieces failed their hash check ({sent} garbage blocks taken) before the \
         corrupt peer was dropped; MAX_HASH_FAILURES is 3"
    );
}

/// A peer that unchokes and then never answers must not stall the honest peers: its requests
/// must not pin every partial-piece slot until the 30 s snub timeout.
#[test]
fn downloader_does_not_stall_behind_a_seeder_that_never_answers() {
    let (_w, _p, _hostile, took) =
        download_beside_hostile_seeder("hostile_silent_stall", Mode::Silent);
    assert!(
        took < secs(15),
        "download took {took:?} beside a silent peer (the honest seeder alone needs ~1 s)"
    );
}

// ---------------------------------------------------------------------------------------------
// Unchoke slots of peers that leave

/// Peers that become interested, get an upload slot at once (the choker's fast path) and then
/// disconnect must give the slot back; otherwise four such peers lock every newcomer out until
/// the next 10 s rechoke, again and again.
#[test]
fn seeder_frees_the_unchoke_slot_of_a_closed_peer() {
    let s = Seeded::start("hostile_slot_leak");
    // Two rounds: a rechoke landing in the first round's window cannot also land in the second.
    for round in 0..2 {
        for k in 0..4 {
            let mut c = s.hostile(&format!("slot{round}{k}"), false);
            c.send(&msg(id::INTERESTED, &[])).expect("interested");
            assert!(
                c.try_wait_msg(id::UNCHOKE, secs(12)),
                "round {round}: peer {k} never unchoked"
            );
            // Dropped here: the slot must be freed.
        }
        let mut c = s.hostile(&format!("slot{round}new"), false);
        c.send(&msg(id::INTERESTED, &[])).expect("interested");
        assert!(
            c.try_wait_msg(id::UNCHOKE, secs(1)),
            "round {round}: a newcomer got no free slot after four unchoked peers left"
        );
    }
}

/// A handshake with the BEP 10 extension bit set.
fn ext_handshake(info_hash: &[u8; 20], peer_id: &[u8; 20]) -> Vec<u8> {
    let mut v = handshake(info_hash, peer_id, false);
    v[20 + 5] |= 0x10;
    v
}

/// A ut_pex message listing `n` peers on closed loopback ports (never anything off this host).
fn pex_flood(n: u32) -> Vec<u8> {
    let mut added = Vec::with_capacity(n as usize * 6);
    for i in 0..n {
        added.extend_from_slice(&[127, 255, (i >> 8) as u8, i as u8]);
        added.extend_from_slice(&(1u16).to_be_bytes());
    }
    let mut payload = vec![2u8]; // atorrent's ut_pex id (ext::OUR_UT_PEX_ID)
    payload.extend_from_slice(format!("d5:added{}:", added.len()).as_bytes());
    payload.extend_from_slice(&added);
    payload.push(b'e');
    msg(20, &payload)
}

/// A peer sending a ut_pex flood (2,000 entries, far past BEP 11's 50) is dropped with a
/// logged reason; the seeder keeps serving an honest downloader.
#[test]
fn seeder_drops_a_pex_flood() {
    let mut s = Seeded::start("hostile_pex_flood");
    let mut c = Conn::dial(s.addr);
    c.send(&ext_handshake(&s.hash, &peer_id("PEXFLD"))).unwrap();
    let h = c.read_handshake().expect("seeder's handshake");
    assert_eq!(h, s.hash);
    let mut hs = vec![0u8];
    hs.extend_from_slice(b"d1:md6:ut_pexi1eee");
    c.send(&msg(20, &hs)).unwrap();
    c.send(&pex_flood(2000)).unwrap();
    let addr = c.local();
    c.expect_dropped("pex flood", secs(5));
    expect_closed_log(&s.w, &mut s.seed, addr, "ut_pex message");
    assert!(rss_kib(&s.seed) < 64 * 1024, "seeder memory grew");
    s.honest_download("dl");
}

/// A magnet download given a peer whose extended handshake claims a 2 GiB info dictionary:
/// that peer is dropped (it is not asked for metadata), and the honest peer next to it
/// delivers the metadata and the data.
#[test]
fn magnet_download_drops_a_peer_claiming_a_2gib_info_dict() {
    let w = Work::with_limit("hostile_metadata_size", CASE_LIMIT);
    let seed_dir = w.mkdir("seed");
    let src = seed_dir.join("data.bin");
    write_random_file(&src, FILE_LEN, 9);
    let torrent = w.path("data.torrent");
    create_torrent(&w, &src, &torrent);
    let honest = endpoint();
    let mut seed = atorrent_download(
        &w,
        "seed",
        &torrent,
        &seed_dir,
        honest,
        &["--seed", "--no-dht"],
    );
    let line = seed.wait_line(&w, "seeding ", secs(20));
    let hex = line
        .split_whitespace()
        .nth(1)
        .expect("seeding <hash>")
        .to_string();
    let hash = parse_hash(&hex);

    // The hostile peer: accepts one connection, answers the handshake, claims 2 GiB.
    let hostile = endpoint();
    let listener = std::net::TcpListener::bind(hostile).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok((s, _)) = listener.accept() else {
            return;
        };
        let mut c = Conn::wrap(s);
        let _ = c.read_exact_within(68, Duration::from_secs(10));
        let _ = c.send(&ext_handshake(&hash, &peer_id("BIGMET")));
        let mut hs = vec![0u8];
        hs.extend_from_slice(b"d1:md11:ut_metadatai3ee13:metadata_sizei2147483648ee");
        let _ = c.send(&msg(20, &hs));
        let dropped = c.expect_dropped("2 GiB metadata_size", Duration::from_secs(10));
        let _ = tx.send(dropped);
    });

    let magnet = format!("magnet:?xt=urn:btih:{hex}&x.pe={hostile}&x.pe={honest}");
    let dl = w.mkdir("dl");
    let me = endpoint();
    let mut p = atorrent(
        &w,
        "dl",
        &[
            "download",
            &magnet,
            "--dir",
            dl.to_str().unwrap(),
            "--bind",
            &me.ip().to_string(),
            "--no-dht",
            "-v",
        ],
    );
    p.expect_success(&w, secs(40));
    assert_same_file(&src, &dl.join("data.bin"));
    let dropped = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("the hostile peer was never dropped");
    assert!(
        dropped < Duration::from_secs(10),
        "dropped only after {dropped:?}"
    );
}
