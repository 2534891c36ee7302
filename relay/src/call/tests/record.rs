//! Recording a call in simulated time: packets in through the call, Ogg Opus files out,
//! read back and checked against what each side sent (packet counts, durations, the sidecar).
//!
//! The disk writer is a real thread; the test never waits on it by time: `Recorder::shutdown`
//! joins it after every file is finished.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::harness::{Leg, Sim, ms, secs};
use crate::api::{CallEventKind, EndCause, RecordingChange, RecordingState};
use crate::call::fork::RecordRequest;
use crate::call::testing::{INTERNAL_TE_PT, MEDIA_SERVER};
use crate::net::VecOutbox;
use crate::record::ogg::{Summary, summarize};
use crate::record::{Recorder, RecordingConfig};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("relay-rec-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn recorder(dir: &std::path::Path) -> Arc<Recorder> {
    Recorder::start(RecordingConfig {
        dir: Some(dir.to_path_buf()),
        name_template: "{call_id}-{id}".into(),
        queue_packets: 4096,
    })
    .expect("recorder starts")
}

fn start(sim: &mut Sim, rec: &Arc<Recorder>) -> crate::api::RecordingStatus {
    let open = rec
        .create(&sim.call.call_id.clone(), "b", "c", SystemTime::now())
        .expect("files created");
    let status = sim
        .call
        .record(
            RecordRequest::Start {
                open: Box::new(open),
                link: rec.link().clone(),
            },
            sim.now,
        )
        .expect("recording starts")
        .expect("a status");
    sim.collect_events();
    status
}

fn op(sim: &mut Sim, req: RecordRequest) -> Option<crate::api::RecordingStatus> {
    let r = sim.call.record(req, sim.now).expect("request accepted");
    sim.collect_events();
    r
}

fn read(p: &std::path::Path) -> Summary {
    summarize(&std::fs::read(p).expect("file exists")).expect("a valid Ogg Opus file")
}

/// Packets sent in the windows `(from, to]`.
fn sent_in(sent: &[(Instant, u32)], windows: &[(Instant, Instant)]) -> usize {
    sent.iter()
        .filter(|(t, _)| windows.iter().any(|(a, b)| t > a && t <= b))
        .count()
}

