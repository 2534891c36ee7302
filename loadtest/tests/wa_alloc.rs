//! The WhatsApp-side peer's media path allocates nothing per packet, now that everything Meta
//! does before media is e2e's `MetaLink`: two SDES peers keyed from each other's SDP send
//! stamped SRTP to each other over loopback (`tick` into a send batch, `handle` of what
//! arrived), and the counting allocator sees no allocation on this thread.

#[path = "../../relay/tests/alloc_support/mod.rs"]
mod alloc_support;

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use alloc_support::allocations;
use e2e::dtls::PeerCertificate;
use e2e::meta::MetaConfig;
use e2e::rtp::unix_micros;
use loadtest::peer::wa::WaPeer;
use loadtest::stats::Totals;
use relay::engine::udp::SendBatch;
use relay::srtp::SrtpProfile;

/// Fewer than a second of 20 ms ticks: no sender report falls due (those allocate, every 5 s).
const ROUNDS: u32 = 40;

#[test]
fn sdes_media_both_ways_allocates_nothing_per_packet() {
    let cfg = MetaConfig::default()
        .ipv4_only()
        .certificate(PeerCertificate::generate().unwrap())
        .sdes(SrtpProfile::AeadAes128Gcm);
    let sock = || UdpSocket::bind("127.0.0.1:0").unwrap();
    let (sa, sb) = (sock(), sock());
    for s in [&sa, &sb] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    let start = Instant::now();
    let mut a = WaPeer::new(sa.local_addr().unwrap(), cfg.clone()).unwrap();
    let mut b = WaPeer::new(sb.local_addr().unwrap(), cfg).unwrap();
    let (offer_a, offer_b) = (a.offer_sdp(), b.offer_sdp());
    a.set_answer(&offer_b, start).unwrap();
    b.set_answer(&offer_a, start).unwrap();
    a.attach(sa.as_raw_fd());
    b.attach(sb.as_raw_fd());
    assert!(a.is_ready() && b.is_ready());

    let mut io = Io {
        out: SendBatch::new(),
        scratch: [0u8; 2048],
        buf: [0u8; 2048],
    };
    let (mut ta, mut tb) = (Totals::default(), Totals::default());
    let mut round = |k: u32| {
        let now = start + Duration::from_millis(20) * k;
        io.one_way(now, (&mut a, &mut ta), (&mut b, &mut tb, &sb));
        io.one_way(now, (&mut b, &mut tb), (&mut a, &mut ta, &sa));
    };
    // The first packet each way sets up per-stream state.
    round(0);
    let before = allocations();
    for k in 1..ROUNDS {
        round(k);
    }
    let allocated = allocations() - before;
    assert_eq!(allocated, 0, "allocations in {} media rounds", ROUNDS - 1);
    for t in [&ta, &tb] {
        assert_eq!(t.up.sent, u64::from(ROUNDS));
        assert_eq!(t.down.received, u64::from(ROUNDS));
        assert_eq!(t.srtp_errors, 0);
    }
}

struct Io {
    out: SendBatch,
    scratch: [u8; 2048],
    buf: [u8; 2048],
}

impl Io {
    /// One tick of `from`'s audio, sent, received on `to`'s socket and handled by `to`.
    fn one_way(
        &mut self,
        now: Instant,
        (from, from_totals): (&mut WaPeer, &mut Totals),
        (to, to_totals, to_sock): (&mut WaPeer, &mut Totals, &UdpSocket),
    ) {
        let (out, scratch, buf) = (&mut self.out, &mut self.scratch, &mut self.buf);
        from.tick(now, unix_micros(), true, scratch, out, from_totals);
        out.flush();
        let (n, src) = to_sock.recv_from(buf).unwrap();
        to.handle(now, unix_micros(), src, &mut buf[..n], out, to_totals);
    }
}
