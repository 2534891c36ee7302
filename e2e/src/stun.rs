//! A small STUN codec for the ICE-lite emulator (RFC 8489, RFC 8445 attributes): parse
//! messages, check short-term MESSAGE-INTEGRITY (HMAC-SHA1) and FINGERPRINT (CRC-32), and
//! write Binding requests and responses. Independent of the relay's STUN module on purpose.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha1::Sha1;

pub const MAGIC_COOKIE: u32 = 0x2112_a442;
pub const BINDING_REQUEST: u16 = 0x0001;
pub const BINDING_SUCCESS: u16 = 0x0101;
pub const BINDING_ERROR: u16 = 0x0111;

pub const ATTR_USERNAME: u16 = 0x0006;
pub const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
pub const ATTR_ERROR_CODE: u16 = 0x0009;
pub const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
pub const ATTR_PRIORITY: u16 = 0x0024;
pub const ATTR_USE_CANDIDATE: u16 = 0x0025;
pub const ATTR_SOFTWARE: u16 = 0x8022;
pub const ATTR_FINGERPRINT: u16 = 0x8028;
pub const ATTR_ICE_CONTROLLED: u16 = 0x8029;
pub const ATTR_ICE_CONTROLLING: u16 = 0x802a;

const FINGERPRINT_XOR: u32 = 0x5354_554e;
const HEADER_LEN: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    #[error("shorter than a STUN header")]
    TooShort,
    #[error("not STUN (top bits or magic cookie)")]
    NotStun,
    #[error("length field {0} does not match the datagram")]
    BadLength(usize),
    #[error("attribute runs past the end of the message")]
    TruncatedAttribute,
}

/// A parsed STUN message borrowing the datagram.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    raw: &'a [u8],
    pub msg_type: u16,
    pub transaction_id: [u8; 12],
    /// (type, value, offset of the attribute header in `raw`)
    attrs: Vec<(u16, &'a [u8], usize)>,
}

impl<'a> Message<'a> {
    pub fn parse(raw: &'a [u8]) -> Result<Message<'a>, StunError> {
        let header = raw.get(..HEADER_LEN).ok_or(StunError::TooShort)?;
        let msg_type = u16::from_be_bytes([header[0], header[1]]);
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let cookie = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if msg_type & 0xc000 != 0 || cookie != MAGIC_COOKIE {
            return Err(StunError::NotStun);
        }
        if !len.is_multiple_of(4) || HEADER_LEN + len != raw.len() {
            return Err(StunError::BadLength(len));
        }
        let mut transaction_id = [0u8; 12];
        transaction_id.copy_from_slice(&header[8..20]);
        let mut attrs = Vec::new();
        let mut at = HEADER_LEN;
        while at < raw.len() {
            let h = raw.get(at..at + 4).ok_or(StunError::TruncatedAttribute)?;
            let t = u16::from_be_bytes([h[0], h[1]]);
            let l = usize::from(u16::from_be_bytes([h[2], h[3]]));
            let value = raw
                .get(at + 4..at + 4 + l)
                .ok_or(StunError::TruncatedAttribute)?;
            attrs.push((t, value, at));
            at += 4 + l.div_ceil(4) * 4;
        }
        if at != raw.len() {
            return Err(StunError::TruncatedAttribute);
        }
        Ok(Message {
            raw,
            msg_type,
            transaction_id,
            attrs,
        })
    }

    /// The first attribute of type `t`.
    pub fn attr(&self, t: u16) -> Option<&'a [u8]> {
        self.attrs.iter().find(|a| a.0 == t).map(|a| a.1)
    }

    pub fn has(&self, t: u16) -> bool {
        self.attr(t).is_some()
    }

