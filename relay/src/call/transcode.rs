//! G.711 internal legs: the call's media path when the media server has no Opus.
//!
//! WhatsApp always speaks Opus (48 kHz RTP clock). When the internal peer's SDP offers or
//! answers only PCMU/PCMA (an Asterisk or FreeSWITCH dial plan, a carrier SBC), the internal leg
//! carries a [`Transcode`] and both directions go through the codec layer here instead of being
//! forwarded:
//!
//! - WhatsApp → internal: the Opus payload is decoded straight to 8 kHz (FEC / concealment for
//!   a missing packet), companded, and sent as 20 ms G.711 packets on the leg's 8 kHz clock;
//! - internal → WhatsApp: G.711 of any packet time is re-framed to 20 ms, Opus-encoded the way
//!   WhatsApp's offer asks (20 kbit/s, in-band FEC), and then takes the same road as forwarded
//!   Opus: gate, prebuffer, rewrite, SRTP. Silence fill, RTCP and the timers do not change.
//! - RFC 4733 telephone events keep their audio stream's timestamp base on each side: their
//!   timestamps go through the audio's clock mapping, their durations are rescaled between the
//!   two sides' event clocks.
//!
//! The generated packets are numbered here (a continuous sequence per direction) and then
//! handed to the leg's `OutboundStream` as any source's packets would be, so SSRC changes,
//! restarts and the fill interplay keep working as for forwarded media.
//!
//! Runs on the shard, inline: see BENCHMARKS.md ("Codec layer: where transcoding runs") for
//! the figures behind not using a worker pool; admission weighs a transcoded call by its cost.

use std::time::Instant;

use crate::call::legs::{Leg, srtp_drop_reason};
use crate::call::rewrite::Source;
use crate::call::stats::DropReason;
use crate::call::{Call, INT, WA};
use crate::codec::CodecError;
use crate::codec::clock::TelephoneEvent;
use crate::codec::g711::G711;
use crate::codec::opus::OpusEncoderConfig;
use crate::codec::transcoder::{
    OpusFrame, OpusToPcm, PcmFormat, PcmFrame, PcmToOpus, TranscodeStats,
};
use crate::net::Outbox;
use crate::wire::rtp::{self, Clock, Pt, RtpTs, Seq, Ssrc};

/// The RTP clock of a G.711 leg (and of its telephone events).
pub const G711_CLOCK: Clock = Clock::G711;

/// WhatsApp's telephone-event clock (its offer's `telephone-event/8000`).
const WA_EVENT_CLOCK: Clock = Clock::G711;

/// Room for one generated packet: header, the largest Opus frame we emit, SRTP's tag.
const PACKET_BYTES: usize = 12 + crate::codec::opus::MAX_PACKET + 32;

/// One internal leg's transcoding state (both directions).
pub struct Transcode {
    law: G711,
    to_internal: OpusToPcm,
    to_wa: PcmToOpus,
    /// Sequence numbers of the packets generated toward each side.
    seq_to_internal: Seq,
    seq_to_wa: Seq,
}

/// What one call's transcoding did (both directions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TranscodeCounters {
    pub law: Option<G711>,
    pub to_internal: TranscodeStats,
    pub to_wa: TranscodeStats,
}

impl Transcode {
    pub fn new(law: G711) -> Result<Transcode, CodecError> {
        Ok(Transcode {
            law,
            to_internal: OpusToPcm::new(PcmFormat::from(law), rand::random())?,
            to_wa: PcmToOpus::new(
                PcmFormat::from(law),
                OpusEncoderConfig::toward_wa(),
                rand::random(),
            )?,
            seq_to_internal: rand::random(),
            seq_to_wa: rand::random(),
        })
    }

    pub fn law(&self) -> G711 {
        self.law
    }

    pub fn counters(&self) -> TranscodeCounters {
        TranscodeCounters {
            law: Some(self.law),
            to_internal: self.to_internal.stats(),
            to_wa: self.to_wa.stats(),
        }
    }

    fn next_seq_to_internal(&mut self) -> Seq {
        self.seq_to_internal = self.seq_to_internal.next();
        self.seq_to_internal
    }

    fn next_seq_to_wa(&mut self) -> Seq {
        self.seq_to_wa = self.seq_to_wa.next();
        self.seq_to_wa
    }
}

