"""Port mapping end-to-end tests on the NAT testbed (Tests/testbed, needs root) against a real
miniupnpd (Debian's miniupnpd-iptables 2.3.1) in the home router.

* test_probe_reports_each_protocol: `natchat --probe` behind routers whose miniupnpd serves
  only PCP, only NAT-PMP, only UPnP IGD, all three, and behind a router without it, prints
  `PortMapping: PCP` / `NAT-PMP` / `UPnP` / `PCP, NAT-PMP, UPnP` / `none`, within 2.5 s more
  than the STUN probe.
* test_client_maps_renews_and_deletes: a client behind a symmetric NAT with miniupnpd gets a
  PCP mapping of its chat port (the router's MINIUPNPD chain holds the DNAT rule), renews it,
  and deletes it at @exit; with --no-port-mapping nothing is asked or mapped.
* test_fallbacks_natpmp_and_upnp: routers serving only NAT-PMP, only UPnP: the client falls
  back to each, and deletes each mapping at exit.
* test_gateway_restart_remaps: miniupnpd restarts (its epoch starts again from 0); the
  client's next renewal notices the epoch going back and logs a new grant.
* test_mapped_endpoint_gives_direct_paths: a client behind a symmetric NAT whose router runs
  miniupnpd, with a peer behind a firewalled cone and one behind a symmetric NAT without a
  daemon (both pairs hopeless for punching alone): each peer reaches it at its mapped
  endpoint, `direct (port map)`, both ways; every chat is shown once, on the right host;
  the server counts the path reports as `port_map`.
* test_behind_carrier_nat: a home router with miniupnpd behind a carrier-grade NAT: the
  mapping's external address is the home router's WAN address in 100.64.0.0/10 (the CGN
  side), not the public address the rendezvous server sees.

Every process is started through the Testbed (killed by PID at close), every wait bounded.
"""

import os
import re
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'testbed'))

import test_nat_support as S  # noqa: E402
import testbed  # noqa: E402
from testbed import Testbed  # noqa: E402

LIFETIME = 6            # --port-mapping-lifetime: renewals every 3 s
PUBLIC = {'srv': S.SERVER_IP, 'pub': '203.0.113.20'}


def require_miniupnpd(testcase):
    if not os.access(testbed.MINIUPNPD, os.X_OK):
        msg = f'{testbed.MINIUPNPD} missing (apt-get install miniupnpd-iptables; bin/test does as root): skipped'
        print(msg, file=sys.stderr)
        testcase.skipTest(msg)


def wait_log(tb, node, regex, timeout):
    """The first match of regex in node's stderr log within timeout (polled, bounded)."""
    deadline = time.monotonic() + timeout
    pattern = re.compile(regex, re.M)
    for _ in range(int(timeout / 0.1) + 2):
        m = pattern.search(tb.read_log(node.proc))
        if m or time.monotonic() >= deadline:
            return m
        time.sleep(0.1)
    return None


def wait_rules(tb, nat, present, timeout=5.0):
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.1) + 2):
        rules = tb.miniupnpd_rules(nat)
        if bool(rules) == present or time.monotonic() >= deadline:
            return rules
        time.sleep(0.1)
    return tb.miniupnpd_rules(nat)


def exit_client(client, timeout=10.0):
    """@exit, and the time the process took to end (None: it did not end in time)."""
    t0 = time.monotonic()
    client.send('@exit')
    try:
        client.proc.wait(timeout=timeout)
    except Exception:
        return None
    return time.monotonic() - t0


