//! Is every shard still turning its loop? Liveness for `/healthz`.
//!
//! Each shard adds one to [`super::ShardStats::turns`] per loop turn, and an idle shard still
//! turns once a second (its metrics publish), so a count that stops moving means the shard is
//! stuck (a bug spinning inside one call, a blocked syscall) or its thread is gone. The watch
//! remembers, per shard, the last count it saw and when that count last changed; it is read
//! only by probes, so it needs no clock of its own.

use std::time::{Duration, Instant};

/// A shard whose loop has not turned for `for_at_least`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stalled {
    pub shard: usize,
    pub for_at_least: Duration,
}

/// Per shard: (last turn count seen, when it was first seen at that count).
#[derive(Debug, Default)]
pub struct HeartbeatWatch {
    seen: Vec<(u64, Instant)>,
}

impl HeartbeatWatch {
    /// Record the shards' turn counts at `now` and return those that have not moved for
    /// `limit` or longer. A shard seen for the first time counts as just moved.
    pub fn observe(
        &mut self,
        turns: impl IntoIterator<Item = u64>,
        now: Instant,
        limit: Duration,
    ) -> Vec<Stalled> {
        let mut stalled = Vec::new();
        for (shard, count) in turns.into_iter().enumerate() {
            match self.seen.get_mut(shard) {
                Some(seen) if seen.0 == count => {
                    let still = now.saturating_duration_since(seen.1);
                    if still >= limit {
                        stalled.push(Stalled {
                            shard,
                            for_at_least: still,
                        });
                    }
                }
                Some(seen) => *seen = (count, now),
                None => self.seen.push((count, now)),
            }
        }
        stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_that_stops_turning_is_reported_after_the_limit() {
        let t0 = Instant::now();
        let limit = Duration::from_secs(10);
        let mut w = HeartbeatWatch::default();
        assert!(w.observe([5, 9], t0, limit).is_empty());
        // Shard 0 keeps turning, shard 1 stops at 9.
        let at = |s| t0 + Duration::from_secs(s);
        assert!(w.observe([6, 9], at(5), limit).is_empty());
        assert!(w.observe([7, 9], at(9), limit).is_empty());
        assert_eq!(
            w.observe([8, 9], at(10), limit),
            [Stalled {
                shard: 1,
                for_at_least: Duration::from_secs(10)
            }]
        );
        // Probes far apart: the count moved in between, so the shard is alive.
        assert!(w.observe([30, 10], at(60), limit).is_empty());
        // It recovers: healthy again as soon as it turns.
        assert!(w.observe([31, 11], at(61), limit).is_empty());
    }

    #[test]
    fn a_first_look_is_never_a_stall() {
        let t0 = Instant::now();
        let mut w = HeartbeatWatch::default();
        assert!(
            w.observe([0, 0], t0, Duration::from_secs(1)).is_empty(),
            "first observation"
        );
    }
}