/// Sets (or clears) a leg's transcoding for the codec its peer's SDP chose. A leg that changes
/// between Opus and G.711 gets a new outbound stream on the new clock (a new timeline for the
/// peer, as any codec change is).
pub(super) fn apply_codec(
    leg: &mut Leg,
    codec: crate::sdp::InternalCodec,
) -> Result<(), crate::call::CallError> {
    use crate::sdp::InternalCodec;
    let was = leg.transcode.as_ref().map(|t| t.law());
    let wanted = match codec {
        InternalCodec::Opus => None,
        InternalCodec::G711(law) => Some(law),
    };
    if was == wanted {
        return Ok(());
    }
    leg.transcode = match wanted {
        Some(law) => Some(Box::new(Transcode::new(law).map_err(|e| {
            crate::call::CallError::Internal(format!("starting the G.711 transcoder: {e}"))
        })?)),
        None => None,
    };
    leg.tx = crate::call::rewrite::OutboundStream::new(
        leg.tx.ssrc(),
        leg.clock_rate(),
        rand::random(),
        rand::random(),
    );
    Ok(())
}

/// An RFC 4733 payload with its duration moved from one event clock to another; `None` when
/// the payload is too short to be an event.
fn translate_event(payload: &[u8], from: Clock, to: Clock) -> Option<[u8; 4]> {
    let ev = TelephoneEvent::parse(payload)?.rescaled(from, to);
    let mut out = [0u8; 4];
    ev.write(&mut out);
    Some(out)
}

impl Call {
    /// WhatsApp → a G.711 internal leg: one decrypted WhatsApp RTP packet (`buf[..n]`, parsed
    /// as `hdr`). The caller checked the source, counted and forked it.
    pub(super) fn transcode_to_internal(
        &mut self,
        now: Instant,
        hdr: &rtp::RtpHeader,
        buf: &[u8],
        out: &mut impl Outbox,
    ) {
        let Some(mut tc) = self.legs[INT].transcode.take() else {
            return;
        };
        let payload = &buf[hdr.payload_range()];
        let (wa_opus_pt, wa_te_pt) = (self.legs[WA].opus_pt, self.legs[WA].te_pt);
        let internal = &mut self.legs[INT];
        if hdr.pt == wa_opus_pt {
            let pt = internal.opus_pt;
            let ssrc = hdr.ssrc;
            let mut first = hdr.marker;
            let mut seqs = tc.seq_to_internal;
            let r = tc
                .to_internal
                .push(hdr.ssrc, hdr.seq, hdr.ts, payload, &mut |f: PcmFrame<
                    '_,
                >| {
                    seqs = seqs.next();
                    let marker = std::mem::take(&mut first);
                    send_internal(internal, now, ssrc, seqs, f.ts, marker, pt, f.payload, out);
                });
            tc.seq_to_internal = seqs;
            if r.is_err() {
                internal.counters.drop(DropReason::Malformed);
            }
        } else if Some(hdr.pt) == wa_te_pt {
            let Some(pt) = internal.te_pt else {
                internal.counters.drop(DropReason::UnknownPayloadType);
                self.legs[INT].transcode = Some(tc);
                return;
            };
            self.note_dtmf(crate::api::LegKind::WhatsApp, payload, hdr.ts);
            let internal = &mut self.legs[INT];
            match translate_event(payload, WA_EVENT_CLOCK, G711_CLOCK) {
                Some(ev) => {
                    let ts = tc.to_internal.map_ts(hdr.ts);
                    let seq = tc.next_seq_to_internal();
                    send_internal(internal, now, hdr.ssrc, seq, ts, hdr.marker, pt, &ev, out);
                }
                None => internal.counters.drop(DropReason::Malformed),
            }
        } else {
            internal.counters.drop(DropReason::UnknownPayloadType);
        }
        self.legs[INT].transcode = Some(tc);
    }

