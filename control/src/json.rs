//! JSON views of the `relay.v1` messages, for `relayctl --json` and for logging.
//!
//! Field names are the proto field names; enums are their proto names without the type prefix,
//! lower-cased (`CALL_STATE_ACTIVE` → `"active"`); absent optional values are `null`.

use serde_json::{Value, json};

use crate::pb;

pub fn call_info(c: &pb::CallInfo) -> Value {
    json!({
        "call_id": c.call_id,
        "business_number": c.business_number,
        "consumer": c.consumer,
        "direction": direction(c.direction()),
        "state": state(c.state()),
        "gate_open": c.gate_open,
        "srtp_profile": srtp_profile(c.srtp_profile()),
        "whatsapp_remote": non_empty(&c.whatsapp_remote),
        "internal_remote": non_empty(&c.internal_remote),
        "whatsapp": c.whatsapp.as_ref().map(leg_stats),
        "internal": c.internal.as_ref().map(leg_stats),
        "end_cause": end_cause(c.end_cause()),
        "meta_code": c.meta_code,
        "created_at": c.created_at.as_ref().map(timestamp),
    })
}

pub fn leg_stats(s: &pb::LegStats) -> Value {
    json!({
        "received": s.received.as_ref().map(stream_stats),
        "sent": s.sent.as_ref().map(stream_stats),
        "dropped": s.dropped,
        "auth_failures": s.auth_failures,
        "rtt_ms": s.rtt_ms,
    })
}

pub fn stream_stats(s: &pb::StreamStats) -> Value {
    json!({
        "packets": s.packets,
        "bytes": s.bytes,
        "lost": s.lost,
        "jitter_ms": s.jitter_ms,
    })
}

pub fn get_call(r: &pb::GetCallResponse) -> Value {
    json!({
        "call": r.call.as_ref().map(call_info),
        "events": r.events.iter().map(call_event).collect::<Vec<_>>(),
    })
}

pub fn watch_item(r: &pb::WatchResponse) -> Value {
    match &r.item {
        Some(pb::watch_response::Item::Event(e)) => json!({ "event": call_event(e) }),
        Some(pb::watch_response::Item::Lagged(l)) => json!({ "lagged": { "skipped": l.skipped } }),
        None => json!({}),
    }
}

pub fn call_event(e: &pb::CallEvent) -> Value {
    let (kind, detail) = event_kind(e.kind.as_ref());
    json!({
        "call_id": e.call_id,
        "at": e.at.as_ref().map(timestamp),
        "kind": kind,
        "detail": detail,
    })
}

/// The event's name and its fields.
pub fn event_kind(kind: Option<&pb::call_event::Kind>) -> (&'static str, Value) {
    use pb::call_event::Kind;
    match kind {
        None => ("unknown", Value::Null),
        Some(Kind::Created(_)) => ("created", json!({})),
        Some(Kind::IceConnected(k)) => ("ice_connected", json!({ "remote": k.remote })),
        Some(Kind::DtlsConnected(k)) => (
            "dtls_connected",
            json!({ "profile": srtp_profile(k.profile()) }),
        ),
        Some(Kind::WhatsappReady(_)) => ("whatsapp_ready", json!({})),
        Some(Kind::GateOpened(_)) => ("gate_opened", json!({})),
        Some(Kind::FirstMedia(k)) => ("first_media", json!({ "from": leg(k.from()) })),
        Some(Kind::FirstMediaSent(_)) => ("first_media_sent", json!({})),
        Some(Kind::DtmfReceived(k)) => (
            "dtmf_received",
            json!({ "from": leg(k.from()), "digit": k.digit }),
        ),
        Some(Kind::ConsentLost(_)) => ("consent_lost", json!({})),
        Some(Kind::InternalLegSilent(k)) => (
            "internal_leg_silent",
            json!({ "silent_for_ms": k.silent_for_ms }),
        ),
        Some(Kind::OneWayAudio(k)) => ("one_way_audio", json!({ "silent": leg(k.silent()) })),
        Some(Kind::IcePairNominated(k)) => (
            "ice_pair_nominated",
            json!({
                "local": k.local,
                "remote": k.remote,
                "checks_sent": k.checks_sent,
                "checks_answered": k.checks_answered,
            }),
        ),
        Some(Kind::InternalLegReplaced(k)) => (
            "internal_leg_replaced",
            json!({ "previous": non_empty(&k.previous), "remote": non_empty(&k.remote) }),
        ),
        Some(Kind::Recording(k)) => (
            match k.change() {
                pb::RecordingChange::Started => "recording_started",
                pb::RecordingChange::Paused => "recording_paused",
                pb::RecordingChange::Resumed => "recording_resumed",
                pb::RecordingChange::Stopped => "recording_stopped",
                pb::RecordingChange::Unspecified => "recording",
            },
            k.recording.as_ref().map_or(Value::Null, recording),
        ),
        Some(Kind::Listen(k)) => (
            match k.change() {
                pb::ListenChange::Started => "listen_started",
                pb::ListenChange::Connected => "listen_connected",
                pb::ListenChange::Stopped => "listen_stopped",
                pb::ListenChange::Unspecified => "listen",
            },
            k.listen.as_ref().map_or(Value::Null, listen),
        ),
        Some(Kind::Ended(k)) => (
            "ended",
            json!({
                "cause": end_cause(k.cause()),
                "meta_code": k.meta_code,
                "stats": k.stats.as_ref().map(call_info),
            }),
        ),
    }
}

