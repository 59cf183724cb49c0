//! Layer 3 (I/O shell): the daemon's log — a `log::Log` that writes timestamped lines to a
//! size-capped file with one rotation, and optionally echoes them to stderr.
//!
//! Text lines look like `2026-11-26T13:04:05.123Z INFO  engine: message`: UTC timestamp with
//! milliseconds, level padded to five, the subsystem (the module path without the crate
//! name), then the message. With `json` each line is one object:
//! `{"ts":"…","level":"INFO","target":"engine","msg":"…"}`.
//!
//! Routers keep logs in RAM, so the file never grows past `max_size`: when a line would push it
//! over, the file is renamed to `<file>.1` (replacing the previous one) and a new file is
//! started. `max_size` 0 means no cap. Write errors are swallowed (there is nowhere to report
//! them) except that the logger retries opening the file on the next line.
//!
//! This module reads the wall clock (`SystemTime`) for timestamps only; it must not contain
//! any logic beyond formatting and file rotation.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Longest message logged; longer ones are cut (a runaway peer error string must not fill the
/// router's RAM disk in one line).
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// Civil date and time (UTC) for milliseconds since the Unix epoch, as
/// `YYYY-MM-DDTHH:MM:SS.mmmZ`. Days-to-date uses the proleptic Gregorian algorithm from
/// Howard Hinnant's `civil_from_days`.
pub fn format_timestamp(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let ms = unix_ms % 1000;
    let days = secs / 86_400;
    let sod = secs % 86_400;
    let (h, m, s) = (sod / 3600, sod / 60 % 60, sod % 60);
    // Shift the epoch to 0000-03-01 so leap days fall at the end of each 400-year era.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
}

/// The subsystem shown in a line: the module path without the `atorrent::` prefix.
fn subsystem(target: &str) -> &str {
    target.strip_prefix("atorrent::").unwrap_or(target)
}

fn cut(msg: &str) -> &str {
    if msg.len() <= MAX_MESSAGE_BYTES {
        return msg;
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    &msg[..end]
}

/// One log line (with its `\n`). Newlines inside a text message are escaped so every line is
/// one record.
pub fn format_line(unix_ms: u64, level: Level, target: &str, msg: &str, json: bool) -> String {
    let ts = format_timestamp(unix_ms);
    let msg = cut(msg);
    let target = subsystem(target);
    if json {
        format!(
            "{{\"ts\":\"{ts}\",\"level\":\"{level}\",\"target\":\"{}\",\"msg\":\"{}\"}}\n",
            crate::ctl::json_escape(target),
            crate::ctl::json_escape(msg)
        )
    } else {
        let msg = msg.replace('\r', "\\r").replace('\n', "\\n");
        format!("{ts} {:<5} {target}: {msg}\n", level.as_str())
    }
}

struct Sink {
    path: PathBuf,
    file: Option<File>,
    size: u64,
}

fn open_append(path: &Path) -> io::Result<(File, u64)> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)?;
    let size = f.metadata()?.len();
    Ok((f, size))
}

impl Sink {
    fn write_line(&mut self, line: &[u8], max_size: u64) {
        let len = line.len() as u64;
        if max_size > 0 && self.size > 0 && self.size.saturating_add(len) > max_size {
            self.file = None;
            let mut rotated = self.path.clone().into_os_string();
            rotated.push(".1");
            let _ = std::fs::rename(&self.path, &rotated);
            self.size = 0;
        }
        if self.file.is_none() {
            match open_append(&self.path) {
                Ok((f, size)) => {
                    self.file = Some(f);
                    self.size = size;
                }
                Err(_) => return,
            }
        }
        if let Some(f) = self.file.as_mut() {
            if f.write_all(line).is_ok() {
                self.size = self.size.saturating_add(len);
            } else {
                self.file = None;
            }
        }
    }
}

/// The logger. Build one with [`Logger::new`] (tests) or install the global one with [`init`].
pub struct Logger {
    level: AtomicUsize,
    json: bool,
    max_size: u64,
    echo: bool,
    sink: Option<Mutex<Sink>>,
}

fn level_to_usize(l: LevelFilter) -> usize {
    l as usize
}

