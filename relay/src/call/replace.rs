//! Transfer: swap the internal leg for a new peer mid-call without touching the WhatsApp leg.
//!
//! What stays: everything toward Meta. ICE, DTLS and the SRTP contexts are untouched, no SDP
//! goes to Meta (WhatsApp calls never renegotiate), and our outbound stream keeps its SSRC; its
//! sequence numbers and timestamps continue because [`super::rewrite::OutboundStream`] rebases
//! onto any new source, and silence fill covers the gap between the old agent's last packet and
//! the new agent's first (the fill restarts one `fill_after` after the swap).
//!
//! What changes: the internal peer gets a fresh leg built exactly as create builds one (same
//! relay port, new SSRC toward it, new SDES key if SDES, fresh counters, first-media reported
//! again). The old peer gets an RTCP BYE and is refused from then on, even by a latching leg:
//! it usually keeps sending until it has processed the BYE.

use std::time::Instant;

use crate::api::{CallEventKind, CreateCall, InternalLegSpec, WaSecurity};
use crate::call::INT;
use crate::call::setup::build_internal;
use crate::call::{Advertised, Call, CallError, CallSetup, LocalSockets};
use crate::net::Outbox;
use crate::wire::rtcp;

/// SR + SDES CNAME + BYE, plus SRTCP overhead.
const BYE_BUF: usize = 256;

impl Call {
    /// Replace the internal leg with the peer `spec` describes. `sockets`/`advertised` are the
    /// call's bound sockets and the addresses written into SDP, as at create. Returns the SDP to
    /// give the new peer. A bad `spec` is refused before anything changes.
    pub fn replace_internal_leg(
        &mut self,
        spec: &InternalLegSpec,
        sockets: LocalSockets,
        advertised: Advertised,
        now: Instant,
        out: &mut impl Outbox,
    ) -> Result<String, CallError> {
        if self.ended.is_some() {
            return Err(CallError::FailedPrecondition(format!(
                "call {} has ended; its internal leg cannot be replaced",
                self.call_id
            )));
        }
        // Build the new leg the way create does; only the internal part of the request is read.
        let req = CreateCall {
            call_id: self.call_id.clone(),
            business_number: self.business_number.clone(),
            consumer: self.consumer.clone(),
            direction: self.direction,
            whatsapp_offer: None,
            whatsapp_security: WaSecurity::DtlsSrtp,
            internal: spec.clone(),
        };
        let setup = CallSetup {
            req: &req,
            sockets,
            advertised,
            identity: self.identity.clone(),
            cfg: self.cfg.clone(),
        };
        let (mut leg, internal_sdp) =
            build_internal(spec, &setup, self.legs[INT].cname.clone(), now)?;

        self.send_internal_bye(now, out);
        let previous = self.legs[INT].remote;
        // A new peer at the very same address is the same socket: it cannot be told apart.
        leg.refused = previous.filter(|p| leg.remote != Some(*p));
        let remote = leg.remote;
        // The new agent starts with a clean slate: its own first media, DTMF and RTCP
        // schedule (all part of the fresh leg). A bot being replaced (the old leg's transport)
        // gets `stop` and its WebSocket closed: its task sees the link go.
        leg.next_rtcp = Some(now + self.cfg.rtcp_interval);
        self.legs[INT] = leg;

        // A full silence window before it counts as silent, and silence fill toward WhatsApp
        // until it speaks.
        self.watchdog.on_internal_replaced(now);
        self.events
            .push_back(CallEventKind::InternalLegReplaced { previous, remote });
        self.after_input(now, out);
        Ok(internal_sdp)
    }

    /// A compound SR (or RR) + SDES + BYE to the current internal peer, if its address is known:
    /// "this stream is over" for a media server that is being transferred away from.
    fn send_internal_bye(&mut self, now: Instant, out: &mut impl Outbox) {
        let Some(to) = self.legs[INT].remote else {
            return;
        };
        let ntp = self.ntp_at(now);
        let leg = &mut self.legs[INT];
        let ssrc = leg.tx.ssrc();
        let mut buf = [0u8; BYE_BUF];
        let first = if leg.tx.packets > 0 {
            rtcp::write_sr(
                &mut buf,
                ssrc,
                ntp,
                leg.tx.ts_at(now),
                leg.tx.packets as u32,
                leg.tx.octets as u32,
                &[],
            )
        } else {
            rtcp::write_rr(&mut buf, ssrc, &[])
        };
        let Ok(mut n) = first else { return };
        if let Ok(len) = rtcp::write_sdes_cname(&mut buf[n..], ssrc, leg.cname.as_bytes()) {
            n += len;
        }
        if let Ok(len) = rtcp::write_bye(&mut buf[n..], ssrc) {
            n += len;
        }
        let n = match leg.srtp.as_mut() {
            Some(s) => match s.tx.protect_rtcp(&mut buf, n) {
                Ok(n) => n,
                Err(_) => return,
            },
            None => n,
        };
        leg.counters.rtcp_sent += 1;
        out.push(leg.via, to, &buf[..n]);
    }
}
