"""Helpers for the NAT testbed end-to-end tests (test_nat_traversal.py, test_nat_faults.py).

This module holds no tests (unittest discovery imports it and finds none).

* NatNode: a natchat client or natchat-server started with tb.popen inside a testbed
  namespace, stdin=PIPE, stdout=PIPE drained by a reader thread that timestamps every
  line with time.monotonic() when it is read; stderr goes to the testbed's log file.
* bounded waits on those lines, @show_list parsing, exactly-once accounting;
* expected NAT kinds and paths for a testbed topology.

NATCHAT_NAT_LOG_LEVEL=debug adds --log-level debug to every natchat process.

Every wait is bounded in time and in iterations; every process is started through the
Testbed, which kills it by PID at close().
"""

import os
import re
import subprocess
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(HERE, '..', 'testbed'))

from testbed import require_root  # noqa: E402

SERVER_IP = '203.0.113.10'
SERVER_PORT = 10080
ALT_PORT = 10082
CLIENT_PORT = 10081
MAX_WAKEUPS = 100000

IPPORT = r'\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}:\d{1,5}'
NAT_TEXT = {
    'cone': 'endpoint-independent mapping (cone)',
    'cone_open': 'endpoint-independent mapping (cone)',
    'cone_remapping': 'endpoint-independent mapping (cone), remapped by unsolicited inbound',
    'symmetric': 'endpoint-dependent mapping (symmetric)',
    None: 'no NAT',
}
PATH_LINE = r'\* path to (\S+): (relayed|direct (?:\(probed\) )?\S+|private \S+|none yet|classic)'


def bin_dir():
    env = os.environ.get('NATCHAT_BIN_DIR')
    return env if env else os.path.join(REPO, '.build', 'debug')


def binary(name):
    return os.path.join(bin_dir(), name)


def require_natchat(testcase):
    """Skip loudly without root; skip (fail with NATCHAT_E2E_STRICT=1) without binaries."""
    require_root()
    missing = [binary(n) for n in ('natchat-server', 'natchat')
               if not (os.path.isfile(binary(n)) and os.access(binary(n), os.X_OK))]
    if missing:
        msg = 'natchat binary not built: ' + ', '.join(missing) + ' (set NATCHAT_BIN_DIR)'
        if os.environ.get('NATCHAT_E2E_STRICT') == '1':
            testcase.fail(msg + ' [NATCHAT_E2E_STRICT=1]')
        print(msg, file=sys.stderr)
        testcase.skipTest(msg)


_LIST_ROW = re.compile(r'\S+ (?:' + IPPORT + r'|\?) .*')
_LIST_NOISE = re.compile(r'\S+ (?:' + IPPORT + r'|\?) .*|There is no zz-sync-\d+ in registration list\.')


def log_args():
    """--log-level for every natchat process when NATCHAT_NAT_LOG_LEVEL is set (e.g. debug);
    their stderr goes to the testbed log files and the tail is shown on failures."""
    level = os.environ.get('NATCHAT_NAT_LOG_LEVEL')
    return ['--log-level', level] if level else []


