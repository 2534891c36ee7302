//! `CallInfo` counters against the traffic that actually flowed, and bad datagrams counted by
//! reason without harming the call.

use std::net::SocketAddr;

use super::harness::*;
use crate::api::{CallState, LegKind};
use crate::call::stats::DropReason;
use crate::call::testing::{MEDIA_SERVER, META, RtpSource};
use crate::srtp::SrtpProfile;

const STRANGER: &str = "198.51.100.66:3480";
const INTERNAL_STRANGER: &str = "10.99.0.1:24578";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// 12-byte header + 160-byte payload.
const PACKET: u64 = 172;

#[test]
fn counters_match_the_traffic_and_bad_datagrams_are_counted_drops() {
    for leg in [Leg::Sdes(SrtpProfile::Aes128CmHmacSha1_80), Leg::Dtls] {
        counters_for(leg);
    }
}

fn counters_for(leg: Leg) {
    let mut sim = Sim::new(leg);
    sim.connect();
    sim.wa.start(sim.now);
    sim.internal.start(sim.now + ms(5));
    sim.open_gate();
    sim.run_for(secs(2));

    // A stranger with a valid-looking SRTP packet (Meta's keys, another SSRC).
    let mut other = RtpSource::new(0xbad, 111, 1, 1);
    let mut buf = [0u8; 1500];
    let n = other.write_next(&mut buf, PAYLOAD_LEN);
    let n = sim.meta.protect_rtp(&mut buf, n).unwrap();
    sim.inject_wa(addr(STRANGER), &mut buf, n);
    // Garbage (first byte no protocol uses), and a runt that claims to be RTP.
    sim.inject_wa(META, &mut [0xffu8; 40], 40);
    let mut runt = [0x80u8, 111, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0xaa, 0xbb];
    let len = runt.len();
    sim.inject_wa(META, &mut runt, len);
    // Meta's next packet with one payload byte flipped: authentication fails...
    let (good, n) = sim.wa_packet();
    let mut flipped = good;
    flipped[20] ^= 0x01;
    sim.inject_wa(META, &mut flipped, n);
    // ...which must not poison the replay window: the intact packet is still accepted...
    let mut copy = good;
    sim.inject_wa(META, &mut copy, n);
    // ...and only once.
    let mut replay = good;
    sim.inject_wa(META, &mut replay, n);
    // A stranger on the internal leg.
    let mut int = RtpSource::new(0x5555, 96, 1, 1);
    let n = int.write_next(&mut buf, PAYLOAD_LEN);
    sim.inject_internal(addr(INTERNAL_STRANGER), &mut buf, n);

    // The call carries on.
    let forwarded_before = sim.to_internal.len();
    let to_wa_before = sim.wa_rtp().len();
    sim.run_for(secs(1));
    assert!(
        sim.to_internal.len() >= forwarded_before + 49,
        "WhatsApp → internal flows"
    );
    assert!(
        sim.wa_rtp().len() >= to_wa_before + 49,
        "internal → WhatsApp flows"
    );
    assert_eq!(sim.call.state(), CallState::Active);
    assert_eq!(sim.rejected_by_meta(), Vec::<&str>::new());

    let info = sim.call.info();
    let drops = |leg, r| sim.call.dropped(leg, r);
    assert_eq!(drops(LegKind::WhatsApp, DropReason::BadSource), 1);
    assert_eq!(drops(LegKind::WhatsApp, DropReason::Malformed), 2);
    assert_eq!(drops(LegKind::WhatsApp, DropReason::AuthFailed), 1);
    assert_eq!(drops(LegKind::WhatsApp, DropReason::Replayed), 1);
    assert_eq!(info.whatsapp.dropped, 5);
    assert_eq!(info.whatsapp.auth_failures, 1);
    assert_eq!(drops(LegKind::Internal, DropReason::BadSource), 1);
    assert_eq!(info.internal.dropped, 1);

    // Received from Meta: every talker packet plus the one delivered by hand.
    let from_meta = sim.wa.sent.len() as u64 + 1;
    assert_eq!(info.whatsapp.received.packets, from_meta);
    assert_eq!(info.whatsapp.received.bytes, from_meta * PACKET);
    assert_eq!(info.whatsapp.received.lost, 0);
    // ...all forwarded to the media server (RTP header + payload).
    assert_eq!(sim.to_internal.len() as u64, from_meta);
    assert_eq!(info.internal.sent.packets, from_meta);
    assert_eq!(
        info.internal.sent.bytes,
        from_meta * (PACKET - 12),
        "payload octets (RTCP SR)"
    );

    let from_server = sim.internal.sent.len() as u64;
    assert_eq!(info.internal.received.packets, from_server);
    assert_eq!(info.internal.received.bytes, from_server * PACKET);
    assert_eq!(info.internal.received.lost, 0);
    let to_meta = sim.wa_rtp();
    assert_eq!(info.whatsapp.sent.packets, to_meta.len() as u64);
    let payload: usize = to_meta.iter().map(|r| r.payload.len()).sum();
    assert_eq!(info.whatsapp.sent.bytes, payload as u64);
    assert_eq!(info.whatsapp_remote, Some(META));
    assert_eq!(info.internal_remote, Some(MEDIA_SERVER));
    assert!(info.srtp_profile.is_some());
}

/// A garbage datagram on the internal leg is malformed input, like on the WhatsApp leg.
#[test]
fn garbage_on_the_internal_leg_counts_as_malformed() {
    let mut sim = Sim::new(Leg::Sdes(SrtpProfile::AeadAes128Gcm));
    sim.connect();
    sim.inject_internal(MEDIA_SERVER, &mut [0xffu8; 40], 40);
    assert_eq!(
        sim.call.dropped(LegKind::Internal, DropReason::Malformed),
        1
    );
    assert_eq!(
        sim.call.dropped(LegKind::Internal, DropReason::Unexpected),
        0
    );
}
