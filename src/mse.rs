//! Layer 2: MSE/PE (Message Stream Encryption, a.k.a. Protocol Encryption), the de facto
//! BitTorrent connection obfuscation every major client speaks.
//!
//! What it is for: the handshake that runs on a TCP connection *before* the BEP 3 handshake —
//! a 768-bit Diffie–Hellman exchange, then a negotiation (keyed on the torrent's info-hash,
//! "SKEY") of whether the rest of the stream is RC4-encrypted or plaintext. It holds the small
//! big-number code for the DH modexp and the RC4 cipher, both hand-written (no crypto crates).
//!
//! What it must not do: this is a pure bytes-in/bytes-out state machine. It touches no socket,
//! file or clock, and it makes no random numbers: the private key and the padding come in from
//! the caller (the engine draws them from the OS), so tests are deterministic. Timeouts (the
//! spec's "30 seconds") are the caller's job. Nothing here panics on remote input: every length
//! from the wire is checked against a named cap, and both synchronisation scans are bounded.
//!
//! The spec (the Vuze/Azureus wiki page "Message Stream Encryption"), in short:
//!
//! ```text
//! 1 A->B: Ya, PadA
//! 2 B->A: Yb, PadB
//! 3 A->B: HASH('req1', S), HASH('req2', SKEY) xor HASH('req3', S),
//!         ENCRYPT(VC, crypto_provide, len(PadC), PadC, len(IA)), ENCRYPT(IA)
//! 4 B->A: ENCRYPT(VC, crypto_select, len(PadD), PadD), ENCRYPT2(payload stream)
//! 5 A->B: ENCRYPT2(payload stream)
//! ```
//!
//! `A` is the initiator (it dialled), `B` the responder. Y = G^X mod P, S = Y_peer^X mod P,
//! HASH = SHA-1, ENCRYPT = RC4 keyed with HASH('keyA', S, SKEY) for A->B and HASH('keyB', S,
//! SKEY) for B->A, first 1024 keystream bytes discarded. ENCRYPT2 is RC4 (continuing the same
//! keystreams) or nothing, as crypto_select says. B synchronises on HASH('req1', S) because it
//! cannot know len(PadA); A synchronises on ENCRYPT(VC) because it cannot know len(PadB).

use std::fmt;

use crate::hash::{Digest, Sha1};

// ---------------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------------

/// Bytes in a DH public key or shared secret: the prime is 768 bits. Keys go on the wire
/// big-endian, zero-padded to exactly this length (spec: "Ya, Yb ... 96 bytes").
pub const KEY_LEN: usize = 96;
/// Bytes of a private key. Spec: "Xa and Xb are a variable size random integers. They are the
/// private key for each side and have to be discarded after the DH handshake is done. Minimum
/// length is 128 bit. Anything beyond 180 bit is not believed to add any further security";
/// every common client uses 160 bits.
pub const PRIVATE_KEY_LEN: usize = 20;
/// Spec: "PadA, PadB: Random data with a random length of 0 to 512 bytes each"; PadC and PadD
/// are 2-byte-length-prefixed but "within the same bounds". Also the cap on the lengths we
/// accept from the wire: anything longer is a broken or hostile peer.
pub const MAX_PAD_LEN: usize = 512;
/// Cap on len(IA), the initial payload that rides in step 3. Why this size: in practice IA is
/// the 68-byte BEP 3 handshake, sometimes followed by a few early messages (an extension
/// handshake); 1 KiB leaves room for those while bounding what a half-open connection can make
/// us buffer before we know which torrent it is for.
pub const MAX_IA_LEN: usize = 1024;
/// Spec: "VC is a verification constant that is used to verify whether the other side knows S
/// and SKEY and thus defeats replay attacks of the SKEY hash. As of this version VC is a
/// String of 8 bytes set to 0x00."
const VC: [u8; 8] = [0; 8];
/// B scans for HASH('req1', S) in at most PadA (≤ 512) + 20 bytes after Ya. Spec, early
/// termination: "if A didn't send the correct S hash within 628 bytes after the connection
/// start" (628 = 96 + 512 + 20).
const REQ1_SCAN_LIMIT: usize = MAX_PAD_LEN + 20;
/// A scans for ENCRYPT(VC) in at most PadB (≤ 512) + 8 bytes after Yb (96 + 512 + 8 = 616
/// after the connection start).
const VC_SCAN_LIMIT: usize = MAX_PAD_LEN + 8;
/// Spec: "ARCFOUR-drop1024" — the first 1024 keystream bytes are discarded (early RC4 output
/// is biased).
const RC4_DROP: usize = 1024;
/// Bytes of a step-3 header after the two hashes: VC (8), crypto_provide (4), len(PadC) (2).
const PROVIDE_LEN: usize = 8 + 4 + 2;
/// Bytes of step 4 after ENCRYPT(VC): crypto_select (4), len(PadD) (2).
const SELECT_LEN: usize = 4 + 2;

const fn hex_nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => panic!("bad hex digit in constant"),
    }
}

const fn hex_key(s: &[u8]) -> [u8; KEY_LEN] {
    assert!(s.len() == 2 * KEY_LEN);
    let mut out = [0u8; KEY_LEN];
    let mut i = 0;
    while i < KEY_LEN {
        out[i] = (hex_nibble(s[2 * i]) << 4) | hex_nibble(s[2 * i + 1]);
        i += 1;
    }
    out
}

/// The spec's 768-bit prime P (big-endian). G = 2.
pub const PRIME: [u8; KEY_LEN] = hex_key(
    b"FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD1\
      29024E088A67CC74020BBEA63B139B22514A08798E3404DD\
      EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245\
      E485B576625E7EC6F44C42E9A63A36210000000000090563",
);

// ---------------------------------------------------------------------------------------------
// Big numbers: Montgomery modexp modulo P with 32-bit limbs (u64 intermediates, so it is cheap
// on the 32-bit routers we target). Not constant-time: MSE is obfuscation, and each private
// key is used for one connection only.
// ---------------------------------------------------------------------------------------------

const LIMBS: usize = KEY_LEN / 4;
type Limbs = [u32; LIMBS];

/// Big-endian bytes to little-endian limbs.
fn limbs_from_be(b: &[u8; KEY_LEN]) -> Limbs {
    let mut l = [0u32; LIMBS];
    for (k, chunk) in b.rchunks_exact(4).enumerate() {
        if let (Some(slot), Ok(word)) = (l.get_mut(k), <[u8; 4]>::try_from(chunk)) {
            *slot = u32::from_be_bytes(word);
        }
    }
    l
}

fn limbs_to_be(l: &Limbs) -> [u8; KEY_LEN] {
    let mut b = [0u8; KEY_LEN];
    for (chunk, limb) in b.rchunks_exact_mut(4).zip(l.iter()) {
        chunk.copy_from_slice(&limb.to_be_bytes());
    }
    b
}

/// a >= b
fn limbs_ge(a: &Limbs, b: &Limbs) -> bool {
    for (x, y) in a.iter().rev().zip(b.iter().rev()) {
        if x != y {
            return x > y;
        }
    }
    true
}

/// a -= b (mod 2^768); returns the borrow out.
fn limbs_sub(a: &mut Limbs, b: &Limbs) -> bool {
    let mut borrow = 0u64;
    for (x, y) in a.iter_mut().zip(b.iter()) {
        let d = (*x as u64).wrapping_sub(*y as u64).wrapping_sub(borrow);
        *x = d as u32;
        borrow = (d >> 63) & 1;
    }
    borrow != 0
}

/// The modulus with its Montgomery constants (R = 2^768).
struct Mont {
    n: Limbs,
    /// -n^-1 mod 2^32
    n0: u32,
    /// R mod n: Montgomery form of 1.
    one: Limbs,
    /// R^2 mod n: multiplying by it converts into Montgomery form.
    r2: Limbs,
}

impl Mont {
    fn new(modulus: &[u8; KEY_LEN]) -> Mont {
        let n = limbs_from_be(modulus);
        // Newton's iteration for the inverse of n[0] mod 2^32 (n is odd): each step doubles
        // the correct low bits, 1 -> 2 -> 4 -> ... -> 32 needs five steps; do six.
        let mut inv: u32 = 1;
        for _ in 0..6 {
            inv = inv.wrapping_mul(2u32.wrapping_sub(n[0].wrapping_mul(inv)));
        }
        // P's top bit is set, so 2^767 < P < 2^768 and R mod P = 2^768 - P, which is the
        // two's-complement negation of P in 768 bits.
        let mut one = [0u32; LIMBS];
        limbs_sub(&mut one, &n);
        // R^2 mod P: double R mod P 768 times, reducing each time.
        let mut r2 = one;
        for _ in 0..KEY_LEN * 8 {
            let mut carry = 0u32;
            for limb in r2.iter_mut() {
                let top = *limb >> 31;
                *limb = (*limb << 1) | carry;
                carry = top;
            }
            // The true value is < 2P < 2^769: subtract P once if it reached P.
            if carry != 0 || limbs_ge(&r2, &n) {
                limbs_sub(&mut r2, &n);
            }
        }
        Mont {
            n,
            n0: inv.wrapping_neg(),
            one,
            r2,
        }
    }

