//! Hostile and broken input: each rejection names the right line, nothing panics, and the
//! cost of a document is bounded. Ends with a randomized mutation loop over valid offers.

use relay::sdp::{self, LocalDescription, LocalIce, LocalSecurity, SdpError, WaLocalParams};
use relay::wire::rtp::Ssrc;

const WA_USER_OFFER: &str = include_str!("fixtures/sdp/wa_user_offer.sdp");
const WA_DOCS_OFFER: &str = include_str!("fixtures/sdp/wa_docs_offer.sdp");
const META_ANSWER: &str = include_str!("fixtures/sdp/meta_answer.sdp");
const BROWSER_OFFER: &str = include_str!("fixtures/sdp/browser_offer.sdp");
const WA_SIP_SDES_OFFER: &str = include_str!("fixtures/sdp/wa_sip_sdes_offer.sdp");
const INTERNAL_PLAIN_RTP: &str = include_str!("fixtures/sdp/internal_plain_rtp.sdp");

/// 1-based number of the first line starting with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    1 + text
        .lines()
        .position(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starts with {prefix:?}"))
}

/// Replace the line starting with `prefix` by `with`.
fn replace_line(text: &str, prefix: &str, with: &str) -> String {
    text.lines()
        .map(|l| if l.starts_with(prefix) { with } else { l })
        .collect::<Vec<_>>()
        .join("\r\n")
        + "\r\n"
}

fn parse_err(text: &str) -> SdpError {
    match sdp::parse(text) {
        Ok(sd) => panic!("accepted: {sd:?}"),
        Err(e) => e,
    }
}

#[test]
fn missing_m_line() {
    let cut = &WA_USER_OFFER[..WA_USER_OFFER.find("m=audio").unwrap()];
    let e = parse_err(cut);
    assert_eq!(e.line, 0);
    assert!(e.reason.contains("m=audio"), "{e}");
}

#[test]
fn missing_v_and_o_lines() {
    let e = parse_err(WA_USER_OFFER.strip_prefix("v=0\n").unwrap());
    assert_eq!(
        (e.line, e.text.as_str()),
        (1, "o=- 1718291736428377409 2 IN IP4 127.0.0.1")
    );
    let no_origin = replace_line(WA_USER_OFFER, "o=", "");
    let e = parse_err(&no_origin);
    assert_eq!(e.line, line_of(&no_origin, "m="), "{e}");
    assert!(parse_err("").line == 0 && parse_err("\r\n\r\n  \n").line == 0);
    assert_eq!(parse_err("v=1\r\n").line, 1);
}

#[test]
fn second_active_audio_line() {
    let text = format!("{WA_USER_OFFER}m=audio 3482 UDP/TLS/RTP/SAVPF 111\na=mid:b\n");
    let e = parse_err(&text);
    assert_eq!(e.line, WA_USER_OFFER.lines().count() + 1, "{e}");
    assert!(e.reason.contains("second active m=audio"));
    // A disabled (port 0) one is fine, and so is a disabled video stream.
    let ok =
        format!("{WA_USER_OFFER}m=audio 0 UDP/TLS/RTP/SAVPF 111\nm=video 0 RTP/AVP 96\na=junk\n");
    assert!(sdp::parse(&ok).is_ok());
}

#[test]
fn active_video_or_data_is_refused() {
    for m in [
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    ] {
        let text = format!("{WA_USER_OFFER}{m}\n");
        let e = parse_err(&text);
        assert_eq!(e.line, WA_USER_OFFER.lines().count() + 1, "{e}");
    }
}

#[test]
fn bad_ports() {
    for bad in [
        "m=audio 70000 UDP/TLS/RTP/SAVPF 111 126",
        "m=audio -1 UDP/TLS/RTP/SAVPF 111 126",
        "m=audio 3480/2 UDP/TLS/RTP/SAVPF 111 126",
        "m=audio x UDP/TLS/RTP/SAVPF 111 126",
    ] {
        let text = replace_line(WA_USER_OFFER, "m=audio", bad);
        let e = parse_err(&text);
        assert_eq!((e.line, e.text.as_str()), (7, bad), "{e}");
    }
    let text = replace_line(WA_USER_OFFER, "a=rtcp:", "a=rtcp:65536 IN IP4 192.0.2.1");
    assert_eq!(parse_err(&text).line, 9);
}

