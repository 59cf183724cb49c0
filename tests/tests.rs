//! atorrent's integration tests: one test binary (`autotests = false`) so the harness in
//! `common` is compiled once. `interop` runs atorrent against real peers on loopback
//! (libtorrent, opentracker, aria2c, transmission-cli); `cli` checks the command-line contract.
//! Needs the peer programs from scripts/setup.sh.

mod cli;
mod common;
mod dht_sim;
mod interop;
