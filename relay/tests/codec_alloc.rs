//! Proves the codec layer's per-frame calls allocate nothing, in Rust or in libopus.
//!
//! libopus allocates with C `malloc`, which Rust's global allocator does not see, so this test
//! binary interposes `malloc`/`calloc`/`realloc` themselves (forwarding to glibc's
//! `__libc_*` entry points) and counts calls made on the test thread. The check that the
//! interposition sees libopus at all: creating a decoder (a `malloc` inside libopus) counts.

use std::cell::Cell;
use std::ffi::c_void;

use relay::codec::g711::{self, G711};
use relay::codec::opus::{MAX_PACKET, OpusDecoder, OpusEncoder, OpusEncoderConfig};
use relay::codec::resample::Resampler;
use relay::codec::transcoder::{OpusFrame, OpusToPcm, PcmFormat, PcmFrame, PcmToOpus};
use relay::wire::rtp::{RtpTs, Seq, Ssrc};

thread_local! {
    static MALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    let _ = MALLOCS.try_with(|n| n.set(n.get() + 1));
}

fn mallocs() -> u64 {
    MALLOCS.with(Cell::get)
}

unsafe extern "C" {
    fn __libc_malloc(size: usize) -> *mut c_void;
    fn __libc_calloc(n: usize, size: usize) -> *mut c_void;
    fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void;
}

/// # Safety
/// The C allocator's contract; forwards unchanged.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    count();
    unsafe { __libc_malloc(size) }
}

/// # Safety
/// As `malloc`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    count();
    unsafe { __libc_calloc(n, size) }
}

/// # Safety
/// As `malloc`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    count();
    unsafe { __libc_realloc(p, size) }
}

fn speechlike(rate: u32, samples: usize) -> Vec<i16> {
    // Two tones and a slow envelope: voiced, changing, enough to drive SILK and CELT.
    (0..samples)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            let env = 0.5 + 0.5 * (2.0 * std::f64::consts::PI * 3.0 * t).sin();
            let s = (2.0 * std::f64::consts::PI * 180.0 * t).sin()
                + 0.5 * (2.0 * std::f64::consts::PI * 1100.0 * t).sin();
            (env * s * 9000.0) as i16
        })
        .collect()
}

#[test]
fn the_interposer_sees_libopus() {
    let before = mallocs();
    let dec = OpusDecoder::new(8000).unwrap();
    assert!(
        mallocs() > before,
        "opus_decoder_create's malloc was not counted"
    );
    drop(dec);
}

#[test]
fn codec_frames_allocate_nothing() {
    // Everything constructed first.
    let wa_pcm = speechlike(48_000, 48_000 * 4);
    let mut wa_enc = OpusEncoder::new(48_000, OpusEncoderConfig::toward_wa()).unwrap();
    let mut opus_to_ulaw = OpusToPcm::new(PcmFormat::Ulaw, RtpTs::new(1)).unwrap();
    let mut opus_to_l16 = OpusToPcm::new(PcmFormat::L16 { rate: 16_000 }, RtpTs::new(1)).unwrap();
    let mut ulaw_to_opus = PcmToOpus::new(
        PcmFormat::Ulaw,
        OpusEncoderConfig::toward_wa(),
        RtpTs::new(2),
    )
    .unwrap();
    let mut alaw_to_opus = PcmToOpus::new(
        PcmFormat::Alaw,
        OpusEncoderConfig::toward_wa(),
        RtpTs::new(2),
    )
    .unwrap();
    let mut down = Resampler::new(48_000, 16_000, 960).unwrap();
    let mut up = Resampler::new(8_000, 48_000, 160).unwrap();
    let mut pkt = [0u8; MAX_PACKET];
    let mut pcm16 = [0i16; 320];
    let mut pcm48 = [0i16; 960];
    let mut law = [0u8; 160];
    let mut frames = 0u64;
    let mut opus_out = 0u64;

    let before = mallocs();
    for (i, frame) in wa_pcm.chunks_exact(960).enumerate() {
        let n = wa_enc.encode(frame, &mut pkt).unwrap();
        let seq = Seq::new(i as u16);
        let ts = RtpTs::new((i as u32).wrapping_mul(960));
        // Every 10th packet lost: FEC and concealment run too.
        if i % 10 == 5 {
            continue;
        }
        opus_to_ulaw
            .push(Ssrc::new(7), seq, ts, &pkt[..n], &mut |f: PcmFrame<'_>| {
                frames += 1;
                law.copy_from_slice(f.payload);
            })
            .unwrap();
        opus_to_l16
            .push(Ssrc::new(7), seq, ts, &pkt[..n], &mut |_: PcmFrame<'_>| {
                frames += 1
            })
            .unwrap();
        ulaw_to_opus
            .push(
                Ssrc::new(9),
                RtpTs::new((i as u32) * 160),
                &law,
                &mut |f: OpusFrame<'_>| opus_out += f.payload.len() as u64,
            )
            .unwrap();
        g711::encode(G711::Alaw, &pcm16[..160], &mut law);
        alaw_to_opus
            .push(
                Ssrc::new(9),
                RtpTs::new((i as u32) * 160),
                &law,
                &mut |_: OpusFrame<'_>| opus_out += 1,
            )
            .unwrap();
        down.process(frame, &mut pcm16).unwrap();
        up.process(&pcm16[..160], &mut pcm48).unwrap();
    }
    let allocated = mallocs() - before;
    assert_eq!(allocated, 0, "{allocated} allocations over 200 frames");
    assert!(
        opus_to_ulaw.stats().fec_frames >= 19,
        "{:?}",
        opus_to_ulaw.stats()
    );
    assert!(frames > 300 && opus_out > 100);
}
