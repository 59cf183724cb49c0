//! bencode: anything `decode` accepts must re-encode to exactly the input bytes (keys keep
//! their order, integers are strict), and `decode_prefix` must agree on the prefix it used.
#![no_main]
use atorrent::bencode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = bencode::decode(data) {
        let mut out = Vec::with_capacity(data.len());
        bencode::encode(&v, &mut out);
        assert_eq!(out, data, "decode -> encode changed the bytes");
    }
    if let Ok((v, used)) = bencode::decode_prefix(data) {
        assert!(used <= data.len(), "decode_prefix used past the end");
        let mut out = Vec::new();
        bencode::encode(&v, &mut out);
        assert_eq!(
            &out[..],
            &data[..used],
            "decode_prefix -> encode changed the bytes"
        );
    }
    if let Ok(Some(raw)) = bencode::raw_dict_value(data, b"info") {
        // The raw value is itself one complete document.
        assert!(
            bencode::decode(raw).is_ok(),
            "raw_dict_value returned undecodable bytes"
        );
    }
});
