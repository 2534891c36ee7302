//! The voice-bot wire protocol: Twilio Media Streams framing over a WebSocket, sans-IO.
//!
//! Written from Twilio's public description of Media Streams' WebSocket messages, so bots and
//! frameworks that already speak it (pipecat's Twilio serializer, Realtime-API bridges) work
//! unchanged. Everything is a JSON text frame with an `event` discriminator:
//!
//! Relay → bot: `connected` (first), `start` (once: stream and call ids, custom parameters,
//! media format), `media` (20 ms of the consumer's audio: track, chunk, timestamp, base64
//! payload), `dtmf` (a digit the consumer pressed), `mark` (the audio the bot queued before
//! its own `mark` has been played, or dropped by `clear`), `stop` (last).
//!
//! Bot → relay: `media` (base64 audio to play, any length), `mark` (tell me when everything
//! before this has been played), `clear` (drop everything queued: barge-in). Other events are
//! ignored, as Twilio ignores them.
//!
//! Two formats ([`MediaFormat`]): Twilio's μ-law 8 kHz in base64 `media` messages, or a raw
//! mode for speech models: binary frames of 16-bit little-endian PCM at 16 kHz both ways (640
//! bytes per 20 ms toward the bot, any even length from it), with the same JSON control.
//!
//! Nothing here allocates per media frame: outgoing messages are written into a caller's
//! reused buffer, incoming ones are parsed borrowing the frame's text (serde_json allocates
//! only for a string with JSON escapes, which a base64 payload never needs), and base64 is
//! decoded in fixed-size pieces into a stack buffer. No input makes this module panic
//! (`tests::hostile_frames_never_panic` and the fuzz target `bot_protocol`).

use std::borrow::Cow;
use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;

/// The Media Streams protocol version we announce in `connected`.
pub const PROTOCOL_VERSION: &str = "1.0.0";

/// Longest mark name accepted from a bot (Twilio sets no limit; a name is a label).
pub const MAX_MARK_NAME: usize = 256;

/// Longest custom parameter key or value sent in `start` (the control plane refuses longer).
pub const MAX_PARAM_LEN: usize = 1024;

/// The audio format on the WebSocket.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum MediaFormat {
    /// Twilio's: G.711 μ-law, 8 kHz, mono, base64 in JSON `media` messages.
    #[default]
    Mulaw8k,
    /// Raw: 16-bit signed little-endian PCM, 16 kHz, mono, in binary frames.
    L16_16k,
}

impl MediaFormat {
    pub fn sample_rate(self) -> u32 {
        match self {
            MediaFormat::Mulaw8k => 8000,
            MediaFormat::L16_16k => 16_000,
        }
    }

    /// Bytes of one 20 ms frame on the wire.
    pub fn frame_bytes(self) -> usize {
        match self {
            MediaFormat::Mulaw8k => 160,
            MediaFormat::L16_16k => 640,
        }
    }

    /// Samples in one 20 ms frame.
    pub fn frame_samples(self) -> usize {
        self.sample_rate() as usize / 50
    }

    /// Bytes per sample on the wire.
    pub fn sample_bytes(self) -> usize {
        match self {
            MediaFormat::Mulaw8k => 1,
            MediaFormat::L16_16k => 2,
        }
    }

    /// `mediaFormat.encoding` in `start`.
    pub fn encoding(self) -> &'static str {
        match self {
            MediaFormat::Mulaw8k => "audio/x-mulaw",
            MediaFormat::L16_16k => "audio/L16",
        }
    }

    /// Is media carried in binary frames (raw mode) rather than base64 JSON?
    pub fn binary(self) -> bool {
        self == MediaFormat::L16_16k
    }
}

/// What `start` tells the bot about the call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    /// Our id for this stream (one per bot leg; a new leg after ReplaceInternalLeg has a new
    /// one).
    pub stream_sid: String,
    /// Meta's call ID (`callSid`).
    pub call_id: String,
    /// The business phone number ID (`accountSid`).
    pub business_number: String,
    /// `customParameters`, as the signaling tier gave them, in order.
    pub custom: Vec<(String, String)>,
    pub format: MediaFormat,
}

