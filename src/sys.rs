//! Layer 3 (I/O shell): every `unsafe` block and raw libc call in the crate lives here.
//!
//! Small, safe wrappers over Linux facilities that std does not expose: page-aligned buffers
//! for `O_DIRECT`, toggling `O_DIRECT` on a descriptor, the kernel RNG, file-system limits (`statfs`), the
//! monotonic clock (only `engine.rs` may call `monotonic_ms`), the open-file limit and peak RSS.
//! This module must not contain protocol logic or policy; it only translates calls. Target
//! platforms are Linux with glibc or musl on 64- and 32-bit CPUs, so every size comes from a
//! `libc` type, never a hard-coded width.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::{Deref, DerefMut};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::NonNull;

/// Alignment of `AlignedBuf` and the unit `O_DIRECT` transfers are sized in. 4096 covers every
/// common logical block size (512 and 4096), so it is safe for `O_DIRECT` everywhere.
pub const ALIGN: usize = 4096;

/// `MSDOS_SUPER_MAGIC` from linux/magic.h: FAT12/16/32 (vfat). Files are limited to 4 GiB - 1.
const MSDOS_SUPER_MAGIC: u64 = 0x4d44;

/// A zeroed heap buffer whose address is `ALIGN`-aligned and whose length is a multiple of
/// `ALIGN`, as `O_DIRECT` requires. Freed on drop. Not `Send` (holds a raw pointer); the engine is
/// single-threaded.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

impl AlignedBuf {
    /// Allocates at least `len` bytes rounded up to a multiple of `ALIGN`, zero-filled.
    /// Aborts (like `Vec`) if the allocation fails.
    pub fn new(len: usize) -> AlignedBuf {
        let len = len
            .checked_next_multiple_of(ALIGN)
            .expect("aligned buffer length overflows usize");
        // An anonymous private mapping: page-aligned (ALIGN is one page or less on every
        // target) and zero-filled by the kernel on first touch, so a pool that is never fully
        // used never becomes resident.
        let alloc_len = len.max(ALIGN);
        // SAFETY: a fresh anonymous mapping with no address hint; the result is checked.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                alloc_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        let ptr = match NonNull::new(raw as *mut u8) {
            Some(p) if raw != libc::MAP_FAILED => p,
            _ => std::alloc::handle_alloc_error(
                std::alloc::Layout::from_size_align(alloc_len, ALIGN)
                    .expect("ALIGN is a power of two"),
            ),
        };
        AlignedBuf { ptr, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Makes every page resident now (see `touch_pages`).
    pub fn commit(&mut self) {
        touch_pages(self);
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `len` initialised (zeroed at allocation) bytes for as long
        // as `self` lives, and the shared borrow of `self` prevents concurrent mutation.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; the exclusive borrow of `self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` is our mapping of `len.max(ALIGN)` bytes, unmapped exactly once, here.
        unsafe {
            libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len.max(ALIGN));
        }
    }
}

/// Makes every page of `buf` resident now (one read and write-back per page), so a fixed pool
/// costs its full size from the start instead of growing with use, and a kernel that
/// overcommits fails here rather than in the middle of a download. Contents are unchanged.
pub fn touch_pages(buf: &mut [u8]) {
    let base = buf.as_mut_ptr();
    let mut off = 0;
    while off < buf.len() {
        // SAFETY: `off < buf.len()`, so `base + off` lies inside `buf`, which we borrow
        // exclusively. Writing back the byte just read changes nothing; the volatile accesses
        // keep the compiler from dropping them (it may know freshly calloc'ed memory is zero).
        unsafe {
            let p = base.add(off);
            std::ptr::write_volatile(p, std::ptr::read_volatile(p));
        }
        off += ALIGN;
    }
}

