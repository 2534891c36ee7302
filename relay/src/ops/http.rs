//! The metrics listener: `GET /metrics`, `/healthz`, `/readyz` over a minimal HTTP/1.1
//! responder (one request per connection, `Connection: close`).
//!
//! Three fixed GET routes for Prometheus and the kubelet do not need an HTTP stack: the request
//! head is read (bounded in size and time), the path routed, one response written. Connections
//! are capped in total and per source IP so a flood of slow clients cannot exhaust memory or
//! tasks, and a new connection displaces the oldest rather than waiting, so the kubelet's
//! probes answer within their timeout while such a flood runs ([`HttpLimits`]). `/metrics`
//! renders off the async workers, so probes never queue behind it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot, watch};

use crate::engine::EngineHandle;
use crate::engine::heartbeat::Stalled;
use crate::engine::snapshot::MetricsSnapshot;

use super::metrics::{CONTENT_TYPE, Extras, page};
use super::ports::PortPlan;

/// Largest request head accepted (request line plus headers).
const MAX_HEAD: usize = 8 * 1024;

/// How the listener defends itself. Probes must answer within their timeout (the kubelet's
/// default is 1 s) while slow or flooding clients hold connections; with `hostNetwork` this
/// port is on the node's address.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// The whole request head must arrive within this (a slowloris client sending a header
    /// line a second is cut off here). Probes and Prometheus send theirs in one packet.
    pub head_timeout: Duration,
    /// A connection's whole life: head, answer, and the client reading it.
    pub connection_timeout: Duration,
    /// Connections held at once. A new connection beyond it closes the oldest one still
    /// waiting for its request head, so a flood of idle connections can delay a probe by at
    /// most one accept, never starve it.
    pub max_connections: usize,
    /// Connections held at once per source IP; a new one beyond it closes that source's
    /// oldest one still waiting for its head (a single attacker only ever displaces itself).
    /// A connection whose request arrived is never displaced: it is being answered.
    pub max_per_source: usize,
    /// `/metrics` pages rendered at once (off the async workers); probes never wait for them.
    pub max_metrics_renders: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            head_timeout: Duration::from_secs(2),
            connection_timeout: Duration::from_secs(5),
            max_connections: 1024,
            max_per_source: 32,
            max_metrics_renders: 2,
        }
    }
}

/// What the endpoints read.
pub trait MetricsSource: Send + Sync + 'static {
    fn metrics_snapshot(&self) -> MetricsSnapshot;
    /// Engine shards that stopped turning their loop (`/healthz` fails while any has).
    fn stalled_shards(&self) -> Vec<Stalled> {
        Vec::new()
    }
    /// Build, process and port pool figures (read at scrape time).
    fn extras(&self) -> Extras {
        Extras::default()
    }
}

impl MetricsSource for EngineHandle {
    fn metrics_snapshot(&self) -> MetricsSnapshot {
        EngineHandle::metrics_snapshot(self)
    }
    fn stalled_shards(&self) -> Vec<Stalled> {
        EngineHandle::stalled_shards(self)
    }
    fn extras(&self) -> Extras {
        Extras::read(&PortPlan::of(self.config()))
    }
}

/// Whether the relay should be sent new calls.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    Draining,
    AtCapacity,
    /// Every shard is over the busy limit: new calls would degrade the ones up.
    Overloaded,
}

pub fn readiness(s: &MetricsSnapshot) -> Readiness {
    if s.draining {
        Readiness::Draining
    } else if s.active_calls >= s.capacity {
        Readiness::AtCapacity
    } else if s.overloaded() {
        Readiness::Overloaded
    } else {
        Readiness::Ready
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    fn text(status: u16, body: &str) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
        }
    }
}

/// Answer one request. `target` may carry a query string, which is ignored.
pub fn route(method: &str, target: &str, src: &dyn MetricsSource) -> Response {
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return Response::text(405, "method not allowed");
    }
    match path {
        "/metrics" => Response {
            status: 200,
            content_type: CONTENT_TYPE,
            body: page(&src.metrics_snapshot(), &src.extras()),
        },
        // Alive: the process answers and every shard turns its loop (draining or not: a
        // draining relay is healthy).
        "/healthz" => match src.stalled_shards().as_slice() {
            [] => Response::text(200, "ok"),
            stalled => {
                let which: Vec<String> = stalled
                    .iter()
                    .map(|s| {
                        format!(
                            "shard {} has not turned its loop for {}s",
                            s.shard,
                            s.for_at_least.as_secs()
                        )
                    })
                    .collect();
                Response::text(503, &which.join("; "))
            }
        },
        "/readyz" => match readiness(&src.metrics_snapshot()) {
            Readiness::Ready => Response::text(200, "ready"),
            Readiness::Draining => Response::text(503, "draining"),
            Readiness::AtCapacity => Response::text(503, "at capacity"),
            Readiness::Overloaded => Response::text(503, "overloaded"),
        },
        _ => Response::text(404, "not found"),
    }
}

