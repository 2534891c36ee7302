//! The two peers of a load-test call, built for volume: each writes its packets into the
//! generator thread's send batch and reads them from its receive buffers in place.
//!
//! - [`meta::MetaPeer`]: WhatsApp's media endpoint as the relay sees it, assembled from the
//!   e2e emulator's parts (its certificate and `rtc-dtls` driver, its STUN codec, its SDP
//!   reader): ICE-lite, DTLS in the role the relay's answer leaves it, SRTP, Opus-like audio
//!   every 20 ms, sender reports every 5 s.
//! - [`sip::SipPeer`]: a SIP media server's leg: plain RTP every 20 ms, sender reports.
//!
//! Why not drive `e2e::meta::MetaCore` itself: it records every received packet (with a copy
//! of its payload) for test assertions and has no way to forget them, and it allocates several
//! times per packet. A load test runs millions of packets, so the peers here keep counters and
//! histograms instead, and use the relay's in-place SRTP for the media (the e2e tests cover
//! interoperability with an independent SRTP stack).

pub mod media;
pub mod meta;
pub mod sip;
