//! A supervisor's browser in memory, for the listen-in's tests and benchmarks: full ICE as the
//! controlling agent (every check nominates, as Chrome's do, and keeps sending consent checks),
//! DTLS as the client, SRTP from the exported keys; it unprotects and keeps what the relay
//! sends. Built from the relay's own ICE, DTLS and SRTP modules (each tested on its own against
//! RFC vectors and other stacks); the real-browser test is e2e's Chromium one.
//!
//! Its transport ([`BrowserTransport`]: ICE, DTLS, keys) is also the call's in-memory browser
//! agent's (`call::testing::BrowserPeer`, a WebRTC internal leg): the two differ only in their
//! SDP and in what they do with media.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use crate::dtls::{DtlsConfig, DtlsDriver, DtlsEvent, DtlsIdentity, DtlsRole, Fingerprint};
use crate::ice::{ControllingAgent, IceConfig, IceCredentials, IceEvent};
use crate::net::{Outbox, SocketRef};
use crate::srtp::SrtpSession;
use crate::wire::classify::{PacketKind, classify};
use crate::wire::stun;
use crate::wire::stun::StunError;

/// The supervisor's browser's address.
pub const SUPERVISOR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 30, 0, 7)), 50100);
/// Its one socket's label (it only matters to its own ICE agent).
const SOCKET: SocketRef = SocketRef::new(0);

/// A browser's transport in memory: full ICE as the controlling agent on one socket, DTLS over
/// the selected pair once ICE connects, SRTP from the exported keys. Allocates nothing per
/// packet once up (ICE events are kept only when asked).
pub struct BrowserTransport {
    pub ice: ControllingAgent,
    dtls: Option<DtlsDriver>,
    identity: Arc<DtlsIdentity>,
    /// The label of our one socket (it only matters to our own agent).
    socket: SocketRef,
    /// Both directions, once DTLS completed.
    pub srtp: Option<SrtpSession>,
    /// Keep every ICE event in `ice_events`.
    pub keep_ice_events: bool,
    pub ice_events: Vec<IceEvent>,
    /// The relay closed DTLS (close_notify).
    pub dtls_closed: bool,
    /// DTLS failures, in order.
    pub dtls_failures: Vec<String>,
    scratch: Vec<u8>,
}

impl BrowserTransport {
    /// A transport at `local` (socket label `socket`) with ICE credentials `ufrag`/`pwd` and a
    /// fresh certificate. Panics if it cannot be generated (test support).
    pub fn new(
        ufrag: &str,
        pwd: &str,
        socket: SocketRef,
        local: SocketAddr,
        now: Instant,
    ) -> BrowserTransport {
        let mut ice =
            ControllingAgent::new(IceCredentials::new(ufrag, pwd), now, IceConfig::default());
        ice.add_local(socket, local);
        BrowserTransport {
            ice,
            dtls: None,
            identity: Arc::new(DtlsIdentity::generate().expect("browser certificate")),
            socket,
            srtp: None,
            keep_ice_events: false,
            ice_events: Vec::new(),
            dtls_closed: false,
            dtls_failures: Vec::new(),
            scratch: vec![0; 2048],
        }
    }

    /// Our certificate's fingerprint, as SDP writes it.
    pub fn fingerprint_sdp(&self) -> String {
        self.identity.fingerprint().to_sdp_value()
    }

    /// Swap in another certificate after the SDP was written: the relay must refuse it.
    pub fn use_other_certificate(&mut self) {
        self.identity = Arc::new(DtlsIdentity::generate().expect("browser certificate"));
    }

    /// The relay's side from its SDP: its ICE credentials and candidates (address, priority),
    /// and the fingerprint its certificate must have; we take DTLS role `role`.
    pub fn set_remote(
        &mut self,
        creds: IceCredentials,
        candidates: impl IntoIterator<Item = (SocketAddr, u32)>,
        fingerprint: Fingerprint,
        role: DtlsRole,
        now: Instant,
    ) {
        self.ice.set_remote_credentials(creds);
        for (addr, priority) in candidates {
            self.ice.add_remote_candidate(addr, priority);
        }
        self.dtls = Some(DtlsDriver::new(
            self.identity.clone(),
            &DtlsConfig::default(),
            role,
            fingerprint,
            now,
        ));
    }

    pub fn is_ready(&self) -> bool {
        self.srtp.is_some()
    }

    /// A STUN message from `from`; replies go to `out`. Call [`Self::after_input`] next.
    pub fn handle_stun(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        out: &mut impl Outbox,
    ) -> Result<(), StunError> {
        let msg = stun::parse(data)?;
        self.ice
            .handle_stun(now, self.socket, from, &msg, data, out);
        Ok(())
    }

