//! Layer 4 (process setup): the config file plus CLI overrides, into a validated [`Config`].
//!
//! This is the "high args" half of ripgrep's split: `cli.rs` says what the user typed, this module
//! decides what it means. It may read the config file and (through the `env` lookup the caller
//! passes in) environment variables, and nothing else: no sockets, no other files, no clock.
//! Taking `env` as a closure keeps tests away from the real environment.
//!
//! # File format
//!
//! INI-style, UTF-8: `key = value` per line; blank lines and lines starting with `#` or `;` are
//! ignored, as is an inline comment that starts with ` #` or ` ;` (whitespace before it).
//! `[section]` headers are accepted and ignored. Unknown and repeated keys are errors, so typos
//! never pass silently. Every error names the file, the line and the key:
//! `config.ini:12: max_connections: expected a number from 1 to 10000, got 'lots'`.
//!
//! Paths: a leading `~` is the home directory; a relative path is relative to the directory of
//! the config file. Sizes take binary K/M/G suffixes (`32K`, `1M`), rates are as in
//! [`crate::cli::parse_rate`].
//!
//! # Defaults
//!
//! Sized for a router with 32 MB of RAM: 50 peer connections with 32 KiB receive buffers and a
//! 1 MiB block pool come to about 4.4 MB with the tables (see [`Config::memory_budget`]).

use std::fmt;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::cli::{
    format_rate, format_size, parse_host_port, parse_port, parse_rate, parse_size, Cli, Command,
};

/// The engine's scratch buffer (`torrent::SCRATCH_LEN`), listed in the memory budget.
const SCRATCH_BYTES: u64 = crate::torrent::SCRATCH_LEN as u64;
/// BitTorrent block size (BEP 3: requests are "generally 2^14 (16 kiB)"); the unit of the
/// download block pool.
pub const BLOCK_SIZE: u64 = 16 * 1024;
/// Smallest `peer_buffer_size`: a whole `piece` message (16 KiB block + 13-byte header,
/// BEP 3 "piece: <len=0009+X><id=7><index><begin><block>") must fit in one receive buffer.
pub const MIN_PEER_BUFFER: u64 = 17 * 1024;
/// Largest `peer_buffer_size`: more buys nothing on a router and multiplies by connections.
pub const MAX_PEER_BUFFER: u64 = 1024 * 1024;
/// Largest config file read: the file is local, but `--config /dev/zero` must not eat memory.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// Most `dht_bootstrap` entries: bootstrap needs a handful; names are resolved by the engine.
pub const MAX_BOOTSTRAP_NODES: usize = 32;
/// Estimated bytes per candidate peer kept by a torrent (address, port, flags, timers).
pub const KNOWN_PEER_BYTES: u64 = 32;
/// Estimated bytes per DHT routing-table node (id 20, address 18, timers and flags).
pub const DHT_NODE_BYTES: u64 = 64;
/// Longest `seed_time`: ten years, so seconds arithmetic can never overflow downstream.
pub const MAX_SEED_TIME_SECS: u64 = 3650 * 86_400;

/// `direct_io`: whether storage writes with O_DIRECT. Storage has its own enum; the
/// integrator maps this one onto it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectIoMode {
    /// Use O_DIRECT where the filesystem supports it, fall back silently otherwise.
    Auto,
    /// Require O_DIRECT; fail to open data files without it.
    On,
    /// Never use O_DIRECT.
    Off,
}

impl DirectIoMode {
    /// Parses `auto`, `on` or `off` (also `true`/`false`/`yes`/`no`).
    pub fn parse(s: &str) -> Option<DirectIoMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(DirectIoMode::Auto),
            "on" | "true" | "yes" => Some(DirectIoMode::On),
            "off" | "false" | "no" => Some(DirectIoMode::Off),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DirectIoMode::Auto => "auto",
            DirectIoMode::On => "on",
            DirectIoMode::Off => "off",
        }
    }
}

/// `enable_encryption`: BEP 8 (MSE/PE) policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encryption {
    /// Plaintext only.
    Off,
    /// Offer encryption, accept plaintext.
    Prefer,
    /// Refuse plaintext peers.
    Require,
}

impl Encryption {
    pub fn as_str(self) -> &'static str {
        match self {
            Encryption::Off => "off",
            Encryption::Prefer => "prefer",
            Encryption::Require => "require",
        }
    }
}

/// `log_level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Off => "off",
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }

    pub fn to_filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Off => log::LevelFilter::Off,
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// `log_format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// `alt_schedule`: when the alternative limits apply, e.g. `mon-fri 08:00-18:00`.
///
/// Weekdays are numbered as libc's `tm_wday`: 0 = Sunday .. 6 = Saturday. A window whose end
/// is not after its start wraps past midnight (`fri 22:00-02:00`) and its early-morning part
/// belongs to the day it started on (so Saturday 01:00 is active for `fri`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Bit `d` set: the window starts on weekday `d` (0 = Sunday).
    pub days: u8,
    /// Minute of day the window opens, 0..1440.
    pub start: u16,
    /// Minute of day the window closes, 1..=1440 (`24:00` = 1440); may be `< start` (wraps).
    pub end: u16,
}

const DAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
const ALL_DAYS: u8 = 0x7f;
const MINUTES_PER_DAY: u16 = 1440;

fn parse_day(s: &str) -> Option<u8> {
    const FULL: [&str; 7] = [
        "sunday",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
    ];
    (0u8..7).find(|&d| {
        let i = usize::from(d);
        DAY_NAMES.get(i) == Some(&s) || FULL.get(i) == Some(&s)
    })
}

fn parse_days(s: &str) -> Option<u8> {
    let mut days = 0u8;
    for item in s.split(',') {
        let item = item.trim();
        days |= match item {
            "daily" | "all" | "everyday" | "*" => ALL_DAYS,
            "weekdays" => 0b0011_1110,
            "weekends" => 0b0100_0001,
            _ => match item.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (parse_day(a.trim())?, parse_day(b.trim())?);
                    let mut bits = 0u8;
                    let mut d = a;
                    // Walk forward from a to b, wrapping (fri-mon = fri,sat,sun,mon).
                    loop {
                        bits |= 1 << d;
                        if d == b {
                            break;
                        }
                        d = (d + 1) % 7;
                    }
                    bits
                }
                None => 1 << parse_day(item)?,
            },
        };
    }
    Some(days)
}

/// Parses `HH:MM`; `24:00` only when `allow_24`.
fn parse_clock(s: &str, allow_24: bool) -> Option<u16> {
    let (h, m) = s.trim().split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    if !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    if m > 59 {
        return None;
    }
    if h == 24 && m == 0 && allow_24 {
        return Some(MINUTES_PER_DAY);
    }
    if h > 23 {
        return None;
    }
    Some(h * 60 + m)
}

impl Schedule {
    /// Parses `[DAYS] HH:MM-HH:MM`. DAYS is a comma list of `mon`..`sun` (or full names),
    /// ranges like `mon-fri` (wrapping allowed), `daily`, `weekdays` or `weekends`; without
    /// DAYS the window applies every day.
    pub fn parse(s: &str) -> Result<Schedule, String> {
        let lower = s.trim().to_ascii_lowercase();
        let bad =
            |why: &str| format!("{why}; expected a schedule like 'mon-fri 08:00-18:00', got '{s}'");
        let tokens: Vec<&str> = lower.split_whitespace().collect();
        let (days, times) = match tokens.as_slice() {
            [t] => (ALL_DAYS, *t),
            [d, t] => (parse_days(d).ok_or_else(|| bad("bad days"))?, *t),
            _ => return Err(bad("bad schedule")),
        };
        let (a, b) = times.split_once('-').ok_or_else(|| bad("bad time range"))?;
        let start = parse_clock(a, false).ok_or_else(|| bad("bad start time"))?;
        let end = parse_clock(b, true).ok_or_else(|| bad("bad end time"))?;
        if start == end {
            return Err(bad("empty time range"));
        }
        Ok(Schedule { days, start, end })
    }

    fn has_day(&self, weekday: u8) -> bool {
        weekday < 7 && self.days & (1 << weekday) != 0
    }

