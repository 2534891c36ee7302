//! What both emulated peers do with media: a 20 ms Opus-like sender with RFC 4733 DTMF and
//! periodic sender reports, and a recorder of everything received.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::rtp::{
    RtpHeader, SrEcho, build_rtp, build_sender_report_echo, dtmf_payload, is_rtcp, parse_rtp,
    rtcp_packet_types, stamped_payload, unix_micros,
};

pub const PTIME: Duration = Duration::from_millis(20);
/// Opus at 48 kHz: 20 ms = 960 timestamp units.
pub const OPUS_TS_PER_FRAME: u32 = 960;
/// telephone-event/8000: 20 ms = 160 units of duration.
pub const DTMF_UNITS_PER_FRAME: u16 = 160;
/// RFC 4733 §2.5.1.4: the end packet is sent three times.
const DTMF_END_REPEATS: u8 = 3;

/// One received RTP packet, as recorded for assertions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedRtp {
    pub at: Instant,
    /// Wall-clock receive time (µs since the Unix epoch), comparable with the send time in
    /// stamped payloads ([`crate::rtp::read_stamp`]) for one-way latency on one machine.
    pub at_unix_us: u64,
    pub from: SocketAddr,
    pub header: RtpHeader,
    pub payload: Vec<u8>,
}

/// One received RTCP datagram: its packet types (200 SR, 201 RR, 203 BYE, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedRtcp {
    pub at: Instant,
    pub from: SocketAddr,
    pub types: Vec<u8>,
}

/// Counters both peers keep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MediaStats {
    pub rtp_sent: u64,
    pub dtmf_sent: u64,
    pub rtcp_sent: u64,
    pub rtp_received: u64,
    pub rtcp_received: u64,
    /// SRTP/SRTCP packets that failed authentication or decryption.
    pub srtp_auth_failures: u64,
    /// Media that arrived before keys existed, or was not RTP/RTCP.
    pub media_dropped: u64,
    pub first_packet_at: Option<Instant>,
    pub first_sent_at: Option<Instant>,
}

#[derive(Clone, Debug, Default)]
pub struct Recorder {
    pub rtp: Vec<ReceivedRtp>,
    pub rtcp: Vec<ReceivedRtcp>,
}

/// What [`Recorder::record`] made of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    Rtp,
    Rtcp,
    /// Neither RTCP nor parseable RTP (counted in `media_dropped`).
    Dropped,
}

impl Recorder {
    /// Counts one unprotected packet from `from` in `stats` and records it: RTCP by its packet
    /// types, RTP by its header and a copy of its payload.
    pub fn record(
        &mut self,
        stats: &mut MediaStats,
        now: Instant,
        from: SocketAddr,
        plain: &[u8],
    ) -> Recorded {
        if is_rtcp(plain) {
            stats.rtcp_received += 1;
            self.rtcp.push(ReceivedRtcp {
                at: now,
                from,
                types: rtcp_packet_types(plain),
            });
            return Recorded::Rtcp;
        }
        let Some((header, payload)) = parse_rtp(plain) else {
            stats.media_dropped += 1;
            return Recorded::Dropped;
        };
        stats.rtp_received += 1;
        stats.first_packet_at.get_or_insert(now);
        self.rtp.push(ReceivedRtp {
            at: now,
            at_unix_us: unix_micros(),
            from,
            header,
            payload: payload.to_vec(),
        });
        Recorded::Rtp
    }
}

#[derive(Copy, Clone, Debug)]
struct Tone {
    event: u8,
    /// Total duration in 8 kHz units.
    units: u16,
}

#[derive(Copy, Clone, Debug)]
struct ActiveTone {
    tone: Tone,
    start_ts: u32,
    sent_units: u16,
    end_sent: u8,
    first: bool,
}

/// Produces the plain (unprotected) RTP and RTCP a peer sends.
#[derive(Debug)]
pub struct MediaSender {
    pub ssrc: u32,
    pub seq: u16,
    pub ts: u32,
    pub opus_pt: u8,
    pub dtmf_pt: u8,
    counter: u32,
    audio_on: bool,
    next_tick: Option<Instant>,
    tones: VecDeque<Tone>,
    active: Option<ActiveTone>,
    marker_next: bool,
    rng: u32,
    packets_sent: u32,
    octets_sent: u32,
    rtcp_interval: Duration,
    next_sr: Option<Instant>,
    /// The peer's last SR, echoed in ours so the relay can measure RTT.
    echo: SrEcho,
    /// Real Opus frames to send in a loop instead of stamped payloads (see [`opus_tone`]).
    frames: Option<std::sync::Arc<Vec<Vec<u8>>>>,
}

