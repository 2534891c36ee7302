//! The WebRTC internal leg's SDP: a browser agent's offer or answer checked and extracted, and
//! our side written in the shape standard stacks (Chrome, Firefox, aiortc) accept (RFC 8829
//! JSEP, RFC 8843 BUNDLE): one audio m-line with a mid in a BUNDLE group, rtcp-mux, ICE-lite
//! with one host candidate, a SHA-256 fingerprint, Opus and telephone-event/8000, an SSRC with
//! cname and msid.
//!
//! Browser descriptions carry much the relay does not use (extmap, RED, G722, rtcp-fb,
//! candidates of every type including `.local` mDNS names). The relay is ICE-lite, so remote
//! candidates are informational: none is required and none is ever refused.

use std::net::IpAddr;

use crate::wire::rtp::{Pt, Ssrc};

use super::error::SdpError;
use super::model::{
    Candidate, Direction, Fingerprint, MediaProto, MediaSection, SessionDescription, Setup,
};
use super::validate::{TELEPHONE_EVENT_CLOCK, m_line_text};
use super::write::{
    DEFAULT_OPUS_PT, DEFAULT_TELEPHONE_EVENT_PT, LocalAudio, LocalDescription, LocalIce,
    LocalPayload, META_OPUS_FMTP, PTIME_MS, RejectedMedia,
};

/// The mid of our audio section when we offer (what browsers use for their first section).
pub const WEBRTC_OFFER_MID: &str = "0";
/// The `a=msid` stream id of our audio track.
pub const WEBRTC_STREAM_ID: &str = "relay";

/// What the relay needs from a browser's description (its offer, or its answer to ours).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebRtcRemote {
    pub ice_ufrag: String,
    pub ice_pwd: String,
    /// Usable UDP candidates (informational: the relay is ICE-lite and answers checks from
    /// wherever they come).
    pub candidates: Vec<Candidate>,
    /// Always SHA-256.
    pub fingerprint: Fingerprint,
    /// Never `holdconn`.
    pub setup: Setup,
    pub opus_pt: Pt,
    pub opus_fmtp: Option<String>,
    /// `telephone-event/8000`, if offered (browsers also offer a 48 kHz one, which we ignore).
    pub telephone_event_pt: Option<Pt>,
    pub mid: Option<String>,
    pub bundle: bool,
    pub direction: Direction,
    pub remote_ssrc: Option<Ssrc>,
    /// Every m-section of the description, for answering the ones we reject.
    pub sections: Vec<MediaSection>,
}

/// Check a browser's description (parsed with [`super::parse_webrtc`]) for what a WebRTC
/// internal leg needs: `UDP/TLS/RTP/SAVPF`, ICE credentials, a SHA-256 fingerprint, a setup
/// role, rtcp-mux, `opus/48000/2`, and no `a=ice-lite` (two lite agents never connect).
pub fn validate_webrtc(sd: &SessionDescription) -> Result<WebRtcRemote, SdpError> {
    let audio = &sd.audio;
    let m_line = sd.lines.audio;
    let at_m = |reason: &str| SdpError::at(m_line, &m_line_text(sd), reason);

    if audio.proto != MediaProto::UdpTlsRtpSavpf {
        return Err(at_m(&format!(
            "a WebRTC internal leg needs UDP/TLS/RTP/SAVPF, not {}",
            audio.proto
        )));
    }
    if sd.ice_lite {
        return Err(SdpError::document(
            "the browser's description says a=ice-lite, but the relay is ICE-lite toward \
             browsers: one side must run full ICE",
        ));
    }
    let (ufrag, pwd) = sd
        .ice_credentials()
        .ok_or_else(|| at_m("no a=ice-ufrag and a=ice-pwd"))?;
    let fingerprint = sd.fingerprint().ok_or_else(|| at_m("no a=fingerprint"))?;
    if !fingerprint.is_sha256() {
        return Err(SdpError::at(
            sd.lines.fingerprint,
            &format!("a=fingerprint:{fingerprint}"),
            "the relay verifies sha-256 fingerprints only",
        ));
    }
    let setup = match sd.setup() {
        None => return Err(at_m("no a=setup")),
        Some(Setup::HoldConn) => {
            return Err(SdpError::at(
                sd.lines.setup,
                "a=setup:holdconn",
                "a=setup:holdconn: no DTLS connection to make",
            ));
        }
        Some(s) => s,
    };
    if !audio.rtcp_mux {
        return Err(at_m(
            "no a=rtcp-mux (the relay does not run a separate RTCP component)",
        ));
    }
    let opus_pt = audio
        .opus_pt()
        .filter(|pt| audio.rtpmap(pt.get()).and_then(|m| m.channels) == Some(2))
        .ok_or_else(|| at_m("no opus/48000/2 payload type (the relay does not transcode)"))?;
    Ok(WebRtcRemote {
        ice_ufrag: ufrag.to_string(),
        ice_pwd: pwd.to_string(),
        candidates: audio.candidates.clone(),
        fingerprint: fingerprint.clone(),
        setup,
        opus_pt,
        opus_fmtp: audio.fmtp(opus_pt).map(str::to_string),
        telephone_event_pt: audio.telephone_event_pt(TELEPHONE_EVENT_CLOCK),
        mid: audio.mid.clone(),
        bundle: sd.audio_bundled(),
        direction: audio.direction,
        remote_ssrc: audio.first_ssrc(),
        sections: sd.sections.clone(),
    })
}

