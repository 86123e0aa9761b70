# shellcheck shell=bash
# Shared helpers for bin/ scripts (sourced, not run).
# Finds the repository root, the Swift toolchain, installs Debian packages when root, and
# keeps the release build of natchat and natchat-server current for bin/natchat and
# bin/start-server.

NATCHAT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

find_swift() {
    if command -v swift >/dev/null 2>&1; then return 0; fi
    for dir in /opt/swift/usr/bin /usr/share/swift/usr/bin; do
        if [ -x "$dir/swift" ]; then export PATH="$dir:$PATH"; return 0; fi
    done
    echo "natchat: the Swift toolchain (6.1 or later) is not on PATH; install it from swift.org and retry." >&2
    return 1
}

# need_packages "CHECK-COMMAND" pkg... : installs the packages with apt-get when the check
# fails and we are root; otherwise says exactly what to install.
need_packages() {
    local check="$1"; shift
    if eval "$check" >/dev/null 2>&1; then return 0; fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "natchat: installing $* (apt-get)" >&2
        if [ -z "${NATCHAT_APT_UPDATED:-}" ]; then
            DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
            export NATCHAT_APT_UPDATED=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 || {
            echo "natchat: apt-get install $* failed" >&2; return 1; }
        eval "$check" >/dev/null 2>&1 && return 0
    fi
    echo "natchat: missing $*; install with: sudo apt-get install $*" >&2
    return 1
}

# need_readline: GNU readline's headers, which natchat (the shell) links against.
need_readline() {
    need_packages "test -f /usr/include/readline/readline.h" libreadline-dev
}

# need_sqlite: SQLite's headers and library, which GRDB (the SQLiteStore module, trait
# SQLite) builds and links against through its GRDBSQLite system library.
need_sqlite() {
    need_packages "test -f /usr/include/sqlite3.h" libsqlite3-dev
}

# need_miniupnpc: miniupnpc's headers and library, the UPnP IGD client of PortMappingPosix
# (trait UPnP) through its CMiniupnpc system library.
need_miniupnpc() {
    need_packages "test -f /usr/include/miniupnpc/miniupnpc.h" libminiupnpc-dev
}

# need_build_packages: the Debian packages a build of natchat needs (installed when root).
need_build_packages() {
    need_readline && need_sqlite && need_miniupnpc
}

# newest_source_mtime: the newest modification time (epoch seconds) of the sources a build reads.
newest_source_mtime() {
    find "$NATCHAT_ROOT/Package.swift" "$NATCHAT_ROOT/Modules" "$NATCHAT_ROOT/Apps" -type f \
        -printf '%T@\n' 2>/dev/null | sort -n | tail -1 | cut -d. -f1
}

# The release binaries bin/natchat and bin/start-server run, built together.
NATCHAT_RELEASE_DIR="$NATCHAT_ROOT/.build/release"
NATCHAT_RELEASE_PRODUCTS=(natchat natchat-server)

# release_build_stale: true when either release binary is missing or older than the newest
# file under Package.swift, Modules/ or Apps/.
release_build_stale() {
    local newest product binary
    newest="$(newest_source_mtime)"
    for product in "${NATCHAT_RELEASE_PRODUCTS[@]}"; do
        binary="$NATCHAT_RELEASE_DIR/$product"
        if [ ! -x "$binary" ] || [ "${newest:-0}" -gt "$(stat -c %Y "$binary")" ]; then
            return 0
        fi
    done
    return 1
}

# ensure_release_build: when release_build_stale, builds both products in one
# `swift build -c release` (so whichever wrapper runs first builds for the other), with
# all output on stderr. Needs the toolchain, libreadline-dev, libsqlite3-dev and libminiupnpc-dev (installed
# when root).
ensure_release_build() {
    release_build_stale || return 0
    find_swift || return 1
    need_build_packages || return 1
    echo "natchat: building natchat and natchat-server (release); the first build takes a few minutes..." >&2
    swift build -c release --package-path "$NATCHAT_ROOT" >&2 || {
        echo "natchat: the release build failed (see above)" >&2; return 1; }
    # A build may relink neither binary (a file touched but unchanged) or only one (a change
    # to a module only the other uses). It succeeded, so both are current: mark them so, or
    # every run would build again. (The next `swift build -c release` relinks them: seconds.)
    if release_build_stale; then
        local product
        for product in "${NATCHAT_RELEASE_PRODUCTS[@]}"; do touch "$NATCHAT_RELEASE_DIR/$product"; done
    fi
    echo "natchat: build done" >&2
}

