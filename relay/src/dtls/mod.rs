//! DTLS-SRTP (RFC 5764) driver around `dimpl`: certificate, fingerprint, key export.
//!
//! [`DtlsDriver`] is a sans-IO state machine for one call's WhatsApp leg: feed it datagrams
//! that demux as DTLS (first byte 20..=63, RFC 7983) and timer ticks, drain the datagrams it
//! wants sent, and wait for [`DtlsEvent::Connected`], which carries the SRTP keys. The peer
//! certificate is checked against the fingerprint from the remote SDP before any key leaves.
//!
//! Retransmission starts at [`DtlsConfig::flight_start_rto`] (50 ms by default) instead of the
//! RFC 6347 1 s: a lost first ClientHello otherwise costs a second of audio, and the 1/2/4 s
//! backoff is what makes other stacks clip the first ~3 s of a WhatsApp call.

mod driver;
mod fingerprint;
mod identity;

use std::time::Duration;

pub use driver::DtlsDriver;
pub use fingerprint::Fingerprint;
pub use identity::DtlsIdentity;

use crate::srtp::{SessionKeys, SrtpProfile};

/// Which side of the DTLS handshake we take. SDP `a=setup:active` means [`DtlsRole::Client`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum DtlsRole {
    Client,
    Server,
}

/// Timers and sizes for one handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DtlsConfig {
    /// First retransmission timeout of every flight; doubles per retry (±25% jitter).
    pub flight_start_rto: Duration,
    /// Retransmissions per flight (the initial send not counted).
    pub flight_retries: usize,
    /// The whole handshake must finish within this, counted from [`DtlsDriver::start`] (or,
    /// for a server that was not started, from the first datagram).
    pub handshake_timeout: Duration,
    /// Largest datagram the driver produces. Callers' transmit buffers must hold this much.
    pub mtu: usize,
}

impl Default for DtlsConfig {
    fn default() -> Self {
        DtlsConfig {
            flight_start_rto: Duration::from_millis(50),
            // 50 ms doubling 8 times spans ~25 s, so `handshake_timeout` is what ends a dead
            // handshake, while early retries stay dense.
            flight_retries: 8,
            handshake_timeout: Duration::from_secs(10),
            // dimpl's default; leaves room for IPv6 + UDP + TURN-like overhead under 1280.
            mtu: 1150,
        }
    }
}

/// What the driver reports. `Connected` and `Failed` are terminal for the handshake; `Closed`
/// means the peer sent close_notify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DtlsEvent {
    Connected {
        keys: SessionKeys,
        profile: SrtpProfile,
    },
    Failed(DtlsFailure),
    Closed,
}

/// Why a handshake failed. The call maps these to Meta's setup-failure codes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DtlsFailure {
    #[error("peer certificate does not match the SDP fingerprint")]
    FingerprintMismatch,
    #[error("DTLS handshake timed out")]
    Timeout,
    #[error("DTLS protocol error: {0}")]
    Protocol(String),
}

/// Errors from setting up DTLS (not from a handshake: those are [`DtlsFailure`] events).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DtlsError {
    #[error("certificate generation failed: {0}")]
    Certificate(String),
    #[error("bad fingerprint {0}")]
    BadFingerprint(String),
}
