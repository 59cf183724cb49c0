//! Layer 0: SHA-1, the one hash BitTorrent v1 needs (BEP 3: "the SHA1 hash of the piece").
//!
//! Every downloaded and every served byte is hashed, so this is the floor of the CPU cost per
//! GiB. Two paths sit behind one API:
//! - a hardware path of our own: x86/x86_64 SHA-NI (`sha1rnds4`, `sha1nexte`, `sha1msg1/2`)
//!   and AArch64 SHA1 (`sha1c/p/m`, `sha1h`, `sha1su0/1`), chosen once at runtime by CPU
//!   feature detection and cached;
//! - the portable path, `sha1_smol`, everywhere else (MIPS, ARMv6/v7, x86 without SHA-NI).
//!
//! Only the 64-byte block compression is hardware-specific; buffering, padding and the length
//! trailer (FIPS 180-4 §5.1.1: a `1` bit, zeros, then the message length in bits as a 64-bit
//! big-endian number) are plain Rust shared by both hardware back ends.
//!
//! `unsafe` here is confined to the `#[target_feature]` `compress` functions (intrinsics need
//! it) and to the one dispatch function that calls them after detection said the CPU has the
//! instructions. This module does no I/O and reads no clock.

pub type Digest = [u8; 20];

/// SHA-1 of `data` in one call, using the fastest path this CPU supports.
pub fn sha1(data: &[u8]) -> Digest {
    let mut h = Sha1::new();
    h.update(data);
    h.finish()
}

/// Which SHA-1 implementation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `sha1_smol`, portable Rust.
    Portable,
    /// x86/x86_64 SHA extensions (needs `sha`, `ssse3` and `sse4.1`).
    X86ShaNi,
    /// AArch64 SHA1 crypto instructions (Rust feature name `sha2`, which covers SHA1 too).
    Aarch64Sha1,
}

impl Backend {
    /// Short lowercase name for logs and benchmark tables.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Portable => "portable (sha1_smol)",
            Backend::X86ShaNi => "x86 sha-ni",
            Backend::Aarch64Sha1 => "aarch64 sha1",
        }
    }

    /// Whether this CPU can run `self`.
    pub fn is_available(self) -> bool {
        self == Backend::Portable || self == backend()
    }
}

/// The backend `Sha1::new` uses on this CPU: detected on first call, then cached.
pub fn backend() -> Backend {
    use std::sync::atomic::{AtomicU8, Ordering};
    // 0 = not detected yet; otherwise 1 + the backend's code. Detection is idempotent, so a
    // race between two first callers only means detecting twice.
    static CACHE: AtomicU8 = AtomicU8::new(0);
    match CACHE.load(Ordering::Relaxed) {
        1 => Backend::Portable,
        2 => Backend::X86ShaNi,
        3 => Backend::Aarch64Sha1,
        _ => {
            let b = detect();
            let code = match b {
                Backend::Portable => 1,
                Backend::X86ShaNi => 2,
                Backend::Aarch64Sha1 => 3,
            };
            CACHE.store(code, Ordering::Relaxed);
            b
        }
    }
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
fn detect() -> Backend {
    if std::arch::is_x86_feature_detected!("sha")
        && std::arch::is_x86_feature_detected!("ssse3")
        && std::arch::is_x86_feature_detected!("sse4.1")
    {
        Backend::X86ShaNi
    } else {
        Backend::Portable
    }
}

#[cfg(target_arch = "aarch64")]
fn detect() -> Backend {
    if std::arch::is_aarch64_feature_detected!("neon")
        && std::arch::is_aarch64_feature_detected!("sha2")
    {
        Backend::Aarch64Sha1
    } else {
        Backend::Portable
    }
}

#[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
fn detect() -> Backend {
    Backend::Portable
}

/// Incremental SHA-1: any split of `update` calls gives the same digest as one call.
#[derive(Clone)]
pub struct Sha1(Inner);

#[derive(Clone)]
enum Inner {
    Portable(sha1_smol::Sha1),
    Hw(HwSha1),
}

impl Default for Sha1 {
    fn default() -> Sha1 {
        Sha1::new()
    }
}

impl Sha1 {
    pub fn new() -> Sha1 {
        Sha1::with_backend(backend()).unwrap_or_else(|| Sha1(Inner::Portable(Default::default())))
    }

    /// A hasher on a specific backend, or `None` if this CPU cannot run it. For benchmarks
    /// and tests that compare the paths; normal code uses [`Sha1::new`].
    pub fn with_backend(b: Backend) -> Option<Sha1> {
        if !b.is_available() {
            return None;
        }
        Some(Sha1(match b {
            Backend::Portable => Inner::Portable(sha1_smol::Sha1::new()),
            Backend::X86ShaNi | Backend::Aarch64Sha1 => Inner::Hw(HwSha1::new(b)),
        }))
    }

    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            Inner::Portable(h) => h.update(data),
            Inner::Hw(h) => h.update(data),
        }
    }

    pub fn finish(&self) -> Digest {
        match &self.0 {
            Inner::Portable(h) => h.digest().bytes(),
            Inner::Hw(h) => h.finish(),
        }
    }
}

