#!/usr/bin/env python3
"""A browser agent on the relay's WebRTC internal leg, played by aiortc (RTCPeerConnection).

aiortc does everything a browser's WebRTC stack does on this leg: full ICE (controlling toward
the relay's ice-lite), DTLS-SRTP in the role its SDP gives it, Opus encoded with libopus from raw
audio frames (a 440 Hz tone here), RTCP sender/receiver reports. Nothing of it is ours; what this
script adds is only what a test needs to see:

- Taps on aiortc's DTLS transport, taken after SRTP protection would be undone: every plaintext
  RTP packet aiortc sends (so the WhatsApp side can compare Opus payloads byte for byte) and every
  one it decrypts, whatever its payload type (telephone-event included, which aiortc's receiver
  itself does not handle), and the RTCP packet types it decrypts.
- `telephone-event/8000` added to aiortc's SDP on PT 126, as Chrome and Firefox offer it (aiortc
  has no DTMF codec; the relay only forwards DTMF to a peer that declared it).
- ICE restricted to 127.0.0.1 and no STUN server (aiortc's default is a public one, and aioice
  skips loopback when gathering): the test never sends traffic off the machine.

Control: JSON lines on stdin/stdout.
  --role offer : prints {"event": "offer", "sdp"}; then takes {"cmd": "answer", "sdp"}.
  --role answer: takes {"cmd": "offer", "sdp"}; prints {"event": "answer", "sdp"}.
  Then: {"cmd": "stop_audio"} -> {"event": "audio_stopped"}; {"cmd": "stats"} -> {"event": "stats"};
  {"cmd": "close"} -> closes the RTCPeerConnection (DTLS close_notify) -> {"event": "closed"};
  {"cmd": "quit"} or EOF ends the process. Events: {"event": "state", "connection": ...}.
"""

import argparse
import asyncio
import fractions
import json
import math
import sys
import time

import aioice.ice
import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc import rtcdtlstransport
from aiortc.rtp import is_rtcp

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960  # 20 ms
DTMF_PT = 126


def emit(event, **fields):
    fields["event"] = event
    try:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        pass  # the harness is gone; the peer ends on stdin's EOF


def log(msg):
    print(f"browser_agent: {msg}", file=sys.stderr, flush=True)


# Loopback only: aioice gathers every interface address except 127.0.0.1.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []


# ----- taps on aiortc's DTLS transport ---------------------------------------------------------

TAP = {"sent": [], "received": [], "rtcp_sent": 0, "rtcp_types": []}


def rtp_fields(data):
    """Header fields and payload of a plaintext RTP packet (CSRC, extension, padding skipped)."""
    cc = data[0] & 0x0F
    start = 12 + 4 * cc
    if data[0] & 0x10 and len(data) >= start + 4:
        start += 4 + 4 * int.from_bytes(data[start + 2 : start + 4], "big")
    end = len(data) - (data[-1] if data[0] & 0x20 else 0)
    return {
        "pt": data[1] & 0x7F,
        "marker": bool(data[1] & 0x80),
        "seq": int.from_bytes(data[2:4], "big"),
        "ts": int.from_bytes(data[4:8], "big"),
        "ssrc": int.from_bytes(data[8:12], "big"),
        "payload": data[start:end].hex(),
    }


_send_rtp = rtcdtlstransport.RTCDtlsTransport._send_rtp
_handle_rtp_data = rtcdtlstransport.RTCDtlsTransport._handle_rtp_data
_handle_rtcp_data = rtcdtlstransport.RTCDtlsTransport._handle_rtcp_data


async def tapped_send_rtp(self, data):
    await _send_rtp(self, data)  # raises before sending if DTLS is not up: record only what went
    if is_rtcp(data):
        TAP["rtcp_sent"] += 1
    else:
        TAP["sent"].append(rtp_fields(data))


async def tapped_handle_rtp_data(self, data, arrival_time_ms):
    TAP["received"].append(rtp_fields(data))
    await _handle_rtp_data(self, data, arrival_time_ms)


async def tapped_handle_rtcp_data(self, data):
    p = data
    while len(p) >= 4:
        if p[1] not in TAP["rtcp_types"]:
            TAP["rtcp_types"].append(p[1])
        p = p[4 * (int.from_bytes(p[2:4], "big") + 1) :]
    await _handle_rtcp_data(self, data)


rtcdtlstransport.RTCDtlsTransport._send_rtp = tapped_send_rtp
rtcdtlstransport.RTCDtlsTransport._handle_rtp_data = tapped_handle_rtp_data
rtcdtlstransport.RTCDtlsTransport._handle_rtcp_data = tapped_handle_rtcp_data


# ----- the microphone ----------------------------------------------------------------------------


