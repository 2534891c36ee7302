//! The two directions of a transcoded stream, as stream-level state machines.
//!
//! [`OpusToPcm`]: Opus RTP payloads (48 kHz RTP clock) in, 20 ms PCM frames out (G.711 μ-law
//! or A-law at 8 kHz, or L16 at the leg's rate), with the timestamp of each on the leg's clock.
//! A missing packet is rebuilt before the next one is played: from that packet's in-band FEC
//! for the frame right before it, by concealment for up to [`MAX_RECOVERED_FRAMES`] before that;
//! longer gaps stay gaps (the far end's own concealment is better than 60 ms of our fade-out).
//!
//! [`PcmToOpus`]: PCM RTP payloads of any packet time in, 20 ms Opus frames out on the 48 kHz
//! clock. Small gaps in the input timeline (a lost G.711 packet) are filled with silence so the
//! Opus stream keeps its 20 ms cadence; a jump or a new SSRC starts a new timeline that stays
//! continuous on the output.
//!
//! Neither holds a jitter buffer: a packet older than the last one played is dropped (counted),
//! as the relay forwards in arrival order everywhere else too. Neither allocates after `new`.

use super::CodecError;
use super::clock::ClockMap;
use super::g711::{self, G711};
use super::opus::{MAX_PACKET, OPUS_RTP_CLOCK, OpusDecoder, OpusEncoder, OpusEncoderConfig};
use crate::wire::rtp::{Clock, RtpTs, Seq, Ssrc};

/// Lost frames rebuilt before a packet that follows a gap: 60 ms.
pub const MAX_RECOVERED_FRAMES: u32 = 3;

/// The longest Opus packet (120 ms) at 48 kHz.
const MAX_OPUS_SAMPLES_48K: usize = 5760;

/// The longest PCM payload taken in one packet: 120 ms at 48 kHz of 16-bit samples fits in a
/// datagram; more is refused.
const MAX_PCM_SAMPLES: usize = 5760;

/// A PCM-side input gap filled with silence when at most this many 20 ms frames long; longer
/// gaps restart the timeline.
const MAX_FILLED_FRAMES: u32 = 5;

/// What the non-Opus side carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PcmFormat {
    /// G.711 μ-law, 8 kHz.
    Ulaw,
    /// G.711 A-law, 8 kHz.
    Alaw,
    /// 16-bit linear PCM, network byte order (RFC 3551 §4.5.11), at `rate` Hz.
    L16 { rate: u32 },
}

impl From<G711> for PcmFormat {
    fn from(law: G711) -> PcmFormat {
        match law {
            G711::Ulaw => PcmFormat::Ulaw,
            G711::Alaw => PcmFormat::Alaw,
        }
    }
}

impl PcmFormat {
    /// Samples per second (also the RTP clock rate of every one of these formats).
    pub fn rate(self) -> u32 {
        match self {
            PcmFormat::Ulaw | PcmFormat::Alaw => 8000,
            PcmFormat::L16 { rate } => rate,
        }
    }

    /// The RTP clock of the format (its sample rate).
    pub fn clock(self) -> Clock {
        Clock::at_least_1(self.rate())
    }

    pub fn bytes_per_sample(self) -> usize {
        match self {
            PcmFormat::Ulaw | PcmFormat::Alaw => 1,
            PcmFormat::L16 { .. } => 2,
        }
    }

    /// Samples in 20 ms.
    pub fn frame_samples(self) -> usize {
        self.rate() as usize / 50
    }

    /// Encodes `pcm` into `out`; returns bytes written (whole samples that fit).
    pub fn encode(self, pcm: &[i16], out: &mut [u8]) -> usize {
        match self {
            PcmFormat::Ulaw => g711::encode(G711::Ulaw, pcm, out),
            PcmFormat::Alaw => g711::encode(G711::Alaw, pcm, out),
            PcmFormat::L16 { .. } => {
                let n = pcm.len().min(out.len() / 2);
                for (o, s) in out.chunks_exact_mut(2).zip(&pcm[..n]) {
                    o.copy_from_slice(&s.to_be_bytes());
                }
                n * 2
            }
        }
    }

