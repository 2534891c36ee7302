//! The queue between one producing thread (a shard) and the disk writer: a single-producer,
//! single-consumer ring of 64-bit words holding packets back to back (a header of
//! [`HEADER_WORDS`] words, then the payload).
//!
//! Why not a pool of slots and two channels (what it replaced): each packet cost the shard a
//! free-list pop and a queue push (two atomic read-modify-writes on lines the writer was
//! touching at the same time), and the writer the same again, with every slot a separate heap
//! block (a cache miss per packet on each side). Here the shard writes the packet into the next
//! words with plain stores and publishes it by moving its `head` (a plain store on x86, on a
//! line only it writes); the writer takes everything published since its last pass in one go
//! and hands the space back by moving `tail` once per packet read. Neither side waits for the
//! other: a full ring is a counted drop on the shard.
//!
//! The words are atomics (relaxed loads and stores compile to plain moves), so there is no
//! `unsafe` here and no data race even if the ring were misused by two producers; the
//! single-producer rule is kept by construction (one ring per producing thread, see
//! `RecorderLink::push`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::wire::rtp::{RtpTs, Ssrc};

use super::{Direction, MAX_PAYLOAD};

/// Words before a packet's payload: recording id, clock, SSRC + timestamp, length + direction.
pub const HEADER_WORDS: usize = 4;

/// One cache line's worth of padding between the producer's and the consumer's indices.
#[repr(align(128))]
struct Line<T>(T);

/// The producer's side: what it has published, and its last view of the consumer's `tail`
/// (read again only when the ring looks full).
struct ProducerSide {
    head: AtomicUsize,
    tail_seen: AtomicUsize,
}

pub struct Ring {
    words: Box<[AtomicU64]>,
    mask: usize,
    producer: Line<ProducerSide>,
    /// Words the consumer has finished with.
    tail: Line<AtomicUsize>,
}

/// A packet read back from the ring; the payload was copied into the reader's buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Packet {
    pub recording: u64,
    pub direction: Direction,
    pub ssrc: Ssrc,
    pub ts: RtpTs,
    /// Arrival, in 48 kHz samples since the recording started.
    pub clock: u64,
    pub len: usize,
}

impl Ring {
    /// A ring of at least `words` 64-bit words (rounded up to a power of two, at least enough
    /// for one largest packet). Allocates; setup only.
    pub fn new(words: usize) -> Ring {
        let n = words
            .max(HEADER_WORDS + MAX_PAYLOAD.div_ceil(8))
            .next_power_of_two();
        Ring {
            words: (0..n).map(|_| AtomicU64::new(0)).collect(),
            mask: n - 1,
            producer: Line(ProducerSide {
                head: AtomicUsize::new(0),
                tail_seen: AtomicUsize::new(0),
            }),
            tail: Line(AtomicUsize::new(0)),
        }
    }

    /// Capacity in bytes (for reports).
    pub fn bytes(&self) -> usize {
        self.words.len() * 8
    }

    #[inline]
    fn put(&self, at: usize, v: u64) {
        if let Some(w) = self.words.get(at & self.mask) {
            w.store(v, Ordering::Relaxed);
        }
    }

    #[inline]
    fn get(&self, at: usize) -> u64 {
        self.words
            .get(at & self.mask)
            .map_or(0, |w| w.load(Ordering::Relaxed))
    }

    /// Producer: append one packet; false (nothing written) if it does not fit. No
    /// allocation, no lock, no read-modify-write. `payload` is at most [`MAX_PAYLOAD`] bytes
    /// (the caller checks).
    #[inline]
    pub fn push(
        &self,
        recording: u64,
        direction: Direction,
        ssrc: Ssrc,
        ts: RtpTs,
        clock: u64,
        payload: &[u8],
    ) -> bool {
        let need = HEADER_WORDS + payload.len().div_ceil(8);
        let p = &self.producer.0;
        let head = p.head.load(Ordering::Relaxed);
        let cap = self.words.len();
        if head.wrapping_sub(p.tail_seen.load(Ordering::Relaxed)) + need > cap {
            // Looks full: see how far the writer has got.
            let tail = self.tail.0.load(Ordering::Acquire);
            p.tail_seen.store(tail, Ordering::Relaxed);
            if head.wrapping_sub(tail) + need > cap {
                return false;
            }
        }
        let header = [
            recording,
            clock,
            u64::from(ssrc.get()) | u64::from(ts.get()) << 32,
            payload.len() as u64 | (direction as u64) << 16,
        ];
        let start = head & self.mask;
        let mut chunks = payload.chunks_exact(8);
        let rest = chunks.remainder();
        let word = |c: &[u8]| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(w)
        };
        if let Some(dst) = self.words.get(start..start + need) {
            // The usual case: the packet's words are contiguous (no bounds check per word).
            let (h, body) = dst.split_at(HEADER_WORDS);
            for (d, v) in h.iter().zip(header) {
                d.store(v, Ordering::Relaxed);
            }
            let mut body = body.iter();
            // Chunks first: zip stops on them without taking a word from `body`.
            for (c, d) in (&mut chunks).zip(body.by_ref()) {
                d.store(word(c), Ordering::Relaxed);
            }
            if let Some(d) = body.next() {
                d.store(word(rest), Ordering::Relaxed);
            }
        } else {
            // It wraps: word by word.
            for (i, v) in header.into_iter().enumerate() {
                self.put(head.wrapping_add(i), v);
            }
            let mut at = head.wrapping_add(HEADER_WORDS);
            for c in &mut chunks {
                self.put(at, word(c));
                at = at.wrapping_add(1);
            }
            if !rest.is_empty() {
                self.put(at, word(rest));
            }
        }
        // Publish: the words above happen-before the consumer's Acquire load of `head`.
        p.head.store(head.wrapping_add(need), Ordering::Release);
        true
    }

    /// Consumer: everything published so far, as a cursor. Read it to the end (or drop it
    /// early): each packet read gives its space back.
    pub fn drain(&self) -> Drain<'_> {
        Drain {
            ring: self,
            at: self.tail.0.load(Ordering::Relaxed),
            end: self.producer.0.head.load(Ordering::Acquire),
        }
    }
}

