//! Issue 15: a G.711-only media server on the internal leg. The relay answers it with PCMU (or
//! PCMA) and telephone-event, and transcodes both ways: what the media server receives is
//! 20 ms G.711 on an 8 kHz clock carrying WhatsApp's audio, what WhatsApp receives is Opus on
//! the 48 kHz clock carrying the server's, DTMF crosses with its timestamps on each side's
//! audio clock, and a lost WhatsApp packet is rebuilt rather than left as a gap.

use super::harness::*;
use crate::api::CallEventKind;
use crate::call::CallConfig;
use crate::call::testing::{self, MEDIA_SERVER, META, META_OPUS_PT, META_TE_PT};
use crate::codec::g711::{self, G711};
use crate::codec::opus::{MAX_PACKET, OpusDecoder, OpusEncoder, OpusEncoderConfig};
use crate::wire::rtp::{self, RtpHeaderFields};

/// What an Asterisk dial plan with `allow=ulaw,alaw` offers: static PTs, no rtpmap for them
/// (RFC 3551 static assignment), telephone-event 101.
fn asterisk_sdp(formats: &str, extra: &str) -> String {
    testing::crlf(&format!(
        "v=0\n\
         o=- 1733900000 1733900000 IN IP4 {ip}\n\
         s=Asterisk\n\
         c=IN IP4 {ip}\n\
         t=0 0\n\
         m=audio {port} RTP/AVP {formats} 101\n\
         {extra}\
         a=rtpmap:101 telephone-event/8000\n\
         a=fmtp:101 0-16\n\
         a=ptime:20\n\
         a=maxptime:150\n\
         a=sendrecv\n",
        ip = MEDIA_SERVER.ip(),
        port = MEDIA_SERVER.port(),
    ))
}

fn tone(freq: f64, rate: u32, start: usize, n: usize) -> Vec<i16> {
    (start..start + n)
        .map(|i| {
            (8000.0 * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin()) as i16
        })
        .collect()
}

/// Frequency estimate from zero crossings.
fn frequency(x: &[i16], rate: u32) -> f64 {
    let crossings = x.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    crossings as f64 / 2.0 / (x.len() as f64 / f64::from(rate))
}

