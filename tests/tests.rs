//! atorrent's integration tests: one test binary (`autotests = false`) so the harness in
//! `common` is compiled once. `interop` runs atorrent against real peers on loopback
//! (libtorrent, opentracker, aria2c, transmission-cli); `hostile` against a misbehaving peer
//! written here; `daemon` drives the daemon through its control socket; `cli` checks the
//! command-line contract; `packaging` the init scripts and the man page. Needs the peer
//! programs from scripts/setup.sh.

mod cli;
mod common;
mod daemon;
mod hostile;
mod interop;
mod packaging;
