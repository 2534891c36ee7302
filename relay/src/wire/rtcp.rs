//! RTCP (RFC 3550 §6, feedback types of RFC 4585): an allocation-free iterator over a
//! compound packet, writers for the packets the relay generates (SR, RR, SDES CNAME, BYE),
//! and the NTP/LSR/DLSR arithmetic behind round-trip times.
//!
//! The iterator checks each packet's framing (version, length within the buffer, padding) and
//! the fixed layout of the types it interprets; anything else is yielded as
//! [`RtcpPacket::Other`] so a new type never breaks a compound packet.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::wire::rtp::{RtpTs, Ssrc};

pub const SR: u8 = 200;
pub const RR: u8 = 201;
pub const SDES: u8 = 202;
pub const BYE: u8 = 203;
pub const APP: u8 = 204;
pub const RTPFB: u8 = 205;
pub const PSFB: u8 = 206;

const HEADER_LEN: usize = 4;
const REPORT_BLOCK_LEN: usize = 24;
/// Sender SSRC + NTP (8) + RTP timestamp + packet count + octet count.
const SENDER_INFO_LEN: usize = 24;
/// RC is 5 bits.
const MAX_REPORTS: usize = 31;
const SDES_CNAME: u8 = 1;

#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RtcpError {
    #[error("{remaining} bytes left at offset {offset}: too short for an RTCP header")]
    TruncatedHeader { offset: usize, remaining: usize },
    #[error("RTCP version {version} at offset {offset}, expected 2")]
    BadVersion { offset: usize, version: u8 },
    #[error("RTCP packet at offset {offset} claims {len} bytes, only {remaining} remain")]
    LengthBeyondBuffer {
        offset: usize,
        len: usize,
        remaining: usize,
    },
    #[error("invalid padding in the RTCP packet at offset {offset}")]
    BadPadding { offset: usize },
    #[error("RTCP packet type {packet_type} at offset {offset} is too short for its content")]
    BodyTooShort { offset: usize, packet_type: u8 },
    #[error("at most 31 report blocks fit one packet, got {0}")]
    TooManyReports(usize),
    #[error("CNAME of {0} bytes exceeds 255")]
    CnameTooLong(usize),
    #[error("buffer too small")]
    BufferTooSmall,
}

/// A reception report block (RFC 3550 §6.4.1).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct ReportBlock {
    pub ssrc: Ssrc,
    pub fraction_lost: u8,
    /// 24-bit signed on the wire; duplicates can make it negative.
    pub cumulative_lost: i32,
    /// Extended highest sequence number received.
    pub highest_seq: u32,
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last SR from this source (0: none).
    pub lsr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub dlsr: u32,
}

impl ReportBlock {
    fn read(b: &[u8]) -> Option<ReportBlock> {
        let lost = be32(b, 4)?;
        // Sign-extend the low 24 bits.
        let cumulative_lost = ((lost << 8) as i32) >> 8;
        Some(ReportBlock {
            ssrc: Ssrc::new(be32(b, 0)?),
            fraction_lost: (lost >> 24) as u8,
            cumulative_lost,
            highest_seq: be32(b, 8)?,
            jitter: be32(b, 12)?,
            lsr: be32(b, 16)?,
            dlsr: be32(b, 20)?,
        })
    }

    fn write(&self, out: &mut [u8]) -> Result<(), RtcpError> {
        let lost = (u32::from(self.fraction_lost) << 24)
            | (self.cumulative_lost.clamp(-0x80_0000, 0x7F_FFFF) as u32 & 0x00FF_FFFF);
        let mut w = Writer::new(out);
        for v in [
            self.ssrc.get(),
            lost,
            self.highest_seq,
            self.jitter,
            self.lsr,
            self.dlsr,
        ] {
            w.u32(v)?;
        }
        Ok(())
    }
}

/// The report blocks of an SR or RR, decoded on demand.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ReportBlocks<'a> {
    raw: &'a [u8],
}

impl<'a> ReportBlocks<'a> {
    pub fn len(&self) -> usize {
        self.raw.len() / REPORT_BLOCK_LEN
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
}

impl Iterator for ReportBlocks<'_> {
    type Item = ReportBlock;

