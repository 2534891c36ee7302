//! Guards what one call holds in memory, so it cannot grow again unnoticed (issue 14: a plain
//! DTLS call grew from 29 to 35 KiB of relay RSS at 1,000 calls between November and December
//! without anyone deciding it should).
//!
//! Deterministic: a counting global allocator (bytes live, allocations made on this thread)
//! and `size_of`, not RSS. For each kind of call it builds a few calls through the whole setup
//! (create, ICE, DTLS or SDES, gate open, 50 packets each way), drops the test peers, and
//! counts what the calls still hold: the `Call` itself plus its heap. The bounds are today's
//! figures plus about 5 %; raising one is a decision, written down in BENCHMARKS.md. (This is
//! the call's live heap; the relay's RSS per call adds the engine's bookkeeping, allocator
//! slack and, in a short run, code pages faulted in: see BENCHMARKS.md, session 8.)
//!
//! `cargo test -p relay --test call_memory -- --nocapture` prints the figures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay::call::testing::{self, INTERNAL_OPUS_PT, MEDIA_SERVER, META, META_OPUS_PT};
use relay::call::testing::{MetaPeer, RtpSource};
use relay::call::{Call, CallConfig};
use relay::dtls::DtlsIdentity;
use relay::net::{SocketRef, VecOutbox};
use relay::srtp::SrtpProfile;

struct Counting;

thread_local! {
    // Const-initialised and without a destructor, so touching it never allocates.
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn add(n: isize) {
    let _ = LIVE.try_with(|l| l.set(l.get() + n));
}

/// Bytes allocated and not yet freed by this thread (frees of this thread's blocks on other
/// threads are not seen; the calls here live and die on the test thread).
fn live() -> isize {
    LIVE.with(Cell::get)
}

// SAFETY: every call forwards to the system allocator unchanged; counting touches only a
// thread-local integer.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        let p = unsafe { System.alloc(layout) };
        track(p, layout.size());
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        let p = unsafe { System.alloc_zeroed(layout) };
        track(p, layout.size());
        p
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size as isize - layout.size() as isize);
        untrack(ptr);
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        track(p, new_size);
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as isize));
        untrack(ptr);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CALLS: usize = 8;

/// Bytes one connected call holds after media flowed both ways: `(inline Call, its heap)`.
fn connected_call_bytes(sdes: Option<SrtpProfile>) -> (usize, usize) {
    connected_calls(sdes, |_| {})
}

fn connected_calls(
    sdes: Option<SrtpProfile>,
    inspect: impl FnOnce(&[Box<Call>]),
) -> (usize, usize) {
    let identity = Arc::new(DtlsIdentity::generate().unwrap());
    let t0 = Instant::now();
    let mut calls: Vec<Box<Call>> = Vec::with_capacity(CALLS);
    let mut metas = Vec::with_capacity(CALLS);
    let base = live();
    let _ = TRACKING.try_with(|t| t.set(true));
    for i in 0..CALLS {
        let (mut meta, offer) = match sdes {
            Some(p) => MetaPeer::sdes(p),
            None => MetaPeer::dtls(t0),
        };
        let created =
            testing::create_call(&offer, CallConfig::default(), identity.clone(), t0).unwrap();
        let mut call = Box::new(created.call);
        meta.accept_answer(&created.whatsapp_sdp, t0).unwrap();
        drop((created.whatsapp_sdp, created.internal_sdp));
        let mut now = testing::establish(&mut call, &mut meta, t0, Duration::from_secs(5)).unwrap();
        let mut out = VecOutbox::default();
        call.open_gate(now, &mut out);
        let mut src = [
            RtpSource::new(0x1000 + i as u32, META_OPUS_PT, 1, 1),
            RtpSource::new(0x2000 + i as u32, INTERNAL_OPUS_PT, 1, 1),
        ];
        let mut buf = [0u8; 1500];
        for _ in 0..50 {
            now += Duration::from_millis(20);
            let n = src[0].write_next(&mut buf, 80);
            let n = meta.protect_rtp(&mut buf, n).unwrap();
            call.handle_datagram(now, SocketRef::WaV4, META, &mut buf, n, &mut out);
            let n = src[1].write_next(&mut buf, 80);
            call.handle_datagram(
                now,
                SocketRef::Internal,
                MEDIA_SERVER,
                &mut buf,
                n,
                &mut out,
            );
            if call.poll_timeout().is_some_and(|t| t <= now) {
                call.handle_timeout(now, &mut out);
            }
            drop(out.take());
            while call.poll_event().is_some() {}
        }
        drop(out);
        calls.push(call);
        metas.push(meta);
    }
    let with_metas = live() - base;
    metas.clear();
    eprintln!(
        "{sdes:?}: with peers {with_metas}, calls only {}",
        live() - base
    );
    let _ = TRACKING.try_with(|t| t.set(false));
    inspect(&calls);
    let held = (live() - base) as usize / CALLS;
    let inline = std::mem::size_of::<Call>();
    drop(calls);
    (inline, held - inline)
}

