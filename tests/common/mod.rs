//! Harness for atorrent's integration tests: work dirs, loopback addresses, child processes
//! with line-waiting and kill-on-drop, deterministic file trees, and launchers for the real
//! peers (libtorrent via `tests/peers/lt_peer.py`, opentracker, aria2c, transmission-cli).
//!
//! Every wait is bounded by the test's own deadline (`Work::remaining`), so a hung peer turns
//! into a failed test with the peers' logs printed, never a hung `cargo test`. Each peer gets
//! its own 127.0.x.y (several clients assume one peer per IP); the third octet is derived from
//! the process id so that parallel test binaries on one machine rarely collide.
//! See shared/notes/interop.md for why each peer flag is there.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// Upper bound for one test, well under the 120 s hard limit so cleanup still fits.
pub const TEST_LIMIT: Duration = Duration::from_secs(110);

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The atorrent binary under test.
pub fn atorrent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_atorrent")
}

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn lt_peer_script() -> PathBuf {
    repo_root().join("tests/peers/lt_peer.py")
}

/// A Python 3 that can `import libtorrent`. Debian's python3-libtorrent lives in
/// /usr/bin/python3's dist-packages, which a pyenv `python3` earlier in PATH does not see.
pub fn python() -> &'static str {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| {
        for cand in ["/usr/bin/python3", "python3"] {
            let ok = Command::new(cand)
                .args(["-c", "import libtorrent"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return cand.to_string();
            }
        }
        panic!("no python3 with the libtorrent module: run scripts/setup.sh (python3-libtorrent)")
    })
}

/// Panics with a pointer to scripts/setup.sh when a peer program is missing.
pub fn require_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(found, "{name} not found in PATH: run scripts/setup.sh");
}

// ---------------------------------------------------------------------------------------------
// Work dir, deadline, addresses

static SEQ: AtomicU32 = AtomicU32::new(0);

/// One test's scratch directory and deadline. Removed on drop unless the test panicked; then
/// every `*.log` in it is printed (tail) and the directory is kept for inspection.
pub struct Work {
    pub dir: PathBuf,
    pub name: String,
    deadline: Instant,
}

impl Work {
    pub fn new(name: &str) -> Work {
        Work::with_limit(name, TEST_LIMIT)
    }

