//! The supervisor's offer and the relay's answer for a live listen-in.
//!
//! Two kinds of listener, told apart by the offer's transport:
//!
//! - **A browser** (`UDP/TLS/RTP/SAVPF`): two receive-only audio transceivers in one BUNDLE group
//!   (`pc.addTransceiver('audio', {direction: 'recvonly'})` twice). The relay answers ICE-lite
//!   with one host candidate on the fork's own port, `a=setup:passive` (the browser, which runs
//!   the checks, sends the ClientHello), both sections `sendonly`, each with its own SSRC, cname
//!   and `a=msid:<label> <label>` so the page can tell the tracks apart (`event.streams[0].id`
//!   is `consumer` or `agent`).
//! - **A media server** (`RTP/AVP` plain, or `RTP/SAVP` with `a=crypto`), SIPREC-like: two audio
//!   m-lines, each with the address (`c=`, port) its stream goes to. The relay answers each
//!   `sendonly` from the fork's port with `a=label:consumer` / `a=label:agent` (RFC 4574, as
//!   SIPREC labels its streams), its SSRC and, for SDES, its own key in the offered suite.
//!
//! In both, the first audio m-line carries the consumer (what WhatsApp sends), the second the
//! agent (what is sent to WhatsApp). Only what a listen-in needs is read from the offer;
//! everything else (extmap, RED, G722, rtcp-fb, candidates of any type) is ignored. Sections
//! beyond the first two audio ones (video, a data channel, a third audio) are rejected with
//! port 0 in place.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::dtls::Fingerprint;
use crate::srtp::{MasterKey, SrtpProfile, parse_sdes_inline, sdes_inline};
use crate::wire::rtp::{Pt, Ssrc};

/// Which track of the listen-in a section carries, in the order the offer's audio m-lines
/// come.
pub const TRACK_LABELS: [&str; 2] = ["consumer", "agent"];

/// What the relay takes from the listener's offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenOffer {
    pub transport: OfferedTransport,
    /// The two audio sections used, consumer first.
    pub tracks: [OfferedTrack; 2],
    /// Every m-section in order, for the answer (rejected ones keep their place).
    pub sections: Vec<OfferedSection>,
}

