//! ctl: the control-socket protocol. Requests come from any local user; responses are read by
//! the CLI. Accepted requests must survive `encode_request` unchanged, responses likewise.
#![no_main]
use atorrent::ctl;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = ctl::parse_request(data) {
        let line = ctl::encode_request(&e);
        assert_eq!(
            ctl::parse_request(line.as_bytes()).as_ref(),
            Ok(&e),
            "encode_request -> parse_request changed it: {line:?}"
        );
    }
    if let Ok(r) = ctl::parse_response(data) {
        let bytes = ctl::encode_response(&r);
        assert_eq!(
            ctl::parse_response(&bytes).as_ref(),
            Ok(&r),
            "response round trip"
        );
    }
});
