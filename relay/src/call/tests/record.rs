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

/// The Opus packets of an Ogg file, read without the relay's own Ogg code (RFC 3533 pages and
/// lacing), after the two header packets; and the pre-skip from `OpusHead`.
fn ogg_opus_packets(data: &[u8]) -> (u16, Vec<Vec<u8>>) {
    let mut packets: Vec<Vec<u8>> = Vec::new();
    let mut partial: Vec<u8> = Vec::new();
    let mut at = 0;
    while at < data.len() {
        assert_eq!(&data[at..at + 4], b"OggS", "a page at byte {at}");
        let segments = usize::from(data[at + 26]);
        let table = &data[at + 27..at + 27 + segments];
        let mut body = at + 27 + segments;
        for &lace in table {
            partial.extend_from_slice(&data[body..body + usize::from(lace)]);
            body += usize::from(lace);
            if lace < 255 {
                packets.push(std::mem::take(&mut partial));
            }
        }
        at = body;
    }
    assert!(packets[0].starts_with(b"OpusHead") && packets[1].starts_with(b"OpusTags"));
    let pre_skip = u16::from_le_bytes([packets[0][10], packets[0][11]]);
    (pre_skip, packets.split_off(2))
}

/// A file decoded with libopus: each packet's start (in 48 kHz samples from the start of the
/// recording, pre-skip removed) and the source index of the ones that carry a sent payload.
struct Decoded {
    /// `(start, index)` of every packet that is one the test sent.
    sent: Vec<(u64, u32)>,
    /// Samples the decoder produced, less the pre-skip.
    samples: u64,
}

fn decode(p: &std::path::Path) -> Decoded {
    let (pre_skip, packets) = ogg_opus_packets(&std::fs::read(p).expect("file exists"));
    let mut dec = crate::codec::opus::OpusDecoder::new(48_000).expect("libopus decoder");
    let mut pcm = vec![0i16; 5760];
    let (mut pos, mut sent) = (0u64, Vec::new());
    for pkt in &packets {
        let n = dec
            .decode(pkt, &mut pcm)
            .expect("libopus decodes every packet") as u64;
        // The test's payloads carry their index and a 0x5a fill; concealment is 2 bytes.
        if pkt.len() == super::harness::PAYLOAD_LEN && pkt[4..].iter().all(|b| *b == 0x5a) {
            let index = crate::call::testing::payload_index(pkt).unwrap();
            sent.push((pos.saturating_sub(u64::from(pre_skip)), index));
        }
        pos += n;
    }
    Decoded {
        sent,
        samples: pos - u64::from(pre_skip),
    }
}

/// `opusinfo`'s playback length in seconds, or `None` (with a note) where opus-tools is not
/// installed (scripts/test.sh installs it). Its warnings and errors fail the test.
fn opusinfo_secs(f: &std::path::Path) -> Option<f64> {
    let o = match std::process::Command::new("opusinfo").arg(f).output() {
        Ok(o) => o,
        Err(_) => {
            eprintln!("opusinfo not installed (Debian: opus-tools); check skipped");
            return None;
        }
    };
    let info = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !info.contains("WARNING") && !info.contains("ERROR"),
        "{f:?}: {info}"
    );
    let v = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("Playback length: "))
        .unwrap_or_else(|| panic!("no playback length in {info}"));
    let (m, s) = v.trim_end_matches('s').split_once("m:").unwrap();
    Some(m.parse::<f64>().unwrap() * 60.0 + s.parse::<f64>().unwrap())
}

