//! The RTP vocabulary as types: an SSRC, a payload type, a sequence number (the wire's 16 bits
//! and the extended 64-bit count with its rollover counter), a timestamp, and media time that
//! carries its clock rate. Each is a distinct type, so passing a sequence number where an SSRC
//! belongs, or a 48 kHz duration where an 8 kHz one belongs, does not compile.
//!
//! Integers go in and come out at the wire boundary only ([`Ssrc::new`] / [`Ssrc::get`] and
//! the like, used by the RTP, RTCP and SRTP parsers and writers, SDP and the API); in between,
//! arithmetic is what the type allows: sequence numbers and timestamps wrap (RFC 3550 §5.1),
//! and a time on one clock becomes a time on another only through [`MediaTime::rescale`].
//!
//! All of it is `Copy` and `repr(transparent)` (or two words for [`MediaTime`]): the
//! per-packet path pays nothing for it. `Debug` and `Display` print the bare number, as the
//! logs did before these types.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use super::super::seq::{self, Step};

macro_rules! bare_number_fmt {
    ($t:ident) => {
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

/// A synchronization source identifier (RFC 3550 §5.1).
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(transparent)]
pub struct Ssrc(u32);

impl Ssrc {
    pub const fn new(v: u32) -> Ssrc {
        Ssrc(v)
    }

    pub const fn get(self) -> u32 {
        self.0
    }

    pub const fn to_be_bytes(self) -> [u8; 4] {
        self.0.to_be_bytes()
    }
}

bare_number_fmt!(Ssrc);

/// A payload type: 7 bits on the wire (0–127), named by SDP. The SDP parser bounds what it
/// accepts; the RTP writers check or mask (see [`super::write_header`], [`super::HeaderMut`]).
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(transparent)]
pub struct Pt(u8);

impl Pt {
    pub const fn new(v: u8) -> Pt {
        Pt(v)
    }

    pub const fn get(self) -> u8 {
        self.0
    }
}

bare_number_fmt!(Pt);

/// A sequence number as the wire carries it: 16 bits that wrap. Order between two of them is
/// [`crate::wire::seq`]'s rule, not `<`.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct Seq(u16);

impl Seq {
    pub const fn new(v: u16) -> Seq {
        Seq(v)
    }

    pub const fn get(self) -> u16 {
        self.0
    }

    /// `n` packets later (wrapping).
    #[inline]
    pub const fn add(self, n: u16) -> Seq {
        Seq(self.0.wrapping_add(n))
    }

    /// `n` packets earlier (wrapping).
    #[inline]
    pub const fn sub(self, n: u16) -> Seq {
        Seq(self.0.wrapping_sub(n))
    }

    /// The next packet's number.
    #[inline]
    pub const fn next(self) -> Seq {
        self.add(1)
    }

    /// How many packets `self` is after `earlier`, modulo 2^16 (an offset that maps one
    /// numbering onto another: `earlier.add(self.since(earlier)) == self`).
    #[inline]
    pub const fn since(self, earlier: Seq) -> u16 {
        self.0.wrapping_sub(earlier.0)
    }

    /// `self - other` in sequence space: positive when `self` is newer.
    #[inline]
    pub const fn delta(self, other: Seq) -> i16 {
        self.0.wrapping_sub(other.0) as i16
    }

    /// Newer than `other` in RFC 1982 serial arithmetic.
    #[inline]
    pub const fn is_newer_than(self, other: Seq) -> bool {
        self.0 != other.0 && self.0.wrapping_sub(other.0) < 0x8000
    }

    /// Where `self` lies relative to `top`, the newest number seen ([`crate::wire::seq`]).
    #[inline]
    pub fn step_from(self, top: Seq) -> Step {
        seq::step(self, top)
    }
}

bare_number_fmt!(Seq);

/// An extended sequence number: the wire's 16 bits below a rollover counter that counts
/// their wraps (RFC 3550 A.1's extended highest sequence number; RFC 3711's packet index,
/// `2^16 * ROC + SEQ`, is the low 48 bits).
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(transparent)]
pub struct SeqNo(u64);

impl SeqNo {
    pub const fn new(v: u64) -> SeqNo {
        SeqNo(v)
    }

    pub const fn get(self) -> u64 {
        self.0
    }

    /// From a rollover counter and the wire's number.
    pub const fn from_parts(roc: u64, seq: Seq) -> SeqNo {
        SeqNo((roc << 16) | seq.0 as u64)
    }

