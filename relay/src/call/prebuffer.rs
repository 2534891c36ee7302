//! Holds internal-leg media that arrives before the WhatsApp leg may carry it (ICE/DTLS not
//! done yet, or the gate still closed), so an IVR that starts early is not clipped.
//!
//! Bounded in packets and bytes per packet; when full, the oldest packet is dropped (the start
//! of a greeting matters less than keeping latency bounded). Storage is allocated the first
//! time a packet is held and released once the backlog drains, so calls whose internal leg
//! starts after the gate cost nothing. Played out by the call at an accelerated pace (see
//! `Call::drain_prebuffer`), which is how the added latency returns to normal.

use std::time::Instant;

/// Largest RTP packet the prebuffer keeps (Opus at Meta's bitrates is 60-200 bytes).
pub const SLOT_BYTES: usize = 512;

#[derive(Debug)]
pub struct Prebuffer {
    capacity: usize,
    slots: Vec<[u8; SLOT_BYTES]>,
    lens: Vec<u16>,
    arrived: Vec<Option<Instant>>,
    head: usize,
    len: usize,
    pub dropped_full: u64,
    pub dropped_too_big: u64,
}

impl Prebuffer {
    pub fn new(capacity: usize) -> Self {
        Prebuffer {
            capacity,
            slots: Vec::new(),
            lens: Vec::new(),
            arrived: Vec::new(),
            head: 0,
            len: 0,
            dropped_full: 0,
            dropped_too_big: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Keep a copy of `pkt`. Allocates the ring on first use (once per call, not per packet).
    pub fn push(&mut self, pkt: &[u8], now: Instant) {
        if self.capacity == 0 {
            self.dropped_full += 1;
            return;
        }
        if pkt.len() > SLOT_BYTES {
            self.dropped_too_big += 1;
            return;
        }
        if self.slots.is_empty() {
            self.slots = vec![[0u8; SLOT_BYTES]; self.capacity];
            self.lens = vec![0; self.capacity];
            self.arrived = vec![None; self.capacity];
        }
        if self.len == self.capacity {
            // Full: drop the oldest.
            self.head = (self.head + 1) % self.capacity;
            self.len -= 1;
            self.dropped_full += 1;
        }
        let idx = (self.head + self.len) % self.capacity;
        self.slots[idx][..pkt.len()].copy_from_slice(pkt);
        self.lens[idx] = pkt.len() as u16;
        self.arrived[idx] = Some(now);
        self.len += 1;
    }

    /// Copy the oldest packet into `out` and remove it. Returns its length and arrival time.
    pub fn pop_into(&mut self, out: &mut [u8]) -> Option<(usize, Instant)> {
        if self.len == 0 {
            return None;
        }
        let idx = self.head;
        let n = self.lens[idx] as usize;
        let at = self.arrived[idx]?;
        out.get_mut(..n)?.copy_from_slice(&self.slots[idx][..n]);
        self.head = (self.head + 1) % self.capacity;
        self.len -= 1;
        if self.len == 0 {
            self.release();
        }
        Some((n, at))
    }

    /// Arrival time of the oldest held packet (how much latency the backlog adds).
    pub fn oldest(&self) -> Option<Instant> {
        if self.len == 0 {
            None
        } else {
            self.arrived[self.head]
        }
    }

    fn release(&mut self) {
        self.slots = Vec::new();
        self.lens = Vec::new();
        self.arrived = Vec::new();
        self.head = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_bounded_drops_oldest() {
        let now = Instant::now();
        let mut p = Prebuffer::new(3);
        for i in 0..5u8 {
            p.push(&[i; 20], now);
        }
        assert_eq!(p.len(), 3);
        assert_eq!(p.dropped_full, 2);
        let mut buf = [0u8; 64];
        let mut got = vec![];
        while let Some((n, _)) = p.pop_into(&mut buf) {
            got.push(buf[0]);
            assert_eq!(n, 20);
        }
        assert_eq!(got, vec![2, 3, 4]);
        assert!(p.slots.is_empty(), "storage released after draining");
    }

    #[test]
    fn oversize_is_counted_not_stored() {
        let mut p = Prebuffer::new(4);
        p.push(&[0u8; SLOT_BYTES + 1], Instant::now());
        assert!(p.is_empty());
        assert_eq!(p.dropped_too_big, 1);
    }
}
