//! Interop against stacks nobody on this project wrote, with the relay driven over its real
//! gRPC control plane (in-process engine + tonic server on loopback, the `control` crate's
//! client), as a signaling tier would.
//!
//! - `meta_peer.py`: a Meta-like WhatsApp endpoint built from aiortc's parts (aioice's STUN,
//!   pyOpenSSL's DTLS with use_srtp and keying-material export, pylibsrtp). It offers as Meta
//!   does (ice-lite, actpass, host candidates on loopback); a plain-RTP SIP peer (`SipPeer`) is
//!   the internal leg.
//! - `browser_agent.py`: aiortc's RTCPeerConnection as a browser agent on a WebRTC internal leg
//!   (the relay ICE-lite, DTLS either role), both offer directions, with the Meta emulator on
//!   the WhatsApp leg; and the agent hanging up.
//!
//! The Python peers speak JSON lines on stdin/stdout (see the scripts' docstrings). Their
//! dependencies are pinned in `e2e/python/requirements.txt`: when they are missing the tests
//! fail under `CI` (scripts/test.sh installs them) and skip with a printed reason elsewhere.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{WAIT, payload_intact, wait};
use control::client::RelayClient;
use control::pb;
use e2e::rtp::read_stamp;
use e2e::sip::{SipConfig, SipPeer};
use relay::call::CallConfig;
use relay::control::{ControlConfig, serve_on};
use relay::engine::{Engine, EngineConfig, EngineHandle};
use serde_json::{Value, json};

// ----- Python peers ----------------------------------------------------------------------------

/// Whether `python3` can import `modules`. Missing modules fail the test under CI (the test
/// script installs them, so their absence is a broken setup) and skip it elsewhere, loudly.
fn python_ready(modules: &[&str]) -> bool {
    let probe = format!("import {}", modules.join(", "));
    let ok = Command::new("python3")
        .args(["-c", &probe])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    let why = format!(
        "python3 cannot import {} (python3 -m pip install -r e2e/python/requirements.txt)",
        modules.join(", ")
    );
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(!ci, "{why}; CI must run the interop tests");
    eprintln!("SKIPPED (not in CI): {why}");
    false
}

/// A Python peer process and its event stream.
struct PyPeer {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::Receiver<Value>,
    /// Events read while waiting for another one, in arrival order.
    backlog: Vec<Value>,
}

impl PyPeer {
    fn spawn(script: &str, args: &[&str]) -> PyPeer {
        let path = format!("{}/python/{script}", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new("python3")
            .arg(&path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start python3 {path}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, events) = mpsc::channel();
        let name = script.to_string();
        let reader_name = name.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("{reader_name} printed non-JSON: {line}"),
                }
            }
        });
        let stdin = child.stdin.take();
        PyPeer {
            name,
            child,
            stdin,
            events,
            backlog: Vec::new(),
        }
    }

    fn send(&mut self, cmd: Value) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{cmd}").expect("write to python peer");
        stdin.flush().expect("flush to python peer");
    }

    /// The next event named `event` (earlier ones of other names are kept); panics on an
    /// `error` event or after `WAIT`.
    fn expect(&mut self, event: &str) -> Value {
        if let Some(i) = self.backlog.iter().position(|v| v["event"] == event) {
            return self.backlog.remove(i);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) if v["event"] == event => return v,
                Ok(v) if v["event"] == "error" => panic!("{} reported: {}", self.name, v["what"]),
                Ok(v) => self.backlog.push(v),
                Err(_) => panic!(
                    "{}: no {event:?} event within {WAIT:?}; got meanwhile: {:?}",
                    self.name, self.backlog
                ),
            }
        }
    }

    fn stats(&mut self) -> Value {
        self.send(json!({"cmd": "stats"}));
        self.expect("stats")
    }
}

impl Drop for PyPeer {
    fn drop(&mut self) {
        // EOF on stdin ends the peer; kill it if it does not go within a second.
        drop(self.stdin.take());
        let end = Instant::now() + Duration::from_secs(1);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| s.get(2 * i..2 * i + 2))
        .map(|b| u8::from_str_radix(b, 16).expect("hex from the python peer"))
        .collect()
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("expected a count, got {v}"))
}

// ----- the relay, over gRPC --------------------------------------------------------------------

