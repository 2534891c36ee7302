//! Test support, not used by the relay itself: in-memory stand-ins for a [`Call`]'s two peers
//! (Meta's WhatsApp media endpoint and a plain-RTP media server), Meta-shaped SDP, an RTP packet
//! source and an [`Outbox`] that never allocates.
//!
//! Shared by the call's scenario tests (`call/tests/`), the zero-allocation test
//! (`tests/path_alloc.rs`) and the path benchmark (`benches/benches/path.rs`), which can only
//! reach the relay's public API. Nothing here opens a socket: the addresses are documentation
//! addresses and time is whatever `now` the caller passes. The peers are built from the relay's
//! own modules ([`LiteAgent`], [`DtlsDriver`], [`SrtpSession`]), which are tested on their own
//! against RFC vectors and other implementations.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::api::{
    CallDirection, CallState, CreateCall, InternalKind, InternalLegSpec, SourcePolicy, WaSecurity,
};
use crate::call::{Advertised, CallConfig, CallError, CallSetup, Created, LocalSockets};
use crate::dtls::{DtlsConfig, DtlsDriver, DtlsEvent, DtlsIdentity, DtlsRole, Fingerprint};
use crate::ice::{IceConfig, IceCredentials, LiteAgent};
use crate::net::{Outbox, SocketRef, VecOutbox};
use crate::sdp::{self, WaTransport};
use crate::srtp::{self, MasterKey, SessionKeys, SrtpError, SrtpProfile, SrtpSession};
use crate::wire::classify::{PacketKind, classify};
use crate::wire::stun;

use super::Call;

pub mod browser;

const fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port))
}

/// The call's WhatsApp-facing socket (IPv4 only: one candidate keeps scenarios readable).
pub const RELAY_WA: SocketAddr = v4(192, 0, 2, 1, 40000);
/// The call's internal socket.
pub const RELAY_INTERNAL: SocketAddr = v4(10, 0, 0, 1, 30000);
/// Meta's media endpoint (its one host candidate, or the SDES `c=`/`m=` address).
pub const META: SocketAddr = v4(203, 0, 113, 61, 3480);
/// The internal media server (the address in its SDP).
pub const MEDIA_SERVER: SocketAddr = v4(10, 20, 0, 5, 24578);

/// Meta's Opus and telephone-event payload types.
pub const META_OPUS_PT: u8 = 111;
pub const META_TE_PT: u8 = 126;
/// The media server's: different from Meta's, so every forwarded packet is remapped.
pub const INTERNAL_OPUS_PT: u8 = 96;
pub const INTERNAL_TE_PT: u8 = 101;

/// Meta's Opus parameters, as in its real offers.
const META_FMTP: &str = "maxaveragebitrate=20000;maxplaybackrate=16000;minptime=20;sprop-maxcapturerate=16000;useinbandfec=1";

/// The relay socket a peer addressed, from the address it sent to.
pub fn relay_socket(to: SocketAddr) -> Option<SocketRef> {
    match to {
        RELAY_WA => Some(SocketRef::WaV4),
        RELAY_INTERNAL => Some(SocketRef::Internal),
        _ => None,
    }
}

/// The relay address a call's datagram left from.
pub fn relay_addr(via: SocketRef) -> SocketAddr {
    if via == SocketRef::Internal {
        RELAY_INTERNAL
    } else {
        RELAY_WA
    }
}

/// The media server's SDP: plain RTP/AVP with rtcp-mux at [`MEDIA_SERVER`].
pub fn internal_sdp() -> String {
    crlf(&format!(
        "v=0\n\
         o=FreeSWITCH 1733900000 1733900001 IN IP4 {ip}\n\
         s=FreeSWITCH\n\
         c=IN IP4 {ip}\n\
         t=0 0\n\
         m=audio {port} RTP/AVP {opus} {te}\n\
         a=rtpmap:{opus} opus/48000/2\n\
         a=fmtp:{opus} useinbandfec=1; minptime=20\n\
         a=rtpmap:{te} telephone-event/8000\n\
         a=fmtp:{te} 0-16\n\
         a=ptime:20\n\
         a=rtcp-mux\n\
         a=sendrecv\n",
        ip = MEDIA_SERVER.ip(),
        port = MEDIA_SERVER.port(),
        opus = INTERNAL_OPUS_PT,
        te = INTERNAL_TE_PT,
    ))
}

