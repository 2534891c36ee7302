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

use super::rtp::Seq;

/// `seq` relative to `top`, the newest number seen.
#[inline]
pub fn step(seq: Seq, top: Seq) -> Step {
    let ahead = seq.since(top);
    let behind = top.since(seq);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_across_the_wrap() {
        let step = |seq: u16, top: u16| step(Seq::new(seq), Seq::new(top));
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
}
