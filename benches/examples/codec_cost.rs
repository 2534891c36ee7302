//! CPU per 20 ms frame of a voice-bot call's codec work, each way, μ-law and L16: the same
//! steps `relay::call::bot` runs on the shard.
//!
//! - WhatsApp → bot: `OpusToPcm::push` of one WhatsApp Opus packet (decode at the bot's rate,
//!   μ-law encode or L16), one call per 20 ms packet.
//! - bot → WhatsApp: μ-law decode (or L16 unpack) and `OpusEncoder::encode` with the
//!   relay's settings toward WhatsApp (`OpusEncoderConfig::toward_wa`).
//!
//! Input: speech as raw 16-bit little-endian mono PCM at 48 kHz (`--pcm FILE`, e.g. made by
//! `e2e/bots/quality.py prepare`), else a synthetic voiced signal. WhatsApp's side is encoded
//! once up front (48 kHz, 24 kbit/s, FEC on) and not measured.
//!
//! Timed (wall clock, best of 5 passes; run under `flock /work/wt/bench.lock`):
//!
//! ```text
//! cargo run --release -p benches --example codec_cost -- [--pcm speech48k.raw]
//! ```
//!
//! or counted (noise-free instructions, no lock needed):
//!
//! ```text
//! valgrind --tool=callgrind --toggle-collect='*codec_cost*measured*' \
//!     target/release/examples/codec_cost --once ulaw-down
//! ```

use std::hint::black_box;
use std::time::Instant;

use relay::codec::g711::{self, G711};
use relay::codec::opus::{OpusEncoder, OpusEncoderConfig};
use relay::codec::transcoder::{OpusToPcm, PcmFormat};
use relay::wire::rtp::{RtpTs, Seq, Ssrc};

const PASSES: usize = 5;

fn synthetic(seconds: usize) -> Vec<i16> {
    // A voiced-speech stand-in: a 110-220 Hz glide with 20 harmonics, syllable envelope.
    let n = 48_000 * seconds;
    let mut out = Vec::with_capacity(n);
    let mut phase = 0.0f64;
    for i in 0..n {
        let t = i as f64 / 48_000.0;
        let f0 = 150.0 + 50.0 * (2.0 * std::f64::consts::PI * 0.7 * t).sin();
        phase += 2.0 * std::f64::consts::PI * f0 / 48_000.0;
        let env = (2.0 * std::f64::consts::PI * 3.0 * t).sin().abs();
        let s: f64 = (1..=20).map(|h| (phase * h as f64).sin() / h as f64).sum();
        out.push((s * env * 6000.0).clamp(-32767.0, 32767.0) as i16);
    }
    out
}

fn whatsapp_packets(pcm48: &[i16]) -> Vec<Vec<u8>> {
    let mut enc = OpusEncoder::new(
        48_000,
        OpusEncoderConfig {
            bitrate: 24_000,
            complexity: 9,
            inband_fec: true,
            loss_percent: 5,
            max_wideband: false,
        },
    )
    .expect("encoder");
    pcm48
        .chunks_exact(960)
        .map(|f| {
            let mut buf = [0u8; 1500];
            let n = enc.encode(f, &mut buf).expect("encode");
            buf[..n].to_vec()
        })
        .collect()
}

/// WhatsApp → bot, one packet (what `Call::bot_from_wa` does, minus the link).
#[inline(never)]
fn measured_down(dec: &mut OpusToPcm, seq: u16, ts: u32, packet: &[u8], sink: &mut u64) {
    let _ = dec.push(
        Ssrc::new(1),
        Seq::new(seq),
        RtpTs::new(ts),
        packet,
        &mut |f| {
            *sink = sink.wrapping_add(f.payload.len() as u64 + u64::from(f.payload[0]));
        },
    );
}

/// bot → WhatsApp, one frame (what `Call::bot_timeout` does per played frame, minus RTP).
#[inline(never)]
fn measured_up(enc: &mut OpusEncoder, format: PcmFormat, frame: &[u8], out: &mut [u8]) -> usize {
    let mut pcm = [0i16; 320];
    let samples = match format {
        PcmFormat::Ulaw => g711::decode(G711::Ulaw, frame, &mut pcm),
        _ => {
            for (s, b) in pcm.iter_mut().zip(frame.chunks_exact(2)) {
                *s = i16::from_le_bytes([b[0], b[1]]);
            }
            frame.len() / 2
        }
    };
    enc.encode(&pcm[..samples], out).unwrap_or(0)
}

