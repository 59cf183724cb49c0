//! ext: BEP 10 extended handshake, BEP 9 ut_metadata and BEP 11 ut_pex payloads, all sent by
//! arbitrary peers. PEX round-trips through its own encoder (as sets: encoding regroups
//! IPv4-mapped IPv6 contacts into `added`, so the order may change).
#![no_main]
use atorrent::ext;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = ext::ExtHandshake::parse(data) {
        let _ = h.id_of("ut_metadata");
        let _ = h.encode();
    }
    let _ = ext::parse_metadata_msg(data);
    if let Ok(p) = ext::PexMessage::parse(data) {
        let again = ext::PexMessage::parse(&p.encode()).map(sorted);
        assert_eq!(
            again,
            Ok(sorted(p)),
            "pex encode -> parse changed the message"
        );
    }
});

fn sorted(mut p: ext::PexMessage) -> ext::PexMessage {
    p.added.sort();
    p.dropped.sort();
    p
}