    fn next(&mut self) -> Option<ReportBlock> {
        let block = self.raw.get(..REPORT_BLOCK_LEN)?;
        self.raw = self.raw.get(REPORT_BLOCK_LEN..).unwrap_or(&[]);
        ReportBlock::read(block)
    }
}

/// A list of 32-bit SSRCs (BYE).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Ssrcs<'a> {
    raw: &'a [u8],
}

impl Iterator for Ssrcs<'_> {
    type Item = Ssrc;

    fn next(&mut self) -> Option<Ssrc> {
        let v = be32(self.raw, 0)?;
        self.raw = self.raw.get(4..).unwrap_or(&[]);
        Some(Ssrc::new(v))
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SenderReport<'a> {
    pub ssrc: Ssrc,
    pub ntp: u64,
    pub rtp_ts: RtpTs,
    pub packet_count: u32,
    pub octet_count: u32,
    pub reports: ReportBlocks<'a>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RtcpPacket<'a> {
    SenderReport(SenderReport<'a>),
    ReceiverReport {
        ssrc: Ssrc,
        reports: ReportBlocks<'a>,
    },
    /// Items are not decoded; `ssrc` is the first chunk's (None for an empty SDES).
    SourceDescription {
        chunk_count: u8,
        ssrc: Option<Ssrc>,
    },
    Bye {
        ssrcs: Ssrcs<'a>,
    },
    App {
        subtype: u8,
        ssrc: Ssrc,
        name: [u8; 4],
        data: &'a [u8],
    },
    /// RTPFB (205): `fmt` 1 is generic NACK, 15 transport-wide CC.
    TransportFeedback {
        fmt: u8,
        sender_ssrc: Ssrc,
        media_ssrc: Ssrc,
    },
    /// PSFB (206): `fmt` 1 is PLI, 15 application layer (REMB).
    PayloadFeedback {
        fmt: u8,
        sender_ssrc: Ssrc,
        media_ssrc: Ssrc,
    },
    /// Any other packet type (XR, ...): framing checked, content not interpreted.
    Other {
        packet_type: u8,
        count: u8,
        body: &'a [u8],
    },
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Iterates the packets of a compound RTCP datagram.
pub fn iter(buf: &[u8]) -> RtcpIter<'_> {
    RtcpIter { buf, offset: 0 }
}

/// Yields each packet, or one error after which iteration stops (the framing of the rest of
/// the datagram can no longer be trusted).
pub struct RtcpIter<'a> {
    buf: &'a [u8],
    offset: usize,
}

impl<'a> Iterator for RtcpIter<'a> {
    type Item = Result<RtcpPacket<'a>, RtcpError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.buf.get(self.offset..).filter(|r| !r.is_empty())?;
        let offset = self.offset;
        match frame(rest, offset) {
            Ok((packet, consumed)) => {
                self.offset += consumed;
                Some(Ok(packet))
            }
            Err(e) => {
                self.offset = self.buf.len();
                Some(Err(e))
            }
        }
    }
}

