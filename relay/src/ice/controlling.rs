//! The controlling full-ICE agent we run toward WhatsApp.
//!
//! Choices, and why:
//! - **Aggressive nomination**: every check carries USE-CANDIDATE. Meta's side is ice-lite,
//!   and a lite agent treats a successful nominated check as selecting that pair, so the
//!   first success is usable at once (no extra round trip before the DTLS ClientHello).
//!   The first pair to succeed is selected; lower-priority pairs are then cancelled, while
//!   higher-priority pairs already in flight may still succeed and take over. Right after
//!   selecting, if other pairs were nominated too, we send one more nominating check on the
//!   selected pair, so a lite peer that follows the latest nomination agrees with us.
//! - **Short retransmissions until the deadline**: a check is retransmitted at 50, 100, 200,
//!   400 ms then every 500 ms (configurable) until it succeeds or `connect_timeout`
//!   passes, rather than giving up after RFC 8489's seven transmissions: Meta answers only
//!   after it processed our SDP. A 401 response means the same thing (Meta does not know
//!   our credentials yet) and keeps the pair alive; a 487 is counted and retried (we never
//!   give up the controlling role, which is what makes Meta work); other errors fail the pair.
//!   Every response, errors included, must come from the checked address and carry valid
//!   MESSAGE-INTEGRITY (Meta's password); anything else is dropped and counted, so an
//!   unauthenticated error cannot kill a pair.
//! - **Consent** (RFC 7675): a check on the selected pair every 4–6 s, each with a new
//!   transaction ID and no retransmissions; consent is lost `consent_timeout` after the last
//!   authenticated response on the selected pair.
//! - **Moving peers**: an authenticated request from an unknown address becomes a
//!   peer-reflexive candidate with a triggered check; so does a candidate added late. When a
//!   check to such a new remote succeeds after selection, the selected pair switches to it
//!   ([`IceEvent::SelectedPairChanged`]). Both directions must authenticate: the request with
//!   our password (anything else gets no answer and no check), the response to our check
//!   with the peer's, so someone replaying a captured check from elsewhere gets one answer
//!   and a check it cannot answer, never the call. When the pair table is full, a dead pair
//!   (failed or cancelled) makes room for the new one.
//! - **Connect timeout** counts from the moment checks can start (remote credentials and a
//!   pair), not from creation: business-initiated calls learn Meta's credentials only when
//!   the callee answers.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::ice::responder::{self, SCRATCH_LEN};
use crate::ice::{
    IceConfig, IceCredentials, IceEvent, IceState, IceStats, TYPE_PREF_HOST,
    TYPE_PREF_PEER_REFLEXIVE, candidate_priority, later, pair_priority,
};
use crate::net::{Outbox, SocketRef};
use crate::wire::stun::{BINDING, StunClass, StunMessage, code};

/// Late consent responses are matched against this many recent transaction IDs.
const CONSENT_TIDS: usize = 4;

/// Remote candidates and pairs a call's agent reserves room for at creation.
const TYPICAL_PAIRS: usize = 4;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum PairState {
    Waiting,
    InProgress,
    Succeeded,
    Failed,
    /// Dropped when another pair was selected.
    Cancelled,
}

#[derive(Clone, Debug)]
struct Pair {
    via: SocketRef,
    remote: SocketAddr,
    /// Our candidate's peer-reflexive priority, sent in PRIORITY.
    prflx_priority: u32,
    priority: u64,
    state: PairState,
    tid: [u8; 12],
    first_sent: Option<Instant>,
    next_send: Instant,
    rto: Duration,
    /// Queued by an incoming request: checked before ordinary waiting pairs.
    triggered: bool,
    /// Success on this pair after selection switches the selected pair to it.
    may_switch: bool,
}

#[derive(Copy, Clone, Debug)]
struct Local {
    socket: SocketRef,
    addr: SocketAddr,
    local_pref: u16,
}

#[derive(Copy, Clone, Debug)]
struct Remote {
    addr: SocketAddr,
    priority: u32,
}

