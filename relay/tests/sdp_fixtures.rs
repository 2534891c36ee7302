//! Parsing, validating and answering the SDP shapes the relay meets (see
//! `fixtures/sdp/README.md` for where each shape comes from), in LF and CRLF form.

use std::net::{IpAddr, SocketAddr};

use relay::sdp::{
    self, Direction, Fingerprint, InternalLocalParams, LocalDescription, LocalIce, LocalSecurity,
    META_OPUS_FMTP, MediaProto, SessionDescription, Setup, WaLocalParams, WaTransport,
};
use relay::srtp::{MasterKey, SrtpProfile};
use relay::wire::rtp::{Pt, Ssrc};

const WA_USER_OFFER: &str = include_str!("fixtures/sdp/wa_user_offer.sdp");
const WA_DOCS_OFFER: &str = include_str!("fixtures/sdp/wa_docs_offer.sdp");
const META_ANSWER: &str = include_str!("fixtures/sdp/meta_answer.sdp");
const BROWSER_OFFER: &str = include_str!("fixtures/sdp/browser_offer.sdp");
const WA_SIP_SDES_OFFER: &str = include_str!("fixtures/sdp/wa_sip_sdes_offer.sdp");
const INTERNAL_PLAIN_RTP: &str = include_str!("fixtures/sdp/internal_plain_rtp.sdp");

const ALL: [(&str, &str); 6] = [
    ("wa_user_offer", WA_USER_OFFER),
    ("wa_docs_offer", WA_DOCS_OFFER),
    ("meta_answer", META_ANSWER),
    ("browser_offer", BROWSER_OFFER),
    ("wa_sip_sdes_offer", WA_SIP_SDES_OFFER),
    ("internal_plain_rtp", INTERNAL_PLAIN_RTP),
];

/// Both line-ending forms of a fixture.
fn forms(text: &str) -> [String; 2] {
    [text.to_string(), text.replace('\n', "\r\n")]
}

fn parse_both(text: &str) -> SessionDescription {
    let [lf, crlf] = forms(text);
    let a = sdp::parse(&lf).unwrap_or_else(|e| panic!("LF form: {e}"));
    let b = sdp::parse(&crlf).unwrap_or_else(|e| panic!("CRLF form: {e}"));
    assert_eq!(a, b, "LF and CRLF forms parse the same");
    a
}

