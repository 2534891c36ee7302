//! The bot's WebSocket: connect (TCP, TLS, HTTP upgrade), say `connected` and `start`, then
//! pump the [`link`](super::link) between the call's shard and the socket until either side
//! ends.
//!
//! The library: tungstenite (through tokio-tungstenite) for the WebSocket protocol, over a
//! stream we open ourselves: a `TcpStream` with Nagle off (20 ms frames must not wait for an
//! ACK), wrapped in tokio-rustls for `wss://`. tungstenite is the most used Rust WebSocket
//! implementation, passes the Autobahn suite, and reads messages out of its buffer as `Bytes`
//! without copying; doing TLS ourselves keeps one TLS stack (rustls with ring, as the gRPC
//! server uses) and lets the relay choose the roots: the system's (rustls-native-certs) plus
//! an optional CA file, with the URL's host verified. No OpenSSL, no second crypto provider.
//!
//! One task per bot leg, on the control plane's tokio runtime. It never touches the call: it
//! only moves items through the link's rings, so a slow or hostile bot costs its own task
//! and at worst its own call's audio (counted drops), never the shard.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Utf8Bytes};

use crate::api::ApiError;
use crate::bot::link::{self, Closed, ShardEnd, TaskEnd, Up};
use crate::bot::protocol::{self, BotMessage, MediaFormat, StreamInfo, Writer};
use crate::bot::{BotConfig, BotTarget};

/// A connected bot, ready to be attached to its call.
pub struct BotAttach {
    pub end: ShardEnd,
    pub format: MediaFormat,
    pub stream_sid: String,
}

impl std::fmt::Debug for BotAttach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BotAttach")
            .field("format", &self.format)
            .field("stream_sid", &self.stream_sid)
            .finish()
    }
}

/// Opens bot WebSockets with the relay's settings (one per engine; the TLS roots are loaded
/// once, at the first `wss://`).
pub struct BotConnector {
    cfg: BotConfig,
    tls: OnceLock<Result<TlsConnector, String>>,
}

impl BotConnector {
    pub fn new(cfg: BotConfig) -> Self {
        BotConnector {
            cfg,
            tls: OnceLock::new(),
        }
    }

    fn tls(&self) -> Result<TlsConnector, String> {
        self.tls
            .get_or_init(|| tls_connector(&self.cfg).map_err(|e| e.to_string()))
            .clone()
    }

    /// Connect to the bot, send `connected` and `start`, and start the task that pumps the
    /// link. Fails (nothing started) if the bot cannot be reached in `connect_timeout`.
    pub async fn connect(
        &self,
        target: &BotTarget,
        call_id: &str,
        business_number: &str,
    ) -> Result<BotAttach, ApiError> {
        let stream_sid = format!("MZ{:032x}", rand::random::<u128>());
        let info = StreamInfo {
            stream_sid: stream_sid.clone(),
            call_id: call_id.to_string(),
            business_number: business_number.to_string(),
            custom: target.custom_parameters.clone(),
            format: target.format,
        };
        let (end, task) =
            link::link(target.format).map_err(|e| ApiError::Internal(format!("bot link: {e}")))?;
        let connecting = self.open(target, task, info);
        match tokio::time::timeout(self.cfg.connect_timeout, connecting).await {
            Ok(Ok(())) => Ok(BotAttach {
                end,
                format: target.format,
                stream_sid,
            }),
            Ok(Err(e)) => Err(ApiError::BotUnreachable(format!("{}: {e}", target.url))),
            Err(_) => Err(ApiError::BotUnreachable(format!(
                "{}: no WebSocket within {:?}",
                target.url, self.cfg.connect_timeout
            ))),
        }
    }

    async fn open(
        &self,
        target: &BotTarget,
        task: TaskEnd,
        info: StreamInfo,
    ) -> Result<(), String> {
        let uri: http::Uri = target.url.parse().map_err(|e| format!("{e}"))?;
        let tls = uri.scheme_str() == Some("wss");
        let host = uri.host().ok_or("no host")?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let tcp = TcpStream::connect((bare, port))
            .await
            .map_err(|e| format!("TCP connect to {bare}:{port}: {e}"))?;
        // 20 ms frames go out as they come, not when the previous one is acknowledged.
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut req = target
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| e.to_string())?;
        for (k, v) in &target.headers {
            let name = http::HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?;
            let value = http::HeaderValue::from_str(v).map_err(|e| e.to_string())?;
            req.headers_mut().insert(name, value);
        }
        let cfg = WebSocketConfig::default()
            .max_message_size(Some(protocol::MAX_MESSAGE_BYTES))
            .max_frame_size(Some(protocol::MAX_MESSAGE_BYTES));
        if tls {
            let connector = self.tls()?;
            let name = ServerName::try_from(bare.to_string()).map_err(|e| e.to_string())?;
            let stream = connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            let (ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(cfg))
                .await
                .map_err(|e| format!("WebSocket upgrade: {e}"))?;
            Pump::start(ws, task, info).await
        } else {
            let (ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, Some(cfg))
                .await
                .map_err(|e| format!("WebSocket upgrade: {e}"))?;
            Pump::start(ws, task, info).await
        }
    }
}

