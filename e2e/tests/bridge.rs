//! A WhatsApp call end to end through the real engine over loopback: the Meta emulator
//! (independent stack: rtc-dtls + webrtc-srtp + its own STUN) on one side, a SIP media peer
//! on the other.

mod common;

use std::time::Duration;

use common::*;
use e2e::meta::MetaConfig;
use e2e::sip::SipConfig;
use relay::api::{CallEventKind, EndCause, LegKind, WaSecurity};
use relay::srtp::SrtpProfile;

/// Set up a user-initiated DTLS call, open the gate, run audio both ways, and check that every
/// payload arrived byte for byte.
fn user_initiated_call(profile: SrtpProfile) {
    let mut relay = Relay::start();
    let meta = meta(MetaConfig::default().profiles(&[profile]));
    let sip = sip(SipConfig::default());
    let id = format!("wacid.uic-{profile}");
    let created = relay
        .create(user_initiated(&id, &meta, Some(sip.sdp())))
        .expect("create");
    assert!(created.whatsapp_sdp.contains("a=setup:active\r\n"));
    assert!(created.whatsapp_sdp.contains("a=fingerprint:sha-256 "));
    assert!(created.internal_sdp.contains("RTP/AVP"));
    meta.set_remote_sdp(&created.whatsapp_sdp)
        .expect("meta takes answer");
    sip.set_remote_sdp(&created.internal_sdp)
        .expect("sip takes sdp");

    let ready = relay.wait_event(&id, WAIT, |k| matches!(k, CallEventKind::WhatsAppReady));
    assert!(ready.is_some(), "WhatsApp leg ready (ICE + DTLS)");
    assert!(meta.stats().dtls_connected_at.is_some());
    assert_eq!(meta.stats().srtp_profile, Some(profile));
    assert_eq!(relay.get(&id).unwrap().srtp_profile, Some(profile));

    relay.open_gate(&id);
    meta.start_audio();
    sip.start_audio();
    // Count forwarded audio, not the relay's 3-byte silence fill before the SIP peer's first
    // packet (waiting on all packets raced the assertions below).
    let forwarded_at_meta = || {
        meta.received()
            .iter()
            .filter(|p| p.payload.len() > 3)
            .count()
    };
    assert!(
        wait(|| forwarded_at_meta() >= 50 && sip.received().len() >= 50),
        "audio both ways: meta got {}, sip got {}; relay: {:?}",
        meta.received().len(),
        sip.received().len(),
        relay.get(&id)
    );
    meta.stop_audio();
    sip.stop_audio();

    let at_sip = sip.received();
    let at_meta = meta.received();
    // WhatsApp → internal: payloads untouched, PT mapped to the internal leg's Opus PT.
    assert!(at_sip.iter().all(|p| payload_intact(&p.payload)));
    assert!(at_sip.iter().all(|p| p.header.pt == 111));
    assert!(
        at_sip.iter().all(|p| p.header.ssrc != meta.ssrc()),
        "own SSRC"
    );
    // Internal → WhatsApp: the silence fill may precede the first forwarded packet; every
    // forwarded payload is intact.
    let forwarded: Vec<_> = at_meta.iter().filter(|p| p.payload.len() > 3).collect();
    assert!(forwarded.len() >= 50);
    assert!(forwarded.iter().all(|p| payload_intact(&p.payload)));
    assert!(at_meta.iter().all(|p| p.header.ssrc != sip.ssrc()));
    assert_eq!(meta.stats().media.srtp_auth_failures, 0);

    let info = relay.terminate(&id).expect("final stats");
    assert!(info.whatsapp.received.packets >= 50);
    assert!(info.internal.received.packets >= 50);
    assert_eq!(relay.engine.active_calls(), 0);
}

#[test]
fn user_initiated_aes_cm_sha1_80() {
    user_initiated_call(SrtpProfile::Aes128CmHmacSha1_80);
}

#[test]
fn user_initiated_aead_aes_128_gcm() {
    user_initiated_call(SrtpProfile::AeadAes128Gcm);
}

/// Business-initiated: the relay offers actpass; Meta answers either DTLS role.
fn business_initiated_call(meta_cfg: MetaConfig) {
    let mut relay = Relay::start();
    let meta = meta(meta_cfg);
    let sip = sip(SipConfig::default());
    let id = "wacid.bic";
    let created = relay
        .create(business_initiated(id, WaSecurity::DtlsSrtp, sip.sdp()))
        .expect("create");
    assert!(created.whatsapp_sdp.contains("a=setup:actpass\r\n"));
    let answer = meta
        .answer_sdp(&created.whatsapp_sdp)
        .expect("meta answers");
    relay
        .set_remote(id, LegKind::WhatsApp, &answer)
        .expect("answer applied");
    // The same answer again (a repeated webhook) is harmless.
    relay
        .set_remote(id, LegKind::WhatsApp, &answer)
        .expect("idempotent");
    sip.set_remote_sdp(&created.internal_sdp).unwrap();
    assert!(
        relay
            .wait_event(id, WAIT, |k| matches!(k, CallEventKind::WhatsAppReady))
            .is_some()
    );
    relay.open_gate(id);
    meta.start_audio();
    sip.start_audio();
    assert!(wait(
        || meta.received().len() >= 20 && sip.received().len() >= 20
    ));
    assert!(sip.received().iter().all(|p| payload_intact(&p.payload)));
}

