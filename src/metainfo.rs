//! Layer 1: .torrent files (BEP 3) into a validated `Metainfo`.
//!
//! (Being written: see the helper task. The types below are the contract other modules use.)

use crate::hash::Digest;

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

#[derive(Clone, Debug)]
pub struct Metainfo {
    pub info_hash: Digest,
    /// Display name (sanitised), the top-level file or directory name.
    pub name: String,
    pub piece_length: u32,
    /// Concatenated 20-byte SHA-1 piece hashes: `piece_count() * 20` bytes.
    pub pieces: Vec<u8>,
    pub files: Vec<FileEntry>,
    pub total_length: u64,
    /// BEP 27.
    pub private: bool,
    /// Announce tiers (BEP 12). With only `announce`, one tier of one URL.
    pub trackers: Vec<Vec<String>>,
    pub comment: Option<String>,
    pub created_by: Option<String>,
    pub creation_date: Option<i64>,
    /// True for a multi-file torrent (files under a directory named `name`).
    pub multi_file: bool,
}

impl Metainfo {
    pub fn piece_count(&self) -> u32 {
        (self.pieces.len() / 20) as u32
    }

    pub fn piece_hash(&self, index: u32) -> Option<&[u8; 20]> {
        let i = index as usize * 20;
        self.pieces.get(i..i + 20).and_then(|s| s.try_into().ok())
    }

    /// Length of piece `index` (the last one may be short); 0 if out of range.
    pub fn piece_len(&self, index: u32) -> u32 {
        if index >= self.piece_count() {
            return 0;
        }
        let start = index as u64 * self.piece_length as u64;
        (self.total_length - start).min(self.piece_length as u64) as u32
    }
}
