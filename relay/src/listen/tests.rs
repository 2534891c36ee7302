//! The listen-in session against a supervisor's browser in simulated time: the browser runs
//! full ICE as the controlling agent with USE-CANDIDATE and DTLS as the client (built from the
//! relay's own ICE, DTLS and SRTP modules, each tested on its own), and unprotects what the
//! session sends on the two tracks.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::testing::{SUPERVISOR, Supervisor};
use super::*;
use crate::dtls::DtlsIdentity;
use crate::ice::IceCredentials;
use crate::net::{Sent, VecOutbox};
use crate::wire::rtp;

const FORK: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)), 31000);
const FORK_SOCKET: SocketRef = SocketRef::new(3);

struct Sim {
    now: Instant,
    session: ListenSession,
    sup: Supervisor,
    to_sup: VecOutbox,
    to_fork: VecOutbox,
    changes: Vec<ListenChange>,
}

impl Sim {
    fn new(cfg: &CallConfig) -> Sim {
        let now = Instant::now();
        let mut sup = Supervisor::new(now);
        let offer = sup.offer();
        let identity = Arc::new(DtlsIdentity::generate().expect("relay certificate"));
        let session = ListenSession::new(
            &offer,
            ListenParams {
                socket: FORK_SOCKET,
                local: FORK,
                advertised: FORK,
                identity,
                cfg,
                mode: ListenMode::Listen,
            },
            now,
        )
        .expect("the session answers Chrome's offer");
        sup.accept(session.answer(), now)
            .expect("the browser takes the answer");
        Sim {
            now,
            session,
            sup,
            to_sup: VecOutbox::default(),
            to_fork: VecOutbox::default(),
            changes: Vec::new(),
        }
    }

    fn deliver(&mut self) {
        for _ in 0..100 {
            let to_sup = self.to_sup.take();
            let to_fork = self.to_fork.take();
            if to_sup.is_empty() && to_fork.is_empty() {
                break;
            }
            for Sent { via, to, mut data } in to_sup {
                assert_eq!(via, FORK_SOCKET, "everything leaves on the fork's socket");
                assert_eq!(to, SUPERVISOR);
                self.sup
                    .handle(self.now, FORK, &mut data, &mut self.to_fork);
            }
            for Sent { to, mut data, .. } in to_fork {
                assert_eq!(to, FORK);
                if self.sup.gone {
                    continue;
                }
                self.session
                    .handle_datagram(self.now, SUPERVISOR, &mut data, &mut self.to_sup);
            }
        }
        while let Some(c) = self.session.poll_change() {
            self.changes.push(c);
        }
    }

    /// Run both sides' timers until `d` has passed.
    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.deliver();
            let next = [self.session.poll_timeout(), self.sup.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next.filter(|n| *n <= end) else {
                self.now = end;
                return;
            };
            self.now = self.now.max(next);
            if self.session.poll_timeout().is_some_and(|t| t <= self.now) {
                self.session.handle_timeout(self.now, &mut self.to_sup);
            }
            if self.sup.poll_timeout().is_some_and(|t| t <= self.now) {
                self.sup.handle_timeout(self.now, &mut self.to_fork);
            }
        }
    }

    /// One packet of the call in direction `dir` through the fork.
    fn forward(&mut self, dir: Direction, ssrc: u32, seq: u16, payload: &[u8]) {
        let mut pkt = vec![0u8; 12 + payload.len()];
        rtp::write_header(
            &mut pkt,
            &rtp::RtpHeaderFields {
                marker: false,
                payload_type: 107,
                sequence: seq,
                timestamp: u32::from(seq) * 960,
                ssrc,
            },
        )
        .unwrap();
        pkt[12..].copy_from_slice(payload);
        let hdr = rtp::parse(&pkt).unwrap();
        self.session
            .forward(dir, self.now, &hdr, &pkt, &mut self.to_sup);
        self.deliver();
    }
}