/// How the listener receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfferedTransport {
    /// A browser: ICE (the relay lite), DTLS-SRTP, both tracks on one BUNDLE transport.
    WebRtc {
        ice_ufrag: String,
        ice_pwd: String,
        fingerprint: Fingerprint,
    },
    /// A media server: each track to its own address, plain RTP (`sdes` off) or SDES-SRTP.
    Rtp { sdes: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedTrack {
    /// Index into [`ListenOffer::sections`].
    pub section: usize,
    /// WebRTC: the mid (BUNDLE needs one). RTP: the mid if offered.
    pub mid: Option<String>,
    pub opus_pt: Pt,
    pub opus_fmtp: Option<String>,
    /// RTP: where this track's packets go.
    pub target: Option<SocketAddr>,
    /// SDES: the offered crypto line we answer (tag, suite); the offerer's key is checked but
    /// unused (a listener sends the relay nothing it must decrypt).
    pub crypto: Option<(u32, SrtpProfile)>,
    /// `a=rtcp-mux` offered (RTP: RTCP goes to the RTP port, else to port + 1).
    pub rtcp_mux: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedSection {
    pub media: String,
    pub proto: String,
    pub formats: String,
    pub mid: Option<String>,
}

/// Our side: where the fork listens and who we are.
#[derive(Debug, Clone)]
pub struct AnswerParams<'a> {
    pub session_id: u64,
    /// The fork's socket as the supervisor reaches it (the advertised internal address).
    pub addr: SocketAddr,
    /// WebRTC: our ICE credentials and certificate.
    pub ufrag: &'a str,
    pub pwd: &'a str,
    pub fingerprint: &'a Fingerprint,
    /// Consumer, agent.
    pub ssrcs: [Ssrc; 2],
    pub cname: &'a str,
    /// SDES: our key per track (consumer, agent).
    pub keys: Option<&'a [MasterKey; 2]>,
}

/// Read the listener's offer. The error names what is missing, for INVALID_ARGUMENT.
pub fn parse_offer(text: &str) -> Result<ListenOffer, String> {
    let mut session = Attrs::default();
    let mut sections: Vec<(OfferedSection, u16, Attrs)> = Vec::new();
    let mut session_ice_lite = false;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: not `x=value`: {line:?}", n + 1));
        };
        let in_session = sections.is_empty();
        let attrs = match sections.last_mut() {
            Some((_, _, a)) => a,
            None => &mut session,
        };
        match key {
            "m" => {
                let mut f = value.splitn(4, ' ');
                let (Some(media), Some(port), Some(proto)) = (f.next(), f.next(), f.next()) else {
                    return Err(format!("line {}: short m= line: {line:?}", n + 1));
                };
                let port = port
                    .split('/')
                    .next()
                    .and_then(|p| p.parse::<u16>().ok())
                    .ok_or_else(|| format!("line {}: bad port in {line:?}", n + 1))?;
                sections.push((
                    OfferedSection {
                        media: media.to_string(),
                        proto: proto.to_string(),
                        formats: f.next().unwrap_or("").to_string(),
                        mid: None,
                    },
                    port,
                    Attrs::default(),
                ));
            }
            // `IN IP4 10.0.0.5`; read only for a media server (a browser writes 0.0.0.0, and
            // a multicast `/ttl` suffix or a name is refused there).
            "c" => {
                attrs.connection = Some(value.split_ascii_whitespace().nth(2).unwrap_or("").into())
            }
            "a" if in_session && value == "ice-lite" => session_ice_lite = true,
            "a" => attrs.take(value),
            _ => {}
        }
    }
    let audio: Vec<usize> = sections
        .iter()
        .enumerate()
        .filter(|(_, (s, _, _))| s.media == "audio")
        .map(|(i, _)| i)
        .take(2)
        .collect();
    let [c, a] = audio[..] else {
        return Err(format!(
            "a listen-in needs two audio m-lines (consumer, agent); the offer has {}",
            audio.len()
        ));
    };
    let proto = sections[c].0.proto.clone();
    let transport = match proto.to_ascii_uppercase().as_str() {
        "UDP/TLS/RTP/SAVPF" => webrtc_transport(&session, &sections[c].2, session_ice_lite)?,
        "RTP/AVP" | "RTP/AVPF" => OfferedTransport::Rtp { sdes: false },
        "RTP/SAVP" | "RTP/SAVPF" => OfferedTransport::Rtp { sdes: true },
        other => {
            return Err(format!(
                "audio m-line 1: transport {other}: a listen-in takes UDP/TLS/RTP/SAVPF (a \
                 browser), RTP/AVP or RTP/SAVP (a media server)"
            ));
        }
    };
    let webrtc = matches!(transport, OfferedTransport::WebRtc { .. });
    let bundle = session.bundle.clone().unwrap_or_default();
    let mut tracks = Vec::with_capacity(2);
    for (&i, label) in [c, a].iter().zip(TRACK_LABELS) {
        let (s, port, attrs) = &sections[i];
        let at = |why: &str| format!("audio m-line {} ({label}): {why}", tracks.len() + 1);
        if !s.proto.eq_ignore_ascii_case(&proto) {
            return Err(at(&format!("{} differs from the first's {proto}", s.proto)));
        }
        if *port == 0 && !(webrtc && attrs.bundle_only) {
            return Err(at("port 0 (rejected by the offerer)"));
        }
        if matches!(
            attrs.direction.as_deref(),
            Some("sendonly") | Some("inactive")
        ) {
            return Err(at("the listener must receive (recvonly or sendrecv)"));
        }
        let opus_pt = attrs
            .opus_pt
            .ok_or_else(|| at("no opus/48000/2 (the relay does not transcode)"))?;
        let opus_fmtp = attrs
            .fmtp
            .iter()
            .find(|(pt, _)| *pt == opus_pt)
            .map(|(_, f)| f.clone());
        let opus_pt = Pt::new(opus_pt);
        let mut track = OfferedTrack {
            section: i,
            mid: attrs.mid.clone(),
            opus_pt,
            opus_fmtp,
            target: None,
            crypto: None,
            rtcp_mux: attrs.rtcp_mux,
        };
        match &transport {
            OfferedTransport::WebRtc { .. } => {
                let mid = track
                    .mid
                    .clone()
                    .ok_or_else(|| at("no a=mid (BUNDLE needs one)"))?;
                if !bundle.contains(&mid) {
                    return Err(at(&format!(
                        "mid {mid} is not in a=group:BUNDLE: both tracks share one transport"
                    )));
                }
                if !attrs.rtcp_mux {
                    return Err(at("no a=rtcp-mux"));
                }
            }
            OfferedTransport::Rtp { sdes } => {
                let c = attrs
                    .connection
                    .as_deref()
                    .or(session.connection.as_deref())
                    .ok_or_else(|| at("no c= address"))?;
                let ip: IpAddr = c
                    .parse()
                    .map_err(|_| at(&format!("c= address {c:?} is not an IP address")))?;
                if ip.is_unspecified() {
                    return Err(at("c= address is unspecified (0.0.0.0): nowhere to send"));
                }
                track.target = Some(SocketAddr::new(ip, *port));
                if *sdes {
                    track.crypto = Some(pick_crypto(&attrs.crypto).map_err(|e| at(&e))?);
                }
            }
        }
        tracks.push(track);
    }
    let tracks: [OfferedTrack; 2] = tracks.try_into().map_err(|_| "two tracks".to_string())?;
    let sections = sections
        .into_iter()
        .map(|(mut s, _, attrs)| {
            s.mid = attrs.mid;
            s
        })
        .collect();
    Ok(ListenOffer {
        transport,
        tracks,
        sections,
    })
}

