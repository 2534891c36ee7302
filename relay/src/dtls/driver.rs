//! One call's DTLS handshake as a sans-IO state machine over `dimpl`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::srtp::{MasterKey, SessionKeys, SrtpProfile};

use super::{DtlsConfig, DtlsEvent, DtlsFailure, DtlsIdentity, DtlsRole, Fingerprint};

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum State {
    Handshaking,
    Connected,
    Failed,
    Closed,
}

/// Drives one DTLS 1.2 handshake (client or server) and exports SRTP keys.
///
/// DTLS 1.2 only: it is what WebRTC endpoints, Meta's included, negotiate today, and a 1.3
/// hybrid ClientHello is larger (key shares) for no benefit to SRTP key export.
///
/// Handshake work allocates (setup, not the packet path); nothing here runs per media packet.
pub struct DtlsDriver {
    /// `None` once dimpl returned an error: every dimpl error is fatal and the instance must
    /// not be called again. Boxed: the instance is ~3 KiB inline, and a call keeps its driver
    /// for its whole life after freeing the instance (see [`Self::release`]).
    dtls: Option<Box<dimpl::Dtls>>,
    role: DtlsRole,
    remote_fingerprint: Fingerprint,
    handshake_timeout: Duration,
    state: State,
    /// Client: the ClientHello has been produced. Server: `start` was called.
    started: bool,
    /// Our whole-handshake deadline, armed by `start` or (server) the first datagram.
    deadline: Option<Instant>,
    /// dimpl's next timer (retransmission or its own handshake deadline).
    dimpl_timeout: Option<Instant>,
    peer_verified: bool,
    dimpl_connected: bool,
    keys: Option<(SessionKeys, SrtpProfile)>,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<DtlsEvent>,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for DtlsDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsDriver")
            .field("role", &self.role)
            .field("state", &self.state)
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

/// What one `poll_output` step asks the drain loop to do, decided while dimpl's output still
/// borrows the scratch buffer.
enum Step {
    Continue,
    Stop,
    Fail(DtlsFailure),
}

/// dimpl's `ConfigBuilder::build` self-tests its crypto (ECDH and ECDSA on P-256 and P-384):
/// about 10 ms of CPU, measured by fuzzing. Build each distinct configuration once per process
/// and share it; the lock is taken at call setup only, never per packet.
fn shared_config(cfg: &DtlsConfig) -> Result<Arc<dimpl::Config>, String> {
    static CONFIGS: std::sync::Mutex<Vec<(DtlsConfig, Arc<dimpl::Config>)>> =
        std::sync::Mutex::new(Vec::new());
    let mut cache = CONFIGS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, c)) = cache.iter().find(|(k, _)| k == cfg) {
        return Ok(c.clone());
    }
    let built = dimpl::Config::builder()
        .mtu(cfg.mtu)
        .flight_start_rto(cfg.flight_start_rto)
        .flight_retries(cfg.flight_retries)
        .handshake_timeout(cfg.handshake_timeout)
        // ICE connectivity checks already proved the peer receives at its address, so a
        // HelloVerifyRequest round trip would only delay the first audio.
        .use_server_cookie(false)
        // The client certificate is what we check against the SDP fingerprint.
        .require_client_certificate(true)
        .build()
        .map_err(|e| e.to_string())?;
    let built = Arc::new(built);
    cache.push((cfg.clone(), built.clone()));
    Ok(built)
}

impl DtlsDriver {
    pub fn new(
        identity: Arc<DtlsIdentity>,
        cfg: &DtlsConfig,
        role: DtlsRole,
        remote_fingerprint: Fingerprint,
        now: Instant,
    ) -> Self {
        let built = shared_config(cfg);
        let mut driver = DtlsDriver {
            dtls: None,
            role,
            remote_fingerprint,
            handshake_timeout: cfg.handshake_timeout,
            state: State::Handshaking,
            started: false,
            deadline: None,
            dimpl_timeout: None,
            peer_verified: false,
            dimpl_connected: false,
            keys: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            scratch: vec![0; cfg.mtu.max(2048)],
        };
        match built {
            // New dimpl instances start as servers; the client switches at `start`, because a
            // client emits its ClientHello on the first timer tick.
            Ok(config) => {
                driver.dtls = Some(Box::new(dimpl::Dtls::new_12(
                    config,
                    identity.certificate().clone(),
                    now,
                )));
            }
            Err(e) => driver.fail(DtlsFailure::Protocol(format!("invalid DTLS config: {e}"))),
        }
        driver
    }

    pub fn role(&self) -> DtlsRole {
        self.role
    }

    /// Begins the handshake. Client: produces the ClientHello now (call this the moment ICE
    /// succeeds). Server: arms the handshake deadline; the peer's ClientHello drives the rest.
    /// Calling it again does nothing.
    pub fn start(&mut self, now: Instant) {
        if self.started || self.state != State::Handshaking {
            return;
        }
        self.started = true;
        self.arm_deadline(now);
        if self.role == DtlsRole::Client {
            let Some(dtls) = self.dtls.as_mut() else {
                return;
            };
            dtls.set_active(true);
            let result = dtls.handle_timeout(now);
            self.after_dimpl_call(result);
        }
    }