/// Our DTLS role in the answer to a browser's offer.
///
/// To `actpass` (what browsers offer) we answer `passive`: the relay is ICE-lite, so it
/// cannot start a handshake before the browser's nominating check reaches it, while the
/// browser, which runs the checks, knows first that the path works and sends its ClientHello
/// in the same instant. `active` (RFC 5763's preference) would gain nothing here and would
/// race our ClientHello against the browser's own view of ICE. A browser that insists on a
/// role gets the other one.
pub fn webrtc_answer_setup(offered: Setup) -> Result<Setup, SdpError> {
    match offered {
        Setup::ActPass | Setup::Active => Ok(Setup::Passive),
        Setup::Passive => Ok(Setup::Active),
        Setup::HoldConn => Err(SdpError::document("the offer's a=setup is holdconn")),
    }
}

/// Our side of a WebRTC internal leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebRtcLocalParams {
    pub session_id: u64,
    pub session_version: u64,
    /// Our internal address (`c=`, `o=` and the one host candidate).
    pub connection: IpAddr,
    pub port: u16,
    /// Our credentials and the host candidate (`a=end-of-candidates`: we never trickle).
    pub ice: LocalIce,
    pub fingerprint: Fingerprint,
    /// The SSRC we send with and its cname.
    pub ssrc: Ssrc,
    pub cname: String,
}

impl LocalDescription {
    /// Our offer to a browser: ICE-lite, `a=setup:actpass`, mid `0` in a BUNDLE group,
    /// rtcp-mux, Opus 111 with Meta's parameters (the stream the browser will receive, and
    /// what we ask it to send, since it goes to WhatsApp untouched), telephone-event/8000 126.
    pub fn webrtc_offer(p: WebRtcLocalParams) -> LocalDescription {
        let (session_id, session_version, audio) = webrtc_audio(
            p,
            DEFAULT_OPUS_PT,
            Some(DEFAULT_TELEPHONE_EVENT_PT),
            WEBRTC_OFFER_MID.to_string(),
            Setup::ActPass,
            Direction::SendRecv,
        );
        LocalDescription {
            session_id,
            session_version,
            origin_addr: audio.connection,
            ice_lite: true,
            audio,
            rejected: Vec::new(),
        }
    }

