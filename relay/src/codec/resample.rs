//! Sample-rate conversion by integer ratios (48 kHz ↔ 8/16/24 kHz), a polyphase FIR.
//!
//! Why our own and not `rubato`: the ratios the relay needs are integers, for which a
//! polyphase windowed-sinc filter is the textbook converter; it fits in this file, keeps its
//! state in two buffers sized at construction (no allocation per frame, no locking), and was
//! faster in the measurement in BENCHMARKS.md ("Codec layer: choosing the parts"). The filter:
//! Kaiser-windowed sinc, 70 dB stop band, pass band to 85% of the lower rate's Nyquist
//! (3.4 kHz at 8 kHz: the telephone band), stop band from that Nyquist on, so nothing aliases.
//!
//! In the transcoding path libopus decodes and encodes at the leg's own rate, so this is for
//! PCM that does not pass through Opus at the rate it needs (a bot's 24 kHz audio, tests).

use super::CodecError;

/// Stop-band attenuation, dB.
const STOP_DB: f64 = 70.0;
/// Pass band edge as a fraction of the lower rate's Nyquist.
const PASS: f64 = 0.85;

/// A converter between two rates whose ratio is an integer (either way).
pub struct Resampler {
    from: u32,
    to: u32,
    up: usize,
    down: usize,
    /// Taps per polyphase branch (`up` branches; one when decimating).
    branch_len: usize,
    /// Branch-major, each branch reversed so the inner loop is a plain dot product.
    coeffs: Box<[f32]>,
    /// History (`branch_len - 1` samples) then room for one block of input.
    buf: Box<[f32]>,
    /// Decimating: index (in `buf`, past the history) of the newest input sample of the next
    /// output, carried across calls whose length is not a multiple of `down`.
    next: usize,
    max_block: usize,
}

impl Resampler {
    /// A converter from `from_hz` to `to_hz` taking up to `max_block` input samples a call.
    pub fn new(from_hz: u32, to_hz: u32, max_block: usize) -> Result<Resampler, CodecError> {
        let bad = CodecError::UnsupportedRatio {
            from: from_hz,
            to: to_hz,
        };
        if from_hz == 0 || to_hz == 0 || from_hz > 192_000 || to_hz > 192_000 {
            return Err(bad);
        }
        let (up, down) = if to_hz.is_multiple_of(from_hz) {
            ((to_hz / from_hz) as usize, 1)
        } else if from_hz.is_multiple_of(to_hz) {
            (1, (from_hz / to_hz) as usize)
        } else {
            return Err(bad);
        };
        let high = f64::from(from_hz.max(to_hz));
        let nyquist_low = f64::from(from_hz.min(to_hz)) / 2.0;
        let pass = PASS * nyquist_low;
        let cutoff = (pass + nyquist_low) / 2.0 / high; // cycles per high-rate sample
        let width = 2.0 * std::f64::consts::PI * (nyquist_low - pass) / high;
        // Kaiser's estimates for the length and shape of a window meeting STOP_DB.
        let beta = 0.1102 * (STOP_DB - 8.7);
        let mut n = ((STOP_DB - 8.0) / (2.285 * width)).ceil() as usize + 1;
        n = n.div_ceil(up) * up; // whole branches
        let branch_len = n / up;
        let center = (n - 1) as f64 / 2.0;
        let i0_beta = bessel_i0(beta);
        let h: Vec<f64> = (0..n)
            .map(|k| {
                let x = k as f64 - center;
                let sinc = if x == 0.0 {
                    2.0 * cutoff
                } else {
                    (2.0 * std::f64::consts::PI * cutoff * x).sin() / (std::f64::consts::PI * x)
                };
                let r = x / center.max(1.0);
                let w = bessel_i0(beta * (1.0 - r * r).max(0.0).sqrt()) / i0_beta;
                // Interpolating spreads each input over `up` outputs: restore the gain.
                sinc * w * up as f64
            })
            .collect();
        let mut coeffs = vec![0f32; n].into_boxed_slice();
        for p in 0..up {
            for j in 0..branch_len {
                // Branch p, reversed: coefficient for buf[i - j] goes at position len-1-j.
                coeffs[p * branch_len + (branch_len - 1 - j)] = h[j * up + p] as f32;
            }
        }
        Ok(Resampler {
            from: from_hz,
            to: to_hz,
            up,
            down,
            branch_len,
            coeffs,
            buf: vec![0f32; branch_len - 1 + max_block].into_boxed_slice(),
            next: down - 1,
            max_block,
        })
    }

