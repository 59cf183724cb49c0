//! Layer 2: piece and block selection for one torrent — which 16 KiB blocks to ask which peer
//! for next.
//!
//! A pure state machine: it never touches a socket, a file or the clock, and randomness comes in
//! as `&mut Rng`. It does not know about peers as objects: a peer's pieces arrive through the
//! small [`PieceSet`] trait (the integrator implements it for `Bitfield`), and the caller keeps
//! each peer's own list of outstanding requests (passed back in as `already`).
//!
//! Policy (BEP 3, "piece downloading strategy" and "end game"):
//! 1. finish what is started: free blocks of in-progress ("partial") pieces first, most
//!    advanced partial first;
//! 2. while fewer than [`RANDOM_FIRST_PIECES`] pieces are complete, start a random piece (we need
//!    something to trade quickly); afterwards start the rarest piece, random among equally rare;
//!    a BEP 6 *suggest* hint jumps that queue;
//! 3. end game: once every block we lack is requested or received, re-request outstanding blocks
//!    from other peers (at most [`ENDGAME_MAX_REQUESTS`] copies, never twice to the same peer).
//!
//! Memory: 8 bytes of state per piece plus 4 bytes in the rarity order — no heap allocation per
//! piece. Only partial pieces (at most `max_partials`, sized by the integrator from its block
//! buffer pool) carry one byte per block.
//!
//! Complexity: pieces are kept in one array ordered by availability bucket (counting-sort
//! style), so a `have`/bitfield availability change is O(1) (one swap), marking a piece
//! have/partial is O(distinct availability values above it), and starting a new piece is
//! O(buckets + pieces scanned until one the peer has) — usually the first few of the rarest
//! bucket, O(pieces) only if this peer has almost nothing we want. Continuing partials is
//! O(max_partials) per partial consumed. Nothing sorts per call, so a 65536-block download
//! costs a few operations per block.

use std::fmt;

use crate::rng::Rng;

/// Request size (BEP 3: "All current implementations use 2^14 (16 kiB)").
pub const BLOCK_LEN: u32 = 16 * 1024;

/// Largest supported partial table: slot numbers are stored per piece as a `u16` with two
/// sentinel values (no slot, have).
pub const MAX_PARTIALS: usize = 0xFFFD;

/// Largest supported piece count. Bounds the two per-piece arrays (12 bytes a piece, 192 MiB at
/// the cap) so a hostile torrent cannot make us allocate without limit; real torrents have far
/// fewer (a 1 TiB torrent with 256 KiB pieces has 4 Mi).
pub const MAX_PIECES: u32 = 1 << 24;

/// While fewer pieces than this are complete, new pieces are chosen at random rather than
/// rarest-first: BEP 3 notes random order spreads pieces, and a fresh peer needs *any* complete
/// piece soon so it has something to upload.
pub const RANDOM_FIRST_PIECES: u32 = 4;

/// End game: at most this many peers are asked for the same block at once (BEP 3 end game asks
/// "everyone"; two copies already beat one slow line without wasting much bandwidth).
pub const ENDGAME_MAX_REQUESTS: u8 = 2;

/// BEP 6 suggestions remembered at once; older hints are dropped first.
const MAX_SUGGESTED: usize = 8;

// Per-piece `slot` sentinels.
const SLOT_NONE: u16 = 0xFFFF;
const SLOT_HAVE: u16 = 0xFFFE;

// Per-block state bytes inside a partial: 0 free, 1..=254 requested n times, 255 received.
const B_FREE: u8 = 0;
const B_RECEIVED: u8 = 0xFF;

/// A peer's set of pieces, as the picker needs to see it.
pub trait PieceSet {
    /// True if the peer has `piece` (false for out-of-range indices).
    fn has(&self, piece: u32) -> bool;
}

/// Convenience sets: `All` for seeds (BEP 6 Have All), `None` before any bitfield arrives.
#[derive(Clone, Copy)]
pub enum PeerPieces<'a> {
    All,
    None,
    Set(&'a dyn PieceSet),
}

impl PieceSet for PeerPieces<'_> {
    fn has(&self, piece: u32) -> bool {
        match self {
            PeerPieces::All => true,
            PeerPieces::None => false,
            PeerPieces::Set(s) => s.has(piece),
        }
    }
}

impl PieceSet for [bool] {
    fn has(&self, piece: u32) -> bool {
        self.get(piece as usize).copied().unwrap_or(false)
    }
}

impl PieceSet for Vec<bool> {
    fn has(&self, piece: u32) -> bool {
        self.as_slice().has(piece)
    }
}

/// One 16 KiB request: block `block` (byte offset `block * BLOCK_LEN`) of piece `piece`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BlockRef {
    pub piece: u32,
    pub block: u32,
}

/// What `block_received` made of an arriving block.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Received {
    /// First copy of a block we had requested: store it.
    New,
    /// We already have this block (end-game duplicate or the piece is complete): drop it.
    Duplicate,
    /// Not something we asked for (no outstanding request, unknown piece or block): drop it.
    Unexpected,
}

/// State of one block of a partial piece.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BlockState {
    Free,
    /// Outstanding with this many peers.
    Requested(u8),
    Received,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PickerError {
    ZeroPieceLength,
    EmptyTorrent,
    TooManyPieces(u32),
    /// `num_pieces` does not match `ceil(total_length / piece_length)`.
    PieceCountMismatch {
        expected: u64,
        got: u32,
    },
    BadMaxPartials(usize),
}

impl fmt::Display for PickerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PickerError::ZeroPieceLength => write!(f, "piece length is zero"),
            PickerError::EmptyTorrent => write!(f, "torrent has no data"),
            PickerError::TooManyPieces(n) => {
                write!(
                    f,
                    "torrent has {n} pieces, more than the {MAX_PIECES} supported"
                )
            }
            PickerError::PieceCountMismatch { expected, got } => write!(
                f,
                "piece count {got} does not match total length (expected {expected})"
            ),
            PickerError::BadMaxPartials(n) => {
                write!(f, "partial piece limit {n} is outside 1..={MAX_PARTIALS}")
            }
        }
    }
}

impl std::error::Error for PickerError {}

