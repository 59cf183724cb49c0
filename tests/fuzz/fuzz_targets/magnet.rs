//! magnet: links are pasted by users and arrive over the control socket. What parses must
//! survive `to_uri` unchanged (the documented `parse(&m.to_uri()) == Ok(m)`).
#![no_main]
use atorrent::magnet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = magnet::parse(s) {
        let uri = m.to_uri();
        assert_eq!(
            magnet::parse(&uri),
            Ok(m),
            "to_uri did not round-trip: {uri:?}"
        );
    }
});
