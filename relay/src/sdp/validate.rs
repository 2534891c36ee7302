//! What each leg needs from the peer's SDP, checked and extracted. The parser accepts any
//! well-formed single-audio description; these functions decide whether the relay can carry
//! it on a given leg, and name the line when it cannot.

use std::fmt;
use std::net::SocketAddr;

use base64::Engine as _;

use super::error::SdpError;
use super::model::{Candidate, Direction, Fingerprint, MediaProto, SessionDescription, Setup};
use crate::codec::g711::G711;
use crate::srtp::{MasterKey, SrtpProfile};
use crate::wire::rtp::{Pt, Ssrc};

/// The clock rate of the `telephone-event` payload the relay forwards (RFC 4733 at 8 kHz).
pub const TELEPHONE_EVENT_CLOCK: u32 = 8000;

/// What the WhatsApp leg needs from Meta's SDP (the offer of a user-initiated call, or the
/// answer of a business-initiated one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhatsAppOffer {
    pub proto: MediaProto,
    pub transport: WaTransport,
    pub opus_pt: Pt,
    pub opus_fmtp: Option<String>,
    /// `telephone-event/8000`, if offered.
    pub telephone_event_pt: Option<Pt>,
    pub ptime: Option<u32>,
    pub mid: Option<String>,
    /// The audio mid is in an `a=group:BUNDLE` (our answer mirrors it).
    pub bundle: bool,
    pub rtcp_mux: bool,
    pub direction: Direction,
    /// The first `a=ssrc` Meta announced, if any.
    pub remote_ssrc: Option<Ssrc>,
}

/// How the WhatsApp leg is secured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaTransport {
    Dtls(DtlsRemote),
    Sdes(SdesRemote),
}

/// ICE + DTLS-SRTP parameters of the remote side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DtlsRemote {
    /// Meta is ICE-lite: we must be the controlling agent.
    pub ice_lite: bool,
    pub ice_ufrag: String,
    pub ice_pwd: String,
    /// UDP, component 1, IP-literal candidates (at least one).
    pub candidates: Vec<Candidate>,
    /// Always SHA-256.
    pub fingerprint: Fingerprint,
    /// The remote's `a=setup` (never `holdconn`).
    pub setup: Setup,
}

/// SDES-SRTP parameters of the remote side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdesRemote {
    /// From `c=` and the `m=` port.
    pub rtp_addr: SocketAddr,
    pub crypto: SdesCrypto,
}

/// An `a=crypto` line the relay can use, with its key decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct SdesCrypto {
    pub tag: u32,
    pub profile: SrtpProfile,
    /// `inline:…` verbatim.
    pub key_params: String,
    /// The decoded master key and salt: what the peer protects its packets with.
    pub key: MasterKey,
}

impl fmt::Debug for SdesCrypto {
    // Never print key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SdesCrypto")
            .field("tag", &self.tag)
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

/// What an internal leg (SIP media server, IVR, recorder) needs from its peer's SDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalRemote {
    pub proto: MediaProto,
    /// Where to send RTP; `None` when `c=` is `0.0.0.0`/`::` (learn it from the first packet).
    pub rtp_addr: Option<SocketAddr>,
    /// Where to send RTCP: the RTP address with rtcp-mux, else `a=rtcp`, else port + 1.
    pub rtcp_addr: Option<SocketAddr>,
    pub rtcp_mux: bool,
    /// The audio payload type: Opus's, or, when the peer has no Opus, the G.711 one `codec`
    /// names.
    pub opus_pt: Pt,
    pub opus_fmtp: Option<String>,
    /// What the audio is: Opus (forwarded untouched) or G.711 (transcoded by the relay).
    pub codec: InternalCodec,
    pub telephone_event_pt: Option<Pt>,
    pub ptime: Option<u32>,
    /// Present exactly when `proto` is SDES (`RTP/SAVP`, `RTP/SAVPF`).
    pub crypto: Option<SdesCrypto>,
    pub remote_ssrc: Option<Ssrc>,
    pub direction: Direction,
}

