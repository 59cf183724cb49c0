//! Layer 0: a fixed-length set of piece indices, stored in BitTorrent wire order.
//!
//! Bit 7 (the high bit) of byte 0 is piece 0, bit 6 is piece 1, and so on (BEP 3, "bitfield":
//! "The first byte of the bitfield corresponds to indices 0 - 7 from high bit to low bit"), so
//! `as_bytes()` is exactly the payload of a `bitfield` message and `from_bytes` parses one.
//! The set-bit count is cached so "how many pieces do we have" is O(1).
//!
//! Invariant: spare bits past `len` in the last byte are always zero. BEP 3 requires peers to
//! send them as zero, `from_bytes` rejects payloads that break that, and every mutator keeps
//! it, which lets `get`, `count` and `has_any_not_in` work on whole bytes and words without
//! masking. Plain data: no I/O, no clock, no panics on any index.

use std::fmt;

#[derive(Clone, PartialEq, Eq, Default)]
pub struct Bitfield {
    bytes: Vec<u8>,
    len: u32,
    count: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitfieldError {
    /// The payload is not exactly ceil(len / 8) bytes long.
    WrongLength { got: usize, expected: usize },
    /// A bit past the last piece is set; BEP 3 says spare bits are zero.
    SpareBitsSet,
}

impl fmt::Display for BitfieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BitfieldError::WrongLength { got, expected } => {
                write!(f, "bitfield: payload is {got} bytes, expected {expected}")
            }
            BitfieldError::SpareBitsSet => {
                write!(f, "bitfield: spare bits past the last piece are set")
            }
        }
    }
}

impl std::error::Error for BitfieldError {}

impl fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A bitfield of a large torrent is tens of KiB; print its shape, not its bytes.
        write!(f, "Bitfield {{ len: {}, count: {} }}", self.len, self.count)
    }
}

/// Bytes needed for `len` bits.
fn byte_len(len: u32) -> usize {
    (len as usize).div_ceil(8)
}

/// Mask of the valid bits in the last byte of a `len`-bit field (0xff when len is a multiple
/// of 8).
fn last_byte_mask(len: u32) -> u8 {
    match len % 8 {
        0 => 0xff,
        r => !(0xffu8 >> r),
    }
}

fn bit_mask(i: u32) -> u8 {
    0x80 >> (i % 8)
}

fn popcount(bytes: &[u8]) -> u32 {
    let mut words = bytes.chunks_exact(8);
    let mut n: u32 = 0;
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        n += u64::from_ne_bytes(a).count_ones();
    }
    for b in words.remainder() {
        n += b.count_ones();
    }
    n
}

impl Bitfield {
    /// An empty set of `len` pieces.
    pub fn new(len: u32) -> Bitfield {
        Bitfield {
            bytes: vec![0; byte_len(len)],
            len,
            count: 0,
        }
    }

    /// Empties the set and gives it `len` pieces, reusing its memory (no allocation when
    /// the capacity suffices).
    pub fn reset(&mut self, len: u32) {
        self.bytes.clear();
        self.bytes.resize(byte_len(len), 0);
        self.len = len;
        self.count = 0;
    }

    /// A set holding all `len` pieces.
    pub fn full(len: u32) -> Bitfield {
        let mut b = Bitfield::new(len);
        b.set_all();
        b
    }

    /// Parses a `bitfield` message payload for a torrent of `len` pieces. The payload must be
    /// exactly ceil(len / 8) bytes with zero spare bits (BEP 3).
    pub fn from_bytes(bytes: &[u8], len: u32) -> Result<Bitfield, BitfieldError> {
        let expected = byte_len(len);
        if bytes.len() != expected {
            return Err(BitfieldError::WrongLength {
                got: bytes.len(),
                expected,
            });
        }
        if let Some(last) = bytes.last() {
            if last & !last_byte_mask(len) != 0 {
                return Err(BitfieldError::SpareBitsSet);
            }
        }
        Ok(Bitfield {
            bytes: bytes.to_vec(),
            len,
            count: popcount(bytes),
        })
    }

    /// Number of pieces this set ranges over.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Number of pieces in the set.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// True when no piece is in the set.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// True when every piece is in the set (vacuously true for a zero-length field).
    pub fn is_full(&self) -> bool {
        self.count == self.len
    }

