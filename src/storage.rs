//! Layer 3 (I/O shell): torrent byte ranges onto data files. The ONLY module that touches them.
//!
//! A torrent's files are one concatenated byte stream (BEP 3 "info dictionary", multi-file
//! mode); `Storage` splits each read or write over the files it spans, skips BEP 47 padding
//! files (never created; they read as zeros) and keeps a bounded LRU set of open descriptors.
//! Each file has at most one descriptor. The 4096-aligned interior of a write whose bytes are
//! also aligned in memory goes out with `O_DIRECT` switched on (no page-cache churn on small
//! routers), the unaligned edges and everything else with it switched off. Files after the first
//! of a multi-file torrent start at arbitrary torrent offsets, so they are written buffered:
//! copying their parts into an aligned buffer for `O_DIRECT` was measured slower (a direct write
//! waits for the disk on the one thread; a buffered one returns at once).
//! Every path is `root` joined with plain name components and is re-checked to stay under
//! `root`. This module does no hashing policy, no networking and never reads the clock; it must
//! never hand out bytes it did not read from disk (missing data is an error, not zeros).

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use crate::hash::{Digest, Sha1};
use crate::metainfo::Metainfo;
use crate::sys::{self, DirectChunks};

/// Alignment a write needs (file offset, length and buffer address) to use `O_DIRECT`.
const DIRECT_ALIGN: u64 = sys::ALIGN as u64;

/// Whether writes may bypass the page cache with `O_DIRECT`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DirectIo {
    /// Use direct I/O where the file system supports it, buffered otherwise.
    Auto,
    /// Require direct I/O for aligned writes; an unsupporting file system is an error.
    On,
    /// Always buffered.
    Off,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ParseDirectIoError(pub String);

impl fmt::Display for ParseDirectIoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid direct io mode {:?} (expected auto, on or off)",
            self.0
        )
    }
}

impl std::error::Error for ParseDirectIoError {}

impl FromStr for DirectIo {
    type Err = ParseDirectIoError;
    fn from_str(s: &str) -> Result<DirectIo, ParseDirectIoError> {
        match s {
            "auto" => Ok(DirectIo::Auto),
            "on" => Ok(DirectIo::On),
            "off" => Ok(DirectIo::Off),
            _ => Err(ParseDirectIoError(s.to_string())),
        }
    }
}

#[derive(Debug)]
pub enum StorageError {
    /// ENOSPC or EDQUOT while writing or creating.
    NoSpace {
        path: PathBuf,
    },
    /// Any other OS error: what we were doing and to which file.
    Io {
        op: &'static str,
        path: PathBuf,
        err: io::Error,
    },
    /// The file is missing or shorter than the range asked for: the data is not on disk.
    NotPresent {
        path: PathBuf,
    },
    /// `DirectIo::On` but the file system refuses `O_DIRECT`.
    DirectUnsupported {
        path: PathBuf,
    },
    /// The file system cannot hold a file this large (FAT32: 4 GiB - 1).
    FileTooLarge {
        path: PathBuf,
        length: u64,
        max: u64,
    },
    /// A path component is not a plain name, or the joined path left the download directory.
    UnsafePath {
        path: String,
    },
    /// Two torrent files map to the same path.
    DuplicatePath {
        path: PathBuf,
    },
    /// The file list does not tile `0..total_length` contiguously.
    BadLayout,
    /// A range past the end of the torrent.
    OutOfRange {
        offset: u64,
        len: u64,
        total: u64,
    },
    BadPiece {
        piece: u32,
    },
    EmptyScratch,
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::NoSpace { path } => write!(f, "no space left on {}", path.display()),
            StorageError::Io { op, path, err } => write!(f, "{op} {}: {err}", path.display()),
            StorageError::NotPresent { path } => {
                write!(
                    f,
                    "data not present: {} is missing or too short",
                    path.display()
                )
            }
            StorageError::DirectUnsupported { path } => write!(
                f,
                "direct io unsupported for {} (use direct io auto or off)",
                path.display()
            ),
            StorageError::FileTooLarge { path, length, max } => write!(
                f,
                "{} needs {length} bytes but its file system allows at most {max} bytes per file",
                path.display()
            ),
            StorageError::UnsafePath { path } => {
                write!(f, "file path escapes the download directory: {path}")
            }
            StorageError::DuplicatePath { path } => {
                write!(f, "two torrent files share the path {}", path.display())
            }
            StorageError::BadLayout => write!(f, "torrent file list does not cover its length"),
            StorageError::OutOfRange { offset, len, total } => write!(
                f,
                "range of {len} bytes at offset {offset} is past the torrent end ({total} bytes)"
            ),
            StorageError::BadPiece { piece } => write!(f, "piece {piece} is out of range"),
            StorageError::EmptyScratch => write!(f, "scratch buffer is empty"),
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Io { err, .. } => Some(err),
            _ => None,
        }
    }
}

fn io_err(op: &'static str, path: &Path, err: io::Error) -> StorageError {
    match err.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => StorageError::NoSpace {
            path: path.to_path_buf(),
        },
        _ => StorageError::Io {
            op,
            path: path.to_path_buf(),
            err,
        },
    }
}

fn is_einval(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::EINVAL)
}

/// Something that holds a torrent's bytes: files on disk (`Storage`) or memory (`MemStore`,
/// for tests of the torrent logic).
pub trait PieceStore {
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), StorageError>;
    /// Writes the first `len` bytes of chunk `c` at `offset`, asynchronously where it can
    /// (`Storage` with O_DIRECT and kernel AIO): the chunk stays busy in `mem` until the
    /// write completes and `DirectChunks::reap` reports it. Others write at once.
    fn write_chunk(
        &mut self,
        offset: u64,
        mem: &mut DirectChunks,
        c: u32,
        len: usize,
    ) -> Result<(), StorageError> {
        self.write(offset, &mem.chunk(c)[..len])
    }
    /// Fills `out` entirely or fails; never returns bytes that are not stored.
    fn read(&mut self, offset: u64, out: &mut [u8]) -> Result<(), StorageError>;

    /// Writes a block that found no pool chunk free (a spill); `read_spilled` reads its window
    /// back to hash it, after which the caller drops it from the cache (`drop_cache`).
    fn write_spill(&mut self, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        self.write(offset, data)
    }

    /// Reads back a range written with `write_spill`.
    fn read_spilled(&mut self, offset: u64, out: &mut [u8]) -> Result<(), StorageError> {
        self.read(offset, out)
    }

    /// Makes written data durable and gives files their final lengths (called on completion).
    fn flush(&mut self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Makes written data durable without changing file lengths.
    fn sync(&mut self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Whether any byte of the range may be stored (false only when it is certainly a hole or
    /// missing): lets a recheck skip pieces that were never written.
    fn has_data(&mut self, _offset: u64, _len: usize) -> bool {
        true
    }

    /// Hints that a range was read once and need not stay in the page cache (data hashed by
    /// reading it back). Best effort.
    fn drop_cache(&mut self, _offset: u64, _len: usize) {}

    /// SHA-1 of piece `piece`, read back in `scratch`-sized chunks.
    fn hash_piece(
        &mut self,
        meta: &Metainfo,
        piece: u32,
        scratch: &mut [u8],
    ) -> Result<Digest, StorageError> {
        let len = meta.piece_len(piece);
        if len == 0 {
            return Err(StorageError::BadPiece { piece });
        }
        if scratch.is_empty() {
            return Err(StorageError::EmptyScratch);
        }
        let mut offset = piece as u64 * meta.piece_length as u64;
        let mut left = len as usize;
        let mut h = Sha1::new();
        while left > 0 {
            let n = left.min(scratch.len());
            let chunk = &mut scratch[..n];
            self.read(offset, chunk)?;
            h.update(chunk);
            offset += n as u64;
            left -= n;
        }
        Ok(h.finish())
    }
}

/// A whole torrent in memory.
pub struct MemStore {
    data: Vec<u8>,
}

impl MemStore {
    pub fn new(total_length: usize) -> MemStore {
        MemStore {
            data: vec![0; total_length],
        }
    }

    pub fn from_bytes(data: Vec<u8>) -> MemStore {
        MemStore { data }
    }

    pub fn data(&self) -> &[u8] {
        &self.data
    }

    fn range(&self, offset: u64, len: usize) -> Result<std::ops::Range<usize>, StorageError> {
        let bad = StorageError::OutOfRange {
            offset,
            len: len as u64,
            total: self.data.len() as u64,
        };
        let start = usize::try_from(offset).map_err(|_| StorageError::OutOfRange {
            offset,
            len: len as u64,
            total: self.data.len() as u64,
        })?;
        match start.checked_add(len) {
            Some(end) if end <= self.data.len() => Ok(start..end),
            _ => Err(bad),
        }
    }
}

impl PieceStore for MemStore {
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        let r = self.range(offset, data.len())?;
        self.data[r].copy_from_slice(data);
        Ok(())
    }

    fn read(&mut self, offset: u64, out: &mut [u8]) -> Result<(), StorageError> {
        let r = self.range(offset, out.len())?;
        out.copy_from_slice(&self.data[r]);
        Ok(())
    }
}

/// Counters for tests and status output.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct IoStats {
    pub opens: u64,
    pub reads: u64,
    pub bytes_read: u64,
    pub direct_writes: u64,
    /// Direct writes handed to kernel AIO (also counted in `direct_writes`).
    pub async_writes: u64,
    pub buffered_writes: u64,
    pub bytes_written: u64,
    /// Files made durable by `sync_all`.
    pub syncs: u64,
}

