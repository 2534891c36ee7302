//! The boundary between the control plane (gRPC, `relayctl`, tests) and the engine.
//!
//! Everything here is plain data plus the [`CallControl`] trait. The gRPC server in
//! [`crate::control`] translates `relay.v1` messages to and from these types; the engine
//! implements the trait. Tests can drive either side alone.

use std::future::Future;
use std::net::SocketAddr;
use std::time::SystemTime;

use crate::srtp::SrtpProfile;

/// Who placed the call, in Meta's terms.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CallDirection {
    /// The consumer called the business: Meta's `connect` webhook carries the SDP offer, the
    /// relay returns the answer (for `pre_accept`/`accept`).
    UserInitiated,
    /// The business calls the consumer: the relay produces the offer, Meta's answer arrives
    /// later through [`CallControl::set_remote_description`].
    BusinessInitiated,
}

/// How the WhatsApp leg is secured when the relay writes the offer (business-initiated).
/// For user-initiated calls the offer decides (`UDP/TLS/RTP/SAVPF` → DTLS, `RTP/SAVP` → SDES).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum WaSecurity {
    DtlsSrtp,
    Sdes(SrtpProfile),
}

/// What the internal leg is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InternalKind {
    /// `RTP/AVP`: a SIP media server (FreeSWITCH, Asterisk), an IVR, a recorder.
    PlainRtp,
    /// `RTP/SAVP` with `a=crypto`.
    SdesSrtp(SrtpProfile),
    /// `UDP/TLS/RTP/SAVPF` toward a browser agent: the relay is ICE-lite (it answers the
    /// browser's checks and follows its nomination), DTLS in either role, SRTP keys from the
    /// handshake. Offer/answer works both ways: with the browser's offer in
    /// [`InternalLegSpec::remote_sdp`], `internal_sdp` is our answer; without it, `internal_sdp`
    /// is our offer (`a=setup:actpass`) and the browser's answer comes through
    /// [`CallControl::set_remote_description`] with [`LegKind::Internal`].
    WebRtc,
    /// A voice bot behind a WebSocket (Twilio Media Streams framing): see [`crate::bot`].
    /// The relay connects before the call (or the replacement) is made.
    WebSocket(std::sync::Arc<crate::bot::BotTarget>),
}

/// Where the internal leg's media is accepted from.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum SourcePolicy {
    /// Only from the address in the internal leg's SDP (the default). WebRTC legs ignore the
    /// policy: media is accepted from the pair the browser nominated.
    #[default]
    Strict,
    /// From the first address that sends to the call's internal port (NAT'd media servers);
    /// after that, only from that address.
    Latch,
}

/// The internal leg as the signaling tier describes it at create time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InternalLegSpec {
    pub kind: InternalKind,
    /// The internal peer's SDP (offer or answer), if already known. It may instead arrive later
    /// through [`CallControl::set_remote_description`] with [`LegKind::Internal`].
    pub remote_sdp: Option<String>,
    pub source: SourcePolicy,
}

