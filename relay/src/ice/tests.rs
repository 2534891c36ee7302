//! Scenario tests in simulated time: a controlling agent (us) and a lite agent (standing in
//! for Meta) wired back to back through a tiny network with latency and drop rules.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::net::{Sent, SocketRef, VecOutbox};
use crate::wire::stun::{self, BINDING, StunClass, StunWriter};

// The call's WhatsApp sockets, by their layout names.
#[allow(non_upper_case_globals)]
const WaV4: SocketRef = SocketRef::WaV4;
#[allow(non_upper_case_globals)]
const WaV6: SocketRef = SocketRef::WaV6;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const A4: &str = "192.0.2.10:40000";
const A6: &str = "[2001:db8::10]:40000";
const B4: &str = "157.240.1.1:3478";
const B6: &str = "[2a03:2880::1]:3478";
/// Host priorities in the shape Meta's SDP carries.
const B4_PRIO: u32 = 2_122_260_223;
const B6_PRIO: u32 = 2_122_262_783;

fn a_creds() -> IceCredentials {
    IceCredentials::new("Ab12Cd34", "a-password-of-24-chars++")
}

fn b_creds() -> IceCredentials {
    IceCredentials::new("meta/Ufr", "Meta+pwd/with24charsX==")
}

fn cfg() -> IceConfig {
    IceConfig {
        seed: Some(8445),
        ..IceConfig::default()
    }
}

trait Agent {
    fn stun(
        &mut self,
        now: Instant,
        via: SocketRef,
        from: SocketAddr,
        data: &[u8],
        out: &mut VecOutbox,
    );
    fn timeout(&mut self, now: Instant, out: &mut VecOutbox);
    fn next(&self) -> Option<Instant>;
    fn event(&mut self) -> Option<IceEvent>;
}

impl Agent for ControllingAgent {
    fn stun(
        &mut self,
        now: Instant,
        via: SocketRef,
        from: SocketAddr,
        data: &[u8],
        out: &mut VecOutbox,
    ) {
        let msg = stun::parse(data).expect("agents send valid STUN");
        self.handle_stun(now, via, from, &msg, data, out);
    }
    fn timeout(&mut self, now: Instant, out: &mut VecOutbox) {
        self.handle_timeout(now, out);
    }
    fn next(&self) -> Option<Instant> {
        self.poll_timeout()
    }
    fn event(&mut self) -> Option<IceEvent> {
        self.poll_event()
    }
}

