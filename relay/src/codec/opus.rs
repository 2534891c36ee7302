//! Opus through libopus (the reference implementation, RFC 6716), mono, 16-bit PCM.
//!
//! Why libopus 1.6.1 compiled from vendored source (libopus-sys/, with the `cc` crate), measured
//! in BENCHMARKS.md ("Codec layer: choosing the parts"):
//! - against Debian's libopus 1.3.1 (`libopus-dev`): the same speed within noise and better
//!   PESQ on all four paths the relay runs (e.g. 48 kHz encode → 8 kHz decode 3.74 vs 3.66
//!   MOS-LQO), and no system package to install: the relay builds with a Rust toolchain and a
//!   C compiler. Every crates.io binding (`opusic-sys`, `audiopus_sys`, `libopus_sys`,
//!   `opus-static-sys`) builds libopus with cmake or links the system's; `audiopus_sys` is
//!   also marked unmaintained by RustSec (2026, advisory-db PR 2904).
//! - against `opus-rs` 0.1.40 (pure Rust): its 8 kHz decode of libopus packets scored 3.19 vs
//!   3.74, and its 48 kHz encoder sent 108-byte frames when asked for 20 kbit/s (50 bytes).
//! - against `unsafe-libopus` 0.2 (libopus 1.3.1 through c2rust): 44-200 heap allocations per
//!   frame (C's variable-length arrays became `Vec`s); the relay allocates nothing per packet.
//!
//! Decoders and encoders run at the rate of the leg they serve (8 kHz for G.711, 16 kHz for L16,
//! 48 kHz for Opus-to-Opus): libopus resamples internally (SILK runs at 8-16 kHz anyway; CELT
//! zeroes the bands above the output's Nyquist before it decimates), which costs less than a
//! 48 kHz decode followed by a separate resampler and sounds the same (BENCHMARKS.md).

use std::ffi::{CStr, c_int};
use std::ptr::NonNull;

use libopus_sys as ffi;

use super::CodecError;

/// Rates libopus accepts for PCM in and out.
pub const OPUS_RATES: [u32; 5] = [8000, 12000, 16000, 24000, 48000];

/// The RTP clock of Opus is 48 kHz whatever the audio bandwidth (RFC 7587 §4.1).
pub const OPUS_RTP_CLOCK: u32 = 48_000;

/// The largest Opus packet (RFC 6716 §3.4: 1275 bytes of frame data + ToC and lengths).
pub const MAX_PACKET: usize = 1276;

fn check_rate(rate: u32) -> Result<i32, CodecError> {
    if OPUS_RATES.contains(&rate) {
        Ok(rate as i32)
    } else {
        Err(CodecError::UnsupportedRate(rate))
    }
}

fn opus_error(code: c_int) -> CodecError {
    // SAFETY: opus_strerror returns a pointer to a static NUL-terminated string for any code.
    let msg = unsafe { CStr::from_ptr(ffi::opus_strerror(code)) };
    CodecError::Opus {
        code,
        message: msg.to_str().unwrap_or("unknown error"),
    }
}

/// The version string of the linked libopus (for logs and BENCHMARKS.md).
pub fn libopus_version() -> &'static str {
    // SAFETY: a static NUL-terminated string.
    unsafe { CStr::from_ptr(ffi::opus_get_version_string()) }
        .to_str()
        .unwrap_or("libopus")
}

/// A mono Opus decoder writing 16-bit PCM at a fixed rate.
pub struct OpusDecoder {
    raw: NonNull<ffi::OpusDecoder>,
    rate: u32,
}

// SAFETY: the decoder state is owned exclusively by this value (no shared pointers inside
// libopus's decoder), so moving it to another thread is sound; `&mut self` serialises use.
unsafe impl Send for OpusDecoder {}

impl OpusDecoder {
    /// A decoder producing mono PCM at `rate` Hz (one of [`OPUS_RATES`]).
    pub fn new(rate: u32) -> Result<OpusDecoder, CodecError> {
        let fs = check_rate(rate)?;
        let mut err: c_int = 0;
        // SAFETY: valid arguments; the returned pointer is checked for null.
        let raw = unsafe { ffi::opus_decoder_create(fs, 1, &mut err) };
        match NonNull::new(raw) {
            Some(raw) if err == ffi::OPUS_OK => Ok(OpusDecoder { raw, rate }),
            _ => Err(opus_error(err)),
        }
    }

    /// The output rate in Hz.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Samples in `ms` milliseconds at this decoder's rate.
    pub fn samples_in_ms(&self, ms: u32) -> usize {
        (self.rate / 1000 * ms) as usize
    }