#[test]
fn bad_payload_types_and_protocols() {
    let cases = [
        ("m=audio", "m=audio 3480 UDP/TLS/RTP/SAVPF 111 128"),
        ("m=audio", "m=audio 3480 UDP/TLS/RTP/SAVPF"),
        ("m=audio", "m=audio 3480 TCP/TLS/RTP/SAVPF 111"),
        ("m=audio", "m=audio 3480 UDP/DTLS/SCTP 111"),
        ("a=rtpmap:111", "a=rtpmap:200 opus/48000/2"),
        ("a=rtpmap:111", "a=rtpmap:111 opus/0/2"),
        ("a=rtpmap:126", "a=rtpmap:111 telephone-event/8000"),
        ("a=fmtp:111", "a=fmtp:x minptime=20"),
        ("a=ptime", "a=ptime:twenty"),
        ("a=setup", "a=setup:sideways"),
        ("a=ice-ufrag", "a=ice-ufrag:has space"),
        ("a=mid", "a=mid:"),
        ("a=ssrc", "a=ssrc:-5 cname:x"),
    ];
    for (prefix, bad) in cases {
        let want = line_of(WA_USER_OFFER, prefix);
        let e = parse_err(&replace_line(WA_USER_OFFER, prefix, bad));
        assert_eq!(e.line, want, "{bad}: {e}");
    }
}

#[test]
fn bad_fingerprints() {
    let no = line_of(WA_USER_OFFER, "a=fingerprint");
    let good = "11:8F:98:37:73:B7:7B:57:51:DD:B7:48:45:3A:12:73:1A:26:34:1C:CB:EF:9C:0D:E2:91:7A:C7:21:1E:3F:7F";
    for bad in [
        good.replacen("11", "1G", 1),
        good.replacen("11:", "11::", 1),
        good.replacen("11", "111", 1),
        good[3..].to_string(), // 31 bytes
        format!("{good}:00"),  // 33 bytes
    ] {
        let text = replace_line(
            WA_USER_OFFER,
            "a=fingerprint",
            &format!("a=fingerprint:sha-256 {bad}"),
        );
        let e = parse_err(&text);
        assert_eq!(e.line, no, "{e}");
    }
}

#[test]
fn sha1_fingerprint_only_is_refused_by_the_whatsapp_leg() {
    let no = line_of(WA_USER_OFFER, "a=fingerprint");
    let sha1 = "a=fingerprint:sha-1 D8:50:93:D6:12:52:50:62:B5:25:90:46:36:45:BF:03:2B:29:F1:61";
    let sd = sdp::parse(&replace_line(WA_USER_OFFER, "a=fingerprint", sha1)).unwrap();
    let e = sdp::validate_wa_offer(&sd).unwrap_err();
    assert_eq!(e.line, no, "{e}");
    assert!(e.reason.contains("sha-256"));

    // With a sha-256 line as well, the sha-256 one is used whatever the order.
    let both = WA_USER_OFFER.replace("a=setup:actpass", &format!("{sha1}\na=setup:actpass"));
    let sd = sdp::parse(&both).unwrap();
    assert!(sd.fingerprint().unwrap().is_sha256());
    assert!(sdp::validate_wa_offer(&sd).is_ok());
}

#[test]
fn bad_candidates() {
    let no = line_of(WA_USER_OFFER, "a=candidate");
    for bad in [
        "a=candidate:1 1 udp 21222602x3 203.0.113.61 3480 typ host",
        "a=candidate:1 1 udp 4294967296 203.0.113.61 3480 typ host",
        "a=candidate:1 1 udp 2122260223 203.0.113.61 3480 host",
        "a=candidate:1 1 udp 2122260223 203.0.113.61 99999 typ host",
        "a=candidate:1 0 udp 2122260223 203.0.113.61 3480 typ host",
        "a=candidate:1 1 udp 2122260223 203.0.113.61",
        "a=candidate:1 1 udp 2122260223 203.0.113.61:3480 3480 typ host",
    ] {
        let e = parse_err(&replace_line(WA_USER_OFFER, "a=candidate", bad));
        assert_eq!(e.line, no, "{bad}: {e}");
    }
}