/// A Meta SIP-style SDES offer (`RTP/SAVP`, one `a=crypto` with `key`), shaped like the real one.
pub fn sdes_offer(key: &MasterKey) -> String {
    crlf(&format!(
        "v=0\n\
         o=- 1733927400 1733927400 IN IP4 {ip}\n\
         s=Meta\n\
         c=IN IP4 {ip}\n\
         t=0 0\n\
         m=audio {port} RTP/SAVP {META_OPUS_PT} {META_TE_PT}\n\
         a=rtpmap:{META_OPUS_PT} opus/48000/2\n\
         a=fmtp:{META_OPUS_PT} {META_FMTP}\n\
         a=rtpmap:{META_TE_PT} telephone-event/8000\n\
         a=crypto:1 {suite} {key}\n\
         a=ptime:20\n\
         a=maxptime:20\n\
         a=sendrecv\n\
         a=rtcp-mux\n",
        ip = META.ip(),
        port = META.port(),
        suite = key.profile.sdes_name(),
        key = srtp::sdes_inline(key),
    ))
}

/// A Meta WebRTC offer: ice-lite, `actpass`, one IPv4 host candidate at [`META`], the SHA-256
/// fingerprint of Meta's certificate; otherwise as in the real capture.
pub fn dtls_offer(ice: &IceCredentials, fingerprint: &Fingerprint) -> String {
    crlf(&format!(
        "v=0\n\
         o=- 1718291736428377409 2 IN IP4 127.0.0.1\n\
         s=-\n\
         t=0 0\n\
         a=group:BUNDLE audio\n\
         a=ice-lite\n\
         m=audio {port} UDP/TLS/RTP/SAVPF {META_OPUS_PT} {META_TE_PT}\n\
         c=IN IP4 {ip}\n\
         a=rtcp:{port} IN IP4 {ip}\n\
         a=candidate:3171394187 1 udp 2122260223 {ip} {port} typ host generation 0 network-cost 50\n\
         a=ice-ufrag:{ufrag}\n\
         a=ice-pwd:{pwd}\n\
         a=fingerprint:{fp}\n\
         a=setup:actpass\n\
         a=mid:audio\n\
         a=sendrecv\n\
         a=rtcp-mux\n\
         a=rtpmap:{META_OPUS_PT} opus/48000/2\n\
         a=rtcp-fb:{META_OPUS_PT} transport-cc\n\
         a=fmtp:{META_OPUS_PT} {META_FMTP}\n\
         a=rtpmap:{META_TE_PT} telephone-event/8000\n\
         a=ptime:20\n\
         a=maxptime:20\n\
         a=ssrc:2903755416 cname:Wq7pW1QmT0c4bZ9e\n",
        ip = META.ip(),
        port = META.port(),
        ufrag = ice.ufrag,
        pwd = ice.pwd,
        fp = fingerprint.to_sdp_value(),
    ))
}

pub fn crlf(text: &str) -> String {
    text.replace('\n', "\r\n")
}

/// The wall-clock time [`create_call`] gives the call (seconds since the Unix epoch), from
/// which its RTCP NTP timestamps count.
pub const CREATED_UNIX_SECS: u64 = 1_750_000_000;

/// A user-initiated call for Meta's `offer`, with a plain-RTP internal leg toward
/// [`MEDIA_SERVER`] (strict source), bound to [`RELAY_WA`] and [`RELAY_INTERNAL`].
pub fn create_call(
    offer: &str,
    cfg: CallConfig,
    identity: Arc<DtlsIdentity>,
    now: Instant,
) -> Result<Created, CallError> {
    let internal = InternalLegSpec {
        kind: InternalKind::PlainRtp,
        remote_sdp: Some(internal_sdp()),
        source: SourcePolicy::Strict,
    };
    create_call_with(offer, internal, cfg, identity, now)
}

