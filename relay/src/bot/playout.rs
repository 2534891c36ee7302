//! Playout of the bot's audio toward WhatsApp, sans-IO: a 20 ms clock that takes one frame
//! from the bot's queue per tick, acknowledges marks in order as the audio before them is
//! played, and honours `clear` at the next tick.
//!
//! Rules, as Twilio plays a bidirectional stream:
//! - Audio plays in the order the bot sent it, at real time, whatever the bot's pace: a bot
//!   that sends 5 s of speech in 200 ms is heard over 5 s.
//! - A mark is acknowledged once the frame holding the last byte queued before it has gone
//!   out (immediately, at the next tick, when nothing was queued before it).
//! - `clear` drops every byte queued before it and acknowledges the marks among them, at the
//!   next tick (within 20 ms).
//! - Nothing is consumed while the WhatsApp leg cannot carry media (gate closed, ICE/DTLS not
//!   done): the bot's greeting waits in its queue rather than being played into the void, so
//!   its marks stay true.
//! - A frame the bot left incomplete is played padded with silence once it stayed incomplete
//!   for a tick (the bot finished speaking) or a mark follows it; otherwise it waits for the
//!   rest, so a bot sending 30 ms chunks at real time is not chopped into gaps.
//! - When the queue is empty this produces nothing and the call's silence fill runs as for
//!   any quiet internal leg. The first frame after a gap starts a talkspurt (RTP marker).

use std::time::{Duration, Instant};

use crate::bot::link::{MAX_FRAME_BYTES, ShardEnd, Up};
use crate::bot::protocol::MediaFormat;

pub const FRAME: Duration = Duration::from_millis(20);

/// A late tick plays at most this many owed frames at once; a longer stall skips ahead (the
/// audio stays queued: it is delayed, not lost).
pub const MAX_CATCH_UP: u32 = 5;

/// Counters of one playout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlayoutStats {
    pub frames_played: u64,
    /// Frames played that were completed with silence (the bot's last, partial frame).
    pub frames_padded: u64,
    pub marks_played: u64,
    pub clears: u64,
    pub bytes_cleared: u64,
}

pub struct Playout {
    format: MediaFormat,
    /// Bytes of bot audio consumed (played or cleared): compared with mark positions.
    read_pos: u64,
    next_tick: Option<Instant>,
    /// Ticks the queue has held only part of a frame.
    partial_ticks: u8,
    /// A frame went out on the previous tick (the next one continues the talkspurt).
    speaking: bool,
    stats: PlayoutStats,
}

impl Playout {
    pub fn new(format: MediaFormat) -> Self {
        Playout {
            format,
            read_pos: 0,
            next_tick: None,
            partial_ticks: 0,
            speaking: false,
            stats: PlayoutStats::default(),
        }
    }

    /// Start the clock: the first tick is at `now`.
    pub fn start(&mut self, now: Instant) {
        if self.next_tick.is_none() {
            self.next_tick = Some(now);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_tick
    }

    pub fn stats(&self) -> PlayoutStats {
        self.stats
    }

    /// Run every tick due by `now`. `can_play`: the WhatsApp leg may carry media now.
    /// `play(frame, talkspurt_start, slot)` gets each frame (wire format, exactly one 20 ms
    /// frame) with the grid time it stands for.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        link: &mut ShardEnd,
        can_play: bool,
        mut play: impl FnMut(&[u8], bool, Instant),
    ) {
        for _ in 0..MAX_CATCH_UP {
            let Some(slot) = self.next_tick.filter(|t| *t <= now) else {
                return;
            };
            self.tick(slot, link, can_play, &mut play);
            let behind = now.saturating_duration_since(slot);
            let owed = (behind.as_nanos() / FRAME.as_nanos()) as u32;
            self.next_tick = Some(if owed >= MAX_CATCH_UP {
                // A stalled shard: resume on the clock rather than burst.
                slot + FRAME * (owed + 1)
            } else {
                slot + FRAME
            });
        }
    }

