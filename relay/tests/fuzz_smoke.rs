//! The committed fuzz corpus (`fuzz/corpus/<target>/`), run through the fuzz harnesses on the
//! stable toolchain, so every CI run exercises it without a fuzzer. The harnesses are the very
//! file the `relay-fuzz` crate compiles (`fuzz/src/lib.rs`).
//!
//! `regenerate_corpus` (ignored) writes the seeds from RFC vectors, the relay's own writers and
//! drivers, and the SDP fixtures:
//! `cargo test -p relay --test fuzz_smoke -- --ignored regenerate_corpus`.

#[allow(dead_code)]
#[path = "../../fuzz/src/lib.rs"]
mod harness;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use control::pb;
use prost::Message;
use relay::dtls::{DtlsConfig, DtlsDriver, DtlsFailure, DtlsIdentity, DtlsRole};
use relay::ice::IceEvent;
use relay::srtp::{SrtpContext, SrtpProfile};
use relay::wire::classify::{PacketKind, classify};
use relay::wire::rtcp::{self, ReportBlock};
use relay::wire::rtp::{RtpTs, Ssrc};
use relay::wire::stun::{self, BINDING, StunClass, StunWriter};

use harness::{Input, frame};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

/// The seeds of one target, sorted by name.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir().join(target);
    let mut out: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("directory entry").path();
            let name = path
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into();
            (name, fs::read(&path).expect("read seed"))
        })
        .collect();
    out.sort();
    out
}

fn seed<'a>(all: &'a [(String, Vec<u8>)], name: &str) -> &'a [u8] {
    &all.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("seed {name} missing"))
        .1
}

#[test]
fn every_seed_runs_through_its_target() {
    let mut total = 0;
    for (target, run) in harness::TARGETS {
        let seeds = seeds(target);
        assert!(!seeds.is_empty(), "{target} has no seeds");
        for (name, data) in seeds {
            total += data.len();
            if let Err(panic) = std::panic::catch_unwind(|| run(&data)) {
                let why = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("?");
                panic!("{target}/{name}: {why}");
            }
        }
    }
    assert!(
        total < 1 << 20,
        "the corpus is {total} bytes; keep it under 1 MiB"
    );
}

