//! Layer 2 (pure state): token buckets that hold bandwidth limits in bytes per second.
//!
//! The engine asks a [`Limiter`] how many bytes it may read from or write to a peer socket
//! right now ([`Limiter::grant`]), charges protocol overhead it cannot avoid
//! ([`Limiter::charge`]), hands back what a short write did not use ([`Limiter::refund`]) and
//! sleeps in `poll` until [`Limiter::next_available_at`]. One `Limiter` per direction holds the
//! global bucket; each torrent owns one [`TokenBucket`] per direction. Limits count payload and
//! protocol overhead alike (issue: "limits apply to payload and protocol overhead alike").
//!
//! This module must not read a clock, touch sockets or allocate: time arrives as
//! [`crate::time::Instant`] (milliseconds) and all arithmetic is exact integer math, carrying the
//! sub-byte remainder between refills so a rate holds exactly over any number of small polls.

use crate::time::Instant;

/// Smallest default burst: one whole BEP 3 `piece` message, a 16 KiB block plus its 13-byte
/// header (`<len=0009+X><id=7><index><begin><block>`). With less, even a single block could
/// never be written in one go and a slow limit would dribble it out in tiny syscalls.
pub const MIN_DEFAULT_BURST: u64 = 16 * 1024 + 13;
/// Largest default burst: at high rates rate/10 would be several MiB dumped into the router's
/// queues at once, which is exactly what starves a video call or the control socket.
/// 1 MiB is still 20 ms at 50 MiB/s, more than one 1-10 ms poll period.
pub const MAX_DEFAULT_BURST: u64 = 1024 * 1024;
/// Largest rate and burst accepted (1 TiB/s, 1 TiB). Larger values are clamped; this keeps
/// every token count inside `i64` with room for the bounded debt.
pub const MAX_RATE: u64 = 1 << 40;

/// Default burst for `rate` bytes/s: a tenth of a second of traffic, clamped to
/// [`MIN_DEFAULT_BURST`, `MAX_DEFAULT_BURST`].
///
/// Why a tenth of a second: the bucket must hold more than one poll period (1-10 ms) of tokens,
/// or tokens that arrive while the loop is busy are lost and the achieved rate falls short; but
/// the bigger it is, the bigger the back-to-back burst after an idle spell. 100 ms keeps the
/// worst burst short (a VoIP or control packet waits at most that long behind it) while leaving
/// ten times the slowest poll period of slack. The lower clamp keeps small rates smooth: at
/// 64 KiB/s a tenth is 6.5 KiB, less than one piece message, so every block would be split.
pub fn default_burst(rate: u64) -> u64 {
    (rate / 10).clamp(MIN_DEFAULT_BURST, MAX_DEFAULT_BURST)
}

/// A token bucket: tokens are bytes, refilled at `rate` per second up to `burst`.
///
/// The bucket starts empty, so the rate measured from the very first byte equals the limit
/// (a full start would add one burst on top: 0.8% over 30 s at 64 KiB/s); the first full
/// burst is earned in `burst / rate`. `consume` may take it below zero ("debt", at most one
/// `burst`) so overhead that must be sent anyway is still paid for by later traffic.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    /// Bytes per second; `None` = unlimited; `Some(0)` = nothing ever passes.
    rate: Option<u64>,
    burst: u64,
    /// Current tokens; negative while in debt. Always in `-burst..=burst`.
    tokens: i64,
    /// Refill remainder in byte-milliseconds (`< 1000`): what a whole byte did not yet make.
    frac: u64,
    /// Time of the last refill; `None` until the first call that passes `now`.
    last: Option<Instant>,
}

impl TokenBucket {
    /// An empty bucket. `rate` in bytes/s (`None` = unlimited); `burst` in bytes, at least 1
    /// (see [`default_burst`] for a sensible value).
    pub fn new(rate: Option<u64>, burst: u64) -> TokenBucket {
        let burst = burst.clamp(1, MAX_RATE);
        TokenBucket {
            rate: rate.map(|r| r.min(MAX_RATE)),
            burst,
            tokens: 0,
            frac: 0,
            last: None,
        }
    }

    /// An empty bucket with [`default_burst`] for `rate`.
    pub fn with_rate(rate: Option<u64>) -> TokenBucket {
        TokenBucket::new(rate, rate.map_or(MIN_DEFAULT_BURST, default_burst))
    }

