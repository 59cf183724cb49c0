//! Layer 3 (I/O shell): the daemon's state directory — metainfo copies, resume data, the
//! statistics file and the lock that keeps a second daemon away.
//!
//! Layout under the root (all created mode 0700):
//! - `lock`: holds the daemon's pid; `flock`ed while the daemon runs.
//! - `torrents/<hex info-hash>.torrent`: the metainfo as added.
//! - `torrents/<hex info-hash>.magnet`: a magnet link whose metadata has not arrived yet (its
//!   URI, with trackers and `x.pe` peers); replaced by the `.torrent` once the metadata is in.
//! - `resume/<hex info-hash>.resume`: verified-piece bitfield, totals, settings and the ID.
//!
//! Every file is written with [`atomic_write`] (temp file, fsync, rename, directory fsync), so a
//! power cut leaves the old or the new file, never a zero-byte or half-written one. A resume
//! file carries a version and a SHA-1 of its own bytes; any damage makes [`decode_resume`]
//! fail, and the caller then re-checks the data instead of trusting unverified pieces.
//!
//! This module touches only files in the state directory (and the stats file the caller
//! names); never torrent data, sockets or the clock (times come in as unix seconds).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::bencode::{self, put_bytes, put_int, put_kv_bytes, put_kv_int};
use crate::hash::{hex, sha1};

/// Resume format version written under the key `v`; other versions are rejected (re-check).
pub const RESUME_VERSION: i64 = 1;
/// Largest resume file read: a bitfield for 2^27 pieces (16 MiB) plus small fields. Piece
/// counts that large do not occur (64 MiB max piece length would make exabyte torrents).
pub const MAX_RESUME_BYTES: u64 = (16 << 20) + 64 * 1024;
/// Largest stored metainfo copy; matches the limit the CLI applies when reading a `.torrent`.
pub const MAX_TORRENT_BYTES: u64 = 64 << 20;
/// Largest statistics file read: it is one small JSON object; anything bigger is damage.
pub const MAX_STATS_BYTES: u64 = 64 * 1024;
/// Largest lock file read (it holds a pid and a newline).
const MAX_LOCK_BYTES: u64 = 64;
/// Largest stored magnet link; the magnet parser refuses longer ones anyway.
pub const MAX_MAGNET_BYTES: u64 = crate::magnet::MAX_URI_BYTES as u64;
/// Most torrents loaded at startup; a directory with more is not ours to trust blindly.
pub const MAX_TORRENTS: usize = 100_000;

