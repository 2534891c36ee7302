//! The WebRTC internal leg's transport: the relay toward a browser agent, with no media server
//! in between.
//!
//! The relay is ICE-lite here ([`LiteAgent`]): the browser runs full ICE as the controlling
//! agent, the relay answers its checks and takes the pair it nominates with USE-CANDIDATE as
//! the leg's address; the browser's later checks on that pair are its consent. DTLS runs in
//! the role the offer/answer gave us ([`dtls_role`]); its exported keys become the leg's SRTP
//! session, and from then on the leg carries media exactly like an SDES leg (own SSRC,
//! rewriting, RTCP, DTMF, the gate and prebuffer are the call's, unchanged).
//!
//! Failure is the call's end with [`EndCause::InternalLegFailed`]: no nomination within
//! `ice_connect_timeout` of the browser's description being known, DTLS failing or timing out
//! (`dtls_timeout` from the nomination), a certificate that does not match the fingerprint, or
//! the browser gone: its consent checks and its media both stopped for `webrtc_idle_timeout`
//! (10 s: a tab closed without `pc.close()` sends no close_notify, and waiting out the 30 s
//! `consent_timeout` kept the consumer in relay-made silence that long), or its consent checks
//! alone stopped for `consent_timeout`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::EndCause;
use crate::call::INT;
use crate::call::legs::{Leg, Transport};
use crate::call::stats::DropReason;
use crate::call::{Call, CallConfig};
use crate::dtls::{DtlsConfig, DtlsDriver, DtlsEvent, DtlsIdentity, DtlsRole, Fingerprint};
use crate::ice::{IceConfig, IceCredentials, IceEvent, LiteAgent};
use crate::net::Outbox;
use crate::sdp::{Setup, WebRtcRemote};
use crate::srtp::SrtpSession;
use crate::wire::stun;

/// The lite agent's own connect deadline counts from its creation, which may be long before
/// the browser even has our description (an agent's phone rings first). The leg arms its own
/// deadline when the description is known instead; this keeps the agent's out of the way.
const LITE_CONNECT_NEVER: Duration = Duration::from_secs(365 * 24 * 3600);

pub struct WebRtcTransport {
    pub ice: LiteAgent,
    /// Created once the browser's fingerprint is known (its offer, or its answer to ours).
    pub dtls: Option<DtlsDriver>,
    /// The browser must nominate a pair by then; armed when its description is applied,
    /// cleared by the nomination.
    connect_by: Option<Instant>,
}

