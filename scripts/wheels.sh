#!/usr/bin/env bash
# The release artefacts, checked as a user meets them:
#  - the wheel, built with the documented command (`maturin build --release --zig`, from .venv):
#    one cp311-abi3 manylinux2014 wheel; `auditwheel show` must agree that it needs no glibc newer
#    than 2.17; it is installed into fresh virtualenvs of the oldest and newest CPython this
#    machine has (3.11 and 3.13, from pyenv, where present) for a smoke run of the suite: locks,
#    groups, heartbeat and fork on file and redis;
#  - `twine check --strict` of both: their long description (README.rst) renders on PyPI;
#  - the aarch64 wheel (scripts/wheel_aarch64.sh): built with Debian's cargo and rustc (up to date
#    after the set-up's build, which ran beside its x86_64 build; else beside the sdist's build
#    here), checked by its tag and `auditwheel show`, and the same smoke run under Debian's arm64
#    CPython 3.11 through qemu-user, alone (its tests are timed);
#  - the sdist, installed by pip into a fresh virtualenv with PROTOC pointing at nothing (the
#    build must need only cargo and a C compiler), then imported and used for a file lock.
set -euo pipefail
cd "$(dirname "$0")/.."
venv_bin="$PWD/.venv/bin"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
PATH="$venv_bin:$PATH" maturin build --release --zig --out "$out" >"$out/build.log" 2>&1 \
    || { cat "$out/build.log" >&2; exit 1; }
"$venv_bin/maturin" sdist --out "$out" >"$out/sdist.log" 2>&1 || { cat "$out/sdist.log" >&2; exit 1; }
wheel=$(ls "$out"/*.whl)
sdist=$(ls "$out"/*.tar.gz)
echo "built $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB) and $(basename "$sdist")"
case "$(basename "$wheel")" in
    *-cp311-abi3-manylinux2014_x86_64.*) ;;
    *) echo "the wheel is not tagged cp311-abi3 manylinux2014: $(basename "$wheel")" >&2; exit 1 ;;
esac
# What pip show and PyPI read: the wheel's METADATA says what the project is.
"$venv_bin/python" - "$wheel" <<'PY'
import sys, zipfile
from email.parser import Parser
with zipfile.ZipFile(sys.argv[1]) as z:
    name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    meta = Parser().parsestr(z.read(name).decode())
    licenses = [n for n in z.namelist() if ".dist-info/licenses/" in n]
classifiers = meta.get_all("Classifier") or []
wanted = {
    "Requires-Python": meta.get("Requires-Python") == ">=3.11",
    "License-Expression": meta.get("License-Expression") == "Apache-2.0",
    "license file": any(n.endswith("/LICENSE") for n in licenses),
    "Summary": bool(meta.get("Summary")),
    "Keywords": "coordination" in (meta.get("Keywords") or ""),
    "Project-URL": bool(meta.get_all("Project-URL")),
    "Typing :: Typed": "Typing :: Typed" in classifiers,
    "a classifier per Python version": all(
        "Programming Language :: Python :: 3.%d" % v in classifiers for v in (11, 12, 13)),
    "README as the description": "tooz" in (meta.get_payload() or ""),
}
missing = [k for k, ok in wanted.items() if not ok]
if missing:
    sys.exit("the wheel's METADATA lacks: " + ", ".join(missing))
print("METADATA: %s, Requires-Python %s, License-Expression %s, %d classifiers"
      % (meta["Name"], meta["Requires-Python"], meta["License-Expression"], len(classifiers)))
PY
# What PyPI does with the description: any rendering error or warning fails.
"$venv_bin/twine" check --strict "$wheel" "$sdist"
audit=$("$venv_bin/auditwheel" show "$wheel")
# (auditwheel wraps its sentences at the terminal's width: read them as one line)
if ! tr -s ' \n' '  ' <<<"$audit" | grep -q 'consistent with the following platform tag: "manylinux_2_17_x86_64"'; then
    echo "$audit" >&2
    echo "auditwheel does not find the wheel manylinux_2_17 (manylinux2014)" >&2
    exit 1
fi
echo "auditwheel: consistent with manylinux_2_17_x86_64 (glibc 2.17)"

for version in 3.11 3.13; do
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

# The aarch64 wheel's build, beside the sdist's.
bash scripts/wheel_aarch64.sh build "$out/aarch64" >"$out/aarch64-build.log" 2>&1 &
aarch64_build=$!
# The sdist, built from source by pip as a user without protoc would: any build step that
# looked for protoc would find PROTOC set to a path that does not exist.
"$venv_bin/python" -m venv "$out/venv-sdist"
start=$(date +%s)
sdist_built=0
PROTOC=/nonexistent/protoc "$out/venv-sdist/bin/pip" install -q --disable-pip-version-check "$sdist" \
    >"$out/sdist-install.log" 2>&1 || sdist_built=$?
sdist_took=$(( $(date +%s) - start ))
wait "$aarch64_build" || { cat "$out/aarch64-build.log" >&2; exit 1; }
[ "$sdist_built" -eq 0 ] || { cat "$out/sdist-install.log" >&2; exit 1; }
(cd "$out" && "$out/venv-sdist/bin/python" - "$out/locks" <<'PY'
import sys
from tooz import coordination
c = coordination.get_coordinator("file://" + sys.argv[1], b"sdist-smoke")
c.start()
lock = c.get_lock(b"built-from-sdist")
assert lock.acquire(blocking=False) and lock.release()
c.stop()
print("sdist: built and installed without protoc, file lock taken and released")
PY
)
echo "sdist build took $sdist_took s"
# The aarch64 wheel: its tag, auditwheel and the smoke run under qemu (alone: timed tests).
cat "$out/aarch64-build.log"
bash scripts/wheel_aarch64.sh check "$out/aarch64"
