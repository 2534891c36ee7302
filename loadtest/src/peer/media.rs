//! Stamped Opus-like media: what a peer sends every 20 ms and how a receiver accounts for it.
//!
//! Payloads carry the e2e emulators' stamp ([`e2e::rtp::read_stamp`]): bytes 0..4 a counter
//! per stream starting at 0, bytes 4..12 the send time in µs since the Unix epoch. Both ends
//! run on one machine, so receive time minus send time is the one-way latency.

use std::time::{Duration, Instant};

use e2e::rtp::{PAYLOAD_STAMP_LEN, SrEcho, build_sender_report_echo, parse_rtp, read_stamp};

use crate::stats::DirTotals;

pub const PTIME: Duration = Duration::from_millis(20);
/// Opus at 48 kHz: 20 ms.
const TS_PER_FRAME: u32 = 960;
/// Room a packet needs: 12-byte header, up to 120 bytes of payload, SRTP tag.
pub const MAX_PACKET: usize = 12 + 120 + 16;
/// Sender reports about this often (RFC 3550 allows 5 s minimum).
const SR_INTERVAL: Duration = Duration::from_secs(5);
/// A stamp further than this from the receive time is not ours (garbage or a foreign
/// payload); counted as unstamped.
const STAMP_PLAUSIBLE_US: u64 = 3_600_000_000;

/// The sending side of one stream.
#[derive(Debug)]
pub struct MediaTx {
    pub ssrc: u32,
    pub pt: u8,
    seq: u16,
    ts: u32,
    counter: u32,
    rng: u32,
    marker: bool,
    packets: u32,
    octets: u32,
    next_sr: Option<Instant>,
    /// The relay's last SR, echoed (LSR/DLSR) in ours so the relay measures RTT.
    pub echo: SrEcho,
}

impl MediaTx {
    pub fn new(ssrc: u32, pt: u8) -> Self {
        MediaTx {
            ssrc,
            pt,
            seq: rand::random(),
            ts: rand::random(),
            counter: 0,
            rng: ssrc | 1,
            marker: true,
            packets: 0,
            octets: 0,
            next_sr: None,
            echo: SrEcho::default(),
        }
    }

    /// Packets sent so far (the next counter).
    pub fn sent(&self) -> u32 {
        self.counter
    }

    /// Writes the next stamped packet (header + 60..=120 bytes of payload) into `buf`, which
    /// must hold [`MAX_PACKET`] bytes; returns its length, 0 if `buf` is too small.
    pub fn next_packet(&mut self, buf: &mut [u8], unix_us: u64) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 17;
        self.rng ^= self.rng << 5;
        let payload_len = 60 + (self.rng % 61) as usize;
        let len = 12 + payload_len;
        let Some(p) = buf.get_mut(..len) else {
            return 0;
        };
        p[0] = 0x80;
        p[1] = (u8::from(std::mem::take(&mut self.marker)) << 7) | (self.pt & 0x7f);
        p[2..4].copy_from_slice(&self.seq.to_be_bytes());
        p[4..8].copy_from_slice(&self.ts.to_be_bytes());
        p[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        p[12..16].copy_from_slice(&self.counter.to_be_bytes());
        p[16..24].copy_from_slice(&unix_us.to_be_bytes());
        // Filler: any bytes do for an opaque Opus frame; vary them so nothing compresses.
        let fill = (self.counter as u8) ^ (self.rng as u8);
        for (i, b) in p[24..].iter_mut().enumerate() {
            *b = fill.wrapping_add(i as u8);
        }
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(TS_PER_FRAME);
        self.counter = self.counter.wrapping_add(1);
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload_len as u32);
        len
    }

    /// Starts sender reports (the first one second from now).
    pub fn enable_rtcp(&mut self, now: Instant) {
        self.next_sr.get_or_insert(now + Duration::from_secs(1));
    }

    /// A sender report if one is due (every 5 s; allocation is fine at that rate).
    pub fn sender_report_due(&mut self, now: Instant) -> Option<Vec<u8>> {
        let due = self.next_sr.is_some_and(|t| now >= t);
        if !due {
            return None;
        }
        self.next_sr = Some(now + SR_INTERVAL);
        Some(build_sender_report_echo(
            self.ssrc,
            self.ts,
            self.packets,
            self.octets,
            &self.echo,
            now,
        ))
    }
}

