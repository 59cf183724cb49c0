//! Magnet links (BEP 9 metadata exchange over BEP 10), PEX (BEP 11) and the daemon's saved
//! metadata, against libtorrent and Transmission on loopback. DHTs here are only loopback
//! nodes the test starts.

use std::fs;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

fn expect_complete(w: &Work, p: &mut Proc, within: Duration) {
    p.expect_success(w, within);
    let lines = p.lines().to_vec();
    assert!(
        lines.iter().any(|l| l.starts_with("metadata ")),
        "{}: no `metadata ` line: {lines:?}",
        p.name
    );
    assert!(
        lines.iter().any(|l| l.starts_with("complete ")),
        "{}: no `complete ` line",
        p.name
    );
}

fn seeded_file(
    w: &Work,
    name: &str,
    size: u64,
    seed: u64,
    trackers: &[String],
) -> (PathBuf, PathBuf, String) {
    let seed_dir = w.mkdir("seed");
    let src = seed_dir.join(name);
    write_random_file(&src, size, seed);
    let t = w.path(&format!("{name}.torrent"));
    let hash = lt_create(w, &src, &t, trackers, 32 * 1024);
    (src, t, hash)
}

#[test]
fn magnet_via_tracker_from_libtorrent() {
    let w = Work::new("magnet_tracker_lt");
    let taddr = Tracker::reserve();
    let url = Tracker::url_for(taddr);
    let (src, t, hash) = seeded_file(&w, "m.bin", 2_500_009, 31, std::slice::from_ref(&url));
    let _tracker = Tracker::start(&w, taddr, &[&hash]);
    let mut lt = lt_peer(
        &w,
        "lt-seed",
        "seed",
        &t,
        src.parent().unwrap(),
        endpoint(),
        &[],
    );
    lt.wait_line(&w, "ready", secs(30));
    let magnet = format!(
        "magnet:?xt=urn:btih:{hash}&dn=m.bin&tr={}",
        url.replace(':', "%3A").replace('/', "%2F")
    );
    let dl = w.mkdir("dl");
    let mut p = atorrent_download(&w, "atorrent", Path::new(&magnet), &dl, endpoint(), &[]);
    expect_complete(&w, &mut p, secs(60));
    assert_same_file(&src, &dl.join("m.bin"));
}

#[test]
fn magnet_metadata_from_a_transmission_seeder() {
    require_tool("transmission-cli");
    let w = Work::new("magnet_transmission");
    let taddr = Tracker::reserve();
    let url = Tracker::url_for(taddr);
    let (src, t, hash) = seeded_file(&w, "tr.bin", 1_500_011, 32, std::slice::from_ref(&url));
    let _tracker = Tracker::start(&w, taddr, &[&hash]);
    // A seeding transmission-cli (no ratio limit) that announces to the tracker. It listens on
    // every loopback address, since the tracker hands out the address its announce came from.
    let tr_port = free_port(std::net::Ipv4Addr::LOCALHOST);
    let cfg = w.mkdir("tr-config");
    fs::write(
        cfg.join("settings.json"),
        format!(
            r#"{{"dht-enabled": false, "lpd-enabled": false, "pex-enabled": false, "utp-enabled": false,
"port-forwarding-enabled": false, "blocklist-enabled": false, "rpc-enabled": false,
"ratio-limit-enabled": false, "idle-seeding-limit-enabled": false, "peer-port": {}, "peer-port-random-on-start": false,
"bind-address-ipv4": "0.0.0.0", "encryption": 1, "message-level": 2, "download-dir": "{}", "start-added-torrents": true}}"#,
            tr_port,
            src.parent().unwrap().display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new("transmission-cli");
    cmd.arg("-g")
        .arg(&cfg)
        .arg("-w")
        .arg(src.parent().unwrap())
        .arg("-p")
        .arg(tr_port.to_string())
        .arg(&t);
    let _tr = Proc::spawn(&w, "transmission", cmd);
    wait_listening(
        &w,
        SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, tr_port),
        "transmission-cli",
        secs(20),
    );
    // Give transmission a moment to verify its data and announce before atorrent asks.
    std::thread::sleep(Duration::from_secs(3));
    // Only the tracker: the metadata comes from whichever peer it names (transmission).
    let magnet = format!(
        "magnet:?xt=urn:btih:{hash}&tr={}",
        url.replace(':', "%3A").replace('/', "%2F")
    );
    let dl = w.mkdir("dl");
    let mut p = atorrent_download(&w, "atorrent", Path::new(&magnet), &dl, endpoint(), &[]);
    expect_complete(&w, &mut p, secs(90));
    assert_same_file(&src, &dl.join("tr.bin"));
}

