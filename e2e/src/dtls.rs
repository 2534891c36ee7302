//! The emulator's DTLS-SRTP side, on webrtc-rs `rtc-dtls` (an implementation independent of
//! the relay's `dimpl`). Sans-IO: the caller owns the socket and the clock.
//!
//! `rtc-dtls` lets us choose the SRTP protection profiles offered (as client) or accepted (as
//! server), which is how tests force AES_CM_128_HMAC_SHA1_80 or AEAD_AES_128_GCM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use relay::srtp::{MasterKey, SessionKeys, SrtpProfile};
use rtc_dtls::config::{ClientAuthType, ConfigBuilder, ExtendedMasterSecretType, HandshakeConfig};
use rtc_dtls::crypto::Certificate;
use rtc_dtls::crypto_provider::{RTCCryptoProvider, default_provider};
use rtc_dtls::endpoint::{Endpoint, EndpointEvent};
use rtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc_shared::TransportProtocol;
use sha2::{Digest, Sha256};

/// Which side of the handshake the emulated peer takes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DtlsSetup {
    /// The peer sends the ClientHello (`a=setup:active`).
    Client,
    /// The peer waits for a ClientHello (`a=setup:passive`, or actpass answered by `active`).
    Server,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerDtlsError {
    #[error("rtc-dtls: {0}")]
    Dtls(String),
    #[error("no SRTP profile configured")]
    NoProfiles,
}

fn dtls_err(e: impl std::fmt::Display) -> PeerDtlsError {
    PeerDtlsError::Dtls(e.to_string())
}

/// The emulated peer's certificate and its SHA-256 fingerprint.
#[derive(Clone)]
pub struct PeerCertificate {
    provider: Arc<dyn RTCCryptoProvider>,
    certificate: Certificate,
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for PeerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PeerCertificate({})",
            format_fingerprint(&self.fingerprint)
        )
    }
}

impl PeerCertificate {
    /// A fresh self-signed ECDSA P-256 certificate (rcgen's default key type).
    pub fn generate() -> Result<Self, PeerDtlsError> {
        let provider = default_provider().map_err(dtls_err)?;
        let certificate =
            Certificate::generate_self_signed(vec!["meta-emulator".to_owned()], provider.crypto())
                .map_err(dtls_err)?;
        let der = certificate
            .certificate
            .first()
            .ok_or_else(|| dtls_err("generated certificate chain is empty"))?;
        let fingerprint = Sha256::digest(der.as_ref()).into();
        Ok(PeerCertificate {
            provider,
            certificate,
            fingerprint,
        })
    }

    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// `sha-256 AB:CD:...` for `a=fingerprint:`.
    pub fn fingerprint_sdp(&self) -> String {
        format!("sha-256 {}", format_fingerprint(&self.fingerprint))
    }
}

