//! The relay's call in simulated time, against independent peers: the relay's [`Call`] between the independent Meta and
//! media-server peers of the `e2e` crate (their sans-IO cores), with a seeded fault network
//! ([`FaultNet`]: loss, duplication, jitter, reordering) on the WhatsApp side. No socket, no
//! thread, no sleep: time is a variable the loop advances to the next deadline, so each run
//! is exact and reproducible, and ten seconds of a call take a fraction of a second.
//!
//! Here: network faults (loss, duplication, reordering, jitter) counted exactly, the keep-alive
//! toward WhatsApp on an exact 20 ms grid, an IVR greeting not clipped by the gate. The
//! loopback versions (`e2e/tests/hostile.rs`, `keepalive.rs`) stay as smoke and interop tests
//! with margins for a loaded machine; the exact accounting lives here.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use e2e::faults::{Direction, FaultNet, FaultSpec};
use e2e::meta::{Family, MetaConfig, MetaCore};
use e2e::rtp::{read_stamp, stamped_payload};
use e2e::runner::PeerCore;
use e2e::sip::{SipConfig, SipCore};
use relay::api::{
    CallDirection, CallState, CreateCall, InternalKind, InternalLegSpec, LegKind, SourcePolicy,
    WaSecurity,
};
use relay::call::stats::DropReason;
use relay::call::{Advertised, Call, CallConfig, CallSetup, LocalSockets};
use relay::dtls::DtlsIdentity;
use relay::net::{SocketRef, VecOutbox};