#[derive(Debug)]
pub enum StateError {
    Io(io::Error),
    Missing,
    TooLarge,
    Bencode(bencode::Error),
    NotADict,
    BadVersion(i64),
    MissingKey(&'static str),
    BadValue(&'static str),
    BadChecksum,
    HashMismatch,
    AlreadyRunning { dir: PathBuf, pid: Option<u32> },
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::Io(e) => write!(f, "{e}"),
            StateError::Missing => write!(f, "resume file missing"),
            StateError::TooLarge => {
                write!(f, "resume file larger than {MAX_RESUME_BYTES} bytes")
            }
            StateError::Bencode(e) => write!(f, "resume file is not valid bencode: {e}"),
            StateError::NotADict => write!(f, "resume file is not a dictionary"),
            StateError::BadVersion(v) => write!(f, "unsupported resume file version {v}"),
            StateError::MissingKey(k) => write!(f, "resume file lacks '{k}'"),
            StateError::BadValue(k) => write!(f, "resume file has a bad '{k}'"),
            StateError::BadChecksum => write!(f, "resume file checksum mismatch (damaged)"),
            StateError::HashMismatch => {
                write!(f, "resume file belongs to a different torrent")
            }
            StateError::AlreadyRunning { dir, pid } => {
                write!(f, "another atorrent daemon is running on {}", dir.display())?;
                match pid {
                    Some(p) => write!(f, " (pid {p})"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl std::error::Error for StateError {}

impl From<io::Error> for StateError {
    fn from(e: io::Error) -> StateError {
        StateError::Io(e)
    }
}

/// Writes `bytes` to `path` so that after a crash at any moment `path` holds either its old
/// content or all of `bytes`: a temp file in the same directory, write, fsync, rename over
/// `path`, then fsync the directory so the rename itself is durable. Files are mode 0600.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        crate::sys::fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// What the daemon remembers about one torrent between runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Resume {
    pub id: u32,
    pub info_hash: [u8; 20],
    pub dir: PathBuf,
    pub stopped: bool,
    /// Verified pieces, BEP 3 bitfield order (high bit of byte 0 is piece 0).
    pub have: Vec<u8>,
    pub pieces: u32,
    pub downloaded: u64,
    pub uploaded: u64,
    /// Unix seconds.
    pub added_at: u64,
    pub completed_at: Option<u64>,
    pub seed_ratio: Option<f64>,
    pub seed_time: Option<u64>,
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Bencoded dictionary (keys sorted, as BEP 3 requires) with `v` = [`RESUME_VERSION`] and
/// `check` = SHA-1 of the whole encoding with the check value zeroed.
pub fn encode_resume(r: &Resume) -> Vec<u8> {
    let mut out = Vec::with_capacity(r.have.len() + 256);
    out.push(b'd');
    put_kv_int(&mut out, "added_at", to_i64(r.added_at));
    put_bytes(&mut out, b"check");
    put_bytes(&mut out, &[0u8; 20]);
    let check_at = out.len() - 20;
    if let Some(c) = r.completed_at {
        put_kv_int(&mut out, "completed_at", to_i64(c));
    }
    put_kv_bytes(&mut out, "dir", r.dir.as_os_str().as_bytes());
    put_kv_int(&mut out, "downloaded", to_i64(r.downloaded));
    put_kv_bytes(&mut out, "have", &r.have);
    put_kv_int(&mut out, "id", i64::from(r.id));
    put_kv_bytes(&mut out, "info_hash", &r.info_hash);
    put_kv_int(&mut out, "pieces", i64::from(r.pieces));
    if let Some(x) = r.seed_ratio.filter(|x| x.is_finite() && *x >= 0.0) {
        // bencode has no floats; Rust's shortest round-trip formatting keeps it exact.
        put_kv_bytes(&mut out, "seed_ratio", x.to_string().as_bytes());
    }
    if let Some(t) = r.seed_time {
        put_kv_int(&mut out, "seed_time", to_i64(t));
    }
    put_kv_int(&mut out, "stopped", i64::from(r.stopped));
    put_kv_int(&mut out, "uploaded", to_i64(r.uploaded));
    put_bytes(&mut out, b"v");
    put_int(&mut out, RESUME_VERSION);
    out.push(b'e');
    let digest = sha1(&out);
    out[check_at..check_at + 20].copy_from_slice(&digest);
    out
}

/// Decodes and verifies a resume file. Any damage (bad bencode, wrong checksum, missing or
/// out-of-range field, bitfield of the wrong size or with spare bits set) is an error.
pub fn decode_resume(bytes: &[u8]) -> Result<Resume, StateError> {
    if bytes.len() as u64 > MAX_RESUME_BYTES {
        return Err(StateError::TooLarge);
    }
    let v = bencode::decode(bytes).map_err(StateError::Bencode)?;
    if v.as_dict().is_none() {
        return Err(StateError::NotADict);
    }
    // Verify the checksum over the exact bytes, with the stored check value zeroed.
    let raw = bencode::raw_dict_value(bytes, b"check")
        .map_err(StateError::Bencode)?
        .ok_or(StateError::MissingKey("check"))?;
    let stored = v
        .get(b"check")
        .and_then(|c| c.as_bytes())
        .filter(|c| c.len() == 20)
        .ok_or(StateError::BadValue("check"))?;
    // `raw` is a sub-slice of `bytes`; its last 20 bytes are the digest.
    let end = (raw.as_ptr() as usize)
        .checked_sub(bytes.as_ptr() as usize)
        .and_then(|off| off.checked_add(raw.len()))
        .ok_or(StateError::BadValue("check"))?;
    let start = end.checked_sub(20).ok_or(StateError::BadValue("check"))?;
    let mut zeroed = bytes.to_vec();
    zeroed
        .get_mut(start..end)
        .ok_or(StateError::BadValue("check"))?
        .fill(0);
    if sha1(&zeroed) != stored {
        return Err(StateError::BadChecksum);
    }
    let int = |k: &'static str| -> Result<i64, StateError> {
        v.get(k.as_bytes())
            .ok_or(StateError::MissingKey(k))?
            .as_int()
            .ok_or(StateError::BadValue(k))
    };
    let uint = |k: &'static str| -> Result<u64, StateError> {
        u64::try_from(int(k)?).map_err(|_| StateError::BadValue(k))
    };
    let opt_uint = |k: &'static str| -> Result<Option<u64>, StateError> {
        match v.get(k.as_bytes()) {
            None => Ok(None),
            Some(_) => uint(k).map(Some),
        }
    };
    let bytes_of = |k: &'static str| -> Result<&[u8], StateError> {
        v.get(k.as_bytes())
            .ok_or(StateError::MissingKey(k))?
            .as_bytes()
            .ok_or(StateError::BadValue(k))
    };
    let version = int("v")?;
    if version != RESUME_VERSION {
        return Err(StateError::BadVersion(version));
    }
    let id = u32::try_from(int("id")?).map_err(|_| StateError::BadValue("id"))?;
    let info_hash: [u8; 20] = bytes_of("info_hash")?
        .try_into()
        .map_err(|_| StateError::BadValue("info_hash"))?;
    let dir = bytes_of("dir")?;
    if dir.is_empty() || dir.contains(&0) {
        return Err(StateError::BadValue("dir"));
    }
    let stopped = match int("stopped")? {
        0 => false,
        1 => true,
        _ => return Err(StateError::BadValue("stopped")),
    };
    let pieces = u32::try_from(int("pieces")?).map_err(|_| StateError::BadValue("pieces"))?;
    let have = bytes_of("have")?;
    // BEP 3: the bitfield is ceil(pieces / 8) bytes and spare bits at the end are zero.
    let want_len = (u64::from(pieces)).div_ceil(8);
    if have.len() as u64 != want_len {
        return Err(StateError::BadValue("have"));
    }
    let spare = (want_len * 8 - u64::from(pieces)) as u32;
    if spare > 0 {
        let mask = (1u8 << spare) - 1;
        if have.last().is_some_and(|b| b & mask != 0) {
            return Err(StateError::BadValue("have"));
        }
    }
    let seed_ratio = match v.get(b"seed_ratio") {
        None => None,
        Some(x) => Some(
            x.as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or(StateError::BadValue("seed_ratio"))?,
        ),
    };
    Ok(Resume {
        id,
        info_hash,
        dir: PathBuf::from(std::ffi::OsString::from_vec(dir.to_vec())),
        stopped,
        have: have.to_vec(),
        pieces,
        downloaded: uint("downloaded")?,
        uploaded: uint("uploaded")?,
        added_at: uint("added_at")?,
        completed_at: opt_uint("completed_at")?,
        seed_ratio,
        seed_time: opt_uint("seed_time")?,
    })
}

/// Parses a 40-hex-digit file stem into an info-hash.
fn parse_hex_hash(s: &str) -> Option<[u8; 20]> {
    let b = s.as_bytes();
    if b.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        *o = digit(*pair.first()?)? << 4 | digit(*pair.get(1)?)?;
    }
    Some(out)
}

/// Reads at most `cap` bytes of `path`; more is `TooLarge`.
fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, StateError> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StateError::Missing),
        Err(e) => return Err(StateError::Io(e)),
    };
    let mut buf = Vec::new();
    f.take(cap + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > cap {
        return Err(StateError::TooLarge);
    }
    Ok(buf)
}

