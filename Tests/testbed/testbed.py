#!/usr/bin/env python3
"""natchat NAT testbed: real Linux NATs built from network namespaces.

Stdlib only (Python 3.11).  Needs root, iproute2, iptables and conntrack.

Topology (all of it inside namespaces this run creates; nothing touches the
root namespace):

    public segment 203.0.113.0/24 = a bridge inside the "<prefix>-inet" namespace
      |-- public hosts (default: srv 203.0.113.10, pub 203.0.113.20), no NAT
      |-- NAT routers: WAN interface on the public segment (203.0.113.101, .102, ...)
              LAN bridge inside the router namespace, gateway = .1 of the LAN /24
              |-- hosts behind that NAT (default route via the gateway)

NAT kinds:
    cone       port-restricted cone: MASQUERADE (ports preserved when free) plus a
               WAN firewall (INPUT and FORWARD from WAN: ESTABLISHED,RELATED only)
    symmetric  MASQUERADE --random-fully, same firewall
    cone_open  MASQUERADE, FORWARD firewall but *no* INPUT drop: stray inbound
               packets create conntrack entries that can make the NAT pick
               another public port for a later outbound flow

NAT options (a NAT spec given as a dict):
    'miniupnpd': True or a subset of ('pcp', 'natpmp', 'upnp')
               run Debian's miniupnpd (miniupnpd-iptables 2.3.1) in the router:
               a real UPnP IGD / NAT-PMP / PCP gateway on the LAN bridge, serving
               only the protocols listed (tb.miniupnpd_rules(nat) lists its
               iptables DNAT rules)
    'upstream': 'G'
               a carrier-grade NAT: this NAT's WAN sits on NAT G's LAN (the
               shared address space 100.64.0.0/10 by default) instead of on the
               public segment; hosts behind it go through both NATs

Usage:
    with Testbed() as tb:                       # default: A,B cone; C,D symmetric
        p = tb.popen('srv', [PYTHON, PROBE, 'server', '--port', '3478'])
        r = tb.run('a1', ['ip', 'addr'])
        tb.nat_public_ip('A'); tb.set_loss('A', 0.2); tb.flush_conntrack('A')

CLI:
    testbed.py --selftest        run Tests/testbed/test_testbed.py
    testbed.py --cleanup-stale   remove namespaces left by crashed runs
    testbed.py --hold SECONDS    build a small testbed, print its prefix, sleep
                                 (used by the self-test to simulate a crash)
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PROBE = os.path.join(HERE, 'udp_probe.py')
PYTHON = sys.executable or '/usr/bin/python3'

MARKER_DIR = '/run/natchat-testbed'
PREFIX_RE = re.compile(r'^nt[0-9a-f]{4}$')
NS_RE = re.compile(r'^(nt[0-9a-f]{4})-')
NAME_RE = re.compile(r'^[A-Za-z0-9_]{1,20}$')
NAT_KINDS = ('cone', 'symmetric', 'cone_open')
PUBLIC_NET = ipaddress.ip_network('203.0.113.0/24')
LOSS_CHAIN = 'NATCHAT-LOSS'
SKIP_MESSAGE = 'NAT testbed needs root: skipped'

DEFAULT_NATS = {'A': 'cone', 'B': 'cone', 'C': 'symmetric', 'D': 'symmetric'}
DEFAULT_HOSTS = {
    'a1': ('A', '192.168.1.2'),
    'a2': ('A', '192.168.1.3'),
    'b1': ('B', '192.168.1.2'),   # same private address as a1, on purpose
    'c1': ('C', '10.0.0.2'),
    'd1': ('D', '10.0.0.2'),
}
DEFAULT_PUBLIC_HOSTS = {'srv': '203.0.113.10', 'pub': '203.0.113.20'}

CMD_TIMEOUT = 20.0          # seconds, any single setup/teardown command
REQUIRED_TOOLS = ('ip', 'iptables', 'iptables-restore', 'conntrack', 'sysctl')
MINIUPNPD = '/usr/sbin/miniupnpd'
MAPPING_PROTOCOLS = ('pcp', 'natpmp', 'upnp')
CGN_NET = ipaddress.ip_network('100.64.0.0/10')
MINIUPNPD_HTTP_PORT = 5000     # the IGD's description and SOAP port on the LAN address


class TestbedError(RuntimeError):
    pass


# --------------------------------------------------------------------------- helpers

def is_root() -> bool:
    return hasattr(os, 'geteuid') and os.geteuid() == 0


def require_root() -> None:
    """Skip the calling test loudly unless we can build namespaces."""
    if not is_root():
        print(SKIP_MESSAGE, file=sys.stderr)
        raise unittest.SkipTest(SKIP_MESSAGE)
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        msg = f'NAT testbed needs {", ".join(missing)} (apt-get install iproute2 iptables conntrack): skipped'
        print(msg, file=sys.stderr)
        raise unittest.SkipTest(msg)


def _sh(argv, *, input=None, timeout=CMD_TIMEOUT, check=True):
    try:
        r = subprocess.run(argv, input=input, capture_output=True, text=True,
                           timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise TestbedError(f'timeout after {timeout}s: {" ".join(argv)}') from e
    if check and r.returncode != 0:
        raise TestbedError(f'command failed ({r.returncode}): {" ".join(argv)}\n{r.stderr.strip()}')
    return r


def _proc_starttime(pid: int):
    """Start time (clock ticks since boot) of pid, or None if it is not running."""
    try:
        with open(f'/proc/{pid}/stat', 'rb') as f:
            data = f.read().decode('ascii', 'replace')
    except OSError:
        return None
    try:
        fields = data[data.rindex(')') + 2:].split()
        if fields[0] == 'Z':
            return None
        return int(fields[19])
    except (ValueError, IndexError):
        return None


def _pid_alive(pid: int, starttime) -> bool:
    st = _proc_starttime(pid)
    if st is None:
        return False
    return starttime is None or st == starttime


def list_netns() -> list[str]:
    r = _sh(['ip', 'netns', 'list'], check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def _netns_pids(ns: str) -> list[int]:
    r = _sh(['ip', 'netns', 'pids', ns], check=False, timeout=10)
    out = []
    for tok in r.stdout.split():
        if tok.isdigit():
            out.append(int(tok))
    return out


def _kill_ns_processes(ns: str) -> None:
    """Kill (by PID) every process still inside namespace ns. Bounded."""
    me = os.getpid()
    for attempt in range(3):
        pids = [p for p in _netns_pids(ns) if p != me]
        if not pids:
            return
        sig = signal.SIGTERM if attempt == 0 else signal.SIGKILL
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if not any(_proc_starttime(p) is not None for p in pids):
                break
            time.sleep(0.02)


def _delete_ns(ns: str) -> None:
    _kill_ns_processes(ns)
    _sh(['ip', 'netns', 'del', ns], check=False, timeout=10)


def cleanup_stale(verbose: bool = True) -> list[str]:
    """Delete namespaces named nt????-* whose creating process is dead.

    The creating PID (and its start time) is in /run/natchat-testbed/<prefix>.json.
    A matching namespace without a marker is also stale (markers are written
    before the first namespace is created)."""
    removed = []
    by_prefix: dict[str, list[str]] = {}
    for ns in list_netns():
        m = NS_RE.match(ns)
        if m:
            by_prefix.setdefault(m.group(1), []).append(ns)
    markers = set()
    if os.path.isdir(MARKER_DIR):
        for fn in os.listdir(MARKER_DIR):
            if fn.endswith('.json') and PREFIX_RE.match(fn[:-5]):
                markers.add(fn[:-5])
    for prefix in sorted(set(by_prefix) | markers):
        info = _read_marker(prefix)
        if info is not None and _pid_alive(int(info.get('pid', -1)), info.get('starttime')):
            continue
        for ns in sorted(by_prefix.get(prefix, [])):
            _delete_ns(ns)
            removed.append(ns)
            if verbose:
                print(f'removed stale namespace {ns}')
        try:
            os.unlink(os.path.join(MARKER_DIR, prefix + '.json'))
        except OSError:
            pass
        tmp = tempfile.gettempdir()
        for d in os.listdir(tmp):           # log directories of that dead run
            if d.startswith(f'natchat-{prefix}-') and os.path.isdir(os.path.join(tmp, d)):
                shutil.rmtree(os.path.join(tmp, d), ignore_errors=True)
                if verbose:
                    print(f'removed stale log directory {os.path.join(tmp, d)}')
    return removed


def _read_marker(prefix: str):
    try:
        with open(os.path.join(MARKER_DIR, prefix + '.json')) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class LineReader:
    """Read lines from a Popen's stdout with timeouts (never blocks unbounded)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buf = b''
        self.eof = False
        self.lines: list[str] = []     # every line read so far

    def readline(self, timeout: float):
        deadline = time.monotonic() + timeout
        while b'\n' not in self.buf and not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self.fd], [], [], left)
            if not r:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                self.eof = True
            self.buf += chunk
        if b'\n' in self.buf:
            line, self.buf = self.buf.split(b'\n', 1)
        elif self.buf:
            line, self.buf = self.buf, b''
        else:
            return None
        s = line.decode('utf-8', 'replace')
        self.lines.append(s)
        return s

    def read_json(self, timeout: float):
        """Next line that parses as a JSON object, or None on timeout/EOF."""
        deadline = time.monotonic() + timeout
        for _ in range(100000):
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            line = self.readline(left)
            if line is None:
                return None
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                return obj
        return None

    def wait_for(self, pred, timeout: float):
        """First JSON object satisfying pred, or None."""
        deadline = time.monotonic() + timeout
        for _ in range(100000):
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            obj = self.read_json(left)
            if obj is None:
                return None
            if pred(obj):
                return obj
        return None

    def read_all_json(self, timeout: float) -> list[dict]:
        """Every remaining JSON line until EOF (or timeout)."""
        out = []
        deadline = time.monotonic() + timeout
        for _ in range(1000000):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            obj = self.read_json(left)
            if obj is None:
                break
            out.append(obj)
        return out


