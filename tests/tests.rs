//! atorrent's integration tests: one test binary (`autotests = false`) so the harness in
//! `common` is compiled once. `interop` runs atorrent against real peers on loopback
//! (libtorrent, opentracker, aria2c, transmission-cli); `hostile` against a misbehaving peer
//! written here; `daemon` drives the daemon through its control socket; `encryption` checks
//! MSE/PE and IPv6 against real peers; `dht_sim` runs a thousand in-process DHT nodes on
//! virtual time; `limits` checks bandwidth and seeding limits; `packaging` the init scripts
//! and the man page; `hardening` hostile trackers and DHT nodes, disk trouble and fd limits;
//! `cli` checks the command-line contract.
//! Needs the peer programs from scripts/setup.sh.

mod cli;
mod common;
mod daemon;
mod dht_sim;
mod encryption;
mod hardening;
mod hostile;
mod interop;
mod limits;
mod magnet;
mod packaging;
mod trackerless;
