//! Live listen-in: a supervisor's browser receives both directions of a live call, as they
//! cross the relay, without transcoding.
//!
//! One peer connection, two audio tracks (consumer: what WhatsApp sends; agent: what is sent
//! to WhatsApp, whichever agent across transfers), on the fork's own UDP port. The relay is
//! ICE-lite and the DTLS server, exactly as on the browser-agent internal leg
//! (`call/internal_webrtc.rs`): the browser runs the checks, nominates with USE-CANDIDATE and
//! sends the ClientHello; its later checks on the pair are its consent. Each track is an
//! [`OutboundStream`] of its own (own SSRC, continuous sequence and timestamps across the
//! agent's SSRC changes), SRTP-protected with the keys of the one handshake.
//!
//! A listen-in never harms the call: every packet it cannot send (not connected yet, a
//! packet too large for its scratch, a refused protect) is a counted drop; sends are UDP, so
//! a supervisor that went away costs nothing but the kernel's send. A supervisor that stops
//! its consent checks and RTCP for `call.webrtc_idle_timeout` is gone: the fork stops itself
//! (the call goes on). Setup failures (no nomination in `call.ice_connect_timeout`, DTLS
//! failing or timing out, a certificate that does not match the fingerprint) stop the fork
//! the same way.
//!
//! A media server (a recorder, a QA probe: SIPREC-like) listens instead with an `RTP/AVP` or
//! `RTP/SAVP` offer: each track goes to the address its m-line names, plain or SDES-SRTP with
//! the key in our answer, from the same fork port. There is nothing to set up (the session is
//! live from the answer on) and no proof of life to time out on: it runs until stopped by
//! request or by the call's end, and a stop sends an RTCP BYE on each stream.
//!
//! Sans-IO like the call: [`ListenSession::handle_datagram`] for what arrives on the fork's
//! socket, [`ListenSession::handle_timeout`] when [`ListenSession::poll_timeout`] is due,
//! [`ListenSession::forward`] per packet of the call.

pub mod sdp;
#[doc(hidden)]
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::{ListenChange, ListenMode, ListenState, ListenStatus};
use crate::call::CallConfig;
use crate::call::rewrite::{OutboundStream, Source};
use crate::dtls::{DtlsConfig, DtlsDriver, DtlsEvent, DtlsIdentity, DtlsRole};
use crate::ice::{IceConfig, IceCredentials, IceEvent, LiteAgent};
use crate::net::{Outbox, SocketRef};
use crate::record::Direction;
use crate::srtp::{MasterKey, SrtpContext, SrtpSession, random_master_key};
use crate::wire::classify::{PacketKind, classify};
use crate::wire::rtcp;
use crate::wire::rtp::{self, Clock, Pt, RtpHeader, Ssrc};
use crate::wire::stun;

/// Opus's RTP clock (RFC 7587).
const OPUS_CLOCK: Clock = Clock::OPUS;
/// The largest forwarded packet: an Ethernet MTU's worth. Room for the SRTP tag is added.
const MAX_PACKET: usize = 1500;
/// The longest SRTP trailer of the profiles we negotiate (AEAD-GCM's 16-byte tag).
const SRTP_TRAILER: usize = 16;
/// Once stopped, what a repeated stop answers with.
pub const STOPPED_BY_REQUEST: &str = "stopped by request";

/// What the fork needs to answer the supervisor.
pub struct ListenParams<'a> {
    /// The fork's socket in the call's list.
    pub socket: SocketRef,
    /// Its bound address.
    pub local: SocketAddr,
    /// The address the supervisor reaches it at (the host candidate in our answer).
    pub advertised: SocketAddr,
    pub identity: Arc<DtlsIdentity>,
    pub cfg: &'a CallConfig,
    pub mode: ListenMode,
}

/// An outbox for a session stopped where nothing can be sent (the call ended without an
/// outbox at hand): its close_notify is dropped.
pub struct Discard;

impl Outbox for Discard {
    fn push(&mut self, _via: SocketRef, _to: SocketAddr, _data: &[u8]) {}
}

