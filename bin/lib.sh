# Shared helpers for bin/ scripts (sourced, not run).
# Finds the repository root, the Swift toolchain, and installs Debian packages when root.

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

# newest_source_mtime: the newest modification time (epoch seconds) of the sources a build reads.
newest_source_mtime() {
    find "$NATCHAT_ROOT/Package.swift" "$NATCHAT_ROOT/Modules" "$NATCHAT_ROOT/Apps" -type f \
        -printf '%T@\n' 2>/dev/null | sort -n | tail -1 | cut -d. -f1
}
