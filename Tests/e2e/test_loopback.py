"""Loopback end-to-end tests: natchat binaries and the reference classic peers.

Everything runs on 127.0.0.0/8: clients use distinct loopback aliases (127.0.0.2 ...)
with one common port, the way clients behind different NATs all use 10081.

"natchat" = the Swift binaries (natchat-server, natchat); "classic" = the reference
peers in classic_peers.py (the seed document's Python, fixed up).
"""

import collections
import os
import re
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (  # noqa: E402
    binary_path,
    CLIENT_BIN,
    SERVER_BIN,
    ProcessGroup,
    require_binaries,
    require_loopback_aliases,
    free_udp_port,
    udp_port_free,
)

ALIASES = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
SERVER_IP = "127.0.0.1"
CLIENT_BIN_PATH = binary_path(CLIENT_BIN)
START = "server program starts...."
REFUSAL = re.compile(r"server@chat registration refused: \S.*")


def _needs(*kinds):
    """Binary names needed for the given server/client kinds."""
    names = []
    for k, name in kinds:
        if k == "natchat" and name not in names:
            names.append(name)
    return names


Peer = collections.namedtuple("Peer", "cid endpoint")


def strip_self_private(texts, cid):
    """Drop 'cid@private:...' lines about cid itself.

    The seed server sends a newcomer its own @private line (it is "behind the same NAT"
    as itself); whether natchat-server does is not specified, so it is tolerated.
    """
    return [t for t in texts if not t.startswith(cid + "@private:")]


class E2ETest(unittest.TestCase):
    needs = ()

    def assert_stdout_exact(self, proc, expected, msg=""):
        """proc's stdout is exactly expected (after waiting for its last line to show)."""
        proc.wait_for_line(re.escape(expected[-1]))
        self.assertEqual(proc.lines(), expected, f"{proc.name}: stdout {msg}")

    def setUp(self):
        require_loopback_aliases(self, [SERVER_IP] + ALIASES + ["127.0.0.6", "127.0.0.7",
                                                                "127.0.0.8", "127.0.0.9"])
        require_binaries(self, *self.needs)
        self.g = ProcessGroup()
        self.addCleanup(self.g.stop_all)


# =========================================================================== scenarios


