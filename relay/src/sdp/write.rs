//! Writing our side's session descriptions: the answer to Meta's offer, our offer to Meta, and
//! the description of the internal leg. Output is conventional WebRTC order with CRLF after
//! every line (Meta rejects bare LF).

use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

use super::error::SdpError;
use super::model::{Direction, Fingerprint, MediaProto, Setup};
use super::validate::{InternalCodec, WaTransport, WhatsAppOffer};
use crate::codec::g711::G711;
use crate::srtp::SrtpProfile;
use crate::wire::rtp::{Pt, Ssrc};

/// The Opus parameters Meta puts in its offers; we answer and offer the same, since the relay
/// forwards Opus untouched between the legs.
pub const META_OPUS_FMTP: &str = "maxaveragebitrate=20000;maxplaybackrate=16000;minptime=20;sprop-maxcapturerate=16000;useinbandfec=1";
pub const DEFAULT_OPUS_PT: Pt = Pt::new(111);
pub const DEFAULT_TELEPHONE_EVENT_PT: Pt = Pt::new(126);
/// The packet time the relay advertises (Meta sends 20 ms).
pub const PTIME_MS: u32 = 20;

/// A description of our side, ready to be written with [`LocalDescription::to_sdp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalDescription {
    pub session_id: u64,
    /// Increment on every new description within the session (RFC 3264 §8).
    pub session_version: u64,
    pub origin_addr: IpAddr,
    pub ice_lite: bool,
    pub audio: LocalAudio,
    /// Sections of the offer we answer with port 0 (a browser's video or data channel), in
    /// offer order around the audio section.
    pub rejected: Vec<RejectedMedia>,
}

/// An offered m-section our answer rejects (RFC 3264 §6: port 0, same media, protocol and
/// formats; RFC 8843: not in the BUNDLE group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedMedia {
    /// Written before our audio section (it came before the audio in the offer).
    pub before_audio: bool,
    pub media: String,
    pub proto: String,
    pub formats: Vec<String>,
    pub mid: Option<String>,
}

/// Our `m=audio` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAudio {
    pub port: u16,
    pub proto: MediaProto,
    pub connection: IpAddr,
    /// In preference order; the `m=` line lists them in this order.
    pub payloads: Vec<LocalPayload>,
    pub ptime: Option<u32>,
    pub maxptime: Option<u32>,
    pub mid: Option<String>,
    /// Write `a=group:BUNDLE <mid>` (needs `mid`).
    pub bundle: bool,
    pub rtcp_mux: bool,
    pub ice: Option<LocalIce>,
    pub fingerprint: Option<Fingerprint>,
    pub setup: Option<Setup>,
    /// `(tag, suite, key_params)` of our `a=crypto` line.
    pub crypto: Option<(u32, String, String)>,
    /// `(ssrc, cname)` for `a=ssrc:<ssrc> cname:<cname>`.
    pub ssrc: Option<(Ssrc, String)>,
    /// `(stream id, track id)` for `a=msid` (RFC 8830): WebRTC stacks hand the remote track to
    /// the application inside this stream (`ontrack`'s `event.streams[0]`).
    pub msid: Option<(String, String)>,
    pub direction: Direction,
}

/// One payload type we offer or accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPayload {
    pub pt: Pt,
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: Option<u8>,
    pub fmtp: Option<String>,
    pub rtcp_fb: Vec<String>,
}

impl LocalPayload {
    /// `opus/48000/2` with the given parameters.
    pub fn opus(pt: Pt, fmtp: Option<String>) -> LocalPayload {
        LocalPayload {
            pt,
            encoding: "opus".to_string(),
            clock_rate: 48000,
            channels: Some(2),
            fmtp,
            rtcp_fb: Vec::new(),
        }
    }

