//! Layer 4 (process setup): the command line, parsed into raw `Cli` values ("low args").
//!
//! This module turns argv (without argv[0]) into a [`Cli`] using `lexopt`. It follows
//! ripgrep's "low args" self-imposed constraint: it does **no I/O** (no files, no environment,
//! no sockets) and resolves **no defaults**. A flag that was not given stays `None`/`false`/empty
//! so that `config.rs` can tell "not given" from "given", and layer the CLI over the config file.
//!
//! What it does validate is the *syntax* of each value (ports, rates, sizes, host:port, ids), so
//! that a typo fails at once with exit status 2 and a message like
//! `atorrent: download: --port: expected a port from 1 to 65535, got '0'`.
//!
//! The value syntaxes that the config file shares live here too: [`parse_rate`], [`parse_size`],
//! [`parse_host_port`] and their `format_*` inverses.
//!
//! Global flags (`--config`, `--json`, `-v`, `-q`, `--help`, `--version`) are accepted before or
//! after the subcommand. When a single-valued flag is repeated, the last one wins (as in ripgrep).

use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use crate::config::DirectIoMode;

/// A command-line mistake. `main` prints `atorrent: <msg>` and exits with status 2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Everything the command line said, unresolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Cli {
    /// `--config FILE`: an explicit config file (which must then exist).
    pub config: Option<PathBuf>,
    /// `--json`: machine-readable output for `info`, `list`, `status`, `stats`.
    pub json: bool,
    /// Number of `-v`/`--verbose` flags (saturating).
    pub verbose: u8,
    /// `-q`/`--quiet`.
    pub quiet: bool,
    pub command: Command,
}

/// What to fetch: a `.torrent` file on disk or a magnet link (BEP 9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    /// The full `magnet:?...` URI, not yet parsed.
    Magnet(String),
}

/// `atorrent download`: run one torrent in the foreground.
#[derive(Clone, Debug, PartialEq)]
pub struct DownloadArgs {
    pub source: Source,
    pub dir: Option<PathBuf>,
    pub port: Option<u16>,
    /// `--peer HOST:PORT`, repeatable; kept as written (validated syntax).
    pub peers: Vec<String>,
    /// `--seed`: keep seeding after the download completes.
    pub seed: bool,
    pub max_connections: Option<u32>,
    pub bind: Option<IpAddr>,
    pub direct_io: Option<DirectIoMode>,
    /// Outer `None`: not given. `Some(None)`: unlimited. `Some(Some(n))`: n bytes/s.
    pub down: Option<Option<u64>>,
    /// Same encoding as `down`.
    pub up: Option<Option<u64>>,
    pub no_dht: bool,
    /// `--tracker URL`, repeatable; added to the torrent's own trackers.
    pub trackers: Vec<String>,
}

/// `atorrent create`: hash files into a new .torrent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateArgs {
    pub path: PathBuf,
    pub output: PathBuf,
    pub trackers: Vec<String>,
    /// Validated: a power of two from [`MIN_PIECE_LENGTH`] to [`MAX_PIECE_LENGTH`].
    pub piece_length: Option<u32>,
    pub private: bool,
    pub comment: Option<String>,
}

/// `atorrent daemon`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DaemonArgs {
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    /// Print the memory budget computed from the config and exit.
    pub print_memory_budget: bool,
    /// Print the effective config as INI and exit.
    pub print_config: bool,
}

/// `atorrent start`: add a torrent to the running daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartArgs {
    pub source: Source,
    pub dir: Option<PathBuf>,
    pub paused: bool,
}

/// `atorrent limit`: change rate limits of the daemon or of one torrent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LimitArgs {
    /// `None`: the global limits.
    pub id: Option<String>,
    /// Same encoding as [`DownloadArgs::down`]; at least one of `down`/`up` is `Some`.
    pub down: Option<Option<u64>>,
    pub up: Option<Option<u64>>,
    /// Seeding limits (`--ratio R`, `--seed-time T`); 0 means unlimited.
    pub ratio: Option<f64>,
    pub seed_time: Option<u64>,
}

/// The subcommand. `ID` strings are validated: 1 to 40 hex digits (a small decimal
/// number is a list index, anything else an info-hash prefix; decimal digits are hex).
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Download(DownloadArgs),
    Create(CreateArgs),
    Info {
        torrent: PathBuf,
    },
    Daemon(DaemonArgs),
    Start(StartArgs),
    Stop {
        id: String,
    },
    Resume {
        id: String,
    },
    Seed {
        id: String,
    },
    Remove {
        id: String,
        delete_data: bool,
    },
    List,
    Status {
        id: String,
    },
    Stats,
    Shutdown,
    Limit(LimitArgs),
    /// `--help`/`-h` anywhere, or `atorrent help [COMMAND]`.
    Help(Option<String>),
    /// `--version`/`-V` anywhere.
    Version,
}

/// Smallest piece length `create` accepts: one 16 KiB block (BEP 3 block size in practice).
pub const MIN_PIECE_LENGTH: u32 = 16 * 1024;
/// Largest piece length `create` accepts: 64 MiB; bigger pieces hurt small-memory peers.
pub const MAX_PIECE_LENGTH: u32 = 64 * 1024 * 1024;
/// Longest ID accepted: a full hex info-hash (40 digits).
const MAX_ID_LEN: usize = 40;
/// Largest value accepted for `--max-connections` (the same cap as the config file).
pub const MAX_CONNECTIONS_CAP: u32 = 10_000;

/// The subcommand names, in help order.
pub const COMMANDS: &[&str] = &[
    "download", "create", "info", "daemon", "start", "stop", "resume", "seed", "remove", "list",
    "status", "stats", "shutdown", "limit", "help",
];

/// A flag, owned (lexopt's `Arg` borrows the parser).
enum Flag {
    Short(char),
    Long(String),
}

impl fmt::Display for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Flag::Short(c) => write!(f, "-{c}"),
            Flag::Long(s) => write!(f, "--{s}"),
        }
    }
}

/// Every per-command flag value collected before the command is assembled.
#[derive(Default)]
struct Raw {
    dir: Option<PathBuf>,
    port: Option<u16>,
    peers: Vec<String>,
    seed: bool,
    max_connections: Option<u32>,
    bind: Option<IpAddr>,
    direct_io: Option<DirectIoMode>,
    down: Option<Option<u64>>,
    up: Option<Option<u64>>,
    no_dht: bool,
    trackers: Vec<String>,
    output: Option<PathBuf>,
    piece_length: Option<u32>,
    private: bool,
    comment: Option<String>,
    detach: bool,
    pid_file: Option<PathBuf>,
    print_memory_budget: bool,
    print_config: bool,
    paused: bool,
    delete_data: bool,
    ratio: Option<f64>,
    seed_time: Option<u64>,
    positional: Vec<OsString>,
}

