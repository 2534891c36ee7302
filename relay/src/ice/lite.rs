//! The ice-lite agent (RFC 8445 §2.5): it sends no checks, answers the controlling peer's
//! checks and uses the pair the peer nominates with USE-CANDIDATE.
//!
//! The latest nomination wins: a controlling peer that nominates again on another pair (it
//! moved networks, or a better pair succeeded) moves our selection with it. Consent is the
//! lite side's view of RFC 7675: the peer's checks on the selected pair are its consent
//! checks, so we declare consent lost after `consent_timeout` without one. Without any
//! nomination within `connect_timeout` of creation the agent fails.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use crate::ice::responder::{self, SCRATCH_LEN};
use crate::ice::{IceConfig, IceCredentials, IceEvent, IceState, IceStats, later};
use crate::net::{Outbox, SocketRef};
use crate::wire::stun::{BINDING, StunClass, StunMessage};

pub struct LiteAgent {
    cfg: IceConfig,
    local: IceCredentials,
    remote: Option<IceCredentials>,
    state: IceState,
    created: Instant,
    selected: Option<(SocketRef, SocketAddr)>,
    last_check: Instant,
    events: VecDeque<IceEvent>,
    stats: IceStats,
    scratch: [u8; SCRATCH_LEN],
}

impl LiteAgent {
    pub fn new(local: IceCredentials, now: Instant, cfg: IceConfig) -> Self {
        LiteAgent {
            cfg,
            local,
            remote: None,
            state: IceState::New,
            created: now,
            selected: None,
            last_check: now,
            events: VecDeque::with_capacity(8),
            stats: IceStats::default(),
            scratch: [0; SCRATCH_LEN],
        }
    }

    /// Optional: once known, USERNAME must be exactly `local_ufrag:remote_ufrag`.
    pub fn set_remote_credentials(&mut self, remote: IceCredentials) {
        self.remote = Some(remote);
    }

    pub fn local_credentials(&self) -> &IceCredentials {
        &self.local
    }

    pub fn state(&self) -> IceState {
        self.state
    }

    pub fn stats(&self) -> IceStats {
        self.stats
    }

    pub fn selected(&self) -> Option<(SocketRef, SocketAddr)> {
        self.selected
    }

    /// When the peer last checked the selected pair (its consent), once it nominated one.
    pub fn last_consent(&self) -> Option<Instant> {
        (self.state == IceState::Connected).then_some(self.last_check)
    }

    pub fn poll_event(&mut self) -> Option<IceEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            IceState::Failed | IceState::ConsentLost => None,
            IceState::New | IceState::Checking => {
                Some(later(self.created, self.cfg.connect_timeout))
            }
            IceState::Connected => Some(later(self.last_check, self.cfg.consent_timeout)),
        }
    }

    /// Checks the connect and consent deadlines. `out` is unused (a lite agent never sends
    /// on its own) and kept for the same shape as [`crate::ice::ControllingAgent`].
    pub fn handle_timeout(&mut self, now: Instant, _out: &mut impl Outbox) {
        match self.state {
            IceState::New | IceState::Checking
                if now >= later(self.created, self.cfg.connect_timeout) =>
            {
                self.state = IceState::Failed;
                self.events.push_back(IceEvent::Failed);
            }
            IceState::Connected if now >= later(self.last_check, self.cfg.consent_timeout) => {
                self.state = IceState::ConsentLost;
                self.events.push_back(IceEvent::ConsentLost);
            }
            _ => {}
        }
    }

    /// Answers authenticated Binding requests; everything else is ignored (a lite agent has
    /// no transactions of its own). `raw` is the datagram `msg` borrows; it is not read.
    pub fn handle_stun(
        &mut self,
        now: Instant,
        via: SocketRef,
        from: SocketAddr,
        msg: &StunMessage<'_>,
        _raw: &[u8],
        out: &mut impl Outbox,
    ) {
        if self.state.is_terminal() || msg.class() != StunClass::Request || msg.method() != BINDING
        {
            return;
        }
        if !responder::answer_request(
            &mut self.scratch,
            out,
            &mut self.stats,
            via,
            from,
            msg,
            &self.local,
            self.remote.as_ref(),
            responder::OurRole::Controlled,
        ) {
            return;
        }
        if self.state == IceState::New {
            self.state = IceState::Checking;
        }
        let pair = (via, from);
        if msg.use_candidate() {
            match self.selected {
                None => {
                    self.state = IceState::Connected;
                    self.events
                        .push_back(IceEvent::Connected { via, remote: from });
                }
                Some(current) if current != pair => {
                    self.events
                        .push_back(IceEvent::SelectedPairChanged { via, remote: from });
                }
                Some(_) => {}
            }
            self.selected = Some(pair);
            self.last_check = now;
        } else if self.selected == Some(pair) {
            self.last_check = now;
        }
    }
}
