//! A self-contained HTML report: tables and inline SVG charts (latency distribution, packets
//! per second and CPU over time, ramp and capacity curves). No scripts, no external assets.

use std::fmt::Write;

use crate::hist::Bucket;
use crate::report::Slo;
use crate::report::{ModeReport, Report};
use crate::report::{RunReport, table};

/// The drawing's own units; the SVG scales to the page's width (viewBox, width 100 %).
const W: f64 = 1000.0;
const H: f64 = 300.0;
const PAD_L: f64 = 64.0;
const PAD_R: f64 = 16.0;
const PAD_T: f64 = 44.0;
const PAD_B: f64 = 40.0;
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
/// Later series are dashed and thinner, so one that lies exactly on another still shows.
const DASHES: [&str; 4] = ["", "7 4", "2 3", "10 3 2 3"];
const WIDTHS: [f64; 4] = [3.0, 1.6, 1.6, 1.6];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

struct Series<'a> {
    name: &'a str,
    points: Vec<(f64, f64)>,
}

/// A reference line: a horizontal one at a y value (an SLO on latency or loss) or a vertical
/// one at an x value (the SLO on a latency distribution).
#[derive(Clone, Copy)]
enum Mark<'a> {
    Y(f64, &'a str),
    X(f64, &'a str),
}

/// 1, 2 or 5 times a power of ten: the step between round ticks covering `span` in about
/// `n` steps.
fn nice_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// Round ticks from 0 (or `lo`) up to the first tick at or above `hi`.
fn linear_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let step = nice_step(hi - lo, 5.0);
    let first = (lo / step).floor() * step;
    let mut t = Vec::new();
    let mut k = 0.0;
    loop {
        let v = first + k * step;
        t.push(v);
        if v >= hi - step * 1e-9 || t.len() > 50 {
            break;
        }
        k += 1.0;
    }
    t
}

/// Decimal places that show a tick step exactly.
fn decimals(step: f64) -> usize {
    if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    }
}

fn tick_label(v: f64, step: f64) -> String {
    if v.abs() >= 10_000.0 && step >= 1000.0 {
        return format!("{}k", fmt_fixed(v / 1000.0, decimals(step / 1000.0)));
    }
    fmt_fixed(v, decimals(step))
}

fn fmt_fixed(v: f64, d: usize) -> String {
    format!("{v:.d$}")
}

/// Powers of ten covering [lo, hi] (log10 units), with 2 and 5 between when few.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (a, b) = (lo.floor() as i32, hi.ceil() as i32);
    let mut t = Vec::new();
    for e in a..=b {
        let p = 10f64.powi(e);
        t.push(p);
        if b - a <= 2 && e < b {
            t.push(2.0 * p);
            t.push(5.0 * p);
        }
    }
    t
}

fn log_label(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        let d = (-v.log10().floor()) as usize;
        fmt_fixed(v, d)
    }
}

