//! Two drivers back to back in simulated time: no sockets, no sleeping. Each step delivers
//! every queued datagram, then advances the clock to the earliest pending timer.

use super::*;
use crate::dtls::DtlsError;

fn identity() -> Arc<DtlsIdentity> {
    Arc::new(DtlsIdentity::generate().expect("generate identity"))
}

struct Pair {
    client: DtlsDriver,
    server: DtlsDriver,
    client_events: Vec<DtlsEvent>,
    server_events: Vec<DtlsEvent>,
    now: Instant,
    /// Datagrams the client sent, with the simulated time they left.
    client_sent_at: Vec<Instant>,
}

impl Pair {
    fn honest(cfg: &DtlsConfig) -> Pair {
        let (client_id, server_id) = (identity(), identity());
        let (c_fp, s_fp) = (
            client_id.fingerprint().clone(),
            server_id.fingerprint().clone(),
        );
        Pair::with_identities(cfg, client_id, server_id, s_fp, c_fp)
    }

    fn with_identities(
        cfg: &DtlsConfig,
        client_id: Arc<DtlsIdentity>,
        server_id: Arc<DtlsIdentity>,
        client_expects: Fingerprint,
        server_expects: Fingerprint,
    ) -> Pair {
        let now = Instant::now();
        Pair {
            client: DtlsDriver::new(client_id, cfg, DtlsRole::Client, client_expects, now),
            server: DtlsDriver::new(server_id, cfg, DtlsRole::Server, server_expects, now),
            client_events: Vec::new(),
            server_events: Vec::new(),
            now,
            client_sent_at: Vec::new(),
        }
    }

    /// Delivers datagrams both ways until both sides are quiet. `drop_client` decides, by the
    /// index of the client's datagram, whether the network loses it.
    fn deliver(&mut self, drop_client: &mut dyn FnMut(usize) -> bool) {
        let mut buf = vec![0u8; 2048];
        loop {
            let mut moved = false;
            while let Some(n) = self.client.poll_transmit(&mut buf) {
                moved = true;
                let index = self.client_sent_at.len();
                self.client_sent_at.push(self.now);
                if !drop_client(index) {
                    self.server.handle_datagram(self.now, &buf[..n]);
                }
            }
            while let Some(n) = self.server.poll_transmit(&mut buf) {
                moved = true;
                self.client.handle_datagram(self.now, &buf[..n]);
            }
            self.collect_events();
            if !moved {
                return;
            }
        }
    }

    fn collect_events(&mut self) {
        while let Some(e) = self.client.poll_event() {
            self.client_events.push(e);
        }
        while let Some(e) = self.server.poll_event() {
            self.server_events.push(e);
        }
    }