/// [`create_call`] with any internal leg (e.g. WebRTC toward [`browser::BrowserPeer`]).
pub fn create_call_with(
    offer: &str,
    internal: InternalLegSpec,
    cfg: CallConfig,
    identity: Arc<DtlsIdentity>,
    now: Instant,
) -> Result<Created, CallError> {
    let req = CreateCall {
        call_id: "wacid.test".to_string(),
        business_number: "15550001111".to_string(),
        consumer: "15552223333".to_string(),
        direction: CallDirection::UserInitiated,
        whatsapp_offer: Some(offer.to_string()),
        whatsapp_security: WaSecurity::DtlsSrtp,
        internal,
    };
    Call::create(
        CallSetup {
            req: &req,
            sockets: LocalSockets {
                wa_v4: Some(RELAY_WA),
                wa_v6: None,
                internal: RELAY_INTERNAL,
            },
            advertised: Advertised {
                wa_v4: Some(RELAY_WA.ip()),
                wa_v6: None,
                internal: RELAY_INTERNAL.ip(),
            },
            identity,
            cfg,
        },
        now,
        SystemTime::UNIX_EPOCH + Duration::from_secs(CREATED_UNIX_SECS),
    )
}

/// What [`MetaPeer::handle_datagram`] made of a datagram from the relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// A connectivity check, answered (or not) by the ICE agent.
    Stun,
    /// A DTLS record, fed to the handshake.
    Dtls,
    /// SRTP that authenticated: the plaintext packet is `buf[..len]`.
    Rtp(usize),
    /// SRTCP that authenticated: the plaintext compound packet is `buf[..len]`.
    Rtcp(usize),
    /// Media before keys exist (a relay that sends before it may).
    NoKeys,
    /// SRTP/SRTCP that did not unprotect.
    Rejected(SrtpError),
    /// Anything else (not STUN/DTLS/RTP/RTCP, or STUN without ICE).
    Unexpected,
}

/// SRTP or SRTCP from the relay (`kind` says which), unprotected in place with a test peer's
/// receive context: what the peer made of it.
pub(crate) fn unprotect_media(
    srtp: Option<&mut SrtpSession>,
    kind: PacketKind,
    buf: &mut [u8],
) -> Received {
    let Some(s) = srtp else {
        return Received::NoKeys;
    };
    match kind {
        PacketKind::Rtp => match s.rx.unprotect_rtp(buf) {
            Ok(n) => Received::Rtp(n),
            Err(e) => Received::Rejected(e),
        },
        PacketKind::Rtcp => match s.rx.unprotect_rtcp(buf) {
            Ok(n) => Received::Rtcp(n),
            Err(e) => Received::Rejected(e),
        },
        _ => Received::Unexpected,
    }
}

/// Meta's side of the WhatsApp leg: SDES, or ICE-lite + DTLS server (the user-initiated shape,
/// where Meta offers `actpass` and the relay answers `active`).
pub struct MetaPeer {
    ice: Option<LiteAgent>,
    dtls: Option<DtlsDriver>,
    identity: Option<Arc<DtlsIdentity>>,
    /// SDES: the key Meta offered (its send key).
    sdes_key: Option<MasterKey>,
    /// Keys for both directions, once known (SDES answer applied, or DTLS connected).
    pub srtp: Option<SrtpSession>,
    scratch: Vec<u8>,
}

impl MetaPeer {
    /// Meta offering SDES with `profile`. Returns the peer and its offer.
    pub fn sdes(profile: SrtpProfile) -> (MetaPeer, String) {
        let key = srtp::random_master_key(profile);
        let offer = sdes_offer(&key);
        (
            MetaPeer {
                ice: None,
                dtls: None,
                identity: None,
                sdes_key: Some(key),
                srtp: None,
                scratch: vec![0; 2048],
            },
            offer,
        )
    }

