//! Issue 4, rules 1 and 3: nothing reaches WhatsApp before the gate opens; internal media that
//! arrives early is held and played out first, in order, nothing clipped; the added latency
//! drains.

use super::harness::*;
use crate::api::{CallEventKind, CallState};

#[test]
fn nothing_but_ice_and_dtls_reaches_whatsapp_before_the_gate() {
    let mut sim = Sim::new(Leg::Dtls);
    sim.internal.start(sim.t0);
    sim.wa.start(sim.t0);
    sim.run_until(sim.at(secs(12)));

    // ICE, DTLS and consent ran to completion with the gate closed...
    assert!(
        sim.event(|e| matches!(e, CallEventKind::IceConnected { .. }))
            .is_some()
    );
    assert!(
        sim.event(|e| matches!(e, CallEventKind::DtlsConnected { .. }))
            .is_some()
    );
    assert!(sim.event(|e| *e == CallEventKind::WhatsAppReady).is_some());
    assert_eq!(sim.call.state(), CallState::Ready);
    let checks_after_connect = sim
        .to_wa
        .iter()
        .filter(|d| matches!(d.what, ToWa::Stun) && d.at > sim.at(secs(1)))
        .count();
    assert!(
        checks_after_connect >= 2,
        "consent checks continue before the gate"
    );
    // ...media from WhatsApp was forwarded inward (the gate only guards the outward path)...
    assert!(!sim.to_internal.is_empty());
    // ...and not one RTP or RTCP packet went to WhatsApp.
    let leaked = media_to_wa_before(&sim, sim.now + ms(1));
    assert!(
        leaked.is_empty(),
        "sent to WhatsApp before the gate: {leaked:?}"
    );
    assert!(sim.ended().is_none());
}

/// 1 s of IVR audio arrives before the gate opens.
#[test]
fn held_media_plays_first_in_order_then_live_and_the_latency_drains() {
    let mut sim = Sim::new(Leg::Dtls);
    sim.connect();
    sim.wa.start(sim.now);
    sim.internal.start(sim.at(ms(510)));
    sim.run_until(sim.at(ms(1500)));
    let gate = sim.now;
    let held = sim.internal.sent.len();
    assert_eq!(held, 50, "1 s of media held");
    sim.open_gate();
    sim.run_until(gate + secs(6));

    let rtp = sim.wa_rtp();
    // The maiden packet is the first held one, sent the moment the gate opened.
    assert_eq!(rtp[0].at, gate, "maiden packet at the gate");
    assert_eq!(rtp[0].index(), Some(0));
    assert!(rtp[0].marker);
    // Every packet the server sent, in order, none missing, no silence in between.
    let indexes: Vec<Option<u32>> = rtp.iter().map(|r| r.index()).collect();
    let expect: Vec<Option<u32>> = (0..indexes.len() as u32).map(Some).collect();
    assert_eq!(
        indexes, expect,
        "held then live media, in order, nothing clipped"
    );
    assert_eq!(
        rtp.len(),
        sim.internal.sent.len(),
        "everything sent was delivered"
    );
    for w in rtp.windows(2) {
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1));
        // Media timestamps are the source's: 20 ms apart even when played out faster.
        assert_eq!(w[1].ts.wrapping_sub(w[0].ts), 960);
        assert_eq!(w[1].pt, crate::call::testing::META_OPUS_PT);
    }

    // Added latency per packet: time Meta received it minus time the server sent it.
    let sent_at = |i: u32| sim.internal.sent[i as usize].0;
    let delay = |r: &Rtp| r.at.duration_since(sent_at(r.index().unwrap()));
    assert_eq!(
        delay(rtp[0]),
        ms(990),
        "the first packet waited (almost) a second"
    );
    let last_delayed = rtp
        .iter()
        .rposition(|r| !delay(r).is_zero())
        .expect("some packets were delayed");
    let drained_at = rtp[last_delayed + 1].at;
    let drain = drained_at.duration_since(gate);
    eprintln!(
        "prebuffer: {held} packets (1 s) held; backlog gone {:.3} s after the gate",
        drain.as_secs_f64()
    );
    assert!(
        drain <= secs(3),
        "the added latency must drain within a few seconds, took {drain:?}"
    );
    // From then on, packets go out the instant they arrive.
    assert!(rtp[last_delayed + 1..].iter().all(|r| delay(r).is_zero()));
    assert!(sim.ended().is_none());
}

