//! Per-leg counters kept on the packet path (plain integers, owned by the shard) and turned
//! into [`crate::api::LegStats`] on request.

use std::time::Instant;

use crate::api::{LegStats, StreamStats};
use crate::wire::rtp::{Clock, SeqTracker, Ssrc};

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

/// One leg's totals, for engine-wide metrics: the shard adds every call's up
/// (`crate::engine::snapshot` re-exports this as its per-leg counter).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LegTotals {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Indexed like [`DROP_REASONS`].
    pub drops: [u64; DROP_REASONS.len()],
}

impl LegTotals {
    pub fn add(&mut self, o: &LegTotals) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
        for (a, b) in self.drops.iter_mut().zip(o.drops.iter()) {
            *a += b;
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
    /// The peer's last report's "fraction lost" (its loss over its last report interval, in
    /// 1/256); `None` before its first report about our stream.
    pub remote_fraction_lost: Option<u8>,
    pub rtt_ms: Option<f64>,
    /// SSRC of the stream we receive (for our report block).
    pub remote_ssrc: Option<Ssrc>,
    /// The peer's last SR: NTP middle 32 bits and when it arrived (for LSR/DLSR).
    pub last_sr: Option<(u32, Instant)>,
}

/// One leg's quality figures as of now, for live sampling (plain numbers: no allocation).
#[derive(Copy, Clone, Debug, Default, PartialEq)]
pub struct LegQuality {
    /// Packets received and lost (sequence gaps) on the stream we receive, so far.
    pub rx_packets: u64,
    pub rx_lost: u64,
    /// RFC 3550 interarrival jitter of the stream we receive.
    pub rx_jitter_ms: f64,
    pub tx_packets: u64,
    /// From the peer's last report block about our stream: its loss over its last report
    /// interval (0..1) and the jitter it measures. `None` before its first report.
    pub tx_loss_ratio: Option<f64>,
    pub tx_jitter_ms: Option<f64>,
    /// The peer's cumulative count of our packets lost (its last report).
    pub tx_lost: u64,
    pub rtt_ms: Option<f64>,
    /// RTCP packets received on this leg (a change means a new report).
    pub rtcp_received: u64,
    /// The peer's address, once known.
    pub remote: Option<std::net::SocketAddr>,
}

impl LegCounters {
    pub fn quality(&self, tx_packets: u64, clock: Clock) -> LegQuality {
        let clock_rate = clock.hz();
        let (lost, jitter_units) = match &self.rx_seq {
            Some(t) => (t.lost().max(0) as u64, t.jitter()),
            None => (0, 0),
        };
        let ms = |units: u32| units as f64 * 1000.0 / clock_rate as f64;
        LegQuality {
            rx_packets: self.rx_packets,
            rx_lost: lost,
            rx_jitter_ms: ms(jitter_units),
            tx_packets,
            tx_loss_ratio: self.remote_fraction_lost.map(|f| f as f64 / 256.0),
            tx_jitter_ms: self
                .remote_fraction_lost
                .map(|_| ms(self.remote_jitter_units)),
            tx_lost: self.remote_lost,
            rtt_ms: self.rtt_ms,
            rtcp_received: self.rtcp_received,
            remote: None,
        }
    }

    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason.index()] += 1;
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }

    pub fn total_dropped(&self) -> u64 {
        self.drops.iter().sum()
    }

    pub fn to_api(&self, sent_packets: u64, sent_bytes: u64, clock: Clock) -> LegStats {
        let clock_rate = clock.hz();
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