/// 8 bytes per piece.
#[derive(Clone, Copy)]
struct PieceState {
    /// Index of this piece in `Picker::order`.
    pos: u32,
    /// Number of non-seed peers that have it (saturating; seeds are counted in `Picker::seeds`).
    avail: u16,
    /// `SLOT_NONE`, `SLOT_HAVE` or the index of its partial slot.
    slot: u16,
}

struct Slot {
    /// `u32::MAX` when the slot is unused.
    piece: u32,
    free: u32,
    requested: u32,
    received: u32,
    /// One state byte per block; the allocation is reused by later pieces.
    states: Vec<u8>,
}

const NO_PIECE: u32 = u32::MAX;

/// View of one partial piece for debugging and for the integrator's bookkeeping.
pub struct PartialInfo<'a> {
    pub piece: u32,
    pub free: u32,
    pub requested: u32,
    pub received: u32,
    states: &'a [u8],
}

impl PartialInfo<'_> {
    pub fn num_blocks(&self) -> u32 {
        self.states.len() as u32
    }

    pub fn block(&self, b: u32) -> Option<BlockState> {
        self.states.get(b as usize).map(|&s| decode_state(s))
    }
}

fn decode_state(s: u8) -> BlockState {
    match s {
        B_FREE => BlockState::Free,
        B_RECEIVED => BlockState::Received,
        n => BlockState::Requested(n),
    }
}

pub struct Picker {
    num_pieces: u32,
    piece_length: u32,
    total_length: u64,
    max_partials: usize,
    pieces: Vec<PieceState>,
    /// All pieces, grouped into availability buckets. Bucket `k` (candidates — pieces we lack
    /// that are not partial — with `avail == k`) spans `ends[k-1]..ends[k]` (`0..ends[0]` for
    /// k = 0); everything after `ends.last()` is excluded (have or partial). Never empty.
    order: Vec<u32>,
    ends: Vec<u32>,
    seeds: u32,
    have_count: u32,
    have_bytes: u64,
    slots: Vec<Slot>,
    active_partials: usize,
    /// Free blocks summed over all partials.
    total_free: u64,
    suggested: Vec<u32>,
}

impl Picker {
    pub fn new(
        num_pieces: u32,
        piece_length: u32,
        total_length: u64,
        max_partials: usize,
    ) -> Result<Picker, PickerError> {
        if piece_length == 0 {
            return Err(PickerError::ZeroPieceLength);
        }
        if total_length == 0 {
            return Err(PickerError::EmptyTorrent);
        }
        if num_pieces > MAX_PIECES {
            return Err(PickerError::TooManyPieces(num_pieces));
        }
        let expected = total_length.div_ceil(u64::from(piece_length));
        if expected != u64::from(num_pieces) {
            return Err(PickerError::PieceCountMismatch {
                expected,
                got: num_pieces,
            });
        }
        if max_partials == 0 || max_partials > MAX_PARTIALS {
            return Err(PickerError::BadMaxPartials(max_partials));
        }
        let pieces = (0..num_pieces)
            .map(|i| PieceState {
                pos: i,
                avail: 0,
                slot: SLOT_NONE,
            })
            .collect();
        Ok(Picker {
            num_pieces,
            piece_length,
            total_length,
            max_partials,
            pieces,
            order: (0..num_pieces).collect(),
            ends: vec![num_pieces],
            seeds: 0,
            have_count: 0,
            have_bytes: 0,
            slots: Vec::new(),
            active_partials: 0,
            total_free: 0,
            suggested: Vec::new(),
        })
    }

    // ---- geometry ------------------------------------------------------------------------

    pub fn num_pieces(&self) -> u32 {
        self.num_pieces
    }

    /// Bytes in `piece` (the last one may be short); 0 if out of range.
    pub fn piece_size(&self, piece: u32) -> u32 {
        if piece >= self.num_pieces {
            return 0;
        }
        let start = u64::from(piece) * u64::from(self.piece_length);
        let rest = self.total_length.saturating_sub(start);
        rest.min(u64::from(self.piece_length)) as u32
    }

    pub fn blocks_in_piece(&self, piece: u32) -> u32 {
        self.piece_size(piece).div_ceil(BLOCK_LEN)
    }

    /// Length of block `block` of `piece` (the very last block may be short); 0 if out of range.
    pub fn block_len(&self, piece: u32, block: u32) -> u32 {
        let size = self.piece_size(piece);
        let off = u64::from(block) * u64::from(BLOCK_LEN);
        (u64::from(size).saturating_sub(off)).min(u64::from(BLOCK_LEN)) as u32
    }

    // ---- availability --------------------------------------------------------------------

    /// A peer's bitfield arrived (or it connected with one): count its pieces. Seeds should use
    /// `add_seed` instead (O(1)).
    pub fn add_peer(&mut self, peer: &dyn PieceSet) {
        for p in 0..self.num_pieces {
            if peer.has(p) {
                self.inc_avail(p);
            }
        }
    }

    /// Undo `add_peer` (with the peer's current set, including pieces announced by `have`).
    pub fn remove_peer(&mut self, peer: &dyn PieceSet) {
        for p in 0..self.num_pieces {
            if peer.has(p) {
                self.dec_avail(p);
            }
        }
    }

    /// A `have` message: one more peer has `piece`. Out-of-range indices are ignored.
    pub fn peer_has(&mut self, piece: u32) {
        if piece < self.num_pieces {
            self.inc_avail(piece);
        }
    }

    pub fn add_seed(&mut self) {
        self.seeds = self.seeds.saturating_add(1);
    }

    pub fn remove_seed(&mut self) {
        self.seeds = self.seeds.saturating_sub(1);
    }

    /// Peers known to have `piece`, seeds included.
    pub fn availability(&self, piece: u32) -> u32 {
        match self.pieces.get(piece as usize) {
            Some(s) => u32::from(s.avail).saturating_add(self.seeds),
            None => 0,
        }
    }

    // ---- have ----------------------------------------------------------------------------

    /// Mark `piece` as verified and stored (resume data or a passed hash check). Frees its
    /// partial slot if it had one.
    pub fn set_have(&mut self, piece: u32) {
        let Some(st) = self.pieces.get(piece as usize).copied() else {
            return;
        };
        match st.slot {
            SLOT_HAVE => return,
            SLOT_NONE => self.exclude(piece),
            slot => self.release_slot(slot as usize),
        }
        self.pieces[piece as usize].slot = SLOT_HAVE;
        self.have_count += 1;
        self.have_bytes += u64::from(self.piece_size(piece));
    }

