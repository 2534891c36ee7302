//! rtpengine as the system under test, for a side-by-side comparison with the relay.
//!
//! - [`RtpEngineProcess`]: starts Debian's `rtpengine` (package `rtpengine-daemon`) in the
//!   foreground with a config written to /tmp: userspace forwarding only (`table = -1`, no
//!   kernel module), media and control on 127.0.0.1, `num-threads` media workers (1 to compare
//!   with one relay shard). `scripts/rtpengine.sh` writes the same config for manual runs.
//! - [`NgClient`]: the ng control protocol (bencode over UDP: `<cookie> <dict>`), with
//!   retransmission under the same cookie (rtpengine answers a repeated cookie from its cache,
//!   so a retry never creates a second call).
//!
//! The calls it is asked to make are the closest equivalent of the relay's: the WhatsApp side
//! offers `RTP/SAVP` with `a=crypto` (SDES), rtpengine offers `RTP/AVP` to the SIP side
//! (`transport-protocol`), both sides rtcp-mux, ICE removed. rtpengine 10.5 could do
//! DTLS-SRTP toward WhatsApp too, but ICE-lite + DTLS in the role Meta requires is what the
//! relay specialises in; SDES ↔ plain isolates the forwarding and SRTP cost, which is what the
//! comparison is about.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use crate::bencode::Value;
use crate::target::on_path;

/// Wait for an answer before sending the same request again.
const RETRY_AFTER: Duration = Duration::from_millis(1000);
const ATTEMPTS: u32 = 4;
/// The largest ng datagram (a delete reply with statistics is a few kB).
const MAX_REPLY: usize = 65_535;
/// The tags of the two sides: the WhatsApp side offers (user-initiated), the SIP side answers.
pub const FROM_TAG: &str = "wa";
pub const TO_TAG: &str = "sip";

