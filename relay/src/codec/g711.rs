//! G.711 (ITU-T G.711, 1988): μ-law (PCMU, North America/Japan) and A-law (PCMA, elsewhere),
//! 8-bit logarithmic companding of 16-bit linear PCM at 8 kHz.
//!
//! The encoders are the classic segment search written from the recommendation's tables (the
//! same arithmetic as the reference `g711.c`), the decoders are 256-entry tables computed at
//! compile time. Both are branch-light and allocate nothing.

/// Which G.711 law a leg speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum G711 {
    /// μ-law, RTP static payload type 0, SDP name `PCMU`.
    Ulaw,
    /// A-law, RTP static payload type 8, SDP name `PCMA`.
    Alaw,
}

impl G711 {
    /// The static RTP payload type (RFC 3551 table 4).
    pub fn static_pt(self) -> u8 {
        match self {
            G711::Ulaw => 0,
            G711::Alaw => 8,
        }
    }

    /// The SDP encoding name.
    pub fn encoding_name(self) -> &'static str {
        match self {
            G711::Ulaw => "PCMU",
            G711::Alaw => "PCMA",
        }
    }

    /// The law for an SDP encoding name (case-insensitive), if it is one.
    pub fn from_encoding_name(name: &str) -> Option<G711> {
        if name.eq_ignore_ascii_case("PCMU") {
            Some(G711::Ulaw)
        } else if name.eq_ignore_ascii_case("PCMA") {
            Some(G711::Alaw)
        } else {
            None
        }
    }

    /// One linear sample to one code word.
    #[inline]
    pub fn encode_sample(self, s: i16) -> u8 {
        match self {
            G711::Ulaw => ulaw_encode(s),
            G711::Alaw => alaw_encode(s),
        }
    }

    /// One code word to one linear sample.
    #[inline]
    pub fn decode_sample(self, c: u8) -> i16 {
        match self {
            G711::Ulaw => ulaw_decode(c),
            G711::Alaw => alaw_decode(c),
        }
    }
}

/// Encodes `pcm` into `out` (one byte a sample); returns the bytes written
/// (`min(pcm.len(), out.len())`).
pub fn encode(law: G711, pcm: &[i16], out: &mut [u8]) -> usize {
    let n = pcm.len().min(out.len());
    match law {
        G711::Ulaw => {
            for (o, s) in out[..n].iter_mut().zip(pcm) {
                *o = ulaw_encode(*s);
            }
        }
        G711::Alaw => {
            for (o, s) in out[..n].iter_mut().zip(pcm) {
                *o = alaw_encode(*s);
            }
        }
    }
    n
}

/// Decodes `bytes` into `out`; returns the samples written (`min(bytes.len(), out.len())`).
pub fn decode(law: G711, bytes: &[u8], out: &mut [i16]) -> usize {
    let n = bytes.len().min(out.len());
    let table = match law {
        G711::Ulaw => &ULAW_TABLE,
        G711::Alaw => &ALAW_TABLE,
    };
    for (o, c) in out[..n].iter_mut().zip(bytes) {
        *o = table[usize::from(*c)];
    }
    n
}

/// μ-law bias: 33 in the 14-bit domain, 0x84 in the 16-bit one (G.711 table 2a).
const ULAW_BIAS: i32 = 0x84;
/// The largest magnitude μ-law represents (8159 in 14 bits, scaled to 16 bits, less the bias).
const ULAW_CLIP: i32 = 32635;

/// One 16-bit linear sample to μ-law.
#[inline]
pub fn ulaw_encode(sample: i16) -> u8 {
    let s = i32::from(sample);
    // Negative magnitudes are taken as `-s - 1` (one's complement), as the 14-bit reference
    // encoder's arithmetic shift does; it also keeps i16::MIN in range.
    let (sign, mag) = if s < 0 { (0x80u8, -s - 1) } else { (0, s) };
    let mag = mag.min(ULAW_CLIP) + ULAW_BIAS;
    // The segment is the position of the highest set bit above bit 7 (0..=7).
    let exponent = (31 - (mag as u32 | 0xff).leading_zeros()) - 7;
    let mantissa = ((mag >> (exponent + 3)) & 0x0f) as u8;
    // Code words are transmitted inverted (G.711 §4: all bits complemented).
    !(sign | ((exponent as u8) << 4) | mantissa)
}

/// One μ-law code word to 16-bit linear PCM.
#[inline]
pub fn ulaw_decode(code: u8) -> i16 {
    ULAW_TABLE[usize::from(code)]
}

/// One 16-bit linear sample to A-law.
#[inline]
pub fn alaw_encode(sample: i16) -> u8 {
    // A-law works on 13 bits: drop the 3 low bits of the 16-bit sample.
    let s = i32::from(sample) >> 3;
    let (sign, mag) = if s >= 0 { (0x80u8, s) } else { (0, -s - 1) };
    let mag = mag.min(0x0fff);
    let code = if mag < 32 {
        // Segment 0: linear, 1 step per code.
        (mag >> 1) as u8
    } else {
        let exponent = (31 - (mag as u32).leading_zeros()) - 4;
        let mantissa = ((mag >> exponent) & 0x0f) as u8;
        ((exponent as u8) << 4) | mantissa
    };
    // Even bits are inverted on the line (G.711 §3: "alternate digit inversion").
    (sign | code) ^ 0x55
}

/// One A-law code word to 16-bit linear PCM.
#[inline]
pub fn alaw_decode(code: u8) -> i16 {
    ALAW_TABLE[usize::from(code)]
}

