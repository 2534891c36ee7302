//! Pure wire formats: no I/O, no clock, no allocation on parse.

pub mod classify;
pub mod rtcp;
pub mod rtp;
pub mod seq;
pub mod stun;
