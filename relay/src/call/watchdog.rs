//! The call's watchdog: every rule that ends or reports a call because something did *not*
//! happen in time, as one sub-machine with its own [`Watchdog::poll_timeout`].
//!
//! - Lifetimes: Meta's answer (business-initiated, `answer_timeout`), the accept once offer
//!   and answer are known (`accept_timeout`), and the call itself (`max_call_duration`).
//! - Meta's rules applied inward once the gate is open: nothing from WhatsApp within
//!   `start_media_timeout` (138023), or media that stopped for `media_timeout` (138021).
//! - Reports, judged once a second after the gate opens: the internal leg silent for
//!   `internal_silence_timeout` (and, if configured, the end), one-way audio.
//!
//! The call feeds it what happened (`on_*`) and asks it, when its deadline is due, for a
//! [`Verdict`]; events go to the call's queue. It reads no clock and sends nothing.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::api::{CallEventKind, EndCause, LegKind};
use crate::call::CallConfig;

/// Cadence of the silence / one-way audio checks.
const LEG_CHECK_EVERY: Duration = Duration::from_secs(1);

/// What the watchdog decided at a deadline.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// End the call; the peers may still be there, so say BYE first (a lifetime ran out).
    EndWithBye(EndCause),
    /// End the call; a peer went quiet, so there is nobody to say BYE to.
    End(EndCause),
}

#[derive(Debug)]
pub struct Watchdog {
    created: Instant,
    /// When both of the WhatsApp leg's descriptions were known (create for user-initiated
    /// calls, Meta's answer for business-initiated ones): `accept_timeout` counts from here.
    described_at: Option<Instant>,
    /// The signaling tier opened the gate.
    gate_open_at: Option<Instant>,
    /// Last authenticated packet (RTP or RTCP) from WhatsApp, for the inward timeouts.
    last_wa_media: Option<Instant>,
    /// Last RTP packet from the internal leg (also what silence fill waits on).
    last_internal_media: Option<Instant>,
    /// The current silent spell of the internal leg was reported.
    internal_silence_reported: bool,
    /// Next once-a-second silence/one-way check (set when the gate opens).
    check_at: Option<Instant>,
    /// The leg reported silent in a one-way episode, until it sends again.
    one_way: Option<LegKind>,
}

impl Watchdog {
    pub fn new(created: Instant, described_at: Option<Instant>) -> Watchdog {
        Watchdog {
            created,
            described_at,
            gate_open_at: None,
            last_wa_media: None,
            last_internal_media: None,
            internal_silence_reported: false,
            check_at: None,
            one_way: None,
        }
    }

    /// Meta's answer arrived (business-initiated).
    pub fn on_described(&mut self, now: Instant) {
        self.described_at = Some(now);
    }

    pub fn on_gate_opened(&mut self, now: Instant) {
        self.gate_open_at = Some(now);
        self.check_at = Some(now + LEG_CHECK_EVERY);
    }

    /// An authenticated RTP packet from WhatsApp.
    pub fn on_wa_rtp(&mut self, now: Instant) {
        self.last_wa_media = Some(now);
        if self.one_way == Some(LegKind::WhatsApp) {
            self.one_way = None;
        }
    }

    /// An authenticated RTCP packet from WhatsApp: it keeps the inward timeouts at bay.
    pub fn on_wa_rtcp(&mut self, now: Instant) {
        self.last_wa_media = Some(now);
    }

    /// An RTP packet from the internal leg.
    pub fn on_internal_rtp(&mut self, now: Instant) {
        self.last_internal_media = Some(now);
        self.internal_silence_reported = false;
        if self.one_way == Some(LegKind::Internal) {
            self.one_way = None;
        }
    }

    /// A new internal peer (transfer): a full silence window before it counts as silent.
    pub fn on_internal_replaced(&mut self, now: Instant) {
        self.on_internal_rtp(now);
    }

    pub fn last_internal_media(&self) -> Option<Instant> {
        self.last_internal_media
    }

