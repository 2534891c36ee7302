//! The control plane through a real tonic client over loopback, against an in-memory engine.
//!
//! `FakeEngine` implements `CallControl` with the policy the real engine has (idempotent create,
//! per-number limit, duplicate detection, terminate of unknown calls succeeds), so these tests
//! check the gRPC side: requests reach the engine intact, answers and errors reach the client
//! in the documented shape, events stream in order, authentication and exposure rules hold.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use control::client::{RelayClient, error_reason, meta_code};
use control::pb;
use relay::api::{
    ApiError, CallControl, CallCreated, CallDirection, CallEvent, CallEventKind, CallInfo,
    CallState, CreateCall, EndCause, InternalKind, InternalLegReplaced, InternalLegSpec, LegKind,
    LegStats, Load, RefusedReason, ShardLoad, SourcePolicy,
};
use relay::control::{ControlConfig, ControlError, TlsFiles, serve, serve_on};
use relay::srtp::SrtpProfile;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;
use tonic::Code;
use tonic_types::StatusExt;

// ----- the fake engine -----------------------------------------------------------------------

struct FakeEngine {
    limit: u32,
    draining: std::sync::atomic::AtomicBool,
    /// CreateCalls the control plane refused before they reached the engine.
    refused: Mutex<Vec<RefusedReason>>,
    inner: Mutex<Fake>,
    events: broadcast::Sender<CallEvent>,
}

#[derive(Default)]
struct Fake {
    live: HashMap<String, (CallCreated, CallInfo)>,
    /// Every create request the engine accepted, as it received it.
    requests: Vec<CreateCall>,
    /// Every (call, reason) it was asked to terminate.
    terminations: Vec<(String, String)>,
    /// Every internal-leg replacement, as the engine received it.
    replacements: Vec<(String, InternalLegSpec)>,
}

impl FakeEngine {
    fn new(limit: u32, event_capacity: usize) -> Arc<Self> {
        Arc::new(FakeEngine {
            limit,
            draining: Default::default(),
            refused: Mutex::default(),
            inner: Mutex::default(),
            events: broadcast::channel(event_capacity).0,
        })
    }

    fn publish(&self, call_id: &str, kind: CallEventKind) {
        // No receiver is not an error for the engine.
        let _ = self.events.send(CallEvent {
            call_id: call_id.into(),
            at: SystemTime::now(),
            kind,
        });
    }

    fn fake(&self) -> std::sync::MutexGuard<'_, Fake> {
        self.inner.lock().unwrap()
    }

    fn update(
        &self,
        call_id: &str,
        f: impl FnOnce(&mut CallInfo) -> Result<(), ApiError>,
    ) -> Result<CallInfo, ApiError> {
        let mut fake = self.fake();
        let (_, info) = fake
            .live
            .get_mut(call_id)
            .ok_or_else(|| ApiError::NotFound(call_id.into()))?;
        f(info)?;
        Ok(info.clone())
    }
}

