//! Sequence-number space: one rule, for every part of the relay that must tell loss and
//! reordering from a source that restarted its numbering (RFC 3550 A.1's receiver statistics,
//! the outbound rewrite, the plain-RTP replay window).
//!
//! From the newest sequence number seen (`top`), a packet is:
//! - [`Step::Ahead`] by fewer than [`MAX_DROPOUT`] packets: in order, the numbers between it
//!   and `top` lost (so far);
//! - [`Step::Behind`] by fewer than [`MAX_MISORDER`] packets: late or a duplicate;
//! - [`Step::Jump`] otherwise: the source restarted (or a stranger's packet) — RFC 3550 A.1
//!   confirms it with the next sequential packet, the rewrite rebases on it.
//!
//! RFC 3550 suggests 3000 and 100. Behind, we take 1000 (20 s at 20 ms): the replay window
//! must not read a replayed old packet as a restart that resets it, and a stream that
//! reorders by more than two seconds is lost anyway.

/// A packet this far ahead of the newest, or further, is a jump.
pub const MAX_DROPOUT: u16 = 3000;
/// A packet this far behind the newest, or further, is a jump.
pub const MAX_MISORDER: u16 = 1000;

/// Where a sequence number lies relative to the newest one seen.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The same number again.
    Same,
    /// This many packets newer (1 = the next one).
    Ahead(u16),
    /// This many packets older.
    Behind(u16),
    /// Too far either way: a restart.
    Jump,
}

/// `seq` relative to `top`, the newest number seen.
pub fn step(seq: u16, top: u16) -> Step {
    let ahead = seq.wrapping_sub(top);
    let behind = top.wrapping_sub(seq);
    if ahead == 0 {
        Step::Same
    } else if ahead < MAX_DROPOUT {
        Step::Ahead(ahead)
    } else if behind < MAX_MISORDER {
        Step::Behind(behind)
    } else {
        Step::Jump
    }
}

/// `a - b` in sequence-number space: positive when `a` is newer than `b`.
pub fn seq_delta(a: u16, b: u16) -> i16 {
    a.wrapping_sub(b) as i16
}

/// `a` is newer than `b` in RFC 1982 serial arithmetic.
pub fn seq_newer(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

/// `a - b` in RTP timestamp space: positive when `a` is later than `b`.
pub fn ts_delta(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_across_the_wrap() {
        assert_eq!(step(5, 5), Step::Same);
        assert_eq!(step(1, 65535), Step::Ahead(2));
        assert_eq!(step(65535, 1), Step::Behind(2));
        assert_eq!(
            step(100 + MAX_DROPOUT - 1, 100),
            Step::Ahead(MAX_DROPOUT - 1)
        );
        assert_eq!(step(100 + MAX_DROPOUT, 100), Step::Jump);
        assert_eq!(
            step(100u16.wrapping_sub(MAX_MISORDER - 1), 100),
            Step::Behind(MAX_MISORDER - 1)
        );
        assert_eq!(step(100u16.wrapping_sub(MAX_MISORDER), 100), Step::Jump);
        assert_eq!(step(30_000, 0), Step::Jump);
    }

    #[test]
    fn deltas_and_order() {
        assert_eq!(seq_delta(1, 65535), 2);
        assert_eq!(seq_delta(65535, 1), -2);
        assert!(seq_newer(1, 65535) && !seq_newer(65535, 1) && !seq_newer(7, 7));
        assert_eq!(ts_delta(10, u32::MAX), 11);
    }
}