fn hex(s: &str) -> Vec<u8> {
    s.split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn every_fixture_parses_in_both_line_ending_forms() {
    for (name, text) in ALL {
        let sd = parse_both(text);
        assert_eq!(sd.audio.ptime.unwrap_or(20), 20, "{name}");
        assert!(sd.audio.opus_pt().is_some(), "{name} offers Opus");
    }
}

#[test]
fn capture_shaped_offer_extracts_everything_the_call_needs() {
    let sd = parse_both(WA_USER_OFFER);
    assert!(sd.ice_lite);
    assert_eq!(sd.bundle, vec!["audio"]);
    assert_eq!(
        sd.ice_credentials(),
        Some(("ZvQ1x/7rKd0mP2aL", "fP3kq8Lw0zN2vXbY7sHc1tRm=="))
    );

    let offer = sdp::validate_wa_offer(&sd).unwrap();
    assert_eq!(offer.proto, MediaProto::UdpTlsRtpSavpf);
    assert_eq!(offer.opus_pt, Pt::new(111));
    assert_eq!(offer.opus_fmtp.as_deref(), Some(META_OPUS_FMTP));
    assert_eq!(offer.telephone_event_pt, Some(Pt::new(126)));
    assert_eq!(offer.ptime, Some(20));
    assert_eq!(offer.mid.as_deref(), Some("audio"));
    assert!(offer.bundle && offer.rtcp_mux);
    assert_eq!(offer.direction, Direction::SendRecv);
    assert_eq!(offer.remote_ssrc, Some(Ssrc::new(2903755416)));
    assert_eq!(
        sd.audio.rtcp_fbs,
        vec![("111".to_string(), "transport-cc".to_string())]
    );
    assert_eq!(sd.audio.maxptime, Some(20));
    assert!(sd.audio.extmaps.is_empty());

    let WaTransport::Dtls(dtls) = offer.transport else {
        panic!("DTLS expected");
    };
    assert!(dtls.ice_lite);
    assert_eq!(dtls.ice_ufrag, "ZvQ1x/7rKd0mP2aL");
    assert_eq!(dtls.ice_pwd, "fP3kq8Lw0zN2vXbY7sHc1tRm==");
    assert_eq!(dtls.setup, Setup::ActPass);
    assert_eq!(
        dtls.fingerprint,
        Fingerprint {
            algorithm: "sha-256".into(),
            bytes: hex(
                "11:8F:98:37:73:B7:7B:57:51:DD:B7:48:45:3A:12:73:1A:26:34:1C:CB:EF:9C:0D:E2:91:7A:C7:21:1E:3F:7F"
            ),
        }
    );
    let addrs: Vec<SocketAddr> = dtls.candidates.iter().map(|c| c.addr).collect();
    assert_eq!(
        addrs,
        vec![
            addr("203.0.113.61:3480"),
            addr("[2001:db8:f27a:1c5:face:b00c:0:6c55]:3480")
        ]
    );
    assert_eq!(dtls.candidates[0].priority, 2122260223);
    assert_eq!(dtls.candidates[1].typ, "host");
}

#[test]
fn documentation_shaped_offer_with_extmap_and_session_level_values() {
    let sd = parse_both(WA_DOCS_OFFER);
    assert_eq!(sd.audio.extmaps.len(), 3);
    assert_eq!(
        sd.audio.extmaps[1],
        (
            2,
            "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time".into()
        )
    );
    // ICE credentials and fingerprint are at session level here; media level has none.
    assert!(sd.audio.ice_ufrag.is_none() && sd.audio.fingerprint.is_none());
    assert_eq!(
        sd.ice_credentials(),
        Some(("Hk2/nB9q", "Q0sZl4vR8yT1uW6xC3eG5hJ=="))
    );
    let offer = sdp::validate_wa_offer(&sd).unwrap();
    let WaTransport::Dtls(dtls) = &offer.transport else {
        panic!("DTLS expected");
    };
    assert_eq!(dtls.fingerprint.bytes.first(), Some(&0x84));
    assert_eq!(dtls.candidates.len(), 2);
    assert_eq!(offer.remote_ssrc, Some(Ssrc::new(1106247261)));
    // Trailing whitespace is not part of values.
    assert_eq!(sd.bundle, vec!["audio"]);
    assert_eq!(sd.audio.ssrcs[0].2.as_deref(), Some("t8Bv1mXc0Jq7Rk2Z"));
}

#[test]
fn meta_answer_keeps_udp_candidates_and_drops_tcp() {
    let sd = parse_both(META_ANSWER);
    let offer = sdp::validate_wa_offer(&sd).unwrap();
    let WaTransport::Dtls(dtls) = &offer.transport else {
        panic!("DTLS expected");
    };
    assert_eq!(
        dtls.candidates.len(),
        2,
        "two UDP candidates, TCP ones dropped"
    );
    assert!(
        dtls.candidates
            .iter()
            .all(|c| c.transport == "udp" && c.addr.port() == 40007)
    );
    assert_eq!(dtls.ice_ufrag, "EbT4cXksCyVKQMC/103");
    assert_eq!(dtls.setup, Setup::Passive);
    assert_eq!(offer.mid.as_deref(), Some("0"));
    assert!(offer.bundle);
    assert_eq!(sd.audio.rtcp, Some((9, Some(IpAddr::from([0, 0, 0, 0])))));
    assert_eq!(
        offer.opus_fmtp.as_deref(),
        Some("minptime=10;useinbandfec=1")
    );
}

#[test]
fn browser_offer_skips_mdns_tcp_and_rtcp_component() {
    let sd = parse_both(BROWSER_OFFER);
    assert_eq!(sd.audio.formats, vec![111, 63, 9, 0, 8, 110, 126]);
    assert_eq!(
        sd.audio.candidates.len(),
        1,
        "only the srflx UDP component-1 candidate"
    );
    assert_eq!(sd.audio.candidates[0].typ, "srflx");
    assert_eq!(sd.audio.telephone_event_pt(8000), Some(Pt::new(126)));
    assert_eq!(sd.audio.telephone_event_pt(48000), Some(Pt::new(110)));
    assert_eq!(sd.audio.fmtp(Pt::new(63)), Some("111/111"));
    assert!(sdp::validate_wa_offer(&sd).is_ok());
}

#[test]
fn sip_sdes_offer_picks_first_usable_crypto_line() {
    let sd = parse_both(WA_SIP_SDES_OFFER);
    assert_eq!(sd.remote_rtp_addr(), Some(addr("198.51.100.5:40012")));
    let offer = sdp::validate_wa_offer(&sd).unwrap();
    assert_eq!(offer.proto, MediaProto::RtpSavp);
    let WaTransport::Sdes(sdes) = &offer.transport else {
        panic!("SDES expected");
    };
    assert_eq!(sdes.rtp_addr, addr("198.51.100.5:40012"));
    assert_eq!(sdes.crypto.tag, 1);
    assert_eq!(sdes.crypto.profile, SrtpProfile::AeadAes128Gcm);
    assert_eq!(sdes.crypto.key.key.len(), 16);
    assert_eq!(sdes.crypto.key.salt.len(), 12);
    assert_eq!(sdes.crypto.key.key[..4], [0x40, 0x63, 0x8b, 0x00]);
}

#[test]
fn internal_plain_rtp_offer() {
    let sd = parse_both(INTERNAL_PLAIN_RTP);
    let remote = sdp::validate_internal(&sd).unwrap();
    assert_eq!(remote.proto, MediaProto::RtpAvp);
    assert_eq!(remote.rtp_addr, Some(addr("10.20.0.5:24578")));
    assert_eq!(remote.rtcp_addr, Some(addr("10.20.0.5:24579")));
    assert!(!remote.rtcp_mux);
    assert_eq!(remote.opus_pt, Pt::new(111));
    assert_eq!(remote.telephone_event_pt, Some(Pt::new(101)));
    assert_eq!(
        remote.opus_fmtp.as_deref(),
        Some("useinbandfec=1; minptime=20")
    );
    assert!(remote.crypto.is_none());
    // A WhatsApp leg cannot be plain RTP.
    let e = sdp::validate_wa_offer(&sd).unwrap_err();
    assert_eq!(e.line, 6);
}

// ---- Writing ---------------------------------------------------------------------------

fn our_fingerprint() -> Fingerprint {
    Fingerprint::sha256_of(b"our certificate DER")
}

fn dtls_params() -> WaLocalParams {
    WaLocalParams {
        session_id: 4242424242,
        session_version: 1,
        connection: "192.0.2.10".parse().unwrap(),
        port: 50000,
        security: LocalSecurity::Dtls {
            ice: LocalIce {
                ufrag: "rLy4".into(),
                pwd: "Zm9vYmFyYmF6cXV4cXV1eHh4".into(),
                candidates: vec![
                    (addr("192.0.2.10:50000"), 2130706431),
                    (addr("[2001:db8::10]:50000"), 2130706175),
                ],
                end_of_candidates: true,
            },
            fingerprint: our_fingerprint(),
            setup: None,
        },
        ssrc: Some((Ssrc::new(0x1234_5678), "relay-cname".into())),
    }
}

fn assert_crlf_only(sdp: &str) {
    assert!(sdp.ends_with("\r\n"), "last line ends in CRLF");
    for (i, line) in sdp.split_inclusive('\n').enumerate() {
        assert!(
            line.ends_with("\r\n"),
            "line {} ends in CRLF: {line:?}",
            i + 1
        );
        assert_eq!(
            line.matches('\r').count(),
            1,
            "no stray CR in line {}",
            i + 1
        );
    }
}

#[test]
fn answer_to_capture_offer_round_trips() {
    let offer = sdp::validate_wa_offer(&sdp::parse(WA_USER_OFFER).unwrap()).unwrap();
    let answer = LocalDescription::wa_answer(&offer, dtls_params()).unwrap();
    let text = answer.to_sdp();
    assert_crlf_only(&text);

    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "v=0");
    assert_eq!(lines[1], "o=- 4242424242 1 IN IP4 192.0.2.10");
    assert!(lines.contains(&"a=group:BUNDLE audio"));
    assert!(lines.contains(&"m=audio 50000 UDP/TLS/RTP/SAVPF 111 126"));
    assert!(lines.contains(&"a=setup:active"));
    assert!(lines.contains(&"a=mid:audio"));
    assert!(lines.contains(&"a=rtcp-mux"));
    assert!(lines.contains(&"a=ptime:20"));
    assert!(lines.contains(&"a=rtpmap:111 opus/48000/2"));
    assert!(lines.contains(&format!("a=fmtp:111 {META_OPUS_FMTP}").as_str()));
    assert!(lines.contains(&"a=rtpmap:126 telephone-event/8000"));
    assert!(lines.contains(&"a=candidate:1 1 udp 2130706431 192.0.2.10 50000 typ host"));
    assert!(lines.contains(&"a=candidate:2 1 udp 2130706175 2001:db8::10 50000 typ host"));
    assert!(lines.contains(&"a=end-of-candidates"));
    assert!(lines.contains(&"a=ssrc:305419896 cname:relay-cname"));
    assert!(!lines.contains(&"a=ice-lite"), "we are a full ICE agent");
    assert!(
        !text.contains("a=rtcp-fb"),
        "we generate no transport-cc feedback"
    );

    // Conventional order: session lines, then m=, c=, ICE, DTLS, mid, direction, codecs.
    let pos = |prefix: &str| lines.iter().position(|l| l.starts_with(prefix)).unwrap();
    let order = [
        "v=",
        "o=",
        "s=",
        "t=",
        "a=group",
        "m=",
        "c=",
        "a=rtcp:",
        "a=ice-ufrag",
        "a=ice-pwd",
        "a=fingerprint",
        "a=setup",
        "a=mid",
        "a=sendrecv",
        "a=rtcp-mux",
        "a=rtpmap:111",
        "a=fmtp:111",
        "a=rtpmap:126",
        "a=ptime",
        "a=candidate",
        "a=end-of-candidates",
        "a=ssrc",
    ];
    for pair in order.windows(2) {
        assert!(
            pos(pair[0]) < pos(pair[1]),
            "{} before {}",
            pair[0],
            pair[1]
        );
    }

    // Meta's view of our answer: it parses and carries what a DTLS peer needs.
    let back = sdp::parse(&text).unwrap();
    let seen = sdp::validate_wa_offer(&back).unwrap();
    let WaTransport::Dtls(dtls) = seen.transport else {
        panic!("DTLS expected");
    };
    assert_eq!(dtls.fingerprint, our_fingerprint());
    assert_eq!(dtls.setup, Setup::Active);
    assert_eq!(
        (dtls.ice_ufrag.as_str(), dtls.ice_pwd.as_str()),
        ("rLy4", "Zm9vYmFyYmF6cXV4cXV1eHh4")
    );
    assert_eq!(dtls.candidates.len(), 2);
    assert_eq!(seen.opus_pt, Pt::new(111));
    assert_eq!(seen.telephone_event_pt, Some(Pt::new(126)));
    assert_eq!(seen.remote_ssrc, Some(Ssrc::new(0x1234_5678)));
    assert!(back.audio.end_of_candidates);
}

