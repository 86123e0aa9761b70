"""NAT traversal end-to-end tests on the real-NAT testbed (Tests/testbed, needs root).

* test_all_pairs_matrix: cone A (a1, a2), cone B (b1, same private IP as a1), symmetric
  C (c1) and D (d1, same private IP as c1), public pub; server on srv.  One @chat per
  ordered pair; each text shown exactly once, only by its addressee, and acknowledged;
  the path of each pair is the expected one (private / direct / relayed).  Prints the
  matrix and time-to-direct, and writes it to /tmp/natchat-matrix.json.
* test_cone_open_pair: a1 behind cone A and e1 behind a cone_open NAT.
* test_stun_interop: the Debian `stun` client against natchat-server, and coturn.
"""

import json
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

MATRIX_JSON = '/tmp/natchat-matrix.json'

MATRIX_NATS = {'A': 'cone', 'B': 'cone', 'C': 'symmetric', 'D': 'symmetric'}
MATRIX_HOSTS = {
    'a1': ('A', '192.168.1.2'),
    'a2': ('A', '192.168.1.3'),
    'b1': ('B', '192.168.1.2'),   # same private address as a1
    'c1': ('C', '10.0.0.2'),
    'd1': ('D', '10.0.0.2'),      # same private address as c1
}
MATRIX_PUBLIC = {'srv': '203.0.113.10', 'pub': '203.0.113.20'}
CLIENT_HOSTS = ['a1', 'a2', 'b1', 'c1', 'd1', 'pub']

DELIVERY_TIMEOUT = 20.0     # every chat acknowledged within this (from the last @chat)
PATH_TIMEOUT = 15.0         # paths settled within this after all deliveries
KINDS_SETTLE = float(os.environ.get('NATCHAT_NAT_KINDS_SETTLE', '1.0'))
SETTLE = 3.0                # extra wait for duplicates after everything is delivered


def _fmt(x, nd=2):
    return '-' if x is None else f'{x:.{nd}f}'


