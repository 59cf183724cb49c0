//! Layer 1: HTTP tracker protocol codec (BEP 3 "Trackers", BEP 23 compact peers, BEP 7
//! `peers6`, BEP 48 scrape).
//!
//! Pure bytes in, values out: this module parses tracker URLs, writes HTTP/1.1 GET requests
//! into the caller's buffer, parses HTTP responses incrementally from "everything read so far",
//! and decodes the bencoded announce and scrape bodies. It must not open sockets, resolve
//! names, read the clock or count redirects: the event loop owns the connection, name
//! resolution (`dns`), timers and the redirect budget (`MAX_REDIRECTS`). UDP trackers (BEP 15)
//! only share `Url`/`parse_url` with this module; TLS is not handled here.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::bencode::{self, Value};

/// Longest URL accepted (announce URLs from torrents, `Location` headers). Real announce URLs
/// are well under 300 bytes even with passkeys; the cap bounds every request we build.
pub const MAX_URL_LEN: usize = 2048;
/// Longest host name (RFC 1035 §2.3.4: 253 characters in text form).
pub const MAX_HOST_LEN: usize = 253;
/// Largest HTTP header section accepted. Tracker replies carry a handful of short headers; a
/// peer that streams endless headers must not make us buffer without bound.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Largest HTTP body accepted. 1000 compact peers are 6 KB and a large multi-hash scrape is far
/// under 1 MiB; anything bigger is not a tracker reply worth decoding on a router.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
/// Longest chunk-size line (hex size plus chunk extensions) in a chunked body; real ones are a
/// few bytes, the cap stops a line that never ends.
pub const MAX_CHUNK_LINE: usize = 1024;
/// Redirects a caller should follow for one request before giving up (the caller counts).
pub const MAX_REDIRECTS: u32 = 5;
/// Most peers taken from one announce reply (`peers` and `peers6` together). Trackers honour
/// `numwant` (default 50); the cap keeps a hostile reply from flooding the peer pool.
pub const MAX_PEERS_PER_RESPONSE: usize = 1000;
/// Longest `failure reason` / `warning message` kept; the text is only logged.
pub const MAX_MESSAGE_LEN: usize = 1024;
/// Longest `tracker id` kept; it is echoed back in every later announce, so it must stay small.
pub const MAX_TRACKER_ID_LEN: usize = 256;
/// Most info-hashes put into one scrape request (each costs ~70 bytes of URL).
pub const MAX_SCRAPE_HASHES: usize = 64;
/// Announce interval used when the tracker gives none (BEP 3 makes `interval` mandatory, but
/// replies without it exist).
pub const DEFAULT_INTERVAL_SECS: u32 = 1800;
/// Shortest re-announce interval we obey: protects the tracker and us from `interval 0`.
pub const MIN_INTERVAL_SECS: u32 = 30;
/// Longest re-announce interval we obey: a tracker asking for days would starve the swarm.
pub const MAX_INTERVAL_SECS: u32 = 2 * 3600;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrackerError {
    UrlTooLong,
    UrlScheme,
    UrlUserinfo,
    UrlHost,
    UrlPort,
    UrlNeedsPort,
    HeaderTooLarge,
    BodyTooLarge,
    BadStatusLine,
    BadHeader,
    BadContentLength,
    UnsupportedEncoding,
    BadChunk,
    Informational,
    Truncated,
    BadRedirect,
    Bencode(bencode::Error),
    NotADict,
    NotAnAnnounce,
    NotAScrape,
    BadPeers,
    Failure(String),
}

impl fmt::Display for TrackerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrackerError::UrlTooLong => write!(f, "tracker url longer than {MAX_URL_LEN} bytes"),
            TrackerError::UrlScheme => write!(f, "tracker url scheme is not http, https or udp"),
            TrackerError::UrlUserinfo => write!(f, "tracker url must not contain user info"),
            TrackerError::UrlHost => write!(f, "malformed host in tracker url"),
            TrackerError::UrlPort => write!(f, "malformed port in tracker url"),
            TrackerError::UrlNeedsPort => write!(f, "udp tracker url has no port"),
            TrackerError::HeaderTooLarge => {
                write!(
                    f,
                    "http header section larger than {MAX_HEADER_BYTES} bytes"
                )
            }
            TrackerError::BodyTooLarge => {
                write!(f, "http body larger than {MAX_BODY_BYTES} bytes")
            }
            TrackerError::BadStatusLine => write!(f, "malformed http status line"),
            TrackerError::BadHeader => write!(f, "malformed http header line"),
            TrackerError::BadContentLength => write!(f, "malformed or conflicting content-length"),
            TrackerError::UnsupportedEncoding => {
                write!(f, "unsupported http content-encoding (only identity)")
            }
            TrackerError::BadChunk => write!(f, "malformed chunked transfer encoding"),
            TrackerError::Informational => write!(f, "unexpected 1xx informational response"),
            TrackerError::Truncated => {
                write!(f, "connection closed before the http response was complete")
            }
            TrackerError::BadRedirect => write!(f, "redirect location is not an http(s) url"),
            TrackerError::Bencode(e) => write!(f, "tracker reply: {e}"),
            TrackerError::NotADict => write!(f, "tracker reply is not a bencoded dictionary"),
            TrackerError::NotAnAnnounce => {
                write!(f, "tracker reply has no failure reason, interval or peers")
            }
            TrackerError::NotAScrape => write!(f, "scrape reply has no files dictionary"),
            TrackerError::BadPeers => {
                write!(f, "tracker peers value is neither a string nor a list")
            }
            TrackerError::Failure(m) => write!(f, "tracker failure: {m}"),
        }
    }
}

impl std::error::Error for TrackerError {}

// ---------------------------------------------------------------------------------------------
// URLs

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
    Udp,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Udp => "udp",
        }
    }

    /// The port implied when the URL names none (UDP trackers have no default).
    pub fn default_port(self) -> Option<u16> {
        match self {
            Scheme::Http => Some(80),
            Scheme::Https => Some(443),
            Scheme::Udp => None,
        }
    }
}

/// A parsed tracker URL. `host` is lower-case and holds IPv6 literals without brackets;
/// `path` is path plus query, always starts with '/', has no fragment and only printable ASCII
/// (other bytes are percent-encoded), so it can go into a request line as is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Url {
    /// The host as an IP address when it is a literal (no DNS needed).
    pub fn host_is_ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// The `Host` header value: brackets for IPv6, port only when not the scheme's default.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.scheme.default_port() == Some(self.port) {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme.as_str(),
            self.host_header(),
            self.path
        )
    }
}