#[test]
fn answer_mirrors_mid_pts_and_role_of_metas_answer_shape() {
    // Meta's side said passive: our role is forced to active; its mid is "0".
    let offer = sdp::validate_wa_offer(&sdp::parse(META_ANSWER).unwrap()).unwrap();
    let answer = LocalDescription::wa_answer(&offer, dtls_params()).unwrap();
    assert_eq!(answer.audio.setup, Some(Setup::Active));
    assert_eq!(answer.audio.mid.as_deref(), Some("0"));
    let text = answer.to_sdp();
    assert!(text.contains("a=group:BUNDLE 0\r\n"));
    assert!(text.contains("a=fmtp:111 minptime=10;useinbandfec=1\r\n"));

    let mut params = dtls_params();
    if let LocalSecurity::Dtls { setup, .. } = &mut params.security {
        *setup = Some(Setup::Passive);
    }
    let e = LocalDescription::wa_answer(&offer, params).unwrap_err();
    assert_eq!(e.line, 0);
}

#[test]
fn sdes_answer_uses_the_offer_tag_and_suite() {
    let offer = sdp::validate_wa_offer(&sdp::parse(WA_SIP_SDES_OFFER).unwrap()).unwrap();
    let our_key = MasterKey {
        profile: SrtpProfile::AeadAes128Gcm,
        key: vec![0x11; 16],
        salt: vec![0x22; 12],
    };
    let params = WaLocalParams {
        security: LocalSecurity::Sdes {
            profile: SrtpProfile::AeadAes128Gcm,
            key_params: sdp::sdes_key_params(&our_key),
        },
        ..dtls_params()
    };
    let text = LocalDescription::wa_answer(&offer, params.clone())
        .unwrap()
        .to_sdp();
    assert_crlf_only(&text);
    assert!(text.contains("m=audio 50000 RTP/SAVP 111 126\r\n"));
    assert!(!text.contains("a=ice-") && !text.contains("a=fingerprint"));
    let back = sdp::validate_wa_offer(&sdp::parse(&text).unwrap()).unwrap();
    let WaTransport::Sdes(sdes) = back.transport else {
        panic!("SDES expected");
    };
    assert_eq!(sdes.crypto.tag, 1);
    assert_eq!(sdes.crypto.key, our_key);

    // A key for another suite, or DTLS parameters, do not fit this offer.
    let wrong_suite = WaLocalParams {
        security: LocalSecurity::Sdes {
            profile: SrtpProfile::Aes128CmHmacSha1_80,
            key_params: "inline:x".into(),
        },
        ..params
    };
    assert!(LocalDescription::wa_answer(&offer, wrong_suite).is_err());
    assert!(LocalDescription::wa_answer(&offer, dtls_params()).is_err());
}