    /// Meta offering ICE + DTLS-SRTP, with a fresh certificate. Returns the peer and its offer.
    /// Panics if the certificate cannot be generated (test support only).
    pub fn dtls(now: Instant) -> (MetaPeer, String) {
        let creds = IceCredentials::new("meta/Ufr4x9Q1", "Meta+pwd/with24charsX==");
        let identity = Arc::new(DtlsIdentity::generate().expect("certificate generation"));
        let offer = dtls_offer(&creds, identity.fingerprint());
        let ice = LiteAgent::new(creds, now, IceConfig::default());
        (
            MetaPeer {
                ice: Some(ice),
                dtls: None,
                identity: Some(identity),
                sdes_key: None,
                srtp: None,
                scratch: vec![0; 2048],
            },
            offer,
        )
    }

    /// Apply the relay's answer: its ICE credentials and certificate fingerprint (DTLS), or
    /// its SDES key (SDES).
    pub fn accept_answer(&mut self, answer: &str, now: Instant) -> Result<(), String> {
        let parsed = sdp::parse(answer).map_err(|e| e.to_string())?;
        let answer = sdp::validate_wa_offer(&parsed).map_err(|e| e.to_string())?;
        match answer.transport {
            WaTransport::Sdes(s) => {
                let local = self.sdes_key.clone().ok_or("SDES answer to a DTLS offer")?;
                let session = SrtpSession::new(&SessionKeys {
                    local,
                    remote: s.crypto.key,
                })
                .map_err(|e| e.to_string())?;
                self.srtp = Some(session);
            }
            WaTransport::Dtls(d) => {
                let (Some(ice), Some(identity)) = (self.ice.as_mut(), self.identity.clone()) else {
                    return Err("DTLS answer to an SDES offer".into());
                };
                ice.set_remote_credentials(IceCredentials::new(d.ice_ufrag, d.ice_pwd));
                let role = match d.setup {
                    sdp::Setup::Active => DtlsRole::Server,
                    _ => DtlsRole::Client,
                };
                let expect = Fingerprint {
                    algorithm: d.fingerprint.algorithm,
                    bytes: d.fingerprint.bytes,
                };
                let mut dtls = DtlsDriver::new(identity, &DtlsConfig::default(), role, expect, now);
                if role == DtlsRole::Server {
                    dtls.start(now);
                }
                self.dtls = Some(dtls);
            }
        }
        Ok(())
    }

    /// SRTP keys are in place on Meta's side.
    pub fn is_ready(&self) -> bool {
        self.srtp.is_some()
    }

