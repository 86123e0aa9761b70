"""The chat shell on a real pseudo-terminal: GNU readline's Tab completion of peer IDs
after `@chat ` and `@show_list `, and history recall, as a person at a terminal uses them.

The other end-to-end tests drive the client through a pipe, where readline is not used.
Here the client runs on a pty (os.openpty), keystrokes are written to the master side and
what the terminal shows is read back, escape sequences removed.
"""

import os
import re
import select
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (  # noqa: E402
    CLIENT_BIN,
    SERVER_BIN,
    ProcessGroup,
    binary_path,
    free_udp_port,
    kill_and_reap,
    require_binaries,
    require_loopback_aliases,
)

SERVER_IP = "127.0.0.1"
ALICE_IP, BOB_IP, BOBBY_IP = "127.0.0.2", "127.0.0.3", "127.0.0.4"
# Escape sequences, carriage returns and the bell readline rings on an ambiguous completion.
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\r|\x07")


class PtyClient:
    """A natchat client whose stdin, stdout and stderr are one pseudo-terminal."""

    def __init__(self, argv, env):
        self.master, slave = os.openpty()
        self.popen = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                      start_new_session=True, close_fds=True)
        os.close(slave)
        self.pid = self.popen.pid
        self._text = ""
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="pty-reader", daemon=True)
        self._reader.start()

    def _read(self):
        while True:
            try:
                ready, _, _ = select.select([self.master], [], [], 0.2)
                if not ready:
                    if self.popen.poll() is not None:
                        return
                    continue
                data = os.read(self.master, 4096)
            except OSError:  # EIO once the client has exited and closed the terminal
                return
            if not data:
                return
            with self._lock:
                self._text += ANSI.sub("", data.decode("utf-8", "replace"))

    def screen(self):
        with self._lock:
            return self._text

    def type(self, keys):
        os.write(self.master, keys.encode())

    def wait_for(self, regex, since=0, timeout=10.0):
        """The first match of regex in what the terminal showed after offset `since`."""
        pattern = re.compile(regex)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = pattern.search(self.screen(), since)
            if match:
                return match
            time.sleep(0.05)
        raise AssertionError(f"pty client: no {regex!r} within {timeout}s; the terminal showed:\n"
                             + repr(self.screen()[-3000:]))

    def stop(self):
        try:
            kill_and_reap(self.popen)
        finally:
            self._reader.join(timeout=2)
            try:
                os.close(self.master)
            except OSError:
                pass


class ShellOnAPtyTest(unittest.TestCase):
    def setUp(self):
        require_loopback_aliases(self, [SERVER_IP, ALICE_IP, BOB_IP, BOBBY_IP])
        require_binaries(self, SERVER_BIN, CLIENT_BIN)
        self.g = ProcessGroup()
        self.addCleanup(self.g.stop_all)

    def start_alice_on_a_pty(self, server, port):
        home = self.g.home("alice")
        env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=os.path.join(home, ".config"),
                   XDG_STATE_HOME=os.path.join(home, ".local/state"), XDG_CACHE_HOME=os.path.join(home, ".cache"),
                   TERM="xterm", INPUTRC="/dev/null")
        argv = [binary_path(CLIENT_BIN), "--id", "alice", "--server", server.bind, "--server-port", str(server.port),
                "--port", str(port), "--bind", ALICE_IP]
        alice = PtyClient(argv, env)
        self.addCleanup(alice.stop)
        return alice

    def test_tab_completes_peer_ids_after_chat_and_show_list(self):
        port = free_udp_port((ALICE_IP, BOB_IP, BOBBY_IP))
        server = self.g.start_server("natchat", bind=SERVER_IP)
        bob = self.g.start_client("natchat", "bob", BOB_IP, port, server, home="bob")
        bob.wait_registered()
        bobby = self.g.start_client("natchat", "bobby", BOBBY_IP, port, server, home="bobby")
        bobby.wait_registered()
        alice = self.start_alice_on_a_pty(server, port)
        alice.wait_for(r"\* registered as alice")
        alice.wait_for(r"\* bobby joined", timeout=10)

        # "@show_list b<Tab>": bob and bobby share "bob": readline completes to the common
        # prefix; a second Tab lists both; "b<Tab>y<Tab>" then reaches "bobby ".
        mark = len(alice.screen())
        alice.type("@show_list b\t")
        alice.wait_for(r"@show_list bob", since=mark)
        alice.type("\t\t")
        listing = alice.wait_for(r"bob\s+bobby", since=mark)
        alice.type("by\n")
        page = alice.wait_for(r"-- 1 of 1 starting with bobby --", since=listing.end())
        self.assertIn("bobby " + BOBBY_IP, alice.screen()[listing.end():page.end()])

        # "@chat bobb<Tab>" completes the whole ID and a space; the text goes to bobby.
        mark = len(alice.screen())
        alice.type("@chat bobb\thello from a terminal\n")
        alice.wait_for(r"@chat bobby hello from a terminal", since=mark)
        alice.wait_for(r"\* delivered to bobby", since=mark, timeout=15)
        bobby.wait_for_line(r"From alice \[hello from a terminal\]")

        # Tab after the peer ID (in the text) and after @show_list's page completes nothing.
        mark = len(alice.screen())
        alice.type("@chat bob b\t\x15")  # Ctrl-U clears the line again
        alice.type("@show_list bob 1 b\t\x15")
        time.sleep(0.5)
        typed = alice.screen()[mark:]
        self.assertNotIn("@chat bob bob", typed, "Tab in the message text must not complete a peer ID")
        self.assertNotIn("@show_list bob 1 bob", typed, "Tab after the page number must not complete")

        # History: Up arrow brings back the last line sent.
        mark = len(alice.screen())
        alice.type("\x1b[A")
        alice.wait_for(r"@chat bobby hello from a terminal", since=mark)
        alice.type("\x15@exit\n")
        alice.wait_for(r"\* bye", since=mark)
        self.assertEqual(alice.popen.wait(timeout=10), 0)


if __name__ == "__main__":
    unittest.main()
