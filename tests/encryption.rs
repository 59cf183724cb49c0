//! MSE/PE (peer encryption) against real peers on loopback: libtorrent with encryption forced
//! (RC4 only) both ways, transmission-cli with `encryption required`, `require` refusing a
//! plaintext-only peer, `prefer` falling back to plaintext, atorrent with itself, and IPv6 on
//! ::1. atorrent runs with `--config FILE -v`, so its stdout carries the engine's debug log:
//! `peer ADDR: encryption rc4|plaintext` once an MSE handshake is done, and
//! `peer ADDR: closed: REASON` when a connection ends. Each test has its own 127.0.x.y
//! addresses (or ::1 with its own ports), a 60 s deadline, and compares the bytes it moved.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;

const LIMIT: Duration = Duration::from_secs(60);

/// Big enough for many pieces and several round trips, small enough for 2 shared cores.
const SIZE: u64 = 3_000_017;

/// A single-file torrent (no trackers) of `SIZE` seeded bytes at `<work>/seed/<file>`.
/// Returns (torrent, source file, seed dir).
fn fixture(w: &Work, file: &str, seed: u64) -> (PathBuf, PathBuf, PathBuf) {
    let seed_dir = w.mkdir("seed");
    let src = seed_dir.join(file);
    write_random_file(&src, SIZE, seed);
    let torrent = w.path(&format!("{file}.torrent"));
    lt_create(w, &src, &torrent, &[], 0);
    (torrent, src, seed_dir)
}

/// `<name>.ini` with debug logging and the given `enable_encryption` (None: the default).
fn config(w: &Work, name: &str, encryption: Option<&str>, ipv6: bool) -> String {
    let mut keys = vec![
        ("log_level", "debug"),
        ("enable_ipv6", if ipv6 { "true" } else { "false" }),
    ];
    if let Some(e) = encryption {
        keys.push(("enable_encryption", e));
    }
    atorrent_config(w, name, &keys).display().to_string()
}

/// `atorrent download --seed --config CFG -v` on `listen`, once it prints `seeding `.
fn seeder(
    w: &Work,
    torrent: &Path,
    dir: &Path,
    listen: SocketAddr,
    cfg: &str,
    extra: &[&str],
) -> Proc {
    let mut args = vec!["--seed", "--config", cfg, "-v"];
    args.extend_from_slice(extra);
    let mut p = atorrent_download_at(w, "atorrent-seed", torrent, dir, listen, &args);
    p.wait_line(w, "seeding ", secs(30));
    p
}

/// `atorrent download --config CFG -v --peer PEER` on `listen`.
fn downloader(
    w: &Work,
    torrent: &Path,
    dir: &Path,
    listen: SocketAddr,
    cfg: &str,
    peer: SocketAddr,
) -> Proc {
    let peer = peer.to_string();
    let args = ["--config", cfg, "-v", "--peer", &peer];
    atorrent_download_at(w, "atorrent-dl", torrent, dir, listen, &args)
}

/// Waits for `atorrent download` to exit 0 with its final `complete ` line.
fn expect_complete(w: &Work, p: &mut Proc, within: Duration) {
    p.expect_success(w, within);
    let lines = p.lines().to_vec();
    assert!(
        lines.iter().any(|l| l.starts_with("complete ")),
        "{}: exited 0 without a `complete ` line; stdout: {lines:?}",
        p.name
    );
}

/// Asserts the log has `needle` (with the peer's log lines in the message when not).
fn assert_log(p: &mut Proc, needle: &str) {
    if !p.saw(needle) {
        let peers = p.lines_with("peer ");
        panic!(
            "{}: no log line with {needle:?}; peer lines: {peers:#?}",
            p.name
        );
    }
}

fn v4(a: std::net::SocketAddrV4) -> SocketAddr {
    SocketAddr::V4(a)
}

// ---------------------------------------------------------------------------------------------
// libtorrent with encryption forced (RC4 only), both directions