impl Default for InternalLegSpec {
    fn default() -> Self {
        InternalLegSpec {
            kind: InternalKind::PlainRtp,
            remote_sdp: None,
            source: SourcePolicy::Strict,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateCall {
    /// Meta's call ID (`wacid.…`). Every request is idempotent by this key.
    pub call_id: String,
    /// The business phone number (ID) the call belongs to; the concurrency limit is per number.
    pub business_number: String,
    /// The consumer's WhatsApp ID; one live call per (business number, consumer).
    pub consumer: String,
    pub direction: CallDirection,
    /// User-initiated: Meta's SDP offer from the `connect` webhook. Business-initiated: `None`.
    pub whatsapp_offer: Option<String>,
    /// Business-initiated only: how to secure the offer we write.
    pub whatsapp_security: WaSecurity,
    pub internal: InternalLegSpec,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallCreated {
    pub call_id: String,
    /// User-initiated: the answer for `pre_accept`/`accept`. Business-initiated: the offer.
    pub whatsapp_sdp: String,
    /// The SDP to give the internal peer (RTP/AVP or RTP/SAVP, the relay's internal address).
    pub internal_sdp: String,
    /// Which shard carries the call (diagnostics).
    pub shard: u32,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum LegKind {
    WhatsApp,
    Internal,
}

/// Why a call ended. Maps to Meta's error codes where one exists.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum EndCause {
    /// The signaling tier terminated it (Meta's terminate webhook, hang-up, transfer away).
    Terminated,
    /// ICE never produced a working pair in time (Meta 138020).
    IceFailed,
    /// DTLS failed, timed out, or the certificate did not match the SDP fingerprint (138019).
    DtlsFailed,
    /// The peer's certificate fingerprint did not match the SDP (138019).
    FingerprintMismatch,
    /// Gate open, no packet from WhatsApp within the start window (138023).
    NoMediaAfterAccept,
    /// Media flowed, then stopped for the established window (138021).
    MediaReceiveTimeout,
    /// ICE consent (RFC 7675) lost (138020).
    ConsentLost,
    /// The internal leg stayed silent beyond its limit and the policy ends the call.
    InternalLegTimeout,
    /// The peer closed DTLS (close_notify) or sent a fatal alert: a browser agent closing its
    /// RTCPeerConnection on a WebRTC internal leg, or Meta when `call.keep_dtls_state` is set
    /// (by default the WhatsApp leg frees its DTLS state after the handshake and counts later
    /// DTLS as `late_dtls` drops).
    PeerClosed,
    /// A WebRTC internal leg could not be set up or was lost: no ICE nomination in time after
    /// the browser's description, DTLS failed or timed out, the browser's certificate did not
    /// match its fingerprint, or the browser went away: its consent checks and its media both
    /// stopped for `call.webrtc_idle_timeout` (a closed tab), or its consent checks alone for
    /// `call.consent_timeout`. No Meta code: the WhatsApp side was fine.
    InternalLegFailed,
    /// The relay is draining and the deadline passed.
    Drained,
    /// Business-initiated: Meta's answer (`SetRemoteDescription` on the WhatsApp leg) did not
    /// arrive within `call.answer_timeout` of create (Meta 138007, connect timeout).
    AnswerTimeout,
    /// The WhatsApp leg was set up (offer and answer known) but the gate was not opened
    /// within `call.accept_timeout`: nobody accepted the call (Meta 138007, connect timeout).
    AcceptTimeout,
    /// The call reached `call.max_call_duration` (the safety net against calls whose end
    /// was never signalled). No Meta code.
    MaxDuration,
    /// A voice-bot leg: the bot closed its WebSocket (it hung up). No Meta code.
    BotHangup,
    /// A voice-bot leg: the WebSocket failed (reset, TLS or protocol error). No Meta code.
    BotFailed,
}

impl EndCause {
    /// The Meta error code the signaling tier should report for this cause, if any.
    pub fn meta_code(self) -> Option<u32> {
        match self {
            EndCause::Terminated
            | EndCause::PeerClosed
            | EndCause::Drained
            | EndCause::InternalLegFailed
            | EndCause::MaxDuration
            | EndCause::BotHangup
            | EndCause::BotFailed => None,
            EndCause::AnswerTimeout | EndCause::AcceptTimeout => Some(138007),
            EndCause::IceFailed | EndCause::ConsentLost => Some(138020),
            EndCause::DtlsFailed | EndCause::FingerprintMismatch => Some(138019),
            EndCause::NoMediaAfterAccept => Some(138023),
            EndCause::MediaReceiveTimeout => Some(138021),
            EndCause::InternalLegTimeout => Some(138022),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EndCause::Terminated => "terminated",
            EndCause::IceFailed => "ice_failed",
            EndCause::DtlsFailed => "dtls_failed",
            EndCause::FingerprintMismatch => "fingerprint_mismatch",
            EndCause::NoMediaAfterAccept => "no_media_after_accept",
            EndCause::MediaReceiveTimeout => "media_receive_timeout",
            EndCause::ConsentLost => "consent_lost",
            EndCause::InternalLegTimeout => "internal_leg_timeout",
            EndCause::PeerClosed => "peer_closed",
            EndCause::Drained => "drained",
            EndCause::InternalLegFailed => "internal_leg_failed",
            EndCause::AnswerTimeout => "answer_timeout",
            EndCause::AcceptTimeout => "accept_timeout",
            EndCause::MaxDuration => "max_duration",
            EndCause::BotHangup => "bot_hangup",
            EndCause::BotFailed => "bot_failed",
        }
    }
}

/// Where a call is in its life.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum CallState {
    /// Created; waiting for ICE (and the remote description, business-initiated).
    Connecting,
    /// ICE and DTLS (or SDES) done: the WhatsApp leg can carry media. Gate may still be closed.
    Ready,
    /// Gate open, media flowing.
    Active,
    Ended,
}

/// Per-direction media counters of one leg.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamStats {
    pub packets: u64,
    pub bytes: u64,
    /// Packets lost, from sequence gaps (received) or the peer's RTCP (sent).
    pub lost: u64,
    /// Interarrival jitter in milliseconds (RFC 3550).
    pub jitter_ms: f64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LegStats {
    pub received: StreamStats,
    pub sent: StreamStats,
    /// Datagrams dropped on this leg, by any reason (bad source, malformed, auth failure...).
    pub dropped: u64,
    /// SRTP/SRTCP authentication failures (a subset of `dropped`).
    pub auth_failures: u64,
    /// Round-trip time from RTCP (LSR/DLSR), if measured.
    pub rtt_ms: Option<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CallInfo {
    pub call_id: String,
    pub business_number: String,
    pub consumer: String,
    pub direction: CallDirection,
    pub state: CallState,
    pub gate_open: bool,
    /// Negotiated SRTP profile on the WhatsApp leg, once known.
    pub srtp_profile: Option<SrtpProfile>,
    /// The nominated remote address on the WhatsApp leg, once ICE selected one.
    pub whatsapp_remote: Option<SocketAddr>,
    pub internal_remote: Option<SocketAddr>,
    pub whatsapp: LegStats,
    pub internal: LegStats,
    pub end_cause: Option<EndCause>,
    pub created_at: SystemTime,
}

/// Everything the watch stream reports. Per call, in the order it happened.
#[derive(Clone, Debug, PartialEq)]
pub enum CallEventKind {
    Created,
    IceConnected {
        remote: SocketAddr,
    },
    DtlsConnected {
        profile: SrtpProfile,
    },
    /// The WhatsApp leg can carry media (ICE + DTLS done, or SDES with a known address).
    WhatsAppReady,
    GateOpened,
    FirstMedia {
        from: LegKind,
    },
    /// The first RTP packet went to WhatsApp (the maiden packet: held internal media, or
    /// generated silence). Meta treats it as the answer: the consumer's call timer starts.
    FirstMediaSent,
    DtmfReceived {
        from: LegKind,
        digit: char,
    },
    ConsentLost,
    /// The internal leg has sent nothing for the configured time while the call is up (the
    /// relay keeps WhatsApp alive with silence meanwhile). Reported once per silent spell.
    InternalLegSilent {
        silent_for_ms: u64,
    },
    /// Media arrives from one leg only: `silent` is the leg that sends nothing (the commonest
    /// consumer complaint: one-way audio). Reported once per episode.
    OneWayAudio {
        silent: LegKind,
    },
    /// ICE nominated (or moved to) a pair toward WhatsApp: the per-call log's "checks sent
    /// and answered, nominated pair".
    IcePairNominated {
        local: SocketAddr,
        remote: SocketAddr,
        /// Connectivity checks sent so far (retransmissions included) and answered.
        checks_sent: u64,
        checks_answered: u64,
    },
    /// The internal leg was swapped for a new peer (transfer to another agent): `previous` got
    /// an RTCP BYE and is no longer accepted; `remote` is the new peer's address, if its SDP
    /// gave one (otherwise it is learned from the first packet).
    InternalLegReplaced {
        previous: Option<SocketAddr>,
        remote: Option<SocketAddr>,
    },
    /// A recording of the call started, paused, resumed or stopped (by request or because the
    /// call ended; a stop comes before the call's `Ended`).
    Recording {
        change: RecordingChange,
        status: RecordingStatus,
    },
    /// A live listen-in started, connected (the supervisor's browser finished ICE and DTLS:
    /// audio flows to it) or stopped (by request, replaced by a new offer, the supervisor gone,
    /// or the call ending: then before the call's `Ended`).
    Listen {
        change: ListenChange,
        status: Box<ListenStatus>,
    },
    /// The last event of a call, with its final statistics (exact counters at the end,
    /// whatever ended it: Terminate, a timeout, drain).
    Ended {
        cause: EndCause,
        meta_code: Option<u32>,
        stats: Box<CallInfo>,
    },
}

/// What a fork of the call's media does: recording to files, or a supervisor's live
/// listen-in ([`ListenMode`] leaves room for whisper and barge, which need mixing).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ForkKind {
    Recording,
    Listen,
}

/// A request on a call's recording. Each is idempotent: starting a recorded call returns the
/// running recording, stopping a stopped one returns its last state, pausing a paused one is a
/// no-op.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RecordingOp {
    Start,
    Stop,
    /// Stop writing audio (PCI: while a card number is read). The files keep running time: the
    /// paused span is silence of the right length, and the sidecar says when.
    Pause,
    Resume,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RecordingState {
    Recording,
    Paused,
    Stopped,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RecordingChange {
    Started,
    Paused,
    Resumed,
    Stopped,
}

/// A recording's files: the consumer's audio (from WhatsApp), the agent's (to WhatsApp), both
/// Ogg Opus, and the JSON Lines event sidecar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordingFiles {
    pub consumer: std::path::PathBuf,
    pub agent: std::path::PathBuf,
    pub events: std::path::PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordingStatus {
    pub state: RecordingState,
    pub files: RecordingFiles,
    /// Packets of this call not recorded because the disk writer was behind.
    pub dropped_packets: u64,
}

/// What a supervisor's fork does with the call's audio. Only `Listen` exists: whisper (the
/// supervisor speaks to the agent only) and barge (to both) need mixing, which the relay does
/// not do yet; they will be more variants here and in the proto's `ListenMode`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum ListenMode {
    /// Receive both directions, say nothing.
    #[default]
    Listen,
}

/// A request on a call's listen-in. Idempotent: a start with the same offer returns the running
/// session (and its answer); a start with a new offer (the supervisor reloaded) replaces the
/// session on the same port; a stop of a stopped listen-in answers its last state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenOp {
    Start { offer_sdp: String, mode: ListenMode },
    Stop,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ListenState {
    /// Answer given; waiting for the browser's ICE nomination and DTLS handshake.
    Connecting,
    /// Keys are up: both directions are forwarded to the supervisor.
    Live,
    Stopped,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ListenChange {
    Started,
    Connected,
    Stopped,
}

/// A call's listen-in as it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenStatus {
    pub state: ListenState,
    pub mode: ListenMode,
    /// The relay's SDP answer to the supervisor's offer.
    pub answer_sdp: String,
    /// The fork's own socket (the host candidate in the answer).
    pub local: SocketAddr,
    /// The supervisor's address once its browser nominated a pair.
    pub remote: Option<SocketAddr>,
    /// Packets sent to the supervisor, consumer track and agent track.
    pub consumer_packets: u64,
    pub agent_packets: u64,
    /// Packets of the call not forwarded to the supervisor (not connected yet, send refused):
    /// the call itself never waits for a supervisor.
    pub dropped_packets: u64,
    /// Why it stopped ("stopped by request", "supervisor gone", the call's end cause, ...).
    pub stop_reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CallEvent {
    pub call_id: String,
    pub at: SystemTime,
    pub kind: CallEventKind,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// A bad request: malformed or unsupported SDP (with the offending line), a missing field.
    /// Meta-style code 100.
    #[error("invalid parameter: {0}")]
    InvalidArgument(String),
    #[error("call {0} not found")]
    NotFound(String),
    /// Over the per-business-number concurrent limit (Meta 138002).
    #[error("business number {number} is at its limit of {limit} concurrent calls")]
    CallLimit { number: String, limit: u32 },
    /// A live call already exists between this business number and consumer (Meta 138003).
    #[error("a call between {number} and {consumer} is already in progress ({existing})")]
    DuplicateCall {
        number: String,
        consumer: String,
        existing: String,
    },
    /// The request does not fit the call's state (e.g. an answer on a user-initiated call).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// CreateCall for a call ID that ended (or was terminated before it was created) within the
    /// tombstone lifetime: nothing was created. Meta's `terminate` webhook can overtake the
    /// `connect` it ends; this keeps the late `connect` from starting a call nobody will end.
    #[error(
        "call {0} was terminated; a terminated call ID cannot be created again (nothing was created)"
    )]
    Terminated(String),
    /// Draining or at capacity: try another relay.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A voice-bot leg's WebSocket could not be opened (DNS, TCP, TLS, HTTP upgrade, timeout):
    /// nothing was created or replaced.
    #[error("bot unreachable: {0}")]
    BotUnreachable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// The call's refusals reach the control plane with the same words and the matching status.
impl From<crate::call::CallError> for ApiError {
    fn from(e: crate::call::CallError) -> Self {
        use crate::call::CallError;
        match e {
            CallError::InvalidArgument(m) => ApiError::InvalidArgument(m),
            CallError::FailedPrecondition(m) => ApiError::FailedPrecondition(m),
            CallError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl ApiError {
    /// The Meta-style code carried in the gRPC status details.
    pub fn meta_code(&self) -> Option<u32> {
        match self {
            ApiError::InvalidArgument(_) => Some(100),
            ApiError::CallLimit { .. } => Some(138002),
            ApiError::DuplicateCall { .. } => Some(138003),
            _ => None,
        }
    }
}

/// Why a CreateCall was refused, for `relay_calls_refused_total{reason}`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum RefusedReason {
    /// The relay holds its configured capacity, or no media ports are left.
    Capacity,
    /// The relay is draining.
    Draining,
    /// Every shard is over the busy limit (`max_shard_busy_percent`).
    Overloaded,
    /// The business number is at its concurrent-call limit (Meta 138002).
    PerNumberLimit,
    /// A call between the same number and consumer is live (Meta 138003), or the same call ID
    /// is being created by another request right now.
    Duplicate,
    /// The request was malformed: a missing or bad field, an SDP the relay cannot use, a body
    /// that does not decode (Meta 100).
    InvalidRequest,
    /// The call ID was terminated within the tombstone lifetime ([`ApiError::Terminated`]).
    Terminated,
}

impl RefusedReason {
    pub const ALL: [RefusedReason; 7] = [
        RefusedReason::Capacity,
        RefusedReason::Draining,
        RefusedReason::Overloaded,
        RefusedReason::PerNumberLimit,
        RefusedReason::Duplicate,
        RefusedReason::InvalidRequest,
        RefusedReason::Terminated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefusedReason::Capacity => "capacity",
            RefusedReason::Draining => "draining",
            RefusedReason::Overloaded => "overloaded",
            RefusedReason::PerNumberLimit => "per_number_limit",
            RefusedReason::Duplicate => "duplicate",
            RefusedReason::InvalidRequest => "invalid_request",
            RefusedReason::Terminated => "terminated",
        }
    }

    /// Position in [`RefusedReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The result of [`CallControl::replace_internal_leg`].
#[derive(Clone, Debug, PartialEq)]
pub struct InternalLegReplaced {
    /// The SDP to give the new internal peer (new SSRC, new SDES key if SDES; the relay's
    /// internal address and port are unchanged).
    pub internal_sdp: String,
    pub call: CallInfo,
}

/// Load as reported to the signaling tier and autoscaler.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Load {
    pub active_calls: u32,
    pub capacity: u32,
    pub draining: bool,
    /// Per shard: (active calls, packets per second received over the last interval).
    pub shards: Vec<ShardLoad>,
    /// The shards' I/O driver ("io_uring" or "epoll").
    pub io_driver: String,
    /// The process's CPU limit (cgroup CFS quota) in cores; `None` when unlimited.
    pub cpu_limit_cores: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardLoad {
    pub shard: u32,
    pub calls: u32,
    /// Datagrams received + sent per second over the last second.
    pub packets_per_second: u64,
    /// Share of the last second the shard spent working, of the CPU it may use (a core, or its
    /// part of the CPU limit): the admission signal.
    pub busy_ratio: f64,
}

/// Admission limits in force ([`CallControl::set_limits`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub capacity: u32,
    pub max_shard_busy_percent: u32,
}

/// The operations the control plane drives. Implemented by the engine's handle.
/// Every operation is idempotent by call ID.
pub trait CallControl: Send + Sync + 'static {
    fn create_call(
        &self,
        req: CreateCall,
    ) -> impl Future<Output = Result<CallCreated, ApiError>> + Send;

    /// Meta's answer (business-initiated) or the internal peer's SDP.
    fn set_remote_description(
        &self,
        call_id: String,
        leg: LegKind,
        sdp: String,
    ) -> impl Future<Output = Result<CallInfo, ApiError>> + Send;

    /// The signaling tier got 200 on `accept` (or the business-initiated call connected):
    /// media may now flow to WhatsApp.
    fn open_gate(&self, call_id: String)
    -> impl Future<Output = Result<CallInfo, ApiError>> + Send;

    /// Transfer: swap the internal leg for a new peer without touching the WhatsApp leg (no new
    /// SDP toward Meta; the outbound stream keeps its SSRC, sequence and timestamps). Repeating
    /// the request with the same remote SDP returns the same answer.
    fn replace_internal_leg(
        &self,
        call_id: String,
        internal: InternalLegSpec,
    ) -> impl Future<Output = Result<InternalLegReplaced, ApiError>> + Send;

    /// End the call. Unknown or already-ended calls succeed with `None`, and the ID is
    /// remembered (a tombstone) so a later CreateCall for it is refused with
    /// [`ApiError::Terminated`]. A call still being created is ended as soon as it exists.
    fn terminate(
        &self,
        call_id: String,
        reason: String,
    ) -> impl Future<Output = Result<Option<CallInfo>, ApiError>> + Send;

    /// A live call, or an ended one (state `Ended`, its cause and final counters) while its
    /// tombstone lives.
    fn get_call(&self, call_id: String) -> impl Future<Output = Result<CallInfo, ApiError>> + Send;

    fn list_calls(&self) -> impl Future<Output = Result<Vec<CallInfo>, ApiError>> + Send;

    fn load(&self) -> impl Future<Output = Result<Load, ApiError>> + Send;

    /// Start, stop, pause or resume recording a call (see [`RecordingOp`]). Returns the
    /// recording's state after the request; `None` only for a stop (or status) on a call that
    /// was never recorded.
    fn recording(
        &self,
        call_id: String,
        op: RecordingOp,
    ) -> impl Future<Output = Result<Option<RecordingStatus>, ApiError>> + Send {
        let _ = (call_id, op);
        async {
            Err(ApiError::FailedPrecondition(
                "recording is not available on this relay".into(),
            ))
        }
    }

    /// Start or stop a live listen-in on a call (see [`ListenOp`]). Returns the listen-in's
    /// state after the request; `None` only for a stop on a call never listened to.
    fn listen(
        &self,
        call_id: String,
        op: ListenOp,
    ) -> impl Future<Output = Result<Option<ListenStatus>, ApiError>> + Send {
        let _ = (call_id, op);
        async {
            Err(ApiError::FailedPrecondition(
                "listen-in is not available on this relay".into(),
            ))
        }
    }

    /// Every state change of every call. Slow subscribers lag (and are told so); they never
    /// block a shard.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<CallEvent>;

    /// Stop (`true`) or resume admitting new calls: creates then fail with `Unavailable`.
    /// No default: a wrapper that forgot to forward it would silently not drain.
    fn set_draining(&self, draining: bool);

    /// Change the admission limits at run time (`None` keeps a value): the total call capacity
    /// and the shard busy share over which new calls are refused (percent, 1..=100). Returns
    /// the limits now in force. Idempotent.
    fn set_limits(
        &self,
        _capacity: Option<u32>,
        _busy_percent: Option<u32>,
    ) -> Result<Limits, ApiError> {
        Err(ApiError::FailedPrecondition(
            "this relay cannot change its limits at run time".into(),
        ))
    }

    /// The drain deadline passed: end every live call with cause `Drained`. Returns how many
    /// ended.
    fn end_all_drained(&self) -> impl Future<Output = Result<usize, ApiError>> + Send;

    /// A CreateCall was refused before it reached the engine (the control plane found it
    /// malformed); the engine counts its own refusals.
    fn count_refused(&self, reason: RefusedReason);
}
