"""End-to-end test harness for natchat (stdlib only).

* locate the natchat binaries (env NATCHAT_BIN_DIR, default <repo>/.build/debug);
* start processes with stdin=PIPE and stdout/stderr captured line by line by reader
  threads (Proc), wait for lines with a bounded timeout, send lines, stop and reap;
* ProcessGroup: owns every process and raw socket a test starts and kills/closes them
  all, even when the test fails (use as a context manager or with addCleanup);
* RawPeer: a plain UDP socket speaking the classic protocol by hand;
* free UDP port picking;
* skip helpers: missing binaries (a failure instead when NATCHAT_E2E_STRICT=1),
  missing root, missing loopback aliases.

Every wait is bounded in time and in iterations.
"""

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CLASSIC = HERE / "classic_peers.py"
DEFAULT_TIMEOUT = 10.0
MAX_WAKEUPS = 100000  # hard cap on condition-variable wake-ups per wait

SERVER_BIN = "natchat-server"
CLIENT_BIN = "natchat"

IPPORT = r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}:\d{1,5}"
# a @show_list line: "ID IP:PORT", extra columns allowed after a space
LIST_LINE = re.compile(r"(\S+) (" + IPPORT + r")(?: .*)?")


# --------------------------------------------------------------------------- locating


def bin_dir():
    env = os.environ.get("NATCHAT_BIN_DIR")
    return Path(env) if env else REPO / ".build" / "debug"


def binary_path(name):
    return bin_dir() / name


def have_binary(name):
    p = binary_path(name)
    return p.is_file() and os.access(p, os.X_OK)


def strict():
    return os.environ.get("NATCHAT_E2E_STRICT") == "1"


def require_binaries(testcase, *names):
    """Skip (or fail, with NATCHAT_E2E_STRICT=1) when a natchat binary is missing."""
    missing = [str(binary_path(n)) for n in names if not have_binary(n)]
    if missing:
        msg = "natchat binary not built: " + ", ".join(missing) + " (set NATCHAT_BIN_DIR)"
        if strict():
            testcase.fail(msg + " [NATCHAT_E2E_STRICT=1]")
        testcase.skipTest(msg)


def require_root(testcase, what="this test"):
    """Skip loudly when not root (NAT testbed tests need network namespaces)."""
    if os.geteuid() != 0:
        msg = f"SKIPPED: {what} needs root (network namespaces / iptables); run as root"
        sys.stderr.write("\n*** " + msg + " ***\n")
        sys.stderr.flush()
        testcase.skipTest(msg)


def require_loopback_aliases(testcase, addrs):
    """127.0.0.x aliases all work on Linux; skip elsewhere."""
    for a in addrs:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind((a, 0))
        except OSError as e:
            testcase.skipTest(f"cannot bind loopback alias {a}: {e}")
        finally:
            s.close()