#[test]
fn business_initiated_meta_dtls_client() {
    business_initiated_call(MetaConfig::default().dtls_client());
}

#[test]
fn business_initiated_meta_dtls_server() {
    business_initiated_call(MetaConfig::default().dtls_server());
}

#[test]
fn sdes_on_the_whatsapp_leg() {
    let relay = Relay::start();
    let meta = meta(MetaConfig::default().sdes(SrtpProfile::Aes128CmHmacSha1_80));
    let sip = sip(SipConfig::default());
    let id = "wacid.sdes-wa";
    let created = relay
        .create(user_initiated(id, &meta, Some(sip.sdp())))
        .expect("create");
    assert!(created.whatsapp_sdp.contains("RTP/SAVP"));
    assert!(created.whatsapp_sdp.contains("a=crypto:"));
    assert!(!created.whatsapp_sdp.contains("a=ice-ufrag"));
    meta.set_remote_sdp(&created.whatsapp_sdp).unwrap();
    sip.set_remote_sdp(&created.internal_sdp).unwrap();
    relay.open_gate(id);
    meta.start_audio();
    sip.start_audio();
    assert!(wait(
        || meta.received().len() >= 20 && sip.received().len() >= 20
    ));
    assert!(sip.received().iter().all(|p| payload_intact(&p.payload)));
    assert_eq!(meta.stats().media.srtp_auth_failures, 0);
}

#[test]
fn sdes_on_the_internal_leg() {
    let relay = Relay::start();
    let meta = meta(MetaConfig::default());
    let sip = sip(SipConfig::default().sdes(SrtpProfile::Aes128CmHmacSha1_80));
    let id = "wacid.sdes-internal";
    let mut req = user_initiated(id, &meta, Some(sip.sdp()));
    req.internal.kind = relay::api::InternalKind::SdesSrtp(SrtpProfile::Aes128CmHmacSha1_80);
    let created = relay.create(req).expect("create");
    assert!(created.internal_sdp.contains("RTP/SAVP"));
    meta.set_remote_sdp(&created.whatsapp_sdp).unwrap();
    sip.set_remote_sdp(&created.internal_sdp).unwrap();
    relay.open_gate(id);
    meta.start_audio();
    sip.start_audio();
    assert!(wait(
        || meta.received().len() >= 30 && sip.received().len() >= 20
    ));
    assert!(sip.received().iter().all(|p| payload_intact(&p.payload)));
    assert_eq!(sip.stats().srtp_auth_failures, 0);
}

/// Set up a plain user-initiated call with the gate open; returns the peers.
fn connected_call(relay: &mut Relay, id: &str) -> (e2e::meta::MetaHandle, e2e::sip::SipHandle) {
    let (meta, sip, _) = ready_call(relay, id, MetaConfig::default());
    relay.open_gate(id);
    (meta, sip)
}

