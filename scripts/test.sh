#!/usr/bin/env bash
# Runs the whole test suite with the project's virtualenv (.venv, made by scripts/setup.sh):
# the dependency audit (cargo audit against a RustSec snapshot, where one is at hand),
# pure-Rust unit tests, the Python suite (including the interoperability tests against upstream
# tooz in .venv-upstream), its lock, group, watcher and leader tests again under eventlet, the
# public API compared with upstream's (scripts/api_diff.py), then upstream tooz's own shipped
# test suite against this package on every backend (scripts/compat.py), the released wheels
# (x86_64; aarch64 under qemu) and the sdist (scripts/wheels.sh, with `twine check`), the README as PyPI renders it and the docs
# (Sphinx, warnings are errors). The Python suite includes tests/test_examples.py (every
# examples/*.py runs and exits 0) and tests/test_readme.py (the README's length, links,
# commands and first program). Arguments go to pytest and skip the other steps.
set -euo pipefail
cd "$(dirname "$0")/.."
python="$PWD/.venv/bin/python"
[ -x "$python" ] || { echo "no .venv here: run 'bash scripts/setup.sh' first" >&2; exit 1; }
# Whatever a test spawns as `python3` (or `tooz`) is the project's virtualenv too, and no
# user site-packages leak in.
export PATH="$PWD/.venv/bin:$PATH" PYTHONNOUSERSITE=1
# Known advisories in the locked dependencies: a RustSec advisory-db snapshot (no network) at
# $TOOZ_ADVISORY_DB, or ../shared/advisory-db beside the work tree.
advisory_db="${TOOZ_ADVISORY_DB:-$PWD/../shared/advisory-db}"
if [ -d "$advisory_db" ]; then
    cargo_audit="${CARGO_HOME:-$HOME/.cargo}/bin/cargo-audit"
    [ -x "$cargo_audit" ] || cargo_audit=$(command -v cargo-audit) \
        || { echo "cargo-audit is missing: run 'bash scripts/setup.sh'" >&2; exit 1; }
    "$cargo_audit" audit --db "$advisory_db" --no-fetch --stale --deny warnings
    echo "cargo audit: no advisories against Cargo.lock ($advisory_db)"
else
    echo "cargo audit SKIPPED: no advisory database at $advisory_db (set TOOZ_ADVISORY_DB to a RustSec advisory-db checkout)"
fi
cargo test --quiet
if [ $# -gt 0 ]; then
    "$python" -m pytest -q -p no:cacheprovider "$@" tests
    exit 0
fi
"$python" -m pytest -q -p no:cacheprovider --ignore tests/test_partitions.py tests
# The network partitions (tests/test_partitions.py, as root): a process per backend, side by
# side, as they mostly wait out their cuts (each has a namespace and servers of its own).
partition_logs=$(mktemp -d)
pids=()
for selection in "redis or harness" memcached etcd3 zookeeper postgresql mysql; do
    "$python" -m pytest -q -p no:cacheprovider tests/test_partitions.py -k "$selection" \
        >"$partition_logs/${selection%% *}.log" 2>&1 &
    pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do
    wait "$pid" || failed=1
done
for log in "$partition_logs"/*.log; do
    echo "partitions, $(basename "$log" .log): $(tail -1 "$log")"
done
if [ "$failed" -ne 0 ]; then
    cat "$partition_logs"/*.log >&2
    exit 1
fi
rm -rf "$partition_logs"
# The capability tests once more in an eventlet-patched process (every backend, green paths).
"$python" tests/eventlet_pytest.py -q -p no:cacheprovider \
    tests/test_locks.py tests/test_groups.py tests/test_watchers.py tests/test_leader.py
# Every public name, signature, base and constant against upstream's (allow-list with reasons).
"$python" scripts/api_diff.py
"$python" scripts/compat.py
# The release artefacts, after the timed tests: their build loads the machine (run beside the
# tests, even at the lowest priority, it made timed tests of the wheel's smoke run and of
# upstream's suite miss).
bash scripts/wheels.sh
# The README is the package's description on PyPI: rendered as PyPI renders it (readme_renderer,
# which twine uses), an error or a warning fails.
"$python" -W ignore::UserWarning -m readme_renderer README.rst -o /dev/null
echo "README renders as on PyPI"
docs_out=$(mktemp -d)
"$python" -m sphinx -W -q -b html docs "$docs_out"
rm -rf "$docs_out"
echo "docs build without warnings"