    /// `PCMU/8000` or `PCMA/8000` (RFC 3551), usually on its static payload type.
    pub fn g711(pt: Pt, law: G711) -> LocalPayload {
        LocalPayload {
            pt,
            encoding: law.encoding_name().to_string(),
            clock_rate: 8000,
            channels: None,
            fmtp: None,
            rtcp_fb: Vec::new(),
        }
    }

    /// `telephone-event/8000` (RFC 4733).
    pub fn telephone_event(pt: Pt) -> LocalPayload {
        LocalPayload {
            pt,
            encoding: "telephone-event".to_string(),
            clock_rate: 8000,
            channels: None,
            fmtp: None,
            rtcp_fb: Vec::new(),
        }
    }
}

/// Our ICE parameters. Candidates are host candidates, written as
/// `a=candidate:<n> 1 udp <priority> <ip> <port> typ host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalIce {
    pub ufrag: String,
    pub pwd: String,
    /// `(address, priority)`.
    pub candidates: Vec<(SocketAddr, u32)>,
    /// We never trickle, so this is normally `true`.
    pub end_of_candidates: bool,
}

/// How our WhatsApp leg is secured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalSecurity {
    /// ICE + DTLS-SRTP: our credentials and candidates, our certificate's SHA-256 fingerprint,
    /// and our DTLS role (`None`: `active` in answers, `actpass` in offers).
    Dtls {
        ice: LocalIce,
        fingerprint: Fingerprint,
        setup: Option<Setup>,
    },
    /// SDES: our key for `profile`, as `inline:…` (see [`super::sdes_key_params`]).
    Sdes {
        profile: SrtpProfile,
        key_params: String,
    },
}

/// What we put in our side of the WhatsApp leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaLocalParams {
    pub session_id: u64,
    pub session_version: u64,
    /// Our public address (`c=` and `o=`).
    pub connection: IpAddr,
    /// Our media port (`m=`); with ICE, the port of the default candidate.
    pub port: u16,
    pub security: LocalSecurity,
    /// `(ssrc, cname)` we will send with.
    pub ssrc: Option<(Ssrc, String)>,
}

/// What we put in our side of an internal leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalLocalParams {
    pub session_id: u64,
    pub session_version: u64,
    /// Our internal address (`c=` and `o=`).
    pub connection: IpAddr,
    pub port: u16,
    /// Mirror the peer's PT when answering; [`DEFAULT_OPUS_PT`] when offering.
    pub opus_pt: Pt,
    pub opus_fmtp: Option<String>,
    /// The audio when answering: Opus on `opus_pt`, or G.711 on `opus_pt` (then no Opus).
    pub codec: InternalCodec,
    /// Offering: list PCMU (0) and PCMA (8) after Opus, so a media server without Opus can
    /// answer with G.711 (the relay then transcodes).
    pub offer_g711: bool,
    pub telephone_event_pt: Option<Pt>,
    /// `(tag, profile, key_params)`: `RTP/SAVP` with this `a=crypto`; `None`: `RTP/AVP`.
    pub crypto: Option<(u32, SrtpProfile, String)>,
    pub ssrc: Option<(Ssrc, String)>,
    pub rtcp_mux: bool,
    pub direction: Direction,
}

impl InternalLocalParams {
    /// Plain RTP offer defaults: Opus 111 with Meta's parameters (what will flow from
    /// WhatsApp), telephone-event 126, rtcp-mux, sendrecv.
    pub fn new(session_id: u64, connection: IpAddr, port: u16) -> InternalLocalParams {
        InternalLocalParams {
            session_id,
            session_version: 1,
            connection,
            port,
            opus_pt: DEFAULT_OPUS_PT,
            opus_fmtp: Some(META_OPUS_FMTP.to_string()),
            codec: InternalCodec::Opus,
            offer_g711: false,
            telephone_event_pt: Some(DEFAULT_TELEPHONE_EVENT_PT),
            crypto: None,
            ssrc: None,
            rtcp_mux: true,
            direction: Direction::SendRecv,
        }
    }
}

