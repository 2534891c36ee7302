//! Replay protection (RFC 3711 §3.3.2) and SRTP packet index estimation (RFC 3711 §3.3.1,
//! Appendix A).

use super::SrtpError;
use crate::wire::rtp::{Seq, SeqNo};

/// Packets behind the highest accepted index that can still be told apart from replays.
pub(crate) const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;

/// The highest accepted index and which of the `WINDOW` indices at or below it were accepted.
///
/// The bitmap is circular: index i lives at bit i mod `WINDOW`. Advancing the top by one (the
/// common case) clears one bit instead of shifting the whole map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReplayWindow {
    top: u64,
    bits: [u64; WORDS],
}

impl ReplayWindow {
    /// A window whose only accepted index is `first`.
    pub(crate) fn starting_at(first: u64) -> Self {
        let mut w = ReplayWindow {
            top: first,
            bits: [0; WORDS],
        };
        w.set(first);
        w
    }

    /// The highest index accepted so far.
    pub(crate) fn top(&self) -> u64 {
        self.top
    }

    /// Whether `index` may be processed: newer than the top, or inside the window and unseen.
    /// Reads only; the caller commits with [`accept`](Self::accept) once the packet authenticates.
    pub(crate) fn check(&self, index: u64) -> Result<(), SrtpError> {
        let Some(age) = self.top.checked_sub(index) else {
            return Ok(());
        };
        if age >= WINDOW {
            return Err(SrtpError::TooOld);
        }
        let (word, bit) = Self::position(index);
        if self.bits[word] >> bit & 1 == 1 {
            return Err(SrtpError::Replayed);
        }
        Ok(())
    }

    /// Records `index` as received. Indices older than the window are ignored (never reached:
    /// `check` rejects them first).
    pub(crate) fn accept(&mut self, index: u64) {
        if index > self.top {
            // The slots of top+1..=index still hold indices a window ago: forget them.
            if index - self.top >= WINDOW {
                self.bits = [0; WORDS];
            } else {
                self.clear(self.top + 1, index);
            }
            self.top = index;
        } else if self.top - index >= WINDOW {
            return;
        }
        self.set(index);
    }

    fn position(index: u64) -> (usize, u32) {
        let slot = index % WINDOW;
        ((slot / 64) as usize, (slot % 64) as u32)
    }

    fn set(&mut self, index: u64) {
        let (word, bit) = Self::position(index);
        self.bits[word] |= 1 << bit;
    }

    /// Clears the slots of indices `from..=to` (fewer than `WINDOW` of them), a word at a time.
    fn clear(&mut self, from: u64, to: u64) {
        let mut i = from;
        while i <= to {
            let (word, bit) = Self::position(i);
            let span = (64 - u64::from(bit)).min(to - i + 1);
            let mask = if span == 64 {
                !0
            } else {
                ((1u64 << span) - 1) << bit
            };
            self.bits[word] &= !mask;
            i += span;
        }
    }
}

/// Guesses the 48-bit index (ROC || SEQ) of a packet with sequence number `seq`, given the highest
/// index seen so far for its SSRC (none for the first packet, whose ROC is taken to be 0).
///
/// RFC 3711 Appendix A picks the ROC among {ROC-1, ROC, ROC+1} that puts the index closest to the
/// highest one. Before the first wrap ROC-1 does not exist: the index is then just `seq`, as
/// libsrtp and webrtc-srtp do.
pub(crate) fn estimate_index(highest: Option<SeqNo>, seq: Seq) -> Result<SeqNo, SrtpError> {
    let Some(highest) = highest else {
        return Ok(SeqNo::from_parts(0, seq));
    };
    let roc = highest.roc();
    let s_l = highest.seq().get();
    let seq16 = seq.get();
    let v = if s_l < 0x8000 {
        if seq16 > s_l && seq16 - s_l > 0x8000 {
            roc.saturating_sub(1)
        } else {
            roc
        }
    } else if s_l - 0x8000 > seq16 {
        roc + 1
    } else {
        roc
    };
    if v > u64::from(u32::MAX) {
        return Err(SrtpError::KeyExhausted);
    }
    Ok(SeqNo::from_parts(v, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_accepts_new_rejects_duplicate_and_old() {
        let mut w = ReplayWindow::starting_at(5000);
        assert_eq!(w.check(5000), Err(SrtpError::Replayed));
        assert_eq!(w.check(5001), Ok(()));
        assert_eq!(w.check(4999), Ok(()));
        w.accept(4999);
        assert_eq!(w.check(4999), Err(SrtpError::Replayed));
        assert_eq!(w.check(5000 - 1023), Ok(()));
        assert_eq!(w.check(5000 - 1024), Err(SrtpError::TooOld));
        w.accept(6000);
        assert_eq!(w.top(), 6000);
        // 5000 and 4999 are 1000 and 1001 behind now: still remembered.
        assert_eq!(w.check(5000), Err(SrtpError::Replayed));
        assert_eq!(w.check(4999), Err(SrtpError::Replayed));
        assert_eq!(w.check(5001), Ok(()));
        w.accept(6024);
        // 5000 is now exactly 1024 behind: out of the window.
        assert_eq!(w.check(5000), Err(SrtpError::TooOld));
        assert_eq!(w.check(5001), Ok(()));
    }

    #[test]
    fn matches_a_naive_set_for_every_distance() {
        // Against a plain list of accepted indices, for shifts across word boundaries.
        for step in [1u64, 3, 63, 64, 65, 127, 128, 500, 1023, 1024, 5000] {
            let mut w = ReplayWindow::starting_at(10_000);
            let mut seen = vec![10_000u64];
            let mut idx = 10_000;
            for k in 0..40u64 {
                idx += step;
                let older = idx - (k * 37) % 900 - 1;
                for i in [idx, older] {
                    if w.check(i).is_ok() {
                        w.accept(i);
                        seen.push(i);
                    }
                }
                for probe in idx.saturating_sub(1100)..=idx + 2 {
                    let expect = if probe + WINDOW <= w.top() {
                        Err(SrtpError::TooOld)
                    } else if seen.contains(&probe) {
                        Err(SrtpError::Replayed)
                    } else {
                        Ok(())
                    };
                    assert_eq!(w.check(probe), expect, "step {step} probe {probe}");
                }
            }
        }
    }

    #[test]
    fn index_estimation_follows_wraps() {
        // On the wire's numbers: the highest index so far and the packet's 16-bit SEQ.
        let estimate_index = |highest: Option<u64>, seq: u16| {
            estimate_index(highest.map(SeqNo::new), Seq::new(seq)).map(SeqNo::get)
        };
        assert_eq!(estimate_index(None, 65000), Ok(65000));
        // Forward across the wrap: ROC + 1.
        assert_eq!(estimate_index(Some(65530), 3), Ok(0x1_0003));
        // A late packet from before the wrap: ROC - 1.
        assert_eq!(estimate_index(Some(0x1_0003), 65530), Ok(65530));
        // Ordinary progress and reordering within a ROC.
        assert_eq!(estimate_index(Some(0x2_1000), 0x1001), Ok(0x2_1001));
        assert_eq!(estimate_index(Some(0x2_1000), 0x0fff), Ok(0x2_0fff));
        // Before any wrap there is no ROC - 1: a far jump ahead is taken as is.
        assert_eq!(estimate_index(Some(10), 40000), Ok(40000));
        // The 48-bit index space ends.
        assert_eq!(
            estimate_index(Some(0xffff_ffff_fff0), 2),
            Err(SrtpError::KeyExhausted)
        );
    }
}
