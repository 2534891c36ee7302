//! Scenario tests of the call state machine (issue 4's rules, statistics) in simulated time:
//! a real [`crate::call::Call`] between a Meta peer (ICE-lite + DTLS, or SDES) and a plain-RTP
//! media server built from the relay's own modules. See [`harness`].

mod harness;

mod bot;
mod dtls_state;
mod fill;
mod g711;
mod gate;
mod keepalive;
mod lifetime;
mod listen;
mod record;
mod replace;
mod replay;
mod rtt;
mod silence;
mod stats;
mod timeouts;
mod webrtc;
