#!/usr/bin/env bash
# What the aarch64 wheel (scripts/wheel_aarch64.sh) needs, on Debian 12 as root; run by setup.sh,
# safe to run again (it installs or unpacks only what is missing):
#  - the arm64 architecture in dpkg, for the aarch64 Rust standard library;
#  - Debian's Rust 1.96 from bookworm-security: cargo-web and rustc-web install /usr/bin/cargo and
#    /usr/bin/rustc, and libstd-rust-web-dev:arm64 the aarch64-unknown-linux-gnu standard library
#    under /usr/lib/rustlib (rustup's toolchain has only x86_64's and cannot fetch another).
#    rustup's ~/.cargo/bin stays first on the PATH: only the aarch64 build puts /usr/bin first;
#  - qemu-user-static, to run aarch64 programs (no binfmt_misc registration needed or made);
#  - an aarch64 CPython 3.11: Debian's arm64 packages of it and its libraries, downloaded with
#    `apt-get download` and unpacked with `dpkg -x` (nothing installed) into
#    $TOOZ_AARCH64_CACHE/python (default /var/cache/tooz-aarch64/python), with `usr/bin/python3`
#    there a wrapper that runs it through `qemu-aarch64-static -L <that directory>`.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${TOOZ_AARCH64_CACHE:-/var/cache/tooz-aarch64}"

update=0
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
    update=1
fi
packages=(rustc-web cargo-web libstd-rust-web-dev:arm64 qemu-user-static)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ] || [ "$update" -eq 1 ]; then
    apt-get update -q
fi
if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
[ -x /usr/bin/cargo ] && [ -d /usr/lib/rustlib/aarch64-unknown-linux-gnu/lib ] \
    || { echo "Debian's cargo or the aarch64 Rust standard library is missing" >&2; exit 1; }

# The interpreter and the libraries its standard modules load (ssl and hashlib: libssl3; ctypes:
# libffi8; the nis module's libnsl2 and libtirpc3 with Kerberos's libraries). Its virtualenvs
# are made --without-pip (pip is run on it from .venv), so no ensurepip (python3.11-venv).
debs=(python3.11-minimal:arm64 libpython3.11-minimal:arm64 libpython3.11-stdlib:arm64
      libc6:arm64 libgcc-s1:arm64 libssl3:arm64 libexpat1:arm64 zlib1g:arm64 libffi8:arm64
      libbz2-1.0:arm64 liblzma5:arm64 libcrypt1:arm64 libuuid1:arm64 libsqlite3-0:arm64
      libncursesw6:arm64 libtinfo6:arm64 libreadline8:arm64 libdb5.3:arm64 libnsl2:arm64
      libtirpc3:arm64 libgssapi-krb5-2:arm64 libkrb5-3:arm64 libk5crypto3:arm64
      libkrb5support0:arm64 libcom-err2:arm64 libkeyutils1:arm64)
root="$cache/python"
# Unpacked once; again only when the list above changes or the interpreter does not run.
if [ "$(cat "$root/.debs" 2>/dev/null)" != "${debs[*]}" ] \
        || ! "$root/usr/bin/python3" -c "import ssl, hashlib, ctypes, venv" 2>/dev/null; then
    mkdir -p "$cache"
    rm -rf "$root" "$root.new"
    mkdir -p "$root.new/debs"
    # (as root, not apt's sandbox user: that user cannot write into this directory)
    download=(apt-get download -q -o APT::Sandbox::User=root "${debs[@]}")
    (cd "$root.new/debs" && { "${download[@]}" >/dev/null 2>&1 || { apt-get update -q && "${download[@]}"; }; })
    for deb in "$root.new"/debs/*.deb; do
        dpkg -x "$deb" "$root.new"
    done
    rm -rf "$root.new/debs"
    # argv[0], and so sys.executable, is the path this was called by (a virtualenv's bin/python
    # links here): a test that runs sys.executable runs this again, natively, and so the aarch64
    # interpreter. Native programs it starts (redis-server) run as they are.
    cat >"$root.new/usr/bin/python3" <<'SH'
#!/bin/sh
# Debian's arm64 CPython 3.11 through qemu-user (written by scripts/setup_aarch64.sh).
root=$(dirname "$(dirname "$(dirname "$(readlink -f "$0")")")")
exec qemu-aarch64-static -L "$root" -0 "$0" "$root/usr/bin/python3.11" "$@"
SH
    chmod 755 "$root.new/usr/bin/python3"
    mv "$root.new" "$root"
    "$root/usr/bin/python3" -c "import ssl, hashlib, ctypes, venv"
    echo "${debs[*]}" >"$root/.debs"
fi
echo "aarch64: $("$root/usr/bin/python3" -c "import platform; print('CPython', platform.python_version(), 'on', platform.machine())") (through qemu), $(/usr/bin/rustc --version | cut -d' ' -f1-2) with the aarch64 standard library"
