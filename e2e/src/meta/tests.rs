//! MetaPeer on real loopback sockets, with the test playing the relay's part by hand: STUN
//! checks from our own codec, DTLS from `relay::dtls::DtlsDriver`, SRTP from webrtc-srtp.

use std::net::UdpSocket;
use std::sync::Arc;

use relay::dtls::{DtlsConfig, DtlsDriver, DtlsEvent, DtlsIdentity, DtlsRole, Fingerprint};

use relay::srtp::SessionKeys;

use super::link::{random_crypto, split_crypto};
use super::*;
use crate::rtp::{RtpHeader, build_rtp, parse_rtp, read_stamp};
use crate::sdp::{Crypto, RemoteSdp, crlf, host_candidate};
use crate::stun::{self, BINDING_ERROR, BINDING_SUCCESS};

const WAIT: Duration = Duration::from_secs(10);

/// The relay's side of one call, driven by hand.
struct FakeRelay {
    sock: UdpSocket,
    ufrag: String,
    pwd: String,
    identity: Arc<DtlsIdentity>,
}

impl FakeRelay {
    fn new(ip: &str) -> FakeRelay {
        let sock = UdpSocket::bind(format!("{ip}:0")).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        FakeRelay {
            sock,
            ufrag: "rly1".into(),
            pwd: "relaypasswordrelaypassword".into(),
            identity: Arc::new(DtlsIdentity::generate().unwrap()),
        }
    }

    fn sdp(&self, setup: &str, crypto: Option<&Crypto>) -> String {
        let addr = self.sock.local_addr().unwrap();
        let proto = if crypto.is_some() {
            "RTP/SAVP"
        } else {
            "UDP/TLS/RTP/SAVPF"
        };
        let mut l = vec![
            "v=0".to_string(),
            "o=- 1 1 IN IP4 127.0.0.1".into(),
            "s=-".into(),
            "t=0 0".into(),
            format!("m=audio {} {proto} 111 126", addr.port()),
            format!("c=IN IP4 {}", addr.ip()),
            "a=mid:audio".into(),
            "a=rtcp-mux".into(),
            "a=rtpmap:111 opus/48000/2".into(),
            "a=rtpmap:126 telephone-event/8000".into(),
        ];
        match crypto {
            Some(c) => l.push(c.to_attribute()),
            None => {
                l.push(format!("a=ice-ufrag:{}", self.ufrag));
                l.push(format!("a=ice-pwd:{}", self.pwd));
                l.push(format!(
                    "a=fingerprint:{}",
                    self.identity.fingerprint().to_sdp_value()
                ));
                l.push(format!("a=setup:{setup}"));
                l.push(host_candidate(addr, 0));
            }
        }
        crlf(&l)
    }

    fn recv(&self) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = [0u8; 2048];
        let (n, from) = self.sock.recv_from(&mut buf).ok()?;
        Some((buf[..n].to_vec(), from))
    }

    /// Sends a check and returns the response (skipping anything else that arrives).
    fn check(
        &self,
        meta: &MetaHandle,
        to: SocketAddr,
        pwd: &str,
        nominate: bool,
    ) -> Option<Vec<u8>> {
        let tid: [u8; 12] = rand::random();
        let username = format!("{}:{}", meta.ufrag(), self.ufrag);
        let req = stun::binding_request(tid, &username, pwd, 0x6e00_01ff, 7, nominate);
        self.sock.send_to(&req, to).unwrap();
        let end = Instant::now() + Duration::from_millis(500);
        while Instant::now() < end {
            if let Some((d, _)) = self.recv()
                && Message::parse(&d).is_ok_and(|m| m.transaction_id == tid)
            {
                return Some(d);
            }
        }
        None
    }

    /// Runs the DTLS handshake toward `to` until the driver reports.
    fn handshake(&self, role: DtlsRole, meta_fp: [u8; 32], to: SocketAddr) -> DtlsEvent {
        let fp = Fingerprint {
            algorithm: "sha-256".into(),
            bytes: meta_fp.to_vec(),
        };
        let mut d = DtlsDriver::new(
            self.identity.clone(),
            &DtlsConfig::default(),
            role,
            fp,
            Instant::now(),
        );
        d.start(Instant::now());
        let end = Instant::now() + WAIT;
        let mut buf = [0u8; 2048];
        while Instant::now() < end {
            while let Some(n) = d.poll_transmit(&mut buf) {
                self.sock.send_to(&buf[..n], to).unwrap();
            }
            if let Some(e) = d.poll_event() {
                return e;
            }
            if let Some((data, from)) = self.recv()
                && from == to
                && (20..=63).contains(&data[0])
            {
                d.handle_datagram(Instant::now(), &data);
            }
            if d.poll_timeout().is_some_and(|t| Instant::now() >= t) {
                d.handle_timeout(Instant::now());
            }
        }
        panic!("DTLS handshake did not finish");
    }

    fn srtp(&self, event: &DtlsEvent) -> SrtpSession {
        match event {
            DtlsEvent::Connected { keys, .. } => SrtpSession::new(keys).unwrap(),
            other => panic!("relay DTLS failed: {other:?}"),
        }
    }

    /// Collects decrypted RTP from Meta for a while.
    fn receive_rtp(&self, srtp: &mut SrtpSession, want: usize) -> Vec<(RtpHeader, Vec<u8>)> {
        let mut got = Vec::new();
        let end = Instant::now() + WAIT;
        while got.len() < want && Instant::now() < end {
            if let Some((d, _)) = self.recv()
                && (128..=191).contains(&d[0])
                && !is_rtcp(&d)
            {
                let plain = srtp.unprotect_rtp(&d).unwrap();
                let (h, p) = parse_rtp(&plain).unwrap();
                got.push((h, p.to_vec()));
            }
        }
        got
    }
}

