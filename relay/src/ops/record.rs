//! The per-call record (like the Call Logs Meta's support asks for), assembled from the engine's
//! events and the call's statistics.
//!
//! The engine's `Ended` event carries the call's exact final statistics, whatever ended it.
//! The broadcast can lag and lose events, so [`Recorder`] also keeps, per live call, the latest
//! [`CallInfo`] anyone saw: the answer to `Terminate` (also final), else the last
//! `GetCall`/`ListCalls` answer or periodic sample. The record says which (`stats.source`)
//! and how old the sample is. It is sans-IO: callers pass the time and decide where records
//! go.

use std::collections::HashMap;
#[cfg(test)]
use std::time::Duration;
use std::time::SystemTime;

use serde::Serialize;

use crate::api::{
    CallDirection, CallEvent, CallEventKind, CallInfo, EndCause, LegKind, LegStats, StreamStats,
};

use super::logs::{event_name, leg_name};
use super::mos;

/// How much the recorder holds.
#[derive(Copy, Clone, Debug)]
pub struct RecorderLimits {
    /// Calls tracked at once; events of further calls are not recorded (and counted).
    pub max_calls: usize,
    /// Events kept per call; beyond it only `ended` is added (a DTMF-heavy IVR call must not
    /// grow without bound). The record counts the ones left out.
    pub events_per_call: usize,
}

impl Default for RecorderLimits {
    fn default() -> Self {
        RecorderLimits {
            max_calls: 20_000,
            events_per_call: 64,
        }
    }
}

/// Full-list samples a live call may be missing from before we conclude its `Ended` event was
/// lost (the broadcast lagged) and write what we have.
const MISSING_SAMPLES_BEFORE_GIVING_UP: u8 = 3;

#[derive(Debug)]
struct Tracked {
    first_seen: SystemTime,
    info: Option<CallInfo>,
    info_at: Option<SystemTime>,
    /// `info` is the call as it ended (from `Ended` or a Terminate answer).
    info_final: bool,
    events: Vec<(SystemTime, CallEventKind)>,
    events_dropped: u32,
    ended: Option<(SystemTime, EndCause, Option<u32>)>,
    missing_samples: u8,
}

impl Tracked {
    fn new(now: SystemTime) -> Self {
        Tracked {
            first_seen: now,
            info: None,
            info_at: None,
            info_final: false,
            events: Vec::new(),
            events_dropped: 0,
            ended: None,
            missing_samples: 0,
        }
    }
}

#[derive(Debug)]
pub struct Recorder {
    limits: RecorderLimits,
    calls: HashMap<String, Tracked>,
    /// Calls not tracked because `max_calls` was reached.
    pub untracked: u64,
}

impl Recorder {
    pub fn new(limits: RecorderLimits) -> Self {
        Recorder {
            limits,
            calls: HashMap::new(),
            untracked: 0,
        }
    }

    /// Calls tracked now (live, or ended and waiting for their final counters).
    pub fn tracked(&self) -> usize {
        self.calls.len()
    }

    /// Calls tracked that have not ended.
    pub fn live(&self) -> usize {
        self.calls.values().filter(|t| t.ended.is_none()).count()
    }

    /// An engine event. Returns the call's record when this ends it.
    pub fn on_event(&mut self, ev: &CallEvent) -> Option<CallRecord> {
        if !self.calls.contains_key(&ev.call_id) {
            if self.calls.len() >= self.limits.max_calls {
                self.untracked += u64::from(matches!(ev.kind, CallEventKind::Created));
                return None;
            }
            self.calls.insert(ev.call_id.clone(), Tracked::new(ev.at));
        }
        let t = self.calls.get_mut(&ev.call_id)?;
        let is_end = matches!(ev.kind, CallEventKind::Ended { .. });
        if t.events.len() < self.limits.events_per_call || is_end {
            t.events.push((ev.at, ev.kind.clone()));
        } else {
            t.events_dropped += 1;
        }
        if let CallEventKind::Ended {
            cause,
            meta_code,
            stats,
        } = &ev.kind
        {
            t.ended = Some((ev.at, *cause, *meta_code));
            t.info = Some((**stats).clone());
            t.info_at = Some(ev.at);
            t.info_final = true;
            return self.finish(&ev.call_id);
        }
        None
    }

