//! ICE (RFC 8445): the controlling full agent toward Meta's ice-lite side, and a lite responder.
//!
//! Both agents are sans-IO: they take datagrams ([`crate::wire::stun::StunMessage`]) and
//! `now`, push datagrams into an [`crate::net::Outbox`], queue [`IceEvent`]s and report their
//! next deadline through `poll_timeout`. Consent freshness (RFC 7675) is part of each agent.
//!
//! - [`ControllingAgent`]: we are full ICE and controlling toward WhatsApp (Meta is ice-lite
//!   and controlled). Every check carries USE-CANDIDATE (aggressive nomination), so the first
//!   pair to succeed is usable at once and DTLS can start without another round trip.
//! - [`LiteAgent`]: answers checks and follows the controlling peer's nominations (browser
//!   legs, and the WhatsApp emulator in tests).

mod controlling;
mod lite;
mod responder;

#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use rand::Rng;

use crate::net::SocketRef;
use std::net::SocketAddr;

pub use controlling::ControllingAgent;
pub use lite::LiteAgent;

/// A ufrag/password pair (RFC 8445 §5.3). Used for the local side (we check incoming
/// requests with `pwd`) and the remote side (our checks are keyed with its `pwd`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IceCredentials {
    pub ufrag: String,
    pub pwd: String,
}

/// `ice-char` of RFC 8839: ALPHA / DIGIT / "+" / "/".
const ICE_CHARS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

impl IceCredentials {
    pub fn new(ufrag: impl Into<String>, pwd: impl Into<String>) -> Self {
        IceCredentials {
            ufrag: ufrag.into(),
            pwd: pwd.into(),
        }
    }

    /// 8-character ufrag and 24-character password (≥ 128 bits of entropy as RFC 8445
    /// requires) from the OS-seeded thread RNG.
    pub fn random() -> Self {
        Self::random_with(&mut rand::rng())
    }

    pub fn random_with(rng: &mut impl Rng) -> Self {
        let mut pick = |n: usize| -> String {
            (0..n)
                .map(|_| char::from(ICE_CHARS[rng.random_range(0..ICE_CHARS.len())]))
                .collect()
        };
        let ufrag = pick(8);
        let pwd = pick(24);
        IceCredentials { ufrag, pwd }
    }

    /// RFC 8445 limits: ufrag 4–256 and pwd 22–256 characters. We only refuse what would
    /// break the protocol (empty, `:` in the ufrag, too long for our scratch buffer), so a
    /// peer that is lax about lengths still works.
    pub(crate) fn usable(&self) -> bool {
        !self.ufrag.is_empty()
            && self.ufrag.len() <= 256
            && !self.ufrag.contains(':')
            && !self.pwd.is_empty()
            && self.pwd.len() <= 256
    }
}

/// Timers and limits. Defaults follow the design notes: short retransmissions (tens of ms),
/// consent every ~5 s, consent lost after 30 s, give up connecting after 10 s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IceConfig {
    /// Pacing between new checks (RFC 8445 Ta).
    pub ta: Duration,
    /// First retransmission timeout of a check; doubles per retransmission.
    pub rto_initial: Duration,
    /// Retransmission timeout cap. Checks keep being retransmitted at this interval until
    /// they succeed or `connect_timeout` passes: Meta answers only once it has processed our
    /// SDP, which can take seconds.
    pub rto_max: Duration,
    /// Without a successful pair this long after checks could start, the agent fails. A pair
    /// added later is abandoned this long after its first check.
    pub connect_timeout: Duration,
    /// Mean interval between consent checks; each interval is drawn from 0.8–1.2 times this
    /// (RFC 7675 §5.1).
    pub consent_interval: Duration,
    /// Consent is lost after this long without an authenticated response (controlling) or an
    /// authenticated check (lite) on the selected pair.
    pub consent_timeout: Duration,
    /// Upper bound on candidate pairs (peer-reflexive candidates included).
    pub max_pairs: usize,
    /// Seed for transaction IDs, the tiebreaker and consent jitter; `None` seeds from the OS.
    /// Only tests should set it: transaction IDs must be unpredictable.
    pub seed: Option<u64>,
}

impl Default for IceConfig {
    fn default() -> Self {
        IceConfig {
            ta: Duration::from_millis(20),
            rto_initial: Duration::from_millis(50),
            rto_max: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(10),
            consent_interval: Duration::from_secs(5),
            consent_timeout: Duration::from_secs(30),
            max_pairs: 16,
            seed: None,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum IceEvent {
    /// The first selected pair: media (and DTLS) can flow.
    Connected { via: SocketRef, remote: SocketAddr },
    /// The selected pair moved (the peer appeared at a new address, or a better pair won).
    SelectedPairChanged { via: SocketRef, remote: SocketAddr },
    /// No authenticated consent for `consent_timeout`: stop sending (RFC 7675). Terminal.
    ConsentLost,
    /// No pair succeeded within `connect_timeout`, every pair failed, or the remote
    /// credentials are unusable. Terminal.
    Failed,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum IceState {
    /// Waiting for remote credentials and candidates (controlling) or a nomination (lite).
    New,
    Checking,
    Connected,
    Failed,
    ConsentLost,
}

impl IceState {
    pub fn is_terminal(self) -> bool {
        matches!(self, IceState::Failed | IceState::ConsentLost)
    }
}

/// Counters for metrics and the per-call event log.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct IceStats {
    /// Connectivity-check transmissions, retransmissions included (consent checks excluded).
    pub checks_sent: u64,
    pub consent_checks_sent: u64,
    /// Authenticated success responses to our checks.
    pub responses_received: u64,
    /// Authenticated error responses to our checks.
    pub error_responses: u64,
    /// Requests from the peer we answered (success or 487).
    pub requests_answered: u64,
    /// Responses dropped for failing MESSAGE-INTEGRITY or FINGERPRINT.
    pub bad_integrity_drops: u64,
    /// Requests dropped without a response: wrong USERNAME, integrity or fingerprint, or
    /// missing PRIORITY.
    pub rejected_requests: u64,
    /// 487 Role Conflict, received or sent.
    pub role_conflicts: u64,
    /// Responses matching no outstanding transaction, or arriving from the wrong address.
    pub unmatched_responses: u64,
    /// Messages that did not fit the scratch buffer (absurd credentials); not sent.
    pub write_errors: u64,
}

/// RFC 8445 §5.1.2.2 type preferences.
pub const TYPE_PREF_HOST: u8 = 126;
pub const TYPE_PREF_PEER_REFLEXIVE: u8 = 110;

/// RFC 8445 §5.1.2.1: `2^24 * type_pref + 2^8 * local_pref + (256 - component)`.
pub fn candidate_priority(type_pref: u8, local_pref: u16, component: u8) -> u32 {
    (u32::from(type_pref) << 24) | (u32::from(local_pref) << 8) | (256 - u32::from(component))
}

/// RFC 8445 §6.1.2.3, with G the controlling agent's candidate priority.
pub(crate) fn pair_priority(controlling: u32, controlled: u32) -> u64 {
    let (g, d) = (u64::from(controlling), u64::from(controlled));
    (g.min(d) << 32) + 2 * g.max(d) + u64::from(g > d)
}

/// `now + d`, saturating far in the future instead of panicking on absurd configurations.
pub(crate) fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}
