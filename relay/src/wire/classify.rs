//! Demultiplexing one UDP port between STUN, DTLS, RTP and RTCP (RFC 7983, RFC 5761).
//!
//! The engine calls [`classify`] on every datagram before anything else, so it looks at two
//! bytes and the length only. A datagram too short to be what its first byte says is
//! [`PacketKind::Unknown`]: the parsers would reject it anyway, and dropping it here keeps
//! runts away from the state machines.

/// What a datagram on a muxed port is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum PacketKind {
    Stun,
    Dtls,
    Rtp,
    Rtcp,
    Unknown,
}

/// Smallest STUN message: the 20-byte header.
const STUN_MIN: usize = 20;
/// Smallest DTLS record: the 13-byte record header.
const DTLS_MIN: usize = 13;
/// Smallest RTP packet: the 12-byte fixed header.
const RTP_MIN: usize = 12;
/// Smallest RTCP packet: a header plus the sender SSRC (an empty RR).
const RTCP_MIN: usize = 8;

/// Classifies a datagram by its first byte (RFC 7983 §7) and, for RTP/RTCP, by the second
/// byte (RFC 5761 §4): with the marker bit masked off, payload types 64–95 are RTCP packet
/// types 192–223, which RTP must not use on a muxed port.
pub fn classify(buf: &[u8]) -> PacketKind {
    let Some(&first) = buf.first() else {
        return PacketKind::Unknown;
    };
    match first {
        0..=3 if buf.len() >= STUN_MIN => PacketKind::Stun,
        20..=63 if buf.len() >= DTLS_MIN => PacketKind::Dtls,
        // 128..=191 is exactly "version field == 2".
        128..=191 => {
            let Some(&second) = buf.get(1) else {
                return PacketKind::Unknown;
            };
            if (64..=95).contains(&(second & 0x7F)) {
                if buf.len() >= RTCP_MIN {
                    PacketKind::Rtcp
                } else {
                    PacketKind::Unknown
                }
            } else if buf.len() >= RTP_MIN {
                PacketKind::Rtp
            } else {
                PacketKind::Unknown
            }
        }
        _ => PacketKind::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(first: u8, second: u8, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        if let Some(b) = v.get_mut(0) {
            *b = first;
        }
        if let Some(b) = v.get_mut(1) {
            *b = second;
        }
        v
    }

    #[test]
    fn first_byte_ranges() {
        assert_eq!(classify(&with(0x00, 0x01, 20)), PacketKind::Stun);
        assert_eq!(classify(&with(0x01, 0x01, 20)), PacketKind::Stun);
        assert_eq!(classify(&with(3, 0, 20)), PacketKind::Stun);
        assert_eq!(classify(&with(4, 0, 20)), PacketKind::Unknown);
        assert_eq!(classify(&with(19, 0, 20)), PacketKind::Unknown);
        assert_eq!(classify(&with(22, 0xFE, 13)), PacketKind::Dtls);
        assert_eq!(classify(&with(20, 0xFE, 13)), PacketKind::Dtls);
        assert_eq!(classify(&with(63, 0, 13)), PacketKind::Dtls);
        assert_eq!(classify(&with(64, 0, 13)), PacketKind::Unknown);
        assert_eq!(classify(&with(127, 0, 40)), PacketKind::Unknown);
        assert_eq!(classify(&with(192, 0, 40)), PacketKind::Unknown);
        assert_eq!(classify(&with(255, 0, 40)), PacketKind::Unknown);
    }

    #[test]
    fn rtp_versus_rtcp() {
        // Opus PT 111, with and without marker.
        assert_eq!(classify(&with(0x80, 111, 12)), PacketKind::Rtp);
        assert_eq!(classify(&with(0x80, 0x80 | 111, 12)), PacketKind::Rtp);
        assert_eq!(classify(&with(0x80, 0, 12)), PacketKind::Rtp);
        assert_eq!(classify(&with(0x80, 63, 12)), PacketKind::Rtp);
        assert_eq!(classify(&with(0x80, 96, 12)), PacketKind::Rtp);
        // SR 200, RR 201, SDES 202, BYE 203, RTPFB 205, PSFB 206, and the 192/223 edges.
        for pt in [192u8, 200, 201, 202, 203, 205, 206, 223] {
            assert_eq!(classify(&with(0x81, pt, 8)), PacketKind::Rtcp, "pt {pt}");
        }
        // Marker bit ignored: 64..=95 with the marker clear is still the RTCP range.
        assert_eq!(classify(&with(0x80, 72, 8)), PacketKind::Rtcp);
        assert_eq!(classify(&with(0x80, 224, 12)), PacketKind::Rtp);
    }

    #[test]
    fn minimum_lengths() {
        assert_eq!(classify(&[]), PacketKind::Unknown);
        assert_eq!(classify(&[0x80]), PacketKind::Unknown);
        assert_eq!(classify(&with(0x00, 0x01, 19)), PacketKind::Unknown);
        assert_eq!(classify(&with(22, 0xFE, 12)), PacketKind::Unknown);
        assert_eq!(classify(&with(0x80, 111, 11)), PacketKind::Unknown);
        assert_eq!(classify(&with(0x80, 200, 7)), PacketKind::Unknown);
    }
}
