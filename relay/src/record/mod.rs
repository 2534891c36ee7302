//! Call recording: each direction's Opus, untouched, into Ogg Opus files, with a JSON Lines
//! sidecar of the call's events.
//!
//! Three parts, each on its own side of a thread boundary:
//! - [`ogg`] and [`timeline`] (pure): RFC 7845 framing, and where each RTP packet goes in the
//!   file.
//! - The shard side ([`RecorderLink`], used by `call::fork`): copies a forwarded packet into
//!   the shard thread's own [`ring`] toward the writer, with no allocation, no lock, no
//!   atomic read-modify-write and no system call. When the ring is full (the disk writer has
//!   fallen behind), the packet is not recorded and `relay_recording_dropped_packets_total`
//!   counts it: the live call is never slowed for the recording.
//! - The writer thread ([`writer`]): takes everything each ring holds in one pass, places
//!   packets with [`timeline`], frames them with [`ogg`] and writes files.
//!
//! Files: `<name>.consumer.opus` (what WhatsApp sent: the consumer), `<name>.agent.opus` (what
//! was sent to WhatsApp: the agent, whoever it is after transfers) and `<name>.events.jsonl`,
//! where `<name>` comes from `recording_name_template` under `recording_dir`. Two files rather
//! than one file with two logical streams because every player and tool (opusinfo, ffprobe,
//! browsers) handles a single-stream Ogg Opus file, and few play a multiplexed one.

pub mod ogg;
pub mod ring;
pub mod timeline;
mod writer;

use std::cell::RefCell;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::Sender;

use crate::api::{ApiError, RecordingFiles};
use crate::wire::rtp::{RtpTs, Ssrc};

/// The largest RTP payload recorded (an Ethernet MTU's worth); a larger one is counted as
/// dropped. Opus at WhatsApp's rates is around 100 bytes.
pub const MAX_PAYLOAD: usize = 1472;

/// Ring space per packet of `recording_queue_packets`: a 32-byte header and 96 bytes of
/// payload (20 ms of Opus at 38 kbit/s; WhatsApp's voice is 20-64). A larger packet takes
/// more, a smaller one less: the ring is bounded in bytes, not packets.
pub const RING_WORDS_PER_PACKET: usize = 16;

/// Recording settings (`recording_dir`, `recording_name_template`, `recording_queue_packets`).
#[derive(Clone, Debug, PartialEq)]
pub struct RecordingConfig {
    /// Where recordings go; `None` disables recording (StartRecording is refused).
    pub dir: Option<PathBuf>,
    /// File name (without extension) under `dir`; may contain `/` for subdirectories. Fields:
    /// `{call_id}`, `{business}`, `{consumer}`, `{date}` (YYYY-MM-DD, UTC), `{time}`
    /// (HHMMSS, UTC), `{id}` (a number unique within the process).
    pub name_template: String,
    /// Packets each shard may have queued for the disk writer: how much the writer may fall
    /// behind before packets are dropped. Each shard that records gets a ring of this many
    /// times [`RING_WORDS_PER_PACKET`] words (rounded up to a power of two), allocated when it
    /// first records: 8192 → 1 MiB per shard, ~70 ms of 1,000 recorded calls at 120-byte
    /// packets, or seconds of a few.
    pub queue_packets: usize,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            dir: None,
            name_template: "{date}/{call_id}-{time}".into(),
            queue_packets: 8192,
        }
    }
}

/// Which direction of the call a packet belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From WhatsApp: the consumer's voice.
    Consumer = 0,
    /// To WhatsApp: the agent's voice (whichever internal peer, across transfers).
    Agent = 1,
}

/// Things that happen to a recording besides audio, stamped with the shard's clock (samples
/// since the recording started) and written to the sidecar in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Note {
    GateOpened,
    Dtmf {
        from: Direction,
        digit: char,
    },
    Transfer {
        previous: Option<std::net::SocketAddr>,
        remote: Option<std::net::SocketAddr>,
    },
    Paused,
    Resumed,
    /// The recording stops: by request, or because the call ended with this cause.
    Stopped {
        reason: String,
    },
}

