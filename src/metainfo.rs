//! Layer 1: .torrent files (BEP 3) into a validated `Metainfo`.
//!
//! `parse` takes the bytes of a .torrent file; `parse_info` takes a bare info dictionary (as
//! fetched from peers for a magnet link, BEP 9). Both check every structural rule the rest of
//! the client relies on (piece length, piece count against total length, file lengths, counts
//! under named caps) and return an error for anything inconsistent.
//!
//! File paths are hostile input: every component is sanitised so that joining them under the
//! download directory can never escape it (no `..`, no `.`, no empty names, no separators, no
//! NUL or control characters, at most 255 bytes). Anything that can be made safe is repaired and
//! reported in `Parsed::warnings`; only what cannot be repaired is refused.
//!
//! This module does no I/O and reads no clock.

use crate::bencode::{self, Value};
use crate::hash::{self, Digest};
use std::collections::{HashMap, HashSet};
use std::fmt;

/// Largest accepted `piece length`. Real torrents use at most 16 MiB; each piece is held in
/// memory while it is verified, so a huge value from a hostile file must not be accepted.
pub const MAX_PIECE_LENGTH: u64 = 64 * 1024 * 1024;
/// Most files in one torrent. The largest real torrents have a few hundred thousand files;
/// every entry costs a heap allocation, so a hostile file must not make millions.
pub const MAX_FILES: usize = 1_000_000;
/// Most components in one file path (below the torrent's directory). Real torrents nest a
/// handful of levels; deeper paths only serve to exhaust the filesystem's path limit.
pub const MAX_PATH_DEPTH: usize = 64;
/// Longest path component in bytes: the `NAME_MAX` of common filesystems.
pub const MAX_COMPONENT_BYTES: usize = 255;
/// Longest relative path (all components joined with '/') in bytes: Linux `PATH_MAX`.
pub const MAX_PATH_BYTES: usize = 4096;
/// Most tracker URLs kept from `announce-list`. Real torrents list at most a few dozen;
/// each one costs an announce timer and a DNS lookup.
pub const MAX_TRACKERS: usize = 256;
/// Longest tracker URL kept; longer ones are garbage (and would bloat every announce).
pub const MAX_TRACKER_URL_BYTES: usize = 2048;
/// Most warnings reported; a hostile file with a million bad names must not make a million
/// strings.
pub const MAX_WARNINGS: usize = 64;
/// Longest file extension (with its dot) kept when a long component is truncated.
const MAX_EXTENSION_BYTES: usize = 16;

/// One file of the torrent, in torrent order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Sanitised relative path components (never empty, never `.`/`..`, no separators or NUL).
    /// For a single-file torrent this is `[name]`; for multi-file it is `[name, dir.., file]`.
    pub path: Vec<String>,
    pub length: u64,
    /// Byte offset of the file's first byte within the torrent's concatenated data.
    pub offset: u64,
    /// BEP 47 padding file: its bytes are zeros and are never written to disk.
    pub pad: bool,
}

/// A .torrent's informational top-level fields. Kept out of `Metainfo`: nothing acts on them,
/// and a daemon holds thousands of torrents (these cost ~100 bytes each).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Notes {
    pub comment: Option<String>,
    pub created_by: Option<String>,
    pub creation_date: Option<i64>,
}

#[derive(Clone, Debug)]
pub struct Metainfo {
    pub info_hash: Digest,
    /// Display name (sanitised), the top-level file or directory name.
    pub name: String,
    pub piece_length: u32,
    /// The info dictionary as received, which holds the piece hashes.
    pub info: InfoDict,
    pub files: Vec<FileEntry>,
    pub total_length: u64,
    /// BEP 27.
    pub private: bool,
    /// Announce tiers (BEP 12). With only `announce`, one tier of one URL.
    pub trackers: Vec<Vec<String>>,
    /// True for a multi-file torrent (files under a directory named `name`).
    pub multi_file: bool,
}

/// The bencoded info dictionary exactly as it was hashed, and where its piece hashes lie.
///
/// One copy serves three needs: verifying pieces (the hashes are read in place), BEP 9
/// metadata for peers, and the .torrent saved for a fetched magnet. Keeping the hashes apart
/// from the dictionary would cost a second 20 bytes a piece (issue 8: a loaded torrent's
/// metadata must stay within 24 bytes a piece). It is never re-encoded from parsed fields:
/// unknown keys would be lost and the info-hash would change.
#[derive(Clone, Debug)]
pub struct InfoDict {
    /// The dictionary, or bare piece hashes when no dictionary is known (`is_dict` false).
    bytes: Box<[u8]>,
    /// Byte offset of the first piece hash in `bytes`.
    hashes_at: usize,
    pieces: u32,
    is_dict: bool,
}

impl InfoDict {
    /// Concatenated 20-byte piece hashes without a dictionary around them (a magnet's
    /// placeholder, tests): pieces verify, but there is no metadata to serve.
    pub fn bare_hashes(hashes: Vec<u8>) -> InfoDict {
        let pieces = u32::try_from(hashes.len() / 20).unwrap_or(u32::MAX);
        InfoDict {
            bytes: hashes.into_boxed_slice(),
            hashes_at: 0,
            pieces,
            is_dict: false,
        }
    }

    /// The bencoded dictionary, if known (what BEP 9 serves and the info-hash covers).
    pub fn bytes(&self) -> Option<&[u8]> {
        self.is_dict.then_some(&*self.bytes)
    }

    pub fn piece_count(&self) -> u32 {
        self.pieces
    }

    pub fn piece_hash(&self, index: u32) -> Option<&[u8; 20]> {
        if index >= self.pieces {
            return None;
        }
        let i = self.hashes_at + index as usize * 20;
        self.bytes.get(i..i + 20).and_then(|s| s.try_into().ok())
    }

    /// Heap bytes held.
    pub fn heap_len(&self) -> usize {
        self.bytes.len()
    }
}

impl Metainfo {
    pub fn piece_count(&self) -> u32 {
        self.info.piece_count()
    }

    pub fn piece_hash(&self, index: u32) -> Option<&[u8; 20]> {
        self.info.piece_hash(index)
    }

    /// The raw info dictionary, served to peers fetching metadata (BEP 9); `None` for a
    /// magnet whose metadata has not arrived.
    pub fn info_dict(&self) -> Option<&[u8]> {
        self.info.bytes()
    }

    /// Length of piece `index` (the last one may be short); 0 if out of range.
    pub fn piece_len(&self, index: u32) -> u32 {
        if index >= self.piece_count() {
            return 0;
        }
        let start = index as u64 * self.piece_length as u64;
        (self.total_length - start).min(self.piece_length as u64) as u32
    }

    /// The info-hash as 40 lowercase hex digits.
    pub fn info_hash_hex(&self) -> String {
        hash::hex(&self.info_hash)
    }
}