    /// A fresh view of a call (GetCall, ListCalls, a periodic sample). Only calls already
    /// tracked are updated: a sample taken before a call ended must not bring it back.
    pub fn on_info(&mut self, info: CallInfo, at: SystemTime) {
        if let Some(t) = self.calls.get_mut(&info.call_id)
            && !t.info_final
        {
            t.missing_samples = 0;
            t.info = Some(info);
            t.info_at = Some(at);
        }
    }

    /// A complete list of live calls, sampled at `at` (taken after `at`). Tracked calls
    /// missing from several such lists lost their `Ended` event; their records are returned
    /// (cause `unknown`).
    pub fn on_sample(&mut self, infos: Vec<CallInfo>, at: SystemTime) -> Vec<CallRecord> {
        let present: std::collections::HashSet<String> =
            infos.iter().map(|i| i.call_id.clone()).collect();
        for info in infos {
            self.on_info(info, at);
        }
        let mut lost = Vec::new();
        for (id, t) in &mut self.calls {
            if t.ended.is_none() && t.first_seen < at && !present.contains(id) {
                t.missing_samples += 1;
                if t.missing_samples >= MISSING_SAMPLES_BEFORE_GIVING_UP {
                    lost.push(id.clone());
                }
            }
        }
        lost.iter().filter_map(|id| self.finish(id)).collect()
    }

    /// The engine answered a Terminate with the call as it ended. Final counters for a call
    /// whose `Ended` event the broadcast lost; harmless otherwise (the record is gone).
    pub fn on_final_info(&mut self, info: CallInfo, at: SystemTime) {
        if let Some(t) = self.calls.get_mut(&info.call_id) {
            t.info = Some(info);
            t.info_at = Some(at);
            t.info_final = true;
        }
    }

    /// Records of everything still tracked (at shutdown).
    pub fn flush(&mut self) -> Vec<CallRecord> {
        let ids: Vec<String> = self.calls.keys().cloned().collect();
        ids.iter().filter_map(|id| self.finish(id)).collect()
    }

    fn finish(&mut self, call_id: &str) -> Option<CallRecord> {
        let t = self.calls.remove(call_id)?;
        Some(CallRecord::build(call_id, t))
    }
}

/// One ended call, written as one JSON line.
#[derive(Clone, Debug, Serialize)]
pub struct CallRecord {
    pub call_id: String,
    /// Unknown (`null`) only for calls that ended before anyone looked at them.
    pub business_number: Option<String>,
    pub consumer: Option<String>,
    pub direction: Option<&'static str>,
    pub created_at: String,
    pub ended_at: String,
    pub duration_ms: u64,
    /// An end cause (`terminated`, `ice_failed`, …) or `unknown` when the end went unseen.
    pub cause: &'static str,
    pub meta_code: Option<u32>,
    pub srtp_profile: Option<String>,
    pub whatsapp_remote: Option<String>,
    pub internal_remote: Option<String>,
    pub stats: Option<CallStats>,
    /// Estimate from the worse leg (see [`mos`]); `null` without media.
    pub mos: Option<f64>,
    pub events: Vec<EventRecord>,
    pub events_dropped: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct CallStats {
    /// `final`: the call's counters at its end (from Terminate). `sampled`: the last sample,
    /// `as_of`; anything after it is missing.
    pub source: &'static str,
    pub as_of: String,
    pub whatsapp: LegRecord,
    pub internal: LegRecord,
}

#[derive(Clone, Debug, Serialize)]
pub struct LegRecord {
    /// What the relay received on this leg.
    pub rx: StreamRecord,
    /// What the relay sent; `lost` and `jitter_ms` as the peer reports them in RTCP.
    pub tx: StreamRecord,
    pub dropped: u64,
    pub auth_failures: u64,
    pub rtt_ms: Option<f64>,
    pub mos: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StreamRecord {
    pub packets: u64,
    pub bytes: u64,
    pub lost: u64,
    pub loss_ratio: f64,
    pub jitter_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct EventRecord {
    pub at: String,
    pub event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// IcePairNominated: our socket and the checks it took.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks_sent: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks_answered: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// FirstMedia / DtmfReceived: the leg. DTMF digits are not recorded (they can be PINs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leg: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta_code: Option<u32>,
}

/// RFC 3339 UTC with milliseconds, e.g. `2025-01-31T12:00:00.123Z`.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn ratio(lost: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        (lost as f64 / of as f64).min(1.0)
    }
}

impl StreamRecord {
    fn received(s: &StreamStats) -> Self {
        StreamRecord {
            packets: s.packets,
            bytes: s.bytes,
            lost: s.lost,
            loss_ratio: ratio(s.lost, s.packets.saturating_add(s.lost)),
            jitter_ms: s.jitter_ms,
        }
    }

