//! atorrent against real BitTorrent peers on loopback. Each test has its own 127.0.x.y
//! addresses, free ports and work dir, and a deadline (`common::TEST_LIMIT`), so the tests run
//! in parallel and a stuck peer fails the test instead of hanging it.

use std::path::Path;
use std::time::Duration;

use crate::common::*;

/// Odd sizes around the 16 KiB block and 32 KiB piece boundaries, plus an empty file, so that
/// pieces and blocks straddle files.
const ODD_FILES: &[(&str, u64)] = &[
    ("one.bin", 1),
    ("sub/16383.bin", 16383),
    ("sub/16385.bin", 16385),
    ("sub/deeper/1000003.bin", 1_000_003),
    ("empty.bin", 0),
    ("3333333.bin", 3_333_333),
    ("65536.bin", 65536),
];

const PIECE_32K: u32 = 32 * 1024;

/// Waits for `atorrent download` to exit 0 and checks its final `complete ` line.
fn expect_complete(work: &Work, p: &mut Proc, within: Duration) {
    p.expect_success(work, within);
    let lines = p.lines().to_vec();
    assert!(
        lines.iter().any(|l| l.starts_with("complete ")),
        "{}: exited 0 without a `complete ` line; stdout: {lines:?}",
        p.name
    );
}

/// Starts `atorrent download --seed` on data already in `dir` and waits for `seeding `.
fn atorrent_seeder(work: &Work, torrent: &Path, dir: &Path, extra: &[&str]) -> (Proc, Addr) {
    let addr = endpoint();
    let mut args = vec!["--seed"];
    args.extend_from_slice(extra);
    let mut p = atorrent_download(work, "atorrent-seed", torrent, dir, addr, &args);
    p.wait_line(work, "seeding ", secs(30));
    (p, addr)
}

type Addr = std::net::SocketAddrV4;

#[test]
fn lt_seeder_via_opentracker_to_atorrent_multifile() {
    let w = Work::new("lt_tracker_atorrent");
    let seed_dir = w.mkdir("seed");
    let src = seed_dir.join("odd");
    make_tree(&src, ODD_FILES, 1);
    let taddr = Tracker::reserve();
    let torrent = w.path("odd.torrent");
    let hash = lt_create(&w, &src, &torrent, &[Tracker::url_for(taddr)], PIECE_32K);
    let _tracker = Tracker::start(&w, taddr, &[&hash]);

    let mut lt = lt_peer(&w, "lt-seed", "seed", &torrent, &seed_dir, endpoint(), &[]);
    lt.wait_line(&w, "ready", secs(30));

    let dl = w.mkdir("dl");
    let mut at = atorrent_download(&w, "atorrent-dl", &torrent, &dl, endpoint(), &[]);
    expect_complete(&w, &mut at, secs(90));
    assert_same_tree(&src, &dl.join("odd"), false);
}

#[test]
fn atorrent_seeder_via_opentracker_to_aria2c() {
    require_tool("aria2c");
    let w = Work::new("atorrent_tracker_aria2");
    let seed_dir = w.mkdir("seed");
    let src = seed_dir.join("mixed");
    make_tree(
        &src,
        &[
            ("a.bin", 2_500_001),
            ("b/c.bin", 49_999),
            ("d.bin", 700_000),
        ],
        2,
    );
    let taddr = Tracker::reserve();
    let torrent = w.path("mixed.torrent");
    let hash = lt_create(&w, &src, &torrent, &[Tracker::url_for(taddr)], PIECE_32K);
    let _tracker = Tracker::start(&w, taddr, &[&hash]);

    let (_seed, _) = atorrent_seeder(&w, &torrent, &seed_dir, &[]);

    let dl = w.mkdir("dl");
    let mut aria = aria2c(&w, "aria2c", &torrent, &dl, endpoint());
    aria.expect_success(&w, secs(90));
    assert_same_tree(&src, &dl.join("mixed"), false);
}

