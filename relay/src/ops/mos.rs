//! A MOS estimate from loss, jitter and round-trip time: the ITU-T G.107 E-model reduced to
//! the terms a relay can measure.
//!
//! ```text
//! d      = rtt/2 + 2·jitter + 10 ms            one-way delay the listener feels (ms): network,
//!                                              a jitter buffer twice the jitter, framing
//! Id     = 0.024·d + 0.11·(d − 177.3)·H(d − 177.3)      delay impairment (Cole & Rosenbluth 2001)
//! Ie_eff = Ie + (95 − Ie) · Ppl / (Ppl + Bpl)            loss impairment (G.107 §7.4, random loss)
//! R      = 93.2 − Id − Ie_eff
//! MOS    = 1 + 0.035·R + 7·10⁻⁶·R·(R − 60)·(100 − R)    for 0 < R < 100 (1 below, 4.5 above)
//! ```
//!
//! `Ppl` is the loss in percent. Opus has no G.113 entry; we use `Ie = 0` and `Bpl = 25.1`
//! (G.711 with packet loss concealment), which is conservative for Opus with its own
//! concealment. The delay is only what the relay sees on one leg (its RTT to the peer), not
//! mouth-to-ear, so the figure is an estimate for comparing calls, not a listening test.

/// G.107's default basic signal-to-noise ratio with all other defaults.
const R0: f64 = 93.2;
const IE: f64 = 0.0;
const BPL: f64 = 25.1;

/// R factor (0–100) from loss ratio (0–1), jitter and RTT in milliseconds.
pub fn r_factor(loss_ratio: f64, jitter_ms: f64, rtt_ms: Option<f64>) -> f64 {
    let finite = |v: f64| if v.is_finite() { v.max(0.0) } else { 0.0 };
    let d = finite(rtt_ms.unwrap_or(0.0)) / 2.0 + 2.0 * finite(jitter_ms) + 10.0;
    let id = 0.024 * d + if d > 177.3 { 0.11 * (d - 177.3) } else { 0.0 };
    let ppl = finite(loss_ratio).min(1.0) * 100.0;
    let ie_eff = IE + (95.0 - IE) * ppl / (ppl + BPL);
    (R0 - id - ie_eff).clamp(0.0, 100.0)
}

/// Mean opinion score (1–4.5) from an R factor.
pub fn mos_from_r(r: f64) -> f64 {
    if r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        1.0 + 0.035 * r + 7.0e-6 * r * (r - 60.0) * (100.0 - r)
    }
}

/// MOS estimate, rounded to two decimals.
pub fn mos(loss_ratio: f64, jitter_ms: f64, rtt_ms: Option<f64>) -> f64 {
    (mos_from_r(r_factor(loss_ratio, jitter_ms, rtt_ms)) * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_call_scores_what_g107_defaults_give() {
        // d = 10 ms → Id = 0.24, R = 92.96 → MOS ≈ 4.40 (G.107's ceiling for narrowband is 4.41).
        assert_eq!(mos(0.0, 0.0, None), 4.4);
        assert!((mos_from_r(93.2) - 4.41).abs() < 0.005);
    }

    #[test]
    fn known_points_of_the_mos_curve() {
        assert_eq!(mos_from_r(0.0), 1.0);
        assert_eq!(mos_from_r(100.0), 4.5);
        // G.107 Annex B: R = 50 → MOS ≈ 2.58, R = 70 → ≈ 3.60, R = 80 → ≈ 4.03.
        assert!((mos_from_r(50.0) - 2.575).abs() < 0.01);
        assert!((mos_from_r(70.0) - 3.595).abs() < 0.01);
        assert!((mos_from_r(80.0) - 4.024).abs() < 0.01);
    }

    #[test]
    fn loss_jitter_and_delay_each_lower_the_score() {
        let clean = mos(0.0, 0.0, Some(20.0));
        let lossy = mos(0.05, 0.0, Some(20.0));
        let jittery = mos(0.0, 60.0, Some(20.0));
        let far = mos(0.0, 0.0, Some(600.0));
        assert!(lossy < clean && jittery < clean && far < clean);
        // 5 % random loss: Ie_eff = 95·5/30.1 ≈ 15.8 → R ≈ 77 → MOS ≈ 3.9.
        assert!((lossy - 3.9).abs() < 0.05, "{lossy}");
        // Everything lost: the floor.
        assert_eq!(mos(1.0, 500.0, Some(2000.0)), 1.0);
    }

    #[test]
    fn nonsense_inputs_do_not_escape_the_scale() {
        for v in [f64::NAN, f64::INFINITY, -1.0] {
            let m = mos(v, v, Some(v));
            assert!((1.0..=4.5).contains(&m), "{v} → {m}");
        }
    }
}
