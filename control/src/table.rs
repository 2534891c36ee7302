//! Plain-text tables for `relayctl`: left-aligned columns padded to the widest cell, two spaces
//! apart, no trailing spaces.

#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Self {
        Table {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let columns = std::iter::once(&self.headers)
            .chain(&self.rows)
            .map(Vec::len)
            .max()
            .unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            for (w, cell) in widths.iter_mut().zip(line) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut text = String::new();
            for (i, cell) in line.iter().enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                text.push_str(cell);
                let pad = widths
                    .get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(cell.chars().count());
                text.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `95` → `1m35s`, `7300` → `2h01m`: compact ages for tables.
pub fn short_duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// Parses `500ms`, `30s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 30s, 2m, 1h)"))?;
    let per = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        other => return Err(format!("unknown unit {other:?} in {s:?} (ms, s, m, h)")),
    };
    n.checked_mul(per)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

fn opt(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".into())
}

/// How long ago the call was created ("2m5s"), "-" if unknown.
pub fn call_age(c: &crate::pb::CallInfo) -> String {
    c.created_at
        .and_then(|t| std::time::SystemTime::try_from(t).ok())
        .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
        .map_or("-".into(), |d| short_duration(d.as_secs()))
}

/// `received/sent` packet counts of a leg.
fn packets(l: Option<&crate::pb::LegStats>) -> String {
    let n = |s: Option<&crate::pb::StreamStats>| s.map_or(0, |s| s.packets);
    l.map_or("-".into(), |l| {
        format!("{}/{}", n(l.received.as_ref()), n(l.sent.as_ref()))
    })
}

/// `relayctl list`'s table: one row per call (ID, number, consumer, direction, state, gate, SRTP
/// profile, WhatsApp address, age, packets received/sent per leg).
pub fn calls_table(calls: &[crate::pb::CallInfo]) -> String {
    if calls.is_empty() {
        return "no calls\n".into();
    }
    let mut t = Table::new([
        "CALL ID",
        "NUMBER",
        "CONSUMER",
        "DIR",
        "STATE",
        "GATE",
        "SRTP",
        "WHATSAPP",
        "AGE",
        "WA RX/TX",
        "INT RX/TX",
    ]);
    for c in calls {
        t.row([
            c.call_id.clone(),
            c.business_number.clone(),
            c.consumer.clone(),
            match c.direction() {
                crate::pb::CallDirection::UserInitiated => "in".into(),
                crate::pb::CallDirection::BusinessInitiated => "out".into(),
                crate::pb::CallDirection::Unspecified => "-".into(),
            },
            opt(crate::json::state(c.state())),
            if c.gate_open { "open" } else { "closed" }.into(),
            opt(crate::json::srtp_profile(c.srtp_profile())),
            if c.whatsapp_remote.is_empty() {
                "-".into()
            } else {
                c.whatsapp_remote.clone()
            },
            call_age(c),
            packets(c.whatsapp.as_ref()),
            packets(c.internal.as_ref()),
        ]);
    }
    format!("{}{} call(s)\n", t.render(), calls.len())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn columns_align_on_the_widest_cell() {
        let mut t = Table::new(["ID", "STATE"]);
        t.row(["wacid.long-id", "active"]);
        t.row(["x", ""]);
        assert_eq!(
            t.render(),
            "ID             STATE\nwacid.long-id  active\nx\n"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
        assert_eq!(short_duration(95), "1m35s");
        assert_eq!(short_duration(7300), "2h01m");
    }
}
