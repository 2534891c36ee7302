//! SRTP and SRTCP transforms applied in place on caller buffers (RFC 3711, RFC 7714).

mod profile;

pub use profile::{MasterKey, SessionKeys, SrtpProfile};