    fn tick(
        &mut self,
        slot: Instant,
        link: &mut ShardEnd,
        can_play: bool,
        play: &mut impl FnMut(&[u8], bool, Instant),
    ) {
        let clear_to = link.clear_to();
        if clear_to > self.read_pos {
            let n = clear_to - self.read_pos;
            link.discard(usize::try_from(n).unwrap_or(usize::MAX));
            self.read_pos = clear_to;
            self.stats.clears += 1;
            self.stats.bytes_cleared += n;
            self.partial_ticks = 0;
            self.speaking = false;
            self.ack_marks(link);
        }
        if !can_play {
            self.speaking = false;
            return;
        }
        let fb = self.format.frame_bytes();
        let queued = link.queued();
        let mut frame = [0u8; MAX_FRAME_BYTES];
        let take = if queued >= fb {
            fb
        } else if queued > 0
            && (self.partial_ticks >= 1
                || link
                    .next_mark()
                    .is_some_and(|m| m.pos <= self.read_pos + queued as u64))
        {
            self.stats.frames_padded += 1;
            queued
        } else {
            if queued > 0 {
                self.partial_ticks += 1;
            } else {
                self.speaking = false;
            }
            self.ack_marks(link);
            return;
        };
        if !link.take(&mut frame[..take]) {
            return;
        }
        frame[take..fb].fill(self.silence_byte());
        self.read_pos += take as u64;
        self.partial_ticks = 0;
        self.stats.frames_played += 1;
        play(&frame[..fb], !self.speaking, slot);
        self.speaking = true;
        self.ack_marks(link);
    }

    /// Acknowledge, in order, every mark whose audio has been consumed.
    fn ack_marks(&mut self, link: &mut ShardEnd) {
        while let Some(m) = link.next_mark() {
            if m.pos > self.read_pos {
                return;
            }
            link.pop_mark();
            link.send(Up::MarkPlayed(m.id));
            self.stats.marks_played += 1;
        }
    }