#[test]
fn seeds_reach_what_they_were_made_for() {
    let stun_seeds = seeds("stun");
    for name in [
        "rfc5769-request",
        "rfc5769-ipv4-response",
        "rfc5769-ipv6-response",
    ] {
        let msg = stun::parse(seed(&stun_seeds, name)).expect(name);
        assert!(msg.verify_integrity(harness::STUN_KEY), "{name}");
        assert!(msg.check_fingerprint(), "{name}");
    }

    // Raw SRTP seeds were protected with the target's fixed key: they decrypt.
    for (name, data) in seeds("srtp_unprotect") {
        let (&flags, packet) = data.split_first().expect("flags byte");
        if flags & harness::SRTP_ROUNDTRIP != 0 {
            continue;
        }
        let mut ctx = SrtpContext::new(&harness::srtp_key(harness::srtp_profile(flags))).unwrap();
        let mut buf = packet.to_vec();
        let ok = if flags & harness::SRTP_RTCP != 0 {
            ctx.unprotect_rtcp(&mut buf)
        } else {
            ctx.unprotect_rtp(&mut buf)
        };
        assert!(ok.is_ok(), "{name}: {ok:?}");
    }

    let rtcp_seeds = seeds("rtcp");
    let packets: Vec<_> = rtcp::iter(seed(&rtcp_seeds, "sr-sdes")).collect();
    assert_eq!(packets.len(), 2);
    assert!(packets.iter().all(Result::is_ok));

    for (name, data) in seeds("classify") {
        let want = match name.split('-').next() {
            Some("stun") => PacketKind::Stun,
            Some("dtls") => PacketKind::Dtls,
            Some("rtp") => PacketKind::Rtp,
            Some("rtcp") => PacketKind::Rtcp,
            _ => panic!("{name}: name it after its kind"),
        };
        assert_eq!(classify(&data), want, "{name}");
    }

    // The DTLS seeds start with a real ClientHello (server role) or server flight.
    for (name, data) in seeds("dtls") {
        let mut input = Input::new(&data);
        input.u8();
        let first = input.chunk();
        assert_eq!(classify(first), PacketKind::Dtls, "{name}");
        assert_eq!(first.first(), Some(&22), "{name}: a handshake record");
    }

    // Our server answers the ClientHello with its flight (one datagram); our client sends its
    // ClientHello, then answers the server's flight.
    let dtls_seeds = seeds("dtls");
    let summary = harness::dtls_run(seed(&dtls_seeds, "server-client-hello"));
    assert!(
        summary.sent >= 1 && summary.failed_early.is_none(),
        "{summary:?}"
    );
    // A captured flight gets as far as the signature over this run's random values.
    for name in ["server-client-flights", "client-server-flight"] {
        let summary = harness::dtls_run(seed(&dtls_seeds, name));
        assert!(
            matches!(summary.failed_early, Some(DtlsFailure::Protocol(_))),
            "{name}: {summary:?}"
        );
    }

    let ice_seeds = seeds("ice");
    let run = |name| harness::ice_run(seed(&ice_seeds, name));
    let connect = run("connect");
    assert!(
        matches!(connect.events[..], [IceEvent::Connected { .. }]),
        "{connect:?}"
    );
    let consent = run("connect-consent");
    assert!(consent.stats.consent_checks_sent > 0, "{consent:?}");
    assert!(
        consent.events.contains(&IceEvent::ConsentLost),
        "{consent:?}"
    );
    let request = run("authentic-request");
    assert_eq!(request.stats.requests_answered, 1, "{request:?}");
    let conflict = run("role-conflict");
    assert_eq!(conflict.stats.role_conflicts, 1, "{conflict:?}");
    let errors = run("error-responses");
    assert_eq!(errors.stats.error_responses, 2, "{errors:?}");
    let stranger = run("stranger");
    assert_eq!(stranger.stats.rejected_requests, 2, "{stranger:?}");
    assert_eq!(stranger.stats.requests_answered, 0, "{stranger:?}");
    assert_eq!(stranger.events, [IceEvent::Failed], "{stranger:?}");

    // `refused-*` seeds sit just past a rule (ICE credentials outside RFC 8839): they must be
    // refused, with a reason; every other seed is a valid description.
    for (name, data) in seeds("sdp") {
        let parsed = relay::sdp::parse_bytes(&data);
        if name.starts_with("refused-") {
            let e = parsed.expect_err(&name);
            assert!(e.reason.contains("ice-"), "{name}: {e}");
        } else {
            parsed.unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    let control_seeds = seeds("control");
    let create = seed(&control_seeds, "create-call-user-initiated");
    let req = pb::CreateCallRequest::decode(&create[1..]).expect("decodes");
    relay::sdp::validate_wa_offer(&relay::sdp::parse(&req.whatsapp_offer_sdp).unwrap())
        .expect("the offer in the seed is valid");
}

// ---------------------------------------------------------------------------------------------
// Regressions: minimised inputs found by fuzzing.

/// Found by the `sdp` and `control` targets. `SdpError::text` is sanitised, but `reason` quotes
/// the offending token verbatim (`address \`{token}\``, `port \`{token}\``: 19 `format!`
/// sites in relay/src/sdp/fields.rs and parse.rs), so the Display that gets logged and
/// returned in gRPC statuses carries raw control characters (ESC: terminal escapes, log
/// forging) from Meta's or a caller's SDP.
#[test]
fn sdp_error_display_has_no_control_characters() {
    let e = relay::sdp::parse_bytes(b"v=0\nc=IN IP4 \x1b[31m\n").unwrap_err();
    assert!(!e.to_string().chars().any(char::is_control), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// Corpus generation

/// RFC 5769 §2.1 sample request (short-term credentials).
const RFC5769_REQUEST: [u8; 108] = [
    0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73,
    0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x01, 0xff,
    0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36, 0x00, 0x06, 0x00, 0x09,
    0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20, 0x20, 0x00, 0x08, 0x00, 0x14,
    0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e, 0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49,
    0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
];

/// RFC 5769 §2.2 sample IPv4 response.
const RFC5769_IPV4_RESPONSE: [u8; 80] = [
    0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63,
    0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43,
    0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3, 0x8c, 0x74, 0x89, 0xf9,
    0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00, 0x04, 0xc0, 0x7d, 0x4c, 0x96,
];

/// RFC 5769 §2.3 sample IPv6 response.
const RFC5769_IPV6_RESPONSE: [u8; 92] = [
    0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63,
    0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa,
    0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9, 0x00, 0x08, 0x00, 0x14,
    0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9, 0x7c, 0x82, 0x92, 0xc2, 0x75,
    0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb, 0x0b, 0x4c,
];

/// RFC 5769 §2.4 sample request with long-term credentials.
const RFC5769_LONG_TERM_REQUEST: [u8; 116] = [
    0x00, 0x01, 0x00, 0x60, 0x21, 0x12, 0xa4, 0x42, 0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0,
    0x29, 0xda, 0x41, 0x2e, 0x00, 0x06, 0x00, 0x12, 0xe3, 0x83, 0x9e, 0xe3, 0x83, 0x88, 0xe3, 0x83,
    0xaa, 0xe3, 0x83, 0x83, 0xe3, 0x82, 0xaf, 0xe3, 0x82, 0xb9, 0x00, 0x00, 0x00, 0x15, 0x00, 0x1c,
    0x66, 0x2f, 0x2f, 0x34, 0x39, 0x39, 0x6b, 0x39, 0x35, 0x34, 0x64, 0x36, 0x4f, 0x4c, 0x33, 0x34,
    0x6f, 0x4c, 0x39, 0x46, 0x53, 0x54, 0x76, 0x79, 0x36, 0x34, 0x73, 0x41, 0x00, 0x14, 0x00, 0x0b,
    0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x6f, 0x72, 0x67, 0x00, 0x00, 0x08, 0x00, 0x14,
    0xf6, 0x70, 0x24, 0x65, 0x6d, 0xd6, 0x4a, 0x3e, 0x02, 0xb8, 0xe0, 0x71, 0x2e, 0x85, 0xc9, 0xa2,
    0x8c, 0xa8, 0x96, 0x66,
];

/// An ICE connectivity check as the agent sends it, and a 487 error response.
fn ice_check_and_error() -> (Vec<u8>, Vec<u8>) {
    let mut buf = [0u8; 512];
    let mut w = StunWriter::new(&mut buf, StunClass::Request, BINDING, [1; 12]).unwrap();
    w.username(b"meta/Ufr:Ab12")
        .unwrap()
        .priority(1_853_824_767)
        .unwrap()
        .use_candidate()
        .unwrap()
        .ice_controlling(0x0123_4567_89ab_cdef)
        .unwrap();
    let n = w.finish(Some(harness::STUN_KEY), true).unwrap();
    let check = buf[..n].to_vec();
    let mut w = StunWriter::new(&mut buf, StunClass::ErrorResponse, BINDING, [2; 12]).unwrap();
    w.error_code(487, "Role Conflict").unwrap();
    let n = w.finish(Some(harness::STUN_KEY), true).unwrap();
    (check, buf[..n].to_vec())
}

/// RTP, Opus PT 111, two CSRCs and an RFC 8285 one-byte extension; the payload doubles as
/// (seq, timestamp, arrival) records for the SeqTracker part of the target.
fn rtp_csrc_extension() -> Vec<u8> {
    let mut p = vec![
        0x92, 0x6F, 0x12, 0x34, // V=2 X CC=2, PT 111, seq
        0x00, 0x01, 0x00, 0x00, // timestamp
        0xDE, 0xAD, 0xBE, 0xEF, // SSRC
        0x00, 0x00, 0x00, 0x01, // CSRC 1
        0x00, 0x00, 0x00, 0x02, // CSRC 2
        0xBE, 0xDE, 0x00, 0x01, // one-byte extensions, one word
        0x10, 0xFF, 0x00, 0x00, // id 1, 1 byte; padding
    ];
    p.extend_from_slice(&[0x12, 0x35, 0x00, 0x01, 0x03, 0xC0, 0x00, 0x00, 0x03, 0xC0]);
    p.extend_from_slice(&[0xFF, 0xFF, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x07, 0x80]);
    p
}

fn rtp_plain(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x6F];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 960).to_be_bytes());
    p.extend_from_slice(&0x1122_3344u32.to_be_bytes());
    p.extend_from_slice(&[0x78, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07]);
    p
}

fn rtp_padded() -> Vec<u8> {
    let mut p = rtp_plain(7);
    p[0] |= 0x20;
    p.extend_from_slice(&[0, 0, 3]);
    p
}

fn report_block() -> ReportBlock {
    ReportBlock {
        ssrc: Ssrc::new(0x1122_3344),
        fraction_lost: 16,
        cumulative_lost: -2,
        highest_seq: 0x0001_0010,
        jitter: 30,
        lsr: 0x3C5A_8E35,
        dlsr: 0x8000,
    }
}

/// SR with one report block + SDES CNAME: what every browser sends.
fn rtcp_sr_sdes() -> Vec<u8> {
    let mut buf = [0u8; 256];
    let n = rtcp::write_sr(
        &mut buf,
        Ssrc::new(0x5F4A_2B1C),
        0xE81F_3C5A_8E35_3F7C,
        RtpTs::new(0x0012_D687),
        250,
        40_000,
        &[report_block()],
    )
    .unwrap();
    let m =
        rtcp::write_sdes_cname(&mut buf[n..], Ssrc::new(0x5F4A_2B1C), b"abcdefghijklmnop").unwrap();
    buf[..n + m].to_vec()
}

fn rtcp_rr_bye() -> Vec<u8> {
    let mut buf = [0u8; 256];
    let n = rtcp::write_rr(
        &mut buf,
        Ssrc::new(0x0102_0304),
        &[report_block(), report_block()],
    )
    .unwrap();
    let m = rtcp::write_bye(&mut buf[n..], Ssrc::new(0x0102_0304)).unwrap();
    buf[..n + m].to_vec()
}

/// PLI, generic NACK, APP and an XR header: the types the iterator interprets or passes on.
fn rtcp_feedback_app_xr() -> Vec<u8> {
    let mut p = vec![0x81, 206, 0, 2, 1, 2, 3, 4, 5, 6, 7, 8];
    p.extend_from_slice(&[
        0x81, 205, 0, 3, 1, 2, 3, 4, 5, 6, 7, 8, 0x12, 0x34, 0x00, 0x05,
    ]);
    p.extend_from_slice(&[0x81, 204, 0, 2, 1, 2, 3, 4, b'n', b'a', b'm', b'e']);
    p.extend_from_slice(&[0x80, 207, 0, 1, 1, 2, 3, 4]);
    p
}

/// Protects `plain` with the `srtp_unprotect` target's key: a seed that authenticates.
fn srtp_raw_seed(profile_index: u8, rtcp: bool, plain: &[u8]) -> Vec<u8> {
    let flags = profile_index | if rtcp { harness::SRTP_RTCP } else { 0 };
    let profile = harness::srtp_profile(flags);
    let mut ctx = SrtpContext::new(&harness::srtp_key(profile)).unwrap();
    let mut buf = plain.to_vec();
    buf.resize(plain.len() + profile.rtcp_overhead(), 0);
    let n = if rtcp {
        ctx.protect_rtcp(&mut buf, plain.len())
    } else {
        ctx.protect_rtp(&mut buf, plain.len())
    }
    .unwrap();
    let mut seed = vec![flags];
    seed.extend_from_slice(&buf[..n]);
    seed
}

fn srtp_roundtrip_seed(profile_index: u8, rtcp: bool, packets: &[(Vec<u8>, u16)]) -> Vec<u8> {
    let mut seed =
        vec![profile_index | harness::SRTP_ROUNDTRIP | if rtcp { harness::SRTP_RTCP } else { 0 }];
    for (plain, tamper) in packets {
        frame(&mut seed, plain);
        seed.extend_from_slice(&tamper.to_be_bytes());
    }
    seed
}

/// A real handshake's first flights: our client's ClientHello, a server's flight answering
/// it, and our client's second flight.
struct Flights {
    hello: Vec<u8>,
    server: Vec<Vec<u8>>,
    client: Vec<Vec<u8>>,
}

fn dtls_flights() -> Flights {
    let cfg = DtlsConfig::default();
    let now = Instant::now();
    let server_id = std::sync::Arc::new(DtlsIdentity::generate().unwrap());
    let client_id = std::sync::Arc::new(DtlsIdentity::generate().unwrap());
    let mut client = DtlsDriver::new(
        client_id.clone(),
        &cfg,
        DtlsRole::Client,
        server_id.fingerprint().clone(),
        now,
    );
    let mut server = DtlsDriver::new(
        server_id,
        &cfg,
        DtlsRole::Server,
        client_id.fingerprint().clone(),
        now,
    );
    server.start(now);
    client.start(now);
    let mut buf = vec![0u8; 2048];
    let drain = |d: &mut DtlsDriver, buf: &mut [u8]| {
        let mut out = Vec::new();
        while let Some(n) = d.poll_transmit(buf) {
            out.push(buf[..n].to_vec());
        }
        out
    };
    let hello = drain(&mut client, &mut buf);
    assert_eq!(hello.len(), 1, "one ClientHello datagram");
    server.handle_datagram(now, &hello[0]);
    let server_flight = drain(&mut server, &mut buf);
    for d in &server_flight {
        client.handle_datagram(now, d);
    }
    let client_flight = drain(&mut client, &mut buf);
    assert!(!server_flight.is_empty() && !client_flight.is_empty());
    Flights {
        hello: hello[0].clone(),
        server: server_flight,
        client: client_flight,
    }
}

/// A `dtls` input: flags, then datagrams each followed by `step`.
fn dtls_seed(flags: u8, datagrams: &[Vec<u8>], step: u8) -> Vec<u8> {
    let mut seed = vec![flags];
    for d in datagrams {
        frame(&mut seed, d);
        seed.push(step);
    }
    seed
}

/// Builds `ice` target programs (see `harness::ice` and `ice_forge` for the layout).
struct IceProgram(Vec<u8>);

/// `ice_forge` attribute bits.
const USERNAME_OURS: u16 = 1 << 2;
const PRIORITY: u16 = 1 << 4;
const USE_CANDIDATE: u16 = 1 << 5;
const CONTROLLING: u16 = 1 << 6;
const CONTROLLED: u16 = 1 << 7;
const XOR_MAPPED: u16 = 1 << 8;
const ERROR_CODE: u16 = 1 << 9;
const RIGHT_KEY: u16 = 1 << 11;
const FINGERPRINT: u16 = 1 << 13;

impl IceProgram {
    fn new() -> Self {
        IceProgram(Vec::new())
    }

    fn raw(mut self, peer: u8, datagram: &[u8]) -> Self {
        self.0.push(harness::ICE_OP_RAW | (peer << 4));
        frame(&mut self.0, datagram);
        self
    }

    /// A response to the agent's `sent`-th datagram.
    fn answer(mut self, class_index: u8, sent: u8, attrs: u16, extra: &[u8]) -> Self {
        self.0
            .push(harness::ICE_OP_FORGE | (class_index << 3) | 0x20);
        self.0.extend_from_slice(&attrs.to_be_bytes());
        self.0.push(sent);
        self.0.extend_from_slice(extra);
        self
    }

    /// A request from `peer` with a fresh transaction ID.
    fn request(mut self, peer: u8, attrs: u16, extra: &[u8]) -> Self {
        self.0.push(harness::ICE_OP_FORGE);
        self.0.extend_from_slice(&attrs.to_be_bytes());
        self.0.push(peer);
        self.0.extend_from_slice(b"fuzz-tid-012");
        self.0.extend_from_slice(extra);
        self
    }

    fn sleep(mut self, ms: u16) -> Self {
        self.0.push(harness::ICE_OP_SLEEP);
        self.0.extend_from_slice(&ms.to_be_bytes());
        self
    }

    fn timer(mut self) -> Self {
        self.0.push(harness::ICE_OP_TIMER);
        self
    }
}

fn ice_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let success = XOR_MAPPED | RIGHT_KEY | FINGERPRINT;
    vec![
        // The first check (sent at setup) answered: the agent connects.
        (
            "connect",
            IceProgram::new()
                .answer(1, 0, success, &[])
                .timer()
                .timer()
                .0,
        ),
        // Connected, then consent checks answered and unanswered until consent is lost.
        (
            "connect-consent",
            IceProgram::new()
                .answer(1, 0, success, &[])
                .sleep(6000)
                .timer()
                .answer(1, 1, success, &[])
                .sleep(30_000)
                .timer()
                .0,
        ),
        // An authentic request from Meta: answered, then a triggered check.
        (
            "authentic-request",
            IceProgram::new()
                .request(
                    0,
                    USERNAME_OURS | PRIORITY | CONTROLLED | RIGHT_KEY | FINGERPRINT,
                    &[0x6E, 0x00, 0x01, 0xFF, 0, 0, 0, 0, 0, 0, 0, 9],
                )
                .timer()
                .0,
        ),
        // Both sides controlling: 487.
        (
            "role-conflict",
            IceProgram::new()
                .request(
                    1,
                    USERNAME_OURS | PRIORITY | CONTROLLING | USE_CANDIDATE | RIGHT_KEY,
                    &[0x6E, 0x00, 0x01, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0, 0],
                )
                .0,
        ),
        // Error responses to our checks: 487 (retry), then 500 (pair failed).
        (
            "error-responses",
            IceProgram::new()
                .answer(2, 0, ERROR_CODE | RIGHT_KEY | FINGERPRINT, &[0, 0, 3])
                .sleep(100)
                .timer()
                .answer(2, 1, ERROR_CODE | RIGHT_KEY, &[0, 0, 4])
                .sleep(11_000)
                .timer()
                .0,
        ),
        // A stranger with the wrong key, then the RFC 5769 request raw.
        (
            "stranger",
            IceProgram::new()
                .request(
                    2,
                    USERNAME_OURS | PRIORITY | (3 << 11),
                    &[0, 0, 0, 1, 0, 3, b'k', b'e', b'y'],
                )
                .raw(2, &RFC5769_REQUEST)
                .sleep(11_000)
                .timer()
                .0,
        ),
    ]
}

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sdp")
        .join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn control_seed(which: u8, msg: &impl Message) -> Vec<u8> {
    let mut seed = vec![which];
    seed.extend_from_slice(&msg.encode_to_vec());
    seed
}