/// Equal chunks of one aligned allocation that can be written to files asynchronously with
/// Linux native AIO (`io_submit`), which on `O_DIRECT` descriptors lets the disk work while the
/// event loop goes on reading sockets. The memory is owned here so that a chunk the kernel is
/// still reading from can be neither borrowed mutably nor freed: `chunk_mut` refuses a busy
/// chunk, and dropping waits for every write in flight (`io_destroy`) before unmapping.
/// Without AIO (old or trimmed kernels: `io_setup` fails) `submit_write` reports `Unsupported`
/// and callers write synchronously.
pub struct DirectChunks {
    /// Declared first so it is dropped first: `io_destroy` waits for writes in flight before
    /// `mem` is unmapped.
    ctx: Option<AioContext>,
    mem: AlignedBuf,
    chunk_len: usize,
    /// Writes in flight per chunk.
    inflight: Vec<u16>,
    total_inflight: usize,
    /// Writes handed to the kernel so far.
    submitted: u64,
    events: Vec<IoEvent>,
}

/// Most writes in flight at once: the kernel's queue is sized for this many; more are refused
/// with `WouldBlock` and written synchronously.
pub const AIO_QUEUE: usize = 64;

struct AioContext(libc::c_ulong);

impl Drop for AioContext {
    fn drop(&mut self) {
        // SAFETY: destroys a context we created; the kernel waits for (or cancels) requests in
        // flight before returning, so no write reads chunk memory after this.
        unsafe {
            libc::syscall(libc::SYS_io_destroy, self.0);
        }
    }
}

/// `struct iocb` of linux/aio_abi.h (64 bytes). `aio_key` and `aio_rw_flags` swap places on
/// big-endian machines.
#[repr(C)]
#[derive(Default)]
struct Iocb {
    aio_data: u64,
    #[cfg(target_endian = "little")]
    aio_key: u32,
    aio_rw_flags: i32,
    #[cfg(target_endian = "big")]
    aio_key: u32,
    aio_lio_opcode: u16,
    aio_reqprio: i16,
    aio_fildes: u32,
    aio_buf: u64,
    aio_nbytes: u64,
    aio_offset: i64,
    aio_reserved2: u64,
    aio_flags: u32,
    aio_resfd: u32,
}

/// `struct io_event` of linux/aio_abi.h.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

const IOCB_CMD_PWRITE: u16 = 1;

/// One finished asynchronous write: its chunk and the bytes written, or the error.
pub struct Completion {
    pub chunk: u32,
    pub result: io::Result<usize>,
    /// Bytes the write asked for (a short write is an error for the caller).
    pub wanted: usize,
}

impl DirectChunks {
    /// `chunks` chunks of `chunk_len` bytes (a multiple of `ALIGN`); with `aio` false, or when
    /// the kernel has no AIO, every write is left to the caller.
    pub fn new(chunks: usize, chunk_len: usize, aio: bool) -> DirectChunks {
        let ctx = if aio { AioContext::new() } else { None };
        DirectChunks {
            ctx,
            mem: AlignedBuf::new(chunks * chunk_len),
            chunk_len,
            inflight: vec![0; chunks],
            total_inflight: 0,
            submitted: 0,
            events: vec![IoEvent::default(); AIO_QUEUE],
        }
    }

    pub fn chunk_len(&self) -> usize {
        self.chunk_len
    }

    pub fn len(&self) -> usize {
        self.inflight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inflight.is_empty()
    }

    /// Whether writes can be asynchronous at all.
    pub fn has_aio(&self) -> bool {
        self.ctx.is_some()
    }

    /// Makes the memory resident now (see `touch_pages`).
    pub fn commit(&mut self) {
        self.mem.commit();
    }

    pub fn chunk(&self, c: u32) -> &[u8] {
        let s = c as usize * self.chunk_len;
        &self.mem[s..s + self.chunk_len]
    }

    /// The chunk's memory for filling. Panics if a write from it is in flight: the callers'
    /// bookkeeping never hands out a busy chunk, and writing into it would corrupt the data on
    /// its way to disk.
    pub fn chunk_mut(&mut self, c: u32) -> &mut [u8] {
        assert_eq!(self.inflight[c as usize], 0, "chunk {c} is being written");
        let s = c as usize * self.chunk_len;
        &mut self.mem[s..s + self.chunk_len]
    }

    pub fn busy(&self, c: u32) -> bool {
        self.inflight[c as usize] > 0
    }

    pub fn inflight(&self) -> usize {
        self.total_inflight
    }

    /// Writes handed to the kernel so far.
    pub fn submitted(&self) -> u64 {
        self.submitted
    }

