"""The durable store (issue 15) with real processes on loopback.

1. test_claim_survives_a_restart_and_refuses_an_impostor: alice registers with a server on
   its default store (an SQLite file in a per-test STATE_DIRECTORY) and leaves; the server is
   stopped (SIGTERM: the writer flushes) and started again on the same store; mallory, with
   another identity key, registers as alice and is refused ("From server [ID alice is
   claimed by another key]", exit status 2); alice herself, with her key, registers.
   `natchat-server claims list` shows the claim with alice's fingerprint; with the server
   stopped, `claims release alice` frees it, and once it is started mallory may take the ID.
2. test_classic_client_cannot_take_a_claimed_id: the reference (seed) client cannot register
   an ID a key claimed, and gets the server's notice.
3. test_bad_store_files_stop_the_server_cleanly: a file of garbage bytes, a path under a
   regular file, a URL whose scheme is no store (mysql://) and a postgres:// URL to a closed
   port each stop natchat-server at start with exit status 1 (64 for mysql://, a usage
   error) and a message naming the problem, never a crash and never "server program
   starts"; the garbage file is left byte for byte as it was.
4. test_owner_rotates_then_releases_the_claim: alice runs `natchat --rotate-identity` (exit
   0, `* your ID is now claimed by the new key FP`, her identity file now holds the new key and
   `identity.old` the old one); a shell with the old key is refused, one with the new key
   registers; `natchat --release-id` (exit 0) frees the ID, and mallory then registers it.
5. test_show_list_marks_claimed_peers: bob's `@show_list` line for alice ends with
   `(claimed since YYYY-MM-DD)`.
6. test_memory_store_keeps_nothing: with --store memory no file is written and an ID is free
   once its holder leaves (as before the store).
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (  # noqa: E402
    SERVER_BIN,
    ProcessGroup,
    binary_path,
    free_udp_port,
    require_loopback_aliases,
)

SERVER_IP, ALICE_IP, MALLORY_IP = "127.0.0.1", "127.0.0.2", "127.0.0.3"
STORE_FILE = "natchat-server.sqlite"


def free_tcp_port(addr):
    """A TCP port on addr where nothing listens (bound for a moment, then closed)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((addr, 0))
        return s.getsockname()[1]
    finally:
        s.close()


