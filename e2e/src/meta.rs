//! `MetaPeer`: behaves like Meta's WhatsApp media endpoint, as far as the relay can observe.
//!
//! - ICE-lite: never sends a check; answers Binding requests whose USERNAME is
//!   `ourufrag:theirufrag` and whose MESSAGE-INTEGRITY uses our password, from the socket that
//!   received them, with XOR-MAPPED-ADDRESS + MESSAGE-INTEGRITY + FINGERPRINT. A request that
//!   claims ICE-CONTROLLED gets 487 Role Conflict (a lite agent is always controlled). Checks
//!   are ignored until the relay's SDP has been set, as Meta's only converge after it processed
//!   the answer.
//! - The nominated address is the source of the latest USE-CANDIDATE request; DTLS runs toward
//!   it (as client), or answers a ClientHello from a validated address (as server). The relay's
//!   certificate must match the fingerprint in its SDP.
//! - Then SRTP/SRTCP: Opus on PT 111 every 20 ms when told, RFC 4733 DTMF, an SR every ~5 s;
//!   every received packet is recorded.
//! - SDES mode: RTP/SAVP with `a=crypto`, no ICE, no DTLS.
//! - Moving (opt-in, [`MetaConfig::spare_v4`]): [`MetaHandle::move_address`] switches the IPv4
//!   side to a second socket mid-call (a network change) and sends authenticated checks from
//!   it; the old socket goes deaf. Assumption, written down because Meta documents nothing
//!   here: a lite agent sends no checks in RFC 8445, and Meta's side facing us is a media
//!   server that does not roam (the consumer's Wi-Fi → mobile change happens behind it), but
//!   with no ICE restart and no renegotiation (reference facts) the only way an ICE endpoint
//!   can announce a new address is an authenticated Binding request from it. That is what a
//!   full agent does (RFC 8445 §7.3.1.3-4) and what the relay must handle safely either way.
//!
//! [`MetaCore`] is the sans-IO core (the load test can drive many of them on its own sockets);
//! [`MetaPeer::spawn`] runs one on loopback sockets in a thread.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use relay::srtp::{MasterKey, SessionKeys, SrtpProfile};

use crate::dtls::{DtlsSetup, PeerCertificate, PeerDtls};
use crate::media::{MediaSender, MediaStats, ReceivedRtcp, ReceivedRtp, Recorder};
use crate::rtp::{is_rtcp, parse_rtp, rtcp_packet_types, unix_micros};
use crate::runner::{MediaPeer, PeerCore, PeerHandle, Runner};
use crate::sdp::{Crypto, RemoteSdp, crlf, host_candidate};
use crate::srtp::SrtpSession;
use crate::stun::{
    ATTR_ICE_CONTROLLED, ATTR_ICE_CONTROLLING, ATTR_USE_CANDIDATE, BINDING_REQUEST, Message,
    binding_error, binding_success,
};

/// Which of the peer's two sockets.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn index(self) -> usize {
        match self {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }
}

#[derive(Clone, Debug)]
pub struct MetaConfig {
    /// Meta's DTLS role when it answers (business-initiated) or when the relay answers
    /// `actpass`. When Meta offers and the relay answers `active`/`passive`, that decides.
    pub dtls_setup: DtlsSetup,
    /// SRTP profiles offered (as DTLS client) or accepted (as server), in preference order.
    pub srtp_profiles: Vec<SrtpProfile>,
    /// SDES mode (RTP/SAVP + a=crypto with this suite, no ICE/DTLS).
    pub sdes: Option<SrtpProfile>,
    /// Also bind `::1` and offer an IPv6 host candidate (skipped if binding fails).
    pub ipv6: bool,
    pub opus_pt: u8,
    pub dtmf_pt: u8,
    /// ICE credentials; random Meta-shaped ones (ufrag with '/', pwd ending "==") if `None`.
    pub ufrag: Option<String>,
    pub pwd: Option<String>,
    pub ssrc: Option<u32>,
    pub rtcp_interval: Duration,
    /// rtc-dtls first retransmission interval.
    pub dtls_retransmit: Duration,
    /// Hold our audio until the first RTP arrives (WhatsApp clients wait for the business's
    /// maiden packet).
    pub wait_for_media: bool,
    /// Answer checks even before the relay's SDP is known (real Meta does not).
    pub answer_checks_before_sdp: bool,
    /// Bind a second IPv4 socket, unannounced, for [`MetaHandle::move_address`].
    pub spare_v4: bool,
}

