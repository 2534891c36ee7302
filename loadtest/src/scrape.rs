//! Reading the relay's Prometheus `/metrics` (plain HTTP/1.0 over loopback; no client crate
//! needed for one GET): the counters `compare` and `overload` take from the relay itself, such
//! as its I/O system calls and silence-fill packets, whatever their labels.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The body of `GET /metrics` at `addr`.
pub fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: relay\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header end"))?;
    let status = head.split_whitespace().nth(1);
    if !head.starts_with("HTTP/1.") || status != Some("200") {
        return Err(std::io::Error::other(format!(
            "GET /metrics: {}",
            head.lines().next().unwrap_or("")
        )));
    }
    Ok(body.to_string())
}

/// The sum of every sample whose metric name satisfies `pick` (all label sets), or `None`
/// when no sample does.
pub fn sum(text: &str, pick: impl Fn(&str) -> bool) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        if !pick(name) {
            continue;
        }
        // The value follows the labels (which may contain spaces inside quotes).
        let rest = match line[name_end..].strip_prefix('{') {
            Some(r) => r.rsplit_once('}').map_or("", |(_, v)| v),
            None => &line[name_end..],
        };
        if let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            total = Some(total.unwrap_or(0.0) + v);
        }
    }
    total
}

/// The relay's I/O system calls: any `relay_*syscalls*_total` counter (the engine exports
/// them per shard and kind), summed.
pub fn io_syscalls(text: &str) -> Option<f64> {
    sum(text, |n| {
        n.starts_with("relay_") && n.contains("syscalls") && n.ends_with("_total")
    })
}

/// Silence-fill packets the relay sent toward WhatsApp: any `relay_*fill*_total` counter.
pub fn fill_packets(text: &str) -> Option<f64> {
    sum(text, |n| {
        n.starts_with("relay_") && n.contains("fill") && n.ends_with("_total")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP relay_io_syscalls_total I/O system calls.
# TYPE relay_io_syscalls_total counter
relay_io_syscalls_total{shard=\"0\",kind=\"recv\"} 120
relay_io_syscalls_total{shard=\"0\",kind=\"send\"} 80
relay_io_syscalls_total{shard=\"1\",kind=\"wait label with } and space\"} 5
relay_packets_total{leg=\"whatsapp\",direction=\"rx\"} 1000
relay_fill_packets_total 7
";

    #[test]
    fn sums_a_family_over_its_label_sets() {
        assert_eq!(io_syscalls(TEXT), Some(205.0));
        assert_eq!(fill_packets(TEXT), Some(7.0));
        assert_eq!(io_syscalls("relay_packets_total 3\n"), None);
        assert_eq!(sum(TEXT, |n| n == "relay_packets_total"), Some(1000.0));
    }

    #[test]
    fn reads_metrics_over_http() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = [0u8; 256];
            let _ = c.read(&mut req).unwrap();
            c.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
                .unwrap();
            c.write_all(TEXT.as_bytes()).unwrap();
        });
        let body = scrape(addr).unwrap();
        server.join().unwrap();
        assert_eq!(io_syscalls(&body), Some(205.0));
    }
}