/// The receiving side of one stream.
#[derive(Debug, Default)]
pub struct MediaRx {
    highest: Option<u32>,
    last_transit: Option<i64>,
    /// RFC 3550 interarrival jitter, µs.
    jitter_us: f64,
    pub first_at: Option<Instant>,
}

/// What a received RTP packet turned out to be.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// One of our stamped payloads (counted in the direction's totals).
    Stamped,
    /// RTP without our stamp (the relay's silence fill).
    Unstamped,
    /// Not parseable RTP.
    Malformed,
}

impl MediaRx {
    /// Accounts one plain RTP packet received at `now_us` (µs since the Unix epoch).
    pub fn on_rtp(
        &mut self,
        packet: &[u8],
        now: Instant,
        now_us: u64,
        dir: &mut DirTotals,
    ) -> Received {
        let Some((_, payload)) = parse_rtp(packet) else {
            return Received::Malformed;
        };
        if payload.len() < PAYLOAD_STAMP_LEN {
            return Received::Unstamped;
        }
        let Some((counter, sent_us)) = read_stamp(payload) else {
            return Received::Unstamped;
        };
        if now_us.abs_diff(sent_us) > STAMP_PLAUSIBLE_US {
            return Received::Unstamped;
        }
        dir.received += 1;
        match self.highest {
            None => dir.expected += u64::from(counter) + 1,
            Some(h) if counter > h => dir.expected += u64::from(counter - h),
            Some(_) => dir.reordered += 1,
        }
        if self.highest.is_none_or(|h| counter > h) {
            self.highest = Some(counter);
        }
        dir.latency.record(now_us.saturating_sub(sent_us));
        let transit = now_us as i64 - sent_us as i64;
        if let Some(last) = self.last_transit {
            let d = (transit - last).unsigned_abs() as f64;
            self.jitter_us += (d - self.jitter_us) / 16.0;
        }
        self.last_transit = Some(transit);
        self.first_at.get_or_insert(now);
        Received::Stamped
    }

    pub fn jitter_us(&self) -> u64 {
        self.jitter_us as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_carry_the_e2e_stamp_and_count_up() {
        let mut tx = MediaTx::new(7, 111);
        let mut rx = MediaRx::default();
        let mut dir = DirTotals::default();
        let now = Instant::now();
        let mut buf = [0u8; MAX_PACKET];
        for i in 0..5u64 {
            let n = tx.next_packet(&mut buf, 1_000_000 + i);
            let (h, payload) = parse_rtp(&buf[..n]).unwrap();
            assert_eq!((h.pt, h.ssrc, h.marker), (111, 7, i == 0));
            assert!((60..=120).contains(&payload.len()));
            assert_eq!(read_stamp(payload), Some((i as u32, 1_000_000 + i)));
            assert_eq!(
                rx.on_rtp(&buf[..n], now, 1_000_250 + i, &mut dir),
                Received::Stamped
            );
        }
        assert_eq!((dir.received, dir.expected, dir.lost()), (5, 5, 0));
        assert_eq!(dir.latency.quantile(1.0), 250);
    }

    #[test]
    fn gaps_count_as_loss_and_late_packets_as_reordered() {
        let mut tx = MediaTx::new(1, 111);
        let mut rx = MediaRx::default();
        let mut dir = DirTotals::default();
        let now = Instant::now();
        let pkts: Vec<Vec<u8>> = (0..4)
            .map(|_| {
                let mut b = [0u8; MAX_PACKET];
                let n = tx.next_packet(&mut b, 10);
                b[..n].to_vec()
            })
            .collect();
        for i in [0, 2, 3, 1] {
            rx.on_rtp(&pkts[i], now, 20, &mut dir);
        }
        assert_eq!((dir.received, dir.expected, dir.reordered), (4, 4, 1));
        let mut dir = DirTotals::default();
        let mut rx = MediaRx::default();
        rx.on_rtp(&pkts[3], now, 20, &mut dir);
        assert_eq!(dir.lost(), 3);
    }

    #[test]
    fn silence_fill_is_not_counted() {
        let mut rx = MediaRx::default();
        let mut dir = DirTotals::default();
        let fill = [0x80, 111, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9, 0xf8, 0xff, 0xfe];
        let got = rx.on_rtp(&fill, Instant::now(), 5, &mut dir);
        assert_eq!(got, Received::Unstamped);
        assert_eq!(dir, DirTotals::default());
    }
}
