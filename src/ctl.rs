//! Layer 1 (codec): the control-socket protocol between `atorrent <command>` and the daemon.
//!
//! One request per connection: the client writes one line, the daemon writes one response and
//! closes. This module turns requests and responses into bytes and back, formats the views the
//! daemon reports (text for grep/awk, or JSON), and resolves a user-typed torrent ID. It is
//! pure: no sockets, no files, no clock — the engine owns the socket and fills in the views.
//!
//! # Request line
//!
//! `[--json] <verb> <positional>... [--flag [value]]...` then `\n`. Tokens are separated by single
//! spaces and percent-escaped (`%`, space, CR, LF, TAB and every other byte below 0x21 or 0x7f
//! become `%XX`), so paths with spaces or newlines survive; the empty string is the lone token
//! `%`. Positionals come first and are read by position, so a source named `--dir` is still a
//! source. Verbs: `start SOURCE [--dir DIR] [--paused]`, `stop ID`, `resume ID`, `seed ID`,
//! `remove ID [--delete-data]`, `list`, `status ID`, `stats`, `shutdown`,
//! `limit [--id ID] [--down N|off] [--up N|off]` (N in bytes per second).
//!
//! # Response
//!
//! First line `ok` or `error <code>` (code 1–255: the exit code the client should use), then
//! the body verbatim (the text to print, or the error message).

use std::fmt;
use std::fmt::Write as _;

/// Longest request line accepted (without its `\n`): a start request carries two paths of at
/// most 4096 bytes each (PATH_MAX); anything longer is not from our client.
pub const MAX_REQUEST_LINE: usize = 8192;
/// Largest response a client accepts: `list --json` of a few thousand torrents fits easily, and
/// a client must never buffer an unbounded reply.
pub const MAX_RESPONSE: usize = 4 << 20;
/// Most tokens in one request line: the longest request (`limit` with every flag) has 8.
const MAX_TOKENS: usize = 16;
/// Longest info-hash prefix: a SHA-1 is 40 hex digits.
const MAX_HASH_HEX: usize = 40;
/// Shortest info-hash prefix accepted as an ID: shorter ones are too likely to be ambiguous.
pub const MIN_HASH_PREFIX: usize = 4;

#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    Start {
        source: String,
        dir: Option<String>,
        paused: bool,
    },
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
    /// `None` leaves a direction unchanged, `Some(None)` removes its limit, `Some(Some(n))`
    /// limits it to `n` bytes per second. `id: None` is the global limit.
    Limit {
        id: Option<String>,
        down: Option<Option<u64>>,
        up: Option<Option<u64>>,
        /// Seeding limits: stop at this upload/size ratio, or after this many seconds (0 =
        /// unlimited); `None` leaves them unchanged.
        ratio: Option<f64>,
        seed_time: Option<u64>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    pub json: bool,
    pub req: Request,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CtlError {
    RequestTooLong,
    EmptyRequest,
    ManyLines,
    TooManyTokens,
    BadEscape,
    NotUtf8,
    UnknownCommand(String),
    MissingArgument {
        command: &'static str,
        what: &'static str,
    },
    UnexpectedArgument {
        command: &'static str,
        arg: String,
    },
    RepeatedFlag(String),
    BadRate(String),
    ResponseTooLong,
    BadResponseHeader,
}

impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CtlError::RequestTooLong => {
                write!(f, "request line longer than {MAX_REQUEST_LINE} bytes")
            }
            CtlError::EmptyRequest => write!(f, "empty request"),
            CtlError::ManyLines => write!(f, "request has more than one line"),
            CtlError::TooManyTokens => write!(f, "request has more than {MAX_TOKENS} words"),
            CtlError::BadEscape => write!(f, "bad percent escape in request"),
            CtlError::NotUtf8 => write!(f, "request is not valid utf-8"),
            CtlError::UnknownCommand(c) => write!(f, "unknown command '{}'", sanitize(c)),
            CtlError::MissingArgument { command, what } => {
                write!(f, "{command}: missing {what}")
            }
            CtlError::UnexpectedArgument { command, arg } => {
                write!(f, "{command}: unexpected argument '{}'", sanitize(arg))
            }
            CtlError::RepeatedFlag(flag) => write!(f, "flag {flag} given twice"),
            CtlError::BadRate(s) => write!(
                f,
                "bad rate '{}': expected bytes per second or 'off'",
                sanitize(s)
            ),
            CtlError::ResponseTooLong => {
                write!(f, "response longer than {MAX_RESPONSE} bytes")
            }
            CtlError::BadResponseHeader => write!(f, "malformed response from the daemon"),
        }
    }
}

impl std::error::Error for CtlError {}

fn needs_escape(b: u8) -> bool {
    b <= b' ' || b == 0x7f || b == b'%'
}