/// A browser's ICE credentials and fingerprint (from its first audio section, else the
/// session), and a DTLS role the relay can answer passive to.
fn webrtc_transport(
    session: &Attrs,
    first: &Attrs,
    ice_lite: bool,
) -> Result<OfferedTransport, String> {
    if ice_lite {
        return Err(
            "the offer says a=ice-lite, but the relay is ICE-lite toward a supervisor: \
                    one side must run full ICE"
                .into(),
        );
    }
    let cred = |get: fn(&Attrs) -> &Option<String>, name: &str| {
        get(first)
            .clone()
            .or_else(|| get(session).clone())
            .ok_or_else(|| format!("no a={name} in the first audio section or the session"))
    };
    let ice_ufrag = cred(|a| &a.ufrag, "ice-ufrag")?;
    let ice_pwd = cred(|a| &a.pwd, "ice-pwd")?;
    let fp_text = cred(|a| &a.fingerprint, "fingerprint")?;
    let fingerprint = Fingerprint::parse_sdp_value(&fp_text).map_err(|e| e.to_string())?;
    if fingerprint.algorithm != "sha-256" {
        return Err(format!(
            "a=fingerprint:{fp_text}: the relay verifies sha-256 fingerprints only"
        ));
    }
    match first
        .setup
        .clone()
        .or_else(|| session.setup.clone())
        .as_deref()
    {
        Some("actpass") | Some("active") => {}
        Some(other) => {
            return Err(format!(
                "a=setup:{other}: the relay answers passive, so the supervisor must be able \
                 to connect (actpass or active)"
            ));
        }
        None => return Err("no a=setup".into()),
    }
    Ok(OfferedTransport::WebRtc {
        ice_ufrag,
        ice_pwd,
        fingerprint,
    })
}

/// The first offered `a=crypto` line with a suite we speak and a key that parses.
fn pick_crypto(lines: &[String]) -> Result<(u32, SrtpProfile), String> {
    let mut last_err = "no a=crypto (RTP/SAVP needs SDES keys)".to_string();
    for line in lines {
        let mut f = line.split_ascii_whitespace();
        let (Some(tag), Some(suite), Some(key)) = (f.next(), f.next(), f.next()) else {
            last_err = format!("a=crypto:{line}: short");
            continue;
        };
        let (Ok(tag), Some(profile)) = (tag.parse::<u32>(), SrtpProfile::from_sdes_name(suite))
        else {
            last_err = format!("a=crypto:{line}: unsupported suite or bad tag");
            continue;
        };
        match parse_sdes_inline(profile, key) {
            Ok(_) => return Ok((tag, profile)),
            Err(e) => last_err = format!("a=crypto:{line}: {e}"),
        }
    }
    Err(last_err)
}

