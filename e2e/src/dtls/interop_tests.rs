//! The first interop proof: the relay's DTLS (`dimpl`, via `relay::dtls::DtlsDriver`) against
//! webrtc-rs `rtc-dtls`, in memory and in simulated time, both roles, each SRTP profile. Keys
//! are then checked the way a call uses them: webrtc-srtp contexts built from each side's
//! exported keys must decrypt what the other side encrypted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay::dtls::{
    DtlsConfig, DtlsDriver, DtlsEvent, DtlsFailure, DtlsIdentity, DtlsRole, Fingerprint,
};
use relay::srtp::{SessionKeys, SrtpProfile};

use super::{DtlsSetup, PeerCertificate, PeerDtls};
use crate::rtp::{RtpHeader, build_rtp, build_sender_report, parse_rtp};
use crate::srtp::SrtpSession;

fn relay_addr() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}
fn peer_addr() -> SocketAddr {
    "127.0.0.1:3478".parse().unwrap()
}

struct Harness {
    now: Instant,
    relay: DtlsDriver,
    peer: PeerDtls,
    relay_events: Vec<DtlsEvent>,
    /// Index of each relay datagram and when it left.
    relay_sent_at: Vec<Instant>,
}

struct Setup {
    relay_role: DtlsRole,
    peer_profiles: Vec<SrtpProfile>,
    relay_expects_wrong: bool,
    peer_expects_wrong: bool,
}

impl Setup {
    fn honest(relay_role: DtlsRole, profile: SrtpProfile) -> Setup {
        Setup {
            relay_role,
            peer_profiles: vec![profile],
            relay_expects_wrong: false,
            peer_expects_wrong: false,
        }
    }
}

impl Harness {
    fn new(s: &Setup) -> Harness {
        let now = Instant::now();
        let identity = Arc::new(DtlsIdentity::generate().unwrap());
        let cert = PeerCertificate::generate().unwrap();
        let other = PeerCertificate::generate().unwrap();
        let relay_expects = if s.relay_expects_wrong {
            other.fingerprint()
        } else {
            cert.fingerprint()
        };
        // The relay learns the peer's fingerprint the way a call does: from SDP text.
        let relay_expects = Fingerprint::parse_sdp_value(&format!(
            "sha-256 {}",
            super::format_fingerprint(&relay_expects)
        ))
        .unwrap();
        let mut peer_expects: [u8; 32] = identity.fingerprint().bytes.clone().try_into().unwrap();
        if s.peer_expects_wrong {
            peer_expects[0] ^= 1;
        }
        let setup = match s.relay_role {
            DtlsRole::Client => DtlsSetup::Server,
            DtlsRole::Server => DtlsSetup::Client,
        };
        Harness {
            now,
            relay: DtlsDriver::new(
                identity,
                &DtlsConfig::default(),
                s.relay_role,
                relay_expects,
                now,
            ),
            peer: PeerDtls::new(
                &cert,
                setup,
                &s.peer_profiles,
                peer_expects,
                peer_addr(),
                relay_addr(),
                Duration::from_secs(1),
            )
            .unwrap(),
            relay_events: Vec::new(),
            relay_sent_at: Vec::new(),
        }
    }

    fn deliver(&mut self, drop_relay: &mut dyn FnMut(usize) -> bool) {
        let mut buf = vec![0u8; 2048];
        loop {
            let mut moved = false;
            while let Some(n) = self.relay.poll_transmit(&mut buf) {
                moved = true;
                let index = self.relay_sent_at.len();
                self.relay_sent_at.push(self.now);
                if !drop_relay(index) {
                    self.peer.handle(self.now, &buf[..n]);
                }
            }
            while let Some(d) = self.peer.poll_transmit() {
                moved = true;
                self.relay.handle_datagram(self.now, &d);
            }
            while let Some(e) = self.relay.poll_event() {
                self.relay_events.push(e);
            }
            if !moved {
                return;
            }
        }
    }

    fn done(&self) -> bool {
        let peer_done = self.peer.is_connected() || self.peer.failure().is_some();
        !self.relay_events.is_empty() && peer_done
    }

