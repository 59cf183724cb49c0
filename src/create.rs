//! Layer 3: hashes a file or directory into a new v1 .torrent (BEP 3, BEP 12, BEP 27).
//!
//! Files are read in large sequential chunks and hashed with `crate::hash::Sha1`; pieces run
//! across file boundaries as BEP 3 requires. Directory walks never follow symlinks and are
//! sorted by path bytes so the same tree always gives the same info-hash. The output is
//! canonical bencode (keys sorted). This module reads files but never writes any: the caller
//! decides where the bytes go.

use crate::bencode::{put_bytes, put_kv_bytes, put_kv_int};
use crate::hash::Sha1;
use crate::metainfo::{MAX_FILES, MAX_PIECE_LENGTH};
use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Smallest automatic piece length: the BEP 3 block size.
pub const MIN_AUTO_PIECE_LENGTH: u32 = 16 * 1024;
/// Largest automatic piece length: what common clients handle without complaint.
pub const MAX_AUTO_PIECE_LENGTH: u32 = 16 * 1024 * 1024;
/// Automatic piece length grows until the piece count is at most this (so 1000–2000 pieces
/// for anything between 16 MiB and 32 GiB).
pub const TARGET_MAX_PIECES: u64 = 2000;
/// Read buffer size: large sequential reads keep slow storage streaming.
const READ_CHUNK: usize = 1024 * 1024;

pub struct CreateOptions {
    pub trackers: Vec<String>,
    /// Must be a power of two from 16 KiB to `metainfo::MAX_PIECE_LENGTH`; `None` picks one.
    pub piece_length: Option<u32>,
    pub private: bool,
    pub comment: Option<String>,
    pub created_by: String,
}

#[derive(Debug)]
pub enum CreateError {
    Io { path: PathBuf, err: std::io::Error },
    NotFileOrDirectory(PathBuf),
    NoName(PathBuf),
    EmptyDirectory(PathBuf),
    TooManyFiles,
    EmptyContent,
    BadPieceLength(u32),
    FileChanged(PathBuf),
}

impl fmt::Display for CreateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use CreateError::*;
        f.write_str("create: ")?;
        match self {
            Io { path, err } => write!(f, "{}: {err}", path.display()),
            NotFileOrDirectory(p) => {
                write!(
                    f,
                    "{} is neither a regular file nor a directory",
                    p.display()
                )
            }
            NoName(p) => write!(f, "{} has no usable file name", p.display()),
            EmptyDirectory(p) => write!(f, "{} contains no regular files", p.display()),
            TooManyFiles => write!(f, "more than {MAX_FILES} files"),
            EmptyContent => f.write_str("all files are empty; a torrent needs at least one byte"),
            BadPieceLength(n) => write!(
                f,
                "piece length {n} is not a power of two from {MIN_AUTO_PIECE_LENGTH} to \
                 {MAX_PIECE_LENGTH}"
            ),
            FileChanged(p) => write!(f, "{} changed size while being hashed", p.display()),
        }
    }
}

impl std::error::Error for CreateError {}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CreateError + '_ {
    move |err| CreateError::Io {
        path: path.to_path_buf(),
        err,
    }
}

/// One file to hash: its path on disk, its components below the root, its length.
struct Item {
    disk: PathBuf,
    rel: Vec<String>,
    length: u64,
}

