//! RTCP per leg: the relay terminates RTCP (it rewrites SSRCs and numbering, so the peers'
//! reports would describe streams the other side never sees) and sends its own SR/RR + SDES
//! on each leg every `rtcp_interval`. Toward WhatsApp this doubles as the keepalive Meta
//! watches for (it treats missing RTCP as a dead agent).

use std::time::{Duration, Instant};

use crate::call::Call;
use crate::call::stats::LegCounters;
use crate::call::{INT, WA};
use crate::net::Outbox;
use crate::wire::rtcp::{self, ReportBlock, RtcpPacket};
use crate::wire::rtp::Ssrc;

/// Enough for SR + one report block + SDES CNAME + BYE, plus SRTCP overhead.
const RTCP_BUF: usize = 256;

impl Call {
    /// Take what we need from a peer's compound RTCP: its SR (for our LSR/DLSR) and the report
    /// block about our stream (loss, jitter, RTT).
    pub(super) fn read_reports(
        counters: &mut LegCounters,
        our_ssrc: Ssrc,
        pkt: &[u8],
        now: Instant,
        now_ntp: u64,
    ) {
        counters.rtcp_received += 1;
        for p in rtcp::iter(pkt) {
            let Ok(p) = p else {
                counters.drop(crate::call::stats::DropReason::Malformed);
                return;
            };
            let blocks = match p {
                RtcpPacket::SenderReport(sr) => {
                    counters.last_sr = Some((rtcp::ntp_middle32(sr.ntp), now));
                    sr.reports
                }
                RtcpPacket::ReceiverReport { reports, .. } => reports,
                _ => continue,
            };
            for b in blocks {
                if b.ssrc == our_ssrc {
                    counters.remote_lost = b.cumulative_lost.max(0) as u64;
                    counters.remote_jitter_units = b.jitter;
                    counters.remote_fraction_lost = Some(b.fraction_lost);
                    if let Some(rtt) =
                        rtcp::rtt_from_report(rtcp::ntp_middle32(now_ntp), b.lsr, b.dlsr)
                    {
                        counters.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
                    }
                }
            }
        }
    }

    pub(super) fn send_due_rtcp(&mut self, now: Instant, out: &mut impl Outbox) {
        for leg in 0..self.legs.len() {
            if self.legs[leg].next_rtcp.is_some_and(|t| t <= now) {
                self.legs[leg].next_rtcp = Some(now + rtcp_delay(self.cfg.rtcp_interval));
                // Toward WhatsApp only once media may flow (the gate); elsewhere once the
                // peer's address (and keys) are known: `send_rtcp` checks.
                if leg != WA || self.wa_can_send() {
                    self.send_rtcp(now, leg, false, out);
                }
            }
        }
    }

    /// RTCP BYE on both legs when the call ends by request.
    pub(super) fn send_bye(&mut self, now: Instant, out: &mut impl Outbox) {
        if self.wa_can_send() {
            self.send_rtcp(now, WA, true, out);
        }
        if self.legs[INT].tx.packets > 0 {
            self.send_rtcp(now, INT, true, out);
        }
    }

    /// Wall-clock NTP time for `now`, derived from the call's creation so the state machine
    /// never reads the clock itself.
    pub(super) fn ntp_at(&self, now: Instant) -> u64 {
        rtcp::ntp_from_system_time(
            self.created_at + now.saturating_duration_since(self.created_mono),
        )
    }

    /// Write and send one compound report on leg `leg` (an index into the call's legs), if
    /// its peer's address (and, for a secure leg, its keys) are known.
    fn send_rtcp(&mut self, now: Instant, leg: usize, bye: bool, out: &mut impl Outbox) {
        let ntp = self.ntp_at(now);
        let Some(leg) = self.legs.get_mut(leg) else {
            return;
        };
        let Some(to) = leg.send_target() else {
            return;
        };
        let dest = (leg.via, to);
        let (stream, counters, srtp, cname) =
            (&leg.tx, &mut leg.counters, leg.srtp.as_mut(), &leg.cname);
        let mut block = [ReportBlock::default(); 1];
        let reports: &[ReportBlock] = match report_block(counters, now) {
            Some(b) => {
                block[0] = b;
                &block
            }
            None => &[],
        };
        let mut buf = [0u8; RTCP_BUF];
        let mut n = 0;
        let first = if stream.packets > 0 {
            rtcp::write_sr(
                &mut buf,
                stream.ssrc(),
                ntp,
                stream.ts_at(now),
                stream.packets as u32,
                stream.octets as u32,
                reports,
            )
        } else {
            rtcp::write_rr(&mut buf, stream.ssrc(), reports)
        };
        let Ok(len) = first else { return };
        n += len;
        if let Ok(len) = rtcp::write_sdes_cname(&mut buf[n..], stream.ssrc(), cname.as_bytes()) {
            n += len;
        }
        if bye && let Ok(len) = rtcp::write_bye(&mut buf[n..], stream.ssrc()) {
            n += len;
        }
        let n = match srtp {
            Some(s) => match s.tx.protect_rtcp(&mut buf, n) {
                Ok(n) => n,
                Err(_) => return,
            },
            None => n,
        };
        counters.rtcp_sent += 1;
        out.push(dest.0, dest.1, &buf[..n]);
    }
}

/// The report block about the stream we receive on a leg (RFC 3550 §6.4.1), if any.
fn report_block(c: &mut LegCounters, now: Instant) -> Option<ReportBlock> {
    let ssrc = c.remote_ssrc?;
    let (lsr, dlsr) = match c.last_sr {
        Some((mid, at)) => (mid, dlsr_units(now.saturating_duration_since(at))),
        None => (0, 0),
    };
    Some(c.rx_seq.as_mut()?.report_block(ssrc, lsr, dlsr))
}

/// DLSR is in units of 1/65536 s.
fn dlsr_units(d: Duration) -> u32 {
    (d.as_secs_f64() * 65536.0) as u32
}

/// The next report after `interval`, uniformly random in [0.5, 1.0] × `interval`.
///
/// RFC 3550 §6.3.1 randomises the interval so that calls set up together do not report
/// together: on a fixed period, hundreds of calls created in the same second all send SR/RR on
/// both legs within the same millisecond every period, and the media queued behind that burst
/// shows up as latency spikes. The upper bound stays at `interval` (not RFC 3550's 1.5×)
/// because reports toward WhatsApp are also its keepalive: at least one per interval.
fn rtcp_delay(interval: std::time::Duration) -> std::time::Duration {
    interval.mul_f64(0.5 + 0.5 * rand::random::<f64>())
}
