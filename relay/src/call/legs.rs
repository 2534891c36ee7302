//! A call's legs: one [`Leg`] type for every leg, held by the call in a list indexed by
//! [`LegId`]. The WhatsApp leg is always [`LegId::WHATSAPP`] and the internal leg
//! [`LegId::INTERNAL`]; a leg added later would be another entry after them. (A supervisor's
//! listen-in is not a leg today: it runs its own session on its own socket, see `fork.rs`.)
//!
//! What differs between legs is their [`Transport`]: ICE (the relay the controlling full agent)
//! and DTLS toward Meta, ICE-lite and DTLS toward a browser ([`WebRtcTransport`]), or none
//! (plain RTP, SDES-SRTP with keys from the SDP). Everything else (SRTP, the outbound stream
//! and its numbering, receive statistics, the RTCP schedule, DTMF reporting, keys and
//! descriptions, where media goes and is accepted from) is the same on every leg and written
//! once here.

use std::net::SocketAddr;
use std::time::Instant;

use crate::api::{LegKind, SourcePolicy};
use crate::call::bot::BotLeg;
use crate::call::fill::ArrivalGaps;
use crate::call::internal_webrtc::WebRtcTransport;
use crate::call::rewrite::OutboundStream;
use crate::call::seq_window::SeqWindow;
use crate::call::stats::{DropReason, LegCounters};
use crate::call::transcode::Transcode;
use crate::dtls::DtlsDriver;
use crate::ice::ControllingAgent;
use crate::net::SocketRef;
use crate::srtp::{MasterKey, SrtpError, SrtpSession};
use crate::wire::rtp::{Clock, Pt, RtpTs};

/// Opus always runs at 48 kHz RTP clock (RFC 7587).
pub const OPUS_CLOCK: Clock = Clock::OPUS;

/// A description as applied: its SHA-256, enough to tell the same text again from a different
/// one without keeping the text.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SdpDigest([u8; 32]);

impl SdpDigest {
    pub fn of(text: &str) -> SdpDigest {
        use sha2::Digest;
        SdpDigest(sha2::Sha256::digest(text.as_bytes()).into())
    }
}

/// A leg's place in the call's list.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct LegId(u8);

impl LegId {
    /// Toward Meta.
    pub const WHATSAPP: LegId = LegId(0);
    /// Toward the business (media server, IVR, browser agent).
    pub const INTERNAL: LegId = LegId(1);

    pub const fn new(index: u8) -> LegId {
        LegId(index)
    }

    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    pub(crate) const fn index_const(self) -> usize {
        self.0 as usize
    }

    /// The API's name for the two legs every call has.
    pub fn of(kind: LegKind) -> LegId {
        match kind {
            LegKind::WhatsApp => LegId::WHATSAPP,
            LegKind::Internal => LegId::INTERNAL,
        }
    }
}

/// ICE toward Meta: the relay is the controlling full agent, and DTLS runs over the pair it
/// nominates (created once Meta's fingerprint is known).
pub struct IceTransport {
    pub agent: ControllingAgent,
    pub dtls: Option<DtlsDriver>,
}

/// How a leg reaches its peer, beyond UDP.
pub enum Transport {
    /// Plain RTP, or SDES-SRTP (keys from the SDP): nothing to run.
    None,
    /// ICE (controlling) + DTLS-SRTP toward Meta. Boxed: the agent is large and most legs
    /// have none.
    Ice(Box<IceTransport>),
    /// ICE-lite + DTLS-SRTP toward a browser.
    WebRtc(Box<WebRtcTransport>),
    /// A voice bot over a WebSocket (the internal leg of `InternalKind::WebSocket`, once the
    /// bot is attached): decoded audio out, its playout in (see `bot.rs`).
    Bot(Box<BotLeg>),
}

