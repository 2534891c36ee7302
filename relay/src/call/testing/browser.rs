//! A browser agent's side of a WebRTC internal leg, in memory: full ICE as the controlling
//! agent (every check carries USE-CANDIDATE, as Chrome's nominating checks do, and keeps
//! sending consent checks), DTLS in whichever role the offer/answer gives it, SRTP from the
//! exported keys. Built from the relay's own ICE, DTLS and SRTP modules (tested on their own
//! against RFC vectors and other stacks); the e2e crate has an independent one. The transport
//! (ICE, DTLS, keys) is the listen-in's supervisor's too
//! ([`BrowserTransport`](crate::listen::testing::BrowserTransport)); this adds Chrome's SDP and
//! media.

use std::net::SocketAddr;
use std::time::Instant;

use crate::dtls::{DtlsRole, Fingerprint};
use crate::ice::{IceCredentials, IceEvent};
use crate::listen::testing::BrowserTransport;
use crate::net::{Outbox, SocketRef};
use crate::sdp::{self, Setup};
use crate::srtp::SrtpError;
use crate::wire::classify::{PacketKind, classify};

use super::{Received, crlf, unprotect_media, v4};

/// The browser's address (its one usable host candidate).
pub const BROWSER: SocketAddr = v4(10, 20, 0, 9, 50000);
/// Chrome's payload types.
pub const BROWSER_OPUS_PT: u8 = 111;
pub const BROWSER_TE_PT: u8 = 126;

/// The label the browser's agent gives its one socket (it only matters to the agent itself).
const BROWSER_SOCKET: SocketRef = SocketRef::Internal;

pub struct BrowserPeer {
    transport: BrowserTransport,
    /// The tab is closed: nothing is answered or sent any more.
    pub closed: bool,
}

impl BrowserPeer {
    /// A browser with a fresh certificate. Panics if it cannot be generated (test support).
    pub fn new(now: Instant) -> BrowserPeer {
        let mut transport = BrowserTransport::new(
            "brws",
            "browserPasswordOf24Chrs0",
            BROWSER_SOCKET,
            BROWSER,
            now,
        );
        transport.keep_ice_events = true;
        BrowserPeer {
            transport,
            closed: false,
        }
    }

    /// Every ICE event, in order (tests look for `Connected`).
    pub fn ice_events(&self) -> &[IceEvent] {
        &self.transport.ice_events
    }

    /// Swap in another certificate after the SDP was written: the relay must refuse it.
    pub fn use_other_certificate(&mut self) {
        self.transport.use_other_certificate();
    }

    /// A Chrome-shaped offer: BUNDLE, actpass, extmap, RED/G722/PCMU, telephone-event at 48 and
    /// 8 kHz, an mDNS host candidate, our real host candidate and a TCP one, msid, ssrc.
    pub fn offer(&self) -> String {
        self.description(Setup::ActPass)
    }

    /// Chrome's answer to the relay's offer, taking DTLS role `setup` (`active` is what Chrome
    /// answers). Applies the offer.
    pub fn answer(
        &mut self,
        relay_offer: &str,
        setup: Setup,
        now: Instant,
    ) -> Result<String, String> {
        self.apply(relay_offer, setup, now)?;
        Ok(self.description(setup))
    }

    /// The relay's answer to our offer.
    pub fn accept_answer(&mut self, relay_answer: &str, now: Instant) -> Result<(), String> {
        let parsed = sdp::parse(relay_answer).map_err(|e| e.to_string())?;
        let ours = match parsed.setup() {
            Some(Setup::Passive) => Setup::Active,
            Some(Setup::Active) => Setup::Passive,
            other => return Err(format!("answer with a=setup {other:?}")),
        };
        self.apply(relay_answer, ours, now)
    }

