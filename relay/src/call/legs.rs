//! The two legs' state. The WhatsApp leg speaks ICE + DTLS-SRTP (or SDES-SRTP) toward Meta;
//! the internal leg speaks plain RTP or SDES-SRTP toward a media server.

use std::net::SocketAddr;

use crate::api::SourcePolicy;
use crate::call::rewrite::OutboundStream;
use crate::call::stats::LegCounters;
use crate::dtls::DtlsDriver;
use crate::ice::ControllingAgent;
use crate::net::SocketRef;
use crate::srtp::SrtpSession;

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
    /// SDES-SRTP on the internal leg; `None` for plain RTP.
    pub srtp: Option<Box<SrtpSession>>,
    /// Where media goes and is accepted from (SDP address, or latched).
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
}

impl InternalLeg {
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