    /// a * b * R^-1 mod n for a, b < n (CIOS Montgomery multiplication).
    fn mul(&self, a: &Limbs, b: &Limbs) -> Limbs {
        let mut t = [0u32; LIMBS + 2];
        for &bi in b.iter() {
            // t += a * bi
            let mut carry = 0u64;
            for (tj, &aj) in t.iter_mut().zip(a.iter()) {
                let v = *tj as u64 + aj as u64 * bi as u64 + carry;
                *tj = v as u32;
                carry = v >> 32;
            }
            let v = t[LIMBS] as u64 + carry;
            t[LIMBS] = v as u32;
            t[LIMBS + 1] = (v >> 32) as u32;
            // t = (t + m * n) / 2^32, with m chosen so the low limb becomes zero.
            let m = t[0].wrapping_mul(self.n0);
            let mut carry = (t[0] as u64 + m as u64 * self.n[0] as u64) >> 32;
            for j in 1..LIMBS {
                let v = t[j] as u64 + m as u64 * self.n[j] as u64 + carry;
                t[j - 1] = v as u32;
                carry = v >> 32;
            }
            let v = t[LIMBS] as u64 + carry;
            t[LIMBS - 1] = v as u32;
            t[LIMBS] = t[LIMBS + 1] + (v >> 32) as u32;
        }
        let mut r = [0u32; LIMBS];
        r.copy_from_slice(&t[..LIMBS]);
        // The result is < 2n: one conditional subtraction brings it below n.
        if t[LIMBS] != 0 || limbs_ge(&r, &self.n) {
            limbs_sub(&mut r, &self.n);
        }
        r
    }
}

/// base^exp mod P, all big-endian. `exp` may be any length. A base at or above P is reduced
/// first (any 96-byte value is below 2P).
pub fn mod_pow(base: &[u8; KEY_LEN], exp: &[u8]) -> [u8; KEY_LEN] {
    let m = Mont::new(&PRIME);
    let mut b = limbs_from_be(base);
    if limbs_ge(&b, &m.n) {
        limbs_sub(&mut b, &m.n);
    }
    let bm = m.mul(&b, &m.r2);
    let mut acc = m.one;
    for byte in exp {
        for bit in (0..8).rev() {
            acc = m.mul(&acc, &acc);
            if (byte >> bit) & 1 == 1 {
                acc = m.mul(&acc, &bm);
            }
        }
    }
    let mut unit = [0u32; LIMBS];
    unit[0] = 1;
    limbs_to_be(&m.mul(&acc, &unit))
}

/// Our DH public key Y = G^X mod P for private key X.
pub fn dh_public(private_key: &[u8; PRIVATE_KEY_LEN]) -> [u8; KEY_LEN] {
    let mut g = [0u8; KEY_LEN];
    g[KEY_LEN - 1] = 2;
    mod_pow(&g, private_key)
}

/// The shared secret S = Y_peer^X mod P. Rejects a peer key outside 2..=P-2: 0, 1 and P-1
/// would force S into {0, 1, P-1} and values at or above P are not valid encodings.
pub fn dh_secret(
    peer_public: &[u8; KEY_LEN],
    private_key: &[u8; PRIVATE_KEY_LEN],
) -> Result<[u8; KEY_LEN], MseError> {
    let y = limbs_from_be(peer_public);
    let p = limbs_from_be(&PRIME);
    let mut p_minus_1 = p;
    limbs_sub(&mut p_minus_1, &{
        let mut one = [0u32; LIMBS];
        one[0] = 1;
        one
    });
    let too_small = y.iter().skip(1).all(|&l| l == 0) && y[0] <= 1;
    if too_small || limbs_ge(&y, &p_minus_1) {
        return Err(MseError::BadPublicKey);
    }
    Ok(mod_pow(peer_public, private_key))
}

// ---------------------------------------------------------------------------------------------
// RC4
// ---------------------------------------------------------------------------------------------

/// The RC4 (ARCFOUR) stream cipher. Encryption and decryption are the same operation.
#[derive(Clone)]
pub struct Rc4 {
    s: [u8; 256],
    i: u8,
    j: u8,
}

impl fmt::Debug for Rc4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key state.
        f.write_str("Rc4 { .. }")
    }
}

impl Rc4 {
    /// Plain RC4 keyed with `key` (an empty key acts as a single zero byte).
    pub fn new(key: &[u8]) -> Rc4 {
        let mut s = [0u8; 256];
        for (i, v) in s.iter_mut().enumerate() {
            *v = i as u8;
        }
        let mut j: u8 = 0;
        let klen = key.len().max(1);
        for i in 0..256 {
            let k = key.get(i % klen).copied().unwrap_or(0);
            j = j.wrapping_add(s[i]).wrapping_add(k);
            s.swap(i, j as usize);
        }
        Rc4 { s, i: 0, j: 0 }
    }

    /// RC4 with the first 1024 keystream bytes discarded, as MSE uses it.
    pub fn new_drop1024(key: &[u8]) -> Rc4 {
        let mut r = Rc4::new(key);
        for _ in 0..RC4_DROP {
            r.next_byte();
        }
        r
    }

    fn next_byte(&mut self) -> u8 {
        self.i = self.i.wrapping_add(1);
        let si = self.s[self.i as usize];
        self.j = self.j.wrapping_add(si);
        self.s.swap(self.i as usize, self.j as usize);
        let k = self.s[self.i as usize].wrapping_add(self.s[self.j as usize]);
        self.s[k as usize]
    }

    /// XOR `data` with the next `data.len()` keystream bytes, in place. The state lives in
    /// locals for the loop (one load and two stores of the table per byte), which keeps this
    /// fast even in the size-optimised release build.
    pub fn apply(&mut self, data: &mut [u8]) {
        let (mut i, mut j) = (self.i, self.j);
        let s = &mut self.s;
        for b in data.iter_mut() {
            i = i.wrapping_add(1);
            let si = s[i as usize];
            j = j.wrapping_add(si);
            let sj = s[j as usize];
            s[i as usize] = sj;
            s[j as usize] = si;
            *b ^= s[si.wrapping_add(sj) as usize];
        }
        self.i = i;
        self.j = j;
    }
}

// ---------------------------------------------------------------------------------------------
// Negotiation vocabulary
// ---------------------------------------------------------------------------------------------

/// One crypto method of crypto_provide / crypto_select.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crypto {
    /// Spec bit 0x01: after the handshake the stream continues unencrypted.
    Plain,
    /// Spec bit 0x02: after the handshake the stream continues RC4-encrypted.
    Rc4,
}

impl Crypto {
    pub fn bit(self) -> u32 {
        match self {
            Crypto::Plain => 0x01,
            Crypto::Rc4 => 0x02,
        }
    }
}

/// A set of crypto methods: what an initiator provides or what a responder allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CryptoSet(u32);

impl CryptoSet {
    pub const PLAIN: CryptoSet = CryptoSet(0x01);
    pub const RC4: CryptoSet = CryptoSet(0x02);
    pub const BOTH: CryptoSet = CryptoSet(0x03);

    /// Keeps only the bits this implementation knows (spec: "The remaining bits are reserved
    /// for future use").
    pub fn from_bits(bits: u32) -> CryptoSet {
        CryptoSet(bits & 0x03)
    }
    pub fn bits(self) -> u32 {
        self.0
    }
    pub fn contains(self, c: Crypto) -> bool {
        self.0 & c.bit() != 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// What a finished handshake hands back to the caller.
#[derive(Debug)]
pub struct Outcome {
    /// SKEY: the torrent this connection is for.
    pub info_hash: [u8; 20],
    pub selected: Crypto,
    /// `(decrypt incoming, encrypt outgoing)`, positioned just past the handshake; `None`
    /// when `selected` is `Plain`.
    pub cipher: Option<(Rc4, Rc4)>,
    /// IA as received, decrypted (responder only; empty for the initiator).
    pub initial_payload: Vec<u8>,
    /// Bytes that followed the handshake in the last `handle_bytes` call, already decrypted
    /// when `selected` is `Rc4`: the start of the payload stream.
    pub leftover: Vec<u8>,
}

/// Coarse progress of a handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    InProgress,
    Done,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MseError {
    /// Our own pad (PadA/PadB) given to a constructor, or the peer's PadC/PadD, is too long.
    PadTooLong { len: usize },
    /// Our IA given to the initiator, or the peer's len(IA), is over `MAX_IA_LEN`.
    PayloadTooLong { len: usize },
    /// A constructor got an empty `CryptoSet`.
    NoCryptoOffered,
    /// The peer's DH public key is outside 2..=P-2.
    BadPublicKey,
    /// Responder: HASH('req1', S) not found within PadA's bounds.
    NoReq1Sync,
    /// Initiator: ENCRYPT(VC) not found within PadB's bounds.
    NoVcSync,
    /// Responder: req2 ^ req3 matches none of our info-hashes.
    UnknownInfoHash,
    /// Responder: the decrypted VC is not zero.
    BadVc,
    /// Responder: none of the peer's crypto_provide bits is one we allow.
    NoCommonCrypto { provided: u32 },
    /// Initiator: crypto_select is not exactly one method we provided.
    BadCryptoSelect { selected: u32 },
    /// `handle_bytes` after an earlier error.
    Failed,
}

impl fmt::Display for MseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MseError::PadTooLong { len } => {
                write!(f, "mse padding of {len} bytes exceeds {MAX_PAD_LEN}")
            }
            MseError::PayloadTooLong { len } => {
                write!(f, "mse initial payload of {len} bytes exceeds {MAX_IA_LEN}")
            }
            MseError::NoCryptoOffered => f.write_str("mse needs at least one crypto method"),
            MseError::BadPublicKey => f.write_str("mse peer public key out of range"),
            MseError::NoReq1Sync => write!(
                f,
                "mse req1 hash not found within {REQ1_SCAN_LIMIT} bytes after the peer's key"
            ),
            MseError::NoVcSync => write!(
                f,
                "mse verification constant not found within {VC_SCAN_LIMIT} bytes after the peer's key"
            ),
            MseError::UnknownInfoHash => f.write_str("mse peer asked for a torrent we do not have"),
            MseError::BadVc => f.write_str("mse verification constant is not zero"),
            MseError::NoCommonCrypto { provided } => {
                write!(f, "mse peer provides crypto {provided:#x}, none of which we allow")
            }
            MseError::BadCryptoSelect { selected } => {
                write!(f, "mse peer selected crypto {selected:#x}, which we did not provide")
            }
            MseError::Failed => f.write_str("mse handshake already failed"),
        }
    }
}

