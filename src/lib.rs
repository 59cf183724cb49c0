//! atorrent: a small, single-threaded BitTorrent client.
//!
//! Layers (lower layers never import higher ones):
//! - 0 vocabulary: `time`, `rng`, `hash`, `bitfield` — plain data, no I/O, no clock.
//! - 1 codecs: `bencode`, `metainfo`, `wire`, `tracker`, `dns` — bytes in, values out.
//! - 2 state machines: `picker`, `choker`, `peer`, `torrent` — take `now` and bytes, give bytes
//!   and actions; never touch a socket, a file or the clock.
//! - 3 I/O shell: `engine` (the only owner of mio and the clock), `net` (socket setup),
//!   `storage` (the only module that touches torrent data files), `sys` (every `unsafe`/libc
//!   call), `create` (hashes files into a new .torrent).
//! - 4 process setup: `cli`, `config`.

pub mod announce;
pub mod bencode;
pub mod bitfield;
pub mod choker;
pub mod cli;
pub mod config;
pub mod create;
pub mod dht;
pub mod dns;
pub mod engine;
pub mod hash;
pub mod magnet;
pub mod metainfo;
pub mod net;
pub mod peer;
pub mod picker;
pub mod pool;
pub mod rng;
pub mod storage;
pub mod sys;
pub mod time;
pub mod torrent;
pub mod tracker;
pub mod wire;
