//! One shard: an OS thread that owns its calls, their sockets and their timers, and runs to
//! completion: poll → batched receive → call state machine → batched send → timers.
//!
//! Nothing here is shared with other threads except the command queue (lock-free crossbeam
//! channel, drained once per loop) and published atomics (load). A packet never leaves the
//! thread that received it.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::api::{
    ApiError, CallEvent, CallEventKind, CallInfo, EndCause, InternalLegReplaced, InternalLegSpec,
    LegKind,
};
use crate::call::stats::DropReason;
use crate::call::{Advertised, Call, LocalSockets};
use crate::engine::ShardStats;
use crate::engine::ratelimit::{RateLimitConfig, RateLimiter};
use crate::engine::snapshot::ShardTotals;
use crate::engine::udp::{BATCH, RecvBatch, SendBatch};
use crate::net::{Outbox, SocketRef};

pub(crate) const WAKER: Token = Token(usize::MAX);

/// Timer resolution: calls whose deadline falls within this of `now` run together, so a
/// thousand 20 ms timers do not mean a thousand wake-ups.
const TIMER_SLACK: Duration = Duration::from_millis(1);

/// Requests from the control plane. Replies go back on tokio oneshots (a plain send, no
/// runtime needed on this thread).
pub(crate) enum Command {
    Insert {
        call: Box<Call>,
        sockets: CallSockets,
        reply: tokio::sync::oneshot::Sender<()>,
    },
    OpenGate {
        call_id: String,
        reply: tokio::sync::oneshot::Sender<Result<CallInfo, ApiError>>,
    },
    SetRemote {
        call_id: String,
        leg: LegKind,
        sdp: String,
        reply: tokio::sync::oneshot::Sender<Result<CallInfo, ApiError>>,
    },
    /// Transfer: a new internal peer for the call (sockets stay, the SDP is rebuilt).
    ReplaceInternal {
        call_id: String,
        spec: InternalLegSpec,
        advertised: Advertised,
        reply: tokio::sync::oneshot::Sender<Result<InternalLegReplaced, ApiError>>,
    },
    Terminate {
        call_id: String,
        cause: EndCause,
        reply: tokio::sync::oneshot::Sender<Option<CallInfo>>,
    },
    Get {
        call_id: String,
        reply: tokio::sync::oneshot::Sender<Option<CallInfo>>,
    },
    List {
        reply: tokio::sync::oneshot::Sender<Vec<CallInfo>>,
    },
    /// End every call with `cause` (drain deadline); the shard keeps running.
    EndAll {
        cause: EndCause,
        reply: tokio::sync::oneshot::Sender<usize>,
    },
    /// A call's recording: start (files already created), stop, pause, resume, status.
    Record {
        call_id: String,
        req: crate::call::fork::RecordRequest,
        reply: tokio::sync::oneshot::Sender<Result<Option<crate::api::RecordingStatus>, ApiError>>,
    },
    /// End every call (`Drained`) and stop the thread.
    Stop,
}

/// The sockets bound for one call, by [`SocketRef`] index.
pub(crate) struct CallSockets {
    pub sockets: [Option<UdpSocket>; 3],
}

struct Slot {
    call: Box<Call>,
    sockets: [Option<mio::net::UdpSocket>; 3],
    fds: [RawFd; 3],
}

/// The engine's [`Outbox`] for one call: maps a [`SocketRef`] to that call's descriptor and
/// queues into the shard's send batch.
struct SlotOutbox<'a> {
    batch: &'a mut SendBatch,
    fds: [RawFd; 3],
}

impl Outbox for SlotOutbox<'_> {
    fn push(&mut self, via: SocketRef, to: SocketAddr, data: &[u8]) {
        let fd = self.fds[via.index()];
        if fd >= 0 {
            self.batch.push(fd, to, data);
        }
    }
}