class ScenarioMixin:
    """Three clients register, list, chat, one exits, one is killed, a fourth joins.

    Subclasses set server_kind, kinds (for alice, bob, carol; dave reuses bob's kind)
    and the keep-alive timings.
    """

    server_kind = "classic"
    kinds = ("classic", "classic", "classic")
    keepalive_timeout = 2.5
    sweep_interval = 0.25
    keepalive_interval = 1

    def gone_line(self, sender, peer):
        """What sender is told of a chat to peer, who left: natchat-server keeps mail for an ID
        a natchat client claimed (issue 15), for a natchat/2 sender; else the seed's line."""
        if self.server_kind == "natchat" and sender.kind == "natchat" and peer.kind == "natchat":
            return f"* {peer.cid} is offline: queued at the server (kept 7 days)"
        return f"There is no {peer.cid} in registration list."

    def test_register_list_chat_exit_offline(self):
        g = self.g
        port = free_udp_port(tuple(ALIASES))
        srv = g.start_server(self.server_kind, bind=SERVER_IP,
                             timeout=self.keepalive_timeout, sweep=self.sweep_interval)
        expected_srv = [START]

        # ---- registration
        clients = {}
        for i, (cid, kind) in enumerate(zip(("alice", "bob", "carol"), self.kinds)):
            c = g.start_client(kind, cid, ALIASES[i], port, srv,
                               keepalive=self.keepalive_interval)
            srv.wait_for_line(re.escape(f"{cid} {c.endpoint}"))
            expected_srv.append(f"{cid} {c.endpoint}")
            c.wait_registered()
            for prev in clients.values():
                prev.wait_joined(c)
            clients[cid] = c
        alice, bob, carol = clients["alice"], clients["bob"], clients["carol"]

        everyone = sorted((c.cid, c.endpoint) for c in clients.values())
        for c in clients.values():
            c.wait_list(everyone)

        # ---- chat, every direction used at least once
        chats = [
            (alice, bob, "hello there"),
            (bob, alice, "I love Network!!"),
            (carol, alice, "안녕하세요 세계"),
            (alice, carol, "see you [soon] :)"),
            (carol, bob, "x"),
            (bob, carol, "from bob to carol"),
        ]
        for src, dst, text in chats:
            src.chat(dst.cid, text)
            dst.wait_chat(src.cid, text)
        alice.chat("nobody", "hi")
        alice.wait_for_line(re.escape("There is no nobody in registration list."))

        # ---- carol leaves with @exit
        self.assertEqual(carol.exit(), 0, f"{carol.name}: exit status")
        srv.wait_for_line(re.escape(f"carol is unregistered {carol.endpoint}"))
        expected_srv.append(f"carol is unregistered {carol.endpoint}")
        alice.wait_left(carol, "unregistered")
        bob.wait_left(carol, "unregistered")
        ab = sorted((c.cid, c.endpoint) for c in (alice, bob))
        alice.wait_list(ab)
        bob.wait_list(ab)
        alice.chat("carol", "still there?")
        alice.wait_for_line(re.escape(self.gone_line(alice, carol)))

        # ---- bob dies without a word (SIGKILL) and is evicted
        bob.signal(signal.SIGKILL)
        bob.wait_exit()
        srv.wait_for_line(re.escape(f"bob is off-line {bob.endpoint}"),
                          timeout=self.keepalive_timeout + 2 * self.sweep_interval + 5)
        expected_srv.append(f"bob is off-line {bob.endpoint}")
        alice.wait_left(bob, "off-line")
        alice.wait_list([("alice", alice.endpoint)])
        alice.chat("bob", "are you there?")
        alice.wait_for_line(re.escape(self.gone_line(alice, bob)))

        # ---- the survivors keep working: dave joins and chats with alice
        dave = g.start_client(self.kinds[1], "dave", ALIASES[3], port, srv,
                              keepalive=self.keepalive_interval)
        srv.wait_for_line(re.escape(f"dave {dave.endpoint}"))
        expected_srv.append(f"dave {dave.endpoint}")
        dave.wait_registered()
        alice.wait_joined(dave)
        ad = sorted((c.cid, c.endpoint) for c in (alice, dave))
        dave.wait_list(ad)
        alice.wait_list(ad)
        alice.chat("dave", "welcome")
        dave.wait_chat("alice", "welcome")
        dave.chat("alice", "thanks")
        alice.wait_chat("dave", "thanks")
        alice.sync()

        # ---- exactly-once and nothing else
        self.assert_stdout_exact(srv, expected_srv,
                         "server stdout must be exactly the registration/leave events\n"
                         + g.describe())
        for src, dst, text in chats + [(alice, dave, "welcome"), (dave, alice, "thanks")]:
            self.assertEqual(dst.count(dst.chat_regex(src.cid, text)), 1,
                             f"{dst.name}: 'From {src.cid} [{text}]' exactly once\n"
                             + g.describe())
        for c in (alice, bob):
            self.assertEqual(c.count(c.left_regex(carol, "unregistered"),
                                     stream=c.left_stream()), 1,
                             f"{c.name}: carol's unregistered notice exactly once")
        self.assertEqual(alice.count(alice.left_regex(bob, "off-line"),
                                     stream=alice.left_stream()), 1,
                         "alice: bob's off-line notice exactly once")
        self.assertEqual(alice.count(alice.left_regex(carol, "off-line"),
                                     stream=alice.left_stream()), 0,
                         "alice: carol left with @exit, not off-line")
        for c in (alice, dave):
            if c.kind == "natchat":
                self.assertEqual(c.count(r"\* registered as .*"), 1,
                                 f"{c.name}: registered line exactly once")
        for c, peer in ((alice, bob), (alice, carol), (alice, dave), (bob, carol)):
            self.assertEqual(c.count(c.joined_regex(peer), stream=c.left_stream()), 1,
                             f"{c.name}: {peer.cid}'s registration shown exactly once\n"
                             + g.describe())
        if alice.kind == "natchat":
            self.assertEqual(alice.count(r"\* (bob|carol|dave) is behind the same NAT .*"), 0,
                             "alice: nobody is behind alice's NAT (distinct public IPs)")
        self.assertTrue(alice.alive() and dave.alive() and srv.alive())


def _scenario_class(name, server_kind, kinds, doc, **timings):
    needs = _needs((server_kind, SERVER_BIN), *[(k, CLIENT_BIN) for k in kinds])
    attrs = dict(server_kind=server_kind, kinds=kinds, needs=tuple(needs), __doc__=doc,
                 **timings)
    cls = type(name, (ScenarioMixin, E2ETest), attrs)
    cls.__module__ = __name__
    globals()[name] = cls
    return cls


N, C = "natchat", "classic"
_scenario_class("TestScenarioClassicServerClassicClients", C, (C, C, C),
                "reference server + reference clients (checks the reference peers)")
