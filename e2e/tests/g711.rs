//! A G.711-only media server as the internal leg, end to end: the real engine in process, the
//! Meta emulator (DTLS-SRTP, Opus) on one side and, on the other, a plain RTP peer written
//! here on a UDP socket that knows only PCMU/PCMA and telephone-event/8000, as an Asterisk or
//! FreeSWITCH dial plan without Opus.
//!
//! What a user would check, and this does:
//! - the relay answers an Asterisk-style offer (static payload types 0 and 8 without rtpmap,
//!   telephone-event 101) with PCMU and telephone-event only; offering first, it lists PCMU
//!   and PCMA after Opus, and a server answering PCMA gets PCMA;
//! - the server hears WhatsApp's audio as 20 ms G.711 on an 8 kHz clock (the right tone, at
//!   level), WhatsApp hears the server's audio as Opus on 48 kHz;
//! - a digit pressed on WhatsApp reaches the server as RFC 4733 events on the server's clock,
//!   and the server's digit reaches WhatsApp and the call's events.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use e2e::meta::MetaConfig;
use relay::api::{CallEventKind, LegKind};
use relay::codec::g711::{self, G711};
use relay::codec::opus::OpusDecoder;

const TE_PT: u8 = 101;

#[derive(Clone, Debug)]
struct Got {
    pt: u8,
    marker: bool,
    seq: u16,
    ts: u32,
    payload: Vec<u8>,
}

/// A G.711 media server: sends a 1 kHz tone in 20 ms packets of `law` (PT `pt`) to the relay
/// and records what the relay sends it.
struct G711Peer {
    sock: Arc<UdpSocket>,
    got: Arc<Mutex<Vec<Got>>>,
    stop: Arc<AtomicBool>,
    sender: Option<std::thread::JoinHandle<()>>,
}

impl G711Peer {
    fn bind() -> G711Peer {
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind"));
        sock.set_read_timeout(Some(Duration::from_millis(5)))
            .expect("timeout");
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, g, st) = (sock.clone(), got.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, _)) = s.recv_from(&mut buf) {
                    // RTCP (PT 200-204 in the second byte) is not audio.
                    if n >= 12 && !(200..=204).contains(&buf[1]) {
                        g.lock().unwrap().push(Got {
                            pt: buf[1] & 0x7f,
                            marker: buf[1] & 0x80 != 0,
                            seq: u16::from_be_bytes([buf[2], buf[3]]),
                            ts: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
                            payload: buf[12..n].to_vec(),
                        });
                    }
                }
            }
        });
        G711Peer {
            sock,
            got,
            stop,
            sender: None,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("addr")
    }

    fn packet(pt: u8, marker: bool, seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, pt | if marker { 0x80 } else { 0 }];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&0x6711_0001u32.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    /// The tone, then (after `digit_after` packets) digit 9 as three RFC 4733 packets.
    fn start(&mut self, to: SocketAddr, law: G711, pt: u8, digit_after: u32) {
        let (sock, stop) = (self.sock.clone(), self.stop.clone());
        self.sender = Some(std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut ts = 1000u32;
            let mut seq = 500u16;
            for k in 0u32.. {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let due = t0 + Duration::from_millis(20) * k;
                if let Some(w) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(w);
                }
                if (digit_after..digit_after + 3).contains(&k) {
                    // Digit 9, 20/40/60 ms long (8 kHz units), the last one ends it.
                    let i = k - digit_after;
                    let dur = (160 * (i + 1)) as u16;
                    let end = if i == 2 { 0x80 } else { 0 };
                    let ev = [9u8, end | 10, (dur >> 8) as u8, dur as u8];
                    let _ = sock.send_to(&Self::packet(TE_PT, i == 0, seq, ts, &ev), to);
                    seq = seq.wrapping_add(1);
                    if i == 2 {
                        ts = ts.wrapping_add(480);
                    }
                    continue;
                }
                let pcm: Vec<i16> = (0..160)
                    .map(|i| {
                        let n = (k * 160 + i) as f64;
                        (8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * n / 8000.0).sin()) as i16
                    })
                    .collect();
                let mut law_bytes = [0u8; 160];
                g711::encode(law, &pcm, &mut law_bytes);
                let _ = sock.send_to(&Self::packet(pt, k == 0, seq, ts, &law_bytes), to);
                seq = seq.wrapping_add(1);
                ts = ts.wrapping_add(160);
            }
        }));
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for G711Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.sender.take() {
            let _ = t.join();
        }
    }
}

