#!/usr/bin/env python3
"""Tiny UDP probe for the natchat testbed (stdlib only). Prints JSON lines.

  udp_probe.py server --port P [--duration S] [--max N] [--no-echo] [--quiet]
      Bind P, print {"ev":"ready"}, then for each datagram print
      {"ev":"recv","from":"ip:port","data":...} and (unless --no-echo) reply
      {"seen":"ip:port","data":...} -- the source address as seen here, i.e. the
      NAT mapping.  Ends after S seconds, N datagrams or SIGTERM, printing
      {"ev":"done","received":n,"by_source":{"ip:port":count}}.  --quiet drops
      the per-datagram lines (use it when nobody drains stdout: a full pipe
      would block the probe).

  udp_probe.py client [--bind-port P] --to IP:PORT [--to ...] [--count N]
                      [--interval S] [--wait S] [--payload TEXT] [--quiet]
      One socket: send N datagrams to each destination (round robin), then keep
      receiving for --wait seconds after the last send. Prints ready, one recv
      line per datagram received, and {"ev":"done","sent":..,"received":..,
      "send_errors":..}.  Send errors are counted, never fatal.

All loops are bounded by count and time.
"""

import argparse
import json
import select
import signal
import socket
import sys
import time

MAX_DURATION = 300.0


def emit(obj):
    # SIGTERM is held off while a line is written, so lines are never torn
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        sys.stdout.write(json.dumps(obj) + '\n')
        sys.stdout.flush()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def hostport(s):
    host, _, port = s.rpartition(':')
    return host, int(port)


class Stop(Exception):
    pass


def _on_term(signum, frame):
    raise Stop()


def server(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((a.bind, a.port))
    emit({'ev': 'ready', 'local': '%s:%d' % s.getsockname()})
    deadline = time.monotonic() + min(a.duration, MAX_DURATION)
    n = 0
    by_source = {}
    try:
        while n < a.max:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            r, _, _ = select.select([s], [], [], left)
            if not r:
                break
            data, src = s.recvfrom(65536)
            n += 1
            seen = '%s:%d' % src
            by_source[seen] = by_source.get(seen, 0) + 1
            text = data.decode('utf-8', 'replace')
            if not a.quiet:
                emit({'ev': 'recv', 'from': seen, 'data': text, 't': time.time()})
            if a.echo:
                try:
                    s.sendto(json.dumps({'seen': seen, 'data': text}).encode(), src)
                except OSError as e:
                    if not a.quiet:
                        emit({'ev': 'send_error', 'to': seen, 'error': str(e)})
    except Stop:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    emit({'ev': 'done', 'received': n, 'by_source': by_source})


def client(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((a.bind, a.bind_port))
    s.setblocking(False)
    emit({'ev': 'ready', 'local': '%s:%d' % s.getsockname()})
    dests = [hostport(d) for d in (a.to or [])]
    sends = [(i, d) for i in range(a.count) for d in dests]
    sent = errors = received = 0
    hard_deadline = time.monotonic() + MAX_DURATION

    def drain(until):
        nonlocal received
        for _ in range(1000000):
            left = until - time.monotonic()
            if left <= 0 or time.monotonic() > hard_deadline:
                return
            r, _, _ = select.select([s], [], [], left)
            if not r:
                return
            try:
                data, src = s.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:     # e.g. ICMP port unreachable reported as ECONNREFUSED
                emit({'ev': 'recv_error', 'error': str(e)})
                continue
            received += 1
            if a.quiet:
                continue
            text = data.decode('utf-8', 'replace')
            obj = {'ev': 'recv', 'from': '%s:%d' % src, 'data': text}
            try:
                inner = json.loads(text)
                if isinstance(inner, dict) and 'seen' in inner:
                    obj['seen'] = inner['seen']
                    obj['echo_of'] = inner.get('data')
            except ValueError:
                pass
            emit(obj)

    try:
        for i, d in sends:
            payload = '%s#%d' % (a.payload, i)
            try:
                s.sendto(payload.encode(), d)
                sent += 1
            except OSError as e:
                errors += 1
                if not a.quiet:
                    emit({'ev': 'send_error', 'to': '%s:%d' % d, 'error': str(e)})
            drain(time.monotonic() + a.interval)
        drain(time.monotonic() + min(a.wait, MAX_DURATION))
    except Stop:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    emit({'ev': 'done', 'sent': sent, 'received': received, 'send_errors': errors})


def main(argv=None):
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest='cmd', required=True)
    sp = sub.add_parser('server')
    sp.add_argument('--bind', default='0.0.0.0')
    sp.add_argument('--port', type=int, required=True)
    sp.add_argument('--duration', type=float, default=20.0)
    sp.add_argument('--max', type=int, default=100000)
    sp.add_argument('--no-echo', dest='echo', action='store_false')
    sp.add_argument('--quiet', action='store_true')
    cp = sub.add_parser('client')
    cp.add_argument('--bind', default='0.0.0.0')
    cp.add_argument('--bind-port', type=int, default=0)
    cp.add_argument('--to', action='append')
    cp.add_argument('--count', type=int, default=1)
    cp.add_argument('--interval', type=float, default=0.01)
    cp.add_argument('--wait', type=float, default=1.0)
    cp.add_argument('--payload', default='probe')
    cp.add_argument('--quiet', action='store_true')
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_term)
    (server if a.cmd == 'server' else client)(a)


if __name__ == '__main__':
    main()
