#!/usr/bin/env python3
"""Self-test of the natchat NAT testbed (unittest, stdlib only, needs root).

Run:  python3 Tests/testbed/test_testbed.py      or
      python3 Tests/testbed/testbed.py --selftest
"""

import glob
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import testbed  # noqa: E402
from testbed import (DEFAULT_HOSTS, DEFAULT_NATS, MARKER_DIR, PYTHON, LineReader,  # noqa: E402
                     Testbed, list_netns, require_root)

TESTBED_PY = os.path.join(HERE, 'testbed.py')
SRV = '203.0.113.10'
PUB = '203.0.113.20'
_ports = itertools.count(random.randint(20000, 40000))


def next_port():
    return next(_ports)


def report(msg):
    print(f'  [testbed] {msg}', file=sys.stderr, flush=True)


def seen_of(events):
    return [e['seen'] for e in events if e.get('ev') == 'recv' and 'seen' in e]


def port_of(hp):
    return int(hp.rsplit(':', 1)[1])


def prefix_namespaces(prefix):
    return [n for n in list_netns() if n.startswith(prefix + '-')]


class NatBehaviourTest(unittest.TestCase):
    """One shared testbed: NATs A,B cone, C,D symmetric, E cone_open."""

    @classmethod
    def setUpClass(cls):
        require_root()
        t0 = time.monotonic()
        cls.tb = Testbed(nats={**DEFAULT_NATS, 'E': 'cone_open'},
                         hosts={**DEFAULT_HOSTS, 'e1': ('E', '172.16.5.2')},
                         public_hosts={'srv': SRV, 'pub': PUB})
        cls.tb.start()
        report(f'built {len(cls.tb.namespaces)} namespaces (prefix {cls.tb.prefix}) '
               f'in {time.monotonic() - t0:.2f}s')
        # long-lived echo servers on both public hosts
        cls.tb.start_probe('srv', 'server', '--port', 3478, '--duration', 120)
        cls.tb.start_probe('pub', 'server', '--port', 3478, '--duration', 120)

    @classmethod
    def tearDownClass(cls):
        tb = getattr(cls, 'tb', None)
        if tb is not None:
            prefix = tb.prefix
            t0 = time.monotonic()
            tb.close()
            report(f'teardown {time.monotonic() - t0:.2f}s')
            assert not prefix_namespaces(prefix), 'namespaces left after close()'

    def client(self, host, port, *dests, count=1, wait=0.4, **kw):
        args = ['client', '--bind-port', port, '--count', count, '--wait', wait]
        for d in dests:
            args += ['--to', d]
        for k, v in kw.items():
            args += ['--' + k.replace('_', '-')] + ([v] if v != '' else [])
        return self.tb.probe(host, *args)

    # ------------------------------------------------------------------ basics

    def test_root_namespace_untouched(self):
        out = subprocess.run(['ip', '-o', 'link'], capture_output=True, text=True, timeout=10).stdout
        self.assertNotIn(self.tb.prefix, out, 'testbed interface visible in the root namespace')
        routes = subprocess.run(['ip', 'route'], capture_output=True, text=True, timeout=10).stdout
        self.assertNotIn('203.0.113.', routes)

    def test_hosts_reach_srv_with_nat_public_ip(self):
        seen = {}
        for h in ['a1', 'a2', 'b1', 'c1', 'd1', 'e1', 'pub']:
            ev = self.client(h, next_port(), f'{SRV}:3478', wait=0.3)
            s = seen_of(ev)
            self.assertEqual(len(s), 1, f'{h}: no echo from srv: {ev}')
            ip = s[0].rsplit(':', 1)[0]
            seen[h] = s[0]
            self.assertEqual(ip, self.tb.public_ip(h), h)
            if self.tb.nat_of(h):
                self.assertNotEqual(ip, self.tb.addr(h))
                self.assertEqual(ip, self.tb.nat_public_ip(self.tb.nat_of(h)))
        # a1 and b1 share 192.168.1.2 but are different public endpoints
        self.assertEqual(self.tb.addr('a1'), self.tb.addr('b1'))
        self.assertNotEqual(seen['a1'].split(':')[0], seen['b1'].split(':')[0])
        report('srv sees: ' + ', '.join(f'{h}({self.tb.addr(h)})->{s}' for h, s in seen.items()))

    def test_popen_output_goes_to_log(self):
        p = self.tb.popen('a1', ['sh', '-c', 'echo hello; ip -o -4 addr show; ip route'])
        self.assertEqual(p.wait(timeout=10), 0)
        log = self.tb.read_log(p)
        self.assertIn('hello', log)
        self.assertIn('192.168.1.2/24', log)
        self.assertIn('default via 192.168.1.1', log)

    def test_private_address_unreachable_from_public(self):
        # sending to a private address from the public side fails at once (no route)
        ev = self.client('srv', next_port(), '192.168.1.2:4000', wait=0.1)
        done = [e for e in ev if e['ev'] == 'done'][0]
        self.assertEqual(done['send_errors'], 1, ev)

    # ------------------------------------------------------------------ mapping behaviour

    def test_cone_preserves_public_port_across_destinations(self):
        for host in ('a1', 'b1'):
            lp = next_port()
            s = seen_of(self.client(host, lp, f'{SRV}:3478', f'{PUB}:3478'))
            self.assertEqual(len(s), 2, s)
            ports = sorted({port_of(x) for x in s})
            report(f'cone {self.tb.nat_of(host)}: {host} local port {lp} -> srv sees {s[0]}, '
                   f'pub sees {s[1]}')
            self.assertEqual(len(ports), 1, f'cone NAT changed port per destination: {s}')
            self.assertEqual(ports[0], lp, 'expected MASQUERADE to keep the free local port')

    def test_symmetric_uses_new_port_per_destination(self):
        for host in ('c1', 'd1'):
            lp = next_port()
            s = seen_of(self.client(host, lp, f'{SRV}:3478', f'{PUB}:3478'))
            self.assertEqual(len(s), 2, s)
            report(f'symmetric {self.tb.nat_of(host)}: {host} local port {lp} -> srv sees {s[0]}, '
                   f'pub sees {s[1]}')
            self.assertNotEqual(port_of(s[0]), port_of(s[1]))

    def test_mapping_persists_while_conntrack_entry_lives(self):
        lp = next_port()
        p1 = port_of(seen_of(self.client('c1', lp, f'{SRV}:3478', wait=0.3))[0])
        p2 = port_of(seen_of(self.client('c1', lp, f'{SRV}:3478', wait=0.3))[0])
        report(f'symmetric C, same local port {lp} twice to srv, new socket each time: {p1}, {p2}')
        self.assertEqual(p1, p2)

    def test_cone_is_port_restricted(self):
        tb = self.tb
        sport = 3490
        srv_proc, srv_reader, _ = tb.start_probe('srv', 'server', '--port', sport, '--max', 1,
                                                 '--duration', 10)
        lp = next_port()
        a1, a1r, _ = tb.start_probe('a1', 'client', '--bind-port', lp, '--to', f'{SRV}:{sport}',
                                    '--wait', 6)
        first = a1r.wait_for(lambda o: o.get('ev') == 'recv', 3)
        self.assertIsNotNone(first, 'no echo from srv')
        mapped = first['seen']
        srv_proc.wait(timeout=5)            # frees srv:3490 for the sender below
        # never-contacted host, and contacted host but another port: both must be dropped
        for host, bport, tag in (('pub', 3500, 'pub-stray'), ('srv', sport + 1, 'srv-otherport')):
            self.client(host, bport, mapped, wait=0, payload=tag)
        time.sleep(0.3)
        # the exact endpoint a1 talked to gets through
        self.client('srv', sport, mapped, wait=0, payload='srv-sameport')
        got = a1r.wait_for(lambda o: o.get('ev') == 'recv' and o['data'].startswith('srv-sameport'), 3)
        tb.stop(a1)
        a1r.read_all_json(1)
        datas = [json.loads(l)['data'] for l in a1r.lines if l.startswith('{') and '"recv"' in l]
        report(f'port-restricted check: a1 mapped {mapped}; received from srv:{sport}: '
               f'{got is not None}; stray pub / srv:{sport + 1} received: '
               f'{any("stray" in d or "otherport" in d for d in datas)}')
        self.assertIsNotNone(got, 'reply from the contacted endpoint was dropped')
        self.assertFalse(any(d.startswith('pub-stray') for d in datas), 'unsolicited inbound from pub passed')
        self.assertFalse(any(d.startswith('srv-otherport') for d in datas),
                         'inbound from another srv port passed (NAT is not port-restricted)')

    def test_cone_open_stray_inbound_moves_port(self):
        tb = self.tb
        results = {}
        for nat, host in (('E', 'e1'), ('A', 'a1')):
            lp = next_port()
            rport = next_port()
            # stray packet from pub:rport to the NAT's public ip:lp before any outbound
            self.client('pub', rport, f'{tb.nat_public_ip(nat)}:{lp}', wait=0, payload='stray')
            stray_entries = [e for e in tb.conntrack_list(nat)
                             if e['orig'].get('sport') == rport and e['orig'].get('dport') == lp]
            sp, _, _ = tb.start_probe('pub', 'server', '--port', rport, '--max', 1, '--duration', 5)
            s = seen_of(self.client(host, lp, f'{PUB}:{rport}', wait=0.3))
            tb.stop(sp)
            self.assertEqual(len(s), 1, s)
            results[nat] = (lp, s[0], len(stray_entries))
        report('stray inbound then outbound to the same remote: ' + '; '.join(
            f'{n} ({tb.nat_kind(n)}): local {lp} -> pub sees {seen}, stray conntrack entries {k}'
            for n, (lp, seen, k) in results.items()))
        lp, seen, k = results['E']
        self.assertEqual(k, 1, 'cone_open should keep a conntrack entry for the stray packet')
        self.assertNotEqual(port_of(seen), lp, 'cone_open kept the port despite the clashing entry')
        lp, seen, k = results['A']
        self.assertEqual(k, 0, 'cone firewall should drop the stray packet before conntrack confirms it')
        self.assertEqual(port_of(seen), lp)

    # ------------------------------------------------------------------ fault injection

    def test_loss_injection(self):
        tb = self.tb
        sport, n, p = 3480, 400, 0.3
        sp, sr, _ = tb.start_probe('srv', 'server', '--port', sport, '--duration', 15, '--quiet')
        try:
            tb.set_loss('A', p)
            ev = self.client('a2', next_port(), f'{SRV}:{sport}', count=n, interval=0.001, wait=0.8,
                             quiet='')
        finally:
            tb.set_loss('A', 0)
        done = [e for e in ev if e['ev'] == 'done'][0]
        replies = done['received']
        ev2 = self.client('a2', next_port(), f'{SRV}:{sport}', count=50, interval=0.001, wait=0.5)
        tb.stop(sp)
        sdone = sr.wait_for(lambda o: o.get('ev') == 'done', 3)
        self.assertIsNotNone(sdone, 'server printed no summary')
        srv_got = sdone['received'] - len(seen_of(ev2))
        out_loss = 1 - srv_got / done['sent']
        in_loss = 1 - replies / max(srv_got, 1)
        rt = replies / done['sent']
        report(f'loss p={p} both ways on A: sent {done["sent"]}, srv got {srv_got} '
               f'(outbound loss {out_loss:.3f}), replies {replies} (inbound loss {in_loss:.3f}), '
               f'round-trip success {rt:.3f} (expected {(1 - p) ** 2:.3f}); '
               f'after set_loss(0): {len(seen_of(ev2))}/50')
        self.assertEqual(done['sent'], n)
        self.assertTrue(0.18 <= out_loss <= 0.42, out_loss)
        self.assertTrue(0.18 <= in_loss <= 0.42, in_loss)
        self.assertTrue(0.36 <= rt <= 0.62, rt)
        self.assertEqual(len(seen_of(ev2)), 50, 'loss still active after set_loss(0)')

    def test_flush_conntrack_cone_forgets_mapping(self):
        tb = self.tb
        sport = 3492
        sp, _, _ = tb.start_probe('srv', 'server', '--port', sport, '--max', 1, '--duration', 10)
        lp = next_port()
        a1, a1r, _ = tb.start_probe('a1', 'client', '--bind-port', lp, '--to', f'{SRV}:{sport}',
                                    '--wait', 5)
        first = a1r.wait_for(lambda o: o.get('ev') == 'recv', 3)
        self.assertIsNotNone(first)
        mapped = first['seen']
        sp.wait(timeout=5)
        before = [m for m in tb.mappings('A') if m['private'] == f'192.168.1.2:{lp}']
        tb.flush_conntrack('A')
        after = [m for m in tb.mappings('A') if m['private'] == f'192.168.1.2:{lp}']
        # srv replies again from the very endpoint a1 talked to: now unsolicited
        self.client('srv', sport, mapped, wait=0, payload='after-flush')
        late = a1r.wait_for(lambda o: o.get('ev') == 'recv', 1.5)
        tb.stop(a1)
        report(f'flush A: mapping {mapped} entries before {len(before)}, after {len(after)}, '
               f'srv->old mapping after flush delivered: {late is not None}')
        self.assertEqual(len(before), 1, before)
        self.assertEqual(after, [])
        self.assertIsNone(late, 'old mapping still let srv in after conntrack -F')

    def test_flush_conntrack_symmetric_changes_mapping(self):
        tb = self.tb
        lp = next_port()
        s1 = seen_of(self.client('c1', lp, f'{SRV}:3478', wait=0.3))[0]
        n_before = len(tb.mappings('C'))
        tb.flush_conntrack('C')
        n_after = len(tb.mappings('C'))
        s2 = seen_of(self.client('c1', lp, f'{SRV}:3478', wait=0.3))[0]
        report(f'flush C: c1 local {lp} -> {s1} before, {s2} after '
               f'(C conntrack entries {n_before} -> {n_after})')
        self.assertGreaterEqual(n_before, 1)
        self.assertEqual(n_after, 0)
        self.assertNotEqual(s1, s2)

    def test_udp_timeout_is_per_namespace(self):
        tb = self.tb
        root_before = open('/proc/sys/net/netfilter/nf_conntrack_udp_timeout').read().strip()
        orig = tb.get_udp_timeout('B')
        try:
            tb.set_udp_timeout('B', 1)
            self.assertEqual(tb.get_udp_timeout('B'), (1, 1))
            other = tb.get_udp_timeout('A')
            root_after = open('/proc/sys/net/netfilter/nf_conntrack_udp_timeout').read().strip()
            self.assertEqual(root_before, root_after, 'router sysctl leaked into the root namespace')
            self.assertNotEqual(other, (1, 1), 'router sysctl leaked into another namespace')
            lp = next_port()
            self.client('b1', lp, f'{SRV}:3478', wait=0.2)
            present = [m for m in tb.mappings('B') if m['private'].endswith(f':{lp}')]
            time.sleep(2.2)
            gone = [m for m in tb.mappings('B') if m['private'].endswith(f':{lp}')]
            report(f'udp timeout: B set to 1s, A stays {other}, root ns stays {root_after}; '
                   f'entry present {len(present)} -> after 2.2s {len(gone)}')
            self.assertEqual(len(present), 1)
            self.assertEqual(gone, [])
        finally:
            tb.set_udp_timeout('B', *orig)


