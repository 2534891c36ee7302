//! `BrowserPeer`: a browser agent on a WebRTC internal leg, as the relay meets it: full ICE as
//! the controlling agent (the relay is ICE-lite), checks with USE-CANDIDATE toward the relay's
//! host candidate and consent checks after, DTLS in the role the offer/answer gives it (on
//! rtc-dtls), SRTP on webrtc-srtp, Opus every 20 ms with RFC 4733 DTMF and sender reports.
//! Its SDP is shaped like Chrome's (BUNDLE, mid, extmap, an mDNS host candidate, RED, G722,
//! telephone-event at 48 and 8 kHz). Independent of the relay's own stacks.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use relay::srtp::SrtpProfile;

use crate::dtls::{DtlsSetup, PeerCertificate, PeerDtls};
use crate::media::{MediaSender, MediaStats, ReceivedRtcp, ReceivedRtp, Recorder};
use crate::rtp::is_rtcp;
use crate::runner::{MediaPeer, PeerCore, PeerHandle, Runner};
use crate::sdp::{RemoteSdp, crlf};
use crate::srtp::SrtpSession;
use crate::stun::{self, BINDING_SUCCESS, Message};

/// Checks every 50 ms until one succeeds, then consent every 2 s (Chrome: ~1 s while
/// checking, a few seconds for consent).
const CHECK_EVERY: Duration = Duration::from_millis(50);
const CONSENT_EVERY: Duration = Duration::from_secs(2);
/// A prflx-type priority, as browsers put in their checks.
const CHECK_PRIORITY: u32 = 1_853_824_767;

#[derive(Clone, Debug)]
pub struct BrowserConfig {
    pub opus_pt: u8,
    pub dtmf_pt: u8,
    /// Our DTLS role when we answer the relay's `actpass` offer (Chrome answers `active`).
    pub answer_setup: DtlsSetup,
    /// SRTP profiles offered (client) or accepted (server), in preference order.
    pub profiles: Vec<SrtpProfile>,
    pub rtcp_interval: Duration,
}

impl Default for BrowserConfig {
    fn default() -> Self {
        BrowserConfig {
            opus_pt: 111,
            dtmf_pt: 126,
            answer_setup: DtlsSetup::Client,
            profiles: vec![SrtpProfile::AeadAes128Gcm, SrtpProfile::Aes128CmHmacSha1_80],
            rtcp_interval: Duration::from_secs(5),
        }
    }
}

impl BrowserConfig {
    pub fn answer_passive(mut self) -> Self {
        self.answer_setup = DtlsSetup::Server;
        self
    }
    pub fn profiles(mut self, profiles: &[SrtpProfile]) -> Self {
        self.profiles = profiles.to_vec();
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("sdp: {0}")]
    Sdp(#[from] crate::sdp::SdpError),
    #[error("dtls: {0}")]
    Dtls(#[from] crate::dtls::PeerDtlsError),
    #[error("the relay's SDP: {0}")]
    Relay(&'static str),
}

/// Counters beyond media.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrowserStats {
    pub checks_sent: u64,
    pub check_successes: u64,
    pub nominated: Option<SocketAddr>,
    pub dtls_connected_at: Option<Instant>,
    pub srtp_profile: Option<SrtpProfile>,
    pub media: MediaStats,
}

/// What the relay told us in its SDP.
#[derive(Debug, Clone)]
struct Relay {
    ufrag: String,
    pwd: String,
    candidates: Vec<SocketAddr>,
    fingerprint: [u8; 32],
}

/// The sans-IO browser.
#[derive(Debug)]
pub struct BrowserCore {
    cfg: BrowserConfig,
    local: SocketAddr,
    ufrag: String,
    pwd: String,
    cert: PeerCertificate,
    setup: Option<DtlsSetup>,
    relay: Option<Relay>,
    /// Outstanding check transaction ids and where they went.
    pending: Vec<([u8; 12], SocketAddr)>,
    next_check: Option<Instant>,
    selected: Option<SocketAddr>,
    dtls: Option<PeerDtls>,
    srtp: Option<SrtpSession>,
    sender: MediaSender,
    recorder: Recorder,
    stats: BrowserStats,
    out: VecDeque<(usize, SocketAddr, Vec<u8>)>,
}

fn token(n: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..n)
        .map(|_| char::from(CHARS[rand::random::<u8>() as usize % CHARS.len()]))
        .collect()
}

impl BrowserCore {
    pub fn new(cfg: BrowserConfig, local: SocketAddr) -> Result<Self, BrowserError> {
        let ssrc = rand::random();
        Ok(BrowserCore {
            sender: MediaSender::new(ssrc, cfg.opus_pt, cfg.dtmf_pt, cfg.rtcp_interval),
            cfg,
            local,
            ufrag: token(4),
            pwd: token(24),
            cert: PeerCertificate::generate()?,
            setup: None,
            relay: None,
            pending: Vec::new(),
            next_check: None,
            selected: None,
            dtls: None,
            srtp: None,
            recorder: Recorder::default(),
            stats: BrowserStats::default(),
            out: VecDeque::new(),
        })
    }

