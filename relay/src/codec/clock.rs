//! RTP timestamps between clocks: a stream arriving on one clock (Opus: 48 kHz) leaves on
//! another (G.711: 8 kHz), and its RFC 4733 telephone events with it. The change of clock
//! is [`MediaTime::rescale`]'s; this module keeps the wrapping 32-bit timestamps anchored.

use crate::wire::rtp::{Clock, MediaTime, RtpTs};

/// Translates timestamps of one stream from one RTP clock to another, keeping the output
/// continuous across any call length (the mapping is re-anchored, exactly, every time it drifts
/// a quarter of the timestamp space from its anchor) and the spacing exact (960 units at
/// 48 kHz are always 160 at 8 kHz).
#[derive(Clone, Debug)]
pub struct ClockMap {
    from: Clock,
    to: Clock,
    /// (input timestamp, output timestamp) that correspond.
    anchor: Option<(RtpTs, RtpTs)>,
    /// Where output starts for the first input (or after [`ClockMap::restart`]).
    next_base: RtpTs,
}

/// Re-anchor when the distance from the anchor passes this (2^29: hours at 48 kHz).
const REANCHOR: i64 = 1 << 29;

impl ClockMap {
    /// Maps `from` to `to`; the first timestamp mapped becomes `out_base`.
    pub fn new(from: Clock, to: Clock, out_base: RtpTs) -> ClockMap {
        ClockMap {
            from,
            to,
            anchor: None,
            next_base: out_base,
        }
    }

    pub fn from_clock(&self) -> Clock {
        self.from
    }

    pub fn to_clock(&self) -> Clock {
        self.to
    }

    /// The output timestamp for input `ts`. Timestamps behind the anchor (reordering) map
    /// behind its output too.
    pub fn map(&mut self, ts: RtpTs) -> RtpTs {
        let (mut ain, mut aout) = *self.anchor.get_or_insert((ts, self.next_base));
        let mut d = ts.since(ain, self.from);
        if d.ticks().abs() > REANCHOR {
            // Move the anchor by whole seconds of the input clock: those map exactly.
            let whole = MediaTime::new(
                d.ticks() / i64::from(self.from.hz()) * i64::from(self.from.hz()),
                self.from,
            );
            ain = ain.advance(whole);
            aout = aout.advance(whole.rescale(self.to));
            d = MediaTime::new(d.ticks() - whole.ticks(), self.from);
            self.anchor = Some((ain, aout));
        }
        aout.advance(d.rescale(self.to))
    }

    /// A new input timeline (the source restarted: new SSRC, a jump): its next timestamp maps
    /// to `out_next`, so the output stays continuous.
    pub fn restart(&mut self, out_next: RtpTs) {
        self.anchor = None;
        self.next_base = out_next;
    }
}

/// An RFC 4733 telephone-event payload (§2.3): event, end bit, volume, duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TelephoneEvent {
    pub event: u8,
    pub end: bool,
    pub volume: u8,
    /// In units of the event's RTP clock (its `telephone-event/<rate>`).
    pub duration: u16,
}

impl TelephoneEvent {
    /// The first event in `payload` (a packet may carry redundant ones after it; RFC 4733
    /// §2.5.1.5 puts the newest first). `None` if shorter than 4 bytes.
    pub fn parse(payload: &[u8]) -> Option<TelephoneEvent> {
        let b = payload.get(..4)?;
        Some(TelephoneEvent {
            event: b[0],
            end: b[1] & 0x80 != 0,
            volume: b[1] & 0x3f,
            duration: u16::from_be_bytes([b[2], b[3]]),
        })
    }

    /// Writes the 4-byte payload.
    pub fn write(&self, out: &mut [u8; 4]) {
        out[0] = self.event;
        out[1] = (u8::from(self.end) << 7) | (self.volume & 0x3f);
        out[2..4].copy_from_slice(&self.duration.to_be_bytes());
    }

