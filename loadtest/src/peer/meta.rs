//! WhatsApp's side of a call, as Meta's media endpoint behaves toward the relay (the same
//! rules as `e2e::meta::MetaCore`, which documents them):
//!
//! - Offer: `UDP/TLS/RTP/SAVPF`, `a=ice-lite`, one IPv4 host candidate, Meta-shaped ICE
//!   credentials, `a=setup:actpass`, Opus/48000/2 on PT 111 and telephone-event on 126.
//! - ICE-lite: answers authenticated Binding requests (only once the relay's SDP is known),
//!   487 to a request claiming ICE-CONTROLLED, follows the latest USE-CANDIDATE nomination.
//! - DTLS in the role the relay's answer leaves it (server when the relay answers `active`),
//!   only toward an address that passed a check; the relay's certificate must match its SDP.
//! - Then SRTP: a stamped Opus-like packet every 20 ms while media is on, an SR every 5 s.
//!
//! `Sdes` mode (WhatsApp's SDES option, and the closest call rtpengine makes): `RTP/SAVP` with
//! one `a=crypto` line, no ICE, no DTLS; SRTP keys from the two SDPs, ready once answered.
//! `Plain` mode (the raw forwarder baseline, and rtpengine plain ↔ plain) skips ICE, DTLS and
//! SRTP and sends plain RTP (`RTP/AVP`).

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use e2e::dtls::{DtlsSetup, PeerCertificate, PeerDtls};
use e2e::rtp::is_rtcp;
use e2e::sdp::{Crypto, RemoteSdp, crlf, host_candidate};
use e2e::stun::{
    ATTR_ICE_CONTROLLED, ATTR_ICE_CONTROLLING, ATTR_USE_CANDIDATE, BINDING_REQUEST, Message,
    binding_error, binding_success,
};
use relay::engine::udp::SendBatch;
use relay::srtp::{MasterKey, SessionKeys, SrtpProfile, SrtpSession, random_master_key};

use crate::peer::media::{MediaRx, MediaTx, Received};
use crate::stats::Totals;

const OPUS_PT: u8 = 111;
const DTMF_PT: u8 = 126;
/// rtc-dtls's first retransmission interval (its default is 1 s; Meta's stack is quicker).
const DTLS_RETRANSMIT: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum MetaPeerError {
    #[error("relay SDP: {0}")]
    Sdp(#[from] e2e::sdp::SdpError),
    #[error("relay SDP lacks {0}")]
    Missing(&'static str),
    #[error("relay SDP answers {got}, we offered {offered}")]
    Profile {
        offered: SrtpProfile,
        got: SrtpProfile,
    },
    #[error("SRTP keys: {0}")]
    Srtp(#[from] relay::srtp::SrtpError),
}

/// How the peer secures media.
#[derive(Clone, Debug)]
pub enum Security {
    /// DTLS-SRTP with this certificate, accepting these profiles (server) or offering them
    /// (client), in preference order.
    Dtls {
        cert: PeerCertificate,
        profiles: Vec<SrtpProfile>,
    },
    /// SDES-SRTP: `RTP/SAVP` with one `a=crypto` line for this suite, no ICE or DTLS.
    Sdes { profile: SrtpProfile },
    /// No ICE, DTLS or SRTP (the raw forwarder baseline; rtpengine plain ↔ plain).
    Plain,
}

struct Remote {
    ufrag: Option<String>,
    fingerprint: [u8; 32],
    role: DtlsSetup,
}

pub struct MetaPeer {
    fd: RawFd,
    local: SocketAddr,
    security: Security,
    ufrag: String,
    pwd: String,
    session_id: u64,
    cname: u64,
    remote: Option<Remote>,
    validated: Vec<SocketAddr>,
    target: Option<SocketAddr>,
    dtls: Option<PeerDtls>,
    srtp: Option<SrtpSession>,
    /// Our SDES key (SDES mode).
    local_key: Option<MasterKey>,
    failure: Option<String>,
    pub tx: MediaTx,
    pub rx: MediaRx,
}

impl std::fmt::Debug for MetaPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaPeer")
            .field("local", &self.local)
            .field("target", &self.target)
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

fn random_ufrag() -> String {
    // Meta's ufrags look like "abcd/efgh".
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let pick = || char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]);
    let a: String = (0..4).map(|_| pick()).collect();
    let b: String = (0..4).map(|_| pick()).collect();
    format!("{a}/{b}")
}

fn random_pwd() -> String {
    // 24 characters ending "==", like base64 of 16 bytes.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let body: String = (0..22)
        .map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]))
        .collect();
    format!("{body}==")
}