    /// Whether the window is open at `minute_of_day` (0..1440) on `weekday` (0 = Sunday).
    /// Out-of-range inputs are never active.
    pub fn active(&self, weekday: u8, minute_of_day: u16) -> bool {
        if weekday > 6 || minute_of_day >= MINUTES_PER_DAY {
            return false;
        }
        if self.start < self.end {
            self.has_day(weekday) && (self.start..self.end).contains(&minute_of_day)
        } else {
            let yesterday = (weekday + 6) % 7;
            (self.has_day(weekday) && minute_of_day >= self.start)
                || (self.has_day(yesterday) && minute_of_day < self.end)
        }
    }
}

impl fmt::Display for Schedule {
    /// Canonical form, Monday first: `mon-fri 08:00-18:00`, `daily 22:00-06:00`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.days & ALL_DAYS == ALL_DAYS {
            f.write_str("daily")?;
        } else {
            const ORDER: [u8; 7] = [1, 2, 3, 4, 5, 6, 0];
            let mut parts: Vec<String> = Vec::new();
            let mut i = 0;
            while i < ORDER.len() {
                let d = ORDER[i];
                if !self.has_day(d) {
                    i += 1;
                    continue;
                }
                let mut j = i;
                while j + 1 < ORDER.len() && self.has_day(ORDER[j + 1]) {
                    j += 1;
                }
                let first = DAY_NAMES[usize::from(d)];
                let last = DAY_NAMES[usize::from(ORDER[j])];
                parts.push(if i == j {
                    first.to_string()
                } else {
                    format!("{first}-{last}")
                });
                i = j + 1;
            }
            f.write_str(&parts.join(","))?;
        }
        write!(
            f,
            " {:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

/// Every setting. Fields mirror the config keys one to one (the two rate pairs come from
/// `bandwidth_limits` and `alt_limits`); `home` is not a key.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Home directory used to expand `~` in paths (from `HOME`; `.` when unset).
    pub home: PathBuf,
    /// `download_dir`: where torrent data goes. Default `$HOME/Downloads`
    /// (`$XDG_DOWNLOAD_DIR` if set and absolute).
    pub download_dir: PathBuf,
    /// `listen_port`: TCP port for incoming peers. Default 6881.
    pub listen_port: u16,
    /// `bind_address`: local address to listen on and connect from. Default `None`: listen
    /// on 0.0.0.0 and [::].
    pub bind_address: Option<IpAddr>,
    /// `max_connections`: peer connections across all torrents. Default 50.
    pub max_connections: u32,
    /// `max_connections_per_torrent`: default 40; never more than `max_connections`
    /// (clamped after loading).
    pub max_connections_per_torrent: u32,
    /// `max_half_open`: outgoing connects in progress at once. Default 8; at most
    /// `max_connections` (clamped).
    pub max_half_open: u32,
    /// `upload_slots`: peers unchoked at once (BEP 3 tit-for-tat). Default 4.
    pub upload_slots: u32,
    /// `bandwidth_limits` `down=`: bytes/s, `None` = unlimited. Default unlimited.
    pub down_limit: Option<u64>,
    /// `bandwidth_limits` `up=`: bytes/s, `None` = unlimited. Default unlimited.
    pub up_limit: Option<u64>,
    /// `alt_limits` `down=`: applies while `alt_schedule` is active. Default unlimited.
    pub alt_down_limit: Option<u64>,
    /// `alt_limits` `up=`. Default unlimited.
    pub alt_up_limit: Option<u64>,
    /// `alt_schedule`: default `None` (alternative limits never apply).
    pub alt_schedule: Option<Schedule>,
    /// `dht_port`: UDP port for DHT (BEP 5) and UDP trackers. Default: `listen_port`.
    pub dht_port: u16,
    /// `enable_dht`: default true.
    pub enable_dht: bool,
    /// `dht_bootstrap`: `host:port` nodes used to join the DHT when the table is empty.
    pub dht_bootstrap: Vec<String>,
    /// `enable_pex`: BEP 11 peer exchange. Default true.
    pub enable_pex: bool,
    /// `enable_ipv6`: default true.
    pub enable_ipv6: bool,
    /// `log_level`: default info.
    pub log_level: LogLevel,
    /// `log_file`: default `$XDG_DATA_HOME/atorrent/atorrent.log`; `None` (`-`) = stderr.
    pub log_file: Option<PathBuf>,
    /// `log_format`: text or json. Default text.
    pub log_format: LogFormat,
    /// `log_max_size`: rotate the log past this many bytes; 0 = never. Default 1M.
    pub log_max_size: u64,
    /// `enable_encryption`: BEP 8 policy. Default prefer.
    pub enable_encryption: Encryption,
    /// `state_dir`: resume data and the daemon's files. Default `$XDG_STATE_HOME/atorrent`
    /// (`~/.local/state/atorrent`).
    pub state_dir: PathBuf,
    /// `control_socket`: Unix socket the CLI commands talk to. Default `<state_dir>/control.sock`.
    pub control_socket: PathBuf,
    /// `stats_file`: lifetime totals. Default `<state_dir>/stats`.
    pub stats_file: PathBuf,
    /// `max_active_downloads`: torrents downloading at once; others queue. Default 3.
    pub max_active_downloads: u32,
    /// `max_active_seeds`: torrents seeding at once. Default 5.
    pub max_active_seeds: u32,
    /// `watch_dir`: directory polled for new .torrent files. Default none.
    pub watch_dir: Option<PathBuf>,
    /// `direct_io`: default auto.
    pub direct_io: DirectIoMode,
    /// `async_io`: hand O_DIRECT chunk writes to kernel AIO so the event loop keeps reading
    /// while the disk works. Default true (falls back to synchronous writes without AIO).
    pub async_io: bool,
    /// `seed_ratio`: stop seeding at this upload/download ratio; 0 = unlimited (default).
    pub seed_ratio: f64,
    /// `seed_time`: stop seeding after this many seconds; 0 = unlimited (default).
    pub seed_time: u64,
    /// `block_buffers`: 16 KiB download block buffers in the pool. Default 64 (1 MiB).
    pub block_buffers: u32,
    /// `peer_buffer_size`: per-connection receive buffer in bytes. Default 20K (17K..1M): one
    /// piece message and change, measured as fast as 32K on loopback with less memory.
    pub peer_buffer_size: u32,
    /// `max_open_files`: data file descriptors kept open. Default 32.
    pub max_open_files: u32,
    /// `max_known_peers`: candidate peers remembered per torrent. Default 500.
    pub max_known_peers: u32,
    /// `dht_max_nodes`: DHT routing-table cap. Default 400.
    pub dht_max_nodes: u32,
}