/// A bare magnet (no tracker, no peers): the DHT finds the libtorrent seeder, the metadata
/// comes over ut_metadata, then the download.
#[test]
fn dht_only_magnet_from_libtorrent() {
    let w = Work::with_limit("magnet_dht", secs(150));
    let (_nodes, boot) = lt_dht(&w, 3);
    let boot_list = addr_list(&boot);
    let (src, t, hash) = seeded_file(&w, "dht.bin", 1_800_013, 33, &[]);
    let mut lt = lt_peer(
        &w,
        "lt-seed",
        "seed",
        &t,
        src.parent().unwrap(),
        endpoint(),
        &["--dht-bootstrap", &boot_list],
    );
    lt.wait_line(&w, "ready", secs(40));
    let me = endpoint();
    let cfg = dht_config(&w, "dl.ini", &boot, me);
    let cfg = cfg.to_str().unwrap().to_string();
    let dl = w.mkdir("dl");
    let magnet = format!("magnet:?xt=urn:btih:{hash}");
    let start = Instant::now();
    let mut p = atorrent(
        &w,
        "atorrent",
        &[
            "--config",
            &cfg,
            "download",
            &magnet,
            "--dir",
            dl.to_str().unwrap(),
            "--bind",
            &me.ip().to_string(),
            "--port",
            &me.port().to_string(),
        ],
    );
    expect_complete(&w, &mut p, secs(100));
    eprintln!("magnet over the DHT completed in {:?}", start.elapsed());
    assert_same_file(&src, &dl.join("dht.bin"));
}

/// atorrent seeds and announces into the DHT and serves the metadata: a libtorrent node given
/// only the magnet downloads everything from it.
#[test]
fn libtorrent_fetches_a_magnet_from_atorrent() {
    let w = Work::with_limit("magnet_serve", secs(150));
    let (_nodes, boot) = lt_dht(&w, 3);
    let boot_list = addr_list(&boot);
    let (src, t, hash) = seeded_file(&w, "serve.bin", 1_300_021, 34, &[]);
    let me = endpoint();
    let cfg = dht_config(&w, "seed.ini", &boot, me);
    let cfg = cfg.to_str().unwrap().to_string();
    let mut seed = atorrent_download(
        &w,
        "atorrent-seed",
        &t,
        src.parent().unwrap(),
        me,
        &["--seed", "--dht", "--config", &cfg],
    );
    seed.wait_line(&w, "seeding ", secs(30));
    let dl = w.mkdir("dl");
    let magnet = format!("magnet:?xt=urn:btih:{hash}");
    let empty = PathBuf::new();
    let mut lt = lt_peer(
        &w,
        "lt-dl",
        "download",
        &empty,
        &dl,
        endpoint(),
        &[
            "--magnet",
            &magnet,
            "--dht-bootstrap",
            &boot_list,
            "--timeout",
            "110",
        ],
    );
    lt.wait_line(&w, "complete", secs(110));
    assert_same_file(&src, &dl.join("serve.bin"));
}

/// PEX: atorrent knows only peer B, a libtorrent leecher downloading slowly from seeder C;
/// B's ut_pex message names C, and atorrent fetches everything from C at full speed.
#[test]
fn pex_learns_a_third_peer() {
    let w = Work::new("pex");
    let (src, t, _hash) = seeded_file(&w, "pex.bin", 3_000_017, 35, &[]);
    let c_addr = endpoint();
    // C never dials, so the only way atorrent meets C is by dialling it after B's PEX.
    let mut c = lt_peer(
        &w,
        "lt-c",
        "seed",
        &t,
        src.parent().unwrap(),
        c_addr,
        &["--no-outgoing"],
    );
    c.wait_line(&w, "ready", secs(30));
    let b_dir = w.mkdir("b");
    let b_addr = endpoint();
    let c_str = c_addr.to_string();
    let mut b = lt_peer(
        &w,
        "lt-b",
        "download",
        &t,
        &b_dir,
        b_addr,
        &["--peer", &c_str, "--download-limit", "20000"],
    );
    b.wait_line(&w, "ready", secs(30));
    // Let B connect to C before atorrent asks B for peers.
    std::thread::sleep(Duration::from_secs(2));
    let dl = w.mkdir("dl");
    let b_str = b_addr.to_string();
    let start = Instant::now();
    let mut p = atorrent_download(
        &w,
        "atorrent",
        &t,
        &dl,
        endpoint(),
        &["-v", "--peer", &b_str],
    );
    p.expect_success(&w, secs(60));
    let took = start.elapsed();
    assert_same_file(&src, &dl.join("pex.bin"));
    let log = p.lines().join("\n") + &p.stderr_text();
    assert!(
        log.contains(&format!("peer {c_str}: handshake ok")),
        "never dialled C (learned by PEX); took {took:?}\n{log}"
    );
    // B has almost nothing; C is only known through B's PEX message.
    assert!(took < Duration::from_secs(40), "took {took:?}");
}