fn send_rtp(relay: &FakeRelay, srtp: &mut SrtpSession, to: SocketAddr, seq: u16) {
    let h = RtpHeader {
        pt: 111,
        marker: false,
        seq,
        ts: u32::from(seq) * 960,
        ssrc: 0xabc,
    };
    let p = srtp.protect_rtp(&build_rtp(&h, &[seq as u8; 70])).unwrap();
    relay.sock.send_to(&p, to).unwrap();
}

#[test]
fn offer_looks_like_metas() {
    let meta = MetaPeer::spawn(MetaConfig::default()).unwrap();
    let offer = meta.offer_sdp();
    let sdp = RemoteSdp::parse(&offer).unwrap();
    assert!(sdp.crlf && sdp.ice_lite && sdp.rtcp_mux);
    assert_eq!(sdp.setup.as_deref(), Some("actpass"));
    assert_eq!(sdp.proto, "UDP/TLS/RTP/SAVPF");
    assert_eq!((sdp.opus_pt, sdp.dtmf_pt), (Some(111), Some(126)));
    assert!(sdp.ufrag.as_deref().is_some_and(|u| u.contains('/')));
    assert!(sdp.pwd.as_deref().is_some_and(|p| p.ends_with("==")));
    assert_eq!(sdp.fingerprint, Some(meta.fingerprint()));
    assert!(offer.contains("a=group:BUNDLE audio\r\n"));
    assert!(offer.contains("a=rtcp-fb:111 transport-cc\r\n"));
    assert!(offer.contains("useinbandfec=1"));
    assert!(offer.contains("a=ptime:20\r\na=maxptime:20\r\n"));
    assert_eq!(sdp.ssrcs, vec![meta.ssrc()]);
    let (v4, v6) = meta.local_addrs();
    assert_eq!(sdp.candidates.first(), Some(&v4));
    if let Some(v6) = v6 {
        assert_eq!(sdp.candidates.get(1), Some(&v6));
    }
}

