//! The per-packet path, both directions, top to bottom.
//!
//! WhatsApp → internal: classify (RFC 7983) → STUN to ICE / DTLS to the handshake / SRTP:
//! source check → unprotect in place → parse → map payload type → strip extensions → rewrite
//! SSRC/seq/ts → (protect, SDES) → push to the internal socket.
//!
//! Internal → WhatsApp: (WebRTC: STUN to the ICE-lite agent) → source check (strict, latch,
//! or the browser's nominated pair) → DTLS to the internal handshake / (unprotect, SDES or
//! DTLS-SRTP) → parse → map payload type → gate: hold in the prebuffer, or rewrite → protect →
//! push to the selected pair.
//!
//! Every step works in the caller's buffer; nothing here allocates or locks.

use std::net::SocketAddr;
use std::time::Instant;

use crate::api::{CallEventKind, LegKind};
use crate::call::gate::{FillView, Route};
use crate::call::legs::{OPUS_CLOCK, srtp_drop_reason};
use crate::call::rewrite::{Rewritten, Source};
use crate::call::stats::DropReason;
use crate::call::{Call, LegId, fill};
use crate::call::{INT, WA};
use crate::net::{Outbox, SocketRef};
use crate::record::Direction;
use crate::wire::classify::{PacketKind, classify};
use crate::wire::rtp::{Pt, RtpTs};
use crate::wire::{rtp, stun};

/// A 20 ms Opus frame of silence (TOC 0xF8: CELT fullband 20 ms mono, then an empty frame);
/// what SIP media servers and WebRTC stacks send for comfort silence.
/// The fixed RTP header; what `strip_extensions_and_csrc` leaves.
const RTP_HEADER_LEN: usize = 12;

pub const OPUS_SILENCE: [u8; 3] = [0xf8, 0xff, 0xfe];

impl Call {
    pub(super) fn on_wa_datagram(
        &mut self,
        now: Instant,
        via: SocketRef,
        from: SocketAddr,
        buf: &mut [u8],
        len: usize,
        out: &mut impl Outbox,
    ) {
        let Some(data) = buf.get(..len) else {
            return self.legs[WA].counters.drop(DropReason::Malformed);
        };
        match classify(data) {
            PacketKind::Stun => {
                self.fed_control = true;
                let Some(ice) = self.legs[WA].ice_mut() else {
                    return self.legs[WA].counters.drop(DropReason::Unexpected);
                };
                match stun::parse(data) {
                    Ok(msg) => ice.agent.handle_stun(now, via, from, &msg, data, out),
                    Err(_) => self.legs[WA].counters.drop(DropReason::Malformed),
                }
            }
            PacketKind::Dtls => {
                self.fed_control = true;
                if !self.legs[WA].accepts(via, from) {
                    return self.legs[WA].counters.drop(DropReason::BadSource);
                }
                match self.legs[WA].dtls_mut() {
                    // After the handshake state was freed (a late retransmission, or a
                    // close_notify, which only `call.keep_dtls_state` would read).
                    Some(dtls) if dtls.is_released() => {
                        self.legs[WA].counters.drop(DropReason::LateDtls)
                    }
                    Some(dtls) => dtls.handle_datagram(now, data),
                    None => self.legs[WA].counters.drop(DropReason::Unexpected),
                }
            }
            PacketKind::Rtp => self.forward_to_internal(now, via, from, buf, len, out),
            PacketKind::Rtcp => self.consume_wa_rtcp(now, via, from, buf, len),
            PacketKind::Unknown => self.legs[WA].counters.drop(DropReason::Malformed),
        }
    }