pub(crate) struct Shard {
    id: usize,
    poll: Poll,
    commands: Receiver<Command>,
    events_out: Sender<CallEvent>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    by_id: HashMap<String, usize>,
    recv: RecvBatch,
    send: SendBatch,
    stats: Arc<ShardStats>,
    /// Earliest deadline of any call (may be early, never late).
    next_deadline: Option<Instant>,
    /// Counters of calls that ended, plus setup/end histograms; live calls are added at publish.
    totals: ShardTotals,
    published: Arc<std::sync::Mutex<ShardTotals>>,
    next_publish: Instant,
    /// Time spent working (not waiting in poll) since the last publish.
    busy: Duration,
    last_publish: Instant,
    /// Packets in + out at the last publish, for the packets/s figure.
    packets_at_publish: u64,
    /// Budget of datagrams from sources no call knows, and what it dropped per leg
    /// (WhatsApp, internal).
    limiter: RateLimiter,
    rate_limited: [u64; 2],
    quality: crate::ops::quality::QualitySampler,
}

/// How often a shard folds its counters into the published snapshot (metrics resolution).
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

impl Shard {
    pub(crate) fn new(
        id: usize,
        poll: Poll,
        commands: Receiver<Command>,
        events_out: Sender<CallEvent>,
        stats: Arc<ShardStats>,
        published: Arc<std::sync::Mutex<ShardTotals>>,
        rate_limit: RateLimitConfig,
    ) -> Self {
        Shard {
            limiter: RateLimiter::new(rate_limit, Instant::now()),
            rate_limited: [0; 2],
            quality: Default::default(),
            totals: ShardTotals::new(id as u32),
            published,
            next_publish: Instant::now(),
            busy: Duration::ZERO,
            last_publish: Instant::now(),
            packets_at_publish: 0,
            id,
            poll,
            commands,
            events_out,
            slots: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            recv: RecvBatch::new(),
            send: SendBatch::new(),
            stats,
            next_deadline: None,
        }
    }