# --------------------------------------------------------------------------- registry / signals

_LIVE: set = set()              # strong refs: a dropped Testbed is still cleaned up at exit
_SIGNALS_INSTALLED = False
_PREV_HANDLERS: dict = {}
_PENDING_SIGNALS: list = []      # signals that arrived while a close() was running


def _cleanup_all_live():
    for tb in list(_LIVE):
        try:
            tb.close()
        except Exception as e:  # pragma: no cover - best effort at exit
            print(f'testbed cleanup error: {e}', file=sys.stderr)


def _on_signal(signum, frame):
    if any(tb._closing for tb in list(_LIVE)):
        # a close() is running in the interrupted frame: let it finish, it re-delivers
        _PENDING_SIGNALS.append(signum)
        return
    _cleanup_all_live()
    _redeliver(signum, frame)


def _redeliver(signum, frame=None):
    prev = _PREV_HANDLERS.get(signum, signal.SIG_DFL)
    if callable(prev):
        prev(signum, frame)
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_signal_handlers():
    global _SIGNALS_INSTALLED
    if _SIGNALS_INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            prev = signal.getsignal(sig)
            if prev is signal.SIG_IGN:
                continue
            _PREV_HANDLERS[sig] = prev if prev is not None else signal.SIG_DFL
            signal.signal(sig, _on_signal)
        except (ValueError, OSError):
            pass
    _SIGNALS_INSTALLED = True


atexit.register(_cleanup_all_live)


# --------------------------------------------------------------------------- the testbed