    /// Feeds one received DTLS datagram. Protocol errors become [`DtlsEvent::Failed`]; records
    /// dimpl considers noise (malformed, replayed) are dropped silently.
    pub fn handle_datagram(&mut self, now: Instant, data: &[u8]) {
        match self.state {
            State::Handshaking => {}
            // After the handshake the peer may retransmit its last flight (our final flight
            // was lost) or send close_notify; dimpl answers both.
            State::Connected => {}
            State::Failed | State::Closed => return,
        }
        if self.role == DtlsRole::Client && !self.started {
            // Nothing a server sends can precede our ClientHello.
            return;
        }
        if self.state == State::Handshaking {
            self.arm_deadline(now);
            if self.deadline_passed(now) {
                self.fail(DtlsFailure::Timeout);
                return;
            }
        }
        let Some(dtls) = self.dtls.as_mut() else {
            return;
        };
        // dimpl timestamps the flights it sends with the last time it was given.
        let result = dtls
            .handle_timeout(now)
            .and_then(|()| dtls.handle_packet(data));
        self.after_dimpl_call(result);
    }

    /// Runs retransmission and the handshake deadline. Call at or after [`Self::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state != State::Handshaking {
            return;
        }
        if self.deadline_passed(now) {
            self.fail(DtlsFailure::Timeout);
            return;
        }
        if self.role == DtlsRole::Client && !self.started {
            return;
        }
        if let Some(dtls) = self.dtls.as_mut() {
            let result = dtls.handle_timeout(now);
            self.after_dimpl_call(result);
        }
    }

    /// Copies the next datagram to send into `buf` and returns its length; `None` when there is
    /// nothing to send. `buf` must hold [`DtlsConfig::mtu`] bytes; a datagram that does not fit
    /// stays queued.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<usize> {
        let next = self.transmits.front()?;
        let Some(dst) = buf.get_mut(..next.len()) else {
            tracing::warn!(
                needed = next.len(),
                have = buf.len(),
                "DTLS transmit buffer too small"
            );
            return None;
        };
        dst.copy_from_slice(next);
        let len = next.len();
        self.transmits.pop_front();
        Some(len)
    }

    /// When [`Self::handle_timeout`] must next run; `None` when no timer is pending (not yet
    /// started, or the handshake is over).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state != State::Handshaking {
            return None;
        }
        let deadline = self.deadline?;
        Some(match self.dimpl_timeout {
            Some(t) => t.min(deadline),
            None => deadline,
        })
    }

    pub fn poll_event(&mut self) -> Option<DtlsEvent> {
        self.events.pop_front()
    }

    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Frees the handshake state once the keys are out: dimpl's instance (transcript, flight
    /// buffers, certificates), the scratch buffer and the queues, about 10 KiB a call, which is
    /// a third of a connected call's memory. Afterwards the driver reads and sends nothing: a
    /// retransmitted flight or a close_notify from the peer is the caller's to count and drop.
    ///
    /// Call it only when the peer can no longer need an answer: as the client once connected
    /// (the server's Finished arrived, so the server has ours), as the server once the peer
    /// has sent authenticated SRTP (so it has our Finished). Does nothing before connected.
    pub fn release(&mut self) {
        if self.state != State::Connected {
            return;
        }
        self.dtls = None;
        self.scratch = Vec::new();
        self.transmits = VecDeque::new();
        self.events.shrink_to_fit();
    }

    /// [`Self::release`] ran: DTLS datagrams are no longer read. (Connected without a dimpl
    /// instance happens only after a release; a failure also drops it, but is not connected.)
    pub fn is_released(&self) -> bool {
        self.state == State::Connected && self.dtls.is_none()
    }

    /// Sends close_notify (call teardown). The driver produces nothing afterwards.
    pub fn close(&mut self) {
        if self.state != State::Connected {
            return;
        }
        self.state = State::Closed;
        if let Some(dtls) = self.dtls.as_mut() {
            let result = dtls.close();
            self.after_dimpl_call(result);
        }
    }

    fn arm_deadline(&mut self, now: Instant) {
        if self.deadline.is_none() {
            self.deadline = now.checked_add(self.handshake_timeout);
        }
    }

    fn deadline_passed(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    fn after_dimpl_call(&mut self, result: Result<(), dimpl::Error>) {
        match result {
            Ok(()) => self.drain(),
            Err(e) => {
                // Keep whatever dimpl queued before failing (an alert, say) out of the wire:
                // a failed handshake sends nothing more.
                let failure = match e {
                    dimpl::Error::Timeout(_) => DtlsFailure::Timeout,
                    other => DtlsFailure::Protocol(other.to_string()),
                };
                self.fail(failure);
            }
        }
    }

    /// Pulls everything dimpl has for us: datagrams into the queue, certificate and keys into
    /// our state, then decides whether the handshake is complete.
    fn drain(&mut self) {
        loop {
            let Some(dtls) = self.dtls.as_mut() else {
                return;
            };
            let step = match dtls.poll_output(&mut self.scratch) {
                dimpl::Output::Packet(p) => {
                    self.transmits.push_back(p.to_vec());
                    Step::Continue
                }
                dimpl::Output::BufferTooSmall { needed } => {
                    if needed <= self.scratch.len() {
                        Step::Fail(DtlsFailure::Protocol(format!(
                            "dimpl asked for a {needed}-byte buffer but has one"
                        )))
                    } else {
                        self.scratch.resize(needed, 0);
                        Step::Continue
                    }
                }
                dimpl::Output::Timeout(t) => {
                    self.dimpl_timeout = Some(t);
                    Step::Stop
                }
                dimpl::Output::Connected => {
                    self.dimpl_connected = true;
                    Step::Continue
                }
                dimpl::Output::PeerCert(der) => {
                    if self.remote_fingerprint.matches(der) {
                        self.peer_verified = true;
                        Step::Continue
                    } else {
                        Step::Fail(DtlsFailure::FingerprintMismatch)
                    }
                }
                dimpl::Output::KeyingMaterial(material, profile) => {
                    match session_keys(&material, profile, self.role) {
                        Ok(keys) => {
                            self.keys = Some(keys);
                            Step::Continue
                        }
                        Err(failure) => Step::Fail(failure),
                    }
                }
                dimpl::Output::CloseNotify => {
                    // dimpl queues the reciprocal close_notify; keep draining to send it.
                    if self.state == State::Handshaking {
                        Step::Fail(DtlsFailure::Protocol("peer closed during handshake".into()))
                    } else {
                        if self.state == State::Connected {
                            self.events.push_back(DtlsEvent::Closed);
                        }
                        self.state = State::Closed;
                        Step::Continue
                    }
                }
                // WebRTC audio carries no application data over DTLS (no data channel).
                dimpl::Output::ApplicationData(_) => Step::Continue,
                _ => Step::Continue,
            };
            match step {
                Step::Continue => {}
                Step::Stop => break,
                Step::Fail(failure) => {
                    self.fail(failure);
                    return;
                }
            }
        }
        self.check_complete();
    }

    fn check_complete(&mut self) {
        if self.state != State::Handshaking || !self.dimpl_connected {
            return;
        }
        if !self.peer_verified {
            self.fail(DtlsFailure::Protocol(
                "handshake completed without a peer certificate".into(),
            ));
            return;
        }
        let Some((keys, profile)) = self.keys.take() else {
            self.fail(DtlsFailure::Protocol(
                "no SRTP protection profile negotiated (use_srtp)".into(),
            ));
            return;
        };
        self.state = State::Connected;
        self.events
            .push_back(DtlsEvent::Connected { keys, profile });
    }

    fn fail(&mut self, failure: DtlsFailure) {
        if matches!(self.state, State::Failed | State::Closed) {
            return;
        }
        tracing::debug!(role = ?self.role, %failure, "DTLS handshake failed");
        self.state = State::Failed;
        self.dtls = None;
        self.keys = None;
        self.transmits.clear();
        self.events.push_back(DtlsEvent::Failed(failure));
    }
}

