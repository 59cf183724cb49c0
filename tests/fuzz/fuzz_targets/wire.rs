//! wire: peer messages (BEP 3/6/10) and the handshake. The first two bytes pick the piece
//! count that sets the length cap; the rest is a stream decoded message by message the way the
//! peer loop does. Every known message must re-encode to the bytes it came from.
#![no_main]
use atorrent::wire::{self, Handshake, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Handshake::decode(data);
    let _ = Handshake::decode_prefix(data);
    let (pieces, mut rest) = match data {
        [a, b, rest @ ..] => (u32::from(u16::from_be_bytes([*a, *b])), rest),
        _ => return,
    };
    let cap = wire::max_message_len(pieces);
    let mut scratch = Vec::new();
    while let Ok(Some((msg, used))) = wire::decode(rest, cap) {
        assert!(
            used >= 4 && used <= rest.len(),
            "decode used {used} of {}",
            rest.len()
        );
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        assert!(
            len <= cap,
            "accepted a {len}-byte message over the {cap} cap"
        );
        if !matches!(msg, Message::Unknown { .. }) {
            assert_eq!(msg.encoded_len(), used, "encoded_len of {msg:?}");
            scratch.clear();
            scratch.resize(used, 0);
            assert_eq!(msg.encode(&mut scratch), Some(used), "encode of {msg:?}");
            assert_eq!(&scratch[..], &rest[..used], "re-encoding {msg:?}");
        }
        rest = &rest[used..];
    }
});
