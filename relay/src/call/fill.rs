//! Silence fill toward WhatsApp: when it starts, and on which clock it runs.
//!
//! Meta hangs up on a call that sends nothing (20 s at the start, 30 s later), and a consumer
//! hears a quiet internal leg better as continuous silence than as a stream that stops, so
//! while the internal leg sends nothing the relay sends 20 ms Opus silence frames.
//!
//! **The clock.** Fill frames stand on a fixed grid anchored at the last packet sent to
//! WhatsApp: frame k is due at `last_sent + k × ptime` and carries `last_ts + k × 960`,
//! whenever the timer actually ran. Scheduling each tick from when the previous one ran
//! instead makes the interval creep (every late wake-up is added to it: 48.5 packets/s on a
//! quiet machine) and the timestamps follow the wall clock's noise. A late tick sends every
//! frame it owes, up to [`MAX_CATCH_UP`]; a longer stall (a frozen shard) skips to the newest
//! slot rather than bursting seconds of silence, so the timestamps stay with real time.
//!
//! **When it starts.** A browser's packets arrive with jitter, and on a busy machine a gap of
//! 60-100 ms between two of them is normal. If fill starts inside such a gap, the delayed real
//! packets arrive after silence already stood in for them (the outbound stream then refuses
//! them: see [`super::rewrite::Late`]). So the wait adapts: [`ArrivalGaps`] keeps the largest
//! gap between two internal packets over the last 10-20 s, and fill waits one packet time
//! longer than that, between `call.fill_after` and `call.fill_after_max`. Gaps longer than the
//! maximum are pauses, not jitter, and do not count.

use std::time::{Duration, Instant};

/// Frames a late fill tick sends at once at most; beyond, it skips to the newest slot.
pub const MAX_CATCH_UP: u32 = 5;

/// A fill frame whose slot is due while datagrams wait unread on the internal leg's socket
/// (a shard behind its load: the packet fill would stand in for may be among them) waits for
/// them to be read, at most this long past its slot. The bound keeps a stream of junk on the
/// internal port from silencing the call toward Meta; a shard further behind than this loses
/// media to lateness anyway.
pub const MAX_DEFER: Duration = Duration::from_millis(200);

/// How long a largest-gap observation is remembered (between one and two of these).
const GAP_MEMORY: Duration = Duration::from_secs(10);

/// The largest recent inter-arrival gap of one leg's packets (the internal leg's jitter, as
/// fill needs it: not a mean but the worst case it should wait out).
#[derive(Clone, Debug, Default)]
pub struct ArrivalGaps {
    last: Option<Instant>,
    /// The largest gap in the current and the previous [`GAP_MEMORY`] period.
    current: Duration,
    previous: Duration,
    period_ends: Option<Instant>,
}

impl ArrivalGaps {
    /// A packet arrived at `now`. Gaps of `max` or more are pauses and are not recorded.
    pub fn on_packet(&mut self, now: Instant, max: Duration) {
        match self.period_ends {
            Some(end) if now < end => {}
            Some(end) => {
                // One period over: it becomes the previous; two or more: both are stale.
                self.previous = if now < end + GAP_MEMORY {
                    self.current
                } else {
                    Duration::ZERO
                };
                self.current = Duration::ZERO;
                self.period_ends = Some(now + GAP_MEMORY);
            }
            None => self.period_ends = Some(now + GAP_MEMORY),
        }
        if let Some(last) = self.last {
            let gap = now.saturating_duration_since(last);
            if gap < max {
                self.current = self.current.max(gap);
            }
        }
        self.last = Some(now);
    }

    /// How long the leg must be quiet before fill starts: one packet time beyond the largest
    /// recent gap, within `[min, max]`.
    pub fn fill_wait(&self, ptime: Duration, min: Duration, max: Duration) -> Duration {
        (self.current.max(self.previous) + ptime).clamp(min, max.max(min))
    }
}

/// The first grid slot (`anchor + k × ptime`, k ≥ 1) at or after `not_before`.
pub fn first_slot(anchor: Instant, ptime: Duration, not_before: Instant) -> Instant {
    let first = anchor + ptime;
    if not_before <= first || ptime.is_zero() {
        return first;
    }
    // In u64 nanoseconds (584 years): a u128 division is a library call, and this runs for
    // every internal packet (the fill deadline moves with each one).
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let k = nanos(not_before.duration_since(anchor)).div_ceil(nanos(ptime));
    anchor + ptime * u32::try_from(k).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn slots_are_whole_packet_times_after_the_anchor() {
        let t = Instant::now();
        let p = 20 * MS;
        assert_eq!(first_slot(t, p, t), t + p);
        assert_eq!(first_slot(t, p, t + 60 * MS), t + 60 * MS);
        assert_eq!(first_slot(t, p, t + 61 * MS), t + 80 * MS);
    }

    #[test]
    fn the_wait_follows_the_largest_recent_gap_within_bounds() {
        let t0 = Instant::now();
        let (p, min, max) = (20 * MS, 60 * MS, 200 * MS);
        let mut g = ArrivalGaps::default();
        let mut t = t0;
        for _ in 0..10 {
            g.on_packet(t, max);
            t += p;
        }
        assert_eq!(
            g.fill_wait(p, min, max),
            min,
            "a steady source waits the minimum"
        );
        // One 90 ms gap: wait 110 ms from now on.
        t += 70 * MS;
        g.on_packet(t, max);
        assert_eq!(g.fill_wait(p, min, max), 110 * MS);
        // A 3 s pause is not jitter.
        t += 3000 * MS;
        g.on_packet(t, max);
        assert_eq!(g.fill_wait(p, min, max), 110 * MS);
        // Forgotten after one to two quiet periods of steady packets.
        for _ in 0..1500 {
            t += p;
            g.on_packet(t, max);
        }
        assert_eq!(g.fill_wait(p, min, max), min);
    }
}
