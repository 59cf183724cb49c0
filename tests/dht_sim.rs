//! DHT simulation: hundreds to a thousand `Dht` state machines on one in-memory network with
//! virtual time (no sockets, no clock). Datagrams get a small random latency and optional
//! loss from a seeded `Rng`, so every run is the same. Checks that lookups find the true K
//! closest nodes, that an announced peer is found from far away, and that bucket maintenance
//! keeps tables healthy after 20% of the nodes vanish. Prints the figures with `eprintln!`.

use atorrent::dht::{Config, Dht, DhtEvent, LookupId, NodeId};
use atorrent::rng::Rng;
use atorrent::time::Instant;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;

const K: usize = 8;

/// A datagram in flight: (deliver at ms, sequence, from, to, bytes).
type InFlight = (u64, u64, usize, usize, Vec<u8>);

struct Net {
    nodes: Vec<Option<Dht>>,
    addrs: Vec<SocketAddr>,
    ids: Vec<NodeId>,
    by_addr: HashMap<SocketAddr, usize>,
    queue: BinaryHeap<Reverse<InFlight>>,
    /// (due ms, node); stale entries are skipped by comparing with `sched`.
    timers: BinaryHeap<Reverse<(u64, usize)>>,
    sched: Vec<u64>,
    events: Vec<Vec<DhtEvent>>,
    now: u64,
    seq: u64,
    rng: Rng,
    /// Percent of datagrams lost.
    loss: usize,
    datagrams: u64,
}

fn addr_of(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 6881))
}

fn distance(a: &NodeId, b: &NodeId) -> NodeId {
    let mut d = [0u8; 20];
    for i in 0..20 {
        d[i] = a[i] ^ b[i];
    }
    d
}

impl Net {
    fn new(n: usize, seed: u64, loss: usize) -> Net {
        let mut rng = Rng::new(seed);
        let ids: Vec<NodeId> = (0..n)
            .map(|_| {
                let mut id = [0u8; 20];
                rng.fill(&mut id);
                id
            })
            .collect();
        let addrs: Vec<SocketAddr> = (0..n).map(addr_of).collect();
        let by_addr = addrs.iter().enumerate().map(|(i, a)| (*a, i)).collect();
        Net {
            nodes: (0..n).map(|_| None).collect(),
            addrs,
            ids,
            by_addr,
            queue: BinaryHeap::new(),
            timers: BinaryHeap::new(),
            sched: vec![u64::MAX; n],
            events: vec![Vec::new(); n],
            now: 0,
            seq: 0,
            rng,
            loss,
            datagrams: 0,
        }
    }

    fn now(&self) -> Instant {
        Instant::from_millis(self.now)
    }

    /// Node `i` joins, bootstrapping from up to three random earlier nodes.
    fn join(&mut self, i: usize) {
        let mut bootstrap = Vec::new();
        for _ in 0..3.min(i) {
            bootstrap.push(self.addrs[self.rng.below(i)]);
        }
        let cfg = Config {
            bootstrap,
            ..Config::default()
        };
        let seed = self.rng.next_u64();
        self.nodes[i] = Some(Dht::new(self.ids[i], self.now(), cfg, Rng::new(seed)));
        self.flush(i);
    }

    /// Moves node `i`'s outgoing datagrams onto the network and reschedules its timer.
    fn flush(&mut self, i: usize) {
        let Some(d) = self.nodes[i].as_mut() else {
            return;
        };
        while let Some((to, bytes)) = d.poll_transmit() {
            self.datagrams += 1;
            if self.loss > 0 && self.rng.below(100) < self.loss {
                continue;
            }
            if let Some(&j) = self.by_addr.get(&to) {
                let at = self.now + 5 + self.rng.below(45) as u64;
                self.seq += 1;
                self.queue.push(Reverse((at, self.seq, i, j, bytes)));
            }
        }
        while let Some(e) = d.poll_event() {
            self.events[i].push(e);
        }
        let at = d.poll_at().as_millis().max(self.now);
        if at != self.sched[i] {
            self.sched[i] = at;
            self.timers.push(Reverse((at, i)));
        }
    }

