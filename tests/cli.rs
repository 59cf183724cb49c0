//! The command-line contract: exit codes (0 ok, 1 runtime error, 2 usage error), the
//! `atorrent: ` prefix on errors, `info` and `create` agreeing with libtorrent on info-hashes.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::common::*;

fn at(work: &Work, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(atorrent_bin());
    for a in args {
        cmd.arg(a.as_ref());
    }
    run(work, cmd, secs(30))
}

fn assert_no_panic(o: &Output) {
    assert!(
        !o.stderr.contains("panicked"),
        "atorrent panicked:\n{}",
        o.stderr
    );
}

/// Usage errors exit 2 with `atorrent: ...` on stderr.
fn assert_usage_error(o: &Output, what: &str) {
    assert_no_panic(o);
    assert_eq!(
        o.code(),
        Some(2),
        "{what}: want exit 2; stderr: {}",
        o.stderr
    );
    assert!(
        o.stderr.starts_with("atorrent: "),
        "{what}: stderr should start with `atorrent: `, got {:?}",
        o.stderr
    );
}

/// Runtime errors exit 1 with one clear `atorrent: ...` message.
fn assert_runtime_error(o: &Output, what: &str) {
    assert_no_panic(o);
    assert_eq!(
        o.code(),
        Some(1),
        "{what}: want exit 1; stderr: {}",
        o.stderr
    );
    assert!(
        o.stderr.starts_with("atorrent: ") && o.stderr.trim().len() > "atorrent: ".len() + 5,
        "{what}: want a clear `atorrent: ` message, got {:?}",
        o.stderr
    );
}

#[test]
fn version_prints_name_and_crate_version() {
    let w = Work::new("cli_version");
    let o = at(&w, &[&"--version"]);
    assert!(o.status.success(), "stderr: {}", o.stderr);
    assert!(o.stdout.starts_with("atorrent "), "stdout: {:?}", o.stdout);
    assert!(
        o.stdout.contains(env!("CARGO_PKG_VERSION")),
        "stdout: {:?}",
        o.stdout
    );
}

#[test]
fn help_lists_the_subcommands() {
    let w = Work::new("cli_help");
    let o = at(&w, &[&"--help"]);
    assert!(o.status.success(), "stderr: {}", o.stderr);
    for word in ["download", "create", "info", "daemon", "--config"] {
        assert!(o.stdout.contains(word), "--help lacks {word}: {}", o.stdout);
    }
    let o = at(&w, &[&"download", &"--help"]);
    assert!(o.status.success(), "stderr: {}", o.stderr);
    for word in ["--dir", "--seed", "--peer", "--direct-io", "--bind"] {
        assert!(
            o.stdout.contains(word),
            "download --help lacks {word}: {}",
            o.stdout
        );
    }
}

#[test]
fn usage_errors_exit_2_with_prefix() {
    let w = Work::new("cli_usage");
    let t = w.path("x.torrent");
    fs::write(
        &t,
        b"d4:infod6:lengthi1e4:name1:x12:piece lengthi16384e6:pieces20:aaaaaaaaaaaaaaaaaaaaee",
    )
    .unwrap();
    let d = w.dir.clone();
    let cases: Vec<(&str, Vec<&dyn AsRef<std::ffi::OsStr>>)> = vec![
        ("unknown flag", vec![&"--no-such-flag"]),
        ("unknown subcommand", vec![&"frobnicate"]),
        ("no arguments", vec![]),
        ("download without a torrent", vec![&"download"]),
        (
            "download --dir without value",
            vec![&"download", &t, &"--dir"],
        ),
        (
            "download with a bad port",
            vec![&"download", &t, &"--dir", &d, &"--port", &"notaport"],
        ),
        (
            "download with a bad --direct-io",
            vec![&"download", &t, &"--dir", &d, &"--direct-io", &"sometimes"],
        ),
        (
            "download with an unknown flag",
            vec![&"download", &t, &"--dir", &d, &"--frobnicate"],
        ),
        ("create without -o", vec![&"create", &d]),
        ("info without a torrent", vec![&"info"]),
    ];
    for (what, args) in cases {
        let o = at(&w, &args);
        assert_usage_error(&o, what);
    }
}

/// A multi-file torrent made by libtorrent (the reference), with its info-hash.
fn lt_torrent(w: &Work) -> (std::path::PathBuf, String) {
    let src = w.path("data/tree");
    make_tree(
        &src,
        &[("a.bin", 100_001), ("b/c.bin", 16384), ("b/d.bin", 7)],
        11,
    );
    let t = w.path("tree.torrent");
    let hash = lt_create(
        w,
        &src,
        &t,
        &["http://127.0.0.1:6969/announce".to_string()],
        16384,
    );
    (t, hash)
}