    pub fn with_limit(name: &str, limit: Duration) -> Work {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir()
            .join("atorrent-tests")
            .join(format!("{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create work dir");
        // opentracker drops to `nobody` and chroots below here: keep the path traversable.
        let _ = fs::set_permissions(dir.parent().unwrap(), perm(0o1777));
        set_mode(&dir, 0o755);
        Work {
            dir,
            name: name.to_string(),
            deadline: Instant::now() + limit,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// A fresh sub-directory.
    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        fs::create_dir_all(&p).expect("mkdir");
        p
    }

    /// Time left before the test's deadline; panics once it has passed.
    pub fn remaining(&self) -> Duration {
        let now = Instant::now();
        assert!(now < self.deadline, "{}: test deadline passed", self.name);
        self.deadline - now
    }

    /// `want` capped by the test deadline.
    pub fn cap(&self, want: Duration) -> Duration {
        want.min(self.remaining())
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("==== {}: kept {}", self.name, self.dir.display());
            print_logs(&self.dir);
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn print_logs(dir: &Path) {
    let mut logs = Vec::new();
    collect_files(dir, &mut logs);
    logs.retain(|p| p.extension() == Some(OsStr::new("log")));
    logs.sort();
    for p in logs {
        let text = fs::read(&p).unwrap_or_default();
        let tail = &text[text.len().saturating_sub(4000)..];
        eprintln!(
            "---- {} (last {} bytes)\n{}",
            p.display(),
            tail.len(),
            String::from_utf8_lossy(tail)
        );
    }
}

fn perm(mode: u32) -> fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    fs::Permissions::from_mode(mode)
}

fn set_mode(p: &Path, mode: u32) {
    let _ = fs::set_permissions(p, perm(mode));
}

/// A loopback address no other peer of this test process uses: 127.0.B.C with B from the
/// process id (so concurrent test binaries differ) and C from a counter.
pub fn loopback_ip() -> Ipv4Addr {
    static IPS: AtomicU32 = AtomicU32::new(0);
    let n = IPS.fetch_add(1, Ordering::SeqCst);
    let b = 1 + (std::process::id() + n / 250) % 250;
    let c = 2 + n % 250;
    Ipv4Addr::new(127, 0, b as u8, c as u8)
}

/// A TCP port that was free on `ip` a moment ago (bind port 0, read it, release it).
pub fn free_port(ip: Ipv4Addr) -> u16 {
    let l = TcpListener::bind(SocketAddrV4::new(ip, 0)).expect("bind port 0");
    l.local_addr().expect("local_addr").port()
}

/// A fresh address and free port for one peer.
pub fn endpoint() -> SocketAddrV4 {
    let ip = loopback_ip();
    SocketAddrV4::new(ip, free_port(ip))
}

/// True when /proc/net/tcp shows a listening socket on `addr` (or on 0.0.0.0 with its port).
/// Reading /proc instead of connecting keeps us from opening a bogus peer connection.
pub fn is_listening(addr: SocketAddrV4) -> bool {
    let Ok(text) = fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let want_ip = u32::from_le_bytes(addr.ip().octets());
    text.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 4 || cols[3] != "0A" {
            return false;
        }
        let Some((ip, port)) = cols[1].split_once(':') else {
            return false;
        };
        let ip = u32::from_str_radix(ip, 16).unwrap_or(1);
        let port = u16::from_str_radix(port, 16).unwrap_or(0);
        port == addr.port() && (ip == want_ip || ip == 0)
    })
}

pub fn wait_listening(work: &Work, addr: SocketAddrV4, what: &str, within: Duration) {
    let end = Instant::now() + work.cap(within);
    while !is_listening(addr) {
        assert!(Instant::now() < end, "{what} is not listening on {addr}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// True when this host can bind ::1 (IPv6 may be disabled in containers: `ip -6 addr show lo`
/// then lists nothing).
pub fn have_ipv6_loopback() -> bool {
    TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

/// `[::1]:PORT` with a port that was free a moment ago.
pub fn endpoint6() -> SocketAddr {
    let l = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).expect("bind [::1]:0");
    l.local_addr().expect("local_addr")
}

/// `is_listening` for either family: IPv6 reads /proc/net/tcp6, whose addresses are four
/// 32-bit words, each printed in host (little-endian) order.
pub fn is_listening_at(addr: SocketAddr) -> bool {
    let v6 = match addr {
        SocketAddr::V4(a) => return is_listening(a),
        SocketAddr::V6(a) => *a.ip(),
    };
    let Ok(text) = fs::read_to_string("/proc/net/tcp6") else {
        return false;
    };
    let hex6 = |ip: Ipv6Addr| -> String {
        ip.octets()
            .chunks(4)
            .map(|w| format!("{:08X}", u32::from_be_bytes([w[3], w[2], w[1], w[0]])))
            .collect()
    };
    let want = hex6(v6);
    let any = hex6(Ipv6Addr::UNSPECIFIED);
    text.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 4 || cols[3] != "0A" {
            return false;
        }
        let Some((ip, port)) = cols[1].split_once(':') else {
            return false;
        };
        let port = u16::from_str_radix(port, 16).unwrap_or(0);
        port == addr.port() && (ip.eq_ignore_ascii_case(&want) || ip == any)
    })
}

pub fn wait_listening_at(work: &Work, addr: SocketAddr, what: &str, within: Duration) {
    let end = Instant::now() + work.cap(within);
    while !is_listening_at(addr) {
        assert!(Instant::now() < end, "{what} is not listening on {addr}");
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// A running child whose stdout is read line by line (split on `\n` or `\r`) into a channel and
/// `<name>.out.log`; stderr goes to `<name>.err.log`. Dropping it sends SIGTERM, waits up to
/// 3 s, then SIGKILLs, so no peer outlives its test.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    lines: Receiver<String>,
    seen: Vec<String>,
    err_log: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    pub fn spawn(work: &Work, name: &str, mut cmd: Command) -> Proc {
        let out_log = work.path(&format!("{name}.out.log"));
        let err_log = work.path(&format!("{name}.err.log"));
        let err = File::create(&err_log).expect("create stderr log");
        writeln!(&err, "$ {cmd:?}").ok();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("stdout pipe");
        let (tx, rx) = mpsc::channel();
        let mut log = File::create(&out_log).expect("create stdout log");
        thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                // Split on '\n'; '\r' progress lines become separate lines below.
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let _ = log.write_all(&buf);
                for part in buf.split(|&b| b == b'\n' || b == b'\r') {
                    let s = String::from_utf8_lossy(part).trim().to_string();
                    if !s.is_empty() && tx.send(s).is_err() {
                        return;
                    }
                }
            }
        });
        Proc {
            name: name.to_string(),
            child: Some(child),
            lines: rx,
            seen: Vec::new(),
            err_log,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Every stdout line received so far.
    pub fn lines(&mut self) -> &[String] {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        &self.seen
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.err_log).unwrap_or_default()).into_owned()
    }

