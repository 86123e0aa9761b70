"""Two servers on one PostgreSQL database (issue 16) across real NATs, on the namespace
testbed (Tests/testbed; needs root and the test PostgreSQL, skipped loudly without either).

test_two_servers_across_nats_and_a_server_death: server a on srv (203.0.113.10) and server b on
srv2 (203.0.113.11), both on one fresh database through its Unix socket (a namespace cannot
reach the root namespace's loopback). Clients: a1 and a2 behind cone NAT A (a same-NAT
pair), b1 behind cone NAT B, c1 behind symmetric NAT C. a1 and b1 live on a, a2 and c1 on
b; each client's --server list puts its home first. Each registers with its home (the
home prints its registration line), learns its NAT kind and sees the three others join.
One @chat per ordered pair (12), all at once: each text shown exactly once, by its
addressee only, and acknowledged once. The paths are printed (not asserted): a1 <-> b1
stays relayed until the failover, because a1 (to srv) and a2 (to srv2) both get NAT A's
public port 10081, and MASQUERADE then maps a1 to another port toward b1 (not
endpoint-independent), so the punch cannot work and natchat rightly relays.

Then a is killed (SIGKILL): a1 and b1 print "* server 203.0.113.10:10080 is not
answering; now registered with 203.0.113.11:10080" within 40 s (times printed), no
client shows a1 or b1 leaving, and the 10 ordered pairs that include a1 or b1 chat again,
each text shown once and acknowledged once.
"""

import os
import re
import signal
import sys
import time
import unittest
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, '..', 'testbed'))

import pg  # noqa: E402
import test_nat_support as S  # noqa: E402
from testbed import Testbed  # noqa: E402

NATS = {'A': 'cone', 'B': 'cone', 'C': 'symmetric'}
HOSTS = {
    'a1': ('A', '192.168.1.2'),
    'a2': ('A', '192.168.1.3'),
    'b1': ('B', '192.168.1.2'),
    'c1': ('C', '10.0.0.2'),
}
PUBLIC = {'srv': '203.0.113.10', 'srv2': '203.0.113.11'}
SERVER_OF = {'srv': 'a', 'srv2': 'b'}
HOME = {'a1': 'srv', 'b1': 'srv', 'a2': 'srv2', 'c1': 'srv2'}
CLIENTS = list(HOSTS)

START_TIMEOUT = 30.0        # a server joining the database, on a busy machine
UP_TIMEOUT = 30.0           # every client registered, classified and seeing the others
DELIVERY_TIMEOUT = 25.0     # every chat acknowledged within this (from the last @chat)
FAILOVER_BOUND = 40.0       # keep-alive timeout (30 s) + one interval
SETTLE = 3.0                # late duplicates would show up here
PATH_WAIT = 10.0            # for the direct/private path lines (printed, not asserted)


def endpoint(host):
    return f'{PUBLIC[host]}:{S.SERVER_PORT}'


def server_list(home):
    """--server for a client at home: its home first, then the other."""
    return ','.join(endpoint(h) for h in [home] + [h for h in PUBLIC if h != home])


def left_regex(cid):
    return r'\* ' + re.escape(cid) + r' (?:is unregistered|is off-line|left)\b.*'