fn rms(x: &[i16]) -> f64 {
    (x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

/// A plain RTP packet from the media server.
fn server_packet(seq: u16, ts: u32, pt: u8, marker: bool, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 12 + payload.len()];
    let fields = RtpHeaderFields {
        marker,
        pt: Pt::new(pt),
        seq: Seq::new(seq),
        ts: RtpTs::new(ts),
        ssrc: Ssrc::new(0x5151),
    };
    rtp::write_header(&mut buf, &fields).unwrap();
    buf[12..].copy_from_slice(payload);
    buf
}

/// Meta sends `frames` packets of real Opus (a 440 Hz tone), 20 ms apart, skipping `lose`.
fn meta_speaks(sim: &mut Sim, frames: u32, lose: &[u32]) {
    let mut enc = OpusEncoder::new(
        48_000,
        OpusEncoderConfig {
            loss_percent: 20,
            ..OpusEncoderConfig::toward_wa()
        },
    )
    .unwrap();
    for i in 0..frames {
        let pcm = tone(440.0, 48_000, i as usize * 960, 960);
        let mut opus = [0u8; MAX_PACKET];
        let n = enc.encode(&pcm, &mut opus).unwrap();
        if !lose.contains(&i) {
            let mut buf = [0u8; 1500];
            let fields = RtpHeaderFields {
                marker: i == 0,
                pt: Pt::new(META_OPUS_PT),
                seq: Seq::new(7000u16.wrapping_add(i as u16)),
                ts: RtpTs::new(90_000u32.wrapping_add(i * 960)),
                ssrc: Ssrc::new(0xabcd),
            };
            let h = rtp::write_header(&mut buf, &fields).unwrap();
            buf[h..h + n].copy_from_slice(&opus[..n]);
            let len = sim.meta.protect_rtp(&mut buf, h + n).unwrap();
            sim.inject_wa(META, &mut buf, len);
        }
        sim.run_for(PTIME);
    }
}

#[test]
fn a_pcmu_only_media_server_gets_pcmu_and_whatsapp_gets_opus() {
    let mut sim = Sim::with_internal_sdp(Leg::Dtls, CallConfig::default(), asterisk_sdp("0", ""));
    // The relay answers in the server's codec, with no Opus.
    let answer = &sim.internal_answer;
    assert!(answer.contains(" RTP/AVP 0 101\r\n"), "{answer}");
    assert!(answer.contains("a=rtpmap:0 PCMU/8000\r\n"), "{answer}");
    assert!(
        answer.contains("a=rtpmap:101 telephone-event/8000\r\n"),
        "{answer}"
    );
    assert!(!answer.to_ascii_lowercase().contains("opus"), "{answer}");

    sim.connect();
    sim.open_gate();
    meta_speaks(&mut sim, 50, &[20]);

    // WhatsApp → server: 20 ms PCMU frames, an 8 kHz clock, one sequence, one per Opus frame
    // (the lost one rebuilt from the next packet's FEC).
    let got: Vec<&Rtp> = sim.to_internal.iter().filter(|r| r.pt == 0).collect();
    assert_eq!(got.len(), 50, "49 received + 1 rebuilt");
    for w in got.windows(2) {
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1));
        assert_eq!(
            w[1].ts.wrapping_sub(w[0].ts),
            160,
            "8 kHz clock, 20 ms frames"
        );
    }
    assert!(got.iter().all(|r| r.payload.len() == 160));
    let pcm: Vec<i16> = got[10..]
        .iter()
        .flat_map(|r| r.payload.iter().map(|c| g711::ulaw_decode(*c)))
        .collect();
    let f = frequency(&pcm, 8000);
    assert!((f - 440.0).abs() < 15.0, "server hears {f:.0} Hz");
    assert!(rms(&pcm) > 3000.0, "level {:.0}", rms(&pcm));
    let tc = sim.call.legs[crate::call::INT]
        .transcode
        .as_ref()
        .unwrap()
        .counters();
    assert_eq!((tc.to_internal.lost, tc.to_internal.fec_frames), (1, 1));

    // Server → WhatsApp: PCMU at 20 ms becomes Opus on the 48 kHz clock.
    let start = sim.now;
    for i in 0..50u32 {
        let pcm = tone(1000.0, 8000, i as usize * 160, 160);
        let mut ulaw = [0u8; 160];
        g711::encode(G711::Ulaw, &pcm, &mut ulaw);
        let mut pkt = server_packet(300 + i as u16, 8000 + i * 160, 0, i == 0, &ulaw);
        let len = pkt.len();
        sim.inject_internal(MEDIA_SERVER, &mut pkt, len);
        sim.run_for(PTIME);
    }
    let opus: Vec<&Rtp> = sim
        .wa_rtp()
        .into_iter()
        .filter(|r| r.at >= start && r.pt == META_OPUS_PT && !r.is_silence())
        .collect();
    assert_eq!(opus.len(), 50, "one Opus frame per 20 ms of G.711");
    for w in opus.windows(2) {
        assert_eq!(w[1].ts.wrapping_sub(w[0].ts), 960, "48 kHz clock");
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1));
    }
    let mut dec = OpusDecoder::new(48_000).unwrap();
    let mut heard = Vec::new();
    for r in &opus {
        let mut out = [0i16; 5760];
        let n = dec.decode(&r.payload, &mut out).unwrap();
        heard.extend_from_slice(&out[..n]);
    }
    let tail = &heard[heard.len() / 2..];
    let f = frequency(tail, 48_000);
    assert!((f - 1000.0).abs() < 30.0, "WhatsApp hears {f:.0} Hz");
    assert!(rms(tail) > 3000.0, "level {:.0}", rms(tail));
    assert!(sim.rejected_by_meta().is_empty());
}