    fn sent(s: &StreamStats) -> Self {
        StreamRecord {
            packets: s.packets,
            bytes: s.bytes,
            lost: s.lost,
            // The peer's cumulative loss of what we sent.
            loss_ratio: ratio(s.lost, s.packets),
            jitter_ms: s.jitter_ms,
        }
    }
}

impl LegRecord {
    fn from_stats(s: &LegStats) -> Self {
        let rx = StreamRecord::received(&s.received);
        let tx = StreamRecord::sent(&s.sent);
        // Without received media there is nothing to score.
        let mos = (rx.packets > 0).then(|| {
            mos::mos(
                rx.loss_ratio.max(tx.loss_ratio),
                rx.jitter_ms.max(tx.jitter_ms),
                s.rtt_ms,
            )
        });
        LegRecord {
            rx,
            tx,
            dropped: s.dropped,
            auth_failures: s.auth_failures,
            rtt_ms: s.rtt_ms,
            mos,
        }
    }
}

impl EventRecord {
    fn new(at: SystemTime, kind: &CallEventKind) -> Self {
        let mut e = EventRecord {
            at: timestamp(at),
            event: event_name(kind),
            remote: None,
            local: None,
            checks_sent: None,
            checks_answered: None,
            profile: None,
            leg: None,
            cause: None,
            meta_code: None,
        };
        match kind {
            CallEventKind::IceConnected { remote } => e.remote = Some(remote.to_string()),
            CallEventKind::DtlsConnected { profile } => e.profile = Some(profile.to_string()),
            CallEventKind::FirstMedia { from }
            | CallEventKind::DtmfReceived { from, .. }
            | CallEventKind::OneWayAudio { silent: from } => {
                e.leg = Some(leg_name(*from));
            }
            CallEventKind::IcePairNominated {
                local,
                remote,
                checks_sent,
                checks_answered,
            } => {
                e.local = Some(local.to_string());
                e.remote = Some(remote.to_string());
                e.checks_sent = Some(*checks_sent);
                e.checks_answered = Some(*checks_answered);
            }
            CallEventKind::Ended {
                cause, meta_code, ..
            } => {
                e.cause = Some(cause.as_str());
                e.meta_code = *meta_code;
            }
            CallEventKind::InternalLegReplaced { remote, .. } => {
                e.leg = Some(leg_name(LegKind::Internal));
                e.remote = remote.map(|a| a.to_string());
            }
            CallEventKind::FirstMediaSent => e.leg = Some(leg_name(LegKind::WhatsApp)),
            CallEventKind::Created
            | CallEventKind::WhatsAppReady
            | CallEventKind::GateOpened
            | CallEventKind::InternalLegSilent { .. }
            | CallEventKind::Recording { .. }
            | CallEventKind::Listen { .. }
            | CallEventKind::ConsentLost => {}
        }
        e
    }
}

impl CallRecord {
    fn build(call_id: &str, t: Tracked) -> CallRecord {
        let info = t.info.as_ref();
        let created = info.map(|i| i.created_at).unwrap_or(t.first_seen);
        let last_event = t.events.last().map(|(at, _)| *at);
        let ended = t
            .ended
            .map(|(at, _, _)| at)
            .or(last_event)
            .unwrap_or(created);
        let stats = info.map(|i| CallStats {
            source: if t.info_final { "final" } else { "sampled" },
            as_of: timestamp(t.info_at.unwrap_or(ended)),
            whatsapp: LegRecord::from_stats(&i.whatsapp),
            internal: LegRecord::from_stats(&i.internal),
        });
        let mos = stats
            .as_ref()
            .and_then(|s| match (s.whatsapp.mos, s.internal.mos) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            });
        // The profile is known from the DTLS event even when no sample saw it.
        let profile = info
            .and_then(|i| i.srtp_profile)
            .map(|p| p.to_string())
            .or_else(|| {
                t.events.iter().find_map(|(_, k)| match k {
                    CallEventKind::DtlsConnected { profile } => Some(profile.to_string()),
                    _ => None,
                })
            });
        CallRecord {
            call_id: call_id.to_string(),
            business_number: info.map(|i| i.business_number.clone()),
            consumer: info.map(|i| i.consumer.clone()),
            direction: info.map(|i| match i.direction {
                CallDirection::UserInitiated => "user_initiated",
                CallDirection::BusinessInitiated => "business_initiated",
            }),
            created_at: timestamp(created),
            ended_at: timestamp(ended),
            duration_ms: ended
                .duration_since(created)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            cause: t.ended.map_or("unknown", |(_, c, _)| c.as_str()),
            meta_code: t.ended.and_then(|(_, _, m)| m),
            srtp_profile: profile,
            whatsapp_remote: info.and_then(|i| i.whatsapp_remote).map(|a| a.to_string()),
            internal_remote: info.and_then(|i| i.internal_remote).map(|a| a.to_string()),
            stats,
            mos,
            events: t
                .events
                .iter()
                .map(|(at, k)| EventRecord::new(*at, k))
                .collect(),
            events_dropped: t.events_dropped,
        }
    }