impl Default for MetaConfig {
    fn default() -> Self {
        MetaConfig {
            dtls_setup: DtlsSetup::Server,
            srtp_profiles: vec![
                SrtpProfile::AeadAes128Gcm,
                SrtpProfile::Aes128CmHmacSha1_80,
                SrtpProfile::AeadAes256Gcm,
            ],
            sdes: None,
            ipv6: true,
            opus_pt: 111,
            dtmf_pt: 126,
            ufrag: None,
            pwd: None,
            ssrc: None,
            rtcp_interval: Duration::from_secs(5),
            dtls_retransmit: Duration::from_secs(1),
            wait_for_media: false,
            answer_checks_before_sdp: false,
            spare_v4: false,
        }
    }
}

impl MetaConfig {
    /// Meta as DTLS client (it sends the ClientHello).
    pub fn dtls_client(mut self) -> Self {
        self.dtls_setup = DtlsSetup::Client;
        self
    }
    /// Meta as DTLS server (the user-initiated case: the relay answers `active`).
    pub fn dtls_server(mut self) -> Self {
        self.dtls_setup = DtlsSetup::Server;
        self
    }
    pub fn profiles(mut self, profiles: &[SrtpProfile]) -> Self {
        self.srtp_profiles = profiles.to_vec();
        self
    }
    pub fn sdes(mut self, profile: SrtpProfile) -> Self {
        self.sdes = Some(profile);
        self
    }
    pub fn ipv4_only(mut self) -> Self {
        self.ipv6 = false;
        self
    }
    pub fn wait_for_media(mut self) -> Self {
        self.wait_for_media = true;
        self
    }
    /// Able to move to a new IPv4 address mid-call.
    pub fn spare_v4(mut self) -> Self {
        self.spare_v4 = true;
        self
    }
}

/// Checks a moved peer sends from its new address until one is answered.
const MOVE_CHECK_EVERY: Duration = Duration::from_millis(100);
const MOVE_CHECKS_MAX: u32 = 50;