/// Writes the relay's messages with Twilio's numbering: `sequenceNumber` counts every message
/// after `connected` from 1, `media.chunk` counts media messages from 1.
#[derive(Debug)]
pub struct Writer {
    stream_sid: String,
    seq: u64,
    chunk: u64,
}

impl Writer {
    pub fn new(stream_sid: &str) -> Self {
        Writer {
            stream_sid: stream_sid.to_string(),
            seq: 0,
            chunk: 0,
        }
    }

    fn head(&mut self, out: &mut String, event: &str) {
        self.seq += 1;
        out.clear();
        let _ = write!(
            out,
            "{{\"event\":\"{event}\",\"sequenceNumber\":\"{}\",\"streamSid\":",
            self.seq
        );
        json_string(out, &self.stream_sid);
    }

    /// `{"event":"connected","protocol":"Call","version":"1.0.0"}`.
    pub fn connected(&mut self, out: &mut String) {
        out.clear();
        let _ = write!(
            out,
            "{{\"event\":\"connected\",\"protocol\":\"Call\",\"version\":\"{PROTOCOL_VERSION}\"}}"
        );
    }

    pub fn start(&mut self, info: &StreamInfo, out: &mut String) {
        self.head(out, "start");
        out.push_str(",\"start\":{\"streamSid\":");
        json_string(out, &self.stream_sid);
        out.push_str(",\"accountSid\":");
        json_string(out, &info.business_number);
        out.push_str(",\"callSid\":");
        json_string(out, &info.call_id);
        out.push_str(",\"tracks\":[\"inbound\"],\"customParameters\":{");
        for (i, (k, v)) in info.custom.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json_string(out, k);
            out.push(':');
            json_string(out, v);
        }
        let _ = write!(
            out,
            "}},\"mediaFormat\":{{\"encoding\":\"{}\",\"sampleRate\":{},\"channels\":1}}}}}}",
            info.format.encoding(),
            info.format.sample_rate()
        );
    }

    /// One `media` message: `samples` (μ-law bytes) base64-encoded. `timestamp_ms` is the
    /// time since the stream started. Does not allocate once `out` has grown to a message.
    pub fn media(&mut self, timestamp_ms: u64, samples: &[u8], out: &mut String) {
        self.head(out, "media");
        self.chunk += 1;
        let _ = write!(
            out,
            ",\"media\":{{\"track\":\"inbound\",\"chunk\":\"{}\",\"timestamp\":\"{timestamp_ms}\",\"payload\":\"",
            self.chunk
        );
        B64.encode_string(samples, out);
        out.push_str("\"}}");
    }

    /// Count a media frame sent as a binary frame (raw mode), so `chunk` numbering and
    /// `sequenceNumber` stay what a Twilio-speaking bot expects if it mixes both.
    pub fn count_binary_media(&mut self) {
        self.chunk += 1;
    }

    pub fn dtmf(&mut self, digit: char, out: &mut String) {
        self.head(out, "dtmf");
        out.push_str(",\"dtmf\":{\"track\":\"inbound_track\",\"digit\":");
        let mut b = [0u8; 4];
        json_string(out, digit.encode_utf8(&mut b));
        out.push_str("}}");
    }

    /// The acknowledgement of the bot's mark `name`.
    pub fn mark(&mut self, name: &str, out: &mut String) {
        self.head(out, "mark");
        out.push_str(",\"mark\":{\"name\":");
        json_string(out, name);
        out.push_str("}}");
    }

    pub fn stop(&mut self, info: &StreamInfo, out: &mut String) {
        self.head(out, "stop");
        out.push_str(",\"stop\":{\"accountSid\":");
        json_string(out, &info.business_number);
        out.push_str(",\"callSid\":");
        json_string(out, &info.call_id);
        out.push_str("}}");
    }
}