pub struct ListenSession {
    socket: SocketRef,
    local: SocketAddr,
    mode: ListenMode,
    /// The listener's offer as given (a repeat of it is the same session).
    offer: String,
    answer: String,
    link: Link,
    /// Consumer, agent.
    tracks: [Track; 2],
    dropped: u64,
    stopped: Option<String>,
    /// Changes the call has not reported yet (Connected, then maybe Stopped).
    pending: [Option<ListenChange>; 2],
}

/// How the tracks reach the listener.
enum Link {
    /// A browser: ICE-lite, DTLS-SRTP, both tracks to the nominated address.
    WebRtc(Box<WebRtcLink>),
    /// A media server (SIPREC-like): each track to its own address, plain or SDES-SRTP.
    Rtp(Box<RtpLink>),
}

struct WebRtcLink {
    ice: LiteAgent,
    dtls: DtlsDriver,
    srtp: Option<Box<SrtpSession>>,
    /// The pair the browser nominated: where the tracks go, and the only source of DTLS and
    /// RTCP we read.
    remote: Option<SocketAddr>,
    /// No nomination by then: the fork stops.
    connect_by: Option<Instant>,
    idle_timeout: Duration,
    /// The supervisor's last authenticated RTCP (its receiver reports): proof of life beside
    /// its consent checks.
    last_rtcp: Option<Instant>,
}

/// A media server gives no proof of life the relay could wait for (no ICE consent), so this
/// link has no timers: it runs until stopped by request or by the call's end, and costs the
/// call nothing but a UDP send per packet if the server went away.
struct RtpLink {
    /// Where each track's RTP goes (the offer's `c=` and port), consumer first.
    rtp: [SocketAddr; 2],
    /// Where each track's RTCP goes (the RTP address with `a=rtcp-mux`, else port + 1): only
    /// the BYE at the end.
    rtcp: [SocketAddr; 2],
    /// SDES: each track's sending context (keyed with the key in our answer).
    srtp: [Option<Box<SrtpContext>>; 2],
}

struct Track {
    tx: OutboundStream,
    opus_pt: Pt,
}

