#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (as root) to build and test tooz; safe to run again (it
# installs what is missing, and builds and installs the package from the work tree each time).
#  - backend servers from Debian: redis-server, memcached, zookeeper, etcd-server (+ etcdctl
#    from etcd-client for the auth test) (tests start their own instances on loopback; the
#    packaged system services are not used); openssl makes the certificates of the TLS tests;
#  - iproute2 (`ip netns`, veth): the partition tests cut a holder off in a namespace of their own;
#  - cargo-audit (pinned, from crates.io) for the test command's advisory check;
#  - no protoc: the build needs only cargo and a C compiler (the etcd client's messages are
#    written by hand, src/clients/etcd/);
#  - postgresql-15 and mariadb-server (started by the tests in temporary directories; the
#    packaged services are stopped);
#  - .venv: the project's own virtualenv (no system site-packages). It gets maturin, ziglang,
#    auditwheel and twine (which checks that PyPI renders the README), then the package built
#    as it is released (`maturin build --release --zig`:
#    the manylinux2014 abi3 wheel), installed with its declared dependencies and its `test` and
#    `docs` extras. The test command, the upstream-suite runner, the benchmarks and the docs
#    build all run .venv/bin/python; nothing is installed into the system's Python.
#  - the aarch64 wheel's tools (scripts/setup_aarch64.sh): Debian's Rust 1.96 with the aarch64
#    standard library, qemu-user-static and Debian's arm64 CPython 3.11 unpacked under
#    /var/cache/tooz-aarch64; the aarch64 wheel is built beside the x86_64 one (into
#    target-aarch64), so the test command's build of it finds it up to date;
#  - .venv-upstream: upstream tooz 9.1.0 from PyPI, a test-only peer/oracle (never a dependency),
#    with psycopg2-binary and PyMySQL for its postgresql:// and mysql:// drivers.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(redis-server memcached zookeeper etcd-server etcd-client python3-venv openssl
          postgresql-15 postgresql-client-15 mariadb-server mariadb-client iproute2)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# The packaged services are not needed (tests run their own); keep them from holding ports.
# Without systemd (containers), the packages' init scripts may have started them instead.
for svc in redis-server memcached zookeeper etcd postgresql mariadb; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
        systemctl stop "$svc" || true
    elif command -v service >/dev/null 2>&1 && service "$svc" status >/dev/null 2>&1; then
        service "$svc" stop >/dev/null 2>&1 || true
    fi
done

command -v cargo >/dev/null || { echo "cargo (Rust) is required: https://rustup.rs" >&2; exit 1; }
bash scripts/setup_aarch64.sh

# cargo-audit, pinned, from crates.io (with its own lock file): the test command checks Cargo.lock
# against a RustSec advisory snapshot with it. Built once; kept while the pinned version is there.
cargo_audit_version=0.22.2
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
if [ "$("$cargo_bin/cargo-audit" --version 2>/dev/null)" != "cargo-audit $cargo_audit_version" ]; then
    cargo install -q --locked cargo-audit --version "$cargo_audit_version"
fi

# The project's virtualenv; one that is not a working virtualenv (or none) is made anew.
if ! .venv/bin/python -c "import sys; sys.exit(sys.prefix == sys.base_prefix)" 2>/dev/null; then
    rm -rf .venv
    python3 -m venv .venv
fi
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# pip 25.1 or later reads the package's License-Expression (`pip show tooz`).
"${pip[@]}" "pip>=25.1" "maturin>=1.9,<2" "ziglang>=0.13" "auditwheel>=6" "twine>=6"
# maturin finds zig as `python3 -m ziglang` on the PATH: the venv's.
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
# The aarch64 wheel's build (Debian's cargo, a target directory of its own) runs beside it.
bash scripts/wheel_aarch64.sh build "$wheels/aarch64" >"$wheels/aarch64.log" 2>&1 &
aarch64_build=$!
built=0
PATH="$PWD/.venv/bin:$PATH" maturin build --release --zig --out "$wheels" >"$wheels/build.log" 2>&1 || built=$?
aarch64_built=0
wait "$aarch64_build" || aarch64_built=$?
if [ "$built" -ne 0 ]; then
    cat "$wheels/build.log" >&2
    exit 1
fi
if [ "$aarch64_built" -ne 0 ]; then
    cat "$wheels/aarch64.log" >&2
    exit 1
fi
cat "$wheels/aarch64.log"
wheel=$(ls "$wheels"/*.whl)
"${pip[@]}" --force-reinstall --no-deps "$wheel"
"${pip[@]}" "$wheel[test,docs]"
.venv/bin/python -m pip check

if [ ! -x .venv-upstream/bin/python ] || ! .venv-upstream/bin/python -c "import tooz, sysv_ipc, redis, pymemcache, kazoo, etcd3gw, pytest, fixtures, testtools, oslo_utils" 2>/dev/null; then
    rm -rf .venv-upstream
    python3 -m venv .venv-upstream
    .venv-upstream/bin/pip install -q --disable-pip-version-check "tooz[redis,memcached,zookeeper,etcd3gw]==9.1.0" sysv_ipc \
        pytest fixtures testtools oslo.utils
fi
# The database clients of upstream's postgresql:// and mysql:// drivers (binary psycopg2: no
# compiler or libpq headers needed); added to an existing virtualenv without rebuilding it.
if ! .venv-upstream/bin/python -c "import psycopg2, pymysql" 2>/dev/null; then
    .venv-upstream/bin/pip install -q --disable-pip-version-check psycopg2-binary PyMySQL
fi
# eventlet, for upstream's side of benchmarks/green.py (both sides under monkey_patch()).
if ! .venv-upstream/bin/python -c "import eventlet" 2>/dev/null; then
    .venv-upstream/bin/pip install -q --disable-pip-version-check "eventlet>=0.36"
fi
echo "set-up done"
