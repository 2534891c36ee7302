//! The bridge between a bot leg's two halves: the call on its shard (the media clock, Opus,
//! the WhatsApp leg) and the WebSocket task on the tokio runtime (TLS, framing, JSON).
//!
//! **Why this leg crosses threads.** Everywhere else a packet never leaves the shard that
//! received it. A WebSocket is a TCP (and TLS) stream: its reads and writes can block on
//! congestion, its handshake takes round trips, and a slow bot must never stall the shard's
//! other calls. So the stream lives on a tokio task and only audio frames and a few control
//! events cross, through fixed-size queues allocated once when the leg is created:
//!
//! - bot → shard: `audio`, a byte ring of the bot's samples in the wire format (μ-law or
//!   L16), [`QUEUE_SECONDS`] deep: bots send speech faster than real time and the relay plays
//!   it out on its own clock, as Twilio does; `marks`, each the byte position the bot's mark
//!   stands at; `clear_to`, the position of the bot's latest `clear` (an atomic, so a clear
//!   takes effect at the next 20 ms tick however much audio is queued before it).
//! - shard → bot: `up`, a ring of [`Up`] items (20 ms frames of the consumer's audio, DTMF
//!   digits, played marks), and a doorbell (an eventfd) that wakes the task when it sleeps.
//!
//! Every queue is a wait-free single-producer single-consumer ring (`rtrb`): no lock, no
//! allocation per frame (`relay/tests/bot_alloc.rs` counts). A full queue drops and counts
//! ([`LinkCounters`]); it never blocks either side. The doorbell costs one `write(2)` per
//! frame when the task is asleep and none when it is busy.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use crate::bot::protocol::MediaFormat;

/// How much bot audio the relay queues ahead of playout: bots synthesise speech faster than
/// real time and send it in bursts. Beyond this the newest audio is dropped (counted).
pub const QUEUE_SECONDS: usize = 30;

/// Frames of the consumer's audio (and events) waiting for the WebSocket task: 1 s.
pub const UP_SLOTS: usize = 64;

/// Marks waiting to be played.
pub const MARK_SLOTS: usize = 256;

/// The largest 20 ms frame on the wire (L16 at 16 kHz).
pub const MAX_FRAME_BYTES: usize = 640;

/// Something for the WebSocket task. Frames are inline on purpose: the ring's slots are
/// allocated once, and boxing a frame would allocate per frame.
#[derive(Copy, Clone, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Up {
    /// 20 ms of the consumer's audio in the stream's wire format.
    Audio(AudioFrame),
    /// The consumer pressed a key (RFC 4733 event from WhatsApp).
    Dtmf(char),
    /// The bot's mark with this id has been played (or dropped by a clear).
    MarkPlayed(u32),
}

#[derive(Copy, Clone, Debug)]
pub struct AudioFrame {
    /// Time since the stream started (the `media.timestamp` Twilio sends), in ms.
    pub timestamp_ms: u32,
    pub len: u16,
    pub data: [u8; MAX_FRAME_BYTES],
}

impl AudioFrame {
    pub fn bytes(&self) -> &[u8] {
        &self.data[..usize::from(self.len).min(MAX_FRAME_BYTES)]
    }
}

/// A mark as queued: its id (the task keeps the name) and the byte position it stands at.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct MarkAt {
    pub id: u32,
    pub pos: u64,
}

/// Why the WebSocket side ended (task → shard).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Closed {
    /// The bot closed the WebSocket (a close frame, or `stop`): it hung up.
    ByBot = 1,
    /// The connection failed: reset, TLS or protocol error, or the bot stopped reading.
    Failed = 2,
}

impl Closed {
    fn from_u8(v: u8) -> Option<Closed> {
        match v {
            1 => Some(Closed::ByBot),
            2 => Some(Closed::Failed),
            _ => None,
        }
    }
}

/// Counters both halves add to (relaxed atomics, read for the call's statistics).
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Consumer frames the task was too far behind to take.
    pub up_dropped: AtomicU64,
    /// Bot audio bytes dropped because the queue was full.
    pub audio_dropped_bytes: AtomicU64,
    /// Bot audio bytes dropped by `clear`.
    pub cleared_bytes: AtomicU64,
    /// Marks refused because too many were pending.
    pub marks_dropped: AtomicU64,
    /// Frames from the bot that were not understood.
    pub bad_messages: AtomicU64,
    /// Media messages (or binary frames) received from the bot.
    pub media_messages: AtomicU64,
}

