//! Where in a recording each RTP packet belongs. Pure: RTP numbers and a clock in, a position
//! in 48 kHz samples out.
//!
//! Both files of a recording share one time origin, the moment recording started, so the
//! consumer and agent tracks line up and the sidecar's offsets point into either. Inside one
//! RTP stream the packet's timestamp decides its place (RFC 7587: Opus RTP runs at 48 kHz, the
//! Ogg granule rate), which keeps jitter out of the file and puts DTX and lost packets where
//! they belong. The arrival clock only anchors a stream: at its first packet, when the SSRC
//! changes (a transfer: the new agent has its own SSRC and timestamp base), and when the
//! timestamps stop agreeing with the clock by more than [`MAX_DRIFT`] (a sender that reset its
//! timestamps). Timestamps wrap at 2³²; they are extended through the wrap.

use super::ogg::GAP_QUANTUM;
use crate::wire::rtp::{RtpTs, Ssrc};

/// How far a stream's timestamps may run from the arrival clock before the stream is
/// re-anchored: well above jitter and a pre-gate prebuffer's catch-up, well below anything a
/// listener would accept as a misplaced second.
pub const MAX_DRIFT: u64 = 2 * 48_000;
/// A packet that belongs this far behind what is already written is not reordering (a relay
/// sees tens of milliseconds of that at most) but a sender whose timestamps went backwards.
pub const MAX_LATE: u64 = 48_000 / 5;

/// What to do with one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Write it after `gap` samples of concealment (0 when it follows on).
    Write { gap: u64 },
    /// It belongs entirely before what is written already: a duplicate or a late reordering.
    Late,
}

/// One direction's RTP stream mapped onto the recording's sample clock.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    ssrc: Option<Ssrc>,
    /// The last timestamp seen, and its extended (wrap-free) value.
    last_ts: RtpTs,
    last_ext: i64,
    /// Extended timestamp ↔ recording position of the anchor.
    anchor_ext: i64,
    anchor_pos: u64,
    pub reanchors: u64,
}

impl Timeline {
    /// Place a packet of `ssrc`/`ts` lasting `duration` samples that arrived `clock` samples
    /// after the recording started, given that `written` samples are in the file already.
    pub fn place(
        &mut self,
        ssrc: Ssrc,
        ts: RtpTs,
        duration: u64,
        clock: u64,
        written: u64,
    ) -> Placement {
        if self.ssrc != Some(ssrc) {
            if self.ssrc.is_some() {
                self.reanchors += 1;
            }
            return self.anchor(ssrc, ts, clock, written);
        }
        let ext = self.last_ext + i64::from(ts.delta(self.last_ts));
        let pos = clamp_i64(self.anchor_pos).saturating_add(ext - self.anchor_ext);
        let ahead_of_clock = pos > clamp_i64(clock.saturating_add(MAX_DRIFT));
        let far_behind = pos.saturating_add(MAX_LATE as i64) < clamp_i64(written);
        if pos < 0 || ahead_of_clock || far_behind {
            self.reanchors += 1;
            return self.anchor(ssrc, ts, clock, written);
        }
        if ext > self.last_ext {
            self.last_ext = ext;
            self.last_ts = ts;
        }
        let pos = pos as u64;
        if pos.saturating_add(duration) <= written {
            Placement::Late
        } else {
            // A packet that overlaps the end of the file slightly (a sender's timestamps
            // drifting) is written on: nothing is cut, the next gap absorbs the drift.
            Placement::Write {
                gap: pos.saturating_sub(written),
            }
        }
    }

    /// Start (or restart) the stream here: at the arrival clock, or right after what is
    /// written if the clock is behind it.
    fn anchor(&mut self, ssrc: Ssrc, ts: RtpTs, clock: u64, written: u64) -> Placement {
        // Gaps are repairable in whole 2.5 ms frames only (RFC 7845 §4.1).
        let gap = clock.saturating_sub(written);
        let gap = gap - gap % GAP_QUANTUM;
        self.ssrc = Some(ssrc);
        self.last_ts = ts;
        self.last_ext = i64::from(ts.get());
        self.anchor_ext = i64::from(ts.get());
        self.anchor_pos = written.saturating_add(gap);
        Placement::Write { gap }
    }
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 960;

