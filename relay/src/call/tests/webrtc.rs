//! A WhatsApp caller and a browser agent with nothing in between: the WebRTC internal leg in
//! simulated time. Meta is the ICE-lite + DTLS peer of the other scenarios; the browser
//! ([`BrowserPeer`]) runs full ICE as the controlling agent with USE-CANDIDATE and DTLS in the
//! role the offer/answer gave it. Offer/answer both ways, both DTLS roles, media, DTMF and RTCP
//! both ways, and the failures that end the call with `InternalLegFailed`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::{CallEventKind, EndCause, InternalKind, InternalLegSpec, LegKind, SourcePolicy};
use crate::call::stats::DropReason;
use crate::call::testing::browser::{BROWSER, BROWSER_OPUS_PT, BROWSER_TE_PT, BrowserPeer};
use crate::call::testing::{
    self, META, META_OPUS_PT, META_TE_PT, MetaPeer, RELAY_INTERNAL, Received, RtpSource,
};
use crate::call::{Call, CallConfig};
use crate::dtls::DtlsIdentity;
use crate::net::{SocketRef, VecOutbox};
use crate::sdp::Setup;
use crate::wire::rtp::Ssrc;
use crate::wire::{rtcp, rtp};

use super::harness::{ms, rtcp_types, secs};

const PTIME: Duration = Duration::from_millis(20);

/// A packet one peer received, in plaintext.
struct Got {
    pkt: Vec<u8>,
}

impl Got {
    fn hdr(&self) -> rtp::RtpHeader {
        rtp::parse(&self.pkt).expect("valid RTP")
    }
    fn payload(&self) -> &[u8] {
        &self.pkt[self.hdr().payload_range()]
    }
}

struct WebSim {
    t0: Instant,
    now: Instant,
    call: Call,
    meta: MetaPeer,
    browser: BrowserPeer,
    internal_sdp: String,
    events: Vec<(Instant, CallEventKind)>,
    at_meta: Vec<Got>,
    at_browser: Vec<Got>,
    browser_rtcp: Vec<Vec<u8>>,
    /// Anything a peer could not authenticate or did not expect (should stay empty).
    trouble: Vec<String>,
    /// The network between the relay and the browser works.
    browser_reachable: bool,
    meta_src: RtpSource,
    browser_src: RtpSource,
    from_call: VecOutbox,
    from_meta: VecOutbox,
    from_browser: VecOutbox,
}

fn webrtc_spec(remote_sdp: Option<String>) -> InternalLegSpec {
    InternalLegSpec {
        kind: InternalKind::WebRtc,
        remote_sdp,
        // Ignored for WebRTC: the nominated pair decides.
        source: SourcePolicy::Latch,
    }
}

impl WebSim {
    fn new(remote_sdp: impl FnOnce(&BrowserPeer) -> Option<String>, cfg: CallConfig) -> WebSim {
        let t0 = Instant::now();
        let (mut meta, offer) = MetaPeer::dtls(t0);
        let browser = BrowserPeer::new(t0);
        let identity = Arc::new(DtlsIdentity::generate().expect("relay certificate"));
        let spec = webrtc_spec(remote_sdp(&browser));
        let created = testing::create_call_with(&offer, spec, cfg, identity, t0).expect("create");
        meta.accept_answer(&created.whatsapp_sdp, t0)
            .expect("Meta takes the answer");
        WebSim {
            t0,
            now: t0,
            call: created.call,
            meta,
            browser,
            internal_sdp: created.internal_sdp,
            events: Vec::new(),
            at_meta: Vec::new(),
            at_browser: Vec::new(),
            browser_rtcp: Vec::new(),
            trouble: Vec::new(),
            browser_reachable: true,
            meta_src: RtpSource::new(0xa1a1_a1a1, META_OPUS_PT, 100, 1000),
            browser_src: RtpSource::new(0xb2b2_b2b2, BROWSER_OPUS_PT, 200, 2000),
            from_call: VecOutbox::default(),
            from_meta: VecOutbox::default(),
            from_browser: VecOutbox::default(),
        }
    }

