//! A voice bot as the internal leg, end to end: the real engine in process, the Meta emulator
//! on real UDP sockets, and a Python bot (e2e/bots/echo_bot.py, the `websockets` package)
//! speaking Twilio Media Streams on a real WebSocket over loopback.
//!
//! What a user would check, and this test does:
//! - CreateCall with INTERNAL_TRANSPORT_WEBSOCKET connects to the bot before answering, with
//!   the bearer token; the bot gets `connected` and a `start` naming the call;
//! - what the consumer says reaches the bot, and what the bot echoes back reaches WhatsApp:
//!   the round trip WhatsApp → relay → bot → relay → WhatsApp is measured (p50/p99) with the
//!   bot's own hold time reported beside it;
//! - the bot's mark comes back once its audio has played; after the bot's `clear`, nothing it
//!   had queued reaches WhatsApp (only the relay's silence fill), and the pending mark comes
//!   back at once;
//! - a digit pressed on WhatsApp reaches the bot as a `dtmf` event;
//! - the bot closing its WebSocket ends the call with END_CAUSE_BOT_HANGUP;
//! - an unreachable bot fails CreateCall with BOT_UNREACHABLE and creates nothing.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e::meta::MetaConfig;
use relay::api::{
    ApiError, CallControl, CallEventKind, EndCause, InternalKind, InternalLegSpec, SourcePolicy,
};
use relay::bot::{BotTarget, MediaFormat};
use relay::codec::opus::OpusDecoder;
use relay::engine::{Engine, EngineConfig, EngineHandle};
use serde_json::Value;

/// The relay's silence fill frame (CELT 20 ms, empty): what WhatsApp gets while the bot is
/// quiet.
const FILL: [u8; 3] = [0xf8, 0xff, 0xfe];
const TOKEN: &str = "test-token";

fn python_ready() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import websockets.asyncio.server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    let why =
        "python3 cannot import websockets (python3 -m pip install -r e2e/python/requirements.txt)";
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(!ci, "{why}; CI must run the voice-bot test");
    eprintln!("SKIPPED (not in CI): {why}");
    false
}

struct PyBot {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl PyBot {
    fn spawn(echo_secs: f64) -> (PyBot, u16) {
        let path = format!("{}/bots/echo_bot.py", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new("python3")
            .arg(&path)
            .args(["--echo", &echo_secs.to_string(), "--token", TOKEN])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {path}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                    Err(_) => eprintln!("echo_bot printed: {line}"),
                }
            }
        });
        let mut bot = PyBot { child, lines };
        let port = bot.wait("listening", Duration::from_secs(20))["port"]
            .as_u64()
            .expect("port") as u16;
        (bot, port)
    }

    fn wait(&mut self, event: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if v["event"] == event => return v,
                Ok(v) if v["event"] == "report" => panic!("bot ended early: {v}"),
                Ok(_) => {}
                Err(_) => panic!("the bot did not say {event} within {timeout:?}"),
            }
        }
    }
}

impl Drop for PyBot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The engine with a multi-threaded runtime: the bot's WebSocket task runs on it between the
/// test's requests, as in the relay process.
struct Relay {
    rt: tokio::runtime::Runtime,
    engine: EngineHandle,
}

impl Relay {
    fn start() -> Relay {
        let engine = Engine::start(EngineConfig {
            shards: 2,
            ..EngineConfig::default()
        })
        .expect("engine");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        Relay { rt, engine }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.engine.shutdown();
    }
}

fn bot_leg(port: u16) -> InternalLegSpec {
    InternalLegSpec {
        kind: InternalKind::WebSocket(Arc::new(BotTarget {
            url: format!("ws://127.0.0.1:{port}/media"),
            headers: vec![("authorization".into(), format!("Bearer {TOKEN}"))],
            custom_parameters: vec![("lang".into(), "pt-BR".into())],
            format: MediaFormat::Mulaw8k,
        })),
        remote_sdp: None,
        source: SourcePolicy::Strict,
    }
}

