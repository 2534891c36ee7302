//! Round-trip time from RTCP (RFC 3550 §6.4.1): the peer echoes the middle of our last SR's NTP
//! time (LSR) and how long it held it (DLSR); RTT = arrival − LSR − DLSR.

use super::harness::*;
use crate::call::testing::META;
use crate::srtp::SrtpProfile;
use crate::wire::rtcp::{self, ReportBlock, RtcpPacket};

/// The last SR the relay sent toward WhatsApp: when, and its (SSRC, NTP time).
fn last_sr_to_wa(sim: &Sim) -> (std::time::Instant, Ssrc, u64) {
    sim.to_wa
        .iter()
        .rev()
        .find_map(|d| match &d.what {
            ToWa::Rtcp(p) => rtcp::iter(p).find_map(|r| match r {
                Ok(RtcpPacket::SenderReport(sr)) => Some((d.at, sr.ssrc, sr.ntp)),
                _ => None,
            }),
            _ => None,
        })
        .expect("the relay sent an SR toward WhatsApp")
}

#[test]
fn rtt_is_measured_from_a_receiver_report_echoing_our_sender_report() {
    for leg in [Leg::Dtls, Leg::Sdes(SrtpProfile::AeadAes128Gcm)] {
        let mut sim = Sim::new(leg);
        sim.connect();
        sim.wa.start(sim.now);
        sim.internal.start(sim.now + ms(5));
        sim.open_gate();
        sim.run_for(secs(6));
        assert_eq!(sim.call.info().whatsapp.rtt_ms, None, "no report yet");

        // 40 ms each way; Meta holds the SR for whatever remains until its report arrives.
        let (sent_at, ssrc, ntp) = last_sr_to_wa(&sim);
        let one_way = ms(40);
        let arrive = sim.now.max(sent_at + ms(330));
        sim.run_until(arrive);
        let held = arrive - sent_at - 2 * one_way;
        let block = ReportBlock {
            ssrc,
            lsr: rtcp::ntp_middle32(ntp),
            dlsr: (held.as_secs_f64() * 65536.0) as u32,
            ..ReportBlock::default()
        };
        let mut buf = [0u8; 256];
        let n = rtcp::write_rr(&mut buf, Ssrc::new(0x2222_2222), &[block]).unwrap();
        let n = sim.meta.protect_rtcp(&mut buf, n).unwrap();
        sim.inject_wa(META, &mut buf, n);

        let rtt = sim.call.info().whatsapp.rtt_ms.expect("RTT measured");
        // DLSR's 1/65536 s units truncate: up to 16 µs more.
        assert!((rtt - 80.0).abs() < 0.05, "{leg:?}: RTT {rtt} ms, want 80");
    }
}
