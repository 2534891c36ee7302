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
//! [`MetaLink`] is the sans-IO setup half (SDP, ICE-lite, DTLS or SDES keys): the one place
//! these rules are written, used by [`MetaCore`] and by the load test's peer (which adds its
//! own allocation-free media). [`MetaCore`] is the sans-IO test peer (the link, media on an
//! independent SRTP stack, recording, moving); [`MetaPeer::spawn`] runs one on loopback
//! sockets in a thread.

mod link;

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use relay::srtp::SrtpProfile;

pub use link::{Demux, MediaKeys, MetaLink, demux};

use crate::dtls::{DtlsSetup, PeerCertificate};
use crate::media::{MediaSender, MediaStats, ReceivedRtcp, ReceivedRtp, Recorded, Recorder};
use crate::rtp::is_rtcp;
use crate::runner::{MediaPeer, PeerCore, PeerHandle, Runner};
use crate::srtp::SrtpSession;
use crate::stun::{ATTR_ICE_CONTROLLED, BINDING_REQUEST, Message};

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
    /// Plain RTP (RTP/AVP): no ICE, DTLS or SRTP. Not Meta's; the baseline the load test
    /// drives through a raw forwarder or rtpengine plain ↔ plain.
    pub plain: bool,
    /// The DTLS certificate; a new one per peer if `None` (a load test shares one: key
    /// generation per call would only load the generator).
    pub certificate: Option<PeerCertificate>,
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
            plain: false,
            certificate: None,
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
    /// Plain RTP, no ICE, DTLS or SRTP (see [`MetaConfig::plain`]).
    pub fn plain(mut self) -> Self {
        self.plain = true;
        self
    }
    pub fn certificate(mut self, cert: PeerCertificate) -> Self {
        self.certificate = Some(cert);
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

/// The sans-IO Meta endpoint: a [`MetaLink`] (SDP, ICE-lite, DTLS or SDES) with media on an
/// independent SRTP stack, every received packet recorded, and the opt-in address move.
pub struct MetaCore {
    link: MetaLink,
    /// Media protection once keyed; `None` with `plain` set for plain RTP.
    srtp: Option<SrtpSession>,
    plain: bool,
    audio_requested: bool,
    sender: MediaSender,
    recorder: Recorder,
    /// The media and move counters ([`MetaLink::stats`] has the rest).
    own: MetaStats,
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
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

impl MetaCore {
    pub fn new(
        cfg: MetaConfig,
        local_v4: SocketAddr,
        local_v6: Option<SocketAddr>,
    ) -> Result<Self, MetaError> {
        let link = MetaLink::new(cfg, local_v4, local_v6)?;
        let c = link.config();
        let sender = MediaSender::new(link.ssrc(), c.opus_pt, c.dtmf_pt, c.rtcp_interval);
        Ok(MetaCore {
            link,
            srtp: None,
            plain: false,
            audio_requested: false,
            sender,
            recorder: Recorder::default(),
            own: MetaStats::default(),
            out: VecDeque::new(),
            spare_v4: None,
            moved: false,
            move_check: None,
        })
    }

    /// The setup half (SDP, ICE-lite, DTLS).
    pub fn link(&self) -> &MetaLink {
        &self.link
    }
    pub fn ufrag(&self) -> &str {
        self.link.ufrag()
    }
    pub fn pwd(&self) -> &str {
        self.link.pwd()
    }
    pub fn fingerprint(&self) -> [u8; 32] {
        self.link.fingerprint()
    }
    pub fn ssrc(&self) -> u32 {
        self.link.ssrc()
    }
    pub fn local_addrs(&self) -> (SocketAddr, Option<SocketAddr>) {
        self.link.local_addrs()
    }

    /// The offer of a user-initiated call (Meta's `connect` webhook).
    pub fn offer_sdp(&self) -> String {
        self.link.offer_sdp()
    }

    /// Meta's answer to the relay's offer (business-initiated). Also learns the relay's SDP.
    pub fn answer_sdp(&mut self, relay_offer: &str, now: Instant) -> Result<String, MetaError> {
        let answer = self.link.answer_sdp(relay_offer)?;
        (self.sender.opus_pt, self.sender.dtmf_pt) = self.link.payload_types();
        self.key_media(now)?;
        Ok(answer)
    }

    /// Learns the relay's answer to our offer (user-initiated).
    pub fn set_remote_sdp(&mut self, relay_sdp: &str, now: Instant) -> Result<(), MetaError> {
        self.link.set_remote_sdp(relay_sdp)?;
        self.key_media(now)
    }

    /// Takes the link's keys when it has them: SRTP (or plain) media from now on.
    fn key_media(&mut self, now: Instant) -> Result<(), MetaError> {
        match self.link.take_keys() {
            Some(MediaKeys::Srtp(keys)) => self.srtp = Some(SrtpSession::new(&keys)?),
            Some(MediaKeys::Plain) => self.plain = true,
            None => return Ok(()),
        }
        self.sender.enable_rtcp(now);
        Ok(())
    }

    /// After the link handled input: send what it queued, key media if DTLS just finished.
    fn after_link(&mut self, now: Instant) {
        while let Some((family, to, data)) = self.link.poll_transmit() {
            self.push(family, to, data);
        }
        if let Err(e) = self.key_media(now) {
            self.link.fail(e.to_string());
        }
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
            _ => self.link.local_addrs().0,
        }
    }

    /// A network change: IPv4 traffic moves to the spare socket, the old one goes deaf, and
    /// an authenticated check (ICE-CONTROLLED, our peer-reflexive priority, the relay's
    /// password) goes from the new address to where our IPv4 media went, every 100 ms until
    /// answered. Returns `false` without a spare socket or an IPv4 path to move.
    pub fn move_address(&mut self, now: Instant) -> bool {
        let to = match self.link.target() {
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
        let Some(remote) = self.link.remote() else {
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
                format!("{ufrag}:{}", self.link.ufrag()).as_bytes(),
            )
            .attr(crate::stun::ATTR_PRIORITY, &priority.to_be_bytes())
            .attr(ATTR_ICE_CONTROLLED, &rand::random::<u64>().to_be_bytes())
            .message_integrity(pwd.as_bytes())
            .fingerprint()
            .finish();
        self.own.move_checks_sent += 1;
        self.push(Family::V4, to, req);
    }

    fn on_stun(&mut self, now: Instant, family: Family, from: SocketAddr, data: &[u8]) {
        // A lite agent reads no responses, except to the checks it sent after moving.
        if let Some(check) = self.move_check.as_ref()
            && let Ok(msg) = Message::parse(data)
            && msg.msg_type == crate::stun::BINDING_SUCCESS
            && msg.transaction_id == check.tid
            && let Some(pwd) = self.link.remote().and_then(|r| r.pwd.clone())
            && msg.check_integrity(pwd.as_bytes())
        {
            self.move_check = None;
            self.own.move_answered_at = Some(now);
            return;
        }
        self.link.on_stun(now, family, from, data);
        self.after_link(now);
    }

    fn on_media(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let rtcp = is_rtcp(data);
        let unprotected = match self.srtp.as_mut() {
            Some(s) if rtcp => s.unprotect_rtcp(data),
            Some(s) => s.unprotect_rtp(data),
            None if self.plain => Ok(data.to_vec()),
            None => {
                self.own.media.media_dropped += 1;
                return;
            }
        };
        let Ok(plain) = unprotected else {
            self.own.media.srtp_auth_failures += 1;
            return;
        };
        match self.recorder.record(&mut self.own.media, now, from, &plain) {
            Recorded::Rtcp => self.sender.note_rtcp(&plain, now),
            Recorded::Rtp if self.audio_requested => {
                self.audio_requested = false;
                self.sender.start_audio(now);
            }
            Recorded::Rtp | Recorded::Dropped => {}
        }
    }

    fn send_plain(&mut self, now: Instant, packet: &[u8], is_dtmf: bool) -> bool {
        let Some((family, to)) = self.link.target() else {
            return false;
        };
        let rtcp = is_rtcp(packet);
        let protected = match self.srtp.as_mut() {
            Some(s) if rtcp => s.protect_rtcp(packet),
            Some(s) => s.protect_rtp(packet),
            None if self.plain => Ok(packet.to_vec()),
            None => return false,
        };
        let Ok(protected) = protected else {
            return false;
        };
        let m = &mut self.own.media;
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
        (self.srtp.is_some() || self.plain) && self.link.target().is_some()
    }

    /// Starts 20 ms Opus (or arms it for the first received packet with `wait_for_media`).
    pub fn start_audio(&mut self, now: Instant) {
        if self.link.config().wait_for_media && self.own.media.rtp_received == 0 {
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
        MetaStats {
            media: self.own.media.clone(),
            move_checks_sent: self.own.move_checks_sent,
            move_answered_at: self.own.move_answered_at,
            ignored_after_move: self.own.ignored_after_move,
            ..self.link.stats().clone()
        }
    }
    pub fn received(&self) -> Vec<ReceivedRtp> {
        self.recorder.rtp.clone()
    }
    pub fn received_rtcp(&self) -> Vec<ReceivedRtcp> {
        self.recorder.rtcp.clone()
    }
    pub fn first_packet_at(&self) -> Option<Instant> {
        self.own.media.first_packet_at
    }

    /// Feeds one datagram that arrived on `family`'s socket from `from`.
    pub fn handle_datagram(&mut self, now: Instant, family: Family, from: SocketAddr, data: &[u8]) {
        match demux(data) {
            Demux::Stun => self.on_stun(now, family, from, data),
            Demux::Dtls => {
                self.link.on_dtls(now, family, from, data);
                self.after_link(now);
            }
            Demux::Media => self.on_media(now, from, data),
            Demux::Other => self.own.media.media_dropped += 1,
        }
    }

    pub fn poll_at(&mut self, now: Instant) {
        self.send_move_check(now);
        self.link.handle_timeout(now);
        self.after_link(now);
        if self.media_ready() {
            for (p, is_dtmf) in self.sender.poll(now) {
                self.send_plain(now, &p, is_dtmf);
            }
        }
    }

    pub fn next_timeout(&self) -> Option<Instant> {
        let dtls = self.link.poll_timeout();
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
            self.own.ignored_after_move += 1;
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
