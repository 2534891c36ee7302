//! Building a call from a create request, and applying remote descriptions later.
//!
//! User-initiated: Meta's offer in → our answer (`a=setup:active`, ICE controlling).
//! Business-initiated: our offer (`actpass`) out → Meta's answer in through
//! [`Call::set_remote_description`], which decides the DTLS role.
//! The internal leg is built by [`build_internal`] (WebRTC: see [`internal_webrtc`]).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::api::{
    CallDirection, CreateCall, InternalKind, InternalLegSpec, LegKind, SourcePolicy, WaSecurity,
};
use crate::call::gate::Gate;
use crate::call::internal_webrtc;
use crate::call::legs::{IceTransport, Leg, OPUS_CLOCK, SdpDigest, Transport};
use crate::call::rewrite::OutboundStream;
use crate::call::transcode;
use crate::call::watchdog::Watchdog;
use crate::call::{Call, CallConfig, CallError};
use crate::call::{INT, WA};
use crate::dtls::{DtlsConfig, DtlsDriver, DtlsIdentity, DtlsRole};
use crate::ice::{ControllingAgent, IceConfig, IceCredentials};
use crate::net::{Outbox, SocketRef};
use crate::sdp::{self, LocalDescription, Setup};
use crate::srtp::{self, SessionKeys, SrtpSession};
use crate::wire::rtp::{Pt, Ssrc};

/// The sockets the engine bound for this call.
#[derive(Copy, Clone, Debug)]
pub struct LocalSockets {
    pub wa_v4: Option<SocketAddr>,
    pub wa_v6: Option<SocketAddr>,
    pub internal: SocketAddr,
}

/// The addresses written into SDP (NAT / Kubernetes may differ from the bind addresses).
#[derive(Copy, Clone, Debug)]
pub struct Advertised {
    pub wa_v4: Option<IpAddr>,
    pub wa_v6: Option<IpAddr>,
    pub internal: IpAddr,
}

pub struct CallSetup<'a> {
    pub req: &'a CreateCall,
    pub sockets: LocalSockets,
    pub advertised: Advertised,
    pub identity: Arc<DtlsIdentity>,
    pub cfg: CallConfig,
}

/// A new call and the two descriptions to hand out.
pub struct Created {
    pub call: Call,
    pub whatsapp_sdp: String,
    pub internal_sdp: String,
}

/// ICE host candidate priority (RFC 8445 §5.1.2.1): type preference 126 (host), IPv6
/// preferred by local preference, component 1.
fn host_priority(addr: &SocketAddr) -> u32 {
    let local_pref: u32 = if addr.is_ipv6() { 65535 } else { 65534 };
    (126 << 24) | (local_pref << 8) | 255
}

fn bad(e: impl std::fmt::Display) -> CallError {
    CallError::InvalidArgument(e.to_string())
}

/// How the WhatsApp leg's DTLS role follows the remote `a=setup` (RFC 5763 §5).
fn dtls_role_for(remote: Option<Setup>) -> DtlsRole {
    match remote {
        // Meta will connect: we are the server.
        Some(Setup::Active) => DtlsRole::Server,
        // actpass (user-initiated offer), passive, or absent: we connect, as Meta expects.
        _ => DtlsRole::Client,
    }
}