    /// Decodes one packet into `out`; returns the samples written. `out` must hold the
    /// packet's duration (120 ms at most: `rate / 1000 * 120` samples is always enough).
    pub fn decode(&mut self, packet: &[u8], out: &mut [i16]) -> Result<usize, CodecError> {
        if packet.is_empty() {
            return Err(CodecError::EmptyPacket);
        }
        self.run(packet.as_ptr(), packet.len(), out, out.len(), false)
    }

    /// Packet-loss concealment: synthesises `samples` (a multiple of 2.5 ms) continuing the
    /// last decoded audio, fading out over repeated losses as libopus does.
    pub fn conceal(&mut self, samples: usize, out: &mut [i16]) -> Result<usize, CodecError> {
        self.run(std::ptr::null(), 0, out, samples, false)
    }

    /// Rebuilds a lost frame of `samples` from the in-band FEC (LBRR) carried by `next`, the
    /// packet after the loss; where `next` has no FEC this conceals, as libopus does. Decode
    /// `next` itself afterwards with [`OpusDecoder::decode`].
    pub fn decode_fec(
        &mut self,
        next: &[u8],
        samples: usize,
        out: &mut [i16],
    ) -> Result<usize, CodecError> {
        if next.is_empty() {
            return Err(CodecError::EmptyPacket);
        }
        self.run(next.as_ptr(), next.len(), out, samples, true)
    }

    /// Samples per channel `packet` decodes to at this decoder's rate.
    pub fn packet_samples(&self, packet: &[u8]) -> Result<usize, CodecError> {
        // SAFETY: pointer and length describe `packet`.
        let n = unsafe {
            ffi::opus_packet_get_nb_samples(packet.as_ptr(), packet.len() as i32, self.rate as i32)
        };
        if n < 0 {
            Err(opus_error(n))
        } else {
            Ok(n as usize)
        }
    }

    fn run(
        &mut self,
        data: *const u8,
        len: usize,
        out: &mut [i16],
        frame: usize,
        fec: bool,
    ) -> Result<usize, CodecError> {
        if frame > out.len() {
            return Err(CodecError::OutputTooSmall {
                need: frame,
                have: out.len(),
            });
        }
        let len = i32::try_from(len).map_err(|_| CodecError::PacketTooLarge(len))?;
        // SAFETY: `self.raw` is a live decoder; `data`/`len` describe a readable buffer (or
        // null/0 for concealment); `out` holds at least `frame` samples (checked above).
        let n = unsafe {
            ffi::opus_decode(
                self.raw.as_ptr(),
                data,
                len,
                out.as_mut_ptr(),
                frame as c_int,
                c_int::from(fec),
            )
        };
        if n < 0 {
            Err(opus_error(n))
        } else {
            Ok(n as usize)
        }
    }
}

impl Drop for OpusDecoder {
    fn drop(&mut self) {
        // SAFETY: created by opus_decoder_create, destroyed once.
        unsafe { ffi::opus_decoder_destroy(self.raw.as_ptr()) }
    }
}

/// Encoder settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpusEncoderConfig {
    /// Target bitrate, bits/s.
    pub bitrate: i32,
    /// 0 (fastest) to 10 (best).
    pub complexity: i32,
    /// Carry in-band FEC (LBRR) so the far end can rebuild a lost packet from the next one.
    pub inband_fec: bool,
    /// Expected loss the FEC is tuned for, percent.
    pub loss_percent: i32,
    /// Cap the coded bandwidth at wideband (8 kHz audio), what WhatsApp plays.
    pub max_wideband: bool,
}

impl OpusEncoderConfig {
    /// What WhatsApp's offer asks for: `maxaveragebitrate=20000;maxplaybackrate=16000;
    /// useinbandfec=1`. Complexity 5 halves the encoder's CPU against 10 (122 against 229 µs a
    /// frame at 48 kHz here) for speech at this bitrate.
    pub fn toward_wa() -> OpusEncoderConfig {
        OpusEncoderConfig {
            bitrate: 20_000,
            complexity: 5,
            inband_fec: true,
            loss_percent: 5,
            max_wideband: true,
        }
    }
}

/// A mono Opus encoder (VoIP application, voice signal) taking 16-bit PCM at a fixed rate.
pub struct OpusEncoder {
    raw: NonNull<ffi::OpusEncoder>,
    rate: u32,
}

// SAFETY: as for OpusDecoder: exclusively owned state.
unsafe impl Send for OpusEncoder {}