/// See the module documentation for the behaviour.
pub struct ControllingAgent {
    cfg: IceConfig,
    local: IceCredentials,
    remote: Option<IceCredentials>,
    /// USERNAME of our checks: `remote_ufrag:local_ufrag`.
    check_username: Vec<u8>,
    locals: Vec<Local>,
    remotes: Vec<Remote>,
    pairs: Vec<Pair>,
    state: IceState,
    selected: Option<usize>,
    tiebreaker: u64,
    rng: StdRng,
    last_now: Instant,
    started: Option<Instant>,
    next_pace: Instant,
    consent_next: Instant,
    consent_last_response: Instant,
    consent_tids: [Option<[u8; 12]>; CONSENT_TIDS],
    consent_slot: usize,
    events: VecDeque<IceEvent>,
    stats: IceStats,
    scratch: [u8; SCRATCH_LEN],
}

impl ControllingAgent {
    pub fn new(local: IceCredentials, now: Instant, cfg: IceConfig) -> Self {
        let mut rng = match cfg.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let tiebreaker = rng.random();
        // Room for what a call normally has (WhatsApp's host candidates over our two sockets);
        // more grow the lists, up to `max_pairs`: a few reallocations in a call's life at most,
        // while reserving `max_pairs` up front held ~2.5 KiB per call for nothing.
        let typical = cfg.max_pairs.min(TYPICAL_PAIRS);
        ControllingAgent {
            cfg,
            local,
            remote: None,
            check_username: Vec::new(),
            locals: Vec::with_capacity(4),
            remotes: Vec::with_capacity(typical),
            pairs: Vec::with_capacity(typical),
            state: IceState::New,
            selected: None,
            tiebreaker,
            rng,
            last_now: now,
            started: None,
            next_pace: now,
            consent_next: now,
            consent_last_response: now,
            consent_tids: [None; CONSENT_TIDS],
            consent_slot: 0,
            events: VecDeque::with_capacity(8),
            stats: IceStats::default(),
            scratch: [0; SCRATCH_LEN],
        }
    }

    pub fn local_credentials(&self) -> &IceCredentials {
        &self.local
    }

    pub fn tiebreaker(&self) -> u64 {
        self.tiebreaker
    }

    pub fn state(&self) -> IceState {
        self.state
    }

    pub fn stats(&self) -> IceStats {
        self.stats
    }

    /// The remote ufrag/pwd from the peer's SDP. Unusable credentials (empty, `:` in the
    /// ufrag, over 256 bytes) fail the agent.
    pub fn set_remote_credentials(&mut self, remote: IceCredentials) {
        if self.state.is_terminal() {
            return;
        }
        if !remote.usable() {
            self.fail();
            return;
        }
        self.check_username.clear();
        self.check_username
            .extend_from_slice(remote.ufrag.as_bytes());
        self.check_username.push(b':');
        self.check_username
            .extend_from_slice(self.local.ufrag.as_bytes());
        self.remote = Some(remote);
    }

    /// One of our host addresses and the socket it belongs to. Candidates are preferred in
    /// the order they are added (local preference 65535, 65534, ...); SDP should list them
    /// with the priorities [`Self::local_candidates`] reports.
    pub fn add_local(&mut self, socket: SocketRef, addr: SocketAddr) {
        if self.state.is_terminal() || self.locals.iter().any(|l| l.addr == addr) {
            return;
        }
        let local_pref = u16::MAX.saturating_sub(self.locals.len() as u16);
        self.locals.push(Local {
            socket,
            addr,
            local_pref,
        });
        self.form_pairs();
    }