/// A line chart scaled to the page's width; `log_x` plots x on a log10 axis (x > 0).
fn chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series<'_>],
    log_x: bool,
    marks: &[Mark<'_>],
) -> String {
    let tx = |x: f64| if log_x { x.max(1e-9).log10() } else { x };
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|&(x, y)| (tx(x), y)))
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="100%" font-family="sans-serif" font-size="13" role="img"><title>{}</title>"#,
        esc(title)
    );
    let _ = write!(
        svg,
        r#"<text x="{PAD_L}" y="18" font-size="15" font-weight="bold">{}</text>"#,
        esc(title)
    );
    if all.is_empty() {
        let _ = write!(svg, r#"<text x="{PAD_L}" y="80">no data</text></svg>"#);
        return svg;
    }
    let (mut x0, mut x1) = (f64::MAX, f64::MIN);
    let mut y1 = f64::MIN;
    for &(x, y) in &all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    for m in marks {
        match *m {
            Mark::Y(v, _) => y1 = y1.max(v),
            Mark::X(v, _) => {
                x0 = x0.min(tx(v));
                x1 = x1.max(tx(v));
            }
        }
    }
    if y1 <= 0.0 {
        y1 = 1.0;
    }
    // Axes on round numbers: y from 0 to the first round tick at or above the data.
    let yt = linear_ticks(0.0, y1);
    let ystep = yt.get(1).map_or(1.0, |b| b - yt[0]);
    let y1 = *yt.last().unwrap_or(&y1);
    let xticks: Vec<(f64, String)> = if log_x {
        let (lo, hi) = (x0.floor(), x1.ceil().max(x0.floor() + 1.0));
        x0 = lo;
        x1 = hi;
        log_ticks(lo, hi)
            .into_iter()
            .map(|v| (v.log10(), log_label(v)))
            .collect()
    } else {
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        // The x axis ends where the data does (time runs to the end of the run), with round
        // ticks inside it.
        let t = linear_ticks(x0, x1);
        let step = t.get(1).map_or(1.0, |b| b - t[0]);
        x0 = t[0];
        t.into_iter()
            .filter(|v| *v <= x1 + step * 1e-9)
            .map(|v| (v, tick_label(v, step)))
            .collect()
    };
    let pw = W - PAD_L - PAD_R;
    let ph = H - PAD_T - PAD_B;
    let px = |x: f64| PAD_L + (x - x0) / (x1 - x0).max(1e-12) * pw;
    let py = |y: f64| PAD_T + ph - y / y1 * ph;
    for v in &yt {
        let _ = write!(
            svg,
            "<line x1=\"{PAD_L}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e4e4e4\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            PAD_L + pw,
            PAD_L - 6.0,
            py(*v) + 4.0,
            tick_label(*v, ystep),
            y = py(*v),
        );
    }
    for (v, label) in &xticks {
        let _ = write!(
            svg,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{PAD_T}\" y2=\"{}\" stroke=\"#f0f0f0\"/><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            PAD_T + ph,
            PAD_T + ph + 16.0,
            esc(label),
            x = px(*v),
        );
    }
    let _ = write!(
        svg,
        "<rect x=\"{PAD_L}\" y=\"{PAD_T}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>"
    );
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text><text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{}</text>"#,
        PAD_L + pw / 2.0,
        H - 6.0,
        esc(x_label),
        PAD_T + ph / 2.0,
        PAD_T + ph / 2.0,
        esc(y_label)
    );
    for m in marks {
        let (x1l, x2l, y1l, y2l, label, lx, ly, anchor) = match *m {
            Mark::Y(v, label) => (
                PAD_L,
                PAD_L + pw,
                py(v),
                py(v),
                label,
                PAD_L + pw - 4.0,
                py(v) - 5.0,
                "end",
            ),
            Mark::X(v, label) => (
                px(tx(v)),
                px(tx(v)),
                PAD_T,
                PAD_T + ph,
                label,
                px(tx(v)) + 4.0,
                PAD_T + 14.0,
                "start",
            ),
        };
        let _ = write!(
            svg,
            r##"<line x1="{x1l:.1}" x2="{x2l:.1}" y1="{y1l:.1}" y2="{y2l:.1}" stroke="#e67e00" stroke-width="1.5" stroke-dasharray="5 4"/><text x="{lx:.1}" y="{ly:.1}" fill="#b35900" text-anchor="{anchor}">{}</text>"##,
            esc(label)
        );
    }
    let mut legend_x = PAD_L;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let dash = DASHES[i % DASHES.len()];
        let width = WIDTHS[i % WIDTHS.len()];
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| (tx(x), y))
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        if !pts.is_empty() {
            let _ = write!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="{width}" stroke-dasharray="{dash}" stroke-linejoin="round" points="{}"/>"#,
                pts.join(" ")
            );
        }
        // Legend in one row under the title: a short line in the series' own style.
        let _ = write!(
            svg,
            r#"<line x1="{legend_x}" x2="{}" y1="33" y2="33" stroke="{color}" stroke-width="{width}" stroke-dasharray="{dash}"/><text x="{}" y="37">{}</text>"#,
            legend_x + 28.0,
            legend_x + 34.0,
            esc(s.name)
        );
        legend_x += 48.0 + 7.5 * s.name.chars().count() as f64;
    }
    svg.push_str("</svg>");
    svg
}

