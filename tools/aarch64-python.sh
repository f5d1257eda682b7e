#!/usr/bin/env bash
# An aarch64 CPython to run under qemu-user, for the aarch64 wheel's tests
# (tools/test-python.sh --target aarch64-unknown-linux-gnu): Debian bookworm's python3.11 and
# the libraries it loads, from Debian's arm64 packages (`apt-get download`, then unpacked with
# `dpkg-deb -x`: nothing is installed on this machine), and the aarch64 wheels of pip, numpy,
# safetensors and pytest from PyPI. Both go to .cache/aarch64-python/ and are reused. Prints
# the sysroot: run `qemu-aarch64 -L ROOT ROOT/usr/bin/python3.11`.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.cache/aarch64-python
root=$dir/root
wheels=$dir/wheels
# The interpreter, its standard library, and the shared libraries of the modules the tests
# import (ssl, ctypes, bz2, lzma, zlib, uuid, crypt), with libc and libgcc.
packages=(libc6 libgcc-s1 python3.11-minimal libpython3.11-minimal libpython3.11-stdlib
  libexpat1 zlib1g libssl3 libffi8 libbz2-1.0 liblzma5 libuuid1 libcrypt1)

if [ ! -x "$root/usr/bin/python3.11" ]; then
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
  fi
  # The arm64 package lists: fetched once, after the architecture is added.
  if ! apt-cache show python3.11-minimal:arm64 >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
  fi
  debs="$(mktemp -d)"
  (cd "$debs" && apt-get download -qq "${packages[@]/%/:arm64}" 2>/dev/null)
  rm -rf "$root.tmp" && mkdir -p "$root.tmp"
  for d in "$debs"/*.deb; do dpkg-deb -x "$d" "$root.tmp"; done
  rm -rf "$debs" "$root" && mv "$root.tmp" "$root"
fi

if ! ls "$wheels"/pip-*.whl "$wheels"/numpy-*.whl >/dev/null 2>&1; then
  rm -rf "$wheels.tmp" && mkdir -p "$wheels.tmp"
  pip=(python3 -m pip download --quiet --disable-pip-version-check -d "$wheels.tmp")
  "${pip[@]}" --no-deps pip
  "${pip[@]}" --only-binary=:all: --platform manylinux2014_aarch64 --python-version 3.11 \
    --implementation cp numpy safetensors pytest
  rm -rf "$wheels" && mv "$wheels.tmp" "$wheels"
fi
echo "$PWD/$root"