    /// An unlimited bucket.
    pub fn unlimited() -> TokenBucket {
        TokenBucket::with_rate(None)
    }

    pub fn rate(&self) -> Option<u64> {
        self.rate
    }

    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Changes the limit at run time. Tokens earned so far at the old rate are kept (up to the
    /// new burst); any debt is kept too, so switching limits cannot be used to skip it.
    pub fn set_rate(&mut self, now: Instant, rate: Option<u64>, burst: u64) {
        self.refill(now);
        self.rate = rate.map(|r| r.min(MAX_RATE));
        self.burst = burst.clamp(1, MAX_RATE);
        let b = self.burst as i64;
        self.tokens = self.tokens.clamp(-b, b);
        if self.tokens == b {
            self.frac = 0;
        }
    }

    /// Adds the tokens earned since the last refill. A `now` earlier than the last refill
    /// adds nothing (and does not move the bucket's clock back).
    pub fn refill(&mut self, now: Instant) {
        let last = match self.last {
            Some(l) => l,
            None => {
                self.last = Some(now);
                return;
            }
        };
        if now <= last {
            return;
        }
        self.last = Some(now);
        let rate = match self.rate {
            Some(r) => r,
            None => {
                self.tokens = self.burst as i64;
                return;
            }
        };
        let ms = now.as_millis() - last.as_millis();
        // u128: rate (< 2^41) times ms (< 2^64) cannot overflow.
        let earned = rate as u128 * ms as u128 + self.frac as u128;
        let whole = earned / 1000;
        self.frac = (earned % 1000) as u64;
        let room = (self.burst as i64 - self.tokens) as u128; // <= 2 * burst, fits
        if whole > room {
            // Overflow spills, remainder included: a full bucket earns nothing.
            self.tokens = self.burst as i64;
            self.frac = 0;
        } else {
            self.tokens += whole as i64;
        }
    }

    /// Bytes that may pass now (`u64::MAX` when unlimited).
    pub fn available(&mut self, now: Instant) -> u64 {
        self.refill(now);
        if self.rate.is_none() {
            return u64::MAX;
        }
        self.tokens.max(0) as u64
    }

    /// Takes `n` bytes. Taking more than is available goes into debt, at most one `burst`
    /// deep; call [`TokenBucket::available`] (or [`TokenBucket::refill`]) first so the
    /// bucket is current.
    pub fn consume(&mut self, n: u64) {
        if self.rate.is_none() {
            return;
        }
        let b = self.burst as i64;
        let n = n.min(2 * self.burst) as i64;
        self.tokens = (self.tokens - n).max(-b);
    }

    /// Returns `n` unused bytes of a grant (e.g. after a short write), up to `burst`.
    pub fn refund(&mut self, n: u64) {
        if self.rate.is_none() {
            return;
        }
        let n = n.min(2 * self.burst) as i64;
        self.tokens = (self.tokens + n).min(self.burst as i64);
    }

    /// When `n` bytes will be available: `now` if they are already (or the bucket is
    /// unlimited); `None` if never, because `n > burst` (ask for at most [`TokenBucket::burst`])
    /// or the rate is 0. The answer is rounded up to the next millisecond, so at that instant
    /// `available` is at least `n`. For poll timeouts.
    pub fn next_available_at(&mut self, now: Instant, n: u64) -> Option<Instant> {
        self.refill(now);
        let rate = match self.rate {
            None => return Some(now),
            Some(r) => r,
        };
        if self.tokens >= 0 && self.tokens as u64 >= n {
            return Some(now);
        }
        if n > self.burst || rate == 0 {
            return None;
        }
        // n <= burst and tokens >= -burst, so need <= 2 * burst.
        let need = (n as i64 - self.tokens) as u128;
        let have = self.frac as u128; // byte-ms already earned toward the next byte
        let ms = (need * 1000 - have).div_ceil(rate as u128);
        let ms = u64::try_from(ms).unwrap_or(u64::MAX);
        // The bucket's clock is `max(now, last)`; waiting is counted from there.
        let from = self.last.map_or(now, |l| l.max(now));
        Some(Instant::from_millis(from.as_millis().saturating_add(ms)))
    }
}

/// A global bucket shared by all torrents, combined with each torrent's own bucket.
#[derive(Clone, Debug)]
pub struct Limiter {
    global: TokenBucket,
}

impl Limiter {
    /// A limiter whose global bucket has `rate` (bytes/s, `None` = unlimited) and the
    /// [`default_burst`].
    pub fn new(rate: Option<u64>) -> Limiter {
        Limiter {
            global: TokenBucket::with_rate(rate),
        }
    }

