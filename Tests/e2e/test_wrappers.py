"""The README's opening commands, run the way a newcomer runs them on a fresh clone.

`bin/natchat --help` first: on a clean checkout (CI) nothing is built yet, so it builds
natchat and natchat-server in one release build, saying so on stderr, then prints the
usage. Then `bin/start-server` and two `bin/natchat` chat shells exchange a chat each way
over loopback; none of them may build again, which shows that one build serves both
wrappers.

These tests run the wrappers in bin/, not $NATCHAT_BIN_DIR: they use (and, when it is
missing or stale, make) the release build in .build/release. On a fresh clone that build
takes several minutes, so the first wait is long (NATCHAT_WRAPPER_BUILD_TIMEOUT seconds,
default 1800).
"""

import os
import re
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (  # noqa: E402
    REPO,
    ClientProc,
    ProcessGroup,
    ServerProc,
    free_udp_port,
    kill_and_reap,
    require_loopback_aliases,
)

NATCHAT = REPO / "bin" / "natchat"
START_SERVER = REPO / "bin" / "start-server"
RELEASE = REPO / ".build" / "release"
SERVER_IP, ALICE_IP, BOB_IP = "127.0.0.1", "127.0.0.2", "127.0.0.3"
BUILDING = r"natchat: building natchat and natchat-server \(release\).*"
BUILD_TIMEOUT = float(os.environ.get("NATCHAT_WRAPPER_BUILD_TIMEOUT", "1800"))
START_TIMEOUT = 30.0  # a wrapper whose build is current execs its binary at once
CHAT_TIMEOUT = 20.0
# Runs argv[1:] in a session (and process group) of its own, keeping the PID: a cleanup can
# then kill the wrapper and any `swift build` it started with one killpg on that PID.
SETSID_EXEC = "import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])"