    /// The rollover counter: how many times the 16-bit number wrapped.
    pub const fn roc(self) -> u64 {
        self.0 >> 16
    }

    /// The number the wire carries.
    pub const fn seq(self) -> Seq {
        Seq(self.0 as u16)
    }

    /// The following number (wrapping the 16 bits into the rollover counter).
    pub const fn next(self) -> SeqNo {
        SeqNo(self.0 + 1)
    }

    /// Whether `other` directly follows `self`.
    pub const fn is_next(self, other: SeqNo) -> bool {
        other.0 == self.0 + 1
    }

    /// How many numbers lie from `earlier` to `self` (0 if `earlier` is not earlier).
    pub const fn since(self, earlier: SeqNo) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

bare_number_fmt!(SeqNo);

/// An RTP timestamp as the wire carries it: 32 bits on the stream's clock, wrapping. The
/// clock is the stream's (its payload type's), not carried here: a span between two of them
/// becomes a [`MediaTime`] once the clock is named ([`RtpTs::since`]).
#[derive(Copy, Clone, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct RtpTs(u32);

impl RtpTs {
    pub const fn new(v: u32) -> RtpTs {
        RtpTs(v)
    }

    pub const fn get(self) -> u32 {
        self.0
    }

    /// `ticks` later (wrapping). For a span with its clock, [`RtpTs::advance`].
    #[inline]
    pub const fn add(self, ticks: u32) -> RtpTs {
        RtpTs(self.0.wrapping_add(ticks))
    }

    /// `ticks` earlier (wrapping).
    #[inline]
    pub const fn sub(self, ticks: u32) -> RtpTs {
        RtpTs(self.0.wrapping_sub(ticks))
    }

    /// Ticks from `earlier` to `self`, modulo 2^32 (an offset that maps one timeline onto
    /// another: `earlier.add(self.ticks_since(earlier)) == self`).
    #[inline]
    pub const fn ticks_since(self, earlier: RtpTs) -> u32 {
        self.0.wrapping_sub(earlier.0)
    }

    /// `self - other` in timestamp space: positive when `self` is later.
    #[inline]
    pub const fn delta(self, other: RtpTs) -> i32 {
        self.0.wrapping_sub(other.0) as i32
    }

    /// The signed span from `earlier` to `self` on `clock` (half the 32-bit space either way).
    #[inline]
    pub const fn since(self, earlier: RtpTs, clock: Clock) -> MediaTime {
        MediaTime::new(self.delta(earlier) as i64, clock)
    }

    /// `by` later, on the clock `by` is counted on (which must be this stream's).
    #[inline]
    pub const fn advance(self, by: MediaTime) -> RtpTs {
        // Truncating a negative span to 32 bits is the same step backwards, modulo 2^32.
        RtpTs(self.0.wrapping_add(by.ticks as u32))
    }
}

bare_number_fmt!(RtpTs);

/// An RTP clock rate in Hz (never zero).
#[derive(Copy, Clone, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct Clock(NonZeroU32);

impl Clock {
    /// Opus's RTP clock, whatever the audio's bandwidth (RFC 7587 §4.1).
    pub const OPUS: Clock = Clock::make(48_000);
    /// G.711's (RFC 3551 §4.5.14) and narrowband telephone events'.
    pub const G711: Clock = Clock::make(8_000);
    /// Wideband linear PCM (the bot link's L16 at 16 kHz).
    pub const WIDEBAND: Clock = Clock::make(16_000);

    const fn make(hz: u32) -> Clock {
        match NonZeroU32::new(hz) {
            Some(hz) => Clock(hz),
            None => panic!("a clock constant is zero"),
        }
    }

    /// `None` for 0 Hz.
    pub const fn new(hz: u32) -> Option<Clock> {
        match NonZeroU32::new(hz) {
            Some(hz) => Some(Clock(hz)),
            None => None,
        }
    }

    /// `hz`, or 1 Hz for 0 (a clock rate from outside that was not checked: arithmetic on
    /// it must not divide by zero).
    pub const fn at_least_1(hz: u32) -> Clock {
        match NonZeroU32::new(hz) {
            Some(hz) => Clock(hz),
            None => Clock(NonZeroU32::MIN),
        }
    }

    pub const fn hz(self) -> u32 {
        self.0.get()
    }