/// The attributes a listen-in reads, from one level (session or section).
#[derive(Default)]
struct Attrs {
    ufrag: Option<String>,
    pwd: Option<String>,
    fingerprint: Option<String>,
    setup: Option<String>,
    mid: Option<String>,
    bundle: Option<Vec<String>>,
    direction: Option<String>,
    rtcp_mux: bool,
    bundle_only: bool,
    opus_pt: Option<u8>,
    fmtp: Vec<(u8, String)>,
    connection: Option<String>,
    crypto: Vec<String>,
}

impl Attrs {
    fn take(&mut self, value: &str) {
        let (name, arg) = value.split_once(':').unwrap_or((value, ""));
        let arg = arg.trim();
        match name {
            "ice-ufrag" => self.ufrag = Some(arg.to_string()),
            "ice-pwd" => self.pwd = Some(arg.to_string()),
            "fingerprint" => {
                // Several are allowed; keep the first sha-256 one, else the first.
                let sha = arg.to_ascii_lowercase().starts_with("sha-256 ");
                let have_sha = self
                    .fingerprint
                    .as_deref()
                    .is_some_and(|f| f.to_ascii_lowercase().starts_with("sha-256 "));
                if self.fingerprint.is_none() || (sha && !have_sha) {
                    self.fingerprint = Some(arg.to_string());
                }
            }
            "setup" => self.setup = Some(arg.to_ascii_lowercase()),
            "mid" => self.mid = Some(arg.to_string()),
            "group" => {
                let mut parts = arg.split_ascii_whitespace();
                if parts.next() == Some("BUNDLE") {
                    self.bundle = Some(parts.map(str::to_string).collect());
                }
            }
            "sendrecv" | "sendonly" | "recvonly" | "inactive" => {
                self.direction = Some(name.to_string())
            }
            "rtcp-mux" => self.rtcp_mux = true,
            "crypto" => self.crypto.push(arg.to_string()),
            "bundle-only" => self.bundle_only = true,
            "rtpmap" => {
                let mut p = arg.split_ascii_whitespace();
                if let (Some(pt), Some(enc)) = (p.next(), p.next())
                    && enc.eq_ignore_ascii_case("opus/48000/2")
                    && self.opus_pt.is_none()
                    && let Ok(pt) = pt.parse::<u8>()
                    && pt < 128
                {
                    self.opus_pt = Some(pt);
                }
            }
            "fmtp" => {
                if let Some((pt, params)) = arg.split_once(' ')
                    && let Ok(pt) = pt.parse::<u8>()
                {
                    self.fmtp.push((pt, params.trim().to_string()));
                }
            }
            _ => {}
        }
    }
}

/// ICE host candidate priority (RFC 8445 §5.1.2.1, type preference 126).
fn host_priority(addr: &SocketAddr) -> u32 {
    let local_pref: u32 = if addr.is_ipv6() { 65535 } else { 65534 };
    (126 << 24) | (local_pref << 8) | 255
}