impl Agent for LiteAgent {
    fn stun(
        &mut self,
        now: Instant,
        via: SocketRef,
        from: SocketAddr,
        data: &[u8],
        out: &mut VecOutbox,
    ) {
        let msg = stun::parse(data).expect("agents send valid STUN");
        self.handle_stun(now, via, from, &msg, data, out);
    }
    fn timeout(&mut self, now: Instant, out: &mut VecOutbox) {
        self.handle_timeout(now, out);
    }
    fn next(&self) -> Option<Instant> {
        self.poll_timeout()
    }
    fn event(&mut self) -> Option<IceEvent> {
        self.poll_event()
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Side {
    A,
    B,
}

/// Everything one side sent or received, with simulated timestamps.
#[derive(Default)]
struct Log {
    sent: Vec<(Instant, Sent)>,
    received: Vec<(Instant, SocketAddr, Vec<u8>)>,
    events: Vec<(Instant, IceEvent)>,
}

struct InFlight {
    at: Instant,
    to: Side,
    via: SocketRef,
    from: SocketAddr,
    data: Vec<u8>,
}

type DropRule = Box<dyn FnMut(Side, &Sent) -> bool>;

struct Sim {
    now: Instant,
    start: Instant,
    latency: Duration,
    a: ControllingAgent,
    b: LiteAgent,
    a_addrs: Vec<(SocketRef, SocketAddr)>,
    b_addrs: Vec<(SocketRef, SocketAddr)>,
    a_log: Log,
    b_log: Log,
    flight: Vec<InFlight>,
    /// Returns true to drop a datagram `Side` sent.
    drop: DropRule,
}

impl Sim {
    /// A with IPv4 and IPv6 host candidates, B (lite) with Meta-like candidates on both.
    fn new(config: IceConfig, latency: Duration) -> Sim {
        let now = Instant::now();
        let mut a = ControllingAgent::new(a_creds(), now, config.clone());
        a.add_local(WaV4, addr(A4));
        a.add_local(WaV6, addr(A6));
        a.add_remote_candidate(addr(B4), B4_PRIO);
        a.add_remote_candidate(addr(B6), B6_PRIO);
        a.set_remote_credentials(b_creds());
        let mut b = LiteAgent::new(b_creds(), now, config);
        b.set_remote_credentials(a_creds());
        Sim {
            now,
            start: now,
            latency,
            a,
            b,
            a_addrs: vec![(WaV4, addr(A4)), (WaV6, addr(A6))],
            b_addrs: vec![(WaV4, addr(B4)), (WaV6, addr(B6))],
            a_log: Log::default(),
            b_log: Log::default(),
            flight: Vec::new(),
            drop: Box::new(|_, _| false),
        }
    }

    fn at(&self, offset_ms: u64) -> Instant {
        self.start + Duration::from_millis(offset_ms)
    }

    /// Delivers `data` to A as if it came from `from` on A's socket `via`.
    fn inject_to_a(&mut self, via: SocketRef, from: SocketAddr, data: Vec<u8>) {
        self.flight.push(InFlight {
            at: self.now,
            to: Side::A,
            via,
            from,
            data,
        });
        self.run_for(Duration::ZERO);
    }

    fn route(&mut self, side: Side, out: &mut VecOutbox) {
        for s in out.take() {
            let (src, dst, log) = match side {
                Side::A => (&self.a_addrs, &self.b_addrs, &mut self.a_log),
                Side::B => (&self.b_addrs, &self.a_addrs, &mut self.b_log),
            };
            log.sent.push((self.now, s.clone()));
            let from = src.iter().find(|(r, _)| *r == s.via).map(|(_, a)| *a);
            let to = dst.iter().find(|(_, a)| *a == s.to).map(|(r, _)| *r);
            let (Some(from), Some(via)) = (from, to) else {
                continue;
            };
            if (self.drop)(side, &s) {
                continue;
            }
            self.flight.push(InFlight {
                at: self.now + self.latency,
                to: if side == Side::A { Side::B } else { Side::A },
                via,
                from,
                data: s.data,
            });
        }
    }

    fn collect_events(&mut self) {
        while let Some(e) = self.a.event() {
            self.a_log.events.push((self.now, e));
        }
        while let Some(e) = self.b.event() {
            self.b_log.events.push((self.now, e));
        }
    }

    /// Runs the simulation until `now + d`, jumping from deadline to deadline.
    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        let mut out = VecOutbox::default();
        for _ in 0..1_000_000 {
            // Deliver what is due, in arrival order.
            self.flight.sort_by_key(|f| f.at);
            while self.flight.first().is_some_and(|f| f.at <= self.now) {
                let f = self.flight.remove(0);
                match f.to {
                    Side::A => {
                        self.a_log.received.push((self.now, f.from, f.data.clone()));
                        self.a.stun(self.now, f.via, f.from, &f.data, &mut out);
                        self.route(Side::A, &mut out);
                    }
                    Side::B => {
                        self.b_log.received.push((self.now, f.from, f.data.clone()));
                        self.b.stun(self.now, f.via, f.from, &f.data, &mut out);
                        self.route(Side::B, &mut out);
                    }
                }
            }
            if self.a.next().is_some_and(|t| t <= self.now) {
                self.a.timeout(self.now, &mut out);
                self.route(Side::A, &mut out);
            }
            if self.b.next().is_some_and(|t| t <= self.now) {
                self.b.timeout(self.now, &mut out);
                self.route(Side::B, &mut out);
            }
            self.collect_events();
            // A deadline still due after handling it would be a busy loop.
            assert!(self.a.next().is_none_or(|t| t > self.now), "A busy-loops");
            assert!(self.b.next().is_none_or(|t| t > self.now), "B busy-loops");
            let next = [
                self.a.next(),
                self.b.next(),
                self.flight.iter().map(|f| f.at).min(),
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(t) if t <= end => self.now = t,
                _ => {
                    self.now = end;
                    return;
                }
            }
        }
        panic!("simulation did not settle");
    }

    fn a_events(&self) -> Vec<IceEvent> {
        self.a_log.events.iter().map(|(_, e)| *e).collect()
    }

    fn b_events(&self) -> Vec<IceEvent> {
        self.b_log.events.iter().map(|(_, e)| *e).collect()
    }

    /// Both agents use the same 5-tuple.
    fn assert_agree(&self) {
        let (a_via, b_addr) = self.a.selected().expect("A selected a pair");
        let (b_via, a_addr) = self.b.selected().expect("B selected a pair");
        assert_eq!(
            self.a_addrs.iter().find(|(r, _)| *r == a_via).unwrap().1,
            a_addr
        );
        assert_eq!(
            self.b_addrs.iter().find(|(r, _)| *r == b_via).unwrap().1,
            b_addr
        );
    }

    /// Times A sent a Binding request to `to`.
    fn a_checks_to(&self, to: SocketAddr) -> Vec<Instant> {
        self.a_log
            .sent
            .iter()
            .filter(|(_, s)| s.to == to)
            .filter(|(_, s)| stun::parse(&s.data).unwrap().class() == StunClass::Request)
            .map(|(t, _)| *t)
            .collect()
    }
}

/// A Binding request as a full-ICE peer would send it to A.
fn request_to_a(pwd: &str, ufrag: &str, controlling: bool, tid: [u8; 12]) -> Vec<u8> {
    let mut buf = [0u8; 256];
    let username = format!("{}:{}", ufrag, b_creds().ufrag);
    let mut w = StunWriter::new(&mut buf, StunClass::Request, BINDING, tid).unwrap();
    w.username(username.as_bytes())
        .unwrap()
        .priority(B4_PRIO - 1)
        .unwrap();
    if controlling {
        w.ice_controlling(1).unwrap();
    } else {
        w.ice_controlled(1).unwrap();
    }
    let n = w.finish(Some(pwd.as_bytes()), true).unwrap();
    buf[..n].to_vec()
}

fn response_to_a(class: StunClass, tid: [u8; 12], key: &str, error: Option<u16>) -> Vec<u8> {
    let mut buf = [0u8; 256];
    let mut w = StunWriter::new(&mut buf, class, BINDING, tid).unwrap();
    match error {
        Some(code) => w.error_code(code, "error").unwrap(),
        None => w.xor_mapped_address(addr(A4)).unwrap(),
    };
    let n = w.finish(Some(key.as_bytes()), true).unwrap();
    buf[..n].to_vec()
}

#[test]
fn connects_over_ipv4_and_ipv6_candidates() {
    // 30 ms one way: the second family's check leaves before the first one is answered,
    // so both pairs are nominated and the agents must still agree.
    let mut sim = Sim::new(cfg(), Duration::from_millis(30));
    sim.run_for(Duration::from_secs(2));
    assert!(matches!(sim.a_events()[..], [IceEvent::Connected { .. }]));
    assert!(matches!(
        sim.b_events().first(),
        Some(IceEvent::Connected { .. })
    ));
    assert!(!sim.a_checks_to(addr(B4)).is_empty());
    assert!(!sim.a_checks_to(addr(B6)).is_empty());
    sim.assert_agree();
    assert_eq!(sim.a.state(), IceState::Connected);
    // Connected within one round trip of the first check (plus pacing), not seconds.
    let (t, _) = sim.a_log.events[0];
    assert!(t <= sim.at(100), "connected after {:?}", t - sim.start);

    // Each family alone connects on that family.
    for (local, remote, prio, via) in [(A4, B4, B4_PRIO, WaV4), (A6, B6, B6_PRIO, WaV6)] {
        let mut sim = Sim::new(cfg(), Duration::from_millis(5));
        sim.a = ControllingAgent::new(a_creds(), sim.now, cfg());
        sim.a.add_local(via, addr(local));
        sim.a.add_remote_candidate(addr(remote), prio);
        sim.a.set_remote_credentials(b_creds());
        sim.run_for(Duration::from_secs(1));
        assert_eq!(
            sim.a_events(),
            vec![IceEvent::Connected {
                via,
                remote: addr(remote)
            }]
        );
        sim.assert_agree();
    }
}

#[test]
fn lite_peer_ignoring_ipv6_still_connects_on_ipv4() {
    let mut sim = Sim::new(cfg(), Duration::from_millis(10));
    // Make IPv6 the preferred pair so the fallback is exercised.
    sim.a = ControllingAgent::new(a_creds(), sim.now, cfg());
    sim.a.add_local(WaV6, addr(A6));
    sim.a.add_local(WaV4, addr(A4));
    sim.a.add_remote_candidate(addr(B6), B6_PRIO);
    sim.a.add_remote_candidate(addr(B4), B4_PRIO);
    sim.a.set_remote_credentials(b_creds());
    sim.drop = Box::new(|side, s| side == Side::A && s.to.is_ipv6());
    sim.run_for(Duration::from_secs(15));
    let checks_v6 = sim.a_checks_to(addr(B6));
    assert!(checks_v6.len() > 1, "IPv6 was tried first and retried");
    assert!(checks_v6[0] < sim.a_checks_to(addr(B4))[0]);
    assert_eq!(
        sim.a_events(),
        vec![IceEvent::Connected {
            via: WaV4,
            remote: addr(B4)
        }]
    );
    sim.assert_agree();
    // The unanswered IPv6 pair is abandoned at the connect timeout, not retried forever.
    let last_v6 = *checks_v6.last().unwrap();
    assert!(last_v6 < sim.at(10_000));
    assert_eq!(sim.a.state(), IceState::Connected);
}

#[test]
fn wrong_password_never_connects_and_gets_no_answer() {
    let mut sim = Sim::new(cfg(), Duration::from_millis(5));
    sim.a.set_remote_credentials(IceCredentials::new(
        "meta/Ufr",
        "not-the-right-password-at-all",
    ));
    sim.run_for(Duration::from_secs(20));
    assert_eq!(sim.a_events(), vec![IceEvent::Failed]);
    let (failed_at, _) = sim.a_log.events[0];
    assert_eq!(failed_at, sim.at(10_000));
    assert!(
        sim.b_log.sent.is_empty(),
        "a bad request must not be answered"
    );
    let checks = sim.a.stats().checks_sent;
    assert!(checks > 10);
    assert_eq!(sim.b.stats().rejected_requests, checks);
    assert_eq!(sim.b.stats().requests_answered, 0);
    assert_eq!(sim.a.selected(), None);
    // Terminal: nothing more is sent.
    assert_eq!(sim.a.poll_timeout(), None);
    assert!(sim.a_log.sent.iter().all(|(t, _)| *t < failed_at));
}

#[test]
fn consent_is_lost_30s_after_responses_stop() {
    let mut sim = Sim::new(cfg(), Duration::from_millis(5));
    sim.run_for(Duration::from_secs(12));
    assert_eq!(sim.a.state(), IceState::Connected);
    // Consent checks keep flowing every 4-6 s while the peer answers.
    let consent_before = sim.a.stats().consent_checks_sent;
    assert!(consent_before >= 2);
    let blocked_at = sim.now;
    sim.drop = Box::new(|side, _| side == Side::B);
    sim.run_for(Duration::from_secs(40));

    let last_response = sim
        .a_log
        .received
        .iter()
        .map(|(t, _, _)| *t)
        .filter(|t| *t <= blocked_at + sim.latency)
        .max()
        .unwrap();
    let lost: Vec<_> = sim
        .a_log
        .events
        .iter()
        .filter(|(_, e)| *e == IceEvent::ConsentLost)
        .collect();
    assert_eq!(lost.len(), 1);
    let lost_at = lost[0].0;
    assert!(lost_at - last_response >= Duration::from_secs(29));
    assert!(lost_at - last_response <= Duration::from_secs(30) + Duration::from_millis(1));
    assert_eq!(sim.a.state(), IceState::ConsentLost);

    // Consent checks continued until then, 4-6 s apart.
    let consent_times: Vec<Instant> = sim
        .a_checks_to(addr(B6))
        .into_iter()
        .chain(sim.a_checks_to(addr(B4)))
        .filter(|t| *t > sim.at(1_000))
        .collect();
    let mut sorted = consent_times.clone();
    sorted.sort();
    for w in sorted.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= Duration::from_secs(4) && gap <= Duration::from_secs(6),
            "gap {gap:?}"
        );
    }
    assert!(sorted.last().unwrap() < &lost_at);

    // The lite side kept consent while checks arrived, and loses it 30 s after the last.
    let last_check = sim.b_log.received.iter().map(|(t, _, _)| *t).max().unwrap();
    let b_lost = sim
        .b_log
        .events
        .iter()
        .find(|(_, e)| *e == IceEvent::ConsentLost);
    assert!(b_lost.is_none_or(|(t, _)| *t - last_check >= Duration::from_secs(30)));
    sim.run_for(Duration::from_secs(30));
    let (b_lost_at, _) = sim
        .b_log
        .events
        .iter()
        .find(|(_, e)| *e == IceEvent::ConsentLost)
        .copied()
        .expect("lite consent lost");
    assert_eq!(b_lost_at - last_check, Duration::from_secs(30));
}