/// The daemon starts a magnet, saves the fetched metainfo, and after a restart knows the
/// torrent without fetching again.
#[test]
fn daemon_magnet_metadata_survives_restart() {
    let w = Work::new("magnet_daemon");
    let (src, t, hash) = seeded_file(&w, "dm.bin", 1_100_003, 36, &[]);
    let seed_addr = endpoint();
    let mut lt = lt_peer(
        &w,
        "lt-seed",
        "seed",
        &t,
        src.parent().unwrap(),
        seed_addr,
        &[],
    );
    lt.wait_line(&w, "ready", secs(30));
    let listen = endpoint();
    let cfg = w.path("d.ini");
    fs::write(
        &cfg,
        format!(
            "download_dir = {}\nstate_dir = {}\nlog_file = {}\nlisten_port = {}\nbind_address = {}\n\
             enable_dht = false\nenable_ipv6 = false\nlog_level = debug\n",
            w.path("dl").display(),
            w.path("state").display(),
            w.path("d.log").display(),
            listen.port(),
            listen.ip()
        ),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let mut cmd = Command::new(atorrent_bin());
        cmd.arg("--config").arg(&cfg).args(args);
        run(&w, cmd, secs(20))
    };
    let start_daemon = || {
        let _ = fs::remove_file(w.path("state/control.sock"));
        let mut cmd = Command::new(atorrent_bin());
        cmd.arg("--config").arg(&cfg).arg("daemon");
        let d = Proc::spawn(&w, "daemon", cmd);
        let end = Instant::now() + secs(20);
        while !w.path("state/control.sock").exists() {
            assert!(Instant::now() < end, "no control socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    };
    let wait_seeding = |within: Duration| {
        let end = Instant::now() + within;
        loop {
            let o = cli(&["status", "1"]);
            if o.stdout.contains("state: seeding") {
                return o.stdout;
            }
            assert!(
                Instant::now() < end,
                "never seeding: {} {}",
                o.stdout,
                o.stderr
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let mut d = start_daemon();
    let magnet = format!("magnet:?xt=urn:btih:{hash}&dn=dm.bin&x.pe={seed_addr}");
    let o = cli(&["start", &magnet]);
    assert!(o.status.success(), "{}", o.stderr);
    assert_eq!(o.stdout.trim(), "1");
    wait_seeding(secs(60));
    assert_same_file(&src, &w.path("dl/dm.bin"));
    assert!(
        w.path(&format!("state/torrents/{hash}.torrent")).exists(),
        "fetched metainfo not saved"
    );
    assert!(cli(&["shutdown"]).status.success());
    assert!(d.wait_exit(&w, secs(20)).success());
    drop(lt);
    let mut d = start_daemon();
    let s = wait_seeding(secs(20));
    assert!(s.contains("dm.bin"), "{s}");
    assert!(cli(&["shutdown"]).status.success());
    assert!(d.wait_exit(&w, secs(20)).success());
}

/// BEP 53: `so=0` selects the first file of three; atorrent completes once the pieces of that
/// file are verified and never fetches the last file's own pieces.
#[test]
fn magnet_select_only_downloads_the_chosen_file() {
    let w = Work::new("magnet_select");
    let seed_dir = w.mkdir("seed");
    let src = seed_dir.join("sel");
    make_tree(
        &src,
        &[("a.bin", 300_001), ("b.bin", 500_000), ("c.bin", 700_003)],
        37,
    );
    let t = w.path("sel.torrent");
    let hash = lt_create(&w, &src, &t, &[], 32 * 1024);
    let seed_addr = endpoint();
    let mut lt = lt_peer(&w, "lt-seed", "seed", &t, &seed_dir, seed_addr, &[]);
    lt.wait_line(&w, "ready", secs(30));
    let dl = w.mkdir("dl");
    let magnet = format!("magnet:?xt=urn:btih:{hash}&x.pe={seed_addr}&so=0");
    let mut p = atorrent_download(&w, "atorrent", Path::new(&magnet), &dl, endpoint(), &[]);
    expect_complete(&w, &mut p, secs(60));
    assert_same_file(&src.join("a.bin"), &dl.join("sel/a.bin"));
    let c = dl.join("sel/c.bin");
    let c_len = fs::metadata(&c).map(|m| m.len()).unwrap_or(0);
    assert!(
        c_len == 0 || fs::read(&c).unwrap() != fs::read(src.join("c.bin")).unwrap(),
        "c.bin was downloaded"
    );
}

/// A magnet started in the daemon before any peer has its metadata is kept in the state
/// directory: after a clean restart and after a kill -9 it is listed again with its ID,
/// directory and stopped flag, and once a seeder appears it fetches the metadata and completes.
#[test]
fn daemon_pending_magnet_survives_restart() {
    let w = Work::new("magnet_daemon_pending");
    let (src, t, hash) = seeded_file(&w, "pm.bin", 900_001, 38, &[]);
    // Reserved now, listened on only after the restarts: until then no peer has the metadata.
    let seed_addr = endpoint();
    let listen = endpoint();
    let cfg = w.path("d.ini");
    fs::write(
        &cfg,
        format!(
            "download_dir = {}\nstate_dir = {}\nlog_file = {}\nlisten_port = {}\nbind_address = {}\n\
             enable_dht = false\nenable_ipv6 = false\nlog_level = debug\n",
            w.path("dl").display(),
            w.path("state").display(),
            w.path("d.log").display(),
            listen.port(),
            listen.ip()
        ),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let mut cmd = Command::new(atorrent_bin());
        cmd.arg("--config").arg(&cfg).args(args);
        let o = run(&w, cmd, secs(20));
        assert!(o.status.success(), "{args:?}: {} {}", o.stdout, o.stderr);
        o.stdout
    };
    let start_daemon = || {
        let _ = fs::remove_file(w.path("state/control.sock"));
        let mut cmd = Command::new(atorrent_bin());
        cmd.arg("--config").arg(&cfg).arg("daemon");
        let d = Proc::spawn(&w, "daemon", cmd);
        let end = Instant::now() + secs(20);
        while !w.path("state/control.sock").exists() {
            assert!(Instant::now() < end, "no control socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    };
    let status = |id: &str, key: &str| -> String {
        let s = cli(&["status", id]);
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {s}"))
            .trim()
            .to_string()
    };
    let custom = w.mkdir("custom");
    let mut d = start_daemon();
    let magnet = format!("magnet:?xt=urn:btih:{hash}&dn=pm.bin&x.pe={seed_addr}");
    assert_eq!(
        cli(&["start", &magnet, "--dir", custom.to_str().unwrap()]).trim(),
        "1"
    );
    let other = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&dn=never";
    assert_eq!(cli(&["start", other, "--paused"]).trim(), "2");

    // Clean restart: both come back with their IDs, the second still stopped.
    assert!(cli(&["shutdown"]).contains("shutting down"));
    assert!(d.wait_exit(&w, secs(20)).success());
    let mut d = start_daemon();
    let list = cli(&["list"]);
    assert!(list.contains("pm.bin") && list.contains("never"), "{list}");
    assert_eq!(status("1", "info_hash:"), hash);
    assert_eq!(status("1", "dir:"), custom.display().to_string());
    assert_eq!(status("2", "state:"), "stopped");

    // kill -9, then the seeder appears: the magnet fetches its metadata and completes.
    let st = Command::new("kill")
        .args(["-9", &d.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    d.wait_exit(&w, secs(10));
    let mut lt = lt_peer(
        &w,
        "lt-seed",
        "seed",
        &t,
        src.parent().unwrap(),
        seed_addr,
        &[],
    );
    lt.wait_line(&w, "ready", secs(30));
    let mut d = start_daemon();
    let end = Instant::now() + secs(60);
    while status("1", "state:") != "seeding" {
        assert!(
            Instant::now() < end,
            "never seeding: {}",
            cli(&["status", "1"])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_same_file(&src, &custom.join("pm.bin"));
    assert!(w.path(&format!("state/torrents/{hash}.torrent")).exists());
    assert!(!w.path(&format!("state/torrents/{hash}.magnet")).exists());
    assert_eq!(status("2", "state:"), "stopped");
    assert!(cli(&["shutdown"]).contains("shutting down"));
    assert!(d.wait_exit(&w, secs(20)).success());
}
