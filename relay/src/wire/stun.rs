//! STUN messages (RFC 8489 / RFC 5389) with the ICE attributes of RFC 8445.
//!
//! [`parse`] validates a datagram once (header, magic cookie, length, every attribute's bounds,
//! FINGERPRINT last) and records where the attributes ICE needs are, so the accessors are
//! cheap and nothing is allocated. [`StunWriter`] builds a message into a caller buffer and
//! appends MESSAGE-INTEGRITY and FINGERPRINT in [`StunWriter::finish`].
//!
//! Only short-term credentials matter to ICE: the MESSAGE-INTEGRITY key is the password bytes.
//! Long-term keys (MD5 of `user:realm:pass`) work too if the caller derives them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
pub const HEADER_LEN: usize = 20;
/// The only method ICE uses.
pub const BINDING: u16 = 0x0001;

/// `FINGERPRINT` is the CRC-32 of the message XOR this constant ("STUN").
const FINGERPRINT_XOR: u32 = 0x5354_554E;
const INTEGRITY_LEN: usize = 20;
/// MESSAGE-INTEGRITY attribute including its header.
const INTEGRITY_ATTR_LEN: usize = 4 + INTEGRITY_LEN;
/// FINGERPRINT attribute including its header.
const FINGERPRINT_ATTR_LEN: usize = 8;

/// Attribute types used here (RFC 8489 §18.3, RFC 8445 §16.1).
pub mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    pub const USERHASH: u16 = 0x001E;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const PRIORITY: u16 = 0x0024;
    pub const USE_CANDIDATE: u16 = 0x0025;
    pub const SOFTWARE: u16 = 0x8022;
    pub const FINGERPRINT: u16 = 0x8028;
    pub const ICE_CONTROLLED: u16 = 0x8029;
    pub const ICE_CONTROLLING: u16 = 0x802A;

    /// Types below 0x8000 must be understood (RFC 8489 §14): a message carrying one we do not
    /// know must be rejected.
    pub fn is_comprehension_required(typ: u16) -> bool {
        typ < 0x8000
    }
}

/// Error codes ICE uses (RFC 8489 §14.8, RFC 8445 §7.3.1.1).
pub mod code {
    pub const BAD_REQUEST: u16 = 400;
    pub const UNAUTHORIZED: u16 = 401;
    pub const UNKNOWN_ATTRIBUTE: u16 = 420;
    pub const ROLE_CONFLICT: u16 = 487;
    pub const SERVER_ERROR: u16 = 500;
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    #[error("{0} bytes is shorter than the 20-byte STUN header")]
    TooShort(usize),
    #[error("the two leading bits of a STUN message must be zero")]
    NotStun,
    #[error("magic cookie is {0:#010x}, expected 0x2112a442")]
    BadMagicCookie(u32),
    #[error(
        "length field {field} is not a multiple of 4 or does not match the {actual}-byte datagram"
    )]
    BadLength { field: usize, actual: usize },
    #[error("attribute {typ:#06x} at offset {offset} overruns the message")]
    AttributeOverrun { typ: u16, offset: usize },
    #[error("attribute {typ:#06x} has an invalid {len}-byte value")]
    BadAttribute { typ: u16, len: usize },
    #[error("attribute {typ:#06x} follows FINGERPRINT, which must be the last attribute")]
    AfterFingerprint { typ: u16 },
    #[error("buffer too small for the STUN message")]
    BufferTooSmall,
    #[error("STUN message body would exceed 65535 bytes")]
    MessageTooLong,
    #[error("error code {0} is outside 300..=699")]
    InvalidErrorCode(u16),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum StunClass {
    Request,
    Indication,
    SuccessResponse,
    ErrorResponse,
}

impl StunClass {
    fn bits(self) -> u16 {
        match self {
            StunClass::Request => 0b00,
            StunClass::Indication => 0b01,
            StunClass::SuccessResponse => 0b10,
            StunClass::ErrorResponse => 0b11,
        }
    }

