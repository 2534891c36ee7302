//! The disk writer: one thread for the whole process. It owns every open recording's files and
//! is the only place that blocks on the disk; the shards only ever try-send to it.
//!
//! Ordering: a note or close is applied only after every packet already queued has been
//! written, so a recording's packets pushed before its close are in the file, and a close
//! never cuts them off. An open is applied at once (no packet of it can precede it).

use std::collections::HashMap;
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::ogg::{OggOpusWriter, SAMPLE_RATE, packet_samples};
use super::ring::{Packet, Ring};
use super::timeline::{Placement, Timeline};
use super::{Ctrl, Direction, MAX_PAYLOAD, Note, OpenRecording, RecorderStats};
use crate::api::RecordingFiles;

/// How often the writer drains the shards' rings when no control message wakes it. Packets
/// are not signalled one by one (that would be a system call per packet on the shard): each
/// pass takes everything the rings hold, so the shard and the writer meet once a pass, not
/// once a packet.
const DRAIN_EVERY: Duration = Duration::from_millis(10);

/// How much nicer than the shards the writer thread runs. On a core it shares with a shard
/// (a small machine, or `taskset` putting the whole relay on one CPU), the writer's batches
/// would otherwise take time slices from the shard and delay live packets; nicer by 10, the
/// shard preempts it and it writes with what the shard leaves. If it cannot keep up, packets
/// are dropped from the recording (counted), never from the call.
const WRITER_NICE: i32 = 10;

/// Lower the calling thread's scheduling priority by [`WRITER_NICE`] (Linux: `setpriority`
/// on a thread id affects only that thread). Best effort: a failure leaves it as it was.
#[allow(unsafe_code)] // getpriority/setpriority on this thread's id
pub(super) fn lower_priority() {
    // SAFETY: gettid has no preconditions; getpriority and setpriority read and write this
    // thread's nice value only, with plain integer arguments.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        let current = libc::getpriority(libc::PRIO_PROCESS, tid);
        let nicer = (current + WRITER_NICE).min(19);
        if libc::setpriority(libc::PRIO_PROCESS, tid, nicer) != 0 {
            tracing::debug!("recording writer: cannot lower its priority");
        }
    }
}

/// Recording ids are a process-wide counter, not attacker input: a multiplicative hash is
/// enough, and SipHash was a tenth of the writer's time per packet.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

const VENDOR: &str = concat!("relay ", env!("CARGO_PKG_VERSION"));

pub(super) struct Writer {
    ctrl: Receiver<Ctrl>,
    /// Every producing thread's ring (a shard's, or a test's).
    rings: Vec<Arc<Ring>>,
    /// The payload being written, copied out of its ring.
    payload: Vec<u8>,
    /// Pages a packet completed, written to the track's file before the next packet: one
    /// buffer for every track (each one's current page lives in its `OggOpusWriter`).
    out: Vec<u8>,
    stats: Arc<RecorderStats>,
    open: HashMap<u64, Recording, BuildHasherDefault<IdHasher>>,
    /// Control messages read ahead of their turn (see `read_ahead_for_opens`).
    deferred: std::collections::VecDeque<Ctrl>,
}

struct Track {
    file: File,
    ogg: OggOpusWriter,
    timeline: Timeline,
}

struct Recording {
    call_id: String,
    files: RecordingFiles,
    started_at: SystemTime,
    tracks: [Track; 2],
    events: File,
    /// A write failed: the recording is abandoned (counted, logged once), the call goes on.
    failed: bool,
    late: u64,
    invalid: u64,
}

impl Writer {
    pub(super) fn new(ctrl: Receiver<Ctrl>, stats: Arc<RecorderStats>) -> Self {
        Writer {
            ctrl,
            rings: Vec::new(),
            payload: vec![0; MAX_PAYLOAD],
            out: Vec::with_capacity(8192),
            stats,
            open: HashMap::default(),
            deferred: Default::default(),
        }
    }

    pub(super) fn run(mut self) {
        while self.step(self.ctrl.recv_timeout(DRAIN_EVERY)) {}
        self.drain_packets();
        let ids: Vec<u64> = self.open.keys().copied().collect();
        for id in ids {
            self.close(id, None, "relay stopped");
        }
    }

