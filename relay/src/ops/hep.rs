//! HEP3 export to a Homer collector (`--homer ADDR`, as rtpengine's `--homer`): each call's
//! RTCP reports (as Homer's RTCP JSON, protocol type 5) and, when it ends, a quality report
//! (MOS report JSON, type 0x22), both tagged with the call ID as HEP's correlation ID, so Homer
//! lines media quality up with the signaling tier's traces.
//!
//! Off the packet path and never blocking: the shard's once-a-second sample
//! ([`crate::ops::quality`]) and the end-of-call event hand fixed-size [`HepRecord`]s (no heap)
//! to a bounded queue with `try_send`; when it is full the record is dropped and counted. One
//! exporter thread drains the queue, encodes and sends UDP datagrams. Nothing else does I/O for
//! it.
//!
//! What a report carries: the relay terminates RTCP (it rewrites SSRCs), so rather than the raw
//! packets it exports, per leg, what the peer's latest report said about the relay's stream
//! (fraction lost, cumulative lost, jitter), the round-trip time from it, and the relay's own
//! receive statistics. The HEP source is the peer's address; the destination is the relay,
//! written as the unspecified address of that family (the call does not keep its bind address).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use crate::api::LegKind;

/// Records waiting for the exporter; beyond this they are dropped (counted).
pub const QUEUE: usize = 4096;
/// Longest call ID carried; longer IDs are cut (Meta's are about 60 bytes).
pub const MAX_CALL_ID: usize = 128;

/// HEP protocol types (HEP3 specification, "capture protocol types").
pub const PROTO_RTCP_JSON: u8 = 0x05;
pub const PROTO_MOS_REPORT_JSON: u8 = 0x22;

/// Where the exporter sends, and as which capture agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HepConfig {
    pub collector: SocketAddr,
    pub capture_id: u32,
}

/// What a record reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A new RTCP report arrived on a leg since the last sample.
    Rtcp,
    /// The call ended: its final per-leg quality.
    CallEnd,
}

/// One leg's figures in a record.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LegReport {
    /// The peer (HEP source).
    pub remote: Option<SocketAddr>,
    pub rx_packets: u64,
    pub rx_lost: u64,
    pub rx_jitter_ms: f64,
    pub tx_packets: u64,
    /// From the peer's last report about our stream.
    pub tx_fraction_lost: Option<f64>,
    pub tx_lost: u64,
    pub tx_jitter_ms: Option<f64>,
    pub rtt_ms: Option<f64>,
}

/// A fixed-size record: no heap, so the shard can hand it over without allocating.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HepRecord {
    pub kind: RecordKind,
    pub leg: LegKind,
    call_id: [u8; MAX_CALL_ID],
    call_id_len: u8,
    /// Unix time in microseconds.
    pub at_us: u64,
    pub report: LegReport,
    /// MOS estimate (end reports).
    pub mos: Option<f64>,
    /// The call's duration in seconds (end reports).
    pub duration_s: Option<f64>,
    /// Why it ended (end reports).
    pub cause: Option<&'static str>,
}

