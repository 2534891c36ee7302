//! Minimal RTP/RTCP building and parsing for the emulated peers (RFC 3550, RFC 4733).
//! Independent of the relay's `wire` module on purpose.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The RTP header fields the peers set and record.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RtpHeader {
    pub pt: u8,
    pub marker: bool,
    pub seq: u16,
    pub ts: u32,
    pub ssrc: u32,
}

/// A 12-byte header (no CSRC, no extension) followed by `payload`.
pub fn build_rtp(h: &RtpHeader, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + payload.len());
    out.push(0x80);
    out.push((u8::from(h.marker) << 7) | (h.pt & 0x7f));
    out.extend_from_slice(&h.seq.to_be_bytes());
    out.extend_from_slice(&h.ts.to_be_bytes());
    out.extend_from_slice(&h.ssrc.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Parses an RTP packet; returns the header and the payload (after CSRCs, extension and
/// padding). `None` if it is not well-formed RTP version 2.
pub fn parse_rtp(p: &[u8]) -> Option<(RtpHeader, &[u8])> {
    let b0 = *p.first()?;
    if b0 >> 6 != 2 {
        return None;
    }
    let b1 = *p.get(1)?;
    let h = RtpHeader {
        pt: b1 & 0x7f,
        marker: b1 & 0x80 != 0,
        seq: u16::from_be_bytes(p.get(2..4)?.try_into().ok()?),
        ts: u32::from_be_bytes(p.get(4..8)?.try_into().ok()?),
        ssrc: u32::from_be_bytes(p.get(8..12)?.try_into().ok()?),
    };
    let mut start = 12 + 4 * usize::from(b0 & 0x0f);
    if b0 & 0x10 != 0 {
        let words = u16::from_be_bytes(p.get(start + 2..start + 4)?.try_into().ok()?);
        start += 4 + 4 * usize::from(words);
    }
    let mut end = p.len();
    if b0 & 0x20 != 0 {
        end = end.checked_sub(usize::from(*p.last()?))?;
    }
    Some((h, p.get(start..end)?))
}

/// RTP vs RTCP on a muxed port (RFC 5761 §4): RTCP packet types 192..=223 in the second byte.
pub fn is_rtcp(p: &[u8]) -> bool {
    p.len() >= 8 && matches!(p.get(1), Some(192..=223))
}

/// The packet types of every packet in a compound RTCP datagram (200 SR, 201 RR, 203 BYE...).
pub fn rtcp_packet_types(mut p: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while p.len() >= 4 {
        let Some(&pt) = p.get(1) else { break };
        types.push(pt);
        let words = u16::from_be_bytes([p[2], p[3]]);
        let len = 4 * (usize::from(words) + 1);
        match p.get(len..) {
            Some(rest) => p = rest,
            None => break,
        }
    }
    types
}

/// NTP timestamp (RFC 3550 §4) of wall-clock time.
pub fn ntp_now() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = since.as_secs() + 2_208_988_800;
    let frac = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// A sender report with no report blocks.
pub fn build_sender_report(ssrc: u32, rtp_ts: u32, packets: u32, octets: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(28);
    out.extend_from_slice(&[0x80, 200, 0, 6]);
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(&ntp_now().to_be_bytes());
    out.extend_from_slice(&rtp_ts.to_be_bytes());
    out.extend_from_slice(&packets.to_be_bytes());
    out.extend_from_slice(&octets.to_be_bytes());
    out
}

/// A receiver's memory of the last sender report it got, so its own reports can carry
/// LSR/DLSR (RFC 3550 §6.4.1) and the sender (the relay) can measure the round-trip time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SrEcho {
    /// (sender's SSRC, middle 32 bits of its NTP time, when it arrived)
    last: Option<(u32, u32, std::time::Instant)>,
}

impl SrEcho {
    /// Note the SR in a plaintext compound RTCP packet (SR first, as RFC 3550 requires).
    pub fn note(&mut self, plain: &[u8], now: std::time::Instant) {
        if plain.len() >= 16 && plain[1] == 200 {
            let ssrc = u32::from_be_bytes([plain[4], plain[5], plain[6], plain[7]]);
            let ntp = u64::from_be_bytes(plain[8..16].try_into().unwrap_or_default());
            self.last = Some((ssrc, (ntp >> 16) as u32, now));
        }
    }

    /// A report block about that sender: LSR and DLSR filled; loss and jitter are left 0 (the
    /// emulators do not report them).
    pub fn report_block(&self, now: std::time::Instant) -> Option<[u8; 24]> {
        let (ssrc, lsr, at) = self.last?;
        let dlsr = (now.saturating_duration_since(at).as_secs_f64() * 65536.0) as u32;
        let mut b = [0u8; 24];
        b[0..4].copy_from_slice(&ssrc.to_be_bytes());
        b[16..20].copy_from_slice(&lsr.to_be_bytes());
        b[20..24].copy_from_slice(&dlsr.to_be_bytes());
        Some(b)
    }
}

/// [`build_sender_report`] plus a report block echoing the last SR `echo` noted, if any.
pub fn build_sender_report_echo(
    ssrc: u32,
    rtp_ts: u32,
    packets: u32,
    octets: u32,
    echo: &SrEcho,
    now: std::time::Instant,
) -> Vec<u8> {
    let mut out = build_sender_report(ssrc, rtp_ts, packets, octets);
    if let Some(block) = echo.report_block(now) {
        out[0] |= 1; // one report block
        out[3] = 12; // length in words minus one: 28 + 24 bytes
        out.extend_from_slice(&block);
    }
    out
}

/// RFC 4733 telephone-event payload: event, end bit, volume, duration (timestamp units).
pub fn dtmf_payload(event: u8, end: bool, volume: u8, duration: u16) -> [u8; 4] {
    let d = duration.to_be_bytes();
    [event, (u8::from(end) << 7) | (volume & 0x3f), d[0], d[1]]
}

/// Bytes 0..4 of the emulators' Opus-like payloads: a per-stream counter; bytes 4..12: the
/// sender's wall-clock send time in microseconds since the Unix epoch. Receivers use them to
/// check byte identity end to end and to measure one-way latency on one machine.
pub const PAYLOAD_STAMP_LEN: usize = 12;

pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A payload of `len` bytes (at least [`PAYLOAD_STAMP_LEN`]) stamped with `counter` and the
/// current time; the rest is a deterministic filler derived from the counter.
pub fn stamped_payload(counter: u32, len: usize) -> Vec<u8> {
    let len = len.max(PAYLOAD_STAMP_LEN);
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&counter.to_be_bytes());
    out.extend_from_slice(&unix_micros().to_be_bytes());
    let mut x = counter.wrapping_mul(2_654_435_761).wrapping_add(1);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.push(x as u8);
    }
    out
}

