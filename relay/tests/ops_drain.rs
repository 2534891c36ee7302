//! SIGTERM drain of the real `relay` binary: readiness off, no new calls, the gRPC API still
//! serving, calls ended with cause `drained` at the deadline (or at once on a second SIGTERM),
//! exit code 0; plus the call's JSON record and that its log lines carry `call_id`.

mod ops_support;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use control::client::RelayClient;
use control::pb;
use e2e::meta::{MetaConfig, MetaHandle, MetaPeer, wait_until};
use e2e::sip::{SipConfig, SipHandle, SipPeer};
use ops_support::{WAIT, http_get, sample, scratch_dir};
use tonic::Streaming;

struct Relay {
    child: Child,
    control: String,
    metrics: SocketAddr,
    stdout: Arc<Mutex<String>>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_relay(drain_deadline: &str, call_log: &Path) -> Relay {
    let (control, metrics) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_relay"))
        .env_clear()
        .env("RUST_LOG", "info")
        .env("RELAY_DRAIN_DEADLINE", drain_deadline)
        .args([
            "--control-listen",
            &format!("127.0.0.1:{control}"),
            "--metrics-listen",
            &format!("127.0.0.1:{metrics}"),
            "--shards",
            "1",
            "--log-json",
            "--call-log-dir",
            call_log.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("relay starts");
    // Keep reading so the relay never blocks on a full pipe.
    let stdout = Arc::new(Mutex::new(String::new()));
    let mut pipe = child.stdout.take().unwrap();
    let sink = Arc::clone(&stdout);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    Relay {
        child,
        control: format!("http://127.0.0.1:{control}"),
        metrics: SocketAddr::from(([127, 0, 0, 1], metrics)),
        stdout,
    }
}

impl Relay {
    fn sigterm(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    }

    /// Wait (bounded) for the process to exit.
    fn wait_exit(&mut self) -> ExitStatus {
        let end = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < end, "relay did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

async fn connect(endpoint: &str) -> RelayClient {
    for _ in 0..200 {
        if let Ok(c) = RelayClient::connect(endpoint.to_string(), None).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("relay control plane did not come up at {endpoint}");
}

fn create_request(id: &str, meta: &MetaHandle, sip: &SipHandle) -> pb::CreateCallRequest {
    pb::CreateCallRequest {
        call_id: id.into(),
        business_number: "15550003333".into(),
        consumer: format!("c-{id}"),
        direction: pb::CallDirection::UserInitiated.into(),
        whatsapp_offer_sdp: meta.offer_sdp(),
        whatsapp: None,
        internal: Some(pb::InternalLeg {
            remote_sdp: sip.sdp(),
            ..Default::default()
        }),
    }
}

/// A call over gRPC with audio both ways, and a Watch stream on it.
async fn live_call(
    client: &mut RelayClient,
    id: &str,
) -> (MetaHandle, SipHandle, Streaming<pb::WatchResponse>) {
    let meta = MetaPeer::spawn(MetaConfig::default()).unwrap();
    let sip = SipPeer::spawn(SipConfig::default()).unwrap();
    let watch = client.watch(Some(id.into())).await.expect("Watch");
    let created = client
        .create_call(create_request(id, &meta, &sip))
        .await
        .expect("CreateCall");
    meta.set_remote_sdp(&created.whatsapp_sdp).unwrap();
    sip.set_remote_sdp(&created.internal_sdp).unwrap();
    assert!(wait_until(WAIT, || meta
        .stats()
        .dtls_connected_at
        .is_some()));
    client.open_gate(id).await.expect("OpenGate");
    meta.start_audio();
    sip.start_audio();
    assert!(wait_until(WAIT, || sip.received().len() >= 10
        && meta
            .received()
            .iter()
            .filter(|p| p.payload.len() > 3)
            .count()
            >= 10));
    (meta, sip, watch)
}

/// Read the Watch stream up to the call's end: (cause, when).
async fn ended(watch: &mut Streaming<pb::WatchResponse>) -> (pb::EndCause, SystemTime) {
    use pb::call_event::Kind;
    use pb::watch_response::Item;
    tokio::time::timeout(WAIT, async {
        loop {
            let msg = watch
                .message()
                .await
                .expect("stream")
                .expect("not closed before the end");
            if let Some(Item::Event(ev)) = msg.item
                && let Some(Kind::Ended(end)) = ev.kind
            {
                let at = SystemTime::try_from(ev.at.expect("timestamp")).unwrap();
                return (end.cause(), at);
            }
        }
    })
    .await
    .expect("the call ends")
}

fn records(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_dir(dir)
        .unwrap()
        .flat_map(|e| {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<serde_json::Value>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_ends_the_rest_at_the_deadline() {
    let dir = scratch_dir("drain");
    let mut relay = start_relay("300ms", &dir);
    let mut client = connect(&relay.control).await;
    let (_meta, _sip, mut watch) = live_call(&mut client, "wacid.drain").await;

    let sent = SystemTime::now();
    relay.sigterm();
    let (cause, at) = ended(&mut watch).await;
    assert_eq!(cause, pb::EndCause::Drained);
    // The call had its 300 ms: it was not cut when the signal arrived.
    assert!(
        at.duration_since(sent).unwrap_or_default() >= Duration::from_millis(300),
        "ended {:?} after SIGTERM",
        at.duration_since(sent)
    );
    let status = tokio::task::block_in_place(|| relay.wait_exit());
    assert!(status.success(), "{status}");

    let recs = records(&dir);
    assert_eq!(recs.len(), 1, "{recs:#?}");
    assert_eq!(recs[0]["call_id"], "wacid.drain");
    assert_eq!(recs[0]["cause"], "drained");
    assert_eq!(recs[0]["business_number"], "15550003333");
    assert!(
        recs[0]["stats"]["whatsapp"]["rx"]["packets"]
            .as_u64()
            .unwrap()
            > 0
    );

    // Every JSON log line that mentions the call carries its ID as a field.
    let out = relay.stdout.lock().unwrap().clone();
    let mut about_call = 0;
    for line in out.lines().filter(|l| l.contains("wacid.drain")) {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
        assert_eq!(v["fields"]["call_id"], "wacid.drain", "{line}");
        about_call += 1;
    }
    assert!(about_call >= 5, "events and the record are logged:\n{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("\"call record\"") && l.contains("wacid.drain")),
        "the record is logged as one line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_draining_grpc_serves_and_a_second_sigterm_ends_at_once() {
    let dir = scratch_dir("drain2");
    let mut relay = start_relay("1h", &dir);
    let mut client = connect(&relay.control).await;
    let (meta, sip, mut watch) = live_call(&mut client, "wacid.hold").await;
    assert_eq!(http_get(relay.metrics, "/readyz").0, 200);

    relay.sigterm();
    let metrics = relay.metrics;
    assert!(
        tokio::task::block_in_place(|| wait_until(WAIT, || http_get(metrics, "/readyz").0 == 503)),
        "readiness turns off"
    );
    assert_eq!(http_get(metrics, "/healthz").0, 200);
    assert_eq!(
        sample(&http_get(metrics, "/metrics").1, "relay_draining"),
        Some(1.0)
    );

    // New calls are refused with a clear status; the live call is still served.
    let refused = client
        .create_call(create_request("wacid.late", &meta, &sip))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(
        refused.message().contains("draining"),
        "{}",
        refused.message()
    );
    let got = client
        .get_call("wacid.hold")
        .await
        .expect("GetCall while draining");
    assert!(got.call.is_some());
    assert!(relay.child.try_wait().unwrap().is_none(), "still running");

    relay.sigterm();
    let (cause, _) = ended(&mut watch).await;
    assert_eq!(cause, pb::EndCause::Drained);
    let status = tokio::task::block_in_place(|| relay.wait_exit());
    assert!(status.success(), "{status}");
    let recs = records(&dir);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["cause"], "drained");
}

/// `relayctl drain` (gRPC Drain) is the same drain as SIGTERM: readiness off and
/// `relay_draining` 1 as soon as it returns, new calls refused, and the calls left at the
/// deadline end with cause `drained` (in Watch and in the call record). The process keeps
/// serving until it is told to stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_drain_does_what_sigterm_does() {
    let dir = scratch_dir("grpcdrain");
    let mut relay = start_relay("1h", &dir);
    let mut client = connect(&relay.control).await;
    let (meta, sip, mut watch) = live_call(&mut client, "wacid.ctl").await;
    let metrics = relay.metrics;
    assert_eq!(http_get(metrics, "/readyz").0, 200);

    let sent = SystemTime::now();
    let resp = client
        .drain(Some(Duration::from_millis(300)))
        .await
        .expect("Drain");
    assert_eq!(resp.active_calls, 1);
    let (status, body) = http_get(metrics, "/readyz");
    assert_eq!((status, body.as_str()), (503, "draining\n"));
    assert_eq!(
        sample(&http_get(metrics, "/metrics").1, "relay_draining"),
        Some(1.0)
    );
    let refused = client
        .create_call(create_request("wacid.late2", &meta, &sip))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(refused.message().contains("draining"), "{refused}");

    let (cause, at) = ended(&mut watch).await;
    assert_eq!(cause, pb::EndCause::Drained);
    assert!(at.duration_since(sent).unwrap_or_default() >= Duration::from_millis(300));
    // Shards publish their counters once a second.
    assert!(tokio::task::block_in_place(|| wait_until(WAIT, || sample(
        &http_get(metrics, "/metrics").1,
        "relay_calls_ended_total{cause=\"drained\"}"
    )
        == Some(1.0))));
    assert_eq!(
        sample(
            &http_get(metrics, "/metrics").1,
            "relay_calls_refused_total{reason=\"draining\"}"
        ),
        Some(1.0)
    );
    // Still alive and healthy, still refusing, until SIGTERM; then it exits at once (no calls).
    assert!(relay.child.try_wait().unwrap().is_none());
    assert_eq!(http_get(metrics, "/healthz").0, 200);
    relay.sigterm();
    let status = tokio::task::block_in_place(|| relay.wait_exit());
    assert!(status.success(), "{status}");
    let recs = records(&dir);
    assert_eq!(recs.len(), 1, "{recs:#?}");
    assert_eq!(recs[0]["cause"], "drained");
}
