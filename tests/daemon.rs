//! The daemon through the real binary: `atorrent --config C daemon` with a private state
//! directory and control socket, driven by the client commands as scripts would, against
//! libtorrent seeders on loopback.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

struct Daemon {
    config: PathBuf,
    proc: Option<Proc>,
}

fn write_config(w: &Work, extra: &str) -> PathBuf {
    let listen = endpoint();
    let cfg = w.path("config.ini");
    let text = format!(
        "download_dir = {dl}\nstate_dir = {state}\nlog_file = {log}\nlisten_port = {port}\n\
         bind_address = {ip}\nenable_dht = false\nenable_ipv6 = false\nlog_level = debug\n{extra}\n",
        dl = w.path("dl").display(),
        state = w.path("state").display(),
        log = w.path("atorrent.log").display(),
        port = listen.port(),
        ip = listen.ip(),
    );
    fs::write(&cfg, text).unwrap();
    cfg
}

impl Daemon {
    fn start(w: &Work, config: &Path) -> Daemon {
        let sock = w.path("state/control.sock");
        // A socket left by a killed daemon would look like readiness.
        let _ = fs::remove_file(&sock);
        let mut cmd = Command::new(atorrent_bin());
        cmd.arg("--config").arg(config).arg("daemon");
        let proc = Proc::spawn(w, "daemon", cmd);
        let d = Daemon {
            config: config.to_path_buf(),
            proc: Some(proc),
        };
        let end = Instant::now() + secs(20);
        while !sock.exists() {
            assert!(Instant::now() < end, "daemon made no control socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn cli(&self, w: &Work, args: &[&str]) -> Output {
        let mut cmd = Command::new(atorrent_bin());
        cmd.arg("--config").arg(&self.config).args(args);
        run(w, cmd, secs(30))
    }

    fn ok(&self, w: &Work, args: &[&str]) -> String {
        let o = self.cli(w, args);
        assert!(
            o.status.success(),
            "atorrent {args:?} failed: {:?} {}{}",
            o.code(),
            o.stdout,
            o.stderr
        );
        o.stdout
    }

    /// Polls `status ID` until its state line says `want`.
    fn wait_state(&self, w: &Work, id: &str, want: &str, within: Duration) -> String {
        let end = Instant::now() + within;
        loop {
            let s = self.ok(w, &["status", id]);
            if s.lines()
                .any(|l| l.starts_with("state:") && l.contains(want))
            {
                return s;
            }
            assert!(
                Instant::now() < end,
                "torrent {id} never reached {want}: {s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn shutdown(&mut self, w: &Work) {
        let o = self.cli(w, &["shutdown"]);
        assert!(o.status.success(), "shutdown: {}", o.stderr);
        if let Some(mut p) = self.proc.take() {
            let st = p.wait_exit(w, secs(20));
            assert!(st.success(), "daemon exit status {st:?}");
        }
    }
}

/// Two torrents from libtorrent seeders (each behind its own `--peer`-less tracker-free setup:
/// the seeders dial nothing, so the daemon learns them from opentracker).
fn two_torrents(w: &Work) -> (Vec<(PathBuf, PathBuf, String)>, Vec<Proc>, Tracker) {
    let taddr = Tracker::reserve();
    let mut out = Vec::new();
    let mut hashes = Vec::new();
    for (i, size) in [(1, 3_000_001u64), (2, 2_000_003u64)] {
        let src_dir = w.mkdir(&format!("src{i}"));
        let src = src_dir.join(format!("file{i}.bin"));
        write_random_file(&src, size, 40 + i);
        let t = w.path(&format!("t{i}.torrent"));
        let h = lt_create(w, &src, &t, &[Tracker::url_for(taddr)], 32 * 1024);
        hashes.push(h.clone());
        out.push((t, src, h));
    }
    let refs: Vec<&str> = hashes.iter().map(|s| s.as_str()).collect();
    let tracker = Tracker::start(w, taddr, &refs);
    let mut seeds = Vec::new();
    for (i, (t, src, _)) in out.iter().enumerate() {
        // The first seeder is slow (about 3 s for its file), so the second torrent has to wait
        // in the download queue.
        let extra: &[&str] = if i == 0 {
            &["--upload-limit", "1000000"]
        } else {
            &[]
        };
        let mut lt = lt_peer(
            w,
            &format!("lt-seed{i}"),
            "seed",
            t,
            src.parent().unwrap(),
            endpoint(),
            extra,
        );
        lt.wait_line(w, "ready", secs(30));
        seeds.push(lt);
    }
    (out, seeds, tracker)
}

#[test]
fn daemon_start_list_status_stop_resume_restart_remove() {
    let w = Work::with_limit("daemon_lifecycle", secs(150));
    let cfg = write_config(&w, "max_active_downloads = 1\n");
    let (torrents, _seeds, _tracker) = two_torrents(&w);
    let mut d = Daemon::start(&w, &cfg);

    let id1 = d.ok(&w, &["start", torrents[0].0.to_str().unwrap()]);
    let id2 = d.ok(&w, &["start", torrents[1].0.to_str().unwrap()]);
    assert_eq!(id1.trim(), "1");
    assert_eq!(id2.trim(), "2");
    // Adding the same torrent again is refused with exit 1.
    let again = d.cli(&w, &["start", torrents[0].0.to_str().unwrap()]);
    assert_eq!(again.code(), Some(1), "{}", again.stderr);
    assert!(
        again.stderr.contains("already added as ID 1"),
        "{}",
        again.stderr
    );

    // With one download slot, the second waits as queued while the first downloads.
    let list = d.ok(&w, &["list"]);
    assert!(list.lines().count() >= 3, "{list}");
    let queued = d.wait_state(&w, "2", "queued", secs(10));
    assert!(queued.contains("file2.bin"), "{queued}");

    d.wait_state(&w, "1", "seeding", secs(60));
    d.wait_state(&w, "2", "seeding", secs(60));
    assert_same_file(&torrents[0].1, &w.path("dl/file1.bin"));
    assert_same_file(&torrents[1].1, &w.path("dl/file2.bin"));

    let status = d.ok(&w, &["status", "1"]);
    assert!(status.to_lowercase().contains("percent: 100"), "{status}");
    assert!(
        status.contains(&torrents[0].2),
        "status lacks the info-hash: {status}"
    );
    // An info-hash prefix works wherever an ID does.
    let by_hash = d.ok(&w, &["status", &torrents[1].2[..8]]);
    assert!(by_hash.contains("file2.bin"), "{by_hash}");
    let json = d.ok(&w, &["--json", "list"]);
    assert!(
        json.trim_start().starts_with('[') && json.contains("\"id\":1"),
        "{json}"
    );

    d.ok(&w, &["stop", "1"]);
    d.wait_state(&w, "1", "stopped", secs(10));
    d.ok(&w, &["resume", "1"]);
    d.wait_state(&w, "1", "seeding", secs(10));
    d.ok(&w, &["stop", "2"]);
    d.ok(&w, &["seed", "2"]);
    d.wait_state(&w, "2", "seeding", secs(10));

    let unknown = d.cli(&w, &["status", "99"]);
    assert_eq!(unknown.code(), Some(1), "{}", unknown.stderr);

    // Restart: IDs and completed state come back from resume data, without re-checking.
    d.shutdown(&w);
    let d2 = Daemon::start(&w, &cfg);
    let s1 = d2.wait_state(&w, "1", "seeding", secs(20));
    assert!(s1.contains("file1.bin"), "{s1}");
    d2.wait_state(&w, "2", "seeding", secs(20));

    d2.ok(&w, &["remove", "2", "--delete-data"]);
    assert!(
        !w.path("dl/file2.bin").exists(),
        "data of torrent 2 not deleted"
    );
    let list = d2.ok(&w, &["list"]);
    assert!(!list.contains("file2.bin"), "{list}");
    assert!(w.path("dl/file1.bin").exists());
    let mut d2 = d2;
    d2.shutdown(&w);
    let log = fs::read_to_string(w.path("atorrent.log")).unwrap_or_default();
    assert!(log.contains("daemon:"), "log file has no daemon lines");
}

#[test]
fn daemon_client_errors_and_socket_mode() {
    let w = Work::new("daemon_errors");
    let cfg = write_config(&w, "");
    // No daemon yet: exit 3 with a hint.
    let mut cmd = Command::new(atorrent_bin());
    cmd.arg("--config").arg(&cfg).arg("list");
    let o = run(&w, cmd, secs(10));
    assert_eq!(o.code(), Some(3), "{}", o.stderr);
    assert!(o.stderr.contains("daemon not running"), "{}", o.stderr);

    // A bad key names the file and line, exit 2.
    let bad = w.path("bad.ini");
    fs::write(&bad, "max_conections = 5\n").unwrap();
    let mut cmd = Command::new(atorrent_bin());
    cmd.arg("--config").arg(&bad).arg("daemon");
    let o = run(&w, cmd, secs(10));
    assert_eq!(o.code(), Some(2), "{}", o.stderr);
    assert!(o.stderr.contains("bad.ini:1"), "{}", o.stderr);

    let mut d = Daemon::start(&w, &cfg);
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(w.path("state/control.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    // A second daemon on the same state directory refuses to start.
    let mut cmd = Command::new(atorrent_bin());
    cmd.arg("--config").arg(&cfg).arg("daemon");
    let o = run(&w, cmd, secs(10));
    assert_eq!(o.code(), Some(1), "{}", o.stderr);
    assert!(o.stderr.contains("another atorrent daemon"), "{}", o.stderr);

    // Another user cannot drive it (the socket is 0600; credentials are checked as well).
    if Path::new("/usr/bin/setpriv").exists() && unsafe_is_root() {
        let mut cmd = Command::new("/usr/bin/setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(atorrent_bin())
            .arg("--config")
            .arg(&cfg)
            .arg("list");
        let o = run(&w, cmd, secs(10));
        assert_ne!(o.code(), Some(0), "another user was served: {}", o.stdout);
    }

    let bogus = d.cli(&w, &["start", w.path("missing.torrent").to_str().unwrap()]);
    assert_eq!(bogus.code(), Some(1), "{}", bogus.stderr);
    d.shutdown(&w);
}

fn unsafe_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[test]
fn daemon_watch_dir_and_sighup_reload() {
    let w = Work::new("daemon_watch");
    let watch = w.mkdir("watch");
    let cfg = write_config(&w, &format!("watch_dir = {}\n", watch.display()));
    let src = w.mkdir("src").join("w.bin");
    write_random_file(&src, 100_000, 5);
    let t = w.path("w.torrent");
    lt_create(&w, &src, &t, &[], 16 * 1024);
    let mut d = Daemon::start(&w, &cfg);
    fs::copy(&t, watch.join("w.torrent")).unwrap();
    fs::write(watch.join("junk.torrent"), b"not bencode").unwrap();
    let end = Instant::now() + secs(20);
    while !watch.join("w.torrent.added").exists() {
        assert!(Instant::now() < end, "watch dir file not picked up");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        watch.join("junk.torrent.invalid").exists() || {
            std::thread::sleep(Duration::from_secs(1));
            watch.join("junk.torrent.invalid").exists()
        }
    );
    let list = d.ok(&w, &["list"]);
    assert!(list.contains("w.bin"), "{list}");

    // SIGHUP re-reads the config file.
    let pid = d.proc.as_ref().unwrap().pid();
    fs::write(
        &cfg,
        fs::read_to_string(&cfg).unwrap() + "max_active_downloads = 7\n",
    )
    .unwrap();
    let st = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let end = Instant::now() + secs(10);
    loop {
        let log = fs::read_to_string(w.path("atorrent.log")).unwrap_or_default();
        if log.contains("configuration reloaded") {
            break;
        }
        assert!(Instant::now() < end, "no reload in the log");
        std::thread::sleep(Duration::from_millis(100));
    }
    d.shutdown(&w);
}

/// kill -9 at random moments of a download, restart, and the download still completes with
/// the right bytes; resume data never claims a piece that is not on disk.
#[test]
fn daemon_survives_kill_9_during_download() {
    let w = Work::with_limit("daemon_kill9", secs(170));
    let cfg = write_config(&w, "");
    let src_dir = w.mkdir("src");
    let src = src_dir.join("big.bin");
    write_random_file(&src, 24 * 1024 * 1024, 9);
    let t = w.path("big.torrent");
    let taddr = Tracker::reserve();
    let hash = lt_create(&w, &src, &t, &[Tracker::url_for(taddr)], 64 * 1024);
    let _tracker = Tracker::start(&w, taddr, &[&hash]);
    // A slow seeder, so the kills land in the middle of the download.
    let mut lt = lt_peer(
        &w,
        "lt-seed",
        "seed",
        &t,
        &src_dir,
        endpoint(),
        &["--upload-limit", "2000000"],
    );
    lt.wait_line(&w, "ready", secs(30));

    let mut d = Daemon::start(&w, &cfg);
    d.ok(&w, &["start", t.to_str().unwrap()]);
    let mut prng = Prng::new(77);
    let mut incomplete_kills = 0;
    for round in 0..10 {
        let s = d.cli(&w, &["status", "1"]);
        if s.stdout.contains("state: downloading") || s.stdout.contains("state: checking") {
            incomplete_kills += 1;
        }
        std::thread::sleep(Duration::from_millis(300 + prng.next_u64() % 700));
        let p = d.proc.take().unwrap();
        let pid = p.pid();
        let st = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "round {round}: kill failed");
        drop(p);
        d = Daemon::start(&w, &cfg);
    }
    assert!(
        incomplete_kills >= 5,
        "only {incomplete_kills} of 10 kills landed mid-download; the test is not testing"
    );
    d.wait_state(&w, "1", "seeding", secs(90));
    assert_same_file(&src, &w.path("dl/big.bin"));
    d.shutdown(&w);
}

/// Whether `pid` names a live process (a zombie awaiting its reaper counts as gone: a detached
/// daemon is not our child, and a container's init may be slow to reap it).
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3, after the parenthesised command name, is the state letter.
        Ok(s) => s
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Kills a detached daemon (found through its pid file) if a test fails before `shutdown`.
pub struct DetachedGuard(pub PathBuf);

impl Drop for DetachedGuard {
    fn drop(&mut self) {
        if let Some(pid) = fs::read_to_string(&self.0)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        {
            if pid_alive(pid) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}

/// Polls until `pid` is gone and `pid_file` removed.
pub fn wait_gone(w: &Work, pid: u32, pid_file: &Path, within: Duration) {
    let end = Instant::now() + w.cap(within);
    while pid_alive(pid) || pid_file.exists() {
        assert!(
            Instant::now() < end,
            "daemon pid {pid} alive={} pid file present={} after {within:?}",
            pid_alive(pid),
            pid_file.exists()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `daemon --detach --pid-file`: the parent returns promptly, once the control socket is up
/// (`list` works at once, with no polling); the pid file names the live daemon; a second
/// detached daemon fails in its parent with the lock error and leaves the pid file alone;
/// `shutdown` stops the daemon and removes the pid file.
#[test]
fn daemon_detach_returns_when_listening_with_pid_file() {
    let w = Work::new("daemon_detach");
    let cfg = write_config(&w, "");
    let pid_file = w.path("run/atorrent.pid");
    fs::create_dir_all(pid_file.parent().unwrap()).unwrap();
    let _guard = DetachedGuard(pid_file.clone());
    let detach = || {
        let mut cmd = Command::new(atorrent_bin());
        cmd.arg("--config")
            .arg(&cfg)
            .args(["daemon", "--detach", "--pid-file"])
            .arg(&pid_file);
        let t0 = Instant::now();
        let o = run(&w, cmd, secs(20));
        (o, t0.elapsed())
    };

    let (o, took) = detach();
    assert!(
        o.status.success(),
        "detach failed: {:?} {}",
        o.code(),
        o.stderr
    );
    assert!(took < secs(5), "--detach took {took:?} to return");
    let text = fs::read_to_string(&pid_file).expect("pid file written before the parent exits");
    let pid: u32 = text.trim().parse().expect("pid file holds a number");
    assert!(text.ends_with('\n'), "pid file {text:?}");
    assert!(pid_alive(pid), "pid {pid} from the pid file is not running");
    assert_ne!(pid, std::process::id());

    // Ready means ready: the very first client command is served.
    let mut cmd = Command::new(atorrent_bin());
    cmd.arg("--config").arg(&cfg).arg("list");
    let l = run(&w, cmd, secs(10));
    assert!(
        l.status.success(),
        "list right after --detach: {:?} {}",
        l.code(),
        l.stderr
    );
    assert!(l.stdout.starts_with("ID"), "{}", l.stdout);

    // A second detached daemon on the same state directory: its parent reports the daemon's
    // start-up error (stderr is still the caller's) and exits 1; the first one's pid file stays.
    let (o2, took2) = detach();
    assert_eq!(o2.code(), Some(1), "second daemon: {}", o2.stderr);
    assert!(took2 < secs(5), "failed --detach took {took2:?}");
    assert!(
        o2.stderr.contains("another atorrent daemon"),
        "second daemon stderr: {}",
        o2.stderr
    );
    assert_eq!(fs::read_to_string(&pid_file).unwrap(), text);
    assert!(pid_alive(pid));

    let mut cmd = Command::new(atorrent_bin());
    cmd.arg("--config").arg(&cfg).arg("shutdown");
    let s = run(&w, cmd, secs(10));
    assert!(s.status.success(), "shutdown: {}", s.stderr);
    wait_gone(&w, pid, &pid_file, secs(20));
    assert!(!w.path("state/control.sock").exists(), "socket left behind");
}

/// A detached daemon that cannot start (its control socket path is unusable) makes the
/// `--detach` parent exit 1 with the reason, instead of 0 with nothing running.
#[test]
fn daemon_detach_start_failure_reaches_the_caller() {
    let w = Work::new("daemon_detach_fail");
    // A regular file where the socket's directory should be.
    fs::write(w.path("blocker"), b"x").unwrap();
    let cfg = write_config(
        &w,
        &format!(
            "control_socket = {}\n",
            w.path("blocker/control.sock").display()
        ),
    );
    let pid_file = w.path("atorrent.pid");
    let _guard = DetachedGuard(pid_file.clone());
    let mut cmd = Command::new(atorrent_bin());
    cmd.arg("--config")
        .arg(&cfg)
        .args(["daemon", "--detach", "--pid-file"])
        .arg(&pid_file);
    let o = run(&w, cmd, secs(20));
    assert_eq!(o.code(), Some(1), "{}", o.stderr);
    assert!(
        o.stderr.starts_with("atorrent: ") && o.stderr.contains("blocker"),
        "stderr: {}",
        o.stderr
    );
    assert!(
        !pid_file.exists(),
        "pid file written by a daemon that never ran"
    );
}