    fn fail(&mut self, what: &str) -> ! {
        let err = self.stderr_text();
        let tail = &err[err.len().saturating_sub(3000)..];
        let seen = self.lines().join("\n");
        let seen = &seen[seen.len().saturating_sub(2000)..];
        panic!(
            "{}: {what}\n-- stdout (tail):\n{seen}\n-- stderr (tail):\n{tail}",
            self.name
        );
    }

    /// True when some stdout line received so far contains `needle` (log lines carry a
    /// timestamp and level in front, so they are matched anywhere).
    pub fn saw(&mut self, needle: &str) -> bool {
        self.lines().iter().any(|l| l.contains(needle))
    }

    /// The stdout lines received so far that contain `needle`.
    pub fn lines_with(&mut self, needle: &str) -> Vec<String> {
        self.lines()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        if self.status.is_some() {
            return false;
        }
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(s))) => {
                self.status = Some(s);
                false
            }
            Some(Ok(None)) => true,
            _ => false,
        }
    }

    /// Waits for a stdout line starting with `prefix` and returns it.
    pub fn wait_line(&mut self, work: &Work, prefix: &str, within: Duration) -> String {
        if let Some(l) = self.lines().iter().find(|l| l.starts_with(prefix)) {
            return l.clone();
        }
        let end = Instant::now() + work.cap(within);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let hit = l.starts_with(prefix);
                    self.seen.push(l.clone());
                    if hit {
                        return l;
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.fail(&format!(
                    "no line starting with {prefix:?} within {within:?}"
                )),
                Err(RecvTimeoutError::Disconnected) => {
                    let st = self.try_status();
                    self.fail(&format!(
                        "stdout closed before a line starting with {prefix:?} (exit: {st:?})"
                    ))
                }
            }
        }
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(c) = self.child.as_mut() {
                // Give a just-closed stdout a moment to turn into an exit status.
                for _ in 0..20 {
                    if let Ok(Some(s)) = c.try_wait() {
                        self.status = Some(s);
                        break;
                    }
                    thread::sleep(Duration::from_millis(25));
                }
            }
        }
        self.status
    }

    /// Waits for the process to exit; panics (and the guard kills it) if it does not in time.
    pub fn wait_exit(&mut self, work: &Work, within: Duration) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let end = Instant::now() + work.cap(within);
        loop {
            if let Ok(Some(s)) = self.child.as_mut().expect("child").try_wait() {
                self.status = Some(s);
                // Let the reader thread deliver the last lines.
                thread::sleep(Duration::from_millis(50));
                self.lines();
                return s;
            }
            if Instant::now() >= end {
                self.fail(&format!("still running after {within:?}"));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for exit and asserts status 0.
    pub fn expect_success(&mut self, work: &Work, within: Duration) {
        let st = self.wait_exit(work, within);
        if !st.success() {
            self.fail(&format!("exited with {st}"));
        }
    }

    /// SIGTERM, then waits up to `grace` for the exit status (SIGKILL after that).
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        let child = self.child.as_mut()?;
        signal(child.id(), libc::SIGTERM);
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if let Ok(Some(s)) = child.try_wait() {
                self.status = Some(s);
                return self.status;
            }
            thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        self.status = child.wait().ok();
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(3));
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on the pid of our own not-yet-reaped child; no memory is touched.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Output of a short command run to completion.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Runs a short command with captured output, killing it if it outlives `within`.
pub fn run(work: &Work, mut cmd: Command, within: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t2 = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let end = Instant::now() + work.cap(within);
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {within:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: String::from_utf8_lossy(&t1.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&t2.join().unwrap_or_default()).into_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Data

/// splitmix64: a tiny deterministic generator for test data (independent of the crate's Rng).
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Prng {
        Prng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Writes `size` pseudo-random bytes (seeded) to `path`, creating parent dirs.
pub fn write_random_file(path: &Path, size: u64, seed: u64) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    let mut f = std::io::BufWriter::new(File::create(path).expect("create data file"));
    let mut rng = Prng::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).expect("write data");
        left -= n as u64;
    }
    f.flush().expect("flush");
}

/// Creates `root/<rel>` for each `(rel, size)` with distinct seeded contents.
pub fn make_tree(root: &Path, files: &[(&str, u64)], seed: u64) {
    for (i, (rel, size)) in files.iter().enumerate() {
        write_random_file(
            &root.join(rel),
            *size,
            seed.wrapping_mul(1000).wrapping_add(i as u64),
        );
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => collect_files(&p, out),
            Ok(_) => out.push(p),
            Err(_) => {}
        }
    }
}