/// A parsed torrent plus the repairs that were made to it (bad names, dropped trackers).
#[derive(Clone, Debug)]
pub struct Parsed {
    pub meta: Metainfo,
    pub warnings: Vec<String>,
    /// Empty for a bare info dictionary.
    pub notes: Notes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetainfoError {
    Bencode(bencode::Error),
    NotADictionary,
    MissingInfo,
    V2Only,
    MissingPieceLength,
    BadPieceLength(i64),
    MissingPieces,
    BadPiecesLength(usize),
    TooManyPieces(usize),
    MissingLength,
    BadFilesList,
    NoFiles,
    TooManyFiles(usize),
    BadFileEntry(usize),
    MissingFileLength(usize),
    NegativeLength(i64),
    TotalLengthOverflow,
    EmptyTorrent,
    BadPath(usize),
    PathTooDeep {
        index: usize,
        depth: usize,
    },
    PathTooLong {
        index: usize,
        bytes: usize,
    },
    PieceCountMismatch {
        count: usize,
        total: u64,
        piece_length: u64,
    },
}

impl fmt::Display for MetainfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use MetainfoError::*;
        f.write_str("torrent: ")?;
        match self {
            Bencode(e) => write!(f, "{e}"),
            NotADictionary => f.write_str("top level is not a dictionary"),
            MissingInfo => f.write_str("missing 'info' dictionary"),
            V2Only => f.write_str("v2-only torrents are not supported"),
            MissingPieceLength => f.write_str("missing or non-integer 'piece length'"),
            BadPieceLength(n) => write!(f, "piece length {n} is outside 1..={MAX_PIECE_LENGTH}"),
            MissingPieces => f.write_str("missing or non-string 'pieces'"),
            BadPiecesLength(n) => write!(f, "'pieces' length {n} is not a multiple of 20"),
            TooManyPieces(n) => write!(f, "{n} pieces is more than a 32-bit count"),
            MissingLength => f.write_str("missing or non-integer 'length'"),
            BadFilesList => f.write_str("'files' is not a list"),
            NoFiles => f.write_str("'files' list is empty"),
            TooManyFiles(n) => write!(f, "{n} files is more than the limit of {MAX_FILES}"),
            BadFileEntry(i) => write!(f, "file {i} is not a dictionary"),
            MissingFileLength(i) => write!(f, "file {i} has no integer 'length'"),
            NegativeLength(n) => write!(f, "negative file length {n}"),
            TotalLengthOverflow => f.write_str("total length overflows 64 bits"),
            EmptyTorrent => f.write_str("total length is 0"),
            BadPath(i) => write!(f, "file {i} has no usable 'path' list"),
            PathTooDeep { index, depth } => write!(
                f,
                "file {index} path has {depth} components, more than {MAX_PATH_DEPTH}"
            ),
            PathTooLong { index, bytes } => write!(
                f,
                "file {index} path is {bytes} bytes, longer than {MAX_PATH_BYTES}"
            ),
            PieceCountMismatch {
                count,
                total,
                piece_length,
            } => write!(
                f,
                "piece count {count} does not match total length {total} / piece length \
                 {piece_length}"
            ),
        }
    }
}

impl std::error::Error for MetainfoError {}

impl From<bencode::Error> for MetainfoError {
    fn from(e: bencode::Error) -> Self {
        MetainfoError::Bencode(e)
    }
}

/// Parses a complete .torrent file.
pub fn parse(buf: &[u8]) -> Result<Parsed, MetainfoError> {
    let top = bencode::decode(buf)?;
    if top.as_dict().is_none() {
        return Err(MetainfoError::NotADictionary);
    }
    let info = match top.get(b"info") {
        Some(v @ Value::Dict(_)) => v,
        _ => return Err(MetainfoError::MissingInfo),
    };
    // BEP 3: the info-hash is the SHA-1 of the bencoded info value *as it appears in the file*,
    // never of a re-encoding (key order and the like are not normalised).
    let raw = bencode::raw_dict_value(buf, b"info")?.ok_or(MetainfoError::MissingInfo)?;
    let mut w = Warnings::default();
    let trackers = trackers_from_top(&top, &mut w);
    let meta = from_info(info, raw, trackers, &mut w)?;
    let notes = Notes {
        comment: text_field(&top, b"comment"),
        created_by: text_field(&top, b"created by"),
        creation_date: top.get(b"creation date").and_then(Value::as_int),
    };
    Ok(Parsed {
        meta,
        warnings: w.list,
        notes,
    })
}

/// Builds a `Metainfo` from a bare info dictionary (BEP 9 metadata) and trackers known from
/// elsewhere (a magnet link). The info-hash is SHA-1 of `info`.
pub fn parse_info(info: &[u8], trackers: Vec<Vec<String>>) -> Result<Parsed, MetainfoError> {
    let v = bencode::decode(info)?;
    if v.as_dict().is_none() {
        return Err(MetainfoError::MissingInfo);
    }
    let mut w = Warnings::default();
    let trackers = clean_trackers(trackers, &mut w);
    let meta = from_info(&v, info, trackers, &mut w)?;
    Ok(Parsed {
        meta,
        warnings: w.list,
        notes: Notes::default(),
    })
}

#[derive(Default)]
struct Warnings {
    list: Vec<String>,
}

impl Warnings {
    fn push(&mut self, msg: impl FnOnce() -> String) {
        match self.list.len() {
            n if n < MAX_WARNINGS => self.list.push(msg()),
            n if n == MAX_WARNINGS => self.list.push("further warnings suppressed".to_string()),
            _ => {}
        }
    }
}

fn text_field(d: &Value<'_>, key: &[u8]) -> Option<String> {
    utf8_field(d, key).map(|b| String::from_utf8_lossy(b).into_owned())
}

/// BEP 12: when `announce-list` yields any URL, `announce` is ignored.
fn trackers_from_top(top: &Value<'_>, w: &mut Warnings) -> Vec<Vec<String>> {
    let mut tiers = Vec::new();
    if let Some(list) = top.get(b"announce-list").and_then(Value::as_list) {
        for tier in list {
            let urls: Vec<String> = match tier {
                Value::List(l) => l
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect(),
                // Some broken creators write a flat list of strings.
                Value::Bytes(_) => tier.as_str().map(str::to_string).into_iter().collect(),
                _ => Vec::new(),
            };
            tiers.push(urls);
            if tiers.len() > MAX_TRACKERS {
                break;
            }
        }
    }
    let cleaned = clean_trackers(tiers, w);
    if !cleaned.is_empty() {
        return cleaned;
    }
    let single = top.get(b"announce").and_then(Value::as_str);
    clean_trackers(single.map(|s| vec![s.to_string()]).into_iter().collect(), w)
}

