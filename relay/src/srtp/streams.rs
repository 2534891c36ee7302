//! Per-SSRC state in a fixed table: no allocation, bounded memory, LRU replacement.
//!
//! A leg normally carries one SSRC per direction, but a peer may change SSRC (or send RTX or
//! several streams), so a handful are tracked. When a ninth SSRC appears the least recently used
//! entry is forgotten; if that SSRC comes back it starts afresh (ROC guessed 0, empty window).
//! Entries are only created or updated by [`StreamTable::commit`], which callers reach after a
//! packet authenticated, so forged packets can neither evict real streams nor move windows.

use super::replay::ReplayWindow;

/// SSRCs tracked per context and direction.
pub(crate) const SLOTS: usize = 8;

#[derive(Clone, Debug)]
struct Slot {
    ssrc: u32,
    /// 0 = empty; otherwise the table clock at the last commit (for LRU).
    last_used: u64,
    window: ReplayWindow,
}

#[derive(Clone, Debug)]
pub(crate) struct StreamTable {
    slots: [Slot; SLOTS],
    clock: u64,
}

impl Default for StreamTable {
    fn default() -> Self {
        let empty = Slot {
            ssrc: 0,
            last_used: 0,
            window: ReplayWindow::starting_at(0),
        };
        StreamTable {
            slots: std::array::from_fn(|_| empty.clone()),
            clock: 0,
        }
    }
}

impl StreamTable {
    /// The replay window (highest index and history) of `ssrc`, if it is tracked.
    pub(crate) fn get(&self, ssrc: u32) -> Option<&ReplayWindow> {
        self.slots
            .iter()
            .find(|s| s.last_used != 0 && s.ssrc == ssrc)
            .map(|s| &s.window)
    }

    /// Records `index` as accepted for `ssrc`, taking the least recently used slot for a new SSRC.
    pub(crate) fn commit(&mut self, ssrc: u32, index: u64) {
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
        let mut t = StreamTable::default();
        for ssrc in 1..=SLOTS as u32 {
            t.commit(ssrc, 100);
        }
        // Touch SSRC 1 so SSRC 2 becomes the least recently used.
        t.commit(1, 101);
        t.commit(99, 7);
        assert!(t.get(2).is_none());
        assert_eq!(t.get(1).map(ReplayWindow::top), Some(101));
        assert_eq!(t.get(99).map(ReplayWindow::top), Some(7));
        for ssrc in 3..=SLOTS as u32 {
            assert!(t.get(ssrc).is_some(), "ssrc {ssrc} kept");
        }
    }

    #[test]
    fn ssrc_zero_is_a_real_ssrc() {
        let mut t = StreamTable::default();
        assert!(t.get(0).is_none());
        t.commit(0, 5);
        assert_eq!(t.get(0).map(ReplayWindow::top), Some(5));
    }
}