class LifecycleTest(unittest.TestCase):
    def setUp(self):
        require_root()

    def test_cleanup_on_exception(self):
        small = dict(nats={'A': 'symmetric'}, hosts={'x1': ('A', '10.9.0.2')},
                     public_hosts={'srv': SRV})
        with self.assertRaises(RuntimeError):
            with Testbed(**small) as tb:
                prefix = tb.prefix
                p = tb.popen('x1', ['sleep', '60'])
                pid = p.pid
                self.assertEqual(len(prefix_namespaces(prefix)), 4)
                self.assertTrue(os.path.exists(os.path.join(MARKER_DIR, prefix + '.json')))
                raise RuntimeError('boom')
        self.assertEqual(prefix_namespaces(prefix), [])
        self.assertFalse(os.path.exists(f'/proc/{pid}') and testbed._proc_starttime(pid) is not None)
        self.assertFalse(os.path.exists(os.path.join(MARKER_DIR, prefix + '.json')))

    def _hold(self):
        proc = subprocess.Popen([PYTHON, TESTBED_PY, '--hold', '30'], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait(5)))
        info = LineReader(proc).read_json(15)
        self.assertIsNotNone(info, 'hold process did not report its prefix: '
                             + (proc.stderr.read().decode() if proc.poll() is not None else ''))
        pids = []
        for ns in info['namespaces']:
            pids += testbed._netns_pids(ns)
        self.assertTrue(pids, 'no process inside the held testbed')
        return proc, info['prefix'], pids

    def test_sigterm_cleans_up(self):
        proc, prefix, pids = self._hold()
        self.assertTrue(prefix_namespaces(prefix))
        os.kill(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=15)
        report(f'SIGTERM: hold process exit {rc}, leftover namespaces {prefix_namespaces(prefix)}')
        self.assertEqual(prefix_namespaces(prefix), [])
        self.assertFalse(any(testbed._proc_starttime(p) is not None for p in pids))
        self.assertEqual(glob.glob(os.path.join(tempfile.gettempdir(), f'natchat-{prefix}-*')), [])

    def test_cleanup_stale_after_sigkill(self):
        proc, prefix, pids = self._hold()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
        left = prefix_namespaces(prefix)
        self.assertTrue(left, 'expected namespaces to survive SIGKILL')
        # a live testbed of this process must survive the stale cleanup
        with Testbed(nats={}, hosts={}, public_hosts={'srv': SRV}) as live:
            r = subprocess.run([PYTHON, TESTBED_PY, '--cleanup-stale'], capture_output=True,
                               text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(len(prefix_namespaces(live.prefix)), 2, 'cleanup-stale removed a live run')
        report(f'SIGKILL left {len(left)} namespaces; --cleanup-stale said: '
               f'{r.stdout.strip().splitlines()[-1]}')
        self.assertEqual(prefix_namespaces(prefix), [])
        self.assertFalse(os.path.exists(os.path.join(MARKER_DIR, prefix + '.json')))
        self.assertFalse(any(testbed._proc_starttime(p) is not None for p in pids))
        self.assertEqual(glob.glob(os.path.join(tempfile.gettempdir(), f'natchat-{prefix}-*')), [])


class CarrierAndMiniupnpdTest(unittest.TestCase):
    """A carrier-grade NAT (G, with C behind it on 100.64.0.0/10) and miniupnpd in a router."""

    def test_cgn_and_miniupnpd(self):
        require_root()
        if not os.access(testbed.MINIUPNPD, os.X_OK):
            self.skipTest(f'{testbed.MINIUPNPD} missing (apt-get install miniupnpd-iptables): skipped')
        t0 = time.monotonic()
        with Testbed(nats={'G': 'cone', 'C': {'kind': 'cone', 'upstream': 'G', 'miniupnpd': True},
                           'M': {'kind': 'symmetric', 'miniupnpd': ['natpmp']}},
                     hosts={'c1': ('C', '192.168.7.2'), 'm1': ('M', '10.0.3.2')},
                     public_hosts={'srv': SRV}) as tb:
            report(f'CGN + 2 miniupnpd built in {time.monotonic() - t0:.2f}s (prefix {tb.prefix})')
            prefix = tb.prefix
            self.assertEqual(tb.nat_public_ip('C'), '100.64.0.101')
            self.assertEqual(tb.public_ip('c1'), tb.nat_public_ip('G'))
            self.assertEqual(tb.upstream_of('C'), 'G')
            proc, _, _ = tb.start_probe('srv', 'server', '--port', 3478, '--duration', 30, '--quiet')
            ev = tb.probe('c1', 'client', '--bind-port', next_port(), '--to', f'{SRV}:3478', '--wait', 0.3)
            self.assertEqual([x.rsplit(':', 1)[0] for x in seen_of(ev)], [tb.nat_public_ip('G')], ev)
            # both daemons run inside their routers, and nothing of them is in the root namespace
            for nat in ('C', 'M'):
                p = tb.nat_spec[nat]['miniupnpd_proc']
                self.assertIsNone(p.poll(), tb.miniupnpd_log(nat))
                self.assertEqual(tb.miniupnpd_rules(nat), [])
            root = subprocess.run(['iptables', '-S'], capture_output=True, text=True, timeout=10).stdout
            self.assertNotIn('MINIUPNPD', root)
            tb.stop(proc)
            pids = [tb.nat_spec[n]['miniupnpd_proc'].pid for n in ('C', 'M')]
        self.assertEqual(prefix_namespaces(prefix), [])
        for pid in pids:
            self.assertFalse(os.path.exists(f'/proc/{pid}'), f'miniupnpd {pid} left running')


class TopologySpecTest(unittest.TestCase):
    """Spec validation needs no root and creates nothing."""

    def test_cgn_and_miniupnpd_specs(self):
        tb = Testbed(nats={'G': 'cone', 'C': {'kind': 'symmetric', 'upstream': 'G', 'miniupnpd': ['pcp', 'upnp']}},
                     hosts={'c1': ('C', '10.0.0.2')})
        self.assertEqual(tb.nat_spec['G']['lan'], '100.64.0.0/24')
        self.assertEqual(tb.nat_public_ip('C'), '100.64.0.101')
        self.assertEqual(tb.public_ip('c1'), '203.0.113.101')
        self.assertEqual(tb.nat_spec['C']['miniupnpd'], ('pcp', 'upnp'))
        with self.assertRaises(ValueError):
            Testbed(nats={'C': {'kind': 'cone', 'upstream': 'Z'}}, hosts={})
        with self.assertRaises(ValueError):
            Testbed(nats={'A': {'kind': 'cone', 'miniupnpd': ['igd']}}, hosts={})
        with self.assertRaises(ValueError):
            Testbed(nats={'G': 'cone', 'H': {'kind': 'cone', 'upstream': 'G'}, 'C': {'kind': 'cone', 'upstream': 'H'}},
                    hosts={})

    def test_bad_topology_rejected(self):
        with self.assertRaises(ValueError):
            Testbed(nats={'A': 'cone'}, hosts={'a1': ('A', '192.168.1.2'), 'a2': ('A', '192.168.1.2')})
        with self.assertRaises(ValueError):
            Testbed(nats={'A': 'fullcone'}, hosts={})
        with self.assertRaises(ValueError):
            Testbed(nats={'A': 'cone'}, hosts={'a1': ('Z', '192.168.1.2')})
        with self.assertRaises(ValueError):
            Testbed(nats={'A': {'kind': 'cone', 'wan': '8.8.8.8'}}, hosts={})

    def test_default_topology(self):
        tb = Testbed()
        self.assertEqual(tb.nats, DEFAULT_NATS)
        self.assertEqual(tb.addr('a1'), tb.addr('b1'))
        self.assertEqual(tb.nat_public_ip('A'), '203.0.113.101')
        self.assertEqual(tb.public_ip('srv'), SRV)
        self.assertEqual(tb.nat_spec['C']['gw'], '10.0.0.1')

    def test_parse_conntrack_line(self):
        e = testbed.parse_conntrack_line(
            'udp      17 28 src=192.168.1.2 dst=203.0.113.10 sport=40000 dport=3478 '
            'src=203.0.113.10 dst=203.0.113.101 sport=3478 dport=40000 [ASSURED] mark=0 use=1')
        self.assertEqual(e['timeout'], 28)
        self.assertEqual(e['orig'], {'src': '192.168.1.2', 'dst': '203.0.113.10', 'sport': 40000, 'dport': 3478})
        self.assertEqual(e['reply']['dst'], '203.0.113.101')
        self.assertEqual(e['flags'], ['ASSURED'])


if __name__ == '__main__':
    unittest.main(verbosity=2)
