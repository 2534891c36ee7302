//! Issue 4, rules 4 and 5: an internal leg that goes silent, and one-way audio, are reported
//! (once per episode) with the default timers in simulated time.

use super::harness::*;
use crate::api::{CallEventKind, EndCause, LegKind};
use crate::call::CallConfig;

#[test]
fn a_silent_internal_leg_is_reported_once_at_30s_and_the_call_lives_on() {
    let mut sim = Sim::new(Leg::Dtls);
    sim.connect();
    sim.wa.start(sim.now);
    let gate = sim.now;
    sim.open_gate();
    sim.run_until(gate + secs(29));
    assert!(
        sim.event(|k| matches!(k, CallEventKind::InternalLegSilent { .. }))
            .is_none()
    );
    sim.run_until(gate + secs(90));
    let silent: Vec<_> = sim
        .events
        .iter()
        .filter(|(_, k)| matches!(k, CallEventKind::InternalLegSilent { .. }))
        .collect();
    assert_eq!(silent.len(), 1, "once per silent spell: {silent:?}");
    let at = silent[0].0;
    // Judged once a second: at most a second late.
    assert!(at >= gate + secs(30) && at <= gate + secs(31));
    assert!(
        sim.ended().is_none(),
        "by default silence is reported, not fatal"
    );
}

#[test]
fn a_silent_internal_leg_can_end_the_call() {
    let cfg = CallConfig {
        end_on_internal_silence: true,
        internal_silence_timeout: secs(5),
        ..CallConfig::default()
    };
    let mut sim = Sim::with_config(Leg::Dtls, cfg);
    sim.connect();
    sim.wa.start(sim.now);
    let gate = sim.now;
    sim.open_gate();
    sim.run_until(gate + secs(10));
    let (when, cause, _) = sim.ended().expect("ended");
    assert_eq!(cause, EndCause::InternalLegTimeout);
    assert!(when >= gate + secs(5) && when <= gate + secs(6));
}

#[test]
fn one_way_audio_names_the_silent_leg() {
    let mut sim = Sim::new(Leg::Dtls);
    sim.connect();
    // WhatsApp talks, the internal leg never does: the internal leg is the silent one.
    sim.wa.start(sim.now);
    let gate = sim.now;
    sim.open_gate();
    sim.run_until(gate + secs(9));
    assert!(
        sim.event(|k| matches!(k, CallEventKind::OneWayAudio { .. }))
            .is_none()
    );
    sim.run_until(gate + secs(20));
    let one_way: Vec<_> = sim
        .events
        .iter()
        .filter_map(|(at, k)| match k {
            CallEventKind::OneWayAudio { silent } => Some((*at, *silent)),
            _ => None,
        })
        .collect();
    assert_eq!(one_way.len(), 1, "{one_way:?}");
    assert_eq!(one_way[0].1, LegKind::Internal);
    assert!(one_way[0].0 >= gate + secs(10) && one_way[0].0 <= gate + secs(11));
}
