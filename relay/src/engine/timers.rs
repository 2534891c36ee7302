//! The shard's deadline heap: which calls are due, at a cost per due call, not per call.
//!
//! Each call has at most one *armed* deadline, the time of the newest heap entry pushed for it.
//! Entries are never removed from the middle of the heap; an entry is stale (skipped when it
//! surfaces) when its slot was reused (generation differs) or the slot has been re-armed to an
//! earlier time since (its armed time differs). A call whose deadline moves LATER keeps its
//! armed entry: it wakes early, finds nothing due, and is re-armed at its real deadline. So a
//! datagram that pushes a call's media timeout 30 s out costs nothing here, and the heap holds
//! about one entry per call plus the few left behind when a deadline moved earlier.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// One heap entry: `(deadline, slot, generation)`, ordered by deadline first.
type Entry = Reverse<(Instant, u32, u32)>;

#[derive(Default)]
pub(crate) struct TimerHeap {
    heap: BinaryHeap<Entry>,
}

impl TimerHeap {
    pub(crate) fn with_capacity(n: usize) -> Self {
        TimerHeap {
            heap: BinaryHeap::with_capacity(n),
        }
    }

    /// Make sure `slot` wakes no later than `deadline`. `armed` is the slot's armed time (what
    /// the last push for it said, `None` when it has no live entry); it is updated in place.
    pub(crate) fn arm(
        &mut self,
        armed: &mut Option<Instant>,
        slot: u32,
        generation: u32,
        deadline: Option<Instant>,
    ) {
        let Some(d) = deadline else { return };
        if armed.is_some_and(|a| a <= d) {
            // The live entry wakes us earlier (or on time); re-armed then.
            return;
        }
        *armed = Some(d);
        self.heap.push(Reverse((d, slot, generation)));
    }

    /// The earliest entry's time (possibly stale: waking for it is harmless).
    pub(crate) fn peek(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((d, _, _))| *d)
    }

    /// Pop the next entry due at or before `until`: `(deadline, slot, generation)`. The caller
    /// checks it against the slot (see the module doc) and re-arms the call.
    pub(crate) fn pop_due(&mut self, until: Instant) -> Option<(Instant, u32, u32)> {
        if self.peek()? > until {
            return None;
        }
        self.heap.pop().map(|Reverse(e)| e)
    }

    /// Entries held, stale ones included (for tests and the size bound).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn later_deadline_keeps_the_armed_entry_and_earlier_pushes_a_new_one() {
        let t0 = Instant::now();
        let mut h = TimerHeap::default();
        let mut armed = None;
        h.arm(&mut armed, 7, 1, Some(t0 + Duration::from_secs(30)));
        for i in 0..1000 {
            // A datagram per 20 ms moves the deadline later: no new entry.
            h.arm(
                &mut armed,
                7,
                1,
                Some(t0 + Duration::from_millis(30_000 + i * 20)),
            );
        }
        assert_eq!(h.len(), 1);
        h.arm(&mut armed, 7, 1, Some(t0 + Duration::from_secs(1)));
        assert_eq!(h.len(), 2);
        assert_eq!(armed, Some(t0 + Duration::from_secs(1)));
        assert_eq!(h.pop_due(t0), None);
        assert_eq!(
            h.pop_due(t0 + Duration::from_secs(40)),
            Some((t0 + Duration::from_secs(1), 7, 1))
        );
    }
}
