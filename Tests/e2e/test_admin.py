"""The server's admin HTTP listener (issue 18): /metrics, /healthz and the status page.

A scripted session against natchat-server --admin 127.0.0.1:<free port>:
  - two natchat clients register (alice, bob: two registrations, natchat/2);
  - bob is stopped (SIGSTOP), so alice's punch toward him fails and her chat goes through
    the server's relay; bob is resumed and shows the chat (one relay, delivered);
  - a raw classic registration of the reserved ID "server" is refused (one refusal);
then:
  - GET /metrics passes Prometheus's own checker (`promtool check metrics`) and the
    counters moved by what the session did;
  - GET /healthz is 200; an unknown path 404, a POST 405;
  - the status page, loaded in headless Chromium (`--dump-dom`), shows the same figures as
    /metrics, and Chromium logs no console message for it (the check is shown to fail on a
    broken page served beside it);
  - the alert rules in docs/operations.md pass `promtool check rules`;
  - an explicit --admin address already in use stops a second server (exit 1, a clear
    message); the default address only warns;
  - a server of a cluster (the test PostgreSQL, Tests/e2e/pg.py) exports its link's metrics.
promtool (Debian: prometheus) and chromium are installed by bin/test when root; without
them the parts that need them skip, loudly.
"""

import http.server
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pg  # noqa: E402
from harness import (  # noqa: E402
    CLIENT_BIN,
    REPO,
    SERVER_BIN,
    ProcessGroup,
    binary_path,
    free_udp_port,
    kill_and_reap,
    require_binaries,
    require_loopback_aliases,
    strict,
)

SERVER_IP = "127.0.0.1"
HTTP_TIMEOUT = 10
CHROMIUM_TIMEOUT = 60
POLL_LIMIT = 120          # polls of /metrics while waiting for a figure, 0.25 s apart
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$")


def skip_loudly(testcase, msg):
    sys.stderr.write("\n*** SKIPPED: " + msg + " ***\n")
    sys.stderr.flush()
    if strict():
        testcase.fail(msg + " [NATCHAT_E2E_STRICT=1]")
    testcase.skipTest(msg)


def free_tcp_port(addr=SERVER_IP):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def http_get(url, method="GET"):
    """(status, headers, body text) of one request; HTTP errors are answers too."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            return response.status, dict(response.headers), response.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode("utf-8")


def parse_samples(text):
    """{'name{labels}': value} of an exposition (comments left out)."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if not m:
            raise AssertionError(f"not a sample line: {line!r}")
        samples[m.group(1)] = float(m.group(2))
    return samples


def total(samples, name):
    """The sum of every series of metric `name` (all label sets)."""
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def page_figures(dom):
    """{metric: value} of the status page's cells marked data-metric."""
    figures = {}
    for m in re.finditer(r'data-metric="([^"]+)">([^<]*)<', dom):
        figures[m.group(1).replace("&quot;", '"')] = float(m.group(2))
    return figures


def run_chromium(url, chromium):
    """Loads url headless; returns (dom, console lines). Chromium logs each console
    message (errors, CSP refusals, uncaught exceptions) as a ':CONSOLE' line on stderr with
    --enable-logging=stderr --v=0."""
    profile = tempfile.mkdtemp(prefix="natchat-chromium-")
    argv = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
            "--virtual-time-budget=2000", "--dump-dom", url]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_and_reap(proc)
        raise AssertionError(f"chromium did not finish loading {url} within {CHROMIUM_TIMEOUT}s")
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    if proc.returncode != 0:
        raise AssertionError(f"chromium exited {proc.returncode} for {url}: {err.decode(errors='replace')[-2000:]}")
    console = [l for l in err.decode(errors="replace").splitlines() if ":CONSOLE" in l]
    return out.decode(errors="replace"), console