    pub fn from_hz(&self) -> u32 {
        self.from
    }

    pub fn to_hz(&self) -> u32 {
        self.to
    }

    /// The filter's group delay in output samples.
    pub fn delay(&self) -> usize {
        (self.branch_len * self.up - 1) / 2 / self.down
    }

    /// Output samples `input_len` input samples produce (for whole multiples of the ratio).
    pub fn output_len(&self, input_len: usize) -> usize {
        input_len * self.up / self.down
    }

    /// Converts `input` (at most `max_block` samples) into `out`; returns the samples written.
    pub fn process(&mut self, input: &[i16], out: &mut [i16]) -> Result<usize, CodecError> {
        if input.len() > self.max_block {
            return Err(CodecError::OutputTooSmall {
                need: input.len(),
                have: self.max_block,
            });
        }
        let hist = self.branch_len - 1;
        let need = if self.up > 1 {
            input.len() * self.up
        } else if input.len() > self.next {
            (input.len() - 1 - self.next) / self.down + 1
        } else {
            0
        };
        if out.len() < need {
            return Err(CodecError::OutputTooSmall {
                need,
                have: out.len(),
            });
        }
        for (b, s) in self.buf[hist..].iter_mut().zip(input) {
            *b = f32::from(*s);
        }
        let total = hist + input.len();
        let mut written = 0;
        if self.up > 1 {
            for i in hist..total {
                let window = &self.buf[i + 1 - self.branch_len..=i];
                for p in 0..self.up {
                    let c = &self.coeffs[p * self.branch_len..(p + 1) * self.branch_len];
                    out[written] = to_i16(dot(c, window));
                    written += 1;
                }
            }
        } else {
            let mut i = hist + self.next;
            while i < total {
                let window = &self.buf[i + 1 - self.branch_len..=i];
                out[written] = to_i16(dot(&self.coeffs, window));
                written += 1;
                i += self.down;
            }
            self.next = i - total;
        }
        self.buf.copy_within(input.len()..total, 0);
        Ok(written)
    }