/// Check Meta's SDP for what a WhatsApp leg needs and extract it: either DTLS
/// (`UDP/TLS/RTP/SAVPF`, ICE credentials, a SHA-256 fingerprint, a setup role, at least one
/// UDP candidate, rtcp-mux) or SDES (`RTP/SAVP` or `RTP/SAVPF`, a usable `a=crypto`, a `c=`
/// address); and in both cases `opus/48000/2`.
pub fn validate_wa_offer(sd: &SessionDescription) -> Result<WhatsAppOffer, SdpError> {
    let audio = &sd.audio;
    let m_line = sd.lines.audio;
    let at_m = |reason: &str| SdpError::at(m_line, &m_line_text(sd), reason);

    let opus_pt = audio
        .opus_pt()
        .filter(|pt| audio.rtpmap(pt.get()).and_then(|m| m.channels) == Some(2))
        .ok_or_else(|| at_m("no opus/48000/2 payload type offered"))?;

    let transport = match audio.proto {
        MediaProto::UdpTlsRtpSavpf => WaTransport::Dtls(dtls_remote(sd)?),
        p if p.is_sdes() => {
            let rtp_addr = sd
                .remote_rtp_addr()
                .ok_or_else(|| at_m("SDES needs a c= address (not 0.0.0.0) for the stream"))?;
            let crypto = choose_crypto(sd)?;
            WaTransport::Sdes(SdesRemote { rtp_addr, crypto })
        }
        p => {
            return Err(at_m(&format!(
                "the WhatsApp leg needs UDP/TLS/RTP/SAVPF (DTLS) or RTP/SAVP (SDES), not {p}"
            )));
        }
    };

    Ok(WhatsAppOffer {
        proto: audio.proto,
        transport,
        opus_pt,
        opus_fmtp: audio.fmtp(opus_pt).map(str::to_string),
        telephone_event_pt: audio.telephone_event_pt(TELEPHONE_EVENT_CLOCK),
        ptime: audio.ptime,
        mid: audio.mid.clone(),
        bundle: sd.audio_bundled(),
        rtcp_mux: audio.rtcp_mux,
        direction: audio.direction,
        remote_ssrc: audio.first_ssrc(),
    })
}

fn dtls_remote(sd: &SessionDescription) -> Result<DtlsRemote, SdpError> {
    let m_line = sd.lines.audio;
    let at_m = |reason: &str| SdpError::at(m_line, &m_line_text(sd), reason);
    let (ufrag, pwd) = sd
        .ice_credentials()
        .ok_or_else(|| at_m("DTLS stream without a=ice-ufrag and a=ice-pwd"))?;
    let fingerprint = sd
        .fingerprint()
        .ok_or_else(|| at_m("DTLS stream without a=fingerprint"))?;
    if !fingerprint.is_sha256() {
        let no = sd.lines.fingerprint;
        return Err(SdpError::at(
            no,
            &format!("a=fingerprint:{fingerprint}"),
            format!(
                "the relay verifies sha-256 fingerprints only, found {}",
                fingerprint.algorithm
            ),
        ));
    }
    let setup = match sd.setup() {
        None => return Err(at_m("DTLS stream without a=setup")),
        Some(Setup::HoldConn) => {
            return Err(SdpError::at(
                sd.lines.setup,
                "a=setup:holdconn",
                "a=setup:holdconn: no DTLS connection to make",
            ));
        }
        Some(s) => s,
    };
    if !sd.audio.rtcp_mux {
        return Err(at_m(
            "DTLS stream without a=rtcp-mux (the relay does not run a separate RTCP component)",
        ));
    }
    if sd.audio.candidates.is_empty() {
        return Err(at_m(
            "no usable ICE candidate (need UDP, component 1, an IP address)",
        ));
    }
    Ok(DtlsRemote {
        ice_lite: sd.ice_lite,
        ice_ufrag: ufrag.to_string(),
        ice_pwd: pwd.to_string(),
        candidates: sd.audio.candidates.clone(),
        fingerprint: fingerprint.clone(),
        setup,
    })
}

/// The audio codec of an internal leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InternalCodec {
    /// Opus: forwarded between the legs untouched.
    Opus,
    /// G.711 (a media server without Opus): the relay transcodes (relay/src/call/transcode.rs).
    G711(G711),
}

