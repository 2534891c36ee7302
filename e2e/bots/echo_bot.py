#!/usr/bin/env python3
"""A small voice bot speaking Twilio Media Streams over a WebSocket, for the relay's e2e test
(e2e/tests/voice_bot.rs). Uses the `websockets` package (asyncio server).

It serves one call and scripts what a real bot does, reporting on stdout, one JSON object per
line (events the test waits for, then a final report):

1. checks `connected` and `start` (the relay's call ID, custom parameters, μ-law 8 kHz, the
   bearer token on the upgrade request);
2. echoes every `media` message it hears for --echo seconds, timing its own part of the round
   trip (receive to send), so the test can tell the relay's added latency from the bot's;
3. speaks 0.5 s, then sends mark "m1", and checks it comes back once that audio has played
   (not before 0.4 s, not after 2 s);
4. speaks 3 s, sends mark "before-clear", and 0.3 s later `clear` (barge-in): the mark must
   come back at once (within 0.25 s), and the test checks that nothing queued before the
   clear reaches WhatsApp after it;
5. waits for a `dtmf` digit the test makes the Meta peer press;
6. prints the report and closes the WebSocket (1000): the relay ends the call (bot hang-up).

Usage: echo_bot.py [--port 0] [--echo 6] [--token TOKEN]
"""

import argparse
import asyncio
import base64
import json
import math
import sys
import time

from websockets.asyncio.server import serve


def emit(obj):
    print(json.dumps(obj), flush=True)


def ulaw(sample):
    """G.711 μ-law of one 16-bit sample (ITU-T G.711, with the 0x84 bias)."""
    sign = 0x80 if sample < 0 else 0
    mag = min(abs(sample), 32635) + 0x84
    exp = 7
    mask = 0x4000
    while exp > 0 and not mag & mask:
        exp -= 1
        mask >>= 1
    mant = (mag >> (exp + 3)) & 0x0F
    return ~(sign | (exp << 4) | mant) & 0xFF


def tone(hz, seconds, amplitude=8000):
    n = int(8000 * seconds)
    return bytes(ulaw(int(amplitude * math.sin(2 * math.pi * hz * i / 8000))) for i in range(n))


def media(stream_sid, payload):
    return json.dumps({
        "event": "media",
        "streamSid": stream_sid,
        "media": {"payload": base64.b64encode(payload).decode()},
    })


def mark(stream_sid, name):
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


class Bot:
    def __init__(self, args):
        self.args = args
        self.report = {"errors": [], "marks": {}, "dtmf": [], "echoed": 0}
        self.done = asyncio.get_running_loop().create_future()

    def fail(self, what):
        self.report["errors"].append(what)

    async def handle(self, ws):
        r = self.report
        req = ws.request
        r["path"] = req.path
        r["authorization"] = req.headers.get("Authorization")
        if r["authorization"] != f"Bearer {self.args.token}":
            self.fail(f"authorization header {r['authorization']!r}")
        try:
            await self.script(ws)
        except Exception as e:  # noqa: BLE001 - everything goes in the report
            self.fail(f"{type(e).__name__}: {e}")
        emit({"event": "report", **r})
        await ws.close(1000, "bot done")
        if not self.done.done():
            self.done.set_result(None)

    async def next_event(self, ws, timeout):
        raw = await asyncio.wait_for(ws.recv(), timeout)
        if isinstance(raw, bytes):
            self.fail("binary frame in μ-law mode")
            return {}
        return json.loads(raw)

    async def script(self, ws):
        r = self.report
        first = await self.next_event(ws, 5)
        if first.get("event") != "connected" or first.get("protocol") != "Call":
            self.fail(f"first message {first}")
        start = await self.next_event(ws, 5)
        if start.get("event") != "start":
            self.fail(f"second message {start}")
        s = start.get("start", {})
        r["start"] = s
        sid = s.get("streamSid")
        if not sid or start.get("streamSid") != sid:
            self.fail("streamSid missing or inconsistent")
        fmt = s.get("mediaFormat", {})
        if fmt != {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}:
            self.fail(f"mediaFormat {fmt}")
        emit({"event": "started", "callSid": s.get("callSid")})

        # 2. Echo what we hear, timing our own part.
        held = []
        chunks = []
        end = time.monotonic() + self.args.echo
        while time.monotonic() < end:
            try:
                ev = await self.next_event(ws, max(0.01, end - time.monotonic()))
            except asyncio.TimeoutError:
                break
            t0 = time.monotonic()
            if ev.get("event") == "media":
                m = ev["media"]
                if m.get("track") != "inbound":
                    self.fail(f"track {m.get('track')}")
                chunks.append(int(m["chunk"]))
                payload = base64.b64decode(m["payload"])
                if len(payload) != 160:
                    self.fail(f"media of {len(payload)} bytes")
                await ws.send(media(sid, payload))
                held.append(time.monotonic() - t0)
                r["echoed"] += 1
        held.sort()
        if held:
            r["echo_hold_us_p50"] = held[len(held) // 2] * 1e6
            r["echo_hold_us_p99"] = held[min(len(held) - 1, int(len(held) * 0.99))] * 1e6
        if chunks != list(range(chunks[0], chunks[0] + len(chunks))) if chunks else True:
            self.fail("media.chunk not consecutive")

        # 3. Speak 0.5 s, then a mark.
        await ws.send(media(sid, tone(300, 0.5)))
        sent = time.monotonic()
        await ws.send(mark(sid, "m1"))
        await self.wait_mark(ws, "m1", sent, 3)
        after = r["marks"].get("m1")
        if after is None or not 0.4 <= after <= 2.0:
            self.fail(f"mark m1 after {after} s (0.5 s of audio before it)")

        # 4. Speak 3 s, mark, then barge in.
        await ws.send(media(sid, tone(600, 3.0)))
        await ws.send(mark(sid, "before-clear"))
        await asyncio.sleep(0.3)
        r["clear_at_unix"] = time.time()
        cleared = time.monotonic()
        await ws.send(json.dumps({"event": "clear", "streamSid": sid}))
        emit({"event": "cleared", "at_unix": r["clear_at_unix"]})
        await self.wait_mark(ws, "before-clear", cleared, 2)
        back = r["marks"].get("before-clear")
        if back is None or back > 0.25:
            self.fail(f"mark before-clear came back {back} s after the clear")

        # 5. A digit from WhatsApp.
        deadline = time.monotonic() + 10
        while not r["dtmf"] and time.monotonic() < deadline:
            ev = await self.next_event(ws, deadline - time.monotonic())
            if ev.get("event") == "dtmf":
                d = ev.get("dtmf", {})
                if d.get("track") != "inbound_track":
                    self.fail(f"dtmf track {d.get('track')}")
                r["dtmf"].append(d.get("digit"))
        if not r["dtmf"]:
            self.fail("no dtmf")

    async def wait_mark(self, ws, name, since, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ev = await self.next_event(ws, deadline - time.monotonic())
            if ev.get("event") == "mark":
                got = ev.get("mark", {}).get("name")
                self.report["marks"][got] = time.monotonic() - since
                if got == name:
                    return
        self.fail(f"mark {name} never came back")


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--echo", type=float, default=6.0)
    p.add_argument("--token", default="test-token")
    args = p.parse_args()
    bot = Bot(args)
    async with serve(bot.handle, "127.0.0.1", args.port, max_size=2**20) as server:
        port = server.sockets[0].getsockname()[1]
        emit({"event": "listening", "port": port})
        await asyncio.wait_for(bot.done, 120)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except asyncio.TimeoutError:
        emit({"event": "report", "errors": ["no call within 120 s"]})
        sys.exit(1)
