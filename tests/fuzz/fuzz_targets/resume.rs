//! resume: per-torrent resume files (may be truncated or corrupted on disk). Accepted files must
//! survive `encode_resume` unchanged.
#![no_main]
use atorrent::state;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = state::decode_resume(data) {
        let bytes = state::encode_resume(&r);
        assert_eq!(
            state::decode_resume(&bytes).as_ref().ok(),
            Some(&r),
            "resume round trip"
        );
    }
});
