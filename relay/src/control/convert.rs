//! `relay.v1` messages ⇄ [`crate::api`] types.
//!
//! Requests are validated here (required fields, known enum values) so the engine only sees
//! well-formed commands; SDP content is the engine's business.

use control::pb;

use crate::api::{
    ApiError, CallCreated, CallDirection, CallEvent, CallEventKind, CallInfo, CallState,
    CreateCall, EndCause, InternalKind, InternalLegSpec, LegKind, LegStats, ListenMode, ListenOp,
    Load, SourcePolicy, StreamStats, WaSecurity,
};
use crate::srtp::SrtpProfile;

/// Longest accepted call ID, business number or consumer ID. Meta's IDs are far shorter; the
/// cap keeps a hostile client from making the relay store megabytes per call.
const MAX_ID_LEN: usize = 256;

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::InvalidArgument(msg.into())
}

/// A required identifier: non-empty, bounded, and what it looks like is what it is. IDs end
/// up in logs, metrics tooling and operators' terminals and are compared byte for byte, so
/// characters that are invisible or reorder text are refused: control characters, Unicode
/// format characters (bidirectional overrides and isolates such as U+202E, the byte-order mark
/// U+FEFF, zero-width spaces and joiners, soft hyphen, tags), and leading, trailing or only
/// whitespace (`"wacid.1 "` and `"wacid.1"` would be two calls).
pub fn required_id(field: &str, value: String) -> Result<String, ApiError> {
    if value.is_empty() {
        return Err(invalid(format!("{field} is required")));
    }
    if value.len() > MAX_ID_LEN {
        return Err(invalid(format!(
            "{field} is {} bytes long; at most {MAX_ID_LEN} are accepted",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(format!("{field} contains control characters")));
    }
    if let Some(c) = value.chars().find(|c| is_format_char(*c)) {
        return Err(invalid(format!(
            "{field} contains the invisible format character U+{:04X} (bidirectional \
             override, byte-order mark, zero-width character or the like)",
            u32::from(c)
        )));
    }
    if value.trim() != value {
        return Err(invalid(format!(
            "{field} has leading or trailing whitespace (or is only whitespace)"
        )));
    }
    Ok(value)
}

/// Unicode general category Cf (format), plus the interlinear annotation and object
/// replacement characters: invisible, or changing how the text around them is shown.
fn is_format_char(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFC
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    )
}

fn enum_value<E: TryFrom<i32>>(field: &str, v: i32) -> Result<E, ApiError> {
    E::try_from(v).map_err(|_| invalid(format!("{field} has unknown value {v}")))
}

pub fn create_call(req: pb::CreateCallRequest) -> Result<CreateCall, ApiError> {
    let call_id = required_id("call_id", req.call_id)?;
    let business_number = required_id("business_number", req.business_number)?;
    let consumer = required_id("consumer", req.consumer)?;
    let direction = match enum_value("direction", req.direction)? {
        pb::CallDirection::Unspecified => {
            return Err(invalid(
                "direction is required (USER_INITIATED or BUSINESS_INITIATED)",
            ));
        }
        pb::CallDirection::UserInitiated => CallDirection::UserInitiated,
        pb::CallDirection::BusinessInitiated => CallDirection::BusinessInitiated,
    };
    let whatsapp_offer = match (direction, req.whatsapp_offer_sdp.is_empty()) {
        (CallDirection::UserInitiated, true) => {
            return Err(invalid(
                "whatsapp_offer_sdp is required for a user-initiated call \
                 (the connect webhook's session.sdp)",
            ));
        }
        (CallDirection::UserInitiated, false) => Some(req.whatsapp_offer_sdp),
        (CallDirection::BusinessInitiated, true) => None,
        (CallDirection::BusinessInitiated, false) => {
            return Err(invalid(
                "whatsapp_offer_sdp must be empty for a business-initiated call: the relay \
                 writes the offer; send Meta's answer with SetRemoteDescription",
            ));
        }
    };
    let wa = req.whatsapp.unwrap_or_default();
    let whatsapp_security = match enum_value("whatsapp.security", wa.security)? {
        pb::WhatsappSecurity::Unspecified | pb::WhatsappSecurity::DtlsSrtp => WaSecurity::DtlsSrtp,
        pb::WhatsappSecurity::SdesSrtp => WaSecurity::Sdes(profile_or_default(
            "whatsapp.sdes_profile",
            wa.sdes_profile,
        )?),
    };
    Ok(CreateCall {
        call_id,
        business_number,
        consumer,
        direction,
        whatsapp_offer,
        whatsapp_security,
        internal: internal_leg(req.internal.unwrap_or_default())?,
    })
}

pub fn internal_leg(leg: pb::InternalLeg) -> Result<InternalLegSpec, ApiError> {
    let kind = match enum_value("internal.transport", leg.transport)? {
        pb::InternalTransport::Unspecified | pb::InternalTransport::PlainRtp => {
            InternalKind::PlainRtp
        }
        pb::InternalTransport::SdesSrtp => InternalKind::SdesSrtp(profile_or_default(
            "internal.srtp_profile",
            leg.srtp_profile,
        )?),
        pb::InternalTransport::Webrtc => InternalKind::WebRtc,
        pb::InternalTransport::Websocket => InternalKind::WebSocket(std::sync::Arc::new(
            crate::bot::target_from_pb(leg.websocket.unwrap_or_default())?,
        )),
    };
    let source = match enum_value("internal.source_policy", leg.source_policy)? {
        pb::SourcePolicy::Unspecified | pb::SourcePolicy::Strict => SourcePolicy::Strict,
        pb::SourcePolicy::Latch => SourcePolicy::Latch,
    };
    Ok(InternalLegSpec {
        kind,
        remote_sdp: (!leg.remote_sdp.is_empty()).then_some(leg.remote_sdp),
        source,
    })
}

/// SDES suites default to AES_CM_128_HMAC_SHA1_80, the one every SDES peer supports.
fn profile_or_default(field: &str, v: i32) -> Result<SrtpProfile, ApiError> {
    Ok(match enum_value(field, v)? {
        pb::SrtpProfile::Unspecified | pb::SrtpProfile::AesCm128HmacSha180 => {
            SrtpProfile::Aes128CmHmacSha1_80
        }
        pb::SrtpProfile::AeadAes128Gcm => SrtpProfile::AeadAes128Gcm,
        pb::SrtpProfile::AeadAes256Gcm => SrtpProfile::AeadAes256Gcm,
    })
}

pub fn leg_kind(v: i32) -> Result<LegKind, ApiError> {
    match enum_value("leg", v)? {
        pb::Leg::Unspecified => Err(invalid("leg is required (WHATSAPP or INTERNAL)")),
        pb::Leg::Whatsapp => Ok(LegKind::WhatsApp),
        pb::Leg::Internal => Ok(LegKind::Internal),
    }
}

pub fn call_states(v: &[i32]) -> Result<Vec<CallState>, ApiError> {
    v.iter()
        .map(|s| match enum_value("states", *s)? {
            pb::CallState::Unspecified => Err(invalid("states contains CALL_STATE_UNSPECIFIED")),
            pb::CallState::Connecting => Ok(CallState::Connecting),
            pb::CallState::Ready => Ok(CallState::Ready),
            pb::CallState::Active => Ok(CallState::Active),
            pb::CallState::Ended => Ok(CallState::Ended),
        })
        .collect()
}

// ----- api → pb ------------------------------------------------------------------------------

pub fn call_created(c: CallCreated) -> pb::CreateCallResponse {
    pb::CreateCallResponse {
        call_id: c.call_id,
        whatsapp_sdp: c.whatsapp_sdp,
        internal_sdp: c.internal_sdp,
        shard: c.shard,
    }
}

pub fn call_info(c: CallInfo) -> pb::CallInfo {
    pb::CallInfo {
        call_id: c.call_id,
        business_number: c.business_number,
        consumer: c.consumer,
        direction: direction(c.direction).into(),
        state: call_state(c.state).into(),
        gate_open: c.gate_open,
        srtp_profile: c
            .srtp_profile
            .map_or(pb::SrtpProfile::Unspecified, srtp_profile)
            .into(),
        whatsapp_remote: c.whatsapp_remote.map(|a| a.to_string()).unwrap_or_default(),
        internal_remote: c.internal_remote.map(|a| a.to_string()).unwrap_or_default(),
        whatsapp: Some(leg_stats(&c.whatsapp)),
        internal: Some(leg_stats(&c.internal)),
        end_cause: c
            .end_cause
            .map_or(pb::EndCause::Unspecified, end_cause)
            .into(),
        meta_code: c.end_cause.and_then(EndCause::meta_code),
        created_at: Some(c.created_at.into()),
    }
}

fn direction(d: CallDirection) -> pb::CallDirection {
    match d {
        CallDirection::UserInitiated => pb::CallDirection::UserInitiated,
        CallDirection::BusinessInitiated => pb::CallDirection::BusinessInitiated,
    }
}

pub fn call_state(s: CallState) -> pb::CallState {
    match s {
        CallState::Connecting => pb::CallState::Connecting,
        CallState::Ready => pb::CallState::Ready,
        CallState::Active => pb::CallState::Active,
        CallState::Ended => pb::CallState::Ended,
    }
}

fn srtp_profile(p: SrtpProfile) -> pb::SrtpProfile {
    match p {
        SrtpProfile::Aes128CmHmacSha1_80 => pb::SrtpProfile::AesCm128HmacSha180,
        SrtpProfile::AeadAes128Gcm => pb::SrtpProfile::AeadAes128Gcm,
        SrtpProfile::AeadAes256Gcm => pb::SrtpProfile::AeadAes256Gcm,
    }
}

fn leg(l: LegKind) -> pb::Leg {
    match l {
        LegKind::WhatsApp => pb::Leg::Whatsapp,
        LegKind::Internal => pb::Leg::Internal,
    }
}

pub fn end_cause(c: EndCause) -> pb::EndCause {
    match c {
        EndCause::Terminated => pb::EndCause::Terminated,
        EndCause::IceFailed => pb::EndCause::IceFailed,
        EndCause::DtlsFailed => pb::EndCause::DtlsFailed,
        EndCause::FingerprintMismatch => pb::EndCause::FingerprintMismatch,
        EndCause::NoMediaAfterAccept => pb::EndCause::NoMediaAfterAccept,
        EndCause::MediaReceiveTimeout => pb::EndCause::MediaReceiveTimeout,
        EndCause::ConsentLost => pb::EndCause::ConsentLost,
        EndCause::InternalLegTimeout => pb::EndCause::InternalLegTimeout,
        EndCause::PeerClosed => pb::EndCause::PeerClosed,
        EndCause::Drained => pb::EndCause::Drained,
        EndCause::InternalLegFailed => pb::EndCause::InternalLegFailed,
        EndCause::AnswerTimeout => pb::EndCause::AnswerTimeout,
        EndCause::AcceptTimeout => pb::EndCause::AcceptTimeout,
        EndCause::MaxDuration => pb::EndCause::MaxDuration,
        EndCause::BotHangup => pb::EndCause::BotHangup,
        EndCause::BotFailed => pb::EndCause::BotFailed,
    }
}

fn leg_stats(s: &LegStats) -> pb::LegStats {
    pb::LegStats {
        received: Some(stream_stats(&s.received)),
        sent: Some(stream_stats(&s.sent)),
        dropped: s.dropped,
        auth_failures: s.auth_failures,
        rtt_ms: s.rtt_ms,
    }
}

fn stream_stats(s: &StreamStats) -> pb::StreamStats {
    pb::StreamStats {
        packets: s.packets,
        bytes: s.bytes,
        lost: s.lost,
        jitter_ms: s.jitter_ms,
    }
}

pub fn call_event(e: &CallEvent) -> pb::CallEvent {
    use pb::call_event::Kind;
    let kind = match &e.kind {
        CallEventKind::Created => Kind::Created(pb::Created {}),
        CallEventKind::IceConnected { remote } => Kind::IceConnected(pb::IceConnected {
            remote: remote.to_string(),
        }),
        CallEventKind::DtlsConnected { profile } => Kind::DtlsConnected(pb::DtlsConnected {
            profile: srtp_profile(*profile).into(),
        }),
        CallEventKind::WhatsAppReady => Kind::WhatsappReady(pb::WhatsappReady {}),
        CallEventKind::GateOpened => Kind::GateOpened(pb::GateOpened {}),
        CallEventKind::FirstMedia { from } => Kind::FirstMedia(pb::FirstMedia {
            from: leg(*from).into(),
        }),
        CallEventKind::FirstMediaSent => Kind::FirstMediaSent(pb::FirstMediaSent {}),
        CallEventKind::DtmfReceived { from, digit } => Kind::DtmfReceived(pb::DtmfReceived {
            from: leg(*from).into(),
            digit: digit.to_string(),
        }),
        CallEventKind::ConsentLost => Kind::ConsentLost(pb::ConsentLost {}),
        CallEventKind::InternalLegSilent { silent_for_ms } => {
            Kind::InternalLegSilent(pb::InternalLegSilent {
                silent_for_ms: *silent_for_ms,
            })
        }
        CallEventKind::OneWayAudio { silent } => Kind::OneWayAudio(pb::OneWayAudio {
            silent: leg(*silent).into(),
        }),
        CallEventKind::IcePairNominated {
            local,
            remote,
            checks_sent,
            checks_answered,
        } => Kind::IcePairNominated(pb::IcePairNominated {
            local: local.to_string(),
            remote: remote.to_string(),
            checks_sent: *checks_sent,
            checks_answered: *checks_answered,
        }),
        CallEventKind::InternalLegReplaced { previous, remote } => {
            Kind::InternalLegReplaced(pb::InternalLegReplaced {
                previous: previous.map(|a| a.to_string()).unwrap_or_default(),
                remote: remote.map(|a| a.to_string()).unwrap_or_default(),
            })
        }
        CallEventKind::Ended {
            cause,
            meta_code,
            stats,
        } => Kind::Ended(pb::Ended {
            cause: end_cause(*cause).into(),
            meta_code: *meta_code,
            stats: Some(call_info((**stats).clone())),
        }),
        CallEventKind::Recording { change, status } => Kind::Recording(pb::RecordingChanged {
            change: recording_change(*change).into(),
            recording: Some(recording(status)),
        }),
        CallEventKind::Listen { change, status } => {
            use crate::api::ListenChange as C;
            Kind::Listen(pb::ListenChanged {
                change: match change {
                    C::Started => pb::ListenChange::Started,
                    C::Connected => pb::ListenChange::Connected,
                    C::Stopped => pb::ListenChange::Stopped,
                }
                .into(),
                // The answer went back in StartListen's response; events stay small.
                listen: Some(pb::Listen {
                    answer_sdp: String::new(),
                    ..listen(status)
                }),
            })
        }
    };
    pb::CallEvent {
        call_id: e.call_id.clone(),
        at: Some(e.at.into()),
        kind: Some(kind),
    }
}

pub fn load(l: Load, draining: bool) -> pb::GetLoadResponse {
    pb::GetLoadResponse {
        active_calls: l.active_calls,
        capacity: l.capacity,
        draining: l.draining || draining,
        io_driver: l.io_driver,
        cpu_limit_cores: l.cpu_limit_cores,
        shards: l
            .shards
            .into_iter()
            .map(|s| pb::ShardLoad {
                shard: s.shard,
                calls: s.calls,
                packets_per_second: s.packets_per_second,
                busy_ratio: s.busy_ratio,
            })
            .collect(),
    }
}

pub fn recording(s: &crate::api::RecordingStatus) -> pb::Recording {
    use crate::api::RecordingState as S;
    pb::Recording {
        state: match s.state {
            S::Recording => pb::RecordingState::Recording,
            S::Paused => pb::RecordingState::Paused,
            S::Stopped => pb::RecordingState::Stopped,
        }
        .into(),
        consumer_file: s.files.consumer.display().to_string(),
        agent_file: s.files.agent.display().to_string(),
        events_file: s.files.events.display().to_string(),
        dropped_packets: s.dropped_packets,
    }
}

pub fn listen(s: &crate::api::ListenStatus) -> pb::Listen {
    use crate::api::ListenState as S;
    pb::Listen {
        state: match s.state {
            S::Connecting => pb::ListenState::Connecting,
            S::Live => pb::ListenState::Live,
            S::Stopped => pb::ListenState::Stopped,
        }
        .into(),
        mode: match s.mode {
            crate::api::ListenMode::Listen => pb::ListenMode::Listen,
        }
        .into(),
        answer_sdp: s.answer_sdp.clone(),
        local: s.local.to_string(),
        supervisor: s.remote.map(|a| a.to_string()).unwrap_or_default(),
        consumer_packets: s.consumer_packets,
        agent_packets: s.agent_packets,
        dropped_packets: s.dropped_packets,
        stop_reason: s.stop_reason.clone().unwrap_or_default(),
    }
}

/// StartListen's request as the engine's operation.
pub fn start_listen(r: pb::StartListenRequest) -> Result<(String, ListenOp), ApiError> {
    let id = required_id("call_id", r.call_id)?;
    if r.offer_sdp.trim().is_empty() {
        return Err(ApiError::InvalidArgument(
            "offer_sdp is required: the supervisor's SDP offer".into(),
        ));
    }
    let mode = match pb::ListenMode::try_from(r.mode) {
        Ok(pb::ListenMode::Unspecified | pb::ListenMode::Listen) => ListenMode::Listen,
        Err(_) => {
            return Err(ApiError::InvalidArgument(format!(
                "mode {} is not a ListenMode",
                r.mode
            )));
        }
    };
    Ok((
        id,
        ListenOp::Start {
            offer_sdp: r.offer_sdp,
            mode,
        },
    ))
}

fn recording_change(c: crate::api::RecordingChange) -> pb::RecordingChange {
    use crate::api::RecordingChange as C;
    match c {
        C::Started => pb::RecordingChange::Started,
        C::Paused => pb::RecordingChange::Paused,
        C::Resumed => pb::RecordingChange::Resumed,
        C::Stopped => pb::RecordingChange::Stopped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uic() -> pb::CreateCallRequest {
        pb::CreateCallRequest {
            call_id: "wacid.1".into(),
            business_number: "1555".into(),
            consumer: "4477".into(),
            direction: pb::CallDirection::UserInitiated.into(),
            whatsapp_offer_sdp: "v=0\r\n".into(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_dtls_plain_rtp_strict() {
        let c = create_call(uic()).unwrap();
        assert_eq!(c.whatsapp_security, WaSecurity::DtlsSrtp);
        assert_eq!(c.internal, InternalLegSpec::default());
        assert_eq!(c.whatsapp_offer.as_deref(), Some("v=0\r\n"));
    }

    #[test]
    fn sdes_without_profile_defaults_to_aes_cm() {
        let mut r = uic();
        r.internal = Some(pb::InternalLeg {
            transport: pb::InternalTransport::SdesSrtp.into(),
            source_policy: pb::SourcePolicy::Latch.into(),
            remote_sdp: "x".into(),
            ..Default::default()
        });
        let c = create_call(r).unwrap();
        assert_eq!(
            c.internal.kind,
            InternalKind::SdesSrtp(SrtpProfile::Aes128CmHmacSha1_80)
        );
        assert_eq!(c.internal.source, SourcePolicy::Latch);
        assert_eq!(c.internal.remote_sdp.as_deref(), Some("x"));
    }

    #[test]
    fn missing_fields_and_unknown_enums_are_invalid_arguments() {
        let cases: Vec<(pb::CreateCallRequest, &str)> = vec![
            (
                pb::CreateCallRequest {
                    call_id: String::new(),
                    ..uic()
                },
                "call_id",
            ),
            (
                pb::CreateCallRequest {
                    consumer: String::new(),
                    ..uic()
                },
                "consumer",
            ),
            (
                pb::CreateCallRequest {
                    direction: 0,
                    ..uic()
                },
                "direction",
            ),
            (
                pb::CreateCallRequest {
                    direction: 9,
                    ..uic()
                },
                "direction",
            ),
            (
                pb::CreateCallRequest {
                    whatsapp_offer_sdp: String::new(),
                    ..uic()
                },
                "whatsapp_offer_sdp",
            ),
            (
                pb::CreateCallRequest {
                    direction: pb::CallDirection::BusinessInitiated.into(),
                    ..uic()
                },
                "whatsapp_offer_sdp",
            ),
            (
                pb::CreateCallRequest {
                    call_id: "x".repeat(300),
                    ..uic()
                },
                "call_id",
            ),
        ];
        for (req, field) in cases {
            match create_call(req) {
                Err(ApiError::InvalidArgument(m)) => assert!(m.contains(field), "{m}"),
                other => panic!("expected InvalidArgument naming {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn end_cause_meta_code_travels_with_call_info() {
        let info = CallInfo {
            call_id: "c".into(),
            business_number: "b".into(),
            consumer: "u".into(),
            direction: CallDirection::UserInitiated,
            state: CallState::Ended,
            gate_open: true,
            srtp_profile: Some(SrtpProfile::AeadAes128Gcm),
            whatsapp_remote: Some("[2001:db8::1]:3478".parse().unwrap()),
            internal_remote: None,
            whatsapp: LegStats::default(),
            internal: LegStats::default(),
            end_cause: Some(EndCause::NoMediaAfterAccept),
            created_at: std::time::SystemTime::UNIX_EPOCH,
        };
        let p = call_info(info);
        assert_eq!(p.end_cause(), pb::EndCause::NoMediaAfterAccept);
        assert_eq!(p.meta_code, Some(138023));
        assert_eq!(p.whatsapp_remote, "[2001:db8::1]:3478");
        assert_eq!(p.internal_remote, "");
        assert_eq!(p.srtp_profile(), pb::SrtpProfile::AeadAes128Gcm);
    }
}
