"""Forging natchat datagrams for the security end-to-end tests (stdlib + `cryptography`).

This module holds no tests.

* ns_socket(): a socket created inside a testbed network namespace, from this process
  (a short-lived thread joins the namespace with setns(2), creates the socket and exits;
  the socket stays in that namespace).  No extra process to clean up: close the socket.
* RawSender: IP_HDRINCL raw socket that writes whole IPv4+UDP packets, so the source
  address and port can be anything (the testbed has no anti-spoofing filter).
* Sniffer: an AF_PACKET socket in a namespace, a thread that records every UDP/IPv4
  packet (incoming and outgoing) with its time, for byte counting and "what did the
  server send there" checks.
* Encoders for the classic text dialect and the extended (natchat/2) binary dialect,
  mirroring Modules/Wire/{ClassicMessage,ExtendedMessage,ByteCodec}.swift.
"""

import ctypes
import os
import socket
import struct
import threading
import time

CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4

_libc = ctypes.CDLL(None, use_errno=True)


# --------------------------------------------------------------------------- namespaces


def ns_socket(ns, family=socket.AF_INET, type=socket.SOCK_DGRAM, proto=0):
    """A socket that lives in network namespace `ns` (a name under /run/netns)."""
    box = {}

    def work():
        try:
            fd = os.open(f'/run/netns/{ns}', os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, f'setns({ns}): {os.strerror(e)}')
            finally:
                os.close(fd)
            box['sock'] = socket.socket(family, type, proto)
        except BaseException as e:  # handed to the caller
            box['error'] = e

    t = threading.Thread(target=work, name=f'setns-{ns}', daemon=True)
    t.start()
    t.join(10)
    if 'error' in box:
        raise box['error']
    if 'sock' not in box:
        raise OSError(f'could not create a socket in {ns}')
    return box['sock']