    /// Decodes `bytes` into `out`; returns samples written.
    pub fn decode(self, bytes: &[u8], out: &mut [i16]) -> Result<usize, CodecError> {
        let samples = bytes.len() / self.bytes_per_sample();
        if samples > out.len() {
            return Err(CodecError::OutputTooSmall {
                need: samples,
                have: out.len(),
            });
        }
        match self {
            PcmFormat::Ulaw => Ok(g711::decode(G711::Ulaw, bytes, out)),
            PcmFormat::Alaw => Ok(g711::decode(G711::Alaw, bytes, out)),
            PcmFormat::L16 { .. } => {
                if !bytes.len().is_multiple_of(2) {
                    return Err(CodecError::OddL16Payload(bytes.len()));
                }
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = i16::from_be_bytes([b[0], b[1]]);
                }
                Ok(samples)
            }
        }
    }
}

/// One 20 ms frame [`OpusToPcm`] produced.
#[derive(Debug)]
pub struct PcmFrame<'a> {
    /// RTP timestamp on the PCM side's clock.
    pub ts: RtpTs,
    /// The samples (mono, at the format's rate).
    pub pcm: &'a [i16],
    /// The same samples in the format's wire encoding.
    pub payload: &'a [u8],
    /// Rebuilt (FEC or concealment) for a packet that did not arrive.
    pub recovered: bool,
}

/// Counters of one direction (cumulative).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TranscodeStats {
    /// Packets taken in and decoded.
    pub packets_in: u64,
    /// Frames produced (including rebuilt ones).
    pub frames_out: u64,
    /// Frames rebuilt from the next packet's in-band FEC.
    pub fec_frames: u64,
    /// Frames synthesised by packet-loss concealment.
    pub concealed_frames: u64,
    /// Input packets missing (from sequence gaps).
    pub lost: u64,
    /// Input packets older than what was already played (dropped).
    pub late: u64,
    /// Input packets that failed to decode (dropped).
    pub bad: u64,
    /// Silence samples inserted for PCM input gaps.
    pub filled_samples: u64,
}

#[derive(Clone, Copy, Debug)]
struct LastIn {
    ssrc: Ssrc,
    seq: Seq,
    /// Input timestamp just past the packet's audio.
    ts_end: RtpTs,
}

/// Opus (48 kHz RTP clock) → 20 ms PCM frames.
pub struct OpusToPcm {
    format: PcmFormat,
    dec: OpusDecoder,
    clock: ClockMap,
    last: Option<LastIn>,
    /// Next output timestamp (continues the output timeline across restarts).
    out_next: RtpTs,
    pcm: Box<[i16]>,
    bytes: Box<[u8]>,
    stats: TranscodeStats,
}

impl OpusToPcm {
    /// Output timestamps start at `out_base` (random, RFC 3550 §5.1).
    pub fn new(format: PcmFormat, out_base: RtpTs) -> Result<OpusToPcm, CodecError> {
        let rate = format.rate();
        let dec = OpusDecoder::new(rate)?;
        let max = MAX_OPUS_SAMPLES_48K * rate as usize / OPUS_RTP_CLOCK as usize;
        Ok(OpusToPcm {
            format,
            dec,
            clock: ClockMap::new(Clock::OPUS, format.clock(), out_base),
            last: None,
            out_next: out_base,
            pcm: vec![0i16; max].into_boxed_slice(),
            bytes: vec![0u8; format.frame_samples() * format.bytes_per_sample()].into_boxed_slice(),
            stats: TranscodeStats::default(),
        })
    }

    pub fn format(&self) -> PcmFormat {
        self.format
    }

    pub fn stats(&self) -> TranscodeStats {
        self.stats
    }

    /// The PCM-side timestamp for an Opus-side one, on the audio's mapping (RFC 4733 events
    /// share their audio stream's timestamp base).
    pub fn map_ts(&mut self, ts48: RtpTs) -> RtpTs {
        self.clock.map(ts48)
    }