#[test]
fn checks_retransmit_on_the_short_rto() {
    let mut sim = Sim::new(cfg(), Duration::from_millis(5));
    sim.a = ControllingAgent::new(a_creds(), sim.now, cfg());
    sim.a.add_local(WaV4, addr(A4));
    sim.a.add_remote_candidate(addr(B4), B4_PRIO);
    sim.a.set_remote_credentials(b_creds());
    sim.drop = Box::new(|_, _| true);
    sim.run_for(Duration::from_secs(3));
    let times = sim.a_checks_to(addr(B4));
    let gaps: Vec<u128> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    assert_eq!(&gaps[..7], &[50, 100, 200, 400, 500, 500, 500]);
    assert_eq!(times[0], sim.start);
    // Retransmissions keep the transaction ID (RFC 8489 §6.2.1).
    let tids: Vec<_> = sim
        .a_log
        .sent
        .iter()
        .map(|(_, s)| stun::parse(&s.data).unwrap().transaction_id())
        .collect();
    assert!(tids.windows(2).all(|w| w[0] == w[1]));

    // Configurable.
    let fast = IceConfig {
        rto_initial: Duration::from_millis(30),
        rto_max: Duration::from_millis(120),
        ..cfg()
    };
    let mut sim = Sim::new(fast.clone(), Duration::from_millis(5));
    sim.a = ControllingAgent::new(a_creds(), sim.now, fast);
    sim.a.add_local(WaV4, addr(A4));
    sim.a.add_remote_candidate(addr(B4), B4_PRIO);
    sim.a.set_remote_credentials(b_creds());
    sim.drop = Box::new(|_, _| true);
    sim.run_for(Duration::from_secs(1));
    let times = sim.a_checks_to(addr(B4));
    let gaps: Vec<u128> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    assert_eq!(&gaps[..5], &[30, 60, 120, 120, 120]);
}

