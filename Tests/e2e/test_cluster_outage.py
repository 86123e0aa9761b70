"""Several servers on one PostgreSQL database (issue 16) while the database cannot be
reached: real processes on loopback, a real outage at the TCP level.

Needs the test PostgreSQL (NATCHAT_TEST_POSTGRES; bin/test starts one, Tests/e2e/pg.py) and
skips loudly without it; no root. The test makes a fresh database and drops it at the end.

Both servers reach the database through PgProxy, a small TCP proxy in this file (threads,
on 127.0.0.1, a free port, forwarding to the test PostgreSQL's TCP port). cut() closes its
listener and every connection it forwards, so the servers' connections break and new ones
are refused; restore() listens again on the same port.

test_database_outage (docs/several-servers.md, "The database dies or cannot be reached"):
1. servers a and b through the proxy; alice on a, bob and dave on b (each with its own
   identity); alice and bob see each other join and chat once each way.
2. The proxy is cut. Within 15 s a server logs, once, "cluster: the database is
   unreachable; serving the clients in memory, refusing new IDs until it is back" (the time
   from the cut is printed). While it is down:
   - alice and bob chat once each way (shown once by the addressee, acknowledged once);
   - carol, a new ID with a new key, registering with a is told "From server [registration
     refused: ID carol - new IDs cannot be claimed now (the database is unreachable); try
     again later]" and exits 2;
   - dave leaves (@exit) from b: a presence change b can only write later;
   - alice leaves (@exit) and starts again at a with her ID and identity: she registers
     (a knows her claim), with the same key.
   The outage lasts well under the keep-alive timeout (30 s): neither server is taken for
   dead by the other.
3. The proxy is restored. Within 20 s a logs "cluster: the database answers again;
   catching up" (b too if it logged the outage; times printed); carol registers with a
   and bob (on b) sees her join; alice (on a) is told dave is unregistered (b wrote his
   departure once the database was back); alice (restarted during the outage) and bob chat
   once each way. Both servers exit 0 on SIGTERM.
"""

import os
import re
import signal
import socket
import sys
import threading
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pg  # noqa: E402
from cluster_support import FINGERPRINT, SERVER_IP, ClusterMixin  # noqa: E402
from harness import ProcessGroup, free_udp_port  # noqa: E402

ALICE_IP, BOB_IP, CAROL_IP, DAVE_IP = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"
ALL_IPS = (SERVER_IP, ALICE_IP, BOB_IP, CAROL_IP, DAVE_IP)

REGISTER = 20.0
JOIN_BOUND = 15.0
OUTAGE_NOTICED = 15.0    # the cut to the server's error line (it reads presence every 1 s)
PASSIVE_NOTICE = 8.0     # without a new client: a presence read (every 1 s) failing within its 5 s deadline
RECOVERY = 20.0          # the restore to "answers again" (every call has a 5 s deadline)

UNREACHABLE = ("cluster: the database is unreachable; serving the clients in memory, "
               "refusing new IDs until it is back")
ANSWERS_AGAIN = "cluster: the database answers again; catching up"
REFUSED_NEW = ("From server [registration refused: ID {} - new IDs cannot be claimed now "
               "(the database is unreachable); try again later]")