    /// Takes one Opus packet; calls `emit` for each 20 ms frame to send, in order (rebuilt
    /// frames for a gap first). An error means the packet was dropped (counted in stats).
    pub fn push(
        &mut self,
        ssrc: Ssrc,
        seq: Seq,
        ts: RtpTs,
        payload: &[u8],
        emit: &mut impl FnMut(PcmFrame<'_>),
    ) -> Result<(), CodecError> {
        let rate = self.format.rate();
        let to_rate = |units48: u32| (u64::from(units48) * u64::from(rate) / 48_000) as usize;
        match self.last {
            Some(last) if last.ssrc == ssrc => {
                let ahead = seq.delta(last.seq);
                if ahead <= 0 {
                    self.stats.late += 1;
                    return Ok(());
                }
                let lost = (ahead - 1) as u32;
                if lost > 0 {
                    self.stats.lost += u64::from(lost);
                    let gap48 = ts.delta(last.ts_end);
                    if gap48 > 0 && (gap48 as u32).is_multiple_of(lost) {
                        let frame48 = gap48 as u32 / lost;
                        // Only whole Opus frame durations (2.5 - 60 ms) are rebuilt.
                        if (120..=2880).contains(&frame48) && frame48.is_multiple_of(120) {
                            let frames = lost.min(MAX_RECOVERED_FRAMES);
                            let samples = to_rate(frame48);
                            for k in 0..frames {
                                let ts_k = ts.sub((frames - k) * frame48);
                                let fec = k + 1 == frames;
                                let r = if fec {
                                    self.dec.decode_fec(payload, samples, &mut self.pcm)
                                } else {
                                    self.dec.conceal(samples, &mut self.pcm)
                                };
                                if let Ok(n) = r {
                                    if fec {
                                        self.stats.fec_frames += 1;
                                    } else {
                                        self.stats.concealed_frames += 1;
                                    }
                                    self.emit_frames(ts_k, n, true, emit);
                                }
                            }
                        }
                    }
                }
            }
            Some(_) => self.clock.restart(self.out_next),
            None => {}
        }
        let n = match self.dec.decode(payload, &mut self.pcm) {
            Ok(n) => n,
            Err(e) => {
                // Leave `last` alone: the next packet sees this one as lost and rebuilds it.
                self.stats.bad += 1;
                return Err(e);
            }
        };
        self.stats.packets_in += 1;
        self.emit_frames(ts, n, false, emit);
        let dur48 = (n as u64 * 48_000 / u64::from(rate)) as u32;
        self.last = Some(LastIn {
            ssrc,
            seq,
            ts_end: ts.add(dur48),
        });
        Ok(())
    }

    /// Emits `self.pcm[..n]` (starting at Opus timestamp `ts48`) as 20 ms frames.
    fn emit_frames(
        &mut self,
        ts48: RtpTs,
        n: usize,
        recovered: bool,
        emit: &mut impl FnMut(PcmFrame<'_>),
    ) {
        let frame = self.format.frame_samples();
        let per_frame48 = (frame as u64 * 48_000 / u64::from(self.format.rate())) as u32;
        for (i, chunk) in self.pcm[..n].chunks(frame).enumerate() {
            let ts = self.clock.map(ts48.add(i as u32 * per_frame48));
            let len = self.format.encode(chunk, &mut self.bytes);
            self.out_next = ts.add(chunk.len() as u32);
            self.stats.frames_out += 1;
            emit(PcmFrame {
                ts,
                pcm: chunk,
                payload: &self.bytes[..len],
                recovered,
            });
        }
    }
}

/// One Opus frame [`PcmToOpus`] produced.
#[derive(Debug)]
pub struct OpusFrame<'a> {
    /// RTP timestamp on the 48 kHz clock.
    pub ts: RtpTs,
    pub payload: &'a [u8],
    /// The first frame of a new input timeline (send with the marker bit).
    pub discontinuity: bool,
}

#[derive(Clone, Copy, Debug)]
struct Expect {
    ssrc: Ssrc,
    next_ts: RtpTs,
}

/// PCM (any packet time) → 20 ms Opus frames on the 48 kHz clock.
pub struct PcmToOpus {
    format: PcmFormat,
    enc: OpusEncoder,
    clock: ClockMap,
    expect: Option<Expect>,
    /// The 20 ms being assembled and the input timestamp of its first sample.
    acc: Box<[i16]>,
    acc_len: usize,
    acc_ts: RtpTs,
    out_next: RtpTs,
    discontinuity: bool,
    pcm: Box<[i16]>,
    packet: Box<[u8]>,
    stats: TranscodeStats,
}

impl PcmToOpus {
    /// Output timestamps start at `out_base` (48 kHz units).
    pub fn new(
        format: PcmFormat,
        config: OpusEncoderConfig,
        out_base: RtpTs,
    ) -> Result<PcmToOpus, CodecError> {
        let rate = format.rate();
        Ok(PcmToOpus {
            format,
            enc: OpusEncoder::new(rate, config)?,
            clock: ClockMap::new(format.clock(), Clock::OPUS, out_base),
            expect: None,
            acc: vec![0i16; format.frame_samples()].into_boxed_slice(),
            acc_len: 0,
            acc_ts: RtpTs::default(),
            out_next: out_base,
            discontinuity: true,
            pcm: vec![0i16; MAX_PCM_SAMPLES].into_boxed_slice(),
            packet: vec![0u8; MAX_PACKET].into_boxed_slice(),
            stats: TranscodeStats::default(),
        })
    }