/// Relative paths of all files under `root`, sorted.
pub fn list_files(root: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    collect_files(root, &mut v);
    let mut rel: Vec<PathBuf> = v
        .into_iter()
        .map(|p| p.strip_prefix(root).unwrap().to_path_buf())
        .collect();
    rel.sort();
    rel
}

/// Asserts two files have identical bytes, naming the first differing offset.
pub fn assert_same_file(want: &Path, got: &Path) {
    let a = File::open(want).unwrap_or_else(|e| panic!("open {}: {e}", want.display()));
    let b = File::open(got).unwrap_or_else(|e| panic!("open {}: {e}", got.display()));
    let (la, lb) = (a.metadata().unwrap().len(), b.metadata().unwrap().len());
    assert_eq!(la, lb, "size of {} vs {}", got.display(), want.display());
    let (mut ra, mut rb) = (BufReader::new(a), BufReader::new(b));
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    let mut off = 0u64;
    loop {
        let n = read_full(&mut ra, &mut ba);
        let m = read_full(&mut rb, &mut bb);
        assert_eq!(n, m, "short read comparing {}", got.display());
        if n == 0 {
            return;
        }
        if ba[..n] != bb[..n] {
            let i = ba[..n]
                .iter()
                .zip(&bb[..n])
                .position(|(x, y)| x != y)
                .unwrap();
            panic!(
                "{} differs from {} at byte {}",
                got.display(),
                want.display(),
                off + i as u64
            );
        }
        off += n as u64;
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    n
}

/// Asserts `got` holds exactly the files of `want` with the same bytes. Some clients
/// (transmission) never create zero-length files: `allow_missing_empty` tolerates that.
pub fn assert_same_tree(want: &Path, got: &Path, allow_missing_empty: bool) {
    let wf = list_files(want);
    let gf = list_files(got);
    for rel in &gf {
        assert!(
            wf.contains(rel),
            "unexpected file {} in {}",
            rel.display(),
            got.display()
        );
    }
    for rel in &wf {
        let w = want.join(rel);
        let g = got.join(rel);
        if !g.exists() && allow_missing_empty && fs::metadata(&w).unwrap().len() == 0 {
            continue;
        }
        assert!(g.exists(), "missing {}", g.display());
        assert_same_file(&w, &g);
    }
}

/// Compares a file or a directory tree.
pub fn assert_same(want: &Path, got: &Path, allow_missing_empty: bool) {
    if want.is_dir() {
        assert_same_tree(want, got, allow_missing_empty);
    } else {
        assert_same_file(want, got);
    }
}

// ---------------------------------------------------------------------------------------------
// Torrents (made by libtorrent, the reference implementation)

/// `lt_peer.py --create`: a v1-only torrent of `src`; returns the info-hash (lowercase hex).
pub fn lt_create(
    work: &Work,
    src: &Path,
    out: &Path,
    trackers: &[String],
    piece_length: u32,
) -> String {
    let mut cmd = Command::new(python());
    cmd.arg(lt_peer_script())
        .arg("--create")
        .arg(src)
        .arg("-o")
        .arg(out);
    for t in trackers {
        cmd.arg("--tracker").arg(t);
    }
    if piece_length > 0 {
        cmd.arg("--piece-length").arg(piece_length.to_string());
    }
    let o = run(work, cmd, Duration::from_secs(60));
    assert!(o.status.success(), "lt_peer --create failed: {}", o.stderr);
    parse_infohash(&o.stdout)
}

/// libtorrent's view of a torrent's v1 info-hash.
pub fn lt_infohash(work: &Work, torrent: &Path) -> String {
    let mut cmd = Command::new(python());
    cmd.arg(lt_peer_script())
        .arg("infohash")
        .arg("--torrent")
        .arg(torrent)
        .arg("--dir")
        .arg(&work.dir);
    let o = run(work, cmd, Duration::from_secs(30));
    assert!(o.status.success(), "lt_peer infohash failed: {}", o.stderr);
    parse_infohash(&o.stdout)
}

/// libtorrent hash-checks `dir` against `torrent`; returns (info-hash, pieces had, pieces).
pub fn lt_check(work: &Work, torrent: &Path, dir: &Path) -> (String, u32, u32) {
    let mut cmd = Command::new(python());
    cmd.arg(lt_peer_script())
        .arg("check")
        .arg("--torrent")
        .arg(torrent)
        .arg("--dir")
        .arg(dir)
        .arg("--timeout")
        .arg("60");
    let o = run(work, cmd, Duration::from_secs(70));
    assert!(o.status.success(), "lt_peer check failed: {}", o.stderr);
    let have = o
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("have "))
        .unwrap_or_else(|| panic!("no `have` line from lt_peer check: {}", o.stdout));
    let (a, b) = have.trim().split_once('/').expect("have N/M");
    (
        parse_infohash(&o.stdout),
        a.parse().expect("N"),
        b.parse().expect("M"),
    )
}