#[test]
fn business_initiated_offer_has_metas_shape() {
    let text = LocalDescription::whatsapp_offer(dtls_params()).to_sdp();
    assert_crlf_only(&text);
    let sd = sdp::parse(&text).unwrap();
    let offer = sdp::validate_wa_offer(&sd).unwrap();
    assert_eq!(offer.opus_pt, Pt::new(111));
    assert_eq!(offer.opus_fmtp.as_deref(), Some(META_OPUS_FMTP));
    assert_eq!(offer.telephone_event_pt, Some(Pt::new(126)));
    assert_eq!(offer.mid.as_deref(), Some("audio"));
    assert!(offer.bundle && offer.rtcp_mux);
    assert_eq!(sd.audio.maxptime, Some(20));
    assert_eq!(sd.setup(), Some(Setup::ActPass));

    let sdes = LocalDescription::whatsapp_offer(WaLocalParams {
        security: LocalSecurity::Sdes {
            profile: SrtpProfile::Aes128CmHmacSha1_80,
            key_params: sdp::sdes_key_params(&MasterKey {
                profile: SrtpProfile::Aes128CmHmacSha1_80,
                key: vec![3; 16],
                salt: vec![4; 14],
            }),
        },
        ..dtls_params()
    })
    .to_sdp();
    let sd = sdp::parse(&sdes).unwrap();
    assert_eq!(sd.audio.proto, MediaProto::RtpSavp);
    assert!(sdp::validate_wa_offer(&sd).is_ok());
}