/// One recording across everything that interrupts a stream: the consumer falls silent for a
/// second (DTX: no packets, the timestamp jumps), then presses a key (RFC 4733 packets instead
/// of audio), the agent is replaced (a new SSRC and numbering), and the recording is paused
/// and resumed. Both files, decoded with libopus and read by `opusinfo`, last exactly from
/// start to stop, hold every Opus packet sent while recording (and none of the paused span or
/// the DTMF) once each, and place the first packet after the silence and after the transfer at
/// the time it arrived.
#[test]
fn files_decode_to_the_true_timeline_across_silence_dtmf_a_transfer_and_a_pause() {
    use crate::api::{InternalKind, InternalLegSpec, SourcePolicy};
    use crate::call::testing::{
        INTERNAL_OPUS_PT, META, META_TE_PT, RELAY_INTERNAL, RELAY_WA, RtpSource, TS_PER_20MS,
        internal_sdp,
    };
    use crate::call::{Advertised, LocalSockets};

    let dir = temp_dir("gaps");
    let rec = recorder(&dir);
    let mut sim = Sim::new(Leg::Dtls);
    sim.wa.start(sim.t0);
    sim.run_until(sim.at(ms(1500)));
    start(&mut sim, &rec);
    let started = sim.now;
    sim.run_until(sim.at(secs(2)));
    sim.open_gate();
    sim.internal.start(sim.now + ms(20));

    // 4 s: the consumer is silent for one second (DTX), its timestamps moving on.
    sim.wa.stop_at(sim.at(secs(4)));
    sim.run_until(sim.at(secs(5)) - ms(1));
    sim.wa.src.ts = sim.wa.src.ts.wrapping_add(50 * TS_PER_20MS);
    let after_silence = sim.wa.src.index;
    sim.wa.start(sim.at(secs(5)));

    // 5.5 s: a key press, 200 ms of telephone-events in place of audio.
    sim.wa.stop_at(sim.at(ms(5500)));
    sim.run_until(sim.at(ms(5500)));
    let mut key = RtpSource::new(sim.wa.src.ssrc, META_TE_PT, sim.wa.src.seq, sim.wa.src.ts);
    for _ in 0..10 {
        let mut buf = [0u8; 1500];
        let n = key.write_next(&mut buf, 4);
        key.ts = sim.wa.src.ts; // one event: one timestamp
        let n = sim.meta.protect_rtp(&mut buf, n).expect("Meta protects");
        sim.inject_wa(META, &mut buf, n);
        sim.run_for(ms(20));
    }
    sim.wa.src.seq = key.seq;
    sim.wa.src.ts = sim.wa.src.ts.wrapping_add(10 * TS_PER_20MS);
    sim.wa.start(sim.now);

    // 6.5 s: the agent is transferred: a new leg, a new SSRC, numbering and timestamps.
    sim.run_until(sim.at(ms(6500)));
    let spec = InternalLegSpec {
        kind: InternalKind::PlainRtp,
        remote_sdp: Some(internal_sdp()),
        source: SourcePolicy::Strict,
    };
    sim.call
        .replace_internal_leg(
            &spec,
            LocalSockets {
                wa_v4: Some(RELAY_WA),
                wa_v6: None,
                internal: RELAY_INTERNAL,
            },
            Advertised {
                wa_v4: Some(RELAY_WA.ip()),
                wa_v6: None,
                internal: RELAY_INTERNAL.ip(),
            },
            sim.now,
            &mut sim.from_call,
        )
        .expect("transfer");
    sim.collect_events();
    let first_b = sim.internal.src.index;
    sim.internal.src.ssrc = 0x3333_3333;
    sim.internal.src.seq = 17;
    sim.internal.src.ts = 123_456_789;
    sim.internal.src.pt = INTERNAL_OPUS_PT;

    // 7 s to 8 s: paused.
    sim.run_until(sim.at(secs(7)));
    op(&mut sim, RecordRequest::Pause);
    let paused = sim.now;
    sim.run_until(sim.at(secs(8)));
    op(&mut sim, RecordRequest::Resume);
    let resumed = sim.now;
    sim.run_until(sim.at(secs(9)));
    let stopped = op(&mut sim, RecordRequest::Stop).unwrap();
    let stop = sim.now;
    assert_eq!(stopped.dropped_packets, 0);
    rec.shutdown();

    let windows = [(started, paused), (resumed, stop)];
    let want_secs = (stop - started).as_secs_f64();
    let at = |t: Instant| ((t - started).as_secs_f64() * 48_000.0) as u64;
    for (file, talker, name) in [
        (&stopped.files.consumer, &sim.wa, "consumer"),
        (&stopped.files.agent, &sim.internal, "agent"),
    ] {
        let d = decode(file);
        let decoded = d.samples as f64 / 48_000.0;
        // Start to stop (7.5 s), and the last packet's own length at most (a packet that
        // arrives at the stop is kept whole).
        assert!(
            decoded >= want_secs && decoded <= want_secs + 0.02,
            "{name}: decoded {decoded} s, recorded {want_secs} s"
        );
        // The granule positions say the same as the decoder.
        if let Some(secs) = opusinfo_secs(file) {
            assert!(
                (secs - decoded).abs() < 0.001,
                "{name}: opusinfo {secs} s, decoded {decoded} s"
            );
        }
        // Every packet sent while recording, once, in order; none from the paused span.
        let want: Vec<u32> = talker
            .sent
            .iter()
            .filter(|(t, _)| windows.iter().any(|(a, b)| t > a && t <= b))
            .map(|(_, i)| *i)
            .collect();
        let got: Vec<u32> = d.sent.iter().map(|(_, i)| *i).collect();
        assert_eq!(got, want, "{name}: the packets in the file");
        eprintln!(
            "{name}: {decoded} s decoded by libopus for {want_secs} s recorded; {} packets \
             sent while recording, all in the file",
            want.len()
        );
        // Each where it arrived (within a packet time): after the silence, after the
        // transfer, after the pause.
        let sent_at = |index: u32| talker.sent.iter().find(|(_, i)| *i == index).unwrap().0;
        for (pos, index) in d.sent.iter().step_by(25) {
            let t = sent_at(*index);
            assert!(
                pos.abs_diff(at(t)) <= 960,
                "{name}: packet {index} at {pos}, arrived at {}",
                at(t)
            );
        }
        let landmark = if name == "consumer" {
            after_silence
        } else {
            first_b
        };
        let pos = d.sent.iter().find(|(_, i)| *i == landmark).unwrap().0;
        assert!(
            pos.abs_diff(at(sent_at(landmark))) <= 960,
            "{name}: first packet after the gap at {pos}, arrived at {}",
            at(sent_at(landmark))
        );
    }
    // The sidecar has the key press and the transfer, where they happened.
    let events = sidecar(&stopped.files.events);
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "recording_started",
            "gate_opened",
            "dtmf",
            "transfer",
            "recording_paused",
            "recording_resumed",
            "recording_stopped"
        ]
    );
    assert_eq!(events[2]["from"], "consumer");
    assert!((events[2]["t"].as_f64().unwrap() - 4.0).abs() < 0.001);
    assert!((events[3]["t"].as_f64().unwrap() - 5.0).abs() < 0.001);
    let last = events.last().unwrap();
    assert_eq!(last["agent"]["ssrc_changes"], 1, "{last}");
    let _ = std::fs::remove_dir_all(&dir);
}
