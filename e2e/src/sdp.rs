//! Just enough SDP for the emulated peers: write offers/answers shaped like the real ones and
//! read back from the relay's SDP what a peer needs (ICE credentials, fingerprint, setup,
//! addresses, crypto, payload types). Tolerant: unknown lines are skipped.

use std::net::{IpAddr, SocketAddr};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use relay::srtp::SrtpProfile;

use crate::dtls::parse_fingerprint;

/// An `a=crypto` line (RFC 4568).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crypto {
    pub tag: u32,
    pub profile: SrtpProfile,
    /// key || salt
    pub key_salt: Vec<u8>,
}

impl Crypto {
    pub fn to_attribute(&self) -> String {
        format!(
            "a=crypto:{} {} inline:{}",
            self.tag,
            self.profile.sdes_name(),
            B64.encode(&self.key_salt)
        )
    }
}

/// What a peer learns from the other side's SDP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteSdp {
    pub ice_lite: bool,
    pub ufrag: Option<String>,
    pub pwd: Option<String>,
    pub fingerprint: Option<[u8; 32]>,
    /// `active`, `passive`, `actpass`.
    pub setup: Option<String>,
    /// The m= line's transport, e.g. `UDP/TLS/RTP/SAVPF`, `RTP/SAVP`, `RTP/AVP`.
    pub proto: String,
    /// c= address with the m= port.
    pub connection: Option<SocketAddr>,
    /// Host candidates (component 1, UDP).
    pub candidates: Vec<SocketAddr>,
    pub cryptos: Vec<Crypto>,
    pub opus_pt: Option<u8>,
    pub dtmf_pt: Option<u8>,
    pub rtcp_mux: bool,
    pub mid: Option<String>,
    pub ssrcs: Vec<u32>,
    /// Whether every line ended in CRLF.
    pub crlf: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("no m=audio line")]
    NoAudio,
    #[error("bad line {0:?}")]
    BadLine(String),
}

impl RemoteSdp {
    pub fn parse(text: &str) -> Result<RemoteSdp, SdpError> {
        let mut sdp = RemoteSdp {
            crlf: !text.is_empty() && text.split_inclusive('\n').all(|l| l.ends_with("\r\n")),
            ..RemoteSdp::default()
        };
        let mut c_ip: Option<IpAddr> = None;
        let mut m_port: Option<u16> = None;
        let mut seen_audio = false;
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            let bad = || SdpError::BadLine(line.to_string());
            if let Some(m) = line.strip_prefix("m=") {
                let mut f = m.split_ascii_whitespace();
                if f.next() != Some("audio") {
                    continue;
                }
                seen_audio = true;
                m_port = Some(f.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?);
                sdp.proto = f.next().ok_or_else(bad)?.to_string();
            } else if let Some(c) = line.strip_prefix("c=") {
                c_ip = c
                    .split_ascii_whitespace()
                    .nth(2)
                    .and_then(|a| a.parse().ok());
            } else if let Some(a) = line.strip_prefix("a=") {
                let (name, value) = a.split_once(':').unwrap_or((a, ""));
                match name {
                    "ice-lite" => sdp.ice_lite = true,
                    "ice-ufrag" => sdp.ufrag = Some(value.to_string()),
                    "ice-pwd" => sdp.pwd = Some(value.to_string()),
                    "fingerprint" => {
                        if let Some(fp) = parse_fingerprint(value) {
                            sdp.fingerprint = Some(fp);
                        }
                    }
                    "setup" => sdp.setup = Some(value.to_string()),
                    "rtcp-mux" => sdp.rtcp_mux = true,
                    "mid" => sdp.mid = Some(value.to_string()),
                    "candidate" => {
                        // foundation component transport priority address port typ host ...
                        let f: Vec<&str> = value.split_ascii_whitespace().collect();
                        if let [_, "1", transport, _, addr, port, ..] = f.as_slice()
                            && transport.eq_ignore_ascii_case("udp")
                            && let (Ok(ip), Ok(port)) = (addr.parse::<IpAddr>(), port.parse())
                        {
                            sdp.candidates.push(SocketAddr::new(ip, port));
                        }
                    }
                    "crypto" => {
                        if let Some(c) = parse_crypto(value) {
                            sdp.cryptos.push(c);
                        }
                    }
                    "rtpmap" => {
                        let Some((pt, codec)) = value.split_once(' ') else {
                            continue;
                        };
                        let Ok(pt) = pt.parse::<u8>() else { continue };
                        let codec = codec.to_ascii_lowercase();
                        if codec.starts_with("opus/48000") {
                            sdp.opus_pt.get_or_insert(pt);
                        } else if codec == "telephone-event/8000" {
                            sdp.dtmf_pt.get_or_insert(pt);
                        }
                    }
                    "ssrc" => {
                        if let Some(ssrc) = value
                            .split_ascii_whitespace()
                            .next()
                            .and_then(|s| s.parse().ok())
                            && !sdp.ssrcs.contains(&ssrc)
                        {
                            sdp.ssrcs.push(ssrc);
                        }
                    }
                    _ => {}
                }
            }
        }
        if !seen_audio {
            return Err(SdpError::NoAudio);
        }
        if let (Some(ip), Some(port)) = (c_ip, m_port) {
            sdp.connection = Some(SocketAddr::new(ip, port));
        }
        Ok(sdp)
    }

    /// Where to send media when there is no ICE (SDES, plain RTP).
    pub fn media_address(&self) -> Option<SocketAddr> {
        self.connection.or_else(|| self.candidates.first().copied())
    }
}