impl MetaPeer {
    pub fn new(local: SocketAddr, security: Security) -> Self {
        let local_key = match &security {
            Security::Sdes { profile } => Some(random_master_key(*profile)),
            _ => None,
        };
        MetaPeer {
            local_key,
            fd: -1,
            local,
            security,
            ufrag: random_ufrag(),
            pwd: random_pwd(),
            session_id: rand::random::<u64>() >> 2,
            cname: rand::random(),
            remote: None,
            validated: Vec::new(),
            target: None,
            dtls: None,
            srtp: None,
            failure: None,
            tx: MediaTx::new(rand::random(), OPUS_PT),
            rx: MediaRx::default(),
        }
    }

    /// The socket this peer sends from (set by the generator thread that owns it).
    pub fn attach(&mut self, fd: RawFd) {
        self.fd = fd;
    }

    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// The `connect` webhook's offer, as Meta writes it (SDES and plain: the same shape without
    /// ICE and DTLS, as e2e's `MetaCore` writes its SDES offer).
    pub fn offer_sdp(&self) -> String {
        let fingerprint = match &self.security {
            Security::Dtls { cert, .. } => cert.fingerprint_sdp(),
            Security::Sdes { .. } | Security::Plain => return self.offer_without_ice(),
        };
        let ip = self.local.ip();
        crlf(&[
            "v=0".into(),
            format!("o=- {} 2 IN IP4 {ip}", self.session_id),
            "s=-".into(),
            "t=0 0".into(),
            "a=group:BUNDLE audio".into(),
            "a=msid-semantic: WMS".into(),
            "a=ice-lite".into(),
            format!(
                "m=audio {} UDP/TLS/RTP/SAVPF {OPUS_PT} {DTMF_PT}",
                self.local.port()
            ),
            format!("c=IN IP4 {ip}"),
            host_candidate(self.local, 0),
            format!("a=ice-ufrag:{}", self.ufrag),
            format!("a=ice-pwd:{}", self.pwd),
            format!("a=fingerprint:{fingerprint}"),
            "a=setup:actpass".into(),
            "a=mid:audio".into(),
            "a=sendrecv".into(),
            "a=rtcp-mux".into(),
            format!("a=rtpmap:{OPUS_PT} opus/48000/2"),
            format!("a=rtcp-fb:{OPUS_PT} transport-cc"),
            format!(
                "a=fmtp:{OPUS_PT} maxaveragebitrate=20000;maxplaybackrate=16000;minptime=20;sprop-maxcapturerate=16000;useinbandfec=1"
            ),
            format!("a=rtpmap:{DTMF_PT} telephone-event/8000"),
            "a=ptime:20".into(),
            "a=maxptime:20".into(),
            format!("a=ssrc:{} cname:{:016x}", self.tx.ssrc, self.cname),
        ])
    }

    fn offer_without_ice(&self) -> String {
        let ip = self.local.ip();
        let (proto, crypto) = match &self.local_key {
            Some(k) => {
                let mut key_salt = k.key.clone();
                key_salt.extend_from_slice(&k.salt);
                let c = Crypto {
                    tag: 1,
                    profile: k.profile,
                    key_salt,
                };
                ("RTP/SAVP", Some(c.to_attribute()))
            }
            None => ("RTP/AVP", None),
        };
        let mut l = vec![
            "v=0".into(),
            format!("o=- {} 2 IN IP4 {ip}", self.session_id),
            "s=-".into(),
            "t=0 0".into(),
            format!("m=audio {} {proto} {OPUS_PT} {DTMF_PT}", self.local.port()),
            format!("c=IN IP4 {ip}"),
            "a=mid:audio".into(),
            "a=sendrecv".into(),
            "a=rtcp-mux".into(),
            format!("a=rtpmap:{OPUS_PT} opus/48000/2"),
            format!(
                "a=fmtp:{OPUS_PT} maxaveragebitrate=20000;maxplaybackrate=16000;minptime=20;sprop-maxcapturerate=16000;useinbandfec=1"
            ),
            format!("a=rtpmap:{DTMF_PT} telephone-event/8000"),
            "a=ptime:20".into(),
            "a=maxptime:20".into(),
            format!("a=ssrc:{} cname:{:016x}", self.tx.ssrc, self.cname),
        ];
        l.extend(crypto);
        crlf(&l)
    }

    /// SDES and plain answers: media goes to the answer's address, SRTP (SDES) is keyed now.
    fn set_answer_without_ice(
        &mut self,
        remote: &RemoteSdp,
        now: Instant,
    ) -> Result<Vec<SocketAddr>, MetaPeerError> {
        let to = remote
            .media_address()
            .ok_or(MetaPeerError::Missing("a c= address and m= port"))?;
        if let Some(local) = &self.local_key {
            let c = remote
                .cryptos
                .first()
                .ok_or(MetaPeerError::Missing("a=crypto"))?;
            if c.profile != local.profile {
                return Err(MetaPeerError::Profile {
                    offered: local.profile,
                    got: c.profile,
                });
            }
            let (key, salt) = c
                .key_salt
                .split_at_checked(c.profile.key_len())
                .ok_or(MetaPeerError::Missing("a whole SDES key"))?;
            let keys = SessionKeys {
                local: local.clone(),
                remote: MasterKey {
                    profile: c.profile,
                    key: key.to_vec(),
                    salt: salt.to_vec(),
                },
            };
            self.srtp = Some(SrtpSession::new(&keys)?);
        }
        self.target = Some(to);
        self.tx.enable_rtcp(now);
        Ok(vec![to])
    }