    /// Forget the history (a new stream).
    pub fn reset(&mut self) {
        self.buf.fill(0.0);
        self.next = self.down - 1;
    }
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums let the compiler keep them in one vector register.
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for k in 0..chunks {
        for l in 0..8 {
            acc[l] += a[k * 8 + l] * b[k * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for k in chunks * 8..a.len() {
        s += a[k] * b[k];
    }
    s
}

#[inline]
fn to_i16(x: f32) -> i16 {
    x.round().clamp(-32768.0, 32767.0) as i16
}

fn bessel_i0(x: f64) -> f64 {
    // Power series; converges fast for the β values used (≈ 6.8).
    let mut sum = 1.0;
    let mut term = 1.0;
    let q = x * x / 4.0;
    for k in 1..50 {
        term *= q / (k * k) as f64;
        sum += term;
        if term < sum * 1e-12 {
            break;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::testing::{rms, sine};

    /// Gain in dB of a sine at `freq` through `from -> to`, measured on the output's steady
    /// part.
    fn gain_db(from: u32, to: u32, freq: f64) -> f64 {
        let mut r = Resampler::new(from, to, 960).unwrap();
        let input = sine(freq, from, from as usize / 2, 10_000.0); // 0.5 s
        let mut out = vec![0i16; r.output_len(input.len()) + 8];
        let mut written = 0;
        for block in input.chunks(from as usize / 50) {
            written += r.process(block, &mut out[written..]).unwrap();
        }
        let steady = &out[written / 2..written];
        20.0 * (rms(steady) / (10_000.0 / 2f64.sqrt())).log10()
    }

    #[test]
    fn the_telephone_band_passes_flat() {
        for (from, to) in [
            (48_000, 8_000),
            (8_000, 48_000),
            (48_000, 16_000),
            (16_000, 48_000),
        ] {
            for f in [300.0, 1000.0, 2000.0, 3000.0, 3400.0] {
                let g = gain_db(from, to, f);
                assert!(g.abs() < 0.2, "{from}->{to} at {f} Hz: {g:.2} dB");
            }
        }
        // 16 kHz keeps speech's wideband too.
        let g = gain_db(48_000, 16_000, 6_500.0);
        assert!(g.abs() < 0.2, "48k->16k at 6.5 kHz: {g:.2} dB");
    }

    #[test]
    fn what_would_alias_is_stopped() {
        // 48 -> 8 kHz: 5 kHz would fold to 3 kHz, 9 kHz to 1 kHz.
        for f in [4_500.0, 5_000.0, 9_000.0, 15_000.0] {
            let g = gain_db(48_000, 8_000, f);
            assert!(g < -60.0, "48k->8k at {f} Hz: {g:.1} dB");
        }
        // 8 -> 48 kHz: the images of a 1 kHz tone (7, 9, 15 kHz) are gone: the output is the
        // tone alone, so its level equals the 1 kHz gain (checked above) and its high band is
        // silent. Measure the image directly: a 3 kHz tone's first image is at 5 kHz.
        let mut r = Resampler::new(8_000, 48_000, 160).unwrap();
        let input = sine(3_000.0, 8_000, 4_000, 10_000.0);
        let mut out = vec![0i16; 24_000];
        let mut w = 0;
        for b in input.chunks(160) {
            w += r.process(b, &mut out[w..]).unwrap();
        }
        // Remove the 3 kHz tone with the 48 -> 8 -> compare trick: what is above 4 kHz is the
        // image. Band-limit by decimating the output again and comparing energy.
        let mut back = Resampler::new(48_000, 8_000, 960).unwrap();
        let mut low = vec![0i16; 4_100];
        let mut lw = 0;
        for b in out[..w].chunks(960) {
            lw += back.process(b, &mut low[lw..]).unwrap();
        }
        let e_all = rms(&out[w / 2..w]);
        let e_low = rms(&low[lw / 2..lw]);
        let image_db =
            10.0 * ((e_all * e_all - e_low * e_low).abs().max(1e-9) / (e_all * e_all)).log10();
        assert!(image_db < -40.0, "image energy {image_db:.1} dB");
    }

    #[test]
    fn odd_block_sizes_keep_the_stream_continuous() {
        // The same signal in 20 ms blocks and in ragged blocks gives the same output.
        let input = sine(700.0, 48_000, 4_800, 8_000.0);
        let run = |sizes: &[usize]| {
            let mut r = Resampler::new(48_000, 8_000, 960).unwrap();
            let mut out = vec![0i16; 900];
            let (mut w, mut pos, mut k) = (0, 0, 0);
            while pos < input.len() {
                let n = sizes[k % sizes.len()].min(input.len() - pos);
                w += r.process(&input[pos..pos + n], &mut out[w..]).unwrap();
                pos += n;
                k += 1;
            }
            out.truncate(w);
            out
        };
        let even = run(&[960]);
        let ragged = run(&[7, 500, 331, 960, 1]);
        assert_eq!(even.len(), 800);
        assert_eq!(even, ragged);
    }

    #[test]
    fn rejects_what_it_cannot_do() {
        assert!(Resampler::new(44_100, 48_000, 960).is_err());
        assert!(Resampler::new(0, 8_000, 960).is_err());
        let mut r = Resampler::new(48_000, 8_000, 960).unwrap();
        assert!(r.process(&[0; 961], &mut [0; 200]).is_err());
        assert!(r.process(&[0; 960], &mut [0; 10]).is_err());
    }
}
