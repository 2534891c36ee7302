//! What the generator counts. Each generator thread accumulates a [`Totals`] locally (no lock
//! per packet) and adds it into a shared one every [`FLUSH_EVERY`]; the sampler takes the
//! shared totals once a second. Everything here is a counter or a histogram, so totals of
//! threads and of intervals simply add up.

use std::time::Duration;

use crate::hist::Histogram;

/// How often a generator thread publishes its local counters.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// One direction of media through the relay.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DirTotals {
    /// Stamped media packets the sending peer handed to the kernel.
    pub sent: u64,
    /// Stamped media packets the receiving peer got (and, for SRTP, authenticated).
    pub received: u64,
    /// Per stream, the highest stamp counter seen + 1 (counters start at 0): what should have
    /// arrived by now if nothing was lost. `expected - received` is the loss.
    pub expected: u64,
    /// Packets whose counter was not above the highest seen (late or duplicated).
    pub reordered: u64,
    /// One-way latency: receive time minus the send time stamped in the payload (µs).
    pub latency: Histogram,
    /// RFC 3550 interarrival jitter of each stream when its call ended (µs).
    pub jitter: Histogram,
}

impl DirTotals {
    pub fn merge(&mut self, o: &DirTotals) {
        self.sent += o.sent;
        self.received += o.received;
        self.expected += o.expected;
        self.reordered += o.reordered;
        self.latency.merge(&o.latency);
        self.jitter.merge(&o.jitter);
    }

    /// Lost packets by stamp counters (what is missing below the highest counter seen).
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.received)
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    /// WhatsApp → internal: Meta peer → relay → SIP peer.
    pub up: DirTotals,
    /// Internal → WhatsApp: SIP peer → relay → Meta peer.
    pub down: DirTotals,
    /// Create request sent → first stamped media received on both sides (µs).
    pub setup: Histogram,
    /// Calls whose media flowed both ways.
    pub setups: u64,
    /// Packets the relay generated toward Meta (silence fill, not stamped by us).
    pub fill_received: u64,
    pub rtcp_sent: u64,
    pub rtcp_received: u64,
    /// SRTP/SRTCP packets that failed to unprotect at the Meta peer.
    pub srtp_errors: u64,
    /// Datagrams from an address no call of this thread expects.
    pub unknown_source: u64,
    /// Datagrams the kernel refused to send (never retried).
    pub send_errors: u64,
    /// How late media ticks ran against their 20 ms schedule (µs): the generator's own health.
    pub tick_lag: Histogram,
    /// Ticks skipped because the generator fell more than 100 ms behind.
    pub ticks_skipped: u64,
}

impl Totals {
    pub fn merge(&mut self, o: &Totals) {
        self.up.merge(&o.up);
        self.down.merge(&o.down);
        self.setup.merge(&o.setup);
        self.setups += o.setups;
        self.fill_received += o.fill_received;
        self.rtcp_sent += o.rtcp_sent;
        self.rtcp_received += o.rtcp_received;
        self.srtp_errors += o.srtp_errors;
        self.unknown_source += o.unknown_source;
        self.send_errors += o.send_errors;
        self.tick_lag.merge(&o.tick_lag);
        self.ticks_skipped += o.ticks_skipped;
    }
}