impl OpusEncoder {
    /// An encoder taking PCM at `rate` Hz (one of [`OPUS_RATES`]).
    pub fn new(rate: u32, config: OpusEncoderConfig) -> Result<OpusEncoder, CodecError> {
        let fs = check_rate(rate)?;
        let mut err: c_int = 0;
        // SAFETY: valid arguments; the returned pointer is checked for null.
        let raw = unsafe { ffi::opus_encoder_create(fs, 1, ffi::OPUS_APPLICATION_VOIP, &mut err) };
        let raw = match NonNull::new(raw) {
            Some(raw) if err == ffi::OPUS_OK => raw,
            _ => return Err(opus_error(err)),
        };
        let enc = OpusEncoder { raw, rate };
        enc.ctl(ffi::OPUS_SET_BITRATE_REQUEST, config.bitrate)?;
        enc.ctl(ffi::OPUS_SET_COMPLEXITY_REQUEST, config.complexity)?;
        enc.ctl(
            ffi::OPUS_SET_INBAND_FEC_REQUEST,
            c_int::from(config.inband_fec),
        )?;
        enc.ctl(ffi::OPUS_SET_PACKET_LOSS_PERC_REQUEST, config.loss_percent)?;
        enc.ctl(ffi::OPUS_SET_SIGNAL_REQUEST, ffi::OPUS_SIGNAL_VOICE)?;
        if config.max_wideband {
            enc.ctl(
                ffi::OPUS_SET_MAX_BANDWIDTH_REQUEST,
                ffi::OPUS_BANDWIDTH_WIDEBAND,
            )?;
        }
        Ok(enc)
    }

    fn ctl(&self, request: c_int, value: c_int) -> Result<(), CodecError> {
        // SAFETY: every request used here takes one opus_int32 argument.
        let r = unsafe { ffi::opus_encoder_ctl(self.raw.as_ptr(), request, value) };
        if r == ffi::OPUS_OK {
            Ok(())
        } else {
            Err(opus_error(r))
        }
    }

    /// The input rate in Hz.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Encodes one frame (`pcm.len()` a valid Opus frame size at this rate: 2.5-60 ms; 20 ms
    /// is `rate / 50`) into `out`; returns the packet's length.
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, CodecError> {
        let max = i32::try_from(out.len().min(MAX_PACKET)).unwrap_or(MAX_PACKET as i32);
        // SAFETY: `self.raw` is a live encoder; `pcm` holds `pcm.len()` samples and `out`
        // at least `max` bytes. libopus rejects frame sizes it cannot code (OPUS_BAD_ARG).
        let n = unsafe {
            ffi::opus_encode(
                self.raw.as_ptr(),
                pcm.as_ptr(),
                pcm.len() as c_int,
                out.as_mut_ptr(),
                max,
            )
        };
        if n < 0 {
            Err(opus_error(n))
        } else {
            Ok(n as usize)
        }
    }
}

