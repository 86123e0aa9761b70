"""Hard-to-easy punching by port probing, end to end on the real-NAT testbed (needs root).

* test_symmetric_to_cone_goes_direct_by_probing: c1 behind a port-randomising NAT
  (`symmetric`: MASQUERADE --random-fully) and a1 behind a port-restricted `cone`. The
  relay carries chat at once; port probing (c1 opens 256 sockets towards a1, a1 probes
  random ports of c1's NAT at 100/s) gives both a `direct (probed)` path within
  PROBE_BOUND; then chat goes both ways, each text shown once, by its addressee only, and
  @show_list / @status / @whois say `direct (probed)`; the logs say what was tried.
* test_symmetric_pair_stays_relayed: c1 and d1 both behind symmetric NATs: relayed, and
  @status says why (the arithmetic gives hours); nothing is probed.

That a pong from a wrong host (another address, another port, another socket, an unknown
transaction) never selects a probed path is checked at unit level
(Tests/HolePunchTests/PortProbeTests.swift, PathAgentProbingTests).

Skips loudly without root (the testbed needs network namespaces and iptables).
"""

import os
import re
import sys
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'testbed'))

import test_nat_support as S  # noqa: E402
from testbed import Testbed  # noqa: E402

NATS = {'A': 'cone', 'C': 'symmetric', 'D': 'symmetric'}
HOSTS = {'a1': ('A', '192.168.1.2'), 'c1': ('C', '10.0.0.2'), 'd1': ('D', '10.0.0.2')}
PUBLIC = {'srv': '203.0.113.10'}

PROBE_BOUND = 30.0          # direct (probed) on both sides within this after the first chat
DELIVERY_TIMEOUT = 15.0
SETTLE = 2.0
INFO = ('--log-level', 'info')


def _log(tb, client):
    try:
        return tb.read_log(client.proc)
    except OSError:
        return ''