    /// Feed one datagram the relay sent (from `from`, the relay's address). Replies (STUN
    /// responses, DTLS flights) go to `out`. SRTP/SRTCP is unprotected in place.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        buf: &mut [u8],
        len: usize,
        out: &mut impl Outbox,
    ) -> Received {
        let Some(data) = buf.get(..len) else {
            return Received::Unexpected;
        };
        match classify(data) {
            PacketKind::Stun => {
                let (Some(ice), Ok(msg)) = (self.ice.as_mut(), stun::parse(data)) else {
                    return Received::Unexpected;
                };
                ice.handle_stun(now, SocketRef::WaV4, from, &msg, data, out);
                Received::Stun
            }
            PacketKind::Dtls => {
                if let Some(dtls) = self.dtls.as_mut() {
                    dtls.handle_datagram(now, data);
                }
                self.after_dtls(out);
                Received::Dtls
            }
            kind @ (PacketKind::Rtp | PacketKind::Rtcp) => {
                unprotect_media(self.srtp.as_mut(), kind, &mut buf[..len])
            }
            PacketKind::Unknown => Received::Unexpected,
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let ice = self.ice.as_ref().and_then(|i| i.poll_timeout());
        let dtls = self.dtls.as_ref().and_then(|d| d.poll_timeout());
        match (ice, dtls) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant, out: &mut impl Outbox) {
        if let Some(ice) = self.ice.as_mut() {
            ice.handle_timeout(now, out);
            // Meta's own view of consent does not matter to these scenarios.
            while ice.poll_event().is_some() {}
        }
        if let Some(dtls) = self.dtls.as_mut() {
            dtls.handle_timeout(now);
        }
        self.after_dtls(out);
    }

    /// Protect an RTP packet Meta sends (`buf[..len]` plaintext; `buf` needs room for the tag).
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        match self.srtp.as_mut() {
            Some(s) => s.tx.protect_rtp(buf, len),
            None => Err(SrtpError::BadKeyLength),
        }
    }

    /// Protect an RTCP compound packet Meta sends.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        match self.srtp.as_mut() {
            Some(s) => s.tx.protect_rtcp(buf, len),
            None => Err(SrtpError::BadKeyLength),
        }
    }

    /// Meta ends DTLS: a close_notify toward the relay.
    pub fn close_dtls(&mut self, out: &mut impl Outbox) {
        if let Some(dtls) = self.dtls.as_mut() {
            dtls.close();
        }
        self.after_dtls(out);
    }

    /// Send queued DTLS flights toward the nominated relay address and pick up the keys.
    fn after_dtls(&mut self, out: &mut impl Outbox) {
        let Some(dtls) = self.dtls.as_mut() else {
            return;
        };
        let target = self.ice.as_ref().and_then(|i| i.selected());
        if let Some((via, to)) = target {
            while let Some(n) = dtls.poll_transmit(&mut self.scratch) {
                out.push(via, to, &self.scratch[..n]);
            }
        }
        while let Some(ev) = dtls.poll_event() {
            if let DtlsEvent::Connected { keys, .. } = ev {
                self.srtp = SrtpSession::new(&keys).ok();
            }
        }
    }
}

/// Writes a regular 20 ms Opus stream: sequence +1 and timestamp +960 per packet, marker on
/// the first (unless `marker_next` is cleared). The payload starts with the packet's index (big-endian `u32`), so a receiver can
/// tell exactly which packet it got ([`payload_index`]).
#[derive(Clone, Debug)]
pub struct RtpSource {
    pub ssrc: u32,
    pub pt: u8,
    pub seq: u16,
    pub ts: u32,
    /// Index of the next packet.
    pub index: u32,
    /// Set the marker bit on the next packet (talkspurt start).
    pub marker_next: bool,
}

/// RTP timestamp units per 20 ms at Opus's 48 kHz clock.
pub const TS_PER_20MS: u32 = 960;

impl RtpSource {
    pub fn new(ssrc: u32, pt: u8, seq: u16, ts: u32) -> RtpSource {
        RtpSource {
            ssrc,
            pt,
            seq,
            ts,
            index: 0,
            marker_next: true,
        }
    }

    /// Write the next packet (12-byte header + `payload_len` bytes, at least 4) into `buf` and
    /// return its length. Panics if `buf` is too short (test support only).
    pub fn write_next(&mut self, buf: &mut [u8], payload_len: usize) -> usize {
        let len = 12 + payload_len.max(4);
        let pkt = &mut buf[..len];
        pkt[0] = 0x80;
        pkt[1] = self.pt | if self.marker_next { 0x80 } else { 0 };
        self.marker_next = false;
        pkt[2..4].copy_from_slice(&self.seq.to_be_bytes());
        pkt[4..8].copy_from_slice(&self.ts.to_be_bytes());
        pkt[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        pkt[12..16].copy_from_slice(&self.index.to_be_bytes());
        pkt[16..].fill(0x5a);
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(TS_PER_20MS);
        self.index += 1;
        len
    }
}

/// The index [`RtpSource`] wrote into a payload.
pub fn payload_index(payload: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(payload.get(..4)?.try_into().ok()?))
}