impl Drop for OpusEncoder {
    fn drop(&mut self) {
        // SAFETY: created by opus_encoder_create, destroyed once.
        unsafe { ffi::opus_encoder_destroy(self.raw.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::testing::{sine, snr_db};

    fn encode_all(enc: &mut OpusEncoder, pcm: &[i16], frame: usize) -> Vec<Vec<u8>> {
        pcm.chunks_exact(frame)
            .map(|f| {
                let mut out = [0u8; MAX_PACKET];
                let n = enc.encode(f, &mut out).unwrap();
                out[..n].to_vec()
            })
            .collect()
    }

    #[test]
    fn rejects_rates_libopus_does_not_take() {
        assert!(matches!(
            OpusDecoder::new(44_100),
            Err(CodecError::UnsupportedRate(44_100))
        ));
        assert!(OpusEncoder::new(11_025, OpusEncoderConfig::toward_wa()).is_err());
    }

    #[test]
    fn a_tone_survives_encode_and_decode_at_each_rate() {
        for rate in [8000, 16000, 48000] {
            let frame = rate as usize / 50;
            let pcm = sine(440.0, rate, frame * 50, 8000.0);
            let mut enc = OpusEncoder::new(rate, OpusEncoderConfig::toward_wa()).unwrap();
            let packets = encode_all(&mut enc, &pcm, frame);
            let mut dec = OpusDecoder::new(rate).unwrap();
            let mut out = vec![0i16; 0];
            for p in &packets {
                let mut buf = [0i16; 5760];
                let n = dec.decode(p, &mut buf).unwrap();
                assert_eq!(n, frame);
                out.extend_from_slice(&buf[..n]);
            }
            // Compare the second half (past the codec's start-up), aligned by the best lag.
            let best = (0..frame)
                .map(|lag| {
                    snr_db(
                        &pcm[frame * 25..frame * 49],
                        &out[frame * 25 + lag..frame * 49 + lag],
                    )
                })
                .fold(f64::MIN, f64::max);
            assert!(best > 10.0, "rate {rate}: SNR {best:.1} dB");
        }
    }

    #[test]
    fn concealment_continues_the_signal_and_fec_rebuilds_a_lost_frame() {
        let rate = 16000;
        let frame = 320;
        let pcm = sine(300.0, rate, frame * 60, 8000.0);
        let mut enc = OpusEncoder::new(
            rate,
            OpusEncoderConfig {
                loss_percent: 20,
                ..OpusEncoderConfig::toward_wa()
            },
        )
        .unwrap();
        let packets = encode_all(&mut enc, &pcm, frame);
        let energy =
            |s: &[i16]| s.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / s.len() as f64;

        // Decode 40 frames, lose the 41st: PLC must produce sound, not silence.
        let mut dec = OpusDecoder::new(rate).unwrap();
        let mut buf = [0i16; 5760];
        for p in &packets[..40] {
            dec.decode(p, &mut buf).unwrap();
        }
        let n = dec.conceal(frame, &mut buf).unwrap();
        assert_eq!(n, frame);
        let plc_energy = energy(&buf[..n]);
        let src_energy = energy(&pcm[frame * 40..frame * 41]);
        assert!(
            plc_energy > src_energy * 0.1,
            "PLC {plc_energy:.0} vs source {src_energy:.0}"
        );

        // The same loss rebuilt from the next packet's FEC is closer to what was lost than
        // concealment alone.
        let mut dec_fec = OpusDecoder::new(rate).unwrap();
        let mut dec_plc = OpusDecoder::new(rate).unwrap();
        for p in &packets[..40] {
            dec_fec.decode(p, &mut buf).unwrap();
            dec_plc.decode(p, &mut buf).unwrap();
        }
        let mut fec = [0i16; 320];
        assert_eq!(
            dec_fec.decode_fec(&packets[41], frame, &mut fec).unwrap(),
            frame
        );
        let mut plc = [0i16; 320];
        dec_plc.conceal(frame, &mut plc).unwrap();
        // What a clean decoder produced for frame 40.
        let mut clean = OpusDecoder::new(rate).unwrap();
        let mut want = [0i16; 320];
        for p in &packets[..41] {
            clean.decode(p, &mut want).unwrap();
        }
        let fec_snr = snr_db(&want, &fec);
        let plc_snr = snr_db(&want, &plc);
        assert!(
            fec_snr > plc_snr,
            "FEC {fec_snr:.1} dB should beat PLC {plc_snr:.1} dB"
        );
        assert!(fec_snr > 3.0, "FEC {fec_snr:.1} dB");
    }

    #[test]
    fn bad_packets_are_errors_not_panics() {
        let mut dec = OpusDecoder::new(8000).unwrap();
        let mut out = [0i16; 960];
        assert!(dec.decode(&[], &mut out).is_err());
        // A ToC saying code 3 (arbitrary frames) with a frame count byte of 0: invalid.
        assert!(dec.decode(&[0x03, 0x00], &mut out).is_err());
        // An output too small for the packet (20 ms at 8 kHz needs 160 samples).
        let mut enc = OpusEncoder::new(8000, OpusEncoderConfig::toward_wa()).unwrap();
        let mut pkt = [0u8; MAX_PACKET];
        let n = enc.encode(&[0i16; 160], &mut pkt).unwrap();
        assert!(dec.decode(&pkt[..n], &mut out[..80]).is_err());
        // Frame sizes Opus cannot code.
        assert!(enc.encode(&[0i16; 100], &mut pkt).is_err());
    }

    #[test]
    fn the_encoder_keeps_to_the_bitrate_whatsapp_asks_for() {
        let pcm = sine(220.0, 48000, 960 * 100, 10000.0);
        let mut enc = OpusEncoder::new(48000, OpusEncoderConfig::toward_wa()).unwrap();
        let packets = encode_all(&mut enc, &pcm, 960);
        let bytes: usize = packets.iter().map(Vec::len).sum();
        let kbps = bytes as f64 * 8.0 / 2.0 / 1000.0;
        // VBR: the average stays near 20 kbit/s (maxaveragebitrate=20000).
        assert!(kbps < 24.0, "{kbps:.1} kbit/s");
    }
}