/// What the shards send the writer besides packets (rare: allocation is fine here).
pub(crate) enum Ctrl {
    Open(Box<OpenRecording>),
    /// A thread's ring, the first time it records: the writer drains it from now on.
    Ring(Arc<ring::Ring>),
    Note {
        id: u64,
        clock: u64,
        note: Note,
    },
    /// Nothing more comes for `id`: finish its files. Packets queued before are written first.
    Close {
        id: u64,
        clock: u64,
        reason: String,
    },
    Shutdown,
}

/// A recording being started: its files, already created (so a bad directory fails the RPC).
pub struct OpenRecording {
    pub id: u64,
    pub call_id: String,
    pub files: RecordingFiles,
    pub started_at: SystemTime,
    pub consumer: File,
    pub agent: File,
    pub events: File,
}

/// Process-wide recording counters (relaxed atomics; bumped off the packet fast path only on a
/// drop, and by the writer).
#[derive(Debug, Default)]
pub struct RecorderStats {
    /// Packets not recorded because the shard's ring was full (the disk writer is behind).
    pub dropped_queue_full: AtomicU64,
    /// Packets not recorded because they were larger than [`MAX_PAYLOAD`].
    pub dropped_oversize: AtomicU64,
    /// Packets the writer could not place or frame (bad Opus TOC, duplicates).
    pub dropped_invalid: AtomicU64,
    pub packets_written: AtomicU64,
    pub bytes_written: AtomicU64,
    /// Recordings whose files failed to write (disk full, I/O error).
    pub write_errors: AtomicU64,
    pub active: AtomicU64,
    pub started: AtomicU64,
}

/// The shard side of the recorder: the control channel and each thread's ring toward the
/// writer. Shared by every call on every shard.
pub struct RecorderLink {
    /// Words in each thread's ring.
    ring_words: usize,
    /// Tells this link's rings from another recorder's in a thread's list (tests run several).
    key: u64,
    ctrl: Sender<Ctrl>,
    pub stats: Arc<RecorderStats>,
    next_id: AtomicU64,
}

static NEXT_LINK_KEY: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's rings, one per recorder it has recorded into (a shard has one). A ring
    /// has one producer, always the same thread: that is what makes it a plain SPSC ring.
    static RINGS: RefCell<Vec<(u64, Arc<ring::Ring>)>> = const { RefCell::new(Vec::new()) };
}

impl RecorderLink {
    fn new(ring_words: usize, ctrl: Sender<Ctrl>, stats: Arc<RecorderStats>) -> RecorderLink {
        RecorderLink {
            ring_words,
            key: NEXT_LINK_KEY.fetch_add(1, Ordering::Relaxed),
            ctrl,
            stats,
            next_id: AtomicU64::new(1),
        }
    }

