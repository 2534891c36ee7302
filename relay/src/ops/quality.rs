//! Live call quality: every live call sampled once a second (in the shard's metrics publish, off
//! the packet path), into fixed histograms per leg and direction.
//!
//! A histogram's `_count` is then call-seconds, and `histogram_quantile(0.95, rate(..[5m]))` is
//! "the quality 95 % of call-seconds in the last five minutes were better than". Only seconds
//! in which the direction carried media are sampled (a held or not-yet-connected call does not
//! count as perfect).
//!
//! | figure | received (`rx`) | sent (`tx`) |
//! |---|---|---|
//! | loss | sequence gaps over the last second | the peer's RTCP "fraction lost" (its last report interval) |
//! | jitter | RFC 3550 interarrival jitter we measure | the jitter the peer reports |
//! | RTT | per leg, from the peer's LSR/DLSR | |
//!
//! MOS (G.107 E-model, [`super::mos`]) is estimated per call from the WhatsApp leg: the worse
//! direction's loss and jitter, and that leg's RTT.
//!
//! The same pass hands each leg's new RTCP report to the HEP exporter ([`super::hep`]) when one
//! is configured.

use std::collections::HashMap;

use crate::api::LegKind;
use crate::call::Call;
use crate::call::stats::LegQuality;
use crate::engine::snapshot::{Histogram, JITTER_BUCKETS, LOSS_BUCKETS};

/// RTT bounds, seconds.
pub const RTT_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0];
/// MOS bounds (1 – 4.5): finer where calls degrade from good to poor.
pub const MOS_BUCKETS: &[f64] = &[1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 3.8, 4.0, 4.2, 4.3, 4.4, 4.5];

/// Legs in the order the histograms are kept.
pub const LEGS: [LegKind; 2] = [LegKind::WhatsApp, LegKind::Internal];
/// Directions in the order the histograms are kept.
pub const DIRECTIONS: [&str; 2] = ["rx", "tx"];

/// Cumulative histograms of live samples (part of a shard's published totals).
#[derive(Clone, Debug, PartialEq)]
pub struct LiveQuality {
    /// `[leg][direction]`.
    pub loss: [[Histogram; 2]; 2],
    pub jitter: [[Histogram; 2]; 2],
    /// `[leg]`.
    pub rtt: [Histogram; 2],
    pub mos: Histogram,
}

impl Default for LiveQuality {
    fn default() -> Self {
        let pair = |b| [Histogram::new(b), Histogram::new(b)];
        LiveQuality {
            loss: [pair(LOSS_BUCKETS), pair(LOSS_BUCKETS)],
            jitter: [pair(JITTER_BUCKETS), pair(JITTER_BUCKETS)],
            rtt: pair(RTT_BUCKETS),
            mos: Histogram::new(MOS_BUCKETS),
        }
    }
}

impl LiveQuality {
    pub fn add(&mut self, o: &LiveQuality) {
        for l in 0..2 {
            for d in 0..2 {
                self.loss[l][d].add(&o.loss[l][d]);
                self.jitter[l][d].add(&o.jitter[l][d]);
            }
            self.rtt[l].add(&o.rtt[l]);
        }
        self.mos.add(&o.mos);
    }
}

/// What a call's counters were at the previous sample.
#[derive(Copy, Clone, Debug, Default)]
struct Previous {
    /// `[leg]`: (received, lost, sent).
    legs: [(u64, u64, u64); 2],
    /// `[leg]`: RTCP packets received (a change: a new report to export over HEP).
    rtcp: [u64; 2],
    /// Which sample last saw the call (calls not seen are forgotten).
    seen: u64,
}

/// Keeps each live call's previous counters (one map entry per call, allocated once).
#[derive(Debug, Default)]
pub struct QualitySampler {
    previous: HashMap<String, Previous>,
    round: u64,
}

impl QualitySampler {
    /// Sample every live call into `into`.
    pub fn sample<'a>(&mut self, calls: impl Iterator<Item = &'a Call>, into: &mut LiveQuality) {
        self.round += 1;
        let round = self.round;
        for call in calls {
            let now = LEGS.map(|leg| call.leg_quality(leg));
            if !self.previous.contains_key(call.call_id.as_str()) {
                // Once per call: the only allocation here.
                self.previous
                    .insert(call.call_id.clone(), Previous::default());
            }
            let Some(prev) = self.previous.get_mut(call.call_id.as_str()) else {
                continue;
            };
            let first = prev.seen == 0;
            prev.seen = round;
            let mut wa = Sample::default();
            for (l, q) in now.iter().enumerate() {
                if q.rtcp_received != prev.rtcp[l] {
                    prev.rtcp[l] = q.rtcp_received;
                    if let Some(hep) = super::hep::sink() {
                        hep.offer(super::hep::rtcp_record(&call.call_id, LEGS[l], q));
                    }
                }
                let (rx0, lost0, tx0) = prev.legs[l];
                prev.legs[l] = (q.rx_packets, q.rx_lost, q.tx_packets);
                if first {
                    // No interval yet: the first second starts here.
                    continue;
                }
                let s = sample_leg(q, rx0, lost0, tx0);
                if let Some(v) = s.rx_loss {
                    into.loss[l][0].observe(v);
                }
                if let Some(v) = s.rx_jitter_ms {
                    into.jitter[l][0].observe(v / 1000.0);
                }
                if let Some(v) = s.tx_loss {
                    into.loss[l][1].observe(v);
                }
                if let Some(v) = s.tx_jitter_ms {
                    into.jitter[l][1].observe(v / 1000.0);
                }
                if let Some(v) = s
                    .rtt_ms
                    .filter(|_| s.rx_loss.is_some() || s.tx_loss.is_some())
                {
                    into.rtt[l].observe(v / 1000.0);
                }
                if l == 0 {
                    wa = s;
                }
            }
            if let Some(m) = wa.mos() {
                into.mos.observe(m);
            }
        }
        self.previous.retain(|_, p| p.seen == round);
    }

    /// Calls whose previous counters are kept.
    pub fn tracked(&self) -> usize {
        self.previous.len()
    }
}