const fn ulaw_decode_calc(code: u8) -> i16 {
    let c = !code;
    let sign = c & 0x80;
    let exponent = ((c >> 4) & 0x07) as i32;
    let mantissa = (c & 0x0f) as i32;
    let mag = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS;
    if sign != 0 { -mag as i16 } else { mag as i16 }
}

const fn alaw_decode_calc(code: u8) -> i16 {
    let c = code ^ 0x55;
    let exponent = ((c >> 4) & 0x07) as i32;
    let mantissa = (c & 0x0f) as i32;
    // Decision value midpoints, in 16-bit units (the 13-bit value shifted left by 3).
    let mag = if exponent == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (exponent - 1)
    };
    if c & 0x80 != 0 {
        mag as i16
    } else {
        -mag as i16
    }
}

static ULAW_TABLE: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = ulaw_decode_calc(i as u8);
        i += 1;
    }
    t
};

static ALAW_TABLE: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = alaw_decode_calc(i as u8);
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from G.711 tables 1a/2a (A-law) and 1b/2b (μ-law), the "decoder output" column
    /// scaled to 16 bits, including each segment's end points.
    #[test]
    fn ulaw_decoder_matches_the_g711_table() {
        // Character signal after inversion -> decoder output value (14-bit, x4 for 16-bit).
        // Positive: code 0x80 (segment 7, step 0) is the largest value 8031 -> 32124.
        let cases: &[(u8, i16)] = &[
            (0xff, 0),      // positive zero
            (0x7f, 0),      // negative zero
            (0xfe, 8),      // 14-bit 2
            (0xf0, 120),    // end of segment 0: 14-bit 30
            (0xef, 132),    // start of segment 1: 14-bit 33
            (0xe0, 372),    // 14-bit 93
            (0xdf, 396),    // segment 2 start: 14-bit 99
            (0x80, 32124),  // 14-bit 8031, the largest
            (0x00, -32124), // the most negative
            (0x70, -120),
        ];
        for &(code, want) in cases {
            assert_eq!(ulaw_decode(code), want, "code {code:#04x}");
        }
    }

    #[test]
    fn alaw_decoder_matches_the_g711_table() {
        // Character signal (even bits inverted on the line) -> 13-bit value x8.
        let cases: &[(u8, i16)] = &[
            (0xd5, 8),      // positive, segment 0 step 0: 13-bit 1
            (0x55, -8),     // negative counterpart
            (0xd4, 24),     // 13-bit 3
            (0xc5, 264),    // segment 1 start: 13-bit 33
            (0xaa, 32256),  // segment 7 step 15: 13-bit 4032, the largest
            (0x2a, -32256), // the most negative
            (0xf5, 528),    // segment 2 start: 13-bit 66
            (0xe5, 1056),   // segment 3 start: 13-bit 132
        ];
        for &(code, want) in cases {
            assert_eq!(alaw_decode(code), want, "code {code:#04x}");
        }
    }

    #[test]
    fn every_code_word_round_trips() {
        for c in 0..=255u8 {
            let back = ulaw_encode(ulaw_decode(c));
            // μ-law has two zeros; the encoder always picks positive zero.
            let want = if c == 0x7f { 0xff } else { c };
            assert_eq!(back, want, "μ-law {c:#04x}");
            assert_eq!(alaw_encode(alaw_decode(c)), c, "A-law {c:#04x}");
        }
    }

    #[test]
    fn every_input_lands_within_half_a_step_of_its_level() {
        // G.711 reconstructs at the middle of each decision interval, so the error is at most
        // half that interval's step (plus the bits the law drops below its resolution). A
        // wrong segment or mantissa breaks this bound by a whole step.
        for s in i16::MIN..=i16::MAX {
            let x = i32::from(s);
            let u = ulaw_encode(s);
            let e = i32::from((!u >> 4) & 0x07);
            let half_step = 4 << e; // μ-law steps are 8 << segment (16-bit units)
            let got = i32::from(ulaw_decode(u));
            let clipped = x.clamp(-32124 - half_step, 32124 + half_step);
            assert!((got - clipped).abs() <= half_step + 4, "μ-law {s} -> {got}");

            let a = alaw_encode(s);
            let e = i32::from(((a ^ 0x55) >> 4) & 0x07);
            let half_step = if e == 0 { 8 } else { 8 << (e - 1) };
            let got = i32::from(alaw_decode(a));
            let clipped = x.clamp(-32256 - half_step, 32256 + half_step);
            assert!((got - clipped).abs() <= half_step + 8, "A-law {s} -> {got}");
        }
    }

    #[test]
    fn slices_encode_and_decode_without_loss_of_length() {
        let pcm: Vec<i16> = (0..160)
            .map(|i| ((i * 409) % 65536 - 32768) as i16)
            .collect();
        for law in [G711::Ulaw, G711::Alaw] {
            let mut bytes = [0u8; 160];
            assert_eq!(encode(law, &pcm, &mut bytes), 160);
            let mut back = [0i16; 160];
            assert_eq!(decode(law, &bytes, &mut back), 160);
            for (a, b) in pcm.iter().zip(&back) {
                // The relative error of log companding: ≤ 1/16 of the magnitude, plus the
                // smallest step near zero.
                let err = (i32::from(*a) - i32::from(*b)).abs();
                assert!(
                    err <= i32::from(a.unsigned_abs() >> 4) + 132,
                    "{law:?} {a} -> {b}"
                );
            }
        }
    }
}