class Testbed:
    """A set of namespaces forming NATs, hosts and a public segment.

    nats:         {'A': 'cone'} or {'A': {'kind': 'cone', 'wan': '203.0.113.101',
                                          'lan': '192.168.1.0/24'}}
    hosts:        {'a1': ('A', '192.168.1.2')}  host behind NAT A
    public_hosts: {'srv': '203.0.113.10'}       host on the public segment, no NAT
    """

    def __init__(self, nats=None, hosts=None, public_hosts=None, *, prefix=None,
                 udp_timeout=None, keep_logs=None):
        if nats is None and hosts is None:
            nats, hosts = dict(DEFAULT_NATS), dict(DEFAULT_HOSTS)
        self.nat_spec = self._parse_nats(nats or {})
        self.host_spec = self._parse_hosts(hosts or {})
        if public_hosts is None:
            public_hosts = dict(DEFAULT_PUBLIC_HOSTS)
        self.public_spec = {k: str(ipaddress.ip_address(v)) for k, v in public_hosts.items()}
        self._requested_prefix = prefix
        self._udp_timeout = udp_timeout
        if keep_logs is None:
            keep_logs = os.environ.get('NATCHAT_TESTBED_KEEP_LOGS', '') not in ('', '0')
        self.keep_logs = keep_logs
        self.logdir = None
        self._nlog = 0
        self._validate()
        self.prefix = None
        self._namespaces: list[str] = []      # in creation order
        self._procs: list[subprocess.Popen] = []
        self._closed = False
        self._closing = False
        self._started = False
        self._lock = threading.RLock()

    # ---- spec parsing

    @staticmethod
    def _parse_nats(nats):
        out = {}
        for i, (name, spec) in enumerate(nats.items()):
            if not NAME_RE.match(name):
                raise ValueError(f'bad NAT name {name!r}')
            if isinstance(spec, str):
                spec = {'kind': spec}
            spec = dict(spec)
            if spec.get('kind') not in NAT_KINDS:
                raise ValueError(f'NAT {name}: kind must be one of {NAT_KINDS}, got {spec.get("kind")!r}')
            if 'upstream' not in spec:
                spec.setdefault('wan', str(PUBLIC_NET.network_address + 101 + i))
            upnp = spec.get('miniupnpd')
            if upnp:
                protocols = MAPPING_PROTOCOLS if upnp is True else tuple(upnp)
                bad = [x for x in protocols if x not in MAPPING_PROTOCOLS]
                if bad or not protocols:
                    raise ValueError(f'NAT {name}: miniupnpd protocols must be a non-empty subset of {MAPPING_PROTOCOLS}')
                spec['miniupnpd'] = tuple(x for x in MAPPING_PROTOCOLS if x in protocols)
            out[name] = spec
        return out

    @staticmethod
    def _parse_hosts(hosts):
        out = {}
        for name, (nat, addr) in hosts.items():
            if not NAME_RE.match(name):
                raise ValueError(f'bad host name {name!r}')
            out[name] = (nat, str(ipaddress.ip_address(addr)))
        return out

    def _validate(self):
        names = list(self.nat_spec) + list(self.host_spec) + list(self.public_spec)
        if len(set(names)) != len(names):
            raise ValueError('NAT, host and public host names must be distinct')
        if 'inet' in names:
            raise ValueError("'inet' is reserved")
        used_public = {}
        for name, ip in list(self.public_spec.items()) + [(n, s['wan']) for n, s in self.nat_spec.items()
                                                           if 'upstream' not in s]:
            a = ipaddress.ip_address(ip)
            if a not in PUBLIC_NET or a in (PUBLIC_NET.network_address, PUBLIC_NET.broadcast_address):
                raise ValueError(f'{name}: public address {ip} not a host in {PUBLIC_NET}')
            if ip in used_public:
                raise ValueError(f'{name} and {used_public[ip]} share public address {ip}')
            used_public[ip] = name
        for nat, spec in self.nat_spec.items():
            members = [(h, ip) for h, (n, ip) in self.host_spec.items() if n == nat]
            if 'lan' in spec:
                net = ipaddress.ip_network(spec['lan'], strict=False)
            elif members:
                net = ipaddress.ip_network(members[0][1] + '/24', strict=False)
            elif any(s.get('upstream') == nat for s in self.nat_spec.values()):
                # a carrier's NAT: its "LAN" is the shared address space of RFC 6598
                net = ipaddress.ip_network(f'100.64.{list(self.nat_spec).index(nat)}.0/24')
            else:
                net = ipaddress.ip_network(f'10.{200 + list(self.nat_spec).index(nat)}.0.0/24')
            if not (net.is_private or net.subnet_of(CGN_NET)) or net.overlaps(PUBLIC_NET):
                raise ValueError(f'NAT {nat}: LAN {net} must be a private range')
            spec['lan'] = str(net)
            spec['gw'] = str(spec.get('gw') or next(net.hosts()))
            seen = {spec['gw']: 'gateway'}
            for h, ip in members:
                if ipaddress.ip_address(ip) not in net:
                    raise ValueError(f'host {h} {ip} not in NAT {nat} LAN {net}')
                if ip in seen:
                    raise ValueError(f'host {h} {ip} collides with {seen[ip]} behind NAT {nat}')
                seen[ip] = h
        for h, (nat, ip) in self.host_spec.items():
            if nat not in self.nat_spec:
                raise ValueError(f'host {h}: unknown NAT {nat!r}')
        for k, (nat, spec) in enumerate(self.nat_spec.items()):
            up = spec.get('upstream')
            if up is None:
                continue
            if up not in self.nat_spec or up == nat or 'upstream' in self.nat_spec[up]:
                raise ValueError(f'NAT {nat}: upstream must be another NAT that sits on the public segment, got {up!r}')
            upnet = ipaddress.ip_network(self.nat_spec[up]['lan'])
            spec.setdefault('wan', str(upnet.network_address + 100 + k))
            if ipaddress.ip_address(spec['wan']) not in upnet or spec['wan'] == self.nat_spec[up]['gw']:
                raise ValueError(f'NAT {nat}: WAN {spec["wan"]} not a free host of upstream {up} LAN {upnet}')
            if any(ip == spec['wan'] for (n, ip) in self.host_spec.values() if n == up):
                raise ValueError(f'NAT {nat}: WAN {spec["wan"]} collides with a host behind {up}')

    # ---- lifecycle

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def start(self):
        if self._started:
            return self
        if not is_root():
            raise TestbedError(SKIP_MESSAGE)
        self._started = True
        _LIVE.add(self)
        _install_signal_handlers()
        try:
            self._reserve_prefix()
            self.logdir = tempfile.mkdtemp(prefix=f'natchat-{self.prefix}-')
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _reserve_prefix(self):
        os.makedirs(MARKER_DIR, exist_ok=True)
        existing = {NS_RE.match(n).group(1) for n in list_netns() if NS_RE.match(n)}
        info = {'pid': os.getpid(), 'starttime': _proc_starttime(os.getpid()),
                'created': time.time(), 'argv': sys.argv[:4]}
        for attempt in range(50):
            p = self._requested_prefix if (self._requested_prefix and attempt == 0) else 'nt' + secrets.token_hex(2)
            if not PREFIX_RE.match(p):
                raise ValueError(f'prefix must match {PREFIX_RE.pattern}')
            if p in existing:
                continue
            path = os.path.join(MARKER_DIR, p + '.json')
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            with os.fdopen(fd, 'w') as f:
                json.dump(info, f)
            self.prefix = p
            return
        raise TestbedError('could not reserve a unique testbed prefix')

    def close(self):
        """Kill every process, delete every namespace, remove the marker. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._closing = True
        try:
            self._close()
        finally:
            self._closing = False
            _LIVE.discard(self)
        if _PENDING_SIGNALS and not any(tb._closing for tb in list(_LIVE)):
            sig = _PENDING_SIGNALS.pop(0)
            _PENDING_SIGNALS.clear()
            _cleanup_all_live()
            _redeliver(sig)

    def _close(self):
        errors = []
        for proc in self._procs:
            try:
                self._stop_proc(proc)
            except Exception as e:
                errors.append(str(e))
        # hosts first, then routers, then the public segment
        for ns in reversed(self._namespaces):
            try:
                _delete_ns(ns)
            except Exception as e:
                errors.append(f'{ns}: {e}')
        if self.prefix:
            left = [n for n in list_netns() if n.startswith(self.prefix + '-')]
            for ns in left:   # bounded: one more attempt each
                _delete_ns(ns)
            left = [n for n in list_netns() if n.startswith(self.prefix + '-')]
            if left:
                errors.append(f'namespaces left behind: {left}')
            else:
                try:
                    os.unlink(os.path.join(MARKER_DIR, self.prefix + '.json'))
                except OSError:
                    pass
        _LIVE.discard(self)
        if self.logdir and os.path.isdir(self.logdir):
            if self.keep_logs:
                print(f'testbed logs kept in {self.logdir}', file=sys.stderr)
            else:
                shutil.rmtree(self.logdir, ignore_errors=True)
        if errors:
            print('testbed cleanup problems: ' + '; '.join(errors), file=sys.stderr)

    @staticmethod
    def _stop_proc(proc: subprocess.Popen, grace: float = 1.0, close_streams: bool = True):
        if proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
                try:
                    os.killpg(proc.pid, sig)      # group id == pid (start_new_session)
                except OSError:
                    try:
                        os.kill(proc.pid, sig)
                    except OSError:
                        pass
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if not close_streams:
            return
        for stream in (proc.stdout, proc.stderr, proc.stdin):
            try:
                if stream:
                    stream.close()
            except OSError:
                pass

    # ---- building

    def _ns_name(self, kind: str, name: str = '') -> str:
        if kind == 'inet':
            return f'{self.prefix}-inet'
        if kind == 'nat':
            return f'{self.prefix}-nat-{name}'
        return f'{self.prefix}-h-{name}'

    def _ifname(self, tag: str) -> str:
        n = f'{self.prefix}{tag}'
        assert len(n) <= 15, n
        return n

    def _add_ns(self, ns: str):
        self._namespaces.append(ns)
        _sh(['ip', 'netns', 'add', ns])

    def _ip_batch(self, ns: str, cmds: list[str]):
        _sh(['ip', '-n', ns, '-batch', '-'], input='\n'.join(cmds) + '\n')

    def _sysctl(self, ns: str, settings: dict, ignore_missing=True):
        argv = ['ip', 'netns', 'exec', ns, 'sysctl', '-q']
        if ignore_missing:
            argv.append('-e')
        argv += ['-w'] + [f'{k}={v}' for k, v in settings.items()]
        _sh(argv)

    def _build(self):
        p = self.prefix
        wan = self._ifname('wan')
        br = self._ifname('br')
        lan = self._ifname('lan')
        eth = self._ifname('eth')
        base_sysctl = {'net.ipv6.conf.default.disable_ipv6': 1,
                       'net.ipv6.conf.all.disable_ipv6': 1}

        inet = self._ns_name('inet')
        self._add_ns(inet)
        self._sysctl(inet, {**base_sysctl, 'net.bridge.bridge-nf-call-iptables': 0})
        self._ip_batch(inet, ['link set lo up', f'link add {br} type bridge',
                              f'link set {br} up'])
        k = 0
        attached = [(h, self._ns_name('host', h), ip) for h, ip in self.public_spec.items()]
        attached += [(n, self._ns_name('nat', n), s['wan']) for n, s in self.nat_spec.items() if 'upstream' not in s]
        for name, ns, ip in attached:
            self._add_ns(ns)
            sc = dict(base_sysctl)
            if name in self.nat_spec:
                sc.update({'net.ipv4.ip_forward': 1, 'net.bridge.bridge-nf-call-iptables': 0})
                if self._udp_timeout is not None:
                    sc.update({'net.netfilter.nf_conntrack_udp_timeout': int(self._udp_timeout),
                               'net.netfilter.nf_conntrack_udp_timeout_stream': int(self._udp_timeout)})
            self._sysctl(ns, sc)
            port = self._ifname(f'i{k}')
            k += 1
            self._ip_batch(inet, [f'link add {port} type veth peer name {wan} netns {ns}',
                                  f'link set {port} master {br}', f'link set {port} up'])
            self._ip_batch(ns, ['link set lo up', f'addr add {ip}/{PUBLIC_NET.prefixlen} dev {wan}',
                                f'link set {wan} up'])
        def add_lan_bridge(nat, spec):
            net = ipaddress.ip_network(spec['lan'])
            self._ip_batch(self._ns_name('nat', nat), [f'link add {lan} type bridge', f'link set {lan} up',
                                                       f'addr add {spec["gw"]}/{net.prefixlen} dev {lan}'])
        for nat, spec in self.nat_spec.items():
            if 'upstream' not in spec:
                add_lan_bridge(nat, spec)
        # carrier-grade NATs: the downstream router's WAN on the upstream's LAN bridge
        for u, (nat, spec) in enumerate((n, s) for n, s in self.nat_spec.items() if 'upstream' in s):
            ns = self._ns_name('nat', nat)
            up = self.nat_spec[spec['upstream']]
            upns = self._ns_name('nat', spec['upstream'])
            upnet = ipaddress.ip_network(up['lan'])
            self._add_ns(ns)
            sc = dict(base_sysctl)
            sc.update({'net.ipv4.ip_forward': 1, 'net.bridge.bridge-nf-call-iptables': 0})
            if self._udp_timeout is not None:
                sc.update({'net.netfilter.nf_conntrack_udp_timeout': int(self._udp_timeout),
                           'net.netfilter.nf_conntrack_udp_timeout_stream': int(self._udp_timeout)})
            self._sysctl(ns, sc)
            port = self._ifname(f'u{u}')
            self._ip_batch(upns, [f'link add {port} type veth peer name {wan} netns {ns}',
                                  f'link set {port} master {lan}', f'link set {port} up'])
            self._ip_batch(ns, ['link set lo up', f'addr add {spec["wan"]}/{upnet.prefixlen} dev {wan}',
                                f'link set {wan} up', f'route add default via {up["gw"]}'])
            add_lan_bridge(nat, spec)
        for nat, spec in self.nat_spec.items():
            rns = self._ns_name('nat', nat)
            net = ipaddress.ip_network(spec['lan'])
            j = 0
            for h, (hn, ip) in self.host_spec.items():
                if hn != nat:
                    continue
                hns = self._ns_name('host', h)
                self._add_ns(hns)
                self._sysctl(hns, base_sysctl)
                port = self._ifname(f'h{j}')
                j += 1
                self._ip_batch(rns, [f'link add {port} type veth peer name {eth} netns {hns}',
                                     f'link set {port} master {lan}', f'link set {port} up'])
                self._ip_batch(hns, ['link set lo up', f'addr add {ip}/{net.prefixlen} dev {eth}',
                                     f'link set {eth} up', f'route add default via {spec["gw"]}'])
            self._install_firewall(nat)
        for nat, spec in self.nat_spec.items():
            if spec.get('miniupnpd'):
                self._start_miniupnpd(nat)

    def _install_firewall(self, nat: str):
        kind = self.nat_spec[nat]['kind']
        wan = self._ifname('wan')
        upnp = self.nat_spec[nat].get('miniupnpd') or ()
        rules = ['*filter', ':INPUT ACCEPT [0:0]', ':FORWARD ACCEPT [0:0]', ':OUTPUT ACCEPT [0:0]',
                 f':{LOSS_CHAIN} - [0:0]', f'-A FORWARD -j {LOSS_CHAIN}']
        if upnp:
            # miniupnpd's chains (what its iptables_init.sh makes, in this namespace only):
            # inbound to a mapped port is accepted before the WAN drop below.
            rules += [':MINIUPNPD - [0:0]', f'-A FORWARD -i {wan} ! -o {wan} -j MINIUPNPD']
            # Serve only the protocols asked for. PCP and NAT-PMP share port 5351 and the
            # daemon has no switch between them: NAT-PMP requests are 2 or 12 bytes (IP
            # length 30 or 40), PCP ones at least 24 (IP length >= 52).
            lan = self._ifname('lan')
            if 'pcp' not in upnp:
                rules.append(f'-A INPUT -i {lan} -p udp --dport 5351 -m length --length 52:65535 -j DROP')
            if 'natpmp' not in upnp:
                rules.append(f'-A INPUT -i {lan} -p udp --dport 5351 -m length --length 0:51 -j DROP')
        if kind in ('cone', 'symmetric'):
            rules += [f'-A INPUT -i {wan} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT',
                      f'-A INPUT -i {wan} -j DROP']
        rules += [f'-A FORWARD -i {wan} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT',
                  f'-A FORWARD -i {wan} -j DROP', 'COMMIT',
                  '*nat', ':PREROUTING ACCEPT [0:0]', ':INPUT ACCEPT [0:0]', ':OUTPUT ACCEPT [0:0]',
                  ':POSTROUTING ACCEPT [0:0]']
        if upnp:
            # DNAT of mapped ports, and the SNAT that keeps a mapped port's outbound source
            # port (so that even the symmetric NAT sends from the mapped port).
            rules += [':MINIUPNPD - [0:0]', ':MINIUPNPD-POSTROUTING - [0:0]', f'-A PREROUTING -i {wan} -j MINIUPNPD',
                      f'-A POSTROUTING -o {wan} -j MINIUPNPD-POSTROUTING']
        rules += [f'-A POSTROUTING -o {wan} -j MASQUERADE' + (' --random-fully' if kind == 'symmetric' else ''),
                  'COMMIT']
        _sh(['ip', 'netns', 'exec', self._ns_name('nat', nat), self._iptables(nat) + '-restore'],
            input='\n'.join(rules) + '\n')

    def _iptables(self, nat: str) -> str:
        """The router's iptables: Debian's miniupnpd-iptables writes its rules through
        libiptc (the legacy x_tables), so a router that runs it keeps all of its rules
        there (a DROP in the nf_tables FORWARD chain would still drop what miniupnpd's
        legacy chain accepts); other routers use the default (nf_tables) iptables."""
        return 'iptables-legacy' if self.nat_spec[nat].get('miniupnpd') else 'iptables'

    # ---- public API

    def _check_live(self):
        if not self._started or self._closed:
            raise TestbedError('testbed is not running')

    def ns(self, name: str) -> str:
        """Real namespace name of a host, public host, NAT router, or 'inet'."""
        if name == 'inet':
            return self._ns_name('inet')
        if name in self.nat_spec:
            return self._ns_name('nat', name)
        if name in self.host_spec or name in self.public_spec:
            return self._ns_name('host', name)
        raise KeyError(f'unknown testbed node {name!r}')

    @property
    def namespaces(self) -> list[str]:
        return list(self._namespaces)

    @property
    def nats(self) -> dict:
        return {n: s['kind'] for n, s in self.nat_spec.items()}

    @property
    def hosts(self) -> dict:
        return dict(self.host_spec)

    @property
    def public_hosts(self) -> dict:
        return dict(self.public_spec)

    def addr(self, host: str) -> str:
        """Address of a host as configured (private for NATed hosts, WAN for a NAT)."""
        if host in self.host_spec:
            return self.host_spec[host][1]
        if host in self.public_spec:
            return self.public_spec[host]
        if host in self.nat_spec:
            return self.nat_spec[host]['wan']
        raise KeyError(host)

    def nat_of(self, host: str):
        """NAT name a host sits behind, or None for a public host."""
        return self.host_spec[host][0] if host in self.host_spec else None

    def nat_kind(self, nat: str) -> str:
        return self.nat_spec[nat]['kind']

    def nat_public_ip(self, nat: str) -> str:
        return self.nat_spec[nat]['wan']

    def public_ip(self, host: str) -> str:
        """Address the public side sees for host: its NAT's WAN address, or its own."""
        nat = self.nat_of(host)
        while nat and 'upstream' in self.nat_spec[nat]:
            nat = self.nat_spec[nat]['upstream']
        return self.nat_public_ip(nat) if nat else self.addr(host)

    def upstream_of(self, nat: str):
        """The NAT a carrier-grade NAT's WAN sits behind, or None."""
        return self.nat_spec[nat].get('upstream')

    # ---- miniupnpd (UPnP IGD, NAT-PMP, PCP) in a router

    def _start_miniupnpd(self, nat: str, timeout: float = 10.0):
        if not os.access(MINIUPNPD, os.X_OK):
            raise TestbedError(f'{MINIUPNPD} missing: apt-get install miniupnpd-iptables (bin/test does, as root)')
        spec = self.nat_spec[nat]
        protocols = spec['miniupnpd']
        lan_if, wan_if = self._ifname('lan'), self._ifname('wan')
        net = ipaddress.ip_network(spec['lan'])
        conf = os.path.join(self.logdir, f'miniupnpd-{nat}.conf')
        with open(conf, 'w') as f:
            f.write('\n'.join([
                f'ext_ifname={wan_if}',
                # the WAN address (behind a carrier NAT: the CGN-side 100.64.x.y one)
                f'ext_ip={spec["wan"]}',
                f'listening_ip={lan_if}',
                f'http_port={MINIUPNPD_HTTP_PORT}',
                f'enable_upnp={"yes" if "upnp" in protocols else "no"}',
                f'enable_natpmp={"yes" if ("pcp" in protocols or "natpmp" in protocols) else "no"}',
                'secure_mode=yes',
                'system_uptime=no',
                'notify_interval=60',
                'clean_ruleset_interval=600',
                'min_lifetime=2',
                'max_lifetime=86400',
                f'uuid={uuid_for(self.prefix, nat)}',
                f'lease_file={os.path.join(self.logdir, f"miniupnpd-{nat}.leases")}',
                'upnp_forward_chain=MINIUPNPD',
                'upnp_nat_chain=MINIUPNPD',
                'upnp_nat_postrouting_chain=MINIUPNPD-POSTROUTING',
                f'allow 1024-65535 {net} 1024-65535',
                'deny 0-65535 0.0.0.0/0 0-65535',
            ]) + '\n')
        pidfile = os.path.join(self.logdir, f'miniupnpd-{nat}.pid')
        proc = self.popen(nat, [self._miniupnpd_binary(), '-f', conf, '-d', '-P', pidfile])
        spec['miniupnpd_proc'] = proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:     # bounded: ready when its sockets are bound
            if proc.poll() is not None:
                raise TestbedError(f'miniupnpd in {nat} exited ({proc.returncode}): {self.read_log(proc)[-2000:]}')
            r = _sh(['ip', 'netns', 'exec', self._ns_name('nat', nat), 'ss', '-Hlntu'], check=False)
            want = [f':{MINIUPNPD_HTTP_PORT}'] if 'upnp' in protocols else []
            if 'pcp' in protocols or 'natpmp' in protocols:
                want.append(':5351')
            if all(w in r.stdout for w in want):
                return proc
            time.sleep(0.1)
        raise TestbedError(f'miniupnpd in {nat} not ready within {timeout}s: {self.read_log(proc)[-2000:]}')

    # miniupnpd 2.3.1 refuses to map when its external address is "reserved"
    # (getifaddr.c addr_is_reserved): that table holds the documentation ranges
    # 198.51.100.0/24 and 203.0.113.0/24 and the shared space 100.64.0.0/10, which are
    # exactly the addresses a testbed may use. The testbed runs a copy of Debian's binary
    # in which those three entries of the table ({address, 32 - prefix} as two
    # little-endian uint32) are overwritten with the 240.0.0.0/4 entry (already in the
    # table, so nothing else changes); each pattern must occur exactly once, else the
    # copy is refused. The daemon is otherwise Debian's, byte for byte.
    _RESERVED_PATCH = ((0xC6336400, 8), (0xCB007100, 8), (0x64400000, 22))
    _RESERVED_KEEP = (0xF0000000, 28)

    def _miniupnpd_binary(self) -> str:
        import struct
        path = os.path.join(self.logdir, 'miniupnpd')
        if os.path.exists(path):
            return path
        with open(MINIUPNPD, 'rb') as f:
            data = bytearray(f.read())
        keep = struct.pack('<II', *self._RESERVED_KEEP)
        if data.count(keep) != 1:
            raise TestbedError(f'{MINIUPNPD}: its reserved-address table is not the one of 2.3.1; cannot adapt it')
        for entry in self._RESERVED_PATCH:
            pattern = struct.pack('<II', *entry)
            if data.count(pattern) != 1:
                raise TestbedError(f'{MINIUPNPD}: reserved entry {entry[0]:#x}/{32 - entry[1]} found '
                                   f'{data.count(pattern)} times; cannot adapt it')
            i = data.index(pattern)
            data[i:i + 8] = keep
        with open(path, 'wb') as f:
            f.write(data)
        os.chmod(path, 0o755)
        return path

    def restart_miniupnpd(self, nat: str):
        """A gateway reboot for port mapping: stop the router's miniupnpd (SIGTERM, by PID)
        and start it again with the same config. Its epoch starts again from 0; the rules it
        saved in its lease file come back."""
        proc = self.nat_spec[nat].get('miniupnpd_proc')
        if proc is None:
            raise KeyError(f'NAT {nat} runs no miniupnpd')
        self._stop_proc(proc)
        return self._start_miniupnpd(nat)

    def miniupnpd_log(self, nat: str) -> str:
        """What the router's miniupnpd logged so far."""
        proc = self.nat_spec[nat].get('miniupnpd_proc')
        return self.read_log(proc) if proc else ''

    def miniupnpd_rules(self, nat: str) -> list[str]:
        """The DNAT rules miniupnpd holds in the router (iptables -t nat -S MINIUPNPD),
        e.g. '-A MINIUPNPD -i ntXXXXwan -p udp -m udp --dport 10081 -j DNAT --to-destination 10.0.0.2:10081'."""
        r = self._router_exec(nat, [self._iptables(nat), '-t', 'nat', '-S', 'MINIUPNPD'], check=False)
        return [l for l in r.stdout.splitlines() if l.startswith('-A ')]

    def popen(self, host: str, argv, **kw) -> subprocess.Popen:
        """Start argv inside host's namespace; the process is killed at cleanup.

        stdout/stderr not given go to a per-process log file in tb.logdir
        (proc.log_path, read it with tb.read_log(proc)); a PIPE nobody drains
        would block a chatty process once 64 KiB are buffered.  stdin defaults to
        DEVNULL.  The process gets its own session (process group id == PID).
        Other keywords go to subprocess.Popen."""
        self._check_live()
        kw.setdefault('stdin', subprocess.DEVNULL)
        kw['start_new_session'] = True
        logf = None
        if 'stdout' not in kw or 'stderr' not in kw:
            self._nlog += 1
            tag = re.sub(r'[^A-Za-z0-9_.-]', '_', os.path.basename(str(argv[0])))[:24]
            path = os.path.join(self.logdir, f'{self._nlog:03d}-{host}-{tag}.log')
            logf = open(path, 'ab')
            kw.setdefault('stdout', logf)
            kw.setdefault('stderr', logf)
        else:
            path = None
        try:
            proc = subprocess.Popen(['ip', 'netns', 'exec', self.ns(host)] + list(argv), **kw)
        finally:
            if logf:
                logf.close()
        proc.log_path = path
        proc.host = host
        self._procs.append(proc)
        return proc

    def read_log(self, proc: subprocess.Popen) -> str:
        """What a popen'ed process wrote to its log file so far ('' if none)."""
        path = getattr(proc, 'log_path', None)
        if not path:
            return ''
        try:
            with open(path, 'rb') as f:
                return f.read().decode('utf-8', 'replace')
        except OSError:
            return ''

    def stop(self, proc: subprocess.Popen, grace: float = 1.0):
        """Stop a process started with popen (SIGTERM, then SIGKILL), by PID.

        Its pipes stay open so buffered output can still be read."""
        self._stop_proc(proc, grace, close_streams=False)

    def run(self, host: str, argv, *, timeout: float = 15.0, check: bool = True,
            input=None) -> subprocess.CompletedProcess:
        """Run a short command in host's namespace (text output, bounded by timeout)."""
        self._check_live()
        proc = self.popen(host, argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(input=input, timeout=timeout)
        except subprocess.TimeoutExpired:
            self._stop_proc(proc)
            raise TestbedError(f'timeout after {timeout}s in {host}: {argv}')
        finally:
            if proc in self._procs and proc.poll() is not None:
                self._procs.remove(proc)
        cp = subprocess.CompletedProcess(argv, proc.returncode, out, err)
        if check and proc.returncode != 0:
            raise TestbedError(f'{argv} in {host} failed ({proc.returncode}): {err.strip()}')
        return cp

    def probe(self, host: str, *args, timeout: float = 30.0) -> list[dict]:
        """Run udp_probe.py with args in host to completion; return its JSON events."""
        r = self.run(host, [PYTHON, PROBE] + [str(a) for a in args], timeout=timeout)
        out = []
        for line in r.stdout.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def start_probe(self, host: str, *args, ready_timeout: float = 5.0):
        """Start udp_probe.py in host; wait for its 'ready' event. Returns (proc, reader, ready).

        stdout is a pipe read through `reader` (LineReader); pass --quiet to the
        probe unless you drain it.  stderr goes to proc.log_path."""
        proc = self.popen(host, [PYTHON, PROBE] + [str(a) for a in args], stdout=subprocess.PIPE)
        reader = LineReader(proc)
        ready = reader.wait_for(lambda o: o.get('ev') == 'ready', ready_timeout)
        if ready is None:
            self._stop_proc(proc)
            err = self.read_log(proc)
            raise TestbedError(f'udp_probe in {host} did not become ready: {err.strip()}')
        return proc, reader, ready

    # fault injection / inspection on NAT routers

    def _router_exec(self, nat: str, argv, **kw):
        self._check_live()
        if nat not in self.nat_spec:
            raise KeyError(f'unknown NAT {nat!r}')
        return _sh(['ip', 'netns', 'exec', self._ns_name('nat', nat)] + list(argv), **kw)

    def set_loss(self, nat: str, probability: float, direction: str = 'both'):
        """Drop forwarded packets at random in the NAT router (0 disables).

        direction: 'both' (each forwarded packet, either way), 'out' (LAN->WAN),
        'in' (WAN->LAN)."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError('probability must be in [0, 1]')
        if direction not in ('both', 'in', 'out'):
            raise ValueError("direction must be 'both', 'in' or 'out'")
        self._router_exec(nat, [self._iptables(nat), '-F', LOSS_CHAIN])
        if probability <= 0:
            return
        match = []
        if direction == 'out':
            match = ['-i', self._ifname('lan')]
        elif direction == 'in':
            match = ['-i', self._ifname('wan')]
        self._router_exec(nat, [self._iptables(nat), '-A', LOSS_CHAIN] + match +
                          ['-m', 'statistic', '--mode', 'random', '--probability',
                           f'{probability:.6f}', '-j', 'DROP'])

    def flush_conntrack(self, nat: str):
        """Simulate a NAT reboot: forget every mapping (conntrack -F in the router)."""
        self._router_exec(nat, ['conntrack', '-F'], check=False)

    def set_udp_timeout(self, nat: str, seconds: int, stream_seconds=None):
        """Set nf_conntrack_udp_timeout (and _stream) in the router's namespace only.

        These sysctls are per network namespace on this kernel (checked by the
        self-test), so other NATs and the root namespace keep their values."""
        s = int(seconds)
        st = int(stream_seconds if stream_seconds is not None else seconds)
        self._router_exec(nat, ['sysctl', '-q', '-w', f'net.netfilter.nf_conntrack_udp_timeout={s}',
                                f'net.netfilter.nf_conntrack_udp_timeout_stream={st}'])

    def get_udp_timeout(self, nat: str) -> tuple[int, int]:
        r = self._router_exec(nat, ['sysctl', '-n', 'net.netfilter.nf_conntrack_udp_timeout',
                                    'net.netfilter.nf_conntrack_udp_timeout_stream'])
        a, b = r.stdout.split()[:2]
        return int(a), int(b)

    def conntrack_list(self, nat: str, proto: str = 'udp') -> list[dict]:
        """Parsed conntrack entries of the router.

        Each: {'proto', 'timeout', 'orig': {src,dst,sport,dport}, 'reply': {...},
        'flags': [...], 'raw': line}.  For a NATed flow orig.src/sport is the
        private side and reply.dst/dport the public mapping."""
        argv = ['conntrack', '-L']
        if proto:
            argv += ['-p', proto]
        r = self._router_exec(nat, argv, check=False)
        return [e for e in (parse_conntrack_line(l) for l in r.stdout.splitlines()) if e]

    def mappings(self, nat: str) -> list[dict]:
        """Conntrack entries of NATed UDP flows as {'private', 'public', 'remote'} 'ip:port' strings."""
        out = []
        for e in self.conntrack_list(nat):
            o, rp = e['orig'], e['reply']
            if 'sport' not in o or 'dport' not in rp:
                continue
            out.append({'private': f"{o['src']}:{o['sport']}",
                        'public': f"{rp['dst']}:{rp['dport']}",
                        'remote': f"{o['dst']}:{o['dport']}", 'timeout': e['timeout'],
                        'flags': e['flags']})
        return out


def uuid_for(prefix: str, nat: str) -> str:
    """A UUID unique to this run and router (an IGD's identity in SSDP)."""
    import uuid
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f'{prefix}.{nat}.natchat-testbed.invalid'))