/// The gate opens first; the WhatsApp leg becomes ready later (DTLS flights lost for 600 ms).
/// Media held meanwhile goes out the moment the leg is ready, and `WhatsAppReady` says when.
#[test]
fn media_is_held_until_the_leg_is_ready_when_the_gate_opens_first() {
    let mut sim = Sim::new(Leg::Dtls);
    sim.meta_gets_dtls = false;
    sim.internal.start(sim.t0);
    sim.open_gate();
    sim.run_until(sim.at(ms(600)));
    assert!(media_to_wa_before(&sim, sim.now + ms(1)).is_empty());
    assert!(sim.event(|e| *e == CallEventKind::WhatsAppReady).is_none());
    sim.meta_gets_dtls = true;
    sim.wa.start(sim.now);
    sim.run_until(sim.at(secs(4)));

    let ready = sim
        .event(|e| *e == CallEventKind::WhatsAppReady)
        .expect("the leg became ready once DTLS got through");
    let rtp = sim.wa_rtp();
    assert_eq!(rtp[0].at, ready, "first packet the moment the leg is ready");
    assert_eq!(rtp[0].index(), Some(0), "the server's very first packet");
    let indexes: Vec<Option<u32>> = rtp.iter().map(|r| r.index()).collect();
    let expect: Vec<Option<u32>> = (0..indexes.len() as u32).map(Some).collect();
    assert_eq!(indexes, expect, "nothing clipped, nothing reordered");
    eprintln!(
        "ready after {:.3} s; {} packets held",
        sim.secs(ready),
        sim.internal.sent.iter().filter(|(t, _)| *t < ready).count()
    );
}

/// The hold buffer is bounded (75 packets = 1.5 s by default): with the gate closed for 3 s the
/// oldest audio is dropped so latency stays bounded, and what is kept plays in order.
#[test]
fn the_hold_buffer_is_bounded_and_keeps_the_newest() {
    let mut sim = Sim::new(Leg::Dtls);
    sim.connect();
    sim.wa.start(sim.now);
    sim.internal.start(sim.now);
    sim.run_for(secs(3));
    let sent_before = sim.internal.sent.len() as u32;
    let cap = crate::call::CallConfig::default().prebuffer_packets as u32;
    sim.open_gate();
    sim.run_for(secs(4));
    let rtp = sim.wa_rtp();
    assert_eq!(
        rtp[0].index(),
        Some(sent_before - cap),
        "the newest {cap} kept"
    );
    let indexes: Vec<Option<u32>> = rtp.iter().map(|r| r.index()).collect();
    let expect: Vec<Option<u32>> = (sent_before - cap..sent_before - cap + indexes.len() as u32)
        .map(Some)
        .collect();
    assert_eq!(indexes, expect);
}

/// Meta treats the first packet it receives as the answer: the relay says when it left, once.
#[test]
fn first_media_sent_is_reported_when_the_maiden_packet_leaves() {
    for held in [false, true] {
        let mut sim = Sim::new(Leg::Dtls);
        sim.connect();
        sim.wa.start(sim.now);
        if held {
            // An IVR greeting is held for the gate: the maiden packet is its first packet.
            sim.internal.start(sim.now);
        }
        sim.run_for(secs(1));
        assert!(
            sim.event(|e| *e == CallEventKind::FirstMediaSent).is_none(),
            "nothing was sent before the gate"
        );
        let gate = sim.now;
        sim.open_gate();
        sim.run_for(secs(3));
        let sent: Vec<_> = sim
            .events
            .iter()
            .filter(|(_, e)| *e == CallEventKind::FirstMediaSent)
            .collect();
        assert_eq!(sent.len(), 1, "once per call");
        let first_rtp = sim.wa_rtp()[0];
        assert_eq!(sent[0].0, gate);
        assert_eq!(first_rtp.at, gate, "the event is the first packet's time");
        assert_eq!(first_rtp.is_silence(), !held);
    }
}