pub fn load(l: &pb::GetLoadResponse) -> Value {
    json!({
        "active_calls": l.active_calls,
        "capacity": l.capacity,
        "draining": l.draining,
        "io_driver": l.io_driver,
        "cpu_limit_cores": l.cpu_limit_cores,
        "shards": l.shards.iter().map(|s| json!({
            "shard": s.shard,
            "calls": s.calls,
            "packets_per_second": s.packets_per_second,
            "busy_ratio": s.busy_ratio,
        })).collect::<Vec<_>>(),
    })
}

pub fn drain(d: &pb::DrainResponse) -> Value {
    json!({
        "active_calls": d.active_calls,
        "deadline": d.deadline.as_ref().map(timestamp),
    })
}

/// RFC 3339 in UTC, e.g. `2025-01-31T12:00:00.250Z`.
pub fn timestamp(t: &prost_types::Timestamp) -> String {
    t.to_string()
}

fn non_empty(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.to_owned())
    }
}

/// `PREFIX_SOME_NAME` → `some_name`; the unspecified value → `None`.
fn short(name: &str, prefix: &str) -> Option<String> {
    let rest = name.strip_prefix(prefix).unwrap_or(name);
    (rest != "UNSPECIFIED").then(|| rest.to_ascii_lowercase())
}

pub fn direction(d: pb::CallDirection) -> Option<String> {
    short(d.as_str_name(), "CALL_DIRECTION_")
}

pub fn state(s: pb::CallState) -> Option<String> {
    short(s.as_str_name(), "CALL_STATE_")
}

pub fn leg(l: pb::Leg) -> Option<String> {
    short(l.as_str_name(), "LEG_")
}

pub fn end_cause(c: pb::EndCause) -> Option<String> {
    short(c.as_str_name(), "END_CAUSE_")
}

pub fn srtp_profile(p: pb::SrtpProfile) -> Option<String> {
    // The SDES names, as in SDP and RFCs.
    short(p.as_str_name(), "SRTP_PROFILE_").map(|s| s.to_ascii_uppercase())
}

pub fn recording(r: &pb::Recording) -> Value {
    json!({
        "state": match r.state() {
            pb::RecordingState::Recording => "recording",
            pb::RecordingState::Paused => "paused",
            pb::RecordingState::Stopped => "stopped",
            pb::RecordingState::Unspecified => "unknown",
        },
        "consumer_file": r.consumer_file,
        "agent_file": r.agent_file,
        "events_file": r.events_file,
        "dropped_packets": r.dropped_packets,
    })
}

pub fn listen(l: &pb::Listen) -> Value {
    json!({
        "state": match l.state() {
            pb::ListenState::Connecting => "connecting",
            pb::ListenState::Live => "live",
            pb::ListenState::Stopped => "stopped",
            pb::ListenState::Unspecified => "unknown",
        },
        "local": l.local,
        "supervisor": non_empty(&l.supervisor),
        "consumer_packets": l.consumer_packets,
        "agent_packets": l.agent_packets,
        "dropped_packets": l.dropped_packets,
        "stop_reason": non_empty(&l.stop_reason),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_names_are_short_and_unspecified_is_null() {
        assert_eq!(state(pb::CallState::Active).as_deref(), Some("active"));
        assert_eq!(state(pb::CallState::Unspecified), None);
        assert_eq!(
            srtp_profile(pb::SrtpProfile::AeadAes128Gcm).as_deref(),
            Some("AEAD_AES_128_GCM")
        );
        assert_eq!(
            end_cause(pb::EndCause::NoMediaAfterAccept).as_deref(),
            Some("no_media_after_accept")
        );
    }

    #[test]
    fn call_info_json_has_proto_field_names() {
        let c = pb::CallInfo {
            call_id: "wacid.1".into(),
            state: pb::CallState::Ended.into(),
            end_cause: pb::EndCause::IceFailed.into(),
            meta_code: Some(138020),
            ..Default::default()
        };
        let v = call_info(&c);
        assert_eq!(v["call_id"], "wacid.1");
        assert_eq!(v["state"], "ended");
        assert_eq!(v["end_cause"], "ice_failed");
        assert_eq!(v["meta_code"], 138020);
        assert_eq!(v["whatsapp_remote"], Value::Null);
    }
}
