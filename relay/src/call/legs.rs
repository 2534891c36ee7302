//! The two legs' state. The WhatsApp leg speaks ICE + DTLS-SRTP (or SDES-SRTP) toward Meta;
//! the internal leg speaks plain RTP or SDES-SRTP toward a media server, or ICE-lite +
//! DTLS-SRTP toward a browser ([`WebRtcTransport`]).

use std::net::SocketAddr;

use crate::api::SourcePolicy;
use crate::call::fill::ArrivalGaps;
use crate::call::internal_webrtc::WebRtcTransport;
use crate::call::rewrite::OutboundStream;
use crate::call::seq_window::SeqWindow;
use crate::call::stats::{DropReason, LegCounters};
use crate::call::transcode::Transcode;
use crate::dtls::DtlsDriver;
use crate::ice::ControllingAgent;
use crate::net::SocketRef;
use crate::srtp::{SrtpError, SrtpSession};

/// Opus always runs at 48 kHz RTP clock (RFC 7587).
pub const OPUS_CLOCK: u32 = 48_000;

pub struct WhatsAppLeg {
    /// `None` for SDES (no ICE toward Meta's SIP-style media).
    pub ice: Option<ControllingAgent>,
    /// `None` for SDES.
    pub dtls: Option<DtlsDriver>,
    /// Present once keys exist (DTLS connected, or SDES from the start). Boxed: two SRTP
    /// contexts are ~9 KB and most of a call's size, and plain-RTP internal legs have none.
    pub srtp: Option<Box<SrtpSession>>,
    /// Where media goes and is accepted from: the ICE-selected pair, or the SDES address.
    pub selected: Option<(SocketRef, SocketAddr)>,
    pub opus_pt: u8,
    pub te_pt: Option<u8>,
    /// Our outbound stream toward WhatsApp.
    pub tx: OutboundStream,
    pub counters: LegCounters,
}

impl WhatsAppLeg {
    /// Media and DTLS are accepted from the selected pair, or from any pair ICE validated
    /// (Meta's lite side may prefer another nominated pair); everything else is a stranger.
    pub fn accepts(&self, via: SocketRef, from: SocketAddr) -> bool {
        self.selected == Some((via, from))
            || self
                .ice
                .as_ref()
                .is_some_and(|ice| ice.is_valid_pair(via, from))
    }
}

pub struct InternalLeg {
    /// SDES- or DTLS-SRTP keys once known; always `None` for plain RTP.
    pub srtp: Option<Box<SrtpSession>>,
    /// SRTP legs (SDES, WebRTC): nothing is sent or accepted in the clear, even before the
    /// keys exist.
    pub secure: bool,
    /// WebRTC: the browser-facing ICE-lite agent and DTLS handshake. Boxed: most legs are
    /// plain RTP.
    pub webrtc: Option<Box<WebRtcTransport>>,
    /// Where media goes and is accepted from (SDP address, latched, or the pair the browser
    /// nominated).
    pub remote: Option<SocketAddr>,
    pub policy: SourcePolicy,
    /// Latch mode: the remote was learned from the first packet.
    pub latched: bool,
    /// The previous peer after a transfer: never accepted, not even by latching (it keeps
    /// sending until it processes our BYE).
    pub refused: Option<SocketAddr>,
    pub opus_pt: u8,
    pub te_pt: Option<u8>,
    pub tx: OutboundStream,
    pub counters: LegCounters,
    /// Plain RTP only (SRTP has its own): sequence numbers received, to refuse replays.
    pub rx_window: SeqWindow,
    /// Inter-arrival gaps of the leg's media: how long silence fill waits.
    pub arrivals: ArrivalGaps,
    /// A G.711 leg (the peer has no Opus): the codec state of both directions. Boxed: two
    /// libopus states and their buffers, ~60 KB, for the few legs that need them.
    pub transcode: Option<Box<Transcode>>,
}

impl InternalLeg {
    /// The RTP clock of the leg's audio: 8 kHz for G.711, else Opus's 48 kHz.
    pub fn clock_rate(&self) -> u32 {
        match self.transcode {
            Some(_) => crate::call::transcode::G711_CLOCK,
            None => OPUS_CLOCK,
        }
    }

    /// Where media may go now: the remote, once a secure leg has its keys.
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
}

pub fn srtp_drop_reason(e: SrtpError) -> DropReason {
    match e {
        SrtpError::Replayed | SrtpError::TooOld => DropReason::Replayed,
        SrtpError::AuthFailed => DropReason::AuthFailed,
        _ => DropReason::Malformed,
    }
}
