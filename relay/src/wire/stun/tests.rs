use super::*;
use rand::{Rng, SeedableRng, rngs::StdRng};

/// RFC 5769 §2.1 sample request (short-term credentials).
const REQ: [u8; 108] = [
    0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73,
    0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x01, 0xff,
    0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36, 0x00, 0x06, 0x00, 0x09,
    0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20, 0x20, 0x00, 0x08, 0x00, 0x14,
    0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e, 0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49,
    0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
];

/// RFC 5769 §2.2 sample IPv4 response.
const RESP_V4: [u8; 80] = [
    0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63,
    0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43,
    0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3, 0x8c, 0x74, 0x89, 0xf9,
    0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00, 0x04, 0xc0, 0x7d, 0x4c, 0x96,
];

/// RFC 5769 §2.3 sample IPv6 response.
const RESP_V6: [u8; 92] = [
    0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63,
    0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa,
    0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9, 0x00, 0x08, 0x00, 0x14,
    0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9, 0x7c, 0x82, 0x92, 0xc2, 0x75,
    0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb, 0x0b, 0x4c,
];

/// RFC 5769 §2.4 sample request with long-term credentials.
const REQ_LONG_TERM: [u8; 116] = [
    0x00, 0x01, 0x00, 0x60, 0x21, 0x12, 0xa4, 0x42, 0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0,
    0x29, 0xda, 0x41, 0x2e, 0x00, 0x06, 0x00, 0x12, 0xe3, 0x83, 0x9e, 0xe3, 0x83, 0x88, 0xe3, 0x83,
    0xaa, 0xe3, 0x83, 0x83, 0xe3, 0x82, 0xaf, 0xe3, 0x82, 0xb9, 0x00, 0x00, 0x00, 0x15, 0x00, 0x1c,
    0x66, 0x2f, 0x2f, 0x34, 0x39, 0x39, 0x6b, 0x39, 0x35, 0x34, 0x64, 0x36, 0x4f, 0x4c, 0x33, 0x34,
    0x6f, 0x4c, 0x39, 0x46, 0x53, 0x54, 0x76, 0x79, 0x36, 0x34, 0x73, 0x41, 0x00, 0x14, 0x00, 0x0b,
    0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x6f, 0x72, 0x67, 0x00, 0x00, 0x08, 0x00, 0x14,
    0xf6, 0x70, 0x24, 0x65, 0x6d, 0xd6, 0x4a, 0x3e, 0x02, 0xb8, 0xe0, 0x71, 0x2e, 0x85, 0xc9, 0xa2,
    0x8c, 0xa8, 0x96, 0x66,
];

const TID: [u8; 12] = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];
const PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

