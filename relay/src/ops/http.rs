//! The metrics listener: `GET /metrics`, `/healthz`, `/readyz` over a minimal HTTP/1.1
//! responder (one request per connection, `Connection: close`).
//!
//! Three fixed GET routes for Prometheus and the kubelet do not need an HTTP stack: the request
//! head is read (bounded in size and time), the path routed, one response written. Connections
//! are capped so a flood of slow clients cannot exhaust memory or tasks.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::engine::EngineHandle;
use crate::engine::snapshot::MetricsSnapshot;

use super::metrics::{CONTENT_TYPE, Extras, page};
use super::ports::PortPlan;

/// Largest request head accepted (request line plus headers).
const MAX_HEAD: usize = 8 * 1024;
/// A client gets this long to send its request and read the answer.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 32;

/// What the endpoints read.
pub trait MetricsSource: Send + Sync + 'static {
    fn metrics_snapshot(&self) -> MetricsSnapshot;
    /// Build, process and port pool figures (read at scrape time).
    fn extras(&self) -> Extras {
        Extras::default()
    }
}

impl MetricsSource for EngineHandle {
    fn metrics_snapshot(&self) -> MetricsSnapshot {
        EngineHandle::metrics_snapshot(self)
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
        // The process answers: alive, draining or not (a draining relay is healthy).
        "/healthz" => Response::text(200, "ok"),
        "/readyz" => match readiness(&src.metrics_snapshot()) {
            Readiness::Ready => Response::text(200, "ready"),
            Readiness::Draining => Response::text(503, "draining"),
            Readiness::AtCapacity => Response::text(503, "at capacity"),
            Readiness::Overloaded => Response::text(503, "overloaded"),
        },
        _ => Response::text(404, "not found"),
    }
}

/// Serve until `stop` turns true.
pub async fn serve<S: MetricsSource>(
    listener: TcpListener,
    src: Arc<S>,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = super::stopped(&mut stop) => return,
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            _ = super::stopped(&mut stop) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let src = Arc::clone(&src);
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, handle(stream, &*src)).await;
        });
    }
}

async fn handle(mut stream: TcpStream, src: &dyn MetricsSource) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
        if head.len() > MAX_HEAD {
            return write(
                &mut stream,
                "GET",
                &Response::text(431, "request head too large"),
            )
            .await;
        }
    }
    let line = head
        .split(|b| *b == b'\n')
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
        .unwrap_or("");
    let mut parts = line.trim_end().split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let response = match (method, target, version) {
        (Some(m), Some(t), Some(v)) if v.starts_with("HTTP/1.") => route(m, t, src),
        _ => Response::text(400, "bad request"),
    };
    write(&mut stream, method.unwrap_or(""), &response).await
}

async fn write(stream: &mut TcpStream, method: &str, r: &Response) -> std::io::Result<()> {
    let reason = match r.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
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
            active_calls: active,
            capacity,
            draining,
            max_shard_busy: 0.9,
            shards: vec![ShardTotals::new(0)],
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
