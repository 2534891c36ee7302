//! Per-source rate limiting of unauthenticated traffic, one table per shard.
//!
//! Every datagram that reaches a call's socket from an address the call does not know yet (not
//! an ICE-validated pair, not the internal leg's accepted remote) is charged to a token bucket
//! picked by hashing its source IP. A source whose bucket is empty is dropped before anything
//! parses it: a stranger flooding a call port costs one hash and a few integer operations per
//! datagram, never STUN parsing, an HMAC or an SRTP authentication, and never a reply (no
//! amplification: the relay answers only authenticated checks, and a limited source does not
//! even reach the check).
//!
//! Choices, and why:
//! - **Keyed by IP, not IP and port**: an attacker picks ports freely; its addresses are
//!   scarcer. Meta's checks from a new address and a media server's first packets come from
//!   one IP each and fit well inside the default burst.
//! - **Fixed table, shared buckets on collision**: `slots` buckets allocated once, no per-source
//!   entry, no eviction. Two IPs that hash to one slot share its bucket, which errs on the side
//!   of limiting; the hash is SipHash with a per-table random key, so an attacker cannot aim
//!   at a victim's slot. A full bucket is indistinguishable from a fresh one, so nothing needs
//!   to remember which IP last used a slot.
//! - **Integer token bucket**: tokens refill at `per_second` from the elapsed time since the
//!   slot's last refill, in whole tokens (the remainder carries over), capped at `burst`.
//! - **Only unknown sources pay**: media on validated paths never touches the table, so a
//!   flood cannot starve a call's own packets here (it can still fill the kernel's socket
//!   buffer; that is what the drop before parsing keeps short).
//! - **And a shard-wide cap**: spoofed floods from many IPs would get `burst` each (50,000
//!   made-up addresses once walked 1.8 M garbage datagrams past a per-source limit without a
//!   single drop). So a datagram a source's bucket lets through must also take a token from
//!   one bucket shared by every unknown source of the shard (`shard_burst`,
//!   `shard_per_second`). Under such a flood, strangers share that budget — a new call's first
//!   ICE checks from an unseen address may be dropped and retried — but live calls' media
//!   never pays, and what reaches the parsers is bounded whatever the number of addresses.
//!   [`RateLimiter::drops`] counts what each cap dropped.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::time::Instant;

/// Limits for datagrams from sources a call does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Datagrams a source may send at once before it is limited.
    pub burst: u32,
    /// Sustained datagrams per second per source once the burst is spent. 0 disables refill.
    pub per_second: u32,
    /// Buckets per shard; rounded up to a power of two. 0 disables limiting.
    pub slots: usize,
    /// Datagrams all unknown sources of a shard together may send at once (0: no shard-wide
    /// cap).
    pub shard_burst: u32,
    /// ... and per second after that burst. 0 disables refill.
    pub shard_per_second: u32,
}