    /// The browser offers at create; the relay's `internal_sdp` is the answer.
    fn browser_offers() -> WebSim {
        let mut s = WebSim::new(|b| Some(b.offer()), CallConfig::default());
        let answer = s.internal_sdp.clone();
        s.browser
            .accept_answer(&answer, s.now)
            .expect("browser takes the answer");
        s
    }

    /// The relay offers; the browser answers with DTLS role `setup`, `delay` later.
    fn relay_offers(setup: Setup, delay: Duration) -> WebSim {
        let mut s = WebSim::new(|_| None, CallConfig::default());
        let offer = s.internal_sdp.clone();
        let answer = s
            .browser
            .answer(&offer, setup, s.now)
            .expect("browser answers");
        s.run_for(delay);
        s.call
            .set_remote_description(LegKind::Internal, &answer, s.now, &mut s.from_call)
            .expect("relay takes the answer");
        s
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.flush();
            let next = [
                self.call.poll_timeout(),
                self.meta.poll_timeout(),
                self.browser.poll_timeout(),
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
            if self.meta.poll_timeout().is_some_and(|t| t <= now) {
                self.meta.handle_timeout(now, &mut self.from_meta);
            }
            if self.browser.poll_timeout().is_some_and(|t| t <= now) {
                self.browser.handle_timeout(now, &mut self.from_browser);
            }
            if self.call.poll_timeout().is_some_and(|t| t <= now) {
                self.call.handle_timeout(now, &mut self.from_call);
            }
        }
    }

    /// Both sides send Opus every 20 ms for `d` (each once it has keys).
    fn talk_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            if self.meta.is_ready() {
                let mut buf = [0u8; 1500];
                let n = self.meta_src.write_next(&mut buf, 160);
                self.send_from_meta(&mut buf, n);
            }
            if self.browser.is_ready() && !self.browser.closed {
                let mut buf = [0u8; 1500];
                let n = self.browser_src.write_next(&mut buf, 160);
                self.send_from_browser(&mut buf, n, false);
            }
            self.run_for(PTIME);
        }
    }

    fn send_from_meta(&mut self, buf: &mut [u8], n: usize) {
        let n = self.meta.protect_rtp(buf, n).expect("Meta protects");
        self.call
            .handle_datagram(self.now, SocketRef::WaV4, META, buf, n, &mut self.from_call);
    }

    fn send_from_browser(&mut self, buf: &mut [u8], n: usize, rtcp: bool) {
        let n = if rtcp {
            self.browser.protect_rtcp(buf, n)
        } else {
            self.browser.protect_rtp(buf, n)
        }
        .expect("browser protects");
        self.call.handle_datagram(
            self.now,
            SocketRef::Internal,
            BROWSER,
            buf,
            n,
            &mut self.from_call,
        );
    }

    /// Deliver queued datagrams every way until the network is quiet.
    fn flush(&mut self) {
        loop {
            while let Some(e) = self.call.poll_event() {
                self.events.push((self.now, e));
            }
            let mut moved = false;
            for mut d in self.from_call.take() {
                moved = true;
                let len = d.data.len();
                if d.via == SocketRef::Internal {
                    assert_eq!(d.to, BROWSER, "internal datagram to the nominated pair");
                    if !self.browser_reachable {
                        continue;
                    }
                    let got = self.browser.handle_datagram(
                        self.now,
                        RELAY_INTERNAL,
                        &mut d.data,
                        len,
                        &mut self.from_browser,
                    );
                    match got {
                        Received::Rtp(n) => self.at_browser.push(Got {
                            pkt: d.data[..n].to_vec(),
                        }),
                        Received::Rtcp(n) => self.browser_rtcp.push(d.data[..n].to_vec()),
                        Received::Stun | Received::Dtls => {}
                        other => self.trouble.push(format!("browser: {other:?}")),
                    }
                } else {
                    assert_eq!(d.to, META);
                    let from = testing::relay_addr(d.via);
                    match self.meta.handle_datagram(
                        self.now,
                        from,
                        &mut d.data,
                        len,
                        &mut self.from_meta,
                    ) {
                        Received::Rtp(n) => self.at_meta.push(Got {
                            pkt: d.data[..n].to_vec(),
                        }),
                        Received::Rtcp(_) | Received::Stun | Received::Dtls => {}
                        other => self.trouble.push(format!("meta: {other:?}")),
                    }
                }
            }
            for mut d in self.from_meta.take() {
                moved = true;
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
            }
            for mut d in self.from_browser.take() {
                moved = true;
                assert_eq!(
                    d.to, RELAY_INTERNAL,
                    "the browser sends to our one candidate"
                );
                if !self.browser_reachable {
                    continue;
                }
                let len = d.data.len();
                self.call.handle_datagram(
                    self.now,
                    SocketRef::Internal,
                    BROWSER,
                    &mut d.data,
                    len,
                    &mut self.from_call,
                );
            }
            if !moved {
                return;
            }
        }
    }

    /// Run until both legs have keys and the gate is open.
    fn connect_and_open(&mut self) {
        let limit = self.now + secs(5);
        while !(self.browser.is_ready()
            && self.meta.is_ready()
            && self
                .events
                .iter()
                .any(|(_, e)| *e == CallEventKind::WhatsAppReady))
        {
            assert!(self.now < limit, "not connected: {:?}", self.events);
            self.run_for(ms(1));
        }
        self.call.open_gate(self.now, &mut self.from_call);
        self.flush();
    }

    fn ended(&self) -> Option<(Instant, EndCause, Option<u32>)> {
        self.events.iter().find_map(|(t, e)| match e {
            CallEventKind::Ended {
                cause, meta_code, ..
            } => Some((*t, *cause, *meta_code)),
            _ => None,
        })
    }

    fn forwarded_to_browser(&self) -> Vec<&Got> {
        self.at_browser
            .iter()
            .filter(|g| g.hdr().pt.get() == BROWSER_OPUS_PT)
            .collect()
    }
}

