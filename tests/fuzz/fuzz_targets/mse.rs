//! mse: the Message Stream Encryption handshake, either side, fed hostile bytes in chunks.
//! Keys and pads are fixed, so the honest transcripts in the seed corpus (made by
//! `examples/seeds.rs` with the same constants) are valid handshakes and the fuzzer mutates
//! from there into the encrypted steps, not just the DH key exchange.
//!
//! Byte 0: bit 0 picks the side (0 = responder, 1 = initiator); bits 1-2 the crypto set (0
//! means both); bits 3-7 the chunk size (0 = everything at once). The rest is the peer's stream.
#![no_main]
use atorrent::mse::{CryptoSet, Handshake, MseError, State};
use atorrent_fuzz::mse_consts::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&hdr, stream)) = data.split_first() else {
        return;
    };
    let initiator = hdr & 1 == 1;
    let crypto = match CryptoSet::from_bits(u32::from(hdr >> 1) & 3) {
        c if c.is_empty() => CryptoSet::BOTH,
        c => c,
    };
    let chunk = match usize::from(hdr >> 3) {
        0 => stream.len().max(1),
        n => n,
    };
    let mut h = if initiator {
        Handshake::initiator(INFO_HASH, KEY_A, PAD_A, crypto, IA)
    } else {
        Handshake::responder(&[OTHER_HASH, INFO_HASH], KEY_B, PAD_B, crypto)
    }
    .expect("fixed handshake parameters are valid");
    let mut out = Vec::new();
    h.poll_transmit(&mut out);
    for part in stream.chunks(chunk) {
        let was_done = h.is_done();
        match h.handle_bytes(part) {
            Ok(n) if was_done => assert_eq!(n, 0, "consumed bytes after done"),
            Ok(n) => assert_eq!(n, part.len(), "consumed part of a chunk while in progress"),
            Err(_) => {
                assert_eq!(h.state(), State::Failed, "error without failing");
                assert_eq!(
                    h.handle_bytes(b"x"),
                    Err(MseError::Failed),
                    "failed is sticky"
                );
                assert!(h.take_outcome().is_none(), "outcome after failure");
                return;
            }
        }
        h.poll_transmit(&mut out);
        if h.is_done() {
            break;
        }
    }
    if h.is_done() {
        let o = h.take_outcome().expect("done gives an outcome");
        assert!(
            crypto.contains(o.selected),
            "selected a method we did not offer"
        );
        assert_eq!(o.cipher.is_some(), o.selected == atorrent::mse::Crypto::Rc4);
        if initiator {
            assert_eq!(o.info_hash, INFO_HASH);
            assert!(o.initial_payload.is_empty());
        } else {
            assert!(
                o.info_hash == INFO_HASH || o.info_hash == OTHER_HASH,
                "unknown SKEY"
            );
        }
        assert!(h.take_outcome().is_none(), "outcome given twice");
    }
});