    pub fn ssrc(&self) -> u32 {
        self.sender.ssrc
    }

    /// Chrome's offer (`actpass`): we will be the DTLS client if the relay answers `passive`.
    pub fn offer(&self) -> String {
        self.description("actpass")
    }

    /// Our answer to the relay's offer, in the configured DTLS role.
    pub fn answer(&mut self, relay_offer: &str, now: Instant) -> Result<String, BrowserError> {
        let setup = self.cfg.answer_setup;
        self.take_relay_sdp(relay_offer, setup, now)?;
        Ok(self.description(match setup {
            DtlsSetup::Client => "active",
            DtlsSetup::Server => "passive",
        }))
    }

    /// The relay's answer to our offer.
    pub fn accept_answer(&mut self, relay_answer: &str, now: Instant) -> Result<(), BrowserError> {
        let remote = RemoteSdp::parse(relay_answer)?;
        let setup = match remote.setup.as_deref() {
            Some("passive") => DtlsSetup::Client,
            Some("active") => DtlsSetup::Server,
            _ => return Err(BrowserError::Relay("an answer must say active or passive")),
        };
        self.take_relay_sdp(relay_answer, setup, now)
    }

    fn description(&self, setup: &str) -> String {
        let (o, d) = (self.cfg.opus_pt, self.cfg.dtmf_pt);
        crlf(&[
            "v=0".into(),
            format!("o=- {} 2 IN IP4 127.0.0.1", rand::random::<u32>()),
            "s=-".into(),
            "t=0 0".into(),
            "a=group:BUNDLE 0".into(),
            "a=extmap-allow-mixed".into(),
            "a=msid-semantic: WMS agent".into(),
            format!("m=audio 9 UDP/TLS/RTP/SAVPF {o} 63 9 0 8 110 {d}"),
            "c=IN IP4 0.0.0.0".into(),
            "a=rtcp:9 IN IP4 0.0.0.0".into(),
            format!(
                "a=candidate:1 1 udp 2122260223 9b36d1e2-5a0c-4a1e-8c55-0f4e2d6b7c11.local {} typ host generation 0 network-cost 999",
                self.local.port()
            ),
            format!(
                "a=candidate:2 1 udp 2122194687 {} {} typ host generation 0 network-cost 999",
                self.local.ip(),
                self.local.port()
            ),
            format!("a=ice-ufrag:{}", self.ufrag),
            format!("a=ice-pwd:{}", self.pwd),
            "a=ice-options:trickle".into(),
            format!("a=fingerprint:{}", self.cert.fingerprint_sdp()),
            format!("a=setup:{setup}"),
            "a=mid:0".into(),
            "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level".into(),
            "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid".into(),
            "a=sendrecv".into(),
            "a=msid:agent mic".into(),
            "a=rtcp-mux".into(),
            "a=rtcp-rsize".into(),
            format!("a=rtpmap:{o} opus/48000/2"),
            format!("a=rtcp-fb:{o} transport-cc"),
            format!("a=fmtp:{o} minptime=10;useinbandfec=1"),
            "a=rtpmap:63 red/48000/2".into(),
            format!("a=fmtp:63 {o}/{o}"),
            "a=rtpmap:9 G722/8000".into(),
            "a=rtpmap:0 PCMU/8000".into(),
            "a=rtpmap:8 PCMA/8000".into(),
            "a=rtpmap:110 telephone-event/48000".into(),
            format!("a=rtpmap:{d} telephone-event/8000"),
            format!("a=ssrc:{} cname:agentcname", self.sender.ssrc),
            format!("a=ssrc:{} msid:agent mic", self.sender.ssrc),
        ])
    }