    /// Our candidates with their host priorities, for the SDP writer.
    pub fn local_candidates(&self) -> impl Iterator<Item = (SocketRef, SocketAddr, u32)> + '_ {
        self.locals.iter().map(|l| {
            (
                l.socket,
                l.addr,
                candidate_priority(TYPE_PREF_HOST, l.local_pref, 1),
            )
        })
    }

    /// A remote candidate from the peer's SDP (component 1; RTCP is muxed).
    pub fn add_remote_candidate(&mut self, addr: SocketAddr, priority: u32) {
        if self.state.is_terminal() {
            return;
        }
        self.add_remote(addr, priority);
        self.form_pairs();
    }

    fn add_remote(&mut self, addr: SocketAddr, priority: u32) {
        if self.remotes.iter().any(|r| r.addr == addr) || self.remotes.len() >= self.cfg.max_pairs {
            return;
        }
        self.remotes.push(Remote { addr, priority });
    }

    /// Pairs every local candidate with every remote candidate of the same family, keyed by
    /// (socket, remote): two local addresses on one socket would send identical datagrams.
    fn form_pairs(&mut self) {
        let may_switch = self.selected.is_some();
        for l in &self.locals {
            for r in &self.remotes {
                if l.addr.is_ipv4() != r.addr.is_ipv4()
                    || self.pairs.len() >= self.cfg.max_pairs
                    || self
                        .pairs
                        .iter()
                        .any(|p| p.via == l.socket && p.remote == r.addr)
                {
                    continue;
                }
                let host = candidate_priority(TYPE_PREF_HOST, l.local_pref, 1);
                self.pairs.push(Pair {
                    via: l.socket,
                    remote: r.addr,
                    prflx_priority: candidate_priority(TYPE_PREF_PEER_REFLEXIVE, l.local_pref, 1),
                    priority: pair_priority(host, r.priority),
                    state: PairState::Waiting,
                    tid: [0; 12],
                    first_sent: None,
                    next_send: self.last_now,
                    rto: self.cfg.rto_initial,
                    triggered: false,
                    may_switch,
                });
            }
        }
    }

    /// The selected pair: the socket to send on and the peer's address.
    pub fn selected(&self) -> Option<(SocketRef, SocketAddr)> {
        let p = self.pairs.get(self.selected?)?;
        Some((p.via, p.remote))
    }

    pub fn poll_event(&mut self) -> Option<IceEvent> {
        self.events.pop_front()
    }

    /// Did a check on this pair succeed? With aggressive nomination every successful pair is
    /// nominated, and a lite peer may send from any of them (RFC 8445 §8.2 lets it pick the
    /// highest-priority nominated pair, which need not be the one we picked).
    pub fn is_valid_pair(&self, via: SocketRef, remote: SocketAddr) -> bool {
        self.pairs
            .iter()
            .any(|p| p.via == via && p.remote == remote && p.state == PairState::Succeeded)
    }

    /// Is `addr` a remote this agent checks on `via` (from the SDP, or peer-reflexive from
    /// an authenticated request)? Such a source is expected, validated or not: the shard does
    /// not charge it to the per-source limit, since one Meta server address carries many
    /// calls whose first responses all arrive before their pairs are valid.
    pub fn is_remote_candidate(&self, via: SocketRef, addr: SocketAddr) -> bool {
        self.pairs.iter().any(|p| p.via == via && p.remote == addr)
    }

    fn ready(&self) -> bool {
        self.remote.is_some() && !self.pairs.is_empty()
    }

    /// The next instant [`Self::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            IceState::Failed | IceState::ConsentLost => return None,
            IceState::New => return self.ready().then_some(self.last_now),
            IceState::Checking | IceState::Connected => {}
        }
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        if self.selected.is_none() {
            if let Some(started) = self.started {
                at(later(started, self.cfg.connect_timeout));
            }
        } else {
            at(self.consent_next);
            at(later(self.consent_last_response, self.cfg.consent_timeout));
        }
        for p in &self.pairs {
            match p.state {
                PairState::InProgress => {
                    at(p.next_send);
                    if let Some(first) = p.first_sent {
                        at(later(first, self.cfg.connect_timeout));
                    }
                }
                PairState::Waiting => at(self.next_pace.max(p.next_send)),
                _ => {}
            }
        }
        next
    }

    pub fn handle_timeout(&mut self, now: Instant, out: &mut impl Outbox) {
        self.last_now = now;
        match self.state {
            IceState::Failed | IceState::ConsentLost => return,
            IceState::New if !self.ready() => return,
            IceState::New => {
                self.state = IceState::Checking;
                self.started = Some(now);
                self.next_pace = now;
            }
            IceState::Checking | IceState::Connected => {}
        }
        if self.selected.is_none()
            && self
                .started
                .is_some_and(|s| now >= later(s, self.cfg.connect_timeout))
        {
            self.fail();
            return;
        }

        for i in 0..self.pairs.len() {
            let Some(p) = self.pairs.get_mut(i) else {
                continue;
            };
            if p.state != PairState::InProgress {
                continue;
            }
            if p.first_sent
                .is_some_and(|f| now >= later(f, self.cfg.connect_timeout))
            {
                p.state = PairState::Failed;
                continue;
            }
            if now >= p.next_send {
                p.rto = (p.rto * 2).min(self.cfg.rto_max);
                p.next_send = later(now, p.rto);
                self.send_check(i, out);
            }
        }

        if now >= self.next_pace
            && let Some(i) = self.next_waiting(now)
            && let Some(p) = self.pairs.get_mut(i)
        {
            p.state = PairState::InProgress;
            p.triggered = false;
            p.tid = self.rng.random();
            p.first_sent = Some(now);
            p.rto = self.cfg.rto_initial;
            p.next_send = later(now, p.rto);
            self.next_pace = later(now, self.cfg.ta);
            self.send_check(i, out);
        }

        if self.selected.is_none() && self.all_failed() {
            self.fail();
            return;
        }

        if self.selected.is_some() {
            if now >= later(self.consent_last_response, self.cfg.consent_timeout) {
                self.state = IceState::ConsentLost;
                self.events.push_back(IceEvent::ConsentLost);
                return;
            }
            if now >= self.consent_next {
                self.send_consent(now, out);
            }
        }
    }

    /// The waiting pair to check next: triggered ones first, then by pair priority.
    fn next_waiting(&self, now: Instant) -> Option<usize> {
        self.pairs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.state == PairState::Waiting && p.next_send <= now)
            .max_by_key(|(_, p)| (p.triggered, p.priority))
            .map(|(i, _)| i)
    }

    fn all_failed(&self) -> bool {
        !self.pairs.is_empty() && self.pairs.iter().all(|p| p.state == PairState::Failed)
    }

    fn fail(&mut self) {
        if !self.state.is_terminal() {
            self.state = IceState::Failed;
            self.events.push_back(IceEvent::Failed);
        }
    }

    /// Sends (or resends) pair `i`'s check with its current transaction ID.
    fn send_check(&mut self, i: usize, out: &mut impl Outbox) {
        let (Some(p), Some(remote)) = (self.pairs.get(i), self.remote.as_ref()) else {
            return;
        };
        let written = responder::write_check(
            &mut self.scratch,
            p.tid,
            &self.check_username,
            p.prflx_priority,
            true,
            self.tiebreaker,
            true,
            remote.pwd.as_bytes(),
        );
        match written.ok().and_then(|n| self.scratch.get(..n)) {
            Some(bytes) => {
                out.push(p.via, p.remote, bytes);
                self.stats.checks_sent += 1;
            }
            None => self.stats.write_errors += 1,
        }
    }

    fn send_consent(&mut self, now: Instant, out: &mut impl Outbox) {
        let delay = self.consent_delay();
        self.consent_next = later(now, delay);
        let (Some(p), Some(remote)) = (
            self.selected.and_then(|s| self.pairs.get(s)),
            self.remote.as_ref(),
        ) else {
            return;
        };
        let tid: [u8; 12] = self.rng.random();
        if let Some(slot) = self.consent_tids.get_mut(self.consent_slot) {
            *slot = Some(tid);
        }
        self.consent_slot = (self.consent_slot + 1) % CONSENT_TIDS;
        let written = responder::write_check(
            &mut self.scratch,
            tid,
            &self.check_username,
            p.prflx_priority,
            true,
            self.tiebreaker,
            true,
            remote.pwd.as_bytes(),
        );
        match written.ok().and_then(|n| self.scratch.get(..n)) {
            Some(bytes) => {
                out.push(p.via, p.remote, bytes);
                self.stats.consent_checks_sent += 1;
            }
            None => self.stats.write_errors += 1,
        }
    }

    /// RFC 7675 §5.1: uniformly random in [0.8, 1.2] × the interval.
    fn consent_delay(&mut self) -> Duration {
        let nanos = self.cfg.consent_interval.as_nanos();
        let lo = nanos * 4 / 5;
        let hi = nanos * 6 / 5;
        let pick = self.rng.random_range(lo..=hi);
        Duration::from_nanos(u64::try_from(pick).unwrap_or(u64::MAX))
    }

    /// Feeds a STUN message that arrived on `via` from `from`. `raw` is the datagram `msg`
    /// was parsed from; `msg` already borrows it, so it is not read again.
    pub fn handle_stun(
        &mut self,
        now: Instant,
        via: SocketRef,
        from: SocketAddr,
        msg: &StunMessage<'_>,
        _raw: &[u8],
        out: &mut impl Outbox,
    ) {
        self.last_now = now;
        if self.state.is_terminal() || msg.method() != BINDING {
            return;
        }
        match msg.class() {
            StunClass::Request => self.on_request(via, from, msg, out),
            StunClass::SuccessResponse | StunClass::ErrorResponse => {
                self.on_response(now, via, from, msg)
            }
            StunClass::Indication => {}
        }
    }

    fn on_request(
        &mut self,
        via: SocketRef,
        from: SocketAddr,
        msg: &StunMessage<'_>,
        out: &mut impl Outbox,
    ) {
        if !responder::answer_request(
            &mut self.scratch,
            out,
            &mut self.stats,
            via,
            from,
            msg,
            &self.local,
            self.remote.as_ref(),
            responder::OurRole::Controlling,
        ) {
            return;
        }
        self.trigger_check(via, from, msg.priority().unwrap_or(0));
    }

    /// RFC 8445 §7.3.1.4: a request on a pair queues a triggered check; from an unknown
    /// address it first creates a peer-reflexive remote candidate.
    fn trigger_check(&mut self, via: SocketRef, from: SocketAddr, priority: u32) {
        if let Some(p) = self
            .pairs
            .iter_mut()
            .find(|p| p.via == via && p.remote == from)
        {
            match p.state {
                PairState::Waiting => p.triggered = true,
                PairState::Failed => {
                    p.state = PairState::Waiting;
                    p.triggered = true;
                    p.first_sent = None;
                }
                _ => {}
            }
            return;
        }
        // A full table recycles a dead pair (failed, or cancelled by the selection), so checks
        // a stranger replays from many addresses cannot lock a moving peer out for good.
        let slot = if self.pairs.len() < self.cfg.max_pairs {
            None
        } else {
            match self.pairs.iter().enumerate().position(|(j, p)| {
                Some(j) != self.selected
                    && matches!(p.state, PairState::Failed | PairState::Cancelled)
            }) {
                Some(j) => Some(j),
                None => return,
            }
        };
        self.add_remote(from, priority);
        let local = self
            .locals
            .iter()
            .find(|l| l.socket == via && l.addr.is_ipv4() == from.is_ipv4())
            .map_or(u16::MAX, |l| l.local_pref);
        let host = candidate_priority(TYPE_PREF_HOST, local, 1);
        let pair = Pair {
            via,
            remote: from,
            prflx_priority: candidate_priority(TYPE_PREF_PEER_REFLEXIVE, local, 1),
            priority: pair_priority(host, priority),
            state: PairState::Waiting,
            tid: [0; 12],
            first_sent: None,
            next_send: self.last_now,
            rto: self.cfg.rto_initial,
            triggered: true,
            may_switch: self.selected.is_some(),
        };
        match slot.and_then(|j| self.pairs.get_mut(j)) {
            Some(dead) => *dead = pair,
            None => self.pairs.push(pair),
        }
    }

    fn on_response(&mut self, now: Instant, via: SocketRef, from: SocketAddr, msg: &StunMessage) {
        let tid = msg.transaction_id();
        let pair = self.pairs.iter().position(|p| {
            matches!(p.state, PairState::InProgress | PairState::Succeeded) && p.tid == tid
        });
        let consent = pair.is_none() && self.consent_tids.contains(&Some(tid));
        let expected = match (pair, consent) {
            (Some(i), _) => self.pairs.get(i).map(|p| (p.via, p.remote)),
            (None, true) => self.selected(),
            (None, false) => None,
        };
        // RFC 8445 §7.2.5.2.1: the response must come from where the check went.
        if expected != Some((via, from)) {
            self.stats.unmatched_responses += 1;
            return;
        }
        let Some(remote) = self.remote.as_ref() else {
            return;
        };
        if !msg.verify_integrity(remote.pwd.as_bytes())
            || (msg.has_fingerprint() && !msg.check_fingerprint())
        {
            self.stats.bad_integrity_drops += 1;
            return;
        }
        if msg.class() == StunClass::ErrorResponse {
            self.stats.error_responses += 1;
            self.on_error_response(pair, msg);
            return;
        }
        self.stats.responses_received += 1;
        let Some(i) = pair else {
            // A consent response on the selected pair.
            self.consent_last_response = now;
            return;
        };
        if let Some(p) = self.pairs.get_mut(i)
            && p.state == PairState::InProgress
        {
            p.state = PairState::Succeeded;
        }
        match self.selected {
            None => self.select(i, now, false),
            Some(s) if s == i => self.consent_last_response = now,
            Some(_) => {
                if self.pairs.get(i).is_some_and(|p| p.may_switch) {
                    self.select(i, now, true);
                }
            }
        }
    }

    fn on_error_response(&mut self, pair: Option<usize>, msg: &StunMessage) {
        let error = msg.error_code().map(|(c, _)| c);
        if error == Some(code::ROLE_CONFLICT) {
            self.stats.role_conflicts += 1;
        }
        let Some(p) = pair.and_then(|i| self.pairs.get_mut(i)) else {
            return; // consent: an error grants nothing, the timeout decides
        };
        if p.state != PairState::InProgress {
            return;
        }
        match error {
            // Retry under a new transaction ID at the next retransmission.
            Some(code::ROLE_CONFLICT | code::UNAUTHORIZED) => p.tid = self.rng.random(),
            _ => {
                p.state = PairState::Failed;
                if self.selected.is_none() && self.all_failed() {
                    self.fail();
                }
            }
        }
    }

    fn select(&mut self, i: usize, now: Instant, switch: bool) {
        let Some((via, remote, priority)) =
            self.pairs.get(i).map(|p| (p.via, p.remote, p.priority))
        else {
            return;
        };
        let mut nominated_elsewhere = false;
        for (j, p) in self.pairs.iter_mut().enumerate() {
            if j == i {
                p.may_switch = false;
                continue;
            }
            nominated_elsewhere |= p.first_sent.is_some();
            match p.state {
                PairState::Waiting => p.state = PairState::Cancelled,
                PairState::InProgress if p.priority < priority => p.state = PairState::Cancelled,
                PairState::InProgress => p.may_switch = true,
                _ => p.may_switch = false,
            }
        }
        self.selected = Some(i);
        self.state = IceState::Connected;
        self.consent_last_response = now;
        self.consent_next = if nominated_elsewhere {
            now
        } else {
            let delay = self.consent_delay();
            later(now, delay)
        };
        self.events.push_back(if switch {
            IceEvent::SelectedPairChanged { via, remote }
        } else {
            IceEvent::Connected { via, remote }
        });
    }
}
