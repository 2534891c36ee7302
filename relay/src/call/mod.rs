//! The call state machine: both legs, the media gate, rewriting, timers, statistics.
//!
//! Sans-IO. The engine hands every datagram of the call's sockets to
//! [`Call::handle_datagram`] and calls [`Call::handle_timeout`] when [`Call::poll_timeout`] is
//! due; the call pushes what it wants sent into an [`Outbox`] and queues [`CallEventKind`]s.
//! Read [`media`] for the per-packet path, top to bottom.

mod bot;
pub mod config;
mod error;
pub mod fill;
pub mod fork;
mod gate;
mod internal_webrtc;
mod legs;
mod media;
pub mod prebuffer;
mod replace;
pub mod rewrite;
mod rtcp;
pub mod seq_window;
mod setup;
pub mod stats;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
pub mod transcode;
mod watchdog;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

pub use config::CallConfig;
pub use error::CallError;
pub use setup::{Advertised, CallSetup, Created, LocalSockets};

use crate::api::{CallDirection, CallEventKind, CallInfo, CallState, EndCause, LegKind};
use crate::dtls::{DtlsEvent, DtlsIdentity};
use crate::ice::IceEvent;
use crate::net::{Outbox, SocketRef};
use crate::srtp::SrtpSession;

use gate::Gate;

/// The two legs every call has, as indices into [`Call::legs`].
pub(crate) const WA: usize = LegId::WHATSAPP.index_const();
pub(crate) const INT: usize = LegId::INTERNAL.index_const();
pub use legs::{Leg, LegId, Transport};
use watchdog::{Verdict, Watchdog};

/// The call's deadlines, cached so a media packet recomputes only what it can move.
///
/// Every input but media recomputes both parts. A media packet recomputes only the gate's
/// (an internal packet moves the silence fill's wait and may be held); what it does to the
/// rest (the watchdog's media timeouts, the browser's idle deadline) only moves them later, and
/// a cached deadline that is early merely wakes the call for nothing: the call runs, finds
/// nothing due, and recomputes. The rest always includes a deadline at most a second or an
/// RTCP interval away once media flows, so a stale part is refreshed within that.
#[derive(Copy, Clone, Debug, Default)]
struct Deadlines {
    /// Held media to play out, or the next silence frame ([`Gate::poll_timeout`]).
    gate: Option<Instant>,
    /// ICE, DTLS, the WebRTC leg, the watchdog, RTCP.
    rest: Option<Instant>,
    /// The earlier of the two: [`Call::poll_timeout`].
    next: Option<Instant>,
}

impl Deadlines {
    fn set(&mut self, gate: Option<Instant>, rest: Option<Instant>) {
        self.gate = gate;
        self.rest = rest;
        self.next = earliest(gate, rest);
    }