#[test]
fn checks_carry_the_ice_attributes() {
    let mut sim = Sim::new(cfg(), Duration::from_millis(5));
    sim.run_for(Duration::from_millis(1));
    let (_, first) = &sim.a_log.sent[0];
    let msg = stun::parse(&first.data).unwrap();
    assert_eq!(msg.class(), StunClass::Request);
    assert_eq!(msg.username(), Some(&b"meta/Ufr:Ab12Cd34"[..]));
    assert!(msg.use_candidate());
    assert_eq!(msg.ice_controlling(), Some(sim.a.tiebreaker()));
    assert_eq!(
        msg.priority().map(|p| p >> 24),
        Some(u32::from(TYPE_PREF_PEER_REFLEXIVE))
    );
    assert!(msg.verify_integrity(b_creds().pwd.as_bytes()));
    assert!(msg.check_fingerprint());
    // Local candidates report host priorities in the order added.
    let prios: Vec<u32> = sim.a.local_candidates().map(|(_, _, p)| p).collect();
    assert_eq!(
        prios,
        vec![
            candidate_priority(126, 65535, 1),
            candidate_priority(126, 65534, 1)
        ]
    );
}

#[test]
fn business_initiated_checks_wait_for_remote_credentials() {
    let mut sim = Sim::new(cfg(), Duration::from_millis(5));
    sim.a = ControllingAgent::new(a_creds(), sim.now, cfg());
    sim.a.add_local(WaV4, addr(A4));
    assert_eq!(sim.a.poll_timeout(), None);
    sim.run_for(Duration::from_secs(25));
    assert!(sim.a_log.sent.is_empty());
    assert!(sim.a_events().is_empty());
    assert_eq!(sim.a.state(), IceState::New);
    // Meta's answer arrives: candidates and credentials; checks start now, and the connect
    // timeout counts from here.
    sim.b = LiteAgent::new(b_creds(), sim.now, cfg());
    sim.a.add_remote_candidate(addr(B4), B4_PRIO);
    sim.a.set_remote_credentials(b_creds());
    let answered = sim.now;
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.a_log.sent[0].0, answered);
    assert_eq!(
        sim.a_events(),
        vec![IceEvent::Connected {
            via: WaV4,
            remote: addr(B4)
        }]
    );
}