    /// Queues a write of `range` of chunk `c` to `file` at `offset`. `Unsupported` without
    /// AIO, `WouldBlock` when the queue is full: the caller then writes synchronously.
    pub fn submit_write(
        &mut self,
        c: u32,
        range: std::ops::Range<usize>,
        file: &File,
        offset: u64,
    ) -> io::Result<()> {
        use std::os::unix::io::AsRawFd;
        let Some(ctx) = &self.ctx else {
            return Err(io::ErrorKind::Unsupported.into());
        };
        if self.total_inflight >= AIO_QUEUE {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if range.start > range.end || range.end > self.chunk_len {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let start = c as usize * self.chunk_len + range.start;
        let buf = self.mem[start..start + range.len()].as_ptr();
        let mut cb = Iocb {
            aio_data: u64::from(c) | (range.len() as u64) << 32,
            aio_lio_opcode: IOCB_CMD_PWRITE,
            aio_fildes: file.as_raw_fd() as u32,
            aio_buf: buf as usize as u64,
            aio_nbytes: range.len() as u64,
            aio_offset: offset as i64,
            ..Iocb::default()
        };
        let mut list = [&mut cb as *mut Iocb];
        // SAFETY: one valid iocb, read by the kernel during the call only. Its buffer lies in
        // `mem`, which stays mapped and is not handed out mutably while `inflight[c] > 0`
        // (set below on success); `Drop` waits for the write before unmapping.
        let n = unsafe {
            libc::syscall(
                libc::SYS_io_submit,
                ctx.0,
                1 as libc::c_long,
                list.as_mut_ptr(),
            )
        };
        if n == 1 {
            self.inflight[c as usize] += 1;
            self.total_inflight += 1;
            self.submitted += 1;
            Ok(())
        } else if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EAGAIN) {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Err(e)
            }
        } else {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    /// Collects finished writes into `out`: those already done, or with `wait`, at least one
    /// (when any is in flight).
    pub fn reap(&mut self, wait: bool, out: &mut Vec<Completion>) {
        let Some(ctx) = &self.ctx else {
            return;
        };
        if self.total_inflight == 0 {
            return;
        }
        let min = if wait { 1 } else { 0 };
        let mut zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let timeout = if wait {
            std::ptr::null_mut()
        } else {
            &mut zero as *mut libc::timespec
        };
        // SAFETY: `events` has room for `AIO_QUEUE` entries, the count we pass; the timeout
        // is null (block) or a valid zero timespec.
        let n = unsafe {
            libc::syscall(
                libc::SYS_io_getevents,
                ctx.0,
                min as libc::c_long,
                AIO_QUEUE as libc::c_long,
                self.events.as_mut_ptr(),
                timeout,
            )
        };
        if n <= 0 {
            return;
        }
        for ev in &self.events[..n as usize] {
            let chunk = (ev.data & 0xffff_ffff) as u32;
            let wanted = (ev.data >> 32) as usize;
            if let Some(k) = self.inflight.get_mut(chunk as usize) {
                *k = k.saturating_sub(1);
            }
            self.total_inflight = self.total_inflight.saturating_sub(1);
            let result = if ev.res < 0 {
                Err(io::Error::from_raw_os_error((-ev.res) as i32))
            } else {
                Ok(ev.res as usize)
            };
            out.push(Completion {
                chunk,
                result,
                wanted,
            });
        }
    }
}

impl AioContext {
    fn new() -> Option<AioContext> {
        let mut ctx: libc::c_ulong = 0;
        // SAFETY: io_setup writes the new context id to `ctx`, which must start at zero.
        let r = unsafe { libc::syscall(libc::SYS_io_setup, AIO_QUEUE as libc::c_uint, &mut ctx) };
        if r == 0 {
            Some(AioContext(ctx))
        } else {
            log::debug!(
                "storage: no kernel aio ({}), writes are synchronous",
                io::Error::last_os_error()
            );
            None
        }
    }
}

/// Turns `O_DIRECT` on or off on an open descriptor (`fcntl(F_SETFL)`), so one descriptor per
/// file serves both aligned direct writes and buffered ones. File systems without direct I/O
/// (tmpfs on old kernels, some FUSE and network file systems) fail with `EINVAL`.
pub fn set_direct(file: &File, on: bool) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    // F_SETFL only changes O_APPEND, O_NONBLOCK, O_DIRECT and O_NOATIME (the access mode and
    // O_LARGEFILE are kept); data files use none of the others, so setting the word to just
    // O_DIRECT or 0 toggles direct I/O without a preceding F_GETFL.
    let flags = if on { libc::O_DIRECT } else { 0 };
    // SAFETY: fcntl on a descriptor we own; F_SETFL takes an int and has no memory effects.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Fills `buf` from the kernel CSPRNG (`getrandom(2)`), retrying on `EINTR` and short reads;
/// falls back to `/dev/urandom` on kernels older than 3.17 (`ENOSYS`).
pub fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid writable region of `rest.len()` bytes; flags 0 is blocking
        // getrandom from the urandom pool. The raw syscall avoids depending on a libc wrapper
        // (glibc < 2.25 lacks one).
        let n = unsafe {
            libc::syscall(
                libc::SYS_getrandom,
                rest.as_mut_ptr() as *mut libc::c_void,
                rest.len(),
                0 as libc::c_uint,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOSYS) | Some(libc::EPERM) => {
                    return File::open("/dev/urandom")?.read_exact(rest);
                }
                _ => return Err(err),
            }
        }
        done += n as usize;
    }
    Ok(())
}