class NatTraversalTest(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        S.require_natchat(self)

    # ------------------------------------------------------------------ 1. matrix

    def test_all_pairs_matrix(self):
        with Testbed(nats=MATRIX_NATS, hosts=MATRIX_HOSTS, public_hosts=MATRIX_PUBLIC) as tb:
            server = S.Server(tb)
            clients = S.start_clients(tb, CLIENT_HOSTS)
            nodes = [server] + list(clients.values())
            failures = []

            # NAT kinds and public addresses as the clients learned them
            nat_seen = {}
            registered = {}
            for h, c in clients.items():
                hit = c.wait_nat(1)
                nat_seen[h] = hit[3].group(1) if hit else None
                want = S.NAT_TEXT[tb.nat_kind(tb.nat_of(h)) if tb.nat_of(h) else None]
                if nat_seen[h] != want:
                    failures.append(f'{h}: NAT line {nat_seen[h]!r}, expected {want!r}')
                reg = c.wait_registered(1)
                registered[h] = reg[3].group(1) if reg else None
                if reg and reg[3].group(1).split(':')[0] != tb.public_ip(h):
                    failures.append(f'{h}: registered public {reg[3].group(1)}, expected IP {tb.public_ip(h)}')

            # every client has printed its NAT kind (and told the server at once); give the
            # keep-alives that carry the kinds a moment so that "both kinds known" holds
            time.sleep(KINDS_SETTLE)
            # one @chat per ordered pair, all at once (no resends)
            tag = uuid.uuid4().hex[:6]
            texts = {(s, r): f'm-{tag}-{s}-to-{r}' for s in CLIENT_HOSTS for r in CLIENT_HOSTS if s != r}
            marks = {h: c.mark() for h, c in clients.items()}
            for (s, r), text in texts.items():
                clients[s].chat(r, text)
            t_last_chat = time.monotonic()

            # deliveries (bounded)
            deadline = t_last_chat + DELIVERY_TIMEOUT
            delivered_at = {}
            for (s, r) in texts:
                hit = S.wait_delivered(clients[s], r, max(0.1, deadline - time.monotonic()), since=marks[s])
                delivered_at[(s, r)] = hit[1] if hit else None

            # paths (bounded): wait for both ends of every pair expected direct/private
            deadline = time.monotonic() + PATH_TIMEOUT
            pairs = sorted({tuple(sorted(p)) for p in texts})
            expect = {p: S.expected_path(tb, *p) for p in pairs}
            for (x, y) in pairs:
                if expect[(x, y)] == 'relayed':
                    continue
                for me, other in ((x, y), (y, x)):
                    clients[me].wait(r'\* path to ' + re.escape(other) + r': (direct|private) .*',
                                     max(0.1, deadline - time.monotonic()), since=marks[me])
            time.sleep(SETTLE)      # late duplicates would show up here

            lists = {h: c.show_list() for h, c in clients.items()}

            # ---- per ordered pair rows
            rows = []
            for (s, r), text in texts.items():
                counts = S.shown_counts(clients, s, text)
                shown = counts[r][0]
                leaks = {h: n for h, (_, n) in counts.items() if h != r and n}
                other_lines_at_r = counts[r][1] - counts[r][0]
                n_deliv = clients[s].count(re.escape(f'* delivered to {r}'), since=marks[s])
                not_deliv = clients[s].count(re.escape(f'* NOT delivered to {r}: "{text}"'), since=marks[s])
                exp = S.expected_path(tb, s, r)
                path = lists[s].get(r, (None, None))[1]
                t0 = clients[s].chat_times.get(r)
                rows.append({
                    'from': s, 'to': r, 'text': text, 'sent': 1, 'shown': shown,
                    'leaked_to': sorted(leaks), 'delivered_acks': n_deliv, 'not_delivered': not_deliv,
                    'ack_s': None if delivered_at[(s, r)] is None else round(delivered_at[(s, r)] - t0, 3),
                    'path': path, 'expected': exp, 'path_ok': path is not None and S.path_ok(tb, r, exp, path),
                })
                if exp == 'direct' and rows[-1]['path_ok']:
                    live = S.live_endpoints(tb, r, s)
                    if path.split(' ', 1)[1] not in live:
                        rows[-1]['path_ok'] = False
                        failures.append(f'{s} -> {r}: @show_list says {path!r} but {r}\'s NAT maps it to '
                                        f'{sorted(live)} for {s} now (stale endpoint)')
                where = f'{s} -> {r} ({text!r})'
                if shown != 1:
                    failures.append(f'{where}: shown {shown}x by {r} (expected exactly once)')
                if other_lines_at_r:
                    failures.append(f'{where}: {r} printed the text in {other_lines_at_r} other line(s)')
                if leaks:
                    failures.append(f'{where}: text also shown by {leaks}')
                if n_deliv != 1:
                    failures.append(f'{where}: sender printed "* delivered to {r}" {n_deliv}x (expected 1)')
                if not_deliv:
                    failures.append(f'{where}: sender printed NOT delivered')
                if not rows[-1]['path_ok']:
                    failures.append(f'{where}: {s} @show_list path to {r} is {path!r}, expected {exp}')

            # ---- per pair: time from the first @chat of the pair to the direct/private line
            pair_rows = []
            for (x, y) in pairs:
                exp = expect[(x, y)]
                t0 = min(clients[x].chat_times[y], clients[y].chat_times[x])
                ends = {}
                for me, other in ((x, y), (y, x)):
                    hit = clients[me].first_path(other, after=t0 - 0.001)
                    ends[me] = hit
                    relayed_lines = [t for _, t in clients[me].path_lines(other)]
                    if exp == 'relayed' and hit:
                        failures.append(f'{x}<->{y}: expected relayed, but {me} printed {hit[1]!r} '
                                        f'({hit[0] - t0:.2f}s after the first chat)')
                    if exp != 'relayed' and not hit:
                        failures.append(f'{x}<->{y}: expected {exp}, {me} never printed a direct/private path '
                                        f'within {PATH_TIMEOUT}s (its path lines: {relayed_lines})')
                both = all(ends.values()) and exp != 'relayed'
                ttd = max(h[0] for h in ends.values()) - t0 if both else None
                pair_rows.append({
                    'pair': f'{x}<->{y}', 'expected': exp,
                    'path_x': lists[x].get(y, (None, None))[1], 'path_y': lists[y].get(x, (None, None))[1],
                    'time_to_path_s': None if ttd is None else round(ttd, 3),
                    f'{x}_s': None if not ends[x] else round(ends[x][0] - t0, 3),
                    f'{y}_s': None if not ends[y] else round(ends[y][0] - t0, 3),
                })

            # hopeless pairs (symmetric NAT <-> another NAT): no punch packet may have left either
            # side towards the other's public endpoint (conntrack entries live 30 s, so any
            # packet sent during the test shows)
            for (x, y) in pairs:
                if expect[(x, y)] != 'relayed':
                    continue
                for me, other in ((x, y), (y, x)):
                    nat = tb.nat_of(me)
                    flows = [mm for mm in tb.mappings(nat)
                             if mm['private'] == f'{tb.addr(me)}:{S.CLIENT_PORT}'
                             and mm['remote'] == registered[other]]
                    if flows:
                        failures.append(f'{x}<->{y} is hopeless (relayed) but NAT {nat} has flows from {me} to '
                                        f'{other}: {flows}')

            ttds = [p['time_to_path_s'] for p in pair_rows if p['time_to_path_s'] is not None]
            summary = {
                'nat_lines': nat_seen,
                'median_time_to_direct_s': median_or_none(ttds),
                'max_time_to_direct_s': max(ttds) if ttds else None,
                'pairs_direct_or_private': len(ttds),
                'pairs_expected_direct_or_private': sum(1 for p in pair_rows if p['expected'] != 'relayed'),
                'failures': failures,
            }
            self._report(rows, pair_rows, summary)
            if failures:
                self.fail(f'{len(failures)} matrix failure(s):\n  ' + '\n  '.join(failures) + '\n\n'
                          + S.evidence(*nodes, tail=120))

    def _report(self, rows, pair_rows, summary):
        lines = ['', '=== natchat NAT matrix (one @chat per ordered pair) ===',
                 f'{"from":<5}{"to":<5}{"sent":>5}{"shown":>6}{"acks":>5}{"ack_s":>7}  '
                 f'{"expected":<9}{"path (sender @show_list)":<34}ok']
        for r in rows:
            lines.append(f'{r["from"]:<5}{r["to"]:<5}{r["sent"]:>5}{r["shown"]:>6}{r["delivered_acks"]:>5}'
                         f'{_fmt(r["ack_s"]):>7}  {r["expected"]:<9}{str(r["path"]):<34}'
                         f'{"yes" if r["path_ok"] and r["shown"] == 1 and not r["leaked_to"] else "NO"}')
        lines += ['', '=== per pair: time from first @chat to the direct/private path line (both ends) ===',
                  f'{"pair":<10}{"expected":<9}{"t_s":>7}  per end']
        for p in pair_rows:
            ends = ', '.join(f'{k[:-2]} {_fmt(v)}' for k, v in p.items() if k.endswith('_s') and k != 'time_to_path_s')
            lines.append(f'{p["pair"]:<10}{p["expected"]:<9}{_fmt(p["time_to_path_s"]):>7}  {ends}')
        lines.append(f'median time-to-direct {_fmt(summary["median_time_to_direct_s"])} s, '
                     f'max {_fmt(summary["max_time_to_direct_s"])} s over '
                     f'{summary["pairs_direct_or_private"]}/{summary["pairs_expected_direct_or_private"]} pairs')
        lines.append(f'NAT lines: {summary["nat_lines"]}')
        print('\n'.join(lines), flush=True)
        try:
            with open(MATRIX_JSON, 'w') as f:
                json.dump({'rows': rows, 'pairs': pair_rows, 'summary': summary}, f, indent=1)
            print(f'(written to {MATRIX_JSON})', flush=True)
        except OSError as e:
            print(f'could not write {MATRIX_JSON}: {e}', flush=True)

    # ------------------------------------------------------------------ 2. cone_open

    def test_cone_open_pair(self):
        """Cone <-> cone_open, two pairs at once, 100 s bound for a direct path each
        (round 1 at once; then rounds after 35 s cool-downs, first movers alternating):

        * a1 (cone A) <-> e1 (cone_open E), natural timing: a1 chats first, e1 answers
          after the acknowledgement.
        * a2 (cone A) <-> f1 (cone_open F), stray inbound forced: F drops everything f1
          sends for the first 2.5 s after a2's first chat, so a2's punch packets reach F
          before f1's and leave a conntrack entry there (the cone_open hazard: f1's
          mapping toward a2 moves to another public port).

        Every message is shown exactly once either way; the path is reported honestly."""
        bound = 100.0
        with Testbed(nats={'A': 'cone', 'E': 'cone_open', 'F': 'cone_open'},
                     hosts={'a1': ('A', '192.168.1.2'), 'a2': ('A', '192.168.1.3'),
                            'e1': ('E', '192.168.5.2'), 'f1': ('F', '192.168.6.2')},
                     public_hosts={'srv': S.SERVER_IP}) as tb:
            server = S.Server(tb)
            c = S.start_clients(tb, ['a1', 'a2', 'e1', 'f1'])
            failures = []
            for h in c:
                hit = c[h].wait_nat(1)
                if not hit or hit[3].group(1) != S.NAT_TEXT['cone']:
                    failures.append(f'{h}: NAT line {hit and hit[3].group(1)!r}, expected cone')
            # The RemapProbe then finds that E and F remap after unsolicited inbound (so e1 and
            # f1 move first in punch rounds); A, with its WAN firewall, does not.
            for h in ('e1', 'f1'):
                if c[h].wait(re.escape('* NAT: ' + S.NAT_TEXT['cone_remapping']), 5) is None:
                    failures.append(f'{h}: no "remapped by unsolicited inbound" NAT line')
            for h in ('a1', 'a2'):
                if c[h].count(re.escape(S.NAT_TEXT['cone_remapping'])):
                    failures.append(f'{h}: behind a firewalled cone, yet classified as remapping')
            pairs = {'natural': ('a1', 'e1', 'E'), 'stray': ('a2', 'f1', 'F')}
            watcher = S.MappingWatcher(tb, ['A', 'E', 'F'])
            self.addCleanup(watcher.stop)
            watcher.__enter__()
            m = {h: c[h].mark() for h in c}
            texts = []
            tb.set_loss('F', 1.0, direction='out')
            t0 = {}
            for label, (x, y, _) in pairs.items():
                t = f'open-{label}-1-{x}-to-{y}'
                t0[label] = c[x].chat(y, t)
                texts.append((x, y, t))
            time.sleep(2.5)
            tb.set_loss('F', 0)
            for label, (x, y, _) in pairs.items():
                if S.wait_delivered(c[x], y, 15, since=m[x]) is None:
                    failures.append(f'[{label}] {x} -> {y}: first chat not acknowledged within 15 s')
                t = f'open-{label}-2-{y}-to-{x}'
                c[y].chat(x, t)
                texts.append((y, x, t))
            got = {}
            for label, (x, y, _) in pairs.items():
                for me, other in ((x, y), (y, x)):
                    got[me] = c[me].wait(r'\* path to ' + other + r': direct .*',
                                         max(0.1, t0[label] + bound - time.monotonic()), since=m[me])
            # one more chat each way, over whatever path there is now
            m2 = {h: c[h].mark() for h in c}
            for label, (x, y, _) in pairs.items():
                for s, r in ((x, y), (y, x)):
                    t = f'open-{label}-3-{s}-to-{r}'
                    c[s].chat(r, t)
                    texts.append((s, r, t))
            for label, (x, y, _) in pairs.items():
                for s, r in ((x, y), (y, x)):
                    if S.wait_delivered(c[s], r, 20, since=m2[s]) is None:
                        failures.append(f'[{label}] {s} -> {r}: last chat not acknowledged within 20 s')
            time.sleep(2)
            for s, r, text in texts:
                counts = S.shown_counts(c, s, text)
                if counts[r][0] != 1:
                    failures.append(f'{s} -> {r} {text!r}: shown {counts[r][0]}x (expected exactly once)')
                leaks = {h: n for h, (_, n) in counts.items() if h != r and n}
                if leaks:
                    failures.append(f'{s} -> {r} {text!r}: also printed by {leaks}')
                if c[s].count(re.escape(f'* NOT delivered to {r}: "{text}"')):
                    failures.append(f'{s} -> {r} {text!r}: sender printed NOT delivered')
            lists = {h: c[h].show_list() for h in c}
            watcher.stop()
            report = ['', f'=== cone <-> cone_open (bound {bound:.0f} s for a direct path) ===']
            for label, (x, y, nat) in pairs.items():
                tt = {h: (None if got[h] is None else round(got[h][1] - t0[label], 2)) for h in (x, y)}
                report.append(f'[{label}] {x} <-> {y}: time to direct {x} {tt[x]} s, {y} {tt[y]} s')
                for me, other in ((x, y), (y, x)):
                    report.append(f'    {me}: path lines {[t for _, t in c[me].path_lines(other)]}; @show_list '
                                  f'{lists[me].get(other, (None, None))[1]!r}; live endpoints of {other} for {me}: '
                                  f'{sorted(S.live_endpoints(tb, other, me))}')
            report.append('    conntrack timeline (client-to-client UDP flows; time from the first chat):')
            report += watcher.timeline(min(t0.values()))
            print('\n'.join(report), flush=True)
            for label, (x, y, _) in pairs.items():
                for me, other in ((x, y), (y, x)):
                    if got[me] is None:
                        failures.append(f'[{label}] {me}: no direct path to {other} within {bound:.0f}s of the first '
                                        f'chat (path lines {[t for _, t in c[me].path_lines(other)]})')
                    p = lists[me].get(other, (None, None))[1]
                    if not (p and S.path_ok(tb, other, 'direct', p)):
                        failures.append(f'[{label}] {me}: final @show_list path to {other} is {p!r}, expected direct')
            if failures:
                self.fail('cone_open failures:\n  ' + '\n  '.join(failures) + '\n' + '\n'.join(report) + '\n\n'
                          + S.evidence(server, *c.values(), tail=120))

    # ------------------------------------------------------------------ 5. STUN interop

    def test_stun_interop(self):
        """Debian's `stun` client (RFC 3489, stun-client 0.97) against natchat-server's
        port 10080 from a1 must report NAT A's public IP; the same client against coturn
        (turnserver --stun-only) is the control.  An RFC 5389 Binding request (magic
        cookie) is also checked against both natchat ports and coturn."""
        S.skip_if_no(self, 'stun', 'turnserver', 'timeout')
        with Testbed(nats={'A': 'cone', 'C': 'symmetric'},
                     hosts={'a1': ('A', '192.168.1.2'), 'c1': ('C', '10.0.0.2')},
                     public_hosts={'srv': S.SERVER_IP}) as tb:
            server = S.Server(tb)
            turn_log = os.path.join(tb.logdir, 'turnserver.log')
            turn = tb.popen('srv', ['turnserver', '-n', '--no-cli', '--listening-ip', S.SERVER_IP,
                                    '--listening-port', '3478', '--stun-only', '--simple-log',
                                    '--log-file', turn_log, '--no-stdout-log'])
            pub_a = tb.nat_public_ip('A')
            # wait (bounded) for coturn to answer
            coturn_ok = False
            for _ in range(20):
                r = self._py_stun(tb, 'a1', [S.SERVER_IP + ':3478'])
                if r.get(S.SERVER_IP + ':3478', {}).get('5389'):
                    coturn_ok = True
                    break
                if turn.poll() is not None:
                    break
                time.sleep(0.25)
            self.assertTrue(coturn_ok, f'coturn did not answer on 3478: rc={turn.poll()} '
                                       f'{tb.read_log(turn)[-2000:]} {_read(turn_log)[-2000:]}')
            failures = []
            outputs = {}
            for label, target in (('natchat-server', f'{S.SERVER_IP}:{S.SERVER_PORT}'),
                                  ('coturn', f'{S.SERVER_IP}:3478')):
                r = tb.run('a1', ['timeout', '10', 'stun', target, '1', '-v'], check=False, timeout=20)
                out = r.stdout + r.stderr
                outputs[label] = (r.returncode, out)
                print(f'\n=== stun {target} 1 -v (from a1, {label}) rc={r.returncode} ===\n'
                      + '\n'.join(l for l in out.splitlines() if not l.startswith(('Encoding', 'About to send'))
                                  and l.strip())[:3000], flush=True)
                m = re.search(r'MappedAddress = (\d+\.\d+\.\d+\.\d+):(\d+)', out)
                if not m:
                    failures.append(f'stun client vs {label} ({target}): no MappedAddress (rc {r.returncode}, '
                                    f'{"timed out" if r.returncode == 124 else "answered"})')
                elif m.group(1) != pub_a:
                    failures.append(f'stun client vs {label}: MappedAddress {m.group(1)}, expected {pub_a}')
            # the classic full test (no test number): just print its verdict
            for label, target in (('natchat-server', f'{S.SERVER_IP}:{S.SERVER_PORT}'),
                                  ('coturn', f'{S.SERVER_IP}:3478')):
                r = tb.run('a1', ['timeout', '15', 'stun', target], check=False, timeout=25)
                print(f'=== stun {target} (full test from a1, {label}) rc={r.returncode} ===\n'
                      f'{r.stdout.strip()}', flush=True)

            # RFC 5389 / RFC 3489 Binding requests by hand, from a1 (cone) and c1 (symmetric)
            targets = [f'{S.SERVER_IP}:{S.SERVER_PORT}', f'{S.SERVER_IP}:{S.ALT_PORT}', f'{S.SERVER_IP}:3478']
            for host in ('a1', 'c1'):
                res = self._py_stun(tb, host, targets)
                print(f'=== hand-made Binding requests from {host} (one socket) ===\n'
                      + json.dumps(res, indent=1), flush=True)
                pub = tb.public_ip(host)
                for t in targets:
                    got = res.get(t, {}).get('5389')
                    if not got or got.split(':')[0] != pub:
                        failures.append(f'{host}: RFC 5389 Binding request to {t}: mapped {got!r}, expected {pub}:*')
                    got3 = res.get(t, {}).get('3489')
                    if not got3 or got3.split(':')[0] != pub:
                        failures.append(f'{host}: RFC 3489 Binding request (no magic cookie) to {t}: '
                                        f'mapped {got3!r}, expected {pub}:*')
                m1 = res.get(targets[0], {}).get('5389')
                m2 = res.get(targets[1], {}).get('5389')
                if m1 and m2:
                    same = m1 == m2
                    want_same = tb.nat_kind(tb.nat_of(host)) != 'symmetric'
                    if same != want_same:
                        failures.append(f'{host}: mapping to ports {S.SERVER_PORT} and {S.ALT_PORT}: {m1} vs {m2} '
                                        f'(expected {"equal" if want_same else "different"})')
            # natchat's own STUN client (AddressDiscovery.MappingProbe) against coturn and
            # against natchat-server's two ports, from the cone and the symmetric host.
            probes = (('a1', ['--server-port', '3478', '--alt-port', '0'], 'coturn', None),
                      ('a1', ['--server-port', str(S.SERVER_PORT), '--alt-port', str(S.ALT_PORT)], 'natchat-server',
                       'endpoint-independent mapping (cone)'),
                      ('c1', ['--server-port', str(S.SERVER_PORT), '--alt-port', str(S.ALT_PORT)], 'natchat-server',
                       'endpoint-dependent mapping (symmetric)'))
            for host, args, label, kind in probes:
                r = tb.run(host, [S.binary('natchat'), '--probe', '--server', S.SERVER_IP, '--identity', 'none'] + args,
                           check=False, timeout=20)
                out = (r.stdout + r.stderr).strip()
                print(f'=== natchat --probe from {host} against {label} rc={r.returncode} ===\n{out}', flush=True)
                m = re.search(r'^mapped address: (\d+\.\d+\.\d+\.\d+):(\d+)$', r.stdout, re.M)
                if r.returncode != 0 or not m or m.group(1) != tb.public_ip(host):
                    failures.append(f'natchat --probe from {host} against {label}: rc {r.returncode}, output {out!r}, '
                                    f'expected mapped address {tb.public_ip(host)}:*')
                if kind and f'NAT: {kind}' not in r.stdout:
                    failures.append(f'natchat --probe from {host} against {label}: expected "NAT: {kind}" in {out!r}')
                # Behind the firewalled cone, the change-port answer is dropped and the mapping stays.
                if host == 'a1' and label == 'natchat-server' and 'unsolicited inbound: dropped, mapping kept' not in r.stdout:
                    failures.append(f'natchat --probe from a1: expected "unsolicited inbound: dropped, mapping kept" in {out!r}')
            if failures:
                self.fail('STUN interop failures:\n  ' + '\n  '.join(failures) + '\n\nnatchat-server stderr:\n'
                          + '\n'.join(server.stderr_tail(30)))

    @staticmethod
    def _py_stun(tb, host, targets):
        """From one socket in host, send an RFC 5389 and an RFC 3489 Binding request to each
        target; return {target: {'5389': 'ip:port'|None, '3489': ...}}."""
        r = tb.run(host, [sys.executable, '-c', STUN_SNIPPET] + targets, check=False, timeout=20)
        try:
            return json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {'error': r.stdout + r.stderr}


def median_or_none(xs):
    return None if not xs else round(S.median(xs), 3)


def _read(path):
    try:
        with open(path, errors='replace') as f:
            return f.read()
    except OSError:
        return ''


STUN_SNIPPET = r'''
import json, os, socket, struct, sys, time
COOKIE = 0x2112A442
def parse(data, tid, cookie):
    if len(data) < 20 or data[:2] != b'\x01\x01' or data[8:20] != tid[4:] and cookie: return None
    n = struct.unpack('!H', data[2:4])[0]; i = 20; mapped = xor = None
    while i + 4 <= 20 + n and i + 4 <= len(data):
        t, l = struct.unpack('!HH', data[i:i+4]); v = data[i+4:i+4+l]
        if t in (0x0001, 0x0020, 0x8020) and len(v) >= 8 and v[1] == 1:
            port = struct.unpack('!H', v[2:4])[0]; ip = bytearray(v[4:8])
            if t != 0x0001:
                port ^= COOKIE >> 16; ip = bytearray(a ^ b for a, b in zip(ip, struct.pack('!I', COOKIE)))
                xor = '%d.%d.%d.%d:%d' % (*ip, port)
            else:
                mapped = '%d.%d.%d.%d:%d' % (*ip, port)
        i += 4 + l + (-l % 4)
    return xor or mapped
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('0.0.0.0', 0))
out = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(':', 1); out[target] = {}
    for kind in ('5389', '3489'):
        tid = (struct.pack('!I', COOKIE) if kind == '5389' else os.urandom(4)) + os.urandom(12)
        req = struct.pack('!HH', 1, 0) + tid
        got = None
        for attempt in range(3):
            s.sendto(req, (host, int(port)))
            end = time.monotonic() + 0.7
            while got is None and time.monotonic() < end:
                s.settimeout(max(0.01, end - time.monotonic()))
                try:
                    data, _ = s.recvfrom(2048)
                except socket.timeout:
                    break
                if data[4:20] == tid:
                    got = parse(data, tid, kind == '5389')
            if got:
                break
        out[target][kind] = got
print(json.dumps(out))
'''


if __name__ == '__main__':
    unittest.main(verbosity=2)
