//! metainfo: `.torrent` files come from users and from peers (ut_metadata); parse must never
//! panic and what it accepts must be internally consistent.
#![no_main]
use atorrent::metainfo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = metainfo::parse(data) {
        let m = &p.meta;
        let n = m.piece_count();
        for i in 0..n.min(64) {
            assert!(
                m.piece_hash(i).is_some(),
                "piece {i} < piece_count has no hash"
            );
            let _ = m.piece_len(i);
        }
        assert!(m.piece_hash(n).is_none(), "piece_count has a hash");
        let _ = m.info_hash_hex();
    }
});
