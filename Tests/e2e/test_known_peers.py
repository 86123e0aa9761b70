"""Known peers end to end (issue 15): real natchat-server and natchat processes on loopback.

alice and bob chat; bob comes back with another identity; alice's shell warns with both
fingerprints, holds chat both ways until `@trust bob`, and then chat goes on. alice's
known_peers file is owner-only and holds bob's line. A known_peers file with a bad line
stops natchat at start, and the file is left as it was.

Every client runs with its own temporary HOME and XDG_STATE_HOME (the harness's homes).
"""

import os
import re
import stat
import sys
import unittest

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
FP = r"[0-9a-f]{2}(?::[0-9a-f]{2}){7}"
DATE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


class KnownPeersTest(unittest.TestCase):
    def setUp(self):
        require_loopback_aliases(self, [SERVER_IP, ALICE_IP, BOB_IP])
        require_binaries(self, SERVER_BIN, CLIENT_BIN)
        self.g = ProcessGroup()
        self.addCleanup(self.g.stop_all)

    def known_peers_path(self, home):
        return os.path.join(self.g.home(home), ".local", "state", "natchat", "known_peers")

    def wait_file_line(self, path, regex, timeout=10.0):
        """Waits until the file at path has a line matching regex (it is saved a second
        after a change, off the event loop); returns the match."""
        import time
        deadline = time.monotonic() + timeout
        text = None
        while time.monotonic() < deadline:
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except FileNotFoundError:
                text = None
            if text is not None:
                for line in text.splitlines():
                    m = re.fullmatch(regex, line)
                    if m:
                        return m
            time.sleep(0.1)
        self.fail(f"{path}: no line matching {regex!r} within {timeout}s; it holds:\n{text}\n"
                  f"{self.g.describe()}")

    def test_changed_key_is_held_until_trust(self):
        g = self.g
        # No store: with one, bob's first key claims his ID and the server refuses the second
        # (test_store); here the server lets another key register, as a hostile one would.
        srv = g.start_server("natchat", bind=SERVER_IP, extra=["--store", "memory"])
        server_name = f"{SERVER_IP}:{srv.port}"
        port = free_udp_port((ALICE_IP, BOB_IP))
        alice = g.start_client("natchat", "alice", ALICE_IP, port, srv, home="alice")
        alice.wait_registered()
        bob = g.start_client("natchat", "bob", BOB_IP, port, srv, home="bob")
        old_fp = bob.wait_registered().text.rsplit("key ", 1)[-1]
        self.assertRegex(old_fp, FP)
        alice.wait_joined(bob)

        # ---- a first chat each way: bob's key is pinned in alice's file
        m = alice.mark()
        alice.chat("bob", "hello bob")
        bob.wait_chat("alice", "hello bob")
        alice.wait_for_line(re.escape("* delivered to bob"), since=m)
        path = self.known_peers_path("alice")
        self.wait_file_line(path, re.escape(f"{server_name} bob {old_fp} ") + DATE + " " + DATE)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, "known_peers is not 0600")
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode), 0o700,
                         "the natchat state folder is not 0700")
        with open(path, encoding="utf-8") as f:
            self.assertTrue(f.readline().startswith("#"), "no # header line")

        # ---- bob leaves and comes back with another identity
        m = alice.mark()
        self.assertEqual(bob.exit(), 0)
        alice.wait_left(bob, "unregistered", since=m)
        bob2 = g.start_client("natchat", "bob", BOB_IP, port, srv, home="bob", extra=["--identity", "none"])
        new_fp = bob2.wait_registered().text.rsplit("key ", 1)[-1]
        self.assertNotEqual(new_fp, old_fp)
        warning = alice.wait_for_line(
            re.escape(f"* WARNING: bob's key changed: pinned {old_fp}, now {new_fp}. Chat with bob is held; "
                      "check the new fingerprint with bob out of band, then @trust bob"), since=m)
        bob2.wait_joined(alice)

        # ---- held: alice's chat to bob is refused, bob's chat to alice is not shown
        alice.chat("bob", "held message")
        alice.wait_for_line(re.escape('* NOT sent to bob: "held message" (chat with bob is held: its key changed; '
                                      "@whois bob, then @trust bob)"), since=warning.index)
        mb = bob2.mark()
        bob2.chat("alice", "from the new bob")
        alice.wait_for_line(re.escape("* a message from bob was not shown: chat with bob is held "
                                      "(its key changed; @whois bob, then @trust bob)"), since=warning.index)
        alice.send_line("@whois bob")
        alice.wait_for_line(re.escape(f"* bob: key {old_fp}, first seen ") + DATE + ", last seen " + DATE
                            + r"; path .+", since=warning.index)
        alice.wait_for_line(re.escape(f"* bob is HELD: it showed key {new_fp} instead; check it with bob out of "
                                      "band, then @trust bob"), since=warning.index)
        alice.sync()
        alice.assert_no_line(re.escape("From bob [from the new bob]"), msg="(shown while held)")
        bob2.assert_no_line(re.escape("From alice [held message]"), msg="(sent while held)")
        bob2.assert_no_line(re.escape("* delivered to alice"), since=mb, msg="(acknowledged while held)")

        # ---- @trust bob: the new key is pinned; bob's retransmission is shown, and chat goes on
        m = alice.mark()
        alice.send_line("@trust bob")
        alice.wait_for_line(re.escape(f"* bob's key {new_fp} is trusted (was {old_fp}); chat with bob goes on"), since=m)
        alice.wait_chat("bob", "from the new bob", since=m)
        bob2.wait_for_line(re.escape("* delivered to alice"), since=mb)
        alice.chat("bob", "after trust")
        bob2.wait_chat("alice", "after trust")
        alice.wait_for_line(re.escape("* delivered to bob"), since=m)
        self.assertEqual(alice.exit(), 0)
        self.wait_file_line(path, re.escape(f"{server_name} bob {new_fp} ") + DATE + " " + DATE)
        with open(path, encoding="utf-8") as f:
            self.assertNotIn(old_fp, f.read(), "the old pin is still in the file")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual([n for n in os.listdir(os.path.dirname(path)) if ".tmp" in n], [],
                         "a temporary file was left beside known_peers")

    def test_bad_file_refuses_to_start(self):
        g = self.g
        srv = g.start_server("natchat", bind=SERVER_IP)
        path = self.known_peers_path("alice")
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        text = ("# natchat known peers\n"
                f"{SERVER_IP}:{srv.port} bob 0f:4a:44:bc:e7:a7:40:08 2026-05-01T10:00:00Z 2026-05-01T10:00:00Z\n"
                "bob's key is the one he read me on the phone\n")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(path, 0o600)
        port = free_udp_port((ALICE_IP,))
        alice = g.start_client("natchat", "alice", ALICE_IP, port, srv, home="alice")
        self.assertEqual(alice.wait_exit(), 1)
        alice.wait_for_line(re.escape(f"natchat: known peers file {path}, line 3: expected 5 fields") + ".*--known-peers none.*")
        alice.assert_no_line(r"\* registered as .*")
        with open(path, encoding="utf-8") as f:
            self.assertEqual(f.read(), text, "the file was changed")


if __name__ == "__main__":
    unittest.main()
