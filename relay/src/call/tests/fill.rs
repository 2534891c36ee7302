//! Issue 18, media timing: silence fill runs on a fixed 20 ms grid (50 frames a second, +960
//! per frame, no sequence gap) however late the shard's timer wakes, stays continuous with the
//! forwarded media around it, and never sends a fill frame and a real frame for the same 20 ms
//! when the internal leg's packets arrive with jitter.

use std::time::{Duration, Instant};

use super::harness::*;
use crate::api::LegKind;
use crate::call::stats::DropReason;
use crate::call::testing::MEDIA_SERVER;

/// Meta's packets in `[from, to)`.
fn rtp_between(sim: &Sim, from: Instant, to: Instant) -> Vec<&Rtp> {
    sim.wa_rtp()
        .into_iter()
        .filter(|r| r.at >= from && r.at < to)
        .collect()
}

/// One stream on one 20 ms grid: sequence +1 and timestamp +960 from each packet to the next.
fn assert_on_grid(pkts: &[&Rtp]) {
    for w in pkts.windows(2) {
        assert_eq!(w[1].ssrc, w[0].ssrc);
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1), "no sequence gap");
        assert_eq!(
            w[1].ts.wrapping_sub(w[0].ts),
            960,
            "one frame per packet (seq {} → {})",
            w[0].seq,
            w[1].seq
        );
    }
}

/// The timer wakes 0-9 ms late, as on a busy machine: still 50 frames a second, each +960.
#[test]
fn fill_keeps_a_fixed_20ms_grid_when_the_timer_wakes_late() {
    let mut sim = Sim::new(Leg::Dtls);
    sim.connect();
    sim.wa.start(sim.now);
    sim.timer_lateness = [0, 3, 7, 1, 9, 4, 6, 2, 8, 5].map(ms).to_vec();
    let gate = sim.now;
    sim.open_gate();
    sim.run_until(gate + secs(11));
    let fill = rtp_between(&sim, gate + secs(1), gate + secs(11));
    assert!(fill.iter().all(|r| r.is_silence()));
    // 10 s of fill is 500 frames, whatever the wake-ups' lateness (one either way at the edges).
    assert!(
        (499..=501).contains(&fill.len()),
        "{} frames in 10 s",
        fill.len()
    );
    assert_on_grid(&fill);
    assert!(sim.rejected_by_meta().is_empty());
}

/// Speech, 2 s of silence from the internal leg, speech again (a source whose timestamps
/// advance over the pause, as RFC 3550 asks): Meta gets one stream on one grid throughout,
/// the fill standing exactly in the gap.
#[test]
fn fill_is_continuous_with_the_media_before_and_after() {
    let mut sim = Sim::new(Leg::Dtls);
    sim.connect();
    sim.wa.start(sim.now);
    sim.timer_lateness = [0, 5, 2, 9].map(ms).to_vec();
    let gate = sim.now;
    sim.open_gate();
    let speech = gate + secs(1);
    sim.internal.start(speech);
    sim.internal.stop_at(speech + secs(2));
    sim.run_until(speech + secs(4) - ms(1));
    // The source's clock ran on over the pause.
    sim.internal.src.ts = sim.internal.src.ts.wrapping_add(100 * 960);
    sim.internal.start(speech + secs(4));
    sim.internal.stop_at(speech + secs(6));
    sim.run_until(speech + secs(7));
    let all = rtp_between(&sim, speech, speech + secs(6));
    // Speech, then fill from 60 ms (call.fill_after) after the last packet: the only step
    // that is not one frame is that wait, three frames in one step, sequence unbroken.
    let first_fill = all
        .iter()
        .position(|r| r.is_silence())
        .expect("fill in the gap");
    assert_on_grid(&all[..first_fill]);
    assert_eq!(all[first_fill].seq, all[first_fill - 1].seq.wrapping_add(1));
    assert_eq!(
        all[first_fill].ts.wrapping_sub(all[first_fill - 1].ts),
        3 * 960
    );
    assert_on_grid(&all[first_fill..]);
    let silence = all.iter().filter(|r| r.is_silence()).count();
    // The 2 s gap is 100 slots; the first two waited out fill_after.
    assert_eq!(silence, 98, "fill frames in the 2 s gap");
    assert_eq!(all.len(), 100 + silence + 100);
    assert_eq!(sim.call.dropped(LegKind::Internal, DropReason::Late), 0);
}

/// A browser on a busy machine: every second, 120 ms without a packet, then the delayed ones
/// in a burst. Over 30 s the timestamps Meta got match the time that passed, and no 20 ms
/// slot carries two frames (before, fill started at 60 ms and the late packets were sent
/// too: 33.9 s of timestamps in 30.5 s).
#[test]
fn jitter_does_not_send_fill_and_real_frames_for_the_same_slot() {
    let mut sim = Sim::new(Leg::Dtls);
    sim.connect();
    sim.wa.start(sim.now);
    let gate = sim.now;
    sim.open_gate();
    let start = gate + secs(1);
    let mut buf = [0u8; 1500];
    for i in 0..1500u32 {
        let scheduled = start + ms(20 * u64::from(i));
        let in_second = ms(20 * u64::from(i % 50));
        // Packets due 500..600 ms into each second arrive together at 600 ms.
        let deliver = if in_second >= ms(500) && in_second < ms(600) {
            scheduled - in_second + ms(600)
        } else {
            scheduled
        };
        // The engine reads its sockets before it runs the timers due at the same instant.
        sim.run_until(deliver - Duration::from_nanos(1));
        sim.now = deliver;
        let n = sim.internal.src.write_next(&mut buf, PAYLOAD_LEN);
        sim.inject_internal(MEDIA_SERVER, &mut buf, n);
    }
    let end = start + ms(20 * 1499);
    sim.run_until(end + ms(1));
    let got = rtp_between(&sim, start, end + ms(1));
    let (first, last) = (got[0], got[got.len() - 1]);
    let wall = last.at.duration_since(first.at);
    let media = ms(u64::from(last.ts.wrapping_sub(first.ts)) / 48);
    let drift = media.abs_diff(wall);
    assert!(
        drift <= ms(20),
        "{media:?} of timestamps in {wall:?} of real time"
    );
    for w in got.windows(2) {
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1), "no sequence gap");
        let step = w[1].ts.wrapping_sub(w[0].ts);
        assert!(
            (960..0x8000_0000).contains(&step),
            "two frames for one slot, or time going back: {} → {} (step {step})",
            w[0].seq,
            w[1].seq
        );
    }
    // Fill stood in at most in the first episode (before the wait learned the jitter); what
    // it covered arrived late and was dropped, not sent.
    let fill = got.iter().filter(|r| r.is_silence()).count();
    assert!(fill <= 5, "{fill} fill frames");
    let late = sim.call.dropped(LegKind::Internal, DropReason::Late);
    assert!(late <= 5, "{late} late drops");
    assert_eq!(got.len() - fill + late as usize, 1500);
}