class ToneTrack(MediaStreamTrack):
    """A 440 Hz tone in 20 ms frames, paced in real time, as getUserMedia would deliver."""

    kind = "audio"

    def __init__(self):
        super().__init__()
        self.pts = 0
        self.start = None
        self.frames = 0

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self.start is None:
            self.start = now
        due = self.start + self.pts / SAMPLE_RATE
        if due > now:
            await asyncio.sleep(due - now)
        samples = bytearray()
        for i in range(FRAME_SAMPLES):
            v = int(8000 * math.sin(2 * math.pi * 440 * (self.pts + i) / SAMPLE_RATE))
            samples += v.to_bytes(2, "little", signed=True)
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(bytes(samples))
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self.pts
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self.pts += FRAME_SAMPLES
        self.frames += 1
        return frame


# ----- SDP -------------------------------------------------------------------------------------


def with_telephone_event(sdp):
    """Declares telephone-event/8000 on PT 126 in the audio m-line, as browsers do."""
    if f"a=rtpmap:{DTMF_PT} " in sdp:
        return sdp
    out = []
    for line in sdp.split("\r\n"):
        if line.startswith("m=audio "):
            line += f" {DTMF_PT}"
        out.append(line)
        if line.startswith("a=rtpmap:") and "opus/48000" in line:
            out.append(f"a=rtpmap:{DTMF_PT} telephone-event/8000")
    return "\r\n".join(out)


# ----- the agent -------------------------------------------------------------------------------


class Agent:
    def __init__(self, args):
        self.args = args
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.track = ToneTrack()
        self.sender = self.pc.addTrack(self.track)
        self.received_frames = 0
        self.pc.on("connectionstatechange", self.on_state)
        self.pc.on("track", self.on_track)

    def on_state(self):
        emit(
            "state",
            connection=self.pc.connectionState,
            ice=self.pc.iceConnectionState,
        )

    def on_track(self, track):
        async def drain():
            # Decoding the relay's audio is aiortc's business; count what it hands up.
            try:
                while True:
                    await track.recv()
                    self.received_frames += 1
            except MediaStreamError:
                pass

        asyncio.ensure_future(drain())

    async def offer(self):
        await self.pc.setLocalDescription(await self.pc.createOffer())
        emit("offer", sdp=with_telephone_event(self.pc.localDescription.sdp))

    async def take_answer(self, sdp):
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        emit("answer_set")

    async def answer(self, sdp):
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        emit("answer", sdp=with_telephone_event(self.pc.localDescription.sdp))

    def dtls(self):
        t = self.sender.transport
        ssl = getattr(t, "_ssl", None)
        profile = ssl.get_selected_srtp_profile().decode() if ssl is not None else None
        return {"dtls_state": t.state, "dtls_role": t._role, "srtp_profile": profile}

    async def stats(self):
        report = await self.pc.getStats()
        by_type = {}
        for s in report.values():
            entry = {k: v for k, v in vars(s).items() if isinstance(v, (int, float, str))}
            by_type.setdefault(s.type, []).append(entry)
        ice = self.sender.transport.transport
        return dict(
            TAP,
            getstats=by_type,
            ice_role=ice.role,
            decoded_frames=self.received_frames,
            tone_frames=self.track.frames,
            **self.dtls(),
        )


async def read_commands(agent):
    reader = asyncio.StreamReader(limit=1 << 24)
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        try:
            cmd = json.loads(line)
            name = cmd.get("cmd")
            if name == "answer":
                await agent.take_answer(cmd["sdp"])
            elif name == "offer":
                await agent.answer(cmd["sdp"])
            elif name == "stop_audio":
                # What muting the microphone track does: aiortc's sender stops sending RTP.
                agent.sender.replaceTrack(None)
                agent.track.stop()
                emit("audio_stopped", sent=len(TAP["sent"]))
            elif name == "stats":
                emit("stats", **(await agent.stats()))
            elif name == "close":
                await agent.pc.close()
                emit("closed")
            elif name == "quit":
                return
            else:
                emit("error", what=f"unknown command {name!r}")
        except (ValueError, KeyError, TypeError) as e:
            emit("error", what=f"bad command: {type(e).__name__}: {e}")


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--role", choices=["offer", "answer"], required=True)
    ap.add_argument("--lifetime", type=float, default=60.0, help="exit after this many seconds")
    args = ap.parse_args()
    agent = Agent(args)
    emit("ready", aiortc=__import__("aiortc").__version__)
    if args.role == "offer":
        await agent.offer()
    try:
        await asyncio.wait_for(read_commands(agent), args.lifetime)
    except asyncio.TimeoutError:
        log(f"lifetime of {args.lifetime} s reached")
    await agent.pc.close()


if __name__ == "__main__":
    asyncio.run(main())