    /// `d` in whole ticks of this clock, modulo 2^32: an RTP timestamp offset (the arrival
    /// stamps of RFC 3550 A.8's jitter). The per-packet form of [`MediaTime::from_duration`].
    #[inline]
    pub const fn rtp_ticks(self, d: Duration) -> u32 {
        ((d.as_micros() as u64).saturating_mul(self.0.get() as u64) / 1_000_000) as u32
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} Hz", self.0)
    }
}

/// A span of media time counted in ticks of a named clock: 960 ticks of [`Clock::OPUS`] and
/// 160 of [`Clock::G711`] are both 20 ms, and only [`MediaTime::rescale`] turns one into the
/// other. Negative spans are allowed (a reordered packet is behind its predecessor).
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub struct MediaTime {
    ticks: i64,
    clock: Clock,
}

impl MediaTime {
    pub const fn new(ticks: i64, clock: Clock) -> MediaTime {
        MediaTime { ticks, clock }
    }

    /// `d` on `clock`, rounded down to whole ticks (saturating at 2^64 µs·Hz: 12 years at
    /// 48 kHz).
    #[inline]
    pub const fn from_duration(d: Duration, clock: Clock) -> MediaTime {
        // 64-bit arithmetic: the per-packet path must not pay a 128-bit division.
        let us = d.as_micros();
        let us = if us > u64::MAX as u128 {
            u64::MAX
        } else {
            us as u64
        };
        let ticks = us.saturating_mul(clock.hz() as u64) / 1_000_000;
        MediaTime::new(
            if ticks > i64::MAX as u64 {
                i64::MAX
            } else {
                ticks as i64
            },
            clock,
        )
    }

    pub const fn ticks(self) -> i64 {
        self.ticks
    }

    pub const fn clock(self) -> Clock {
        self.clock
    }

    /// The ticks as a 32-bit RTP span (wrapping: modulo 2^32, as timestamps count).
    pub const fn wire_ticks(self) -> u32 {
        self.ticks as u32
    }

    /// The same span on `to`, rounded toward minus infinity (so a reordered packet's negative
    /// span maps behind, and spacing stays exact: 960 at 48 kHz is always 160 at 8 kHz).
    #[inline]
    pub const fn rescale(self, to: Clock) -> MediaTime {
        if to.hz() == self.clock.hz() {
            return self;
        }
        // 64-bit when the product fits (any span a stream uses), else 128-bit.
        if let Some(product) = self.ticks.checked_mul(to.hz() as i64) {
            return MediaTime::new(product.div_euclid(self.clock.hz() as i64), to);
        }
        let scaled = (self.ticks as i128 * to.hz() as i128).div_euclid(self.clock.hz() as i128);
        MediaTime::new(
            if scaled > i64::MAX as i128 {
                i64::MAX
            } else if scaled < i64::MIN as i128 {
                i64::MIN
            } else {
                scaled as i64
            },
            to,
        )
    }

    /// The larger of two spans on the same clock.
    pub const fn max(self, other: MediaTime) -> MediaTime {
        debug_assert!(self.clock.hz() == other.clock.hz());
        if other.ticks > self.ticks {
            other
        } else {
            self
        }
    }
}

/// Random initial values (RFC 3550 §5.1: the first sequence number and timestamp, and the
/// SSRC, should be random): `rand::random::<Seq>()` and the like.
macro_rules! random_number {
    ($t:ident, $raw:ty) => {
        impl rand::distr::Distribution<$t> for rand::distr::StandardUniform {
            fn sample<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> $t {
                $t(rng.random::<$raw>())
            }
        }
    };
}