fn sidecar(p: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .expect("sidecar exists")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

#[test]
fn both_directions_are_recorded_with_true_durations_across_a_pause() {
    let dir = temp_dir("pause");
    let rec = recorder(&dir);
    let mut sim = Sim::new(Leg::Dtls);
    let t0 = sim.now;
    sim.wa.start(t0);
    sim.run_until(sim.at(ms(1500)));

    let status = start(&mut sim, &rec);
    assert_eq!(status.state, RecordingState::Recording);
    let started = sim.now;
    sim.run_until(sim.at(secs(2)));
    sim.open_gate();
    let gate = sim.now;
    sim.internal.start(sim.now + ms(20));
    sim.run_until(sim.at(secs(5)));
    // PCI: the consumer reads a card number for two seconds.
    assert_eq!(
        op(&mut sim, RecordRequest::Pause).unwrap().state,
        RecordingState::Paused
    );
    let paused = sim.now;
    // Idempotent.
    assert_eq!(
        op(&mut sim, RecordRequest::Pause).unwrap().state,
        RecordingState::Paused
    );
    sim.run_until(sim.at(secs(7)));
    assert_eq!(
        op(&mut sim, RecordRequest::Resume).unwrap().state,
        RecordingState::Recording
    );
    let resumed = sim.now;
    sim.run_until(sim.at(secs(10)));
    let stopped = op(&mut sim, RecordRequest::Stop).unwrap();
    let stop = sim.now;
    assert_eq!(stopped.state, RecordingState::Stopped);
    assert_eq!(stopped.dropped_packets, 0);
    // A repeated stop answers the same recording.
    assert_eq!(op(&mut sim, RecordRequest::Stop), Some(stopped.clone()));
    rec.shutdown();

    let consumer = read(&stopped.files.consumer);
    let agent = read(&stopped.files.agent);
    // Every packet each side sent while recording (and not paused) is in its file, once.
    let windows = [(started, paused), (resumed, stop)];
    let wa_sent = sent_in(&sim.wa.sent, &windows);
    let agent_sent = sent_in(&sim.internal.sent, &windows);
    assert!(wa_sent > 300 && agent_sent > 250, "{wa_sent} {agent_sent}");
    // Real packets: all but the concealment (the pre-skip lead-in and the gaps).
    let real = |s: &Summary, gap_packets: usize| s.packets - 1 - gap_packets;
    // The test payloads start with a zero byte: a 10 ms SILK TOC, so each 20 ms packet is
    // followed by one 10 ms concealment packet; pauses and the start add a few more.
    let events = sidecar(&stopped.files.events);
    let stopped_line = events.last().unwrap();
    assert_eq!(stopped_line["event"], "recording_stopped");
    let gaps = |who: &str| stopped_line[who]["gap_packets"].as_u64().unwrap() as usize;
    assert_eq!(real(&consumer, gaps("consumer")), wa_sent, "{stopped_line}");
    assert_eq!(real(&agent, gaps("agent")), agent_sent);
    assert_eq!(stopped_line["consumer"]["packets"], wa_sent as u64);
    // Both files run from start to stop: 8.5 s, paused span included (to one packet).
    let want = (stop - started).as_secs_f64();
    for s in [&consumer, &agent] {
        assert!(
            (s.duration_secs() - want).abs() <= 0.02,
            "{} vs {want}",
            s.duration_secs()
        );
        assert_eq!(s.final_granule, s.summed_samples);
        assert!(s.eos);
        assert_eq!(u64::from(s.pre_skip), crate::record::ogg::PRE_SKIP);
        assert!(s.tags.iter().any(|t| t.starts_with("CALL_ID=")));
    }
    // The sidecar: start, gate, pause, resume, stop, with times into the recording.
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "recording_started",
            "gate_opened",
            "recording_paused",
            "recording_resumed",
            "recording_stopped"
        ]
    );
    let t = |i: usize| events[i]["t"].as_f64().unwrap();
    assert_eq!(t(1), (gate - started).as_secs_f64());
    assert_eq!(t(2), (paused - started).as_secs_f64());
    assert_eq!(t(3), (resumed - started).as_secs_f64());
    // The watch saw each change.
    let changes: Vec<RecordingChange> = sim
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            CallEventKind::Recording { change, .. } => Some(*change),
            _ => None,
        })
        .collect();
    use RecordingChange::*;
    assert_eq!(changes, [Started, Paused, Resumed, Stopped]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_call_ending_stops_the_recording_before_the_ended_event() {
    let dir = temp_dir("end");
    let rec = recorder(&dir);
    let mut sim = Sim::new(Leg::Dtls);
    sim.wa.start(sim.now);
    sim.run_until(sim.at(secs(1)));
    let status = start(&mut sim, &rec);
    // Starting again returns the running recording (same files), creating nothing.
    let again = rec
        .create(&sim.call.call_id.clone(), "b", "c", SystemTime::now())
        .unwrap();
    let again_files = again.files.clone();
    let r = sim
        .call
        .record(
            RecordRequest::Start {
                open: Box::new(again),
                link: rec.link().clone(),
            },
            sim.now,
        )
        .unwrap()
        .unwrap();
    assert_eq!(r.files, status.files);
    again_files.remove();
    // The agent's keypad: one RFC 4733 event (digit 0) lands in the sidecar.
    let mut dtmf = crate::call::testing::RtpSource::new(0x3333, INTERNAL_TE_PT, 1, 0);
    let mut buf = [0u8; 64];
    let n = dtmf.write_next(&mut buf, 4);
    sim.inject_internal(MEDIA_SERVER, &mut buf, n);
    sim.run_until(sim.at(secs(3)));
    let mut out = VecOutbox::default();
    sim.call.terminate(sim.now, EndCause::Terminated, &mut out);
    sim.collect_events();
    rec.shutdown();

    let kinds: Vec<&CallEventKind> = sim.events.iter().map(|(_, e)| e).collect();
    let n = kinds.len();
    assert!(matches!(
        kinds[n - 2],
        CallEventKind::Recording {
            change: RecordingChange::Stopped,
            ..
        }
    ));
    assert!(matches!(kinds[n - 1], CallEventKind::Ended { .. }));
    let events = sidecar(&status.files.events);
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "recording_started",
            "dtmf",
            "call_ended",
            "recording_stopped"
        ]
    );
    assert_eq!(events[1]["from"], "agent");
    assert_eq!(events[1]["digit"], "0");
    assert_eq!(events[2]["reason"], EndCause::Terminated.as_str());
    let consumer = read(&status.files.consumer);
    assert!(
        (consumer.duration_secs() - 2.0).abs() <= 0.02,
        "{}",
        consumer.duration_secs()
    );
    assert!(consumer.eos);
    // A pause after the end is refused: nothing is being recorded.
    assert!(sim.call.record(RecordRequest::Pause, sim.now).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