    /// Whether piece `i` is in the set; false for indices out of range.
    pub fn get(&self, i: u32) -> bool {
        // Spare bits are zero, so an index in the last byte's spare region reads false too.
        i < self.len
            && self
                .bytes
                .get((i / 8) as usize)
                .is_some_and(|b| b & bit_mask(i) != 0)
    }

    /// Adds piece `i`; no-op when out of range or already present.
    pub fn set(&mut self, i: u32) {
        if i >= self.len {
            return;
        }
        if let Some(b) = self.bytes.get_mut((i / 8) as usize) {
            let m = bit_mask(i);
            if *b & m == 0 {
                *b |= m;
                self.count += 1;
            }
        }
    }

    /// Removes piece `i`; no-op when out of range or absent.
    pub fn clear(&mut self, i: u32) {
        if i >= self.len {
            return;
        }
        if let Some(b) = self.bytes.get_mut((i / 8) as usize) {
            let m = bit_mask(i);
            if *b & m != 0 {
                *b &= !m;
                self.count -= 1;
            }
        }
    }

    /// Adds every piece.
    pub fn set_all(&mut self) {
        self.bytes.fill(0xff);
        let mask = last_byte_mask(self.len);
        if let Some(last) = self.bytes.last_mut() {
            *last = mask;
        }
        self.count = self.len;
    }

    /// The wire form: the payload of a `bitfield` message.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Indices in the set, ascending. Skips empty bytes without testing each bit.
    pub fn iter_set(&self) -> Bits<'_> {
        Bits::new(&self.bytes, self.len, false)
    }

    /// Indices not in the set, ascending.
    pub fn iter_clear(&self) -> Bits<'_> {
        Bits::new(&self.bytes, self.len, true)
    }

    /// Whether `self` holds some piece that `other` lacks (indices past `other.len()` count as
    /// lacking). This is the "am I interested in this peer" test, run on every `have`, so it
    /// compares 64 bits at a time.
    pub fn has_any_not_in(&self, other: &Bitfield) -> bool {
        if self.count == 0 {
            return false;
        }
        if other.is_full() && self.len <= other.len {
            return false;
        }
        let n = self.bytes.len().min(other.bytes.len());
        let (mine, extra) = self.bytes.split_at(n);
        let theirs = other.bytes.get(..n).unwrap_or(&[]);
        let mut a = mine.chunks_exact(8);
        let mut b = theirs.chunks_exact(8);
        for (x, y) in (&mut a).zip(&mut b) {
            let mut xa = [0u8; 8];
            let mut ya = [0u8; 8];
            xa.copy_from_slice(x);
            ya.copy_from_slice(y);
            if u64::from_ne_bytes(xa) & !u64::from_ne_bytes(ya) != 0 {
                return true;
            }
        }
        if a.remainder()
            .iter()
            .zip(b.remainder())
            .any(|(x, y)| x & !y != 0)
        {
            return true;
        }
        // Bytes past the end of `other`: any piece we have there, it lacks.
        extra.iter().any(|&x| x != 0)
    }
}

/// Iterator over set (or clear) bit indices of a bitfield, in ascending order.
pub struct Bits<'a> {
    bytes: &'a [u8],
    len: u32,
    invert: bool,
    /// Index of the next byte to load.
    next_byte: usize,
    /// Remaining bits of the current byte (already inverted when iterating clear bits).
    cur: u8,
    /// Piece index of bit 7 of the current byte.
    base: u32,
}

impl<'a> Bits<'a> {
    fn new(bytes: &'a [u8], len: u32, invert: bool) -> Bits<'a> {
        Bits {
            bytes,
            len,
            invert,
            next_byte: 0,
            cur: 0,
            base: 0,
        }
    }
}

impl Iterator for Bits<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        loop {
            if self.cur != 0 {
                let bit = self.cur.leading_zeros();
                self.cur &= !(0x80u8 >> bit);
                let idx = self.base.checked_add(bit)?;
                // Inverted spare bits of the last byte lie past `len`; nothing follows them.
                return if idx < self.len { Some(idx) } else { None };
            }
            let b = *self.bytes.get(self.next_byte)?;
            self.base = u32::try_from(self.next_byte).ok()?.checked_mul(8)?;
            self.next_byte += 1;
            self.cur = if self.invert { !b } else { b };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn new_field_is_empty_with_zero_bytes() {
        let b = Bitfield::new(10);
        assert_eq!(b.len(), 10);
        assert_eq!(b.count(), 0);
        assert!(b.is_empty());
        assert!(!b.is_full());
        assert_eq!(b.as_bytes(), &[0, 0]);
        assert_eq!(Bitfield::new(0).as_bytes(), &[] as &[u8]);
        assert_eq!(Bitfield::new(16).as_bytes().len(), 2);
        assert_eq!(Bitfield::new(17).as_bytes().len(), 3);
    }

