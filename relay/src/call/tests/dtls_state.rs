//! The WhatsApp leg's DTLS state is freed once the handshake can no longer need it (about
//! 10 KiB a call), unless `call.keep_dtls_state` asks to read Meta's close_notify.

use super::harness::*;
use crate::api::{CallEventKind, EndCause, LegKind};
use crate::call::CallConfig;
use crate::call::stats::DropReason;

fn released(sim: &Sim) -> bool {
    sim.call.legs[crate::call::WA]
        .dtls()
        .is_some_and(|d| d.is_released())
}

/// The relay is the DTLS client toward Meta's ice-lite server (the user-initiated shape): once
/// connected it frees the handshake state; a late DTLS record from Meta is counted, not read,
/// and media keeps flowing both ways.
#[test]
fn client_frees_the_handshake_state_and_counts_later_dtls() {
    let mut sim = Sim::new(Leg::Dtls);
    sim.connect();
    assert!(released(&sim), "freed as soon as the keys are out");

    sim.open_gate();
    sim.wa.start(sim.now);
    sim.internal.start(sim.now);
    sim.run_for(secs(1));
    let before = (sim.to_internal.len(), sim.wa_rtp().len());
    sim.meta_closes_dtls();
    sim.run_for(secs(2));

    assert!(sim.ended().is_none(), "an unread close_notify ends nothing");
    assert_eq!(
        sim.call.dropped(LegKind::WhatsApp, DropReason::LateDtls),
        1,
        "the close_notify is a counted drop"
    );
    assert!(
        sim.to_internal.len() >= before.0 + 99,
        "WhatsApp -> internal continues"
    );
    assert!(
        sim.wa_rtp().len() >= before.1 + 99,
        "internal -> WhatsApp continues"
    );
}

/// With `keep_dtls_state` the state stays, and Meta's close_notify ends the call.
#[test]
fn keep_dtls_state_reads_metas_close_notify() {
    let cfg = CallConfig {
        keep_dtls_state: true,
        ..CallConfig::default()
    };
    let mut sim = Sim::with_config(Leg::Dtls, cfg);
    sim.connect();
    assert!(!released(&sim));
    sim.open_gate();
    sim.wa.start(sim.now);
    sim.run_for(secs(1));
    let closed_at = sim.now;
    sim.meta_closes_dtls();
    sim.run_for(ms(100));

    let (at, cause, code) = sim.ended().expect("the call ended");
    assert_eq!(cause, EndCause::PeerClosed);
    assert_eq!(code, None);
    assert!(at >= closed_at && at <= closed_at + ms(1));
    assert!(
        sim.event(|e| matches!(e, CallEventKind::Ended { .. }))
            .is_some()
    );
}
