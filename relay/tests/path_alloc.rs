//! Proves a connected call's steady state allocates nothing: a counting global allocator records
//! every allocation made on the test thread while 10,000 packets flow each way through a real
//! `Call` — WhatsApp → internal (SRTP unprotect, parse, rewrite, send) and internal → WhatsApp
//! (parse, rewrite, SRTP protect), with the internal leg pausing so silence fill starts and
//! stops, RTCP both ways (the call's own reports from `handle_timeout`, Meta's and the media
//! server's consumed), and ICE consent checks answered. The Meta peer and the outboxes are on
//! the counted path too, and allocate nothing either (the outboxes are preallocated).
//!
//! Setup (call creation, ICE, DTLS, the first packets that create per-stream state) happens
//! before counting. SDES covers every SRTP profile; DTLS covers the profile dimpl negotiates
//! (AEAD_AES_256_GCM when offered all three). The WebRTC case puts a browser on the internal
//! leg instead of the media server: DTLS-SRTP both ways, the browser's consent checks answered
//! by the relay's ICE-lite agent. The recorded and listened cases add a fork: every forwarded
//! packet also goes to the recorder's queue, or to a supervisor's browser on its own socket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use relay::api::{InternalKind, InternalLegSpec, SourcePolicy};
use relay::call::Call;
use relay::call::CallConfig;
use relay::call::testing::browser::{BROWSER, BROWSER_OPUS_PT, BrowserPeer};
use relay::call::testing::{
    self, INTERNAL_OPUS_PT, MEDIA_SERVER, META, META_OPUS_PT, MetaPeer, RELAY_INTERNAL, Received,
    RingOutbox, RtpSource,
};
use relay::dtls::DtlsIdentity;
use relay::listen::testing::{FORK_ADDR, SUPERVISOR, Supervisor};
use relay::net::SocketRef;
use relay::srtp::SrtpProfile;
use relay::wire::classify::{PacketKind, classify};
use relay::wire::rtcp;
use relay::wire::rtp::{RtpTs, Ssrc};

mod alloc_support;
use alloc_support::allocations;

const PTIME: Duration = Duration::from_millis(20);
const PAYLOAD: usize = 160;
const WARM_UP: u32 = 500;
const MEASURED: u32 = 10_000;

/// What reached each peer.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    rtp_to_meta: u64,
    /// Generated Opus silence (a 3-byte payload).
    silence_to_meta: u64,
    rtcp_to_meta: u64,
    stun_to_meta: u64,
    rtp_to_server: u64,
    rtcp_to_server: u64,
    rejected_by_meta: u64,
    /// WebRTC: the relay's answers to the browser's consent checks.
    stun_to_browser: u64,
    rejected_by_browser: u64,
    /// A supervisor's listen-in: RTP it received (both tracks), the relay's answers to its
    /// consent checks.
    rtp_to_supervisor: u64,
    stun_to_supervisor: u64,
}

/// A connected call with its two peers, driven in simulated time.
struct Bench {
    call: Call,
    meta: MetaPeer,
    now: Instant,
    /// Where the next 20 ms packet of both sources is due.
    next_packet: Instant,
    packets: u32,
    meta_src: RtpSource,
    server_src: RtpSource,
    out: RingOutbox,
    meta_out: RingOutbox,
    /// WebRTC: the browser agent on the internal leg (else the plain-RTP media server).
    browser: Option<BrowserPeer>,
    browser_out: RingOutbox,
    /// A supervisor listening in on the call's socket `LISTEN`, once started.
    supervisor: Option<Supervisor>,
    supervisor_out: RingOutbox,
    tally: Tally,
}

/// The listen-in's socket in the call's list.
const LISTEN: SocketRef = SocketRef::new(3);