/// `AB:CD:...` uppercase hex pairs.
pub fn format_fingerprint(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `sha-256 AB:CD:...` (the value of `a=fingerprint:`); only sha-256 is accepted.
pub fn parse_fingerprint(value: &str) -> Option<[u8; 32]> {
    let (alg, hex) = value.trim().split_once(' ')?;
    if !alg.eq_ignore_ascii_case("sha-256") {
        return None;
    }
    let bytes: Vec<u8> = hex
        .trim()
        .split(':')
        .map(|p| {
            if p.len() == 2 {
                u8::from_str_radix(p, 16).ok()
            } else {
                None
            }
        })
        .collect::<Option<_>>()?;
    bytes.try_into().ok()
}

fn to_rtc_profile(p: SrtpProfile) -> SrtpProtectionProfile {
    match p {
        SrtpProfile::Aes128CmHmacSha1_80 => SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
        SrtpProfile::AeadAes128Gcm => SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
        SrtpProfile::AeadAes256Gcm => SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm,
    }
}

fn from_rtc_profile(p: SrtpProtectionProfile) -> Option<SrtpProfile> {
    match p {
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => {
            Some(SrtpProfile::Aes128CmHmacSha1_80)
        }
        SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => Some(SrtpProfile::AeadAes128Gcm),
        SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm => Some(SrtpProfile::AeadAes256Gcm),
        _ => None,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Handshaking,
    Connected,
    Failed(String),
}

/// One DTLS association toward one remote address.
pub struct PeerDtls {
    endpoint: Endpoint,
    remote: SocketAddr,
    setup: DtlsSetup,
    client_config: Option<Arc<HandshakeConfig>>,
    started: bool,
    state: State,
    keys: Option<SessionKeys>,
    /// Datagrams the endpoint produced and the caller has not taken yet.
    outbox: Vec<Vec<u8>>,
}

impl std::fmt::Debug for PeerDtls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerDtls")
            .field("remote", &self.remote)
            .field("setup", &self.setup)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl PeerDtls {
    /// `profiles`: offered (client) or accepted (server), in preference order.
    /// `expected_fingerprint`: SHA-256 of the remote certificate, from its SDP; the handshake
    /// aborts if the remote presents another certificate.
    pub fn new(
        cert: &PeerCertificate,
        setup: DtlsSetup,
        profiles: &[SrtpProfile],
        expected_fingerprint: [u8; 32],
        local: SocketAddr,
        remote: SocketAddr,
        retransmit: Duration,
    ) -> Result<Self, PeerDtlsError> {
        if profiles.is_empty() {
            return Err(PeerDtlsError::NoProfiles);
        }
        let verify: rtc_dtls::config::VerifyPeerCertificateFn = Arc::new(move |certs, _| {
            let leaf = certs
                .first()
                .ok_or_else(|| rtc_shared::error::Error::Other("no peer certificate".into()))?;
            let got: [u8; 32] = Sha256::digest(leaf).into();
            if got == expected_fingerprint {
                Ok(())
            } else {
                Err(rtc_shared::error::Error::Other(
                    "peer certificate does not match SDP fingerprint".into(),
                ))
            }
        });
        let builder = ConfigBuilder::default()
            .with_crypto_provider(cert.provider.clone())
            .with_certificates(vec![cert.certificate.clone()])
            .with_srtp_protection_profiles(profiles.iter().copied().map(to_rtc_profile).collect())
            .with_extended_master_secret(ExtendedMasterSecretType::Require)
            // Self-signed certificates: the SDP fingerprint is the trust anchor, checked above.
            .with_insecure_skip_verify(true)
            .with_verify_peer_certificate(Some(verify))
            .with_client_auth(ClientAuthType::RequireAnyClientCert)
            .with_flight_interval(retransmit);
        let is_client = setup == DtlsSetup::Client;
        let config = Arc::new(builder.build(is_client, Some(remote)).map_err(dtls_err)?);
        let (server_config, client_config) = if is_client {
            (None, Some(config))
        } else {
            (Some(config), None)
        };
        Ok(PeerDtls {
            endpoint: Endpoint::new(local, TransportProtocol::UDP, server_config),
            remote,
            setup,
            client_config,
            started: false,
            state: State::Handshaking,
            keys: None,
            outbox: Vec::new(),
        })
    }

    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// Client: sends the ClientHello. Server: nothing (waits for one).
    pub fn start(&mut self, now: Instant) {
        if self.started {
            return;
        }
        self.started = true;
        if let Some(config) = self.client_config.clone() {
            if let Err(e) = self.endpoint.connect(now, self.remote, config, None) {
                self.state = State::Failed(e.to_string());
            }
            self.collect_transmits();
        }
    }

    /// One DTLS datagram from the remote.
    pub fn handle(&mut self, now: Instant, data: &[u8]) {
        if matches!(self.state, State::Failed(_)) {
            return;
        }
        match self
            .endpoint
            .read(now, self.remote, None, BytesMut::from(data))
        {
            Ok(events) => {
                for event in events {
                    if let EndpointEvent::HandshakeComplete = event {
                        self.on_complete();
                    }
                }
            }
            Err(e) => {
                if self.state == State::Handshaking {
                    self.state = State::Failed(e.to_string());
                }
            }
        }
        self.collect_transmits();
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state != State::Handshaking {
            return;
        }
        if let Err(e) = self.endpoint.handle_timeout(self.remote, now) {
            // No connection yet (server before the first ClientHello) is not a failure.
            if self.endpoint.get_connection_state(self.remote).is_some() {
                self.state = State::Failed(e.to_string());
            }
        }
        self.collect_transmits();
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state != State::Handshaking {
            return None;
        }
        self.endpoint.poll_timeout(&self.remote)
    }

    /// The next datagram to send to [`Self::remote`].
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.outbox.is_empty() {
            None
        } else {
            Some(self.outbox.remove(0))
        }
    }

    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    pub fn failure(&self) -> Option<&str> {
        match &self.state {
            State::Failed(why) => Some(why),
            _ => None,
        }
    }

    /// SRTP keys from this peer's point of view (`local` protects what it sends).
    pub fn keys(&self) -> Option<&SessionKeys> {
        self.keys.as_ref()
    }

    fn collect_transmits(&mut self) {
        while let Some(t) = self.endpoint.poll_transmit() {
            self.outbox.push(t.message.to_vec());
        }
    }

    fn on_complete(&mut self) {
        match self.export_keys() {
            Ok(keys) => {
                self.keys = Some(keys);
                self.state = State::Connected;
            }
            Err(why) => self.state = State::Failed(why),
        }
    }

    /// RFC 5764 §4.2: `client_key | server_key | client_salt | server_salt`.
    fn export_keys(&self) -> Result<SessionKeys, String> {
        let state = self
            .endpoint
            .get_connection_state(self.remote)
            .ok_or("connection vanished")?;
        let profile = from_rtc_profile(state.srtp_protection_profile()).ok_or_else(|| {
            format!(
                "unusable SRTP profile {:?}",
                state.srtp_protection_profile()
            )
        })?;
        let (k, s) = (profile.key_len(), profile.salt_len());
        let material = state
            .export_keying_material("EXTRACTOR-dtls_srtp", &[], 2 * (k + s))
            .map_err(|e| e.to_string())?;
        let m = material.as_ref();
        let part = |from: usize, len: usize| -> Result<Vec<u8>, String> {
            m.get(from..from + len)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| "short keying material".to_string())
        };
        let client = MasterKey {
            profile,
            key: part(0, k)?,
            salt: part(2 * k, s)?,
        };
        let server = MasterKey {
            profile,
            key: part(k, k)?,
            salt: part(2 * k + s, s)?,
        };
        Ok(match self.setup {
            DtlsSetup::Client => SessionKeys {
                local: client,
                remote: server,
            },
            DtlsSetup::Server => SessionKeys {
                local: server,
                remote: client,
            },
        })
    }
}

#[cfg(test)]
mod interop_tests;
