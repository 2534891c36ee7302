//! Proves a voice-bot call's steady state allocates nothing on the Rust side (the claim in
//! `relay/src/bot/link.rs`): a counting global allocator records every allocation made on the
//! test thread while a real `Call` with a bot leg (μ-law and L16) runs 3,000 frames each way —
//! WhatsApp's Opus decoded and queued to the bot's task through the link, the bot's audio
//! (echoed back by this thread standing in for the WebSocket task: the link's other end)
//! played out on the 20 ms clock, Opus-encoded and sent to WhatsApp (SRTP, gate open, RTCP).
//! The WebSocket task's own work (JSON, base64, tungstenite) runs on the tokio runtime and is
//! not on this path. libopus's `malloc` is covered by `relay/tests/codec_alloc.rs`.

use std::sync::Arc;
use std::time::Instant;

use relay::api::{InternalKind, InternalLegSpec, SourcePolicy};
use relay::bot::client::BotAttach;
use relay::bot::link::{self, Up};
use relay::bot::{BotTarget, MediaFormat};
use relay::call::testing::META;
use relay::net::SocketRef;

mod alloc_support;
mod opus_call_support;
use alloc_support::allocations;
use opus_call_support::{MEASURED, OpusCall, PTIME, WARM_UP, assert_counting};

fn steady_state_allocates_nothing(format: MediaFormat) {
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
    let mut c = OpusCall::establish(internal);
    let mut now = c.now;
    let (end, mut bot) = link::link(format).unwrap();
    c.call
        .attach_bot(
            BotAttach {
                end,
                format,
                stream_sid: "MZalloc".into(),
            },
            now,
        )
        .unwrap();
    c.open_gate();

    let frames = WARM_UP + MEASURED;
    let (mut to_bot, mut to_meta) = (0u64, 0u64);
    let mut step = |i: u32, now: Instant, to_bot: &mut u64, to_meta: &mut u64| {
        c.whatsapp_sends(i, now);
        // The bot's side of the link: take what the call queued, echo the audio back.
        while let Some(up) = bot.pop() {
            if let Up::Audio(f) = up {
                *to_bot += 1;
                bot.push_audio(f.bytes());
            }
        }
        c.call.handle_timeout(now, &mut c.out);
        for k in 0..c.out.len() {
            let (via, to, _, _) = c.out.get_mut(k).unwrap();
            assert!(
                via != SocketRef::Internal && to == META,
                "only WhatsApp gets datagrams"
            );
            *to_meta += 1;
        }
        c.out.clear();
        while c.call.poll_event().is_some() {}
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
    let info = c.call.info();
    assert!(info.end_cause.is_none(), "{:?}", info.end_cause);
    assert_eq!(
        to_bot - bot_before,
        u64::from(MEASURED),
        "one frame to the bot per packet"
    );
    assert!(to_meta - meta_before >= u64::from(MEASURED), "{to_meta}");
    let played = c.call.bot_playout_stats().unwrap().frames_played;
    assert!(played >= u64::from(frames) - 5, "{played} frames played");
    assert_eq!(info.whatsapp.dropped, 0, "{info:?}");
    assert_eq!(
        during, 0,
        "{format:?}: {during} heap allocations over {MEASURED} frames each way"
    );
    assert_counting();
}

#[test]
fn a_mulaw_bot_calls_steady_state_allocates_nothing() {
    steady_state_allocates_nothing(MediaFormat::Mulaw8k);
}

#[test]
fn an_l16_bot_calls_steady_state_allocates_nothing() {
    steady_state_allocates_nothing(MediaFormat::L16_16k);
}
