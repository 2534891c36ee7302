//! Transfer to another agent (ReplaceInternalLeg) in simulated time: a real call between Meta
//! (ICE-lite + DTLS) and agent A, then replaced by agent B at another address.
//!
//! The shared [`super::harness::Sim`] knows one media server only, so this file drives its own
//! small network with two: every datagram the call sends is routed by destination (Meta, A, B)
//! and recorded as its receiver saw it (decrypted where it is SRTP).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::harness::{PAYLOAD_LEN, PTIME, Rtp, assert_continuous, ms, rtcp_types};
use crate::api::{ApiError, CallEventKind, EndCause, InternalKind, InternalLegSpec, SourcePolicy};
use crate::call::stats::DropReason;
use crate::call::testing::{
    self, INTERNAL_OPUS_PT, MEDIA_SERVER, META, MetaPeer, RELAY_INTERNAL, RELAY_WA, Received,
    RtpSource,
};
use crate::call::{Advertised, Call, CallConfig, LocalSockets};
use crate::dtls::DtlsIdentity;
use crate::net::{SocketRef, VecOutbox};
use crate::srtp::{self, MasterKey, SessionKeys, SrtpProfile, SrtpSession};
use crate::wire::classify::{PacketKind, classify};
use crate::wire::rtp;

/// Agent B's media server: another host, other payload types than A's.
const AGENT_B: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::new(10, 20, 0, 9),
    31000,
));
/// Where B's packets really come from when it sits behind NAT (latch scenarios).
const AGENT_B_NAT: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::new(172, 16, 5, 5),
    61000,
));
const B_OPUS_PT: u8 = 109;
const B_TE_PT: u8 = 110;
/// B's payload indexes start here, so Meta's received stream tells A's packets from B's.
const B_INDEX_BASE: u32 = 1_000_000;

/// An agent's media server: plain RTP, or SDES-SRTP once it has the relay's key.
struct Agent {
    /// Where its packets come from.
    from: SocketAddr,
    src: RtpSource,
    next: Option<Instant>,
    until: Option<Instant>,
    srtp: Option<SrtpSession>,
    /// `(when, payload)` of every RTP packet it sent.
    sent: Vec<(Instant, Vec<u8>)>,
    /// RTP it received (plaintext).
    rtp: Vec<Rtp>,
    /// RTCP it received: `(when, packet types)`.
    rtcp: Vec<(Instant, Vec<u8>)>,
}

impl Agent {
    fn new(from: SocketAddr, ssrc: u32, pt: u8) -> Agent {
        Agent {
            from,
            src: RtpSource::new(ssrc, pt, 7000, 90_000),
            next: None,
            until: None,
            srtp: None,
            sent: Vec::new(),
            rtp: Vec::new(),
            rtcp: Vec::new(),
        }
    }

    fn due(&self) -> Option<Instant> {
        self.next.filter(|n| self.until.is_none_or(|u| *n < u))
    }

    /// Packets it sent after `t`.
    fn sent_after(&self, t: Instant) -> usize {
        self.sent.iter().filter(|(at, _)| *at > t).count()
    }
}

struct Net {
    now: Instant,
    call: Call,
    meta: MetaPeer,
    a: Agent,
    b: Agent,
    /// Meta's audio toward the call.
    wa_src: RtpSource,
    wa_next: Option<Instant>,
    /// RTP Meta received.
    to_wa: Vec<Rtp>,
    events: Vec<(Instant, CallEventKind)>,
    from_call: VecOutbox,
    from_meta: VecOutbox,
}

impl Net {
    /// A user-initiated DTLS call with agent A ([`MEDIA_SERVER`], strict source) connected, the
    /// gate open, and both Meta and A talking.
    fn active() -> Net {
        let t0 = Instant::now();
        let (mut meta, offer) = MetaPeer::dtls(t0);
        let identity = Arc::new(DtlsIdentity::generate().expect("relay certificate"));
        let created =
            testing::create_call(&offer, CallConfig::default(), identity, t0).expect("create call");
        meta.accept_answer(&created.whatsapp_sdp, t0)
            .expect("Meta accepts the answer");
        let mut call = created.call;
        let now = testing::establish(&mut call, &mut meta, t0, Duration::from_secs(5))
            .expect("ICE + DTLS");
        let mut net = Net {
            now,
            call,
            meta,
            a: Agent::new(MEDIA_SERVER, 0xaaaa_0001, INTERNAL_OPUS_PT),
            b: Agent::new(AGENT_B, 0xbbbb_0002, B_OPUS_PT),
            wa_src: RtpSource::new(0x2222_2222, testing::META_OPUS_PT, 100, 0),
            wa_next: Some(now),
            to_wa: Vec::new(),
            events: Vec::new(),
            from_call: VecOutbox::default(),
            from_meta: VecOutbox::default(),
        };
        net.b.src.index = B_INDEX_BASE;
        net.collect_events();
        net.call.open_gate(now, &mut net.from_call);
        // A's first packet 10 ms after the maiden (silence) packet the gate sent.
        net.a.next = Some(now + ms(10));
        net.run_for(ms(500));
        net
    }

