//! RTP (RFC 3550 §5): a copyable view of the header, in-place field writers, and the
//! receiver-side sequence/jitter bookkeeping of RFC 3550 appendices A.1 and A.8.

use std::ops::Range;

use crate::wire::rtcp::ReportBlock;

mod id;
pub use id::{Clock, MediaTime, Pt, RtpTs, Seq, SeqNo, Ssrc};

/// The fixed header, without CSRCs or extension.
pub const FIXED_HEADER_LEN: usize = 12;

#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("{0} bytes is shorter than the 12-byte RTP header")]
    TooShort(usize),
    #[error("RTP version {0}, expected 2")]
    BadVersion(u8),
    #[error("{csrc_count} CSRCs do not fit in the {len}-byte packet")]
    CsrcOverrun { csrc_count: u8, len: usize },
    #[error("header extension overruns the {len}-byte packet")]
    ExtensionOverrun { len: usize },
    #[error("padding count {pad} is invalid for {available} bytes after the header")]
    BadPadding { pad: u8, available: usize },
    #[error("buffer too small")]
    BufferTooSmall,
    #[error("payload type {0} does not fit in 7 bits")]
    InvalidPayloadType(u8),
    #[error("length {len} exceeds the {buf}-byte buffer")]
    LengthBeyondBuffer { len: usize, buf: usize },
}

/// Where a header extension (RFC 3550 §5.3.1) sits in the packet.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RtpExtension {
    /// The "defined by profile" field: 0xBEDE for RFC 8285 one-byte headers, 0x100x two-byte.
    pub profile: u16,
    /// Offset of the extension data (after its 4-byte header).
    pub offset: usize,
    /// Length of the extension data in bytes (a multiple of 4).
    pub len: usize,
}

impl RtpExtension {
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// A parsed RTP header. Offsets refer to the buffer it was parsed from.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub pt: Pt,
    pub seq: Seq,
    pub ts: RtpTs,
    pub ssrc: Ssrc,
    pub csrc_count: u8,
    pub extension: Option<RtpExtension>,
    /// Fixed header + CSRCs + extension: where the payload starts.
    pub header_len: usize,
    /// Payload bytes, padding excluded.
    pub payload_len: usize,
    /// The P bit.
    pub padded: bool,
    /// Padding bytes removed from the end (0 unless `padded`, and 0 from [`parse_header`]).
    pub padding: u8,
}

impl RtpHeader {
    pub fn payload_range(&self) -> Range<usize> {
        self.header_len..self.header_len + self.payload_len
    }

    /// The `i`-th CSRC, read from the buffer this header was parsed from.
    pub fn csrc(&self, buf: &[u8], i: u8) -> Option<Ssrc> {
        if i >= self.csrc_count {
            return None;
        }
        be32(buf, FIXED_HEADER_LEN + 4 * usize::from(i)).map(Ssrc::new)
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// Parses a plain RTP packet, validating the version, CSRC list, extension and padding.
pub fn parse(buf: &[u8]) -> Result<RtpHeader, RtpError> {
    let mut h = parse_header(buf)?;
    if h.padded {
        let available = h.payload_len;
        let pad = *buf.last().ok_or(RtpError::TooShort(buf.len()))?;
        if pad == 0 || usize::from(pad) > available {
            return Err(RtpError::BadPadding { pad, available });
        }
        h.padding = pad;
        h.payload_len = available - usize::from(pad);
    }
    Ok(h)
}

/// Parses the header only, leaving padding unread (`payload_len` runs to the end of `buf`).
/// For SRTP, where the padding count is encrypted and an auth tag follows the payload.
pub fn parse_header(buf: &[u8]) -> Result<RtpHeader, RtpError> {
    let too_short = RtpError::TooShort(buf.len());
    let b0 = *buf.first().ok_or(too_short)?;
    let b1 = *buf.get(1).ok_or(too_short)?;
    if buf.len() < FIXED_HEADER_LEN {
        return Err(too_short);
    }
    let version = b0 >> 6;
    if version != 2 {
        return Err(RtpError::BadVersion(version));
    }
    let csrc_count = b0 & 0x0F;
    let mut header_len = FIXED_HEADER_LEN + 4 * usize::from(csrc_count);
    if header_len > buf.len() {
        return Err(RtpError::CsrcOverrun {
            csrc_count,
            len: buf.len(),
        });
    }
    let extension = if b0 & 0x10 != 0 {
        let overrun = RtpError::ExtensionOverrun { len: buf.len() };
        let profile = be16(buf, header_len).ok_or(overrun)?;
        let words = be16(buf, header_len + 2).ok_or(overrun)?;
        let offset = header_len + 4;
        let len = 4 * usize::from(words);
        if offset + len > buf.len() {
            return Err(overrun);
        }
        header_len = offset + len;
        Some(RtpExtension {
            profile,
            offset,
            len,
        })
    } else {
        None
    };
    Ok(RtpHeader {
        marker: b1 & 0x80 != 0,
        pt: Pt::new(b1 & 0x7F),
        seq: Seq::new(be16(buf, 2).ok_or(too_short)?),
        ts: RtpTs::new(be32(buf, 4).ok_or(too_short)?),
        ssrc: Ssrc::new(be32(buf, 8).ok_or(too_short)?),
        csrc_count,
        extension,
        header_len,
        payload_len: buf.len() - header_len,
        padded: b0 & 0x20 != 0,
        padding: 0,
    })
}

fn byte_mut(buf: &mut [u8], at: usize) -> Result<&mut u8, RtpError> {
    let len = buf.len();
    if len < FIXED_HEADER_LEN {
        return Err(RtpError::TooShort(len));
    }
    buf.get_mut(at).ok_or(RtpError::TooShort(len))
}

/// An RTP packet's fixed header, for rewriting in place: the length is checked once, when it
/// is made, so its setters cannot fail. The forwarding path restamps every packet with the
/// outbound stream's numbering through it.
pub struct HeaderMut<'a>(&'a mut [u8; FIXED_HEADER_LEN]);

impl<'a> HeaderMut<'a> {
    /// The fixed header at the start of `packet` (at least 12 bytes; the caller parsed it).
    pub fn new(packet: &'a mut [u8]) -> Result<Self, RtpError> {
        let len = packet.len();
        packet
            .first_chunk_mut::<FIXED_HEADER_LEN>()
            .map(HeaderMut)
            .ok_or(RtpError::TooShort(len))
    }

