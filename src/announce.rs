//! Layer 2: when to announce to which tracker (BEP 3 intervals, BEP 12 tiers).
//!
//! Pure scheduling: `poll` says which URL to announce to next and with which event; the
//! engine performs the HTTP (or later UDP) exchange and reports back with `on_success` or
//! `on_failure`. Within a tier the URLs are shuffled once; a tracker that answers moves to the
//! front of its tier; failures fall through to the next URL, then the next tier, and after a
//! full round back off exponentially (30 s doubling up to 30 min).

use std::time::Duration;

use crate::rng::Rng;
use crate::time::Instant;
use crate::tracker::Event;

const MIN_BACKOFF: Duration = Duration::from_secs(15);
const MAX_BACKOFF: Duration = Duration::from_secs(1800);
/// Interval used when a tracker gives none (BEP 3 leaves it to the client).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1800);
/// Shortest re-announce we accept from a tracker, whatever it asks for.
const MIN_INTERVAL: Duration = Duration::from_secs(30);
/// Most tracker URLs kept per torrent (hostile torrents list thousands).
pub const MAX_TRACKERS: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub url: String,
    pub event: Event,
    pub tier: usize,
    pub index: usize,
}

#[derive(Clone, Debug, Default)]
pub struct TrackerStatus {
    pub url: String,
    pub last_error: Option<String>,
    pub last_warning: Option<String>,
    pub seeders: Option<u32>,
    pub leechers: Option<u32>,
    pub last_peers: usize,
}

/// What a tracker said in a successful announce, as far as scheduling and status go.
#[derive(Clone, Debug, Default)]
pub struct Reply {
    pub interval: Option<u32>,
    pub min_interval: Option<u32>,
    pub warning: Option<String>,
    pub peers: usize,
    pub seeders: Option<u32>,
    pub leechers: Option<u32>,
}

pub struct Announcer {
    tiers: Vec<Vec<TrackerStatus>>,
    tier: usize,
    index: usize,
    next: Instant,
    in_flight: bool,
    started: bool,
    completed_pending: bool,
    round_failures: u32,
}