struct Shared {
    /// Byte position (in bot audio written so far) of the latest clear.
    clear_to: AtomicU64,
    /// [`Closed`] as u8, 0 while open.
    closed: AtomicU8,
    /// The shard dropped its end: the leg is over (call ended, leg replaced).
    leg_over: AtomicBool,
    doorbell: Doorbell,
    counters: LinkCounters,
}

/// A new link for a leg of `format`: the shard's end and the task's end.
pub fn link(format: MediaFormat) -> io::Result<(ShardEnd, TaskEnd)> {
    let audio_bytes = QUEUE_SECONDS * 50 * format.frame_bytes();
    let (audio_tx, audio_rx) = rtrb::RingBuffer::new(audio_bytes);
    let (marks_tx, marks_rx) = rtrb::RingBuffer::new(MARK_SLOTS);
    let (up_tx, up_rx) = rtrb::RingBuffer::new(UP_SLOTS);
    let shared = Arc::new(Shared {
        clear_to: AtomicU64::new(0),
        closed: AtomicU8::new(0),
        leg_over: AtomicBool::new(false),
        doorbell: Doorbell::new()?,
        counters: LinkCounters::default(),
    });
    Ok((
        ShardEnd {
            audio: audio_rx,
            marks: marks_rx,
            up: up_tx,
            shared: shared.clone(),
        },
        TaskEnd {
            audio: audio_tx,
            marks: marks_tx,
            up: up_rx,
            shared,
            written: 0,
        },
    ))
}

/// The call's end of the link (lives on the shard).
pub struct ShardEnd {
    audio: rtrb::Consumer<u8>,
    marks: rtrb::Consumer<MarkAt>,
    up: rtrb::Producer<Up>,
    shared: Arc<Shared>,
}

impl ShardEnd {
    /// Bot audio bytes queued now.
    pub fn queued(&self) -> usize {
        self.audio.slots()
    }

    /// Take exactly `out.len()` queued bytes (the caller checked [`Self::queued`]).
    pub fn take(&mut self, out: &mut [u8]) -> bool {
        self.audio.pop_entire_slice(out).is_ok()
    }

    /// Drop `n` queued bytes (a clear).
    pub fn discard(&mut self, n: usize) {
        if let Ok(chunk) = self.audio.read_chunk(n.min(self.audio.slots())) {
            chunk.commit_all();
        }
    }

    /// The position of the bot's latest clear.
    pub fn clear_to(&self) -> u64 {
        self.shared.clear_to.load(Ordering::Acquire)
    }

    /// The oldest pending mark.
    pub fn next_mark(&self) -> Option<MarkAt> {
        self.marks.peek().ok().copied()
    }

    pub fn pop_mark(&mut self) {
        let _ = self.marks.pop();
    }

    /// Queue an item for the bot and wake its task. A full queue drops (counted).
    pub fn send(&mut self, item: Up) {
        if self.up.push(item).is_err() {
            self.shared
                .counters
                .up_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.shared.doorbell.ring();
    }

    /// Has the WebSocket side ended, and why?
    pub fn closed(&self) -> Option<Closed> {
        Closed::from_u8(self.shared.closed.load(Ordering::Acquire))
    }

    pub fn counters(&self) -> &LinkCounters {
        &self.shared.counters
    }
}

impl Drop for ShardEnd {
    fn drop(&mut self) {
        self.shared.leg_over.store(true, Ordering::Release);
        self.shared.doorbell.ring_always();
    }
}

/// The WebSocket task's end of the link.
pub struct TaskEnd {
    audio: rtrb::Producer<u8>,
    marks: rtrb::Producer<MarkAt>,
    up: rtrb::Consumer<Up>,
    shared: Arc<Shared>,
    /// Bot audio bytes queued so far: the position marks and clears refer to, in the same
    /// units as the shard's read position (bytes dropped by a full queue never count).
    written: u64,
}

impl TaskEnd {
    /// Queue bot audio (wire format). What does not fit is dropped and counted.
    pub fn push_audio(&mut self, bytes: &[u8]) {
        let (_, rest) = self.audio.push_partial_slice(bytes);
        if !rest.is_empty() {
            self.shared
                .counters
                .audio_dropped_bytes
                .fetch_add(rest.len() as u64, Ordering::Relaxed);
        }
        self.written += (bytes.len() - rest.len()) as u64;
    }