    /// Runs until both sides have reported an event or no timer is left, at most `limit` of
    /// simulated time.
    fn run(&mut self, limit: Duration, drop_client: &mut dyn FnMut(usize) -> bool) {
        let end = self.now + limit;
        self.client.start(self.now);
        self.server.start(self.now);
        loop {
            self.deliver(drop_client);
            if !self.client_events.is_empty() && !self.server_events.is_empty() {
                return;
            }
            let next = [self.client.poll_timeout(), self.server.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next else { return };
            if next > end {
                return;
            }
            self.now = self.now.max(next);
            self.client.handle_timeout(self.now);
            self.server.handle_timeout(self.now);
        }
    }
}

fn connected(events: &[DtlsEvent]) -> (SessionKeys, SrtpProfile) {
    match events {
        [DtlsEvent::Connected { keys, profile }] => (keys.clone(), *profile),
        other => panic!("expected exactly one Connected event, got {other:?}"),
    }
}

#[test]
fn handshake_connects_and_keys_mirror() {
    let mut pair = Pair::honest(&DtlsConfig::default());
    pair.run(Duration::from_secs(5), &mut |_| false);
    let (client_keys, client_profile) = connected(&pair.client_events);
    let (server_keys, server_profile) = connected(&pair.server_events);
    assert!(pair.client.is_connected() && pair.server.is_connected());
    assert_eq!(client_profile, server_profile);
    assert_eq!(client_keys.local, server_keys.remote);
    assert_eq!(client_keys.remote, server_keys.local);
    assert_ne!(client_keys.local.key, client_keys.remote.key);
    assert_eq!(client_keys.local.key.len(), client_profile.key_len());
    assert_eq!(client_keys.local.salt.len(), client_profile.salt_len());
    // No retransmission was needed on a lossless network.
    assert_eq!(pair.client.poll_timeout(), None);
    assert_eq!(pair.server.poll_timeout(), None);
}

#[test]
fn either_side_can_be_client() {
    // The same identity pair with the roles swapped: the role is per call, not per identity.
    let (a, b) = (identity(), identity());
    let cfg = DtlsConfig::default();
    for (client_id, server_id) in [(a.clone(), b.clone()), (b, a)] {
        let (c_fp, s_fp) = (
            client_id.fingerprint().clone(),
            server_id.fingerprint().clone(),
        );
        let mut pair = Pair::with_identities(&cfg, client_id, server_id, s_fp, c_fp);
        pair.run(Duration::from_secs(5), &mut |_| false);
        let (ck, _) = connected(&pair.client_events);
        let (sk, _) = connected(&pair.server_events);
        assert_eq!(ck.local, sk.remote);
    }
}

#[test]
fn wrong_server_fingerprint_fails_client_without_keys() {
    let cfg = DtlsConfig::default();
    let wrong = identity().fingerprint().clone();
    let (client_id, server_id) = (identity(), identity());
    let client_fp = client_id.fingerprint().clone();
    let mut pair = Pair::with_identities(&cfg, client_id, server_id, wrong, client_fp);
    pair.run(Duration::from_secs(20), &mut |_| false);
    assert_eq!(
        pair.client_events,
        vec![DtlsEvent::Failed(DtlsFailure::FingerprintMismatch)]
    );
    assert!(!pair.client.is_connected());
    // The client stopped before its Finished, so the server never completes either.
    assert!(
        !pair
            .server_events
            .iter()
            .any(|e| matches!(e, DtlsEvent::Connected { .. }))
    );
}

#[test]
fn wrong_client_fingerprint_fails_server_without_keys() {
    let cfg = DtlsConfig::default();
    let (client_id, server_id) = (identity(), identity());
    let server_fp = server_id.fingerprint().clone();
    let wrong = identity().fingerprint().clone();
    let mut pair = Pair::with_identities(&cfg, client_id, server_id, server_fp, wrong);
    pair.run(Duration::from_secs(20), &mut |_| false);
    assert_eq!(
        pair.server_events,
        vec![DtlsEvent::Failed(DtlsFailure::FingerprintMismatch)]
    );
    assert!(!pair.server.is_connected());
    assert!(!pair.client.is_connected());
}

#[test]
fn lost_client_hello_is_resent_after_flight_start_rto_not_a_second() {
    let cfg = DtlsConfig::default();
    let mut pair = Pair::honest(&cfg);
    let start = pair.now;
    pair.run(Duration::from_secs(5), &mut |index| index == 0);
    connected(&pair.client_events);
    connected(&pair.server_events);
    let resent = pair.client_sent_at[1];
    let gap = resent - start;
    // First retransmission is flight_start_rto with ±25% jitter.
    assert!(
        gap >= cfg.flight_start_rto * 3 / 4 && gap <= cfg.flight_start_rto * 5 / 4,
        "ClientHello resent after {gap:?} of simulated time"
    );
}

#[test]
fn silent_peer_times_out_at_handshake_timeout() {
    let cfg = DtlsConfig::default();
    let mut pair = Pair::honest(&cfg);
    let start = pair.now;
    // Everything the client sends is lost; the server also gives up (it was started).
    pair.run(Duration::from_secs(60), &mut |_| true);
    assert_eq!(
        pair.client_events,
        vec![DtlsEvent::Failed(DtlsFailure::Timeout)]
    );
    assert_eq!(
        pair.server_events,
        vec![DtlsEvent::Failed(DtlsFailure::Timeout)]
    );
    assert_eq!(pair.now - start, cfg.handshake_timeout);
    // The client kept retrying in the meantime, densely at first.
    assert!(pair.client_sent_at.len() > 3);
    assert_eq!(pair.client.poll_timeout(), None);
}

#[test]
fn unstarted_server_arms_deadline_on_first_datagram() {
    let now = Instant::now();
    let cfg = DtlsConfig::default();
    let id = identity();
    let mut server = DtlsDriver::new(
        id.clone(),
        &cfg,
        DtlsRole::Server,
        id.fingerprint().clone(),
        now,
    );
    assert_eq!(server.poll_timeout(), None);
    server.handle_datagram(now, &[22, 0xfe, 0xfd, 0, 0]);
    assert_eq!(server.poll_timeout(), Some(now + cfg.handshake_timeout));
    server.handle_timeout(now + cfg.handshake_timeout);
    assert_eq!(
        server.poll_event(),
        Some(DtlsEvent::Failed(DtlsFailure::Timeout))
    );
}

#[test]
fn garbage_never_panics_and_never_connects() {
    let cfg = DtlsConfig::default();
    let mut pair = Pair::honest(&cfg);
    let now = pair.now;
    pair.client.start(now);
    pair.server.start(now);
    let mut seed = 0x1234_5678u32;
    let mut buf = [0u8; 2048];
    for len in 0..300usize {
        let datagram: Vec<u8> = (0..len)
            .map(|i| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                // Keep the first byte in the DTLS range, as the demux would.
                if i == 0 {
                    20 + (seed >> 24) as u8 % 44
                } else {
                    (seed >> 16) as u8
                }
            })
            .collect();
        pair.server.handle_datagram(now, &datagram);
        pair.client.handle_datagram(now, &datagram);
        while pair.server.poll_transmit(&mut buf).is_some() {}
        while pair.client.poll_transmit(&mut buf).is_some() {}
    }
    pair.collect_events();
    assert!(!pair.client.is_connected() && !pair.server.is_connected());
}

