#!/usr/bin/env bash
# The aarch64 wheel, with the tools of scripts/setup_aarch64.sh (run by scripts/wheels.sh and,
# its build only, by scripts/setup.sh):
#  - build: `maturin build --release --zig --target aarch64-unknown-linux-gnu` from .venv, with
#    Debian's cargo and rustc 1.96 (/usr/bin, which have the aarch64 standard library) first on
#    the PATH and named by CARGO and RUSTC for this build only. Its target directory is the work
#    tree's target-aarch64 (not shared between clones: cargo's fingerprints hold the linker,
#    maturin's zig wrapper, whose path is one per virtualenv, so another clone's build would
#    rebuild every crate anyway);
#  - check: one cp311-abi3 manylinux2014_aarch64 wheel, which `auditwheel show` must find
#    consistent with manylinux_2_17_aarch64 (no symbol newer than glibc 2.17); its size; then
#    Debian's arm64 CPython 3.11 through qemu-user makes a fresh virtualenv, pip (running on the
#    aarch64 interpreter, so choosing by its tags) installs the wheel and pytest from PyPI, and
#    it runs the x86_64 wheel's smoke selection (locks, groups, heartbeat and fork on file and
#    redis) against servers started on this machine (native x86_64 redis-server).
# Usage: wheel_aarch64.sh [build|check|all] [OUT]   (OUT: where the wheel goes; a temporary
# directory by default, removed at the end). Each step says how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."
step="${1:-all}"
case "$step" in build|check|all) ;; *) echo "usage: $0 [build|check|all] [OUT]" >&2; exit 2 ;; esac
cache="${TOOZ_AARCH64_CACHE:-/var/cache/tooz-aarch64}"
python="$cache/python/usr/bin/python3"
venv_bin="$PWD/.venv/bin"
if [ -n "${2:-}" ]; then
    out="$2"
    mkdir -p "$out"
else
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
fi
[ -x /usr/bin/cargo ] && [ -x "$python" ] \
    || { echo "the aarch64 tools are missing: run 'bash scripts/setup_aarch64.sh'" >&2; exit 1; }

if [ "$step" != check ]; then
    start=$(date +%s)
    rm -f "$out"/*_aarch64.whl
    # .venv/bin first for maturin and zig (`python3 -m ziglang`), then Debian's cargo and rustc.
    build_path="$venv_bin:/usr/bin:$PATH"
    versions="$(PATH="$build_path" cargo --version) / $(PATH="$build_path" rustc --version)"
    case "$versions" in
        "$(/usr/bin/cargo --version) / $(/usr/bin/rustc --version)") ;;
        *) echo "the aarch64 build would not run Debian's cargo and rustc: $versions" >&2; exit 1 ;;
    esac
    if ! PATH="$build_path" CARGO=/usr/bin/cargo RUSTC=/usr/bin/rustc CARGO_TARGET_DIR="$PWD/target-aarch64" \
            maturin build --release --zig --target aarch64-unknown-linux-gnu --out "$out" \
            >"$out/build-aarch64.log" 2>&1; then
        cat "$out/build-aarch64.log" >&2
        exit 1
    fi
    echo "aarch64 build ($versions): $(grep -o 'Finished.*' "$out/build-aarch64.log" | tail -1 || true), $(( $(date +%s) - start )) s in all"
fi
[ "$step" = build ] && exit 0

wheel=$(ls "$out"/*_aarch64.whl)
case "$(basename "$wheel")" in
    *-cp311-abi3-manylinux2014_aarch64.manylinux_2_17_aarch64.whl) ;;
    *) echo "the wheel is not tagged cp311-abi3 manylinux2014_aarch64: $(basename "$wheel")" >&2; exit 1 ;;
esac
echo "aarch64 wheel: $(basename "$wheel") ($(stat -c %s "$wheel") bytes, $(du -k "$wheel" | cut -f1) KiB)"
"$venv_bin/python" - "$wheel" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    so = [i for i in z.infolist() if i.filename.startswith("tooz/_tooz") and i.filename.endswith(".so")]
    assert len(so) == 1, [i.filename for i in so]
    head = z.read(so[0].filename)[:20]
# ELF, 64-bit, little-endian, e_machine 183 (EM_AARCH64)
if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1 or int.from_bytes(head[18:20], "little") != 183:
    sys.exit("%s is not a 64-bit little-endian aarch64 ELF object" % so[0].filename)
print("%s: aarch64 ELF, %d bytes" % (so[0].filename, so[0].file_size))
PY
audit=$("$venv_bin/auditwheel" show "$wheel")
# (auditwheel wraps its sentences at the terminal's width: read them as one line)
if ! tr -s ' \n' '  ' <<<"$audit" | grep -q 'consistent with the following platform tag: "manylinux_2_17_aarch64"'; then
    echo "$audit" >&2
    echo "auditwheel does not find the aarch64 wheel manylinux_2_17 (manylinux2014)" >&2
    exit 1
fi
echo "auditwheel: consistent with manylinux_2_17_aarch64 (glibc 2.17):$(tr -s ' \n' '  ' <<<"$audit" | grep -o ' The wheel references.*')"

start=$(date +%s)
venv="$out/venv-aarch64"
rm -rf "$venv"
# (.venv's pip run by the aarch64 interpreter, `pip --python`: it chooses by that interpreter's
# tags, and takes half the time of ensurepip's own pip and setuptools under qemu)
"$python" -m venv --without-pip "$venv"
"$venv_bin/python" -m pip --python "$venv/bin/python" install -q --disable-pip-version-check "$wheel" "pytest>=7"
(cd "$out" && "$venv/bin/python" -c "import platform, tooz, tooz.coordination, tooz._tooz; print('tooz imports on', platform.python_implementation(), platform.python_version(), platform.machine())")
echo "aarch64 virtualenv with the wheel and pytest: $(( $(date +%s) - start )) s"
start=$(date +%s)
if ! "$venv/bin/python" -m pytest -q -p no:cacheprovider -x -rs "$PWD/tests/test_locks.py" "$PWD/tests/test_groups.py" \
        "$PWD/tests/test_heartbeat.py" "$PWD/tests/test_fork.py" -k "file or redis" --rootdir "$out" \
        >"$out/smoke-aarch64.log" 2>&1; then
    cat "$out/smoke-aarch64.log" >&2
    exit 1
fi
grep '^SKIPPED' "$out/smoke-aarch64.log" || true
echo "python3.11 on aarch64 (qemu): $(tail -1 "$out/smoke-aarch64.log"), $(( $(date +%s) - start )) s"
