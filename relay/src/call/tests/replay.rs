//! Issue 18: replayed internal RTP (an old packet re-sent to the relay's internal port from the
//! media server's address) is a replay: dropped as `replayed` on the internal leg, never
//! forwarded, and never counted as sent toward WhatsApp. Before, 200 replays raised
//! `whatsapp.sent.packets` by 237 for 38 datagrams on the wire and were labelled `malformed`.

use super::harness::*;
use crate::api::LegKind;
use crate::call::stats::DropReason;
use crate::call::testing::{self, MEDIA_SERVER, RtpSource};

#[test]
fn replayed_internal_rtp_is_dropped_as_replayed_and_not_counted_as_sent() {
    let mut sim = Sim::new(Leg::Dtls);
    sim.connect();
    sim.wa.start(sim.now);
    let talk = sim.now;
    sim.internal.start(talk);
    sim.internal.stop_at(talk + secs(5));
    sim.open_gate();
    sim.run_until(talk + secs(5));
    assert_eq!(sim.internal.sent.len(), 250);

    // The same source's first 200 packets again, byte for byte, at 2 ms intervals.
    let mut replay = RtpSource::new(0x1111_1111, testing::INTERNAL_OPUS_PT, 4000, 160_000);
    let mut buf = [0u8; 1500];
    for _ in 0..200 {
        sim.run_for(ms(2));
        let n = replay.write_next(&mut buf, PAYLOAD_LEN);
        sim.inject_internal(MEDIA_SERVER, &mut buf, n);
    }
    sim.run_for(secs(2));

    assert_eq!(
        sim.call.dropped(LegKind::Internal, DropReason::Replayed),
        200
    );
    assert_eq!(
        sim.call.dropped(LegKind::WhatsApp, DropReason::Malformed),
        0
    );
    assert_eq!(
        sim.call.dropped(LegKind::Internal, DropReason::Malformed),
        0
    );
    let info = sim.call.info();
    assert_eq!(
        info.internal.received.packets, 250,
        "replays are not received media"
    );
    let on_the_wire = sim.wa_rtp();
    assert_eq!(
        info.whatsapp.sent.packets,
        on_the_wire.len() as u64,
        "sent counts what went on the wire"
    );
    let forwarded: Vec<u32> = on_the_wire.iter().filter_map(|r| r.index()).collect();
    assert_eq!(
        forwarded,
        (0..250).collect::<Vec<_>>(),
        "each real packet once, no replay"
    );
    assert!(sim.rejected_by_meta().is_empty());
}