    /// One turn of the loop: a control message (or the wait's timeout) and the packets.
    /// Returns false on shutdown.
    fn step(&mut self, msg: Result<Ctrl, RecvTimeoutError>) -> bool {
        let mut running = true;
        match msg {
            // An open goes first: the shard sent it before any of the recording's packets.
            // Then the rings: opens arriving more often than DRAIN_EVERY (200 calls a second
            // starting to record) must not keep the timeout from ever firing, which left the
            // rings undrained for seconds and dropped packets (BENCHMARKS.md, session 8).
            Ok(Ctrl::Open(r)) => {
                self.open_recording(*r);
                self.drain_packets();
            }
            Ok(Ctrl::Ring(r)) => {
                self.rings.push(r);
                self.drain_packets();
            }
            Ok(msg) => {
                self.drain_packets();
                running = self.apply(msg);
            }
            Err(RecvTimeoutError::Timeout) => self.drain_packets(),
            Err(RecvTimeoutError::Disconnected) => running = false,
        }
        // Messages read ahead while looking for an open (see `write_packet`).
        while running && let Some(msg) = self.deferred.pop_front() {
            self.drain_packets();
            running = self.apply(msg);
        }
        running
    }

    /// Everything the rings hold now. A control message read after a packet was queued is
    /// applied after this, so it follows the packets its thread queued before sending it.
    fn drain_packets(&mut self) {
        let mut payload = std::mem::take(&mut self.payload);
        let mut i = 0;
        while let Some(ring) = self.rings.get(i).cloned() {
            let mut d = ring.drain();
            while let Some(p) = d.next_into(&mut payload) {
                let len = p.len.min(payload.len());
                self.write_packet(&p, &payload[..len]);
            }
            // A ring whose thread is gone (only this list holds it) and that is empty.
            if Arc::strong_count(&ring) == 2 && ring.drain().is_empty() {
                self.rings.swap_remove(i);
            } else {
                i += 1;
            }
        }
        self.payload = payload;
    }

    /// A packet of a recording not open yet: its open is still in the control queue (sent
    /// first, but read after this packet). Open everything waiting; keep the other messages
    /// for after the packets queued before them.
    fn read_ahead_for_opens(&mut self) {
        while let Ok(msg) = self.ctrl.try_recv() {
            match msg {
                Ctrl::Open(r) => self.open_recording(*r),
                Ctrl::Ring(r) => self.rings.push(r),
                other => self.deferred.push_back(other),
            }
        }
    }

    /// Returns false on shutdown.
    fn apply(&mut self, msg: Ctrl) -> bool {
        match msg {
            Ctrl::Open(r) => self.open_recording(*r),
            Ctrl::Ring(r) => self.rings.push(r),
            Ctrl::Note { id, clock, note } => {
                if let Some(rec) = self.open.get_mut(&id) {
                    rec.note(clock, &note, &self.stats);
                }
            }
            Ctrl::Close { id, clock, reason } => self.close(id, Some(clock), &reason),
            Ctrl::Shutdown => return false,
        }
        true
    }

    fn open_recording(&mut self, r: OpenRecording) {
        let serial = |d: u32| (r.id as u32).wrapping_mul(2).wrapping_add(d);
        // The header pages of both tracks, written one track at a time.
        let mut headers: [Vec<u8>; 2] = Default::default();
        let mut track = |file: File, dir: &str, d: u32| {
            let tags = [
                ("CALL_ID", r.call_id.as_str()),
                ("DIRECTION", dir),
                ("ENCODER", "relay (Opus forwarded, not transcoded)"),
            ];
            let ogg = OggOpusWriter::new(serial(d), VENDOR, &tags, &mut headers[d as usize]);
            Track {
                file,
                ogg,
                timeline: Timeline::default(),
            }
        };
        let tracks = [track(r.consumer, "consumer", 0), track(r.agent, "agent", 1)];
        let mut rec = Recording {
            call_id: r.call_id.clone(),
            files: r.files.clone(),
            started_at: r.started_at,
            tracks,
            events: r.events,
            failed: false,
            late: 0,
            invalid: 0,
        };
        for (i, mut h) in headers.into_iter().enumerate() {
            rec.flush_track(i, &mut h, &self.stats);
        }
        let line = serde_json::json!({
            "t": 0.0,
            "at": rfc3339(r.started_at),
            "event": "recording_started",
            "call_id": r.call_id,
            "consumer_file": rec.files.consumer,
            "agent_file": rec.files.agent,
        });
        rec.write_line(&line, &self.stats);
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        self.stats.started.fetch_add(1, Ordering::Relaxed);
        self.open.insert(r.id, rec);
    }

