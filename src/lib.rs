//! atorrent: a small, single-threaded BitTorrent client.
//!
//! Layers (lower layers never import higher ones):
//! - 0 vocabulary: `time`, `rng`, `hash`, `bitfield` — plain data, no I/O, no clock.
//! - 1 codecs: `bencode`, `metainfo`, `magnet`, `wire`, `ext` (BEP 9/10/11), `tracker` (HTTP),
//!   `udp_tracker` (BEP 15), `dns`, `mse` (encryption handshake), `ctl` (control protocol) —
//!   bytes in, values out.
//! - 2 state machines: `picker`, `choker`, `announce`, `ratelimit`, `peer`, `torrent`, `fetch`
//!   (magnet metadata), `dht` — take `now` and bytes, give bytes and actions; never touch a socket, a file or the clock.
//! - 3 I/O shell: `engine` (the only owner of mio and the clock; the daemon lives in
//!   `engine::daemon`), `net` (socket setup), `storage` (the only module that touches torrent
//!   data files), `state` (daemon state files), `logfile`, `sys` (every libc call that needs
//!   `unsafe`), `create` (hashes files into a new .torrent).
//! - 4 process setup: `cli`, `config`.

pub mod announce;
pub mod bencode;
pub mod bitfield;
pub mod choker;
pub mod cli;
pub mod config;
pub mod create;
pub mod ctl;
pub mod dht;
pub mod dns;
pub mod engine;
pub mod ext;
pub mod fetch;
pub mod hash;
pub mod logfile;
pub mod magnet;
pub mod metainfo;
pub mod mse;
pub mod net;
pub mod peer;
pub mod picker;
pub mod pool;
pub mod ratelimit;
pub mod rng;
pub mod state;
pub mod storage;
pub mod sys;
pub mod time;
pub mod torrent;
pub mod tracker;
pub mod udp_tracker;
pub mod wire;