/// The SSRC our description announced to the browser.
fn announced_ssrc(sdp: &str) -> u32 {
    let line = sdp
        .lines()
        .find_map(|l| l.strip_prefix("a=ssrc:"))
        .expect("a=ssrc");
    line.split(' ').next().unwrap().parse().unwrap()
}

/// Audio both ways, byte for byte, on the relay's own SSRC with continuous numbering.
fn assert_audio_both_ways(s: &mut WebSim) {
    s.connect_and_open();
    s.talk_for(secs(1));
    assert!(s.trouble.is_empty(), "{:?}", s.trouble);
    assert_eq!(s.call.info().internal_remote, Some(BROWSER));

    let to_browser = s.forwarded_to_browser();
    assert!(
        to_browser.len() >= 45,
        "{} packets to the browser",
        to_browser.len()
    );
    let ssrc = announced_ssrc(&s.internal_sdp);
    for w in to_browser.windows(2) {
        assert_eq!(w[1].hdr().seq, w[0].hdr().seq.next());
        assert_eq!(
            w[1].hdr().ts.ticks_since(w[0].hdr().ts),
            testing::TS_PER_20MS
        );
    }
    for (i, g) in to_browser.iter().enumerate() {
        assert_eq!(g.hdr().ssrc.get(), ssrc, "the SSRC our SDP announced");
        assert_eq!(testing::payload_index(g.payload()), Some(i as u32));
        assert!(
            g.payload()[4..].iter().all(|b| *b == 0x5a),
            "payload untouched"
        );
    }
    let forwarded: Vec<&Got> = s.at_meta.iter().filter(|g| g.payload().len() > 3).collect();
    assert!(forwarded.len() >= 45, "{} packets to Meta", forwarded.len());
    for (i, g) in forwarded.iter().enumerate() {
        assert_eq!(g.hdr().pt.get(), META_OPUS_PT);
        assert_ne!(
            g.hdr().ssrc.get(),
            0xb2b2_b2b2,
            "our own SSRC toward WhatsApp"
        );
        assert_eq!(testing::payload_index(g.payload()), Some(i as u32));
    }
}