/// Check an internal peer's SDP (`RTP/AVP[F]` or `RTP/SAVP[F]` with `a=crypto`) and extract
/// where to send, the payload types, and the SDES key if any. Opus is preferred (no
/// transcoding); without it the first of PCMU/PCMA the peer lists is taken and the relay
/// transcodes.
pub fn validate_internal(sd: &SessionDescription) -> Result<InternalRemote, SdpError> {
    let audio = &sd.audio;
    let m_line = sd.lines.audio;
    let at_m = |reason: &str| SdpError::at(m_line, &m_line_text(sd), reason);

    let crypto = match audio.proto {
        MediaProto::RtpAvp | MediaProto::RtpAvpf => None,
        MediaProto::RtpSavp | MediaProto::RtpSavpf => Some(choose_crypto(sd)?),
        MediaProto::UdpTlsRtpSavpf => {
            return Err(at_m(
                "internal legs use RTP/AVP or RTP/SAVP, not UDP/TLS/RTP/SAVPF",
            ));
        }
    };
    let ip = audio
        .connection
        .or(sd.connection)
        .ok_or_else(|| at_m("no c= address for the stream"))?;
    let rtp_addr = sd.remote_rtp_addr();
    let (opus_pt, codec) = match (audio.opus_pt(), audio.g711_pt()) {
        (Some(pt), _) => (pt, InternalCodec::Opus),
        (None, Some((pt, law))) => (pt, InternalCodec::G711(law)),
        (None, None) => {
            return Err(at_m(
                "no opus/48000, PCMU/8000 or PCMA/8000 payload type (the relay bridges Opus \
                 untouched or transcodes to G.711)",
            ));
        }
    };

    let rtcp_addr = match (rtp_addr, audio.rtcp_mux, audio.rtcp) {
        (None, _, _) => None,
        (Some(rtp), true, _) => Some(rtp),
        (Some(_), false, Some((port, addr))) => Some(SocketAddr::new(addr.unwrap_or(ip), port)),
        (Some(rtp), false, None) => rtp.port().checked_add(1).map(|p| SocketAddr::new(ip, p)),
    };
    Ok(InternalRemote {
        proto: audio.proto,
        rtp_addr,
        rtcp_addr,
        rtcp_mux: audio.rtcp_mux,
        opus_pt,
        opus_fmtp: match codec {
            InternalCodec::Opus => audio.fmtp(opus_pt).map(str::to_string),
            InternalCodec::G711(_) => None,
        },
        codec,
        telephone_event_pt: audio.telephone_event_pt(TELEPHONE_EVENT_CLOCK),
        ptime: audio.ptime,
        crypto,
        remote_ssrc: audio.first_ssrc(),
        direction: audio.direction,
    })
}

/// The first `a=crypto` line the relay can use, in the peer's preference order. If none is
/// usable, the error names the first line and why it was refused.
fn choose_crypto(sd: &SessionDescription) -> Result<SdesCrypto, SdpError> {
    let mut first_error = None;
    for (i, c) in sd.audio.crypto.iter().enumerate() {
        let no = sd.lines.crypto.get(i).copied().unwrap_or(0);
        match decode_crypto(c.tag, &c.suite, &c.key_params, &c.session_params) {
            Ok(found) => return Ok(found),
            Err(reason) => {
                first_error.get_or_insert_with(|| {
                    SdpError::at(
                        no,
                        &format!("a=crypto:{} {} inline:…", c.tag, c.suite),
                        reason,
                    )
                });
            }
        }
    }
    Err(first_error.unwrap_or_else(|| {
        SdpError::at(
            sd.lines.audio,
            &m_line_text(sd),
            "SDES stream (RTP/SAVP) without an a=crypto line",
        )
    }))
}