fn parse_infohash(stdout: &str) -> String {
    let h = stdout
        .lines()
        .find_map(|l| l.strip_prefix("infohash "))
        .unwrap_or_else(|| panic!("no `infohash` line in: {stdout}"))
        .trim()
        .to_ascii_lowercase();
    assert_eq!(h.len(), 40, "bad info-hash {h:?}");
    h
}

// ---------------------------------------------------------------------------------------------
// Peers

/// opentracker on its own loopback address, whitelisting `info_hashes`.
pub struct Tracker {
    pub proc: Proc,
    pub addr: SocketAddrV4,
}

impl Tracker {
    /// An address for a tracker to be started later: the torrent needs the announce URL
    /// before the tracker can be given the torrent's info-hash.
    pub fn reserve() -> SocketAddrV4 {
        endpoint()
    }

    /// `http://ADDR/announce` (libtorrent's ssrf_mitigation only lets loopback trackers
    /// through on /announce).
    pub fn url_for(addr: SocketAddrV4) -> String {
        format!("http://{addr}/announce")
    }

    /// Debian's opentracker is built with an access whitelist (`-w`, read inside the `-d`
    /// chroot); as root it chroots and drops to `nobody`, so the dir must be world-readable.
    /// Only the TCP (HTTP) port is bound. Returns once the port is listening.
    pub fn start(work: &Work, addr: SocketAddrV4, info_hashes: &[&str]) -> Tracker {
        require_tool("opentracker");
        let root = work.mkdir("tracker-root");
        set_mode(&root, 0o755);
        let wl = root.join("whitelist");
        fs::write(&wl, info_hashes.join("\n") + "\n").expect("write whitelist");
        set_mode(&wl, 0o644);
        let mut cmd = Command::new("opentracker");
        cmd.arg("-i")
            .arg(addr.ip().to_string())
            .arg("-p")
            .arg(addr.port().to_string())
            // The same port over UDP (BEP 15), for udp:// announce URLs.
            .arg("-P")
            .arg(addr.port().to_string())
            .arg("-d")
            .arg(&root)
            .arg("-w")
            .arg("whitelist");
        let proc = Proc::spawn(work, "opentracker", cmd);
        let mut t = Tracker { proc, addr };
        let end = Instant::now() + work.cap(Duration::from_secs(10));
        while !is_listening(addr) {
            if Instant::now() >= end {
                t.proc.fail("not listening after 10 s");
            }
            thread::sleep(Duration::from_millis(30));
        }
        t
    }

    pub fn url(&self) -> String {
        Tracker::url_for(self.addr)
    }
}

/// Starts `lt_peer.py MODE --torrent T --dir D --listen ADDR <extra>`; a seeder prints `ready`
/// after its check, a downloader `complete` when done.
pub fn lt_peer(
    work: &Work,
    name: &str,
    mode: &str,
    torrent: &Path,
    dir: &Path,
    listen: SocketAddrV4,
    extra: &[&str],
) -> Proc {
    lt_peer_at(work, name, mode, torrent, dir, listen.into(), extra)
}