struct GrpcRelay {
    rt: tokio::runtime::Runtime,
    engine: EngineHandle,
    client: RelayClient,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl GrpcRelay {
    fn start(call: CallConfig) -> GrpcRelay {
        let engine = Engine::start(EngineConfig {
            shards: 1,
            call,
            ..EngineConfig::default()
        })
        .expect("engine starts");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind control port");
        let addr: SocketAddr = listener.local_addr().expect("control address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(serve_on(
            Arc::new(engine.clone()),
            ControlConfig::default(),
            listener,
            async move {
                let _ = stopped.await;
            },
        ));
        let client = rt
            .block_on(RelayClient::connect(format!("http://{addr}"), None))
            .expect("gRPC client connects");
        GrpcRelay {
            rt,
            engine,
            client,
            stop: Some(stop),
        }
    }

    fn create(&mut self, req: pb::CreateCallRequest) -> pb::CreateCallResponse {
        self.rt
            .block_on(self.client.create_call(req))
            .expect("CreateCall")
    }

    fn call(&mut self, id: &str) -> pb::CallInfo {
        self.rt
            .block_on(self.client.get_call(id))
            .expect("GetCall")
            .call
            .expect("call is live")
    }

    fn open_gate(&mut self, id: &str) -> pb::CallInfo {
        self.rt
            .block_on(self.client.open_gate(id))
            .expect("OpenGate")
    }

    fn terminate(&mut self, id: &str) -> Option<pb::CallInfo> {
        self.rt
            .block_on(self.client.terminate(id, "test over"))
            .expect("Terminate")
    }
}

impl Drop for GrpcRelay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.engine.shutdown();
    }
}

/// Shorter RTCP interval than the default 5 s so a 2 s call sees the relay's reports.
fn test_call_config() -> CallConfig {
    CallConfig {
        rtcp_interval: Duration::from_millis(500),
        ..CallConfig::default()
    }
}

// ----- 1. the Meta-like peer -------------------------------------------------------------------

const META_DEPS: &[&str] = &["aioice", "OpenSSL", "pylibsrtp"];
/// 2 s of audio from the Meta peer.
const META_PACKETS: u64 = 100;