/// Cumulative share (%) of packets at or below each latency (ms).
fn cdf(buckets: &[Bucket]) -> Vec<(f64, f64)> {
    let total: u64 = buckets.iter().map(|b| b.count).sum();
    if total == 0 {
        return Vec::new();
    }
    let mut seen = 0;
    buckets
        .iter()
        .map(|b| {
            seen += b.count;
            (
                (b.le_us.max(1)) as f64 / 1000.0,
                100.0 * seen as f64 / total as f64,
            )
        })
        .collect()
}

fn ms(v: f64) -> String {
    format!("{v:.2}")
}

fn opt(v: Option<f64>, digits: usize, unit: &str) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.digits$}{unit}"))
}

/// The run's figures as tables that wrap with the page (no horizontal scrolling).
fn summary(r: &RunReport) -> String {
    let mut s = String::new();
    let failed = r.failures_total();
    let _ = write!(
        s,
        "<p class=\"headline\"><b>{}</b> calls asked for, <b>{}</b> ok, <b>{}</b> failed; steady window {:.0} s after {:.0} s warm-up.</p>",
        r.calls, r.calls_ok, failed, r.hold_s, r.warmup_s
    );
    if !r.failures.is_empty() {
        s.push_str("<ul class=\"bad\">");
        for (stage, (n, example)) in &r.failures {
            let what = if stage == "ended_by_relay" {
                "ended by the relay before the run ended".to_string()
            } else {
                format!("failed at {stage}")
            };
            let _ = write!(s, "<li>{}: {n} (e.g. {})</li>", esc(&what), esc(example));
        }
        s.push_str("</ul>");
    }
    if let Some(w) = r.generator_warning() {
        let _ = write!(
            s,
            "<p class=\"warn\"><b>Latency figures unreliable:</b> {}</p>",
            esc(&w)
        );
    }
    s.push_str("<table><tr><th>direction</th><th>sent</th><th>received</th><th>lost</th><th>loss</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>steady p99 ms</th><th>max ms</th><th>jitter p50 ms</th></tr>");
    for (name, d) in [
        ("WhatsApp → internal", &r.up),
        ("internal → WhatsApp", &r.down),
    ] {
        let _ = write!(
            s,
            "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.4} %</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            d.sent,
            d.received,
            d.lost,
            d.loss_ratio * 100.0,
            ms(d.latency.p50_ms),
            ms(d.latency.p90_ms),
            ms(d.latency.p99_ms),
            ms(d.steady_latency.p99_ms),
            ms(d.latency.max_ms),
            ms(d.jitter.p50_ms),
        );
    }
    s.push_str("</table>");
    let st = &r.setup_stages;
    let x = &r.resources;
    let g = &r.generator;
    let rows: Vec<(&str, String)> = vec![
        (
            "setup (CreateCall → audio both ways)",
            format!(
                "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n = {})",
                r.setup.p50_ms, r.setup.p90_ms, r.setup.p99_ms, r.setup.max_ms, r.setup.count
            ),
        ),
        (
            "setup stages, p50 / p99",
            format!(
                "CreateCall {:.1} / {:.1} ms, ICE + DTLS {:.1} / {:.1} ms, OpenGate {:.1} / {:.1} ms",
                st.create_rpc.p50_ms,
                st.create_rpc.p99_ms,
                st.ice_dtls.p50_ms,
                st.ice_dtls.p99_ms,
                st.open_gate_rpc.p50_ms,
                st.open_gate_rpc.p99_ms
            ),
        ),
        (
            "target CPU",
            format!(
                "{} of a core (max {}), {} µs per forwarded packet",
                opt(x.relay_cpu_pct, 1, " %"),
                opt(x.relay_cpu_pct_max, 1, " %"),
                opt(r.cpu_us_per_packet(), 1, "")
            ),
        ),
        (
            "target system calls",
            match r.syscalls_per_packet() {
                Some(v) => format!(
                    "{v:.2} per forwarded packet ({})",
                    esc(x.syscalls_source.as_deref().unwrap_or("?"))
                ),
                None => "not measured".into(),
            },
        ),
        (
            "target memory",
            format!(
                "RSS {} → {} MiB, {} KiB per call",
                opt(
                    x.relay_rss_baseline_bytes.map(|b| b as f64 / 1048576.0),
                    1,
                    ""
                ),
                opt(x.relay_rss_peak_bytes.map(|b| b as f64 / 1048576.0), 1, ""),
                opt(x.relay_rss_per_call_bytes.map(|b| b / 1024.0), 1, "")
            ),
        ),
        (
            "generator",
            format!(
                "CPU {} (whole process {}), tick lag p99 {:.2} ms, max {:.2} ms, {} ticks skipped, {} send errors, {} SRTP errors",
                opt(x.gen_cpu_pct, 0, " %"),
                opt(x.process_cpu_pct, 0, " %"),
                g.tick_lag.p99_ms,
                g.tick_lag.max_ms,
                g.ticks_skipped,
                g.send_errors,
                g.srtp_errors
            ),
        ),
        (
            "silence fill toward WhatsApp",
            format!(
                "{} packets in the steady window, {} in the whole run{}",
                g.steady_fill_received,
                g.fill_received,
                g.relay_fill
                    .map_or_else(String::new, |n| format!("; the relay counted {n}"))
            ),
        ),
    ];
    s.push_str("<table class=\"kv\">");
    for (k, v) in rows {
        let _ = write!(s, "<tr><th>{}</th><td>{v}</td></tr>", esc(k));
    }
    if let Some(c) = &r.relay {
        let _ = write!(
            s,
            "<tr><th>relay counters ({} calls)</th><td>{}</td></tr>",
            c.calls,
            esc(&c.counts())
        );
    }
    s.push_str("</table>");
    let _ = write!(
        s,
        "<details><summary>as printed</summary><pre>{}</pre></details>",
        esc(&table(r))
    );
    s
}