impl CallControl for FakeEngine {
    async fn create_call(&self, req: CreateCall) -> Result<CallCreated, ApiError> {
        let mut fake = self.fake();
        if let Some((created, _)) = fake.live.get(&req.call_id) {
            return Ok(created.clone());
        }
        if self.draining.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ApiError::Unavailable("relay is draining".into()));
        }
        if let Some(offer) = &req.whatsapp_offer
            && let Some(line) = offer.lines().find(|l| l.starts_with("m=video"))
        {
            return Err(ApiError::InvalidArgument(format!(
                "SDP line 4: unsupported media `{line}`"
            )));
        }
        let same_number: Vec<&CallInfo> = fake
            .live
            .values()
            .map(|(_, i)| i)
            .filter(|i| i.business_number == req.business_number)
            .collect();
        if let Some(existing) = same_number.iter().find(|i| i.consumer == req.consumer) {
            return Err(ApiError::DuplicateCall {
                number: req.business_number.clone(),
                consumer: req.consumer.clone(),
                existing: existing.call_id.clone(),
            });
        }
        if same_number.len() >= self.limit as usize {
            return Err(ApiError::CallLimit {
                number: req.business_number.clone(),
                limit: self.limit,
            });
        }
        let created = CallCreated {
            call_id: req.call_id.clone(),
            whatsapp_sdp: format!("v=0\r\ns=answer-for-{}\r\n", req.call_id),
            internal_sdp: "v=0\r\ns=internal\r\n".into(),
            shard: 1,
        };
        let info = CallInfo {
            call_id: req.call_id.clone(),
            business_number: req.business_number.clone(),
            consumer: req.consumer.clone(),
            direction: req.direction,
            state: CallState::Connecting,
            gate_open: false,
            srtp_profile: None,
            whatsapp_remote: None,
            internal_remote: None,
            whatsapp: LegStats::default(),
            internal: LegStats::default(),
            end_cause: None,
            created_at: SystemTime::now(),
        };
        fake.live
            .insert(req.call_id.clone(), (created.clone(), info));
        fake.requests.push(req);
        drop(fake);
        self.publish(&created.call_id, CallEventKind::Created);
        Ok(created)
    }

    async fn set_remote_description(
        &self,
        call_id: String,
        leg: LegKind,
        _sdp: String,
    ) -> Result<CallInfo, ApiError> {
        self.update(&call_id, |info| match (leg, info.direction) {
            (LegKind::WhatsApp, CallDirection::UserInitiated) => Err(ApiError::FailedPrecondition(
                "a user-initiated call already has Meta's offer".into(),
            )),
            (LegKind::WhatsApp, CallDirection::BusinessInitiated) => {
                info.whatsapp_remote = Some("157.240.1.1:3478".parse().unwrap());
                info.srtp_profile = Some(SrtpProfile::AeadAes128Gcm);
                info.state = CallState::Ready;
                Ok(())
            }
            (LegKind::Internal, _) => {
                info.internal_remote = Some("10.0.0.5:4000".parse().unwrap());
                Ok(())
            }
        })
    }

    async fn open_gate(&self, call_id: String) -> Result<CallInfo, ApiError> {
        let info = self.update(&call_id, |info| {
            info.gate_open = true;
            info.state = CallState::Active;
            Ok(())
        })?;
        self.publish(&call_id, CallEventKind::GateOpened);
        Ok(info)
    }

    async fn replace_internal_leg(
        &self,
        call_id: String,
        internal: InternalLegSpec,
    ) -> Result<InternalLegReplaced, ApiError> {
        let previous = self.get_call(call_id.clone()).await?.internal_remote;
        let remote: SocketAddr = "10.0.0.9:4002".parse().unwrap();
        let call = self.update(&call_id, |info| {
            info.internal_remote = Some(remote);
            Ok(())
        })?;
        self.fake().replacements.push((call_id.clone(), internal));
        self.publish(
            &call_id,
            CallEventKind::InternalLegReplaced {
                previous,
                remote: Some(remote),
            },
        );
        Ok(InternalLegReplaced {
            internal_sdp: "v=0\r\ns=internal-after-transfer\r\n".into(),
            call,
        })
    }

    async fn terminate(
        &self,
        call_id: String,
        reason: String,
    ) -> Result<Option<CallInfo>, ApiError> {
        let mut fake = self.fake();
        fake.terminations.push((call_id.clone(), reason));
        let Some((_, mut info)) = fake.live.remove(&call_id) else {
            return Ok(None);
        };
        drop(fake);
        info.state = CallState::Ended;
        info.end_cause = Some(EndCause::Terminated);
        info.whatsapp.received.packets = 1500;
        self.publish(
            &call_id,
            CallEventKind::Ended {
                cause: EndCause::Terminated,
                meta_code: None,
                stats: Box::new(info.clone()),
            },
        );
        Ok(Some(info))
    }

    async fn get_call(&self, call_id: String) -> Result<CallInfo, ApiError> {
        self.update(&call_id, |_| Ok(()))
    }

    async fn list_calls(&self) -> Result<Vec<CallInfo>, ApiError> {
        let mut calls: Vec<CallInfo> = self.fake().live.values().map(|(_, i)| i.clone()).collect();
        calls.sort_by(|a, b| a.call_id.cmp(&b.call_id));
        Ok(calls)
    }

    async fn load(&self) -> Result<Load, ApiError> {
        let n = u32::try_from(self.fake().live.len()).unwrap();
        Ok(Load {
            active_calls: n,
            capacity: 5000,
            draining: false,
            io_driver: "io_uring".into(),
            cpu_limit_cores: Some(1.5),
            shards: vec![ShardLoad {
                shard: 0,
                calls: n,
                packets_per_second: 50 * u64::from(n),
                busy_ratio: 0.1,
            }],
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<CallEvent> {
        self.events.subscribe()
    }

    fn set_draining(&self, draining: bool) {
        self.draining
            .store(draining, std::sync::atomic::Ordering::Relaxed);
    }

    async fn end_all_drained(&self) -> Result<usize, ApiError> {
        let mut n = 0;
        for c in self.list_calls().await? {
            let reason = relay::control::DRAIN_REASON.to_string();
            n += usize::from(self.terminate(c.call_id, reason).await?.is_some());
        }
        Ok(n)
    }

    fn count_refused(&self, reason: RefusedReason) {
        self.refused.lock().unwrap().push(reason);
    }
}

// ----- harness -------------------------------------------------------------------------------

struct Running {
    addr: SocketAddr,
    engine: Arc<FakeEngine>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), ControlError>>,
}

impl Running {
    async fn start(engine: Arc<FakeEngine>, cfg: ControlConfig) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve_on(Arc::clone(&engine), cfg, listener, async {
            let _ = stopped.await;
        }));
        Running {
            addr,
            engine,
            stop: Some(stop),
            server,
        }
    }

    async fn default() -> Running {
        Running::start(FakeEngine::new(1000, 1024), ControlConfig::default()).await
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn client(&self) -> RelayClient {
        RelayClient::connect(self.url(), None).await.unwrap()
    }

    async fn stop(mut self) -> Result<(), ControlError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        guard(&mut self.server).await.unwrap()
    }
}

/// Only so that a broken server fails the test instead of hanging CI; not a timing assertion.
async fn guard<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("no answer within 20 s")
}

const META_OFFER: &str = "v=0\r\no=- 1 2 IN IP4 157.240.1.1\r\ns=-\r\nt=0 0\r\na=ice-lite\r\n\
    m=audio 3478 UDP/TLS/RTP/SAVPF 111 126\r\n";

fn uic(call_id: &str, number: &str, consumer: &str) -> pb::CreateCallRequest {
    pb::CreateCallRequest {
        call_id: call_id.into(),
        business_number: number.into(),
        consumer: consumer.into(),
        direction: pb::CallDirection::UserInitiated.into(),
        whatsapp_offer_sdp: META_OFFER.into(),
        whatsapp: None,
        internal: Some(pb::InternalLeg {
            transport: pb::InternalTransport::SdesSrtp.into(),
            srtp_profile: pb::SrtpProfile::AeadAes128Gcm.into(),
            remote_sdp: "v=0\r\nm=audio 4000 RTP/SAVP 111\r\n".into(),
            source_policy: pb::SourcePolicy::Latch.into(),
            websocket: None,
        }),
    }
}