    fn from_bits(bits: u16) -> StunClass {
        match bits & 0b11 {
            0b00 => StunClass::Request,
            0b01 => StunClass::Indication,
            0b10 => StunClass::SuccessResponse,
            _ => StunClass::ErrorResponse,
        }
    }
}

/// The class bits are interleaved with the 12 method bits (RFC 8489 §5):
/// `M11..M7 C1 M6..M4 C0 M3..M0`.
fn encode_type(class: StunClass, method: u16) -> u16 {
    let m = method & 0x0FFF;
    let c = class.bits();
    (m & 0x000F) | ((c & 1) << 4) | ((m & 0x0070) << 1) | ((c & 2) << 7) | ((m & 0x0F80) << 2)
}

fn decode_type(t: u16) -> (StunClass, u16) {
    let class = StunClass::from_bits(((t >> 4) & 1) | ((t >> 7) & 2));
    let method = (t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80);
    (class, method)
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes(s.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(s.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    Some(u64::from_be_bytes(s.try_into().ok()?))
}

/// Cheap pre-check: could `buf` be a STUN message (RFC 7983 first byte, length, cookie)?
pub fn is_stun(buf: &[u8]) -> bool {
    buf.len() >= HEADER_LEN
        && buf.first().is_some_and(|b| b & 0xC0 == 0)
        && be32(buf, 4) == Some(MAGIC_COOKIE)
}

/// A validated STUN message borrowing the datagram it was parsed from.
#[derive(Copy, Clone, Debug)]
pub struct StunMessage<'a> {
    buf: &'a [u8],
    class: StunClass,
    method: u16,
    username: Option<(usize, usize)>,
    software: Option<(usize, usize)>,
    priority: Option<u32>,
    use_candidate: bool,
    ice_controlling: Option<u64>,
    ice_controlled: Option<u64>,
    xor_mapped: Option<SocketAddr>,
    error: Option<(u16, usize, usize)>,
    integrity_at: Option<usize>,
    fingerprint_at: Option<usize>,
    unknown_required: Option<u16>,
}

/// Parses and validates a STUN message. Never panics; see [`StunError`] for what is rejected.
///
/// Attributes after MESSAGE-INTEGRITY other than FINGERPRINT are skipped (RFC 8489 §14.5),
/// repeated attributes keep their first value, unknown comprehension-optional attributes are
/// ignored, and the first unknown comprehension-required one is reported by
/// [`StunMessage::unknown_comprehension_required`] for the caller to reject.
pub fn parse(buf: &[u8]) -> Result<StunMessage<'_>, StunError> {
    if buf.len() < HEADER_LEN {
        return Err(StunError::TooShort(buf.len()));
    }
    let typ = be16(buf, 0).ok_or(StunError::TooShort(buf.len()))?;
    if typ & 0xC000 != 0 {
        return Err(StunError::NotStun);
    }
    let field = usize::from(be16(buf, 2).ok_or(StunError::TooShort(buf.len()))?);
    let cookie = be32(buf, 4).ok_or(StunError::TooShort(buf.len()))?;
    if cookie != MAGIC_COOKIE {
        return Err(StunError::BadMagicCookie(cookie));
    }
    if field % 4 != 0 || HEADER_LEN + field != buf.len() {
        return Err(StunError::BadLength {
            field,
            actual: buf.len(),
        });
    }
    let (class, method) = decode_type(typ);
    let mut tid = [0u8; 12];
    tid.copy_from_slice(
        buf.get(8..HEADER_LEN)
            .ok_or(StunError::TooShort(buf.len()))?,
    );

    let mut msg = StunMessage {
        buf,
        class,
        method,
        username: None,
        software: None,
        priority: None,
        use_candidate: false,
        ice_controlling: None,
        ice_controlled: None,
        xor_mapped: None,
        error: None,
        integrity_at: None,
        fingerprint_at: None,
        unknown_required: None,
    };

    let mut off = HEADER_LEN;
    while off < buf.len() {
        let overrun = |typ| StunError::AttributeOverrun { typ, offset: off };
        let typ = be16(buf, off).ok_or(overrun(0))?;
        let len = usize::from(be16(buf, off + 2).ok_or(overrun(typ))?);
        let start = off + 4;
        let end = start + len;
        let next = start + len.next_multiple_of(4);
        if next > buf.len() {
            return Err(overrun(typ));
        }
        let value = buf.get(start..end).ok_or(overrun(typ))?;
        let bad = StunError::BadAttribute { typ, len };
        if msg.fingerprint_at.is_some() {
            return Err(StunError::AfterFingerprint { typ });
        }
        if msg.integrity_at.is_some() && typ != attr::FINGERPRINT {
            off = next;
            continue;
        }
        match typ {
            attr::USERNAME => {
                msg.username.get_or_insert((start, len));
            }
            attr::SOFTWARE => {
                msg.software.get_or_insert((start, len));
            }
            attr::PRIORITY => {
                let v = (len == 4).then(|| be32(value, 0)).flatten().ok_or(bad)?;
                msg.priority.get_or_insert(v);
            }
            attr::USE_CANDIDATE => {
                if len != 0 {
                    return Err(bad);
                }
                msg.use_candidate = true;
            }
            attr::ICE_CONTROLLING => {
                let v = (len == 8).then(|| be64(value, 0)).flatten().ok_or(bad)?;
                msg.ice_controlling.get_or_insert(v);
            }
            attr::ICE_CONTROLLED => {
                let v = (len == 8).then(|| be64(value, 0)).flatten().ok_or(bad)?;
                msg.ice_controlled.get_or_insert(v);
            }
            attr::XOR_MAPPED_ADDRESS => {
                let v = decode_xor_address(value, &tid).ok_or(bad)?;
                msg.xor_mapped.get_or_insert(v);
            }
            attr::ERROR_CODE => {
                let (Some(&class), Some(&number)) = (value.get(2), value.get(3)) else {
                    return Err(bad);
                };
                let class = u16::from(class & 0x07);
                let number = u16::from(number);
                if !(3..=6).contains(&class) || number >= 100 {
                    return Err(bad);
                }
                msg.error
                    .get_or_insert((class * 100 + number, start + 4, len - 4));
            }
            attr::MESSAGE_INTEGRITY => {
                if len != INTEGRITY_LEN {
                    return Err(bad);
                }
                msg.integrity_at = Some(off);
            }
            attr::FINGERPRINT => {
                if len != 4 {
                    return Err(bad);
                }
                msg.fingerprint_at = Some(off);
            }
            // Known, not interpreted here.
            attr::MAPPED_ADDRESS
            | attr::UNKNOWN_ATTRIBUTES
            | attr::REALM
            | attr::NONCE
            | attr::MESSAGE_INTEGRITY_SHA256
            | attr::PASSWORD_ALGORITHM
            | attr::USERHASH => {}
            other => {
                if attr::is_comprehension_required(other) {
                    msg.unknown_required.get_or_insert(other);
                }
            }
        }
        off = next;
    }
    Ok(msg)
}

