//! Health probes under attack, over real loopback sockets against the real engine: slow
//! clients that open connections and dribble a request head (or nothing) must not make
//! `/healthz` and `/readyz` miss the kubelet's timeout, and a slow client is cut off.
//!
//! No test sleeps: the slow clients just hold their connections open while the probes run.

mod ops_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ops_support::http_get_on;
use relay::engine::{Engine, EngineConfig, EngineHandle};
use relay::ops::http::{HttpLimits, serve_with};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The kubelet's default probe timeout (`timeoutSeconds: 1`).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

struct Listener {
    addr: SocketAddr,
    engine: EngineHandle,
    _stop: watch::Sender<bool>,
    _rt: tokio::runtime::Runtime,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.engine.shutdown();
    }
}

fn start(limits: HttpLimits) -> Listener {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let engine = Engine::start(EngineConfig {
        shards: 1,
        ..EngineConfig::default()
    })
    .unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(serve_with(
        listener,
        Arc::new(engine.clone()),
        stop_rx,
        limits,
    ));
    Listener {
        addr,
        engine,
        _stop: stop,
        _rt: rt,
    }
}

/// A client that sent the start of a request and then goes quiet (as a slowloris client
/// sending one header line a second looks between its lines).
fn slow_client(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: relay\r\n")
        .unwrap();
    s
}

/// A probe as the kubelet makes it: a fresh connection, the whole request at once, and an
/// answer expected within the probe timeout.
fn probe(addr: SocketAddr, path: &str) -> (u16, Duration) {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PROBE_TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: relay\r\nUser-Agent: kube-probe/1.30\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw)
        .unwrap_or_else(|e| panic!("{path}: no answer within {PROBE_TIMEOUT:?}: {e}"));
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{path}: not an HTTP answer: {raw:?}"));
    (status, t0.elapsed())
}

#[test]
fn probes_answer_within_a_second_while_64_slow_clients_hold_connections() {
    let l = start(HttpLimits::default());
    // A scrape running meanwhile (it must not hold the probes up either). Prometheus scrapes
    // from its own address, not the attacker's: on loopback that is 127.0.0.2, so the
    // per-source displacement of the flood below (all from 127.0.0.1) cannot take its slot.
    let addr = l.addr;
    let scrape = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let conn = rt
            .block_on(async {
                let sock = tokio::net::TcpSocket::new_v4()?;
                sock.bind("127.0.0.2:0".parse().unwrap())?;
                sock.connect(addr).await
            })
            .expect("connect from 127.0.0.2");
        let conn = conn.into_std().unwrap();
        conn.set_nonblocking(false).unwrap();
        http_get_on(conn, "/metrics").0
    });
    let mut slow: Vec<TcpStream> = Vec::new();
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        // The attack goes on: 64 more slow connections before every round of probes.
        slow.extend((0..64).map(|_| slow_client(l.addr)));
        for path in ["/healthz", "/readyz"] {
            let (status, took) = probe(l.addr, path);
            assert_eq!(status, 200, "{path}");
            assert!(took < PROBE_TIMEOUT, "{path} took {took:?}");
            worst = worst.max(took);
        }
    }
    assert_eq!(scrape.join().unwrap(), 200);
    eprintln!(
        "{} slow connections opened, 10 probes: slowest {worst:?}",
        slow.len()
    );
}

#[test]
fn a_slow_head_is_cut_off_and_a_source_over_its_limit_displaces_its_oldest() {
    let l = start(HttpLimits {
        head_timeout: Duration::from_millis(200),
        max_per_source: 4,
        ..HttpLimits::default()
    });
    // Head deadline: the connection is answered 408 and closed, not held for seconds.
    let mut s = slow_client(l.addr);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t0 = Instant::now();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 408"), "{raw:?}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());

    // Per source: the fifth connection from one address closes the first.
    let mut held: Vec<TcpStream> = (0..5).map(|_| slow_client(l.addr)).collect();
    held[0]
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    let n = held[0].read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the oldest connection was closed without an answer");
    let (status, took) = probe(l.addr, "/healthz");
    assert_eq!(status, 200);
    assert!(took < PROBE_TIMEOUT);
}
