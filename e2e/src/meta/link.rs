//! [`MetaLink`]: Meta's side of a call up to keyed media, sans-IO and without the media itself:
//! its SDP (offer, answer, the relay's SDP learned), the ICE-lite responder, DTLS in the role
//! the SDPs leave it, SDES keys. Every Meta rule the relay can observe before SRTP lives here
//! once, and both drivers of a Meta peer use it:
//!
//! - [`MetaCore`](super::MetaCore), the test peer: adds media on an independent SRTP stack,
//!   records every packet, moves address;
//! - loadtest's peer: adds stamped media on the relay's in-place SRTP into its send batches, and
//!   counters instead of records (millions of packets, none of them allocated).
//!
//! Media never passes through here: a driver sorts datagrams with [`demux`], gives STUN and
//! DTLS to [`MetaLink::on_stun`] / [`MetaLink::on_dtls`], sends what [`MetaLink::poll_transmit`]
//! yields, and keys its media with what [`MetaLink::take_keys`] yields once (DTLS done, or the
//! SDES / plain answer learned). Allocation here is per control datagram (checks, handshake
//! flights), never per media packet.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use relay::srtp::{MasterKey, SessionKeys, SrtpProfile};

use super::{Family, MetaConfig, MetaError, MetaStats};
use crate::dtls::{DtlsSetup, PeerCertificate, PeerDtls};
use crate::sdp::{Crypto, RemoteSdp, crlf, host_candidate};
use crate::stun::{
    ATTR_ICE_CONTROLLED, ATTR_ICE_CONTROLLING, ATTR_USE_CANDIDATE, BINDING_REQUEST, Message,
    binding_error, binding_success,
};

/// What a datagram to a Meta peer is, by its first byte (RFC 7983).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Demux {
    Stun,
    Dtls,
    /// RTP or RTCP (SRTP or SRTCP unless plain).
    Media,
    Other,
}

/// RFC 7983 demultiplexing by first byte.
pub fn demux(data: &[u8]) -> Demux {
    match data.first() {
        Some(0..=3) => Demux::Stun,
        Some(20..=63) => Demux::Dtls,
        Some(128..=191) => Demux::Media,
        _ => Demux::Other,
    }
}

/// How media is protected once the link is up.
#[derive(Clone, Debug)]
pub enum MediaKeys {
    /// SRTP with these keys (from DTLS or from the two SDES lines).
    Srtp(SessionKeys),
    /// Plain RTP ([`MetaConfig::plain`]).
    Plain,
}

/// The sans-IO setup half of a Meta peer (see the module doc).
pub struct MetaLink {
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
    /// Payload types in use: ours, or the relay's offer's when we answered it.
    opus_pt: u8,
    dtmf_pt: u8,
    remote: Option<RemoteSdp>,
    role: DtlsSetup,
    dtls: Option<PeerDtls>,
    dtls_family: Family,
    target: Option<(Family, SocketAddr)>,
    /// Keys not yet taken by the driver; `keyed` once they were produced.
    keys: Option<MediaKeys>,
    keyed: bool,
    stats: MetaStats,
    out: VecDeque<(Family, SocketAddr, Vec<u8>)>,
}

impl std::fmt::Debug for MetaLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaLink")
            .field("local_v4", &self.local_v4)
            .field("local_v6", &self.local_v6)
            .field("role", &self.role)
            .field("target", &self.target)
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

pub(super) fn random_crypto(profile: SrtpProfile, tag: u32) -> Crypto {
    let len = profile.key_len() + profile.salt_len();
    Crypto {
        tag,
        profile,
        key_salt: (0..len).map(|_| rand::random()).collect(),
    }
}

pub(super) fn split_crypto(c: &Crypto) -> MasterKey {
    let k = c.profile.key_len();
    MasterKey {
        profile: c.profile,
        key: c.key_salt.get(..k).unwrap_or_default().to_vec(),
        salt: c.key_salt.get(k..).unwrap_or_default().to_vec(),
    }
}