fn decode_xor_address(v: &[u8], tid: &[u8; 12]) -> Option<SocketAddr> {
    let family = *v.get(1)?;
    let port = be16(v, 2)? ^ (MAGIC_COOKIE >> 16) as u16;
    let ip = match (family, v.len()) {
        (0x01, 8) => IpAddr::V4(Ipv4Addr::from(be32(v, 4)? ^ MAGIC_COOKIE)),
        (0x02, 20) => {
            let mut octets: [u8; 16] = v.get(4..20)?.try_into().ok()?;
            let mask = xor_mask(tid);
            for (o, m) in octets.iter_mut().zip(mask) {
                *o ^= m;
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The 16 bytes an IPv6 address is XORed with: magic cookie then transaction ID.
fn xor_mask(tid: &[u8; 12]) -> [u8; 16] {
    let mut mask = [0u8; 16];
    let (cookie, rest) = mask.split_at_mut(4);
    cookie.copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    rest.copy_from_slice(tid);
    mask
}

impl<'a> StunMessage<'a> {
    /// The whole message as parsed.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    pub fn class(&self) -> StunClass {
        self.class
    }

    pub fn method(&self) -> u16 {
        self.method
    }

    pub fn transaction_id(&self) -> [u8; 12] {
        let mut tid = [0u8; 12];
        if let Some(s) = self.buf.get(8..HEADER_LEN) {
            tid.copy_from_slice(s);
        }
        tid
    }

    fn slice(&self, range: Option<(usize, usize)>) -> Option<&'a [u8]> {
        let (start, len) = range?;
        self.buf.get(start..start.checked_add(len)?)
    }

    pub fn username(&self) -> Option<&'a [u8]> {
        self.slice(self.username)
    }

    pub fn software(&self) -> Option<&'a [u8]> {
        self.slice(self.software)
    }

    pub fn priority(&self) -> Option<u32> {
        self.priority
    }

    pub fn use_candidate(&self) -> bool {
        self.use_candidate
    }

    pub fn ice_controlling(&self) -> Option<u64> {
        self.ice_controlling
    }

    pub fn ice_controlled(&self) -> Option<u64> {
        self.ice_controlled
    }

    pub fn xor_mapped_address(&self) -> Option<SocketAddr> {
        self.xor_mapped
    }

    /// The error code (300–699) and reason phrase of an ERROR-CODE attribute.
    pub fn error_code(&self) -> Option<(u16, &'a [u8])> {
        let (code, start, len) = self.error?;
        Some((code, self.buf.get(start..start.checked_add(len)?)?))
    }

    /// The first unknown comprehension-required attribute type, if any. RFC 8489 §6.3 says to
    /// answer such a request with 420 and to treat such a response as failed.
    pub fn unknown_comprehension_required(&self) -> Option<u16> {
        self.unknown_required
    }

    pub fn has_integrity(&self) -> bool {
        self.integrity_at.is_some()
    }

    pub fn has_fingerprint(&self) -> bool {
        self.fingerprint_at.is_some()
    }

    /// True when FINGERPRINT is present and matches the CRC-32 of everything before it.
    pub fn check_fingerprint(&self) -> bool {
        let Some(at) = self.fingerprint_at else {
            return false;
        };
        let (Some(covered), Some(value)) = (self.buf.get(..at), be32(self.buf, at + 4)) else {
            return false;
        };
        crc32fast::hash(covered) ^ FINGERPRINT_XOR == value
    }

    /// True when MESSAGE-INTEGRITY is present and is the HMAC-SHA1, keyed by `key`, of the
    /// message up to it, with the length field counting up to the end of MESSAGE-INTEGRITY
    /// (so a following FINGERPRINT does not change it). Constant-time comparison.
    pub fn verify_integrity(&self, key: &[u8]) -> bool {
        let Some(at) = self.integrity_at else {
            return false;
        };
        let (Some(type_bytes), Some(rest), Some(tag)) = (
            self.buf.get(..2),
            self.buf.get(4..at),
            self.buf.get(at + 4..at + INTEGRITY_ATTR_LEN),
        ) else {
            return false;
        };
        let Ok(covered_len) = u16::try_from(at + INTEGRITY_ATTR_LEN - HEADER_LEN) else {
            return false;
        };
        let Ok(mut mac) = HmacSha1::new_from_slice(key) else {
            return false;
        };
        mac.update(type_bytes);
        mac.update(&covered_len.to_be_bytes());
        mac.update(rest);
        mac.verify_slice(tag).is_ok()
    }
}

