//! Issue 18: no call outlives its purpose. Every state that waits on someone else has a
//! bounded life with its own timer and end cause (Meta's answer, the accept), and the call
//! itself has a maximum duration. Before, such calls lived on (one for 43 minutes), holding
//! their ports and the per-number slot, so the consumer's next call was refused with 138003.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::harness::*;
use crate::api::{
    CallDirection, CallEventKind, CallState, CreateCall, EndCause, InternalKind, InternalLegSpec,
    LegKind, SourcePolicy, WaSecurity,
};
use crate::call::testing::{self, RELAY_INTERNAL, RELAY_WA};
use crate::call::{Advertised, Call, CallConfig, CallSetup, LocalSockets};
use crate::dtls::DtlsIdentity;
use crate::net::VecOutbox;
use crate::srtp::{self, SrtpProfile};

const SDES: SrtpProfile = SrtpProfile::Aes128CmHmacSha1_80;

/// A business-initiated call (the relay offers) with a plain-RTP internal leg.
fn business_call(security: WaSecurity, cfg: CallConfig, now: Instant) -> Call {
    let req = CreateCall {
        call_id: "wacid.bic".to_string(),
        business_number: "15550001111".to_string(),
        consumer: "15552223333".to_string(),
        direction: CallDirection::BusinessInitiated,
        whatsapp_offer: None,
        whatsapp_security: security,
        internal: InternalLegSpec {
            kind: InternalKind::PlainRtp,
            remote_sdp: Some(testing::internal_sdp()),
            source: SourcePolicy::Strict,
        },
    };
    let identity = Arc::new(DtlsIdentity::generate().expect("relay certificate"));
    Call::create(
        CallSetup {
            req: &req,
            sockets: LocalSockets {
                wa_v4: Some(RELAY_WA),
                wa_v6: None,
                internal: RELAY_INTERNAL,
            },
            advertised: Advertised {
                wa_v4: Some(RELAY_WA.ip()),
                wa_v6: None,
                internal: RELAY_INTERNAL.ip(),
            },
            identity,
            cfg,
        },
        now,
        SystemTime::UNIX_EPOCH,
    )
    .expect("create")
    .call
}

/// Run a call that nobody talks to on its own timers until `end`; its events with times, and
/// what it sent.
fn run_alone(call: &mut Call, end: Instant) -> (Vec<(Instant, CallEventKind)>, Vec<SocketAddr>) {
    let mut out = VecOutbox::default();
    let mut events = Vec::new();
    while let Some(t) = call.poll_timeout().filter(|t| *t <= end) {
        call.handle_timeout(t, &mut out);
        while let Some(e) = call.poll_event() {
            events.push((t, e));
        }
    }
    (events, out.take().into_iter().map(|s| s.to).collect())
}

fn ended(events: &[(Instant, CallEventKind)]) -> Option<(Instant, EndCause, Option<u32>)> {
    events.iter().find_map(|(t, e)| match e {
        CallEventKind::Ended {
            cause, meta_code, ..
        } => Some((*t, *cause, *meta_code)),
        _ => None,
    })
}

#[test]
fn user_initiated_sdes_call_never_accepted_ends_at_the_accept_timeout() {
    let mut sim = Sim::new(Leg::Sdes(SDES));
    // An IVR already talks (held for the gate), but nobody ever calls OpenGate.
    sim.internal.start(sim.t0);
    let timeout = CallConfig::default().accept_timeout;
    assert_eq!(timeout, secs(90));
    sim.run_until(sim.t0 + timeout - ms(10));
    assert!(sim.ended().is_none(), "ended early: {:?}", sim.ended());
    assert_eq!(sim.call.state(), CallState::Ready);
    sim.run_until(sim.t0 + secs(600));
    let (at, cause, code) = sim.ended().expect("the call ended on its own");
    assert_eq!((cause, code), (EndCause::AcceptTimeout, Some(138007)));
    assert_eq!(at, sim.t0 + timeout);
    assert!(
        sim.wa_rtp().is_empty(),
        "nothing reached WhatsApp: the gate never opened"
    );
    assert_eq!(sim.call.poll_timeout(), None);
}