fn run_section(r: &RunReport, slo: Slo) -> String {
    let mut s = String::new();
    let _ = write!(s, "<h2>{}</h2>", esc(&r.label));
    s.push_str(&summary(r));
    let t = &r.timeline;
    let pick = |f: &dyn Fn(&crate::sampler::Sample) -> Option<f64>| -> Vec<(f64, f64)> {
        t.iter().filter_map(|x| f(x).map(|v| (x.t_s, v))).collect()
    };
    let loss_pct = |lost: u64, got: f64| {
        let total = lost as f64 + got;
        (total > 0.0).then(|| 100.0 * lost as f64 / total)
    };
    let slo_ms = format!("SLO p99 {} ms", slo.p99_ms);
    let slo_loss = format!("SLO {} %", slo.loss * 100.0);
    s.push_str(&chart(
        "p99 one-way latency, per second",
        "time, s",
        "ms",
        &[
            Series {
                name: "WhatsApp→internal",
                points: pick(&|x| Some(x.up_p99_ms)),
            },
            Series {
                name: "internal→WhatsApp",
                points: pick(&|x| Some(x.down_p99_ms)),
            },
        ],
        false,
        &[Mark::Y(slo.p99_ms, &slo_ms)],
    ));
    s.push_str(&chart(
        "Loss, per second",
        "time, s",
        "% of packets",
        &[
            Series {
                name: "WhatsApp→internal",
                points: pick(&|x| loss_pct(x.up_lost, x.up_pps)),
            },
            Series {
                name: "internal→WhatsApp",
                points: pick(&|x| loss_pct(x.down_lost, x.down_pps)),
            },
        ],
        false,
        &[Mark::Y(slo.loss * 100.0, &slo_loss)],
    ));
    s.push_str(&chart(
        "One-way latency distribution (CDF, whole run)",
        "latency, ms (log)",
        "% of packets at or below",
        &[
            Series {
                name: "WhatsApp→internal",
                points: cdf(&r.up.latency_buckets),
            },
            Series {
                name: "internal→WhatsApp",
                points: cdf(&r.down.latency_buckets),
            },
        ],
        true,
        &[Mark::X(slo.p99_ms, &slo_ms)],
    ));
    s.push_str(&chart(
        "Setup time: CreateCall to audio both ways (CDF)",
        "setup time, ms (log)",
        "% of calls at or below",
        &[Series {
            name: "calls",
            points: cdf(&r.setup_buckets),
        }],
        true,
        &[],
    ));
    s.push_str(&chart(
        "Calls with audio, and setups completed per second",
        "time, s",
        "calls",
        &[
            Series {
                name: "calls with audio",
                points: pick(&|x| Some(x.calls as f64)),
            },
            Series {
                name: "setups per second",
                points: pick(&|x| Some(x.setups as f64)),
            },
        ],
        false,
        &[],
    ));
    s.push_str(&chart(
        "Packets per second received",
        "time, s",
        "packets/s",
        &[
            Series {
                name: "WhatsApp→internal",
                points: pick(&|x| Some(x.up_pps)),
            },
            Series {
                name: "internal→WhatsApp",
                points: pick(&|x| Some(x.down_pps)),
            },
        ],
        false,
        &[],
    ));
    s.push_str(&chart(
        "CPU, percent of one core",
        "time, s",
        "%",
        &[
            Series {
                name: "target",
                points: pick(&|x| x.relay_cpu_pct),
            },
            Series {
                name: "generator",
                points: pick(&|x| x.gen_cpu_pct),
            },
        ],
        false,
        &[],
    ));
    if t.iter().any(|x| x.relay_rss_bytes.is_some()) {
        s.push_str(&chart(
            "Target resident memory",
            "time, s",
            "MiB",
            &[Series {
                name: "RSS",
                points: pick(&|x| x.relay_rss_bytes.map(|b| b as f64 / 1048576.0)),
            }],
            false,
            &[],
        ));
    }
    s
}