/// Writes a STUN message into a caller buffer, attribute by attribute, without allocating.
///
/// ```
/// # use relay::wire::stun::*;
/// let mut buf = [0u8; 256];
/// let mut w = StunWriter::new(&mut buf, StunClass::Request, BINDING, [7; 12])?;
/// w.username(b"remote:local")?.priority(0x6e00_01ff)?.use_candidate()?;
/// let len = w.finish(Some(b"remote-password"), true)?;
/// let msg = parse(&buf[..len])?;
/// assert!(msg.verify_integrity(b"remote-password") && msg.check_fingerprint());
/// # Ok::<(), StunError>(())
/// ```
pub struct StunWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
    tid: [u8; 12],
    padding: u8,
}

impl<'a> StunWriter<'a> {
    pub fn new(
        buf: &'a mut [u8],
        class: StunClass,
        method: u16,
        tid: [u8; 12],
    ) -> Result<Self, StunError> {
        let header = buf.get_mut(..HEADER_LEN).ok_or(StunError::BufferTooSmall)?;
        let (typ, rest) = header.split_at_mut(2);
        typ.copy_from_slice(&encode_type(class, method).to_be_bytes());
        let (len, rest) = rest.split_at_mut(2);
        len.copy_from_slice(&0u16.to_be_bytes());
        let (cookie, id) = rest.split_at_mut(4);
        cookie.copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        id.copy_from_slice(&tid);
        Ok(StunWriter {
            buf,
            len: HEADER_LEN,
            tid,
            padding: 0,
        })
    }