#[test]
fn dtmf_crosses_with_each_sides_clock() {
    let mut sim = Sim::with_internal_sdp(
        Leg::Dtls,
        CallConfig::default(),
        asterisk_sdp("8", "a=rtpmap:8 PCMA/8000\n"),
    );
    assert!(sim.internal_answer.contains("a=rtpmap:8 PCMA/8000\r\n"));
    sim.connect();
    sim.open_gate();
    meta_speaks(&mut sim, 5, &[]);
    // Meta presses 5: three packets of one event starting at the next audio timestamp
    // (90_000 + 5 * 960), durations in 8 kHz units (its telephone-event/8000).
    let event_ts = 90_000u32 + 5 * 960;
    for (k, (dur, end)) in [(160u16, false), (320, false), (320, true)]
        .into_iter()
        .enumerate()
    {
        let mut buf = [0u8; 64];
        let fields = RtpHeaderFields {
            marker: k == 0,
            pt: Pt::new(META_TE_PT),
            seq: Seq::new(7005 + k as u16),
            ts: RtpTs::new(event_ts),
            ssrc: Ssrc::new(0xabcd),
        };
        let h = rtp::write_header(&mut buf, &fields).unwrap();
        buf[h..h + 4].copy_from_slice(&[
            5,
            if end { 0x80 | 10 } else { 10 },
            (dur >> 8) as u8,
            dur as u8,
        ]);
        let len = sim.meta.protect_rtp(&mut buf, h + 4).unwrap();
        sim.inject_wa(META, &mut buf, len);
        sim.run_for(PTIME);
    }
    assert!(
        sim.event(|e| matches!(e, CallEventKind::DtmfReceived { digit: '5', .. }))
            .is_some()
    );
    let audio: Vec<&Rtp> = sim.to_internal.iter().filter(|r| r.pt == 8).collect();
    let events: Vec<&Rtp> = sim.to_internal.iter().filter(|r| r.pt == 101).collect();
    assert_eq!(events.len(), 3);
    // The event starts where the next audio frame would: last audio ts + 160 on the 8 kHz clock.
    let last_audio = audio.last().unwrap();
    assert_eq!(events[0].ts, last_audio.ts.wrapping_add(160));
    assert!(events.iter().all(|e| e.ts == events[0].ts));
    assert!(events[0].marker);
    assert_eq!(
        events[2].payload,
        vec![5, 0x80 | 10, 0x01, 0x40],
        "duration 320 at 8 kHz"
    );
    // One sequence with the audio.
    assert_eq!(events[0].seq, last_audio.seq.wrapping_add(1));

    // The server presses #: its event timestamps are on its 8 kHz audio clock.
    let start = sim.now;
    for i in 0..5u32 {
        let pcm = tone(700.0, 8000, i as usize * 160, 160);
        let mut alaw = [0u8; 160];
        g711::encode(G711::Alaw, &pcm, &mut alaw);
        let mut pkt = server_packet(40 + i as u16, 16_000 + i * 160, 8, i == 0, &alaw);
        let len = pkt.len();
        sim.inject_internal(MEDIA_SERVER, &mut pkt, len);
        sim.run_for(PTIME);
    }
    let mut ev = server_packet(
        45,
        16_000 + 5 * 160,
        101,
        true,
        &[11, 0x80 | 10, 0x03, 0x20],
    );
    let len = ev.len();
    sim.inject_internal(MEDIA_SERVER, &mut ev, len);
    sim.run_for(PTIME);
    let to_wa: Vec<&Rtp> = sim.wa_rtp().into_iter().filter(|r| r.at >= start).collect();
    let audio: Vec<&&Rtp> = to_wa
        .iter()
        .filter(|r| r.pt == META_OPUS_PT && !r.is_silence())
        .collect();
    let event = to_wa
        .iter()
        .find(|r| r.pt == META_TE_PT)
        .expect("the event reached WhatsApp");
    assert_eq!(audio.len(), 5);
    assert_eq!(
        event.ts,
        audio[4].ts.wrapping_add(960),
        "on the 48 kHz audio clock"
    );
    assert_eq!(
        event.payload,
        vec![11, 0x80 | 10, 0x03, 0x20],
        "duration unchanged (both 8 kHz)"
    );
    assert!(
        sim.event(|e| matches!(e, CallEventKind::DtmfReceived { digit: '#', .. }))
            .is_some()
    );
}

#[test]
fn opus_is_preferred_when_the_server_has_both() {
    let sim = Sim::with_internal_sdp(
        Leg::Dtls,
        CallConfig::default(),
        asterisk_sdp("0 111", "a=rtpmap:111 opus/48000/2\n"),
    );
    assert!(sim.internal_answer.contains("opus/48000/2"));
    assert!(!sim.internal_answer.contains("PCMU"));
    assert!(sim.call.legs[crate::call::INT].transcode.is_none());
}

#[test]
fn a_server_without_opus_or_g711_is_refused_with_the_reason() {
    let t0 = std::time::Instant::now();
    let (_meta, offer) = testing::MetaPeer::dtls(t0);
    let spec = crate::api::InternalLegSpec {
        kind: crate::api::InternalKind::PlainRtp,
        remote_sdp: Some(asterisk_sdp("9", "a=rtpmap:9 G722/8000\n")),
        source: crate::api::SourcePolicy::Strict,
    };
    let identity = std::sync::Arc::new(crate::dtls::DtlsIdentity::generate().unwrap());
    let err = testing::create_call_with(&offer, spec, CallConfig::default(), identity, t0)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("PCMU/8000"), "{err}");
}