#[test]
fn invalid_config_is_an_event_not_a_panic() {
    let cfg = DtlsConfig {
        flight_start_rto: Duration::ZERO,
        ..DtlsConfig::default()
    };
    let id = identity();
    let mut d = DtlsDriver::new(
        id.clone(),
        &cfg,
        DtlsRole::Client,
        id.fingerprint().clone(),
        Instant::now(),
    );
    d.start(Instant::now());
    assert!(matches!(
        d.poll_event(),
        Some(DtlsEvent::Failed(DtlsFailure::Protocol(_)))
    ));
    assert_eq!(d.poll_transmit(&mut [0u8; 2048]), None);
}

#[test]
fn key_split_follows_rfc5764() {
    // 16-byte keys and 14-byte salts: client_key | server_key | client_salt | server_salt.
    let material: Vec<u8> = (0u8..60).collect();
    let (client, profile) = session_keys(
        &material,
        dimpl::SrtpProfile::AES128_CM_SHA1_80,
        DtlsRole::Client,
    )
    .unwrap();
    assert_eq!(profile, SrtpProfile::Aes128CmHmacSha1_80);
    assert_eq!(client.local.key, (0u8..16).collect::<Vec<_>>());
    assert_eq!(client.remote.key, (16u8..32).collect::<Vec<_>>());
    assert_eq!(client.local.salt, (32u8..46).collect::<Vec<_>>());
    assert_eq!(client.remote.salt, (46u8..60).collect::<Vec<_>>());
    let (server, _) = session_keys(
        &material,
        dimpl::SrtpProfile::AES128_CM_SHA1_80,
        DtlsRole::Server,
    )
    .unwrap();
    assert_eq!(server.local, client.remote);
    assert_eq!(server.remote, client.local);
    assert!(matches!(
        session_keys(
            &material[..59],
            dimpl::SrtpProfile::AES128_CM_SHA1_80,
            DtlsRole::Client
        ),
        Err(DtlsFailure::Protocol(_))
    ));
}

#[test]
fn identity_fingerprint_is_sha256_of_its_certificate() {
    let id = identity();
    assert_eq!(id.fingerprint().algorithm, "sha-256");
    assert!(id.fingerprint().matches(&id.certificate().certificate));
    let parsed = Fingerprint::parse_sdp_value(&id.fingerprint().to_sdp_value());
    assert_eq!(parsed.as_ref(), Ok(id.fingerprint()));
    let _: Result<_, DtlsError> = parsed;
}

#[test]
fn driver_can_move_to_a_shard_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<DtlsDriver>();
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<DtlsIdentity>();
}

#[test]
fn release_frees_state_only_once_connected_and_then_reads_nothing() {
    let mut pair = Pair::honest(&DtlsConfig::default());
    // Before the handshake, release is refused: the keys are not out yet.
    pair.client.release();
    assert!(!pair.client.is_released());
    pair.run(Duration::from_secs(5), &mut |_| false);
    connected(&pair.client_events);

    pair.client.release();
    assert!(pair.client.is_released());
    assert!(
        pair.client.is_connected(),
        "still connected: the keys are in use"
    );
    // The server says goodbye; a released client reads nothing and answers nothing.
    pair.server.close();
    let mut buf = vec![0u8; 2048];
    let n = pair.server.poll_transmit(&mut buf).expect("close_notify");
    pair.client.handle_datagram(pair.now, &buf[..n]);
    pair.client
        .handle_timeout(pair.now + Duration::from_secs(60));
    assert_eq!(pair.client.poll_transmit(&mut buf), None);
    assert!(pair.client.poll_event().is_none());
    assert_eq!(pair.client.poll_timeout(), None);
}
