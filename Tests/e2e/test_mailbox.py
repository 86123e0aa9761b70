"""The offline mailbox end to end (issue 15): real natchat-server and natchat processes on
loopback, the server on its default SQLite store (a per-test STATE_DIRECTORY).

1. test_queued_for_an_offline_peer_survives_a_restart: bob registers once (his key claims
   the ID) and leaves. alice's `@chat bob hello` is sealed to bob's key and queued:
   `* bob is offline: queued at the server (kept 7 days)`. The server is stopped (SIGTERM:
   the store writer flushes) and started again on the same store; the SQLite file (and its
   WAL) does not hold the text. bob registers and sees `From alice [hello] (sent DATE,
   queued)` exactly once (the server resends until bob's acknowledgement; a few seconds
   later there is still one), and alice, online again, sees `* delivered to bob`.
2. test_unclaimed_id_is_not_registered: an ID nobody claims still gives the seed's
   `There is no zed in registration list.`
"""

import os
import re
import signal
import sys
import time
import unittest
from datetime import datetime, timedelta, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (  # noqa: E402
    CLIENT_BIN,
    SERVER_BIN,
    ProcessGroup,
    free_udp_port,
    require_binaries,
    require_loopback_aliases,
)

SERVER_IP, ALICE_IP, BOB_IP = "127.0.0.1", "127.0.0.2", "127.0.0.3"
STORE_FILE = "natchat-server.sqlite"
TEXT = "hello"


class MailboxTest(unittest.TestCase):
    def setUp(self):
        require_loopback_aliases(self, [SERVER_IP, ALICE_IP, BOB_IP])
        require_binaries(self, SERVER_BIN, CLIENT_BIN)
        self.g = ProcessGroup()
        self.addCleanup(self.g.stop_all)

    def restart(self, server):
        """SIGTERM (the store writer flushes on the way out), then the same port and store."""
        server.signal(signal.SIGTERM)
        self.assertEqual(server.wait_exit(timeout=15), 0, server.describe())
        return self.g.start_server("natchat", bind=SERVER_IP, port=server.port)

    def store_bytes(self):
        """The SQLite file and its WAL (when there is one), as the server left them."""
        folder = self.g.home("server")
        data = b""
        for name in (STORE_FILE, STORE_FILE + "-wal"):
            try:
                with open(os.path.join(folder, name), "rb") as f:
                    data += f.read()
            except FileNotFoundError:
                self.assertNotEqual(name, STORE_FILE, "no store file")
        return data

    def test_queued_for_an_offline_peer_survives_a_restart(self):
        g = self.g
        srv = g.start_server("natchat", bind=SERVER_IP)
        port = free_udp_port((ALICE_IP, BOB_IP))

        # ---- bob claims his ID once, and leaves
        bob = g.start_client("natchat", "bob", BOB_IP, port, srv, home="bob")
        bob.wait_registered()
        self.assertEqual(bob.exit(), 0)

        # ---- alice's chat waits in the mailbox, sealed
        alice = g.start_client("natchat", "alice", ALICE_IP, port, srv, home="alice", keepalive=1)
        alice.wait_registered()
        before = datetime.now(timezone.utc).replace(second=0, microsecond=0)
        m = alice.mark()
        alice.chat("bob", TEXT)
        alice.wait_for_line(re.escape("* bob is offline: queued at the server (kept 7 days)"), since=m)
        alice.assert_no_line(r"There is no bob.*|\* NOT delivered.*", since=m)

        # ---- the server restarts on the same store; nothing in it is plaintext
        m = alice.mark()
        srv = self.restart(srv)
        stored = self.store_bytes()
        self.assertGreater(len(stored), 0)
        self.assertNotIn(TEXT.encode(), stored, "the store holds the message's text")
        # alice's session was lost with the server: she registers again (keep-alive 1 s).
        alice.wait_for_line(r"\* registered again as alice .*", since=m, timeout=20)

        # ---- bob comes back: the message, once; alice hears it was delivered
        m = alice.mark()
        bob = g.start_client("natchat", "bob", BOB_IP, port, srv, home="bob")
        bob.wait_registered()
        shown = bob.wait_for_line(re.escape(f"From alice [{TEXT}] (sent ") + r"(\d{4}-\d\d-\d\d \d\d:\d\d)"
                                  + re.escape(", queued)"))
        sent = datetime.strptime(shown.group(1), "%Y-%m-%d %H:%M").replace(tzinfo=timezone.utc)
        self.assertTrue(before <= sent <= datetime.now(timezone.utc) + timedelta(minutes=1),
                        f"sent {sent} is not the time alice typed it (about {before}, UTC)")
        alice.wait_for_line(re.escape("* delivered to bob"), since=m)
        time.sleep(4)  # the server resends every 2 s until it sees the acknowledgement
        self.assertEqual(bob.count(re.escape(f"From alice [{TEXT}]") + r".*"), 1, bob.describe())
        self.assertEqual(alice.count(re.escape("* delivered to bob"), since=m), 1, alice.describe())
        self.assertEqual(bob.exit(), 0)
        self.assertEqual(alice.exit(), 0)

    def test_unclaimed_id_is_not_registered(self):
        g = self.g
        srv = g.start_server("natchat", bind=SERVER_IP)
        alice = g.start_client("natchat", "alice", ALICE_IP, free_udp_port((ALICE_IP,)), srv, home="alice")
        alice.wait_registered()
        m = alice.mark()
        alice.chat("zed", "anyone?")
        alice.wait_for_line(re.escape("There is no zed in registration list."), since=m)
        alice.assert_no_line(r"\* zed is offline.*", since=m)
        self.assertEqual(alice.exit(), 0)


if __name__ == "__main__":
    unittest.main()
