//! Shared constants for the fuzz targets and the seed generator (`examples/seeds.rs`).

/// Fixed MSE parameters: deterministic keys and pads make the honest transcripts in the seed
/// corpus replay exactly, so mutations reach the RC4-encrypted steps.
pub mod mse_consts {
    pub const INFO_HASH: [u8; 20] = [0xab; 20];
    pub const OTHER_HASH: [u8; 20] = [0x5c; 20];
    pub const KEY_A: [u8; 20] = [0x11; 20];
    pub const KEY_B: [u8; 20] = [0x22; 20];
    pub const PAD_A: &[u8] = b"initiator pad";
    pub const PAD_B: &[u8] = b"responder pad, a little longer";
    /// IA: a BEP 3 handshake for INFO_HASH.
    pub const IA: &[u8] = b"\x13BitTorrent protocol\0\0\0\0\0\x10\0\x05\xab\xab\xab\xab\xab\xab\xab\xab\xab\xab\xab\xab\xab\xab\xab\xab\xab\xab\xab\xab-AT0001-fuzzfuzzfuzz";
}