def kill_group(popen):
    """SIGKILL the process group led by popen (its own session) while its leader is unreaped."""
    if popen.poll() is None:
        try:
            os.killpg(popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class WrapperTest(unittest.TestCase):

    def setUp(self):
        require_loopback_aliases(self, [SERVER_IP, ALICE_IP, BOB_IP])
        self.g = ProcessGroup()
        self.addCleanup(self.g.stop_all)

    def start_wrapper(self, cls, wrapper, *args, **kw):
        """Start a bin/ wrapper as a harness process in its own process group."""
        name = kw.pop("name")
        proc = cls(*args, name, [sys.executable, "-c", SETSID_EXEC, wrapper, *kw.pop("argv")],
                   group=self.g, **kw)
        self.g.add(proc)
        self.addCleanup(kill_group, proc.popen)  # runs before g.stop_all (cleanups are LIFO)
        return proc

    def assert_runs_release_binary(self, proc, name):
        """The wrapper exec'd .build/release/NAME: same PID, no shell left in between."""
        exe = f"/proc/{proc.pid}/exe"
        if os.path.exists(exe):
            self.assertEqual(os.path.realpath(exe), os.path.realpath(RELEASE / name),
                             f"{proc.name}: not running the release {name}\n{proc.describe()}")

    def test_help_then_server_and_two_clients_through_the_wrappers(self):
        # ---- bin/natchat --help, building first when the release build is missing or stale
        server_was_missing = not (RELEASE / "natchat-server").exists()
        t0 = time.monotonic()
        helper = subprocess.Popen([str(NATCHAT), "--help"], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  start_new_session=True)
        self.addCleanup(kill_and_reap, helper)
        self.addCleanup(kill_group, helper)
        try:
            out, err = helper.communicate(timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.fail(f"bin/natchat --help did not finish within {BUILD_TIMEOUT:.0f}s "
                      "(NATCHAT_WRAPPER_BUILD_TIMEOUT)")
        took = time.monotonic() - t0
        out = out.decode("utf-8", errors="replace")
        err_lines = err.decode("utf-8", errors="replace").splitlines()
        context = f"stdout:\n{out}\nstderr (last 40 lines):\n" + "\n".join(err_lines[-40:])
        self.assertEqual(helper.returncode, 0, f"bin/natchat --help failed\n{context}")
        self.assertIn("USAGE: natchat", out, f"bin/natchat --help shows no usage\n{context}")
        built = any(re.fullmatch(BUILDING, line) for line in err_lines)
        if server_was_missing:
            self.assertTrue(built, "natchat-server was not built, yet bin/natchat --help did "
                            f"not say it was building\n{context}")
        self.assertNotIn("USAGE", "\n".join(err_lines), "usage went to stderr")
        sys.stderr.write(f"[bin/natchat --help: {'built the release binaries' if built else 'release build current'}"
                         f" in {took:.0f}s] ")
        for name in ("natchat", "natchat-server"):
            self.assertTrue(os.access(RELEASE / name, os.X_OK), f".build/release/{name} missing")

        # ---- bin/start-server and two bin/natchat clients: no build this time
        port, alt_port = free_udp_port((SERVER_IP,)), free_udp_port((SERVER_IP,))
        client_port = free_udp_port((ALICE_IP, BOB_IP))
        srv = self.start_wrapper(ServerProc, START_SERVER, "natchat", SERVER_IP, port,
                                 name="bin/start-server",
                                 env=dict(os.environ, STATE_DIRECTORY=self.g.home("server-state")),
                                 argv=["--bind", SERVER_IP, "--port", port,
                                       "--alt-port", alt_port])
        srv.wait_for_line(r"server program starts\.\.\.\.", timeout=START_TIMEOUT)
        self.assert_runs_release_binary(srv, "natchat-server")

        def client(cid, ip):
            history = os.path.join(self.g.home(cid), "history")
            return self.start_wrapper(
                ClientProc, NATCHAT, "natchat", cid, ip, client_port, srv,
                name=f"bin/natchat-{cid}",
                argv=["--id", cid, "--server", SERVER_IP, "--server-port", port,
                      "--port", client_port, "--bind", ip, "--identity", "none",
                      "--known-peers", os.path.join(self.g.home(cid), "known_peers"),
                      "--history-file", history])

        alice = client("alice", ALICE_IP)
        alice.wait_registered(timeout=START_TIMEOUT)
        self.assert_runs_release_binary(alice, "natchat")
        bob = client("bob", BOB_IP)
        bob.wait_registered(timeout=START_TIMEOUT)
        alice.wait_joined(bob, timeout=START_TIMEOUT)
        srv.wait_for_line(re.escape(f"alice {alice.endpoint}"))
        srv.wait_for_line(re.escape(f"bob {bob.endpoint}"))

        chats = ((alice, bob, "hello bob, from a fresh clone"),
                 (bob, alice, "hi alice [through bin/natchat]"))
        for src, dst, text in chats:
            src.chat(dst.cid, text)
            dst.wait_for_line(re.escape(f"From {src.cid} [{text}]"), timeout=CHAT_TIMEOUT)
            src.wait_for_line(re.escape(f"* delivered to {dst.cid}"), timeout=CHAT_TIMEOUT)
        for c in (alice, bob):
            c.sync()  # everything printed for the chats above is now on screen
        for src, dst, text in chats:
            self.assertEqual(dst.count(re.escape(f"From {src.cid} [{text}]")), 1,
                             f"{dst.name}: the chat is not shown exactly once\n{self.g.describe()}")
            self.assertEqual(src.count(re.escape(f"* delivered to {dst.cid}")), 1,
                             f"{src.name}: not exactly one '* delivered to {dst.cid}'\n"
                             f"{self.g.describe()}")

        for c in (alice, bob):
            self.assertEqual(c.exit(), 0, f"{c.name}: exit status\n{self.g.describe()}")
            srv.wait_for_line(re.escape(f"{c.cid} is unregistered {c.endpoint}"))

        # ---- the build made by bin/natchat --help served every wrapper after it
        for p in (srv, alice, bob):
            self.assertEqual(p.count(BUILDING, stream="stderr"), 0,
                             f"{p.name} built again after bin/natchat --help\n{p.describe()}")


if __name__ == "__main__":
    unittest.main()