/// `1 AES_CM_128_HMAC_SHA1_80 inline:KEY[|lifetime][|MKI:len] [params]`
fn parse_crypto(value: &str) -> Option<Crypto> {
    let mut f = value.split_ascii_whitespace();
    let tag = f.next()?.parse().ok()?;
    let profile = SrtpProfile::from_sdes_name(f.next()?)?;
    let inline = f.next()?.strip_prefix("inline:")?;
    let b64 = inline.split('|').next()?;
    let key_salt = B64.decode(b64).ok()?;
    if key_salt.len() != profile.key_len() + profile.salt_len() {
        return None;
    }
    Some(Crypto {
        tag,
        profile,
        key_salt,
    })
}

/// Joins lines with CRLF, as Meta and SIP stacks send them.
pub fn crlf(lines: &[String]) -> String {
    let mut out = String::new();
    for l in lines {
        out.push_str(l);
        out.push_str("\r\n");
    }
    out
}

/// A host candidate line with a stable foundation and RFC 8445 host priority.
pub fn host_candidate(addr: SocketAddr, index: u32) -> String {
    let local_pref: u32 = 65535 - index;
    let priority = (126 << 24) | (local_pref << 8) | 255;
    let foundation = 1_000_000 + index;
    format!(
        "a=candidate:{foundation} 1 udp {priority} {} {} typ host generation 0 network-cost 50",
        addr.ip(),
        addr.port()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_webrtc_answer() {
        let text = crlf(&[
            "v=0".into(),
            "o=- 1 2 IN IP4 127.0.0.1".into(),
            "s=-".into(),
            "t=0 0".into(),
            "a=group:BUNDLE audio".into(),
            "m=audio 40000 UDP/TLS/RTP/SAVPF 111 126".into(),
            "c=IN IP4 127.0.0.1".into(),
            "a=ice-ufrag:abcd".into(),
            "a=ice-pwd:0123456789012345678901".into(),
            format!("a=fingerprint:sha-256 {}", ["AB"; 32].join(":")),
            "a=setup:active".into(),
            "a=mid:audio".into(),
            "a=rtcp-mux".into(),
            "a=rtpmap:111 opus/48000/2".into(),
            "a=rtpmap:126 telephone-event/8000".into(),
            host_candidate("127.0.0.1:40000".parse().unwrap(), 0),
            host_candidate("[::1]:40002".parse().unwrap(), 1),
            "a=ssrc:42 cname:x".into(),
        ]);
        let sdp = RemoteSdp::parse(&text).unwrap();
        assert!(sdp.crlf && sdp.rtcp_mux && !sdp.ice_lite);
        assert_eq!(sdp.ufrag.as_deref(), Some("abcd"));
        assert_eq!(sdp.fingerprint, Some([0xab; 32]));
        assert_eq!(sdp.setup.as_deref(), Some("active"));
        assert_eq!(sdp.proto, "UDP/TLS/RTP/SAVPF");
        assert_eq!(sdp.candidates.len(), 2);
        assert_eq!(sdp.connection, Some("127.0.0.1:40000".parse().unwrap()));
        assert_eq!((sdp.opus_pt, sdp.dtmf_pt), (Some(111), Some(126)));
        assert_eq!(sdp.ssrcs, vec![42]);
    }

    #[test]
    fn parses_sdes_crypto() {
        let key: Vec<u8> = (0..30).collect();
        let c = Crypto {
            tag: 1,
            profile: SrtpProfile::Aes128CmHmacSha1_80,
            key_salt: key,
        };
        let text = format!(
            "v=0\nm=audio 5000 RTP/SAVP 111\nc=IN IP4 127.0.0.1\n{}\n",
            c.to_attribute()
        );
        let sdp = RemoteSdp::parse(&text).unwrap();
        assert!(!sdp.crlf);
        assert_eq!(sdp.cryptos, vec![c]);
        assert_eq!(sdp.media_address(), Some("127.0.0.1:5000".parse().unwrap()));
    }

    #[test]
    fn rejects_sdp_without_audio() {
        assert_eq!(RemoteSdp::parse("v=0\r\n"), Err(SdpError::NoAudio));
    }
}