// glibc on 32-bit targets needs the LFS call (plain statfs fails with EOVERFLOW on large file
// systems); musl's statfs is always 64-bit.
#[cfg(not(target_env = "gnu"))]
use libc::{statfs as statfs_t, statfs as statfs_call};
#[cfg(target_env = "gnu")]
use libc::{statfs64 as statfs_t, statfs64 as statfs_call};

#[allow(clippy::unnecessary_cast)] // statfs field widths differ between targets.
fn statfs(path: &Path) -> Option<(u64, u64)> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: an all-zero statfs is a valid value (plain integers).
    let mut st: statfs_t = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is a valid out-pointer of the matching type.
    let rc = unsafe { statfs_call(c.as_ptr(), &mut st) };
    if rc != 0 {
        return None;
    }
    // f_type is signed on some targets; magics are 32-bit values.
    Some(((st.f_type as u64) & 0xffff_ffff, st.f_bsize as u64))
}

/// Block size of the file system holding `path` (which must exist), or None if unknown.
pub fn fs_block_size(path: &Path) -> Option<u64> {
    statfs(path).map(|(_, bsize)| bsize).filter(|&b| b > 0)
}

/// Largest file the file system holding `path` can store, when it is a known small limit
/// (FAT32: 4 GiB - 1). None means no known limit (or `path` could not be inspected).
pub fn fs_max_file_size(path: &Path) -> Option<u64> {
    match statfs(path) {
        Some((MSDOS_SUPER_MAGIC, _)) => Some(u32::MAX as u64),
        _ => None,
    }
}

/// Milliseconds on `CLOCK_MONOTONIC`. Only the engine may call this (protocol code gets time
/// passed in as `crate::time::Instant`).
#[allow(clippy::useless_conversion)] // time_t / c_long are i32 on some 32-bit targets.
pub fn monotonic_ms() -> u64 {
    // SAFETY: an all-zero timespec is valid.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0);
    let secs = u64::try_from(i64::from(ts.tv_sec)).unwrap_or(0);
    let nanos = u64::try_from(i64::from(ts.tv_nsec)).unwrap_or(0);
    secs.saturating_mul(1000).saturating_add(nanos / 1_000_000)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the resulting soft limit
/// (the unchanged one if raising failed, 0 if it could not be read).
#[allow(clippy::unnecessary_cast)] // rlim_t is 32-bit on some targets.
pub fn raise_nofile_limit() -> u64 {
    // SAFETY: an all-zero rlimit is valid.
    let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `rl` is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return 0;
    }
    if rl.rlim_cur < rl.rlim_max {
        let mut want = rl;
        want.rlim_cur = rl.rlim_max;
        // Linux rejects RLIM_INFINITY for NOFILE (it is capped by fs.nr_open); use a large
        // finite value instead and keep the old limit if even that fails.
        if want.rlim_cur == libc::RLIM_INFINITY {
            want.rlim_cur = 1 << 20;
        }
        // SAFETY: `want` is a valid, initialised rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            return want.rlim_cur as u64;
        }
    }
    rl.rlim_cur as u64
}

