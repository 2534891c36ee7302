//! A supervisor listens in from a real browser: headless Chromium (Debian's `chromium`) loads a
//! page that offers two receive-only audio transceivers; the page's backend (the test) calls
//! StartListen over gRPC and hands back the relay's answer; Chromium connects to the relay's
//! ICE-lite fork port and plays both tracks. Meanwhile the Meta emulator (a 440 Hz tone) and a
//! plain-RTP media server (660 Hz) talk through the relay. Chromium's own getStats must show
//! packets and an audio level above zero on BOTH tracks, each on its labelled stream.
//!
//! Chromium and everything it talks to run in a private network namespace (see
//! `e2e::chromium`): the browser's own background traffic reaches nothing.
//!
//! The second test is the SIPREC-like mode: a media server offers two plain `RTP/AVP` streams
//! and receives the consumer's tone on one and the agent's on the other, decoded with libopus.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use control::client::RelayClient;
use control::pb;
use e2e::chromium::{self, Chromium, PageRequest, PageServer};
use e2e::media::opus_tone;
use e2e::meta::MetaConfig;
use relay::api::{CallControl, CallEventKind, ListenChange, ListenMode, ListenOp, ListenState};
use relay::control::{ControlConfig, serve_on};
use serde_json::Value;

const TEST: &str = "supervisor_hears_both_tracks_in_chromium";
const ID: &str = "wacid.listen-in-chromium";
const PAGE: &str = include_str!("pages/listen.html");

#[test]
fn supervisor_hears_both_tracks_in_chromium() {
    let Some(browser) = chromium::find() else {
        eprintln!(
            "SKIP {TEST}: no chromium on PATH or in $CHROMIUM (scripts/test.sh installs Debian's \
             `chromium`)"
        );
        return;
    };
    if !chromium::in_private_netns() {
        match chromium::rerun_in_private_netns(TEST) {
            Ok(status) => assert!(status.success(), "{TEST} (in its namespace) failed"),
            Err(why) => eprintln!("SKIP {TEST}: no private network namespace: {why}"),
        }
        return;
    }
    chromium::bring_up_loopback().expect("loopback up in the private namespace");
    listen_in(&browser);
}

/// The page's latest report, and what it logged.
#[derive(Default)]
struct Page {
    stats: Option<Value>,
    logs: Vec<String>,
}