/// Append `s` as a JSON string literal (RFC 8259 escaping).
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// One message from the bot.
#[derive(Debug, PartialEq, Eq)]
pub enum BotMessage<'a> {
    /// Audio to queue: base64 of the stream's format (μ-law; in raw mode base64 L16 is
    /// accepted too).
    Media { payload: Cow<'a, str> },
    /// Acknowledge `name` once everything queued before it has been played.
    Mark { name: Cow<'a, str> },
    /// Drop everything queued now (barge-in); pending marks are acknowledged.
    Clear,
    /// An event the relay does not act on (Twilio ignores unknown events too).
    Ignored,
}

/// Why a frame from the bot was not understood. Counted, never fatal to the call.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("not a JSON message with an \"event\": {0}")]
    NotJson(String),
    #[error("media without media.payload")]
    MediaWithoutPayload,
    #[error("mark without mark.name")]
    MarkWithoutName,
    #[error("mark name longer than {MAX_MARK_NAME} bytes")]
    MarkNameTooLong,
    #[error("media payload is not base64")]
    BadBase64,
    #[error("binary frame in μ-law mode (binary audio is the L16 raw mode)")]
    UnexpectedBinary,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: Text<'a>,
    #[serde(borrow, default)]
    media: Option<MediaBody<'a>>,
    #[serde(borrow, default)]
    mark: Option<MarkBody<'a>>,
}

#[derive(Deserialize)]
struct MediaBody<'a> {
    #[serde(borrow, default)]
    payload: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct MarkBody<'a> {
    #[serde(borrow, default)]
    name: Option<Text<'a>>,
}

/// A JSON string borrowed from the frame when it has no escapes (serde's own `Cow` support
/// does not borrow inside an `Option`, which would allocate for every media message).
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Parse one text frame from the bot.
pub fn parse(text: &str) -> Result<BotMessage<'_>, ProtocolError> {
    let env: Envelope<'_> = match serde_json::from_str(text) {
        Ok(e) => e,
        Err(e) => {
            // Classify the error (line/column) without echoing the bot's text back into logs.
            return Err(ProtocolError::NotJson(e.classify_name()));
        }
    };
    match &*env.event.0 {
        "media" => match env.media.and_then(|m| m.payload) {
            Some(Text(payload)) => Ok(BotMessage::Media { payload }),
            None => Err(ProtocolError::MediaWithoutPayload),
        },
        "mark" => match env.mark.and_then(|m| m.name) {
            Some(Text(name)) if name.len() > MAX_MARK_NAME => Err(ProtocolError::MarkNameTooLong),
            Some(Text(name)) => Ok(BotMessage::Mark { name }),
            None => Err(ProtocolError::MarkWithoutName),
        },
        "clear" => Ok(BotMessage::Clear),
        _ => Ok(BotMessage::Ignored),
    }
}

trait ClassifyName {
    fn classify_name(&self) -> String;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> String {
        format!(
            "{:?} error at line {} column {}",
            self.classify(),
            self.line(),
            self.column()
        )
    }
}

/// Base64 characters decoded per piece (a multiple of 4: whole quanta).
const B64_PIECE: usize = 512;

/// Decode a base64 `payload` into bytes, handing them to `sink` in pieces (no allocation,
/// whatever the payload's length). Bytes already handed over stay handed over if a later piece
/// is invalid.
pub fn decode_payload(payload: &str, mut sink: impl FnMut(&[u8])) -> Result<(), ProtocolError> {
    let bytes = payload.as_bytes();
    let mut buf = [0u8; B64_PIECE / 4 * 3];
    for piece in bytes.chunks(B64_PIECE) {
        let n = B64
            .decode_slice(piece, &mut buf)
            .map_err(|_| ProtocolError::BadBase64)?;
        sink(&buf[..n]);
    }
    Ok(())
}

