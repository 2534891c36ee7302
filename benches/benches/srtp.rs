//! SRTP protect/unprotect of a 172-byte RTP packet (12-byte header + 160-byte payload) for each
//! profile: ours (in place, no allocation) against webrtc-srtp 0.17 (allocates per packet), in
//! one run so the numbers compare as ratios.
//!
//! Every protect uses a fresh sequence number (ours refuses to encrypt an index twice); every
//! unprotect gets a freshly protected packet, prepared outside the timed region.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use relay::srtp::{MasterKey, SrtpContext, SrtpProfile, random_master_key};
use webrtc_srtp::context::Context;
use webrtc_srtp::protection_profile::ProtectionProfile;

const HEADER: usize = 12;
const PACKET: usize = HEADER + 160;

fn theirs(key: &MasterKey) -> Context {
    let profile = match key.profile {
        SrtpProfile::Aes128CmHmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
        SrtpProfile::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
        SrtpProfile::AeadAes256Gcm => ProtectionProfile::AeadAes256Gcm,
    };
    Context::new(&key.key, &key.salt, profile, None, None).expect("webrtc-srtp context")
}

/// A 172-byte RTP packet in a buffer with room for the largest tag; `next` stamps a new seq.
struct Packets {
    buf: [u8; PACKET + 16],
    seq: u16,
}

impl Packets {
    fn new() -> Self {
        let mut buf = [0u8; PACKET + 16];
        buf[0] = 0x80;
        buf[1] = 111;
        buf[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        for (i, b) in buf[HEADER..PACKET].iter_mut().enumerate() {
            *b = i as u8;
        }
        Packets { buf, seq: 0 }
    }

    fn next(&mut self) -> &mut [u8; PACKET + 16] {
        self.seq = self.seq.wrapping_add(1);
        self.buf[2..4].copy_from_slice(&self.seq.to_be_bytes());
        &mut self.buf
    }
}

fn bench(c: &mut Criterion) {
    for profile in SrtpProfile::ALL {
        let key = random_master_key(profile);
        let mut group = c.benchmark_group(format!("srtp/{profile}"));

        let mut tx = SrtpContext::new(&key).unwrap();
        let mut packets = Packets::new();
        group.bench_function("protect/ours", |b| {
            b.iter(|| {
                let buf = packets.next();
                black_box(tx.protect_rtp(buf, PACKET).unwrap())
            })
        });

        let mut their_tx = theirs(&key);
        let mut packets = Packets::new();
        group.bench_function("protect/webrtc-srtp", |b| {
            b.iter(|| {
                let buf = packets.next();
                black_box(their_tx.encrypt_rtp(&buf[..PACKET]).unwrap())
            })
        });

        let (mut tx, mut rx) = (
            SrtpContext::new(&key).unwrap(),
            SrtpContext::new(&key).unwrap(),
        );
        let mut packets = Packets::new();
        group.bench_function("unprotect/ours", |b| {
            b.iter_batched_ref(
                || {
                    let buf = packets.next();
                    let n = tx.protect_rtp(buf, PACKET).unwrap();
                    buf[..n].to_vec()
                },
                |srtp| black_box(rx.unprotect_rtp(srtp).unwrap()),
                BatchSize::SmallInput,
            )
        });

        let (mut their_tx, mut their_rx) = (theirs(&key), theirs(&key));
        let mut packets = Packets::new();
        group.bench_function("unprotect/webrtc-srtp", |b| {
            b.iter_batched_ref(
                || their_tx.encrypt_rtp(&packets.next()[..PACKET]).unwrap(),
                |srtp| black_box(their_rx.decrypt_rtp(srtp).unwrap()),
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