/// Packets published when [`Ring::drain`] was called.
pub struct Drain<'a> {
    ring: &'a Ring,
    at: usize,
    end: usize,
}

impl Drain<'_> {
    pub fn is_empty(&self) -> bool {
        self.at == self.end
    }

    /// The next packet, its payload copied into `buf` (at most `buf.len()` bytes of it: give
    /// [`MAX_PAYLOAD`]); `None` at the end.
    pub fn next_into(&mut self, buf: &mut [u8]) -> Option<Packet> {
        if self.at == self.end {
            return None;
        }
        let r = self.ring;
        let at = self.at;
        let recording = r.get(at);
        let clock = r.get(at.wrapping_add(1));
        let w2 = r.get(at.wrapping_add(2));
        let w3 = r.get(at.wrapping_add(3));
        // The producer never writes more than MAX_PAYLOAD; clamp anyway.
        let len = ((w3 & 0xFFFF) as usize).min(MAX_PAYLOAD);
        let direction = if (w3 >> 16) & 0xFF == Direction::Agent as u64 {
            Direction::Agent
        } else {
            Direction::Consumer
        };
        let from = at.wrapping_add(HEADER_WORDS);
        let copied = len.min(buf.len());
        // Whole words with fixed-size copies (a move each), then the tail.
        let mut chunks = buf[..copied].chunks_exact_mut(8);
        let mut word = from;
        for chunk in &mut chunks {
            chunk.copy_from_slice(&r.get(word).to_le_bytes());
            word = word.wrapping_add(1);
        }
        let tail = chunks.into_remainder();
        if !tail.is_empty() {
            let w = r.get(word).to_le_bytes();
            tail.copy_from_slice(&w[..tail.len()]);
        }
        self.at = from.wrapping_add(len.div_ceil(8));
        // The words are read: the producer may overwrite them.
        r.tail.0.store(self.at, Ordering::Release);
        Some(Packet {
            recording,
            direction,
            ssrc: Ssrc::new(w2 as u32),
            ts: RtpTs::new((w2 >> 32) as u32),
            clock,
            len: copied,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(r: &Ring, id: u64, payload: &[u8]) -> bool {
        r.push(
            id,
            Direction::Agent,
            Ssrc::new(7),
            RtpTs::new(id as u32 * 960),
            id * 10,
            payload,
        )
    }

    #[test]
    fn packets_come_out_as_they_went_in_across_the_wrap() {
        let r = Ring::new(256);
        let mut buf = [0u8; MAX_PAYLOAD];
        let mut next_in = 0u64;
        let mut next_out = 0u64;
        for round in 0..50 {
            // Fill until full, with payloads of every length modulo 8.
            while push(
                &r,
                next_in,
                &vec![next_in as u8; (next_in % 23) as usize * 3],
            ) {
                next_in += 1;
            }
            let mut d = r.drain();
            // Read some, not all: the rest stays for the next round.
            let take = if round % 2 == 0 { 3 } else { usize::MAX };
            for _ in 0..take {
                let Some(p) = d.next_into(&mut buf) else {
                    break;
                };
                assert_eq!(p.recording, next_out);
                assert_eq!(p.len, (next_out % 23) as usize * 3);
                assert!(buf[..p.len].iter().all(|&b| b == next_out as u8));
                assert_eq!(
                    (p.ssrc.get(), p.ts.get(), p.clock),
                    (7, next_out as u32 * 960, next_out * 10)
                );
                assert_eq!(p.direction, Direction::Agent);
                next_out += 1;
            }
        }
        assert!(next_out > 100, "{next_out}");
    }

    #[test]
    fn a_full_ring_refuses_without_writing_and_a_drain_frees_it() {
        let r = Ring::new(64);
        assert_eq!(r.bytes(), 2048); // rounded up to hold one largest packet
        let mut n = 0;
        while push(&r, n, &[1; 100]) {
            n += 1;
        }
        // 2048 bytes / (32 + 104) per packet.
        assert_eq!(n, 15);
        assert!(!push(&r, 99, &[1; 100]));
        assert!(!push(&r, 99, &[]), "255 of 256 words are taken");
        let mut buf = [0u8; MAX_PAYLOAD];
        assert_eq!(r.drain().next_into(&mut buf).map(|p| p.recording), Some(0));
        assert!(
            push(&r, 100, &[1; 100]),
            "the space of the packet read is back"
        );
        let mut d = r.drain();
        let ids: Vec<u64> =
            std::iter::from_fn(|| d.next_into(&mut buf).map(|p| p.recording)).collect();
        assert_eq!(ids.len(), 15);
        assert_eq!(ids.last(), Some(&100));
    }

    #[test]
    fn largest_payload_round_trips() {
        let r = Ring::new(0);
        let payload: Vec<u8> = (0..MAX_PAYLOAD).map(|i| i as u8).collect();
        assert!(r.push(
            1,
            Direction::Consumer,
            Ssrc::new(1),
            RtpTs::new(2),
            3,
            &payload
        ));
        let mut buf = [0u8; MAX_PAYLOAD];
        let p = r.drain().next_into(&mut buf).unwrap();
        assert_eq!(p.direction, Direction::Consumer);
        assert_eq!(&buf[..p.len], &payload[..]);
    }
}