impl Bench {
    /// `leg`: SDES with this profile on the WhatsApp leg, else DTLS. `webrtc`: a browser on
    /// the internal leg instead of the media server.
    fn new(leg: Option<SrtpProfile>, webrtc: bool) -> Bench {
        let t0 = Instant::now();
        let (mut meta, offer) = match leg {
            Some(p) => MetaPeer::sdes(p),
            None => MetaPeer::dtls(t0),
        };
        let identity = Arc::new(DtlsIdentity::generate().unwrap());
        let mut browser = webrtc.then(|| BrowserPeer::new(t0));
        let created = match &browser {
            Some(b) => {
                let spec = InternalLegSpec {
                    kind: InternalKind::WebRtc,
                    remote_sdp: Some(b.offer()),
                    source: SourcePolicy::Strict,
                };
                testing::create_call_with(&offer, spec, CallConfig::default(), identity, t0)
            }
            None => testing::create_call(&offer, CallConfig::default(), identity, t0),
        }
        .unwrap();
        if let Some(b) = browser.as_mut() {
            b.accept_answer(&created.internal_sdp, t0).unwrap();
        }
        let mut call = created.call;
        meta.accept_answer(&created.whatsapp_sdp, t0).unwrap();
        let now = testing::establish(&mut call, &mut meta, t0, Duration::from_secs(5)).unwrap();
        let mut b = Bench {
            call,
            meta,
            now,
            next_packet: now,
            packets: 0,
            meta_src: RtpSource::new(0xa1a1_a1a1, META_OPUS_PT, 100, 1000),
            server_src: match browser {
                Some(_) => RtpSource::new(0xb2b2_b2b2, BROWSER_OPUS_PT, 200, 2000),
                None => RtpSource::new(0xb2b2_b2b2, INTERNAL_OPUS_PT, 200, 2000),
            },
            out: RingOutbox::with_capacity(64),
            meta_out: RingOutbox::with_capacity(64),
            browser,
            browser_out: RingOutbox::with_capacity(64),
            supervisor: None,
            supervisor_out: RingOutbox::with_capacity(64),
            tally: Tally::default(),
        };
        b.connect_browser();
        b.call.open_gate(b.now, &mut b.out);
        b
    }

    /// WebRTC: run timers and the network (no media) until the browser has its keys.
    fn connect_browser(&mut self) {
        let limit = self.now + Duration::from_secs(5);
        while self.browser.as_ref().is_some_and(|b| !b.is_ready()) {
            assert!(
                self.now < limit,
                "browser not connected: {:?}",
                self.call.info()
            );
            let next = self
                .call
                .poll_timeout()
                .into_iter()
                .chain(self.meta.poll_timeout())
                .chain(self.browser.as_ref().and_then(|b| b.poll_timeout()))
                .min()
                .unwrap_or(limit);
            self.now = self.now.max(next);
            self.run_timers();
            self.deliver();
            while self.call.poll_event().is_some() {}
        }
    }

    fn run_timers(&mut self) {
        let now = self.now;
        if self.meta.poll_timeout().is_some_and(|t| t <= now) {
            self.meta.handle_timeout(now, &mut self.meta_out);
        }
        if let Some(b) = self.browser.as_mut()
            && b.poll_timeout().is_some_and(|t| t <= now)
        {
            b.handle_timeout(now, &mut self.browser_out);
        }
        if let Some(s) = self.supervisor.as_mut()
            && s.poll_timeout().is_some_and(|t| t <= now)
        {
            s.handle_timeout(now, &mut self.supervisor_out);
        }
        if self.call.poll_timeout().is_some_and(|t| t <= now) {
            self.call.handle_timeout(now, &mut self.out);
        }
    }

    /// Run until `n` more packets have been sent by each source (timers included).
    fn run_packets(&mut self, n: u32) {
        let until = self.packets + n;
        while self.packets < until {
            let next = self
                .call
                .poll_timeout()
                .into_iter()
                .chain(self.meta.poll_timeout())
                .chain(self.browser.as_ref().and_then(|b| b.poll_timeout()))
                .chain(self.supervisor.as_ref().and_then(|s| s.poll_timeout()))
                .fold(self.next_packet, Instant::min);
            self.now = self.now.max(next);
            if self.next_packet <= self.now {
                self.send_media();
            }
            self.run_timers();
            self.deliver();
            // The engine forwards events; here they are simply drained.
            while self.call.poll_event().is_some() {}
        }
    }