#[derive(Debug, thiserror::Error)]
pub enum NgError {
    #[error("ng socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("rtpengine did not answer `{command}` within {attempts} attempts")]
    Timeout { command: String, attempts: u32 },
    #[error("rtpengine refused `{command}`: {reason}")]
    Refused { command: String, reason: String },
    #[error("rtpengine's reply to `{command}` has no {what}")]
    Missing { command: String, what: &'static str },
    #[error("ng client is gone")]
    Closed,
}

#[derive(Debug, thiserror::Error)]
pub enum RtpEngineError {
    #[error("cannot find a free ng port: {0}")]
    Port(std::io::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {bin}: {source} (install it with apt-get install -y rtpengine-daemon)")]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("rtpengine exited during startup ({status}); see its log {log}")]
    Exited { status: String, log: PathBuf },
    #[error("rtpengine's ng port {addr} not answering ping within {waited:?}: {last}")]
    Unreachable {
        addr: SocketAddr,
        waited: Duration,
        last: String,
    },
}

type Pending = Arc<Mutex<HashMap<Vec<u8>, oneshot::Sender<Vec<u8>>>>>;

/// An ng client over one UDP socket; clone-free, share it with an `Arc`.
pub struct NgClient {
    sock: Arc<UdpSocket>,
    server: SocketAddr,
    pending: Pending,
    next: AtomicU64,
    /// Distinguishes this client's cookies from an earlier run's (rtpengine caches replies
    /// by cookie for a while).
    prefix: u32,
    reader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for NgClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NgClient")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Drop for NgClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl NgClient {
    /// A client bound to loopback, talking to `server` (which must be on loopback too).
    pub async fn connect(server: SocketAddr) -> Result<NgClient, NgError> {
        let sock = Arc::new(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?);
        let pending: Pending = Arc::default();
        let reader = {
            let sock = sock.clone();
            let pending = pending.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_REPLY];
                while let Ok((n, _)) = sock.recv_from(&mut buf).await {
                    let Some(msg) = buf.get(..n) else { continue };
                    let Some(space) = msg.iter().position(|b| *b == b' ') else {
                        continue;
                    };
                    let (cookie, body) = msg.split_at(space);
                    if let Some(tx) = lock(&pending).remove(cookie) {
                        let _ = tx.send(body.get(1..).unwrap_or_default().to_vec());
                    }
                }
            })
        };
        Ok(NgClient {
            sock,
            server,
            pending,
            next: AtomicU64::new(0),
            prefix: rand::random(),
            reader,
        })
    }

    /// Sends `msg` (a dictionary with a `command`), retrying under the same cookie, and
    /// returns the reply dictionary if its `result` is `ok` (or `pong`).
    pub async fn request(&self, command: &str, msg: Value) -> Result<Value, NgError> {
        let cookie = format!(
            "{:08x}_{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
        .into_bytes();
        let mut datagram = cookie.clone();
        datagram.push(b' ');
        msg.encode(&mut datagram);
        let (tx, mut rx) = oneshot::channel();
        lock(&self.pending).insert(cookie.clone(), tx);
        let mut reply = None;
        for _ in 0..ATTEMPTS {
            self.sock.send_to(&datagram, self.server).await?;
            match tokio::time::timeout(RETRY_AFTER, &mut rx).await {
                Ok(Ok(r)) => {
                    reply = Some(r);
                    break;
                }
                Ok(Err(_)) => return Err(NgError::Closed),
                Err(_) => continue,
            }
        }
        lock(&self.pending).remove(&cookie);
        let reply = reply.ok_or_else(|| NgError::Timeout {
            command: command.to_string(),
            attempts: ATTEMPTS,
        })?;
        let missing = |what| NgError::Missing {
            command: command.to_string(),
            what,
        };
        let v = Value::decode(&reply).map_err(|_| missing("valid bencode dictionary"))?;
        match v.get("result").and_then(Value::as_str) {
            Some("ok") | Some("pong") => Ok(v),
            Some(other) => Err(NgError::Refused {
                command: command.to_string(),
                reason: v
                    .get("error-reason")
                    .and_then(Value::as_str)
                    .unwrap_or(other)
                    .to_string(),
            }),
            None => Err(missing("result")),
        }
    }

    pub async fn ping(&self) -> Result<(), NgError> {
        self.request("ping", Value::dict([("command", Value::str("ping"))]))
            .await
            .map(|_| ())
    }

    /// `offer` from the WhatsApp side: returns the SDP for the SIP side. With `to_plain`, the
    /// SIP side gets `RTP/AVP` whatever the offer's protocol (SDES → plain).
    pub async fn offer(&self, call_id: &str, sdp: &str, to_plain: bool) -> Result<String, NgError> {
        let mut pairs = vec![
            ("command", Value::str("offer")),
            ("call-id", Value::str(call_id)),
            ("from-tag", Value::str(FROM_TAG)),
            ("sdp", Value::str(sdp)),
            ("ICE", Value::str("remove")),
            ("rtcp-mux", Value::strs(&["offer", "accept"])),
        ];
        if to_plain {
            pairs.push(("transport-protocol", Value::str("RTP/AVP")));
        }
        self.sdp_of("offer", Value::dict(pairs)).await
    }

    /// `answer` from the SIP side: returns the SDP for the WhatsApp side (with rtpengine's
    /// own `a=crypto` when the offer was SDES).
    pub async fn answer(&self, call_id: &str, sdp: &str) -> Result<String, NgError> {
        let msg = Value::dict([
            ("command", Value::str("answer")),
            ("call-id", Value::str(call_id)),
            ("from-tag", Value::str(FROM_TAG)),
            ("to-tag", Value::str(TO_TAG)),
            ("sdp", Value::str(sdp)),
            ("ICE", Value::str("remove")),
            ("rtcp-mux", Value::strs(&["accept"])),
        ]);
        self.sdp_of("answer", msg).await
    }

    /// `delete`; returns rtpengine's packet totals for the call (RTP packets, errors), if
    /// it reported them.
    pub async fn delete(&self, call_id: &str) -> Result<Option<(i64, i64)>, NgError> {
        let msg = Value::dict([
            ("command", Value::str("delete")),
            ("call-id", Value::str(call_id)),
            ("from-tag", Value::str(FROM_TAG)),
        ]);
        let v = self.request("delete", msg).await?;
        let rtp = v.get("totals").and_then(|t| t.get("RTP"));
        let field = |k| rtp.and_then(|r| r.get(k)).and_then(Value::as_int);
        Ok(field("packets").zip(field("errors")))
    }

    async fn sdp_of(&self, command: &str, msg: Value) -> Result<String, NgError> {
        let v = self.request(command, msg).await?;
        v.get("sdp")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| NgError::Missing {
                command: command.to_string(),
                what: "sdp",
            })
    }
}

