//! Differential test against webrtc-srtp 0.17, an independent implementation: for every profile
//! both support, random RTP packets (CSRCs, header extensions, empty to 1200-byte payloads,
//! sequence numbers crossing a wrap) and random RTCP compounds are protected by one side and
//! unprotected by the other. SRTP is deterministic for a given key and index, so both sides'
//! SRTP output must also be byte-identical.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relay::srtp::{MasterKey, SrtpContext, SrtpProfile, random_master_key};
use webrtc_srtp::context::Context;
use webrtc_srtp::protection_profile::ProtectionProfile;

fn theirs(key: &MasterKey) -> Context {
    let profile = match key.profile {
        SrtpProfile::Aes128CmHmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
        SrtpProfile::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
        SrtpProfile::AeadAes256Gcm => ProtectionProfile::AeadAes256Gcm,
    };
    Context::new(&key.key, &key.salt, profile, None, None).expect("webrtc-srtp context")
}

/// An RTP packet with random CSRCs, maybe a header extension (RFC 8285 one-byte elements, or
/// an opaque RFC 3550 one), and a random payload of up to 1200 bytes.
fn random_rtp(rng: &mut StdRng, ssrc: u32, seq: u16) -> Vec<u8> {
    let csrcs = rng.random_range(0..=4u8);
    let extension = rng.random_range(0..3);
    let mut p = vec![0x80 | csrcs | if extension > 0 { 0x10 } else { 0 }];
    p.push(rng.random_range(0..128u8) | if rng.random_bool(0.1) { 0x80 } else { 0 });
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&rng.random::<u32>().to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    for _ in 0..csrcs {
        p.extend_from_slice(&rng.random::<u32>().to_be_bytes());
    }
    match extension {
        1 => {
            // One-byte elements (id 1..=14, 1..=16 bytes), zero-padded to a word.
            let mut body = Vec::new();
            for _ in 0..rng.random_range(1..4) {
                let len = rng.random_range(1..=16u8);
                body.push(rng.random_range(1..=14u8) << 4 | (len - 1));
                body.extend((0..len).map(|_| rng.random::<u8>()));
            }
            while body.len() % 4 != 0 {
                body.push(0);
            }
            p.extend_from_slice(&[0xbe, 0xde]);
            p.extend_from_slice(&((body.len() / 4) as u16).to_be_bytes());
            p.extend_from_slice(&body);
        }
        2 => {
            let words = rng.random_range(0..6u16);
            p.extend_from_slice(&[0x12, 0x34]);
            p.extend_from_slice(&words.to_be_bytes());
            p.extend((0..words * 4).map(|_| rng.random::<u8>()));
        }
        _ => {}
    }
    let payload = rng.random_range(0..=1200);
    p.extend((0..payload).map(|_| rng.random::<u8>()));
    p
}

/// A compound-looking RTCP packet: a valid first header (SR..APP), random body words.
fn random_rtcp(rng: &mut StdRng, ssrc: u32) -> Vec<u8> {
    let words = rng.random_range(0..100u16);
    let mut p = vec![
        0x80 | rng.random_range(0..32u8),
        rng.random_range(200..=204u8),
    ];
    p.extend_from_slice(&(words + 1).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..words * 4).map(|_| rng.random::<u8>()));
    p
}

#[test]
fn srtp_matches_webrtc_srtp_both_ways() {
    let mut rng = StdRng::seed_from_u64(0x5157);
    for profile in SrtpProfile::ALL {
        let key = random_master_key(profile);
        let (mut our_tx, mut our_rx) = (
            SrtpContext::new(&key).unwrap(),
            SrtpContext::new(&key).unwrap(),
        );
        let (mut their_tx, mut their_rx) = (theirs(&key), theirs(&key));
        // Two SSRCs, interleaved, each starting close to a sequence wrap.
        let mut streams = [
            (rng.random::<u32>(), 65536 - 700u32),
            (rng.random::<u32>(), 65000),
        ];
        for i in 0..3000 {
            let (ssrc, next) = &mut streams[i % 2];
            // Mostly consecutive, sometimes a gap as if packets were lost.
            *next += if rng.random_bool(0.05) {
                rng.random_range(2..200)
            } else {
                1
            };
            let plain = random_rtp(&mut rng, *ssrc, *next as u16);

            let mut ours = plain.clone();
            ours.resize(plain.len() + profile.rtp_overhead(), 0);
            let n = our_tx.protect_rtp(&mut ours, plain.len()).unwrap();
            assert_eq!(n, ours.len());
            let theirs = their_tx.encrypt_rtp(&plain).unwrap();
            assert_eq!(
                ours,
                theirs.as_ref(),
                "{profile} packet {i}: identical SRTP"
            );

            let decrypted = their_rx.decrypt_rtp(&ours).unwrap();
            assert_eq!(
                decrypted.as_ref(),
                plain,
                "{profile} packet {i}: they read ours"
            );
            let mut buf = theirs.to_vec();
            let n = our_rx.unprotect_rtp(&mut buf).unwrap();
            assert_eq!(buf[..n], plain, "{profile} packet {i}: we read theirs");
        }
        assert!(
            streams.iter().all(|&(_, next)| next > 65536),
            "both streams wrapped"
        );
    }
}

#[test]
fn srtcp_interoperates_with_webrtc_srtp_both_ways() {
    let mut rng = StdRng::seed_from_u64(0x5158);
    for profile in SrtpProfile::ALL {
        // Separate keys per direction, as on a real leg.
        let (a, b) = (random_master_key(profile), random_master_key(profile));
        let (mut our_tx, mut our_rx) =
            (SrtpContext::new(&a).unwrap(), SrtpContext::new(&b).unwrap());
        let (mut their_rx, mut their_tx) = (theirs(&a), theirs(&b));
        for i in 0..500 {
            let plain = random_rtcp(&mut rng, if i % 3 == 0 { 7 } else { 8 });

            let mut ours = plain.clone();
            ours.resize(plain.len() + profile.rtcp_overhead(), 0);
            our_tx.protect_rtcp(&mut ours, plain.len()).unwrap();
            let decrypted = their_rx.decrypt_rtcp(&ours).unwrap();
            assert_eq!(
                decrypted.as_ref(),
                plain,
                "{profile} packet {i}: they read ours"
            );

            let mut buf = their_tx.encrypt_rtcp(&plain).unwrap().to_vec();
            assert_eq!(buf.len(), plain.len() + profile.rtcp_overhead());
            let n = our_rx.unprotect_rtcp(&mut buf).unwrap();
            assert_eq!(buf[..n], plain, "{profile} packet {i}: we read theirs");
        }
    }
}
