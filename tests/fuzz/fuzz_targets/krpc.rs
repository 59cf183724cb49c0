//! krpc: BEP 5 DHT datagrams from anyone on the internet. Accepted messages must survive our
//! own encoder unchanged.
#![no_main]
use atorrent::dht::krpc;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = krpc::parse(data) {
        let mut out = Vec::new();
        krpc::encode(&m, &mut out);
        assert_eq!(
            krpc::parse(&out).as_ref(),
            Ok(&m),
            "encode -> parse changed the message"
        );
    }
});