/// The relay's RTP address in its internal SDP (`c=` and `m=audio`).
fn sdp_addr(sdp: &str) -> SocketAddr {
    let ip = sdp
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))
        .expect("c= line")
        .trim();
    let port = sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split(' ').next())
        .expect("m= line");
    format!("{ip}:{port}").parse().expect("address")
}

fn asterisk_offer(addr: SocketAddr) -> String {
    format!(
        "v=0\r\no=- 1733900000 1733900000 IN IP4 {ip}\r\ns=Asterisk\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n\
         a=fmtp:101 0-16\r\na=ptime:20\r\na=maxptime:150\r\na=sendrecv\r\n",
        ip = addr.ip(),
        port = addr.port()
    )
}

fn plain_pcma_answer(addr: SocketAddr) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n",
        ip = addr.ip(),
        port = addr.port()
    )
}

/// Frequency from zero crossings.
fn frequency(x: &[i16], rate: u32) -> f64 {
    let crossings = x.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    crossings as f64 / 2.0 / (x.len() as f64 / f64::from(rate))
}

fn rms(x: &[i16]) -> f64 {
    (x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

/// Both directions and DTMF both ways on an established G.711 call.
fn check_media(
    relay: &mut Relay,
    id: &str,
    meta: &e2e::meta::MetaHandle,
    peer: &G711Peer,
    law: G711,
) {
    let pt = law.static_pt();
    relay.open_gate(id);
    meta.use_audio_frames(e2e::media::opus_tone(440));
    meta.start_audio();
    std::thread::sleep(Duration::from_millis(1500));
    meta.send_dtmf(5, Duration::from_millis(100));
    std::thread::sleep(Duration::from_millis(1000));
    meta.stop_audio();

    // WhatsApp → server: G.711 on 8 kHz, 20 ms frames, WhatsApp's 440 Hz tone.
    let got = peer.got();
    let audio: Vec<&Got> = got.iter().filter(|g| g.pt == pt).collect();
    assert!(
        audio.len() >= 80,
        "the server got {} G.711 packets",
        audio.len()
    );
    assert!(audio.iter().all(|g| g.payload.len() == 160), "20 ms frames");
    let steps = audio
        .windows(2)
        .filter(|w| w[1].seq == w[0].seq.wrapping_add(1))
        .filter(|w| w[1].ts.wrapping_sub(w[0].ts) != 160)
        .count();
    assert_eq!(steps, 0, "consecutive packets 160 apart on the 8 kHz clock");
    let pcm: Vec<i16> = audio[audio.len() / 2..]
        .iter()
        .flat_map(|g| g.payload.iter().map(|c| law.decode_sample(*c)))
        .collect();
    let f = frequency(&pcm, 8000);
    assert!((f - 440.0).abs() < 20.0, "the server hears {f:.0} Hz");
    assert!(
        rms(&pcm) > 1000.0,
        "the server hears level {:.0}",
        rms(&pcm)
    );

    // WhatsApp's digit 5 at the server: RFC 4733 on PT 101, durations in 8 kHz units, one
    // event timestamp on the server's audio clock.
    let events: Vec<&Got> = got.iter().filter(|g| g.pt == TE_PT).collect();
    assert!(!events.is_empty(), "the server got the digit");
    assert!(events.iter().all(|e| e.payload[0] == 5));
    assert!(events.iter().all(|e| e.ts == events[0].ts));
    assert!(events[0].marker);
    let last_audio_before = audio
        .iter()
        .filter(|a| a.seq.wrapping_sub(events[0].seq) as i16 > -200)
        .filter(|a| (a.seq.wrapping_sub(events[0].seq) as i16) < 0)
        .map(|a| a.ts)
        .max()
        .expect("audio before the event");
    assert!(
        events[0].ts.wrapping_sub(last_audio_before) <= 320,
        "the event's timestamp continues the audio clock ({} after the last frame)",
        events[0].ts.wrapping_sub(last_audio_before)
    );
    let longest = events
        .iter()
        .map(|e| u16::from_be_bytes([e.payload[2], e.payload[3]]))
        .max()
        .unwrap_or(0);
    assert!(
        (600..=1200).contains(&longest),
        "100 ms is 800 units at 8 kHz, got {longest}"
    );

    // Server → WhatsApp: Opus on 48 kHz carrying the 1 kHz tone.
    let received = meta.received();
    let opus: Vec<_> = received
        .iter()
        .filter(|p| p.header.pt == MetaConfig::default().opus_pt && p.payload.len() > 3)
        .collect();
    assert!(opus.len() >= 80, "WhatsApp got {} Opus packets", opus.len());
    let ts_steps = opus
        .windows(2)
        .filter(|w| w[1].header.seq == w[0].header.seq.wrapping_add(1))
        .filter(|w| w[1].header.ts.wrapping_sub(w[0].header.ts) != 960)
        .count();
    assert_eq!(
        ts_steps, 0,
        "consecutive Opus packets 960 apart on the 48 kHz clock"
    );
    let mut dec = OpusDecoder::new(48_000).expect("decoder");
    let mut heard = Vec::new();
    let mut out = vec![0i16; 5760];
    for p in &opus[opus.len() / 2..] {
        let n = dec.decode(&p.payload, &mut out).expect("decode");
        heard.extend_from_slice(&out[..n]);
    }
    let f = frequency(&heard, 48_000);
    assert!((f - 1000.0).abs() < 30.0, "WhatsApp hears {f:.0} Hz");
    assert!(
        rms(&heard) > 1000.0,
        "WhatsApp hears level {:.0}",
        rms(&heard)
    );

    // The server's digit 9 reaches WhatsApp (its telephone-event PT) and the call's events.
    let dtmf_pt = MetaConfig::default().dtmf_pt;
    assert!(
        received
            .iter()
            .any(|p| p.header.pt == dtmf_pt && p.payload.first() == Some(&9)),
        "WhatsApp got the server's digit"
    );
    assert!(
        relay
            .wait_event(id, WAIT, |k| matches!(
                k,
                CallEventKind::DtmfReceived {
                    from: LegKind::Internal,
                    digit: '9'
                }
            ))
            .is_some()
    );
}

#[test]
fn an_asterisk_style_offer_without_opus_is_answered_with_pcmu_and_transcoded() {
    let mut relay = Relay::start();
    let meta = meta(MetaConfig::default());
    let mut peer = G711Peer::bind();
    let id = "wacid.g711-asterisk";
    let created = relay
        .create(user_initiated(id, &meta, Some(asterisk_offer(peer.addr()))))
        .expect("create with a G.711-only server");
    let sdp = &created.internal_sdp;
    assert!(sdp.contains(" RTP/AVP 0 101\r\n"), "{sdp}");
    assert!(sdp.contains("a=rtpmap:0 PCMU/8000\r\n"), "{sdp}");
    assert!(
        sdp.contains("a=rtpmap:101 telephone-event/8000\r\n"),
        "{sdp}"
    );
    assert!(!sdp.to_ascii_lowercase().contains("opus"), "{sdp}");
    meta.set_remote_sdp(&created.whatsapp_sdp).expect("answer");
    assert!(
        relay
            .wait_event(id, WAIT, |k| matches!(k, CallEventKind::WhatsAppReady))
            .is_some()
    );
    peer.start(sdp_addr(sdp), G711::Ulaw, 0, 100);
    check_media(&mut relay, id, &meta, &peer, G711::Ulaw);
}

#[test]
fn a_plain_rtp_server_answering_pcma_to_the_relays_offer_is_transcoded() {
    let mut relay = Relay::start();
    let meta = meta(MetaConfig::default());
    let mut peer = G711Peer::bind();
    let id = "wacid.g711-pcma";
    let created = relay
        .create(user_initiated(id, &meta, None))
        .expect("create, the relay offers");
    let offer = &created.internal_sdp;
    // Opus first (no transcoding when the server has it), then PCMU and PCMA.
    let m = offer
        .lines()
        .find(|l| l.starts_with("m=audio "))
        .expect("m=");
    let pts: Vec<&str> = m.split(' ').skip(3).collect();
    assert!(
        pts.len() >= 3 && pts.contains(&"0") && pts.contains(&"8"),
        "{m}"
    );
    assert!(offer.contains("opus/48000"), "{offer}");
    assert!(offer.contains("a=rtpmap:8 PCMA/8000\r\n"), "{offer}");
    meta.set_remote_sdp(&created.whatsapp_sdp).expect("answer");
    relay
        .set_remote(id, LegKind::Internal, &plain_pcma_answer(peer.addr()))
        .expect("the server's PCMA answer");
    assert!(
        relay
            .wait_event(id, WAIT, |k| matches!(k, CallEventKind::WhatsAppReady))
            .is_some()
    );
    peer.start(sdp_addr(offer), G711::Alaw, 8, 100);
    check_media(&mut relay, id, &meta, &peer, G711::Alaw);
}