    /// WhatsApp → internal, one SRTP packet.
    fn forward_to_internal(
        &mut self,
        now: Instant,
        via: SocketRef,
        from: SocketAddr,
        buf: &mut [u8],
        len: usize,
        out: &mut impl Outbox,
    ) {
        let wa = &mut self.legs[WA];
        if !wa.accepts(via, from) {
            return wa.counters.drop(DropReason::BadSource);
        }
        let Some(srtp) = wa.srtp.as_mut() else {
            return wa.counters.drop(DropReason::NotReady);
        };
        let n = match srtp.rx.unprotect_rtp(&mut buf[..len]) {
            Ok(n) => n,
            Err(e) => return wa.counters.drop(srtp_drop_reason(e)),
        };
        let Ok(hdr) = rtp::parse(&buf[..n]) else {
            return wa.counters.drop(DropReason::Malformed);
        };
        wa.counters.rx_packets += 1;
        wa.counters.rx_bytes += n as u64;
        wa.counters.remote_ssrc = Some(hdr.ssrc);
        wa.counters
            .rx_seq
            .get_or_insert_with(rtp::SeqTracker::new)
            .update(hdr.seq, hdr.ts, rtp_clock_at(now, self.created_mono));
        self.watchdog.on_wa_rtp(now);
        if !self.legs[WA].first_media_in {
            self.legs[WA].first_media_in = true;
            self.events.push_back(CallEventKind::FirstMedia {
                from: LegKind::WhatsApp,
            });
            // Authenticated SRTP proves Meta has our Finished: a DTLS server can now free its
            // handshake state (a client already did when it connected).
            self.release_wa_dtls();
        }
        let opus = hdr.pt == self.legs[WA].opus_pt;
        (self.forks).on_rtp(Direction::Consumer, now, &hdr, &buf[..n], opus, out);
        if self.legs[INT].transcode.is_some() {
            // A G.711 internal leg: decode, compand, send (call/transcode.rs).
            return self.transcode_to_internal(now, &hdr, &buf[..n], out);
        }

        // Payload type map: WhatsApp's PTs → the internal leg's.
        let out_pt = if hdr.pt == self.legs[WA].opus_pt {
            self.legs[INT].opus_pt
        } else if Some(hdr.pt) == self.legs[WA].te_pt {
            let Some(pt) = self.legs[INT].te_pt else {
                return self.legs[WA].counters.drop(DropReason::UnknownPayloadType);
            };
            self.note_dtmf(LegKind::WhatsApp, &buf[hdr.header_len..n], hdr.ts);
            pt
        } else {
            return self.legs[WA].counters.drop(DropReason::UnknownPayloadType);
        };
        if self.legs[INT].bot().is_some() {
            let payload_end = hdr.header_len + hdr.payload_len;
            let Some(payload) = buf.get(hdr.header_len..payload_end.min(n)) else {
                return self.legs[WA].counters.drop(DropReason::Malformed);
            };
            return self.bot_from_wa(&hdr, payload, opus);
        }

        let internal = &mut self.legs[INT];
        let Some(dst) = internal.send_target() else {
            return internal.counters.drop(DropReason::NotReady);
        };
        // The internal leg negotiated no header extensions (Meta may send transport-cc).
        let Ok(n) = rtp::strip_extensions_and_csrc(buf, n) else {
            return self.legs[WA].counters.drop(DropReason::Malformed);
        };
        let payload_len = n - RTP_HEADER_LEN;
        // Never `Late`: nothing generates packets toward the internal leg.
        let Ok(rw) = internal.tx.next(Source::forwarded(&hdr), now) else {
            return internal.counters.drop(DropReason::Late);
        };
        if rewrite_header(buf, out_pt, hdr.marker || rw.marker, rw).is_err() {
            return internal.counters.drop(DropReason::Malformed);
        }
        let n = match internal.srtp.as_mut() {
            Some(srtp) => match srtp.tx.protect_rtp(buf, n) {
                Ok(n) => n,
                Err(e) => return internal.counters.drop(srtp_drop_reason(e)),
            },
            None => n,
        };
        out.push(internal.via, dst, &buf[..n]);
        internal.tx.count_sent(payload_len);
    }

    fn consume_wa_rtcp(
        &mut self,
        now: Instant,
        via: SocketRef,
        from: SocketAddr,
        buf: &mut [u8],
        len: usize,
    ) {
        let wa = &mut self.legs[WA];
        if !wa.accepts(via, from) {
            return wa.counters.drop(DropReason::BadSource);
        }
        let Some(srtp) = wa.srtp.as_mut() else {
            return wa.counters.drop(DropReason::NotReady);
        };
        let n = match srtp.rx.unprotect_rtcp(&mut buf[..len]) {
            Ok(n) => n,
            Err(e) => return wa.counters.drop(srtp_drop_reason(e)),
        };
        self.watchdog.on_wa_rtcp(now);
        let ntp = self.ntp_at(now);
        let wa = &mut self.legs[WA];
        Self::read_reports(&mut wa.counters, wa.tx.ssrc(), &buf[..n], now, ntp);
    }