struct OpenFd {
    file: File,
    last_use: u64,
    /// Opened read-write; read-only descriptors (recheck, seeding) are reopened for writing.
    writable: bool,
    /// `O_DIRECT` is currently set on the descriptor.
    direct: bool,
}

struct FileSlot {
    path: PathBuf,
    offset: u64,
    length: u64,
    pad: bool,
    fd: Option<OpenFd>,
    direct_unavailable: bool,
    logged_direct: bool,
    logged_buffered: bool,
    /// A synchronous direct write to this file has succeeded: later aligned writes may go
    /// through kernel AIO.
    direct_ok: bool,
    /// Written (or truncated) since the last sync. Kept apart from the descriptor, which the
    /// open-file cap may close in between: `sync_all` reopens such a file.
    dirty: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// The torrent's files under `root`.
pub struct Storage {
    files: Vec<FileSlot>,
    total_length: u64,
    mode: DirectIo,
    max_open: usize,
    /// Indices of the files with an open descriptor; never longer than `max_open`.
    open: Vec<usize>,
    /// What only writing needs, made on the first write: a seed never needs it (a daemon
    /// holds thousands of seeds), so it costs them 8 bytes.
    writing: Option<Box<Writing>>,
    tick: u64,
    warned_direct: bool,
    stats: IoStats,
    /// `stats.bytes_written` when the summary was last logged (flush runs at completion and
    /// again at shutdown; the summary is worth one line).
    logged_written: u64,
}

#[derive(Default)]
struct Writing {
    /// Parent directories already created: many files share a few directories, and
    /// `create_dir_all` costs a mkdir and a stat even when the directory exists.
    dirs_made: HashSet<PathBuf>,
    /// Spilled ranges (file, offset, length) dropped from the page cache while their
    /// writeback may still have been running; dropped for good once newer ones push them out.
    dropped: VecDeque<(usize, u64, u64)>,
}

/// Spilled ranges whose page-cache drop is retried later (`Storage::dropped`): by the time a
/// range is this many spilled windows old its writeback has normally finished.
const DROP_AGAIN_AFTER: usize = 16;

/// `root` joined with `comps`, each of which must be one plain file name; the result is checked
/// to start with `root` (defence in depth: metainfo has already sanitised the names).
fn safe_join(root: &Path, comps: &[String]) -> Result<PathBuf, StorageError> {
    let unsafe_path = || StorageError::UnsafePath {
        path: comps.join("/"),
    };
    if comps.is_empty() {
        return Err(unsafe_path());
    }
    let mut p = root.to_path_buf();
    for c in comps {
        let mut it = Path::new(c).components();
        match (it.next(), it.next()) {
            (Some(Component::Normal(n)), None)
                if n.len() == c.len() && !c.contains('/') && !c.contains('\0') =>
            {
                p.push(n)
            }
            _ => return Err(unsafe_path()),
        }
    }
    if !p.starts_with(root) || p == root {
        return Err(unsafe_path());
    }
    Ok(p)
}

/// The file system limit check: the largest real file must fit.
fn check_fits(files: &[FileSlot], max: Option<u64>) -> Result<(), StorageError> {
    let Some(max) = max else { return Ok(()) };
    match files.iter().filter(|f| !f.pad).max_by_key(|f| f.length) {
        Some(f) if f.length > max => Err(StorageError::FileTooLarge {
            path: f.path.clone(),
            length: f.length,
            max,
        }),
        _ => Ok(()),
    }
}

impl Storage {
    /// Maps `meta`'s files under `root`. Touches nothing on disk except a `statfs` of `root` (or
    /// its nearest existing ancestor) to reject files too large for the file system.
    pub fn open(
        root: &Path,
        meta: &Metainfo,
        direct: DirectIo,
        max_open_files: usize,
    ) -> Result<Storage, StorageError> {
        let mut files = Vec::with_capacity(meta.files.len());
        let mut seen = HashSet::with_capacity(meta.files.len());
        let mut expect_offset = 0u64;
        for fe in &meta.files {
            if fe.offset != expect_offset {
                return Err(StorageError::BadLayout);
            }
            expect_offset = fe
                .offset
                .checked_add(fe.length)
                .ok_or(StorageError::BadLayout)?;
            let path = safe_join(root, &fe.path)?;
            if !fe.pad && !seen.insert(path.clone()) {
                return Err(StorageError::DuplicatePath { path });
            }
            files.push(FileSlot {
                path,
                offset: fe.offset,
                length: fe.length,
                pad: fe.pad,
                fd: None,
                direct_unavailable: direct == DirectIo::Off,
                logged_direct: false,
                direct_ok: false,
                logged_buffered: false,
                dirty: false,
            });
        }
        if expect_offset != meta.total_length {
            return Err(StorageError::BadLayout);
        }
        // `root` may not exist yet: ask about its nearest existing ancestor ("" means ".").
        let existing = root
            .ancestors()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .find(|p| p.exists())
            .unwrap_or(root);
        check_fits(&files, sys::fs_max_file_size(existing))?;
        let max_open = max_open_files.max(1);
        Ok(Storage {
            // Grown on first use: an idle seed opens nothing.
            open: Vec::new(),
            writing: None,
            files,
            total_length: meta.total_length,
            mode: direct,
            max_open,
            tick: 0,
            warned_direct: false,
            stats: IoStats::default(),
            logged_written: u64::MAX,
        })
    }

    pub fn stats(&self) -> IoStats {
        self.stats
    }

    /// Number of descriptors currently open (never more than `max_open_files`).
    pub fn open_fds(&self) -> usize {
        self.open.len()
    }

    /// Paths of the real (non-padding) files, in torrent order.
    pub fn file_paths(&self) -> Vec<PathBuf> {
        self.files
            .iter()
            .filter(|f| !f.pad)
            .map(|f| f.path.clone())
            .collect()
    }

    /// Index of the first file whose bytes reach past `offset` (skips empty files).
    fn first_file(&self, offset: u64) -> usize {
        self.files
            .partition_point(|f| f.offset + f.length <= offset)
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<(), StorageError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.total_length => Ok(()),
            _ => Err(StorageError::OutOfRange {
                offset,
                len: len as u64,
                total: self.total_length,
            }),
        }
    }

    /// The file spans of `offset..offset+len` (already range-checked), padding included.
    fn spans(&self, offset: u64, len: usize) -> Spans {
        Spans {
            index: self.first_file(offset),
            pos: offset,
            done: 0,
            len,
        }
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        self.check_range(offset, data.len())?;
        let mut spans = self.spans(offset, data.len());
        while let Some((i, file_off, range)) = spans.next(&self.files) {
            if self.files[i].pad {
                continue;
            }
            self.write_span(i, file_off, &data[range])?;
        }
        Ok(())
    }