impl std::error::Error for MseError {}

/// BEP 3: a plaintext connection starts with byte 19 then "BitTorrent protocol". Needs the
/// first 20 bytes (false for anything shorter). An MSE opener is a random-looking 96-byte key,
/// so the incoming side waits for 20 bytes and then picks plaintext or `Handshake::responder`.
/// Waiting never stalls: both openers are longer than 20 bytes.
pub fn looks_like_plain_bt(first: &[u8]) -> bool {
    match first.get(..20) {
        Some(head) => {
            head.first() == Some(&19) && head.get(1..) == Some(&b"BitTorrent protocol"[..])
        }
        None => false,
    }
}

// ---------------------------------------------------------------------------------------------
// The handshake state machine
// ---------------------------------------------------------------------------------------------

fn hash2(tag: &[u8], a: &[u8]) -> Digest {
    let mut h = Sha1::new();
    h.update(tag);
    h.update(a);
    h.finish()
}

fn derive_key(tag: &[u8], s: &[u8; KEY_LEN], skey: &[u8; 20]) -> Digest {
    let mut h = Sha1::new();
    h.update(tag);
    h.update(s);
    h.update(skey);
    h.finish()
}

fn xor20(a: &Digest, b: &Digest) -> Digest {
    let mut o = [0u8; 20];
    for ((o, x), y) in o.iter_mut().zip(a).zip(b) {
        *o = x ^ y;
    }
    o
}

fn be_u16(b: &[u8]) -> usize {
    match b {
        [x, y, ..] => u16::from_be_bytes([*x, *y]) as usize,
        _ => 0,
    }
}

fn be_u32(b: &[u8]) -> u32 {
    match b {
        [a, b, c, d, ..] => u32::from_be_bytes([*a, *b, *c, *d]),
        _ => 0,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    // Responder (B).
    /// Collecting Ya (96 bytes).
    ReadYa,
    /// Scanning PadA for HASH('req1', S).
    ScanReq1,
    /// Collecting HASH('req2', SKEY) xor HASH('req3', S).
    ReadSkey,
    /// Decrypting VC, crypto_provide, len(PadC).
    ReadProvide,
    /// Decrypting and discarding PadC; this many bytes remain.
    ReadPadC(usize),
    /// Decrypting len(IA).
    ReadIaLen,
    /// Decrypting IA; this many bytes remain.
    ReadIa(usize),
    // Initiator (A).
    /// Collecting Yb (96 bytes).
    ReadYb,
    /// Scanning PadB for ENCRYPT(VC).
    ScanVc,
    /// Decrypting crypto_select, len(PadD).
    ReadSelect,
    /// Decrypting and discarding PadD; this many bytes remain.
    ReadPadD(usize),
    Done,
    Failed,
}

/// An MSE handshake, either side. Drive it with `handle_bytes` (what the peer sent) and
/// `poll_transmit` (what to send), calling `poll_transmit` once after construction and after
/// every `handle_bytes`; when `state()` is `Done`, `take_outcome` gives the negotiated stream.
/// Send whatever `poll_transmit` gave before any payload: the responder's step 4 is queued in
/// the same `handle_bytes` call that finishes it.
///
/// Byte ownership: while in progress, `handle_bytes` consumes all its input; bytes after the
/// end of the handshake in that same call land in `Outcome::leftover`. Once done it consumes
/// nothing (returns 0): the stream belongs to the caller and the ciphers in `Outcome`.
pub struct Handshake {
    step: Step,
    responder: bool,
    /// Responder: PadB, sent once Ya has arrived.
    pad: Vec<u8>,
    private_key: [u8; PRIVATE_KEY_LEN],
    /// Responder: (info-hash, HASH('req2', info-hash)) for each torrent we serve.
    /// Initiator: the one torrent, its hash unused.
    torrents: Vec<([u8; 20], Digest)>,
    /// Initiator: crypto_provide. Responder: the methods we allow.
    crypto: CryptoSet,
    /// Initiator: IA to send. Responder: IA received.
    ia: Vec<u8>,
    /// Bytes of the field being collected or scanned.
    buf: Vec<u8>,
    /// Queued for `poll_transmit`.
    out: Vec<u8>,
    /// S, once both keys are known.
    secret: [u8; KEY_LEN],
    /// Responder: HASH('req1', S), what `ScanReq1` looks for. Initiator: unused.
    req1: Digest,
    /// Initiator: ENCRYPT(VC) under keyB, what `ScanVc` looks for.
    enc_vc: [u8; 8],
    rc4_in: Option<Rc4>,
    rc4_out: Option<Rc4>,
    info_hash: [u8; 20],
    selected: Option<Crypto>,
    leftover: Vec<u8>,
    outcome_taken: bool,
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("step", &self.step)
            .field("selected", &self.selected)
            .finish_non_exhaustive()
    }
}

impl Handshake {
    fn blank(private_key: [u8; PRIVATE_KEY_LEN], crypto: CryptoSet, step: Step) -> Handshake {
        Handshake {
            step,
            responder: step == Step::ReadYa,
            pad: Vec::new(),
            private_key,
            torrents: Vec::new(),
            crypto,
            ia: Vec::new(),
            buf: Vec::with_capacity(KEY_LEN),
            out: Vec::new(),
            secret: [0; KEY_LEN],
            req1: [0; 20],
            enc_vc: [0; 8],
            rc4_in: None,
            rc4_out: None,
            info_hash: [0; 20],
            selected: None,
            leftover: Vec::new(),
            outcome_taken: false,
        }
    }

    /// We dialled a peer for `info_hash`. `pad` is PadA (random bytes from the OS, at most
    /// `MAX_PAD_LEN`); `provide` is crypto_provide; `initial_payload` is IA (usually our BEP 3
    /// handshake, at most `MAX_IA_LEN`), always sent RC4-encrypted whatever the peer selects.
    /// Step 1 (Ya, PadA) is queued at once.
    pub fn initiator(
        info_hash: [u8; 20],
        private_key: [u8; PRIVATE_KEY_LEN],
        pad: &[u8],
        provide: CryptoSet,
        initial_payload: &[u8],
    ) -> Result<Handshake, MseError> {
        if pad.len() > MAX_PAD_LEN {
            return Err(MseError::PadTooLong { len: pad.len() });
        }
        if initial_payload.len() > MAX_IA_LEN {
            return Err(MseError::PayloadTooLong {
                len: initial_payload.len(),
            });
        }
        if provide.is_empty() {
            return Err(MseError::NoCryptoOffered);
        }
        let mut h = Handshake::blank(private_key, provide, Step::ReadYb);
        h.info_hash = info_hash;
        h.torrents.push((info_hash, [0; 20]));
        h.ia = initial_payload.to_vec();
        h.out.extend_from_slice(&dh_public(&private_key));
        h.out.extend_from_slice(pad);
        Ok(h)
    }

    /// A peer dialled us and did not open with a plaintext BEP 3 handshake
    /// (`looks_like_plain_bt`). `info_hashes` are the torrents we serve; `pad` is PadB;
    /// `allowed` the methods we accept (RC4 is chosen when both sides allow it). Step 2 (Yb,
    /// PadB) is queued once the peer's Ya has arrived.
    pub fn responder(
        info_hashes: &[[u8; 20]],
        private_key: [u8; PRIVATE_KEY_LEN],
        pad: &[u8],
        allowed: CryptoSet,
    ) -> Result<Handshake, MseError> {
        if pad.len() > MAX_PAD_LEN {
            return Err(MseError::PadTooLong { len: pad.len() });
        }
        if allowed.is_empty() {
            return Err(MseError::NoCryptoOffered);
        }
        let mut h = Handshake::blank(private_key, allowed, Step::ReadYa);
        h.torrents = info_hashes
            .iter()
            .map(|ih| (*ih, hash2(b"req2", ih)))
            .collect();
        h.pad = pad.to_vec();
        Ok(h)
    }

    pub fn state(&self) -> State {
        match self.step {
            Step::Done => State::Done,
            Step::Failed => State::Failed,
            _ => State::InProgress,
        }
    }