/// Peak resident set size of this process in KiB (`ru_maxrss`), if available.
#[allow(clippy::useless_conversion)] // c_long is i32 on 32-bit targets.
pub fn peak_rss_kib() -> Option<u64> {
    // SAFETY: an all-zero rusage is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid out-pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return None;
    }
    u64::try_from(i64::from(ru.ru_maxrss)).ok()
}

/// Write end of the signal self-pipe, for the handler (-1 until `signal_pipe` runs).
static SIGNAL_WRITE_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_WRITE_FD.load(std::sync::atomic::Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; the fd stays open for the process lifetime and
        // is non-blocking, so a full pipe drops the byte instead of blocking the handler.
        unsafe {
            libc::write(fd, &b as *const u8 as *const libc::c_void, 1);
        }
    }
}

/// Routes SIGINT, SIGTERM and SIGHUP into a non-blocking pipe and returns its read end, which
/// the event loop polls: no logic runs inside the handler. SIGPIPE is ignored.
pub fn signal_pipe() -> io::Result<i32> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    SIGNAL_WRITE_FD.store(fds[1], std::sync::atomic::Ordering::Relaxed);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installing a handler that only calls write(2); sigaction is zero-initialised
        // and then filled in field by field.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    // SAFETY: setting the disposition of SIGPIPE to ignore has no memory effects.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    Ok(fds[0])
}

/// Reads everything pending on the signal pipe and returns the signals seen as a bit mask
/// (bit `n` set for signal number `n`).
pub fn drain_signals(fd: i32) -> u64 {
    let mut buf = [0u8; 64];
    let mut mask = 0u64;
    loop {
        // SAFETY: reading into a stack buffer of the given length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n <= 0 {
            break;
        }
        for &b in &buf[..n as usize] {
            if b < 64 {
                mask |= 1 << b;
            }
        }
    }
    mask
}

pub const SIGHUP: i32 = libc::SIGHUP;

/// Takes an exclusive `flock(2)` on `file` without blocking: Ok(true) when we now hold it,
/// Ok(false) when another open file description (another process, or another `File` in this
/// one) holds it. The lock lasts until every descriptor of this open file is closed.
pub fn flock_exclusive(file: &File) -> io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    loop {
        // SAFETY: flock on a descriptor we own (borrowed from `file`) has no memory effects.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// User ID of the process at the other end of a connected Unix domain socket (`SO_PEERCRED`).
pub fn peer_uid(fd: std::os::unix::io::RawFd) -> io::Result<u32> {
    // SAFETY: an all-zero ucred is valid (plain integers).
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a valid out-buffer of `len` bytes for SO_PEERCRED, which the kernel
    // fills with a struct ucred; a bad `fd` makes the call fail with EBADF/ENOTSOCK.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<libc::ucred>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short SO_PEERCRED reply",
        ));
    }
    Ok(cred.uid)
}

/// Real user ID of this process.
pub fn getuid() -> u32 {
    // SAFETY: getuid(2) cannot fail and has no memory effects.
    unsafe { libc::getuid() }
}

/// Flushes a directory's entries (a rename or create inside it) to disk.
pub fn fsync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

fn fork_and_exit_parent() -> io::Result<()> {
    // SAFETY: the process is single-threaded at this point (documented precondition of the
    // callers), so the child may run arbitrary code after fork.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(()),
        // SAFETY: _exit skips atexit handlers and stdio flushing, which belong to the child
        // now; it never returns.
        _ => unsafe { libc::_exit(0) },
    }
}

