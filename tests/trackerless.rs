//! Finding peers beyond one HTTP tracker (issue 4): UDP trackers (BEP 15) against opentracker,
//! multitracker tiers (BEP 12), and the DHT (BEP 5) against a small loopback DHT of libtorrent
//! nodes. Every DHT here is bootstrapped only to loopback nodes the test starts.

use std::path::Path;
use std::time::Duration;

use crate::common::*;

fn expect_complete(w: &Work, p: &mut Proc, within: Duration) {
    p.expect_success(w, within);
    assert!(
        p.lines().iter().any(|l| l.starts_with("complete ")),
        "{}: no `complete ` line",
        p.name
    );
}

fn atorrent_create(w: &Work, src: &Path, out: &Path, trackers: &[String], piece: u32) {
    let mut cmd = std::process::Command::new(atorrent_bin());
    cmd.arg("create").arg(src).arg("-o").arg(out);
    for t in trackers {
        cmd.arg("--tracker").arg(t);
    }
    cmd.arg("--piece-length").arg(piece.to_string());
    let o = run(w, cmd, secs(30));
    assert!(o.status.success(), "create: {}", o.stderr);
}

fn info_hash(w: &Work, torrent: &Path) -> String {
    lt_infohash(w, torrent)
}

#[test]
fn udp_tracker_announce_against_opentracker() {
    let w = Work::new("udp_tracker");
    let seed_dir = w.mkdir("seed");
    let src = seed_dir.join("u.bin");
    write_random_file(&src, 2_000_003, 21);
    let taddr = Tracker::reserve();
    let url = format!("udp://{}:{}/announce", taddr.ip(), taddr.port());
    let t = w.path("u.torrent");
    let hash = lt_create(&w, &src, &t, std::slice::from_ref(&url), 32 * 1024);
    let _tracker = Tracker::start(&w, taddr, &[&hash]);
    // libtorrent announces over UDP too, so opentracker hands each side the other.
    let mut lt = lt_peer(&w, "lt-seed", "seed", &t, &seed_dir, endpoint(), &[]);
    lt.wait_line(&w, "ready", secs(30));
    let dl = w.mkdir("dl");
    let mut p = atorrent_download(&w, "atorrent", &t, &dl, endpoint(), &["-v"]);
    expect_complete(&w, &mut p, secs(60));
    assert_same_file(&src, &dl.join("u.bin"));
    let log = p.lines().join("\n") + &p.stderr_text();
    assert!(
        log.contains(&format!("tracker {url}: ")) && log.contains("peers"),
        "no UDP announce in the log"
    );
    // BEP 15 scrape follows the first announce; its counts feed `status`.
    assert!(
        log.contains(&format!("tracker {url}: scrape: ")),
        "no UDP scrape in the log"
    );
}

#[test]
fn dead_first_tier_falls_through_to_the_second() {
    let w = Work::new("tiers");
    let seed_dir = w.mkdir("seed");
    let src = seed_dir.join("tier.bin");
    write_random_file(&src, 1_000_001, 22);
    let taddr = Tracker::reserve();
    // Tier 1: nothing listens there (a reserved, closed port); tier 2: opentracker.
    let dead = format!("http://{}/announce", endpoint());
    let live = Tracker::url_for(taddr);
    let t = w.path("tier.torrent");
    atorrent_create(&w, &src, &t, &[dead.clone(), live.clone()], 32 * 1024);
    let hash = info_hash(&w, &t);
    let _tracker = Tracker::start(&w, taddr, &[&hash]);
    let mut lt = lt_peer(&w, "lt-seed", "seed", &t, &seed_dir, endpoint(), &[]);
    lt.wait_line(&w, "ready", secs(30));
    let dl = w.mkdir("dl");
    let mut p = atorrent_download(&w, "atorrent", &t, &dl, endpoint(), &["-v"]);
    expect_complete(&w, &mut p, secs(60));
    assert_same_file(&src, &dl.join("tier.bin"));
    let log = p.lines().join("\n") + &p.stderr_text();
    assert!(
        log.contains(&format!("tracker {dead}")),
        "the dead tier was never tried"
    );
}

