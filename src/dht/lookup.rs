//! Layer 2: one iterative Kademlia search in one address family (BEP 5 "Overview": query
//! closer and closer nodes "until it cannot find any closer nodes").
//!
//! Holds a bounded candidate list sorted by XOR distance to the target, at most `ALPHA`
//! queries in flight, and decides when the search is over: when the `K` closest live
//! candidates have all answered. It only chooses whom to ask next; the `Dht` sends the queries,
//! matches replies and feeds results back. No sockets, no clock reads.

use super::krpc::{NodeId, NodeInfo};
use super::routing::{distance, K};
use std::net::SocketAddr;

/// Queries in flight per search (Kademlia's alpha).
pub const ALPHA: usize = 3;
/// Candidates kept per search; farther ones are dropped. Bounds memory per lookup while
/// leaving room beyond the K closest for nodes that do not answer.
pub const MAX_CANDIDATES: usize = 32;
/// Queries per candidate before it counts as failed. BEP 5 suggests trying a silent node
/// "once more"; one lost datagram should not drop one of the K closest from the result.
pub const MAX_TRIES: u8 = 2;
/// Addresses without known id (bootstrap routers) queried at the start of a search.
pub const MAX_SEEDS: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CandState {
    New,
    InFlight,
    Responded,
    Failed,
}

#[derive(Clone, Debug)]
pub struct Candidate {
    pub info: NodeInfo,
    pub dist: NodeId,
    pub state: CandState,
    /// How many replies away from the seeds this node was learned (seeds are hop 0).
    pub hop: u32,
    /// The write token it gave us (get_peers).
    pub token: Option<Vec<u8>>,
    /// Queries sent to it.
    pub tries: u8,
}

#[derive(Clone, Debug)]
pub struct Search {
    pub target: NodeId,
    own: NodeId,
    pub cands: Vec<Candidate>,
    /// Seed queries (id unknown) still outstanding.
    pub seeds_in_flight: usize,
    /// Queries sent by this search.
    pub messages: u32,
}

impl Search {
    pub fn new(own: NodeId, target: NodeId) -> Search {
        Search {
            target,
            own,
            cands: Vec::with_capacity(MAX_CANDIDATES),
            seeds_in_flight: 0,
            messages: 0,
        }
    }

    /// Adds a node learned at `hop`; ignores ourselves, duplicates and nodes farther than
    /// the `MAX_CANDIDATES` closest.
    pub fn add(&mut self, info: NodeInfo, hop: u32) {
        if info.id == self.own
            || self
                .cands
                .iter()
                .any(|c| c.info.id == info.id || c.info.addr == info.addr)
        {
            return;
        }
        let dist = distance(&info.id, &self.target);
        let pos = self.cands.partition_point(|c| c.dist < dist);
        if pos >= MAX_CANDIDATES {
            return;
        }
        self.cands.insert(
            pos,
            Candidate {
                info,
                dist,
                state: CandState::New,
                hop,
                token: None,
                tries: 0,
            },
        );
        self.cands.truncate(MAX_CANDIDATES);
    }

    pub fn in_flight(&self) -> usize {
        self.seeds_in_flight
            + self
                .cands
                .iter()
                .filter(|c| c.state == CandState::InFlight)
                .count()
    }

    /// The next candidate to query, marked in flight, or `None` if alpha is reached or no
    /// unqueried candidate is among the K closest live ones.
    pub fn next_query(&mut self) -> Option<NodeInfo> {
        if self.in_flight() >= ALPHA {
            return None;
        }
        let mut live = 0;
        for c in self.cands.iter_mut() {
            if c.state == CandState::Failed {
                continue;
            }
            if live >= K {
                break;
            }
            live += 1;
            if c.state == CandState::New {
                c.state = CandState::InFlight;
                c.tries = c.tries.saturating_add(1);
                self.messages = self.messages.saturating_add(1);
                return Some(c.info);
            }
        }
        None
    }

    /// Finds the candidate queried at `addr`.
    pub fn find_mut(&mut self, addr: &SocketAddr) -> Option<&mut Candidate> {
        self.cands.iter_mut().find(|c| c.info.addr == *addr)
    }

    /// A queried candidate answered with `nodes`: marks it, records its token and adds the
    /// nodes one hop further. A responder not among the candidates (a seed) is added.
    pub fn on_response(
        &mut self,
        from: NodeInfo,
        token: Option<Vec<u8>>,
        nodes: &[NodeInfo],
    ) -> u32 {
        let hop = match self.find_mut(&from.addr) {
            Some(c) => {
                c.state = CandState::Responded;
                c.token = token;
                c.hop
            }
            None => {
                self.add(from, 0);
                if let Some(c) = self.find_mut(&from.addr) {
                    c.state = CandState::Responded;
                    c.token = token;
                }
                0
            }
        };
        for n in nodes {
            self.add(*n, hop.saturating_add(1));
        }
        hop
    }