    pub fn global(&self) -> &TokenBucket {
        &self.global
    }

    /// Changes the global rate; the burst follows [`default_burst`].
    pub fn set_global_rate(&mut self, now: Instant, rate: Option<u64>) {
        let burst = rate.map_or(MIN_DEFAULT_BURST, default_burst);
        self.global.set_rate(now, rate, burst);
    }

    /// How many of `wanted` bytes may pass now for a torrent: the least of `wanted`, the
    /// global bucket and the torrent's bucket. The grant is consumed from both.
    pub fn grant(&mut self, now: Instant, torrent: &mut TokenBucket, wanted: u64) -> u64 {
        let n = wanted
            .min(self.global.available(now))
            .min(torrent.available(now));
        self.global.consume(n);
        torrent.consume(n);
        n
    }

    /// Returns unused bytes of a grant to both buckets.
    pub fn refund(&mut self, torrent: &mut TokenBucket, n: u64) {
        self.global.refund(n);
        torrent.refund(n);
    }

    /// Charges `n` bytes that had to pass regardless of the limit (handshakes, keep-alives),
    /// possibly into debt.
    pub fn charge(&mut self, now: Instant, torrent: &mut TokenBucket, n: u64) {
        self.global.refill(now);
        torrent.refill(now);
        self.global.consume(n);
        torrent.consume(n);
    }