fn listen_in(browser: &Path) {
    let mut relay = Relay::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("control port");
    let control = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(serve_on(
        Arc::new(relay.engine.clone()),
        ControlConfig::default(),
        listener,
        std::future::pending(),
    ));

    // A live call: the consumer hums at 440 Hz, the agent at 660 Hz.
    let (meta, sip, _) = ready_call(&mut relay, ID, MetaConfig::default());
    meta.use_audio_frames(opus_tone(440));
    sip.use_audio_frames(opus_tone(660));
    relay.open_gate(ID);
    meta.start_audio();
    sip.start_audio();
    assert!(
        wait(|| sip.received().len() >= 10
            && meta
                .received()
                .iter()
                .filter(|p| p.payload.len() > 3)
                .count()
                >= 10),
        "audio both ways before the supervisor joins"
    );

    // The business's backend: serves the page, turns its offer into StartListen.
    let page = Arc::new(Mutex::new(Page::default()));
    let server = {
        let page = page.clone();
        let handle = rt.handle().clone();
        let control = control.clone();
        PageServer::start(
            move |req: PageRequest| match (req.method.as_str(), req.path.as_str()) {
                ("GET", "/") => (200, "text/html", PAGE.to_string()),
                ("POST", "/offer") => {
                    let r = handle.block_on(async {
                        let mut c = RelayClient::connect(control.clone(), None)
                            .await
                            .map_err(|e| e.to_string())?;
                        c.start_listen(ID, req.body)
                            .await
                            .map_err(|e| e.to_string())
                    });
                    match r {
                        Ok(l) => (200, "application/sdp", l.answer_sdp),
                        Err(e) => (500, "text/plain", e),
                    }
                }
                ("POST", "/stats") => {
                    page.lock().unwrap().stats = serde_json::from_str(&req.body).ok();
                    (204, "text/plain", String::new())
                }
                ("POST", "/log") => {
                    eprintln!("page: {}", req.body);
                    page.lock().unwrap().logs.push(req.body);
                    (204, "text/plain", String::new())
                }
                _ => (404, "text/plain", "not found".into()),
            },
        )
        .expect("page server")
    };
    let log = std::env::temp_dir().join(format!("relay-e2e-chromium-{}.log", std::process::id()));
    let mut chrome = Chromium::open(browser, &server.url("/"), &log).expect("chromium starts");

    // Both tracks decoded: packets and an audio level above zero, each on its labelled stream.
    let heard = |s: &Value, label: &str| {
        s["inbound"].as_array().is_some_and(|tracks| {
            tracks.iter().any(|t| {
                t["label"] == label
                    && t["packetsReceived"].as_u64().unwrap_or(0) >= 50
                    && t["audioLevel"].as_f64().unwrap_or(0.0) > 0.0
            })
        })
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    let stats = loop {
        if let Some(s) = page.lock().unwrap().stats.clone()
            && heard(&s, "consumer")
            && heard(&s, "agent")
        {
            break s;
        }
        if Instant::now() >= deadline || chrome.exited().is_some() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(40).collect();
            panic!(
                "Chromium did not hear both tracks: last stats {:?}\npage log {:?}\n\
                 chromium exited {:?}\nchromium log (newest first):\n{}",
                page.lock().unwrap().stats,
                page.lock().unwrap().logs,
                chrome.exited(),
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("Chromium's inbound-rtp: {}", stats["inbound"]);
    assert_eq!(stats["connectionState"], "connected");
    let inbound = stats["inbound"].as_array().unwrap();
    assert_eq!(inbound.len(), 2, "two tracks, no more");
    assert_ne!(inbound[0]["ssrc"], inbound[1]["ssrc"], "one SSRC per track");

    // The relay reported the fork's life on Watch.
    assert!(
        relay
            .wait_event(ID, WAIT, |k| matches!(
                k,
                CallEventKind::Listen {
                    change: ListenChange::Connected,
                    ..
                }
            ))
            .is_some(),
        "a listen Connected event"
    );

    // StopListen: the fork stops, the call goes on.
    let stopped = rt
        .block_on(async {
            let mut c = RelayClient::connect(control.clone(), None).await.unwrap();
            c.stop_listen(ID).await
        })
        .expect("StopListen")
        .expect("a listen-in to report");
    assert_eq!(stopped.state(), pb::ListenState::Stopped);
    assert_eq!(stopped.stop_reason, "stopped by request");
    assert!(stopped.consumer_packets >= 50 && stopped.agent_packets >= 50);
    assert!(!stopped.supervisor.is_empty());
    let before = sip.received().len();
    assert!(
        wait(|| sip.received().len() >= before + 25),
        "the call carries on after the supervisor left"
    );
    drop(chrome);
    let info = relay.terminate(ID).expect("final stats");
    assert!(info.whatsapp.received.packets >= 50);
}

/// A media server (a recorder, a quality-monitoring probe) listens in over plain RTP: two
/// `RTP/AVP` m-lines, each to its own UDP port. It gets the consumer's 440 Hz tone on the first
/// and the agent's 660 Hz on the second (decoded with libopus, told apart by their energy at
/// each frequency), each with one SSRC and unbroken numbering from the fork's port, and an RTCP
/// BYE on each when StopListen ends it; the call carries on.
#[test]
fn media_server_hears_both_streams_over_plain_rtp() {
    const ID: &str = "wacid.listen-in-plain-rtp";
    let mut relay = Relay::start();
    let (meta, sip, _) = ready_call(&mut relay, ID, MetaConfig::default());
    meta.use_audio_frames(opus_tone(440));
    sip.use_audio_frames(opus_tone(660));
    relay.open_gate(ID);
    meta.start_audio();
    sip.start_audio();
    assert!(wait(|| sip.received().len() >= 10), "audio flows");

    let socks: Vec<std::net::UdpSocket> = (0..2)
        .map(|_| {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("media server port");
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            s
        })
        .collect();
    let port = |i: usize| socks[i].local_addr().unwrap().port();
    let offer = format!(
        "v=0\r\no=srs 1 1 IN IP4 127.0.0.1\r\ns=recording\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {} RTP/AVP 96\r\na=label:1\r\na=recvonly\r\na=rtcp-mux\r\n\
         a=rtpmap:96 opus/48000/2\r\n\
         m=audio {} RTP/AVP 96\r\na=label:2\r\na=recvonly\r\na=rtcp-mux\r\n\
         a=rtpmap:96 opus/48000/2\r\n",
        port(0),
        port(1)
    );
    let status = relay
        .rt
        .block_on(relay.engine.listen(
            ID.into(),
            ListenOp::Start {
                offer_sdp: offer,
                mode: ListenMode::Listen,
            },
        ))
        .expect("StartListen")
        .expect("a status");
    assert_eq!(status.state, ListenState::Live, "nothing to negotiate");
    let answer = status.answer_sdp.clone();
    assert!(
        answer.contains("a=label:consumer") && answer.contains("a=label:agent"),
        "{answer}"
    );
    let ssrcs: Vec<u32> = answer
        .lines()
        .filter_map(|l| l.strip_prefix("a=ssrc:"))
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ssrcs.len(), 2, "{answer}");

    // 100 packets (2 s) on each stream, decoded as they come.
    let mut heard = Vec::new();
    for (i, sock) in socks.iter().enumerate() {
        let mut dec = relay::codec::opus::OpusDecoder::new(48_000).unwrap();
        let (mut pcm, mut seqs) = (Vec::new(), Vec::new());
        let mut buf = [0u8; 1500];
        let deadline = Instant::now() + WAIT;
        while seqs.len() < 100 && Instant::now() < deadline {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            assert_eq!(from.port(), status.local.port(), "from the fork's own port");
            let hdr = relay::wire::rtp::parse(&buf[..n]).expect("RTP");
            assert_eq!((hdr.pt.get(), hdr.ssrc.get()), (96, ssrcs[i]));
            seqs.push(hdr.seq.get());
            let mut out = [0i16; 5760];
            let got = dec
                .decode(&buf[hdr.payload_range()], &mut out)
                .expect("Opus");
            pcm.extend_from_slice(&out[..got]);
        }
        assert_eq!(seqs.len(), 100, "stream {i}: 100 packets");
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
            "stream {i}: unbroken numbering {seqs:?}"
        );
        // Skip the decoder's first 100 ms.
        let tail = &pcm[4800..];
        heard.push((power_at(tail, 440.0), power_at(tail, 660.0)));
    }
    eprintln!(
        "power at (440 Hz, 660 Hz): consumer {:?}, agent {:?}",
        heard[0], heard[1]
    );
    assert!(
        heard[0].0 > 10.0 * heard[0].1,
        "the consumer's stream is the 440 Hz tone"
    );
    assert!(
        heard[1].1 > 10.0 * heard[1].0,
        "the agent's stream is the 660 Hz tone"
    );

    // StopListen: a BYE on each stream; the call goes on.
    let stopped = relay
        .rt
        .block_on(relay.engine.listen(ID.into(), ListenOp::Stop))
        .expect("StopListen")
        .expect("a status");
    assert_eq!(stopped.state, ListenState::Stopped);
    for (i, sock) in socks.iter().enumerate() {
        let mut buf = [0u8; 1500];
        let deadline = Instant::now() + WAIT;
        let bye = loop {
            assert!(Instant::now() < deadline, "stream {i}: no BYE");
            if let Ok((n, _)) = sock.recv_from(&mut buf)
                && n >= 8
                && buf[1] == 203
            {
                break u32::from_be_bytes(buf[4..8].try_into().unwrap());
            }
        };
        assert_eq!(bye, ssrcs[i]);
    }
    let before = sip.received().len();
    assert!(
        wait(|| sip.received().len() >= before + 25),
        "the call carries on"
    );
    relay.terminate(ID).expect("final stats");
}

/// Goertzel power of `pcm` (48 kHz) at `hz`.
fn power_at(pcm: &[i16], hz: f64) -> f64 {
    let k = 2.0 * (2.0 * std::f64::consts::PI * hz / 48_000.0).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in pcm {
        let s0 = f64::from(x) + k * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - k * s1 * s2
}