/// Reads the counter and send time back from a stamped payload.
pub fn read_stamp(payload: &[u8]) -> Option<(u32, u64)> {
    let counter = u32::from_be_bytes(payload.get(0..4)?.try_into().ok()?);
    let sent = u64::from_be_bytes(payload.get(4..12)?.try_into().ok()?);
    Some((counter, sent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtp_round_trips() {
        let h = RtpHeader {
            pt: 111,
            marker: true,
            seq: 65535,
            ts: 0xdead_beef,
            ssrc: 42,
        };
        let p = build_rtp(&h, b"opus");
        assert_eq!(parse_rtp(&p), Some((h, &b"opus"[..])));
        assert!(!is_rtcp(&p));
        assert_eq!(parse_rtp(&p[..11]), None);
    }

    #[test]
    fn a_sender_report_echoes_the_last_one_received() {
        let t0 = std::time::Instant::now();
        let mut echo = SrEcho::default();
        assert_eq!(build_sender_report_echo(7, 0, 0, 0, &echo, t0).len(), 28);
        let theirs = build_sender_report(0xabcd, 960, 1, 100);
        echo.note(&theirs, t0);
        let ours = build_sender_report_echo(7, 960, 1, 100, &echo, t0 + Duration::from_millis(500));
        assert_eq!(ours.len(), 52);
        assert_eq!((ours[0] & 0x1f, ours[3]), (1, 12));
        assert_eq!(&ours[28..32], &0xabcdu32.to_be_bytes());
        assert_eq!(
            &ours[44..48],
            &theirs[10..14],
            "LSR: middle of their NTP time"
        );
        assert_eq!(
            u32::from_be_bytes(ours[48..52].try_into().unwrap()),
            32768,
            "DLSR 0.5 s"
        );
    }

    #[test]
    fn sender_report_is_rtcp() {
        let sr = build_sender_report(7, 960, 1, 100);
        assert!(is_rtcp(&sr));
        assert_eq!(sr.len(), 28);
        let mut compound = sr.clone();
        compound.extend_from_slice(&[0x81, 203, 0, 1, 0, 0, 0, 7]);
        assert_eq!(rtcp_packet_types(&compound), vec![200, 203]);
    }

    #[test]
    fn stamps_round_trip() {
        let p = stamped_payload(9, 80);
        assert_eq!(p.len(), 80);
        assert_eq!(read_stamp(&p).map(|s| s.0), Some(9));
    }
}