def udp_port_free(addr, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((addr, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


_handed_out = set()
_handed_lock = threading.Lock()


def free_udp_port(addrs=("127.0.0.1",)):
    """A UDP port bindable on every address in addrs, not handed out before in this run."""
    for _ in range(200):
        socks = []
        try:
            s0 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s0)
            s0.bind((addrs[0], 0))
            port = s0.getsockname()[1]
            ok = True
            for a in addrs[1:]:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                try:
                    s.bind((a, port))
                except OSError:
                    ok = False
                    break
        finally:
            for s in socks:
                s.close()
        with _handed_lock:
            if ok and port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError(f"no free UDP port on {addrs} after 200 attempts")


# --------------------------------------------------------------------------- processes


_live_procs = set()
_live_lock = threading.Lock()


def kill_and_reap(popen):
    """SIGKILL `popen` by PID if it is still running, then reap it (waiting at most 10 s)."""
    if popen.poll() is None:
        try:
            os.kill(popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        popen.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


@atexit.register
def _kill_leftovers():
    """Last resort (e.g. Ctrl-C in the middle of a test): stop every process still alive."""
    with _live_lock:
        procs = list(_live_procs)
    for p in procs:
        try:
            p.stop()
        except Exception:
            pass


class Hit:
    """A matched output line: index in its stream, text, and the re.Match."""

    def __init__(self, index, text, match):
        self.index = index
        self.text = text
        self.match = match

    def group(self, *a):
        return self.match.group(*a)

    def __repr__(self):
        return f"Hit({self.index}, {self.text!r})"


class Proc:
    """A child process with stdin=PIPE and line-captured stdout/stderr."""

    def __init__(self, name, argv, group=None, env=None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.group = group
        self._cond = threading.Condition()
        self._lines = {"stdout": [], "stderr": []}
        self._times = {"stdout": [], "stderr": []}  # time.monotonic() when each line was read
        self._eof = {"stdout": False, "stderr": False}
        self._stopped = False
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.pid = self.popen.pid
        with _live_lock:
            _live_procs.add(self)
        self._readers = [
            threading.Thread(target=self._reader, args=("stdout", self.popen.stdout),
                             name=f"{name}-stdout", daemon=True),
            threading.Thread(target=self._reader, args=("stderr", self.popen.stderr),
                             name=f"{name}-stderr", daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _reader(self, stream, pipe):
        try:
            for raw in iter(pipe.readline, b""):
                text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                t = time.monotonic()
                with self._cond:
                    self._lines[stream].append(text)
                    self._times[stream].append(t)
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self._eof[stream] = True
                self._cond.notify_all()

    # ---- inspection

    def lines(self, stream="stdout"):
        with self._cond:
            return list(self._lines[stream])

    def mark(self, stream="stdout"):
        """Current number of captured lines: pass as since= to look only at newer ones."""
        with self._cond:
            return len(self._lines[stream])

    def line_time(self, index, stream="stdout"):
        """time.monotonic() when line `index` of `stream` was read (a Hit's .index)."""
        with self._cond:
            return self._times[stream][index]

    def count(self, regex, stream="stdout", since=0, until=None):
        pat = re.compile(regex)
        lines = self.lines(stream)[since:until]
        return sum(1 for line in lines if pat.fullmatch(line))

    def describe(self, tail=80):
        out = self.lines("stdout")[-tail:]
        err = self.lines("stderr")[-tail:]
        rc = self.popen.poll()
        state = "running" if rc is None else f"exited rc={rc}"
        parts = [f"--- {self.name} (pid {self.pid}, {state}): {' '.join(self.argv)}",
                 "  stdout:"]
        parts += [f"    | {line!r}" for line in out] or ["    (none)"]
        parts.append("  stderr:")
        parts += [f"    ! {line!r}" for line in err] or ["    (none)"]
        return "\n".join(parts)

    def _context(self):
        if self.group is not None:
            return self.group.describe()
        return self.describe()

    def wait_for_line(self, regex, timeout=DEFAULT_TIMEOUT, since=0, stream="stdout",
                      search=False):
        """Wait until a line (index >= since) fully matches regex (re.search if search).

        Returns a Hit; raises AssertionError with all captured output on timeout or when
        the stream closes first.
        """
        pat = re.compile(regex)
        deadline = time.monotonic() + timeout
        i = since
        with self._cond:
            for _ in range(MAX_WAKEUPS):
                lines = self._lines[stream]
                while i < len(lines):
                    m = pat.search(lines[i]) if search else pat.fullmatch(lines[i])
                    if m:
                        return Hit(i, lines[i], m)
                    i += 1
                if self._eof[stream]:
                    why = f"{stream} closed"
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    why = f"timed out after {timeout}s"
                    break
                self._cond.wait(remaining)
            else:
                why = "too many wake-ups"
        raise AssertionError(
            f"{self.name}: {why} waiting for a {stream} line matching {regex!r} "
            f"(from line {since})\n{self._context()}")

    def assert_no_line(self, regex, stream="stdout", since=0, until=None, msg=""):
        n = self.count(regex, stream, since, until)
        if n:
            raise AssertionError(f"{self.name}: unexpected {stream} line matching {regex!r} "
                                 f"({n}x) {msg}\n{self._context()}")

    # ---- interaction

    def send_line(self, text):
        try:
            self.popen.stdin.write((text + "\n").encode("utf-8"))
            self.popen.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as e:
            raise AssertionError(f"{self.name}: cannot write {text!r} to stdin: {e}\n"
                                 f"{self._context()}")

    def close_stdin(self):
        try:
            self.popen.stdin.close()
        except OSError:
            pass

    def alive(self):
        return self.popen.poll() is None

    def signal(self, sig):
        if self.popen.poll() is None:
            os.kill(self.pid, sig)

    def wait_exit(self, timeout=DEFAULT_TIMEOUT):
        """Wait for the process to exit; returns the return code (AssertionError on timeout)."""
        try:
            rc = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name}: still running after {timeout}s\n"
                                 f"{self._context()}")
        self._join_readers()
        return rc

    def _join_readers(self):
        for t in self._readers:
            t.join(timeout=2.0)

    def stop(self):
        """Kill by PID (SIGKILL) if still running, and always reap. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        with _live_lock:
            _live_procs.discard(self)
        try:
            kill_and_reap(self.popen)
        finally:
            self.close_stdin()
            self._join_readers()
            for pipe in (self.popen.stdout, self.popen.stderr):
                try:
                    pipe.close()
                except OSError:
                    pass


class ServerProc(Proc):
    def __init__(self, kind, bind, port, *a, **kw):
        super().__init__(*a, **kw)
        self.kind = kind
        self.bind = bind
        self.port = port

    @property
    def addr(self):
        return (self.bind, self.port)


class ClientProc(Proc):
    """A natchat client ("natchat") or a reference classic client ("classic")."""

    _sentinel_counter = 0

    def __init__(self, kind, cid, bind, port, server, *a, **kw):
        super().__init__(*a, **kw)
        self.kind = kind
        self.cid = cid
        self.bind = bind
        self.port = port
        self.server = server

    @property
    def endpoint(self):
        return f"{self.bind}:{self.port}"

    def _server_recv(self, text):
        """Regex for the classic client's --trace line of a datagram from the server."""
        return (r"recv " + re.escape(f"{self.server.bind}:{self.server.port}") + " "
                + re.escape(text))

    def wait_registered(self, timeout=DEFAULT_TIMEOUT):
        if self.kind == "natchat":
            return self.wait_for_line(
                r"\* registered as " + re.escape(self.cid) + r" \(public "
                + re.escape(self.endpoint) + r"\).*", timeout)
        return self.wait_for_line(self._server_recv(f"{self.cid} {self.endpoint}"),
                                  timeout, stream="stderr")

    def joined_regex(self, peer):
        """A peer's registration as this client shows it (natchat: '* bob joined (...)',
        classic: the --trace line of the server's 'bob IP:PORT' datagram)."""
        if self.kind == "natchat":
            return (r"\* " + re.escape(peer.cid) + r" joined \(" + re.escape(peer.endpoint)
                    + r"\)(?: .*)?")
        return self._server_recv(f"{peer.cid} {peer.endpoint}")

    def wait_joined(self, peer, since=0, timeout=DEFAULT_TIMEOUT):
        return self.wait_for_line(self.joined_regex(peer), timeout, since=since,
                                  stream=self.left_stream())

    def left_regex(self, peer, how):
        assert how in ("unregistered", "off-line")
        if self.kind == "natchat":
            return r"\* " + re.escape(f"{peer.cid} is {how} {peer.endpoint}")
        return self._server_recv(f"{peer.cid} is {how} {peer.endpoint}")

    def left_stream(self):
        return "stdout" if self.kind == "natchat" else "stderr"

    def wait_left(self, peer, how, since=0, timeout=DEFAULT_TIMEOUT):
        return self.wait_for_line(self.left_regex(peer, how), timeout, since=since,
                                  stream=self.left_stream())

    def chat(self, peer_id, text):
        self.send_line(f"@chat {peer_id} {text}")

    @staticmethod
    def chat_regex(from_id, text):
        # An extended natchat marks chats from classic clients, which nothing authenticates.
        return re.escape(f"From {from_id} [{text}]") + r"(?: \(unverified: classic client\))?"

    def wait_chat(self, from_id, text, since=0, timeout=DEFAULT_TIMEOUT):
        return self.wait_for_line(self.chat_regex(from_id, text), timeout, since=since)

    def sync(self, timeout=DEFAULT_TIMEOUT):
        """Round trip through the command loop: returns the index of the marker line.

        Uses "@chat <unknown id> x", answered by "There is no <id> in registration list."
        Everything the client printed in response to earlier commands is before it.
        """
        ClientProc._sentinel_counter += 1
        ghost = f"zz-sync-{ClientProc._sentinel_counter}"
        since = self.mark()
        self.send_line(f"@chat {ghost} x")
        hit = self.wait_for_line(re.escape(f"There is no {ghost} in registration list."),
                                 timeout, since=since)
        return hit.index

    def show_list(self, timeout=DEFAULT_TIMEOUT):
        """Send @show_list; return the list as a sorted list of (id, 'ip:port')."""
        since = self.mark()
        self.send_line("@show_list")
        end = self.sync(timeout)
        entries = []
        for line in self.lines()[since:end]:
            m = LIST_LINE.fullmatch(line)
            if m:
                entries.append((m.group(1), m.group(2)))
        return sorted(entries)

    def wait_list(self, expected, timeout=5.0):
        """@show_list until it equals expected (sorted (id, 'ip:port') pairs).

        Bounded retry: list updates travel as separate datagrams, so right after an
        event the list may lag by a moment. Fails with the last list seen.
        """
        expected = sorted(expected)
        deadline = time.monotonic() + timeout
        got = None
        for _ in range(50):
            got = self.show_list()
            if got == expected or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if got != expected:
            raise AssertionError(f"{self.name}: @show_list is {got!r}, expected {expected!r} "
                                 f"(within {timeout}s)\n{self._context()}")
        return got

    def exit(self, timeout=DEFAULT_TIMEOUT):
        """@exit; natchat must print '* bye'; both kinds must exit 0."""
        since = self.mark()
        self.send_line("@exit")
        if self.kind == "natchat":
            self.wait_for_line(r"\* bye", timeout, since=since)
        return self.wait_exit(timeout)


class ProcessGroup:
    """Owns the processes and raw sockets of one test; stop_all() kills/closes them all."""

    def __init__(self):
        self.procs = []
        self.raws = []
        self._tmp = None

    def home(self, name="default"):
        """A private HOME (with XDG dirs) for natchat clients: keeps the user's real
        state (history, identity keys) out of the tests. Clients sharing a name share
        it, like programs of one user on one machine."""
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="natchat-e2e-")
        d = os.path.join(self._tmp, name)
        for sub in ("", ".config", ".local/state", ".cache"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        return d

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop_all()
        return False

    def add(self, proc):
        self.procs.append(proc)
        return proc

    def start(self, name, argv, env=None):
        return self.add(Proc(name, argv, group=self, env=env))

    def describe(self):
        return "\n".join(p.describe() for p in self.procs) or "(no processes)"

    def stop_all(self):
        errors = []
        for p in reversed(self.procs):
            try:
                p.stop()
            except Exception as e:  # keep stopping the others
                errors.append(f"{p.name}: {e!r}")
        for r in self.raws:
            r.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        if errors:
            raise RuntimeError("errors while stopping: " + "; ".join(errors))

    # ---- role starters

    @staticmethod
    def _py_env():
        env = dict(os.environ)
        env["PYTHONUTF8"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start_server(self, kind, bind="127.0.0.1", port=None, timeout=None, sweep=None,
                     wait=True, state="server", extra=()):
        """kind: 'natchat' (natchat-server) or 'classic' (reference server).

        timeout / sweep: keep-alive timeout and sweep interval in seconds (None = default).
        state: natchat-server keeps its default store (ID claims) in STATE_DIRECTORY, a
        per-test directory of that name (servers sharing a name share the store, as a
        restarted server does); extra: more arguments.
        """
        port = port or free_udp_port((bind,))
        if kind == "natchat":
            argv = [binary_path(SERVER_BIN), "--bind", bind, "--port", port]
            if timeout is not None:
                argv += ["--keepalive-timeout", _num(timeout)]
            if sweep is not None:
                argv += ["--sweep-interval", _num(sweep)]
            env = dict(os.environ, STATE_DIRECTORY=self.home(state))
        elif kind == "classic":
            argv = [sys.executable, "-u", CLASSIC, "server", "--bind", bind, "--port", port]
            if timeout is not None:
                argv += ["--timeout", _num(timeout)]
            if sweep is not None:
                argv += ["--sweep", _num(sweep)]
            env = self._py_env()
        else:
            raise ValueError(kind)
        argv += list(extra)
        proc = ServerProc(kind, bind, port, f"{kind}-server", argv, group=self, env=env)
        self.add(proc)
        if wait:
            proc.wait_for_line(r"server program starts\.\.\.\.")
        return proc

    def start_client(self, kind, cid, bind, port, server, keepalive=None, extra=(),
                     prompt_id=False, prompt_server=False, private_ip=None, home="default"):
        """kind: 'natchat' or 'classic'. Classic clients always run with --trace.

        home: natchat clients run with HOME/XDG_* in a per-test directory of that name.
        """
        if kind == "natchat":
            argv = [binary_path(CLIENT_BIN)]
            if not prompt_id:
                argv += ["--id", cid]
            if not prompt_server:
                argv += ["--server", server.bind]
            argv += ["--server-port", server.port, "--port", port, "--bind", bind]
            if keepalive is not None:
                argv += ["--keepalive-interval", _num(keepalive)]
            h = self.home(home)
            env = dict(os.environ, HOME=h, XDG_CONFIG_HOME=os.path.join(h, ".config"),
                       XDG_STATE_HOME=os.path.join(h, ".local/state"),
                       XDG_CACHE_HOME=os.path.join(h, ".cache"))
        elif kind == "classic":
            argv = [sys.executable, "-u", CLASSIC, "client", "--bind", bind, "--port", port]
            if not prompt_id:
                argv += ["--id", cid]
            if not prompt_server:
                argv += ["--server", server.bind]
            argv += ["--server-port", server.port, "--trace"]
            if keepalive is not None:
                argv += ["--keepalive", _num(keepalive)]
            if private_ip is not None:
                argv += ["--private-ip", private_ip]
            env = self._py_env()
        else:
            raise ValueError(kind)
        argv += list(extra)
        proc = ClientProc(kind, cid, bind, port, server, f"{kind}-client-{cid}", argv,
                          group=self, env=env)
        return self.add(proc)

    def raw(self, bind="127.0.0.1", port=0):
        r = RawPeer(bind, port)
        self.raws.append(r)
        return r


def _num(x):
    """Format a number for a command line: 3 -> '3', 0.5 -> '0.5'."""
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    return str(x)


# --------------------------------------------------------------------------- raw UDP


class RawPeer:
    """A plain UDP socket; received datagrams are decoded as UTF-8 (with replacement)."""

    def __init__(self, bind="127.0.0.1", port=0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((bind, port))
        self.addr = self.sock.getsockname()
        self.received = []  # every (text, addr) received, in order

    @property
    def endpoint(self):
        return f"{self.addr[0]}:{self.addr[1]}"

    def send(self, data, dest):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendto(data, dest)

    def recv(self, timeout):
        """One datagram as (text, addr), or None after timeout seconds."""
        self.sock.settimeout(max(timeout, 0.0001))
        try:
            data, addr = self.sock.recvfrom(65535)
        except socket.timeout:
            return None
        text = data.decode("utf-8", errors="replace")
        self.received.append((text, addr))
        return text, addr

    def recv_until(self, pred, timeout=DEFAULT_TIMEOUT, what=None):
        """Receive until pred(text) is true; returns all texts received, the match last."""
        got = []
        deadline = time.monotonic() + timeout
        for _ in range(MAX_WAKEUPS):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            r = self.recv(remaining)
            if r is None:
                break
            got.append(r[0])
            if pred(r[0]):
                return got
        raise AssertionError(f"raw {self.endpoint}: no datagram {what or pred} within "
                             f"{timeout}s; received {got!r}")

    def recv_line(self, text, timeout=DEFAULT_TIMEOUT):
        """Receive until a datagram equal to text; returns all texts, text last."""
        return self.recv_until(lambda t: t == text, timeout, what=repr(text))

    def drain(self):
        """Whatever is queued right now (non-blocking)."""
        got = []
        self.sock.setblocking(False)
        try:
            for _ in range(MAX_WAKEUPS):
                try:
                    data, addr = self.sock.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                text = data.decode("utf-8", errors="replace")
                self.received.append((text, addr))
                got.append(text)
        finally:
            self.sock.setblocking(True)
        return got

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
