//! Proves a G.711 call's steady state allocates nothing on the Rust side: a counting global
//! allocator records every allocation made on the test thread while a real `Call` with a
//! PCMU-only media server transcodes 3,000 packets each way — WhatsApp's Opus decoded to
//! 8 kHz and sent as PCMU, the server's PCMU re-framed and Opus-encoded toward WhatsApp (SRTP
//! both ways on the WhatsApp leg, the gate open, RTCP on its schedule). libopus's own `malloc`
//! is not seen by Rust's allocator; `relay/tests/codec_alloc.rs` interposes it and proves the
//! codec calls allocate nothing there.

use std::time::Instant;

use relay::api::{InternalKind, InternalLegSpec, SourcePolicy};
use relay::call::testing::MEDIA_SERVER;
use relay::codec::g711::{self, G711};
use relay::net::SocketRef;
use relay::wire::rtp::{self, Pt, RtpHeaderFields, RtpTs, Seq, Ssrc};

mod alloc_support;
mod opus_call_support;
use alloc_support::allocations;
use opus_call_support::{MEASURED, OpusCall, PTIME, WARM_UP, assert_counting, tone};

fn server_sdp() -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=Asterisk\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n\
         a=ptime:20\r\na=sendrecv\r\n",
        ip = MEDIA_SERVER.ip(),
        port = MEDIA_SERVER.port()
    )
}

#[test]
fn a_g711_calls_steady_state_allocates_nothing() {
    let mut c = OpusCall::establish(InternalLegSpec {
        kind: InternalKind::PlainRtp,
        remote_sdp: Some(server_sdp()),
        source: SourcePolicy::Strict,
    });
    assert!(c.internal_sdp.contains("PCMU/8000"));
    let mut now = c.now;
    c.open_gate();

    // The server's PCMU made up front (WhatsApp's Opus is the support's).
    let frames = WARM_UP + MEASURED;
    let pcmu: Vec<[u8; 160]> = (0..frames)
        .map(|i| {
            let mut b = [0u8; 160];
            g711::encode(G711::Ulaw, &tone(1000.0, 8000, i * 160, 160), &mut b);
            b
        })
        .collect();

    let (mut to_server, mut to_meta) = (0u64, 0u64);
    let mut step = |i: u32, now: Instant, to_server: &mut u64, to_meta: &mut u64| {
        c.whatsapp_sends(i, now);
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
        c.call.handle_datagram(
            now,
            SocketRef::Internal,
            MEDIA_SERVER,
            &mut s,
            h + 160,
            &mut c.out,
        );
        c.call.handle_timeout(now, &mut c.out);
        for k in 0..c.out.len() {
            let (_, to, _, _) = c.out.get_mut(k).unwrap();
            if to == MEDIA_SERVER {
                *to_server += 1;
            } else {
                *to_meta += 1;
            }
        }
        c.out.clear();
        while c.call.poll_event().is_some() {}
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
    let info = c.call.info();
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
    assert_counting();
}