impl LocalDescription {
    /// Our answer to Meta's offer: mirrors the mid, BUNDLE, rtcp-mux, the Opus and
    /// telephone-event payload types and the direction; Opus keeps Meta's parameters; ptime 20.
    /// DTLS: `a=setup:active` unless `ours` says otherwise (and the offer allows it).
    /// SDES: our `a=crypto` with the tag and suite of the offer line we accepted.
    ///
    /// Fails when `ours` does not fit the offer (DTLS offer, SDES params; a different SDES
    /// suite; a setup role the offer excludes).
    pub fn wa_answer(
        offer: &WhatsAppOffer,
        ours: WaLocalParams,
    ) -> Result<LocalDescription, SdpError> {
        let mut audio = wa_audio(
            &ours,
            offer.proto,
            offer.opus_pt,
            offer.opus_fmtp.clone().or(Some(META_OPUS_FMTP.to_string())),
            offer.telephone_event_pt,
        );
        audio.mid = offer.mid.clone();
        audio.bundle = offer.bundle && offer.mid.is_some();
        audio.rtcp_mux = offer.rtcp_mux;
        audio.direction = offer.direction.answer();
        match (&offer.transport, ours.security) {
            (
                WaTransport::Dtls(remote),
                LocalSecurity::Dtls {
                    ice,
                    fingerprint,
                    setup,
                },
            ) => {
                audio.setup = Some(answer_setup(remote.setup, setup)?);
                audio.ice = Some(ice);
                audio.fingerprint = Some(fingerprint);
            }
            (
                WaTransport::Sdes(remote),
                LocalSecurity::Sdes {
                    profile,
                    key_params,
                },
            ) => {
                if profile != remote.crypto.profile {
                    return Err(SdpError::document(format!(
                        "our SDES key is for {profile}, the offer chose {}",
                        remote.crypto.profile
                    )));
                }
                audio.crypto = Some((
                    remote.crypto.tag,
                    profile.sdes_name().to_string(),
                    key_params,
                ));
            }
            (WaTransport::Dtls(_), LocalSecurity::Sdes { .. }) => {
                return Err(SdpError::document(
                    "the offer is DTLS-SRTP but our parameters are SDES",
                ));
            }
            (WaTransport::Sdes(_), LocalSecurity::Dtls { .. }) => {
                return Err(SdpError::document(
                    "the offer is SDES but our parameters are DTLS-SRTP",
                ));
            }
        }
        Ok(LocalDescription {
            session_id: ours.session_id,
            session_version: ours.session_version,
            origin_addr: ours.connection,
            ice_lite: false,
            audio,
            rejected: Vec::new(),
        })
    }

    /// Our offer to Meta (business-initiated): the shape of Meta's own offers. Opus PT 111 with
    /// Meta's parameters, telephone-event/8000 PT 126, ptime and maxptime 20, mid `audio`,
    /// BUNDLE, rtcp-mux; DTLS with `a=setup:actpass` (unless given) or SDES (`RTP/SAVP`,
    /// `a=crypto:1`).
    pub fn whatsapp_offer(params: WaLocalParams) -> LocalDescription {
        let proto = match params.security {
            LocalSecurity::Dtls { .. } => MediaProto::UdpTlsRtpSavpf,
            LocalSecurity::Sdes { .. } => MediaProto::RtpSavp,
        };
        let mut audio = wa_audio(
            &params,
            proto,
            DEFAULT_OPUS_PT,
            Some(META_OPUS_FMTP.to_string()),
            Some(DEFAULT_TELEPHONE_EVENT_PT),
        );
        audio.maxptime = Some(PTIME_MS);
        audio.mid = Some("audio".to_string());
        audio.bundle = true;
        audio.rtcp_mux = true;
        match params.security {
            LocalSecurity::Dtls {
                ice,
                fingerprint,
                setup,
            } => {
                audio.ice = Some(ice);
                audio.fingerprint = Some(fingerprint);
                audio.setup = Some(setup.unwrap_or(Setup::ActPass));
            }
            LocalSecurity::Sdes {
                profile,
                key_params,
            } => audio.crypto = Some((1, profile.sdes_name().to_string(), key_params)),
        }
        LocalDescription {
            session_id: params.session_id,
            session_version: params.session_version,
            origin_addr: params.connection,
            ice_lite: false,
            audio,
            rejected: Vec::new(),
        }
    }