    /// The same event with its duration counted on `to` instead of `from` (saturating at
    /// the field's 16 bits, as a long event's sender would split it: §2.5.1.3).
    pub fn rescaled(self, from: Clock, to: Clock) -> TelephoneEvent {
        let d = MediaTime::new(i64::from(self.duration), from).rescale(to);
        TelephoneEvent {
            duration: u16::try_from(d.ticks()).unwrap_or(u16::MAX),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock_map(from: u32, to: u32, out_base: u32) -> ClockMap {
        let clock = |hz| Clock::new(hz).unwrap();
        ClockMap::new(clock(from), clock(to), RtpTs::new(out_base))
    }

    /// `m.map` on the wire's numbers.
    fn map(m: &mut ClockMap, ts: u32) -> u32 {
        m.map(RtpTs::new(ts)).get()
    }

    #[test]
    fn opus_frames_map_to_g711_frames_exactly() {
        let mut m = clock_map(48_000, 8_000, 5000);
        let start = 4_294_000_000u32; // wraps within the run
        for i in 0..10_000u32 {
            let out = map(&mut m, start.wrapping_add(i * 960));
            assert_eq!(out, 5000u32.wrapping_add(i * 160), "frame {i}");
        }
        // And back.
        let mut back = clock_map(8_000, 48_000, 7);
        assert_eq!(map(&mut back, 100), 7);
        assert_eq!(map(&mut back, 260), 7 + 960);
        assert_eq!(map(&mut back, 180), 7 + 480);
    }

    #[test]
    fn reordered_timestamps_map_behind() {
        let mut m = clock_map(48_000, 8_000, 1000);
        assert_eq!(map(&mut m, 96_000), 1000);
        assert_eq!(map(&mut m, 96_000 + 1920), 1320);
        assert_eq!(map(&mut m, 96_000 + 960), 1160);
        assert_eq!(map(&mut m, 96_000 - 960), 840);
    }

    #[test]
    fn a_call_of_days_keeps_exact_spacing() {
        // 3 days of 20 ms frames at 48 kHz wraps the 32-bit timestamp several times.
        let mut m = clock_map(48_000, 16_000, 0);
        let frames: u64 = 3 * 24 * 3600 * 50;
        let mut ts = 123u32;
        let mut last = map(&mut m, ts);
        for _ in 0..frames {
            ts = ts.wrapping_add(960);
            let out = map(&mut m, ts);
            assert_eq!(out.wrapping_sub(last), 320);
            last = out;
        }
    }

    #[test]
    fn restart_continues_the_output_timeline() {
        let mut m = clock_map(48_000, 8_000, 0);
        assert_eq!(map(&mut m, 10_000), 0);
        assert_eq!(map(&mut m, 10_960), 160);
        m.restart(RtpTs::new(320));
        assert_eq!(map(&mut m, 777_777), 320);
        assert_eq!(map(&mut m, 777_777 + 960), 480);
    }

    #[test]
    fn telephone_event_round_trips_and_rescales() {
        // Digit 5, end, volume 10, 800 units at 48 kHz = 16.7 ms... 4800 = 100 ms.
        let payload = [5u8, 0x80 | 10, 0x12, 0xc0];
        let ev = TelephoneEvent::parse(&payload).unwrap();
        assert_eq!(
            ev,
            TelephoneEvent {
                event: 5,
                end: true,
                volume: 10,
                duration: 4800
            }
        );
        let at8k = ev.rescaled(Clock::OPUS, Clock::G711);
        assert_eq!(at8k.duration, 800);
        assert_eq!(at8k.rescaled(Clock::G711, Clock::OPUS), ev);
        let mut out = [0u8; 4];
        ev.write(&mut out);
        assert_eq!(out, payload);
        // A long event at 8 kHz does not fit at 48 kHz: saturate, not wrap.
        let long = TelephoneEvent {
            duration: 60_000,
            ..ev
        };
        assert_eq!(long.rescaled(Clock::G711, Clock::OPUS).duration, u16::MAX);
        assert_eq!(TelephoneEvent::parse(&[1, 2, 3]), None);
    }
}
