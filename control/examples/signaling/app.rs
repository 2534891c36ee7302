//! A minimal signaling service for WhatsApp Business Calling in front of the relay: Meta's
//! `calls` webhooks in, the relay's gRPC API and Meta's Graph API out.
//!
//! User-initiated call (the consumer calls the business):
//!   `connect` webhook (offer) → relay `CreateCall` → Graph `pre_accept` (answer) → Graph
//!   `accept` (the same answer) → relay `OpenGate` once `accept` returned 200.
//! Business-initiated call ([`Signaling::call_consumer`]):
//!   relay `CreateCall` (our offer) → Graph `connect` → `connect` webhook (answer) → relay
//!   `SetRemoteDescription` → status webhook `ACCEPTED` → relay `OpenGate`.
//! Either way: `terminate` webhook → relay `Terminate`; and when the relay ends a call itself
//! (media timeout, ICE/DTLS failure) → Graph `terminate`, logging the Meta error code.
//!
//! Webhooks repeat and arrive out of order. Every call has one entry here; a repeated `connect`
//! finds it and does nothing, and a `terminate` that arrives first leaves a tombstone so the late
//! `connect` is ignored (nothing is created on the relay, nothing is sent to Meta).
//!
//! Not production-ready on purpose: one process, state in memory, webhooks handled inline (Meta
//! waits up to ~20 s for the 200), no retries toward the Graph API.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::get;
use control::client::RelayClient;
use control::pb;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::net::TcpStream;

/// How many ended calls are remembered (to ignore their late or repeated webhooks).
const TOMBSTONES: usize = 10_000;

#[derive(Clone, Debug)]
pub struct Config {
    /// Graph API base, e.g. `https://graph.facebook.com/v23.0`.
    pub graph_base: String,
    /// System-user access token for the Graph API.
    pub graph_token: String,
    /// App secret: webhooks must carry a valid `X-Hub-Signature-256` when set.
    pub app_secret: Option<String>,
    /// The token Meta echoes in the webhook verification request (`hub.verify_token`).
    pub verify_token: String,
    /// The internal leg every new call gets (your media server, IVR, agent).
    pub internal: pb::InternalLeg,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Being set up (relay call created or being created, Graph requests in flight).
    Connecting,
    /// `accept` returned 200 (user-initiated) or the consumer picked up (business-initiated).
    Accepted,
    /// Over: terminated by a webhook, by us, or by the relay. A tombstone.
    Ended,
}

#[derive(Clone, Debug)]
struct Entry {
    /// The relay's key for the call: Meta's call ID, or our own key for a business-initiated
    /// call created before Meta assigned one.
    relay_id: String,
    phone_number_id: String,
    phase: Phase,
}

#[derive(Default)]
struct Calls {
    /// By Meta's call ID (and, for business-initiated calls, also by our key until Meta's ID
    /// is known).
    by_id: HashMap<String, Entry>,
    ended: VecDeque<String>,
}

impl Calls {
    fn end(&mut self, id: &str) -> Option<Entry> {
        let e = self.by_id.get_mut(id)?;
        if e.phase == Phase::Ended {
            return None;
        }
        e.phase = Phase::Ended;
        let e = e.clone();
        self.ended.push_back(id.to_string());
        while self.ended.len() > TOMBSTONES {
            if let Some(old) = self.ended.pop_front() {
                self.by_id.remove(&old);
            }
        }
        Some(e)
    }
}

pub struct Signaling {
    cfg: Config,
    relay: RelayClient,
    graph: Graph,
    calls: Mutex<Calls>,
}

