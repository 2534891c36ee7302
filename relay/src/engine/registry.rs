//! The control plane's book of calls: which call IDs are live or being created, how many calls
//! each business number holds, which (number, consumer) pairs are in a call, and the
//! tombstones of ended call IDs.
//!
//! It lives behind one mutex in the engine handle; only control requests and the events
//! thread take it, never a packet.
//!
//! # Tombstones
//!
//! Meta's webhooks arrive out of order and repeat: a `terminate` can reach the signaling tier
//! before the `connect` it ends, and a `connect` can be retried after the call is over. Without
//! a memory of ended IDs, such a late CreateCall would start a call nobody will ever end (it
//! holds ports and the consumer's per-number slot until a timer fires). So every ended ID —
//! ended by Terminate, by a timer, by drain, or terminated before the relay ever saw it —
//! leaves a tombstone for [`TombstoneConfig::lifetime`]: a CreateCall for it is refused
//! (`ApiError::Terminated`, gRPC FAILED_PRECONDITION, reason `CALL_TERMINATED`) and creates
//! nothing, and GetCall returns the call's final [`CallInfo`] (state ENDED, cause, counters).
//!
//! The book is bounded: at most [`TombstoneConfig::max`] tombstones; beyond that the oldest is
//! forgotten first, so a flood of Terminates for random IDs costs at most `max` small entries
//! (an ID and a timestamp each) and only shortens how long old IDs are remembered.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::api::{CallCreated, CallInfo, InternalLegSpec};

/// How long, and how many, ended call IDs are remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TombstoneConfig {
    /// How long an ended ID refuses a new CreateCall and answers GetCall with its final state.
    /// Zero keeps no tombstones.
    pub lifetime: Duration,
    /// Most tombstones kept; the oldest goes first when a new one would exceed it.
    pub max: usize,
}

impl Default for TombstoneConfig {
    /// Five minutes covers Meta's webhook retries and reordering by a wide margin; 100,000
    /// entries hold five minutes of 300 calls ending per second. A tombstone is the call ID
    /// plus, for a call that existed, its final statistics (under a kilobyte), so the table
    /// stays below about 100 MB at the cap and costs a few MB for a flood of Terminates for
    /// made-up IDs (those keep no statistics).
    fn default() -> Self {
        TombstoneConfig {
            lifetime: Duration::from_secs(300),
            max: 100_000,
        }
    }
}

pub(super) enum Entry {
    /// Setup in progress (sockets being bound, SDP written). `terminated`: a Terminate arrived
    /// meanwhile, so the call is ended as soon as its setup finishes.
    Creating {
        terminated: bool,
    },
    Live {
        shard: usize,
        created: CallCreated,
    },
}

pub(super) struct RegEntry {
    pub entry: Entry,
    pub business_number: String,
    pub consumer: String,
    /// The last internal-leg replacement (request, answer), so a retried one is idempotent.
    pub last_replace: Option<(InternalLegSpec, String)>,
}

pub(super) struct Tombstone {
    pub at: Instant,
    /// The call as it ended, when the relay held it; `None` for an ID terminated before (or
    /// without) its CreateCall.
    pub info: Option<Box<CallInfo>>,
}

/// Ended call IDs, oldest first. See the module documentation.
pub(super) struct Tombstones {
    cfg: TombstoneConfig,
    by_id: HashMap<String, Tombstone>,
    /// Insertion order = expiry order (one lifetime for all; an entry is never refreshed).
    order: VecDeque<String>,
}