fn usize_to_level(n: usize) -> LevelFilter {
    LevelFilter::iter().nth(n).unwrap_or(LevelFilter::Trace)
}

impl Logger {
    /// `path` None logs to stderr only (and `echo` is implied).
    pub fn new(
        path: Option<&Path>,
        level: LevelFilter,
        json: bool,
        max_size: u64,
        echo: bool,
    ) -> io::Result<Logger> {
        let sink = match path {
            None => None,
            Some(p) => {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                let (f, size) = open_append(p)?;
                Some(Mutex::new(Sink {
                    path: p.to_path_buf(),
                    file: Some(f),
                    size,
                }))
            }
        };
        Ok(Logger {
            level: AtomicUsize::new(level_to_usize(level)),
            json,
            max_size,
            echo: echo || path.is_none(),
            sink,
        })
    }

    pub fn level(&self) -> LevelFilter {
        usize_to_level(self.level.load(Ordering::Relaxed))
    }

    pub fn set_level(&self, level: LevelFilter) {
        self.level.store(level_to_usize(level), Ordering::Relaxed);
    }

    /// Writes one record stamped `unix_ms` (the `Log` impl passes the wall clock).
    pub fn log_at(&self, unix_ms: u64, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let msg = record.args().to_string();
        let line = format_line(unix_ms, record.level(), record.target(), &msg, self.json);
        if let Some(sink) = &self.sink {
            if let Ok(mut s) = sink.lock() {
                s.write_line(line.as_bytes(), self.max_size);
            }
        }
        if self.echo {
            let _ = io::stderr().write_all(line.as_bytes());
        }
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level()
    }

    fn log(&self, record: &Record<'_>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        self.log_at(now, record);
    }

    fn flush(&self) {
        if let Some(sink) = &self.sink {
            if let Ok(mut s) = sink.lock() {
                if let Some(f) = s.file.as_mut() {
                    let _ = f.flush();
                }
            }
        }
    }
}

static GLOBAL: std::sync::OnceLock<&'static Logger> = std::sync::OnceLock::new();

/// Installs the process-wide logger. `path` None logs to stderr only. Fails if the file
/// cannot be opened or a logger is already installed.
pub fn init(
    path: Option<&Path>,
    level: LevelFilter,
    json: bool,
    max_size: u64,
    echo: bool,
) -> io::Result<()> {
    let logger: &'static Logger =
        Box::leak(Box::new(Logger::new(path, level, json, max_size, echo)?));
    log::set_logger(logger)
        .map_err(|_| io::Error::new(io::ErrorKind::AlreadyExists, "logger already installed"))?;
    let _ = GLOBAL.set(logger);
    log::set_max_level(level);
    Ok(())
}