/// A user-initiated call: Meta's offer → CreateCall → answer to the Python peer → ICE-lite +
/// DTLS (the relay is ICE controlling and DTLS client) → gate → audio both ways.
fn user_initiated_with_meta_peer(openssl_profile: &str, expected: pb::SrtpProfile) {
    if !python_ready(META_DEPS) {
        return;
    }
    let mut relay = GrpcRelay::start(test_call_config());
    let sip = SipPeer::spawn(SipConfig::default()).expect("sip peer");
    let mut meta = PyPeer::spawn(
        "meta_peer.py",
        &[
            "--profiles",
            openssl_profile,
            "--wait-for-media",
            "--rtcp-interval",
            "0.5",
        ],
    );
    let ready = meta.expect("ready");
    let offer = ready["offer"].as_str().expect("offer SDP").to_string();
    assert!(offer.contains("a=ice-lite\r\n") && offer.contains("a=setup:actpass\r\n"));

    let id = format!("wacid.interop-{openssl_profile}");
    let created = relay.create(pb::CreateCallRequest {
        call_id: id.clone(),
        business_number: "15550003333".into(),
        consumer: format!("c-{id}"),
        direction: pb::CallDirection::UserInitiated.into(),
        whatsapp_offer_sdp: offer.clone(),
        whatsapp: None,
        internal: Some(pb::InternalLeg {
            remote_sdp: sip.sdp(),
            ..Default::default()
        }),
    });
    assert!(created.whatsapp_sdp.contains("a=setup:active\r\n"));
    assert!(!created.whatsapp_sdp.contains("a=ice-lite"));
    meta.send(json!({"cmd": "answer", "sdp": created.whatsapp_sdp}));
    assert_eq!(meta.expect("answer_set")["role"], "server");
    sip.set_remote_sdp(&created.internal_sdp)
        .expect("sip takes the relay's SDP");

    // ICE: the relay nominates (the lite peer only answers); DTLS: the relay is the client.
    let nominated = meta.expect("ice_nominated");
    let dtls = meta.expect("dtls_connected");
    assert_eq!(dtls["profile"], openssl_profile);
    assert_eq!(dtls["role"], "server");
    assert!(
        wait(|| relay.call(&id).srtp_profile == i32::from(expected)),
        "relay reports {expected:?}: {:?}",
        relay.call(&id)
    );
    // The pair both ends settled on: the relay's remote is one of the offered candidates, and
    // the peer saw the nomination come from the relay's port in its answer.
    let info = relay.call(&id);
    let remote: SocketAddr = info.whatsapp_remote.parse().expect("nominated remote");
    assert!(offer.contains(&format!(" {} {} typ host", remote.ip(), remote.port())));
    let from: SocketAddr = nominated["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .or_else(|| {
            // "::1:port" as Python prints it.
            let a = nominated["addr"].as_str()?;
            let (ip, port) = a.rsplit_once(':')?;
            Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?))
        })
        .expect("nominated address");
    assert!(
        created
            .whatsapp_sdp
            .contains(&format!(" {} typ host", from.port()))
    );
    // The gate is closed: nothing reached WhatsApp yet.
    assert_eq!(u64_of(&meta.stats()["rtp_received"]), 0);

    relay.open_gate(&id);
    sip.start_audio();
    meta.send(json!({"cmd": "start_audio", "packets": META_PACKETS}));
    // The Meta peer waits for the business's maiden packet, then sends for 2 s.
    meta.expect("audio_started");
    let done = meta.expect("audio_done");
    assert_eq!(u64_of(&done["sent"]), META_PACKETS);
    assert!(
        wait(|| sip.received().len() as u64 >= META_PACKETS),
        "sip got {} of {META_PACKETS}",
        sip.received().len()
    );
    sip.stop_audio();
    // In-flight packets of the stopped SIP stream land within a few ms on loopback.
    std::thread::sleep(Duration::from_millis(200));
    // The relay keeps WhatsApp fed (silence fill) while the internal leg is quiet, so end the
    // call before counting: Terminate returns the final counters.
    let info = relay.terminate(&id).expect("final call info");
    assert_eq!(relay.engine.active_calls(), 0);
    std::thread::sleep(Duration::from_millis(100));

    let stats = meta.stats();
    assert_eq!(stats["errors"], json!([]));
    assert_eq!(u64_of(&stats["srtp_auth_failures"]), 0);
    assert_eq!(u64_of(&stats["stun_auth_failures"]), 0);
    assert_eq!(u64_of(&stats["role_conflicts"]), 0);

    // WhatsApp → internal: every packet the Meta peer sent, byte for byte, in order.
    let sent: Vec<Vec<u8>> = stats["sent_payloads"]
        .as_array()
        .expect("sent payloads")
        .iter()
        .map(|p| unhex(p.as_str().expect("hex")))
        .collect();
    let at_sip = sip.received();
    assert_eq!(at_sip.len(), sent.len(), "WhatsApp → internal, no loss");
    for (got, want) in at_sip.iter().zip(&sent) {
        assert_eq!(&got.payload, want, "payload byte-exact");
        assert_eq!(got.header.pt, 111);
    }
    assert!(at_sip.iter().all(|p| payload_intact(&p.payload)));

    // Internal → WhatsApp: the relay's silence fill may precede the first forwarded packet;
    // every forwarded payload is the SIP peer's, untouched, counters consecutive.
    let at_meta: Vec<Vec<u8>> = stats["received"]
        .as_array()
        .expect("received")
        .iter()
        .map(|p| unhex(p["payload"].as_str().expect("hex")))
        .collect();
    let forwarded: Vec<&Vec<u8>> = at_meta.iter().filter(|p| p.len() > 3).collect();
    assert!(forwarded.len() >= 50, "forwarded {}", forwarded.len());
    assert!(forwarded.iter().all(|p| payload_intact(p)));
    let counters: Vec<u32> = forwarded
        .iter()
        .filter_map(|p| read_stamp(p).map(|s| s.0))
        .collect();
    assert!(counters.windows(2).all(|w| w[1] == w[0] + 1), "no gap");
    assert_eq!(
        counters.len() as u64,
        sip.stats().rtp_sent,
        "internal → WhatsApp, no loss"
    );
    assert!(
        stats["received"]
            .as_array()
            .expect("received")
            .iter()
            .all(|p| p["pt"] == 111),
        "Opus PT 111 toward WhatsApp"
    );

    // RTCP both ways, authenticated by the other stack.
    assert!(u64_of(&stats["rtcp_received"]) >= 1, "SRTCP from the relay");
    assert!(
        stats["rtcp_types"]
            .as_array()
            .expect("types")
            .contains(&json!(200))
    );
    assert!(u64_of(&stats["rtcp_sent"]) >= 2);

    // The relay's counters agree with both ends.
    let wa = info.whatsapp.expect("whatsapp leg stats");
    let internal = info.internal.expect("internal leg stats");
    assert_eq!(wa.received.expect("rx").packets, META_PACKETS);
    assert_eq!(wa.sent.expect("tx").packets, u64_of(&stats["rtp_received"]));
    assert_eq!(wa.auth_failures, 0);
    assert_eq!(internal.received.expect("rx").packets, sip.stats().rtp_sent);
    assert_eq!(internal.sent.expect("tx").packets, at_sip.len() as u64);
    eprintln!(
        "meta_peer ({}, {}): {} → internal, {} → WhatsApp ({} forwarded), {} SRTCP in",
        openssl_profile,
        ready["openssl"],
        META_PACKETS,
        u64_of(&stats["rtp_received"]),
        forwarded.len(),
        u64_of(&stats["rtcp_received"]),
    );
}