/// The size limit of a text frame the relay accepts from a bot: 10 s of μ-law in base64 plus
/// the envelope (bigger messages are refused by the WebSocket layer, never buffered).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> StreamInfo {
        StreamInfo {
            stream_sid: "MZ1".into(),
            call_id: "wacid.1".into(),
            business_number: "1234".into(),
            custom: vec![
                ("lang".into(), "pt-BR".into()),
                ("q\"".into(), "a\nb".into()),
            ],
            format: MediaFormat::Mulaw8k,
        }
    }

    fn json(s: &str) -> serde_json::Value {
        serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
    }

    #[test]
    fn relay_messages_are_twilio_shaped() {
        let mut w = Writer::new("MZ1");
        let mut out = String::new();
        w.connected(&mut out);
        let v = json(&out);
        assert_eq!(v["event"], "connected");
        assert_eq!(v["protocol"], "Call");
        assert_eq!(v["version"], "1.0.0");

        w.start(&info(), &mut out);
        let v = json(&out);
        assert_eq!(v["event"], "start");
        assert_eq!(v["sequenceNumber"], "1");
        assert_eq!(v["streamSid"], "MZ1");
        assert_eq!(v["start"]["streamSid"], "MZ1");
        assert_eq!(v["start"]["callSid"], "wacid.1");
        assert_eq!(v["start"]["accountSid"], "1234");
        assert_eq!(v["start"]["tracks"][0], "inbound");
        assert_eq!(v["start"]["customParameters"]["lang"], "pt-BR");
        assert_eq!(v["start"]["customParameters"]["q\""], "a\nb");
        assert_eq!(v["start"]["mediaFormat"]["encoding"], "audio/x-mulaw");
        assert_eq!(v["start"]["mediaFormat"]["sampleRate"], 8000);
        assert_eq!(v["start"]["mediaFormat"]["channels"], 1);

        w.media(20, &[0xff; 160], &mut out);
        let v = json(&out);
        assert_eq!(v["event"], "media");
        assert_eq!(v["sequenceNumber"], "2");
        assert_eq!(v["media"]["track"], "inbound");
        assert_eq!(v["media"]["chunk"], "1");
        assert_eq!(v["media"]["timestamp"], "20");
        let payload = B64
            .decode(v["media"]["payload"].as_str().expect("payload"))
            .expect("base64");
        assert_eq!(payload, vec![0xff; 160]);

        w.dtmf('#', &mut out);
        let v = json(&out);
        assert_eq!(v["event"], "dtmf");
        assert_eq!(v["dtmf"]["digit"], "#");
        assert_eq!(v["dtmf"]["track"], "inbound_track");

        w.mark("greeting \"done\"", &mut out);
        let v = json(&out);
        assert_eq!(v["mark"]["name"], "greeting \"done\"");
        assert_eq!(v["sequenceNumber"], "4");

        w.stop(&info(), &mut out);
        let v = json(&out);
        assert_eq!(v["event"], "stop");
        assert_eq!(v["stop"]["callSid"], "wacid.1");
    }

    #[test]
    fn raw_mode_announces_l16_at_16k() {
        let mut w = Writer::new("MZ2");
        let mut out = String::new();
        let info = StreamInfo {
            format: MediaFormat::L16_16k,
            ..info()
        };
        w.start(&info, &mut out);
        let v = json(&out);
        assert_eq!(v["start"]["mediaFormat"]["encoding"], "audio/L16");
        assert_eq!(v["start"]["mediaFormat"]["sampleRate"], 16000);
        assert_eq!(MediaFormat::L16_16k.frame_bytes(), 640);
        assert_eq!(MediaFormat::Mulaw8k.frame_samples(), 160);
    }

    #[test]
    fn bot_messages_parse() {
        let m = parse(r#"{"event":"media","streamSid":"MZ1","media":{"payload":"//8="}}"#);
        assert_eq!(
            m,
            Ok(BotMessage::Media {
                payload: Cow::Borrowed("//8=")
            })
        );
        assert!(matches!(
            parse(r#"{"event":"media","media":{"payload":"//8="}}"#),
            Ok(BotMessage::Media {
                payload: Cow::Borrowed(_)
            })
        ));
        // JSON may escape "/": still decodes (owned, the only allocating case).
        let Ok(BotMessage::Media { payload }) =
            parse(r#"{"event":"media","media":{"payload":"\/\/8="}}"#)
        else {
            panic!("escaped media");
        };
        assert_eq!(payload, "//8=");
        assert_eq!(
            parse(r#"{"event":"mark","streamSid":"MZ1","mark":{"name":"m1"}}"#),
            Ok(BotMessage::Mark {
                name: Cow::Borrowed("m1")
            })
        );
        assert_eq!(
            parse(r#"{"event":"clear","streamSid":"MZ1"}"#),
            Ok(BotMessage::Clear)
        );
        assert_eq!(
            parse(r#"{"event":"something-new","x":[1,2]}"#),
            Ok(BotMessage::Ignored)
        );
    }

    #[test]
    fn bad_bot_messages_are_errors() {
        assert!(matches!(parse("not json"), Err(ProtocolError::NotJson(_))));
        assert!(matches!(parse("{}"), Err(ProtocolError::NotJson(_))));
        assert!(matches!(
            parse(r#"{"event":5}"#),
            Err(ProtocolError::NotJson(_))
        ));
        assert_eq!(
            parse(r#"{"event":"media","media":{}}"#),
            Err(ProtocolError::MediaWithoutPayload)
        );
        assert_eq!(
            parse(r#"{"event":"media"}"#),
            Err(ProtocolError::MediaWithoutPayload)
        );
        assert_eq!(
            parse(r#"{"event":"mark","mark":{}}"#),
            Err(ProtocolError::MarkWithoutName)
        );
        let long = format!(
            r#"{{"event":"mark","mark":{{"name":"{}"}}}}"#,
            "x".repeat(MAX_MARK_NAME + 1)
        );
        assert_eq!(parse(&long), Err(ProtocolError::MarkNameTooLong));
        assert!(parse(r#"{"event":"media","media":{"payload":7}}"#).is_err());
    }

    #[test]
    fn payloads_decode_in_pieces_of_any_length() {
        let audio: Vec<u8> = (0..8000u32).map(|i| (i * 7) as u8).collect();
        let b64 = B64.encode(&audio);
        let mut got = Vec::new();
        decode_payload(&b64, |p| got.extend_from_slice(p)).expect("decodes");
        assert_eq!(got, audio);
        for n in [0usize, 1, 2, 3, 383, 384, 385] {
            let b64 = B64.encode(&audio[..n]);
            let mut got = Vec::new();
            decode_payload(&b64, |p| got.extend_from_slice(p)).expect("decodes");
            assert_eq!(got, &audio[..n], "{n} bytes");
        }
        assert_eq!(
            decode_payload("@@@@", |_| {}),
            Err(ProtocolError::BadBase64)
        );
        // Padding in the middle is not base64.
        let bad = format!("{}{}", "QQ==", "A".repeat(600));
        assert_eq!(decode_payload(&bad, |_| {}), Err(ProtocolError::BadBase64));
    }

    /// A deterministic generator of hostile frames (the fuzz target does the same with
    /// coverage guidance): truncations and byte flips of valid messages, deep nesting, huge
    /// numbers, invalid UTF-8 turned lossy, unicode in names.
    #[test]
    fn hostile_frames_never_panic() {
        let seeds = [
            r#"{"event":"media","streamSid":"MZ1","media":{"payload":"//8AAQID"}}"#,
            r#"{"event":"mark","mark":{"name":"ünï\u0000cødé"}}"#,
            r#"{"event":"clear"}"#,
            r#"{"event":"media","media":{"payload":null,"track":"outbound"}}"#,
            r#"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]"#,
            r#"{"event":"mark","mark":{"name":1e999999}}"#,
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut deep = String::new();
        for _ in 0..10_000 {
            deep.push('[');
        }
        let _ = parse(&deep);
        for seed in seeds {
            let bytes = seed.as_bytes();
            for _ in 0..2_000 {
                let mut b = bytes.to_vec();
                match next() % 3 {
                    0 => b.truncate((next() as usize) % (bytes.len() + 1)),
                    1 => {
                        let i = (next() as usize) % b.len();
                        b[i] = next() as u8;
                    }
                    _ => {
                        let i = (next() as usize) % b.len();
                        b.insert(i, next() as u8);
                    }
                }
                let text = String::from_utf8_lossy(&b);
                if let Ok(BotMessage::Media { payload }) = parse(&text) {
                    let _ = decode_payload(&payload, |_| {});
                }
            }
        }
    }
}
