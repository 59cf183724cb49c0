//! What ships beside the binary: the sysvinit script starting, reporting and stopping a real
//! daemon; the systemd unit passing `systemd-analyze verify`; the man page documenting every
//! config key (as `--print-config` lists them, with the same defaults) and every command (as
//! `--help` lists them).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use crate::daemon::{pid_alive, wait_gone, DetachedGuard};

fn private_config(w: &Work) -> PathBuf {
    let listen = endpoint();
    let cfg = w.path("config.ini");
    fs::write(
        &cfg,
        format!(
            "download_dir = {}\nstate_dir = {}\nlog_file = {}\nlisten_port = {}\n\
             bind_address = {}\nenable_dht = false\nenable_ipv6 = false\n",
            w.path("dl").display(),
            w.path("state").display(),
            w.path("atorrent.log").display(),
            listen.port(),
            listen.ip(),
        ),
    )
    .unwrap();
    cfg
}

fn cli(w: &Work, cfg: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(atorrent_bin());
    cmd.arg("--config").arg(cfg).args(args);
    run(w, cmd, secs(20))
}

/// scripts/init/atorrent.sysv against the real binary, pointed at a private config, pid file
/// and (absent) defaults file through its ATORRENT_* overrides.
#[test]
fn sysv_script_start_status_reload_stop() {
    let w = Work::new("sysv_script");
    let cfg = private_config(&w);
    let pid_file = w.path("atorrent.pid");
    let _guard = DetachedGuard(pid_file.clone());
    let script = repo_root().join("scripts/init/atorrent.sysv");
    let sysv = |action: &str| {
        let mut cmd = Command::new("sh");
        cmd.arg(&script)
            .arg(action)
            .env("ATORRENT_DAEMON", atorrent_bin())
            .env("ATORRENT_CONFIG", &cfg)
            .env("ATORRENT_PIDFILE", &pid_file)
            .env("ATORRENT_DEFAULTS", w.path("no-such-defaults"));
        run(&w, cmd, secs(40))
    };

    let st = sysv("status");
    assert_eq!(st.code(), Some(3), "status before start: {}", st.stdout);
    assert!(st.stdout.contains("not running"), "{}", st.stdout);

    let start = sysv("start");
    assert!(
        start.status.success(),
        "start: {:?} {}{}",
        start.code(),
        start.stdout,
        start.stderr
    );
    let pid: u32 = fs::read_to_string(&pid_file)
        .expect("pid file after start")
        .trim()
        .parse()
        .expect("pid file holds a number");
    assert!(pid_alive(pid));
    // `start` returned, so the daemon already answers.
    let list = cli(&w, &cfg, &["list"]);
    assert!(list.status.success(), "list: {}", list.stderr);

    let st = sysv("status");
    assert_eq!(st.code(), Some(0), "{}{}", st.stdout, st.stderr);
    assert!(
        st.stdout.contains(&format!("is running (pid {pid})")),
        "{}",
        st.stdout
    );
    let again = sysv("start");
    assert!(again.status.success());
    assert!(again.stdout.contains("already running"), "{}", again.stdout);
    assert_eq!(
        fs::read_to_string(&pid_file).unwrap().trim(),
        pid.to_string()
    );

    // reload = SIGHUP = the daemon re-reads its config.
    let r = sysv("reload");
    assert!(r.status.success(), "reload: {}{}", r.stdout, r.stderr);
    let end = std::time::Instant::now() + w.cap(secs(10));
    while !fs::read_to_string(w.path("atorrent.log"))
        .unwrap_or_default()
        .contains("configuration reloaded")
    {
        assert!(std::time::Instant::now() < end, "no reload in the log");
        std::thread::sleep(Duration::from_millis(50));
    }

    let stop = sysv("stop");
    assert!(
        stop.status.success(),
        "stop: {}{}",
        stop.stdout,
        stop.stderr
    );
    wait_gone(&w, pid, &pid_file, secs(10));
    let st = sysv("status");
    assert_eq!(st.code(), Some(3), "status after stop: {}", st.stdout);
    let list = cli(&w, &cfg, &["list"]);
    assert_eq!(list.code(), Some(3), "daemon still answers after stop");
    // A clean stop (SIGTERM) saved state and logged no crash.
    let log = fs::read_to_string(w.path("atorrent.log")).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");
    let stop_again = sysv("stop");
    assert!(stop_again.status.success());
    assert!(stop_again.stdout.contains("not running"));
}

/// scripts/init/atorrent.service passes `systemd-analyze verify` (a temp copy whose ExecStart
/// runs the built binary, since verify checks that it exists), with no warnings about the
/// unit. MANPATH points at the man page so `Documentation=man:atorrent(1)` is checked too.
#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    require_tool("systemd-analyze");
    let w = Work::new("systemd_unit");
    let cfg = private_config(&w);
    let unit = fs::read_to_string(repo_root().join("scripts/init/atorrent.service")).unwrap();
    let exec = unit
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("unit has ExecStart");
    assert!(
        exec.contains(" daemon") && !exec.contains("--detach"),
        "ExecStart must run the daemon in the foreground (Type=simple): {exec}"
    );
    let copy = unit.replace(
        exec,
        &format!(
            "ExecStart={} daemon --config {}",
            atorrent_bin(),
            cfg.display()
        ),
    );
    let path = w.path("atorrent.service");
    fs::write(&path, copy).unwrap();
    let man1 = w.mkdir("man/man1");
    fs::copy(
        repo_root().join("scripts/atorrent.1"),
        man1.join("atorrent.1"),
    )
    .unwrap();

    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("verify");
    let have_man = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("man").is_file()))
        .unwrap_or(false);
    if have_man {
        cmd.env("MANPATH", w.path("man"));
    } else {
        cmd.arg("--man=no");
    }
    cmd.arg(&path);
    let o = run(&w, cmd, secs(60));
    let complaints: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| l.contains("atorrent"))
        .collect();
    assert!(
        o.status.success() && complaints.is_empty(),
        "systemd-analyze verify: {:?}\n{}{}",
        o.code(),
        o.stdout,
        o.stderr
    );
}

