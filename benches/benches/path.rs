//! The whole in-process per-packet path of a connected call, for a 172-byte RTP packet
//! (12-byte header + 160-byte payload), through the real `Call::handle_datagram`:
//!
//! - `wa_to_internal`: classify, source check, SRTP unprotect, parse, payload-type map, rewrite
//!   (SSRC/seq/ts), stats, and the copy into a preallocated outbox for the internal socket.
//! - `internal_to_wa`: source check, classify, parse, payload-type map, gate, rewrite, SRTP
//!   protect, and the copy into the outbox for the selected WhatsApp address.
//!
//! The `recorded` group is the single call with a recording fork: each packet's payload is also
//! copied into a slot of the recorder's queue (the disk writer runs on its own thread). The
//! `listened` group is the single call with a supervisor's live listen-in connected: each packet
//! is also copied, rewritten onto the supervisor's track, SRTP-protected (the profile DTLS with
//! the browser negotiated: AES-128-GCM) and pushed to the outbox for the fork's socket.
//!
//! SDES on the WhatsApp leg, so the profile can be chosen (DTLS would negotiate AES-256-GCM).
//! Meta's protection of each fresh packet (the replay window refuses reuse) is done in
//! `iter_batched`'s setup, outside the timed region. The `10k_calls` variants spread the same
//! traffic round-robin over 10,000 connected calls, so each packet touches cold per-call state
//! as a loaded shard does.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use relay::api::ListenMode;
use relay::call::fork::{ListenRequest, RecordRequest};
use relay::call::testing::{
    self, INTERNAL_OPUS_PT, MEDIA_SERVER, META, META_OPUS_PT, MetaPeer, RingOutbox, RtpSource,
};
use relay::call::{Call, CallConfig};
use relay::dtls::DtlsIdentity;
use relay::listen;
use relay::listen::testing::{FORK_ADDR, Supervisor};
use relay::net::SocketRef;
use relay::record::{Recorder, RecordingConfig};
use relay::srtp::SrtpProfile;

const PAYLOAD: usize = 160;
const PTIME: Duration = Duration::from_millis(20);
const CALLS: usize = 10_000;

/// One packet as the network hands it over: a buffer with room for the SRTP tag, and its length.
type Datagram = ([u8; 256], usize);

/// A connected SDES call with its gate open, and Meta's and the media server's sources.
struct Connected {
    call: Call,
    meta: MetaPeer,
    meta_src: RtpSource,
    server_src: RtpSource,
}

impl Connected {
    fn new(profile: SrtpProfile, identity: &Arc<DtlsIdentity>, t0: Instant) -> Connected {
        let (mut meta, offer) = MetaPeer::sdes(profile);
        let created =
            testing::create_call(&offer, CallConfig::default(), identity.clone(), t0).unwrap();
        let mut call = created.call;
        meta.accept_answer(&created.whatsapp_sdp, t0).unwrap();
        let now = testing::establish(&mut call, &mut meta, t0, Duration::from_secs(1)).unwrap();
        let mut out = RingOutbox::with_capacity(8);
        call.open_gate(now, &mut out);
        let mut c = Connected {
            call,
            meta,
            meta_src: RtpSource::new(rand_u32(), META_OPUS_PT, 1, 0),
            server_src: RtpSource::new(rand_u32(), INTERNAL_OPUS_PT, 1, 0),
        };
        // First packets both ways: per-stream state (mappings, trackers) exists from here on.
        for _ in 0..3 {
            let (mut b, n) = c.meta_packet();
            c.call
                .handle_datagram(now, SocketRef::WaV4, META, &mut b, n, &mut out);
            let (mut b, n) = c.server_packet();
            c.call
                .handle_datagram(now, SocketRef::Internal, MEDIA_SERVER, &mut b, n, &mut out);
            out.clear();
        }
        while c.call.poll_event().is_some() {}
        c
    }

    fn meta_packet(&mut self) -> Datagram {
        let mut b = [0u8; 256];
        let n = self.meta_src.write_next(&mut b, PAYLOAD);
        let n = self.meta.protect_rtp(&mut b, n).unwrap();
        (b, n)
    }

