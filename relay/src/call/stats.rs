//! Per-leg counters kept on the packet path (plain integers, owned by the shard) and turned
//! into [`crate::api::LegStats`] on request.

use std::time::Instant;

use crate::api::{LegStats, StreamStats};
use crate::wire::rtp::SeqTracker;

/// Why a datagram was dropped. Each is counted separately so an operator can tell a hostile
/// flood (bad source) from a broken peer (malformed, auth) from a setup race (not ready).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Not from the ICE-selected / SDP / latched address.
    BadSource,
    /// Not parseable as what its first byte claims (or an unknown first byte).
    Malformed,
    /// SRTP/SRTCP authentication failed.
    AuthFailed,
    /// SRTP replay window rejected it (duplicate or too old).
    Replayed,
    /// A payload type the leg did not negotiate.
    UnknownPayloadType,
    /// Keys or destination not known yet (media before ICE/DTLS, or no internal address).
    NotReady,
    /// A protocol the leg does not speak (e.g. DTLS on a plain-RTP leg).
    Unexpected,
    /// From a source the call does not know, over its per-source budget: dropped by the
    /// shard before any parsing (counted per shard, not per call).
    RateLimited,
    /// DTLS on the WhatsApp leg after its handshake state was freed: a final flight the peer
    /// retransmitted because ours was slow, or a close_notify (see `call.keep_dtls_state`).
    /// Harmless: the keys are in use and nothing needs answering.
    LateDtls,
    /// Internal media that arrived after silence fill had already stood in for its 20 ms
    /// (jitter longer than the fill's wait): sending it too would put two frames in one slot
    /// and run WhatsApp's clock ahead of real time.
    Late,
}

pub const DROP_REASONS: [DropReason; 10] = [
    DropReason::BadSource,
    DropReason::Malformed,
    DropReason::AuthFailed,
    DropReason::Replayed,
    DropReason::UnknownPayloadType,
    DropReason::NotReady,
    DropReason::Unexpected,
    DropReason::RateLimited,
    DropReason::LateDtls,
    DropReason::Late,
];

impl DropReason {
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::BadSource => "bad_source",
            DropReason::Malformed => "malformed",
            DropReason::AuthFailed => "auth_failed",
            DropReason::Replayed => "replayed",
            DropReason::UnknownPayloadType => "unknown_payload_type",
            DropReason::NotReady => "not_ready",
            DropReason::Unexpected => "unexpected",
            DropReason::RateLimited => "rate_limited",
            DropReason::LateDtls => "late_dtls",
            DropReason::Late => "late",
        }
    }
}

#[derive(Debug, Default)]
pub struct LegCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rtcp_received: u64,
    pub rtcp_sent: u64,
    pub drops: [u64; DROP_REASONS.len()],
    /// Sequence/jitter tracking of the stream we receive on this leg.
    pub rx_seq: Option<SeqTracker>,
    /// Loss and jitter the peer reports about what we send (RTCP report blocks).
    pub remote_lost: u64,
    pub remote_jitter_units: u32,
    pub rtt_ms: Option<f64>,
    /// SSRC of the stream we receive (for our report block).
    pub remote_ssrc: Option<u32>,
    /// The peer's last SR: NTP middle 32 bits and when it arrived (for LSR/DLSR).
    pub last_sr: Option<(u32, Instant)>,
}

impl LegCounters {
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason.index()] += 1;
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }

    pub fn total_dropped(&self) -> u64 {
        self.drops.iter().sum()
    }

    pub fn to_api(&self, sent_packets: u64, sent_bytes: u64, clock_rate: u32) -> LegStats {
        let (lost, jitter_units) = match &self.rx_seq {
            Some(t) => (t.lost().max(0) as u64, t.jitter()),
            None => (0, 0),
        };
        LegStats {
            received: StreamStats {
                packets: self.rx_packets,
                bytes: self.rx_bytes,
                lost,
                jitter_ms: jitter_units as f64 * 1000.0 / clock_rate as f64,
            },
            sent: StreamStats {
                packets: sent_packets,
                bytes: sent_bytes,
                lost: self.remote_lost,
                jitter_ms: self.remote_jitter_units as f64 * 1000.0 / clock_rate as f64,
            },
            dropped: self.total_dropped(),
            auth_failures: self.dropped(DropReason::AuthFailed),
            rtt_ms: self.rtt_ms,
        }
    }
}
