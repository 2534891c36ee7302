//! SDP (RFC 8866) parsing and writing for the WhatsApp and internal legs.
//!
//! - [`parse`] / [`parse_bytes`]: a tolerant parser for one active `m=audio` stream, with the
//!   attributes of ICE (RFC 8839), DTLS-SRTP (RFC 5763, RFC 8122) and SDES (RFC 4568).
//!   Errors name the line ([`SdpError`]); input size is bounded ([`MAX_SDP_BYTES`]).
//! - [`validate_wa_offer`] / [`validate_internal`]: what each leg needs, checked and
//!   extracted (transport, ICE, fingerprint, payload types, SDES keys).
//! - [`parse_webrtc`] / [`validate_webrtc`] / [`LocalDescription::webrtc_offer`] /
//!   [`LocalDescription::webrtc_answer`]: a browser agent's side of a WebRTC internal leg.
//! - [`LocalDescription`]: our side, written with CRLF line endings, with constructors for the
//!   WhatsApp answer, the WhatsApp offer and the internal leg.
//!
//! Signaling-path code: it allocates freely and is never on the per-packet path.

mod error;
mod fields;
mod model;
mod parse;
mod validate;
mod webrtc;
mod write;

pub use error::SdpError;
pub(crate) use fields::fingerprint as parse_fingerprint;
pub use model::{
    AudioMedia, Candidate, Crypto, Direction, Fingerprint, LineNumbers, MediaProto, MediaSection,
    Origin, RtpMap, SessionDescription, Setup,
};
pub use parse::{MAX_LINE_BYTES, MAX_SDP_BYTES, parse, parse_bytes, parse_webrtc};
pub use validate::{
    DtlsRemote, InternalCodec, InternalRemote, SdesCrypto, SdesRemote, TELEPHONE_EVENT_CLOCK,
    WaTransport, WhatsAppOffer, sdes_key_params, validate_internal, validate_wa_offer,
};
pub use webrtc::{
    WEBRTC_OFFER_MID, WEBRTC_STREAM_ID, WebRtcLocalParams, WebRtcRemote, validate_webrtc,
    webrtc_answer_setup,
};
pub use write::{
    DEFAULT_OPUS_PT, DEFAULT_TELEPHONE_EVENT_PT, InternalLocalParams, LocalAudio, LocalDescription,
    LocalIce, LocalPayload, LocalSecurity, META_OPUS_FMTP, PTIME_MS, RejectedMedia, WaLocalParams,
};