/// The part of daemonizing after the first fork: new session, second fork, `/`, null stdio.
fn detach_after_first_fork() -> io::Result<()> {
    // SAFETY: setsid has no memory effects; it fails only if we already lead a group, which a
    // freshly forked child never does.
    if unsafe { libc::setsid() } == -1 {
        return Err(io::Error::last_os_error());
    }
    fork_and_exit_parent()?;
    std::env::set_current_dir("/")?;
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    use std::os::unix::io::AsRawFd;
    for target in [libc::STDIN_FILENO, libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: dup2 onto the standard descriptors, which this process owns; `null` stays
        // open for the duration of the call.
        if unsafe { libc::dup2(null.as_raw_fd(), target) } == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Detaches from the terminal the classic way: fork (the parent exits 0 at once), `setsid`,
/// fork again (so the daemon can never reacquire a controlling terminal), `chdir("/")`, and
/// stdin/stdout/stderr onto `/dev/null`. Call before any thread is started and before the
/// event loop is built; errors after the first fork can only be reported by the child.
pub fn daemonize() -> io::Result<()> {
    fork_and_exit_parent()?;
    detach_after_first_fork()
}

/// Like [`daemonize`], but the original process waits until the daemon says it is ready, so
/// `atorrent daemon --detach` returns only once the daemon listens (init scripts can then use
/// it at once). Returns, in the daemon, the write end of a pipe for [`notify_ready`]: `0`
/// means ready (exit status 0 for the waiting parent); `1` and a message, dropping it
/// unwritten, or the daemon dying make the parent exit 1 (printing the message to its stderr,
/// which unlike the daemon's is still the caller's). Same preconditions as [`daemonize`].
pub fn daemonize_notify() -> io::Result<File> {
    use std::os::unix::io::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created by pipe2 and are owned by nothing else.
    let (read_end, write_end) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    // SAFETY: single-threaded precondition, as in fork_and_exit_parent.
    match unsafe { libc::fork() } {
        -1 => return Err(io::Error::last_os_error()),
        0 => drop(read_end),
        _ => {
            drop(write_end);
            let mut msg = Vec::new();
            // The daemon's message is one short line; the cap only bounds a confused writer.
            let _ = (&read_end).take(MAX_NOTIFY_MESSAGE).read_to_end(&mut msg);
            let status = match msg.split_first() {
                Some((b'0', _)) => 0,
                Some((b'1', text)) if !text.is_empty() => {
                    eprintln!("atorrent: {}", String::from_utf8_lossy(text).trim_end());
                    1
                }
                _ => {
                    eprintln!("atorrent: the daemon exited before it was ready (see its log)");
                    1
                }
            };
            // SAFETY: as in fork_and_exit_parent; the daemon child owns everything now.
            unsafe { libc::_exit(status) }
        }
    }
    detach_after_first_fork()?;
    Ok(write_end)
}

/// Local weekday (0 = Sunday) and minute of the day, for `alt_schedule`.
pub fn local_weekday_minute() -> (u8, u16) {
    // SAFETY: time(NULL) has no memory effects; localtime_r fills the zeroed `tm` we own and
    // returns null on failure, which we check.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return (0, 0);
        }
        (
            tm.tm_wday.clamp(0, 6) as u8,
            (tm.tm_hour * 60 + tm.tm_min).clamp(0, 1439) as u16,
        )
    }
}

/// Longest start-up error read from a detaching daemon.
const MAX_NOTIFY_MESSAGE: u64 = 4096;

/// Tells the parent waiting in [`daemonize_notify`] how start-up went: `0` (ready) or `1` and
/// the error text; the pipe is closed on return. No pipe (not detached) is a no-op, and a
/// parent that is gone (EPIPE) is no error for the daemon.
pub fn notify_ready(pipe: Option<File>, result: Result<(), &str>) {
    if let Some(mut f) = pipe {
        let msg = match result {
            Ok(()) => b"0".to_vec(),
            Err(e) => format!("1{e}").into_bytes(),
        };
        let _ = f.write_all(&msg);
    }
}

/// `posix_fadvise(POSIX_FADV_DONTNEED)`: drop a file range from the page cache (best effort).
pub fn fadvise_dontneed(file: &File, offset: u64, len: u64) {
    use std::os::unix::io::AsRawFd;
    // SAFETY: an advisory call on a descriptor we own; it has no memory effects. Offsets that
    // do not fit off_t are skipped.
    if let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) {
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), off, len, libc::POSIX_FADV_DONTNEED);
        }
    }
}