/// Trims, drops empty/oversized/duplicate URLs and empty tiers, caps the total.
fn clean_trackers(tiers: Vec<Vec<String>>, w: &mut Warnings) -> Vec<Vec<String>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut capped = false;
    for tier in tiers {
        let mut t = Vec::new();
        for url in tier {
            let url = url.trim();
            if url.is_empty() {
                continue;
            }
            if url.len() > MAX_TRACKER_URL_BYTES {
                w.push(|| format!("tracker URL longer than {MAX_TRACKER_URL_BYTES} bytes dropped"));
                continue;
            }
            if seen.len() >= MAX_TRACKERS {
                capped = true;
                break;
            }
            if seen.insert(url.to_string()) {
                t.push(url.to_string());
            }
        }
        if !t.is_empty() {
            out.push(t);
        }
        if capped {
            w.push(|| format!("more than {MAX_TRACKERS} trackers; the rest were dropped"));
            break;
        }
    }
    out
}

/// `info` is the decoded dictionary and `raw` its bytes; the `Metainfo` keeps a copy of `raw`.
fn from_info(
    info: &Value<'_>,
    raw: &[u8],
    trackers: Vec<Vec<String>>,
    w: &mut Warnings,
) -> Result<Metainfo, MetainfoError> {
    use MetainfoError as E;
    let info_hash = hash::sha1(raw);
    let pieces = info.get(b"pieces");
    if pieces.is_none()
        && (info.get(b"meta version").and_then(Value::as_int) == Some(2)
            || info.get(b"file tree").is_some())
    {
        // BEP 52: a hybrid torrent carries v1 `pieces` and is handled as v1; without them
        // there is nothing a v1 client can verify.
        return Err(E::V2Only);
    }
    let piece_length = info
        .get(b"piece length")
        .and_then(Value::as_int)
        .ok_or(E::MissingPieceLength)?;
    if piece_length <= 0 || piece_length as u64 > MAX_PIECE_LENGTH {
        return Err(E::BadPieceLength(piece_length));
    }
    let piece_length = piece_length as u64;
    let pieces = pieces.and_then(Value::as_bytes).ok_or(E::MissingPieces)?;
    if pieces.len() % 20 != 0 {
        return Err(E::BadPiecesLength(pieces.len()));
    }
    let count = pieces.len() / 20;
    if count > u32::MAX as usize {
        return Err(E::TooManyPieces(count));
    }
    // The hashes are read in place from the kept dictionary: a string's bytes end its raw
    // encoding. Both lookups take the first `pieces` key, so they agree; checked regardless.
    let hashes_at = bencode::raw_dict_range(raw, b"pieces")?
        .and_then(|r| r.end.checked_sub(pieces.len()))
        .filter(|&at| raw.get(at..at + pieces.len()) == Some(pieces))
        .ok_or(E::MissingPieces)?;
    let private = info.get(b"private").and_then(Value::as_int) == Some(1);

    let name = match utf8_field(info, b"name") {
        Some(raw) if !raw.is_empty() => sanitize_component(raw, w, || "torrent name".to_string()),
        _ => {
            let hex = hash::hex(&info_hash);
            w.push(|| format!("torrent has no name; using {hex}"));
            hex
        }
    };

    let (files, multi_file) = match info.get(b"files") {
        Some(list) => (multi_files(list, &name, w)?, true),
        None => {
            let len = info
                .get(b"length")
                .and_then(Value::as_int)
                .ok_or(E::MissingLength)?;
            if len < 0 {
                return Err(E::NegativeLength(len));
            }
            let f = FileEntry {
                path: vec![name.clone()],
                length: len as u64,
                offset: 0,
                pad: false,
            };
            (vec![f], false)
        }
    };
    let total_length = match files.last() {
        Some(f) => f
            .offset
            .checked_add(f.length)
            .ok_or(E::TotalLengthOverflow)?,
        None => 0,
    };
    if total_length == 0 {
        return Err(E::EmptyTorrent);
    }
    if total_length.div_ceil(piece_length) != count as u64 {
        return Err(E::PieceCountMismatch {
            count,
            total: total_length,
            piece_length,
        });
    }
    Ok(Metainfo {
        info_hash,
        name,
        piece_length: piece_length as u32,
        info: InfoDict {
            bytes: raw.into(),
            hashes_at,
            pieces: count as u32,
            is_dict: true,
        },
        files,
        total_length,
        private,
        trackers,
        multi_file,
    })
}

/// `key.utf-8` when present and valid UTF-8 (BEP 47-era creators add it beside a legacy
/// encoding), else `key`.
fn utf8_field<'a>(d: &Value<'a>, key: &[u8]) -> Option<&'a [u8]> {
    let mut k = key.to_vec();
    k.extend_from_slice(b".utf-8");
    d.get(&k)
        .and_then(Value::as_str)
        .map(str::as_bytes)
        .or_else(|| d.get(key).and_then(Value::as_bytes))
}

/// The raw components of a file's path: `path.utf-8` when every element is valid UTF-8, else
/// `path`. `None` when neither is a list of strings.
fn raw_path<'a>(f: &Value<'a>) -> Option<Vec<&'a [u8]>> {
    let strings = |key: &[u8], need_utf8: bool| -> Option<Vec<&'a [u8]>> {
        let list = f.get(key)?.as_list()?;
        list.iter()
            .map(|v| {
                if need_utf8 {
                    v.as_str().map(str::as_bytes)
                } else {
                    v.as_bytes()
                }
            })
            .collect()
    };
    strings(b"path.utf-8", true).or_else(|| strings(b"path", false))
}

fn multi_files(
    list: &Value<'_>,
    name: &str,
    w: &mut Warnings,
) -> Result<Vec<FileEntry>, MetainfoError> {
    use MetainfoError as E;
    let list = list.as_list().ok_or(E::BadFilesList)?;
    if list.is_empty() {
        return Err(E::NoFiles);
    }
    if list.len() > MAX_FILES {
        return Err(E::TooManyFiles(list.len()));
    }
    let mut layout = Layout::default();
    let mut files = Vec::with_capacity(list.len());
    let mut offset: u64 = 0;
    for (index, f) in list.iter().enumerate() {
        if f.as_dict().is_none() {
            return Err(E::BadFileEntry(index));
        }
        let attr = f.get(b"attr").and_then(Value::as_bytes).unwrap_or(b"");
        let length = match f.get(b"length").and_then(Value::as_int) {
            Some(n) if n < 0 => return Err(E::NegativeLength(n)),
            Some(n) => n as u64,
            // BEP 47: symlink entries may omit their (always zero) length. We never create
            // symlinks; such an entry becomes an empty regular file.
            None if attr.contains(&b'l') => 0,
            None => return Err(E::MissingFileLength(index)),
        };
        let mut pad = attr.contains(&b'p');
        let raw = match raw_path(f) {
            Some(p) => p,
            // BEP 47: padding files need not carry a path; they are never written anyway.
            None if pad => Vec::new(),
            None => return Err(E::BadPath(index)),
        };
        if raw.len() > MAX_PATH_DEPTH {
            return Err(E::PathTooDeep {
                index,
                depth: raw.len(),
            });
        }
        let mut rel = sanitize_path(&raw, index, w);
        // BEP 47 recommends `.pad/N`; such entries are padding even without the attribute.
        if rel.len() == 2
            && rel[0] == ".pad"
            && !rel[1].is_empty()
            && rel[1].bytes().all(|b| b.is_ascii_digit())
        {
            pad = true;
        }
        if pad && raw.is_empty() {
            rel = vec![".pad".to_string(), length.to_string()];
        }
        if !pad {
            rel = layout.place(rel, w);
        }
        let bytes = name.len() + rel.iter().map(|c| c.len() + 1).sum::<usize>();
        if bytes > MAX_PATH_BYTES {
            return Err(E::PathTooLong { index, bytes });
        }
        let mut path = Vec::with_capacity(rel.len() + 1);
        path.push(name.to_string());
        path.extend(rel);
        files.push(FileEntry {
            path,
            length,
            offset,
            pad,
        });
        offset = offset.checked_add(length).ok_or(E::TotalLengthOverflow)?;
    }
    Ok(files)
}