impl Call {
    pub fn create(
        setup: CallSetup<'_>,
        now: Instant,
        wall: SystemTime,
    ) -> Result<Created, CallError> {
        let req = setup.req;
        let cfg = setup.cfg.clone();
        let ice_creds = IceCredentials::random();
        let wa_cname = format!("relay-{}", rand::random::<u32>());
        let internal_cname = format!("relay-{}", rand::random::<u32>());
        let wa_ssrc = rand::random::<Ssrc>();

        // Our candidates: one per bound WhatsApp socket, at the advertised address.
        let mut candidates = Vec::new();
        if let (Some(bound), Some(ip)) = (setup.sockets.wa_v4, setup.advertised.wa_v4) {
            let a = SocketAddr::new(ip, bound.port());
            candidates.push((a, host_priority(&a)));
        }
        if let (Some(bound), Some(ip)) = (setup.sockets.wa_v6, setup.advertised.wa_v6) {
            let a = SocketAddr::new(ip, bound.port());
            candidates.push((a, host_priority(&a)));
        }
        if candidates.is_empty() {
            return Err(CallError::Internal(
                "no WhatsApp-facing socket bound".into(),
            ));
        }

        let wa_sockets = [
            setup.sockets.wa_v4.map(|_| SocketRef::WaV4),
            setup.sockets.wa_v6.map(|_| SocketRef::WaV6),
        ];
        let mut wa = Leg::new(
            wa_sockets,
            SocketRef::WaV4,
            OutboundStream::new(wa_ssrc, OPUS_CLOCK, rand::random(), rand::random()),
            wa_cname.clone(),
        );
        // Nothing toward Meta is ever in the clear.
        wa.secure = true;
        wa.te_pt = Some(Pt::new(126));
        wa.remote_sdp = req.whatsapp_offer.as_deref().map(SdpDigest::of);
        let fingerprint = setup.identity.fingerprint().clone();
        let session_id = rand::random::<u32>() as u64;
        let (conn, port) = (candidates[0].0.ip(), candidates[0].0.port());
        let wa_params = |security: sdp::LocalSecurity| sdp::WaLocalParams {
            session_id,
            session_version: 1,
            connection: conn,
            port,
            security,
            ssrc: Some((wa_ssrc, wa_cname.clone())),
        };
        let dtls_security = |setup: Option<Setup>| sdp::LocalSecurity::Dtls {
            ice: sdp::LocalIce {
                ufrag: ice_creds.ufrag.clone(),
                pwd: ice_creds.pwd.clone(),
                candidates: candidates.clone(),
                end_of_candidates: true,
            },
            fingerprint: fingerprint.clone(),
            setup,
        };

        let whatsapp_sdp = match req.direction {
            CallDirection::UserInitiated => {
                let text = req
                    .whatsapp_offer
                    .as_deref()
                    .ok_or_else(|| bad("whatsapp_offer is required for a user-initiated call"))?;
                let offer = sdp::validate_wa_offer(&sdp::parse(text).map_err(bad)?).map_err(bad)?;
                wa.opus_pt = offer.opus_pt;
                wa.te_pt = offer.telephone_event_pt;
                let security = match &offer.transport {
                    sdp::WaTransport::Dtls(d) => {
                        let role = dtls_role_for(Some(d.setup));
                        wa.transport = Transport::Ice(Box::new(IceTransport {
                            agent: controlling_agent(&ice_creds, d, &setup.sockets, &cfg, now),
                            dtls: Some(DtlsDriver::new(
                                setup.identity.clone(),
                                &dtls_config(&cfg),
                                role,
                                d.fingerprint.clone(),
                                now,
                            )),
                        }));
                        dtls_security(Some(match role {
                            DtlsRole::Client => Setup::Active,
                            DtlsRole::Server => Setup::Passive,
                        }))
                    }
                    sdp::WaTransport::Sdes(s) => {
                        let profile = s.crypto.profile;
                        let local = srtp::random_master_key(profile);
                        wa.srtp = Some(Box::new(
                            SrtpSession::new(&SessionKeys {
                                local: local.clone(),
                                remote: s.crypto.key.clone(),
                            })
                            .map_err(bad)?,
                        ));
                        wa.set_path(sdes_socket(&s.rtp_addr), s.rtp_addr);
                        sdp::LocalSecurity::Sdes {
                            profile,
                            key_params: sdp::sdes_key_params(&local),
                        }
                    }
                };
                LocalDescription::wa_answer(&offer, wa_params(security))
                    .map_err(bad)?
                    .to_sdp()
            }
            CallDirection::BusinessInitiated => match req.whatsapp_security {
                WaSecurity::DtlsSrtp => {
                    let mut ice = ControllingAgent::new(ice_creds.clone(), now, ice_config(&cfg));
                    add_locals(&mut ice, &setup.sockets);
                    wa.transport = Transport::Ice(Box::new(IceTransport {
                        agent: ice,
                        dtls: None,
                    }));
                    LocalDescription::whatsapp_offer(wa_params(dtls_security(Some(Setup::ActPass))))
                        .to_sdp()
                }
                WaSecurity::Sdes(profile) => {
                    let local = srtp::random_master_key(profile);
                    let key_params = sdp::sdes_key_params(&local);
                    wa.local_key = Some(local);
                    LocalDescription::whatsapp_offer(wa_params(sdp::LocalSecurity::Sdes {
                        profile,
                        key_params,
                    }))
                    .to_sdp()
                }
            },
        };

        let (mut internal, internal_sdp) =
            build_internal(&req.internal, &setup, internal_cname, now)?;
        internal.next_rtcp = Some(now + setup.cfg.rtcp_interval);

        let call = Call {
            call_id: req.call_id.clone(),
            business_number: req.business_number.clone(),
            consumer: req.consumer.clone(),
            direction: req.direction,
            cfg,
            created_at: wall,
            created_mono: now,
            identity: setup.identity.clone(),
            legs: [wa, internal],
            gate: Gate::new(setup.cfg.prebuffer_packets),
            wa_ready: false,
            watchdog: Watchdog::new(
                now,
                (req.direction == CallDirection::UserInitiated).then_some(now),
            ),
            first_media_sent: false,
            ice_connected_after: None,
            dtls_connected_after: None,
            events: VecDeque::from([crate::api::CallEventKind::Created]),
            ended: None,
            deadlines: Default::default(),
            fed_control: false,
            forks: Default::default(),
            released_sockets: Vec::new(),
            peers: [None; 2],
        };
        let mut call = call;
        // ICE's first check (or SDES readiness) is due at once: the engine runs
        // `handle_timeout` as soon as it inserts the call.
        call.deadlines.set(None, Some(now));
        Ok(Created {
            call,
            whatsapp_sdp,
            internal_sdp,
        })
    }