class NatClusterTest(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        S.require_natchat(self)
        if not pg.available():
            print('\n*** ' + pg.UNAVAILABLE + ' ***', file=sys.stderr, flush=True)
            self.skipTest(pg.UNAVAILABLE)
        tcp, self.socket_url = pg.fresh_database('natcluster')
        self.addCleanup(pg.drop, pg.name_of(tcp))
        if self.socket_url is None:
            self.skipTest('PostgreSQL tests across namespaces need NATCHAT_TEST_POSTGRES_SOCKET_DIR '
                          'and NATCHAT_TEST_POSTGRES_PORT (the Unix socket): skipped')

    def exchange(self, clients, pairs, phase):
        """One @chat per ordered pair, all at once; returns a list of failures (each text
        shown once by its addressee only, one '* delivered to', no NOT delivered)."""
        tag = uuid.uuid4().hex[:6]
        texts = {(s, r): f'{phase}-{tag}-{s}-to-{r}' for s, r in pairs}
        marks = {h: c.mark() for h, c in clients.items()}
        t0 = time.monotonic()
        for (s, r), text in texts.items():
            clients[s].chat(r, text)
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        acks = {}
        for (s, r) in texts:
            hit = S.wait_delivered(clients[s], r, max(0.1, deadline - time.monotonic()), since=marks[s])
            acks[(s, r)] = None if hit is None else hit[1] - t0
        for (s, r), text in texts.items():
            S.wait_shown(clients[r], s, text, max(0.1, deadline - time.monotonic()), since=marks[r])
        time.sleep(SETTLE)
        for c in clients.values():
            c.sync()
        failures = []
        for (s, r), text in texts.items():
            counts = S.shown_counts(clients, s, text)
            shown, anywhere = counts[r]
            leaks = {h: n for h, (_, n) in counts.items() if h != r and n}
            n_ack = clients[s].count(re.escape(f'* delivered to {r}'), since=marks[s])
            not_deliv = clients[s].count(re.escape(f'* NOT delivered to {r}: "{text}"'), since=marks[s])
            where = f'{phase} {s} -> {r} ({text!r})'
            if shown != 1:
                failures.append(f'{where}: shown {shown}x by {r} (expected exactly once)')
            if anywhere != shown:
                failures.append(f'{where}: {r} printed the text in {anywhere - shown} other line(s)')
            if leaks:
                failures.append(f'{where}: also shown by {leaks}')
            if n_ack != 1:
                failures.append(f'{where}: {s} printed "* delivered to {r}" {n_ack}x (expected 1)')
            if not_deliv:
                failures.append(f'{where}: {s} printed NOT delivered')
        acked = [t for t in acks.values() if t is not None]
        print(f'  {phase}: {len(texts)} chats, {len(acked)} acknowledged, slowest ack '
              f'{max(acked) if acked else float("nan"):.2f} s', flush=True)
        return failures

    @staticmethod
    def paths(tb, clients, pairs, since):
        """The path of each pair in the sender's @show_list, after waiting (bounded, PATH_WAIT
        in all) for the pairs expected direct or private to print such a path line."""
        deadline = time.monotonic() + PATH_WAIT
        for s, r in pairs:
            if S.expected_path(tb, s, r) != 'relayed':
                clients[s].wait(r'\* path to ' + re.escape(r) + r': (direct|private) .*',
                                max(0.1, deadline - time.monotonic()), since=since[s])
        lines = []
        for s, r in pairs:
            got = clients[s].show_list().get(r, (None, None))[1]
            if got is not None:
                got = re.sub(r' \(claimed since [^)]*\)$', '', got)
            want = S.expected_path(tb, s, r)
            ok = got is not None and S.path_ok(tb, r, want, got)
            lines.append(f'    {s:>3} -> {r:<3} {str(got):<32} expected {want:<8} {"ok" if ok else "DIFFERENT"}')
        return lines

    def test_two_servers_across_nats_and_a_server_death(self):
        t_start = time.monotonic()
        tb = self.enterContext(Testbed(nats=NATS, hosts=HOSTS, public_hosts=PUBLIC))
        servers = {}
        for host, name in SERVER_OF.items():
            servers[host] = S.Server(tb, host, store=self.socket_url, name=f'server-{name}',
                                     extra=['--name', name], start_timeout=START_TIMEOUT)
        clients = {h: S.Client(tb, h, server_ip=server_list(HOME[h])) for h in CLIENTS}
        nodes = list(servers.values()) + list(clients.values())

        # up: registered with its home, NAT kind, everyone else joined
        deadline = time.monotonic() + UP_TIMEOUT
        problems = []
        for h, c in clients.items():
            left = lambda: max(0.1, deadline - time.monotonic())  # noqa: E731
            reg = c.wait_registered(left())
            if reg is None:
                problems.append(f'{h}: no "* registered as" line')
                continue
            if servers[HOME[h]].wait(re.escape(f'{h} {reg[3].group(1)}'), left()) is None:
                problems.append(f'{h}: its home {HOME[h]} printed no registration line for {reg[3].group(1)}')
            nat = c.wait_nat(left())
            want = S.NAT_TEXT[tb.nat_kind(tb.nat_of(h))]
            if nat is None or nat[3].group(1) != want:
                problems.append(f'{h}: NAT line {nat and nat[2]!r}, expected {want!r}')
            for o in clients:
                if o != h and c.wait(r'\* ' + re.escape(o) + r' joined \(.*', left()) is None:
                    problems.append(f'{h}: never saw "* {o} joined"')
        if problems:
            self.fail('clients did not come up: ' + '; '.join(problems) + '\n' + S.evidence(*nodes))
        t_up = time.monotonic()
        print(f'\n  up: 2 servers and 4 clients in {t_up - t_start:.1f} s', flush=True)

        all_pairs = [(s, r) for s in CLIENTS for r in CLIENTS if s != r]
        since = {h: c.mark() for h, c in clients.items()}
        failures = self.exchange(clients, all_pairs, 'before')
        print('  paths before the server death (sender @show_list):\n'
              + '\n'.join(self.paths(tb, clients, all_pairs, since)), flush=True)
        if failures:
            self.fail(f'{len(failures)} failure(s) before the server death:\n  ' + '\n  '.join(failures)
                      + '\n\n' + S.evidence(*nodes, tail=120))

        # server a dies
        moved = [h for h in CLIENTS if HOME[h] == 'srv']
        marks = {h: c.mark() for h, c in clients.items()}
        os.kill(servers['srv'].proc.pid, signal.SIGKILL)
        t_kill = time.monotonic()
        servers['srv'].proc.wait(10)
        line = re.escape(f'* server {endpoint("srv")} is not answering; now registered with {endpoint("srv2")}')
        times = {}
        for h in moved:
            hit = clients[h].wait(line, max(0.1, t_kill + FAILOVER_BOUND - time.monotonic()), since=marks[h])
            times[h] = None if hit is None else hit[1] - t_kill
        print('  failover: ' + ', '.join(f'{h} moved after {"-" if t is None else f"{t:.1f}"} s'
                                         for h, t in times.items()), flush=True)
        late = [h for h, t in times.items() if t is None]
        if late:
            self.fail(f'{late} did not move to b within {FAILOVER_BOUND} s of the kill\n' + S.evidence(*nodes))
        # (b prints no registration line for them: it held each as a's client, at the same
        # public endpoint, and takes the registration for a refresh of that entry.)

        pairs = [(s, r) for s, r in all_pairs if s in moved or r in moved]
        failures = self.exchange(clients, pairs, 'after')
        print('  paths after the failover (sender @show_list):\n'
              + '\n'.join(self.paths(tb, clients, pairs, since)), flush=True)
        for h, c in clients.items():
            for m in moved:
                if m != h and c.count(left_regex(m), since=marks[h]):
                    shown = [text for _, _, text, _ in c.find_all(left_regex(m), since=marks[h])]
                    failures.append(f'{h} showed {m} leaving: {shown}')
        print(f'  total {time.monotonic() - t_start:.1f} s', flush=True)
        if failures:
            self.fail(f'{len(failures)} failure(s) after the failover:\n  ' + '\n  '.join(failures)
                      + '\n\n' + S.evidence(*nodes, tail=120))


if __name__ == '__main__':
    unittest.main()
