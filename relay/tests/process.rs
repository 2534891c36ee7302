//! The real `relay` binary, started as the README says, driven over gRPC exactly as a
//! signaling tier would: create (Meta's offer in, answer out) → answer to Meta → open gate →
//! audio both ways → terminate. Also: policy errors carry Meta's codes.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use control::client::{RelayClient, meta_code};
use control::pb;
use e2e::meta::{MetaConfig, MetaPeer, wait_until};
use e2e::rtp::{read_stamp, stamped_payload};
use e2e::sip::{SipConfig, SipPeer};

/// The `relay` binary cargo built for this package's tests.
fn relay_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_relay"))
}

struct RelayProcess(Child);

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_relay(extra: &[&str]) -> (RelayProcess, String) {
    let port = free_port();
    let child = Command::new(relay_bin())
        .args([
            "--control-listen",
            &format!("127.0.0.1:{port}"),
            "--shards",
            "1",
            // Parallel tests: the default metrics port 9090 would collide.
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("relay starts");
    (RelayProcess(child), format!("http://127.0.0.1:{port}"))
}

async fn connect(endpoint: &str) -> RelayClient {
    for _ in 0..100 {
        if let Ok(c) = RelayClient::connect(endpoint.to_string(), None).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("relay control plane did not come up at {endpoint}");
}

fn create_request(id: &str, number: &str, offer: String, sip_sdp: String) -> pb::CreateCallRequest {
    pb::CreateCallRequest {
        call_id: id.into(),
        business_number: number.into(),
        consumer: format!("c-{id}"),
        direction: pb::CallDirection::UserInitiated.into(),
        whatsapp_offer_sdp: offer,
        whatsapp: None,
        internal: Some(pb::InternalLeg {
            remote_sdp: sip_sdp,
            ..Default::default()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_the_relay_binary_over_grpc() {
    let (_relay, endpoint) = start_relay(&[]);
    let mut client = connect(&endpoint).await;
    let meta = MetaPeer::spawn(MetaConfig::default()).unwrap();
    let sip = SipPeer::spawn(SipConfig::default()).unwrap();

    let created = client
        .create_call(create_request(
            "wacid.proc",
            "15550002222",
            meta.offer_sdp(),
            sip.sdp(),
        ))
        .await
        .expect("CreateCall");
    assert!(created.whatsapp_sdp.contains("a=setup:active\r\n"));
    // Webhooks repeat: the same create returns the same answer.
    let again = client
        .create_call(create_request(
            "wacid.proc",
            "15550002222",
            meta.offer_sdp(),
            sip.sdp(),
        ))
        .await
        .expect("repeated CreateCall");
    assert_eq!(again.whatsapp_sdp, created.whatsapp_sdp);

    meta.set_remote_sdp(&created.whatsapp_sdp).unwrap();
    sip.set_remote_sdp(&created.internal_sdp).unwrap();
    assert!(wait_until(Duration::from_secs(10), || meta
        .stats()
        .dtls_connected_at
        .is_some()));
    // Nothing reaches WhatsApp before the gate opens.
    assert_eq!(meta.stats().media.rtp_received, 0);
    client.open_gate("wacid.proc").await.expect("OpenGate");
    meta.start_audio();
    sip.start_audio();
    assert!(wait_until(Duration::from_secs(10), || {
        sip.received().len() >= 25
            && meta
                .received()
                .iter()
                .filter(|p| p.payload.len() > 3)
                .count()
                >= 25
    }));
    for p in sip.received() {
        let (counter, _) = read_stamp(&p.payload).unwrap();
        assert_eq!(
            p.payload[12..],
            stamped_payload(counter, p.payload.len())[12..]
        );
    }

    let ended = client
        .terminate("wacid.proc", "hangup")
        .await
        .expect("Terminate");
    let _ = ended;
    // Terminating again (a repeated webhook) is harmless.
    client
        .terminate("wacid.proc", "hangup")
        .await
        .expect("second Terminate");
    let status = client.get_call("wacid.unknown").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_errors_carry_meta_codes() {
    let (_relay, endpoint) = start_relay(&["--max-calls-per-number", "2"]);
    let mut client = connect(&endpoint).await;
    let sip = SipPeer::spawn(SipConfig::default()).unwrap();
    let meta = MetaPeer::spawn(MetaConfig::default()).unwrap();

    // A hostile SDP: INVALID_ARGUMENT with code 100 and the offending line.
    let bad = client
        .create_call(create_request(
            "wacid.bad",
            "n1",
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 99999 UDP/TLS/RTP/SAVPF 111\r\n".into(),
            sip.sdp(),
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert_eq!(meta_code(&bad), Some(100));
    assert!(bad.message().contains("line 5"), "{}", bad.message());

    for i in 0..2 {
        let mut req = create_request(&format!("wacid.l{i}"), "n1", meta.offer_sdp(), sip.sdp());
        req.consumer = format!("consumer-{i}");
        client.create_call(req).await.expect("under the limit");
    }
    let mut req = create_request("wacid.l2", "n1", meta.offer_sdp(), sip.sdp());
    req.consumer = "consumer-x".into();
    let over = client.create_call(req).await.unwrap_err();
    assert_eq!(over.code(), tonic::Code::ResourceExhausted);
    assert_eq!(meta_code(&over), Some(138002));
    // Another number is unaffected.
    let mut req = create_request("wacid.other", "n2", meta.offer_sdp(), sip.sdp());
    req.consumer = "consumer-0".into();
    client.create_call(req).await.expect("other number");
    // The same consumer again on n1: duplicate.
    let mut req = create_request("wacid.dup", "n2", meta.offer_sdp(), sip.sdp());
    req.consumer = "consumer-0".into();
    let dup = client.create_call(req).await.unwrap_err();
    assert_eq!(dup.code(), tonic::Code::AlreadyExists);
    assert_eq!(meta_code(&dup), Some(138003));
    // A slot freed by terminate is reusable.
    client.terminate("wacid.l0", "done").await.unwrap();
    let mut req = create_request("wacid.l3", "n1", meta.offer_sdp(), sip.sdp());
    req.consumer = "consumer-y".into();
    client.create_call(req).await.expect("slot reused");
}

/// The runtime controls an operator has in rtpengine-ctl, through the real binary: log filter,
/// admission limits, per-call debug logging. Each is idempotent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_controls_change_the_running_relay() {
    let log = std::env::temp_dir().join(format!("relay-ctl-{}.log", std::process::id()));
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let child = Command::new(relay_bin())
        .args(["--control-listen", &format!("127.0.0.1:{port}")])
        .args([
            "--shards",
            "1",
            "--metrics-listen",
            "127.0.0.1:0",
            "--capacity",
            "5",
        ])
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("relay starts");
    let _relay = RelayProcess(child);
    let mut client = connect(&endpoint).await;

    // Log filter: read, change (twice: same answer), refuse nonsense.
    assert_eq!(client.set_log_level(None).await.unwrap(), "info");
    // The filter comes back normalised (most specific directive first).
    let debug = "info,relay::control=debug";
    let now = client.set_log_level(Some(debug.into())).await.unwrap();
    assert_eq!(now, "relay::control=debug,info");
    assert_eq!(client.set_log_level(Some(debug.into())).await.unwrap(), now);
    assert_eq!(client.set_log_level(None).await.unwrap(), now);
    let bad = client
        .set_log_level(Some("relay=loud".into()))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");

    // Limits: read, lower the capacity to 1, and the second call is refused.
    let l = client.set_limits(None, None).await.unwrap();
    assert_eq!((l.capacity, l.max_shard_busy_percent), (5, 90));
    let l = client.set_limits(Some(1), Some(100)).await.unwrap();
    assert_eq!((l.capacity, l.max_shard_busy_percent), (1, 100));
    let again = client.set_limits(Some(1), Some(100)).await.unwrap();
    assert_eq!(again, l);
    assert_eq!(
        client.set_limits(Some(0), None).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    assert_eq!(client.load().await.unwrap().capacity, 1);
    let meta = MetaPeer::spawn(MetaConfig::default()).unwrap();
    let sip = SipPeer::spawn(SipConfig::default()).unwrap();
    client
        .create_call(create_request(
            "wacid.ctl1",
            "15550003333",
            meta.offer_sdp(),
            sip.sdp(),
        ))
        .await
        .expect("first call fits");
    let refused = client
        .create_call(create_request(
            "wacid.ctl2",
            "15550003333",
            meta.offer_sdp(),
            sip.sdp(),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("capacity"), "{refused:?}");

    // Per-call debug: unknown calls are refused, a live one logs its events and statistics.
    let unknown = client
        .set_call_debug("wacid.nope".into(), true)
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert!(
        !client
            .set_call_debug("wacid.nope".into(), false)
            .await
            .unwrap()
    );
    assert!(
        client
            .set_call_debug("wacid.ctl1".into(), true)
            .await
            .unwrap()
    );
    assert!(
        client
            .set_call_debug("wacid.ctl1".into(), true)
            .await
            .unwrap()
    );
    client.terminate("wacid.ctl1", "test").await.unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .any(|l| {
                    l.contains("call event (debug)")
                        && l.contains("wacid.ctl1")
                        && l.contains("Ended")
                })
        }),
        "the debug log of the call's end:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains('\u{1b}'), "no colour escapes in a file");
    let _ = std::fs::remove_file(&log);
}

#[test]
fn version_names_the_commit() {
    let out = Command::new(relay_bin()).arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert_eq!(
        text.trim(),
        format!(
            "relay {} (commit {})",
            env!("CARGO_PKG_VERSION"),
            relay::ops::process::COMMIT
        )
    );
}

/// `opusinfo`'s report on a file, or `None` where opus-tools is not installed (scripts/test.sh
/// installs it; the check is then skipped with a note).
fn opusinfo(f: &std::path::Path) -> Option<String> {
    match Command::new("opusinfo").arg(f).output() {
        Ok(o) => Some(format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(_) => {
            eprintln!("opusinfo not installed (Debian package opus-tools): check skipped");
            None
        }
    }
}

/// `Playback length: 0m:04.000s` → seconds.
fn playback_secs(info: &str) -> f64 {
    let v = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("Playback length: "))
        .unwrap_or_else(|| panic!("no playback length in {info}"));
    let (m, s) = v.trim_end_matches('s').split_once("m:").unwrap();
    m.parse::<f64>().unwrap() * 60.0 + s.parse::<f64>().unwrap()
}

/// Recording through the binary over gRPC: StartRecording, audio both ways, StopRecording;
/// the files are read with `opusinfo` and the sidecar, and every packet each side sent is in
/// its file, with the wall-clock duration of the recording.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_recorded_to_ogg_opus_over_grpc() {
    use control::client::RecordingOp;
    let dir = std::env::temp_dir().join(format!("relay-process-rec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (_relay, endpoint) = start_relay(&["--recording-dir", dir.to_str().unwrap()]);
    let mut client = connect(&endpoint).await;
    let meta = MetaPeer::spawn(MetaConfig::default()).unwrap();
    let sip = SipPeer::spawn(SipConfig::default()).unwrap();
    let id = "wacid.recorded";
    let created = client
        .create_call(create_request(
            id,
            "15550003333",
            meta.offer_sdp(),
            sip.sdp(),
        ))
        .await
        .expect("CreateCall");
    meta.set_remote_sdp(&created.whatsapp_sdp).unwrap();
    sip.set_remote_sdp(&created.internal_sdp).unwrap();
    assert!(wait_until(Duration::from_secs(10), || meta
        .stats()
        .dtls_connected_at
        .is_some()));
    client.open_gate(id).await.expect("OpenGate");

    let rec = client
        .recording(id, RecordingOp::Start)
        .await
        .expect("StartRecording")
        .expect("a recording");
    let started = std::time::Instant::now();
    assert_eq!(rec.state(), pb::RecordingState::Recording);
    assert!(rec.consumer_file.starts_with(dir.to_str().unwrap()));
    // Idempotent: the same recording.
    let again = client.recording(id, RecordingOp::Start).await.unwrap();
    assert_eq!(again.as_ref(), Some(&rec));

    meta.start_audio();
    sip.start_audio();
    assert!(wait_until(Duration::from_secs(10), || {
        sip.received().len() >= 100 && meta.received().len() >= 100
    }));
    meta.stop_audio();
    sip.stop_audio();
    // Let the last packets cross the relay.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopped = client
        .recording(id, RecordingOp::Stop)
        .await
        .expect("StopRecording")
        .expect("the recording");
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(stopped.state(), pb::RecordingState::Stopped);
    assert_eq!(stopped.dropped_packets, 0);
    // Pausing a stopped recording is refused; stopping again is not.
    let err = client.recording(id, RecordingOp::Pause).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        client.recording(id, RecordingOp::Stop).await.unwrap(),
        Some(stopped.clone())
    );
    client.terminate(id, "hangup").await.unwrap();

    // The writer finishes the files moments after the stop.
    let events = std::path::PathBuf::from(&stopped.events_file);
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&events).is_ok_and(|s| s.contains("recording_stopped"))
    }));
    let last: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&events)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    // Every packet each side sent is in its file.
    assert_eq!(
        last["consumer"]["packets"],
        meta.stats().media.rtp_sent,
        "{last}"
    );
    assert_eq!(last["agent"]["packets"], sip.stats().rtp_sent, "{last}");
    for f in [&stopped.consumer_file, &stopped.agent_file] {
        let Some(info) = opusinfo(std::path::Path::new(f)) else {
            continue;
        };
        assert!(
            !info.contains("WARNING") && !info.contains("ERROR"),
            "{f}: {info}"
        );
        let secs = playback_secs(&info);
        assert!(
            (secs - elapsed).abs() < 0.25,
            "{f}: {secs} s played, {elapsed} s recorded\n{info}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM with a recorded call up: the drain ends the call, and the recording's files are
/// finished (end-of-stream page, `recording_stopped` line) before the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_relay_finishes_its_recordings() {
    use control::client::RecordingOp;
    let dir = std::env::temp_dir().join(format!("relay-process-drain-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut relay, endpoint) = start_relay(&[
        "--recording-dir",
        dir.to_str().unwrap(),
        "--drain-deadline",
        "1s",
    ]);
    let mut client = connect(&endpoint).await;
    let meta = MetaPeer::spawn(MetaConfig::default()).unwrap();
    let sip = SipPeer::spawn(SipConfig::default()).unwrap();
    let id = "wacid.drained";
    let created = client
        .create_call(create_request(
            id,
            "15550004444",
            meta.offer_sdp(),
            sip.sdp(),
        ))
        .await
        .expect("CreateCall");
    meta.set_remote_sdp(&created.whatsapp_sdp).unwrap();
    sip.set_remote_sdp(&created.internal_sdp).unwrap();
    assert!(wait_until(Duration::from_secs(10), || meta
        .stats()
        .dtls_connected_at
        .is_some()));
    let rec = client
        .recording(id, RecordingOp::Start)
        .await
        .unwrap()
        .unwrap();
    meta.start_audio();
    assert!(wait_until(Duration::from_secs(10), || sip.received().len() >= 25));

    let pid = relay.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut exited = false;
    for _ in 0..200 {
        if relay.0.try_wait().unwrap().is_some() {
            exited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(exited, "the relay exits after its 1 s drain");
    let events = std::fs::read_to_string(&rec.events_file).unwrap();
    let last = events.lines().last().unwrap();
    assert!(last.contains("\"recording_stopped\""), "{events}");
    assert!(events.contains("\"call_ended\""), "{events}");
    let consumer = relay::record::ogg::summarize(&std::fs::read(&rec.consumer_file).unwrap())
        .expect("a valid Ogg Opus file");
    assert!(consumer.eos, "the file is finished");
    assert!(consumer.packets >= 25);
    let _ = std::fs::remove_dir_all(&dir);
}
