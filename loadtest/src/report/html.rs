//! A self-contained HTML report: tables and inline SVG charts (latency distribution, packets
//! per second and CPU over time, ramp and capacity curves). No scripts, no external assets.

use std::fmt::Write;

use crate::cli::{ModeReport, Report};
use crate::hist::Bucket;
use crate::report::{RunReport, table};

const W: f64 = 640.0;
const H: f64 = 260.0;
const PAD_L: f64 = 60.0;
const PAD_R: f64 = 130.0;
const PAD_T: f64 = 28.0;
const PAD_B: f64 = 40.0;
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

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

/// A line chart; `log_x` plots x on a log10 axis (x must be > 0).
fn chart(title: &str, x_label: &str, y_label: &str, series: &[Series<'_>], log_x: bool) -> String {
    let tx = |x: f64| if log_x { x.max(1e-9).log10() } else { x };
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|&(x, y)| (tx(x), y)))
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        svg,
        r#"<text x="{}" y="16" font-size="13" font-weight="bold">{}</text>"#,
        PAD_L,
        esc(title)
    );
    if all.is_empty() {
        let _ = write!(svg, r#"<text x="{PAD_L}" y="60">no data</text></svg>"#);
        return svg;
    }
    let (mut x0, mut x1) = (f64::MAX, f64::MIN);
    let mut y1 = f64::MIN;
    for &(x, y) in &all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let y0 = 0.0;
    if y1 <= y0 {
        y1 = 1.0;
    }
    y1 *= 1.05;
    let pw = W - PAD_L - PAD_R;
    let ph = H - PAD_T - PAD_B;
    let px = |x: f64| PAD_L + (x - x0) / (x1 - x0) * pw;
    let py = |y: f64| PAD_T + ph - (y - y0) / (y1 - y0) * ph;
    let _ = write!(
        svg,
        "<rect x=\"{PAD_L}\" y=\"{PAD_T}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>"
    );
    for i in 0..=4 {
        let fy = y0 + (y1 - y0) * f64::from(i) / 4.0;
        let fx = x0 + (x1 - x0) * f64::from(i) / 4.0;
        let xv = if log_x { 10f64.powf(fx) } else { fx };
        let _ = write!(
            svg,
            "<line x1=\"{PAD_L}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text><text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            PAD_L + pw,
            PAD_L - 4.0,
            py(fy) + 4.0,
            fmt_num(fy),
            px(fx),
            PAD_T + ph + 14.0,
            fmt_num(xv),
            y = py(fy),
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text><text x="12" y="{}" transform="rotate(-90 12 {})" text-anchor="middle">{}</text>"#,
        PAD_L + pw / 2.0,
        H - 6.0,
        esc(x_label),
        PAD_T + ph / 2.0,
        PAD_T + ph / 2.0,
        esc(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
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
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{}"/>"#,
                pts.join(" ")
            );
        }
        let ly = PAD_T + 12.0 + 16.0 * i as f64;
        let _ = write!(
            svg,
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
            PAD_L + pw + 8.0,
            ly - 9.0,
            PAD_L + pw + 22.0,
            ly,
            esc(s.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 100_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
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

fn run_section(r: &RunReport) -> String {
    let mut s = String::new();
    let _ = write!(s, "<h2>{}</h2><pre>{}</pre>", esc(&r.label), esc(&table(r)));
    let t = &r.timeline;
    let pick = |f: &dyn Fn(&crate::sampler::Sample) -> Option<f64>| -> Vec<(f64, f64)> {
        t.iter().filter_map(|x| f(x).map(|v| (x.t_s, v))).collect()
    };
    s.push_str(&chart(
        "One-way latency distribution (CDF)",
        "latency, ms (log)",
        "% of packets",
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
    ));
    s.push_str(&chart(
        "CPU (percent of one core)",
        "time, s",
        "%",
        &[
            Series {
                name: "relay",
                points: pick(&|x| x.relay_cpu_pct),
            },
            Series {
                name: "generator",
                points: pick(&|x| x.gen_cpu_pct),
            },
        ],
        false,
    ));
    s.push_str(&chart(
        "p99 one-way latency per second",
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
    ));
    s.push_str(&chart(
        "Active calls and relay RSS",
        "time, s",
        "calls / MiB",
        &[
            Series {
                name: "calls",
                points: pick(&|x| Some(x.calls as f64)),
            },
            Series {
                name: "relay RSS MiB",
                points: pick(&|x| x.relay_rss_bytes.map(|b| b as f64 / 1048576.0)),
            },
        ],
        false,
    ));
    s
}

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
        ModeReport::Run { run } | ModeReport::Churn { run } => body.push_str(&run_section(run)),
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
            let by = |f: &dyn Fn(&crate::session::StepReport) -> Option<f64>| {
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
            ));
            body.push_str(&run_section(&ramp.run));
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
                body.push_str(&run_section(best));
            }
            if let Some(failed) = &capacity.first_failed {
                body.push_str("<h2>First probe that missed the SLO</h2>");
                body.push_str(&run_section(failed));
            }
        }
        ModeReport::Overload { overload } => {
            let _ = write!(body, "<h2>Overload</h2><p>{}</p>", esc(&overload.summary()));
            body.push_str(&run_section(&overload.run));
        }
        ModeReport::Compare { compare } => {
            let _ = write!(
                body,
                "<h2>Side by side</h2><pre>{}\n{}</pre>",
                esc(&crate::cli::CompareEntry::header()),
                esc(&compare
                    .iter()
                    .map(crate::cli::CompareEntry::row)
                    .collect::<Vec<_>>()
                    .join("\n"))
            );
            for e in compare {
                let _ = write!(
                    body,
                    "<h2>{}</h2><p>{}</p>",
                    esc(&e.target),
                    esc(&e.description)
                );
                if let Some(best) = e.capacity.as_ref().and_then(|c| c.at_capacity.as_ref()) {
                    body.push_str(&run_section(best));
                }
            }
        }
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>relay load test</title><style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}pre{{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:12px}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}svg{{display:block;margin:1em 0}}</style></head><body>{body}</body></html>"
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
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("a&lt;b") && svg.contains("s&amp;t"));
        assert!(svg.contains("<polyline"));
        let empty = chart("e", "x", "y", &[], false);
        assert!(empty.contains("no data"));
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
