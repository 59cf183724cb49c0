//! Bandwidth limits and seeding limits through the real binary on loopback.
//!
//! The limits are checked with loose bounds (the benchmark `scripts/bench-limits.sh` prints
//! the exact achieved rates over 30 s): the transfer must take at least 80% of the time the
//! limit implies (it cannot beat the limit by much) and must not crawl far below it.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

fn config(w: &Work, name: &str, body: &str) -> std::path::PathBuf {
    let p = w.path(name);
    fs::write(
        &p,
        format!("enable_ipv6 = false\nenable_dht = false\n{body}"),
    )
    .unwrap();
    p
}

fn seeder(w: &Work, torrent: &Path, dir: &Path, cfg: &Path) -> (Proc, std::net::SocketAddrV4) {
    let addr = endpoint();
    let cfg = cfg.to_str().unwrap();
    let mut p = atorrent_download(w, "seed", torrent, dir, addr, &["--seed", "--config", cfg]);
    p.wait_line(w, "seeding ", secs(30));
    (p, addr)
}

/// Downloads `size` bytes with the given limit flags on either side and returns the seconds
/// the download took.
fn timed_download(name: &str, size: u64, seed_cfg: &str, dl_args: &[&str]) -> f64 {
    let w = Work::new(name);
    let src_dir = w.mkdir("seed");
    let src = src_dir.join("data.bin");
    write_random_file(&src, size, 3);
    let t = w.path("data.torrent");
    lt_create(&w, &src, &t, &[], 64 * 1024);
    let scfg = config(&w, "seed.ini", seed_cfg);
    let (_seed, addr) = seeder(&w, &t, &src_dir, &scfg);
    let dl = w.mkdir("dl");
    let peer = addr.to_string();
    let mut args = vec!["--peer", peer.as_str()];
    args.extend_from_slice(dl_args);
    let start = Instant::now();
    let mut p = atorrent_download(&w, "dl", &t, &dl, endpoint(), &args);
    p.expect_success(&w, secs(90));
    let took = start.elapsed().as_secs_f64();
    assert_same_file(&src, &dl.join("data.bin"));
    took
}

fn assert_rate(what: &str, size: u64, limit: u64, took: f64) {
    let ideal = size as f64 / limit as f64;
    let achieved = size as f64 / took;
    eprintln!(
        "{what}: {size} bytes in {took:.2} s = {achieved:.0} B/s against a limit of {limit} B/s"
    );
    assert!(
        took >= ideal * 0.8,
        "{what}: {took:.2} s is faster than the limit allows ({ideal:.2} s)"
    );
    assert!(
        took <= ideal * 1.6 + 3.0,
        "{what}: {took:.2} s is far slower than the limit ({ideal:.2} s)"
    );
}

#[test]
fn download_limit_holds() {
    let size = 6 * 1024 * 1024;
    let limit = 1024 * 1024;
    let took = timed_download("limit_down", size, "", &["--down", "1M"]);
    assert_rate("download --down 1M", size, limit, took);
}

#[test]
fn upload_limit_holds() {
    let size = 3 * 1024 * 1024;
    let limit = 512 * 1024;
    let took = timed_download("limit_up", size, "bandwidth_limits = up=512K\n", &[]);
    assert_rate("seeder bandwidth_limits up=512K", size, limit, took);
}

#[test]
fn unlimited_is_fast_for_comparison() {
    // The same transfer without limits finishes far below the limited times above, so those
    // tests measure the limiter, not the machine.
    let took = timed_download("limit_none", 6 * 1024 * 1024, "", &[]);
    assert!(
        took < 3.0,
        "an unlimited 6 MiB loopback download took {took:.2} s"
    );
}

#[test]
fn seeding_stops_at_the_ratio_limit() {
    let w = Work::new("seed_ratio");
    let src_dir = w.mkdir("seed");
    let src = src_dir.join("r.bin");
    write_random_file(&src, 2 * 1024 * 1024, 8);
    let t = w.path("r.torrent");
    lt_create(&w, &src, &t, &[], 32 * 1024);
    // The seeder stops once it has uploaded the torrent's size once (ratio 1).
    let scfg = config(&w, "seed.ini", "seed_ratio = 1.0\n");
    let (mut seed, addr) = seeder(&w, &t, &src_dir, &scfg);
    let dl = w.mkdir("dl");
    let peer = addr.to_string();
    let mut p = atorrent_download(&w, "dl", &t, &dl, endpoint(), &["--peer", &peer]);
    p.expect_success(&w, secs(60));
    assert_same_file(&src, &dl.join("r.bin"));
    let st = seed.wait_exit(&w, secs(20));
    assert!(st.success(), "seeder exit {st:?}");
    let lines = seed.lines().join("\n");
    assert!(
        lines.contains("seeding stopped: ratio"),
        "seeder output: {lines}"
    );
}