random_number!(Ssrc, u32);
random_number!(Seq, u16);
random_number!(RtpTs, u32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_arithmetic_wraps() {
        let top = Seq::new(65535);
        assert_eq!(top.next(), Seq::new(0));
        assert_eq!(Seq::new(1).since(top), 2);
        assert_eq!(top.add(Seq::new(1).since(top)), Seq::new(1));
        assert_eq!(Seq::new(1).delta(top), 2);
        assert_eq!(top.delta(Seq::new(1)), -2);
        assert!(Seq::new(1).is_newer_than(top) && !top.is_newer_than(Seq::new(1)));
        assert!(!top.is_newer_than(top));
        assert_eq!(Seq::new(1).step_from(top), Step::Ahead(2));
        assert_eq!(Seq::new(0).sub(1), top);
    }

    #[test]
    fn extended_seq_carries_the_rollover_counter() {
        let s = SeqNo::from_parts(3, Seq::new(65535));
        assert_eq!((s.roc(), s.seq()), (3, Seq::new(65535)));
        let n = s.next();
        assert_eq!((n.roc(), n.seq()), (4, Seq::new(0)));
        assert!(s.is_next(n) && !n.is_next(s));
        assert_eq!(n.since(s), 1);
        assert_eq!(s.since(n), 0);
        assert_eq!(SeqNo::new(0x1_0005).get(), (1 << 16) + 5);
    }

    #[test]
    fn timestamps_wrap_and_spans_carry_their_clock() {
        let late = RtpTs::new(959);
        let early = RtpTs::new(u32::MAX - 960);
        assert_eq!(late.delta(early), 1920);
        assert_eq!(early.delta(late), -1920);
        assert_eq!(late.ticks_since(early), 1920);
        assert_eq!(early.add(late.ticks_since(early)), late);
        let span = late.since(early, Clock::OPUS);
        assert_eq!((span.ticks(), span.clock()), (1920, Clock::OPUS));
        assert_eq!(early.advance(span), late);
        // A negative span steps back across the wrap.
        assert_eq!(late.advance(early.since(late, Clock::OPUS)), early);
        assert_eq!(late.sub(1920), early);
    }

    #[test]
    fn rescale_is_exact_for_frames_and_floors_otherwise() {
        let frame = MediaTime::new(960, Clock::OPUS);
        assert_eq!(frame.rescale(Clock::G711), MediaTime::new(160, Clock::G711));
        assert_eq!(
            frame.rescale(Clock::G711).rescale(Clock::OPUS),
            MediaTime::new(960, Clock::OPUS)
        );
        assert_eq!(frame.rescale(Clock::OPUS), frame);
        // Past 64-bit products: 128-bit, same rounding.
        let huge = MediaTime::new(i64::MAX / 2, Clock::OPUS);
        assert_eq!(huge.rescale(Clock::G711).ticks(), i64::MAX / 2 / 6);
        assert_eq!(
            MediaTime::new(i64::MIN / 2, Clock::G711)
                .rescale(Clock::OPUS)
                .ticks(),
            i64::MIN
        );
        // Behind: rounded toward minus infinity, so it stays behind.
        assert_eq!(
            MediaTime::new(-1, Clock::OPUS).rescale(Clock::G711).ticks(),
            -1
        );
        assert_eq!(
            MediaTime::new(5, Clock::OPUS).rescale(Clock::G711).ticks(),
            0
        );
        // A rescaled span advances a wrapping timestamp exactly.
        let at8k = RtpTs::new(u32::MAX - 100);
        assert_eq!(
            at8k.advance(MediaTime::new(48_000, Clock::OPUS).rescale(Clock::G711)),
            RtpTs::new(7_899)
        );
        assert_eq!(
            at8k.advance(MediaTime::new(-960, Clock::OPUS).rescale(Clock::G711)),
            RtpTs::new(u32::MAX - 260)
        );
    }

    #[test]
    fn durations_become_ticks_of_the_named_clock() {
        let d = Duration::from_millis(20);
        assert_eq!(MediaTime::from_duration(d, Clock::OPUS).ticks(), 960);
        assert_eq!(MediaTime::from_duration(d, Clock::G711).ticks(), 160);
        assert_eq!(Clock::OPUS.rtp_ticks(d), 960);
        // Modulo 2^32: two days at 48 kHz wrap once.
        let two_days = Duration::from_secs(172_800);
        assert_eq!(
            Clock::OPUS.rtp_ticks(two_days),
            (172_800u64 * 48_000 - (1 << 32)) as u32
        );
        assert_eq!(
            MediaTime::from_duration(Duration::MAX, Clock::OPUS).ticks(),
            (u64::MAX / 1_000_000) as i64
        );
        assert_eq!(Clock::new(0), None);
        assert_eq!(Clock::at_least_1(0).hz(), 1);
        assert_eq!(
            MediaTime::new(3, Clock::OPUS).max(MediaTime::new(1, Clock::OPUS)),
            MediaTime::new(3, Clock::OPUS)
        );
    }

    #[test]
    fn numbers_print_bare() {
        assert_eq!(format!("{:?} {}", Ssrc::new(7), Ssrc::new(7)), "7 7");
        assert_eq!(format!("{:?}", Seq::new(9)), "9");
        assert_eq!(format!("{:?}", Pt::new(111)), "111");
    }
}