class PgProxy:
    """A TCP proxy from 127.0.0.1:port to target, that can be cut and restored.

    One accept thread (polling a stop flag every 0.2 s) and two pump threads per forwarded
    connection; at most MAX_CONNECTIONS forwarded over its life (a runaway reconnect loop
    fails the test rather than the machine).
    """

    MAX_CONNECTIONS = 500

    def __init__(self, target):
        self.target = target
        self.port = None
        self.accepted = 0
        self._lock = threading.Lock()
        self._socks = set()
        self._threads = []
        self._listener = None
        self._stop = None
        self._acceptor = None

    def start(self):
        self._listen(0)
        return self

    def _listen(self, port):
        last = None
        for _ in range(50):   # the port may be held a moment; bounded
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                break
            except OSError as e:
                s.close()
                last = e
                time.sleep(0.1)
        else:
            raise RuntimeError(f"proxy: cannot listen on 127.0.0.1:{port} again: {last}")
        s.listen(64)
        s.settimeout(0.2)
        self.port = s.getsockname()[1]
        self._listener = s
        self._stop = threading.Event()
        self._acceptor = threading.Thread(target=self._accept_loop, args=(s, self._stop),
                                          name="pgproxy-accept", daemon=True)
        self._acceptor.start()

    def _accept_loop(self, listener, stop):
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                up = socket.create_connection(self.target, timeout=5)
            except OSError:
                conn.close()
                continue
            conn.settimeout(None)
            up.settimeout(None)
            with self._lock:
                if stop.is_set() or self.accepted >= self.MAX_CONNECTIONS:
                    conn.close()
                    up.close()
                    continue
                self.accepted += 1
                self._socks.update((conn, up))
                pumps = [threading.Thread(target=self._pump, args=(conn, up), daemon=True),
                         threading.Thread(target=self._pump, args=(up, conn), daemon=True)]
                self._threads = [t for t in self._threads if t.is_alive()] + pumps
            for t in pumps:
                t.start()

    def _pump(self, src, dst):
        try:
            for _ in range(10_000_000):   # bounded; each turn waits for data
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                self._kill(s)

    def _kill(self, s):
        with self._lock:
            self._socks.discard(s)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            s.close()
        except OSError:
            pass

    def live_connections(self):
        with self._lock:
            return len(self._socks) // 2

    def cut(self):
        """Stop listening and close every forwarded connection (both of its sides)."""
        if self._stop is not None:
            self._stop.set()
            self._acceptor.join(timeout=2)
            try:
                self._listener.close()
            except OSError:
                pass
            self._stop = None
        with self._lock:
            socks = list(self._socks)
            threads = list(self._threads)
        for s in socks:
            self._kill(s)
        for t in threads:
            t.join(timeout=2)

    def restore(self):
        """Listen again on the same port."""
        if self._stop is None:
            self._listen(self.port)

    close = cut


