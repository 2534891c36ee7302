//! HEP3 export to Homer (`--homer`): a real call through an in-process engine with the exporter
//! on, the datagrams caught on a loopback "collector", and what they say checked twice: by our own
//! decoder, and by tshark with the HEP3 dissector the repository ships
//! (deploy/tools/hep3.lua; Debian's Wireshark has none).

use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::meta::{MetaConfig, MetaPeer, wait_until};
use e2e::sip::{SipConfig, SipPeer};
use relay::api::{
    CallControl, CallDirection, CreateCall, InternalKind, InternalLegSpec, SourcePolicy, WaSecurity,
};
use relay::call::CallConfig;
use relay::engine::{Engine, EngineConfig};
use relay::ops::hep::{self, HepConfig, PROTO_MOS_REPORT_JSON, PROTO_RTCP_JSON};

const WAIT: Duration = Duration::from_secs(10);
const CALL: &str = "wacid.HBgLMTU1NTAwMDExMTEVAgARGBJFN0Q3";

/// A decoded HEP packet: protocol type, correlation ID, payload as JSON.
struct Hep {
    proto: u8,
    correlation: String,
    json: serde_json::Value,
}

fn decode(p: &[u8]) -> Hep {
    let chunks = hep::decode(p).expect("a HEP3 packet");
    let get = |t: u16| {
        chunks
            .iter()
            .find(|(k, _)| *k == t)
            .map(|(_, v)| *v)
            .unwrap()
    };
    Hep {
        proto: get(0x000b)[0],
        correlation: String::from_utf8(get(0x0011).to_vec()).unwrap(),
        json: serde_json::from_slice(get(0x000f)).unwrap(),
    }
}