#[test]
fn rfc5769_request_parses_and_verifies() {
    let msg = parse(&REQ).unwrap();
    assert_eq!(msg.class(), StunClass::Request);
    assert_eq!(msg.method(), BINDING);
    assert_eq!(msg.transaction_id(), TID);
    assert_eq!(msg.username(), Some(&b"evtj:h6vY"[..]));
    assert_eq!(msg.software(), Some(&b"STUN test client"[..]));
    assert_eq!(msg.priority(), Some(0x6e00_01ff));
    assert_eq!(msg.ice_controlled(), Some(0x932f_f9b1_5126_3b36));
    assert_eq!(msg.ice_controlling(), None);
    assert!(!msg.use_candidate());
    assert!(msg.has_fingerprint());
    assert!(msg.check_fingerprint());
    assert!(msg.verify_integrity(PASSWORD));
    assert!(!msg.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBu"));
    assert_eq!(msg.unknown_comprehension_required(), None);
}

#[test]
fn rfc5769_ipv4_response_parses_and_verifies() {
    let msg = parse(&RESP_V4).unwrap();
    assert_eq!(msg.class(), StunClass::SuccessResponse);
    assert_eq!(msg.method(), BINDING);
    assert_eq!(msg.transaction_id(), TID);
    assert_eq!(msg.software(), Some(&b"test vector"[..]));
    assert_eq!(
        msg.xor_mapped_address(),
        Some("192.0.2.1:32853".parse().unwrap())
    );
    assert!(msg.check_fingerprint());
    assert!(msg.verify_integrity(PASSWORD));
}

#[test]
fn rfc5769_ipv6_response_parses_and_verifies() {
    let msg = parse(&RESP_V6).unwrap();
    assert_eq!(msg.class(), StunClass::SuccessResponse);
    assert_eq!(
        msg.xor_mapped_address(),
        Some(
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                .parse()
                .unwrap()
        )
    );
    assert!(msg.check_fingerprint());
    assert!(msg.verify_integrity(PASSWORD));
}

#[test]
fn rfc5769_long_term_request_verifies_with_md5_key() {
    let msg = parse(&REQ_LONG_TERM).unwrap();
    assert_eq!(msg.username(), Some("マトリックス".as_bytes()));
    assert!(!msg.has_fingerprint());
    assert!(!msg.check_fingerprint());
    // MD5("マトリックス:example.org:TheMatrIX"), computed with md5sum.
    let key = [
        0xe8, 0xca, 0x7a, 0xd5, 0x9d, 0x5e, 0xb0, 0x51, 0x8e, 0x31, 0x29, 0x11, 0xd2, 0xda, 0xb2,
        0xa9,
    ];
    assert!(msg.verify_integrity(&key));
}

#[test]
fn writer_reproduces_rfc5769_request() {
    let mut buf = [0u8; 200];
    let mut w = StunWriter::new(&mut buf, StunClass::Request, BINDING, TID).unwrap();
    w.padding_byte(b' ')
        .software(b"STUN test client")
        .unwrap()
        .priority(0x6e00_01ff)
        .unwrap()
        .ice_controlled(0x932f_f9b1_5126_3b36)
        .unwrap()
        .username(b"evtj:h6vY")
        .unwrap();
    let len = w.finish(Some(PASSWORD), true).unwrap();
    assert_eq!(&buf[..len], &REQ[..]);
}

#[test]
fn writer_reproduces_rfc5769_responses() {
    for (vector, mapped) in [
        (&RESP_V4[..], "192.0.2.1:32853"),
        (&RESP_V6[..], "[2001:db8:1234:5678:11:2233:4455:6677]:32853"),
    ] {
        let mut buf = [0u8; 200];
        let mut w = StunWriter::new(&mut buf, StunClass::SuccessResponse, BINDING, TID).unwrap();
        w.padding_byte(b' ')
            .software(b"test vector")
            .unwrap()
            .xor_mapped_address(mapped.parse().unwrap())
            .unwrap();
        let len = w.finish(Some(PASSWORD), true).unwrap();
        assert_eq!(&buf[..len], vector);
    }
}

#[test]
fn writer_round_trips_ice_attributes() {
    let mut buf = [0u8; 256];
    let mut w = StunWriter::new(&mut buf, StunClass::ErrorResponse, BINDING, [9; 12]).unwrap();
    w.username(b"abcd:efgh")
        .unwrap()
        .priority(1_845_501_695)
        .unwrap()
        .use_candidate()
        .unwrap()
        .ice_controlling(u64::MAX - 1)
        .unwrap()
        .error_code(487, "Role Conflict")
        .unwrap();
    let len = w.finish(Some(b"pw"), true).unwrap();
    let msg = parse(&buf[..len]).unwrap();
    assert_eq!(msg.class(), StunClass::ErrorResponse);
    assert_eq!(msg.method(), BINDING);
    assert_eq!(msg.transaction_id(), [9; 12]);
    assert_eq!(msg.username(), Some(&b"abcd:efgh"[..]));
    assert_eq!(msg.priority(), Some(1_845_501_695));
    assert!(msg.use_candidate());
    assert_eq!(msg.ice_controlling(), Some(u64::MAX - 1));
    assert_eq!(msg.error_code(), Some((487, &b"Role Conflict"[..])));
    assert!(msg.verify_integrity(b"pw"));
    assert!(msg.check_fingerprint());
}

#[test]
fn message_types_encode_and_decode() {
    for (class, bytes) in [
        (StunClass::Request, 0x0001),
        (StunClass::Indication, 0x0011),
        (StunClass::SuccessResponse, 0x0101),
        (StunClass::ErrorResponse, 0x0111),
    ] {
        assert_eq!(encode_type(class, BINDING), bytes);
        assert_eq!(decode_type(bytes), (class, BINDING));
    }
    assert_eq!(
        decode_type(encode_type(StunClass::Request, 0x0ABC)),
        (StunClass::Request, 0x0ABC)
    );
}

#[test]
fn integrity_without_fingerprint_and_neither() {
    let mut buf = [0u8; 128];
    let mut w = StunWriter::new(&mut buf, StunClass::Request, BINDING, [1; 12]).unwrap();
    w.username(b"u:v").unwrap();
    let len = w.finish(Some(b"key"), false).unwrap();
    let msg = parse(&buf[..len]).unwrap();
    assert!(msg.verify_integrity(b"key"));
    assert!(!msg.has_fingerprint());

    let w = StunWriter::new(&mut buf, StunClass::Indication, BINDING, [1; 12]).unwrap();
    let len = w.finish(None, false).unwrap();
    assert_eq!(len, HEADER_LEN);
    let msg = parse(&buf[..len]).unwrap();
    assert_eq!(msg.class(), StunClass::Indication);
    assert!(!msg.verify_integrity(b"key"));
}

#[test]
fn tampering_breaks_integrity_and_fingerprint() {
    let mut req = REQ;
    req[30] ^= 1; // inside SOFTWARE
    let msg = parse(&req).unwrap();
    assert!(!msg.verify_integrity(PASSWORD));
    assert!(!msg.check_fingerprint());
}

#[test]
fn attributes_after_integrity_are_ignored() {
    let mut buf = [0u8; 128];
    let mut w = StunWriter::new(&mut buf, StunClass::Request, BINDING, [2; 12]).unwrap();
    w.username(b"a:b").unwrap();
    let len = w.finish(Some(b"k"), false).unwrap();
    // Append PRIORITY after MESSAGE-INTEGRITY by hand and fix the length field.
    buf[len..len + 8].copy_from_slice(&[0x00, 0x24, 0x00, 0x04, 0, 0, 0, 5]);
    let total = len + 8;
    buf[2..4].copy_from_slice(&((total - HEADER_LEN) as u16).to_be_bytes());
    let msg = parse(&buf[..total]).unwrap();
    assert_eq!(msg.priority(), None);
    assert!(msg.verify_integrity(b"k"));
}

#[test]
fn unknown_attributes() {
    let mut buf = [0u8; 128];
    let mut w = StunWriter::new(&mut buf, StunClass::Request, BINDING, [3; 12]).unwrap();
    w.attribute(0xC001, b"optional").unwrap();
    let len = w.finish(None, true).unwrap();
    assert_eq!(
        parse(&buf[..len]).unwrap().unknown_comprehension_required(),
        None
    );

    let mut w = StunWriter::new(&mut buf, StunClass::Request, BINDING, [3; 12]).unwrap();
    w.attribute(0x7001, b"required").unwrap();
    let len = w.finish(None, true).unwrap();
    assert_eq!(
        parse(&buf[..len]).unwrap().unknown_comprehension_required(),
        Some(0x7001)
    );
}

#[test]
fn malformed_headers_are_rejected() {
    assert_eq!(parse(&REQ[..19]).unwrap_err(), StunError::TooShort(19));
    let mut m = REQ;
    m[0] |= 0x40;
    assert_eq!(parse(&m).unwrap_err(), StunError::NotStun);
    let mut m = REQ;
    m[4] = 0;
    assert!(matches!(parse(&m), Err(StunError::BadMagicCookie(_))));
    // Length not matching the datagram, either way.
    assert!(matches!(
        parse(&REQ[..104]),
        Err(StunError::BadLength { .. })
    ));
    let mut longer = REQ.to_vec();
    longer.extend_from_slice(&[0; 4]);
    assert!(matches!(parse(&longer), Err(StunError::BadLength { .. })));
    // Length not a multiple of 4.
    let mut m = REQ;
    m[3] = 0x57;
    assert!(matches!(parse(&m[..107]), Err(StunError::BadLength { .. })));
}

#[test]
fn malformed_attributes_are_rejected() {
    // SOFTWARE claims 0x40 bytes: overruns.
    let mut m = REQ;
    m[23] = 0xFF;
    assert!(matches!(
        parse(&m),
        Err(StunError::AttributeOverrun { typ: 0x8022, .. })
    ));
    // PRIORITY with 3 bytes (and padding) is malformed.
    let mut m = REQ;
    m[43] = 3;
    assert!(matches!(
        parse(&m),
        Err(StunError::BadAttribute { typ: 0x0024, .. })
    ));
    // FINGERPRINT not last: swap in a request with something after it.
    let mut buf = [0u8; 64];
    let w = StunWriter::new(&mut buf, StunClass::Request, BINDING, [4; 12]).unwrap();
    let len = w.finish(None, true).unwrap();
    buf[len..len + 4].copy_from_slice(&[0x00, 0x25, 0x00, 0x00]);
    buf[2..4].copy_from_slice(&((len + 4 - HEADER_LEN) as u16).to_be_bytes());
    assert!(matches!(
        parse(&buf[..len + 4]),
        Err(StunError::AfterFingerprint { typ: 0x0025 })
    ));
    // XOR-MAPPED-ADDRESS with an unknown family.
    let mut m = RESP_V4;
    m[41] = 3;
    assert!(matches!(
        parse(&m),
        Err(StunError::BadAttribute { typ: 0x0020, .. })
    ));
}

#[test]
fn writer_reports_small_buffers() {
    let mut tiny = [0u8; 10];
    assert!(matches!(
        StunWriter::new(&mut tiny, StunClass::Request, BINDING, [0; 12]),
        Err(StunError::BufferTooSmall)
    ));
    let mut buf = [0u8; 40];
    let mut w = StunWriter::new(&mut buf, StunClass::Request, BINDING, [0; 12]).unwrap();
    assert!(matches!(
        w.username(&[b'x'; 30]),
        Err(StunError::BufferTooSmall)
    ));
    w.username(b"ab:cd").unwrap();
    // 20 + 12 used; MESSAGE-INTEGRITY needs 24 more.
    assert_eq!(w.finish(Some(b"k"), false), Err(StunError::BufferTooSmall));
    let mut buf = [0u8; 40];
    let mut w = StunWriter::new(&mut buf, StunClass::Request, BINDING, [0; 12]).unwrap();
    assert_eq!(
        w.error_code(200, "nope").err(),
        Some(StunError::InvalidErrorCode(200))
    );
}

#[test]
fn truncations_and_random_bytes_never_panic() {
    let mut rng = StdRng::seed_from_u64(5769);
    for vector in [&REQ[..], &RESP_V4[..], &RESP_V6[..], &REQ_LONG_TERM[..]] {
        for cut in 0..vector.len() {
            // Every strict prefix is invalid: the length field no longer matches.
            assert!(parse(&vector[..cut]).is_err());
        }
        // Single-byte corruption anywhere: any result is fine, a panic is not.
        for i in 0..vector.len() {
            let mut m = vector.to_vec();
            m[i] = rng.random();
            if let Ok(msg) = parse(&m) {
                let _ = (msg.verify_integrity(PASSWORD), msg.check_fingerprint());
                let _ = (msg.username(), msg.error_code(), msg.xor_mapped_address());
            }
        }
    }
    let mut buf = [0u8; 128];
    for _ in 0..20_000 {
        let len = rng.random_range(0..buf.len());
        rng.fill(&mut buf[..len]);
        if rng.random_bool(0.5) && len >= HEADER_LEN {
            // Make the header plausible so the attribute walk is exercised.
            buf[0] &= 0x3F;
            buf[2..4].copy_from_slice(&((len - HEADER_LEN) as u16 & !3).to_be_bytes());
            buf[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        }
        let _ = is_stun(&buf[..len]);
        if let Ok(msg) = parse(&buf[..len]) {
            let _ = (msg.verify_integrity(b"k"), msg.check_fingerprint());
            let _ = (msg.username(), msg.error_code(), msg.software());
        }
    }
}