# the brief's own intervals for the all-natchat run: 3 s timeout, 1 s sweep, 1 s keepalive
_scenario_class("TestScenarioNatchatServerNatchatClients", N, (N, N, N),
                "natchat-server + three natchat clients",
                keepalive_timeout=3, sweep_interval=1, keepalive_interval=1)
_scenario_class("TestScenarioNatchatServerClassicClients", N, (C, C, C),
                "natchat-server with reference clients")
_scenario_class("TestScenarioClassicServerNatchatClients", C, (N, N, N),
                "reference server with natchat clients")
_scenario_class("TestScenarioNatchatServerMixedA", N, (N, C, N),
                "natchat-server, natchat alice/carol + reference bob (killed)")
_scenario_class("TestScenarioNatchatServerMixedB", N, (C, N, C),
                "natchat-server, reference alice/carol + natchat bob (killed)")
_scenario_class("TestScenarioClassicServerMixedA", C, (N, C, N),
                "reference server, natchat alice/carol + reference bob (killed)")
_scenario_class("TestScenarioClassicServerMixedB", C, (C, N, C),
                "reference server, reference alice/carol + natchat bob (killed)")


# =========================================================================== same NAT


class SameNatRoutingMixin:
    """A client sends chat for a same-NAT peer to PRIVATE_IP:10081, others to the public
    endpoint.  alice is at 127.0.0.1 (private IP 127.0.0.1, prefix 127.0.0); a raw peer
    "near" registers from 127.0.0.1 declaring private 127.0.0.9 (same NAT), "far" from
    127.0.0.1 declaring 10.9.9.9 (different prefix: not the same NAT).  A trap socket
    on 127.0.0.9:10081 must receive alice's chat for near; near's public socket must not.
    """

    server_kind = "classic"
    client_kind = "classic"

    def test_same_nat_chat_goes_to_private_ip_port_10081(self):
        if not udp_port_free("127.0.0.9", 10081):
            self.skipTest("127.0.0.9:10081 is in use")
        g = self.g
        srv = g.start_server(self.server_kind, bind=SERVER_IP)
        trap = g.raw("127.0.0.9", 10081)
        port = free_udp_port((SERVER_IP,))
        alice = g.start_client(self.client_kind, "alice", SERVER_IP, port, srv)
        srv.wait_for_line(re.escape(f"alice {alice.endpoint}"))
        alice.wait_registered()

        near = g.raw(SERVER_IP)
        near.send("near 127.0.0.9", srv.addr)
        near.recv_line(f"near {near.endpoint}")
        if alice.kind == "natchat":
            alice.wait_joined(Peer("near", near.endpoint))
            alice.wait_for_line(r"\* near is behind the same NAT \(private 127\.0\.0\.9\)"
                                r"(?: .*)?")
        else:
            alice.wait_for_line(alice._server_recv("near@private:127.0.0.9"),
                                stream="stderr")

        alice.chat("near", "psst")
        got = trap.recv_line("alice@chat psst", timeout=5)
        self.assertEqual(got, ["alice@chat psst"], "trap 127.0.0.9:10081")
        alice.sync()  # alice finished handling the @chat command: all its sends are done
        self.assertEqual([t for t in near.drain() if "@chat" in t], [],
                         "chat for a same-NAT peer must not go to its public endpoint")

        far = g.raw(SERVER_IP)
        far.send("far 10.9.9.9", srv.addr)
        far.recv_line(f"far {far.endpoint}")
        alice.wait_joined(Peer("far", far.endpoint))
        alice.chat("far", "hi far")
        got = far.recv_until(lambda t: "@chat" in t, timeout=5)
        self.assertEqual([t for t in got if "@chat" in t], ["alice@chat hi far"])
        alice.sync()
        self.assertEqual(trap.drain(), [], "chat for a peer not behind the NAT went private")
        if alice.kind == "natchat":
            self.assertEqual(alice.count(r"\* far is behind the same NAT .*"), 0)
            self.assertEqual(alice.count(r"\* near is behind the same NAT .*"), 1)
        else:
            self.assertEqual(alice.count(r".*far@private:.*", stream="stderr"), 0)


for _s in (N, C):
    for _c in (N, C):
        _name = f"TestSameNatRouting{_s.capitalize()}Server{_c.capitalize()}Client"
        _cls = type(_name, (SameNatRoutingMixin, E2ETest), dict(
            server_kind=_s, client_kind=_c,
            needs=tuple(_needs((_s, SERVER_BIN), (_c, CLIENT_BIN))),
            __doc__=f"same-NAT routing: {_s} server, {_c} client"))
        _cls.__module__ = __name__
        globals()[_name] = _cls
del _s, _c, _name, _cls