#[test]
fn user_initiated_call_meta_as_dtls_server() {
    let meta = MetaPeer::spawn(MetaConfig::default().profiles(&[SrtpProfile::Aes128CmHmacSha1_80]))
        .unwrap();
    let relay = FakeRelay::new("127.0.0.1");
    let (meta_v4, _) = meta.local_addrs();

    // Before Meta has our answer, checks go unanswered.
    assert!(relay.check(&meta, meta_v4, &meta.pwd(), false).is_none());
    assert_eq!(meta.stats().stun_before_remote_sdp, 1);

    meta.set_remote_sdp(&relay.sdp("active", None)).unwrap();
    // Wrong password: no answer, counted.
    assert!(
        relay
            .check(&meta, meta_v4, "not the password", false)
            .is_none()
    );
    assert_eq!(meta.stats().stun_auth_failures, 1);

    let resp = relay.check(&meta, meta_v4, &meta.pwd(), true).unwrap();
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.msg_type, BINDING_SUCCESS);
    assert!(m.check_integrity(meta.pwd().as_bytes()));
    assert_eq!(m.check_fingerprint(), Some(true));
    assert_eq!(
        m.xor_mapped_address(),
        Some(relay.sock.local_addr().unwrap())
    );
    assert_eq!(
        meta.stats().nominated,
        Some(relay.sock.local_addr().unwrap())
    );

    let event = relay.handshake(DtlsRole::Client, meta.fingerprint(), meta_v4);
    assert!(matches!(
        event,
        DtlsEvent::Connected {
            profile: SrtpProfile::Aes128CmHmacSha1_80,
            ..
        }
    ));
    let mut srtp = relay.srtp(&event);
    assert!(meta.wait_until(WAIT, |s| s.dtls_connected_at.is_some()));

    // Relay -> Meta: recorded with header fields and payload.
    for seq in 0..3 {
        send_rtp(&relay, &mut srtp, meta_v4, seq);
    }
    assert!(meta.wait_until(WAIT, |s| s.media.rtp_received == 3));
    let got = meta.received();
    assert_eq!(got[2].header.seq, 2);
    assert_eq!(got[2].payload, vec![2u8; 70]);
    assert_eq!(meta.stats().media.srtp_auth_failures, 0);

    // Meta -> relay: 20 ms Opus with stamped payloads, continuous seq/ts.
    meta.start_audio();
    let pkts = relay.receive_rtp(&mut srtp, 5);
    assert_eq!(pkts.len(), 5);
    for w in pkts.windows(2) {
        assert_eq!(w[1].0.seq, w[0].0.seq.wrapping_add(1));
        assert_eq!(w[1].0.ts, w[0].0.ts.wrapping_add(960));
        assert_eq!(w[1].0.pt, 111);
        assert!((60..=120).contains(&w[1].1.len()));
        assert_eq!(
            read_stamp(&w[1].1).map(|s| s.0),
            read_stamp(&w[0].1).map(|s| s.0 + 1)
        );
    }
    meta.stop();
}

#[test]
fn business_initiated_call_meta_as_dtls_client() {
    let meta = MetaPeer::spawn(
        MetaConfig::default()
            .dtls_client()
            .profiles(&[SrtpProfile::AeadAes128Gcm]),
    )
    .unwrap();
    let relay = FakeRelay::new("127.0.0.1");
    let answer = meta.answer_sdp(&relay.sdp("actpass", None)).unwrap();
    let parsed = RemoteSdp::parse(&answer).unwrap();
    assert_eq!(parsed.setup.as_deref(), Some("active"));
    assert!(parsed.ice_lite);
    let (meta_v4, _) = meta.local_addrs();
    // Nomination makes Meta send its ClientHello to us.
    relay.check(&meta, meta_v4, &meta.pwd(), true).unwrap();
    let event = relay.handshake(DtlsRole::Server, meta.fingerprint(), meta_v4);
    assert!(matches!(
        event,
        DtlsEvent::Connected {
            profile: SrtpProfile::AeadAes128Gcm,
            ..
        }
    ));
    let mut srtp = relay.srtp(&event);
    meta.send_dtmf(5, Duration::from_millis(40));
    let pkts = relay.receive_rtp(&mut srtp, 4);
    assert!(pkts.iter().all(|(h, _)| h.pt == 126));
    assert_eq!(pkts[0].1[0], 5);
    meta.stop();
}

#[test]
fn role_conflict_gets_487() {
    let meta = MetaPeer::spawn(MetaConfig::default().ipv4_only()).unwrap();
    let relay = FakeRelay::new("127.0.0.1");
    meta.set_remote_sdp(&relay.sdp("active", None)).unwrap();
    let (meta_v4, _) = meta.local_addrs();
    let tid: [u8; 12] = rand::random();
    let req = stun::MessageWriter::new(BINDING_REQUEST, tid)
        .attr(
            stun::ATTR_USERNAME,
            format!("{}:{}", meta.ufrag(), relay.ufrag).as_bytes(),
        )
        .attr(ATTR_ICE_CONTROLLED, &1u64.to_be_bytes())
        .message_integrity(meta.pwd().as_bytes())
        .fingerprint()
        .finish();
    relay.sock.send_to(&req, meta_v4).unwrap();
    let (resp, _) = (0..100).find_map(|_| relay.recv()).unwrap();
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.msg_type, BINDING_ERROR);
    assert_eq!(m.error_code(), Some(487));
    assert_eq!(meta.stats().role_conflicts, 1);
    assert_eq!(meta.stats().nominated, None);
}

#[test]
fn ipv6_checks_are_answered_from_the_ipv6_socket() {
    let meta = MetaPeer::spawn(MetaConfig::default()).unwrap();
    let (_, Some(meta_v6)) = meta.local_addrs() else {
        // No IPv6 loopback on this machine; the emulator treats IPv6 as optional too.
        return;
    };
    let relay = FakeRelay::new("[::1]");
    meta.set_remote_sdp(&relay.sdp("active", None)).unwrap();
    let resp = relay.check(&meta, meta_v6, &meta.pwd(), true).unwrap();
    let m = Message::parse(&resp).unwrap();
    assert_eq!(
        m.xor_mapped_address(),
        Some(relay.sock.local_addr().unwrap())
    );
    let event = relay.handshake(DtlsRole::Client, meta.fingerprint(), meta_v6);
    relay.srtp(&event);
}