    /// [`Timeline::place`] with the wire's numbers.
    fn place(t: &mut Timeline, ssrc: u32, ts: u32, d: u64, clock: u64, written: u64) -> Placement {
        t.place(Ssrc::new(ssrc), RtpTs::new(ts), d, clock, written)
    }

    /// Feed `n` 20 ms packets from `ts0` arriving on time from `clock0`; returns the gaps.
    fn run(t: &mut Timeline, ssrc: u32, ts0: u32, clock0: u64, n: u32, written: &mut u64) {
        for i in 0..n {
            let ts = ts0.wrapping_add(i * 960);
            match place(t, ssrc, ts, P, clock0 + u64::from(i) * P, *written) {
                Placement::Write { gap } => *written += gap + P,
                Placement::Late => {}
            }
        }
    }

    #[test]
    fn first_packet_lines_up_with_the_recording_clock() {
        let mut t = Timeline::default();
        assert_eq!(
            place(&mut t, 1, 5, P, 3 * 48_000, 0),
            Placement::Write { gap: 144_000 }
        );
    }

    #[test]
    fn contiguous_packets_follow_on_across_the_timestamp_wrap() {
        let mut t = Timeline::default();
        let mut written = 0;
        run(&mut t, 1, u32::MAX - 960 * 10, 0, 100, &mut written);
        assert_eq!(written, 100 * P);
        assert_eq!(t.reanchors, 0);
    }

    #[test]
    fn loss_and_dtx_become_gaps_the_size_of_the_timestamp_jump() {
        let mut t = Timeline::default();
        let mut written = 0;
        run(&mut t, 1, 1000, 0, 10, &mut written);
        // Three packets lost: the next one is 4 packet times on.
        let p = place(&mut t, 1, 1000 + 13 * 960, P, 13 * P + 700, written);
        assert_eq!(p, Placement::Write { gap: 3 * P });
    }

    #[test]
    fn duplicates_and_late_packets_are_not_written_twice() {
        let mut t = Timeline::default();
        let mut written = 0;
        run(&mut t, 1, 0, 0, 10, &mut written);
        assert_eq!(
            place(&mut t, 1, 9 * 960, P, 10 * P, written),
            Placement::Late
        );
        assert_eq!(
            place(&mut t, 1, 7 * 960, P, 10 * P, written),
            Placement::Late
        );
        assert_eq!(t.reanchors, 0);
    }

    #[test]
    fn a_new_ssrc_is_anchored_at_the_clock() {
        // Transfer: agent A for 1 s, 2.5 s of nothing, agent B with an unrelated base.
        let mut t = Timeline::default();
        let mut written = 0;
        run(&mut t, 1, 777, 0, 50, &mut written);
        let p = place(&mut t, 2, 3_000_000_000, P, 3 * 48_000 + 500, written);
        assert_eq!(
            p,
            Placement::Write {
                gap: 2 * 48_000 + 480
            },
            "whole 2.5 ms frames"
        );
        assert_eq!(t.reanchors, 1);
    }

    #[test]
    fn timestamp_resets_reanchor_instead_of_inventing_hours_of_gap() {
        let mut t = Timeline::default();
        let mut written = 0;
        run(&mut t, 1, 0, 0, 50, &mut written);
        // Jump forward by ~6 hours of timestamps while only 20 ms passed.
        let p = place(&mut t, 1, 1_000_000_000, P, 51 * P, written);
        assert_eq!(p, Placement::Write { gap: P });
        // Jump backward by ~10 s: re-anchored after what is written (never rewinds).
        let w = written + P + P;
        let p = place(&mut t, 1, 1_000_000_000 - 480_000, P, 52 * P, w);
        assert_eq!(p, Placement::Write { gap: 0 });
        assert_eq!(t.reanchors, 2);
    }

    #[test]
    fn odd_inputs_never_panic() {
        let mut t = Timeline::default();
        for (i, ts) in [0, u32::MAX, 1, u32::MAX / 2, 7, 7, 0]
            .into_iter()
            .enumerate()
        {
            let _ = place(&mut t, i as u32 % 2, ts, 5760, u64::MAX / 4, u64::MAX / 4);
            let _ = place(&mut t, 3, ts, 0, 0, u64::MAX / 4);
        }
    }
}