/// Parses an `http://`, `https://` or `udp://` tracker URL.
pub fn parse_url(s: &str) -> Result<Url, TrackerError> {
    // Torrents in the wild carry stray whitespace around announce URLs.
    let s = s.trim();
    if s.len() > MAX_URL_LEN {
        return Err(TrackerError::UrlTooLong);
    }
    let (scheme_str, rest) = s.split_once("://").ok_or(TrackerError::UrlScheme)?;
    let scheme = if scheme_str.eq_ignore_ascii_case("http") {
        Scheme::Http
    } else if scheme_str.eq_ignore_ascii_case("https") {
        Scheme::Https
    } else if scheme_str.eq_ignore_ascii_case("udp") {
        Scheme::Udp
    } else {
        return Err(TrackerError::UrlScheme);
    };
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = rest.get(..auth_end).ok_or(TrackerError::UrlHost)?;
    let tail = rest.get(auth_end..).unwrap_or("");
    if authority.contains('@') {
        // user:password@host would leak credentials into logs and Host headers.
        return Err(TrackerError::UrlUserinfo);
    }
    let (host, port_str) = if let Some(after) = authority.strip_prefix('[') {
        let (h, after) = after.split_once(']').ok_or(TrackerError::UrlHost)?;
        let ip: Ipv6Addr = h.parse().map_err(|_| TrackerError::UrlHost)?;
        let port = if after.is_empty() {
            None
        } else {
            Some(after.strip_prefix(':').ok_or(TrackerError::UrlPort)?)
        };
        (ip.to_string(), port)
    } else {
        let (h, p) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        (check_host(h)?, p)
    };
    let port = match port_str {
        None | Some("") => scheme.default_port().ok_or(TrackerError::UrlNeedsPort)?,
        Some(p) => {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(TrackerError::UrlPort);
            }
            match p.parse::<u16>() {
                Ok(n) if n != 0 => n,
                _ => return Err(TrackerError::UrlPort),
            }
        }
    };
    let path = clean_path(tail);
    if path.len() > MAX_URL_LEN {
        return Err(TrackerError::UrlTooLong);
    }
    Ok(Url {
        scheme,
        host,
        port,
        path,
    })
}

/// Validates a registered-name host (letters, digits, '-', '.', '_'), lower-cased.
fn check_host(h: &str) -> Result<String, TrackerError> {
    let ok = !h.is_empty()
        && h.len() <= MAX_HOST_LEN
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !ok {
        return Err(TrackerError::UrlHost);
    }
    Ok(h.to_ascii_lowercase())
}

/// Path+query for a request line: fragment dropped, leading '/', and every byte that is not
/// printable ASCII percent-encoded so nothing can break the request line.
fn clean_path(tail: &str) -> String {
    let tail = tail.split('#').next().unwrap_or("");
    let mut out = String::with_capacity(tail.len() + 1);
    if !tail.starts_with('/') {
        out.push('/');
    }
    for &b in tail.as_bytes() {
        if (0x21..=0x7e).contains(&b) {
            out.push(b as char);
        } else {
            push_pct(&mut out, b);
        }
    }
    out
}

fn push_pct(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 15)] as char);
}

/// Percent-encodes every byte except RFC 3986 unreserved characters (ALPHA DIGIT - . _ ~),
/// as BEP 3 requires for the binary `info_hash` and `peer_id`.
pub fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            push_pct(&mut out, b);
        }
    }
    out
}

/// What to append to `path` before the first new query parameter.
fn query_sep(path: &str) -> &'static str {
    if !path.contains('?') {
        "?"
    } else if path.ends_with('?') || path.ends_with('&') {
        ""
    } else {
        "&"
    }
}

/// Resolves a redirect `Location` against the URL that was requested: absolute
/// (`http://h/p`), scheme-relative (`//h/p`), absolute-path (`/p`) or path-relative (`p`).
pub fn resolve_redirect(base: &Url, location: &str) -> Result<Url, TrackerError> {
    let loc = location.trim();
    if loc.len() > MAX_URL_LEN {
        return Err(TrackerError::UrlTooLong);
    }
    if loc.is_empty() {
        return Err(TrackerError::BadRedirect);
    }
    let url = if has_scheme(loc) {
        parse_url(loc)?
    } else if let Some(rest) = loc.strip_prefix("//") {
        parse_url(&format!("{}://{rest}", base.scheme.as_str()))?
    } else if loc.starts_with('/') {
        Url {
            path: clean_path(loc),
            ..base.clone()
        }
    } else {
        let base_path = base.path.split('?').next().unwrap_or("/");
        let joined = if loc.starts_with('?') {
            format!("{base_path}{loc}")
        } else {
            let dir_end = base_path.rfind('/').map_or(0, |i| i + 1);
            format!("{}{loc}", base_path.get(..dir_end).unwrap_or("/"))
        };
        Url {
            path: clean_path(&joined),
            ..base.clone()
        }
    };
    if url.scheme == Scheme::Udp {
        // A UDP tracker speaks another protocol; an HTTP redirect cannot lead there.
        return Err(TrackerError::BadRedirect);
    }
    if url.path.len() > MAX_URL_LEN {
        return Err(TrackerError::UrlTooLong);
    }
    Ok(url)
}

/// RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) followed by "://".
fn has_scheme(s: &str) -> bool {
    match s.split_once("://") {
        Some((scheme, _)) => {
            scheme
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic())
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        }
        None => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    None,
    Started,
    Completed,
    Stopped,
}

impl Event {
    /// The BEP 3 `event` value; `None` means a regular announce and sends no parameter.
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            Event::None => None,
            Event::Started => Some("started"),
            Event::Completed => Some("completed"),
            Event::Stopped => Some("stopped"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Announce<'a> {
    pub info_hash: &'a [u8; 20],
    pub peer_id: &'a [u8; 20],
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    pub left: u64,
    pub event: Event,
    pub numwant: u32,
    /// BEP 7: stays the same for a torrent during a session so the tracker can tell us apart
    /// when we announce from several addresses.
    pub key: u32,
    /// The `tracker id` from an earlier reply (BEP 3 wiki: echoed as `trackerid`).
    pub tracker_id: Option<&'a [u8]>,
}

fn put(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
}

/// Writes a complete HTTP/1.1 announce GET request for `url` into `out`.
pub fn build_announce(url: &Url, a: &Announce, out: &mut Vec<u8>) {
    put(out, "GET ");
    put(out, &url.path);
    put(out, query_sep(&url.path));
    put(out, "info_hash=");
    put(out, &percent_encode(a.info_hash));
    put(out, "&peer_id=");
    put(out, &percent_encode(a.peer_id));
    put(
        out,
        &format!(
            "&port={}&uploaded={}&downloaded={}&left={}",
            a.port, a.uploaded, a.downloaded, a.left
        ),
    );
    if let Some(ev) = a.event.as_str() {
        put(out, "&event=");
        put(out, ev);
    }
    // BEP 23: ask for the compact format; no_peer_id for trackers that ignore compact.
    put(
        out,
        &format!(
            "&key={:08X}&numwant={}&compact=1&no_peer_id=1",
            a.key, a.numwant
        ),
    );
    if let Some(id) = a.tracker_id {
        put(out, "&trackerid=");
        put(out, &percent_encode(id));
    }
    put(out, " HTTP/1.1\r\n");
    put_headers(url, out);
}

fn put_headers(url: &Url, out: &mut Vec<u8>) {
    put(out, "Host: ");
    put(out, &url.host_header());
    put(out, "\r\nUser-Agent: atorrent/");
    put(out, env!("CARGO_PKG_VERSION"));
    // identity: we do not decompress; Connection: close lets a close end a body.
    put(
        out,
        "\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n",
    );
}

/// BEP 48: the scrape URL is the announce URL with `announce` at the start of the last path
/// segment replaced by `scrape`; `None` when the tracker has no such convention (or is UDP,
/// whose scrape is a BEP 15 message on the announce URL itself).
pub fn scrape_url(announce: &Url) -> Option<Url> {
    if announce.scheme == Scheme::Udp {
        return None;
    }
    let (path, query) = match announce.path.find('?') {
        Some(i) => (announce.path.get(..i)?, announce.path.get(i..)?),
        None => (announce.path.as_str(), ""),
    };
    let slash = path.rfind('/')?;
    let dir = path.get(..=slash)?;
    let rest = path.get(slash + 1..)?.strip_prefix("announce")?;
    Some(Url {
        path: format!("{dir}scrape{rest}{query}"),
        ..announce.clone()
    })
}

/// Writes an HTTP/1.1 scrape GET request (BEP 48) for up to `MAX_SCRAPE_HASHES` hashes.
pub fn build_scrape(url: &Url, info_hashes: &[[u8; 20]], out: &mut Vec<u8>) {
    put(out, "GET ");
    put(out, &url.path);
    let mut sep = query_sep(&url.path);
    for h in info_hashes.iter().take(MAX_SCRAPE_HASHES) {
        put(out, sep);
        put(out, "info_hash=");
        put(out, &percent_encode(h));
        sep = "&";
    }
    put(out, " HTTP/1.1\r\n");
    put_headers(url, out);
}

// ---------------------------------------------------------------------------------------------
// HTTP responses

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse<'a> {
    pub status: u16,
    /// The `Location` header, only for redirect statuses (301/302/303/307/308).
    pub location: Option<&'a str>,
    pub body: Cow<'a, [u8]>,
}

fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

/// Splits `buf` into lines ending in "\n" (an optional "\r" before it is removed).
fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_ws(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Offset just past the blank line ending the header section, looking only at the first
/// `MAX_HEADER_BYTES`.
fn head_end(buf: &[u8]) -> Option<usize> {
    let window = buf.get(..buf.len().min(MAX_HEADER_BYTES))?;
    let mut line_start = 0;
    for (i, &b) in window.iter().enumerate() {
        if b == b'\n' {
            let line = trim_cr(window.get(line_start..i)?);
            if line.is_empty() && line_start > 0 {
                return Some(i + 1);
            }
            line_start = i + 1;
        }
    }
    None
}

fn parse_status(line: &[u8]) -> Result<u16, TrackerError> {
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "))
        .ok_or(TrackerError::BadStatusLine)?;
    let code = rest.get(..3).ok_or(TrackerError::BadStatusLine)?;
    if !code.iter().all(u8::is_ascii_digit) || !matches!(rest.get(3), None | Some(b' ')) {
        return Err(TrackerError::BadStatusLine);
    }
    let n = code
        .iter()
        .fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
    if !(100..=599).contains(&n) {
        return Err(TrackerError::BadStatusLine);
    }
    Ok(n)
}

fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

enum Framing {
    Length(usize),
    Chunked,
    Close,
}

/// Parses an HTTP/1.x response from everything read so far. `complete` is true once the
/// server closed the connection. Returns `Ok(None)` while more bytes are needed.
///
/// Redirects (with a `Location`) are returned as soon as the headers are in, with an empty
/// body: the caller drops the connection and follows. 204/304 have no body; otherwise the body
/// is framed by `Transfer-Encoding: chunked`, then `Content-Length`, then the close.
pub fn parse_http_response(
    buf: &[u8],
    complete: bool,
) -> Result<Option<HttpResponse<'_>>, TrackerError> {
    let Some(body_start) = head_end(buf) else {
        if buf.len() > MAX_HEADER_BYTES {
            return Err(TrackerError::HeaderTooLarge);
        }
        if complete {
            return Err(TrackerError::Truncated);
        }
        return Ok(None);
    };
    let head = buf.get(..body_start).ok_or(TrackerError::Truncated)?;
    let mut lines = head.split(|&b| b == b'\n').map(trim_cr);
    let status = parse_status(lines.next().unwrap_or(b""))?;
    if status < 200 {
        // We never send `Expect`, so an interim response is not something we can use.
        return Err(TrackerError::Informational);
    }
    let mut content_length: Option<u64> = None;
    let mut te_seen = false;
    let mut te_chunked = false;
    let mut location: Option<&[u8]> = None;
    for line in lines {
        if line.is_empty() {
            break;
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            // Obsolete line folding: RFC 7230 §3.2.4 lets a client reject it.
            return Err(TrackerError::BadHeader);
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(TrackerError::BadHeader)?;
        let name = line.get(..colon).ok_or(TrackerError::BadHeader)?;
        let value = trim_ws(line.get(colon + 1..).unwrap_or(b""));
        if name.is_empty() || name.iter().any(|&b| b <= b' ' || b >= 0x7f) {
            return Err(TrackerError::BadHeader);
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_decimal(value).ok_or(TrackerError::BadContentLength)?;
            if content_length.is_some_and(|old| old != n) {
                // Conflicting lengths are a request-smuggling signal: refuse.
                return Err(TrackerError::BadContentLength);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te_seen = true;
            let last = value.split(|&b| b == b',').map(trim_ws).next_back();
            te_chunked = last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"content-encoding") {
            let ok = value
                .split(|&b| b == b',')
                .map(trim_ws)
                .all(|t| t.is_empty() || t.eq_ignore_ascii_case(b"identity"));
            if !ok {
                return Err(TrackerError::UnsupportedEncoding);
            }
        } else if name.eq_ignore_ascii_case(b"location") {
            location = Some(value);
        }
    }
    let location = if is_redirect(status) {
        location.and_then(|l| std::str::from_utf8(l).ok())
    } else {
        None
    };
    if location.is_some() || status == 204 || status == 304 {
        return Ok(Some(HttpResponse {
            status,
            location,
            body: Cow::Borrowed(&[]),
        }));
    }
    let rest = buf.get(body_start..).unwrap_or(&[]);
    // RFC 7230 §3.3.3: Transfer-Encoding wins over Content-Length; a non-chunked transfer
    // coding means the body runs to the close.
    let framing = if te_seen {
        if te_chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else if let Some(n) = content_length {
        match usize::try_from(n) {
            Ok(n) if n <= MAX_BODY_BYTES => Framing::Length(n),
            _ => return Err(TrackerError::BodyTooLarge),
        }
    } else {
        Framing::Close
    };
    let body = match framing {
        Framing::Length(n) => match rest.get(..n) {
            Some(b) => Cow::Borrowed(b),
            None if complete => return Err(TrackerError::Truncated),
            None => return Ok(None),
        },
        Framing::Close => {
            if rest.len() > MAX_BODY_BYTES {
                return Err(TrackerError::BodyTooLarge);
            }
            if !complete {
                return Ok(None);
            }
            Cow::Borrowed(rest)
        }
        Framing::Chunked => {
            // First pass only checks framing (no copy), so a caller re-parsing a growing
            // buffer after every read does not copy the body each time.
            if decode_chunked(rest, None)?.is_none() {
                if complete {
                    return Err(TrackerError::Truncated);
                }
                return Ok(None);
            }
            let mut body = Vec::new();
            decode_chunked(rest, Some(&mut body))?;
            Cow::Owned(body)
        }
    };
    Ok(Some(HttpResponse {
        status,
        location: None,
        body,
    }))
}

/// Offset of the next '\n' at or after `pos`, searching at most `cap` bytes. `Ok(None)` when
/// more data is needed, an error when the line is already longer than `cap`.
fn find_lf(data: &[u8], pos: usize, cap: usize) -> Result<Option<usize>, TrackerError> {
    let avail = data.get(pos..).unwrap_or(&[]);
    let window = avail.get(..avail.len().min(cap)).unwrap_or(&[]);
    match window.iter().position(|&b| b == b'\n') {
        Some(i) => Ok(Some(pos + i)),
        None if avail.len() >= cap => Err(TrackerError::BadChunk),
        None => Ok(None),
    }
}

/// Decodes a chunked body (RFC 7230 §4.1): hex size, optional `;extensions`, data, CRLF,
/// ending with a zero-size chunk, optional trailer fields and a blank line. Returns the
/// decoded body length once the body is complete (`Ok(None)` while more is needed) and copies
/// the data into `out` when given.
fn decode_chunked(
    data: &[u8],
    mut out: Option<&mut Vec<u8>>,
) -> Result<Option<usize>, TrackerError> {
    let mut pos = 0usize;
    let mut body_len = 0usize;
    loop {
        let Some(lf) = find_lf(data, pos, MAX_CHUNK_LINE)? else {
            return Ok(None);
        };
        let line = trim_cr(data.get(pos..lf).ok_or(TrackerError::BadChunk)?);
        let size_field = trim_ws(line.split(|&b| b == b';').next().unwrap_or(b""));
        if size_field.is_empty() || size_field.len() > 8 {
            // 8 hex digits already exceed MAX_BODY_BYTES many times over.
            return Err(TrackerError::BadChunk);
        }
        let mut size = 0usize;
        for &c in size_field {
            let d = (c as char).to_digit(16).ok_or(TrackerError::BadChunk)?;
            size = size
                .checked_mul(16)
                .and_then(|s| s.checked_add(d as usize))
                .ok_or(TrackerError::BodyTooLarge)?;
        }
        pos = lf + 1;
        if size == 0 {
            // Trailer section: header lines we ignore, then a blank line.
            let trailer_start = pos;
            loop {
                let cap = MAX_HEADER_BYTES.saturating_sub(pos - trailer_start);
                let Some(lf) = find_lf(data, pos, cap.max(1))? else {
                    return Ok(None);
                };
                let line = trim_cr(data.get(pos..lf).ok_or(TrackerError::BadChunk)?);
                pos = lf + 1;
                if line.is_empty() {
                    return Ok(Some(body_len));
                }
                if pos - trailer_start > MAX_HEADER_BYTES {
                    return Err(TrackerError::HeaderTooLarge);
                }
            }
        }
        body_len = body_len.saturating_add(size);
        if body_len > MAX_BODY_BYTES {
            return Err(TrackerError::BodyTooLarge);
        }
        let end = pos.checked_add(size).ok_or(TrackerError::BodyTooLarge)?;
        let Some(chunk) = data.get(pos..end) else {
            return Ok(None);
        };
        if let Some(out) = out.as_deref_mut() {
            out.extend_from_slice(chunk);
        }
        pos = end;
        match (data.get(pos), data.get(pos + 1)) {
            (None, _) | (Some(b'\r'), None) => return Ok(None),
            (Some(b'\r'), Some(b'\n')) => pos += 2,
            (Some(b'\n'), _) => pos += 1,
            _ => return Err(TrackerError::BadChunk),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bencoded bodies

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnnounceResponse {
    pub interval: Option<u32>,
    pub min_interval: Option<u32>,
    pub peers: Vec<SocketAddr>,
    pub failure: Option<String>,
    pub warning: Option<String>,
    pub complete: Option<u32>,
    pub incomplete: Option<u32>,
    pub tracker_id: Option<Vec<u8>>,
}

impl AnnounceResponse {
    /// Time until the next regular announce: `interval` (or `DEFAULT_INTERVAL_SECS`), raised
    /// to `min interval`, then clamped to `MIN_INTERVAL_SECS..=MAX_INTERVAL_SECS`.
    pub fn effective_interval(&self) -> Duration {
        let mut secs = self.interval.unwrap_or(DEFAULT_INTERVAL_SECS);
        if let Some(min) = self.min_interval {
            secs = secs.max(min);
        }
        Duration::from_secs(u64::from(secs.clamp(MIN_INTERVAL_SECS, MAX_INTERVAL_SECS)))
    }
}

/// Decodes a bencoded reply body, tolerating trailing whitespace (some trackers end with a
/// newline) but nothing else.
fn decode_body(body: &[u8]) -> Result<Value<'_>, TrackerError> {
    let (v, used) = bencode::decode_prefix(body).map_err(TrackerError::Bencode)?;
    let trailing = body.get(used..).unwrap_or(&[]);
    if !trailing.iter().all(u8::is_ascii_whitespace) {
        return Err(TrackerError::Bencode(bencode::Error {
            kind: bencode::ErrorKind::TrailingData,
            offset: used,
        }));
    }
    if !matches!(v, Value::Dict(_)) {
        return Err(TrackerError::NotADict);
    }
    Ok(v)
}

/// Human text from the tracker, capped and with control characters blanked (it goes to logs).
fn message(b: &[u8]) -> String {
    let b = b.get(..b.len().min(MAX_MESSAGE_LEN)).unwrap_or(&[]);
    String::from_utf8_lossy(b)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn get_u32(v: &Value<'_>, key: &[u8]) -> Option<u32> {
    v.get(key)
        .and_then(Value::as_int)
        .and_then(|i| u32::try_from(i).ok())
}

/// Adds a peer unless its port is 0, its address is unspecified, or it is a duplicate.
/// Returns false once the cap is reached.
fn push_peer(peers: &mut Vec<SocketAddr>, ip: IpAddr, port: u16) -> bool {
    if peers.len() >= MAX_PEERS_PER_RESPONSE {
        return false;
    }
    let ip = ip.to_canonical();
    if port == 0 || ip.is_unspecified() {
        return true;
    }
    let sa = SocketAddr::new(ip, port);
    if !peers.contains(&sa) {
        peers.push(sa);
    }
    true
}

/// Parses an announce reply body.
///
/// - `failure reason` set: the other fields are read when present, peers are not.
/// - `peers` as a string is BEP 23 compact (6 bytes each); as a list it is BEP 3 dictionaries
///   whose `ip` must be an IPv4/IPv6 literal (host names are dropped: resolving each would
///   cost a DNS round trip per peer and trackers do not send them in practice).
/// - `peers6` is BEP 7 compact IPv6 (18 bytes each).
/// - A compact string whose length is not a multiple of the entry size keeps its whole
///   entries and ignores the trailing partial one: the complete entries are as valid as ever,
///   and dropping the reply would only lose peers.
/// - Port 0, unspecified addresses and duplicates are dropped; at most
///   `MAX_PEERS_PER_RESPONSE` are kept.
pub fn parse_announce(body: &[u8]) -> Result<AnnounceResponse, TrackerError> {
    let v = decode_body(body)?;
    let mut r = AnnounceResponse {
        failure: v
            .get(b"failure reason")
            .and_then(Value::as_bytes)
            .map(message),
        warning: v
            .get(b"warning message")
            .and_then(Value::as_bytes)
            .map(message),
        interval: get_u32(&v, b"interval"),
        min_interval: get_u32(&v, b"min interval"),
        complete: get_u32(&v, b"complete"),
        incomplete: get_u32(&v, b"incomplete"),
        tracker_id: v
            .get(b"tracker id")
            .and_then(Value::as_bytes)
            .filter(|b| !b.is_empty() && b.len() <= MAX_TRACKER_ID_LEN)
            .map(<[u8]>::to_vec),
        peers: Vec::new(),
    };
    if r.failure.is_some() {
        return Ok(r);
    }
    let peers = v.get(b"peers");
    let peers6 = v.get(b"peers6");
    if r.interval.is_none() && peers.is_none() && peers6.is_none() {
        return Err(TrackerError::NotAnAnnounce);
    }
    match peers {
        Some(Value::Bytes(b)) => {
            for e in b.chunks_exact(6) {
                let Ok([a, b, c, d, p0, p1]) = <[u8; 6]>::try_from(e) else {
                    break;
                };
                let ip = Ipv4Addr::new(a, b, c, d);
                if !push_peer(&mut r.peers, ip.into(), u16::from_be_bytes([p0, p1])) {
                    break;
                }
            }
        }
        Some(Value::List(list)) => {
            for d in list {
                let ip = d
                    .get(b"ip")
                    .and_then(Value::as_str)
                    .map(|s| s.trim_start_matches('[').trim_end_matches(']'))
                    .and_then(|s| s.parse::<IpAddr>().ok());
                let port = d
                    .get(b"port")
                    .and_then(Value::as_int)
                    .and_then(|p| u16::try_from(p).ok());
                if let (Some(ip), Some(port)) = (ip, port) {
                    if !push_peer(&mut r.peers, ip, port) {
                        break;
                    }
                }
            }
        }
        Some(_) => return Err(TrackerError::BadPeers),
        None => {}
    }
    match peers6 {
        Some(Value::Bytes(b)) => {
            for e in b.chunks_exact(18) {
                let Ok(entry) = <[u8; 18]>::try_from(e) else {
                    break;
                };
                let (ip, port) = entry.split_at(16);
                let (Ok(ip), Ok(port)) = (<[u8; 16]>::try_from(ip), <[u8; 2]>::try_from(port))
                else {
                    break;
                };
                let ip = Ipv6Addr::from(ip);
                if !push_peer(&mut r.peers, ip.into(), u16::from_be_bytes(port)) {
                    break;
                }
            }
        }
        Some(_) => return Err(TrackerError::BadPeers),
        None => {}
    }
    Ok(r)
}

/// Parses a BEP 48 scrape reply and returns `(complete, incomplete, downloaded)` for
/// `info_hash`, or `None` when the tracker did not list it. Missing counters read as 0,
/// out-of-range ones saturate. A `failure reason` is returned as `TrackerError::Failure`.
pub fn parse_scrape(
    body: &[u8],
    info_hash: &[u8; 20],
) -> Result<Option<(u32, u32, u32)>, TrackerError> {
    let v = decode_body(body)?;
    if let Some(f) = v.get(b"failure reason").and_then(Value::as_bytes) {
        return Err(TrackerError::Failure(message(f)));
    }
    let files = v
        .get(b"files")
        .and_then(Value::as_dict)
        .ok_or(TrackerError::NotAScrape)?;
    let Some(entry) = files
        .iter()
        .find(|(k, _)| *k == info_hash.as_slice())
        .map(|(_, e)| e)
    else {
        return Ok(None);
    };
    let count = |key: &[u8]| -> u32 {
        entry
            .get(key)
            .and_then(Value::as_int)
            .map_or(0, |i| u32::try_from(i.max(0)).unwrap_or(u32::MAX))
    };
    Ok(Some((
        count(b"complete"),
        count(b"incomplete"),
        count(b"downloaded"),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    const IH: [u8; 20] = *b"\x12\x34\x56\x78\x9a\xbc\xde\xf0 -._/%&=+\x00\xff\x7f";
    const PID: [u8; 20] = *b"-AT0001-abcdefghijkl";

    fn url(s: &str) -> Url {
        parse_url(s).expect("test url parses")
    }

    fn announce(event: Event, tracker_id: Option<&'static [u8]>) -> Announce<'static> {
        Announce {
            info_hash: &IH,
            peer_id: &PID,
            port: 6881,
            uploaded: 1,
            downloaded: 22,
            left: 333,
            event,
            numwant: 50,
            key: 0xdead_beef,
            tracker_id,
        }
    }

    /// Applies 1..=4 random edits (overwrite, bit flip, delete, insert) to `v`.
    fn mutate(rng: &mut Rng, v: &[u8]) -> Vec<u8> {
        let mut m = v.to_vec();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(m.len().max(1));
            match rng.below(4) {
                0 if i < m.len() => m[i] = rng.next_u32() as u8,
                1 if i < m.len() => m[i] ^= 1 << rng.below(8),
                2 if i < m.len() => {
                    m.remove(i);
                }
                _ => m.insert(i.min(m.len()), rng.next_u32() as u8),
            }
        }
        m
    }

    // ---- URLs ----

    #[test]
    fn url_http_default_port_and_path() {
        let u = url("http://Tracker.Example.COM/announce");
        assert_eq!(u.scheme, Scheme::Http);
        assert_eq!(u.host, "tracker.example.com");
        assert_eq!(u.port, 80);
        assert_eq!(u.path, "/announce");
        assert_eq!(u.host_is_ip(), None);
        assert_eq!(u.to_string(), "http://tracker.example.com/announce");
    }

    #[test]
    fn url_https_port_query_fragment() {
        let u = url(" HTTPS://t.example:8443/a/announce.php?passkey=x%20y#frag \n");
        assert_eq!(u.scheme, Scheme::Https);
        assert_eq!(u.port, 8443);
        assert_eq!(u.path, "/a/announce.php?passkey=x%20y");
        assert_eq!(url("https://t.example").port, 443);
        assert_eq!(url("http://h?x=1").path, "/?x=1");
        assert_eq!(url("http://h:/").port, 80);
        assert_eq!(url("http://h/a b\u{e9}").path, "/a%20b%C3%A9");
    }

    #[test]
    fn url_ipv6_literal_and_udp() {
        let u = url("udp://[2001:DB8::1]:6969/announce");
        assert_eq!(u.scheme, Scheme::Udp);
        assert_eq!(u.host, "2001:db8::1");
        assert_eq!(u.port, 6969);
        assert_eq!(u.host_is_ip(), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(u.host_header(), "[2001:db8::1]:6969");
        assert_eq!(url("udp://1.2.3.4:80").path, "/");
        assert_eq!(
            url("http://10.0.0.1:8080/").host_is_ip(),
            Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
        );
        assert_eq!(url("http://[::1]/").host_header(), "[::1]");
    }

    #[test]
    fn url_bad_inputs_rejected() {
        use TrackerError::*;
        let cases: &[(&str, TrackerError)] = &[
            ("udp://tracker.example", UrlNeedsPort),
            ("udp://tracker.example:/x", UrlNeedsPort),
            ("http://user:pw@h/", UrlUserinfo),
            ("http://@h/", UrlUserinfo),
            ("ftp://h/", UrlScheme),
            ("h/announce", UrlScheme),
            ("http://h:0/", UrlPort),
            ("http://h:65536/", UrlPort),
            ("http://h:+80/", UrlPort),
            ("http://h:1:2/", UrlPort),
            ("http://[::1/", UrlHost),
            ("http://[::1]x/", UrlPort),
            ("http://[fe80::1%25eth0]/", UrlHost),
            ("http:///x", UrlHost),
            ("http://h\u{e9}/", UrlHost),
            ("http://h h/", UrlHost),
        ];
        for (s, e) in cases {
            assert_eq!(parse_url(s).as_ref(), Err(e), "{s}");
        }
        let long = format!("http://h/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(parse_url(&long), Err(UrlTooLong));
        let long_host = format!("http://{}/", "a".repeat(MAX_HOST_LEN + 1));
        assert_eq!(parse_url(&long_host), Err(UrlHost));
    }

    #[test]
    fn url_mutation_sweep_never_panics() {
        let mut rng = Rng::new(7);
        let seeds = [
            "http://tracker.example.com:8080/announce?pk=1",
            "udp://[2001:db8::1]:6969/announce",
            "https://t/a",
        ];
        for s in seeds {
            for n in 0..=s.len() {
                let _ = parse_url(s.get(..n).unwrap_or(""));
            }
            for _ in 0..2000 {
                let m = mutate(&mut rng, s.as_bytes());
                if let Ok(u) = parse_url(&String::from_utf8_lossy(&m)) {
                    assert!(u.path.starts_with('/'));
                    assert!(u.path.bytes().all(|b| (0x21..=0x7e).contains(&b)));
                    assert_ne!(u.port, 0);
                }
            }
        }
    }

    #[test]
    fn percent_encode_keeps_only_unreserved() {
        assert_eq!(percent_encode(b"aZ09-._~"), "aZ09-._~");
        assert_eq!(
            percent_encode(b" /%&=+\x00\xff"),
            "%20%2F%25%26%3D%2B%00%FF"
        );
    }

    // ---- requests ----

    #[test]
    fn request_announce_started_exact_bytes() {
        let mut out = Vec::new();
        build_announce(
            &url("http://t.example/announce"),
            &announce(Event::Started, None),
            &mut out,
        );
        let want = format!(
            "GET /announce?info_hash=%124Vx%9A%BC%DE%F0%20-._%2F%25%26%3D%2B%00%FF%7F\
             &peer_id=-AT0001-abcdefghijkl&port=6881&uploaded=1&downloaded=22&left=333\
             &event=started&key=DEADBEEF&numwant=50&compact=1&no_peer_id=1 HTTP/1.1\r\n\
             Host: t.example\r\nUser-Agent: atorrent/{}\r\nAccept-Encoding: identity\r\n\
             Connection: close\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn request_announce_existing_query_uses_ampersand() {
        let a = announce(Event::None, Some(b"id 1"));
        for (u, prefix, host) in [
            (
                "http://t:8080/a?pk=xyz",
                "GET /a?pk=xyz&info_hash=",
                "Host: t:8080\r\n",
            ),
            ("http://t/a?", "GET /a?info_hash=", "Host: t\r\n"),
            (
                "https://[::1]:443/a?x&",
                "GET /a?x&info_hash=",
                "Host: [::1]\r\n",
            ),
            (
                "https://[::1]:80/a",
                "GET /a?info_hash=",
                "Host: [::1]:80\r\n",
            ),
        ] {
            let mut out = Vec::new();
            build_announce(&url(u), &a, &mut out);
            let s = String::from_utf8(out).unwrap();
            assert!(s.starts_with(prefix), "{s}");
            assert!(s.contains(host), "{s}");
            assert!(!s.contains("event="));
            assert!(s.contains("&trackerid=id%201 HTTP/1.1\r\n"));
        }
        let mut out = Vec::new();
        build_announce(
            &url("http://t/a"),
            &announce(Event::Stopped, None),
            &mut out,
        );
        assert!(String::from_utf8(out).unwrap().contains("&event=stopped&"));
    }

    #[test]
    fn scrape_url_follows_bep48_convention() {
        let s = |a: &str| scrape_url(&url(a)).map(|u| u.path);
        assert_eq!(s("http://t/announce").as_deref(), Some("/scrape"));
        assert_eq!(
            s("http://t/x/announce.php?pk=1").as_deref(),
            Some("/x/scrape.php?pk=1")
        );
        assert_eq!(s("http://t/announce?a=/b").as_deref(), Some("/scrape?a=/b"));
        assert_eq!(s("http://t/a"), None);
        assert_eq!(s("http://t/announce/x"), None);
        assert_eq!(s("http://t/x/notannounce"), None);
        assert_eq!(s("udp://t:1/announce"), None);
        assert_eq!(scrape_url(&url("http://t:81/announce")).unwrap().port, 81);
    }

    #[test]
    fn request_scrape_exact_bytes() {
        let mut out = Vec::new();
        build_scrape(
            &url("http://t/scrape?pk=1"),
            &[[b'a'; 20], [0xff; 20]],
            &mut out,
        );
        let want = format!(
            "GET /scrape?pk=1&info_hash=aaaaaaaaaaaaaaaaaaaa&info_hash={} HTTP/1.1\r\n\
             Host: t\r\nUser-Agent: atorrent/{}\r\nAccept-Encoding: identity\r\n\
             Connection: close\r\n\r\n",
            "%FF".repeat(20),
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(String::from_utf8(out).unwrap(), want);
        let many = vec![[1u8; 20]; MAX_SCRAPE_HASHES + 5];
        let mut out = Vec::new();
        build_scrape(&url("http://t/scrape"), &many, &mut out);
        let s = String::from_utf8(out).unwrap();
        assert_eq!(s.matches("info_hash=").count(), MAX_SCRAPE_HASHES);
    }

    // ---- HTTP responses ----

    const CL_RESP: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCONTENT-LENGTH: 5\r\n\r\nhelloEXTRA";
    const CHUNKED_RESP: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\
        Content-Length: 3\r\n\r\n4;name=val\r\nd8:i\r\n7\r\nnterval\r\n0\r\nX-Trailer: 1\r\n\r\n";
    const CLOSE_RESP: &[u8] = b"HTTP/1.0 200 OK\nServer: x\n\nd8:intervali5ee";

    #[test]
    fn http_content_length_body() {
        let r = parse_http_response(CL_RESP, false).unwrap().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.location, None);
        assert_eq!(&*r.body, b"hello");
        assert!(matches!(r.body, Cow::Borrowed(_)));
    }

    #[test]
    fn http_chunked_with_extensions_and_trailers() {
        let r = parse_http_response(CHUNKED_RESP, false).unwrap().unwrap();
        assert_eq!(&*r.body, b"d8:interval");
        // Bare LF line endings and uppercase hex are accepted too.
        let lf = b"HTTP/1.1 200 OK\ntransfer-encoding: chunked\n\nA\n0123456789\n0\n\n";
        let r = parse_http_response(lf, true).unwrap().unwrap();
        assert_eq!(&*r.body, b"0123456789");
    }

    #[test]
    fn http_close_delimited_waits_for_close() {
        assert_eq!(parse_http_response(CLOSE_RESP, false), Ok(None));
        let r = parse_http_response(CLOSE_RESP, true).unwrap().unwrap();
        assert_eq!(&*r.body, b"d8:intervali5ee");
        // A non-chunked transfer coding also means "until close".
        let te = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nContent-Length: 1\r\n\r\nabc";
        assert_eq!(parse_http_response(te, false), Ok(None));
        assert_eq!(
            &*parse_http_response(te, true).unwrap().unwrap().body,
            b"abc"
        );
    }

    #[test]
    fn http_every_prefix_needs_more_or_is_truncated() {
        for v in [CL_RESP, CHUNKED_RESP] {
            let full = if v == CL_RESP { v.len() - 5 } else { v.len() };
            for n in 0..full {
                assert_eq!(parse_http_response(&v[..n], false), Ok(None), "prefix {n}");
                assert_eq!(
                    parse_http_response(&v[..n], true),
                    Err(TrackerError::Truncated),
                    "prefix {n}"
                );
            }
        }
        for n in 0..CLOSE_RESP.len() {
            assert_eq!(parse_http_response(&CLOSE_RESP[..n], false), Ok(None));
        }
    }

    #[test]
    fn http_redirect_exposes_location_early() {
        let r = b"HTTP/1.1 302 Found\r\nlocation:  /new?x=1 \r\nContent-Length: 100\r\n\r\n";
        let r = parse_http_response(r, false).unwrap().unwrap();
        assert_eq!(r.status, 302);
        assert_eq!(r.location, Some("/new?x=1"));
        assert!(r.body.is_empty());
        for code in [301, 303, 307, 308] {
            let s = format!("HTTP/1.1 {code} X\r\nLocation: http://a/b\r\n\r\n");
            let r = parse_http_response(s.as_bytes(), false).unwrap().unwrap();
            assert_eq!(r.location, Some("http://a/b"));
        }
        // Location on a non-redirect status is not exposed.
        let s = b"HTTP/1.1 200 OK\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            parse_http_response(s, false).unwrap().unwrap().location,
            None
        );
        // A redirect without Location is framed like any response.
        let s = b"HTTP/1.1 301 Moved\r\nContent-Length: 2\r\n\r\nhi";
        let r = parse_http_response(s, false).unwrap().unwrap();
        assert_eq!((r.location, &*r.body), (None, &b"hi"[..]));
    }

    #[test]
    fn http_no_body_statuses() {
        let s = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert!(parse_http_response(s, false)
            .unwrap()
            .unwrap()
            .body
            .is_empty());
        let s = b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnop";
        assert_eq!(parse_http_response(s, false).unwrap().unwrap().status, 404);
    }

    #[test]
    fn http_oversized_header_rejected() {
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        while big.len() <= MAX_HEADER_BYTES {
            big.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(
            parse_http_response(&big, false),
            Err(TrackerError::HeaderTooLarge)
        );
        big.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_http_response(&big, true),
            Err(TrackerError::HeaderTooLarge)
        );
        // Just under the cap is fine.
        let mut ok = b"HTTP/1.1 200 OK\r\nX-Pad: ".to_vec();
        ok.resize(MAX_HEADER_BYTES - 4, b'a');
        ok.extend_from_slice(b"\r\n\r\n");
        assert!(parse_http_response(&ok, true).unwrap().is_some());
    }

    #[test]
    fn http_oversized_body_rejected() {
        let s = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        assert_eq!(
            parse_http_response(s.as_bytes(), false),
            Err(TrackerError::BodyTooLarge)
        );
        let s = b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n";
        assert_eq!(
            parse_http_response(s, false),
            Err(TrackerError::BadContentLength)
        );
        let mut close = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        close.resize(close.len() + MAX_BODY_BYTES + 1, b'x');
        assert_eq!(
            parse_http_response(&close, false),
            Err(TrackerError::BodyTooLarge)
        );
        let s = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            MAX_BODY_BYTES + 1
        );
        assert_eq!(
            parse_http_response(s.as_bytes(), false),
            Err(TrackerError::BodyTooLarge)
        );
        let s = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n123456789\r\n";
        assert_eq!(parse_http_response(s, false), Err(TrackerError::BadChunk));
    }

    #[test]
    fn http_malformed_rejected() {
        use TrackerError::*;
        let cases: &[(&[u8], TrackerError)] = &[
            (b"HTTP/2 200 OK\r\n\r\n", BadStatusLine),
            (b"HTTP/1.1 20 OK\r\n\r\n", BadStatusLine),
            (b"HTTP/1.1 2000 OK\r\n\r\n", BadStatusLine),
            (b"HTTP/1.1 099 OK\r\n\r\n", BadStatusLine),
            (b"ICY 200 OK\r\n\r\n", BadStatusLine),
            (b"\r\nHTTP/1.1 200 OK\r\n\r\n", BadStatusLine),
            (b"HTTP/1.1 100 Continue\r\n\r\n", Informational),
            (b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n", BadHeader),
            (b"HTTP/1.1 200 OK\r\nA: b\r\n folded\r\n\r\n", BadHeader),
            (b"HTTP/1.1 200 OK\r\nBad Name: b\r\n\r\n", BadHeader),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                BadContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                BadContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n\r\n",
                UnsupportedEncoding,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                BadChunk,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX",
                BadChunk,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
                BadChunk,
            ),
        ];
        for (v, e) in cases {
            assert_eq!(
                parse_http_response(v, true).as_ref(),
                Err(e),
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
        // Equal duplicate lengths are harmless.
        let s = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\ncontent-length: 1\r\n\r\nx";
        assert_eq!(&*parse_http_response(s, false).unwrap().unwrap().body, b"x");
    }

    #[test]
    fn http_chunk_line_and_trailer_caps() {
        let mut s = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;".to_vec();
        s.resize(s.len() + MAX_CHUNK_LINE, b'e');
        assert_eq!(parse_http_response(&s, false), Err(TrackerError::BadChunk));
        let mut s = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n".to_vec();
        while s.len() < 2 * MAX_HEADER_BYTES {
            s.extend_from_slice(b"X: yyyyyyyyyyyyyyyyyyyyyyyyyyy\r\n");
        }
        assert!(parse_http_response(&s, false).is_err());
    }

    #[test]
    fn http_mutation_sweep_never_panics() {
        let mut rng = Rng::new(0x7ac4);
        for v in [CL_RESP, CHUNKED_RESP, CLOSE_RESP] {
            for _ in 0..3000 {
                let m = mutate(&mut rng, v);
                for complete in [false, true] {
                    if let Ok(Some(r)) = parse_http_response(&m, complete) {
                        assert!(r.body.len() <= MAX_BODY_BYTES);
                        assert!(r.location.is_none() || is_redirect(r.status));
                    }
                }
            }
        }
    }

    #[test]
    fn redirect_resolution_forms() {
        let base = url("http://t.example:8080/dir/announce?pk=1");
        let r = |l: &str| resolve_redirect(&base, l);
        assert_eq!(
            r("https://o.example/a").unwrap(),
            url("https://o.example/a")
        );
        assert_eq!(r("//o.example:81/a").unwrap(), url("http://o.example:81/a"));
        let abs = r("/new?x=1").unwrap();
        assert_eq!(
            (abs.host.as_str(), abs.port, abs.path.as_str()),
            ("t.example", 8080, "/new?x=1")
        );
        assert_eq!(r("other?y").unwrap().path, "/dir/other?y");
        assert_eq!(r("?y=2").unwrap().path, "/dir/announce?y=2");
        assert_eq!(r("a b").unwrap().path, "/dir/a%20b");
        assert_eq!(r("udp://o.example:1/"), Err(TrackerError::BadRedirect));
        assert_eq!(r("  "), Err(TrackerError::BadRedirect));
        assert_eq!(r("ftp://x/"), Err(TrackerError::UrlScheme));
        assert_eq!(r("http://u@x/"), Err(TrackerError::UrlUserinfo));
        assert_eq!(
            r(&"a".repeat(MAX_URL_LEN + 1)),
            Err(TrackerError::UrlTooLong)
        );
        let mut rng = Rng::new(3);
        for _ in 0..2000 {
            let m = mutate(&mut rng, b"//o.example:81/a?b");
            if let Ok(u) = r(&String::from_utf8_lossy(&m)) {
                assert_ne!(u.scheme, Scheme::Udp);
                assert!(u.path.starts_with('/'));
            }
        }
    }

    // ---- announce bodies ----

    fn compact_body() -> Vec<u8> {
        let mut b =
            b"d8:completei9e10:incompletei3e8:intervali1800e12:min intervali60e5:peers18:".to_vec();
        b.extend_from_slice(&[1, 2, 3, 4, 0x1a, 0xe1, 5, 6, 7, 8, 0, 0, 9, 9, 9, 9, 0, 80]);
        b.extend_from_slice(b"6:peers618:");
        let mut v6 = [0u8; 18];
        v6[0] = 0x20;
        v6[1] = 0x01;
        v6[15] = 1;
        v6[16] = 0x1a;
        v6[17] = 0xe2;
        b.extend_from_slice(&v6);
        b.extend_from_slice(b"10:tracker id3:abce");
        b
    }

    const DICT_BODY: &[u8] = b"d8:intervali900e5:peersld2:ip7:1.2.3.44:porti6881eed2:ip5:[::1]\
        4:porti7eed2:ip9:host.name4:porti1eed2:ip3:::14:porti0eed2:ip7:1.2.3.44:porti70000eeee";

    #[test]
    fn announce_compact_and_peers6() {
        let r = parse_announce(&compact_body()).unwrap();
        assert_eq!(r.interval, Some(1800));
        assert_eq!(r.min_interval, Some(60));
        assert_eq!((r.complete, r.incomplete), (Some(9), Some(3)));
        assert_eq!(r.tracker_id.as_deref(), Some(&b"abc"[..]));
        assert_eq!(r.failure, None);
        let want: Vec<SocketAddr> = vec![
            "1.2.3.4:6881".parse().unwrap(),
            "9.9.9.9:80".parse().unwrap(),
            "[2001::1]:6882".parse().unwrap(),
        ];
        assert_eq!(r.peers, want, "port 0 peer dropped");
    }

    #[test]
    fn announce_compact_partial_entry_ignored() {
        let b = b"d8:intervali60e5:peers8:\x01\x02\x03\x04\x00\x50\x09\x09e";
        let r = parse_announce(b).unwrap();
        assert_eq!(r.peers, vec!["1.2.3.4:80".parse::<SocketAddr>().unwrap()]);
    }

    #[test]
    fn announce_dictionary_peers() {
        let r = parse_announce(DICT_BODY).unwrap();
        let want: Vec<SocketAddr> =
            vec!["1.2.3.4:6881".parse().unwrap(), "[::1]:7".parse().unwrap()];
        assert_eq!(r.peers, want, "host names, port 0 and bad ports dropped");
    }

    #[test]
    fn announce_failure_reason_needs_nothing_else() {
        let r = parse_announce(b"d14:failure reason8:bad\nhash5:peers3:xyze").unwrap();
        assert_eq!(r.failure.as_deref(), Some("bad hash"));
        assert!(r.peers.is_empty());
        let r = parse_announce(b"d8:intervali60e15:warning message4:slow5:peers0:e\n").unwrap();
        assert_eq!(r.warning.as_deref(), Some("slow"));
        let long = format!("d14:failure reason{}:{}e", 5000, "x".repeat(5000));
        assert_eq!(
            parse_announce(long.as_bytes())
                .unwrap()
                .failure
                .unwrap()
                .len(),
            MAX_MESSAGE_LEN
        );
    }

    #[test]
    fn announce_invalid_bodies_rejected() {
        assert_eq!(parse_announce(b"le"), Err(TrackerError::NotADict));
        assert_eq!(parse_announce(b"de"), Err(TrackerError::NotAnAnnounce));
        assert_eq!(parse_announce(b"d5:peersi1ee"), Err(TrackerError::BadPeers));
        assert_eq!(
            parse_announce(b"d6:peers6i1ee"),
            Err(TrackerError::BadPeers)
        );
        assert!(matches!(
            parse_announce(b"<html>"),
            Err(TrackerError::Bencode(_))
        ));
        assert!(matches!(
            parse_announce(b"d8:intervali1eeX"),
            Err(TrackerError::Bencode(_))
        ));
    }

    #[test]
    fn announce_peer_cap_enforced() {
        let n = MAX_PEERS_PER_RESPONSE + 50;
        let mut b = format!("d8:intervali60e5:peers{}:", n * 6).into_bytes();
        for i in 0..n as u32 {
            b.extend_from_slice(&(0x0a00_0000 + i).to_be_bytes());
            b.extend_from_slice(&[0x1a, 0xe1]);
        }
        b.push(b'e');
        assert_eq!(
            parse_announce(&b).unwrap().peers.len(),
            MAX_PEERS_PER_RESPONSE
        );
    }

    #[test]
    fn interval_clamped_to_sane_range() {
        let mut r = AnnounceResponse::default();
        assert_eq!(
            r.effective_interval(),
            Duration::from_secs(u64::from(DEFAULT_INTERVAL_SECS))
        );
        r.interval = Some(0);
        assert_eq!(r.effective_interval(), Duration::from_secs(30));
        r.interval = Some(1_000_000);
        assert_eq!(r.effective_interval(), Duration::from_secs(7200));
        r.interval = Some(100);
        r.min_interval = Some(600);
        assert_eq!(r.effective_interval(), Duration::from_secs(600));
        let neg = parse_announce(b"d8:intervali-5e5:peers0:e").unwrap();
        assert_eq!(neg.interval, None);
    }

    #[test]
    fn announce_truncation_and_mutation_sweep() {
        let vectors = [compact_body(), DICT_BODY.to_vec()];
        let mut rng = Rng::new(0xbeef);
        for v in &vectors {
            for n in 0..v.len() {
                assert!(parse_announce(&v[..n]).is_err(), "prefix {n}");
            }
            for _ in 0..4000 {
                let m = mutate(&mut rng, v);
                if let Ok(r) = parse_announce(&m) {
                    assert!(r.peers.len() <= MAX_PEERS_PER_RESPONSE);
                    assert!(r.peers.iter().all(|p| p.port() != 0));
                }
            }
        }
    }

    // ---- scrape bodies ----

    const SCRAPE_BODY: &[u8] =
        b"d5:filesd20:xxxxxxxxxxxxxxxxxxxxd8:completei11e10:downloadedi13772e\
        10:incompletei19ee20:yyyyyyyyyyyyyyyyyyyyd8:completei-1e10:incompletei99999999999eeee";

    #[test]
    fn scrape_found_missing_and_failure() {
        assert_eq!(
            parse_scrape(SCRAPE_BODY, b"xxxxxxxxxxxxxxxxxxxx"),
            Ok(Some((11, 19, 13772)))
        );
        assert_eq!(
            parse_scrape(SCRAPE_BODY, b"yyyyyyyyyyyyyyyyyyyy"),
            Ok(Some((0, u32::MAX, 0)))
        );
        assert_eq!(parse_scrape(SCRAPE_BODY, &[0; 20]), Ok(None));
        assert_eq!(
            parse_scrape(b"d14:failure reason4:nopee", &[0; 20]),
            Err(TrackerError::Failure("nope".into()))
        );
        assert_eq!(
            parse_scrape(b"d5:filesi1ee", &[0; 20]),
            Err(TrackerError::NotAScrape)
        );
        assert_eq!(parse_scrape(b"i1e", &[0; 20]), Err(TrackerError::NotADict));
    }

    #[test]
    fn scrape_truncation_and_mutation_sweep() {
        for n in 0..SCRAPE_BODY.len() {
            assert!(parse_scrape(&SCRAPE_BODY[..n], b"xxxxxxxxxxxxxxxxxxxx").is_err());
        }
        let mut rng = Rng::new(48);
        for _ in 0..4000 {
            let m = mutate(&mut rng, SCRAPE_BODY);
            let _ = parse_scrape(&m, b"xxxxxxxxxxxxxxxxxxxx");
        }
    }

    #[test]
    fn errors_display_lowercase() {
        for e in [
            TrackerError::UrlNeedsPort,
            TrackerError::Truncated,
            TrackerError::BadChunk,
        ] {
            let s = e.to_string();
            assert!(s.chars().next().unwrap().is_lowercase(), "{s}");
        }
    }
}