class NatNode:
    """A process in a testbed namespace with timestamped, thread-read stdout lines."""

    def __init__(self, tb, host, name, argv, stdin=True):
        self.tb = tb
        self.host = host
        self.name = name
        self.argv = [str(a) for a in argv]
        self._cond = threading.Condition()
        self._lines = []            # (monotonic time read, text)
        self._eof = False
        self.sent = []              # (monotonic time written, text)
        self.started = time.monotonic()
        self.proc = tb.popen(host, self.argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                             stdout=subprocess.PIPE)
        self._thread = threading.Thread(target=self._read, name=f'{name}-stdout', daemon=True)
        self._thread.start()

    def _read(self):
        pipe = self.proc.stdout
        try:
            for _ in range(10_000_000):
                raw = pipe.readline()
                if not raw:
                    break
                t = time.monotonic()
                text = raw.decode('utf-8', 'replace').rstrip('\r\n')
                with self._cond:
                    self._lines.append((t, text))
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    # ---- lines

    def lines(self, since=0):
        with self._cond:
            return list(self._lines[since:])

    def texts(self, since=0):
        return [t for _, t in self.lines(since)]

    def mark(self):
        with self._cond:
            return len(self._lines)

    def wait(self, regex, timeout, since=0, search=False):
        """(index, time, text, match) of the first line >= since matching regex, or None."""
        pat = re.compile(regex)
        deadline = time.monotonic() + timeout
        i = since
        with self._cond:
            for _ in range(MAX_WAKEUPS):
                while i < len(self._lines):
                    t, text = self._lines[i]
                    m = pat.search(text) if search else pat.fullmatch(text)
                    if m:
                        return i, t, text, m
                    i += 1
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    return None
                self._cond.wait(min(left, 1.0))
        return None

    def find_all(self, regex, since=0, search=False):
        pat = re.compile(regex)
        out = []
        for i, (t, text) in enumerate(self.lines(since)):
            m = pat.search(text) if search else pat.fullmatch(text)
            if m:
                out.append((since + i, t, text, m))
        return out

    def count(self, regex, since=0, search=False):
        return len(self.find_all(regex, since, search))

    # ---- input

    def send(self, text):
        t = time.monotonic()
        try:
            self.proc.stdin.write((text + '\n').encode('utf-8'))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as e:
            raise AssertionError(f'{self.name}: cannot write {text!r}: {e}\n{self.describe()}')
        self.sent.append((t, text))
        return t

    def alive(self):
        return self.proc.poll() is None

    def stderr_tail(self, n=40):
        return self.tb.read_log(self.proc).splitlines()[-n:]

    def describe(self, tail=60, since=0, stderr_tail=25):
        rc = self.proc.poll()
        state = 'running' if rc is None else f'exited rc={rc}'
        out = [f'--- {self.name} on {self.host} ({state}): {" ".join(self.argv)}',
               '  stdout (@show_list answers and sync markers left out; see the last list below):']
        lines = [(t, x) for t, x in self.lines(since) if not _LIST_NOISE.fullmatch(x)][-tail:]
        out += [f'    {t - self.started:7.2f}s | {text}' for t, text in lines] or ['    (none)']
        last_list = []
        for t, x in reversed(self.lines(since)):
            if _LIST_ROW.fullmatch(x):
                last_list.insert(0, f'    {t - self.started:7.2f}s | {x}')
            elif last_list:
                break
        if last_list:
            out.append('  last @show_list:')
            out += last_list
        sent = [(t, s) for t, s in self.sent if not s.startswith(('@chat zz-sync', '@show_list'))][-tail:]
        out.append('  stdin (sent):')
        out += [f'    {t - self.started:7.2f}s > {s}' for t, s in sent] or ['    (none)']
        err = self.stderr_tail(stderr_tail)
        out.append(f'  stderr (last {len(err)}):')
        out += [f'    ! {line}' for line in err] or ['    (none)']
        return '\n'.join(out)


class Server(NatNode):
    """natchat-server on a public testbed host. store: its --store (default memory; a later
    --store in extra wins too); name: the node's name in failure output; start_timeout:
    seconds to wait for 'server program starts....' (a server joining a database needs more)."""

    def __init__(self, tb, host='srv', extra=(), store='memory', name='server', start_timeout=10.0):
        ip = tb.addr(host)
        super().__init__(tb, host, name, [binary('natchat-server'), '--bind', ip, '--port', SERVER_PORT,
                                          '--alt-port', ALT_PORT, '--store', store, *log_args(), *extra],
                         stdin=False)
        self.ip = ip
        if self.wait(re.escape('server program starts....'), start_timeout) is None:
            raise AssertionError('natchat-server did not start\n' + self.describe())


