//! What a parsed session description holds: the session level plus the one active `m=audio`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::wire::rtp::{Pt, Ssrc};

/// The `o=` line, kept as text: only equality matters to the relay, and some stacks put
/// numbers wider than 64 bits in the session id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub username: String,
    pub session_id: String,
    pub session_version: String,
    pub net_type: String,
    pub addr_type: String,
    pub address: String,
}

/// The transport protocols of an `m=audio` line the relay can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaProto {
    /// `UDP/TLS/RTP/SAVPF`: ICE + DTLS-SRTP (WebRTC, WhatsApp's default).
    UdpTlsRtpSavpf,
    /// `RTP/SAVPF`: SDES-SRTP with RTCP feedback.
    RtpSavpf,
    /// `RTP/SAVP`: SDES-SRTP (WhatsApp over SIP with SDES, SIP media servers).
    RtpSavp,
    /// `RTP/AVP`: plain RTP (internal legs only).
    RtpAvp,
    /// `RTP/AVPF`: plain RTP with RTCP feedback.
    RtpAvpf,
}

impl MediaProto {
    pub const ALL: [MediaProto; 5] = [
        MediaProto::UdpTlsRtpSavpf,
        MediaProto::RtpSavpf,
        MediaProto::RtpSavp,
        MediaProto::RtpAvp,
        MediaProto::RtpAvpf,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MediaProto::UdpTlsRtpSavpf => "UDP/TLS/RTP/SAVPF",
            MediaProto::RtpSavpf => "RTP/SAVPF",
            MediaProto::RtpSavp => "RTP/SAVP",
            MediaProto::RtpAvp => "RTP/AVP",
            MediaProto::RtpAvpf => "RTP/AVPF",
        }
    }

    /// Protocol names are case-sensitive in RFC 8866; some SIP stacks lowercase them anyway.
    pub fn from_token(token: &str) -> Option<MediaProto> {
        MediaProto::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(token))
    }

    /// SDES-keyed SRTP (`a=crypto` applies).
    pub fn is_sdes(self) -> bool {
        matches!(self, MediaProto::RtpSavp | MediaProto::RtpSavpf)
    }
}

impl fmt::Display for MediaProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Media direction (RFC 8866 §6.7). Absent means `sendrecv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    pub fn from_token(token: &str) -> Option<Direction> {
        match token {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }

    /// The direction an answer takes to an offer with this direction (RFC 3264 §6.1).
    pub fn answer(self) -> Direction {
        match self {
            Direction::SendRecv => Direction::SendRecv,
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            Direction::Inactive => Direction::Inactive,
        }
    }
}

/// DTLS role negotiation (RFC 4145 / RFC 5763 `a=setup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Setup {
    /// We open the connection: the DTLS client.
    Active,
    /// We wait for it: the DTLS server.
    Passive,
    /// Offerer lets the answerer choose.
    ActPass,
    /// No connection for now.
    HoldConn,
}

impl Setup {
    pub fn as_str(self) -> &'static str {
        match self {
            Setup::Active => "active",
            Setup::Passive => "passive",
            Setup::ActPass => "actpass",
            Setup::HoldConn => "holdconn",
        }
    }

    pub fn from_token(token: &str) -> Option<Setup> {
        [
            Setup::Active,
            Setup::Passive,
            Setup::ActPass,
            Setup::HoldConn,
        ]
        .into_iter()
        .find(|s| s.as_str().eq_ignore_ascii_case(token))
    }
}

impl fmt::Display for Setup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A certificate fingerprint (RFC 8122 `a=fingerprint`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    /// Hash function name, lowercased (`sha-256`).
    pub algorithm: String,
    pub bytes: Vec<u8>,
}

impl Fingerprint {
    pub const SHA256: &'static str = "sha-256";

    pub fn is_sha256(&self) -> bool {
        self.algorithm == Fingerprint::SHA256 && self.bytes.len() == 32
    }
}

/// `sha-256 AB:CD:…`, uppercase hex, the form `a=fingerprint:` carries.
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.algorithm)?;
        for (i, b) in self.bytes.iter().enumerate() {
            let sep = if i == 0 { ' ' } else { ':' };
            write!(f, "{sep}{b:02X}")?;
        }
        Ok(())
    }
}

/// `a=rtpmap:<pt> <encoding>/<clock>[/<channels>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    pub pt: u8,
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: Option<u8>,
}

/// `a=crypto:<tag> <suite> <key-params> [<session-params>…]` (RFC 4568), as written.
#[derive(Clone, PartialEq, Eq)]
pub struct Crypto {
    pub tag: u32,
    pub suite: String,
    /// `inline:…` verbatim (may hold several `;`-separated keys, lifetime and MKI).
    pub key_params: String,
    pub session_params: Vec<String>,
}