    /// One packet from each source; the media server pauses 200 ms of every 2 s (silence fill
    /// starts, then forwarded media resumes with a new talkspurt). Both peers send RTCP every
    /// 5 s.
    fn send_media(&mut self) {
        let i = self.packets;
        self.packets += 1;
        self.next_packet += PTIME;
        let now = self.now;
        let mut buf = [0u8; 1500];

        let n = self.meta_src.write_next(&mut buf, PAYLOAD);
        let n = self.meta.protect_rtp(&mut buf, n).unwrap();
        self.call
            .handle_datagram(now, SocketRef::WaV4, META, &mut buf, n, &mut self.out);

        if i % 100 >= 10 {
            if i % 100 == 10 {
                self.server_src.marker_next = true;
            }
            let n = self.server_src.write_next(&mut buf, PAYLOAD);
            let (from, n) = match self.browser.as_mut() {
                Some(b) => (BROWSER, b.protect_rtp(&mut buf, n).unwrap()),
                None => (MEDIA_SERVER, n),
            };
            self.call
                .handle_datagram(now, SocketRef::Internal, from, &mut buf, n, &mut self.out);
        }

        if i.is_multiple_of(250) {
            // Meta's SR and the server's RR, about the streams the relay sends them.
            let n = rtcp::write_sr(
                &mut buf,
                Ssrc::new(0xa1a1_a1a1),
                0x1234_5678_0000_0000,
                RtpTs::new(7),
                i,
                i * 160,
                &[],
            )
            .unwrap();
            let n = self.meta.protect_rtcp(&mut buf, n).unwrap();
            self.call
                .handle_datagram(now, SocketRef::WaV4, META, &mut buf, n, &mut self.out);
            let n = rtcp::write_rr(&mut buf, Ssrc::new(0xb2b2_b2b2), &[]).unwrap();
            let (from, n) = match self.browser.as_mut() {
                Some(b) => (BROWSER, b.protect_rtcp(&mut buf, n).unwrap()),
                None => (MEDIA_SERVER, n),
            };
            self.call
                .handle_datagram(now, SocketRef::Internal, from, &mut buf, n, &mut self.out);
        }
    }