/// The parts' inline sizes, for the report (the bounds are on the totals below).
#[test]
fn inline_sizes() {
    use std::mem::size_of;
    eprintln!(
        "inline: Call {} B = 2 x Leg {} B (Transport {} B) + CallConfig {} B + the rest",
        size_of::<Call>(),
        size_of::<relay::call::Leg>(),
        size_of::<relay::call::Transport>(),
        size_of::<CallConfig>(),
    );
    eprintln!(
        "boxed: SrtpSession {} B, ControllingAgent {} B, DtlsDriver {} B",
        size_of::<relay::srtp::SrtpSession>(),
        size_of::<relay::ice::ControllingAgent>(),
        size_of::<relay::dtls::DtlsDriver>(),
    );
    eprintln!(
        "queued: CallEventKind {} B, IceEvent {} B, DtlsEvent {} B",
        size_of::<relay::api::CallEventKind>(),
        size_of::<relay::ice::IceEvent>(),
        size_of::<relay::dtls::DtlsEvent>(),
    );
    assert!(size_of::<relay::call::Transport>() <= 16, "a tag and a box");
}

/// A DTLS call (Meta's leg) to a plain-RTP media server: what the loadtest runs.
#[test]
fn a_connected_dtls_call_stays_small() {
    let (inline, heap) = connected_call_bytes(None);
    eprintln!(
        "DTLS call: Call {inline} B inline + {heap} B heap = {:.1} KiB",
        (inline + heap) as f64 / 1024.0
    );
    // 2026-12-05: 2,208 + 10,863 B (18.8 KiB before this guard: the DTLS instance's 3 KiB
    // stayed inline in the driver after it was freed, ICE reserved 16 pairs, the SDPs were
    // kept as text).
    assert!(inline <= 2_400, "Call is {inline} B inline");
    assert!(inline + heap <= 13_800, "{inline} + {heap} B");
}

#[test]
fn a_connected_sdes_call_stays_small() {
    let (inline, heap) = connected_call_bytes(Some(SrtpProfile::Aes128CmHmacSha1_80));
    eprintln!(
        "SDES call: Call {inline} B inline + {heap} B heap = {:.1} KiB",
        (inline + heap) as f64 / 1024.0
    );
    // 2026-12-05: 2,208 + 6,823 B.
    assert!(inline + heap <= 9_600, "{inline} + {heap} B");
}

// Diagnostic: which blocks the calls keep, by size (`-- --ignored --nocapture`). A block's
// size usually names it: 5,984 B the SRTP session, ~2,000 B the ICE transport (agent + DTLS
// driver), 96 B × capacity the call's event queue, 112 B × capacity ICE's pairs.

const TRACK: usize = 8192;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static TRACKED: Cell<usize> = const { Cell::new(0) };
    static BLOCKS: std::cell::RefCell<[(usize, usize); TRACK]> =
        const { std::cell::RefCell::new([(0, 0); TRACK]) };
}

fn track(ptr: *mut u8, size: usize) {
    let _ = TRACKING.try_with(|t| {
        if t.get() {
            let _ = BLOCKS.try_with(|b| {
                if let Ok(mut b) = b.try_borrow_mut()
                    && let Some(e) = b.iter_mut().find(|e| e.0 == 0)
                {
                    *e = (ptr as usize, size);
                    let _ = TRACKED.try_with(|n| n.set(n.get() + 1));
                }
            });
        }
    });
}

fn untrack(ptr: *mut u8) {
    if TRACKED.try_with(Cell::get).unwrap_or(0) == 0 {
        return;
    }
    let _ = BLOCKS.try_with(|b| {
        if let Ok(mut b) = b.try_borrow_mut()
            && let Some(e) = b.iter_mut().find(|e| e.0 == ptr as usize)
        {
            *e = (0, 0);
            let _ = TRACKED.try_with(|n| n.set(n.get() - 1));
        }
    });
}

#[test]
#[ignore = "diagnostic"]
fn which_blocks_a_dtls_call_keeps() {
    connected_calls(None, |_| {
        let mut sizes: Vec<usize> = BLOCKS.with(|b| {
            b.borrow()
                .iter()
                .filter(|e| e.0 != 0)
                .map(|e| e.1)
                .collect()
        });
        sizes.sort_unstable();
        let mut counts: std::collections::BTreeMap<usize, usize> = Default::default();
        for s in sizes {
            *counts.entry(s).or_default() += 1;
        }
        for (s, n) in counts.iter().rev() {
            eprintln!("{s:>6} B x {n} ({:.1} per call)", *n as f64 / CALLS as f64);
        }
    });
}