#[derive(Debug, thiserror::Error)]
pub enum SignalingError {
    #[error("relay: {0}")]
    Relay(#[from] tonic::Status),
    #[error("graph API: {0}")]
    Graph(#[from] GraphError),
    #[error("call {0} ended while being set up")]
    Ended(String),
}

impl Signaling {
    pub fn new(cfg: Config, relay: RelayClient) -> Result<Arc<Self>, GraphError> {
        let graph = Graph::new(&cfg.graph_base, &cfg.graph_token)?;
        Ok(Arc::new(Signaling {
            cfg,
            relay,
            graph,
            calls: Mutex::default(),
        }))
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn phase(&self, id: &str) -> Option<Phase> {
        self.calls().by_id.get(id).map(|e| e.phase)
    }

    /// The HTTP routes: `GET /webhook` (Meta's verification handshake), `POST /webhook`.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/webhook", get(verify).post(webhook))
            .with_state(Arc::clone(self))
    }

    /// Serve the webhook on `listener` and follow the relay's events until either stops.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        let watcher = tokio::spawn(Arc::clone(&self).follow_relay());
        let r = axum::serve(listener, self.router()).await;
        watcher.abort();
        r
    }

    /// One webhook payload (already authenticated).
    pub async fn handle_webhook(&self, body: &Value) {
        let changes = body["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|e| e["changes"].as_array().into_iter().flatten());
        for change in changes {
            let value = &change["value"];
            let pnid = value["metadata"]["phone_number_id"].as_str().unwrap_or("");
            for call in value["calls"].as_array().into_iter().flatten() {
                let id = call["id"].as_str().unwrap_or("");
                let sdp = call["session"]["sdp"].as_str();
                let result = match (call["event"].as_str(), call["session"]["sdp_type"].as_str()) {
                    (Some("connect"), Some("offer")) => {
                        let from = call["from"].as_str().unwrap_or("");
                        self.on_offer(id, pnid, from, sdp.unwrap_or("")).await
                    }
                    (Some("connect"), Some("answer")) => {
                        self.on_answer(id, sdp.unwrap_or("")).await
                    }
                    (Some("terminate"), _) => {
                        let status = call["status"].as_str().unwrap_or("");
                        self.on_terminate(id, status).await
                    }
                    _ => Ok(()),
                };
                if let Err(e) = result {
                    tracing::warn!(call_id = id, error = %e, "webhook not handled");
                }
            }
            for status in value["statuses"].as_array().into_iter().flatten() {
                if status["type"] == "call" && status["status"] == "ACCEPTED" {
                    let id = status["id"].as_str().unwrap_or("");
                    if let Err(e) = self.on_accepted(id).await {
                        tracing::warn!(call_id = id, error = %e, "ACCEPTED not handled");
                    }
                }
            }
        }
    }

    /// User-initiated `connect`: create the relay call, pre-accept and accept with its answer,
    /// then open the gate.
    async fn on_offer(
        &self,
        id: &str,
        pnid: &str,
        from: &str,
        offer: &str,
    ) -> Result<(), SignalingError> {
        {
            let mut calls = self.calls();
            if calls.by_id.contains_key(id) {
                // A repeated webhook, or a terminate got here first: nothing to do.
                return Ok(());
            }
            calls.by_id.insert(
                id.to_string(),
                Entry {
                    relay_id: id.to_string(),
                    phone_number_id: pnid.to_string(),
                    phase: Phase::Connecting,
                },
            );
        }
        let r = self.accept_offer(id, pnid, from, offer).await;
        if r.is_err() {
            self.abandon(id, "setup failed").await;
        }
        r
    }

    async fn accept_offer(
        &self,
        id: &str,
        pnid: &str,
        from: &str,
        offer: &str,
    ) -> Result<(), SignalingError> {
        let created = self
            .relay
            .clone()
            .create_call(pb::CreateCallRequest {
                call_id: id.to_string(),
                business_number: pnid.to_string(),
                consumer: from.to_string(),
                direction: pb::CallDirection::UserInitiated.into(),
                whatsapp_offer_sdp: offer.to_string(),
                whatsapp: None,
                internal: Some(self.cfg.internal.clone()),
            })
            .await?;
        let answer = json!({ "sdp_type": "answer", "sdp": created.whatsapp_sdp });
        for action in ["pre_accept", "accept"] {
            self.still_live(id)?;
            self.graph
                .calls(
                    pnid,
                    &json!({
                        "messaging_product": "whatsapp",
                        "call_id": id,
                        "action": action,
                        "session": answer,
                    }),
                )
                .await?;
        }
        // `accept` returned 200: the first media packet may now go to the consumer.
        self.still_live(id)?;
        self.relay.clone().open_gate(id).await?;
        if let Some(e) = self.calls().by_id.get_mut(id)
            && e.phase == Phase::Connecting
        {
            e.phase = Phase::Accepted;
        }
        Ok(())
    }

    /// A terminate webhook may have arrived while we were talking to the relay or Meta.
    fn still_live(&self, id: &str) -> Result<(), SignalingError> {
        match self.phase(id) {
            Some(Phase::Ended) | None => Err(SignalingError::Ended(id.to_string())),
            _ => Ok(()),
        }
    }

    /// Setup failed or was overtaken by a terminate: make sure the relay holds nothing.
    async fn abandon(&self, id: &str, why: &str) {
        let relay_id = self.calls().end(id).map_or(id.to_string(), |e| e.relay_id);
        if let Err(e) = self.relay.clone().terminate(relay_id, why).await {
            tracing::warn!(call_id = id, error = %e, "relay terminate failed");
        }
    }

    /// Business-initiated: Meta's answer arrived in the `connect` webhook.
    async fn on_answer(&self, id: &str, answer: &str) -> Result<(), SignalingError> {
        let Some(entry) = self.calls().by_id.get(id).cloned() else {
            return Ok(());
        };
        if entry.phase == Phase::Ended {
            return Ok(());
        }
        self.relay
            .clone()
            .set_remote_description(entry.relay_id, pb::Leg::Whatsapp, answer)
            .await?;
        Ok(())
    }

    /// Business-initiated: the consumer picked up.
    async fn on_accepted(&self, id: &str) -> Result<(), SignalingError> {
        let relay_id = {
            let mut calls = self.calls();
            match calls.by_id.get_mut(id) {
                Some(e) if e.phase == Phase::Connecting => {
                    e.phase = Phase::Accepted;
                    e.relay_id.clone()
                }
                _ => return Ok(()),
            }
        };
        self.relay.clone().open_gate(relay_id).await?;
        Ok(())
    }

    /// `terminate` webhook: end the relay call; remember the ID so a late `connect` is ignored.
    async fn on_terminate(&self, id: &str, status: &str) -> Result<(), SignalingError> {
        let relay_id = {
            let mut calls = self.calls();
            if !calls.by_id.contains_key(id) {
                calls.by_id.insert(
                    id.to_string(),
                    Entry {
                        relay_id: id.to_string(),
                        phone_number_id: String::new(),
                        phase: Phase::Connecting,
                    },
                );
            }
            match calls.end(id) {
                Some(e) => e.relay_id,
                None => return Ok(()),
            }
        };
        self.relay
            .clone()
            .terminate(relay_id, format!("terminate webhook {status}"))
            .await?;
        Ok(())
    }

    /// Place a business-initiated call to `to` from `pnid`. Returns Meta's call ID.
    pub async fn call_consumer(&self, pnid: &str, to: &str) -> Result<String, SignalingError> {
        // Meta's call ID comes back from the Graph API `connect`; the relay call needs a key
        // before that, so it gets our own (kept for the whole call).
        let key = format!("bic-{pnid}-{to}-{}", rand_suffix());
        let created = self
            .relay
            .clone()
            .create_call(pb::CreateCallRequest {
                call_id: key.clone(),
                business_number: pnid.to_string(),
                consumer: to.to_string(),
                direction: pb::CallDirection::BusinessInitiated.into(),
                whatsapp_offer_sdp: String::new(),
                whatsapp: None,
                internal: Some(self.cfg.internal.clone()),
            })
            .await?;
        let resp = self
            .graph
            .calls(
                pnid,
                &json!({
                    "messaging_product": "whatsapp",
                    "to": to,
                    "action": "connect",
                    "session": { "sdp_type": "offer", "sdp": created.whatsapp_sdp },
                }),
            )
            .await;
        let meta_id = match resp.map(|v| v["calls"][0]["id"].as_str().map(str::to_string)) {
            Ok(Some(id)) => id,
            other => {
                let _ = self
                    .relay
                    .clone()
                    .terminate(key, "graph connect failed")
                    .await;
                return Err(match other {
                    Err(e) => e.into(),
                    _ => GraphError::Response("connect response without calls[0].id".into()).into(),
                });
            }
        };
        self.calls().by_id.insert(
            meta_id.clone(),
            Entry {
                relay_id: key,
                phone_number_id: pnid.to_string(),
                phase: Phase::Connecting,
            },
        );
        Ok(meta_id)
    }

    /// The relay ended a call on its own (media timeout, ICE/DTLS failure, drain): tell Meta.
    async fn follow_relay(self: Arc<Self>) {
        loop {
            let Ok(mut stream) = self.relay.clone().watch(None).await else {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            };
            while let Some(ev) = next_event(&mut stream).await {
                let Some(pb::call_event::Kind::Ended(end)) = ev.kind else {
                    continue;
                };
                self.relay_ended(&ev.call_id, end.cause(), end.meta_code)
                    .await;
            }
        }
    }

    async fn relay_ended(&self, relay_id: &str, cause: pb::EndCause, meta_code: Option<u32>) {
        let ended = {
            let mut calls = self.calls();
            let id = calls
                .by_id
                .iter()
                .find(|(_, e)| e.relay_id == relay_id && e.phase != Phase::Ended)
                .map(|(id, _)| id.clone());
            id.and_then(|id| Some((id.clone(), calls.end(&id)?)))
        };
        // Ended by us or by a webhook: Meta knows already.
        let Some((id, entry)) = ended else { return };
        tracing::warn!(
            call_id = %id,
            cause = cause.as_str_name(),
            ?meta_code,
            "relay ended the call"
        );
        let body = json!({ "messaging_product": "whatsapp", "call_id": id, "action": "terminate" });
        if let Err(e) = self.graph.calls(&entry.phone_number_id, &body).await {
            tracing::warn!(call_id = %id, error = %e, "graph terminate failed");
        }
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// `GET /webhook?hub.mode=subscribe&hub.verify_token=…&hub.challenge=…`: echo the challenge.
async fn verify(State(app): State<Arc<Signaling>>, uri: Uri) -> (StatusCode, String) {
    let query = uri.query().unwrap_or("");
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or("")
    };
    if param("hub.mode") == "subscribe" && param("hub.verify_token") == app.cfg.verify_token {
        (StatusCode::OK, param("hub.challenge").to_string())
    } else {
        (StatusCode::FORBIDDEN, String::new())
    }
}

/// `POST /webhook`: check the signature, handle the payload, answer 200.
async fn webhook(State(app): State<Arc<Signaling>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if let Some(secret) = &app.cfg.app_secret {
        let sig = headers
            .get("x-hub-signature-256")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !signature_ok(secret, &body, sig) {
            return StatusCode::UNAUTHORIZED;
        }
    }
    let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    app.handle_webhook(&payload).await;
    StatusCode::OK
}

/// `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body with the app secret>`.
pub fn signature_ok(secret: &str, body: &[u8], header: &str) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Some(expected) = decode_hex(hex) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

// ----- the Graph API client ------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("bad Graph API base URL {0:?} (want http(s)://host[:port]/path)")]
    BadBase(String),
    #[error("connecting to the Graph API: {0}")]
    Connect(#[from] std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("Graph API answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("unexpected Graph API response: {0}")]
    Response(String),
}

/// `POST {base}/{phone-number-id}/calls` with a bearer token, over HTTP/1.1 (TLS for https).
pub struct Graph {
    tls: Option<tokio_rustls::TlsConnector>,
    host: String,
    port: u16,
    path: String,
    token: String,
}

impl Graph {
    pub fn new(base: &str, token: &str) -> Result<Graph, GraphError> {
        let bad = || GraphError::BadBase(base.to_string());
        let (https, rest) = match base.split_once("://") {
            Some(("https", rest)) => (true, rest),
            Some(("http", rest)) => (false, rest),
            _ => return Err(bad()),
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| bad())?),
            None => (authority, if https { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Graph {
            tls: if https { Some(tls_connector()?) } else { None },
            host: host.to_string(),
            port,
            path: format!("/{}", path.trim_end_matches('/')).replace("//", "/"),
            token: token.to_string(),
        })
    }

    /// One request on a fresh connection (a busy service would pool connections).
    pub async fn calls(&self, phone_number_id: &str, body: &Value) -> Result<Value, GraphError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        let path = format!(
            "{}/{phone_number_id}/calls",
            self.path.trim_end_matches('/')
        );
        let req = hyper::Request::post(path)
            .header("host", &self.host)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| GraphError::Response(e.to_string()))?;
        let resp = match &self.tls {
            None => send(TokioIo::new(tcp), req).await?,
            Some(tls) => {
                let name = tokio_rustls::rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| GraphError::Tls(e.to_string()))?;
                send(TokioIo::new(tls.connect(name, tcp).await?), req).await?
            }
        };
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Err(GraphError::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| GraphError::Response(e.to_string()))
    }
}

async fn send<IO>(
    io: IO,
    req: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, GraphError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    Ok(sender.send_request(req).await?)
}

/// TLS toward graph.facebook.com with the system's CA bundle.
fn tls_connector() -> Result<tokio_rustls::TlsConnector, GraphError> {
    use tokio_rustls::rustls::{self, pki_types::CertificateDer, pki_types::pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    let bundle = "/etc/ssl/certs/ca-certificates.crt";
    for cert in CertificateDer::pem_file_iter(bundle).map_err(|e| GraphError::Tls(e.to_string()))? {
        let cert = cert.map_err(|e| GraphError::Tls(e.to_string()))?;
        let _ = roots.add(cert);
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| GraphError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

/// The bound address of a listener, for logs.
pub fn describe(addr: SocketAddr) -> String {
    format!("http://{addr}/webhook")
}

/// The next call event of a Watch stream (lag notices skipped); `None` when it ends.
async fn next_event(s: &mut tonic::Streaming<pb::WatchResponse>) -> Option<pb::CallEvent> {
    loop {
        if let Some(pb::watch_response::Item::Event(e)) = s.message().await.ok()??.item {
            return Some(e);
        }
    }
}