    /// Deliver what the call sent, and what Meta and the browser answered, until the network
    /// is quiet.
    fn deliver(&mut self) {
        while !(self.out.is_empty()
            && self.meta_out.is_empty()
            && self.browser_out.is_empty()
            && self.supervisor_out.is_empty())
        {
            for i in 0..self.out.len() {
                let (via, to, buf, len) = self.out.get_mut(i).unwrap();
                if via == LISTEN {
                    let Some(s) = self.supervisor.as_mut() else {
                        // A media server listens over RTP: it only receives.
                        assert_eq!(classify(&buf[..len]), PacketKind::Rtp, "to {to}");
                        self.tally.rtp_to_supervisor += 1;
                        continue;
                    };
                    assert_eq!(to, SUPERVISOR);
                    let before = s.received;
                    match classify(&buf[..len]) {
                        PacketKind::Stun => self.tally.stun_to_supervisor += 1,
                        PacketKind::Rtp | PacketKind::Dtls => {}
                        other => panic!("{other:?} to the supervisor"),
                    }
                    s.handle(
                        self.now,
                        FORK_ADDR,
                        &mut buf[..len],
                        &mut self.supervisor_out,
                    );
                    self.tally.rtp_to_supervisor += s.received - before;
                    continue;
                }
                if via == SocketRef::Internal {
                    match self.browser.as_mut() {
                        Some(b) => {
                            assert_eq!(to, BROWSER);
                            let got = b.handle_datagram(
                                self.now,
                                RELAY_INTERNAL,
                                buf,
                                len,
                                &mut self.browser_out,
                            );
                            match got {
                                Received::Rtp(_) => self.tally.rtp_to_server += 1,
                                Received::Rtcp(_) => self.tally.rtcp_to_server += 1,
                                Received::Stun => self.tally.stun_to_browser += 1,
                                Received::Dtls => {}
                                _ => self.tally.rejected_by_browser += 1,
                            }
                        }
                        None => {
                            assert_eq!(to, MEDIA_SERVER);
                            match classify(&buf[..len]) {
                                PacketKind::Rtp => self.tally.rtp_to_server += 1,
                                PacketKind::Rtcp => self.tally.rtcp_to_server += 1,
                                _ => panic!("unexpected datagram to the media server"),
                            }
                        }
                    }
                    continue;
                }
                assert_eq!(to, META);
                let from = testing::relay_addr(via);
                match self
                    .meta
                    .handle_datagram(self.now, from, buf, len, &mut self.meta_out)
                {
                    Received::Rtp(n) => {
                        self.tally.rtp_to_meta += 1;
                        if n == 12 + 3 {
                            self.tally.silence_to_meta += 1;
                        }
                    }
                    Received::Rtcp(_) => self.tally.rtcp_to_meta += 1,
                    Received::Stun => self.tally.stun_to_meta += 1,
                    Received::Dtls => {}
                    _ => self.tally.rejected_by_meta += 1,
                }
            }
            self.out.clear();
            for i in 0..self.meta_out.len() {
                let (_, to, buf, len) = self.meta_out.get_mut(i).unwrap();
                let via = testing::relay_socket(to).unwrap();
                self.call
                    .handle_datagram(self.now, via, META, buf, len, &mut self.out);
            }
            self.meta_out.clear();
            for i in 0..self.browser_out.len() {
                let (_, to, buf, len) = self.browser_out.get_mut(i).unwrap();
                assert_eq!(to, RELAY_INTERNAL);
                self.call.handle_datagram(
                    self.now,
                    SocketRef::Internal,
                    BROWSER,
                    buf,
                    len,
                    &mut self.out,
                );
            }
            self.browser_out.clear();
            for i in 0..self.supervisor_out.len() {
                let (_, to, buf, len) = self.supervisor_out.get_mut(i).unwrap();
                assert_eq!(to, FORK_ADDR);
                self.call
                    .handle_datagram(self.now, LISTEN, SUPERVISOR, buf, len, &mut self.out);
            }
            self.supervisor_out.clear();
        }
        assert_eq!(
            self.out.overflowed
                + self.meta_out.overflowed
                + self.browser_out.overflowed
                + self.supervisor_out.overflowed,
            0
        );
    }
}

fn steady_state_allocates_nothing(leg: Option<SrtpProfile>, webrtc: bool) {
    steady_state_of(Bench::new(leg, webrtc), leg, webrtc);
}

fn steady_state_of(mut b: Bench, leg: Option<SrtpProfile>, webrtc: bool) -> Bench {
    b.run_packets(WARM_UP);
    let before_tally = b.tally;
    let before = allocations();
    b.run_packets(MEASURED);
    let during = allocations() - before;

    // The traffic was real: everything arrived and authenticated.
    let info = b.call.info();
    let name = format!("{leg:?} webrtc={webrtc} ({:?})", info.srtp_profile);
    let t = b.tally;
    assert_eq!(t.rejected_by_meta + t.rejected_by_browser, 0, "{name}");
    if webrtc {
        let consent = t.stun_to_browser - before_tally.stun_to_browser;
        assert!(
            consent >= 30,
            "{name}: {consent} answers to the browser's checks"
        );
    }
    assert_eq!(
        t.rtp_to_server - before_tally.rtp_to_server,
        u64::from(MEASURED),
        "{name}"
    );
    let to_meta = t.rtp_to_meta - before_tally.rtp_to_meta;
    // Forwarded 90% of the time, silence during the pauses (one per 20 ms after fill_after).
    assert!(
        to_meta >= u64::from(MEASURED) * 97 / 100,
        "{name}: {to_meta} RTP to Meta"
    );
    let silence = t.silence_to_meta - before_tally.silence_to_meta;
    assert!(
        silence >= 700,
        "{name}: {silence} silence packets (fill ran in every pause)"
    );
    assert!(
        t.rtcp_to_meta - before_tally.rtcp_to_meta >= 39,
        "{name}: RTCP to Meta"
    );
    if leg.is_none() {
        let consent = t.stun_to_meta - before_tally.stun_to_meta;
        assert!(consent >= 30, "{name}: {consent} consent checks");
    }
    assert!(
        t.rtcp_to_server - before_tally.rtcp_to_server >= 39,
        "{name}: RTCP to server"
    );
    assert!(info.end_cause.is_none(), "{name}: {:?}", info.end_cause);
    assert_eq!(info.whatsapp.dropped + info.internal.dropped, 0, "{name}");

    eprintln!("{name}: {t:?}");
    assert_eq!(
        during, 0,
        "{name}: {during} heap allocations over {MEASURED} packets each way"
    );
    b
}