impl HepRecord {
    pub fn new(kind: RecordKind, leg: LegKind, call_id: &str, at: SystemTime) -> Self {
        let mut id = [0u8; MAX_CALL_ID];
        // Cut on a character boundary.
        let mut n = call_id.len().min(MAX_CALL_ID);
        while !call_id.is_char_boundary(n) {
            n -= 1;
        }
        id[..n].copy_from_slice(&call_id.as_bytes()[..n]);
        HepRecord {
            kind,
            leg,
            call_id: id,
            call_id_len: n as u8,
            at_us: at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64),
            report: LegReport::default(),
            mos: None,
            duration_s: None,
            cause: None,
        }
    }

    pub fn call_id(&self) -> &str {
        std::str::from_utf8(&self.call_id[..self.call_id_len as usize]).unwrap_or("")
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct HepStats {
    pub sent: AtomicU64,
    /// Queue full: the exporter fell behind (or the collector is slow).
    pub dropped: AtomicU64,
    /// The operating system refused the send.
    pub send_errors: AtomicU64,
}

/// The producer side: cheap to clone, never blocks.
#[derive(Clone, Debug)]
pub struct HepSink {
    tx: Sender<HepRecord>,
    stats: &'static HepStats,
}

impl HepSink {
    /// Queue a record, or count it dropped if the queue is full.
    pub fn offer(&self, r: HepRecord) {
        match self.tx.try_send(r) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

static SINK: OnceLock<HepSink> = OnceLock::new();
static STATS: HepStats = HepStats {
    sent: AtomicU64::new(0),
    dropped: AtomicU64::new(0),
    send_errors: AtomicU64::new(0),
};

/// The process's sink, if `--homer` is configured.
pub fn sink() -> Option<&'static HepSink> {
    SINK.get()
}

/// The exporter's counters, if it runs.
pub fn stats() -> Option<&'static HepStats> {
    SINK.get().map(|s| s.stats)
}

/// Start the exporter thread and install the process-wide sink (once; before the engine starts
/// so every shard sees it). A second call is refused.
pub fn start(cfg: HepConfig) -> io::Result<()> {
    let bind: SocketAddr = match cfg.collector {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind)?;
    let (tx, rx) = bounded(QUEUE);
    let sink = HepSink { tx, stats: &STATS };
    SINK.set(sink)
        .map_err(|_| io::Error::new(io::ErrorKind::AlreadyExists, "HEP exporter already runs"))?;
    std::thread::Builder::new()
        .name("relay-hep".into())
        .spawn(move || export(rx, socket, cfg, &STATS))?;
    Ok(())
}

fn export(rx: Receiver<HepRecord>, socket: UdpSocket, cfg: HepConfig, stats: &HepStats) {
    let mut buf = Vec::with_capacity(2048);
    for r in rx {
        buf.clear();
        encode(&r, cfg.capture_id, &mut buf);
        match socket.send_to(&buf, cfg.collector) {
            Ok(_) => stats.sent.fetch_add(1, Ordering::Relaxed),
            Err(_) => stats.send_errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// A leg's latest RTCP report as the shard's sample saw it.
pub fn rtcp_record(call_id: &str, leg: LegKind, q: &crate::call::stats::LegQuality) -> HepRecord {
    let mut r = HepRecord::new(RecordKind::Rtcp, leg, call_id, SystemTime::now());
    r.report = LegReport {
        remote: q.remote,
        rx_packets: q.rx_packets,
        rx_lost: q.rx_lost,
        rx_jitter_ms: q.rx_jitter_ms,
        tx_packets: q.tx_packets,
        tx_fraction_lost: q.tx_loss_ratio,
        tx_lost: q.tx_lost,
        tx_jitter_ms: q.tx_jitter_ms,
        rtt_ms: q.rtt_ms,
    };
    r
}

/// One quality report per leg of an ended call (from its final statistics).
pub fn end_records(ev: &crate::api::CallEvent) -> Option<[HepRecord; 2]> {
    let crate::api::CallEventKind::Ended { cause, stats, .. } = &ev.kind else {
        return None;
    };
    let duration = ev
        .at
        .duration_since(stats.created_at)
        .ok()
        .map(|d| d.as_secs_f64());
    let leg = |kind: LegKind, s: &crate::api::LegStats, remote: Option<SocketAddr>| {
        let mut r = HepRecord::new(RecordKind::CallEnd, kind, &ev.call_id, ev.at);
        let rx_loss = ratio(s.received.lost, s.received.packets + s.received.lost);
        let tx_loss = ratio(s.sent.lost, s.sent.packets);
        r.report = LegReport {
            remote,
            rx_packets: s.received.packets,
            rx_lost: s.received.lost,
            rx_jitter_ms: s.received.jitter_ms,
            tx_packets: s.sent.packets,
            tx_fraction_lost: None,
            tx_lost: s.sent.lost,
            tx_jitter_ms: Some(s.sent.jitter_ms),
            rtt_ms: s.rtt_ms,
        };
        // Without received media there is nothing to score (as in the call record).
        r.mos = (s.received.packets > 0).then(|| {
            super::mos::mos(
                rx_loss.max(tx_loss),
                s.received.jitter_ms.max(s.sent.jitter_ms),
                s.rtt_ms,
            )
        });
        r.duration_s = duration;
        r.cause = Some(cause.as_str());
        r
    };
    Some([
        leg(LegKind::WhatsApp, &stats.whatsapp, stats.whatsapp_remote),
        leg(LegKind::Internal, &stats.internal, stats.internal_remote),
    ])
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Until `stop`: every ended call's quality reports to the sink (runs on the control plane's
/// runtime, off the shards).
pub async fn export_ends(
    mut events: tokio::sync::broadcast::Receiver<crate::api::CallEvent>,
    sink: &'static HepSink,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let ev = tokio::select! {
            _ = super::stopped(&mut stop) => return,
            ev = events.recv() => ev,
        };
        match ev {
            Ok(ev) => {
                for r in end_records(&ev).into_iter().flatten() {
                    sink.offer(r);
                }
            }
            Err(RecvError::Lagged(n)) => {
                sink.stats.dropped.fetch_add(n, Ordering::Relaxed);
            }
            Err(RecvError::Closed) => return,
        }
    }
}

// ---- encoding ---------------------------------------------------------------------------------

const CHUNK_IP_FAMILY: u16 = 0x0001;
const CHUNK_IP_PROTO: u16 = 0x0002;
const CHUNK_IPV4_SRC: u16 = 0x0003;
const CHUNK_IPV4_DST: u16 = 0x0004;
const CHUNK_IPV6_SRC: u16 = 0x0005;
const CHUNK_IPV6_DST: u16 = 0x0006;
const CHUNK_SRC_PORT: u16 = 0x0007;
const CHUNK_DST_PORT: u16 = 0x0008;
const CHUNK_TS_SEC: u16 = 0x0009;
const CHUNK_TS_USEC: u16 = 0x000a;
const CHUNK_PROTO_TYPE: u16 = 0x000b;
const CHUNK_CAPTURE_ID: u16 = 0x000c;
const CHUNK_PAYLOAD: u16 = 0x000f;
const CHUNK_CORRELATION_ID: u16 = 0x0011;

fn chunk(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&0u16.to_be_bytes()); // generic vendor
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&((6 + value.len()) as u16).to_be_bytes());
    out.extend_from_slice(value);
}

/// One HEP3 packet for `r`.
pub fn encode(r: &HepRecord, capture_id: u32, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(b"HEP3");
    out.extend_from_slice(&[0, 0]); // total length, below
    let src = r
        .report
        .remote
        .unwrap_or(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0));
    match src.ip() {
        IpAddr::V4(a) => {
            chunk(out, CHUNK_IP_FAMILY, &[2]);
            chunk(out, CHUNK_IP_PROTO, &[17]);
            chunk(out, CHUNK_IPV4_SRC, &a.octets());
            chunk(out, CHUNK_IPV4_DST, &Ipv4Addr::UNSPECIFIED.octets());
        }
        IpAddr::V6(a) => {
            chunk(out, CHUNK_IP_FAMILY, &[10]);
            chunk(out, CHUNK_IP_PROTO, &[17]);
            chunk(out, CHUNK_IPV6_SRC, &a.octets());
            chunk(out, CHUNK_IPV6_DST, &Ipv6Addr::UNSPECIFIED.octets());
        }
    }
    chunk(out, CHUNK_SRC_PORT, &src.port().to_be_bytes());
    chunk(out, CHUNK_DST_PORT, &0u16.to_be_bytes());
    chunk(
        out,
        CHUNK_TS_SEC,
        &((r.at_us / 1_000_000) as u32).to_be_bytes(),
    );
    chunk(
        out,
        CHUNK_TS_USEC,
        &((r.at_us % 1_000_000) as u32).to_be_bytes(),
    );
    let proto = match r.kind {
        RecordKind::Rtcp => PROTO_RTCP_JSON,
        RecordKind::CallEnd => PROTO_MOS_REPORT_JSON,
    };
    chunk(out, CHUNK_PROTO_TYPE, &[proto]);
    chunk(out, CHUNK_CAPTURE_ID, &capture_id.to_be_bytes());
    chunk(out, CHUNK_CORRELATION_ID, r.call_id().as_bytes());
    chunk(out, CHUNK_PAYLOAD, payload(r).as_bytes());
    let total = (out.len() - start) as u16;
    out[start + 4..start + 6].copy_from_slice(&total.to_be_bytes());
}

