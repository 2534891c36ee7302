//! SRTP and SRTCP transforms applied in place on caller buffers (RFC 3711, RFC 7714).
//!
//! One [`SrtpContext`] protects or unprotects one direction of one leg. Session keys are derived
//! once at setup (RFC 3711 §4.3 with kdr = 0); after that every packet is transformed in
//! the caller's buffer with no heap allocation: the keyed cipher and HMAC states live in the
//! context and are borrowed or copied per packet rather than re-keyed.
//!
//! Receive order of operations, the same for SRTP and SRTCP: parse the header, estimate the packet
//! index, reject replays and too-old packets (no crypto has run yet), authenticate and decrypt,
//! and only then commit the index to the replay window.

mod cipher;
mod context;
mod header;
mod kdf;
mod profile;
mod replay;
mod sdes;
mod streams;

#[cfg(test)]
mod vectors;

pub use context::{SrtpContext, SrtpSession};
pub use profile::{MasterKey, SessionKeys, SrtpProfile};
pub use sdes::{parse_sdes_inline, random_master_key, sdes_inline};

/// Why a packet (or a key) was refused. Every rejection leaves the context's state unchanged.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtpError {
    /// Fewer bytes than the fixed header plus the tag (and SRTCP index) the profile needs.
    #[error("packet too short for its SRTP/SRTCP header and authentication tag")]
    TooShort,
    /// `len` exceeds the buffer, or the buffer has no room after `len` for the tag.
    #[error("buffer too small: the protected packet would not fit (tag/index needs room)")]
    BufferTooSmall,
    /// The authentication tag did not verify: wrong key, corruption or forgery.
    #[error("authentication failed")]
    AuthFailed,
    /// This packet index was already accepted for this SSRC (or already protected, on send).
    #[error("replayed packet: index already seen for this SSRC")]
    Replayed,
    /// The packet index is behind the replay window, so it cannot be checked for replay.
    #[error("packet index older than the replay window")]
    TooOld,
    /// The master key or salt length does not match the profile.
    #[error("master key or salt length does not match the SRTP profile")]
    BadKeyLength,
    /// Not an RTP/RTCP packet: wrong version, or the header claims more bytes than exist.
    #[error("malformed RTP/RTCP header (version or declared header length)")]
    Malformed,
    /// The 48-bit SRTP or 31-bit SRTCP index would wrap: the key must not be used further.
    #[error("packet index space exhausted for this key; rekeying is required")]
    KeyExhausted,
    /// SDES `a=crypto` key parameters that do not parse.
    #[error("malformed SDES key parameters: {0}")]
    SdesMalformed(&'static str),
    /// SDES `a=crypto` key parameters that parse but ask for something we do not implement.
    #[error("unsupported SDES key parameters: {0}")]
    SdesUnsupported(&'static str),
}
