use super::*;
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Opus packet: marker, PT 111, seq 0x1234, ts 0xDEADBEEF, SSRC 0x01020304, 3 payload bytes.
const SIMPLE: [u8; 15] = [
    0x80, 0xEF, 0x12, 0x34, 0xDE, 0xAD, 0xBE, 0xEF, 0x01, 0x02, 0x03, 0x04, 0xAA, 0xBB, 0xCC,
];

/// Two CSRCs, a one-byte-header extension (one word), 4 payload bytes, 4 padding bytes.
fn complex() -> Vec<u8> {
    let mut p = vec![
        0xB2, 0x6F, 0x00, 0x07, 0, 0, 0x03, 0xC0, 0xCA, 0xFE, 0xBA, 0xBE,
    ];
    p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]); // CSRCs
    p.extend_from_slice(&[0xBE, 0xDE, 0x00, 0x01, 0x10, 0x7F, 0x00, 0x00]); // extension
    p.extend_from_slice(&[1, 2, 3, 4]); // payload
    p.extend_from_slice(&[0, 0, 0, 4]); // padding
    p
}

#[test]
fn parses_simple_packet() {
    let h = parse(&SIMPLE).unwrap();
    assert!(h.marker);
    assert_eq!(h.pt.get(), 111);
    assert_eq!(h.seq.get(), 0x1234);
    assert_eq!(h.ts.get(), 0xDEAD_BEEF);
    assert_eq!(h.ssrc.get(), 0x0102_0304);
    assert_eq!(h.csrc_count, 0);
    assert_eq!(h.extension, None);
    assert_eq!(h.header_len, 12);
    assert_eq!(h.payload_len, 3);
    assert_eq!(&SIMPLE[h.payload_range()], &[0xAA, 0xBB, 0xCC]);
    assert!(!h.padded);
}

#[test]
fn parses_csrc_extension_and_padding() {
    let p = complex();
    let h = parse(&p).unwrap();
    assert!(!h.marker);
    assert_eq!(h.pt.get(), 111);
    assert_eq!(h.seq.get(), 7);
    assert_eq!(h.ts.get(), 960);
    assert_eq!(h.csrc_count, 2);
    assert_eq!(h.csrc(&p, 0), Some(Ssrc::new(1)));
    assert_eq!(h.csrc(&p, 1), Some(Ssrc::new(2)));
    assert_eq!(h.csrc(&p, 2), None);
    let ext = h.extension.unwrap();
    assert_eq!(ext.profile, 0xBEDE);
    assert_eq!(&p[ext.range()], &[0x10, 0x7F, 0, 0]);
    assert_eq!(h.header_len, 28);
    assert!(h.padded);
    assert_eq!(h.padding, 4);
    assert_eq!(&p[h.payload_range()], &[1, 2, 3, 4]);
    // parse_header leaves the padding alone (SRTP: it is encrypted).
    let raw = parse_header(&p).unwrap();
    assert_eq!(raw.payload_len, 8);
    assert_eq!(raw.padding, 0);
}

#[test]
fn rejects_malformed_packets() {
    assert_eq!(parse(&SIMPLE[..11]), Err(RtpError::TooShort(11)));
    assert_eq!(parse(&[]), Err(RtpError::TooShort(0)));
    let mut v1 = SIMPLE;
    v1[0] = 0x40;
    assert_eq!(parse(&v1), Err(RtpError::BadVersion(1)));
    let mut cc = SIMPLE;
    cc[0] = 0x81; // one CSRC, but only 3 bytes follow the fixed header
    assert!(matches!(parse(&cc), Err(RtpError::CsrcOverrun { .. })));
    let p = complex();
    assert!(matches!(
        parse(&p[..24]),
        Err(RtpError::ExtensionOverrun { .. })
    ));
    // Padding count larger than what follows the header, and zero.
    let mut pad = p.clone();
    *pad.last_mut().unwrap() = 9;
    assert!(matches!(
        parse(&pad),
        Err(RtpError::BadPadding { pad: 9, .. })
    ));
    *pad.last_mut().unwrap() = 0;
    assert!(matches!(
        parse(&pad),
        Err(RtpError::BadPadding { pad: 0, .. })
    ));
    // P bit on a header-only packet.
    let mut hdr = [0u8; 12];
    hdr[0] = 0xA0;
    hdr[11] = 1;
    assert!(matches!(parse(&hdr), Err(RtpError::BadPadding { .. })));
}