#[test]
fn browser_offer_relay_answers_passive_audio_dtmf_rtcp() {
    let mut s = WebSim::browser_offers();
    for line in [
        "a=ice-lite\r\n",
        "a=setup:passive\r\n",
        "a=group:BUNDLE 0\r\n",
        "m=audio 30000 UDP/TLS/RTP/SAVPF 111 126\r\n",
    ] {
        assert!(
            s.internal_sdp.contains(line),
            "{line:?} in\n{}",
            s.internal_sdp
        );
    }
    assert_audio_both_ways(&mut s);
    assert_eq!(s.call.info().internal.dropped, 0);
    let t_connected = s.now;

    // DTMF from the browser: reported once, forwarded to WhatsApp on Meta's PT.
    let mut buf = [0u8; 1500];
    s.browser_src.pt = BROWSER_TE_PT;
    for end in [false, false, true] {
        let n = s.browser_src.write_next(&mut buf, 4);
        buf[12..16].copy_from_slice(&[5, if end { 0x80 } else { 0 }, 0, 160]);
        // RFC 4733: one event keeps its timestamp.
        s.browser_src.ts = s.browser_src.ts.wrapping_sub(testing::TS_PER_20MS);
        s.send_from_browser(&mut buf, n, false);
    }
    s.browser_src.pt = BROWSER_OPUS_PT;
    // ... and from WhatsApp to the browser.
    s.meta_src.pt = META_TE_PT;
    let n = s.meta_src.write_next(&mut buf, 4);
    buf[12..16].copy_from_slice(&[9, 0x80, 0, 160]);
    s.send_from_meta(&mut buf, n);
    s.meta_src.pt = META_OPUS_PT;
    s.run_for(ms(20));
    let digits: Vec<(LegKind, char)> = s
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            CallEventKind::DtmfReceived { from, digit } => Some((*from, *digit)),
            _ => None,
        })
        .collect();
    assert_eq!(digits, [(LegKind::Internal, '5'), (LegKind::WhatsApp, '9')]);
    assert_eq!(
        s.at_meta
            .iter()
            .filter(|g| g.hdr().pt.get() == META_TE_PT)
            .count(),
        3
    );
    let te_at_browser: Vec<&Got> = s
        .at_browser
        .iter()
        .filter(|g| g.hdr().pt.get() == BROWSER_TE_PT)
        .collect();
    assert_eq!(te_at_browser.len(), 1);
    assert_eq!(te_at_browser[0].payload()[0], 9);

    // RTCP both ways: the browser's receiver report is consumed, our SR reaches the browser.
    let n = rtcp::write_rr(&mut buf, Ssrc::new(0xb2b2_b2b2), &[]).unwrap();
    s.send_from_browser(&mut buf, n, true);
    s.talk_for(secs(6));
    assert!(
        s.browser_rtcp
            .iter()
            .any(|p| rtcp_types(p).first() == Some(&200)),
        "an SR reached the browser within 6 s: {:?}",
        s.browser_rtcp
            .iter()
            .map(|p| rtcp_types(p))
            .collect::<Vec<_>>()
    );
    // Still alive: the browser's consent checks keep the lite side happy.
    assert!(s.ended().is_none(), "{:?}", s.ended());
    assert!(s.now > t_connected + secs(6));
    assert!(s.trouble.is_empty(), "{:?}", s.trouble);
}

#[test]
fn relay_offer_browser_answers_active() {
    let mut s = WebSim::relay_offers(Setup::Active, Duration::ZERO);
    assert!(s.internal_sdp.contains("a=setup:actpass\r\n"));
    assert!(s.internal_sdp.contains("a=ice-lite\r\n"));
    assert_audio_both_ways(&mut s);
}

#[test]
fn relay_offer_browser_answers_passive() {
    let mut s = WebSim::relay_offers(Setup::Passive, Duration::ZERO);
    assert_audio_both_ways(&mut s);
}

/// The browser's checks (and, as DTLS client, its ClientHello) beat its answer through the
/// signaling tier: the leg connects once the answer arrives.
#[test]
fn browser_checks_before_its_answer_arrives() {
    let mut s = WebSim::relay_offers(Setup::Active, ms(700));
    assert_eq!(
        s.call.info().internal_remote,
        Some(BROWSER),
        "nominated before the answer"
    );
    assert!(
        s.call.dropped(LegKind::Internal, DropReason::NotReady) > 0,
        "early ClientHello"
    );
    assert_audio_both_ways(&mut s);
}

#[test]
fn no_checks_from_the_browser_end_the_call() {
    let mut s = WebSim::browser_offers();
    s.browser_reachable = false;
    s.run_for(secs(15));
    let (at, cause, code) = s.ended().expect("ended");
    assert_eq!((cause, code), (EndCause::InternalLegFailed, None));
    assert_eq!(at, s.t0 + CallConfig::default().ice_connect_timeout);
    assert_eq!(s.call.info().internal.sent.packets, 0);
}

