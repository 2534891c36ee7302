//! `SipPeer`: the internal leg as a SIP media server (FreeSWITCH/Asterisk-like) would present
//! it: plain RTP (or SDES-SRTP) on 127.0.0.1, Opus every 20 ms on its own SSRC when told,
//! RFC 4733 telephone-event on the same SSRC/sequence/timestamp base, SSRC changes and
//! sequence jumps on command, and a second "stranger" socket for source-validation tests.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use relay::srtp::{MasterKey, SessionKeys, SrtpProfile};

use crate::media::{MediaSender, MediaStats, ReceivedRtcp, ReceivedRtp, Recorded, Recorder};
use crate::rtp::is_rtcp;
use crate::runner::{MediaPeer, PeerCore, PeerHandle, Runner};
use crate::sdp::{Crypto, RemoteSdp, crlf};
use crate::srtp::SrtpSession;

const MAIN: usize = 0;
const STRANGER: usize = 1;

#[derive(Clone, Debug)]
pub struct SipConfig {
    pub opus_pt: u8,
    /// telephone-event payload type (SIP servers commonly use 101).
    pub dtmf_pt: u8,
    /// SDES-SRTP (RTP/SAVP + a=crypto) instead of plain RTP/AVP.
    pub sdes: Option<SrtpProfile>,
    pub ssrc: Option<u32>,
    pub rtcp_interval: Duration,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            opus_pt: 111,
            dtmf_pt: 101,
            sdes: None,
            ssrc: None,
            rtcp_interval: Duration::from_secs(5),
        }
    }
}

