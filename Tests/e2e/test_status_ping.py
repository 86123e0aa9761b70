"""@status, @ping and natchat --status end to end on the NAT testbed (needs root).

test_status_and_ping_on_every_path: c1 and c2 behind one symmetric NAT C, d1 behind
symmetric NAT D, pub on the public segment; the server on srv.  c1 chats with c2, pub and
d1, then its @status shows each peer on the path expected, with its reason:

* c2   private 10.0.0.3:10081      (the same NAT: a private candidate answered)
* pub  direct 203.0.113.20:10081   (symmetric to a public host: peer-reflexive)
* d1   relayed (symmetric NAT on both sides)

@ping answers on each path and names it; `natchat --status` run in c1's namespace (another
process) prints the same lines (round trips and ages aside); without --id and with several
shells running it says so and exits 1, as it does for an ID no shell runs.

Every process is started through the Testbed (killed by PID at close, even on failure);
every wait is bounded; the status sockets live in a temporary XDG_RUNTIME_DIR removed at
the end.  About 20 s.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'testbed'))

import test_nat_support as S  # noqa: E402
from testbed import Testbed  # noqa: E402

NATS = {'C': 'symmetric', 'D': 'symmetric'}
HOSTS = {'c1': ('C', '10.0.0.2'), 'c2': ('C', '10.0.0.3'), 'd1': ('D', '10.0.0.2')}
PUBLIC = {'srv': '203.0.113.10', 'pub': '203.0.113.20'}
CLIENTS = ['c1', 'c2', 'd1', 'pub']

DELIVERY_TIMEOUT = 20.0
PATH_TIMEOUT = 15.0
PING_TIMEOUT = 5.0          # the shell gives up after 3 s and says so
STATUS_TIMEOUT = 10.0       # natchat --status answers within 3 s or exits 1

NUMBER = re.compile(r'\d+(?:\.\d+)? (?:ms|s)')


def normalized(line):
    """A status line without its numbers (round trips, ages) and with single spaces."""
    return ' '.join(NUMBER.sub('#', line).split())


class StatusPingTest(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        S.require_natchat(self)
        self.runtime = tempfile.mkdtemp(prefix='natchat-status-')
        os.chmod(self.runtime, 0o700)
        self.saved_runtime = os.environ.get('XDG_RUNTIME_DIR')
        os.environ['XDG_RUNTIME_DIR'] = self.runtime     # inherited by every natchat started

    def tearDown(self):
        if self.saved_runtime is None:
            os.environ.pop('XDG_RUNTIME_DIR', None)
        else:
            os.environ['XDG_RUNTIME_DIR'] = self.saved_runtime
        shutil.rmtree(self.runtime, ignore_errors=True)

    def status_lines(self, client):
        """What @status printed (the lines before the sync marker)."""
        since = client.mark()
        client.send('@status')
        end = client.sync()
        return client.texts(since)[:end - since]

    def run_status(self, tb, host, *args):
        """natchat --status ARGS in host's namespace: (exit status, stdout lines, stderr)."""
        proc = tb.popen(host, [S.binary('natchat'), '--status', *args],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=STATUS_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(timeout=5)
            self.fail(f'natchat --status {args} did not exit within {STATUS_TIMEOUT}s')
        return proc.returncode, out.decode('utf-8', 'replace').splitlines(), err.decode('utf-8', 'replace')

    def test_status_and_ping_on_every_path(self):
        with Testbed(nats=NATS, hosts=HOSTS, public_hosts=PUBLIC) as tb:
            server = S.Server(tb)
            clients = S.start_clients(tb, CLIENTS)
            c1 = clients['c1']
            nodes = [server] + list(clients.values())
            time.sleep(1.0)         # the NAT kinds reach the server with the next keep-alive

            # the status sockets: owner-only folder and sockets, one per shell
            folder = os.path.join(self.runtime, 'natchat')
            self.assertEqual(os.stat(folder).st_mode & 0o777, 0o700)
            self.assertEqual(sorted(os.listdir(folder)), sorted(f'{h}.sock' for h in CLIENTS))
            self.assertEqual(os.stat(os.path.join(folder, 'c1.sock')).st_mode & 0o777, 0o600)

            # before any chat: every peer relayed, not tried yet
            before = self.status_lines(c1)
            for peer in ('c2', 'd1', 'pub'):
                self.assertTrue(any(re.fullmatch(re.escape(peer) + r' +relayed +rtt - +heard never +\(not tried yet\)', l)
                                    for l in before), f'{peer} not "not tried yet" in:\n' + '\n'.join(before))

            mark = c1.mark()
            for peer in ('c2', 'pub', 'd1'):
                c1.chat(peer, f'hello {peer}')
            for peer in ('c2', 'pub', 'd1'):
                if S.wait_delivered(c1, peer, DELIVERY_TIMEOUT, since=mark) is None:
                    self.fail(f'chat to {peer} not delivered\n' + S.evidence(*nodes))
            for peer, kind in (('c2', 'private'), ('pub', 'direct')):
                if c1.wait(r'\* path to ' + peer + ': ' + kind + ' .*', PATH_TIMEOUT, since=mark) is None:
                    self.fail(f'no {kind} path to {peer}\n' + S.evidence(*nodes))

            status = self.status_lines(c1)
            text = '\n'.join(status)
            print('\n@status of c1:\n' + text, file=sys.stderr)
            self.assertRegex(status[0], r'^c1  key \S+  natchat/2$')
            self.assertRegex(status[1], r'^  server 203\.0\.113\.10:10080  rtt \d+\.\d ms$')
            self.assertRegex(status[2], r'^  public ' + re.escape(tb.public_ip('c1')) + r':\d+  NAT endpoint-dependent mapping '
                             r'\(symmetric\)$')
            rows = {line.split()[0]: line for line in status[3:]}
            self.assertEqual(sorted(rows), ['c2', 'd1', 'pub'], text)
            self.assertRegex(rows['c2'], r'^c2 +private 10\.0\.0\.3:10081 +rtt \d+\.\d ms +heard \d+(\.\d)? s ago$')
            self.assertRegex(rows['pub'], r'^pub +direct 203\.0\.113\.20:10081 +rtt \d+\.\d ms +heard \d+(\.\d)? s ago$')
            self.assertRegex(rows['d1'], r'^d1 +relayed +rtt - +heard \d+(\.\d)? s ago +\(symmetric NAT on both sides\)$')

            # @ping on each path, answered on it (several in flight at once)
            mark = c1.mark()
            for peer in ('c2', 'pub', 'd1'):
                c1.send(f'@ping {peer}')
            expected = {'c2': r'private 10\.0\.0\.3:10081', 'pub': r'direct 203\.0\.113\.20:10081', 'd1': 'relay'}
            for peer, via in expected.items():
                hit = c1.wait(r'pong from ' + peer + ' via ' + via + r' in \d+\.\d ms', PING_TIMEOUT, since=mark)
                if hit is None:
                    self.fail(f'no pong from {peer} via {via}\n' + c1.describe(since=mark))
            self.assertEqual(c1.count(r'no answer from .*', since=mark), 0, c1.describe(since=mark))

            # the relay's round trip is known once pinged
            status = self.status_lines(c1)
            print('\n@status of c1 after @ping:\n' + '\n'.join(status), file=sys.stderr)
            self.assertRegex(next(l for l in status if l.startswith('d1 ')),
                             r'^d1 +relayed +rtt \d+\.\d ms +heard \d+(\.\d)? s ago +\(symmetric NAT on both sides\)$')

            # natchat --status from another process in c1's namespace: the same lines
            code, lines, err = self.run_status(tb, 'c1', '--id', 'c1')
            self.assertEqual(code, 0, err)
            self.assertEqual([normalized(l) for l in lines], [normalized(l) for l in status],
                             'natchat --status:\n' + '\n'.join(lines))
            # several shells and no --id; an ID nobody runs
            code, lines, err = self.run_status(tb, 'c1')
            self.assertEqual((code, lines), (1, []))
            self.assertIn('several natchat shells are running (c1, c2, d1, pub); choose one with --id', err)
            code, lines, err = self.run_status(tb, 'c1', '--id', 'nobody')
            self.assertEqual((code, lines), (1, []))
            self.assertIn('no natchat shell is running for nobody', err)

            # @exit removes the socket
            c1.send('@exit')
            deadline = time.monotonic() + 10
            while os.path.exists(os.path.join(folder, 'c1.sock')) and time.monotonic() < deadline:
                time.sleep(0.1)
            self.assertFalse(os.path.exists(os.path.join(folder, 'c1.sock')), 'c1.sock left behind at exit')


if __name__ == '__main__':
    unittest.main()