    fn collect_events(&mut self) {
        while let Some(e) = self.call.poll_event() {
            self.events.push((self.now, e));
        }
    }

    fn replace(&mut self, spec: &InternalLegSpec) -> Result<String, ApiError> {
        let r = self.call.replace_internal_leg(
            spec,
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
            self.now,
            &mut self.from_call,
        );
        self.collect_events();
        self.flush();
        // As the control plane reports it.
        r.map_err(ApiError::from)
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.flush();
            let next = [
                self.call.poll_timeout(),
                self.meta.poll_timeout(),
                self.a.due(),
                self.b.due(),
                self.wa_next,
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next.filter(|n| *n <= end) else {
                self.now = end;
                return;
            };
            self.now = self.now.max(next);
            let now = self.now;
            if self.a.due().is_some_and(|t| t <= now) {
                self.agent_sends(false);
            }
            if self.b.due().is_some_and(|t| t <= now) {
                self.agent_sends(true);
            }
            if self.wa_next.is_some_and(|t| t <= now) {
                self.wa_next = Some(now + PTIME);
                let mut buf = [0u8; 1500];
                let n = self.wa_src.write_next(&mut buf, PAYLOAD_LEN);
                let n = self.meta.protect_rtp(&mut buf, n).expect("Meta protects");
                self.call.handle_datagram(
                    now,
                    SocketRef::WaV4,
                    META,
                    &mut buf,
                    n,
                    &mut self.from_call,
                );
            }
            if self.meta.poll_timeout().is_some_and(|t| t <= now) {
                self.meta.handle_timeout(now, &mut self.from_meta);
            }
            if self.call.poll_timeout().is_some_and(|t| t <= now) {
                self.call.handle_timeout(now, &mut self.from_call);
            }
            self.collect_events();
        }
    }

    fn agent_sends(&mut self, b: bool) {
        let now = self.now;
        let agent = if b { &mut self.b } else { &mut self.a };
        agent.next = agent.next.map(|t| t + PTIME);
        let mut buf = [0u8; 1500];
        let n = agent.src.write_next(&mut buf, PAYLOAD_LEN);
        agent.sent.push((now, buf[12..n].to_vec()));
        let n = match agent.srtp.as_mut() {
            Some(s) => s.tx.protect_rtp(&mut buf, n).expect("agent protects"),
            None => n,
        };
        let from = agent.from;
        self.call.handle_datagram(
            now,
            SocketRef::Internal,
            from,
            &mut buf,
            n,
            &mut self.from_call,
        );
    }

    /// Deliver queued datagrams both ways until the network is quiet.
    fn flush(&mut self) {
        loop {
            let sent = self.from_call.take();
            let replies = self.from_meta.take();
            if sent.is_empty() && replies.is_empty() {
                return;
            }
            let now = self.now;
            for mut d in sent {
                let len = d.data.len();
                if d.via.is_whatsapp() {
                    assert_eq!(d.to, META);
                    if let Received::Rtp(n) = self.meta.handle_datagram(
                        now,
                        RELAY_WA,
                        &mut d.data,
                        len,
                        &mut self.from_meta,
                    ) {
                        self.to_wa.push(parse(now, &d.data[..n]));
                    }
                    continue;
                }
                let agent = match d.to {
                    MEDIA_SERVER => &mut self.a,
                    AGENT_B | AGENT_B_NAT => &mut self.b,
                    other => panic!("internal datagram to {other}, which no agent has"),
                };
                match classify(&d.data) {
                    PacketKind::Rtp => {
                        let n = match agent.srtp.as_mut() {
                            Some(s) => s.rx.unprotect_rtp(&mut d.data).expect("agent's key"),
                            None => len,
                        };
                        agent.rtp.push(parse(now, &d.data[..n]));
                    }
                    PacketKind::Rtcp => {
                        let n = match agent.srtp.as_mut() {
                            Some(s) => s.rx.unprotect_rtcp(&mut d.data).expect("agent's key"),
                            None => len,
                        };
                        agent.rtcp.push((now, rtcp_types(&d.data[..n])));
                    }
                    other => panic!("{other:?} on a plain internal leg"),
                }
            }
            for mut d in replies {
                let len = d.data.len();
                self.call.handle_datagram(
                    now,
                    SocketRef::WaV4,
                    META,
                    &mut d.data,
                    len,
                    &mut self.from_call,
                );
            }
            self.collect_events();
        }
    }
}