pub struct Leg {
    pub transport: Transport,
    /// The leg's sockets (the WhatsApp leg: one per address family; others: one). Datagrams on
    /// them are this leg's.
    pub sockets: [Option<SocketRef>; 2],
    /// SRTP keys once known (DTLS connected, or SDES); always `None` for plain RTP. Boxed: two
    /// SRTP contexts are ~9 KB and most of a call's size.
    pub srtp: Option<Box<SrtpSession>>,
    /// An SRTP leg: nothing is sent or accepted in the clear, even before the keys exist.
    pub secure: bool,
    /// Where media goes and is accepted from: the socket (`via`) and the peer (`remote`) —
    /// the ICE-selected pair, the SDP address, latched, or the pair a browser nominated.
    pub via: SocketRef,
    pub remote: Option<SocketAddr>,
    pub policy: SourcePolicy,
    /// Latch mode: the remote was learned from the first packet.
    pub latched: bool,
    /// The previous peer after a transfer: never accepted, not even by latching (it keeps
    /// sending until it processes our BYE).
    pub refused: Option<SocketAddr>,
    pub opus_pt: Pt,
    pub te_pt: Option<Pt>,
    /// Our outbound stream toward the peer.
    pub tx: OutboundStream,
    pub counters: LegCounters,
    /// Plain RTP only (SRTP has its own): sequence numbers received, to refuse replays.
    pub rx_window: SeqWindow,
    /// Inter-arrival gaps of the leg's media: how long silence fill waits for it.
    pub arrivals: ArrivalGaps,
    /// Our SDES key, kept until the peer's description arrives.
    pub local_key: Option<MasterKey>,
    /// The peer's description applied so far, as its digest (a repeat is idempotent; the
    /// text itself, ~1 KiB, is not kept).
    pub remote_sdp: Option<SdpDigest>,
    /// Our RTCP CNAME on this leg.
    pub cname: String,
    /// The next RTCP report due on this leg (`None`: not scheduled yet).
    pub next_rtcp: Option<Instant>,
    /// The first media from the peer was reported (`FirstMedia`).
    pub first_media_in: bool,
    /// Timestamp of the last DTMF event reported (one event per digit, not per packet).
    pub last_dtmf_ts: Option<RtpTs>,
    /// A G.711 leg (the peer has no Opus): the codec state of both directions. Boxed: two
    /// libopus states and their buffers, ~60 KB, for the few legs that need them.
    pub transcode: Option<Box<Transcode>>,
}

impl Leg {
    /// A leg with nothing negotiated yet: our stream `tx`, on `sockets`, sending from `via`.
    pub fn new(
        sockets: [Option<SocketRef>; 2],
        via: SocketRef,
        tx: OutboundStream,
        cname: String,
    ) -> Leg {
        Leg {
            transport: Transport::None,
            sockets,
            srtp: None,
            secure: false,
            via,
            remote: None,
            policy: SourcePolicy::Strict,
            latched: false,
            refused: None,
            opus_pt: Pt::new(111),
            te_pt: None,
            tx,
            counters: LegCounters::default(),
            rx_window: SeqWindow::default(),
            arrivals: ArrivalGaps::default(),
            local_key: None,
            remote_sdp: None,
            cname,
            next_rtcp: None,
            first_media_in: false,
            last_dtmf_ts: None,
            transcode: None,
        }
    }

    /// The RTP clock of the leg's audio: 8 kHz for G.711, else Opus's 48 kHz.
    pub fn clock_rate(&self) -> Clock {
        match self.transcode {
            Some(_) => crate::call::transcode::G711_CLOCK,
            None => OPUS_CLOCK,
        }
    }

    /// Are datagrams on `via` this leg's?
    pub fn owns(&self, via: SocketRef) -> bool {
        self.sockets.contains(&Some(via))
    }

    /// The pair media goes to, once known.
    pub fn path(&self) -> Option<(SocketRef, SocketAddr)> {
        self.remote.map(|r| (self.via, r))
    }

    /// The peer the leg's socket may be connected to (the engine's connected twin): the path
    /// once it is fixed — ICE's nominated pair, the SDES or SDP address, the latched source, a
    /// browser's nominated pair. A latching leg that has not latched yet has none (its first
    /// sender decides), nor does a bot leg (no datagrams).
    #[inline]
    pub fn fixed_peer(&self) -> Option<(SocketRef, SocketAddr)> {
        if (self.policy == SourcePolicy::Latch && !self.latched)
            || matches!(self.transport, Transport::Bot(_))
        {
            return None;
        }
        self.path()
    }

    pub fn set_path(&mut self, via: SocketRef, remote: SocketAddr) {
        self.via = via;
        self.remote = Some(remote);
    }

    /// The ICE transport toward Meta, if this leg runs one.
    pub fn ice(&self) -> Option<&IceTransport> {
        match &self.transport {
            Transport::Ice(t) => Some(t),
            _ => None,
        }
    }

    pub fn ice_mut(&mut self) -> Option<&mut IceTransport> {
        match &mut self.transport {
            Transport::Ice(t) => Some(t),
            _ => None,
        }
    }

    /// The WebRTC transport toward a browser, if this leg runs one.
    pub fn webrtc(&self) -> Option<&WebRtcTransport> {
        match &self.transport {
            Transport::WebRtc(t) => Some(t),
            _ => None,
        }
    }

    pub fn webrtc_mut(&mut self) -> Option<&mut WebRtcTransport> {
        match &mut self.transport {
            Transport::WebRtc(t) => Some(t),
            _ => None,
        }
    }

    /// The leg's DTLS handshake, whichever transport runs it.
    pub fn dtls(&self) -> Option<&DtlsDriver> {
        match &self.transport {
            Transport::Ice(t) => t.dtls.as_ref(),
            Transport::WebRtc(t) => t.dtls.as_ref(),
            Transport::None | Transport::Bot(_) => None,
        }
    }