    /// Queue one payload into this thread's ring. No allocation (once the thread has its ring,
    /// see [`Self::prepare_thread`]), no lock, no read-modify-write: the packet is written and
    /// published, or counted as dropped. Returns whether it was queued.
    #[inline]
    pub fn push(
        &self,
        recording: u64,
        direction: Direction,
        ssrc: Ssrc,
        ts: RtpTs,
        clock: u64,
        payload: &[u8],
    ) -> bool {
        if payload.len() > MAX_PAYLOAD {
            self.stats.dropped_oversize.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let queued = RINGS
            .try_with(|rings| {
                let rings = rings.try_borrow().ok()?;
                let (_, ring) = rings.iter().find(|(k, _)| *k == self.key)?;
                Some(ring.push(recording, direction, ssrc, ts, clock, payload))
            })
            .ok()
            .flatten()
            .or_else(|| {
                // This thread's first packet for this recorder (normally prepared at the
                // recording's start, on the shard, so this does not run per packet).
                let ring = self.prepare_thread()?;
                Some(ring.push(recording, direction, ssrc, ts, clock, payload))
            })
            .unwrap_or(false);
        if !queued {
            self.stats
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
        }
        queued
    }

    /// Give the calling thread its ring toward the writer if it has none yet (allocates the
    /// ring: setup only, e.g. when a call on this shard starts recording). `None` while the
    /// thread is exiting.
    pub fn prepare_thread(&self) -> Option<Arc<ring::Ring>> {
        RINGS
            .try_with(|rings| {
                let mut rings = rings.try_borrow_mut().ok()?;
                if let Some((_, r)) = rings.iter().find(|(k, _)| *k == self.key) {
                    return Some(r.clone());
                }
                // Rings of recorders that are gone (only this list holds them) go first.
                rings.retain(|(_, r)| Arc::strong_count(r) > 1);
                let ring = Arc::new(ring::Ring::new(self.ring_words));
                self.ctrl.send(Ctrl::Ring(ring.clone())).ok()?;
                rings.push((self.key, ring.clone()));
                Some(ring)
            })
            .ok()
            .flatten()
    }

    pub(crate) fn send(&self, msg: Ctrl) {
        let _ = self.ctrl.send(msg);
    }
}

/// The recorder: configuration, the shared link, the writer thread.
pub struct Recorder {
    cfg: RecordingConfig,
    link: Arc<RecorderLink>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Recorder {
    /// Start the writer thread. (Each shard's ring is allocated when it first records.)
    pub fn start(cfg: RecordingConfig) -> std::io::Result<Arc<Recorder>> {
        let words = cfg.queue_packets.max(1) * RING_WORDS_PER_PACKET;
        let (ctrl_tx, ctrl_rx) = crossbeam_channel::unbounded();
        let stats = Arc::new(RecorderStats::default());
        let link = Arc::new(RecorderLink::new(words, ctrl_tx, stats.clone()));
        let w = writer::Writer::new(ctrl_rx, stats);
        let thread = std::thread::Builder::new()
            .name("relay-recorder".into())
            .spawn(move || {
                writer::lower_priority();
                w.run()
            })?;
        Ok(Arc::new(Recorder {
            cfg,
            link,
            thread: std::sync::Mutex::new(Some(thread)),
        }))
    }

    pub fn link(&self) -> &Arc<RecorderLink> {
        &self.link
    }

    pub fn stats(&self) -> &RecorderStats {
        &self.link.stats
    }

    /// Create a new recording's files (directories included) for a call. Control-plane work:
    /// blocking file creation, never on a shard.
    pub fn create(
        &self,
        call_id: &str,
        business: &str,
        consumer: &str,
        now: SystemTime,
    ) -> Result<OpenRecording, ApiError> {
        let dir = self.cfg.dir.as_ref().ok_or_else(|| {
            ApiError::FailedPrecondition(
                "recording is not configured on this relay (set recording_dir / --recording-dir)"
                    .into(),
            )
        })?;
        let id = self.link.next_id.fetch_add(1, Ordering::Relaxed);
        let name = render_name(
            &self.cfg.name_template,
            call_id,
            business,
            consumer,
            now,
            id,
        );
        let base = dir.join(name);
        if let Some(parent) = base.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
        }
        // Never overwrite: a name already taken (the same call recorded twice within the
        // template's resolution) gets `-2`, `-3`, ...
        let mut attempt = 1;
        let (files, consumer_f, agent_f, events_f) = loop {
            let base = match attempt {
                1 => base.clone(),
                n => with_suffix(&base, &format!("-{n}")),
            };
            let files = RecordingFiles {
                consumer: with_suffix(&base, ".consumer.opus"),
                agent: with_suffix(&base, ".agent.opus"),
                events: with_suffix(&base, ".events.jsonl"),
            };
            let create = |p: &Path| File::options().write(true).create_new(true).open(p);
            match create(&files.consumer) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                    attempt += 1;
                    continue;
                }
                Err(e) => return Err(io_error(&files.consumer, e)),
                Ok(c) => {
                    // Only what this attempt created is removed on failure.
                    let a = create(&files.agent).map_err(|e| {
                        let _ = std::fs::remove_file(&files.consumer);
                        io_error(&files.agent, e)
                    })?;
                    let e = create(&files.events).map_err(|e| {
                        let _ = std::fs::remove_file(&files.consumer);
                        let _ = std::fs::remove_file(&files.agent);
                        io_error(&files.events, e)
                    })?;
                    break (files, c, a, e);
                }
            }
        };
        Ok(OpenRecording {
            id,
            call_id: call_id.to_string(),
            files,
            started_at: now,
            consumer: consumer_f,
            agent: agent_f,
            events: events_f,
        })
    }

    /// Finish every open recording and stop the writer (after the shards stopped).
    pub fn shutdown(&self) {
        self.link.send(Ctrl::Shutdown);
        let t = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

impl RecordingFiles {
    /// Delete the files (a start that lost a race to another start, or failed half-way).
    pub fn remove(&self) {
        for p in [&self.consumer, &self.agent, &self.events] {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn io_error(p: &Path, e: std::io::Error) -> ApiError {
    ApiError::Internal(format!("recording file {}: {e}", p.display()))
}

fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Expand the name template. Field values are made path-safe (anything but ASCII letters,
/// digits, `.`, `-`, `_`, `+`, `=` becomes `_`, and a leading `.` too), so a call ID can never
/// climb out of the recording directory; `/` in the template itself makes subdirectories, and
/// `..` components in it are dropped.
pub fn render_name(
    template: &str,
    call_id: &str,
    business: &str,
    consumer: &str,
    now: SystemTime,
    id: u64,
) -> String {
    let stamp = humantime::format_rfc3339_seconds(now).to_string(); // 2026-12-04T21:33:13Z
    let date = stamp.get(..10).unwrap_or("0000-00-00").to_string();
    let time: String = stamp
        .get(11..19)
        .unwrap_or("000000")
        .chars()
        .filter(|c| c.is_ascii_digit())
        .collect();
    let safe = |v: &str| -> String {
        let mut s: String = v
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || ".-_+=".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if s.starts_with('.') {
            s.replace_range(..1, "_");
        }
        if s.is_empty() {
            s.push('_');
        }
        s
    };
    let out = template
        .replace("{call_id}", &safe(call_id))
        .replace("{business}", &safe(business))
        .replace("{consumer}", &safe(consumer))
        .replace("{date}", &date)
        .replace("{time}", &time)
        .replace("{id}", &id.to_string());
    let parts: Vec<&str> = out
        .split('/')
        .filter(|p| !p.is_empty() && *p != "." && *p != "..")
        .collect();
    if parts.is_empty() {
        format!("recording-{id}")
    } else {
        parts.join("/")
    }
}

/// Samples at 48 kHz in `d` (the recording clock).
pub fn samples(d: Duration) -> u64 {
    (d.as_micros() as u64).saturating_mul(48) / 1000
}

/// The shard-side clock of a recording: samples since it started.
pub fn clock_at(now: Instant, started: Instant) -> u64 {
    samples(now.saturating_duration_since(started))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_path_safe_and_follow_the_template() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_420_000);
        let n = render_name(
            "{date}/{business}/{call_id}-{time}-{id}",
            "wacid.HBgL/../x==",
            "+1555",
            "44",
            t,
            9,
        );
        assert_eq!(n, "2026-12-04/+1555/wacid.HBgL_.._x==-213320-9");
        assert_eq!(render_name("../../{call_id}", "..", "", "", t, 1), "_.");
        assert_eq!(render_name("/", "c", "", "", t, 3), "recording-3");
    }

    /// A link with no writer behind it: what a stalled disk looks like to the shards. (The
    /// control receiver is returned so the link can still register its ring.)
    fn stalled_link(packets: usize) -> (RecorderLink, crossbeam_channel::Receiver<Ctrl>) {
        let (ctrl, rx) = crossbeam_channel::unbounded();
        let link = RecorderLink::new(packets * RING_WORDS_PER_PACKET, ctrl, Default::default());
        (link, rx)
    }

    #[test]
    fn a_stalled_writer_costs_the_shard_counted_drops_not_waits() {
        // 64 packets' worth: 1,024 words. A 3-byte payload takes 5 (a 4-word header).
        let (link, rx) = stalled_link(64);
        let ring = link.prepare_thread().unwrap();
        assert_eq!(ring.bytes(), 8192);
        assert!(
            matches!(rx.try_recv(), Ok(Ctrl::Ring(_))),
            "the writer learns of it"
        );
        let queued = (0..300)
            .filter(|&i| {
                link.push(
                    1,
                    Direction::Agent,
                    Ssrc::new(1),
                    RtpTs::new(i * 960),
                    0,
                    &[0xF8, 1, 2],
                )
            })
            .count();
        assert_eq!(queued, 204);
        assert_eq!(link.stats.dropped_queue_full.load(Ordering::Relaxed), 96);
        assert!(!link.push(
            1,
            Direction::Agent,
            Ssrc::new(1),
            RtpTs::new(0),
            0,
            &[0; MAX_PAYLOAD + 1]
        ));
        assert_eq!(link.stats.dropped_oversize.load(Ordering::Relaxed), 1);
        // One ring per thread and recorder: preparing again returns the same one.
        assert!(Arc::ptr_eq(&ring, &link.prepare_thread().unwrap()));
        assert!(rx.try_recv().is_err());

        // Another thread gets its own ring (one producer per ring).
        std::thread::scope(|s| {
            s.spawn(|| {
                assert!(link.push(
                    1,
                    Direction::Consumer,
                    Ssrc::new(1),
                    RtpTs::new(0),
                    0,
                    &[0xF8, 1, 2]
                ));
            });
        });
        assert!(matches!(rx.try_recv(), Ok(Ctrl::Ring(r)) if !Arc::ptr_eq(&r, &ring)));
    }

    /// Frames in through the shard-side link, files out through the writer thread: a transfer
    /// (new SSRC and timestamp base), loss, a timestamp wrap, a duplicate and a bad packet.
    #[test]
    fn files_keep_true_time_across_transfer_loss_and_wrap() {
        let dir = std::env::temp_dir().join(format!("relay-rec-writer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let rec = Recorder::start(RecordingConfig {
            dir: Some(dir.clone()),
            name_template: "x/{call_id}".into(),
            queue_packets: 1024,
        })
        .unwrap();
        let t0 = SystemTime::now();
        let open = rec.create("call-1", "b", "c", t0).unwrap();
        let (id, files) = (open.id, open.files.clone());
        let link = rec.link();
        link.send(Ctrl::Open(Box::new(open)));
        let opus = [0xF8u8, 0xAA, 0xBB]; // CELT FB 20 ms
        let mut pushed = 0;
        // Agent A: 100 packets across the 2^32 wrap, packets 40..43 lost.
        for i in 0..100u32 {
            if (40..43).contains(&i) {
                continue;
            }
            let ts = (u32::MAX - 960 * 50).wrapping_add(i * 960);
            assert!(link.push(
                id,
                Direction::Agent,
                Ssrc::new(0xA),
                RtpTs::new(ts),
                u64::from(i) * 960,
                &opus
            ));
            pushed += 1;
        }
        // Transfer: 1 s later agent B, its own SSRC and timestamps.
        for i in 0..50u32 {
            let clock = u64::from(150 + i) * 960;
            assert!(link.push(
                id,
                Direction::Agent,
                Ssrc::new(0xB),
                RtpTs::new(5_000 + i * 960),
                clock,
                &opus
            ));
            pushed += 1;
        }
        // The consumer: 200 packets, one duplicated, one not Opus at all.
        for i in 0..200u32 {
            assert!(link.push(
                id,
                Direction::Consumer,
                Ssrc::new(0xC),
                RtpTs::new(i * 960),
                u64::from(i) * 960,
                &opus
            ));
        }
        link.push(
            id,
            Direction::Consumer,
            Ssrc::new(0xC),
            RtpTs::new(198 * 960),
            200 * 960,
            &opus,
        );
        link.push(
            id,
            Direction::Consumer,
            Ssrc::new(0xC),
            RtpTs::new(199 * 960),
            200 * 960,
            &[],
        );
        link.send(Ctrl::Close {
            id,
            clock: 200 * 960,
            reason: "test".into(),
        });
        rec.shutdown();
        let agent = ogg::summarize(&std::fs::read(&files.agent).unwrap()).unwrap();
        let consumer = ogg::summarize(&std::fs::read(&files.consumer).unwrap()).unwrap();
        let lines = std::fs::read_to_string(&files.events).unwrap();
        let last: serde_json::Value = serde_json::from_str(lines.lines().last().unwrap()).unwrap();
        assert_eq!(last["agent"]["packets"], pushed);
        assert_eq!(last["agent"]["ssrc_changes"], 1);
        assert_eq!(last["consumer"]["packets"], 200);
        assert_eq!(last["late_or_duplicate_packets"], 1);
        assert_eq!(last["invalid_packets"], 1);
        // 200 packet times = 4 s each; the lost packets and the transfer gap are concealment.
        assert_eq!(agent.duration_secs(), 4.0);
        assert_eq!(consumer.duration_secs(), 4.0);
        // Less the pre-skip lead-in and the concealment.
        let gap_packets = last["agent"]["gap_packets"].as_u64().unwrap();
        assert_eq!(agent.packets as u64 - 1 - gap_packets, 147);
        assert!(files.consumer.starts_with(dir.join("x")));
        // A standard tool agrees, where it is installed (scripts/test.sh installs it).
        for (f, packets) in [(&files.agent, pushed), (&files.consumer, 200)] {
            if let Some(info) = opusinfo(f) {
                assert!(info.contains("Playback length: 0m:04.000s"), "{info}");
                assert!(
                    !info.contains("WARNING") && !info.contains("ERROR"),
                    "{info}"
                );
                let _ = packets;
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `opusinfo`'s report on a file, or `None` (with a note) where it is not installed.
    pub(crate) fn opusinfo(f: &Path) -> Option<String> {
        match std::process::Command::new("opusinfo").arg(f).output() {
            Ok(o) => Some(format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )),
            Err(_) => {
                eprintln!("opusinfo not installed (Debian: opus-tools); check skipped");
                None
            }
        }
    }

    /// Memory of recordings in flight, from the process's resident set: `n` recordings, two
    /// seconds of audio each way written into each, all open. Run with
    /// `cargo test -p relay --release --lib memory_per_recording -- --ignored --nocapture`.
    #[test]
    #[ignore = "measures the process RSS; run on its own"]
    fn memory_per_recording() {
        fn rss_kib() -> u64 {
            let s = std::fs::read_to_string("/proc/self/status").unwrap();
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap()
        }
        let n = 1000;
        let dir = std::env::temp_dir().join(format!("relay-rec-mem-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let base_kib = rss_kib();
        let rec = Recorder::start(RecordingConfig {
            dir: Some(dir.clone()),
            name_template: "{call_id}".into(),
            ..RecordingConfig::default()
        })
        .unwrap();
        let link = rec.link().clone();
        // This thread's ring is allocated (and touched) once; measure from here.
        let ring_bytes = link.prepare_thread().unwrap().bytes();
        let pool_kib = rss_kib();
        let mut ids = Vec::new();
        for i in 0..n {
            let open = rec
                .create(&format!("call-{i}"), "b", "c", SystemTime::now())
                .unwrap();
            ids.push(open.id);
            link.send(Ctrl::Open(Box::new(open)));
        }
        let payload = [0xF8u8; 120];
        for p in 0..100u32 {
            for &id in &ids {
                for dir in [Direction::Consumer, Direction::Agent] {
                    while !link.push(
                        id,
                        dir,
                        Ssrc::new(1),
                        RtpTs::new(p * 960),
                        u64::from(p) * 960,
                        &payload,
                    ) {
                        std::thread::yield_now();
                    }
                }
            }
        }
        let want = 2 * 100 * n as u64;
        while rec.stats().packets_written.load(Ordering::Relaxed) < want {
            std::thread::sleep(Duration::from_millis(5));
        }
        let per = (rss_kib() - pool_kib) as f64 / n as f64;
        let pool = ring_bytes / 1024;
        eprintln!(
            "{n} open recordings: {per:.1} KiB each (writer side), plus the shard's ring \
             of {pool} KiB by size, {} KiB by RSS ({:.1} KiB per recording at {n})",
            pool_kib - base_kib,
            (pool_kib - base_kib) as f64 / n as f64
        );
        rec.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn samples_are_48_khz() {
        assert_eq!(samples(Duration::from_millis(20)), 960);
        assert_eq!(samples(Duration::from_secs(3)), 144_000);
    }
}