/// Serve until `stop` turns true, with the default [`HttpLimits`].
pub async fn serve<S: MetricsSource>(
    listener: TcpListener,
    src: Arc<S>,
    stop: watch::Receiver<bool>,
) {
    serve_with(listener, src, stop, HttpLimits::default()).await;
}

/// Serve until `stop` turns true.
pub async fn serve_with<S: MetricsSource>(
    listener: TcpListener,
    src: Arc<S>,
    mut stop: watch::Receiver<bool>,
    limits: HttpLimits,
) {
    let slots = Arc::new(Mutex::new(Slots::default()));
    let renders = Arc::new(Semaphore::new(limits.max_metrics_renders.max(1)));
    loop {
        // Accepting never waits for a free slot: a new connection displaces an old one.
        let (stream, peer) = tokio::select! {
            _ = super::stopped(&mut stop) => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (id, evicted) = lock(&slots).admit(peer, &limits);
        let (src, slots, renders) = (Arc::clone(&src), Arc::clone(&slots), Arc::clone(&renders));
        tokio::spawn(async move {
            let answering = || lock(&slots).answering(id);
            tokio::select! {
                _ = tokio::time::timeout(
                    limits.connection_timeout,
                    handle(stream, src, renders, limits.head_timeout, answering),
                ) => {}
                // Displaced by a newer connection (of the same source, or beyond the cap).
                _ = evicted => {}
            }
            lock(&slots).release(id);
        });
    }
}

fn lock(slots: &Mutex<Slots>) -> std::sync::MutexGuard<'_, Slots> {
    slots.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The connections held, oldest first, and per source. Dropping a connection's sender closes
/// it (its task sees the receiver end).
#[derive(Default)]
struct Slots {
    next_id: u64,
    by_id: BTreeMap<u64, Slot>,
    by_source: HashMap<IpAddr, VecDeque<u64>>,
}

struct Slot {
    ip: IpAddr,
    /// Still waiting for the request head (may be displaced); false once it is being answered.
    reading: bool,
    _closes_it: oneshot::Sender<()>,
}

impl Slots {
    /// Take a slot for a connection from `peer`, closing the oldest connection of that source
    /// or of all if a limit is reached. Returns the slot and what closes it.
    fn admit(&mut self, peer: SocketAddr, limits: &HttpLimits) -> (u64, oneshot::Receiver<()>) {
        let ip = peer.ip();
        let reading = |id: &u64| self.by_id.get(id).is_some_and(|s| s.reading);
        let oldest_of_source = self
            .by_source
            .get(&ip)
            .filter(|q| q.len() >= limits.max_per_source.max(1))
            .and_then(|q| q.iter().copied().find(reading));
        if let Some(old) = oldest_of_source {
            self.release(old);
        }
        if self.by_id.len() >= limits.max_connections.max(1) {
            let oldest = self
                .by_id
                .iter()
                .find(|(_, s)| s.reading)
                .map(|(id, _)| *id);
            if let Some(old) = oldest {
                self.release(old);
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = oneshot::channel();
        self.by_id.insert(
            id,
            Slot {
                ip,
                reading: true,
                _closes_it: tx,
            },
        );
        self.by_source.entry(ip).or_default().push_back(id);
        (id, rx)
    }

    /// Connection `id` sent its request: it is answered, never displaced.
    fn answering(&mut self, id: u64) {
        if let Some(s) = self.by_id.get_mut(&id) {
            s.reading = false;
        }
    }

    /// Free slot `id` (its connection ended, or it is being displaced).
    fn release(&mut self, id: u64) {
        let Some(Slot { ip, .. }) = self.by_id.remove(&id) else {
            return;
        };
        if let Some(q) = self.by_source.get_mut(&ip) {
            q.retain(|x| *x != id);
            if q.is_empty() {
                self.by_source.remove(&ip);
            }
        }
    }
}

async fn handle<S: MetricsSource>(
    mut stream: TcpStream,
    src: Arc<S>,
    renders: Arc<Semaphore>,
    head_timeout: Duration,
    answering: impl FnOnce(),
) -> std::io::Result<()> {
    let head = match tokio::time::timeout(head_timeout, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return write(
                &mut stream,
                "GET",
                &Response::text(408, "request head not received in time"),
            )
            .await;
        }
    };
    answering();
    let Some(head) = head else {
        return write(
            &mut stream,
            "GET",
            &Response::text(431, "request head too large"),
        )
        .await;
    };
    let line = head
        .split(|b| *b == b'\n')
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
        .unwrap_or("");
    let mut parts = line.trim_end().split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let (method, target) = match (method, target, version) {
        (Some(m), Some(t), Some(v)) if v.starts_with("HTTP/1.") => (m.to_string(), t.to_string()),
        _ => return write(&mut stream, "GET", &Response::text(400, "bad request")).await,
    };
    let response = if target.split('?').next() == Some("/metrics") {
        // Rendering the page is the one costly request: a few at a time, on the blocking
        // pool, so probes on the async workers never queue behind it.
        let Ok(_permit) = renders.acquire_owned().await else {
            return Ok(());
        };
        let (m, t) = (method.clone(), target);
        tokio::task::spawn_blocking(move || route(&m, &t, &*src))
            .await
            .unwrap_or_else(|_| Response::text(500, "metrics rendering failed"))
    } else {
        route(&method, &target, &*src)
    };
    write(&mut stream, &method, &response).await
}

/// Read up to the blank line ending the head. `Ok(None)`: the client closed first;
/// `Ok(Some(None))`: the head is too large.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Option<Vec<u8>>>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
        if head.len() > MAX_HEAD {
            return Ok(Some(None));
        }
    }
    Ok(Some(Some(head)))
}

