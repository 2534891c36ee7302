//! The scenario harness: one [`Call`] between a Meta peer and a plain-RTP media server, in
//! simulated time over a lossless zero-latency network (no sockets, no sleeping).
//!
//! [`Sim::run_until`] repeatedly delivers every queued datagram, then advances the clock to the
//! earliest of: the call's deadline, the Meta peer's deadline, the next packet of either media
//! source. Everything the call sends is recorded with the time it left, decrypted where it is
//! SRTP, so tests assert on what Meta and the media server actually received.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::{CallEventKind, EndCause};
use crate::call::testing::{self, MEDIA_SERVER, META, MetaPeer, Received, RtpSource};
use crate::call::{Call, CallConfig};
use crate::dtls::DtlsIdentity;
use crate::net::{Sent, SocketRef, VecOutbox};
use crate::srtp::SrtpProfile;
use crate::wire::classify::{PacketKind, classify};
use crate::wire::rtp;
pub use crate::wire::rtp::{Clock, Pt, RtpTs, Seq, Ssrc};

pub const PTIME: Duration = Duration::from_millis(20);
/// 12-byte header + 160-byte payload, as in the benchmarks.
pub const PAYLOAD_LEN: usize = 160;

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// How the WhatsApp leg is secured.
#[derive(Copy, Clone, Debug)]
pub enum Leg {
    /// ICE-lite + DTLS server on Meta's side (the relay is ICE controlling, DTLS client).
    Dtls,
    Sdes(SrtpProfile),
}

/// A media source sending one packet every 20 ms while started.
pub struct Talker {
    pub src: RtpSource,
    next: Option<Instant>,
    until: Option<Instant>,
    /// `(when, index)` of every packet handed to the network.
    pub sent: Vec<(Instant, u32)>,
}

impl Talker {
    fn new(ssrc: u32, pt: u8) -> Talker {
        Talker {
            src: RtpSource::new(ssrc, pt, 4000, 160_000),
            next: None,
            until: None,
            sent: Vec::new(),
        }
    }

    /// Send the first packet at `at`, then every 20 ms.
    pub fn start(&mut self, at: Instant) {
        self.next = Some(at);
        self.until = None;
    }

    /// No packet at or after `at`.
    pub fn stop_at(&mut self, at: Instant) {
        self.until = Some(at);
    }

    fn due(&self) -> Option<Instant> {
        self.next.filter(|n| self.until.is_none_or(|u| *n < u))
    }

    pub fn last_sent(&self) -> Option<Instant> {
        self.sent.last().map(|(t, _)| *t)
    }
}

/// An RTP packet as its receiver saw it.
#[derive(Clone, Debug)]
pub struct Rtp {
    pub at: Instant,
    pub seq: u16,
    pub ts: u32,
    pub marker: bool,
    pub pt: u8,
    pub ssrc: u32,
    pub payload: Vec<u8>,
}

impl Rtp {
    fn parse(at: Instant, pkt: &[u8]) -> Option<Rtp> {
        let h = rtp::parse(pkt).ok()?;
        Some(Rtp {
            at,
            seq: h.seq.get(),
            ts: h.ts.get(),
            marker: h.marker,
            pt: h.pt.get(),
            ssrc: h.ssrc.get(),
            payload: pkt.get(h.payload_range())?.to_vec(),
        })
    }

    /// The source packet index, for forwarded media (`None` for generated silence).
    pub fn index(&self) -> Option<u32> {
        if self.is_silence() {
            None
        } else {
            testing::payload_index(&self.payload)
        }
    }

    pub fn is_silence(&self) -> bool {
        self.payload == crate::call::media::OPUS_SILENCE
    }
}

/// What one datagram toward WhatsApp was.
#[derive(Clone, Debug)]
pub enum ToWa {
    Stun,
    Dtls,
    Rtp(Rtp),
    /// The plaintext compound RTCP packet (see [`rtcp_types`]).
    Rtcp(Vec<u8>),
    /// Did not unprotect or classify: `Received` as text.
    Bad(String),
}

#[derive(Clone, Debug)]
pub struct WaDatagram {
    pub at: Instant,
    pub what: ToWa,
}