/// Parses the command line (without argv[0]).
///
/// `--help`/`-h` and `--version`/`-V` win anywhere before a `--`, even next to a mistake
/// (`atorrent download --bogus --help` shows the download help).
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Cli, UsageError> {
    let args: Vec<OsString> = args.into_iter().collect();
    match parse_args(args.clone()) {
        Ok(cli) => Ok(cli),
        Err(e) => rescue_help(&args).ok_or(e),
    }
}

/// After a usage error: a `--help` or `--version` given as its own argument still wins.
fn rescue_help(args: &[OsString]) -> Option<Cli> {
    let before_dashes = args.iter().take_while(|a| a.as_os_str() != "--");
    let mut topic: Option<&'static str> = None;
    let mut wanted: Option<Command> = None;
    for a in before_dashes {
        match a.to_str() {
            Some("--help" | "-h") => wanted = wanted.or(Some(Command::Help(None))),
            Some("--version" | "-V") => wanted = wanted.or(Some(Command::Version)),
            Some(s) if topic.is_none() => topic = known_command(s).filter(|c| *c != "help"),
            _ => {}
        }
    }
    let command = match wanted? {
        Command::Help(_) => Command::Help(topic.map(str::to_string)),
        other => other,
    };
    Some(Cli {
        config: None,
        json: false,
        verbose: 0,
        quiet: false,
        command,
    })
}

fn parse_args(args: Vec<OsString>) -> Result<Cli, UsageError> {
    let mut p = lexopt::Parser::from_args(args);
    let mut cli = Cli {
        config: None,
        json: false,
        verbose: 0,
        quiet: false,
        command: Command::List,
    };
    let mut cmd: Option<&'static str> = None;
    let mut raw = Raw::default();
    loop {
        let arg = match p.next() {
            Ok(Some(lexopt::Arg::Short(c))) => Ok(Flag::Short(c)),
            Ok(Some(lexopt::Arg::Long(s))) => Ok(Flag::Long(s.to_string())),
            Ok(Some(lexopt::Arg::Value(v))) => Err(v),
            Ok(None) => break,
            Err(e) => return Err(lexopt_error(cmd, e)),
        };
        let flag = match arg {
            Err(value) => {
                match cmd {
                    None => cmd = Some(command_name(&value)?),
                    Some(_) => raw.positional.push(value),
                }
                continue;
            }
            Ok(flag) => flag,
        };
        match &flag {
            Flag::Short('h') => return Ok(help_cli(cli, cmd, &mut p)),
            Flag::Long(s) if s == "help" => return Ok(help_cli(cli, cmd, &mut p)),
            Flag::Short('V') => return Ok(version_cli(cli)),
            Flag::Long(s) if s == "version" => return Ok(version_cli(cli)),
            Flag::Long(s) if s == "config" => cli.config = Some(path_value(&mut p, cmd, &flag)?),
            Flag::Long(s) if s == "json" => cli.json = true,
            Flag::Short('v') => cli.verbose = cli.verbose.saturating_add(1),
            Flag::Long(s) if s == "verbose" => cli.verbose = cli.verbose.saturating_add(1),
            Flag::Short('q') => cli.quiet = true,
            Flag::Long(s) if s == "quiet" => cli.quiet = true,
            _ => match cmd {
                None => return Err(UsageError(format!("unrecognized flag {flag}"))),
                Some(name) => command_flag(name, &flag, &mut p, &mut raw)?,
            },
        }
    }
    let Some(name) = cmd else {
        return Err(UsageError(
            "missing command; try 'atorrent --help'".to_string(),
        ));
    };
    if cli.quiet && cli.verbose > 0 {
        return Err(UsageError(
            "--quiet and --verbose cannot be used together".to_string(),
        ));
    }
    cli.command = build_command(name, raw)?;
    Ok(cli)
}

fn help_cli(mut cli: Cli, cmd: Option<&'static str>, p: &mut lexopt::Parser) -> Cli {
    let mut topic = cmd.filter(|c| *c != "help");
    if cmd.is_none() || cmd == Some("help") {
        // `atorrent --help download` and `atorrent help --help download`: find the topic.
        while let Ok(Some(arg)) = p.next() {
            if let lexopt::Arg::Value(v) = arg {
                if let Some(name) = v.to_str().and_then(known_command) {
                    if name != "help" {
                        topic = Some(name);
                        break;
                    }
                }
            }
        }
    }
    cli.command = Command::Help(topic.map(str::to_string));
    cli
}

fn version_cli(mut cli: Cli) -> Cli {
    cli.command = Command::Version;
    cli
}

fn known_command(s: &str) -> Option<&'static str> {
    COMMANDS.iter().copied().find(|c| *c == s)
}

fn command_name(value: &OsString) -> Result<&'static str, UsageError> {
    let s = value.to_string_lossy();
    known_command(&s)
        .ok_or_else(|| UsageError(format!("unknown command '{s}'; try 'atorrent --help'")))
}

fn prefix(cmd: Option<&str>) -> String {
    match cmd {
        Some(c) => format!("{c}: "),
        None => String::new(),
    }
}

fn lexopt_error(cmd: Option<&str>, e: lexopt::Error) -> UsageError {
    let pre = prefix(cmd);
    let msg = match e {
        lexopt::Error::MissingValue { option: Some(o) } => format!("{o} needs a value"),
        lexopt::Error::MissingValue { option: None } => "missing value".to_string(),
        lexopt::Error::UnexpectedOption(o) => format!("unrecognized flag {o}"),
        lexopt::Error::UnexpectedArgument(v) => {
            format!("unexpected argument '{}'", v.to_string_lossy())
        }
        lexopt::Error::UnexpectedValue { option, .. } => format!("{option} does not take a value"),
        lexopt::Error::NonUnicodeValue(v) => {
            format!("'{}' is not valid UTF-8", v.to_string_lossy())
        }
        other => other.to_string(),
    };
    UsageError(format!("{pre}{msg}"))
}

fn os_value(
    p: &mut lexopt::Parser,
    cmd: Option<&str>,
    flag: &Flag,
) -> Result<OsString, UsageError> {
    p.value()
        .map_err(|_| UsageError(format!("{}{flag} needs a value", prefix(cmd))))
}

fn path_value(
    p: &mut lexopt::Parser,
    cmd: Option<&str>,
    flag: &Flag,
) -> Result<PathBuf, UsageError> {
    let v = os_value(p, cmd, flag)?;
    if v.is_empty() {
        return Err(UsageError(format!("{}{flag}: empty path", prefix(cmd))));
    }
    Ok(PathBuf::from(v))
}

fn str_value(p: &mut lexopt::Parser, cmd: Option<&str>, flag: &Flag) -> Result<String, UsageError> {
    let v = os_value(p, cmd, flag)?;
    v.into_string().map_err(|v| {
        UsageError(format!(
            "{}{flag}: '{}' is not valid UTF-8",
            prefix(cmd),
            v.to_string_lossy()
        ))
    })
}