    pub(crate) fn make_waker(poll: &Poll) -> io::Result<Waker> {
        Waker::new(poll.registry(), WAKER)
    }

    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            // Wake for the earliest call deadline, and at least for the once-a-second publish so
            // an idle shard's metrics stay fresh.
            let wake = self
                .next_deadline
                .map_or(self.next_publish, |d| d.min(self.next_publish));
            let timeout = Some(wake.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!(shard = self.id, error = %e, "poll failed; shard stops");
                return;
            }
            let now = Instant::now();
            self.stats.turns.fetch_add(1, Ordering::Relaxed);
            for ev in events.iter() {
                let token = ev.token();
                if token == WAKER {
                    continue;
                }
                self.drain_socket(token.0 / 4, token.0 % 4, now);
            }
            if !self.run_commands(now) {
                return;
            }
            if self.next_deadline.is_some_and(|d| d <= now + TIMER_SLACK) {
                self.run_timers(now);
            }
            self.send.flush();
            self.publish_stats();
            if now >= self.next_publish {
                self.publish_totals(now);
            }
            // One clock read per loop turn (per batch, not per packet).
            self.busy += now.elapsed();
        }
    }

    /// Once a second: ended totals + live calls' counters → the published snapshot.
    fn publish_totals(&mut self, now: Instant) {
        self.next_publish = now + PUBLISH_EVERY;
        self.totals.busy_seconds += self.busy.as_secs_f64();
        let live = self.slots.iter().flatten().map(|s| &*s.call);
        self.quality.sample(live, &mut self.totals.quality);
        let mut t = self.totals.clone();
        for slot in self.slots.iter().flatten() {
            t.whatsapp.add(&slot.call.leg_totals(LegKind::WhatsApp));
            t.internal.add(&slot.call.leg_totals(LegKind::Internal));
            t.srtp_auth_failures_whatsapp +=
                slot.call.dropped(LegKind::WhatsApp, DropReason::AuthFailed);
            t.srtp_auth_failures_internal +=
                slot.call.dropped(LegKind::Internal, DropReason::AuthFailed);
        }
        let limited = DropReason::RateLimited.index();
        t.whatsapp.drops[limited] += self.rate_limited[0];
        t.internal.drops[limited] += self.rate_limited[1];
        t.calls = self.by_id.len() as u64;
        t.packets_in = self.stats.packets_in.load(Ordering::Relaxed);
        t.packets_out = self.send.sent;
        t.send_errors = self.send.send_errors;
        let elapsed = now.saturating_duration_since(self.last_publish);
        if !elapsed.is_zero() {
            t.busy_ratio = (self.busy.as_secs_f64() / elapsed.as_secs_f64()).min(1.0);
            let packets = t.packets_in + t.packets_out;
            t.packets_per_second = ((packets.saturating_sub(self.packets_at_publish)) as f64
                / elapsed.as_secs_f64()) as u64;
            self.packets_at_publish = packets;
        }
        self.busy = Duration::ZERO;
        self.last_publish = now;
        *self.published.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }

    /// Receive everything queued on one socket and hand each datagram to its call.
    fn drain_socket(&mut self, slot_idx: usize, sock_idx: usize, now: Instant) {
        let Some(Some(slot)) = self.slots.get_mut(slot_idx) else {
            return;
        };
        let Some(via) = SocketRef::ALL.get(sock_idx).copied() else {
            return;
        };
        let fd = slot.fds[sock_idx];
        loop {
            let n = match self.recv.recv(fd) {
                Ok(n) => n,
                Err(_) => {
                    self.stats.recv_errors.fetch_add(1, Ordering::Relaxed);
                    0
                }
            };
            for i in 0..n {
                let (buf, len, from) = self.recv.get(i);
                let Some(from) = from else { continue };
                // Strangers pay per source before anything reads their bytes.
                if !slot.call.knows_source(via, from) && !self.limiter.allow(from.ip(), now) {
                    self.rate_limited[usize::from(!via.is_whatsapp())] += 1;
                    continue;
                }
                let mut out = SlotOutbox {
                    batch: &mut self.send,
                    fds: slot.fds,
                };
                slot.call
                    .handle_datagram(now, via, from, buf, len, &mut out);
            }
            self.stats.packets_in.fetch_add(n as u64, Ordering::Relaxed);
            // Edge-triggered readiness: a short batch means the socket was empty; any later
            // datagram raises a new event.
            if n < BATCH {
                break;
            }
        }
        if let Some(d) = slot.call.poll_timeout() {
            self.next_deadline = Some(self.next_deadline.map_or(d, |n| n.min(d)));
        }
        self.after_call_activity(slot_idx);
    }

    /// Forward a call's events and remove it if it ended.
    fn after_call_activity(&mut self, slot_idx: usize) {
        let Some(Some(slot)) = self.slots.get_mut(slot_idx) else {
            return;
        };
        while let Some(kind) = slot.call.poll_event() {
            let (ice, dtls) = slot.call.setup_times();
            match &kind {
                CallEventKind::Created => self.totals.calls_created += 1,
                CallEventKind::IceConnected { .. } => {
                    if let Some(d) = ice {
                        self.totals.ice_setup.observe_duration(d);
                    }
                }
                CallEventKind::DtlsConnected { .. } => {
                    if let Some(d) = dtls {
                        self.totals.dtls_setup.observe_duration(d);
                    }
                }
                CallEventKind::Ended { cause, .. } => self.totals.count_ended(*cause),
                _ => {}
            }
            let _ = self.events_out.send(CallEvent {
                call_id: slot.call.call_id.clone(),
                at: SystemTime::now(),
                kind,
            });
        }
        if slot.call.is_ended() {
            self.remove(slot_idx);
        }
    }

    fn remove(&mut self, slot_idx: usize) -> Option<CallInfo> {
        let slot = self.slots.get_mut(slot_idx)?.take()?;
        let Slot {
            call, mut sockets, ..
        } = slot;
        for s in sockets.iter_mut().flatten() {
            let _ = self.poll.registry().deregister(s);
        }
        self.by_id.remove(&call.call_id);
        self.free.push(slot_idx);
        // Fold the call's counters into the shard's totals.
        let t = &mut self.totals;
        t.whatsapp.add(&call.leg_totals(LegKind::WhatsApp));
        t.internal.add(&call.leg_totals(LegKind::Internal));
        t.srtp_auth_failures_whatsapp += call.dropped(LegKind::WhatsApp, DropReason::AuthFailed);
        t.srtp_auth_failures_internal += call.dropped(LegKind::Internal, DropReason::AuthFailed);
        let info = call.info();
        let rx = &info.whatsapp.received;
        if rx.packets > 0 {
            t.call_loss
                .observe(rx.lost as f64 / (rx.packets + rx.lost) as f64);
            t.call_jitter.observe(rx.jitter_ms / 1000.0);
        }
        self.stats.calls.fetch_sub(1, Ordering::Relaxed);
        Some(info)
    }

    fn run_timers(&mut self, now: Instant) {
        let mut next: Option<Instant> = None;
        for idx in 0..self.slots.len() {
            let Some(Some(slot)) = self.slots.get_mut(idx) else {
                continue;
            };
            if slot
                .call
                .poll_timeout()
                .is_some_and(|d| d <= now + TIMER_SLACK)
            {
                let mut out = SlotOutbox {
                    batch: &mut self.send,
                    fds: slot.fds,
                };
                slot.call.handle_timeout(now, &mut out);
            }
            if let Some(d) = slot.call.poll_timeout() {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
            self.after_call_activity(idx);
        }
        self.next_deadline = next;
    }

    /// Returns false when the shard must stop.
    fn run_commands(&mut self, now: Instant) -> bool {
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::Insert {
                    call,
                    sockets,
                    reply,
                } => {
                    self.insert(call, sockets);
                    let _ = reply.send(());
                }
                Command::OpenGate { call_id, reply } => {
                    let r = self.with_call(&call_id, |call, out| {
                        call.open_gate(now, out);
                        Ok(call.info())
                    });
                    let _ = reply.send(r);
                }
                Command::SetRemote {
                    call_id,
                    leg,
                    sdp,
                    reply,
                } => {
                    let r = self.with_call(&call_id, |call, out| {
                        call.set_remote_description(leg, &sdp, now, out)?;
                        Ok(call.info())
                    });
                    let _ = reply.send(r);
                }
                Command::ReplaceInternal {
                    call_id,
                    spec,
                    advertised,
                    reply,
                } => {
                    let r = self.local_sockets(&call_id).and_then(|sockets| {
                        self.with_call(&call_id, |call, out| {
                            let internal_sdp =
                                call.replace_internal_leg(&spec, sockets, advertised, now, out)?;
                            Ok(InternalLegReplaced {
                                internal_sdp,
                                call: call.info(),
                            })
                        })
                    });
                    let _ = reply.send(r);
                }
                Command::Terminate {
                    call_id,
                    cause,
                    reply,
                } => {
                    let info = self.by_id.get(&call_id).copied().and_then(|idx| {
                        if let Some(Some(slot)) = self.slots.get_mut(idx) {
                            let mut out = SlotOutbox {
                                batch: &mut self.send,
                                fds: slot.fds,
                            };
                            slot.call.terminate(now, cause, &mut out);
                        }
                        // Flush the BYEs before the sockets close.
                        self.send.flush();
                        let info = self.slots.get(idx)?.as_ref().map(|s| s.call.info());
                        self.after_call_activity(idx);
                        info
                    });
                    let _ = reply.send(info);
                }
                Command::Get { call_id, reply } => {
                    let info = self
                        .by_id
                        .get(&call_id)
                        .and_then(|&i| self.slots.get(i)?.as_ref())
                        .map(|s| s.call.info());
                    let _ = reply.send(info);
                }
                Command::List { reply } => {
                    let all = self.slots.iter().flatten().map(|s| s.call.info()).collect();
                    let _ = reply.send(all);
                }
                Command::EndAll { cause, reply } => {
                    let _ = reply.send(self.end_all(now, cause));
                }
                Command::Record {
                    call_id,
                    req,
                    reply,
                } => {
                    let _ = reply.send(self.with_call(&call_id, |c, _| c.record(req, now)));
                }
                Command::Stop => {
                    self.end_all(now, EndCause::Drained);
                    return false;
                }
            }
        }
        true
    }

    /// End every call with `cause`, sending their BYEs. Returns how many ended.
    fn end_all(&mut self, now: Instant, cause: EndCause) -> usize {
        let live: Vec<usize> = self.by_id.values().copied().collect();
        for &idx in &live {
            if let Some(Some(slot)) = self.slots.get_mut(idx) {
                let mut out = SlotOutbox {
                    batch: &mut self.send,
                    fds: slot.fds,
                };
                slot.call.terminate(now, cause, &mut out);
            }
            self.send.flush();
            self.after_call_activity(idx);
        }
        live.len()
    }

    /// The addresses a call's sockets are bound to (a replaced internal leg keeps its port).
    fn local_sockets(&self, call_id: &str) -> Result<LocalSockets, ApiError> {
        let slot = self
            .by_id
            .get(call_id)
            .and_then(|&i| self.slots.get(i)?.as_ref())
            .ok_or_else(|| ApiError::NotFound(call_id.to_string()))?;
        let addr = |r: SocketRef| {
            slot.sockets
                .get(r.index())?
                .as_ref()
                .and_then(|s| s.local_addr().ok())
        };
        Ok(LocalSockets {
            wa_v4: addr(SocketRef::WaV4),
            wa_v6: addr(SocketRef::WaV6),
            internal: addr(SocketRef::Internal).ok_or_else(|| {
                ApiError::Internal(format!("call {call_id} has no internal socket address"))
            })?,
        })
    }

    fn with_call<T>(
        &mut self,
        call_id: &str,
        f: impl FnOnce(&mut Call, &mut SlotOutbox<'_>) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let idx = *self
            .by_id
            .get(call_id)
            .ok_or_else(|| ApiError::NotFound(call_id.to_string()))?;
        let Some(Some(slot)) = self.slots.get_mut(idx) else {
            return Err(ApiError::NotFound(call_id.to_string()));
        };
        let mut out = SlotOutbox {
            batch: &mut self.send,
            fds: slot.fds,
        };
        let r = f(&mut slot.call, &mut out);
        // Commands may make a call due now (gate opened: maiden packet, fill timer).
        if let Some(d) = slot.call.poll_timeout() {
            self.next_deadline = Some(self.next_deadline.map_or(d, |n| n.min(d)));
        }
        self.after_call_activity(idx);
        r
    }

    fn insert(&mut self, call: Box<Call>, sockets: CallSockets) {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let mut fds = [-1; 3];
        let mut mio_sockets: [Option<mio::net::UdpSocket>; 3] = [None, None, None];
        for (i, s) in sockets.sockets.into_iter().enumerate() {
            let Some(s) = s else { continue };
            fds[i] = s.as_raw_fd();
            let mut ms = mio::net::UdpSocket::from_std(s);
            if let Err(e) =
                self.poll
                    .registry()
                    .register(&mut ms, Token(idx * 4 + i), Interest::READABLE)
            {
                tracing::error!(shard = self.id, error = %e, "socket registration failed");
            }
            mio_sockets[i] = Some(ms);
        }
        let deadline = call.poll_timeout();
        self.by_id.insert(call.call_id.clone(), idx);
        self.slots[idx] = Some(Slot {
            call,
            sockets: mio_sockets,
            fds,
        });
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(d) = deadline {
            self.next_deadline = Some(self.next_deadline.map_or(d, |n| n.min(d)));
        }
        self.after_call_activity(idx);
    }

    fn publish_stats(&self) {
        self.stats.rate_limited.store(
            self.rate_limited[0] + self.rate_limited[1],
            Ordering::Relaxed,
        );
        self.stats
            .packets_out
            .store(self.send.sent, Ordering::Relaxed);
        self.stats
            .send_errors
            .store(self.send.send_errors, Ordering::Relaxed);
    }
}