    /// Our answer to a browser's offer: its Opus and telephone-event payload types and its
    /// mid, the answering direction, the DTLS role of [`webrtc_answer_setup`], and every other
    /// offered section rejected with port 0 in its place.
    pub fn webrtc_answer(
        offer: &WebRtcRemote,
        p: WebRtcLocalParams,
    ) -> Result<LocalDescription, SdpError> {
        let setup = webrtc_answer_setup(offer.setup)?;
        let mid = offer
            .mid
            .clone()
            .unwrap_or_else(|| WEBRTC_OFFER_MID.to_string());
        let (session_id, session_version, mut audio) = webrtc_audio(
            p,
            offer.opus_pt,
            offer.telephone_event_pt,
            mid,
            setup,
            offer.direction.answer(),
        );
        // Bundle only if the browser did (every browser does; an old stack might not).
        audio.bundle = offer.bundle;
        let mut rejected = Vec::new();
        let mut before_audio = true;
        for s in &offer.sections {
            if s.carried {
                before_audio = false;
                continue;
            }
            rejected.push(RejectedMedia {
                before_audio,
                media: s.media.clone(),
                proto: s.proto.clone(),
                formats: s.formats.clone(),
                mid: s.mid.clone(),
            });
        }
        Ok(LocalDescription {
            session_id,
            session_version,
            origin_addr: audio.connection,
            ice_lite: true,
            audio,
            rejected,
        })
    }
}