/// Parses the packet at the start of `rest`; returns it and its length on the wire.
fn frame<'a>(rest: &'a [u8], offset: usize) -> Result<(RtcpPacket<'a>, usize), RtcpError> {
    let (Some(&b0), Some(&packet_type), Some(words)) = (
        rest.first(),
        rest.get(1),
        rest.get(2..4).and_then(|w| <[u8; 2]>::try_from(w).ok()),
    ) else {
        return Err(RtcpError::TruncatedHeader {
            offset,
            remaining: rest.len(),
        });
    };
    let version = b0 >> 6;
    if version != 2 {
        return Err(RtcpError::BadVersion { offset, version });
    }
    // The length field counts 32-bit words minus one, so every packet advances by at least 4.
    let len = (usize::from(u16::from_be_bytes(words)) + 1) * 4;
    let packet = rest.get(..len).ok_or(RtcpError::LengthBeyondBuffer {
        offset,
        len,
        remaining: rest.len(),
    })?;
    let mut body = packet.get(HEADER_LEN..).unwrap_or(&[]);
    if b0 & 0x20 != 0 {
        let pad = usize::from(*body.last().ok_or(RtcpError::BadPadding { offset })?);
        if pad == 0 || pad > body.len() {
            return Err(RtcpError::BadPadding { offset });
        }
        body = body.get(..body.len() - pad).unwrap_or(&[]);
    }
    let count = b0 & 0x1F;
    let short = RtcpError::BodyTooShort {
        offset,
        packet_type,
    };
    let reports = |raw: &'a [u8]| -> Result<ReportBlocks<'a>, RtcpError> {
        raw.get(..usize::from(count) * REPORT_BLOCK_LEN)
            .map(|raw| ReportBlocks { raw })
            .ok_or(short)
    };
    let parsed = match packet_type {
        SR => RtcpPacket::SenderReport(SenderReport {
            ssrc: Ssrc::new(be32(body, 0).ok_or(short)?),
            ntp: be64(body, 4).ok_or(short)?,
            rtp_ts: RtpTs::new(be32(body, 12).ok_or(short)?),
            packet_count: be32(body, 16).ok_or(short)?,
            octet_count: be32(body, 20).ok_or(short)?,
            reports: reports(body.get(SENDER_INFO_LEN..).ok_or(short)?)?,
        }),
        RR => RtcpPacket::ReceiverReport {
            ssrc: Ssrc::new(be32(body, 0).ok_or(short)?),
            reports: reports(body.get(4..).ok_or(short)?)?,
        },
        SDES => RtcpPacket::SourceDescription {
            chunk_count: count,
            ssrc: if count == 0 {
                None
            } else {
                Some(Ssrc::new(be32(body, 0).ok_or(short)?))
            },
        },
        BYE => RtcpPacket::Bye {
            ssrcs: Ssrcs {
                raw: body.get(..usize::from(count) * 4).ok_or(short)?,
            },
        },
        APP => RtcpPacket::App {
            subtype: count,
            ssrc: Ssrc::new(be32(body, 0).ok_or(short)?),
            name: body
                .get(4..8)
                .and_then(|n| n.try_into().ok())
                .ok_or(short)?,
            data: body.get(8..).ok_or(short)?,
        },
        RTPFB | PSFB => {
            let (sender_ssrc, media_ssrc) = (
                Ssrc::new(be32(body, 0).ok_or(short)?),
                Ssrc::new(be32(body, 4).ok_or(short)?),
            );
            if packet_type == RTPFB {
                RtcpPacket::TransportFeedback {
                    fmt: count,
                    sender_ssrc,
                    media_ssrc,
                }
            } else {
                RtcpPacket::PayloadFeedback {
                    fmt: count,
                    sender_ssrc,
                    media_ssrc,
                }
            }
        }
        _ => RtcpPacket::Other {
            packet_type,
            count,
            body,
        },
    };
    Ok((parsed, len))
}

/// Sequential big-endian writes into a buffer.
struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl<'a> Writer<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Writer { buf, at: 0 }
    }

    fn bytes(&mut self, b: &[u8]) -> Result<(), RtcpError> {
        self.buf
            .get_mut(self.at..self.at + b.len())
            .ok_or(RtcpError::BufferTooSmall)?
            .copy_from_slice(b);
        self.at += b.len();
        Ok(())
    }

    fn u32(&mut self, v: u32) -> Result<(), RtcpError> {
        self.bytes(&v.to_be_bytes())
    }

    /// Writes the common header for a packet of `len` bytes (a multiple of 4).
    fn header(&mut self, count: u8, packet_type: u8, len: usize) -> Result<(), RtcpError> {
        let words = u16::try_from(len / 4 - 1).map_err(|_| RtcpError::BufferTooSmall)?;
        let [w0, w1] = words.to_be_bytes();
        self.bytes(&[0x80 | (count & 0x1F), packet_type, w0, w1])
    }
}

fn check_fits(buf: &[u8], len: usize) -> Result<(), RtcpError> {
    if buf.len() < len {
        Err(RtcpError::BufferTooSmall)
    } else {
        Ok(())
    }
}

fn write_reports(w: &mut Writer<'_>, reports: &[ReportBlock]) -> Result<(), RtcpError> {
    for r in reports {
        let out = w
            .buf
            .get_mut(w.at..w.at + REPORT_BLOCK_LEN)
            .ok_or(RtcpError::BufferTooSmall)?;
        r.write(out)?;
        w.at += REPORT_BLOCK_LEN;
    }
    Ok(())
}