/// One leg's figures over the last interval; `None` where the direction carried no media.
#[derive(Copy, Clone, Debug, Default, PartialEq)]
struct Sample {
    rx_loss: Option<f64>,
    rx_jitter_ms: Option<f64>,
    tx_loss: Option<f64>,
    tx_jitter_ms: Option<f64>,
    rtt_ms: Option<f64>,
}

impl Sample {
    /// The call's MOS estimate from this (WhatsApp) leg: worse direction, when media flowed.
    fn mos(&self) -> Option<f64> {
        if self.rx_loss.is_none() && self.tx_loss.is_none() {
            return None;
        }
        let worst = |a: Option<f64>, b: Option<f64>| a.unwrap_or(0.0).max(b.unwrap_or(0.0));
        Some(super::mos::mos(
            worst(self.rx_loss, self.tx_loss),
            worst(self.rx_jitter_ms, self.tx_jitter_ms),
            self.rtt_ms,
        ))
    }
}

fn sample_leg(q: &LegQuality, rx0: u64, lost0: u64, tx0: u64) -> Sample {
    let received = q.rx_packets.saturating_sub(rx0);
    // Late packets can lower the lost count (RFC 3550's cumulative loss): never below 0.
    let lost = q.rx_lost.saturating_sub(lost0);
    let rx = received > 0;
    let tx = q.tx_packets > tx0;
    Sample {
        rx_loss: rx.then(|| lost as f64 / (received + lost) as f64),
        rx_jitter_ms: rx.then_some(q.rx_jitter_ms),
        tx_loss: if tx { q.tx_loss_ratio } else { None },
        tx_jitter_ms: if tx { q.tx_jitter_ms } else { None },
        rtt_ms: q.rtt_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(rx: u64, lost: u64, tx: u64) -> LegQuality {
        LegQuality {
            rx_packets: rx,
            rx_lost: lost,
            rx_jitter_ms: 4.0,
            tx_packets: tx,
            ..Default::default()
        }
    }

    #[test]
    fn loss_is_over_the_last_interval_only() {
        // 50 received and 0 lost in the first second, then 45 received and 5 lost.
        let s = sample_leg(&q(95, 5, 100), 50, 0, 50);
        assert_eq!(s.rx_loss, Some(0.1));
        assert_eq!(s.rx_jitter_ms, Some(4.0));
        // Nothing sent this second: no tx sample, even with a report on file.
        let mut held = q(95, 5, 50);
        held.tx_loss_ratio = Some(0.25);
        assert_eq!(sample_leg(&held, 50, 0, 50).tx_loss, None);
        held.tx_packets = 100;
        assert_eq!(sample_leg(&held, 50, 0, 50).tx_loss, Some(0.25));
        // Silence: no rx sample at all.
        let s = sample_leg(&q(50, 0, 50), 50, 0, 50);
        assert_eq!((s.rx_loss, s.rx_jitter_ms, s.mos()), (None, None, None));
        // A late packet lowering the cumulative loss counts as no loss.
        assert_eq!(sample_leg(&q(100, 2, 0), 50, 3, 0).rx_loss, Some(0.0));
    }

    /// What one sample costs the shard per live call (run by hand; prints, asserts nothing
    /// about time): `cargo test -p relay --release --lib sampling_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn sampling_cost() {
        use crate::call::testing::{MetaPeer, create_call};
        use crate::dtls::DtlsIdentity;
        let identity = std::sync::Arc::new(DtlsIdentity::generate().unwrap());
        let now = std::time::Instant::now();
        let (_meta, offer) = MetaPeer::sdes(crate::srtp::SrtpProfile::Aes128CmHmacSha1_80);
        let calls: Vec<Call> = (0..5000)
            .map(|i| {
                let mut c = create_call(&offer, Default::default(), identity.clone(), now)
                    .unwrap()
                    .call;
                c.call_id = format!("wacid.cost.{i}");
                c
            })
            .collect();
        let mut sampler = QualitySampler::default();
        let mut into = LiveQuality::default();
        sampler.sample(calls.iter(), &mut into); // first pass: map entries
        let rounds = 20;
        let t = std::time::Instant::now();
        for _ in 0..rounds {
            sampler.sample(calls.iter(), &mut into);
        }
        let per_call = t.elapsed() / (rounds * calls.len() as u32);
        println!(
            "quality sample: {per_call:?} per live call ({} calls tracked)",
            sampler.tracked()
        );
    }

    #[test]
    fn mos_takes_the_worse_direction() {
        let clean = Sample {
            rx_loss: Some(0.0),
            rx_jitter_ms: Some(1.0),
            tx_loss: Some(0.0),
            tx_jitter_ms: Some(1.0),
            rtt_ms: Some(40.0),
        };
        let lossy_tx = Sample {
            tx_loss: Some(0.05),
            ..clean
        };
        let (a, b) = (clean.mos().unwrap(), lossy_tx.mos().unwrap());
        assert!(a > 4.3 && b < 4.0, "{a} {b}");
    }
}
