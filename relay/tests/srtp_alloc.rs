//! Proves the per-packet path allocates nothing: a counting global allocator records every
//! allocation made on the test thread while 10,000 RTP packets (and 1,000 RTCP packets) per
//! profile are protected and unprotected. Setup (keys, contexts, buffers) happens before counting.

use relay::srtp::{SrtpContext, SrtpProfile, random_master_key};

mod alloc_support;
use alloc_support::allocations;

#[test]
fn protect_and_unprotect_allocate_nothing_per_packet() {
    for profile in SrtpProfile::ALL {
        let key = random_master_key(profile);
        let mut tx = SrtpContext::new(&key).unwrap();
        let mut rx = SrtpContext::new(&key).unwrap();
        // 12-byte header + 160-byte payload, as one 20 ms G.711 or a large Opus frame.
        let mut rtp = [0u8; 172 + 16];
        rtp[0] = 0x80;
        rtp[1] = 111;
        rtp[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        let mut rtcp = [0u8; 28 + 20];
        rtcp[..8].copy_from_slice(&[0x80, 200, 0, 6, 0x12, 0x34, 0x56, 0x78]);

        let before = allocations();
        for i in 0..10_000u32 {
            // Wraps the sequence number, so ROC handling is on the measured path too.
            rtp[2..4].copy_from_slice(&((i + 60_000) as u16).to_be_bytes());
            let n = tx.protect_rtp(&mut rtp, 172).unwrap();
            assert_eq!(rx.unprotect_rtp(&mut rtp[..n]), Ok(172));
            if i % 10 == 0 {
                let n = tx.protect_rtcp(&mut rtcp, 28).unwrap();
                assert_eq!(rx.unprotect_rtcp(&mut rtcp[..n]), Ok(28));
            }
        }
        let during = allocations() - before;
        assert_eq!(
            during, 0,
            "{profile}: {during} heap allocations on the packet path"
        );
    }
}

/// The counter works: a failing check above would otherwise prove nothing.
#[test]
fn the_counter_sees_allocations() {
    let before = allocations();
    let v = std::hint::black_box(vec![1u8; 64]);
    assert!(allocations() > before);
    drop(v);
}