fn push_token(out: &mut String, s: &str) {
    if !out.is_empty() {
        out.push(' ');
    }
    if s.is_empty() {
        out.push('%');
        return;
    }
    for c in s.chars() {
        if c.is_ascii() && needs_escape(c as u8) {
            let _ = write!(out, "%{:02X}", c as u8);
        } else {
            out.push(c);
        }
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unescape(tok: &[u8]) -> Result<String, CtlError> {
    if tok == b"%" {
        return Ok(String::new());
    }
    let mut out = Vec::with_capacity(tok.len());
    let mut i = 0;
    while let Some(&b) = tok.get(i) {
        if b == b'%' {
            let hi = tok.get(i + 1).copied().and_then(hex_val);
            let lo = tok.get(i + 2).copied().and_then(hex_val);
            match (hi, lo) {
                (Some(h), Some(l)) => out.push(h << 4 | l),
                _ => return Err(CtlError::BadEscape),
            }
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| CtlError::NotUtf8)
}

fn rate_token(r: Option<u64>) -> String {
    match r {
        None => "off".to_string(),
        Some(n) => n.to_string(),
    }
}

/// Encodes a request as one line ending in `\n`.
pub fn encode_request(e: &Envelope) -> String {
    let mut s = String::new();
    if e.json {
        push_token(&mut s, "--json");
    }
    match &e.req {
        Request::Start {
            source,
            dir,
            paused,
        } => {
            push_token(&mut s, "start");
            push_token(&mut s, source);
            if let Some(d) = dir {
                push_token(&mut s, "--dir");
                push_token(&mut s, d);
            }
            if *paused {
                push_token(&mut s, "--paused");
            }
        }
        Request::Stop { id } => {
            push_token(&mut s, "stop");
            push_token(&mut s, id);
        }
        Request::Resume { id } => {
            push_token(&mut s, "resume");
            push_token(&mut s, id);
        }
        Request::Seed { id } => {
            push_token(&mut s, "seed");
            push_token(&mut s, id);
        }
        Request::Remove { id, delete_data } => {
            push_token(&mut s, "remove");
            push_token(&mut s, id);
            if *delete_data {
                push_token(&mut s, "--delete-data");
            }
        }
        Request::List => push_token(&mut s, "list"),
        Request::Status { id } => {
            push_token(&mut s, "status");
            push_token(&mut s, id);
        }
        Request::Stats => push_token(&mut s, "stats"),
        Request::Shutdown => push_token(&mut s, "shutdown"),
        Request::Limit {
            id,
            down,
            up,
            ratio,
            seed_time,
        } => {
            push_token(&mut s, "limit");
            if let Some(r) = ratio {
                push_token(&mut s, "--ratio");
                push_token(&mut s, &format!("{r}"));
            }
            if let Some(t) = seed_time {
                push_token(&mut s, "--seed-time");
                push_token(&mut s, &t.to_string());
            }
            if let Some(id) = id {
                push_token(&mut s, "--id");
                push_token(&mut s, id);
            }
            if let Some(d) = down {
                push_token(&mut s, "--down");
                push_token(&mut s, &rate_token(*d));
            }
            if let Some(u) = up {
                push_token(&mut s, "--up");
                push_token(&mut s, &rate_token(*u));
            }
        }
    }
    s.push('\n');
    s
}

fn parse_rate_token(s: &str) -> Result<Option<u64>, CtlError> {
    if s == "off" {
        return Ok(None);
    }
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CtlError::BadRate(s.to_string()));
    }
    s.parse::<u64>()
        .map(Some)
        .map_err(|_| CtlError::BadRate(s.to_string()))
}

/// Walks the tokens after the verb: positionals first, then flags.
struct Args {
    command: &'static str,
    toks: std::vec::IntoIter<String>,
}

impl Args {
    fn positional(&mut self, what: &'static str) -> Result<String, CtlError> {
        self.toks.next().ok_or(CtlError::MissingArgument {
            command: self.command,
            what,
        })
    }

    /// Next flag name, or None at the end.
    fn flag(&mut self) -> Option<String> {
        self.toks.next()
    }

    fn value(&mut self, what: &'static str) -> Result<String, CtlError> {
        self.toks.next().ok_or(CtlError::MissingArgument {
            command: self.command,
            what,
        })
    }

    fn unexpected(&self, arg: String) -> CtlError {
        CtlError::UnexpectedArgument {
            command: self.command,
            arg,
        }
    }

    fn finish(mut self) -> Result<(), CtlError> {
        match self.toks.next() {
            None => Ok(()),
            Some(a) => Err(self.unexpected(a)),
        }
    }
}

fn set_once<T>(slot: &mut Option<T>, v: T, flag: &str) -> Result<(), CtlError> {
    if slot.is_some() {
        return Err(CtlError::RepeatedFlag(flag.to_string()));
    }
    *slot = Some(v);
    Ok(())
}

fn set_bool_once(slot: &mut bool, flag: &str) -> Result<(), CtlError> {
    if *slot {
        return Err(CtlError::RepeatedFlag(flag.to_string()));
    }
    *slot = true;
    Ok(())
}

/// Parses one request line (a trailing `\n` or `\r\n` is allowed). Bounded: at most
/// `MAX_REQUEST_LINE` bytes and `MAX_TOKENS` words.
pub fn parse_request(line: &[u8]) -> Result<Envelope, CtlError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > MAX_REQUEST_LINE {
        return Err(CtlError::RequestTooLong);
    }
    if line.contains(&b'\n') {
        return Err(CtlError::ManyLines);
    }
    let mut toks = Vec::new();
    // Lenient about runs of spaces so a hand-typed `nc -U` request works.
    for raw in line.split(|&b| b == b' ').filter(|t| !t.is_empty()) {
        if toks.len() == MAX_TOKENS {
            return Err(CtlError::TooManyTokens);
        }
        toks.push(unescape(raw)?);
    }
    let mut it = toks.into_iter();
    let mut verb = it.next().ok_or(CtlError::EmptyRequest)?;
    let mut json = false;
    if verb == "--json" {
        json = true;
        verb = it.next().ok_or(CtlError::EmptyRequest)?;
    }
    let command: &'static str = match verb.as_str() {
        "start" => "start",
        "stop" => "stop",
        "resume" => "resume",
        "seed" => "seed",
        "remove" => "remove",
        "list" => "list",
        "status" => "status",
        "stats" => "stats",
        "shutdown" => "shutdown",
        "limit" => "limit",
        _ => return Err(CtlError::UnknownCommand(verb)),
    };
    let mut a = Args { command, toks: it };
    let req = match command {
        "start" => {
            let source = a.positional("torrent file or magnet link")?;
            let mut dir = None;
            let mut paused = false;
            while let Some(f) = a.flag() {
                match f.as_str() {
                    "--dir" => {
                        let d = a.value("directory after --dir")?;
                        set_once(&mut dir, d, "--dir")?;
                    }
                    "--paused" => set_bool_once(&mut paused, "--paused")?,
                    _ => return Err(a.unexpected(f)),
                }
            }
            Request::Start {
                source,
                dir,
                paused,
            }
        }
        "stop" | "resume" | "seed" | "status" => {
            let id = a.positional("torrent ID")?;
            a.finish()?;
            match command {
                "stop" => Request::Stop { id },
                "resume" => Request::Resume { id },
                "seed" => Request::Seed { id },
                _ => Request::Status { id },
            }
        }
        "remove" => {
            let id = a.positional("torrent ID")?;
            let mut delete_data = false;
            while let Some(f) = a.flag() {
                match f.as_str() {
                    "--delete-data" => set_bool_once(&mut delete_data, "--delete-data")?,
                    _ => return Err(a.unexpected(f)),
                }
            }
            Request::Remove { id, delete_data }
        }
        "limit" => {
            let (mut id, mut down, mut up) = (None, None, None);
            let (mut ratio, mut seed_time) = (None, None);
            while let Some(f) = a.flag() {
                match f.as_str() {
                    "--ratio" => {
                        let v = a.value("ratio after --ratio")?;
                        let r = v
                            .parse::<f64>()
                            .ok()
                            .filter(|r| r.is_finite() && *r >= 0.0)
                            .ok_or_else(|| CtlError::BadRate(v.clone()))?;
                        set_once(&mut ratio, r, "--ratio")?;
                    }
                    "--seed-time" => {
                        let v = a.value("seconds after --seed-time")?;
                        let t = v.parse::<u64>().map_err(|_| CtlError::BadRate(v.clone()))?;
                        set_once(&mut seed_time, t, "--seed-time")?;
                    }
                    "--id" => {
                        let v = a.value("torrent ID after --id")?;
                        set_once(&mut id, v, "--id")?;
                    }
                    "--down" => {
                        let v = parse_rate_token(&a.value("rate after --down")?)?;
                        set_once(&mut down, v, "--down")?;
                    }
                    "--up" => {
                        let v = parse_rate_token(&a.value("rate after --up")?)?;
                        set_once(&mut up, v, "--up")?;
                    }
                    _ => return Err(a.unexpected(f)),
                }
            }
            Request::Limit {
                id,
                down,
                up,
                ratio,
                seed_time,
            }
        }
        _ => {
            a.finish()?;
            match command {
                "list" => Request::List,
                "stats" => Request::Stats,
                _ => Request::Shutdown,
            }
        }
    };
    Ok(Envelope { json, req })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Exit code the client uses: 0 ok, 1 daemon error or unknown ID, 2 usage.
    pub code: u8,
    pub body: String,
}

