use super::*;
use rand::{Rng, SeedableRng, rngs::StdRng};

/// An SR with one report block followed by an SDES CNAME, laid out by hand the way a
/// browser sends them (compound, no padding).
fn sr_sdes() -> Vec<u8> {
    let mut p = vec![
        0x81, 0xC8, 0x00, 0x0C, // V=2 RC=1 SR, 13 words
        0x5F, 0x4A, 0x2B, 0x1C, // sender SSRC
        0xE8, 0x1F, 0x3C, 0x5A, 0x8E, 0x35, 0x3F, 0x7C, // NTP
        0x00, 0x12, 0xD6, 0x87, // RTP timestamp
        0x00, 0x00, 0x00, 0xFA, // packets
        0x00, 0x00, 0x9C, 0x40, // octets
        0x11, 0x22, 0x33, 0x44, // report block: SSRC
        0x10, 0xFF, 0xFF, 0xFE, // fraction 16/256, cumulative -2
        0x00, 0x01, 0x00, 0x10, // extended highest seq
        0x00, 0x00, 0x00, 0x1E, // jitter
        0x3C, 0x5A, 0x8E, 0x35, // LSR
        0x00, 0x00, 0x80, 0x00, // DLSR 0.5 s
    ];
    p.extend_from_slice(&[0x81, 0xCA, 0x00, 0x06, 0x5F, 0x4A, 0x2B, 0x1C, 0x01, 0x10]);
    p.extend_from_slice(b"abcdefghijklmnop");
    p.extend_from_slice(&[0, 0]);
    p
}

fn expected_block() -> ReportBlock {
    ReportBlock {
        ssrc: Ssrc::new(0x1122_3344),
        fraction_lost: 0x10,
        cumulative_lost: -2,
        highest_seq: 0x0001_0010,
        jitter: 30,
        lsr: 0x3C5A_8E35,
        dlsr: 0x8000,
    }
}

#[test]
fn parses_sr_sdes_compound() {
    let p = sr_sdes();
    let packets: Vec<_> = iter(&p).collect::<Result<_, _>>().unwrap();
    assert_eq!(packets.len(), 2);
    let RtcpPacket::SenderReport(sr) = packets[0] else {
        panic!("expected SR, got {:?}", packets[0]);
    };
    assert_eq!(sr.ssrc.get(), 0x5F4A_2B1C);
    assert_eq!(sr.ntp, 0xE81F_3C5A_8E35_3F7C);
    assert_eq!(sr.rtp_ts.get(), 0x0012_D687);
    assert_eq!(sr.packet_count, 250);
    assert_eq!(sr.octet_count, 40_000);
    assert_eq!(sr.reports.len(), 1);
    assert_eq!(sr.reports.collect::<Vec<_>>(), vec![expected_block()]);
    assert_eq!(
        packets[1],
        RtcpPacket::SourceDescription {
            chunk_count: 1,
            ssrc: Some(Ssrc::new(0x5F4A_2B1C))
        }
    );
}

#[test]
fn writers_reproduce_the_compound() {
    let p = sr_sdes();
    let mut buf = [0u8; 128];
    let n = write_sr(
        &mut buf,
        Ssrc::new(0x5F4A_2B1C),
        0xE81F_3C5A_8E35_3F7C,
        RtpTs::new(0x0012_D687),
        250,
        40_000,
        &[expected_block()],
    )
    .unwrap();
    let m = write_sdes_cname(&mut buf[n..], Ssrc::new(0x5F4A_2B1C), b"abcdefghijklmnop").unwrap();
    assert_eq!(&buf[..n + m], &p[..]);
}

