#!/usr/bin/env bash
# The Python package from a fresh virtual environment: builds the wheel on the suite's build
# (tools/build-python-wheel.sh with the dev profile and the features tools/test.sh built the
# workspace with, so the library is not compiled again), installs it into a new venv, runs
# the README's Python example, and runs python/tests with pytest against the `elx` of the
# same build (byte-for-byte equality with the CLI, state dicts, bad input, threads). numpy,
# safetensors and pytest come from .cache/py (tools/test.sh); the venv holds only the wheel.
#
# With `--target aarch64-unknown-linux-gnu` (tools/test-aarch64.sh): the wheel cross-built on
# that script's build, pip-installed with its aarch64 dependencies into a venv of Debian's
# aarch64 CPython (tools/aarch64-python.sh), everything run under qemu-user against the
# aarch64 `elx` under qemu. There, the tests of what runs native code on ARM only: extraction
# from folders and state dicts (byte for byte), projection, the runtime, a mixed-task batch
# of the decoder, bad input and threads (about 1 min emulated, against 3 for all); the rest
# checks Python-side logic that x86_64 covers, and their numerics run under qemu in the Rust
# suite.
set -euo pipefail
cd "$(dirname "$0")/.."
target=""
if [ "${1:-}" = "--target" ]; then target=$2; fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The README's Python example ("From Python"), as written, in a folder that sees the
# repository's fixtures: the bundle it saves is `elx extract ... --k 4`'s, byte for byte.
readme_example() {
  local python=("$@") dir="$work/readme"
  mkdir -p "$dir"
  ln -s "$PWD/models" "$dir/models"
  awk '/^From Python/ {f = 1} f && /^```python/ {p = 1; next} p && /^```/ {exit} p' README.md \
    >"$dir/example.py"
  grep -q "elx.extract" "$dir/example.py" || { echo "no Python example found in README.md" >&2; exit 1; }
  (cd "$dir" && "${python[@]}" example.py)
  (cd "$dir" && "${elx[@]}" extract models/fixtures/adapters/task{0,1,2,3,4} --k 4 -o cli.elxb >/dev/null)
  cmp "$dir/domain.elxb" "$dir/cli.elxb"
  echo "README's Python example: the bundle of elx extract --k 4, byte for byte"
}

if [ -z "$target" ]; then
  # `cargo test --workspace --features ort` built the library with tract, ort and the CLI's
  # features: the same set here reuses that build.
  ELX_WHEEL_DIR="$work/dist" ELX_WHEEL_PROFILE=dev ELX_WHEEL_FEATURES="${ELX_WHEEL_FEATURES:-ort,eigenlorax/cli}" \
    tools/build-python-wheel.sh >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
  python3 -m venv "$work/venv"
  "$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-index "$work"/dist/*.whl
  [ -x target/debug/elx ] || cargo build -q --bin elx
  elx=("$PWD/target/debug/elx")
  PYTHONPATH="$PWD/.cache/py" readme_example "$work/venv/bin/python"
  ELX_REPO="$PWD" ELX_CLI="$PWD/target/debug/elx" PYTHONPATH="$PWD/.cache/py" \
    "$work/venv/bin/python" -m pytest -q -p no:cacheprovider python/tests
  exit 0
fi

# aarch64 under qemu. tools/test-aarch64.sh cross-built the library with the default and CLI
# features (in its CARGO_TARGET_DIR, if set): the same set here compiles only the extension.
lib="${CARGO_TARGET_DIR:-$PWD/target}/$target/debug"
ELX_WHEEL_DIR="$work/dist" ELX_WHEEL_PROFILE=dev ELX_WHEEL_FEATURES="${ELX_WHEEL_FEATURES:-eigenlorax/cli}" \
  tools/build-python-wheel.sh --target "$target" >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
root="$(tools/aarch64-python.sh)"
# The x86_64 packages of .cache/py (numpy, safetensors) must not shadow the aarch64 ones.
unset PYTHONPATH
wheels="$PWD/.cache/aarch64-python/wheels"
qemu=(qemu-aarch64 -L "$root")
"${qemu[@]}" "$root/usr/bin/python3.11" -m venv --without-pip "$work/venv"
python=("${qemu[@]}" "$work/venv/bin/python")
# pip itself runs from its wheel; the package and its test dependencies from the aarch64
# wheels only (--no-index): numpy and safetensors are native code.
pip_wheel="$(ls "$wheels"/pip-*.whl | head -n 1)"
"${python[@]}" "$pip_wheel/pip" install --quiet --disable-pip-version-check --no-index \
  --find-links "$wheels" "$work"/dist/*.whl numpy safetensors pytest
"${python[@]}" -c 'import platform, eigenlorax; assert platform.machine() == "aarch64", platform.machine()'
# The aarch64 `elx`, under qemu, for the tests' comparisons with the CLI (the emulated
# Python cannot exec an aarch64 binary itself: no binfmt_misc here).
cat >"$work/elx" <<EOF
#!/bin/sh
exec qemu-aarch64 -L /usr/aarch64-linux-gnu "$lib/elx" "\$@"
EOF
chmod +x "$work/elx"
elx=("$work/elx")
readme_example "${python[@]}"
ELX_REPO="$PWD" ELX_CLI="$work/elx" "${python[@]}" -m pytest -q -p no:cacheprovider python/tests \
  -k "test_extract_equals_cli or test_state_dicts_give or test_project_and_reconstruct or test_runtime_equals_cli or test_tasks_swap_and_mix or test_bad_inputs_raise or test_a_thread_runs"