fn ssrcs_in(answer: &str) -> Vec<u32> {
    answer
        .lines()
        .filter_map(|l| l.strip_prefix("a=ssrc:"))
        .filter(|l| l.contains(" cname:"))
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn both_tracks_reach_the_supervisor_with_their_own_ssrc_and_continuous_numbering() {
    let cfg = CallConfig::default();
    let mut s = Sim::new(&cfg);
    assert_eq!(s.session.status().state, ListenState::Connecting);
    // Before the browser connects, the call's packets are counted, never queued.
    s.forward(Direction::Consumer, 0xaaaa, 1, b"early");
    assert_eq!(s.session.status().dropped_packets, 1);

    s.run_for(Duration::from_millis(500));
    assert_eq!(s.changes, [ListenChange::Connected]);
    let st = s.session.status();
    assert_eq!(st.state, ListenState::Live);
    assert_eq!(st.remote, Some(SUPERVISOR));

    let [consumer, agent] = ssrcs_in(s.session.answer())[..] else {
        panic!("two SSRCs in the answer");
    };
    for i in 0..50u16 {
        s.now += Duration::from_millis(20);
        s.forward(
            Direction::Consumer,
            0xaaaa,
            100 + i,
            &[0x78, i as u8, 1, 2, 3],
        );
        // The agent changes SSRC halfway (a transfer): the track does not.
        let (agent_src, seq) = if i < 25 {
            (0xbbbb, 5000 + i)
        } else {
            (0xcccc, 9 + i)
        };
        s.forward(Direction::Agent, agent_src, seq, &[0x78, i as u8, 9]);
    }
    let got: Vec<rtp::RtpHeader> = s.sup.got.iter().map(|p| rtp::parse(p).unwrap()).collect();
    assert_eq!(got.len(), 100);
    for ssrc in [consumer, agent] {
        let track: Vec<&rtp::RtpHeader> = got.iter().filter(|h| h.ssrc == ssrc).collect();
        assert_eq!(track.len(), 50, "50 packets on track {ssrc:#x}");
        assert!(track.iter().all(|h| h.payload_type == 111), "Chrome's PT");
        for w in track.windows(2) {
            assert_eq!(w[1].sequence, w[0].sequence.wrapping_add(1));
        }
    }
    // Payloads are untouched.
    let first_agent = s
        .sup
        .got
        .iter()
        .find(|p| rtp::parse(p).unwrap().ssrc == agent);
    assert_eq!(&first_agent.unwrap()[12..], &[0x78, 0, 9]);
    let st = s.session.status();
    assert_eq!((st.consumer_packets, st.agent_packets), (50, 50));
    assert!(s.sup.trouble.is_empty(), "{:?}", s.sup.trouble);
}

#[test]
fn consent_keeps_it_alive_and_a_gone_supervisor_stops_it_without_touching_the_call() {
    let cfg = CallConfig::default();
    let mut s = Sim::new(&cfg);
    s.run_for(Duration::from_secs(60));
    assert_eq!(
        s.changes,
        [ListenChange::Connected],
        "consent checks keep it"
    );
    assert!(!s.session.is_stopped());

    // The tab closes without a word.
    s.sup.gone = true;
    s.run_for(cfg.webrtc_idle_timeout + Duration::from_secs(3));
    assert_eq!(s.changes, [ListenChange::Connected, ListenChange::Stopped]);
    let st = s.session.status();
    assert_eq!(st.state, ListenState::Stopped);
    assert!(st.stop_reason.unwrap().contains("supervisor gone"));
    assert_eq!(s.session.poll_timeout(), None, "no timers once stopped");
    // The call's packets are counted and go nowhere.
    s.forward(Direction::Consumer, 1, 1, b"x");
    assert!(s.to_sup.sent.is_empty());
}

#[test]
fn no_nomination_stops_it_after_the_connect_timeout() {
    let cfg = CallConfig::default();
    let mut s = Sim::new(&cfg);
    s.sup.gone = true;
    s.run_for(cfg.ice_connect_timeout - Duration::from_millis(1));
    assert!(!s.session.is_stopped());
    s.run_for(Duration::from_secs(1));
    assert_eq!(s.changes, [ListenChange::Stopped]);
    assert!(
        s.session
            .status()
            .stop_reason
            .unwrap()
            .contains("no ICE nomination")
    );
}

#[test]
fn stop_closes_dtls_toward_the_browser_once() {
    let cfg = CallConfig::default();
    let mut s = Sim::new(&cfg);
    s.run_for(Duration::from_millis(500));
    s.session.stop(STOPPED_BY_REQUEST, &mut s.to_sup);
    s.session.stop("again", &mut s.to_sup);
    s.deliver();
    assert!(s.sup.closed, "the browser got close_notify");
    assert_eq!(s.changes, [ListenChange::Connected, ListenChange::Stopped]);
    assert_eq!(
        s.session.status().stop_reason.as_deref(),
        Some(STOPPED_BY_REQUEST)
    );
}

#[test]
fn checks_with_the_wrong_password_are_refused() {
    let cfg = CallConfig::default();
    let mut s = Sim::new(&cfg);
    s.sup
        .ice
        .set_remote_credentials(IceCredentials::new("nope", "wrongPasswordOf24Chars00"));
    s.run_for(Duration::from_secs(2));
    assert_eq!(s.session.status().state, ListenState::Connecting);
    assert_eq!(s.session.status().remote, None);
}