#[test]
fn lt_forced_seeder_to_atorrent_default_prefer() {
    let w = Work::with_limit("enc_lt_forced_seed", LIMIT);
    let (torrent, src, seed_dir) = fixture(&w, "a.bin", 21);
    let laddr = endpoint();
    let mut lt = lt_peer(
        &w,
        "lt-seed",
        "seed",
        &torrent,
        &seed_dir,
        laddr,
        &["--no-tracker", "--encryption", "forced"],
    );
    lt.wait_line(&w, "ready", secs(30));

    // No enable_encryption key: the default must be prefer (encrypted first).
    let cfg = config(&w, "atorrent-dl", None, false);
    let dl = w.mkdir("dl");
    let mut at = downloader(&w, &torrent, &dl, v4(endpoint()), &cfg, v4(laddr));
    expect_complete(&w, &mut at, secs(45));
    assert_same_file(&src, &dl.join("a.bin"));
    assert_log(&mut at, &format!("peer {laddr}: encryption rc4"));
}

#[test]
fn lt_forced_downloader_dials_atorrent_seeder() {
    let w = Work::with_limit("enc_lt_forced_dl", LIMIT);
    let (torrent, src, seed_dir) = fixture(&w, "b.bin", 22);
    let cfg = config(&w, "atorrent-seed", None, false);
    let saddr = endpoint();
    let mut seed = seeder(&w, &torrent, &seed_dir, v4(saddr), &cfg, &[]);

    let dl = w.mkdir("dl");
    let peer = saddr.to_string();
    let mut lt = lt_peer(
        &w,
        "lt-dl",
        "download",
        &torrent,
        &dl,
        endpoint(),
        &["--no-tracker", "--peer", &peer, "--encryption", "forced"],
    );
    lt.wait_line(&w, "complete", secs(45));
    lt.expect_success(&w, secs(10));
    assert_same_file(&src, &dl.join("b.bin"));
    // The incoming side: atorrent detected MSE and agreed on RC4.
    assert_log(&mut seed, ": encryption rc4");
}

// ---------------------------------------------------------------------------------------------
// transmission with `encryption required`

#[test]
fn atorrent_require_seeder_dials_transmission_required() {
    require_tool("transmission-cli");
    let w = Work::with_limit("enc_transmission", LIMIT);
    let (torrent, src, seed_dir) = fixture(&w, "c.bin", 23);

    // transmission never dials loopback peers it learns of, so atorrent dials it.
    let dl = w.mkdir("dl");
    let taddr = endpoint();
    let mut tr = transmission_cli_enc(
        &w,
        "transmission",
        &torrent,
        &dl,
        taddr,
        TrEncryption::Required,
    );
    wait_listening(&w, taddr, "transmission-cli", secs(20));

    let cfg = config(&w, "atorrent-seed", Some("require"), false);
    let peer = taddr.to_string();
    let mut seed = seeder(
        &w,
        &torrent,
        &seed_dir,
        v4(endpoint()),
        &cfg,
        &["--peer", &peer],
    );
    tr.expect_success(&w, secs(50));
    assert_same_file(&src, &dl.join("c.bin"));
    assert_log(&mut seed, &format!("peer {taddr}: encryption rc4"));
}

// ---------------------------------------------------------------------------------------------
// Policy: require refuses plaintext, prefer falls back