#[test]
fn wrong_relay_fingerprint_is_refused_by_meta() {
    let meta = MetaPeer::spawn(MetaConfig::default().ipv4_only()).unwrap();
    let relay = FakeRelay::new("127.0.0.1");
    let impostor = FakeRelay::new("127.0.0.1");
    // The SDP carries the impostor's fingerprint, the DTLS the relay's certificate.
    let sdp = impostor.sdp("active", None).replace(
        &format!("m=audio {}", impostor.sock.local_addr().unwrap().port()),
        &format!("m=audio {}", relay.sock.local_addr().unwrap().port()),
    );
    meta.set_remote_sdp(&sdp).unwrap();
    let (meta_v4, _) = meta.local_addrs();
    relay.check(&meta, meta_v4, &meta.pwd(), true).unwrap();
    let fp = Fingerprint {
        algorithm: "sha-256".into(),
        bytes: meta.fingerprint().to_vec(),
    };
    let mut d = DtlsDriver::new(
        relay.identity.clone(),
        &DtlsConfig::default(),
        DtlsRole::Client,
        fp,
        Instant::now(),
    );
    d.start(Instant::now());
    let mut buf = [0u8; 2048];
    let failed = wait_until(WAIT, || {
        while let Some(n) = d.poll_transmit(&mut buf) {
            relay.sock.send_to(&buf[..n], meta_v4).unwrap();
        }
        if let Some((data, _)) = relay.recv() {
            d.handle_datagram(Instant::now(), &data);
        }
        if d.poll_timeout().is_some_and(|t| Instant::now() >= t) {
            d.handle_timeout(Instant::now());
        }
        meta.stats().dtls_failure.is_some()
    });
    assert!(
        failed,
        "Meta accepted a certificate that does not match the SDP"
    );
    assert!(!d.is_connected());
    assert_eq!(meta.stats().srtp_profile, None);
}

#[test]
fn sdes_call_exchanges_srtp_without_ice_or_dtls() {
    let meta =
        MetaPeer::spawn(MetaConfig::default().sdes(SrtpProfile::Aes128CmHmacSha1_80)).unwrap();
    let offer = RemoteSdp::parse(&meta.offer_sdp()).unwrap();
    assert_eq!(offer.proto, "RTP/SAVP");
    assert!(offer.ufrag.is_none() && offer.fingerprint.is_none() && !offer.ice_lite);
    let meta_crypto = offer.cryptos.first().unwrap().clone();
    let relay = FakeRelay::new("127.0.0.1");
    let relay_crypto = random_crypto(SrtpProfile::Aes128CmHmacSha1_80, 1);
    meta.set_remote_sdp(&relay.sdp("", Some(&relay_crypto)))
        .unwrap();
    let keys = SessionKeys {
        local: split_crypto(&relay_crypto),
        remote: split_crypto(&meta_crypto),
    };
    let mut srtp = SrtpSession::new(&keys).unwrap();
    let to = offer.media_address().unwrap();
    send_rtp(&relay, &mut srtp, to, 9);
    assert!(meta.wait_until(WAIT, |s| s.media.rtp_received == 1));
    meta.start_audio();
    assert_eq!(relay.receive_rtp(&mut srtp, 2).len(), 2);
}

#[test]
fn wait_for_media_holds_audio_until_the_first_packet() {
    let meta = MetaPeer::spawn(
        MetaConfig::default()
            .sdes(SrtpProfile::AeadAes128Gcm)
            .wait_for_media(),
    )
    .unwrap();
    let offer = RemoteSdp::parse(&meta.offer_sdp()).unwrap();
    let relay = FakeRelay::new("127.0.0.1");
    let relay_crypto = random_crypto(SrtpProfile::AeadAes128Gcm, 1);
    meta.set_remote_sdp(&relay.sdp("", Some(&relay_crypto)))
        .unwrap();
    let keys = SessionKeys {
        local: split_crypto(&relay_crypto),
        remote: split_crypto(offer.cryptos.first().unwrap()),
    };
    let mut srtp = SrtpSession::new(&keys).unwrap();
    meta.start_audio();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(meta.stats().media.rtp_sent, 0);
    send_rtp(&relay, &mut srtp, offer.media_address().unwrap(), 1);
    assert_eq!(relay.receive_rtp(&mut srtp, 2).len(), 2);
}