impl Response {
    pub fn ok(body: String) -> Response {
        Response { code: 0, body }
    }
    pub fn error(code: u8, body: String) -> Response {
        Response {
            code: code.max(1),
            body,
        }
    }
}

/// `ok\n` or `error <code>\n`, then the body verbatim.
pub fn encode_response(r: &Response) -> Vec<u8> {
    let mut out = Vec::with_capacity(r.body.len() + 12);
    if r.code == 0 {
        out.extend_from_slice(b"ok\n");
    } else {
        out.extend_from_slice(format!("error {}\n", r.code).as_bytes());
    }
    out.extend_from_slice(r.body.as_bytes());
    out
}

/// Parses a whole response (everything the daemon wrote before closing).
pub fn parse_response(buf: &[u8]) -> Result<Response, CtlError> {
    if buf.len() > MAX_RESPONSE {
        return Err(CtlError::ResponseTooLong);
    }
    let nl = buf
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(CtlError::BadResponseHeader)?;
    let (head, rest) = buf.split_at(nl);
    let body = rest.get(1..).unwrap_or(&[]);
    let code = if head == b"ok" {
        0
    } else {
        let num = head
            .strip_prefix(b"error ")
            .ok_or(CtlError::BadResponseHeader)?;
        // At most three digits, no sign or leading zero: exactly what encode_response writes.
        if num.is_empty() || num.len() > 3 || num.first() == Some(&b'0') {
            return Err(CtlError::BadResponseHeader);
        }
        if !num.iter().all(|b| b.is_ascii_digit()) {
            return Err(CtlError::BadResponseHeader);
        }
        let n: u32 = num
            .iter()
            .fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'));
        u8::try_from(n).map_err(|_| CtlError::BadResponseHeader)?
    };
    let body = String::from_utf8(body.to_vec()).map_err(|_| CtlError::NotUtf8)?;
    Ok(Response { code, body })
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrackerView {
    pub url: String,
    pub status: String,
    pub last_error: Option<String>,
    pub seeders: Option<u32>,
    pub leechers: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct TorrentView {
    pub id: u32,
    pub name: String,
    /// 40 lowercase hex digits.
    pub info_hash: String,
    /// queued | checking | downloading | seeding | stopped | error
    pub state: String,
    pub percent: f64,
    pub have_bytes: u64,
    pub total_bytes: u64,
    pub downloaded: u64,
    pub uploaded: u64,
    pub down_rate: u64,
    pub up_rate: u64,
    pub peers_connected: u32,
    pub peers_known: u32,
    pub seeders: Option<u32>,
    pub leechers: Option<u32>,
    pub eta_secs: Option<u64>,
    pub dir: String,
    pub error: Option<String>,
    /// Why the torrent stopped by itself (e.g. its seeding limit was reached).
    pub note: Option<String>,
    pub trackers: Vec<TrackerView>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsView {
    pub uptime_secs: u64,
    pub downloaded: u64,
    pub uploaded: u64,
    pub torrents: u32,
    pub added: u64,
    pub completed: u64,
    pub errors: u64,
    pub down_rate: u64,
    pub up_rate: u64,
}

/// Replaces control characters so a name or message always stays on one line of text output.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Escapes a string for the inside of a JSON string literal (RFC 8259 §7).
pub fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Human size with binary units and one decimal: `0 B`, `512 B`, `1.5 KiB`, `2.0 GiB`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in UNITS.iter().skip(1) {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// Compact rate for the list columns (no spaces, so awk fields stay put): `0`, `512B/s`,
/// `1.5K/s`, `12.0M/s`.
fn short_rate(n: u64) -> String {
    if n == 0 {
        return "0".to_string();
    }
    if n < 1024 {
        return format!("{n}B/s");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 'K';
    for u in ['M', 'G', 'T'] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1}{unit}/s")
}

fn finite(x: f64) -> f64 {
    if x.is_finite() {
        x.clamp(0.0, 100.0)
    } else {
        0.0
    }
}

fn duration_text(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h{m:02}m")
    } else if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Share ratio: uploaded over what we hold or fetched (a seeder that never downloaded still
/// has a ratio against its data). None while both are zero.
fn ratio(uploaded: u64, downloaded: u64, have: u64) -> Option<f64> {
    let base = downloaded.max(have);
    (base > 0).then(|| uploaded as f64 / base as f64)
}

fn opt_num<T: fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "unknown".to_string(), |n| n.to_string())
}

fn json_opt_num<T: fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "null".to_string(), |n| n.to_string())
}

fn json_opt_str(v: &Option<String>) -> String {
    v.as_ref()
        .map_or_else(|| "null".to_string(), |s| format!("\"{}\"", json_escape(s)))
}

fn json_torrent(v: &TorrentView) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "{{\"id\":{},\"name\":\"{}\",\"info_hash\":\"{}\",\"state\":\"{}\",\"percent\":{:.2},\
         \"have_bytes\":{},\"total_bytes\":{},\"downloaded\":{},\"uploaded\":{},\"ratio\":{},\
         \"down_rate\":{},\"up_rate\":{},\"peers_connected\":{},\"peers_known\":{},\
         \"seeders\":{},\"leechers\":{},\"eta_secs\":{},\"dir\":\"{}\",\"error\":{},\"trackers\":[",
        v.id,
        json_escape(&v.name),
        json_escape(&v.info_hash),
        json_escape(&v.state),
        finite(v.percent),
        v.have_bytes,
        v.total_bytes,
        v.downloaded,
        v.uploaded,
        json_opt_num(
            ratio(v.uploaded, v.downloaded, v.have_bytes)
                .filter(|r| r.is_finite())
                .map(|r| format!("{r:.3}"))
        ),
        v.down_rate,
        v.up_rate,
        v.peers_connected,
        v.peers_known,
        json_opt_num(v.seeders),
        json_opt_num(v.leechers),
        json_opt_num(v.eta_secs),
        json_escape(&v.dir),
        json_opt_str(&v.error),
    );
    for (i, t) in v.trackers.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "{{\"url\":\"{}\",\"status\":\"{}\",\"last_error\":{},\"seeders\":{},\"leechers\":{}}}",
            json_escape(&t.url),
            json_escape(&t.status),
            json_opt_str(&t.last_error),
            json_opt_num(t.seeders),
            json_opt_num(t.leechers),
        );
    }
    s.push_str("]}");
    s
}