/// `require` dialling a libtorrent seeder that speaks no MSE at all: for ~10 s no data may
/// move and no BitTorrent handshake may happen. With `check_reason`, the close must also be
/// logged as an encryption failure, so a user can tell why the peer was dropped.
fn require_dials_plaintext_only_lt(name: &str, check_reason: bool) {
    let w = Work::with_limit(name, LIMIT);
    let (torrent, _src, seed_dir) = fixture(&w, "d.bin", 24);
    let laddr = endpoint();
    let mut lt = lt_peer(
        &w,
        "lt-seed",
        "seed",
        &torrent,
        &seed_dir,
        laddr,
        &["--no-tracker", "--encryption", "disabled"],
    );
    lt.wait_line(&w, "ready", secs(30));

    let cfg = config(&w, "atorrent-dl", Some("require"), false);
    let dl = w.mkdir("dl");
    let mut at = downloader(&w, &torrent, &dl, v4(endpoint()), &cfg, v4(laddr));
    let end = Instant::now() + w.cap(secs(10));
    while Instant::now() < end && at.is_running() {
        thread::sleep(Duration::from_millis(200));
    }
    assert!(
        at.is_running(),
        "atorrent-dl exited while refusing a plaintext peer"
    );
    at.terminate(secs(3));
    assert!(
        !at.lines().iter().any(|l| l.starts_with("complete ")),
        "require completed a download from a plaintext-only peer"
    );
    let who = format!("peer {laddr}: ");
    assert!(
        !at.saw(&format!("{who}handshake ok")),
        "require reached the BitTorrent handshake with a plaintext-only peer"
    );
    assert!(
        !at.saw(&format!("{who}encryption plaintext")),
        "require agreed on plaintext"
    );
    let closed = at.lines_with(&format!("{who}closed: "));
    assert!(!closed.is_empty(), "atorrent-dl never dialled {laddr}");
    if check_reason {
        assert!(
            closed.iter().any(|l| {
                l.contains("closed: encryption handshake failed")
                    || l.contains("closed: plaintext refused")
            }),
            "atorrent-dl: no close for {laddr} with an encryption reason; its close lines: {closed:#?}"
        );
    }
    let got = std::fs::metadata(dl.join("d.bin"))
        .map(|m| m.len())
        .unwrap_or(0);
    let zeros =
        got == 0 || std::fs::read(dl.join("d.bin")).is_ok_and(|b| b.iter().all(|&x| x == 0));
    assert!(zeros, "require wrote payload from a plaintext-only peer");
}

#[test]
fn atorrent_require_refuses_plaintext_only_lt() {
    require_dials_plaintext_only_lt("enc_require_refuses", false);
}

#[test]
fn atorrent_require_logs_encryption_failure_for_plaintext_only_lt() {
    require_dials_plaintext_only_lt("enc_require_reason", true);
}

/// The incoming side of `require`: a libtorrent downloader that speaks no MSE dials an
/// atorrent seeder with `require`; its plaintext handshake is refused and nothing is uploaded.
#[test]
fn atorrent_require_seeder_refuses_plaintext_dialer() {
    let w = Work::with_limit("enc_require_incoming", LIMIT);
    let (torrent, _src, seed_dir) = fixture(&w, "r.bin", 29);
    let cfg = config(&w, "atorrent-seed", Some("require"), false);
    let saddr = endpoint();
    let mut seed = seeder(&w, &torrent, &seed_dir, v4(saddr), &cfg, &[]);

    let dl = w.mkdir("dl");
    let peer = saddr.to_string();
    let mut lt = lt_peer(
        &w,
        "lt-dl",
        "download",
        &torrent,
        &dl,
        endpoint(),
        &["--no-tracker", "--peer", &peer, "--encryption", "disabled"],
    );
    let end = Instant::now() + w.cap(secs(10));
    while Instant::now() < end && !seed.saw("closed: plaintext refused (encryption required)") {
        thread::sleep(Duration::from_millis(200));
    }
    lt.terminate(secs(3));
    assert!(
        !lt.lines().iter().any(|l| l == "complete"),
        "a plaintext-only libtorrent completed from a `require` seeder"
    );
    assert_log(&mut seed, "closed: plaintext refused (encryption required)");
}