class PortMappingTest(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        S.require_natchat(self)
        require_miniupnpd(self)

    def test_probe_reports_each_protocol(self):
        nats = {'P': {'kind': 'cone', 'miniupnpd': ['pcp']},
                'N': {'kind': 'cone', 'miniupnpd': ['natpmp']},
                'U': {'kind': 'cone', 'miniupnpd': ['upnp']},
                'F': {'kind': 'symmetric', 'miniupnpd': True},
                'Z': 'cone'}
        hosts = {'p1': ('P', '10.0.1.2'), 'n1': ('N', '10.0.2.2'), 'u1': ('U', '10.0.3.2'),
                 'f1': ('F', '10.0.4.2'), 'z1': ('Z', '10.0.5.2')}
        expected = {'p1': 'PCP', 'n1': 'NAT-PMP', 'u1': 'UPnP', 'f1': 'PCP, NAT-PMP, UPnP', 'z1': 'none'}
        with Testbed(nats=nats, hosts=hosts, public_hosts=PUBLIC) as tb:
            server = S.Server(tb)
            failures = []
            for host, want in expected.items():
                t0 = time.monotonic()
                r = tb.run(host, [S.binary('natchat'), '--probe', '--server', S.SERVER_IP, '--identity', 'none'],
                           check=False, timeout=20)
                took = time.monotonic() - t0
                print(f'=== natchat --probe from {host} ({took:.2f} s) rc={r.returncode} ===\n{r.stdout.strip()}', flush=True)
                lines = re.findall(r'^PortMapping: (.*)$', r.stdout, re.M)
                if lines != [want]:
                    failures.append(f'{host}: PortMapping lines {lines}, expected [{want!r}]')
                if not re.search(r'^mapped address: ' + re.escape(tb.public_ip(host)) + r':\d+$', r.stdout, re.M):
                    failures.append(f'{host}: the STUN lines changed: {r.stdout!r}')
                # the STUN probe answers at once here; the port mapping probe adds at most 2.5 s
                if took > 4.5:
                    failures.append(f'{host}: --probe took {took:.2f} s')
                # a probe creates no mapping
                nat = tb.nat_of(host)
                if tb.nat_spec[nat].get('miniupnpd') and tb.miniupnpd_rules(nat):
                    failures.append(f'{host}: the probe left a mapping: {tb.miniupnpd_rules(nat)}')
            if failures:
                self.fail('\n'.join(failures) + '\n' + S.evidence(server))

    def _mapped_client(self, tb, host, via, nat, extra=()):
        """A client on host with info logs; waits for `port mapping: VIA granted IP:PORT`."""
        client = S.Client(tb, host, extra=['--log-level', 'info', '--port-mapping-lifetime', LIFETIME, *extra])
        self.assertIsNotNone(client.wait_registered(15), client.describe())
        m = wait_log(tb, client, r'^.*port mapping: ' + re.escape(via) + r' granted (' + S.IPPORT + r') for (\d+) s$', 15)
        self.assertIsNotNone(m, f'no "{via} granted" line\n' + tb.read_log(client.proc)[-3000:]
                             + '\nminiupnpd:\n' + tb.miniupnpd_log(nat)[-3000:])
        return client, m

    def test_mapped_endpoint_gives_direct_paths(self):
        nats = {'M': {'kind': 'symmetric', 'miniupnpd': ['pcp']}, 'C': 'cone', 'S': 'symmetric'}
        hosts = {'m1': ('M', '10.0.0.2'), 'c1': ('C', '192.168.1.2'), 's1': ('S', '10.0.1.2')}
        bound = 20.0
        with Testbed(nats=nats, hosts=hosts, public_hosts=PUBLIC) as tb:
            server = S.Server(tb)
            c = S.start_clients(tb, ['c1', 's1', 'm1'], extra=('--log-level', 'info'))
            mapped = wait_log(tb, c['m1'], r'^.*port mapping: PCP granted (' + S.IPPORT + r') for \d+ s$', 15)
            self.assertIsNotNone(mapped, 'no PCP mapping\n' + S.evidence(c['m1']))
            endpoint = mapped.group(1)
            self.assertEqual(endpoint, f'{tb.nat_public_ip("M")}:{S.CLIENT_PORT}')
            # The server passes the mapping on (a roster change); then the peers chat.
            time.sleep(1.0)
            failures = []
            marks = {h: c[h].mark() for h in c}
            texts = []
            for peer in ('c1', 's1'):
                text = f'via-map-{peer}-to-m1'
                c[peer].chat('m1', text)
                texts.append((peer, 'm1', text))
            for peer in ('c1', 's1'):
                hit = c[peer].wait(r'\* path to m1: direct \(port map\) ' + re.escape(endpoint), bound, since=marks[peer])
                if hit is None:
                    failures.append(f'{peer}: no "path to m1: direct (port map) {endpoint}" within {bound:.0f} s')
                back = c['m1'].wait(r'\* path to ' + peer + r': direct .*', bound, since=marks['m1'])
                if back is None:
                    failures.append(f'm1: no direct path to {peer} within {bound:.0f} s')
            for peer in ('c1', 's1'):
                text = f'via-map-m1-to-{peer}'
                c['m1'].chat(peer, text)
                texts.append(('m1', peer, text))
                if S.wait_delivered(c['m1'], peer, 15, since=marks['m1']) is None:
                    failures.append(f'm1 -> {peer}: not acknowledged within 15 s')
            time.sleep(1.0)
            for sender, recipient, text in texts:
                counts = S.shown_counts(c, sender, text)
                if counts[recipient][0] != 1:
                    failures.append(f'{sender} -> {recipient} {text!r}: shown {counts[recipient][0]}x (expected once)')
                leaks = {h: n for h, (_, n) in counts.items() if h != recipient and n}
                if leaks:
                    failures.append(f'{sender} -> {recipient} {text!r}: also printed by {leaks}')
            lists = {h: c[h].show_list() for h in ('c1', 's1')}
            print(f'mapped endpoint {endpoint}; ' + '; '.join(f'{h}: m1 is {lists[h].get("m1")}' for h in lists), flush=True)
            for peer, listed in lists.items():
                path = listed.get('m1', ('', ''))[1]
                if not path.startswith('direct (port map)'):
                    failures.append(f'{peer}: @show_list says m1 is {path!r}, expected direct (port map)')
            if failures:
                self.fail('\n'.join(failures) + '\n' + S.evidence(server, *c.values()))

    def test_client_maps_renews_and_deletes(self):
        with Testbed(nats={'S': {'kind': 'symmetric', 'miniupnpd': True}}, hosts={'s1': ('S', '10.0.0.2')},
                     public_hosts=PUBLIC) as tb:
            server = S.Server(tb)
            t0 = time.monotonic()
            client, m = self._mapped_client(tb, 's1', 'PCP', 'S')
            print(f'PCP mapping {m.group(1)} for {m.group(2)} s, {time.monotonic() - t0:.2f} s after start', flush=True)
            self.assertEqual(m.group(1), f'{tb.nat_public_ip("S")}:{S.CLIENT_PORT}')
            rules = wait_rules(tb, 'S', True)
            # (iptables-legacy prints miniupnpd's DNAT target as "[unsupported revision]")
            self.assertTrue(any('-p udp' in r and f'--dport {S.CLIENT_PORT}' in r and 'DNAT' in r for r in rules), rules)
            # The mapping lets a datagram in through the symmetric NAT: from the public host to
            # the mapped endpoint, it is forwarded to the client (the router's conntrack entry
            # is confirmed only once the datagram passed the FORWARD chain).
            ext_port = m.group(1).split(':')[1]
            tb.probe('pub', 'client', '--bind-port', 41234, '--to', m.group(1), '--count', 1, '--wait', 0.2)
            inbound = [e for e in tb.conntrack_list('S')
                       if e['orig'].get('src') == PUBLIC['pub'] and e['orig'].get('dport') == int(ext_port)
                       and e['reply'].get('src') == '10.0.0.2' and e['reply'].get('sport') == S.CLIENT_PORT]
            self.assertTrue(inbound, f'no inbound flow through the mapping: {tb.conntrack_list("S")}')
            renewed = wait_log(tb, client, r'port mapping: PCP renewed ' + re.escape(m.group(1)), LIFETIME + 3)
            self.assertIsNotNone(renewed, tb.read_log(client.proc)[-3000:])
            # the renewal kept the daemon's rule in place past the first lifetime
            time.sleep(max(0.0, t0 + LIFETIME + 2 - time.monotonic()))
            self.assertTrue(tb.miniupnpd_rules('S'), 'mapping expired although renewed')
            took = exit_client(client)
            self.assertIsNotNone(took, 'the client did not exit within 10 s of @exit')
            print(f'@exit took {took:.2f} s; rules after exit: {tb.miniupnpd_rules("S")}', flush=True)
            # deleted at exit, not left to expire (its lifetime has seconds left)
            self.assertEqual(wait_rules(tb, 'S', False, timeout=1.0), [], 'the mapping outlived the client')
            self.assertIn('port mapping: deleted (PCP)', tb.read_log(client.proc))

            # --no-port-mapping: nothing asked, nothing mapped
            quiet = S.Client(tb, 's1', cid='s1b', extra=['--log-level', 'info', '--no-port-mapping'])
            self.assertIsNotNone(quiet.wait_registered(15), quiet.describe())
            time.sleep(3.0)
            self.assertEqual(tb.miniupnpd_rules('S'), [])
            self.assertNotIn('port mapping:', tb.read_log(quiet.proc))
            self.assertIsNotNone(exit_client(quiet))
            del server

    def test_fallbacks_natpmp_and_upnp(self):
        nats = {'N': {'kind': 'symmetric', 'miniupnpd': ['natpmp']}, 'U': {'kind': 'symmetric', 'miniupnpd': ['upnp']},
                'Z': 'symmetric'}
        hosts = {'n1': ('N', '10.0.1.2'), 'u1': ('U', '10.0.2.2'), 'z1': ('Z', '10.0.3.2')}
        with Testbed(nats=nats, hosts=hosts, public_hosts=PUBLIC) as tb:
            S.Server(tb)
            for host, nat, via in (('n1', 'N', 'NAT-PMP'), ('u1', 'U', 'UPnP')):
                t0 = time.monotonic()
                client, m = self._mapped_client(tb, host, via, nat)
                print(f'{host}: {via} mapping {m.group(1)} {time.monotonic() - t0:.2f} s after start', flush=True)
                self.assertEqual(m.group(1).split(':')[0], tb.nat_public_ip(nat))
                self.assertTrue(wait_rules(tb, nat, True), f'{host}: no rule for the {via} mapping')
                self.assertIsNotNone(exit_client(client))
                self.assertEqual(wait_rules(tb, nat, False, timeout=1.0), [], f'{host}: the {via} mapping outlived the client')
                self.assertIn(f'port mapping: deleted ({via})', tb.read_log(client.proc))
            # no mapping daemon: the log says what was tried
            client = S.Client(tb, 'z1', extra=['--log-level', 'info'])
            self.assertIsNotNone(client.wait_registered(15), client.describe())
            none = wait_log(tb, client, r'port mapping: none \((.*)\)$', 20)
            self.assertIsNotNone(none, tb.read_log(client.proc)[-3000:])
            print(f'z1: port mapping: none ({none.group(1)})', flush=True)
            self.assertEqual(none.group(1), 'PCP no answer, NAT-PMP no answer, UPnP no IGD')
            self.assertIsNotNone(exit_client(client))

    def test_gateway_restart_remaps(self):
        with Testbed(nats={'R': {'kind': 'cone', 'miniupnpd': ['pcp']}}, hosts={'r1': ('R', '10.0.0.2')},
                     public_hosts=PUBLIC) as tb:
            S.Server(tb)
            client, m = self._mapped_client(tb, 'r1', 'PCP', 'R')
            self.assertIsNotNone(wait_log(tb, client, r'port mapping: PCP renewed', LIFETIME + 3),
                                 tb.read_log(client.proc)[-3000:])
            time.sleep(4.0)         # let the daemon's epoch grow past the slack of RFC 6887 §8.5
            t0 = time.monotonic()
            tb.restart_miniupnpd('R')
            pattern = r'port mapping: PCP granted ' + re.escape(m.group(1))
            grants = []
            for _ in range(int((LIFETIME + 3) / 0.1)):      # bounded: one renewal interval and a margin
                grants = re.findall(pattern, tb.read_log(client.proc))
                if len(grants) >= 2:
                    break
                time.sleep(0.1)
            print(f'grants after the restart: {len(grants)}, {time.monotonic() - t0:.2f} s', flush=True)
            self.assertEqual(len(grants), 2, 'the restart was not noticed\n' + tb.read_log(client.proc)[-3000:]
                             + '\nminiupnpd:\n' + tb.miniupnpd_log('R')[-2000:])
            self.assertTrue(wait_rules(tb, 'R', True))
            self.assertIsNotNone(exit_client(client))
            self.assertEqual(wait_rules(tb, 'R', False, timeout=1.0), [])

    def test_behind_carrier_nat(self):
        nats = {'G': 'cone', 'H': {'kind': 'cone', 'upstream': 'G', 'miniupnpd': True}}
        with Testbed(nats=nats, hosts={'h1': ('H', '192.168.8.2')}, public_hosts=PUBLIC) as tb:
            S.Server(tb)
            client, m = self._mapped_client(tb, 'h1', 'PCP', 'H')
            registered = client.wait_registered(1)
            public = registered[3].group(1) if registered else None
            print(f'behind CGN: mapping {m.group(1)}, public endpoint seen by the server {public}', flush=True)
            # The home router maps on its own WAN side, 100.64.0.0/10: reachable from inside
            # the carrier's network only; the server sees the carrier's public address.
            self.assertEqual(m.group(1), f'{tb.nat_public_ip("H")}:{S.CLIENT_PORT}')
            self.assertTrue(m.group(1).startswith('100.64.'))
            self.assertEqual(public.split(':')[0], tb.public_ip('h1'))
            self.assertNotEqual(public.split(':')[0], m.group(1).split(':')[0])
            self.assertTrue(wait_rules(tb, 'H', True))
            self.assertIsNotNone(exit_client(client))
            self.assertEqual(wait_rules(tb, 'H', False, timeout=1.0), [])


if __name__ == '__main__':
    unittest.main()
