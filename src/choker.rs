//! Layer 2: the choker — which peers we upload to (BEP 3, "choking" and "optimistic
//! unchoking").
//!
//! A pure state machine: the engine hands in a snapshot of its peers (`PeerInfo`), the current
//! `now` and an `Rng`, and gets back only the choke/unchoke *changes* to send. It never reads a
//! clock, touches a socket or measures rates itself (rates come in the snapshot).
//!
//! Policy: every 10 s, unchoke the `upload_slots - 1` interested peers that give us the best
//! download rate (tit-for-tat; snubbed peers excluded) — or, when seeding, those we can upload
//! to fastest — plus one optimistic unchoke, chosen at random among the other interested peers
//! and rotated every 30 s, new connections three times as likely. Only interested peers are
//! unchoked (keeps the code simple; BEP 3's "unchoke uninterested fast uploaders" is omitted).

use std::time::Duration;

use crate::rng::Rng;
use crate::time::Instant;

/// BEP 3: "only changing who's choked once every ten seconds" avoids fibrillation.
pub const RECHOKE_INTERVAL: Duration = Duration::from_secs(10);

/// BEP 3: "Which peer is optimistically unchoked rotates every 30 seconds."
pub const OPTIMISTIC_INTERVAL: Duration = Duration::from_secs(30);

/// Connections younger than this count as new for the optimistic draw.
pub const NEW_PEER_AGE: Duration = Duration::from_secs(60);

/// BEP 3: "new connections are three times as likely to start as the current optimistic
/// unchoke" — so they get a piece to upload quickly.
pub const NEW_PEER_WEIGHT: u64 = 3;

/// The engine's view of one connection at rechoke time.
#[derive(Clone, Copy, Debug)]
pub struct PeerInfo {
    /// Any id stable for the life of the connection.
    pub key: u32,
    /// The peer is interested in us.
    pub interested: bool,
    /// Currently choked by us.
    pub choked: bool,
    /// Bytes/s we receive from them.
    pub down_rate: u64,
    /// Bytes/s we send them.
    pub up_rate: u64,
    /// They sent us nothing for a long time although we asked.
    pub snubbed: bool,
    pub connected_at: Instant,
}

pub struct Choker {
    upload_slots: usize,
    next_rechoke: Instant,
    optimistic: Option<u32>,
    /// When the current optimistic unchoke was chosen.
    optimistic_at: Instant,
    /// Keys we have unchoked, per the last rechoke plus the `free_slot_for` fast path.
    unchoked: Vec<u32>,
    /// (key, last time it went from choked to unchoked), sorted by key. Fair tie-break.
    history: Vec<(u32, Instant)>,
}

/// Working memory of `Choker::rechoke`, kept by the caller and shared by all its chokers, so
/// an idle torrent does not carry buffers it uses once every 10 s.
#[derive(Default)]
pub struct Scratch {
    order: Vec<usize>,
    want: Vec<bool>,
}

impl Choker {
    /// `upload_slots` counts the optimistic slot; 0 means upload to nobody.
    pub fn new(upload_slots: usize) -> Choker {
        Choker {
            upload_slots,
            next_rechoke: Instant::ZERO,
            optimistic: None,
            optimistic_at: Instant::ZERO,
            unchoked: Vec::new(),
            history: Vec::new(),
        }
    }

    /// When `rechoke` should run next.
    pub fn poll_at(&self) -> Instant {
        self.next_rechoke
    }

    pub fn rechoke_due(&self, now: Instant) -> bool {
        now >= self.next_rechoke
    }

    pub fn optimistic(&self) -> Option<u32> {
        self.optimistic
    }

    pub fn upload_slots(&self) -> usize {
        self.upload_slots
    }

