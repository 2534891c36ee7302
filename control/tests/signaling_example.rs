//! The signaling example (`examples/signaling`) against a real relay engine (in process, over its
//! gRPC API on loopback), the Meta emulator for the media, and a fake Graph API that records
//! every request and hands the SDP to the emulator the way Meta would.

#[path = "../examples/signaling/app.rs"]
#[allow(dead_code)]
mod app;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use control::client::RelayClient;
use control::pb;
use e2e::meta::{MetaConfig, MetaHandle, MetaPeer};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use relay::call::CallConfig;
use relay::control::{ControlConfig, serve_on};
use relay::engine::{Engine, EngineConfig, EngineHandle};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::net::TcpListener;

const SECRET: &str = "app-secret";
const PNID: &str = "106540352242922";

/// One request the fake Graph API received.
#[derive(Clone, Debug)]
struct GraphRequest {
    phone_number_id: String,
    authorization: String,
    body: Value,
}

#[derive(Clone)]
struct FakeGraph {
    seen: Arc<Mutex<Vec<GraphRequest>>>,
    /// The emulator's answers to business-initiated offers (sent back in a webhook).
    answers: Arc<Mutex<Vec<String>>>,
    meta: Arc<MetaHandle>,
}

impl FakeGraph {
    fn actions(&self, call_id: &str) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.body["call_id"] == call_id || r.body["action"] == "connect")
            .map(|r| r.body["action"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

/// What Meta does with the SDP it gets: the emulator takes our answer (user-initiated) or
/// answers our offer (business-initiated; the answer comes back in a `connect` webhook).
async fn graph_calls(
    State(g): State<FakeGraph>,
    Path(pnid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> String {
    let body: Value = serde_json::from_slice(&body).expect("JSON body");
    let mut resp = json!({ "messaging_product": "whatsapp", "success": true });
    match body["action"].as_str() {
        Some("pre_accept") => {
            let sdp = body["session"]["sdp"].as_str().expect("answer SDP");
            g.meta.set_remote_sdp(sdp).expect("Meta takes the answer");
        }
        Some("connect") => {
            let sdp = body["session"]["sdp"].as_str().expect("offer SDP");
            let answer = g.meta.answer_sdp(sdp).expect("Meta answers");
            g.answers.lock().unwrap().push(answer);
            resp = json!({ "messaging_product": "whatsapp", "calls": [{ "id": "wacid.BIC" }] });
        }
        _ => {}
    }
    g.seen.lock().unwrap().push(GraphRequest {
        phone_number_id: pnid,
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        body,
    });
    resp.to_string()
}

struct World {
    engine: EngineHandle,
    relay: RelayClient,
    graph: FakeGraph,
    meta: Arc<MetaHandle>,
    app: Arc<app::Signaling>,
    webhook: SocketAddr,
}

impl Drop for World {
    fn drop(&mut self) {
        self.engine.shutdown();
    }
}

impl World {
    async fn start(call: CallConfig) -> World {
        let engine = Engine::start(EngineConfig {
            shards: 1,
            call,
            ..EngineConfig::default()
        })
        .expect("engine");
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_addr = grpc.local_addr().unwrap();
        tokio::spawn(serve_on(
            Arc::new(engine.clone()),
            ControlConfig::default(),
            grpc,
            std::future::pending(),
        ));
        let relay = RelayClient::connect(format!("http://{grpc_addr}"), None)
            .await
            .expect("relay gRPC");

        let meta = Arc::new(MetaPeer::spawn(MetaConfig::default()).expect("Meta emulator"));
        let graph = FakeGraph {
            seen: Arc::default(),
            answers: Arc::default(),
            meta: Arc::clone(&meta),
        };
        let graph_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let graph_addr = graph_listener.local_addr().unwrap();
        let router = axum::Router::new()
            .route("/v23.0/{pnid}/calls", post(graph_calls))
            .with_state(graph.clone());
        tokio::spawn(async move { axum::serve(graph_listener, router).await });

        let app = app::Signaling::new(
            app::Config {
                graph_base: format!("http://{graph_addr}/v23.0"),
                graph_token: "graph-token".into(),
                app_secret: Some(SECRET.into()),
                verify_token: "verify-me".into(),
                internal: pb::InternalLeg {
                    source_policy: pb::SourcePolicy::Latch.into(),
                    ..Default::default()
                },
            },
            relay.clone(),
        )
        .expect("signaling app");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let webhook = listener.local_addr().unwrap();
        tokio::spawn(Arc::clone(&app).serve(listener));
        World {
            engine,
            relay,
            graph,
            meta,
            app,
            webhook,
        }
    }

    /// POST a webhook payload, signed like Meta signs it (or with `signature`). Returns the
    /// HTTP status.
    async fn post(&self, payload: &Value, signature: Option<&str>) -> u16 {
        let body = payload.to_string();
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(body.as_bytes());
        let good: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let sig = signature.map_or(format!("sha256={good}"), str::to_string);
        let tcp = tokio::net::TcpStream::connect(self.webhook).await.unwrap();
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::post("/webhook")
            .header("host", "localhost")
            .header("content-type", "application/json")
            .header("x-hub-signature-256", sig)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = tx.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        status
    }

    async fn call(&self, id: &str) -> Option<pb::CallInfo> {
        self.relay.clone().get_call(id).await.ok()?.call
    }

    /// Poll (bounded) until the relay reports the call ended (GetCall answers with the final
    /// state while the ID's tombstone lives).
    async fn wait_ended(&self, id: &str) -> bool {
        self.wait_call(id, |c| c.is_none_or(|c| c.state() == pb::CallState::Ended))
            .await
    }

    /// Poll (bounded) until `cond` holds for the call's info.
    async fn wait_call(&self, id: &str, cond: impl Fn(Option<&pb::CallInfo>) -> bool) -> bool {
        for _ in 0..400 {
            if cond(self.call(id).await.as_ref()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    }
}

fn calls_webhook(call: Value) -> Value {
    json!({
        "object": "whatsapp_business_account",
        "entry": [{
            "id": "102290129340398",
            "changes": [{
                "field": "calls",
                "value": {
                    "messaging_product": "whatsapp",
                    "metadata": { "display_phone_number": "15550783881", "phone_number_id": PNID },
                    "contacts": [{ "profile": { "name": "Pablo" }, "wa_id": "13175551399" }],
                    "calls": [call],
                },
            }],
        }],
    })
}

fn connect(id: &str, offer: &str) -> Value {
    calls_webhook(json!({
        "id": id, "to": "15550783881", "from": "13175551399", "event": "connect",
        "timestamp": "1671644824", "direction": "USER_INITIATED",
        "session": { "sdp_type": "offer", "sdp": offer },
    }))
}

fn terminate(id: &str) -> Value {
    calls_webhook(json!({
        "id": id, "to": "15550783881", "from": "13175551399", "event": "terminate",
        "direction": "USER_INITIATED", "timestamp": "1671644900", "status": "COMPLETED",
        "start_time": "1671644830", "end_time": "1671644900", "duration": 70,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_initiated_call_connect_accept_open_gate_terminate() {
    let w = World::start(CallConfig::default()).await;
    let id = "wacid.HBgLMTMxNzU1NTEzOTkVAgASGCA2";

    assert_eq!(w.post(&connect(id, &w.meta.offer_sdp()), None).await, 200);
    // Graph API: pre_accept then accept, the same answer SDP, with our token.
    assert_eq!(w.graph.actions(id), ["pre_accept", "accept"]);
    let seen = w.graph.seen.lock().unwrap().clone();
    assert_eq!(seen[0].body["session"], seen[1].body["session"]);
    assert_eq!(seen[0].body["session"]["sdp_type"], "answer");
    assert!(
        seen[0].body["session"]["sdp"]
            .as_str()
            .unwrap()
            .contains("a=setup:active")
    );
    assert!(seen.iter().all(|r| r.authorization == "Bearer graph-token"));
    assert!(seen.iter().all(|r| r.phone_number_id == PNID));

    // The relay's call is active with the gate open once ICE + DTLS with "Meta" are done.
    assert!(
        w.wait_call(id, |c| c
            .is_some_and(|c| c.gate_open && c.state() == pb::CallState::Active))
            .await,
        "call active: {:?}",
        w.call(id).await
    );
    let info = w.call(id).await.unwrap();
    assert_eq!(info.business_number, PNID);
    assert_eq!(info.consumer, "13175551399");

    // Meta repeats the connect webhook: nothing new anywhere.
    assert_eq!(w.post(&connect(id, &w.meta.offer_sdp()), None).await, 200);
    assert_eq!(w.graph.actions(id), ["pre_accept", "accept"]);
    assert_eq!(w.relay.clone().list_calls("", &[]).await.unwrap().len(), 1);

    // The terminate webhook ends the call; Meta is not told again (it told us).
    assert_eq!(w.post(&terminate(id), None).await, 200);
    assert!(w.wait_ended(id).await);
    assert_eq!(w.engine.active_calls(), 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(w.graph.actions(id), ["pre_accept", "accept"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_before_connect_leaves_nothing_and_bad_signatures_are_refused() {
    let w = World::start(CallConfig::default()).await;
    let id = "wacid.early-terminate";
    assert_eq!(w.post(&terminate(id), None).await, 200);
    assert_eq!(w.post(&connect(id, &w.meta.offer_sdp()), None).await, 200);
    assert!(w.graph.actions(id).is_empty(), "nothing sent to Meta");
    assert!(
        w.relay
            .clone()
            .list_calls("", &[])
            .await
            .unwrap()
            .is_empty()
    );

    let forged = connect("wacid.forged", &w.meta.offer_sdp());
    assert_eq!(w.post(&forged, Some("sha256=00ff")).await, 401);
    assert!(
        w.relay
            .clone()
            .list_calls("", &[])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(w.graph.seen.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_relay_ends_is_terminated_on_the_graph_api() {
    // The consumer's side never sends media after accept: the relay ends the call (138023).
    let w = World::start(CallConfig {
        start_media_timeout: Duration::from_secs(1),
        ..CallConfig::default()
    })
    .await;
    let id = "wacid.silent-consumer";
    assert_eq!(w.post(&connect(id, &w.meta.offer_sdp()), None).await, 200);
    let mut ended = false;
    for _ in 0..400 {
        if w.graph.actions(id).last().map(String::as_str) == Some("terminate") {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ended, "Graph API saw {:?}", w.graph.actions(id));
    assert_eq!(w.graph.actions(id), ["pre_accept", "accept", "terminate"]);
    assert_eq!(w.engine.active_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_initiated_call_connects_on_accepted() {
    let w = World::start(CallConfig::default()).await;
    let meta_id = w
        .app
        .call_consumer(PNID, "13175551399")
        .await
        .expect("placed");
    assert_eq!(meta_id, "wacid.BIC");
    {
        let seen = w.graph.seen.lock().unwrap();
        assert_eq!(seen[0].body["action"], "connect");
        assert_eq!(seen[0].body["to"], "13175551399");
        assert_eq!(seen[0].body["session"]["sdp_type"], "offer");
    }
    let answer = w.graph.answers.lock().unwrap()[0].clone();
    let relay_key = w.relay.clone().list_calls("", &[]).await.unwrap()[0]
        .call_id
        .clone();

    // Meta's answer arrives in a connect webhook; the gate stays closed until ACCEPTED.
    let answer_webhook = calls_webhook(json!({
        "id": meta_id, "to": "13175551399", "from": "15550783881", "event": "connect",
        "timestamp": "1671644824", "direction": "BUSINESS_INITIATED",
        "session": { "sdp_type": "answer", "sdp": answer },
    }));
    assert_eq!(w.post(&answer_webhook, None).await, 200);
    assert!(
        w.wait_call(&relay_key, |c| c
            .is_some_and(|c| c.state() == pb::CallState::Ready))
            .await
    );
    assert!(!w.call(&relay_key).await.unwrap().gate_open);
    let accepted = json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": "1", "changes": [{ "field": "calls", "value": {
            "messaging_product": "whatsapp",
            "metadata": { "phone_number_id": PNID },
            "statuses": [{ "id": meta_id, "timestamp": "1671644830", "type": "call",
                           "status": "ACCEPTED", "recipient_id": "13175551399" }],
        }}]}],
    });
    assert_eq!(w.post(&accepted, None).await, 200);
    assert!(
        w.wait_call(&relay_key, |c| c
            .is_some_and(|c| c.gate_open && c.state() == pb::CallState::Active))
            .await
    );
    assert_eq!(w.post(&terminate(&meta_id), None).await, 200);
    assert!(w.wait_ended(&relay_key).await);
}