    /// A DTLS record. Call [`Self::after_input`] next.
    pub fn handle_dtls(&mut self, now: Instant, data: &[u8]) {
        if let Some(d) = self.dtls.as_mut() {
            d.handle_datagram(now, data);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.ice.poll_timeout(),
            self.dtls.as_ref().and_then(|d| d.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn handle_timeout(&mut self, now: Instant, out: &mut impl Outbox) {
        self.ice.handle_timeout(now, out);
        if let Some(d) = self.dtls.as_mut() {
            d.handle_timeout(now);
        }
        self.after_input(now, out);
    }

    /// Start DTLS once our nominated pair works; send its flights; take the keys.
    pub fn after_input(&mut self, now: Instant, out: &mut impl Outbox) {
        while let Some(ev) = self.ice.poll_event() {
            if matches!(ev, IceEvent::Connected { .. })
                && let Some(d) = self.dtls.as_mut()
            {
                d.start(now);
            }
            if self.keep_ice_events {
                self.ice_events.push(ev);
            }
        }
        let Some(d) = self.dtls.as_mut() else {
            return;
        };
        if let Some((via, to)) = self.ice.selected() {
            while let Some(n) = d.poll_transmit(&mut self.scratch) {
                out.push(via, to, &self.scratch[..n]);
            }
        }
        while let Some(ev) = d.poll_event() {
            match ev {
                DtlsEvent::Connected { keys, .. } => self.srtp = SrtpSession::new(&keys).ok(),
                DtlsEvent::Closed => self.dtls_closed = true,
                DtlsEvent::Failed(f) => self.dtls_failures.push(f.to_string()),
            }
        }
    }
}

pub struct Supervisor {
    /// Its ICE, DTLS and SRTP.
    pub transport: BrowserTransport,
    /// Plaintext RTP received, in order (unless `keep` is off).
    pub got: Vec<Vec<u8>>,
    /// Keep what arrives in `got` (off: only count it, allocating nothing per packet).
    pub keep: bool,
    /// RTP packets received and authenticated.
    pub received: u64,
    /// The relay closed DTLS (close_notify).
    pub closed: bool,
    /// The tab is gone: nothing answered or sent.
    pub gone: bool,
    /// What did not authenticate or parse (should stay empty).
    pub trouble: Vec<String>,
}

impl Supervisor {
    /// A browser with a fresh certificate. Panics if it cannot be generated (test support).
    pub fn new(now: Instant) -> Supervisor {
        Supervisor {
            transport: BrowserTransport::new(
                "Wq7b",
                "5Tg0s5hX2XJq6VQxE0m1qW2y",
                SOCKET,
                SUPERVISOR,
                now,
            ),
            got: Vec::new(),
            keep: true,
            received: 0,
            closed: false,
            gone: false,
            trouble: Vec::new(),
        }
    }

    /// Chrome's offer for two `recvonly` audio transceivers (BUNDLE, actpass, rtcp-mux, Opus
    /// 111 among RED/G722/PCMU/telephone-event, an mDNS host candidate).
    pub fn offer(&self) -> String {
        let creds = self.transport.ice.local_credentials();
        let section = |mid: u8| {
            format!(
                "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 126\r\n\
                 c=IN IP4 0.0.0.0\r\n\
                 a=rtcp:9 IN IP4 0.0.0.0\r\n\
                 a=candidate:1 1 udp 2113937151 3a1f.local 50100 typ host generation 0\r\n\
                 a=ice-ufrag:{}\r\na=ice-pwd:{}\r\na=ice-options:trickle\r\n\
                 a=fingerprint:{}\r\na=setup:actpass\r\na=mid:{mid}\r\n\
                 a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
                 a=recvonly\r\na=rtcp-mux\r\na=rtcp-rsize\r\n\
                 a=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\n\
                 a=fmtp:111 minptime=10;useinbandfec=1\r\n\
                 a=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\na=rtpmap:9 G722/8000\r\n\
                 a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
                 a=rtpmap:126 telephone-event/8000\r\n",
                creds.ufrag,
                creds.pwd,
                self.transport.fingerprint_sdp()
            )
        };
        format!(
            "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
             a=group:BUNDLE 0 1\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS\r\n{}{}",
            section(0),
            section(1)
        )
    }

    /// Take the relay's answer: its credentials, its one candidate, its fingerprint.
    pub fn accept(&mut self, answer: &str, now: Instant) -> Result<(), String> {
        let attr = |name: &str| {
            answer
                .lines()
                .find_map(|l| l.strip_prefix(&format!("a={name}:")))
                .map(|v| v.trim().to_string())
                .ok_or_else(|| format!("no a={name} in the answer"))
        };
        let creds = IceCredentials::new(attr("ice-ufrag")?, attr("ice-pwd")?);
        let cand = attr("candidate")?;
        let f: Vec<&str> = cand.split(' ').collect();
        let (Some(prio), Some(ip), Some(port)) = (f.get(3), f.get(4), f.get(5)) else {
            return Err(format!("short candidate {cand:?}"));
        };
        let addr = SocketAddr::new(
            ip.parse().map_err(|e| format!("{e}"))?,
            port.parse().map_err(|e| format!("{e}"))?,
        );
        let prio = prio.parse().map_err(|e| format!("{e}"))?;
        let fp = Fingerprint::parse_sdp_value(&attr("fingerprint")?).map_err(|e| e.to_string())?;
        self.transport
            .set_remote(creds, [(addr, prio)], fp, DtlsRole::Client, now);
        Ok(())
    }

    pub fn is_ready(&self) -> bool {
        self.transport.is_ready()
    }

    /// One datagram from the relay's fork socket at `from`; replies go to `out`.
    pub fn handle(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &mut [u8],
        out: &mut impl Outbox,
    ) {
        if self.gone {
            return;
        }
        match classify(data) {
            PacketKind::Stun => {
                if let Err(e) = self.transport.handle_stun(now, from, data, out) {
                    self.trouble.push(format!("STUN: {e:?}"));
                }
            }
            PacketKind::Dtls => self.transport.handle_dtls(now, data),
            PacketKind::Rtp => {
                let len = data.len();
                match self
                    .transport
                    .srtp
                    .as_mut()
                    .map(|s| s.rx.unprotect_rtp(&mut data[..len]))
                {
                    Some(Ok(n)) => {
                        self.received += 1;
                        if self.keep {
                            self.got.push(data[..n].to_vec());
                        }
                    }
                    other => self
                        .trouble
                        .push(format!("SRTP: {:?}", other.map(|r| r.err()))),
                }
            }
            other => self.trouble.push(format!("unexpected {other:?}")),
        }
        self.after(now, out);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.gone {
            return None;
        }
        self.transport.poll_timeout()
    }

    pub fn handle_timeout(&mut self, now: Instant, out: &mut impl Outbox) {
        if self.gone {
            return;
        }
        self.transport.handle_timeout(now, out);
        self.after_transport();
    }

    fn after(&mut self, now: Instant, out: &mut impl Outbox) {
        self.transport.after_input(now, out);
        self.after_transport();
    }

    /// What the transport saw of DTLS: the relay closing it, failures (trouble).
    fn after_transport(&mut self) {
        self.closed |= self.transport.dtls_closed;
        for f in self.transport.dtls_failures.drain(..) {
            self.trouble.push(format!("DTLS: {f}"));
        }
    }
}

/// Run ICE and DTLS between a call's listen-in (on socket `via`) and `sup` in simulated time
/// from `now`, over a lossless zero-latency network, until the supervisor has keys (or `limit`
/// passes). The call's other traffic is discarded; its events stay queued. Returns the time it
/// finished at.
pub fn connect(
    call: &mut crate::call::Call,
    sup: &mut Supervisor,
    via: SocketRef,
    mut now: Instant,
    limit: std::time::Duration,
) -> Result<Instant, String> {
    let end = now + limit;
    let mut from_call = crate::net::VecOutbox::default();
    let mut from_sup = crate::net::VecOutbox::default();
    loop {
        pump(call, sup, via, now, &mut from_call, &mut from_sup);
        if sup.is_ready() {
            return Ok(now);
        }
        let next = [call.poll_timeout(), sup.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .ok_or("nothing left to do and not connected")?;
        if next > end {
            return Err(format!("the supervisor did not connect within {limit:?}"));
        }
        now = now.max(next);
        sup.handle_timeout(now, &mut from_sup);
        if call.poll_timeout().is_some_and(|t| t <= now) {
            call.handle_timeout(now, &mut from_call);
        }
    }
}

/// Deliver datagrams between the call's listen socket `via` and the supervisor until the
/// network is quiet. What the call sends elsewhere is dropped.
pub fn pump(
    call: &mut crate::call::Call,
    sup: &mut Supervisor,
    via: SocketRef,
    now: Instant,
    from_call: &mut crate::net::VecOutbox,
    from_sup: &mut crate::net::VecOutbox,
) {
    loop {
        let mut moved = false;
        for mut d in from_call.take() {
            if d.via == via && d.to == SUPERVISOR {
                moved = true;
                sup.handle(now, FORK_ADDR, &mut d.data, from_sup);
            }
        }
        for mut d in from_sup.take() {
            moved = true;
            let len = d.data.len();
            call.handle_datagram(now, via, SUPERVISOR, &mut d.data, len, from_call);
        }
        if !moved {
            return;
        }
    }
}

/// Where tests bind the fork's socket.
pub const FORK_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 31000);