    /// Recompute who is unchoked and append the changes to `out` as `(key, unchoke)`: `true`
    /// means send unchoke, `false` send choke. Peers whose state does not change are not
    /// listed. Call at `poll_at()` (every 10 s); calling early is harmless — the optimistic
    /// unchoke still rotates only every 30 s.
    pub fn rechoke(
        &mut self,
        now: Instant,
        seeding: bool,
        peers: &[PeerInfo],
        rng: &mut Rng,
        out: &mut Vec<(u32, bool)>,
        scratch: &mut Scratch,
    ) {
        self.next_rechoke = now + RECHOKE_INTERVAL;
        self.history
            .retain(|(k, _)| peers.iter().any(|p| p.key == *k));

        // Regular slots: rank interested peers. Leeching reciprocates (their upload to us);
        // seeding uses our upload to them (BEP 3: "If a downloader has a complete file, it uses
        // its upload rate"). Snubbed peers gave us nothing lately: no reciprocation slot.
        let order = &mut scratch.order;
        order.clear();
        order.extend(
            (0..peers.len()).filter(|&i| peers[i].interested && (seeding || !peers[i].snubbed)),
        );
        let rate = |p: &PeerInfo| if seeding { p.up_rate } else { p.down_rate };
        order.sort_unstable_by(|&a, &b| {
            let (pa, pb) = (&peers[a], &peers[b]);
            rate(pb)
                .cmp(&rate(pa))
                .then_with(|| self.last_unchoked(pa.key).cmp(&self.last_unchoked(pb.key)))
                .then_with(|| pa.key.cmp(&pb.key))
        });
        let regular = self.upload_slots.saturating_sub(1).min(order.len());
        let want = &mut scratch.want;
        want.clear();
        want.resize(peers.len(), false);
        for &i in &order[..regular] {
            want[i] = true;
        }

        self.choose_optimistic(now, peers, want, rng);
        if let Some(k) = self.optimistic {
            if let Some(i) = peers.iter().position(|p| p.key == k) {
                want[i] = true;
            }
        }

        self.unchoked.clear();
        for (p, &w) in peers.iter().zip(want.iter()) {
            if w {
                self.unchoked.push(p.key);
            }
            if w == p.choked {
                out.push((p.key, w));
                if w {
                    self.record_unchoke(p.key, now);
                }
            }
        }
    }

    /// Fast path between rechokes: `key` just became interested. Returns true if a slot is
    /// free, in which case the caller unchokes it now (the choker counts it as unchoked).
    /// False if the slots are full or the peer is already unchoked.
    pub fn free_slot_for(&mut self, now: Instant, key: u32) -> bool {
        if self.unchoked.contains(&key) || self.unchoked.len() >= self.upload_slots {
            return false;
        }
        self.unchoked.push(key);
        self.record_unchoke(key, now);
        true
    }

    /// The connection closed: its slot (and the optimistic slot, if it held it) frees up; the
    /// next rechoke picks a new optimistic peer at once.
    pub fn remove_peer(&mut self, key: u32) {
        self.unchoked.retain(|&k| k != key);
        if self.optimistic == Some(key) {
            self.optimistic = None;
        }
        if let Ok(i) = self.history.binary_search_by_key(&key, |e| e.0) {
            self.history.remove(i);
        }
    }