    fn take_relay_sdp(
        &mut self,
        sdp: &str,
        setup: DtlsSetup,
        now: Instant,
    ) -> Result<(), BrowserError> {
        let r = RemoteSdp::parse(sdp)?;
        if !r.ice_lite {
            return Err(BrowserError::Relay("no a=ice-lite"));
        }
        if !r.rtcp_mux || r.mid.is_none() {
            return Err(BrowserError::Relay("no rtcp-mux or mid"));
        }
        self.relay = Some(Relay {
            ufrag: r.ufrag.ok_or(BrowserError::Relay("no ice-ufrag"))?,
            pwd: r.pwd.ok_or(BrowserError::Relay("no ice-pwd"))?,
            candidates: r.candidates.clone(),
            fingerprint: r.fingerprint.ok_or(BrowserError::Relay("no fingerprint"))?,
        });
        if r.candidates.is_empty() {
            return Err(BrowserError::Relay("no candidate"));
        }
        self.setup = Some(setup);
        self.next_check = Some(now);
        Ok(())
    }

    pub fn start_audio(&mut self, now: Instant) {
        self.sender.start_audio(now);
    }
    pub fn stop_audio(&mut self) {
        self.sender.stop_audio();
    }
    pub fn send_dtmf(&mut self, now: Instant, event: u8, duration: Duration) {
        self.sender.queue_dtmf(now, event, duration);
    }
    pub fn stats(&self) -> BrowserStats {
        let mut s = self.stats.clone();
        s.srtp_profile = self.srtp.as_ref().map(SrtpSession::profile);
        s
    }
    pub fn received(&self) -> Vec<ReceivedRtp> {
        self.recorder.rtp.clone()
    }
    pub fn received_rtcp(&self) -> Vec<ReceivedRtcp> {
        self.recorder.rtcp.clone()
    }

    /// Checks (before a pair works) or consent checks (after), each with USE-CANDIDATE: the
    /// browser nominates the pair its checks prove.
    fn send_checks(&mut self, now: Instant) {
        let Some(relay) = self.relay.clone() else {
            return;
        };
        let targets = match self.selected {
            Some(s) => vec![s],
            None => relay.candidates.clone(),
        };
        let username = format!("{}:{}", relay.ufrag, self.ufrag);
        for to in targets {
            let tid: [u8; 12] = rand::random();
            let tie_breaker = rand::random();
            let req = stun::binding_request(
                tid,
                &username,
                &relay.pwd,
                CHECK_PRIORITY,
                tie_breaker,
                true,
            );
            self.pending.push((tid, to));
            if self.pending.len() > 64 {
                self.pending.remove(0);
            }
            self.stats.checks_sent += 1;
            self.out.push_back((0, to, req));
        }
        self.next_check = Some(
            now + if self.selected.is_some() {
                CONSENT_EVERY
            } else {
                CHECK_EVERY
            },
        );
    }

    fn on_stun(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let (Ok(msg), Some(relay)) = (Message::parse(data), self.relay.as_ref()) else {
            return;
        };
        if msg.msg_type != BINDING_SUCCESS || !msg.check_integrity(relay.pwd.as_bytes()) {
            return;
        }
        let Some(i) = self
            .pending
            .iter()
            .position(|(tid, to)| *tid == msg.transaction_id && *to == from)
        else {
            return;
        };
        self.pending.remove(i);
        self.stats.check_successes += 1;
        if self.selected.is_some() {
            return;
        }
        // Our nominating check succeeded: the pair is selected; DTLS starts on it.
        self.selected = Some(from);
        self.stats.nominated = Some(from);
        let (Some(setup), fingerprint) = (self.setup, relay.fingerprint) else {
            return;
        };
        match PeerDtls::new(
            &self.cert,
            setup,
            &self.cfg.profiles,
            fingerprint,
            self.local,
            from,
            Duration::from_millis(100),
        ) {
            Ok(mut d) => {
                d.start(now);
                self.dtls = Some(d);
                self.after_dtls(now);
            }
            Err(_) => self.stats.media.media_dropped += 1,
        }
    }

