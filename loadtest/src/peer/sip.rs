//! The internal leg as a SIP media server presents it: an `RTP/AVP` SDP (the e2e SIP peer's),
//! plain RTP every 20 ms toward the relay's internal address, a sender report every 5 s.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Instant;

use e2e::rtp::is_rtcp;
use e2e::sdp::RemoteSdp;
use e2e::sip::{SipConfig, SipCore};
use relay::engine::udp::SendBatch;

use crate::peer::media::{MediaRx, MediaTx, Received};
use crate::stats::Totals;

#[derive(Debug, thiserror::Error)]
pub enum SipPeerError {
    #[error("internal SDP: {0}")]
    Sdp(#[from] e2e::sdp::SdpError),
    #[error("internal SDP has no media address")]
    NoAddress,
}

#[derive(Debug)]
pub struct SipPeer {
    fd: RawFd,
    local: SocketAddr,
    relay: Option<SocketAddr>,
    pub tx: MediaTx,
    pub rx: MediaRx,
}

impl SipPeer {
    pub fn new(local: SocketAddr) -> Self {
        let cfg = SipConfig::default();
        SipPeer {
            fd: -1,
            local,
            relay: None,
            tx: MediaTx::new(rand::random(), cfg.opus_pt),
            rx: MediaRx::default(),
        }
    }

    pub fn attach(&mut self, fd: RawFd) {
        self.fd = fd;
    }

    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// The media server's SDP, exactly as the e2e SIP peer writes it.
    pub fn sdp(&self) -> String {
        SipCore::new(SipConfig::default(), self.local, self.local).sdp()
    }

    /// Learns the relay's internal address from its SDP; returns it.
    pub fn set_remote_sdp(&mut self, sdp: &str, now: Instant) -> Result<SocketAddr, SipPeerError> {
        let to = RemoteSdp::parse(sdp)?
            .media_address()
            .ok_or(SipPeerError::NoAddress)?;
        self.set_remote(to, now);
        Ok(to)
    }

    pub fn set_remote(&mut self, to: SocketAddr, now: Instant) {
        self.relay = Some(to);
        self.tx.enable_rtcp(now);
    }

    pub fn handle(&mut self, now: Instant, now_us: u64, buf: &[u8], totals: &mut Totals) {
        if !matches!(buf.first(), Some(128..=191)) {
            totals.unknown_source += 1;
        } else if is_rtcp(buf) {
            totals.rtcp_received += 1;
            self.tx.echo.note(buf, now);
        } else {
            match self.rx.on_rtp(buf, now, now_us, &mut totals.up) {
                Received::Stamped => {}
                // The relay never generates media toward the internal leg.
                Received::Unstamped | Received::Malformed => totals.unknown_source += 1,
            }
        }
    }

    /// One 20 ms tick: the next audio packet (if `audio`) and a sender report when due.
    pub fn tick(
        &mut self,
        now: Instant,
        unix_us: u64,
        audio: bool,
        scratch: &mut [u8],
        out: &mut SendBatch,
        totals: &mut Totals,
    ) {
        let Some(to) = self.relay else { return };
        if audio {
            let n = self.tx.next_packet(scratch, unix_us);
            if let Some(p) = scratch.get(..n).filter(|p| !p.is_empty()) {
                out.push(self.fd, to, p);
                totals.down.sent += 1;
            }
        }
        if let Some(sr) = self.tx.sender_report_due(now) {
            out.push(self.fd, to, &sr);
            totals.rtcp_sent += 1;
        }
    }
}
