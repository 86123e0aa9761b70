"""Replays and path stability (issue 12), and the roster under loss (issue 13), on the
real-NAT testbed (Tests/testbed, needs root).

1. test_1_replay_keeps_nobody_alive: alice (behind cone NAT A, keep-alive every 2 s) and bob
   (behind cone NAT B) register with a server run with --keepalive-timeout 15
   --sweep-interval 2; every datagram alice sends the server is captured on the server's
   namespace (offer, signed register, keep-alives, connect, any relay or STUN).  alice is
   SIGKILLed about 9 s after her registration (her cookie is still valid), then everything
   captured is re-sent every 2 s for 75 s from her public address (raw IP_HDRINCL socket on
   `pub`).  The server must evict her within 15 + 2 + 8 s of her last real keep-alive, bob
   must print "* alice is off-line", and the replays must not register her again (no new
   server line "alice IP:PORT", no "* alice joined" at bob) for the rest of the replay.
2. test_2_paths_do_not_flap_under_loss: the issue-4 loss set-up (20 % random loss both ways
   on NATs A and B) on a cone pair a1-b1; once both print a direct path, one chat every
   3 s alternating (every 6 s each way) for 60 s, then the loss stops.  At most 3
   "* path to <peer>:" lines per client during the lossy minute, and no path change shown
   that is undone within 1 s (a change the user sees must hold); every chat shown exactly
   once by its addressee and acknowledged ("* delivered to") within 30 s of the last one.
3. test_3_chat_right_after_registration_loss (issue 13): test_security_faults'
   test_1_loss_20pct without the settling wait, with the loss on (20 % both ways on NATs A,
   B, C, D) before the clients start, so the roster travels lossy too.  Chatting starts as
   soon as a1, b1, c1 and d1 have printed "* registered as": 10 chats each way per pair
   (a1-b1 cone, c1-d1 symmetric); every text shown exactly once by its addressee, one
   "* delivered to" per chat within 40 s, and no "There is no <peer> in registration list."
   for the (registered) peer.

Numbers are printed in "=== ... ===" blocks.  Everything runs in testbed namespaces and is
killed by PID when the testbed closes (unittest cleanups close the raw and packet sockets
first).  spoof.py captures (Sniffer, datagrams_from) and replays (Replayer).
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

import spoof  # noqa: E402
import test_nat_support as S  # noqa: E402
from testbed import Testbed  # noqa: E402

IPPORT = S.IPPORT
IDENT = ['--identity', 'none']
PAIR_NATS = {'A': 'cone', 'B': 'cone'}
PAIR_HOSTS = {'a1': ('A', '192.168.1.2'), 'b1': ('B', '192.168.1.2')}
PUB = '203.0.113.20'


def kill9(node):
    """SIGKILL a testbed process by PID (`ip netns exec` execs, so it is the program itself)."""
    if node.proc.poll() is None:
        os.kill(node.proc.pid, signal.SIGKILL)
    node.proc.wait(5)


def chat_shown(client, sender, text):
    return client.count(re.escape(f'From {sender} [{text}]'))


def fail_with(testcase, title, failures, *nodes, extra='', tail=120):
    if failures:
        testcase.fail(f'{title}: {len(failures)} failure(s):\n  ' + '\n  '.join(failures)
                      + ('\n\n' + extra if extra else '') + '\n\n' + S.evidence(*nodes, tail=tail))


def rel(t, t0):
    return '-' if t is None else f'{t - t0:+7.2f} s'


class Base(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        S.require_natchat(self)

    def closing(self, obj):
        self.addCleanup(obj.close)
        return obj


# --------------------------------------------------------------------------- 1: replay


class ReplayTest(Base):
    TIMEOUT, SWEEP, SLACK = 15, 2, 8
    KILL_AFTER = 9.0            # seconds after alice's registration (her cookie lives 30-60 s)
    REPLAY_FOR, REPLAY_EVERY = 75.0, 2.0

    def test_1_replay_keeps_nobody_alive(self):
        tb = self.enterContext(Testbed(nats=PAIR_NATS, hosts=PAIR_HOSTS,
                                       public_hosts={'srv': S.SERVER_IP, 'pub': PUB}))
        server = S.Server(tb, extra=['--keepalive-timeout', str(self.TIMEOUT),
                                     '--sweep-interval', str(self.SWEEP)])
        sniff = self.closing(spoof.Sniffer(tb.ns('srv')))
        a_ip = tb.nat_public_ip('A')
        alice = S.Client(tb, 'a1', 'alice', extra=IDENT + ['--keepalive-interval', '2'])
        bob = S.Client(tb, 'b1', 'bob', extra=IDENT)
        setup = []
        reg = alice.wait_registered(20)
        if reg is None or bob.wait_registered(20) is None:
            fail_with(self, 'replay (setup)', ['alice or bob did not register within 20 s'], server, alice, bob)
        t_reg = reg[1]
        for x, o in ((alice, 'bob'), (bob, 'alice')):
            if x.wait(r'\* ' + o + r' joined \(.*', 10) is None:
                setup.append(f'{x.cid}: no "* {o} joined" line')
        fail_with(self, 'replay (setup)', setup, server, alice, bob)
        a_ep = re.search(r'public (' + IPPORT + r')\)', reg[2]).group(1)

        # a bit of everything: chat (connect, punch, maybe relay), keep-alives every 2 s
        tag = uuid.uuid4().hex[:6]
        m_alice, m_bob = alice.mark(), bob.mark()
        alice.chat('bob', f'before-{tag}')
        delivered = S.wait_delivered(alice, 'bob', max(0.1, t_reg + self.KILL_AFTER - time.monotonic()),
                                     since=m_alice)
        time.sleep(max(0.0, t_reg + self.KILL_AFTER - time.monotonic()))
        ms, mb = server.mark(), bob.mark()
        t_kill = time.monotonic()
        kill9(alice)
        time.sleep(0.3)                       # what alice sent just before her death arrives
        real = spoof.datagrams_from(sniff, (a_ip, None), until=t_kill + 0.3)
        got = spoof.kinds(real)
        for k in ('offer', 'register', 'keepAlive', 'connect'):
            if k not in got:
                setup.append(f'the capture of alice\'s datagrams holds no {k} (got {got})')
        if delivered is None:
            setup.append('alice -> bob not acknowledged before the kill')
        kas = [p['t'] for p in real if spoof.ext_type(p['payload']) == 'keepAlive']
        if setup:
            fail_with(self, 'replay (setup)', setup, server, alice, bob)
        last_ka, last_real = max(kas), max(p['t'] for p in real)
        deadline = last_ka + self.TIMEOUT + self.SWEEP + self.SLACK

        replay = self.closing(spoof.Replayer(tb.ns('pub'), real, interval=self.REPLAY_EVERY,
                                             duration=self.REPLAY_FOR))
        replay.start()
        off_re = r'alice is off-line (' + IPPORT + r')'
        evict = server.wait(off_re, max(0.1, deadline - time.monotonic()), since=ms)
        late = None
        if evict is None:                     # keep watching, to print when (if ever) it came
            late = server.wait(off_re, max(0.1, replay.started + self.REPLAY_FOR - time.monotonic()), since=ms)
        replay.wait(max(0.1, replay.started + self.REPLAY_FOR + 5 - time.monotonic()))
        replay.stop()
        time.sleep(1.0)                       # the last round's effects

        failures = []
        first_evict = evict or late
        bob_off = bob.find_all(re.escape(f'* alice is off-line ') + IPPORT, since=mb)
        if evict is None:
            failures.append(f'server: no "alice is off-line" within {self.TIMEOUT}+{self.SWEEP}+{self.SLACK} s of '
                            f'alice\'s last real keep-alive (replays kept her registered); '
                            + (f'it came only {late[1] - last_ka:.2f} s after it' if late else
                               f'none at all in the {self.REPLAY_FOR:.0f} s of replays'))
        elif evict[3].group(1) != a_ep:
            failures.append(f'server: {evict[2]!r}, expected alice\'s endpoint {a_ep}')
        if first_evict is not None and not any(t <= first_evict[1] + 3 for _, t, _, _ in bob_off):
            failures.append(f'bob: no "* alice is off-line" within 3 s of the server\'s eviction '
                            f'(bob printed {[x for _, _, x, _ in bob_off] or "none"})')
        elif first_evict is None and not bob_off:
            failures.append('bob: no "* alice is off-line" line at all')
        rereg_srv = server.find_all(r'alice ' + IPPORT, since=first_evict[0] + 1 if first_evict else ms)
        rejoin = bob.find_all(r'\* alice (joined|moved to) .*', since=mb)
        if first_evict is not None:
            if rereg_srv:
                failures.append(f'server registered alice again after evicting her (replayed datagrams): '
                                f'{[(round(t - t_kill, 2), x) for _, t, x, _ in rereg_srv]}')
            if rejoin:
                failures.append(f'bob saw alice come back after the eviction: '
                                f'{[(round(t - t_kill, 2), x) for _, t, x, _ in rejoin]}')
        if replay.errors:
            failures.append(f'replay send errors: {replay.errors[:5]}')
        srv_after = server.lines(ms)
        print('\n=== replay of alice\'s captured datagrams after her SIGKILL (keepalive-timeout '
              f'{self.TIMEOUT}, sweep {self.SWEEP}; times from alice\'s registration) ===\n'
              f'captured {len(real)} datagrams from {a_ip}: {got}\n'
              f'registered {rel(t_reg, t_reg)}; chat acknowledged {rel(delivered and delivered[1], t_reg)}; '
              f'last real keep-alive {rel(last_ka, t_reg)}; last real datagram {rel(last_real, t_reg)}; '
              f'SIGKILL {rel(t_kill, t_reg)}\n'
              f'replays: {len(replay.rounds)} rounds every {self.REPLAY_EVERY:.0f} s, {replay.sent} datagrams, '
              f'{rel(replay.rounds[0] if replay.rounds else None, t_reg)} .. '
              f'{rel(replay.rounds[-1] if replay.rounds else None, t_reg)}\n'
              f'eviction deadline {rel(deadline, t_reg)} (last keep-alive + {self.TIMEOUT}+{self.SWEEP}+{self.SLACK} s); '
              f'server "alice is off-line" {rel(first_evict and first_evict[1], t_reg)} '
              f'({"-" if first_evict is None else f"{first_evict[1] - last_ka:.2f} s"} after the last keep-alive)\n'
              f'bob: {[(round(t - t_reg, 2), x) for _, t, x, _ in bob_off + rejoin] or "-"}\n'
              f'server stdout after the kill: {[(round(t - t_reg, 2), x) for t, x in srv_after] or "-"}',
              flush=True)
        fail_with(self, 'replay after SIGKILL', failures, server, alice, bob)


# --------------------------------------------------------------------------- 2: paths under loss


class PathStabilityTest(Base):
    LOSS, MINUTE, MAX_PATH_LINES, ACK_BOUND = 0.2, 60.0, 3, 30.0
    EVERY = 3.0                 # one chat every 3 s, alternating: each way every 6 s
    HOLD = 1.0                  # a path change undone within this many seconds did not hold

    def test_2_paths_do_not_flap_under_loss(self):
        tb = self.enterContext(Testbed(nats=PAIR_NATS, hosts=PAIR_HOSTS, public_hosts={'srv': S.SERVER_IP}))
        server = S.Server(tb)
        c = S.start_clients(tb, ['a1', 'b1'], extra=IDENT)
        peer = {'a1': 'b1', 'b1': 'a1'}
        for nat in PAIR_NATS:
            tb.set_loss(nat, self.LOSS)
        tag = uuid.uuid4().hex[:6]
        m0 = {h: x.mark() for h, x in c.items()}
        sent = []
        t_loss = time.monotonic()
        for s, r in peer.items():                     # starts the punching
            text = f'warm-{tag}-{s}-to-{r}'
            c[s].chat(r, text)
            sent.append((s, r, text))
        direct = {}
        for h, x in c.items():
            hit = x.wait(r'\* path to ' + peer[h] + r': direct .*', max(0.1, t_loss + 30 - time.monotonic()),
                         since=m0[h])
            if hit is not None:
                direct[h] = hit
        if len(direct) != 2:
            fail_with(self, 'paths under loss (setup)',
                      [f'{h}: no direct path to {peer[h]} within 30 s under {self.LOSS:.0%} loss'
                       for h in c if h not in direct], server, *c.values())

        t0 = time.monotonic()
        marks = {h: x.mark() for h, x in c.items()}
        n = int(self.MINUTE / self.EVERY)
        order = ['a1', 'b1']
        for i in range(n):
            s = order[i % 2]
            text = f'lossy-{tag}-{s}-to-{peer[s]}-{i // 2:02d}'
            c[s].chat(peer[s], text)
            sent.append((s, peer[s], text))
            time.sleep(max(0.0, t0 + (i + 1) * self.EVERY - time.monotonic()))
        t_last = time.monotonic()
        for nat in PAIR_NATS:
            tb.set_loss(nat, 0)
        t_off = time.monotonic()
        want = {h: sum(1 for s, _, _ in sent if s == h) for h in c}
        acked = {}
        for _ in range(1000):
            for h, x in c.items():
                if h not in acked and x.count(re.escape(f'* delivered to {peer[h]}'), since=m0[h]) >= want[h]:
                    acked[h] = time.monotonic()
            if len(acked) == len(c) or time.monotonic() > t_last + self.ACK_BOUND:
                break
            time.sleep(0.25)
        time.sleep(2.0)                                # late duplicates would show up here

        failures = []
        flips = {}
        for h, x in c.items():
            flips[h] = [(t, text) for t, text in x.path_lines(peer[h], since=marks[h]) if t <= t_off]
            if len(flips[h]) > self.MAX_PATH_LINES:
                failures.append(f'{h}: {len(flips[h])} "* path to {peer[h]}:" lines in the lossy minute '
                                f'(at most {self.MAX_PATH_LINES})')
            undone = [(a, b) for a, b in zip(flips[h], flips[h][1:]) if b[0] - a[0] < self.HOLD]
            if undone:
                failures.append(f'{h}: {len(undone)} path change(s) shown and undone within {self.HOLD:.0f} s '
                                f'(the user must see a change only when it holds): '
                                + '; '.join(f'{a[1].split(": ", 1)[1]!r} at {a[0] - t0:.2f} s, then '
                                            f'{b[1].split(": ", 1)[1]!r} at {b[0] - t0:.2f} s' for a, b in undone))
        for s, r, text in sent:
            k = chat_shown(c[r], s, text)
            if k != 1:
                failures.append(f'{s} -> {r} {text!r}: shown {k}x by {r} (expected exactly once)')
            if c[s].count(re.escape(f'* NOT delivered to {r}: "{text}"'), since=m0[s]):
                failures.append(f'{s} -> {r} {text!r}: sender printed NOT delivered')
        rows = []
        for h, x in c.items():
            k = x.count(re.escape(f'* delivered to {peer[h]}'), since=m0[h])
            rows.append(f'{h} -> {peer[h]}: {want[h]} chats (1 before the minute), "* delivered to" {k}x, all '
                        f'acknowledged {rel(acked.get(h), t_last)} after the last chat; '
                        f'{len(flips[h])} path lines in the lossy minute:')
            rows += [f'      {t - t0:6.2f} s  {text}' for t, text in flips[h]]
            after = [text for t, text in x.path_lines(peer[h], since=marks[h]) if t > t_off]
            rows.append(f'      after the loss stopped: {after or "-"}')
            if k != want[h]:
                failures.append(f'{h} -> {peer[h]}: "* delivered to" printed {k}x for {want[h]} chats '
                                f'(within {self.ACK_BOUND:.0f} s of the last chat)')
        print(f'\n=== {self.LOSS:.0%} loss on NATs A and B, a1<->b1 direct '
              f'(a1 after {direct["a1"][1] - t_loss:.2f} s, b1 after {direct["b1"][1] - t_loss:.2f} s), '
              f'then {n} chats over {t_last - t0:.0f} s, alternating ===\n' + '\n'.join(rows), flush=True)
        fail_with(self, 'paths under loss', failures, server, *c.values())


# --------------------------------------------------------------------------- 3: roster under loss (issue 13)


class RosterUnderLossTest(Base):
    LOSS, PER_DIR, REG_BOUND, BOUND, SETTLE = 0.2, 10, 40.0, 40.0, 3.0
    NATS = {'A': 'cone', 'B': 'cone', 'C': 'symmetric', 'D': 'symmetric'}
    HOSTS = {'a1': ('A', '192.168.1.2'), 'b1': ('B', '192.168.1.2'),
             'c1': ('C', '10.0.0.2'), 'd1': ('D', '10.0.0.2')}

    def test_3_chat_right_after_registration_loss(self):
        tb = self.enterContext(Testbed(nats=self.NATS, hosts=self.HOSTS, public_hosts={'srv': S.SERVER_IP}))
        server = S.Server(tb)
        for nat in self.NATS:
            tb.set_loss(nat, self.LOSS)               # before anyone registers: the roster travels lossy
        t_start = time.monotonic()
        c = {h: S.Client(tb, h, extra=IDENT) for h in self.HOSTS}
        regs = {}
        for h, x in c.items():
            hit = x.wait_registered(max(0.1, t_start + self.REG_BOUND - time.monotonic()))
            if hit is not None:
                regs[h] = hit[1]
        if len(regs) != len(c):
            fail_with(self, 'chat right after registration (setup)',
                      [f'{h}: not registered within {self.REG_BOUND:.0f} s under {self.LOSS:.0%} loss'
                       for h in c if h not in regs], server, *c.values())
        t_first = time.monotonic()                    # no settling wait: chat now
        known = {h: sorted(o for o in c if o != h and x.count(r'\* ' + o + r' joined \(.*'))
                 for h, x in c.items()}
        pairs = [('a1', 'b1'), ('c1', 'd1')]
        tag = uuid.uuid4().hex[:6]
        marks = {h: x.mark() for h, x in c.items()}
        sent = []
        for i in range(self.PER_DIR):
            for x, y in pairs:
                for s, r in ((x, y), (y, x)):
                    text = f'early-{tag}-{s}-to-{r}-{i:02d}'
                    c[s].chat(r, text)
                    sent.append((s, r, text))
            time.sleep(0.2)
        t_last = time.monotonic()
        directions = [(s, r) for x, y in pairs for s, r in ((x, y), (y, x))]
        done_at = {}
        for _ in range(1000):
            for s, r in directions:
                if (s, r) not in done_at and \
                        c[s].count(re.escape(f'* delivered to {r}'), since=marks[s]) >= self.PER_DIR:
                    done_at[(s, r)] = time.monotonic() - t_first
            if len(done_at) == len(directions) or time.monotonic() > t_last + self.BOUND:
                break
            time.sleep(0.25)
        time.sleep(self.SETTLE)                       # late duplicates would show up here
        for nat in self.NATS:
            tb.set_loss(nat, 0)

        failures = []
        unknown = {}
        for s, r in directions:
            lines = c[s].find_all(re.escape(f'There is no {r} in registration list.'), since=marks[s])
            if lines:
                unknown[(s, r)] = [round(t - t_first, 2) for _, t, _, _ in lines]
                failures.append(f'{s}: "There is no {r} in registration list." {len(lines)}x for a registered '
                                f'peer (at {unknown[(s, r)]} s after the first chat)')
        for s, r, text in sent:
            n = chat_shown(c[r], s, text)
            if n != 1:
                failures.append(f'{s} -> {r} {text!r}: shown {n}x by {r} (expected exactly once)')
            leaks = [h for h in c if h not in (s, r) and c[h].count(re.escape(text), since=marks[h], search=True)]
            if leaks:
                failures.append(f'{s} -> {r} {text!r}: also shown by {leaks}')
            if c[s].count(re.escape(f'* NOT delivered to {r}: "{text}"'), since=marks[s]):
                failures.append(f'{s} -> {r} {text!r}: sender printed NOT delivered')
        rows = []
        for s, r in directions:
            n = c[s].count(re.escape(f'* delivered to {r}'), since=marks[s])
            shown = sum(chat_shown(c[r], s, t) for s2, r2, t in sent if (s2, r2) == (s, r))
            rows.append(f'{s:>3} -> {r:<3} delivered {n:2d}/{self.PER_DIR}  all acknowledged after '
                        f'{done_at.get((s, r), float("nan")):6.2f} s  shown {shown}/{self.PER_DIR}  '
                        f'"There is no {r}" {len(unknown.get((s, r), []))}x')
            if n != self.PER_DIR:
                failures.append(f'{s} -> {r}: "* delivered to {r}" printed {n}x for {self.PER_DIR} chats '
                                f'within {self.BOUND:.0f} s of the last @chat')
        print(f'\n=== {self.LOSS:.0%} loss on NATs A, B, C, D from before registration; chat right after '
              f'registering: {self.PER_DIR} chats each way, a1<->b1 (cone) and c1<->d1 (symmetric) ===\n'
              f'registered after ' + ', '.join(f'{h} {t - t_start:.2f} s' for h, t in regs.items())
              + f'; first chat {t_first - t_start:.2f} s after the start\n'
              f'peers each client had printed "joined" for at the first chat: {known}\n' + '\n'.join(rows),
              flush=True)
        fail_with(self, 'chat right after registration under loss', failures, server, *c.values())


if __name__ == '__main__':
    unittest.main(verbosity=2)