/// A raw plaintext BitTorrent handshake for the right torrent sent to a `require` seeder:
/// not one byte may come back (a plaintext reply would name the torrent and our peer id in
/// the clear), and the refusal must not pass through the handshake code (`handshake ok`).
fn require_seeder_raw_plaintext_probe(name: &str, check_log: bool) {
    use std::io::{Read, Write};
    let w = Work::with_limit(name, LIMIT);
    let seed_dir = w.mkdir("seed");
    let src = seed_dir.join("p.bin");
    write_random_file(&src, 100_000, 30);
    let torrent = w.path("p.torrent");
    let hash = lt_create(&w, &src, &torrent, &[], 0);
    let cfg = config(&w, "atorrent-seed", Some("require"), false);
    let saddr = endpoint();
    let mut seed = seeder(&w, &torrent, &seed_dir, v4(saddr), &cfg, &[]);

    let mut hs = vec![19u8];
    hs.extend_from_slice(b"BitTorrent protocol");
    hs.extend_from_slice(&[0u8; 8]);
    for i in 0..20 {
        hs.push(u8::from_str_radix(&hash[2 * i..2 * i + 2], 16).expect("hex"));
    }
    hs.extend_from_slice(b"-XX0000-probeprobepr");
    // Dial from an address of our own, like every other peer here.
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let me = std::net::SocketAddrV4::new(loopback_ip(), 0);
    sock.bind(&SocketAddr::V4(me).into()).expect("bind probe");
    sock.connect(&SocketAddr::V4(saddr).into())
        .expect("connect to seeder");
    let mut s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(secs(5))).expect("timeout");
    s.write_all(&hs).expect("send handshake");
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => {
                assert!(
                    got.is_empty(),
                    "require answered a plaintext handshake with {} bytes",
                    got.len()
                );
                panic!("require seeder kept a plaintext connection open: {e}");
            }
        }
    }
    assert!(
        got.is_empty(),
        "require answered a plaintext handshake with {} bytes: {:02x?}",
        got.len(),
        &got[..got.len().min(68)]
    );
    let end = Instant::now() + w.cap(secs(5));
    while Instant::now() < end && !seed.saw("closed: plaintext refused") {
        thread::sleep(Duration::from_millis(100));
    }
    assert_log(&mut seed, "closed: plaintext refused (encryption required)");
    if check_log {
        assert!(
            !seed.saw(": handshake ok"),
            "require logged `handshake ok` for a plaintext handshake it refused: {:#?}",
            seed.lines_with("peer ")
        );
    }
}

#[test]
fn atorrent_require_seeder_answers_plaintext_with_nothing() {
    require_seeder_raw_plaintext_probe("enc_require_probe", false);
}

#[test]
fn atorrent_require_refused_plaintext_skips_handshake() {
    require_seeder_raw_plaintext_probe("enc_require_probe_log", true);
}

#[test]
fn atorrent_prefer_falls_back_to_plaintext_lt() {
    let w = Work::with_limit("enc_prefer_fallback", LIMIT);
    let (torrent, src, seed_dir) = fixture(&w, "e.bin", 25);
    let laddr = endpoint();
    let mut lt = lt_peer(
        &w,
        "lt-seed",
        "seed",
        &torrent,
        &seed_dir,
        laddr,
        &["--no-tracker", "--encryption", "disabled"],
    );
    lt.wait_line(&w, "ready", secs(30));

    let cfg = config(&w, "atorrent-dl", Some("prefer"), false);
    let dl = w.mkdir("dl");
    let mut at = downloader(&w, &torrent, &dl, v4(endpoint()), &cfg, v4(laddr));
    expect_complete(&w, &mut at, secs(45));
    assert_same_file(&src, &dl.join("e.bin"));

    // The log tells the story: an encrypted dial that the peer ends, then a plaintext dial
    // whose BitTorrent handshake succeeds; never RC4.
    let who = format!("peer {laddr}: ");
    let story: Vec<String> = at
        .lines_with(&who)
        .into_iter()
        .filter(|l| {
            l.contains(": connected") || l.contains(": closed: ") || l.contains(": handshake ok")
        })
        .collect();
    let first_close = story.iter().position(|l| l.contains(": closed: "));
    let ok = story.iter().position(|l| l.contains(": handshake ok"));
    let connects = story.iter().filter(|l| l.contains(": connected")).count();
    assert!(
        matches!((first_close, ok), (Some(c), Some(o)) if c < o) && connects >= 2,
        "no encrypted attempt, close, then plaintext retry for {laddr}: {story:#?}"
    );
    assert!(
        !at.saw(&format!("{who}encryption rc4")),
        "rc4 with a plaintext-only peer?"
    );
}