#[test]
fn rr_bye_and_sdes_round_trip() {
    let mut buf = [0u8; 256];
    let blocks = [
        expected_block(),
        ReportBlock {
            ssrc: Ssrc::new(7),
            cumulative_lost: 0x7F_FFFF,
            ..Default::default()
        },
    ];
    let mut n = write_rr(&mut buf, Ssrc::new(99), &blocks).unwrap();
    for cname_len in [0usize, 1, 2, 3, 4, 255] {
        let cname = vec![b'x'; cname_len];
        let m = write_sdes_cname(&mut buf[n..], Ssrc::new(99), &cname).unwrap();
        assert_eq!(m % 4, 0);
        assert!(buf[n + 10 + cname_len..n + m].iter().all(|b| *b == 0));
        n += m;
        if cname_len == 4 {
            break; // 255 is checked separately below for buffer space
        }
    }
    n += write_bye(&mut buf[n..], Ssrc::new(99)).unwrap();
    let packets: Vec<_> = iter(&buf[..n]).collect::<Result<_, _>>().unwrap();
    assert_eq!(packets.len(), 7);
    let RtcpPacket::ReceiverReport { ssrc, reports } = packets[0] else {
        panic!("expected RR");
    };
    assert_eq!(ssrc.get(), 99);
    assert_eq!(reports.collect::<Vec<_>>(), blocks.to_vec());
    let RtcpPacket::Bye { ssrcs } = packets[6] else {
        panic!("expected BYE");
    };
    assert_eq!(ssrcs.collect::<Vec<_>>(), vec![Ssrc::new(99)]);

    let mut big = [0u8; 300];
    let m = write_sdes_cname(&mut big, Ssrc::new(1), &[b'y'; 255]).unwrap();
    assert_eq!(m, 4 + 264);
    assert_eq!(
        write_sdes_cname(&mut big, Ssrc::new(1), &[b'y'; 256]),
        Err(RtcpError::CnameTooLong(256))
    );
}

#[test]
fn writers_check_sizes() {
    let mut small = [0u8; 27];
    assert_eq!(
        write_sr(&mut small, Ssrc::new(1), 0, RtpTs::new(0), 0, 0, &[]),
        Err(RtcpError::BufferTooSmall)
    );
    assert_eq!(
        write_sr(&mut [0u8; 28], Ssrc::new(1), 0, RtpTs::new(0), 0, 0, &[]),
        Ok(28)
    );
    assert_eq!(
        write_rr(&mut [0u8; 31], Ssrc::new(1), &[ReportBlock::default()]),
        Err(RtcpError::BufferTooSmall)
    );
    assert_eq!(
        write_rr(
            &mut [0u8; 2048],
            Ssrc::new(1),
            &[ReportBlock::default(); 32]
        ),
        Err(RtcpError::TooManyReports(32))
    );
    assert_eq!(
        write_bye(&mut [0u8; 7], Ssrc::new(1)),
        Err(RtcpError::BufferTooSmall)
    );
}

#[test]
fn feedback_app_and_unknown_types() {
    let p = [
        0x81, 205, 0x00, 0x02, 0, 0, 0, 1, 0, 0, 0, 2, // generic NACK header only
        0x81, 206, 0x00, 0x02, 0, 0, 0, 3, 0, 0, 0, 4, // PLI
        0x82, 204, 0x00, 0x03, 0, 0, 0, 5, b'W', b'A', b'X', b'X', 9, 9, 9, 9, // APP
        0x80, 207, 0x00, 0x01, 0, 0, 0, 6, // XR
    ];
    let packets: Vec<_> = iter(&p).collect::<Result<_, _>>().unwrap();
    assert_eq!(
        packets,
        vec![
            RtcpPacket::TransportFeedback {
                fmt: 1,
                sender_ssrc: Ssrc::new(1),
                media_ssrc: Ssrc::new(2)
            },
            RtcpPacket::PayloadFeedback {
                fmt: 1,
                sender_ssrc: Ssrc::new(3),
                media_ssrc: Ssrc::new(4)
            },
            RtcpPacket::App {
                subtype: 2,
                ssrc: Ssrc::new(5),
                name: *b"WAXX",
                data: &[9, 9, 9, 9]
            },
            RtcpPacket::Other {
                packet_type: 207,
                count: 0,
                body: &[0, 0, 0, 6]
            },
        ]
    );
}