#[test]
fn sdes_aes_cm_128_hmac_sha1_80() {
    steady_state_allocates_nothing(Some(SrtpProfile::Aes128CmHmacSha1_80), false);
}

#[test]
fn sdes_aead_aes_128_gcm() {
    steady_state_allocates_nothing(Some(SrtpProfile::AeadAes128Gcm), false);
}

#[test]
fn sdes_aead_aes_256_gcm() {
    steady_state_allocates_nothing(Some(SrtpProfile::AeadAes256Gcm), false);
}

#[test]
fn dtls_srtp_with_ice_consent() {
    steady_state_allocates_nothing(None, false);
}

#[test]
fn webrtc_internal_leg_to_a_browser() {
    steady_state_allocates_nothing(None, true);
}

/// A recorded call allocates nothing per packet either: each forwarded packet's payload is
/// copied into a preallocated slot and queued to the recorder's writer thread (whose own
/// allocations, on its thread, are not the call's). Every forwarded packet is then in the files
/// or counted as dropped (the writer may fall behind a simulation running at full speed).
#[test]
fn dtls_srtp_recorded() {
    use relay::call::fork::RecordRequest;
    use relay::record::ogg::summarize;
    use relay::record::{Recorder, RecordingConfig};

    let dir = std::env::temp_dir().join(format!("relay-path-alloc-rec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rec = Recorder::start(RecordingConfig {
        dir: Some(dir.clone()),
        name_template: "{call_id}".into(),
        queue_packets: 4096,
    })
    .unwrap();
    let mut b = Bench::new(None, false);
    let open = rec
        .create(
            &b.call.call_id.clone(),
            "b",
            "c",
            std::time::SystemTime::now(),
        )
        .unwrap();
    let start = RecordRequest::Start {
        open: Box::new(open),
        link: rec.link().clone(),
    };
    b.call.record(start, b.now).unwrap();
    let mut b = steady_state_of(b, None, false);
    let status = b.call.record(RecordRequest::Stop, b.now).unwrap().unwrap();
    rec.shutdown();
    for f in [&status.files.consumer, &status.files.agent] {
        summarize(&std::fs::read(f).unwrap()).expect("a valid Ogg Opus file");
    }
    let events = std::fs::read_to_string(&status.files.events).unwrap();
    let last: serde_json::Value = serde_json::from_str(events.lines().last().unwrap()).unwrap();
    let written =
        last["consumer"]["packets"].as_u64().unwrap() + last["agent"]["packets"].as_u64().unwrap();
    let info = b.call.info();
    let forwarded = info.whatsapp.received.packets + info.internal.received.packets;
    assert_eq!(written + status.dropped_packets, forwarded, "{last}");
    assert!(written > forwarded / 2, "{written} of {forwarded} recorded");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A call with a supervisor listening in allocates nothing per packet either: each forwarded
/// packet is also copied, rewritten onto the supervisor's track and SRTP-protected into the
/// outbox for the fork's socket; the supervisor's consent checks are answered. Every packet
/// reached the supervisor's browser, authenticated.
#[test]
fn dtls_srtp_listened() {
    use relay::api::{ListenMode, ListenState};
    use relay::call::fork::ListenRequest;

    let mut b = Bench::new(None, false);
    let mut sup = Supervisor::new(b.now);
    let status = b
        .call
        .listen(
            ListenRequest::Start {
                offer_sdp: sup.offer(),
                mode: ListenMode::Listen,
                socket: LISTEN,
                local: FORK_ADDR,
                advertised: FORK_ADDR,
            },
            b.now,
            &mut b.out,
        )
        .unwrap()
        .unwrap();
    sup.accept(&status.answer_sdp, b.now).unwrap();
    sup.keep = false;
    b.supervisor = Some(sup);
    let limit = b.now + Duration::from_secs(5);
    while !b.supervisor.as_ref().unwrap().is_ready() {
        assert!(b.now < limit, "the supervisor did not connect");
        b.run_packets(1);
    }
    let before = b.tally;
    // Packets forwarded before the supervisor had its keys were counted, not sent.
    let status = |b: &mut Bench| {
        b.call
            .listen(ListenRequest::Status, b.now, &mut b.out)
            .unwrap()
            .unwrap()
    };
    let dropped_before = status(&mut b).dropped_packets;
    let mut b = steady_state_of(b, None, false);
    let t = b.tally;
    let forwarded = t.rtp_to_supervisor - before.rtp_to_supervisor;
    // Both directions: the consumer's every packet, the agent's outside its pauses.
    assert!(
        forwarded >= u64::from(MEASURED) * 19 / 10,
        "{forwarded} packets to the supervisor"
    );
    assert!(
        t.stun_to_supervisor - before.stun_to_supervisor >= 30,
        "consent answered"
    );
    let st = status(&mut b);
    assert_eq!(st.state, ListenState::Live);
    assert_eq!(
        st.dropped_packets, dropped_before,
        "nothing dropped once connected"
    );
    assert!(b.supervisor.as_ref().unwrap().trouble.is_empty());
}

/// A media server listens in over SDES-SRTP (SIPREC-like, two streams to two addresses): the
/// copy to it is protected and sent with no allocation per packet either.
#[test]
fn dtls_srtp_listened_by_a_media_server_over_sdes() {
    use relay::api::{ListenMode, ListenState};
    use relay::call::fork::ListenRequest;

    let mut b = Bench::new(None, false);
    let offer = "v=0\r\no=srs 1 1 IN IP4 10.40.0.9\r\ns=-\r\nc=IN IP4 10.40.0.9\r\nt=0 0\r\n\
                 m=audio 40000 RTP/SAVP 96\r\na=recvonly\r\na=rtpmap:96 opus/48000/2\r\n\
                 a=crypto:1 AES_CM_128_HMAC_SHA1_80 \
                 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n\
                 m=audio 40002 RTP/SAVP 96\r\na=recvonly\r\na=rtpmap:96 opus/48000/2\r\n\
                 a=crypto:1 AEAD_AES_128_GCM inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGw==\r\n";
    let status = b
        .call
        .listen(
            ListenRequest::Start {
                offer_sdp: offer.into(),
                mode: ListenMode::Listen,
                socket: LISTEN,
                local: FORK_ADDR,
                advertised: FORK_ADDR,
            },
            b.now,
            &mut b.out,
        )
        .unwrap()
        .unwrap();
    assert_eq!(status.state, ListenState::Live);
    let before = b.tally;
    let mut b = steady_state_of(b, None, false);
    let forwarded = b.tally.rtp_to_supervisor - before.rtp_to_supervisor;
    assert!(
        forwarded >= u64::from(MEASURED) * 19 / 10,
        "{forwarded} packets to the media server"
    );
    let st = b
        .call
        .listen(ListenRequest::Status, b.now, &mut b.out)
        .unwrap()
        .unwrap();
    assert_eq!(st.dropped_packets, 0);
    assert_eq!(st.consumer_packets + st.agent_packets, forwarded);
}

/// The counter works: a passing check above would otherwise prove nothing.
#[test]
fn the_counter_sees_allocations() {
    let before = allocations();
    let v = std::hint::black_box(vec![1u8; 64]);
    assert!(allocations() > before);
    drop(v);
}
