//! One call's signaling steps (the module doc's 1-4): set it up through the backend and hand its
//! peers to the generator ([`setup`]), audio off ([`stop_audio`]), and end it ([`end`]).

use std::sync::atomic::Ordering;
use std::time::Instant;

use control::pb;
use tokio::sync::oneshot;

use super::{Backend, CALLS_PER_NUMBER, Ctx, Failure, LiveCall, fail, lock};
use crate::generator::{Command, NewCall};
use crate::peer::sip::SipPeer;
use crate::peer::wa::WaPeer;

pub(super) async fn setup(ctx: &Ctx, id: u64) -> Result<LiveCall, Failure> {
    let socks = ctx
        .generator
        .sockets_for(id)
        .map_err(|e| fail("create")(e.to_string()))?;
    let mut meta = WaPeer::new(socks.meta_addr, ctx.meta.clone())
        .map_err(|e| fail("create")(e.to_string()))?;
    let mut sip = SipPeer::new(socks.sip_addr);
    let call_id = format!("wacid.lt{}-{id}", ctx.nonce);
    let created_at = Instant::now();
    let (meta_remotes, sip_remote) = match &ctx.backend {
        Backend::Relay { client, .. } => {
            let req = pb::CreateCallRequest {
                call_id: call_id.clone(),
                business_number: format!("1555{:07}", id / CALLS_PER_NUMBER),
                consumer: format!("lt{}-{id}", ctx.nonce),
                direction: pb::CallDirection::UserInitiated.into(),
                whatsapp_offer_sdp: meta.offer_sdp(),
                whatsapp: None,
                internal: Some(pb::InternalLeg {
                    transport: pb::InternalTransport::PlainRtp.into(),
                    remote_sdp: sip.sdp(),
                    ..Default::default()
                }),
            };
            let resp = client
                .clone()
                .create_call(req)
                .await
                .map_err(|s| fail("create")(format!("{}: {}", s.code(), s.message())))?;
            lock(&ctx.stages)
                .create
                .record(created_at.elapsed().as_micros() as u64);
            let remotes = match meta.set_answer(&resp.whatsapp_sdp, Instant::now()) {
                Ok(r) => r,
                Err(e) => {
                    terminate(ctx, &call_id).await;
                    return Err(fail("create")(e.to_string()));
                }
            };
            let sip_remote = match sip.set_remote_sdp(&resp.internal_sdp, Instant::now()) {
                Ok(r) => r,
                Err(e) => {
                    terminate(ctx, &call_id).await;
                    return Err(fail("create")(e.to_string()));
                }
            };
            (remotes, sip_remote)
        }
        Backend::RtpEngine { ng, .. } => {
            // offer (WhatsApp side's SDP) → SDP for the SIP side; answer (SIP side's SDP) →
            // SDP for the WhatsApp side. Both round trips count as the "create" stage.
            let to_plain = ctx.meta.sdes.is_some() && !ctx.meta.plain;
            let sip_sdp = ng
                .offer(&call_id, &meta.offer_sdp(), to_plain)
                .await
                .map_err(|e| fail("create")(e.to_string()))?;
            let sip_remote = match sip.set_remote_sdp(&sip_sdp, Instant::now()) {
                Ok(r) => r,
                Err(e) => {
                    let _ = ng.delete(&call_id).await;
                    return Err(fail("create")(e.to_string()));
                }
            };
            let wa_sdp = match ng.answer(&call_id, &sip.sdp()).await {
                Ok(sdp) => sdp,
                Err(e) => {
                    let _ = ng.delete(&call_id).await;
                    return Err(fail("create")(e.to_string()));
                }
            };
            lock(&ctx.stages)
                .create
                .record(created_at.elapsed().as_micros() as u64);
            match meta.set_answer(&wa_sdp, Instant::now()) {
                Ok(remotes) => (remotes, sip_remote),
                Err(e) => {
                    let _ = ng.delete(&call_id).await;
                    return Err(fail("create")(e.to_string()));
                }
            }
        }
        Backend::Raw(fwd) => {
            let (wa, internal) = fwd
                .add(id, socks.meta_addr, socks.sip_addr)
                .map_err(|e| fail("create")(e.to_string()))?;
            meta.set_plain_target(wa);
            sip.set_remote(internal, Instant::now());
            (vec![wa], internal)
        }
    };
    let (ready_tx, ready_rx) = oneshot::channel();
    ctx.generator.send(
        id,
        Command::Add(Box::new(NewCall {
            id,
            meta,
            meta_socket: socks.meta,
            meta_remotes,
            sip,
            sip_socket: socks.sip,
            sip_remote,
            created_at,
            ready: ready_tx,
        })),
    );
    let live = LiveCall { id, call_id };
    let handed_over = Instant::now();
    let ready = tokio::time::timeout(ctx.opts.ready_timeout, ready_rx).await;
    let why = match ready {
        Ok(Ok(Ok(_))) => None,
        Ok(Ok(Err(why))) => Some(why),
        Ok(Err(_)) => Some("generator thread gone".to_string()),
        Err(_) => Some(format!("not ready within {:?}", ctx.opts.ready_timeout)),
    };
    if let Some(why) = why {
        let _ = end(ctx, &live).await;
        return Err(fail("ready")(why));
    }
    let connected = Instant::now();
    lock(&ctx.stages)
        .connect
        .record(connected.duration_since(handed_over).as_micros() as u64);
    if let Backend::Relay { client, .. } = &ctx.backend {
        if let Err(s) = client.clone().open_gate(live.call_id.clone()).await {
            let _ = end(ctx, &live).await;
            return Err(fail("open_gate")(format!("{}: {}", s.code(), s.message())));
        }
        lock(&ctx.stages)
            .open_gate
            .record(connected.elapsed().as_micros() as u64);
        if ctx.opts.record
            && let Err(s) = client
                .clone()
                .recording(live.call_id.clone(), control::client::RecordingOp::Start)
                .await
        {
            let _ = end(ctx, &live).await;
            return Err(fail("start_recording")(format!(
                "{}: {}",
                s.code(),
                s.message()
            )));
        }
    }
    lock(&ctx.up).insert(live.call_id.clone(), id);
    ctx.generator.send(id, Command::Media { id, on: true });
    ctx.active.fetch_add(1, Ordering::Relaxed);
    Ok(live)
}

