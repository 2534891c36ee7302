//! The WhatsApp side of a load-test call: e2e's [`MetaLink`] for everything Meta does before
//! media (its SDP, the ICE-lite responder, DTLS in the role the relay's answer leaves it, SDES
//! keys; the rules are written there once, for the e2e tests and for this), and this crate's
//! media on top: a stamped Opus-like packet every 20 ms while media is on and an SR every 5 s,
//! protected in place with the relay's SRTP straight into the generator's send batch; received
//! packets unprotected in place and counted, never copied.
//!
//! Per media packet nothing here allocates: the link sees only STUN and DTLS (the relay's checks
//! and the handshake), and the media path is [`WaPeer::tick`] and the media arm of
//! [`WaPeer::handle`].

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Instant;

use e2e::meta::{Demux, Family, MediaKeys, MetaConfig, MetaError, MetaLink, demux};
use e2e::rtp::is_rtcp;
use relay::engine::udp::SendBatch;
use relay::srtp::SrtpSession;

use crate::peer::media::{MediaRx, MediaTx, Received};
use crate::stats::Totals;

/// One WhatsApp-side peer (see the module doc).
pub struct WaPeer {
    fd: RawFd,
    link: MetaLink,
    /// Where media goes: the link's target, or the raw forwarder's address.
    target: Option<SocketAddr>,
    srtp: Option<SrtpSession>,
    /// Plain RTP once keyed (no SRTP).
    plain: bool,
    pub tx: MediaTx,
    pub rx: MediaRx,
}

impl std::fmt::Debug for WaPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaPeer")
            .field("link", &self.link)
            .field("target", &self.target)
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

impl WaPeer {
    /// A peer at `local` behaving as `cfg` says (IPv4 only: `local` is its one socket).
    pub fn new(local: SocketAddr, cfg: MetaConfig) -> Result<Self, MetaError> {
        let link = MetaLink::new(cfg, local, None)?;
        let (opus_pt, _) = link.payload_types();
        let tx = MediaTx::new(link.ssrc(), opus_pt);
        Ok(WaPeer {
            fd: -1,
            link,
            target: None,
            srtp: None,
            plain: false,
            tx,
            rx: MediaRx::default(),
        })
    }

    /// The socket this peer sends from (set by the generator thread that owns it).
    pub fn attach(&mut self, fd: RawFd) {
        self.fd = fd;
    }

    pub fn local(&self) -> SocketAddr {
        self.link.local_addrs().0
    }

    /// The `connect` webhook's offer, as Meta writes it.
    pub fn offer_sdp(&self) -> String {
        self.link.offer_sdp()
    }

    /// Learns the relay's answer. Returns the relay's addresses (its candidates), from which
    /// its checks, DTLS and media will come (SDES and plain: the answer's media address).
    pub fn set_answer(&mut self, sdp: &str, now: Instant) -> Result<Vec<SocketAddr>, MetaError> {
        self.link.set_remote_sdp(sdp)?;
        self.key_media(now);
        if let Some(why) = self.link.failure() {
            return Err(MetaError::Srtp(e2e::srtp::SrtpError(why.to_string())));
        }
        let addrs = self.link.remote_addrs();
        if addrs.is_empty() {
            return Err(MetaError::Missing("a candidate or c= address"));
        }
        Ok(addrs)
    }

    /// Plain mode without an answer (the raw forwarder): send media to `to` from now on.
    pub fn set_plain_target(&mut self, to: SocketAddr) {
        self.target = Some(to);
        self.plain = true;
    }

    /// Media can flow: SRTP keys are up (or plain mode has a target).
    pub fn is_ready(&self) -> bool {
        self.target.is_some() && (self.srtp.is_some() || self.plain)
    }

    /// Why setup failed (DTLS, SRTP keys), if it did.
    pub fn failure(&self) -> Option<&str> {
        self.link.failure()
    }

    /// Takes the link's keys when it has them, and follows its target (nominations).
    fn key_media(&mut self, now: Instant) {
        match self.link.take_keys() {
            Some(MediaKeys::Srtp(keys)) => match SrtpSession::new(&keys) {
                Ok(s) => {
                    self.srtp = Some(s);
                    self.tx.enable_rtcp(now);
                }
                Err(e) => self.link.fail(format!("SRTP keys: {e}")),
            },
            Some(MediaKeys::Plain) => {
                self.plain = true;
                self.tx.enable_rtcp(now);
            }
            None => {}
        }
        if let Some((_, to)) = self.link.target() {
            self.target = Some(to);
        }
    }

    /// After the link handled STUN, DTLS or a timeout: its datagrams into `out`, keys.
    fn after_link(&mut self, now: Instant, out: &mut SendBatch) {
        while let Some((_, to, p)) = self.link.poll_transmit() {
            out.push(self.fd, to, &p);
        }
        self.key_media(now);
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
        match demux(buf) {
            Demux::Stun => {
                self.link.on_stun(now, Family::V4, from, buf);
                self.after_link(now, out);
            }
            Demux::Dtls => {
                self.link.on_dtls(now, Family::V4, from, buf);
                self.after_link(now, out);
            }
            Demux::Media => self.on_media(now, now_us, buf, totals),
            Demux::Other => totals.unknown_source += 1,
        }
    }

    /// When the DTLS driver wants [`Self::poll_dtls`] called.
    pub fn dtls_timeout(&self) -> Option<Instant> {
        self.link.poll_timeout()
    }

    /// DTLS retransmissions due at `now`.
    pub fn poll_dtls(&mut self, now: Instant, out: &mut SendBatch) {
        self.link.handle_timeout(now);
        self.after_link(now, out);
    }

    fn on_media(&mut self, now: Instant, now_us: u64, buf: &mut [u8], totals: &mut Totals) {
        let len = match self.srtp.as_mut() {
            None if self.plain => buf.len(),
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