const RELAY_WA: &str = "192.0.2.1:40000";
const RELAY_INTERNAL: &str = "10.0.0.1:40002";
const META: &str = "198.51.100.7:3478";
const SIP: &str = "10.0.0.9:30000";
const STRANGER: &str = "10.0.0.9:30002";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The relay's call, Meta behind the fault network, the media server on a clean link.
struct Sim {
    now: Instant,
    call: Call,
    meta: MetaCore,
    sip: SipCore,
    net: FaultNet,
    out: VecOutbox,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        Sim::with_config(seed, CallConfig::default())
    }

    fn with_config(seed: u64, cfg: CallConfig) -> Sim {
        let now = Instant::now();
        let mut meta = MetaCore::new(MetaConfig::default().ipv4_only(), addr(META), None).unwrap();
        let mut sip = SipCore::new(SipConfig::default(), addr(SIP), addr(STRANGER));
        let req = CreateCall {
            call_id: "wacid.sim".to_string(),
            business_number: "15550001111".to_string(),
            consumer: "15552223333".to_string(),
            direction: CallDirection::UserInitiated,
            whatsapp_offer: Some(meta.offer_sdp()),
            whatsapp_security: WaSecurity::DtlsSrtp,
            internal: InternalLegSpec {
                kind: InternalKind::PlainRtp,
                remote_sdp: Some(sip.sdp()),
                source: SourcePolicy::Strict,
            },
        };
        let created = Call::create(
            CallSetup {
                req: &req,
                sockets: LocalSockets {
                    wa_v4: Some(addr(RELAY_WA)),
                    wa_v6: None,
                    internal: addr(RELAY_INTERNAL),
                },
                advertised: Advertised {
                    wa_v4: Some(addr(RELAY_WA).ip()),
                    wa_v6: None,
                    internal: addr(RELAY_INTERNAL).ip(),
                },
                identity: Arc::new(DtlsIdentity::generate().unwrap()),
                cfg,
            },
            now,
            SystemTime::now(),
        )
        .unwrap();
        meta.set_remote_sdp(&created.whatsapp_sdp, now).unwrap();
        sip.set_remote_sdp(&created.internal_sdp, now).unwrap();
        Sim {
            now,
            call: created.call,
            meta,
            sip,
            net: FaultNet::new(seed),
            out: VecOutbox::default(),
        }
    }

    /// Everything due at `self.now`, until nothing more is.
    fn settle(&mut self) {
        let now = self.now;
        for _ in 0..10_000 {
            let mut moved = false;
            if self.call.poll_timeout().is_some_and(|t| t <= now) {
                self.call.handle_timeout(now, &mut self.out);
            }
            self.meta.poll_at(now);
            PeerCore::poll(&mut self.sip, now);
            // The relay's datagrams: toward Meta through the faults, toward the media server
            // straight there.
            for sent in std::mem::take(&mut self.out.sent) {
                moved = true;
                if sent.to == addr(META) {
                    self.net.arrive(now, Direction::ToPeer, &sent.data);
                } else if sent.to == addr(SIP) {
                    self.sip.handle(now, 0, addr(RELAY_INTERNAL), &sent.data);
                }
            }
            while let Some((_, to, data)) = self.meta.poll_datagram() {
                moved = true;
                if to == addr(RELAY_WA) {
                    self.net.arrive(now, Direction::ToRelay, &data);
                }
            }
            while let Some((_, to, data)) = self.sip.poll_transmit() {
                moved = true;
                if to == addr(RELAY_INTERNAL) {
                    self.deliver_to_relay(SocketRef::Internal, addr(SIP), &data);
                }
            }
            while let Some((dir, data)) = self.net.poll_due(now) {
                moved = true;
                self.net.count_sent(dir);
                match dir {
                    Direction::ToRelay => self.deliver_to_relay(SocketRef::WaV4, addr(META), &data),
                    Direction::ToPeer => {
                        self.meta
                            .handle_datagram(now, Family::V4, addr(RELAY_WA), &data)
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the simulation does not settle at one instant");
    }

    /// A datagram into the call, in a receive buffer with the room the engine's has (the
    /// call protects in place: SRTP's tag grows the packet).
    fn deliver_to_relay(&mut self, via: SocketRef, from: SocketAddr, data: &[u8]) {
        let mut buf = [0u8; 2048];
        buf[..data.len()].copy_from_slice(data);
        self.call
            .handle_datagram(self.now, via, from, &mut buf, data.len(), &mut self.out);
    }

    /// Run for `d` of simulated time, jumping from one deadline to the next.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.settle();
            let next = [
                self.call.poll_timeout(),
                self.meta.next_timeout(),
                PeerCore::poll_timeout(&self.sip),
                self.net.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(end)
            .min(end);
            // A deadline that did not move after it was handled must not stall the clock; a
            // deadline still ahead is hit exactly (a minimum step would overshoot one that
            // falls just after another, e.g. a randomized RTCP report beside a fill slot).
            self.now = if next > self.now {
                next
            } else {
                self.now + Duration::from_micros(100)
            };
            if self.now >= end {
                self.now = end;
                self.settle();
                return;
            }
        }
    }
}

fn payload_intact(p: &[u8]) -> bool {
    let Some((counter, _)) = read_stamp(p) else {
        return false;
    };
    p.get(12..) == stamped_payload(counter, p.len()).get(12..)
}

/// Distinct payloads of the media server that reached Meta (the relay's fill excluded; a
/// datagram duplicated on the way counts once).
fn distinct_forwarded_to_meta(meta: &MetaCore) -> usize {
    meta.received()
        .iter()
        .filter(|p| p.payload.len() > 3 && payload_intact(&p.payload))
        .map(|p| p.header.seq)
        .collect::<HashSet<u16>>()
        .len()
}

/// An established call with audio both ways, faults off.
fn established(seed: u64) -> Sim {
    let mut sim = Sim::new(seed);
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.call.info().whatsapp_remote, Some(addr(META)));
    sim.call.open_gate(sim.now, &mut sim.out);
    sim.meta.start_audio(sim.now);
    sim.sip.start_audio(sim.now);
    sim.run(Duration::from_secs(1));
    assert!(sim.sip.received().len() >= 40, "media server hears Meta");
    assert!(distinct_forwarded_to_meta(&sim.meta) >= 40, "Meta hears it");
    sim
}

#[test]
fn loss_duplication_reordering_and_jitter_are_reported_exactly() {
    for seed in [20_240_611, 1, 4, 5, 7] {
        let mut sim = established(seed);
        let lost_before = sim.call.info().whatsapp.received.lost;
        let replayed_before = sim.call.dropped(LegKind::WhatsApp, DropReason::Replayed);
        sim.net.set(Direction::ToRelay, FaultSpec::lossy());
        sim.net.set(Direction::ToPeer, FaultSpec::lossy());
        // Jitter sampled every 100 ms while the faults are on (RFC 3550's estimate decays once
        // they stop); its mean over 8 s, not one reading of a noisy estimator.
        let mut samples = Vec::new();
        for _ in 0..80 {
            sim.run(Duration::from_millis(100));
            samples.push(sim.call.info().whatsapp.received.jitter_ms);
        }
        let jitter_ms = samples.iter().sum::<f64>() / samples.len() as f64;
        // Faults off before the audio stops, so no loss hides at the tail (a lost last packet
        // is invisible to any receiver).
        sim.net.set(Direction::ToRelay, FaultSpec::default());
        sim.net.set(Direction::ToPeer, FaultSpec::default());
        sim.run(Duration::from_millis(300));
        sim.meta.stop_audio();
        sim.sip.stop_audio();
        sim.run(Duration::from_secs(1));
        assert_eq!(sim.net.queued(), 0);

        let to_relay = sim.net.stats(Direction::ToRelay);
        let to_meta = sim.net.stats(Direction::ToPeer);
        assert!(to_relay.lost_rtp > 0 && to_relay.duplicated > 0 && to_relay.reordered > 0);
        let info = sim.call.info();
        assert_eq!(info.state, CallState::Active, "the call survived");
        // RFC 3550 cumulative loss equals what the network dropped, exactly: duplicates never
        // count (SRTP's replay window drops them first), reordered packets are late, not lost.
        assert_eq!(
            info.whatsapp.received.lost - lost_before,
            to_relay.lost_rtp,
            "seed {seed}: loss the relay reports vs loss injected"
        );
        // Every duplicate (SRTP or SRTCP) is dropped by the replay window and counted.
        assert_eq!(
            sim.call.dropped(LegKind::WhatsApp, DropReason::Replayed) - replayed_before,
            to_relay.duplicated_rtp + to_relay.duplicated_rtcp,
            "seed {seed}: replayed drops vs duplicates injected"
        );
        // Delays of 20 ms + U(0, 40 ms): consecutive transit differences average 40/3 ms, the
        // 2 % held back 60 ms add about 2.4 ms, so RFC 3550's estimate centres on 15.7 ms. Its
        // 8 s mean varied 14.1–16.9 ms over ten seeds (no scheduler noise here, unlike the
        // loopback test's 9.5–26 ms band).
        assert!(
            (13.0..=18.5).contains(&jitter_ms),
            "seed {seed}: mean jitter {jitter_ms:.1} ms, expected about 15.7 ms"
        );
        // Every packet the network delivered to the relay reached the media server once,
        // intact; Meta got every packet of the media server the network let through.
        let meta_sent = sim.meta.stats().media.rtp_sent;
        assert_eq!(
            sim.sip.received().len() as u64,
            meta_sent - to_relay.lost_rtp,
            "seed {seed}: each delivered packet forwarded exactly once"
        );
        assert!(
            sim.sip
                .received()
                .iter()
                .all(|p| payload_intact(&p.payload))
        );
        assert_eq!(
            distinct_forwarded_to_meta(&sim.meta) as u64,
            sim.sip.stats().rtp_sent - to_meta.lost_rtp,
            "seed {seed}: Meta got what the network let through"
        );
    }
}

/// Issue 4's keep-alive, exactly: a silent internal leg still feeds WhatsApp one packet per
/// 20 ms, every one generated silence on one continuous sequence, with RTCP sender reports on
/// the configured cadence (the loopback version in e2e/tests/keepalive.rs allows for a loaded
/// machine; here the clock is exact).
#[test]
fn a_silent_internal_leg_still_feeds_whatsapp_every_packet_time_with_rtcp() {
    let cfg = CallConfig {
        rtcp_interval: Duration::from_millis(500),
        ..CallConfig::default()
    };
    let mut sim = Sim::with_config(1, cfg);
    sim.run(Duration::from_secs(1));
    sim.meta.start_audio(sim.now); // Meta talks, so the inward rules do not end the call.
    sim.run(Duration::from_millis(500));
    assert!(sim.meta.received().is_empty(), "nothing before the gate");
    sim.call.open_gate(sim.now, &mut sim.out);
    let opened = sim.now;
    sim.run(Duration::from_secs(2));
    let got = sim.meta.received();
    assert!(
        (99..=101).contains(&got.len()),
        "{} packets in 2 s, one per 20 ms expected",
        got.len()
    );
    assert!(
        got.iter().all(|p| p.payload == [0xf8, 0xff, 0xfe]),
        "Opus silence"
    );
    assert!(got[0].at.duration_since(opened) <= Duration::from_millis(20));
    for w in got.windows(2) {
        assert_eq!(w[1].header.seq, w[0].header.seq.wrapping_add(1));
        assert_eq!(w[1].header.ts.wrapping_sub(w[0].header.ts), 960);
        assert_eq!(w[1].at.duration_since(w[0].at), Duration::from_millis(20));
    }
    // RFC 3550 randomizes the report interval (here 0.5-1.0 of the configured 500 ms), so the
    // count in 2 s varies with the draw; the cadence between reports does not.
    let srs: Vec<Instant> = sim
        .meta
        .received_rtcp()
        .iter()
        .filter(|r| r.types.contains(&200) && r.at >= opened)
        .map(|r| r.at)
        .collect();
    assert!(
        srs.len() >= 3,
        "{} sender reports in 2 s at 500 ms",
        srs.len()
    );
    for w in srs.windows(2) {
        let gap = w[1].duration_since(w[0]);
        assert!(
            (Duration::from_millis(250)..=Duration::from_millis(500)).contains(&gap),
            "sender reports {gap:?} apart at a 500 ms interval"
        );
    }
    assert_eq!(sim.call.info().state, CallState::Active);
}

/// An IVR whose greeting starts before the gate opens is not clipped: WhatsApp's first packet
/// is the greeting's first, and the rest follow in order with none missing.
#[test]
fn an_ivr_that_starts_before_the_gate_is_not_clipped() {
    let mut sim = Sim::new(2);
    sim.run(Duration::from_secs(1));
    sim.sip.start_audio(sim.now);
    sim.run(Duration::from_millis(400));
    assert!(
        sim.meta.received().is_empty(),
        "gate closed: nothing reached WhatsApp"
    );
    sim.call.open_gate(sim.now, &mut sim.out);
    sim.meta.start_audio(sim.now);
    sim.run(Duration::from_secs(2));
    let counters: Vec<u32> = sim
        .meta
        .received()
        .iter()
        .filter_map(|p| read_stamp(&p.payload).map(|s| s.0))
        .collect();
    assert_eq!(
        counters.first(),
        Some(&0),
        "the greeting's first packet comes first"
    );
    let sent = sim.sip.stats().rtp_sent as u32;
    assert_eq!(
        counters,
        (0..sent).collect::<Vec<_>>(),
        "all of it, in order"
    );
}