fn map_profile(profile: dimpl::SrtpProfile) -> Option<SrtpProfile> {
    match profile {
        dimpl::SrtpProfile::AES128_CM_SHA1_80 => Some(SrtpProfile::Aes128CmHmacSha1_80),
        dimpl::SrtpProfile::AEAD_AES_128_GCM => Some(SrtpProfile::AeadAes128Gcm),
        dimpl::SrtpProfile::AEAD_AES_256_GCM => Some(SrtpProfile::AeadAes256Gcm),
        _ => None,
    }
}

/// Splits exported keying material per RFC 5764 §4.2:
/// `client_key | server_key | client_salt | server_salt`. The client protects with the client
/// half, so as client our local key is the client half, as server the server half.
fn session_keys(
    material: &[u8],
    profile: dimpl::SrtpProfile,
    role: DtlsRole,
) -> Result<(SessionKeys, SrtpProfile), DtlsFailure> {
    let profile = map_profile(profile).ok_or_else(|| {
        DtlsFailure::Protocol(format!("negotiated unsupported SRTP profile {profile}"))
    })?;
    let (k, s) = (profile.key_len(), profile.salt_len());
    let wrong_len = || {
        DtlsFailure::Protocol(format!(
            "keying material is {} bytes, {profile} needs {}",
            material.len(),
            2 * (k + s)
        ))
    };
    if material.len() != 2 * (k + s) {
        return Err(wrong_len());
    }
    let part = |from: usize, len: usize| {
        material
            .get(from..from + len)
            .map(<[u8]>::to_vec)
            .ok_or_else(wrong_len)
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
    let keys = match role {
        DtlsRole::Client => SessionKeys {
            local: client,
            remote: server,
        },
        DtlsRole::Server => SessionKeys {
            local: server,
            remote: client,
        },
    };
    Ok((keys, profile))
}

#[cfg(test)]
mod tests;