impl MetaLink {
    /// A Meta endpoint at `local_v4` (and `local_v6`), with `cfg.certificate` or a new one.
    pub fn new(
        mut cfg: MetaConfig,
        local_v4: SocketAddr,
        local_v6: Option<SocketAddr>,
    ) -> Result<Self, MetaError> {
        // Taken, not cloned: a load test holds thousands of links.
        let cert = match cfg.certificate.take() {
            Some(c) => c,
            None => PeerCertificate::generate()?,
        };
        let local_crypto = match cfg.sdes {
            Some(p) if !cfg.plain => Some(random_crypto(p, 1)),
            _ => None,
        };
        Ok(MetaLink {
            ufrag: cfg.ufrag.clone().unwrap_or_else(random_ufrag),
            pwd: cfg.pwd.clone().unwrap_or_else(random_pwd),
            ssrc: cfg.ssrc.unwrap_or_else(rand::random),
            cname: B64.encode(rand::random::<[u8; 12]>()),
            session_id: rand::random::<u64>() >> 2,
            cert,
            local_crypto,
            opus_pt: cfg.opus_pt,
            dtmf_pt: cfg.dtmf_pt,
            remote: None,
            role: cfg.dtls_setup,
            dtls: None,
            dtls_family: Family::V4,
            target: None,
            keys: None,
            keyed: false,
            stats: MetaStats::default(),
            out: VecDeque::new(),
            cfg,
            local_v4,
            local_v6,
        })
    }