fn control_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let internal = pb::InternalLeg {
        transport: pb::InternalTransport::PlainRtp as i32,
        srtp_profile: 0,
        remote_sdp: fixture("internal_plain_rtp.sdp"),
        source_policy: pb::SourcePolicy::Latch as i32,
        websocket: None,
    };
    vec![
        (
            "create-call-user-initiated",
            control_seed(
                0,
                &pb::CreateCallRequest {
                    call_id: "wacid.HBgLMTIzNDU2Nzg5MA==".into(),
                    business_number: "15550001111".into(),
                    consumer: "15550002222".into(),
                    direction: pb::CallDirection::UserInitiated as i32,
                    whatsapp_offer_sdp: fixture("wa_user_offer.sdp"),
                    whatsapp: Some(pb::WhatsappLegOptions {
                        security: pb::WhatsappSecurity::DtlsSrtp as i32,
                        sdes_profile: 0,
                    }),
                    internal: Some(internal.clone()),
                },
            ),
        ),
        (
            "set-remote-description",
            control_seed(
                1,
                &pb::SetRemoteDescriptionRequest {
                    call_id: "c1".into(),
                    leg: pb::Leg::Whatsapp as i32,
                    sdp: fixture("meta_answer.sdp"),
                },
            ),
        ),
        (
            "replace-internal-leg",
            control_seed(
                3,
                &pb::ReplaceInternalLegRequest {
                    call_id: "c1".into(),
                    internal: Some(internal),
                },
            ),
        ),
        (
            "terminate",
            control_seed(
                4,
                &pb::TerminateRequest {
                    call_id: "c1".into(),
                    reason: "user hung up".into(),
                },
            ),
        ),
        (
            "list-calls",
            control_seed(
                6,
                &pb::ListCallsRequest {
                    business_number: "15550001111".into(),
                    states: vec![pb::CallState::Active as i32, 99],
                },
            ),
        ),
        (
            "drain",
            control_seed(
                9,
                &pb::DrainRequest {
                    deadline: Some(prost_types::Duration {
                        seconds: 30,
                        nanos: 5,
                    }),
                },
            ),
        ),
    ]
}