fn decode_crypto(
    tag: u32,
    suite: &str,
    key_params: &str,
    session_params: &[String],
) -> Result<SdesCrypto, String> {
    let profile = SrtpProfile::from_sdes_name(suite).ok_or_else(|| {
        format!(
            "crypto suite {suite} is not supported (AES_CM_128_HMAC_SHA1_80, AEAD_AES_128_GCM, \
             AEAD_AES_256_GCM)"
        )
    })?;
    // WSH (window size hint) is advisory; the others (UNENCRYPTED_*, KDR, FEC_*) change the
    // transform and RFC 4568 says an attribute with parameters we do not apply must be refused.
    if let Some(p) = session_params.iter().find(|p| !p.starts_with("WSH=")) {
        return Err(format!("crypto session parameter {p} is not supported"));
    }
    if key_params.contains(';') {
        return Err("several master keys in one crypto line are not supported".to_string());
    }
    let inline = key_params
        .strip_prefix("inline:")
        .ok_or("crypto key must use the inline: method")?;
    let mut parts = inline.split('|');
    let encoded = parts.next().unwrap_or("");
    // Optional lifetime (`2^31` or decimal), then optional MKI (`1:4`), which we do not do.
    for part in parts {
        if part.contains(':') {
            return Err("crypto MKI is not supported".to_string());
        }
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(encoded))
        .map_err(|_| "crypto key is not valid base64".to_string())?;
    let key_len = profile.key_len();
    let want = key_len + profile.salt_len();
    if decoded.len() != want {
        return Err(format!(
            "{suite} needs a {want}-byte key and salt, the inline key has {} bytes",
            decoded.len()
        ));
    }
    let (key, salt) = decoded.split_at(key_len);
    Ok(SdesCrypto {
        tag,
        profile,
        key_params: key_params.to_string(),
        key: MasterKey {
            profile,
            key: key.to_vec(),
            salt: salt.to_vec(),
        },
    })
}

/// The `inline:` key parameters for our own `a=crypto` line: base64 of key ‖ salt.
pub fn sdes_key_params(key: &MasterKey) -> String {
    let mut material = Vec::with_capacity(key.key.len() + key.salt.len());
    material.extend_from_slice(&key.key);
    material.extend_from_slice(&key.salt);
    format!(
        "inline:{}",
        base64::engine::general_purpose::STANDARD.encode(material)
    )
}

/// The `m=` line, rebuilt for error messages (the parsed form drops nothing that matters).
pub(super) fn m_line_text(sd: &SessionDescription) -> String {
    let formats: Vec<String> = sd.audio.formats.iter().map(u8::to_string).collect();
    format!(
        "m=audio {} {} {}",
        sd.audio.port,
        sd.audio.proto,
        formats.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdes_key_round_trip() {
        for profile in SrtpProfile::ALL {
            let key = MasterKey {
                profile,
                key: (0..profile.key_len() as u8).collect(),
                salt: (100..100 + profile.salt_len() as u8).collect(),
            };
            let params = sdes_key_params(&key);
            let c = decode_crypto(7, profile.sdes_name(), &params, &[]).unwrap();
            assert_eq!(c.key, key);
            assert_eq!(c.tag, 7);
        }
    }

    #[test]
    fn sdes_refusals() {
        let key = sdes_key_params(&MasterKey {
            profile: SrtpProfile::Aes128CmHmacSha1_80,
            key: vec![1; 16],
            salt: vec![2; 14],
        });
        let suite = "AES_CM_128_HMAC_SHA1_80";
        assert!(decode_crypto(1, suite, &key, &[]).is_ok());
        assert!(decode_crypto(1, suite, &format!("{key}|2^31"), &["WSH=64".into()]).is_ok());
        assert!(decode_crypto(1, "F8_128_HMAC_SHA1_80", &key, &[]).is_err());
        assert!(decode_crypto(1, suite, &format!("{key}|2^31|1:4"), &[]).is_err());
        assert!(decode_crypto(1, suite, &format!("{key};{key}"), &[]).is_err());
        assert!(decode_crypto(1, suite, &key, &["UNENCRYPTED_SRTP".into()]).is_err());
        assert!(decode_crypto(1, suite, "inline:!!!!", &[]).is_err());
        // Right base64, wrong suite length (AEAD_AES_256_GCM needs 44 bytes).
        assert!(decode_crypto(1, "AEAD_AES_256_GCM", &key, &[]).is_err());
    }

    #[test]
    fn sdes_crypto_debug_hides_key() {
        let key = MasterKey {
            profile: SrtpProfile::AeadAes128Gcm,
            key: vec![9; 16],
            salt: vec![9; 12],
        };
        let params = sdes_key_params(&key);
        let c = decode_crypto(1, "AEAD_AES_128_GCM", &params, &[]).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains(params.trim_start_matches("inline:")));
    }
}