# =========================================================================== raw protocol


class RawProtocolMixin:
    """Wire-level checks with plain UDP sockets, valid against both servers."""

    server_kind = "classic"

    def test_list_order_and_exit_notice(self):
        g = self.g
        srv = g.start_server(self.server_kind, bind=SERVER_IP)
        r1 = g.raw(SERVER_IP)
        r1.send("r1 10.1.0.1", srv.addr)
        own1 = f"r1 {r1.endpoint}"
        self.assertEqual(r1.recv_line(own1), [own1], "first client's list: only itself")

        r2 = g.raw("127.0.0.6")
        r2.send("r2 10.2.0.1", srv.addr)
        own2 = f"r2 {r2.endpoint}"
        self.assertEqual(strip_self_private(r2.recv_line(own2), "r2"), [own1, own2],
                         "newcomer: the existing list first, its own line last")
        self.assertEqual(strip_self_private(r1.recv_line(own2), "r1"), [own2],
                         "existing client: the newcomer's line")
        r1.send("r1@keepalive", srv.addr)
        r2.send("r2 @exit", srv.addr)
        bye2 = f"r2 is unregistered {r2.endpoint}"
        srv.wait_for_line(re.escape(bye2))
        self.assertEqual(r1.recv_line(bye2), [bye2])

        r3 = g.raw("127.0.0.7")
        r3.send("r3 10.3.0.1", srv.addr)
        own3 = f"r3 {r3.endpoint}"
        self.assertEqual(strip_self_private(r3.recv_line(own3), "r3"), [own1, own3],
                         "r2 must be gone from the list after its @exit")
        self.assertEqual(r1.recv_line(own3), [own3], "keep-alive must not be answered")
        leftovers = [t for t in strip_self_private(r2.drain(), "r2") if t != bye2]
        self.assertEqual(leftovers, [], "the leaver gets nothing but its own notice")
        self.assert_stdout_exact(srv, [START, own1, own2, bye2, own3])

    def test_keepalive_and_eviction_timing(self):
        """Keep-alives keep a client registered; silence for strictly more than the
        timeout (and at most timeout + sweep + slack) evicts it, and the others hear."""
        T, S = 1.0, 0.1
        g = self.g
        srv = g.start_server(self.server_kind, bind=SERVER_IP, timeout=T, sweep=S)
        watch, k = g.raw("127.0.0.6"), g.raw(SERVER_IP)
        own_w, own_k = f"watch {watch.endpoint}", f"k {k.endpoint}"
        watch.send("watch 10.6.0.1", srv.addr)
        watch.recv_line(own_w)
        k.send("k 10.1.0.1", srv.addr)
        k.recv_line(own_k)
        start = time.monotonic()
        for _ in range(100):  # 1.5 timeouts of keep-alives every 0.2 s
            if time.monotonic() - start > 1.5 * T:
                break
            k.send("k@keepalive", srv.addr)
            watch.send("watch@keepalive", srv.addr)
            time.sleep(0.2)
        self.assertEqual(srv.count(r".* is off-line .*"), 0,
                         "evicted despite keep-alives\n" + g.describe())

        offline_k = f"k is off-line {k.endpoint}"
        k.send("k@keepalive", srv.addr)  # the last word from k
        t0 = time.monotonic()
        elapsed = None
        for _ in range(1000):
            now = time.monotonic()
            if srv.count(re.escape(offline_k)):
                elapsed = now - t0
                break
            if now - t0 > T + S + 3:
                break
            watch.send("watch@keepalive", srv.addr)
            time.sleep(0.05)
        self.assertIsNotNone(elapsed, f"no {offline_k!r}\n" + g.describe())
        self.assertGreater(elapsed, T - 0.01, "evicted before the timeout")
        self.assertLess(elapsed, T + S + 1.0, "evicted too late")
        got = watch.recv_line(offline_k)
        self.assertEqual(strip_self_private(got, "watch")[-2:], [own_k, offline_k])
        self.assert_stdout_exact(srv, [START, own_w, own_k, offline_k])

    def test_same_nat_private_lines(self):
        g = self.g
        srv = g.start_server(self.server_kind, bind=SERVER_IP)
        n1, n2, n3 = g.raw(SERVER_IP), g.raw(SERVER_IP), g.raw(SERVER_IP)
        n4, n5 = g.raw("127.0.0.7"), g.raw("127.0.0.8")
        line = {name: f"{name} {s.endpoint}"
                for name, s in (("n1", n1), ("n2", n2), ("n3", n3), ("n4", n4), ("n5", n5))}

        n1.send("n1 10.1.2.3", srv.addr)
        self.assertEqual(strip_self_private(n1.recv_line(line["n1"]), "n1"), [line["n1"]])
        n2.send("n2 10.1.2.4", srv.addr)
        self.assertEqual(strip_self_private(n2.recv_line(line["n2"]), "n2"),
                         [line["n1"], "n1@private:10.1.2.3", line["n2"]],
                         "same public IP, same /24 private prefix: same NAT")
        n3.send("n3 10.9.9.9", srv.addr)  # same public IP, other prefix
        self.assertEqual(strip_self_private(n3.recv_line(line["n3"]), "n3"),
                         [line["n1"], line["n2"], line["n3"]],
                         "10.9.9.9 is not behind the NAT of 10.1.2.x")
        n4.send("n4 10.1.2.5", srv.addr)  # same prefix, other public IP
        got = strip_self_private(n4.recv_line(line["n4"]), "n4")
        self.assertEqual(got, [line["n1"], line["n2"], line["n3"], line["n4"]],
                         "other public IP: never the same NAT")
        n5.send("n5 172.16.0.1", srv.addr)  # sentinel: everything before it has arrived
        n5.recv_line(line["n5"])

        self.assertEqual(strip_self_private(n1.recv_line(line["n5"]), "n1"),
                         [line["n2"], "n2@private:10.1.2.4", line["n3"], line["n4"],
                          line["n5"]])
        self.assertEqual(strip_self_private(n2.recv_line(line["n5"]), "n2"),
                         [line["n3"], line["n4"], line["n5"]])
        self.assertEqual(strip_self_private(n3.recv_line(line["n5"]), "n3"),
                         [line["n4"], line["n5"]])
        self.assert_stdout_exact(srv, [START] + [line[k] for k in ("n1", "n2", "n3", "n4", "n5")])