impl Announcer {
    pub fn new(tiers: &[Vec<String>], rng: &mut Rng) -> Announcer {
        let mut out: Vec<Vec<TrackerStatus>> = Vec::new();
        let mut total = 0;
        for tier in tiers {
            let mut t: Vec<TrackerStatus> = Vec::new();
            for url in tier {
                if total >= MAX_TRACKERS {
                    break;
                }
                if !url.is_empty() {
                    total += 1;
                    t.push(TrackerStatus {
                        url: url.clone(),
                        ..Default::default()
                    });
                }
            }
            rng.shuffle(&mut t);
            if !t.is_empty() {
                out.push(t);
            }
        }
        Announcer {
            tiers: out,
            tier: 0,
            index: 0,
            next: Instant::ZERO,
            in_flight: false,
            started: false,
            completed_pending: false,
            round_failures: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }

    pub fn trackers(&self) -> impl Iterator<Item = &TrackerStatus> {
        self.tiers.iter().flatten()
    }

    /// The download finished: tell the tracker soon with `completed`.
    pub fn completed(&mut self, now: Instant) {
        self.completed_pending = true;
        if !self.in_flight {
            self.next = now;
        }
    }

    /// Asks for an announce sooner than scheduled (e.g. we need more peers).
    pub fn poll_at(&self) -> Instant {
        self.next
    }

    pub fn poll(&mut self, now: Instant) -> Option<Job> {
        if self.in_flight || self.tiers.is_empty() || now < self.next {
            return None;
        }
        let t = self.tiers.get(self.tier)?.get(self.index)?;
        let event = if !self.started {
            Event::Started
        } else if self.completed_pending {
            Event::Completed
        } else {
            Event::None
        };
        self.in_flight = true;
        Some(Job {
            url: t.url.clone(),
            event,
            tier: self.tier,
            index: self.index,
        })
    }

    /// The final `stopped` announce to the tracker that last answered, if any started.
    pub fn stop_job(&self) -> Option<Job> {
        if !self.started {
            return None;
        }
        let t = self.tiers.get(self.tier)?.get(self.index)?;
        Some(Job {
            url: t.url.clone(),
            event: Event::Stopped,
            tier: self.tier,
            index: self.index,
        })
    }

    fn status(&mut self, job: &Job) -> Option<&mut TrackerStatus> {
        self.tiers.get_mut(job.tier)?.get_mut(job.index)
    }

    pub fn on_success(&mut self, now: Instant, job: &Job, r: Reply) {
        let Reply {
            interval,
            min_interval,
            warning,
            peers,
            seeders,
            leechers,
        } = r;
        self.in_flight = false;
        self.round_failures = 0;
        match job.event {
            Event::Started => self.started = true,
            Event::Completed => self.completed_pending = false,
            _ => {}
        }
        if let Some(s) = self.status(job) {
            s.last_error = None;
            s.last_warning = warning;
            s.last_peers = peers;
            s.seeders = seeders.or(s.seeders);
            s.leechers = leechers.or(s.leechers);
        }
        // BEP 12: a tracker that answers moves to the front of its tier.
        if let Some(tier) = self.tiers.get_mut(job.tier) {
            if job.index < tier.len() {
                let t = tier.remove(job.index);
                tier.insert(0, t);
            }
        }
        self.tier = job.tier;
        self.index = 0;
        let secs = interval
            .map(|i| i as u64)
            .unwrap_or(DEFAULT_INTERVAL.as_secs());
        let min = min_interval.map(|i| i as u64).unwrap_or(0);
        let wait =
            Duration::from_secs(secs.max(min)).clamp(MIN_INTERVAL, Duration::from_secs(7200));
        self.next = if self.completed_pending {
            now
        } else {
            now + wait
        };
    }

    /// Seeders and leechers from a scrape (BEP 48 / BEP 15) of the tracker at `url`.
    pub fn set_scrape(&mut self, url: &str, seeders: u32, leechers: u32) {
        if let Some(s) = self.tiers.iter_mut().flatten().find(|s| s.url == url) {
            s.seeders = Some(seeders);
            s.leechers = Some(leechers);
        }
    }

    pub fn on_failure(&mut self, now: Instant, job: &Job, error: String) {
        self.in_flight = false;
        if let Some(s) = self.status(job) {
            s.last_error = Some(error);
        }
        // Next URL in the tier, then the next tier; after a full round, back off.
        self.index += 1;
        if self.index >= self.tiers.get(self.tier).map_or(0, |t| t.len()) {
            self.index = 0;
            self.tier += 1;
            if self.tier >= self.tiers.len() {
                self.tier = 0;
                self.round_failures += 1;
                let backoff = MIN_BACKOFF * 2u32.saturating_pow(self.round_failures.min(7));
                self.next = now + backoff.min(MAX_BACKOFF);
                return;
            }
        }
        self.next = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(interval: u32, peers: usize) -> Reply {
        Reply {
            interval: Some(interval),
            peers,
            ..Default::default()
        }
    }

    fn tiers() -> Vec<Vec<String>> {
        vec![
            vec!["http://a/announce".into()],
            vec!["http://b/announce".into(), "http://c/announce".into()],
        ]
    }

    #[test]
    fn announcer_first_job_is_started_then_interval() {
        let mut rng = Rng::new(1);
        let mut a = Announcer::new(&tiers(), &mut rng);
        let t0 = Instant::from_secs(1);
        let j = a.poll(t0).unwrap();
        assert_eq!(j.event, Event::Started);
        assert_eq!(j.url, "http://a/announce");
        assert!(a.poll(t0).is_none(), "one job in flight at a time");
        a.on_success(t0, &j, reply(120, 3));
        assert!(a.poll(t0 + Duration::from_secs(119)).is_none());
        let j2 = a.poll(t0 + Duration::from_secs(120)).unwrap();
        assert_eq!(j2.event, Event::None);
    }

    #[test]
    fn announcer_dead_first_tier_falls_through() {
        let mut rng = Rng::new(1);
        let mut a = Announcer::new(&tiers(), &mut rng);
        let t0 = Instant::from_secs(1);
        let j = a.poll(t0).unwrap();
        a.on_failure(t0, &j, "refused".into());
        let j2 = a.poll(t0).unwrap();
        assert_eq!(j2.tier, 1);
        a.on_success(t0, &j2, reply(60, 1));
        // The responding tracker is now first in its tier and remains the current one.
        let j3 = a.poll(t0 + Duration::from_secs(60)).unwrap();
        assert_eq!(j3.url, j2.url);
        assert_eq!(j3.index, 0);
    }

    #[test]
    fn announcer_backs_off_after_full_round() {
        let mut rng = Rng::new(1);
        let mut a = Announcer::new(&[vec!["http://x/announce".into()]], &mut rng);
        let t0 = Instant::from_secs(1);
        let j = a.poll(t0).unwrap();
        a.on_failure(t0, &j, "timeout".into());
        assert!(a.poll(t0 + Duration::from_secs(10)).is_none());
        assert!(a.poll(t0 + Duration::from_secs(30)).is_some());
        assert_eq!(
            a.trackers().next().unwrap().last_error.as_deref(),
            Some("timeout")
        );
    }

    #[test]
    fn announcer_completed_event_goes_out_promptly() {
        let mut rng = Rng::new(1);
        let mut a = Announcer::new(&tiers(), &mut rng);
        let t0 = Instant::from_secs(1);
        let j = a.poll(t0).unwrap();
        a.on_success(t0, &j, reply(1800, 0));
        a.completed(t0 + Duration::from_secs(5));
        let j2 = a.poll(t0 + Duration::from_secs(5)).unwrap();
        assert_eq!(j2.event, Event::Completed);
        assert_eq!(a.stop_job().unwrap().event, Event::Stopped);
    }
}