#[test]
fn meta_peer_aes_cm_128_hmac_sha1_80() {
    user_initiated_with_meta_peer(
        "SRTP_AES128_CM_SHA1_80",
        pb::SrtpProfile::AesCm128HmacSha180,
    );
}

#[test]
fn meta_peer_aead_aes_128_gcm() {
    user_initiated_with_meta_peer("SRTP_AEAD_AES_128_GCM", pb::SrtpProfile::AeadAes128Gcm);
}

// ----- 2. aiortc as the browser agent ----------------------------------------------------------

const BROWSER_DEPS: &[&str] = &["aiortc", "av"];

fn rtp_list(v: &Value) -> Vec<(u8, Vec<u8>)> {
    v.as_array()
        .expect("packet list")
        .iter()
        .map(|p| {
            let pt = u8::try_from(u64_of(&p["pt"])).expect("payload type");
            (pt, unhex(p["payload"].as_str().expect("hex payload")))
        })
        .collect()
}

/// The Opus PT (first `opus/48000` rtpmap) of an SDP.
fn opus_pt(sdp: &str) -> u8 {
    sdp.lines()
        .find_map(|l| {
            let rest = l.strip_prefix("a=rtpmap:")?;
            let (pt, codec) = rest.split_once(' ')?;
            codec.starts_with("opus/48000").then(|| pt.parse().ok())?
        })
        .expect("an opus rtpmap")
}

/// A connected call: the Meta emulator on the WhatsApp leg, aiortc on the WebRTC leg.
struct BrowserCall {
    relay: GrpcRelay,
    meta: e2e::meta::MetaHandle,
    agent: PyPeer,
    id: String,
    /// aiortc's Opus payload type on the internal leg.
    browser_opus: u8,
    aiortc: Value,
    role: &'static str,
}