class TestRawProtocolClassicServer(RawProtocolMixin, E2ETest):
    server_kind = "classic"

    def test_survives_garbage(self):
        """The reference server ignores what the seed's would have crashed on."""
        g = self.g
        srv = g.start_server("classic", bind=SERVER_IP)
        junk = g.raw(SERVER_IP)
        for data in (b"", b"\xff\xfe\xfd", b"x" * 65507, b"ghost@keepalive",
                     b"ghost @exit", b"@exit", b"nospace"):
            junk.send(data, srv.addr)
        probe = g.raw("127.0.0.6")
        probe.send("probe 10.0.0.1", srv.addr)
        own = f"probe {probe.endpoint}"
        self.assertEqual(strip_self_private(probe.recv_line(own), "probe"), [own])
        self.assert_stdout_exact(srv, [START, own])
        self.assertTrue(srv.alive())


class TestRawProtocolNatchatServer(RawProtocolMixin, E2ETest):
    server_kind = "natchat"
    needs = (SERVER_BIN,)

    def _register_ok(self, sock, cid, private, srv):
        """Register cid from sock; returns the datagrams received before its own line
        (without @private lines about IDs this socket registered)."""
        if not hasattr(sock, "ids"):
            sock.ids = []
        sock.ids.append(cid)
        sock.send(f"{cid} {private}", srv.addr)
        got = sock.recv_line(f"{cid} {sock.endpoint}")[:-1]
        for own in sock.ids:
            got = strip_self_private(got, own)
        return got

    def test_bad_ids_never_register(self):
        g = self.g
        srv = g.start_server("natchat", bind=SERVER_IP)
        # (ID, how many refusal datagrams): the contract sends one when the ID is
        # printable; for an empty or non-printable ID at most one is accepted.
        cases = [
            ("a" * 33, "one"),
            ("é" * 17, "one"),  # 17 characters, 34 bytes
            ("a@b", "one"),
            ("a:b", "one"),
            ("server", "one"),
            ("", "at most one"),
            ("a\x01b", "at most one"),
            ("a\x7fb", "at most one"),
            ("\x1b[31mred", "at most one"),
            ("a\nb", "at most one"),
        ]
        registered = []  # (id, line) of the sentinel registrations, in order
        for i, (bad, rule) in enumerate(cases):
            with self.subTest(bad_id=bad):
                sock = g.raw(SERVER_IP)
                sock.send(f"{bad} 10.{i}.0.1", srv.addr)
                # sentinel: a valid registration from the same socket, processed after
                before = self._register_ok(sock, f"ok{i}", f"10.{i}.0.1", srv)
                expected_rest = sorted(l for _, l in registered)
                registered.append((f"ok{i}", f"ok{i} {sock.endpoint}"))
                refusals = [t for t in before if t.startswith("server@chat")]
                rest = [t for t in before if not t.startswith("server@chat")]
                self.assertEqual(sorted(rest), expected_rest,
                                 "the list must hold only valid IDs")
                for t in refusals:
                    self.assertRegex(t, REFUSAL)
                    self.assertTrue(t.isprintable(), f"refusal echoes control chars: {t!r}")
                if rule == "one":
                    self.assertEqual(len(refusals), 1, f"refusals for {bad!r}: {refusals!r}")
                else:
                    self.assertLessEqual(len(refusals), 1, f"refusals for {bad!r}")
        self.assert_stdout_exact(srv, [START] + [l for _, l in registered],
                         "nothing is printed for refused registrations")
        self.assertTrue(srv.alive())

    def test_id_of_32_bytes_registers(self):
        g = self.g
        srv = g.start_server("natchat", bind=SERVER_IP)
        sock = g.raw(SERVER_IP)
        cid = "b" * 32
        self.assertEqual(self._register_ok(sock, cid, "10.0.0.1", srv), [])
        srv.wait_for_line(re.escape(f"{cid} {sock.endpoint}"))

    def test_garbage_does_not_crash_or_register(self):
        g = self.g
        srv = g.start_server("natchat", bind=SERVER_IP)
        junk = g.raw(SERVER_IP)
        for data in (b"", b"\x00\x00\x00\x00", b"\xff\xfe\xfd", b"\xff\xfe 10.0.0.1",
                     b"good\xff 10.0.0.1", b"\xc3 10.0.0.1", b"x" * 65507,
                     b"y" * 3000 + b" 10.0.0.1", b"@keepalive", b"ghost@keepalive",
                     b"@exit", b" @exit", b"ghost @exit", b"@chat hi", b"\r\n", b"   ",
                     b"\t"):
            junk.send(data, srv.addr)
        probe = g.raw("127.0.0.6")
        own = f"probe {probe.endpoint}"
        self.assertEqual(self._register_ok(probe, "probe", "10.0.0.1", srv), [],
                         "no garbage may have registered")
        self.assert_stdout_exact(srv, [START, own])
        for t in junk.drain():
            self.assertTrue(t.startswith("server@chat "),
                            f"an unregistered sender got a non-server@chat reply: {t!r}")
        self.assertTrue(srv.alive())

    def test_duplicate_id_refused_while_alive(self):
        g = self.g
        srv = g.start_server("natchat", bind=SERVER_IP, timeout=1, sweep=0.2)
        a, b = g.raw(SERVER_IP), g.raw("127.0.0.6")
        dup_a = f"dup {a.endpoint}"
        self.assertEqual(self._register_ok(a, "dup", "10.1.0.1", srv), [])
        b.send("dup 10.2.0.1", srv.addr)
        before = self._register_ok(b, "dupb", "10.2.0.1", srv)
        refusals = [t for t in before if t.startswith("server@chat")]
        self.assertEqual(len(refusals), 1, f"received {before!r}")
        self.assertRegex(refusals[0], REFUSAL)
        self.assertEqual([t for t in before if not t.startswith("server@chat")], [dup_a],
                         "the holder stays registered at its own endpoint")
        dupb = f"dupb {b.endpoint}"
        self.assertEqual(strip_self_private(a.recv_line(dupb), "dup"), [dupb],
                         "the holder hears nothing about the refused attempt")
        self.assert_stdout_exact(srv, [START, dup_a, dupb])

        # both fall silent: once "dup" is evicted the ID is free again
        srv.wait_for_line(re.escape(f"dup is off-line {a.endpoint}"), timeout=6)
        srv.wait_for_line(re.escape(f"dupb is off-line {b.endpoint}"), timeout=6)
        # (off-line notices about dup may still be queued at b: they are not a reply)
        before = [t for t in self._register_ok(b, "dup", "10.2.0.1", srv)
                  if " is off-line " not in t]
        self.assertEqual(before, [], "nobody is registered any more")
        srv.wait_for_line(re.escape(f"dup {b.endpoint}"))
        self.assertEqual(srv.count(re.escape(f"dup {b.endpoint}")), 1)