fn unix_us(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn rms(x: &[i16]) -> f64 {
    (x.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

#[test]
fn a_voice_bot_hears_the_consumer_answers_marks_clears_and_hangs_up() {
    if !python_ready() {
        return;
    }
    let echo_secs = 6.0;
    let (mut bot, port) = PyBot::spawn(echo_secs);
    let relay = Relay::start();
    let meta = common::meta(MetaConfig::default());
    let id = "wacid.voicebot";
    let mut events = relay.engine.subscribe();
    let mut req = common::user_initiated(id, &meta, None);
    req.internal = bot_leg(port);
    let created = relay
        .rt
        .block_on(relay.engine.create_call(req))
        .expect("create with a bot");
    assert_eq!(created.internal_sdp, "", "no SDP with a bot");
    let started = bot.wait("started", Duration::from_secs(10));
    assert_eq!(started["callSid"], id);
    meta.set_remote_sdp(&created.whatsapp_sdp).expect("answer");
    relay
        .rt
        .block_on(relay.engine.open_gate(id.to_string()))
        .expect("gate");

    // The consumer speaks: a 20 ms tone blip every 100 ms, silence in between, for the echo
    // phase. Each blip's send time is kept to find its echo.
    let tone = e2e::media::opus_tone(440);
    let mut blips = Vec::new();
    let t0 = Instant::now();
    let mut k = 0u32;
    while t0.elapsed() < Duration::from_secs_f64(echo_secs - 0.5) {
        let due = t0 + Duration::from_millis(20) * k;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // The first second settles ICE/DTLS and the first echoes: blips after it.
        // A blip is the tone's first three frames: the first is intra-coded, so a decoder
        // coming out of silence hears it at full level (a frame from mid-stream is coded
        // against the previous frame's energy and decodes quiet after silence).
        if k % 5 < 3 && k >= 50 {
            let at = SystemTime::now();
            if meta.send_opus(&tone[(k % 5) as usize]) && k.is_multiple_of(5) {
                blips.push(unix_us(at));
            }
        } else {
            meta.send_opus(&FILL);
        }
        k += 1;
    }

    // The echo of each blip: the first loud packet WhatsApp got after it.
    let received = meta.received();
    let mut dec = OpusDecoder::new(8000).expect("decoder");
    let mut pcm = [0i16; 960];
    let loud: Vec<u64> = received
        .iter()
        .filter_map(|p| {
            let n = dec.decode(&p.payload, &mut pcm).ok()?;
            (rms(&pcm[..n]) > 100.0).then_some(p.at_unix_us)
        })
        .collect();
    let mut rtt: Vec<Duration> = blips
        .iter()
        .filter_map(|&sent| {
            loud.iter()
                .find(|&&at| at >= sent && at < sent + 95_000)
                .map(|&at| Duration::from_micros(at - sent))
        })
        .collect();
    let fills = received.iter().filter(|p| p.payload == FILL).count();
    if std::env::var("VOICE_BOT_DEBUG").is_ok() {
        let mut d = OpusDecoder::new(8000).expect("decoder");
        let levels: Vec<(u16, usize, i64)> = received
            .iter()
            .map(|p| {
                let n = d.decode(&p.payload, &mut pcm).unwrap_or(0);
                (p.header.seq, p.payload.len(), rms(&pcm[..n]) as i64)
            })
            .collect();
        eprintln!("levels {levels:?}");
    }
    eprintln!(
        "WhatsApp got {} packets ({} fill, {} loud); {} blips sent",
        received.len(),
        fills,
        loud.len(),
        blips.len()
    );
    // Most blips echo within 95 ms (before the next blip's echo could be taken for theirs);
    // 80 %, not all: on a loaded 2-core CI machine a few echoes come later (BENCHMARKS.md).
    assert!(
        rtt.len() * 10 >= blips.len() * 8,
        "echoes found for {} of {} blips",
        rtt.len(),
        blips.len()
    );
    rtt.sort();
    let (p50, p99) = (percentile(&rtt, 0.5), percentile(&rtt, 0.99));

    // Barge-in: after the bot's clear, only the relay's silence fill reaches WhatsApp.
    let cleared = bot.wait("cleared", Duration::from_secs(15));
    let clear_at_us = (cleared["at_unix"].as_f64().expect("at") * 1e6) as u64;
    std::thread::sleep(Duration::from_millis(500));
    meta.send_dtmf(7, Duration::from_millis(100));
    let report = bot.wait("report", Duration::from_secs(15));
    assert_eq!(report["errors"], serde_json::json!([]), "bot: {report}");
    assert_eq!(report["dtmf"], serde_json::json!(["7"]));
    assert_eq!(report["start"]["customParameters"]["lang"], "pt-BR");
    assert_eq!(report["start"]["callSid"], id);
    assert_eq!(report["path"], "/media");
    let received = meta.received();
    let after_clear: Vec<&Vec<u8>> = received
        .iter()
        .filter(|p| p.at_unix_us > clear_at_us + 60_000)
        .map(|p| &p.payload)
        .collect();
    assert!(
        after_clear.len() >= 10,
        "the stream went on after the clear"
    );
    let leaked = after_clear.iter().filter(|p| p.as_slice() != FILL).count();
    assert_eq!(
        leaked, 0,
        "nothing the bot queued before its clear reached WhatsApp after it"
    );
    let before_clear = received
        .iter()
        .filter(|p| p.at_unix_us + 250_000 > clear_at_us && p.at_unix_us < clear_at_us)
        .filter(|p| p.payload != FILL)
        .count();
    assert!(before_clear >= 5, "the bot was speaking before the clear");

    // The bot closed its WebSocket: the call ends with the bot's cause.
    let ended = relay.rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match events.recv().await {
                    Ok(ev) if ev.call_id == id => {
                        if let CallEventKind::Ended { cause, .. } = ev.kind {
                            return Some(cause);
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return None,
                }
            }
        })
        .await
        .ok()
        .flatten()
    });
    assert_eq!(ended, Some(EndCause::BotHangup));

    let hold_p99 = report["echo_hold_us_p99"].as_f64().unwrap_or(0.0);
    eprintln!(
        "voice bot round trip WhatsApp → relay → bot → relay → WhatsApp over loopback: \
         {} blips, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; the bot's own hold p99 {:.0} µs; \
         mark after 0.5 s of audio came back after {:.3} s; clear's mark after {:.3} s",
        rtt.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        rtt.last().expect("rtt").as_secs_f64() * 1e3,
        hold_p99,
        report["marks"]["m1"].as_f64().unwrap_or(f64::NAN),
        report["marks"]["before-clear"].as_f64().unwrap_or(f64::NAN),
    );
    // The target is 40 ms added by the relay (bot excluded) on a quiet machine; this
    // shared CI machine gets slack, and BENCHMARKS.md records the measured figure.
    assert!(p99 < Duration::from_millis(90), "p99 {p99:?}");
}

#[test]
fn an_unreachable_bot_fails_create_call_and_creates_nothing() {
    let relay = Relay::start();
    let meta = common::meta(MetaConfig::default());
    // A port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut req = common::user_initiated("wacid.nobot", &meta, None);
    req.internal = bot_leg(port);
    let r = relay.rt.block_on(relay.engine.create_call(req));
    assert!(matches!(r, Err(ApiError::BotUnreachable(_))), "{r:?}");
    assert!(matches!(
        relay
            .rt
            .block_on(relay.engine.get_call("wacid.nobot".into())),
        Err(ApiError::NotFound(_))
    ));
    assert_eq!(relay.engine.active_calls(), 0);
}