/// The audio section common to our offers and answers, with the session id and version.
fn webrtc_audio(
    p: WebRtcLocalParams,
    opus_pt: Pt,
    te_pt: Option<Pt>,
    mid: String,
    setup: Setup,
    direction: Direction,
) -> (u64, u64, LocalAudio) {
    let mut payloads = vec![LocalPayload::opus(
        opus_pt,
        Some(META_OPUS_FMTP.to_string()),
    )];
    if let Some(pt) = te_pt {
        payloads.push(LocalPayload::telephone_event(pt));
    }
    let track = format!("{}-audio", p.cname);
    let audio = LocalAudio {
        port: p.port,
        proto: MediaProto::UdpTlsRtpSavpf,
        connection: p.connection,
        payloads,
        ptime: Some(PTIME_MS),
        maxptime: None,
        mid: Some(mid),
        bundle: true,
        rtcp_mux: true,
        ice: Some(p.ice),
        fingerprint: Some(p.fingerprint),
        setup: Some(setup),
        crypto: None,
        ssrc: Some((p.ssrc, p.cname)),
        msid: Some((WEBRTC_STREAM_ID.to_string(), track)),
        direction,
    };
    (p.session_id, p.session_version, audio)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdp::parse_webrtc;

    const BROWSER_OFFER: &str = include_str!("../../tests/fixtures/sdp/browser_offer.sdp");

    fn params() -> WebRtcLocalParams {
        let addr: std::net::SocketAddr = "10.0.0.1:30000".parse().unwrap();
        WebRtcLocalParams {
            session_id: 7,
            session_version: 1,
            connection: addr.ip(),
            port: addr.port(),
            ice: LocalIce {
                ufrag: "relayUfr".into(),
                pwd: "relayPasswordOf24Chars00".into(),
                candidates: vec![(addr, 2_130_706_431)],
                end_of_candidates: true,
            },
            fingerprint: Fingerprint::sha256_of(b"cert"),
            ssrc: Ssrc::new(1234),
            cname: "relay-1".into(),
        }
    }

    #[test]
    fn chrome_offer_is_accepted_with_mdns_and_tcp_candidates() {
        let sd = parse_webrtc(BROWSER_OFFER).unwrap();
        let r = validate_webrtc(&sd).unwrap();
        assert_eq!(r.opus_pt, Pt::new(111));
        assert_eq!(
            r.telephone_event_pt,
            Some(Pt::new(126)),
            "the 8 kHz one, not 110/48000"
        );
        assert_eq!(r.setup, Setup::ActPass);
        assert_eq!(r.mid.as_deref(), Some("0"));
        assert!(r.bundle);
        // The mDNS host and TCP candidates are dropped, the component-2 one too.
        assert_eq!(r.candidates.len(), 1);
        assert_eq!(r.candidates[0].typ, "srflx");
    }

    #[test]
    fn answer_to_a_browser_offer() {
        let r = validate_webrtc(&parse_webrtc(BROWSER_OFFER).unwrap()).unwrap();
        let sdp = LocalDescription::webrtc_answer(&r, params())
            .unwrap()
            .to_sdp();
        for line in [
            "a=group:BUNDLE 0\r\n",
            "a=ice-lite\r\n",
            "m=audio 30000 UDP/TLS/RTP/SAVPF 111 126\r\n",
            "a=setup:passive\r\n",
            "a=mid:0\r\n",
            "a=rtcp-mux\r\n",
            "a=msid:relay relay-1-audio\r\n",
            "a=ssrc:1234 cname:relay-1\r\n",
            "a=candidate:1 1 udp 2130706431 10.0.0.1 30000 typ host\r\n",
            "a=end-of-candidates\r\n",
            "a=rtpmap:126 telephone-event/8000\r\n",
        ] {
            assert!(sdp.contains(line), "{line:?} missing from\n{sdp}");
        }
        // Our own parser reads it back as a valid WebRTC description (minus ice-lite, which
        // it must refuse from a browser).
        let back = crate::sdp::parse(&sdp).unwrap();
        assert!(back.ice_lite);
        assert_eq!(back.audio.mid.as_deref(), Some("0"));
    }

    #[test]
    fn offer_says_actpass_and_lite() {
        let sdp = LocalDescription::webrtc_offer(params()).to_sdp();
        assert!(sdp.contains("a=setup:actpass\r\n"));
        assert!(sdp.contains("a=ice-lite\r\n"));
        assert!(sdp.contains("a=group:BUNDLE 0\r\n"));
        assert!(sdp.contains("a=sendrecv\r\n"));
    }

    #[test]
    fn video_and_data_sections_are_rejected_in_place() {
        let offer = BROWSER_OFFER
            .replace("a=group:BUNDLE 0", "a=group:BUNDLE v 0 d")
            .replace(
                "m=audio 52200",
                "m=video 9 UDP/TLS/RTP/SAVPF 96 97\nc=IN IP4 0.0.0.0\na=mid:v\na=rtpmap:96 VP8/90000\nm=audio 52200",
            )
            + "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\nc=IN IP4 0.0.0.0\na=mid:d\na=sctp-port:5000\n";
        assert!(
            crate::sdp::parse(&offer).is_err(),
            "the strict parser refuses video"
        );
        let r = validate_webrtc(&parse_webrtc(&offer).unwrap()).unwrap();
        let sdp = LocalDescription::webrtc_answer(&r, params())
            .unwrap()
            .to_sdp();
        let m_lines: Vec<&str> = sdp.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(
            m_lines,
            [
                "m=video 0 UDP/TLS/RTP/SAVPF 96 97",
                "m=audio 30000 UDP/TLS/RTP/SAVPF 111 126",
                "m=application 0 UDP/DTLS/SCTP webrtc-datachannel",
            ]
        );
        assert!(sdp.contains("a=mid:v\r\n") && sdp.contains("a=mid:d\r\n"));
        assert!(
            sdp.contains("a=group:BUNDLE 0\r\n"),
            "only the audio is bundled"
        );
    }

    #[test]
    fn refusals_name_the_problem() {
        let lite = BROWSER_OFFER.replace("t=0 0", "t=0 0\na=ice-lite");
        let e = validate_webrtc(&parse_webrtc(&lite).unwrap()).unwrap_err();
        assert!(e.reason.contains("ice-lite"), "{e}");
        let no_mux = BROWSER_OFFER.replace("a=rtcp-mux\n", "");
        let e = validate_webrtc(&parse_webrtc(&no_mux).unwrap()).unwrap_err();
        assert!(e.reason.contains("rtcp-mux"), "{e}");
        let avp = BROWSER_OFFER.replace("UDP/TLS/RTP/SAVPF", "RTP/AVP");
        let e = validate_webrtc(&parse_webrtc(&avp).unwrap()).unwrap_err();
        assert!(e.reason.contains("UDP/TLS/RTP/SAVPF"), "{e}");
        let no_fp = BROWSER_OFFER
            .lines()
            .filter(|l| !l.starts_with("a=fingerprint"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(validate_webrtc(&parse_webrtc(&no_fp).unwrap()).is_err());
    }

    #[test]
    fn setup_roles() {
        assert_eq!(webrtc_answer_setup(Setup::ActPass).unwrap(), Setup::Passive);
        assert_eq!(webrtc_answer_setup(Setup::Active).unwrap(), Setup::Passive);
        assert_eq!(webrtc_answer_setup(Setup::Passive).unwrap(), Setup::Active);
        assert!(webrtc_answer_setup(Setup::HoldConn).is_err());
    }
}