impl ListenSession {
    /// A session for the listener's `offer` (two audio m-lines: a browser's WebRTC offer or a
    /// media server's RTP/AVP or RTP/SAVP one), and the answer to give it. The error says what
    /// is wrong with the offer.
    pub fn new(offer: &str, p: ListenParams<'_>, now: Instant) -> Result<ListenSession, String> {
        let parsed = sdp::parse_offer(offer)?;
        let ssrcs = [rand::random::<Ssrc>(), rand::random::<Ssrc>()];
        let cname = format!("relay-listen-{}", rand::random::<u32>());
        let session_id = u64::from(rand::random::<u32>());
        let (link, answer, pending) = match &parsed.transport {
            sdp::OfferedTransport::WebRtc {
                ice_ufrag,
                ice_pwd,
                fingerprint,
            } => {
                let creds = IceCredentials::random();
                let answer = sdp::write_answer(
                    &parsed,
                    &sdp::AnswerParams {
                        session_id,
                        addr: p.advertised,
                        ufrag: &creds.ufrag,
                        pwd: &creds.pwd,
                        fingerprint: p.identity.fingerprint(),
                        ssrcs,
                        cname: &cname,
                        keys: None,
                    },
                );
                let mut ice = LiteAgent::new(
                    creds,
                    now,
                    IceConfig {
                        connect_timeout: p.cfg.ice_connect_timeout,
                        consent_timeout: p.cfg.consent_timeout,
                        ..IceConfig::default()
                    },
                );
                ice.set_remote_credentials(IceCredentials {
                    ufrag: ice_ufrag.clone(),
                    pwd: ice_pwd.clone(),
                });
                let dtls = DtlsDriver::new(
                    p.identity,
                    &DtlsConfig {
                        flight_start_rto: p.cfg.dtls_flight_rto,
                        handshake_timeout: p.cfg.dtls_timeout,
                        ..DtlsConfig::default()
                    },
                    // We answer `a=setup:passive`: the browser connects.
                    DtlsRole::Server,
                    fingerprint.clone(),
                    now,
                );
                let link = Link::WebRtc(Box::new(WebRtcLink {
                    ice,
                    dtls,
                    srtp: None,
                    remote: None,
                    connect_by: Some(now + p.cfg.ice_connect_timeout),
                    idle_timeout: p.cfg.webrtc_idle_timeout,
                    last_rtcp: None,
                }));
                (link, answer, [None, None])
            }
            sdp::OfferedTransport::Rtp { .. } => {
                let keys: Option<[MasterKey; 2]> =
                    match (parsed.tracks[0].crypto, parsed.tracks[1].crypto) {
                        (Some((_, c)), Some((_, a))) => {
                            Some([random_master_key(c), random_master_key(a)])
                        }
                        _ => None,
                    };
                let mut srtp: [Option<Box<SrtpContext>>; 2] = [None, None];
                if let Some(keys) = &keys {
                    for (slot, key) in srtp.iter_mut().zip(keys) {
                        *slot = Some(Box::new(
                            SrtpContext::new(key).map_err(|e| format!("SRTP key: {e}"))?,
                        ));
                    }
                }
                let answer = sdp::write_answer(
                    &parsed,
                    &sdp::AnswerParams {
                        session_id,
                        addr: p.advertised,
                        ufrag: "",
                        pwd: "",
                        fingerprint: p.identity.fingerprint(),
                        ssrcs,
                        cname: &cname,
                        keys: keys.as_ref(),
                    },
                );
                let target = |i: usize| -> Result<(SocketAddr, SocketAddr), String> {
                    let t = &parsed.tracks[i];
                    let rtp = t.target.ok_or("an RTP track without an address")?;
                    let rtcp = if t.rtcp_mux {
                        rtp
                    } else {
                        SocketAddr::new(rtp.ip(), rtp.port().wrapping_add(1))
                    };
                    Ok((rtp, rtcp))
                };
                let (c, a) = (target(0)?, target(1)?);
                let link = Link::Rtp(Box::new(RtpLink {
                    rtp: [c.0, a.0],
                    rtcp: [c.1, a.1],
                    srtp,
                }));
                // Nothing to set up: live from the answer on.
                (link, answer, [Some(ListenChange::Connected), None])
            }
        };
        let track = |i: usize| Track {
            tx: OutboundStream::new(ssrcs[i], OPUS_CLOCK, rand::random(), rand::random()),
            opus_pt: parsed.tracks[i].opus_pt,
        };
        Ok(ListenSession {
            socket: p.socket,
            local: p.local,
            mode: p.mode,
            offer: offer.to_string(),
            answer,
            link,
            tracks: [track(0), track(1)],
            dropped: 0,
            stopped: None,
            pending,
        })
    }

    pub fn socket(&self) -> SocketRef {
        self.socket
    }

    pub fn offer(&self) -> &str {
        &self.offer
    }

    pub fn answer(&self) -> &str {
        &self.answer
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.is_some()
    }

    pub fn status(&self) -> ListenStatus {
        let (live, remote) = match &self.link {
            Link::WebRtc(w) => (w.srtp.is_some(), w.remote),
            Link::Rtp(r) => (true, Some(r.rtp[0])),
        };
        let state = if self.stopped.is_some() {
            ListenState::Stopped
        } else if live {
            ListenState::Live
        } else {
            ListenState::Connecting
        };
        ListenStatus {
            state,
            mode: self.mode,
            answer_sdp: self.answer.clone(),
            local: self.local,
            remote,
            consumer_packets: self.tracks[0].tx.packets,
            agent_packets: self.tracks[1].tx.packets,
            dropped_packets: self.dropped,
            stop_reason: self.stopped.clone(),
        }
    }

    /// Is `from` the listener: the browser's nominated address, or one of the media server's
    /// RTP or RTCP addresses? (Checks from a browser's other candidates are strangers to the
    /// shard's rate limit until ICE picks one, as on the browser-agent leg.)
    pub fn knows_source(&self, from: SocketAddr) -> bool {
        match &self.link {
            Link::WebRtc(w) => w.remote == Some(from),
            Link::Rtp(r) => r.rtp.contains(&from) || r.rtcp.contains(&from),
        }
    }

