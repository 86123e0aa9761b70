"""What the loopback cluster tests share (test_cluster.py, test_cluster_outage.py): servers
of one cluster on 127.0.0.1 and a test database, and a chat checked to be shown once.

ClusterMixin goes before unittest.TestCase in a test class's bases; the class sets
`self.g` (a harness.ProcessGroup) and `self.db_url` in setUp (after `require_cluster`)."""

import re
import sys
import time
import uuid

import pg
from harness import CLIENT_BIN, SERVER_BIN, free_udp_port, require_binaries, require_loopback_aliases

SERVER_IP = "127.0.0.1"
SERVER_START = 30.0      # a debug server joining a fresh database on a busy machine
SETTLE = 1.0             # late duplicates would show up here
FINGERPRINT = re.compile(r"key ([0-9a-f]{2}(?::[0-9a-f]{2}){7})$")


class ClusterMixin:
    def require_cluster(self, ips):
        """Skips (loudly without PostgreSQL) unless the binaries, a test database and the
        loopback addresses `ips` are there."""
        require_binaries(self, SERVER_BIN, CLIENT_BIN)
        if not pg.available():
            sys.stderr.write("\n*** " + pg.UNAVAILABLE + " ***\n")
            self.skipTest(pg.UNAVAILABLE)
        require_loopback_aliases(self, ips)

    def server(self, name, port=None, alt_port=None):
        """natchat-server NAME on 127.0.0.1 and the test's database; waits until it serves
        and has logged its cluster name and address."""
        port = port or free_udp_port((SERVER_IP,))
        alt_port = alt_port or free_udp_port((SERVER_IP,))
        srv = self.g.start_server("natchat", bind=SERVER_IP, port=port, wait=False, state=f"state-{name}",
                                  extra=["--alt-port", alt_port, "--store", self.db_url, "--name", name])
        srv.alt_port = alt_port
        srv.cluster_name = name
        srv.wait_for_line(r"server program starts\.\.\.\.", timeout=SERVER_START)
        advertise = re.escape(f"advertise={SERVER_IP}:{port}")
        srv.wait_for_line(rf"(?=.*{advertise})(?=.*\bname={re.escape(name)}\b).*\bcluster\b",
                          stream="stderr", search=True, timeout=5)
        return srv

    def chat_once(self, sender, receiver, others=(), timeout=15.0):
        """sender @chat receiver; the text is shown once by receiver, acknowledged once,
        and shown by nobody else (checked after a sync and SETTLE). Returns the time to it."""
        text = f"{sender.cid}-to-{receiver.cid}-{uuid.uuid4().hex[:8]}"
        s_mark, r_mark = sender.mark(), receiver.mark()
        t0 = time.monotonic()
        sender.chat(receiver.cid, text)
        shown = receiver.wait_chat(sender.cid, text, since=r_mark, timeout=timeout)
        sender.wait_for_line(re.escape(f"* delivered to {receiver.cid}"), since=s_mark, timeout=timeout)
        took = receiver.line_time(shown.index) - t0
        time.sleep(SETTLE)
        receiver.sync()
        self.assertEqual(receiver.count(receiver.chat_regex(sender.cid, text), since=r_mark), 1,
                         f"{text!r} not shown exactly once by {receiver.cid}\n{self.g.describe()}")
        self.assertEqual(sender.count(re.escape(f"* delivered to {receiver.cid}"), since=s_mark), 1,
                         f"{sender.cid}: not one '* delivered to {receiver.cid}'\n{self.g.describe()}")
        for other in (sender, *others):
            self.assertEqual(other.count(".*" + re.escape(text) + ".*"), 0,
                             f"{text!r} shown by {other.cid}\n{self.g.describe()}")
        return took