/// Parses a `str_value` with `f`; the error names the command and flag.
fn typed_value<T>(
    p: &mut lexopt::Parser,
    cmd: &str,
    flag: &Flag,
    f: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, UsageError> {
    let s = str_value(p, Some(cmd), flag)?;
    f(&s).map_err(|e| UsageError(format!("{cmd}: {flag}: {e}")))
}

/// Handles one flag that belongs to subcommand `cmd`.
fn command_flag(
    cmd: &'static str,
    flag: &Flag,
    p: &mut lexopt::Parser,
    raw: &mut Raw,
) -> Result<(), UsageError> {
    let name = match flag {
        Flag::Long(s) => s.as_str(),
        Flag::Short('o') => "output",
        Flag::Short(_) => "",
    };
    match (cmd, name) {
        ("download" | "start", "dir") => raw.dir = Some(path_value(p, Some(cmd), flag)?),
        ("download", "port") => raw.port = Some(typed_value(p, cmd, flag, parse_port)?),
        ("download", "peer") => {
            let s = typed_value(p, cmd, flag, |s| parse_host_port(s).map(|_| s.to_string()))?;
            raw.peers.push(s);
        }
        ("download", "seed") => raw.seed = true,
        ("download", "max-connections") => {
            raw.max_connections = Some(typed_value(p, cmd, flag, |s| {
                parse_u32_range(s, 1, MAX_CONNECTIONS_CAP)
            })?)
        }
        ("download", "bind") => {
            raw.bind = Some(typed_value(p, cmd, flag, |s| {
                s.parse::<IpAddr>()
                    .map_err(|_| format!("expected an IP address, got '{s}'"))
            })?)
        }
        ("download", "direct-io") => {
            raw.direct_io = Some(typed_value(p, cmd, flag, |s| {
                DirectIoMode::parse(s).ok_or_else(|| format!("expected auto, on or off, got '{s}'"))
            })?)
        }
        ("download" | "limit", "down") => raw.down = Some(typed_value(p, cmd, flag, parse_rate)?),
        ("download" | "limit", "up") => raw.up = Some(typed_value(p, cmd, flag, parse_rate)?),
        ("limit", "ratio") => {
            raw.ratio = Some(typed_value(p, cmd, flag, |s| match s.parse::<f64>() {
                Ok(r) if r.is_finite() && (0.0..=10_000.0).contains(&r) => Ok(r),
                _ => Err(format!(
                    "expected a ratio like 2.0 (0 = unlimited), got '{s}'"
                )),
            })?)
        }
        ("limit", "seed-time") => {
            raw.seed_time = Some(typed_value(p, cmd, flag, crate::config::parse_duration)?)
        }
        ("download", "no-dht") => raw.no_dht = true,
        ("download" | "create", "tracker") => {
            let s = typed_value(p, cmd, flag, |s| {
                check_tracker_url(s).map(|()| s.to_string())
            })?;
            raw.trackers.push(s);
        }
        ("create", "output") => raw.output = Some(path_value(p, Some(cmd), flag)?),
        ("create", "piece-length") => {
            raw.piece_length = Some(typed_value(p, cmd, flag, parse_piece_length)?)
        }
        ("create", "private") => raw.private = true,
        ("create", "comment") => raw.comment = Some(str_value(p, Some(cmd), flag)?),
        ("daemon", "detach") => raw.detach = true,
        ("daemon", "pid-file") => raw.pid_file = Some(path_value(p, Some(cmd), flag)?),
        ("daemon", "print-memory-budget") => raw.print_memory_budget = true,
        ("daemon", "print-config") => raw.print_config = true,
        ("start", "paused") => raw.paused = true,
        ("remove", "delete-data") => raw.delete_data = true,
        _ => return Err(UsageError(format!("{cmd}: unrecognized flag {flag}"))),
    }
    Ok(())
}

/// Takes exactly the named positionals (`want`), then optional ones (`optional`).
fn positionals(
    cmd: &str,
    mut values: Vec<OsString>,
    want: &[&str],
    optional: usize,
) -> Result<Vec<OsString>, UsageError> {
    if values.len() < want.len() {
        let missing = want.get(values.len()).copied().unwrap_or("argument");
        return Err(UsageError(format!("{cmd}: missing {missing}")));
    }
    if values.len() > want.len() + optional {
        let extra = values.swap_remove(want.len() + optional);
        return Err(UsageError(format!(
            "{cmd}: unexpected argument '{}'",
            extra.to_string_lossy()
        )));
    }
    Ok(values)
}

fn source(cmd: &str, v: OsString) -> Result<Source, UsageError> {
    if v.is_empty() {
        return Err(UsageError(format!("{cmd}: empty <file.torrent|magnet>")));
    }
    if let Some(s) = v.to_str() {
        if s.len() >= 7
            && s.get(..7)
                .is_some_and(|p| p.eq_ignore_ascii_case("magnet:"))
        {
            return Ok(Source::Magnet(s.to_string()));
        }
    }
    Ok(Source::File(PathBuf::from(v)))
}

fn id(cmd: &str, v: OsString) -> Result<String, UsageError> {
    let s = v.to_string_lossy();
    check_id(&s).map_err(|e| UsageError(format!("{cmd}: {e}")))?;
    Ok(s.into_owned())
}

/// Validates a torrent ID: 1..=40 hex digits.
pub fn check_id(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty ID".to_string());
    }
    if s.len() > MAX_ID_LEN || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "expected an ID (a number from 'list' or an info-hash prefix), got '{s}'"
        ));
    }
    Ok(())
}

fn one_id(cmd: &str, values: Vec<OsString>) -> Result<String, UsageError> {
    let mut v = positionals(cmd, values, &["ID"], 0)?;
    id(cmd, v.swap_remove(0))
}