/// Builds a .torrent for `path` (a file gives a single-file torrent, a directory a multi-file
/// one) and returns its bytes.
pub fn create(path: &Path, opts: &CreateOptions) -> Result<Vec<u8>, CreateError> {
    let root = fs::canonicalize(path).map_err(io_err(path))?;
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| CreateError::NoName(path.to_path_buf()))?;
    let meta = fs::metadata(&root).map_err(io_err(&root))?;
    let (items, multi) = if meta.is_file() {
        let item = Item {
            disk: root.clone(),
            rel: Vec::new(),
            length: meta.len(),
        };
        (vec![item], false)
    } else if meta.is_dir() {
        let items = walk(&root)?;
        if items.is_empty() {
            return Err(CreateError::EmptyDirectory(path.to_path_buf()));
        }
        (items, true)
    } else {
        return Err(CreateError::NotFileOrDirectory(path.to_path_buf()));
    };
    let total = items.iter().try_fold(0u64, |a, i| a.checked_add(i.length));
    let total = match total {
        Some(0) | None => return Err(CreateError::EmptyContent),
        Some(t) => t,
    };
    let piece_length = match opts.piece_length {
        Some(n) => {
            if !n.is_power_of_two() || n < MIN_AUTO_PIECE_LENGTH || n as u64 > MAX_PIECE_LENGTH {
                return Err(CreateError::BadPieceLength(n));
            }
            n
        }
        None => auto_piece_length(total),
    };
    let pieces = hash_pieces(&items, piece_length)?;

    let mut info = b"d".to_vec();
    if multi {
        info.extend_from_slice(b"5:filesl");
        for it in &items {
            info.push(b'd');
            put_kv_int(&mut info, "length", it.length as i64);
            put_bytes(&mut info, b"path");
            info.push(b'l');
            for c in &it.rel {
                put_bytes(&mut info, c.as_bytes());
            }
            info.extend_from_slice(b"ee");
        }
        info.push(b'e');
    } else {
        put_kv_int(&mut info, "length", total as i64);
    }
    put_kv_bytes(&mut info, "name", name.as_bytes());
    put_kv_int(&mut info, "piece length", piece_length as i64);
    put_kv_bytes(&mut info, "pieces", &pieces);
    if opts.private {
        put_kv_int(&mut info, "private", 1);
    }
    info.push(b'e');

    let trackers: Vec<&str> = opts
        .trackers
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .collect();
    let mut out = b"d".to_vec();
    if let Some(first) = trackers.first() {
        put_kv_bytes(&mut out, "announce", first.as_bytes());
    }
    if trackers.len() > 1 {
        // BEP 12: one tracker per tier, tried in the given order.
        put_bytes(&mut out, b"announce-list");
        out.push(b'l');
        for t in &trackers {
            out.push(b'l');
            put_bytes(&mut out, t.as_bytes());
            out.push(b'e');
        }
        out.push(b'e');
    }
    if let Some(c) = &opts.comment {
        put_kv_bytes(&mut out, "comment", c.as_bytes());
    }
    if !opts.created_by.is_empty() {
        put_kv_bytes(&mut out, "created by", opts.created_by.as_bytes());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    put_kv_int(&mut out, "creation date", now.min(i64::MAX as u64) as i64);
    put_bytes(&mut out, b"info");
    out.extend_from_slice(&info);
    out.push(b'e');
    Ok(out)
}

/// Smallest power of two from 16 KiB to 16 MiB giving at most `TARGET_MAX_PIECES` pieces.
pub fn auto_piece_length(total: u64) -> u32 {
    let mut pl = MIN_AUTO_PIECE_LENGTH;
    while pl < MAX_AUTO_PIECE_LENGTH && total.div_ceil(pl as u64) > TARGET_MAX_PIECES {
        pl *= 2;
    }
    pl
}

/// Regular files below `root`, recursively, sorted by their path components' bytes. Symlinks
/// and special files are skipped.
fn walk(root: &Path) -> Result<Vec<Item>, CreateError> {
    let mut items = Vec::new();
    let mut stack: Vec<(PathBuf, Vec<String>)> = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir, rel)) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let disk = entry.path();
            // `symlink_metadata` does not follow links: a link is neither a file nor a dir.
            let md = fs::symlink_metadata(&disk).map_err(io_err(&disk))?;
            let mut child = rel.clone();
            child.push(entry.file_name().to_string_lossy().into_owned());
            if md.is_dir() {
                stack.push((disk, child));
            } else if md.is_file() {
                if items.len() >= MAX_FILES {
                    return Err(CreateError::TooManyFiles);
                }
                items.push(Item {
                    disk,
                    rel: child,
                    length: md.len(),
                });
            }
        }
    }
    items.sort_by(|a, b| {
        let a = a.rel.iter().map(|c| c.as_bytes());
        let b = b.rel.iter().map(|c| c.as_bytes());
        a.cmp(b)
    });
    Ok(items)
}