    /// `write` from chunk `c` of `mem`, handing each file's aligned interior to kernel AIO when
    /// the file has already taken a direct write (so the file system is known to accept
    /// O_DIRECT and an asynchronous EINVAL cannot arise); the rest, and everything when AIO is
    /// unavailable or its queue is full, is written synchronously as `write` does.
    pub fn write_chunk(
        &mut self,
        offset: u64,
        mem: &mut DirectChunks,
        c: u32,
        len: usize,
    ) -> Result<(), StorageError> {
        let len = len.min(mem.chunk_len());
        self.check_range(offset, len)?;
        let mut spans = self.spans(offset, len);
        while let Some((i, file_off, range)) = spans.next(&self.files) {
            if self.files[i].pad {
                continue;
            }
            let end = file_off + range.len() as u64;
            let lo = file_off.next_multiple_of(DIRECT_ALIGN);
            let hi = end - end % DIRECT_ALIGN;
            let (a, b) = (
                range.start + (lo - file_off) as usize,
                range.start + (hi.max(lo) - file_off) as usize,
            );
            let f = &self.files[i];
            let queued = hi > lo
                && f.direct_ok
                && !f.direct_unavailable
                && a % sys::ALIGN == 0
                && match self.fd(i, Access::Write, Some(true)) {
                    Ok(file) => mem.submit_write(c, a..b, file, lo).is_ok(),
                    Err(_) => false,
                };
            if queued {
                self.files[i].dirty = true;
                self.stats.direct_writes += 1;
                self.stats.async_writes += 1;
                self.stats.bytes_written += (b - a) as u64;
                if a > range.start {
                    let data = &mem.chunk(c)[range.start..a];
                    self.write_buffered(i, file_off, data)?;
                }
                if b < range.end {
                    let data = &mem.chunk(c)[b..range.end];
                    self.write_buffered(i, hi, data)?;
                }
            } else {
                let data = &mem.chunk(c)[range];
                self.write_span(i, file_off, data)?;
                // A span that could not go direct (in a multi-file torrent, a file starting
                // at an unaligned offset of the window) is not kept in the page cache either,
                // unless the user turned direct I/O off.
                if self.mode != DirectIo::Off {
                    self.uncache(i, file_off, data.len() as u64);
                }
            }
        }
        Ok(())
    }

    /// Whether any non-pad file span of the range holds data: false when every file is missing,
    /// shorter than the span, or has a hole there (`SEEK_DATA`).
    pub fn has_data(&mut self, offset: u64, len: usize) -> bool {
        if self.check_range(offset, len).is_err() {
            return false;
        }
        let mut spans = self.spans(offset, len);
        while let Some((i, file_off, range)) = spans.next(&self.files) {
            if self.files[i].pad {
                continue;
            }
            let Ok(f) = self.fd(i, Access::Read, None) else {
                continue;
            };
            if crate::sys::has_data(f, file_off, range.len() as u64) {
                return true;
            }
        }
        false
    }

    /// `posix_fadvise(DONTNEED)` over a byte range of the torrent (keeps O_DIRECT downloads
    /// out of the page cache when a spilled piece had to be read back for hashing).
    pub fn drop_cache(&mut self, offset: u64, len: usize) {
        if self.check_range(offset, len).is_err() {
            return;
        }
        let mut spans = self.spans(offset, len);
        while let Some((i, file_off, range)) = spans.next(&self.files) {
            if self.files[i].pad {
                continue;
            }
            self.uncache(i, file_off, range.len() as u64);
        }
    }

    /// Drops a range of file `i` written through the page cache from it: the pages may still
    /// be dirty, which the drop skips, so their writeback is started now and the range is
    /// dropped again (after waiting for that writeback) `DROP_AGAIN_AFTER` ranges later.
    fn uncache(&mut self, i: usize, file_off: u64, len: u64) {
        if let Ok(f) = self.fd(i, Access::Read, None) {
            crate::sys::start_writeback(f, file_off, len);
            crate::sys::fadvise_dontneed(f, file_off, len);
        }
        let ring = &mut self.writing.get_or_insert_with(Box::default).dropped;
        ring.push_back((i, file_off, len));
        if ring.len() > DROP_AGAIN_AFTER {
            if let Some((j, off, n)) = ring.pop_front() {
                if let Ok(f) = self.fd(j, Access::Read, None) {
                    // Written back long ago as a rule, so the wait is normally nil.
                    crate::sys::finish_writeback(f, off, n);
                    crate::sys::fadvise_dontneed(f, off, n);
                }
            }
        }
    }

    pub fn read(&mut self, offset: u64, out: &mut [u8]) -> Result<(), StorageError> {
        self.read_with(offset, out, true)
    }

    /// A spilled block. With `direct_io = on`, an aligned direct write like any other.
    /// Otherwise through the page cache: a synchronous O_DIRECT write would stall the one
    /// thread for a disk round trip per 16 KiB block, and with several fast peers spills are
    /// common (four loopback seeders, 1 GiB: 1.8-1.9 s instead of 2.6-3.2 s). The window is
    /// read back from the cache to hash it and then dropped from it.
    pub fn write_spill(&mut self, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        if self.mode == DirectIo::On {
            return self.write(offset, data);
        }
        self.check_range(offset, data.len())?;
        let mut spans = self.spans(offset, data.len());
        while let Some((i, file_off, range)) = spans.next(&self.files) {
            if self.files[i].pad {
                continue;
            }
            self.write_buffered(i, file_off, &data[range])?;
        }
        Ok(())
    }

    /// Reads back spilled blocks: from the page cache, unless `direct_io = on` wrote them
    /// direct.
    pub fn read_spilled(&mut self, offset: u64, out: &mut [u8]) -> Result<(), StorageError> {
        self.read_with(offset, out, self.mode == DirectIo::On)
    }