    #[test]
    fn full_field_leaves_spare_bits_zero() {
        let b = Bitfield::full(10);
        assert_eq!(b.as_bytes(), &[0xff, 0xc0]);
        assert_eq!(b.count(), 10);
        assert!(b.is_full());
        assert_eq!(Bitfield::full(16).as_bytes(), &[0xff, 0xff]);
        assert!(Bitfield::full(0).is_full());
    }

    #[test]
    fn set_uses_wire_bit_order() {
        let mut b = Bitfield::new(12);
        b.set(0);
        assert_eq!(b.as_bytes(), &[0x80, 0]);
        b.set(7);
        b.set(8);
        b.set(11);
        assert_eq!(b.as_bytes(), &[0x81, 0x90]);
        assert!(b.get(0) && b.get(7) && b.get(8) && b.get(11));
        assert!(!b.get(1) && !b.get(9));
    }

    #[test]
    fn set_twice_counts_once() {
        let mut b = Bitfield::new(9);
        b.set(3);
        b.set(3);
        assert_eq!(b.count(), 1);
        b.clear(3);
        b.clear(3);
        assert_eq!(b.count(), 0);
        assert!(!b.get(3));
    }

    #[test]
    fn out_of_range_index_is_ignored() {
        let mut b = Bitfield::new(10);
        b.set(10);
        b.set(15);
        b.set(u32::MAX);
        assert_eq!(b.count(), 0);
        assert_eq!(b.as_bytes(), &[0, 0]);
        assert!(!b.get(10) && !b.get(u32::MAX));
        b.clear(u32::MAX);
        assert_eq!(b.count(), 0);
    }

    #[test]
    fn set_all_after_partial_sets_counts_len() {
        let mut b = Bitfield::new(13);
        b.set(2);
        b.set_all();
        assert_eq!(b.count(), 13);
        assert_eq!(b.as_bytes(), &[0xff, 0xf8]);
        assert!(b.is_full());
        b.clear(12);
        assert!(!b.is_full());
        assert_eq!(b.count(), 12);
    }

    #[test]
    fn from_bytes_accepts_valid_payload() {
        let b = Bitfield::from_bytes(&[0b1010_0000, 0b1100_0000], 10).expect("valid");
        assert_eq!(b.count(), 4);
        assert_eq!(b.iter_set().collect::<Vec<_>>(), vec![0, 2, 8, 9]);
        assert!(Bitfield::from_bytes(&[], 0).is_ok());
        let f = Bitfield::from_bytes(&[0xff; 3], 24).expect("full");
        assert!(f.is_full());
    }

    #[test]
    fn from_bytes_wrong_length_errs() {
        assert_eq!(
            Bitfield::from_bytes(&[0, 0, 0], 10),
            Err(BitfieldError::WrongLength {
                got: 3,
                expected: 2
            })
        );
        assert_eq!(
            Bitfield::from_bytes(&[0], 10),
            Err(BitfieldError::WrongLength {
                got: 1,
                expected: 2
            })
        );
        assert!(Bitfield::from_bytes(&[0], 0).is_err());
    }

    #[test]
    fn from_bytes_spare_bit_set_errs() {
        assert_eq!(
            Bitfield::from_bytes(&[0, 0x20], 10),
            Err(BitfieldError::SpareBitsSet)
        );
        assert_eq!(
            Bitfield::from_bytes(&[0, 0x01], 15),
            Err(BitfieldError::SpareBitsSet)
        );
        assert!(Bitfield::from_bytes(&[0, 0x02], 15).is_ok());
        let e = BitfieldError::SpareBitsSet.to_string();
        assert_eq!(e, "bitfield: spare bits past the last piece are set");
    }