/// A config problem. `main` prints `atorrent: <msg>` and exits with status 2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The file could not be read (an explicit `--config` that is missing, permissions, ...).
    Read { path: PathBuf, message: String },
    /// A line that is neither a comment, a section nor `key = value`.
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    UnknownKey {
        file: String,
        line: usize,
        key: String,
    },
    DuplicateKey {
        file: String,
        line: usize,
        key: String,
        first_line: usize,
    },
    /// A known key with a bad value.
    Value {
        file: String,
        line: usize,
        key: String,
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, message } => {
                write!(f, "cannot read config file {}: {message}", path.display())
            }
            ConfigError::Syntax {
                file,
                line,
                message,
            } => write!(f, "{file}:{line}: {message}"),
            ConfigError::UnknownKey { file, line, key } => {
                write!(f, "{file}:{line}: unknown key '{key}'")
            }
            ConfigError::DuplicateKey {
                file,
                line,
                key,
                first_line,
            } => write!(f, "{file}:{line}: {key}: already set on line {first_line}"),
            ConfigError::Value {
                file,
                line,
                key,
                message,
            } => write!(f, "{file}:{line}: {key}: {message}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every key, in file order, with the comment `to_ini` writes above it.
pub const KEYS: &[(&str, &str)] = &[
    ("download_dir", "Where torrent data is saved."),
    (
        "listen_port",
        "TCP port for incoming peer connections (1-65535).",
    ),
    (
        "bind_address",
        "Local IP to listen on and connect from; empty = all (0.0.0.0 and [::]).",
    ),
    (
        "max_connections",
        "Peer connections across all torrents (1-10000).",
    ),
    (
        "max_connections_per_torrent",
        "Peer connections per torrent (1-10000, at most max_connections).",
    ),
    (
        "max_half_open",
        "Outgoing connection attempts in progress at once (1-1000).",
    ),
    (
        "upload_slots",
        "Peers unchoked (uploaded to) at once per torrent (1-1000).",
    ),
    (
        "bandwidth_limits",
        "Rate limits in bytes/s, e.g. 'down=2M up=512K'; off = unlimited.",
    ),
    (
        "alt_limits",
        "Alternative rate limits used while alt_schedule is active; same syntax.",
    ),
    (
        "alt_schedule",
        "When alt_limits apply, e.g. 'mon-fri 08:00-18:00'; empty = never.",
    ),
    (
        "dht_port",
        "UDP port for the DHT and UDP trackers (default: listen_port).",
    ),
    (
        "enable_dht",
        "Find peers through the DHT (BEP 5): true or false.",
    ),
    (
        "dht_bootstrap",
        "Comma-separated host:port nodes used to join the DHT.",
    ),
    (
        "enable_pex",
        "Exchange peer lists with peers (BEP 11): true or false.",
    ),
    ("enable_ipv6", "Use IPv6 as well as IPv4: true or false."),
    ("log_level", "error, warn, info, debug or trace (or off)."),
    ("log_file", "Log file; '-' = standard error."),
    ("log_format", "text or json."),
    (
        "log_max_size",
        "Rotate the log file past this size, e.g. 1M; 0 = never.",
    ),
    (
        "enable_encryption",
        "Peer encryption (BEP 8): off, prefer or require.",
    ),
    (
        "state_dir",
        "Resume data, control socket and stats live here.",
    ),
    (
        "control_socket",
        "Unix socket that 'atorrent start/stop/list/...' talk to.",
    ),
    ("stats_file", "File keeping lifetime transfer totals."),
    (
        "max_active_downloads",
        "Torrents downloading at once; the rest wait (1-1000).",
    ),
    ("max_active_seeds", "Torrents seeding at once (0-1000)."),
    (
        "watch_dir",
        "Directory checked for new .torrent files; empty = none.",
    ),
    (
        "direct_io",
        "O_DIRECT writes that bypass the page cache: auto, on or off.",
    ),
    (
        "async_io",
        "Queue O_DIRECT writes with kernel AIO instead of waiting for each: true or false.",
    ),
    (
        "seed_ratio",
        "Stop seeding at this upload/download ratio; 0 = never.",
    ),
    (
        "seed_time",
        "Stop seeding after this long, e.g. 90m, 2h, 1d; 0 = never.",
    ),
    (
        "block_buffers",
        "16 KiB download block buffers in the pool (4-65536).",
    ),
    (
        "peer_buffer_size",
        "Receive buffer per peer connection (17K-1M).",
    ),
    ("max_open_files", "Data files kept open at once (1-4096)."),
    (
        "max_known_peers",
        "Candidate peers remembered per torrent (10-100000).",
    ),
    ("dht_max_nodes", "DHT routing table size cap (8-100000)."),
];

/// `$NAME` if set to an absolute path (the XDG spec says to ignore relative values).
fn xdg(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<PathBuf> {
    env(name).map(PathBuf::from).filter(|p| p.is_absolute())
}

fn home_dir(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    match env("HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => PathBuf::from("."),
    }
}

/// `$XDG_CONFIG_HOME/atorrent/config.ini`, with `XDG_CONFIG_HOME` defaulting to `~/.config`.
pub fn default_config_path(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    xdg(env, "XDG_CONFIG_HOME")
        .unwrap_or_else(|| home_dir(env).join(".config"))
        .join("atorrent")
        .join("config.ini")
}

/// Reads the config (`path`, or the default path) and returns it over the defaults. An explicit
/// path must exist; a missing default file just means defaults.
pub fn load(
    path: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let defaults = Config::default_for_env(env);
    let (path, explicit) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => (default_config_path(env), false),
    };
    let read_err = |message: String| ConfigError::Read {
        path: path.clone(),
        message,
    };
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => return Ok(defaults),
        Err(e) => return Err(read_err(e.to_string())),
    };
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| read_err(e.to_string()))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(read_err("file is larger than 1 MiB".to_string()));
    }
    let text = String::from_utf8(bytes).map_err(|_| read_err("not valid UTF-8".to_string()))?;
    parse_str(&text, &path, defaults)
}

/// Loads the config named by `--config` (or the default one) and applies the CLI overrides.
pub fn load_with_cli(
    cli: &Cli,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut config = load(cli.config.as_deref(), env)?;
    config.apply_cli(cli);
    Ok(config)
}

/// Parses config text over `base`. `origin` names the file in errors and anchors relative paths.
pub fn parse_str(text: &str, origin: &Path, base: Config) -> Result<Config, ConfigError> {
    let file = origin.display().to_string();
    let base_dir = origin.parent().unwrap_or(Path::new("")).to_path_buf();
    let mut config = base.clone();
    let mut seen: Vec<(&'static str, usize)> = Vec::new();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (index, raw_line) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw_line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if trimmed.starts_with('[') {
            if trimmed.ends_with(']') {
                continue;
            }
            return Err(ConfigError::Syntax {
                file,
                line,
                message: format!("unterminated section header '{trimmed}'"),
            });
        }
        let Some((key, value)) = trimmed.split_once('=') else {
            return Err(ConfigError::Syntax {
                file,
                line,
                message: format!("expected 'key = value', got '{trimmed}'"),
            });
        };
        let key = key.trim();
        // Trim first: a value may itself start with `#` or `;` (only a marker after
        // whitespace inside the value starts a comment), so `to_ini` output reads back.
        let value = strip_inline_comment(value.trim()).trim();
        let Some(&(known, _)) = KEYS.iter().find(|(k, _)| *k == key) else {
            return Err(ConfigError::UnknownKey {
                file,
                line,
                key: key.to_string(),
            });
        };
        if let Some(&(_, first_line)) = seen.iter().find(|(k, _)| *k == known) {
            return Err(ConfigError::DuplicateKey {
                file,
                line,
                key: key.to_string(),
                first_line,
            });
        }
        seen.push((known, line));
        let paths = PathContext {
            base_dir: &base_dir,
            home: &base.home,
        };
        if let Err(message) = config.set_key(known, value, &paths) {
            return Err(ConfigError::Value {
                file,
                line,
                key: key.to_string(),
                message,
            });
        }
    }
    let set = |k: &str| seen.iter().any(|(s, _)| *s == k);
    // Derived defaults follow the value they derive from unless set explicitly.
    if !set("dht_port") && base.dht_port == base.listen_port {
        config.dht_port = config.listen_port;
    }
    if !set("control_socket") && base.control_socket == base.state_dir.join("control.sock") {
        config.control_socket = config.state_dir.join("control.sock");
    }
    if !set("stats_file") && base.stats_file == base.state_dir.join("stats") {
        config.stats_file = config.state_dir.join("stats");
    }
    config.clamp();
    Ok(config)
}

/// Drops a ` # comment` / ` ; comment` tail (the marker must follow whitespace).
fn strip_inline_comment(value: &str) -> &str {
    let bytes = value.as_bytes();
    for i in 1..bytes.len() {
        let marker = bytes.get(i).is_some_and(|b| *b == b'#' || *b == b';');
        let after_space = bytes.get(i - 1).is_some_and(|b| b.is_ascii_whitespace());
        if marker && after_space {
            return value.get(..i).unwrap_or(value);
        }
    }
    value
}

struct PathContext<'a> {
    base_dir: &'a Path,
    home: &'a Path,
}