# start_test_postgres: a throwaway PostgreSQL cluster for the tests (PostgresStore's unit
# tests, end-to-end tests through Tests/e2e/pg.py). Does nothing when NATCHAT_TEST_POSTGRES
# is already set (a database someone provides). Otherwise installs Debian's postgresql when
# missing (as root), runs initdb in a new temporary folder (owned by the postgres user when
# run as root: PostgreSQL refuses to run as root), starts it on a free private port,
# listening on 127.0.0.1 and on a Unix socket in that folder (traversable by every user, so
# that processes in test network namespaces can use it), trust authentication, and exports
#   NATCHAT_TEST_POSTGRES=postgres://postgres@127.0.0.1:PORT/postgres
#   NATCHAT_TEST_POSTGRES_SOCKET_DIR=DIR   NATCHAT_TEST_POSTGRES_PORT=PORT
# Returns 1 (and exports nothing) when it cannot. stop_test_postgres stops that cluster and
# removes its folder; it never touches a cluster it did not start.
NATCHAT_TEST_POSTGRES_STARTED=""

start_test_postgres() {
    if [ -n "${NATCHAT_TEST_POSTGRES:-}" ]; then return 0; fi
    local bindir dir port as=()
    if [ "$(id -u)" = 0 ]; then
        need_packages "ls /usr/lib/postgresql/*/bin/initdb" postgresql || return 1
        as=(runuser -u postgres --)
    fi
    bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
    if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ] || [ ! -x "$bindir/pg_ctl" ]; then
        echo "natchat: initdb/pg_ctl not found under /usr/lib/postgresql/*/bin" >&2
        return 1
    fi
    dir="$(mktemp -d /tmp/natchat-pg.XXXXXX)" || return 1
    # The folder: traversable by all (the socket's users); the data folder inside it, the
    # server's own (initdb wants it 0700 and owned by the user the server runs as).
    chmod 755 "$dir"
    mkdir "$dir/data"
    if [ "${#as[@]}" -gt 0 ]; then chown postgres: "$dir" "$dir/data"; fi
    if ! "${as[@]}" "$bindir/initdb" -D "$dir/data" -A trust -U postgres --no-sync >"$dir/initdb.log" 2>&1; then
        echo "natchat: initdb failed:" >&2; tail -5 "$dir/initdb.log" >&2
        rm -rf "$dir"; return 1
    fi
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
    if ! "${as[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 30 \
            -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" start >/dev/null 2>&1; then
        echo "natchat: PostgreSQL did not start:" >&2; tail -5 "$dir/log" >&2
        "${as[@]}" "$bindir/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1
        rm -rf "$dir"; return 1
    fi
    local tries=0
    until "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" 2>/dev/null; do
        tries=$((tries + 1))
        if [ "$tries" -ge 50 ]; then
            echo "natchat: PostgreSQL did not become ready" >&2
            "${as[@]}" "$bindir/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1
            rm -rf "$dir"; return 1
        fi
        sleep 0.2
    done
    NATCHAT_TEST_POSTGRES_STARTED="$dir"
    NATCHAT_TEST_POSTGRES_BINDIR="$bindir"
    export NATCHAT_TEST_POSTGRES="postgres://postgres@127.0.0.1:$port/postgres"
    export NATCHAT_TEST_POSTGRES_SOCKET_DIR="$dir"
    export NATCHAT_TEST_POSTGRES_PORT="$port"
    echo "natchat: test PostgreSQL on 127.0.0.1:$port and $dir/.s.PGSQL.$port" >&2
}

# stop_test_postgres: stops the cluster start_test_postgres started (none other) and
# removes its folder.
stop_test_postgres() {
    local dir="$NATCHAT_TEST_POSTGRES_STARTED" as=()
    [ -n "$dir" ] || return 0
    if [ "$(id -u)" = 0 ]; then as=(runuser -u postgres --); fi
    "${as[@]}" "$NATCHAT_TEST_POSTGRES_BINDIR/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1
    rm -rf "$dir"
    NATCHAT_TEST_POSTGRES_STARTED=""
    unset NATCHAT_TEST_POSTGRES NATCHAT_TEST_POSTGRES_SOCKET_DIR NATCHAT_TEST_POSTGRES_PORT
}