/// Starts writing back the dirty pages of `offset..offset+len` without waiting
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so that a later `fadvise_dontneed` finds them
/// clean and can drop them. Best effort.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::unix::io::AsRawFd;
    if let (Ok(off), Ok(len)) = (offset.try_into(), len.try_into()) {
        // SAFETY: an advisory call on a descriptor we own; it has no memory effects.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
}

/// Writes back the dirty pages of `offset..offset+len` and waits for that, and for any
/// writeback of the range already running. Best effort.
pub fn finish_writeback(file: &File, offset: u64, len: u64) {
    use std::os::unix::io::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    if let (Ok(off), Ok(len)) = (offset.try_into(), len.try_into()) {
        // SAFETY: as in `start_writeback`.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), off, len, flags);
        }
    }
}

/// Whether `file` holds data (not a hole) anywhere in `offset..offset+len`, by
/// `lseek(SEEK_DATA)`. File systems without hole tracking report everything as data; errors
/// other than "no data past here" (ENXIO) answer true, so callers hash rather than skip.
pub fn has_data(file: &File, offset: u64, len: u64) -> bool {
    use std::os::unix::io::AsRawFd;
    let Ok(off) = libc::off_t::try_from(offset) else {
        return true;
    };
    // SAFETY: lseek on a descriptor we own; it only moves the file offset, which the rest of
    // the crate never relies on (all I/O is positional: pread/pwrite).
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, libc::SEEK_DATA) };
    if r < 0 {
        return io::Error::last_os_error().raw_os_error() != Some(libc::ENXIO);
    }
    (r as u64) < offset.saturating_add(len)
}