#[test]
fn only_unusable_candidates_fail_validation_on_the_m_line() {
    let mut text = WA_USER_OFFER.to_string();
    for l in WA_USER_OFFER
        .lines()
        .filter(|l| l.starts_with("a=candidate"))
    {
        text = text.replace(
            l,
            "a=candidate:9 1 tcp 1518280447 203.0.113.61 443 typ host tcptype passive",
        );
    }
    text = text.replace(
        "a=ice-ufrag",
        "a=candidate:8 1 udp 1 abc.local 5000 typ host\na=ice-ufrag",
    );
    let sd = sdp::parse(&text).unwrap();
    assert!(sd.audio.candidates.is_empty());
    let e = sdp::validate_wa_offer(&sd).unwrap_err();
    assert_eq!(e.line, line_of(&text, "m=audio"), "{e}");
}

#[test]
fn missing_dtls_pieces_name_the_m_line() {
    let m = line_of(WA_USER_OFFER, "m=audio");
    for drop in [
        "a=ice-ufrag",
        "a=ice-pwd",
        "a=fingerprint",
        "a=setup",
        "a=rtcp-mux",
        "a=rtpmap:111",
    ] {
        let sd = sdp::parse(&replace_line(WA_USER_OFFER, drop, "")).unwrap();
        let e = sdp::validate_wa_offer(&sd).unwrap_err();
        assert_eq!(e.line, m, "without {drop}: {e}");
    }
    let sd = sdp::parse(&replace_line(WA_USER_OFFER, "a=setup", "a=setup:holdconn")).unwrap();
    let e = sdp::validate_wa_offer(&sd).unwrap_err();
    assert_eq!(e.line, line_of(WA_USER_OFFER, "a=setup"));
}

#[test]
fn unusable_sdes_lines_name_the_first_crypto_line() {
    let first = line_of(WA_SIP_SDES_OFFER, "a=crypto:1");
    let text = WA_SIP_SDES_OFFER
        .replace("AEAD_AES_128_GCM", "F8_128_HMAC_SHA1_80")
        .replace("|2^31", "|2^31|1:4");
    let e = sdp::validate_wa_offer(&sdp::parse(&text).unwrap()).unwrap_err();
    assert_eq!(e.line, first, "{e}");
    assert!(e.reason.contains("F8_128_HMAC_SHA1_80"));
    assert!(!e.text.contains("QGOLALIE"), "errors never echo keys");

    // The first line unusable, the second fine: the second is chosen.
    let text = WA_SIP_SDES_OFFER.replace("AEAD_AES_128_GCM", "F8_128_HMAC_SHA1_80");
    let offer = sdp::validate_wa_offer(&sdp::parse(&text).unwrap()).unwrap();
    let sdp::WaTransport::Sdes(s) = offer.transport else {
        panic!()
    };
    assert_eq!(s.crypto.tag, 2);

    let no_crypto = replace_line(
        &replace_line(WA_SIP_SDES_OFFER, "a=crypto:1", ""),
        "a=crypto:2",
        "",
    );
    let e = sdp::validate_wa_offer(&sdp::parse(&no_crypto).unwrap()).unwrap_err();
    assert_eq!(e.line, line_of(&no_crypto, "m=audio"));
    let e = sdp::validate_internal(&sdp::parse(&no_crypto).unwrap()).unwrap_err();
    assert_eq!(e.line, line_of(&no_crypto, "m=audio"));
}