impl WebRtcTransport {
    pub fn new(local: IceCredentials, cfg: &CallConfig, now: Instant) -> WebRtcTransport {
        let ice_cfg = IceConfig {
            connect_timeout: LITE_CONNECT_NEVER,
            consent_timeout: cfg.consent_timeout,
            ..IceConfig::default()
        };
        WebRtcTransport {
            ice: LiteAgent::new(local, now, ice_cfg),
            dtls: None,
            connect_by: None,
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.ice.poll_timeout(),
            self.dtls.as_ref().and_then(|d| d.poll_timeout()),
            self.connect_by,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// Our DTLS role from the `a=setup` we put in our own description: `active` connects.
/// (Offering `actpass`, the browser's answer decides: see [`our_setup_after_answer`].)
pub fn dtls_role(ours: Setup) -> DtlsRole {
    match ours {
        Setup::Active => DtlsRole::Client,
        _ => DtlsRole::Server,
    }
}

/// We offered `actpass`: the browser's answer picks its role and so ours (RFC 5763 §5).
pub fn our_setup_after_answer(theirs: Setup) -> Result<Setup, &'static str> {
    match theirs {
        Setup::Active => Ok(Setup::Passive),
        Setup::Passive => Ok(Setup::Active),
        Setup::ActPass => Err(
            "the browser's answer says a=setup:actpass; an answer must pick \
                               active or passive",
        ),
        Setup::HoldConn => Err("the browser's answer says a=setup:holdconn"),
    }
}

/// Apply the browser's description (offer or answer) to the leg: ICE credentials, payload
/// types, the DTLS handshake in role `ours`, and the connect deadline. If the browser already
/// nominated a pair (its checks can beat its answer through the signaling tier), the
/// handshake starts at once.
pub fn apply_remote(
    leg: &mut Leg,
    remote: &WebRtcRemote,
    ours: Setup,
    identity: Arc<DtlsIdentity>,
    cfg: &CallConfig,
    now: Instant,
) {
    leg.opus_pt = remote.opus_pt;
    leg.te_pt = remote.telephone_event_pt;
    let connected = leg.remote.is_some();
    let Some(w) = leg.webrtc_mut() else {
        return;
    };
    w.ice.set_remote_credentials(IceCredentials {
        ufrag: remote.ice_ufrag.clone(),
        pwd: remote.ice_pwd.clone(),
    });
    let dtls_cfg = DtlsConfig {
        flight_start_rto: cfg.dtls_flight_rto,
        handshake_timeout: cfg.dtls_timeout,
        ..DtlsConfig::default()
    };
    let expect = Fingerprint {
        algorithm: remote.fingerprint.algorithm.clone(),
        bytes: remote.fingerprint.bytes.clone(),
    };
    let mut dtls = DtlsDriver::new(identity, &dtls_cfg, dtls_role(ours), expect, now);
    if connected {
        dtls.start(now);
    } else {
        w.connect_by = Some(now + cfg.ice_connect_timeout);
    }
    w.dtls = Some(dtls);
}

impl Call {
    /// A STUN message on the internal socket of a WebRTC leg: the browser's check.
    pub(super) fn on_internal_stun(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        out: &mut impl Outbox,
    ) {
        let via = self.legs[INT].via;
        let Some(w) = self.legs[INT].webrtc_mut() else {
            return self.legs[INT].counters.drop(DropReason::Unexpected);
        };
        match stun::parse(data) {
            Ok(msg) => w.ice.handle_stun(now, via, from, &msg, data, out),
            Err(_) => self.legs[INT].counters.drop(DropReason::Malformed),
        }
    }

    /// A DTLS record from the nominated pair (the caller checked the source).
    pub(super) fn on_internal_dtls(&mut self, now: Instant, data: &[u8]) {
        match self.legs[INT].webrtc_mut().and_then(|w| w.dtls.as_mut()) {
            Some(dtls) => dtls.handle_datagram(now, data),
            // The browser's answer has not reached us yet; it retransmits.
            None => self.legs[INT].counters.drop(DropReason::NotReady),
        }
    }

    /// Timers of the leg: the connect deadline, DTLS retransmission, consent.
    pub(super) fn internal_webrtc_timeout(&mut self, now: Instant, out: &mut impl Outbox) {
        let Some(w) = self.legs[INT].webrtc_mut() else {
            return;
        };
        w.ice.handle_timeout(now, out);
        if let Some(dtls) = w.dtls.as_mut() {
            dtls.handle_timeout(now);
        }
        if w.connect_by.is_some_and(|t| now >= t)
            || self.webrtc_idle_deadline().is_some_and(|t| now >= t)
        {
            self.end(EndCause::InternalLegFailed);
        }
    }

    /// Once the browser nominated a pair: its last consent check or media packet, whichever
    /// is later, plus `webrtc_idle_timeout`.
    pub(super) fn webrtc_idle_deadline(&self) -> Option<Instant> {
        let last_check = self.legs[INT].webrtc()?.ice.last_consent()?;
        let last = self
            .watchdog
            .last_internal_media()
            .map_or(last_check, |t| t.max(last_check));
        Some(last + self.cfg.webrtc_idle_timeout)
    }

    /// After any input: follow the browser's nomination, flush handshake flights to it, and
    /// install the SRTP keys when DTLS completes.
    pub(super) fn process_internal_webrtc(&mut self, now: Instant, out: &mut impl Outbox) {
        if self.legs[INT].webrtc().is_none() {
            return;
        }
        self.follow_internal_ice(now);
        if self.ended.is_none() {
            self.flush_internal_dtls(out);
        }
    }

    fn follow_internal_ice(&mut self, now: Instant) {
        while let Some(ev) = self.legs[INT].webrtc_mut().and_then(|w| w.ice.poll_event()) {
            let leg = &mut self.legs[INT];
            match ev {
                IceEvent::Connected { remote, .. } => {
                    leg.remote = Some(remote);
                    if let Some(w) = leg.webrtc_mut() {
                        w.connect_by = None;
                        if let Some(dtls) = w.dtls.as_mut() {
                            dtls.start(now);
                        }
                    }
                }
                // The browser moved (or nominated a better pair): follow it.
                IceEvent::SelectedPairChanged { remote, .. } => leg.remote = Some(remote),
                IceEvent::ConsentLost | IceEvent::Failed => {
                    self.end(EndCause::InternalLegFailed);
                    return;
                }
            }
        }
    }

    /// Send queued DTLS flights to the browser and act on the handshake's events.
    fn flush_internal_dtls(&mut self, out: &mut impl Outbox) {
        let Leg {
            transport: Transport::WebRtc(w),
            remote,
            srtp,
            via,
            ..
        } = &mut self.legs[INT]
        else {
            return;
        };
        let Some(dtls) = w.dtls.as_mut() else {
            return;
        };
        if let Some(to) = *remote {
            let mut scratch = [0u8; 1500];
            while let Some(n) = dtls.poll_transmit(&mut scratch) {
                out.push(*via, to, &scratch[..n]);
            }
        }
        while let Some(ev) = dtls.poll_event() {
            let cause = match ev {
                DtlsEvent::Connected { keys, .. } => match SrtpSession::new(&keys) {
                    Ok(s) => {
                        *srtp = Some(Box::new(s));
                        continue;
                    }
                    Err(_) => EndCause::InternalLegFailed,
                },
                DtlsEvent::Failed(_) => EndCause::InternalLegFailed,
                // The browser closed its RTCPeerConnection.
                DtlsEvent::Closed => EndCause::PeerClosed,
            };
            self.end(cause);
            return;
        }
    }
}