#[test]
fn in_place_writers() {
    let mut p = SIMPLE;
    HeaderMut::new(&mut p)
        .unwrap()
        .set_marker(false)
        .set_pt(Pt::new(0))
        .set_seq(Seq::new(65535))
        .set_ts(RtpTs::new(1))
        .set_ssrc(Ssrc::new(0xFFFF_FFFF));
    let h = parse(&p).unwrap();
    assert!(!h.marker);
    assert_eq!(h.pt.get(), 0);
    assert_eq!(h.seq.get(), 65535);
    assert_eq!(h.ts.get(), 1);
    assert_eq!(h.ssrc.get(), 0xFFFF_FFFF);
    HeaderMut::new(&mut p)
        .unwrap()
        .set_marker(true)
        .set_pt(Pt::new(126));
    let h = parse(&p).unwrap();
    assert!(h.marker);
    assert_eq!(h.pt.get(), 126);
    assert!(matches!(
        HeaderMut::new(&mut p[..5]),
        Err(RtpError::TooShort(5))
    ));
}

#[test]
fn strips_csrc_and_extension_keeping_payload_and_padding() {
    let mut p = complex();
    let len = p.len();
    p.extend_from_slice(&[0xEE; 10]); // spare room after the packet must be left alone
    let new_len = strip_extensions_and_csrc(&mut p, len).unwrap();
    assert_eq!(new_len, len - 16);
    let h = parse(&p[..new_len]).unwrap();
    assert_eq!(h.csrc_count, 0);
    assert_eq!(h.extension, None);
    assert_eq!(h.header_len, 12);
    assert_eq!(h.seq.get(), 7);
    assert_eq!(h.ssrc.get(), 0xCAFE_BABE);
    assert_eq!(&p[h.payload_range()], &[1, 2, 3, 4]);
    assert_eq!(h.padding, 4);
    // Nothing to strip: unchanged.
    let mut s = SIMPLE;
    assert_eq!(strip_extensions_and_csrc(&mut s, 15), Ok(15));
    assert_eq!(s, SIMPLE);
    assert!(matches!(
        strip_extensions_and_csrc(&mut s, 16),
        Err(RtpError::LengthBeyondBuffer { .. })
    ));
}

#[test]
fn writes_generated_header() {
    let mut buf = [0u8; 20];
    let fields = RtpHeaderFields {
        marker: true,
        pt: Pt::new(111),
        seq: Seq::new(0x1234),
        ts: RtpTs::new(0xDEAD_BEEF),
        ssrc: Ssrc::new(0x0102_0304),
    };
    assert_eq!(write_header(&mut buf, &fields), Ok(12));
    assert_eq!(&buf[..12], &SIMPLE[..12]);
    assert_eq!(
        write_header(&mut buf[..11], &fields),
        Err(RtpError::BufferTooSmall)
    );
}

#[test]
fn wrapping_deltas() {
    let seq_delta = |a: u16, b: u16| Seq::new(a).delta(Seq::new(b));
    let ts_delta = |a: u32, b: u32| RtpTs::new(a).delta(RtpTs::new(b));
    assert_eq!(seq_delta(1, 65535), 2);
    assert_eq!(seq_delta(65535, 1), -2);
    assert_eq!(seq_delta(100, 100), 0);
    assert_eq!(ts_delta(960, u32::MAX - 959), 1920);
}

/// One packet into the tracker, numbered as the wire would.
fn update(t: &mut SeqTracker, seq: u16, ts: u32, arrival: u32) -> bool {
    t.update(Seq::new(seq), RtpTs::new(ts), RtpTs::new(arrival))
}