/// `list` output. Text: a header then one line per torrent, columns
/// `ID STATE PERCENT DOWN UP PEERS NAME` aligned, name last (it may contain spaces). JSON: an
/// array of the same objects `status --json` prints.
pub fn format_list(v: &[TorrentView], json: bool) -> String {
    if json {
        let mut s = String::from("[");
        for (i, t) in v.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&json_torrent(t));
        }
        s.push_str("]\n");
        return s;
    }
    let rows: Vec<[String; 7]> = v
        .iter()
        .map(|t| {
            [
                t.id.to_string(),
                sanitize(&t.state),
                format!("{:.1}%", finite(t.percent)),
                short_rate(t.down_rate),
                short_rate(t.up_rate),
                format!("{}/{}", t.peers_connected, t.peers_known),
                sanitize(&t.name),
            ]
        })
        .collect();
    let header = ["ID", "STATE", "PERCENT", "DOWN", "UP", "PEERS", "NAME"];
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    // ID and the numeric columns are right-aligned, STATE and NAME left-aligned.
    let line = |cells: [&str; 7]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = width[i];
            match i {
                1 => {
                    let _ = write!(s, "{c:<w$}  ");
                }
                6 => s.push_str(c),
                _ => {
                    let _ = write!(s, "{c:>w$}  ");
                }
            }
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(header);
    for r in &rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5], &r[6]]));
    }
    out
}

/// `status` output. Text: `key: value` lines (byte counts exact, with a human size after);
/// JSON: one object.
pub fn format_status(v: &TorrentView, json: bool) -> String {
    if json {
        let mut s = json_torrent(v);
        s.push('\n');
        return s;
    }
    let mut s = String::new();
    let bytes = |n: u64| format!("{n} ({})", human_bytes(n));
    let rate = |n: u64| format!("{n} ({}/s)", human_bytes(n));
    let _ = writeln!(s, "id: {}", v.id);
    let _ = writeln!(s, "name: {}", sanitize(&v.name));
    let _ = writeln!(s, "info_hash: {}", sanitize(&v.info_hash));
    let _ = writeln!(s, "state: {}", sanitize(&v.state));
    let _ = writeln!(s, "percent: {:.1}%", finite(v.percent));
    let _ = writeln!(s, "have: {}", bytes(v.have_bytes));
    let _ = writeln!(s, "size: {}", bytes(v.total_bytes));
    let _ = writeln!(s, "downloaded: {}", bytes(v.downloaded));
    let _ = writeln!(s, "uploaded: {}", bytes(v.uploaded));
    let _ = writeln!(
        s,
        "ratio: {}",
        ratio(v.uploaded, v.downloaded, v.have_bytes)
            .map_or_else(|| "none".to_string(), |r| format!("{r:.3}"))
    );
    let _ = writeln!(s, "down_rate: {}", rate(v.down_rate));
    let _ = writeln!(s, "up_rate: {}", rate(v.up_rate));
    let _ = writeln!(
        s,
        "peers: {} connected, {} known",
        v.peers_connected, v.peers_known
    );
    let _ = writeln!(s, "seeders: {}", opt_num(v.seeders));
    let _ = writeln!(s, "leechers: {}", opt_num(v.leechers));
    let _ = writeln!(
        s,
        "eta: {}",
        v.eta_secs.map_or_else(
            || "unknown".to_string(),
            |e| format!("{e}s ({})", duration_text(e))
        )
    );
    let _ = writeln!(s, "dir: {}", sanitize(&v.dir));
    for t in &v.trackers {
        let _ = write!(
            s,
            "tracker: {} status={} seeders={} leechers={}",
            sanitize(&t.url),
            sanitize(&t.status),
            opt_num(t.seeders),
            opt_num(t.leechers)
        );
        if let Some(e) = &t.last_error {
            let _ = write!(s, " error={}", sanitize(e));
        }
        s.push('\n');
    }
    if let Some(e) = &v.error {
        let _ = writeln!(s, "error: {}", sanitize(e));
    }
    if let Some(n) = &v.note {
        let _ = writeln!(s, "note: {}", sanitize(n));
    }
    s
}

