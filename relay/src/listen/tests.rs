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
use crate::wire::rtp::{self, Pt, RtpTs, Seq, Ssrc};

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
                pt: Pt::new(107),
                seq: Seq::new(seq),
                ts: RtpTs::new(u32::from(seq) * 960),
                ssrc: Ssrc::new(ssrc),
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
        let track: Vec<&rtp::RtpHeader> = got.iter().filter(|h| h.ssrc.get() == ssrc).collect();
        assert_eq!(track.len(), 50, "50 packets on track {ssrc:#x}");
        assert!(track.iter().all(|h| h.pt.get() == 111), "Chrome's PT");
        for w in track.windows(2) {
            assert_eq!(w[1].seq, w[0].seq.next());
        }
    }
    // Payloads are untouched.
    let first_agent = s
        .sup
        .got
        .iter()
        .find(|p| rtp::parse(p).unwrap().ssrc.get() == agent);
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
        .transport
        .ice
        .set_remote_credentials(IceCredentials::new("nope", "wrongPasswordOf24Chars00"));
    s.run_for(Duration::from_secs(2));
    assert_eq!(s.session.status().state, ListenState::Connecting);
    assert_eq!(s.session.status().remote, None);
}

// --- A media server (SIPREC-like): plain RTP or SDES-SRTP, one stream per m-line. ---

const SRS_CONSUMER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)), 40000);
const SRS_AGENT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11)), 40002);

