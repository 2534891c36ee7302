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

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay::call::testing::{
    self, INTERNAL_OPUS_PT, MEDIA_SERVER, META, META_OPUS_PT, MetaPeer, RingOutbox, RtpSource,
};
use relay::call::{Call, CallConfig};
use relay::dtls::DtlsIdentity;
use relay::net::SocketRef;
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
    println!("{mode}: {} packets in, {} out", 2 * n, black_box(sent));
}