// ---------------------------------------------------------------------------------------------
// atorrent with itself

#[test]
fn atorrent_require_to_atorrent_require() {
    let w = Work::with_limit("enc_pair_require", LIMIT);
    let (torrent, src, seed_dir) = fixture(&w, "f.bin", 26);
    let scfg = config(&w, "atorrent-seed", Some("require"), false);
    let saddr = endpoint();
    let mut seed = seeder(&w, &torrent, &seed_dir, v4(saddr), &scfg, &[]);

    let dcfg = config(&w, "atorrent-dl", Some("require"), false);
    let dl = w.mkdir("dl");
    let mut at = downloader(&w, &torrent, &dl, v4(endpoint()), &dcfg, v4(saddr));
    expect_complete(&w, &mut at, secs(45));
    assert_same_file(&src, &dl.join("f.bin"));
    assert_log(&mut at, &format!("peer {saddr}: encryption rc4"));
    assert_log(&mut seed, ": encryption rc4");
}

// ---------------------------------------------------------------------------------------------
// IPv6 on ::1

fn skip_without_ipv6(test: &str) -> bool {
    if have_ipv6_loopback() {
        return false;
    }
    eprintln!("{test}: SKIPPED: ::1 is not configured on this host (see `ip -6 addr show lo`)");
    true
}

#[test]
fn ipv6_atorrent_to_atorrent_on_loopback() {
    if skip_without_ipv6("ipv6_atorrent_to_atorrent_on_loopback") {
        return;
    }
    let w = Work::with_limit("enc_ipv6_pair", LIMIT);
    let (torrent, src, seed_dir) = fixture(&w, "g.bin", 27);
    let scfg = config(&w, "atorrent-seed", None, true);
    let saddr = endpoint6();
    let mut seed = seeder(&w, &torrent, &seed_dir, saddr, &scfg, &[]);
    wait_listening_at(&w, saddr, "atorrent seeder", secs(10));

    let dcfg = config(&w, "atorrent-dl", None, true);
    let dl = w.mkdir("dl");
    let mut at = downloader(&w, &torrent, &dl, endpoint6(), &dcfg, saddr);
    expect_complete(&w, &mut at, secs(45));
    assert_same_file(&src, &dl.join("g.bin"));
    assert_log(&mut at, &format!("peer {saddr}: handshake ok"));
    assert_log(&mut seed, "peer [::1]:");
}

#[test]
fn ipv6_lt_seeder_to_atorrent_on_loopback() {
    if skip_without_ipv6("ipv6_lt_seeder_to_atorrent_on_loopback") {
        return;
    }
    let w = Work::with_limit("enc_ipv6_lt", LIMIT);
    let (torrent, src, seed_dir) = fixture(&w, "h.bin", 28);
    let laddr = endpoint6();
    let mut lt = lt_peer_at(
        &w,
        "lt-seed",
        "seed",
        &torrent,
        &seed_dir,
        laddr,
        &["--no-tracker"],
    );
    lt.wait_line(&w, "ready", secs(30));
    wait_listening_at(&w, laddr, "libtorrent seeder", secs(10));

    let cfg = config(&w, "atorrent-dl", None, true);
    let dl = w.mkdir("dl");
    let mut at = downloader(&w, &torrent, &dl, endpoint6(), &cfg, laddr);
    expect_complete(&w, &mut at, secs(45));
    assert_same_file(&src, &dl.join("h.bin"));
    assert_log(&mut at, &format!("peer {laddr}: handshake ok"));
}