    /// The byte used to pad attribute values to 4 bytes (default 0). Receivers ignore it; the
    /// RFC 5769 vectors pad with spaces, and MESSAGE-INTEGRITY covers padding.
    pub fn padding_byte(&mut self, byte: u8) -> &mut Self {
        self.padding = byte;
        self
    }

    /// Bytes written so far (header included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == HEADER_LEN
    }

    /// Appends an attribute header and padding, returning the value bytes to fill.
    fn begin(&mut self, typ: u16, value_len: usize) -> Result<&mut [u8], StunError> {
        let len16 = u16::try_from(value_len).map_err(|_| StunError::MessageTooLong)?;
        let start = self.len;
        let end = start + 4 + value_len.next_multiple_of(4);
        if end - HEADER_LEN > usize::from(u16::MAX) {
            return Err(StunError::MessageTooLong);
        }
        let attr = self
            .buf
            .get_mut(start..end)
            .ok_or(StunError::BufferTooSmall)?;
        let (header, body) = attr.split_at_mut(4);
        let (t, l) = header.split_at_mut(2);
        t.copy_from_slice(&typ.to_be_bytes());
        l.copy_from_slice(&len16.to_be_bytes());
        let (value, pad) = body.split_at_mut(value_len);
        pad.fill(self.padding);
        self.len = end;
        Ok(value)
    }

    /// Appends any attribute.
    pub fn attribute(&mut self, typ: u16, value: &[u8]) -> Result<&mut Self, StunError> {
        self.begin(typ, value.len())?.copy_from_slice(value);
        Ok(self)
    }

    pub fn username(&mut self, username: &[u8]) -> Result<&mut Self, StunError> {
        self.attribute(attr::USERNAME, username)
    }

    pub fn software(&mut self, software: &[u8]) -> Result<&mut Self, StunError> {
        self.attribute(attr::SOFTWARE, software)
    }

    pub fn priority(&mut self, priority: u32) -> Result<&mut Self, StunError> {
        self.attribute(attr::PRIORITY, &priority.to_be_bytes())
    }

    pub fn use_candidate(&mut self) -> Result<&mut Self, StunError> {
        self.attribute(attr::USE_CANDIDATE, &[])
    }

    pub fn ice_controlling(&mut self, tiebreaker: u64) -> Result<&mut Self, StunError> {
        self.attribute(attr::ICE_CONTROLLING, &tiebreaker.to_be_bytes())
    }

    pub fn ice_controlled(&mut self, tiebreaker: u64) -> Result<&mut Self, StunError> {
        self.attribute(attr::ICE_CONTROLLED, &tiebreaker.to_be_bytes())
    }

    pub fn xor_mapped_address(&mut self, addr: SocketAddr) -> Result<&mut Self, StunError> {
        let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
        let mut value = [0u8; 20];
        let (head, ip) = value.split_at_mut(4);
        head.copy_from_slice(&[0, 0, 0, 0]);
        let (fam, p) = head.split_at_mut(2);
        p.copy_from_slice(&port.to_be_bytes());
        let len = match addr.ip() {
            IpAddr::V4(v4) => {
                fam.copy_from_slice(&[0, 0x01]);
                let x = u32::from(v4) ^ MAGIC_COOKIE;
                ip.get_mut(..4)
                    .ok_or(StunError::BufferTooSmall)?
                    .copy_from_slice(&x.to_be_bytes());
                8
            }
            IpAddr::V6(v6) => {
                fam.copy_from_slice(&[0, 0x02]);
                let mask = xor_mask(&self.tid);
                for ((o, a), m) in ip.iter_mut().zip(v6.octets()).zip(mask) {
                    *o = a ^ m;
                }
                20
            }
        };
        self.attribute(
            attr::XOR_MAPPED_ADDRESS,
            value.get(..len).ok_or(StunError::BufferTooSmall)?,
        )
    }

    pub fn error_code(&mut self, code: u16, reason: &str) -> Result<&mut Self, StunError> {
        if !(300..=699).contains(&code) {
            return Err(StunError::InvalidErrorCode(code));
        }
        let value = self.begin(attr::ERROR_CODE, 4 + reason.len())?;
        let (head, text) = value.split_at_mut(4);
        // Both fit a byte: code / 100 is 3..=6 and code % 100 < 100.
        head.copy_from_slice(&[0, 0, (code / 100) as u8, (code % 100) as u8]);
        text.copy_from_slice(reason.as_bytes());
        Ok(self)
    }

    fn set_length(&mut self, body_len: usize) -> Result<(), StunError> {
        let v = u16::try_from(body_len).map_err(|_| StunError::MessageTooLong)?;
        self.buf
            .get_mut(2..4)
            .ok_or(StunError::BufferTooSmall)?
            .copy_from_slice(&v.to_be_bytes());
        Ok(())
    }

    /// Appends MESSAGE-INTEGRITY (HMAC-SHA1 keyed by `integrity_key`) and/or FINGERPRINT,
    /// patching the length field before each as RFC 8489 §14.5/§14.7 require, and returns the
    /// total message length.
    pub fn finish(
        mut self,
        integrity_key: Option<&[u8]>,
        fingerprint: bool,
    ) -> Result<usize, StunError> {
        if let Some(key) = integrity_key {
            let end = self.len + INTEGRITY_ATTR_LEN;
            if end > self.buf.len() {
                return Err(StunError::BufferTooSmall);
            }
            self.set_length(end - HEADER_LEN)?;
            let mut mac = HmacSha1::new_from_slice(key).map_err(|_| StunError::BufferTooSmall)?;
            mac.update(self.buf.get(..self.len).ok_or(StunError::BufferTooSmall)?);
            let tag = mac.finalize().into_bytes();
            self.begin(attr::MESSAGE_INTEGRITY, INTEGRITY_LEN)?
                .copy_from_slice(&tag);
        }
        if fingerprint {
            let end = self.len + FINGERPRINT_ATTR_LEN;
            if end > self.buf.len() {
                return Err(StunError::BufferTooSmall);
            }
            self.set_length(end - HEADER_LEN)?;
            let crc = crc32fast::hash(self.buf.get(..self.len).ok_or(StunError::BufferTooSmall)?)
                ^ FINGERPRINT_XOR;
            self.begin(attr::FINGERPRINT, 4)?
                .copy_from_slice(&crc.to_be_bytes());
        }
        self.set_length(self.len - HEADER_LEN)?;
        Ok(self.len)
    }
}

#[cfg(test)]
mod tests;