    /// A G.711 internal leg → WhatsApp: one plaintext internal RTP packet, already counted and
    /// checked. Each 20 ms Opus frame it completes goes through the gate like forwarded media.
    pub(super) fn transcode_to_wa(
        &mut self,
        now: Instant,
        hdr: &rtp::RtpHeader,
        buf: &[u8],
        out: &mut impl Outbox,
    ) {
        let Some(mut tc) = self.legs[INT].transcode.take() else {
            return;
        };
        let payload = &buf[hdr.payload_range()];
        // Generated packets carry the leg's audio PT; `send_to_wa` maps it to WhatsApp's
        // Opus PT as it does for forwarded Opus.
        let audio_pt = self.legs[INT].opus_pt;
        if hdr.pt == audio_pt {
            let ssrc = hdr.ssrc;
            let mut seqs = tc.seq_to_wa;
            let r = tc
                .to_wa
                .push(hdr.ssrc, hdr.ts, payload, &mut |f: OpusFrame<'_>| {
                    seqs = seqs.next();
                    self.route_generated_to_wa(
                        now,
                        ssrc,
                        seqs,
                        f.ts,
                        f.discontinuity,
                        audio_pt,
                        f.payload,
                        out,
                    );
                });
            tc.seq_to_wa = seqs;
            if r.is_err() {
                self.legs[INT].counters.drop(DropReason::Malformed);
            }
        } else if Some(hdr.pt) == self.legs[INT].te_pt {
            match translate_event(payload, G711_CLOCK, WA_EVENT_CLOCK) {
                Some(ev) => {
                    let ts = tc.to_wa.map_ts(hdr.ts);
                    let seq = tc.next_seq_to_wa();
                    let pt = hdr.pt;
                    self.route_generated_to_wa(now, hdr.ssrc, seq, ts, hdr.marker, pt, &ev, out);
                }
                None => self.legs[INT].counters.drop(DropReason::Malformed),
            }
        } else {
            self.legs[INT].counters.drop(DropReason::UnknownPayloadType);
        }
        self.legs[INT].transcode = Some(tc);
    }

    /// Builds a plaintext RTP packet standing for the internal source and sends it through
    /// the gate, as `forward_to_wa` does with a packet it received.
    #[allow(clippy::too_many_arguments)]
    fn route_generated_to_wa(
        &mut self,
        now: Instant,
        ssrc: Ssrc,
        seq: Seq,
        ts: RtpTs,
        marker: bool,
        pt: Pt,
        payload: &[u8],
        out: &mut impl Outbox,
    ) {
        let mut pkt = [0u8; PACKET_BYTES];
        let fields = rtp::RtpHeaderFields {
            marker,
            pt,
            seq,
            ts,
            ssrc,
        };
        let Ok(h) = rtp::write_header(&mut pkt, &fields) else {
            return self.legs[INT].counters.drop(DropReason::Malformed);
        };
        let Some(dst) = pkt.get_mut(h..h + payload.len()) else {
            return self.legs[INT].counters.drop(DropReason::Malformed);
        };
        dst.copy_from_slice(payload);
        let n = h + payload.len();
        let Ok(parsed) = rtp::parse(&pkt[..n]) else {
            return self.legs[INT].counters.drop(DropReason::Malformed);
        };
        let can_send = self.wa_can_send();
        if self.gate.route(&pkt[..n], now, can_send) == crate::call::gate::Route::Send {
            self.send_to_wa(now, &mut pkt, n, parsed, out);
        }
    }
}

/// Sends one generated packet (numbered by the transcoder as source `ssrc`) to the internal
/// leg: rewritten onto the leg's outbound stream, SRTP-protected when the leg is secure.
#[allow(clippy::too_many_arguments)]
fn send_internal(
    internal: &mut Leg,
    now: Instant,
    ssrc: Ssrc,
    seq: Seq,
    ts: RtpTs,
    marker: bool,
    pt: Pt,
    payload: &[u8],
    out: &mut impl Outbox,
) {
    let Some(dst) = internal.send_target() else {
        return internal.counters.drop(DropReason::NotReady);
    };
    let Ok(rw) = internal.tx.next(
        Source::Forwarded {
            ssrc,
            seq,
            ts,
            marker,
        },
        now,
    ) else {
        return internal.counters.drop(DropReason::Late);
    };
    let mut pkt = [0u8; PACKET_BYTES];
    let fields = rtp::RtpHeaderFields {
        marker: marker || rw.marker,
        pt,
        seq: rw.seq,
        ts: rw.ts,
        ssrc: rw.ssrc,
    };
    let Ok(h) = rtp::write_header(&mut pkt, &fields) else {
        return internal.counters.drop(DropReason::Malformed);
    };
    let Some(body) = pkt.get_mut(h..h + payload.len()) else {
        return internal.counters.drop(DropReason::Malformed);
    };
    body.copy_from_slice(payload);
    let n = h + payload.len();
    let n = match internal.srtp.as_mut() {
        Some(srtp) => match srtp.tx.protect_rtp(&mut pkt, n) {
            Ok(n) => n,
            Err(e) => return internal.counters.drop(srtp_drop_reason(e)),
        },
        None => n,
    };
    out.push(internal.via, dst, &pkt[..n]);
    internal.tx.count_sent(payload.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_keep_their_meaning_across_clocks() {
        // Digit 9, not ended, volume 10, 400 units at 8 kHz (50 ms).
        let p = [9u8, 10, 0x01, 0x90];
        assert_eq!(translate_event(&p, Clock::G711, Clock::G711), Some(p));
        // A 48 kHz event clock (a browser's telephone-event/48000) to G.711's 8 kHz.
        let at48 = [9u8, 0x80 | 10, 0x09, 0x60]; // 2400 units = 50 ms, end bit
        assert_eq!(
            translate_event(&at48, Clock::OPUS, Clock::G711),
            Some([9, 0x80 | 10, 0x01, 0x90])
        );
        assert_eq!(translate_event(&[1, 2], Clock::G711, Clock::G711), None);
    }
}