#[test]
fn info_prints_libtorrents_info_hash() {
    let w = Work::new("cli_info");
    let (t, hash) = lt_torrent(&w);
    let o = at(&w, &[&"info", &t]);
    assert!(o.status.success(), "stderr: {}", o.stderr);
    assert!(
        o.stdout.to_ascii_lowercase().contains(&hash),
        "info output lacks {hash}:\n{}",
        o.stdout
    );
    let o = at(&w, &[&"info", &t, &"--json"]);
    assert!(o.status.success(), "stderr: {}", o.stderr);
    assert!(
        o.stdout.trim_start().starts_with('{'),
        "not JSON: {}",
        o.stdout
    );
    assert!(o.stdout.trim_end().ends_with('}'), "not JSON: {}", o.stdout);
    assert!(
        o.stdout.contains(&hash),
        "--json lacks {hash}: {}",
        o.stdout
    );
}

/// Extracts the first 40-hex-digit word of `text`.
fn find_hash(text: &str) -> Option<String> {
    text.split(|c: char| !c.is_ascii_hexdigit())
        .find(|w| w.len() == 40)
        .map(|w| w.to_ascii_lowercase())
}

fn create_and_check(w: &Work, src: &Path, extra: &[&str]) {
    let out = w.path("made.torrent");
    let _ = fs::remove_file(&out);
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"create", &src, &"-o", &out];
    for e in extra {
        args.push(e);
    }
    let o = at(w, &args);
    assert!(o.status.success(), "create failed: {}", o.stderr);
    assert!(out.is_file(), "create wrote no {}", out.display());

    let (lt_hash, have, total) = lt_check(w, &out, src.parent().unwrap());
    assert!(total > 0);
    assert_eq!(
        have, total,
        "libtorrent found only {have}/{total} pieces valid"
    );

    let o = at(w, &[&"info", &out]);
    assert!(o.status.success(), "info failed: {}", o.stderr);
    let ours = find_hash(&o.stdout).unwrap_or_else(|| panic!("no hash in {}", o.stdout));
    assert_eq!(
        ours, lt_hash,
        "atorrent and libtorrent disagree on the info-hash"
    );
    assert_eq!(lt_infohash(w, &out), lt_hash);
}

#[test]
fn create_multi_file_is_accepted_by_libtorrent() {
    let w = Work::new("cli_create_multi");
    let src = w.path("data/multi");
    make_tree(
        &src,
        &[
            ("one.bin", 1),
            ("sub/16383.bin", 16383),
            ("sub/16385.bin", 16385),
            ("sub/z/big.bin", 300_007),
        ],
        12,
    );
    create_and_check(
        &w,
        &src,
        &[
            "--tracker",
            "http://127.0.0.1:6969/announce",
            "--piece-length",
            "32768",
        ],
    );
}

#[test]
fn create_single_file_is_accepted_by_libtorrent() {
    let w = Work::new("cli_create_single");
    let src = w.path("data/single.bin");
    write_random_file(&src, 1_234_567, 13);
    create_and_check(&w, &src, &[]);
}

#[test]
fn malformed_torrents_exit_1_with_a_message() {
    let w = Work::new("cli_malformed");
    let (good, _) = lt_torrent(&w);
    let bytes = fs::read(&good).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"this is not a torrent".to_vec()),
        ("empty file", Vec::new()),
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("no info dict", b"d8:announce3:abce".to_vec()),
        (
            "pieces not a multiple of 20",
            b"d4:infod6:lengthi1e4:name1:x12:piece lengthi16384e6:pieces3:abcee".to_vec(),
        ),
    ];
    let dl = w.mkdir("dl");
    for (what, data) in cases {
        let t = w.path("bad.torrent");
        fs::write(&t, &data).unwrap();
        let o = at(&w, &[&"info", &t]);
        assert_runtime_error(&o, &format!("info on {what}"));
        let o = at(&w, &[&"download", &t, &"--dir", &dl]);
        assert_runtime_error(&o, &format!("download of {what}"));
    }
    assert!(
        list_files(&dl).is_empty(),
        "a malformed torrent wrote files"
    );
    let missing = w.path("does-not-exist.torrent");
    let o = at(&w, &[&"info", &missing]);
    assert_runtime_error(&o, "info on a missing file");
}