/// The JSON payload. RTCP reports follow Homer's RTCP JSON (`report_blocks` with
/// `fraction_lost`, `packets_lost`, `ia_jitter`), plus the relay's own figures.
fn payload(r: &HepRecord) -> String {
    use serde_json::json;
    let leg = super::logs::leg_name(r.leg);
    let p = &r.report;
    let opt = |v: Option<f64>| v.map_or(serde_json::Value::Null, |v| json!(round2(v)));
    let v = match r.kind {
        RecordKind::Rtcp => json!({
            "type": 201,
            "report_count": 1,
            "report_blocks": [{
                "fraction_lost": p.tx_fraction_lost.map_or(0, |f| (f * 256.0).round() as u32),
                "packets_lost": p.tx_lost,
                "ia_jitter": opt(p.tx_jitter_ms),
            }],
            "call_id": r.call_id(),
            "leg": leg,
            "rtt_ms": opt(p.rtt_ms),
            "rx": {"packets": p.rx_packets, "lost": p.rx_lost, "jitter_ms": round2(p.rx_jitter_ms)},
            "tx": {"packets": p.tx_packets},
        }),
        RecordKind::CallEnd => json!({
            "call_id": r.call_id(),
            "leg": leg,
            "cause": r.cause,
            "duration_s": opt(r.duration_s),
            "mos": opt(r.mos),
            "rtt_ms": opt(p.rtt_ms),
            "rx": {"packets": p.rx_packets, "lost": p.rx_lost, "jitter_ms": round2(p.rx_jitter_ms)},
            "tx": {"packets": p.tx_packets, "lost": p.tx_lost, "jitter_ms": opt(p.tx_jitter_ms)},
        }),
    };
    v.to_string()
}

