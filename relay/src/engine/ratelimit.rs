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
//! - **Not a global cap**: spoofed floods from many IPs get `burst` each. What protects the
//!   shard then is that the limited path is cheap, and that unknown-source traffic is never
//!   answered without credentials.

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
}

impl Default for RateLimitConfig {
    /// Generous for legitimate strangers: a full ICE exchange from a new address is a few
    /// dozen datagrams, and a media server's first packets are validated within one.
    fn default() -> Self {
        RateLimitConfig {
            burst: 100,
            per_second: 50,
            slots: 4096,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: u32,
    /// Nanoseconds since the table's epoch at which `tokens` was last topped up.
    refilled_at: u64,
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
}

impl RateLimiter {
    /// Allocates the table once; nothing allocates afterwards.
    pub fn new(cfg: RateLimitConfig, now: Instant) -> Self {
        let slots = if cfg.slots == 0 {
            0
        } else {
            cfg.slots.checked_next_power_of_two().unwrap_or(1 << 20)
        };
        let full = Bucket {
            tokens: cfg.burst,
            refilled_at: 0,
        };
        let ns_per_token = if cfg.per_second == 0 {
            0
        } else {
            (1_000_000_000 / u64::from(cfg.per_second)).max(1)
        };
        RateLimiter {
            cfg,
            buckets: vec![full; slots].into_boxed_slice(),
            mask: slots.saturating_sub(1),
            hasher: RandomState::new(),
            epoch: now,
            ns_per_token,
        }
    }

    pub fn config(&self) -> RateLimitConfig {
        self.cfg
    }

    /// Charges one datagram from `ip` at `now`. `false`: drop it unread.
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
        let (burst, per_token) = (self.cfg.burst, self.ns_per_token);
        let Some(b) = self.buckets.get_mut(idx) else {
            return true;
        };
        if per_token > 0 && b.tokens < burst {
            let elapsed = now_ns.saturating_sub(b.refilled_at);
            let earned = elapsed / per_token;
            if earned > 0 {
                let tokens = u64::from(b.tokens).saturating_add(earned);
                if tokens >= u64::from(burst) {
                    b.tokens = burst;
                    b.refilled_at = now_ns;
                } else {
                    b.tokens = tokens as u32;
                    // Keep the fraction of a token already earned.
                    b.refilled_at = b.refilled_at.saturating_add(earned * per_token);
                }
            }
        }
        if b.tokens == 0 {
            return false;
        }
        if b.tokens == burst {
            // Refill counts from the first token spent, not from when the bucket was last full.
            b.refilled_at = now_ns;
        }
        b.tokens -= 1;
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
            },
            t0,
        );
        assert!((0..1000).all(|_| rl.allow(ip("203.0.113.9"), t0)));
    }
}