pub(super) fn stop_audio(ctx: &Ctx, c: &LiveCall) {
    ctx.generator.send(
        c.id,
        Command::Media {
            id: c.id,
            on: false,
        },
    );
    ctx.active.fetch_sub(1, Ordering::Relaxed);
}

pub(super) async fn terminate(
    ctx: &Ctx,
    call_id: &str,
) -> Option<Result<Option<pb::CallInfo>, String>> {
    match &ctx.backend {
        Backend::Relay { client, .. } => Some(
            client
                .clone()
                .terminate(call_id.to_string(), "loadtest: call over")
                .await
                .map_err(|s| format!("{}: {}", s.code(), s.message())),
        ),
        Backend::RtpEngine { ng, .. } => Some(
            ng.delete(call_id)
                .await
                .map(|_| None)
                .map_err(|e| e.to_string()),
        ),
        Backend::Raw(_) => None,
    }
}

/// Terminate at the relay (or release the forwarder's ports) and drop the peers.
pub(super) async fn end(ctx: &Ctx, c: &LiveCall) -> Result<Option<pb::CallInfo>, Failure> {
    let result = match terminate(ctx, &c.call_id).await {
        Some(r) => r,
        None => {
            if let Backend::Raw(f) = &ctx.backend {
                f.remove(c.id);
            }
            Ok(None)
        }
    };
    ctx.generator.send(c.id, Command::Remove(c.id));
    result.map_err(fail("terminate"))
}