/// Our answer. A browser: ICE-lite, passive, the two tracks `sendonly` in one BUNDLE group
/// with their SSRCs and msids. A media server: each track `sendonly` from the fork's port with
/// its label, SSRC and (SDES) our key. Everything else is rejected in place.
pub fn write_answer(offer: &ListenOffer, p: &AnswerParams<'_>) -> String {
    let ip = p.addr.ip();
    let family = if ip.is_ipv6() { "IP6" } else { "IP4" };
    let webrtc = matches!(offer.transport, OfferedTransport::WebRtc { .. });
    let mut s = String::with_capacity(2048);
    // `write!` to a String cannot fail.
    let _ = write!(
        s,
        "v=0\r\no=- {} 1 IN {family} {ip}\r\ns=-\r\nt=0 0\r\n",
        p.session_id
    );
    if webrtc {
        let mids = offer
            .tracks
            .iter()
            .map(|t| t.mid.as_deref().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(" ");
        let _ = write!(
            s,
            "a=ice-lite\r\na=group:BUNDLE {mids}\r\na=msid-semantic: WMS {} {}\r\n",
            TRACK_LABELS[0], TRACK_LABELS[1]
        );
    }
    for (i, section) in offer.sections.iter().enumerate() {
        let Some(t) = offer.tracks.iter().position(|t| t.section == i) else {
            let _ = write!(
                s,
                "m={} 0 {} {}\r\nc=IN {family} {ip}\r\n",
                section.media, section.proto, section.formats
            );
            if let Some(mid) = &section.mid {
                let _ = write!(s, "a=mid:{mid}\r\n");
            }
            let _ = write!(s, "a=inactive\r\n");
            continue;
        };
        let track = &offer.tracks[t];
        let (label, ssrc, pt, port) = (TRACK_LABELS[t], p.ssrcs[t], track.opus_pt, p.addr.port());
        let _ = write!(
            s,
            "m=audio {port} {} {pt}\r\nc=IN {family} {ip}\r\n",
            section.proto
        );
        if webrtc {
            let _ = write!(
                s,
                "a=rtcp:{port} IN {family} {ip}\r\n\
                 a=ice-ufrag:{}\r\na=ice-pwd:{}\r\na=fingerprint:{}\r\na=setup:passive\r\n",
                p.ufrag,
                p.pwd,
                p.fingerprint.to_sdp_value(),
            );
        }
        if let Some(mid) = &track.mid {
            let _ = write!(s, "a=mid:{mid}\r\n");
        }
        if !webrtc {
            let _ = write!(s, "a=label:{label}\r\n");
        }
        let _ = write!(s, "a=sendonly\r\n");
        if track.rtcp_mux || webrtc {
            let _ = write!(s, "a=rtcp-mux\r\n");
        }
        let _ = write!(s, "a=rtpmap:{pt} opus/48000/2\r\n");
        if let Some(fmtp) = &track.opus_fmtp {
            let _ = write!(s, "a=fmtp:{pt} {fmtp}\r\n");
        }
        let _ = write!(s, "a=ptime:20\r\n");
        if let (Some((tag, _)), Some(keys)) = (track.crypto, p.keys) {
            let key = &keys[t];
            let _ = write!(
                s,
                "a=crypto:{tag} {} {}\r\n",
                key.profile.sdes_name(),
                sdes_inline(key)
            );
        }
        if webrtc {
            let _ = write!(
                s,
                "a=msid:{label} {label}\r\na=ssrc:{ssrc} cname:{}\r\n\
                 a=ssrc:{ssrc} msid:{label} {label}\r\n\
                 a=candidate:1 1 udp {} {ip} {port} typ host\r\na=end-of-candidates\r\n",
                p.cname,
                host_priority(&p.addr)
            );
        } else {
            let _ = write!(s, "a=ssrc:{ssrc} cname:{}\r\n", p.cname);
        }
    }
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Chrome 148's offer for two `recvonly` audio transceivers and a data channel (trimmed of
    /// nothing that matters: its extmaps, RED and G722 stay).
    pub(crate) const CHROME_OFFER: &str = "v=0\r\n\
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0 1 2\r\n\
a=extmap-allow-mixed\r\n\
a=msid-semantic: WMS\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=candidate:1 1 udp 2113937151 3a1f.local 50100 typ host generation 0 network-cost 999\r\n\
a=ice-ufrag:Wq7b\r\n\
a=ice-pwd:5Tg0s5hX2XJq6VQxE0m1qW2y\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 0F:74:31:25:CB:A2:13:EC:28:6F:6D:2C:61:FF:5D:C2:BC:B9:DB:3D:98:14:8D:1A:BB:EA:33:0C:A4:60:A8:8E\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
a=recvonly\r\n\
a=rtcp-mux\r\n\
a=rtcp-rsize\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=rtcp-fb:111 transport-cc\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtpmap:63 red/48000/2\r\n\
a=fmtp:63 111/111\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:13 CN/8000\r\n\
a=rtpmap:110 telephone-event/48000\r\n\
a=rtpmap:126 telephone-event/8000\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Wq7b\r\n\
a=ice-pwd:5Tg0s5hX2XJq6VQxE0m1qW2y\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 0F:74:31:25:CB:A2:13:EC:28:6F:6D:2C:61:FF:5D:C2:BC:B9:DB:3D:98:14:8D:1A:BB:EA:33:0C:A4:60:A8:8E\r\n\
a=setup:actpass\r\n\
a=mid:1\r\n\
a=recvonly\r\n\
a=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtpmap:126 telephone-event/8000\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
c=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Wq7b\r\n\
a=ice-pwd:5Tg0s5hX2XJq6VQxE0m1qW2y\r\n\
a=fingerprint:sha-256 0F:74:31:25:CB:A2:13:EC:28:6F:6D:2C:61:FF:5D:C2:BC:B9:DB:3D:98:14:8D:1A:BB:EA:33:0C:A4:60:A8:8E\r\n\
a=setup:actpass\r\n\
a=mid:2\r\n\
a=sctp-port:5000\r\n";

    #[test]
    fn chrome_offer_gives_two_tracks_in_order() {
        let o = parse_offer(CHROME_OFFER).unwrap();
        let OfferedTransport::WebRtc {
            ice_ufrag,
            fingerprint,
            ..
        } = &o.transport
        else {
            panic!("a browser's offer: {:?}", o.transport);
        };
        assert_eq!(ice_ufrag, "Wq7b");
        assert_eq!(fingerprint.bytes.len(), 32);
        assert_eq!(o.tracks[0].mid.as_deref(), Some("0"));
        assert_eq!(o.tracks[1].mid.as_deref(), Some("1"));
        assert_eq!(o.tracks[0].opus_pt.get(), 111);
        assert_eq!(
            o.tracks[0].opus_fmtp.as_deref(),
            Some("minptime=10;useinbandfec=1")
        );
        assert_eq!(o.sections.len(), 3);
        assert_eq!(o.tracks[0].target, None);
    }

    #[test]
    fn answer_is_lite_passive_two_sendonly_tracks_and_rejects_the_rest() {
        let o = parse_offer(CHROME_OFFER).unwrap();
        let fp = Fingerprint::sha256_of(b"cert");
        let sdp = write_answer(
            &o,
            &AnswerParams {
                session_id: 9,
                addr: "10.0.0.5:31000".parse().unwrap(),
                ufrag: "lisT",
                pwd: "listenPasswordOf24Chars0",
                fingerprint: &fp,
                ssrcs: [Ssrc::new(111_111), Ssrc::new(222_222)],
                cname: "relay-listen",
                keys: None,
            },
        );
        for line in [
            "a=ice-lite\r\n",
            "a=group:BUNDLE 0 1\r\n",
            "m=audio 31000 UDP/TLS/RTP/SAVPF 111\r\n",
            "a=setup:passive\r\n",
            "a=sendonly\r\n",
            "a=msid:consumer consumer\r\n",
            "a=msid:agent agent\r\n",
            "a=ssrc:111111 cname:relay-listen\r\n",
            "a=ssrc:222222 msid:agent agent\r\n",
            "a=candidate:1 1 udp 2130706175 10.0.0.5 31000 typ host\r\n",
            "m=application 0 UDP/DTLS/SCTP webrtc-datachannel\r\n",
            "a=mid:2\r\n",
        ] {
            assert!(sdp.contains(line), "{line:?} missing from\n{sdp}");
        }
        let m: Vec<&str> = sdp.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(m.len(), 3, "every offered section answered, in order");
        // The consumer's section comes first and carries the first SSRC.
        let consumer = sdp.find("a=ssrc:111111").unwrap();
        let agent = sdp.find("a=ssrc:222222").unwrap();
        assert!(sdp.find("a=mid:0").unwrap() < consumer && consumer < agent);
    }

    #[test]
    fn refusals_name_the_problem() {
        let one_audio = CHROME_OFFER.replacen("m=audio", "m=video", 1);
        assert!(parse_offer(&one_audio).unwrap_err().contains("two audio"));
        let lite = CHROME_OFFER.replace("t=0 0\r\n", "t=0 0\r\na=ice-lite\r\n");
        assert!(parse_offer(&lite).unwrap_err().contains("ice-lite"));
        let sendonly = CHROME_OFFER.replacen("a=recvonly", "a=sendonly", 1);
        assert!(parse_offer(&sendonly).unwrap_err().contains("must receive"));
        let no_opus = CHROME_OFFER.replace("opus/48000/2", "opus/48000/1");
        assert!(parse_offer(&no_opus).unwrap_err().contains("opus"));
        let unbundled = CHROME_OFFER.replace("a=group:BUNDLE 0 1 2", "a=group:BUNDLE 0 2");
        assert!(parse_offer(&unbundled).unwrap_err().contains("BUNDLE"));
        let passive = CHROME_OFFER.replace("a=setup:actpass", "a=setup:passive");
        assert!(parse_offer(&passive).unwrap_err().contains("passive"));
        let no_fp: String = CHROME_OFFER
            .lines()
            .filter(|l| !l.starts_with("a=fingerprint"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(parse_offer(&no_fp).unwrap_err().contains("fingerprint"));
        assert!(parse_offer("garbage").is_err());
        assert!(parse_offer("").is_err());
    }

    /// A SIPREC-like media server's offer: one stream per m-line, each to its own port, plain
    /// RTP, with labels and a video line the relay rejects.
    pub(crate) const MEDIA_SERVER_OFFER: &str = "v=0\r\n\
o=srs 1 1 IN IP4 192.0.2.10\r\n\
s=recording\r\n\
c=IN IP4 192.0.2.10\r\n\
t=0 0\r\n\
m=audio 40000 RTP/AVP 96 0 101\r\n\
a=label:1\r\n\
a=recvonly\r\n\
a=rtpmap:96 opus/48000/2\r\n\
a=fmtp:96 useinbandfec=1\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
m=video 40004 RTP/AVP 97\r\n\
a=rtpmap:97 H264/90000\r\n\
m=audio 40002 RTP/AVP 96\r\n\
c=IN IP4 192.0.2.11\r\n\
a=label:2\r\n\
a=rtcp-mux\r\n\
a=rtpmap:96 opus/48000/2\r\n";

    fn rtp_answer(offer: &ListenOffer, keys: Option<&[MasterKey; 2]>) -> String {
        let fp = Fingerprint::sha256_of(b"cert");
        write_answer(
            offer,
            &AnswerParams {
                session_id: 9,
                addr: "10.0.0.5:31000".parse().unwrap(),
                ufrag: "",
                pwd: "",
                fingerprint: &fp,
                ssrcs: [Ssrc::new(111_111), Ssrc::new(222_222)],
                cname: "relay-listen",
                keys,
            },
        )
    }

    #[test]
    fn media_server_offer_gives_two_targets_and_a_plain_answer() {
        let o = parse_offer(MEDIA_SERVER_OFFER).unwrap();
        assert_eq!(o.transport, OfferedTransport::Rtp { sdes: false });
        assert_eq!(
            o.tracks[0].target,
            Some("192.0.2.10:40000".parse().unwrap())
        );
        assert_eq!(
            o.tracks[1].target,
            Some("192.0.2.11:40002".parse().unwrap()),
            "a section's c= wins over the session's"
        );
        assert_eq!((o.tracks[0].rtcp_mux, o.tracks[1].rtcp_mux), (false, true));
        assert_eq!(o.tracks[0].opus_pt.get(), 96);
        assert_eq!(o.tracks[0].mid, None);
        assert_eq!(o.tracks[1].section, 2, "the video line keeps its place");

        let sdp = rtp_answer(&o, None);
        for line in [
            "m=audio 31000 RTP/AVP 96\r\n",
            "c=IN IP4 10.0.0.5\r\n",
            "a=label:consumer\r\n",
            "a=label:agent\r\n",
            "a=sendonly\r\n",
            "a=rtpmap:96 opus/48000/2\r\n",
            "a=fmtp:96 useinbandfec=1\r\n",
            "a=ssrc:111111 cname:relay-listen\r\n",
            "a=ssrc:222222 cname:relay-listen\r\n",
            "m=video 0 RTP/AVP 97\r\n",
        ] {
            assert!(sdp.contains(line), "{line:?} missing from\n{sdp}");
        }
        for absent in [
            "ice",
            "fingerprint",
            "BUNDLE",
            "setup",
            "candidate",
            "crypto",
        ] {
            assert!(
                !sdp.contains(absent),
                "{absent} in a plain RTP answer:\n{sdp}"
            );
        }
        assert_eq!(sdp.matches("a=rtcp-mux").count(), 1, "only where offered");
        let consumer = sdp.find("a=label:consumer").unwrap();
        let video = sdp.find("m=video").unwrap();
        let agent = sdp.find("a=label:agent").unwrap();
        assert!(
            consumer < video && video < agent,
            "sections in the offer's order"
        );
    }

    #[test]
    fn sdes_offer_is_answered_with_our_own_key_in_the_offered_suite() {
        let offer = MEDIA_SERVER_OFFER
            .replace("RTP/AVP 96", "RTP/SAVP 96")
            .replace(
                "a=label:1\r\n",
                "a=label:1\r\na=crypto:1 AES_CM_999 inline:AAAA\r\n\
                 a=crypto:2 AES_CM_128_HMAC_SHA1_80 \
                 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^31\r\n",
            )
            .replace(
                "a=label:2\r\n",
                "a=label:2\r\na=crypto:7 AEAD_AES_128_GCM \
                 inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGw==\r\n",
            );
        let o = parse_offer(&offer).unwrap();
        assert_eq!(o.transport, OfferedTransport::Rtp { sdes: true });
        assert_eq!(
            o.tracks[0].crypto,
            Some((2, SrtpProfile::Aes128CmHmacSha1_80)),
            "the first suite we speak"
        );
        assert_eq!(o.tracks[1].crypto, Some((7, SrtpProfile::AeadAes128Gcm)));
        let keys = [
            crate::srtp::random_master_key(SrtpProfile::Aes128CmHmacSha1_80),
            crate::srtp::random_master_key(SrtpProfile::AeadAes128Gcm),
        ];
        let sdp = rtp_answer(&o, Some(&keys));
        for (tag, key) in [(2, &keys[0]), (7, &keys[1])] {
            let line = format!(
                "a=crypto:{tag} {} {}\r\n",
                key.profile.sdes_name(),
                sdes_inline(key)
            );
            assert!(sdp.contains(&line), "{line:?} missing from\n{sdp}");
        }
        assert!(sdp.contains("m=audio 31000 RTP/SAVP 96\r\n"));

        let no_key = offer.replace("a=crypto:7", "a=nocrypto:7");
        assert!(parse_offer(&no_key).unwrap_err().contains("no a=crypto"));
        let only_bad = offer.replace(
            "a=crypto:2 AES_CM_128_HMAC_SHA1_80",
            "a=crypto:2 AES_CM_128_HMAC_SHA1_32",
        );
        assert!(
            parse_offer(&only_bad)
                .unwrap_err()
                .contains("unsupported suite")
        );
    }

    #[test]
    fn media_server_refusals_name_the_problem() {
        let no_c = MEDIA_SERVER_OFFER.replace("c=IN IP4 192.0.2.10\r\n", "");
        assert!(parse_offer(&no_c).unwrap_err().contains("no c= address"));
        let unspecified = MEDIA_SERVER_OFFER.replace("IP4 192.0.2.10\r\nt=", "IP4 0.0.0.0\r\nt=");
        assert!(
            parse_offer(&unspecified)
                .unwrap_err()
                .contains("unspecified")
        );
        let named = MEDIA_SERVER_OFFER.replace("IP4 192.0.2.11", "IP4 srs.example");
        assert!(
            parse_offer(&named)
                .unwrap_err()
                .contains("not an IP address")
        );
        let mixed = MEDIA_SERVER_OFFER.replace("m=audio 40002 RTP/AVP", "m=audio 40002 RTP/SAVP");
        assert!(parse_offer(&mixed).unwrap_err().contains("differs"));
        let port0 = MEDIA_SERVER_OFFER.replace("m=audio 40002", "m=audio 0");
        assert!(parse_offer(&port0).unwrap_err().contains("port 0"));
        let tcp = MEDIA_SERVER_OFFER.replace("m=audio 40000 RTP/AVP", "m=audio 40000 TCP/RTP/AVP");
        assert!(parse_offer(&tcp).unwrap_err().contains("transport"));
        let sendonly = MEDIA_SERVER_OFFER.replace("a=recvonly", "a=sendonly");
        assert!(parse_offer(&sendonly).unwrap_err().contains("must receive"));
    }
}
