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
    /// Silence fill starts once the internal leg has sent nothing for this long at least...
    #[serde(with = "humantime_serde")]
    pub fill_after: Duration,
    /// ... or longer, up to this, when the internal leg's packets arrive with more jitter:
    /// the wait adapts to the largest recent inter-arrival gap (see `call::fill`), so a
    /// browser's normal jitter on a busy machine does not start a fill that its late packets
    /// then collide with. Equal to `fill_after` turns the adaptation off.
    #[serde(with = "humantime_serde")]
    pub fill_after_max: Duration,
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
    /// Business-initiated: Meta's answer must arrive within this of create, or the call ends
    /// (`answer_timeout`). Meta rings the consumer for about 30-60 s; the margin keeps the
    /// relay from ending a call Meta still rings.
    #[serde(with = "humantime_serde")]
    pub answer_timeout: Duration,
    /// Offer and answer known (create for user-initiated calls, Meta's answer for
    /// business-initiated ones) but the gate not opened within this: the call ends
    /// (`accept_timeout`). Meta gives the consumer about 30-60 s to answer; 90 s leaves a
    /// margin for the signaling tier's webhooks and retries.
    #[serde(with = "humantime_serde")]
    pub accept_timeout: Duration,
    /// A call ends (`max_duration`) at this age whatever it is doing: the safety net for a
    /// call whose end was never signalled. Zero turns it off.
    #[serde(with = "humantime_serde")]
    pub max_call_duration: Duration,
    /// A WebRTC internal leg whose browser sent neither a consent check nor media for this
    /// long is gone (a tab closed without `pc.close()`): the call ends
    /// (`internal_leg_failed`) instead of keeping the consumer in relay-made silence until
    /// `consent_timeout`.
    #[serde(with = "humantime_serde")]
    pub webrtc_idle_timeout: Duration,
    /// Keep the WhatsApp leg's DTLS state for the whole call, so a close_notify from Meta ends
    /// the call (`peer_closed`). Off by default: the state is ~10 KiB a call, Meta's hang-up
    /// arrives as a webhook anyway, and the media timeouts catch a peer that vanished.
    pub keep_dtls_state: bool,
    /// When the relay offers first to a plain-RTP/SDES internal peer, list PCMU and PCMA after
    /// Opus, so a media server without Opus can answer with G.711 (then the relay transcodes,
    /// see call/transcode.rs). Off: offer Opus only, as a pure forwarder.
    pub offer_g711: bool,
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
            fill_after_max: Duration::from_millis(200),
            prebuffer_packets: 75,
            internal_silence_timeout: Duration::from_secs(30),
            end_on_internal_silence: false,
            one_way_timeout: Duration::from_secs(10),
            keep_dtls_state: false,
            offer_g711: true,
            answer_timeout: Duration::from_secs(90),
            accept_timeout: Duration::from_secs(90),
            max_call_duration: Duration::from_secs(4 * 3600),
            webrtc_idle_timeout: Duration::from_secs(10),
        }
    }
}
