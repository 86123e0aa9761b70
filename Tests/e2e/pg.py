"""The test PostgreSQL cluster that bin/test starts (bin/lib.sh: start_test_postgres), for
end-to-end tests that run natchat-server with --store postgres://...

  import pg
  if not pg.available(): self.skipTest(pg.UNAVAILABLE)
  tcp_url, socket_url = pg.fresh_database("cluster")
  ...
  pg.drop(name)   # or leave it: the cluster is thrown away at the end of bin/test

NATCHAT_TEST_POSTGRES is postgres://postgres@127.0.0.1:PORT/postgres (trust
authentication); NATCHAT_TEST_POSTGRES_SOCKET_DIR and NATCHAT_TEST_POSTGRES_PORT name its
Unix socket (DIR/.s.PGSQL.PORT), the only way to it from inside a test network namespace.
Only databases made here are dropped; nothing here touches another cluster.
"""

import os
import secrets
import shutil
import subprocess
import urllib.parse

UNAVAILABLE = ("PostgreSQL tests skipped: NATCHAT_TEST_POSTGRES is unset "
               "(bin/test starts one; apt-get install postgresql)")


def url():
    """The admin URL of the test cluster, or None."""
    return os.environ.get("NATCHAT_TEST_POSTGRES") or None


def available():
    """True when a test cluster is named and psql can reach it."""
    admin = url()
    if not admin or shutil.which("psql") is None:
        return False
    try:
        done = subprocess.run(["psql", admin, "-XAtqc", "SELECT 1"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and done.stdout.strip() == "1"


def _psql(sql):
    admin = url()
    if not admin:
        raise RuntimeError(UNAVAILABLE)
    done = subprocess.run(["psql", admin, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError("psql failed: " + done.stderr.strip())
    return done.stdout


def _with_database(base, name, extra=""):
    parts = urllib.parse.urlsplit(base)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + name, extra, ""))


def fresh_database(prefix="natchat"):
    """Creates a database with a unique name on the test cluster and returns
    (tcp_url, socket_url): the same database over 127.0.0.1 and over the Unix socket
    (postgres://postgres@/NAME?host=DIR&port=PORT, libpq's form). The name is the last
    part of either URL's path."""
    safe = "".join(c if c.isalnum() else "_" for c in prefix.lower()) or "natchat"
    name = f"{safe}_{os.getpid()}_{secrets.token_hex(4)}"
    _psql(f'CREATE DATABASE "{name}"')
    tcp = _with_database(url(), name)
    socket_dir = os.environ.get("NATCHAT_TEST_POSTGRES_SOCKET_DIR")
    port = os.environ.get("NATCHAT_TEST_POSTGRES_PORT")
    if socket_dir and port:
        query = urllib.parse.urlencode({"host": socket_dir, "port": port}, safe="/")
        socket = f"postgres://postgres@/{name}?{query}"
    else:
        socket = None
    return tcp, socket


def name_of(database_url):
    """The database name in a URL fresh_database returned."""
    return urllib.parse.urlsplit(database_url).path.lstrip("/")


def drop(name):
    """Drops a database fresh_database made (its connections are ended first)."""
    if not name or '"' in name:
        raise ValueError("not a database name fresh_database made: %r" % name)
    _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
