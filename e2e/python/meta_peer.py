#!/usr/bin/env python3
"""A WhatsApp media endpoint as Meta's behaves, built from parts nobody on this project wrote.

STUN comes from aioice (message codec, MESSAGE-INTEGRITY, FINGERPRINT), DTLS from pyOpenSSL
(DTLS_METHOD with use_srtp and RFC 5705 keying-material export), SRTP from pylibsrtp (libsrtp 2).
aioice's `Connection` is a full ICE agent only, so the ICE-lite behaviour is written here on top
of its STUN codec, as Meta's endpoint does it:

- ICE-lite, always controlled: it never sends a check; it answers Binding requests whose
  USERNAME is `ours:theirs` and whose MESSAGE-INTEGRITY uses our password, from the socket that
  got them. A check claiming ICE-CONTROLLED gets 487 Role Conflict. Checks that arrive before
  the relay's answer was given are ignored (Meta's converge only after it processed the answer).
- One IPv4 and (if `::1` binds) one IPv6 host candidate, Meta-shaped credentials (ufrag with
  '/', pwd ending '=='), `a=setup:actpass`, Opus 111 + telephone-event 126, CRLF.
- DTLS as the relay's answer dictates (`active` -> we are the server); the relay's certificate
  must match the SHA-256 fingerprint in its SDP.
- After DTLS: SRTP/SRTCP with the negotiated profile. On `start_audio` (optionally only once the
  business's maiden packet arrived, as WhatsApp clients wait for it) it sends Opus-sized packets
  every 20 ms whose payload is the e2e crate's stamp format (counter, send time, filler), and a
  compound RTCP SR + SDES every `--rtcp-interval`. Everything received is recorded.

Control: JSON lines. The peer prints {"event": "ready", "offer": SDP} first; then it reads
commands on stdin ({"cmd": "answer", "sdp": ...}, {"cmd": "start_audio", "packets": N},
{"cmd": "stats"}, {"cmd": "quit"}) and prints events on stdout. EOF on stdin ends it; so does
`--lifetime` seconds (a stuck test never leaves it running). Loopback only.
"""

import argparse
import asyncio
import base64
import datetime
import json
import secrets
import socket
import struct
import sys
import time

from aioice import stun
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
import pylibsrtp
from pylibsrtp import Policy, Session

# OpenSSL profile name -> (libsrtp profile, master key length, master salt length).
PROFILES = {
    "SRTP_AES128_CM_SHA1_80": (Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 16, 14),
    "SRTP_AEAD_AES_128_GCM": (Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 16, 12),
}
OPUS_PT = 111
DTMF_PT = 126
OPUS_TS_PER_FRAME = 960
PACKET_TIME = 0.020


def emit(event, **fields):
    fields["event"] = event
    try:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        pass  # the harness is gone; the peer ends on stdin's EOF


def log(msg):
    print(f"meta_peer: {msg}", file=sys.stderr, flush=True)


# ----- payloads: the e2e crate's `stamped_payload`, byte for byte -------------------------------


def unix_micros():
    return time.time_ns() // 1000


def stamped_payload(counter, length):
    """Counter (u32 BE), send time in µs (u64 BE), then xorshift32 filler seeded by the counter."""
    length = max(length, 12)
    out = bytearray(struct.pack("!IQ", counter & 0xFFFFFFFF, unix_micros()))
    x = (counter * 2_654_435_761 + 1) & 0xFFFFFFFF
    while len(out) < length:
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        out.append(x & 0xFF)
    return bytes(out)


# ----- SDP -------------------------------------------------------------------------------------


def meta_ufrag():
    b = base64.b64encode(secrets.token_bytes(6)).decode().replace("+", "x").replace("/", "x")
    return f"{b[:4]}/{b[4:8]}"


def candidate_line(foundation, addr, priority):
    host, port = addr[0], addr[1]
    return f"a=candidate:{foundation} 1 udp {priority} {host} {port} typ host generation 0"


