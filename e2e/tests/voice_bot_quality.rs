//! Speech quality through a voice-bot leg, scored with PESQ (ITU-T P.862) against the source
//! and against the same codecs run directly (no relay): the issue's target is the relay's
//! path within 0.2 MOS-LQO of the direct one.
//!
//! Speech from `espeak-ng` (resampled to 48 kHz) is Opus-encoded once, as WhatsApp would, and
//! sent by the Meta emulator through the relay (real engine, real UDP, DTLS-SRTP) to a Python
//! bot on a real WebSocket (e2e/bots/quality.py), which records what it hears and echoes it.
//! Scored, for μ-law 8 kHz and raw L16 16 kHz:
//! - WhatsApp → bot: what the bot recorded, vs Opus decoded at the bot's rate and put through
//!   μ-law (or not) directly;
//! - WhatsApp → bot → WhatsApp: what came back to the Meta peer, decoded at the bot's rate,
//!   vs the direct path's bot audio Opus-encoded with the relay's settings and decoded.
//!
//! Not run in CI (`#[ignore]`): it needs espeak-ng, numpy and pesq (built from source) and
//! takes about a minute. Run it with
//!
//! ```text
//! apt-get install espeak-ng && python3 -m pip install numpy pesq websockets
//! cargo test -p e2e --test voice_bot_quality -- --ignored --nocapture
//! ```
//!
//! The figures are in BENCHMARKS.md ("Voice bot: speech quality").

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use e2e::meta::MetaConfig;
use relay::api::{CallControl, InternalKind, InternalLegSpec, SourcePolicy};
use relay::bot::{BotTarget, MediaFormat};
use relay::codec::g711::{self, G711};
use relay::codec::opus::{OpusDecoder, OpusEncoder, OpusEncoderConfig};
use relay::engine::{Engine, EngineConfig};
use serde_json::Value;

fn script() -> String {
    format!("{}/bots/quality.py", env!("CARGO_MANIFEST_DIR"))
}

fn run_json(args: &[&str]) -> Value {
    let out = Command::new("python3")
        .arg(script())
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "quality.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("")).expect("json")
}

fn read_raw(path: &Path) -> Vec<i16> {
    std::fs::read(path)
        .expect("read pcm")
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

fn write_raw(path: &Path, pcm: &[i16]) {
    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    std::fs::write(path, bytes).expect("write pcm");
}

struct Bot {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Bot {
    fn spawn(out: &Path) -> (Bot, u16) {
        let mut child = Command::new("python3")
            .arg(script())
            .args(["bot", "--echo", "--out"])
            .arg(out)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let mut bot = Bot { child, lines };
        let port = bot.wait("listening")["port"].as_u64().expect("port") as u16;
        (bot, port)
    }

    fn wait(&mut self, event: &str) -> Value {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(v) if v["event"] == event => return v,
                Ok(_) => {}
                Err(_) => panic!("the bot did not say {event}"),
            }
        }
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What WhatsApp sends: 48 kHz Opus, 24 kbit/s, FEC on.
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

/// The same codecs without the relay: Opus decoded at `rate`, μ-law round trip at 8 kHz; then
/// back: Opus-encoded with the relay's settings toward WhatsApp and decoded at `rate`.
fn direct(packets: &[Vec<u8>], rate: u32) -> (Vec<i16>, Vec<i16>) {
    let mut dec = OpusDecoder::new(rate).expect("decoder");
    let mut to_bot = Vec::new();
    let mut pcm = vec![0i16; 5760];
    for p in packets {
        let n = dec.decode(p, &mut pcm).expect("decode");
        if rate == 8000 {
            let mut law = [0u8; 160];
            let k = g711::encode(G711::Ulaw, &pcm[..n], &mut law);
            let mut back = [0i16; 160];
            let k = g711::decode(G711::Ulaw, &law[..k], &mut back);
            to_bot.extend_from_slice(&back[..k]);
        } else {
            to_bot.extend_from_slice(&pcm[..n]);
        }
    }
    let mut enc = OpusEncoder::new(rate, OpusEncoderConfig::toward_wa()).expect("relay encoder");
    let mut dec = OpusDecoder::new(rate).expect("decoder");
    let mut back = Vec::new();
    let frame = rate as usize / 50;
    for f in to_bot.chunks_exact(frame) {
        let mut buf = [0u8; 1500];
        let n = enc.encode(f, &mut buf).expect("encode");
        let k = dec.decode(&buf[..n], &mut pcm).expect("decode");
        back.extend_from_slice(&pcm[..k]);
    }
    (to_bot, back)
}

struct Scores {
    to_bot: Value,
    round_trip: Value,
}

/// The far end of the call: a voice bot in one of its formats, or a G.711 (PCMU) media server.
#[derive(Clone, Copy, Debug)]
enum Far {
    Bot(MediaFormat),
    G711,
}

impl Far {
    fn tag(self) -> &'static str {
        match self {
            Far::Bot(MediaFormat::Mulaw8k) => "ulaw",
            Far::Bot(MediaFormat::L16_16k) => "l16",
            Far::G711 => "g711",
        }
    }
    fn rate(self) -> u32 {
        match self {
            Far::Bot(f) => f.sample_rate(),
            Far::G711 => 8000,
        }
    }
}

/// (sequence number, PCMU payload) of each packet the server got.
type Heard = Vec<(u16, Vec<u8>)>;

/// A plain RTP media server with PCMU only: records what the relay sends it and echoes each
/// packet back at once (its own sequence and timestamps).
struct PcmuServer {
    sock: Arc<std::net::UdpSocket>,
    got: Arc<std::sync::Mutex<Heard>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl PcmuServer {
    fn start() -> PcmuServer {
        let sock = Arc::new(std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"));
        sock.set_read_timeout(Some(Duration::from_millis(5)))
            .expect("timeout");
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, g, st) = (sock.clone(), got.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            let (mut seq, mut ts) = (1u16, 0u32);
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((n, from)) = s.recv_from(&mut buf) else {
                    continue;
                };
                if n < 12 || buf[1] & 0x7f != 0 {
                    continue;
                }
                let rseq = u16::from_be_bytes([buf[2], buf[3]]);
                g.lock().expect("lock").push((rseq, buf[12..n].to_vec()));
                let mut echo = vec![0x80, 0];
                echo.extend_from_slice(&seq.to_be_bytes());
                echo.extend_from_slice(&ts.to_be_bytes());
                echo.extend_from_slice(&0x0711_0711u32.to_be_bytes());
                echo.extend_from_slice(&buf[12..n]);
                let _ = s.send_to(&echo, from);
                seq = seq.wrapping_add(1);
                ts = ts.wrapping_add((n - 12) as u32);
            }
        });
        PcmuServer { sock, got, stop }
    }

    fn sdp(&self) -> String {
        let a = self.sock.local_addr().expect("addr");
        format!(
            "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=Asterisk\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n\
             a=ptime:20\r\na=sendrecv\r\n",
            ip = a.ip(),
            port = a.port()
        )
    }

    /// What it heard, in sequence order, decoded.
    fn heard(&self) -> Vec<i16> {
        let mut got = self.got.lock().expect("lock").clone();
        got.sort_by_key(|(seq, _)| *seq);
        got.iter()
            .flat_map(|(_, p)| p.iter().map(|c| g711::ulaw_decode(*c)))
            .collect()
    }
}