    fn run(&mut self, limit: Duration, drop_relay: &mut dyn FnMut(usize) -> bool) {
        let end = self.now + limit;
        self.relay.start(self.now);
        self.peer.start(self.now);
        loop {
            self.deliver(drop_relay);
            if self.done() {
                return;
            }
            let next = [self.relay.poll_timeout(), self.peer.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next else { return };
            if next > end {
                return;
            }
            self.now = self.now.max(next);
            self.relay.handle_timeout(self.now);
            self.peer.handle_timeout(self.now);
        }
    }

    fn relay_keys(&self) -> (SessionKeys, SrtpProfile) {
        match self.relay_events.as_slice() {
            [DtlsEvent::Connected { keys, profile }] => (keys.clone(), *profile),
            other => panic!("relay did not connect: {other:?}"),
        }
    }
}

/// Media both ways with webrtc-srtp contexts built from each side's exported keys.
fn assert_srtp_round_trips(relay: &SessionKeys, peer: &SessionKeys) {
    let mut relay_srtp = SrtpSession::new(relay).unwrap();
    let mut peer_srtp = SrtpSession::new(peer).unwrap();
    one_way(&mut peer_srtp, &mut relay_srtp, 0x1000);
    one_way(&mut relay_srtp, &mut peer_srtp, 0x2000);
}

fn one_way(from: &mut SrtpSession, to: &mut SrtpSession, ssrc: u32) {
    for seq in 0..3u16 {
        let h = RtpHeader {
            pt: 111,
            marker: seq == 0,
            seq,
            ts: 960 * u32::from(seq),
            ssrc,
        };
        let plain = build_rtp(&h, &[seq as u8; 80]);
        let protected = from.protect_rtp(&plain).unwrap();
        assert_ne!(protected[12..92], plain[12..], "payload must be encrypted");
        let back = to.unprotect_rtp(&protected).unwrap();
        assert_eq!(back, plain);
        assert_eq!(parse_rtp(&back).map(|(h2, _)| h2), Some(h));
    }
    let sr = build_sender_report(ssrc, 960, 3, 240);
    let protected = from.protect_rtcp(&sr).unwrap();
    assert_eq!(to.unprotect_rtcp(&protected).unwrap(), sr);
}

const PROFILES: [SrtpProfile; 3] = [
    SrtpProfile::Aes128CmHmacSha1_80,
    SrtpProfile::AeadAes128Gcm,
    SrtpProfile::AeadAes256Gcm,
];

#[test]
fn dimpl_and_rtc_dtls_agree_in_both_roles_and_every_profile() {
    for role in [DtlsRole::Client, DtlsRole::Server] {
        for profile in PROFILES {
            let mut h = Harness::new(&Setup::honest(role, profile));
            h.run(Duration::from_secs(10), &mut |_| false);
            assert!(
                h.peer.is_connected(),
                "relay {role:?}, {profile}: rtc-dtls side failed: {:?}",
                h.peer.failure()
            );
            let (relay_keys, negotiated) = h.relay_keys();
            assert_eq!(negotiated, profile, "relay {role:?}");
            let peer_keys = h.peer.keys().unwrap().clone();
            assert_eq!(
                relay_keys.local, peer_keys.remote,
                "relay {role:?}, {profile}"
            );
            assert_eq!(
                relay_keys.remote, peer_keys.local,
                "relay {role:?}, {profile}"
            );
            assert_srtp_round_trips(&relay_keys, &peer_keys);
        }
    }
}

#[test]
fn peer_offering_all_profiles_still_connects() {
    for role in [DtlsRole::Client, DtlsRole::Server] {
        let mut h = Harness::new(&Setup {
            peer_profiles: PROFILES.to_vec(),
            ..Setup::honest(role, SrtpProfile::AeadAes128Gcm)
        });
        h.run(Duration::from_secs(10), &mut |_| false);
        let (relay_keys, _) = h.relay_keys();
        assert_srtp_round_trips(&relay_keys, h.peer.keys().unwrap());
    }
}

#[test]
fn relay_rejects_a_peer_certificate_that_does_not_match_sdp() {
    for role in [DtlsRole::Client, DtlsRole::Server] {
        let mut h = Harness::new(&Setup {
            relay_expects_wrong: true,
            ..Setup::honest(role, SrtpProfile::Aes128CmHmacSha1_80)
        });
        h.run(Duration::from_secs(20), &mut |_| false);
        assert_eq!(
            h.relay_events.first(),
            Some(&DtlsEvent::Failed(DtlsFailure::FingerprintMismatch)),
            "relay {role:?}"
        );
        assert!(!h.relay.is_connected());
    }
}

#[test]
fn peer_rejects_a_relay_certificate_that_does_not_match_sdp() {
    for role in [DtlsRole::Client, DtlsRole::Server] {
        let mut h = Harness::new(&Setup {
            peer_expects_wrong: true,
            ..Setup::honest(role, SrtpProfile::Aes128CmHmacSha1_80)
        });
        h.run(Duration::from_secs(20), &mut |_| false);
        assert!(h.peer.failure().is_some(), "relay {role:?}");
        assert!(h.peer.keys().is_none());
        // The peer aborts before its Finished, so the relay never completes.
        assert!(
            !h.relay_events
                .iter()
                .any(|e| matches!(e, DtlsEvent::Connected { .. })),
            "relay {role:?}: {:?}",
            h.relay_events
        );
    }
}

#[test]
fn lost_client_hello_toward_rtc_dtls_is_resent_within_tens_of_ms() {
    let mut h = Harness::new(&Setup::honest(DtlsRole::Client, SrtpProfile::AeadAes128Gcm));
    let start = h.now;
    h.run(Duration::from_secs(10), &mut |index| index == 0);
    h.relay_keys();
    assert!(h.peer.is_connected());
    let gap = h.relay_sent_at[1] - start;
    assert!(
        gap < Duration::from_millis(100),
        "ClientHello resent after {gap:?} of simulated time"
    );
}
