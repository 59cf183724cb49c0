//! dns: replies from the resolver (or anyone spoofing it). Byte 0 picks the name and query
//! type the reply is matched against; the id is read from the packet so parsing goes past it.
#![no_main]
use atorrent::dns::{self, QType};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 4] = ["www.example.com", "tracker.io", "a", "tracker.example.com"];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, pkt)) = data.split_first() else {
        return;
    };
    let name = NAMES[usize::from(sel) % NAMES.len()];
    let qtype = if sel & 0x80 == 0 {
        QType::A
    } else {
        QType::Aaaa
    };
    let id = match pkt {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 0,
    };
    let _ = dns::parse_response(pkt, id, name, qtype);
    if let Ok(text) = std::str::from_utf8(pkt) {
        let _ = dns::parse_resolv_conf(text);
        let _ = dns::lookup_hosts(text, name);
    }
});
