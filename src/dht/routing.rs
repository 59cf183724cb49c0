//! Layer 2: the DHT routing table (BEP 5 "Routing Table") for one address family.
//!
//! Buckets of K = 8 nodes; only the bucket that covers our own id splits, so the table is
//! detailed near our id and sparse far away. `buckets[i]` (for all but the last) holds nodes
//! whose id shares exactly `i` leading bits with ours; the last bucket holds everything closer.
//! Only nodes that answered one of our queries are inserted; each bucket keeps a small cache of
//! confirmed replacements used when a member goes bad. The total size is capped (`max_nodes`).
//! It must not send anything or read the clock: callers pass `now` and act on the returned
//! hints (which node to ping, which bucket to refresh).

use super::krpc::{NodeId, NodeInfo};
use crate::rng::Rng;
use crate::time::Instant;
use std::net::SocketAddr;
use std::time::Duration;

/// Bucket size (BEP 5: "Each bucket can only hold K nodes, currently eight").
pub const K: usize = 8;
/// BEP 5: "A good node is a node has responded to one of our queries within the last 15
/// minutes"; also the bucket refresh interval.
pub const GOOD_FOR: Duration = Duration::from_secs(15 * 60);
/// BEP 5: "Nodes become bad when they fail to respond to multiple queries in a row"; the
/// spec suggests trying once more before discarding, so two failures make a node bad.
pub const BAD_AFTER_FAILS: u8 = 2;
/// Confirmed nodes kept per bucket to replace members that go bad.
pub const REPLACEMENTS: usize = 4;
/// One bucket per shared-prefix length of a 160-bit id.
pub const MAX_BUCKETS: usize = 160;
/// Do not ping the same questionable node more often than this.
pub const PING_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Good,
    Questionable,
    Bad,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub id: NodeId,
    pub addr: SocketAddr,
    /// Last time it answered one of our queries.
    pub last_response: Option<Instant>,
    /// Last time it sent us a query.
    pub last_query: Option<Instant>,
    /// Failed queries in a row.
    pub fails: u8,
    /// Last time we pinged it for being questionable.
    pub last_ping: Option<Instant>,
}

impl Node {
    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            id: self.id,
            addr: self.addr,
        }
    }

    /// BEP 5 node status.
    pub fn status(&self, now: Instant) -> Status {
        if self.fails >= BAD_AFTER_FAILS {
            return Status::Bad;
        }
        let recent = |t: Option<Instant>| t.is_some_and(|t| now.since(t) < GOOD_FOR);
        if recent(self.last_response) || (self.last_response.is_some() && recent(self.last_query)) {
            Status::Good
        } else {
            Status::Questionable
        }
    }

    fn last_seen(&self) -> Instant {
        self.last_response
            .max(self.last_query)
            .unwrap_or(Instant::ZERO)
    }
}

#[derive(Clone, Debug)]
struct Bucket {
    nodes: Vec<Node>,
    replacements: Vec<NodeInfo>,
    last_changed: Instant,
}

impl Bucket {
    fn new(now: Instant) -> Bucket {
        Bucket {
            nodes: Vec::with_capacity(K),
            replacements: Vec::new(),
            last_changed: now,
        }
    }
}

/// What happened to a node that answered us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    /// Already in the table: refreshed.
    Updated,
    /// Newly added (possibly replacing a bad node).
    Added,
    /// The bucket is full; the node went to the replacement cache. If `ping` is set, that
    /// questionable member should be pinged (BEP 5: ping the least recently seen one).
    Full { ping: Option<NodeInfo> },
    /// Same id seen from another address while the old one is fine: ignored (anti-spoofing).
    Conflict,
    /// Our own id.
    Ignored,
}

pub struct Table {
    own: NodeId,
    buckets: Vec<Bucket>,
    max_nodes: usize,
    len: usize,
}

/// XOR distance (BEP 5 "distance metric").
pub fn distance(a: &NodeId, b: &NodeId) -> NodeId {
    let mut d = [0u8; 20];
    for (i, x) in d.iter_mut().enumerate() {
        *x = a[i] ^ b[i];
    }
    d
}

/// Number of leading bits `a` and `b` share (160 when equal).
pub fn common_prefix(a: &NodeId, b: &NodeId) -> usize {
    for i in 0..20 {
        let x = a[i] ^ b[i];
        if x != 0 {
            return i * 8 + x.leading_zeros() as usize;
        }
    }
    160
}

