//! Meta emulator and internal peers, shared by the integration tests and the load test.
//!
//! Everything here is an independent stack on purpose: DTLS on webrtc-rs `rtc-dtls`, SRTP on
//! `webrtc-srtp`, and STUN/RTP/SDP codecs of its own, so the relay is proven against code it
//! does not share.
//!
//! - [`faults::FaultProxy`]: a loopback proxy injecting loss, duplication, jitter, reordering.
//! - [`meta::MetaPeer`]: WhatsApp's media endpoint (ICE-lite, DTLS either role or SDES, Opus).
//! - [`sip::SipPeer`]: the internal leg as a SIP media server (plain RTP or SDES-SRTP).
//! - [`meta::MetaCore`] / [`sip::SipCore`]: the same peers sans-IO, for drivers that own
//!   their sockets (the simulated-time scenario tests).
//! - [`meta::MetaLink`]: Meta's setup half alone (SDP, ICE-lite, DTLS or SDES keys), which
//!   `MetaCore` and the load test's peer both drive, each with its own media.

#![deny(unsafe_code)]

pub mod browser;
pub mod chromium;
pub mod dtls;
pub mod faults;
pub mod media;
pub mod meta;
pub mod rtp;
pub mod runner;
pub mod sdp;
pub mod sip;
pub mod srtp;
pub mod stun;