/// Sanitises a file's path below the torrent directory. Empty components inside a longer path
/// are dropped; the result is never empty.
fn sanitize_path(raw: &[&[u8]], index: usize, w: &mut Warnings) -> Vec<String> {
    let mut out = Vec::with_capacity(raw.len());
    let kept: Vec<&[u8]> = if raw.len() > 1 {
        let k: Vec<&[u8]> = raw.iter().copied().filter(|c| !c.is_empty()).collect();
        if k.len() != raw.len() {
            w.push(|| format!("file {index}: empty path components dropped"));
        }
        k
    } else {
        raw.to_vec()
    };
    for c in &kept {
        out.push(sanitize_component(c, w, || format!("file {index}")));
    }
    if out.is_empty() {
        w.push(|| format!("file {index}: empty path replaced by '_'"));
        out.push("_".to_string());
    }
    out
}

/// Makes one path component safe to join under the download directory: valid UTF-8, no
/// separators, NUL or control characters, not `""`/`.`/`..`, at most `MAX_COMPONENT_BYTES`.
fn sanitize_component(raw: &[u8], w: &mut Warnings, what: impl Fn() -> String) -> String {
    let text = match std::str::from_utf8(raw) {
        Ok(s) => s.to_string(),
        Err(_) => {
            w.push(|| format!("{}: name is not valid UTF-8; decoded lossily", what()));
            String::from_utf8_lossy(raw).into_owned()
        }
    };
    let mut replaced = false;
    let mut out: String = text
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                replaced = true;
                '_'
            } else {
                c
            }
        })
        .collect();
    if replaced {
        w.push(|| {
            format!(
                "{}: separator or control characters replaced by '_'",
                what()
            )
        });
    }
    if out.len() > MAX_COMPONENT_BYTES {
        out = truncate_keep_ext(&out, MAX_COMPONENT_BYTES);
        w.push(|| {
            format!(
                "{}: name longer than {MAX_COMPONENT_BYTES} bytes truncated",
                what()
            )
        });
    }
    let safe = match out.as_str() {
        "" => "_",
        "." => "_.",
        ".." => "_..",
        _ => return out,
    };
    w.push(|| format!("{}: name {out:?} replaced by {safe:?}", what()));
    safe.to_string()
}

/// Splits `s` into stem and extension (with its dot); no extension when the dot is first or
/// the extension is implausibly long.
fn split_ext(s: &str) -> (&str, &str) {
    match s.rfind('.') {
        Some(i) if i > 0 && s.len() - i <= MAX_EXTENSION_BYTES => s.split_at(i),
        _ => (s, ""),
    }
}

/// Truncates `stem` to at most `max` bytes at a char boundary.
fn truncate_str(stem: &str, max: usize) -> &str {
    let mut end = max.min(stem.len());
    while !stem.is_char_boundary(end) {
        end -= 1;
    }
    stem.get(..end).unwrap_or("")
}

fn truncate_keep_ext(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let (stem, ext) = split_ext(s);
    format!("{}{ext}", truncate_str(stem, max.saturating_sub(ext.len())))
}

/// `name` with `_n` inserted before its extension, still within `MAX_COMPONENT_BYTES`.
fn with_suffix(name: &str, n: u64) -> String {
    let (stem, ext) = split_ext(name);
    let suffix = format!("_{n}{ext}");
    let stem = truncate_str(stem, MAX_COMPONENT_BYTES.saturating_sub(suffix.len()));
    format!("{stem}{suffix}")
}

/// Keeps sanitised paths distinct on disk: two files never share a path, and no file sits
/// where another file needs a directory (or the reverse). Conflicts are renamed with a suffix.
/// Directories are interned as ids so the bookkeeping grows linearly with the path components.
#[derive(Default)]
struct Layout {
    /// (parent directory id, name) to directory id; id 0 is the torrent's top directory.
    dirs: HashMap<(u32, String), u32>,
    /// (directory id, name) of every file placed so far.
    files: HashSet<(u32, String)>,
    /// A directory (parent id, name) that clashed with a file, and the name used instead.
    dir_renames: HashMap<(u32, String), String>,
    /// Next suffix to try per conflicting (parent id, name), so renaming stays linear overall.
    next_suffix: HashMap<(u32, String), u64>,
}

impl Layout {
    fn place(&mut self, mut rel: Vec<String>, w: &mut Warnings) -> Vec<String> {
        let Some(last) = rel.len().checked_sub(1) else {
            return rel;
        };
        let mut parent = 0u32;
        for comp in rel.iter_mut().take(last) {
            let key = (parent, comp.clone());
            if self.files.contains(&key) {
                let new = match self.dir_renames.get(&key) {
                    Some(n) => n.clone(),
                    None => {
                        let n = self.unique(parent, &key.1);
                        self.dir_renames.insert(key.clone(), n.clone());
                        n
                    }
                };
                w.push(|| {
                    format!(
                        "directory {:?} clashes with a file; renamed to {new:?}",
                        key.1
                    )
                });
                *comp = new;
            }
            // Ids stay below MAX_FILES * MAX_PATH_DEPTH, far inside u32.
            let next_id = self.dirs.len() as u32 + 1;
            parent = *self.dirs.entry((parent, comp.clone())).or_insert(next_id);
        }
        let key = (parent, rel[last].clone());
        if self.files.contains(&key) || self.dirs.contains_key(&key) {
            let new = self.unique(parent, &key.1);
            w.push(|| format!("duplicate path {:?} renamed to {new:?}", rel.join("/")));
            rel[last] = new;
        }
        self.files.insert((parent, rel[last].clone()));
        rel
    }