def parse_conntrack_line(line: str):
    toks = line.split()
    if len(toks) < 3 or not toks[1].isdigit():
        return None
    entry = {'proto': toks[0], 'timeout': None, 'orig': {}, 'reply': {}, 'flags': [], 'raw': line}
    rest = toks[2:]
    if rest and rest[0].isdigit():
        entry['timeout'] = int(rest[0])
        rest = rest[1:]
    side = 'orig'
    for t in rest:
        if t.startswith('[') and t.endswith(']'):
            entry['flags'].append(t[1:-1])
        elif '=' in t:
            k, v = t.split('=', 1)
            if k in ('src', 'dst', 'sport', 'dport'):
                if k in entry[side] and side == 'orig':
                    side = 'reply'
                entry[side][k] = int(v) if k in ('sport', 'dport') else v
            else:
                entry[k] = v
        else:
            entry['flags'].append(t)
    return entry


# --------------------------------------------------------------------------- CLI

def _main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description='natchat NAT testbed')
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument('--selftest', action='store_true', help='run the testbed self-test')
    g.add_argument('--cleanup-stale', action='store_true',
                   help='remove namespaces left by dead testbed runs')
    g.add_argument('--hold', type=float, metavar='SECONDS',
                   help='build a small testbed, print its prefix, sleep (max 300 s)')
    a = ap.parse_args(argv)
    if a.cleanup_stale:
        if not is_root():
            print(SKIP_MESSAGE, file=sys.stderr)
            return 2
        removed = cleanup_stale()
        print(f'{len(removed)} stale namespace(s) removed')
        return 0
    if a.hold is not None:
        with Testbed(nats={'A': 'cone'}, hosts={'a1': ('A', '192.168.1.2')},
                     public_hosts={'srv': '203.0.113.10'}) as tb:
            tb.popen('a1', ['sleep', str(min(a.hold, 300.0))])
            print(json.dumps({'prefix': tb.prefix, 'namespaces': tb.namespaces}), flush=True)
            time.sleep(min(a.hold, 300.0))
        return 0
    sys.path.insert(0, HERE)
    suite = unittest.defaultTestLoader.loadTestsFromName('test_testbed')
    res = unittest.TextTestRunner(verbosity=2).run(suite)
    return 0 if res.wasSuccessful() else 1


if __name__ == '__main__':
    sys.exit(_main())
