"""NAT fault end-to-end tests on the real-NAT testbed (Tests/testbed, needs root).

* test_nat_reboot: a1 (cone A) <-> b1 (cone B) and c1 (symmetric C) <-> pub direct; then
  NATs A and C forget every mapping (conntrack -F); chats both ways are still shown
  exactly once and both paths heal back to direct within a bound.
* test_mapping_expiry: NAT C's UDP conntrack timeouts are 3 s, clients keep the default
  10 s keep-alive, so c1's mapping to the server expires between keep-alives and the
  server sees c1 at a new public port; chats to and from c1 are still shown exactly once.
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

HEAL_BOUND = 30.0
DELIVERY_BOUND = 25.0       # the client gives up after 30 s


class NatFaultTest(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        S.require_natchat(self)

    def _send(self, c, pairs, tag):
        """One @chat per (sender, receiver), all at once. Returns (sent, marks)."""
        marks = {h: x.mark() for h, x in c.items()}
        sent = {}
        for s, r in pairs:
            text = f'{tag}-{s}-to-{r}-{uuid.uuid4().hex[:4]}'
            sent[(s, r)] = (text, c[s].chat(r, text))
        return sent, marks

    def _check(self, c, sent, marks, tag, failures, bound=DELIVERY_BOUND, settle=2.0):
        """Wait (bounded, from the sends) for the acknowledgements; then check each text is
        shown exactly once, only by its addressee.  Returns {(s, r): (ack s or None, shown)}."""
        t_sent = min(t for _, t in sent.values())
        acks = {}
        for (s, r), (text, t) in sent.items():
            hit = S.wait_delivered(c[s], r, max(0.1, t_sent + bound - time.monotonic()), since=marks[s])
            acks[(s, r)] = None if hit is None else hit[1] - t
        time.sleep(settle)
        out = {}
        for (s, r), (text, t) in sent.items():
            counts = S.shown_counts(c, s, text)
            shown = counts[r][0]
            leaks = {h: n for h, (_, n) in counts.items() if h != r and n}
            out[(s, r)] = (acks[(s, r)], shown)
            where = f'[{tag}] {s} -> {r} ({text!r})'
            if shown != 1:
                failures.append(f'{where}: shown {shown}x by {r} (expected exactly once)')
            if leaks:
                failures.append(f'{where}: text also printed by {leaks}')
            if acks[(s, r)] is None:
                failures.append(f'{where}: no "* delivered to {r}" within {bound}s')
            if c[s].count(re.escape(f'* NOT delivered to {r}: "{text}"')):
                failures.append(f'{where}: sender printed NOT delivered')
        return out

    def _exchange(self, c, pairs, tag, failures, bound=DELIVERY_BOUND, settle=2.0):
        sent, marks = self._send(c, pairs, tag)
        return self._check(c, sent, marks, tag, failures, bound, settle)

    # ------------------------------------------------------------------ 3. NAT reboot

    def test_nat_reboot(self):
        with Testbed(nats={'A': 'cone', 'B': 'cone', 'C': 'symmetric'},
                     hosts={'a1': ('A', '192.168.1.2'), 'b1': ('B', '192.168.1.2'), 'c1': ('C', '10.0.0.2')},
                     public_hosts={'srv': S.SERVER_IP, 'pub': '203.0.113.20'}) as tb:
            server = S.Server(tb)
            c = S.start_clients(tb, ['a1', 'b1', 'c1', 'pub'])
            failures = []
            pairs = [('a1', 'b1'), ('c1', 'pub')]
            both_ways = [p for x, y in pairs for p in ((x, y), (y, x))]
            before = self._exchange(c, both_ways, 'pre', failures)
            for x, y in pairs:
                for me, other in ((x, y), (y, x)):
                    if c[me].wait(r'\* path to ' + other + r': direct .*', 10) is None:
                        failures.append(f'before the reboot: {me} has no direct path to {other}')
            if failures:
                self.fail('setup before the NAT reboot failed:\n  ' + '\n  '.join(failures) + '\n\n'
                          + S.evidence(server, *c.values(), tail=100))
            lists_before = {h: x.show_list() for h, x in c.items()}
            t_flush = time.monotonic()
            tb.flush_conntrack('A')
            tb.flush_conntrack('C')
            post_sent, post_marks = self._send(c, both_ways, 'post')

            # heal: both ends of both pairs show a direct path again (polled @show_list) to the
            # endpoint the peer's NAT maps it to *now* (the conntrack table of the router)
            healed = {}
            stale = {}
            deadline = t_flush + HEAL_BOUND
            for _ in range(200):
                for x, y in pairs:
                    for me, other in ((x, y), (y, x)):
                        if (me, other) in healed:
                            continue
                        p = c[me].show_list().get(other, (None, None))[1]
                        live = S.live_endpoints(tb, other, me)
                        if p and S.path_ok(tb, other, 'direct', p) and p.split(' ', 1)[1] in live:
                            healed[(me, other)] = (time.monotonic() - t_flush, p)
                        else:
                            stale[(me, other)] = (round(time.monotonic() - t_flush, 2), p, sorted(live))
                if len(healed) == 4 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            after = self._check(c, post_sent, post_marks, 'post', failures)
            # a last exchange after healing, over whatever path is current
            final = self._exchange(c, both_ways, 'healed', failures)
            lists_after = {h: x.show_list() for h, x in c.items()}

            report = ['', '=== NAT reboot (conntrack -F on A and C) ===']
            for x, y in pairs:
                for me, other in ((x, y), (y, x)):
                    lines_after = [f'{t - t_flush:+.2f}s {txt}' for t, txt in c[me].path_lines(other)
                                   if t >= t_flush]
                    h = healed.get((me, other))
                    report.append(f'{me} -> {other}: before {lists_before[me].get(other, (None, None))[1]!r}, '
                                  f'after {lists_after[me].get(other, (None, None))[1]!r}; '
                                  f'direct again at {"-" if h is None else f"{h[0]:.2f}s"} after the flush; '
                                  f'path lines after the flush: {lines_after or "none (path never changed)"}')
                    if h is None:
                        t_last, p_last, live = stale.get((me, other), (None, None, None))
                        failures.append(f'{me} -> {other}: path not direct to a live endpoint within {HEAL_BOUND}s '
                                        f'after the NAT reboot: at +{t_last}s @show_list said {p_last!r} while the '
                                        f'NAT maps {other} to {live} for {me}; path lines after the flush: '
                                        f'{lines_after or "none"}')
                    p = lists_after[me].get(other, (None, None))[1]
                    live = S.live_endpoints(tb, other, me)
                    if not (p and S.path_ok(tb, other, 'direct', p) and p.split(' ', 1)[1] in live):
                        failures.append(f'{me} -> {other}: final @show_list path {p!r}, expected direct to one '
                                        f'of {sorted(live)} (the NAT\'s current mapping)')
            for tag, res in (('pre', before), ('post', after), ('healed', final)):
                report.append(f'{tag}: ' + ', '.join(f'{s}->{r} ack {S_fmt(a)}s shown {n}x'
                                                     for (s, r), (a, n) in res.items()))
            report.append(f'NAT A mappings now: {[m for m in tb.mappings("A") if "10080" not in m["remote"]]}')
            report.append(f'NAT C mappings now: {[m for m in tb.mappings("C") if "10080" not in m["remote"]]}')
            print('\n'.join(report), flush=True)
            if failures:
                self.fail('NAT reboot failures:\n  ' + '\n  '.join(failures) + '\n\n'
                          + S.evidence(server, *c.values(), tail=120))

    # ------------------------------------------------------------------ 4. mapping expiry

    def test_mapping_expiry(self):
        with Testbed(nats={'A': 'cone', 'C': 'symmetric'},
                     hosts={'a1': ('A', '192.168.1.2'), 'c1': ('C', '10.0.0.2')},
                     public_hosts={'srv': S.SERVER_IP, 'pub': '203.0.113.20'}) as tb:
            tb.set_udp_timeout('C', 3, 3)
            self.assertEqual(tb.get_udp_timeout('C'), (3, 3))
            server = S.Server(tb)
            c = S.start_clients(tb, ['a1', 'c1', 'pub'], extra=['--keepalive-interval', '10'])
            failures = []
            reg = c['c1'].wait_registered(1)
            first_ep = reg[3].group(1)
            pre = self._exchange(c, [('a1', 'c1'), ('pub', 'c1'), ('c1', 'a1'), ('c1', 'pub')], 'pre', failures)

            # the mapping to the server expires between keep-alives: the server sees a new port
            moved = c['c1'].wait(r'\* the server now sees you at (' + S.IPPORT + ')', 25)
            if moved is None:
                self.fail(f'c1 never printed "* the server now sees you at" within 25 s '
                          f'(registered as {first_ep}, NAT C udp timeout 3 s)\n'
                          + S.evidence(server, *c.values(), tail=100))
            new_ep = moved[3].group(1)
            t_moved = moved[1] - c['c1'].started
            if new_ep.split(':')[0] != tb.nat_public_ip('C') or new_ep == first_ep:
                failures.append(f'c1: server now sees {new_ep}, expected {tb.nat_public_ip("C")}:<new port> '
                                f'(first {first_ep})')
            # the peers learn the new endpoint
            seen_by = {}
            for h in ('a1', 'pub'):
                ep = None
                for _ in range(20):
                    ep = c[h].show_list().get('c1', (None, None))[0]
                    announced = [m[3].group(1) for m in
                                 c['c1'].find_all(r'\* the server now sees you at (' + S.IPPORT + ')')]
                    if ep in announced:
                        break
                    time.sleep(0.5)
                seen_by[h] = ep
                if ep == first_ep:
                    failures.append(f'{h}: @show_list still lists c1 at its first endpoint {first_ep} '
                                    f'after c1 moved to {new_ep}')
            post = self._exchange(c, [('a1', 'c1'), ('pub', 'c1'), ('c1', 'a1'), ('c1', 'pub')], 'post', failures)
            server_moves = [l for l in server.stderr_tail(200) if 'moved' in l]
            pub_paths = [f'{t - c["pub"].started:.1f}s {x}' for t, x in c['pub'].path_lines('c1')]
            print('\n=== mapping expiry (NAT C udp timeout 3 s, keep-alive 10 s) ===\n'
                  f'c1 registered as {first_ep}; "* the server now sees you at {new_ep}" at {t_moved:.2f}s; '
                  f'moves announced to c1: '
                  f'{[m[2] for m in c["c1"].find_all(r"[*] the server now sees you at .*")]}\n'
                  f'peers list c1 at: {seen_by}\n'
                  f'server "moved" log lines: {len(server_moves)}\n'
                  f'c1 re-registrations: {[t for t in c["c1"].texts() if "registering again" in t]}\n'
                  f'pub path lines to c1 (direct path pings every 5 s vs a 3 s mapping): {pub_paths}\n'
                  + '\n'.join(f'{tag}: ' + ', '.join(f'{s}->{r} ack {S_fmt(a)}s shown {n}x'
                                                      for (s, r), (a, n) in res.items())
                              for tag, res in (('pre', pre), ('post', post))), flush=True)
            for h in ('a1', 'pub'):
                bad = [t for t in c[h].texts() if re.fullmatch(r'\* c1 is (off-line|unregistered) .*', t)]
                if bad:
                    failures.append(f'{h}: c1 reported gone after a mapping change: {bad}')
            if failures:
                self.fail('mapping expiry failures:\n  ' + '\n  '.join(failures) + '\n\n'
                          + S.evidence(server, *c.values(), tail=120))


def S_fmt(x):
    return '-' if x is None else f'{x:.2f}'


if __name__ == '__main__':
    unittest.main(verbosity=2)
