#!/usr/bin/env bash
# Builds the one abi3 wheel (and the sdist) with maturin, installs the wheel into fresh
# virtualenvs of the oldest and newest CPython this machine has (3.9 and 3.13, from pyenv) and
# runs a smoke subset of the suite there: locks, groups, heartbeat and fork on file and redis.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
python3 -m maturin build --release --quiet --out "$out" 2>&1 | grep -v "^📦\|^🔗\|^🐍\|^⚠️" || true
python3 -m maturin sdist --out "$out" >/dev/null 2>&1
wheel=$(ls "$out"/*.whl)
echo "built $(basename "$wheel") and $(basename "$(ls "$out"/*.tar.gz)")"
for version in 3.9 3.13; do
    python=$(ls -d /root/.pyenv/versions/"$version".*/bin/python3 2>/dev/null | sort -V | tail -1 || true)
    if [ -z "$python" ]; then
        python=$(command -v "python$version" || true)
    fi
    if [ -z "$python" ]; then
        echo "no python$version here: skipped" >&2
        continue
    fi
    venv="$out/venv-$version"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "$wheel" "pytest>=7"
    (cd "$out" && "$venv/bin/python" -c "import tooz, tooz.coordination, tooz._tooz; print('tooz imports on', __import__('sys').version.split()[0])")
    "$venv/bin/python" -m pytest -q -p no:cacheprovider -x "$PWD/tests/test_locks.py" "$PWD/tests/test_groups.py" \
        "$PWD/tests/test_heartbeat.py" "$PWD/tests/test_fork.py" -k "file or redis" --rootdir "$out" \
        | tail -1 | sed "s/^/python$version: /"
done
