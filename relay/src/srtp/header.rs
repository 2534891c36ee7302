//! The few RTP/RTCP header fields SRTP needs, read without allocation or full parsing.

use super::SrtpError;
use crate::wire::rtp::{Seq, Ssrc};

const RTP_FIXED_HEADER: usize = 12;
/// RTCP header (4) plus the sender SSRC (4): the part of an SRTCP packet never encrypted.
pub(crate) const RTCP_CLEAR_PREFIX: usize = 8;

/// What SRTP needs from an RTP header.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct RtpHeader {
    /// Bytes of header (fixed part, CSRCs, extension): the clear, authenticated-only prefix.
    pub len: usize,
    pub seq: Seq,
    pub ssrc: Ssrc,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub(crate) fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Reads the RTP header at the start of `packet` (RFC 3550 §5.1, extension §5.3.1).
pub(crate) fn rtp_header(packet: &[u8]) -> Result<RtpHeader, SrtpError> {
    if packet.len() < RTP_FIXED_HEADER {
        return Err(SrtpError::TooShort);
    }
    let b0 = packet[0];
    if b0 >> 6 != 2 {
        return Err(SrtpError::Malformed);
    }
    let mut len = RTP_FIXED_HEADER + 4 * usize::from(b0 & 0x0f);
    if b0 & 0x10 != 0 {
        // Extension: 16-bit profile, 16-bit length in 32-bit words, then the words.
        let words = be16(packet, len + 2).ok_or(SrtpError::Malformed)?;
        len += 4 + 4 * usize::from(words);
    }
    if len > packet.len() {
        return Err(SrtpError::Malformed);
    }
    Ok(RtpHeader {
        len,
        seq: Seq::new(be16(packet, 2).ok_or(SrtpError::TooShort)?),
        ssrc: Ssrc::new(be32(packet, 8).ok_or(SrtpError::TooShort)?),
    })
}

/// Checks the RTCP version and returns the sender SSRC of the first packet of the compound.
pub(crate) fn rtcp_ssrc(packet: &[u8]) -> Result<Ssrc, SrtpError> {
    let ssrc = be32(packet, 4).ok_or(SrtpError::TooShort)?;
    if packet[0] >> 6 != 2 {
        return Err(SrtpError::Malformed);
    }
    Ok(Ssrc::new(ssrc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_header() {
        let p = [
            0x80, 0x60, 0x12, 0x34, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef, 1, 2,
        ];
        assert_eq!(
            rtp_header(&p),
            Ok(RtpHeader {
                len: 12,
                seq: Seq::new(0x1234),
                ssrc: Ssrc::new(0xdeadbeef)
            })
        );
    }

    #[test]
    fn csrcs_and_extension_count() {
        // CC = 2, X = 1, extension of 1 word.
        let mut p = vec![0x92, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2];
        p.extend_from_slice(&[0; 8]); // two CSRCs
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0]);
        assert_eq!(rtp_header(&p).map(|h| h.len), Ok(28));
        // Header claims more than the packet holds.
        assert_eq!(rtp_header(&p[..27]), Err(SrtpError::Malformed));
        assert_eq!(rtp_header(&p[..21]), Err(SrtpError::Malformed));
    }

    #[test]
    fn rejects_short_and_wrong_version() {
        assert_eq!(rtp_header(&[0x80; 11]), Err(SrtpError::TooShort));
        assert_eq!(rtp_header(&[0x40; 12]), Err(SrtpError::Malformed));
        assert_eq!(rtcp_ssrc(&[0x80; 7]), Err(SrtpError::TooShort));
        assert_eq!(rtcp_ssrc(&[0xc0; 8]), Err(SrtpError::Malformed));
        assert_eq!(rtcp_ssrc(&[0x80, 200, 0, 1, 0, 0, 0, 9]), Ok(Ssrc::new(9)));
    }
}