/// A user-initiated WhatsApp call (Rust Meta emulator) bridged to aiortc on a WebRTC internal
/// leg. `browser_offers`: aiortc's offer goes in CreateCall and `internal_sdp` is the relay's
/// answer; otherwise `internal_sdp` is the relay's offer and aiortc's answer comes back through
/// SetRemoteDescription(LEG_INTERNAL).
fn connect_browser_call(browser_offers: bool) -> Option<BrowserCall> {
    if !python_ready(BROWSER_DEPS) {
        return None;
    }
    let mut relay = GrpcRelay::start(test_call_config());
    let meta = common::meta(e2e::meta::MetaConfig::default());
    let role = if browser_offers { "offer" } else { "answer" };
    let mut agent = PyPeer::spawn("browser_agent.py", &["--role", role]);
    let ready = agent.expect("ready");
    let id = format!("wacid.browser-{role}");
    let browser_offer = if browser_offers {
        agent.expect("offer")["sdp"]
            .as_str()
            .expect("sdp")
            .to_string()
    } else {
        String::new()
    };
    let created = relay.create(pb::CreateCallRequest {
        call_id: id.clone(),
        business_number: "15550004444".into(),
        consumer: format!("c-{id}"),
        direction: pb::CallDirection::UserInitiated.into(),
        whatsapp_offer_sdp: meta.offer_sdp(),
        whatsapp: None,
        internal: Some(pb::InternalLeg {
            transport: pb::InternalTransport::Webrtc.into(),
            remote_sdp: browser_offer.clone(),
            ..Default::default()
        }),
    });
    let ours = &created.internal_sdp;
    assert!(ours.contains("UDP/TLS/RTP/SAVPF"), "{ours}");
    assert!(
        ours.contains("a=ice-lite"),
        "the relay is ICE-lite toward the browser"
    );
    let browser_sdp = if browser_offers {
        assert!(ours.contains("a=setup:passive\r\n") || ours.contains("a=setup:active\r\n"));
        agent.send(json!({"cmd": "answer", "sdp": ours}));
        agent.expect("answer_set");
        browser_offer
    } else {
        assert!(ours.contains("a=setup:actpass\r\n"));
        agent.send(json!({"cmd": "offer", "sdp": ours}));
        let answer = agent.expect("answer")["sdp"]
            .as_str()
            .expect("sdp")
            .to_string();
        relay
            .rt
            .block_on(
                relay
                    .client
                    .set_remote_description(&id, pb::Leg::Internal, &answer),
            )
            .expect("SetRemoteDescription(LEG_INTERNAL)");
        answer
    };
    let browser_opus = opus_pt(&browser_sdp);
    meta.set_remote_sdp(&created.whatsapp_sdp)
        .expect("meta takes the answer");

    // aiortc: full ICE, controlling toward the lite relay; then DTLS.
    loop {
        let st = agent.expect("state");
        match st["connection"].as_str() {
            Some("connected") => break,
            Some("failed" | "closed") => panic!("aiortc connection {st}"),
            _ => {}
        }
    }
    assert!(
        meta.wait_until(WAIT, |s| s.dtls_connected_at.is_some()),
        "WhatsApp leg DTLS"
    );
    Some(BrowserCall {
        relay,
        meta,
        agent,
        id,
        browser_opus,
        aiortc: ready["aiortc"].clone(),
        role,
    })
}

