#!/usr/bin/env python3
"""Speech quality through the relay's voice-bot leg (e2e/tests/voice_bot_quality.rs).

Three commands, all files raw 16-bit little-endian mono PCM:

  quality.py prepare DIR [--text TEXT]
      speech from espeak-ng (Debian package `espeak-ng`), resampled (FFT, band-limited) to
      DIR/speech48k.raw (what the Meta peer encodes as Opus), DIR/ref8k.raw and
      DIR/ref16k.raw (the references PESQ scores against). Prints {"event": "prepared", ...}.

  quality.py bot --out FILE [--echo]
      a Twilio Media Streams bot (the `websockets` package) that records what it hears (μ-law
      decoded to PCM, or raw L16) to FILE and, with --echo, sends it straight back so the
      return path can be scored too. Prints {"event": "listening", "port": N}, then
      {"event": "report", ...} when the relay closes the stream.

  quality.py score REF DEG RATE
      PESQ (ITU-T P.862 through the `pesq` package on PyPI: narrowband at 8 kHz, narrowband
      and wideband at 16 kHz) of DEG against REF after aligning DEG on REF by
      cross-correlation. Prints one JSON line.

Needs numpy and pesq (`python3 -m pip install numpy pesq`; pesq builds from source with a C
compiler) and espeak-ng.
"""

import argparse
import asyncio
import base64
import json
import subprocess
import sys
import tempfile
import wave

import numpy as np

TEXT = (
    "The quick brown fox jumps over the lazy dog. "
    "Please hold while I connect you to an agent. "
    "Your order number is four seven one two, and it will arrive on Tuesday morning. "
    "Thank you for calling, is there anything else I can help you with today?"
)


def emit(obj):
    print(json.dumps(obj), flush=True)


def resample(x, src, dst):
    """Band-limited resampling of the whole signal in the frequency domain."""
    n_out = int(round(len(x) * dst / src))
    spec = np.fft.rfft(x)
    out_bins = n_out // 2 + 1
    if out_bins <= len(spec):
        spec = spec[:out_bins]
    else:
        spec = np.concatenate([spec, np.zeros(out_bins - len(spec), dtype=complex)])
    return np.fft.irfft(spec, n_out) * (n_out / len(x))


def write_raw(path, x):
    np.clip(np.round(x), -32768, 32767).astype("<i2").tofile(path)


def read_raw(path):
    return np.fromfile(path, dtype="<i2").astype(np.float64)


def prepare(args):
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", f.name, args.text],
                       check=True)
        with wave.open(f.name) as w:
            src = w.getframerate()
            x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    # Half a second of silence either side; peak at -3 dBFS.
    x = np.concatenate([np.zeros(src // 2), x, np.zeros(src // 2)])
    x *= 0.7 * 32767 / max(1.0, np.abs(x).max())
    out = {}
    for rate, name in ((48000, "speech48k"), (16000, "ref16k"), (8000, "ref8k")):
        y = resample(x, src, rate)
        # Whole 20 ms frames.
        y = y[: len(y) // (rate // 50) * (rate // 50)]
        write_raw(f"{args.dir}/{name}.raw", y)
        out[name] = len(y)
    emit({"event": "prepared", "espeak_rate": src, "seconds": out["speech48k"] / 48000, **out})


ULAW_TABLE = None


def ulaw_decode(b):
    global ULAW_TABLE
    if ULAW_TABLE is None:
        t = []
        for c in range(256):
            c = ~c & 0xFF
            sign, exp, mant = c & 0x80, (c >> 4) & 7, c & 0x0F
            mag = (((mant << 3) + 0x84) << exp) - 0x84
            t.append(-mag if sign else mag)
        ULAW_TABLE = np.array(t, dtype=np.int16)
    return ULAW_TABLE[np.frombuffer(b, dtype=np.uint8)]


async def bot(args):
    from websockets.asyncio.server import serve

    done = asyncio.get_running_loop().create_future()
    report = {"frames": 0, "binary": 0, "format": None}
    chunks = []

    async def handle(ws):
        sid = None
        fmt = None
        try:
            async for raw in ws:
                if isinstance(raw, bytes):
                    # Raw mode: L16 16 kHz little-endian.
                    report["binary"] += 1
                    chunks.append(np.frombuffer(raw, dtype="<i2"))
                    if args.echo:
                        await ws.send(raw)
                    continue
                ev = json.loads(raw)
                kind = ev.get("event")
                if kind == "start":
                    sid = ev["start"]["streamSid"]
                    fmt = ev["start"].get("mediaFormat", {})
                    report["format"] = fmt
                elif kind == "media":
                    payload = base64.b64decode(ev["media"]["payload"])
                    report["frames"] += 1
                    if fmt and fmt.get("encoding") == "audio/x-mulaw":
                        chunks.append(ulaw_decode(payload))
                    else:
                        chunks.append(np.frombuffer(payload, dtype="<i2"))
                    if args.echo:
                        await ws.send(json.dumps({"event": "media", "streamSid": sid,
                                                  "media": {"payload": ev["media"]["payload"]}}))
                elif kind == "stop":
                    break
        except Exception as e:  # noqa: BLE001 - the connection closing ends the recording
            report["closed"] = f"{type(e).__name__}: {e}"
        pcm = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        pcm.astype("<i2").tofile(args.out)
        report["samples"] = int(len(pcm))
        if not done.done():
            done.set_result(None)

    async with serve(handle, "127.0.0.1", 0, max_size=2**20) as server:
        emit({"event": "listening", "port": server.sockets[0].getsockname()[1]})
        await asyncio.wait_for(done, 300)
    emit({"event": "report", **report})


def align(ref, deg):
    """DEG shifted so it lines up with REF (cross-correlation), cut or padded to REF's length."""
    n = 1 << int(np.ceil(np.log2(len(ref) + len(deg))))
    corr = np.fft.irfft(np.fft.rfft(deg, n) * np.conj(np.fft.rfft(ref, n)), n)
    lag = int(np.argmax(corr))
    if lag > n // 2:
        lag -= n
    if lag >= 0:
        d = deg[lag:]
    else:
        d = np.concatenate([np.zeros(-lag), deg])
    d = d[: len(ref)]
    if len(d) < len(ref):
        d = np.concatenate([d, np.zeros(len(ref) - len(d))])
    return d, lag


def score(args):
    from pesq import pesq

    rate = int(args.rate)
    ref = read_raw(args.ref)
    deg = read_raw(args.deg)
    d, lag = align(ref, deg)
    out = {"deg": args.deg, "rate": rate, "lag_ms": lag * 1000 / rate,
           "nb": round(float(pesq(rate, ref, d, "nb")), 3)}
    if rate == 16000:
        out["wb"] = round(float(pesq(rate, ref, d, "wb")), 3)
    emit(out)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("dir")
    a.add_argument("--text", default=TEXT)
    b = sub.add_parser("bot")
    b.add_argument("--out", required=True)
    b.add_argument("--echo", action="store_true")
    c = sub.add_parser("score")
    c.add_argument("ref")
    c.add_argument("deg")
    c.add_argument("rate")
    args = p.parse_args()
    if args.cmd == "prepare":
        prepare(args)
    elif args.cmd == "bot":
        asyncio.run(bot(args))
    else:
        score(args)


if __name__ == "__main__":
    sys.exit(main())