fn parse(at: Instant, pkt: &[u8]) -> Rtp {
    let h = rtp::parse(pkt).expect("valid RTP");
    Rtp {
        at,
        seq: h.seq.get(),
        ts: h.ts.get(),
        marker: h.marker,
        pt: h.pt.get(),
        ssrc: h.ssrc.get(),
        payload: pkt.get(h.payload_range()).expect("payload").to_vec(),
    }
}

/// Agent B's SDP at `addr`: RTP/AVP, or RTP/SAVP with `key`.
fn agent_b_sdp(addr: SocketAddr, key: Option<&MasterKey>) -> String {
    let (proto, crypto) = match key {
        Some(k) => (
            "RTP/SAVP",
            format!(
                "a=crypto:1 {} {}\r\n",
                k.profile.sdes_name(),
                srtp::sdes_inline(k)
            ),
        ),
        None => ("RTP/AVP", String::new()),
    };
    format!(
        "v=0\r\no=agentB 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} {proto} {B_OPUS_PT} {B_TE_PT}\r\n\
         a=rtpmap:{B_OPUS_PT} opus/48000/2\r\na=rtpmap:{B_TE_PT} telephone-event/8000\r\n\
         {crypto}a=ptime:20\r\na=rtcp-mux\r\na=sendrecv\r\n",
        ip = addr.ip(),
        port = addr.port(),
    )
}

/// The relay's SDES key in the SDP it gave an agent.
fn relay_key(sdp_text: &str) -> MasterKey {
    let remote = crate::sdp::validate_internal(&crate::sdp::parse(sdp_text).expect("parses"))
        .expect("valid");
    assert_eq!(remote.rtp_addr, Some(RELAY_INTERNAL), "same relay port");
    remote.crypto.expect("a=crypto").key
}

fn index(r: &Rtp) -> Option<u32> {
    testing::payload_index(&r.payload).filter(|_| r.payload != crate::call::media::OPUS_SILENCE)
}