/// A trackerless .torrent: atorrent finds the libtorrent seeder through the DHT alone.
#[test]
fn dht_only_download_from_a_libtorrent_swarm() {
    let w = Work::with_limit("dht_download", secs(150));
    let (_nodes, boot) = lt_dht(&w, 3);
    let boot_list = addr_list(&boot);
    let seed_dir = w.mkdir("seed");
    let src = seed_dir.join("d.bin");
    write_random_file(&src, 1_500_007, 23);
    let t = w.path("d.torrent");
    lt_create(&w, &src, &t, &[], 32 * 1024);
    let mut lt = lt_peer(
        &w,
        "lt-seed",
        "seed",
        &t,
        &seed_dir,
        endpoint(),
        &["--dht-bootstrap", &boot_list],
    );
    lt.wait_line(&w, "ready", secs(40));
    let dl = w.mkdir("dl");
    let me = endpoint();
    let cfg = dht_config(&w, "dl.ini", &boot, me);
    let cfg = cfg.to_str().unwrap().to_string();
    let mut p = atorrent_download(&w, "atorrent", &t, &dl, me, &["--dht", "--config", &cfg]);
    expect_complete(&w, &mut p, secs(100));
    assert_same_file(&src, &dl.join("d.bin"));
}

/// atorrent seeds a trackerless torrent and announces it into the DHT; a libtorrent node that
/// knows only the DHT finds it and downloads.
#[test]
fn atorrent_announces_into_the_dht_for_libtorrent() {
    let w = Work::with_limit("dht_announce", secs(150));
    let (_nodes, boot) = lt_dht(&w, 3);
    let boot_list = addr_list(&boot);
    let seed_dir = w.mkdir("seed");
    let src = seed_dir.join("a.bin");
    write_random_file(&src, 1_200_011, 24);
    let t = w.path("a.torrent");
    lt_create(&w, &src, &t, &[], 32 * 1024);
    let me = endpoint();
    let cfg = dht_config(&w, "seed.ini", &boot, me);
    let cfg = cfg.to_str().unwrap().to_string();
    let mut seed = atorrent_download(
        &w,
        "atorrent-seed",
        &t,
        &seed_dir,
        me,
        &["--seed", "--dht", "--config", &cfg],
    );
    seed.wait_line(&w, "seeding ", secs(30));
    let dl = w.mkdir("dl");
    let mut lt = lt_peer(
        &w,
        "lt-dl",
        "download",
        &t,
        &dl,
        endpoint(),
        &["--dht-bootstrap", &boot_list, "--timeout", "110"],
    );
    lt.wait_line(&w, "complete", secs(110));
    assert_same_file(&src, &dl.join("a.bin"));
}