/// One second of a sine tone as real 20 ms Opus frames (48 kHz mono, 32 kbit/s CBR, made with
/// `opusenc --framesize 20 --bitrate 32 --hard-cbr` from a generated WAV): what a decoder must
/// hear as audio, not noise. `hz` is 440 or 660.
pub fn opus_tone(hz: u32) -> std::sync::Arc<Vec<Vec<u8>>> {
    let raw: &[u8] = match hz {
        440 => include_bytes!("../fixtures/tone440.opus-frames"),
        660 => include_bytes!("../fixtures/tone660.opus-frames"),
        _ => panic!("no {hz} Hz tone fixture (440, 660)"),
    };
    // Each frame: a 16-bit big-endian length, then the Opus packet.
    let mut frames = Vec::new();
    let mut rest = raw;
    while let [hi, lo, tail @ ..] = rest {
        let n = usize::from(u16::from_be_bytes([*hi, *lo]));
        frames.push(tail[..n].to_vec());
        rest = &tail[n..];
    }
    std::sync::Arc::new(frames)
}

impl MediaSender {
    pub fn new(ssrc: u32, opus_pt: u8, dtmf_pt: u8, rtcp_interval: Duration) -> Self {
        MediaSender {
            ssrc,
            seq: rand::random(),
            ts: rand::random(),
            opus_pt,
            dtmf_pt,
            counter: 0,
            audio_on: false,
            next_tick: None,
            tones: VecDeque::new(),
            active: None,
            marker_next: true,
            rng: ssrc | 1,
            packets_sent: 0,
            octets_sent: 0,
            rtcp_interval,
            next_sr: None,
            echo: SrEcho::default(),
            frames: None,
        }
    }

    /// Send these Opus frames, in a loop, instead of stamped payloads.
    pub fn use_frames(&mut self, frames: std::sync::Arc<Vec<Vec<u8>>>) {
        self.frames = Some(frames);
    }

    pub fn audio_on(&self) -> bool {
        self.audio_on
    }

    pub fn start_audio(&mut self, now: Instant) {
        if !self.audio_on {
            self.audio_on = true;
            self.marker_next = true;
            self.next_tick.get_or_insert(now);
        }
    }

    pub fn stop_audio(&mut self) {
        self.audio_on = false;
        if self.active.is_none() && self.tones.is_empty() {
            self.next_tick = None;
        }
    }

    /// Queues an RFC 4733 event (0-9 digits, 10 `*`, 11 `#`) lasting `duration`.
    pub fn queue_dtmf(&mut self, now: Instant, event: u8, duration: Duration) {
        let frames = (duration.as_millis() / PTIME.as_millis()).max(1);
        let units = u16::try_from(frames * u128::from(DTMF_UNITS_PER_FRAME)).unwrap_or(u16::MAX);
        self.tones.push_back(Tone { event, units });
        self.next_tick.get_or_insert(now);
    }

    /// Starts sender reports: the first after one second, then every `rtcp_interval`.
    pub fn enable_rtcp(&mut self, now: Instant) {
        self.next_sr.get_or_insert(now + Duration::from_secs(1));
    }

    /// Remember the SR in received (plaintext) RTCP, to echo it in our next report.
    pub fn note_rtcp(&mut self, plain: &[u8], now: Instant) {
        self.echo.note(plain, now);
    }

    pub fn set_ssrc(&mut self, ssrc: u32) {
        self.ssrc = ssrc;
        self.marker_next = true;
    }

    pub fn jump_seq(&mut self, delta: u16) {
        self.seq = self.seq.wrapping_add(delta);
    }

    /// One Opus frame now with the given payload (next seq, timestamp + 960).
    pub fn opus_packet(&mut self, payload: &[u8]) -> Vec<u8> {
        let h = RtpHeader {
            pt: self.opus_pt,
            marker: std::mem::take(&mut self.marker_next),
            seq: self.seq,
            ts: self.ts,
            ssrc: self.ssrc,
        };
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(OPUS_TS_PER_FRAME);
        self.count(payload.len());
        build_rtp(&h, payload)
    }

    /// A stamped Opus-sized payload (60-120 bytes) for the next frame.
    pub fn next_payload(&mut self) -> Vec<u8> {
        if let Some(frames) = self.frames.as_ref().filter(|f| !f.is_empty()) {
            let p = frames[self.counter as usize % frames.len()].clone();
            self.counter = self.counter.wrapping_add(1);
            return p;
        }
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 17;
        self.rng ^= self.rng << 5;
        let len = 60 + (self.rng % 61) as usize;
        let p = stamped_payload(self.counter, len);
        self.counter = self.counter.wrapping_add(1);
        p
    }

    fn count(&mut self, payload_len: usize) {
        self.packets_sent = self.packets_sent.wrapping_add(1);
        self.octets_sent = self.octets_sent.wrapping_add(payload_len as u32);
    }