fn bic(call_id: &str, number: &str, consumer: &str) -> pb::CreateCallRequest {
    pb::CreateCallRequest {
        direction: pb::CallDirection::BusinessInitiated.into(),
        whatsapp_offer_sdp: String::new(),
        internal: None,
        ..uic(call_id, number, consumer)
    }
}

async fn next_item(
    s: &mut tonic::Streaming<pb::WatchResponse>,
) -> Option<pb::watch_response::Item> {
    guard(s.message()).await.unwrap().and_then(|r| r.item)
}

async fn next_event(s: &mut tonic::Streaming<pb::WatchResponse>) -> pb::CallEvent {
    match next_item(s).await {
        Some(pb::watch_response::Item::Event(e)) => e,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// The call's event log once it holds at least `n` events. The log is fed from the engine's
/// event stream, so it catches up shortly after the RPC that caused the event.
async fn event_log(c: &mut RelayClient, call_id: &str, n: usize) -> Vec<&'static str> {
    guard(async {
        loop {
            if let Ok(r) = c.get_call(call_id).await
                && r.events.len() >= n
            {
                return r.events.iter().map(kind_name).collect();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

fn kind_name(e: &pb::CallEvent) -> &'static str {
    control::json::event_kind(e.kind.as_ref()).0
}

// ----- lifecycle -----------------------------------------------------------------------------

#[tokio::test]
async fn user_initiated_lifecycle_through_every_rpc() {
    let relay = Running::default().await;
    let mut c = relay.client().await;

    let created = c.create_call(uic("wacid.A", "1555", "4477")).await.unwrap();
    assert_eq!(created.call_id, "wacid.A");
    assert_eq!(created.whatsapp_sdp, "v=0\r\ns=answer-for-wacid.A\r\n");
    assert_eq!(created.internal_sdp, "v=0\r\ns=internal\r\n");
    assert_eq!(created.shard, 1);

    // The engine received the request as the client meant it.
    {
        let fake = relay.engine.fake();
        let req = &fake.requests[0];
        assert_eq!(req.direction, CallDirection::UserInitiated);
        assert_eq!(req.whatsapp_offer.as_deref(), Some(META_OFFER));
        assert_eq!(
            req.internal.kind,
            InternalKind::SdesSrtp(SrtpProfile::AeadAes128Gcm)
        );
        assert_eq!(req.internal.source, SourcePolicy::Latch);
        assert!(
            req.internal
                .remote_sdp
                .as_deref()
                .unwrap()
                .contains("RTP/SAVP")
        );
    }

    // A repeated connect webhook gets the same answer and creates nothing new.
    let again = c.create_call(uic("wacid.A", "1555", "4477")).await.unwrap();
    assert_eq!(again, created);
    assert_eq!(c.list_calls("", &[]).await.unwrap().len(), 1);

    let info = c
        .set_remote_description("wacid.A", pb::Leg::Internal, "v=0\r\n")
        .await
        .unwrap();
    assert_eq!(info.internal_remote, "10.0.0.5:4000");

    let info = c.open_gate("wacid.A").await.unwrap();
    assert!(info.gate_open);
    assert_eq!(info.state(), pb::CallState::Active);

    let got = c.get_call("wacid.A").await.unwrap();
    let call = got.call.unwrap();
    assert_eq!(call.business_number, "1555");
    assert_eq!(call.consumer, "4477");
    assert_eq!(call.direction(), pb::CallDirection::UserInitiated);
    assert!(call.created_at.is_some());
    assert_eq!(
        event_log(&mut c, "wacid.A", 2).await,
        ["created", "gate_opened"]
    );

    let last = c
        .terminate("wacid.A", "terminate webhook COMPLETED")
        .await
        .unwrap()
        .expect("final CallInfo");
    assert_eq!(last.state(), pb::CallState::Ended);
    assert_eq!(last.end_cause(), pb::EndCause::Terminated);
    assert_eq!(last.meta_code, None);
    assert_eq!(last.whatsapp.unwrap().received.unwrap().packets, 1500);
    assert_eq!(
        relay.engine.fake().terminations,
        [(
            "wacid.A".to_string(),
            "terminate webhook COMPLETED".to_string()
        )]
    );

    // Terminate again, and terminate a call that never existed: both succeed with nothing.
    assert_eq!(c.terminate("wacid.A", "again").await.unwrap(), None);
    assert_eq!(c.terminate("wacid.never", "early").await.unwrap(), None);
    assert!(c.list_calls("", &[]).await.unwrap().is_empty());

    // The engine forgot the ended call; its event log is still readable.
    assert_eq!(
        event_log(&mut c, "wacid.A", 3).await,
        ["created", "gate_opened", "ended"]
    );
    assert_eq!(c.get_call("wacid.A").await.unwrap().call, None);
    assert_eq!(
        c.get_call("wacid.never").await.unwrap_err().code(),
        Code::NotFound
    );

    relay.stop().await.unwrap();
}

#[tokio::test]
async fn business_initiated_call_takes_metas_answer() {
    let relay = Running::default().await;
    let mut c = relay.client().await;
    let created = c
        .create_call(pb::CreateCallRequest {
            whatsapp: Some(pb::WhatsappLegOptions {
                security: pb::WhatsappSecurity::SdesSrtp.into(),
                sdes_profile: pb::SrtpProfile::Unspecified.into(),
            }),
            ..bic("wacid.B", "1555", "4477")
        })
        .await
        .unwrap();
    assert!(!created.whatsapp_sdp.is_empty());
    assert_eq!(
        relay.engine.fake().requests[0].whatsapp_security,
        relay::api::WaSecurity::Sdes(SrtpProfile::Aes128CmHmacSha1_80)
    );
    let info = c
        .set_remote_description("wacid.B", pb::Leg::Whatsapp, "v=0\r\n")
        .await
        .unwrap();
    assert_eq!(info.state(), pb::CallState::Ready);
    assert_eq!(info.whatsapp_remote, "157.240.1.1:3478");
    assert_eq!(info.srtp_profile(), pb::SrtpProfile::AeadAes128Gcm);
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn list_filters_by_number_and_state() {
    let relay = Running::default().await;
    let mut c = relay.client().await;
    c.create_call(uic("a", "1555", "u1")).await.unwrap();
    c.create_call(uic("b", "1555", "u2")).await.unwrap();
    c.create_call(uic("c", "1666", "u1")).await.unwrap();
    c.open_gate("b").await.unwrap();

    let ids = |calls: Vec<pb::CallInfo>| calls.into_iter().map(|c| c.call_id).collect::<Vec<_>>();
    assert_eq!(ids(c.list_calls("", &[]).await.unwrap()), ["a", "b", "c"]);
    assert_eq!(ids(c.list_calls("1555", &[]).await.unwrap()), ["a", "b"]);
    assert_eq!(
        ids(c.list_calls("", &[pb::CallState::Active]).await.unwrap()),
        ["b"]
    );
    assert_eq!(
        ids(c
            .list_calls("1666", &[pb::CallState::Connecting, pb::CallState::Ready])
            .await
            .unwrap()),
        ["c"]
    );

    let load = c.load().await.unwrap();
    assert_eq!(load.active_calls, 3);
    assert_eq!(load.capacity, 5000);
    assert!(!load.draining);
    assert_eq!(load.shards[0].packets_per_second, 150);
    assert_eq!(load.cpu_limit_cores, Some(1.5));
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn replace_internal_leg_reaches_the_engine_and_is_watched_and_logged() {
    let relay = Running::default().await;
    let mut c = relay.client().await;
    c.create_call(uic("wacid.T", "1555", "4477")).await.unwrap();
    c.set_remote_description("wacid.T", pb::Leg::Internal, "v=0\r\n")
        .await
        .unwrap();
    let mut watch = c.watch(Some("wacid.T".into())).await.unwrap();

    let agent_b = "v=0\r\nc=IN IP4 10.0.0.9\r\nm=audio 4002 RTP/AVP 111\r\n";
    let r = c
        .replace_internal_leg(
            "wacid.T",
            pb::InternalLeg {
                transport: pb::InternalTransport::PlainRtp.into(),
                srtp_profile: pb::SrtpProfile::Unspecified.into(),
                remote_sdp: agent_b.into(),
                source_policy: pb::SourcePolicy::Strict.into(),
                websocket: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(r.internal_sdp, "v=0\r\ns=internal-after-transfer\r\n");
    assert_eq!(r.call.unwrap().internal_remote, "10.0.0.9:4002");
    assert_eq!(
        relay.engine.fake().replacements,
        [(
            "wacid.T".to_string(),
            InternalLegSpec {
                kind: InternalKind::PlainRtp,
                remote_sdp: Some(agent_b.into()),
                source: SourcePolicy::Strict,
            }
        )]
    );

    // Watchers see the transfer with both addresses; the call's event log keeps it.
    match next_event(&mut watch).await.kind {
        Some(pb::call_event::Kind::InternalLegReplaced(e)) => {
            assert_eq!(e.previous, "10.0.0.5:4000");
            assert_eq!(e.remote, "10.0.0.9:4002");
        }
        other => panic!("expected internal_leg_replaced, got {other:?}"),
    }
    assert_eq!(
        event_log(&mut c, "wacid.T", 2).await,
        ["created", "internal_leg_replaced"]
    );
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn replace_internal_leg_refuses_a_missing_peer_or_an_unknown_call() {
    let relay = Running::default().await;
    let mut c = relay.client().await;
    c.create_call(uic("wacid.T", "1555", "4477")).await.unwrap();
    let err = c
        .raw()
        .replace_internal_leg(pb::ReplaceInternalLegRequest {
            call_id: "wacid.T".into(),
            internal: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(meta_code(&err), Some(100));
    assert!(err.message().contains("internal"), "{}", err.message());

    let err = c
        .replace_internal_leg("wacid.nope", pb::InternalLeg::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .replace_internal_leg("", pb::InternalLeg::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(relay.engine.fake().replacements.is_empty());
    relay.stop().await.unwrap();
}

// ----- errors --------------------------------------------------------------------------------

#[tokio::test]
async fn policy_errors_carry_metas_codes_in_details_and_trailers() {
    let relay = Running::start(FakeEngine::new(2, 64), ControlConfig::default()).await;
    let mut c = relay.client().await;
    c.create_call(uic("c1", "1555", "u1")).await.unwrap();
    c.create_call(uic("c2", "1555", "u2")).await.unwrap();

    // Over the per-number limit: 138002. Read from both places, separately.
    let err = c.create_call(uic("c3", "1555", "u3")).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    let details = err.get_error_details();
    let info = details
        .error_info()
        .expect("google.rpc.ErrorInfo in the details");
    assert_eq!(info.reason, "CALL_LIMIT");
    assert_eq!(info.domain, "relay.whatsapp");
    assert_eq!(info.metadata["meta_code"], "138002");
    assert_eq!(info.metadata["limit"], "2");
    assert_eq!(err.metadata().get("meta-code").unwrap(), "138002");
    assert_eq!(meta_code(&err), Some(138002));

    // Other numbers are unaffected.
    c.create_call(uic("c4", "1666", "u3")).await.unwrap();

    // Same number and consumer: 138003, naming the existing call.
    let err = c.create_call(uic("c5", "1666", "u3")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(meta_code(&err), Some(138003));
    assert_eq!(error_reason(&err).as_deref(), Some("DUPLICATE_CALL"));
    assert_eq!(
        err.get_error_details().error_info().unwrap().metadata["existing_call_id"],
        "c4"
    );

    // Invalid SDP: 100 and the offending line in the message.
    let mut bad = uic("c6", "1777", "u1");
    bad.whatsapp_offer_sdp
        .push_str("m=video 9 UDP/TLS/RTP/SAVPF 96\r\n");
    let err = c.create_call(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(meta_code(&err), Some(100));
    assert!(err.message().contains("m=video 9"), "{}", err.message());

    // A missing field is refused before the engine sees it, with the same shape.
    let err = c.create_call(uic("", "1777", "u1")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(meta_code(&err), Some(100));
    assert!(err.message().contains("call_id"));

    // A freed slot is reusable.
    c.terminate("c1", "hang-up").await.unwrap();
    c.create_call(uic("c7", "1555", "u7")).await.unwrap();
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_at_the_limit_admit_exactly_the_limit() {
    // 1001 creates for one number at once, over 8 connections: exactly 1000 admitted, one
    // refused with 138002, nothing stuck; another number is unaffected.
    let relay = Running::start(FakeEngine::new(1000, 4096), ControlConfig::default()).await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(relay.client().await);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1001 {
        let mut c = clients[i % clients.len()].clone();
        tasks.spawn(async move {
            c.create_call(uic(&format!("c{i}"), "1555", &format!("u{i}")))
                .await
        });
    }
    let (mut ok, mut refused) = (0, Vec::new());
    while let Some(r) = guard(tasks.join_next()).await {
        match r.unwrap() {
            Ok(_) => ok += 1,
            Err(s) => refused.push((s.code(), meta_code(&s))),
        }
    }
    assert_eq!(ok, 1000);
    assert_eq!(refused, [(Code::ResourceExhausted, Some(138002))]);
    let mut c = relay.client().await;
    assert_eq!(c.list_calls("1555", &[]).await.unwrap().len(), 1000);
    c.create_call(uic("other", "1666", "u1")).await.unwrap();
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn state_errors_map_to_grpc_codes() {
    let relay = Running::default().await;
    let mut c = relay.client().await;

    let err = c.get_call("wacid.nope").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(meta_code(&err), None);
    assert!(err.metadata().get("meta-code").is_none());

    let err = c.open_gate("wacid.nope").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    c.create_call(uic("u", "1555", "4477")).await.unwrap();
    let err = c
        .set_remote_description("u", pb::Leg::Whatsapp, "v=0\r\n")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    let err = c
        .set_remote_description("u", pb::Leg::Unspecified, "v=0\r\n")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    relay.stop().await.unwrap();
}

// ----- watch ---------------------------------------------------------------------------------

#[tokio::test]
async fn watch_delivers_one_calls_events_in_order() {
    let relay = Running::default().await;
    let mut c = relay.client().await;
    let mut all = c.watch(None).await.unwrap();
    let mut one = c.watch(Some("w1".into())).await.unwrap();

    c.create_call(uic("w1", "1555", "u1")).await.unwrap();
    c.create_call(uic("w2", "1555", "u2")).await.unwrap();
    relay.engine.publish(
        "w1",
        CallEventKind::IceConnected {
            remote: "[2a03:2880::1]:3480".parse().unwrap(),
        },
    );
    relay.engine.publish(
        "w1",
        CallEventKind::DtlsConnected {
            profile: SrtpProfile::Aes128CmHmacSha1_80,
        },
    );
    relay.engine.publish("w1", CallEventKind::WhatsAppReady);
    c.open_gate("w1").await.unwrap();
    relay.engine.publish(
        "w1",
        CallEventKind::DtmfReceived {
            from: LegKind::WhatsApp,
            digit: '#',
        },
    );
    relay.engine.publish(
        "w1",
        CallEventKind::Ended {
            cause: EndCause::MediaReceiveTimeout,
            meta_code: EndCause::MediaReceiveTimeout.meta_code(),
            stats: Box::new(ended_info("w1")),
        },
    );

    let mut got = Vec::new();
    for _ in 0..7 {
        got.push(next_event(&mut one).await);
    }
    assert!(got.iter().all(|e| e.call_id == "w1" && e.at.is_some()));
    let names: Vec<&str> = got.iter().map(kind_name).collect();
    assert_eq!(
        names,
        [
            "created",
            "ice_connected",
            "dtls_connected",
            "whatsapp_ready",
            "gate_opened",
            "dtmf_received",
            "ended"
        ]
    );
    use pb::call_event::Kind;
    assert!(
        matches!(&got[1].kind, Some(Kind::IceConnected(k)) if k.remote == "[2a03:2880::1]:3480")
    );
    assert!(matches!(&got[2].kind, Some(Kind::DtlsConnected(k))
        if k.profile() == pb::SrtpProfile::AesCm128HmacSha180));
    assert!(matches!(&got[5].kind, Some(Kind::DtmfReceived(k))
        if k.digit == "#" && k.from() == pb::Leg::Whatsapp));
    assert!(matches!(&got[6].kind, Some(Kind::Ended(k))
        if k.cause() == pb::EndCause::MediaReceiveTimeout && k.meta_code == Some(138021)));

    // The unfiltered watcher saw both calls, w2's creation second.
    let first: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            v.push(next_event(&mut all).await.call_id);
        }
        v
    };
    assert_eq!(first, ["w1", "w2"]);
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn a_slow_watcher_is_told_it_lagged_and_never_blocks_the_engine() {
    // A tiny broadcast buffer, and a client that grants little HTTP/2 window: the watcher's
    // pipeline (client window + server buffers + forwarding queue) holds a few hundred kB of
    // events at most, far fewer than published, so the broadcast must lap it.
    let engine = FakeEngine::new(1000, 16);
    let relay = Running::start(Arc::clone(&engine), ControlConfig::default()).await;
    let channel = tonic::transport::Endpoint::from_shared(relay.url())
        .unwrap()
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .unwrap();
    let mut c = RelayClient::with_channel(channel, None).unwrap();
    let mut watch = c.watch(None).await.unwrap();

    // The "engine" publishes without waiting for anyone: this loop finishing at all, while the
    // watcher reads nothing, is the point. It yields between small batches so the server's
    // forwarding task runs and fills the watcher's pipeline the way a live relay would.
    let id = "x".repeat(200);
    const N: u32 = 20_000;
    for i in 0..N {
        engine.publish(
            &id,
            CallEventKind::IceConnected {
                remote: SocketAddr::from((
                    [10, 0, (i >> 8) as u8, i as u8],
                    1000 + (i % 50_000) as u16,
                )),
            },
        );
        if i % 8 == 7 {
            tokio::task::yield_now().await;
        }
    }
    engine.publish("last", CallEventKind::Created);

    // Now read: events arrive in publication order, with at least one lag marker, ending in
    // the final event.
    let mut lagged = 0u64;
    let mut delivered = 0u32;
    let mut previous: Option<u32> = None;
    loop {
        match next_item(&mut watch).await.expect("stream open") {
            pb::watch_response::Item::Lagged(l) => {
                assert!(l.skipped > 0);
                lagged += l.skipped;
            }
            pb::watch_response::Item::Event(e) if e.call_id == "last" => break,
            pb::watch_response::Item::Event(e) => {
                let Some(pb::call_event::Kind::IceConnected(k)) = e.kind else {
                    panic!("unexpected {e:?}");
                };
                let a: SocketAddr = k.remote.parse().unwrap();
                let std::net::IpAddr::V4(ip) = a.ip() else {
                    panic!()
                };
                let [_, _, hi, lo] = ip.octets();
                let seq = u32::from(hi) << 8 | u32::from(lo);
                if let Some(p) = previous {
                    assert!(seq > p, "event {seq} after {p}: out of order or repeated");
                }
                previous = Some(seq);
                delivered += 1;
            }
        }
    }
    assert!(lagged > 0, "the watcher should have been told it lagged");
    // Every event was either delivered or counted as skipped.
    assert_eq!(u64::from(delivered) + lagged, u64::from(N));
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_ends_open_watch_streams() {
    let relay = Running::default().await;
    let mut c = relay.client().await;
    let mut watch = c.watch(None).await.unwrap();
    relay
        .stop()
        .await
        .expect("serve returns despite an open Watch");
    // The stream ends cleanly or with a transport error; either way it does not hang.
    let _ = guard(watch.message()).await;
}

// ----- drain ---------------------------------------------------------------------------------

#[tokio::test]
async fn drain_refuses_new_calls_keeps_repeats_and_ends_the_rest_at_the_deadline() {
    let relay = Running::default().await;
    let mut c = relay.client().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(relay.channel().await);
    c.create_call(uic("d1", "1555", "u1")).await.unwrap();
    let mut watch = c.watch(Some("d1".into())).await.unwrap();

    // A long deadline first: new calls are refused, repeats still answered.
    let resp = c.drain(Some(Duration::from_secs(3600))).await.unwrap();
    assert_eq!(resp.active_calls, 1);
    assert!(resp.deadline.is_some());
    assert!(c.load().await.unwrap().draining);
    let err = c.create_call(uic("d2", "1555", "u2")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(error_reason(&err).as_deref(), Some("UNAVAILABLE"));
    assert!(c.create_call(uic("d1", "1555", "u1")).await.is_ok());

    // Readiness off for the relay service, the process itself still alive.
    let status = |s: &str| tonic_health::pb::HealthCheckRequest { service: s.into() };
    let r = health
        .check(status("relay.v1.Relay"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status(),
        tonic_health::pb::health_check_response::ServingStatus::NotServing
    );
    let r = health.check(status("")).await.unwrap().into_inner();
    assert_eq!(
        r.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    // Bringing the deadline forward to now ends the remaining call.
    c.drain(Some(Duration::ZERO)).await.unwrap();
    let ev = next_event(&mut watch).await;
    assert_eq!(kind_name(&ev), "ended");
    assert_eq!(
        relay.engine.fake().terminations,
        [("d1".to_string(), relay::control::DRAIN_REASON.to_string())]
    );
    relay.stop().await.unwrap();
}

// ----- health and reflection -----------------------------------------------------------------

#[tokio::test]
async fn health_reports_serving_without_a_token() {
    let relay = Running::start(
        FakeEngine::new(10, 16),
        ControlConfig {
            token: Some("s3cret".into()),
            ..ControlConfig::default()
        },
    )
    .await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(relay.channel().await);
    for service in ["relay.v1.Relay", ""] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service:?}"
        );
    }
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn reflection_lists_and_describes_the_relay_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let relay = Running::default().await;
    let mut refl = ServerReflectionClient::new(relay.channel().await);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("relay.v1.Relay".into()),
    ]
    .map(|m| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    });
    let mut responses = refl
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();

    let Some(MessageResponse::ListServicesResponse(list)) = guard(responses.message())
        .await
        .unwrap()
        .unwrap()
        .message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"relay.v1.Relay"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    let Some(MessageResponse::FileDescriptorResponse(files)) = guard(responses.message())
        .await
        .unwrap()
        .unwrap()
        .message_response
    else {
        panic!("expected file descriptors");
    };
    use prost::Message;
    let relay_file = files
        .file_descriptor_proto
        .iter()
        .map(|b| prost_types::FileDescriptorProto::decode(b.as_slice()).unwrap())
        .find(|f| f.package() == "relay.v1")
        .expect("relay.proto served");
    let methods: Vec<&str> = relay_file.service[0]
        .method
        .iter()
        .map(|m| m.name())
        .collect();
    assert!(
        methods.contains(&"CreateCall") && methods.contains(&"Watch"),
        "{methods:?}"
    );
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn reflection_answers_a_v1alpha_client_too() {
    // What grpcurl before 1.8.8 and Python's grpcio-reflection speak.
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

    let relay = Running::default().await;
    let mut refl = ServerReflectionClient::new(relay.channel().await);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("relay.v1.Relay".into()),
    ]
    .map(|m| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    });
    let mut responses = refl
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("v1alpha reflection is served")
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = guard(responses.message())
        .await
        .unwrap()
        .unwrap()
        .message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"relay.v1.Relay"), "{names:?}");
    let Some(MessageResponse::FileDescriptorResponse(files)) = guard(responses.message())
        .await
        .unwrap()
        .unwrap()
        .message_response
    else {
        panic!("expected file descriptors");
    };
    use prost::Message;
    assert!(
        files
            .file_descriptor_proto
            .iter()
            .map(|b| prost_types::FileDescriptorProto::decode(b.as_slice()).unwrap())
            .any(|f| f.package() == "relay.v1"),
        "relay.proto served over v1alpha"
    );
    relay.stop().await.unwrap();
}

// ----- authentication and exposure ---------------------------------------------------------

#[tokio::test]
async fn token_missing_or_wrong_is_unauthenticated_right_is_ok() {
    let relay = Running::start(
        FakeEngine::new(10, 16),
        ControlConfig {
            token: Some("s3cret".into()),
            ..ControlConfig::default()
        },
    )
    .await;
    let cases = [
        (None, Some(Code::Unauthenticated)),
        (Some("wrong"), Some(Code::Unauthenticated)),
        (Some("s3cret-and-more"), Some(Code::Unauthenticated)),
        (Some("s3cret"), None),
    ];
    for (token, want) in cases {
        let mut c = RelayClient::connect(relay.url(), token.map(String::from))
            .await
            .unwrap();
        let got = c.list_calls("", &[]).await.err().map(|s| s.code());
        assert_eq!(got, want, "token {token:?}");
        // Streaming RPCs are guarded the same way.
        let got = c.watch(None).await.err().map(|s| s.code());
        assert_eq!(got, want, "watch with token {token:?}");
    }
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn non_loopback_bind_without_authentication_is_refused() {
    let engine = FakeEngine::new(10, 16);
    let cfg = ControlConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        ..ControlConfig::default()
    };
    // Refused before any socket is opened.
    let err = serve(Arc::clone(&engine), cfg.clone(), async {})
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        ControlError::UnauthenticatedNonLoopback { .. }
    ));
    assert!(err.to_string().contains("--allow-unauthenticated"), "{err}");

    let addr = cfg.listen;
    let with_token = ControlConfig {
        token: Some("t".into()),
        ..cfg.clone()
    };
    assert!(with_token.validate(addr).is_ok());
    let with_mtls = ControlConfig {
        tls: Some(TlsFiles {
            cert: "c.pem".into(),
            key: "k.pem".into(),
            client_ca: Some("ca.pem".into()),
        }),
        ..cfg.clone()
    };
    assert!(with_mtls.validate(addr).is_ok());
    let tls_without_client_auth = ControlConfig {
        tls: Some(TlsFiles {
            cert: "c.pem".into(),
            key: "k.pem".into(),
            client_ca: None,
        }),
        ..cfg.clone()
    };
    assert!(tls_without_client_auth.validate(addr).is_err());
    let forced = ControlConfig {
        allow_unauthenticated_non_loopback: true,
        ..cfg.clone()
    };
    assert!(forced.validate(addr).is_ok());
    let empty_token = ControlConfig {
        token: Some(String::new()),
        ..ControlConfig::default()
    };
    assert!(matches!(
        empty_token.validate(empty_token.listen),
        Err(ControlError::EmptyToken)
    ));
    // Loopback needs nothing.
    assert!(
        ControlConfig::default()
            .validate("[::1]:7070".parse().unwrap())
            .is_ok()
    );
}

#[tokio::test]
async fn mtls_admits_a_client_certificate_from_the_ca_only() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};

    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: &[&str]| {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(&["localhost"]);
    let (client_cert, client_key) = leaf(&["signaling"]);
    // A client certificate from a different CA.
    let stranger_key = KeyPair::generate().unwrap();
    let stranger = CertificateParams::new(vec!["stranger".to_string()])
        .unwrap()
        .self_signed(&stranger_key)
        .unwrap();

    let dir = std::env::temp_dir().join(format!("relay-control-mtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, pem: &str| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    let cfg = ControlConfig {
        tls: Some(TlsFiles {
            cert: write("server.pem", &server_cert),
            key: write("server.key", &server_key),
            client_ca: Some(write("ca.pem", &ca_cert.pem())),
        }),
        ..ControlConfig::default()
    };
    let relay = Running::start(FakeEngine::new(10, 16), cfg).await;
    let tls = |identity: Option<Identity>| {
        let t = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_cert.pem()))
            .domain_name("localhost");
        match identity {
            Some(i) => t.identity(i),
            None => t,
        }
    };
    // `localhost` must reach the listener on 127.0.0.1: connect to the address, verify the name.
    let connect = |identity| {
        let ep = tonic::transport::Endpoint::from_shared(format!(
            "https://127.0.0.1:{}",
            relay.addr.port()
        ))
        .unwrap()
        .tls_config(tls(identity))
        .unwrap();
        async move { ep.connect().await }
    };

    let channel = connect(Some(Identity::from_pem(&client_cert, &client_key)))
        .await
        .unwrap();
    let mut good = RelayClient::with_channel(channel, None).unwrap();
    assert!(good.list_calls("", &[]).await.unwrap().is_empty());

    for identity in [
        None,
        Some(Identity::from_pem(
            stranger.pem(),
            stranger_key.serialize_pem(),
        )),
    ] {
        let refused = match connect(identity).await {
            Err(_) => true,
            Ok(ch) => RelayClient::with_channel(ch, None)
                .unwrap()
                .list_calls("", &[])
                .await
                .is_err(),
        };
        assert!(
            refused,
            "a client without a certificate from the CA must be refused"
        );
    }
    relay.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A call as it ended, for events published by fakes.
fn ended_info(call_id: &str) -> CallInfo {
    CallInfo {
        call_id: call_id.into(),
        business_number: "1555".into(),
        consumer: String::new(),
        direction: CallDirection::UserInitiated,
        state: CallState::Ended,
        gate_open: true,
        srtp_profile: None,
        whatsapp_remote: None,
        internal_remote: None,
        whatsapp: LegStats::default(),
        internal: LegStats::default(),
        end_cause: Some(EndCause::MediaReceiveTimeout),
        created_at: SystemTime::now(),
    }
}

// ----- malformed bodies ----------------------------------------------------------------------

/// A codec that sends pre-built bytes as the request body and ignores any response body.
#[derive(Clone, Copy, Default)]
struct RawBody;

impl tonic::codec::Codec for RawBody {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = RawBody;
    type Decoder = RawBody;

    fn encoder(&mut self) -> Self::Encoder {
        RawBody
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawBody
    }
}

impl tonic::codec::Encoder for RawBody {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBody {
    type Item = ();
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<()>, tonic::Status> {
        let n = prost::bytes::Buf::remaining(buf);
        prost::bytes::Buf::advance(buf, n);
        Ok(Some(()))
    }
}

async fn send_raw(relay: &Running, method: &str, body: Vec<u8>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(relay.channel().await);
    grpc.ready().await.unwrap();
    let path =
        tonic::codegen::http::uri::PathAndQuery::try_from(format!("/relay.v1.Relay/{method}"))
            .unwrap();
    grpc.unary(tonic::Request::new(body), path, RawBody)
        .await
        .expect_err("a body that does not decode is refused")
}

#[tokio::test]
async fn a_body_that_does_not_decode_is_invalid_argument_not_internal() {
    let relay = Running::default().await;
    // CreateCallRequest field 1 (call_id, a string) holding bytes that are not UTF-8.
    let not_utf8 = vec![0x0a, 0x02, 0xff, 0xfe];
    let s = send_raw(&relay, "CreateCall", not_utf8).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert_eq!(meta_code(&s), Some(100));
    assert_eq!(error_reason(&s).as_deref(), Some("INVALID_PARAMETER"));
    assert!(s.message().contains("does not decode"), "{}", s.message());
    // A length that runs past the end, on another RPC.
    let truncated = vec![0x0a, 0x10, b'w'];
    let s = send_raw(&relay, "Terminate", truncated).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(relay.engine.fake().requests.is_empty());
    assert!(relay.engine.fake().terminations.is_empty());
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn ids_with_invisible_or_reordering_characters_or_stray_spaces_are_invalid() {
    let relay = Running::default().await;
    let mut c = relay.client().await;
    let bad_ids = [
        "wacid.\u{202E}1gpj.exe",  // right-to-left override
        "\u{FEFF}wacid.1",         // byte-order mark
        "wacid.\u{200B}1",         // zero-width space
        "wacid.\u{2066}1\u{2069}", // isolate
        " ",                       // only a space
        "wacid.1 ",                // trailing space
        " wacid.1",                // leading space
        "wacid.1\u{00A0}",         // trailing no-break space
        "wacid.\u{7}1",            // control
    ];
    for id in bad_ids {
        let e = c.create_call(uic(id, "1555", "u1")).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{id:?}: {e:?}");
        assert_eq!(meta_code(&e), Some(100), "{id:?}");
        assert!(e.message().contains("call_id"), "{id:?}: {}", e.message());
        let e = c.terminate(id, "").await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{id:?}");
        let e = c.get_call(id).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{id:?}");
    }
    // The same rules for the other identifiers.
    let e = c
        .create_call(uic("wacid.ok", "1555\u{202E}", "u1"))
        .await
        .unwrap_err();
    assert!(e.message().contains("business_number"), "{}", e.message());
    let e = c
        .create_call(uic("wacid.ok", "1555", " u1"))
        .await
        .unwrap_err();
    assert!(e.message().contains("consumer"), "{}", e.message());
    assert!(relay.engine.fake().requests.is_empty());
    assert!(relay.engine.fake().terminations.is_empty());
    // Ordinary IDs, with a space inside or non-Latin letters, still work.
    c.create_call(uic("wacid.a b", "1555", "u1")).await.unwrap();
    c.create_call(uic("wacid.ĉĝ", "1555", "u2")).await.unwrap();
    relay.stop().await.unwrap();
}