#[test]
fn peer_reflexive_request_answered_and_selected_pair_follows_a_moved_peer() {
    let mut sim = Sim::new(cfg(), Duration::from_millis(5));
    sim.run_for(Duration::from_secs(1));
    assert!(matches!(sim.a_events()[..], [IceEvent::Connected { .. }]));
    let (via, _) = sim.a.selected().unwrap();
    // The peer reappears at a new address on the same socket family and sends a check.
    let moved: SocketAddr = if via == WaV4 {
        addr("157.240.1.2:3479")
    } else {
        addr("[2a03:2880::2]:3479")
    };
    sim.b_addrs.retain(|(r, _)| *r != via);
    sim.b_addrs.push((via, moved));
    let sent_before = sim.a_log.sent.len();
    let req = request_to_a(&a_creds().pwd, &a_creds().ufrag, false, [7; 12]);
    sim.inject_to_a(via, moved, req);
    // Answered with XOR-MAPPED-ADDRESS = the new source, keyed by our password.
    let (_, resp) = &sim.a_log.sent[sent_before];
    assert_eq!(resp.to, moved);
    let msg = stun::parse(&resp.data).unwrap();
    assert_eq!(msg.class(), StunClass::SuccessResponse);
    assert_eq!(msg.transaction_id(), [7; 12]);
    assert_eq!(msg.xor_mapped_address(), Some(moved));
    assert!(msg.verify_integrity(a_creds().pwd.as_bytes()));
    assert!(msg.check_fingerprint());
    // A triggered check goes to the new address, succeeds, and the selection follows.
    sim.run_for(Duration::from_millis(200));
    assert!(!sim.a_checks_to(moved).is_empty());
    assert_eq!(
        sim.a_events().last(),
        Some(&IceEvent::SelectedPairChanged { via, remote: moved })
    );
    assert_eq!(sim.a.selected(), Some((via, moved)));
    assert_eq!(sim.a.stats().requests_answered, 1);
}

#[test]
fn bad_requests_are_dropped_silently_and_role_conflicts_answered_487() {
    let mut sim = Sim::new(cfg(), Duration::from_millis(5));
    sim.drop = Box::new(|_, _| true); // keep A's own checks out of the way
    let from = addr("198.51.100.7:5000");
    let before = sim.a_log.sent.len();
    sim.inject_to_a(
        WaV4,
        from,
        request_to_a("wrong-password-xxxxxxxx", &a_creds().ufrag, false, [1; 12]),
    );
    sim.inject_to_a(
        WaV4,
        from,
        request_to_a(&a_creds().pwd, "someone", false, [2; 12]),
    );
    assert!(sim.a_log.sent[before..].iter().all(|(_, s)| s.to != from));
    assert_eq!(sim.a.stats().rejected_requests, 2);
    assert_eq!(sim.a.stats().requests_answered, 0);

    sim.inject_to_a(
        WaV4,
        from,
        request_to_a(&a_creds().pwd, &a_creds().ufrag, true, [3; 12]),
    );
    let answers: Vec<_> = sim.a_log.sent[before..]
        .iter()
        .filter(|(_, s)| s.to == from)
        .collect();
    assert_eq!(answers.len(), 1);
    let msg = stun::parse(&answers[0].1.data).unwrap();
    assert_eq!(msg.class(), StunClass::ErrorResponse);
    assert_eq!(msg.error_code().map(|(c, _)| c), Some(487));
    assert!(msg.verify_integrity(a_creds().pwd.as_bytes()));
    assert_eq!(sim.a.stats().role_conflicts, 1);
}

