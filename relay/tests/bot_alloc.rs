//! Proves a voice-bot call's steady state allocates nothing on the Rust side (the claim in
//! `relay/src/bot/link.rs`): a counting global allocator records every allocation made on the
//! test thread while a real `Call` with a bot leg (μ-law and L16) runs 3,000 frames each way —
//! WhatsApp's Opus decoded and queued to the bot's task through the link, the bot's audio
//! (echoed back by this thread standing in for the WebSocket task: the link's other end)
//! played out on the 20 ms clock, Opus-encoded and sent to WhatsApp (SRTP, gate open, RTCP).
//! The WebSocket task's own work (JSON, base64, tungstenite) runs on the tokio runtime and is
//! not on this path. libopus's `malloc` is covered by `relay/tests/codec_alloc.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use relay::api::{InternalKind, InternalLegSpec, SourcePolicy};
use relay::bot::client::BotAttach;
use relay::bot::link::{self, Up};
use relay::bot::{BotTarget, MediaFormat};
use relay::call::CallConfig;
use relay::call::testing::{self, META, META_OPUS_PT, MetaPeer, RingOutbox};
use relay::codec::opus::{OpusEncoder, OpusEncoderConfig};
use relay::dtls::DtlsIdentity;
use relay::net::SocketRef;
use relay::srtp::SrtpProfile;
use relay::wire::rtp::{self, Pt, RtpHeaderFields, RtpTs, Seq, Ssrc};

mod alloc_support;
use alloc_support::allocations;

const WARM_UP: u32 = 200;
const MEASURED: u32 = 3_000;
const PTIME: Duration = Duration::from_millis(20);

fn tone(freq: f64, rate: u32, start: u32, n: u32) -> Vec<i16> {
    (start..start + n)
        .map(|i| {
            (8000.0 * (2.0 * std::f64::consts::PI * freq * f64::from(i) / f64::from(rate)).sin())
                as i16
        })
        .collect()
}

fn steady_state_allocates_nothing(format: MediaFormat) {
    let identity = Arc::new(DtlsIdentity::generate().unwrap());
    let t0 = Instant::now();
    let (mut meta, offer) = MetaPeer::sdes(SrtpProfile::Aes128CmHmacSha1_80);
    let internal = InternalLegSpec {
        kind: InternalKind::WebSocket(Arc::new(BotTarget {
            url: "ws://bot.test/media".into(),
            headers: vec![],
            custom_parameters: vec![],
            format,
        })),
        remote_sdp: None,
        source: SourcePolicy::Strict,
    };
    let created =
        testing::create_call_with(&offer, internal, CallConfig::default(), identity, t0).unwrap();
    let mut call = created.call;
    meta.accept_answer(&created.whatsapp_sdp, t0).unwrap();
    let mut now = testing::establish(&mut call, &mut meta, t0, Duration::from_secs(5)).unwrap();
    let (end, mut bot) = link::link(format).unwrap();
    call.attach_bot(
        BotAttach {
            end,
            format,
            stream_sid: "MZalloc".into(),
        },
        now,
    )
    .unwrap();
    let mut out = RingOutbox::with_capacity(16);
    call.open_gate(now, &mut out);
    out.clear();

    let frames = WARM_UP + MEASURED;
    let mut enc = OpusEncoder::new(48_000, OpusEncoderConfig::toward_wa()).unwrap();
    let opus: Vec<Vec<u8>> = (0..frames)
        .map(|i| {
            let mut b = [0u8; 1500];
            let n = enc
                .encode(&tone(440.0, 48_000, i * 960, 960), &mut b)
                .unwrap();
            b[..n].to_vec()
        })
        .collect();

    let (mut to_bot, mut to_meta) = (0u64, 0u64);
    let mut step = |i: u32, now: Instant, to_bot: &mut u64, to_meta: &mut u64| {
        let mut b = [0u8; 1500];
        let h = rtp::write_header(
            &mut b,
            &RtpHeaderFields {
                marker: i == 0,
                pt: Pt::new(META_OPUS_PT),
                seq: Seq::new(100u16.wrapping_add(i as u16)),
                ts: RtpTs::new(5000u32.wrapping_add(i * 960)),
                ssrc: Ssrc::new(0x1111_2222),
            },
        )
        .unwrap();
        let p = &opus[i as usize];
        b[h..h + p.len()].copy_from_slice(p);
        let len = meta.protect_rtp(&mut b, h + p.len()).unwrap();
        call.handle_datagram(now, SocketRef::WaV4, META, &mut b, len, &mut out);
        // The bot's side of the link: take what the call queued, echo the audio back.
        while let Some(up) = bot.pop() {
            if let Up::Audio(f) = up {
                *to_bot += 1;
                bot.push_audio(f.bytes());
            }
        }
        call.handle_timeout(now, &mut out);
        for k in 0..out.len() {
            let (via, to, _, _) = out.get_mut(k).unwrap();
            assert!(
                via != SocketRef::Internal && to == META,
                "only WhatsApp gets datagrams"
            );
            *to_meta += 1;
        }
        out.clear();
        while call.poll_event().is_some() {}
    };
    for i in 0..WARM_UP {
        now += PTIME;
        step(i, now, &mut to_bot, &mut to_meta);
    }
    let (bot_before, meta_before) = (to_bot, to_meta);
    let before = allocations();
    for i in WARM_UP..frames {
        now += PTIME;
        step(i, now, &mut to_bot, &mut to_meta);
    }
    let during = allocations() - before;
    let info = call.info();
    assert!(info.end_cause.is_none(), "{:?}", info.end_cause);
    assert_eq!(
        to_bot - bot_before,
        u64::from(MEASURED),
        "one frame to the bot per packet"
    );
    assert!(to_meta - meta_before >= u64::from(MEASURED), "{to_meta}");
    let played = call.bot_playout_stats().unwrap().frames_played;
    assert!(played >= u64::from(frames) - 5, "{played} frames played");
    assert_eq!(info.whatsapp.dropped, 0, "{info:?}");
    assert_eq!(
        during, 0,
        "{format:?}: {during} heap allocations over {MEASURED} frames each way"
    );
    // The counter sees this thread's allocations at all.
    let before = allocations();
    std::hint::black_box(Vec::<u8>::with_capacity(64));
    assert!(
        allocations() > before,
        "the counting allocator is installed"
    );
}

#[test]
fn a_mulaw_bot_calls_steady_state_allocates_nothing() {
    steady_state_allocates_nothing(MediaFormat::Mulaw8k);
}

#[test]
fn an_l16_bot_calls_steady_state_allocates_nothing() {
    steady_state_allocates_nothing(MediaFormat::L16_16k);
}