class HardNatTest(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        S.require_natchat(self)

    def _exactly_once(self, clients, sender, receiver, text, nodes):
        counts = S.shown_counts(clients, sender, text)
        shown = counts[receiver][0]
        leaks = {h: n for h, (_, n) in counts.items() if h != receiver and n}
        if shown != 1 or leaks:
            self.fail(f'{sender} -> {receiver} {text!r}: shown {shown}x by {receiver}, also by {leaks}\n'
                      + S.evidence(*nodes))

    def test_symmetric_to_cone_goes_direct_by_probing(self):
        with Testbed(nats=NATS, hosts=HOSTS, public_hosts=PUBLIC) as tb:
            server = S.Server(tb)
            clients = S.start_clients(tb, ['a1', 'c1'], extra=INFO)
            a1, c1 = clients['a1'], clients['c1']
            nodes = [server, a1, c1]
            time.sleep(1.0)     # the NAT kinds reach the server with the next keep-alive
            tag = uuid.uuid4().hex[:6]
            marks = {h: c.mark() for h, c in clients.items()}

            # the relay carries the first chat at once, both ways
            first = {('a1', 'c1'): f'relay-{tag}-a1', ('c1', 'a1'): f'relay-{tag}-c1'}
            t0 = time.monotonic()
            for (s, r), text in first.items():
                clients[s].chat(r, text)
            for (s, r), text in first.items():
                if S.wait_delivered(clients[s], r, DELIVERY_TIMEOUT, since=marks[s]) is None:
                    self.fail(f'{s} -> {r} not delivered through the relay\n' + S.evidence(*nodes))

            # both sides reach direct (probed), without anyone doing anything
            hits = {}
            for me, other in (('a1', 'c1'), ('c1', 'a1')):
                hit = clients[me].wait(r'\* path to ' + other + r': direct \(probed\) (' + S.IPPORT + ')',
                                       max(0.1, t0 + PROBE_BOUND - time.monotonic()), since=marks[me])
                if hit is None:
                    self.fail(f'{me}: no "direct (probed)" path to {other} within {PROBE_BOUND}s\n'
                              + S.evidence(*nodes) + '\n--- logs\n' + _log(tb, a1)[-3000:] + _log(tb, c1)[-3000:])
                hits[me] = hit
            elapsed = {me: round(hit[1] - t0, 2) for me, hit in hits.items()}
            print(f'\ndirect (probed) after {elapsed} s from the first chat', file=sys.stderr)
            # a1 (easy) talks to one of c1's NAT's ports; c1 (hard) to a1's one public mapping
            self.assertEqual(hits['a1'][3].group(1).split(':')[0], tb.public_ip('c1'))
            self.assertEqual(hits['c1'][3].group(1).split(':')[0], tb.public_ip('a1'))

            # chat both ways on the probed path: each shown once, by its addressee
            second = {('a1', 'c1'): f'direct-{tag}-a1', ('c1', 'a1'): f'direct-{tag}-c1'}
            marks2 = {h: c.mark() for h, c in clients.items()}
            for (s, r), text in second.items():
                clients[s].chat(r, text)
            for (s, r), text in second.items():
                if S.wait_delivered(clients[s], r, DELIVERY_TIMEOUT, since=marks2[s]) is None:
                    self.fail(f'{s} -> {r} not delivered on the probed path\n' + S.evidence(*nodes))
            time.sleep(SETTLE)
            for (s, r), text in list(first.items()) + list(second.items()):
                self._exactly_once(clients, s, r, text, nodes)
            # the second round came in on the direct path (the shell says which way)
            for (s, r), text in second.items():
                lines = [t for t in clients[r].texts(marks2[r]) if text in t]
                self.assertTrue(lines, f'{r} did not show {text!r}')

            # @show_list, @whois and @status say how the path was found
            for me, other in (('a1', 'c1'), ('c1', 'a1')):
                listed = clients[me].show_list()
                self.assertIn(other, listed, f'{me}: @show_list lacks {other}')
                self.assertTrue(S.path_ok(tb, other, 'probed', listed[other][1]),
                                f'{me}: @show_list says {listed[other][1]!r} for {other}')
                since = clients[me].mark()
                clients[me].send(f'@whois {other}')
                if clients[me].wait(r'\* ' + other + r': .*path direct \(probed\) ' + S.IPPORT + '.*', 10.0,
                                    since=since) is None:
                    self.fail(f'{me}: @whois {other} does not say direct (probed)\n' + clients[me].describe())
                since = clients[me].mark()
                clients[me].send('@status')
                if clients[me].wait(other + r' +direct \(probed\) ' + S.IPPORT + r' +rtt .*', 10.0,
                                    since=since) is None:
                    self.fail(f'{me}: @status does not say direct (probed) for {other}\n' + clients[me].describe())

            # the logs at info say what was tried
            log_c1, log_a1 = _log(tb, c1), _log(tb, a1)
            self.assertRegex(log_c1, r'probing a1: \d+ sockets towards ' + re.escape(tb.public_ip('a1')))
            self.assertRegex(log_a1, r'probing c1: random ports of ' + re.escape(tb.public_ip('c1')))
            m = re.search(r'probing c1: answered after (\d+) probes in ([\d.]+) s', log_a1)
            self.assertIsNotNone(m, 'a1 did not log its answered probe:\n' + log_a1[-3000:])
            print(f'a1 probed {m.group(1)} ports in {m.group(2)} s', file=sys.stderr)
            self.assertRegex(log_c1, r'probing a1: answered after \d+ probes in [\d.]+ s \(socket \d+\)')
            for node in nodes:
                self.assertTrue(node.alive(), f'{node.name} died\n' + node.describe())

    def test_symmetric_pair_stays_relayed(self):
        with Testbed(nats=NATS, hosts=HOSTS, public_hosts=PUBLIC) as tb:
            server = S.Server(tb)
            clients = S.start_clients(tb, ['c1', 'd1'], extra=INFO)
            c1, d1 = clients['c1'], clients['d1']
            nodes = [server, c1, d1]
            time.sleep(1.0)
            tag = uuid.uuid4().hex[:6]
            marks = {h: c.mark() for h, c in clients.items()}
            texts = {('c1', 'd1'): f'sym-{tag}-c1', ('d1', 'c1'): f'sym-{tag}-d1'}
            for (s, r), text in texts.items():
                clients[s].chat(r, text)
            for (s, r), text in texts.items():
                if S.wait_delivered(clients[s], r, DELIVERY_TIMEOUT, since=marks[s]) is None:
                    self.fail(f'{s} -> {r} not delivered through the relay\n' + S.evidence(*nodes))
            time.sleep(5.0)     # a probing attempt would have started by now
            for (s, r), text in texts.items():
                self._exactly_once(clients, s, r, text, nodes)
            for me, other in (('c1', 'd1'), ('d1', 'c1')):
                direct = clients[me].find_all(r'\* path to ' + other + r': (direct|private).*', since=marks[me])
                self.assertEqual(direct, [], f'{me} went direct with {other}')
                since = clients[me].mark()
                clients[me].send('@status')
                if clients[me].wait(other + r' +relayed +rtt .* +\(symmetric NAT on both sides\)', 10.0, since=since) is None:
                    self.fail(f'{me}: @status does not say why {other} is relayed\n' + clients[me].describe())
                self.assertNotRegex(_log(tb, clients[me]), r'probing ' + other + ':', f'{me} probed {other}')


if __name__ == '__main__':
    unittest.main()