#[derive(Clone, Debug)]
struct MoveCheck {
    tid: [u8; 12],
    to: SocketAddr,
    next_send: Instant,
    sends_left: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("io: {0}")]
    Io(#[from] io::Error),
    #[error("sdp: {0}")]
    Sdp(#[from] crate::sdp::SdpError),
    #[error("dtls: {0}")]
    Dtls(#[from] crate::dtls::PeerDtlsError),
    #[error("srtp: {0}")]
    Srtp(#[from] crate::srtp::SrtpError),
    #[error("remote SDP lacks {0}")]
    Missing(&'static str),
}

/// Counters and milestones for assertions.
#[derive(Clone, Debug, Default)]
pub struct MetaStats {
    pub binding_requests: u64,
    pub binding_responses: u64,
    pub stun_auth_failures: u64,
    /// Checks ignored because the relay's SDP was not set yet.
    pub stun_before_remote_sdp: u64,
    pub role_conflicts: u64,
    /// Sources of authenticated checks.
    pub validated: Vec<SocketAddr>,
    pub nominated: Option<SocketAddr>,
    pub nominated_at: Option<Instant>,
    pub dtls_role: Option<DtlsSetup>,
    pub dtls_datagrams_received: u64,
    /// DTLS from an address that never passed a check (dropped).
    pub dtls_dropped: u64,
    pub dtls_connected_at: Option<Instant>,
    pub dtls_failure: Option<String>,
    pub srtp_profile: Option<SrtpProfile>,
    pub media: MediaStats,
    /// After [`MetaCore::move_address`]: checks sent from the new address, when one was
    /// answered, and datagrams that still reached the old (abandoned) socket.
    pub move_checks_sent: u64,
    pub move_answered_at: Option<Instant>,
    pub ignored_after_move: u64,
}

/// The sans-IO Meta endpoint.
pub struct MetaCore {
    cfg: MetaConfig,
    local_v4: SocketAddr,
    local_v6: Option<SocketAddr>,
    ufrag: String,
    pwd: String,
    ssrc: u32,
    cname: String,
    session_id: u64,
    cert: PeerCertificate,
    local_crypto: Option<Crypto>,
    remote: Option<RemoteSdp>,
    role: DtlsSetup,
    dtls: Option<PeerDtls>,
    dtls_family: Family,
    srtp: Option<SrtpSession>,
    target: Option<(Family, SocketAddr)>,
    audio_requested: bool,
    sender: MediaSender,
    recorder: Recorder,
    stats: MetaStats,
    out: VecDeque<(usize, SocketAddr, Vec<u8>)>,
    /// The unannounced second IPv4 socket (runner index, address), and whether IPv4 moved
    /// to it.
    spare_v4: Option<(usize, SocketAddr)>,
    moved: bool,
    move_check: Option<MoveCheck>,
}

impl std::fmt::Debug for MetaCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaCore")
            .field("local_v4", &self.local_v4)
            .field("local_v6", &self.local_v6)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

fn random_ufrag() -> String {
    // Meta's ufrags contain '/'; base64 alphabet, 4 + '/' + 4.
    let b = B64
        .encode(rand::random::<[u8; 6]>())
        .replace(['+', '/'], "x");
    format!("{}/{}", &b[..4], &b[4..8])
}

fn random_pwd() -> String {
    // 16 random bytes in base64: 24 characters ending "==", like Meta's.
    B64.encode(rand::random::<[u8; 16]>())
}

fn random_crypto(profile: SrtpProfile, tag: u32) -> Crypto {
    let len = profile.key_len() + profile.salt_len();
    Crypto {
        tag,
        profile,
        key_salt: (0..len).map(|_| rand::random()).collect(),
    }
}

fn split_crypto(c: &Crypto) -> MasterKey {
    let k = c.profile.key_len();
    MasterKey {
        profile: c.profile,
        key: c.key_salt.get(..k).unwrap_or_default().to_vec(),
        salt: c.key_salt.get(k..).unwrap_or_default().to_vec(),
    }
}

impl MetaCore {
    pub fn new(
        cfg: MetaConfig,
        local_v4: SocketAddr,
        local_v6: Option<SocketAddr>,
    ) -> Result<Self, MetaError> {
        let ssrc = cfg.ssrc.unwrap_or_else(rand::random);
        let sender = MediaSender::new(ssrc, cfg.opus_pt, cfg.dtmf_pt, cfg.rtcp_interval);
        let local_crypto = cfg.sdes.map(|p| random_crypto(p, 1));
        Ok(MetaCore {
            ufrag: cfg.ufrag.clone().unwrap_or_else(random_ufrag),
            pwd: cfg.pwd.clone().unwrap_or_else(random_pwd),
            ssrc,
            cname: B64.encode(rand::random::<[u8; 12]>()),
            session_id: rand::random::<u64>() >> 2,
            cert: PeerCertificate::generate()?,
            local_crypto,
            remote: None,
            role: cfg.dtls_setup,
            dtls: None,
            dtls_family: Family::V4,
            srtp: None,
            target: None,
            audio_requested: false,
            sender,
            recorder: Recorder::default(),
            stats: MetaStats::default(),
            out: VecDeque::new(),
            spare_v4: None,
            moved: false,
            move_check: None,
            cfg,
            local_v4,
            local_v6,
        })
    }

    pub fn ufrag(&self) -> &str {
        &self.ufrag
    }
    pub fn pwd(&self) -> &str {
        &self.pwd
    }
    pub fn fingerprint(&self) -> [u8; 32] {
        self.cert.fingerprint()
    }
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }
    pub fn local_addrs(&self) -> (SocketAddr, Option<SocketAddr>) {
        (self.local_v4, self.local_v6)
    }

    fn sdp_lines(&self, setup: &str, opus_pt: u8, dtmf_pt: u8, crypto: Option<&Crypto>) -> String {
        let sdes = crypto.is_some();
        let proto = if sdes {
            "RTP/SAVP"
        } else {
            "UDP/TLS/RTP/SAVPF"
        };
        let mut l: Vec<String> = vec![
            "v=0".into(),
            format!("o=- {} 2 IN IP4 {}", self.session_id, self.local_v4.ip()),
            "s=-".into(),
            "t=0 0".into(),
        ];
        if !sdes {
            l.push("a=group:BUNDLE audio".into());
            l.push("a=msid-semantic: WMS".into());
            l.push("a=ice-lite".into());
        }
        l.push(format!(
            "m=audio {} {proto} {opus_pt} {dtmf_pt}",
            self.local_v4.port()
        ));
        l.push(format!("c=IN IP4 {}", self.local_v4.ip()));
        if !sdes {
            l.push(host_candidate(self.local_v4, 0));
            if let Some(v6) = self.local_v6 {
                l.push(host_candidate(v6, 1));
            }
            l.push(format!("a=ice-ufrag:{}", self.ufrag));
            l.push(format!("a=ice-pwd:{}", self.pwd));
            l.push(format!("a=fingerprint:{}", self.cert.fingerprint_sdp()));
            l.push(format!("a=setup:{setup}"));
        }
        l.push("a=mid:audio".into());
        l.push("a=sendrecv".into());
        l.push("a=rtcp-mux".into());
        l.push(format!("a=rtpmap:{opus_pt} opus/48000/2"));
        l.push(format!("a=rtcp-fb:{opus_pt} transport-cc"));
        l.push(format!(
            "a=fmtp:{opus_pt} maxaveragebitrate=20000;maxplaybackrate=16000;minptime=20;sprop-maxcapturerate=16000;useinbandfec=1"
        ));
        l.push(format!("a=rtpmap:{dtmf_pt} telephone-event/8000"));
        l.push("a=ptime:20".into());
        l.push("a=maxptime:20".into());
        if let Some(c) = crypto {
            l.push(c.to_attribute());
        }
        l.push(format!("a=ssrc:{} cname:{}", self.ssrc, self.cname));
        crlf(&l)
    }

    /// The offer of a user-initiated call (Meta's `connect` webhook).
    pub fn offer_sdp(&self) -> String {
        self.sdp_lines(
            "actpass",
            self.cfg.opus_pt,
            self.cfg.dtmf_pt,
            self.local_crypto.as_ref(),
        )
    }

    /// Meta's answer to the relay's offer (business-initiated). Also learns the relay's SDP.
    pub fn answer_sdp(&mut self, relay_offer: &str, now: Instant) -> Result<String, MetaError> {
        let remote = RemoteSdp::parse(relay_offer)?;
        let opus_pt = remote.opus_pt.unwrap_or(self.cfg.opus_pt);
        let dtmf_pt = remote.dtmf_pt.unwrap_or(self.cfg.dtmf_pt);
        self.sender.opus_pt = opus_pt;
        self.sender.dtmf_pt = dtmf_pt;
        if let Some(ours) = self.local_crypto.as_mut() {
            // Answer with the tag of the offered line we accept (RFC 4568 §5.1.2).
            let theirs = remote
                .cryptos
                .iter()
                .find(|c| c.profile == ours.profile)
                .ok_or(MetaError::Missing("an a=crypto line with our suite"))?;
            ours.tag = theirs.tag;
        }
        self.role = self.cfg.dtls_setup;
        self.learn_remote(remote, now)?;
        let setup = match self.role {
            DtlsSetup::Client => "active",
            DtlsSetup::Server => "passive",
        };
        Ok(self.sdp_lines(setup, opus_pt, dtmf_pt, self.local_crypto.as_ref()))
    }

    /// Learns the relay's answer to our offer (user-initiated).
    pub fn set_remote_sdp(&mut self, relay_sdp: &str, now: Instant) -> Result<(), MetaError> {
        let remote = RemoteSdp::parse(relay_sdp)?;
        self.role = match remote.setup.as_deref() {
            Some("active") => DtlsSetup::Server,
            Some("passive") => DtlsSetup::Client,
            _ => self.cfg.dtls_setup,
        };
        self.learn_remote(remote, now)
    }

    fn learn_remote(&mut self, remote: RemoteSdp, now: Instant) -> Result<(), MetaError> {
        if let Some(ours) = &self.local_crypto {
            let theirs = remote
                .cryptos
                .iter()
                .find(|c| c.profile == ours.profile)
                .ok_or(MetaError::Missing("an a=crypto line with our suite"))?;
            let keys = SessionKeys {
                local: split_crypto(ours),
                remote: split_crypto(theirs),
            };
            self.srtp = Some(SrtpSession::new(&keys)?);
            self.stats.srtp_profile = Some(ours.profile);
            let to = remote
                .media_address()
                .ok_or(MetaError::Missing("a media address"))?;
            let family = if to.is_ipv4() { Family::V4 } else { Family::V6 };
            self.target = Some((family, to));
            self.sender.enable_rtcp(now);
        } else {
            if remote.fingerprint.is_none() {
                return Err(MetaError::Missing("a=fingerprint (sha-256)"));
            }
            if remote.pwd.is_none() {
                return Err(MetaError::Missing("a=ice-pwd"));
            }
            self.stats.dtls_role = Some(self.role);
        }
        self.remote = Some(remote);
        Ok(())
    }

    fn push(&mut self, family: Family, to: SocketAddr, data: Vec<u8>) {
        let socket = match (family, self.spare_v4) {
            (Family::V4, Some((i, _))) if self.moved => i,
            _ => family.index(),
        };
        self.out.push_back((socket, to, data));
    }

    /// Registers the second IPv4 socket (runner index `socket`) used by [`Self::move_address`].
    pub fn set_spare_v4(&mut self, socket: usize, addr: SocketAddr) {
        self.spare_v4 = Some((socket, addr));
    }

    /// The IPv4 address in use: the spare one after a move.
    pub fn current_v4(&self) -> SocketAddr {
        match self.spare_v4 {
            Some((_, a)) if self.moved => a,
            _ => self.local_v4,
        }
    }

    /// A network change: IPv4 traffic moves to the spare socket, the old one goes deaf, and
    /// an authenticated check (ICE-CONTROLLED, our peer-reflexive priority, the relay's
    /// password) goes from the new address to where our IPv4 media went, every 100 ms until
    /// answered. Returns `false` without a spare socket or an IPv4 path to move.
    pub fn move_address(&mut self, now: Instant) -> bool {
        let to = match self.target {
            Some((Family::V4, to)) => to,
            _ => return false,
        };
        if self.spare_v4.is_none() || self.moved {
            return false;
        }
        self.moved = true;
        self.move_check = Some(MoveCheck {
            tid: rand::random(),
            to,
            next_send: now,
            sends_left: MOVE_CHECKS_MAX,
        });
        self.send_move_check(now);
        true
    }

    fn send_move_check(&mut self, now: Instant) {
        let Some(remote) = self.remote.as_ref() else {
            return;
        };
        let (Some(ufrag), Some(pwd)) = (remote.ufrag.clone(), remote.pwd.clone()) else {
            return;
        };
        let Some(check) = self.move_check.as_mut() else {
            return;
        };
        if now < check.next_send || check.sends_left == 0 {
            return;
        }
        check.sends_left -= 1;
        check.next_send = now + MOVE_CHECK_EVERY;
        let (tid, to) = (check.tid, check.to);
        // RFC 8445 §5.1.2.1 peer-reflexive priority: type preference 110.
        let priority: u32 = (110 << 24) | (65535 << 8) | 255;
        let req = crate::stun::MessageWriter::new(BINDING_REQUEST, tid)
            .attr(
                crate::stun::ATTR_USERNAME,
                format!("{ufrag}:{}", self.ufrag).as_bytes(),
            )
            .attr(crate::stun::ATTR_PRIORITY, &priority.to_be_bytes())
            .attr(ATTR_ICE_CONTROLLED, &rand::random::<u64>().to_be_bytes())
            .message_integrity(pwd.as_bytes())
            .fingerprint()
            .finish();
        self.stats.move_checks_sent += 1;
        self.push(Family::V4, to, req);
    }

    fn on_stun(&mut self, now: Instant, family: Family, from: SocketAddr, data: &[u8]) {
        let Ok(msg) = Message::parse(data) else {
            return;
        };
        // A lite agent reads no responses, except to the checks it sent after moving.
        if msg.msg_type == crate::stun::BINDING_SUCCESS
            && let Some(check) = self.move_check.as_ref()
            && msg.transaction_id == check.tid
            && let Some(pwd) = self.remote.as_ref().and_then(|r| r.pwd.clone())
            && msg.check_integrity(pwd.as_bytes())
        {
            self.move_check = None;
            self.stats.move_answered_at = Some(now);
            return;
        }
        if msg.msg_type != BINDING_REQUEST || self.local_crypto.is_some() {
            return;
        }
        self.stats.binding_requests += 1;
        let remote_ufrag = self.remote.as_ref().and_then(|r| r.ufrag.clone());
        if self.remote.is_none() && !self.cfg.answer_checks_before_sdp {
            self.stats.stun_before_remote_sdp += 1;
            return;
        }
        let user_ok = msg.username().is_some_and(|u| {
            u.split_once(':').is_some_and(|(ours, theirs)| {
                ours == self.ufrag && remote_ufrag.as_deref().is_none_or(|r| r == theirs)
            })
        });
        if !user_ok
            || !msg.check_integrity(self.pwd.as_bytes())
            || msg.check_fingerprint() == Some(false)
        {
            self.stats.stun_auth_failures += 1;
            return;
        }
        if msg.has(ATTR_ICE_CONTROLLED) && !msg.has(ATTR_ICE_CONTROLLING) {
            self.stats.role_conflicts += 1;
            let resp = binding_error(msg.transaction_id, 487, "Role Conflict", &self.pwd);
            self.push(family, from, resp);
            return;
        }
        let resp = binding_success(msg.transaction_id, from, &self.pwd);
        self.push(family, from, resp);
        self.stats.binding_responses += 1;
        if !self.stats.validated.contains(&from) {
            self.stats.validated.push(from);
        }
        // A lite agent follows the controlling side's latest nomination (RFC 8445 §8.2
        // leaves the choice among nominated pairs to it); the relay re-nominates its final
        // pair, so both ends converge.
        if msg.has(ATTR_USE_CANDIDATE) {
            if self.stats.nominated.is_none() {
                self.stats.nominated_at = Some(now);
            }
            self.stats.nominated = Some(from);
            self.target = Some((family, from));
            if self.role == DtlsSetup::Client && self.dtls.is_none() {
                self.start_dtls(now, family, from);
            }
        }
    }

    fn start_dtls(&mut self, now: Instant, family: Family, remote: SocketAddr) {
        let Some(expected) = self.remote.as_ref().and_then(|r| r.fingerprint) else {
            return;
        };
        let local = match family {
            Family::V4 => self.local_v4,
            Family::V6 => self.local_v6.unwrap_or(self.local_v4),
        };
        match PeerDtls::new(
            &self.cert,
            self.role,
            &self.cfg.srtp_profiles,
            expected,
            local,
            remote,
            self.cfg.dtls_retransmit,
        ) {
            Ok(mut d) => {
                d.start(now);
                self.dtls = Some(d);
                self.dtls_family = family;
                self.after_dtls(now);
            }
            Err(e) => self.stats.dtls_failure = Some(e.to_string()),
        }
    }

    fn on_dtls(&mut self, now: Instant, family: Family, from: SocketAddr, data: &[u8]) {
        self.stats.dtls_datagrams_received += 1;
        if self.local_crypto.is_some() {
            self.stats.dtls_dropped += 1;
            return;
        }
        if self.dtls.is_none()
            && self.role == DtlsSetup::Server
            && self.stats.validated.contains(&from)
        {
            self.start_dtls(now, family, from);
        }
        match self.dtls.as_mut() {
            Some(d) if d.remote() == from => {
                d.handle(now, data);
                self.after_dtls(now);
            }
            _ => self.stats.dtls_dropped += 1,
        }
    }

    fn after_dtls(&mut self, now: Instant) {
        let Some(d) = self.dtls.as_mut() else { return };
        let mut sends = Vec::new();
        while let Some(p) = d.poll_transmit() {
            sends.push(p);
        }
        let to = d.remote();
        let keys = d.keys().cloned();
        let failure = d.failure().map(str::to_string);
        for p in sends {
            self.push(self.dtls_family, to, p);
        }
        if let Some(why) = failure {
            self.stats.dtls_failure.get_or_insert(why);
        }
        if let (Some(keys), None) = (keys, self.srtp.as_ref()) {
            match SrtpSession::new(&keys) {
                Ok(s) => {
                    self.stats.srtp_profile = Some(s.profile());
                    self.srtp = Some(s);
                    self.stats.dtls_connected_at = Some(now);
                    self.target.get_or_insert((self.dtls_family, to));
                    self.sender.enable_rtcp(now);
                }
                Err(e) => self.stats.dtls_failure = Some(e.to_string()),
            }
        }
    }

    fn on_media(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let Some(srtp) = self.srtp.as_mut() else {
            self.stats.media.media_dropped += 1;
            return;
        };
        if is_rtcp(data) {
            match srtp.unprotect_rtcp(data) {
                Ok(plain) => {
                    self.stats.media.rtcp_received += 1;
                    self.sender.note_rtcp(&plain, now);
                    self.recorder.rtcp.push(ReceivedRtcp {
                        at: now,
                        from,
                        types: rtcp_packet_types(&plain),
                    });
                }
                Err(_) => self.stats.media.srtp_auth_failures += 1,
            }
            return;
        }
        match srtp.unprotect_rtp(data) {
            Ok(plain) => {
                let Some((header, payload)) = parse_rtp(&plain) else {
                    self.stats.media.media_dropped += 1;
                    return;
                };
                self.stats.media.rtp_received += 1;
                self.stats.media.first_packet_at.get_or_insert(now);
                self.recorder.rtp.push(ReceivedRtp {
                    at: now,
                    at_unix_us: unix_micros(),
                    from,
                    header,
                    payload: payload.to_vec(),
                });
                if self.audio_requested {
                    self.audio_requested = false;
                    self.sender.start_audio(now);
                }
            }
            Err(_) => self.stats.media.srtp_auth_failures += 1,
        }
    }

    fn send_plain(&mut self, now: Instant, packet: &[u8], is_dtmf: bool) -> bool {
        let (Some(srtp), Some((family, to))) = (self.srtp.as_mut(), self.target) else {
            return false;
        };
        let rtcp = is_rtcp(packet);
        let protected = if rtcp {
            srtp.protect_rtcp(packet)
        } else {
            srtp.protect_rtp(packet)
        };
        let Ok(protected) = protected else {
            return false;
        };
        let m = &mut self.stats.media;
        if rtcp {
            m.rtcp_sent += 1;
        } else {
            m.rtp_sent += 1;
            m.first_sent_at.get_or_insert(now);
            if is_dtmf {
                m.dtmf_sent += 1;
            }
        }
        self.push(family, to, protected);
        true
    }

    fn media_ready(&self) -> bool {
        self.srtp.is_some() && self.target.is_some()
    }

    /// Starts 20 ms Opus (or arms it for the first received packet with `wait_for_media`).
    pub fn start_audio(&mut self, now: Instant) {
        if self.cfg.wait_for_media && self.stats.media.rtp_received == 0 {
            self.audio_requested = true;
        } else {
            self.sender.start_audio(now);
        }
    }

    /// Send these real Opus frames (in a loop) instead of stamped payloads.
    pub fn use_audio_frames(&mut self, frames: std::sync::Arc<Vec<Vec<u8>>>) {
        self.sender.use_frames(frames);
    }

    pub fn stop_audio(&mut self) {
        self.audio_requested = false;
        self.sender.stop_audio();
    }

    /// One Opus packet now with this payload; `false` if SRTP is not up yet.
    pub fn send_opus(&mut self, now: Instant, payload: &[u8]) -> bool {
        if !self.media_ready() {
            return false;
        }
        let p = self.sender.opus_packet(payload);
        self.send_plain(now, &p, false)
    }

    /// Queues an RFC 4733 event (0-9, 10 = '*', 11 = '#') on PT `dtmf_pt`.
    pub fn send_dtmf(&mut self, now: Instant, event: u8, duration: Duration) {
        self.sender.queue_dtmf(now, event, duration);
    }

    pub fn stats(&self) -> MetaStats {
        self.stats.clone()
    }
    pub fn received(&self) -> Vec<ReceivedRtp> {
        self.recorder.rtp.clone()
    }
    pub fn received_rtcp(&self) -> Vec<ReceivedRtcp> {
        self.recorder.rtcp.clone()
    }
    pub fn first_packet_at(&self) -> Option<Instant> {
        self.stats.media.first_packet_at
    }

    /// Feeds one datagram that arrived on `family`'s socket from `from`.
    pub fn handle_datagram(&mut self, now: Instant, family: Family, from: SocketAddr, data: &[u8]) {
        // RFC 7983 demultiplexing by first byte.
        match data.first() {
            Some(0..=3) => self.on_stun(now, family, from, data),
            Some(20..=63) => self.on_dtls(now, family, from, data),
            Some(128..=191) => self.on_media(now, from, data),
            _ => self.stats.media.media_dropped += 1,
        }
    }

    pub fn poll_at(&mut self, now: Instant) {
        self.send_move_check(now);
        if let Some(d) = self.dtls.as_mut()
            && d.poll_timeout().is_some_and(|t| now >= t)
        {
            d.handle_timeout(now);
            self.after_dtls(now);
        }
        if self.media_ready() {
            for (p, is_dtmf) in self.sender.poll(now) {
                self.send_plain(now, &p, is_dtmf);
            }
        }
    }

    pub fn next_timeout(&self) -> Option<Instant> {
        let dtls = self.dtls.as_ref().and_then(|d| d.poll_timeout());
        let media = if self.media_ready() {
            self.sender.poll_timeout()
        } else {
            None
        };
        let moving = self
            .move_check
            .as_ref()
            .filter(|c| c.sends_left > 0)
            .map(|c| c.next_send);
        [dtls, media, moving].into_iter().flatten().min()
    }

    /// The next datagram to send: (socket family, destination, bytes).
    pub fn poll_datagram(&mut self) -> Option<(Family, SocketAddr, Vec<u8>)> {
        let (i, to, data) = self.out.pop_front()?;
        let family = if i == 0 { Family::V4 } else { Family::V6 };
        Some((family, to, data))
    }
}

impl PeerCore for MetaCore {
    fn handle(&mut self, now: Instant, socket: usize, from: SocketAddr, data: &[u8]) {
        let spare = self.spare_v4.map(|(i, _)| i);
        let family = if socket == 0 || spare == Some(socket) {
            Family::V4
        } else {
            Family::V6
        };
        // After a move the old network is gone: nothing arrives there any more.
        if self.moved && socket == 0 {
            self.stats.ignored_after_move += 1;
            return;
        }
        self.handle_datagram(now, family, from, data);
    }
    fn poll(&mut self, now: Instant) {
        self.poll_at(now);
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.next_timeout()
    }
    fn poll_transmit(&mut self) -> Option<(usize, SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }
}

impl MediaPeer for MetaCore {
    type Stats = MetaStats;
    fn stats(&self) -> MetaStats {
        MetaCore::stats(self)
    }
    fn recorder(&self) -> &Recorder {
        &self.recorder
    }
}

/// Spawns Meta emulators on loopback.
#[derive(Debug)]
pub struct MetaPeer;

impl MetaPeer {
    /// Binds 127.0.0.1 (and ::1 if `cfg.ipv6` and it binds) on ephemeral ports and runs the
    /// peer in its own thread.
    pub fn spawn(cfg: MetaConfig) -> Result<MetaHandle, MetaError> {
        let v4 = std::net::UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0))?;
        let v6 = if cfg.ipv6 && cfg.sdes.is_none() {
            std::net::UdpSocket::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0)).ok()
        } else {
            None
        };
        let spare = if cfg.spare_v4 {
            Some(std::net::UdpSocket::bind(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                0,
            ))?)
        } else {
            None
        };
        let local_v4 = v4.local_addr()?;
        let local_v6 = v6.as_ref().and_then(|s| s.local_addr().ok());
        let mut core = MetaCore::new(cfg, local_v4, local_v6)?;
        let mut sockets = vec![v4];
        sockets.extend(v6);
        if let Some(spare) = spare {
            core.set_spare_v4(sockets.len(), spare.local_addr()?);
            sockets.push(spare);
        }
        Ok(MetaHandle {
            runner: Runner::spawn("meta-peer", core, sockets)?,
        })
    }
}