/// `lt_peer` listening on any address, e.g. `[::1]:PORT`.
pub fn lt_peer_at(
    work: &Work,
    name: &str,
    mode: &str,
    torrent: &Path,
    dir: &Path,
    listen: SocketAddr,
    extra: &[&str],
) -> Proc {
    let mut cmd = Command::new(python());
    cmd.arg("-u")
        .arg(lt_peer_script())
        .arg(mode)
        .arg("--torrent")
        .arg(torrent)
        .arg("--dir")
        .arg(dir)
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--timeout")
        .arg(work.remaining().as_secs().to_string())
        .args(extra);
    Proc::spawn(work, name, cmd)
}

/// aria2c downloading `torrent` into `dir`, bound to `listen`'s IP; exits 0 when complete.
pub fn aria2c(work: &Work, name: &str, torrent: &Path, dir: &Path, listen: SocketAddrV4) -> Proc {
    require_tool("aria2c");
    let mut cmd = Command::new("aria2c");
    cmd.arg("--no-conf=true")
        .arg(format!("--dir={}", dir.display()))
        .arg("--seed-time=0")
        .arg("--enable-dht=false")
        .arg("--enable-dht6=false")
        .arg("--bt-enable-lpd=false")
        .arg("--enable-peer-exchange=false")
        .arg("--file-allocation=none")
        .arg("--disable-ipv6=true")
        .arg(format!("--interface={}", listen.ip()))
        .arg(format!("--listen-port={}", listen.port()))
        .arg("--summary-interval=0")
        .arg("--enable-color=false")
        .arg("--console-log-level=notice")
        .arg(format!("--stop={}", work.remaining().as_secs()))
        .arg(torrent);
    Proc::spawn(work, name, cmd)
}

/// transmission-cli downloading `torrent` into `dir` on `listen`. With ratio-limit 0 it exits
/// right after completion. It never dials loopback peers it hears of from a tracker, so the
/// seeder must dial `listen`; wait for `wait_listening(listen)` before asking it to.
pub fn transmission_cli(
    work: &Work,
    name: &str,
    torrent: &Path,
    dir: &Path,
    listen: SocketAddrV4,
) -> Proc {
    transmission_cli_enc(work, name, torrent, dir, listen, TrEncryption::Preferred)
}

/// transmission's `encryption` setting (0 tolerated, 1 preferred, 2 required).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrEncryption {
    Tolerated = 0,
    Preferred = 1,
    Required = 2,
}

/// `transmission_cli` with an encryption policy, set in settings.json and (tolerated, required)
/// by the matching `-et`/`-er` flag too.
pub fn transmission_cli_enc(
    work: &Work,
    name: &str,
    torrent: &Path,
    dir: &Path,
    listen: SocketAddrV4,
    encryption: TrEncryption,
) -> Proc {
    require_tool("transmission-cli");
    let cfg = work.mkdir(&format!("{name}-config"));
    let settings = format!(
        r#"{{
  "dht-enabled": false, "lpd-enabled": false, "pex-enabled": false, "utp-enabled": false,
  "port-forwarding-enabled": false, "blocklist-enabled": false, "rpc-enabled": false,
  "ratio-limit-enabled": true, "ratio-limit": 0, "idle-seeding-limit-enabled": false,
  "peer-port": {port}, "peer-port-random-on-start": false, "bind-address-ipv4": "{ip}",
  "encryption": {enc}, "message-level": 2, "speed-limit-down-enabled": false,
  "speed-limit-up-enabled": false, "alt-speed-enabled": false, "incomplete-dir-enabled": false,
  "download-dir": "{dir}", "start-added-torrents": true, "rename-partial-files": false
}}
"#,
        port = listen.port(),
        ip = listen.ip(),
        dir = dir.display(),
        enc = encryption as u8
    );
    fs::write(cfg.join("settings.json"), settings).expect("write settings.json");
    let mut cmd = Command::new("transmission-cli");
    cmd.arg("-g")
        .arg(&cfg)
        .arg("-w")
        .arg(dir)
        .arg("-p")
        .arg(listen.port().to_string())
        .arg("-M")
        .arg("-D")
        .arg("-U");
    match encryption {
        TrEncryption::Tolerated => cmd.arg("-et"),
        TrEncryption::Preferred => &mut cmd, // settings.json alone, as before
        TrEncryption::Required => cmd.arg("-er"),
    };
    cmd.arg(torrent);
    Proc::spawn(work, name, cmd)
}