    /// Meta's answer (business-initiated) or the internal peer's description. Repeating the
    /// same description is harmless; a different one after the first is refused.
    pub fn set_remote_description(
        &mut self,
        leg: LegKind,
        text: &str,
        now: Instant,
        out: &mut impl Outbox,
    ) -> Result<(), CallError> {
        match leg {
            LegKind::WhatsApp => self.set_wa_answer(text, now)?,
            LegKind::Internal => self.set_internal_remote(text, now)?,
        }
        self.after_input(now, out);
        Ok(())
    }

    fn set_wa_answer(&mut self, text: &str, now: Instant) -> Result<(), CallError> {
        if let Some(prev) = self.legs[WA].remote_sdp {
            return if prev == SdpDigest::of(text) {
                Ok(())
            } else if self.direction == CallDirection::UserInitiated {
                Err(CallError::FailedPrecondition(
                    "user-initiated call: Meta's offer was given at create; no renegotiation"
                        .into(),
                ))
            } else {
                Err(CallError::FailedPrecondition(
                    "Meta's answer was already applied; WhatsApp calls do not renegotiate".into(),
                ))
            };
        }
        let answer = sdp::validate_wa_offer(&sdp::parse(text).map_err(bad)?).map_err(bad)?;
        self.legs[WA].opus_pt = answer.opus_pt;
        self.legs[WA].te_pt = answer.telephone_event_pt;
        match &answer.transport {
            sdp::WaTransport::Dtls(d) => {
                let (identity, dtls_cfg) = (self.identity.clone(), dtls_config(&self.cfg));
                let Some(ice) = self.legs[WA].ice_mut() else {
                    return Err(bad("Meta's answer uses DTLS but our offer was SDES"));
                };
                ice.agent.set_remote_credentials(IceCredentials {
                    ufrag: d.ice_ufrag.clone(),
                    pwd: d.ice_pwd.clone(),
                });
                for c in &d.candidates {
                    ice.agent.add_remote_candidate(c.addr, c.priority);
                }
                if d.setup == Setup::ActPass {
                    return Err(bad(
                        "Meta's answer says a=setup:actpass; an answer must pick active or passive",
                    ));
                }
                ice.dtls = Some(DtlsDriver::new(
                    identity,
                    &dtls_cfg,
                    dtls_role_for(Some(d.setup)),
                    d.fingerprint.clone(),
                    now,
                ));
            }
            sdp::WaTransport::Sdes(s) => {
                let Some(local) = self.legs[WA].local_key.clone() else {
                    return Err(bad("Meta's answer uses SDES but our offer was DTLS"));
                };
                if s.crypto.profile != local.profile {
                    return Err(bad(format!(
                        "Meta's answer chose {} but we offered {}",
                        s.crypto.profile, local.profile
                    )));
                }
                self.legs[WA].srtp = Some(Box::new(
                    SrtpSession::new(&SessionKeys {
                        local,
                        remote: s.crypto.key.clone(),
                    })
                    .map_err(bad)?,
                ));
                self.legs[WA].set_path(sdes_socket(&s.rtp_addr), s.rtp_addr);
            }
        }
        self.legs[WA].remote_sdp = Some(SdpDigest::of(text));
        self.watchdog.on_described(now);
        Ok(())
    }

    fn set_internal_remote(&mut self, text: &str, now: Instant) -> Result<(), CallError> {
        if self.legs[INT].webrtc().is_some() {
            return self.set_browser_answer(text, now);
        }
        let digest = SdpDigest::of(text);
        if self.legs[INT].remote_sdp == Some(digest) && self.legs[INT].remote.is_some() {
            return Ok(());
        }
        let remote = sdp::validate_internal(&sdp::parse(text).map_err(bad)?).map_err(bad)?;
        apply_internal_remote(&mut self.legs[INT], &remote)?;
        self.legs[INT].remote_sdp = Some(digest);
        Ok(())
    }
}

