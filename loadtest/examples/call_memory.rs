//! What one relay `Call` costs in memory, by stage, measured in process with a counting global
//! allocator (live heap bytes, not RSS): created (SDP answered), connected (ICE + DTLS done, or
//! SDES keyed), after media both ways (per-stream state), with and without the peer-side
//! objects. It explains the RSS per call that `loadtest run` measures on a real relay, which
//! also includes the engine's per-call bookkeeping, allocator slack and never-returned pages.
//!
//! `cargo run --release -p loadtest --example call_memory [calls]`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use relay::call::testing::{self, MEDIA_SERVER, META, META_OPUS_PT, MetaPeer, RtpSource};
use relay::call::{Call, CallConfig};
use relay::dtls::{DtlsDriver, DtlsIdentity};
use relay::ice::ControllingAgent;
use relay::net::{SocketRef, VecOutbox};
use relay::srtp::{SrtpContext, SrtpProfile, SrtpSession};

struct Live;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator; only counts sizes.
unsafe impl GlobalAlloc for Live {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Live = Live;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn kib(bytes: isize, calls: usize) -> String {
    format!("{:>7.1} KiB", bytes as f64 / calls.max(1) as f64 / 1024.0)
}

/// One packet each way through `call` (Meta → internal, internal → Meta).
fn media(call: &mut Call, meta: &mut MetaPeer, now: Instant, src: &mut [RtpSource; 2]) {
    let mut out = VecOutbox::default();
    let mut buf = [0u8; 1500];
    let n = src[0].write_next(&mut buf, 80);
    if let Ok(n) = meta.protect_rtp(&mut buf, n) {
        call.handle_datagram(now, SocketRef::WaV4, META, &mut buf, n, &mut out);
    }
    let n = src[1].write_next(&mut buf, 80);
    call.handle_datagram(
        now,
        SocketRef::Internal,
        MEDIA_SERVER,
        &mut buf,
        n,
        &mut out,
    );
    drop(out.take());
    while call.poll_event().is_some() {}
}

fn measure(label: &str, sdes: Option<SrtpProfile>, calls: usize, identity: &Arc<DtlsIdentity>) {
    let t0 = Instant::now();
    let base = live();
    let mut list: Vec<(Call, MetaPeer)> = Vec::with_capacity(calls);
    let mut created_bytes = 0;
    for _ in 0..calls {
        let (mut meta, offer) = match sdes {
            Some(p) => MetaPeer::sdes(p),
            None => MetaPeer::dtls(t0),
        };
        let before = live();
        let Ok(created) = testing::create_call(&offer, CallConfig::default(), identity.clone(), t0)
        else {
            eprintln!("{label}: create_call failed");
            return;
        };
        let call = created.call;
        // The SDP strings go to the signaling tier; the call keeps its own copies.
        let answer = created.whatsapp_sdp;
        drop(created.internal_sdp);
        created_bytes += live() - before - answer.len() as isize;
        if meta.accept_answer(&answer, t0).is_err() {
            eprintln!("{label}: the answer was refused");
            return;
        }
        list.push((call, meta));
    }
    let after_create = live();
    for (call, meta) in &mut list {
        if let Err(e) = testing::establish(call, meta, t0, Duration::from_secs(5)) {
            eprintln!("{label}: {e}");
            return;
        }
        let mut out = VecOutbox::default();
        call.open_gate(t0, &mut out);
        while call.poll_event().is_some() {}
    }
    let after_connect = live();
    let mut now = t0 + Duration::from_secs(1);
    for (call, meta) in &mut list {
        let mut src = [
            RtpSource::new(rand_ssrc(), META_OPUS_PT, 1, 1),
            RtpSource::new(rand_ssrc(), testing::INTERNAL_OPUS_PT, 1, 1),
        ];
        for _ in 0..50 {
            now += Duration::from_micros(400);
            media(call, meta, now, &mut src);
        }
    }
    let after_media = live();
    // Without the peers: what the relay holds for these calls.
    let (calls_only, metas): (Vec<Call>, Vec<MetaPeer>) = list.into_iter().unzip();
    let before_drop_meta = live();
    drop(metas);
    let metas_bytes = before_drop_meta - live();
    let relay_side = live() - base;
    let inline = (std::mem::size_of::<Call>() * calls) as isize;
    println!(
        "{label:<30} {} inline Call + {} heap at create + {} heap from ICE/DTLS/SRTP/media = {} per call \
         (both sides while connecting: +{} / media +{}; the test peers hold {})",
        kib(inline, calls),
        kib(created_bytes, calls),
        kib(relay_side - inline - created_bytes, calls),
        kib(relay_side, calls),
        kib(after_connect - after_create, calls),
        kib(after_media - after_connect, calls),
        kib(metas_bytes, calls),
    );
    drop(calls_only);
}

fn rand_ssrc() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(live() as u64);
    h.finish() as u32
}

fn main() {
    let calls: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    println!(
        "inline sizes: Call {} B, SrtpSession {} B (boxed), SrtpContext {} B, DtlsDriver {} B, ControllingAgent {} B",
        std::mem::size_of::<Call>(),
        std::mem::size_of::<SrtpSession>(),
        std::mem::size_of::<SrtpContext>(),
        std::mem::size_of::<DtlsDriver>(),
        std::mem::size_of::<ControllingAgent>(),
    );
    let Ok(identity) = DtlsIdentity::generate() else {
        eprintln!("cannot generate a DTLS identity");
        return;
    };
    let identity = Arc::new(identity);
    println!("live heap per call, {calls} calls:");
    measure("DTLS (user-initiated)", None, calls, &identity);
    measure(
        "SDES AES_CM_128_HMAC_SHA1_80",
        Some(SrtpProfile::Aes128CmHmacSha1_80),
        calls,
        &identity,
    );
}