    /// When both buckets will have `n` bytes (the later of the two), or `None` if never.
    pub fn next_available_at(
        &mut self,
        now: Instant,
        torrent: &mut TokenBucket,
        n: u64,
    ) -> Option<Instant> {
        let g = self.global.next_available_at(now, n)?;
        let t = torrent.next_available_at(now, n)?;
        Some(g.max(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;
    const RATES: [u64; 3] = [64 * KIB, MIB, 50 * MIB];
    const SIM_MS: u64 = 30_000;

    /// Checks token-bucket conformance over every window of polls: the bytes granted at polls
    /// i..=j never exceed `burst + rate * (t_j - t_i)`. Returns the total granted.
    fn assert_conforms(log: &[(u64, u64)], rate: u64, burst: u64, what: &str) -> u64 {
        // With C_k = bytes granted through poll k (scaled by 1000), the window bound is
        // (1000*C_j - rate*t_j) - (1000*C_{i-1} - rate*t_i) <= 1000*burst; keep the running
        // minimum of the subtracted term.
        let mut total: i128 = 0;
        let mut min_before = i128::MAX;
        for &(t, n) in log {
            min_before = min_before.min(1000 * total - rate as i128 * t as i128);
            total += n as i128;
            let here = 1000 * total - rate as i128 * t as i128;
            assert!(
                here - min_before <= 1000 * burst as i128,
                "{what}: burst over {burst} at t={t}ms"
            );
        }
        total as u64
    }

    fn assert_rate_within(total: u64, rate: u64, ms: u64, pct: f64, what: &str) {
        let achieved = total as f64 * 1000.0 / ms as f64;
        let err = (achieved - rate as f64).abs() / rate as f64 * 100.0;
        assert!(
            err <= pct,
            "{what}: achieved {achieved:.0} B/s vs limit {rate} ({err:.3}% off)"
        );
    }

    #[test]
    fn bucket_greedy_poller_holds_rate_within_one_percent() {
        for rate in RATES {
            let mut rng = Rng::new(rate);
            let mut b = TokenBucket::with_rate(Some(rate));
            let burst = b.burst();
            let mut log = Vec::new();
            let mut t = 0;
            while t <= SIM_MS {
                let now = Instant::from_millis(t);
                let n = b.available(now);
                assert!(n <= burst, "single grant {n} over burst {burst}");
                b.consume(n);
                log.push((t, n));
                t += 1 + rng.below(10) as u64;
            }
            let total = assert_conforms(&log, rate, burst, "bucket");
            assert_rate_within(total, rate, SIM_MS, 1.0, "bucket");
            // Exact to within the tokens earned after the last poll (at most 10 ms' worth).
            assert!(total <= rate * SIM_MS / 1000, "rate {rate}: total {total}");
            assert!(
                total + rate / 100 + 1 >= rate * SIM_MS / 1000,
                "rate {rate}: {total}"
            );
        }
    }

    #[test]
    fn limiter_global_and_torrent_bind_whichever_is_lower() {
        for rate in RATES {
            // Global binds: two torrents under an unlimited and a loose limit share it.
            let mut rng = Rng::new(rate ^ 1);
            let mut lim = Limiter::new(Some(rate));
            let mut a = TokenBucket::unlimited();
            let mut c = TokenBucket::with_rate(Some(rate * 2));
            let (mut log_a, mut log_c, mut log_sum) = (Vec::new(), Vec::new(), Vec::new());
            let mut t = 0;
            while t <= SIM_MS {
                let now = Instant::from_millis(t);
                // Alternate who asks first so neither starves the other forever.
                let (ga, gc) = if rng.below(2) == 0 {
                    let ga = lim.grant(now, &mut a, u64::MAX);
                    (ga, lim.grant(now, &mut c, u64::MAX))
                } else {
                    let gc = lim.grant(now, &mut c, u64::MAX);
                    (lim.grant(now, &mut a, u64::MAX), gc)
                };
                log_a.push((t, ga));
                log_c.push((t, gc));
                log_sum.push((t, ga + gc));
                t += 1 + rng.below(10) as u64;
            }
            let burst = lim.global().burst();
            let total = assert_conforms(&log_sum, rate, burst, "global");
            assert_rate_within(total, rate, SIM_MS, 1.0, "global");
            assert!(log_a.iter().map(|x| x.1).sum::<u64>() > 0);
            assert_conforms(&log_c, rate * 2, c.burst(), "torrent c");

            // Torrent binds: a torrent limited to a quarter of an unlimited global.
            let mut lim = Limiter::new(None);
            let mut d = TokenBucket::with_rate(Some(rate / 4));
            let mut log = Vec::new();
            let mut t = 0;
            while t <= SIM_MS {
                log.push((t, lim.grant(Instant::from_millis(t), &mut d, u64::MAX)));
                t += 1 + rng.below(10) as u64;
            }
            let total = assert_conforms(&log, rate / 4, d.burst(), "torrent d");
            assert_rate_within(total, rate / 4, SIM_MS, 1.0, "torrent d");
        }
    }

    #[test]
    fn sleeper_wakes_at_next_available_and_holds_rate() {
        // A consumer that sends whole piece messages and sleeps until the bucket has the next
        // one, as the engine's poll timeout would.
        for rate in RATES {
            let mut lim = Limiter::new(Some(rate));
            let mut tb = TokenBucket::unlimited();
            let msg = MIN_DEFAULT_BURST;
            let mut log = Vec::new();
            let mut now = Instant::ZERO;
            while now.as_millis() <= SIM_MS {
                let at = lim
                    .next_available_at(now, &mut tb, msg)
                    .expect("msg <= burst");
                assert!(at >= now);
                if at > now {
                    // One millisecond earlier would have been too early.
                    let before = Instant::from_millis(at.as_millis() - 1);
                    assert!(lim.global.clone().available(before) < msg, "woke late");
                    now = at;
                    continue;
                }
                let g = lim.grant(now, &mut tb, msg);
                assert_eq!(g, msg, "next_available_at promised {msg} at {now:?}");
                log.push((now.as_millis(), g));
            }
            let burst = lim.global().burst();
            let total = assert_conforms(&log, rate, burst, "sleeper");
            assert_rate_within(total, rate, SIM_MS, 1.0, "sleeper");
        }
    }

    #[test]
    fn unlimited_never_blocks() {
        let mut lim = Limiter::new(None);
        let mut tb = TokenBucket::unlimited();
        for t in [0, 1, 1, 5, 1000, u64::MAX] {
            let now = Instant::from_millis(t);
            assert_eq!(lim.grant(now, &mut tb, u64::MAX), u64::MAX);
            assert_eq!(lim.grant(now, &mut tb, 7), 7);
            lim.charge(now, &mut tb, u64::MAX);
            assert_eq!(tb.available(now), u64::MAX);
            assert_eq!(lim.next_available_at(now, &mut tb, u64::MAX), Some(now));
        }
    }

    #[test]
    fn bucket_debt_is_repaid_before_new_grants() {
        let mut b = TokenBucket::new(Some(1000), 500);
        let ms = Instant::from_millis;
        assert_eq!(b.available(ms(0)), 0, "starts empty");
        assert_eq!(b.available(ms(200)), 200);
        assert_eq!(b.available(ms(900)), 500, "capped at burst");
        b.consume(800); // 300 in debt
        assert_eq!(b.available(ms(900)), 0);
        assert_eq!(b.available(ms(1200)), 0);
        assert_eq!(b.available(ms(1300)), 100);
        // Debt is capped at one burst, however much is charged.
        b.consume(u64::MAX);
        assert_eq!(b.next_available_at(ms(1300), 1), Some(ms(1801)));
        b.refund(600);
        assert_eq!(b.available(ms(1300)), 100);
    }

    #[test]
    fn bucket_sub_byte_rates_accumulate_exactly() {
        // 3 bytes/s polled every millisecond: every byte earned, none invented.
        let mut b = TokenBucket::new(Some(3), 1);
        let mut got = 0;
        for ms in 0..=10_000 {
            let n = b.available(Instant::from_millis(ms));
            b.consume(n);
            got += n;
        }
        assert_eq!(got, 30);
    }

    #[test]
    fn bucket_next_available_never_when_impossible() {
        let mut b = TokenBucket::new(Some(1000), 100);
        assert_eq!(
            b.next_available_at(Instant::ZERO, 100),
            Some(Instant::from_millis(100))
        );
        let now = Instant::from_secs(1);
        assert_eq!(b.next_available_at(now, 101), None, "more than burst");
        assert_eq!(b.next_available_at(now, 100), Some(now));
        let mut z = TokenBucket::new(Some(0), 100);
        z.consume(100);
        assert_eq!(z.next_available_at(now, 1), None, "rate 0");
        assert_eq!(z.available(Instant::from_secs(1000)), 0);
    }

    #[test]
    fn bucket_time_going_backwards_or_jumping_is_safe() {
        let mut b = TokenBucket::new(Some(MAX_RATE), MAX_RATE);
        b.consume(u64::MAX);
        assert_eq!(b.available(Instant::from_secs(10)), 0);
        assert_eq!(
            b.available(Instant::from_secs(5)),
            0,
            "backwards adds nothing"
        );
        assert_eq!(b.available(Instant::from_millis(u64::MAX)), MAX_RATE);
        let mut c = TokenBucket::new(Some(u64::MAX), u64::MAX);
        assert_eq!(c.rate(), Some(MAX_RATE));
        assert_eq!(c.burst(), MAX_RATE);
        c.refund(u64::MAX);
        c.consume(0);
        assert_eq!(c.available(Instant::ZERO), MAX_RATE);
        // A wait far in the future saturates instead of overflowing.
        let mut d = TokenBucket::new(Some(1), 10);
        d.consume(20);
        let late = Instant::from_millis(u64::MAX - 5);
        assert!(d.next_available_at(late, 10).is_some());
    }

    #[test]
    fn bucket_set_rate_keeps_debt_and_clamps_tokens() {
        let mut b = TokenBucket::with_rate(Some(MIB));
        let t = Instant::from_secs(1);
        assert_eq!(b.available(Instant::ZERO), 0);
        assert_eq!(b.available(t), default_burst(MIB));
        b.set_rate(t, Some(64 * KIB), MIN_DEFAULT_BURST);
        assert_eq!(b.available(t), MIN_DEFAULT_BURST);
        b.consume(2 * MIN_DEFAULT_BURST);
        b.set_rate(t, None, MIN_DEFAULT_BURST);
        assert_eq!(b.available(t), u64::MAX);
        b.set_rate(t, Some(64 * KIB), MIN_DEFAULT_BURST);
        assert_eq!(
            b.available(t),
            0,
            "debt survives a detour through unlimited"
        );
    }

    #[test]
    fn default_burst_clamps_to_one_message_and_one_mib() {
        assert_eq!(default_burst(0), MIN_DEFAULT_BURST);
        assert_eq!(default_burst(64 * KIB), MIN_DEFAULT_BURST);
        assert_eq!(default_burst(MIB), MIB / 10);
        assert_eq!(default_burst(50 * MIB), MAX_DEFAULT_BURST);
        assert_eq!(default_burst(u64::MAX), MAX_DEFAULT_BURST);
    }
}