    /// Keeps the current optimistic peer for 30 s while it stays eligible (interested, not
    /// promoted to a regular slot); otherwise draws a new one among the other interested peers
    /// not in a regular slot, preferring ones that are choked now, new peers weighted 3x.
    fn choose_optimistic(
        &mut self,
        now: Instant,
        peers: &[PeerInfo],
        regular: &[bool],
        rng: &mut Rng,
    ) {
        if self.upload_slots == 0 {
            self.optimistic = None;
            return;
        }
        let current = self.optimistic.filter(|&k| {
            peers
                .iter()
                .zip(regular)
                .any(|(p, &r)| p.key == k && p.interested && !r)
        });
        if current.is_some() && now.since(self.optimistic_at) < OPTIMISTIC_INTERVAL {
            self.optimistic = current;
            return;
        }
        let weight = |p: &PeerInfo| {
            if now.since(p.connected_at) < NEW_PEER_AGE {
                NEW_PEER_WEIGHT
            } else {
                1
            }
        };
        let mut pick = None;
        for only_choked in [true, false] {
            let eligible = |(p, &r): &(&PeerInfo, &bool)| {
                p.interested && !r && Some(p.key) != current && (p.choked || !only_choked)
            };
            let total: u64 = peers
                .iter()
                .zip(regular)
                .filter(eligible)
                .map(|(p, _)| weight(p))
                .sum();
            if total == 0 {
                continue;
            }
            let mut ticket = rng.next_u64() % total;
            for (p, _) in peers.iter().zip(regular).filter(eligible) {
                let w = weight(p);
                if ticket < w {
                    pick = Some(p.key);
                    break;
                }
                ticket -= w;
            }
            break;
        }
        match pick {
            Some(k) => {
                self.optimistic = Some(k);
                self.optimistic_at = now;
            }
            // Nobody else to try: keep the current one (if still eligible) and retry next time.
            None => self.optimistic = current,
        }
    }

    fn last_unchoked(&self, key: u32) -> Option<Instant> {
        self.history
            .binary_search_by_key(&key, |e| e.0)
            .ok()
            .map(|i| self.history[i].1)
    }