impl SipConfig {
    pub fn sdes(mut self, profile: SrtpProfile) -> Self {
        self.sdes = Some(profile);
        self
    }
    pub fn dtmf_pt(mut self, pt: u8) -> Self {
        self.dtmf_pt = pt;
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SipError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("sdp: {0}")]
    Sdp(#[from] crate::sdp::SdpError),
    #[error("srtp: {0}")]
    Srtp(#[from] crate::srtp::SrtpError),
    #[error("remote SDP lacks {0}")]
    Missing(&'static str),
}

/// The sans-IO SIP media peer.
#[derive(Debug)]
pub struct SipCore {
    cfg: SipConfig,
    local: SocketAddr,
    stranger: SocketAddr,
    session_id: u64,
    local_crypto: Option<Crypto>,
    remote: Option<SocketAddr>,
    srtp: Option<SrtpSession>,
    sender: MediaSender,
    recorder: Recorder,
    stats: MediaStats,
    out: VecDeque<(usize, SocketAddr, Vec<u8>)>,
}

fn master_key(c: &Crypto) -> MasterKey {
    let k = c.profile.key_len();
    MasterKey {
        profile: c.profile,
        key: c.key_salt.get(..k).unwrap_or_default().to_vec(),
        salt: c.key_salt.get(k..).unwrap_or_default().to_vec(),
    }
}

impl SipCore {
    pub fn new(cfg: SipConfig, local: SocketAddr, stranger: SocketAddr) -> Self {
        let ssrc = cfg.ssrc.unwrap_or_else(rand::random);
        let local_crypto = cfg.sdes.map(|profile| Crypto {
            tag: 1,
            profile,
            key_salt: (0..profile.key_len() + profile.salt_len())
                .map(|_| rand::random())
                .collect(),
        });
        SipCore {
            sender: MediaSender::new(ssrc, cfg.opus_pt, cfg.dtmf_pt, cfg.rtcp_interval),
            session_id: rand::random::<u64>() >> 2,
            local_crypto,
            remote: None,
            srtp: None,
            recorder: Recorder::default(),
            stats: MediaStats::default(),
            out: VecDeque::new(),
            cfg,
            local,
            stranger,
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
    pub fn stranger_addr(&self) -> SocketAddr {
        self.stranger
    }
    pub fn ssrc(&self) -> u32 {
        self.sender.ssrc
    }

    /// RTP/AVP (or RTP/SAVP with a=crypto) description of our media socket.
    pub fn sdp(&self) -> String {
        let (o, d) = (self.cfg.opus_pt, self.cfg.dtmf_pt);
        let proto = if self.local_crypto.is_some() {
            "RTP/SAVP"
        } else {
            "RTP/AVP"
        };
        let mut l = vec![
            "v=0".to_string(),
            format!("o=media {} 1 IN IP4 {}", self.session_id, self.local.ip()),
            "s=media".into(),
            format!("c=IN IP4 {}", self.local.ip()),
            "t=0 0".into(),
            format!("m=audio {} {proto} {o} {d}", self.local.port()),
            format!("a=rtpmap:{o} opus/48000/2"),
            format!("a=fmtp:{o} useinbandfec=1"),
            format!("a=rtpmap:{d} telephone-event/8000"),
            format!("a=fmtp:{d} 0-16"),
            "a=ptime:20".into(),
            "a=rtcp-mux".into(),
            "a=sendrecv".into(),
        ];
        if let Some(c) = &self.local_crypto {
            l.push(c.to_attribute());
        }
        crlf(&l)
    }

    /// Learns where the relay wants our media (and its SDES key).
    pub fn set_remote_sdp(&mut self, relay_sdp: &str, now: Instant) -> Result<(), SipError> {
        let remote = RemoteSdp::parse(relay_sdp)?;
        let to = remote
            .media_address()
            .ok_or(SipError::Missing("a media address"))?;
        if let Some(ours) = &self.local_crypto {
            let theirs = remote
                .cryptos
                .iter()
                .find(|c| c.profile == ours.profile)
                .ok_or(SipError::Missing("an a=crypto line with our suite"))?;
            self.srtp = Some(SrtpSession::new(&SessionKeys {
                local: master_key(ours),
                remote: master_key(theirs),
            })?);
        }
        self.set_remote(to, now);
        Ok(())
    }

    /// Sends media to `to` from now on (plain RTP unless SDES is configured).
    pub fn set_remote(&mut self, to: SocketAddr, now: Instant) {
        self.remote = Some(to);
        self.sender.enable_rtcp(now);
    }

    /// The `inline:` key we offer, base64 (for tests that build the relay's side by hand).
    pub fn sdes_key_b64(&self) -> Option<String> {
        self.local_crypto.as_ref().map(|c| B64.encode(&c.key_salt))
    }

    fn protect(&mut self, packet: &[u8]) -> Option<Vec<u8>> {
        match self.srtp.as_mut() {
            None if self.local_crypto.is_some() => None,
            None => Some(packet.to_vec()),
            Some(s) if is_rtcp(packet) => s.protect_rtcp(packet).ok(),
            Some(s) => s.protect_rtp(packet).ok(),
        }
    }

    fn send(&mut self, now: Instant, socket: usize, packet: &[u8], is_dtmf: bool) -> bool {
        let Some(to) = self.remote else { return false };
        let Some(data) = self.protect(packet) else {
            return false;
        };
        if is_rtcp(packet) {
            self.stats.rtcp_sent += 1;
        } else {
            self.stats.rtp_sent += 1;
            self.stats.first_sent_at.get_or_insert(now);
            if is_dtmf {
                self.stats.dtmf_sent += 1;
            }
        }
        self.out.push_back((socket, to, data));
        true
    }

    pub fn start_audio(&mut self, now: Instant) {
        self.sender.start_audio(now);
    }
    /// Send these real Opus frames (in a loop) instead of stamped payloads.
    pub fn use_audio_frames(&mut self, frames: std::sync::Arc<Vec<Vec<u8>>>) {
        self.sender.use_frames(frames);
    }

    pub fn stop_audio(&mut self) {
        self.sender.stop_audio();
    }
    /// One Opus packet now with this payload.
    pub fn send_opus(&mut self, now: Instant, payload: &[u8]) -> bool {
        let p = self.sender.opus_packet(payload);
        self.send(now, MAIN, &p, false)
    }
    /// One stamped Opus packet from the stranger socket (same SSRC/sequence stream).
    pub fn send_from_stranger(&mut self, now: Instant) -> bool {
        let payload = self.sender.next_payload();
        let p = self.sender.opus_packet(&payload);
        self.send(now, STRANGER, &p, false)
    }
    pub fn send_dtmf(&mut self, now: Instant, event: u8, duration: Duration) {
        self.sender.queue_dtmf(now, event, duration);
    }
    /// Switches to a new SSRC mid-call (as a media server does on transfer or re-INVITE).
    pub fn change_ssrc(&mut self, ssrc: u32) {
        self.sender.set_ssrc(ssrc);
    }
    /// Jumps the sequence number by `delta` (as after a source switch inside the server).
    pub fn jump_seq(&mut self, delta: u16) {
        self.sender.jump_seq(delta);
    }

    pub fn stats(&self) -> MediaStats {
        self.stats.clone()
    }
    pub fn received(&self) -> Vec<ReceivedRtp> {
        self.recorder.rtp.clone()
    }
    pub fn received_rtcp(&self) -> Vec<ReceivedRtcp> {
        self.recorder.rtcp.clone()
    }
    pub fn first_packet_at(&self) -> Option<Instant> {
        self.stats.first_packet_at
    }

    fn on_datagram(&mut self, now: Instant, socket: usize, from: SocketAddr, data: &[u8]) {
        if socket != MAIN || !matches!(data.first(), Some(128..=191)) {
            self.stats.media_dropped += 1;
            return;
        }
        let plain = match self.srtp.as_mut() {
            None if self.local_crypto.is_some() => {
                self.stats.media_dropped += 1;
                return;
            }
            None => data.to_vec(),
            Some(s) => {
                let r = if is_rtcp(data) {
                    s.unprotect_rtcp(data)
                } else {
                    s.unprotect_rtp(data)
                };
                match r {
                    Ok(p) => p,
                    Err(_) => {
                        self.stats.srtp_auth_failures += 1;
                        return;
                    }
                }
            }
        };
        if self.recorder.record(&mut self.stats, now, from, &plain) == Recorded::Rtcp {
            self.sender.note_rtcp(&plain, now);
        }
    }
}

impl PeerCore for SipCore {
    fn handle(&mut self, now: Instant, socket: usize, from: SocketAddr, data: &[u8]) {
        self.on_datagram(now, socket, from, data);
    }
    fn poll(&mut self, now: Instant) {
        if self.remote.is_none() {
            return;
        }
        for (p, is_dtmf) in self.sender.poll(now) {
            self.send(now, MAIN, &p, is_dtmf);
        }
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.remote.and(self.sender.poll_timeout())
    }
    fn poll_transmit(&mut self) -> Option<(usize, SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }
}

impl MediaPeer for SipCore {
    type Stats = MediaStats;
    fn stats(&self) -> MediaStats {
        SipCore::stats(self)
    }
    fn recorder(&self) -> &Recorder {
        &self.recorder
    }
}

/// Spawns SIP media peers on loopback.
#[derive(Debug)]
pub struct SipPeer;

impl SipPeer {
    pub fn spawn(cfg: SipConfig) -> Result<SipHandle, SipError> {
        let bind =
            || std::net::UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0));
        let (main, stranger) = (bind()?, bind()?);
        let core = SipCore::new(cfg, main.local_addr()?, stranger.local_addr()?);
        Ok(SipHandle {
            runner: Runner::spawn("sip-peer", core, vec![main, stranger])?,
        })
    }
}

/// A running SIP media peer. Dropping it stops the thread.
pub type SipHandle = PeerHandle<SipCore>;

impl SipHandle {
    pub fn sdp(&self) -> String {
        self.runner.lock().sdp()
    }
    pub fn set_remote_sdp(&self, relay_sdp: &str) -> Result<(), SipError> {
        self.runner
            .with(|c| c.set_remote_sdp(relay_sdp, Instant::now()))
    }
    pub fn set_remote(&self, to: SocketAddr) {
        self.runner.with(|c| c.set_remote(to, Instant::now()));
    }
    pub fn local_addr(&self) -> SocketAddr {
        self.runner.lock().local_addr()
    }
    pub fn stranger_addr(&self) -> SocketAddr {
        self.runner.lock().stranger_addr()
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
    pub fn send_from_stranger(&self) -> bool {
        self.runner.with(|c| c.send_from_stranger(Instant::now()))
    }
    pub fn send_dtmf(&self, event: u8, duration: Duration) {
        self.runner
            .with(|c| c.send_dtmf(Instant::now(), event, duration));
    }
    pub fn change_ssrc(&self, ssrc: u32) {
        self.runner.with(|c| c.change_ssrc(ssrc));
    }
    pub fn jump_seq(&self, delta: u16) {
        self.runner.with(|c| c.jump_seq(delta));
    }
    pub fn first_packet_at(&self) -> Option<Instant> {
        self.runner.lock().first_packet_at()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::wait_until;

    /// Two SIP peers pointed at each other: what one sends, the other records.
    #[test]
    fn two_peers_exchange_plain_rtp_and_dtmf() {
        let a = SipPeer::spawn(SipConfig::default()).unwrap();
        let b = SipPeer::spawn(SipConfig::default()).unwrap();
        a.set_remote_sdp(&b.sdp()).unwrap();
        b.set_remote(a.local_addr());
        a.start_audio();
        assert!(b.wait_until(Duration::from_secs(10), |s| s.rtp_received >= 3));
        a.stop_audio();
        a.send_dtmf(1, Duration::from_millis(40));
        let ends = || {
            b.received()
                .iter()
                .filter(|p| p.header.pt == 101 && p.payload.get(1).is_some_and(|f| f & 0x80 != 0))
                .count()
        };
        assert!(wait_until(Duration::from_secs(10), || ends() == 3));
        let got = b.received();
        assert!(
            got.iter()
                .all(|p| p.header.ssrc == a.ssrc() && p.from == a.local_addr())
        );
        let dtmf: Vec<_> = got.iter().filter(|p| p.header.pt == 101).collect();
        assert!(!dtmf.is_empty());
        for w in got.windows(2) {
            assert_eq!(w[1].header.seq, w[0].header.seq.wrapping_add(1));
        }
        // A new SSRC and a sequence jump show up as such.
        a.change_ssrc(77);
        a.jump_seq(1000);
        assert!(a.send_opus(&[1; 80]));
        assert!(
            b.wait_until(Duration::from_secs(10), |s| s.rtp_received >= 8
                && b.received().iter().any(|p| p.header.ssrc == 77))
        );
        let last = b
            .received()
            .into_iter()
            .find(|p| p.header.ssrc == 77)
            .unwrap();
        assert_eq!(
            last.header.seq,
            got.last().unwrap().header.seq.wrapping_add(1001)
        );
        // The stranger socket is a different source.
        assert!(a.send_from_stranger());
        assert!(b.wait_until(Duration::from_secs(10), |_| {
            b.received().iter().any(|p| p.from == a.stranger_addr())
        }));
    }

    #[test]
    fn sdes_peers_exchange_srtp() {
        let profile = SrtpProfile::AeadAes128Gcm;
        let a = SipPeer::spawn(SipConfig::default().sdes(profile)).unwrap();
        let b = SipPeer::spawn(SipConfig::default().sdes(profile)).unwrap();
        assert!(
            a.sdp().contains("RTP/SAVP") && a.sdp().contains("a=crypto:1 AEAD_AES_128_GCM inline:")
        );
        a.set_remote_sdp(&b.sdp()).unwrap();
        b.set_remote_sdp(&a.sdp()).unwrap();
        a.start_audio();
        assert!(b.wait_until(Duration::from_secs(10), |s| s.rtp_received >= 3));
        assert_eq!(b.stats().srtp_auth_failures, 0);
        assert!(
            b.received()
                .iter()
                .all(|p| (60..=120).contains(&p.payload.len()))
        );
    }
}