class Client(NatNode):
    _sync = 0

    def __init__(self, tb, host, cid=None, server_ip=SERVER_IP, extra=()):
        cid = cid or host
        super().__init__(tb, host, cid, [binary('natchat'), '--id', cid, '--server', server_ip,
                                         '--server-port', SERVER_PORT, '--port', CLIENT_PORT,
                                         '--history-file', '/dev/null',
                                         # no known-peers file in the real HOME: every test (and
                                         # every run) starts knowing no peer's key
                                         '--known-peers', 'none', *log_args(), *extra])
        self.cid = cid
        self.chat_times = {}        # peer -> monotonic time of the first @chat to it

    def chat(self, peer, text):
        t = self.send(f'@chat {peer} {text}')
        self.chat_times.setdefault(peer, t)
        return t

    def wait_registered(self, timeout):
        return self.wait(r'\* registered as ' + re.escape(self.cid) + r' \(public (' + IPPORT + r')\); natchat/2(?:[,;] .*)?',
                         timeout)

    def wait_nat(self, timeout):
        return self.wait(r'\* NAT: (.*)', timeout)

    def sync(self, timeout=10.0):
        """Round trip through the command loop; returns the index of the marker line."""
        Client._sync += 1
        ghost = f'zz-sync-{Client._sync}'
        since = self.mark()
        self.send(f'@chat {ghost} x')
        hit = self.wait(re.escape(f'There is no {ghost} in registration list.'), timeout, since=since)
        if hit is None:
            raise AssertionError(f'{self.cid}: no answer to a sync command within {timeout}s\n{self.describe()}')
        return hit[0]

    def show_list(self, timeout=10.0):
        """{'self': (endpoint, rest), peer: (endpoint, path)} from @show_list."""
        since = self.mark()
        self.send('@show_list')
        end = self.sync(timeout)
        out = {}
        for text in self.texts(since)[:end - since]:
            m = re.fullmatch(r'(\S+) (' + IPPORT + r'|\?) (.*)', text)
            if not m:
                continue
            if m.group(1) == self.cid and m.group(3).startswith('(you'):
                out['self'] = (m.group(2), m.group(3))
            else:
                out[m.group(1)] = (m.group(2), m.group(3))
        return out

    def path_lines(self, peer, since=0):
        return [(t, text) for _, t, text, _ in
                self.find_all(r'\* path to ' + re.escape(peer) + r': .*', since)]

    def first_path(self, peer, kinds=('direct', 'private'), after=0.0):
        """Monotonic time of the first '* path to peer: <kind> ...' line read at/after `after`."""
        for t, text in self.path_lines(peer):
            if t >= after and text.split(': ', 1)[1].split(' ')[0] in kinds:
                return t, text
        return None


def start_clients(tb, hosts, extra=(), timeout=20.0):
    """Start one client per host (ID = host name); wait for registration, NAT kind and
    every other client's join line. Raises AssertionError with all output on failure."""
    clients = {h: Client(tb, h, extra=extra) for h in hosts}
    deadline = time.monotonic() + timeout
    problems = []
    for h, c in clients.items():
        if c.wait_registered(max(0.1, deadline - time.monotonic())) is None:
            problems.append(f'{h}: no "* registered as" line')
        if c.wait_nat(max(0.1, deadline - time.monotonic())) is None:
            problems.append(f'{h}: no "* NAT:" line')
        for o in clients:
            if o != h and c.wait(r'\* ' + re.escape(o) + r' joined \(.*', max(0.1, deadline - time.monotonic())) is None:
                problems.append(f'{h}: never saw "* {o} joined"')
    if problems:
        raise AssertionError('clients did not come up: ' + '; '.join(problems) + '\n'
                             + '\n'.join(c.describe() for c in clients.values()))
    return clients


def expected_path(tb, x, y):
    """'private', 'direct', 'probed' or 'relayed' for a pair of testbed hosts: a symmetric NAT
    and a cone one meet by port probing ('direct (probed)'), two symmetric NATs stay relayed."""
    nx, ny = tb.nat_of(x), tb.nat_of(y)
    if nx is not None and nx == ny:
        return 'private'
    kx = tb.nat_kind(nx) if nx else 'public'
    ky = tb.nat_kind(ny) if ny else 'public'
    if kx == 'symmetric' and ky == 'symmetric':
        return 'relayed'
    if 'symmetric' in (kx, ky) and 'public' not in (kx, ky):
        return 'probed'
    return 'direct'


