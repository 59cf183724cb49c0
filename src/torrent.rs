//! Layer 2: one torrent's swarm logic — the wire protocol conversation with each peer,
//! piece assembly and verification, request pipelining, choking and the peer candidate list.
//!
//! Contract: pure. The engine hands in `now`, a peer's parsed-or-not bytes (`PeerConn::rx`)
//! and gets bytes to send (`PeerConn::tx`). Piece data goes through the `PieceStore` trait, so
//! the same code runs against real files (`storage::Storage`) or memory (`storage::MemStore`).
//!
//! Piece assembly: received blocks are copied into 256 KiB *windows* (16 blocks) of a fixed
//! pool of aligned chunks. A complete window is written in one large, aligned write (O_DIRECT
//! where the store allows) and hashed at once if it is next in the piece, so a piece is
//! usually verified without reading anything back. When the pool is empty, blocks are written
//! as they come ("spilled") and the piece is hashed by reading those windows back. A piece is
//! never reported as had before its SHA-1 matches (BEP 3).

use std::net::SocketAddr;
use std::time::Duration;

use log::{debug, info, warn};

use crate::bitfield::Bitfield;
use crate::choker::{self, Choker, PeerInfo};
use crate::ext::{self, ExtHandshake, MetadataMsg, PexMessage};
use crate::hash::Sha1;
use crate::metainfo::Metainfo;
pub use crate::peer::Candidate;
use crate::peer::{
    Candidates, CloseReason, DirectRx, Outstanding, PeerConn, Phase, MAX_ALLOWED_FAST,
    MAX_INCOMING_REQUESTS, MAX_INFLIGHT_PER_TORRENT, MAX_OUTSTANDING, MIN_INFLIGHT_SHARE,
    SNUB_TIMEOUT,
};
use crate::picker::{BlockRef, Picker, PieceSet, Received};
use crate::rng::Rng;
use crate::storage::{PieceStore, StorageError};
use crate::sys::{self, AlignedBuf, Completion, DirectChunks};
use crate::time::Instant;
use crate::wire::{self, BlockRequest, Message, BLOCK_LEN};

/// Blocks per assembly window: 16 × 16 KiB = 256 KiB, the write size where O_DIRECT on the
/// test machines reaches full disk speed (16 KiB writes run at about a seventh of it).
pub const WINDOW_BLOCKS: u32 = 16;
pub const CHUNK_LEN: usize = (WINDOW_BLOCKS * BLOCK_LEN) as usize;
// `Window::claimed` has a bit per block.
const _: () = assert!(WINDOW_BLOCKS <= u16::BITS);
/// Peers remembered per piece as having sent blocks of it (for blame on a hash failure).
const MAX_CONTRIBUTORS: usize = 8;
/// Peer addresses remembered per torrent as connection candidates (from trackers, `--peer`,
/// incoming connections). Bounded so a hostile tracker cannot grow it.
pub const DEFAULT_MAX_CANDIDATES: usize = 500;
/// Pieces whose data came from a peer that sent a corrupt piece; after this many the peer is
/// dropped and not dialled again.
pub const MAX_HASH_FAILURES: u32 = 3;
/// Bytes already queued to a peer above which its ut_metadata requests are rejected instead
/// of answered (BEP 9 allows rejecting for flood protection): two answers' worth, so a peer
/// asking faster than it reads cannot make us buffer the whole info dictionary for it.
pub const METADATA_SERVE_MAX_TX: usize = 2 * ext::METADATA_PIECE_LEN;
/// Metadata pieces answered per connection beyond the dictionary's own count (twice over plus
/// this slack); more requests are rejected, since an honest peer needs each piece once.
pub const METADATA_SERVE_SLACK: u32 = 4;
/// Largest ut_pex message accepted: 200 IPv6 and 200 IPv4 entries with flags, and slack.
const MAX_PEX_PAYLOAD: usize = 8 * 1024;
/// Incoming ut_pex messages closer together than this are ignored (BEP 11: at most one per
/// minute; a little slack for timer jitter).
pub const PEX_RX_MIN_INTERVAL: Duration = Duration::from_secs(45);
/// Send-buffer room needed before a PEX message is composed: the largest one (100 IPv6
/// contacts with flags plus 50 dropped, BEP 11 caps in `ext`) is under 3 KiB.
const PEX_TX_RESERVE: usize = 4096;
/// Client name and version sent in the extension handshake (`v`).
const CLIENT_VERSION: &str = concat!("atorrent/", env!("CARGO_PKG_VERSION"));

/// Our BEP 10 extension handshake: ut_metadata always (BEP 9; `metadata_size` when we hold the
/// info dictionary), ut_pex unless `pex` is false (private torrents, BEP 27).
pub fn our_ext_handshake(metadata_size: Option<u32>, pex: bool, listen_port: u16) -> Vec<u8> {
    let mut m = vec![(ext::UT_METADATA.to_string(), ext::OUR_UT_METADATA_ID)];
    if pex {
        m.push((ext::UT_PEX.to_string(), ext::OUR_UT_PEX_ID));
    }
    ExtHandshake {
        m,
        p: Some(listen_port).filter(|&p| p != 0),
        v: Some(CLIENT_VERSION.to_string()),
        reqq: Some(MAX_INCOMING_REQUESTS as u32),
        metadata_size: metadata_size.filter(|&n| n > 0 && n <= ext::MAX_METADATA_SIZE),
        ..ExtHandshake::default()
    }
    .encode()
}

/// Source of `Torrent::io_owner` tags: unique per torrent for the life of the process.
/// (32 bits: MIPS32 has no 64-bit atomics.)
static NEXT_IO_OWNER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

/// Scratch buffer for writing a block that found no free chunk and for reading data back to
/// hash it. 64 KiB reads run at full speed with or without O_DIRECT; a whole chunk here would
/// cost another 192 KiB of resident memory for no measurable gain.
pub const SCRATCH_LEN: usize = 64 * 1024;

/// Memory shared by every torrent of an engine: the chunk pool for piece assembly and one
/// scratch buffer for reading data back (hash checks). Allocated once at start.
pub struct Buffers {
    pub pool: ChunkPool,
    pub scratch: AlignedBuf,
    /// Rechoke working memory (peer summaries in, changes out, the choker's own), used by one
    /// torrent at a time instead of being kept by each.
    peer_info: Vec<PeerInfo>,
    choke_out: Vec<(u32, bool)>,
    choker: choker::Scratch,
}

impl Buffers {
    /// A pool without asynchronous writes (every write completes before `store_block` returns).
    pub fn new(chunks: usize) -> Buffers {
        Buffers::with_aio(chunks, false)
    }

    /// With `aio`, chunk writes to O_DIRECT files go through kernel AIO where available.
    pub fn with_aio(chunks: usize, aio: bool) -> Buffers {
        Buffers {
            pool: ChunkPool::new(chunks, aio),
            scratch: AlignedBuf::new(SCRATCH_LEN),
            peer_info: Vec::new(),
            choke_out: Vec::new(),
            choker: choker::Scratch::default(),
        }
    }

    /// Makes the whole pool resident now (see `AlignedBuf::commit`): the engine's memory is
    /// then the same for a 64 KiB-piece torrent, which only ever touches the start of each
    /// chunk, and for a 16 MiB-piece one, which fills them.
    pub fn commit(&mut self) {
        self.pool.mem.commit();
        self.scratch.commit();
    }
}

/// A fixed set of `CHUNK_LEN` buffers carved from one aligned allocation. A chunk whose write
/// is still in flight (kernel AIO) is freed only once the write completes; until then the
/// torrent byte range it is writing is remembered, so reads and writes of the same range wait
/// for it (`wait_overlap`) and never see or race with stale data.
pub struct ChunkPool {
    mem: DirectChunks,
    free: Vec<u32>,
    /// Released by its owner while a write from it was in flight: freed on completion.
    release_pending: Vec<bool>,
    /// (owner, torrent offset, length) of each chunk's last submitted write.
    extent: Vec<(u64, u64, u32)>,
    done: Vec<Completion>,
    /// Failed asynchronous writes: (owner, message), collected by the engine.
    errors: Vec<(u64, String)>,
    /// Bumped each time a chunk is released: a direct receive holding an older generation
    /// must not write into the chunk's next use.
    gen: Vec<u32>,
}

impl ChunkPool {
    pub fn new(chunks: usize, aio: bool) -> ChunkPool {
        let chunks = chunks.max(1);
        ChunkPool {
            mem: DirectChunks::new(chunks, CHUNK_LEN, aio),
            free: (0..chunks as u32).rev().collect(),
            release_pending: vec![false; chunks],
            extent: vec![(0, 0, 0); chunks],
            done: Vec::with_capacity(sys::AIO_QUEUE),
            errors: Vec::new(),
            gen: vec![0; chunks],
        }
    }
    /// A free chunk, waiting for writes in flight to finish when that frees one: the disk
    /// being slower than the network then slows the download (back-pressure) instead of
    /// spilling blocks to small synchronous writes that must be read back to hash.
    fn alloc_or_wait(&mut self) -> Option<u32> {
        for _ in 0..=sys::AIO_QUEUE {
            if let Some(c) = self.free.pop() {
                return Some(c);
            }
            if !self.release_pending.iter().any(|&p| p) {
                return None;
            }
            self.poll(true);
        }
        None
    }
    fn release(&mut self, c: u32) {
        debug_assert!(!self.free.contains(&c));
        if let Some(g) = self.gen.get_mut(c as usize) {
            *g = g.wrapping_add(1);
        }
        if self.mem.busy(c) {
            self.release_pending[c as usize] = true;
        } else {
            self.free.push(c);
        }
    }
    fn get(&self, c: u32) -> &[u8] {
        self.mem.chunk(c)
    }
    fn get_mut(&mut self, c: u32) -> &mut [u8] {
        self.mem.chunk_mut(c)
    }
    fn gen(&self, c: u32) -> u32 {
        self.gen.get(c as usize).copied().unwrap_or(0)
    }
    pub fn available(&self) -> usize {
        self.free.len()
    }
    pub fn capacity(&self) -> usize {
        self.mem.len()
    }
    /// Writes in flight.
    pub fn inflight(&self) -> usize {
        self.mem.inflight()
    }

    /// Asynchronous writes submitted so far.
    pub fn async_writes(&self) -> u64 {
        self.mem.submitted()
    }

    /// Collects finished writes (with `wait`, blocks for at least one while any is in
    /// flight), freeing chunks released meanwhile and recording failures.
    pub fn poll(&mut self, wait: bool) {
        self.done.clear();
        self.mem.reap(wait, &mut self.done);
        for d in self.done.drain(..) {
            let c = d.chunk as usize;
            let Some(&(owner, offset, _)) = self.extent.get(c) else {
                continue;
            };
            match d.result {
                Ok(n) if n == d.wanted => {}
                Ok(n) => self.errors.push((
                    owner,
                    format!("short write at offset {offset}: {n} of {} bytes", d.wanted),
                )),
                Err(e) => self
                    .errors
                    .push((owner, format!("write at offset {offset} failed: {e}"))),
            }
            if !self.mem.busy(d.chunk) && self.release_pending[c] {
                self.release_pending[c] = false;
                self.free.push(d.chunk);
            }
        }
    }

    /// Waits until no write of `owner` overlapping `offset..offset + len` is in flight.
    fn wait_overlap(&mut self, owner: u64, offset: u64, len: u64) {
        // Bounded: each round completes at least one write, and at most AIO_QUEUE are queued.
        for _ in 0..=sys::AIO_QUEUE {
            let hit = (0..self.extent.len()).any(|c| {
                let (o, off, l) = self.extent[c];
                self.mem.busy(c as u32)
                    && o == owner
                    && off < offset + len
                    && offset < off + l as u64
            });
            if !hit {
                return;
            }
            self.poll(true);
        }
    }

    /// Waits until no write of `owner` is in flight.
    fn wait_owner(&mut self, owner: u64) {
        self.wait_overlap(owner, 0, u64::MAX / 2);
    }

    /// The first failed asynchronous write of `owner`, if any.
    pub fn take_error(&mut self, owner: u64) -> Option<String> {
        let i = self.errors.iter().position(|(o, _)| *o == owner)?;
        Some(self.errors.swap_remove(i).1)
    }

    /// An owner with a failed write waiting to be taken.
    pub fn error_owner(&self) -> Option<u64> {
        self.errors.first().map(|(o, _)| *o)
    }
}

#[derive(Clone, Copy, Default)]
struct Window {
    chunk: Option<u32>,
    received: u16,
    /// Blocks (bit per block of the window) a peer is receiving straight into `chunk`: one
    /// peer at a time per block, so two payloads never interleave in the same bytes.
    claimed: u16,
    spilled: bool,
}

/// A received block's payload: still in the receive buffer, or already in its window's chunk
/// (received there directly) with this many bytes.
#[derive(Clone, Copy)]
enum Payload<'a> {
    Bytes(&'a [u8]),
    InChunk(u32),
}

impl Payload<'_> {
    fn len(&self) -> usize {
        match self {
            Payload::Bytes(b) => b.len(),
            Payload::InChunk(n) => *n as usize,
        }
    }
}

struct Partial {
    piece: u32,
    received: Bitfield,
    windows: Vec<Window>,
    hashed_windows: u32,
    sha: Sha1,
    /// Peers that delivered blocks of this piece (for penalising corrupt data).
    contributors: Vec<SocketAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Waiting for a download or seeding slot (daemon queueing).
    Queued,
    Checking,
    Downloading,
    Seeding,
    Stopped,
    Error(String),
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Checking => "checking",
            State::Downloading => "downloading",
            State::Seeding => "seeding",
            State::Stopped => "stopped",
            State::Error(_) => "error",
        }
    }
}

/// Things the engine must act on, drained with `poll_event`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    PieceVerified(u32),
    Completed,
    StorageError(String),
}

pub struct Settings {
    pub upload_slots: usize,
    pub max_candidates: usize,
    pub listen_port: u16,
}