    /// The next change to report as an event, oldest first.
    pub fn poll_change(&mut self) -> Option<ListenChange> {
        let first = self.pending.iter_mut().find(|c| c.is_some())?;
        first.take()
    }

    /// One datagram on the fork's socket: a browser's checks, DTLS and RTCP; a media server's
    /// RTCP (read no further: it has nothing the relay acts on).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        buf: &mut [u8],
        out: &mut impl Outbox,
    ) {
        if self.stopped.is_some() {
            return;
        }
        let w = match &mut self.link {
            Link::WebRtc(w) => w,
            Link::Rtp(r) => {
                // A listener sends no media (whisper will); its receiver reports are welcome
                // and unread; anything else is noise.
                let known = r.rtp.contains(&from) || r.rtcp.contains(&from);
                if !(known && classify(buf) == PacketKind::Rtcp) {
                    self.dropped += 1;
                }
                return;
            }
        };
        match classify(buf) {
            PacketKind::Stun => match stun::parse(buf) {
                Ok(msg) => w.ice.handle_stun(now, self.socket, from, &msg, buf, out),
                Err(_) => self.dropped += 1,
            },
            PacketKind::Dtls if w.remote == Some(from) => w.dtls.handle_datagram(now, buf),
            PacketKind::Rtcp if w.remote == Some(from) => {
                let len = buf.len();
                match w
                    .srtp
                    .as_mut()
                    .map(|s| s.rx.unprotect_rtcp(&mut buf[..len]))
                {
                    Some(Ok(_)) => w.last_rtcp = Some(now),
                    _ => self.dropped += 1,
                }
            }
            // A listener sends no media (whisper will); anything else is noise.
            _ => self.dropped += 1,
        }
        self.after_input(now, out);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.stopped.is_some() {
            return None;
        }
        let Link::WebRtc(w) = &self.link else {
            return None;
        };
        [
            w.ice.poll_timeout(),
            w.dtls.poll_timeout(),
            w.connect_by,
            w.idle_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn handle_timeout(&mut self, now: Instant, out: &mut impl Outbox) {
        if self.stopped.is_some() {
            return;
        }
        let Link::WebRtc(w) = &mut self.link else {
            return;
        };
        w.ice.handle_timeout(now, out);
        w.dtls.handle_timeout(now);
        if w.connect_by.is_some_and(|t| now >= t) {
            return self.stop("no ICE nomination from the supervisor in time", out);
        }
        if w.idle_deadline().is_some_and(|t| now >= t) {
            return self.stop("supervisor gone (no consent check or RTCP)", out);
        }
        self.after_input(now, out);
    }

    /// Stop forwarding and report `Stopped` once. Idempotent. A browser gets DTLS
    /// close_notify (it sees the transport close at once); a media server an RTCP BYE on each
    /// stream.
    pub fn stop(&mut self, reason: &str, out: &mut impl Outbox) {
        if self.stopped.is_some() {
            return;
        }
        self.stopped = Some(reason.to_string());
        match &mut self.link {
            Link::WebRtc(w) => {
                w.dtls.close();
                w.flush_dtls(self.socket, out);
            }
            Link::Rtp(r) => {
                for (i, track) in self.tracks.iter().enumerate() {
                    let mut buf = [0u8; 64];
                    let Ok(n) = rtcp::write_bye(&mut buf, track.tx.ssrc()) else {
                        continue;
                    };
                    let n = match r.srtp[i].as_deref_mut() {
                        Some(ctx) => match ctx.protect_rtcp(&mut buf, n) {
                            Ok(n) => n,
                            Err(_) => continue,
                        },
                        None => n,
                    };
                    out.push(self.socket, r.rtcp[i], &buf[..n]);
                }
            }
        }
        self.pending[1] = Some(ListenChange::Stopped);
    }

    /// One packet of the call (`packet`: plaintext header and Opus payload, parsed as `hdr`),
    /// copied to the listener on the track of its direction. Never fails the call: what
    /// cannot be sent is counted.
    #[inline]
    pub fn forward(
        &mut self,
        dir: Direction,
        now: Instant,
        hdr: &RtpHeader,
        packet: &[u8],
        out: &mut impl Outbox,
    ) {
        if self.stopped.is_some() {
            self.dropped += 1;
            return;
        }
        let (to, srtp) = match &mut self.link {
            Link::WebRtc(w) => match (w.remote, w.srtp.as_deref_mut()) {
                (Some(to), Some(s)) => (to, Some(&mut s.tx)),
                _ => {
                    self.dropped += 1;
                    return;
                }
            },
            Link::Rtp(r) => (r.rtp[dir as usize], r.srtp[dir as usize].as_deref_mut()),
        };
        let n = packet.len();
        let mut pkt = [0u8; MAX_PACKET + SRTP_TRAILER];
        let Some(dst) = pkt.get_mut(..n).filter(|_| n <= MAX_PACKET) else {
            self.dropped += 1;
            return;
        };
        dst.copy_from_slice(packet);
        let track = &mut self.tracks[dir as usize];
        let Ok(n) = rtp::strip_extensions_and_csrc(&mut pkt, n) else {
            self.dropped += 1;
            return;
        };
        let Ok(rw) = track.tx.next(Source::forwarded(hdr), now) else {
            self.dropped += 1;
            return;
        };
        let Ok(mut header) = rtp::HeaderMut::new(&mut pkt) else {
            self.dropped += 1;
            return;
        };
        header
            .set_pt(track.opus_pt)
            .set_marker(hdr.marker || rw.marker)
            .set_seq(rw.seq)
            .set_ts(rw.ts)
            .set_ssrc(rw.ssrc);
        let sent = match srtp {
            Some(ctx) => ctx.protect_rtp(&mut pkt, n),
            None => Ok(n),
        };
        match sent {
            Ok(len) => {
                out.push(self.socket, to, &pkt[..len]);
                track.tx.count_sent(n.saturating_sub(rtp::FIXED_HEADER_LEN));
            }
            Err(_) => self.dropped += 1,
        }
    }

    /// Follow the browser's nomination, flush DTLS flights to it, install the keys.
    fn after_input(&mut self, now: Instant, out: &mut impl Outbox) {
        let Link::WebRtc(w) = &mut self.link else {
            return;
        };
        while let Some(ev) = w.ice.poll_event() {
            match ev {
                IceEvent::Connected { remote, .. } => {
                    w.remote = Some(remote);
                    w.connect_by = None;
                    w.dtls.start(now);
                }
                IceEvent::SelectedPairChanged { remote, .. } => w.remote = Some(remote),
                IceEvent::ConsentLost => {
                    return self.stop("supervisor gone (consent lost)", out);
                }
                IceEvent::Failed => return self.stop("ICE failed toward the supervisor", out),
            }
        }
        w.flush_dtls(self.socket, out);
        while let Some(ev) = w.dtls.poll_event() {
            let reason = match ev {
                DtlsEvent::Connected { keys, .. } => match SrtpSession::new(&keys) {
                    Ok(s) => {
                        w.srtp = Some(Box::new(s));
                        self.pending[0] = Some(ListenChange::Connected);
                        continue;
                    }
                    Err(_) => "SRTP keys from the supervisor's DTLS are unusable".to_string(),
                },
                DtlsEvent::Failed(f) => format!("DTLS toward the supervisor failed: {f}"),
                DtlsEvent::Closed => "closed by the supervisor".to_string(),
            };
            return self.stop(&reason, out);
        }
    }
}

impl WebRtcLink {
    /// Once connected: the browser's last consent check or RTCP, whichever is later, plus the
    /// idle timeout.
    fn idle_deadline(&self) -> Option<Instant> {
        let check = self.ice.last_consent()?;
        let last = self.last_rtcp.map_or(check, |r| r.max(check));
        Some(last + self.idle_timeout)
    }

    fn flush_dtls(&mut self, socket: SocketRef, out: &mut impl Outbox) {
        let Some(to) = self.remote else {
            return;
        };
        let mut scratch = [0u8; 1500];
        while let Some(n) = self.dtls.poll_transmit(&mut scratch) {
            out.push(socket, to, &scratch[..n]);
        }
    }
}
