//! Helpers shared by the `ops_*` integration tests: a plain HTTP GET, Prometheus sample
//! lookup, scratch directories, and a user-initiated call through an in-process engine.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use control::client::RelayClient;
use e2e::meta::{MetaConfig, MetaHandle, MetaPeer, wait_until};
use e2e::sip::{SipConfig, SipHandle, SipPeer};
use relay::api::{
    CallControl, CallDirection, CreateCall, InternalKind, InternalLegSpec, SourcePolicy, WaSecurity,
};
use relay::control::{ControlConfig, serve_on};
use relay::engine::{Engine, EngineConfig, EngineHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub const WAIT: Duration = Duration::from_secs(10);

/// `GET path` → (status, body), over a fresh connection as Prometheus and kubelet do.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let s = TcpStream::connect(addr).expect("connect to the metrics listener");
    http_get_on(s, path)
}

/// `GET path` on a connection the caller opened (e.g. from another source address).
pub fn http_get_on(mut s: TcpStream, path: &str) -> (u16, String) {
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: relay\r\nAccept: */*\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("Content-Length");
    assert_eq!(length, body.len(), "Content-Length matches the body");
    (status, body.to_string())
}

/// The value of one series (`name` or `name{labels}` exactly as exposed).
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (s, v) = l.rsplit_once(' ')?;
            (s == series).then(|| v.parse().ok())?
        })
}

/// A fresh, empty directory under the system temp dir.
pub fn scratch_dir(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "relay-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn create_request(call_id: &str, meta: &MetaHandle, sip: &SipHandle) -> CreateCall {
    CreateCall {
        call_id: call_id.into(),
        business_number: "15550001111".into(),
        consumer: format!("consumer-{call_id}"),
        direction: CallDirection::UserInitiated,
        whatsapp_offer: Some(meta.offer_sdp()),
        whatsapp_security: WaSecurity::DtlsSrtp,
        internal: InternalLegSpec {
            kind: InternalKind::PlainRtp,
            remote_sdp: Some(sip.sdp()),
            source: SourcePolicy::Strict,
        },
    }
}

/// A user-initiated call through `engine`, up to audio flowing both ways.
pub fn audio_call<C: CallControl>(
    rt: &tokio::runtime::Runtime,
    engine: &C,
    call_id: &str,
) -> (MetaHandle, SipHandle) {
    let meta = MetaPeer::spawn(MetaConfig::default()).expect("Meta emulator");
    let sip = SipPeer::spawn(SipConfig::default()).expect("SIP peer");
    let created = rt
        .block_on(engine.create_call(create_request(call_id, &meta, &sip)))
        .expect("create");
    meta.set_remote_sdp(&created.whatsapp_sdp).unwrap();
    sip.set_remote_sdp(&created.internal_sdp).unwrap();
    assert!(
        wait_until(WAIT, || meta.stats().dtls_connected_at.is_some()),
        "DTLS connects"
    );
    rt.block_on(engine.open_gate(call_id.into()))
        .expect("open gate");
    meta.start_audio();
    sip.start_audio();
    assert!(
        wait_until(WAIT, || sip.received().len() >= 10
            && meta
                .received()
                .iter()
                .filter(|p| p.payload.len() > 3)
                .count()
                >= 10),
        "audio flows both ways"
    );
    (meta, sip)
}

/// A relay in this process with its gRPC control plane and its HTTP (metrics, probes) server
/// on loopback, for tests that drive it as a client would. Shut down on drop.
pub struct Relay {
    pub engine: EngineHandle,
    pub control: String,
    pub metrics: SocketAddr,
    _stop: watch::Sender<bool>,
}

pub async fn start(cfg: EngineConfig) -> Relay {
    let engine = Engine::start(cfg).expect("engine starts");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stop_rx) = watch::channel(false);
    let mut control_stop = stop_rx.clone();
    tokio::spawn(serve_on(
        Arc::new(engine.clone()),
        ControlConfig::default(),
        listener,
        async move {
            let _ = control_stop.wait_for(|s| *s).await;
        },
    ));
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = http.local_addr().unwrap();
    tokio::spawn(relay::ops::http::serve(
        http,
        Arc::new(engine.clone()),
        stop_rx,
    ));
    Relay {
        engine,
        control,
        metrics,
        _stop: stop,
    }
}

impl Relay {
    pub async fn client(&self) -> RelayClient {
        RelayClient::connect(self.control.clone(), None)
            .await
            .expect("connect")
    }

    pub fn metric(&self, series: &str) -> Option<f64> {
        let metrics = self.metrics;
        let body = std::thread::spawn(move || http_get(metrics, "/metrics").1)
            .join()
            .unwrap();
        sample(&body, series)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.engine.shutdown();
    }
}
