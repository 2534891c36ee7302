//! Transfer to another agent through the real engine over loopback: the Meta emulator on the
//! WhatsApp side, agent A (a plain-RTP SIP media peer) on the internal side, then
//! `replace_internal_leg` to agent B (SDES-SRTP, another socket) while A is still talking.
//!
//! What a user of the relay would check: WhatsApp's stream never breaks (one SSRC, sequence
//! numbers consecutive across the transfer, no hole of a second or more), B's audio reaches
//! WhatsApp byte for byte, WhatsApp's audio reaches B under B's new key, and A's packets after
//! the switch go nowhere and are counted as drops.

mod common;

use std::time::{Duration, Instant};

use common::*;
use e2e::meta::MetaConfig;
use e2e::sip::SipConfig;
use relay::api::{CallControl, CallEventKind, InternalKind, InternalLegSpec, SourcePolicy};
use relay::srtp::SrtpProfile;

/// B's payloads: a marker, the packet's index, filler; nothing like the emulator's stamps.
fn agent_b_payload(i: u32) -> Vec<u8> {
    let mut p = b"agent-B ".to_vec();
    p.extend_from_slice(&i.to_be_bytes());
    p.extend((0..68u8).map(|k| k.wrapping_mul(7).wrapping_add(i as u8)));
    p
}

#[test]
fn transfer_to_another_agent_keeps_whatsapps_stream_continuous() {
    let mut relay = Relay::start();
    let meta = meta(MetaConfig::default());
    let agent_a = sip(SipConfig::default());
    let id = "wacid.transfer";
    let created = establish(
        &mut relay,
        user_initiated(id, &meta, Some(agent_a.sdp())),
        &meta,
        &agent_a,
    );
    relay.open_gate(id);
    meta.start_audio();
    agent_a.start_audio();
    assert!(
        wait(|| meta
            .received()
            .iter()
            .filter(|p| payload_intact(&p.payload))
            .count()
            >= 25),
        "A's audio reaches WhatsApp before the transfer"
    );

    // Transfer to B while A keeps talking (it has not processed the BYE yet).
    let agent_b = sip(SipConfig::default().sdes(SrtpProfile::Aes128CmHmacSha1_80));
    let replaced = relay
        .rt
        .block_on(relay.engine.replace_internal_leg(
            id.to_string(),
            InternalLegSpec {
                kind: InternalKind::SdesSrtp(SrtpProfile::Aes128CmHmacSha1_80),
                remote_sdp: Some(agent_b.sdp()),
                source: SourcePolicy::Strict,
            },
        ))
        .expect("replace");
    let a_sent_at_switch = agent_a.stats().rtp_sent;
    // Same relay port as A had, now RTP/SAVP with a key for B.
    let port = created
        .internal_sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split(' ').next())
        .expect("A's m= line");
    assert!(
        replaced
            .internal_sdp
            .contains(&format!("m=audio {port} RTP/SAVP ")),
        "{}",
        replaced.internal_sdp
    );
    agent_b
        .set_remote_sdp(&replaced.internal_sdp)
        .expect("B's SDP");
    std::thread::sleep(Duration::from_millis(300));
    agent_a.stop_audio();
    // B starts talking a moment later; the relay fills the gap with silence.
    std::thread::sleep(Duration::from_millis(100));
    const B_PACKETS: u32 = 50;
    let mut next = Instant::now();
    for i in 0..B_PACKETS {
        assert!(agent_b.send_opus(&agent_b_payload(i)));
        next += Duration::from_millis(20);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    assert!(
        wait(|| {
            meta.received()
                .iter()
                .filter(|p| p.payload.starts_with(b"agent-B "))
                .count()
                == B_PACKETS as usize
        }),
        "all of B's packets reach WhatsApp"
    );
    meta.stop_audio();

    // WhatsApp's stream: one SSRC, consecutive sequence numbers from the first packet to the
    // last (A, silence, B), and never a second without a packet.
    let at_meta = meta.received();
    assert!(
        at_meta.len() >= 25 + B_PACKETS as usize,
        "{}",
        at_meta.len()
    );
    for w in at_meta.windows(2) {
        assert_eq!(w[1].header.ssrc, w[0].header.ssrc, "one outbound SSRC");
        assert_eq!(
            w[1].header.seq,
            w[0].header.seq.wrapping_add(1),
            "sequence continuous"
        );
        assert!(
            w[1].header.ts.wrapping_sub(w[0].header.ts) < 48_000,
            "timestamps move forward"
        );
        assert!(w[1].at.duration_since(w[0].at) < Duration::from_secs(1));
    }
    // B's audio, byte for byte and in order; A's stamped audio never after B's first packet.
    let from_b: Vec<&[u8]> = at_meta
        .iter()
        .filter(|p| p.payload.starts_with(b"agent-B "))
        .map(|p| p.payload.as_slice())
        .collect();
    let expect: Vec<Vec<u8>> = (0..B_PACKETS).map(agent_b_payload).collect();
    assert_eq!(from_b, expect.iter().map(Vec::as_slice).collect::<Vec<_>>());
    let first_b = at_meta
        .iter()
        .position(|p| p.payload.starts_with(b"agent-B "))
        .expect("B");
    assert!(
        at_meta[first_b..]
            .iter()
            .all(|p| !payload_intact(&p.payload)),
        "nothing of A's after B started"
    );

    // A: an RTCP BYE, no media after the switch, and its late packets dropped and counted.
    assert!(
        agent_a
            .received_rtcp()
            .iter()
            .any(|r| r.types.contains(&203)),
        "A got a BYE"
    );
    let a_forwarded = at_meta
        .iter()
        .filter(|p| payload_intact(&p.payload))
        .count() as u64;
    let a = agent_a.stats();
    let info = relay.get(id).expect("call");
    assert!(
        a.rtp_sent > a_sent_at_switch,
        "A kept talking after the switch"
    );
    assert!(
        info.internal.dropped >= a.rtp_sent - a_forwarded
            && info.internal.dropped <= a.rtp_sent + a.rtcp_sent - a_forwarded,
        "every late packet of A dropped: A sent {} RTP + {} RTCP, {} reached WhatsApp, {} dropped",
        a.rtp_sent,
        a.rtcp_sent,
        a_forwarded,
        info.internal.dropped
    );

    // B hears WhatsApp under its new key; the relay's stats describe B now.
    assert!(wait(|| agent_b.received().len() >= 25));
    assert_eq!(agent_b.stats().srtp_auth_failures, 0);
    assert!(
        agent_b
            .received()
            .iter()
            .all(|p| payload_intact(&p.payload) && p.header.ssrc != meta.ssrc())
    );
    assert_eq!(info.internal_remote, Some(agent_b.local_addr()));
    assert_eq!(info.internal.received.packets, u64::from(B_PACKETS));
    assert_eq!(meta.stats().media.srtp_auth_failures, 0);

    assert_eq!(
        relay.wait_event(id, WAIT, |k| matches!(
            k,
            CallEventKind::InternalLegReplaced { .. }
        )),
        Some(CallEventKind::InternalLegReplaced {
            previous: Some(agent_a.local_addr()),
            remote: Some(agent_b.local_addr()),
        })
    );
    relay.terminate(id).expect("final stats");
    assert_eq!(relay.engine.active_calls(), 0);
}