/// The bot's frames: what the WhatsApp side decodes to, in the bot's wire format.
fn bot_frames(packets: &[Vec<u8>], format: PcmFormat) -> Vec<Vec<u8>> {
    let mut dec = OpusToPcm::new(format, RtpTs::new(0)).expect("decoder");
    let mut frames = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        dec.push(
            Ssrc::new(1),
            Seq::new(i as u16),
            RtpTs::new(i as u32 * 960),
            p,
            &mut |f| match format {
                PcmFormat::Ulaw => frames.push(f.payload.to_vec()),
                _ => frames.push(f.pcm.iter().flat_map(|s| s.to_le_bytes()).collect()),
            },
        )
        .expect("decode");
    }
    frames
}

fn down_us(packets: &[Vec<u8>], format: PcmFormat) -> f64 {
    let mut best = f64::INFINITY;
    let mut sink = 0u64;
    for _ in 0..PASSES {
        let mut dec = OpusToPcm::new(format, RtpTs::new(0)).expect("decoder");
        let t = Instant::now();
        for (i, p) in packets.iter().enumerate() {
            measured_down(&mut dec, i as u16, i as u32 * 960, p, &mut sink);
        }
        best = best.min(t.elapsed().as_secs_f64() * 1e6 / packets.len() as f64);
    }
    black_box(sink);
    best
}

fn up_us(frames: &[Vec<u8>], format: PcmFormat) -> f64 {
    let mut best = f64::INFINITY;
    let mut out = [0u8; 1500];
    let mut bytes = 0usize;
    for _ in 0..PASSES {
        let mut enc = OpusEncoder::new(format.rate(), OpusEncoderConfig::toward_wa()).expect("enc");
        let t = Instant::now();
        for f in frames {
            bytes += measured_up(&mut enc, format, f, &mut out);
        }
        best = best.min(t.elapsed().as_secs_f64() * 1e6 / frames.len() as f64);
    }
    black_box(bytes);
    best
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let pcm48 = match args.iter().position(|a| a == "--pcm") {
        Some(i) => {
            let raw = std::fs::read(&args[i + 1]).expect("read --pcm file");
            raw.chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect()
        }
        None => synthetic(20),
    };
    let packets = whatsapp_packets(&pcm48);
    let formats = [
        ("ulaw", PcmFormat::Ulaw),
        ("l16", PcmFormat::L16 { rate: 16_000 }),
    ];
    // One measured pass for callgrind.
    if let Some(i) = args.iter().position(|a| a == "--once") {
        let what = args[i + 1].as_str();
        let (name, dir) = what
            .split_once('-')
            .expect("--once ulaw-down|ulaw-up|l16-...");
        let format = formats.iter().find(|f| f.0 == name).expect("format").1;
        let mut sink = 0u64;
        if dir == "down" {
            let mut dec = OpusToPcm::new(format, RtpTs::new(0)).expect("decoder");
            for (i, p) in packets.iter().enumerate() {
                measured_down(&mut dec, i as u16, i as u32 * 960, p, &mut sink);
            }
        } else {
            let frames = bot_frames(&packets, format);
            let mut enc = OpusEncoder::new(format.rate(), OpusEncoderConfig::toward_wa()).unwrap();
            let mut out = [0u8; 1500];
            for f in &frames {
                sink += measured_up(&mut enc, format, f, &mut out) as u64;
            }
        }
        println!("{what}: {} frames (sink {sink})", packets.len());
        return;
    }
    println!(
        "{} frames of 20 ms ({:.1} s), best of {PASSES} passes",
        packets.len(),
        packets.len() as f64 / 50.0
    );
    for (name, format) in formats {
        let frames = bot_frames(&packets, format);
        let down = down_us(&packets, format);
        let up = up_us(&frames, format);
        println!(
            "{name:5} WhatsApp->bot {down:7.1} us/frame   bot->WhatsApp {up:7.1} us/frame   \
             both {:7.1} us per 20 ms = {:.2}% of a core per call = {:.0} calls per core (codec only)",
            down + up,
            (down + up) / 20_000.0 * 100.0,
            20_000.0 / (down + up)
        );
    }
}