/// BEP 32: the DHT over IPv6. Three atorrents on ::1 — a node serving an unrelated torrent, a
/// seeder and a downloader — where the seeder and the downloader know only the node; the
/// downloader finds the seeder through the IPv6 DHT (no tracker, no `--peer`).
#[test]
fn ipv6_dht_finds_the_seeder() {
    if !have_ipv6_loopback() {
        eprintln!("SKIPPED: no ::1 on this host");
        return;
    }
    let w = Work::with_limit("dht_ipv6", secs(120));
    let write = |name: &str, boot: &str, dht_port: u16| {
        let p = w.path(name);
        std::fs::write(
            &p,
            format!(
                "enable_dht = true\ndht_bootstrap = {boot}\ndht_port = {dht_port}\nenable_ipv6 = true\n\
                 log_level = debug\n"
            ),
        )
        .unwrap();
        p.to_str().unwrap().to_string()
    };
    let free_udp6 = || {
        std::net::UdpSocket::bind("[::1]:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    // The node: seeds something else, answers DHT queries on [::1]:node_port.
    let other_dir = w.mkdir("other");
    write_random_file(&other_dir.join("o.bin"), 100_000, 51);
    let other_t = w.path("o.torrent");
    lt_create(&w, &other_dir.join("o.bin"), &other_t, &[], 16 * 1024);
    let node_port = free_udp6();
    let node_cfg = write("node.ini", "[::1]:1", node_port);
    let mut node = atorrent_download_at(
        &w,
        "node",
        &other_t,
        &other_dir,
        endpoint6(),
        &["--seed", "--dht", "--config", &node_cfg],
    );
    node.wait_line(&w, "seeding ", secs(20));
    let boot = format!("[::1]:{node_port}");

    let seed_dir = w.mkdir("seed");
    let src = seed_dir.join("v6.bin");
    write_random_file(&src, 1_000_003, 52);
    let t = w.path("v6.torrent");
    lt_create(&w, &src, &t, &[], 32 * 1024);
    let seed_cfg = write("seed.ini", &boot, free_udp6());
    let mut seed = atorrent_download_at(
        &w,
        "seed",
        &t,
        &seed_dir,
        endpoint6(),
        &["--seed", "--dht", "--config", &seed_cfg],
    );
    seed.wait_line(&w, "seeding ", secs(20));

    let dl = w.mkdir("dl");
    let dl_cfg = write("dl.ini", &boot, free_udp6());
    let mut p = atorrent_download_at(
        &w,
        "dl",
        &t,
        &dl,
        endpoint6(),
        &["--dht", "--config", &dl_cfg],
    );
    p.expect_success(&w, secs(90));
    assert_same_file(&src, &dl.join("v6.bin"));
}

/// BEP 7: a tracker whose name resolves to both 127.0.0.1 and ::1 (through a hosts file the
/// test provides) gets an announce over each family from an atorrent listening on both.
#[test]
fn bep7_announces_over_both_address_families() {
    if !have_ipv6_loopback() {
        eprintln!("SKIPPED: no ::1 on this host");
        return;
    }
    let w = Work::new("bep7");
    let hosts = w.path("hosts");
    std::fs::write(&hosts, "127.0.0.1 bep7-tracker\n::1 bep7-tracker\n").unwrap();
    // A stub tracker on both families of one port, counting announces per family.
    let l4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l4.local_addr().unwrap().port();
    let l6 = std::net::TcpListener::bind(("::1", port)).expect("same port on ::1");
    let (tx, rx) = std::sync::mpsc::channel::<&'static str>();
    for (l, fam) in [(l4, "v4"), (l6, "v6")] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for s in l.incoming().take(8) {
                let Ok(mut s) = s else { continue };
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                if String::from_utf8_lossy(&buf[..n]).starts_with("GET /announce") {
                    let _ = tx.send(fam);
                }
                let body = b"d8:intervali1800e5:peers0:e";
                let _ = write!(
                    s,
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(body);
            }
        });
    }
    let src_dir = w.mkdir("src");
    let src = src_dir.join("b7.bin");
    write_random_file(&src, 100_000, 53);
    let t = w.path("b7.torrent");
    lt_create(
        &w,
        &src,
        &t,
        &[format!("http://bep7-tracker:{port}/announce")],
        16 * 1024,
    );
    // Listening on every address (no --bind), so on IPv4 and IPv6.
    let me = endpoint();
    let dl = w.mkdir("dl");
    let mut cmd = std::process::Command::new(atorrent_bin());
    cmd.env("ATORRENT_HOSTS_FILE", &hosts).args([
        "download",
        t.to_str().unwrap(),
        "--dir",
        dl.to_str().unwrap(),
        "--port",
        &me.port().to_string(),
        "--no-dht",
        "-v",
    ]);
    let mut p = Proc::spawn(&w, "atorrent", cmd);
    let mut seen = std::collections::HashSet::new();
    let end = std::time::Instant::now() + secs(20);
    while seen.len() < 2 && std::time::Instant::now() < end {
        if let Ok(f) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.insert(f);
        }
    }
    let _ = p.terminate(secs(5));
    assert!(
        seen.contains("v4") && seen.contains("v6"),
        "announces seen over: {seen:?}"
    );
}