/// The default SLO (the capacity options' defaults), for modes that have none of their own.
const DEFAULT_SLO: Slo = Slo {
    loss: 0.0001,
    p99_ms: 5.0,
};

pub fn render(report: &Report) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>relay load test</h1><p><b>target</b> {}<br><b>machine</b> {} CPUs, {}, kernel {}, load average {} at start, {} at end<br><b>command</b> <code>{}</code></p>",
        esc(&report.target),
        report.machine.cpus,
        esc(&report.machine.cpu_model),
        esc(&report.machine.kernel),
        esc(&report.load_start),
        esc(&report.machine.load_average),
        esc(&report.command)
    );
    match &report.result {
        ModeReport::Run { run } | ModeReport::Churn { run } => {
            body.push_str(&run_section(run, DEFAULT_SLO));
        }
        ModeReport::Ramp { ramp } => {
            body.push_str("<h2>Ramp</h2><table><tr><th>calls</th><th>loss %</th><th>p99 up ms</th><th>p99 down ms</th><th>relay CPU %</th><th>relay RSS MiB</th><th>gen CPU %</th><th>SLO</th></tr>");
            for st in &ramp.steps {
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td>{:.4}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    st.calls,
                    st.loss_ratio * 100.0,
                    st.up_p99_ms,
                    st.down_p99_ms,
                    st.relay_cpu_pct.map_or("-".into(), |v| format!("{v:.0}")),
                    st.relay_rss_bytes
                        .map_or("-".into(), |b| format!("{:.1}", b as f64 / 1048576.0)),
                    st.gen_cpu_pct.map_or("-".into(), |v| format!("{v:.0}")),
                    if st.pass { "ok" } else { "missed" }
                );
            }
            body.push_str("</table>");
            let by = |f: &dyn Fn(&crate::report::StepReport) -> Option<f64>| {
                ramp.steps
                    .iter()
                    .filter_map(|s| f(s).map(|v| (s.calls as f64, v)))
                    .collect::<Vec<_>>()
            };
            body.push_str(&chart(
                "p99 latency by call count",
                "calls",
                "ms",
                &[
                    Series {
                        name: "WhatsApp→internal",
                        points: by(&|s| Some(s.up_p99_ms)),
                    },
                    Series {
                        name: "internal→WhatsApp",
                        points: by(&|s| Some(s.down_p99_ms)),
                    },
                ],
                false,
                &[],
            ));
            body.push_str(&chart(
                "CPU by call count",
                "calls",
                "% of one core",
                &[
                    Series {
                        name: "relay",
                        points: by(&|s| s.relay_cpu_pct),
                    },
                    Series {
                        name: "generator",
                        points: by(&|s| s.gen_cpu_pct),
                    },
                ],
                false,
                &[],
            ));
            body.push_str(&run_section(&ramp.run, DEFAULT_SLO));
        }
        ModeReport::Capacity { capacity } => {
            let _ = write!(
                body,
                "<h2>Capacity: {} calls</h2><p>SLO: loss ≤ {}% per direction, steady p99 ≤ {} ms, no failed setups.</p>",
                capacity.capacity,
                capacity.slo.loss * 100.0,
                capacity.slo.p99_ms
            );
            body.push_str("<table><tr><th>calls</th><th>verdict</th><th>loss %</th><th>steady p99 ms</th><th>failures</th><th>relay CPU %</th><th>gen CPU %</th></tr>");
            for p in &capacity.probes {
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    p.calls,
                    if p.pass { "pass" } else { "fail" },
                    p.loss_ratio * 100.0,
                    p.steady_p99_ms,
                    p.failures,
                    p.relay_cpu_pct.map_or("-".into(), |v| format!("{v:.0}")),
                    p.gen_cpu_pct.map_or("-".into(), |v| format!("{v:.0}"))
                );
            }
            body.push_str("</table>");
            if let Some(best) = &capacity.at_capacity {
                body.push_str(&run_section(best, capacity.slo));
            }
            if let Some(failed) = &capacity.first_failed {
                body.push_str("<h2>First probe that missed the SLO</h2>");
                body.push_str(&run_section(failed, capacity.slo));
            }
        }
        ModeReport::Overload { overload } => {
            let _ = write!(body, "<h2>Overload</h2><p>{}</p>", esc(&overload.summary()));
            body.push_str(&run_section(
                &overload.run,
                Slo {
                    loss: overload.max_loss,
                    ..DEFAULT_SLO
                },
            ));
        }
        ModeReport::Compare { compare } => {
            body.push_str("<h2>Side by side</h2><table><tr>");
            for h in crate::report::CompareEntry::COLUMNS {
                let _ = write!(body, "<th>{}</th>", esc(h));
            }
            body.push_str("</tr>");
            let cols = crate::report::CompareEntry::COLUMNS.len();
            for e in compare {
                match e.cells() {
                    Some(cells) => {
                        body.push_str("<tr>");
                        for c in cells {
                            let _ = write!(body, "<td>{}</td>", esc(&c));
                        }
                        body.push_str("</tr>");
                    }
                    None => {
                        let _ = write!(
                            body,
                            "<tr><td>{}</td><td colspan=\"{}\">{}</td></tr>",
                            esc(&e.target),
                            cols - 1,
                            esc(e.error.as_deref().unwrap_or("-"))
                        );
                    }
                }
            }
            body.push_str("</table><p>!: the generator ran late in that probe; its latency includes the generator's own delays.</p>");
            for e in compare {
                let _ = write!(
                    body,
                    "<h2>{}</h2><p>{}</p>",
                    esc(&e.target),
                    esc(&e.description)
                );
                if let Some(c) = &e.capacity
                    && let Some(best) = &c.at_capacity
                {
                    body.push_str(&run_section(best, c.slo));
                }
            }
        }
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>relay load test</title><meta name=\"viewport\" content=\"width=device-width\"><style>body{{font-family:sans-serif;max-width:1400px;margin:1.5em auto;padding:0 1.5em;color:#222}}pre{{background:#f6f6f6;padding:.8em;white-space:pre-wrap;overflow-wrap:anywhere;font-size:12px}}table{{border-collapse:collapse;margin:1em 0;width:100%}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right;overflow-wrap:anywhere}}th{{background:#f3f3f3}}td:first-child{{text-align:left}}table.kv th{{text-align:left;width:22%;font-weight:600}}table.kv td{{text-align:left}}p.warn{{background:#fff4e0;border-left:4px solid #e67e00;padding:.6em .8em}}ul.bad{{color:#a40000}}code{{overflow-wrap:anywhere}}svg.chart{{display:block;margin:1.2em 0;max-width:100%;height:auto}}</style></head><body>{body}</body></html>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_and_escape_text() {
        let svg = chart(
            "a<b",
            "x",
            "y",
            &[Series {
                name: "s&t",
                points: vec![(1.0, 2.0), (10.0, 3.0)],
            }],
            true,
            &[Mark::X(5.0, "SLO 5 ms")],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("width=\"100%\""), "scales to the page");
        assert!(svg.contains("SLO 5 ms") && svg.contains("stroke-dasharray=\"5 4\""));
        assert!(svg.contains("a&lt;b") && svg.contains("s&amp;t"));
        assert!(svg.contains("<polyline"));
        let empty = chart("e", "x", "y", &[], false, &[]);
        assert!(empty.contains("no data"));
    }

    #[test]
    fn axis_ticks_are_round_numbers() {
        assert_eq!(linear_ticks(0.0, 3.7), vec![0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(
            linear_ticks(0.0, 46_000.0),
            vec![0.0, 10_000.0, 20_000.0, 30_000.0, 40_000.0, 50_000.0]
        );
        let small = linear_ticks(0.0, 0.012);
        assert_eq!(small.len(), 4, "{small:?}");
        assert!((small[3] - 0.015).abs() < 1e-12, "{small:?}");
        assert_eq!(tick_label(20_000.0, 10_000.0), "20k");
        assert_eq!(tick_label(0.25, 0.05), "0.25");
        assert_eq!(
            log_ticks(-1.0, 1.0),
            vec![0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]
        );
        assert_eq!(log_label(0.1), "0.1");
    }

    #[test]
    fn overlapping_series_stay_visible() {
        // Two identical series: the second is drawn dashed and thinner over the first.
        let pts = vec![(0.0, 1.0), (1.0, 2.0)];
        let svg = chart(
            "same",
            "x",
            "y",
            &[
                Series {
                    name: "a",
                    points: pts.clone(),
                },
                Series {
                    name: "b",
                    points: pts,
                },
            ],
            false,
            &[],
        );
        assert!(svg.contains("stroke-width=\"3\" stroke-dasharray=\"\""));
        assert!(svg.contains("stroke-width=\"1.6\" stroke-dasharray=\"7 4\""));
    }

    #[test]
    fn cdf_reaches_100_percent() {
        let c = cdf(&[
            Bucket {
                le_us: 100,
                count: 1,
            },
            Bucket {
                le_us: 200,
                count: 3,
            },
        ]);
        assert_eq!(c, vec![(0.1, 25.0), (0.2, 100.0)]);
    }
}