/// Audio both ways, DTMF toward the browser, RTCP, and the relay's counters against both ends.
fn browser_agent_call(browser_offers: bool) {
    let Some(BrowserCall {
        mut relay,
        meta,
        mut agent,
        id,
        browser_opus,
        aiortc,
        role,
    }) = connect_browser_call(browser_offers)
    else {
        return;
    };

    relay.open_gate(&id);
    meta.start_audio();
    assert!(
        wait(|| meta
            .received()
            .iter()
            .filter(|p| p.payload.len() > 3)
            .count()
            >= 75),
        "aiortc's audio reaches WhatsApp: {}",
        meta.received().len()
    );
    // The consumer presses 5: RFC 4733 from WhatsApp to the browser.
    meta.send_dtmf(5, Duration::from_millis(120));
    std::thread::sleep(Duration::from_millis(400));
    agent.send(json!({"cmd": "stop_audio"}));
    agent.expect("audio_stopped");
    meta.stop_audio();
    std::thread::sleep(Duration::from_millis(200));
    let info = relay.terminate(&id).expect("final call info");
    std::thread::sleep(Duration::from_millis(100));
    let stats = agent.stats();

    assert_eq!(stats["ice_role"], "controlling");
    // The relay answers `passive` to aiortc's actpass; aiortc answers `active` to ours.
    assert_eq!(stats["dtls_role"], "client");
    assert_eq!(stats["dtls_state"], "connected");
    let profile = stats["srtp_profile"].as_str().expect("negotiated profile");
    assert!(profile.starts_with("SRTP_"), "{profile}");

    // Browser → WhatsApp: aiortc's Opus payloads (libopus via PyAV), byte for byte, in order.
    let sent = rtp_list(&stats["sent"]);
    assert!(sent.iter().all(|(pt, _)| *pt == browser_opus));
    let at_meta: Vec<Vec<u8>> = meta
        .received()
        .into_iter()
        // The relay's Opus silence (3 bytes) fills in whenever aiortc is late or stopped.
        .filter(|p| p.header.pt == 111 && p.payload.len() > 3)
        .map(|p| p.payload)
        .collect();
    let first = sent
        .iter()
        .position(|(_, p)| at_meta.iter().any(|m| m == p))
        .expect("some aiortc payload reached WhatsApp intact");
    let forwarded: Vec<&Vec<u8>> = at_meta
        .iter()
        .skip_while(|m| **m != sent[first].1)
        .collect();
    assert!(forwarded.len() >= 75);
    for (i, got) in forwarded.iter().enumerate() {
        assert_eq!(
            Some(*got),
            sent.get(first + i).map(|(_, p)| p),
            "aiortc payload {i} after the first forwarded one"
        );
    }

    // WhatsApp → browser: the emulator's stamped payloads, untouched, on the browser's Opus PT;
    // the digit on the browser's telephone-event PT.
    let received = rtp_list(&stats["received"]);
    let audio: Vec<&Vec<u8>> = received
        .iter()
        .filter(|(pt, p)| *pt == browser_opus && p.len() > 3)
        .map(|(_, p)| p)
        .collect();
    assert!(audio.len() >= 50, "{} audio packets at aiortc", audio.len());
    assert!(audio.iter().all(|p| payload_intact(p)));
    let dtmf: Vec<&Vec<u8>> = received
        .iter()
        .filter(|(pt, _)| *pt == 126)
        .map(|(_, p)| p)
        .collect();
    assert!(!dtmf.is_empty(), "telephone-event reached aiortc");
    assert!(dtmf.iter().all(|p| p.first() == Some(&5)));
    assert!(
        dtmf.iter().any(|p| p.get(1).is_some_and(|b| b & 0x80 != 0)),
        "end of event"
    );

    // RTCP: aiortc decrypted the relay's reports, and getStats agrees with the taps.
    let types = stats["rtcp_types"].as_array().expect("rtcp types");
    assert!(types.contains(&json!(200)) || types.contains(&json!(201)));
    let gs = &stats["getstats"];
    let outbound = u64_of(&gs["outbound-rtp"][0]["packetsSent"]);
    assert_eq!(outbound, sent.len() as u64);
    let inbound = u64_of(&gs["inbound-rtp"][0]["packetsReceived"]);
    assert!(inbound >= audio.len() as u64);
    // The relay's SRs (remote-outbound-rtp) and its report blocks on aiortc's stream
    // (remote-inbound-rtp), as aiortc's RTCP stack understood them.
    assert!(u64_of(&gs["remote-outbound-rtp"][0]["packetsSent"]) > 0);
    assert!(u64_of(&gs["remote-inbound-rtp"][0]["packetsReceived"]) > 0);

    // The relay's counters agree with both ends.
    let wa = info.whatsapp.expect("whatsapp stats");
    let internal = info.internal.expect("internal stats");
    assert_eq!(internal.received.expect("rx").packets, outbound);
    assert_eq!(
        internal.sent.expect("tx").packets,
        received.len() as u64,
        "relay → browser"
    );
    assert_eq!(internal.auth_failures, 0);
    assert_eq!(
        wa.received.expect("rx").packets,
        meta.stats().media.rtp_sent
    );
    eprintln!(
        "browser agent (aiortc {}, {role}s, {profile}): {} → WhatsApp ({} matched), {} → browser \
         ({} audio, {} DTMF), RTCP types {:?}",
        aiortc,
        outbound,
        forwarded.len(),
        received.len(),
        audio.len(),
        dtmf.len(),
        types
    );
}

#[test]
fn browser_agent_offers() {
    browser_agent_call(true);
}

#[test]
fn relay_offers_to_browser_agent() {
    browser_agent_call(false);
}

/// The agent closes its RTCPeerConnection (DTLS close_notify): the relay ends the call as
/// peer_closed, with no Meta code.
#[test]
fn browser_agent_hangs_up() {
    let Some(mut call) = connect_browser_call(true) else {
        return;
    };
    call.relay.open_gate(&call.id);
    call.agent.send(json!({"cmd": "close"}));
    call.agent.expect("closed");
    let id = call.id.clone();
    let ended = |relay: &mut GrpcRelay| {
        let resp = relay
            .rt
            .block_on(relay.client.get_call(id.as_str()))
            .expect("GetCall keeps the event log");
        resp.events.iter().find_map(|e| match &e.kind {
            Some(pb::call_event::Kind::Ended(end)) => Some(end.clone()),
            _ => None,
        })
    };
    assert!(wait(|| ended(&mut call.relay).is_some()), "the call ended");
    let end = ended(&mut call.relay).expect("ended");
    assert_eq!(end.cause, i32::from(pb::EndCause::PeerClosed));
    assert_eq!(end.meta_code, None);
    assert_eq!(call.relay.engine.active_calls(), 0);
}
