#!/usr/bin/env bash
# Builds the Python package (python/: maturin + PyO3, one abi3 wheel for CPython >= 3.9, the
# tract engine, no CLI crates) into dist/ (ELX_WHEEL_DIR overrides).
#
#   tools/build-python-wheel.sh                                     # release wheel, this machine
#   tools/build-python-wheel.sh --target aarch64-unknown-linux-gnu  # cross-built (Debian's gcc)
#   tools/build-python-wheel.sh --no-default-features               # without an engine
#
# ELX_WHEEL_PROFILE (default release) and ELX_WHEEL_FEATURES (extra cargo features) let the
# tests build a dev-profile wheel on the suite's own build (tools/test-python.sh): same target
# dir, profile and features, so only the extension module itself is compiled again.
# maturin comes from .cache/py (tools/test.sh installs it with the other Python packages).
set -euo pipefail
cd "$(dirname "$0")/.."
# A .cache/py filled before maturin was on tools/test.sh's list cannot take its bin/maturin
# (pip --target keeps an existing bin/): such a checkout gets its own prefix.
maturin=.cache/py/bin/maturin
if [ ! -x "$maturin" ]; then
  maturin=.cache/maturin/bin/maturin
  [ -x "$maturin" ] || python3 -m pip install --quiet --disable-pip-version-check --target .cache/maturin maturin
fi
args=(build -m python/Cargo.toml --out "${ELX_WHEEL_DIR:-dist}" --interpreter python3
  --profile "${ELX_WHEEL_PROFILE:-release}" --strip)
if [ -n "${ELX_WHEEL_FEATURES:-}" ]; then args+=(--features "$ELX_WHEEL_FEATURES"); fi
while [ $# -gt 0 ]; do
  case "$1" in
    --target)
      args+=(--target "$2")
      # tools/test-aarch64.sh's cross linker; abi3 needs no target interpreter.
      export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
      shift 2 ;;
    # Without the tract engine (extraction, projection only): benchmarks.
    --no-default-features) args+=(--no-default-features); shift ;;
    *) echo "usage: tools/build-python-wheel.sh [--target TRIPLE] [--no-default-features]" >&2; exit 2 ;;
  esac
done
PYTHONPATH="$PWD/.cache/py${PYTHONPATH:+:$PYTHONPATH}" "$maturin" "${args[@]}"