#[test]
fn a_configured_accept_timeout_is_honoured_for_a_dtls_call_too() {
    let cfg = CallConfig {
        accept_timeout: secs(45),
        ..CallConfig::default()
    };
    let mut sim = Sim::with_config(Leg::Dtls, cfg);
    sim.connect();
    sim.run_until(sim.t0 + secs(300));
    let (at, cause, _) = sim.ended().expect("ended");
    assert_eq!((at, cause), (sim.t0 + secs(45), EndCause::AcceptTimeout));
}

#[test]
fn business_initiated_calls_meta_never_answers_end_at_the_answer_timeout() {
    for security in [WaSecurity::DtlsSrtp, WaSecurity::Sdes(SDES)] {
        let t0 = Instant::now();
        let mut call = business_call(security, CallConfig::default(), t0);
        let timeout = CallConfig::default().answer_timeout;
        assert_eq!(timeout, secs(90));
        let (events, _) = run_alone(&mut call, t0 + timeout - ms(10));
        assert!(ended(&events).is_none(), "{security:?}: ended early");
        let (events, _) = run_alone(&mut call, t0 + secs(3600));
        let (at, cause, code) = ended(&events).expect("the call ended on its own");
        assert_eq!(
            (at, cause, code),
            (t0 + timeout, EndCause::AnswerTimeout, Some(138007)),
            "{security:?}"
        );
        assert!(call.is_ended());
    }
}

#[test]
fn business_initiated_sdes_call_answered_but_never_accepted_ends_at_the_accept_timeout() {
    let t0 = Instant::now();
    let mut call = business_call(WaSecurity::Sdes(SDES), CallConfig::default(), t0);
    let (events, _) = run_alone(&mut call, t0 + secs(30));
    assert!(ended(&events).is_none());
    // Meta answers 30 s in (the consumer picked up), then the signaling tier never opens the
    // gate: the accept timer counts from the answer.
    let answered = t0 + secs(30);
    let meta_key = srtp::random_master_key(SDES);
    call.set_remote_description(
        LegKind::WhatsApp,
        &testing::sdes_offer(&meta_key),
        answered,
        &mut VecOutbox::default(),
    )
    .expect("Meta's answer");
    assert_eq!(call.state(), CallState::Ready);
    let (events, sent) = run_alone(&mut call, t0 + secs(3600));
    let (at, cause, code) = ended(&events).expect("the call ended on its own");
    assert_eq!(
        (at, cause, code),
        (answered + secs(90), EndCause::AcceptTimeout, Some(138007))
    );
    assert!(
        sent.iter().all(|to| *to != testing::META),
        "nothing went to WhatsApp without the gate"
    );
}

#[test]
fn a_live_call_ends_at_the_maximum_duration_with_a_bye() {
    assert_eq!(
        CallConfig::default().max_call_duration,
        Duration::from_secs(4 * 3600)
    );
    let cfg = CallConfig {
        max_call_duration: secs(60),
        ..CallConfig::default()
    };
    let mut sim = Sim::with_config(Leg::Dtls, cfg);
    sim.connect();
    sim.wa.start(sim.now);
    sim.internal.start(sim.now);
    sim.open_gate();
    sim.run_until(sim.t0 + ms(59_990));
    assert!(sim.ended().is_none());
    sim.run_until(sim.t0 + secs(70));
    let (at, cause, code) = sim.ended().expect("ended");
    assert_eq!(
        (at, cause, code),
        (sim.t0 + secs(60), EndCause::MaxDuration, None)
    );
    let bye_to_meta = sim
        .to_wa
        .iter()
        .any(|d| d.at == at && matches!(&d.what, ToWa::Rtcp(p) if rtcp_types(p).contains(&203)));
    assert!(bye_to_meta, "RTCP BYE to Meta");
    assert!(sim.to_wa.iter().all(|d| d.at <= at));
}

#[test]
fn a_zero_maximum_duration_is_no_limit() {
    for (max, ends) in [(secs(100), true), (Duration::ZERO, false)] {
        let cfg = CallConfig {
            max_call_duration: max,
            ..CallConfig::default()
        };
        let mut sim = Sim::with_config(Leg::Sdes(SDES), cfg);
        sim.connect();
        sim.wa.start(sim.now);
        sim.open_gate();
        sim.run_until(sim.t0 + secs(120));
        assert_eq!(sim.ended().is_some(), ends, "max_call_duration {max:?}");
    }
}