    /// Queue a mark after the audio queued so far. False if too many are pending.
    pub fn push_mark(&mut self, id: u32) -> bool {
        let ok = self
            .marks
            .push(MarkAt {
                id,
                pos: self.written,
            })
            .is_ok();
        if !ok {
            self.shared
                .counters
                .marks_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Drop everything queued so far, at the shard's next tick.
    pub fn clear(&mut self) {
        self.shared.clear_to.store(self.written, Ordering::Release);
    }

    pub fn pop(&mut self) -> Option<Up> {
        self.up.pop().ok()
    }

    /// The shard's end is gone: the leg is over.
    pub fn leg_over(&self) -> bool {
        self.shared.leg_over.load(Ordering::Acquire)
    }

    /// Record why the WebSocket ended; the call sees it at its next tick.
    pub fn set_closed(&self, why: Closed) {
        let _ =
            self.shared
                .closed
                .compare_exchange(0, why as u8, Ordering::AcqRel, Ordering::Acquire);
    }

    pub fn counters(&self) -> &LinkCounters {
        &self.shared.counters
    }

    /// Prepare to sleep: after this, a new item or the end of the leg rings the doorbell.
    /// Returns false if something is already waiting (do not sleep).
    pub fn arm(&mut self) -> bool {
        self.shared.doorbell.arm();
        self.up.is_empty() && !self.leg_over()
    }

    /// A descriptor of the doorbell (a duplicate the caller owns), for the task's reactor.
    pub fn doorbell_fd(&self) -> io::Result<OwnedFd> {
        self.shared.doorbell.fd.try_clone()
    }

    /// Reset the doorbell after it rang.
    pub fn drain_doorbell(&self) {
        self.shared.doorbell.drain();
    }
}

/// An eventfd the shard writes when the task sleeps (armed); the task's reactor polls it.
struct Doorbell {
    fd: OwnedFd,
    armed: AtomicBool,
}

impl Doorbell {
    fn new() -> io::Result<Doorbell> {
        // SAFETY: eventfd returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Doorbell {
            // SAFETY: a fresh descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            armed: AtomicBool::new(false),
        })
    }

    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Wake the task if it is asleep (one system call), else nothing.
    fn ring(&self) {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.write();
        }
    }

    fn ring_always(&self) {
        self.armed.store(false, Ordering::SeqCst);
        self.write();
    }

    fn write(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd. EAGAIN (counter saturated)
        // means it is readable anyway.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our non-blocking eventfd.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_marks_and_clear_cross_in_order() {
        let (mut shard, mut task) = link(MediaFormat::Mulaw8k).expect("eventfd");
        task.push_audio(&[1; 100]);
        assert!(task.push_mark(7));
        task.push_audio(&[2; 60]);
        assert_eq!(shard.queued(), 160);
        assert_eq!(shard.next_mark(), Some(MarkAt { id: 7, pos: 100 }));
        let mut f = [0u8; 160];
        assert!(shard.take(&mut f));
        assert_eq!(&f[..100], &[1; 100]);
        assert_eq!(&f[100..], &[2; 60]);
        task.push_audio(&[3; 10]);
        task.clear();
        assert_eq!(shard.clear_to(), 170);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (mut shard, mut task) = link(MediaFormat::Mulaw8k).expect("eventfd");
        let cap = QUEUE_SECONDS * 50 * 160;
        task.push_audio(&vec![0u8; cap + 5]);
        assert_eq!(shard.queued(), cap);
        assert_eq!(
            task.counters().audio_dropped_bytes.load(Ordering::Relaxed),
            5
        );
        for _ in 0..UP_SLOTS + 3 {
            shard.send(Up::Dtmf('1'));
        }
        assert_eq!(shard.counters().up_dropped.load(Ordering::Relaxed), 3);
        let mut n = 0;
        while task.pop().is_some() {
            n += 1;
        }
        assert_eq!(n, UP_SLOTS);
    }

    #[test]
    fn dropping_the_shard_end_tells_the_task() {
        let (shard, mut task) = link(MediaFormat::L16_16k).expect("eventfd");
        assert!(task.arm());
        drop(shard);
        assert!(task.leg_over());
        assert!(!task.arm());
        task.set_closed(Closed::ByBot);
        task.set_closed(Closed::Failed);
    }
}