/// What only a torrent still missing pieces needs: the picker (12 bytes a piece) and the
/// request scratch. A complete torrent drops it (most torrents of a long-running daemon seed
/// idle), and it is rebuilt from `have` and `wanted` if pieces become wanted again.
struct Download {
    picker: Picker,
    /// Blocks received while other peers still have them requested (endgame).
    cancels: Vec<BlockRef>,
    pick_buf: Vec<BlockRef>,
    already_buf: Vec<BlockRef>,
}

impl Download {
    /// A picker that counts `have` and every piece outside `wanted` as had. Peer availability
    /// starts at zero: peers already connected are counted again only by later messages, which
    /// only skews rarest-first until they reconnect.
    fn new(
        meta: &Metainfo,
        max_partials: u32,
        have: &Bitfield,
        wanted: Option<&Bitfield>,
    ) -> Result<Download, String> {
        let mut picker = Picker::new(
            meta.piece_count(),
            meta.piece_length,
            meta.total_length,
            max_partials as usize,
        )
        .map_err(|e| e.to_string())?;
        for p in 0..meta.piece_count() {
            if have.get(p) || wanted.is_some_and(|w| !w.get(p)) {
                picker.set_have(p);
            }
        }
        Ok(Download {
            picker,
            cancels: Vec::new(),
            pick_buf: Vec::new(),
            already_buf: Vec::new(),
        })
    }
}

/// What a torrent collects while it downloads (and briefly after): partly assembled pieces
/// and what the engine has yet to act on.
#[derive(Default)]
struct Work {
    partials: Vec<Partial>,
    /// Finished partial-piece records kept for reuse.
    spare_partials: Vec<Partial>,
    events: Vec<Event>,
    /// Pieces verified since the last broadcast of `have` messages.
    new_haves: Vec<u32>,
    /// Peers banned since the engine last asked (`poll_banned`), to be closed at once.
    banned: Vec<SocketAddr>,
}

impl Work {
    fn is_idle(&self) -> bool {
        self.partials.is_empty()
            && self.events.is_empty()
            && self.new_haves.is_empty()
            && self.banned.is_empty()
    }
}

/// The work record, created on first use. A free function so that callers borrow only the
/// field, not the whole torrent.
fn work(w: &mut Option<Box<Work>>) -> &mut Work {
    w.get_or_insert_with(Box::default)
}

pub struct Torrent {
    pub meta: Metainfo,
    /// `Some` exactly while wanted pieces are missing (or partly assembled pieces remain).
    dl: Option<Box<Download>>,
    /// Partly assembled pieces allowed at once, for rebuilding `dl`.
    max_partials: u32,
    pub have: Bitfield,
    pub state: State,
    pub peer_id: [u8; 20],
    pub candidates: Candidates,
    /// BEP 53 file selection: the pieces wanted, and how many of them are still missing.
    pub wanted: Option<Bitfield>,
    wanted_missing: u32,
    pub downloaded: u64,
    pub uploaded: u64,
    pub wasted: u64,
    pub hash_fails: u32,
    pub settings: Settings,
    store: Box<dyn PieceStore>,
    /// Piece assembly and the queues to the engine; `None` while all of it is empty and
    /// nothing is downloaded (an idle seed), so it costs a pointer rather than five vectors.
    work: Option<Box<Work>>,
    /// Exists while peers are established: an idle torrent has no one to choke.
    choker: Option<Box<Choker>>,
    /// Established connections, which share `MAX_INFLIGHT_PER_TORRENT` requests.
    established: usize,
    /// This torrent's tag on writes in flight in the shared chunk pool.
    io_owner: u64,
    pub rng: Rng,
}

/// The picker's view of a peer's pieces.
impl PieceSet for Bitfield {
    fn has(&self, piece: u32) -> bool {
        self.get(piece)
    }
}