class StoreTest(unittest.TestCase):

    def setUp(self):
        require_loopback_aliases(self, [SERVER_IP, ALICE_IP, MALLORY_IP])
        self.g = ProcessGroup()
        self.addCleanup(self.g.stop_all)

    def restart(self, server, **kw):
        """SIGTERM (the store writer flushes on the way out), then the same port and store."""
        server.signal(signal.SIGTERM)
        self.assertEqual(server.wait_exit(timeout=15), 0, server.describe())
        return self.g.start_server("natchat", bind=SERVER_IP, port=server.port, **kw)

    def client(self, cid, ip, server, home, port):
        return self.g.start_client("natchat", cid, ip, port, server, home=home)

    def server_tool(self, *args, state="server"):
        env = dict(os.environ, STATE_DIRECTORY=self.g.home(state))
        return subprocess.run([binary_path(SERVER_BIN), *args], env=env, capture_output=True,
                              text=True, timeout=60)

    def test_claim_survives_a_restart_and_refuses_an_impostor(self):
        srv = self.g.start_server("natchat", bind=SERVER_IP)
        port = free_udp_port((ALICE_IP, MALLORY_IP))
        alice = self.client("alice", ALICE_IP, srv, "alice", port)
        registered = alice.wait_registered()
        fingerprint = re.search(r"key ([0-9a-f]{2}(?::[0-9a-f]{2}){7})$", registered.text)
        self.assertIsNotNone(fingerprint, registered.text)
        self.assertEqual(alice.exit(), 0)

        srv = self.restart(srv)
        self.assertTrue(os.path.exists(os.path.join(self.g.home("server"), STORE_FILE)))
        srv.wait_for_line(r"claims=1 .*\] store$", stream="stderr", search=True)

        mallory = self.client("alice", MALLORY_IP, srv, "mallory", port)
        mallory.wait_for_line(re.escape("From server [ID alice is claimed by another key]"))
        self.assertEqual(mallory.wait_exit(), 2, mallory.describe())
        srv.assert_no_line(re.escape(f"alice {MALLORY_IP}:{port}"))

        alice = self.client("alice", ALICE_IP, srv, "alice", port)
        alice.wait_registered()
        self.assertEqual(alice.exit(), 0)

        # The operator's view: the claim, with the key's fingerprint; released, it is free.
        listed = self.server_tool("claims", "list")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertRegex(listed.stdout, r"(?m)^alice [0-9a-f]{2}(:[0-9a-f]{2}){7} claimed \S+ last-seen \S+$")
        self.assertIn(f"alice {fingerprint.group(1)} claimed", listed.stdout)
        # Released with the server stopped (a running one holds its claims in memory).
        srv.signal(signal.SIGTERM)
        self.assertEqual(srv.wait_exit(timeout=15), 0, srv.describe())
        released = self.server_tool("claims", "release", "alice")
        self.assertEqual(released.returncode, 0, released.stderr)
        again = self.server_tool("claims", "release", "alice")
        self.assertEqual(again.returncode, 1, again.stdout)
        srv = self.g.start_server("natchat", bind=SERVER_IP, port=srv.port)
        mallory = self.client("alice", MALLORY_IP, srv, "mallory", port)
        mallory.wait_registered()
        self.assertEqual(mallory.exit(), 0)

    def test_classic_client_cannot_take_a_claimed_id(self):
        srv = self.g.start_server("natchat", bind=SERVER_IP)
        port = free_udp_port((ALICE_IP, MALLORY_IP))
        alice = self.client("alice", ALICE_IP, srv, "alice", port)
        alice.wait_registered()
        self.assertEqual(alice.exit(), 0)
        classic = self.g.start_client("classic", "alice", MALLORY_IP, port, srv)
        classic.wait_for_line(r".*ID alice is claimed by another key.*", stream="stderr", search=False)
        srv.assert_no_line(re.escape(f"alice {MALLORY_IP}:{port}"))
        carol = self.g.start_client("classic", "carol", MALLORY_IP, free_udp_port((MALLORY_IP,)), srv)
        carol.wait_registered()

    def test_bad_store_files_stop_the_server_cleanly(self):
        folder = self.g.home("bad")
        garbage = os.path.join(folder, "garbage.sqlite")
        content = b"this is not an SQLite database\n" * 200
        with open(garbage, "wb") as f:
            f.write(content)
        plain_file = os.path.join(folder, "plain")
        with open(plain_file, "w") as f:
            f.write("a regular file\n")
        # A PostgreSQL server on a port where nothing listens (TCP; nothing is sent anywhere else).
        closed = free_tcp_port(SERVER_IP)
        # Exit 1 for a store that cannot be used, 64 (a usage error) for a value that is no store.
        cases = ((garbage, r"damaged or not a natchat store", 1),
                 (os.path.join(plain_file, "natchat.sqlite"), r"cannot open the store", 1),
                 ("mysql://natchat@localhost/natchat", r"--store mysql://\.\.\.: not a store natchat knows", 64),
                 (f"postgres://natchat@{SERVER_IP}:{closed}/natchat",
                  rf"cannot open the store postgres://natchat@{SERVER_IP}:{closed}/natchat: \S", 1))
        for store, message, status in cases:
            port = free_udp_port((SERVER_IP,))
            run = subprocess.run([binary_path(SERVER_BIN), "--bind", SERVER_IP, "--port", str(port),
                                  "--alt-port", "0", "--store", store],
                                 capture_output=True, text=True, timeout=60)
            self.assertEqual(run.returncode, status, f"--store {store}: {run.stdout}\n{run.stderr}")
            self.assertRegex(run.stderr, message, f"--store {store}")
            self.assertNotIn("server program starts", run.stdout)
            self.assertNotIn("Fatal error", run.stderr)
        with open(garbage, "rb") as f:
            self.assertEqual(f.read(), content, "the damaged store file was changed")

    def one_shot(self, cid, ip, port, srv, home, *flags):
        """natchat with a one-shot flag (--release-id, --rotate-identity): its exit status and output."""
        proc = self.g.start_client("natchat", cid, ip, port, srv, home=home, extra=list(flags))
        rc = proc.wait_exit(timeout=40)
        return rc, proc

    def test_owner_rotates_then_releases_the_claim(self):
        srv = self.g.start_server("natchat", bind=SERVER_IP)
        port = free_udp_port((ALICE_IP, MALLORY_IP))
        alice = self.client("alice", ALICE_IP, srv, "alice", port)
        first = alice.wait_registered()
        old_fp = re.search(r"key (\S+)$", first.text).group(1)
        self.assertEqual(alice.exit(), 0)
        identity = os.path.join(self.g.home("alice"), ".config", "natchat", "identity")
        with open(identity) as f:
            old_identity = f.read()

        rc, rotate = self.one_shot("alice", ALICE_IP, port, srv, "alice", "--rotate-identity")
        self.assertEqual(rc, 0, rotate.describe())
        hit = rotate.wait_for_line(r"\* your ID is now claimed by the new key (\S+)")
        new_fp = hit.group(1)
        self.assertNotEqual(new_fp, old_fp)
        with open(identity + ".old") as f:
            self.assertEqual(f.read(), old_identity)
        self.assertEqual(os.stat(identity).st_mode & 0o777, 0o600)

        # The old key (in another home, as a copy) is refused; the new one registers.
        old_home = self.g.home("alice-old")
        os.makedirs(os.path.join(old_home, ".config", "natchat"), exist_ok=True)
        with open(os.path.join(old_home, ".config", "natchat", "identity"), "w") as f:
            f.write(old_identity)
        os.chmod(os.path.join(old_home, ".config", "natchat", "identity"), 0o600)
        stale = self.client("alice", MALLORY_IP, srv, "alice-old", port)
        stale.wait_for_line(re.escape("From server [ID alice is claimed by another key]"))
        self.assertEqual(stale.wait_exit(), 2, stale.describe())
        alice = self.client("alice", ALICE_IP, srv, "alice", port)
        renewed = alice.wait_registered()
        self.assertTrue(renewed.text.endswith(f"key {new_fp}"), renewed.text)
        self.assertEqual(alice.exit(), 0)

        rc, release = self.one_shot("alice", ALICE_IP, port, srv, "alice", "--release-id")
        self.assertEqual(rc, 0, release.describe())
        release.wait_for_line(re.escape("* the claim on your ID was released: any key may register it now"))
        mallory = self.client("alice", MALLORY_IP, srv, "mallory", port)
        mallory.wait_registered()
        self.assertEqual(mallory.exit(), 0)

    def test_show_list_marks_claimed_peers(self):
        srv = self.g.start_server("natchat", bind=SERVER_IP)
        port = free_udp_port((ALICE_IP, MALLORY_IP))
        alice = self.client("alice", ALICE_IP, srv, "alice", port)
        alice.wait_registered()
        bob = self.client("bob", MALLORY_IP, srv, "bob", port)
        bob.wait_registered()
        bob.wait_joined(alice)
        today = time.strftime("%Y-%m-%d", time.gmtime())
        since = bob.mark()
        bob.send_line("@show_list")
        bob.wait_for_line(re.escape(f"alice {alice.endpoint} ") + r".* \(claimed since " + today + r"\)", since=since)

    def test_memory_store_keeps_nothing(self):
        srv = self.g.start_server("natchat", bind=SERVER_IP, state="memory-state", extra=["--store", "memory"])
        port = free_udp_port((ALICE_IP, MALLORY_IP))
        alice = self.client("alice", ALICE_IP, srv, "alice", port)
        alice.wait_registered()
        self.assertEqual(alice.exit(), 0)
        mallory = self.client("alice", MALLORY_IP, srv, "mallory", port)
        mallory.wait_registered()
        self.assertEqual(mallory.exit(), 0)
        self.assertEqual(os.listdir(self.g.home("memory-state")), [".cache", ".config", ".local"])


if __name__ == "__main__":
    unittest.main()
