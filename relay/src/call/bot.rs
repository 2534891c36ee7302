//! A voice bot as the call's internal leg: how its audio joins the call.
//!
//! WhatsApp → bot: each Opus packet from WhatsApp is decoded at the bot's rate (8 kHz μ-law
//! or 16 kHz L16), a missing packet rebuilt from the next one's in-band FEC or concealed
//! (`codec::transcoder::OpusToPcm`), and each 20 ms frame goes to the WebSocket task through
//! the link. A digit the consumer presses (RFC 4733 from WhatsApp) goes as a `dtmf` event.
//!
//! Bot → WhatsApp: the [`Playout`] takes one frame of the bot's queued audio per 20 ms tick;
//! it is Opus-encoded and becomes an RTP packet of a stream the bot leg numbers itself (its
//! own SSRC, a sequence number per frame, timestamps on the tick's grid, the marker at each
//! talkspurt), which then enters the call exactly where a media server's RTP would
//! ([`Call::accept_internal_rtp`]): the gate, the prebuffer, the outbound rewriting, silence
//! fill when the bot is quiet, the internal-leg watchdog, recording forks, RTCP statistics.
//! So every guarantee toward Meta holds for a bot as for a SIP peer.
//!
//! The WebSocket ending ends the call: `BotHangup` when the bot closed it, `BotFailed` when
//! it broke (an RTCP BYE goes to WhatsApp, as for the other ends the relay decides).

use std::time::{Duration, Instant};

use crate::api::EndCause;
use crate::bot::client::BotAttach;
use crate::bot::link::{AudioFrame, Closed, MAX_FRAME_BYTES, ShardEnd, Up};
use crate::bot::playout::{Playout, PlayoutStats};
use crate::bot::protocol::MediaFormat;
use crate::call::legs::dtmf_digit;
use crate::call::stats::DropReason;
use crate::call::{Call, INT, Transport};
use crate::codec::g711;
use crate::codec::opus::{OpusEncoder, OpusEncoderConfig};
use crate::codec::transcoder::{OpusToPcm, PcmFormat};
use crate::net::Outbox;
use crate::wire::rtp::{self, RtpTs, Seq, Ssrc};

/// Room for one RTP packet of ours: header, a 20 ms Opus frame at WhatsApp's bitrate (about
/// 50 bytes; libopus is capped at this), and the SRTP tag added in place on the way out.
const PACKET: usize = 1500;
const MAX_OPUS_FRAME: usize = 1000;

/// The bot leg's state on the shard: the internal leg's [`Transport::Bot`].
///
/// [`Transport::Bot`]: crate::call::Transport::Bot
pub struct BotLeg {
    end: ShardEnd,
    playout: Playout,
    format: MediaFormat,
    from_wa: OpusToPcm,
    to_wa: OpusEncoder,
    /// The PCM-clock timestamp of the first frame sent to the bot (`media.timestamp` origin).
    first_ts: Option<RtpTs>,
    /// The last RFC 4733 event timestamp reported (one `dtmf` per digit, not per packet).
    last_dtmf_ts: Option<RtpTs>,
    /// Our RTP stream of the bot's audio (rewritten onto WhatsApp's stream like any source).
    ssrc: Ssrc,
    seq: Seq,
    ts_base: RtpTs,
    started: Instant,
    stream_sid: String,
    /// Frames that failed to encode or decode (counted, skipped).
    codec_errors: u64,
}

impl BotLeg {
    pub(crate) fn playout_stats(&self) -> PlayoutStats {
        self.playout.stats()
    }

    /// The next playout tick.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.playout.poll_timeout()
    }
}

impl Call {
    /// Make the connected bot the internal leg's peer. The leg itself was built for
    /// `InternalKind::WebSocket` (no SDP, no RTP peer); a previous bot is let go (its task
    /// sends `stop` and closes).
    pub fn attach_bot(
        &mut self,
        bot: BotAttach,
        now: Instant,
    ) -> Result<(), crate::call::CallError> {
        let codec = |e: crate::codec::CodecError| {
            crate::call::CallError::Internal(format!("bot leg codec: {e}"))
        };
        let (pcm, rate) = match bot.format {
            MediaFormat::Mulaw8k => (PcmFormat::Ulaw, 8000),
            MediaFormat::L16_16k => (PcmFormat::L16 { rate: 16_000 }, 16_000),
        };
        let from_wa = OpusToPcm::new(pcm, RtpTs::default()).map_err(codec)?;
        let to_wa = OpusEncoder::new(rate, OpusEncoderConfig::toward_wa()).map_err(codec)?;
        let mut playout = Playout::new(bot.format);
        playout.start(now);
        self.legs[INT].transport = Transport::Bot(Box::new(BotLeg {
            end: bot.end,
            playout,
            format: bot.format,
            from_wa,
            to_wa,
            first_ts: None,
            last_dtmf_ts: None,
            ssrc: rand::random(),
            seq: rand::random(),
            ts_base: rand::random(),
            started: now,
            stream_sid: bot.stream_sid,
            codec_errors: 0,
        }));
        self.legs[INT].first_media_in = false;
        let (gate, rest) = (self.gate_deadline(), self.rest_deadline());
        self.deadlines.set(gate, rest);
        Ok(())
    }