    /// Our side of an internal leg: `RTP/AVP`, or `RTP/SAVP` with `a=crypto`; Opus and
    /// telephone-event, ptime 20, no ICE, no DTLS.
    pub fn internal(params: InternalLocalParams) -> LocalDescription {
        let mut payloads = match params.codec {
            InternalCodec::Opus => vec![LocalPayload::opus(params.opus_pt, params.opus_fmtp)],
            InternalCodec::G711(law) => vec![LocalPayload::g711(params.opus_pt, law)],
        };
        if params.offer_g711 && params.codec == InternalCodec::Opus {
            payloads.push(LocalPayload::g711(Pt::new(0), G711::Ulaw));
            payloads.push(LocalPayload::g711(Pt::new(8), G711::Alaw));
        }
        if let Some(pt) = params.telephone_event_pt {
            payloads.push(LocalPayload::telephone_event(pt));
        }
        let (proto, crypto) = match params.crypto {
            Some((tag, profile, key)) => (
                MediaProto::RtpSavp,
                Some((tag, profile.sdes_name().to_string(), key)),
            ),
            None => (MediaProto::RtpAvp, None),
        };
        LocalDescription {
            session_id: params.session_id,
            session_version: params.session_version,
            origin_addr: params.connection,
            ice_lite: false,
            audio: LocalAudio {
                port: params.port,
                proto,
                connection: params.connection,
                payloads,
                ptime: Some(PTIME_MS),
                maxptime: None,
                mid: None,
                bundle: false,
                rtcp_mux: params.rtcp_mux,
                ice: None,
                fingerprint: None,
                setup: None,
                crypto,
                ssrc: params.ssrc,
                msid: None,
                direction: params.direction,
            },
            rejected: Vec::new(),
        }
    }

    /// The SDP text. Every line, the last included, ends in CRLF. Control characters in
    /// free-form values are dropped, so no value can inject a line.
    pub fn to_sdp(&self) -> String {
        let a = &self.audio;
        let mut out = Sdp(String::with_capacity(1024));
        out.line(format_args!("v=0"));
        out.line(format_args!(
            "o=- {} {} IN {} {}",
            self.session_id,
            self.session_version,
            ip_type(self.origin_addr),
            self.origin_addr
        ));
        out.line(format_args!("s=-"));
        out.line(format_args!("t=0 0"));
        if let (true, Some(mid)) = (a.bundle, &a.mid) {
            out.line(format_args!("a=group:BUNDLE {}", Clean(mid)));
        }
        if self.ice_lite {
            out.line(format_args!("a=ice-lite"));
        }
        if let Some((stream, _)) = &a.msid {
            out.line(format_args!("a=msid-semantic: WMS {}", Clean(stream)));
        }
        for r in self.rejected.iter().filter(|r| r.before_audio) {
            write_rejected(&mut out, r);
        }
        self.write_audio(&mut out);
        for r in self.rejected.iter().filter(|r| !r.before_audio) {
            write_rejected(&mut out, r);
        }
        out.0
    }

