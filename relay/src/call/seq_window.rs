//! Replay detection for RTP that arrives without SRTP (a plain-RTP internal leg).
//!
//! SRTP legs have the replay window of RFC 3711 §3.3.2 in the SRTP context. A plain-RTP leg
//! has none, and a replayed packet (an old packet re-sent, by a broken media server or by
//! anyone who can reach the internal port from the peer's address) would be rewritten onto an
//! outbound sequence number already used, which the WhatsApp leg's SRTP then refuses. So the
//! leg keeps the same kind of window over the source's sequence numbers: a packet already seen,
//! or older than the window, is a replay and is dropped before anything counts it.
//!
//! The window follows the relay's one idea of a restart ([`crate::wire::seq`]): a new SSRC, or
//! a [`Step::Jump`], starts it afresh, so a media server that restarts its numbering is never
//! mistaken for a replayer.

use crate::wire::rtp::{Seq, Ssrc};
use crate::wire::seq::Step;

/// Packets behind the newest one that can still be told apart from replays (2.56 s at 20 ms).
const WINDOW: u16 = 128;

/// Why a packet was refused.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Replay {
    /// This sequence number was already received.
    Duplicate,
    /// Older than the window (but not far enough to be a restart): cannot be checked.
    TooOld,
}

#[derive(Clone, Debug, Default)]
pub struct SeqWindow {
    /// The source's SSRC and the newest sequence number received from it.
    top: Option<(Ssrc, Seq)>,
    /// Bit `i` set: `top - i` was received.
    seen: u128,
}

impl SeqWindow {
    /// Accept `seq` from `ssrc` once: `Ok` records it, a repeat or a too-old packet is refused.
    pub fn check_and_note(&mut self, ssrc: Ssrc, seq: Seq) -> Result<(), Replay> {
        let Some((top_ssrc, top)) = self.top.filter(|(s, _)| *s == ssrc) else {
            return self.restart(ssrc, seq);
        };
        match seq.step_from(top) {
            Step::Same => Err(Replay::Duplicate),
            Step::Jump => self.restart(ssrc, seq),
            Step::Ahead(ahead) => {
                self.seen = if ahead >= WINDOW {
                    0
                } else {
                    self.seen << ahead
                } | 1;
                self.top = Some((top_ssrc, seq));
                Ok(())
            }
            Step::Behind(behind) if behind >= WINDOW => Err(Replay::TooOld),
            Step::Behind(behind) => {
                let bit = 1u128 << behind;
                if self.seen & bit != 0 {
                    return Err(Replay::Duplicate);
                }
                self.seen |= bit;
                Ok(())
            }
        }
    }

    fn restart(&mut self, ssrc: Ssrc, seq: Seq) -> Result<(), Replay> {
        self.top = Some((ssrc, seq));
        self.seen = 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::seq::MAX_DROPOUT;

    /// [`SeqWindow::check_and_note`] with the wire's numbers.
    fn note(w: &mut SeqWindow, ssrc: u32, seq: u16) -> Result<(), Replay> {
        w.check_and_note(Ssrc::new(ssrc), Seq::new(seq))
    }

    #[test]
    fn repeats_are_refused_and_reordering_is_not() {
        let mut w = SeqWindow::default();
        assert_eq!(note(&mut w, 1, 65534), Ok(()));
        assert_eq!(
            note(&mut w, 1, 1),
            Ok(()),
            "across the wrap, 65535 and 0 lost"
        );
        assert_eq!(note(&mut w, 1, 65535), Ok(()), "late, in the window");
        assert_eq!(note(&mut w, 1, 65535), Err(Replay::Duplicate));
        assert_eq!(note(&mut w, 1, 1), Err(Replay::Duplicate));
        assert_eq!(note(&mut w, 1, 0), Ok(()));
        assert_eq!(note(&mut w, 1, 65534), Err(Replay::Duplicate));
    }

    #[test]
    fn old_packets_are_too_old_and_restarts_start_afresh() {
        let mut w = SeqWindow::default();
        for seq in 1000..=1300u16 {
            assert_eq!(note(&mut w, 7, seq), Ok(()));
        }
        assert_eq!(note(&mut w, 7, 1100), Err(Replay::TooOld));
        assert_eq!(note(&mut w, 7, 1200), Err(Replay::Duplicate));
        // A new SSRC, or a jump, is a new stream.
        assert_eq!(note(&mut w, 8, 1200), Ok(()));
        assert_eq!(note(&mut w, 8, 1200 + MAX_DROPOUT), Ok(()));
        assert_eq!(note(&mut w, 8, 5), Ok(()), "far behind: a restart");
        assert_eq!(note(&mut w, 8, 5), Err(Replay::Duplicate));
    }
}