    /// UTC date of the end, `YYYY-MM-DD`: the call log file it belongs to.
    pub fn day(&self) -> &str {
        self.ended_at.get(..10).unwrap_or("unknown-date")
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::api::{CallState, LegKind};
    use crate::srtp::SrtpProfile;

    fn t(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(ms)
    }

    fn ev(id: &str, ms: u64, kind: CallEventKind) -> CallEvent {
        CallEvent {
            call_id: id.into(),
            at: t(ms),
            kind,
        }
    }

    fn ended(id: &str, ms: u64, cause: EndCause) -> CallEvent {
        ev(
            id,
            ms,
            CallEventKind::Ended {
                cause,
                meta_code: cause.meta_code(),
                stats: Box::new(info(id, 250)),
            },
        )
    }

    fn info(id: &str, rx_packets: u64) -> CallInfo {
        let mut whatsapp = LegStats::default();
        whatsapp.received.packets = rx_packets;
        whatsapp.received.lost = rx_packets / 10;
        whatsapp.received.jitter_ms = 4.0;
        whatsapp.sent.packets = rx_packets;
        whatsapp.rtt_ms = Some(40.0);
        CallInfo {
            call_id: id.into(),
            business_number: "15550001111".into(),
            consumer: "c1".into(),
            direction: CallDirection::UserInitiated,
            state: CallState::Active,
            gate_open: true,
            srtp_profile: Some(SrtpProfile::AeadAes128Gcm),
            whatsapp_remote: Some(SocketAddr::from(([192, 0, 2, 1], 3478))),
            internal_remote: None,
            whatsapp,
            internal: LegStats::default(),
            end_cause: None,
            created_at: t(0),
        }
    }

    #[test]
    fn a_timeout_end_is_written_with_the_final_counters() {
        let mut r = Recorder::new(RecorderLimits::default());
        assert!(r.on_event(&ev("a", 0, CallEventKind::Created)).is_none());
        let remote = SocketAddr::from(([192, 0, 2, 1], 3478));
        r.on_event(&ev("a", 40, CallEventKind::IceConnected { remote }));
        r.on_event(&ev(
            "a",
            40,
            CallEventKind::IcePairNominated {
                local: SocketAddr::from(([10, 0, 0, 1], 40000)),
                remote,
                checks_sent: 3,
                checks_answered: 1,
            },
        ));
        r.on_event(&ev(
            "a",
            90,
            CallEventKind::DtlsConnected {
                profile: SrtpProfile::AeadAes128Gcm,
            },
        ));
        r.on_event(&ev(
            "a",
            95,
            CallEventKind::FirstMedia {
                from: LegKind::WhatsApp,
            },
        ));
        r.on_info(info("a", 500), t(10_000));
        let rec = r
            .on_event(&ended("a", 40_000, EndCause::MediaReceiveTimeout))
            .expect("the end writes the record");
        assert_eq!(r.tracked(), 0);
        assert_eq!(rec.cause, "media_receive_timeout");
        assert_eq!(rec.meta_code, Some(138021));
        assert_eq!(rec.duration_ms, 40_000);
        assert_eq!(rec.business_number.as_deref(), Some("15550001111"));
        assert_eq!(rec.direction, Some("user_initiated"));
        assert_eq!(rec.srtp_profile.as_deref(), Some("AEAD_AES_128_GCM"));
        let stats = rec.stats.as_ref().unwrap();
        // The end event's counters, not the older sample.
        assert_eq!(stats.source, "final");
        assert_eq!(stats.as_of, timestamp(t(40_000)));
        assert_eq!(stats.whatsapp.rx.packets, 250);
        assert!((stats.whatsapp.rx.loss_ratio - 25.0 / 275.0).abs() < 1e-9);
        assert!(rec.mos.is_some_and(|m| m > 1.0 && m < 4.5));
        let names: Vec<&str> = rec.events.iter().map(|e| e.event).collect();
        assert_eq!(
            names,
            [
                "created",
                "ice_connected",
                "ice_pair_nominated",
                "dtls_connected",
                "first_media",
                "ended"
            ]
        );
        assert_eq!(rec.events[1].remote.as_deref(), Some("192.0.2.1:3478"));
        assert_eq!(rec.events[2].local.as_deref(), Some("10.0.0.1:40000"));
        assert_eq!(
            (rec.events[2].checks_sent, rec.events[2].checks_answered),
            (Some(3), Some(1))
        );
        assert_eq!(rec.events[4].leg, Some("whatsapp"));
        let json = serde_json::to_value(&rec).unwrap();
        assert_eq!(json["events"][5]["cause"], "media_receive_timeout");
        assert!(json["events"][0].get("cause").is_none());
    }

    #[test]
    fn a_terminate_answer_gives_final_counters_when_the_end_event_was_lost() {
        let mut r = Recorder::new(RecorderLimits::default());
        r.on_event(&ev("a", 0, CallEventKind::Created));
        r.on_final_info(info("a", 7), t(10));
        // A later sample does not replace the final counters.
        r.on_info(info("a", 1), t(11));
        let rec = r.flush().pop().unwrap();
        let stats = rec.stats.unwrap();
        assert_eq!((stats.source, stats.whatsapp.rx.packets), ("final", 7));
    }

    #[test]
    fn limits_bound_calls_and_events() {
        let mut r = Recorder::new(RecorderLimits {
            max_calls: 1,
            events_per_call: 2,
        });
        r.on_event(&ev("a", 0, CallEventKind::Created));
        r.on_event(&ev("b", 0, CallEventKind::Created));
        assert_eq!((r.tracked(), r.untracked), (1, 1));
        for i in 0..10 {
            let dtmf = CallEventKind::DtmfReceived {
                from: LegKind::WhatsApp,
                digit: '1',
            };
            r.on_event(&ev("a", i, dtmf));
        }
        let rec = r.on_event(&ended("a", 20, EndCause::PeerClosed)).unwrap();
        assert_eq!(rec.events.len(), 3, "two kept plus the end");
        assert_eq!(rec.events_dropped, 9);
        assert_eq!(rec.business_number.as_deref(), Some("15550001111"));
    }

    #[test]
    fn stale_samples_do_not_resurrect_ended_calls_and_lost_ends_are_written() {
        let mut r = Recorder::new(RecorderLimits::default());
        r.on_event(&ev("a", 0, CallEventKind::Created));
        r.on_event(&ended("a", 10, EndCause::Terminated)).unwrap();
        r.on_info(info("a", 5), t(5));
        assert_eq!(r.tracked(), 0);

        r.on_event(&ev("b", 0, CallEventKind::Created));
        for i in 1..MISSING_SAMPLES_BEFORE_GIVING_UP as u64 {
            assert!(r.on_sample(Vec::new(), t(i * 1000)).is_empty());
        }
        let lost = r.on_sample(Vec::new(), t(9_000));
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].cause, "unknown");
    }
}