    fn after_dtls(&mut self, now: Instant) {
        let Some(d) = self.dtls.as_mut() else { return };
        while let Some(p) = d.poll_transmit() {
            self.out.push_back((0, d.remote(), p));
        }
        if self.srtp.is_none()
            && let Some(keys) = d.keys()
            && let Ok(s) = SrtpSession::new(keys)
        {
            self.srtp = Some(s);
            self.stats.dtls_connected_at = Some(now);
            self.sender.enable_rtcp(now);
        }
    }

    fn on_media(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let Some(s) = self.srtp.as_mut() else {
            self.stats.media.media_dropped += 1;
            return;
        };
        let plain = if is_rtcp(data) {
            s.unprotect_rtcp(data)
        } else {
            s.unprotect_rtp(data)
        };
        let Ok(plain) = plain else {
            self.stats.media.srtp_auth_failures += 1;
            return;
        };
        self.recorder
            .record(&mut self.stats.media, now, from, &plain);
    }
}

impl PeerCore for BrowserCore {
    fn handle(&mut self, now: Instant, _socket: usize, from: SocketAddr, data: &[u8]) {
        match data.first() {
            Some(0..=3) => self.on_stun(now, from, data),
            Some(20..=63) => {
                if let Some(d) = self.dtls.as_mut()
                    && d.remote() == from
                {
                    d.handle(now, data);
                }
                self.after_dtls(now);
            }
            Some(128..=191) if Some(from) == self.selected => self.on_media(now, from, data),
            _ => self.stats.media.media_dropped += 1,
        }
    }

    fn poll(&mut self, now: Instant) {
        if self.next_check.is_some_and(|t| now >= t) {
            self.send_checks(now);
        }
        if let Some(d) = self.dtls.as_mut()
            && d.poll_timeout().is_some_and(|t| now >= t)
        {
            d.handle_timeout(now);
        }
        self.after_dtls(now);
        let (Some(to), Some(_)) = (self.selected, self.srtp.as_ref()) else {
            return;
        };
        for (p, is_dtmf) in self.sender.poll(now) {
            let Some(s) = self.srtp.as_mut() else { return };
            let protected = if is_rtcp(&p) {
                self.stats.media.rtcp_sent += 1;
                s.protect_rtcp(&p)
            } else {
                self.stats.media.rtp_sent += 1;
                self.stats.media.dtmf_sent += u64::from(is_dtmf);
                s.protect_rtp(&p)
            };
            if let Ok(data) = protected {
                self.out.push_back((0, to, data));
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let media = self.srtp.as_ref().and(self.sender.poll_timeout());
        [
            self.next_check,
            self.dtls.as_ref().and_then(PeerDtls::poll_timeout),
            media,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn poll_transmit(&mut self) -> Option<(usize, SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }
}

impl MediaPeer for BrowserCore {
    type Stats = BrowserStats;
    fn stats(&self) -> BrowserStats {
        BrowserCore::stats(self)
    }
    fn recorder(&self) -> &Recorder {
        &self.recorder
    }
}

/// Spawns browser peers on loopback.
#[derive(Debug)]
pub struct BrowserPeer;

impl BrowserPeer {
    pub fn spawn(cfg: BrowserConfig) -> Result<BrowserHandle, BrowserError> {
        let socket =
            std::net::UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0))?;
        let core = BrowserCore::new(cfg, socket.local_addr()?)?;
        Ok(BrowserHandle {
            runner: Runner::spawn("browser-peer", core, vec![socket])?,
        })
    }
}

/// A running browser peer. Dropping it stops the thread.
pub type BrowserHandle = PeerHandle<BrowserCore>;

impl BrowserHandle {
    pub fn offer(&self) -> String {
        self.runner.lock().offer()
    }
    pub fn answer(&self, relay_offer: &str) -> Result<String, BrowserError> {
        self.runner.with(|c| c.answer(relay_offer, Instant::now()))
    }
    pub fn accept_answer(&self, relay_answer: &str) -> Result<(), BrowserError> {
        self.runner
            .with(|c| c.accept_answer(relay_answer, Instant::now()))
    }
    pub fn local_addr(&self) -> SocketAddr {
        self.runner.lock().local
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
    pub fn send_dtmf(&self, event: u8, duration: Duration) {
        self.runner
            .with(|c| c.send_dtmf(Instant::now(), event, duration));
    }
}