class TestClassicViewOfNatchatNewcomer(E2ETest):
    """What a classic peer hears when a natchat client registers with natchat-server:
    the seed protocol's single 'ID PUBLIC_IP:PORT' datagram, once."""

    needs = (SERVER_BIN, CLIENT_BIN)

    def test_classic_peer_hears_newcomer_exactly_once(self):
        g = self.g
        srv = g.start_server("natchat", bind=SERVER_IP)
        watch = g.raw("127.0.0.6")
        watch.send("watch 10.6.0.1", srv.addr)
        watch.recv_line(f"watch {watch.endpoint}")
        port = free_udp_port((ALIASES[0],))
        alice = g.start_client("natchat", "alice", ALIASES[0], port, srv)
        alice.wait_registered()
        alice.wait_joined(Peer("watch", watch.endpoint))
        late = g.raw("127.0.0.7")  # sentinel registration
        late.send("late 10.7.0.1", srv.addr)
        late.recv_line(f"late {late.endpoint}")
        got = watch.recv_line(f"late {late.endpoint}")
        r = watch.recv(0.5)  # short quiet window for anything sent late
        if r is not None:
            got.append(r[0])
        got += watch.drain()
        got = strip_self_private(got, "watch")
        self.assertEqual(got, [f"alice {alice.endpoint}", f"late {late.endpoint}"],
                         "datagrams a classic peer received\n" + g.describe())