    pub fn have(&self, piece: u32) -> bool {
        self.pieces
            .get(piece as usize)
            .is_some_and(|s| s.slot == SLOT_HAVE)
    }

    pub fn have_count(&self) -> u32 {
        self.have_count
    }

    pub fn is_complete(&self) -> bool {
        self.have_count == self.num_pieces
    }

    /// Bytes still missing (the tracker's `left`).
    pub fn left_bytes(&self) -> u64 {
        self.total_length.saturating_sub(self.have_bytes)
    }

    /// True if the peer has a piece we lack (decides our `interested` state). O(pieces) for a
    /// non-seed; for `have` messages the caller can just test `!have(piece)`.
    pub fn is_interesting(&self, peer: &dyn PieceSet, is_seed: bool) -> bool {
        if self.is_complete() {
            return false;
        }
        if is_seed {
            return true;
        }
        (0..self.num_pieces).any(|p| self.pieces[p as usize].slot != SLOT_HAVE && peer.has(p))
    }

    // ---- picking -------------------------------------------------------------------------

    /// Append up to `want` blocks to request from `peer` to `out` and mark them requested.
    /// `already` is this peer's own outstanding requests, consulted only in end game (which
    /// never duplicates onto the same peer); free blocks are by definition outstanding nowhere.
    /// `is_seed` means the peer has everything, whatever `peer` says.
    pub fn pick(
        &mut self,
        peer: &dyn PieceSet,
        is_seed: bool,
        want: usize,
        already: &[BlockRef],
        rng: &mut Rng,
        out: &mut Vec<BlockRef>,
    ) {
        let has = |p: u32| is_seed || peer.has(p);
        let first_out = out.len();
        let mut need = want;

        // (a) Finish started pieces, most advanced first: completing pieces is what lets us
        // verify, announce and upload them.
        while need > 0 {
            let best = self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.piece != NO_PIECE && s.free > 0 && has(s.piece))
                .max_by_key(|(i, s)| (s.received + s.requested, std::cmp::Reverse(*i)))
                .map(|(i, _)| i);
            let Some(slot) = best else { break };
            need -= self.take_free(slot, need, out);
        }

        // (b) Start new pieces while the partial table has room.
        while need > 0 && self.active_partials < self.max_partials {
            let Some(piece) = self.choose_new(&has, rng) else {
                break;
            };
            let slot = self.open_slot(piece);
            need -= self.take_free(slot, need, out);
        }