#[test]
fn huge_documents_and_lines_are_refused_up_front() {
    let ten_mb = format!(
        "{WA_USER_OFFER}{}",
        "a=x-padding:0123456789abcdef\n".repeat(350_000)
    );
    assert!(ten_mb.len() > 10_000_000);
    let e = parse_err(&ten_mb);
    assert_eq!(e.line, 0);
    assert!(e.reason.contains("limit"));
    assert_eq!(sdp::parse_bytes(ten_mb.as_bytes()).unwrap_err().line, 0);

    let long = format!("a=x-long:{}", "A".repeat(sdp::MAX_LINE_BYTES));
    let text = WA_USER_OFFER.replace("a=sendrecv", &long);
    let e = parse_err(&text);
    assert_eq!(e.line, line_of(WA_USER_OFFER, "a=sendrecv"));
    assert!(e.text.chars().count() <= 121, "error text is truncated");

    // Just under the limits is fine.
    let padded = format!(
        "{WA_USER_OFFER}{}",
        "a=x-padding:0123456789abcdef\n".repeat(2000)
    );
    assert!(padded.len() < sdp::MAX_SDP_BYTES);
    assert!(sdp::parse(&padded).is_ok());
}

#[test]
fn binary_garbage() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for len in [1usize, 2, 7, 64, 1000, 60_000] {
        let bytes: Vec<u8> = (0..len).map(|_| next(&mut state) as u8).collect();
        assert!(sdp::parse_bytes(&bytes).is_err());
        assert!(sdp::parse(&String::from_utf8_lossy(&bytes)).is_err());
    }
    assert!(sdp::parse_bytes(&[0u8; 100]).is_err());
    assert!(sdp::parse_bytes(b"\xff\xfe v=0").is_err());
}

#[test]
fn utf8_oddities() {
    // A byte-order mark is tolerated.
    assert!(sdp::parse(&format!("\u{feff}{WA_USER_OFFER}")).is_ok());
    // Invalid UTF-8 names its line.
    let mut bytes = WA_USER_OFFER.as_bytes().to_vec();
    let at = WA_USER_OFFER.find("a=mid:audio").unwrap() + 7;
    bytes[at] = 0xC3; // a lead byte followed by ASCII
    let e = sdp::parse_bytes(&bytes).unwrap_err();
    assert_eq!(e.line, line_of(WA_USER_OFFER, "a=mid"), "{e}");
    assert!(e.reason.contains("UTF-8"));

    let mid = line_of(WA_USER_OFFER, "a=mid");
    for bad in [
        "a＝mid:audio",        // fullwidth equals sign
        "á=mid:audio",         // non-ASCII type letter
        "a=mid:audió",         // non-ASCII token
        "a=mid:au\u{0}dio",    // NUL
        "a=mid:au\rdio",       // lone CR inside a line
        "a=mid:\u{202e}oidua", // right-to-left override
        "a=mid:\u{200b}",      // zero-width space
    ] {
        let e = parse_err(&replace_line(WA_USER_OFFER, "a=mid", bad));
        assert_eq!(e.line, mid, "{bad:?}: {e}");
        assert!(!e.text.chars().any(char::is_control));
    }
    // Free text (s=) may be any UTF-8.
    let sd = sdp::parse(&WA_USER_OFFER.replace("s=-", "s=Llamada ☎ \u{202e}")).unwrap();
    assert_eq!(sd.session_name, "Llamada ☎ \u{202e}");
}

// ---- Randomized mutation -----------------------------------------------------------------

/// xorshift64*: deterministic, so a failure reproduces from the printed seed.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn below(state: &mut u64, n: usize) -> usize {
    if n == 0 {
        0
    } else {
        (next(state) % n as u64) as usize
    }
}

const TOKENS: [&[u8]; 24] = [
    b":",
    b" ",
    b"\r",
    b"\n",
    b"\r\n",
    b"=",
    b"/",
    b"0",
    b"-1",
    b"4294967296",
    b"99999999999999999999",
    b"\0",
    "\u{feff}".as_bytes(),
    "é".as_bytes(),
    b"\xff",
    b"\xc3",
    b"a=",
    b"m=audio 1 RTP/AVP 0\n",
    b"typ",
    b"inline:",
    b"::",
    b"a=fingerprint:sha-256 ",
    b"a=candidate:1 1 udp 1 ::1 1 typ host\n",
    b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAAA\n",
];