    /// WhatsApp → bot: one authenticated, parsed RTP packet (`payload` after its header).
    /// `opus`: Opus, else telephone-event (the caller checked it is one of the two).
    pub(super) fn bot_from_wa(&mut self, hdr: &rtp::RtpHeader, payload: &[u8], opus: bool) {
        let Some(bot) = self.legs[INT].bot_mut() else {
            return;
        };
        if !opus {
            // RFC 4733: the event code, first byte; one report per event (its timestamp).
            let Some(&event) = payload.first() else {
                return;
            };
            if bot.last_dtmf_ts == Some(hdr.ts) {
                return;
            }
            bot.last_dtmf_ts = Some(hdr.ts);
            if let Some(digit) = dtmf_digit(event) {
                bot.end.send(Up::Dtmf(digit));
            }
            return;
        }
        let BotLeg {
            end,
            from_wa,
            first_ts,
            format,
            codec_errors,
            ..
        } = bot;
        let rate_khz = format.sample_rate() / 1000;
        let mut sent = 0usize;
        let mut emit = |f: crate::codec::transcoder::PcmFrame<'_>| {
            let origin = *first_ts.get_or_insert(f.ts);
            let mut frame = AudioFrame {
                timestamp_ms: f.ts.ticks_since(origin) / rate_khz,
                len: 0,
                data: [0; MAX_FRAME_BYTES],
            };
            let n = match format {
                MediaFormat::Mulaw8k => {
                    let n = f.payload.len().min(MAX_FRAME_BYTES);
                    frame.data[..n].copy_from_slice(&f.payload[..n]);
                    n
                }
                // Raw mode is little-endian (what speech models take), unlike RTP's L16.
                MediaFormat::L16_16k => {
                    let n = f.pcm.len().min(MAX_FRAME_BYTES / 2);
                    for (o, s) in frame.data.chunks_exact_mut(2).zip(&f.pcm[..n]) {
                        o.copy_from_slice(&s.to_le_bytes());
                    }
                    n * 2
                }
            };
            frame.len = n as u16;
            end.send(Up::Audio(frame));
            sent += n;
        };
        if from_wa
            .push(hdr.ssrc, hdr.seq, hdr.ts, payload, &mut emit)
            .is_err()
        {
            *codec_errors += 1;
            return self.legs[INT].counters.drop(DropReason::Malformed);
        }
        if sent > 0 {
            self.legs[INT].tx.count_sent(sent);
        }
    }

    /// Bot → WhatsApp: play what is due, or end the call if the WebSocket ended.
    pub(super) fn bot_timeout(&mut self, now: Instant, out: &mut impl Outbox) {
        let can_play = self.wa_can_send();
        let opus_pt = self.legs[INT].opus_pt;
        let Some(bot) = self.legs[INT].bot_mut() else {
            return;
        };
        if let Some(why) = bot.end.closed() {
            let cause = match why {
                Closed::ByBot => EndCause::BotHangup,
                Closed::Failed => EndCause::BotFailed,
            };
            self.send_bye(now, out);
            return self.end(cause);
        }
        // At most MAX_CATCH_UP frames per call; encoded here, sent below (the call's path
        // needs `self`, the playout borrows the bot).
        let mut packets = [[0u8; PACKET]; crate::bot::playout::MAX_CATCH_UP as usize];
        let mut lens = [0usize; crate::bot::playout::MAX_CATCH_UP as usize];
        let mut count = 0;
        let BotLeg {
            end,
            playout,
            to_wa,
            format,
            ssrc,
            seq,
            ts_base,
            started,
            codec_errors,
            ..
        } = bot;
        let format = *format;
        playout.handle_timeout(now, end, can_play, |frame, talkspurt, slot| {
            if count >= packets.len() {
                return;
            }
            let mut pcm = [0i16; MAX_FRAME_BYTES / 2];
            let samples = match format {
                MediaFormat::Mulaw8k => g711::decode(g711::G711::Ulaw, frame, &mut pcm),
                MediaFormat::L16_16k => {
                    for (s, b) in pcm.iter_mut().zip(frame.chunks_exact(2)) {
                        *s = i16::from_le_bytes([b[0], b[1]]);
                    }
                    frame.len() / 2
                }
            };
            let pkt = &mut packets[count];
            let elapsed = slot.saturating_duration_since(*started);
            let ts = ts_base.add(clock_48k(elapsed));
            let Ok(h) = rtp::write_header(
                pkt,
                &rtp::RtpHeaderFields {
                    marker: talkspurt,
                    pt: opus_pt,
                    seq: *seq,
                    ts,
                    ssrc: *ssrc,
                },
            ) else {
                return;
            };
            match to_wa.encode(&pcm[..samples], &mut pkt[h..h + MAX_OPUS_FRAME]) {
                Ok(n) => {
                    *seq = seq.next();
                    lens[count] = h + n;
                    count += 1;
                }
                Err(_) => *codec_errors += 1,
            }
        });
        for (pkt, &n) in packets.iter_mut().zip(&lens).take(count) {
            match rtp::parse(&pkt[..n]) {
                Ok(hdr) => self.accept_internal_rtp(now, pkt, n, hdr, out),
                Err(_) => self.legs[INT].counters.drop(DropReason::Malformed),
            }
        }
    }

    /// The call runs codec work on its shard (a voice-bot leg, or a G.711 internal leg: Opus
    /// decode and encode every 20 ms), so admission counts it at its cost
    /// (`EngineConfig::transcode_weight`).
    pub fn transcodes(&self) -> bool {
        self.legs[INT].bot().is_some() || self.legs[INT].transcode.is_some()
    }

    /// The bot leg's playout counters (tests, logs).
    pub fn bot_playout_stats(&self) -> Option<PlayoutStats> {
        self.legs[INT].bot().map(BotLeg::playout_stats)
    }

    /// The bot leg's `streamSid`, if the internal leg is a bot.
    pub fn bot_stream_sid(&self) -> Option<&str> {
        self.legs[INT].bot().map(|b| b.stream_sid.as_str())
    }
}

/// `d` in 48 kHz RTP clock units (wrapping, as RTP timestamps do).
fn clock_48k(d: Duration) -> u32 {
    (d.as_nanos() * 48 / 1_000_000) as u32
}