    pub(super) fn on_internal_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        buf: &mut [u8],
        len: usize,
        out: &mut impl Outbox,
    ) {
        let Some(data) = buf.get(..len) else {
            return self.legs[INT].counters.drop(DropReason::Malformed);
        };
        let kind = classify(data);
        // A browser's checks come from any of its candidates: the ICE-lite agent judges them.
        if kind == PacketKind::Stun && self.legs[INT].webrtc().is_some() {
            self.fed_control = true;
            return self.on_internal_stun(now, from, data, out);
        }
        if !self.legs[INT].accept_source(from) {
            return self.legs[INT].counters.drop(DropReason::BadSource);
        }
        match kind {
            PacketKind::Rtp => self.forward_to_wa(now, buf, len, out),
            PacketKind::Rtcp => {
                let n = match self.legs[INT].unprotect_rtcp(&mut buf[..len]) {
                    Ok(n) => n,
                    Err(reason) => return self.legs[INT].counters.drop(reason),
                };
                let ssrc = self.legs[INT].tx.ssrc();
                let ntp = self.ntp_at(now);
                Self::read_reports(&mut self.legs[INT].counters, ssrc, &buf[..n], now, ntp);
            }
            PacketKind::Dtls if self.legs[INT].webrtc().is_some() => {
                self.fed_control = true;
                self.on_internal_dtls(now, &buf[..len])
            }
            PacketKind::Unknown => self.legs[INT].counters.drop(DropReason::Malformed),
            // STUN/DTLS belong to a WebRTC internal leg, which this leg kind is not.
            PacketKind::Stun | PacketKind::Dtls => {
                self.legs[INT].counters.drop(DropReason::Unexpected)
            }
        }
    }

    /// Internal → WhatsApp, one RTP (or SDES/DTLS-SRTP) packet.
    fn forward_to_wa(&mut self, now: Instant, buf: &mut [u8], len: usize, out: &mut impl Outbox) {
        let internal = &mut self.legs[INT];
        let n = match internal.unprotect_rtp(&mut buf[..len]) {
            Ok(n) => n,
            Err(reason) => return internal.counters.drop(reason),
        };
        let Ok(hdr) = rtp::parse(&buf[..n]) else {
            return internal.counters.drop(DropReason::Malformed);
        };
        // Compared as a copy: a borrow of `hdr`'s field would keep the whole header in memory
        // (callgrind: +21 instructions a packet to copy it into `accept_internal_rtp`).
        let pt = hdr.pt;
        if pt != internal.opus_pt && Some(pt) != internal.te_pt {
            return internal.counters.drop(DropReason::UnknownPayloadType);
        }
        // SRTP refused replays already; plain RTP has only this window.
        if internal.srtp.is_none()
            && internal
                .rx_window
                .check_and_note(hdr.ssrc, hdr.seq)
                .is_err()
        {
            return internal.counters.drop(DropReason::Replayed);
        }
        self.accept_internal_rtp(now, buf, n, hdr, out);
    }

    /// A plaintext internal RTP packet that passed its leg's checks, or a bot's frame made into
    /// one (`bot.rs`): statistics, timers, first media, DTMF, then the gate toward WhatsApp.
    pub(super) fn accept_internal_rtp(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        n: usize,
        hdr: rtp::RtpHeader,
        out: &mut impl Outbox,
    ) {
        let internal = &mut self.legs[INT];
        internal.arrivals.on_packet(now, self.cfg.fill_after_max);
        // Jitter (RFC 3550 A.8) in the leg's own clock units: 8 kHz for a G.711 leg.
        let arrival = RtpTs::new(crate::call::rewrite::clock_units(
            now.saturating_duration_since(self.created_mono),
            internal.clock_rate(),
        ));
        internal.counters.rx_packets += 1;
        internal.counters.rx_bytes += n as u64;
        internal.counters.remote_ssrc = Some(hdr.ssrc);
        internal
            .counters
            .rx_seq
            .get_or_insert_with(rtp::SeqTracker::new)
            .update(hdr.seq, hdr.ts, arrival);
        self.watchdog.on_internal_rtp(now);
        if !self.legs[INT].first_media_in {
            self.legs[INT].first_media_in = true;
            self.events.push_back(CallEventKind::FirstMedia {
                from: LegKind::Internal,
            });
        }
        let pt = hdr.pt;
        if Some(pt) == self.legs[INT].te_pt {
            self.note_dtmf(LegKind::Internal, &buf[hdr.header_len..n], hdr.ts);
        }
        if self.legs[INT].transcode.is_some() {
            // A G.711 internal leg: re-frame, Opus-encode, then the gate (call/transcode.rs).
            return self.transcode_to_wa(now, &hdr, &buf[..n], out);
        }

        // The gate: nothing reaches WhatsApp before accept, and nothing overtakes held media.
        let can_send = self.wa_can_send();
        if self.gate.route(&buf[..n], now, can_send) == Route::Send {
            self.send_to_wa(now, buf, n, hdr, out);
        }
    }

    /// Rewrite and protect a plaintext internal RTP packet (in `buf[..n]`, parsed as `hdr`)
    /// and send it to the selected pair. The caller checked the gate.
    pub(super) fn send_to_wa(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        n: usize,
        hdr: rtp::RtpHeader,
        out: &mut impl Outbox,
    ) {
        let opus = hdr.pt == self.legs[INT].opus_pt;
        (self.forks).on_rtp(Direction::Agent, now, &hdr, &buf[..n], opus, out);
        let out_pt = if hdr.pt == self.legs[INT].opus_pt {
            self.legs[WA].opus_pt
        } else {
            match self.legs[WA].te_pt {
                Some(pt) => pt,
                None => return self.legs[INT].counters.drop(DropReason::UnknownPayloadType),
            }
        };
        let wa = &mut self.legs[WA];
        let (Some((via, to)), Some(srtp)) = (wa.path(), wa.srtp.as_mut()) else {
            return wa.counters.drop(DropReason::NotReady);
        };
        let Ok(n) = rtp::strip_extensions_and_csrc(buf, n) else {
            return self.legs[INT].counters.drop(DropReason::Malformed);
        };
        let Ok(rw) = wa.tx.next(Source::forwarded(&hdr), now) else {
            // Silence already stood in for this packet's 20 ms.
            return self.legs[INT].counters.drop(DropReason::Late);
        };
        if rewrite_header(buf, out_pt, hdr.marker || rw.marker, rw).is_err() {
            return wa.counters.drop(DropReason::Malformed);
        }
        match srtp.tx.protect_rtp(buf, n) {
            Ok(len) => {
                out.push(via, to, &buf[..len]);
                wa.tx.count_sent(n - RTP_HEADER_LEN);
                self.note_first_media_sent();
            }
            Err(e) => wa.counters.drop(srtp_drop_reason(e)),
        }
    }

    /// Meta counts the first packet it receives as the answer: say when it left.
    fn note_first_media_sent(&mut self) {
        if !self.first_media_sent {
            self.first_media_sent = true;
            self.events.push_back(CallEventKind::FirstMediaSent);
        }
    }

    /// One generated 20 ms Opus silence frame to WhatsApp (maiden packet and fill), standing
    /// for the grid time `slot` (numbered for it), sent now.
    pub(super) fn send_silence(&mut self, slot: Instant, out: &mut impl Outbox) {
        let wa = &mut self.legs[WA];
        let (Some((via, to)), Some(srtp)) = (wa.path(), wa.srtp.as_mut()) else {
            return;
        };
        let Ok(rw) = wa.tx.next(Source::Generated, slot) else {
            return;
        };
        let mut pkt = [0u8; 64];
        let Ok(h) = rtp::write_header(
            &mut pkt,
            &rtp::RtpHeaderFields {
                marker: rw.marker,
                pt: wa.opus_pt,
                seq: rw.seq,
                ts: rw.ts,
                ssrc: rw.ssrc,
            },
        ) else {
            return;
        };
        pkt[h..h + OPUS_SILENCE.len()].copy_from_slice(&OPUS_SILENCE);
        match srtp.tx.protect_rtp(&mut pkt, h + OPUS_SILENCE.len()) {
            Ok(n) => {
                out.push(via, to, &pkt[..n]);
                wa.tx.count_sent(OPUS_SILENCE.len());
                self.note_first_media_sent();
            }
            Err(e) => wa.counters.drop(srtp_drop_reason(e)),
        }
    }

    /// What the gate needs to schedule fill.
    pub(super) fn fill_view(&self) -> FillView<'_> {
        FillView {
            can_send: self.wa_can_send(),
            last_sent: self.legs[WA].tx.last_sent_at(),
            last_internal: self.watchdog.last_internal_media(),
            arrivals: &self.legs[INT].arrivals,
        }
    }

    fn next_fill_at(&self) -> Option<Instant> {
        self.gate.next_fill_at(&self.cfg, &self.fill_view())
    }

    /// Send the silence frames due by `now`, each on its grid slot. A tick that ran late
    /// catches up to [`fill::MAX_CATCH_UP`] frames; past that it skips to the newest slot.
    pub(super) fn fill_silence(&mut self, now: Instant, out: &mut impl Outbox) {
        for _ in 0..fill::MAX_CATCH_UP {
            let Some(slot) = self.next_fill_at().filter(|t| *t <= now) else {
                return;
            };
            // The internal packet this frame would stand in for may be waiting unread: let it
            // be read first (the engine runs the call again next turn). Asked only when a
            // frame is due, so a system call at most per fill, none per packet.
            if now.saturating_duration_since(slot) < fill::MAX_DEFER
                && out.queued(self.legs[INT].via)
            {
                return;
            }
            let ptime = self.cfg.ptime;
            let behind = now.duration_since(slot);
            let owed = behind.as_nanos() / ptime.as_nanos().max(1);
            let slot = if owed >= u128::from(fill::MAX_CATCH_UP) {
                // A stalled shard: do not burst seconds of silence, resume on the clock.
                slot + ptime * u32::try_from(owed).unwrap_or(u32::MAX)
            } else {
                slot
            };
            self.send_silence(slot, out);
        }
    }

    /// Play held internal media out at twice real time (one packet per half packet time) until
    /// the backlog is gone, so the added latency drains in about as long as it built up.
    pub(super) fn drain_prebuffer(&mut self, now: Instant, out: &mut impl Outbox) {
        if !self.wa_can_send() {
            return;
        }
        let mut pkt = [0u8; crate::call::prebuffer::SLOT_BYTES + 64];
        if let Some(n) = self.gate.pop_due(now, &self.cfg, &mut pkt) {
            match rtp::parse(&pkt[..n]) {
                Ok(hdr) => self.send_to_wa(now, &mut pkt, n, hdr, out),
                Err(_) => self.legs[INT].counters.drop(DropReason::Malformed),
            }
        }
    }

    /// RFC 4733: report a digit once per event (the first packet with a new timestamp).
    pub(super) fn note_dtmf(&mut self, leg: LegKind, payload: &[u8], ts: RtpTs) {
        if let Some(digit) = self.legs[LegId::of(leg).index()].new_dtmf_digit(payload, ts) {
            self.events
                .push_back(CallEventKind::DtmfReceived { from: leg, digit });
        }
    }
}

/// Stamp the outbound stream's numbering onto a forwarded header (already parsed, so the
/// fixed header is present).
fn rewrite_header(
    buf: &mut [u8],
    pt: Pt,
    marker: bool,
    rw: Rewritten,
) -> Result<(), rtp::RtpError> {
    rtp::HeaderMut::new(buf)?
        .set_pt(pt)
        .set_marker(marker)
        .set_seq(rw.seq)
        .set_ts(rw.ts)
        .set_ssrc(rw.ssrc);
    Ok(())
}

/// Arrival time in RTP clock units (for RFC 3550 jitter), from the call's monotonic origin.
fn rtp_clock_at(now: Instant, origin: Instant) -> RtpTs {
    RtpTs::new(crate::call::rewrite::clock_units(
        now.saturating_duration_since(origin),
        OPUS_CLOCK,
    ))
}
