//! Issue 4, rule 2: the maiden packet, silence fill at the packet time, RTCP sender reports at
//! least every 5 s, and continuity (sequence, timestamp, marker) across fill ↔ forwarded media.

use super::harness::*;
use crate::call::CallConfig;
use crate::call::testing::META_OPUS_PT;
use crate::srtp::SrtpProfile;

#[test]
fn silent_internal_leg_gets_maiden_silence_then_fill_every_ptime_and_sr_every_5s() {
    let mut sim = Sim::new(Leg::Dtls);
    sim.connect();
    // Meta talks, so its no-media rules never end the call.
    sim.wa.start(sim.now);
    sim.run_until(sim.at(secs(1)));
    let gate = sim.now;
    sim.open_gate();
    let end = gate + secs(60);
    sim.run_until(end);
    assert!(sim.ended().is_none(), "{:?}", sim.ended());
    assert_eq!(
        sim.rejected_by_meta(),
        Vec::<&str>::new(),
        "all SRTP/SRTCP authenticates"
    );

    let rtp = sim.wa_rtp();
    assert_eq!(
        rtp[0].at, gate,
        "maiden packet in the same instant as the gate"
    );
    assert!(rtp[0].is_silence() && rtp[0].marker);
    assert!(rtp.iter().all(|r| r.is_silence() && r.pt == META_OPUS_PT));
    assert!(rtp[1..].iter().all(|r| !r.marker), "one talkspurt");
    assert_eq!(
        rtp.len(),
        3001,
        "one packet per 20 ms over 60 s, both ends included"
    );
    let gaps: Vec<_> = rtp.windows(2).map(|w| w[1].at - w[0].at).collect();
    let (min, max) = (gaps.iter().min().unwrap(), gaps.iter().max().unwrap());
    assert!(
        *max <= ms(21) && *min >= ms(19),
        "fill every 20 ms ± 1 ms, saw {min:?}..{max:?}"
    );
    assert_continuous(&rtp);

    let srs = sim.wa_sr_times();
    assert!(
        srs[0] > gate && srs[0] - gate <= secs(5),
        "first SR soon after the gate"
    );
    let max_sr_gap = srs.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        max_sr_gap <= secs(5),
        "SR at least every 5 s, saw {max_sr_gap:?}"
    );
    assert!(end - *srs.last().unwrap() <= secs(5));
    eprintln!(
        "60 s of fill: {} RTP, gaps {min:?}..{max:?}; {} SRs, first {:?} after the gate, max gap {max_sr_gap:?}",
        rtp.len(),
        srs.len(),
        srs[0] - gate
    );
}

/// Silence, two talkspurts from the media server, silence in between and after: one
/// continuous stream toward Meta, the marker on the first packet of each talkspurt only.
#[test]
fn fill_forwarded_fill_keeps_the_stream_continuous_and_marks_talkspurts() {
    let mut sim = Sim::new(Leg::Sdes(SrtpProfile::Aes128CmHmacSha1_80));
    sim.connect();
    sim.wa.start(sim.now);
    sim.run_until(sim.at(secs(1)));
    let gate = sim.now;
    sim.open_gate();
    // The server's packets are off the fill grid by 10 ms, and carry no marker of their own:
    // any marker Meta sees is the relay's.
    sim.internal.src.marker_next = false;
    sim.internal.start(gate + ms(2010));
    sim.internal.stop_at(gate + ms(4010));
    sim.run_until(gate + secs(5));
    sim.internal.start(gate + ms(5010));
    sim.run_until(gate + secs(6));

    let rtp = sim.wa_rtp();
    assert_continuous(&rtp);
    assert!(rtp.iter().all(|r| r.pt == META_OPUS_PT));
    let marked: Vec<_> = rtp
        .iter()
        .filter(|r| r.marker)
        .map(|r| (r.at - gate, r.index()))
        .collect();
    assert_eq!(
        marked,
        vec![(ms(0), None), (ms(2010), Some(0)), (ms(5010), Some(100))],
        "marker on the maiden packet and the first packet of each talkspurt"
    );
    // Which packets were forwarded: exactly the server's, in order.
    let forwarded: Vec<u32> = rtp.iter().filter_map(|r| r.index()).collect();
    assert_eq!(
        forwarded,
        (0..sim.internal.sent.len() as u32).collect::<Vec<_>>()
    );
    // Silence never interleaves with a talkspurt.
    let kinds: Vec<bool> = rtp.iter().map(|r| r.is_silence()).collect();
    let switches = kinds.windows(2).filter(|w| w[0] != w[1]).count();
    assert_eq!(switches, 3, "fill → talk → fill → talk");

    // Gaps: the packet time, except where a talkspurt ends: the relay waits `fill_after` to
    // be sure the server stopped (not merely jittered) before filling.
    let fill_after = CallConfig::default().fill_after;
    let mut worst = ms(0);
    for w in rtp.windows(2) {
        let gap = w[1].at - w[0].at;
        worst = worst.max(gap);
        let talkspurt_end = !w[0].is_silence() && w[1].is_silence();
        let limit = if talkspurt_end { fill_after } else { ms(21) };
        assert!(gap <= limit, "gap {gap:?} at {:?}", w[1].at - gate);
    }
    eprintln!("fill ↔ forwarded: largest gap toward Meta {worst:?} (fill_after {fill_after:?})");
}