    /// A query timed out: the candidate is asked again until `MAX_TRIES`, then failed.
    pub fn on_failure(&mut self, addr: &SocketAddr) {
        if let Some(c) = self.find_mut(addr) {
            if c.state == CandState::InFlight {
                c.state = if c.tries < MAX_TRIES {
                    CandState::New
                } else {
                    CandState::Failed
                };
            }
        }
    }

    /// Over when nothing is in flight and no candidate is left to ask among the K closest
    /// live ones, i.e. those K have all answered (or there are no more candidates).
    pub fn is_done(&self) -> bool {
        if self.seeds_in_flight > 0 {
            return false;
        }
        let mut live = 0;
        for c in &self.cands {
            if c.state == CandState::Failed {
                continue;
            }
            if live >= K {
                break;
            }
            live += 1;
            if c.state != CandState::Responded {
                return false;
            }
        }
        true
    }

    /// The K closest nodes that answered, closest first.
    pub fn closest_responded(&self) -> Vec<&Candidate> {
        self.cands
            .iter()
            .filter(|c| c.state == CandState::Responded)
            .take(K)
            .collect()
    }

    /// Longest chain of replies that led to a responding node (hops + 1).
    pub fn rounds(&self) -> u32 {
        self.cands
            .iter()
            .filter(|c| c.state == CandState::Responded)
            .map(|c| c.hop.saturating_add(1))
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(b: u8) -> NodeInfo {
        let mut id = [0u8; 20];
        id[0] = b;
        NodeInfo {
            id,
            addr: SocketAddr::from(([10, 0, 0, b], 6881)),
        }
    }

    #[test]
    fn candidates_sorted_and_bounded() {
        let mut s = Search::new([0xff; 20], [0; 20]);
        for b in (1..=60u8).rev() {
            s.add(node(b), 0);
        }
        s.add(node(3), 0);
        assert_eq!(s.cands.len(), MAX_CANDIDATES);
        assert_eq!(s.cands[0].info, node(1));
        assert!(s.cands.windows(2).all(|w| w[0].dist < w[1].dist));
    }

    #[test]
    fn alpha_bounds_in_flight() {
        let mut s = Search::new([0xff; 20], [0; 20]);
        for b in 1..=20u8 {
            s.add(node(b), 0);
        }
        let sent: Vec<_> = std::iter::from_fn(|| s.next_query()).collect();
        assert_eq!(sent.len(), ALPHA);
        assert_eq!(sent[0], node(1));
        s.on_response(node(1), None, &[]);
        assert_eq!(s.next_query(), Some(node(4)));
    }

    #[test]
    fn done_when_k_closest_responded() {
        let mut s = Search::new([0xff; 20], [0; 20]);
        for b in 1..=20u8 {
            s.add(node(b), 0);
        }
        let mut guard = 0;
        while !s.is_done() {
            guard += 1;
            assert!(guard < 100);
            let q = s.next_query().expect("progress");
            if q == node(2) {
                s.on_failure(&q.addr);
                assert_eq!(s.cands[1].state, CandState::New, "retried once");
                let again = s.next_query().unwrap();
                assert_eq!(again, node(2));
                s.on_failure(&again.addr);
            } else {
                s.on_response(q, Some(vec![1]), &[]);
            }
        }
        let got: Vec<u8> = s.closest_responded().iter().map(|c| c.info.id[0]).collect();
        assert_eq!(got, vec![1, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(s.messages, 10);
    }

    #[test]
    fn closer_nodes_from_reply_are_queried_next() {
        let mut s = Search::new([0xff; 20], [0; 20]);
        s.add(node(50), 0);
        let q = s.next_query().unwrap();
        s.on_response(q, None, &[node(2), node(1)]);
        assert_eq!(s.next_query(), Some(node(1)));
        assert_eq!(s.cands[0].hop, 1);
        s.on_response(node(1), None, &[]);
        assert_eq!(s.rounds(), 2);
    }

    #[test]
    fn empty_search_is_done_and_seed_blocks_done() {
        let mut s = Search::new([0xff; 20], [0; 20]);
        assert!(s.is_done());
        s.seeds_in_flight = 1;
        assert!(!s.is_done());
        assert_eq!(s.in_flight(), 1);
    }
}