    /// `read`, with O_DIRECT for aligned spans of direct-written files only if `allow_direct`.
    fn read_with(
        &mut self,
        offset: u64,
        out: &mut [u8],
        allow_direct: bool,
    ) -> Result<(), StorageError> {
        self.check_range(offset, out.len())?;
        let mut spans = self.spans(offset, out.len());
        while let Some((i, file_off, range)) = spans.next(&self.files) {
            let buf = &mut out[range];
            if self.files[i].pad {
                // BEP 47: padding files are all zeros and never stored.
                buf.fill(0);
                continue;
            }
            // Aligned reads of a file that takes direct writes bypass the page cache too (the
            // read-back of spilled windows for hashing): buffered, they would pull the range
            // and the kernel's readahead beyond it into the cache.
            let f = &self.files[i];
            let direct = allow_direct
                && f.direct_ok
                && !f.direct_unavailable
                && buf.as_ptr() as usize % sys::ALIGN == 0
                && file_off % DIRECT_ALIGN == 0
                && buf.len() as u64 % DIRECT_ALIGN == 0;
            let file = match self.fd(i, Access::Read, Some(direct)) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(self.not_present(i));
                }
                Err(e) => return Err(io_err("open", &self.files[i].path, e)),
            };
            match file.read_exact_at(buf, file_off) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(self.not_present(i));
                }
                Err(e) => return Err(io_err("read", &self.files[i].path, e)),
            }
            self.stats.reads += 1;
            self.stats.bytes_read += buf.len() as u64;
        }
        Ok(())
    }

    fn not_present(&self, i: usize) -> StorageError {
        StorageError::NotPresent {
            path: self.files[i].path.clone(),
        }
    }

    /// Writes one file's part: the 4096-aligned interior with `O_DIRECT` when its bytes are
    /// aligned in memory too, the edges and everything else buffered.
    fn write_span(&mut self, i: usize, file_off: u64, data: &[u8]) -> Result<(), StorageError> {
        let end = file_off + data.len() as u64;
        let lo = file_off.next_multiple_of(DIRECT_ALIGN);
        let hi = end - end % DIRECT_ALIGN;
        if hi > lo && !self.files[i].direct_unavailable {
            let (a, b) = ((lo - file_off) as usize, (hi - file_off) as usize);
            let mid = &data[a..b];
            if mid.as_ptr() as usize % sys::ALIGN == 0 && self.write_direct(i, lo, mid)? {
                if a > 0 {
                    self.write_buffered(i, file_off, &data[..a])?;
                }
                if b < data.len() {
                    self.write_buffered(i, hi, &data[b..])?;
                }
                return Ok(());
            }
        }
        self.write_buffered(i, file_off, data)
    }

    /// One aligned `O_DIRECT` write. False when auto mode found direct I/O unavailable (nothing
    /// written; the file is buffered from now on).
    fn write_direct(&mut self, i: usize, off: u64, data: &[u8]) -> Result<bool, StorageError> {
        let res = match self.fd(i, Access::Write, Some(true)) {
            Ok(file) => file.write_all_at(data, off).map_err(|e| ("write", e)),
            Err(e) => Err(("open", e)),
        };
        match res {
            Ok(()) => {
                self.stats.direct_writes += 1;
                self.stats.bytes_written += data.len() as u64;
                let f = &mut self.files[i];
                f.direct_ok = true;
                f.dirty = true;
                if !f.logged_direct {
                    f.logged_direct = true;
                    log::debug!("storage: writing {} with direct io", f.path.display());
                }
                Ok(true)
            }
            Err((_, e)) if is_einval(&e) && self.mode == DirectIo::Auto => {
                self.direct_failed(i);
                Ok(false)
            }
            Err((_, e)) if is_einval(&e) => Err(StorageError::DirectUnsupported {
                path: self.files[i].path.clone(),
            }),
            Err((op, e)) => Err(io_err(op, &self.files[i].path, e)),
        }
    }

    fn write_buffered(&mut self, i: usize, off: u64, data: &[u8]) -> Result<(), StorageError> {
        let file = match self.fd(i, Access::Write, Some(false)) {
            Ok(f) => f,
            Err(e) => return Err(io_err("open", &self.files[i].path, e)),
        };
        file.write_all_at(data, off)
            .map_err(|e| io_err("write", &self.files[i].path, e))?;
        self.stats.buffered_writes += 1;
        self.stats.bytes_written += data.len() as u64;
        let f = &mut self.files[i];
        f.dirty = true;
        if !f.logged_buffered {
            f.logged_buffered = true;
            log::debug!("storage: writing {} with buffered io", f.path.display());
        }
        Ok(())
    }

    /// Auto mode: the file system refused `O_DIRECT` (EINVAL); use buffered writes from now on.
    fn direct_failed(&mut self, i: usize) {
        // Closed rather than switched back: the flag state after a failed write is not worth
        // trusting, and the next write reopens the file plainly.
        self.close_fd(i);
        self.files[i].direct_unavailable = true;
        let path = self.files[i].path.display();
        // Usually every file of a torrent shares one file system: warn once, not per file.
        if !self.warned_direct {
            self.warned_direct = true;
            log::warn!("storage: direct io unavailable for {path}, using buffered writes");
        } else {
            log::debug!("storage: direct io unavailable for {path}, using buffered writes");
        }
    }

    /// Returns file `i`'s descriptor, opened for `access` (a read-only one is reopened
    /// read-write for writing), closing the least recently used one when at the cap, with
    /// `O_DIRECT` set to `direct` (`None`: left as it is, for calls that move no data).
    fn fd(&mut self, i: usize, access: Access, direct: Option<bool>) -> io::Result<&File> {
        self.tick += 1;
        let tick = self.tick;
        let usable = match &self.files[i].fd {
            Some(fd) => access == Access::Read || fd.writable,
            None => false,
        };
        if !usable {
            if self.files[i].fd.is_some() {
                self.close_fd(i);
            }
            if access == Access::Write {
                self.make_dirs(i)?;
            }
            while self.open.len() >= self.max_open {
                self.evict_lru();
            }
            let path = &self.files[i].path;
            let file = match access {
                Access::Read => File::open(path)?,
                Access::Write => OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)?,
            };
            self.stats.opens += 1;
            self.open.push(i);
            self.files[i].fd = Some(OpenFd {
                file,
                last_use: tick,
                writable: access == Access::Write,
                direct: false,
            });
        }
        let Some(fd) = self.files[i].fd.as_mut() else {
            return Err(io::Error::other("descriptor vanished"));
        };
        fd.last_use = tick;
        if let Some(want) = direct {
            if fd.direct != want {
                sys::set_direct(&fd.file, want)?;
                fd.direct = want;
            }
        }
        Ok(&fd.file)
    }

    /// Creates file `i`'s parent directories unless an earlier file already did.
    fn make_dirs(&mut self, i: usize) -> io::Result<()> {
        let Some(parent) = self.files[i].path.parent() else {
            return Ok(());
        };
        let made = &mut self.writing.get_or_insert_with(Box::default).dirs_made;
        if !made.contains(parent) {
            fs::create_dir_all(parent)?;
            made.insert(parent.to_path_buf());
        }
        Ok(())
    }

    fn evict_lru(&mut self) {
        let files = &self.files;
        let victim = self
            .open
            .iter()
            .copied()
            .min_by_key(|&i| files[i].fd.as_ref().map_or(0, |fd| fd.last_use));
        match victim {
            Some(i) => self.close_fd(i),
            None => debug_assert!(false, "evict with nothing open"),
        }
    }

    fn close_fd(&mut self, i: usize) {
        drop(self.files[i].fd.take());
        // Always drop the list entry, so `evict_lru` makes progress even if state diverged.
        if let Some(pos) = self.open.iter().position(|&e| e == i) {
            self.open.swap_remove(pos);
        }
    }

    /// SHA-1 of piece `piece` read back from disk in `scratch`-sized chunks.
    pub fn hash_piece(
        &mut self,
        meta: &Metainfo,
        piece: u32,
        scratch: &mut [u8],
    ) -> Result<Digest, StorageError> {
        PieceStore::hash_piece(self, meta, piece, scratch)
    }

    /// Startup recheck: hashes every piece whose files all exist and are long enough, and
    /// reports the others as not ok without reading them (a fresh download reads nothing).
    /// Returns the number of good pieces.
    pub fn check_existing(
        &mut self,
        meta: &Metainfo,
        scratch: &mut [u8],
        mut progress: impl FnMut(u32, bool),
    ) -> Result<u32, StorageError> {
        // One stat per real file; padding files always "exist".
        let sizes: Vec<u64> = self
            .files
            .iter()
            .map(|f| {
                if f.pad {
                    u64::MAX
                } else {
                    fs::metadata(&f.path)
                        .ok()
                        .filter(|m| m.is_file())
                        .map_or(0, |m| m.len())
                }
            })
            .collect();
        let mut good = 0;
        let plen = meta.piece_length as u64;
        for piece in 0..meta.piece_count() {
            let start = piece as u64 * plen;
            let len = meta.piece_len(piece) as usize;
            if self.check_range(start, len).is_err() {
                progress(piece, false);
                continue;
            }
            let mut spans = self.spans(start, len);
            let mut on_disk = true;
            while let Some((i, off, r)) = spans.next(&self.files) {
                on_disk &= sizes[i] >= off + r.len() as u64;
            }
            if !on_disk {
                progress(piece, false);
                continue;
            }
            let ok = match self.hash_piece(meta, piece, scratch) {
                Ok(h) => meta.piece_hash(piece) == Some(&h),
                Err(StorageError::NotPresent { .. }) => false,
                Err(e) => return Err(e),
            };
            good += ok as u32;
            progress(piece, ok);
        }
        Ok(good)
    }

    /// fdatasync every file written since its last sync, through its cached descriptor or,
    /// when the open-file cap closed that in between (buffered data stays in the page cache
    /// after close), a descriptor opened just for the sync. Returns the first error (after
    /// trying all of them); files that failed stay marked.
    pub fn sync_all(&mut self) -> Result<(), StorageError> {
        let r = self.sync_files();
        // Everything is written back now: the spilled ranges still cached can go.
        let dropped = self
            .writing
            .as_mut()
            .map(|w| std::mem::take(&mut w.dropped));
        for (i, off, n) in dropped.unwrap_or_default() {
            if let Ok(f) = self.fd(i, Access::Read, None) {
                crate::sys::fadvise_dontneed(f, off, n);
            }
        }
        r
    }

    fn sync_files(&mut self) -> Result<(), StorageError> {
        let mut first = None;
        for f in self.files.iter_mut().filter(|f| f.dirty) {
            let res = match f.fd.as_ref().filter(|fd| fd.writable) {
                Some(fd) => fd.file.sync_data(),
                // Not created: the file was written, so it exists unless someone removed it.
                None => OpenOptions::new()
                    .write(true)
                    .open(&f.path)
                    .and_then(|file| file.sync_data()),
            };
            match res {
                Ok(()) => {
                    f.dirty = false;
                    self.stats.syncs += 1;
                }
                Err(e) => {
                    first.get_or_insert_with(|| io_err("sync", &f.path, e));
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    pub fn close_all(&mut self) {
        for f in &mut self.files {
            f.fd = None;
        }
        self.open.clear();
    }

    /// After completion: give every real file its exact length (truncating leftovers of an
    /// older, longer file) and create empty files, which no piece ever writes.
    pub fn set_len_final(&mut self) -> Result<(), StorageError> {
        for i in 0..self.files.len() {
            let f = &self.files[i];
            if f.pad {
                continue;
            }
            let current = match fs::metadata(&f.path) {
                Ok(m) => Some(m.len()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(io_err("stat", &f.path, e)),
            };
            match current {
                Some(n) if n == f.length => continue,
                None if f.length > 0 => return Err(self.not_present(i)),
                _ => {}
            }
            let length = f.length;
            let file = match self.fd(i, Access::Write, None) {
                Ok(f) => f,
                Err(e) => return Err(io_err("open", &self.files[i].path, e)),
            };
            file.set_len(length)
                .map_err(|e| io_err("truncate", &self.files[i].path, e))?;
            self.files[i].dirty = true;
        }
        Ok(())
    }
}

impl PieceStore for Storage {
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        Storage::write(self, offset, data)
    }

    fn write_chunk(
        &mut self,
        offset: u64,
        mem: &mut DirectChunks,
        c: u32,
        len: usize,
    ) -> Result<(), StorageError> {
        Storage::write_chunk(self, offset, mem, c, len)
    }

    fn read(&mut self, offset: u64, out: &mut [u8]) -> Result<(), StorageError> {
        Storage::read(self, offset, out)
    }

    fn write_spill(&mut self, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        Storage::write_spill(self, offset, data)
    }

    fn read_spilled(&mut self, offset: u64, out: &mut [u8]) -> Result<(), StorageError> {
        Storage::read_spilled(self, offset, out)
    }

    fn flush(&mut self) -> Result<(), StorageError> {
        self.set_len_final()?;
        let st = &self.stats;
        if st.bytes_written != self.logged_written {
            self.logged_written = st.bytes_written;
            log::info!(
            "storage: {} direct writes ({} async), {} buffered, {} MB written; {} reads, {} MB; {} opens",
            st.direct_writes,
            st.async_writes,
            st.buffered_writes,
            st.bytes_written >> 20,
            st.reads,
                st.bytes_read >> 20,
                st.opens
            );
        }
        self.sync_all()
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.sync_all()
    }

    fn drop_cache(&mut self, offset: u64, len: usize) {
        Storage::drop_cache(self, offset, len)
    }

    fn has_data(&mut self, offset: u64, len: usize) -> bool {
        Storage::has_data(self, offset, len)
    }
}

/// Cursor over the file spans of a byte range. Holds no borrow, so the caller can mutate the
/// storage between steps; `next` yields (file index, offset within file, range in buffer).
struct Spans {
    index: usize,
    pos: u64,
    done: usize,
    len: usize,
}

impl Spans {
    fn next(&mut self, files: &[FileSlot]) -> Option<(usize, u64, std::ops::Range<usize>)> {
        while self.done < self.len {
            let i = self.index;
            let f = files.get(i)?;
            self.index += 1;
            // Files tile the torrent contiguously (checked in `open`), so `pos >= f.offset`.
            let in_file = self.pos.checked_sub(f.offset)?;
            let avail = f.length.saturating_sub(in_file);
            let n = avail.min((self.len - self.done) as u64) as usize;
            if n == 0 {
                continue;
            }
            let range = self.done..self.done + n;
            self.done += n;
            self.pos += n as u64;
            return Some((i, in_file, range));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::sha1;
    use crate::metainfo::FileEntry;
    use crate::rng::Rng;
    use crate::sys::AlignedBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    const BLOCK: usize = 16384;

    /// A unique directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir()
                .join(format!("atorrent-storage-{}-{tag}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Multi-file torrent "t" with (name, length, pad) files; returns it and its data (pad
    /// regions zero, the rest seeded random).
    fn torrent(files: &[(&str, u64, bool)], piece_length: u32) -> (Metainfo, Vec<u8>) {
        let mut entries = Vec::new();
        let mut offset = 0;
        for &(name, length, pad) in files {
            entries.push(FileEntry {
                path: vec!["t".to_string(), "sub".to_string(), name.to_string()],
                length,
                offset,
                pad,
            });
            offset += length;
        }
        let mut data = vec![0u8; offset as usize];
        Rng::new(7).fill(&mut data);
        for e in entries.iter().filter(|e| e.pad) {
            data[e.offset as usize..(e.offset + e.length) as usize].fill(0);
        }
        let pieces = data.chunks(piece_length as usize).flat_map(sha1).collect();
        let meta = Metainfo {
            info_hash: [0; 20],
            name: "t".to_string(),
            piece_length,
            info: crate::metainfo::InfoDict::bare_hashes(pieces),
            files: entries,
            total_length: offset,
            private: false,
            trackers: Vec::new(),
            multi_file: true,
        };
        (meta, data)
    }

    /// Files straddling blocks at odd offsets; "d" starts 16 KiB-aligned (so some of its
    /// blocks can go direct) and ends unaligned; "pad" is a BEP 47 padding file.
    fn odd_torrent() -> (Metainfo, Vec<u8>) {
        torrent(
            &[
                ("a", 1, false),
                ("b", 16383, false),
                ("c", 16385, false),
                ("pad", 16383, true),
                ("d", 70000, false),
                ("e", 5, false),
            ],
            32768,
        )
    }

    fn path_of(dir: &Path, name: &str) -> PathBuf {
        dir.join("t").join("sub").join(name)
    }

    /// Writes `data` in 16 KiB blocks in a scrambled order, each from an aligned buffer.
    fn write_blocks(st: &mut Storage, data: &[u8]) -> Result<(), StorageError> {
        let mut order: Vec<usize> = (0..data.len().div_ceil(BLOCK)).collect();
        Rng::new(3).shuffle(&mut order);
        let mut buf = AlignedBuf::new(BLOCK);
        for b in order {
            let start = b * BLOCK;
            let end = (start + BLOCK).min(data.len());
            let n = end - start;
            buf[..n].copy_from_slice(&data[start..end]);
            st.write(start as u64, &buf[..n])?;
        }
        Ok(())
    }

    fn assert_files_match(dir: &Path, meta: &Metainfo, data: &[u8]) {
        for f in &meta.files {
            let p = path_of(dir, f.path.last().unwrap());
            if f.pad {
                assert!(!p.exists(), "pad file created: {}", p.display());
                continue;
            }
            let got = fs::read(&p).unwrap();
            let want = &data[f.offset as usize..(f.offset + f.length) as usize];
            assert!(got == want, "{} differs", p.display());
        }
    }

    #[test]
    fn direct_io_parse_accepts_three_modes() {
        assert_eq!("auto".parse::<DirectIo>(), Ok(DirectIo::Auto));
        assert_eq!("on".parse::<DirectIo>(), Ok(DirectIo::On));
        assert_eq!("off".parse::<DirectIo>(), Ok(DirectIo::Off));
        let e = "yes".parse::<DirectIo>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid direct io mode \"yes\" (expected auto, on or off)"
        );
    }

    #[test]
    fn multi_file_out_of_order_blocks_all_modes_same_bytes() {
        let (meta, data) = odd_torrent();
        for mode in [DirectIo::Off, DirectIo::On, DirectIo::Auto] {
            let dir = TempDir::new("modes");
            let mut st = Storage::open(&dir.0, &meta, mode, 16).unwrap();
            match write_blocks(&mut st, &data) {
                Err(StorageError::DirectUnsupported { .. }) if mode == DirectIo::On => {
                    eprintln!("temp dir has no O_DIRECT; skipping mode on");
                    continue;
                }
                r => r.unwrap(),
            }
            st.sync_all().unwrap();
            st.close_all();
            assert_files_match(&dir.0, &meta, &data);
            let stats = st.stats();
            let pad_len = 16383;
            assert_eq!(stats.bytes_written, data.len() as u64 - pad_len);
            assert!(stats.buffered_writes > 0);
            if mode == DirectIo::Off {
                assert_eq!(stats.direct_writes, 0);
            } else if sys::fs_block_size(&std::env::temp_dir()).is_some() && mode == DirectIo::On {
                // The aligned blocks of "c" (first 16 KiB) and "d" went direct.
                assert!(stats.direct_writes >= 2, "{stats:?}");
            }
            // Everything reads back, pad region as zeros.
            let mut back = vec![0xffu8; data.len()];
            st.read(0, &mut back).unwrap();
            assert!(back == data);
            assert_eq!(st.open_fds(), 5);
        }
    }

    /// Unwraps a mode `on` write; false when the temp dir's file system has no `O_DIRECT`.
    fn direct_supported(r: Result<(), StorageError>) -> bool {
        match r {
            Err(StorageError::DirectUnsupported { .. }) => {
                eprintln!("temp dir has no O_DIRECT; skipping");
                false
            }
            r => {
                r.unwrap();
                true
            }
        }
    }

    #[test]
    fn mixed_direct_and_buffered_writes_one_descriptor_per_file() {
        let (meta, data) = odd_torrent();
        let dir = TempDir::new("onefd");
        let mut st = Storage::open(&dir.0, &meta, DirectIo::On, 16).unwrap();
        let r = write_blocks(&mut st, &data);
        if !direct_supported(r) {
            return;
        }
        let stats = st.stats();
        assert!(
            stats.direct_writes >= 2 && stats.buffered_writes > 0,
            "{stats:?}"
        );
        // Files c and d took both kinds of write through one descriptor each.
        assert_eq!(stats.opens, 5);
        assert_eq!(st.open_fds(), 5);
        assert_eq!(fds_under(&dir.0), 5);
        // All five files share one directory, created once.
        assert_eq!(st.writing.as_ref().map_or(0, |w| w.dirs_made.len()), 1);
        st.close_all();
        assert_files_match(&dir.0, &meta, &data);
    }

    #[test]
    fn unaligned_span_aligned_interior_goes_direct() {
        let len = 3 * 4096 + 100;
        let (meta, data) = torrent(&[("x", len as u64, false)], 16384);
        let dir = TempDir::new("interior");
        let mut st = Storage::open(&dir.0, &meta, DirectIo::On, 4).unwrap();
        let mut buf = AlignedBuf::new(len);
        buf[..len].copy_from_slice(&data);
        // File offset 100 from address 100 past alignment: bytes 4096..12288 are aligned in
        // both; 100..4096 and 12288..12388 are not.
        let r = st.write(100, &buf[100..len]);
        if !direct_supported(r) {
            return;
        }
        assert_eq!(st.stats().direct_writes, 1);
        assert_eq!(st.stats().buffered_writes, 2);
        st.write(0, &buf[..100]).unwrap();
        assert_eq!(st.stats().bytes_written, len as u64);
        assert_eq!(st.stats().opens, 1);
        st.close_all();
        assert_files_match(&dir.0, &meta, &data);
    }

    #[test]
    fn direct_write_then_unaligned_read_switches_direct_off() {
        let (meta, data) = torrent(&[("x", 2 * BLOCK as u64, false)], 16384);
        let dir = TempDir::new("toggle");
        let mut st = Storage::open(&dir.0, &meta, DirectIo::On, 4).unwrap();
        let mut buf = AlignedBuf::new(BLOCK);
        buf.copy_from_slice(&data[..BLOCK]);
        let r = st.write(0, &buf);
        if !direct_supported(r) {
            return;
        }
        // An O_DIRECT descriptor would refuse this read (EINVAL): it must be buffered now.
        let mut out = [0u8; 10];
        st.read(1, &mut out).unwrap();
        assert!(out[..] == data[1..11]);
        buf.copy_from_slice(&data[BLOCK..]);
        st.write(BLOCK as u64, &buf).unwrap();
        assert_eq!(st.stats().direct_writes, 2);
        assert_eq!(st.stats().opens, 1);
        st.close_all();
        assert_files_match(&dir.0, &meta, &data);
    }

    #[test]
    fn spilled_blocks_buffered_in_auto_direct_with_on() {
        let (meta, data) = torrent(&[("x", 3 * BLOCK as u64, false)], 16384);
        for mode in [DirectIo::Auto, DirectIo::On] {
            let dir = TempDir::new("spill");
            let mut st = Storage::open(&dir.0, &meta, mode, 4).unwrap();
            let mut buf = AlignedBuf::new(BLOCK);
            buf.copy_from_slice(&data[..BLOCK]);
            // A window written direct first: the file takes O_DIRECT.
            if !direct_supported(st.write(0, &buf)) {
                return;
            }
            for b in 1..3 {
                buf.copy_from_slice(&data[b * BLOCK..(b + 1) * BLOCK]);
                st.write_spill((b * BLOCK) as u64, &buf).unwrap();
            }
            let stats = st.stats();
            let (direct, buffered) = if mode == DirectIo::On { (3, 0) } else { (1, 2) };
            assert_eq!(
                (stats.direct_writes, stats.buffered_writes),
                (direct, buffered),
                "{mode:?}"
            );
            // Read back (aligned buffer) as the hashing of a spilled window does.
            let mut out = AlignedBuf::new(2 * BLOCK);
            st.read_spilled(BLOCK as u64, &mut out).unwrap();
            assert!(out[..] == data[BLOCK..], "{mode:?}");
            st.close_all();
            assert_files_match(&dir.0, &meta, &data);
        }
    }

    #[test]
    fn spilled_windows_dropped_from_page_cache_after_read_back() {
        // 40 spilled 256 KiB windows, each read back and dropped as piece hashing does.
        let window = 256 * 1024;
        let n = 40;
        let (meta, data) = torrent(&[("x", (n * window) as u64, false)], window as u32);
        let dir = TempDir::new("spill-cache");
        let mut st = Storage::open(&dir.0, &meta, DirectIo::Auto, 4).unwrap();
        let mut buf = AlignedBuf::new(BLOCK);
        buf.copy_from_slice(&data[..BLOCK]);
        if !direct_supported(st.write(0, &buf)) {
            return;
        }
        let mut back = AlignedBuf::new(window);
        for w in 0..n {
            let off = w * window;
            let from = if w == 0 { BLOCK } else { 0 };
            for b in (from..window).step_by(BLOCK) {
                buf.copy_from_slice(&data[off + b..off + b + BLOCK]);
                st.write_spill((off + b) as u64, &buf).unwrap();
            }
            st.read_spilled(off as u64, &mut back).unwrap();
            assert!(back[..] == data[off..off + window]);
            st.drop_cache(off as u64, window);
        }
        st.sync_all().unwrap();
        let file = File::open(path_of(&dir.0, "x")).unwrap();
        let cached = crate::sys::cached_pages(&file, n * window).unwrap();
        let pages = n * window / 4096;
        // Without the writeback and the second drop, every dirty page stayed cached.
        assert!(
            cached * 20 <= pages,
            "{cached} of {pages} pages still cached"
        );
        drop(file);
        st.close_all();
        assert_files_match(&dir.0, &meta, &data);
    }

    #[test]
    fn unaligned_file_spans_of_windows_leave_no_page_cache() {
        // Two files of 3 MiB + 12345 and 2 MiB: every window after the boundary holds the
        // second file at an unaligned position, so its spans are written buffered.
        let window = 256 * 1024;
        let first = 3 * 1024 * 1024 + 12345;
        let (meta, data) = torrent(
            &[("a", first as u64, false), ("b", 2 * 1024 * 1024, false)],
            window as u32,
        );
        for mode in [DirectIo::Auto, DirectIo::Off] {
            let dir = TempDir::new("span-cache");
            let mut st = Storage::open(&dir.0, &meta, mode, 4).unwrap();
            let mut mem = DirectChunks::new(1, window, false);
            for off in (0..data.len()).step_by(window) {
                let len = window.min(data.len() - off);
                mem.chunk_mut(0)[..len].copy_from_slice(&data[off..off + len]);
                st.write_chunk(off as u64, &mut mem, 0, len).unwrap();
            }
            st.sync_all().unwrap();
            let file = File::open(path_of(&dir.0, "b")).unwrap();
            let cached = crate::sys::cached_pages(&file, 2 * 1024 * 1024).unwrap();
            let pages = 2 * 1024 * 1024 / 4096;
            if mode == DirectIo::Off {
                assert_eq!(cached, pages, "direct_io = off keeps the page cache");
            } else if st.stats().direct_writes > 0 {
                assert!(
                    cached * 20 <= pages,
                    "{cached} of {pages} pages still cached"
                );
            }
            drop(file);
            st.close_all();
            assert_files_match(&dir.0, &meta, &data);
        }
    }

    #[test]
    fn read_only_descriptor_write_reopens_read_write() {
        let (meta, data) = torrent(&[("x", 100, false)], 16384);
        let dir = TempDir::new("reopen-rw");
        let mut st = Storage::open(&dir.0, &meta, DirectIo::Off, 4).unwrap();
        st.write(0, &data).unwrap();
        st.close_all();
        let mut st = Storage::open(&dir.0, &meta, DirectIo::Off, 4).unwrap();
        let mut out = vec![0u8; 100];
        st.read(0, &mut out).unwrap();
        assert!(out == data);
        st.write(0, &[0xab; 3]).unwrap();
        assert_eq!(st.stats().opens, 2);
        assert_eq!(st.open_fds(), 1);
        st.sync_all().unwrap();
        st.close_all();
        let got = fs::read(path_of(&dir.0, "x")).unwrap();
        assert_eq!(got[..3], [0xab; 3]);
        assert!(got[3..] == data[3..]);
    }

    #[test]
    fn write_unaligned_buffer_goes_buffered_even_when_on() {
        let (meta, data) = torrent(&[("x", 8192, false)], 16384);
        let dir = TempDir::new("unaligned");
        let mut st = Storage::open(&dir.0, &meta, DirectIo::On, 4).unwrap();
        let mut buf = AlignedBuf::new(8192 + 4096);
        // Address 1 byte past alignment: must not be sent to O_DIRECT.
        buf[1..4097].copy_from_slice(&data[..4096]);
        st.write(0, &buf[1..4097]).unwrap();
        assert_eq!(st.stats().direct_writes, 0);
        assert_eq!(st.stats().buffered_writes, 1);
    }

    #[test]
    fn auto_after_direct_failure_writes_buffered() {
        let (meta, data) = torrent(&[("x", 32768, false)], 16384);
        let dir = TempDir::new("fallback");
        let mut st = Storage::open(&dir.0, &meta, DirectIo::Auto, 4).unwrap();
        let mut buf = AlignedBuf::new(BLOCK);
        buf.copy_from_slice(&data[..BLOCK]);
        st.write(0, &buf).unwrap();
        let direct_before = st.stats().direct_writes;
        // What an EINVAL from open/write does in auto mode.
        st.direct_failed(0);
        assert_eq!(st.open_fds(), 0);
        buf.copy_from_slice(&data[BLOCK..]);
        st.write(BLOCK as u64, &buf).unwrap();
        assert_eq!(st.stats().direct_writes, direct_before);
        st.close_all();
        assert_files_match(&dir.0, &meta, &data);
    }

    #[test]
    fn write_then_hash_piece_matches_metainfo() {
        let (meta, data) = odd_torrent();
        let dir = TempDir::new("hash");
        let mut st = Storage::open(&dir.0, &meta, DirectIo::Auto, 8).unwrap();
        st.write(0, &data).unwrap();
        let mut scratch = vec![0u8; 5000];
        for p in 0..meta.piece_count() {
            let h = st.hash_piece(&meta, p, &mut scratch).unwrap();
            assert_eq!(Some(&h), meta.piece_hash(p));
        }
        assert!(matches!(
            st.hash_piece(&meta, meta.piece_count(), &mut scratch),
            Err(StorageError::BadPiece { .. })
        ));
        assert!(matches!(
            st.hash_piece(&meta, 0, &mut []),
            Err(StorageError::EmptyScratch)
        ));
    }

    #[test]
    fn open_path_outside_root_is_rejected() {
        let dir = TempDir::new("unsafe");
        for bad in [
            vec!["t", ".."],
            vec!["..", "x"],
            vec!["t", "."],
            vec!["/etc", "passwd"],
            vec!["a/b"],
            vec!["a/"],
            vec![""],
            vec!["x\0y"],
            vec![],
        ] {
            let (mut meta, _) = torrent(&[("f", 10, false)], 16384);
            meta.files[0].path = bad.iter().map(|s| s.to_string()).collect();
            let r = Storage::open(&dir.0, &meta, DirectIo::Off, 4);
            assert!(
                matches!(r, Err(StorageError::UnsafePath { .. })),
                "{bad:?} accepted"
            );
        }
        assert!(!dir.0.exists());
    }

    #[test]
    fn open_duplicate_or_gappy_layout_is_rejected() {
        let dir = TempDir::new("layout");
        let (mut meta, _) = torrent(&[("f", 10, false), ("g", 10, false)], 16384);
        meta.files[1].path = meta.files[0].path.clone();
        assert!(matches!(
            Storage::open(&dir.0, &meta, DirectIo::Off, 4),
            Err(StorageError::DuplicatePath { .. })
        ));
        let (mut meta, _) = torrent(&[("f", 10, false), ("g", 10, false)], 16384);
        meta.files[1].offset = 11;
        assert!(matches!(
            Storage::open(&dir.0, &meta, DirectIo::Off, 4),
            Err(StorageError::BadLayout)
        ));
        let (mut meta, _) = torrent(&[("f", 10, false)], 16384);
        meta.total_length = 11;
        assert!(matches!(
            Storage::open(&dir.0, &meta, DirectIo::Off, 4),
            Err(StorageError::BadLayout)
        ));
    }

    /// Open descriptors whose target lies under `dir` (robust against parallel tests).
    fn fds_under(dir: &Path) -> usize {
        fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
            .filter(|t| t.starts_with(dir))
            .count()
    }

    /// A torrent of twelve 5000-byte files (more than the descriptor caps used below).
    fn twelve_files() -> (Metainfo, Vec<u8>) {
        let spec: Vec<(String, u64, bool)> =
            (0..12).map(|i| (format!("f{i}"), 5000, false)).collect();
        let spec_ref: Vec<(&str, u64, bool)> =
            spec.iter().map(|(n, l, p)| (n.as_str(), *l, *p)).collect();
        torrent(&spec_ref, 16384)
    }

    #[test]
    fn many_files_open_cap_respected() {
        let (meta, data) = twelve_files();
        let dir = TempDir::new("cap");
        let mut st = Storage::open(&dir.0, &meta, DirectIo::Auto, 3).unwrap();
        for (k, chunk) in data.chunks(3000).enumerate().rev() {
            st.write(k as u64 * 3000, chunk).unwrap();
            assert!(st.open_fds() <= 3);
            assert!(fds_under(&dir.0) <= 3);
        }
        let mut back = vec![0u8; data.len()];
        st.read(0, &mut back).unwrap();
        assert!(back == data);
        assert!(fds_under(&dir.0) <= 3);
        assert!(st.stats().opens > 12);
        st.close_all();
        assert_eq!(st.open_fds(), 0);
        assert_eq!(fds_under(&dir.0), 0);
        assert_files_match(&dir.0, &meta, &data);
    }

    #[test]
    fn many_files_evicted_after_writes_sync_all_syncs_every_file() {
        let (meta, data) = twelve_files();
        let dir = TempDir::new("syncevict");
        let mut st = Storage::open(&dir.0, &meta, DirectIo::Off, 3).unwrap();
        st.write(0, &data).unwrap();
        // Reading back leaves read-only descriptors in the cache: those need a sync too.
        let mut back = vec![0u8; data.len()];
        st.read(0, &mut back).unwrap();
        assert!(st.open_fds() <= 3);
        st.sync_all().unwrap();
        assert_eq!(st.stats().syncs, 12, "every written file, open or evicted");
        assert!(st.files.iter().all(|f| !f.dirty));
        st.sync_all().unwrap();
        assert_eq!(
            st.stats().syncs,
            12,
            "nothing written since: nothing to sync"
        );
        st.write(4999, &data[4999..5001]).unwrap();
        st.close_all();
        st.sync_all().unwrap();
        assert_eq!(
            st.stats().syncs,
            14,
            "the two files of a write spanning them"
        );
        assert_eq!(st.open_fds(), 0, "a sync opens no cached descriptor");
    }

    #[test]
    fn fresh_download_check_existing_reads_nothing() {
        let (meta, _) = odd_torrent();
        let dir = TempDir::new("fresh");
        let mut st = Storage::open(&dir.0, &meta, DirectIo::Auto, 8).unwrap();
        let mut scratch = vec![0u8; 16384];
        let mut seen = Vec::new();
        let good = st
            .check_existing(&meta, &mut scratch, |p, ok| seen.push((p, ok)))
            .unwrap();
        assert_eq!(good, 0);
        assert_eq!(seen, (0..4).map(|p| (p, false)).collect::<Vec<_>>());
        assert_eq!(st.stats(), IoStats::default());
        assert!(!dir.0.exists());
    }

    #[test]
    fn partial_download_check_existing_finds_present_pieces() {
        let (meta, data) = odd_torrent();
        let dir = TempDir::new("partial");
        {
            let mut st = Storage::open(&dir.0, &meta, DirectIo::Off, 8).unwrap();
            // Pieces 0 and 1 (bytes 0..65536): files a, b, c and the start of d.
            st.write(0, &data[..65536]).unwrap();
            // Piece 3 (98304..end) but with one corrupted byte.
            let mut tail = data[98304..].to_vec();
            tail[100] ^= 1;
            st.write(98304, &tail).unwrap();
        }
        let mut st = Storage::open(&dir.0, &meta, DirectIo::Off, 8).unwrap();
        let mut scratch = vec![0u8; 10000];
        let mut seen = Vec::new();
        let good = st
            .check_existing(&meta, &mut scratch, |p, ok| seen.push((p, ok)))
            .unwrap();
        assert_eq!(good, 2);
        // Piece 2 lies in d, which is a sparse file there (d is long enough because piece 3
        // was written), so it is hashed and fails.
        assert_eq!(seen, vec![(0, true), (1, true), (2, false), (3, false)]);

        // Now with e missing: piece 3 is skipped without reading.
        fs::remove_file(path_of(&dir.0, "e")).unwrap();
        let mut st = Storage::open(&dir.0, &meta, DirectIo::Off, 8).unwrap();
        let mut seen = Vec::new();
        st.check_existing(&meta, &mut scratch, |p, ok| seen.push((p, ok)))
            .unwrap();
        assert_eq!(seen[3], (3, false));
        // Pieces 0..=2 read in full (64 KiB + 32 KiB, minus the never-read pad region).
        assert_eq!(st.stats().bytes_read, 98304 - 16383);
    }

    #[test]
    fn short_file_check_existing_skips_without_reading() {
        let (meta, data) = torrent(&[("f", 40000, false)], 16384);
        let dir = TempDir::new("short");
        let mut st = Storage::open(&dir.0, &meta, DirectIo::Off, 8).unwrap();
        st.write(0, &data[..20000]).unwrap();
        let mut scratch = vec![0u8; 16384];
        let mut seen = Vec::new();
        let good = st
            .check_existing(&meta, &mut scratch, |p, ok| seen.push((p, ok)))
            .unwrap();
        assert_eq!(good, 1);
        assert_eq!(seen, vec![(0, true), (1, false), (2, false)]);
        assert_eq!(st.stats().bytes_read, 16384);
    }

    #[test]
    fn never_written_file_read_is_not_present() {
        let (meta, data) = odd_torrent();
        let dir = TempDir::new("missing");
        let mut st = Storage::open(&dir.0, &meta, DirectIo::Auto, 8).unwrap();
        let mut out = [0u8; 10];
        let e = st.read(0, &mut out).unwrap_err();
        assert!(matches!(e, StorageError::NotPresent { .. }), "{e}");
        // A file written only partly: reading past its end is not present either.
        st.write(1, &data[1..100]).unwrap();
        let mut out = vec![0u8; 200];
        assert!(matches!(
            st.read(1, &mut out),
            Err(StorageError::NotPresent { .. })
        ));
        st.read(1, &mut out[..99]).unwrap();
        assert!(out[..99] == data[1..100]);
        // The pad region alone reads as zeros without touching any file.
        let mut pad = [0xaau8; 100];
        st.read(32768 + 100, &mut pad).unwrap();
        assert!(pad.iter().all(|&b| b == 0));
    }

    #[test]
    fn out_of_range_write_and_read_error() {
        let (meta, _) = odd_torrent();
        let dir = TempDir::new("range");
        let mut st = Storage::open(&dir.0, &meta, DirectIo::Off, 8).unwrap();
        let total = meta.total_length;
        assert!(matches!(
            st.write(total - 1, &[1, 2]),
            Err(StorageError::OutOfRange { .. })
        ));
        assert!(matches!(
            st.write(u64::MAX, &[1]),
            Err(StorageError::OutOfRange { .. })
        ));
        assert!(matches!(
            st.read(u64::MAX - 1, &mut [0; 4]),
            Err(StorageError::OutOfRange { .. })
        ));
        st.write(total, &[]).unwrap();
        assert!(!dir.0.exists());
    }

    #[test]
    fn set_len_final_truncates_and_creates_empty_files() {
        let (meta, data) = torrent(
            &[("f", 100, false), ("empty", 0, false), ("g", 50, false)],
            16384,
        );
        let dir = TempDir::new("setlen");
        fs::create_dir_all(path_of(&dir.0, "")).unwrap();
        // A longer leftover file from an older download.
        fs::write(path_of(&dir.0, "g"), vec![9u8; 500]).unwrap();
        let mut st = Storage::open(&dir.0, &meta, DirectIo::Off, 8).unwrap();
        st.write(0, &data).unwrap();
        st.set_len_final().unwrap();
        st.close_all();
        assert_files_match(&dir.0, &meta, &data);
        assert_eq!(fs::metadata(path_of(&dir.0, "empty")).unwrap().len(), 0);
    }

    #[test]
    fn set_len_final_missing_nonempty_file_errs() {
        let (meta, _) = torrent(&[("f", 100, false)], 16384);
        let dir = TempDir::new("setlen-missing");
        let mut st = Storage::open(&dir.0, &meta, DirectIo::Off, 8).unwrap();
        assert!(matches!(
            st.set_len_final(),
            Err(StorageError::NotPresent { .. })
        ));
    }

    #[test]
    fn enospc_maps_to_no_space() {
        let e = io_err(
            "write",
            Path::new("/mnt/usb/a"),
            io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert!(matches!(e, StorageError::NoSpace { .. }));
        assert_eq!(e.to_string(), "no space left on /mnt/usb/a");
        let e = io_err(
            "open",
            Path::new("/x"),
            io::Error::from_raw_os_error(libc::EACCES),
        );
        assert!(e.to_string().starts_with("open /x: "), "{e}");
    }

    #[test]
    fn fat32_limit_rejects_large_file() {
        let (mut meta, _) = torrent(&[("small", 10, false), ("big", 10, false)], 16384);
        meta.files[1].length = 5 << 30;
        meta.total_length = 10 + (5 << 30);
        let dir = TempDir::new("fat");
        let st = Storage::open(&dir.0, &meta, DirectIo::Off, 8).unwrap();
        let e = check_fits(&st.files, Some(u32::MAX as u64)).unwrap_err();
        assert!(matches!(e, StorageError::FileTooLarge { length, .. } if length == 5 << 30));
        check_fits(&st.files, None).unwrap();
        check_fits(&st.files[..1], Some(u32::MAX as u64)).unwrap();
    }

    #[test]
    fn file_paths_skip_padding_and_stay_under_root() {
        let (meta, _) = odd_torrent();
        let dir = TempDir::new("paths");
        let st = Storage::open(&dir.0, &meta, DirectIo::Off, 8).unwrap();
        let paths = st.file_paths();
        assert_eq!(paths.len(), 5);
        assert!(paths.iter().all(|p| p.starts_with(&dir.0)));
        assert_eq!(paths[4], path_of(&dir.0, "e"));
    }

    #[test]
    fn mem_store_round_trips_and_hashes() {
        let (meta, data) = odd_torrent();
        let mut m = MemStore::new(data.len());
        for (k, chunk) in data.chunks(BLOCK).enumerate().rev() {
            m.write((k * BLOCK) as u64, chunk).unwrap();
        }
        assert!(m.data() == &data[..]);
        let mut scratch = [0u8; 777];
        for p in 0..meta.piece_count() {
            let h = m.hash_piece(&meta, p, &mut scratch).unwrap();
            assert_eq!(Some(&h), meta.piece_hash(p));
        }
        let mut out = [0u8; 4];
        assert!(m.read(data.len() as u64 - 3, &mut out).is_err());
        assert!(m.write(u64::MAX, &[1]).is_err());
        m.read(data.len() as u64 - 4, &mut out).unwrap();
        assert_eq!(out, data[data.len() - 4..]);
    }
}