    pub fn set_marker(&mut self, marker: bool) -> &mut Self {
        self.0[1] = (self.0[1] & 0x7F) | if marker { 0x80 } else { 0 };
        self
    }

    /// `pt` is 7 bits (0–127): payload types come from SDP, which the SDP parser bounds. A
    /// larger value would corrupt the marker bit, so only its low 7 bits are written.
    pub fn set_pt(&mut self, pt: Pt) -> &mut Self {
        let pt = pt.get();
        debug_assert!(pt <= 0x7F, "payload type {pt} is not 7 bits");
        self.0[1] = (self.0[1] & 0x80) | (pt & 0x7F);
        self
    }

    pub fn set_seq(&mut self, seq: Seq) -> &mut Self {
        self.0[2..4].copy_from_slice(&seq.get().to_be_bytes());
        self
    }

    pub fn set_ts(&mut self, ts: RtpTs) -> &mut Self {
        self.0[4..8].copy_from_slice(&ts.get().to_be_bytes());
        self
    }

    pub fn set_ssrc(&mut self, ssrc: Ssrc) -> &mut Self {
        self.0[8..12].copy_from_slice(&ssrc.to_be_bytes());
        self
    }
}

/// Removes the CSRC list and header extension from the plain RTP packet `buf[..len]` by
/// moving the payload (and any padding) down behind the fixed header. Returns the new length.
/// Used when forwarding to a leg that negotiated no extensions.
pub fn strip_extensions_and_csrc(buf: &mut [u8], len: usize) -> Result<usize, RtpError> {
    let packet = buf.get(..len).ok_or(RtpError::LengthBeyondBuffer {
        len,
        buf: buf.len(),
    })?;
    let h = parse_header(packet)?;
    if h.header_len == FIXED_HEADER_LEN {
        return Ok(len);
    }
    buf.copy_within(h.header_len..len, FIXED_HEADER_LEN);
    // Clear X and CC, keep V and P.
    let b0 = byte_mut(buf, 0)?;
    *b0 &= 0xE0;
    Ok(len - (h.header_len - FIXED_HEADER_LEN))
}

/// The fields of a generated packet's fixed header (silence fill, DTMF).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct RtpHeaderFields {
    pub marker: bool,
    pub pt: Pt,
    pub seq: Seq,
    pub ts: RtpTs,
    pub ssrc: Ssrc,
}

/// Writes a 12-byte header (version 2, no padding, extension or CSRC); returns 12.
pub fn write_header(buf: &mut [u8], f: &RtpHeaderFields) -> Result<usize, RtpError> {
    if f.pt.get() > 0x7F {
        return Err(RtpError::InvalidPayloadType(f.pt.get()));
    }
    let out = buf
        .get_mut(..FIXED_HEADER_LEN)
        .ok_or(RtpError::BufferTooSmall)?;
    let b1 = f.pt.get() | if f.marker { 0x80 } else { 0 };
    let [s0, s1] = f.seq.get().to_be_bytes();
    let [t0, t1, t2, t3] = f.ts.get().to_be_bytes();
    let [c0, c1, c2, c3] = f.ssrc.to_be_bytes();
    out.copy_from_slice(&[0x80, b1, s0, s1, t0, t1, t2, t3, c0, c1, c2, c3]);
    Ok(FIXED_HEADER_LEN)
}