impl Torrent {
    pub fn new(
        meta: Metainfo,
        have: Bitfield,
        store: Box<dyn PieceStore>,
        chunks: usize,
        peer_id: [u8; 20],
        settings: Settings,
        rng: Rng,
    ) -> Result<Torrent, String> {
        // Partials beyond the chunk count would only spill; a few extra let several slow
        // peers work on different pieces.
        // A floor of 32 keeps a few peers that never answer from holding every slot, which
        // would leave nothing new to request from the others.
        let max_partials = u32::try_from((chunks.max(1) + 4).max(32)).unwrap_or(u32::MAX);
        // Built even for a complete torrent: it validates the geometry (piece count, lengths).
        let dl = Download::new(&meta, max_partials, &have, None)?;
        let state = if have.is_full() {
            State::Seeding
        } else {
            State::Downloading
        };
        let mut t = Torrent {
            meta,
            dl: Some(Box::new(dl)),
            max_partials,
            have,
            state,
            peer_id,
            candidates: Candidates::new(),
            wanted: None,
            wanted_missing: 0,
            downloaded: 0,
            uploaded: 0,
            wasted: 0,
            hash_fails: 0,
            settings,
            store,
            work: None,
            choker: None,
            established: 0,
            io_owner: u64::from(NEXT_IO_OWNER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
            rng,
        };
        t.settle_download();
        Ok(t)
    }

    /// Drops the download state once nothing is left to fetch: no wanted piece missing, no
    /// partly assembled piece (whose chunks only `release_partials` can return) and no endgame
    /// cancel still to broadcast.
    fn settle_download(&mut self) {
        let cancels = self.dl.as_ref().is_some_and(|d| !d.cancels.is_empty());
        let no_partials = self.work.as_ref().map_or(true, |w| w.partials.is_empty());
        if self.is_complete() && no_partials && !cancels {
            self.dl = None;
        }
        if self.dl.is_none() && self.work.as_ref().is_some_and(|w| w.is_idle()) {
            // Spare partial records go with it: a seed assembles nothing.
            self.work = None;
        }
    }

    /// Whether the picker and request state are held (false for a complete torrent).
    pub fn has_download_state(&self) -> bool {
        self.dl.is_some()
    }

    pub fn info_hash(&self) -> &[u8; 20] {
        &self.meta.info_hash
    }

    /// Every wanted piece is verified (all pieces, unless a file selection narrowed them).
    pub fn is_complete(&self) -> bool {
        match &self.wanted {
            None => self.have.is_full(),
            Some(_) => self.wanted_missing == 0,
        }
    }

    /// Bytes of wanted pieces not yet verified.
    pub fn bytes_left(&self) -> u64 {
        let mut left = 0u64;
        for p in self.have.iter_clear() {
            if self.wanted.as_ref().map_or(true, |w| w.get(p)) {
                left += self.meta.piece_len(p) as u64;
            }
        }
        left
    }

    /// Bytes of the wanted pieces (the whole torrent without a file selection).
    pub fn wanted_total(&self) -> u64 {
        match &self.wanted {
            None => self.meta.total_length,
            Some(w) => w.iter_set().map(|p| self.meta.piece_len(p) as u64).sum(),
        }
    }

    pub fn bytes_have(&self) -> u64 {
        self.wanted_total().saturating_sub(self.bytes_left())
    }

    /// BEP 53 file selection: only pieces overlapping files whose index is in one of the
    /// inclusive `ranges` are downloaded. The picker is told the others are had, so it never
    /// asks for them; pieces shared with a selected file are still fetched whole. A selection
    /// that wants pieces again (after completion, or wider than before) rebuilds the picker.
    pub fn select_files(&mut self, ranges: &[(u32, u32)]) {
        let n = self.meta.piece_count();
        let plen = self.meta.piece_length as u64;
        let mut wanted = Bitfield::new(n);
        for (i, f) in self.meta.files.iter().enumerate() {
            let i = i as u32;
            if f.pad || f.length == 0 || !ranges.iter().any(|&(a, b)| a <= i && i <= b) {
                continue;
            }
            let first = (f.offset / plen) as u32;
            let last = ((f.offset + f.length - 1) / plen) as u32;
            for p in first..=last.min(n.saturating_sub(1)) {
                wanted.set(p);
            }
        }
        let missing = wanted.iter_set().filter(|&p| !self.have.get(p)).count() as u32;
        let rebuild = match &self.dl {
            None => missing > 0,
            // The old picker counts pieces left out before as had; it cannot take them back.
            Some(d) => {
                self.work.as_ref().map_or(true, |w| w.partials.is_empty())
                    && wanted
                        .iter_set()
                        .any(|p| !self.have.get(p) && d.picker.have(p))
            }
        };
        if rebuild {
            self.rebuild_download(Some(&wanted));
        } else if let Some(d) = self.dl.as_mut() {
            for p in 0..n {
                if !wanted.get(p) && !self.have.get(p) {
                    d.picker.set_have(p);
                }
            }
        }
        info!(
            "torrent {}: {} of {} pieces selected",
            self.meta.name,
            wanted.count(),
            n
        );
        self.wanted = Some(wanted);
        self.wanted_missing = missing;
        if missing == 0 {
            self.state = State::Seeding;
        } else if self.state == State::Seeding {
            self.state = State::Downloading;
        }
        self.settle_download();
    }

    /// Builds the download state afresh from `have` and `wanted`.
    fn rebuild_download(&mut self, wanted: Option<&Bitfield>) {
        match Download::new(&self.meta, self.max_partials, &self.have, wanted) {
            Ok(d) => self.dl = Some(Box::new(d)),
            // The geometry passed the same check in `new`; fail visibly rather than panic.
            Err(e) => self.fail(e),
        }
    }

    fn picker_mut(&mut self) -> Option<&mut Picker> {
        self.dl.as_mut().map(|d| &mut d.picker)
    }

    /// Length of block `block` of `piece` (the last block of the last piece may be short); 0
    /// when out of range.
    fn block_len(&self, piece: u32, block: u32) -> u32 {
        let size = self.meta.piece_len(piece) as u64;
        let off = block as u64 * BLOCK_LEN as u64;
        size.saturating_sub(off).min(BLOCK_LEN as u64) as u32
    }

    pub fn store_mut(&mut self) -> &mut dyn PieceStore {
        self.store.as_mut()
    }

    /// Makes written data durable (before resume data claims it).
    pub fn sync_storage(&mut self, bufs: &mut Buffers) -> Result<(), String> {
        bufs.pool.wait_owner(self.io_owner);
        self.take_io_error(bufs)?;
        self.store.sync().map_err(|e| e.to_string())
    }

    /// This torrent's tag on chunk-pool writes (see `ChunkPool::take_error`).
    pub fn io_owner(&self) -> u64 {
        self.io_owner
    }

    /// A failed asynchronous write of this torrent, as an error message.
    fn take_io_error(&mut self, bufs: &mut Buffers) -> Result<(), String> {
        match bufs.pool.take_error(self.io_owner) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Called by the engine when an asynchronous write of this torrent failed: as for a
    /// synchronous failure, partly assembled pieces are dropped and the torrent errs. The
    /// piece whose write failed may already count as verified, so a later `resume` rechecks.
    pub fn io_failed(&mut self, bufs: &mut Buffers) {
        if let Err(e) = self.take_io_error(bufs) {
            self.release_partials(bufs);
            self.fail(e);
        }
    }

    /// Verifies stored pieces from `*cursor` on, up to `budget` bytes, marking the ones whose
    /// hash matches as had. Returns true when every piece has been looked at.
    pub fn check_step(
        &mut self,
        cursor: &mut u32,
        budget: u64,
        bufs: &mut Buffers,
    ) -> Result<bool, String> {
        let n = self.meta.piece_count();
        let mut spent = 0u64;
        while *cursor < n && spent < budget {
            let piece = *cursor;
            *cursor += 1;
            if self.have.get(piece) {
                continue;
            }
            let len = self.meta.piece_len(piece) as u64;
            // Never-written pieces are holes in sparse files (or missing files): skip them
            // without reading, so a recheck costs only what was actually downloaded.
            if !self
                .store
                .has_data(piece as u64 * self.meta.piece_length as u64, len as usize)
            {
                spent += 1;
                continue;
            }
            spent += len;
            let off = piece as u64 * self.meta.piece_length as u64;
            bufs.pool.wait_overlap(self.io_owner, off, len);
            match self.store.hash_piece(&self.meta, piece, &mut bufs.scratch) {
                Ok(d) if Some(&d) == self.meta.piece_hash(piece) => {
                    self.have.set(piece);
                    if let Some(pk) = self.picker_mut() {
                        pk.set_have(piece);
                    }
                }
                Ok(_) | Err(StorageError::NotPresent { .. }) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        self.settle_download();
        Ok(*cursor >= n)
    }

    /// Forgets all partly assembled pieces, returning their chunks (torrent stopped).
    pub fn release_partials(&mut self, bufs: &mut Buffers) {
        while let Some(part) = work(&mut self.work).partials.pop() {
            for w in &part.windows {
                if let Some(c) = w.chunk {
                    bufs.pool.release(c);
                }
            }
            if let Some(pk) = self.picker_mut() {
                pk.abandon(part.piece);
            }
            work(&mut self.work).spare_partials.push(part);
        }
        work(&mut self.work).new_haves.clear();
        if let Some(d) = self.dl.as_mut() {
            d.cancels.clear();
        }
        self.settle_download();
    }

    /// Syncs written data (called at shutdown).
    pub fn flush_storage(&mut self, bufs: &mut Buffers) {
        bufs.pool.wait_owner(self.io_owner);
        if let Err(e) = self.take_io_error(bufs) {
            warn!("torrent {}: {}", self.meta.name, e);
        }
        if let Err(e) = self.store.flush() {
            warn!("torrent {}: flush failed: {}", self.meta.name, e);
        }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        match self.work.as_mut() {
            Some(w) if !w.events.is_empty() => Some(w.events.remove(0)),
            _ => {
                // Everything drained: an idle seed gives the work record back.
                self.settle_download();
                None
            }
        }
    }

    // ----- candidates -----

    /// Adds a peer address learned from a tracker, `--peer`, PEX or an incoming connection.
    /// True when it is new.
    pub fn add_candidate(&mut self, addr: SocketAddr, now: Instant) -> bool {
        self.candidates.add(addr, now, self.settings.max_candidates)
    }

    /// The next candidate to dial, marking it connected.
    pub fn next_candidate(&mut self, now: Instant) -> Option<SocketAddr> {
        self.candidates.next(now)
    }

    pub fn candidate_connected(&mut self, addr: SocketAddr) {
        self.candidates.connected(addr)
    }

    /// A connection to `addr` ended; back off before dialling it again.
    pub fn candidate_closed(&mut self, addr: SocketAddr, reason: &CloseReason, now: Instant) {
        self.candidates.closed(addr, reason, now)
    }

    /// Retry `addr` at once without encryption (it refused or failed MSE).
    pub fn mark_plain_only(&mut self, addr: SocketAddr, now: Instant) {
        self.candidates.mark_plain_only(addr, now)
    }

    pub fn candidate_plain_only(&self, addr: &SocketAddr) -> bool {
        self.candidates.plain_only(addr)
    }

    pub fn is_banned(&self, addr: &SocketAddr) -> bool {
        self.candidates.is_banned(addr)
    }

    // ----- connection lifecycle -----

    /// Called once the remote handshake for this torrent has been accepted: sends what
    /// follows our handshake (extended handshake, bitfield or have_all/have_none).
    pub fn on_established(&mut self, p: &mut PeerConn, now: Instant) {
        p.phase = Phase::Established;
        self.established += 1;
        let slots = self.settings.upload_slots.max(1);
        self.choker
            .get_or_insert_with(|| Box::new(Choker::new(slots)));
        p.have = Bitfield::new(self.meta.piece_count());
        p.last_rx = now;
        let count = self.have.count();
        if p.fast && count == 0 {
            p.push(&Message::HaveNone);
        } else if p.fast && self.have.is_full() {
            p.push(&Message::HaveAll);
        } else if count > 0 && !p.push(&Message::Bitfield(self.have.as_bytes())) {
            // Bitfield larger than the send buffer: announce pieces one by one instead.
            let set: Vec<u32> = self.have.iter_set().collect();
            for i in set {
                if !p.push(&Message::Have(i)) {
                    p.close(CloseReason::Protocol(
                        "bitfield does not fit the send buffer".into(),
                    ));
                    break;
                }
            }
        }
        if p.extended {
            let size = self
                .meta
                .info_dict()
                .and_then(|i| u32::try_from(i.len()).ok());
            let payload = our_ext_handshake(size, !self.meta.private, self.settings.listen_port);
            p.push(&Message::Extended {
                id: wire::EXTENDED_HANDSHAKE_ID,
                payload: &payload,
            });
        }
    }

    /// Returns a closing peer's outstanding requests and availability to the picker.
    pub fn on_closed(&mut self, p: &mut PeerConn, now: Instant) {
        if let Some(dr) = p.direct.take() {
            self.unclaim(&dr);
        }
        p.discard = 0;
        if p.phase == Phase::Established {
            self.established = self.established.saturating_sub(1);
            if let Some(pk) = self.dl.as_mut().map(|d| &mut d.picker) {
                for o in p.outstanding.drain(..) {
                    pk.request_dropped(o.block);
                }
                if p.seed {
                    pk.remove_seed();
                } else if p.have.count() > 0 {
                    pk.remove_peer(&p.have);
                }
            }
            p.outstanding.clear();
        }
        if let Some(c) = self.choker.as_mut() {
            c.remove_peer(slot_key(p));
        }
        if self.established == 0 {
            self.choker = None;
        }
        let reason = p.close.clone().unwrap_or(CloseReason::PeerClosed);
        self.candidate_closed(p.addr, &reason, now);
    }

    // ----- input -----

    /// Parses and handles every complete message in `p.rx`. Protocol violations set `p.close`.
    pub fn handle_rx(&mut self, p: &mut PeerConn, now: Instant, bufs: &mut Buffers) {
        // Take the buffer out so messages can borrow it while `p` is mutated.
        let rx = std::mem::take(&mut p.rx);
        // Messages may be as long as the buffer, except a bitfield, which may be longer for a
        // torrent with many pieces (over 160,000 with the default 20 KiB buffer): the buffer
        // then grows to fit it (below).
        let bitfield_len = 1 + self.meta.piece_count().div_ceil(8);
        let max = (rx.len() as u32).max(bitfield_len);
        let mut used = 0;
        while p.close.is_none() {
            match wire::decode(&rx[used..p.rx_len], max) {
                Ok(Some((msg, n))) => {
                    used += n;
                    p.last_rx = now;
                    self.handle_message(p, msg, now, bufs);
                    // A peer banned by the piece it just completed gets nothing more read.
                    if self
                        .work
                        .as_ref()
                        .is_some_and(|w| w.banned.contains(&p.addr))
                    {
                        p.close(CloseReason::BadPiece);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    p.close(CloseReason::Protocol(e.to_string()));
                    break;
                }
            }
        }
        // A piece message whose payload has only begun to arrive: receive the rest straight
        // into its chunk (the engine reads it there), so the payload is never copied.
        if p.close.is_none() && !p.in_payload() {
            if let Some(dr) = self.begin_direct(p, &rx[used..p.rx_len], bufs) {
                p.direct = Some(dr);
                used = p.rx_len;
            }
        }
        p.rx = rx;
        p.rx_consume(used);
        // A message that cannot fit the buffer: grow it for a bitfield (bounded by the piece
        // count, a rare one-off allocation), refuse anything else.
        if p.close.is_none() && p.rx_len >= 5 {
            let len = u32::from_be_bytes([p.rx[0], p.rx[1], p.rx[2], p.rx[3]]) as usize;
            if len + 4 > p.rx.len() {
                if p.rx[4] == wire::id::BITFIELD && len <= bitfield_len as usize {
                    p.rx.resize(len + 4, 0);
                } else {
                    p.close(CloseReason::Protocol(format!(
                        "message of {len} bytes is larger than the receive buffer"
                    )));
                }
            }
        }
    }

    fn handle_message(
        &mut self,
        p: &mut PeerConn,
        msg: Message<'_>,
        now: Instant,
        bufs: &mut Buffers,
    ) {
        let n = self.meta.piece_count();
        // A bitfield (or have_all/have_none) is only valid as the peer's first statement of
        // what it has (BEP 3, BEP 6). Peers differ in what they send before it (extended
        // handshakes, allowed_fast, interest), so only piece information counts here.
        let first = !p.got_first_message;
        if matches!(
            msg,
            Message::Bitfield(_) | Message::Have(_) | Message::HaveAll | Message::HaveNone
        ) {
            p.got_first_message = true;
        }
        match msg {
            Message::KeepAlive => {}
            Message::Choke => {
                p.peer_choking = true;
                // Requests are void after a choke (BEP 3). With the fast extension the peer
                // rejects them explicitly, but dropping them here is safe either way: a late
                // piece for a dropped block is still accepted if we lack it.
                for o in p.outstanding.drain(..) {
                    if let Some(pk) = self.dl.as_mut().map(|d| &mut d.picker) {
                        pk.request_dropped(o.block);
                    }
                }
            }
            Message::Unchoke => {
                p.peer_choking = false;
                p.last_block = now;
            }
            Message::Interested => {
                p.peer_interested = true;
                let key = slot_key(p);
                if p.am_choking
                    && self
                        .choker
                        .as_mut()
                        .is_some_and(|c| c.free_slot_for(now, key))
                {
                    self.unchoke(p);
                }
            }
            Message::NotInterested => p.peer_interested = false,
            Message::Have(i) => {
                if i >= n {
                    p.close(CloseReason::Protocol(format!(
                        "have index {i} out of range"
                    )));
                    return;
                }
                if !p.have.get(i) && !p.seed {
                    p.have.set(i);
                    let full = p.have.is_full();
                    if let Some(pk) = self.picker_mut() {
                        pk.peer_has(i);
                        if full {
                            pk.remove_peer(&p.have);
                            pk.add_seed();
                        }
                    }
                    p.seed = full;
                }
                self.update_interest(p);
            }
            Message::Bitfield(bits) => {
                // BEP 3 allows a bitfield only first, but aria2 sends one again later; treat a
                // late bitfield as a full restatement of what the peer has.
                if !first {
                    if let Some(pk) = self.dl.as_mut().map(|d| &mut d.picker) {
                        if p.seed {
                            pk.remove_seed();
                        } else {
                            pk.remove_peer(&p.have);
                        }
                    }
                    p.seed = false;
                }
                match Bitfield::from_bytes(bits, n) {
                    Ok(b) => {
                        p.seed = b.is_full();
                        p.have = b;
                        if let Some(pk) = self.dl.as_mut().map(|d| &mut d.picker) {
                            if p.seed {
                                pk.add_seed();
                            } else {
                                pk.add_peer(&p.have);
                            }
                        }
                    }
                    Err(e) => {
                        p.close(CloseReason::Protocol(format!("bad bitfield: {e}")));
                        return;
                    }
                }
                self.update_interest(p);
            }
            Message::HaveAll | Message::HaveNone if !p.fast || !first => {
                p.close(CloseReason::Protocol(
                    "unexpected have_all/have_none".into(),
                ));
            }
            Message::HaveAll => {
                p.seed = true;
                p.have.set_all();
                if let Some(pk) = self.picker_mut() {
                    pk.add_seed();
                }
                self.update_interest(p);
            }
            Message::HaveNone => {}
            Message::Request(r) => self.on_request(p, r),
            Message::Cancel(r) => {
                if let Some(i) = p.incoming.iter().position(|x| *x == r) {
                    p.incoming.remove(i);
                    if p.fast {
                        p.push(&Message::Reject(r));
                    }
                }
            }
            Message::Piece { index, begin, data } => {
                self.on_piece(p, index, begin, Payload::Bytes(data), now, bufs)
            }
            Message::Reject(r) => {
                if !p.fast {
                    p.close(CloseReason::Protocol(
                        "reject without fast extension".into(),
                    ));
                    return;
                }
                if let Some(b) = self.block_of(r) {
                    if let Some(i) = p.outstanding.iter().position(|o| o.block == b) {
                        p.outstanding.swap_remove(i);
                        if let Some(pk) = self.picker_mut() {
                            pk.request_dropped(b);
                        }
                    }
                }
            }
            Message::AllowedFast(i) => {
                if i < n && p.allowed_fast.len() < MAX_ALLOWED_FAST && !p.allowed_fast.contains(&i)
                {
                    p.allowed_fast.push(i);
                }
            }
            Message::Suggest(i) => {
                if i < n {
                    if let Some(pk) = self.picker_mut() {
                        pk.suggest(i);
                    }
                }
            }
            Message::Port(_) => {}
            Message::Extended { id, payload } => self.on_extended(p, id, payload, now),
            Message::Unknown { .. } => {}
        }
    }

    /// BEP 10 extended messages: the peer's handshake, ut_metadata (BEP 9) and ut_pex (BEP 11).
    /// Ids are the ones we advertised in `our_ext_handshake`.
    fn on_extended(&mut self, p: &mut PeerConn, id: u8, payload: &[u8], now: Instant) {
        match id {
            wire::EXTENDED_HANDSHAKE_ID => match p.on_ext_handshake(payload) {
                Ok(_) => {
                    // BEP 27: no PEX at all on private torrents.
                    if self.meta.private || p.ext_ut_pex.is_none() {
                        p.pex = None;
                    } else if p.pex.is_none() {
                        p.pex = Some(ext::PexState::new());
                    }
                }
                // Extensions are optional: a peer with a broken handshake just gets none.
                Err(e) => debug!("peer {}: extension handshake ignored: {e}", p.addr),
            },
            ext::OUR_UT_METADATA_ID => match ext::parse_metadata_msg(payload) {
                Ok(MetadataMsg::Request { piece }) => self.serve_metadata(p, piece),
                // We never ask a torrent's peers for metadata; unsolicited answers are dropped.
                Ok(_) => {}
                Err(e) => p.close(CloseReason::Protocol(e.to_string())),
            },
            ext::OUR_UT_PEX_ID => {
                if self.meta.private {
                    return;
                }
                // BEP 11 senders list at most 50 added peers; a message much larger than a
                // few hundred entries is a flood, not peer exchange.
                if payload.len() > MAX_PEX_PAYLOAD {
                    p.close(CloseReason::Protocol(format!(
                        "ut_pex message of {} bytes (flood)",
                        payload.len()
                    )));
                    return;
                }
                if p.pex_rx_at
                    .is_some_and(|t| now.since(t) < PEX_RX_MIN_INTERVAL)
                {
                    return;
                }
                match PexMessage::parse(payload) {
                    Ok(m) => {
                        p.pex_rx_at = Some(now);
                        // Contacts are only candidates (BEP 11): dialled like any other,
                        // capped by `max_candidates`; `parse` already capped and filtered them.
                        for (addr, _) in m.added {
                            self.add_candidate(addr, now);
                        }
                    }
                    Err(e) => p.close(CloseReason::Protocol(e.to_string())),
                }
            }
            _ => {}
        }
    }

    /// Answers a ut_metadata request with the piece, or rejects it when we hold no info
    /// dictionary, the piece is out of range, or the peer already has plenty queued.
    fn serve_metadata(&mut self, p: &mut PeerConn, piece: u32) {
        let Some(reply_id) = p.ext_ut_metadata else {
            // It never told us an id to answer with (BEP 10): nothing we can send.
            return;
        };
        let data = self.meta.info_dict().and_then(|info| {
            let budget = ext::metadata_piece_count(info.len() as u32)
                .saturating_mul(2)
                .saturating_add(METADATA_SERVE_SLACK);
            if p.tx_pending().len() >= METADATA_SERVE_MAX_TX || p.metadata_served >= budget {
                return None;
            }
            let d = ext::metadata_piece(info, piece)?;
            Some(ext::encode_metadata_data(piece, info.len() as u32, d))
        });
        let payload = match data {
            Some(d) => {
                p.metadata_served = p.metadata_served.saturating_add(1);
                d
            }
            None => ext::encode_metadata_reject(piece),
        };
        p.push(&Message::Extended {
            id: reply_id,
            payload: &payload,
        });
    }

    fn block_of(&self, r: BlockRequest) -> Option<BlockRef> {
        if r.index >= self.meta.piece_count() || r.begin % BLOCK_LEN != 0 {
            return None;
        }
        let b = BlockRef {
            piece: r.index,
            block: r.begin / BLOCK_LEN,
        };
        if r.length != self.block_len(b.piece, b.block) || r.length == 0 {
            return None;
        }
        Some(b)
    }

    fn on_request(&mut self, p: &mut PeerConn, r: BlockRequest) {
        let plen = self.meta.piece_len(r.index);
        let valid = r.index < self.meta.piece_count()
            && r.length > 0
            && r.length <= wire::MAX_REQUEST_LEN
            && (r.begin as u64 + r.length as u64) <= plen as u64;
        if !valid {
            p.close(CloseReason::Protocol(format!(
                "bad request piece {} begin {} length {}",
                r.index, r.begin, r.length
            )));
            return;
        }
        if !self.have.get(r.index) || (p.am_choking && !p.fast) {
            // BEP 3: requests while choked are ignored; BEP 6 peers get an explicit reject.
            if p.fast {
                p.push(&Message::Reject(r));
            }
            return;
        }
        if p.am_choking {
            p.push(&Message::Reject(r));
            return;
        }
        if p.incoming.len() >= MAX_INCOMING_REQUESTS {
            p.close(CloseReason::TooManyRequests);
            return;
        }
        p.incoming.push_back(r);
    }

    fn on_piece(
        &mut self,
        p: &mut PeerConn,
        index: u32,
        begin: u32,
        data: Payload<'_>,
        now: Instant,
        bufs: &mut Buffers,
    ) {
        let Some(b) = self.block_of(BlockRequest {
            index,
            begin,
            length: data.len() as u32,
        }) else {
            p.close(CloseReason::Protocol(format!(
                "piece message with bad range {index}/{begin}/{}",
                data.len()
            )));
            return;
        };
        if let Some(i) = p.outstanding.iter().position(|o| o.block == b) {
            p.outstanding.swap_remove(i);
        }
        p.down.add(data.len());
        p.last_block = now;
        p.snubbed = false;
        if self.have.get(index) {
            self.wasted += data.len() as u64;
            return;
        }
        // Without download state (complete torrent) no block is expected.
        let Some(d) = self.dl.as_mut() else {
            self.wasted += data.len() as u64;
            p.unexpected_blocks += 1;
            return;
        };
        match d.picker.block_received(b) {
            Received::New => {}
            Received::Duplicate | Received::Unexpected => {
                self.wasted += data.len() as u64;
                p.unexpected_blocks += 1;
                return;
            }
        }
        if d.picker.in_endgame() {
            d.cancels.push(b);
        }
        self.downloaded += data.len() as u64;
        if let Err(e) = self.store_block(p.addr, b, data, bufs) {
            // A local write failure (e.g. a full disk) is nobody's fault: forget every partly
            // assembled piece so a later resume starts them afresh instead of hashing holes
            // and blaming the peers that sent good data.
            self.release_partials(bufs);
            self.fail(e);
        }
    }

    // ----- direct receive: piece payloads read straight into their chunk -----

    /// Starts a direct receive for the piece message at the start of `rest` (header and the
    /// payload bytes read so far, not the whole message): claims the block in its window's
    /// chunk and copies what has arrived there. `None` leaves the message to the normal path:
    /// a block we did not ask this peer for, one already received or being received by
    /// another peer, a window without a chunk (spilled), or a seed.
    fn begin_direct(&mut self, p: &PeerConn, rest: &[u8], bufs: &mut Buffers) -> Option<DirectRx> {
        let h = wire::PIECE_HEADER_LEN;
        if rest.len() < h || rest[4] != wire::id::PIECE || self.state != State::Downloading {
            return None;
        }
        let be = |i: usize| u32::from_be_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
        let len = be(0).checked_sub(9)?;
        // A payload already complete (the parser takes it) or longer than a block.
        if len == 0 || len > BLOCK_LEN || rest.len() >= h + len as usize {
            return None;
        }
        let (index, begin) = (be(5), be(9));
        let b = self.block_of(BlockRequest {
            index,
            begin,
            length: len,
        })?;
        if self.have.get(index)
            || !self.dl.as_ref()?.picker.is_requested(b)
            || !p.outstanding.iter().any(|o| o.block == b)
        {
            return None;
        }
        let pi = self.partial_index(b.piece);
        let w = (b.block / WINDOW_BLOCKS) as usize;
        let bit = 1u16 << (b.block % WINDOW_BLOCKS);
        let part = &mut work(&mut self.work).partials[pi];
        if part.received.get(b.block) || part.windows[w].claimed & bit != 0 {
            return None;
        }
        let mut win = part.windows[w];
        if win.chunk.is_none() && !win.spilled {
            match bufs.pool.alloc_or_wait() {
                Some(c) => win.chunk = Some(c),
                None => win.spilled = true,
            }
        }
        let c = win.chunk;
        if c.is_some() {
            win.claimed |= bit;
        }
        work(&mut self.work).partials[pi].windows[w] = win;
        let c = c?;
        let at = (b.block % WINDOW_BLOCKS) * BLOCK_LEN;
        let got = &rest[h..];
        bufs.pool.get_mut(c)[at as usize..at as usize + got.len()].copy_from_slice(got);
        Some(DirectRx {
            block: b,
            chunk: c,
            gen: bufs.pool.gen(c),
            at,
            done: got.len() as u32,
            len,
        })
    }

    /// Whether `dr`'s target is still its block's: the chunk was not released since, is still
    /// its window's, and the block is claimed and not yet received.
    fn direct_valid(&self, dr: &DirectRx, bufs: &Buffers) -> bool {
        let w = (dr.block.block / WINDOW_BLOCKS) as usize;
        let bit = 1u16 << (dr.block.block % WINDOW_BLOCKS);
        bufs.pool.gen(dr.chunk) == dr.gen
            && self
                .work
                .as_ref()
                .and_then(|wk| wk.partials.iter().find(|x| x.piece == dr.block.piece))
                .is_some_and(|part| {
                    !part.received.get(dr.block.block)
                        && part.windows.get(w).is_some_and(|win| {
                            win.chunk == Some(dr.chunk) && win.claimed & bit != 0
                        })
                })
    }

    /// Gives up `dr`'s claim on its block, if the window still holds it.
    fn unclaim(&mut self, dr: &DirectRx) {
        let w = (dr.block.block / WINDOW_BLOCKS) as usize;
        let bit = 1u16 << (dr.block.block % WINDOW_BLOCKS);
        if let Some(part) = self
            .work
            .as_mut()
            .and_then(|wk| wk.partials.iter_mut().find(|x| x.piece == dr.block.piece))
        {
            if let Some(win) = part.windows.get_mut(w) {
                if win.chunk == Some(dr.chunk) {
                    win.claimed &= !bit;
                }
            }
        }
    }

    /// Where the next payload bytes of `p` go (call only while `p.in_payload()`): the rest of
    /// its block in the chunk, or, when that target was taken meanwhile, a scratch buffer
    /// whose contents are dropped. Never empty while a payload is pending.
    pub fn payload_buf<'a>(&mut self, p: &mut PeerConn, bufs: &'a mut Buffers) -> &'a mut [u8] {
        if let Some(dr) = p.direct {
            if self.direct_valid(&dr, bufs) {
                let (from, to) = ((dr.at + dr.done) as usize, (dr.at + dr.len) as usize);
                return &mut bufs.pool.get_mut(dr.chunk)[from..to];
            }
            // Another peer delivered the block first, or the piece was abandoned.
            p.direct = None;
            p.discard = dr.len - dr.done;
            self.direct_dropped(p, &dr);
        }
        let n = (p.discard as usize).min(bufs.scratch.len());
        &mut bufs.scratch[..n]
    }

    /// `n` bytes were written at the start of the last `payload_buf`: decrypts them and, when
    /// the block is complete, stores it like any received block.
    pub fn payload_received(
        &mut self,
        p: &mut PeerConn,
        n: usize,
        now: Instant,
        bufs: &mut Buffers,
    ) {
        if n == 0 {
            return;
        }
        p.last_rx = now;
        match p.direct {
            Some(mut dr) => {
                let n = n.min((dr.len - dr.done) as usize);
                let from = (dr.at + dr.done) as usize;
                p.decrypt_payload(&mut bufs.pool.get_mut(dr.chunk)[from..from + n]);
                dr.done += n as u32;
                if dr.done < dr.len {
                    p.direct = Some(dr);
                    return;
                }
                p.direct = None;
                if !self.direct_valid(&dr, bufs) {
                    // Not reachable: nothing runs between `payload_buf` and this call.
                    self.direct_dropped(p, &dr);
                    return;
                }
                self.unclaim(&dr);
                let r = BlockRequest {
                    index: dr.block.piece,
                    begin: dr.block.block * BLOCK_LEN,
                    length: dr.len,
                };
                self.on_piece(p, r.index, r.begin, Payload::InChunk(r.length), now, bufs);
            }
            None => {
                let n = n.min(p.discard as usize).min(bufs.scratch.len());
                p.decrypt_payload(&mut bufs.scratch[..n]);
                p.discard -= n as u32;
            }
        }
    }

    /// A direct receive whose block this peer will not deliver after all (its target was
    /// taken, or the peer closed): the request is settled as unanswered and its bytes count as
    /// waste.
    fn direct_dropped(&mut self, p: &mut PeerConn, dr: &DirectRx) {
        self.unclaim(dr);
        if let Some(i) = p.outstanding.iter().position(|o| o.block == dr.block) {
            p.outstanding.swap_remove(i);
            if let Some(d) = self.dl.as_mut() {
                d.picker.request_dropped(dr.block);
            }
        }
        self.wasted += u64::from(dr.len);
        p.down.add(dr.len as usize);
    }

    fn fail(&mut self, e: String) {
        warn!("torrent {}: {}", self.meta.name, e);
        self.state = State::Error(e.clone());
        work(&mut self.work).events.push(Event::StorageError(e));
    }

    // ----- piece assembly -----

    fn partial_index(&mut self, piece: u32) -> usize {
        if let Some(i) = work(&mut self.work)
            .partials
            .iter()
            .position(|x| x.piece == piece)
        {
            return i;
        }
        let blocks = self.meta.piece_len(piece).div_ceil(BLOCK_LEN);
        let nwin = blocks.div_ceil(WINDOW_BLOCKS) as usize;
        // Finished partials are recycled, so the steady state of a download allocates nothing
        // per piece (see tests/alloc.rs).
        let part = match work(&mut self.work).spare_partials.pop() {
            Some(mut p) => {
                p.piece = piece;
                p.received.reset(blocks);
                p.windows.clear();
                p.windows.resize(nwin, Window::default());
                p.hashed_windows = 0;
                p.sha = Sha1::new();
                p.contributors.clear();
                p
            }
            None => Partial {
                piece,
                received: Bitfield::new(blocks),
                windows: vec![Window::default(); nwin],
                hashed_windows: 0,
                sha: Sha1::new(),
                contributors: Vec::with_capacity(MAX_CONTRIBUTORS),
            },
        };
        work(&mut self.work).partials.push(part);
        work(&mut self.work).partials.len() - 1
    }

    fn window_len(&self, piece: u32, w: u32) -> usize {
        let plen = self.meta.piece_len(piece) as usize;
        let start = w as usize * CHUNK_LEN;
        (plen - start).min(CHUNK_LEN)
    }

    fn piece_offset(&self, piece: u32) -> u64 {
        piece as u64 * self.meta.piece_length as u64
    }

    fn store_block(
        &mut self,
        from: SocketAddr,
        b: BlockRef,
        data: Payload<'_>,
        bufs: &mut Buffers,
    ) -> Result<(), String> {
        let pi = self.partial_index(b.piece);
        let w = b.block / WINDOW_BLOCKS;
        let in_win = ((b.block % WINDOW_BLOCKS) * BLOCK_LEN) as usize;
        let offset = self.piece_offset(b.piece) + b.block as u64 * BLOCK_LEN as u64;
        {
            let part = &mut work(&mut self.work).partials[pi];
            if part.received.get(b.block) {
                return Ok(());
            }
            part.received.set(b.block);
            if !part.contributors.contains(&from) && part.contributors.len() < MAX_CONTRIBUTORS {
                part.contributors.push(from);
            }
        }
        let win = work(&mut self.work).partials[pi].windows[w as usize];
        let mut win = win;
        if win.chunk.is_none() && !win.spilled {
            match bufs.pool.alloc_or_wait() {
                Some(c) => win.chunk = Some(c),
                None => win.spilled = true,
            }
        }
        match (win.chunk, data) {
            (Some(_), Payload::InChunk(_)) => {}
            (Some(c), Payload::Bytes(data)) => {
                bufs.pool.get_mut(c)[in_win..in_win + data.len()].copy_from_slice(data)
            }
            (None, Payload::InChunk(_)) => {
                // `finish_direct` checked the chunk just before: cannot happen.
                return Err("internal error: a directly received block lost its buffer".into());
            }
            (None, Payload::Bytes(data)) => {
                // No chunk free: write the block now (a spill), from the aligned scratch
                // buffer so the store can use O_DIRECT if it is told to (the rx buffer is not
                // aligned).
                let n = data.len();
                bufs.scratch[..n].copy_from_slice(data);
                bufs.pool.wait_overlap(self.io_owner, offset, n as u64);
                self.store
                    .write_spill(offset, &bufs.scratch[..n])
                    .map_err(|e| e.to_string())?
            }
        }
        win.received += 1;
        work(&mut self.work).partials[pi].windows[w as usize] = win;

        let wlen = self.window_len(b.piece, w);
        let wblocks = (wlen as u32).div_ceil(BLOCK_LEN);
        if win.received as u32 == wblocks {
            if let Some(c) = win.chunk {
                let woff = self.piece_offset(b.piece) + w as u64 * CHUNK_LEN as u64;
                // A write of the same bytes still in flight (a piece downloaded again after
                // failing its hash) must land first.
                bufs.pool.wait_overlap(self.io_owner, woff, wlen as u64);
                bufs.pool.extent[c as usize] = (self.io_owner, woff, wlen as u32);
                self.store
                    .write_chunk(woff, &mut bufs.pool.mem, c, wlen)
                    .map_err(|e| e.to_string())?;
            }
            self.advance_hash(pi, bufs);
        }
        let part = &work(&mut self.work).partials[pi];
        if part.received.is_full() {
            self.finish_piece(pi, bufs)?;
        }
        Ok(())
    }

    /// Hashes complete, in-memory windows that are next in order, releasing their chunks.
    fn advance_hash(&mut self, pi: usize, bufs: &mut Buffers) {
        loop {
            let part = &work(&mut self.work).partials[pi];
            let (piece, w) = (part.piece, part.hashed_windows);
            let Some(&win) = part.windows.get(w as usize) else {
                return;
            };
            let wlen = self.window_len(piece, w);
            let wblocks = (wlen as u32).div_ceil(BLOCK_LEN);
            let (Some(c), true) = (win.chunk, win.received as u32 == wblocks) else {
                return;
            };
            let part = &mut work(&mut self.work).partials[pi];
            part.sha.update(&bufs.pool.get(c)[..wlen]);
            part.hashed_windows += 1;
            part.windows[w as usize].chunk = None;
            bufs.pool.release(c);
        }
    }

    fn finish_piece(&mut self, pi: usize, bufs: &mut Buffers) -> Result<(), String> {
        self.advance_hash(pi, bufs);
        // Windows not hashed yet were spilled or arrived out of order: hash them from memory
        // if they are still held, else read them back.
        let piece = work(&mut self.work).partials[pi].piece;
        let nwin = work(&mut self.work).partials[pi].windows.len() as u32;
        for w in work(&mut self.work).partials[pi].hashed_windows..nwin {
            let wlen = self.window_len(piece, w);
            let win = work(&mut self.work).partials[pi].windows[w as usize];
            match win.chunk {
                Some(c) => {
                    work(&mut self.work).partials[pi]
                        .sha
                        .update(&bufs.pool.get(c)[..wlen]);
                    bufs.pool.release(c);
                    work(&mut self.work).partials[pi].windows[w as usize].chunk = None;
                }
                None => {
                    let woff = self.piece_offset(piece) + w as u64 * CHUNK_LEN as u64;
                    bufs.pool.wait_overlap(self.io_owner, woff, wlen as u64);
                    let mut done = 0;
                    while done < wlen {
                        let n = (wlen - done).min(bufs.scratch.len());
                        self.store
                            .read_spilled(woff + done as u64, &mut bufs.scratch[..n])
                            .map_err(|e| e.to_string())?;
                        work(&mut self.work).partials[pi]
                            .sha
                            .update(&bufs.scratch[..n]);
                        done += n;
                    }
                    self.store.drop_cache(woff, wlen);
                }
            }
        }
        let part = work(&mut self.work).partials.swap_remove(pi);
        let digest = part.sha.finish();
        let expected = self.meta.piece_hash(piece).copied().unwrap_or([0; 20]);
        if digest == expected {
            if let Some(pk) = self.picker_mut() {
                pk.piece_passed(piece);
            }
            self.have.set(piece);
            work(&mut self.work).new_haves.push(piece);
            work(&mut self.work)
                .events
                .push(Event::PieceVerified(piece));
            if self.wanted.as_ref().is_some_and(|w| w.get(piece)) {
                self.wanted_missing = self.wanted_missing.saturating_sub(1);
            }
            if self.is_complete() {
                info!("torrent {}: complete", self.meta.name);
                self.state = State::Seeding;
                // With a file selection, unselected files may be missing: sync only.
                // Every write must have landed before the data is called complete.
                bufs.pool.wait_owner(self.io_owner);
                self.take_io_error(bufs)?;
                let r = if self.wanted.is_some() {
                    self.store.sync()
                } else {
                    self.store.flush()
                };
                if let Err(e) = r {
                    return Err(e.to_string());
                }
                work(&mut self.work).events.push(Event::Completed);
            }
        } else {
            let plen = self.meta.piece_len(piece) as u64;
            warn!(
                "torrent {}: piece {} failed its hash check (from {:?})",
                self.meta.name, piece, part.contributors
            );
            self.hash_fails += 1;
            self.wasted += plen;
            self.downloaded = self.downloaded.saturating_sub(plen);
            if let Some(pk) = self.picker_mut() {
                pk.piece_failed(piece);
            }
            let max = self.settings.max_candidates;
            for a in &part.contributors {
                if let Some(failures) = self.candidates.note_failure(a) {
                    if (part.contributors.len() == 1 || u32::from(failures) >= MAX_HASH_FAILURES)
                        && self.candidates.ban(*a, Instant::ZERO, max)
                    {
                        work(&mut self.work).banned.push(*a);
                    }
                }
            }
        }
        work(&mut self.work).spare_partials.push(part);
        self.settle_download();
        Ok(())
    }

    /// A peer banned for corrupt data since the last call; the engine closes its connection.
    pub fn poll_banned(&mut self) -> Option<SocketAddr> {
        self.work.as_mut().and_then(|w| w.banned.pop())
    }

    /// Whether the peer at `addr` has been banned for corrupt data; the engine closes it.
    pub fn should_drop(&self, addr: &SocketAddr) -> bool {
        self.candidates.is_banned(addr)
    }

    // ----- output -----

    fn update_interest(&mut self, p: &mut PeerConn) {
        let interesting = !self.is_complete()
            && self
                .dl
                .as_ref()
                .is_some_and(|d| d.picker.is_interesting(&p.have, p.seed));
        if interesting != p.am_interested {
            p.am_interested = interesting;
            p.push(if interesting {
                &Message::Interested
            } else {
                &Message::NotInterested
            });
        }
    }

    /// BEP 11: tells each peer that supports ut_pex which other peers we are connected to
    /// (by listen address), at most once a minute per peer (`PexState` keeps the pace).
    fn send_pex(now: Instant, list: &mut [&mut PeerConn]) {
        if !list
            .iter()
            .any(|p| p.pex.as_ref().is_some_and(|s| now >= s.poll_at()))
        {
            return;
        }
        let contacts: Vec<(usize, SocketAddr, u8)> = list
            .iter()
            .enumerate()
            .filter(|(_, p)| p.close.is_none())
            .filter_map(|(i, p)| {
                let mut flags = 0;
                if p.seed {
                    flags |= ext::PEX_FLAG_SEED;
                }
                if p.outgoing {
                    flags |= ext::PEX_FLAG_REACHABLE;
                }
                if p.encrypted {
                    flags |= ext::PEX_FLAG_ENCRYPTION;
                }
                Some((i, p.listen_addr()?, flags))
            })
            .collect();
        let mut current = Vec::with_capacity(contacts.len());
        for (i, p) in list.iter_mut().enumerate() {
            // Only poll with room for the largest message (once polled, its contacts count
            // as told); `push` grows the send buffer only by what the message needs.
            if p.close.is_some() || p.tx_room() < PEX_TX_RESERVE {
                continue;
            }
            let (Some(state), Some(id)) = (p.pex.as_mut(), p.ext_ut_pex) else {
                continue;
            };
            if now < state.poll_at() {
                continue;
            }
            current.clear();
            current.extend(
                contacts
                    .iter()
                    .filter(|(j, _, _)| *j != i)
                    .map(|&(_, a, f)| (a, f)),
            );
            if let Some(m) = state.poll(now, &current) {
                p.push(&Message::Extended {
                    id,
                    payload: &m.encode(),
                });
            }
        }
    }

    fn unchoke(&mut self, p: &mut PeerConn) {
        if p.am_choking {
            p.am_choking = false;
            p.push(&Message::Unchoke);
        }
    }

    fn choke(&mut self, p: &mut PeerConn) {
        if !p.am_choking {
            p.am_choking = true;
            p.push(&Message::Choke);
            // BEP 6: with the fast extension every pending request is rejected explicitly.
            while let Some(r) = p.incoming.pop_front() {
                if p.fast {
                    p.push(&Message::Reject(r));
                }
            }
        }
    }

    /// How many requests to keep in flight: enough to cover about a second of the peer's
    /// current rate, bounded by what it says it queues (`reqq`) and by its share of the
    /// torrent's in-flight budget.
    fn queue_depth(&self, p: &PeerConn) -> usize {
        let by_rate = (p.down.get() / BLOCK_LEN as u64) as usize;
        let share = (MAX_INFLIGHT_PER_TORRENT / self.established.max(1)).max(MIN_INFLIGHT_SHARE);
        by_rate
            .clamp(32, MAX_OUTSTANDING)
            .min(share)
            .min(p.peer_reqq.max(1))
    }

    /// Fills `p.tx` with requests and with the blocks it asked for, as far as space allows.
    pub fn fill_tx(&mut self, p: &mut PeerConn, bufs: &mut Buffers) {
        if !p.is_established() || p.close.is_some() {
            return;
        }
        if self.state == State::Downloading && !p.peer_choking && p.am_interested && !p.snubbed {
            let depth = self.queue_depth(p);
            let mut want = depth.saturating_sub(p.outstanding.len());
            // Whole windows at a time when the queue is deep enough: a window's blocks then
            // come from one peer, in order, and it completes soon after it opens. Handed out
            // block by block, several fast peers would interleave in every window, and windows
            // waiting on the slowest queue would need far more chunks than the pool has.
            let batch = WINDOW_BLOCKS as usize;
            if depth >= 2 * batch {
                want -= want % batch;
            }
            if want > 0 {
                if let Some(d) = self.dl.as_mut() {
                    d.pick_buf.clear();
                    d.already_buf.clear();
                    if d.picker.in_endgame() {
                        d.already_buf.extend(p.outstanding.iter().map(|o| o.block));
                    }
                    d.picker.pick(
                        &p.have,
                        p.seed,
                        want,
                        &d.already_buf,
                        &mut self.rng,
                        &mut d.pick_buf,
                    );
                    for &b in &d.pick_buf {
                        let r = BlockRequest {
                            index: b.piece,
                            begin: b.block * BLOCK_LEN,
                            length: d.picker.block_len(b.piece, b.block),
                        };
                        if p.push(&Message::Request(r)) {
                            p.outstanding.push(Outstanding { block: b });
                        } else {
                            d.picker.request_dropped(b);
                        }
                    }
                }
            }
        }
        // Serve requests while the block and its 13-byte header fit.
        while !p.am_choking {
            let Some(r) = p.incoming.front().copied() else {
                break;
            };
            let need = 13 + r.length as usize;
            p.ensure_tx(need);
            if p.tx_space() < need {
                break;
            }
            p.incoming.pop_front();
            let off = self.piece_offset(r.index) + r.begin as u64;
            let start = p.tx_len;
            p.tx[start..start + 13]
                .copy_from_slice(&wire::piece_header(r.index, r.begin, r.length));
            bufs.pool
                .wait_overlap(self.io_owner, off, u64::from(r.length));
            if let Err(e) = self.store.read(off, &mut p.tx[start + 13..start + need]) {
                warn!("torrent {}: read for upload failed: {}", self.meta.name, e);
                if p.fast {
                    p.push(&Message::Reject(r));
                }
                continue;
            }
            p.tx_len += need;
            p.up.add(r.length as usize);
            self.uploaded += r.length as u64;
        }
    }

    /// Sends queued `have` and `cancel` messages to every peer of this torrent. Call once per
    /// loop turn after input handling, before `fill_tx`.
    pub fn broadcast<'a>(&mut self, peers: impl Iterator<Item = &'a mut PeerConn>) {
        let no_cancels = self.dl.as_ref().map_or(true, |d| d.cancels.is_empty());
        let new_haves: &[u32] = self.work.as_ref().map_or(&[], |w| &w.new_haves);
        if new_haves.is_empty() && no_cancels {
            return;
        }
        let complete = self.is_complete();
        let cancels: &[BlockRef] = self.dl.as_ref().map_or(&[], |d| &d.cancels);
        for p in peers {
            if !p.is_established() {
                continue;
            }
            for &piece in new_haves {
                // Peers that have the piece do not need to hear of it.
                if !p.seed && !p.have.get(piece) {
                    p.push(&Message::Have(piece));
                }
            }
            for &b in cancels {
                if let Some(i) = p.outstanding.iter().position(|o| o.block == b) {
                    p.outstanding.swap_remove(i);
                    p.push(&Message::Cancel(BlockRequest {
                        index: b.piece,
                        begin: b.block * BLOCK_LEN,
                        length: self.block_len(b.piece, b.block),
                    }));
                }
            }
            if complete && p.am_interested {
                p.am_interested = false;
                p.push(&Message::NotInterested);
            }
        }
        if let Some(w) = self.work.as_mut() {
            w.new_haves.clear();
        }
        if let Some(d) = self.dl.as_mut() {
            d.cancels.clear();
        }
        // The cancels of the last blocks were what kept the download state past completion.
        self.settle_download();
    }

    // ----- time -----

    /// Once a second: rates, snubbing, keep-alives, interest, and (every 10 s) choking.
    pub fn tick<'a>(
        &mut self,
        now: Instant,
        elapsed: Duration,
        peers: impl Iterator<Item = &'a mut PeerConn>,
        bufs: &mut Buffers,
    ) {
        let mut list: Vec<&mut PeerConn> = peers.filter(|p| p.is_established()).collect();
        for p in list.iter_mut() {
            p.down.tick(elapsed);
            p.up.tick(elapsed);
            if now.since(p.last_rx) > crate::peer::IDLE_TIMEOUT {
                p.close(CloseReason::Idle);
                continue;
            }
            if now.since(p.last_tx) >= crate::peer::KEEPALIVE_INTERVAL && p.tx_pending().is_empty()
            {
                p.push(&Message::KeepAlive);
            }
            if !p.outstanding.is_empty() && now.since(p.last_block) > SNUB_TIMEOUT && !p.snubbed {
                debug!("peer {}: snubbed", p.addr);
                p.snubbed = true;
                for o in p.outstanding.drain(..) {
                    if let Some(pk) = self.dl.as_mut().map(|d| &mut d.picker) {
                        pk.request_dropped(o.block);
                    }
                }
            }
            self.update_interest(p);
            if self.state == State::Seeding && !p.peer_interested && p.seed {
                p.close(CloseReason::NotInteresting);
            }
        }
        if !self.meta.private {
            Self::send_pex(now, &mut list);
        }
        if self.choker.as_ref().is_some_and(|c| now >= c.poll_at()) {
            bufs.peer_info.clear();
            for p in list.iter() {
                bufs.peer_info.push(PeerInfo {
                    key: slot_key(p),
                    interested: p.peer_interested,
                    choked: p.am_choking,
                    down_rate: p.down.get(),
                    up_rate: p.up.get(),
                    snubbed: p.snubbed,
                    connected_at: p.connected_at,
                });
            }
            bufs.choke_out.clear();
            let seeding = self.state == State::Seeding;
            if let Some(c) = self.choker.as_mut() {
                c.rechoke(
                    now,
                    seeding,
                    &bufs.peer_info,
                    &mut self.rng,
                    &mut bufs.choke_out,
                    &mut bufs.choker,
                );
            }
            for &(key, unchoke) in &bufs.choke_out {
                if let Some(p) = list.iter_mut().find(|p| slot_key(p) == key) {
                    if unchoke {
                        self.unchoke(p);
                    } else {
                        self.choke(p);
                    }
                }
            }
        }
    }
}

/// A stable key for a peer within one torrent, for the choker.
fn slot_key(p: &PeerConn) -> u32 {
    // FNV-1a over the address bytes and port: stable, cheap and allocation-free.
    let mut h: u32 = 0x811c_9dc5;
    let mut mix = |b: u8| {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    };
    match p.addr.ip() {
        std::net::IpAddr::V4(ip) => ip.octets().iter().for_each(|&b| mix(b)),
        std::net::IpAddr::V6(ip) => ip.octets().iter().for_each(|&b| mix(b)),
    }
    p.addr.port().to_be_bytes().iter().for_each(|&b| mix(b));
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::{FileEntry, InfoDict};
    use crate::storage::MemStore;
    use crate::wire;

    fn meta_for(data: &[u8], piece_length: u32) -> Metainfo {
        let mut pieces = Vec::new();
        for c in data.chunks(piece_length as usize) {
            pieces.extend_from_slice(&crate::hash::sha1(c));
        }
        Metainfo {
            info_hash: [7; 20],
            name: "sim".into(),
            piece_length,
            info: InfoDict::bare_hashes(pieces),
            files: vec![FileEntry {
                path: vec!["sim".into()],
                length: data.len() as u64,
                offset: 0,
                pad: false,
            }],
            total_length: data.len() as u64,
            private: false,
            trackers: vec![],
            multi_file: false,
        }
    }

    /// `meta_for(data, 16384)` parsed from a real info dictionary (so it has one to serve over
    /// BEP 9), grown past `min_len` bytes by an unknown key. Returns it with the dictionary.
    fn meta_with_dict(data: &[u8], min_len: usize) -> (Metainfo, Vec<u8>) {
        let plain = meta_for(data, 16384);
        let hashes: Vec<u8> = (0..plain.piece_count())
            .flat_map(|i| *plain.piece_hash(i).unwrap())
            .collect();
        let mut info = b"d".to_vec();
        crate::bencode::put_kv_int(&mut info, "length", data.len() as i64);
        crate::bencode::put_kv_bytes(&mut info, "name", b"sim");
        crate::bencode::put_kv_int(&mut info, "piece length", 16384);
        crate::bencode::put_kv_bytes(&mut info, "pieces", &hashes);
        let filler: Vec<u8> = (0..min_len as u32).map(|i| i as u8).collect();
        crate::bencode::put_kv_bytes(&mut info, "x-padding", &filler);
        info.push(b'e');
        let meta = crate::metainfo::parse_info(&info, vec![]).unwrap().meta;
        assert_eq!(meta.info_dict(), Some(&info[..]));
        (meta, info)
    }

    /// A seed (`full`) or an empty leecher of `meta` over `store`, with peer id and rng seed
    /// from `id`.
    fn peer_torrent(
        meta: &Metainfo,
        full: bool,
        store: Box<dyn PieceStore>,
        chunks: usize,
        id: u8,
    ) -> Torrent {
        let n = meta.piece_count();
        let have = if full {
            Bitfield::full(n)
        } else {
            Bitfield::new(n)
        };
        Torrent::new(
            meta.clone(),
            have,
            store,
            chunks,
            [id; 20],
            settings(),
            Rng::new(u64::from(id)),
        )
        .unwrap()
    }

    fn settings() -> Settings {
        Settings {
            upload_slots: 4,
            max_candidates: 50,
            listen_port: 6881,
        }
    }

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, n], 6881))
    }

    /// Moves bytes from `from.tx` to `to.rx` as far as `to.rx` has room.
    fn pipe(from: &mut PeerConn, to: &mut PeerConn) -> usize {
        let pending = from.tx_pending().len();
        let room = to.rx.len() - to.rx_len;
        let n = pending.min(room);
        let start = from.tx_pos;
        to.rx[to.rx_len..to.rx_len + n].copy_from_slice(&from.tx[start..start + n]);
        to.rx_len += n;
        from.tx_consumed(n);
        n
    }

    /// Moves what `from` sent to `to` and lets `t` handle it the way the engine reads: the
    /// payload of a direct receive into `payload_buf`, everything else through `rx`. Returns
    /// the bytes that took the direct way.
    fn deliver(
        t: &mut Torrent,
        from: &mut PeerConn,
        to: &mut PeerConn,
        now: Instant,
        bufs: &mut Buffers,
    ) -> usize {
        let mut direct = 0;
        for _ in 0..1000 {
            if to.close.is_some() {
                break;
            }
            if to.in_payload() {
                let pending = from.tx_pending();
                if pending.is_empty() {
                    break;
                }
                let buf = t.payload_buf(to, bufs);
                let n = buf.len().min(pending.len());
                buf[..n].copy_from_slice(&pending[..n]);
                from.tx_consumed(n);
                t.payload_received(to, n, now, bufs);
                direct += n;
            } else {
                // In pieces, as reads from a socket arrive, so messages straddle reads.
                let n = from
                    .tx_pending()
                    .len()
                    .min(to.rx.len() - to.rx_len)
                    .min(7000);
                let start = from.tx_pos;
                to.rx[to.rx_len..to.rx_len + n].copy_from_slice(&from.tx[start..start + n]);
                to.rx_len += n;
                from.tx_consumed(n);
                t.handle_rx(to, now, bufs);
                if n == 0 && !to.in_payload() {
                    break;
                }
            }
        }
        direct
    }

    fn pair(seed: &mut Torrent, leech: &mut Torrent, fast: bool) -> (PeerConn, PeerConn) {
        let now = Instant::ZERO;
        let mut a = PeerConn::with_buffers(40 * 1024);
        let mut b = PeerConn::with_buffers(40 * 1024);
        a.reset(addr(2), false, now);
        b.reset(addr(1), true, now);
        for p in [&mut a, &mut b] {
            p.fast = fast;
            p.extended = true;
        }
        seed.on_established(&mut a, now);
        leech.on_established(&mut b, now);
        (a, b)
    }

    /// Runs seeder and leecher against each other in memory until the leecher completes.
    fn run_swarm(
        data: &[u8],
        piece_length: u32,
        chunks: usize,
        fast: bool,
        corrupt: bool,
    ) -> (Torrent, u32, usize) {
        let meta = meta_for(data, piece_length);
        let mut seed_data = data.to_vec();
        if corrupt {
            // The seeder's copy of piece 1 is wrong: the leecher must notice and not keep it.
            seed_data[piece_length as usize + 5] ^= 0xff;
        }
        let mut seed = peer_torrent(
            &meta,
            true,
            Box::new(MemStore::from_bytes(seed_data)),
            chunks,
            1,
        );
        let mut leech = peer_torrent(&meta, false, Box::new(MemStore::new(data.len())), chunks, 2);
        let (mut a, mut b) = pair(&mut seed, &mut leech, fast);
        let mut sbufs = Buffers::new(chunks);
        let mut lbufs = Buffers::new(chunks);
        let mut now = Instant::ZERO;
        let mut turns = 0;
        let mut direct = 0;
        while !leech.is_complete() && turns < 20_000 && a.close.is_none() && b.close.is_none() {
            turns += 1;
            now = now + Duration::from_millis(1);
            direct += deliver(&mut leech, &mut a, &mut b, now, &mut lbufs);
            deliver(&mut seed, &mut b, &mut a, now, &mut sbufs);
            seed.broadcast(std::iter::once(&mut a));
            leech.broadcast(std::iter::once(&mut b));
            seed.fill_tx(&mut a, &mut sbufs);
            leech.fill_tx(&mut b, &mut lbufs);
            if turns % 1000 == 0 {
                seed.tick(
                    now,
                    Duration::from_secs(1),
                    std::iter::once(&mut a),
                    &mut sbufs,
                );
                leech.tick(
                    now,
                    Duration::from_secs(1),
                    std::iter::once(&mut b),
                    &mut lbufs,
                );
            }
            if corrupt && leech.hash_fails > 0 {
                break;
            }
        }
        (leech, turns, direct)
    }

    fn test_data(len: usize) -> Vec<u8> {
        let mut d = vec![0u8; len];
        Rng::new(99).fill(&mut d);
        d
    }

    fn assert_same(t: &mut Torrent, data: &[u8]) {
        let mut got = vec![0u8; data.len()];
        t.store_mut().read(0, &mut got).unwrap();
        assert!(got == data, "downloaded bytes differ");
    }

    #[test]
    fn swarm_in_memory_completes_with_verified_bytes() {
        let data = test_data(1_000_003);
        let (mut leech, turns, direct) = run_swarm(&data, 32768, 4, true, false);
        assert!(leech.is_complete(), "incomplete after {turns} turns");
        // Messages straddle the 40 KiB receive buffer: those payloads go straight to chunks.
        assert!(
            direct > data.len() / 10,
            "only {direct} bytes received directly"
        );
        assert_eq!(leech.state, State::Seeding);
        assert_same(&mut leech, &data);
        let mut verified = 0;
        let mut completed = false;
        while let Some(e) = leech.poll_event() {
            match e {
                Event::PieceVerified(_) => verified += 1,
                Event::Completed => completed = true,
                Event::StorageError(e) => panic!("{e}"),
            }
        }
        assert_eq!(verified, leech.meta.piece_count());
        assert!(completed);
    }

    #[test]
    fn downloading_completes_drops_download_state() {
        let data = test_data(300_000);
        let (mut leech, _, _) = run_swarm(&data, 16384, 4, true, false);
        assert!(leech.is_complete());
        assert!(!leech.has_download_state(), "a seed keeps no picker");
        assert!(leech.poll_event().is_some(), "events wait for the engine");
        while leech.poll_event().is_some() {}
        assert!(
            leech.work.is_none(),
            "nor, once the engine drained its events, recycled partials or queues"
        );
        let seed = torrent(&data, false, true, 6881, 1);
        assert!(!seed.has_download_state(), "nor one added complete");
        assert!(seed.work.is_none());
        let leech = torrent(&data, false, false, 6881, 2);
        assert!(leech.has_download_state());
    }

    /// Two files of 3 pieces each; the leecher's store is empty.
    fn two_file_torrents() -> (Vec<u8>, Torrent, Torrent) {
        let data = test_data(6 * 16384);
        let mut meta = meta_for(&data, 16384);
        meta.files = vec![
            FileEntry {
                path: vec!["sim".into(), "a".into()],
                length: 3 * 16384,
                offset: 0,
                pad: false,
            },
            FileEntry {
                path: vec!["sim".into(), "b".into()],
                length: 3 * 16384,
                offset: 3 * 16384,
                pad: false,
            },
        ];
        meta.multi_file = true;
        let n = meta.piece_count();
        let mk = |have: Bitfield, store: MemStore, id: u8| {
            Torrent::new(
                meta.clone(),
                have,
                Box::new(store),
                2,
                [id; 20],
                settings(),
                Rng::new(id as u64),
            )
            .unwrap()
        };
        let seed = mk(Bitfield::full(n), MemStore::from_bytes(data.clone()), 1);
        let leech = mk(Bitfield::new(n), MemStore::new(data.len()), 2);
        (data, seed, leech)
    }

    /// Runs an established pair until the leecher completes (or a bounded number of turns).
    fn download_from(seed: &mut Torrent, leech: &mut Torrent) {
        download_with(
            seed,
            leech,
            &mut Buffers::new(2),
            &mut Buffers::new(2),
            5_000,
        );
    }

    /// `download_from` with the caller's buffers (the leecher's may write asynchronously; its
    /// finished writes are reaped every turn, as the engine does) and turn limit.
    fn download_with(
        seed: &mut Torrent,
        leech: &mut Torrent,
        sbufs: &mut Buffers,
        lbufs: &mut Buffers,
        turns: u32,
    ) {
        let (mut a, mut b) = pair(seed, leech, true);
        let mut now = Instant::ZERO;
        for _ in 0..turns {
            if leech.is_complete() || a.close.is_some() || b.close.is_some() {
                break;
            }
            now = now + Duration::from_millis(1);
            deliver(leech, &mut a, &mut b, now, lbufs);
            lbufs.pool.poll(false);
            deliver(seed, &mut b, &mut a, now, sbufs);
            seed.broadcast(std::iter::once(&mut a));
            leech.broadcast(std::iter::once(&mut b));
            seed.fill_tx(&mut a, sbufs);
            leech.fill_tx(&mut b, lbufs);
        }
        seed.on_closed(&mut a, now);
        leech.on_closed(&mut b, now);
    }

    #[test]
    fn selection_complete_widened_rebuilds_download_state() {
        let (data, mut seed, mut leech) = two_file_torrents();
        leech.select_files(&[(0, 0)]);
        download_from(&mut seed, &mut leech);
        assert!(leech.is_complete(), "first file fetched");
        assert_eq!(leech.state, State::Seeding);
        assert!(!leech.has_download_state());
        assert_eq!(leech.have.count(), 3, "only the selected pieces");

        // Selecting both files wants the second one again: a fresh picker must fetch exactly
        // the missing pieces.
        leech.select_files(&[(0, 1)]);
        assert!(!leech.is_complete());
        assert_eq!(leech.state, State::Downloading);
        assert!(leech.has_download_state());
        download_from(&mut seed, &mut leech);
        assert!(leech.is_complete(), "second file fetched");
        assert!(leech.have.is_full());
        assert!(!leech.has_download_state());
        assert_same(&mut leech, &data);
    }

    #[test]
    fn seeding_piece_arrives_is_counted_as_wasted() {
        let data = test_data(50_000);
        let mut seed = torrent(&data, false, true, 6881, 1);
        let mut leech = torrent(&data, false, false, 6881, 2);
        let (mut a, _b) = pair(&mut seed, &mut leech, true);
        let block = vec![0u8; 16384];
        let piece = Message::Piece {
            index: 0,
            begin: 0,
            data: &block,
        };
        let mut msg = vec![0u8; piece.encoded_len()];
        assert_eq!(piece.encode(&mut msg), Some(msg.len()));
        assert_eq!(feed(&mut seed, &mut a, &msg), msg.len());
        assert!(a.close.is_none(), "an unrequested block is not a violation");
        assert_eq!(seed.wasted, 16384);
        assert!(!seed.has_download_state());
    }

    #[test]
    fn established_last_peer_closes_drops_choker() {
        let data = test_data(50_000);
        let mut seed = torrent(&data, false, true, 6881, 1);
        let mut leech = torrent(&data, false, false, 6881, 2);
        assert!(seed.choker.is_none(), "no peers, no choker");
        let (mut a, mut b) = pair(&mut seed, &mut leech, true);
        assert!(seed.choker.is_some());
        // The leecher's interest is answered through the choker's free slot.
        pipe(&mut a, &mut b);
        leech.handle_rx(&mut b, Instant::ZERO, &mut Buffers::new(1));
        assert!(b.am_interested);
        pipe(&mut b, &mut a);
        seed.handle_rx(&mut a, Instant::ZERO, &mut Buffers::new(1));
        assert!(a.peer_interested && !a.am_choking, "unchoked at once");
        seed.on_closed(&mut a, Instant::ZERO);
        assert!(seed.choker.is_none(), "dropped with the last peer");
    }

    #[test]
    fn swarm_spills_when_the_chunk_pool_is_tiny() {
        // Pieces of 1 MiB span four windows; one chunk forces most windows to spill and be
        // hashed by reading back from the store.
        let data = test_data(3 * 1024 * 1024 + 12345);
        let (mut leech, _, _) = run_swarm(&data, 1 << 20, 1, false, false);
        assert!(leech.is_complete());
        assert_same(&mut leech, &data);
    }

    /// A leecher of 64 KiB (two pieces of two blocks) with two established peers, each fed
    /// by a remote end that has everything and unchoked us; every block is requested from
    /// the first, and (endgame) again from the second.
    fn direct_setup() -> (Vec<u8>, Torrent, Buffers, [(PeerConn, PeerConn); 2]) {
        let (data, leech, bufs, links) = two_peer_leech(4 * 16384, 32768);
        assert_eq!(links[0].1.outstanding.len(), 4);
        assert_eq!(links[1].1.outstanding.len(), 4, "endgame: asked again");
        (data, leech, bufs, links)
    }

    /// A leecher of `len` bytes with two established peers (remote end, our end), each
    /// unchoked by a remote end that has everything, and its first requests queued.
    fn two_peer_leech(
        len: usize,
        piece_length: u32,
    ) -> (Vec<u8>, Torrent, Buffers, [(PeerConn, PeerConn); 2]) {
        let data = test_data(len);
        let meta = meta_for(&data, piece_length);
        let mut leech = peer_torrent(&meta, false, Box::new(MemStore::new(data.len())), 4, 2);
        let mut bufs = Buffers::new(4);
        let now = Instant::ZERO;
        let mut links = [1u8, 3].map(|n| {
            let mut remote = PeerConn::with_buffers(64 * 1024);
            remote.reset(addr(n + 10), false, now);
            let mut p = PeerConn::with_buffers(20 * 1024);
            p.reset(addr(n), true, now);
            p.fast = true;
            leech.on_established(&mut p, now);
            (remote, p)
        });
        for (remote, p) in &mut links {
            remote.push(&Message::HaveAll);
            remote.push(&Message::Unchoke);
            deliver(&mut leech, remote, p, now, &mut bufs);
            leech.fill_tx(p, &mut bufs);
        }
        (data, leech, bufs, links)
    }

    /// Which peer (0 or 1) asked for each window; panics when two peers share a window.
    fn window_owners(
        links: &[(PeerConn, PeerConn); 2],
    ) -> std::collections::HashMap<(u32, u32), usize> {
        let mut owner = std::collections::HashMap::new();
        for (i, (_, p)) in links.iter().enumerate() {
            for o in &p.outstanding {
                let w = (o.block.piece, o.block.block / WINDOW_BLOCKS);
                assert_eq!(
                    *owner.entry(w).or_insert(i),
                    i,
                    "window {w:?} split between peers"
                );
            }
        }
        owner
    }

    #[test]
    fn requests_go_out_in_whole_windows_one_peer_each() {
        let (data, mut leech, mut bufs, mut links) = two_peer_leech(4 << 20, 1 << 20);
        let now = Instant::ZERO;
        let first = links[0].1.outstanding.len();
        assert!(first >= 2 * WINDOW_BLOCKS as usize);
        for (_, p) in &links {
            assert_eq!(p.outstanding.len() % WINDOW_BLOCKS as usize, 0);
        }
        window_owners(&links);
        // Blocks answered one by one: no new request until a whole window's worth is free.
        let [(r1, p1), _] = &mut links;
        let asked: Vec<BlockRef> = p1.outstanding.iter().map(|o| o.block).collect();
        for (k, b) in asked.iter().take(WINDOW_BLOCKS as usize).enumerate() {
            let off = (b.piece * (1 << 20) + b.block * BLOCK_LEN) as usize;
            r1.push(&Message::Piece {
                index: b.piece,
                begin: b.block * BLOCK_LEN,
                data: &data[off..off + BLOCK_LEN as usize],
            });
            deliver(&mut leech, r1, p1, now, &mut bufs);
            leech.fill_tx(p1, &mut bufs);
            let expect = if k + 1 < WINDOW_BLOCKS as usize {
                first - k - 1
            } else {
                first
            };
            assert_eq!(p1.outstanding.len(), expect, "after {} blocks", k + 1);
        }
        window_owners(&links);
    }

    /// Sends the missing blocks (piece, block) of `direct_setup`'s torrent from `remote` to
    /// `p`; the leecher must then be complete with every byte right.
    fn complete_with(
        leech: &mut Torrent,
        remote: &mut PeerConn,
        p: &mut PeerConn,
        bufs: &mut Buffers,
        data: &[u8],
        blocks: &[(u32, u32)],
    ) {
        for &(i, b) in blocks {
            let off = (i * 32768 + b * 16384) as usize;
            remote.push(&Message::Piece {
                index: i,
                begin: b * 16384,
                data: &data[off..off + 16384],
            });
            deliver(leech, remote, p, Instant::ZERO, bufs);
        }
        assert!(leech.is_complete());
        assert_eq!(leech.hash_fails, 0);
        assert_same(leech, data);
    }

    #[test]
    fn direct_block_delivered_first_by_another_peer_drops_the_rest() {
        let (data, mut leech, mut bufs, mut links) = direct_setup();
        let now = Instant::ZERO;
        let [(r1, p1), (r2, p2)] = &mut links;
        // Peer 1 starts block 0: the header and 1000 bytes go to the chunk.
        r1.push_bytes(&wire::piece_header(0, 0, 16384));
        r1.push_bytes(&data[..1000]);
        deliver(&mut leech, r1, p1, now, &mut bufs);
        let dr = p1.direct.expect("payload received directly");
        assert_eq!((dr.done, dr.len), (1000, 16384));
        // Peer 2 delivers the whole block meanwhile, through its receive buffer.
        r2.push(&Message::Piece {
            index: 0,
            begin: 0,
            data: &data[..16384],
        });
        deliver(&mut leech, r2, p2, now, &mut bufs);
        assert!(p2.direct.is_none(), "the block was claimed by peer 1");
        // Peer 1's late bytes are wrong: they must be dropped, not written.
        r1.push_bytes(&[0xAA; 16384 - 1000]);
        let direct = deliver(&mut leech, r1, p1, now, &mut bufs);
        assert_eq!(direct, 16384 - 1000);
        assert!(!p1.in_payload());
        assert!(!p1
            .outstanding
            .iter()
            .any(|o| o.block.piece == 0 && o.block.block == 0));
        assert!(leech.wasted >= 16384);
        // Peer 2 sends the rest; every piece verifies.
        complete_with(
            &mut leech,
            r2,
            p2,
            &mut bufs,
            &data,
            &[(0, 1), (1, 0), (1, 1)],
        );
    }

    #[test]
    fn direct_receive_peer_closes_midway_frees_the_block() {
        let (data, mut leech, mut bufs, mut links) = direct_setup();
        let now = Instant::ZERO;
        let [(r1, p1), (r2, p2)] = &mut links;
        r1.push_bytes(&wire::piece_header(1, 16384, 16384));
        r1.push_bytes(&[0x55; 5000]);
        deliver(&mut leech, r1, p1, now, &mut bufs);
        assert!(p1.direct.is_some());
        leech.on_closed(p1, now);
        assert!(!p1.in_payload());
        // Peer 2 can now receive the same block directly (the claim was given up).
        let off = 32768 + 16384;
        r2.push_bytes(&wire::piece_header(1, 16384, 16384));
        r2.push_bytes(&data[off..off + 3000]);
        deliver(&mut leech, r2, p2, now, &mut bufs);
        assert!(p2.direct.is_some(), "claim released by the closed peer");
        r2.push_bytes(&data[off + 3000..off + 16384]);
        deliver(&mut leech, r2, p2, now, &mut bufs);
        complete_with(
            &mut leech,
            r2,
            p2,
            &mut bufs,
            &data,
            &[(0, 0), (0, 1), (1, 0)],
        );
    }

    #[test]
    fn swarm_rejects_a_corrupt_piece() {
        let data = test_data(200_000);
        let (leech, _, _) = run_swarm(&data, 16384, 2, true, true);
        assert!(leech.hash_fails >= 1);
        assert!(!leech.have.get(1), "corrupt piece must not count as had");
        assert!(leech.wasted >= 16384);
    }

    #[test]
    fn request_out_of_range_closes_the_peer() {
        let data = test_data(100_000);
        let meta = meta_for(&data, 16384);
        let mut seed = Torrent::new(
            meta.clone(),
            Bitfield::full(meta.piece_count()),
            Box::new(MemStore::from_bytes(data)),
            1,
            [1; 20],
            settings(),
            Rng::new(1),
        )
        .unwrap();
        let mut p = PeerConn::with_buffers(32 * 1024);
        p.reset(addr(3), false, Instant::ZERO);
        seed.on_established(&mut p, Instant::ZERO);
        let bad = Message::Request(BlockRequest {
            index: 6,
            begin: 16384,
            length: 16384,
        });
        let n = bad.encode(&mut p.rx).unwrap();
        p.rx_len = n;
        seed.handle_rx(&mut p, Instant::ZERO, &mut Buffers::new(1));
        assert!(matches!(p.close, Some(CloseReason::Protocol(_))));
    }

    // ----- extension protocol (BEP 10/9/11) -----

    fn torrent(data: &[u8], private: bool, full: bool, port: u16, seed: u64) -> Torrent {
        let mut meta = meta_for(data, 16384);
        meta.private = private;
        let n = meta.piece_count();
        Torrent::new(
            meta,
            if full {
                Bitfield::full(n)
            } else {
                Bitfield::new(n)
            },
            Box::new(MemStore::from_bytes(data.to_vec())),
            1,
            [seed as u8; 20],
            Settings {
                upload_slots: 4,
                max_candidates: 50,
                listen_port: port,
            },
            Rng::new(seed),
        )
        .unwrap()
    }

    /// Connects `dialler` to `listener` at `listen`; the listener sees the dialler from
    /// `from` (an ephemeral port). Returns (dialler's conn, listener's conn).
    fn connect(
        dialler: &mut Torrent,
        listener: &mut Torrent,
        listen: SocketAddr,
        from: SocketAddr,
        buf: usize,
    ) -> (PeerConn, PeerConn) {
        let now = Instant::ZERO;
        let mut d = PeerConn::with_buffers(buf);
        let mut l = PeerConn::with_buffers(buf);
        d.reset(listen, true, now);
        l.reset(from, false, now);
        for p in [&mut d, &mut l] {
            p.fast = true;
            p.extended = true;
        }
        dialler.on_established(&mut d, now);
        listener.on_established(&mut l, now);
        (d, l)
    }

    /// Delivers both directions of a link once.
    fn exchange(
        a: &mut Torrent,
        pa: &mut PeerConn,
        b: &mut Torrent,
        pb: &mut PeerConn,
        now: Instant,
    ) {
        let mut bufs = Buffers::new(1);
        deliver(b, pa, pb, now, &mut bufs);
        deliver(a, pb, pa, now, &mut bufs);
    }

    /// Extended messages queued in `p.tx`, as (id, payload).
    fn extended_sent(p: &PeerConn) -> Vec<(u8, Vec<u8>)> {
        let tx = p.tx_pending();
        let mut out = Vec::new();
        let mut at = 0;
        while let Ok(Some((m, n))) = wire::decode(&tx[at..], 1 << 20) {
            if let Message::Extended { id, payload } = m {
                out.push((id, payload.to_vec()));
            }
            at += n;
        }
        out
    }

    fn handshake_of(p: &PeerConn) -> ExtHandshake {
        let (_, h) = extended_sent(p)
            .into_iter()
            .find(|(id, _)| *id == 0)
            .expect("extension handshake sent");
        ExtHandshake::parse(&h).unwrap()
    }

    #[test]
    fn established_sends_ext_handshake_with_metadata_size_and_pex() {
        let data = test_data(50_000);
        let mut a = torrent(&data, false, true, 6881, 1);
        let (meta, info) = meta_with_dict(&data, 20_000);
        a.meta = meta;
        let mut p = PeerConn::with_buffers(8192);
        p.reset(addr(9), false, Instant::ZERO);
        p.extended = true;
        a.on_established(&mut p, Instant::ZERO);
        let h = handshake_of(&p);
        assert_eq!(h.id_of(ext::UT_METADATA), Some(ext::OUR_UT_METADATA_ID));
        assert_eq!(h.id_of(ext::UT_PEX), Some(ext::OUR_UT_PEX_ID));
        assert_eq!(h.metadata_size, Some(info.len() as u32));
        assert_eq!(h.p, Some(6881));
        assert_eq!(h.reqq, Some(MAX_INCOMING_REQUESTS as u32));
        assert!(h.v.unwrap().starts_with("atorrent/"));
    }

    #[test]
    fn pex_peer_learns_third_peer_within_a_minute() {
        let data = test_data(50_000);
        let (a_addr, c_addr) = (addr(1), addr(3));
        let mut a = torrent(&data, false, true, 6881, 1);
        let mut b = torrent(&data, false, false, 6881, 2);
        let mut c = torrent(&data, false, false, 6881, 3);
        // B dials A and C; A and C see B from ephemeral ports.
        let b_from = SocketAddr::from(([127, 0, 0, 2], 50001));
        let (mut ba, mut ab) = connect(&mut b, &mut a, a_addr, b_from, 40 * 1024);
        let (mut bc, mut cb) = connect(&mut b, &mut c, c_addr, b_from, 40 * 1024);
        let mut now = Instant::ZERO;
        exchange(&mut b, &mut ba, &mut a, &mut ab, now);
        exchange(&mut b, &mut bc, &mut c, &mut cb, now);
        assert!(
            ba.pex.is_some() && ab.pex.is_some(),
            "both sides advertised ut_pex"
        );
        assert_eq!(ab.listen_addr(), Some(addr(2)), "p port from B's handshake");
        assert!(!a.candidates.contains(&c_addr));
        let mut learned = None;
        let mut bufs = Buffers::new(1);
        for s in 1..=60 {
            now = Instant::from_secs(s);
            let one = Duration::from_secs(1);
            b.tick(now, one, [&mut ba, &mut bc].into_iter(), &mut bufs);
            a.tick(now, one, std::iter::once(&mut ab), &mut bufs);
            c.tick(now, one, std::iter::once(&mut cb), &mut bufs);
            exchange(&mut b, &mut ba, &mut a, &mut ab, now);
            exchange(&mut b, &mut bc, &mut c, &mut cb, now);
            if a.candidates.contains(&c_addr) {
                learned = Some(s);
                break;
            }
        }
        assert!(learned.is_some(), "A never heard of C");
        assert!(c.candidates.contains(&a_addr), "C heard of A too");
        assert!(
            !a.candidates.contains(&addr(2)),
            "B is not told about itself"
        );
        assert_eq!(a.next_candidate(now), Some(c_addr));
    }

    #[test]
    fn private_torrent_no_pex_advertised_sent_or_accepted() {
        let data = test_data(50_000);
        let mut a = torrent(&data, true, true, 6881, 1);
        let mut b = torrent(&data, true, false, 6881, 2);
        let mut c = torrent(&data, true, false, 6881, 3);
        let from = SocketAddr::from(([127, 0, 0, 2], 50001));
        let (mut ba, mut ab) = connect(&mut b, &mut a, addr(1), from, 40 * 1024);
        let (mut bc, mut cb) = connect(&mut b, &mut c, addr(3), from, 40 * 1024);
        let h = handshake_of(&ba);
        assert_eq!(h.id_of(ext::UT_PEX), None, "BEP 27: no ut_pex");
        assert_eq!(h.id_of(ext::UT_METADATA), Some(ext::OUR_UT_METADATA_ID));
        let now = Instant::ZERO;
        exchange(&mut b, &mut ba, &mut a, &mut ab, now);
        exchange(&mut b, &mut bc, &mut c, &mut cb, now);
        // A peer that pretends to support ut_pex still gets no state and no messages.
        let fake = ExtHandshake {
            m: vec![(ext::UT_PEX.into(), 7)],
            ..ExtHandshake::default()
        };
        let mut bufs = Buffers::new(1);
        let push_rx = |p: &mut PeerConn, id: u8, payload: &[u8]| {
            let m = Message::Extended { id, payload };
            let n = m.encode(&mut p.rx[p.rx_len..]).unwrap();
            p.rx_len += n;
        };
        push_rx(&mut ba, 0, &fake.encode());
        let pex = PexMessage {
            added: vec![(addr(77), 0)],
            dropped: vec![],
        };
        push_rx(&mut ba, ext::OUR_UT_PEX_ID, &pex.encode());
        b.handle_rx(&mut ba, now, &mut bufs);
        assert!(ba.close.is_none());
        assert!(ba.pex.is_none());
        assert!(!b.candidates.contains(&addr(77)), "incoming ut_pex ignored");
        for s in 1..=120 {
            b.tick(
                Instant::from_secs(s),
                Duration::from_secs(1),
                [&mut ba, &mut bc].into_iter(),
                &mut bufs,
            );
        }
        for p in [&ba, &bc] {
            assert!(
                extended_sent(p).is_empty(),
                "no PEX sent on a private torrent"
            );
        }
        // The same message on a public torrent is taken.
        let mut d = torrent(&data, false, false, 6881, 4);
        let mut p = PeerConn::with_buffers(8192);
        p.reset(addr(5), true, now);
        d.on_established(&mut p, now);
        push_rx(&mut p, ext::OUR_UT_PEX_ID, &pex.encode());
        d.handle_rx(&mut p, now, &mut bufs);
        assert!(d.candidates.contains(&addr(77)));
    }

    #[test]
    fn metadata_requests_served_rejected_and_bounded() {
        let data = test_data(50_000);
        let (meta, info) = meta_with_dict(&data, 40_000);
        assert!(info.len() < 3 * ext::METADATA_PIECE_LEN);
        let mut a = torrent(&data, false, true, 6881, 1);
        let mut p = PeerConn::with_buffers(128 * 1024);
        p.reset(addr(2), false, Instant::ZERO);
        p.extended = true;
        a.on_established(&mut p, Instant::ZERO);
        p.tx_consumed(p.tx_pending().len());
        let hs = ExtHandshake {
            m: vec![(ext::UT_METADATA.into(), 9)],
            ..ExtHandshake::default()
        };
        let mut rx = Vec::new();
        let mut put = |id: u8, payload: &[u8]| {
            let mut b = vec![0u8; payload.len() + 6];
            let n = Message::Extended { id, payload }.encode(&mut b).unwrap();
            rx.extend_from_slice(&b[..n]);
        };
        put(0, &hs.encode());
        for piece in [0, 1, 2, 3] {
            put(
                ext::OUR_UT_METADATA_ID,
                &ext::encode_metadata_request(piece),
            );
        }
        let feed = |a: &mut Torrent, p: &mut PeerConn| {
            p.rx[..rx.len()].copy_from_slice(&rx);
            p.rx_len = rx.len();
            a.handle_rx(p, Instant::ZERO, &mut Buffers::new(1));
            let got: Vec<_> = extended_sent(p)
                .into_iter()
                .map(|(id, m)| {
                    assert_eq!(id, 9, "answers use the peer's id");
                    match ext::parse_metadata_msg(&m).unwrap() {
                        MetadataMsg::Data { piece, data, .. } => (piece, Some(data.to_vec())),
                        MetadataMsg::Reject { piece } => (piece, None),
                        other => panic!("{other:?}"),
                    }
                })
                .collect();
            p.tx_consumed(p.tx_pending().len());
            got
        };
        // No info dictionary: everything rejected.
        let got = feed(&mut a, &mut p);
        assert!(got.iter().all(|(_, d)| d.is_none()) && got.len() == 4);
        // With it: pieces 0 and 1 answered, then the send-buffer bound rejects piece 2; piece 3
        // does not exist.
        a.meta = meta;
        let got = feed(&mut a, &mut p);
        assert!(got[0] == (0, Some(info[..16384].to_vec())));
        assert!(got[1] == (1, Some(info[16384..32768].to_vec())));
        assert!(got[2] == (2, None), "flood protection");
        assert_eq!(got[3], (3, None), "out of range");
        assert!(p.close.is_none());
    }

    /// A leecher of `pieces` 1 KiB pieces (fake hashes, nothing stored) with one connection
    /// whose receive buffer is `buf` bytes.
    fn many_piece_leech(pieces: u32, buf: usize) -> (Torrent, PeerConn) {
        let len = pieces as usize * 1024;
        let meta = Metainfo {
            info: InfoDict::bare_hashes(vec![0; 20 * pieces as usize]),
            ..meta_for(&[], 1024)
        };
        let meta = Metainfo {
            total_length: len as u64,
            files: vec![FileEntry {
                path: vec!["sim".into()],
                length: len as u64,
                offset: 0,
                pad: false,
            }],
            ..meta
        };
        let mut t = Torrent::new(
            meta,
            Bitfield::new(pieces),
            Box::new(MemStore::new(len)),
            1,
            [2; 20],
            settings(),
            Rng::new(2),
        )
        .unwrap();
        let mut p = PeerConn::with_buffers(buf);
        p.reset(addr(1), true, Instant::ZERO);
        t.on_established(&mut p, Instant::ZERO);
        (t, p)
    }

    fn feed(t: &mut Torrent, p: &mut PeerConn, bytes: &[u8]) -> usize {
        let n = bytes.len().min(p.rx.len() - p.rx_len);
        p.rx[p.rx_len..p.rx_len + n].copy_from_slice(&bytes[..n]);
        p.rx_len += n;
        t.handle_rx(p, Instant::ZERO, &mut Buffers::new(1));
        n
    }

    #[test]
    fn bitfield_longer_than_receive_buffer_grows_it() {
        // 10,000 pieces: a 1,255-byte bitfield message against a 1 KiB buffer.
        let (mut t, mut p) = many_piece_leech(10_000, 1024);
        let mut bits = Bitfield::new(10_000);
        for i in (0..10_000).step_by(3) {
            bits.set(i);
        }
        let mut msg = vec![0; 2048];
        let n = Message::Bitfield(bits.as_bytes()).encode(&mut msg).unwrap();
        let mut sent = 0;
        for _ in 0..4 {
            if sent == n {
                break;
            }
            sent += feed(&mut t, &mut p, &msg[sent..n]);
        }
        assert_eq!(sent, n, "the buffer grew to take the whole message");
        assert!(p.close.is_none(), "{:?}", p.close);
        assert_eq!(p.have.count(), bits.count());
    }

    #[test]
    fn other_message_longer_than_receive_buffer_closes() {
        let (mut t, mut p) = many_piece_leech(10_000, 1024);
        let payload = vec![b'x'; 1100];
        let mut msg = vec![0; 2048];
        let n = Message::Extended {
            id: 1,
            payload: &payload,
        }
        .encode(&mut msg)
        .unwrap();
        feed(&mut t, &mut p, &msg[..n]);
        assert!(
            matches!(&p.close, Some(CloseReason::Protocol(m)) if m.contains("larger than")),
            "{:?}",
            p.close
        );
        assert_eq!(p.rx.len(), 1024, "not grown");
    }

    #[test]
    fn queue_depth_shares_inflight_budget_among_peers() {
        let (mut t, mut p) = many_piece_leech(100, 1024);
        // A fast peer alone may keep MAX_OUTSTANDING requests in flight.
        p.down.add(100 * 1024 * 1024);
        p.down.tick(Duration::from_secs(1));
        p.down.add(100 * 1024 * 1024);
        p.down.tick(Duration::from_secs(1));
        p.peer_reqq = MAX_OUTSTANDING;
        assert_eq!(t.queue_depth(&p), MAX_OUTSTANDING);
        // With 49 more peers each gets its share, never under MIN_INFLIGHT_SHARE.
        let mut others: Vec<PeerConn> = (0..49)
            .map(|i| {
                let mut q = PeerConn::with_buffers(1024);
                q.reset(addr(10 + i), true, Instant::ZERO);
                t.on_established(&mut q, Instant::ZERO);
                q
            })
            .collect();
        assert_eq!(t.queue_depth(&p), MAX_INFLIGHT_PER_TORRENT / 50);
        assert!(t.queue_depth(&p) >= MIN_INFLIGHT_SHARE);
        // Closing them gives the budget back.
        for q in &mut others {
            t.on_closed(q, Instant::ZERO);
        }
        assert_eq!(t.queue_depth(&p), MAX_OUTSTANDING);
    }

    #[test]
    fn leech_on_disk_with_aio_stores_every_byte() {
        use crate::storage::{DirectIo, Storage};
        // 3 MiB and a bit in 1 MiB pieces: four windows a piece, a short last piece, and
        // only two chunks, so writes in flight hold chunks the next window wants.
        let data = test_data(3 * 1024 * 1024 + 12345);
        let meta = meta_for(&data, 1 << 20);
        let dir = std::env::temp_dir().join(format!("atorrent-aio-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Storage::open(&dir, &meta, DirectIo::Auto, 8).unwrap();
        let mut seed = peer_torrent(
            &meta,
            true,
            Box::new(MemStore::from_bytes(data.clone())),
            2,
            1,
        );
        let mut leech = peer_torrent(&meta, false, Box::new(store), 2, 2);
        let mut lbufs = Buffers::with_aio(2, true);
        download_with(
            &mut seed,
            &mut leech,
            &mut Buffers::new(2),
            &mut lbufs,
            20_000,
        );
        assert!(leech.is_complete());
        assert_eq!(
            lbufs.pool.inflight(),
            0,
            "completion waited for every write"
        );
        assert_eq!(lbufs.pool.available(), 2, "every chunk came back");
        assert!(lbufs.pool.take_error(leech.io_owner()).is_none());
        if lbufs.pool.mem.has_aio() && leech.store_mut().has_data(0, 1) {
            // Direct I/O and AIO both work here: all but each file's first write was queued.
            assert!(lbufs.pool.async_writes() > 0);
        }
        let got = std::fs::read(dir.join("sim")).unwrap();
        assert!(got == data, "bytes on disk differ");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