impl Call {
    /// The browser's answer to our WebRTC offer. The same answer again is harmless; anything
    /// after the first (or after the browser's own offer at create) is refused: a new browser
    /// is a new internal leg.
    fn set_browser_answer(&mut self, text: &str, now: Instant) -> Result<(), CallError> {
        if let Some(prev) = self.legs[INT].remote_sdp {
            return if prev == SdpDigest::of(text) {
                Ok(())
            } else {
                Err(CallError::FailedPrecondition(
                    "the WebRTC internal leg already has the browser's description; it does not \
                     renegotiate"
                        .into(),
                ))
            };
        }
        let remote = sdp::validate_webrtc(&sdp::parse_webrtc(text).map_err(bad)?).map_err(bad)?;
        let ours = internal_webrtc::our_setup_after_answer(remote.setup).map_err(bad)?;
        internal_webrtc::apply_remote(
            &mut self.legs[INT],
            &remote,
            ours,
            self.identity.clone(),
            &self.cfg,
            now,
        );
        self.legs[INT].remote_sdp = Some(SdpDigest::of(text));
        Ok(())
    }
}

fn ice_config(cfg: &CallConfig) -> IceConfig {
    IceConfig {
        connect_timeout: cfg.ice_connect_timeout,
        rto_initial: cfg.ice_check_rto,
        consent_interval: cfg.consent_interval,
        consent_timeout: cfg.consent_timeout,
        ..IceConfig::default()
    }
}

fn dtls_config(cfg: &CallConfig) -> DtlsConfig {
    DtlsConfig {
        flight_start_rto: cfg.dtls_flight_rto,
        handshake_timeout: cfg.dtls_timeout,
        ..DtlsConfig::default()
    }
}

fn add_locals(ice: &mut ControllingAgent, s: &LocalSockets) {
    if let Some(a) = s.wa_v4 {
        ice.add_local(SocketRef::WaV4, a);
    }
    if let Some(a) = s.wa_v6 {
        ice.add_local(SocketRef::WaV6, a);
    }
}

fn sdes_socket(remote: &SocketAddr) -> SocketRef {
    if remote.is_ipv6() {
        SocketRef::WaV6
    } else {
        SocketRef::WaV4
    }
}

/// The one place the internal [`Leg`] is built from an [`InternalLegSpec`] (call creation,
/// and replacing the internal leg): the leg (our SDES key, if any, in `Leg::local_key`) and
/// the SDP to give the peer.
pub(crate) fn build_internal(
    spec: &InternalLegSpec,
    setup: &CallSetup<'_>,
    cname: String,
    now: Instant,
) -> Result<(Leg, String), CallError> {
    let ssrc = rand::random::<Ssrc>();
    let mut leg = Leg::new(
        [Some(SocketRef::Internal), None],
        SocketRef::Internal,
        OutboundStream::new(ssrc, OPUS_CLOCK, rand::random(), rand::random()),
        cname,
    );
    leg.secure = spec.kind != InternalKind::PlainRtp;
    leg.policy = spec.source;
    leg.te_pt = Some(Pt::new(101));
    leg.remote_sdp = spec.remote_sdp.as_deref().map(SdpDigest::of);
    leg.local_key = match spec.kind {
        InternalKind::PlainRtp => None,
        InternalKind::SdesSrtp(p) => Some(srtp::random_master_key(p)),
        InternalKind::WebRtc => {
            let sdp = build_webrtc(&mut leg, spec, setup, now)?;
            return Ok((leg, sdp));
        }
        // A bot has no SDP and no RTP peer (`secure` keeps the UDP port refusing everything):
        // its connected WebSocket is attached to the call afterwards (`Call::attach_bot`).
        InternalKind::WebSocket(_) => return Ok((leg, String::new())),
    };
    if let Some(text) = &spec.remote_sdp {
        let remote = sdp::validate_internal(&sdp::parse(text).map_err(bad)?).map_err(bad)?;
        apply_internal_remote(&mut leg, &remote)?;
    }
    let mut params = sdp::InternalLocalParams::new(
        rand::random::<u32>() as u64,
        setup.advertised.internal,
        setup.sockets.internal.port(),
    );
    params.opus_pt = leg.opus_pt;
    params.telephone_event_pt = leg.te_pt;
    match leg.transcode.as_ref() {
        Some(tc) => params.codec = sdp::InternalCodec::G711(tc.law()),
        // Offering: a media server without Opus may answer with G.711.
        None => params.offer_g711 = spec.remote_sdp.is_none() && setup.cfg.offer_g711,
    }
    params.crypto = leg
        .local_key
        .as_ref()
        .map(|k| (1, k.profile, sdp::sdes_key_params(k)));
    params.ssrc = Some((ssrc, leg.cname.clone()));
    let desc = LocalDescription::internal(params);
    Ok((leg, desc.to_sdp()))
}

