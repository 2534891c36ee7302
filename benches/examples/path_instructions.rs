//! The per-packet path in instructions, for callgrind: a deterministic count where the path
//! benchmark's nanoseconds are at the mercy of a shared machine.
//!
//! One connected call (SDES or DTLS-SRTP toward Meta, plain RTP inward, gate open), `N`
//! packets each way through `Call::handle_datagram`, 20 ms apart in simulated time. Meta's
//! protection of each packet happens outside the measured function; run under
//!
//! ```text
//! valgrind --tool=callgrind --toggle-collect='*path_instructions*forward*' \
//!     target/release/examples/path_instructions sdes 20000
//! ```
//!
//! and divide the instructions collected by 2 × N (see BENCHMARKS.md).
//!
//! A third argument forks the call, to count what a fork adds per packet: `record` (both
//! directions into the recorder's queue; its writer thread runs outside the measured
//! function), `listen` (a supervisor's browser connected over WebRTC: SRTP-protect each
//! packet toward it) or `listen-rtp` (a media server's two plain RTP streams). Default `none`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay::api::ListenMode;
use relay::call::fork::{ListenRequest, RecordRequest};
use relay::call::testing::{
    self, INTERNAL_OPUS_PT, MEDIA_SERVER, META, META_OPUS_PT, MetaPeer, RingOutbox, RtpSource,
};
use relay::call::{Call, CallConfig};
use relay::dtls::DtlsIdentity;
use relay::listen::testing::{FORK_ADDR, Supervisor};
use relay::net::SocketRef;
use relay::record::{Recorder, RecordingConfig};
use relay::srtp::SrtpProfile;

const PAYLOAD: usize = 160;
const PTIME: Duration = Duration::from_millis(20);

/// The measured region: one datagram into the call (callgrind collects only inside here).
#[inline(never)]
fn forward(
    call: &mut Call,
    now: Instant,
    via: SocketRef,
    from: std::net::SocketAddr,
    buf: &mut [u8],
    n: usize,
    out: &mut RingOutbox,
) {
    call.handle_datagram(now, via, from, buf, n, out);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "sdes".into());
    let n: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let fork = args.next().unwrap_or_else(|| "none".into());
    let identity = Arc::new(DtlsIdentity::generate().unwrap());
    let t0 = Instant::now();
    let (mut meta, offer) = match mode.as_str() {
        "sdes" => MetaPeer::sdes(SrtpProfile::Aes128CmHmacSha1_80),
        "dtls" => MetaPeer::dtls(t0),
        other => panic!("mode {other}: sdes or dtls"),
    };
    let created = testing::create_call(&offer, CallConfig::default(), identity, t0).unwrap();
    let mut call = created.call;
    meta.accept_answer(&created.whatsapp_sdp, t0).unwrap();
    let mut now = testing::establish(&mut call, &mut meta, t0, Duration::from_secs(5)).unwrap();
    let mut out = RingOutbox::with_capacity(8);
    call.open_gate(now, &mut out);
    out.clear();
    let listen_via = SocketRef::new(3);
    let start_listen = |call: &mut Call, offer: String, now: Instant| {
        call.listen(
            ListenRequest::Start {
                offer_sdp: offer,
                mode: ListenMode::Listen,
                socket: listen_via,
                local: FORK_ADDR,
                advertised: FORK_ADDR,
            },
            now,
            &mut RingOutbox::with_capacity(8),
        )
        .unwrap()
        .unwrap()
    };
    let dir = std::env::temp_dir().join(format!("relay-path-instructions-{}", std::process::id()));
    let mut recorder = None;
    let mut supervisor = None;
    match fork.as_str() {
        "none" => {}
        "record" => {
            let rec = Recorder::start(RecordingConfig {
                dir: Some(dir.clone()),
                name_template: "{call_id}".into(),
                // Room for every packet of the run: the writer thread may not run until the
                // end (valgrind serializes threads), and a full queue would make the shard's
                // cost the cheaper drop path and the writer's cover only part of the packets.
                queue_packets: (4 * n as usize).max(RecordingConfig::default().queue_packets),
            })
            .unwrap();
            let open = rec
                .create(
                    &call.call_id.clone(),
                    "b",
                    "c",
                    std::time::SystemTime::now(),
                )
                .unwrap();
            let start = RecordRequest::Start {
                open: Box::new(open),
                link: rec.link().clone(),
            };
            call.record(start, now).unwrap();
            recorder = Some(rec);
        }
        "listen" => {
            let mut sup = Supervisor::new(now);
            sup.keep = false;
            let status = start_listen(&mut call, sup.offer(), now);
            sup.accept(&status.answer_sdp, now).unwrap();
            now = relay::listen::testing::connect(
                &mut call,
                &mut sup,
                listen_via,
                now,
                Duration::from_secs(2),
            )
            .unwrap();
            supervisor = Some(sup);
        }
        "listen-rtp" => {
            let offer = "v=0\r\no=srs 1 1 IN IP4 10.40.0.9\r\ns=-\r\nc=IN IP4 10.40.0.9\r\n\
                         t=0 0\r\nm=audio 40000 RTP/AVP 96\r\na=recvonly\r\n\
                         a=rtpmap:96 opus/48000/2\r\nm=audio 40002 RTP/AVP 96\r\n\
                         a=recvonly\r\na=rtpmap:96 opus/48000/2\r\n";
            start_listen(&mut call, offer.to_string(), now);
        }
        other => panic!("fork {other}: none, record, listen or listen-rtp"),
    }
    while call.poll_event().is_some() {}
    let via = SocketRef::WaV4;
    let mut meta_src = RtpSource::new(0x1111_2222, META_OPUS_PT, 1, 0);
    let mut server_src = RtpSource::new(0x3333_4444, INTERNAL_OPUS_PT, 1, 0);
    let mut sent = 0u64;
    for _ in 0..n {
        now += PTIME;
        let mut b = [0u8; 256];
        let len = meta_src.write_next(&mut b, PAYLOAD);
        let len = meta.protect_rtp(&mut b, len).unwrap();
        forward(&mut call, now, via, META, &mut b, len, &mut out);
        sent += out.len() as u64;
        out.clear();
        let mut b = [0u8; 256];
        let len = server_src.write_next(&mut b, PAYLOAD);
        forward(
            &mut call,
            now,
            SocketRef::Internal,
            MEDIA_SERVER,
            &mut b,
            len,
            &mut out,
        );
        sent += out.len() as u64;
        out.clear();
        while call.poll_event().is_some() {}
    }
    let info = call.info();
    assert_eq!(info.whatsapp.dropped + info.internal.dropped, 0);
    println!(
        "{mode} fork {fork}: {} packets in, {} out",
        2 * n,
        black_box(sent)
    );
    if let Some(rec) = recorder {
        rec.shutdown();
        // What the writer thread did with them (its instructions are divided by `written`).
        let st = rec.stats();
        println!(
            "recorded: {} written, {} dropped (queue full)",
            st.packets_written
                .load(std::sync::atomic::Ordering::Relaxed),
            st.dropped_queue_full
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    drop(supervisor);
}