use super::seq::Step;

/// Receiver statistics for one SSRC: extended highest sequence number, loss and
/// interarrival jitter, as RFC 3550 A.1 and A.8 define them (without the probation period:
/// the first packet is trusted, since the SSRC was signalled or learned on an authenticated
/// path).
#[derive(Clone, Debug, Default)]
pub struct SeqTracker {
    started: bool,
    max_seq: Seq,
    /// Wraps of the sequence number (the extended number's rollover counter).
    roc: u64,
    base_seq: SeqNo,
    /// The sequence number that would confirm a restart after a large jump.
    bad_seq: Option<Seq>,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Arrival minus RTP timestamp of the previous packet, in clock units (wrapping).
    last_transit: Option<u32>,
    /// Jitter scaled by 16 (A.8's integer form).
    jitter16: u64,
}

impl SeqTracker {
    pub fn new() -> Self {
        Self::default()
    }

    fn init(&mut self, seq: Seq) {
        *self = SeqTracker {
            started: true,
            max_seq: seq,
            base_seq: SeqNo::from_parts(0, seq),
            last_transit: self.last_transit,
            jitter16: self.jitter16,
            ..SeqTracker::default()
        };
    }

    /// Accounts for one received packet. `arrival` is the arrival time on the stream's clock
    /// (any origin; only differences matter). Returns false when the packet was not
    /// counted: a large jump that a second sequential packet has not yet confirmed.
    #[inline]
    pub fn update(&mut self, seq: Seq, rtp_ts: RtpTs, arrival: RtpTs) -> bool {
        if !self.started {
            self.init(seq);
        } else {
            match seq.step_from(self.max_seq) {
                Step::Ahead(_) => {
                    if seq.get() < self.max_seq.get() {
                        self.roc += 1;
                    }
                    self.max_seq = seq;
                }
                Step::Jump => {
                    // A large jump: trust it only if the next packet follows it.
                    if self.bad_seq == Some(seq) {
                        self.init(seq);
                    } else {
                        self.bad_seq = Some(seq.next());
                        return false;
                    }
                }
                Step::Same | Step::Behind(_) => {}
            }
            // Otherwise a duplicate or late packet: counted, max unchanged.
        }
        self.received += 1;
        self.update_jitter(rtp_ts, arrival);
        true
    }

    /// RFC 3550 A.8: J += (|D| - J) / 16, with D the change in transit time.
    fn update_jitter(&mut self, rtp_ts: RtpTs, arrival: RtpTs) {
        let transit = arrival.ticks_since(rtp_ts);
        if let Some(last) = self.last_transit {
            let d = u64::from((transit.wrapping_sub(last) as i32).unsigned_abs());
            self.jitter16 = self.jitter16 + d - ((self.jitter16 + 8) >> 4);
        }
        self.last_transit = Some(transit);
    }

    pub fn is_started(&self) -> bool {
        self.started
    }

    /// Highest sequence number received, extended with the wrap count (the RR field keeps the
    /// low 32 bits).
    pub fn extended_max(&self) -> SeqNo {
        SeqNo::from_parts(self.roc, self.max_seq)
    }

    pub fn expected(&self) -> u64 {
        if !self.started {
            return 0;
        }
        self.extended_max().next().since(self.base_seq)
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Cumulative packets lost; negative when duplicates outnumber losses.
    pub fn lost(&self) -> i64 {
        self.expected() as i64 - self.received as i64
    }

    /// Interarrival jitter in clock units.
    pub fn jitter(&self) -> u32 {
        u32::try_from(self.jitter16 >> 4).unwrap_or(u32::MAX)
    }

    /// A report block for RR/SR, closing the current reporting interval (fraction lost is
    /// measured since the previous call). `lsr`/`dlsr` come from the last SR received from
    /// this source (0 if none).
    pub fn report_block(&mut self, ssrc: Ssrc, lsr: u32, dlsr: u32) -> ReportBlock {
        let expected = self.expected();
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval.saturating_sub(received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval == 0 {
            0
        } else {
            u8::try_from((lost_interval << 8) / expected_interval).unwrap_or(u8::MAX)
        };
        ReportBlock {
            ssrc,
            fraction_lost,
            cumulative_lost: self.lost().clamp(-0x80_0000, 0x7F_FFFF) as i32,
            highest_seq: self.extended_max().get() as u32,
            jitter: self.jitter(),
            lsr,
            dlsr,
        }
    }
}

#[cfg(test)]
mod tests;