    #[test]
    fn iter_clear_stops_at_len() {
        let mut b = Bitfield::new(11);
        for i in [0, 1, 5, 9] {
            b.set(i);
        }
        assert_eq!(b.iter_set().collect::<Vec<_>>(), vec![0, 1, 5, 9]);
        assert_eq!(
            b.iter_clear().collect::<Vec<_>>(),
            vec![2, 3, 4, 6, 7, 8, 10]
        );
        assert_eq!(Bitfield::full(11).iter_clear().count(), 0);
        assert_eq!(Bitfield::new(16).iter_clear().count(), 16);
        assert_eq!(Bitfield::new(0).iter_set().count(), 0);
    }

    #[test]
    fn has_any_not_in_detects_missing_piece() {
        let mut mine = Bitfield::new(200);
        let mut theirs = Bitfield::new(200);
        assert!(!mine.has_any_not_in(&theirs));
        mine.set(150);
        assert!(mine.has_any_not_in(&theirs));
        theirs.set(150);
        assert!(!mine.has_any_not_in(&theirs));
        // Last partial byte (remainder path) and first word.
        mine.set(199);
        assert!(mine.has_any_not_in(&theirs));
        theirs.set_all();
        assert!(!mine.has_any_not_in(&theirs));
        mine.set(3);
        assert!(!mine.has_any_not_in(&theirs));
        theirs.clear(3);
        assert!(mine.has_any_not_in(&theirs));
    }

    #[test]
    fn has_any_not_in_counts_pieces_past_other_len() {
        let mut mine = Bitfield::new(100);
        let theirs = Bitfield::full(20);
        mine.set(5);
        assert!(!mine.has_any_not_in(&theirs));
        mine.set(21);
        assert!(mine.has_any_not_in(&theirs));
        let mut far = Bitfield::new(100);
        far.set(90);
        assert!(far.has_any_not_in(&theirs));
    }

    #[test]
    fn random_ops_match_bool_model() {
        let mut rng = Rng::new(7);
        for &len in &[0u32, 1, 7, 8, 9, 63, 64, 65, 130, 517] {
            let mut b = Bitfield::new(len);
            let mut other = Bitfield::new(len);
            let mut model = vec![false; len as usize];
            let mut omodel = vec![false; len as usize];
            for _ in 0..400 {
                let i = rng.below(len as usize + 3) as u32;
                match rng.below(4) {
                    0 => {
                        b.set(i);
                        if let Some(m) = model.get_mut(i as usize) {
                            *m = true;
                        }
                    }
                    1 => {
                        b.clear(i);
                        if let Some(m) = model.get_mut(i as usize) {
                            *m = false;
                        }
                    }
                    2 => {
                        other.set(i);
                        if let Some(m) = omodel.get_mut(i as usize) {
                            *m = true;
                        }
                    }
                    _ => {
                        other.clear(i);
                        if let Some(m) = omodel.get_mut(i as usize) {
                            *m = false;
                        }
                    }
                }
                let want_count = model.iter().filter(|x| **x).count() as u32;
                assert_eq!(b.count(), want_count);
                let want_any = model.iter().zip(&omodel).any(|(a, o)| *a && !*o);
                assert_eq!(b.has_any_not_in(&other), want_any);
            }
            let set: Vec<u32> = (0..len).filter(|&i| model[i as usize]).collect();
            let clear: Vec<u32> = (0..len).filter(|&i| !model[i as usize]).collect();
            assert_eq!(b.iter_set().collect::<Vec<_>>(), set);
            assert_eq!(b.iter_clear().collect::<Vec<_>>(), clear);
            let round = Bitfield::from_bytes(b.as_bytes(), len).expect("round trip");
            assert_eq!(round, b);
        }
    }

    #[test]
    fn from_bytes_truncation_sweep_errs() {
        let full = [0xa5u8, 0x3c, 0xff, 0x80];
        for n in 0..full.len() {
            assert!(Bitfield::from_bytes(&full[..n], 25).is_err());
        }
        assert!(Bitfield::from_bytes(&full, 25).is_ok());
    }

    #[test]
    fn from_bytes_mutation_sweep_keeps_invariants() {
        let mut rng = Rng::new(42);
        for _ in 0..2000 {
            let len = rng.below(80) as u32;
            let mut bytes = vec![0u8; rng.below(12)];
            rng.fill(&mut bytes);
            if let Ok(b) = Bitfield::from_bytes(&bytes, len) {
                assert_eq!(b.count() as usize, b.iter_set().count());
                assert_eq!((len - b.count()) as usize, b.iter_clear().count());
                assert!(b.iter_set().all(|i| i < len));
            }
        }
    }
}