#[derive(Clone, Debug)]
pub struct RtpEngineOptions {
    pub bin: PathBuf,
    /// Media worker threads (`num-threads`).
    pub threads: usize,
    /// Pin the whole process (all its threads) to this CPU.
    pub cpu: Option<usize>,
    pub port_min: u16,
    pub port_max: u16,
    /// rtpengine's `log-level` (syslog levels; 4 = warnings).
    pub log_level: u8,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Default for RtpEngineOptions {
    fn default() -> Self {
        RtpEngineOptions {
            bin: on_path("rtpengine").unwrap_or_else(|| PathBuf::from("/usr/bin/rtpengine")),
            threads: 1,
            cpu: None,
            port_min: 40_000,
            port_max: 59_999,
            log_level: 4,
            config: PathBuf::from("/tmp/loadtest-rtpengine.conf"),
            log: PathBuf::from("/tmp/loadtest-rtpengine.log"),
        }
    }
}

/// The config `scripts/rtpengine.sh` also writes: userspace only, loopback only.
pub fn config_text(o: &RtpEngineOptions, ng: SocketAddr) -> String {
    format!(
        "[rtpengine]\n\
         # Userspace forwarding only: no kernel table, no xt_RTPENGINE module.\n\
         table = -1\n\
         interface = 127.0.0.1\n\
         listen-ng = {ng}\n\
         port-min = {}\n\
         port-max = {}\n\
         num-threads = {}\n\
         media-num-threads = 1\n\
         timeout = 60\n\
         silent-timeout = 3600\n\
         delete-delay = 0\n\
         log-level = {}\n",
        o.port_min,
        o.port_max,
        o.threads.max(1),
        o.log_level
    )
}

/// An rtpengine started by this tool; dropping it stops it (SIGTERM, then SIGKILL). It also
/// dies with this process (PR_SET_PDEATHSIG).
#[derive(Debug)]
pub struct RtpEngineProcess {
    child: Child,
    pub ng: SocketAddr,
    pub log: PathBuf,
}

impl RtpEngineProcess {
    pub fn spawn(o: &RtpEngineOptions) -> Result<RtpEngineProcess, RtpEngineError> {
        let ng = {
            let s = StdUdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(RtpEngineError::Port)?;
            s.local_addr().map_err(RtpEngineError::Port)?
        };
        std::fs::write(&o.config, config_text(o, ng)).map_err(|source| RtpEngineError::Write {
            path: o.config.clone(),
            source,
        })?;
        let write_err = |source| RtpEngineError::Write {
            path: o.log.clone(),
            source,
        };
        let log = std::fs::File::create(&o.log).map_err(write_err)?;
        let log_err = log.try_clone().map_err(write_err)?;
        let taskset = o.cpu.and_then(|cpu| on_path("taskset").map(|t| (t, cpu)));
        let mut cmd = match &taskset {
            Some((t, cpu)) => {
                let mut c = Command::new(t);
                c.arg("-c").arg(cpu.to_string()).arg(&o.bin);
                c
            }
            None => Command::new(&o.bin),
        };
        cmd.arg(format!("--config-file={}", o.config.display()))
            .arg("--foreground")
            .arg("--log-stderr")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let pin = if taskset.is_none() { o.cpu } else { None };
        crate::os::die_with_parent_on_cpu(&mut cmd, pin);
        let child = cmd.spawn().map_err(|source| RtpEngineError::Spawn {
            bin: o.bin.clone(),
            source,
        })?;
        Ok(RtpEngineProcess {
            child,
            ng,
            log: o.log.clone(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Pings until rtpengine answers (it needs a moment to bind its ports) or `wait` passes.
    pub async fn wait_ready(
        &mut self,
        ng: &NgClient,
        wait: Duration,
    ) -> Result<(), RtpEngineError> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(RtpEngineError::Exited {
                    status: status.to_string(),
                    log: self.log.clone(),
                });
            }
            let last = match ng.ping().await {
                Ok(()) => return Ok(()),
                Err(e) => e.to_string(),
            };
            if start.elapsed() >= wait {
                return Err(RtpEngineError::Unreachable {
                    addr: self.ng,
                    waited: wait,
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stop(&mut self) {
        crate::target::stop_child(&mut self.child);
    }
}

impl Drop for RtpEngineProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_is_userspace_and_loopback_only() {
        let o = RtpEngineOptions::default();
        let text = config_text(&o, "127.0.0.1:2223".parse().unwrap());
        assert!(text.starts_with("[rtpengine]\n"));
        for line in [
            "table = -1",
            "interface = 127.0.0.1",
            "listen-ng = 127.0.0.1:2223",
            "num-threads = 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    /// A fake rtpengine on loopback: answers the first copy of each request late (so the
    /// client retransmits) and the retransmission at once, echoing the cookie.
    #[tokio::test]
    async fn requests_retry_under_one_cookie_and_read_errors() {
        let server = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let mut seen: HashMap<Vec<u8>, u32> = HashMap::new();
            let mut buf = vec![0u8; 4096];
            while let Ok((n, from)) = server.recv_from(&mut buf).await {
                let msg = buf[..n].to_vec();
                let space = msg.iter().position(|b| *b == b' ').unwrap();
                let (cookie, body) = (msg[..space].to_vec(), &msg[space + 1..]);
                let count = seen.entry(cookie.clone()).or_default();
                *count += 1;
                if *count == 1 {
                    continue; // "lost": the client must send the same cookie again
                }
                let req = Value::decode(body).unwrap();
                let reply = match req.get("command").and_then(Value::as_str) {
                    Some("offer") => {
                        Value::dict([("result", Value::str("ok")), ("sdp", Value::str("v=0\r\n"))])
                    }
                    _ => Value::dict([
                        ("result", Value::str("error")),
                        ("error-reason", Value::str("Unknown call-id")),
                    ]),
                };
                let mut out = cookie;
                out.push(b' ');
                reply.encode(&mut out);
                server.send_to(&out, from).await.unwrap();
            }
        });
        let ng = NgClient::connect(addr).await.unwrap();
        assert_eq!(ng.offer("c1", "v=0", true).await.unwrap(), "v=0\r\n");
        match ng.delete("nope").await {
            Err(NgError::Refused { command, reason }) => {
                assert_eq!(
                    (command.as_str(), reason.as_str()),
                    ("delete", "Unknown call-id")
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