fn build_command(cmd: &'static str, raw: Raw) -> Result<Command, UsageError> {
    let pos = raw.positional;
    let command = match cmd {
        "download" => {
            let mut v = positionals(cmd, pos, &["<file.torrent|magnet>"], 0)?;
            Command::Download(DownloadArgs {
                source: source(cmd, v.swap_remove(0))?,
                dir: raw.dir,
                port: raw.port,
                peers: raw.peers,
                seed: raw.seed,
                max_connections: raw.max_connections,
                bind: raw.bind,
                direct_io: raw.direct_io,
                down: raw.down,
                up: raw.up,
                no_dht: raw.no_dht,
                trackers: raw.trackers,
            })
        }
        "create" => {
            let mut v = positionals(cmd, pos, &["<path>"], 0)?;
            let path = PathBuf::from(v.swap_remove(0));
            let Some(output) = raw.output else {
                return Err(UsageError(
                    "create: missing -o/--output <out.torrent>".to_string(),
                ));
            };
            Command::Create(CreateArgs {
                path,
                output,
                trackers: raw.trackers,
                piece_length: raw.piece_length,
                private: raw.private,
                comment: raw.comment,
            })
        }
        "info" => {
            let mut v = positionals(cmd, pos, &["<file.torrent>"], 0)?;
            Command::Info {
                torrent: PathBuf::from(v.swap_remove(0)),
            }
        }
        "daemon" => {
            positionals(cmd, pos, &[], 0)?;
            Command::Daemon(DaemonArgs {
                detach: raw.detach,
                pid_file: raw.pid_file,
                print_memory_budget: raw.print_memory_budget,
                print_config: raw.print_config,
            })
        }
        "start" => {
            let mut v = positionals(cmd, pos, &["<file.torrent|magnet>"], 0)?;
            Command::Start(StartArgs {
                source: source(cmd, v.swap_remove(0))?,
                dir: raw.dir,
                paused: raw.paused,
            })
        }
        "stop" => Command::Stop {
            id: one_id(cmd, pos)?,
        },
        "resume" => Command::Resume {
            id: one_id(cmd, pos)?,
        },
        "seed" => Command::Seed {
            id: one_id(cmd, pos)?,
        },
        "status" => Command::Status {
            id: one_id(cmd, pos)?,
        },
        "remove" => Command::Remove {
            id: one_id(cmd, pos)?,
            delete_data: raw.delete_data,
        },
        "list" | "stats" | "shutdown" => {
            positionals(cmd, pos, &[], 0)?;
            match cmd {
                "list" => Command::List,
                "stats" => Command::Stats,
                _ => Command::Shutdown,
            }
        }
        "limit" => {
            let v = positionals(cmd, pos, &[], 1)?;
            let id = match v.into_iter().next() {
                Some(v) => Some(id(cmd, v)?),
                None => None,
            };
            if raw.down.is_none()
                && raw.up.is_none()
                && raw.ratio.is_none()
                && raw.seed_time.is_none()
            {
                return Err(UsageError(
                    "limit: missing --down RATE and/or --up RATE".to_string(),
                ));
            }
            Command::Limit(LimitArgs {
                id,
                down: raw.down,
                up: raw.up,
                ratio: raw.ratio,
                seed_time: raw.seed_time,
            })
        }
        _ => {
            // "help"
            let v = positionals(cmd, pos, &[], 1)?;
            match v.into_iter().next() {
                None => Command::Help(None),
                Some(v) => {
                    let s = v.to_string_lossy();
                    match known_command(&s) {
                        Some(name) => Command::Help(Some(name.to_string())),
                        None => {
                            return Err(UsageError(format!("help: unknown command '{s}'")));
                        }
                    }
                }
            }
        }
    };
    Ok(command)
}

// ---------------------------------------------------------------------------------------------
// Value syntaxes shared with config.rs.

/// Parses a TCP/UDP port, 1..=65535.
pub fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!("expected a port from 1 to 65535, got '{s}'")),
    }
}

fn parse_u32_range(s: &str, min: u32, max: u32) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a number from {min} to {max}, got '{s}'")),
    }
}

/// Validates `HOST:PORT`: `1.2.3.4:5`, `[::1]:5` or `name:5`; returns the host (without
/// brackets) and the port. A bare IPv6 address without brackets is rejected because its last
/// `:` would be ambiguous.
pub fn parse_host_port(s: &str) -> Result<(&str, u16), String> {
    let bad =
        || format!("expected HOST:PORT like 1.2.3.4:6881, [::1]:6881 or name:6881, got '{s}'");
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = after.strip_prefix(':').ok_or_else(bad)?;
        h.parse::<Ipv6Addr>().map_err(|_| bad())?;
        (h, port)
    } else {
        let (h, port) = s.rsplit_once(':').ok_or_else(bad)?;
        if h.is_empty() || h.contains(':') {
            return Err(bad());
        }
        let is_name = h
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !is_name {
            return Err(bad());
        }
        // All-digit-and-dot hosts must be a real IPv4 address ("1.2.3:5" is a typo, not a name).
        if h.bytes().all(|b| b.is_ascii_digit() || b == b'.') && h.parse::<Ipv4Addr>().is_err() {
            return Err(bad());
        }
        (h, port)
    };
    match port.parse::<u16>() {
        Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok((host, p)),
        _ => Err(format!("port must be from 1 to 65535 in '{s}'")),
    }
}

/// Checks a tracker announce URL's scheme (http, https or udp) and that a host follows.
pub fn check_tracker_url(s: &str) -> Result<(), String> {
    let lower = s.to_ascii_lowercase();
    let rest = ["http://", "https://", "udp://"]
        .iter()
        .find_map(|scheme| lower.strip_prefix(scheme));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') && !s.chars().any(char::is_whitespace) => {
            Ok(())
        }
        _ => Err(format!(
            "expected an http://, https:// or udp:// tracker URL, got '{s}'"
        )),
    }
}

/// Binary multiplier for a K/M/G suffix (lowercase), `None` for an unknown suffix.
fn suffix_multiplier(suffix: &str) -> Option<u64> {
    match suffix {
        "" => Some(1),
        "k" => Some(1 << 10),
        "m" => Some(1 << 20),
        "g" => Some(1 << 30),
        _ => None,
    }
}

/// Most fraction digits considered: keeps `frac * mult` far from overflow.
const MAX_FRACTION_DIGITS: u32 = 6;

/// Parses `<number>[.<fraction>][K|M|G][i][B]` (case-insensitive, binary units) to bytes,
/// rounding down. `None` on any syntax error or overflow.
fn parse_scaled(s: &str) -> Option<u64> {
    let mut t = s.trim().to_ascii_lowercase();
    if t.ends_with('b') {
        t.pop();
    }
    if t.ends_with('i') {
        t.pop();
        // "i" is only meaningful after a unit ("KiB"), never after a digit.
        if !t.ends_with(['k', 'm', 'g']) {
            return None;
        }
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let mult = suffix_multiplier(suffix.trim())?;
    let (int_part, frac_part) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int_part.is_empty() || !int_part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if num.contains('.') && (frac_part.is_empty() || !frac_part.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let int: u64 = int_part.parse().ok()?;
    let mut total = int.checked_mul(mult)?;
    let frac_digits = frac_part.get(..frac_part.len().min(MAX_FRACTION_DIGITS as usize))?;
    if !frac_digits.is_empty() {
        let frac: u64 = frac_digits.parse().ok()?;
        let scale = 10u64.pow(frac_digits.len() as u32);
        total = total.checked_add(frac.checked_mul(mult)? / scale)?;
    }
    Some(total)
}

/// Parses a byte size: `4096`, `32K`, `1M`, `1.5G`, `512KiB` (binary units, 1K = 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    parse_scaled(s).ok_or_else(|| format!("expected a size like 32K or 1M, got '{s}'"))
}

/// Parses a transfer rate in bytes/s. `0`, `off`, `unlimited` (and `none`) mean no limit
/// (`None`). Otherwise a number with an optional binary K/M/G suffix, optional `B`/`iB` and an
/// optional `/s`: `512K`, `2M`, `1.5M`, `100000`, `2MB/s`. A non-zero rate that rounds down to
/// 0 bytes/s is an error rather than silently unlimited.
pub fn parse_rate(s: &str) -> Result<Option<u64>, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    if matches!(lower.as_str(), "off" | "unlimited" | "none") {
        return Ok(None);
    }
    let body = lower.strip_suffix("/s").unwrap_or(&lower);
    let bad = || format!("expected a rate like 512K, 2M or off, got '{s}'");
    let n = parse_scaled(body).ok_or_else(bad)?;
    if n == 0 {
        let is_zero = body
            .trim_end_matches(|c: char| c.is_ascii_alphabetic())
            .bytes()
            .all(|b| b == b'0' || b == b'.');
        return if is_zero { Ok(None) } else { Err(bad()) };
    }
    Ok(Some(n))
}

