//! Signals and measures for the codec unit tests.

/// `samples` of a sine at `freq` Hz sampled at `rate`, peak `amplitude`.
pub fn sine(freq: f64, rate: u32, samples: usize, amplitude: f64) -> Vec<i16> {
    (0..samples)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            (amplitude * (2.0 * std::f64::consts::PI * freq * t).sin()).round() as i16
        })
        .collect()
}

/// Signal-to-difference ratio of `got` against `want`, dB.
pub fn snr_db(want: &[i16], got: &[i16]) -> f64 {
    let (mut s, mut n) = (0f64, 0f64);
    for (w, g) in want.iter().zip(got) {
        let w = f64::from(*w);
        s += w * w;
        n += (w - f64::from(*g)).powi(2);
    }
    10.0 * (s / n.max(1e-9)).log10()
}

/// RMS of a signal.
pub fn rms(x: &[i16]) -> f64 {
    (x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}