    /// A variant of `name` (suffixed) that is neither a file nor a directory in `parent`.
    fn unique(&mut self, parent: u32, name: &str) -> String {
        let n = self
            .next_suffix
            .entry((parent, name.to_string()))
            .or_insert(1);
        loop {
            let key = (parent, with_suffix(name, *n));
            *n += 1;
            if !self.files.contains(&key) && !self.dirs.contains_key(&key) {
                return key.1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bencode::{put_bytes, put_int};

    const P20: &[u8; 20] = b"AAAAAAAAAAAAAAAAAAAA";

    /// A file dictionary for a multi-file info; `extra` is raw bencoded key/value pairs that
    /// sort before `length`.
    fn file(len: i64, path: &[&[u8]], extra: &[u8]) -> Vec<u8> {
        let mut o = b"d".to_vec();
        o.extend_from_slice(extra);
        o.extend_from_slice(b"6:length");
        put_int(&mut o, len);
        o.extend_from_slice(b"4:pathl");
        for c in path {
            put_bytes(&mut o, c);
        }
        o.extend_from_slice(b"ee");
        o
    }

    fn multi_info(name: &[u8], files: &[Vec<u8>], piece_length: i64, pieces: usize) -> Vec<u8> {
        let mut o = b"d5:filesl".to_vec();
        for f in files {
            o.extend_from_slice(f);
        }
        o.extend_from_slice(b"e4:name");
        put_bytes(&mut o, name);
        o.extend_from_slice(b"12:piece length");
        put_int(&mut o, piece_length);
        o.extend_from_slice(b"6:pieces");
        put_bytes(&mut o, &P20.repeat(pieces));
        o.push(b'e');
        o
    }

    fn single_info(name: &[u8], len: i64, piece_length: i64, pieces: usize) -> Vec<u8> {
        let mut o = b"d6:length".to_vec();
        put_int(&mut o, len);
        o.extend_from_slice(b"4:name");
        put_bytes(&mut o, name);
        o.extend_from_slice(b"12:piece length");
        put_int(&mut o, piece_length);
        o.extend_from_slice(b"6:pieces");
        put_bytes(&mut o, &P20.repeat(pieces));
        o.push(b'e');
        o
    }

    fn torrent(top_before_info: &[u8], info: &[u8]) -> Vec<u8> {
        let mut o = b"d".to_vec();
        o.extend_from_slice(top_before_info);
        o.extend_from_slice(b"4:info");
        o.extend_from_slice(info);
        o.push(b'e');
        o
    }

    /// Relative paths (below the torrent name) of a multi-file torrent with one file per path.
    fn rel_paths(paths: &[&[&[u8]]]) -> (Vec<Vec<String>>, Vec<String>) {
        let files: Vec<Vec<u8>> = paths.iter().map(|p| file(1, p, b"")).collect();
        let t = torrent(b"", &multi_info(b"top", &files, 16384, 1));
        let p = parse(&t).unwrap();
        let rel = p.meta.files.iter().map(|f| f.path[1..].to_vec()).collect();
        (rel, p.warnings)
    }

    fn safe_component(c: &str) -> bool {
        !c.is_empty()
            && c != "."
            && c != ".."
            && c.len() <= MAX_COMPONENT_BYTES
            && !c
                .chars()
                .any(|ch| ch == '/' || ch == '\\' || ch.is_control())
    }

    fn check_invariants(m: &Metainfo) {
        let mut off = 0u64;
        assert!(safe_component(&m.name));
        for f in &m.files {
            assert_eq!(f.offset, off);
            off += f.length;
            assert!(!f.path.is_empty());
            assert_eq!(f.path[0], m.name);
            assert!(f.path.iter().all(|c| safe_component(c)), "{:?}", f.path);
        }
        assert_eq!(off, m.total_length);
        assert!(m.total_length > 0);
        let pl = m.piece_length as u64;
        assert_eq!(m.total_length.div_ceil(pl), m.piece_count() as u64);
        let disk: Vec<_> = m.files.iter().filter(|f| !f.pad).map(|f| &f.path).collect();
        let set: HashSet<_> = disk.iter().collect();
        assert_eq!(set.len(), disk.len(), "duplicate on-disk paths");
    }

    fn vectors() -> Vec<Vec<u8>> {
        let multi = multi_info(
            b"dir",
            &[
                file(3, &[b"a.txt"], b""),
                file(1, &[b".pad", b"1"], b"4:attr1:p"),
                file(7, &[b"sub", b"b.bin"], b""),
            ],
            4,
            3,
        );
        vec![
            torrent(
                b"8:announce9:http://t/13:announce-listll9:http://t/ee",
                &single_info(b"a.txt", 5, 16384, 1),
            ),
            torrent(b"", &multi),
            single_info(b"x", 1, 1, 1),
        ]
    }

    #[test]
    fn single_file_parses_with_exact_info_hash() {
        // Keys deliberately out of order: the hash must cover the bytes as written.
        let info = b"d4:name5:a.txt6:lengthi5e12:piece lengthi16384e\
                     6:pieces20:AAAAAAAAAAAAAAAAAAAA7:privatei1ee";
        let t = torrent(
            b"8:announce17:http://t/announce7:comment2:hi10:created by4:test\
              13:creation datei1700000000e",
            info,
        );
        let p = parse(&t).unwrap();
        let m = &p.meta;
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert_eq!(m.info_hash, crate::hash::sha1(info));
        assert_eq!(
            m.info_hash_hex(),
            crate::hash::hex(&crate::hash::sha1(info))
        );
        assert_eq!(m.name, "a.txt");
        assert_eq!(m.piece_length, 16384);
        assert_eq!(m.piece_count(), 1);
        assert_eq!(m.piece_len(0), 5);
        assert_eq!(m.total_length, 5);
        assert!(!m.multi_file);
        assert!(m.private);
        assert_eq!(
            m.files,
            vec![FileEntry {
                path: vec!["a.txt".into()],
                length: 5,
                offset: 0,
                pad: false
            }]
        );
        assert_eq!(m.trackers, vec![vec!["http://t/announce".to_string()]]);
        let notes = &p.notes;
        assert_eq!(notes.comment.as_deref(), Some("hi"));
        assert_eq!(notes.created_by.as_deref(), Some("test"));
        assert_eq!(notes.creation_date, Some(1_700_000_000));
    }

    #[test]
    fn info_dict_parses_with_external_trackers() {
        let info = single_info(b"a.txt", 5, 16384, 1);
        let tiers = vec![
            vec!["udp://a".to_string(), " ".into(), "udp://a".into()],
            vec![],
            vec!["udp://b".into()],
        ];
        let p = parse_info(&info, tiers).unwrap();
        assert_eq!(p.meta.info_hash, crate::hash::sha1(&info));
        assert_eq!(
            p.meta.trackers,
            vec![vec!["udp://a".to_string()], vec!["udp://b".to_string()]]
        );
        assert!(parse_info(b"le", vec![]).is_err());
        assert_eq!(
            parse_info(b"d4:infod", vec![]).unwrap_err().to_string(),
            "torrent: bencode: unexpected end of data at offset 8"
        );
    }

    #[test]
    fn multi_file_with_odd_lengths_gets_running_offsets() {
        let files = [
            file(3, &[b"a"], b""),
            file(0, &[b"empty"], b""),
            file(7, &[b"d", b"b"], b""),
            file(1, &[b"c"], b""),
        ];
        let info = multi_info(b"top", &files, 4, 3);
        let p = parse(&torrent(b"", &info)).unwrap();
        let m = &p.meta;
        assert!(m.multi_file);
        assert_eq!(m.info_hash, crate::hash::sha1(&info));
        assert_eq!(m.total_length, 11);
        let offs: Vec<u64> = m.files.iter().map(|f| f.offset).collect();
        assert_eq!(offs, vec![0, 3, 3, 10]);
        assert_eq!(m.files[2].path, vec!["top", "d", "b"]);
        assert_eq!((m.piece_len(0), m.piece_len(2), m.piece_len(3)), (4, 3, 0));
        assert!(m.trackers.is_empty());
        check_invariants(m);
    }

    #[test]
    fn pad_files_flagged_by_attr_or_pad_path() {
        let files = [
            file(3, &[b"a"], b""),
            file(1, &[b"x"], b"4:attr1:p"),
            file(4, &[b".pad", b"4"], b""),
            // Pad attribute and no path at all (BEP 47 allows omitting it).
            b"d4:attr2:xp6:lengthi2ee".to_vec(),
            file(1, &[b".pad", b"x"], b""),
            file(1, &[b".pad", b"1", b"y"], b""),
            file(1, &[b"hidden"], b"4:attr1:h"),
        ];
        let p = parse(&torrent(b"", &multi_info(b"t", &files, 16384, 1))).unwrap();
        let pads: Vec<bool> = p.meta.files.iter().map(|f| f.pad).collect();
        assert_eq!(pads, vec![false, true, true, true, false, false, false]);
        assert_eq!(p.meta.files[3].path, vec!["t", ".pad", "2"]);
        check_invariants(&p.meta);
    }

    #[test]
    fn symlink_entry_without_length_is_empty_file() {
        let f = b"d4:attr1:l4:pathl4:linke12:symlink pathl1:aee".to_vec();
        let files = [file(2, &[b"a"], b""), f];
        let p = parse(&torrent(b"", &multi_info(b"t", &files, 16384, 1))).unwrap();
        assert_eq!(p.meta.files[1].length, 0);
        assert_eq!(p.meta.files[1].path, vec!["t", "link"]);
    }

    #[test]
    fn announce_list_becomes_deduplicated_tiers() {
        let info = single_info(b"a", 1, 16384, 1);
        let t = torrent(
            b"8:announce8:http://z13:announce-listll8:http://a8:http://bel8:http://ae\
              l0:el3:   ei1el8:http://ci7eee",
            &info,
        );
        let m = parse(&t).unwrap().meta;
        assert_eq!(
            m.trackers,
            vec![
                vec!["http://a".to_string(), "http://b".to_string()],
                vec!["http://c".to_string()]
            ]
        );
        // Announce-list with nothing usable falls back to announce.
        let t = torrent(b"8:announce8:http://z13:announce-listll0:ee", &info);
        assert_eq!(parse(&t).unwrap().meta.trackers, vec![vec!["http://z"]]);
        // A flat list of strings is accepted as tiers of one.
        let t = torrent(b"13:announce-listl8:http://a8:http://be", &info);
        assert_eq!(
            parse(&t).unwrap().meta.trackers,
            vec![vec!["http://a"], vec!["http://b"]]
        );
        let t = torrent(b"8:announcei5e", &info);
        assert!(parse(&t).unwrap().meta.trackers.is_empty());
    }

    #[test]
    fn trackers_capped() {
        let tiers: Vec<Vec<String>> = (0..MAX_TRACKERS + 10)
            .map(|i| vec![format!("udp://t{i}")])
            .collect();
        let p = parse_info(&single_info(b"a", 1, 16384, 1), tiers).unwrap();
        assert_eq!(p.meta.trackers.len(), MAX_TRACKERS);
        assert!(!p.warnings.is_empty());
        let long = vec![vec!["u".repeat(MAX_TRACKER_URL_BYTES + 1)]];
        let p = parse_info(&single_info(b"a", 1, 16384, 1), long).unwrap();
        assert!(p.meta.trackers.is_empty());
    }

    #[test]
    fn utf8_variants_preferred_when_valid() {
        let f1 = b"d6:lengthi1e4:pathl3:olde10:path.utf-8l3:newee".to_vec();
        let f2 = b"d6:lengthi1e4:pathl4:old2e10:path.utf-8l1:\xffee".to_vec();
        let mut info = b"d5:filesl".to_vec();
        info.extend_from_slice(&f1);
        info.extend_from_slice(&f2);
        info.extend_from_slice(b"e4:name3:raw10:name.utf-83:uni12:piece lengthi4e6:pieces20:");
        info.extend_from_slice(P20);
        info.push(b'e');
        let m = parse(&torrent(b"", &info)).unwrap().meta;
        assert_eq!(m.name, "uni");
        assert_eq!(m.files[0].path, vec!["uni", "new"]);
        assert_eq!(m.files[1].path, vec!["uni", "old2"]);
        let info = b"d6:lengthi1e4:name3:raw10:name.utf-81:\xff12:piece lengthi4e6:pieces20:\
                     AAAAAAAAAAAAAAAAAAAAe";
        assert_eq!(parse_info(info, vec![]).unwrap().meta.name, "raw");
    }

    #[test]
    fn malicious_paths_sanitised() {
        let long_ext = format!("{}.txt", "x".repeat(300));
        let long_utf8 = "é".repeat(200);
        let cases: Vec<(Vec<&[u8]>, Vec<&str>)> = vec![
            (vec![b".."], vec!["_.."]),
            (vec![b"."], vec!["_."]),
            (vec![b".", b"x"], vec!["_.", "x"]),
            (
                vec![b"..", b"..", b"etc", b"passwd"],
                vec!["_..", "_..", "etc", "passwd"],
            ),
            (vec![b"a", b"", b"b"], vec!["a", "b"]),
            (vec![b""], vec!["_"]),
            (vec![b"", b""], vec!["_"]),
            (vec![], vec!["_"]),
            (vec![b"a/b"], vec!["a_b"]),
            (vec![b"/etc/passwd"], vec!["_etc_passwd"]),
            (vec![b"/"], vec!["_"]),
            (vec![b"..\\..\\x"], vec![".._.._x"]),
            (vec![b"nul\0x"], vec!["nul_x"]),
            (vec![b"\x1b[31m\x7f"], vec!["_[31m_"]),
            (vec![b"\xffa"], vec!["\u{fffd}a"]),
            (vec![b" spaced "], vec![" spaced "]),
        ];
        for (raw, want) in cases {
            let (rel, warnings) = rel_paths(&[&raw]);
            assert_eq!(rel[0], want, "{raw:?}");
            if raw.len() != 1 || raw[0] != b" spaced " {
                assert!(!warnings.is_empty(), "{raw:?}");
            }
        }
        let (rel, w) = rel_paths(&[&[long_ext.as_bytes()], &[long_utf8.as_bytes()]]);
        assert_eq!(rel[0][0].len(), MAX_COMPONENT_BYTES);
        assert!(rel[0][0].ends_with("xx.txt"));
        assert!(rel[1][0].len() <= MAX_COMPONENT_BYTES && rel[1][0].starts_with('é'));
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn malicious_names_sanitised() {
        let hex_of = |info: &[u8]| crate::hash::hex(&crate::hash::sha1(info));
        for (name, want) in [
            (&b".."[..], "_.."),
            (b".", "_."),
            (b"a/b", "a_b"),
            (b"/", "_"),
            (b"x\0", "x_"),
        ] {
            let p = parse_info(&single_info(name, 1, 4, 1), vec![]).unwrap();
            assert_eq!(p.meta.name, want);
            assert_eq!(p.meta.files[0].path, vec![want]);
            assert!(!p.warnings.is_empty());
            let info = multi_info(name, &[file(1, &[b"f"], b"")], 4, 1);
            let p = parse_info(&info, vec![]).unwrap();
            assert_eq!(p.meta.files[0].path, vec![want, "f"]);
        }
        let info = single_info(b"", 1, 4, 1);
        let p = parse_info(&info, vec![]).unwrap();
        assert_eq!(p.meta.name, hex_of(&info));
        let info = b"d6:lengthi1e12:piece lengthi4e6:pieces20:AAAAAAAAAAAAAAAAAAAAe";
        assert_eq!(parse_info(info, vec![]).unwrap().meta.name, hex_of(info));
    }

    #[test]
    fn colliding_paths_renamed() {
        let (rel, w) = rel_paths(&[
            &[b"a/b"],
            &[b"a_b"],
            &[b"x.txt"],
            &[b"x.txt"],
            &[b"x.txt"],
            &[b"x_1.txt"],
        ]);
        assert_eq!(
            rel,
            vec![
                vec!["a_b"],
                vec!["a_b_1"],
                vec!["x.txt"],
                vec!["x_1.txt"],
                vec!["x_2.txt"],
                vec!["x_1_1.txt"]
            ]
        );
        assert_eq!(w.len(), 5);
        // A file where a directory is needed, and the reverse.
        let (rel, _) = rel_paths(&[
            &[b"a"],
            &[b"a", b"b"],
            &[b"a", b"c"],
            &[b"d", b"x"],
            &[b"d"],
        ]);
        assert_eq!(
            rel,
            vec![
                vec!["a"],
                vec!["a_1", "b"],
                vec!["a_1", "c"],
                vec!["d", "x"],
                vec!["d_1"]
            ]
        );
        // Nested: only the same name in the same directory clashes.
        let (rel, _) = rel_paths(&[
            &[b"d", b"x"],
            &[b"e", b"x"],
            &[b"d", b"x"],
            &[b"a", b"b"],
            &[b"a", b"b", b"c"],
            &[b"a", b"b", b"c2"],
        ]);
        assert_eq!(
            rel,
            vec![
                vec!["d", "x"],
                vec!["e", "x"],
                vec!["d", "x_1"],
                vec!["a", "b"],
                vec!["a", "b_1", "c"],
                vec!["a", "b_1", "c2"]
            ]
        );
        // Renaming a maximal-length name keeps it within the component limit.
        let long = "y".repeat(MAX_COMPONENT_BYTES);
        let (rel, _) = rel_paths(&[&[long.as_bytes()], &[long.as_bytes()]]);
        assert_eq!(rel[1][0].len(), MAX_COMPONENT_BYTES);
        assert!(rel[1][0].ends_with("_1"));
    }

    #[test]
    fn path_depth_and_length_capped() {
        let ok: Vec<&[u8]> = vec![b"d"; MAX_PATH_DEPTH];
        let (rel, _) = rel_paths(&[&ok]);
        assert_eq!(rel[0].len(), MAX_PATH_DEPTH);
        let deep: Vec<&[u8]> = vec![b"d"; MAX_PATH_DEPTH + 1];
        let t = torrent(b"", &multi_info(b"t", &[file(1, &deep, b"")], 4, 1));
        assert_eq!(
            parse(&t).unwrap_err(),
            MetainfoError::PathTooDeep {
                index: 0,
                depth: MAX_PATH_DEPTH + 1
            }
        );
        let comp = vec![b'c'; MAX_COMPONENT_BYTES];
        let long: Vec<&[u8]> = vec![&comp; 20];
        let t = torrent(b"", &multi_info(b"t", &[file(1, &long, b"")], 4, 1));
        assert!(matches!(
            parse(&t).unwrap_err(),
            MetainfoError::PathTooLong { index: 0, .. }
        ));
    }

    #[test]
    fn structural_errors_reported() {
        use MetainfoError as E;
        let s = |name: &[u8], len, pl, n| torrent(b"", &single_info(name, len, pl, n));
        let m = |files: &[Vec<u8>], pl, n| torrent(b"", &multi_info(b"t", files, pl, n));
        let cases: Vec<(Vec<u8>, MetainfoError)> = vec![
            (b"le".to_vec(), E::NotADictionary),
            (b"d8:announce1:xe".to_vec(), E::MissingInfo),
            (b"d4:infoi1ee".to_vec(), E::MissingInfo),
            (
                torrent(
                    b"",
                    b"d9:file treede12:meta versioni2e4:name1:x12:piece lengthi16384ee",
                ),
                E::V2Only,
            ),
            (s(b"a", 1, 0, 1), E::BadPieceLength(0)),
            (s(b"a", 1, -16, 1), E::BadPieceLength(-16)),
            (
                s(b"a", 1, MAX_PIECE_LENGTH as i64 + 1, 1),
                E::BadPieceLength(MAX_PIECE_LENGTH as i64 + 1),
            ),
            (
                torrent(b"", b"d6:lengthi1e6:pieces0:e"),
                E::MissingPieceLength,
            ),
            (
                torrent(b"", b"d6:lengthi1e12:piece lengthi1ee"),
                E::MissingPieces,
            ),
            (
                torrent(
                    b"",
                    b"d6:lengthi1e12:piece lengthi1e6:pieces21:AAAAAAAAAAAAAAAAAAAAAe",
                ),
                E::BadPiecesLength(21),
            ),
            (
                torrent(b"", b"d4:name1:x12:piece lengthi1e6:pieces0:e"),
                E::MissingLength,
            ),
            (s(b"a", 0, 16, 0), E::EmptyTorrent),
            (s(b"a", -1, 16, 1), E::NegativeLength(-1)),
            (
                s(b"a", 123, 16, 10),
                E::PieceCountMismatch {
                    count: 10,
                    total: 123,
                    piece_length: 16,
                },
            ),
            (
                s(b"a", 16, 16, 2),
                E::PieceCountMismatch {
                    count: 2,
                    total: 16,
                    piece_length: 16,
                },
            ),
            (m(&[], 4, 1), E::NoFiles),
            (
                torrent(b"", b"d5:files3:abc4:name1:x12:piece lengthi1e6:pieces0:e"),
                E::BadFilesList,
            ),
            (
                torrent(b"", b"d5:filesli1ee4:name1:x12:piece lengthi1e6:pieces0:e"),
                E::BadFileEntry(0),
            ),
            (
                m(&[b"d4:pathl1:aee".to_vec()], 4, 1),
                E::MissingFileLength(0),
            ),
            (m(&[b"d6:lengthi1ee".to_vec()], 4, 1), E::BadPath(0)),
            (
                m(&[b"d6:lengthi1e4:pathli1eee".to_vec()], 4, 1),
                E::BadPath(0),
            ),
            (
                m(&[b"d6:lengthi1e4:path1:ae".to_vec()], 4, 1),
                E::BadPath(0),
            ),
            (
                m(&[file(1, &[b"a"], b""), file(-5, &[b"b"], b"")], 4, 1),
                E::NegativeLength(-5),
            ),
            (
                m(
                    &[
                        file(i64::MAX, &[b"a"], b""),
                        file(i64::MAX, &[b"b"], b""),
                        file(i64::MAX, &[b"c"], b""),
                    ],
                    4,
                    1,
                ),
                E::TotalLengthOverflow,
            ),
            (
                m(&[file(0, &[b"a"], b""), file(0, &[b"b"], b"")], 4, 0),
                E::EmptyTorrent,
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                parse(&bytes).unwrap_err(),
                want,
                "{}",
                String::from_utf8_lossy(&bytes)
            );
        }
        assert_eq!(
            parse(&s(b"a", 123, 16, 10)).unwrap_err().to_string(),
            "torrent: piece count 10 does not match total length 123 / piece length 16"
        );
        assert_eq!(
            parse(b"d8:announce1:xe").unwrap_err().to_string(),
            "torrent: missing 'info' dictionary"
        );
        assert_eq!(
            E::V2Only.to_string(),
            "torrent: v2-only torrents are not supported"
        );
    }

    #[test]
    fn hybrid_torrent_uses_v1_fields() {
        let info = b"d9:file treed1:ad0:d6:lengthi5e11:pieces root32:\
                     BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBeee6:lengthi5e12:meta versioni2e\
                     4:name1:a12:piece lengthi16384e6:pieces20:AAAAAAAAAAAAAAAAAAAAe";
        let m = parse_info(info, vec![]).unwrap().meta;
        assert_eq!(m.total_length, 5);
        assert_eq!(m.info_hash, crate::hash::sha1(info));
    }

    #[test]
    fn too_many_files_refused_before_walking_them() {
        let mut info = b"d5:filesl".to_vec();
        for _ in 0..=MAX_FILES {
            info.extend_from_slice(b"i0e");
        }
        info.extend_from_slice(b"e4:name1:x12:piece lengthi1e6:pieces0:e");
        assert_eq!(
            parse_info(&info, vec![]).unwrap_err(),
            MetainfoError::TooManyFiles(MAX_FILES + 1)
        );
    }

    #[test]
    fn every_truncation_errs() {
        for v in vectors() {
            assert!(parse(&v).is_ok() || parse_info(&v, vec![]).is_ok());
            for n in 0..v.len() {
                assert!(parse(&v[..n]).is_err(), "prefix {n}");
                assert!(parse_info(&v[..n], vec![]).is_err(), "prefix {n}");
            }
        }
    }

    #[test]
    fn mutation_sweep_never_panics() {
        let mut rng = crate::rng::Rng::new(0x5eed);
        let specials = b"0123456789:delie./\\\x00-p";
        let mut accepted = 0;
        for v in vectors() {
            for _ in 0..3000 {
                let mut m = v.clone();
                for _ in 0..1 + rng.below(3) {
                    let i = rng.below(m.len());
                    m[i] = if rng.below(2) == 0 {
                        specials[rng.below(specials.len())]
                    } else {
                        rng.next_u32() as u8
                    };
                }
                for p in [parse(&m), parse_info(&m, vec![])].into_iter().flatten() {
                    accepted += 1;
                    check_invariants(&p.meta);
                    assert!(p.warnings.len() <= MAX_WARNINGS + 1);
                }
            }
        }
        // The sweep must also exercise the success path, not only early rejections.
        assert!(accepted > 100, "{accepted}");
    }

    /// An info dictionary of three distinct piece hashes, with unknown keys on both sides of
    /// `pieces`. Returns it and the hashes.
    fn info_with_distinct_hashes() -> (Vec<u8>, Vec<[u8; 20]>) {
        let hashes: Vec<[u8; 20]> = (1..=3u8).map(|i| [i; 20]).collect();
        let mut o = b"d".to_vec();
        crate::bencode::put_kv_int(&mut o, "length", 40_000);
        crate::bencode::put_kv_bytes(&mut o, "name", b"f");
        crate::bencode::put_kv_int(&mut o, "piece length", 16384);
        crate::bencode::put_kv_bytes(&mut o, "pieces", &hashes.concat());
        crate::bencode::put_kv_bytes(&mut o, "x-unknown", &[9; 20]);
        o.push(b'e');
        (o, hashes)
    }

    fn assert_hashes_in_place(m: &Metainfo, info: &[u8], hashes: &[[u8; 20]]) {
        // The dictionary is kept byte for byte (unknown keys and all), once.
        assert_eq!(m.info_dict(), Some(info));
        assert_eq!(m.info.heap_len(), info.len());
        assert_eq!(m.info_hash, hash::sha1(info));
        assert_eq!(m.piece_count(), 3);
        for (i, h) in hashes.iter().enumerate() {
            assert_eq!(m.piece_hash(i as u32), Some(h));
        }
        assert_eq!(m.piece_hash(3), None);
        assert_eq!(m.piece_hash(u32::MAX), None);
    }

    #[test]
    fn torrent_file_parsed_keeps_info_dict_and_reads_hashes_from_it() {
        let (info, hashes) = info_with_distinct_hashes();
        let t = torrent(b"8:announce9:http://t/7:comment3:abc", &info);
        let m = parse(&t).unwrap().meta;
        assert_hashes_in_place(&m, &info, &hashes);
    }

    #[test]
    fn fetched_info_parsed_keeps_it_and_reads_hashes_from_it() {
        let (info, hashes) = info_with_distinct_hashes();
        let m = parse_info(&info, vec![]).unwrap().meta;
        assert_hashes_in_place(&m, &info, &hashes);
    }

    #[test]
    fn bare_hashes_built_verify_but_have_no_dict_to_serve() {
        let d = InfoDict::bare_hashes([[5u8; 20], [6; 20]].concat());
        assert_eq!(d.bytes(), None);
        assert_eq!(d.piece_count(), 2);
        assert_eq!(d.piece_hash(1), Some(&[6; 20]));
        assert_eq!(d.piece_hash(2), None);
    }
}