impl fmt::Debug for Crypto {
    // The key parameters are the SRTP master key: never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crypto")
            .field("tag", &self.tag)
            .field("suite", &self.suite)
            .field("key_params", &"<redacted>")
            .field("session_params", &self.session_params)
            .finish()
    }
}

/// A usable ICE candidate: UDP, component 1 (RTP; we require rtcp-mux), an IP literal address.
/// Other candidates (TCP, component 2, mDNS `.local`, FQDN) are checked for syntax and dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub foundation: String,
    pub component: u16,
    /// Always `udp` (lowercased) for kept candidates.
    pub transport: String,
    pub priority: u32,
    pub addr: SocketAddr,
    /// `host`, `srflx`, `prflx`, `relay`, or whatever the peer wrote.
    pub typ: String,
}

/// The single active `m=audio` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioMedia {
    pub port: u16,
    pub proto: MediaProto,
    /// Payload types from the `m=` line, in the peer's preference order.
    pub formats: Vec<u8>,
    /// Media-level `c=`.
    pub connection: Option<IpAddr>,
    pub rtpmaps: Vec<RtpMap>,
    pub fmtps: Vec<(u8, String)>,
    /// `(pt or "*", feedback)`.
    pub rtcp_fbs: Vec<(String, String)>,
    pub ptime: Option<u32>,
    pub maxptime: Option<u32>,
    pub mid: Option<String>,
    pub rtcp_mux: bool,
    /// `a=rtcp:<port> [IN IP4 <addr>]`.
    pub rtcp: Option<(u16, Option<IpAddr>)>,
    pub ice_ufrag: Option<String>,
    pub ice_pwd: Option<String>,
    pub candidates: Vec<Candidate>,
    pub end_of_candidates: bool,
    /// Media-level fingerprint (SHA-256 preferred when several are given).
    pub fingerprint: Option<Fingerprint>,
    pub setup: Option<Setup>,
    pub crypto: Vec<Crypto>,
    /// `(ssrc, attribute, value)` from `a=ssrc:<ssrc> <attribute>[:<value>]`.
    pub ssrcs: Vec<(u32, String, Option<String>)>,
    /// Media direction, or the session-level one, or `sendrecv`.
    pub direction: Direction,
    pub extmaps: Vec<(u16, String)>,
}

impl AudioMedia {
    /// The Opus payload type (`opus/48000[/2]`), first in the `m=` line's order.
    pub fn opus_pt(&self) -> Option<Pt> {
        self.offered_pt(|m| m.encoding.eq_ignore_ascii_case("opus") && m.clock_rate == 48000)
    }

    /// The first G.711 payload type on the `m=` line (PCMU or PCMA at 8000 Hz), in the peer's
    /// preference order: by `a=rtpmap`, or the static types 0 and 8 listed without one
    /// (RFC 3551 §6 lets an SDP rely on the static assignment).
    pub fn g711_pt(&self) -> Option<(Pt, crate::codec::g711::G711)> {
        use crate::codec::g711::G711;
        self.formats
            .iter()
            .copied()
            .find_map(|pt| match self.rtpmap(pt) {
                Some(m) if m.clock_rate == 8000 && m.channels.unwrap_or(1) == 1 => {
                    G711::from_encoding_name(&m.encoding).map(|law| (Pt::new(pt), law))
                }
                Some(_) => None,
                None if pt == 0 => Some((Pt::new(0), G711::Ulaw)),
                None if pt == 8 => Some((Pt::new(8), G711::Alaw)),
                None => None,
            })
    }

    /// The `telephone-event` payload type at this clock rate (WhatsApp uses 8000).
    pub fn telephone_event_pt(&self, clock: u32) -> Option<Pt> {
        self.offered_pt(|m| {
            m.encoding.eq_ignore_ascii_case("telephone-event") && m.clock_rate == clock
        })
    }

    /// The `a=fmtp` parameters of a payload type.
    pub fn fmtp(&self, pt: Pt) -> Option<&str> {
        self.fmtps
            .iter()
            .find(|(p, _)| *p == pt.get())
            .map(|(_, params)| params.as_str())
    }

    /// The `a=rtpmap` of a payload type.
    pub fn rtpmap(&self, pt: u8) -> Option<&RtpMap> {
        self.rtpmaps.iter().find(|m| m.pt == pt)
    }

    /// The first SSRC the peer announced, if any.
    pub fn first_ssrc(&self) -> Option<Ssrc> {
        self.ssrcs.first().map(|(ssrc, _, _)| Ssrc::new(*ssrc))
    }

    /// A payload type that matches and is actually offered on the `m=` line (an `a=rtpmap`
    /// for a format not listed there is not an offer).
    fn offered_pt(&self, matches: impl Fn(&RtpMap) -> bool) -> Option<Pt> {
        self.formats
            .iter()
            .copied()
            .find(|pt| self.rtpmap(*pt).is_some_and(&matches))
            .map(Pt::new)
    }
}

