//! Harness for loopback integration tests: the real engine in process, driven through the
//! same `CallControl` API the gRPC server uses, with the Meta emulator and a SIP media peer on
//! real UDP sockets.
#![allow(dead_code)]

use std::time::Duration;

use e2e::meta::{MetaConfig, MetaHandle, MetaPeer};
use e2e::rtp::{read_stamp, stamped_payload};
use e2e::sip::{SipConfig, SipHandle, SipPeer};
use relay::api::{
    ApiError, CallControl, CallCreated, CallDirection, CallEvent, CallEventKind, CallInfo,
    CreateCall, InternalKind, InternalLegSpec, LegKind, SourcePolicy, WaSecurity,
};
use relay::call::CallConfig;
use relay::engine::{Engine, EngineConfig, EngineHandle};

pub struct Relay {
    pub rt: tokio::runtime::Runtime,
    pub engine: EngineHandle,
    events: tokio::sync::broadcast::Receiver<CallEvent>,
}

impl Relay {
    pub fn start() -> Relay {
        Self::with_config(CallConfig::default())
    }

    pub fn with_config(call: CallConfig) -> Relay {
        let engine = Engine::start(EngineConfig {
            shards: 2,
            call,
            ..EngineConfig::default()
        })
        .expect("engine starts");
        let events = engine.subscribe();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Relay { rt, engine, events }
    }

    pub fn create(&self, req: CreateCall) -> Result<CallCreated, ApiError> {
        self.rt.block_on(self.engine.create_call(req))
    }

    pub fn open_gate(&self, id: &str) -> CallInfo {
        self.rt
            .block_on(self.engine.open_gate(id.to_string()))
            .expect("open gate")
    }

    pub fn set_remote(&self, id: &str, leg: LegKind, sdp: &str) -> Result<CallInfo, ApiError> {
        self.rt.block_on(
            self.engine
                .set_remote_description(id.to_string(), leg, sdp.to_string()),
        )
    }

    pub fn get(&self, id: &str) -> Result<CallInfo, ApiError> {
        self.rt.block_on(self.engine.get_call(id.to_string()))
    }

    pub fn terminate(&self, id: &str) -> Option<CallInfo> {
        self.rt
            .block_on(self.engine.terminate(id.to_string(), "test".into()))
            .expect("terminate")
    }

    /// Wait (bounded) for an event of `call_id` matching `pred`; returns it.
    pub fn wait_event(
        &mut self,
        call_id: &str,
        timeout: Duration,
        pred: impl Fn(&CallEventKind) -> bool,
    ) -> Option<CallEventKind> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            let ev = self
                .rt
                .block_on(async { tokio::time::timeout(left, self.events.recv()).await });
            match ev {
                Ok(Ok(ev)) if ev.call_id == call_id && pred(&ev.kind) => return Some(ev.kind),
                Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                _ => return None,
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.engine.shutdown();
    }
}

pub fn user_initiated(call_id: &str, meta: &MetaHandle, sip_sdp: Option<String>) -> CreateCall {
    CreateCall {
        call_id: call_id.to_string(),
        business_number: "15550001111".into(),
        consumer: format!("consumer-{call_id}"),
        direction: CallDirection::UserInitiated,
        whatsapp_offer: Some(meta.offer_sdp()),
        whatsapp_security: WaSecurity::DtlsSrtp,
        internal: InternalLegSpec {
            kind: InternalKind::PlainRtp,
            remote_sdp: sip_sdp,
            source: SourcePolicy::Strict,
        },
    }
}

pub fn business_initiated(call_id: &str, security: WaSecurity, sip_sdp: String) -> CreateCall {
    CreateCall {
        call_id: call_id.to_string(),
        business_number: "15550001111".into(),
        consumer: format!("consumer-{call_id}"),
        direction: CallDirection::BusinessInitiated,
        whatsapp_offer: None,
        whatsapp_security: security,
        internal: InternalLegSpec {
            kind: InternalKind::PlainRtp,
            remote_sdp: Some(sip_sdp),
            source: SourcePolicy::Strict,
        },
    }
}

/// Create `req`, give each peer the relay's SDP, and wait until the WhatsApp leg can carry
/// media (`WhatsAppReady`; the gate is still closed). Returns what CreateCall answered.
pub fn establish(
    relay: &mut Relay,
    req: CreateCall,
    meta: &MetaHandle,
    sip: &SipHandle,
) -> CallCreated {
    let id = req.call_id.clone();
    let created = relay.create(req).expect("create");
    meta.set_remote_sdp(&created.whatsapp_sdp)
        .expect("Meta takes the relay's answer");
    sip.set_remote_sdp(&created.internal_sdp)
        .expect("the media server takes the relay's SDP");
    assert!(
        relay
            .wait_event(&id, WAIT, |k| matches!(k, CallEventKind::WhatsAppReady))
            .is_some(),
        "{id}: WhatsApp leg ready"
    );
    created
}

/// A user-initiated DTLS call to a plain-RTP media server, set up to `WhatsAppReady` with the
/// gate still closed.
pub fn ready_call(
    relay: &mut Relay,
    id: &str,
    meta_cfg: MetaConfig,
) -> (MetaHandle, SipHandle, CallCreated) {
    let meta = meta(meta_cfg);
    let sip = sip(SipConfig::default());
    let created = establish(
        relay,
        user_initiated(id, &meta, Some(sip.sdp())),
        &meta,
        &sip,
    );
    (meta, sip, created)
}

pub fn meta(cfg: MetaConfig) -> MetaHandle {
    MetaPeer::spawn(cfg).expect("meta emulator starts")
}

pub fn sip(cfg: SipConfig) -> SipHandle {
    SipPeer::spawn(cfg).expect("sip peer starts")
}

/// The payload is exactly what the emulator generated for its counter: bytes untouched.
pub fn payload_intact(p: &[u8]) -> bool {
    let Some((counter, _)) = read_stamp(p) else {
        return false;
    };
    p.get(12..) == stamped_payload(counter, p.len()).get(12..)
}

pub const WAIT: Duration = Duration::from_secs(10);

pub fn wait(cond: impl FnMut() -> bool) -> bool {
    e2e::meta::wait_until(WAIT, cond)
}
