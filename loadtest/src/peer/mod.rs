//! The two peers of a load-test call, built for volume: each writes its packets into the
//! generator thread's send batch and reads them from its receive buffers in place.
//!
//! - [`wa::WaPeer`]: WhatsApp's media endpoint as the relay sees it. Everything Meta does
//!   before media (SDP, ICE-lite, DTLS in the role the relay's answer leaves it, SDES) is the
//!   e2e emulator's [`e2e::meta::MetaLink`], the same code the e2e tests run; the media on top
//!   is this crate's: Opus-like audio every 20 ms, sender reports every 5 s.
//! - [`sip::SipPeer`]: a SIP media server's leg: plain RTP every 20 ms, sender reports.
//!
//! Why not `e2e::meta::MetaCore` whole: its media records every received packet (with a copy of
//! its payload) for test assertions, on an SRTP stack that allocates per packet. A load test
//! runs millions of packets, so the media here keeps counters and histograms instead and uses
//! the relay's in-place SRTP (the e2e tests cover interoperability with an independent SRTP
//! stack).

pub mod media;
pub mod sip;
pub mod wa;
