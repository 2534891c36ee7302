//! Meta emulator and internal peers, shared by the integration tests and the load test.
//!
//! Everything here is an independent stack on purpose: DTLS on webrtc-rs `rtc-dtls`, SRTP on
//! `webrtc-srtp`, and STUN/RTP/SDP codecs of its own, so the relay is proven against code it
//! does not share.

pub mod dtls;
pub mod rtp;
pub mod srtp;