impl Default for RateLimitConfig {
    /// Generous for legitimate strangers: a full ICE exchange from a new address is a few
    /// dozen datagrams, and a media server's first packets are validated within one.
    fn default() -> Self {
        RateLimitConfig {
            burst: 100,
            per_second: 50,
            slots: 4096,
            // Legitimate strangers are few: Meta answers from the candidates its SDP listed
            // (known), media servers from their SDP address (known). What is left (a browser
            // agent's checks, a latching media server's first packet, Meta moving address) is
            // tens of datagrams per call setup, far below this even at 100 setups a second.
            shard_burst: 5000,
            shard_per_second: 5000,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: u32,
    /// Nanoseconds since the table's epoch at which `tokens` was last topped up.
    refilled_at: u64,
}

impl Bucket {
    fn full(burst: u32) -> Self {
        Bucket {
            tokens: burst,
            refilled_at: 0,
        }
    }

    /// Refill for the time since the last refill, then take one token if there is one.
    fn take(&mut self, now_ns: u64, burst: u32, ns_per_token: u64) -> bool {
        if ns_per_token > 0 && self.tokens < burst {
            let elapsed = now_ns.saturating_sub(self.refilled_at);
            let earned = elapsed / ns_per_token;
            if earned > 0 {
                let tokens = u64::from(self.tokens).saturating_add(earned);
                if tokens >= u64::from(burst) {
                    self.tokens = burst;
                    self.refilled_at = now_ns;
                } else {
                    self.tokens = tokens as u32;
                    // Keep the fraction of a token already earned.
                    self.refilled_at = self.refilled_at.saturating_add(earned * ns_per_token);
                }
            }
        }
        if self.tokens == 0 {
            return false;
        }
        if self.tokens == burst {
            // Refill counts from the first token spent, not from when the bucket was last full.
            self.refilled_at = now_ns;
        }
        self.tokens -= 1;
        true
    }
}

/// Nanoseconds per token at `per_second` (0 when refill is off).
fn ns_per_token(per_second: u32) -> u64 {
    if per_second == 0 {
        0
    } else {
        (1_000_000_000 / u64::from(per_second)).max(1)
    }
}

/// What the limiter dropped since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimiterDrops {
    /// The source's own bucket was empty.
    pub per_source: u64,
    /// The source had tokens, but the shard's budget for all unknown sources was spent.
    pub shard_budget: u64,
}

/// A fixed-size table of token buckets. See the module documentation.
pub struct RateLimiter {
    cfg: RateLimitConfig,
    buckets: Box<[Bucket]>,
    mask: usize,
    hasher: RandomState,
    epoch: Instant,
    /// Nanoseconds per token (0 when refill is off).
    ns_per_token: u64,
    /// The budget every unknown source of the shard shares.
    shard: Bucket,
    shard_ns_per_token: u64,
    drops: LimiterDrops,
}

impl RateLimiter {
    /// Allocates the table once; nothing allocates afterwards.
    pub fn new(cfg: RateLimitConfig, now: Instant) -> Self {
        let slots = if cfg.slots == 0 {
            0
        } else {
            cfg.slots.checked_next_power_of_two().unwrap_or(1 << 20)
        };
        RateLimiter {
            cfg,
            buckets: vec![Bucket::full(cfg.burst); slots].into_boxed_slice(),
            mask: slots.saturating_sub(1),
            hasher: RandomState::new(),
            epoch: now,
            ns_per_token: ns_per_token(cfg.per_second),
            shard: Bucket::full(cfg.shard_burst),
            shard_ns_per_token: ns_per_token(cfg.shard_per_second),
            drops: LimiterDrops::default(),
        }
    }

    pub fn config(&self) -> RateLimitConfig {
        self.cfg
    }

    /// What was dropped so far, by which cap.
    pub fn drops(&self) -> LimiterDrops {
        self.drops
    }

    /// Charges one datagram from `ip` at `now`: to the source's bucket, then to the shard's
    /// budget for all unknown sources. `false`: drop it unread (and it is counted).
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.buckets.is_empty() {
            return true;
        }
        // IPv4-mapped IPv6 is the same source as its IPv4 form.
        let key = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let idx = (self.hasher.hash_one(key) as usize) & self.mask;
        let now_ns = nanos_since(self.epoch, now);
        let Some(b) = self.buckets.get_mut(idx) else {
            return true;
        };
        if !b.take(now_ns, self.cfg.burst, self.ns_per_token) {
            self.drops.per_source += 1;
            return false;
        }
        if self.cfg.shard_burst > 0
            && !self
                .shard
                .take(now_ns, self.cfg.shard_burst, self.shard_ns_per_token)
        {
            self.drops.shard_budget += 1;
            return false;
        }
        true
    }
}

