//! Layer 3 (I/O shell support): fixed-size pools allocated once at start.
//!
//! `BlockPool` hands out 16 KiB blocks (the BEP 3 request size) carved from one page-aligned
//! `AlignedBuf`, so block data can go to disk with `O_DIRECT` and memory use is fixed at start.
//! `Slots<T>` is a fixed-capacity slab with generation-checked handles (peers, connections) whose
//! handles pack into mio tokens. Neither allocates after construction and neither does I/O.

use crate::sys::AlignedBuf;

/// Size of one pool block: the 16 KiB request size every client uses (BEP 3 "request").
pub const BLOCK_SIZE: usize = 16384;

/// Index of a block in a `BlockPool`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct BlockId(u32);

impl BlockId {
    pub fn index(self) -> u32 {
        self.0
    }
}

/// A fixed number of `BLOCK_SIZE` blocks, each 4096-aligned, from one allocation.
pub struct BlockPool {
    buf: AlignedBuf,
    /// Free block indices (stack). Capacity reserved up front: pushes never reallocate.
    free: Vec<u32>,
    in_use: Vec<bool>,
}

impl BlockPool {
    /// Allocates `count` zeroed blocks. Panics if `count` blocks do not fit in memory/u32.
    pub fn new(count: usize) -> BlockPool {
        let count32 = u32::try_from(count).expect("block count fits u32");
        let bytes = count
            .checked_mul(BLOCK_SIZE)
            .expect("block pool size overflows usize");
        let buf = AlignedBuf::new(bytes);
        // Reverse so block 0 is handed out first (purely cosmetic, helps debugging).
        let free: Vec<u32> = (0..count32).rev().collect();
        BlockPool {
            buf,
            free,
            in_use: vec![false; count],
        }
    }

    /// Takes a free block, or None when all are in use. Contents are whatever was left there.
    pub fn alloc(&mut self) -> Option<BlockId> {
        let i = self.free.pop()?;
        self.in_use[i as usize] = true;
        Some(BlockId(i))
    }

    /// Returns a block to the pool. A double free (or a foreign id) is a bug: it asserts in
    /// debug builds and is ignored in release builds, so the free list never holds duplicates.
    pub fn free(&mut self, id: BlockId) {
        match self.in_use.get_mut(id.0 as usize) {
            Some(used) if *used => {
                *used = false;
                self.free.push(id.0);
            }
            _ => debug_assert!(false, "double free or foreign block id {id:?}"),
        }
    }

    pub fn is_allocated(&self, id: BlockId) -> bool {
        self.in_use.get(id.0 as usize).copied().unwrap_or(false)
    }

    /// The block's `BLOCK_SIZE` bytes (4096-aligned).
    pub fn get(&self, id: BlockId) -> &[u8] {
        let start = id.0 as usize * BLOCK_SIZE;
        &self.buf[start..start + BLOCK_SIZE]
    }

    pub fn get_mut(&mut self, id: BlockId) -> &mut [u8] {
        let start = id.0 as usize * BLOCK_SIZE;
        &mut self.buf[start..start + BLOCK_SIZE]
    }

    pub fn available(&self) -> usize {
        self.free.len()
    }

    pub fn capacity(&self) -> usize {
        self.in_use.len()
    }
}

/// Bits of a 32-bit mio token used for the slot index; the rest carry the low generation bits.
#[cfg(not(target_pointer_width = "64"))]
const TOKEN_INDEX_BITS: u32 = 20;

/// A generation-checked reference to a `Slots` entry. A handle whose slot was removed (and
/// maybe reused) is stale: lookups with it return None.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Handle {
    pub index: u32,
    pub gen: u32,
}

impl Handle {
    /// `gen` in the high 32 bits, `index` in the low 32 bits. Never 0 for a live handle
    /// (generations start at 1), so small token values stay free for other uses.
    pub fn to_u64(self) -> u64 {
        ((self.gen as u64) << 32) | self.index as u64
    }

    pub fn from_u64(v: u64) -> Handle {
        Handle {
            index: v as u32,
            gen: (v >> 32) as u32,
        }
    }

    /// Packs into a `usize` (a mio `Token`). Exact on 64-bit targets; on 32-bit targets the
    /// index takes 20 bits and the generation is truncated to 12 bits, so decode tokens with
    /// `Slots::handle_for_token`, which restores the full handle.
    pub fn to_token(self) -> usize {
        #[cfg(target_pointer_width = "64")]
        {
            self.to_u64() as usize
        }
        #[cfg(not(target_pointer_width = "64"))]
        {
            (self.index as usize & ((1 << TOKEN_INDEX_BITS) - 1))
                | ((self.gen as usize) << TOKEN_INDEX_BITS)
        }
    }
}