#[test]
fn transfer_keeps_whatsapps_stream_continuous_and_switches_agents() {
    let mut net = Net::active();
    let a_heard_before = net.a.rtp.len();
    assert!(a_heard_before > 10, "A hears Meta before the transfer");

    // Transfer to B (SDES this time). A keeps talking for 100 ms: it has not seen the BYE yet.
    let b_key = srtp::random_master_key(SrtpProfile::Aes128CmHmacSha1_80);
    let switch = net.now;
    let answer = net
        .replace(&InternalLegSpec {
            kind: InternalKind::SdesSrtp(SrtpProfile::Aes128CmHmacSha1_80),
            remote_sdp: Some(agent_b_sdp(AGENT_B, Some(&b_key))),
            source: SourcePolicy::Strict,
        })
        .expect("replaced");
    net.a.until = Some(switch + ms(90));
    net.b.srtp = Some(
        SrtpSession::new(&SessionKeys {
            local: b_key,
            remote: relay_key(&answer),
        })
        .expect("B's SRTP"),
    );
    // B's first packet 300 ms after the switch: the signaling tier and B take their time.
    net.b.next = Some(switch + ms(300));
    net.run_for(ms(1500));

    // The old agent got an RTCP BYE at the switch, and nothing after it.
    let bye = net.a.rtcp.iter().find(|(_, t)| t.contains(&203));
    assert_eq!(
        bye.map(|(at, _)| *at),
        Some(switch),
        "BYE to A at the switch"
    );
    assert!(
        net.a.rtp.iter().all(|r| r.at <= switch),
        "no media to A after"
    );
    assert!(net.a.rtcp.iter().all(|(at, _)| *at <= switch));
    // A's packets after the switch were dropped as from a stranger, all of them.
    let a_late = net.a.sent_after(switch);
    assert_eq!(a_late, 4);
    assert_eq!(
        net.call
            .dropped(crate::api::LegKind::Internal, DropReason::BadSource),
        a_late as u64
    );

    // WhatsApp's stream: one SSRC, sequence +1 every packet, timestamps following wall time,
    // across A, the silence gap and B; no gap longer than the fill threshold plus a packet.
    let wa: Vec<&Rtp> = net.to_wa.iter().collect();
    assert_continuous(&wa);
    for w in wa.windows(2) {
        assert!(
            w[1].at.duration_since(w[0].at) <= ms(80),
            "gap at {:?}",
            w[1].at
        );
    }
    // Every one of B's packets reached Meta byte-exact, in order, with Meta's payload type.
    let from_b: Vec<&Rtp> = wa
        .iter()
        .copied()
        .filter(|r| index(r).is_some_and(|i| i >= B_INDEX_BASE))
        .collect();
    assert_eq!(from_b.len(), net.b.sent.len());
    for (got, (_, sent)) in from_b.iter().zip(&net.b.sent) {
        assert_eq!(&got.payload, sent);
        assert_eq!(got.pt, testing::META_OPUS_PT);
    }
    assert!(from_b[0].marker, "talkspurt start on the new source");
    // Between A's last forwarded packet and B's first, Meta got silence.
    let last_a = wa
        .iter()
        .rposition(|r| index(r).is_some_and(|i| i < B_INDEX_BASE))
        .expect("A's audio");
    let first_b = wa.iter().position(|r| index(r) == Some(B_INDEX_BASE));
    let first_b = first_b.expect("B's audio");
    assert!(first_b > last_a + 10);
    assert!(
        wa[last_a + 1..first_b]
            .iter()
            .all(|r| r.payload == crate::call::media::OPUS_SILENCE)
    );

    // Meta's audio now goes to B, under the new key, with a new SSRC and B's payload type.
    assert!(net.b.rtp.len() > 50);
    let ssrc_a = net.a.rtp[0].ssrc;
    assert!(
        net.b
            .rtp
            .iter()
            .all(|r| r.ssrc != ssrc_a && r.pt == B_OPUS_PT)
    );
    assert!(net.b.rtp[0].marker);

    // Events and stats: the replacement, then B's first media; internal counters are B's.
    let replaced = net
        .events
        .iter()
        .find(|(_, e)| matches!(e, CallEventKind::InternalLegReplaced { .. }));
    assert_eq!(
        replaced.map(|(_, e)| e.clone()),
        Some(CallEventKind::InternalLegReplaced {
            previous: Some(MEDIA_SERVER),
            remote: Some(AGENT_B),
        })
    );
    let first_media_internal: Vec<Instant> = net
        .events
        .iter()
        .filter(|(_, e)| {
            *e == CallEventKind::FirstMedia {
                from: crate::api::LegKind::Internal,
            }
        })
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(first_media_internal.len(), 2, "A's, then B's");
    assert_eq!(first_media_internal[1], switch + ms(300));
    let info = net.call.info();
    assert_eq!(info.internal_remote, Some(AGENT_B));
    assert_eq!(info.internal.received.packets, net.b.sent.len() as u64);
    assert!(info.whatsapp_remote.is_some() && info.end_cause.is_none());
}

#[test]
fn a_latching_new_leg_never_latches_onto_the_old_agent() {
    let mut net = Net::active();
    let switch = net.now;
    net.b.from = AGENT_B_NAT;
    net.replace(&InternalLegSpec {
        kind: InternalKind::PlainRtp,
        remote_sdp: Some(agent_b_sdp(AGENT_B, None)),
        source: SourcePolicy::Latch,
    })
    .expect("replaced");
    // A keeps talking and talks first; B (behind NAT) starts 60 ms later.
    net.a.until = Some(switch + ms(200));
    net.b.next = Some(switch + ms(60));
    net.run_for(ms(1000));

    assert_eq!(net.call.info().internal_remote, Some(AGENT_B_NAT));
    assert!(
        net.b.rtp.iter().any(|r| r.at > switch + ms(60)),
        "Meta's audio follows B to its NAT address"
    );
    let from_a_after = net
        .to_wa
        .iter()
        .filter(|r| r.at > switch && index(r).is_some_and(|i| i < B_INDEX_BASE))
        .count();
    assert_eq!(
        from_a_after, 0,
        "nothing of A's reached Meta after the switch"
    );
    assert_eq!(
        net.call
            .dropped(crate::api::LegKind::Internal, DropReason::BadSource),
        net.a.sent_after(switch) as u64
    );
}