    fn run_until(&mut self, end: u64) {
        loop {
            let next_packet = self.queue.peek().map(|Reverse(p)| p.0);
            let next_timer = self.timers.peek().map(|Reverse(t)| t.0);
            let packet_first = match (next_packet, next_timer) {
                (Some(p), Some(t)) => p <= t,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if packet_first {
                if next_packet.is_some_and(|p| p > end) {
                    break;
                }
                let Some(Reverse((at, _, from, to, bytes))) = self.queue.pop() else {
                    break;
                };
                self.now = at;
                let src = self.addrs[from];
                if let Some(d) = self.nodes[to].as_mut() {
                    let _ = d.handle_datagram(Instant::from_millis(at), src, &bytes);
                    self.flush(to);
                }
            } else {
                if next_timer.is_some_and(|t| t > end) {
                    break;
                }
                let Some(Reverse((at, i))) = self.timers.pop() else {
                    break;
                };
                if self.sched[i] != at {
                    continue;
                }
                self.sched[i] = u64::MAX;
                self.now = at;
                if let Some(d) = self.nodes[i].as_mut() {
                    d.handle_timeout(Instant::from_millis(at));
                    self.flush(i);
                }
            }
        }
        self.now = end;
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .collect()
    }

    /// The true K closest live nodes to `target`, excluding `asker`.
    fn brute_closest(&self, target: &NodeId, asker: usize) -> Vec<NodeId> {
        let mut all: Vec<NodeId> = self
            .alive()
            .into_iter()
            .filter(|i| *i != asker)
            .map(|i| self.ids[i])
            .collect();
        all.sort_by_key(|id| distance(id, target));
        all.truncate(K);
        all
    }

    /// Runs until every (node, lookup) has a LookupDone event, or `limit_ms` passes.
    fn wait_done(&mut self, waits: &[(usize, LookupId)], limit_ms: u64) -> Vec<Option<DhtEvent>> {
        let deadline = self.now + limit_ms;
        let mut out: Vec<Option<DhtEvent>> = vec![None; waits.len()];
        loop {
            for (k, (i, lid)) in waits.iter().enumerate() {
                if out[k].is_some() {
                    continue;
                }
                if let Some(pos) = self.events[*i]
                    .iter()
                    .position(|e| matches!(e, DhtEvent::LookupDone { lookup, .. } if lookup == lid))
                {
                    out[k] = Some(self.events[*i].remove(pos));
                }
            }
            if out.iter().all(Option::is_some) || self.now >= deadline {
                return out;
            }
            let step = self.now + 100;
            self.run_until(step);
        }
    }

    /// `count` find_node lookups for random targets from random live nodes; returns
    /// (success rate, mean rounds, mean messages).
    fn lookup_round(&mut self, count: usize) -> (f64, f64, f64) {
        let alive = self.alive();
        let mut waits = Vec::new();
        let mut targets = Vec::new();
        for _ in 0..count {
            let i = alive[self.rng.below(alive.len())];
            let mut target = [0u8; 20];
            self.rng.fill(&mut target);
            let now = self.now();
            let Some(d) = self.nodes[i].as_mut() else {
                continue;
            };
            if let Ok(lid) = d.find_node(now, target) {
                waits.push((i, lid));
                targets.push(target);
            }
            self.flush(i);
        }
        let results = self.wait_done(&waits, 60_000);
        let (mut ok, mut rounds, mut messages) = (0usize, 0u64, 0u64);
        for (k, r) in results.iter().enumerate() {
            let Some(DhtEvent::LookupDone {
                closest,
                rounds: r,
                messages: m,
                ..
            }) = r
            else {
                continue;
            };
            rounds += u64::from(*r);
            messages += u64::from(*m);
            let mut got: Vec<NodeId> = closest.iter().map(|n| n.id).collect();
            got.sort_by_key(|id| distance(id, &targets[k]));
            if got == self.brute_closest(&targets[k], waits[k].0) {
                ok += 1;
            }
        }
        let n = waits.len().max(1) as f64;
        (ok as f64 / n, rounds as f64 / n, messages as f64 / n)
    }

    /// (good, questionable, entries pointing at dead nodes, all entries) over live nodes.
    fn health(&self) -> (usize, usize, usize, usize) {
        let now = self.now();
        let mut h = (0, 0, 0, 0);
        for d in self.nodes.iter().flatten() {
            let s = d.stats(now);
            h.0 += s.good;
            h.1 += s.questionable;
            for n in d.table(false).nodes() {
                h.3 += 1;
                let j = self.by_addr.get(&n.addr).copied();
                if j.map_or(true, |j| self.nodes[j].is_none()) {
                    h.2 += 1;
                }
            }
        }
        h
    }
}

fn simulate(n: usize, lookups: usize, seed: u64) {
    let wall = std::time::Instant::now();
    let mut net = Net::new(n, seed, 1);
    // Join: one node every 20 ms, then let bootstrap lookups settle.
    for i in 0..n {
        let t = net.now + 20;
        net.run_until(t);
        net.join(i);
    }
    let t = net.now + 60_000;
    net.run_until(t);
    let join_datagrams = net.datagrams;
    let (g, q, _, total) = net.health();
    eprintln!(
        "dht_sim n={n}: joined; {total} table entries ({:.1}/node, {g} good, {q} questionable), \
         {join_datagrams} datagrams",
        total as f64 / n as f64
    );

    // (a) lookups for random targets find the true K closest.
    let before = net.datagrams;
    let (rate, rounds, msgs) = net.lookup_round(lookups);
    eprintln!(
        "dht_sim n={n}: {lookups} find_node lookups: success {:.1}%, {rounds:.2} rounds, \
         {msgs:.1} messages per lookup ({} datagrams incl. answers)",
        rate * 100.0,
        net.datagrams - before
    );
    assert!(rate >= 0.95, "lookup success {rate}");

    // (b) A announces H; B, far from both, finds A.
    let mut h = [0u8; 20];
    net.rng.fill(&mut h);
    let a = (0..n)
        .min_by_key(|i| distance(&net.ids[*i], &h))
        .unwrap_or(0);
    let b = (0..n)
        .max_by_key(|i| distance(&net.ids[*i], &h).min(distance(&net.ids[*i], &net.ids[a])))
        .unwrap_or(1);
    let now = net.now();
    let la = net.nodes[a]
        .as_mut()
        .unwrap()
        .announce(now, h, 51413)
        .unwrap();
    net.flush(a);
    let done = net.wait_done(&[(a, la)], 30_000);
    let announced = match &done[0] {
        Some(DhtEvent::LookupDone { announced, .. }) => *announced,
        _ => 0,
    };
    let t = net.now + 2_000;
    net.run_until(t);
    let now = net.now();
    let lb = net.nodes[b].as_mut().unwrap().get_peers(now, h).unwrap();
    net.flush(b);
    let done = net.wait_done(&[(b, lb)], 30_000);
    let found: Vec<SocketAddr> = net.events[b]
        .iter()
        .filter_map(|e| match e {
            DhtEvent::Peers { lookup, peers, .. } if *lookup == lb => Some(peers.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    let want = SocketAddr::new(net.addrs[a].ip(), 51413);
    let (b_rounds, b_msgs) = match &done[0] {
        Some(DhtEvent::LookupDone {
            rounds, messages, ..
        }) => (*rounds, *messages),
        _ => (0, 0),
    };
    eprintln!(
        "dht_sim n={n}: announce stored on {announced} nodes; get_peers from a far node found \
         {} peer(s) in {b_rounds} rounds, {b_msgs} messages",
        found.len()
    );
    assert!(announced >= 1);
    assert!(found.contains(&want), "{found:?} lacks {want}");

    // (c) churn: 20% of the nodes vanish; 30 virtual minutes of maintenance.
    let mut victims: Vec<usize> = (0..n).filter(|i| *i != a && *i != b).collect();
    net.rng.shuffle(&mut victims);
    for v in victims.iter().take(n / 5) {
        net.nodes[*v] = None;
    }
    let before = net.datagrams;
    let t = net.now + 30 * 60 * 1000;
    net.run_until(t);
    let (g, q, dead, total) = net.health();
    let alive = net.alive().len();
    eprintln!(
        "dht_sim n={n}: after removing 20% and 30 min: {alive} nodes, {total} entries, \
         {:.1}% good, {q} questionable, {:.1}% dead; {:.1} datagrams/node/min of maintenance",
        100.0 * g as f64 / total as f64,
        100.0 * dead as f64 / total as f64,
        (net.datagrams - before) as f64 / alive as f64 / 30.0
    );
    assert!(g as f64 >= 0.8 * total as f64, "good {g} of {total}");
    assert!(
        (dead as f64) < 0.05 * total as f64,
        "dead {dead} of {total}"
    );
    let (rate, rounds, msgs) = net.lookup_round(lookups);
    eprintln!(
        "dht_sim n={n}: after churn {lookups} lookups: success {:.1}%, {rounds:.2} rounds, \
         {msgs:.1} messages per lookup; wall {:.1}s",
        rate * 100.0,
        wall.elapsed().as_secs_f64()
    );
    assert!(rate >= 0.95, "lookup success after churn {rate}");
}

#[test]
fn dht_sim_200_nodes() {
    simulate(200, 100, 0x200);
}

#[test]
fn dht_sim_1000_nodes() {
    simulate(1000, 200, 0x1000);
}