/// The daemon's state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating with mode 0700 where missing) `root`, `root/torrents` and `root/resume`.
    pub fn new(root: &Path) -> io::Result<StateDir> {
        let mut b = fs::DirBuilder::new();
        b.recursive(true).mode(0o700);
        for d in [
            root.to_path_buf(),
            root.join("torrents"),
            root.join("resume"),
        ] {
            b.create(&d)?;
        }
        Ok(StateDir {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn torrent_path(&self, info_hash: &[u8; 20]) -> PathBuf {
        self.root
            .join("torrents")
            .join(format!("{}.torrent", hex(info_hash)))
    }

    pub fn resume_path(&self, info_hash: &[u8; 20]) -> PathBuf {
        self.root
            .join("resume")
            .join(format!("{}.resume", hex(info_hash)))
    }

    /// Default location of the statistics file (`stats` in the root, as config.rs defaults it).
    pub fn stats_path(&self) -> PathBuf {
        self.root.join("stats")
    }

    pub fn magnet_path(&self, info_hash: &[u8; 20]) -> PathBuf {
        self.root
            .join("torrents")
            .join(format!("{}.magnet", hex(info_hash)))
    }

    pub fn save_torrent(&self, info_hash: &[u8; 20], bytes: &[u8]) -> io::Result<()> {
        atomic_write(&self.torrent_path(info_hash), bytes)
    }

    /// Keeps a magnet link until its metadata arrives (then [`StateDir::remove_magnet`]).
    pub fn save_magnet(&self, info_hash: &[u8; 20], uri: &str) -> io::Result<()> {
        atomic_write(&self.magnet_path(info_hash), uri.as_bytes())
    }

    /// Forgets a pending magnet link (missing is fine).
    pub fn remove_magnet(&self, info_hash: &[u8; 20]) -> io::Result<()> {
        match fs::remove_file(self.magnet_path(info_hash)) {
            Ok(()) => crate::sys::fsync_dir(&self.root.join("torrents")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn save_resume(&self, r: &Resume) -> io::Result<()> {
        atomic_write(&self.resume_path(&r.info_hash), &encode_resume(r))
    }

    /// Every stored torrent, sorted by file name: its metainfo bytes, its resume data (or why
    /// it cannot be trusted, e.g. `Missing` or `BadChecksum`: re-check the data) and the path
    /// of the metainfo copy. Unreadable or oversized metainfo copies and stray files are
    /// skipped with a warning; leftover temp files from a crash are deleted.
    pub fn load_all(&self) -> Vec<(Vec<u8>, Result<Resume, StateError>, PathBuf)> {
        let mut out = Vec::new();
        let tdir = self.root.join("torrents");
        let mut names: Vec<PathBuf> = match fs::read_dir(&tdir) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => {
                log::warn!("state: cannot read {}: {e}", tdir.display());
                return out;
            }
        };
        names.sort();
        self.remove_temp_files();
        for path in names {
            if out.len() == MAX_TORRENTS {
                log::warn!("state: more than {MAX_TORRENTS} torrents; ignoring the rest");
                break;
            }
            let Some(stem) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".torrent"))
            else {
                continue;
            };
            let Some(ih) = parse_hex_hash(stem) else {
                continue;
            };
            let bytes = match read_capped(&path, MAX_TORRENT_BYTES) {
                Ok(b) => b,
                Err(e) => {
                    log::warn!("state: skipping {}: {e}", path.display());
                    continue;
                }
            };
            let resume = self.load_resume(&ih);
            out.push((bytes, resume, path));
        }
        out
    }

    /// Every pending magnet link, sorted by file name: its URI text, its resume data (ID,
    /// directory, stopped) and the path. A magnet whose `.torrent` exists already got its
    /// metadata (a crash came before the link was deleted): it is skipped and deleted.
    pub fn load_magnets(&self) -> Vec<(String, Result<Resume, StateError>, PathBuf)> {
        let mut out = Vec::new();
        let tdir = self.root.join("torrents");
        let Ok(rd) = fs::read_dir(&tdir) else {
            return out;
        };
        let mut names: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        names.sort();
        for path in names {
            if out.len() == MAX_TORRENTS {
                log::warn!("state: more than {MAX_TORRENTS} magnets; ignoring the rest");
                break;
            }
            let Some(ih) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".magnet"))
                .and_then(parse_hex_hash)
            else {
                continue;
            };
            if self.torrent_path(&ih).exists() {
                let _ = self.remove_magnet(&ih);
                continue;
            }
            let uri = match read_capped(&path, MAX_MAGNET_BYTES).map(String::from_utf8) {
                Ok(Ok(u)) => u,
                Ok(Err(_)) => {
                    log::warn!("state: skipping {}: not UTF-8", path.display());
                    continue;
                }
                Err(e) => {
                    log::warn!("state: skipping {}: {e}", path.display());
                    continue;
                }
            };
            let resume = self.load_resume(&ih);
            out.push((uri, resume, path));
        }
        out
    }

    /// The resume data stored for `ih`, if intact and really its own.
    fn load_resume(&self, ih: &[u8; 20]) -> Result<Resume, StateError> {
        let r = decode_resume(&read_capped(&self.resume_path(ih), MAX_RESUME_BYTES)?)?;
        if r.info_hash == *ih {
            Ok(r)
        } else {
            Err(StateError::HashMismatch)
        }
    }

    fn remove_temp_files(&self) {
        for sub in ["torrents", "resume", ""] {
            let dir = self.root.join(sub);
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd.flatten() {
                let name = e.file_name();
                let n = name.as_bytes();
                if n.starts_with(b".") && n.windows(4).any(|w| w == b".tmp") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    /// Forgets a torrent: deletes its metainfo copy (or pending magnet) and resume file
    /// (missing ones are fine).
    pub fn remove(&self, info_hash: &[u8; 20]) -> io::Result<()> {
        for p in [
            self.resume_path(info_hash),
            self.torrent_path(info_hash),
            self.magnet_path(info_hash),
        ] {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        crate::sys::fsync_dir(&self.root.join("resume"))?;
        crate::sys::fsync_dir(&self.root.join("torrents"))
    }

    /// Takes the daemon lock: `root/lock`, `flock`ed and holding our pid. Keep the returned
    /// `File` open for the daemon's lifetime (the lock dies with it, even on `kill -9`).
    pub fn lock(&self) -> Result<File, StateError> {
        let path = self.root.join("lock");
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)?;
        if !crate::sys::flock_exclusive(&f)? {
            let mut s = String::new();
            let _ = (&f).take(MAX_LOCK_BYTES).read_to_string(&mut s);
            return Err(StateError::AlreadyRunning {
                dir: self.root.clone(),
                pid: s.trim().parse().ok(),
            });
        }
        f.set_len(0)?;
        f.write_all(format!("{}\n", std::process::id()).as_bytes())?;
        f.sync_all()?;
        Ok(f)
    }
}

/// Cumulative statistics, kept across restarts in a small JSON file for monitoring scripts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Unix seconds when this daemon run started.
    pub started_at: u64,
    pub downloaded: u64,
    pub uploaded: u64,
    pub added: u64,
    pub completed: u64,
    pub errors: u64,
    /// Seconds the daemon has run, summed over all runs.
    pub uptime_total: u64,
}

const STATS_KEYS: [&str; 7] = [
    "started_at",
    "downloaded",
    "uploaded",
    "added",
    "completed",
    "errors",
    "uptime_total",
];

impl Stats {
    fn fields(&self) -> [u64; 7] {
        [
            self.started_at,
            self.downloaded,
            self.uploaded,
            self.added,
            self.completed,
            self.errors,
            self.uptime_total,
        ]
    }

    fn field_mut(&mut self, i: usize) -> Option<&mut u64> {
        Some(match i {
            0 => &mut self.started_at,
            1 => &mut self.downloaded,
            2 => &mut self.uploaded,
            3 => &mut self.added,
            4 => &mut self.completed,
            5 => &mut self.errors,
            6 => &mut self.uptime_total,
            _ => return None,
        })
    }
}

/// One JSON object on one line, keys in a fixed order, then `\n`.
pub fn encode_stats(s: &Stats) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in STATS_KEYS.iter().zip(s.fields()).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("\"{k}\":{v}"));
    }
    out.push_str("}\n");
    out
}