fn lines_of(doc: &[u8]) -> Vec<Vec<u8>> {
    doc.split_inclusive(|b| *b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn mutate(doc: &mut Vec<u8>, s: &mut u64) {
    match below(s, 8) {
        0 => {
            let at = below(s, doc.len());
            let end = (at + 1 + below(s, 16)).min(doc.len());
            doc.drain(at..end);
        }
        1..=3 => {
            let mut lines = lines_of(doc);
            if lines.is_empty() {
                return;
            }
            let i = below(s, lines.len());
            match below(s, 3) {
                0 => {
                    let dup = lines[i].clone();
                    lines.insert(below(s, lines.len() + 1), dup);
                }
                1 => {
                    lines.remove(i);
                }
                _ => {
                    let j = below(s, lines.len());
                    lines.swap(i, j);
                }
            }
            *doc = lines.concat();
        }
        4 => {
            if !doc.is_empty() {
                let at = below(s, doc.len());
                doc[at] = next(s) as u8;
            }
        }
        5..=6 => {
            let token = TOKENS[below(s, TOKENS.len())];
            let at = below(s, doc.len() + 1);
            doc.splice(at..at, token.iter().copied());
        }
        _ => doc.truncate(below(s, doc.len() + 1)),
    }
}

fn our_params() -> WaLocalParams {
    WaLocalParams {
        session_id: 1,
        session_version: 1,
        connection: "192.0.2.1".parse().unwrap(),
        port: 40000,
        security: LocalSecurity::Dtls {
            ice: LocalIce {
                ufrag: "abcd".into(),
                pwd: "0123456789abcdefghijkl".into(),
                candidates: vec![("192.0.2.1:40000".parse().unwrap(), 2130706431)],
                end_of_candidates: true,
            },
            fingerprint: sdp::Fingerprint::sha256_of(b"cert"),
            setup: None,
        },
        ssrc: Some((Ssrc::new(1), "c".into())),
    }
}

/// What must hold for every input: no panic; errors point at a real, non-blank line and are
/// safe to log; whatever validates can be answered, and the answer re-parses and validates.
fn check(doc: &[u8], seed: u64) {
    match sdp::parse_bytes(doc) {
        Err(e) => {
            assert!(!e.text.chars().any(char::is_control), "seed {seed}: {e}");
            if e.line > 0 {
                let lines: Vec<&[u8]> = doc.split(|b| *b == b'\n').collect();
                let line = lines
                    .get(e.line - 1)
                    .unwrap_or_else(|| panic!("seed {seed}: {e} past the end"));
                assert!(
                    !String::from_utf8_lossy(line).trim().is_empty(),
                    "seed {seed}: {e} names a blank line"
                );
            }
        }
        Ok(sd) => {
            let _ = (
                sd.ice_credentials(),
                sd.fingerprint(),
                sd.setup(),
                sd.remote_rtp_addr(),
            );
            let _ = (sd.audio.opus_pt(), sd.audio.telephone_event_pt(8000));
            let _ = sdp::validate_internal(&sd);
            if let Ok(offer) = sdp::validate_wa_offer(&sd) {
                let params = match &offer.transport {
                    sdp::WaTransport::Dtls(_) => our_params(),
                    sdp::WaTransport::Sdes(remote) => WaLocalParams {
                        security: LocalSecurity::Sdes {
                            profile: remote.crypto.profile,
                            key_params: sdp::sdes_key_params(&remote.crypto.key),
                        },
                        ..our_params()
                    },
                };
                // We ask for the default DTLS role, which fits every role validation lets
                // through, and our key matches the chosen suite: an answer must come out.
                let answer = LocalDescription::wa_answer(&offer, params)
                    .unwrap_or_else(|e| panic!("seed {seed}: {e}"))
                    .to_sdp();
                let back =
                    sdp::parse(&answer).unwrap_or_else(|e| panic!("seed {seed}: {e}\n{answer}"));
                sdp::validate_wa_offer(&back)
                    .unwrap_or_else(|e| panic!("seed {seed}: {e}\n{answer}"));
            }
        }
    }
}

#[test]
fn randomized_mutations_never_panic() {
    let fixtures = [
        WA_USER_OFFER,
        WA_DOCS_OFFER,
        META_ANSWER,
        BROWSER_OFFER,
        WA_SIP_SDES_OFFER,
        INTERNAL_PLAIN_RTP,
    ];
    let mut accepted = 0usize;
    let mut runs = 0usize;
    for (f, fixture) in fixtures.iter().enumerate() {
        for crlf in [false, true] {
            let base = if crlf {
                fixture.replace('\n', "\r\n")
            } else {
                fixture.to_string()
            };
            for i in 0..2500u64 {
                let seed = (f as u64) << 40 | u64::from(crlf) << 32 | i;
                let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                let mut doc = base.as_bytes().to_vec();
                for _ in 0..1 + below(&mut s, 4) {
                    mutate(&mut doc, &mut s);
                }
                check(&doc, seed);
                accepted += usize::from(sdp::parse_bytes(&doc).is_ok());
                runs += 1;
            }
        }
    }
    // The mutations must leave many documents valid, or the loop only tests the first line.
    assert!(
        accepted > runs / 10,
        "{accepted} of {runs} mutated documents parsed"
    );
    assert!(accepted < runs, "some mutations must be rejected");
}

#[test]
fn ice_credentials_outside_rfc8839_are_refused_on_their_line() {
    let ufrag = line_of(WA_USER_OFFER, "a=ice-ufrag");
    let pwd = line_of(WA_USER_OFFER, "a=ice-pwd");
    let cases = [
        ("a=ice-ufrag", "a=ice-ufrag:ab:cd", ufrag, "':'"),
        ("a=ice-ufrag", "a=ice-ufrag:ab;cd", ufrag, "';'"),
        ("a=ice-ufrag", "a=ice-ufrag:ab=cd", ufrag, "'='"),
        ("a=ice-ufrag", "a=ice-ufrag:abc", ufrag, "4 to 256"),
        ("a=ice-ufrag", "a=ice-ufrag:abcé", ufrag, "'é'"),
        (
            "a=ice-pwd",
            "a=ice-pwd:fP3kq8Lw0zN2vXbY7sHc1t:m==",
            pwd,
            "':'",
        ),
        (
            "a=ice-pwd",
            "a=ice-pwd:fP3kq8Lw0zN2vXbY7sHc1t;m==",
            pwd,
            "';'",
        ),
        (
            "a=ice-pwd",
            "a=ice-pwd:fP3kq8Lw0zN2vX=bY7sHc1tRm=",
            pwd,
            "'='",
        ),
        (
            "a=ice-pwd",
            "a=ice-pwd:fP3kq8Lw0zN2vXbY7sHc1tRm===",
            pwd,
            "padding",
        ),
        ("a=ice-pwd", "a=ice-pwd:short+pwd/==", pwd, "22 to 256"),
    ];
    for (prefix, bad, line, why) in cases {
        let e = parse_err(&replace_line(WA_USER_OFFER, prefix, bad));
        assert_eq!(e.line, line, "{bad}: {e}");
        assert!(e.reason.contains(why), "{bad}: {e}");
    }
    let long = format!("a=ice-pwd:{}", "A".repeat(257));
    assert_eq!(
        parse_err(&replace_line(WA_USER_OFFER, "a=ice-pwd", &long)).line,
        pwd
    );
    // What Meta and browsers send: ice-char, '/' in the ufrag, '+' and "==" in the password,
    // exactly the minimum lengths.
    for (prefix, good) in [
        ("a=ice-ufrag", "a=ice-ufrag:Hk2/nB9q"),
        ("a=ice-ufrag", "a=ice-ufrag:a+/9"),
        ("a=ice-pwd", "a=ice-pwd:qEA+KCGezaoGknNYbpAADX"),
        ("a=ice-pwd", "a=ice-pwd:Q0sZl4vR8yT1uW6xC3eG5hJ=="),
    ] {
        let sd = sdp::parse(&replace_line(WA_USER_OFFER, prefix, good)).expect(good);
        assert!(sd.ice_credentials().is_some());
    }
}