    /// Learns the relay's answer. Returns the relay's addresses (its candidates), from which
    /// its checks, DTLS and media will come (SDES and plain: the answer's media address).
    pub fn set_answer(
        &mut self,
        sdp: &str,
        now: Instant,
    ) -> Result<Vec<SocketAddr>, MetaPeerError> {
        let remote = RemoteSdp::parse(sdp)?;
        if !matches!(self.security, Security::Dtls { .. }) {
            return self.set_answer_without_ice(&remote, now);
        }
        let fingerprint = remote
            .fingerprint
            .ok_or(MetaPeerError::Missing("a=fingerprint (sha-256)"))?;
        if remote.pwd.is_none() {
            return Err(MetaPeerError::Missing("a=ice-pwd"));
        }
        let role = match remote.setup.as_deref() {
            Some("passive") => DtlsSetup::Client,
            _ => DtlsSetup::Server,
        };
        let mut addrs = remote.candidates.clone();
        if let Some(c) = remote.connection
            && !addrs.contains(&c)
        {
            addrs.push(c);
        }
        if addrs.is_empty() {
            return Err(MetaPeerError::Missing("a candidate or c= address"));
        }
        self.remote = Some(Remote {
            ufrag: remote.ufrag,
            fingerprint,
            role,
        });
        Ok(addrs)
    }

    /// Plain mode: send media to `to` from now on.
    pub fn set_plain_target(&mut self, to: SocketAddr) {
        self.target = Some(to);
    }

    /// Media can flow: SRTP keys are up (or plain mode has a target).
    pub fn is_ready(&self) -> bool {
        self.target.is_some() && (self.srtp.is_some() || matches!(self.security, Security::Plain))
    }

    /// Why setup failed (DTLS), if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// One datagram from `from` (the whole of `buf`), received at `now` / `now_us`.
    pub fn handle(
        &mut self,
        now: Instant,
        now_us: u64,
        from: SocketAddr,
        buf: &mut [u8],
        out: &mut SendBatch,
        totals: &mut Totals,
    ) {
        // RFC 7983 demultiplexing by first byte.
        match buf.first() {
            Some(0..=3) => self.on_stun(now, from, buf, out),
            Some(20..=63) => self.on_dtls(now, from, buf, out),
            Some(128..=191) => self.on_media(now, now_us, buf, totals),
            _ => totals.unknown_source += 1,
        }
    }

    fn on_stun(&mut self, now: Instant, from: SocketAddr, data: &[u8], out: &mut SendBatch) {
        let Ok(msg) = Message::parse(data) else {
            return;
        };
        // A lite agent sends no requests; before the answer is known, Meta ignores checks.
        if msg.msg_type != BINDING_REQUEST {
            return;
        }
        let Some(remote) = &self.remote else { return };
        let user_ok = msg.username().is_some_and(|u| {
            u.split_once(':').is_some_and(|(ours, theirs)| {
                ours == self.ufrag && remote.ufrag.as_deref().is_none_or(|r| r == theirs)
            })
        });
        if !user_ok
            || !msg.check_integrity(self.pwd.as_bytes())
            || msg.check_fingerprint() == Some(false)
        {
            return;
        }
        if msg.has(ATTR_ICE_CONTROLLED) && !msg.has(ATTR_ICE_CONTROLLING) {
            let resp = binding_error(msg.transaction_id, 487, "Role Conflict", &self.pwd);
            out.push(self.fd, from, &resp);
            return;
        }
        out.push(
            self.fd,
            from,
            &binding_success(msg.transaction_id, from, &self.pwd),
        );
        if !self.validated.contains(&from) {
            self.validated.push(from);
        }
        if msg.has(ATTR_USE_CANDIDATE) {
            self.target = Some(from);
            if remote.role == DtlsSetup::Client && self.dtls.is_none() {
                self.start_dtls(now, from, out);
            }
        }
    }

    fn start_dtls(&mut self, now: Instant, to: SocketAddr, out: &mut SendBatch) {
        let (Security::Dtls { cert, profiles }, Some(remote)) = (&self.security, &self.remote)
        else {
            return;
        };
        match PeerDtls::new(
            cert,
            remote.role,
            profiles,
            remote.fingerprint,
            self.local,
            to,
            DTLS_RETRANSMIT,
        ) {
            Ok(mut d) => {
                d.start(now);
                self.dtls = Some(d);
                self.after_dtls(now, out);
            }
            Err(e) => self.failure = Some(e.to_string()),
        }
    }

