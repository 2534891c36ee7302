//! A WhatsApp caller reaches a browser agent through the real engine over loopback, with no
//! media server between: the Meta emulator on the WhatsApp side, a browser-like WebRTC peer
//! (full ICE controlling with USE-CANDIDATE, rtc-dtls, webrtc-srtp) on the internal side.
//! Offer/answer both ways, audio byte for byte both ways, DTMF both ways, RTCP to the browser.

mod common;

use std::time::Duration;

use common::*;
use e2e::browser::{BrowserConfig, BrowserHandle, BrowserPeer};
use e2e::meta::MetaConfig;
use relay::api::{CallEventKind, EndCause, InternalKind, LegKind};
use relay::srtp::SrtpProfile;

fn browser(cfg: BrowserConfig) -> BrowserHandle {
    BrowserPeer::spawn(cfg).expect("browser peer starts")
}

/// Audio both ways until each side has `n` packets; every forwarded payload intact, each side
/// sees the relay's own SSRC.
fn audio_both_ways(relay: &Relay, id: &str, meta: &e2e::meta::MetaHandle, browser: &BrowserHandle) {
    relay.open_gate(id);
    meta.start_audio();
    browser.start_audio();
    // Toward WhatsApp, silence fill (3-byte payloads) may come first: count forwarded audio.
    let forwarded_to_meta = || {
        meta.received()
            .iter()
            .filter(|p| p.payload.len() > 3)
            .count()
    };
    assert!(
        wait(|| forwarded_to_meta() >= 50 && browser.received().len() >= 50),
        "audio both ways: meta got {}, browser got {}; relay: {:?}; browser: {:?}",
        meta.received().len(),
        browser.received().len(),
        relay.get(id),
        browser.stats()
    );
    meta.stop_audio();
    browser.stop_audio();

    let at_browser = browser.received();
    assert!(at_browser.iter().all(|p| payload_intact(&p.payload)));
    assert!(at_browser.iter().all(|p| p.header.pt == 111));
    assert!(at_browser.iter().all(|p| p.header.ssrc != meta.ssrc()));
    let forwarded: Vec<_> = meta
        .received()
        .into_iter()
        .filter(|p| p.payload.len() > 3)
        .collect();
    assert!(forwarded.len() >= 50);
    assert!(forwarded.iter().all(|p| payload_intact(&p.payload)));
    assert!(forwarded.iter().all(|p| p.header.ssrc != browser.ssrc()));
    assert_eq!(browser.stats().media.srtp_auth_failures, 0);
    assert_eq!(meta.stats().media.srtp_auth_failures, 0);
    assert_eq!(
        relay.get(id).unwrap().internal_remote,
        Some(browser.local_addr())
    );
}

/// The browser offers (Chrome's actpass); the relay answers passive and ICE-lite.
#[test]
fn browser_offers_audio_dtmf_rtcp_both_ways() {
    let mut relay = Relay::start();
    let meta = meta(MetaConfig::default());
    let browser = browser(BrowserConfig::default());
    let id = "wacid.webrtc-browser-offer";
    let mut req = user_initiated(id, &meta, Some(browser.offer()));
    req.internal.kind = InternalKind::WebRtc;
    let created = relay.create(req).expect("create");
    for line in [
        "a=ice-lite\r\n",
        "a=setup:passive\r\n",
        "a=group:BUNDLE 0\r\n",
        "a=mid:0\r\n",
        "a=rtcp-mux\r\n",
        "UDP/TLS/RTP/SAVPF 111 126\r\n",
    ] {
        assert!(
            created.internal_sdp.contains(line),
            "{line:?} in\n{}",
            created.internal_sdp
        );
    }
    meta.set_remote_sdp(&created.whatsapp_sdp).unwrap();
    browser.accept_answer(&created.internal_sdp).unwrap();
    assert!(
        relay
            .wait_event(id, WAIT, |k| matches!(k, CallEventKind::WhatsAppReady))
            .is_some()
    );
    assert!(
        browser.wait_until(WAIT, |s| s.dtls_connected_at.is_some()),
        "browser DTLS: {:?}",
        browser.stats()
    );
    audio_both_ways(&relay, id, &meta, &browser);

    // DTMF from the browser reaches WhatsApp on Meta's PT and is reported once.
    browser.send_dtmf(7, Duration::from_millis(100));
    assert!(
        relay
            .wait_event(id, WAIT, |k| matches!(
                k,
                CallEventKind::DtmfReceived {
                    from: LegKind::Internal,
                    digit: '7'
                }
            ))
            .is_some()
    );
    assert!(wait(|| meta
        .received()
        .iter()
        .any(|p| p.header.pt == 126 && p.payload.first() == Some(&7))));
    // ... and from WhatsApp to the browser.
    meta.send_dtmf(3, Duration::from_millis(100));
    assert!(
        wait(|| browser
            .received()
            .iter()
            .any(|p| p.header.pt == 126 && p.payload.first() == Some(&3))),
        "DTMF reached the browser"
    );
    // RTCP: the relay's sender reports reach the browser (keepalive for its stats and RTT).
    assert!(
        wait(|| browser
            .received_rtcp()
            .iter()
            .any(|r| r.types.first() == Some(&200))),
        "an SR reached the browser"
    );

    let info = relay.terminate(id).expect("final stats");
    assert_eq!(info.end_cause, Some(EndCause::Terminated));
    assert!(info.internal.received.packets >= 50);
    assert_eq!(relay.engine.active_calls(), 0);
}

/// The relay offers (actpass); the browser's answer arrives through SetRemoteDescription, in
/// either DTLS role.
fn relay_offers(cfg: BrowserConfig) {
    let mut relay = Relay::start();
    let meta = meta(MetaConfig::default());
    let browser = browser(cfg);
    let id = "wacid.webrtc-relay-offer";
    let mut req = user_initiated(id, &meta, None);
    req.internal.kind = InternalKind::WebRtc;
    let created = relay.create(req).expect("create");
    assert!(created.internal_sdp.contains("a=setup:actpass\r\n"));
    meta.set_remote_sdp(&created.whatsapp_sdp).unwrap();
    let answer = browser
        .answer(&created.internal_sdp)
        .expect("browser answers");
    relay
        .set_remote(id, LegKind::Internal, &answer)
        .expect("answer applied");
    relay
        .set_remote(id, LegKind::Internal, &answer)
        .expect("the same answer again is harmless");
    assert!(
        relay
            .wait_event(id, WAIT, |k| matches!(k, CallEventKind::WhatsAppReady))
            .is_some()
    );
    assert!(
        browser.wait_until(WAIT, |s| s.dtls_connected_at.is_some()),
        "browser DTLS: {:?}",
        browser.stats()
    );
    audio_both_ways(&relay, id, &meta, &browser);
}

#[test]
fn relay_offers_browser_answers_active() {
    relay_offers(BrowserConfig::default());
}

#[test]
fn relay_offers_browser_answers_passive_with_aes_cm() {
    relay_offers(
        BrowserConfig::default()
            .answer_passive()
            .profiles(&[SrtpProfile::Aes128CmHmacSha1_80]),
    );
}