/// A datagram slot of [`RingOutbox`].
struct Slot {
    via: SocketRef,
    to: SocketAddr,
    len: usize,
    data: [u8; RingOutbox::SLOT_BYTES],
}

/// An [`Outbox`] with preallocated slots: `push` copies into the next free slot and never
/// allocates (a full outbox counts the datagram in `overflowed` and drops it). `clear` empties
/// it for the next round. What the engine's send batch does, minus the syscall.
pub struct RingOutbox {
    slots: Vec<Slot>,
    len: usize,
    pub overflowed: u64,
}

impl RingOutbox {
    pub const SLOT_BYTES: usize = 1500;

    pub fn with_capacity(slots: usize) -> RingOutbox {
        RingOutbox {
            slots: (0..slots)
                .map(|_| Slot {
                    via: SocketRef::Internal,
                    to: RELAY_INTERNAL,
                    len: 0,
                    data: [0; Self::SLOT_BYTES],
                })
                .collect(),
            len: 0,
            overflowed: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Datagram `i`: where it goes and its bytes.
    pub fn get(&self, i: usize) -> Option<(SocketRef, SocketAddr, &[u8])> {
        let s = self.slots.get(..self.len)?.get(i)?;
        Some((s.via, s.to, &s.data[..s.len]))
    }

    /// Datagram `i` with its whole slot writable (for unprotecting in place): `(via, to, slot,
    /// len)`.
    pub fn get_mut(&mut self, i: usize) -> Option<(SocketRef, SocketAddr, &mut [u8], usize)> {
        let s = self.slots.get_mut(..self.len)?.get_mut(i)?;
        Some((s.via, s.to, &mut s.data[..], s.len))
    }
}

impl Outbox for RingOutbox {
    fn push(&mut self, via: SocketRef, to: SocketAddr, data: &[u8]) {
        match self.slots.get_mut(self.len) {
            Some(slot) if data.len() <= Self::SLOT_BYTES => {
                slot.via = via;
                slot.to = to;
                slot.len = data.len();
                slot.data[..data.len()].copy_from_slice(data);
                self.len += 1;
            }
            _ => self.overflowed += 1,
        }
    }
}

/// Run ICE and DTLS (or SDES readiness) between `call` and `meta` in simulated time from
/// `now`, with a lossless zero-latency network, until the call's WhatsApp leg is ready (or
/// `limit` passes). Returns the simulated time it finished at. Traffic to the internal leg is
/// discarded; the call's events are left queued for the caller.
pub fn establish(
    call: &mut Call,
    meta: &mut MetaPeer,
    mut now: Instant,
    limit: Duration,
) -> Result<Instant, String> {
    let end = now + limit;
    let mut from_call = VecOutbox::default();
    let mut from_meta = VecOutbox::default();
    call.handle_timeout(now, &mut from_call);
    loop {
        loop {
            let mut moved = false;
            for mut d in from_call.take() {
                moved = true;
                if d.via.is_whatsapp() && d.to == META {
                    let len = d.data.len();
                    meta.handle_datagram(now, relay_addr(d.via), &mut d.data, len, &mut from_meta);
                }
            }
            for mut d in from_meta.take() {
                moved = true;
                if let Some(via) = relay_socket(d.to) {
                    let len = d.data.len();
                    call.handle_datagram(now, via, META, &mut d.data, len, &mut from_call);
                }
            }
            if !moved {
                break;
            }
        }
        if call.is_ended() {
            return Err(format!(
                "call ended while connecting: {:?}",
                call.info().end_cause
            ));
        }
        if call.state() != CallState::Connecting && meta.is_ready() {
            return Ok(now);
        }
        let next = [call.poll_timeout(), meta.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .ok_or("nothing left to do and not connected")?;
        if next > end {
            return Err(format!("not connected within {limit:?}"));
        }
        now = now.max(next);
        meta.handle_timeout(now, &mut from_meta);
        call.handle_timeout(now, &mut from_call);
    }
}