    fn record_unchoke(&mut self, key: u32, now: Instant) {
        match self.history.binary_search_by_key(&key, |e| e.0) {
            Ok(i) => self.history[i].1 = now,
            Err(i) => self.history.insert(i, (key, now)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(key: u32, down: u64, up: u64) -> PeerInfo {
        PeerInfo {
            key,
            interested: true,
            choked: true,
            down_rate: down,
            up_rate: up,
            snubbed: false,
            connected_at: Instant::ZERO,
        }
    }

    /// Runs a rechoke at `secs`, applies the changes to `peers` like the engine would, and
    /// returns the changes sorted by key.
    fn run(
        ch: &mut Choker,
        secs: u64,
        seeding: bool,
        peers: &mut [PeerInfo],
        rng: &mut Rng,
    ) -> Vec<(u32, bool)> {
        let mut out = Vec::new();
        let mut scratch = Scratch::default();
        ch.rechoke(
            Instant::from_secs(secs),
            seeding,
            peers,
            rng,
            &mut out,
            &mut scratch,
        );
        for &(k, unchoke) in &out {
            let p = peers.iter_mut().find(|p| p.key == k).unwrap();
            assert_eq!(p.choked, unchoke, "change {k} is not a change");
            p.choked = !unchoke;
        }
        out.sort();
        out
    }

    fn unchoked(peers: &[PeerInfo]) -> Vec<u32> {
        peers.iter().filter(|p| !p.choked).map(|p| p.key).collect()
    }

    #[test]
    fn leeching_rechoke_unchokes_best_down_rates() {
        let mut ch = Choker::new(4);
        let mut peers: Vec<PeerInfo> = [10, 60, 30, 50, 20, 40]
            .iter()
            .enumerate()
            .map(|(i, &r)| peer(i as u32 + 1, r, 1000 - r))
            .collect();
        let out = run(&mut ch, 0, false, &mut peers, &mut Rng::new(1));
        assert_eq!(out.len(), 4);
        let up = unchoked(&peers);
        for k in [2, 4, 6] {
            assert!(up.contains(&k), "{up:?}");
        }
        let opt = ch.optimistic().unwrap();
        assert!([1, 3, 5].contains(&opt));
        assert!(up.contains(&opt));
        assert!(out.iter().all(|&(_, u)| u));
    }

    #[test]
    fn leeching_snubbed_excluded_from_regular_slots() {
        let mut ch = Choker::new(3);
        let mut peers = vec![
            peer(1, 10, 0),
            peer(2, 60, 0),
            peer(3, 30, 0),
            peer(4, 50, 0),
        ];
        peers[1].snubbed = true;
        for seed in 1..20 {
            let mut ch2 = Choker::new(3);
            let mut ps = peers.clone();
            run(&mut ch2, 0, false, &mut ps, &mut Rng::new(seed));
            let up = unchoked(&ps);
            assert!(up.contains(&4) && up.contains(&3), "{up:?}");
            // The snubbed peer can only get in as the optimistic unchoke.
            assert_eq!(up.contains(&2), ch2.optimistic() == Some(2));
        }
        run(&mut ch, 0, false, &mut peers, &mut Rng::new(1));
        assert_eq!(unchoked(&peers).len(), 3);
    }

    #[test]
    fn rechoke_emits_only_changes() {
        let mut ch = Choker::new(3);
        let mut peers = vec![
            peer(1, 10, 0),
            peer(2, 60, 0),
            peer(3, 30, 0),
            peer(4, 50, 0),
        ];
        let mut rng = Rng::new(5);
        assert_eq!(run(&mut ch, 0, false, &mut peers, &mut rng).len(), 3);
        assert!(run(&mut ch, 10, false, &mut peers, &mut rng).is_empty());
        // Peer 3 overtakes peer 4: peer 4 loses its slot, the one choked peer gets in (if
        // peer 3 was the optimistic one, it moves to a regular slot and peer 1 becomes
        // optimistic early, since the slot it held is gone).
        let opt = ch.optimistic().unwrap();
        assert!(opt == 1 || opt == 3);
        let waiting = 4 - opt;
        peers[2].down_rate = 100;
        let out = run(&mut ch, 20, false, &mut peers, &mut rng);
        let mut expect = vec![(waiting, true), (4, false)];
        expect.sort();
        assert_eq!(out, expect);
        assert_eq!(unchoked(&peers), vec![1, 2, 3]);
    }

    #[test]
    fn optimistic_rotates_every_30s_not_every_call() {
        let mut ch = Choker::new(2);
        let mut peers: Vec<PeerInfo> = (1..=6).map(|k| peer(k, 5, 0)).collect();
        peers[0].down_rate = 1000;
        let mut rng = Rng::new(3);
        run(&mut ch, 0, false, &mut peers, &mut rng);
        let first = ch.optimistic().unwrap();
        assert_ne!(first, 1);
        assert_eq!(unchoked(&peers), {
            let mut v = vec![1, first];
            v.sort();
            v
        });
        for t in [10, 20, 25] {
            assert!(
                run(&mut ch, t, false, &mut peers, &mut rng).is_empty(),
                "t={t}"
            );
            assert_eq!(ch.optimistic(), Some(first));
        }
        let out = run(&mut ch, 30, false, &mut peers, &mut rng);
        let second = ch.optimistic().unwrap();
        assert_ne!(second, first);
        assert_ne!(second, 1);
        let mut expect = vec![(first, false), (second, true)];
        expect.sort();
        assert_eq!(out, expect);
    }

    #[test]
    fn optimistic_new_peers_weighted_three_times() {
        let mut new_wins = 0;
        let trials = 3000;
        for seed in 1..=trials {
            let mut ch = Choker::new(1);
            let mut peers: Vec<PeerInfo> = (1..=4).map(|k| peer(k, 0, 0)).collect();
            peers[3].connected_at = Instant::from_secs(100);
            run(&mut ch, 120, false, &mut peers, &mut Rng::new(seed));
            if ch.optimistic() == Some(4) {
                new_wins += 1;
            }
        }
        // Weight 3 against 1+1+1: half the draws.
        let share = new_wins as f64 / trials as f64;
        assert!((0.42..0.58).contains(&share), "new peer share {share}");
    }

    #[test]
    fn optimistic_leaving_is_replaced_before_30s() {
        let mut ch = Choker::new(2);
        let mut peers: Vec<PeerInfo> = (1..=4).map(|k| peer(k, 5, 0)).collect();
        peers[0].down_rate = 99;
        let mut rng = Rng::new(8);
        run(&mut ch, 0, false, &mut peers, &mut rng);
        let opt = ch.optimistic().unwrap();
        ch.remove_peer(opt);
        peers.retain(|p| p.key != opt);
        let out = run(&mut ch, 10, false, &mut peers, &mut rng);
        let new_opt = ch.optimistic().unwrap();
        assert_ne!(new_opt, opt);
        assert_eq!(out, vec![(new_opt, true)]);
    }

    #[test]
    fn seeding_ranks_by_upload_rate() {
        let mut ch = Choker::new(3);
        // Download rates say the opposite; seeding must ignore them (and snubbing).
        let mut peers = vec![
            peer(1, 900, 10),
            peer(2, 800, 70),
            peer(3, 700, 20),
            peer(4, 600, 50),
        ];
        peers[1].snubbed = true;
        run(&mut ch, 0, true, &mut peers, &mut Rng::new(2));
        let up = unchoked(&peers);
        assert!(up.contains(&2) && up.contains(&4), "{up:?}");
        assert_eq!(up.len(), 3);
    }

    #[test]
    fn seeding_equal_rates_rotate_least_recently_unchoked() {
        let mut ch = Choker::new(2);
        let mut peers: Vec<PeerInfo> = (1..=3).map(|k| peer(k, 0, 0)).collect();
        let mut rng = Rng::new(4);
        run(&mut ch, 0, true, &mut peers, &mut rng);
        let opt = ch.optimistic().unwrap();
        assert!(!peers[0].choked, "all tied and never unchoked: lowest key");
        let never = [2, 3].into_iter().find(|&k| k != opt).unwrap();
        let out = run(&mut ch, 10, true, &mut peers, &mut rng);
        // The regular slot moves to the peer that has waited longest.
        assert_eq!(out, vec![(1, false), (never, true)]);
        assert_eq!(ch.optimistic(), Some(opt));
    }

    #[test]
    fn uninterested_peers_get_choked() {
        let mut ch = Choker::new(4);
        let mut peers = vec![peer(1, 10, 0), peer(2, 20, 0)];
        run(&mut ch, 0, false, &mut peers, &mut Rng::new(1));
        assert_eq!(unchoked(&peers), vec![1, 2]);
        peers[0].interested = false;
        let out = run(&mut ch, 10, false, &mut peers, &mut Rng::new(1));
        assert_eq!(out, vec![(1, false)]);
    }

    #[test]
    fn zero_slots_chokes_everyone() {
        let mut ch = Choker::new(0);
        let mut peers = vec![peer(1, 10, 0), peer(2, 20, 0)];
        peers[0].choked = false;
        let out = run(&mut ch, 0, false, &mut peers, &mut Rng::new(1));
        assert_eq!(out, vec![(1, false)]);
        assert!(!ch.free_slot_for(Instant::ZERO, 2));
    }

    #[test]
    fn free_slot_for_fills_then_refuses() {
        let mut ch = Choker::new(2);
        let t = Instant::from_secs(1);
        assert!(ch.free_slot_for(t, 1));
        assert!(!ch.free_slot_for(t, 1), "already unchoked");
        assert!(ch.free_slot_for(t, 2));
        assert!(!ch.free_slot_for(t, 3), "slots full");
        ch.remove_peer(1);
        assert!(ch.free_slot_for(t, 3));
    }

    #[test]
    fn poll_at_is_ten_seconds_after_rechoke() {
        let mut ch = Choker::new(4);
        assert_eq!(ch.poll_at(), Instant::ZERO);
        assert!(ch.rechoke_due(Instant::ZERO));
        let mut out = Vec::new();
        ch.rechoke(
            Instant::from_secs(5),
            false,
            &[],
            &mut Rng::new(1),
            &mut out,
            &mut Scratch::default(),
        );
        assert!(out.is_empty());
        assert_eq!(ch.poll_at(), Instant::from_secs(15));
        assert!(!ch.rechoke_due(Instant::from_secs(14)));
    }
}