#[test]
fn daemon_limit_command_sets_and_reports() {
    let w = Work::new("limit_cmd");
    let listen = endpoint();
    let cfg = config(
        &w,
        "d.ini",
        &format!(
            "state_dir = {}\nlog_file = {}\nlisten_port = {}\nbind_address = {}\n",
            w.path("state").display(),
            w.path("d.log").display(),
            listen.port(),
            listen.ip()
        ),
    );
    let mut cmd = Command::new(atorrent_bin());
    cmd.arg("--config").arg(&cfg).arg("daemon");
    let mut d = Proc::spawn(&w, "daemon", cmd);
    let end = Instant::now() + secs(20);
    while !w.path("state/control.sock").exists() {
        assert!(Instant::now() < end, "no control socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut cmd = Command::new(atorrent_bin());
    cmd.arg("--config")
        .arg(&cfg)
        .args(["limit", "--down", "2M", "--up", "512K"]);
    let o = run(&w, cmd, secs(10));
    assert!(o.status.success(), "{}", o.stderr);
    assert!(
        o.stdout.contains("down 2") && o.stdout.contains("up 512"),
        "{}",
        o.stdout
    );
    let mut cmd = Command::new(atorrent_bin());
    cmd.arg("--config")
        .arg(&cfg)
        .args(["limit", "7", "--down", "1M"]);
    let o = run(&w, cmd, secs(10));
    assert_eq!(o.code(), Some(1), "unknown torrent: {}", o.stderr);
    let mut cmd = Command::new(atorrent_bin());
    cmd.arg("--config").arg(&cfg).arg("shutdown");
    assert!(run(&w, cmd, secs(10)).status.success());
    assert!(d.wait_exit(&w, secs(20)).success());
}

/// Per-torrent seeding limit set at run time: the daemon seeds a torrent, `limit ID --ratio 1`
/// applies to it alone, and once a downloader has taken a full copy the torrent stops seeding
/// and says why in `status`.
#[test]
fn daemon_per_torrent_seed_ratio_stops_seeding() {
    let w = Work::new("seed_ratio_daemon");
    let listen = endpoint();
    let dl_dir = w.mkdir("dl");
    let src = dl_dir.join("pr.bin");
    write_random_file(&src, 1_500_000, 41);
    let t = w.path("pr.torrent");
    lt_create(&w, &src, &t, &[], 32 * 1024);
    let cfg = config(
        &w,
        "d.ini",
        &format!(
            "download_dir = {}\nstate_dir = {}\nlog_file = {}\nlisten_port = {}\nbind_address = {}\n",
            dl_dir.display(),
            w.path("state").display(),
            w.path("d.log").display(),
            listen.port(),
            listen.ip()
        ),
    );
    let cli = |args: &[&str]| {
        let mut cmd = Command::new(atorrent_bin());
        cmd.arg("--config").arg(&cfg).args(args);
        run(&w, cmd, secs(20))
    };
    let mut cmd = Command::new(atorrent_bin());
    cmd.arg("--config").arg(&cfg).arg("daemon");
    let mut d = Proc::spawn(&w, "daemon", cmd);
    let end = Instant::now() + secs(20);
    while !w.path("state/control.sock").exists() {
        assert!(Instant::now() < end, "no control socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(cli(&["start", t.to_str().unwrap()]).status.success());
    let wait_state = |want: &str| {
        let end = Instant::now() + secs(30);
        loop {
            let o = cli(&["status", "1"]);
            if o.stdout.contains(&format!("state: {want}")) {
                return o.stdout;
            }
            assert!(Instant::now() < end, "never {want}: {}", o.stdout);
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_state("seeding");
    let o = cli(&["limit", "1", "--ratio", "1"]);
    assert!(o.status.success(), "{}", o.stderr);
    let got = w.mkdir("got");
    let peer = listen.to_string();
    let mut p = atorrent_download(&w, "dl", &t, &got, endpoint(), &["--peer", &peer]);
    p.expect_success(&w, secs(60));
    assert_same_file(&src, &got.join("pr.bin"));
    let s = wait_state("stopped");
    assert!(s.contains("seeding stopped: ratio"), "{s}");
    assert!(cli(&["shutdown"]).status.success());
    assert!(d.wait_exit(&w, secs(20)).success());
}