#[test]
fn rtcp_and_quality_reports_reach_the_collector_and_tshark_decodes_them() {
    let collector = UdpSocket::bind("127.0.0.1:0").unwrap();
    collector
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    hep::start(HepConfig {
        collector: collector.local_addr().unwrap(),
        capture_id: 2001,
    })
    .unwrap();
    let engine = Engine::start(EngineConfig {
        shards: 1,
        call: CallConfig {
            rtcp_interval: Duration::from_millis(200),
            ..CallConfig::default()
        },
        ..EngineConfig::default()
    })
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    rt.spawn(hep::export_ends(
        engine.subscribe(),
        hep::sink().unwrap(),
        stop_rx,
    ));

    let meta = MetaPeer::spawn(MetaConfig {
        rtcp_interval: Duration::from_millis(200),
        ..MetaConfig::default()
    })
    .unwrap();
    let sip = SipPeer::spawn(SipConfig {
        rtcp_interval: Duration::from_millis(200),
        ..SipConfig::default()
    })
    .unwrap();
    let created = rt
        .block_on(engine.create_call(CreateCall {
            call_id: CALL.into(),
            business_number: "15550001111".into(),
            consumer: "4477".into(),
            direction: CallDirection::UserInitiated,
            whatsapp_offer: Some(meta.offer_sdp()),
            whatsapp_security: WaSecurity::DtlsSrtp,
            internal: InternalLegSpec {
                kind: InternalKind::PlainRtp,
                remote_sdp: Some(sip.sdp()),
                source: SourcePolicy::Strict,
            },
        }))
        .unwrap();
    meta.set_remote_sdp(&created.whatsapp_sdp).unwrap();
    sip.set_remote_sdp(&created.internal_sdp).unwrap();
    assert!(wait_until(WAIT, || meta
        .stats()
        .dtls_connected_at
        .is_some()));
    rt.block_on(engine.open_gate(CALL.into())).unwrap();
    meta.start_audio();
    sip.start_audio();

    // RTCP reports from both legs, at least one per leg with the RTT measured.
    let mut packets: Vec<Vec<u8>> = Vec::new();
    let mut buf = [0u8; 65536];
    let rtt_on = |packets: &[Vec<u8>], leg: &str| {
        packets.iter().map(|p| decode(p)).any(|h| {
            h.proto == PROTO_RTCP_JSON && h.json["leg"] == leg && h.json["rtt_ms"].is_number()
        })
    };
    let deadline = Instant::now() + WAIT;
    while !(rtt_on(&packets, "whatsapp") && rtt_on(&packets, "internal")) {
        assert!(
            Instant::now() < deadline,
            "RTCP reports with RTT on both legs"
        );
        if let Ok(n) = collector.recv(&mut buf) {
            packets.push(buf[..n].to_vec());
        }
    }
    // The end: one quality report per leg.
    rt.block_on(engine.terminate(CALL.into(), "test".into()))
        .unwrap();
    let ends = |packets: &[Vec<u8>]| {
        packets
            .iter()
            .filter(|p| decode(p).proto == PROTO_MOS_REPORT_JSON)
            .count()
    };
    let deadline = Instant::now() + WAIT;
    while ends(&packets) < 2 {
        assert!(Instant::now() < deadline, "two end reports");
        if let Ok(n) = collector.recv(&mut buf) {
            packets.push(buf[..n].to_vec());
        }
    }
    for h in packets.iter().map(|p| decode(p)) {
        assert_eq!(h.correlation, CALL);
    }
    let end = packets
        .iter()
        .map(|p| decode(p))
        .find(|h| h.proto == PROTO_MOS_REPORT_JSON && h.json["leg"] == "whatsapp")
        .unwrap();
    assert_eq!(end.json["cause"], "terminated");
    assert!(end.json["mos"].as_f64().unwrap() > 4.0, "{}", end.json);
    assert!(end.json["rx"]["packets"].as_u64().unwrap() > 10);
    let stats = hep::stats().unwrap();
    // The exporter counts a record after send_to returns, which can be after the collector
    // already read it: wait for the count rather than race it.
    let deadline = Instant::now() + WAIT;
    while stats.sent.load(std::sync::atomic::Ordering::Relaxed) < packets.len() as u64 {
        assert!(
            Instant::now() < deadline,
            "every received record counted as sent"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(stats.dropped.load(std::sync::atomic::Ordering::Relaxed), 0);
    engine.shutdown();

    tshark_decodes(&packets);
}

/// Write the datagrams as a pcap (raw IPv4/UDP to port 9060) and read it back with tshark and
/// the repository's HEP3 dissector.
fn tshark_decodes(packets: &[Vec<u8>]) {
    let tshark = std::env::var("TSHARK").unwrap_or_else(|_| "tshark".into());
    if Command::new(&tshark).arg("-v").output().is_err() {
        eprintln!(
            "SKIPPED the tshark half: cannot run {tshark}; scripts/test.sh installs it (apt-get install tshark)"
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("relay-hep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pcap = dir.join("hep.pcap");
    std::fs::write(&pcap, pcap_of(packets)).unwrap();
    let lua = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/tools/hep3.lua");
    let out = Command::new(&tshark)
        .arg("-X")
        .arg(format!("lua_script:{}", lua.display()))
        .arg("-r")
        .arg(&pcap)
        .args(["-T", "fields", "-E", "separator=|"])
        .args([
            "-e",
            "hep3.proto_type",
            "-e",
            "hep3.correlation_id",
            "-e",
            "hep3.capture_id",
        ])
        .args(["-e", "hep3.ip_family", "-e", "json.key"])
        .output()
        .expect("tshark runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('|').collect()).collect();
    assert_eq!(
        rows.len(),
        packets.len(),
        "one decoded row per datagram:\n{text}"
    );
    let mut rtcp = 0;
    let mut mos = 0;
    for r in &rows {
        assert_eq!(r[1], CALL, "{r:?}");
        assert_eq!(r[2], "2001", "{r:?}");
        assert_eq!(r[3], "2", "IPv4: {r:?}");
        // tshark's JSON dissector parsed the payload: its keys are listed.
        match r[0] {
            "0x05" => {
                rtcp += 1;
                assert!(
                    r[4].contains("report_blocks") && r[4].contains("fraction_lost"),
                    "{r:?}"
                );
            }
            "0x22" => {
                mos += 1;
                assert!(r[4].contains("mos") && r[4].contains("cause"), "{r:?}");
            }
            other => panic!("unexpected protocol type {other}"),
        }
    }
    assert!(rtcp >= 2 && mos == 2, "{rtcp} RTCP, {mos} MOS reports");
    let _ = std::fs::remove_dir_all(&dir);
}

fn pcap_of(packets: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    // Global header: magic, version 2.4, zone, sigfigs, snaplen, LINKTYPE_RAW (101).
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&101u32.to_le_bytes());
    for (i, p) in packets.iter().enumerate() {
        let udp_len = 8 + p.len();
        let ip_len = 20 + udp_len;
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1,
        ];
        ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        let sum = ip
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum::<u32>();
        let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut udp = Vec::with_capacity(udp_len);
        udp.extend_from_slice(&40000u16.to_be_bytes());
        udp.extend_from_slice(&9060u16.to_be_bytes());
        udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
        udp.extend_from_slice(&0u16.to_be_bytes());
        udp.extend_from_slice(p);
        out.extend_from_slice(&(1_764_892_800u32 + i as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(ip_len as u32).to_le_bytes());
        out.extend_from_slice(&(ip_len as u32).to_le_bytes());
        out.extend_from_slice(&ip);
        out.extend_from_slice(&udp);
    }
    out
}
