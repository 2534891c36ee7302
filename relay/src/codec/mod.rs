//! The codec layer: what lets a call's internal leg speak something other than Opus.
//!
//! WhatsApp always sends and expects Opus at 48 kHz RTP clock. Where the internal leg cannot
//! take it (a G.711-only media server, a voice bot wanting μ-law or 16-bit PCM) the call
//! decodes, converts and encodes here:
//! - [`g711`]: μ-law / A-law companding (PCMU / PCMA);
//! - [`opus`]: libopus decoder (with concealment and in-band FEC) and encoder, mono, at the
//!   leg's sample rate;
//! - [`resample`]: a polyphase FIR for integer ratios between 8/16/24/48 kHz, for PCM that
//!   does not pass through Opus at the rate it needs;
//! - [`clock`]: RTP timestamp translation between clocks, RFC 4733 event durations;
//! - [`transcoder`]: the stream-level pieces (loss detection, FEC/PLC, 20 ms re-framing,
//!   timestamps) a transcoding leg is made of.
//!
//! Everything here allocates only when constructed: the per-frame calls write into caller
//! buffers (relay/tests/codec_alloc.rs proves it with the counting allocator).

pub mod clock;
pub mod g711;
#[allow(unsafe_code)] // libopus FFI
pub mod opus;
pub mod resample;
pub mod transcoder;

#[cfg(test)]
#[cfg(test)]
pub(crate) mod testing;

/// Why a codec call failed. None of these is fatal to a call: a bad frame is counted and
/// dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("sample rate {0} Hz is not supported here")]
    UnsupportedRate(u32),
    #[error("resampling {from} Hz to {to} Hz is not an integer ratio this resampler handles")]
    UnsupportedRatio { from: u32, to: u32 },
    #[error("libopus error {code}: {message}")]
    Opus { code: i32, message: &'static str },
    #[error("empty packet")]
    EmptyPacket,
    #[error("packet of {0} bytes is too large")]
    PacketTooLarge(usize),
    #[error("output buffer holds {have} samples, {need} needed")]
    OutputTooSmall { need: usize, have: usize },
    #[error("L16 payload of odd length {0}")]
    OddL16Payload(usize),
}