impl Table {
    pub fn new(own: NodeId, max_nodes: usize, now: Instant) -> Table {
        Table {
            own,
            buckets: vec![Bucket::new(now)],
            max_nodes: max_nodes.max(K),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    fn index(&self, id: &NodeId) -> usize {
        common_prefix(&self.own, id).min(self.buckets.len() - 1)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.buckets.iter().flat_map(|b| b.nodes.iter())
    }

    pub fn get(&self, id: &NodeId) -> Option<&Node> {
        let b = self.buckets.get(self.index(id))?;
        b.nodes.iter().find(|n| n.id == *id)
    }

    fn get_mut(&mut self, id: &NodeId) -> Option<&mut Node> {
        let i = self.index(id);
        self.buckets
            .get_mut(i)?
            .nodes
            .iter_mut()
            .find(|n| n.id == *id)
    }

    /// Whether a node with this id would find room now (free slot, bad member or a split).
    pub fn would_accept(&self, id: &NodeId, now: Instant) -> bool {
        if *id == self.own || self.get(id).is_some() {
            return false;
        }
        let i = self.index(id);
        let Some(b) = self.buckets.get(i) else {
            return false;
        };
        if b.nodes.iter().any(|n| n.status(now) == Status::Bad) {
            return true;
        }
        if self.len >= self.max_nodes {
            return false;
        }
        b.nodes.len() < K || (i == self.buckets.len() - 1 && self.buckets.len() < MAX_BUCKETS)
    }

    /// A node answered one of our queries.
    pub fn on_response(&mut self, now: Instant, id: &NodeId, addr: SocketAddr) -> Insert {
        if *id == self.own {
            return Insert::Ignored;
        }
        let i = self.index(id);
        if let Some(n) = self.get_mut(id) {
            if n.addr != addr {
                if n.status(now) != Status::Bad {
                    return Insert::Conflict;
                }
                n.addr = addr;
            }
            n.last_response = Some(now);
            n.fails = 0;
            if let Some(b) = self.buckets.get_mut(i) {
                b.last_changed = now;
            }
            return Insert::Updated;
        }
        self.insert(now, NodeInfo { id: *id, addr })
    }

    fn insert(&mut self, now: Instant, info: NodeInfo) -> Insert {
        let fresh = Node {
            id: info.id,
            addr: info.addr,
            last_response: Some(now),
            last_query: None,
            fails: 0,
            last_ping: None,
        };
        // Each pass either inserts, gives up, or splits the last bucket (at most 160 times).
        loop {
            let i = self.index(&info.id);
            let last = self.buckets.len() - 1;
            let room = self.len < self.max_nodes;
            let can_split = i == last && self.buckets.len() < MAX_BUCKETS && room;
            let Some(b) = self.buckets.get_mut(i) else {
                return Insert::Ignored;
            };
            if b.nodes.len() < K && room {
                b.nodes.push(fresh);
                b.last_changed = now;
                self.len += 1;
                return Insert::Added;
            }
            // BEP 5: "If any nodes in the bucket are known to have become bad, then one is
            // replaced by the new node."
            if let Some(slot) = b.nodes.iter_mut().find(|n| n.status(now) == Status::Bad) {
                *slot = fresh;
                b.last_changed = now;
                return Insert::Added;
            }
            if can_split {
                self.split(now);
                continue;
            }
            // Full of good or questionable nodes: keep as a replacement and ask for a ping of
            // the least recently seen questionable member.
            b.replacements.retain(|r| r.id != info.id);
            if b.replacements.len() >= REPLACEMENTS {
                b.replacements.remove(0);
            }
            b.replacements.push(info);
            let ping = b
                .nodes
                .iter_mut()
                .filter(|n| n.status(now) == Status::Questionable)
                .filter(|n| n.last_ping.map_or(true, |t| now.since(t) >= PING_INTERVAL))
                .min_by_key(|n| n.last_seen());
            let ping = ping.map(|n| {
                n.last_ping = Some(now);
                n.info()
            });
            return Insert::Full { ping };
        }
    }

    fn split(&mut self, now: Instant) {
        let depth = self.buckets.len() - 1;
        let Some(old) = self.buckets.pop() else {
            return;
        };
        let mut far = Bucket::new(now);
        let mut near = Bucket::new(now);
        far.last_changed = old.last_changed;
        near.last_changed = old.last_changed;
        for n in old.nodes {
            if common_prefix(&self.own, &n.id) == depth {
                far.nodes.push(n);
            } else {
                near.nodes.push(n);
            }
        }
        for r in old.replacements {
            if common_prefix(&self.own, &r.id) == depth {
                far.replacements.push(r);
            } else {
                near.replacements.push(r);
            }
        }
        self.buckets.push(far);
        self.buckets.push(near);
    }

    /// A node sent us a query: it stays good if it ever answered us (BEP 5).
    /// Returns whether the node is known at this address.
    pub fn on_query(&mut self, now: Instant, id: &NodeId, addr: SocketAddr) -> bool {
        match self.get_mut(id) {
            Some(n) if n.addr == addr => {
                n.last_query = Some(now);
                true
            }
            _ => false,
        }
    }

    /// A query to this node timed out. A node that becomes bad is replaced by the newest
    /// confirmed replacement, or dropped, so the table keeps only live nodes.
    pub fn on_failure(&mut self, now: Instant, id: &NodeId, addr: SocketAddr) {
        let i = self.index(id);
        let Some(b) = self.buckets.get_mut(i) else {
            return;
        };
        let Some(pos) = b.nodes.iter().position(|n| n.id == *id && n.addr == addr) else {
            b.replacements.retain(|r| r.id != *id);
            return;
        };
        let Some(n) = b.nodes.get_mut(pos) else {
            return;
        };
        n.fails = n.fails.saturating_add(1);
        if n.status(now) != Status::Bad {
            return;
        }
        match b.replacements.pop() {
            Some(r) => {
                // A replacement answered us when it was cached; it is good until proven bad.
                if let Some(slot) = b.nodes.get_mut(pos) {
                    *slot = Node {
                        id: r.id,
                        addr: r.addr,
                        last_response: Some(now),
                        last_query: None,
                        fails: 0,
                        last_ping: None,
                    };
                }
            }
            None => {
                b.nodes.swap_remove(pos);
                self.len -= 1;
            }
        }
        b.last_changed = now;
    }

    /// Up to `n` non-bad nodes closest to `target`, closest first.
    pub fn closest(&self, target: &NodeId, n: usize, now: Instant) -> Vec<NodeInfo> {
        let mut all: Vec<(NodeId, NodeInfo)> = self
            .nodes()
            .filter(|x| x.status(now) != Status::Bad)
            .map(|x| (distance(&x.id, target), x.info()))
            .collect();
        all.sort_unstable_by_key(|a| a.0);
        all.truncate(n);
        all.into_iter().map(|(_, i)| i).collect()
    }

    /// Questionable nodes not pinged recently, least recently seen first, marked as pinged.
    pub fn take_questionable(&mut self, now: Instant, max: usize) -> Vec<NodeInfo> {
        let mut q: Vec<&mut Node> = self
            .buckets
            .iter_mut()
            .flat_map(|b| b.nodes.iter_mut())
            .filter(|n| n.status(now) == Status::Questionable)
            .filter(|n| n.last_ping.map_or(true, |t| now.since(t) >= PING_INTERVAL))
            .collect();
        q.sort_unstable_by_key(|n| n.last_seen());
        q.into_iter()
            .take(max)
            .map(|n| {
                n.last_ping = Some(now);
                n.info()
            })
            .collect()
    }

    /// Random ids inside buckets unchanged for `GOOD_FOR` (BEP 5: refresh by a find_node on
    /// "a random ID in the range of the bucket"); each returned bucket counts as changed now.
    pub fn refresh_targets(&mut self, now: Instant, rng: &mut Rng, max: usize) -> Vec<NodeId> {
        let mut out = Vec::new();
        let last = self.buckets.len() - 1;
        for (i, b) in self.buckets.iter_mut().enumerate() {
            if out.len() >= max {
                break;
            }
            if now.since(b.last_changed) < GOOD_FOR {
                continue;
            }
            b.last_changed = now;
            out.push(random_in_bucket(&self.own, i, i == last, rng));
        }
        out
    }

    /// Counts of (good, questionable, bad) nodes.
    pub fn health(&self, now: Instant) -> (usize, usize, usize) {
        let mut h = (0, 0, 0);
        for n in self.nodes() {
            match n.status(now) {
                Status::Good => h.0 += 1,
                Status::Questionable => h.1 += 1,
                Status::Bad => h.2 += 1,
            }
        }
        h
    }
}

/// A random id sharing exactly `depth` leading bits with `own` (or at least `depth` for the
/// last bucket).
pub fn random_in_bucket(own: &NodeId, depth: usize, last: bool, rng: &mut Rng) -> NodeId {
    let mut id = [0u8; 20];
    rng.fill(&mut id);
    for bit in 0..depth.min(160) {
        let (byte, mask) = (bit / 8, 0x80u8 >> (bit % 8));
        id[byte] = (id[byte] & !mask) | (own[byte] & mask);
    }
    if !last && depth < 160 {
        let (byte, mask) = (depth / 8, 0x80u8 >> (depth % 8));
        id[byte] = (id[byte] & !mask) | (!own[byte] & mask);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u32) -> SocketAddr {
        SocketAddr::from((i.to_be_bytes(), 6881))
    }

    fn id_with_prefix(own: &NodeId, depth: usize, salt: u8) -> NodeId {
        let mut rng = Rng::new(u64::from(salt) + 1);
        random_in_bucket(own, depth, false, &mut rng)
    }

    #[test]
    fn empty_table_first_node_added() {
        let t0 = Instant::from_secs(1);
        let mut t = Table::new([0; 20], 100, t0);
        assert_eq!(t.on_response(t0, &[1; 20], addr(1)), Insert::Added);
        assert_eq!(t.on_response(t0, &[1; 20], addr(1)), Insert::Updated);
        assert_eq!(t.on_response(t0, &[0; 20], addr(2)), Insert::Ignored);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn full_own_bucket_splits_far_bucket_does_not() {
        let now = Instant::from_secs(1);
        let own = [0u8; 20];
        let mut t = Table::new(own, 1000, now);
        // 20 nodes in the far half (first bit differs): only K fit, the rest are cached.
        for s in 0..20u8 {
            let id = id_with_prefix(&own, 0, s);
            t.on_response(now, &id, addr(u32::from(s)));
        }
        assert_eq!(t.len(), K);
        // Nodes close to us keep splitting the own bucket.
        for s in 0..20u8 {
            let id = id_with_prefix(&own, 10 + s as usize, s);
            assert_eq!(
                t.on_response(now, &id, addr(100 + u32::from(s))),
                Insert::Added
            );
        }
        assert_eq!(t.len(), K + 20);
        assert!(t.bucket_count() > 10);
        // Every node sits in the bucket of its prefix length.
        for (i, b) in t.buckets.iter().enumerate() {
            for n in &b.nodes {
                let cp = common_prefix(&own, &n.id);
                assert!(cp == i || (i == t.buckets.len() - 1 && cp >= i));
            }
        }
    }

    #[test]
    fn full_bucket_of_questionable_asks_for_ping() {
        let t0 = Instant::from_secs(1);
        let own = [0u8; 20];
        let mut t = Table::new(own, 1000, t0);
        for s in 0..K as u8 {
            t.on_response(t0, &id_with_prefix(&own, 0, s), addr(u32::from(s)));
        }
        let later = t0 + GOOD_FOR + Duration::from_secs(1);
        match t.on_response(later, &id_with_prefix(&own, 0, 99), addr(99)) {
            Insert::Full { ping: Some(_) } => {}
            other => panic!("{other:?}"),
        }
        // Fresh: no ping requested when everything is good.
        match t.on_response(t0, &id_with_prefix(&own, 0, 98), addr(98)) {
            Insert::Full { ping: None } => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_node_replaced_by_cached_replacement() {
        let now = Instant::from_secs(1);
        let own = [0u8; 20];
        let mut t = Table::new(own, 1000, now);
        let ids: Vec<NodeId> = (0..K as u8).map(|s| id_with_prefix(&own, 0, s)).collect();
        for (i, id) in ids.iter().enumerate() {
            t.on_response(now, id, addr(i as u32));
        }
        let spare = id_with_prefix(&own, 0, 200);
        assert!(matches!(
            t.on_response(now, &spare, addr(200)),
            Insert::Full { .. }
        ));
        t.on_failure(now, &ids[0], addr(0));
        assert!(t.get(&ids[0]).is_some(), "one failure is not bad yet");
        t.on_failure(now, &ids[0], addr(0));
        assert!(t.get(&ids[0]).is_none());
        assert!(t.get(&spare).is_some());
        assert_eq!(t.len(), K);
    }

    #[test]
    fn bad_node_without_replacement_dropped() {
        let now = Instant::from_secs(1);
        let mut t = Table::new([0; 20], 100, now);
        t.on_response(now, &[9; 20], addr(9));
        t.on_failure(now, &[9; 20], addr(9));
        t.on_failure(now, &[9; 20], addr(9));
        assert!(t.is_empty());
    }

    #[test]
    fn status_follows_bep5_timers() {
        let t0 = Instant::from_secs(10);
        let mut t = Table::new([0; 20], 100, t0);
        t.on_response(t0, &[5; 20], addr(5));
        let n = |t: &Table| t.get(&[5; 20]).cloned().unwrap();
        assert_eq!(n(&t).status(t0), Status::Good);
        let late = t0 + GOOD_FOR;
        assert_eq!(n(&t).status(late), Status::Questionable);
        // A query from a node that once answered keeps it good.
        assert!(t.on_query(late, &[5; 20], addr(5)));
        assert_eq!(n(&t).status(late), Status::Good);
        assert!(!t.on_query(late, &[5; 20], addr(6)));
    }

    #[test]
    fn known_id_from_new_address_conflicts() {
        let now = Instant::from_secs(1);
        let mut t = Table::new([0; 20], 100, now);
        t.on_response(now, &[5; 20], addr(5));
        assert_eq!(t.on_response(now, &[5; 20], addr(6)), Insert::Conflict);
        assert_eq!(t.get(&[5; 20]).unwrap().addr, addr(5));
    }

    #[test]
    fn max_nodes_bounds_table() {
        let now = Instant::from_secs(1);
        let own = [0u8; 20];
        let mut t = Table::new(own, 12, now);
        let mut rng = Rng::new(3);
        for i in 0..500u32 {
            let mut id = [0u8; 20];
            rng.fill(&mut id);
            t.on_response(now, &id, addr(i));
        }
        assert!(t.len() <= 12);
        assert_eq!(t.nodes().count(), t.len());
    }

    #[test]
    fn closest_sorted_by_xor_distance() {
        let now = Instant::from_secs(1);
        let mut t = Table::new([0; 20], 1000, now);
        let mut rng = Rng::new(4);
        let mut ids = Vec::new();
        for i in 0..200u32 {
            let mut id = [0u8; 20];
            rng.fill(&mut id);
            if t.on_response(now, &id, addr(i)) == Insert::Added {
                ids.push(id);
            }
        }
        let target = [0x55; 20];
        let got = t.closest(&target, 8, now);
        ids.sort_by_key(|id| distance(id, &target));
        let want: Vec<NodeId> = ids.into_iter().take(8).collect();
        assert_eq!(got.iter().map(|n| n.id).collect::<Vec<_>>(), want);
    }

    #[test]
    fn stale_bucket_yields_target_in_range() {
        let t0 = Instant::from_secs(1);
        let own = [0xAB; 20];
        let mut t = Table::new(own, 1000, t0);
        let mut rng = Rng::new(5);
        for i in 0..100u32 {
            let mut id = [0u8; 20];
            rng.fill(&mut id);
            t.on_response(t0, &id, addr(i));
        }
        assert!(t.refresh_targets(t0, &mut rng, 100).is_empty());
        let later = t0 + GOOD_FOR;
        let targets = t.refresh_targets(later, &mut rng, 100);
        assert_eq!(targets.len(), t.bucket_count());
        for (i, target) in targets.iter().enumerate() {
            let cp = common_prefix(&own, target);
            assert!(
                cp == i || (i == t.bucket_count() - 1 && cp >= i),
                "{i} {cp}"
            );
        }
        assert!(t.refresh_targets(later, &mut rng, 100).is_empty());
    }

    #[test]
    fn questionable_taken_once_per_interval() {
        let t0 = Instant::from_secs(1);
        let mut t = Table::new([0; 20], 100, t0);
        t.on_response(t0, &[1; 20], addr(1));
        let late = t0 + GOOD_FOR;
        assert_eq!(t.take_questionable(late, 8).len(), 1);
        assert!(t.take_questionable(late, 8).is_empty());
        assert_eq!(t.take_questionable(late + PING_INTERVAL, 8).len(), 1);
    }
}