def path_ok(tb, peer_host, expected, path_text):
    """Does a show_list path column match the expected kind for peer_host?"""
    if expected == 'relayed':
        return path_text == 'relayed'
    if expected == 'private':
        return path_text == f'private {tb.addr(peer_host)}:{CLIENT_PORT}'
    if expected == 'probed':
        m = re.fullmatch(r'direct \(probed\) (' + IPPORT + ')', path_text)
        return bool(m) and m.group(1).split(':')[0] == tb.public_ip(peer_host)
    m = re.fullmatch(r'direct (' + IPPORT + ')', path_text)
    return bool(m) and m.group(1).split(':')[0] == tb.public_ip(peer_host)


def live_endpoints(tb, peer, viewer):
    """Public 'ip:port's at which `peer`'s client socket is reachable for `viewer` right now:
    its own address when public, else the public side of its NAT's current conntrack
    entries from peer:CLIENT_PORT to viewer's public IP."""
    nat = tb.nat_of(peer)
    if nat is None:
        return {f'{tb.addr(peer)}:{CLIENT_PORT}'}
    want_private = f'{tb.addr(peer)}:{CLIENT_PORT}'
    want_remote_ip = tb.public_ip(viewer)
    return {m['public'] for m in tb.mappings(nat)
            if m['private'] == want_private and m['remote'].split(':')[0] == want_remote_ip}


class MappingWatcher:
    """Background poll (every `interval` s, bounded) of the NATs' conntrack UDP entries
    between clients (flows to the server left out); records each change with its time.
    Use as a context manager; .timeline(t0) gives printable lines."""

    def __init__(self, tb, nats, interval=0.5, max_polls=2000):
        self.tb, self.nats, self.interval, self.max_polls = tb, list(nats), interval, max_polls
        self.changes = []           # (monotonic time, nat, frozenset of entries)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='mapping-watcher', daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=10)

    def snapshot(self, nat):
        out = set()
        try:
            entries = self.tb.mappings(nat)
        except Exception as e:          # the testbed is closing
            return frozenset({('error', str(e)[:80], '', '')})
        for m in entries:
            if m['remote'].split(':')[0] == SERVER_IP or m['private'].split(':')[0] == SERVER_IP:
                continue
            state = 'UNREPLIED' if 'UNREPLIED' in m['flags'] else 'replied'
            out.add((m['private'], m['public'], m['remote'], state))
        return frozenset(out)

    def _run(self):
        last = {}
        for _ in range(self.max_polls):
            for nat in self.nats:
                snap = self.snapshot(nat)
                if last.get(nat) != snap:
                    last[nat] = snap
                    self.changes.append((time.monotonic(), nat, snap))
            if self._stop.wait(self.interval):
                break

    def timeline(self, t0):
        lines = []
        for t, nat, snap in self.changes:
            flows = '; '.join(f'{p} -> {pub} <-> {r} [{st}]' for p, pub, r, st in sorted(snap)) or '(none)'
            lines.append(f'    {t - t0:+7.2f}s NAT {nat}: {flows}')
        return lines


def shown_counts(clients, sender, text):
    """{client: number of lines showing `text`} -- 'From sender [text]' for the addressee
    check, any line containing text for everyone else (a leak)."""
    out = {}
    for h, c in clients.items():
        if h == sender:
            continue
        exact = c.count(re.escape(f'From {sender} [{text}]'))
        anywhere = c.count(re.escape(text), search=True)
        out[h] = (exact, anywhere)
    return out


def wait_shown(client, sender, text, timeout, since=0):
    return client.wait(re.escape(f'From {sender} [{text}]'), timeout, since=since)


def wait_delivered(client, peer, timeout, since=0):
    return client.wait(re.escape(f'* delivered to {peer}'), timeout, since=since)


def median(xs):
    xs = sorted(xs)
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def evidence(*nodes, since=0, tail=80):
    return '\n'.join(n.describe(tail=tail, since=since) for n in nodes)


def skip_if_no(testcase, *tools):
    import shutil
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        msg = f'needs {", ".join(missing)} (apt-get install ...): skipped'
        print(msg, file=sys.stderr)
        raise unittest.SkipTest(msg)