        // (c) End game (BEP 3): nothing free is left anywhere, so ask this peer for blocks that
        // are outstanding elsewhere, unless it already has them outstanding itself.
        if need > 0 && self.in_endgame() {
            for slot in 0..self.slots.len() {
                let piece = self.slots[slot].piece;
                if piece == NO_PIECE || !has(piece) {
                    continue;
                }
                for b in 0..self.slots[slot].states.len() {
                    if need == 0 {
                        return;
                    }
                    let s = self.slots[slot].states[b];
                    if s == B_FREE || s == B_RECEIVED || s >= ENDGAME_MAX_REQUESTS {
                        continue;
                    }
                    let r = BlockRef {
                        piece,
                        block: b as u32,
                    };
                    if already.contains(&r) || out[first_out..].contains(&r) {
                        continue;
                    }
                    self.slots[slot].states[b] = s + 1;
                    out.push(r);
                    need -= 1;
                }
            }
        }
    }

    /// Every block we lack is requested or received, so `pick` may hand out duplicates.
    pub fn in_endgame(&self) -> bool {
        !self.is_complete() && self.candidate_count() == 0 && self.total_free == 0
    }

    /// A block arrived. `New` marks it received; the caller then cancels any other outstanding
    /// copies (and calls `request_dropped` for them, which is then a no-op).
    pub fn block_received(&mut self, b: BlockRef) -> Received {
        let Some(st) = self.pieces.get(b.piece as usize).copied() else {
            return Received::Unexpected;
        };
        let slot = match st.slot {
            SLOT_HAVE => return Received::Duplicate,
            SLOT_NONE => return Received::Unexpected,
            s => &mut self.slots[s as usize],
        };
        let Some(state) = slot.states.get_mut(b.block as usize) else {
            return Received::Unexpected;
        };
        match *state {
            B_RECEIVED => Received::Duplicate,
            // Not requested (dropped after a choke, or reset by a failed hash): we did not ask.
            B_FREE => Received::Unexpected,
            _ => {
                *state = B_RECEIVED;
                slot.requested -= 1;
                slot.received += 1;
                Received::New
            }
        }
    }

    /// Whether block `b` is requested from some peer and not yet received: what
    /// `block_received` would call `New`, asked without changing anything.
    pub fn is_requested(&self, b: BlockRef) -> bool {
        self.slot_of(b.piece)
            .and_then(|s| s.states.get(b.block as usize))
            .is_some_and(|&st| st != B_FREE && st != B_RECEIVED)
    }

    /// An outstanding request will not be answered (choke, reject, timeout, disconnect,
    /// cancel). The block becomes free again once no peer has it outstanding. A partial left
    /// with nothing requested and nothing received gives its slot back, so an abandoned start
    /// cannot pin the partial table.
    pub fn request_dropped(&mut self, b: BlockRef) {
        let Some(st) = self.pieces.get(b.piece as usize).copied() else {
            return;
        };
        if st.slot == SLOT_HAVE || st.slot == SLOT_NONE {
            return;
        }
        let slot_idx = st.slot as usize;
        let slot = &mut self.slots[slot_idx];
        let Some(state) = slot.states.get_mut(b.block as usize) else {
            return;
        };
        if *state == B_FREE || *state == B_RECEIVED {
            return;
        }
        *state -= 1;
        if *state == B_FREE {
            slot.requested -= 1;
            slot.free += 1;
            self.total_free += 1;
            if slot.requested == 0 && slot.received == 0 {
                self.release_slot(slot_idx);
                self.include(b.piece);
            }
        }
    }

    /// All blocks of `piece` are in; time to hash it.
    pub fn piece_blocks_all_received(&self, piece: u32) -> bool {
        match self.slot_of(piece) {
            Some(s) => s.received as usize == s.states.len(),
            None => false,
        }
    }

    /// The hash check passed.
    pub fn piece_passed(&mut self, piece: u32) {
        self.set_have(piece);
    }

    /// The hash check failed: every block goes back to free (late copies of old requests will
    /// be `Unexpected`). The piece keeps its partial slot so it is fetched again first. The
    /// caller forgets any requests for this piece still in its per-peer lists (no
    /// `request_dropped` needed), so `pick` cannot hand one of them to the same peer again.
    pub fn piece_failed(&mut self, piece: u32) {
        let Some(st) = self.pieces.get(piece as usize) else {
            return;
        };
        if st.slot == SLOT_HAVE || st.slot == SLOT_NONE {
            return;
        }
        let slot = &mut self.slots[st.slot as usize];
        let n = slot.states.len() as u32;
        self.total_free += u64::from(n - slot.free);
        slot.states.fill(B_FREE);
        slot.free = n;
        slot.requested = 0;
        slot.received = 0;
    }

    /// Drop a partial piece entirely (e.g. its buffers are needed elsewhere, or no peer has it
    /// any more): its blocks are forgotten and the piece is a candidate again.
    pub fn abandon(&mut self, piece: u32) {
        let Some(st) = self.pieces.get(piece as usize).copied() else {
            return;
        };
        if st.slot == SLOT_HAVE || st.slot == SLOT_NONE {
            return;
        }
        self.release_slot(st.slot as usize);
        self.include(piece);
    }

    /// BEP 6 Suggest Piece: prefer `piece` the next time a new piece is started for a peer that
    /// has it. Only the last few hints are kept.
    pub fn suggest(&mut self, piece: u32) {
        let is_candidate = self
            .pieces
            .get(piece as usize)
            .is_some_and(|s| s.slot == SLOT_NONE);
        if !is_candidate || self.suggested.contains(&piece) {
            return;
        }
        if self.suggested.len() >= MAX_SUGGESTED {
            self.suggested.remove(0);
        }
        self.suggested.push(piece);
    }

    /// Partial pieces currently open (unspecified order).
    pub fn partials(&self) -> impl Iterator<Item = PartialInfo<'_>> + '_ {
        self.slots
            .iter()
            .filter(|s| s.piece != NO_PIECE)
            .map(|s| PartialInfo {
                piece: s.piece,
                free: s.free,
                requested: s.requested,
                received: s.received,
                states: &s.states,
            })
    }

    pub fn partial_count(&self) -> usize {
        self.active_partials
    }

    // ---- internals -----------------------------------------------------------------------

    fn slot_of(&self, piece: u32) -> Option<&Slot> {
        let st = self.pieces.get(piece as usize)?;
        if st.slot == SLOT_HAVE || st.slot == SLOT_NONE {
            return None;
        }
        self.slots.get(st.slot as usize)
    }

    /// Pieces we lack that are not partial.
    fn candidate_count(&self) -> u32 {
        self.ends.last().copied().unwrap_or(0)
    }

    fn choose_new(&mut self, has: &dyn Fn(u32) -> bool, rng: &mut Rng) -> Option<u32> {
        // BEP 6 hints first; stale ones (now have/partial) are dropped on the way.
        let mut i = 0;
        while i < self.suggested.len() {
            let p = self.suggested[i];
            if self.pieces[p as usize].slot != SLOT_NONE {
                self.suggested.remove(i);
            } else if has(p) {
                self.suggested.remove(i);
                return Some(p);
            } else {
                i += 1;
            }
        }
        if self.have_count < RANDOM_FIRST_PIECES {
            return self.scan_range(0, self.candidate_count(), has, rng);
        }
        // Rarest first: walk buckets upwards, random start inside each for the tie-break.
        let mut start = 0;
        for k in 0..self.ends.len() {
            let end = self.ends[k];
            if let Some(p) = self.scan_range(start, end, has, rng) {
                return Some(p);
            }
            start = end;
        }
        None
    }

    /// First piece the peer has in `order[start..end]`, starting at a random offset.
    fn scan_range(
        &self,
        start: u32,
        end: u32,
        has: &dyn Fn(u32) -> bool,
        rng: &mut Rng,
    ) -> Option<u32> {
        let len = end.checked_sub(start)?;
        if len == 0 {
            return None;
        }
        let off = rng.below(len as usize) as u32;
        (0..len)
            .map(|i| self.order[(start + (off + i) % len) as usize])
            .find(|&p| has(p))
    }

    fn open_slot(&mut self, piece: u32) -> usize {
        self.exclude(piece);
        let n = self.blocks_in_piece(piece);
        let idx = match self.slots.iter().position(|s| s.piece == NO_PIECE) {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    piece: NO_PIECE,
                    free: 0,
                    requested: 0,
                    received: 0,
                    states: Vec::new(),
                });
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[idx];
        slot.piece = piece;
        slot.free = n;
        slot.requested = 0;
        slot.received = 0;
        slot.states.clear();
        slot.states.resize(n as usize, B_FREE);
        self.active_partials += 1;
        self.total_free += u64::from(n);
        self.pieces[piece as usize].slot = idx as u16;
        idx
    }

    /// Frees slot `idx`; the caller sets the piece's new `slot` value (have) or re-includes it.
    fn release_slot(&mut self, idx: usize) {
        let slot = &mut self.slots[idx];
        self.total_free -= u64::from(slot.free);
        self.pieces[slot.piece as usize].slot = SLOT_NONE;
        slot.piece = NO_PIECE;
        self.active_partials -= 1;
    }

    /// Request up to `max` free blocks of slot `idx`, in order. Returns how many.
    fn take_free(&mut self, idx: usize, max: usize, out: &mut Vec<BlockRef>) -> usize {
        let slot = &mut self.slots[idx];
        let mut taken = 0;
        for (b, s) in slot.states.iter_mut().enumerate() {
            if taken == max {
                break;
            }
            if *s == B_FREE {
                *s = 1;
                out.push(BlockRef {
                    piece: slot.piece,
                    block: b as u32,
                });
                taken += 1;
            }
        }
        slot.free -= taken as u32;
        slot.requested += taken as u32;
        self.total_free -= taken as u64;
        taken
    }

    fn swap_order(&mut self, i: u32, j: u32) {
        if i == j {
            return;
        }
        self.order.swap(i as usize, j as usize);
        let pi = self.order[i as usize];
        let pj = self.order[j as usize];
        self.pieces[pi as usize].pos = i;
        self.pieces[pj as usize].pos = j;
    }

    /// Moves candidate `p` from bucket `k` to bucket `k + 1` (or to the excluded tail when `k`
    /// is the top bucket): swap with the last entry of bucket `k`, shrink bucket `k`.
    fn bump_up(&mut self, p: u32, k: usize) {
        let last = self.ends[k] - 1;
        self.swap_order(self.pieces[p as usize].pos, last);
        self.ends[k] -= 1;
    }

    /// Moves `p` from bucket `k` (`k == ends.len()` is the excluded tail) down to bucket `k-1`:
    /// swap with the first entry of bucket `k`, grow bucket `k - 1`.
    fn bump_down(&mut self, p: u32, k: usize) {
        let first = self.ends[k - 1];
        self.swap_order(self.pieces[p as usize].pos, first);
        self.ends[k - 1] += 1;
    }

    fn ensure_bucket(&mut self, k: usize) {
        while self.ends.len() <= k {
            let top = self.candidate_count();
            self.ends.push(top);
        }
    }

    fn inc_avail(&mut self, p: u32) {
        let st = self.pieces[p as usize];
        let Some(next) = st.avail.checked_add(1) else {
            return; // saturated: ordering no longer matters at this level
        };
        if st.slot == SLOT_NONE {
            self.ensure_bucket(next as usize);
            self.bump_up(p, st.avail as usize);
        }
        self.pieces[p as usize].avail = next;
    }

    fn dec_avail(&mut self, p: u32) {
        let st = self.pieces[p as usize];
        if st.avail == 0 {
            return; // unbalanced remove: ignore rather than underflow
        }
        if st.slot == SLOT_NONE {
            self.bump_down(p, st.avail as usize);
        }
        self.pieces[p as usize].avail = st.avail - 1;
    }

    /// Candidate `p` leaves the rarity order (becomes partial or have).
    fn exclude(&mut self, p: u32) {
        let k = self.pieces[p as usize].avail as usize;
        for j in k..self.ends.len() {
            self.bump_up(p, j);
        }
    }

    /// `p` (excluded, slot already `SLOT_NONE`) re-enters the order in its availability bucket.
    fn include(&mut self, p: u32) {
        let k = self.pieces[p as usize].avail as usize;
        self.ensure_bucket(k);
        for j in (k + 1..=self.ends.len()).rev() {
            self.bump_down(p, j);
        }
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        let n = self.num_pieces as usize;
        assert_eq!(self.order.len(), n);
        let mut start = 0u32;
        for (k, &end) in self.ends.iter().enumerate() {
            assert!(start <= end, "bucket {k} inverted");
            for i in start..end {
                let p = self.order[i as usize];
                let st = self.pieces[p as usize];
                assert_eq!(st.pos, i);
                assert_eq!(
                    st.slot, SLOT_NONE,
                    "piece {p} in bucket {k} is not a candidate"
                );
                assert_eq!(st.avail as usize, k, "piece {p} in wrong bucket");
            }
            start = end;
        }
        for i in start..self.num_pieces {
            let p = self.order[i as usize];
            let st = self.pieces[p as usize];
            assert_eq!(st.pos, i);
            assert_ne!(st.slot, SLOT_NONE, "candidate {p} in excluded tail");
        }
        let mut active = 0;
        let mut free = 0u64;
        for (i, s) in self.slots.iter().enumerate() {
            if s.piece == NO_PIECE {
                continue;
            }
            active += 1;
            assert_eq!(self.pieces[s.piece as usize].slot as usize, i);
            let f = s.states.iter().filter(|&&b| b == B_FREE).count() as u32;
            let r = s.states.iter().filter(|&&b| b == B_RECEIVED).count() as u32;
            assert_eq!(f, s.free);
            assert_eq!(r, s.received);
            assert_eq!(s.states.len() as u32 - f - r, s.requested);
            free += u64::from(f);
        }
        assert_eq!(active, self.active_partials);
        assert!(active <= self.max_partials);
        assert_eq!(free, self.total_free);
        let haves = self.pieces.iter().filter(|s| s.slot == SLOT_HAVE).count();
        assert_eq!(haves as u32, self.have_count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test DSL. `avail` has one character per piece: a digit is that piece's availability from
    /// non-seed peers (applied with `peer_has`), `*` means we have the piece. Spaces are ignored,
    /// so "2223 *3*3" is 7 pieces. Each piece is two blocks long, the last one short.
    fn picker(avail: &str, max_partials: usize) -> Picker {
        let cells: Vec<char> = avail.chars().filter(|c| !c.is_whitespace()).collect();
        let n = cells.len() as u32;
        let plen = 2 * BLOCK_LEN;
        let total = u64::from(n) * u64::from(plen) - 100;
        let mut pk = Picker::new(n, plen, total, max_partials).unwrap();
        for (i, c) in cells.iter().enumerate() {
            match c {
                '*' => pk.set_have(i as u32),
                d => {
                    for _ in 0..d.to_digit(10).unwrap() {
                        pk.peer_has(i as u32);
                    }
                }
            }
        }
        pk.check_invariants();
        pk
    }

    /// Peer set DSL: `1` has the piece, anything else does not ("11.1").
    fn peer(s: &str) -> Vec<bool> {
        s.chars()
            .filter(|c| !c.is_whitespace())
            .map(|c| c == '1')
            .collect()
    }

    fn pick(
        pk: &mut Picker,
        p: &dyn PieceSet,
        want: usize,
        already: &[BlockRef],
        seed: u64,
    ) -> Vec<BlockRef> {
        let mut out = Vec::new();
        pk.pick(p, false, want, already, &mut Rng::new(seed), &mut out);
        pk.check_invariants();
        out
    }

    fn br(piece: u32, block: u32) -> BlockRef {
        BlockRef { piece, block }
    }

    #[test]
    fn geometry_short_last_piece_and_block() {
        let pk = Picker::new(4, 262_144, 1_000_000, 8).unwrap();
        assert_eq!(pk.piece_size(0), 262_144);
        assert_eq!(pk.piece_size(3), 1_000_000 - 3 * 262_144);
        assert_eq!(pk.piece_size(4), 0);
        assert_eq!(pk.blocks_in_piece(0), 16);
        assert_eq!(pk.blocks_in_piece(3), 14); // 213568 = 13 * 16384 + 576
        assert_eq!(pk.block_len(3, 12), BLOCK_LEN);
        assert_eq!(pk.block_len(3, 13), 576);
        assert_eq!(pk.block_len(3, 14), 0);
        assert_eq!(pk.block_len(9, 0), 0);
        let sum: u64 = (0..4)
            .flat_map(|p| (0..pk.blocks_in_piece(p)).map(move |b| (p, b)))
            .map(|(p, b)| u64::from(pk.block_len(p, b)))
            .sum();
        assert_eq!(sum, 1_000_000);
    }

    #[test]
    fn geometry_have_updates_left_bytes() {
        let mut pk = Picker::new(4, 262_144, 1_000_000, 8).unwrap();
        assert_eq!(pk.left_bytes(), 1_000_000);
        pk.set_have(3);
        assert_eq!(pk.left_bytes(), 3 * 262_144);
        pk.set_have(3);
        assert_eq!(pk.have_count(), 1);
        for p in 0..3 {
            pk.set_have(p);
        }
        assert!(pk.is_complete());
        assert_eq!(pk.left_bytes(), 0);
        pk.check_invariants();
    }

    #[test]
    fn new_rejects_inconsistent_geometry() {
        assert_eq!(
            Picker::new(4, 0, 10, 1).err(),
            Some(PickerError::ZeroPieceLength)
        );
        assert_eq!(
            Picker::new(0, 10, 0, 1).err(),
            Some(PickerError::EmptyTorrent)
        );
        assert!(matches!(
            Picker::new(3, 262_144, 1_000_000, 1),
            Err(PickerError::PieceCountMismatch {
                expected: 4,
                got: 3
            })
        ));
        assert!(matches!(
            Picker::new(4, 262_144, 1_000_000, 0),
            Err(PickerError::BadMaxPartials(0))
        ));
        assert!(Picker::new(MAX_PIECES + 1, 1, u64::from(MAX_PIECES) + 1, 1).is_err());
        assert_eq!(
            PickerError::ZeroPieceLength.to_string(),
            "piece length is zero"
        );
    }

    #[test]
    fn rarest_first_picks_least_available() {
        let mut pk = picker("**** 3132 4", 8);
        for seed in 1..20 {
            let mut pk2 = picker("**** 3132 4", 8);
            let got = pick(&mut pk2, &peer("11111111111"), 1, &[], seed);
            assert_eq!(got, vec![br(5, 0)], "seed {seed}");
        }
        // Peer without the rarest piece: next rarest it has.
        let got = pick(&mut pk, &peer("0000 1011 1"), 1, &[], 7);
        assert_eq!(got, vec![br(7, 0)]);
    }

    #[test]
    fn rarest_first_tie_break_varies_with_seed() {
        let mut seen = std::collections::BTreeSet::new();
        for seed in 1..60 {
            let mut pk = picker("**** 2121 2121 5", 8);
            let got = pick(&mut pk, &peer("1111111111111"), 1, &[], seed);
            assert!([5, 7, 9, 11].contains(&got[0].piece), "{got:?}");
            seen.insert(got[0].piece);
        }
        assert_eq!(seen.len(), 4, "tie-break is not random: {seen:?}");
    }

    #[test]
    fn random_first_before_four_pieces() {
        let mut seen = std::collections::BTreeSet::new();
        for seed in 1..60 {
            let mut pk = picker("**1 2345 6789", 8);
            let got = pick(&mut pk, &peer("11111111111"), 1, &[], seed);
            seen.insert(got[0].piece);
        }
        // Not just the rarest (piece 2): random order while we have < 4 pieces.
        assert!(seen.len() > 3, "{seen:?}");
        assert!(!seen.contains(&0) && !seen.contains(&1));
    }

    #[test]
    fn suggest_jumps_rarity_queue_when_peer_has_it() {
        let mut pk = picker("**** 1119", 8);
        pk.suggest(7);
        pk.suggest(99); // out of range: ignored
        pk.suggest(0); // have: ignored
        let got = pick(&mut pk, &peer("0000 1110"), 1, &[], 1);
        assert_ne!(got[0].piece, 7, "peer lacks the suggested piece");
        let got = pick(&mut pk, &peer("0000 0001"), 2, &[], 1);
        assert_eq!(got, vec![br(7, 0), br(7, 1)]);
    }

    #[test]
    fn partial_first_before_new_piece() {
        let mut pk = picker("**** 1111 1111", 8);
        let a = pick(&mut pk, &peer("111111111111"), 1, &[], 3);
        assert_eq!(a.len(), 1);
        let started = a[0].piece;
        // Another peer continues the started piece before any new one.
        let b = pick(&mut pk, &peer("111111111111"), 1, &[], 4);
        assert_eq!(b, vec![br(started, 1)]);
        assert_eq!(pk.partial_count(), 1);
    }

    #[test]
    fn partial_most_advanced_first() {
        // Pieces are 2 blocks; use a bigger geometry: 4 blocks per piece.
        let mut pk = Picker::new(8, 4 * BLOCK_LEN, 32 * u64::from(BLOCK_LEN), 8).unwrap();
        for p in 0..4 {
            pk.set_have(p);
        }
        let all = peer("11111111");
        let only4 = peer("00001000");
        let only5 = peer("00000100");
        let mut out = Vec::new();
        let mut rng = Rng::new(1);
        pk.pick(&only4, false, 1, &[], &mut rng, &mut out);
        pk.pick(&only5, false, 3, &[], &mut rng, &mut out);
        assert_eq!(out.len(), 4);
        out.clear();
        // Piece 5 has 3 of 4 blocks requested, piece 4 has 1: finish piece 5 first.
        pk.pick(&all, false, 2, &[], &mut rng, &mut out);
        assert_eq!(out, vec![br(5, 3), br(4, 1)]);
        pk.check_invariants();
    }

    #[test]
    fn partials_capped_by_max_partials() {
        let mut pk = picker("**** 1111 1111", 2);
        let got = pick(&mut pk, &peer("111111111111"), 100, &[], 1);
        assert_eq!(got.len(), 4, "2 partials x 2 blocks");
        assert_eq!(pk.partial_count(), 2);
        assert!(!pk.in_endgame(), "unstarted pieces remain");
        // Nothing more until a slot frees.
        assert!(pick(&mut pk, &peer("111111111111"), 100, &[], 2).is_empty());
        let p = got[0].piece;
        for b in 0..2 {
            assert_eq!(pk.block_received(br(p, b)), Received::New);
        }
        assert!(pk.piece_blocks_all_received(p));
        pk.piece_passed(p);
        assert!(pk.have(p));
        assert_eq!(pick(&mut pk, &peer("111111111111"), 100, &[], 3).len(), 2);
    }

    #[test]
    fn endgame_duplicates_but_never_to_same_peer() {
        let mut pk = picker("**** 3", 8);
        let a = pick(&mut pk, &peer("11111"), 10, &[], 1);
        assert_eq!(a, vec![br(4, 0), br(4, 1)]);
        assert!(pk.in_endgame());
        // Peer A asks again: its own blocks are not duplicated onto it.
        assert!(pick(&mut pk, &peer("11111"), 10, &a, 2).is_empty());
        // Peer B gets duplicates.
        let b = pick(&mut pk, &peer("11111"), 10, &[], 3);
        assert_eq!(b, a);
        // Peer C: already two copies outstanding.
        assert!(pick(&mut pk, &peer("11111"), 10, &[], 4).is_empty());
        // A's request for block 0 is cancelled: C may take it.
        pk.request_dropped(br(4, 0));
        let c = pick(&mut pk, &peer("11111"), 10, &[], 5);
        assert_eq!(c, vec![br(4, 0)]);
        assert_eq!(pk.block_received(br(4, 0)), Received::New);
        assert_eq!(pk.block_received(br(4, 0)), Received::Duplicate);
        // Late cancels of a received block are harmless.
        pk.request_dropped(br(4, 0));
        pk.check_invariants();
    }

    #[test]
    fn endgame_same_call_does_not_repeat_block() {
        // The last free block and its endgame duplicate must not both go to the same peer.
        let mut pk = picker("**** 3", 8);
        let got = pick(&mut pk, &peer("11111"), 10, &[], 1);
        assert_eq!(got.len(), 2);
        let mut seen = got.clone();
        seen.dedup();
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn request_dropped_returns_blocks() {
        let mut pk = picker("**** 1111", 8);
        let got = pick(&mut pk, &peer("00001000"), 2, &[], 1);
        assert_eq!(got, vec![br(4, 0), br(4, 1)]);
        pk.request_dropped(got[1]);
        pk.check_invariants();
        let again = pick(&mut pk, &peer("00001000"), 2, &[], 1);
        assert_eq!(again, vec![br(4, 1)]);
    }

    #[test]
    fn request_dropped_all_releases_idle_partial() {
        let mut pk = picker("**** 1111", 1);
        let got = pick(&mut pk, &peer("00001000"), 2, &[], 1);
        for b in &got {
            pk.request_dropped(*b);
        }
        assert_eq!(pk.partial_count(), 0);
        pk.check_invariants();
        // The slot is free for a different piece.
        let other = pick(&mut pk, &peer("00000100"), 2, &[], 1);
        assert_eq!(other, vec![br(5, 0), br(5, 1)]);
    }

    #[test]
    fn piece_failed_resets_blocks() {
        let mut pk = picker("**** 1", 8);
        let got = pick(&mut pk, &peer("11111"), 2, &[], 1);
        for b in &got {
            assert_eq!(pk.block_received(*b), Received::New);
        }
        assert!(pk.piece_blocks_all_received(4));
        pk.piece_failed(4);
        pk.check_invariants();
        assert!(!pk.have(4));
        assert!(!pk.piece_blocks_all_received(4));
        assert!(!pk.in_endgame());
        // A late copy of an old request is not accepted.
        assert_eq!(pk.block_received(br(4, 0)), Received::Unexpected);
        let again = pick(&mut pk, &peer("11111"), 2, &[], 1);
        assert_eq!(again, got);
    }

    #[test]
    fn block_received_classifies() {
        let mut pk = picker("***1 11", 8);
        assert_eq!(pk.block_received(br(0, 0)), Received::Duplicate);
        assert_eq!(pk.block_received(br(4, 0)), Received::Unexpected);
        assert_eq!(pk.block_received(br(99, 0)), Received::Unexpected);
        let got = pick(&mut pk, &peer("000100"), 1, &[], 1);
        assert_eq!(got, vec![br(3, 0)]);
        assert_eq!(pk.block_received(br(3, 7)), Received::Unexpected);
        assert_eq!(pk.block_received(br(3, 1)), Received::Unexpected);
        assert_eq!(pk.block_received(br(3, 0)), Received::New);
        assert_eq!(pk.block_received(br(3, 0)), Received::Duplicate);
        pk.check_invariants();
    }

    #[test]
    fn abandon_returns_piece_to_candidates() {
        let mut pk = picker("**** 1", 1);
        let got = pick(&mut pk, &peer("11111"), 1, &[], 1);
        assert_eq!(pk.block_received(got[0]), Received::New);
        pk.abandon(4);
        pk.check_invariants();
        assert_eq!(pk.partial_count(), 0);
        let again = pick(&mut pk, &peer("11111"), 5, &[], 1);
        assert_eq!(again, vec![br(4, 0), br(4, 1)]);
    }

    #[test]
    fn seed_counter_adds_to_every_piece() {
        let mut pk = picker("**** 2101", 8);
        pk.add_seed();
        pk.add_seed();
        assert_eq!(pk.availability(4), 4);
        assert_eq!(pk.availability(6), 2);
        assert_eq!(pk.availability(99), 0);
        pk.remove_seed();
        assert_eq!(pk.availability(6), 1);
        // A seed peer is interesting and can be picked from with an empty set.
        let none = PeerPieces::None;
        assert!(pk.is_interesting(&none, true));
        assert!(!pk.is_interesting(&none, false));
        let mut out = Vec::new();
        pk.pick(&none, true, 1, &[], &mut Rng::new(1), &mut out);
        assert_eq!(out, vec![br(6, 0)], "rarest ignores the uniform seed count");
        pk.remove_seed();
        pk.remove_seed();
        assert_eq!(pk.availability(6), 0);
    }

    #[test]
    fn add_remove_peer_is_symmetric() {
        let mut pk = picker("**** 0000", 8);
        let a = peer("11001100");
        let b = peer("01010101");
        pk.add_peer(&a);
        pk.add_peer(&b);
        pk.check_invariants();
        assert_eq!(pk.availability(5), 2);
        assert_eq!(pk.availability(4), 1);
        assert_eq!(pk.availability(6), 0);
        pk.remove_peer(&a);
        pk.check_invariants();
        assert_eq!(pk.availability(5), 1);
        assert_eq!(pk.availability(4), 0);
        pk.remove_peer(&b);
        pk.remove_peer(&b); // unbalanced: must not underflow
        pk.check_invariants();
        assert!((0..8).all(|p| pk.availability(p) == 0));
        pk.peer_has(1000); // out of range: ignored
    }

    #[test]
    fn interesting_only_if_peer_has_missing_piece() {
        let pk = picker("**** 11", 8);
        assert!(!pk.is_interesting(&peer("111100"), false));
        assert!(pk.is_interesting(&peer("000001"), false));
        assert!(pk.is_interesting(&PeerPieces::All, false));
    }

    /// Drives a whole download with several peers, dropping and duplicating at random, and
    /// checks the structure after every step.
    #[test]
    fn random_operations_keep_invariants_and_complete() {
        for seed in 1..6u64 {
            let mut rng = Rng::new(seed);
            let n = 37u32;
            let plen = 3 * BLOCK_LEN;
            let total = u64::from(n) * u64::from(plen) - 5000;
            let mut pk = Picker::new(n, plen, total, 4).unwrap();
            let peers: Vec<Vec<bool>> = (0..5)
                .map(|_| (0..n).map(|_| rng.below(3) != 0).collect())
                .collect();
            for p in &peers {
                pk.add_peer(p);
            }
            pk.add_seed();
            let mut outstanding: Vec<Vec<BlockRef>> = vec![Vec::new(); peers.len() + 1];
            let mut steps = 0;
            let (mut dups, mut fails) = (0, 0);
            while !pk.is_complete() {
                steps += 1;
                assert!(steps < 100_000, "download stalls");
                let who = rng.below(peers.len() + 1);
                let is_seed = who == peers.len();
                let set: &dyn PieceSet = if is_seed {
                    &PeerPieces::None
                } else {
                    &peers[who]
                };
                match rng.below(10) {
                    0..=3 => {
                        let mut out = Vec::new();
                        let want = rng.below(6);
                        pk.pick(set, is_seed, want, &outstanding[who], &mut rng, &mut out);
                        assert!(out.len() <= want);
                        for b in &out {
                            assert!(
                                !outstanding[who].contains(b),
                                "same block twice to one peer"
                            );
                            assert!(set.has(b.piece) || is_seed);
                        }
                        outstanding[who].extend(out);
                    }
                    4..=7 if !outstanding[who].is_empty() => {
                        let i = rng.below(outstanding[who].len());
                        let b = outstanding[who].swap_remove(i);
                        let got = pk.block_received(b);
                        dups += usize::from(got == Received::Duplicate);
                        if got == Received::New && rng.below(2) == 0 {
                            // Cancel the end-game copies elsewhere (or, half the time, let the
                            // copies arrive as duplicates: the cancel crossed the data).
                            for other in outstanding.iter_mut() {
                                if let Some(j) = other.iter().position(|x| *x == b) {
                                    other.swap_remove(j);
                                    pk.request_dropped(b);
                                }
                            }
                        }
                        if got == Received::New && pk.piece_blocks_all_received(b.piece) {
                            if rng.below(8) == 0 {
                                pk.piece_failed(b.piece);
                                fails += 1;
                                // The integrator forgets every request for a failed piece.
                                for o in outstanding.iter_mut() {
                                    o.retain(|x| x.piece != b.piece);
                                }
                            } else {
                                pk.piece_passed(b.piece);
                            }
                        }
                    }
                    8 if !outstanding[who].is_empty() => {
                        let i = rng.below(outstanding[who].len());
                        pk.request_dropped(outstanding[who].swap_remove(i));
                    }
                    _ => {
                        // Hostile input: out-of-range everything.
                        pk.peer_has(n + rng.below(5) as u32);
                        pk.suggest(rng.next_u32());
                        pk.suggest(rng.below(n as usize) as u32);
                        assert_ne!(
                            pk.block_received(br(rng.next_u32(), rng.next_u32())),
                            Received::New
                        );
                        pk.request_dropped(br(n + 1, 0));
                        pk.piece_failed(rng.next_u32());
                    }
                }
                pk.check_invariants();
            }
            assert_eq!(pk.left_bytes(), 0);
            assert!(!pk.in_endgame());
            assert!(
                dups > 0 && fails > 0,
                "seed {seed}: dups {dups} fails {fails}"
            );
            for p in &peers {
                pk.remove_peer(p);
            }
            pk.check_invariants();
        }
    }

    /// 1 GiB in 16 KiB pieces (65536 pieces, one block each) from three peers: stays cheap
    /// because nothing rescans or sorts all pieces per pick.
    #[test]
    fn large_torrent_download_is_cheap() {
        let n = 65_536u32;
        let mut pk = Picker::new(n, BLOCK_LEN, u64::from(n) * u64::from(BLOCK_LEN), 64).unwrap();
        let mut rng = Rng::new(9);
        let peers: Vec<Vec<bool>> = (0..3)
            .map(|_| (0..n).map(|_| rng.below(2) == 0).collect())
            .collect();
        for p in &peers {
            pk.add_peer(p);
        }
        pk.add_seed();
        let mut out = Vec::new();
        let mut rounds = 0;
        let mut last_avail = 0;
        while !pk.is_complete() {
            rounds += 1;
            out.clear();
            pk.pick(&PeerPieces::All, true, 64, &[], &mut rng, &mut out);
            assert_eq!(out.len(), 64);
            for b in &out {
                if rounds > 1 {
                    // Rarest first after the random first round: availability never drops.
                    let a = pk.availability(b.piece);
                    assert!(
                        a >= last_avail,
                        "piece {} rarer than an earlier one",
                        b.piece
                    );
                    last_avail = a;
                }
                assert_eq!(pk.block_received(*b), Received::New);
                pk.piece_passed(b.piece);
            }
        }
        assert_eq!(rounds, 1024);
        assert_eq!(last_avail, 4);
        pk.check_invariants();
    }
}
