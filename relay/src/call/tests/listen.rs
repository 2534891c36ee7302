//! A supervisor's live listen-in on a real call in simulated time: Meta (SDES) and a media
//! server talk through the call; the supervisor's browser ([`Supervisor`]) receives both
//! directions on its own socket, across a transfer, and the fork ends with the call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::{
    CallEventKind, EndCause, InternalKind, InternalLegSpec, ListenChange, ListenMode, ListenState,
    SourcePolicy,
};
use crate::call::fork::ListenRequest;
use crate::call::testing::{
    self, INTERNAL_OPUS_PT, MEDIA_SERVER, META, META_OPUS_PT, MetaPeer, RELAY_INTERNAL, RELAY_WA,
    RtpSource,
};
use crate::call::{Advertised, Call, CallConfig, LocalSockets};
use crate::dtls::DtlsIdentity;
use crate::listen::testing::{self as sup_testing, FORK_ADDR, Supervisor};
use crate::net::{SocketRef, VecOutbox};
use crate::srtp::SrtpProfile;
use crate::wire::rtp;

const LISTEN: SocketRef = SocketRef::new(3);
const PTIME: Duration = Duration::from_millis(20);
const AGENT_B: std::net::SocketAddr = std::net::SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 20, 0, 77)),
    30000,
);

struct Net {
    now: Instant,
    call: Call,
    meta: MetaPeer,
    consumer: RtpSource,
    agent: RtpSource,
    agent_from: std::net::SocketAddr,
    sup: Supervisor,
    from_call: VecOutbox,
    from_sup: VecOutbox,
    events: Vec<CallEventKind>,
}

impl Net {
    /// An SDES call with its gate open and a supervisor connected to its listen-in.
    fn listened() -> Net {
        let t0 = Instant::now();
        let (mut meta, offer) = MetaPeer::sdes(SrtpProfile::Aes128CmHmacSha1_80);
        let identity = Arc::new(DtlsIdentity::generate().expect("relay certificate"));
        let created = testing::create_call(&offer, CallConfig::default(), identity, t0).unwrap();
        meta.accept_answer(&created.whatsapp_sdp, t0).unwrap();
        let mut call = created.call;
        let now = testing::establish(&mut call, &mut meta, t0, Duration::from_secs(1)).unwrap();
        let mut from_call = VecOutbox::default();
        call.open_gate(now, &mut from_call);
        let mut net = Net {
            now,
            call,
            meta,
            consumer: RtpSource::new(0x1111, META_OPUS_PT, 100, 0),
            agent: RtpSource::new(0x2222, INTERNAL_OPUS_PT, 500, 0),
            agent_from: MEDIA_SERVER,
            sup: Supervisor::new(now),
            from_call,
            from_sup: VecOutbox::default(),
            events: Vec::new(),
        };
        let offer = net.sup.offer();
        let status = net.start(&offer).expect("listen-in starts");
        assert_eq!(status.state, ListenState::Connecting);
        net.sup.accept(&status.answer_sdp, net.now).unwrap();
        net.now = sup_testing::connect(
            &mut net.call,
            &mut net.sup,
            LISTEN,
            net.now,
            Duration::from_secs(2),
        )
        .unwrap();
        net.collect();
        net
    }

    fn start(&mut self, offer: &str) -> Result<crate::api::ListenStatus, crate::api::ApiError> {
        let r = self.call.listen(
            ListenRequest::Start {
                offer_sdp: offer.to_string(),
                mode: ListenMode::Listen,
                socket: LISTEN,
                local: FORK_ADDR,
                advertised: FORK_ADDR,
            },
            self.now,
            &mut self.from_call,
        );
        self.collect();
        r.map(|s| s.expect("a status")).map_err(Into::into)
    }

    fn collect(&mut self) {
        while let Some(e) = self.call.poll_event() {
            self.events.push(e);
        }
    }