class BrokenPage(http.server.BaseHTTPRequestHandler):
    """A page with a script error: the console check must catch it."""

    def do_GET(self):
        body = b"<!DOCTYPE html><html><body><p>broken</p><script>undefinedFunction();</script></body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class AdminListenerTest(unittest.TestCase):
    def setUp(self):
        require_loopback_aliases(self, [SERVER_IP, "127.0.0.2", "127.0.0.3", "127.0.0.4"])
        require_binaries(self, SERVER_BIN, CLIENT_BIN)
        self.g = ProcessGroup()
        self.addCleanup(self.g.stop_all)

    def metrics(self, base):
        status, headers, body = http_get(base + "/metrics")
        self.assertEqual(status, 200, body)
        self.assertTrue(headers.get("Content-Type", "").startswith("text/plain; version=0.0.4"), headers)
        return body, parse_samples(body)

    def wait_metric(self, base, predicate, what):
        """Polls /metrics (bounded) until predicate(samples); returns the samples."""
        samples = {}
        for _ in range(POLL_LIMIT):
            _, samples = self.metrics(base)
            if predicate(samples):
                return samples
            time.sleep(0.25)
        self.fail(f"/metrics never showed {what}; last: {samples}\n{self.g.describe()}")

    def test_scripted_session_metrics_health_and_page(self):
        admin_port = free_tcp_port()
        base = f"http://{SERVER_IP}:{admin_port}"
        server = self.g.start_server("natchat", bind=SERVER_IP, timeout=120,
                                     extra=["--alt-port", "0", "--admin", f"{SERVER_IP}:{admin_port}"])

        status, _, body = http_get(base + "/healthz")
        self.assertEqual((status, body), (200, "ok\n"))
        self.assertEqual(http_get(base + "/nope")[0], 404)
        self.assertEqual(http_get(base + "/metrics", method="POST")[0], 405)
        _, before = self.metrics(base)
        self.assertEqual(before.get(f'natchat_server_info{{version="{self.version()}"}}'), 1.0)

        # One registration each for alice and bob (natchat/2).
        port = free_udp_port(("127.0.0.2", "127.0.0.3"))
        alice = self.g.start_client("natchat", "alice", "127.0.0.2", port, server, home="alice")
        bob = self.g.start_client("natchat", "bob", "127.0.0.3", port, server, home="bob")
        alice.wait_registered()
        bob.wait_registered()
        alice.wait_joined(bob)

        # One relay: bob cannot answer alice's punch, so her chat is relayed.
        bob.signal(signal.SIGSTOP)
        try:
            alice.chat("bob", "through the relay")
            relayed = self.wait_metric(base, lambda s: s.get("natchat_server_relayed_datagrams_total", 0) >= 1,
                                       "a relayed datagram")
        finally:
            bob.signal(signal.SIGCONT)
        bob.wait_chat("alice", "through the relay")

        # One refusal: a raw classic registration of the reserved ID.
        raw = self.g.raw(bind="127.0.0.4")
        raw.send("server 10.0.0.1", (SERVER_IP, int(server.port)))
        raw.recv_until(lambda t: "registration refused" in t, what="the refusal")

        text, after = self.metrics(base)
        delta = lambda name: after.get(name, 0) - before.get(name, 0)  # noqa: E731
        self.assertEqual(delta('natchat_server_registrations_total{dialect="natchat2"}'), 2, text)
        self.assertEqual(delta('natchat_server_registrations_total{dialect="classic"}'), 0, text)
        self.assertEqual(after.get('natchat_server_clients{dialect="natchat2"}'), 2, text)
        self.assertEqual(delta('natchat_server_registration_refusals_total{reason="reserved_id"}'), 1, text)
        self.assertEqual(total(after, "natchat_server_registration_refusals_total")
                         - total(before, "natchat_server_registration_refusals_total"), 1, text)
        self.assertGreaterEqual(delta("natchat_server_relayed_datagrams_total"), 1, text)
        # A relayed datagram carries at least the sender's ID and the sealed chat.
        self.assertGreater(delta('natchat_server_sent_bytes_total{kind="relay"}'),
                           relayed["natchat_server_relayed_datagrams_total"] * 20, text)
        self.assertGreaterEqual(delta("natchat_server_punch_rounds_total"), 1, text)
        self.assertGreaterEqual(delta('natchat_server_received_datagrams_total{kind="registration"}'), 2, text)
        self.assertGreaterEqual(delta('natchat_server_received_datagrams_total{kind="classic"}'), 3, text)
        self.assertGreaterEqual(delta('natchat_server_received_datagrams_total{kind="stun"}'), 1, text)
        self.assertEqual(delta("natchat_server_evictions_total"), 0, text)
        self.assertIn("natchat_server_store_batches_total", after, "the default store's metrics")
        self.check_with_promtool(text)

        status, _, _ = http_get(base + "/healthz")
        self.assertEqual(status, 200)
        self.check_page_in_chromium(base)
        self.assertTrue(server.alive())

    def version(self):
        source = (REPO / "Modules" / "RendezvousServer" / "NatchatVersion.swift").read_text()
        return re.search(r'current = "([^"]+)"', source).group(1)

    def check_with_promtool(self, exposition):
        promtool = shutil.which("promtool")
        if not promtool:
            skip_loudly(self, "promtool missing (apt-get install prometheus): the exposition is not checked")
        checked = subprocess.run([promtool, "check", "metrics"], input=exposition.encode(), capture_output=True,
                                 timeout=60)
        self.assertEqual(checked.returncode, 0, f"promtool check metrics: {checked.stdout!r} {checked.stderr!r}")

    def check_page_in_chromium(self, base):
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if not chromium:
            skip_loudly(self, "chromium missing (apt-get install chromium): the status page is not checked")

        # The console check can fail: a page with a script error, served beside the server.
        broken = http.server.ThreadingHTTPServer((SERVER_IP, 0), BrokenPage)
        thread = threading.Thread(target=broken.serve_forever, daemon=True)
        thread.start()
        try:
            _, console = run_chromium(f"http://{SERVER_IP}:{broken.server_address[1]}/", chromium)
        finally:
            broken.shutdown()
            broken.server_close()
            thread.join(timeout=5)
        self.assertTrue(any("undefinedFunction" in line for line in console),
                        f"the console check missed a broken page's error: {console}")

        _, before = self.metrics(base)
        dom, console = run_chromium(base + "/", chromium)
        _, after = self.metrics(base)
        self.assertEqual(console, [], "console messages on the status page")
        self.assertIn("natchat-server", dom)
        self.assertIn(f'<span id="version">{self.version()}</span>', dom)
        figures = page_figures(dom)
        for name in ['natchat_server_clients{dialect="natchat2"}', "natchat_server_registrations_total",
                     "natchat_server_registration_refusals_total",
                     'natchat_server_registration_refusals_total{reason="reserved_id"}',
                     "natchat_server_relayed_datagrams_total", 'natchat_server_sent_bytes_total{kind="relay"}',
                     "natchat_server_store_batches_total"]:
            self.assertIn(name, figures, f"the page shows no {name}: {figures}")
            metric = name if "{" in name or name in after else None
            low = before[metric] if metric else total(before, name)
            high = after[metric] if metric else total(after, name)
            self.assertTrue(low <= figures[name] <= high, f"{name}: page {figures[name]}, /metrics {low}..{high}")
        self.assertEqual(figures["natchat_server_registrations_total"], 2)
        self.assertEqual(figures["natchat_server_registration_refusals_total"], 1)

    def test_alert_rules_in_the_docs_pass_promtool(self):
        promtool = shutil.which("promtool")
        if not promtool:
            skip_loudly(self, "promtool missing (apt-get install prometheus): the alert rules are not checked")
        doc = (REPO / "docs" / "operations.md").read_text()
        blocks = [b for b in re.findall(r"```yaml\n(.*?)```", doc, re.S) if b.lstrip().startswith("groups:")]
        self.assertEqual(len(blocks), 1, "one rules block (groups:) in docs/operations.md")
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
            f.write(blocks[0])
        try:
            checked = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, timeout=60)
        finally:
            os.unlink(f.name)
        self.assertEqual(checked.returncode, 0, f"promtool check rules: {checked.stdout!r} {checked.stderr!r}")
        self.assertIn(b"3 rules found", checked.stdout)

    def test_a_cluster_servers_metrics_include_its_link(self):
        """With a shared database (the test PostgreSQL): the link's metrics are there and the
        exposition still passes promtool."""
        if not pg.available():
            skip_loudly(self, pg.UNAVAILABLE)
        tcp_url, _ = pg.fresh_database("admin")
        self.addCleanup(pg.drop, pg.name_of(tcp_url))
        admin_port = free_tcp_port()
        base = f"http://{SERVER_IP}:{admin_port}"
        server = self.g.start_server("natchat", bind=SERVER_IP, wait=False, state="cluster",
                                     extra=["--alt-port", "0", "--store", tcp_url, "--name", "admin-a",
                                            "--admin", f"{SERVER_IP}:{admin_port}"])
        server.wait_for_line(r"server program starts\.\.\.\.", timeout=30)
        samples = self.wait_metric(base, lambda s: s.get("natchat_server_cluster_database_up") == 1,
                                   "the shared database up")
        self.assertIn("natchat_server_cluster_pending_claims", samples)
        self.assertIn("natchat_server_store_batches_total", samples)
        self.check_with_promtool(self.metrics(base)[0])
        self.assertIn('data-metric="natchat_server_cluster_pending_presence"', http_get(base + "/")[2])

    def test_an_explicit_address_in_use_stops_the_server_the_default_only_warns(self):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
            taken.bind((SERVER_IP, 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            argv = [binary_path(SERVER_BIN), "--bind", SERVER_IP, "--port", free_udp_port((SERVER_IP,)),
                    "--alt-port", "0", "--store", "memory", "--admin", f"{SERVER_IP}:{port}"]
            proc = self.g.start("explicit-admin-server", argv)
            code = proc.wait_exit(timeout=30)
            self.assertEqual(code, 1, proc.describe())
            self.assertTrue(any(f"admin listener cannot bind {SERVER_IP}:{port}" in l for l in proc.lines("stderr")),
                            proc.describe())
            self.assertFalse(any("server program starts" in l for l in proc.lines()), proc.describe())
        # The default address taken (by a listener of ours when it is free): a warning, and the server serves.
        holder = None
        try:
            holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            holder.bind((SERVER_IP, 10090))
            holder.listen(1)
        except OSError:
            holder.close()
            holder = None  # something else already holds it: that serves the test as well
        try:
            server = self.g.start_server("natchat", bind=SERVER_IP, extra=["--alt-port", "0", "--store", "memory"])
            server.wait_for_line(r".*the admin listener is off.*", stream="stderr")
            self.assertTrue(server.alive())
        finally:
            if holder:
                holder.close()


if __name__ == "__main__":
    unittest.main()