    fn write_audio(&self, out: &mut Sdp) {
        let a = &self.audio;
        let pts: Vec<String> = a.payloads.iter().map(|p| p.pt.to_string()).collect();
        out.line(format_args!(
            "m=audio {} {} {}",
            a.port,
            a.proto,
            pts.join(" ")
        ));
        out.line(format_args!(
            "c=IN {} {}",
            ip_type(a.connection),
            a.connection
        ));
        // With rtcp-mux RTCP shares the RTP port; without, it is the next one (RFC 3605).
        let rtcp_port = if a.rtcp_mux {
            Some(a.port)
        } else {
            a.port.checked_add(1)
        };
        if let Some(port) = rtcp_port {
            out.line(format_args!(
                "a=rtcp:{port} IN {} {}",
                ip_type(a.connection),
                a.connection
            ));
        }
        if let Some(ice) = &a.ice {
            out.line(format_args!("a=ice-ufrag:{}", Clean(&ice.ufrag)));
            out.line(format_args!("a=ice-pwd:{}", Clean(&ice.pwd)));
        }
        if let Some(fp) = &a.fingerprint {
            out.line(format_args!("a=fingerprint:{}", Clean(&fp.to_string())));
        }
        if let Some(setup) = a.setup {
            out.line(format_args!("a=setup:{setup}"));
        }
        if let Some(mid) = &a.mid {
            out.line(format_args!("a=mid:{}", Clean(mid)));
        }
        out.line(format_args!("a={}", a.direction.as_str()));
        if let Some((stream, track)) = &a.msid {
            out.line(format_args!("a=msid:{} {}", Clean(stream), Clean(track)));
        }
        if a.rtcp_mux {
            out.line(format_args!("a=rtcp-mux"));
        }
        for p in &a.payloads {
            match p.channels {
                Some(ch) => out.line(format_args!(
                    "a=rtpmap:{} {}/{}/{ch}",
                    p.pt,
                    Clean(&p.encoding),
                    p.clock_rate
                )),
                None => out.line(format_args!(
                    "a=rtpmap:{} {}/{}",
                    p.pt,
                    Clean(&p.encoding),
                    p.clock_rate
                )),
            }
            if let Some(fmtp) = &p.fmtp {
                out.line(format_args!("a=fmtp:{} {}", p.pt, Clean(fmtp)));
            }
            for fb in &p.rtcp_fb {
                out.line(format_args!("a=rtcp-fb:{} {}", p.pt, Clean(fb)));
            }
        }
        if let Some(ptime) = a.ptime {
            out.line(format_args!("a=ptime:{ptime}"));
        }
        if let Some(maxptime) = a.maxptime {
            out.line(format_args!("a=maxptime:{maxptime}"));
        }
        if let Some((tag, suite, key)) = &a.crypto {
            out.line(format_args!(
                "a=crypto:{tag} {} {}",
                Clean(suite),
                Clean(key)
            ));
        }
        if let Some(ice) = &a.ice {
            for (i, (addr, priority)) in ice.candidates.iter().enumerate() {
                // One foundation per base address (RFC 8445 §5.1.1.3): all ours are host.
                out.line(format_args!(
                    "a=candidate:{} 1 udp {priority} {} {} typ host",
                    i + 1,
                    addr.ip(),
                    addr.port()
                ));
            }
            if ice.end_of_candidates {
                out.line(format_args!("a=end-of-candidates"));
            }
        }
        if let Some((ssrc, cname)) = &a.ssrc {
            out.line(format_args!("a=ssrc:{ssrc} cname:{}", Clean(cname)));
            if let Some((stream, track)) = &a.msid {
                out.line(format_args!(
                    "a=ssrc:{ssrc} msid:{} {}",
                    Clean(stream),
                    Clean(track)
                ));
            }
        }
    }
}

/// A rejected section: port 0, no transport parameters, its mid so the peer can match it.
fn write_rejected(out: &mut Sdp, r: &RejectedMedia) {
    out.line(format_args!(
        "m={} 0 {} {}",
        Clean(&r.media),
        Clean(&r.proto),
        Clean(&r.formats.join(" "))
    ));
    out.line(format_args!("c=IN IP4 0.0.0.0"));
    if let Some(mid) = &r.mid {
        out.line(format_args!("a=mid:{}", Clean(mid)));
    }
    if r.proto.contains("RTP") {
        out.line(format_args!("a=inactive"));
    }
}