#[test]
fn wrong_browser_certificate_ends_the_call() {
    let mut s = WebSim::new(|b| Some(b.offer()), CallConfig::default());
    // The browser's DTLS presents another certificate than its offer's fingerprint.
    s.browser.use_other_certificate();
    let answer = s.internal_sdp.clone();
    s.browser.accept_answer(&answer, s.now).unwrap();
    s.run_for(secs(3));
    let (_, cause, _) = s.ended().expect("ended");
    assert_eq!(cause, EndCause::InternalLegFailed);
    assert!(s.at_browser.is_empty(), "no media without verified keys");
}

/// Issue 18: a tab closed without `pc.close()` sends no close_notify; its checks and media
/// stop together. The leg ends `call.webrtc_idle_timeout` (10 s) after the last of them, not
/// at the 30 s consent timeout (the consumer heard relay-made silence all that time).
#[test]
fn closed_tab_ends_the_call_10s_after_its_last_check_or_packet() {
    assert_eq!(CallConfig::default().webrtc_idle_timeout, secs(10));
    let mut s = WebSim::browser_offers();
    s.connect_and_open();
    s.talk_for(secs(1));
    let closed_at = s.now;
    s.browser.closed = true;
    // WhatsApp keeps talking: only the browser went away.
    s.talk_for(secs(40));
    let (at, cause, code) = s.ended().expect("ended");
    assert_eq!((cause, code), (EndCause::InternalLegFailed, None));
    let after = at.duration_since(closed_at);
    // Its last media packet was within 20 ms of closing.
    assert!(
        after >= ms(9_980) && after <= secs(10),
        "ended {after:?} after the tab closed"
    );
}

/// A browser that stops sending media but still answers for its consent (muted, or an agent
/// whose microphone track ended) is not gone.
#[test]
fn a_quiet_browser_that_keeps_its_consent_is_not_ended() {
    let mut s = WebSim::browser_offers();
    s.connect_and_open();
    s.talk_for(secs(1));
    // Nobody talks for 25 s; the browser's consent checks go on.
    s.run_for(secs(25));
    assert_eq!(s.ended(), None);
}

#[test]
fn media_from_another_address_is_dropped() {
    let mut s = WebSim::browser_offers();
    s.connect_and_open();
    let before = s.at_meta.len();
    let mut buf = [0u8; 1500];
    let n = s.browser_src.write_next(&mut buf, 160);
    let n = s.browser.protect_rtp(&mut buf, n).unwrap();
    let stranger = "10.20.0.66:50000".parse().unwrap();
    s.call.handle_datagram(
        s.now,
        SocketRef::Internal,
        stranger,
        &mut buf,
        n,
        &mut s.from_call,
    );
    s.flush();
    assert_eq!(s.call.dropped(LegKind::Internal, DropReason::BadSource), 1);
    assert!(s.at_meta[before..].iter().all(|g| g.payload().len() == 3));
}

#[test]
fn a_second_description_is_refused() {
    let mut s = WebSim::browser_offers();
    let offer = s.browser.offer();
    // The same offer again (a repeated request) is fine; a different one is not.
    let mut out = VecOutbox::default();
    assert!(
        s.call
            .set_remote_description(LegKind::Internal, &offer, s.now, &mut out)
            .is_ok()
    );
    let other = offer
        .replace("a=mid:0", "a=mid:1")
        .replace("BUNDLE 0", "BUNDLE 1");
    assert!(
        s.call
            .set_remote_description(LegKind::Internal, &other, s.now, &mut out)
            .is_err()
    );
}

#[test]
fn relay_offer_refuses_an_actpass_answer() {
    let mut s = WebSim::new(|_| None, CallConfig::default());
    let offer = s.internal_sdp.clone();
    let answer = s.browser.answer(&offer, Setup::ActPass, s.now).unwrap();
    let err = s
        .call
        .set_remote_description(LegKind::Internal, &answer, s.now, &mut s.from_call)
        .unwrap_err();
    assert!(err.to_string().contains("actpass"), "{err}");
}