/// FIPS 180-4 §5.3.1 initial hash value.
const H0: [u32; 5] = [
    0x6745_2301,
    0xEFCD_AB89,
    0x98BA_DCFE,
    0x1032_5476,
    0xC3D2_E1F0,
];
/// SHA-1 block size in bytes.
const BLOCK: usize = 64;
/// Where the 8-byte big-endian bit length starts inside the final block.
const LEN_AT: usize = BLOCK - 8;

/// Buffering and padding around a hardware block function.
#[derive(Clone)]
struct HwSha1 {
    state: [u32; 5],
    buf: [u8; BLOCK],
    /// Bytes waiting in `buf`; always < `BLOCK` between calls.
    buf_len: usize,
    /// Total message bytes so far. SHA-1 defines the length modulo 2^64 bits, so wrapping is
    /// the specified behaviour, not an overflow bug.
    total: u64,
    backend: Backend,
}

impl HwSha1 {
    fn new(backend: Backend) -> HwSha1 {
        HwSha1 {
            state: H0,
            buf: [0; BLOCK],
            buf_len: 0,
            total: 0,
            backend,
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        self.total = self.total.wrapping_add(data.len() as u64);
        if self.buf_len > 0 {
            let take = (BLOCK - self.buf_len).min(data.len());
            let (head, rest) = data.split_at(take);
            self.buf[self.buf_len..self.buf_len + take].copy_from_slice(head);
            self.buf_len += take;
            data = rest;
            if self.buf_len < BLOCK {
                return;
            }
            let block = self.buf;
            compress_blocks(self.backend, &mut self.state, &block);
            self.buf_len = 0;
        }
        let whole = data.len() - data.len() % BLOCK;
        let (blocks, tail) = data.split_at(whole);
        if !blocks.is_empty() {
            compress_blocks(self.backend, &mut self.state, blocks);
        }
        self.buf[..tail.len()].copy_from_slice(tail);
        self.buf_len = tail.len();
    }

    fn finish(&self) -> Digest {
        let mut state = self.state;
        let mut block = [0u8; BLOCK];
        block[..self.buf_len].copy_from_slice(&self.buf[..self.buf_len]);
        block[self.buf_len] = 0x80;
        if self.buf_len >= LEN_AT {
            // No room for the length after the 0x80 byte: it goes in one more block.
            compress_blocks(self.backend, &mut state, &block);
            block = [0u8; BLOCK];
        }
        let bits = self.total.wrapping_mul(8);
        block[LEN_AT..].copy_from_slice(&bits.to_be_bytes());
        compress_blocks(self.backend, &mut state, &block);
        let mut out = [0u8; 20];
        for (o, w) in out.chunks_exact_mut(4).zip(state) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }
}

/// Runs the hardware compression for `backend` over `blocks` (a multiple of 64 bytes).
#[allow(unsafe_code)]
fn compress_blocks(backend: Backend, state: &mut [u32; 5], blocks: &[u8]) {
    debug_assert_eq!(blocks.len() % BLOCK, 0);
    match backend {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        // SAFETY: an `HwSha1` with this backend is only built by `Sha1::with_backend` after
        // `Backend::is_available` confirmed (via `detect`) that the CPU has SHA, SSSE3 and
        // SSE4.1, the features `x86::compress` is compiled for.
        Backend::X86ShaNi => unsafe { x86::compress(state, blocks) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above; `detect` confirmed NEON and the SHA1/SHA2 crypto extension.
        Backend::Aarch64Sha1 => unsafe { arm::compress(state, blocks) },
        // Unreachable in practice (no `HwSha1` exists with another backend); the portable
        // path cannot compress single blocks, so keep the state untouched rather than panic.
        _ => {
            let _ = (state, blocks);
        }
    }
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
mod x86 {
    #[cfg(target_arch = "x86")]
    use core::arch::x86::*;
    #[cfg(target_arch = "x86_64")]
    use core::arch::x86_64::*;

    /// SHA-1 compression of whole 64-byte blocks with SHA-NI.
    ///
    /// Lane layout: `abcd` holds A in the highest 32-bit lane down to D in the lowest, which is
    /// what `sha1rnds4` expects; E lives in the highest lane of its own register. Each message
    /// vector holds four schedule words, the earliest in the highest lane.
    ///
    /// # Safety
    /// The CPU must support `sha`, `ssse3` and `sse4.1`. `blocks.len()` should be a multiple
    /// of 64; a trailing partial block is ignored.
    #[allow(unsafe_code)]
    #[target_feature(enable = "sha,ssse3,sse4.1")]
    pub(super) unsafe fn compress(state: &mut [u32; 5], blocks: &[u8]) {
        // `_mm_set_epi32` takes lanes from highest to lowest, so A lands in the top lane.
        let mut abcd = _mm_set_epi32(
            state[0] as i32,
            state[1] as i32,
            state[2] as i32,
            state[3] as i32,
        );
        let mut e0 = _mm_set_epi32(state[4] as i32, 0, 0, 0);
        // Reverses all 16 bytes: turns four big-endian words W0..W3 into native u32 lanes with
        // W0 in the highest lane.
        let bswap = _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);

        for block in blocks.chunks_exact(64) {
            let abcd_save = abcd;
            let e_save = e0;
            let p = block.as_ptr() as *const __m128i;
            // SAFETY: `block` is exactly 64 bytes, so offsets 0..4 of 16 bytes are in bounds;
            // `loadu` has no alignment requirement.
            let mut m0 = _mm_shuffle_epi8(_mm_loadu_si128(p), bswap);
            let mut m1 = _mm_shuffle_epi8(_mm_loadu_si128(p.add(1)), bswap);
            let mut m2 = _mm_shuffle_epi8(_mm_loadu_si128(p.add(2)), bswap);
            let mut m3 = _mm_shuffle_epi8(_mm_loadu_si128(p.add(3)), bswap);

            // Rounds 0..3: E + W in the top lane; the other lanes are ignored by sha1rnds4.
            let mut e = _mm_add_epi32(e0, m0);
            let mut prev = abcd;
            abcd = _mm_sha1rnds4_epu32::<0>(abcd, e);

            // One group of four rounds. `$m` holds this group's words; E for the group is
            // A from four rounds back rotated by 30 (sha1nexte adds it to the top lane).
            macro_rules! group {
                ($f:literal, $m:expr) => {
                    e = _mm_sha1nexte_epu32(prev, $m);
                    prev = abcd;
                    abcd = _mm_sha1rnds4_epu32::<$f>(abcd, e);
                };
            }
            // Message schedule, four words at a time (FIPS 180-4 §6.1.2 step 1):
            // W[t] = rotl1(W[t-3] ^ W[t-8] ^ W[t-14] ^ W[t-16]); msg1 folds W[t-16]^W[t-14],
            // the xor adds W[t-8], msg2 adds W[t-3] and rotates.
            macro_rules! next {
                ($a:ident, $b:ident, $c:ident, $d:ident) => {
                    $a = _mm_sha1msg2_epu32(_mm_xor_si128(_mm_sha1msg1_epu32($a, $b), $c), $d);
                };
            }

            group!(0, m1);
            group!(0, m2);
            group!(0, m3);
            next!(m0, m1, m2, m3);
            group!(0, m0); // rounds 16..19
            next!(m1, m2, m3, m0);
            group!(1, m1); // 20..23
            next!(m2, m3, m0, m1);
            group!(1, m2);
            next!(m3, m0, m1, m2);
            group!(1, m3);
            next!(m0, m1, m2, m3);
            group!(1, m0);
            next!(m1, m2, m3, m0);
            group!(1, m1); // 36..39
            next!(m2, m3, m0, m1);
            group!(2, m2); // 40..43
            next!(m3, m0, m1, m2);
            group!(2, m3);
            next!(m0, m1, m2, m3);
            group!(2, m0);
            next!(m1, m2, m3, m0);
            group!(2, m1);
            next!(m2, m3, m0, m1);
            group!(2, m2); // 56..59
            next!(m3, m0, m1, m2);
            group!(3, m3); // 60..63
            next!(m0, m1, m2, m3);
            group!(3, m0);
            next!(m1, m2, m3, m0);
            group!(3, m1);
            next!(m2, m3, m0, m1);
            group!(3, m2);
            next!(m3, m0, m1, m2);
            group!(3, m3); // 76..79

            // Feed-forward: E of the next state is rotl30(A from four rounds back) + E_save.
            e0 = _mm_sha1nexte_epu32(prev, e_save);
            abcd = _mm_add_epi32(abcd, abcd_save);
        }

        state[0] = _mm_extract_epi32::<3>(abcd) as u32;
        state[1] = _mm_extract_epi32::<2>(abcd) as u32;
        state[2] = _mm_extract_epi32::<1>(abcd) as u32;
        state[3] = _mm_extract_epi32::<0>(abcd) as u32;
        state[4] = _mm_extract_epi32::<3>(e0) as u32;
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use core::arch::aarch64::*;

    /// FIPS 180-4 §4.2.1 round constants, one per 20 rounds.
    const K: [u32; 4] = [0x5A82_7999, 0x6ED9_EBA1, 0x8F1B_BCDC, 0xCA62_C1D6];

    /// SHA-1 compression of whole 64-byte blocks with the AArch64 SHA1 instructions.
    ///
    /// Lane layout: `abcd` holds A in lane 0 up to D in lane 3; E is a scalar. Message vectors
    /// hold four schedule words, the earliest in lane 0.
    ///
    /// # Safety
    /// The CPU must support NEON and the SHA1 crypto extension (Rust feature `sha2`).
    /// `blocks.len()` should be a multiple of 64; a trailing partial block is ignored.
    #[allow(unsafe_code)]
    #[target_feature(enable = "neon,sha2")]
    pub(super) unsafe fn compress(state: &mut [u32; 5], blocks: &[u8]) {
        // SAFETY: `state` has 5 u32s; the load reads the first 4.
        let mut abcd = vld1q_u32(state.as_ptr());
        let mut e0 = state[4];
        let k0 = vdupq_n_u32(K[0]);
        let k1 = vdupq_n_u32(K[1]);
        let k2 = vdupq_n_u32(K[2]);
        let k3 = vdupq_n_u32(K[3]);

        for block in blocks.chunks_exact(64) {
            let abcd_save = abcd;
            let e_save = e0;
            let p = block.as_ptr();
            // SAFETY: `block` is exactly 64 bytes, so the four 16-byte loads are in bounds.
            // vrev32q_u8 turns big-endian words into native ones.
            let mut m0 = vreinterpretq_u32_u8(vrev32q_u8(vld1q_u8(p)));
            let mut m1 = vreinterpretq_u32_u8(vrev32q_u8(vld1q_u8(p.add(16))));
            let mut m2 = vreinterpretq_u32_u8(vrev32q_u8(vld1q_u8(p.add(32))));
            let mut m3 = vreinterpretq_u32_u8(vrev32q_u8(vld1q_u8(p.add(48))));

            let mut e = e0;
            // Four rounds with function `$op` (c = choose, p = parity, m = majority): E for
            // the next group is A from the start of this one rotated by 30 (sha1h).
            macro_rules! group {
                ($op:ident, $k:ident, $m:ident) => {
                    let wk = vaddq_u32($m, $k);
                    let e_next = vsha1h_u32(vgetq_lane_u32::<0>(abcd));
                    abcd = $op(abcd, e, wk);
                    e = e_next;
                };
            }
            // Message schedule (FIPS 180-4 §6.1.2 step 1), four words at a time: su0 folds
            // W[t-16]^W[t-14]^W[t-8], su1 adds W[t-3] and rotates by one.
            macro_rules! next {
                ($a:ident, $b:ident, $c:ident, $d:ident) => {
                    $a = vsha1su1q_u32(vsha1su0q_u32($a, $b, $c), $d);
                };
            }

            group!(vsha1cq_u32, k0, m0); // rounds 0..3
            group!(vsha1cq_u32, k0, m1);
            group!(vsha1cq_u32, k0, m2);
            group!(vsha1cq_u32, k0, m3);
            next!(m0, m1, m2, m3);
            group!(vsha1cq_u32, k0, m0); // 16..19
            next!(m1, m2, m3, m0);
            group!(vsha1pq_u32, k1, m1); // 20..23
            next!(m2, m3, m0, m1);
            group!(vsha1pq_u32, k1, m2);
            next!(m3, m0, m1, m2);
            group!(vsha1pq_u32, k1, m3);
            next!(m0, m1, m2, m3);
            group!(vsha1pq_u32, k1, m0);
            next!(m1, m2, m3, m0);
            group!(vsha1pq_u32, k1, m1); // 36..39
            next!(m2, m3, m0, m1);
            group!(vsha1mq_u32, k2, m2); // 40..43
            next!(m3, m0, m1, m2);
            group!(vsha1mq_u32, k2, m3);
            next!(m0, m1, m2, m3);
            group!(vsha1mq_u32, k2, m0);
            next!(m1, m2, m3, m0);
            group!(vsha1mq_u32, k2, m1);
            next!(m2, m3, m0, m1);
            group!(vsha1mq_u32, k2, m2); // 56..59
            next!(m3, m0, m1, m2);
            group!(vsha1pq_u32, k3, m3); // 60..63
            next!(m0, m1, m2, m3);
            group!(vsha1pq_u32, k3, m0);
            next!(m1, m2, m3, m0);
            group!(vsha1pq_u32, k3, m1);
            next!(m2, m3, m0, m1);
            group!(vsha1pq_u32, k3, m2);
            next!(m3, m0, m1, m2);
            group!(vsha1pq_u32, k3, m3); // 76..79

            abcd = vaddq_u32(abcd, abcd_save);
            e0 = e.wrapping_add(e_save);
        }

        // SAFETY: `state` has room for 4 u32s at its start.
        vst1q_u32(state.as_mut_ptr(), abcd);
        state[4] = e0;
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Every backend this CPU runs (always includes the portable one).
    fn backends() -> Vec<Backend> {
        [Backend::Portable, Backend::X86ShaNi, Backend::Aarch64Sha1]
            .into_iter()
            .filter(|b| b.is_available())
            .collect()
    }

    fn hash_with(b: Backend, data: &[u8]) -> Digest {
        let mut h = Sha1::with_backend(b).expect("backend available");
        h.update(data);
        h.finish()
    }

    /// Hashes `data` on `b`, fed in random-sized pieces (including empty ones).
    fn hash_split(b: Backend, data: &[u8], rng: &mut Rng) -> Digest {
        let mut h = Sha1::with_backend(b).expect("backend available");
        let mut rest = data;
        while !rest.is_empty() {
            let n = match rng.below(4) {
                0 => 0,
                1 => rng.below(8),
                2 => rng.below(130),
                _ => rng.below(rest.len() + 1),
            }
            .min(rest.len());
            let (a, b2) = rest.split_at(n);
            h.update(a);
            rest = b2;
        }
        h.finish()
    }

    #[test]
    fn sha1_known_vector() {
        assert_eq!(
            hex(&sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        let mut h = Sha1::new();
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(h.finish(), sha1(b"abc"));
    }

    #[test]
    fn every_backend_known_vectors() {
        let million_a = vec![b'a'; 1_000_000];
        let vectors: [(&[u8], &str); 4] = [
            (b"", "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
            (b"abc", "a9993e364706816aba3e25717850c26c9cd0d89d"),
            (
                // FIPS 180 448-bit vector: exactly 56 bytes, so padding spills to a 2nd block.
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
                "84983e441c3bd26ebaae4aa1f95129e5e54670f1",
            ),
            (&million_a, "34aa973cd4c4daa4f61eeb2bdbad27316534016f"),
        ];
        for b in backends() {
            for (input, want) in vectors {
                assert_eq!(hex(&hash_with(b, input)), want, "{b:?} len {}", input.len());
            }
            // The million 'a's fed one byte at a time exercises the buffered path.
            let mut h = Sha1::with_backend(b).unwrap();
            for _ in 0..1_000_000 {
                h.update(b"a");
            }
            assert_eq!(hex(&h.finish()), vectors[3].1, "{b:?} bytewise");
        }
    }

    #[test]
    fn detected_backend_matches_cpu() {
        let b = backend();
        assert_eq!(backend(), b, "cached decision is stable");
        assert!(b.is_available());
        assert!(Sha1::with_backend(Backend::Portable).is_some());
        // On x86 the choice must follow the CPU flags; elsewhere only the portable path or
        // the arch's own one may be chosen.
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        {
            let has = std::arch::is_x86_feature_detected!("sha")
                && std::arch::is_x86_feature_detected!("ssse3")
                && std::arch::is_x86_feature_detected!("sse4.1");
            assert_eq!(b == Backend::X86ShaNi, has);
            assert!(Sha1::with_backend(Backend::Aarch64Sha1).is_none());
        }
        #[cfg(target_arch = "aarch64")]
        assert!(Sha1::with_backend(Backend::X86ShaNi).is_none());
        eprintln!("sha1 backend on this machine: {}", b.name());
    }

    #[test]
    fn hardware_matches_portable_every_length_and_split() {
        let mut rng = Rng::new(0x05EE_D5A1);
        let mut data = vec![0u8; 1001];
        for len in 0..=1000 {
            rng.fill(&mut data[..len]);
            let input = &data[..len];
            let want = hash_with(Backend::Portable, input);
            for b in backends() {
                assert_eq!(hash_with(b, input), want, "{b:?} len {len} one update");
                assert_eq!(
                    hash_split(b, input, &mut rng),
                    want,
                    "{b:?} len {len} split"
                );
            }
        }
    }

    #[test]
    fn hardware_matches_portable_large_inputs() {
        let mut rng = Rng::new(77);
        for len in [4096, 16 * 1024 + 13, 65_536 - 1, 262_144 + 55, 1 << 20] {
            let mut data = vec![0u8; len];
            rng.fill(&mut data);
            let want = hash_with(Backend::Portable, &data);
            for b in backends() {
                assert_eq!(hash_with(b, &data), want, "{b:?} len {len}");
                for _ in 0..3 {
                    assert_eq!(
                        hash_split(b, &data, &mut rng),
                        want,
                        "{b:?} len {len} split"
                    );
                }
            }
        }
    }

    #[test]
    fn finish_leaves_hasher_usable() {
        for b in backends() {
            let mut h = Sha1::with_backend(b).unwrap();
            h.update(b"ab");
            let mid = h.finish();
            assert_eq!(mid, sha1(b"ab"));
            h.update(b"c");
            assert_eq!(h.finish(), sha1(b"abc"), "{b:?}");
            let c = h.clone();
            assert_eq!(c.finish(), h.finish());
        }
        assert_eq!(Sha1::default().finish(), sha1(b""));
    }

    /// Throughput of each backend over 256 MiB. Run with
    /// `cargo test --release --lib sha1_throughput -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn sha1_throughput() {
        // A benchmark needs a wall clock: this ignored test is the one clock reader outside
        // engine.rs, and it never runs in `cargo test` unless asked for.
        const TOTAL: usize = 256 << 20;
        const CHUNK: usize = 1 << 20;
        let mut data = vec![0u8; CHUNK];
        Rng::new(1).fill(&mut data);
        for b in backends() {
            let mut h = Sha1::with_backend(b).unwrap();
            let start = std::time::Instant::now();
            for _ in 0..TOTAL / CHUNK {
                h.update(&data);
            }
            let d = std::hint::black_box(h.finish());
            let secs = start.elapsed().as_secs_f64();
            println!(
                "sha1 {:<22} {:>8.1} MB/s ({} MiB in {:.3} s, {})",
                b.name(),
                TOTAL as f64 / 1e6 / secs,
                TOTAL >> 20,
                secs,
                &hex(&d)[..8]
            );
        }
    }
}