struct Slot<T> {
    gen: u32,
    value: Option<T>,
}

/// Fixed-capacity slab: an array of optional values, a free list and a generation per slot.
pub struct Slots<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Slots<T> {
    /// Allocates room for `n` values; nothing is allocated afterwards.
    pub fn with_capacity(n: usize) -> Slots<T> {
        let n32 = u32::try_from(n).expect("slot count fits u32");
        #[cfg(not(target_pointer_width = "64"))]
        assert!(
            n32 <= 1 << TOKEN_INDEX_BITS,
            "too many slots for 32-bit tokens"
        );
        let mut slots = Vec::with_capacity(n);
        slots.extend((0..n).map(|_| Slot {
            gen: 1,
            value: None,
        }));
        Slots {
            slots,
            free: (0..n32).rev().collect(),
            len: 0,
        }
    }

    /// Stores `value`; None (dropping nothing, the value is returned to nobody) when full.
    pub fn insert(&mut self, value: T) -> Option<Handle> {
        let index = self.free.pop()?;
        let slot = &mut self.slots[index as usize];
        debug_assert!(slot.value.is_none());
        slot.value = Some(value);
        self.len += 1;
        Some(Handle {
            index,
            gen: slot.gen,
        })
    }

    pub fn get(&self, h: Handle) -> Option<&T> {
        self.slots
            .get(h.index as usize)
            .filter(|s| s.gen == h.gen)
            .and_then(|s| s.value.as_ref())
    }

    pub fn get_mut(&mut self, h: Handle) -> Option<&mut T> {
        self.slots
            .get_mut(h.index as usize)
            .filter(|s| s.gen == h.gen)
            .and_then(|s| s.value.as_mut())
    }

    pub fn contains(&self, h: Handle) -> bool {
        self.get(h).is_some()
    }

    /// Removes and returns the value; the slot's generation advances so `h` goes stale.
    pub fn remove(&mut self, h: Handle) -> Option<T> {
        let slot = self.slots.get_mut(h.index as usize)?;
        if slot.gen != h.gen {
            return None;
        }
        let value = slot.value.take()?;
        // Skip 0 on wrap so a live handle never packs to 0.
        slot.gen = slot.gen.checked_add(1).unwrap_or(1);
        self.free.push(h.index);
        self.len -= 1;
        Some(value)
    }