    fn description(&self, setup: Setup) -> String {
        let creds = self.transport.ice.local_credentials();
        crlf(&format!(
            "v=0\n\
             o=- 4611731400430051336 2 IN IP4 127.0.0.1\n\
             s=-\n\
             t=0 0\n\
             a=group:BUNDLE 0\n\
             a=extmap-allow-mixed\n\
             a=msid-semantic: WMS stream\n\
             m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 110 126\n\
             c=IN IP4 0.0.0.0\n\
             a=rtcp:9 IN IP4 0.0.0.0\n\
             a=candidate:1 1 udp 2122260223 3f1c2e7a-0d7b-4f5e-9a51-9c1d2b3a4e5f.local 50000 typ host generation 0 network-cost 999\n\
             a=candidate:2 1 udp 2122194687 {ip} {port} typ host generation 0 network-cost 999\n\
             a=candidate:3 1 tcp 1518280447 {ip} 9 typ host tcptype active generation 0\n\
             a=ice-ufrag:{ufrag}\n\
             a=ice-pwd:{pwd}\n\
             a=ice-options:trickle\n\
             a=fingerprint:{fp}\n\
             a=setup:{setup}\n\
             a=mid:0\n\
             a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\n\
             a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\n\
             a=sendrecv\n\
             a=msid:stream track\n\
             a=rtcp-mux\n\
             a=rtcp-rsize\n\
             a=rtpmap:111 opus/48000/2\n\
             a=rtcp-fb:111 transport-cc\n\
             a=fmtp:111 minptime=10;useinbandfec=1\n\
             a=rtpmap:63 red/48000/2\n\
             a=fmtp:63 111/111\n\
             a=rtpmap:9 G722/8000\n\
             a=rtpmap:0 PCMU/8000\n\
             a=rtpmap:8 PCMA/8000\n\
             a=rtpmap:110 telephone-event/48000\n\
             a=rtpmap:126 telephone-event/8000\n\
             a=ssrc:3735928559 cname:browsercname\n\
             a=ssrc:3735928559 msid:stream track\n",
            ip = BROWSER.ip(),
            port = BROWSER.port(),
            ufrag = creds.ufrag,
            pwd = creds.pwd,
            fp = self.transport.fingerprint_sdp(),
        ))
    }

    /// Take the relay's credentials, candidates and fingerprint; our DTLS role follows `ours`.
    fn apply(&mut self, relay_sdp: &str, ours: Setup, now: Instant) -> Result<(), String> {
        let sd = sdp::parse(relay_sdp).map_err(|e| e.to_string())?;
        if !sd.ice_lite {
            return Err("the relay must be ICE-lite toward browsers".into());
        }
        let (ufrag, pwd) = sd.ice_credentials().ok_or("no ICE credentials")?;
        let fp = sd.fingerprint().ok_or("no fingerprint")?;
        let role = match ours {
            Setup::Active => DtlsRole::Client,
            _ => DtlsRole::Server,
        };
        let expect = Fingerprint {
            algorithm: fp.algorithm.clone(),
            bytes: fp.bytes.clone(),
        };
        self.transport.set_remote(
            IceCredentials::new(ufrag, pwd),
            sd.audio.candidates.iter().map(|c| (c.addr, c.priority)),
            expect,
            role,
            now,
        );
        Ok(())
    }

    pub fn is_ready(&self) -> bool {
        self.transport.is_ready()
    }

    /// Feed one datagram the relay sent us. Replies go to `out` (addressed from our socket
    /// label; the harness delivers them to the relay's internal socket from [`BROWSER`]).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        buf: &mut [u8],
        len: usize,
        out: &mut impl Outbox,
    ) -> Received {
        let Some(data) = buf.get(..len) else {
            return Received::Unexpected;
        };
        if self.closed {
            return Received::Unexpected;
        }
        let r = match classify(data) {
            PacketKind::Stun => match self.transport.handle_stun(now, from, data, out) {
                Ok(()) => Received::Stun,
                Err(_) => Received::Unexpected,
            },
            PacketKind::Dtls => {
                self.transport.handle_dtls(now, data);
                Received::Dtls
            }
            kind @ (PacketKind::Rtp | PacketKind::Rtcp) => {
                unprotect_media(self.transport.srtp.as_mut(), kind, &mut buf[..len])
            }
            PacketKind::Unknown => Received::Unexpected,
        };
        self.transport.after_input(now, out);
        r
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        self.transport.poll_timeout()
    }

    pub fn handle_timeout(&mut self, now: Instant, out: &mut impl Outbox) {
        self.transport.handle_timeout(now, out);
    }

    /// Protect an RTP packet we send (`buf[..len]` plaintext; `buf` needs room for the tag).
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        match self.transport.srtp.as_mut() {
            Some(s) => s.tx.protect_rtp(buf, len),
            None => Err(SrtpError::BadKeyLength),
        }
    }

    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        match self.transport.srtp.as_mut() {
            Some(s) => s.tx.protect_rtcp(buf, len),
            None => Err(SrtpError::BadKeyLength),
        }
    }
}