    fn set_gate(&mut self, gate: Option<Instant>) {
        self.set(gate, self.rest);
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

pub struct Call {
    pub call_id: String,
    pub business_number: String,
    pub consumer: String,
    direction: CallDirection,
    cfg: CallConfig,
    created_at: SystemTime,
    /// `now` at creation: the origin for RTCP wall-clock time and jitter arrival units.
    created_mono: Instant,
    identity: Arc<DtlsIdentity>,

    /// Every leg, by [`LegId`]: the WhatsApp leg ([`WA`]), then the internal leg ([`INT`]).
    /// An array while every call has exactly these two: indexing by a constant costs nothing
    /// on the packet path and the legs live inside the call as before (no extra allocation). A
    /// call that can gain legs (a fork's) makes this a `Vec` or a small vector; the code
    /// indexes and iterates it the same way.
    legs: [Leg; 2],

    /// The gate toward WhatsApp (opened when Meta's `accept` returned 200), the media held
    /// until then, and silence fill.
    gate: Gate,
    /// ICE + DTLS (or SDES) done: `WhatsAppReady` was emitted.
    wa_ready: bool,

    /// Timeouts, lifetimes, silence and one-way audio: what ends or reports the call when
    /// something does not happen in time.
    watchdog: Watchdog,
    /// The first RTP packet went to WhatsApp (`FirstMediaSent` was emitted).
    first_media_sent: bool,

    /// Time from creation to ICE connected and to DTLS connected (setup-time metrics).
    ice_connected_after: Option<std::time::Duration>,
    dtls_connected_after: Option<std::time::Duration>,

    events: VecDeque<CallEventKind>,
    ended: Option<EndCause>,
    /// The cached deadlines (see [`Deadlines`]).
    deadlines: Deadlines,
    /// The datagram being handled fed ICE or DTLS (which may now have events, flights or a
    /// new timer): the cascade of [`Call::after_input`] runs. Media alone does not need it.
    fed_control: bool,
    /// Recording (and later listen-in) copies of the media; see `fork.rs`.
    forks: fork::Forks,
    /// Sockets added while live that the call gives back (see [`Call::release_socket`]).
    released_sockets: Vec<SocketRef>,
    /// Per leg: the fixed peer last reported by [`Call::poll_peer_change`].
    peers: [Option<(SocketRef, SocketAddr)>; 2],
}

impl Call {
    /// The shard routes every datagram of this call's sockets here.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        via: SocketRef,
        from: SocketAddr,
        buf: &mut [u8],
        len: usize,
        out: &mut impl Outbox,
    ) {
        if self.ended.is_some() {
            return;
        }
        let internal = if self.forks.listen_socket() == Some(via) {
            // A supervisor's listen-in, on its own socket.
            if let Some(data) = buf.get_mut(..len) {
                self.forks.on_listen_datagram(now, from, data, out);
            }
            // Its ICE/DTLS may have moved: report and re-arm like any control input.
            self.fed_control = true;
            false
        } else {
            match self.leg_of(via) {
                Some(WA) => {
                    self.on_wa_datagram(now, via, from, buf, len, out);
                    false
                }
                Some(INT) => {
                    self.on_internal_datagram(now, from, buf, len, out);
                    true
                }
                // A socket added while live that no leg owns (any more): a late datagram.
                _ => return self.legs[INT].counters.drop(stats::DropReason::Unexpected),
            }
        };
        if std::mem::take(&mut self.fed_control) {
            self.after_input(now, out);
        } else {
            self.after_media(now, internal);
        }
    }

    /// Give back a socket the call gained while live (a fork's leg that ended): the engine
    /// stops receiving on it and closes it. Datagrams still in flight on it are dropped.
    pub fn release_socket(&mut self, id: SocketRef) {
        if id.index() >= SocketRef::FIRST_EXTRA.index() && !self.released_sockets.contains(&id) {
            self.released_sockets.push(id);
        }
    }

    /// The next socket the call gave back, for the engine to close.
    pub fn poll_released_socket(&mut self) -> Option<SocketRef> {
        self.released_sockets.pop()
    }

    /// The next change of a socket's fixed peer, for the engine's connected sockets: `(s,
    /// Some(p))` when socket `s` now talks only to `p` (ICE nominated a pair or Meta moved to
    /// a new one, the SDP gave the address, a latching leg latched, a transfer's new peer),
    /// `(s, None)` when `s` no longer has one (its leg moved to another socket or lost its
    /// peer). The engine polls it after every activity of the call; it compares each leg's
    /// [`Leg::fixed_peer`] with what it reported last, so every way a leg's path changes is
    /// caught without each of them having to say so. Nothing once the call ended (the engine
    /// closes all its sockets then).
    pub fn poll_peer_change(&mut self) -> Option<(SocketRef, Option<SocketAddr>)> {
        if self.ended.is_some() {
            return None;
        }
        for (leg, have) in self.legs.iter().zip(self.peers.iter_mut()) {
            let want = leg.fixed_peer();
            if want == *have {
                continue;
            }
            match (*have, want) {
                // The leg left this socket (or lost its peer): say so first.
                (Some((old, _)), w) if w.map(|w| w.0) != Some(old) => {
                    *have = None;
                    return Some((old, None));
                }
                (_, Some((via, to))) => {
                    *have = want;
                    return Some((via, Some(to)));
                }
                (_, None) => *have = None,
            }
        }
        None
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.next
    }

    pub fn handle_timeout(&mut self, now: Instant, out: &mut impl Outbox) {
        if self.ended.is_some() {
            return;
        }
        if let Some(ice) = self.legs[WA].ice_mut() {
            ice.agent.handle_timeout(now, out);
            if let Some(dtls) = ice.dtls.as_mut() {
                dtls.handle_timeout(now);
            }
        }
        self.internal_webrtc_timeout(now, out);
        self.forks.handle_timeout(now, out);
        if self.ended.is_some() {
            return;
        }
        match self
            .watchdog
            .handle_timeout(now, &self.cfg, &mut self.events)
        {
            Some(Verdict::EndWithBye(cause)) => {
                self.send_bye(now, out);
                return self.end(cause);
            }
            Some(Verdict::End(cause)) => return self.end(cause),
            None => {}
        }
        self.drain_prebuffer(now, out);
        self.bot_timeout(now, out);
        if self.ended.is_some() {
            return;
        }
        self.fill_silence(now, out);
        self.send_due_rtcp(now, out);
        self.after_input(now, out);
    }

    /// The signaling tier may now let media reach WhatsApp. Sends the maiden packet at once if
    /// the leg is ready (held media, else silence).
    pub fn open_gate(&mut self, now: Instant, out: &mut impl Outbox) {
        if self.gate.is_open() || self.ended.is_some() {
            return;
        }
        self.gate.open(now);
        self.watchdog.on_gate_opened(now);
        self.events.push_back(CallEventKind::GateOpened);
        self.on_wa_sendable(now, out);
        self.after_input(now, out);
    }

    /// End the call (signaling tier's terminate, drain). Sends RTCP BYE on both legs.
    pub fn terminate(&mut self, now: Instant, cause: EndCause, out: &mut impl Outbox) {
        if self.ended.is_some() {
            return;
        }
        self.send_bye(now, out);
        self.end(cause);
    }

    pub fn is_ended(&self) -> bool {
        self.ended.is_some()
    }

    pub fn poll_event(&mut self) -> Option<CallEventKind> {
        let ev = self.events.pop_front()?;
        self.forks.observe(&ev);
        Some(ev)
    }

    pub fn state(&self) -> CallState {
        if self.ended.is_some() {
            CallState::Ended
        } else if self.gate.is_open() && self.wa_ready {
            CallState::Active
        } else if self.wa_ready {
            CallState::Ready
        } else {
            CallState::Connecting
        }
    }

    pub fn info(&self) -> CallInfo {
        CallInfo {
            call_id: self.call_id.clone(),
            business_number: self.business_number.clone(),
            consumer: self.consumer.clone(),
            direction: self.direction,
            state: self.state(),
            gate_open: self.gate.is_open(),
            srtp_profile: self.legs[WA].srtp.as_ref().map(|s| s.tx.profile()),
            whatsapp_remote: self.legs[WA].remote,
            internal_remote: self.legs[INT].remote,
            whatsapp: self.leg_stats(WA),
            internal: self.leg_stats(INT),
            end_cause: self.ended,
            created_at: self.created_at,
        }
    }

    /// Setup times: (create → ICE connected, create → DTLS connected).
    pub fn setup_times(&self) -> (Option<std::time::Duration>, Option<std::time::Duration>) {
        (self.ice_connected_after, self.dtls_connected_after)
    }

    fn leg_stats(&self, leg: usize) -> crate::api::LegStats {
        let l = &self.legs[leg];
        l.counters
            .to_api(l.tx.packets, l.tx.octets, legs::OPUS_CLOCK)
    }

    /// One leg's loss, jitter and RTT now, for the live quality metrics.
    pub fn leg_quality(&self, leg: LegKind) -> stats::LegQuality {
        let l = &self.legs[LegId::of(leg).index()];
        stats::LegQuality {
            remote: l.remote,
            ..l.counters.quality(l.tx.packets, legs::OPUS_CLOCK)
        }
    }

    /// Counters of one leg for engine-wide metrics.
    pub fn leg_totals(&self, leg: LegKind) -> stats::LegTotals {
        let l = &self.legs[LegId::of(leg).index()];
        stats::LegTotals {
            rx_packets: l.counters.rx_packets,
            rx_bytes: l.counters.rx_bytes,
            tx_packets: l.tx.packets,
            tx_bytes: l.tx.octets,
            drops: l.counters.drops,
        }
    }

    /// Drops on one leg by reason (for metrics and tests).
    pub fn dropped(&self, leg: LegKind, reason: stats::DropReason) -> u64 {
        self.legs[LegId::of(leg).index()].counters.dropped(reason)
    }

    fn end(&mut self, cause: EndCause) {
        if self.ended.is_none() {
            self.ended = Some(cause);
            self.end_forks(cause);
            let stats = Box::new(self.info());
            self.events.push_back(CallEventKind::Ended {
                cause,
                meta_code: cause.meta_code(),
                stats,
            });
            self.deadlines = Deadlines::default();
        }
    }

    /// After any input: run the ICE/DTLS event cascade and recompute the deadline.
    fn after_input(&mut self, now: Instant, out: &mut impl Outbox) {
        self.forks.tick(now);
        self.process_ice_events(now, out);
        self.process_dtls(now, out);
        self.process_internal_webrtc(now, out);
        self.check_wa_ready(now, out);
        self.report_listen();
        if self.ended.is_none() {
            let gate = self.gate_deadline();
            let rest = self.rest_deadline();
            self.deadlines.set(gate, rest);
        }
    }

    /// After a media datagram (RTP, RTCP) that fed no sub-machine: nothing to cascade, and
    /// only the gate's deadline can have moved earlier (see [`Deadlines`]); it can only move
    /// for the internal leg's packets (they feed the silence fill's wait and the prebuffer).
    fn after_media(&mut self, now: Instant, internal: bool) {
        self.forks.tick(now);
        if internal && self.ended.is_none() {
            let gate = self.gate_deadline();
            self.deadlines.set_gate(gate);
        }
    }

    fn process_ice_events(&mut self, now: Instant, out: &mut impl Outbox) {
        loop {
            let Some(ice) = self.legs[WA].ice_mut() else {
                return;
            };
            let Some(ev) = ice.agent.poll_event() else {
                return;
            };
            match ev {
                IceEvent::Connected { via, remote } => {
                    self.legs[WA].set_path(via, remote);
                    self.ice_connected_after =
                        Some(now.saturating_duration_since(self.created_mono));
                    self.events
                        .push_back(CallEventKind::IceConnected { remote });
                    self.note_nominated_pair(via, remote);
                    // DTLS client: the ClientHello goes out the moment a check succeeds.
                    if let Some(dtls) = self.legs[WA].dtls_mut() {
                        dtls.start(now);
                    }
                    self.check_wa_ready(now, out);
                }
                IceEvent::SelectedPairChanged { via, remote } => {
                    // The WhatsApp side moved (Wi-Fi to mobile data) with valid credentials.
                    self.legs[WA].set_path(via, remote);
                    self.note_nominated_pair(via, remote);
                }
                IceEvent::ConsentLost => {
                    self.events.push_back(CallEventKind::ConsentLost);
                    self.end(EndCause::ConsentLost);
                }
                IceEvent::Failed => self.end(EndCause::IceFailed),
            }
        }
    }

    /// The per-call log's view of ICE toward WhatsApp: which pair, after how many checks.
    fn note_nominated_pair(&mut self, via: SocketRef, remote: SocketAddr) {
        let Some(ice) = self.legs[WA].ice() else {
            return;
        };
        let Some((_, local, _)) = ice.agent.local_candidates().find(|(s, _, _)| *s == via) else {
            return;
        };
        let stats = ice.agent.stats();
        self.events.push_back(CallEventKind::IcePairNominated {
            local,
            remote,
            checks_sent: stats.checks_sent,
            checks_answered: stats.responses_received,
        });
    }

    fn process_dtls(&mut self, now: Instant, out: &mut impl Outbox) {
        let path = self.legs[WA].path();
        let Some(dtls) = self.legs[WA].dtls_mut() else {
            return;
        };
        // Flush handshake flights toward the selected pair.
        if let Some((via, to)) = path {
            let mut scratch = [0u8; 1500];
            while let Some(n) = dtls.poll_transmit(&mut scratch) {
                out.push(via, to, &scratch[..n]);
            }
        }
        while let Some(ev) = self.legs[WA].dtls_mut().and_then(|d| d.poll_event()) {
            match ev {
                DtlsEvent::Connected { keys, profile } => match SrtpSession::new(&keys) {
                    Ok(s) => {
                        self.legs[WA].srtp = Some(Box::new(s));
                        self.dtls_connected_after =
                            Some(now.saturating_duration_since(self.created_mono));
                        self.events
                            .push_back(CallEventKind::DtlsConnected { profile });
                        self.check_wa_ready(now, out);
                        // As the client we are done with DTLS: Meta's Finished arrived, so it
                        // has ours and will not retransmit. (As the server, see the first
                        // media from WhatsApp.)
                        if self.legs[WA]
                            .dtls()
                            .is_some_and(|d| d.role() == crate::dtls::DtlsRole::Client)
                        {
                            self.release_wa_dtls();
                        }
                    }
                    Err(_) => self.end(EndCause::DtlsFailed),
                },
                DtlsEvent::Failed(crate::dtls::DtlsFailure::FingerprintMismatch) => {
                    self.end(EndCause::FingerprintMismatch)
                }
                DtlsEvent::Failed(_) => self.end(EndCause::DtlsFailed),
                DtlsEvent::Closed => self.end(EndCause::PeerClosed),
            }
        }
    }

    /// Free the WhatsApp leg's DTLS handshake state once nothing can need it, unless
    /// `call.keep_dtls_state` asks to keep reading Meta's close_notify. Callers decide when:
    /// a client at connect, a server at Meta's first authenticated SRTP.
    fn release_wa_dtls(&mut self) {
        if !self.cfg.keep_dtls_state
            && let Some(dtls) = self.legs[WA].dtls_mut()
        {
            dtls.release();
        }
    }

    /// Emit `WhatsAppReady` once, when the leg has a path and keys.
    fn check_wa_ready(&mut self, now: Instant, out: &mut impl Outbox) {
        if self.wa_ready || self.legs[WA].path().is_none() || self.legs[WA].srtp.is_none() {
            return;
        }
        self.wa_ready = true;
        self.events.push_back(CallEventKind::WhatsAppReady);
        self.on_wa_sendable(now, out);
    }

    #[inline]
    fn gate_deadline(&self) -> Option<Instant> {
        self.gate.poll_timeout(&self.cfg, &self.fill_view())
    }

    /// Every deadline but the gate's.
    fn rest_deadline(&self) -> Option<Instant> {
        [
            self.legs[WA].poll_timeout(),
            self.legs[INT].poll_timeout(),
            self.watchdog.poll_timeout(&self.cfg),
            self.webrtc_idle_deadline(),
            self.legs[WA].next_rtcp,
            self.legs[INT].next_rtcp,
            self.forks.poll_timeout(),
        ]
        .into_iter()
        .fold(None, earliest)
    }

    fn wa_can_send(&self) -> bool {
        self.gate.is_open() && self.wa_ready && self.ended.is_none()
    }

    /// The gate is open and the leg ready (whichever happened last): send the maiden packet
    /// and start the RTCP schedule.
    fn on_wa_sendable(&mut self, now: Instant, out: &mut impl Outbox) {
        if !self.wa_can_send() {
            return;
        }
        if self.legs[WA].next_rtcp.is_none() {
            // A first report soon after media starts, then every interval.
            self.legs[WA].next_rtcp = Some(
                now + self
                    .cfg
                    .rtcp_interval
                    .min(std::time::Duration::from_secs(1)),
            );
        }
        if self.gate.start_playout(now) {
            self.drain_prebuffer(now, out);
        } else if self.legs[WA].tx.last_sent_at().is_none() {
            self.send_silence(now, out);
        }
    }

    /// Does this call expect datagrams from `from` on `via`? True for the WhatsApp leg's
    /// selected and ICE-validated pairs (or the SDES address) and the remotes ICE is checking
    /// (Meta's candidates: their first responses arrive before the pair is valid, and one Meta
    /// server carries many calls), and for the internal leg's accepted remote. The shard
    /// rate-limits everything else per source before it gets here.
    pub fn knows_source(&self, via: SocketRef, from: SocketAddr) -> bool {
        if self.forks.listen_socket() == Some(via) {
            return self.forks.listen_knows(from);
        }
        self.leg_of(via)
            .is_some_and(|leg| self.legs[leg].knows(via, from))
    }

    /// The leg whose socket `via` is (an index into [`Self::legs`]): the one place that maps
    /// a socket to a leg. The two sockets every call starts with first, without a search.
    #[inline]
    fn leg_of(&self, via: SocketRef) -> Option<usize> {
        if via.is_whatsapp() {
            Some(WA)
        } else if via == SocketRef::Internal {
            Some(INT)
        } else {
            self.leg_owning(via)
        }
    }

    #[cold]
    #[inline(never)]
    fn leg_owning(&self, via: SocketRef) -> Option<usize> {
        self.legs.iter().position(|l| l.owns(via))
    }
}
