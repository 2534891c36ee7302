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

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::ogg::{OggOpusWriter, SAMPLE_RATE, packet_samples};
use super::timeline::{Placement, Timeline};
use super::{Ctrl, Direction, Note, OpenRecording, PacketSlot, RecorderStats};
use crate::api::RecordingFiles;

/// How often the writer drains the packet queue when no control message wakes it. Packets are
/// not signalled one by one (that would be a system call per packet on the shard).
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
    filled: Receiver<Box<PacketSlot>>,
    /// Back to the small and the large free list.
    free: [Sender<Box<PacketSlot>>; 2],
    stats: Arc<RecorderStats>,
    open: HashMap<u64, Recording, BuildHasherDefault<IdHasher>>,
    /// Control messages read ahead of their turn (see `read_ahead_for_opens`).
    deferred: std::collections::VecDeque<Ctrl>,
}

struct Track {
    file: File,
    ogg: OggOpusWriter,
    timeline: Timeline,
    /// Pages produced and not yet written (written after every packet that completes one).
    out: Vec<u8>,
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
    pub(super) fn new(
        ctrl: Receiver<Ctrl>,
        filled: Receiver<Box<PacketSlot>>,
        free: [Sender<Box<PacketSlot>>; 2],
        stats: Arc<RecorderStats>,
    ) -> Self {
        Writer {
            ctrl,
            filled,
            free,
            stats,
            open: HashMap::default(),
            deferred: Default::default(),
        }
    }

    pub(super) fn run(mut self) {
        let mut running = true;
        while running {
            match self.ctrl.recv_timeout(DRAIN_EVERY) {
                // An open goes first: the shard sent it before any of the recording's packets.
                Ok(Ctrl::Open(r)) => self.open_recording(*r),
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
        }
        self.drain_packets();
        let ids: Vec<u64> = self.open.keys().copied().collect();
        for id in ids {
            self.close(id, None, "relay stopped");
        }
    }

    fn drain_packets(&mut self) {
        while let Ok(slot) = self.filled.try_recv() {
            self.write_packet(&slot);
            let _ = self.free[usize::from(slot.is_large())].try_send(slot);
        }
    }

    /// A packet of a recording not open yet: its open is still in the control queue (sent
    /// first, but read after this packet). Open everything waiting; keep the other messages
    /// for after the packets queued before them.
    fn read_ahead_for_opens(&mut self) {
        while let Ok(msg) = self.ctrl.try_recv() {
            match msg {
                Ctrl::Open(r) => self.open_recording(*r),
                other => self.deferred.push_back(other),
            }
        }
    }

    /// Returns false on shutdown.
    fn apply(&mut self, msg: Ctrl) -> bool {
        match msg {
            Ctrl::Open(r) => self.open_recording(*r),
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
        let track = |file: File, dir: &str, d: u32| {
            // Holds one page (about 4 KiB) between its completion and the write.
            let mut out = Vec::new();
            let tags = [
                ("CALL_ID", r.call_id.as_str()),
                ("DIRECTION", dir),
                ("ENCODER", "relay (Opus forwarded, not transcoded)"),
            ];
            let ogg = OggOpusWriter::new(serial(d), VENDOR, &tags, &mut out);
            Track {
                file,
                ogg,
                timeline: Timeline::default(),
                out,
            }
        };
        let mut rec = Recording {
            call_id: r.call_id.clone(),
            files: r.files.clone(),
            started_at: r.started_at,
            tracks: [track(r.consumer, "consumer", 0), track(r.agent, "agent", 1)],
            events: r.events,
            failed: false,
            late: 0,
            invalid: 0,
        };
        for i in 0..2 {
            rec.flush_track(i, &self.stats);
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

    fn write_packet(&mut self, slot: &PacketSlot) {
        if !self.open.contains_key(&slot.recording) {
            self.read_ahead_for_opens();
        }
        let Some(rec) = self.open.get_mut(&slot.recording) else {
            // The recording was closed (or never opened): nothing to write it to.
            self.stats.dropped_invalid.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if rec.failed {
            return;
        }
        let payload = &slot.data[..usize::from(slot.len).min(slot.data.len())];
        let Ok(duration) = packet_samples(payload) else {
            rec.invalid += 1;
            self.stats.dropped_invalid.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let i = slot.direction as usize;
        let t = &mut rec.tracks[i];
        let written = t.ogg.position();
        let placement =
            t.timeline
                .place(slot.ssrc, slot.ts, u64::from(duration), slot.clock, written);
        match placement {
            Placement::Late => {
                rec.late += 1;
                self.stats.dropped_invalid.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Placement::Write { gap } => {
                if gap > 0 {
                    t.ogg.write_gap(gap, &mut t.out);
                }
                if t.ogg.write_packet(payload, &mut t.out).is_err() {
                    rec.invalid += 1;
                    self.stats.dropped_invalid.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        self.stats.packets_written.fetch_add(1, Ordering::Relaxed);
        rec.flush_track(i, &self.stats);
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
            t.ogg.write_gap(behind, &mut t.out);
            t.ogg.finish(&mut t.out);
            rec.flush_track(i, &self.stats);
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
    fn flush_track(&mut self, i: usize, stats: &RecorderStats) {
        let t = &mut self.tracks[i];
        if t.out.is_empty() || self.failed {
            t.out.clear();
            return;
        }
        match t.file.write_all(&t.out) {
            Ok(()) => {
                stats
                    .bytes_written
                    .fetch_add(t.out.len() as u64, Ordering::Relaxed);
            }
            Err(e) => self.fail(&e, stats),
        }
        // Freed, not kept: a page a second per track is one allocation on this thread, and a
        // thousand idle 4 KiB buffers are 8 MiB (see BENCHMARKS.md, memory per recording).
        self.tracks[i].out = Vec::new();
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