impl PathContext<'_> {
    fn resolve(&self, value: &str) -> Result<PathBuf, String> {
        if value.is_empty() {
            return Err("expected a path, got ''".to_string());
        }
        if value == "~" {
            return Ok(self.home.to_path_buf());
        }
        if let Some(rest) = value.strip_prefix("~/") {
            return Ok(self.home.join(rest));
        }
        if value.starts_with('~') {
            return Err(format!(
                "only '~/' is expanded (not '~user'), got '{value}'"
            ));
        }
        let p = Path::new(value);
        Ok(if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        })
    }
}

fn parse_u32(value: &str, min: u32, max: u32) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a number from {min} to {max}, got '{value}'"
        )),
    }
}

fn parse_size_range(value: &str, min: u64, max: u64) -> Result<u64, String> {
    match parse_size(value) {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a size from {} to {}, got '{value}'",
            format_size(min),
            format_size(max)
        )),
    }
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(format!("expected true or false, got '{value}'")),
    }
}

/// Parses `down=RATE up=RATE` (either may be missing; whitespace or commas between); empty or
/// `off` = both unlimited.
pub fn parse_limits(value: &str) -> Result<(Option<u64>, Option<u64>), String> {
    let v = value.trim();
    if v.is_empty() || v.eq_ignore_ascii_case("off") || v.eq_ignore_ascii_case("unlimited") {
        return Ok((None, None));
    }
    let (mut down, mut up): (Option<Option<u64>>, Option<Option<u64>>) = (None, None);
    for item in v.split(|c: char| c == ',' || c.is_whitespace()) {
        if item.is_empty() {
            continue;
        }
        let bad = || format!("expected 'down=RATE up=RATE' like 'down=2M up=512K', got '{value}'");
        let (k, r) = item.split_once('=').ok_or_else(bad)?;
        let slot = match k.to_ascii_lowercase().as_str() {
            "down" => &mut down,
            "up" => &mut up,
            _ => return Err(bad()),
        };
        if slot.is_some() {
            return Err(format!("'{k}' given twice in '{value}'"));
        }
        *slot = Some(parse_rate(r)?);
    }
    Ok((down.flatten(), up.flatten()))
}

fn format_limits(down: Option<u64>, up: Option<u64>) -> String {
    if down.is_none() && up.is_none() {
        return "off".to_string();
    }
    format!("down={} up={}", format_rate(down), format_rate(up))
}

/// Parses a duration: `0`, or `<n><unit>` parts with units s, m, h, d (`90m`, `1h30m`, `2d`).
pub fn parse_duration(value: &str) -> Result<u64, String> {
    let bad = || format!("expected a duration like 90m, 2h or 1d, got '{value}'");
    let v = value.trim().to_ascii_lowercase();
    if v == "0" {
        return Ok(0);
    }
    if v.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in v.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        if digits.is_empty() {
            return Err(bad());
        }
        let n: u64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(bad)?;
    }
    if !digits.is_empty() || total > MAX_SEED_TIME_SECS {
        return Err(bad());
    }
    Ok(total)
}

/// Formats seconds as [`parse_duration`] reads them, with the largest exact unit.
pub fn format_duration(secs: u64) -> String {
    if secs == 0 {
        return "0".to_string();
    }
    for (unit, name) in [(86_400, "d"), (3600, "h"), (60, "m")] {
        if secs % unit == 0 {
            return format!("{}{name}", secs / unit);
        }
    }
    format!("{secs}s")
}

fn parse_bootstrap(value: &str) -> Result<Vec<String>, String> {
    let mut nodes = Vec::new();
    for item in value.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        parse_host_port(item)?;
        if nodes.len() == MAX_BOOTSTRAP_NODES {
            return Err(format!("at most {MAX_BOOTSTRAP_NODES} bootstrap nodes"));
        }
        nodes.push(item.to_string());
    }
    Ok(nodes)
}