    pub fn poll_timeout(&self, cfg: &CallConfig) -> Option<Instant> {
        [
            self.lifetime_deadline(cfg).map(|(t, _)| t),
            self.media_timeout_deadline(cfg),
            self.check_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Judge the call at `now`. Reports go to `events`; a returned verdict ends the call.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        cfg: &CallConfig,
        events: &mut VecDeque<CallEventKind>,
    ) -> Option<Verdict> {
        if let Some((at, cause)) = self.lifetime_deadline(cfg)
            && now >= at
        {
            return Some(Verdict::EndWithBye(cause));
        }
        if let Some(cause) = self.check_media_timeouts(now, cfg) {
            return Some(Verdict::End(cause));
        }
        self.check_leg_silence(now, cfg, events).map(Verdict::End)
    }

    /// The bounded life of each state that waits on someone else, and of the call itself:
    /// Meta's answer (business-initiated), the accept (`OpenGate`) once both descriptions are
    /// known, and `max_call_duration` from create. The earliest, with its cause.
    fn lifetime_deadline(&self, cfg: &CallConfig) -> Option<(Instant, EndCause)> {
        let answer = self
            .described_at
            .is_none()
            .then(|| (self.created + cfg.answer_timeout, EndCause::AnswerTimeout));
        let accept = match (self.gate_open_at, self.described_at) {
            (None, Some(t)) => Some((t + cfg.accept_timeout, EndCause::AcceptTimeout)),
            _ => None,
        };
        let max = (!cfg.max_call_duration.is_zero())
            .then(|| (self.created + cfg.max_call_duration, EndCause::MaxDuration));
        [answer, accept, max]
            .into_iter()
            .flatten()
            .min_by_key(|(t, _)| *t)
    }

    fn media_timeout_deadline(&self, cfg: &CallConfig) -> Option<Instant> {
        let gate = self.gate_open_at?;
        Some(match self.last_wa_media {
            Some(t) if t >= gate => t + cfg.media_timeout,
            _ => gate + cfg.start_media_timeout,
        })
    }

    /// Meta's rules applied inward: nothing from WhatsApp after the gate opened, or media
    /// that stopped.
    fn check_media_timeouts(&self, now: Instant, cfg: &CallConfig) -> Option<EndCause> {
        let deadline = self.media_timeout_deadline(cfg)?;
        if now < deadline {
            return None;
        }
        let flowed =
            matches!((self.last_wa_media, self.gate_open_at), (Some(t), Some(g)) if t >= g);
        Some(if flowed {
            EndCause::MediaReceiveTimeout
        } else {
            EndCause::NoMediaAfterAccept
        })
    }

    /// Since when the internal leg has been quiet (gate open).
    fn internal_quiet_since(&self) -> Option<Instant> {
        let gate = self.gate_open_at?;
        Some(self.last_internal_media.map_or(gate, |t| t.max(gate)))
    }

    /// The internal leg silent too long, or media flowing one way only. Silence and one-way
    /// audio are judged once a second after the gate opens: they are reports for the
    /// signaling tier, not Meta's hard timers, and a fixed cadence cannot get stuck on a
    /// deadline that passes without anything to report.
    fn check_leg_silence(
        &mut self,
        now: Instant,
        cfg: &CallConfig,
        events: &mut VecDeque<CallEventKind>,
    ) -> Option<EndCause> {
        let quiet = self.internal_quiet_since()?;
        match self.check_at {
            Some(t) if t <= now => self.check_at = Some(now + LEG_CHECK_EVERY),
            _ => return None,
        }
        let silent_for = now.saturating_duration_since(quiet);
        if !self.internal_silence_reported && silent_for >= cfg.internal_silence_timeout {
            self.internal_silence_reported = true;
            events.push_back(CallEventKind::InternalLegSilent {
                silent_for_ms: silent_for.as_millis() as u64,
            });
            if cfg.end_on_internal_silence {
                return Some(EndCause::InternalLegTimeout);
            }
        }
        if self.one_way.is_some() {
            return None;
        }
        // "Flowing" = a packet within the last second; "silent" = nothing for one_way_timeout.
        let recent = |t: Option<Instant>| {
            t.is_some_and(|t| now.saturating_duration_since(t) < LEG_CHECK_EVERY)
        };
        let quiet_long = |t: Option<Instant>, since: Instant| {
            now.saturating_duration_since(t.map_or(since, |t| t.max(since))) >= cfg.one_way_timeout
        };
        let gate = quiet.min(self.gate_open_at.unwrap_or(quiet));
        let silent = if recent(self.last_wa_media) && quiet_long(self.last_internal_media, gate) {
            Some(LegKind::Internal)
        } else if recent(self.last_internal_media) && quiet_long(self.last_wa_media, gate) {
            Some(LegKind::WhatsApp)
        } else {
            None
        };
        if let Some(silent) = silent {
            self.one_way = Some(silent);
            events.push_back(CallEventKind::OneWayAudio { silent });
        }
        None
    }
}