/// One `m=` section as it appeared, in document order: enough to answer it (RFC 3264 §6: an
/// answer has as many m-lines as the offer, in the same order; those we do not carry are
/// rejected with port 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSection {
    /// `audio`, `video`, `application`, ...
    pub media: String,
    pub port: u16,
    /// The protocol token as written (`UDP/TLS/RTP/SAVPF`, `UDP/DTLS/SCTP`, ...).
    pub proto: String,
    /// The format tokens as written.
    pub formats: Vec<String>,
    pub mid: Option<String>,
    /// This is the active `m=audio` the relay carries ([`SessionDescription::audio`]).
    pub carried: bool,
}

/// Where parsed values came from, so later validation can name the line it rejects.
/// `0` where the value was absent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LineNumbers {
    /// The active `m=audio` line.
    pub audio: usize,
    /// The `a=fingerprint` chosen by [`SessionDescription::fingerprint`].
    pub fingerprint: usize,
    /// The `a=setup` chosen by [`SessionDescription::setup`].
    pub setup: usize,
    /// One entry per [`AudioMedia::crypto`] element.
    pub crypto: Vec<usize>,
}

/// A parsed session description with exactly one active audio stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    pub origin: Origin,
    pub session_name: String,
    /// Session-level `c=`.
    pub connection: Option<IpAddr>,
    pub ice_lite: bool,
    /// Session-level ICE credentials (media-level ones win, see [`Self::ice_credentials`]).
    pub ice_ufrag: Option<String>,
    pub ice_pwd: Option<String>,
    /// Session-level fingerprint and setup (media-level ones win).
    pub fingerprint: Option<Fingerprint>,
    pub setup: Option<Setup>,
    /// Mids of `a=group:BUNDLE`.
    pub bundle: Vec<String>,
    pub audio: AudioMedia,
    /// Every m-section in order, the carried audio one included.
    pub sections: Vec<MediaSection>,
    pub lines: LineNumbers,
}

impl SessionDescription {
    /// ICE ufrag and password: each from the media level if present, else the session level.
    pub fn ice_credentials(&self) -> Option<(&str, &str)> {
        let ufrag = self.audio.ice_ufrag.as_ref().or(self.ice_ufrag.as_ref())?;
        let pwd = self.audio.ice_pwd.as_ref().or(self.ice_pwd.as_ref())?;
        Some((ufrag, pwd))
    }

    /// The certificate fingerprint: media level if present, else session level.
    pub fn fingerprint(&self) -> Option<&Fingerprint> {
        self.audio
            .fingerprint
            .as_ref()
            .or(self.fingerprint.as_ref())
    }

    /// The DTLS role: media level if present, else session level.
    pub fn setup(&self) -> Option<Setup> {
        self.audio.setup.or(self.setup)
    }

    /// Where plain RTP / SDES media goes: `c=` (media, else session) and the `m=` port.
    /// `None` when there is no `c=` or it is the unspecified address (`0.0.0.0`, `::`), which
    /// SIP uses for "hold" and WebRTC as a placeholder (ICE candidates carry the real address).
    pub fn remote_rtp_addr(&self) -> Option<SocketAddr> {
        let ip = self.audio.connection.or(self.connection)?;
        if ip.is_unspecified() {
            return None;
        }
        Some(SocketAddr::new(ip, self.audio.port))
    }

    /// Whether the audio mid is in a BUNDLE group.
    pub fn audio_bundled(&self) -> bool {
        self.audio
            .mid
            .as_ref()
            .is_some_and(|mid| self.bundle.iter().any(|m| m == mid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_display_is_uppercase_colon_hex() {
        let fp = Fingerprint {
            algorithm: "sha-256".into(),
            bytes: vec![0xab, 0x01, 0xff],
        };
        assert_eq!(fp.to_string(), "sha-256 AB:01:FF");
    }

    #[test]
    fn sha256_of_is_32_bytes() {
        let fp = Fingerprint::sha256_of(b"not really a certificate");
        assert!(fp.is_sha256());
    }

    #[test]
    fn crypto_debug_hides_key() {
        let c = Crypto {
            tag: 1,
            suite: "AES_CM_128_HMAC_SHA1_80".into(),
            key_params: "inline:SECRETSECRET".into(),
            session_params: vec![],
        };
        assert!(!format!("{c:?}").contains("SECRET"));
    }

    #[test]
    fn answer_direction_mirrors_offer() {
        assert_eq!(Direction::SendOnly.answer(), Direction::RecvOnly);
        assert_eq!(Direction::RecvOnly.answer(), Direction::SendOnly);
        assert_eq!(Direction::SendRecv.answer(), Direction::SendRecv);
        assert_eq!(Direction::Inactive.answer(), Direction::Inactive);
    }
}