    pub fn dtls_mut(&mut self) -> Option<&mut DtlsDriver> {
        match &mut self.transport {
            Transport::Ice(t) => t.dtls.as_mut(),
            Transport::WebRtc(t) => t.dtls.as_mut(),
            Transport::None | Transport::Bot(_) => None,
        }
    }

    /// The voice bot this leg carries, if any.
    pub fn bot(&self) -> Option<&BotLeg> {
        match &self.transport {
            Transport::Bot(b) => Some(b),
            _ => None,
        }
    }

    pub fn bot_mut(&mut self) -> Option<&mut BotLeg> {
        match &mut self.transport {
            Transport::Bot(b) => Some(b),
            _ => None,
        }
    }

    /// The transport's next deadline (ICE checks and consent, DTLS retransmission, a bot's
    /// playout tick).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.transport {
            Transport::Ice(t) => [
                t.agent.poll_timeout(),
                t.dtls.as_ref().and_then(|d| d.poll_timeout()),
            ]
            .into_iter()
            .flatten()
            .min(),
            Transport::WebRtc(t) => t.poll_timeout(),
            Transport::Bot(b) => b.poll_timeout(),
            Transport::None => None,
        }
    }

    /// Media and DTLS are accepted from the path, or (ICE) from any pair ICE validated (Meta's
    /// lite side may prefer another nominated pair); everything else is a stranger.
    #[inline]
    pub fn accepts(&self, via: SocketRef, from: SocketAddr) -> bool {
        (self.via == via && self.remote == Some(from))
            || self
                .ice()
                .is_some_and(|ice| ice.agent.is_valid_pair(via, from))
    }

    /// Does the leg expect datagrams from `from` on `via` (for the shard's rate limit)? Its
    /// path and validated pairs, and the remote candidates ICE is checking (their first
    /// responses arrive before the pair is valid).
    pub fn knows(&self, via: SocketRef, from: SocketAddr) -> bool {
        self.accepts(via, from)
            || self
                .ice()
                .is_some_and(|ice| ice.agent.is_remote_candidate(via, from))
    }

    /// Where media may go now: the path, once a secure leg has its keys.
    pub fn send_target(&self) -> Option<SocketAddr> {
        if self.secure && self.srtp.is_none() {
            return None;
        }
        self.remote
    }

    /// SRTP-unprotect an inbound RTP packet in `buf` in place (plain RTP passes through) and
    /// return the plaintext length.
    pub fn unprotect_rtp(&mut self, buf: &mut [u8]) -> Result<usize, DropReason> {
        match (self.srtp.as_mut(), self.secure) {
            (Some(srtp), _) => srtp.rx.unprotect_rtp(buf).map_err(srtp_drop_reason),
            (None, true) => Err(DropReason::NotReady),
            (None, false) => Ok(buf.len()),
        }
    }

    /// As [`Self::unprotect_rtp`], for RTCP.
    pub fn unprotect_rtcp(&mut self, buf: &mut [u8]) -> Result<usize, DropReason> {
        match (self.srtp.as_mut(), self.secure) {
            (Some(srtp), _) => srtp.rx.unprotect_rtcp(buf).map_err(srtp_drop_reason),
            (None, true) => Err(DropReason::NotReady),
            (None, false) => Ok(buf.len()),
        }
    }

    /// Is a datagram from `from` acceptable, latching it if the policy allows?
    pub fn accept_source(&mut self, from: SocketAddr) -> bool {
        match (self.remote, self.policy) {
            (Some(r), _) if r == from => true,
            _ if self.refused == Some(from) => false,
            (_, SourcePolicy::Latch) if !self.latched => {
                self.remote = Some(from);
                self.latched = true;
                true
            }
            _ => false,
        }
    }

    /// RFC 4733: the digit of a telephone-event payload with timestamp `ts`, once per event
    /// (the first packet with a new timestamp).
    pub fn new_dtmf_digit(&mut self, payload: &[u8], ts: RtpTs) -> Option<char> {
        let &event = payload.first()?;
        if self.last_dtmf_ts == Some(ts) {
            return None;
        }
        self.last_dtmf_ts = Some(ts);
        dtmf_digit(event)
    }
}

/// RFC 4733 §3.2: the digit an event code stands for (0-9, *, #, A-D), if any.
pub fn dtmf_digit(event: u8) -> Option<char> {
    Some(match event {
        0..=9 => (b'0' + event) as char,
        10 => '*',
        11 => '#',
        12..=15 => (b'A' + event - 12) as char,
        _ => return None,
    })
}

pub fn srtp_drop_reason(e: SrtpError) -> DropReason {
    match e {
        SrtpError::Replayed | SrtpError::TooOld => DropReason::Replayed,
        SrtpError::AuthFailed => DropReason::AuthFailed,
        _ => DropReason::Malformed,
    }
}