/// The transaction id of a KRPC query (`1:t<len>:<tid>` is the last `t` key of a query we
/// parse here; ids and hashes come before it in the `a` dictionary).
fn krpc_tid(pkt: &[u8]) -> Option<Vec<u8>> {
    let at = pkt.windows(3).rposition(|w| w == b"1:t")? + 3;
    let colon = at + pkt[at..].iter().position(|&b| b == b':')?;
    let len: usize = std::str::from_utf8(&pkt[at..colon]).ok()?.parse().ok()?;
    pkt.get(colon + 1..colon + 1 + len).map(<[u8]>::to_vec)
}

/// A `dht_bootstrap` host name is resolved inside the loop, hosts file first (here the one
/// ATORRENT_HOSTS_FILE names; no real resolver is asked): the router it names gets the
/// bootstrap find_node, and once it has answered, the magnet's get_peers lookups reach it.
#[test]
fn dht_bootstrap_name_resolves_through_hosts_file() {
    let w = Work::new("dht_boot_name");
    let ip = loopback_ip();
    let router = std::net::UdpSocket::bind((ip, 0)).unwrap();
    let rport = router.local_addr().unwrap().port();
    router
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let hosts = w.path("hosts");
    std::fs::write(&hosts, format!("{ip} dht-router.test\n")).unwrap();
    let me = endpoint();
    let dht_port = free_port(*me.ip());
    let cfg = w.path("boot.ini");
    std::fs::write(
        &cfg,
        format!(
            "enable_dht = true\ndht_bootstrap = dht-router.test:{rport}\ndht_port = {dht_port}\n\
             enable_ipv6 = false\nlog_level = debug\n"
        ),
    )
    .unwrap();
    let hash = [0x5au8; 20];
    let magnet = format!("magnet:?xt=urn:btih:{}", "5a".repeat(20));
    let dl = w.mkdir("dl");
    let mut cmd = std::process::Command::new(atorrent_bin());
    cmd.env("ATORRENT_HOSTS_FILE", &hosts).args([
        "--config",
        cfg.to_str().unwrap(),
        "download",
        &magnet,
        "--dir",
        dl.to_str().unwrap(),
        "--bind",
        &me.ip().to_string(),
        "--port",
        &me.port().to_string(),
    ]);
    let mut p = Proc::spawn(&w, "atorrent", cmd);
    let (mut find_node, mut get_peers) = (false, false);
    let mut buf = [0u8; 2048];
    let end = std::time::Instant::now() + secs(20);
    while !(find_node && get_peers) {
        assert!(
            std::time::Instant::now() < end,
            "router saw find_node {find_node}, get_peers {get_peers}\n{}",
            p.stderr_text()
        );
        let Ok((n, from)) = router.recv_from(&mut buf) else {
            continue;
        };
        let pkt = &buf[..n];
        assert_eq!(from, std::net::SocketAddr::from((*me.ip(), dht_port)));
        let is = |m: &[u8]| pkt.windows(m.len()).any(|x| x == m);
        if is(b"1:q9:find_node") {
            find_node = true;
        } else if is(b"1:q9:get_peers") && is(&hash) {
            get_peers = true;
        }
        // Answer like a router that knows nobody else, so it enters the routing table.
        let Some(tid) = krpc_tid(pkt) else { continue };
        let mut r = b"d1:rd2:id20:".to_vec();
        r.extend_from_slice(&[0x11; 20]);
        r.extend_from_slice(b"5:nodes0:e1:t");
        r.extend_from_slice(format!("{}:", tid.len()).as_bytes());
        r.extend_from_slice(&tid);
        r.extend_from_slice(b"1:y1:re");
        router.send_to(&r, from).unwrap();
    }
    let _ = p.terminate(secs(5));
}