    fn listen_changes(&self) -> Vec<(ListenChange, Option<String>)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                CallEventKind::Listen { change, status } => {
                    Some((*change, status.stop_reason.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// `n` packet times of audio both ways, the supervisor's browser and the timers running.
    fn talk(&mut self, n: usize) {
        for _ in 0..n {
            self.now += PTIME;
            let mut b = [0u8; 1500];
            let len = self.consumer.write_next(&mut b, 120);
            let len = self.meta.protect_rtp(&mut b, len).unwrap();
            let now = self.now;
            self.call
                .handle_datagram(now, SocketRef::WaV4, META, &mut b, len, &mut self.from_call);
            let mut b = [0u8; 1500];
            let len = self.agent.write_next(&mut b, 90);
            let from = self.agent_from;
            self.call.handle_datagram(
                now,
                SocketRef::Internal,
                from,
                &mut b,
                len,
                &mut self.from_call,
            );
            if self.sup.poll_timeout().is_some_and(|t| t <= now) {
                self.sup.handle_timeout(now, &mut self.from_sup);
            }
            if self.call.poll_timeout().is_some_and(|t| t <= now) {
                self.call.handle_timeout(now, &mut self.from_call);
            }
            sup_testing::pump(
                &mut self.call,
                &mut self.sup,
                LISTEN,
                now,
                &mut self.from_call,
                &mut self.from_sup,
            );
            self.collect();
        }
    }

    /// What the supervisor got on each track (consumer, agent), by the answer's SSRCs.
    fn tracks(&self, answer: &str) -> [Vec<rtp::RtpHeader>; 2] {
        let ssrcs: Vec<u32> = answer
            .lines()
            .filter_map(|l| l.strip_prefix("a=ssrc:"))
            .filter(|l| l.contains(" cname:"))
            .map(|l| l.split(' ').next().unwrap().parse().unwrap())
            .collect();
        let got: Vec<rtp::RtpHeader> = self
            .sup
            .got
            .iter()
            .map(|p| rtp::parse(p).unwrap())
            .collect();
        [0, 1].map(|i| {
            got.iter()
                .filter(|h| h.ssrc.get() == ssrcs[i])
                .cloned()
                .collect()
        })
    }
}

fn continuous(track: &[rtp::RtpHeader]) -> bool {
    track.windows(2).all(|w| w[1].seq == w[0].seq.next())
}

#[test]
fn listen_in_hears_both_sides_across_a_transfer_and_ends_with_the_call() {
    let mut net = Net::listened();
    let answer = net
        .call
        .listen(ListenRequest::Status, net.now, &mut VecOutbox::default());
    let answer = answer.unwrap().unwrap().answer_sdp;
    net.talk(50);
    let [c, a] = net.tracks(&answer);
    assert_eq!((c.len(), a.len()), (50, 50), "every packet, both ways");
    assert!(continuous(&c) && continuous(&a));

    // Transfer to agent B: new SSRC and numbering from a new address; the agent track goes on.
    let b_sdp = testing::internal_sdp()
        .replace(&MEDIA_SERVER.ip().to_string(), &AGENT_B.ip().to_string())
        .replace(
            &MEDIA_SERVER.port().to_string(),
            &AGENT_B.port().to_string(),
        );
    net.call
        .replace_internal_leg(
            &InternalLegSpec {
                kind: InternalKind::PlainRtp,
                remote_sdp: Some(b_sdp),
                source: SourcePolicy::Strict,
            },
            LocalSockets {
                wa_v4: Some(RELAY_WA),
                wa_v6: None,
                internal: RELAY_INTERNAL,
            },
            Advertised {
                wa_v4: Some(RELAY_WA.ip()),
                wa_v6: None,
                internal: RELAY_INTERNAL.ip(),
            },
            net.now,
            &mut net.from_call,
        )
        .expect("transfer");
    net.agent = RtpSource::new(0x3333, INTERNAL_OPUS_PT, 40_000, 7_777_777);
    net.agent_from = AGENT_B;
    net.talk(50);
    let [c, a] = net.tracks(&answer);
    assert_eq!(c.len(), 100);
    assert!(
        a.len() >= 95,
        "B's audio reaches the supervisor: {}",
        a.len()
    );
    assert!(
        continuous(&c) && continuous(&a),
        "one stream per track across the transfer"
    );
    assert!(net.sup.trouble.is_empty(), "{:?}", net.sup.trouble);

    // The call ends: the listen-in stops first, with the call's cause.
    net.call
        .terminate(net.now, EndCause::Terminated, &mut net.from_call);
    net.collect();
    let changes = net.listen_changes();
    assert_eq!(
        changes,
        [
            (ListenChange::Started, None),
            (ListenChange::Connected, None),
            (ListenChange::Stopped, Some("terminated".into())),
        ]
    );
    let stopped_at = net.events.iter().position(|e| {
        matches!(
            e,
            CallEventKind::Listen {
                change: ListenChange::Stopped,
                ..
            }
        )
    });
    let ended_at = net
        .events
        .iter()
        .position(|e| matches!(e, CallEventKind::Ended { .. }));
    assert!(stopped_at < ended_at, "Stopped before Ended");
}

#[test]
fn start_is_idempotent_a_new_offer_replaces_and_stop_repeats() {
    let mut net = Net::listened();
    let offer = net.sup.offer();
    let again = net.start(&offer).unwrap();
    assert_eq!(
        again.state,
        ListenState::Live,
        "the same offer: the running session"
    );
    assert_eq!(net.listen_changes().len(), 2, "no new event for a repeat");

    // The supervisor reloads: a new offer (new ICE credentials) replaces the session.
    let mut reloaded = Supervisor::new(net.now);
    reloaded
        .transport
        .ice
        .set_remote_credentials(crate::ice::IceCredentials::new("x", "y"));
    let fresh = net
        .start(&reloaded.offer().replace("Wq7b", "Zz9y"))
        .unwrap();
    assert_eq!(fresh.state, ListenState::Connecting);
    assert_eq!(
        net.listen_changes()[2..],
        [
            (
                ListenChange::Stopped,
                Some("replaced by a new offer".into())
            ),
            (ListenChange::Started, None),
        ]
    );
    // Bad offers are refused with the reason, and leave the running session alone.
    let e = net.start("v=0\r\n").unwrap_err();
    assert!(e.to_string().contains("two audio m-lines"), "{e}");

    let stop = |net: &mut Net| {
        let r = net
            .call
            .listen(ListenRequest::Stop, net.now, &mut net.from_call);
        net.collect();
        r.unwrap().unwrap()
    };
    let first = stop(&mut net);
    assert_eq!(first.state, ListenState::Stopped);
    assert_eq!(first.stop_reason.as_deref(), Some("stopped by request"));
    assert_eq!(stop(&mut net), first, "a repeated stop answers the same");
    // The call never noticed.
    net.talk(5);
    assert!(!net.call.is_ended());
}

/// A media server takes over from the browser with an `RTP/AVP` offer (SIPREC-like): the call
/// sends each direction from the fork's socket to the address its m-line names, live at once;
/// the server's RTCP on the fork's socket is taken quietly; StopListen sends a BYE per stream.
#[test]
fn a_media_server_listens_over_plain_rtp_on_the_forks_socket() {
    let mut net = Net::listened();
    let offer = crate::listen::sdp::tests::MEDIA_SERVER_OFFER;
    let status = net
        .start(offer)
        .expect("the media server's offer is answered");
    assert_eq!(status.state, ListenState::Live, "nothing to negotiate");
    assert!(status.answer_sdp.contains("m=audio 31000 RTP/AVP 96\r\n"));
    let consumer_to: std::net::SocketAddr = "192.0.2.10:40000".parse().unwrap();
    let agent_to: std::net::SocketAddr = "192.0.2.11:40002".parse().unwrap();
    // The browser's session gave way (DTLS close_notify to it); the server's is Started and
    // Connected at once.
    let changes: Vec<ListenChange> = net.listen_changes()[2..].iter().map(|c| c.0).collect();
    assert_eq!(
        changes,
        [
            ListenChange::Stopped,
            ListenChange::Started,
            ListenChange::Connected
        ]
    );
    net.from_call.take();

    let mut to_server = Vec::new();
    for _ in 0..25 {
        net.now += PTIME;
        let now = net.now;
        let mut b = [0u8; 1500];
        let len = net.consumer.write_next(&mut b, 120);
        let len = net.meta.protect_rtp(&mut b, len).unwrap();
        net.call
            .handle_datagram(now, SocketRef::WaV4, META, &mut b, len, &mut net.from_call);
        let mut b = [0u8; 1500];
        let len = net.agent.write_next(&mut b, 90);
        let from = net.agent_from;
        net.call.handle_datagram(
            now,
            SocketRef::Internal,
            from,
            &mut b,
            len,
            &mut net.from_call,
        );
        to_server.extend(net.from_call.take().into_iter().filter(|d| d.via == LISTEN));
    }
    for (to, len) in [(consumer_to, 12 + 120), (agent_to, 12 + 90)] {
        let got: Vec<&crate::net::Sent> = to_server.iter().filter(|d| d.to == to).collect();
        assert_eq!(got.len(), 25, "every packet to {to}");
        assert!(
            got.iter().all(|d| d.data.len() == len),
            "plain RTP, payload untouched"
        );
        let hdrs: Vec<rtp::RtpHeader> = got.iter().map(|d| rtp::parse(&d.data).unwrap()).collect();
        assert!(continuous(&hdrs) && hdrs.iter().all(|h| h.pt.get() == 96));
    }
    assert_eq!(to_server.len(), 50, "nothing else on the fork's socket");

    // A receiver report from the server's RTCP port reaches the fork, counted nowhere.
    let before = net.call.info();
    let mut rr = [0u8; 8];
    rr[..4].copy_from_slice(&[0x80, 201, 0, 1]);
    let rtcp_from = std::net::SocketAddr::new(consumer_to.ip(), consumer_to.port() + 1);
    net.call
        .handle_datagram(net.now, LISTEN, rtcp_from, &mut rr, 8, &mut net.from_call);
    assert!(net.from_call.take().is_empty());
    let after = net.call.info();
    assert_eq!(
        before.whatsapp.dropped + before.internal.dropped,
        after.whatsapp.dropped + after.internal.dropped
    );

    let stopped = net
        .call
        .listen(ListenRequest::Stop, net.now, &mut net.from_call)
        .unwrap()
        .unwrap();
    assert_eq!(stopped.state, ListenState::Stopped);
    assert_eq!((stopped.consumer_packets, stopped.agent_packets), (25, 25));
    let byes: Vec<std::net::SocketAddr> = net
        .from_call
        .take()
        .into_iter()
        .filter(|d| d.via == LISTEN && d.data[1] == 203)
        .map(|d| d.to)
        .collect();
    assert_eq!(byes, [rtcp_from, agent_to]);
    net.talk(5);
    assert!(!net.call.is_ended());
}