/// Changes the level of the installed logger (SIGHUP reload). A no-op before [`init`].
pub fn set_level(level: LevelFilter) {
    if let Some(l) = GLOBAL.get() {
        l.set_level(level);
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let mut r = [0u8; 8];
            crate::sys::getrandom(&mut r).unwrap();
            let p =
                std::env::temp_dir().join(format!("atorrent-log-{tag}-{}", crate::hash::hex(&r)));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn emit(l: &Logger, ms: u64, level: Level, target: &str, msg: &str) {
        l.log_at(
            ms,
            &Record::builder()
                .level(level)
                .target(target)
                .args(format_args!("{msg}"))
                .build(),
        );
    }

    #[test]
    fn timestamp_known_dates() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000Z");
        // 2026-11-26T13:04:05.123Z
        assert_eq!(
            format_timestamp(1_795_698_245_123),
            "2026-11-26T13:04:05.123Z"
        );
        // Leap day and end of a century year.
        assert_eq!(
            format_timestamp(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            format_timestamp(4_107_542_399_999),
            "2100-02-28T23:59:59.999Z"
        );
        assert_eq!(
            format_timestamp(4_107_542_400_000),
            "2100-03-01T00:00:00.000Z"
        );
        assert_eq!(
            format_timestamp(1_709_251_199_000),
            "2024-02-29T23:59:59.000Z"
        );
    }

    #[test]
    fn line_text_and_json_formats() {
        let ms = 1_795_698_245_123;
        assert_eq!(
            format_line(
                ms,
                Level::Info,
                "atorrent::engine",
                "started 2 torrents",
                false
            ),
            "2026-11-26T13:04:05.123Z INFO  engine: started 2 torrents\n"
        );
        assert_eq!(
            format_line(ms, Level::Error, "atorrent::state", "a\nb", false),
            "2026-11-26T13:04:05.123Z ERROR state: a\\nb\n"
        );
        assert_eq!(
            format_line(ms, Level::Warn, "mio", "q\"x\n", true),
            "{\"ts\":\"2026-11-26T13:04:05.123Z\",\"level\":\"WARN\",\"target\":\"mio\",\
             \"msg\":\"q\\\"x\\n\"}\n"
        );
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let l = format_line(0, Level::Info, "x", &long, false);
        assert!(l.len() < MAX_MESSAGE_BYTES + 64);
    }

    #[test]
    fn logger_filters_by_level_and_reloads() {
        let t = TempDir::new("lv");
        let p = t.0.join("sub/atorrent.log");
        let l = Logger::new(Some(&p), LevelFilter::Info, false, 0, false).unwrap();
        emit(&l, 0, Level::Debug, "atorrent::peer", "hidden");
        emit(&l, 0, Level::Info, "atorrent::peer", "shown");
        l.set_level(LevelFilter::Debug);
        emit(&l, 0, Level::Debug, "atorrent::peer", "now shown");
        l.flush();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(
            text,
            "1970-01-01T00:00:00.000Z INFO  peer: shown\n\
             1970-01-01T00:00:00.000Z DEBUG peer: now shown\n"
        );
        assert_eq!(l.level(), LevelFilter::Debug);
    }

    #[test]
    fn logger_rotates_once_at_the_cap() {
        let t = TempDir::new("rot");
        let p = t.0.join("a.log");
        let rotated = t.0.join("a.log.1");
        // Each line is 24 + 1 + 5 + 1 + "x: " + 10 + 1 = 45 bytes; cap at 100 = two lines.
        let l = Logger::new(Some(&p), LevelFilter::Trace, false, 100, false).unwrap();
        let line = |i: u32| format!("msg-{i:06}");
        for i in 0..5 {
            emit(&l, 0, Level::Info, "x", &line(i));
        }
        let cur = std::fs::read_to_string(&p).unwrap();
        let old = std::fs::read_to_string(&rotated).unwrap();
        assert_eq!(cur.lines().count(), 1);
        assert!(cur.contains("msg-000004"));
        assert_eq!(old.lines().count(), 2);
        assert!(old.contains("msg-000002") && old.contains("msg-000003"));
        assert!(std::fs::metadata(&p).unwrap().len() <= 100);
        // A reopened logger continues from the existing size (45 + a 72-byte JSON line fits
        // under 200).
        drop(l);
        let l = Logger::new(Some(&p), LevelFilter::Trace, true, 200, false).unwrap();
        emit(&l, 0, Level::Info, "x", "j");
        let cur = std::fs::read_to_string(&p).unwrap();
        assert_eq!(cur.lines().count(), 2);
        assert!(cur.lines().nth(1).unwrap().starts_with("{\"ts\":"));
        // A line longer than the cap still gets written (alone) rather than lost.
        emit(&l, 0, Level::Info, "x", &"y".repeat(300));
        assert!(std::fs::read_to_string(&p)
            .unwrap()
            .contains(&"y".repeat(300)));
        assert!(std::fs::read_to_string(&rotated)
            .unwrap()
            .contains("\"msg\":\"j\""));
    }

    #[test]
    fn logger_recreates_a_deleted_file_after_rotation() {
        let t = TempDir::new("del");
        let p = t.0.join("b.log");
        let l = Logger::new(Some(&p), LevelFilter::Info, false, 50, false).unwrap();
        emit(&l, 0, Level::Info, "x", "first line here");
        std::fs::remove_file(&p).unwrap();
        emit(&l, 0, Level::Info, "x", "second line here");
        emit(&l, 0, Level::Info, "x", "third");
        assert!(std::fs::read_to_string(&p).unwrap().contains("third"));
    }
}