/// A WebRTC leg toward a browser: our answer to its offer (`spec.remote_sdp`), or our offer.
/// Media is accepted from the pair the browser nominates, whatever `spec.source` says.
fn build_webrtc(
    leg: &mut Leg,
    spec: &InternalLegSpec,
    setup: &CallSetup<'_>,
    now: Instant,
) -> Result<String, CallError> {
    leg.policy = SourcePolicy::Strict;
    let creds = IceCredentials::random();
    let addr = SocketAddr::new(setup.advertised.internal, setup.sockets.internal.port());
    let params = sdp::WebRtcLocalParams {
        session_id: rand::random::<u32>() as u64,
        session_version: 1,
        connection: addr.ip(),
        port: addr.port(),
        ice: sdp::LocalIce {
            ufrag: creds.ufrag.clone(),
            pwd: creds.pwd.clone(),
            candidates: vec![(addr, host_priority(&addr))],
            end_of_candidates: true,
        },
        fingerprint: setup.identity.fingerprint().clone(),
        ssrc: leg.tx.ssrc(),
        cname: leg.cname.clone(),
    };
    leg.transport = Transport::WebRtc(Box::new(internal_webrtc::WebRtcTransport::new(
        creds, &setup.cfg, now,
    )));
    let Some(text) = &spec.remote_sdp else {
        leg.opus_pt = sdp::DEFAULT_OPUS_PT;
        leg.te_pt = Some(sdp::DEFAULT_TELEPHONE_EVENT_PT);
        return Ok(LocalDescription::webrtc_offer(params).to_sdp());
    };
    let offer = sdp::validate_webrtc(&sdp::parse_webrtc(text).map_err(bad)?).map_err(bad)?;
    let answer = LocalDescription::webrtc_answer(&offer, params).map_err(bad)?;
    let ours = answer.audio.setup.unwrap_or(Setup::Passive);
    internal_webrtc::apply_remote(leg, &offer, ours, setup.identity.clone(), &setup.cfg, now);
    Ok(answer.to_sdp())
}

fn apply_internal_remote(leg: &mut Leg, remote: &sdp::InternalRemote) -> Result<(), CallError> {
    let local_key = leg.local_key.clone();
    leg.opus_pt = remote.opus_pt;
    leg.te_pt = remote.telephone_event_pt.or(leg.te_pt);
    transcode::apply_codec(leg, remote.codec)?;
    if !leg.latched {
        // `None` (c=0.0.0.0): learn the address from the first packet.
        leg.remote = remote.rtp_addr;
        if remote.rtp_addr.is_none() {
            leg.policy = SourcePolicy::Latch;
        }
    }
    match (local_key, &remote.crypto) {
        (Some(local), Some(c)) => {
            if c.profile != local.profile {
                return Err(bad(format!(
                    "internal leg crypto suite {} does not match ours ({})",
                    c.profile, local.profile
                )));
            }
            leg.srtp = Some(Box::new(
                SrtpSession::new(&SessionKeys {
                    local: local.clone(),
                    remote: c.key.clone(),
                })
                .map_err(bad)?,
            ));
        }
        (Some(_), None) => {
            return Err(bad("internal leg is SDES-SRTP but its SDP has no a=crypto"));
        }
        (None, Some(_)) => {
            return Err(bad(
                "internal leg is plain RTP but its SDP is RTP/SAVP with a=crypto",
            ));
        }
        (None, None) => {}
    }
    Ok(())
}

fn controlling_agent(
    creds: &IceCredentials,
    remote: &sdp::DtlsRemote,
    sockets: &LocalSockets,
    cfg: &CallConfig,
    now: Instant,
) -> ControllingAgent {
    let mut ice = ControllingAgent::new(creds.clone(), now, ice_config(cfg));
    ice.set_remote_credentials(IceCredentials {
        ufrag: remote.ice_ufrag.clone(),
        pwd: remote.ice_pwd.clone(),
    });
    add_locals(&mut ice, sockets);
    for c in &remote.candidates {
        ice.add_remote_candidate(c.addr, c.priority);
    }
    ice
}