/// `stats` output: cumulative totals. Text: `key: value` lines; JSON: one object.
pub fn format_stats(st: &StatsView, json: bool) -> String {
    let r = ratio(st.uploaded, st.downloaded, 0);
    if json {
        return format!(
            "{{\"uptime_secs\":{},\"downloaded\":{},\"uploaded\":{},\"ratio\":{},\"torrents\":{},\
             \"added\":{},\"completed\":{},\"errors\":{},\"down_rate\":{},\"up_rate\":{}}}\n",
            st.uptime_secs,
            st.downloaded,
            st.uploaded,
            json_opt_num(r.filter(|r| r.is_finite()).map(|r| format!("{r:.3}"))),
            st.torrents,
            st.added,
            st.completed,
            st.errors,
            st.down_rate,
            st.up_rate
        );
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "uptime: {}s ({})",
        st.uptime_secs,
        duration_text(st.uptime_secs)
    );
    let _ = writeln!(
        s,
        "downloaded: {} ({})",
        st.downloaded,
        human_bytes(st.downloaded)
    );
    let _ = writeln!(
        s,
        "uploaded: {} ({})",
        st.uploaded,
        human_bytes(st.uploaded)
    );
    let _ = writeln!(
        s,
        "ratio: {}",
        r.map_or_else(|| "none".to_string(), |r| format!("{r:.3}"))
    );
    let _ = writeln!(s, "torrents: {}", st.torrents);
    let _ = writeln!(s, "added: {}", st.added);
    let _ = writeln!(s, "completed: {}", st.completed);
    let _ = writeln!(s, "errors: {}", st.errors);
    let _ = writeln!(
        s,
        "down_rate: {} ({}/s)",
        st.down_rate,
        human_bytes(st.down_rate)
    );
    let _ = writeln!(s, "up_rate: {} ({}/s)", st.up_rate, human_bytes(st.up_rate));
    s
}

