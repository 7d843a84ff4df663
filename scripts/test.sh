#!/usr/bin/env bash
# Runs the whole test suite: pure-Rust unit tests, the Python suite (including the
# interoperability tests against upstream tooz in .venv-upstream), then upstream tooz's own
# shipped test suite against this package on every backend (scripts/compat.py).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --quiet
# Run from a directory where the source tree cannot shadow the installed package.
python3 -m pytest -q -p no:cacheprovider "$@" tests
if [ $# -eq 0 ]; then
    python3 scripts/compat.py
fi