fn nanos_since(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn limiter(burst: u32, per_second: u32) -> (RateLimiter, Instant) {
        let t0 = Instant::now();
        let cfg = RateLimitConfig {
            burst,
            per_second,
            slots: 4096,
            shard_burst: 0,
            shard_per_second: 0,
        };
        (RateLimiter::new(cfg, t0), t0)
    }

    #[test]
    fn a_flood_at_one_instant_gets_exactly_the_burst() {
        let (mut rl, t0) = limiter(100, 50);
        let passed = (0..100_000)
            .filter(|_| rl.allow(ip("203.0.113.9"), t0))
            .count();
        assert_eq!(passed, 100);
    }

    #[test]
    fn a_sustained_flood_gets_burst_plus_the_rate() {
        let (mut rl, t0) = limiter(100, 50);
        // 100k datagrams spread evenly over 10 s (10 kpps).
        let passed = (0..100_000u64)
            .filter(|i| rl.allow(ip("203.0.113.9"), t0 + Duration::from_micros(i * 100)))
            .count();
        // 100 at once, then one every 20 ms for 10 s: 500 more (give or take the last one).
        assert!((599..=600).contains(&passed), "passed {passed}");
    }

    #[test]
    fn sources_have_their_own_buckets() {
        let (mut rl, t0) = limiter(10, 0);
        for _ in 0..1000 {
            rl.allow(ip("203.0.113.9"), t0);
        }
        assert!(!rl.allow(ip("203.0.113.9"), t0));
        // Another source (almost surely another slot among 4096; the key is random, so try a
        // few to make a collision irrelevant).
        let fresh = (1..=5)
            .filter(|i| rl.allow(ip(&format!("198.51.100.{i}")), t0))
            .count();
        assert!(fresh >= 4, "fresh sources pass: {fresh}");
    }

    #[test]
    fn the_bucket_refills_to_the_burst_and_no_further() {
        let (mut rl, t0) = limiter(5, 10);
        let src = ip("2001:db8::1");
        assert_eq!((0..10).filter(|_| rl.allow(src, t0)).count(), 5);
        // 250 ms at 10/s: two tokens, with half a token carried over.
        let t = t0 + Duration::from_millis(250);
        assert_eq!((0..10).filter(|_| rl.allow(src, t)).count(), 2);
        let t = t0 + Duration::from_millis(300);
        assert_eq!((0..10).filter(|_| rl.allow(src, t)).count(), 1);
        // An hour idle: full again, not 36000 tokens.
        let t = t0 + Duration::from_secs(3600);
        assert_eq!((0..100).filter(|_| rl.allow(src, t)).count(), 5);
    }

    #[test]
    fn ipv4_mapped_ipv6_is_the_same_source() {
        let (mut rl, t0) = limiter(3, 0);
        assert!(rl.allow(ip("192.0.2.7"), t0));
        assert!(rl.allow(ip("::ffff:192.0.2.7"), t0));
        assert!(rl.allow(ip("192.0.2.7"), t0));
        assert!(!rl.allow(ip("::ffff:192.0.2.7"), t0));
    }

    #[test]
    fn zero_slots_disables_limiting() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(
            RateLimitConfig {
                burst: 0,
                per_second: 0,
                slots: 0,
                shard_burst: 0,
                shard_per_second: 0,
            },
            t0,
        );
        assert!((0..1000).all(|_| rl.allow(ip("203.0.113.9"), t0)));
    }

    /// 50,000 spoofed addresses, each sending well within its own burst, over one simulated
    /// second: without the shard-wide cap every datagram would pass.
    #[test]
    fn a_spoofed_flood_from_many_addresses_is_capped_shard_wide() {
        let t0 = Instant::now();
        let cfg = RateLimitConfig {
            slots: 1 << 16,
            ..RateLimitConfig::default()
        };
        let mut rl = RateLimiter::new(cfg, t0);
        let mut passed = 0u64;
        let total = 50_000u64 * 36;
        for i in 0..total {
            let n = (i % 50_000) as u32;
            let src = IpAddr::from([10, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
            let now = t0 + Duration::from_nanos(i * 1_000_000_000 / total);
            passed += u64::from(rl.allow(src, now));
        }
        // The shard's burst plus one second of its rate (give or take the last token).
        let cap = u64::from(cfg.shard_burst + cfg.shard_per_second);
        assert!(passed <= cap, "passed {passed}, cap {cap}");
        assert!(passed >= cap - 1, "the budget is spent, not more: {passed}");
        let drops = rl.drops();
        assert_eq!(drops.per_source + drops.shard_budget, total - passed);
        assert!(drops.shard_budget > 1_000_000, "{drops:?}");
    }

    #[test]
    fn the_shard_budget_refills_and_a_single_source_still_pays_its_own_bucket_first() {
        let t0 = Instant::now();
        let cfg = RateLimitConfig {
            burst: 10,
            per_second: 0,
            slots: 4096,
            shard_burst: 20,
            shard_per_second: 100,
        };
        let mut rl = RateLimiter::new(cfg, t0);
        // One source: its own 10, the shard budget barely touched.
        assert_eq!(
            (0..1000).filter(|_| rl.allow(ip("192.0.2.1"), t0)).count(),
            10
        );
        assert_eq!(rl.drops().per_source, 990);
        assert_eq!(rl.drops().shard_budget, 0);
        // Many sources: the remaining 10 of the shard's 20.
        let many = (0..100u8)
            .filter(|i| rl.allow(ip(&format!("198.51.100.{i}")), t0))
            .count();
        assert_eq!(many, 10);
        assert_eq!(rl.drops().shard_budget, 90);
        // 100 ms later: 10 more tokens shard-wide (fresh sources, each with its own burst).
        let t = t0 + Duration::from_millis(100);
        let later = (0..100u8)
            .filter(|i| rl.allow(ip(&format!("203.0.113.{i}")), t))
            .count();
        assert_eq!(later, 10);
    }
}
