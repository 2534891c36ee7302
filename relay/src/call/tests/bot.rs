//! A voice bot as the internal leg, in simulated time: a real call between a Meta peer
//! (ICE-lite + DTLS) and a bot whose WebSocket task is played by the test through the link's
//! task end (no socket, no thread: the rings are plain memory).
//!
//! What a user would check: the consumer's speech reaches the bot as 20 ms μ-law frames with
//! Twilio's timestamps; the bot's speech reaches WhatsApp as Opus on the 20 ms clock, only once
//! the gate is open; marks come back when their audio has been played; a clear stops the bot's
//! audio at the next tick and nothing queued before it reaches WhatsApp; silence fill takes
//! over when the bot is quiet; a digit pressed on WhatsApp reaches the bot once; the bot
//! hanging up ends the call with its own cause.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::{CallEventKind, EndCause, InternalKind, InternalLegSpec, SourcePolicy};
use crate::bot::BotTarget;
use crate::bot::client::BotAttach;
use crate::bot::link::{self, Closed, TaskEnd, Up};
use crate::bot::protocol::MediaFormat;
use crate::call::media::OPUS_SILENCE;
use crate::call::testing::{self, META, META_OPUS_PT, META_TE_PT, MetaPeer, Received};
use crate::call::{Call, CallConfig};
use crate::codec::g711;
use crate::codec::opus::{OpusDecoder, OpusEncoder, OpusEncoderConfig};
use crate::codec::testing::{rms, sine};
use crate::dtls::DtlsIdentity;
use crate::net::{SocketRef, VecOutbox};
use crate::wire::classify::classify;
use crate::wire::rtp::{self, Pt, RtpTs, Seq, Ssrc};

const MS: Duration = Duration::from_millis(1);

struct BotSim {
    call: Call,
    meta: MetaPeer,
    bot: TaskEnd,
    now: Instant,
    /// Opus payloads Meta received, with the time they left the call and the marker bit.
    to_meta: Vec<(Instant, Vec<u8>, bool)>,
    /// What the bot received.
    audio: Vec<(u32, Vec<u8>)>,
    dtmf: Vec<char>,
    marks: Vec<u32>,
    meta_seq: u16,
    meta_ts: u32,
    enc48: OpusEncoder,
    tone48: Vec<i16>,
}

fn target(format: MediaFormat) -> InternalLegSpec {
    InternalLegSpec {
        kind: InternalKind::WebSocket(Arc::new(BotTarget {
            url: "ws://bot.test/media".into(),
            headers: vec![],
            custom_parameters: vec![],
            format,
        })),
        remote_sdp: None,
        source: SourcePolicy::Strict,
    }
}

impl BotSim {
    fn new(format: MediaFormat) -> BotSim {
        let now = Instant::now();
        let identity = Arc::new(DtlsIdentity::generate().expect("identity"));
        let (mut meta, offer) = MetaPeer::dtls(now);
        let created =
            testing::create_call_with(&offer, target(format), CallConfig::default(), identity, now)
                .expect("create");
        assert_eq!(created.internal_sdp, "", "no SDP with a bot");
        let mut call = created.call;
        meta.accept_answer(&created.whatsapp_sdp, now)
            .expect("answer");
        let now = testing::establish(&mut call, &mut meta, now, Duration::from_secs(5))
            .expect("connected");
        let (end, bot) = link::link(format).expect("link");
        call.attach_bot(
            BotAttach {
                end,
                format,
                stream_sid: "MZtest".into(),
            },
            now,
        )
        .expect("attach");
        BotSim {
            call,
            meta,
            bot,
            now,
            to_meta: Vec::new(),
            audio: Vec::new(),
            dtmf: Vec::new(),
            marks: Vec::new(),
            meta_seq: 100,
            meta_ts: 48_000,
            enc48: OpusEncoder::new(48_000, OpusEncoderConfig::toward_wa()).expect("enc"),
            tone48: sine(440.0, 48_000, 960, 8000.0),
        }
    }