    fn on_dtls(&mut self, now: Instant, from: SocketAddr, data: &[u8], out: &mut SendBatch) {
        let server = self
            .remote
            .as_ref()
            .is_some_and(|r| r.role == DtlsSetup::Server);
        if self.dtls.is_none() && server && self.validated.contains(&from) {
            self.start_dtls(now, from, out);
        }
        if let Some(d) = self.dtls.as_mut()
            && d.remote() == from
        {
            d.handle(now, data);
            self.after_dtls(now, out);
        }
    }

    fn after_dtls(&mut self, now: Instant, out: &mut SendBatch) {
        let Some(d) = self.dtls.as_mut() else { return };
        let to = d.remote();
        while let Some(p) = d.poll_transmit() {
            out.push(self.fd, to, &p);
        }
        if let Some(why) = d.failure() {
            self.failure.get_or_insert_with(|| why.to_string());
        }
        if self.srtp.is_none()
            && let Some(keys) = d.keys()
        {
            match SrtpSession::new(keys) {
                Ok(s) => {
                    self.srtp = Some(s);
                    self.target.get_or_insert(to);
                    self.tx.enable_rtcp(now);
                }
                Err(e) => self.failure = Some(format!("SRTP keys: {e}")),
            }
        }
    }

    /// When the DTLS driver wants [`Self::poll_dtls`] called.
    pub fn dtls_timeout(&self) -> Option<Instant> {
        self.dtls.as_ref().and_then(PeerDtls::poll_timeout)
    }

    /// DTLS retransmissions due at `now`.
    pub fn poll_dtls(&mut self, now: Instant, out: &mut SendBatch) {
        if let Some(d) = self.dtls.as_mut()
            && d.poll_timeout().is_some_and(|t| now >= t)
        {
            d.handle_timeout(now);
            self.after_dtls(now, out);
        }
    }

    fn on_media(&mut self, now: Instant, now_us: u64, buf: &mut [u8], totals: &mut Totals) {
        let len = match self.srtp.as_mut() {
            None if matches!(self.security, Security::Plain) => buf.len(),
            None => {
                totals.srtp_errors += 1;
                return;
            }
            Some(s) if is_rtcp(buf) => {
                match s.rx.unprotect_rtcp(buf) {
                    Ok(n) => {
                        totals.rtcp_received += 1;
                        self.tx.echo.note(&buf[..n.min(buf.len())], now);
                    }
                    Err(_) => totals.srtp_errors += 1,
                }
                return;
            }
            Some(s) => match s.rx.unprotect_rtp(buf) {
                Ok(n) => n,
                Err(_) => {
                    totals.srtp_errors += 1;
                    return;
                }
            },
        };
        let Some(packet) = buf.get(..len) else { return };
        if is_rtcp(packet) {
            totals.rtcp_received += 1;
            self.tx.echo.note(packet, now);
            return;
        }
        match self.rx.on_rtp(packet, now, now_us, &mut totals.down) {
            Received::Stamped => {}
            Received::Unstamped => totals.fill_received += 1,
            Received::Malformed => totals.unknown_source += 1,
        }
    }

    /// One 20 ms tick: the next audio packet (if `audio`) and a sender report when due.
    /// `scratch` must hold an SRTP packet (2048 bytes is plenty).
    pub fn tick(
        &mut self,
        now: Instant,
        unix_us: u64,
        audio: bool,
        scratch: &mut [u8],
        out: &mut SendBatch,
        totals: &mut Totals,
    ) {
        if !self.is_ready() {
            return;
        }
        let Some(to) = self.target else { return };
        if audio {
            let n = self.tx.next_packet(scratch, unix_us);
            let n = match self.srtp.as_mut() {
                Some(s) => s.tx.protect_rtp(scratch, n).unwrap_or(0),
                None => n,
            };
            if let Some(p) = scratch.get(..n).filter(|p| !p.is_empty()) {
                out.push(self.fd, to, p);
                totals.up.sent += 1;
            }
        }
        if let Some(sr) = self.tx.sender_report_due(now)
            && let Some(dst) = scratch.get_mut(..sr.len())
        {
            dst.copy_from_slice(&sr);
            let n = match self.srtp.as_mut() {
                Some(s) => s.tx.protect_rtcp(scratch, sr.len()).unwrap_or(0),
                None => sr.len(),
            };
            if let Some(p) = scratch.get(..n).filter(|p| !p.is_empty()) {
                out.push(self.fd, to, p);
                totals.rtcp_sent += 1;
            }
        }
    }
}