#[test]
fn a_bad_replacement_changes_nothing_and_an_ended_call_refuses() {
    let mut net = Net::active();
    // SDES requested but the SDP is plain RTP: refused, A stays connected.
    let err = net
        .replace(&InternalLegSpec {
            kind: InternalKind::SdesSrtp(SrtpProfile::Aes128CmHmacSha1_80),
            remote_sdp: Some(agent_b_sdp(AGENT_B, None)),
            source: SourcePolicy::Strict,
        })
        .unwrap_err();
    assert!(matches!(err, ApiError::InvalidArgument(_)), "{err:?}");
    let heard = net.a.rtp.len();
    net.run_for(ms(200));
    assert!(net.a.rtp.len() >= heard + 9, "A still hears Meta");
    assert!(net.a.rtcp.iter().all(|(_, t)| !t.contains(&203)));
    assert!(
        !net.events
            .iter()
            .any(|(_, e)| matches!(e, CallEventKind::InternalLegReplaced { .. }))
    );

    net.call
        .terminate(net.now, EndCause::Terminated, &mut net.from_call);
    let err = net
        .replace(&InternalLegSpec {
            kind: InternalKind::PlainRtp,
            remote_sdp: Some(agent_b_sdp(AGENT_B, None)),
            source: SourcePolicy::Strict,
        })
        .unwrap_err();
    assert!(matches!(err, ApiError::FailedPrecondition(_)), "{err:?}");
}

/// Everything the call reports to the engine's connected sockets since the last poll.
fn peer_changes(call: &mut Call) -> Vec<(SocketRef, Option<SocketAddr>)> {
    std::iter::from_fn(|| call.poll_peer_change()).collect()
}

/// The peer-change signal behind the engine's connected sockets: each leg's fixed peer is
/// reported once when it becomes fixed (ICE nominated Meta's pair; the media server's SDP
/// address), again when it moves (Meta moves to a new pair: what `SelectedPairChanged` does to
/// the path; a transfer; a latching leg latching), as gone while a latching leg has not latched
/// yet, and not at all once the call ended (the engine closes its sockets then).
#[test]
fn the_call_reports_each_change_of_a_legs_fixed_peer() {
    let mut net = Net::active();
    let wa = net.call.info().whatsapp_remote.expect("nominated");
    let wa_via = net.call.legs[crate::call::WA].via;
    let mut first = peer_changes(&mut net.call);
    first.sort_by_key(|(s, _)| s.index());
    assert_eq!(
        first,
        [
            (wa_via, Some(wa)),
            (SocketRef::Internal, Some(MEDIA_SERVER))
        ]
    );
    net.run_for(ms(200));
    assert_eq!(
        peer_changes(&mut net.call),
        [],
        "media alone changes nothing"
    );

    // Meta moves (the path SelectedPairChanged sets): the same socket, a new peer.
    let moved: SocketAddr = "192.0.2.77:3480".parse().unwrap();
    net.call.legs[crate::call::WA].set_path(wa_via, moved);
    assert_eq!(peer_changes(&mut net.call), [(wa_via, Some(moved))]);
    // ... and to the other address family's socket: the old socket is let go first.
    net.call.legs[crate::call::WA].set_path(SocketRef::WaV6, moved);
    assert_eq!(
        peer_changes(&mut net.call),
        [(wa_via, None), (SocketRef::WaV6, Some(moved))]
    );
    net.call.legs[crate::call::WA].set_path(wa_via, wa);
    let _ = peer_changes(&mut net.call);

    // A transfer to a latching leg: no fixed peer until B's first packet, then B's NAT
    // address.
    let switch = net.now;
    net.b.from = AGENT_B_NAT;
    net.replace(&InternalLegSpec {
        kind: InternalKind::PlainRtp,
        remote_sdp: Some(agent_b_sdp(AGENT_B, None)),
        source: SourcePolicy::Latch,
    })
    .expect("replaced");
    assert_eq!(peer_changes(&mut net.call), [(SocketRef::Internal, None)]);
    net.a.until = Some(switch);
    net.b.next = Some(switch + ms(60));
    net.run_for(ms(200));
    assert_eq!(
        peer_changes(&mut net.call),
        [(SocketRef::Internal, Some(AGENT_B_NAT))]
    );

    net.call
        .terminate(net.now, EndCause::Terminated, &mut net.from_call);
    assert_eq!(
        peer_changes(&mut net.call),
        [],
        "ended: the engine closes all"
    );
}
