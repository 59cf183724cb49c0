//! DHT bootstrap host names (`dht_bootstrap = router.bittorrent.com:6881`) resolved inside the
//! loop, as tracker hosts are: the hosts file first, then our own DNS client on the shared
//! resolver socket. Start-up never waits on a resolver; each name's addresses join the DHT's
//! bootstrap list when its answer arrives (IP literals are in that list from the start).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use log::{info, warn};

use super::Engine;
use crate::dns;
use crate::net;
use crate::time::Instant;

/// A query left unanswered this long is sent again.
const BOOT_DNS_TIMEOUT: Duration = Duration::from_secs(5);
/// Queries per name and record type before the name is given up (with a warning).
const BOOT_DNS_TRIES: u8 = 3;
/// Addresses used per name: a router needs one; a second covers the other family.
const BOOT_ADDRS_PER_NAME: usize = 2;

/// A bootstrap name whose DNS answer is awaited.
pub(super) struct BootName {
    host: String,
    port: u16,
    dns_id: Option<u16>,
    qtype: dns::QType,
    deadline: Instant,
    tries: u8,
}

impl Engine {
    /// Starts resolving the configured bootstrap names (once the DHT exists).
    pub(super) fn bootstrap_names_start(&mut self, now: Instant) {
        let names = std::mem::take(&mut self.opts.dht_bootstrap_names);
        for (host, port) in names {
            let ips = net::hosts_lookup(&host);
            if !ips.is_empty() {
                self.boot_found(&host, port, &ips, now);
                continue;
            }
            self.boot_names.push(BootName {
                host,
                port,
                dns_id: None,
                qtype: dns::QType::A,
                deadline: now + BOOT_DNS_TIMEOUT,
                tries: 0,
            });
            self.boot_query(self.boot_names.len() - 1, now);
        }
    }

    fn boot_found(&mut self, host: &str, port: u16, ips: &[IpAddr], now: Instant) {
        let Some(d) = self.dht.as_mut() else {
            return;
        };
        let addrs: Vec<SocketAddr> = ips
            .iter()
            .take(BOOT_ADDRS_PER_NAME)
            .map(|ip| SocketAddr::new(*ip, port))
            .collect();
        for a in &addrs {
            d.add_bootstrap(now, *a);
        }
        info!("dht: bootstrap node {host}:{port} is {addrs:?}");
    }

    /// Sends (or sends again) the DNS query of bootstrap name `k`; a name that cannot be
    /// asked is dropped with a warning.
    fn boot_query(&mut self, k: usize, now: Instant) {
        let sent = self.dns_socket().and_then(|()| {
            self.dns_next_id = self.dns_next_id.wrapping_add(1);
            let id = self.dns_next_id;
            let b = self.boot_names.get_mut(k).ok_or("gone")?;
            let mut q = Vec::with_capacity(64);
            dns::build_query(id, &b.host, b.qtype, &mut q).map_err(|e| e.to_string())?;
            b.dns_id = Some(id);
            b.deadline = now + BOOT_DNS_TIMEOUT;
            b.tries += 1;
            let (Some(udp), Some(server)) = (self.udp.as_ref(), self.resolvers.first()) else {
                return Err("no resolver".to_string());
            };
            udp.send_to(&q, *server)
                .map(|_| ())
                .map_err(|e| format!("dns send: {e}"))
        });
        if let Err(e) = sent {
            if k < self.boot_names.len() {
                let b = self.boot_names.remove(k);
                warn!("dht: bootstrap node {}:{}: {e}", b.host, b.port);
            }
        }
    }

    /// Takes a DNS answer meant for a bootstrap name; false when `pkt` is not one.
    pub(super) fn boot_dns_answer(&mut self, pkt: &[u8], now: Instant) -> bool {
        let Some(id) = pkt.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
            return false;
        };
        let Some(k) = self.boot_names.iter().position(|b| b.dns_id == Some(id)) else {
            return false;
        };
        let b = &mut self.boot_names[k];
        match dns::parse_response(pkt, id, &b.host, b.qtype) {
            Ok(ans) if !ans.addrs.is_empty() => {
                let b = self.boot_names.remove(k);
                self.boot_found(&b.host, b.port, &ans.addrs, now);
            }
            Ok(_) if b.qtype == dns::QType::A => {
                b.qtype = dns::QType::Aaaa;
                b.tries = 0;
                self.boot_query(k, now);
            }
            Ok(_) => {
                let b = self.boot_names.remove(k);
                warn!("dht: bootstrap node {}:{}: no address", b.host, b.port);
            }
            Err(e) => {
                let b = self.boot_names.remove(k);
                warn!("dht: bootstrap node {}:{}: {e}", b.host, b.port);
            }
        }
        true
    }

    /// Asks again for names whose answer is late, and gives up after `BOOT_DNS_TRIES`.
    pub(super) fn boot_dns_timeouts(&mut self, now: Instant) {
        for k in (0..self.boot_names.len()).rev() {
            let b = &self.boot_names[k];
            if now < b.deadline {
                continue;
            }
            if b.tries >= BOOT_DNS_TRIES {
                let b = self.boot_names.remove(k);
                warn!("dht: bootstrap node {}:{}: no DNS answer", b.host, b.port);
            } else {
                self.boot_query(k, now);
            }
        }
    }
}