impl Tombstones {
    pub fn new(cfg: TombstoneConfig) -> Self {
        Tombstones {
            cfg,
            by_id: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Remember `call_id` as ended at `now`. An ID already remembered keeps its time (a
    /// repeated Terminate does not extend it) but gains `info` if it had none.
    pub fn insert(&mut self, call_id: &str, info: Option<Box<CallInfo>>, now: Instant) {
        self.expire(now);
        if let Some(t) = self.by_id.get_mut(call_id) {
            if info.is_some() {
                t.info = info;
            }
            return;
        }
        if self.cfg.lifetime.is_zero() || self.cfg.max == 0 {
            return;
        }
        while self.by_id.len() >= self.cfg.max {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.by_id.remove(&oldest);
        }
        self.by_id
            .insert(call_id.to_string(), Tombstone { at: now, info });
        self.order.push_back(call_id.to_string());
    }

    /// The tombstone of `call_id`, if it is still alive at `now`.
    pub fn get(&self, call_id: &str, now: Instant) -> Option<&Tombstone> {
        self.by_id
            .get(call_id)
            .filter(|t| now.saturating_duration_since(t.at) < self.cfg.lifetime)
    }

    /// Forget tombstones older than the lifetime.
    pub fn expire(&mut self, now: Instant) {
        while let Some(oldest) = self.order.front() {
            let alive = self
                .by_id
                .get(oldest)
                .is_some_and(|t| now.saturating_duration_since(t.at) < self.cfg.lifetime);
            if alive {
                return;
            }
            if let Some(id) = self.order.pop_front() {
                self.by_id.remove(&id);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}

pub(super) struct Registry {
    pub calls: HashMap<String, RegEntry>,
    pub per_number: HashMap<String, u32>,
    /// (business number, consumer) → call ID of the live call between them.
    pub pairs: HashMap<(String, String), String>,
    pub draining: bool,
    pub tombstones: Tombstones,
}

impl Registry {
    pub fn new(tombstones: TombstoneConfig) -> Self {
        Registry {
            calls: HashMap::new(),
            per_number: HashMap::new(),
            pairs: HashMap::new(),
            draining: false,
            tombstones: Tombstones::new(tombstones),
        }
    }

    /// Drop `call_id`'s entry and the slots it held (per-number count, consumer pair).
    pub fn forget(&mut self, call_id: &str) {
        if let Some(e) = self.calls.remove(call_id) {
            if let Some(n) = self.per_number.get_mut(&e.business_number) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_number.remove(&e.business_number);
                }
            }
            let key = (e.business_number, e.consumer);
            if self.pairs.get(&key).map(String::as_str) == Some(call_id) {
                self.pairs.remove(&key);
            }
        }
    }

    /// The call ended (or was terminated before it existed): forget it and leave a tombstone.
    pub fn end(&mut self, call_id: &str, info: Option<Box<CallInfo>>, now: Instant) {
        self.forget(call_id);
        self.tombstones.insert(call_id, info, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tombstones(lifetime_s: u64, max: usize) -> Tombstones {
        Tombstones::new(TombstoneConfig {
            lifetime: Duration::from_secs(lifetime_s),
            max,
        })
    }

    #[test]
    fn a_tombstone_lives_for_its_lifetime_and_no_longer() {
        let t0 = Instant::now();
        let mut t = tombstones(300, 10);
        t.insert("wacid.a", None, t0);
        assert!(t.get("wacid.a", t0 + Duration::from_secs(299)).is_some());
        assert!(t.get("wacid.a", t0 + Duration::from_secs(300)).is_none());
        // A repeat does not extend it.
        t.insert("wacid.a", None, t0 + Duration::from_secs(200));
        assert!(t.get("wacid.a", t0 + Duration::from_secs(300)).is_none());
        t.expire(t0 + Duration::from_secs(301));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_flood_of_random_ids_is_capped_and_the_oldest_go_first() {
        let t0 = Instant::now();
        let mut t = tombstones(300, 1000);
        for i in 0..100_000u32 {
            t.insert(&format!("wacid.flood{i}"), None, t0);
        }
        assert_eq!(t.len(), 1000);
        assert_eq!(t.order.len(), 1000);
        assert!(t.get("wacid.flood0", t0).is_none());
        assert!(t.get("wacid.flood99999", t0).is_some());
    }

    #[test]
    fn zero_lifetime_keeps_nothing() {
        let t0 = Instant::now();
        let mut t = tombstones(0, 1000);
        t.insert("wacid.a", None, t0);
        assert_eq!(t.len(), 0);
    }
}