#[test]
#[ignore = "writes fuzz/corpus; run by hand when the seeds or the input layouts change"]
fn regenerate_corpus() {
    let mut corpus: Vec<(&str, String, Vec<u8>)> = Vec::new();
    let mut add = |target: &'static str, name: &str, data: Vec<u8>| {
        corpus.push((target, name.to_string(), data));
    };

    let (check, error) = ice_check_and_error();
    add("stun", "rfc5769-request", RFC5769_REQUEST.to_vec());
    add(
        "stun",
        "rfc5769-ipv4-response",
        RFC5769_IPV4_RESPONSE.to_vec(),
    );
    add(
        "stun",
        "rfc5769-ipv6-response",
        RFC5769_IPV6_RESPONSE.to_vec(),
    );
    add(
        "stun",
        "rfc5769-long-term-request",
        RFC5769_LONG_TERM_REQUEST.to_vec(),
    );
    add("stun", "ice-check", check.clone());
    add("stun", "error-487", error);

    add("rtp", "csrc-extension", rtp_csrc_extension());
    add("rtp", "plain", rtp_plain(1));
    add("rtp", "padded", rtp_padded());

    add("rtcp", "sr-sdes", rtcp_sr_sdes());
    add("rtcp", "rr-bye", rtcp_rr_bye());
    add("rtcp", "feedback-app-xr", rtcp_feedback_app_xr());

    let flights = dtls_flights();
    let hello = flights.hello.clone();
    add("classify", "stun-ice-check", check);
    add("classify", "dtls-client-hello", hello.clone());
    add("classify", "rtp-csrc-extension", rtp_csrc_extension());
    add("classify", "rtcp-sr-sdes", rtcp_sr_sdes());

    let sdp_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sdp");
    let mut sdps: Vec<_> = fs::read_dir(&sdp_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sdp"))
        .collect();
    sdps.sort();
    for path in sdps {
        let name = path
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .replace('_', "-");
        add("sdp", &name, fs::read(&path).unwrap());
    }
    // Just past RFC 8839's ICE credential rules (refused, see every_seed_runs_through_its_target).
    let offer = fixture("wa_user_offer.sdp");
    let pwd = "a=ice-pwd:fP3kq8Lw0zN2vXbY7sHc1tRm==";
    for (name, text) in [
        (
            "refused-ice-pwd-with-semicolon",
            offer.replace(pwd, "a=ice-pwd:fP3kq8Lw0zN2vXbY7sHc1t;Rm=x"),
        ),
        (
            "refused-ice-ufrag-with-colon",
            offer.replacen("a=ice-ufrag:", "a=ice-ufrag:ab:", 1),
        ),
        (
            "refused-ice-pwd-too-short",
            offer.replace(pwd, "a=ice-pwd:short=="),
        ),
    ] {
        add("sdp", name, text.into_bytes());
    }

    for (i, profile) in SrtpProfile::ALL.iter().enumerate() {
        let i = i as u8;
        let short = match profile {
            SrtpProfile::Aes128CmHmacSha1_80 => "aes-cm",
            SrtpProfile::AeadAes128Gcm => "gcm128",
            SrtpProfile::AeadAes256Gcm => "gcm256",
        };
        add(
            "srtp_unprotect",
            &format!("rtp-{short}"),
            srtp_raw_seed(i, false, &rtp_csrc_extension()),
        );
        add(
            "srtp_unprotect",
            &format!("rtcp-{short}"),
            srtp_raw_seed(i, true, &rtcp_sr_sdes()),
        );
        add(
            "srtp_unprotect",
            &format!("roundtrip-rtp-{short}"),
            srtp_roundtrip_seed(
                i,
                false,
                &[
                    (rtp_plain(65_535), 0),
                    (rtp_plain(0), 0x0101),
                    (rtp_csrc_extension(), 0),
                    (rtp_padded(), 0x00F3),
                ],
            ),
        );
        add(
            "srtp_unprotect",
            &format!("roundtrip-rtcp-{short}"),
            srtp_roundtrip_seed(
                i,
                true,
                &[
                    (rtcp_sr_sdes(), 0),
                    (rtcp_rr_bye(), 0x0042),
                    (rtcp_sr_sdes(), 0),
                ],
            ),
        );
    }

    let server = harness::DTLS_SERVER;
    add(
        "dtls",
        "server-client-hello",
        dtls_seed(server, std::slice::from_ref(&hello), 0),
    );
    let mut both = vec![hello.clone()];
    both.extend(flights.client.iter().cloned());
    add("dtls", "server-client-flights", dtls_seed(server, &both, 1));
    add(
        "dtls",
        "server-client-hello-retransmits",
        dtls_seed(server, &[hello.clone(), hello], 50),
    );
    add(
        "dtls",
        "client-server-flight",
        dtls_seed(0, &flights.server, 0),
    );

    for (name, data) in ice_seeds() {
        add("ice", name, data);
    }
    for (name, data) in control_seeds() {
        add("control", name, data);
    }
    // Identifiers the control plane refuses: not UTF-8 (does not decode), a right-to-left
    // override, a byte-order mark, only a space.
    let ld = |field: u8, b: &[u8]| {
        let mut v = vec![field << 3 | 2, b.len() as u8];
        v.extend_from_slice(b);
        v
    };
    add(
        "control",
        "create-call-id-not-utf8",
        [&[0u8][..], &ld(1, b"\xff\xfe")].concat(),
    );
    add(
        "control",
        "create-call-id-rlo",
        [
            &[0u8][..],
            &ld(1, "wacid.\u{202e}1".as_bytes()),
            &ld(2, b"1555"),
            &ld(3, b"c1"),
            &[0x20, 0x02],
        ]
        .concat(),
    );
    add(
        "control",
        "terminate-id-bom",
        [&[4u8][..], &ld(1, "\u{feff}wacid.1".as_bytes())].concat(),
    );
    add(
        "control",
        "terminate-id-space",
        [&[4u8][..], &ld(1, b" ")].concat(),
    );

    let root = corpus_dir();
    for (target, _) in harness::TARGETS {
        let dir = root.join(target);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
    }
    for (target, name, data) in corpus {
        fs::write(root.join(target).join(name), data).unwrap();
    }
}