# =========================================================================== natchat CLI


class TestNatchatClientCLI(E2ETest):
    needs = (SERVER_BIN, CLIENT_BIN)

    def _pair(self):
        srv = self.g.start_server("natchat", bind=SERVER_IP)
        port = free_udp_port(tuple(ALIASES[:2]))
        cs = []
        for cid, ip in (("alice", ALIASES[0]), ("bob", ALIASES[1])):
            c = self.g.start_client("natchat", cid, ip, port, srv)
            c.wait_registered()
            cs.append(c)
        cs[0].wait_joined(cs[1])
        return srv, cs[0], cs[1]

    def test_malformed_commands(self):
        srv, alice, bob = self._pair()
        for cmd in ("@chat", "@chat bob", "@frobnicate"):
            since = alice.mark()
            alice.send_line(cmd)
            end = alice.sync()
            self.assertEqual(alice.count(r"(usage:|unknown command:).*", since=since,
                                         until=end), 1,
                             f"{cmd!r}: one usage:/unknown command: line\n"
                             + self.g.describe())
        alice.chat("bob", "ok")
        bob.wait_chat("alice", "ok")
        self.assertEqual(bob.count(r"From .*"), 1,
                         "malformed @chat must not send anything\n" + self.g.describe())
        self.assertTrue(alice.alive())

    def test_end_of_input_is_exit(self):
        srv, alice, bob = self._pair()
        alice.close_stdin()
        alice.wait_for_line(r"\* bye")
        self.assertEqual(alice.wait_exit(), 0)
        srv.wait_for_line(re.escape(f"alice is unregistered {alice.endpoint}"))
        bob.wait_left(alice, "unregistered")
        bob.wait_list([("bob", bob.endpoint)])

    def test_exit_command(self):
        srv, alice, bob = self._pair()
        self.assertEqual(bob.exit(), 0)
        srv.wait_for_line(re.escape(f"bob is unregistered {bob.endpoint}"))
        alice.wait_left(bob, "unregistered")
        self.assertEqual(srv.count(r".* is unregistered .*"), 1)

    def test_status_ping_and_status_socket(self):
        """@status and @ping on a direct path, and natchat --status from another process."""
        srv = self.g.start_server("natchat", bind=SERVER_IP)
        port = free_udp_port(tuple(ALIASES[:2]))
        alice = self.g.start_client("natchat", "alice", ALIASES[0], port, srv, home="alice")
        bob = self.g.start_client("natchat", "bob", ALIASES[1], port, srv, home="bob")
        for c in (alice, bob):
            c.wait_registered()
        alice.wait_joined(bob)
        since = alice.mark()
        alice.chat("bob", "hello")
        alice.wait_for_line(re.escape("* delivered to bob"), since=since)
        alice.wait_for_line(re.escape(f"* path to bob: direct {bob.endpoint}"), since=since)

        since = alice.mark()
        alice.send_line("@status")
        end = alice.sync()
        status = alice.lines()[since:end]
        self.assertEqual(len(status), 4, "\n".join(status))
        self.assertRegex(status[0], r"^alice  key \S+  natchat/2$")
        self.assertRegex(status[1], r"^  server " + re.escape(f"{SERVER_IP}:{srv.port}") + r"  rtt (?:\d+\.\d ms|-)$")
        self.assertRegex(status[2], r"^  public " + re.escape(alice.endpoint) + r"  NAT .*$")
        self.assertRegex(status[3], r"^bob  direct " + re.escape(bob.endpoint) + r"  rtt \d+\.\d ms  heard \d+(?:\.\d)? s ago$")

        since = alice.mark()
        alice.send_line("@ping bob")
        alice.wait_for_line(r"pong from bob via direct " + re.escape(bob.endpoint) + r" in \d+\.\d ms", since=since)

        # another process of alice's user: the same lines (numbers aside); exit status 0
        home = self.g.home("alice")
        env = dict(os.environ, HOME=home, XDG_STATE_HOME=os.path.join(home, ".local/state"))
        env.pop("XDG_RUNTIME_DIR", None)
        number = re.compile(r"\d+(?:\.\d+)? (?:ms|s)")

        def normalized(lines):
            return [" ".join(number.sub("#", line).split()) for line in lines]

        for args in (["--id", "alice"], []):    # alone in its folder: --id may be left out
            query = self.g.start("status-query", [CLIENT_BIN_PATH, "--status", *args], env=env)
            self.assertEqual(query.wait_exit(), 0, query.describe())
            self.assertEqual(normalized(query.lines()), normalized(status), query.describe())
        query = self.g.start("status-query", [CLIENT_BIN_PATH, "--status", "--id", "bob"], env=env)
        self.assertEqual(query.wait_exit(), 1, query.describe())
        self.assertEqual(query.lines(), [])
        query.wait_for_line(re.escape("natchat: no natchat shell is running for bob"), stream="stderr")

        # the socket goes with the shell
        socket_path = os.path.join(home, ".local/state/natchat/alice.sock")
        self.assertTrue(os.path.exists(socket_path))
        self.assertEqual(alice.exit(), 0)
        self.assertFalse(os.path.exists(socket_path))

    def test_duplicate_id_refused(self):
        srv, alice, bob = self._pair()
        port = free_udp_port((ALIASES[2],))
        # another user's program (its own HOME: no shared state with alice)
        imposter = self.g.start_client("natchat", "alice", ALIASES[2], port, srv,
                                       home="imposter")
        # alice's key claimed the ID (the server runs on its default store): another key is
        # refused as such, and the shell exits with status 2.
        imposter.wait_for_line(re.escape("From server [ID alice is claimed by another key]"))
        self.assertEqual(imposter.wait_exit(), 2, imposter.describe())
        self.assertEqual(imposter.count(r"\* registered as .*"), 0)
        alice.sync()
        self.assert_stdout_exact(srv, [START, f"alice {alice.endpoint}", f"bob {bob.endpoint}"])
        alice.wait_list([("alice", alice.endpoint), ("bob", bob.endpoint)])