    fn silence_byte(&self) -> u8 {
        match self.format {
            // μ-law's zero is 0xFF (0x7F is the other zero).
            MediaFormat::Mulaw8k => 0xff,
            MediaFormat::L16_16k => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bot::link::{TaskEnd, link};

    struct Rig {
        shard: ShardEnd,
        task: TaskEnd,
        playout: Playout,
        now: Instant,
        /// (first byte of the frame, talkspurt start, slot offset in ms)
        played: Vec<(u8, bool, u64)>,
        t0: Instant,
    }

    impl Rig {
        fn new(format: MediaFormat) -> Rig {
            let (shard, task) = link(format).expect("eventfd");
            let now = Instant::now();
            let mut playout = Playout::new(format);
            playout.start(now);
            Rig {
                shard,
                task,
                playout,
                now,
                played: Vec::new(),
                t0: now,
            }
        }

        /// Advance simulated time by `ms`, running every due tick.
        fn run(&mut self, ms: u64, can_play: bool) {
            let end = self.now + Duration::from_millis(ms);
            while let Some(t) = self.playout.poll_timeout().filter(|t| *t <= end) {
                self.now = t;
                let t0 = self.t0;
                let played = &mut self.played;
                self.playout
                    .handle_timeout(t, &mut self.shard, can_play, |f, start, slot| {
                        played.push((f[0], start, (slot - t0).as_millis() as u64))
                    });
            }
            self.now = end;
        }

        fn acks(&mut self) -> Vec<u32> {
            let mut v = Vec::new();
            while let Some(up) = self.task.pop() {
                if let Up::MarkPlayed(id) = up {
                    v.push(id);
                }
            }
            v
        }
    }

    #[test]
    fn a_burst_plays_out_at_real_time_on_the_20ms_grid() {
        let mut r = Rig::new(MediaFormat::Mulaw8k);
        for i in 0..50u8 {
            r.task.push_audio(&[i; 160]);
        }
        r.run(999, true);
        assert_eq!(r.played.len(), 50, "one frame per 20 ms tick over 1 s");
        for (i, (b, start, at)) in r.played.iter().enumerate() {
            assert_eq!(*b, i as u8, "in order");
            assert_eq!(*at, i as u64 * 20, "on the grid");
            assert_eq!(*start, i == 0, "one talkspurt");
        }
        r.run(100, true);
        assert_eq!(
            r.played.len(),
            50,
            "nothing when the queue is empty (fill's turn)"
        );
    }

    #[test]
    fn marks_are_acknowledged_in_order_when_their_audio_has_played() {
        let mut r = Rig::new(MediaFormat::Mulaw8k);
        r.task.push_audio(&[1; 320]);
        r.task.push_mark(1);
        r.task.push_audio(&[2; 160]);
        r.task.push_mark(2);
        r.task.push_mark(3);
        r.run(1, true);
        assert_eq!(
            r.acks(),
            Vec::<u32>::new(),
            "first frame out, mark 1 still waits"
        );
        r.run(20, true);
        assert_eq!(r.acks(), vec![1], "after the second frame");
        r.run(20, true);
        assert_eq!(r.acks(), vec![2, 3]);
        // A mark with nothing queued before it is acknowledged at the next tick.
        r.task.push_mark(4);
        r.run(20, true);
        assert_eq!(r.acks(), vec![4]);
    }

    #[test]
    fn clear_drops_the_queue_at_the_next_tick_and_acknowledges_pending_marks() {
        let mut r = Rig::new(MediaFormat::Mulaw8k);
        for _ in 0..100 {
            r.task.push_audio(&[7; 160]);
        }
        r.task.push_mark(10);
        r.task.push_audio(&[8; 160]);
        r.task.push_mark(11);
        r.run(100, true);
        let before = r.played.len();
        r.task.clear();
        r.task.push_audio(&[9; 160]);
        r.run(20, true);
        assert_eq!(
            r.acks(),
            vec![10, 11],
            "both marks came back with the clear"
        );
        let after: Vec<u8> = r.played[before..].iter().map(|p| p.0).collect();
        assert_eq!(
            after,
            vec![9],
            "nothing queued before the clear was played after it"
        );
        assert!(
            r.played[before].1,
            "the audio after a clear starts a talkspurt"
        );
        assert_eq!(r.playout.stats().clears, 1);
        assert_eq!(
            r.playout.stats().bytes_cleared,
            (101 - before as u64) * 160,
            "everything queued before the clear and not yet played"
        );
        assert_eq!(r.shard.queued(), 0);
    }

    #[test]
    fn nothing_is_consumed_while_whatsapp_cannot_carry_media() {
        let mut r = Rig::new(MediaFormat::L16_16k);
        r.task.push_audio(&[3; 640 * 3]);
        r.task.push_mark(1);
        r.run(500, false);
        assert!(r.played.is_empty());
        assert!(r.acks().is_empty(), "the greeting has not been heard");
        r.run(60, true);
        assert_eq!(r.played.len(), 3);
        assert_eq!(r.acks(), vec![1]);
    }

    #[test]
    fn a_partial_last_frame_is_padded_after_a_tick_or_at_a_mark() {
        let mut r = Rig::new(MediaFormat::Mulaw8k);
        r.task.push_audio(&[5; 200]);
        r.run(1, true);
        assert_eq!(r.played.len(), 1);
        r.run(20, true);
        assert_eq!(r.played.len(), 1, "40 bytes wait a tick for the rest");
        r.task.push_audio(&[5; 120]);
        r.run(20, true);
        assert_eq!(r.played.len(), 2, "completed: played whole");
        r.task.push_audio(&[6; 10]);
        r.task.push_mark(1);
        r.run(20, true);
        assert_eq!(r.played.len(), 3, "a mark after it: played padded at once");
        assert_eq!(r.acks(), vec![1]);
        assert_eq!(r.playout.stats().frames_padded, 1);
    }

    #[test]
    fn a_stalled_shard_skips_ahead_instead_of_bursting() {
        let mut r = Rig::new(MediaFormat::Mulaw8k);
        for _ in 0..100 {
            r.task.push_audio(&[1; 160]);
        }
        r.run(0, true);
        assert_eq!(r.played.len(), 1);
        // One late wake-up 1 s later.
        r.now += Duration::from_secs(1);
        let now = r.now;
        let played = &mut r.played;
        r.playout
            .handle_timeout(now, &mut r.shard, true, |f, s, _| played.push((f[0], s, 0)));
        assert!(r.played.len() <= 1 + MAX_CATCH_UP as usize);
        assert!(r.playout.poll_timeout().expect("armed") > now);
    }
}
