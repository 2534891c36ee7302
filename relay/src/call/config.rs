//! Every timer and limit a call uses. Defaults follow Meta's rules (20 s / 30 s) and RFC 7675.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallConfig {
    /// ICE: no working pair within this time ends the call (Meta 138020).
    #[serde(with = "humantime_serde")]
    pub ice_connect_timeout: Duration,
    /// First retransmission timeout of a connectivity check (doubles, capped at 500 ms).
    #[serde(with = "humantime_serde")]
    pub ice_check_rto: Duration,
    /// RFC 7675 consent: a check about this often on the selected pair.
    #[serde(with = "humantime_serde")]
    pub consent_interval: Duration,
    /// RFC 7675 consent: lost after this long without an authenticated response.
    #[serde(with = "humantime_serde")]
    pub consent_timeout: Duration,
    /// DTLS: first flight retransmission timeout (doubles per retry). Short on purpose: the
    /// 1 s/2 s/4 s backoff of other stacks costs seconds of audio when a flight is lost.
    #[serde(with = "humantime_serde")]
    pub dtls_flight_rto: Duration,
    /// DTLS: handshake not finished within this time ends the call (Meta 138019).
    #[serde(with = "humantime_serde")]
    pub dtls_timeout: Duration,
    /// Gate open and no packet from WhatsApp within this time: "accepted but no media" (138023).
    #[serde(with = "humantime_serde")]
    pub start_media_timeout: Duration,
    /// Media flowed from WhatsApp, then nothing for this long: receive timeout (138021).
    #[serde(with = "humantime_serde")]
    pub media_timeout: Duration,
    /// RTCP report interval per leg (Meta uses missing RTCP to detect a dead agent).
    #[serde(with = "humantime_serde")]
    pub rtcp_interval: Duration,
    /// Packet time of generated audio (silence fill).
    #[serde(with = "humantime_serde")]
    pub ptime: Duration,
    /// Send Opus silence to WhatsApp while the internal leg has nothing.
    pub silence_fill: bool,
    /// The internal leg counts as silent after this long without a packet.
    #[serde(with = "humantime_serde")]
    pub fill_after: Duration,
    /// Internal packets held while the WhatsApp leg cannot carry them yet (20 ms each).
    pub prebuffer_packets: usize,
    /// The internal leg silent this long (gate open) raises `InternalLegSilent`.
    #[serde(with = "humantime_serde")]
    pub internal_silence_timeout: Duration,
    /// ... and, if set, ends the call (cause `internal_leg_timeout`).
    pub end_on_internal_silence: bool,
    /// Media from one leg only for this long raises `OneWayAudio`.
    #[serde(with = "humantime_serde")]
    pub one_way_timeout: Duration,
    /// Keep the WhatsApp leg's DTLS state for the whole call, so a close_notify from Meta ends
    /// the call (`peer_closed`). Off by default: the state is ~10 KiB a call, Meta's hang-up
    /// arrives as a webhook anyway, and the media timeouts catch a peer that vanished.
    pub keep_dtls_state: bool,
}

impl Default for CallConfig {
    fn default() -> Self {
        CallConfig {
            ice_connect_timeout: Duration::from_secs(10),
            ice_check_rto: Duration::from_millis(50),
            consent_interval: Duration::from_secs(5),
            consent_timeout: Duration::from_secs(30),
            dtls_flight_rto: Duration::from_millis(50),
            dtls_timeout: Duration::from_secs(10),
            start_media_timeout: Duration::from_secs(20),
            media_timeout: Duration::from_secs(30),
            rtcp_interval: Duration::from_secs(5),
            ptime: Duration::from_millis(20),
            silence_fill: true,
            fill_after: Duration::from_millis(60),
            prebuffer_packets: 75,
            internal_silence_timeout: Duration::from_secs(30),
            end_on_internal_silence: false,
            one_way_timeout: Duration::from_secs(10),
            keep_dtls_state: false,
        }
    }
}