/// The atorrent binary with `args`.
pub fn atorrent<S: AsRef<OsStr>>(work: &Work, name: &str, args: &[S]) -> Proc {
    let mut cmd = Command::new(atorrent_bin());
    cmd.args(args);
    Proc::spawn(work, name, cmd)
}

/// `atorrent download T --dir D --bind IP --port P <extra>`.
pub fn atorrent_download(
    work: &Work,
    name: &str,
    torrent: &Path,
    dir: &Path,
    listen: SocketAddrV4,
    extra: &[&str],
) -> Proc {
    atorrent_download_at(work, name, torrent, dir, listen.into(), extra)
}

/// `atorrent_download` bound to any address, e.g. `::1`.
pub fn atorrent_download_at(
    work: &Work,
    name: &str,
    torrent: &Path,
    dir: &Path,
    listen: SocketAddr,
    extra: &[&str],
) -> Proc {
    let mut cmd = Command::new(atorrent_bin());
    cmd.arg("download")
        .arg(torrent)
        .arg("--dir")
        .arg(dir)
        .arg("--bind")
        .arg(listen.ip().to_string())
        .arg("--port")
        .arg(listen.port().to_string());
    // Tests never let the DHT reach its public bootstrap routers: DHT tests pass their own
    // nodes and `--dht` (which turns it back on).
    if !extra.contains(&"--dht") {
        cmd.arg("--no-dht");
    }
    cmd.args(extra.iter().filter(|a| **a != "--dht"));
    Proc::spawn(work, name, cmd)
}

/// Writes `<name>.ini` in the work dir: one `key = value` line per pair, after defaults that
/// keep a test run self-contained (no DHT or PEX traffic, log to stdout). Pass it to atorrent
/// as `--config FILE`.
pub fn atorrent_config(work: &Work, name: &str, keys: &[(&str, &str)]) -> PathBuf {
    let path = work.path(&format!("{name}.ini"));
    let mut text = format!(
        "# written by the test harness\ndownload_dir = {}\nenable_dht = false\nenable_pex = false\nlog_file = -\n",
        work.path(name).display()
    );
    for (k, v) in keys {
        text.push_str(&format!("{k} = {v}\n"));
    }
    fs::write(&path, text).expect("write atorrent config");
    path
}

// ---------------------------------------------------------------------------------------------
// Loopback DHTs

/// `a:p,b:q,...`, as `--dht-bootstrap` takes it.
pub fn addr_list(addrs: &[SocketAddrV4]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `n` bare libtorrent DHT nodes, each bootstrapped to the previous ones (loopback only).
pub fn lt_dht(w: &Work, n: usize) -> (Vec<Proc>, Vec<SocketAddrV4>) {
    let mut procs = Vec::new();
    let mut addrs: Vec<SocketAddrV4> = Vec::new();
    for i in 0..n {
        let a = endpoint();
        let boot = addr_list(&addrs);
        let mut args = vec!["--timeout", "150"];
        if !boot.is_empty() {
            args.push("--dht-bootstrap");
            args.push(&boot);
        }
        let empty = PathBuf::new();
        let mut p = lt_peer(w, &format!("dht{i}"), "dht-node", &empty, &empty, a, &args);
        p.wait_line(w, "ready", secs(30));
        procs.push(p);
        addrs.push(a);
    }
    (procs, addrs)
}

/// A config for an atorrent that uses the DHT: the given loopback bootstrap nodes, a free
/// UDP port on `bind`'s address, debug logging.
pub fn dht_config(w: &Work, name: &str, boot: &[SocketAddrV4], bind: SocketAddrV4) -> PathBuf {
    let cfg = w.path(name);
    let nodes = boot
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let dht_port = free_port(*bind.ip());
    fs::write(
        &cfg,
        format!(
            "enable_dht = true\ndht_bootstrap = {nodes}\ndht_port = {dht_port}\nenable_ipv6 = false\n\
             log_level = debug\n"
        ),
    )
    .unwrap();
    cfg
}