/// Writes a sender report; returns its length. Up to 31 report blocks.
pub fn write_sr(
    buf: &mut [u8],
    ssrc: Ssrc,
    ntp: u64,
    rtp_ts: RtpTs,
    packet_count: u32,
    octet_count: u32,
    reports: &[ReportBlock],
) -> Result<usize, RtcpError> {
    if reports.len() > MAX_REPORTS {
        return Err(RtcpError::TooManyReports(reports.len()));
    }
    let len = HEADER_LEN + SENDER_INFO_LEN + reports.len() * REPORT_BLOCK_LEN;
    check_fits(buf, len)?;
    let mut w = Writer::new(buf);
    w.header(reports.len() as u8, SR, len)?;
    w.u32(ssrc.get())?;
    w.bytes(&ntp.to_be_bytes())?;
    w.u32(rtp_ts.get())?;
    w.u32(packet_count)?;
    w.u32(octet_count)?;
    write_reports(&mut w, reports)?;
    Ok(len)
}

/// Writes a receiver report; returns its length. Up to 31 report blocks.
pub fn write_rr(buf: &mut [u8], ssrc: Ssrc, reports: &[ReportBlock]) -> Result<usize, RtcpError> {
    if reports.len() > MAX_REPORTS {
        return Err(RtcpError::TooManyReports(reports.len()));
    }
    let len = HEADER_LEN + 4 + reports.len() * REPORT_BLOCK_LEN;
    check_fits(buf, len)?;
    let mut w = Writer::new(buf);
    w.header(reports.len() as u8, RR, len)?;
    w.u32(ssrc.get())?;
    write_reports(&mut w, reports)?;
    Ok(len)
}

/// Writes an SDES packet with one chunk holding a CNAME item; returns its length.
pub fn write_sdes_cname(buf: &mut [u8], ssrc: Ssrc, cname: &[u8]) -> Result<usize, RtcpError> {
    let item_len = u8::try_from(cname.len()).map_err(|_| RtcpError::CnameTooLong(cname.len()))?;
    // SSRC, type, length, text, then at least one null octet ending the item list, padded
    // to a 32-bit boundary.
    let chunk = (4 + 2 + cname.len() + 1).next_multiple_of(4);
    let len = HEADER_LEN + chunk;
    check_fits(buf, len)?;
    let mut w = Writer::new(buf);
    w.header(1, SDES, len)?;
    w.u32(ssrc.get())?;
    w.bytes(&[SDES_CNAME, item_len])?;
    w.bytes(cname)?;
    let pad = len - w.at;
    w.buf
        .get_mut(w.at..w.at + pad)
        .ok_or(RtcpError::BufferTooSmall)?
        .fill(0);
    Ok(len)
}

/// Writes a BYE for one SSRC (no reason); returns its length.
pub fn write_bye(buf: &mut [u8], ssrc: Ssrc) -> Result<usize, RtcpError> {
    let len = HEADER_LEN + 4;
    check_fits(buf, len)?;
    let mut w = Writer::new(buf);
    w.header(1, BYE, len)?;
    w.u32(ssrc.get())?;
    Ok(len)
}

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// The 64-bit NTP timestamp (32.32 fixed point seconds since 1900) of `t`. Times before 1970
/// map to the Unix epoch.
pub fn ntp_from_system_time(t: SystemTime) -> u64 {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs().wrapping_add(NTP_UNIX_OFFSET);
    let frac = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// The middle 32 bits (16.16 seconds) used by LSR and by "now" in RTT computation.
pub fn ntp_middle32(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// Round-trip time from a report block (RFC 3550 §6.4.1): `now - LSR - DLSR`, all in
/// 1/65536 s. None when the block carries no LSR or the result would be negative (clock
/// trouble or a stale block).
pub fn rtt_from_report(now_ntp_middle32: u32, lsr: u32, dlsr: u32) -> Option<Duration> {
    if lsr == 0 {
        return None;
    }
    let since_sr = now_ntp_middle32.wrapping_sub(lsr);
    // A wrapped (negative) difference shows up as a huge value; anything above half the
    // range is treated as negative.
    if since_sr > u32::MAX / 2 || since_sr < dlsr {
        return None;
    }
    let rtt = u64::from(since_sr - dlsr);
    Some(Duration::from_nanos(rtt * 1_000_000_000 / 65_536))
}

#[cfg(test)]
mod tests;