#[test]
fn atorrent_seeder_dials_transmission_cli() {
    require_tool("transmission-cli");
    let w = Work::new("atorrent_transmission");
    let seed_dir = w.mkdir("seed");
    let src = seed_dir.join("single.bin");
    write_random_file(&src, 3_000_017, 3);
    let torrent = w.path("single.torrent");
    lt_create(&w, &src, &torrent, &[], 0);

    // transmission never dials loopback peers it learns of, so atorrent must dial it.
    let dl = w.mkdir("dl");
    let taddr = endpoint();
    let mut tr = transmission_cli(&w, "transmission", &torrent, &dl, taddr);
    wait_listening(&w, taddr, "transmission-cli", secs(20));

    let peer = taddr.to_string();
    let (_seed, _) = atorrent_seeder(&w, &torrent, &seed_dir, &["--peer", &peer]);
    // transmission re-evaluates interest every 10 s, so allow for its rechoke pulses.
    tr.expect_success(&w, secs(90));
    assert_same_file(&src, &dl.join("single.bin"));
}

fn atorrent_to_atorrent(name: &str, seed_io: &str, dl_io: &str) {
    let w = Work::new(name);
    let seed_dir = w.mkdir("seed");
    let src = seed_dir.join("pair");
    make_tree(
        &src,
        &[
            ("x.bin", 4_194_305),
            ("y/4095.bin", 4095),
            ("y/4097.bin", 4097),
            ("z.bin", 1_048_575),
        ],
        4,
    );
    let torrent = w.path("pair.torrent");
    lt_create(&w, &src, &torrent, &[], 64 * 1024);

    let (_seed, saddr) = atorrent_seeder(&w, &torrent, &seed_dir, &["--direct-io", seed_io]);

    let dl = w.mkdir("dl");
    let peer = saddr.to_string();
    let mut at = atorrent_download(
        &w,
        "atorrent-dl",
        &torrent,
        &dl,
        endpoint(),
        &["--peer", &peer, "--direct-io", dl_io],
    );
    expect_complete(&w, &mut at, secs(90));
    assert_same_tree(&src, &dl.join("pair"), false);
}

#[test]
fn atorrent_to_atorrent_seed_direct_io_on_download_off() {
    atorrent_to_atorrent("atorrent_pair_on_off", "on", "off");
}

#[test]
fn atorrent_to_atorrent_seed_direct_io_off_download_on() {
    atorrent_to_atorrent("atorrent_pair_off_on", "off", "on");
}

#[test]
fn atorrent_seeder_to_libtorrent_connect_peer() {
    let w = Work::new("atorrent_lt");
    let seed_dir = w.mkdir("seed");
    let src = seed_dir.join("tolt");
    make_tree(
        &src,
        &[
            ("big.bin", 5_000_011),
            ("small.bin", 333),
            ("mid/one.bin", 131_073),
        ],
        5,
    );
    let torrent = w.path("tolt.torrent");
    lt_create(&w, &src, &torrent, &[], 0);

    let (_seed, saddr) = atorrent_seeder(&w, &torrent, &seed_dir, &[]);

    let dl = w.mkdir("dl");
    let peer = saddr.to_string();
    let mut lt = lt_peer(
        &w,
        "lt-dl",
        "download",
        &torrent,
        &dl,
        endpoint(),
        &["--no-tracker", "--peer", &peer],
    );
    lt.wait_line(&w, "complete", secs(90));
    lt.expect_success(&w, secs(15));
    assert_same_tree(&src, &dl.join("tolt"), false);
}

#[test]
fn atorrent_seeder_exits_zero_on_sigterm() {
    let w = Work::new("atorrent_sigterm");
    let seed_dir = w.mkdir("seed");
    let src = seed_dir.join("s.bin");
    write_random_file(&src, 100_000, 6);
    let torrent = w.path("s.torrent");
    lt_create(&w, &src, &torrent, &[], 0);
    let (mut seed, _) = atorrent_seeder(&w, &torrent, &seed_dir, &[]);
    let st = seed.terminate(secs(10));
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(0),
        "seeder should exit 0 on SIGTERM"
    );
}
