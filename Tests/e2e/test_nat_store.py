"""ID claims across real NATs and a server restart (issue 15), on the namespace testbed
(Tests/testbed, needs root; skipped loudly without it).

test_claim_survives_a_restart_behind_nats: alice (a1, behind cone NAT A) registers with a
server on an SQLite store and leaves; the server is stopped with SIGTERM (its writer
flushes) and started again on the same file; an impostor with another key (b1, behind cone
NAT B) registers as alice and is refused ("From server [ID alice is claimed by another
key]", exit status 2, no server line for it); alice, from behind her NAT with her key,
registers again. The store's folder is a temporary one, removed at the end; every process
runs in a testbed namespace and is killed by PID when the testbed closes.
"""

import os
import re
import shutil
import signal
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, '..', 'testbed'))

import test_nat_support as S  # noqa: E402
from testbed import Testbed  # noqa: E402

NATS = {'A': 'cone', 'B': 'cone'}
HOSTS = {'a1': ('A', '192.168.1.2'), 'b1': ('B', '192.168.1.2')}
REFUSAL = 'From server [ID alice is claimed by another key]'


def stop(node, sig=signal.SIGTERM, timeout=15):
    """Signal a testbed process by PID and reap it; its exit status."""
    if node.proc.poll() is None:
        os.kill(node.proc.pid, sig)
    return node.proc.wait(timeout)


class NatStoreTest(unittest.TestCase):
    def setUp(self):
        S.require_natchat(self)

    def test_claim_survives_a_restart_behind_nats(self):
        tb = self.enterContext(Testbed(nats=NATS, hosts=HOSTS, public_hosts={'srv': S.SERVER_IP}))
        folder = tempfile.mkdtemp(prefix='natchat-nat-store-')
        self.addCleanup(shutil.rmtree, folder, True)
        store = ['--store', os.path.join(folder, 'server', 'natchat-server.sqlite')]
        server = S.Server(tb, extra=store)

        alice = S.Client(tb, 'a1', cid='alice', extra=['--identity', os.path.join(folder, 'alice.key')])
        if alice.wait_registered(20) is None:
            self.fail('alice did not register\n' + S.evidence(server, alice))
        alice.send('@exit')
        self.assertEqual(alice.proc.wait(15), 0, S.evidence(server, alice))

        self.assertEqual(stop(server), 0, S.evidence(server))
        server = S.Server(tb, extra=store)
        impostor = S.Client(tb, 'b1', cid='alice', extra=['--identity', os.path.join(folder, 'mallory.key')])
        if impostor.wait(re.escape(REFUSAL), 20) is None:
            self.fail('the impostor was not refused\n' + S.evidence(server, impostor))
        self.assertEqual(impostor.proc.wait(15), 2, S.evidence(server, impostor))
        self.assertIsNone(server.wait(r'alice ' + S.IPPORT, 0.5), S.evidence(server, impostor))

        alice = S.Client(tb, 'a1', cid='alice', extra=['--identity', os.path.join(folder, 'alice.key')])
        if alice.wait_registered(20) is None:
            self.fail('alice did not register again after the restart\n' + S.evidence(server, alice))
        if server.wait(r'alice ' + S.IPPORT, 10) is None:
            self.fail('no server line for alice\n' + S.evidence(server, alice))


if __name__ == '__main__':
    unittest.main()
