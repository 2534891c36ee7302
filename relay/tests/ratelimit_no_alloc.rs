//! The per-source limiter sits on the per-packet path: after construction it must never touch
//! the heap. A counting global allocator (`alloc_support`) proves it over a flood.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use relay::engine::ratelimit::{RateLimitConfig, RateLimiter};

mod alloc_support;
use alloc_support::allocations;

#[test]
fn a_flood_through_the_limiter_allocates_nothing() {
    let t0 = Instant::now();
    let mut rl = RateLimiter::new(RateLimitConfig::default(), t0);
    let mut passed = 0u64;
    // The counter itself works: one box is one allocation.
    let before = allocations();
    drop(std::hint::black_box(Box::new(7u64)));
    assert_eq!(allocations() - before, 1);
    let before = allocations();
    // 200k datagrams from 256 IPv4 and 256 IPv6 sources over 2 simulated seconds.
    for i in 0..200_000u32 {
        let ip = if i % 2 == 0 {
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, (i >> 1) as u8))
        } else {
            IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                0,
                0,
                0,
                0,
                0,
                (i >> 1) as u16 & 0xff,
            ))
        };
        let now = t0 + Duration::from_micros(u64::from(i) * 10);
        passed += u64::from(rl.allow(ip, now));
    }
    assert_eq!(
        allocations() - before,
        0,
        "allocations on the limiter's path"
    );
    // 512 sources (some sharing slots): each got at most burst + 2 s × rate.
    assert!(passed <= 512 * (100 + 100), "passed {passed}");
    assert!(passed > 0);
}