/// Formats bytes with the largest binary suffix that divides them exactly: `32K`, `2M`, `1000`.
pub fn format_size(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
    for (mult, unit) in UNITS {
        if n != 0 && n % mult == 0 {
            return format!("{}{unit}", n / mult);
        }
    }
    n.to_string()
}

/// Formats a rate as [`parse_rate`] reads it: `off` or a size.
pub fn format_rate(rate: Option<u64>) -> String {
    match rate {
        None => "off".to_string(),
        Some(n) => format_size(n),
    }
}

/// Parses a `create --piece-length`: a power of two from 16K to 64M.
pub fn parse_piece_length(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    if n < u64::from(MIN_PIECE_LENGTH) || n > u64::from(MAX_PIECE_LENGTH) || !n.is_power_of_two() {
        return Err(format!(
            "piece length must be a power of two from 16K to 64M, got '{s}'"
        ));
    }
    u32::try_from(n).map_err(|_| format!("piece length too large: '{s}'"))
}

// ---------------------------------------------------------------------------------------------
// Help text.

const HELP_MAIN: &str = "\
atorrent - a small, single-threaded BitTorrent client

USAGE:
    atorrent [GLOBAL FLAGS] <COMMAND> [ARGS]

COMMANDS:
    download <file.torrent|magnet>   download (and optionally seed) one torrent in the foreground
    create <path> -o <out.torrent>   create a .torrent from a file or directory
    info <file.torrent>              show what a .torrent contains
    daemon                           run the background service that the commands below control
    start <file.torrent|magnet>      add a torrent to the daemon
    stop ID                          pause a torrent
    resume ID                        resume a paused torrent
    seed ID                          keep seeding a finished torrent past its ratio/time limits
    remove ID                        remove a torrent from the daemon
    list                             list the daemon's torrents with their IDs
    status ID                        show one torrent in detail
    stats                            show daemon-wide totals and memory use
    shutdown                         stop the daemon
    limit [ID]                       change rate limits (global, or for one torrent)
    help [COMMAND]                   show help for a command

GLOBAL FLAGS (before or after the command):
    --config FILE    read this config file (it must exist); default
                     $XDG_CONFIG_HOME/atorrent/config.ini (~/.config/atorrent/config.ini)
    --json           print machine-readable JSON (info, list, status, stats)
    -v, --verbose    more log output; repeat for more (-vv = trace)
    -q, --quiet      only print errors
    -h, --help       show help (atorrent COMMAND --help for one command)
    -V, --version    show the version

ID is the number shown by 'atorrent list' or a prefix of the info-hash in hex.
RATE is bytes per second with optional binary suffix: 512K, 2M, 1.5M, 100000; 0/off = unlimited.
Exit status: 0 ok, 1 runtime error, 2 usage or config error.
";

const HELP_DOWNLOAD: &str = "\
atorrent download - download one torrent in the foreground

USAGE:
    atorrent download <file.torrent|magnet> [FLAGS]

Downloads into DIR, prints progress, and exits when complete (or keeps seeding with --seed).

FLAGS:
    --dir DIR               save data under DIR (default: download_dir from the config)
    --port N                listen for peers on TCP port N, 1-65535 (default: listen_port)
    --peer HOST:PORT        also connect to this peer; repeatable. HOST:PORT is 1.2.3.4:6881,
                            [::1]:6881 or name:6881
    --seed                  keep seeding after the download completes
    --max-connections N     at most N peer connections, 1-10000 (default: max_connections)
    --bind IP               listen and connect from this local address only
    --direct-io MODE        auto, on or off: O_DIRECT writes to bypass the page cache
                            (default: direct_io from the config, auto)
    --down RATE             download rate limit, e.g. 2M; 0/off = unlimited
    --up RATE               upload rate limit, e.g. 512K; 0/off = unlimited
    --no-dht                do not use the DHT to find peers
    --tracker URL           also announce to this http://, https:// or udp:// tracker; repeatable

Global flags (--config, --json, -v, -q) also apply.
";

const HELP_CREATE: &str = "\
atorrent create - create a .torrent file

USAGE:
    atorrent create <path> -o <out.torrent> [FLAGS]

Hashes the file or directory at <path> and writes a .torrent describing it.