    pub fn is_done(&self) -> bool {
        self.step == Step::Done
    }

    /// Append everything queued for the peer to `out`.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.out);
    }

    /// The negotiated stream, once (`None` before `Done` and after the first call).
    pub fn take_outcome(&mut self) -> Option<Outcome> {
        if self.step != Step::Done || self.outcome_taken {
            return None;
        }
        let selected = self.selected?;
        self.outcome_taken = true;
        let cipher = match (selected, self.rc4_in.take(), self.rc4_out.take()) {
            (Crypto::Rc4, Some(i), Some(o)) => Some((i, o)),
            _ => None,
        };
        let initial_payload = if self.responder {
            std::mem::take(&mut self.ia)
        } else {
            Vec::new()
        };
        Some(Outcome {
            info_hash: self.info_hash,
            selected,
            cipher,
            initial_payload,
            leftover: std::mem::take(&mut self.leftover),
        })
    }

    /// Feed bytes from the peer. Returns how many were consumed: all of them while the
    /// handshake is in progress (bytes past its end go to `Outcome::leftover`), 0 once done.
    pub fn handle_bytes(&mut self, input: &[u8]) -> Result<usize, MseError> {
        match self.step {
            Step::Done => return Ok(0),
            Step::Failed => return Err(MseError::Failed),
            _ => {}
        }
        for &raw in input {
            if self.step == Step::Done {
                let b = match (self.selected, self.rc4_in.as_mut()) {
                    (Some(Crypto::Rc4), Some(c)) => {
                        let mut one = [raw];
                        c.apply(&mut one);
                        one[0]
                    }
                    _ => raw,
                };
                self.leftover.push(b);
                continue;
            }
            if let Err(e) = self.step_byte(raw) {
                self.step = Step::Failed;
                self.out.clear();
                return Err(e);
            }
        }
        Ok(input.len())
    }

    fn decrypt(&mut self, raw: u8) -> u8 {
        match self.rc4_in.as_mut() {
            Some(c) => {
                let mut one = [raw];
                c.apply(&mut one);
                one[0]
            }
            None => raw,
        }
    }

    fn step_byte(&mut self, raw: u8) -> Result<(), MseError> {
        match self.step {
            Step::ReadYa => {
                self.buf.push(raw);
                if self.buf.len() == KEY_LEN {
                    self.on_ya()?;
                }
            }
            Step::ScanReq1 => {
                self.buf.push(raw);
                if self.buf.ends_with(&self.req1) {
                    self.buf.clear();
                    self.step = Step::ReadSkey;
                } else if self.buf.len() >= REQ1_SCAN_LIMIT {
                    return Err(MseError::NoReq1Sync);
                }
            }
            Step::ReadSkey => {
                self.buf.push(raw);
                if self.buf.len() == 20 {
                    self.on_skey()?;
                }
            }
            Step::ReadProvide => {
                let b = self.decrypt(raw);
                self.buf.push(b);
                if self.buf.len() == PROVIDE_LEN {
                    self.on_provide()?;
                }
            }
            Step::ReadPadC(left) => {
                self.decrypt(raw);
                self.step = if left > 1 {
                    Step::ReadPadC(left - 1)
                } else {
                    Step::ReadIaLen
                };
            }
            Step::ReadIaLen => {
                let b = self.decrypt(raw);
                self.buf.push(b);
                if self.buf.len() == 2 {
                    let len = be_u16(&self.buf);
                    self.buf.clear();
                    if len > MAX_IA_LEN {
                        return Err(MseError::PayloadTooLong { len });
                    }
                    if len == 0 {
                        self.finish_responder();
                    } else {
                        self.step = Step::ReadIa(len);
                    }
                }
            }
            Step::ReadIa(left) => {
                let b = self.decrypt(raw);
                self.ia.push(b);
                if left > 1 {
                    self.step = Step::ReadIa(left - 1);
                } else {
                    self.finish_responder();
                }
            }
            Step::ReadYb => {
                self.buf.push(raw);
                if self.buf.len() == KEY_LEN {
                    self.on_yb()?;
                }
            }
            Step::ScanVc => {
                self.buf.push(raw);
                if self.buf.ends_with(&self.enc_vc) {
                    self.buf.clear();
                    self.step = Step::ReadSelect;
                } else if self.buf.len() >= VC_SCAN_LIMIT {
                    return Err(MseError::NoVcSync);
                }
            }
            Step::ReadSelect => {
                let b = self.decrypt(raw);
                self.buf.push(b);
                if self.buf.len() == SELECT_LEN {
                    self.on_select()?;
                }
            }
            Step::ReadPadD(left) => {
                self.decrypt(raw);
                if left > 1 {
                    self.step = Step::ReadPadD(left - 1);
                } else {
                    self.step = Step::Done;
                }
            }
            Step::Done | Step::Failed => {}
        }
        Ok(())
    }

    fn take_key(&mut self) -> [u8; KEY_LEN] {
        let mut y = [0u8; KEY_LEN];
        if self.buf.len() == KEY_LEN {
            y.copy_from_slice(&self.buf);
        }
        self.buf.clear();
        y
    }

    /// Responder got Ya: compute S, send Yb + PadB, start scanning for HASH('req1', S).
    fn on_ya(&mut self) -> Result<(), MseError> {
        let ya = self.take_key();
        self.secret = dh_secret(&ya, &self.private_key)?;
        self.req1 = hash2(b"req1", &self.secret);
        self.out.extend_from_slice(&dh_public(&self.private_key));
        self.out.extend_from_slice(&self.pad);
        self.pad = Vec::new();
        self.step = Step::ScanReq1;
        Ok(())
    }

    /// Responder got HASH('req2', SKEY) xor HASH('req3', S): find SKEY among our torrents.
    fn on_skey(&mut self) -> Result<(), MseError> {
        let mut got = [0u8; 20];
        got.copy_from_slice(self.buf.get(..20).unwrap_or(&[0; 20]));
        self.buf.clear();
        let req2 = xor20(&got, &hash2(b"req3", &self.secret));
        let (ih, _) = *self
            .torrents
            .iter()
            .find(|(_, r2)| *r2 == req2)
            .ok_or(MseError::UnknownInfoHash)?;
        self.info_hash = ih;
        // B decrypts with keyA (A->B) and encrypts with keyB (B->A).
        self.rc4_in = Some(Rc4::new_drop1024(&derive_key(b"keyA", &self.secret, &ih)));
        self.rc4_out = Some(Rc4::new_drop1024(&derive_key(b"keyB", &self.secret, &ih)));
        self.step = Step::ReadProvide;
        Ok(())
    }

    /// Responder got VC, crypto_provide, len(PadC).
    fn on_provide(&mut self) -> Result<(), MseError> {
        let vc = self.buf.get(..8) == Some(&VC[..]);
        let provided = be_u32(self.buf.get(8..).unwrap_or(&[]));
        let pad_len = be_u16(self.buf.get(12..).unwrap_or(&[]));
        self.buf.clear();
        if !vc {
            return Err(MseError::BadVc);
        }
        let common = CryptoSet::from_bits(provided & self.crypto.bits());
        // Prefer RC4 when both sides allow it: the user asked for obfuscation.
        self.selected = if common.contains(Crypto::Rc4) {
            Some(Crypto::Rc4)
        } else if common.contains(Crypto::Plain) {
            Some(Crypto::Plain)
        } else {
            return Err(MseError::NoCommonCrypto { provided });
        };
        if pad_len > MAX_PAD_LEN {
            return Err(MseError::PadTooLong { len: pad_len });
        }
        self.step = if pad_len == 0 {
            Step::ReadIaLen
        } else {
            Step::ReadPadC(pad_len)
        };
        Ok(())
    }

    /// Responder has all of step 3: queue step 4, ENCRYPT(VC, crypto_select, len(PadD)=0).
    /// PadD is left empty: it is encrypted, so its length hides nothing PadB did not.
    fn finish_responder(&mut self) {
        let select = self.selected.map_or(0, Crypto::bit);
        let mut msg = [0u8; 8 + SELECT_LEN];
        if let Some(s) = msg.get_mut(8..12) {
            s.copy_from_slice(&select.to_be_bytes());
        }
        if let Some(c) = self.rc4_out.as_mut() {
            c.apply(&mut msg);
        }
        self.out.extend_from_slice(&msg);
        self.step = Step::Done;
    }

    /// Initiator got Yb: compute S and the keys, send step 3, start scanning for ENCRYPT(VC).
    fn on_yb(&mut self) -> Result<(), MseError> {
        let yb = self.take_key();
        self.secret = dh_secret(&yb, &self.private_key)?;
        let ih = self.info_hash;
        let mut rc4_out = Rc4::new_drop1024(&derive_key(b"keyA", &self.secret, &ih));
        let mut rc4_in = Rc4::new_drop1024(&derive_key(b"keyB", &self.secret, &ih));
        // B's first encrypted bytes are VC (zeros), so ENCRYPT(VC) is keyB's keystream start;
        // producing it also steps rc4_in past the VC.
        rc4_in.apply(&mut self.enc_vc);
        self.out.extend_from_slice(&hash2(b"req1", &self.secret));
        self.out
            .extend_from_slice(&xor20(&hash2(b"req2", &ih), &hash2(b"req3", &self.secret)));
        let mut msg = Vec::with_capacity(PROVIDE_LEN + 2 + self.ia.len());
        msg.extend_from_slice(&VC);
        msg.extend_from_slice(&self.crypto.bits().to_be_bytes());
        // PadC: empty (spec: reserved for future extensions; common practice is zero length).
        msg.extend_from_slice(&0u16.to_be_bytes());
        // Checked against MAX_IA_LEN (< 65536) in the constructor.
        msg.extend_from_slice(&(self.ia.len() as u16).to_be_bytes());
        msg.extend_from_slice(&self.ia);
        rc4_out.apply(&mut msg);
        self.out.extend_from_slice(&msg);
        self.rc4_in = Some(rc4_in);
        self.rc4_out = Some(rc4_out);
        self.step = Step::ScanVc;
        Ok(())
    }

    /// Initiator got crypto_select, len(PadD).
    fn on_select(&mut self) -> Result<(), MseError> {
        let selected = be_u32(&self.buf);
        let pad_len = be_u16(self.buf.get(4..).unwrap_or(&[]));
        self.buf.clear();
        // Spec: "crypto_select ... only a single bit may be set"; it must be one we offered.
        let choice = match selected {
            0x01 => Crypto::Plain,
            0x02 => Crypto::Rc4,
            _ => return Err(MseError::BadCryptoSelect { selected }),
        };
        if !self.crypto.contains(choice) {
            return Err(MseError::BadCryptoSelect { selected });
        }
        self.selected = Some(choice);
        if pad_len > MAX_PAD_LEN {
            return Err(MseError::PadTooLong { len: pad_len });
        }
        self.step = if pad_len == 0 {
            Step::Done
        } else {
            Step::ReadPadD(pad_len)
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::{hex, sha1};
    use crate::rng::Rng;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn key96(s: &str) -> [u8; KEY_LEN] {
        let v = unhex(s);
        let mut k = [0u8; KEY_LEN];
        k[KEY_LEN - v.len()..].copy_from_slice(&v);
        k
    }

    fn key20(s: &str) -> [u8; 20] {
        unhex(s).try_into().unwrap()
    }

    // Expected values computed with Python's pow(a, b, p) and hashlib / an independent RC4.
    const XA: &str = "0102030405060708090a0b0c0d0e0f1011121314";
    const XB: &str = "fedcba9876543210fedcba9876543210deadbeef";
    const YA: &str = "96e112dab29e8c5272accb9b17b26887ce54a144a4e3b697c7d159b7a817e556b0918db2b4c658e02a87f7e5fb14b18a553e084cbf3dad2d30f16596ccb982d406258c61b30c5c1dae2ddc60bdbd48d79896312aad63238c39e1a633821eb693";
    const YB: &str = "3c5d337e8979563ad05a1554b6eaec4518189fc670a069596fc5d8a48e863088aaddeab9a8bb993a259ac15a41e19eb607560dd62ee206c9da6c9ae8e785b6184a44ebebac702edb2af934ed87ec4af3f3539bfacb16272d29c64e9730641c79";
    const S_AB: &str = "0140fe8666d872292472f9069e371ce235d49671d3315504f28d76b4350a38f25797c71fc8c859941570f0d5403ea2610398304fd766f802af6c9de5e516ef33db188c018b4f89256f9f085e18c9887f49ab1d3b807f69b9a137b336b2c451dc";
    /// Step 3 for XA/XB, SKEY = bytes 100..120, provide = 3, no PadC, IA = "hello ia".
    const STEP3: &str = "00572eaa425396f103371bbae25bcd7a646676b98afa994f8ae952628f4d174685f5939da7fc272ba89aabad6ec4da4e2a5d219857e7e39a757a859fd5575a93";
    /// Step 4 for the same keys: ENCRYPT(VC, crypto_select = 2, len(PadD) = 0).
    const STEP4: &str = "b204526d18aac4f0e0bee9a0e6e3";

    fn kat_info_hash() -> [u8; 20] {
        let mut ih = [0u8; 20];
        for (i, b) in ih.iter_mut().enumerate() {
            *b = 100 + i as u8;
        }
        ih
    }

    // ---- big numbers ----

    #[test]
    fn modpow_generator_matches_python() {
        assert_eq!(hex(&dh_public(&key20(XA))), YA);
        assert_eq!(hex(&dh_public(&key20(XB))), YB);
    }

    #[test]
    fn modpow_shared_secret_agrees_both_ways() {
        let s1 = dh_secret(&key96(YB), &key20(XA)).unwrap();
        let s2 = dh_secret(&key96(YA), &key20(XB)).unwrap();
        assert_eq!(hex(&s1), S_AB);
        assert_eq!(s1, s2);
    }

    #[test]
    fn modpow_large_base_and_edge_exponents() {
        // (P - 12345)^XB mod P
        let mut base = PRIME;
        let mut l = limbs_from_be(&base);
        limbs_sub(&mut l, &{
            let mut x = [0u32; LIMBS];
            x[0] = 12345;
            x
        });
        base = limbs_to_be(&l);
        assert_eq!(
            hex(&mod_pow(&base, &key20(XB))),
            "bd564f83c2d6674b370b8e94195b9e7c429cd737e43e7ed0a764b944bf5c80a3b1dca0c8f0269e28095d5e6541bce29e1cab910910e0d6725b7273981206bce1a5672a6496bee7e30b5f0a961f8b4fe2165f5a4931096d8c39db3f21b08ee9a1"
        );
        // x^0 = 1; x^1 = x; P^k = 0 (base reduced first); 2^1 = 2.
        assert_eq!(mod_pow(&key96(YA), &[]), key96("01"));
        assert_eq!(mod_pow(&key96(YA), &[0, 0, 1]), key96(YA));
        assert_eq!(mod_pow(&PRIME, &[7]), [0u8; KEY_LEN]);
        assert_eq!(mod_pow(&[0xff; KEY_LEN], &[1]), {
            // 2^768 - 1 - P
            let mut l = [u32::MAX; LIMBS];
            limbs_sub(&mut l, &limbs_from_be(&PRIME));
            limbs_to_be(&l)
        });
    }

    #[test]
    fn montgomery_r2_matches_python() {
        let m = Mont::new(&PRIME);
        assert_eq!(
            hex(&limbs_to_be(&m.r2)),
            "a6130c9d54da3d538d001cb98c6f28c7a95d0ecbc5679266afbc083554e85ee33361bff33a35e04b112ce56282e51749d515b23cd4ace6dd3423ecee2ddc6158d4c85168a99a751f6d9f175993af6d83ff0ca2a3d838c98595f0194046281a8e"
        );
        assert_eq!(m.n[0].wrapping_mul(m.n0), u32::MAX); // n * n0 = -1 mod 2^32
    }

    #[test]
    fn dh_secret_rejects_degenerate_keys() {
        let x = key20(XA);
        let mut p_minus_1 = PRIME;
        p_minus_1[KEY_LEN - 1] -= 1;
        for bad in [
            [0u8; KEY_LEN],
            key96("01"),
            p_minus_1,
            PRIME,
            [0xff; KEY_LEN],
        ] {
            assert_eq!(dh_secret(&bad, &x), Err(MseError::BadPublicKey));
        }
        let mut p_minus_2 = PRIME;
        p_minus_2[KEY_LEN - 1] -= 2;
        assert!(dh_secret(&key96("02"), &x).is_ok());
        assert!(dh_secret(&p_minus_2, &x).is_ok());
    }

    // ---- RC4 ----

    #[test]
    fn rc4_classic_vectors() {
        let cases: [(&[u8], &[u8], &str); 3] = [
            (b"Key", b"Plaintext", "bbf316e8d940af0ad3"),
            (b"Wiki", b"pedia", "1021bf0420"),
            (b"Secret", b"Attack at dawn", "45a01f645fc35b383552544b9bf5"),
        ];
        for (key, pt, ct) in cases {
            let mut d = pt.to_vec();
            Rc4::new(key).apply(&mut d);
            assert_eq!(hex(&d), ct);
        }
    }

    #[test]
    fn rc4_rfc6229_offsets_0_and_1024() {
        // RFC 6229, key 0x0102030405: keystream at offset 0 and at offset 1024.
        let mut z = [0u8; 16];
        Rc4::new(&[1, 2, 3, 4, 5]).apply(&mut z);
        assert_eq!(hex(&z), "b2396305f03dc027ccc3524a0a1118a8");
        let mut z = [0u8; 16];
        Rc4::new_drop1024(&[1, 2, 3, 4, 5]).apply(&mut z);
        assert_eq!(hex(&z), "30abbcc7c20b01609f23ee2d5f6bb7df");
        // A 160-bit key like MSE's, without and with the drop.
        let key: Vec<u8> = (1..=20).collect();
        let mut z = [0u8; 8];
        Rc4::new(&key).apply(&mut z);
        assert_eq!(hex(&z), "f644d3aa1f242c35");
        let mut z = [0u8; 8];
        Rc4::new_drop1024(&key).apply(&mut z);
        assert_eq!(hex(&z), "d0ef0c6b23f12821");
    }

    #[test]
    fn rc4_split_apply_equals_whole() {
        let data: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let mut whole = data.clone();
        Rc4::new_drop1024(b"k").apply(&mut whole);
        let mut parts = data.clone();
        let mut c = Rc4::new_drop1024(b"k");
        for chunk in parts.chunks_mut(7) {
            c.apply(chunk);
        }
        assert_eq!(whole, parts);
        let mut back = whole;
        Rc4::new_drop1024(b"k").apply(&mut back);
        assert_eq!(back, data);
        assert_eq!(format!("{c:?}"), "Rc4 { .. }");
    }

    // ---- plaintext detection ----

    #[test]
    fn looks_like_plain_bt_needs_the_full_prefix() {
        let mut hs = vec![19u8];
        hs.extend_from_slice(b"BitTorrent protocol");
        hs.extend_from_slice(&[0; 48]);
        assert!(looks_like_plain_bt(&hs));
        assert!(looks_like_plain_bt(&hs[..20]));
        for n in 0..20 {
            assert!(!looks_like_plain_bt(&hs[..n]));
        }
        assert!(!looks_like_plain_bt(&key96(YA)));
        hs[5] ^= 0x20;
        assert!(!looks_like_plain_bt(&hs));
    }

    // ---- known answers: wire format frozen ----

    #[test]
    fn initiator_first_message_known_answer() {
        let mut a = Handshake::initiator(
            kat_info_hash(),
            key20(XA),
            &[],
            CryptoSet::BOTH,
            b"hello ia",
        )
        .unwrap();
        let mut out = Vec::new();
        a.poll_transmit(&mut out);
        assert_eq!(hex(&out), YA);
        // With a pad, the pad follows Ya verbatim.
        let mut a =
            Handshake::initiator(kat_info_hash(), key20(XA), b"pad", CryptoSet::BOTH, b"").unwrap();
        let mut out = Vec::new();
        a.poll_transmit(&mut out);
        assert_eq!(&out[KEY_LEN..], b"pad");
    }

    #[test]
    fn initiator_step3_known_answer() {
        let mut a = Handshake::initiator(
            kat_info_hash(),
            key20(XA),
            &[],
            CryptoSet::BOTH,
            b"hello ia",
        )
        .unwrap();
        a.poll_transmit(&mut Vec::new());
        assert_eq!(a.handle_bytes(&key96(YB)), Ok(KEY_LEN));
        let mut out = Vec::new();
        a.poll_transmit(&mut out);
        assert_eq!(hex(&out), STEP3);
        // Step 4 completes it with RC4.
        assert_eq!(a.handle_bytes(&unhex(STEP4)), Ok(14));
        let o = a.take_outcome().unwrap();
        assert_eq!(o.selected, Crypto::Rc4);
        assert_eq!(o.info_hash, kat_info_hash());
        assert!(o.initial_payload.is_empty() && o.leftover.is_empty());
    }

    #[test]
    fn responder_step2_and_step4_known_answer() {
        let ihs = [[7u8; 20], kat_info_hash()];
        let mut b = Handshake::responder(&ihs, key20(XB), &[], CryptoSet::BOTH).unwrap();
        let mut stream = key96(YA).to_vec();
        stream.extend_from_slice(&unhex(STEP3));
        assert_eq!(b.handle_bytes(&stream), Ok(stream.len()));
        let mut out = Vec::new();
        b.poll_transmit(&mut out);
        assert_eq!(hex(&out), format!("{YB}{STEP4}"));
        let o = b.take_outcome().unwrap();
        assert_eq!(o.info_hash, kat_info_hash());
        assert_eq!(o.selected, Crypto::Rc4);
        assert_eq!(o.initial_payload, b"hello ia");
        assert!(b.take_outcome().is_none(), "outcome is handed out once");
    }

    // ---- two state machines against each other ----

    struct End {
        hs: Handshake,
        outcome: Option<Outcome>,
        /// Payload the app sends once the handshake is done.
        to_send: Vec<u8>,
        sent: bool,
        /// Decrypted payload the app received.
        got: Vec<u8>,
        err: Option<MseError>,
    }

    impl End {
        fn new(hs: Handshake, to_send: &[u8]) -> End {
            End {
                hs,
                outcome: None,
                to_send: to_send.to_vec(),
                sent: false,
                got: Vec::new(),
                err: None,
            }
        }

        /// What a caller does with bytes from the socket.
        fn feed(&mut self, chunk: &[u8]) {
            if self.err.is_some() {
                return;
            }
            let n = match self.hs.handle_bytes(chunk) {
                Ok(n) => n,
                Err(e) => {
                    self.err = Some(e);
                    return;
                }
            };
            if self.outcome.is_none() {
                if let Some(mut o) = self.hs.take_outcome() {
                    self.got.append(&mut o.leftover);
                    self.outcome = Some(o);
                }
            }
            let mut rest = chunk[n..].to_vec();
            if !rest.is_empty() {
                let o = self
                    .outcome
                    .as_mut()
                    .expect("unconsumed bytes only after done");
                if let Some((dec, _)) = o.cipher.as_mut() {
                    dec.apply(&mut rest);
                }
                self.got.extend_from_slice(&rest);
            }
        }

        /// What a caller sends.
        fn transmit(&mut self, wire: &mut Vec<u8>) {
            self.hs.poll_transmit(wire);
            if let (false, Some(o)) = (self.sent, self.outcome.as_mut()) {
                let mut p = self.to_send.clone();
                if let Some((_, enc)) = o.cipher.as_mut() {
                    enc.apply(&mut p);
                }
                wire.extend_from_slice(&p);
                self.sent = true;
            }
        }
    }

    /// Runs both ends to quiescence, delivering chunks of 1..=max_chunk bytes.
    fn run(a: &mut End, b: &mut End, rng: &mut Rng, max_chunk: usize) {
        let (mut ab, mut ba) = (Vec::new(), Vec::new());
        for _ in 0..100_000 {
            a.transmit(&mut ab);
            b.transmit(&mut ba);
            if ab.is_empty() && ba.is_empty() {
                return;
            }
            for (wire, to) in [(&mut ab, &mut *b), (&mut ba, &mut *a)] {
                let n = (1 + rng.below(max_chunk)).min(wire.len());
                let chunk: Vec<u8> = wire.drain(..n).collect();
                to.feed(&chunk);
            }
        }
        panic!("no quiescence");
    }

    fn pad(rng: &mut Rng) -> Vec<u8> {
        let mut p = vec![0u8; rng.below(MAX_PAD_LEN + 1)];
        rng.fill(&mut p);
        p
    }

    fn key(rng: &mut Rng) -> [u8; 20] {
        let mut k = [0u8; 20];
        rng.fill(&mut k);
        k
    }

    fn bt_handshake(ih: &[u8; 20], id: u8) -> Vec<u8> {
        let mut h = vec![19u8];
        h.extend_from_slice(b"BitTorrent protocol");
        h.extend_from_slice(&[0; 8]);
        h.extend_from_slice(ih);
        h.extend_from_slice(&[id; 20]);
        h
    }

    fn pair(
        rng: &mut Rng,
        ih: [u8; 20],
        ours: &[[u8; 20]],
        provide: CryptoSet,
        allowed: CryptoSet,
    ) -> (End, End) {
        let ia = bt_handshake(&ih, b'A');
        let a = Handshake::initiator(ih, key(rng), &pad(rng), provide, &ia).unwrap();
        let b = Handshake::responder(ours, key(rng), &pad(rng), allowed).unwrap();
        let mut a_payload = b"after handshake from A: ".to_vec();
        a_payload.extend((0..rng.below(300)).map(|i| i as u8));
        let b_payload = bt_handshake(&ih, b'B');
        (End::new(a, &a_payload), End::new(b, &b_payload))
    }

    #[test]
    fn pair_negotiates_both_selections_with_any_chunking() {
        let mut rng = Rng::new(0x4d5345);
        let ih = sha1(b"torrent");
        let cases = [
            (CryptoSet::BOTH, CryptoSet::BOTH, Crypto::Rc4),
            (CryptoSet::RC4, CryptoSet::BOTH, Crypto::Rc4),
            (CryptoSet::BOTH, CryptoSet::RC4, Crypto::Rc4),
            (CryptoSet::BOTH, CryptoSet::PLAIN, Crypto::Plain),
            (CryptoSet::PLAIN, CryptoSet::BOTH, Crypto::Plain),
        ];
        for (provide, allowed, want) in cases {
            for max_chunk in [1, 2, 7, 64, 700, 5000] {
                let (mut a, mut b) = pair(&mut rng, ih, &[ih], provide, allowed);
                run(&mut a, &mut b, &mut rng, max_chunk);
                assert_eq!((a.err.clone(), b.err.clone()), (None, None));
                let (oa, ob) = (a.outcome.as_ref().unwrap(), b.outcome.as_ref().unwrap());
                assert_eq!((oa.selected, ob.selected), (want, want));
                assert_eq!(oa.cipher.is_some(), want == Crypto::Rc4);
                assert_eq!(ob.cipher.is_some(), want == Crypto::Rc4);
                assert_eq!((oa.info_hash, ob.info_hash), (ih, ih));
                assert_eq!(ob.initial_payload, bt_handshake(&ih, b'A'));
                assert!(oa.initial_payload.is_empty());
                // Post-handshake payload arrives intact both ways.
                assert_eq!(a.got, b.to_send, "{provide:?} {allowed:?} {max_chunk}");
                assert_eq!(b.got, a.to_send, "{provide:?} {allowed:?} {max_chunk}");
            }
        }
    }

    #[test]
    fn pair_rc4_payload_is_not_plaintext_on_the_wire() {
        let mut rng = Rng::new(9);
        let ih = sha1(b"t");
        let (mut a, mut b) = pair(&mut rng, ih, &[ih], CryptoSet::RC4, CryptoSet::BOTH);
        let mut wire = Vec::new();
        let (mut ab, mut ba) = (Vec::new(), Vec::new());
        for _ in 0..10 {
            a.transmit(&mut ab);
            b.feed(&std::mem::take(&mut ab));
            b.transmit(&mut ba);
            wire.extend_from_slice(&ba);
            a.feed(&std::mem::take(&mut ba));
        }
        assert_eq!(a.got, b.to_send);
        let needle = b"BitTorrent protocol";
        assert!(!wire.windows(needle.len()).any(|w| w == needle));
    }

    #[test]
    fn responder_leftover_after_ia_is_decrypted() {
        // An RC4-only initiator may send payload right after IA; it lands in leftover.
        let ih = kat_info_hash();
        let mut a =
            Handshake::initiator(ih, key20(XA), b"xyz", CryptoSet::RC4, b"hello ia").unwrap();
        let mut b = Handshake::responder(&[ih], key20(XB), b"abcdef", CryptoSet::BOTH).unwrap();
        let mut w = Vec::new();
        a.poll_transmit(&mut w);
        b.handle_bytes(&w).unwrap();
        let mut w = Vec::new();
        b.poll_transmit(&mut w);
        a.handle_bytes(&w).unwrap();
        let mut w = Vec::new();
        a.poll_transmit(&mut w);
        let mut extra = b"early payload".to_vec();
        a.rc4_out.as_mut().unwrap().apply(&mut extra);
        w.extend_from_slice(&extra);
        assert_eq!(b.handle_bytes(&w), Ok(w.len()));
        let o = b.take_outcome().unwrap();
        assert_eq!(o.initial_payload, b"hello ia");
        assert_eq!(o.leftover, b"early payload");
        assert_eq!(b.handle_bytes(b"more"), Ok(0), "done consumes nothing");
    }

    #[test]
    fn initiator_leftover_after_padd_is_decrypted_or_plain() {
        for (allowed, want_plain) in [(CryptoSet::RC4, false), (CryptoSet::PLAIN, true)] {
            let ih = kat_info_hash();
            let mut a = Handshake::initiator(ih, key20(XA), b"", CryptoSet::BOTH, b"ia").unwrap();
            let mut b = Handshake::responder(&[ih], key20(XB), b"", allowed).unwrap();
            let mut w = Vec::new();
            a.poll_transmit(&mut w);
            b.handle_bytes(&w).unwrap();
            let mut w = Vec::new();
            b.poll_transmit(&mut w);
            a.handle_bytes(&w).unwrap();
            let mut w = Vec::new();
            a.poll_transmit(&mut w);
            b.handle_bytes(&w).unwrap();
            let mut ob = b.take_outcome().unwrap();
            let mut w = Vec::new();
            b.poll_transmit(&mut w);
            let mut extra = b"B payload".to_vec();
            if let Some((_, enc)) = ob.cipher.as_mut() {
                enc.apply(&mut extra);
            }
            assert_eq!(extra == b"B payload", want_plain);
            w.extend_from_slice(&extra);
            assert_eq!(a.handle_bytes(&w), Ok(w.len()));
            let oa = a.take_outcome().unwrap();
            assert_eq!(oa.leftover, b"B payload");
        }
    }

    #[test]
    fn responder_picks_the_right_torrent_among_several() {
        let mut rng = Rng::new(77);
        let ours: Vec<[u8; 20]> = (0..50u32).map(|i| sha1(&i.to_be_bytes())).collect();
        for want in [0, 17, 49] {
            let (mut a, mut b) = pair(
                &mut rng,
                ours[want],
                &ours,
                CryptoSet::BOTH,
                CryptoSet::BOTH,
            );
            run(&mut a, &mut b, &mut rng, 100);
            assert_eq!(b.outcome.as_ref().unwrap().info_hash, ours[want]);
            assert_eq!(a.got, b.to_send);
        }
    }

    #[test]
    fn responder_unknown_info_hash_errs() {
        let mut rng = Rng::new(5);
        let ours = [sha1(b"x"), sha1(b"y")];
        let (mut a, mut b) = pair(
            &mut rng,
            sha1(b"z"),
            &ours,
            CryptoSet::BOTH,
            CryptoSet::BOTH,
        );
        run(&mut a, &mut b, &mut rng, 50);
        assert_eq!(b.err, Some(MseError::UnknownInfoHash));
        assert!(a.outcome.is_none());
        assert_eq!(b.hs.state(), State::Failed);
    }

    #[test]
    fn responder_no_common_crypto_errs() {
        let mut rng = Rng::new(6);
        let ih = sha1(b"t");
        let (mut a, mut b) = pair(&mut rng, ih, &[ih], CryptoSet::RC4, CryptoSet::PLAIN);
        run(&mut a, &mut b, &mut rng, 50);
        assert_eq!(b.err, Some(MseError::NoCommonCrypto { provided: 2 }));
    }

    // ---- hand-crafted hostile input ----

    /// Step 1 + step 3 from the XA key (as `kat_responder` expects), with arbitrary fields.
    fn crafted_step3(provide: u32, vc: [u8; 8], pad_c: usize, ia_len: u16, ia: &[u8]) -> Vec<u8> {
        let s = dh_secret(&key96(YB), &key20(XA)).unwrap();
        let ih = kat_info_hash();
        let mut m = key96(YA).to_vec();
        m.extend_from_slice(&hash2(b"req1", &s));
        m.extend_from_slice(&xor20(&hash2(b"req2", &ih), &hash2(b"req3", &s)));
        let mut body = vc.to_vec();
        body.extend_from_slice(&provide.to_be_bytes());
        body.extend_from_slice(&(pad_c as u16).to_be_bytes());
        body.extend(std::iter::repeat(0).take(pad_c));
        body.extend_from_slice(&ia_len.to_be_bytes());
        body.extend_from_slice(ia);
        Rc4::new_drop1024(&derive_key(b"keyA", &s, &ih)).apply(&mut body);
        m.extend_from_slice(&body);
        m
    }

    fn kat_responder() -> Handshake {
        Handshake::responder(&[kat_info_hash()], key20(XB), &[], CryptoSet::BOTH).unwrap()
    }

    #[test]
    fn responder_crafted_fields_are_capped() {
        let cases = [
            (crafted_step3(2, [0; 8], 0, 2, b"ok"), None),
            (crafted_step3(2, [0; 8], 512, 0, b""), None),
            (
                crafted_step3(2, [0; 8], 513, 0, b""),
                Some(MseError::PadTooLong { len: 513 }),
            ),
            (
                crafted_step3(2, [0; 8], 0, 1025, b""),
                Some(MseError::PayloadTooLong { len: 1025 }),
            ),
            (
                crafted_step3(2, [0, 0, 0, 0, 0, 0, 0, 1], 0, 0, b""),
                Some(MseError::BadVc),
            ),
            (
                crafted_step3(0xfffc, [0; 8], 0, 0, b""),
                Some(MseError::NoCommonCrypto { provided: 0xfffc }),
            ),
        ];
        for (msg, want) in cases {
            let mut b = kat_responder();
            let got = b.handle_bytes(&msg).err();
            assert_eq!(got, want);
            assert_eq!(b.is_done(), want.is_none());
            if want.is_some() {
                assert_eq!(
                    b.handle_bytes(b"x"),
                    Err(MseError::Failed),
                    "failure sticks"
                );
                let mut out = Vec::new();
                b.poll_transmit(&mut out);
                assert!(out.is_empty(), "nothing is sent after a failure");
            }
        }
    }

    #[test]
    fn responder_ia_at_cap_is_accepted() {
        let ia = vec![0x5a; MAX_IA_LEN];
        let mut b = kat_responder();
        b.handle_bytes(&crafted_step3(1, [0; 8], 0, MAX_IA_LEN as u16, &ia))
            .unwrap();
        let o = b.take_outcome().unwrap();
        assert_eq!(o.selected, Crypto::Plain);
        assert_eq!(o.initial_payload, ia);
    }

    #[test]
    fn responder_req1_scan_is_bounded() {
        let mut b = kat_responder();
        b.handle_bytes(&key96(YA)).unwrap();
        let junk = vec![0xa5u8; REQ1_SCAN_LIMIT];
        assert_eq!(
            b.handle_bytes(&junk[..REQ1_SCAN_LIMIT - 1]),
            Ok(REQ1_SCAN_LIMIT - 1)
        );
        assert_eq!(b.handle_bytes(&junk[..1]), Err(MseError::NoReq1Sync));
        // A req1 hash at the very end of the window (PadA of 512) still syncs.
        let msg = crafted_step3(2, [0; 8], 0, 0, b"");
        let mut long = key96(YA).to_vec();
        long.extend_from_slice(&[0xa5; MAX_PAD_LEN]);
        long.extend_from_slice(&msg[KEY_LEN..]);
        let mut b = kat_responder();
        b.handle_bytes(&long).unwrap();
        assert!(b.is_done());
    }

    #[test]
    fn responder_bad_public_key_errs() {
        for y in [[0u8; KEY_LEN], [0xff; KEY_LEN], PRIME] {
            let mut b = kat_responder();
            assert_eq!(b.handle_bytes(&y), Err(MseError::BadPublicKey));
        }
    }

    fn kat_initiator(provide: CryptoSet) -> Handshake {
        let mut a =
            Handshake::initiator(kat_info_hash(), key20(XA), &[], provide, b"hello ia").unwrap();
        a.poll_transmit(&mut Vec::new());
        a
    }

    fn crafted_step4(select: u32, pad_d: usize, pad_b: usize) -> Vec<u8> {
        let s = dh_secret(&key96(YA), &key20(XB)).unwrap();
        let mut m = key96(YB).to_vec();
        m.extend(std::iter::repeat(0x3c).take(pad_b));
        let mut body = vec![0u8; 8];
        body.extend_from_slice(&select.to_be_bytes());
        body.extend_from_slice(&(pad_d as u16).to_be_bytes());
        body.extend(std::iter::repeat(0).take(pad_d));
        Rc4::new_drop1024(&derive_key(b"keyB", &s, &kat_info_hash())).apply(&mut body);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn initiator_crafted_select_is_checked() {
        let cases = [
            (CryptoSet::BOTH, crafted_step4(2, 0, 0), None),
            (CryptoSet::BOTH, crafted_step4(1, 512, MAX_PAD_LEN), None),
            (
                CryptoSet::BOTH,
                crafted_step4(3, 0, 0),
                Some(MseError::BadCryptoSelect { selected: 3 }),
            ),
            (
                CryptoSet::BOTH,
                crafted_step4(0, 0, 0),
                Some(MseError::BadCryptoSelect { selected: 0 }),
            ),
            (
                CryptoSet::RC4,
                crafted_step4(1, 0, 0),
                Some(MseError::BadCryptoSelect { selected: 1 }),
            ),
            (
                CryptoSet::BOTH,
                crafted_step4(2, 513, 0),
                Some(MseError::PadTooLong { len: 513 }),
            ),
            (
                CryptoSet::BOTH,
                crafted_step4(2, 0, MAX_PAD_LEN + 1),
                Some(MseError::NoVcSync),
            ),
        ];
        for (provide, msg, want) in cases {
            let mut a = kat_initiator(provide);
            assert_eq!(a.handle_bytes(&msg).err(), want);
            assert_eq!(a.is_done(), want.is_none());
        }
    }

    #[test]
    fn initiator_vc_scan_is_bounded() {
        let mut a = kat_initiator(CryptoSet::BOTH);
        a.handle_bytes(&key96(YB)).unwrap();
        let junk = vec![0x11u8; VC_SCAN_LIMIT];
        assert_eq!(
            a.handle_bytes(&junk[..VC_SCAN_LIMIT - 1]),
            Ok(VC_SCAN_LIMIT - 1)
        );
        assert_eq!(a.handle_bytes(&junk[..1]), Err(MseError::NoVcSync));
        assert_eq!(a.state(), State::Failed);
    }

    #[test]
    fn constructors_check_their_arguments() {
        let ih = kat_info_hash();
        let k = key20(XA);
        let big = vec![0u8; MAX_PAD_LEN + 1];
        let ia = vec![0u8; MAX_IA_LEN + 1];
        assert_eq!(
            Handshake::initiator(ih, k, &big, CryptoSet::BOTH, b"").err(),
            Some(MseError::PadTooLong { len: 513 })
        );
        assert_eq!(
            Handshake::initiator(ih, k, b"", CryptoSet::BOTH, &ia).err(),
            Some(MseError::PayloadTooLong { len: 1025 })
        );
        assert_eq!(
            Handshake::initiator(ih, k, b"", CryptoSet::from_bits(4), b"").err(),
            Some(MseError::NoCryptoOffered)
        );
        assert_eq!(
            Handshake::responder(&[ih], k, &big, CryptoSet::BOTH).err(),
            Some(MseError::PadTooLong { len: 513 })
        );
        assert_eq!(
            Handshake::responder(&[ih], k, b"", CryptoSet::from_bits(0)).err(),
            Some(MseError::NoCryptoOffered)
        );
    }

    #[test]
    fn errors_display_lowercase() {
        let all = [
            MseError::PadTooLong { len: 600 },
            MseError::PayloadTooLong { len: 2000 },
            MseError::NoCryptoOffered,
            MseError::BadPublicKey,
            MseError::NoReq1Sync,
            MseError::NoVcSync,
            MseError::UnknownInfoHash,
            MseError::BadVc,
            MseError::NoCommonCrypto { provided: 4 },
            MseError::BadCryptoSelect { selected: 3 },
            MseError::Failed,
        ];
        for e in all {
            let s = e.to_string();
            assert!(s.starts_with("mse "), "{s}");
            assert_eq!(s, s.to_lowercase(), "{s}");
        }
    }

    // ---- sweeps ----

    /// The two directions of a complete KAT-key handshake with small pads.
    fn recorded_streams() -> (Vec<u8>, Vec<u8>) {
        let ih = kat_info_hash();
        let mut a =
            Handshake::initiator(ih, key20(XA), b"padA", CryptoSet::BOTH, b"hello ia").unwrap();
        let mut b = Handshake::responder(&[ih], key20(XB), b"padB", CryptoSet::BOTH).unwrap();
        let (mut ab, mut ba) = (Vec::new(), Vec::new());
        for _ in 0..4 {
            let mut w = Vec::new();
            a.poll_transmit(&mut w);
            b.handle_bytes(&w).unwrap();
            ab.extend_from_slice(&w);
            let mut w = Vec::new();
            b.poll_transmit(&mut w);
            a.handle_bytes(&w).unwrap();
            ba.extend_from_slice(&w);
        }
        assert!(a.is_done() && b.is_done());
        (ab, ba)
    }

    fn fresh_initiator() -> Handshake {
        Handshake::initiator(
            kat_info_hash(),
            key20(XA),
            b"padA",
            CryptoSet::BOTH,
            b"hello ia",
        )
        .unwrap()
    }

    fn fresh_responder() -> Handshake {
        Handshake::responder(&[kat_info_hash()], key20(XB), b"padB", CryptoSet::BOTH).unwrap()
    }

    #[test]
    fn truncation_sweep_waits_without_finishing() {
        let (ab, ba) = recorded_streams();
        for n in 0..ab.len() {
            let mut b = fresh_responder();
            assert_eq!(b.handle_bytes(&ab[..n]), Ok(n));
            assert_eq!(b.state(), State::InProgress, "prefix {n}");
            assert!(b.take_outcome().is_none());
        }
        for n in 0..ba.len() {
            let mut a = fresh_initiator();
            assert_eq!(a.handle_bytes(&ba[..n]), Ok(n));
            assert_eq!(a.state(), State::InProgress, "prefix {n}");
        }
        // And the full streams do finish.
        assert!(fresh_responder().handle_bytes(&ab).is_ok());
        let mut a = fresh_initiator();
        a.handle_bytes(&ba).unwrap();
        assert!(a.is_done());
    }

    #[test]
    fn mutation_sweep_never_panics() {
        let (ab, ba) = recorded_streams();
        let mut rng = Rng::new(0x5eed);
        let mut outcomes = [0usize; 3];
        for round in 0..1500 {
            let (src, responder) = if round % 2 == 0 {
                (&ab, true)
            } else {
                (&ba, false)
            };
            let mut buf = src.clone();
            // Mostly hit the post-key part, where parsing happens.
            for _ in 0..=rng.below(3) {
                let i = if rng.below(4) == 0 {
                    rng.below(buf.len())
                } else {
                    KEY_LEN + rng.below(buf.len() - KEY_LEN)
                };
                buf[i] = match rng.below(3) {
                    0 => rng.next_u32() as u8,
                    1 => buf[i] ^ (1 << rng.below(8)),
                    _ => [0, 1, 0xff, 2][rng.below(4)],
                };
            }
            if rng.below(3) == 0 {
                let extra = rng.below(700);
                buf.extend((0..extra).map(|_| rng.next_u32() as u8));
            }
            if rng.below(4) == 0 {
                buf.truncate(rng.below(buf.len() + 1));
            }
            let mut h = if responder {
                fresh_responder()
            } else {
                fresh_initiator()
            };
            let mut at = 0;
            let mut result = Ok(0);
            while at < buf.len() {
                let n = (1 + rng.below(200)).min(buf.len() - at);
                result = h.handle_bytes(&buf[at..at + n]);
                match result {
                    Ok(k) => assert!(k <= n),
                    Err(_) => break,
                }
                at += n;
            }
            let mut out = Vec::new();
            h.poll_transmit(&mut out);
            assert!(out.len() <= KEY_LEN + MAX_PAD_LEN + 8 + SELECT_LEN);
            outcomes[match (result, h.state()) {
                (Err(_), _) => 0,
                (Ok(_), State::Done) => 1,
                _ => 2,
            }] += 1;
        }
        // The sweep exercised failures, successes and waiting.
        assert!(outcomes.iter().all(|&c| c > 0), "{outcomes:?}");
    }
}
