//! Per-SSRC state in a fixed table: no allocation, bounded memory, LRU replacement.
//!
//! A leg normally carries one SSRC per direction, but a peer may change SSRC (after a transfer
//! or a re-INVITE on a media server) or briefly send two, so a few are tracked. When one more
//! SSRC than the table holds appears, the least recently used entry is forgotten; if that SSRC
//! comes back it starts afresh (ROC guessed 0, empty window).
//!
//! The table size is a parameter because it is most of a call's memory (each slot carries a
//! 1,024-packet replay window, ~150 bytes): RTP gets [`RTP_SLOTS`], RTCP (one report every few
//! seconds from the one sender) [`RTCP_SLOTS`].
//! Entries are only created or updated by [`StreamTable::commit`], which callers reach after a
//! packet authenticated, so forged packets can neither evict real streams nor move windows.

use super::replay::ReplayWindow;
use crate::wire::rtp::Ssrc;

/// RTP SSRCs tracked per context: the live stream, the one it replaced, and room for a brief
/// overlap of two more.
pub(crate) const RTP_SLOTS: usize = 4;
/// RTCP SSRCs tracked per context: SRTCP comes from the peer's one sender (an RTCP-only SSRC
/// too, for some stacks).
pub(crate) const RTCP_SLOTS: usize = 2;

#[derive(Clone, Debug)]
struct Slot {
    ssrc: Ssrc,
    /// 0 = empty; otherwise the table clock at the last commit (for LRU).
    last_used: u64,
    window: ReplayWindow,
}

#[derive(Clone, Debug)]
pub(crate) struct StreamTable<const SLOTS: usize> {
    slots: [Slot; SLOTS],
    clock: u64,
}

impl<const SLOTS: usize> Default for StreamTable<SLOTS> {
    fn default() -> Self {
        let empty = Slot {
            ssrc: Ssrc::default(),
            last_used: 0,
            window: ReplayWindow::starting_at(0),
        };
        StreamTable {
            slots: std::array::from_fn(|_| empty.clone()),
            clock: 0,
        }
    }
}

impl<const SLOTS: usize> StreamTable<SLOTS> {
    /// The replay window (highest index and history) of `ssrc`, if it is tracked.
    pub(crate) fn get(&self, ssrc: Ssrc) -> Option<&ReplayWindow> {
        self.slots
            .iter()
            .find(|s| s.last_used != 0 && s.ssrc == ssrc)
            .map(|s| &s.window)
    }

    /// Records `index` as accepted for `ssrc`, taking the least recently used slot for a new SSRC.
    pub(crate) fn commit(&mut self, ssrc: Ssrc, index: u64) {
        self.clock += 1;
        let clock = self.clock;
        if let Some(slot) = self
            .slots
            .iter_mut()
            .find(|s| s.last_used != 0 && s.ssrc == ssrc)
        {
            slot.window.accept(index);
            slot.last_used = clock;
            return;
        }
        // Empty slots have last_used 0, so they are taken before any live one is evicted.
        if let Some(slot) = self.slots.iter_mut().min_by_key(|s| s.last_used) {
            *slot = Slot {
                ssrc,
                last_used: clock,
                window: ReplayWindow::starting_at(index),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_up_to_slots_ssrcs_and_evicts_the_least_recent() {
        const SLOTS: usize = RTP_SLOTS;
        let mut t = StreamTable::<SLOTS>::default();
        for ssrc in 1..=SLOTS as u32 {
            t.commit(Ssrc::new(ssrc), 100);
        }
        // Touch SSRC 1 so SSRC 2 becomes the least recently used.
        t.commit(Ssrc::new(1), 101);
        t.commit(Ssrc::new(99), 7);
        assert!(t.get(Ssrc::new(2)).is_none());
        assert_eq!(t.get(Ssrc::new(1)).map(ReplayWindow::top), Some(101));
        assert_eq!(t.get(Ssrc::new(99)).map(ReplayWindow::top), Some(7));
        for ssrc in 3..=SLOTS as u32 {
            assert!(t.get(Ssrc::new(ssrc)).is_some(), "ssrc {ssrc} kept");
        }
    }

    #[test]
    fn ssrc_zero_is_a_real_ssrc() {
        let mut t = StreamTable::<RTCP_SLOTS>::default();
        assert!(t.get(Ssrc::new(0)).is_none());
        t.commit(Ssrc::new(0), 5);
        assert_eq!(t.get(Ssrc::new(0)).map(ReplayWindow::top), Some(5));
    }
}