def ns_udp(ns, bind=('0.0.0.0', 0)):
    s = ns_socket(ns, socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind(bind)
    return s


# --------------------------------------------------------------------------- raw IPv4/UDP


def _csum(data):
    if len(data) % 2:
        data += b'\0'
    s = sum(struct.unpack(f'!{len(data) // 2}H', data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ipv4_udp(src, sport, dst, dport, payload, udp_checksum=True, ident=None):
    """A complete IPv4 packet carrying one UDP datagram."""
    if isinstance(payload, str):
        payload = payload.encode('utf-8')
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    ulen = 8 + len(payload)
    csum = 0
    if udp_checksum:
        pseudo = s + d + struct.pack('!BBH', 0, 17, ulen)
        csum = _csum(pseudo + struct.pack('!HHHH', sport, dport, ulen, 0) + payload) or 0xFFFF
    udp = struct.pack('!HHHH', sport, dport, ulen, csum) + payload
    ident = int.from_bytes(os.urandom(2), 'big') if ident is None else ident
    hdr = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + ulen, ident, 0, 64, 17, 0, s, d)
    hdr = hdr[:10] + struct.pack('!H', _csum(hdr)) + hdr[12:]
    return hdr + udp


class RawSender:
    """Sends forged IPv4/UDP packets from namespace `ns`."""

    def __init__(self, ns):
        self.sock = ns_socket(ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        self.sent = 0

    def send(self, src, dst, payload):
        """src, dst: (ip, port)."""
        pkt = ipv4_udp(src[0], src[1], dst[0], dst[1], payload)
        self.sock.sendto(pkt, (dst[0], 0))
        self.sent += 1

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Sniffer:
    """Records every UDP/IPv4 packet seen in namespace `ns` (both directions).

    packets: list of dicts {t, out, src, sport, dst, dport, payload}.  UDP payload bytes
    only (no headers) -- what the protocols count.  store=False keeps only `totals`
    (packets and payload bytes each way), for floods."""

    def __init__(self, ns, store=True):
        self.store = store
        self.totals = {'out_packets': 0, 'out_bytes': 0, 'in_packets': 0, 'in_bytes': 0}
        # ETH_P_ALL: protocol-specific packet sockets never see outgoing packets
        self.sock = ns_socket(ns, socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.settimeout(0.2)
        self.packets = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f'sniff-{ns}', daemon=True)
        self._thread.start()

    def _run(self):
        for _ in range(100_000_000):
            if self._stop.is_set():
                break
            try:
                data, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                break
            t = time.monotonic()
            if len(data) < 28 or data[0] >> 4 != 4 or data[9] != 17:
                continue
            ihl = (data[0] & 15) * 4
            if addr[0] == 'lo' or addr[1] != ETH_P_IP:
                continue
            src = socket.inet_ntoa(data[12:16])
            dst = socket.inet_ntoa(data[16:20])
            sport, dport, ulen = struct.unpack('!HHH', data[ihl:ihl + 6])
            payload = bytes(data[ihl + 8:ihl + ulen])
            out = addr[2] == PACKET_OUTGOING
            with self._lock:
                k = 'out' if out else 'in'
                self.totals[k + '_packets'] += 1
                self.totals[k + '_bytes'] += len(payload)
                if self.store:
                    self.packets.append({'t': t, 'out': out, 'src': src, 'sport': sport,
                                         'dst': dst, 'dport': dport, 'payload': payload})

    def snapshot(self):
        with self._lock:
            return dict(self.totals)

    def select(self, since=0.0, src=None, dst=None):
        """Packets at/after monotonic `since`; src/dst: (ip, port) or (ip, None) filters."""
        with self._lock:
            pk = list(self.packets)
        out = []
        for p in pk:
            if p['t'] < since:
                continue
            if src and (p['src'] != src[0] or (src[1] is not None and p['sport'] != src[1])):
                continue
            if dst and (p['dst'] != dst[0] or (dst[1] is not None and p['dport'] != dst[1])):
                continue
            out.append(p)
        return out

    def close(self):
        self._stop.set()
        self._thread.join(2)
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------- dialects

MAGIC, VERSION = 0xFE, 1
T_REGISTER, T_KEEPALIVE, T_EXIT, T_CONNECT, T_RELAY = 0x01, 0x02, 0x03, 0x04, 0x05
T_CHALLENGE, T_REGISTERED, T_REFUSED, T_PEER, T_PEERLEFT, T_PUNCH, T_RELAYED, T_KAACK, T_UNKNOWN = range(0x41, 0x4A)
T_PING, T_PONG, T_CHAT, T_CHATACK = 0x81, 0x82, 0x83, 0x84
TYPE_NAMES = {
    T_REGISTER: 'register', T_KEEPALIVE: 'keepAlive', T_EXIT: 'exit', T_CONNECT: 'connect', T_RELAY: 'relay',
    T_CHALLENGE: 'challenge', T_REGISTERED: 'registered', T_REFUSED: 'refused', T_PEER: 'peer',
    T_PEERLEFT: 'peerLeft', T_PUNCH: 'punch', T_RELAYED: 'relayed', T_KAACK: 'keepAliveAck',
    T_UNKNOWN: 'unknownSession', T_PING: 'ping', T_PONG: 'pong', T_CHAT: 'chat', T_CHATACK: 'chatAck',
}
NAT_UNKNOWN, NAT_NONE, NAT_EIM, NAT_EDM = 0, 1, 2, 3


def _id(cid):
    b = cid.encode('utf-8')
    return struct.pack('!B', len(b)) + b


def _hdr(t):
    return bytes([MAGIC, VERSION, t])


def ext_keepalive(cid, counter, tag=None, nat=NAT_EIM):
    return _hdr(T_KEEPALIVE) + _id(cid) + bytes([nat]) + struct.pack('!Q', counter) + (tag or os.urandom(16))


def ext_exit(cid, counter, tag=None):
    return _hdr(T_EXIT) + _id(cid) + struct.pack('!Q', counter) + (tag or os.urandom(16))


def ext_chat(frm, to, message_id, sealed):
    return _hdr(T_CHAT) + _id(frm) + _id(to) + struct.pack('!QH', message_id, len(sealed)) + sealed


def ext_register(cid, cookie, private_endpoints=(), nat=NAT_EIM, signing_key=None, agreement_pub=None):
    """A registration signed (Ed25519) by signing_key (a fresh one when None), like
    SessionCrypto.signedRegistration.  Returns (bytes, signed): without the `cryptography`
    package the keys and the signature are random bytes (signed is False) -- the server
    checks the cookie before the signature, so a guessed cookie fails either way."""
    eps = b''.join(socket.inet_aton(ip) + struct.pack('!H', port) for ip, port in private_endpoints)
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    except ImportError:
        body = (_hdr(T_REGISTER) + _id(cid) + cookie + struct.pack('!B', len(private_endpoints)) + eps
                + bytes([nat]) + os.urandom(32) + (agreement_pub or os.urandom(32)))
        return body + os.urandom(64), False
    sk = signing_key or Ed25519PrivateKey.generate()
    spub = sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    apub = agreement_pub or X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    body = (_hdr(T_REGISTER) + _id(cid) + cookie + struct.pack('!B', len(private_endpoints)) + eps
            + bytes([nat]) + spub + apub)
    return body + sk.sign(body), True


def ext_type(payload):
    """Name of an extended datagram's type, or None for anything else."""
    if len(payload) >= 3 and payload[0] == MAGIC:
        return TYPE_NAMES.get(payload[2], f'type-0x{payload[2]:02x}')
    return None


def describe(payload):
    """Short text for a datagram: the classic text, or the extended type and size."""
    t = ext_type(payload)
    if t:
        return f'<{t} {len(payload)}B>'
    if payload[:2] in (b'\x00\x01', b'\x01\x01'):
        return f'<STUN {len(payload)}B>'
    return payload.decode('utf-8', 'replace')


# --------------------------------------------------------------------------- capture and replay


def datagrams_from(sniffer, src, since=0.0, until=None):
    """What `sniffer` saw arrive from src = (ip, port) or (ip, None), oldest first:
    dicts {t, src, sport, dst, dport, payload} (incoming packets only; `until` exclusive)."""
    return [p for p in sniffer.select(since=since, src=src)
            if not p['out'] and (until is None or p['t'] < until)]


def kinds(datagrams):
    """{kind: count} for captured datagrams: the natchat/2 type name, 'offer' for a classic
    registration carrying the natchat/2 offer, 'STUN', or 'classic'."""
    out = {}
    for p in datagrams:
        payload = p['payload'] if isinstance(p, dict) else p
        k = ext_type(payload)
        if k is None:
            d = describe(payload)
            k = 'STUN' if d.startswith('<STUN') else ('offer' if d.endswith(' natchat/2') else 'classic')
        out[k] = out.get(k, 0) + 1
    return out


class Replayer:
    """Re-sends captured datagrams with their captured (forged) source addresses, round
    after round, from a raw socket in namespace `ns` (see RawSender), in a thread.

    datagrams: dicts from datagrams_from() (src, sport, dst, dport, payload are used), sent
    in that order, `gap` s apart.  A round starts every `interval` s until `duration` s
    have passed or `max_rounds` rounds were sent.  rounds: monotonic start time of each
    round; sent: datagrams sent in total.  Use as a context manager or call stop()."""

    def __init__(self, ns, datagrams, interval=2.0, duration=75.0, gap=0.005, max_rounds=1000):
        self.datagrams = [((p['src'], p['sport']), (p['dst'], p['dport']), p['payload']) for p in datagrams]
        self.interval, self.duration, self.gap, self.max_rounds = interval, duration, gap, max_rounds
        self.raw = RawSender(ns)
        self.rounds = []
        self.errors = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f'replay-{ns}', daemon=True)

    def start(self):
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
        return False

    @property
    def sent(self):
        return self.raw.sent

    def _run(self):
        end = self.started + self.duration
        for i in range(self.max_rounds):
            t = time.monotonic()
            if t >= end or self._stop.is_set():
                break
            self.rounds.append(t)
            for src, dst, payload in self.datagrams:
                try:
                    self.raw.send(src, dst, payload)
                except OSError as e:          # recorded, reported by the test
                    self.errors.append(f'{src} -> {dst}: {e}')
                if self._stop.wait(self.gap):
                    return
            nxt = self.started + (i + 1) * self.interval
            if self._stop.wait(max(0.0, min(nxt, end) - time.monotonic())):
                break

    def wait(self, timeout):
        """Block until the replay period is over (or timeout); True when it is."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def close(self):
        self.stop()
        self.raw.close()