class ClusterOutageTest(ClusterMixin, unittest.TestCase):
    maxDiff = None

    def setUp(self):
        self.require_cluster(ALL_IPS)
        direct_url, _ = pg.fresh_database("outage")
        name = pg.name_of(direct_url)
        self.addCleanup(pg.drop, name)
        admin = urllib.parse.urlsplit(pg.url())
        self.proxy = PgProxy((admin.hostname or "127.0.0.1", admin.port or 5432)).start()
        self.addCleanup(self.proxy.close)
        user = admin.username or "postgres"
        self.db_url = f"postgres://{user}@127.0.0.1:{self.proxy.port}/{name}"
        self.g = ProcessGroup()
        self.addCleanup(self.g.stop_all)   # runs first (cleanups are LIFO)

    # ------------------------------------------------------------------ helpers

    def client(self, cid, ip, port, srv, home=None):
        return self.g.start_client("natchat", cid, ip, port, srv, prompt_server=True,
                                   home=home or cid, extra=["--server", f"{srv.bind}:{srv.port}"])

    def wait_any_stderr(self, servers, text, since, deadline):
        """The first server (in time) whose stderr has a line containing text after its
        mark in since: (server, its line's time), or None at the deadline. Polls every
        0.1 s, bounded."""
        pat = re.compile(re.escape(text))
        for _ in range(100_000):
            hits = []
            for srv in servers:
                for i, line in enumerate(srv.lines("stderr")[since[srv.cluster_name]:]):
                    if pat.search(line):
                        hits.append((srv.line_time(since[srv.cluster_name] + i, stream="stderr"), srv))
                        break
            if hits:
                t, srv = min(hits, key=lambda h: h[0])
                return srv, t
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)
        return None

    @staticmethod
    def stderr_count(srv, text, since=0):
        return sum(1 for line in srv.lines("stderr")[since:] if text in line)

    # ------------------------------------------------------------------ the test

    def test_database_outage(self):
        t_start = time.monotonic()
        a = self.server("a")
        b = self.server("b")
        port = free_udp_port((ALICE_IP, BOB_IP, CAROL_IP, DAVE_IP))
        alice = self.client("alice", ALICE_IP, port, a)
        first = alice.wait_registered(timeout=REGISTER)
        alice_key = FINGERPRINT.search(first.text).group(1)
        bob = self.client("bob", BOB_IP, port, b)
        bob.wait_registered(timeout=REGISTER)
        dave = self.client("dave", DAVE_IP, port, b)
        dave.wait_registered(timeout=REGISTER)
        alice.wait_joined(bob, timeout=JOIN_BOUND)
        alice.wait_joined(dave, timeout=JOIN_BOUND)
        bob.wait_joined(alice, timeout=JOIN_BOUND)
        self.chat_once(alice, bob, others=(dave,))
        self.chat_once(bob, alice, others=(dave,))
        for srv in (a, b):
            self.assertEqual(self.stderr_count(srv, UNREACHABLE), 0,
                             f"server {srv.cluster_name} logged the outage before it\n{srv.describe()}")
        print(f"\n  outage: servers up and clients chatting {time.monotonic() - t_start:.1f} s after the start "
              f"({self.proxy.live_connections()} database connections through the proxy)", flush=True)

        # ---- 2. the database cannot be reached
        err_mark = {srv.cluster_name: srv.mark("stderr") for srv in (a, b)}
        self.proxy.cut()
        t_cut = time.monotonic()
        found = self.wait_any_stderr((a, b), UNREACHABLE, err_mark, t_cut + PASSIVE_NOTICE)
        carol = None
        if found is None:
            # Nothing used the database yet: a new client's claim does.
            print(f"  outage: no server noticed within {PASSIVE_NOTICE:.0f} s by itself; carol registers", flush=True)
            carol = self.client("carol", CAROL_IP, port, a)
            t_carol_start = time.monotonic()
            found = self.wait_any_stderr((a, b), UNREACHABLE, err_mark, t_cut + OUTAGE_NOTICED)
        self.assertIsNotNone(found, f"no server logged {UNREACHABLE!r} within {OUTAGE_NOTICED:.0f} s "
                                    f"of the cut\n{self.g.describe()}")
        first_srv, t_first = found
        print(f"  outage: server {first_srv.cluster_name} logged the outage {t_first - t_cut:.2f} s after the cut "
              f"(bound {OUTAGE_NOTICED:.0f} s)", flush=True)

        took = [self.chat_once(alice, bob, others=(dave,)), self.chat_once(bob, alice, others=(dave,))]
        print(f"  outage: alice->bob shown after {took[0]:.2f} s, bob->alice after {took[1]:.2f} s", flush=True)

        if carol is None:
            carol = self.client("carol", CAROL_IP, port, a)
            t_carol_start = time.monotonic()
        outcome = (re.escape(REFUSED_NEW.format("carol")) + "|" + re.escape("* registered as carol (") + ".*"
                   + r"|From server \[.*\]")
        got = carol.wait_for_line(outcome, timeout=REGISTER)
        self.assertEqual(got.text, REFUSED_NEW.format("carol"),
                         f"carol (a new ID) during the outage: expected the new-IDs refusal\n{self.g.describe()}")
        self.assertEqual(carol.wait_exit(timeout=15), 2, carol.describe())
        print(f"  outage: carol refused {carol.line_time(got.index) - t_carol_start:.2f} s after she started "
              f"(her outcome line)", flush=True)
        a.assert_no_line(re.escape(f"carol {carol.endpoint}"), msg="(carol was refused)")

        # dave leaves from b: his departure waits in b's memory for the database.
        self.assertEqual(dave.exit(), 0)

        # alice leaves and comes back with her ID and identity: a knows her claim.
        self.assertEqual(alice.exit(), 0)
        alice = self.client("alice", ALICE_IP, port, a)
        t_alice_start = time.monotonic()
        got = alice.wait_for_line(re.escape("* registered as alice (") + ".*|From server \\[.*\\]", timeout=REGISTER)
        self.assertTrue(got.text.startswith("* registered as alice (public " + alice.endpoint + ")"),
                        f"alice (a known ID and key) restarting during the outage was not registered: "
                        f"{got.text!r}\n{self.g.describe()}")
        self.assertEqual(FINGERPRINT.search(got.text).group(1), alice_key, got.text)
        print(f"  outage: alice, restarted, registered with a {alice.line_time(got.index) - t_alice_start:.2f} s "
              f"after she started (a known claim: the server, which knows the database is down, does not ask it)", flush=True)
        self.assertTrue(alice.alive(), alice.describe())

        for srv in (a, b):
            n = self.stderr_count(srv, UNREACHABLE, since=err_mark[srv.cluster_name])
            self.assertLessEqual(n, 1, f"server {srv.cluster_name} logged the outage {n} times, not once\n"
                                       f"{srv.describe()}")
        down = [srv for srv in (a, b) if self.stderr_count(srv, UNREACHABLE, since=err_mark[srv.cluster_name])]
        print(f"  outage: logged by {', '.join(s.cluster_name for s in down)}; restoring "
              f"{time.monotonic() - t_cut:.1f} s after the cut", flush=True)
        for srv in down:
            mark = err_mark[srv.cluster_name]
            for i, line in enumerate(srv.lines("stderr")[mark:]):
                if UNREACHABLE in line:
                    print(f"    {srv.cluster_name} (+{srv.line_time(mark + i, stream='stderr') - t_cut:.2f} s): "
                          f"{line[:300]}", flush=True)

        # ---- 3. the database answers again
        back_mark = {srv.cluster_name: srv.mark("stderr") for srv in (a, b)}
        bob_mark, alice_mark = bob.mark(), alice.mark()
        self.proxy.restore()
        t_restore = time.monotonic()
        for srv in sorted(set(down) | {a}, key=lambda s: s.cluster_name):
            found = self.wait_any_stderr((srv,), ANSWERS_AGAIN, back_mark, t_restore + RECOVERY)
            self.assertIsNotNone(found, f"server {srv.cluster_name} did not log {ANSWERS_AGAIN!r} within "
                                        f"{RECOVERY:.0f} s of the restore\n{self.g.describe()}")
            print(f"  outage: server {srv.cluster_name} logged the recovery {found[1] - t_restore:.2f} s "
                  f"after the restore (bound {RECOVERY:.0f} s)", flush=True)

        carol = self.client("carol", CAROL_IP, port, a)
        got = carol.wait_for_line(re.escape("* registered as carol (") + ".*|From server \\[.*\\]", timeout=REGISTER)
        self.assertTrue(got.text.startswith("* registered as carol (public " + carol.endpoint + ")"),
                        f"carol, after the database came back: {got.text!r}\n{self.g.describe()}")
        t_carol = carol.line_time(got.index)
        saw = bob.wait_joined(carol, since=bob_mark, timeout=JOIN_BOUND)
        print(f"  outage: carol registered {t_carol - t_restore:.2f} s after the restore; bob (on b) saw her "
              f"join {bob.line_time(saw.index) - t_carol:.2f} s later", flush=True)

        left = alice.wait_for_line(r"\* dave (?:is unregistered|is off-line|left)\b.*", since=alice_mark,
                                   timeout=JOIN_BOUND)
        print(f"  outage: alice (on a) saw dave's departure (made during the outage) "
              f"{alice.line_time(left.index) - t_restore:.2f} s after the restore", flush=True)

        took = [self.chat_once(alice, bob, others=(carol,)), self.chat_once(bob, alice, others=(carol,))]
        print(f"  after the outage: alice (restarted) ->bob shown after {took[0]:.2f} s, bob->alice after "
              f"{took[1]:.2f} s", flush=True)

        for srv in (a, b):
            srv.signal(signal.SIGTERM)
            self.assertEqual(srv.wait_exit(timeout=15), 0, srv.describe())
        for srv in (a, b):
            self.assertNotIn("Fatal error", "\n".join(srv.lines("stderr")), srv.describe())
        print(f"  outage: {time.monotonic() - t_start:.1f} s in all", flush=True)


if __name__ == "__main__":
    unittest.main()
