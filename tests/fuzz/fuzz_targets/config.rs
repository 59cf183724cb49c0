//! config: the INI config file (hand-edited, possibly truncated by a power cut). Whatever parses
//! must be written back by `to_ini` to text that parses to the same config.
#![no_main]
use atorrent::config::{self, Config};
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::OnceLock;

fn base() -> &'static Config {
    static BASE: OnceLock<Config> = OnceLock::new();
    BASE.get_or_init(|| Config::default_for_env(&|_| None))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A bare file name: with no HOME the defaults are relative paths, and relative values are
    // anchored at the file's directory, so a directory here would break the round trip on
    // purpose-free grounds.
    let origin = Path::new("atorrent.conf");
    if let Ok(c) = config::parse_str(text, origin, base().clone()) {
        let ini = c.to_ini();
        let again = config::parse_str(&ini, origin, base().clone());
        assert_eq!(
            again.as_ref().ok(),
            Some(&c),
            "to_ini did not round-trip:\n{ini}"
        );
    }
});