/// A running Meta emulator. Dropping it stops the thread.
pub type MetaHandle = PeerHandle<MetaCore>;

impl MetaHandle {
    pub fn offer_sdp(&self) -> String {
        self.runner.lock().offer_sdp()
    }
    pub fn answer_sdp(&self, relay_offer: &str) -> Result<String, MetaError> {
        self.runner
            .with(|c| c.answer_sdp(relay_offer, Instant::now()))
    }
    pub fn set_remote_sdp(&self, relay_sdp: &str) -> Result<(), MetaError> {
        self.runner
            .with(|c| c.set_remote_sdp(relay_sdp, Instant::now()))
    }
    pub fn local_addrs(&self) -> (SocketAddr, Option<SocketAddr>) {
        self.runner.lock().local_addrs()
    }
    /// The IPv4 address in use (the spare one after [`Self::move_address`]).
    pub fn current_v4(&self) -> SocketAddr {
        self.runner.lock().current_v4()
    }
    /// Moves IPv4 to the spare socket (needs [`MetaConfig::spare_v4`]); see
    /// [`MetaCore::move_address`].
    pub fn move_address(&self) -> bool {
        self.runner.with(|c| c.move_address(Instant::now()))
    }
    pub fn ufrag(&self) -> String {
        self.runner.lock().ufrag().to_string()
    }
    pub fn pwd(&self) -> String {
        self.runner.lock().pwd().to_string()
    }
    pub fn fingerprint(&self) -> [u8; 32] {
        self.runner.lock().fingerprint()
    }
    pub fn ssrc(&self) -> u32 {
        self.runner.lock().ssrc()
    }
    pub fn start_audio(&self) {
        self.runner.with(|c| c.start_audio(Instant::now()));
    }
    pub fn stop_audio(&self) {
        self.runner.with(|c| c.stop_audio());
    }
    pub fn use_audio_frames(&self, frames: std::sync::Arc<Vec<Vec<u8>>>) {
        self.runner.with(|c| c.use_audio_frames(frames));
    }
    pub fn send_opus(&self, payload: &[u8]) -> bool {
        self.runner.with(|c| c.send_opus(Instant::now(), payload))
    }
    pub fn send_dtmf(&self, event: u8, duration: Duration) {
        self.runner
            .with(|c| c.send_dtmf(Instant::now(), event, duration));
    }
    pub fn first_packet_at(&self) -> Option<Instant> {
        self.runner.lock().first_packet_at()
    }
}

pub use crate::runner::wait_until;

#[cfg(test)]
mod tests;