/// SHA-1 of each `piece_length` run of the files' concatenated bytes.
fn hash_pieces(items: &[Item], piece_length: u32) -> Result<Vec<u8>, CreateError> {
    let pl = piece_length as u64;
    let mut pieces = Vec::new();
    let mut h = Sha1::new();
    let mut in_piece: u64 = 0;
    let mut buf = vec![0u8; READ_CHUNK];
    for it in items {
        let mut f = fs::File::open(&it.disk).map_err(io_err(&it.disk))?;
        let mut left = it.length;
        while left > 0 {
            let want = (buf.len() as u64).min(left) as usize;
            let n = f.read(&mut buf[..want]).map_err(io_err(&it.disk))?;
            if n == 0 {
                return Err(CreateError::FileChanged(it.disk.clone()));
            }
            left -= n as u64;
            let mut data = &buf[..n];
            while !data.is_empty() {
                let take = ((pl - in_piece) as usize).min(data.len());
                h.update(&data[..take]);
                in_piece += take as u64;
                data = &data[take..];
                if in_piece == pl {
                    pieces.extend_from_slice(&h.finish());
                    h = Sha1::new();
                    in_piece = 0;
                }
            }
        }
        // A file that grew since it was listed would silently make a torrent that does not
        // match the disk; refuse instead.
        let mut probe = [0u8; 1];
        if f.read(&mut probe).map_err(io_err(&it.disk))? != 0 {
            return Err(CreateError::FileChanged(it.disk.clone()));
        }
    }
    if in_piece > 0 {
        pieces.extend_from_slice(&h.finish());
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::sha1;
    use crate::metainfo;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh empty directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir()
                .join(format!("atorrent-create-{tag}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn opts() -> CreateOptions {
        CreateOptions {
            trackers: vec![],
            piece_length: Some(16384),
            private: false,
            comment: None,
            created_by: String::new(),
        }
    }

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn directory_torrent_parses_back_with_exact_hash() {
        let t = TempDir::new("dir");
        let root = t.0.join("fixture");
        fs::create_dir_all(root.join("sub")).unwrap();
        let a = data(20000, 1);
        let b = data(0, 2);
        let c = data(30000, 3);
        fs::write(root.join("sub/c.bin"), &c).unwrap();
        fs::write(root.join("a.txt"), &a).unwrap();
        fs::write(root.join("b.empty"), &b).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(root.join("a.txt"), root.join("link")).unwrap();

        let o = CreateOptions {
            trackers: vec!["http://t1/a".into(), "udp://t2:1".into()],
            private: true,
            comment: Some("c".into()),
            created_by: "atorrent test".into(),
            ..opts()
        };
        let bytes = create(&root, &o).unwrap();
        let p = metainfo::parse(&bytes).unwrap();
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let m = p.meta;

        // Expected info dictionary, written out by hand in canonical order.
        let all: Vec<u8> = [&a[..], &b[..], &c[..]].concat();
        let mut pieces = Vec::new();
        for chunk in all.chunks(16384) {
            pieces.extend_from_slice(&sha1(chunk));
        }
        let mut info = b"d5:filesld6:lengthi20000e4:pathl5:a.txteed6:lengthi0e4:pathl7:b.empty\
                         eed6:lengthi30000e4:pathl3:sub5:c.bineee4:name7:fixture\
                         12:piece lengthi16384e6:pieces80:"
            .to_vec();
        info.extend_from_slice(&pieces);
        info.extend_from_slice(b"7:privatei1ee");
        assert_eq!(
            crate::bencode::raw_dict_value(&bytes, b"info").unwrap(),
            Some(&info[..])
        );
        assert_eq!(m.info_hash, sha1(&info));

        assert!(m.multi_file && m.private);
        assert_eq!(m.name, "fixture");
        assert_eq!(m.total_length, 50000);
        assert_eq!(m.piece_count(), 4);
        let files: Vec<(Vec<String>, u64, u64)> = m
            .files
            .iter()
            .map(|f| (f.path.clone(), f.length, f.offset))
            .collect();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            files,
            vec![
                (s(&["fixture", "a.txt"]), 20000, 0),
                (s(&["fixture", "b.empty"]), 0, 20000),
                (s(&["fixture", "sub", "c.bin"]), 30000, 20000),
            ]
        );
        for i in 0..m.piece_count() {
            let start = i as usize * 16384;
            let end = (start + 16384).min(all.len());
            assert_eq!(m.piece_hash(i), Some(&sha1(&all[start..end])));
        }
        assert_eq!(m.trackers, vec![vec!["http://t1/a"], vec!["udp://t2:1"]]);
        assert_eq!(p.notes.comment.as_deref(), Some("c"));
        assert_eq!(p.notes.created_by.as_deref(), Some("atorrent test"));
        assert!(p.notes.creation_date.unwrap_or(0) > 1_600_000_000);
        // Canonical output: re-encoding the decoded document gives the same bytes.
        let v = crate::bencode::decode(&bytes).unwrap();
        let keys: Vec<&[u8]> = v.as_dict().unwrap().iter().map(|(k, _)| *k).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn single_file_torrent_has_length_and_name() {
        let t = TempDir::new("single");
        let path = t.0.join("one.bin");
        let d = data(40000, 9);
        fs::write(&path, &d).unwrap();
        let o = CreateOptions {
            trackers: vec!["http://only".into()],
            ..opts()
        };
        let bytes = create(&path, &o).unwrap();
        let m = metainfo::parse(&bytes).unwrap().meta;
        let mut info = b"d6:lengthi40000e4:name7:one.bin12:piece lengthi16384e6:pieces60:".to_vec();
        for chunk in d.chunks(16384) {
            info.extend_from_slice(&sha1(chunk));
        }
        info.push(b'e');
        assert_eq!(m.info_hash, sha1(&info));
        assert!(!m.multi_file && !m.private);
        assert_eq!(m.files[0].path, vec!["one.bin"]);
        assert_eq!(m.trackers, vec![vec!["http://only"]]);
        assert!(crate::bencode::decode(&bytes)
            .unwrap()
            .get(b"announce-list")
            .is_none());
    }

    #[test]
    fn empty_inputs_and_bad_options_rejected() {
        let t = TempDir::new("empty");
        let dir = t.0.join("d");
        fs::create_dir_all(dir.join("nested")).unwrap();
        assert!(matches!(
            create(&dir, &opts()),
            Err(CreateError::EmptyDirectory(_))
        ));
        fs::write(dir.join("nested/z"), b"").unwrap();
        assert!(matches!(
            create(&dir, &opts()),
            Err(CreateError::EmptyContent)
        ));
        fs::write(dir.join("x"), b"x").unwrap();
        for bad in [0, 1000, 8192, 3 << 14, (MAX_PIECE_LENGTH as u32) * 2] {
            let o = CreateOptions {
                piece_length: Some(bad),
                ..opts()
            };
            assert!(matches!(
                create(&dir, &o),
                Err(CreateError::BadPieceLength(_))
            ));
        }
        assert!(matches!(
            create(&t.0.join("missing"), &opts()),
            Err(CreateError::Io { .. })
        ));
        assert!(create(&dir, &opts()).is_ok());
    }

    #[test]
    fn auto_piece_length_targets_piece_count() {
        assert_eq!(auto_piece_length(1), MIN_AUTO_PIECE_LENGTH);
        assert_eq!(auto_piece_length(2000 * 16384), 16384);
        assert_eq!(auto_piece_length(2000 * 16384 + 1), 32768);
        for total in [100u64 << 20, 700 << 20, 4 << 30, 30 << 30] {
            let pl = auto_piece_length(total);
            let count = total.div_ceil(pl as u64);
            assert!((1000..=2000).contains(&count), "{total} {pl} {count}");
        }
        assert_eq!(auto_piece_length(u64::MAX), MAX_AUTO_PIECE_LENGTH);
    }

    #[test]
    fn pieces_cross_file_boundaries_with_auto_length() {
        let t = TempDir::new("auto");
        let root = t.0.join("r");
        fs::create_dir_all(&root).unwrap();
        let mut all = Vec::new();
        for (i, len) in [5000usize, 17, 40000, 1].iter().enumerate() {
            let d = data(*len, i as u8);
            fs::write(root.join(format!("f{i}")), &d).unwrap();
            all.extend_from_slice(&d);
        }
        let o = CreateOptions {
            piece_length: None,
            ..opts()
        };
        let m = metainfo::parse(&create(&root, &o).unwrap()).unwrap().meta;
        assert_eq!(m.piece_length, MIN_AUTO_PIECE_LENGTH);
        let mut expect = Vec::new();
        for chunk in all.chunks(m.piece_length as usize) {
            expect.extend_from_slice(&sha1(chunk));
        }
        let got: Vec<u8> = (0..m.piece_count())
            .flat_map(|i| *m.piece_hash(i).unwrap())
            .collect();
        assert_eq!(got, expect);
        let offs: Vec<u64> = m.files.iter().map(|f| f.offset).collect();
        assert_eq!(offs, vec![0, 5000, 5017, 45017]);
    }
}