#[test]
fn padding_on_last_packet() {
    let mut p = vec![0x80, 0xC9, 0x00, 0x01, 0, 0, 0, 1]; // empty RR
    p.extend_from_slice(&[0xA0, 0xCB, 0x00, 0x02, 0, 0, 0, 0, 0, 0, 0, 4]); // BYE, P, 4 pad
    let packets: Vec<_> = iter(&p).collect::<Result<_, _>>().unwrap();
    let RtcpPacket::Bye { ssrcs } = packets[1] else {
        panic!("expected BYE");
    };
    assert_eq!(ssrcs.count(), 0);
    let last = p.len() - 1;
    p[last] = 9;
    assert!(matches!(
        iter(&p).nth(1),
        Some(Err(RtcpError::BadPadding { offset: 8 }))
    ));
}

#[test]
fn malformed_compounds_error_and_stop() {
    let p = sr_sdes();
    // Cut inside the SDES: its length field points beyond the buffer.
    let mut it = iter(&p[..60]);
    assert!(matches!(it.next(), Some(Ok(RtcpPacket::SenderReport(_)))));
    assert!(matches!(
        it.next(),
        Some(Err(RtcpError::LengthBeyondBuffer { offset: 52, .. }))
    ));
    assert!(it.next().is_none());
    // Trailing bytes too short for a header.
    let mut q = p.clone();
    q.extend_from_slice(&[0x80, 0xC9]);
    assert!(matches!(
        iter(&q).last(),
        Some(Err(RtcpError::TruncatedHeader { remaining: 2, .. }))
    ));
    // Bad version.
    let mut v = p.clone();
    v[0] = 0x41;
    assert!(matches!(
        iter(&v).next(),
        Some(Err(RtcpError::BadVersion { version: 1, .. }))
    ));
    // Length field 0 on an SR: a 4-byte packet cannot hold the sender info.
    let zero = [0x80, 0xC8, 0x00, 0x00, 0x80, 0xC8, 0x00, 0x00];
    let results: Vec<_> = iter(&zero).collect();
    assert_eq!(results.len(), 1);
    assert!(matches!(results[0], Err(RtcpError::BodyTooShort { .. })));
    // RC claims more report blocks than the length holds.
    let mut rc = p.clone();
    rc[0] = 0x82;
    assert!(matches!(
        iter(&rc).next(),
        Some(Err(RtcpError::BodyTooShort {
            packet_type: SR,
            ..
        }))
    ));
    // Zero-length unknown packets: each advances by 4 bytes, so iteration ends.
    let zeros = [0x80, 0xD0, 0, 0].repeat(1000);
    assert_eq!(iter(&zeros).count(), 1000);
    assert!(iter(&[]).next().is_none());
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = StdRng::seed_from_u64(4585);
    let mut buf = [0u8; 128];
    for _ in 0..20_000 {
        let len = rng.random_range(0..buf.len());
        rng.fill(&mut buf[..len]);
        if len > 0 {
            buf[0] = (buf[0] & 0x3F) | 0x80;
        }
        let mut steps = 0;
        for item in iter(&buf[..len]) {
            steps += 1;
            if let Ok(RtcpPacket::SenderReport(sr)) = item {
                let _ = sr.reports.count();
            }
        }
        assert!(steps <= len / 4 + 1);
    }
}

#[test]
fn ntp_and_rtt() {
    let t = UNIX_EPOCH + Duration::from_millis(1500);
    assert_eq!(
        ntp_from_system_time(t),
        (2_208_988_801u64 << 32) | 0x8000_0000
    );
    assert_eq!(ntp_middle32(0x1234_5678_9ABC_DEF0), 0x5678_9ABC);
    // SR sent at 1 s, answered with DLSR 1.5 s, received at 3 s: RTT 0.5 s.
    assert_eq!(
        rtt_from_report(0x0003_0000, 0x0001_0000, 0x0001_8000),
        Some(Duration::from_millis(500))
    );
    assert_eq!(rtt_from_report(0x0003_0000, 0, 0x0001_8000), None);
    // DLSR longer than the time since the SR: impossible, no RTT.
    assert_eq!(rtt_from_report(0x0002_0000, 0x0001_0000, 0x0001_8000), None);
    // Wrapping of the middle 32 bits.
    assert_eq!(
        rtt_from_report(0x0000_8000, 0xFFFF_8000, 0x0000_8000),
        Some(Duration::from_millis(500))
    );
}
