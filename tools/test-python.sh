#!/usr/bin/env bash
# The Python package from a fresh virtual environment: builds the wheel on the suite's build
# (tools/build-python-wheel.sh with the dev profile and the features tools/test.sh built the
# workspace with, so the library is not compiled again), installs it into a new venv and
# runs python/tests with pytest against the `elx` of the same build (byte-for-byte equality
# with the CLI, state dicts, bad input, threads). numpy, safetensors and pytest come from
# .cache/py (tools/test.sh); the venv holds only the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# `cargo test --workspace --features ort` built the library with tract, ort and the CLI's
# features: the same set here reuses that build.
ELX_WHEEL_DIR="$work/dist" ELX_WHEEL_PROFILE=dev ELX_WHEEL_FEATURES="${ELX_WHEEL_FEATURES:-ort,eigenlorax/cli}" \
  tools/build-python-wheel.sh >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-index "$work"/dist/*.whl
[ -x target/debug/elx ] || cargo build -q --bin elx
ELX_REPO="$PWD" ELX_CLI="$PWD/target/debug/elx" PYTHONPATH="$PWD/.cache/py" \
  "$work/venv/bin/python" -m pytest -q -p no:cacheprovider python/tests