    fn server_packet(&mut self) -> Datagram {
        let mut b = [0u8; 256];
        let n = self.server_src.write_next(&mut b, PAYLOAD);
        (b, n)
    }
}

fn rand_u32() -> u32 {
    // SSRCs only need to differ between calls; no RNG dependency for that.
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0x1000);
    NEXT.fetch_add(0x9e37_79b9, Ordering::Relaxed)
}

/// Which fork the single call carries.
enum Fork<'a> {
    None,
    /// Both directions forked to the recorder's queue: the `recorded` variant.
    Recorded(&'a Arc<Recorder>),
    /// A supervisor's browser connected to a listen-in: the `listened` variant.
    Listened,
}

fn single_call(
    c: &mut Criterion,
    profile: SrtpProfile,
    identity: &Arc<DtlsIdentity>,
    fork: Fork<'_>,
) {
    let mut t0 = Instant::now();
    let name = match fork {
        Fork::Recorded(_) => format!("path/{profile}/recorded"),
        Fork::Listened => format!("path/{profile}/listened"),
        Fork::None => format!("path/{profile}"),
    };
    let mut group = c.benchmark_group(name);
    let mut conn = Connected::new(profile, identity, t0);
    let mut supervisor = None;
    if let Fork::Listened = fork {
        let mut sup = Supervisor::new(t0);
        let via = SocketRef::new(3);
        let status = conn
            .call
            .listen(
                ListenRequest::Start {
                    offer_sdp: sup.offer(),
                    mode: ListenMode::Listen,
                    socket: via,
                    local: FORK_ADDR,
                    advertised: FORK_ADDR,
                },
                t0,
                &mut RingOutbox::with_capacity(8),
            )
            .unwrap()
            .unwrap();
        sup.accept(&status.answer_sdp, t0).unwrap();
        t0 = listen::testing::connect(&mut conn.call, &mut sup, via, t0, Duration::from_secs(2))
            .unwrap();
        while conn.call.poll_event().is_some() {}
        supervisor = Some(sup);
    }
    if let Fork::Recorded(rec) = fork {
        let call_id = conn.call.call_id.clone();
        let open = rec
            .create(&call_id, "b", "c", std::time::SystemTime::now())
            .unwrap();
        let start = RecordRequest::Start {
            open: Box::new(open),
            link: rec.link().clone(),
        };
        conn.call.record(start, t0).unwrap();
        while conn.call.poll_event().is_some() {}
    }
    let mut out = RingOutbox::with_capacity(8);
    let mut now = t0;

    // Setup and routine borrow disjoint parts of `conn`.
    let Connected {
        call,
        meta,
        meta_src,
        server_src,
    } = &mut conn;
    let mut wa = Connected::meta_packets(meta, meta_src);
    group.bench_function("wa_to_internal", |b| {
        b.iter_batched(
            || {
                now += PTIME;
                (now, wa())
            },
            |(now, (mut buf, n))| {
                call.handle_datagram(now, SocketRef::WaV4, META, &mut buf, n, &mut out);
                black_box(out.len());
                out.clear();
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("internal_to_wa", |b| {
        b.iter_batched(
            || {
                now += PTIME;
                let mut buf = [0u8; 256];
                let n = server_src.write_next(&mut buf, PAYLOAD);
                (now, (buf, n))
            },
            |(now, (mut buf, n))| {
                call.handle_datagram(
                    now,
                    SocketRef::Internal,
                    MEDIA_SERVER,
                    &mut buf,
                    n,
                    &mut out,
                );
                black_box(out.len());
                out.clear();
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
    assert_eq!(out.overflowed, 0);
    let info = call.info();
    assert_eq!(
        info.whatsapp.dropped + info.internal.dropped,
        0,
        "every packet was forwarded"
    );
    if supervisor.is_some() {
        let st = call
            .listen(ListenRequest::Status, now, &mut out)
            .unwrap()
            .unwrap();
        assert_eq!(
            st.dropped_packets, 0,
            "every packet reached the supervisor's tracks"
        );
        eprintln!(
            "listened variant: {} consumer + {} agent packets to the supervisor",
            st.consumer_packets, st.agent_packets
        );
    }
}

impl Connected {
    /// A generator of Meta's packets that borrows only Meta's side.
    fn meta_packets<'a>(
        meta: &'a mut MetaPeer,
        src: &'a mut RtpSource,
    ) -> impl FnMut() -> Datagram + 'a {
        move || {
            let mut b = [0u8; 256];
            let n = src.write_next(&mut b, PAYLOAD);
            let n = meta.protect_rtp(&mut b, n).unwrap();
            (b, n)
        }
    }
}

fn many_calls(c: &mut Criterion, profile: SrtpProfile, identity: &Arc<DtlsIdentity>) {
    let t0 = Instant::now();
    let mut group = c.benchmark_group(format!("path/{profile}/10k_calls"));
    let (mut calls, mut peers): (Vec<Call>, Vec<(MetaPeer, RtpSource, RtpSource)>) = (0..CALLS)
        .map(|_| {
            let c = Connected::new(profile, identity, t0);
            (c.call, (c.meta, c.meta_src, c.server_src))
        })
        .unzip();
    let mut out = RingOutbox::with_capacity(8);
    let mut sent = 0u64;
    let mut next = move || {
        sent += 1;
        let k = (sent % CALLS as u64) as usize;
        // Each round reaches every call once: every call sees a packet every 20 ms.
        let round = (sent / CALLS as u64) as u32;
        (k, t0 + PTIME * (1 + round))
    };
    group.bench_function("wa_to_internal", |b| {
        b.iter_batched(
            || {
                let (k, now) = next();
                let (meta, src, _) = &mut peers[k];
                let mut buf = [0u8; 256];
                let n = src.write_next(&mut buf, PAYLOAD);
                let n = meta.protect_rtp(&mut buf, n).unwrap();
                (k, now, buf, n)
            },
            |(k, now, mut buf, n)| {
                calls[k].handle_datagram(now, SocketRef::WaV4, META, &mut buf, n, &mut out);
                black_box(out.len());
                out.clear();
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("internal_to_wa", |b| {
        b.iter_batched(
            || {
                let (k, now) = next();
                let (_, _, src) = &mut peers[k];
                let mut buf = [0u8; 256];
                let n = src.write_next(&mut buf, PAYLOAD);
                (k, now, buf, n)
            },
            |(k, now, mut buf, n)| {
                calls[k].handle_datagram(
                    now,
                    SocketRef::Internal,
                    MEDIA_SERVER,
                    &mut buf,
                    n,
                    &mut out,
                );
                black_box(out.len());
                out.clear();
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
    assert_eq!(out.overflowed, 0);
    let dropped: u64 = calls
        .iter()
        .map(|c| {
            let i = c.info();
            i.whatsapp.dropped + i.internal.dropped
        })
        .sum();
    assert_eq!(dropped, 0, "every packet was forwarded");
}

fn bench(c: &mut Criterion) {
    let identity = Arc::new(DtlsIdentity::generate().unwrap());
    let profiles = [SrtpProfile::Aes128CmHmacSha1_80, SrtpProfile::AeadAes128Gcm];
    for profile in profiles {
        single_call(c, profile, &identity, Fork::None);
    }
    // One fork: a supervisor listening in live.
    single_call(
        c,
        SrtpProfile::Aes128CmHmacSha1_80,
        &identity,
        Fork::Listened,
    );
    // One fork: the same call recorded. The writer thread drains to files under the temp dir;
    // what it could not keep up with is dropped on the shard side (counted, reported below).
    let dir = std::env::temp_dir().join(format!("relay-bench-rec-{}", std::process::id()));
    let rec = Recorder::start(RecordingConfig {
        dir: Some(dir.clone()),
        name_template: "{call_id}-{id}".into(),
        ..RecordingConfig::default()
    })
    .unwrap();
    single_call(
        c,
        SrtpProfile::Aes128CmHmacSha1_80,
        &identity,
        Fork::Recorded(&rec),
    );
    rec.shutdown();
    let st = rec.stats();
    use std::sync::atomic::Ordering::Relaxed;
    eprintln!(
        "recorded variant: {} packets written, {} dropped (writer behind)",
        st.packets_written.load(Relaxed),
        st.dropped_queue_full.load(Relaxed)
    );
    let _ = std::fs::remove_dir_all(&dir);
    for profile in profiles {
        many_calls(c, profile, &identity);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