/// Reads a stats file written by [`encode_stats`]. Tolerant: a missing, oversized or damaged
/// file, or a missing or malformed field, gives zero for that field (stats are informative,
/// never a reason to refuse to start).
pub fn load_stats(path: &Path) -> Stats {
    let mut st = Stats::default();
    let Ok(buf) = read_capped(path, MAX_STATS_BYTES) else {
        return st;
    };
    for (i, k) in STATS_KEYS.iter().enumerate() {
        if let (Some(v), Some(slot)) = (json_u64_field(&buf, k), st.field_mut(i)) {
            *slot = v;
        }
    }
    st
}

/// Finds `"key"` followed by optional spaces, `:`, optional spaces and a decimal u64.
fn json_u64_field(buf: &[u8], key: &str) -> Option<u64> {
    let pat = format!("\"{key}\"");
    let pat = pat.as_bytes();
    let at = buf.windows(pat.len()).position(|w| w == pat)?;
    let mut rest = buf.get(at + pat.len()..)?;
    let skip_ws = |r: &mut &[u8]| {
        while let Some((&c, tail)) = r.split_first() {
            if !c.is_ascii_whitespace() {
                break;
            }
            *r = tail;
        }
    };
    skip_ws(&mut rest);
    rest = rest.strip_prefix(b":")?;
    skip_ws(&mut rest);
    let n = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    // u64::MAX has 20 digits; longer is damage.
    if n == 0 || n > 20 {
        return None;
    }
    std::str::from_utf8(rest.get(..n)?).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let mut r = [0u8; 8];
            crate::sys::getrandom(&mut r).unwrap();
            let p = std::env::temp_dir().join(format!("atorrent-state-{tag}-{}", hex(&r)));
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn sample() -> Resume {
        Resume {
            id: 7,
            info_hash: [0xab; 20],
            dir: PathBuf::from("/mnt/usb/with space/ü"),
            stopped: true,
            have: vec![0xff, 0x80],
            pieces: 9,
            downloaded: 123_456_789_012,
            uploaded: 42,
            added_at: 1_764_000_000,
            completed_at: Some(1_764_000_100),
            seed_ratio: Some(1.5),
            seed_time: Some(86_400),
        }
    }

    fn minimal() -> Resume {
        Resume {
            id: 0,
            info_hash: [0; 20],
            dir: PathBuf::from("/"),
            stopped: false,
            have: vec![],
            pieces: 0,
            downloaded: 0,
            uploaded: 0,
            added_at: 0,
            completed_at: None,
            seed_ratio: None,
            seed_time: None,
        }
    }

    #[test]
    fn resume_round_trips() {
        for r in [sample(), minimal()] {
            let b = encode_resume(&r);
            assert_eq!(decode_resume(&b).unwrap(), r);
        }
        let mut r = sample();
        r.seed_ratio = Some(0.1 + 0.2);
        r.pieces = 16;
        r.have = vec![0x12, 0x34];
        assert_eq!(decode_resume(&encode_resume(&r)).unwrap(), r);
    }

    #[test]
    fn resume_flipped_byte_is_rejected() {
        let b = encode_resume(&sample());
        for i in 0..b.len() {
            for bit in [0x01u8, 0x80] {
                let mut d = b.clone();
                d[i] ^= bit;
                assert!(decode_resume(&d).is_err(), "flip at {i} accepted");
            }
        }
    }

    #[test]
    fn resume_truncated_is_rejected() {
        let b = encode_resume(&sample());
        for n in 0..b.len() {
            assert!(decode_resume(&b[..n]).is_err(), "prefix {n} accepted");
        }
    }

    #[test]
    fn resume_random_mutations_never_panic() {
        let mut rng = Rng::new(0x5ea7);
        let base = encode_resume(&sample());
        for _ in 0..5000 {
            let mut d = base.clone();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(d.len());
                match rng.below(3) {
                    0 => d[at] = rng.next_u32() as u8,
                    1 => {
                        d.remove(at);
                    }
                    _ => d.insert(at, rng.next_u32() as u8),
                }
            }
            if d != base {
                assert!(decode_resume(&d).is_err());
            }
        }
    }

    /// Re-signs a hand-edited resume so the field checks (not the checksum) are exercised.
    fn resign(mut b: Vec<u8>) -> Vec<u8> {
        let raw = bencode::raw_dict_value(&b, b"check").unwrap().unwrap();
        let end = (raw.as_ptr() as usize - b.as_ptr() as usize) + raw.len();
        b[end - 20..end].fill(0);
        let d = sha1(&b);
        b[end - 20..end].copy_from_slice(&d);
        b
    }

    #[test]
    fn resume_bad_fields_rejected_even_with_valid_checksum() {
        let good = encode_resume(&sample());
        assert!(decode_resume(&resign(good.clone())).is_ok());
        let swap = |from: &[u8], to: &[u8]| {
            let at = good.windows(from.len()).position(|w| w == from).unwrap();
            let mut b = good.clone();
            b.splice(at..at + from.len(), to.iter().copied());
            resign(b)
        };
        let cases: &[(&[u8], &[u8], &str)] = &[
            (b"1:vi1e", b"1:vi2e", "unsupported resume file version 2"),
            (
                b"6:piecesi9e",
                b"6:piecesi17e",
                "resume file has a bad 'have'",
            ),
            (
                b"6:piecesi9e",
                b"6:piecesi-1e",
                "resume file has a bad 'pieces'",
            ),
            // Spare bit set: pieces 9 uses 1 bit of the second byte.
            (
                b"4:have2:\xff\x80",
                b"4:have2:\xff\xc0",
                "resume file has a bad 'have'",
            ),
            (
                b"7:stoppedi1e",
                b"7:stoppedi2e",
                "resume file has a bad 'stopped'",
            ),
            (
                b"8:uploadedi42e",
                b"8:uploadedi-42e",
                "resume file has a bad 'uploaded'",
            ),
            (
                b"2:idi7e",
                b"2:idi4294967296e",
                "resume file has a bad 'id'",
            ),
            (
                b"10:seed_ratio3:1.5",
                b"10:seed_ratio3:nan",
                "resume file has a bad 'seed_ratio'",
            ),
            (b"2:idi7e", b"", "resume file lacks 'id'"),
        ];
        for (from, to, want) in cases {
            let err = decode_resume(&swap(from, to)).unwrap_err();
            assert_eq!(err.to_string(), *want);
        }
        assert_eq!(
            decode_resume(b"i1e").unwrap_err().to_string(),
            "resume file is not a dictionary"
        );
    }

    #[test]
    fn atomic_write_replaces_whole_file_and_leaves_no_temp() {
        let t = TempDir::new("aw");
        let p = t.0.join("f.resume");
        atomic_write(&p, b"old content").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"old content");
        atomic_write(&p, b"new").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        let names: Vec<_> = fs::read_dir(&t.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f.resume")]);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A failed write (missing directory) leaves nothing behind and reports the error.
        assert!(atomic_write(&t.0.join("nope/f"), b"x").is_err());
    }

    #[test]
    fn state_dir_save_load_remove() {
        let t = TempDir::new("sd");
        let sd = StateDir::new(&t.0.join("state")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        for d in ["", "torrents", "resume"] {
            let m = fs::metadata(sd.root().join(d))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o777, 0o700, "{d}");
        }
        let r = sample();
        let mut r2 = minimal();
        r2.info_hash = [0x01; 20];
        r2.id = 2;
        let h3 = [0x02; 20];
        sd.save_torrent(&r.info_hash, b"torrent-a").unwrap();
        sd.save_resume(&r).unwrap();
        sd.save_torrent(&r2.info_hash, b"torrent-b").unwrap();
        sd.save_resume(&r2).unwrap();
        // Third torrent: metainfo but damaged resume.
        sd.save_torrent(&h3, b"torrent-c").unwrap();
        fs::write(sd.resume_path(&h3), b"garbage").unwrap();
        // A resume saved under the wrong name is not trusted.
        let h4 = [0x03; 20];
        sd.save_torrent(&h4, b"torrent-d").unwrap();
        fs::copy(sd.resume_path(&r2.info_hash), sd.resume_path(&h4)).unwrap();
        // Stray files and a leftover temp file.
        fs::write(sd.root().join("torrents/README"), b"x").unwrap();
        fs::write(sd.root().join("resume/.x.resume.tmp123"), b"x").unwrap();

        let all = sd.load_all();
        assert_eq!(all.len(), 4);
        assert_eq!(all[0].0, b"torrent-b");
        assert_eq!(all[0].1.as_ref().unwrap(), &r2);
        assert_eq!(all[0].2, sd.torrent_path(&r2.info_hash));
        assert!(matches!(all[1].1, Err(StateError::Bencode(_))));
        assert!(matches!(all[2].1, Err(StateError::HashMismatch)));
        assert_eq!(all[3].0, b"torrent-a");
        assert_eq!(all[3].1.as_ref().unwrap(), &r);
        assert!(!sd.root().join("resume/.x.resume.tmp123").exists());

        sd.remove(&r.info_hash).unwrap();
        sd.remove(&r.info_hash).unwrap(); // idempotent
        fs::remove_file(sd.resume_path(&r2.info_hash)).unwrap();
        let all = sd.load_all();
        assert_eq!(all.len(), 3);
        assert!(matches!(all[0].1, Err(StateError::Missing)));
        assert!(sd
            .torrent_path(&r.info_hash)
            .ends_with("torrents/abababababababababababababababababababab.torrent"));
        assert!(sd
            .resume_path(&r.info_hash)
            .ends_with("resume/abababababababababababababababababababab.resume"));
    }

    #[test]
    fn pending_magnet_saved_loaded_then_dropped_once_torrent_exists() {
        let t = TempDir::new("mg");
        let sd = StateDir::new(&t.0).unwrap();
        let mut r = minimal();
        r.info_hash = [0x0c; 20];
        r.id = 4;
        r.pieces = 1;
        r.have = vec![0];
        let uri = "magnet:?xt=urn:btih:0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c&x.pe=1.2.3.4%3A5";
        sd.save_magnet(&r.info_hash, uri).unwrap();
        sd.save_resume(&r).unwrap();
        // Oversized and non-UTF-8 links are skipped, not trusted.
        fs::write(
            sd.magnet_path(&[0x0d; 20]),
            vec![b'a'; MAX_MAGNET_BYTES as usize + 1],
        )
        .unwrap();
        fs::write(sd.magnet_path(&[0x0e; 20]), b"magnet:?\xff\xfe").unwrap();
        // The pending magnet is not a torrent yet.
        assert!(sd.load_all().is_empty());
        let m = sd.load_magnets();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].0, uri);
        assert_eq!(m[0].1.as_ref().unwrap(), &r);
        // Metadata arrived (torrent saved) but the link survived a crash: it is dropped.
        sd.save_torrent(&r.info_hash, b"torrent").unwrap();
        assert!(sd.load_magnets().is_empty());
        assert!(!sd.magnet_path(&r.info_hash).exists());
        // `remove` forgets a pending magnet too.
        sd.save_magnet(&[0x0f; 20], uri).unwrap();
        sd.remove(&[0x0f; 20]).unwrap();
        assert!(!sd.magnet_path(&[0x0f; 20]).exists());
        sd.remove_magnet(&[0x0f; 20]).unwrap();
    }

    #[test]
    fn lock_is_exclusive_and_names_the_holder() {
        let t = TempDir::new("lk");
        let sd = StateDir::new(&t.0).unwrap();
        let held = sd.lock().unwrap();
        let pid = std::process::id();
        assert_eq!(
            fs::read_to_string(t.0.join("lock")).unwrap(),
            format!("{pid}\n")
        );
        let err = sd.lock().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "another atorrent daemon is running on {} (pid {pid})",
                t.0.display()
            )
        );
        drop(held);
        let again = sd.lock().unwrap();
        drop(again);
    }

    /// The daemon's socket check relies on `sys::peer_uid`; tested here because this module's
    /// owner adds those wrappers (the sys test module belongs to another engineer).
    #[test]
    fn peer_uid_of_socketpair_is_our_uid() {
        use std::os::unix::io::AsRawFd;
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(
            crate::sys::peer_uid(a.as_raw_fd()).unwrap(),
            crate::sys::getuid()
        );
        let f = File::open("/dev/null").unwrap();
        assert!(crate::sys::peer_uid(f.as_raw_fd()).is_err());
    }

    #[test]
    fn stats_round_trip_and_tolerate_damage() {
        let t = TempDir::new("st");
        let p = t.0.join("stats.json");
        let s = Stats {
            started_at: 1_764_000_000,
            downloaded: u64::MAX,
            uploaded: 5,
            added: 3,
            completed: 2,
            errors: 1,
            uptime_total: 3600,
        };
        let text = encode_stats(&s);
        assert_eq!(
            text,
            "{\"started_at\":1764000000,\"downloaded\":18446744073709551615,\"uploaded\":5,\
             \"added\":3,\"completed\":2,\"errors\":1,\"uptime_total\":3600}\n"
        );
        atomic_write(&p, text.as_bytes()).unwrap();
        assert_eq!(load_stats(&p), s);
        assert_eq!(load_stats(&t.0.join("missing")), Stats::default());
        fs::write(
            &p,
            b"{\"uploaded\" : 9, \"errors\":x, \"added\":99999999999999999999999}",
        )
        .unwrap();
        assert_eq!(
            load_stats(&p),
            Stats {
                uploaded: 9,
                ..Stats::default()
            }
        );
        // Every truncation and random mutation loads without panicking.
        let mut rng = Rng::new(7);
        for n in 0..text.len() {
            fs::write(&p, &text.as_bytes()[..n]).unwrap();
            let _ = load_stats(&p);
        }
        for _ in 0..200 {
            let mut b = text.clone().into_bytes();
            let at = rng.below(b.len());
            b[at] = rng.next_u32() as u8;
            fs::write(&p, &b).unwrap();
            let _ = load_stats(&p);
        }
    }
}