    pub fn format(&self) -> PcmFormat {
        self.format
    }

    pub fn stats(&self) -> TranscodeStats {
        self.stats
    }

    /// The Opus-side timestamp for a PCM-side one, on the audio's mapping.
    pub fn map_ts(&mut self, ts: RtpTs) -> RtpTs {
        self.clock.map(ts)
    }

    /// Takes one PCM packet whose first sample has timestamp `ts`; calls `emit` for each
    /// complete 20 ms Opus frame.
    pub fn push(
        &mut self,
        ssrc: Ssrc,
        ts: RtpTs,
        payload: &[u8],
        emit: &mut impl FnMut(OpusFrame<'_>),
    ) -> Result<(), CodecError> {
        let n = match self.format.decode(payload, &mut self.pcm) {
            Ok(n) => n,
            Err(e) => {
                self.stats.bad += 1;
                return Err(e);
            }
        };
        let frame = self.format.frame_samples() as u32;
        match self.expect {
            Some(e) if e.ssrc == ssrc && e.next_ts == ts => {}
            Some(e) if e.ssrc == ssrc => {
                let d = ts.delta(e.next_ts);
                if d < 0 && d > -(frame as i32 * MAX_FILLED_FRAMES as i32) {
                    // Behind what was already taken: a duplicate or a late packet.
                    self.stats.late += 1;
                    return Ok(());
                }
                if d > 0 && (d as u32) <= frame * MAX_FILLED_FRAMES {
                    // A lost packet or two: silence keeps the 20 ms cadence.
                    self.stats.filled_samples += d as u64;
                    self.stats.lost += 1;
                    self.append(None, d as usize, emit)?;
                } else {
                    self.new_timeline(ts, emit)?;
                }
            }
            Some(_) => self.new_timeline(ts, emit)?,
            None => self.acc_ts = ts,
        }
        self.stats.packets_in += 1;
        self.append(Some(n), n, emit)?;
        self.expect = Some(Expect {
            ssrc,
            next_ts: ts.add(n as u32),
        });
        Ok(())
    }

    /// Flushes a partial frame (padded with silence) and starts a new input timeline at `ts`,
    /// continuing the output's.
    fn new_timeline(
        &mut self,
        ts: RtpTs,
        emit: &mut impl FnMut(OpusFrame<'_>),
    ) -> Result<(), CodecError> {
        if self.acc_len > 0 {
            let pad = self.acc.len() - self.acc_len;
            self.append(None, pad, emit)?;
        }
        self.clock.restart(self.out_next);
        self.acc_ts = ts;
        self.discontinuity = true;
        Ok(())
    }

    /// Appends `count` samples (`Some`: the first `count` of `self.pcm`; `None`: silence),
    /// encoding each completed 20 ms frame.
    fn append(
        &mut self,
        from_pcm: Option<usize>,
        count: usize,
        emit: &mut impl FnMut(OpusFrame<'_>),
    ) -> Result<(), CodecError> {
        let mut taken = 0;
        while taken < count {
            let room = self.acc.len() - self.acc_len;
            let k = room.min(count - taken);
            let dst = &mut self.acc[self.acc_len..self.acc_len + k];
            match from_pcm {
                Some(_) => dst.copy_from_slice(&self.pcm[taken..taken + k]),
                None => dst.fill(0),
            }
            self.acc_len += k;
            taken += k;
            if self.acc_len == self.acc.len() {
                let ts48 = self.clock.map(self.acc_ts);
                let len = self.enc.encode(&self.acc, &mut self.packet)?;
                self.acc_len = 0;
                self.acc_ts = self.acc_ts.add(self.acc.len() as u32);
                self.out_next = ts48.add(960);
                self.stats.frames_out += 1;
                let discontinuity = std::mem::take(&mut self.discontinuity);
                emit(OpusFrame {
                    ts: ts48,
                    payload: &self.packet[..len],
                    discontinuity,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::testing::{rms, sine, snr_db};

    /// Opus packets of a tone at 48 kHz (as WhatsApp would send), 20 ms each.
    fn opus_stream(freq: f64, frames: usize) -> (Vec<i16>, Vec<Vec<u8>>) {
        let pcm = sine(freq, 48_000, 960 * frames, 8000.0);
        let mut enc = OpusEncoder::new(
            48_000,
            OpusEncoderConfig {
                loss_percent: 20,
                ..OpusEncoderConfig::toward_wa()
            },
        )
        .unwrap();
        let packets = pcm
            .chunks(960)
            .map(|f| {
                let mut out = [0u8; MAX_PACKET];
                let n = enc.encode(f, &mut out).unwrap();
                out[..n].to_vec()
            })
            .collect();
        (pcm, packets)
    }

    #[derive(Debug, Clone)]
    struct Out {
        ts: u32,
        pcm: Vec<i16>,
        payload_len: usize,
        recovered: bool,
    }

    fn run(t: &mut OpusToPcm, packets: &[(u16, u32, &[u8])]) -> Vec<Out> {
        let mut out = Vec::new();
        for &(seq, ts, p) in packets {
            t.push(
                Ssrc::new(0x1234),
                Seq::new(seq),
                RtpTs::new(ts),
                p,
                &mut |f: PcmFrame<'_>| {
                    out.push(Out {
                        ts: f.ts.get(),
                        pcm: f.pcm.to_vec(),
                        payload_len: f.payload.len(),
                        recovered: f.recovered,
                    })
                },
            )
            .unwrap();
        }
        out
    }

    #[test]
    fn opus_to_ulaw_gives_20ms_frames_on_the_8k_clock() {
        let (_, packets) = opus_stream(440.0, 50);
        let mut t = OpusToPcm::new(PcmFormat::Ulaw, RtpTs::new(1000)).unwrap();
        let input: Vec<(u16, u32, &[u8])> = packets
            .iter()
            .enumerate()
            .map(|(i, p)| {
                (
                    65_530u16.wrapping_add(i as u16),
                    4_000_000_000u32.wrapping_add(i as u32 * 960),
                    p.as_slice(),
                )
            })
            .collect();
        let out = run(&mut t, &input);
        assert_eq!(out.len(), 50);
        for (i, f) in out.iter().enumerate() {
            assert_eq!(f.ts, 1000 + i as u32 * 160);
            assert_eq!(f.pcm.len(), 160);
            assert_eq!(f.payload_len, 160);
            assert!(!f.recovered);
        }
        // The tone is there (Opus at 8 kHz output keeps a 440 Hz tone's level).
        let level = rms(&out[25].pcm);
        assert!(level > 4000.0, "rms {level:.0}");
    }

    #[test]
    fn a_lost_packet_is_rebuilt_from_fec_and_longer_gaps_are_concealed() {
        let (_, packets) = opus_stream(300.0, 60);
        let mut clean = OpusToPcm::new(PcmFormat::L16 { rate: 16_000 }, RtpTs::new(0)).unwrap();
        let all: Vec<(u16, u32, &[u8])> = packets
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u16, i as u32 * 960, p.as_slice()))
            .collect();
        let want = run(&mut clean, &all);

        // Lose packet 30 (one) and 40..=44 (five: three rebuilt, two left as a gap).
        let lossy: Vec<_> = all
            .iter()
            .copied()
            .filter(|(s, _, _)| *s != 30 && !(40..=44).contains(s))
            .collect();
        let mut t = OpusToPcm::new(PcmFormat::L16 { rate: 16_000 }, RtpTs::new(0)).unwrap();
        let got = run(&mut t, &lossy);
        let stats = t.stats();
        assert_eq!(stats.lost, 6);
        assert_eq!(stats.fec_frames, 2);
        assert_eq!(stats.concealed_frames, 2);
        assert_eq!(got.len(), 60 - 2);
        let f30 = got.iter().find(|f| f.ts == 30 * 320).unwrap();
        assert!(f30.recovered);
        // The rebuilt frame is close to what the clean decoder produced for it.
        let w30 = want.iter().find(|f| f.ts == 30 * 320).unwrap();
        let snr = snr_db(&w30.pcm, &f30.pcm);
        assert!(snr > 3.0, "FEC frame SNR {snr:.1} dB");
        // 40 and 41 are not there; 42, 43 (concealed), 44 (FEC) are.
        let have: Vec<u32> = got
            .iter()
            .filter(|f| f.recovered)
            .map(|f| f.ts / 320)
            .collect();
        assert_eq!(have, vec![30, 42, 43, 44]);
    }

    #[test]
    fn late_duplicate_and_bad_packets_are_counted_not_played() {
        let (_, packets) = opus_stream(300.0, 5);
        let mut t = OpusToPcm::new(PcmFormat::Alaw, RtpTs::new(0)).unwrap();
        let mut n = 0;
        let mut count = |_: PcmFrame<'_>| n += 1;
        t.push(
            Ssrc::new(1),
            Seq::new(10),
            RtpTs::new(9600),
            &packets[0],
            &mut count,
        )
        .unwrap();
        t.push(
            Ssrc::new(1),
            Seq::new(11),
            RtpTs::new(10560),
            &packets[1],
            &mut count,
        )
        .unwrap();
        t.push(
            Ssrc::new(1),
            Seq::new(11),
            RtpTs::new(10560),
            &packets[1],
            &mut count,
        )
        .unwrap(); // duplicate
        t.push(
            Ssrc::new(1),
            Seq::new(9),
            RtpTs::new(8640),
            &packets[2],
            &mut count,
        )
        .unwrap(); // late
        assert!(
            t.push(
                Ssrc::new(1),
                Seq::new(12),
                RtpTs::new(11520),
                &[0x03, 0x00],
                &mut count
            )
            .is_err()
        ); // garbage
        assert!(
            t.push(
                Ssrc::new(1),
                Seq::new(12),
                RtpTs::new(11520),
                &[],
                &mut count
            )
            .is_err()
        );
        assert_eq!(n, 2);
        let s = t.stats();
        assert_eq!((s.late, s.bad, s.packets_in), (2, 2, 2));
    }

    #[test]
    fn a_new_ssrc_continues_the_output_timeline() {
        let (_, packets) = opus_stream(300.0, 4);
        let mut t = OpusToPcm::new(PcmFormat::Ulaw, RtpTs::new(500)).unwrap();
        let mut ts_out = Vec::new();
        let mut rec = |f: PcmFrame<'_>| ts_out.push(f.ts.get());
        t.push(
            Ssrc::new(1),
            Seq::new(100),
            RtpTs::new(48_000),
            &packets[0],
            &mut rec,
        )
        .unwrap();
        t.push(
            Ssrc::new(1),
            Seq::new(101),
            RtpTs::new(48_960),
            &packets[1],
            &mut rec,
        )
        .unwrap();
        t.push(
            Ssrc::new(2),
            Seq::new(7),
            RtpTs::new(999_999),
            &packets[2],
            &mut rec,
        )
        .unwrap();
        t.push(
            Ssrc::new(2),
            Seq::new(8),
            RtpTs::new(999_999 + 960),
            &packets[3],
            &mut rec,
        )
        .unwrap();
        assert_eq!(ts_out, vec![500, 660, 820, 980]);
    }

    #[test]
    fn g711_in_10ms_packets_becomes_20ms_opus_on_the_48k_clock() {
        let pcm = sine(500.0, 8000, 8000, 8000.0);
        let mut t = PcmToOpus::new(
            PcmFormat::Ulaw,
            OpusEncoderConfig::toward_wa(),
            RtpTs::new(77),
        )
        .unwrap();
        let mut frames = Vec::new();
        for (i, chunk) in pcm.chunks(80).enumerate() {
            let mut bytes = [0u8; 80];
            g711::encode(G711::Ulaw, chunk, &mut bytes);
            t.push(
                Ssrc::new(9),
                RtpTs::new(1000 + i as u32 * 80),
                &bytes,
                &mut |f: OpusFrame<'_>| {
                    frames.push((f.ts.get(), f.payload.to_vec(), f.discontinuity))
                },
            )
            .unwrap();
        }
        assert_eq!(frames.len(), 50);
        for (i, (ts, _, disc)) in frames.iter().enumerate() {
            assert_eq!(*ts, 77 + i as u32 * 960);
            assert_eq!(*disc, i == 0);
        }
        // WhatsApp's decoder hears the tone.
        let mut dec = OpusDecoder::new(48_000).unwrap();
        let mut out = [0i16; 960];
        let mut level = 0.0;
        for (_, p, _) in &frames[..40] {
            let n = dec.decode(p, &mut out).unwrap();
            level = rms(&out[..n]);
        }
        assert!(level > 3000.0, "rms {level:.0}");
    }

    #[test]
    fn pcm_gaps_are_filled_and_jumps_restart_continuously() {
        let mut t = PcmToOpus::new(
            PcmFormat::Ulaw,
            OpusEncoderConfig::toward_wa(),
            RtpTs::new(0),
        )
        .unwrap();
        let mut ts_out = Vec::new();
        let push = |t: &mut PcmToOpus, ts: u32, out: &mut Vec<(u32, bool)>| {
            t.push(
                Ssrc::new(1),
                RtpTs::new(ts),
                &[0xffu8; 160],
                &mut |f: OpusFrame<'_>| out.push((f.ts.get(), f.discontinuity)),
            )
        };
        push(&mut t, 0, &mut ts_out).unwrap();
        push(&mut t, 160, &mut ts_out).unwrap();
        // One packet lost: filled.
        push(&mut t, 480, &mut ts_out).unwrap();
        assert_eq!(
            ts_out,
            vec![(0, true), (960, false), (1920, false), (2880, false)]
        );
        assert_eq!(t.stats().filled_samples, 160);
        // A late duplicate is dropped.
        push(&mut t, 320, &mut ts_out).unwrap();
        assert_eq!(t.stats().late, 1);
        // A jump of ten seconds: a new timeline, continuing the output.
        push(&mut t, 80_000, &mut ts_out).unwrap();
        assert_eq!(ts_out.last(), Some(&(3840, true)));
        // An odd L16 payload is an error.
        let mut l16 = PcmToOpus::new(
            PcmFormat::L16 { rate: 16_000 },
            OpusEncoderConfig::toward_wa(),
            RtpTs::new(0),
        )
        .unwrap();
        assert_eq!(
            l16.push(Ssrc::new(1), RtpTs::new(0), &[0; 3], &mut |_: OpusFrame<
                '_,
            >| {}),
            Err(CodecError::OddL16Payload(3))
        );
    }

    #[test]
    fn l16_is_big_endian_on_the_wire() {
        let f = PcmFormat::L16 { rate: 16_000 };
        let mut b = [0u8; 4];
        assert_eq!(f.encode(&[0x1234, -2], &mut b), 4);
        assert_eq!(b, [0x12, 0x34, 0xff, 0xfe]);
        let mut s = [0i16; 2];
        assert_eq!(f.decode(&b, &mut s), Ok(2));
        assert_eq!(s, [0x1234, -2]);
    }
}