    pub fn username(&self) -> Option<&'a str> {
        std::str::from_utf8(self.attr(ATTR_USERNAME)?).ok()
    }

    pub fn priority(&self) -> Option<u32> {
        Some(u32::from_be_bytes(
            self.attr(ATTR_PRIORITY)?.try_into().ok()?,
        ))
    }

    pub fn error_code(&self) -> Option<u16> {
        let v = self.attr(ATTR_ERROR_CODE)?;
        let class = u16::from(*v.get(2)? & 0x07);
        Some(class * 100 + u16::from(*v.get(3)?))
    }

    pub fn xor_mapped_address(&self) -> Option<SocketAddr> {
        decode_xor_address(self.attr(ATTR_XOR_MAPPED_ADDRESS)?, &self.transaction_id)
    }

    /// Checks MESSAGE-INTEGRITY with a short-term credential (`key` = the password). Attributes
    /// after it other than FINGERPRINT make the message invalid (RFC 8489 §14.5).
    pub fn check_integrity(&self, key: &[u8]) -> bool {
        let Some(pos) = self
            .attrs
            .iter()
            .position(|a| a.0 == ATTR_MESSAGE_INTEGRITY)
        else {
            return false;
        };
        let (_, value, offset) = self.attrs[pos];
        if value.len() != 20
            || self.attrs[pos + 1..]
                .iter()
                .any(|a| a.0 != ATTR_FINGERPRINT)
        {
            return false;
        }
        let Some(covered) = self.raw.get(..offset) else {
            return false;
        };
        let expected = hmac_sha1(key, covered, offset + 24 - HEADER_LEN);
        // Test equipment: a timing-safe comparison is not needed here.
        expected == value
    }

    /// Checks FINGERPRINT if present; `None` when the message carries none. It must be last.
    pub fn check_fingerprint(&self) -> Option<bool> {
        let pos = self.attrs.iter().position(|a| a.0 == ATTR_FINGERPRINT)?;
        let (_, value, offset) = self.attrs[pos];
        if pos + 1 != self.attrs.len() {
            return Some(false);
        }
        let got = u32::from_be_bytes(value.try_into().ok()?);
        let covered = self.raw.get(..offset)?;
        Some(got == crc_fingerprint(covered, offset + 8 - HEADER_LEN))
    }
}

/// HMAC-SHA1 over `covered` with its header length field replaced by `len`.
fn hmac_sha1(key: &[u8], covered: &[u8], len: usize) -> [u8; 20] {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(&covered[..2]);
    mac.update(&(len as u16).to_be_bytes());
    mac.update(&covered[4..]);
    mac.finalize().into_bytes().into()
}

fn crc_fingerprint(covered: &[u8], len: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&covered[..2]);
    h.update(&(len as u16).to_be_bytes());
    h.update(&covered[4..]);
    h.finalize() ^ FINGERPRINT_XOR
}