fn tls_connector(cfg: &BotConfig) -> Result<TlsConnector, String> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, "bot TLS: system CA roots");
    if let Some(path) = &cfg.ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("bot_ca_file {}: {e}", path.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("bot_ca_file {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("bot_ca_file {}: {e}", path.display()))?;
        }
    }
    if roots.is_empty() {
        return Err("no CA roots for wss:// (none in the system store, no bot_ca_file)".into());
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Our duplicate of the link's doorbell, for the reactor.
struct Bell(OwnedFd);

impl AsRawFd for Bell {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Bot audio bytes, kept whole-sample: an L16 message of odd length leaves a byte for the
/// next one.
struct AudioIn {
    format: MediaFormat,
    odd: Option<u8>,
}

impl AudioIn {
    fn push(&mut self, mut bytes: &[u8], end: &mut TaskEnd) {
        if self.format.sample_bytes() == 1 {
            return end.push_audio(bytes);
        }
        if let Some(first) = self.odd.take() {
            let Some((&second, rest)) = bytes.split_first() else {
                self.odd = Some(first);
                return;
            };
            end.push_audio(&[first, second]);
            bytes = rest;
        }
        if bytes.len() % 2 == 1 {
            self.odd = bytes.last().copied();
            bytes = &bytes[..bytes.len() - 1];
        }
        end.push_audio(bytes);
    }
}

/// The task's state: the socket, the link, the protocol writer and its reused buffers.
struct Pump<S> {
    ws: WebSocketStream<S>,
    bell: AsyncFd<Bell>,
    end: TaskEnd,
    info: StreamInfo,
    writer: Writer,
    text: String,
    /// Outgoing payloads are split off this buffer, which reclaims the space once the socket
    /// has taken them: no allocation per frame once warm.
    out: BytesMut,
    marks: VecDeque<(u32, String)>,
    next_mark: u32,
    audio_in: AudioIn,
}

/// How a pump ended.
enum Exit {
    LegOver,
    Closed(Closed, String),
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Pump<S> {
    /// Say `connected` and `start`, then run the pump on its own task.
    async fn start(ws: WebSocketStream<S>, end: TaskEnd, info: StreamInfo) -> Result<(), String> {
        let fd = end.doorbell_fd().map_err(|e| format!("doorbell: {e}"))?;
        // SAFETY: `Bell` owns its descriptor, open until the AsyncFd (which owns the Bell) is
        // dropped, and always returns that same descriptor.
        let bell =
            unsafe { AsyncFd::register_with_interest(Bell(fd), tokio::io::Interest::READABLE) }
                .map_err(|e| format!("doorbell: {}", e.into_parts().1))?;
        let mut pump = Pump {
            ws,
            bell,
            audio_in: AudioIn {
                format: info.format,
                odd: None,
            },
            end,
            writer: Writer::new(&info.stream_sid),
            info,
            text: String::with_capacity(4096),
            out: BytesMut::with_capacity(64 * 1024),
            marks: VecDeque::new(),
            next_mark: 0,
        };
        pump.writer.connected(&mut pump.text);
        let m = pump.text_message();
        pump.ws.feed(m).await.map_err(|e| e.to_string())?;
        pump.writer.start(&pump.info, &mut pump.text);
        let m = pump.text_message();
        pump.ws.send(m).await.map_err(|e| e.to_string())?;
        tokio::spawn(pump.run());
        Ok(())
    }

    async fn run(mut self) {
        let call_id = self.info.call_id.clone();
        match self.pump().await {
            Exit::LegOver => {
                self.writer.stop(&self.info, &mut self.text);
                let m = self.text_message();
                let _ = self.ws.feed(m).await;
                let _ = self
                    .ws
                    .send(Message::Close(Some(CloseFrame {
                        code: CloseCode::Normal,
                        reason: Utf8Bytes::from_static("the call's bot leg ended"),
                    })))
                    .await;
                tracing::debug!(call_id, "bot leg over: stop sent, WebSocket closed");
            }
            Exit::Closed(why, detail) => {
                tracing::info!(call_id, ?why, detail, "bot WebSocket ended");
                self.end.set_closed(why);
            }
        }
    }

    async fn pump(&mut self) -> Exit {
        loop {
            if self.end.leg_over() {
                return Exit::LegOver;
            }
            let mut wrote = false;
            while let Some(item) = self.end.pop() {
                if let Some(m) = self.message_for(item)
                    && let Err(e) = self.ws.feed(m).await
                {
                    return Exit::Closed(Closed::Failed, format!("write: {e}"));
                }
                wrote = true;
            }
            if wrote && let Err(e) = self.ws.flush().await {
                return Exit::Closed(Closed::Failed, format!("write: {e}"));
            }
            if !self.end.arm() {
                continue;
            }
            tokio::select! {
                ready = self.bell.readable() => match ready {
                    Ok(mut guard) => {
                        guard.clear_ready();
                        self.end.drain_doorbell();
                    }
                    Err(e) => return Exit::Closed(Closed::Failed, format!("doorbell: {e}")),
                },
                msg = self.ws.next() => match msg {
                    Some(Ok(m)) => {
                        if let Some(exit) = self.on_message(m) {
                            return exit;
                        }
                    }
                    Some(Err(e)) => return Exit::Closed(Closed::Failed, format!("read: {e}")),
                    None => return Exit::Closed(Closed::Failed, "connection closed without a close frame".into()),
                },
            }
        }
    }

    fn on_message(&mut self, m: Message) -> Option<Exit> {
        let counters = self.end.counters();
        match m {
            Message::Text(t) => match protocol::parse(&t) {
                Ok(BotMessage::Media { payload }) => {
                    counters
                        .media_messages
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let (audio_in, end) = (&mut self.audio_in, &mut self.end);
                    if protocol::decode_payload(&payload, |b| audio_in.push(b, end)).is_err() {
                        self.end
                            .counters()
                            .bad_messages
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                Ok(BotMessage::Mark { name }) => {
                    let id = self.next_mark;
                    self.next_mark = self.next_mark.wrapping_add(1);
                    if self.end.push_mark(id) {
                        self.marks.push_back((id, name.into_owned()));
                    } else {
                        tracing::debug!(
                            call_id = self.info.call_id,
                            "bot mark refused: too many pending"
                        );
                    }
                }
                Ok(BotMessage::Clear) => self.end.clear(),
                Ok(BotMessage::Ignored) => {}
                Err(e) => {
                    counters
                        .bad_messages
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(call_id = self.info.call_id, error = %e, "bot message not understood");
                }
            },
            Message::Binary(b) => {
                if self.info.format.binary() {
                    counters
                        .media_messages
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.audio_in.push(&b, &mut self.end);
                } else {
                    counters
                        .bad_messages
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            Message::Close(frame) => {
                let detail = frame.map_or_else(
                    || "close frame".to_string(),
                    |f| format!("close {} {}", u16::from(f.code), f.reason),
                );
                return Some(Exit::Closed(Closed::ByBot, detail));
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
        None
    }

    /// The WebSocket message for one item from the shard.
    fn message_for(&mut self, item: Up) -> Option<Message> {
        match item {
            Up::Audio(f) if self.info.format.binary() => {
                self.writer.count_binary_media();
                Some(Message::Binary(self.split_out(f.bytes())))
            }
            Up::Audio(f) => {
                self.writer
                    .media(u64::from(f.timestamp_ms), f.bytes(), &mut self.text);
                Some(self.text_message())
            }
            Up::Dtmf(d) => {
                self.writer.dtmf(d, &mut self.text);
                Some(self.text_message())
            }
            Up::MarkPlayed(id) => {
                // Marks come back in the order they were queued.
                while let Some((queued, name)) = self.marks.pop_front() {
                    if queued == id {
                        self.writer.mark(&name, &mut self.text);
                        return Some(self.text_message());
                    }
                }
                None
            }
        }
    }

    fn split_out(&mut self, data: &[u8]) -> Bytes {
        self.out.reserve(data.len());
        self.out.extend_from_slice(data);
        self.out.split().freeze()
    }

    /// `self.text` as a text message (its bytes copied into the reused output buffer).
    fn text_message(&mut self) -> Message {
        let text = std::mem::take(&mut self.text);
        let bytes = self.split_out(text.as_bytes());
        self.text = text;
        // SAFETY: copied from a `String`, so valid UTF-8.
        Message::Text(unsafe { Utf8Bytes::from_bytes_unchecked(bytes) })
    }
}