def parse_remote_sdp(sdp):
    """The few attributes a lite agent needs from the relay's answer."""
    r = {"ufrag": None, "pwd": None, "fingerprint": None, "setup": None, "candidates": []}
    for line in sdp.splitlines():
        line = line.strip()
        if line.startswith("a=ice-ufrag:"):
            r["ufrag"] = line[len("a=ice-ufrag:"):]
        elif line.startswith("a=ice-pwd:"):
            r["pwd"] = line[len("a=ice-pwd:"):]
        elif line.startswith("a=fingerprint:"):
            algo, _, value = line[len("a=fingerprint:"):].partition(" ")
            if algo.lower() == "sha-256":
                r["fingerprint"] = value.strip().upper()
        elif line.startswith("a=setup:"):
            r["setup"] = line[len("a=setup:"):]
        elif line.startswith("a=candidate:"):
            r["candidates"].append(line[2:])
    for key in ("ufrag", "pwd", "fingerprint", "setup"):
        if r[key] is None:
            raise ValueError(f"relay SDP lacks a={key}")
    return r


# ----- certificate -----------------------------------------------------------------------------


def make_certificate():
    """ECDSA P-256, self-signed, as WebRTC stacks (and Meta) use."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, secrets.token_hex(8))])
    now = datetime.datetime.now(tz=datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return key, cert


def fingerprint(cert):
    h = cert.fingerprint(hashes.SHA256()).hex().upper()
    return ":".join(h[i : i + 2] for i in range(0, len(h), 2))


# ----- RTP / RTCP ------------------------------------------------------------------------------


def parse_rtp(p):
    if len(p) < 12 or p[0] >> 6 != 2:
        return None
    cc = p[0] & 0x0F
    start = 12 + 4 * cc
    if p[0] & 0x10:
        if len(p) < start + 4:
            return None
        words = struct.unpack("!H", p[start + 2 : start + 4])[0]
        start += 4 + 4 * words
    end = len(p)
    if p[0] & 0x20:
        end -= p[-1]
    if start > end:
        return None
    seq, ts, ssrc = struct.unpack("!HII", p[2:12])
    return {
        "pt": p[1] & 0x7F,
        "marker": bool(p[1] & 0x80),
        "seq": seq,
        "ts": ts,
        "ssrc": ssrc,
        "payload": p[start:end].hex(),
    }


def is_rtcp(p):
    return len(p) >= 8 and 192 <= p[1] <= 223


def rtcp_types(p):
    types = []
    while len(p) >= 4:
        types.append(p[1])
        n = 4 * (struct.unpack("!H", p[2:4])[0] + 1)
        p = p[n:]
    return types


def ntp_now():
    t = time.time()
    secs = int(t) + 2_208_988_800
    frac = int((t % 1) * (1 << 32))
    return (secs << 32) | frac


def sender_report(ssrc, rtp_ts, packets, octets, cname):
    """Compound RTCP as RFC 3550 §6.1 wants it: SR (no report blocks) then SDES CNAME."""
    sr = struct.pack("!BBHIQIII", 0x80, 200, 6, ssrc, ntp_now(), rtp_ts, packets, octets)
    item = bytes([1, len(cname)]) + cname
    chunk = struct.pack("!I", ssrc) + item + b"\x00"
    chunk += b"\x00" * (-len(chunk) % 4)
    sdes = struct.pack("!BBH", 0x81, 202, len(chunk) // 4) + chunk
    return sr + sdes


# ----- the peer --------------------------------------------------------------------------------


class Socket(asyncio.DatagramProtocol):
    def __init__(self, peer, family):
        self.peer = peer
        self.family = family
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        try:
            self.peer.on_datagram(self, data, (addr[0], addr[1]))
        except Exception as e:  # a bad datagram must not kill the peer; say what happened
            self.peer.stats["errors"].append(f"{type(e).__name__}: {e}")
            log(f"datagram from {addr}: {type(e).__name__}: {e}")

    def send(self, data, addr):
        self.transport.sendto(data, addr)


class MetaPeer:
    def __init__(self, args):
        self.args = args
        self.loop = asyncio.get_running_loop()
        self.ufrag = meta_ufrag()
        self.pwd = base64.b64encode(secrets.token_bytes(16)).decode()  # 24 chars, ends '=='
        self.key, self.cert = make_certificate()
        self.ssrc = secrets.randbits(32)
        self.cname = base64.b64encode(secrets.token_bytes(12))
        self.profiles = args.profiles.split(":")
        for p in self.profiles:
            if p not in PROFILES:
                raise SystemExit(f"unknown SRTP profile {p}")
        self.sockets = []
        self.remote = None
        self.role = None  # "server" | "client"
        self.ssl = None
        self.dtls_sock = None
        self.dtls_peer = None
        self.dtls_timer = None
        self.tx = self.rx = None
        self.profile = None
        self.target = None  # (Socket, addr) media goes to
        self.validated = set()
        self.audio_task = None
        self.audio_armed = None  # packets to send once the business's first packet arrives
        self.seq = secrets.randbits(16)
        self.ts = secrets.randbits(32)
        self.counter = 0
        self.octets = 0
        self.stats = {
            "binding_requests": 0,
            "binding_responses": 0,
            "stun_before_answer": 0,
            "stun_auth_failures": 0,
            "role_conflicts": 0,
            "nominated": None,
            "dtls_role": None,
            "profile": None,
            "rtp_sent": 0,
            "rtcp_sent": 0,
            "rtp_received": 0,
            "rtcp_received": 0,
            "rtcp_types": [],
            "srtp_auth_failures": 0,
            "dropped": 0,
            "errors": [],
        }
        self.sent_payloads = []
        self.received = []

    async def bind(self):
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            try:
                _, proto = await self.loop.create_datagram_endpoint(
                    lambda f=family: Socket(self, f), local_addr=(host, 0), family=family
                )
            except OSError as e:
                if family == socket.AF_INET:
                    raise
                log(f"no IPv6 candidate: {e}")
                continue
            self.sockets.append(proto)

    def local_addr(self, s):
        return s.transport.get_extra_info("sockname")[:2]

    def offer(self):
        v4 = self.local_addr(self.sockets[0])
        lines = [
            "v=0",
            f"o=- {secrets.randbits(62)} 2 IN IP4 {v4[0]}",
            "s=-",
            "t=0 0",
            "a=group:BUNDLE audio",
            "a=msid-semantic: WMS",
            "a=ice-lite",
            f"m=audio {v4[1]} UDP/TLS/RTP/SAVPF {OPUS_PT} {DTMF_PT}",
            f"c=IN IP4 {v4[0]}",
        ]
        for i, s in enumerate(self.sockets):
            lines.append(candidate_line(i, self.local_addr(s), 2_130_706_431 - i))
        lines += [
            f"a=ice-ufrag:{self.ufrag}",
            f"a=ice-pwd:{self.pwd}",
            f"a=fingerprint:sha-256 {fingerprint(self.cert)}",
            "a=setup:actpass",
            "a=mid:audio",
            "a=sendrecv",
            "a=rtcp-mux",
            f"a=rtpmap:{OPUS_PT} opus/48000/2",
            f"a=rtcp-fb:{OPUS_PT} transport-cc",
            f"a=fmtp:{OPUS_PT} maxaveragebitrate=20000;maxplaybackrate=16000;minptime=20;"
            "sprop-maxcapturerate=16000;useinbandfec=1",
            f"a=rtpmap:{DTMF_PT} telephone-event/8000",
            "a=ptime:20",
            "a=maxptime:20",
            f"a=ssrc:{self.ssrc} cname:{self.cname.decode()}",
        ]
        return "\r\n".join(lines) + "\r\n"

    def set_answer(self, sdp):
        self.remote = parse_remote_sdp(sdp)
        # RFC 5763: the answerer's `active` makes us the DTLS server.
        self.role = {"active": "server", "passive": "client"}.get(self.remote["setup"])
        if self.role is None:
            raise ValueError(f"answer has a=setup:{self.remote['setup']}, expected active|passive")
        self.stats["dtls_role"] = self.role

    # --- demultiplexing (RFC 7983) ---

    def on_datagram(self, sock, data, addr):
        b = data[0] if data else 255
        if b <= 3:
            self.on_stun(sock, data, addr)
        elif 20 <= b <= 63:
            self.on_dtls(sock, data, addr)
        elif 128 <= b <= 191:
            self.on_media(data)
        else:
            self.stats["dropped"] += 1

    # --- ICE-lite ---

    def on_stun(self, sock, data, addr):
        try:
            msg = stun.parse_message(data)
        except ValueError:
            self.stats["dropped"] += 1
            return
        # A lite agent sends no requests, so any response is not ours.
        if msg.message_class != stun.Class.REQUEST or msg.message_method != stun.Method.BINDING:
            return
        self.stats["binding_requests"] += 1
        if self.remote is None:
            self.stats["stun_before_answer"] += 1
            return
        expected_user = f"{self.ufrag}:{self.remote['ufrag']}"
        if msg.attributes.get("USERNAME") != expected_user or not msg.check_message_integrity(
            self.pwd.encode()
        ):
            self.stats["stun_auth_failures"] += 1
            return
        if "ICE-CONTROLLED" in msg.attributes and "ICE-CONTROLLING" not in msg.attributes:
            # A lite agent is always controlled: the other side must take the controlling role.
            self.stats["role_conflicts"] += 1
            resp = stun.Message(
                message_method=stun.Method.BINDING,
                message_class=stun.Class.ERROR,
                transaction_id=msg.transaction_id,
            )
            resp.attributes["ERROR-CODE"] = (487, "Role Conflict")
            resp.add_message_integrity(self.pwd.encode())
            resp.add_fingerprint()
            sock.send(bytes(resp), addr)
            return
        resp = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.RESPONSE,
            transaction_id=msg.transaction_id,
        )
        resp.attributes["XOR-MAPPED-ADDRESS"] = addr
        resp.add_message_integrity(self.pwd.encode())
        resp.add_fingerprint()
        sock.send(bytes(resp), addr)
        self.stats["binding_responses"] += 1
        self.validated.add(addr)
        if "USE-CANDIDATE" in msg.attributes:
            # The lite side follows the controlling agent's latest nomination.
            if self.stats["nominated"] != f"{addr[0]}:{addr[1]}":
                self.stats["nominated"] = f"{addr[0]}:{addr[1]}"
                emit("ice_nominated", addr=self.stats["nominated"])
            self.target = (sock, addr)
            if self.role == "client" and self.ssl is None:
                self.start_dtls(sock, addr)

    # --- DTLS ---

    def start_dtls(self, sock, addr):
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.set_options(SSL.OP_NO_TICKET)
        # The certificate is self-signed: accept it here, check its fingerprint against the
        # SDP once the handshake is done.
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *a: True)
        ctx.use_certificate(self.cert)
        ctx.use_privatekey(self.key)
        ctx.set_tlsext_use_srtp(":".join(self.profiles).encode())
        self.ssl = SSL.Connection(ctx, None)  # memory BIOs: we own the socket
        if self.role == "server":
            self.ssl.set_accept_state()
        else:
            self.ssl.set_connect_state()
        self.dtls_sock, self.dtls_peer = sock, addr
        self.dtls_step()

    def on_dtls(self, sock, data, addr):
        if self.remote is None or self.role is None:
            self.stats["dropped"] += 1
            return
        if self.ssl is None:
            # As server, a ClientHello is only taken from an address that passed a check.
            if self.role != "server" or addr not in self.validated:
                self.stats["dropped"] += 1
                return
            self.start_dtls(sock, addr)
        if addr != self.dtls_peer:
            self.stats["dropped"] += 1
            return
        self.ssl.bio_write(data)
        self.dtls_step()

    def dtls_step(self):
        if self.tx is None:
            try:
                self.ssl.do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error as e:
                self.fail(f"DTLS handshake: {e}")
                return
            else:
                self.dtls_done()
        else:
            # After the handshake: let OpenSSL answer retransmitted flights; no app data here.
            try:
                self.ssl.recv(1500)
            except (SSL.WantReadError, SSL.ZeroReturnError):
                pass
            except SSL.Error as e:
                log(f"DTLS after handshake: {e}")
        self.dtls_flush()

    def dtls_flush(self):
        while True:
            try:
                data = self.ssl.bio_read(1500)
            except SSL.WantReadError:
                break
            self.dtls_sock.send(data, self.dtls_peer)
        if self.dtls_timer is not None:
            self.dtls_timer.cancel()
            self.dtls_timer = None
        timeout = self.ssl.DTLSv1_get_timeout()
        if timeout is not None:
            self.dtls_timer = self.loop.call_later(timeout, self.dtls_timeout)

    def dtls_timeout(self):
        self.dtls_timer = None
        self.ssl.DTLSv1_handle_timeout()
        self.dtls_flush()

    def dtls_done(self):
        cert = self.ssl.get_peer_certificate(as_cryptography=True)
        if cert is None or fingerprint(cert) != self.remote["fingerprint"]:
            self.fail("the relay's certificate does not match its SDP fingerprint")
            return
        name = self.ssl.get_selected_srtp_profile().decode()
        if name not in PROFILES:
            self.fail(f"DTLS negotiated no SRTP profile we offered ({name!r})")
            return
        libsrtp, klen, slen = PROFILES[name]
        # RFC 5764 §4.2: client key, server key, client salt, server salt.
        km = self.ssl.export_keying_material(b"EXTRACTOR-dtls_srtp", 2 * (klen + slen))
        client = km[:klen] + km[2 * klen : 2 * klen + slen]
        server = km[klen : 2 * klen] + km[2 * klen + slen : 2 * klen + 2 * slen]
        local, remote = (server, client) if self.role == "server" else (client, server)
        self.tx = Session(Policy(key=local, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=libsrtp))
        self.rx = Session(Policy(key=remote, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=libsrtp))
        self.profile = name
        self.stats["profile"] = name
        if self.target is None:
            self.target = (self.dtls_sock, self.dtls_peer)
        emit("dtls_connected", profile=name, role=self.role, cipher=self.ssl.get_cipher_name())
        self.loop.create_task(self.rtcp_loop())

    def fail(self, why):
        self.stats["errors"].append(why)
        emit("error", what=why)

    # --- SRTP ---

    def on_media(self, data):
        if self.rx is None:
            self.stats["dropped"] += 1
            return
        if is_rtcp(data):
            try:
                plain = self.rx.unprotect_rtcp(data)
            except pylibsrtp.Error:
                self.stats["srtp_auth_failures"] += 1
                return
            self.stats["rtcp_received"] += 1
            for t in rtcp_types(plain):
                if t not in self.stats["rtcp_types"]:
                    self.stats["rtcp_types"].append(t)
            return
        try:
            plain = self.rx.unprotect(data)
        except pylibsrtp.Error:
            self.stats["srtp_auth_failures"] += 1
            return
        pkt = parse_rtp(plain)
        if pkt is None:
            self.stats["dropped"] += 1
            return
        self.stats["rtp_received"] += 1
        self.received.append(pkt)
        if self.audio_armed is not None:
            n, self.audio_armed = self.audio_armed, None
            self.audio_task = self.loop.create_task(self.audio(n))

    def send_plain(self, packet):
        if self.tx is None or self.target is None:
            return False
        sock, addr = self.target
        if is_rtcp(packet):
            sock.send(self.tx.protect_rtcp(packet), addr)
            self.stats["rtcp_sent"] += 1
        else:
            sock.send(self.tx.protect(packet), addr)
            self.stats["rtp_sent"] += 1
        return True

    def start_audio(self, packets):
        if self.args.wait_for_media and self.stats["rtp_received"] == 0:
            self.audio_armed = packets
        else:
            self.audio_task = self.loop.create_task(self.audio(packets))

    async def audio(self, packets):
        """`packets` Opus-sized frames at 20 ms on an absolute schedule (no drift)."""
        emit("audio_started")
        start = self.loop.time()
        rng = secrets.randbits(32) | 1
        for i in range(packets):
            rng ^= (rng << 13) & 0xFFFFFFFF
            rng ^= rng >> 17
            rng ^= (rng << 5) & 0xFFFFFFFF
            payload = stamped_payload(self.counter, 60 + rng % 61)
            self.counter += 1
            marker = 0x80 if i == 0 else 0
            header = struct.pack("!BBHII", 0x80, marker | OPUS_PT, self.seq, self.ts, self.ssrc)
            if self.send_plain(header + payload):
                self.sent_payloads.append(payload.hex())
                self.octets += len(payload)
            self.seq = (self.seq + 1) & 0xFFFF
            self.ts = (self.ts + OPUS_TS_PER_FRAME) & 0xFFFFFFFF
            await asyncio.sleep(max(0.0, start + (i + 1) * PACKET_TIME - self.loop.time()))
        emit("audio_done", sent=len(self.sent_payloads))

    async def rtcp_loop(self):
        # Meta uses missing RTCP to detect a dead agent, so it sends reports even in silence.
        while True:
            sr = sender_report(self.ssrc, self.ts, self.stats["rtp_sent"], self.octets, self.cname)
            self.send_plain(sr)
            await asyncio.sleep(self.args.rtcp_interval)

    def snapshot(self):
        return dict(self.stats, sent_payloads=self.sent_payloads, received=self.received)


async def read_commands(peer):
    reader = asyncio.StreamReader(limit=1 << 22)
    await peer.loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    while True:
        line = await reader.readline()
        if not line:
            return  # EOF: the harness is gone
        try:
            cmd = json.loads(line)
            name = cmd.get("cmd")
            if name == "answer":
                peer.set_answer(cmd["sdp"])
                emit("answer_set", role=peer.role)
            elif name == "start_audio":
                peer.start_audio(int(cmd.get("packets", 50)))
            elif name == "stats":
                emit("stats", **peer.snapshot())
            elif name == "quit":
                return
            else:
                emit("error", what=f"unknown command {name!r}")
        except (ValueError, KeyError, TypeError) as e:
            emit("error", what=f"bad command: {e}")


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--profiles",
        default="SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80",
        help="SRTP profiles offered in DTLS use_srtp, colon-separated, preferred first",
    )
    ap.add_argument("--rtcp-interval", type=float, default=1.0)
    ap.add_argument("--wait-for-media", action="store_true",
                    help="send audio only after the business's first packet (as WhatsApp does)")
    ap.add_argument("--lifetime", type=float, default=60.0, help="exit after this many seconds")
    args = ap.parse_args()
    peer = MetaPeer(args)
    await peer.bind()
    emit("ready", offer=peer.offer(), ssrc=peer.ssrc,
         openssl=SSL.SSLeay_version(SSL.SSLEAY_VERSION).decode())
    try:
        await asyncio.wait_for(read_commands(peer), args.lifetime)
    except asyncio.TimeoutError:
        log(f"lifetime of {args.lifetime} s reached")
    for s in peer.sockets:
        s.transport.close()


if __name__ == "__main__":
    asyncio.run(main())