/// `dht_bootstrap` entries split into addresses, used at once, and `(host, port)` names, which
/// the engine resolves with its own non-blocking DNS client (so start-up never waits on a
/// resolver). Entries that are not `HOST:PORT` are skipped (loading the config refused them).
pub fn split_bootstrap(nodes: &[String]) -> (Vec<SocketAddr>, Vec<(String, u16)>) {
    let mut addrs = Vec::new();
    let mut names = Vec::new();
    for n in nodes {
        let Ok((host, port)) = parse_host_port(n) else {
            continue;
        };
        match host.parse::<IpAddr>() {
            Ok(ip) => addrs.push(SocketAddr::new(ip, port)),
            Err(_) => names.push((host.to_string(), port)),
        }
    }
    (addrs, names)
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

impl Config {
    /// The defaults, with paths computed from `HOME` and the `XDG_*` variables looked up
    /// through `env`.
    pub fn default_for_env(env: &dyn Fn(&str) -> Option<String>) -> Config {
        let home = home_dir(env);
        let data = xdg(env, "XDG_DATA_HOME").unwrap_or_else(|| home.join(".local/share"));
        let state_dir = xdg(env, "XDG_STATE_HOME")
            .unwrap_or_else(|| home.join(".local/state"))
            .join("atorrent");
        let download_dir = xdg(env, "XDG_DOWNLOAD_DIR").unwrap_or_else(|| home.join("Downloads"));
        Config {
            download_dir,
            listen_port: 6881,
            bind_address: None,
            max_connections: 50,
            max_connections_per_torrent: 40,
            max_half_open: 8,
            upload_slots: 4,
            down_limit: None,
            up_limit: None,
            alt_down_limit: None,
            alt_up_limit: None,
            alt_schedule: None,
            dht_port: 6881,
            enable_dht: true,
            dht_bootstrap: vec![
                "router.bittorrent.com:6881".to_string(),
                "dht.transmissionbt.com:6881".to_string(),
                "router.utorrent.com:6881".to_string(),
            ],
            enable_pex: true,
            enable_ipv6: true,
            log_level: LogLevel::Info,
            log_file: Some(data.join("atorrent").join("atorrent.log")),
            log_format: LogFormat::Text,
            log_max_size: 1 << 20,
            enable_encryption: Encryption::Prefer,
            control_socket: state_dir.join("control.sock"),
            stats_file: state_dir.join("stats"),
            state_dir,
            max_active_downloads: 3,
            max_active_seeds: 5,
            watch_dir: None,
            direct_io: DirectIoMode::Auto,
            async_io: true,
            seed_ratio: 0.0,
            seed_time: 0,
            block_buffers: 64,
            peer_buffer_size: 20 * 1024,
            max_open_files: 32,
            max_known_peers: 500,
            dht_max_nodes: 400,
            home,
        }
    }

    /// Sets one key from its (trimmed, comment-free) value. The error is the message after
    /// `file:line: key: `.
    fn set_key(&mut self, key: &str, value: &str, paths: &PathContext<'_>) -> Result<(), String> {
        match key {
            "download_dir" => self.download_dir = paths.resolve(value)?,
            "listen_port" => self.listen_port = parse_port(value)?,
            "bind_address" => {
                self.bind_address =
                    if value.is_empty() {
                        None
                    } else {
                        Some(value.parse().map_err(|_| {
                            format!("expected an IP address or nothing, got '{value}'")
                        })?)
                    }
            }
            "max_connections" => self.max_connections = parse_u32(value, 1, 10_000)?,
            "max_connections_per_torrent" => {
                self.max_connections_per_torrent = parse_u32(value, 1, 10_000)?
            }
            "max_half_open" => self.max_half_open = parse_u32(value, 1, 1000)?,
            "upload_slots" => self.upload_slots = parse_u32(value, 1, 1000)?,
            "bandwidth_limits" => (self.down_limit, self.up_limit) = parse_limits(value)?,
            "alt_limits" => (self.alt_down_limit, self.alt_up_limit) = parse_limits(value)?,
            "alt_schedule" => {
                self.alt_schedule = if value.is_empty() || value.eq_ignore_ascii_case("off") {
                    None
                } else {
                    Some(Schedule::parse(value)?)
                }
            }
            "dht_port" => self.dht_port = parse_port(value)?,
            "enable_dht" => self.enable_dht = parse_bool(value)?,
            "dht_bootstrap" => self.dht_bootstrap = parse_bootstrap(value)?,
            "enable_pex" => self.enable_pex = parse_bool(value)?,
            "enable_ipv6" => self.enable_ipv6 = parse_bool(value)?,
            "log_level" => {
                self.log_level = match value.to_ascii_lowercase().as_str() {
                    "off" => LogLevel::Off,
                    "error" => LogLevel::Error,
                    "warn" | "warning" => LogLevel::Warn,
                    "info" => LogLevel::Info,
                    "debug" => LogLevel::Debug,
                    "trace" => LogLevel::Trace,
                    _ => {
                        return Err(format!(
                            "expected error, warn, info, debug or trace, got '{value}'"
                        ))
                    }
                }
            }
            "log_file" => {
                self.log_file = match value {
                    "" | "-" | "stderr" => None,
                    _ => Some(paths.resolve(value)?),
                }
            }
            "log_format" => {
                self.log_format = match value.to_ascii_lowercase().as_str() {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    _ => return Err(format!("expected text or json, got '{value}'")),
                }
            }
            "log_max_size" => self.log_max_size = parse_size_range(value, 0, 1 << 30)?,
            "enable_encryption" => {
                self.enable_encryption = match value.to_ascii_lowercase().as_str() {
                    // Legacy boolean spellings: true meant "use it when the peer does".
                    "off" | "false" | "no" => Encryption::Off,
                    "prefer" | "true" | "yes" => Encryption::Prefer,
                    "require" | "required" => Encryption::Require,
                    _ => return Err(format!("expected off, prefer or require, got '{value}'")),
                }
            }
            "state_dir" => self.state_dir = paths.resolve(value)?,
            "control_socket" => self.control_socket = paths.resolve(value)?,
            "stats_file" => self.stats_file = paths.resolve(value)?,
            "max_active_downloads" => self.max_active_downloads = parse_u32(value, 1, 1000)?,
            "max_active_seeds" => self.max_active_seeds = parse_u32(value, 0, 1000)?,
            "watch_dir" => {
                self.watch_dir = if value.is_empty() {
                    None
                } else {
                    Some(paths.resolve(value)?)
                }
            }
            "async_io" => self.async_io = parse_bool(value)?,
            "direct_io" => {
                self.direct_io = DirectIoMode::parse(value)
                    .ok_or_else(|| format!("expected auto, on or off, got '{value}'"))?
            }
            "seed_ratio" => {
                self.seed_ratio = match value.parse::<f64>() {
                    Ok(r) if r.is_finite() && (0.0..=1000.0).contains(&r) => r,
                    _ => return Err(format!("expected a ratio from 0 to 1000, got '{value}'")),
                }
            }
            "seed_time" => self.seed_time = parse_duration(value)?,
            "block_buffers" => self.block_buffers = parse_u32(value, 4, 65_536)?,
            "peer_buffer_size" => {
                let n = parse_size_range(value, MIN_PEER_BUFFER, MAX_PEER_BUFFER)?;
                self.peer_buffer_size = u32::try_from(n).map_err(|_| "too large".to_string())?;
            }
            "max_open_files" => self.max_open_files = parse_u32(value, 1, 4096)?,
            "max_known_peers" => self.max_known_peers = parse_u32(value, 10, 100_000)?,
            "dht_max_nodes" => self.dht_max_nodes = parse_u32(value, 8, 100_000)?,
            _ => return Err(format!("unknown key '{key}'")),
        }
        Ok(())
    }

    /// The value of `key` as `to_ini` writes it (and `parse_str` reads it back).
    fn key_value(&self, key: &str) -> String {
        match key {
            "download_dir" => path_str(&self.download_dir),
            "listen_port" => self.listen_port.to_string(),
            "bind_address" => self.bind_address.map(|a| a.to_string()).unwrap_or_default(),
            "max_connections" => self.max_connections.to_string(),
            "max_connections_per_torrent" => self.max_connections_per_torrent.to_string(),
            "max_half_open" => self.max_half_open.to_string(),
            "upload_slots" => self.upload_slots.to_string(),
            "bandwidth_limits" => format_limits(self.down_limit, self.up_limit),
            "alt_limits" => format_limits(self.alt_down_limit, self.alt_up_limit),
            "alt_schedule" => self.alt_schedule.map(|s| s.to_string()).unwrap_or_default(),
            "dht_port" => self.dht_port.to_string(),
            "enable_dht" => self.enable_dht.to_string(),
            "dht_bootstrap" => self.dht_bootstrap.join(", "),
            "enable_pex" => self.enable_pex.to_string(),
            "enable_ipv6" => self.enable_ipv6.to_string(),
            "log_level" => self.log_level.as_str().to_string(),
            "log_file" => match &self.log_file {
                Some(p) => path_str(p),
                None => "-".to_string(),
            },
            "log_format" => self.log_format.as_str().to_string(),
            "log_max_size" => format_size(self.log_max_size),
            "enable_encryption" => self.enable_encryption.as_str().to_string(),
            "state_dir" => path_str(&self.state_dir),
            "control_socket" => path_str(&self.control_socket),
            "stats_file" => path_str(&self.stats_file),
            "max_active_downloads" => self.max_active_downloads.to_string(),
            "max_active_seeds" => self.max_active_seeds.to_string(),
            "watch_dir" => self.watch_dir.as_deref().map(path_str).unwrap_or_default(),
            "direct_io" => self.direct_io.as_str().to_string(),
            "async_io" => self.async_io.to_string(),
            "seed_ratio" => self.seed_ratio.to_string(),
            "seed_time" => format_duration(self.seed_time),
            "block_buffers" => self.block_buffers.to_string(),
            "peer_buffer_size" => format_size(u64::from(self.peer_buffer_size)),
            "max_open_files" => self.max_open_files.to_string(),
            "max_known_peers" => self.max_known_peers.to_string(),
            "dht_max_nodes" => self.dht_max_nodes.to_string(),
            _ => String::new(),
        }
    }

    /// Enforces cross-key limits by clamping: per-torrent and half-open caps never exceed the
    /// global connection cap.
    fn clamp(&mut self) {
        self.max_connections_per_torrent =
            self.max_connections_per_torrent.min(self.max_connections);
        self.max_half_open = self.max_half_open.min(self.max_connections);
    }

    /// Applies command-line overrides: verbosity, and the `download` command's flags.
    /// CLI paths are kept as given (relative to the working directory).
    pub fn apply_cli(&mut self, cli: &Cli) {
        if cli.quiet {
            self.log_level = LogLevel::Error;
        } else if cli.verbose >= 2 {
            self.log_level = LogLevel::Trace;
        } else if cli.verbose == 1 {
            self.log_level = self.log_level.max(LogLevel::Debug);
        }
        if let Command::Download(d) = &cli.command {
            if let Some(dir) = &d.dir {
                self.download_dir = dir.clone();
            }
            if let Some(port) = d.port {
                if self.dht_port == self.listen_port {
                    self.dht_port = port;
                }
                self.listen_port = port;
            }
            if let Some(n) = d.max_connections {
                // For a single foreground torrent the global cap is also its own cap.
                self.max_connections = n;
                self.max_connections_per_torrent = n;
            }
            if d.bind.is_some() {
                self.bind_address = d.bind;
            }
            if let Some(mode) = d.direct_io {
                self.direct_io = mode;
            }
            if let Some(rate) = d.down {
                self.down_limit = rate;
            }
            if let Some(rate) = d.up {
                self.up_limit = rate;
            }
            if d.no_dht {
                self.enable_dht = false;
            }
        }
        self.clamp();
    }

    /// The whole config as INI: every key with its current value and a comment line above it.
    pub fn to_ini(&self) -> String {
        let mut out = String::from("# atorrent configuration\n");
        for (key, comment) in KEYS {
            let line = format!("{key} = {}", self.key_value(key));
            out.push_str(&format!("\n# {comment}\n{}\n", line.trim_end()));
        }
        out
    }

    /// The memory each fixed pool will take with these settings, in bytes, largest first as
    /// listed; the last entry is `"total"`. Estimates for tables are marked as such.
    pub fn memory_budget(&self) -> Vec<(&'static str, u64)> {
        let active = u64::from(self.max_active_downloads) + u64::from(self.max_active_seeds);
        let items: Vec<(&'static str, u64)> = vec![
            (
                "peer buffers (max_connections x (peer_buffer_size + send buffer))",
                u64::from(self.max_connections).saturating_mul(
                    u64::from(self.peer_buffer_size).saturating_add(crate::peer::tx_limit(
                        self.peer_buffer_size as usize,
                    ) as u64),
                ),
            ),
            (
                "block buffers (block_buffers x 16K)",
                u64::from(self.block_buffers).saturating_mul(BLOCK_SIZE),
            ),
            ("scratch buffer (hash read-back, 64K)", SCRATCH_BYTES),
            (
                "known peers (active torrents x max_known_peers x ~32 B)",
                active
                    .saturating_mul(u64::from(self.max_known_peers))
                    .saturating_mul(KNOWN_PEER_BYTES),
            ),
            (
                "dht routing table (dht_max_nodes x ~64 B)",
                if self.enable_dht {
                    u64::from(self.dht_max_nodes).saturating_mul(DHT_NODE_BYTES)
                } else {
                    0
                },
            ),
        ];
        let total = items.iter().fold(0u64, |t, (_, n)| t.saturating_add(*n));
        let mut items = items;
        items.push(("total", total));
        items
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::parse as parse_cli;
    use std::ffi::OsString;

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn defaults() -> Config {
        Config::default_for_env(&env_of(&[("HOME", "/home/u")]))
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_str(text, Path::new("/etc/atorrent/config.ini"), defaults())
    }

    fn err(text: &str) -> String {
        parse_str(text, Path::new("config.ini"), defaults())
            .expect_err("should fail")
            .to_string()
    }

    #[test]
    fn bootstrap_list_literals_used_now_names_left_to_resolve() {
        let nodes: Vec<String> = [
            "router.bittorrent.com:6881",
            "1.2.3.4:5",
            "[::1]:7",
            "dht-boot.test:6881",
            "garbage",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (addrs, names) = split_bootstrap(&nodes);
        assert_eq!(
            addrs,
            vec![
                "1.2.3.4:5".parse::<SocketAddr>().unwrap(),
                "[::1]:7".parse().unwrap()
            ]
        );
        assert_eq!(
            names,
            vec![
                ("router.bittorrent.com".to_string(), 6881),
                ("dht-boot.test".to_string(), 6881)
            ]
        );
        assert_eq!(split_bootstrap(&[]), (vec![], vec![]));
    }

    #[test]
    fn defaults_home_only() {
        let c = defaults();
        assert_eq!(c.download_dir, PathBuf::from("/home/u/Downloads"));
        assert_eq!(c.listen_port, 6881);
        assert_eq!(c.dht_port, 6881);
        assert_eq!(c.bind_address, None);
        assert_eq!(c.max_connections, 50);
        assert_eq!(c.max_connections_per_torrent, 40);
        assert_eq!(c.max_half_open, 8);
        assert_eq!(c.upload_slots, 4);
        assert_eq!(c.dht_bootstrap.len(), 3);
        assert_eq!(
            c.log_file,
            Some(PathBuf::from("/home/u/.local/share/atorrent/atorrent.log"))
        );
        assert_eq!(c.state_dir, PathBuf::from("/home/u/.local/state/atorrent"));
        assert_eq!(
            c.control_socket,
            PathBuf::from("/home/u/.local/state/atorrent/control.sock")
        );
        assert_eq!(
            c.stats_file,
            PathBuf::from("/home/u/.local/state/atorrent/stats")
        );
        assert_eq!(c.log_max_size, 1 << 20);
        assert_eq!(c.enable_encryption, Encryption::Prefer);
        assert_eq!(c.block_buffers, 64);
        assert_eq!(c.peer_buffer_size, 20 * 1024);
        assert_eq!(c.max_open_files, 32);
        assert_eq!(c.max_known_peers, 500);
        assert_eq!(c.dht_max_nodes, 400);
        assert_eq!(
            default_config_path(&env_of(&[("HOME", "/home/u")])),
            PathBuf::from("/home/u/.config/atorrent/config.ini")
        );
    }

    #[test]
    fn defaults_xdg_vars_honoured() {
        let env = env_of(&[
            ("HOME", "/home/u"),
            ("XDG_DATA_HOME", "/d"),
            ("XDG_STATE_HOME", "/s"),
            ("XDG_CONFIG_HOME", "/c"),
        ]);
        let c = Config::default_for_env(&env);
        assert_eq!(c.log_file, Some(PathBuf::from("/d/atorrent/atorrent.log")));
        assert_eq!(c.state_dir, PathBuf::from("/s/atorrent"));
        assert_eq!(c.control_socket, PathBuf::from("/s/atorrent/control.sock"));
        assert_eq!(
            default_config_path(&env),
            PathBuf::from("/c/atorrent/config.ini")
        );
    }

    #[test]
    fn defaults_relative_xdg_ignored() {
        let env = env_of(&[
            ("HOME", "/h"),
            ("XDG_STATE_HOME", "rel"),
            ("XDG_CONFIG_HOME", ""),
        ]);
        assert_eq!(
            Config::default_for_env(&env).state_dir,
            PathBuf::from("/h/.local/state/atorrent")
        );
        assert_eq!(
            default_config_path(&env),
            PathBuf::from("/h/.config/atorrent/config.ini")
        );
    }

    #[test]
    fn parse_every_key() {
        let text = "\
# full file
[atorrent]
download_dir = /data/dl
listen_port = 51413
bind_address = 192.168.1.1
max_connections = 100
max_connections_per_torrent = 30
max_half_open = 4
upload_slots = 3
bandwidth_limits = down=2M up=512K
alt_limits = down=100K
alt_schedule = mon-fri 08:00-18:00
dht_port = 51414
enable_dht = no
dht_bootstrap = a.example:1, [::1]:2,1.2.3.4:3
enable_pex = false
enable_ipv6 = off
log_level = debug
log_file = logs/at.log
log_format = json
log_max_size = 4M
enable_encryption = require
state_dir = ~/st
control_socket = /run/at.sock
stats_file = stats.db
max_active_downloads = 2
max_active_seeds = 0
watch_dir = ~/watch
direct_io = off
seed_ratio = 1.5
seed_time = 1h30m
block_buffers = 128
peer_buffer_size = 64K
max_open_files = 16
max_known_peers = 200
dht_max_nodes = 100
";
        let c = parse(text).expect("parses");
        assert_eq!(c.download_dir, PathBuf::from("/data/dl"));
        assert_eq!(c.listen_port, 51413);
        assert_eq!(c.bind_address, Some("192.168.1.1".parse().expect("ip")));
        assert_eq!(c.max_connections, 100);
        assert_eq!(c.max_connections_per_torrent, 30);
        assert_eq!(c.max_half_open, 4);
        assert_eq!(c.upload_slots, 3);
        assert_eq!((c.down_limit, c.up_limit), (Some(2 << 20), Some(512 << 10)));
        assert_eq!((c.alt_down_limit, c.alt_up_limit), (Some(100 << 10), None));
        assert_eq!(
            c.alt_schedule,
            Some(Schedule {
                days: 0b0011_1110,
                start: 480,
                end: 1080
            })
        );
        assert_eq!(c.dht_port, 51414);
        assert!(!c.enable_dht && !c.enable_pex && !c.enable_ipv6);
        assert_eq!(c.dht_bootstrap, vec!["a.example:1", "[::1]:2", "1.2.3.4:3"]);
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(c.log_file, Some(PathBuf::from("/etc/atorrent/logs/at.log")));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.log_max_size, 4 << 20);
        assert_eq!(c.enable_encryption, Encryption::Require);
        assert_eq!(c.state_dir, PathBuf::from("/home/u/st"));
        assert_eq!(c.control_socket, PathBuf::from("/run/at.sock"));
        assert_eq!(c.stats_file, PathBuf::from("/etc/atorrent/stats.db"));
        assert_eq!(c.max_active_downloads, 2);
        assert_eq!(c.max_active_seeds, 0);
        assert_eq!(c.watch_dir, Some(PathBuf::from("/home/u/watch")));
        assert_eq!(c.direct_io, DirectIoMode::Off);
        assert_eq!(c.seed_ratio, 1.5);
        assert_eq!(c.seed_time, 5400);
        assert_eq!(c.block_buffers, 128);
        assert_eq!(c.peer_buffer_size, 64 * 1024);
        assert_eq!(c.max_open_files, 16);
        assert_eq!(c.max_known_peers, 200);
        assert_eq!(c.dht_max_nodes, 100);
    }

    #[test]
    fn keys_table_all_settable() {
        // Every key in KEYS is handled by set_key with its own to_ini value.
        let c = defaults();
        let ctx = PathContext {
            base_dir: Path::new("/"),
            home: Path::new("/home/u"),
        };
        for (key, _) in KEYS {
            let mut d = c.clone();
            let v = c.key_value(key);
            assert_eq!(d.set_key(key, &v, &ctx), Ok(()), "key {key} value '{v}'");
            assert_eq!(d, c, "key {key}");
        }
    }

    #[test]
    fn to_ini_round_trips() {
        let c = parse(
            "bandwidth_limits = down=1.5M\nalt_schedule = sat,sun,wed 22:00-06:30\n\
             seed_time = 2d\nbind_address = ::1\nlog_file = -\nwatch_dir = /w\nseed_ratio = 2.25",
        )
        .expect("parses");
        let ini = c.to_ini();
        for (key, _) in KEYS {
            assert!(ini.contains(&format!("\n{key} =")), "missing {key}");
        }
        assert_eq!(ini.matches("\n# ").count(), KEYS.len());
        let back = parse_str(&ini, Path::new("/x/config.ini"), defaults()).expect("round trip");
        assert_eq!(back, c);
        assert_eq!(
            parse_str(&defaults().to_ini(), Path::new("/x/c.ini"), defaults()),
            Ok(defaults())
        );
    }

    #[test]
    fn comments_and_sections_ignored() {
        let c = parse(
            "\u{feff}; semicolon comment\n# hash comment\n\n   \n[section]\n\
             listen_port = 7000   # inline\nmax_connections=60 ; inline too\r\n",
        )
        .expect("parses");
        assert_eq!(c.listen_port, 7000);
        assert_eq!(c.max_connections, 60);
        // dht_port follows listen_port when not set.
        assert_eq!(c.dht_port, 7000);
    }

    #[test]
    fn state_dir_moves_derived_paths() {
        let c = parse("state_dir = /var/lib/at").expect("parses");
        assert_eq!(c.control_socket, PathBuf::from("/var/lib/at/control.sock"));
        assert_eq!(c.stats_file, PathBuf::from("/var/lib/at/stats"));
        let c = parse("state_dir = /v\ncontrol_socket = /run/c.sock").expect("parses");
        assert_eq!(c.control_socket, PathBuf::from("/run/c.sock"));
        assert_eq!(c.stats_file, PathBuf::from("/v/stats"));
    }

    #[test]
    fn bad_value_exact_messages() {
        let cases: &[(&str, &str)] = &[
            (
                "\n\n\n\n\n\n\n\n\n\n\nmax_connections = lots",
                "config.ini:12: max_connections: expected a number from 1 to 10000, got 'lots'",
            ),
            ("\n\nmax_conections = 5", "config.ini:3: unknown key 'max_conections'"),
            ("listen_port = 0", "config.ini:1: listen_port: expected a port from 1 to 65535, got '0'"),
            ("listen_port = 70000", "config.ini:1: listen_port: expected a port from 1 to 65535, got '70000'"),
            ("bind_address = nope", "config.ini:1: bind_address: expected an IP address or nothing, got 'nope'"),
            ("enable_dht = maybe", "config.ini:1: enable_dht: expected true or false, got 'maybe'"),
            ("log_level = loud", "config.ini:1: log_level: expected error, warn, info, debug or trace, got 'loud'"),
            ("log_format = xml", "config.ini:1: log_format: expected text or json, got 'xml'"),
            ("enable_encryption = maybe", "config.ini:1: enable_encryption: expected off, prefer or require, got 'maybe'"),
            ("direct_io = sometimes", "config.ini:1: direct_io: expected auto, on or off, got 'sometimes'"),
            ("peer_buffer_size = 16K", "config.ini:1: peer_buffer_size: expected a size from 17K to 1M, got '16K'"),
            ("peer_buffer_size = 2M", "config.ini:1: peer_buffer_size: expected a size from 17K to 1M, got '2M'"),
            ("seed_ratio = -1", "config.ini:1: seed_ratio: expected a ratio from 0 to 1000, got '-1'"),
            ("seed_ratio = nan", "config.ini:1: seed_ratio: expected a ratio from 0 to 1000, got 'nan'"),
            ("seed_time = 90", "config.ini:1: seed_time: expected a duration like 90m, 2h or 1d, got '90'"),
            ("bandwidth_limits = fast", "config.ini:1: bandwidth_limits: expected 'down=RATE up=RATE' like 'down=2M up=512K', got 'fast'"),
            ("bandwidth_limits = down=2M down=1M", "config.ini:1: bandwidth_limits: 'down' given twice in 'down=2M down=1M'"),
            ("bandwidth_limits = down=fast", "config.ini:1: bandwidth_limits: expected a rate like 512K, 2M or off, got 'fast'"),
            ("alt_schedule = someday 08:00-18:00", "config.ini:1: alt_schedule: bad days; expected a schedule like 'mon-fri 08:00-18:00', got 'someday 08:00-18:00'"),
            ("dht_bootstrap = host", "config.ini:1: dht_bootstrap: expected HOST:PORT like 1.2.3.4:6881, [::1]:6881 or name:6881, got 'host'"),
            ("block_buffers = 2", "config.ini:1: block_buffers: expected a number from 4 to 65536, got '2'"),
            ("download_dir =", "config.ini:1: download_dir: expected a path, got ''"),
            ("download_dir = ~bob/x", "config.ini:1: download_dir: only '~/' is expanded (not '~user'), got '~bob/x'"),
            ("just words", "config.ini:1: expected 'key = value', got 'just words'"),
            ("[broken", "config.ini:1: unterminated section header '[broken'"),
            ("upload_slots = 2\nupload_slots = 3", "config.ini:2: upload_slots: already set on line 1"),
        ];
        for (text, want) in cases {
            assert_eq!(err(text), *want, "input {text:?}");
        }
    }

    #[test]
    fn encryption_legacy_booleans() {
        assert_eq!(
            parse("enable_encryption = true").map(|c| c.enable_encryption),
            Ok(Encryption::Prefer)
        );
        assert_eq!(
            parse("enable_encryption = false").map(|c| c.enable_encryption),
            Ok(Encryption::Off)
        );
    }

    #[test]
    fn limits_off_and_empty() {
        assert_eq!(parse_limits(""), Ok((None, None)));
        assert_eq!(parse_limits("off"), Ok((None, None)));
        assert_eq!(parse_limits("up=1K,down=off"), Ok((None, Some(1024))));
        assert_eq!(format_limits(Some(2 << 20), None), "down=2M up=off");
    }

    #[test]
    fn connection_caps_clamped() {
        let c = parse("max_connections = 20").expect("parses");
        assert_eq!(c.max_connections_per_torrent, 20);
        let c = parse("max_connections = 5").expect("parses");
        assert_eq!(c.max_half_open, 5);
    }

    #[test]
    fn durations_table() {
        for (s, want) in [
            ("0", 0),
            ("90m", 5400),
            ("2h", 7200),
            ("1d", 86_400),
            ("1h30m", 5400),
            ("45s", 45),
        ] {
            assert_eq!(parse_duration(s), Ok(want), "{s}");
        }
        for s in ["", "m", "5", "5x", "1h5", "99999999999999999999d", "3651d"] {
            assert!(parse_duration(s).is_err(), "{s}");
        }
        assert_eq!(format_duration(5400), "90m");
        assert_eq!(format_duration(61), "61s");
    }

    #[test]
    fn schedule_parse_table() {
        let ok: &[(&str, u8, u16, u16)] = &[
            ("mon-fri 08:00-18:00", 0b0011_1110, 480, 1080),
            ("sat,sun 00:00-24:00", 0b0100_0001, 0, 1440),
            ("fri-mon 22:00-06:00", 0b0110_0011, 1320, 360),
            ("daily 1:30-2:45", 0x7f, 90, 165),
            ("23:00-07:00", 0x7f, 1380, 420),
            ("Weekends 10:00-12:00", 0b0100_0001, 600, 720),
            ("monday,wednesday 10:00-12:00", 0b0000_1010, 600, 720),
        ];
        for (s, days, start, end) in ok {
            assert_eq!(
                Schedule::parse(s),
                Ok(Schedule {
                    days: *days,
                    start: *start,
                    end: *end
                }),
                "{s}"
            );
        }
        for s in [
            "",
            "mon",
            "mon 08:00",
            "mon 08:00-08:00",
            "mon 24:00-01:00",
            "mon 08:60-09:00",
            "xyz 08:00-09:00",
            "mon-xyz 08:00-09:00",
            "mon 8-9",
            "mon 08:00-18:00 extra",
            "mon 08:00-25:00",
            "mon 08:000-09:00",
            "mon,,tue 01:00-02:00",
        ] {
            assert!(Schedule::parse(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn schedule_active_plain_and_wrapping() {
        let day = Schedule::parse("mon-fri 08:00-18:00").expect("parses");
        assert!(day.active(1, 480));
        assert!(day.active(5, 1079));
        assert!(!day.active(5, 1080));
        assert!(!day.active(1, 479));
        assert!(!day.active(0, 600));
        assert!(!day.active(6, 600));
        assert!(!day.active(7, 600));
        assert!(!day.active(1, 1440));
        let night = Schedule::parse("fri 22:00-02:00").expect("parses");
        assert!(night.active(5, 1320));
        assert!(
            night.active(6, 60),
            "saturday 01:00 belongs to friday's window"
        );
        assert!(!night.active(6, 1320));
        assert!(!night.active(5, 60), "friday 01:00 belongs to thursday");
        let sun = Schedule::parse("sat 23:00-01:00").expect("parses");
        assert!(sun.active(0, 30));
        let sunday_night = Schedule::parse("sun 23:00-01:00").expect("parses");
        assert!(sunday_night.active(1, 30), "wraps sunday into monday");
    }

    #[test]
    fn schedule_display_round_trips() {
        for (s, canon) in [
            ("mon-fri 08:00-18:00", "mon-fri 08:00-18:00"),
            ("sun,sat 00:00-24:00", "sat-sun 00:00-24:00"),
            ("fri-mon 22:00-06:00", "mon,fri-sun 22:00-06:00"),
            ("7:05-8:00", "daily 07:05-08:00"),
            ("mon,wed,fri 01:00-02:00", "mon,wed,fri 01:00-02:00"),
        ] {
            let sch = Schedule::parse(s).expect("parses");
            assert_eq!(sch.to_string(), canon);
            assert_eq!(Schedule::parse(canon), Ok(sch));
        }
    }

    #[test]
    fn load_explicit_missing_is_error() {
        let env = env_of(&[("HOME", "/nonexistent-atorrent-home")]);
        let e =
            load(Some(Path::new("/nonexistent-atorrent/config.ini")), &env).expect_err("missing");
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(e
            .to_string()
            .starts_with("cannot read config file /nonexistent-atorrent/config.ini: "));
        // The default path may be missing.
        assert_eq!(load(None, &env), Ok(Config::default_for_env(&env)));
    }

    #[test]
    fn load_reads_file_relative_paths() {
        let dir = std::env::temp_dir().join(format!("atorrent-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("config.ini");
        std::fs::write(&path, "download_dir = dl\nlisten_port = 7001\n").expect("write");
        let env = env_of(&[("HOME", "/home/u")]);
        let c = load(Some(&path), &env);
        let _ = std::fs::remove_dir_all(&dir);
        let c = c.expect("loads");
        assert_eq!(c.download_dir, dir.join("dl"));
        assert_eq!(c.listen_port, 7001);
    }

    fn cli(args: &[&str]) -> Cli {
        parse_cli(args.iter().map(OsString::from)).expect("valid cli")
    }

    #[test]
    fn apply_cli_download_overrides() {
        let mut c = defaults();
        c.apply_cli(&cli(&[
            "download",
            "x.torrent",
            "--dir",
            "out",
            "--port",
            "7000",
            "--max-connections",
            "10",
            "--bind",
            "::1",
            "--direct-io",
            "on",
            "--down",
            "1M",
            "--up",
            "off",
            "--no-dht",
            "-vv",
        ]));
        assert_eq!(c.download_dir, PathBuf::from("out"));
        assert_eq!((c.listen_port, c.dht_port), (7000, 7000));
        assert_eq!(
            (
                c.max_connections,
                c.max_connections_per_torrent,
                c.max_half_open
            ),
            (10, 10, 8)
        );
        assert_eq!(c.bind_address, Some("::1".parse().expect("ip")));
        assert_eq!(c.direct_io, DirectIoMode::On);
        assert_eq!((c.down_limit, c.up_limit), (Some(1 << 20), None));
        assert!(!c.enable_dht);
        assert_eq!(c.log_level, LogLevel::Trace);
    }

    #[test]
    fn apply_cli_quiet_and_untouched() {
        let mut c = parse("bandwidth_limits = up=1M\ndht_port = 9999").expect("parses");
        c.apply_cli(&cli(&["-q", "download", "x.torrent", "--port", "7000"]));
        assert_eq!(c.log_level, LogLevel::Error);
        assert_eq!(c.up_limit, Some(1 << 20), "not given on the CLI: kept");
        assert_eq!(c.dht_port, 9999, "explicit dht_port does not follow --port");
    }

    #[test]
    fn memory_budget_defaults() {
        let b = defaults().memory_budget();
        let get = |prefix: &str| {
            b.iter()
                .find(|(n, _)| n.starts_with(prefix))
                .map(|(_, v)| *v)
        };
        // A 20 KiB receive buffer, and a send buffer that may hold two blocks to upload.
        assert_eq!(
            get("peer buffers"),
            Some(50 * (20 * 1024 + 2 * (16384 + 13)))
        );
        assert_eq!(get("block buffers"), Some(64 * 16 * 1024));
        assert_eq!(get("known peers"), Some(8 * 500 * 32));
        assert_eq!(get("dht"), Some(400 * 64));
        let sum: u64 = b
            .iter()
            .filter(|(n, _)| *n != "total")
            .map(|(_, v)| v)
            .sum();
        assert_eq!(b.last(), Some(&("total", sum)));
        // Comfortably inside a 32 MB router.
        assert!(sum < 8 << 20);
    }

    const VECTORS: &[&str] = &[
        "listen_port = 6881\nbandwidth_limits = down=2M up=512K\n",
        "alt_schedule = mon-fri 08:00-18:00\nseed_time = 1h30m\n",
        "[s]\n# c\ndht_bootstrap = [::1]:5, a.b:6\nstate_dir = ~/x\n",
        "peer_buffer_size = 32K\nseed_ratio = 1.5\nbind_address = 10.0.0.1\n",
    ];

    #[test]
    fn parse_str_truncation_sweep() {
        for v in VECTORS {
            for end in 0..=v.len() {
                if let Some(prefix) = v.get(..end) {
                    // Must not panic; prefixes are often still valid.
                    let _ = parse(prefix);
                }
            }
        }
    }

    #[test]
    fn parse_str_random_mutation_sweep() {
        let mut rng = crate::rng::Rng::new(0x5eed_c0f1);
        let alphabet = b"=#;[]~:/-,. \n09KMGkmgx\xff";
        for _ in 0..3000 {
            let idx = rng.below(VECTORS.len());
            let mut bytes = VECTORS[idx].as_bytes().to_vec();
            for _ in 0..1 + rng.below(4) {
                let pos = rng.below(bytes.len());
                let c = alphabet[rng.below(alphabet.len())];
                bytes[pos] = c;
            }
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse(&text);
            let _ = Schedule::parse(&text);
            let _ = parse_limits(&text);
            let _ = parse_duration(&text);
        }
    }
}