/// Each SR toward Meta describes exactly the stream Meta received up to it: our SSRC, packet
/// and payload-octet counts, an RTP timestamp on the stream's clock, NTP time from the call's
/// wall clock; plus a report block about Meta's stream and an SDES CNAME.
#[test]
fn sender_reports_describe_the_stream_meta_received() {
    use crate::call::testing::CREATED_UNIX_SECS;
    use crate::wire::rtcp::{self, RtcpPacket};

    let mut sim = Sim::new(Leg::Sdes(SrtpProfile::AeadAes128Gcm));
    sim.connect();
    sim.wa.start(sim.now);
    sim.open_gate();
    sim.internal.start(sim.now + ms(3010));
    sim.internal.stop_at(sim.now + ms(9010));
    sim.run_for(secs(21));

    let mut checked = 0;
    for (i, d) in sim.to_wa.iter().enumerate() {
        let ToWa::Rtcp(pkt) = &d.what else { continue };
        let before: Vec<&Rtp> = sim.to_wa[..i]
            .iter()
            .filter_map(|d| match &d.what {
                ToWa::Rtp(r) => Some(r),
                _ => None,
            })
            .collect();
        let last = before.last().expect("an SR follows media");
        let mut packets = rtcp::iter(pkt);
        let Some(Ok(RtcpPacket::SenderReport(sr))) = packets.next() else {
            panic!(
                "first packet of the compound is an SR: {:?}",
                rtcp_types(pkt)
            );
        };
        assert_eq!(sr.ssrc.get(), last.ssrc);
        assert_eq!(sr.packet_count as usize, before.len());
        let octets: usize = before.iter().map(|r| r.payload.len()).sum();
        assert_eq!(sr.octet_count as usize, octets);
        let since_last = d.at - last.at;
        assert_eq!(
            sr.rtp_ts.get(),
            last.ts
                .wrapping_add(crate::call::rewrite::clock_units(since_last, Clock::OPUS))
        );
        let elapsed = d.at - sim.t0;
        assert_eq!(
            sr.ntp >> 32,
            CREATED_UNIX_SECS + 2_208_988_800 + elapsed.as_secs()
        );
        // The report block is about what Meta sends us.
        let blocks: Vec<_> = sr.reports.collect();
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].ssrc.get(), sim.wa.src.ssrc);
        assert_eq!(blocks[0].cumulative_lost, 0);
        let meta_sent_before = sim.wa.sent.iter().filter(|(t, _)| *t <= d.at).count() as u32;
        let first_seq = 4000u32; // `Talker` numbering
        assert_eq!(blocks[0].highest_seq, first_seq + meta_sent_before - 1);
        assert!(matches!(
            packets.next(),
            Some(Ok(RtcpPacket::SourceDescription { .. }))
        ));
        checked += 1;
    }
    assert!(checked >= 4, "{checked} SRs checked");
}
