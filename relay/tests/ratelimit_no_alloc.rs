//! The per-source limiter sits on the per-packet path: after construction it must never touch
//! the heap. A counting global allocator (this test binary's only) proves it over a flood.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use relay::engine::ratelimit::{RateLimitConfig, RateLimiter};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Only the measuring thread counts: the test harness allocates on its own threads.
    static MEASURING: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if MEASURING.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn a_flood_through_the_limiter_allocates_nothing() {
    let t0 = Instant::now();
    let mut rl = RateLimiter::new(RateLimitConfig::default(), t0);
    let mut passed = 0u64;
    MEASURING.with(|m| m.set(true));
    // The counter itself works: one box is one allocation.
    drop(std::hint::black_box(Box::new(7u64)));
    assert_eq!(ALLOCATIONS.swap(0, Ordering::Relaxed), 1);
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
    MEASURING.with(|m| m.set(false));
    assert_eq!(
        ALLOCATIONS.load(Ordering::Relaxed),
        0,
        "allocations on the limiter's path"
    );
    // 512 sources (some sharing slots): each got at most burst + 2 s × rate.
    assert!(passed <= 512 * (100 + 100), "passed {passed}");
    assert!(passed > 0);
}