#[test]
fn tracker_counts_in_order_wrap_and_loss() {
    let mut t = SeqTracker::new();
    // 65530..=65535, 0..=9 with 3 and 4 missing: 16 expected, 14 received.
    let mut seqs: Vec<u16> = (65530..=65535).collect();
    seqs.extend((0..10).filter(|s| *s != 3 && *s != 4));
    for (i, s) in seqs.iter().enumerate() {
        assert!(update(&mut t, *s, i as u32 * 960, i as u32 * 960));
    }
    assert_eq!(t.extended_max().get(), 65536 + 9);
    assert_eq!(t.expected(), 16);
    assert_eq!(t.received(), 14);
    assert_eq!(t.lost(), 2);
    assert_eq!(t.jitter(), 0);
    let rb = t.report_block(Ssrc::new(42), 7, 8);
    assert_eq!(rb.ssrc.get(), 42);
    assert_eq!(rb.cumulative_lost, 2);
    assert_eq!(rb.fraction_lost, (2 * 256 / 16) as u8);
    assert_eq!(rb.highest_seq, 65536 + 9);
    assert_eq!((rb.lsr, rb.dlsr), (7, 8));
    // The next interval has no loss.
    for s in 10..20u16 {
        update(&mut t, s, 0, 0);
    }
    assert_eq!(t.report_block(Ssrc::new(42), 0, 0).fraction_lost, 0);
}

#[test]
fn tracker_late_and_duplicate_packets() {
    let mut t = SeqTracker::new();
    for s in [10u16, 11, 13, 12, 13] {
        assert!(update(&mut t, s, 0, 0));
    }
    assert_eq!(t.extended_max().get(), 13);
    assert_eq!(t.expected(), 4);
    assert_eq!(t.received(), 5);
    assert_eq!(t.lost(), -1);
    assert_eq!(t.report_block(Ssrc::new(1), 0, 0).cumulative_lost, -1);
}

#[test]
fn tracker_restarts_after_confirmed_jump() {
    let mut t = SeqTracker::new();
    for s in 0..5u16 {
        update(&mut t, s, 0, 0);
    }
    // A jump of 20000: ignored once, accepted when the next packet follows it.
    assert!(!update(&mut t, 20_000, 0, 0));
    assert_eq!(t.extended_max().get(), 4);
    assert!(update(&mut t, 20_001, 0, 0));
    assert_eq!(t.extended_max().get(), 20_001);
    assert_eq!(t.expected(), 1);
    assert_eq!(t.received(), 1);
}

#[test]
fn tracker_jitter_follows_rfc3550_a8() {
    let mut t = SeqTracker::new();
    // 20 ms packets at 48 kHz; arrivals alternate 0 and +480 units late.
    let mut expected16: u64 = 0;
    let mut last_transit: Option<i64> = None;
    for i in 0..200u32 {
        let ts = i * 960;
        let arrival = 1000 + ts + if i % 2 == 1 { 480 } else { 0 };
        update(&mut t, i as u16, ts, arrival);
        let transit = arrival as i64 - ts as i64;
        if let Some(last) = last_transit {
            let d = (transit - last).unsigned_abs();
            expected16 = expected16 + d - ((expected16 + 8) >> 4);
        }
        last_transit = Some(transit);
    }
    assert_eq!(t.jitter() as u64, expected16 >> 4);
    // Converges towards |D| = 480.
    assert!((470..=480).contains(&t.jitter()), "jitter {}", t.jitter());
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = StdRng::seed_from_u64(3550);
    let mut buf = [0u8; 96];
    for _ in 0..20_000 {
        let len = rng.random_range(0..buf.len());
        rng.fill(&mut buf[..len]);
        buf[0] = (buf[0] & 0x3F) | 0x80;
        let _ = parse(&buf[..len]);
        let _ = parse_header(&buf[..len]);
        let mut copy = buf;
        if let Ok(n) = strip_extensions_and_csrc(&mut copy, len) {
            assert!(n <= len);
            assert!(parse_header(&copy[..n]).is_ok());
        }
    }
}
