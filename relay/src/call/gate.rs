//! The media gate toward WhatsApp, as one sub-machine with its own [`Gate::poll_timeout`]:
//!
//! - **The gate.** Nothing reaches WhatsApp before the signaling tier opens it (Meta counts the
//!   first media packet as the answer).
//! - **The prebuffer.** Internal media that arrives before the WhatsApp leg may carry it is
//!   held ([`Prebuffer`]) and played out at twice real time once it may, so an IVR greeting
//!   is not clipped and the added latency drains in about as long as it built up.
//! - **Silence fill.** While the internal leg is quiet, relay-made silence stands in on a fixed
//!   grid ([`super::fill`]).
//!
//! The gate decides what happens to each internal packet and when held or generated frames are
//! due; the call does the sending (it owns the WhatsApp leg's keys and numbering).

use std::time::Instant;

use crate::call::CallConfig;
use crate::call::fill::{self, ArrivalGaps};
use crate::call::prebuffer::Prebuffer;

/// What to do with an internal packet.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Send it now.
    Send,
    /// It was held (the leg cannot carry it yet, or held media must not be overtaken).
    Held,
}

/// What the gate needs to know about the WhatsApp leg and the internal leg to schedule fill.
pub struct FillView<'a> {
    /// The gate is open, the leg ready and the call live.
    pub can_send: bool,
    /// When the last packet toward WhatsApp stood (the grid's anchor), if any.
    pub last_sent: Option<Instant>,
    /// The internal leg's last packet, and how its packets arrive.
    pub last_internal: Option<Instant>,
    pub arrivals: &'a ArrivalGaps,
}

#[derive(Debug)]
pub struct Gate {
    opened_at: Option<Instant>,
    held: Prebuffer,
    /// Next time a held packet may be played out (accelerated pacing).
    playout_at: Option<Instant>,
}

impl Gate {
    pub fn new(prebuffer_packets: usize) -> Gate {
        Gate {
            opened_at: None,
            held: Prebuffer::new(prebuffer_packets),
            playout_at: None,
        }
    }

    pub fn is_open(&self) -> bool {
        self.opened_at.is_some()
    }

    /// Open it (once); false if it already was.
    pub fn open(&mut self, now: Instant) -> bool {
        if self.opened_at.is_some() {
            return false;
        }
        self.opened_at = Some(now);
        true
    }

    pub fn has_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// An internal packet (plaintext RTP): hold it, or let the caller send it now.
    pub fn route(&mut self, pkt: &[u8], now: Instant, can_send: bool) -> Route {
        if can_send && self.held.is_empty() {
            return Route::Send;
        }
        self.held.push(pkt, now);
        if can_send && self.playout_at.is_none() {
            self.playout_at = Some(now);
        }
        Route::Held
    }

    /// The WhatsApp leg may carry media now: play held media out from now. False if nothing
    /// is held.
    pub fn start_playout(&mut self, now: Instant) -> bool {
        if self.held.is_empty() {
            return false;
        }
        self.playout_at = Some(now);
        true
    }

    /// The held packet due at `now` (copied into `pkt`, its length returned); the next one is
    /// due half a packet time later.
    pub fn pop_due(&mut self, now: Instant, cfg: &CallConfig, pkt: &mut [u8]) -> Option<usize> {
        let next = self.playout_at?;
        if next > now {
            return None;
        }
        let popped = self.held.pop_into(pkt).map(|(n, _arrived)| n);
        self.playout_at = if self.held.is_empty() {
            None
        } else {
            Some(now + cfg.ptime / 2)
        };
        popped
    }

    /// The grid slot of the next silence frame (see [`super::fill`]): a whole number of
    /// packet times after the last packet sent, once the internal leg has been quiet for the
    /// fill's adaptive wait. The maiden packet is due when the gate opens.
    pub fn next_fill_at(&self, cfg: &CallConfig, v: &FillView<'_>) -> Option<Instant> {
        if !cfg.silence_fill || !v.can_send || self.has_held() {
            return None;
        }
        let Some(last) = v.last_sent else {
            return self.opened_at;
        };
        let quiet_at = v.last_internal.map_or(last, |t| {
            t + v
                .arrivals
                .fill_wait(cfg.ptime, cfg.fill_after, cfg.fill_after_max)
        });
        Some(fill::first_slot(last, cfg.ptime, quiet_at))
    }

    /// Held media to play out, or a silence frame, whichever is due first.
    pub fn poll_timeout(&self, cfg: &CallConfig, v: &FillView<'_>) -> Option<Instant> {
        [self.playout_at, self.next_fill_at(cfg, v)]
            .into_iter()
            .flatten()
            .min()
    }
}