    /// Deliver what the call sent and collect what the bot's task got.
    fn deliver(&mut self, out: VecOutbox) {
        for mut d in out.sent {
            if d.via.is_whatsapp() && d.to == META {
                let len = d.data.len();
                let kind = classify(&d.data);
                let mut back = VecOutbox::default();
                let r = self.meta.handle_datagram(
                    self.now,
                    testing::relay_addr(d.via),
                    &mut d.data,
                    len,
                    &mut back,
                );
                if let (Received::Rtp(n), crate::wire::classify::PacketKind::Rtp) = (r, kind) {
                    let hdr = rtp::parse(&d.data[..n]).expect("rtp");
                    let payload = d.data[hdr.header_len..hdr.header_len + hdr.payload_len].to_vec();
                    self.to_meta.push((self.now, payload, hdr.marker));
                }
                for mut b in back.sent {
                    if let Some(via) = testing::relay_socket(b.to) {
                        let len = b.data.len();
                        let mut o = VecOutbox::default();
                        self.call
                            .handle_datagram(self.now, via, META, &mut b.data, len, &mut o);
                        assert!(o.sent.iter().all(|s| s.via != SocketRef::Internal));
                    }
                }
            }
            assert_ne!(d.via, SocketRef::Internal, "nothing goes to a UDP peer");
        }
        while let Some(up) = self.bot.pop() {
            match up {
                Up::Audio(f) => self.audio.push((f.timestamp_ms, f.bytes().to_vec())),
                Up::Dtmf(d) => self.dtmf.push(d),
                Up::MarkPlayed(id) => self.marks.push(id),
            }
        }
    }