fn rtp_session(offer: &str, cfg: &CallConfig, now: Instant) -> ListenSession {
    let identity = Arc::new(DtlsIdentity::generate().expect("relay certificate"));
    ListenSession::new(
        offer,
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
    .expect("the session answers the media server's offer")
}

/// An RTP packet as the call forwards it (plaintext, PT 107).
fn rtp_packet(ssrc: u32, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut pkt = vec![0u8; 12 + payload.len()];
    rtp::write_header(
        &mut pkt,
        &rtp::RtpHeaderFields {
            marker: false,
            pt: Pt::new(107),
            seq: Seq::new(seq),
            ts: RtpTs::new(u32::from(seq) * 960),
            ssrc: Ssrc::new(ssrc),
        },
    )
    .unwrap();
    pkt[12..].copy_from_slice(payload);
    pkt
}

#[test]
fn a_media_server_gets_each_direction_on_its_own_stream_at_once_and_a_bye_at_the_end() {
    let cfg = CallConfig::default();
    let mut now = Instant::now();
    let mut s = rtp_session(sdp::tests::MEDIA_SERVER_OFFER, &cfg, now);
    // Nothing to negotiate: live from the answer on, and no timers.
    assert_eq!(s.poll_change(), Some(ListenChange::Connected));
    assert_eq!(s.poll_change(), None);
    let st = s.status();
    assert_eq!(st.state, ListenState::Live);
    assert_eq!(st.remote, Some(SRS_CONSUMER));
    assert_eq!(s.poll_timeout(), None);
    let [consumer, agent] = ssrcs_in(s.answer())[..] else {
        panic!("two SSRCs in the answer:\n{}", s.answer());
    };

    let mut out = VecOutbox::default();
    for i in 0..50u16 {
        now += Duration::from_millis(20);
        let c = rtp_packet(0xaaaa, 100 + i, &[0x78, i as u8, 1]);
        s.forward(
            Direction::Consumer,
            now,
            &rtp::parse(&c).unwrap(),
            &c,
            &mut out,
        );
        // A transfer halfway: the agent's SSRC and numbering jump, the stream does not.
        let (src, seq) = if i < 25 {
            (0xbbbb, 5000 + i)
        } else {
            (0xcccc, 9 + i)
        };
        let a = rtp_packet(src, seq, &[0x78, i as u8, 9]);
        s.forward(
            Direction::Agent,
            now,
            &rtp::parse(&a).unwrap(),
            &a,
            &mut out,
        );
    }
    let sent = out.take();
    assert_eq!(sent.len(), 100);
    assert!(sent.iter().all(|d| d.via == FORK_SOCKET));
    for (to, ssrc, last) in [(SRS_CONSUMER, consumer, 1u8), (SRS_AGENT, agent, 9)] {
        let stream: Vec<&Sent> = sent.iter().filter(|d| d.to == to).collect();
        assert_eq!(stream.len(), 50, "50 packets to {to}");
        let hdrs: Vec<rtp::RtpHeader> = stream
            .iter()
            .map(|d| rtp::parse(&d.data).unwrap())
            .collect();
        assert!(
            hdrs.iter()
                .all(|h| h.ssrc.get() == ssrc && h.pt.get() == 96)
        );
        for w in hdrs.windows(2) {
            assert_eq!(w[1].seq, w[0].seq.next());
            assert_eq!(w[1].ts.ticks_since(w[0].ts), 960);
        }
        // Plain RTP: the payload as the call forwarded it.
        assert_eq!(&stream[7].data[12..], &[0x78, 7, last]);
    }
    let st = s.status();
    assert_eq!(
        (st.consumer_packets, st.agent_packets, st.dropped_packets),
        (50, 50, 0)
    );

    // Its receiver reports are welcome and unread; strangers' datagrams are counted.
    assert!(s.knows_source(SRS_AGENT));
    let rtcp_from = SocketAddr::new(SRS_CONSUMER.ip(), SRS_CONSUMER.port() + 1);
    assert!(s.knows_source(rtcp_from));
    assert!(!s.knows_source(SUPERVISOR));
    let mut rr = [
        0x81u8, 201, 0, 7, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0,
    ];
    s.handle_datagram(now, rtcp_from, &mut rr, &mut out);
    assert_eq!(s.status().dropped_packets, 0);
    s.handle_datagram(now, SUPERVISOR, &mut rr, &mut out);
    assert_eq!(s.status().dropped_packets, 1);
    assert!(out.sent.is_empty(), "nothing answered");

    s.stop(STOPPED_BY_REQUEST, &mut out);
    s.stop("again", &mut out);
    assert_eq!(s.poll_change(), Some(ListenChange::Stopped));
    assert_eq!(s.poll_change(), None);
    let byes = out.take();
    // No rtcp-mux on the consumer's line: its RTCP port is the next one.
    let to: Vec<SocketAddr> = byes.iter().map(|d| d.to).collect();
    assert_eq!(to, [rtcp_from, SRS_AGENT], "one BYE per stream, once");
    for (d, ssrc) in byes.iter().zip([consumer, agent]) {
        assert_eq!(d.data[1], 203, "BYE");
        assert_eq!(u32::from_be_bytes(d.data[4..8].try_into().unwrap()), ssrc);
    }
    // Stopped: the call's packets are counted and go nowhere.
    let c = rtp_packet(0xaaaa, 1, b"x");
    s.forward(
        Direction::Consumer,
        now,
        &rtp::parse(&c).unwrap(),
        &c,
        &mut out,
    );
    assert!(out.sent.is_empty());
    assert_eq!(s.status().state, ListenState::Stopped);
}

#[test]
fn an_sdes_media_server_decrypts_both_streams_with_the_keys_in_the_answer() {
    use crate::srtp::{SrtpContext, SrtpProfile, parse_sdes_inline};
    let offer = sdp::tests::MEDIA_SERVER_OFFER
        .replace("RTP/AVP 96", "RTP/SAVP 96")
        .replace(
            "a=label:1\r\n",
            "a=label:1\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 \
             inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n",
        )
        .replace(
            "a=label:2\r\n",
            "a=label:2\r\na=crypto:1 AEAD_AES_128_GCM \
             inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGw==\r\n",
        );
    let cfg = CallConfig::default();
    let mut now = Instant::now();
    let mut s = rtp_session(&offer, &cfg, now);
    // The relay's key per stream, as the media server reads it from the answer.
    let mut rx: Vec<SrtpContext> = s
        .answer()
        .lines()
        .filter_map(|l| l.strip_prefix("a=crypto:1 "))
        .map(|l| {
            let (suite, key) = l.split_once(' ').unwrap();
            let profile = SrtpProfile::from_sdes_name(suite).unwrap();
            SrtpContext::new(&parse_sdes_inline(profile, key).unwrap()).unwrap()
        })
        .collect();
    assert_eq!(rx.len(), 2, "a key per stream in\n{}", s.answer());
    let mut out = VecOutbox::default();
    for i in 0..10u16 {
        now += Duration::from_millis(20);
        let c = rtp_packet(0xaaaa, i, &[0x78, i as u8]);
        s.forward(
            Direction::Consumer,
            now,
            &rtp::parse(&c).unwrap(),
            &c,
            &mut out,
        );
        let a = rtp_packet(0xbbbb, i, &[0x79, i as u8]);
        s.forward(
            Direction::Agent,
            now,
            &rtp::parse(&a).unwrap(),
            &a,
            &mut out,
        );
    }
    let sent = out.take();
    assert_eq!(sent.len(), 20);
    for mut d in sent {
        let (ctx, first) = if d.to == SRS_CONSUMER {
            (&mut rx[0], 0x78)
        } else {
            (&mut rx[1], 0x79)
        };
        let n = ctx
            .unprotect_rtp(&mut d.data)
            .expect("authenticates with the answer's key");
        assert_eq!(n, 14);
        assert_eq!(d.data[12], first);
    }
    // The BYEs are SRTCP under the same keys.
    s.stop(STOPPED_BY_REQUEST, &mut out);
    for mut d in out.take() {
        let ctx = if d.to.port() == SRS_CONSUMER.port() + 1 {
            &mut rx[0]
        } else {
            &mut rx[1]
        };
        ctx.unprotect_rtcp(&mut d.data).expect("an authentic BYE");
    }
}
