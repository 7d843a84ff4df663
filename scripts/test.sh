#!/usr/bin/env bash
# Runs the whole test suite: pure-Rust unit tests, the Python suite (including the
# interoperability tests against upstream tooz in .venv-upstream), then upstream tooz's own
# shipped test suite against this package on every backend (scripts/compat.py), the wheel on
# Python 3.9 and 3.13 (scripts/wheels.sh) and the docs (Sphinx, warnings are errors).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --quiet
# Run from a directory where the source tree cannot shadow the installed package.
python3 -m pytest -q -p no:cacheprovider "$@" tests
if [ $# -eq 0 ]; then
    python3 scripts/compat.py
    bash scripts/wheels.sh
    docs_out=$(mktemp -d)
    python3 -m sphinx -W -q -b html docs "$docs_out"
    rm -rf "$docs_out"
    echo "docs build without warnings"
fi