/// Resolves what the user typed as a torrent ID. A decimal number naming an existing ID is
/// that ID (IDs win over info-hash prefixes that happen to be all digits); otherwise at least
/// `MIN_HASH_PREFIX` hex digits are an info-hash prefix that must match exactly one torrent.
pub fn resolve_id(id: &str, torrents: &[(u32, [u8; 20])]) -> Result<u32, String> {
    let id = id.trim();
    let shown = sanitize(id);
    let decimal = !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit());
    if decimal {
        if let Ok(n) = id.parse::<u32>() {
            if torrents.iter().any(|(t, _)| *t == n) {
                return Ok(n);
            }
        }
    }
    let is_hex = !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit());
    if is_hex && (MIN_HASH_PREFIX..=MAX_HASH_HEX).contains(&id.len()) {
        let want = id.to_ascii_lowercase();
        let matches: Vec<u32> = torrents
            .iter()
            .filter(|(_, h)| crate::hash::hex(h).starts_with(&want))
            .map(|(t, _)| *t)
            .collect();
        return match matches.as_slice() {
            [one] => Ok(*one),
            [] if decimal => Err(format!("no torrent with ID {shown}")),
            [] => Err(format!("no torrent whose info-hash starts with {shown}")),
            many => Err(format!(
                "ambiguous info-hash prefix {shown}: matches IDs {}",
                many.iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        };
    }
    if decimal {
        return Err(format!("no torrent with ID {shown}"));
    }
    Err(format!(
        "invalid torrent ID '{shown}': expected a number or an info-hash prefix of at least \
         {MIN_HASH_PREFIX} hex digits"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn env(json: bool, req: Request) -> Envelope {
        Envelope { json, req }
    }

    fn all_requests() -> Vec<Envelope> {
        let awkward = [
            "plain.torrent",
            "/tmp/with space/a b.torrent",
            "100% legit\t.torrent",
            "line\nbreak\r\n.torrent",
            "%41 not an escape",
            "--dir",
            "",
            "ünïcödé 🚀.torrent",
            "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&dn=a%20b",
            "\u{7f}\u{1}ctl",
        ];
        let mut v = Vec::new();
        for (i, s) in awkward.iter().enumerate() {
            let json = i % 2 == 0;
            v.push(env(
                json,
                Request::Start {
                    source: s.to_string(),
                    dir: None,
                    paused: false,
                },
            ));
            v.push(env(
                !json,
                Request::Start {
                    source: "x.torrent".into(),
                    dir: Some(s.to_string()),
                    paused: true,
                },
            ));
            v.push(env(json, Request::Stop { id: s.to_string() }));
            v.push(env(json, Request::Resume { id: s.to_string() }));
            v.push(env(json, Request::Seed { id: s.to_string() }));
            v.push(env(json, Request::Status { id: s.to_string() }));
            v.push(env(
                json,
                Request::Remove {
                    id: s.to_string(),
                    delete_data: i % 3 == 0,
                },
            ));
            v.push(env(
                json,
                Request::Limit {
                    id: Some(s.to_string()),
                    down: Some(None),
                    up: Some(Some(i as u64 * 1000)),
                    ratio: Some(i as f64 / 4.0),
                    seed_time: Some(i as u64 * 60),
                },
            ));
        }
        for json in [false, true] {
            v.push(env(json, Request::List));
            v.push(env(json, Request::Stats));
            v.push(env(json, Request::Shutdown));
            v.push(env(
                json,
                Request::Limit {
                    id: None,
                    down: None,
                    up: None,
                    ratio: None,
                    seed_time: None,
                },
            ));
            v.push(env(
                json,
                Request::Limit {
                    id: None,
                    down: Some(Some(u64::MAX)),
                    up: None,
                    ratio: Some(0.0),
                    seed_time: None,
                },
            ));
        }
        v
    }

    #[test]
    fn request_every_kind_round_trips() {
        for e in all_requests() {
            let line = encode_request(&e);
            assert!(line.ends_with('\n'));
            assert_eq!(line.matches('\n').count(), 1, "{line:?}");
            assert!(!line.contains('\r') && !line.contains('\t'));
            assert_eq!(parse_request(line.as_bytes()), Ok(e.clone()), "{line:?}");
            // Without the newline, and with CRLF, too.
            assert_eq!(
                parse_request(line.trim_end_matches('\n').as_bytes()),
                Ok(e.clone())
            );
            let crlf = format!("{}\r\n", line.trim_end_matches('\n'));
            assert_eq!(parse_request(crlf.as_bytes()), Ok(e));
        }
    }

    #[test]
    fn request_encoding_is_readable() {
        let e = env(
            true,
            Request::Start {
                source: "/a b/100%.torrent".into(),
                dir: Some("/mnt/usb".into()),
                paused: true,
            },
        );
        assert_eq!(
            encode_request(&e),
            "--json start /a%20b/100%25.torrent --dir /mnt/usb --paused\n"
        );
        // Hand-typed requests with extra spaces are fine.
        assert_eq!(
            parse_request(b"  status   1  \n"),
            Ok(env(false, Request::Status { id: "1".into() }))
        );
    }

    #[test]
    fn request_bad_inputs_give_clear_errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty request"),
            (b"\n", "empty request"),
            (b"--json\n", "empty request"),
            (b"frobnicate 1\n", "unknown command 'frobnicate'"),
            (b"stop\n", "stop: missing torrent ID"),
            (b"stop 1 2\n", "stop: unexpected argument '2'"),
            (b"list extra\n", "list: unexpected argument 'extra'"),
            (b"start\n", "start: missing torrent file or magnet link"),
            (b"start a --dir\n", "start: missing directory after --dir"),
            (b"start a --bogus\n", "start: unexpected argument '--bogus'"),
            (b"start a --paused --paused\n", "flag --paused given twice"),
            (b"start a --dir x --dir y\n", "flag --dir given twice"),
            (
                b"limit --down fast\n",
                "bad rate 'fast': expected bytes per second or 'off'",
            ),
            (
                b"limit --down -1\n",
                "bad rate '-1': expected bytes per second or 'off'",
            ),
            (
                b"limit --up 99999999999999999999999\n",
                "bad rate '99999999999999999999999': expected bytes per second or 'off'",
            ),
            (b"stop %zz\n", "bad percent escape in request"),
            (b"stop %4\n", "bad percent escape in request"),
            (b"stop %ff\n", "request is not valid utf-8"),
            (b"stop 1\nstop 2\n", "request has more than one line"),
            (
                b"list 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n",
                "request has more than 16 words",
            ),
        ];
        for (input, want) in cases {
            let err = parse_request(input).unwrap_err();
            assert_eq!(
                err.to_string(),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn request_too_long_is_rejected_at_the_cap() {
        let ok = format!("stop {}", "1".repeat(MAX_REQUEST_LINE - 5));
        assert_eq!(ok.len(), MAX_REQUEST_LINE);
        assert!(parse_request(ok.as_bytes()).is_ok());
        let long = format!("{ok}1\n");
        assert_eq!(
            parse_request(long.as_bytes()),
            Err(CtlError::RequestTooLong)
        );
    }

    #[test]
    fn request_truncations_never_panic_and_never_gain_meaning() {
        for e in all_requests() {
            let line = encode_request(&e);
            let b = line.as_bytes();
            for n in 0..b.len() {
                // A prefix may parse (a shorter valid request) but must not equal the original
                // unless only the newline (or trailing flags) were cut.
                if let Ok(p) = parse_request(&b[..n]) {
                    if n + 1 < b.len() {
                        let reenc = encode_request(&p);
                        assert!(line.starts_with(reenc.trim_end_matches('\n')));
                    }
                }
            }
        }
    }

    #[test]
    fn request_random_mutations_never_panic() {
        let mut rng = Rng::new(0xc71);
        let lines: Vec<String> = all_requests().iter().map(encode_request).collect();
        for i in 0..20_000 {
            let mut b = lines[i % lines.len()].clone().into_bytes();
            for _ in 0..1 + rng.below(4) {
                if b.is_empty() {
                    break;
                }
                let at = rng.below(b.len());
                match rng.below(3) {
                    0 => b[at] = rng.next_u32() as u8,
                    1 => {
                        b.remove(at);
                    }
                    _ => b.insert(at, b" %\n-"[rng.below(4)]),
                }
            }
            if let Ok(e) = parse_request(&b) {
                // Whatever parses re-encodes to something that parses to the same request.
                assert_eq!(parse_request(encode_request(&e).as_bytes()), Ok(e));
            }
        }
    }

    #[test]
    fn response_round_trips_and_rejects_junk() {
        for r in [
            Response::ok(String::new()),
            Response::ok("1\n".into()),
            Response::ok("ID STATE\n1 seeding\n".into()),
            Response::error(1, "no torrent with ID 7\n".into()),
            Response::error(2, "usage".into()),
            Response::error(255, "x\n\ny".into()),
        ] {
            let b = encode_response(&r);
            assert_eq!(parse_response(&b), Ok(r.clone()));
            for n in 0..b.len() {
                // Cutting inside the header line is always an error.
                let head_len = b.iter().position(|&c| c == b'\n').unwrap();
                if n <= head_len {
                    assert!(parse_response(&b[..n]).is_err());
                }
            }
        }
        assert_eq!(
            encode_response(&Response::error(0, "e".into())),
            b"error 1\ne"
        );
        for junk in [
            &b"OK\n"[..],
            b"error\n",
            b"error 0\n",
            b"error 01\n",
            b"error 256\n",
            b"error -1\n",
            b"error 1x\n",
            b"okay\n",
            b"",
        ] {
            assert_eq!(
                parse_response(junk),
                Err(CtlError::BadResponseHeader),
                "{junk:?}"
            );
        }
        assert_eq!(parse_response(b"ok\n\xff"), Err(CtlError::NotUtf8));
        let big = vec![b'a'; MAX_RESPONSE + 1];
        assert_eq!(parse_response(&big), Err(CtlError::ResponseTooLong));
    }

    #[test]
    fn response_random_mutations_never_panic() {
        let mut rng = Rng::new(0x5e5);
        let base = encode_response(&Response::error(17, "bad\n".into()));
        for _ in 0..5000 {
            let mut b = base.clone();
            let at = rng.below(b.len());
            b[at] = rng.next_u32() as u8;
            let _ = parse_response(&b);
        }
    }

    fn view() -> TorrentView {
        TorrentView {
            id: 3,
            name: "debian 12.iso".into(),
            info_hash: "0123456789abcdef0123456789abcdef01234567".into(),
            state: "downloading".into(),
            percent: 42.25,
            have_bytes: 1_536,
            total_bytes: 3 * 1024 * 1024,
            downloaded: 2048,
            uploaded: 1024,
            down_rate: 1536,
            up_rate: 0,
            peers_connected: 4,
            peers_known: 27,
            seeders: Some(10),
            leechers: None,
            eta_secs: Some(3723),
            dir: "/mnt/usb/dl".into(),
            error: None,
            note: None,
            trackers: vec![
                TrackerView {
                    url: "http://t.example/announce".into(),
                    status: "ok".into(),
                    last_error: None,
                    seeders: Some(10),
                    leechers: Some(2),
                },
                TrackerView {
                    url: "udp://u.example:80".into(),
                    status: "error".into(),
                    last_error: Some("timed out\nagain".into()),
                    seeders: None,
                    leechers: None,
                },
            ],
        }
    }

    #[test]
    fn format_list_text_snapshot() {
        let mut b = view();
        b.id = 12;
        b.name = "evil\nname".into();
        b.state = "seeding".into();
        b.percent = 100.0;
        b.down_rate = 0;
        b.up_rate = 5 * 1024 * 1024 + 1;
        b.peers_connected = 0;
        b.peers_known = 0;
        let got = format_list(&[view(), b], false);
        let want = "\
ID  STATE        PERCENT    DOWN      UP  PEERS  NAME
 3  downloading    42.2%  1.5K/s       0   4/27  debian 12.iso
12  seeding       100.0%       0  5.0M/s    0/0  evil?name
";
        assert_eq!(got, want);
        assert_eq!(
            format_list(&[], false),
            "ID  STATE  PERCENT  DOWN  UP  PEERS  NAME\n"
        );
        assert_eq!(format_list(&[], true), "[]\n");
    }

    #[test]
    fn format_status_text_snapshot() {
        let want = "\
id: 3
name: debian 12.iso
info_hash: 0123456789abcdef0123456789abcdef01234567
state: downloading
percent: 42.2%
have: 1536 (1.5 KiB)
size: 3145728 (3.0 MiB)
downloaded: 2048 (2.0 KiB)
uploaded: 1024 (1.0 KiB)
ratio: 0.500
down_rate: 1536 (1.5 KiB/s)
up_rate: 0 (0 B/s)
peers: 4 connected, 27 known
seeders: 10
leechers: unknown
eta: 3723s (1h02m03s)
dir: /mnt/usb/dl
tracker: http://t.example/announce status=ok seeders=10 leechers=2
tracker: udp://u.example:80 status=error seeders=unknown leechers=unknown error=timed out?again
";
        assert_eq!(format_status(&view(), false), want);
        let mut v = view();
        v.error = Some("disk full".into());
        v.eta_secs = None;
        v.trackers.clear();
        let s = format_status(&v, false);
        assert!(s.ends_with("dir: /mnt/usb/dl\nerror: disk full\n"));
        assert!(s.contains("eta: unknown\n"));
    }

    #[test]
    fn format_json_snapshot_and_validity() {
        let got = format_status(&view(), true);
        let want = "{\"id\":3,\"name\":\"debian 12.iso\",\
\"info_hash\":\"0123456789abcdef0123456789abcdef01234567\",\"state\":\"downloading\",\
\"percent\":42.25,\"have_bytes\":1536,\"total_bytes\":3145728,\"downloaded\":2048,\
\"uploaded\":1024,\"ratio\":0.500,\"down_rate\":1536,\"up_rate\":0,\"peers_connected\":4,\
\"peers_known\":27,\"seeders\":10,\"leechers\":null,\"eta_secs\":3723,\"dir\":\"/mnt/usb/dl\",\
\"error\":null,\"trackers\":[{\"url\":\"http://t.example/announce\",\"status\":\"ok\",\
\"last_error\":null,\"seeders\":10,\"leechers\":2},{\"url\":\"udp://u.example:80\",\
\"status\":\"error\",\"last_error\":\"timed out\\nagain\",\"seeders\":null,\
\"leechers\":null}]}\n";
        assert_eq!(got, want);
        let mut odd = view();
        odd.name = "q\"uo\\te\u{1}\u{7f}\t".into();
        odd.percent = f64::NAN;
        odd.downloaded = 0;
        odd.have_bytes = 0;
        odd.error = Some("\r\n".into());
        odd.trackers.clear();
        for s in [
            got,
            format_status(&odd, true),
            format_list(&[view(), odd.clone()], true),
            format_list(&[], true),
            format_stats(&StatsView::default(), true),
            format_stats(
                &StatsView {
                    uptime_secs: 90_061,
                    downloaded: u64::MAX,
                    uploaded: 1,
                    torrents: 2,
                    added: 5,
                    completed: 1,
                    errors: 0,
                    down_rate: 10,
                    up_rate: 20,
                },
                true,
            ),
        ] {
            assert!(s.ends_with('\n'));
            assert!(json_valid(s.trim_end()), "invalid JSON: {s}");
        }
        assert!(format_status(&odd, true).contains("\"ratio\":null"));
        assert!(format_status(&odd, true).contains("\"percent\":0.00"));
    }

    #[test]
    fn format_stats_text_snapshot() {
        let s = StatsView {
            uptime_secs: 90_061,
            downloaded: 1 << 30,
            uploaded: 1 << 29,
            torrents: 2,
            added: 5,
            completed: 1,
            errors: 3,
            down_rate: 0,
            up_rate: 2048,
        };
        let want = "\
uptime: 90061s (1d01h01m)
downloaded: 1073741824 (1.0 GiB)
uploaded: 536870912 (512.0 MiB)
ratio: 0.500
torrents: 2
added: 5
completed: 1
errors: 3
down_rate: 0 (0 B/s)
up_rate: 2048 (2.0 KiB/s)
";
        assert_eq!(format_stats(&s, false), want);
    }

    #[test]
    fn json_escape_escapes_controls_quotes_backslashes() {
        assert_eq!(json_escape("a\"b\\c\nd\u{0}é"), "a\\\"b\\\\c\\nd\\u0000é");
        assert!(json_valid(&format!(
            "\"{}\"",
            json_escape("\u{1f}\u{7f}\r\t")
        )));
    }

    #[test]
    fn resolve_id_by_number_and_hash_prefix() {
        let mut h1 = [0u8; 20];
        h1[0] = 0xab;
        h1[1] = 0xcd;
        let mut h2 = h1;
        h2[2] = 0x11;
        let mut h3 = [0u8; 20];
        h3[0] = 0x12;
        h3[1] = 0x34;
        let t = [(1, h1), (2, h2), (1234, h3)];
        assert_eq!(resolve_id("1", &t), Ok(1));
        assert_eq!(resolve_id(" 2 ", &t), Ok(2));
        assert_eq!(resolve_id("1234", &t), Ok(1234));
        assert_eq!(resolve_id("7", &t), Err("no torrent with ID 7".into()));
        assert_eq!(resolve_id("abcd11", &t), Ok(2));
        assert_eq!(resolve_id("ABCD00", &t), Ok(1));
        assert_eq!(resolve_id(&crate::hash::hex(&h3), &t), Ok(1234));
        assert_eq!(resolve_id("1234000", &t), Ok(1234));
        assert_eq!(
            resolve_id("abcd", &t),
            Err("ambiguous info-hash prefix abcd: matches IDs 1, 2".into())
        );
        assert_eq!(
            resolve_id("ffff", &t),
            Err("no torrent whose info-hash starts with ffff".into())
        );
        assert_eq!(
            resolve_id("99999", &t),
            Err("no torrent with ID 99999".into())
        );
        assert!(resolve_id("abc", &t)
            .unwrap_err()
            .starts_with("invalid torrent ID 'abc'"));
        assert!(resolve_id("", &t).is_err());
        assert!(resolve_id("xyz\n", &t).unwrap_err().contains("'xyz'"));
        assert!(resolve_id(&"a".repeat(41), &t).is_err());
        assert_eq!(
            resolve_id("99999999999999999999", &t),
            Err("no torrent with ID 99999999999999999999".into())
        );
    }

    /// Minimal RFC 8259 syntax checker, enough to prove the formatters emit valid JSON.
    fn json_valid(s: &str) -> bool {
        fn ws(b: &[u8], i: &mut usize) {
            while matches!(b.get(*i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
                *i += 1;
            }
        }
        fn string(b: &[u8], i: &mut usize) -> bool {
            if b.get(*i) != Some(&b'"') {
                return false;
            }
            *i += 1;
            loop {
                match b.get(*i) {
                    None => return false,
                    Some(b'"') => {
                        *i += 1;
                        return true;
                    }
                    Some(b'\\') => match b.get(*i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => *i += 2,
                        Some(b'u') => {
                            let hex = b.get(*i + 2..*i + 6);
                            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                return false;
                            }
                            *i += 6;
                        }
                        _ => return false,
                    },
                    Some(&c) if c < 0x20 => return false,
                    Some(_) => *i += 1,
                }
            }
        }
        fn number(b: &[u8], i: &mut usize) -> bool {
            let start = *i;
            if b.get(*i) == Some(&b'-') {
                *i += 1;
            }
            let int_start = *i;
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            let int = &b[int_start..*i];
            if int.is_empty() || (int.len() > 1 && int[0] == b'0') {
                return false;
            }
            if b.get(*i) == Some(&b'.') {
                *i += 1;
                let f = *i;
                while b.get(*i).is_some_and(u8::is_ascii_digit) {
                    *i += 1;
                }
                if *i == f {
                    return false;
                }
            }
            *i > start
        }
        fn value(b: &[u8], i: &mut usize, depth: usize) -> bool {
            if depth > 32 {
                return false;
            }
            ws(b, i);
            let ok = match b.get(*i) {
                Some(b'{') => {
                    *i += 1;
                    ws(b, i);
                    if b.get(*i) == Some(&b'}') {
                        *i += 1;
                        true
                    } else {
                        loop {
                            ws(b, i);
                            if !string(b, i) {
                                return false;
                            }
                            ws(b, i);
                            if b.get(*i) != Some(&b':') {
                                return false;
                            }
                            *i += 1;
                            if !value(b, i, depth + 1) {
                                return false;
                            }
                            ws(b, i);
                            match b.get(*i) {
                                Some(b',') => *i += 1,
                                Some(b'}') => {
                                    *i += 1;
                                    break true;
                                }
                                _ => return false,
                            }
                        }
                    }
                }
                Some(b'[') => {
                    *i += 1;
                    ws(b, i);
                    if b.get(*i) == Some(&b']') {
                        *i += 1;
                        true
                    } else {
                        loop {
                            if !value(b, i, depth + 1) {
                                return false;
                            }
                            ws(b, i);
                            match b.get(*i) {
                                Some(b',') => *i += 1,
                                Some(b']') => {
                                    *i += 1;
                                    break true;
                                }
                                _ => return false,
                            }
                        }
                    }
                }
                Some(b'"') => string(b, i),
                Some(b't') if b[*i..].starts_with(b"true") => {
                    *i += 4;
                    true
                }
                Some(b'f') if b[*i..].starts_with(b"false") => {
                    *i += 5;
                    true
                }
                Some(b'n') if b[*i..].starts_with(b"null") => {
                    *i += 4;
                    true
                }
                Some(_) => number(b, i),
                None => false,
            };
            ws(b, i);
            ok
        }
        let b = s.as_bytes();
        let mut i = 0;
        value(b, &mut i, 0) && i == b.len()
    }

    #[test]
    fn json_checker_rejects_broken_json() {
        for bad in [
            "{",
            "[1,]",
            "{\"a\" 1}",
            "\"\n\"",
            "01",
            "1.",
            "{\"a\":tru}",
            "[] []",
        ] {
            assert!(!json_valid(bad), "{bad}");
        }
        for good in [
            "{}",
            "[]",
            "[1,-2.5,null,true,\"\\u00e9\"]",
            "{\"a\":{\"b\":[]}}",
        ] {
            assert!(json_valid(good), "{good}");
        }
    }
}