#[test]
fn forged_and_misrouted_responses_are_ignored() {
    let mut sim = Sim::new(cfg(), Duration::from_millis(5));
    sim.a = ControllingAgent::new(a_creds(), sim.now, cfg());
    sim.a.add_local(WaV4, addr(A4));
    sim.a.add_remote_candidate(addr(B4), B4_PRIO);
    sim.a.set_remote_credentials(b_creds());
    sim.drop = Box::new(|_, _| true);
    sim.run_for(Duration::from_millis(1));
    let tid = stun::parse(&sim.a_log.sent[0].1.data)
        .unwrap()
        .transaction_id();

    // Right transaction, wrong key.
    sim.inject_to_a(
        WaV4,
        addr(B4),
        response_to_a(StunClass::SuccessResponse, tid, "forged-key", None),
    );
    assert_eq!(sim.a.stats().bad_integrity_drops, 1);
    // Right key, wrong source address.
    sim.inject_to_a(
        WaV4,
        addr("157.240.1.9:3478"),
        response_to_a(StunClass::SuccessResponse, tid, &b_creds().pwd, None),
    );
    assert_eq!(sim.a.stats().unmatched_responses, 1);
    // Right key, unknown transaction.
    sim.inject_to_a(
        WaV4,
        addr(B4),
        response_to_a(StunClass::SuccessResponse, [0; 12], &b_creds().pwd, None),
    );
    assert_eq!(sim.a.stats().unmatched_responses, 2);
    assert!(sim.a_events().is_empty());

    // The genuine response connects.
    sim.inject_to_a(
        WaV4,
        addr(B4),
        response_to_a(StunClass::SuccessResponse, tid, &b_creds().pwd, None),
    );
    assert_eq!(
        sim.a_events(),
        vec![IceEvent::Connected {
            via: WaV4,
            remote: addr(B4)
        }]
    );
    assert_eq!(sim.a.stats().responses_received, 1);
}

#[test]
fn error_responses_401_retries_487_counts_400_fails() {
    let mut sim = Sim::new(cfg(), Duration::from_millis(5));
    sim.a = ControllingAgent::new(a_creds(), sim.now, cfg());
    sim.a.add_local(WaV4, addr(A4));
    sim.a.add_remote_candidate(addr(B4), B4_PRIO);
    sim.a.set_remote_credentials(b_creds());
    sim.drop = Box::new(|_, _| true);
    sim.run_for(Duration::from_millis(1));
    let tid = |sim: &Sim| {
        stun::parse(&sim.a_log.sent.last().unwrap().1.data)
            .unwrap()
            .transaction_id()
    };
    let key = b_creds().pwd;
    // 401: Meta does not know our credentials yet; keep checking under a new transaction.
    let t = tid(&sim);
    sim.inject_to_a(
        WaV4,
        addr(B4),
        response_to_a(StunClass::ErrorResponse, t, &key, Some(401)),
    );
    sim.run_for(Duration::from_millis(100));
    assert_ne!(tid(&sim), t);
    // 487: counted, we stay controlling and keep checking.
    let t = tid(&sim);
    sim.inject_to_a(
        WaV4,
        addr(B4),
        response_to_a(StunClass::ErrorResponse, t, &key, Some(487)),
    );
    assert_eq!(sim.a.stats().role_conflicts, 1);
    sim.run_for(Duration::from_millis(600));
    let last = stun::parse(&sim.a_log.sent.last().unwrap().1.data).unwrap();
    assert_eq!(last.ice_controlling(), Some(sim.a.tiebreaker()));
    assert!(sim.a_events().is_empty());
    // 400: the only pair fails, so the agent fails now rather than at the timeout.
    let t = tid(&sim);
    sim.inject_to_a(
        WaV4,
        addr(B4),
        response_to_a(StunClass::ErrorResponse, t, &key, Some(400)),
    );
    assert_eq!(sim.a_events(), vec![IceEvent::Failed]);
    assert!(sim.now < sim.at(2_000));
    assert_eq!(sim.a.stats().error_responses, 3);
}

