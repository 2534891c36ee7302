//! Proves a G.711 call's steady state allocates nothing on the Rust side: a counting global
//! allocator records every allocation made on the test thread while a real `Call` with a
//! PCMU-only media server transcodes 3,000 packets each way — WhatsApp's Opus decoded to
//! 8 kHz and sent as PCMU, the server's PCMU re-framed and Opus-encoded toward WhatsApp (SRTP
//! both ways on the WhatsApp leg, the gate open, RTCP on its schedule). libopus's own `malloc`
//! is not seen by Rust's allocator; `relay/tests/codec_alloc.rs` interposes it and proves the
//! codec calls allocate nothing there.

use std::sync::Arc;
use std::time::{Duration, Instant};

use relay::api::{InternalKind, InternalLegSpec, SourcePolicy};
use relay::call::CallConfig;
use relay::call::testing::{self, MEDIA_SERVER, META, META_OPUS_PT, MetaPeer, RingOutbox};
use relay::codec::g711::{self, G711};
use relay::codec::opus::{OpusEncoder, OpusEncoderConfig};
use relay::dtls::DtlsIdentity;
use relay::net::SocketRef;
use relay::srtp::SrtpProfile;
use relay::wire::rtp::{self, Pt, RtpHeaderFields, RtpTs, Seq, Ssrc};

mod alloc_support;
use alloc_support::allocations;

const WARM_UP: u32 = 200;
const MEASURED: u32 = 3_000;
const PTIME: Duration = Duration::from_millis(20);

fn server_sdp() -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=Asterisk\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n\
         a=ptime:20\r\na=sendrecv\r\n",
        ip = MEDIA_SERVER.ip(),
        port = MEDIA_SERVER.port()
    )
}

fn tone(freq: f64, rate: u32, start: u32, n: u32) -> Vec<i16> {
    (start..start + n)
        .map(|i| {
            (8000.0 * (2.0 * std::f64::consts::PI * freq * f64::from(i) / f64::from(rate)).sin())
                as i16
        })
        .collect()
}

#[test]
fn a_g711_calls_steady_state_allocates_nothing() {
    let identity = Arc::new(DtlsIdentity::generate().unwrap());
    let t0 = Instant::now();
    let (mut meta, offer) = MetaPeer::sdes(SrtpProfile::Aes128CmHmacSha1_80);
    let internal = InternalLegSpec {
        kind: InternalKind::PlainRtp,
        remote_sdp: Some(server_sdp()),
        source: SourcePolicy::Strict,
    };
    let created =
        testing::create_call_with(&offer, internal, CallConfig::default(), identity, t0).unwrap();
    assert!(created.internal_sdp.contains("PCMU/8000"));
    let mut call = created.call;
    meta.accept_answer(&created.whatsapp_sdp, t0).unwrap();
    let mut now = testing::establish(&mut call, &mut meta, t0, Duration::from_secs(5)).unwrap();
    let mut out = RingOutbox::with_capacity(16);
    call.open_gate(now, &mut out);
    out.clear();

    // Both sides' audio made up front: WhatsApp's Opus (a 48 kHz tone) and the server's PCMU.
    let frames = WARM_UP + MEASURED;
    let mut enc = OpusEncoder::new(48_000, OpusEncoderConfig::toward_wa()).unwrap();
    let opus: Vec<Vec<u8>> = (0..frames)
        .map(|i| {
            let mut b = [0u8; 1500];
            let n = enc
                .encode(&tone(440.0, 48_000, i * 960, 960), &mut b)
                .unwrap();
            b[..n].to_vec()
        })
        .collect();
    let pcmu: Vec<[u8; 160]> = (0..frames)
        .map(|i| {
            let mut b = [0u8; 160];
            g711::encode(G711::Ulaw, &tone(1000.0, 8000, i * 160, 160), &mut b);
            b
        })
        .collect();

    let (mut to_server, mut to_meta) = (0u64, 0u64);
    let mut step = |i: u32, now: Instant, to_server: &mut u64, to_meta: &mut u64| {
        let mut b = [0u8; 1500];
        let h = rtp::write_header(
            &mut b,
            &RtpHeaderFields {
                marker: i == 0,
                pt: Pt::new(META_OPUS_PT),
                seq: Seq::new(100u16.wrapping_add(i as u16)),
                ts: RtpTs::new(5000u32.wrapping_add(i * 960)),
                ssrc: Ssrc::new(0x1111_2222),
            },
        )
        .unwrap();
        let p = &opus[i as usize];
        b[h..h + p.len()].copy_from_slice(p);
        let len = meta.protect_rtp(&mut b, h + p.len()).unwrap();
        call.handle_datagram(now, SocketRef::WaV4, META, &mut b, len, &mut out);
        let mut s = [0u8; 172];
        let h = rtp::write_header(
            &mut s,
            &RtpHeaderFields {
                marker: i == 0,
                pt: Pt::new(0),
                seq: Seq::new(7u16.wrapping_add(i as u16)),
                ts: RtpTs::new(800u32.wrapping_add(i * 160)),
                ssrc: Ssrc::new(0x3333_4444),
            },
        )
        .unwrap();
        s[h..h + 160].copy_from_slice(&pcmu[i as usize]);
        call.handle_datagram(
            now,
            SocketRef::Internal,
            MEDIA_SERVER,
            &mut s,
            h + 160,
            &mut out,
        );
        call.handle_timeout(now, &mut out);
        for k in 0..out.len() {
            let (_, to, _, _) = out.get_mut(k).unwrap();
            if to == MEDIA_SERVER {
                *to_server += 1;
            } else {
                *to_meta += 1;
            }
        }
        out.clear();
        while call.poll_event().is_some() {}
    };
    for i in 0..WARM_UP {
        now += PTIME;
        step(i, now, &mut to_server, &mut to_meta);
    }
    let (server_before, meta_before) = (to_server, to_meta);
    let before = allocations();
    for i in WARM_UP..frames {
        now += PTIME;
        step(i, now, &mut to_server, &mut to_meta);
    }
    let during = allocations() - before;
    let info = call.info();
    assert!(info.end_cause.is_none(), "{:?}", info.end_cause);
    // The traffic was real: one PCMU packet per WhatsApp frame, one Opus packet per server
    // frame (plus RTCP both ways).
    assert!(
        to_server - server_before >= u64::from(MEASURED),
        "{to_server}"
    );
    assert!(to_meta - meta_before >= u64::from(MEASURED), "{to_meta}");
    assert_eq!(info.whatsapp.dropped + info.internal.dropped, 0, "{info:?}");
    assert_eq!(
        during, 0,
        "{during} heap allocations over {MEASURED} frames each way"
    );
    // The counter sees this thread's allocations at all.
    let before = allocations();
    std::hint::black_box(Vec::<u8>::with_capacity(64));
    assert!(
        allocations() > before,
        "the counting allocator is installed"
    );
}