/// The `.TP` entries of one `.SH` section of the man page: the first word of each tag line
/// (`.B list`, `.BI "start " ...`, `.BR listen_port " (default: 6881)"`) with its tag line.
fn man_entries(man: &str, section: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut inside = false;
    let mut tag_next = false;
    for line in man.lines() {
        if let Some(name) = line.strip_prefix(".SH ") {
            inside = name.trim_matches('"') == section;
            continue;
        }
        if !inside {
            continue;
        }
        if line == ".TP" {
            tag_next = true;
            continue;
        }
        if tag_next {
            tag_next = false;
            let rest = line
                .strip_prefix(".BI ")
                .or_else(|| line.strip_prefix(".BR "))
                .or_else(|| line.strip_prefix(".B "))
                .unwrap_or(line);
            let word: String = rest
                .trim_start_matches('"')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.push((word, line.to_string()));
        }
    }
    out
}

/// `key = value` lines of `--print-config`.
fn printed_config(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once(" ="))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Every key `--print-config` prints has its own entry in the man page's CONFIGURATION
/// section, whose `(default: X)` matches the value printed for an empty config file (paths and
/// values derived from other keys aside), and the man page documents no key that does not exist.
#[test]
fn man_page_documents_every_config_key_with_its_default() {
    let w = Work::new("man_config");
    let man = fs::read_to_string(repo_root().join("scripts/atorrent.1")).unwrap();
    let empty = w.path("empty.ini");
    fs::write(&empty, "").unwrap();
    let mut cmd = Command::new(atorrent_bin());
    cmd.arg("--config")
        .arg(&empty)
        .args(["daemon", "--print-config"])
        .env("HOME", w.path("home"))
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME")
        .env_remove("XDG_STATE_HOME");
    let o = run(&w, cmd, secs(10));
    assert!(o.status.success(), "--print-config: {}", o.stderr);
    let keys = printed_config(&o.stdout);
    assert!(keys.len() >= 20, "too few keys parsed: {}", o.stdout);

    let entries = man_entries(&man, "CONFIGURATION");
    let mut missing = Vec::new();
    let mut wrong_default = Vec::new();
    for (key, value) in &keys {
        let Some((_, tag)) = entries.iter().find(|(w, _)| w == key) else {
            missing.push(key.clone());
            continue;
        };
        // Only plain values: paths depend on HOME, and empty means "derived" or "none".
        if value.is_empty() || value.contains('/') {
            continue;
        }
        let documented = tag
            .split_once("(default: ")
            .and_then(|(_, d)| d.split_once(')'))
            .map(|(d, _)| d.replace("\\-", "-"));
        match documented {
            Some(d) if d == *value || d.split(", ").eq(value.split(", ")) => {}
            Some(d) if d.contains("listen_port") || d.contains("empty") => {}
            other => wrong_default.push(format!("{key}: printed {value:?}, man {other:?}")),
        }
    }
    assert!(
        missing.is_empty(),
        "config keys without a man page entry: {missing:?}"
    );
    assert!(
        wrong_default.is_empty(),
        "man page defaults differ from --print-config:\n{}",
        wrong_default.join("\n")
    );
    let extra: Vec<&String> = entries
        .iter()
        .map(|(w, _)| w)
        .filter(|w| !keys.iter().any(|(k, _)| k == *w))
        .collect();
    assert!(
        extra.is_empty(),
        "man page documents unknown keys: {extra:?}"
    );
}

/// Every command `atorrent --help` lists has an entry in the man page's COMMANDS section.
#[test]
fn man_page_documents_every_command() {
    let w = Work::new("man_commands");
    let man = fs::read_to_string(repo_root().join("scripts/atorrent.1")).unwrap();
    let mut cmd = Command::new(atorrent_bin());
    cmd.arg("--help");
    let o = run(&w, cmd, secs(10));
    assert!(o.status.success());
    let commands: Vec<String> = o
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("COMMANDS"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    assert!(commands.len() >= 10, "commands from --help: {commands:?}");
    let entries = man_entries(&man, "COMMANDS");
    let missing: Vec<&String> = commands
        .iter()
        .filter(|c| !entries.iter().any(|(w, _)| w == *c))
        .collect();
    assert!(
        missing.is_empty(),
        "commands without a man page entry: {missing:?}"
    );
    // And the man page renders without groff warnings, where man is installed.
    if Path::new("/usr/bin/man").exists() {
        let mut cmd = Command::new("man");
        cmd.args(["--warnings", "-E", "UTF-8", "-l"])
            .arg(repo_root().join("scripts/atorrent.1"))
            .env("MANWIDTH", "80")
            .env("MANPAGER", "cat")
            .env("PAGER", "cat");
        let r = run(&w, cmd, secs(30));
        assert!(r.status.success(), "man: {}", r.stderr);
        assert!(r.stderr.trim().is_empty(), "groff warnings: {}", r.stderr);
        assert!(r.stdout.contains("atorrent"), "man printed nothing");
    }
}