fn round2(v: f64) -> f64 {
    if v.is_finite() {
        (v * 100.0).round() / 100.0
    } else {
        0.0
    }
}

/// Decode a HEP3 packet into `(chunk type, value)` pairs (tests and tools).
pub fn decode(p: &[u8]) -> Option<Vec<(u16, &[u8])>> {
    if p.get(..4)? != b"HEP3" {
        return None;
    }
    let total = u16::from_be_bytes([*p.get(4)?, *p.get(5)?]) as usize;
    let body = p.get(6..total)?;
    let mut out = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let kind = u16::from_be_bytes([*body.get(i + 2)?, *body.get(i + 3)?]);
        let len = u16::from_be_bytes([*body.get(i + 4)?, *body.get(i + 5)?]) as usize;
        if len < 6 {
            return None;
        }
        out.push((kind, body.get(i + 6..i + len)?));
        i += len;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> HepRecord {
        let mut r = HepRecord::new(
            RecordKind::Rtcp,
            LegKind::WhatsApp,
            "wacid.HBgLMTU1NTAwMDExMTEVAgARGBI",
            UNIX_EPOCH + std::time::Duration::from_micros(1_764_892_800_123_456),
        );
        r.report = LegReport {
            remote: Some("157.240.1.1:3478".parse().unwrap()),
            rx_packets: 500,
            rx_lost: 3,
            rx_jitter_ms: 2.5,
            tx_packets: 498,
            tx_fraction_lost: Some(0.25),
            tx_lost: 12,
            tx_jitter_ms: Some(4.0),
            rtt_ms: Some(38.25),
        };
        r
    }

    #[test]
    fn a_report_encodes_as_hep3_chunks_with_correlation_and_json() {
        let mut out = Vec::new();
        encode(&record(), 2001, &mut out);
        assert_eq!(&out[..4], b"HEP3");
        assert_eq!(u16::from_be_bytes([out[4], out[5]]) as usize, out.len());
        let chunks = decode(&out).unwrap();
        let get = |t| {
            chunks
                .iter()
                .find(|(k, _)| *k == t)
                .map(|(_, v)| *v)
                .unwrap()
        };
        assert_eq!(get(CHUNK_IP_FAMILY), [2]);
        assert_eq!(get(CHUNK_IP_PROTO), [17]);
        assert_eq!(get(CHUNK_IPV4_SRC), [157, 240, 1, 1]);
        assert_eq!(get(CHUNK_SRC_PORT), 3478u16.to_be_bytes());
        assert_eq!(get(CHUNK_TS_SEC), 1_764_892_800u32.to_be_bytes());
        assert_eq!(get(CHUNK_TS_USEC), 123_456u32.to_be_bytes());
        assert_eq!(get(CHUNK_PROTO_TYPE), [PROTO_RTCP_JSON]);
        assert_eq!(get(CHUNK_CAPTURE_ID), 2001u32.to_be_bytes());
        assert_eq!(
            get(CHUNK_CORRELATION_ID),
            b"wacid.HBgLMTU1NTAwMDExMTEVAgARGBI"
        );
        let json: serde_json::Value = serde_json::from_slice(get(CHUNK_PAYLOAD)).unwrap();
        assert_eq!(json["report_blocks"][0]["fraction_lost"], 64);
        assert_eq!(json["report_blocks"][0]["packets_lost"], 12);
        assert_eq!(json["rtt_ms"], 38.25);
        assert_eq!(json["rx"]["lost"], 3);
        assert_eq!(json["leg"], "whatsapp");
    }

    #[test]
    fn an_end_report_over_ipv6_and_long_ids_are_cut_on_a_character() {
        let long = "é".repeat(100); // 200 bytes
        let mut r = HepRecord::new(RecordKind::CallEnd, LegKind::Internal, &long, UNIX_EPOCH);
        assert_eq!(r.call_id(), "é".repeat(64));
        r.report.remote = Some("[2001:db8::5]:24578".parse().unwrap());
        r.mos = Some(4.31);
        r.cause = Some("terminated");
        let mut out = Vec::new();
        encode(&r, 0, &mut out);
        let chunks = decode(&out).unwrap();
        let get = |t| chunks.iter().find(|(k, _)| *k == t).map(|(_, v)| *v);
        assert_eq!(get(CHUNK_IP_FAMILY), Some(&[10u8][..]));
        assert_eq!(get(CHUNK_IPV6_SRC).unwrap().len(), 16);
        assert_eq!(get(CHUNK_IPV6_DST).unwrap().len(), 16);
        assert_eq!(get(CHUNK_PROTO_TYPE), Some(&[PROTO_MOS_REPORT_JSON][..]));
        let json: serde_json::Value = serde_json::from_slice(get(CHUNK_PAYLOAD).unwrap()).unwrap();
        assert_eq!(
            (json["mos"].as_f64(), json["cause"].as_str()),
            (Some(4.31), Some("terminated"))
        );
        assert_eq!(decode(b"HEP2\x00\x06"), None);
        assert_eq!(
            decode(b"HEP3\x00\x0c\x00\x00\x00\x01\x00\x02"),
            None,
            "chunk shorter than its header"
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        static LOCAL: HepStats = HepStats {
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
        };
        let (tx, rx) = bounded(2);
        let sink = HepSink { tx, stats: &LOCAL };
        for _ in 0..5 {
            sink.offer(record());
        }
        assert_eq!(rx.len(), 2);
        assert_eq!(LOCAL.dropped.load(Ordering::Relaxed), 3);
    }
}
