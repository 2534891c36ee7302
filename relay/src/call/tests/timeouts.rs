//! Issue 4, rule 4: the inward rules, with the real default timers in simulated time. Each
//! test checks the cause, Meta's code, when the call ended (not early, not late), and that
//! nothing is sent after the end.

use std::time::{Duration, Instant};

use super::harness::*;
use crate::api::{CallEventKind, CallState, EndCause};
use crate::call::CallConfig;

/// The call ended with `cause`/`code` within `[at, at + slack]`, and went quiet.
fn assert_ended(sim: &Sim, cause: EndCause, code: u32, at: Instant, slack: Duration) {
    let (when, got, meta_code) = sim.ended().expect("the call ended");
    assert_eq!((got, meta_code), (cause, Some(code)));
    assert!(
        when >= at && when <= at + slack,
        "{cause:?} at {:.3} s, expected {:.3} s",
        sim.secs(when),
        sim.secs(at)
    );
    assert_eq!(sim.call.state(), CallState::Ended);
    assert_eq!(sim.call.info().end_cause, Some(cause));
    assert_eq!(sim.call.poll_timeout(), None, "an ended call has no timers");
    let after: Vec<_> = sim.to_wa.iter().filter(|d| d.at > when).collect();
    assert!(after.is_empty(), "sent after the end: {after:?}");
    assert!(sim.to_internal.iter().all(|r| r.at <= when));
}

#[test]
fn no_packet_from_whatsapp_within_20s_of_the_gate_is_138023() {
    let mut sim = Sim::new(Leg::Dtls);
    sim.connect();
    sim.run_until(sim.at(secs(1)));
    let gate = sim.now;
    sim.open_gate();
    sim.run_until(gate + ms(19_900));
    assert!(
        sim.ended().is_none(),
        "ended before 20 s: {:?}",
        sim.ended()
    );
    sim.run_until(gate + secs(60));
    assert_ended(
        &sim,
        EndCause::NoMediaAfterAccept,
        138023,
        gate + secs(20),
        ms(1),
    );
    // The relay kept its side alive until the end: fill reached Meta the whole time.
    assert!(sim.wa_rtp().last().unwrap().at >= gate + ms(19_980));
}

#[test]
fn media_then_30s_of_nothing_from_whatsapp_is_138021() {
    let mut sim = Sim::new(Leg::Dtls);
    sim.connect();
    sim.wa.start(sim.now);
    sim.run_until(sim.at(secs(1)));
    let gate = sim.now;
    sim.open_gate();
    sim.wa.stop_at(gate + secs(10));
    sim.run_until(gate + secs(11));
    let last = sim.wa.last_sent().unwrap();
    sim.run_until(last + ms(29_900));
    assert!(
        sim.ended().is_none(),
        "ended before 30 s: {:?}",
        sim.ended()
    );
    sim.run_until(last + secs(60));
    assert_ended(
        &sim,
        EndCause::MediaReceiveTimeout,
        138021,
        last + secs(30),
        ms(1),
    );
}

/// Meta never answers a check: the default (10 s) and a configured connect timeout.
#[test]
fn ice_that_never_connects_is_138020_at_the_configured_timeout() {
    for timeout in [CallConfig::default().ice_connect_timeout, secs(7)] {
        let cfg = CallConfig {
            ice_connect_timeout: timeout,
            ..CallConfig::default()
        };
        let mut sim = Sim::with_config(Leg::Dtls, cfg);
        sim.meta_answers_stun = false;
        sim.internal.start(sim.t0);
        sim.open_gate();
        sim.run_until(sim.t0 + timeout - ms(100));
        assert!(sim.ended().is_none());
        sim.run_until(sim.t0 + secs(40));
        assert_ended(&sim, EndCause::IceFailed, 138020, sim.t0 + timeout, ms(1));
        assert!(sim.to_wa.iter().all(|d| matches!(d.what, ToWa::Stun)));
        // Checks kept being retransmitted until the end (Meta may be slow to converge).
        let last_check = sim.to_wa.last().unwrap().at;
        assert!(last_check >= sim.t0 + timeout - ms(600));
    }
}

#[test]
fn dtls_that_never_completes_is_138019() {
    let mut sim = Sim::new(Leg::Dtls);
    sim.meta_gets_dtls = false;
    sim.open_gate();
    sim.run_until(sim.t0 + secs(40));
    let ice_at = sim
        .event(|e| matches!(e, CallEventKind::IceConnected { .. }))
        .expect("ICE connected");
    let timeout = CallConfig::default().dtls_timeout;
    assert_ended(&sim, EndCause::DtlsFailed, 138019, ice_at + timeout, ms(1));
    let flights = sim
        .to_wa
        .iter()
        .filter(|d| matches!(d.what, ToWa::Dtls))
        .count();
    assert!(
        flights >= 5,
        "the ClientHello was retransmitted ({flights} flights)"
    );
}

#[test]
fn consent_unanswered_for_30s_is_consent_lost() {
    let mut sim = Sim::new(Leg::Dtls);
    sim.connect();
    sim.wa.start(sim.now);
    sim.internal.start(sim.now);
    sim.run_until(sim.at(secs(1)));
    sim.open_gate();
    sim.run_until(sim.at(secs(20)));
    // Meta stops answering checks; its media keeps flowing, so only consent can end the call.
    sim.meta_answers_stun = false;
    let last_answer = sim.last_stun_answer.expect("Meta answered consent checks");
    sim.run_until(last_answer + ms(29_900));
    assert!(sim.ended().is_none(), "ended early: {:?}", sim.ended());
    sim.run_until(sim.at(secs(90)));
    assert_ended(
        &sim,
        EndCause::ConsentLost,
        138020,
        last_answer + secs(30),
        ms(1),
    );
    let lost = sim.event(|e| *e == CallEventKind::ConsentLost).unwrap();
    assert_eq!(Some(lost), sim.ended().map(|e| e.0));
    // Consent checks kept going out every ~5 s while unanswered.
    let checks = sim
        .to_wa
        .iter()
        .filter(|d| matches!(d.what, ToWa::Stun) && d.at > last_answer)
        .count();
    assert!(
        (5..=8).contains(&checks),
        "{checks} unanswered consent checks"
    );
}

/// The signaling tier's terminate: RTCP BYE on both legs, `Ended{Terminated}` without a Meta
/// code, then silence.
#[test]
fn terminate_says_bye_on_both_legs_then_goes_quiet() {
    let mut sim = Sim::new(Leg::Dtls);
    sim.connect();
    sim.wa.start(sim.now);
    sim.internal.start(sim.now);
    sim.open_gate();
    sim.run_for(secs(2));
    let at = sim.now;
    sim.call
        .terminate(at, EndCause::Terminated, &mut sim.from_call);
    sim.collect_events();
    sim.run_for(secs(40));

    let (when, cause, code) = sim.ended().unwrap();
    assert_eq!((when, cause, code), (at, EndCause::Terminated, None));
    let bye_to_meta = sim
        .to_wa
        .iter()
        .any(|d| d.at == at && matches!(&d.what, ToWa::Rtcp(p) if rtcp_types(p).contains(&203)));
    assert!(bye_to_meta, "RTCP BYE to Meta");
    let bye_to_server = sim
        .to_internal_rtcp
        .iter()
        .any(|(t, types)| *t == at && types.contains(&203));
    assert!(bye_to_server, "RTCP BYE to the media server");
    assert!(sim.to_wa.iter().all(|d| d.at <= at));
    assert!(sim.to_internal.iter().all(|r| r.at <= at));
    assert_eq!(sim.call.poll_timeout(), None);
}