#[test]
fn internal_descriptions_round_trip() {
    let plain = LocalDescription::internal(InternalLocalParams::new(
        7,
        "10.0.0.2".parse().unwrap(),
        30000,
    ));
    let text = plain.to_sdp();
    assert_crlf_only(&text);
    assert!(text.contains("m=audio 30000 RTP/AVP 111 126\r\n"));
    assert!(text.contains("a=rtcp:30000 IN IP4 10.0.0.2\r\n"));
    let remote = sdp::validate_internal(&sdp::parse(&text).unwrap()).unwrap();
    assert_eq!(remote.rtp_addr, Some(addr("10.0.0.2:30000")));
    assert_eq!(remote.rtcp_addr, Some(addr("10.0.0.2:30000")));
    assert_eq!(
        (remote.opus_pt, remote.telephone_event_pt),
        (Pt::new(111), Some(Pt::new(126)))
    );
    assert_eq!(remote.ptime, Some(20));

    let key = MasterKey {
        profile: SrtpProfile::Aes128CmHmacSha1_80,
        key: vec![5; 16],
        salt: vec![6; 14],
    };
    let mut params = InternalLocalParams::new(8, "2001:db8::2".parse().unwrap(), 30002);
    params.crypto = Some((
        3,
        SrtpProfile::Aes128CmHmacSha1_80,
        sdp::sdes_key_params(&key),
    ));
    params.rtcp_mux = false;
    params.opus_pt = Pt::new(96);
    let text = LocalDescription::internal(params).to_sdp();
    assert!(text.contains("c=IN IP6 2001:db8::2\r\n"));
    assert!(text.contains("a=rtcp:30003 IN IP6 2001:db8::2\r\n"));
    let remote = sdp::validate_internal(&sdp::parse(&text).unwrap()).unwrap();
    assert_eq!(remote.proto, MediaProto::RtpSavp);
    assert_eq!(remote.opus_pt, Pt::new(96));
    assert_eq!(remote.rtcp_addr, Some(addr("[2001:db8::2]:30003")));
    let crypto = remote.crypto.unwrap();
    assert_eq!((crypto.tag, crypto.key), (3, key));
}