    fn write_packet(&mut self, pkt: &Packet, payload: &[u8]) {
        if !self.open.contains_key(&pkt.recording) {
            self.read_ahead_for_opens();
        }
        let Some(rec) = self.open.get_mut(&pkt.recording) else {
            // The recording was closed (or never opened): nothing to write it to.
            self.stats.dropped_invalid.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if rec.failed {
            return;
        }
        let Ok(duration) = packet_samples(payload) else {
            rec.invalid += 1;
            self.stats.dropped_invalid.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let i = pkt.direction as usize;
        let t = &mut rec.tracks[i];
        let written = t.ogg.position();
        let placement = t
            .timeline
            .place(pkt.ssrc, pkt.ts, u64::from(duration), pkt.clock, written);
        match placement {
            Placement::Late => {
                rec.late += 1;
                self.stats.dropped_invalid.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Placement::Write { gap } => {
                if gap > 0 {
                    t.ogg.write_gap(gap, &mut self.out);
                }
                if t.ogg.write_packet(payload, &mut self.out).is_err() {
                    // Pages the gap completed still go out.
                    rec.flush_track(i, &mut self.out, &self.stats);
                    rec.invalid += 1;
                    self.stats.dropped_invalid.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        self.stats.packets_written.fetch_add(1, Ordering::Relaxed);
        rec.flush_track(i, &mut self.out, &self.stats);
    }

    fn close(&mut self, id: u64, clock: Option<u64>, reason: &str) {
        let Some(mut rec) = self.open.remove(&id) else {
            return;
        };
        // Both tracks end at the same instant: the shorter one is padded with concealment so
        // the two files have the same duration and line up end to end.
        let end = rec
            .tracks
            .iter()
            .map(|t| t.ogg.position())
            .chain(clock)
            .max()
            .unwrap_or(0);
        for i in 0..2 {
            let t = &mut rec.tracks[i];
            let behind = end.saturating_sub(t.ogg.position());
            t.ogg.write_gap(behind, &mut self.out);
            t.ogg.finish(&mut self.out);
            rec.flush_track(i, &mut self.out, &self.stats);
        }
        let summary = |t: &Track| {
            let (packets, gap_packets) = t.ogg.packet_counts();
            serde_json::json!({
                "packets": packets,
                "gap_packets": gap_packets,
                "duration_s": t.ogg.position() as f64 / f64::from(SAMPLE_RATE),
                "ssrc_changes": t.timeline.reanchors,
            })
        };
        let line = serde_json::json!({
            "t": secs(end),
            "at": rfc3339(rec.started_at + Duration::from_secs_f64(secs(end))),
            "event": "recording_stopped",
            "reason": reason,
            "consumer": summary(&rec.tracks[0]),
            "agent": summary(&rec.tracks[1]),
            "late_or_duplicate_packets": rec.late,
            "invalid_packets": rec.invalid,
        });
        rec.write_line(&line, &self.stats);
        for t in &rec.tracks {
            let _ = t.file.sync_data();
        }
        let _ = rec.events.sync_data();
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
        tracing::info!(call_id = %rec.call_id, consumer = %rec.files.consumer.display(),
            agent = %rec.files.agent.display(), reason, "recording finished");
    }
}

impl Recording {
    /// Write the pages in `out` (track `i`'s, just completed) to its file, and empty `out`
    /// (its capacity stays: one buffer serves every track).
    fn flush_track(&mut self, i: usize, out: &mut Vec<u8>, stats: &RecorderStats) {
        if out.is_empty() || self.failed {
            out.clear();
            return;
        }
        match self.tracks[i].file.write_all(out) {
            Ok(()) => {
                stats
                    .bytes_written
                    .fetch_add(out.len() as u64, Ordering::Relaxed);
            }
            Err(e) => self.fail(&e, stats),
        }
        out.clear();
    }

    fn note(&mut self, clock: u64, note: &Note, stats: &RecorderStats) {
        let (event, mut extra) = match note {
            Note::GateOpened => ("gate_opened", serde_json::json!({})),
            Note::Dtmf { from, digit } => (
                "dtmf",
                serde_json::json!({"from": direction_name(*from), "digit": digit.to_string()}),
            ),
            Note::Transfer { previous, remote } => (
                "transfer",
                serde_json::json!({"previous": previous.map(|a| a.to_string()),
                    "remote": remote.map(|a| a.to_string())}),
            ),
            Note::Paused => ("recording_paused", serde_json::json!({})),
            Note::Resumed => ("recording_resumed", serde_json::json!({})),
            Note::Stopped { reason } => ("call_ended", serde_json::json!({"reason": reason})),
        };
        if let Some(o) = extra.as_object_mut() {
            o.insert("t".into(), secs(clock).into());
            o.insert(
                "at".into(),
                rfc3339(self.started_at + Duration::from_secs_f64(secs(clock))).into(),
            );
            o.insert("event".into(), event.into());
        }
        self.write_line(&extra, stats);
    }

    fn write_line(&mut self, v: &serde_json::Value, stats: &RecorderStats) {
        if self.failed {
            return;
        }
        let mut line = v.to_string();
        line.push('\n');
        if let Err(e) = self.events.write_all(line.as_bytes()) {
            self.fail(&e, stats);
        }
    }

    fn fail(&mut self, e: &std::io::Error, stats: &RecorderStats) {
        if !self.failed {
            self.failed = true;
            stats.write_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(call_id = %self.call_id, error = %e,
                dir = %self.files.consumer.display(), "recording write failed; recording abandoned");
        }
    }
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Consumer => "consumer",
        Direction::Agent => "agent",
    }
}

fn secs(samples: u64) -> f64 {
    // Milliseconds are plenty for a sidecar and keep the numbers readable.
    ((samples as f64 / f64::from(SAMPLE_RATE)) * 1000.0).round() / 1000.0
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Recorder, RecorderLink, RecordingConfig};
    use crate::wire::rtp::{RtpTs, Ssrc};

    /// Opens arriving faster than `DRAIN_EVERY` (a burst of calls starting to record) still let
    /// the writer drain the rings at every one: the packets of recordings already open are
    /// written, not left to fill the ring (which dropped a seventh of them at 200 starts a
    /// second before this).
    #[test]
    fn opens_in_a_row_do_not_starve_the_rings() {
        let dir = std::env::temp_dir().join(format!("relay-writer-step-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // A recorder for creating files and a link; its own writer thread is not used here.
        let rec = Recorder::start(RecordingConfig {
            dir: Some(dir.clone()),
            name_template: "{call_id}".into(),
            queue_packets: 64,
        })
        .unwrap();
        let (ctrl_tx, ctrl_rx) = crossbeam_channel::unbounded();
        let stats = Arc::new(RecorderStats::default());
        let link = RecorderLink::new(
            64 * super::super::RING_WORDS_PER_PACKET,
            ctrl_tx,
            stats.clone(),
        );
        let mut w = Writer::new(ctrl_rx, stats.clone());
        let ring = link.prepare_thread().unwrap();
        let Ok(Ctrl::Ring(r)) = w.ctrl.try_recv() else {
            panic!("the ring is announced");
        };
        assert!(w.step(Ok(Ctrl::Ring(r))));
        let open = |i: u32| {
            Box::new(
                rec.create(&format!("c{i}"), "b", "c", SystemTime::now())
                    .unwrap(),
            )
        };
        let first = open(0);
        let id = first.id;
        assert!(w.step(Ok(Ctrl::Open(first))));
        let opus = [0xF8u8, 1, 2];
        for i in 1..50u32 {
            // A packet of the open recording, then another call's open (no timeout between).
            assert!(link.push(
                id,
                Direction::Agent,
                Ssrc::new(1),
                RtpTs::new(i * 960),
                u64::from(i) * 960,
                &opus
            ));
            assert!(w.step(Ok(Ctrl::Open(open(i)))));
            assert!(ring.drain().is_empty(), "drained at open {i}");
        }
        assert_eq!(stats.packets_written.load(Ordering::Relaxed), 49);
        assert_eq!(stats.dropped_queue_full.load(Ordering::Relaxed), 0);
        rec.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