async fn write(stream: &mut TcpStream, method: &str, r: &Response) -> std::io::Result<()> {
    let reason = match r.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        r.status,
        r.content_type,
        r.body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(r.body.as_bytes());
    }
    stream.write_all(&out).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::snapshot::ShardTotals;

    struct Fixed(MetricsSnapshot);

    impl MetricsSource for Fixed {
        fn metrics_snapshot(&self) -> MetricsSnapshot {
            self.0.clone()
        }
    }

    fn src(active: u64, capacity: u64, draining: bool) -> Fixed {
        Fixed(MetricsSnapshot {
            io_driver: "epoll",
            refused: Default::default(),
            active_calls: active,
            capacity,
            draining,
            max_shard_busy: 0.9,
            cpu_limit_cores: None,
            shards: vec![ShardTotals::new(0)],
            recording: None,
        })
    }

    #[test]
    fn readiness_turns_off_when_every_shard_is_over_the_busy_limit() {
        let mut s = src(1, 10, false);
        s.0.shards = vec![ShardTotals::new(0), ShardTotals::new(1)];
        s.0.shards[0].busy_ratio = 0.95;
        s.0.shards[1].busy_ratio = 0.5;
        // One shard still has room: new calls go there.
        assert_eq!(route("GET", "/readyz", &s).status, 200);
        s.0.shards[1].busy_ratio = 0.9;
        let r = route("GET", "/readyz", &s);
        assert_eq!((r.status, r.body.as_str()), (503, "overloaded\n"));
        // 100 % turns the check off.
        s.0.max_shard_busy = 1.0;
        assert_eq!(route("GET", "/readyz", &s).status, 200);
    }

    #[test]
    fn readiness_follows_draining_and_capacity() {
        assert_eq!(route("GET", "/readyz", &src(0, 10, false)).status, 200);
        assert_eq!(route("GET", "/readyz", &src(9, 10, false)).status, 200);
        let full = route("GET", "/readyz", &src(10, 10, false));
        assert_eq!((full.status, full.body.as_str()), (503, "at capacity\n"));
        let draining = route("GET", "/readyz", &src(0, 10, true));
        assert_eq!(
            (draining.status, draining.body.as_str()),
            (503, "draining\n")
        );
        // Liveness does not care.
        assert_eq!(route("GET", "/healthz", &src(10, 10, true)).status, 200);
    }

    struct Stuck(Fixed);

    impl MetricsSource for Stuck {
        fn metrics_snapshot(&self) -> MetricsSnapshot {
            self.0.0.clone()
        }
        fn stalled_shards(&self) -> Vec<Stalled> {
            vec![Stalled {
                shard: 1,
                for_at_least: Duration::from_secs(12),
            }]
        }
    }

    #[test]
    fn liveness_fails_while_a_shard_is_stalled() {
        let r = route("GET", "/healthz", &Stuck(src(0, 10, false)));
        assert_eq!(
            (r.status, r.body.as_str()),
            (503, "shard 1 has not turned its loop for 12s\n")
        );
        assert_eq!(route("GET", "/healthz", &src(0, 10, false)).status, 200);
    }

    #[test]
    fn routes() {
        let s = src(1, 10, false);
        let m = route("GET", "/metrics?x=1", &s);
        assert_eq!(m.status, 200);
        assert_eq!(m.content_type, CONTENT_TYPE);
        assert!(m.body.contains("\nrelay_active_calls 1\n"));
        assert_eq!(route("GET", "/nope", &s).status, 404);
        assert_eq!(route("POST", "/metrics", &s).status, 405);
    }
}