#[test]
fn lite_agent_follows_nominations_and_rejects_controlled_peers() {
    let now = Instant::now();
    let mut lite = LiteAgent::new(a_creds(), now, cfg());
    let mut out = VecOutbox::default();
    let check = |use_candidate: bool, controlling: bool, tid: u8| {
        let mut buf = [0u8; 256];
        let username = format!("{}:{}", a_creds().ufrag, b_creds().ufrag);
        let mut w = StunWriter::new(&mut buf, StunClass::Request, BINDING, [tid; 12]).unwrap();
        w.username(username.as_bytes())
            .unwrap()
            .priority(1)
            .unwrap();
        if controlling {
            w.ice_controlling(5).unwrap();
        } else {
            w.ice_controlled(5).unwrap();
        }
        if use_candidate {
            w.use_candidate().unwrap();
        }
        let n = w.finish(Some(a_creds().pwd.as_bytes()), true).unwrap();
        buf[..n].to_vec()
    };
    let feed = |lite: &mut LiteAgent, out: &mut VecOutbox, from: &str, data: Vec<u8>| {
        let msg = stun::parse(&data).unwrap();
        lite.handle_stun(now, SocketRef::Internal, addr(from), &msg, &data, out);
    };
    // A check without nomination is answered but selects nothing.
    feed(&mut lite, &mut out, "10.0.0.1:1000", check(false, true, 1));
    assert_eq!(out.take().len(), 1);
    assert_eq!(lite.poll_event(), None);
    // Nomination selects; a later nomination elsewhere moves the selection.
    feed(&mut lite, &mut out, "10.0.0.1:1000", check(true, true, 2));
    assert_eq!(
        lite.poll_event(),
        Some(IceEvent::Connected {
            via: SocketRef::Internal,
            remote: addr("10.0.0.1:1000")
        })
    );
    feed(&mut lite, &mut out, "10.0.0.2:1000", check(true, true, 3));
    assert_eq!(
        lite.poll_event(),
        Some(IceEvent::SelectedPairChanged {
            via: SocketRef::Internal,
            remote: addr("10.0.0.2:1000")
        })
    );
    assert_eq!(out.take().len(), 2);
    // A peer that also claims to be controlled is told 487.
    feed(&mut lite, &mut out, "10.0.0.2:1000", check(true, false, 4));
    let sent = out.take();
    let msg = stun::parse(&sent[0].data).unwrap();
    assert_eq!(msg.error_code().map(|(c, _)| c), Some(487));
    assert_eq!(lite.stats().role_conflicts, 1);
}

#[test]
fn lite_agent_fails_without_nomination() {
    let now = Instant::now();
    let mut lite = LiteAgent::new(a_creds(), now, cfg());
    let mut out = VecOutbox::default();
    assert_eq!(lite.poll_timeout(), Some(now + Duration::from_secs(10)));
    lite.handle_timeout(now + Duration::from_secs(9), &mut out);
    assert_eq!(lite.poll_event(), None);
    lite.handle_timeout(now + Duration::from_secs(10), &mut out);
    assert_eq!(lite.poll_event(), Some(IceEvent::Failed));
    assert_eq!(lite.poll_timeout(), None);
    assert!(out.sent.is_empty());
}

#[test]
fn random_credentials_use_the_ice_alphabet() {
    let a = IceCredentials::random();
    let b = IceCredentials::random();
    assert_eq!(a.ufrag.len(), 8);
    assert_eq!(a.pwd.len(), 24);
    assert_ne!(a, b);
    assert!(
        a.ufrag
            .bytes()
            .chain(a.pwd.bytes())
            .all(|c| ICE_CHARS.contains(&c))
    );
    assert!(a.usable());
    assert!(!IceCredentials::new("a:b", "x").usable());
}

#[test]
fn unusable_remote_credentials_fail_the_agent() {
    let now = Instant::now();
    let mut a = ControllingAgent::new(a_creds(), now, cfg());
    a.set_remote_credentials(IceCredentials::new("", "pwd"));
    assert_eq!(a.poll_event(), Some(IceEvent::Failed));
    assert_eq!(a.state(), IceState::Failed);
}

/// Connects the simulation and returns the selected pair.
fn connected(sim: &mut Sim) -> (SocketRef, SocketAddr) {
    sim.run_for(Duration::from_secs(1));
    assert!(matches!(sim.a_events()[..], [IceEvent::Connected { .. }]));
    sim.a.selected().unwrap()
}