FLAGS:
    -o, --output FILE       write the .torrent to FILE (required)
    --tracker URL           announce URL (http://, https:// or udp://); repeatable, in tier order
    --piece-length BYTES    piece size, a power of two from 16K to 64M, e.g. 256K or 1M
                            (default: chosen from the total size)
    --private               set the private flag (BEP 27): no DHT, no PEX
    --comment TEXT          store a free-text comment
";

const HELP_INFO: &str = "\
atorrent info - show what a .torrent contains

USAGE:
    atorrent info <file.torrent> [--json]

Prints the name, info-hash, piece length and count, total size, trackers and files.

FLAGS:
    --json                  print the same as a JSON object
";

const HELP_DAEMON: &str = "\
atorrent daemon - run the background service

USAGE:
    atorrent daemon [FLAGS]

Runs the event loop, listening for peers and for commands on control_socket.
Settings come from the config file (see --config).

FLAGS:
    --detach                fork into the background and return once listening
    --pid-file FILE         write the daemon's process ID to FILE
    --print-memory-budget   print the memory each pool will use with this config and exit
    --print-config          print the effective config, every key with a comment, and exit
";

const HELP_START: &str = "\
atorrent start - add a torrent to the running daemon

USAGE:
    atorrent start <file.torrent|magnet> [FLAGS]

FLAGS:
    --dir DIR               save data under DIR (default: the daemon's download_dir)
    --paused                add the torrent stopped; start it later with 'atorrent resume ID'
";

const HELP_STOP: &str = "\
atorrent stop - pause a torrent

USAGE:
    atorrent stop ID

ID is the number shown by 'atorrent list' or an info-hash prefix in hex.
";

const HELP_RESUME: &str = "\
atorrent resume - resume a paused torrent

USAGE:
    atorrent resume ID

ID is the number shown by 'atorrent list' or an info-hash prefix in hex.
";

const HELP_SEED: &str = "\
atorrent seed - keep seeding a finished torrent

USAGE:
    atorrent seed ID

Restarts seeding and ignores seed_ratio and seed_time for this torrent.
ID is the number shown by 'atorrent list' or an info-hash prefix in hex.
";

const HELP_REMOVE: &str = "\
atorrent remove - remove a torrent from the daemon

USAGE:
    atorrent remove ID [--delete-data]

FLAGS:
    --delete-data           also delete the downloaded files

ID is the number shown by 'atorrent list' or an info-hash prefix in hex.
";

const HELP_LIST: &str = "\
atorrent list - list the daemon's torrents

USAGE:
    atorrent list [--json]

Shows each torrent's ID, state, progress, rates, peers and name.

FLAGS:
    --json                  print the same as a JSON array
";

const HELP_STATUS: &str = "\
atorrent status - show one torrent in detail

USAGE:
    atorrent status ID [--json]

FLAGS:
    --json                  print the same as a JSON object

ID is the number shown by 'atorrent list' or an info-hash prefix in hex.
";

const HELP_STATS: &str = "\
atorrent stats - show daemon-wide totals

USAGE:
    atorrent stats [--json]

Shows totals transferred, current rates, connections, DHT nodes and memory pool use.

FLAGS:
    --json                  print the same as a JSON object
";

const HELP_SHUTDOWN: &str = "\
atorrent shutdown - stop the daemon

USAGE:
    atorrent shutdown

Saves resume state, sends final tracker announces, and exits.
";

const HELP_LIMIT: &str = "\
atorrent limit - change rate limits

USAGE:
    atorrent limit [ID] [--down RATE] [--up RATE] [--ratio R] [--seed-time T]

Without ID, changes the daemon's global limits; with ID, that torrent's limits.
At least one flag is required.

FLAGS:
    --down RATE             download limit in bytes/s, e.g. 2M; 0/off = unlimited
    --up RATE               upload limit in bytes/s, e.g. 512K; 0/off = unlimited
    --ratio R               stop seeding once uploaded/size reaches R, e.g. 2.0; 0 = never
    --seed-time T           stop seeding after T, e.g. 90m, 2h, 1d; 0 = never

RATE is a number with optional binary suffix K, M or G (1K = 1024): 512K, 2M, 1.5M, 100000.
";

const HELP_HELP: &str = "\
atorrent help - show help

USAGE:
    atorrent help [COMMAND]
";

/// Full usage text for `cmd` (or the overview for `None` or an unknown name).
pub fn help_text(cmd: Option<&str>) -> &'static str {
    match cmd {
        Some("download") => HELP_DOWNLOAD,
        Some("create") => HELP_CREATE,
        Some("info") => HELP_INFO,
        Some("daemon") => HELP_DAEMON,
        Some("start") => HELP_START,
        Some("stop") => HELP_STOP,
        Some("resume") => HELP_RESUME,
        Some("seed") => HELP_SEED,
        Some("remove") => HELP_REMOVE,
        Some("list") => HELP_LIST,
        Some("status") => HELP_STATUS,
        Some("stats") => HELP_STATS,
        Some("shutdown") => HELP_SHUTDOWN,
        Some("limit") => HELP_LIMIT,
        Some("help") => HELP_HELP,
        _ => HELP_MAIN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn ok(list: &[&str]) -> Cli {
        match parse(args(list)) {
            Ok(c) => c,
            Err(e) => panic!("{list:?}: {e}"),
        }
    }

    fn cmd(list: &[&str]) -> Command {
        ok(list).command
    }

    fn err(list: &[&str]) -> String {
        match parse(args(list)) {
            Ok(c) => panic!("{list:?} parsed: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn download_all_flags() {
        let c = ok(&[
            "-v",
            "download",
            "a.torrent",
            "--dir",
            "/d",
            "--port",
            "7000",
            "--peer",
            "1.2.3.4:5",
            "--peer",
            "[::1]:6",
            "--peer",
            "host.name:7",
            "--seed",
            "--max-connections",
            "20",
            "--bind",
            "10.0.0.1",
            "--direct-io",
            "off",
            "--down",
            "2M",
            "--up=512K",
            "--no-dht",
            "--tracker",
            "udp://t.example:80",
            "--tracker",
            "http://t2/announce",
            "--json",
            "--config",
            "c.ini",
            "-v",
        ]);
        assert_eq!(c.verbose, 2);
        assert!(c.json);
        assert_eq!(c.config, Some(PathBuf::from("c.ini")));
        let Command::Download(d) = c.command else {
            panic!("not download")
        };
        assert_eq!(d.source, Source::File(PathBuf::from("a.torrent")));
        assert_eq!(d.dir, Some(PathBuf::from("/d")));
        assert_eq!(d.port, Some(7000));
        assert_eq!(d.peers, vec!["1.2.3.4:5", "[::1]:6", "host.name:7"]);
        assert!(d.seed && d.no_dht);
        assert_eq!(d.max_connections, Some(20));
        assert_eq!(d.bind, Some("10.0.0.1".parse().expect("ip")));
        assert_eq!(d.direct_io, Some(DirectIoMode::Off));
        assert_eq!(d.down, Some(Some(2 << 20)));
        assert_eq!(d.up, Some(Some(512 << 10)));
        assert_eq!(d.trackers.len(), 2);
    }

    #[test]
    fn download_defaults_unset() {
        let Command::Download(d) = cmd(&["download", "magnet:?xt=urn:btih:abc"]) else {
            panic!("not download")
        };
        assert_eq!(
            d.source,
            Source::Magnet("magnet:?xt=urn:btih:abc".to_string())
        );
        assert_eq!(
            (
                d.dir,
                d.port,
                d.max_connections,
                d.bind,
                d.direct_io,
                d.down,
                d.up
            ),
            (None, None, None, None, None, None, None)
        );
        assert!(!d.seed && !d.no_dht && d.peers.is_empty() && d.trackers.is_empty());
        let Command::Download(d) = cmd(&["download", "--down", "off", "--", "-odd.torrent"]) else {
            panic!("not download")
        };
        assert_eq!(d.down, Some(None));
        assert_eq!(d.source, Source::File(PathBuf::from("-odd.torrent")));
    }

    #[test]
    fn global_flags_before_or_after() {
        let a = ok(&["--config", "x.ini", "--json", "-q", "list"]);
        let b = ok(&["list", "--config=x.ini", "--quiet", "--json"]);
        assert_eq!(a, b);
        assert_eq!(a.config, Some(PathBuf::from("x.ini")));
        assert!(a.quiet && a.json);
        assert_eq!(ok(&["-vvv", "stats"]).verbose, 3);
    }

    #[test]
    fn create_flags() {
        let c = cmd(&[
            "create",
            "dir",
            "-o",
            "out.torrent",
            "--tracker",
            "https://t/a",
            "--piece-length",
            "256K",
            "--private",
            "--comment",
            "hello world",
        ]);
        assert_eq!(
            c,
            Command::Create(CreateArgs {
                path: PathBuf::from("dir"),
                output: PathBuf::from("out.torrent"),
                trackers: vec!["https://t/a".to_string()],
                piece_length: Some(256 * 1024),
                private: true,
                comment: Some("hello world".to_string()),
            })
        );
        let Command::Create(c) =
            cmd(&["create", "f", "--output=o.torrent", "--piece-length", "1M"])
        else {
            panic!("not create")
        };
        assert_eq!(c.piece_length, Some(1 << 20));
        assert_eq!(c.output, PathBuf::from("o.torrent"));
    }

    #[test]
    fn control_commands() {
        assert_eq!(
            cmd(&["info", "a.torrent"]),
            Command::Info {
                torrent: PathBuf::from("a.torrent")
            }
        );
        assert_eq!(
            cmd(&[
                "daemon",
                "--detach",
                "--pid-file",
                "/run/a.pid",
                "--print-memory-budget"
            ]),
            Command::Daemon(DaemonArgs {
                detach: true,
                pid_file: Some(PathBuf::from("/run/a.pid")),
                print_memory_budget: true,
                print_config: false,
            })
        );
        assert_eq!(
            cmd(&["start", "x.torrent", "--dir", "d", "--paused"]),
            Command::Start(StartArgs {
                source: Source::File(PathBuf::from("x.torrent")),
                dir: Some(PathBuf::from("d")),
                paused: true,
            })
        );
        assert_eq!(
            cmd(&["stop", "3"]),
            Command::Stop {
                id: "3".to_string()
            }
        );
        assert_eq!(
            cmd(&["resume", "ab12"]),
            Command::Resume {
                id: "ab12".to_string()
            }
        );
        assert_eq!(
            cmd(&["seed", "1"]),
            Command::Seed {
                id: "1".to_string()
            }
        );
        assert_eq!(
            cmd(&["status", "1"]),
            Command::Status {
                id: "1".to_string()
            }
        );
        assert_eq!(
            cmd(&["remove", "2", "--delete-data"]),
            Command::Remove {
                id: "2".to_string(),
                delete_data: true
            }
        );
        assert_eq!(cmd(&["list"]), Command::List);
        assert_eq!(cmd(&["stats"]), Command::Stats);
        assert_eq!(cmd(&["shutdown"]), Command::Shutdown);
        assert_eq!(
            cmd(&["limit", "--down", "1M"]),
            Command::Limit(LimitArgs {
                id: None,
                down: Some(Some(1 << 20)),
                up: None,
                ..Default::default()
            })
        );
        assert_eq!(
            cmd(&["limit", "4", "--up", "0"]),
            Command::Limit(LimitArgs {
                id: Some("4".to_string()),
                down: None,
                up: Some(None),
                ..Default::default()
            })
        );
    }

    #[test]
    fn help_and_version_anywhere() {
        assert_eq!(cmd(&["--help"]), Command::Help(None));
        assert_eq!(cmd(&["-h"]), Command::Help(None));
        assert_eq!(
            cmd(&["download", "--help"]),
            Command::Help(Some("download".to_string()))
        );
        assert_eq!(
            cmd(&["download", "--bogus", "-h"]),
            Command::Help(Some("download".to_string()))
        );
        assert_eq!(
            cmd(&["download", "--port", "0", "--version"]),
            Command::Version
        );
        assert_eq!(
            err(&["download", "a", "--", "--help"]),
            "download: unexpected argument '--help'"
        );
        assert_eq!(
            cmd(&["--help", "create"]),
            Command::Help(Some("create".to_string()))
        );
        assert_eq!(
            cmd(&["help", "limit"]),
            Command::Help(Some("limit".to_string()))
        );
        assert_eq!(cmd(&["help"]), Command::Help(None));
        assert_eq!(
            cmd(&["stop", "-h"]),
            Command::Help(Some("stop".to_string()))
        );
        assert_eq!(cmd(&["-V"]), Command::Version);
        assert_eq!(cmd(&["list", "--version"]), Command::Version);
    }

    #[test]
    fn usage_errors_exact() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "missing command; try 'atorrent --help'"),
            (&["--foo"], "unrecognized flag --foo"),
            (&["-x"], "unrecognized flag -x"),
            (&["frobnicate"], "unknown command 'frobnicate'; try 'atorrent --help'"),
            (&["download"], "download: missing <file.torrent|magnet>"),
            (&["download", "a", "b"], "download: unexpected argument 'b'"),
            (&["download", "a", "--foo"], "download: unrecognized flag --foo"),
            (&["info", "a", "--dir", "x"], "info: unrecognized flag --dir"),
            (&["download", "a", "--port"], "download: --port needs a value"),
            (&["download", "a", "--port", "0"], "download: --port: expected a port from 1 to 65535, got '0'"),
            (&["download", "a", "--port", "65536"], "download: --port: expected a port from 1 to 65535, got '65536'"),
            (&["download", "a", "--peer", "1.2.3.4:0"], "download: --peer: port must be from 1 to 65535 in '1.2.3.4:0'"),
            (&["download", "a", "--peer", "::1:5"], "download: --peer: expected HOST:PORT like 1.2.3.4:6881, [::1]:6881 or name:6881, got '::1:5'"),
            (&["download", "a", "--max-connections", "0"], "download: --max-connections: expected a number from 1 to 10000, got '0'"),
            (&["download", "a", "--bind", "eth0"], "download: --bind: expected an IP address, got 'eth0'"),
            (&["download", "a", "--direct-io", "maybe"], "download: --direct-io: expected auto, on or off, got 'maybe'"),
            (&["download", "a", "--down", "fast"], "download: --down: expected a rate like 512K, 2M or off, got 'fast'"),
            (&["download", "a", "--tracker", "ftp://x"], "download: --tracker: expected an http://, https:// or udp:// tracker URL, got 'ftp://x'"),
            (&["download", "a", "--seed=yes"], "download: --seed does not take a value"),
            (&["create", "dir"], "create: missing -o/--output <out.torrent>"),
            (&["create", "-o", "x.torrent"], "create: missing <path>"),
            (&["create", "d", "-o", "x", "--piece-length", "100K"], "create: --piece-length: piece length must be a power of two from 16K to 64M, got '100K'"),
            (&["create", "d", "-o", "x", "--piece-length", "8K"], "create: --piece-length: piece length must be a power of two from 16K to 64M, got '8K'"),
            (&["create", "d", "-o", "x", "--piece-length", "128M"], "create: --piece-length: piece length must be a power of two from 16K to 64M, got '128M'"),
            (&["stop"], "stop: missing ID"),
            (&["stop", ""], "stop: empty ID"),
            (&["stop", "1", "2"], "stop: unexpected argument '2'"),
            (&["remove", "xyz"], "remove: expected an ID (a number from 'list' or an info-hash prefix), got 'xyz'"),
            (&["list", "extra"], "list: unexpected argument 'extra'"),
            (&["limit", "1"], "limit: missing --down RATE and/or --up RATE"),
            (&["help", "nope"], "help: unknown command 'nope'"),
            (&["--config"], "--config needs a value"),
            (&["-q", "-v", "list"], "--quiet and --verbose cannot be used together"),
            (&["daemon", "--paused"], "daemon: unrecognized flag --paused"),
        ];
        for (list, want) in cases {
            assert_eq!(err(list), *want, "args {list:?}");
        }
    }

    #[test]
    fn rate_table() {
        let cases: &[(&str, Option<u64>)] = &[
            ("0", None),
            ("off", None),
            ("OFF", None),
            ("unlimited", None),
            ("0K", None),
            ("0.0", None),
            ("512K", Some(512 * 1024)),
            ("512k", Some(512 * 1024)),
            ("2M", Some(2 << 20)),
            ("1.5M", Some(1_572_864)),
            ("100000", Some(100_000)),
            ("1G", Some(1 << 30)),
            ("2MB", Some(2 << 20)),
            ("2MB/s", Some(2 << 20)),
            ("512KiB/s", Some(512 * 1024)),
            ("100B", Some(100)),
            ("1.25K", Some(1280)),
            (" 3K ", Some(3072)),
        ];
        for (s, want) in cases {
            assert_eq!(parse_rate(s), Ok(*want), "{s:?}");
        }
        for s in [
            "",
            "fast",
            "-1",
            "1.",
            ".5M",
            "1..5M",
            "5T",
            "1KK",
            "M",
            "1 M x",
            "0.0001K",
            "99999999999999999999",
            "18446744073709551615G",
            "5i",
            "/s",
        ] {
            assert!(parse_rate(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn size_format_round_trips() {
        for n in [
            1u64,
            1000,
            1024,
            17 * 1024,
            1 << 20,
            3 << 30,
            1536 * 1024,
            123_456_789,
        ] {
            assert_eq!(parse_size(&format_size(n)), Ok(n), "{n}");
        }
        assert_eq!(format_size(32 * 1024), "32K");
        assert_eq!(format_size(1536 * 1024), "1536K");
        assert_eq!(format_rate(None), "off");
        assert_eq!(format_rate(Some(2 << 20)), "2M");
    }

    #[test]
    fn host_port_table() {
        assert_eq!(parse_host_port("1.2.3.4:5"), Ok(("1.2.3.4", 5)));
        assert_eq!(parse_host_port("[::1]:65535"), Ok(("::1", 65535)));
        assert_eq!(
            parse_host_port("router.bittorrent.com:6881"),
            Ok(("router.bittorrent.com", 6881))
        );
        for s in [
            "",
            ":5",
            "host",
            "host:",
            "host:0",
            "host:65536",
            "host:+5",
            "::1:5",
            "[::1]",
            "[::1]5",
            "[zz]:5",
            "1.2.3:5",
            "a b:5",
            "[::1:5",
        ] {
            assert!(parse_host_port(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn help_text_documents_every_flag() {
        let flags: &[(&str, &[&str])] = &[
            (
                "download",
                &[
                    "--dir",
                    "--port",
                    "--peer",
                    "--seed",
                    "--max-connections",
                    "--bind",
                    "--direct-io",
                    "--down",
                    "--up",
                    "--no-dht",
                    "--tracker",
                ],
            ),
            (
                "create",
                &[
                    "--output",
                    "-o",
                    "--tracker",
                    "--piece-length",
                    "--private",
                    "--comment",
                ],
            ),
            ("info", &["--json"]),
            (
                "daemon",
                &[
                    "--detach",
                    "--pid-file",
                    "--print-memory-budget",
                    "--print-config",
                ],
            ),
            ("start", &["--dir", "--paused"]),
            ("remove", &["--delete-data"]),
            ("limit", &["--down", "--up"]),
        ];
        for (c, list) in flags {
            let text = help_text(Some(c));
            assert!(text.starts_with(&format!("atorrent {c} ")), "{c}");
            for f in *list {
                assert!(text.contains(f), "{c} help lacks {f}");
            }
        }
        let main = help_text(None);
        for c in COMMANDS {
            assert!(main.contains(&format!("    {c}")), "overview lacks {c}");
            assert!(help_text(Some(c)).contains(&format!("atorrent {c}")), "{c}");
        }
        for f in [
            "--config",
            "--json",
            "--verbose",
            "--quiet",
            "--help",
            "--version",
        ] {
            assert!(main.contains(f), "overview lacks {f}");
        }
    }

    #[test]
    fn parse_truncation_sweep() {
        let vectors: &[&[&str]] = &[
            &[
                "download",
                "a.torrent",
                "--dir",
                "d",
                "--peer",
                "[::1]:5",
                "--down",
                "1.5M",
            ],
            &[
                "create",
                "p",
                "-o",
                "o",
                "--piece-length",
                "256K",
                "--comment",
                "c",
            ],
            &["limit", "ab", "--down", "1M", "--up", "off"],
        ];
        for v in vectors {
            for end in 0..=v.len() {
                let _ = parse(args(v.get(..end).unwrap_or(&[])));
            }
            // Also truncate each argument's text.
            for (i, a) in v.iter().enumerate() {
                for cut in 0..a.len() {
                    let mut list = args(v);
                    list[i] = OsString::from(a.get(..cut).unwrap_or(""));
                    let _ = parse(list);
                }
            }
        }
    }

    #[test]
    fn value_parsers_random_mutation_sweep() {
        let mut rng = crate::rng::Rng::new(0xc11_5eed);
        let seeds = [
            "1.5M",
            "512KiB/s",
            "[::1]:6881",
            "host.name:80",
            "256K",
            "udp://t:80",
        ];
        let alphabet = b"0123456789.:[]KMGkmgiB/s-+ x\xff";
        for _ in 0..5000 {
            let mut bytes = seeds[rng.below(seeds.len())].as_bytes().to_vec();
            for _ in 0..1 + rng.below(3) {
                let pos = rng.below(bytes.len() + 1);
                let c = alphabet[rng.below(alphabet.len())];
                if pos == bytes.len() || rng.below(2) == 0 {
                    bytes.insert(pos, c);
                } else {
                    bytes[pos] = c;
                }
            }
            let s = String::from_utf8_lossy(&bytes);
            let _ = parse_rate(&s);
            let _ = parse_size(&s);
            let _ = parse_host_port(&s);
            let _ = parse_piece_length(&s);
            let _ = check_tracker_url(&s);
            let _ = check_id(&s);
            let _ = parse(args(&[
                "download",
                "x",
                "--down",
                &s,
                "--peer",
                "1.1.1.1:1",
            ]));
        }
    }
}