pub struct Sim {
    pub t0: Instant,
    pub now: Instant,
    /// The relay's SDP for the media server.
    pub internal_answer: String,
    pub call: Call,
    pub meta: MetaPeer,
    pub events: Vec<(Instant, CallEventKind)>,
    /// Every datagram the call sent toward WhatsApp.
    pub to_wa: Vec<WaDatagram>,
    /// RTP the media server received.
    pub to_internal: Vec<Rtp>,
    /// RTCP the media server received: `(when, packet types)`.
    pub to_internal_rtcp: Vec<(Instant, Vec<u8>)>,
    /// The media server's audio toward the call.
    pub internal: Talker,
    /// Meta's audio toward the call (sent only once Meta has keys).
    pub wa: Talker,
    /// Network rules: checks reach Meta (and so get answered); DTLS reaches Meta.
    pub meta_answers_stun: bool,
    pub meta_gets_dtls: bool,
    /// When Meta last answered a check.
    pub last_stun_answer: Option<Instant>,
    pub from_call: VecOutbox,
    from_meta: VecOutbox,
    /// How late the call's timer fires, cycled per deadline (a busy machine wakes late);
    /// empty: exactly on time.
    pub timer_lateness: Vec<Duration>,
    /// The deadline being waited for and when the timer will actually fire.
    wake: Option<(Instant, Instant)>,
    lateness_index: usize,
}

impl Sim {
    pub fn new(leg: Leg) -> Sim {
        Sim::with_config(leg, CallConfig::default())
    }

    pub fn with_config(leg: Leg, cfg: CallConfig) -> Sim {
        Sim::with_internal_sdp(leg, cfg, testing::internal_sdp())
    }

    /// A call whose media server describes itself with `internal_sdp` (e.g. G.711 only).
    pub fn with_internal_sdp(leg: Leg, cfg: CallConfig, internal_sdp: String) -> Sim {
        let t0 = Instant::now();
        let (mut meta, offer) = match leg {
            Leg::Dtls => MetaPeer::dtls(t0),
            Leg::Sdes(p) => MetaPeer::sdes(p),
        };
        let identity = Arc::new(DtlsIdentity::generate().expect("relay certificate"));
        let spec = crate::api::InternalLegSpec {
            kind: crate::api::InternalKind::PlainRtp,
            remote_sdp: Some(internal_sdp),
            source: crate::api::SourcePolicy::Strict,
        };
        let created =
            testing::create_call_with(&offer, spec, cfg, identity, t0).expect("create call");
        meta.accept_answer(&created.whatsapp_sdp, t0)
            .expect("Meta accepts the relay's answer");
        Sim {
            t0,
            now: t0,
            internal_answer: created.internal_sdp,
            call: created.call,
            meta,
            events: Vec::new(),
            to_wa: Vec::new(),
            to_internal: Vec::new(),
            to_internal_rtcp: Vec::new(),
            internal: Talker::new(0x1111_1111, testing::INTERNAL_OPUS_PT),
            wa: Talker::new(0x2222_2222, testing::META_OPUS_PT),
            meta_answers_stun: true,
            meta_gets_dtls: true,
            last_stun_answer: None,
            from_call: VecOutbox::default(),
            from_meta: VecOutbox::default(),
            timer_lateness: Vec::new(),
            wake: None,
            lateness_index: 0,
        }
    }

    /// When the call's timer fires for its current deadline (late by `timer_lateness`).
    fn call_wake(&mut self) -> Option<Instant> {
        let deadline = self.call.poll_timeout()?;
        match self.wake {
            Some((d, wake)) if d == deadline => Some(wake),
            _ => {
                let late = if self.timer_lateness.is_empty() {
                    Duration::ZERO
                } else {
                    self.lateness_index += 1;
                    self.timer_lateness[self.lateness_index % self.timer_lateness.len()]
                };
                let wake = deadline + late;
                self.wake = Some((deadline, wake));
                Some(wake)
            }
        }
    }

    pub fn at(&self, d: Duration) -> Instant {
        self.t0 + d
    }