fn decode_xor_address(v: &[u8], tid: &[u8; 12]) -> Option<SocketAddr> {
    let family = *v.get(1)?;
    let port = u16::from_be_bytes(v.get(2..4)?.try_into().ok()?) ^ (MAGIC_COOKIE >> 16) as u16;
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    mask[4..].copy_from_slice(tid);
    let ip = match family {
        1 => {
            let b: [u8; 4] = v.get(4..8)?.try_into().ok()?;
            IpAddr::V4(Ipv4Addr::from(std::array::from_fn::<u8, 4, _>(|i| {
                b[i] ^ mask[i]
            })))
        }
        2 => {
            let b: [u8; 16] = v.get(4..20)?.try_into().ok()?;
            IpAddr::V6(Ipv6Addr::from(std::array::from_fn::<u8, 16, _>(|i| {
                b[i] ^ mask[i]
            })))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Builds a STUN message attribute by attribute; MESSAGE-INTEGRITY and FINGERPRINT are
/// computed over what precedes them.
#[derive(Debug, Clone)]
pub struct MessageWriter {
    buf: Vec<u8>,
    /// Padding byte. Receivers ignore padding; RFC 5769's vectors use spaces.
    pad: u8,
}

impl MessageWriter {
    pub fn new(msg_type: u16, transaction_id: [u8; 12]) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&msg_type.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&transaction_id);
        MessageWriter { buf, pad: 0 }
    }

    pub fn with_padding_byte(mut self, pad: u8) -> Self {
        self.pad = pad;
        self
    }

    fn set_len(&mut self) {
        let len = (self.buf.len() - HEADER_LEN) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }

    pub fn attr(mut self, t: u16, value: &[u8]) -> Self {
        self.buf.extend_from_slice(&t.to_be_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(self.pad);
        }
        self.set_len();
        self
    }

    pub fn xor_mapped_address(self, addr: SocketAddr) -> Self {
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&self.buf[8..20]);
        let mut mask = [0u8; 16];
        mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        mask[4..].copy_from_slice(&tid);
        let mut v = vec![0u8];
        let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
        match addr.ip() {
            IpAddr::V4(ip) => {
                v.push(1);
                v.extend_from_slice(&port.to_be_bytes());
                v.extend(ip.octets().iter().zip(&mask).map(|(a, m)| a ^ m));
            }
            IpAddr::V6(ip) => {
                v.push(2);
                v.extend_from_slice(&port.to_be_bytes());
                v.extend(ip.octets().iter().zip(&mask).map(|(a, m)| a ^ m));
            }
        }
        self.attr(ATTR_XOR_MAPPED_ADDRESS, &v)
    }

    pub fn error_code(self, code: u16, reason: &str) -> Self {
        let mut v = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
        v.extend_from_slice(reason.as_bytes());
        self.attr(ATTR_ERROR_CODE, &v)
    }

    pub fn message_integrity(mut self, key: &[u8]) -> Self {
        let len = self.buf.len() + 24 - HEADER_LEN;
        let mac = hmac_sha1(key, &self.buf, len);
        self.buf
            .extend_from_slice(&ATTR_MESSAGE_INTEGRITY.to_be_bytes());
        self.buf.extend_from_slice(&20u16.to_be_bytes());
        self.buf.extend_from_slice(&mac);
        self.set_len();
        self
    }

    pub fn fingerprint(mut self) -> Self {
        let len = self.buf.len() + 8 - HEADER_LEN;
        let crc = crc_fingerprint(&self.buf, len);
        self.buf.extend_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
        self.buf.extend_from_slice(&4u16.to_be_bytes());
        self.buf.extend_from_slice(&crc.to_be_bytes());
        self.set_len();
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// The ICE-lite answer to an authenticated Binding request: XOR-MAPPED-ADDRESS of the request's
/// source, MESSAGE-INTEGRITY with our password, FINGERPRINT.
pub fn binding_success(transaction_id: [u8; 12], mapped: SocketAddr, pwd: &str) -> Vec<u8> {
    MessageWriter::new(BINDING_SUCCESS, transaction_id)
        .xor_mapped_address(mapped)
        .message_integrity(pwd.as_bytes())
        .fingerprint()
        .finish()
}

/// A Binding error response (e.g. 487 Role Conflict, 401 Unauthorized).
pub fn binding_error(transaction_id: [u8; 12], code: u16, reason: &str, pwd: &str) -> Vec<u8> {
    MessageWriter::new(BINDING_ERROR, transaction_id)
        .error_code(code, reason)
        .message_integrity(pwd.as_bytes())
        .fingerprint()
        .finish()
}

/// A connectivity check as a controlling full agent sends it (used by tests that play the
/// relay's part against the emulator).
pub fn binding_request(
    transaction_id: [u8; 12],
    username: &str,
    pwd: &str,
    priority: u32,
    tie_breaker: u64,
    use_candidate: bool,
) -> Vec<u8> {
    let mut w = MessageWriter::new(BINDING_REQUEST, transaction_id)
        .attr(ATTR_USERNAME, username.as_bytes())
        .attr(ATTR_PRIORITY, &priority.to_be_bytes())
        .attr(ATTR_ICE_CONTROLLING, &tie_breaker.to_be_bytes());
    if use_candidate {
        w = w.attr(ATTR_USE_CANDIDATE, &[]);
    }
    w.message_integrity(pwd.as_bytes()).fingerprint().finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    const PWD: &str = "VOkJxbRl1RmTxUk/WvJxBt";
    const TID: [u8; 12] = [
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ];

    // RFC 5769 §2.1
    fn sample_request() -> Vec<u8> {
        hex("00010058 2112a442 b7e7a701 bc34d686 fa87dfae
             80220010 5354554e 20746573 7420636c 69656e74
             00240004 6e0001ff
             80290008 932ff9b1 51263b36
             00060009 6576746a 3a683676 59202020
             00080014 9aeaa70c bfd8cb56 781ef2b5 b2d3f249 c1b571a2
             80280004 e57a3bcf")
    }

    // RFC 5769 §2.2
    fn sample_ipv4_response() -> Vec<u8> {
        hex("0101003c 2112a442 b7e7a701 bc34d686 fa87dfae
             8022000b 74657374 20766563 746f7220
             00200008 0001a147 e112a643
             00080014 2b91f599 fd9e90c3 8c7489f9 2af9ba53 f06be7d7
             80280004 c07d4c96")
    }

    // RFC 5769 §2.3
    fn sample_ipv6_response() -> Vec<u8> {
        hex("01010048 2112a442 b7e7a701 bc34d686 fa87dfae
             8022000b 74657374 20766563 746f7220
             00200014 0002a147 0113a9fa a5d3f179 bc25f4b5 bed2b9d9
             00080014 a382954e 4be67bf1 1784c97c 8292c275 bfe3ed41
             80280004 c8fb0b4c")
    }

    #[test]
    fn rfc5769_request_parses_and_authenticates() {
        let raw = sample_request();
        let m = Message::parse(&raw).unwrap();
        assert_eq!(m.msg_type, BINDING_REQUEST);
        assert_eq!(m.transaction_id, TID);
        assert_eq!(m.username(), Some("evtj:h6vY"));
        assert_eq!(m.priority(), Some(0x6e00_01ff));
        assert!(m.has(ATTR_ICE_CONTROLLED));
        assert!(!m.has(ATTR_USE_CANDIDATE));
        assert!(m.check_integrity(PWD.as_bytes()));
        assert!(!m.check_integrity(b"wrong password"));
        assert_eq!(m.check_fingerprint(), Some(true));
    }

    #[test]
    fn rfc5769_request_is_reproduced_byte_for_byte() {
        let written = MessageWriter::new(BINDING_REQUEST, TID)
            .with_padding_byte(0x20)
            .attr(ATTR_SOFTWARE, b"STUN test client")
            .attr(ATTR_PRIORITY, &0x6e00_01ffu32.to_be_bytes())
            .attr(ATTR_ICE_CONTROLLED, &0x932f_f9b1_5126_3b36u64.to_be_bytes())
            .attr(ATTR_USERNAME, b"evtj:h6vY")
            .message_integrity(PWD.as_bytes())
            .fingerprint()
            .finish();
        assert_eq!(written, sample_request());
    }

    #[test]
    fn rfc5769_responses_parse_and_are_reproduced() {
        for (raw, addr) in [
            (sample_ipv4_response(), "192.0.2.1:32853"),
            (
                sample_ipv6_response(),
                "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
            ),
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            let m = Message::parse(&raw).unwrap();
            assert_eq!(m.msg_type, BINDING_SUCCESS);
            assert_eq!(m.xor_mapped_address(), Some(addr));
            assert!(m.check_integrity(PWD.as_bytes()));
            assert_eq!(m.check_fingerprint(), Some(true));
            let written = MessageWriter::new(BINDING_SUCCESS, TID)
                .with_padding_byte(0x20)
                .attr(ATTR_SOFTWARE, b"test vector")
                .xor_mapped_address(addr)
                .message_integrity(PWD.as_bytes())
                .fingerprint()
                .finish();
            assert_eq!(written, raw);
        }
    }

    #[test]
    fn any_flipped_bit_fails_integrity_or_fingerprint() {
        let raw = sample_request();
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x01;
            let Ok(m) = Message::parse(&bad) else {
                continue;
            };
            let ok = m.check_integrity(PWD.as_bytes()) && m.check_fingerprint() == Some(true);
            assert!(!ok, "flipping a bit of byte {i} went unnoticed");
        }
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        let raw = sample_request();
        for n in 0..raw.len() {
            assert!(Message::parse(&raw[..n]).is_err(), "prefix {n}");
        }
        let mut bad_len = raw.clone();
        bad_len[3] = 0x5c;
        assert!(Message::parse(&bad_len).is_err());
        assert_eq!(Message::parse(&[0x80; 40]).unwrap_err(), StunError::NotStun);
    }

    #[test]
    fn our_responses_and_requests_verify() {
        let from: SocketAddr = "[::1]:5000".parse().unwrap();
        let resp = binding_success(TID, from, "pw==");
        let m = Message::parse(&resp).unwrap();
        assert_eq!(m.xor_mapped_address(), Some(from));
        assert!(m.check_integrity(b"pw=="));
        assert_eq!(m.check_fingerprint(), Some(true));

        let req = binding_request(TID, "a/b:c", "pw==", 1, 2, true);
        let m = Message::parse(&req).unwrap();
        assert!(m.has(ATTR_USE_CANDIDATE) && m.has(ATTR_ICE_CONTROLLING));
        assert!(m.check_integrity(b"pw=="));

        let err = binding_error(TID, 487, "Role Conflict", "pw==");
        let m = Message::parse(&err).unwrap();
        assert_eq!(m.error_code(), Some(487));
        assert!(m.check_integrity(b"pw=="));
    }
}