/// The WhatsApp audio section common to answers and offers; the caller fills the rest.
fn wa_audio(
    params: &WaLocalParams,
    proto: MediaProto,
    opus_pt: Pt,
    opus_fmtp: Option<String>,
    telephone_event_pt: Option<Pt>,
) -> LocalAudio {
    let mut payloads = vec![LocalPayload::opus(opus_pt, opus_fmtp)];
    if let Some(pt) = telephone_event_pt {
        payloads.push(LocalPayload::telephone_event(pt));
    }
    LocalAudio {
        port: params.port,
        proto,
        connection: params.connection,
        payloads,
        ptime: Some(PTIME_MS),
        maxptime: None,
        mid: None,
        bundle: false,
        rtcp_mux: true,
        ice: None,
        fingerprint: None,
        setup: None,
        crypto: None,
        ssrc: params.ssrc.clone(),
        msid: None,
        direction: Direction::SendRecv,
    }
}

/// Our DTLS role given the offerer's (RFC 5763 §5): `actpass` lets us choose (default
/// `active`, which makes us send the ClientHello as soon as ICE works); otherwise the
/// opposite of the offerer's.
fn answer_setup(remote: Setup, wanted: Option<Setup>) -> Result<Setup, SdpError> {
    let forced = match remote {
        Setup::ActPass => None,
        Setup::Active => Some(Setup::Passive),
        Setup::Passive => Some(Setup::Active),
        Setup::HoldConn => {
            return Err(SdpError::document("the offer's a=setup is holdconn"));
        }
    };
    match (forced, wanted) {
        (None, None) => Ok(Setup::Active),
        (None, Some(w @ (Setup::Active | Setup::Passive))) => Ok(w),
        (Some(f), None) => Ok(f),
        (Some(f), Some(w)) if f == w => Ok(f),
        (_, Some(w)) => Err(SdpError::document(format!(
            "cannot answer a=setup:{remote} with a=setup:{w}"
        ))),
    }
}

fn ip_type(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    }
}

/// SDP text under construction.
struct Sdp(String);

impl Sdp {
    fn line(&mut self, args: fmt::Arguments<'_>) {
        // Writing to a String cannot fail.
        let _ = self.0.write_fmt(args);
        self.0.push_str("\r\n");
    }
}

/// Displays a string without its control characters (CR and LF above all).
struct Clean<'a>(&'a str);

impl fmt::Display for Clean<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0
            .chars()
            .filter(|c| !c.is_control())
            .try_for_each(|c| f.write_char(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_negotiation() {
        assert_eq!(answer_setup(Setup::ActPass, None).unwrap(), Setup::Active);
        assert_eq!(
            answer_setup(Setup::ActPass, Some(Setup::Passive)).unwrap(),
            Setup::Passive
        );
        assert_eq!(answer_setup(Setup::Active, None).unwrap(), Setup::Passive);
        assert_eq!(answer_setup(Setup::Passive, None).unwrap(), Setup::Active);
        assert!(answer_setup(Setup::Active, Some(Setup::Active)).is_err());
        assert!(answer_setup(Setup::ActPass, Some(Setup::ActPass)).is_err());
        assert!(answer_setup(Setup::HoldConn, None).is_err());
    }

    #[test]
    fn values_cannot_inject_lines() {
        let mut d = LocalDescription::internal(InternalLocalParams::new(
            1,
            "192.0.2.10".parse().unwrap(),
            4000,
        ));
        d.audio.ssrc = Some((Ssrc::new(5), "evil\r\na=ice-lite".to_string()));
        let sdp = d.to_sdp();
        assert!(sdp.contains("a=ssrc:5 cname:evila=ice-lite\r\n"));
        assert!(!sdp.contains("\r\na=ice-lite"));
    }
}