/// Pages of `file`'s first `len` bytes now in the page cache (`mincore` over a shared
/// read-only mapping), for tests of what the storage leaves cached.
#[cfg(test)]
pub fn cached_pages(file: &File, len: usize) -> io::Result<usize> {
    use std::os::unix::io::AsRawFd;
    if len == 0 {
        return Ok(0);
    }
    // SAFETY: a fresh read-only mapping of a file we hold open, unmapped below; mincore
    // writes one byte per page into a vector of exactly that many bytes.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let page = libc::sysconf(libc::_SC_PAGESIZE).max(1) as usize;
        let mut vec = vec![0u8; len.div_ceil(page)];
        let r = libc::mincore(addr, len, vec.as_mut_ptr() as *mut _);
        let err = io::Error::last_os_error();
        libc::munmap(addr, len);
        if r != 0 {
            return Err(err);
        }
        Ok(vec.iter().filter(|&&b| b & 1 != 0).count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct_file(name: &str) -> Option<(std::path::PathBuf, File)> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = std::env::temp_dir().join(format!("atorrent-sys-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
        {
            Ok(f) => Some((dir, f)),
            Err(e) => {
                eprintln!("skipped: no O_DIRECT here ({e})");
                None
            }
        }
    }

    #[test]
    fn direct_chunks_async_write_lands_and_frees_the_chunk() {
        let Some((dir, file)) = direct_file("aio") else {
            return;
        };
        let mut dc = DirectChunks::new(2, 8192, true);
        for (i, b) in dc.chunk_mut(1).iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let want: Vec<u8> = dc.chunk(1).to_vec();
        let mut done = Vec::new();
        match dc.submit_write(1, 0..8192, &file, 4096) {
            Ok(()) => {
                assert!(dc.busy(1) && !dc.busy(0));
                assert_eq!(dc.inflight(), 1);
                for _ in 0..100 {
                    dc.reap(true, &mut done);
                    if !done.is_empty() {
                        break;
                    }
                }
                assert_eq!(done.len(), 1);
                assert_eq!(done[0].chunk, 1);
                assert_eq!(done[0].wanted, 8192);
                assert_eq!(done[0].result.as_ref().ok(), Some(&8192));
                assert!(!dc.busy(1));
            }
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                eprintln!("skipped: no kernel aio");
                return;
            }
            Err(e) => panic!("submit: {e}"),
        }
        let got = std::fs::read(dir.join("f")).unwrap();
        assert_eq!(got.len(), 4096 + 8192);
        assert!(got[..4096].iter().all(|&b| b == 0));
        assert_eq!(&got[4096..], &want[..]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn direct_chunks_without_aio_leave_writes_to_the_caller() {
        let mut dc = DirectChunks::new(1, 4096, false);
        assert!(!dc.has_aio());
        let f = File::open("/dev/null").unwrap();
        let e = dc.submit_write(0, 0..4096, &f, 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        assert!(!dc.busy(0));
        dc.chunk_mut(0)[0] = 1;
        let mut done = Vec::new();
        dc.reap(false, &mut done);
        assert!(done.is_empty());
    }

    #[test]
    fn direct_chunks_bad_range_refused() {
        let Some((dir, file)) = direct_file("range") else {
            return;
        };
        let mut dc = DirectChunks::new(1, 4096, true);
        if dc.has_aio() {
            let e = dc.submit_write(0, 0..8192, &file, 0).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert_eq!(dc.inflight(), 0);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn iocb_matches_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<Iocb>(), 64);
        assert_eq!(std::mem::size_of::<IoEvent>(), 32);
    }

    #[test]
    fn aligned_buf_new_is_aligned_zeroed_and_rounded() {
        let mut b = AlignedBuf::new(5000);
        assert_eq!(b.len(), 8192);
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        assert!(b.iter().all(|&x| x == 0));
        b[8191] = 7;
        assert_eq!(b[8191], 7);
        let e = AlignedBuf::new(0);
        assert!(e.is_empty());
        assert_eq!(e.as_ptr() as usize % ALIGN, 0);
    }

    #[test]
    fn getrandom_fills_buffer() {
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        getrandom(&mut a).unwrap();
        getrandom(&mut b).unwrap();
        assert_ne!(a, b);
        assert!(a.iter().any(|&x| x != 0));
        getrandom(&mut []).unwrap();
    }

    #[test]
    fn monotonic_ms_never_goes_back() {
        let a = monotonic_ms();
        let b = monotonic_ms();
        assert!(b >= a);
        assert!(a > 0);
    }

    #[test]
    fn fs_queries_on_temp_dir() {
        let dir = std::env::temp_dir();
        let bs = fs_block_size(&dir).unwrap();
        assert!(bs.is_power_of_two());
        // The test machine's temp dir is not FAT.
        assert_eq!(fs_max_file_size(&dir), None);
        assert_eq!(fs_block_size(Path::new("/nonexistent/really/not")), None);
    }

    /// F_GETFL of `file`: what the kernel really has set.
    fn status_flags(file: &File) -> i32 {
        use std::os::unix::io::AsRawFd;
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) }
    }

    #[test]
    fn set_direct_toggles_flag_keeps_access_mode() {
        let p = std::env::temp_dir().join(format!("atorrent-sys-direct-{}", std::process::id()));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        let _ = std::fs::remove_file(&p);
        match set_direct(&f, true) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                eprintln!("temp dir has no O_DIRECT; skipping");
                return;
            }
            r => r.unwrap(),
        }
        assert_ne!(status_flags(&f) & libc::O_DIRECT, 0);
        assert_eq!(status_flags(&f) & libc::O_ACCMODE, libc::O_RDWR);
        set_direct(&f, false).unwrap();
        assert_eq!(status_flags(&f) & libc::O_DIRECT, 0);
        assert_eq!(status_flags(&f) & libc::O_ACCMODE, libc::O_RDWR);
        // Buffered again: an unaligned write works.
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"abc", 1).unwrap();
    }

    fn pipe() -> (File, File) {
        use std::os::unix::io::FromRawFd;
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two fresh descriptors, owned by the Files below.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    #[test]
    fn notify_ready_ok_writes_zero_and_closes() {
        let (mut r, w) = pipe();
        notify_ready(Some(w), Ok(()));
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"0");
    }

    #[test]
    fn notify_ready_error_writes_one_and_message() {
        let (mut r, w) = pipe();
        notify_ready(Some(w), Err("control socket /x: permission denied"));
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"1control socket /x: permission denied");
        notify_ready(None, Ok(()));
    }

    #[test]
    fn limits_are_readable() {
        assert!(raise_nofile_limit() > 0);
        assert!(peak_rss_kib().unwrap() > 0);
    }
}