#[test]
fn wrong_credentials_from_a_new_address_get_no_answer_no_check_and_no_takeover() {
    let mut sim = Sim::new(cfg(), Duration::from_millis(5));
    let (via, remote) = connected(&mut sim);
    let stranger: SocketAddr = if via == WaV4 {
        addr("198.51.100.66:4000")
    } else {
        addr("[2001:db8:66::1]:4000")
    };
    let before = sim.a_log.sent.len();
    // Wrong password; right password but a made-up ufrag; and no integrity at all.
    sim.inject_to_a(
        via,
        stranger,
        request_to_a("not-the-password-at-all", &a_creds().ufrag, false, [1; 12]),
    );
    sim.inject_to_a(
        via,
        stranger,
        request_to_a(&a_creds().pwd, "Xx99Yy88", false, [2; 12]),
    );
    let mut buf = [0u8; 128];
    let mut w = StunWriter::new(&mut buf, StunClass::Request, BINDING, [3; 12]).unwrap();
    w.username(format!("{}:{}", a_creds().ufrag, b_creds().ufrag).as_bytes())
        .unwrap()
        .priority(1)
        .unwrap()
        .ice_controlled(1)
        .unwrap();
    let n = w.finish(None, true).unwrap();
    sim.inject_to_a(via, stranger, buf[..n].to_vec());
    sim.run_for(Duration::from_secs(20));
    assert!(
        sim.a_log.sent[before..]
            .iter()
            .all(|(_, s)| s.to != stranger),
        "nothing at all goes to the stranger"
    );
    assert_eq!(sim.a.stats().rejected_requests, 3);
    assert_eq!(sim.a.selected(), Some((via, remote)));
    assert!(!sim.a.is_valid_pair(via, stranger));
    assert_eq!(sim.a_events().len(), 1, "no SelectedPairChanged");
}

#[test]
fn a_check_replayed_from_elsewhere_gets_one_answer_but_not_the_call() {
    // Someone on the path copies a genuine check (valid integrity) and sends it from their
    // own address: it is answered (integrity is all a request can prove), and A checks the
    // new address, but only the real peer can answer that check with the peer's password.
    let mut sim = Sim::new(cfg(), Duration::from_millis(5));
    let (via, remote) = connected(&mut sim);
    let thief: SocketAddr = if via == WaV4 {
        addr("198.51.100.77:4000")
    } else {
        addr("[2001:db8:77::1]:4000")
    };
    let before = sim.a_log.sent.len();
    sim.inject_to_a(
        via,
        thief,
        request_to_a(&a_creds().pwd, &a_creds().ufrag, false, [9; 12]),
    );
    // The thief answers A's check, but it can only sign with a key it knows.
    sim.run_for(Duration::from_millis(30));
    let check = sim.a_log.sent[before..]
        .iter()
        .find(|(_, s)| s.to == thief && stun::parse(&s.data).unwrap().class() == StunClass::Request)
        .map(|(_, s)| stun::parse(&s.data).unwrap().transaction_id())
        .expect("a triggered check to the new address");
    sim.inject_to_a(
        via,
        thief,
        response_to_a(StunClass::SuccessResponse, check, "guessed-key", None),
    );
    sim.run_for(Duration::from_secs(15));
    assert_eq!(sim.a.selected(), Some((via, remote)), "the call stays put");
    assert!(!sim.a.is_valid_pair(via, thief));
    assert_eq!(sim.a.stats().bad_integrity_drops, 1);
    assert_eq!(sim.a_events().len(), 1);
    // The check to the thief gives up at the connect timeout: a bounded number of datagrams.
    let to_thief = sim.a_checks_to(thief).len();
    assert!(
        (2..=30).contains(&to_thief),
        "checks to the thief: {to_thief}"
    );
    // Consent with the real peer is unaffected.
    assert_eq!(sim.a.state(), IceState::Connected);
}

#[test]
fn a_moved_peer_gets_through_a_pair_table_full_of_dead_pairs() {
    let mut sim = Sim::new(cfg(), Duration::from_millis(5));
    let (via, _) = connected(&mut sim);
    let v4 = via == WaV4;
    // Sixteen replayed checks from addresses nobody answers fill the table; their checks
    // fail at the connect timeout.
    for i in 0..20u8 {
        let from = if v4 {
            addr(&format!("198.51.100.{}:4000", 100 + i))
        } else {
            addr(&format!("[2001:db8:99::{}]:4000", 100 + i))
        };
        sim.inject_to_a(
            via,
            from,
            request_to_a(&a_creds().pwd, &a_creds().ufrag, false, [i; 12]),
        );
    }
    sim.run_for(Duration::from_secs(12));
    // The real peer moves and checks from its new address.
    let moved = if v4 {
        addr("157.240.1.2:3479")
    } else {
        addr("[2a03:2880::2]:3479")
    };
    sim.b_addrs.retain(|(r, _)| *r != via);
    sim.b_addrs.push((via, moved));
    sim.inject_to_a(
        via,
        moved,
        request_to_a(&a_creds().pwd, &a_creds().ufrag, false, [0xee; 12]),
    );
    sim.run_for(Duration::from_millis(300));
    assert_eq!(sim.a.selected(), Some((via, moved)));
    assert_eq!(
        sim.a_events().last(),
        Some(&IceEvent::SelectedPairChanged { via, remote: moved })
    );
    // B follows the renomination: both ends use the new path.
    sim.run_for(Duration::from_secs(6));
    assert_eq!(
        sim.b.selected().map(|(_, a)| a),
        Some(addr(if v4 { A4 } else { A6 }))
    );
    assert_eq!(sim.a.state(), IceState::Connected);
}