    fn dtmf_packet(&mut self) -> Option<Vec<u8>> {
        if self.active.is_none() {
            let tone = self.tones.pop_front()?;
            self.active = Some(ActiveTone {
                tone,
                start_ts: self.ts,
                sent_units: 0,
                end_sent: 0,
                first: true,
            });
        }
        let a = self.active.as_mut()?;
        a.sent_units = a
            .sent_units
            .saturating_add(DTMF_UNITS_PER_FRAME)
            .min(a.tone.units);
        let end = a.sent_units >= a.tone.units;
        if end {
            a.end_sent += 1;
        }
        let h = RtpHeader {
            pt: self.dtmf_pt,
            marker: std::mem::take(&mut a.first),
            seq: self.seq,
            ts: a.start_ts,
            ssrc: self.ssrc,
        };
        let payload = dtmf_payload(a.tone.event, end, 10, a.sent_units);
        if a.end_sent >= DTMF_END_REPEATS {
            self.active = None;
            // The next audio frame starts a talkspurt.
            self.marker_next = true;
        }
        self.seq = self.seq.wrapping_add(1);
        self.count(payload.len());
        Some(build_rtp(&h, &payload))
    }

    /// Everything due at `now`: at most one media packet per 20 ms tick, and a sender report
    /// when due. `(packet, is_dtmf)`; RTCP is reported as not DTMF.
    pub fn poll(&mut self, now: Instant) -> Vec<(Vec<u8>, bool)> {
        let mut out = Vec::new();
        if let Some(tick) = self.next_tick
            && now >= tick
        {
            if let Some(p) = self.dtmf_packet() {
                // The audio clock keeps running under the tone.
                self.ts = self.ts.wrapping_add(OPUS_TS_PER_FRAME);
                out.push((p, true));
            } else if self.audio_on {
                let payload = self.next_payload();
                out.push((self.opus_packet(&payload), false));
            }
            let mut next = tick + PTIME;
            // After a stall (a loaded machine), resume the cadence instead of bursting.
            if next + 5 * PTIME < now {
                next = now + PTIME;
            }
            let busy = self.audio_on || self.active.is_some() || !self.tones.is_empty();
            self.next_tick = busy.then_some(next);
        }
        if let Some(sr) = self.next_sr
            && now >= sr
        {
            out.push((
                build_sender_report_echo(
                    self.ssrc,
                    self.ts,
                    self.packets_sent,
                    self.octets_sent,
                    &self.echo,
                    now,
                ),
                false,
            ));
            self.next_sr = Some(now + self.rtcp_interval);
        }
        out
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.next_tick, self.next_sr].into_iter().flatten().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::parse_rtp;

    #[test]
    fn audio_every_tick_with_continuous_seq_and_ts() {
        let t0 = Instant::now();
        let mut s = MediaSender::new(7, 111, 126, Duration::from_secs(5));
        s.start_audio(t0);
        let mut headers = Vec::new();
        for i in 0..5 {
            for (p, _) in s.poll(t0 + PTIME * i) {
                let (h, payload) = parse_rtp(&p).unwrap();
                assert!((60..=120).contains(&payload.len()));
                headers.push(h);
            }
        }
        assert_eq!(headers.len(), 5);
        assert!(headers[0].marker && !headers[1].marker);
        for w in headers.windows(2) {
            assert_eq!(w[1].seq, w[0].seq.wrapping_add(1));
            assert_eq!(w[1].ts, w[0].ts.wrapping_add(960));
        }
    }

    #[test]
    fn dtmf_shares_seq_and_timestamp_base_and_ends_three_times() {
        let t0 = Instant::now();
        let mut s = MediaSender::new(7, 111, 101, Duration::from_secs(5));
        s.start_audio(t0);
        s.queue_dtmf(t0, 5, Duration::from_millis(60));
        let mut pkts = Vec::new();
        for i in 0..8 {
            for (p, _) in s.poll(t0 + PTIME * i) {
                pkts.push(p);
            }
        }
        let hs: Vec<_> = pkts.iter().map(|p| parse_rtp(p).unwrap()).collect();
        // 3 frames of tone (last one with E), 2 more E repeats, then audio.
        let dtmf: Vec<_> = hs.iter().filter(|(h, _)| h.pt == 101).collect();
        assert_eq!(dtmf.len(), 5);
        assert!(dtmf[0].0.marker);
        assert!(dtmf.iter().all(|(h, _)| h.ts == dtmf[0].0.ts));
        let ends = dtmf.iter().filter(|(_, p)| p[1] & 0x80 != 0).count();
        assert_eq!(ends, 3);
        assert_eq!(u16::from_be_bytes([dtmf[4].1[2], dtmf[4].1[3]]), 480);
        for w in hs.windows(2) {
            assert_eq!(w[1].0.seq, w[0].0.seq.wrapping_add(1));
        }
        let last_dtmf = hs.iter().rposition(|(h, _)| h.pt == 101).unwrap();
        let after = &hs[last_dtmf + 1].0;
        assert!(after.pt == 111 && after.marker);
    }
}
