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