class PromptMixin:
    client_kind = "classic"

    def test_prompts_for_missing_id_and_server(self):
        srv = self.g.start_server("classic", bind=SERVER_IP)
        port = free_udp_port((ALIASES[0],))
        c = self.g.start_client(self.client_kind, "alice", ALIASES[0], port, srv,
                                prompt_id=True, prompt_server=True)
        c.send_line("alice")
        c.send_line(SERVER_IP)
        srv.wait_for_line(re.escape(f"alice {ALIASES[0]}:{port}"))
        # the prompts have no newline: they prefix the first line printed after them
        if c.kind == "natchat":
            c.wait_for_line(r"\* registered as alice \(public " + re.escape(c.endpoint)
                            + r"\).*$", search=True)
        else:
            c.wait_registered()
        c.send_line("@show_list")
        hit = c.wait_for_line(r"(?:^|: )" + re.escape(f"alice {ALIASES[0]}:{port}")
                              + r"(?: .*)?$", search=True)
        text = "\n".join(c.lines()[:hit.index + 1])
        i, j = text.find("Enter client ID: "), text.find("Enter server IP address: ")
        self.assertTrue(0 <= i < j, f"prompts in order on stdout: {text!r}")


class TestPromptsClassicClient(PromptMixin, E2ETest):
    client_kind = "classic"


class TestPromptsNatchatClient(PromptMixin, E2ETest):
    client_kind = "natchat"
    needs = (CLIENT_BIN,)


class ServerSignalMixin:
    server_kind = "classic"

    def _check(self, sig):
        srv = self.g.start_server(self.server_kind, bind=SERVER_IP)
        srv.signal(sig)
        rc = srv.wait_exit(timeout=5)
        self.assertEqual(rc, 0, f"exit status after {sig.name}\n{srv.describe()}")

    def test_sigterm_clean_exit(self):
        self._check(signal.SIGTERM)

    def test_sigint_clean_exit(self):
        self._check(signal.SIGINT)


class TestSignalsClassicServer(ServerSignalMixin, E2ETest):
    server_kind = "classic"


class TestSignalsNatchatServer(ServerSignalMixin, E2ETest):
    server_kind = "natchat"
    needs = (SERVER_BIN,)


if __name__ == "__main__":
    unittest.main()