    /// Decodes a token made by `Handle::to_token` into the current live handle, or None if the
    /// slot is empty or its generation moved on.
    pub fn handle_for_token(&self, token: usize) -> Option<Handle> {
        #[cfg(target_pointer_width = "64")]
        {
            let h = Handle::from_u64(token as u64);
            self.contains(h).then_some(h)
        }
        #[cfg(not(target_pointer_width = "64"))]
        {
            let index = (token & ((1 << TOKEN_INDEX_BITS) - 1)) as u32;
            let gen_bits = token >> TOKEN_INDEX_BITS;
            let slot = self.slots.get(index as usize)?;
            let mask = (1usize << (usize::BITS - TOKEN_INDEX_BITS)) - 1;
            if slot.value.is_some() && (slot.gen as usize & mask) == gen_bits {
                Some(Handle {
                    index,
                    gen: slot.gen,
                })
            } else {
                None
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (Handle, &T)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            s.value.as_ref().map(|v| {
                (
                    Handle {
                        index: i as u32,
                        gen: s.gen,
                    },
                    v,
                )
            })
        })
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Handle, &mut T)> {
        self.slots.iter_mut().enumerate().filter_map(|(i, s)| {
            let gen = s.gen;
            s.value.as_mut().map(|v| {
                (
                    Handle {
                        index: i as u32,
                        gen,
                    },
                    v,
                )
            })
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.free.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_new_blocks_are_aligned_and_distinct() {
        let mut p = BlockPool::new(4);
        assert_eq!(p.capacity(), 4);
        assert_eq!(p.available(), 4);
        let ids: Vec<BlockId> = (0..4).map(|_| p.alloc().unwrap()).collect();
        assert_eq!(p.alloc(), None);
        assert_eq!(p.available(), 0);
        for (n, &id) in ids.iter().enumerate() {
            assert_eq!(p.get(id).len(), BLOCK_SIZE);
            assert_eq!(p.get(id).as_ptr() as usize % crate::sys::ALIGN, 0);
            p.get_mut(id).fill(n as u8 + 1);
        }
        for (n, &id) in ids.iter().enumerate() {
            assert!(p.get(id).iter().all(|&b| b == n as u8 + 1));
        }
    }

    #[test]
    fn pool_free_then_alloc_reuses_without_growing() {
        let mut p = BlockPool::new(2);
        let a = p.alloc().unwrap();
        let b = p.alloc().unwrap();
        let free_cap = p.free.capacity();
        p.free(a);
        assert!(!p.is_allocated(a));
        assert!(p.is_allocated(b));
        assert_eq!(p.available(), 1);
        assert_eq!(p.alloc(), Some(a));
        p.free(a);
        p.free(b);
        assert_eq!(p.available(), 2);
        assert_eq!(p.free.capacity(), free_cap);
    }

    #[test]
    #[cfg(not(debug_assertions))]
    fn pool_double_free_is_ignored() {
        let mut p = BlockPool::new(2);
        let a = p.alloc().unwrap();
        p.free(a);
        p.free(a);
        assert_eq!(p.available(), 2);
        assert!(p.alloc().is_some());
        assert!(p.alloc().is_some());
        assert_eq!(p.alloc(), None);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "double free")]
    fn pool_double_free_asserts_in_debug() {
        let mut p = BlockPool::new(2);
        let a = p.alloc().unwrap();
        p.free(a);
        p.free(a);
    }

    #[test]
    fn pool_empty_has_nothing() {
        let mut p = BlockPool::new(0);
        assert_eq!(p.alloc(), None);
        assert_eq!(p.capacity(), 0);
    }

    #[test]
    fn slots_full_insert_returns_none() {
        let mut s = Slots::with_capacity(2);
        assert!(s.insert("a").is_some());
        assert!(s.insert("b").is_some());
        assert!(s.is_full());
        assert_eq!(s.insert("c"), None);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn slots_stale_handle_after_reuse_is_rejected() {
        let mut s = Slots::with_capacity(1);
        let h1 = s.insert(10).unwrap();
        assert_eq!(s.remove(h1), Some(10));
        assert_eq!(s.get(h1), None);
        let h2 = s.insert(20).unwrap();
        assert_eq!(h1.index, h2.index);
        assert_ne!(h1, h2);
        assert_eq!(s.get(h1), None);
        assert_eq!(s.get_mut(h1), None);
        assert_eq!(s.remove(h1), None);
        assert_eq!(s.get(h2), Some(&20));
        assert_eq!(s.len(), 1);
        assert_eq!(s.handle_for_token(h1.to_token()), None);
        assert_eq!(s.handle_for_token(h2.to_token()), Some(h2));
    }

    #[test]
    fn slots_remove_twice_returns_none() {
        let mut s = Slots::with_capacity(3);
        let h = s.insert(1).unwrap();
        assert_eq!(s.remove(h), Some(1));
        assert_eq!(s.remove(h), None);
        assert!(s.is_empty());
        assert_eq!(s.free.len(), 3);
    }

    #[test]
    fn slots_out_of_range_handle_is_none() {
        let mut s: Slots<u8> = Slots::with_capacity(1);
        let h = Handle { index: 5, gen: 1 };
        assert_eq!(s.get(h), None);
        assert_eq!(s.remove(h), None);
        assert_eq!(s.handle_for_token(h.to_token()), None);
    }

    #[test]
    fn slots_iter_yields_live_entries_with_handles() {
        let mut s = Slots::with_capacity(4);
        let a = s.insert('a').unwrap();
        let b = s.insert('b').unwrap();
        let c = s.insert('c').unwrap();
        s.remove(b);
        let got: Vec<(Handle, char)> = s.iter().map(|(h, &v)| (h, v)).collect();
        assert_eq!(got, vec![(a, 'a'), (c, 'c')]);
        for (_, v) in s.iter_mut() {
            *v = v.to_ascii_uppercase();
        }
        assert_eq!(s.get(a), Some(&'A'));
        assert_eq!(s.get(c), Some(&'C'));
    }

    #[test]
    fn handle_u64_round_trips_and_is_never_zero() {
        let mut s = Slots::with_capacity(1);
        let h = s.insert(()).unwrap();
        assert_ne!(h.to_u64(), 0);
        assert_eq!(Handle::from_u64(h.to_u64()), h);
        let h = Handle {
            index: 0xdead_beef,
            gen: 0x1234_5678,
        };
        assert_eq!(Handle::from_u64(h.to_u64()), h);
    }

    #[test]
    fn slots_generation_wrap_skips_zero() {
        let mut s = Slots::with_capacity(1);
        s.slots[0].gen = u32::MAX;
        let h = s.insert(1).unwrap();
        s.remove(h);
        assert_eq!(s.slots[0].gen, 1);
    }
}
