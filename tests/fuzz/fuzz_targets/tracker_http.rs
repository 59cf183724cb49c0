//! tracker_http: HTTP tracker replies — status line, headers, chunked/length/close framing —
//! then the bencoded announce and scrape bodies, and redirect targets.
#![no_main]
use atorrent::tracker;
use libfuzzer_sys::fuzz_target;

const IH: [u8; 20] = *b"\x12\x34\x56\x78\x9a\xbc\xde\xf0 -._/%&=+\x00\xff\x7f";

fn body(b: &[u8]) {
    let _ = tracker::parse_announce(b);
    let _ = tracker::parse_scrape(b, &IH);
}

fuzz_target!(|data: &[u8]| {
    for complete in [false, true] {
        if let Ok(Some(r)) = tracker::parse_http_response(data, complete) {
            body(&r.body);
            if let Some(loc) = r.location {
                if let Ok(base) = tracker::parse_url("http://tracker.example:6969/announce?k=1") {
                    let _ = tracker::resolve_redirect(&base, loc);
                }
            }
        }
    }
    body(data);
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(u) = tracker::parse_url(s) {
            let _ = tracker::scrape_url(&u);
            let _ = u.host_header();
        }
    }
});