    pub fn config(&self) -> &MetaConfig {
        &self.cfg
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
    /// (Opus, telephone-event) payload types in use.
    pub fn payload_types(&self) -> (u8, u8) {
        (self.opus_pt, self.dtmf_pt)
    }
    /// The relay's SDP, once learned.
    pub fn remote(&self) -> Option<&RemoteSdp> {
        self.remote.as_ref()
    }
    /// Where media goes: the latest nomination, the DTLS peer, or the SDES / plain answer's
    /// address.
    pub fn target(&self) -> Option<(Family, SocketAddr)> {
        self.target
    }
    /// The setup counters (the `media` and move fields stay zero: the driver's).
    pub fn stats(&self) -> &MetaStats {
        &self.stats
    }
    /// Why setup failed (DTLS, or the driver's SRTP keys), if it did.
    pub fn failure(&self) -> Option<&str> {
        self.stats.dtls_failure.as_deref()
    }
    /// The driver could not use the keys it took.
    pub fn fail(&mut self, why: String) {
        self.stats.dtls_failure = Some(why);
    }

    /// The relay's addresses, from which its checks, DTLS and media come: its candidates and
    /// c= address (SDES and plain: the answer's media address). Empty before its SDP.
    pub fn remote_addrs(&self) -> Vec<SocketAddr> {
        let Some(remote) = &self.remote else {
            return Vec::new();
        };
        if self.uses_ice() {
            let mut addrs = remote.candidates.clone();
            if let Some(c) = remote.connection
                && !addrs.contains(&c)
            {
                addrs.push(c);
            }
            addrs
        } else {
            remote.media_address().into_iter().collect()
        }
    }

    /// ICE-lite and DTLS (not SDES, not plain).
    fn uses_ice(&self) -> bool {
        self.local_crypto.is_none() && !self.cfg.plain
    }

    fn sdp_lines(&self, setup: &str) -> String {
        let (opus_pt, dtmf_pt) = (self.opus_pt, self.dtmf_pt);
        let ice = self.uses_ice();
        let proto = match (&self.local_crypto, ice) {
            (_, true) => "UDP/TLS/RTP/SAVPF",
            (Some(_), false) => "RTP/SAVP",
            (None, false) => "RTP/AVP",
        };
        let mut l: Vec<String> = vec![
            "v=0".into(),
            format!("o=- {} 2 IN IP4 {}", self.session_id, self.local_v4.ip()),
            "s=-".into(),
            "t=0 0".into(),
        ];
        if ice {
            l.push("a=group:BUNDLE audio".into());
            l.push("a=msid-semantic: WMS".into());
            l.push("a=ice-lite".into());
        }
        l.push(format!(
            "m=audio {} {proto} {opus_pt} {dtmf_pt}",
            self.local_v4.port()
        ));
        l.push(format!("c=IN IP4 {}", self.local_v4.ip()));
        if ice {
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
        if let Some(c) = &self.local_crypto {
            l.push(c.to_attribute());
        }
        l.push(format!("a=ssrc:{} cname:{}", self.ssrc, self.cname));
        crlf(&l)
    }

    /// The offer of a user-initiated call (Meta's `connect` webhook).
    pub fn offer_sdp(&self) -> String {
        self.sdp_lines("actpass")
    }

    /// Meta's answer to the relay's offer (business-initiated). Also learns the relay's SDP.
    pub fn answer_sdp(&mut self, relay_offer: &str) -> Result<String, MetaError> {
        let remote = RemoteSdp::parse(relay_offer)?;
        self.opus_pt = remote.opus_pt.unwrap_or(self.cfg.opus_pt);
        self.dtmf_pt = remote.dtmf_pt.unwrap_or(self.cfg.dtmf_pt);
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
        self.learn_remote(remote)?;
        let setup = match self.role {
            DtlsSetup::Client => "active",
            DtlsSetup::Server => "passive",
        };
        Ok(self.sdp_lines(setup))
    }

    /// Learns the relay's answer to our offer (user-initiated).
    pub fn set_remote_sdp(&mut self, relay_sdp: &str) -> Result<(), MetaError> {
        let remote = RemoteSdp::parse(relay_sdp)?;
        self.role = match remote.setup.as_deref() {
            Some("active") => DtlsSetup::Server,
            Some("passive") => DtlsSetup::Client,
            _ => self.cfg.dtls_setup,
        };
        self.learn_remote(remote)
    }

    fn learn_remote(&mut self, remote: RemoteSdp) -> Result<(), MetaError> {
        if self.uses_ice() {
            if remote.fingerprint.is_none() {
                return Err(MetaError::Missing("a=fingerprint (sha-256)"));
            }
            if remote.pwd.is_none() {
                return Err(MetaError::Missing("a=ice-pwd"));
            }
            self.stats.dtls_role = Some(self.role);
            self.remote = Some(remote);
            return Ok(());
        }
        let keys = match &self.local_crypto {
            Some(ours) => {
                let theirs = remote
                    .cryptos
                    .iter()
                    .find(|c| c.profile == ours.profile)
                    .ok_or(MetaError::Missing("an a=crypto line with our suite"))?;
                self.stats.srtp_profile = Some(ours.profile);
                MediaKeys::Srtp(SessionKeys {
                    local: split_crypto(ours),
                    remote: split_crypto(theirs),
                })
            }
            None => MediaKeys::Plain,
        };
        let to = remote
            .media_address()
            .ok_or(MetaError::Missing("a media address"))?;
        let family = if to.is_ipv4() { Family::V4 } else { Family::V6 };
        self.target = Some((family, to));
        self.keys = Some(keys);
        self.keyed = true;
        self.remote = Some(remote);
        Ok(())
    }

    /// The media keys, once: after DTLS completes, or when the SDES / plain answer is learned.
    pub fn take_keys(&mut self) -> Option<MediaKeys> {
        self.keys.take()
    }

    /// The next control datagram to send: (socket family, destination, bytes).
    pub fn poll_transmit(&mut self) -> Option<(Family, SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }

    /// When [`Self::handle_timeout`] is due (DTLS retransmission).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.dtls.as_ref().and_then(PeerDtls::poll_timeout)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(d) = self.dtls.as_mut()
            && d.poll_timeout().is_some_and(|t| now >= t)
        {
            d.handle_timeout(now);
            self.after_dtls(now);
        }
    }

    /// A STUN message that arrived on `family`'s socket from `from`: the ICE-lite responder.
    pub fn on_stun(&mut self, now: Instant, family: Family, from: SocketAddr, data: &[u8]) {
        let Ok(msg) = Message::parse(data) else {
            return;
        };
        // A lite agent reads no responses and, without ICE (SDES, plain), answers nothing.
        if msg.msg_type != BINDING_REQUEST || !self.uses_ice() {
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
            self.out.push_back((family, from, resp));
            return;
        }
        let resp = binding_success(msg.transaction_id, from, &self.pwd);
        self.out.push_back((family, from, resp));
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

    /// A DTLS record that arrived on `family`'s socket from `from`: accepted only from an
    /// address that passed a check (as server) or from the nominated one (as client).
    pub fn on_dtls(&mut self, now: Instant, family: Family, from: SocketAddr, data: &[u8]) {
        self.stats.dtls_datagrams_received += 1;
        if !self.uses_ice() {
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
        let to = d.remote();
        while let Some(p) = d.poll_transmit() {
            self.out.push_back((self.dtls_family, to, p));
        }
        if let Some(why) = d.failure() {
            self.stats
                .dtls_failure
                .get_or_insert_with(|| why.to_string());
        }
        if !self.keyed
            && let Some(keys) = d.keys()
        {
            self.stats.srtp_profile = Some(keys.local.profile);
            self.stats.dtls_connected_at = Some(now);
            self.target.get_or_insert((self.dtls_family, to));
            self.keys = Some(MediaKeys::Srtp(keys.clone()));
            self.keyed = true;
        }
    }
}
