#!/usr/bin/env bash
# Runs the whole test suite: pure-Rust unit tests, then the Python suite (including the
# interoperability tests against upstream tooz in .venv-upstream).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --quiet
# Run from a directory where the source tree cannot shadow the installed package.
python3 -m pytest -q -p no:cacheprovider "$@" tests