#[test]
fn dtmf_arrives_on_the_audio_sequence_and_timestamp_base() {
    let mut relay = Relay::start();
    let (meta, sip) = connected_call(&mut relay, "wacid.dtmf");
    sip.start_audio();
    assert!(wait(|| meta
        .received()
        .iter()
        .filter(|p| p.header.pt == 111 && p.payload.len() > 3)
        .count()
        >= 10));
    sip.send_dtmf(5, Duration::from_millis(100));
    assert!(wait(|| meta.received().iter().any(|p| p.header.pt == 126)));
    assert!(wait(|| meta
        .received()
        .iter()
        .filter(|p| p.header.pt == 111 && p.payload.len() > 3)
        .count()
        >= 25));
    let got = meta.received();
    let ssrcs: std::collections::HashSet<u32> = got.iter().map(|p| p.header.ssrc).collect();
    assert_eq!(ssrcs.len(), 1, "audio and DTMF share one SSRC");
    // One sequence space: consecutive, no duplicates, no gaps across audio and events.
    let mut seqs: Vec<u16> = got.iter().map(|p| p.header.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    let first_dtmf = got.iter().position(|p| p.header.pt == 126).unwrap();
    let before = &got[first_dtmf - 1];
    let dtmf = &got[first_dtmf];
    assert_eq!(dtmf.header.seq, before.header.seq.wrapping_add(1));
    // Event timestamp is on the audio clock base: within a few frames of the previous audio.
    let dts = dtmf.header.ts.wrapping_sub(before.header.ts);
    assert!(
        dts <= 960 * 5,
        "DTMF ts {} vs audio ts {}",
        dtmf.header.ts,
        before.header.ts
    );
    assert_eq!(dtmf.payload[0], 5, "event code 5 untouched");
    // And the relay reported the digit.
    assert!(
        relay
            .wait_event("wacid.dtmf", WAIT, |k| matches!(
                k,
                CallEventKind::DtmfReceived {
                    from: LegKind::Internal,
                    digit: '5'
                }
            ))
            .is_some()
    );
}

#[test]
fn internal_ssrc_change_leaves_outbound_stream_continuous() {
    let mut relay = Relay::start();
    let (meta, sip) = connected_call(&mut relay, "wacid.ssrc");
    sip.start_audio();
    assert!(wait(|| meta.received().len() >= 20));
    sip.change_ssrc(0x1234_5678);
    sip.jump_seq(30_000);
    let n = meta.received().len();
    assert!(wait(|| meta.received().len() >= n + 20));
    let got = meta.received();
    let ssrc = got[0].header.ssrc;
    assert!(
        got.iter().all(|p| p.header.ssrc == ssrc),
        "one outbound SSRC"
    );
    for w in got.windows(2) {
        assert_eq!(
            w[1].header.seq,
            w[0].header.seq.wrapping_add(1),
            "sequence continuous across the source's SSRC change and jump"
        );
        let dts = w[1].header.ts.wrapping_sub(w[0].header.ts);
        assert!(
            dts > 0 && dts < 960 * 10,
            "timestamps advance smoothly, got step {dts}"
        );
    }
}

#[test]
fn packets_from_a_stranger_are_dropped() {
    let mut relay = Relay::start();
    let (meta, sip) = connected_call(&mut relay, "wacid.stranger");
    // Fill is on: meta receives silence; count only forwarded (non-silence) payloads.
    for _ in 0..10 {
        sip.send_from_stranger();
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        meta.received().iter().all(|p| p.payload.len() <= 3),
        "nothing from the stranger reached WhatsApp"
    );
    let info = relay.get("wacid.stranger").unwrap();
    assert_eq!(info.internal.dropped, 10);
    assert_eq!(info.internal.received.packets, 0);
    // The real peer still gets through.
    sip.start_audio();
    assert!(wait(|| meta
        .received()
        .iter()
        .any(|p| payload_intact(&p.payload))));
}

#[test]
fn wrong_fingerprint_ends_the_call_with_a_clear_cause() {
    let mut relay = Relay::start();
    let meta = meta(MetaConfig::default());
    let sip = sip(SipConfig::default());
    let id = "wacid.fp";
    let mut req = user_initiated(id, &meta, Some(sip.sdp()));
    // Someone else's certificate in the offer: the handshake must not complete.
    let offer = req.whatsapp_offer.take().unwrap();
    let fp_line = offer
        .lines()
        .find(|l| l.starts_with("a=fingerprint:sha-256 "))
        .unwrap();
    let bogus = format!("a=fingerprint:sha-256 {}", vec!["AB"; 32].join(":"));
    req.whatsapp_offer = Some(offer.replace(fp_line, &bogus));
    let created = relay.create(req).expect("create");
    meta.set_remote_sdp(&created.whatsapp_sdp).unwrap();
    let ended = relay.wait_event(id, WAIT, |k| matches!(k, CallEventKind::Ended { .. }));
    let Some(CallEventKind::Ended {
        cause, meta_code, ..
    }) = ended
    else {
        panic!("no end: {ended:?}");
    };
    assert_eq!(
        (cause, meta_code),
        (EndCause::FingerprintMismatch, Some(138019))
    );
    assert!(wait(|| relay.engine.active_calls() == 0));
}

#[test]
fn latch_mode_learns_the_internal_peer_from_its_first_packet() {
    let mut relay = Relay::start();
    let meta = meta(MetaConfig::default());
    let sip = sip(SipConfig::default());
    let id = "wacid.latch";
    // A NAT'd media server: its SDP is not given; the relay learns it from the first packet.
    let mut req = user_initiated(id, &meta, None);
    req.internal.source = relay::api::SourcePolicy::Latch;
    establish(&mut relay, req, &meta, &sip);
    relay.open_gate(id);
    sip.start_audio();
    meta.start_audio();
    assert!(wait(|| sip.received().len() >= 20));
    assert_eq!(
        relay.get(id).unwrap().internal_remote,
        Some(sip.local_addr()),
        "latched to the media server's address"
    );
    // After the latch, a stranger is still a stranger.
    sip.send_from_stranger();
    std::thread::sleep(Duration::from_millis(100));
    assert!(relay.get(id).unwrap().internal.dropped >= 1);
    assert!(sip.received().iter().all(|p| payload_intact(&p.payload)));
}
