//! What `bot_alloc` and `g711_alloc` share: a real `Call` whose WhatsApp side is an SDES Meta
//! peer sending Opus (a 440 Hz tone, encoded up front so the measured loop only moves packets),
//! brought up with the internal leg a test gives; WhatsApp's packets handed to it one by one;
//! and the check that the counting allocator is installed at all. Include `alloc_support`
//! beside it.

// Each test uses part of it.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use relay::api::InternalLegSpec;
use relay::call::testing::{self, META, META_OPUS_PT, MetaPeer, RingOutbox};
use relay::call::{Call, CallConfig};
use relay::codec::opus::{OpusEncoder, OpusEncoderConfig};
use relay::dtls::DtlsIdentity;
use relay::net::SocketRef;
use relay::srtp::SrtpProfile;
use relay::wire::rtp::{self, Pt, RtpHeaderFields, RtpTs, Seq, Ssrc};

use super::alloc_support::allocations;

/// Frames each way before counting (first-packet state, codec warm-up).
pub const WARM_UP: u32 = 200;
/// Frames each way counted.
pub const MEASURED: u32 = 3_000;
pub const PTIME: Duration = Duration::from_millis(20);

/// `n` samples of a `freq` Hz tone at `rate`, from sample `start`.
pub fn tone(freq: f64, rate: u32, start: u32, n: u32) -> Vec<i16> {
    (start..start + n)
        .map(|i| {
            (8000.0 * (2.0 * std::f64::consts::PI * freq * f64::from(i) / f64::from(rate)).sin())
                as i16
        })
        .collect()
}

/// A call up with an SDES Meta peer on the WhatsApp side (the gate still closed).
pub struct OpusCall {
    pub call: Call,
    pub meta: MetaPeer,
    pub out: RingOutbox,
    /// When the call came up.
    pub now: Instant,
    /// The relay's SDP toward the internal leg.
    pub internal_sdp: String,
    /// WhatsApp's Opus frames, [`WARM_UP`] + [`MEASURED`] of them.
    opus: Vec<Vec<u8>>,
}

impl OpusCall {
    /// Creates the call with `internal` as its other leg and establishes the WhatsApp leg.
    pub fn establish(internal: InternalLegSpec) -> OpusCall {
        let identity = Arc::new(DtlsIdentity::generate().unwrap());
        let t0 = Instant::now();
        let (mut meta, offer) = MetaPeer::sdes(SrtpProfile::Aes128CmHmacSha1_80);
        let created =
            testing::create_call_with(&offer, internal, CallConfig::default(), identity, t0)
                .unwrap();
        let mut call = created.call;
        meta.accept_answer(&created.whatsapp_sdp, t0).unwrap();
        let now = testing::establish(&mut call, &mut meta, t0, Duration::from_secs(5)).unwrap();
        let mut enc = OpusEncoder::new(48_000, OpusEncoderConfig::toward_wa()).unwrap();
        let opus = (0..WARM_UP + MEASURED)
            .map(|i| {
                let mut b = [0u8; 1500];
                let n = enc
                    .encode(&tone(440.0, 48_000, i * 960, 960), &mut b)
                    .unwrap();
                b[..n].to_vec()
            })
            .collect();
        OpusCall {
            call,
            meta,
            out: RingOutbox::with_capacity(16),
            now,
            internal_sdp: created.internal_sdp,
            opus,
        }
    }

    /// Opens the gate and forgets what that sent.
    pub fn open_gate(&mut self) {
        self.call.open_gate(self.now, &mut self.out);
        self.out.clear();
    }

    /// WhatsApp's packet `i` (Opus frame `i`, sequence 100 + i), SRTP-protected by the Meta
    /// peer, into the call at `now`.
    pub fn whatsapp_sends(&mut self, i: u32, now: Instant) {
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
        let p = &self.opus[i as usize];
        b[h..h + p.len()].copy_from_slice(p);
        let len = self.meta.protect_rtp(&mut b, h + p.len()).unwrap();
        self.call
            .handle_datagram(now, SocketRef::WaV4, META, &mut b, len, &mut self.out);
    }
}

/// The counter sees this thread's allocations at all (else a zero proves nothing).
pub fn assert_counting() {
    let before = allocations();
    std::hint::black_box(Vec::<u8>::with_capacity(64));
    assert!(
        allocations() > before,
        "the counting allocator is installed"
    );
}
