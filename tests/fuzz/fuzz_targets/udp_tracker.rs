//! udp_tracker: BEP 15 datagrams. Responses are checked against every expected action and
//! both address families, with the transaction id taken from the packet so the parser gets
//! past that check; requests are what our own tracker-side test server would see.
#![no_main]
use atorrent::udp_tracker;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tid = udp_tracker::response_transaction_id(data).unwrap_or(0);
    let _ = udp_tracker::looks_like_tracker_response(data);
    for action in 0..4 {
        for ipv6 in [false, true] {
            let _ = udp_tracker::parse_response(data, tid, action, ipv6);
        }
    }
    let _ = udp_tracker::parse_request(data);
});