    /// Advance simulated time by `d`, running the call's timers (the Meta peer stays quiet
    /// unless `talk` sends 20 ms of tone every 20 ms).
    fn run(&mut self, d: Duration, talk: bool) {
        let end = self.now + d;
        let mut next_talk = self.now;
        loop {
            let due = [
                self.call.poll_timeout(),
                self.meta.poll_timeout(),
                talk.then_some(next_talk),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(t) = due.filter(|t| *t <= end) else {
                break;
            };
            self.now = self.now.max(t);
            if talk && next_talk <= self.now {
                self.wa_sends(META_OPUS_PT, None);
                next_talk += 20 * MS;
            }
            let mut out = VecOutbox::default();
            let mut m = VecOutbox::default();
            self.meta.handle_timeout(self.now, &mut m);
            for mut b in m.sent {
                if let Some(via) = testing::relay_socket(b.to) {
                    let len = b.data.len();
                    self.call
                        .handle_datagram(self.now, via, META, &mut b.data, len, &mut out);
                }
            }
            self.call.handle_timeout(self.now, &mut out);
            self.deliver(out);
            if self.call.is_ended() {
                break;
            }
        }
        self.now = self.now.max(end);
    }

    /// One SRTP packet from WhatsApp: 20 ms of Opus tone, or an RFC 4733 event.
    fn wa_sends(&mut self, pt: u8, event: Option<(u8, u32)>) {
        let mut buf = [0u8; 1500];
        let (ts, payload_len) = match event {
            Some((code, ts)) => {
                buf[12..16].copy_from_slice(&[code, 0x0a, 0x03, 0x20]);
                (ts, 4)
            }
            None => {
                let n = self
                    .enc48
                    .encode(&self.tone48, &mut buf[12..1012])
                    .expect("encode");
                self.meta_ts = self.meta_ts.wrapping_add(960);
                (self.meta_ts, n)
            }
        };
        rtp::write_header(
            &mut buf,
            &rtp::RtpHeaderFields {
                marker: false,
                pt: Pt::new(pt),
                seq: Seq::new(self.meta_seq),
                ts: RtpTs::new(ts),
                ssrc: Ssrc::new(0x5eed),
            },
        )
        .expect("header");
        self.meta_seq = self.meta_seq.wrapping_add(1);
        let n = self
            .meta
            .protect_rtp(&mut buf, 12 + payload_len)
            .expect("protect");
        let mut out = VecOutbox::default();
        self.call
            .handle_datagram(self.now, SocketRef::WaV4, META, &mut buf, n, &mut out);
        self.deliver(out);
    }

    fn open_gate(&mut self) {
        let mut out = VecOutbox::default();
        self.call.open_gate(self.now, &mut out);
        self.deliver(out);
    }

    /// The bot sends `frames` × 20 ms of a μ-law tone.
    fn bot_speaks(&mut self, frames: usize) {
        let pcm = sine(300.0, 8000, 160 * frames, 8000.0);
        let mut law = vec![0u8; pcm.len()];
        g711::encode(g711::G711::Ulaw, &pcm, &mut law);
        self.bot.push_audio(&law);
    }

    /// Opus packets Meta got that carry sound (not the relay's 3-byte silence frame).
    fn speech_to_meta(&self) -> usize {
        self.to_meta
            .iter()
            .filter(|(_, p, _)| p.as_slice() != OPUS_SILENCE)
            .count()
    }
}

#[test]
fn the_consumers_speech_reaches_the_bot_as_20ms_mulaw_frames() {
    let mut s = BotSim::new(MediaFormat::Mulaw8k);
    s.open_gate();
    s.run(Duration::from_secs(1), true);
    assert!(
        (49..=51).contains(&s.audio.len()),
        "{} frames in 1 s",
        s.audio.len()
    );
    for (i, (ts, bytes)) in s.audio.iter().enumerate() {
        assert_eq!(bytes.len(), 160, "20 ms of μ-law at 8 kHz");
        assert_eq!(
            *ts,
            i as u32 * 20,
            "Twilio's media.timestamp: ms since the stream started"
        );
    }
    // The tone came through (Opus decoded, not silence).
    let (_, last) = s.audio.last().expect("frames");
    let mut pcm = [0i16; 160];
    g711::decode(g711::G711::Ulaw, last, &mut pcm);
    assert!(rms(&pcm) > 1000.0, "rms {}", rms(&pcm));
}

#[test]
fn raw_mode_sends_16khz_little_endian_pcm() {
    let mut s = BotSim::new(MediaFormat::L16_16k);
    s.open_gate();
    s.run(Duration::from_millis(200), true);
    let (_, last) = s.audio.last().expect("frames");
    assert_eq!(last.len(), 640, "20 ms of 16-bit PCM at 16 kHz");
    let pcm: Vec<i16> = last
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    assert!(rms(&pcm) > 1000.0, "rms {}", rms(&pcm));
}

#[test]
fn the_bots_speech_waits_for_the_gate_then_plays_at_real_time_with_its_marks() {
    let mut s = BotSim::new(MediaFormat::Mulaw8k);
    s.bot_speaks(50);
    assert!(s.bot.push_mark(1));
    s.run(Duration::from_secs(1), false);
    assert!(
        s.to_meta.is_empty(),
        "nothing reaches WhatsApp before the gate"
    );
    assert!(s.marks.is_empty(), "the greeting has not been heard");

    s.open_gate();
    let opened = s.now;
    s.run(Duration::from_millis(500), false);
    assert!(s.marks.is_empty(), "mark 1 waits for the whole second");
    s.run(Duration::from_millis(600), false);
    assert_eq!(s.marks, vec![1]);
    assert_eq!(s.speech_to_meta(), 50, "every frame, once");
    // On the 20 ms clock: 50 frames over about a second.
    let speech: Vec<Instant> = s
        .to_meta
        .iter()
        .filter(|(_, p, _)| p.as_slice() != OPUS_SILENCE)
        .map(|(t, _, _)| *t)
        .collect();
    let span = *speech.last().expect("speech") - speech[0];
    assert!(
        span >= Duration::from_millis(960) && span <= Duration::from_millis(1000),
        "{span:?}"
    );
    assert!(speech[0] - opened <= Duration::from_millis(20));
    // The sound survives Opus: decode what WhatsApp got.
    let mut dec = OpusDecoder::new(8000).expect("dec");
    let mut pcm = [0i16; 960];
    let mut loudest = 0f64;
    for (_, p, _) in &s.to_meta {
        if let Ok(n) = dec.decode(p, &mut pcm) {
            loudest = loudest.max(rms(&pcm[..n]));
        }
    }
    assert!(loudest > 1000.0, "rms {loudest}");
    // Then the bot is quiet: silence fill keeps WhatsApp's stream going.
    let before = s.to_meta.len();
    s.run(Duration::from_secs(1), false);
    let fill = s.to_meta[before..]
        .iter()
        .filter(|(_, p, _)| p.as_slice() == OPUS_SILENCE)
        .count();
    assert!(fill >= 45, "{fill} silence frames in a quiet second");
}

#[test]
fn clear_stops_the_bot_at_the_next_tick_and_returns_pending_marks() {
    let mut s = BotSim::new(MediaFormat::Mulaw8k);
    s.open_gate();
    s.run(Duration::from_millis(100), false);
    s.bot_speaks(100);
    assert!(s.bot.push_mark(7));
    s.bot_speaks(10);
    assert!(s.bot.push_mark(8));
    s.run(Duration::from_millis(200), false);
    let before_clear = s.speech_to_meta();
    assert!((9..=11).contains(&before_clear), "{before_clear}");
    s.bot.clear();
    s.run(Duration::from_millis(20), false);
    assert_eq!(
        s.marks,
        vec![7, 8],
        "marks of cleared audio come back at once"
    );
    let at_clear = s.speech_to_meta();
    s.run(Duration::from_secs(3), false);
    assert_eq!(
        s.speech_to_meta(),
        at_clear,
        "nothing queued before the clear reaches WhatsApp after it"
    );
    // The bot speaks again after a clear: heard at once.
    s.bot_speaks(5);
    s.run(Duration::from_millis(200), false);
    assert!(s.speech_to_meta() - at_clear >= 5);
}

#[test]
fn a_digit_pressed_on_whatsapp_reaches_the_bot_once() {
    let mut s = BotSim::new(MediaFormat::Mulaw8k);
    s.open_gate();
    for _ in 0..3 {
        // RFC 4733 repeats an event's packets (same timestamp).
        s.wa_sends(META_TE_PT, Some((5, 777_000)));
    }
    s.wa_sends(META_TE_PT, Some((11, 778_000)));
    s.run(Duration::from_millis(40), false);
    assert_eq!(s.dtmf, vec!['5', '#']);
    assert!(
        std::iter::from_fn(|| s.call.poll_event())
            .any(|e| matches!(e, CallEventKind::DtmfReceived { digit: '5', .. })),
        "the signaling tier sees it too"
    );
}

#[test]
fn the_bot_hanging_up_ends_the_call_with_its_cause() {
    for (why, cause) in [
        (Closed::ByBot, EndCause::BotHangup),
        (Closed::Failed, EndCause::BotFailed),
    ] {
        let mut s = BotSim::new(MediaFormat::Mulaw8k);
        s.open_gate();
        s.run(Duration::from_millis(100), false);
        s.bot.set_closed(why);
        s.run(Duration::from_millis(40), false);
        assert!(s.call.is_ended());
        assert_eq!(s.call.info().end_cause, Some(cause));
    }
}

#[test]
fn the_link_going_away_tells_the_task_the_leg_is_over() {
    let s = BotSim::new(MediaFormat::Mulaw8k);
    let BotSim { call, bot, .. } = s;
    assert!(!bot.leg_over());
    drop(call);
    assert!(
        bot.leg_over(),
        "the task then sends stop and closes the WebSocket"
    );
}