    /// Seconds since `t0`, for messages.
    pub fn secs(&self, t: Instant) -> f64 {
        t.duration_since(self.t0).as_secs_f64()
    }

    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    /// Run everything due up to and including `end`; `now` is `end` afterwards.
    pub fn run_until(&mut self, end: Instant) {
        let mut stuck = 0u32;
        loop {
            self.flush();
            let next = [
                self.call_wake(),
                self.meta.poll_timeout(),
                self.internal.due(),
                self.wa.due(),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next.filter(|n| *n <= end) else {
                self.now = self.now.max(end);
                return;
            };
            if next <= self.now {
                // Several things due at one instant are fine; a deadline that never moves is
                // a busy loop in the engine.
                stuck += 1;
                assert!(
                    stuck < 10_000,
                    "deadline stuck at {:.3} s",
                    self.secs(self.now)
                );
            } else {
                stuck = 0;
                self.now = next;
            }
            let now = self.now;
            // Datagrams before timers, as the engine reads its sockets before running timers.
            if self.internal.due().is_some_and(|t| t <= now) {
                self.send_internal();
            }
            if self.wa.due().is_some_and(|t| t <= now) {
                self.send_wa();
            }
            if self.meta.poll_timeout().is_some_and(|t| t <= now) {
                self.meta.handle_timeout(now, &mut self.from_meta);
            }
            if self.call_wake().is_some_and(|t| t <= now) {
                self.call.handle_timeout(now, &mut self.from_call);
                self.collect_events();
            }
        }
    }

    pub fn open_gate(&mut self) {
        self.call.open_gate(self.now, &mut self.from_call);
        self.collect_events();
        self.flush();
    }

    fn send_internal(&mut self) {
        let Some(at) = self.internal.next else { return };
        self.internal.next = Some(at + PTIME);
        let mut buf = [0u8; 1500];
        let index = self.internal.src.index;
        let n = self.internal.src.write_next(&mut buf, PAYLOAD_LEN);
        self.internal.sent.push((self.now, index));
        self.inject_internal(MEDIA_SERVER, &mut buf, n);
    }

    fn send_wa(&mut self) {
        let Some(at) = self.wa.next else { return };
        self.wa.next = Some(at + PTIME);
        if !self.meta.is_ready() {
            return;
        }
        let index = self.wa.src.index;
        let (mut buf, n) = self.wa_packet();
        self.wa.sent.push((self.now, index));
        self.inject_wa(META, &mut buf, n);
    }

    /// Meta's next audio packet, protected, without sending it (for tampering).
    pub fn wa_packet(&mut self) -> ([u8; 1500], usize) {
        let mut buf = [0u8; 1500];
        let n = self.wa.src.write_next(&mut buf, PAYLOAD_LEN);
        let n = self.meta.protect_rtp(&mut buf, n).expect("Meta protects");
        (buf, n)
    }

    /// Meta sends a DTLS close_notify (delivered at the next step).
    pub fn meta_closes_dtls(&mut self) {
        self.meta.close_dtls(&mut self.from_meta);
        self.flush();
    }

    /// Deliver a datagram to the call's WhatsApp socket.
    pub fn inject_wa(&mut self, from: SocketAddr, buf: &mut [u8], len: usize) {
        self.call.handle_datagram(
            self.now,
            SocketRef::WaV4,
            from,
            buf,
            len,
            &mut self.from_call,
        );
        self.collect_events();
    }

    /// Deliver a datagram to the call's internal socket.
    pub fn inject_internal(&mut self, from: SocketAddr, buf: &mut [u8], len: usize) {
        self.call.handle_datagram(
            self.now,
            SocketRef::Internal,
            from,
            buf,
            len,
            &mut self.from_call,
        );
        self.collect_events();
    }

    pub fn collect_events(&mut self) {
        while let Some(e) = self.call.poll_event() {
            self.events.push((self.now, e));
        }
    }

    /// Deliver queued datagrams both ways until the network is quiet.
    fn flush(&mut self) {
        loop {
            let mut moved = false;
            for d in self.from_call.take() {
                moved = true;
                self.deliver_to_peer(d);
            }
            for mut d in self.from_meta.take() {
                moved = true;
                if classify(&d.data) == PacketKind::Stun {
                    self.last_stun_answer = Some(self.now);
                }
                let via = testing::relay_socket(d.to).expect("Meta sends to the relay");
                let len = d.data.len();
                self.call.handle_datagram(
                    self.now,
                    via,
                    META,
                    &mut d.data,
                    len,
                    &mut self.from_call,
                );
                self.collect_events();
            }
            if !moved {
                return;
            }
        }
    }

    fn deliver_to_peer(&mut self, mut d: Sent) {
        let now = self.now;
        let len = d.data.len();
        if d.via == SocketRef::Internal {
            assert_eq!(d.to, MEDIA_SERVER, "internal media to the SDP address");
            match classify(&d.data) {
                PacketKind::Rtp => self
                    .to_internal
                    .push(Rtp::parse(now, &d.data).expect("the call sends valid RTP")),
                PacketKind::Rtcp => self.to_internal_rtcp.push((now, rtcp_types(&d.data))),
                other => panic!("{other:?} on the plain-RTP internal leg"),
            }
            return;
        }
        assert_eq!(
            d.to, META,
            "WhatsApp-leg datagram to an address Meta never offered"
        );
        let from = testing::relay_addr(d.via);
        let what = match classify(&d.data) {
            PacketKind::Stun => {
                if self.meta_answers_stun {
                    self.meta
                        .handle_datagram(now, from, &mut d.data, len, &mut self.from_meta);
                }
                ToWa::Stun
            }
            PacketKind::Dtls => {
                if self.meta_gets_dtls {
                    self.meta
                        .handle_datagram(now, from, &mut d.data, len, &mut self.from_meta);
                }
                ToWa::Dtls
            }
            _ => match self
                .meta
                .handle_datagram(now, from, &mut d.data, len, &mut self.from_meta)
            {
                Received::Rtp(n) => ToWa::Rtp(Rtp::parse(now, &d.data[..n]).expect("valid RTP")),
                Received::Rtcp(n) => ToWa::Rtcp(d.data[..n].to_vec()),
                other => ToWa::Bad(format!("{other:?}")),
            },
        };
        self.to_wa.push(WaDatagram { at: now, what });
    }

    /// RTP Meta received, in order.
    pub fn wa_rtp(&self) -> Vec<&Rtp> {
        self.to_wa
            .iter()
            .filter_map(|d| match &d.what {
                ToWa::Rtp(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    /// Why datagrams toward WhatsApp failed to authenticate or classify at Meta (should be
    /// none).
    pub fn rejected_by_meta(&self) -> Vec<&str> {
        self.to_wa
            .iter()
            .filter_map(|d| match &d.what {
                ToWa::Bad(why) => Some(why.as_str()),
                _ => None,
            })
            .collect()
    }

    /// When Meta received RTCP sender reports.
    pub fn wa_sr_times(&self) -> Vec<Instant> {
        self.to_wa
            .iter()
            .filter(|d| matches!(&d.what, ToWa::Rtcp(p) if rtcp_types(p).first() == Some(&200)))
            .map(|d| d.at)
            .collect()
    }

    /// The first event matching `pred`, with its time.
    pub fn event(&self, pred: impl Fn(&CallEventKind) -> bool) -> Option<Instant> {
        self.events.iter().find(|(_, e)| pred(e)).map(|(t, _)| *t)
    }

    /// `(when, cause, Meta code)` of the `Ended` event.
    pub fn ended(&self) -> Option<(Instant, EndCause, Option<u32>)> {
        self.events.iter().find_map(|(t, e)| match e {
            CallEventKind::Ended {
                cause, meta_code, ..
            } => Some((*t, *cause, *meta_code)),
            _ => None,
        })
    }

    /// Run until the WhatsApp leg is ready (ICE + DTLS, or SDES at once).
    pub fn connect(&mut self) -> Instant {
        let limit = self.now + secs(5);
        while self.event(|e| *e == CallEventKind::WhatsAppReady).is_none() {
            assert!(
                self.now < limit,
                "not connected after 5 s: {:?}",
                self.events
            );
            self.run_for(ms(1));
        }
        self.event(|e| *e == CallEventKind::WhatsAppReady).unwrap()
    }
}

/// Packet types of a compound RTCP packet (200 SR, 201 RR, 202 SDES, 203 BYE), walking the
/// length fields.
pub fn rtcp_types(pkt: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut at = 0usize;
    while let (Some(&pt), Some(len)) = (pkt.get(at + 1), pkt.get(at + 2..at + 4)) {
        types.push(pt);
        at += (usize::from(u16::from_be_bytes([len[0], len[1]])) + 1) * 4;
    }
    types
}

/// Packets sent toward WhatsApp before `t` that are not STUN or DTLS.
pub fn media_to_wa_before(sim: &Sim, t: Instant) -> Vec<WaDatagram> {
    sim.to_wa
        .iter()
        .filter(|d| d.at < t && !matches!(d.what, ToWa::Stun | ToWa::Dtls))
        .cloned()
        .collect()
}

/// Assert the stream Meta received is one continuous outbound stream: one SSRC, sequence
/// numbers +1 each, timestamps advancing with time as sent (48 kHz; at least a frame after a
/// relay-made silence frame).
pub fn assert_continuous(pkts: &[&Rtp]) {
    for w in pkts.windows(2) {
        let (a, b) = (w[0], w[1]);
        assert_eq!(b.ssrc, a.ssrc, "one outbound SSRC");
        assert_eq!(
            b.seq,
            a.seq.wrapping_add(1),
            "sequence continuous at {:?} → {:?}",
            a.at,
            b.at
        );
        let elapsed = b.at.duration_since(a.at);
        let mut expect = crate::call::rewrite::clock_units(elapsed, Clock::OPUS);
        if a.is_silence() {
            // A relay-made frame lasts 20 ms: what follows it never overlaps it.
            expect = expect.max(960);
        }
        assert_eq!(
            b.ts.wrapping_sub(a.ts),
            expect,
            "timestamp advances with the {elapsed:?} between packets (seq {})",
            b.seq
        );
    }
}