impl Drop for PcmuServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One call through the relay: the speech goes to the far end, its echo comes back.
fn through_relay(dir: &Path, packets: &[Vec<u8>], far: Far) -> (PathBuf, PathBuf) {
    let tag = far.tag();
    let rate = far.rate();
    let far_out = dir.join(format!("relay_{tag}_to_far.raw"));
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
    let meta = common::meta(MetaConfig::default());
    let id = format!("wacid.quality.{tag}");
    let mut req = common::user_initiated(&id, &meta, None);
    let mut bot = None;
    let mut server = None;
    match far {
        Far::Bot(format) => {
            let (b, port) = Bot::spawn(&far_out);
            bot = Some(b);
            req.internal = InternalLegSpec {
                kind: InternalKind::WebSocket(Arc::new(BotTarget {
                    url: format!("ws://127.0.0.1:{port}/quality"),
                    headers: vec![],
                    custom_parameters: vec![],
                    format,
                })),
                remote_sdp: None,
                source: SourcePolicy::Strict,
            };
        }
        Far::G711 => {
            let s = PcmuServer::start();
            req.internal.remote_sdp = Some(s.sdp());
            server = Some(s);
        }
    }
    let created = rt.block_on(engine.create_call(req)).expect("create");
    if server.is_some() {
        assert!(
            created.internal_sdp.contains("PCMU/8000"),
            "{}",
            created.internal_sdp
        );
    }
    meta.set_remote_sdp(&created.whatsapp_sdp).expect("answer");
    rt.block_on(engine.open_gate(id.clone())).expect("gate");
    // Wait for SRTP (silence frames until it is up), then the speech on a 20 ms clock, then
    // a second of silence for the echo to come back.
    let silence = &packets[0];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !meta.send_opus(silence) {
        assert!(Instant::now() < deadline, "SRTP never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let t0 = Instant::now();
    for (k, p) in packets
        .iter()
        .chain(std::iter::repeat_n(silence, 50))
        .enumerate()
    {
        let due = t0 + Duration::from_millis(20) * k as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        meta.send_opus(p);
    }
    if let Ok(info) = rt.block_on(engine.get_call(id.clone())) {
        let fill = meta
            .received()
            .iter()
            .filter(|p| p.payload.len() <= 3)
            .count();
        eprintln!(
            "{tag}: internal leg dropped {}, WhatsApp leg dropped {}, sent to WhatsApp {} \
             packets ({fill} silence fill seen by Meta)",
            info.internal.dropped, info.whatsapp.dropped, info.whatsapp.sent.packets
        );
    }
    let _ = rt.block_on(engine.terminate(id.clone(), "done".into()));
    if let Some(mut bot) = bot {
        let report = bot.wait("report");
        eprintln!("{tag}: bot report {report}");
    }
    if let Some(server) = server {
        write_raw(&far_out, &server.heard());
    }
    // What came back to WhatsApp, in sequence order, decoded at the far end's rate.
    let mut received = meta.received();
    received.sort_by_key(|p| p.at);
    let mut dec = OpusDecoder::new(rate).expect("decoder");
    let mut pcm = vec![0i16; 5760];
    let mut back = Vec::new();
    let mut last: Option<u16> = None;
    for p in &received {
        if let Some(l) = last {
            for _ in 1..p.header.seq.wrapping_sub(l).min(10) {
                let n = dec.conceal(rate as usize / 50, &mut pcm).expect("plc");
                back.extend_from_slice(&pcm[..n]);
            }
        }
        last = Some(p.header.seq);
        if let Ok(n) = dec.decode(&p.payload, &mut pcm) {
            back.extend_from_slice(&pcm[..n]);
        }
    }
    let back_out = dir.join(format!("relay_{tag}_round_trip.raw"));
    write_raw(&back_out, &back);
    engine.shutdown();
    (far_out, back_out)
}

fn run_score(reference: &Path, deg: &Path, rate: u32) -> Value {
    let mut args = vec!["score"];
    let r = reference.to_str().expect("path").to_string();
    let d = deg.to_str().expect("path").to_string();
    let rate = rate.to_string();
    args.extend([r.as_str(), d.as_str(), rate.as_str()]);
    run_json(&args)
}

#[test]
#[ignore = "needs espeak-ng, numpy and pesq; about a minute (BENCHMARKS.md has the figures)"]
fn speech_through_a_voice_bot_scores_like_the_codecs_alone() {
    // RUST_LOG=relay=debug shows the relay's side (the bot's WebSocket, the call's events).
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    // QUALITY_ONLY=ulaw|l16|g711 runs one path.
    let only = std::env::var("QUALITY_ONLY").ok();
    let dir = std::env::temp_dir().join(format!("relay-quality-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let prepared = run_json(&["prepare", dir.to_str().expect("dir")]);
    eprintln!("{prepared}");
    let speech = read_raw(&dir.join("speech48k.raw"));
    let packets = whatsapp_packets(&speech);
    let mut worst = 0.0f64;
    for far in [
        Far::Bot(MediaFormat::Mulaw8k),
        Far::Bot(MediaFormat::L16_16k),
        Far::G711,
    ] {
        let (tag, rate) = (far.tag(), far.rate());
        if only.as_deref().is_some_and(|o| o != tag) {
            continue;
        }
        let reference = match rate {
            8000 => dir.join("ref8k.raw"),
            _ => dir.join("ref16k.raw"),
        };
        let (d_bot, d_back) = direct(&packets, rate);
        let d_bot_path = dir.join(format!("direct_{tag}_to_far.raw"));
        let d_back_path = dir.join(format!("direct_{tag}_round_trip.raw"));
        write_raw(&d_bot_path, &d_bot);
        write_raw(&d_back_path, &d_back);
        let (r_bot, r_back) = through_relay(&dir, &packets, far);
        let s = [
            Scores {
                to_bot: run_score(&reference, &d_bot_path, rate),
                round_trip: run_score(&reference, &d_back_path, rate),
            },
            Scores {
                to_bot: run_score(&reference, &r_bot, rate),
                round_trip: run_score(&reference, &r_back, rate),
            },
        ];
        let key = if rate == 16_000 { "wb" } else { "nb" };
        for (what, d, r) in [
            ("WhatsApp -> far end", &s[0].to_bot, &s[1].to_bot),
            (
                "WhatsApp -> far end -> WhatsApp",
                &s[0].round_trip,
                &s[1].round_trip,
            ),
        ] {
            let (dv, rv) = (
                d[key].as_f64().unwrap_or(f64::NAN),
                r[key].as_f64().unwrap_or(f64::NAN),
            );
            eprintln!(
                "PESQ {tag} ({key}) {what}: direct {dv:.3}, through the relay {rv:.3} \
                 (delta {:+.3}); nb {} vs {}; alignment offset {} ms",
                rv - dv,
                d["nb"],
                r["nb"],
                r["lag_ms"]
            );
            worst = worst.max(dv - rv);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        worst <= 0.2,
        "the relay's path lost {worst:.3} MOS-LQO against the codecs alone"
    );
}
