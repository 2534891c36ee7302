//! A flood of garbage from thousands of made-up source addresses at a live call's WhatsApp
//! port, over loopback (Linux answers for all of 127.0.0.0/8, so each flooding socket has its
//! own source IP): each address stays within its per-source burst, so only the shard-wide
//! budget for unknown sources stops it; the call's media keeps flowing both ways.

mod ops_support;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::Instant;

use e2e::meta::{MetaConfig, MetaPeer, wait_until};
use e2e::sip::{SipConfig, SipPeer};
use ops_support::{WAIT, create_request};
use relay::api::CallControl;
use relay::engine::ratelimit::RateLimitConfig;
use relay::engine::{Engine, EngineConfig};

const SOURCES: u32 = 2000;
const PER_SOURCE: u32 = 20;

/// The relay's WhatsApp-facing IPv4 address and port from its SDP.
fn media_addr(sdp: &str) -> SocketAddr {
    let port: u16 = sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split(' ').next())
        .and_then(|p| p.parse().ok())
        .expect("m=audio port");
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

#[test]
fn live_calls_keep_their_media_while_a_spoofed_flood_is_capped_shard_wide() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine = Engine::start(EngineConfig {
        shards: 1,
        whatsapp_bind_v6: None,
        advertised: relay::call::Advertised {
            wa_v6: None,
            ..EngineConfig::default().advertised
        },
        rate_limit: RateLimitConfig {
            shard_burst: 500,
            shard_per_second: 500,
            ..RateLimitConfig::default()
        },
        ..EngineConfig::default()
    })
    .unwrap();
    let meta = MetaPeer::spawn(MetaConfig::default()).unwrap();
    let sip = SipPeer::spawn(SipConfig::default()).unwrap();
    let created = rt
        .block_on(engine.create_call(create_request("wacid.flooded", &meta, &sip)))
        .unwrap();
    meta.set_remote_sdp(&created.whatsapp_sdp).unwrap();
    sip.set_remote_sdp(&created.internal_sdp).unwrap();
    assert!(wait_until(WAIT, || meta
        .stats()
        .dtls_connected_at
        .is_some()));
    rt.block_on(engine.open_gate("wacid.flooded".into()))
        .unwrap();
    meta.start_audio();
    sip.start_audio();
    let audio = |n: usize| {
        let (m, s) = (
            meta.received()
                .iter()
                .filter(|p| p.payload.len() > 3)
                .count(),
            sip.received().len(),
        );
        m >= n && s >= n
    };
    assert!(wait_until(WAIT, || audio(10)), "audio flows both ways");

    // 2,000 addresses x 20 datagrams of STUN-looking garbage, as fast as loopback takes them.
    let target = media_addr(&created.whatsapp_sdp);
    let stats = &engine.shard_stats()[0];
    let (t0, in0) = (Instant::now(), stats.packets_in.load(Ordering::Relaxed));
    let mut junk = [0u8; 100];
    junk[1] = 0x01; // a Binding request's type, no valid attributes
    for i in 0..SOURCES {
        let ip = Ipv4Addr::new(127, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
        let s = UdpSocket::bind((ip, 0)).expect("bind a loopback source address");
        for _ in 0..PER_SOURCE {
            let _ = s.send_to(&junk, target);
        }
    }
    let sent = u64::from(SOURCES * PER_SOURCE);
    let before = (meta.received().len(), sip.received().len());

    // The call keeps its media: another second of audio each way arrives.
    assert!(
        wait_until(WAIT, || meta.received().len() >= before.0 + 50
            && sip.received().len() >= before.1 + 50),
        "media kept flowing"
    );
    let limited = stats.rate_limited.load(Ordering::Relaxed);
    let received = stats.packets_in.load(Ordering::Relaxed) - in0;
    let secs = t0.elapsed().as_secs_f64();
    // Every address stayed within its own burst of 100: what was dropped, the shard-wide
    // budget dropped, and at most its burst plus its rate reached the call (besides the
    // call's own media and RTCP, under 200 datagrams a second; the kernel may have dropped
    // some of the flood before the shard read it).
    let reached = received - limited;
    let bound = 500.0 + 500.0 * secs + 200.0 * secs;
    eprintln!(
        "{sent} spoofed datagrams from {SOURCES} addresses: {received} read by the shard, \
         {limited} dropped unread, {reached} handled (media included) in {secs:.2}s"
    );
    assert!(limited > 0, "the shard-wide budget dropped some");
    assert!((reached as f64) < bound, "{reached} handled, bound {bound}");
    let info = rt
        .block_on(engine.get_call("wacid.flooded".into()))
        .unwrap();
    assert_eq!(info.end_cause, None, "the call is still up");
    engine.shutdown();
}
