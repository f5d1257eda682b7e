#!/usr/bin/env bash
# Cross-builds eigenlorax for aarch64-unknown-linux-gnu once (default features: tract, pure
# Rust) and runs under qemu-user the part of the suite where ARM can differ: numerics (faer's
# decompositions, the f16/bf16/int8 storage), the SIMD kernels (tract's NEON kernels behind the
# tiny BERT runs and the training steps), file formats and the C API; then compares the
# x86_64 and aarch64 `elx run` outputs. Installs what it needs. Every test left out here runs
# on x86_64 in tools/test.sh.
#
# CI (.ci/run) runs it beside tools/test.sh with its own CARGO_TARGET_DIR and
# ELX_AARCH64_AWAIT_HOST_ELX=1: it then waits for the x86_64 `elx` that tools/test.sh
# builds (after installing the Python references) instead of building one itself.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/ci/steps.sh
target=aarch64-unknown-linux-gnu
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"

toolchain() {
  local need=()
  command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
  command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  rustup target list --installed | grep -qx "$target" || rustup target add "$target"
}

# The test binaries of the subset, the `elx` CLI, libelx (shared and static) and the Python
# extension: one feature set (every invocation here, in tools/test-capi.sh and in the wheel's
# build resolves to the same one, so the library builds once; leaving the Python crate out
# of this build would change its dependencies' features and build the library again for the
# wheel, about 3 min).
stage_tests=(adapter subspace bundle runtime runtime_alloc finetune decoder)
cross_build() {
  cargo build -q --target "$target" --workspace --lib --bins
  local args=()
  for t in "${stage_tests[@]}"; do args+=(--test "$t"); done
  cargo test -q --target "$target" --no-run --lib "${args[@]}"
}

# Left out under qemu (each runs on x86_64 in tools/test.sh):
# * tests that spawn the `elx` binary (runtime cli_bind and tinybert::text_batches_, finetune
#   cli): under cargo's runner only the test binary goes through qemu; the CLI is checked
#   under qemu below instead;
# * the MiniLM-sized import and tokenizer checks (runtime import_hf, tokenizer_parity;
#   finetune exact::minilm_) and training through tract on tiny-BERT (finetune tract,
#   exact::finetune_): many minutes emulated; the graph builder and the tokenizer are
#   architecture-independent Rust, and the runs below use the same kernels;
# * the f64 finite-difference check of the exact gradients (exact::tiny_bert_): 12 s natively,
#   224 s emulated; the training steps of finetune train/grad run the same kernels on ARM;
# * the statistics of the diagnostics on random pools (lib eval::): what they measure is not
#   architecture-dependent, and the decompositions under them run in subspace below;
# * the top-K solver against full decompositions at d = 600-1000 (subspace topk, 7.5 min
#   emulated): the solver's certified bound and its fallback run here in the lib's
#   subspace::topk unit test, the decompositions in subspace extract/project/select.
# ELX_AARCH64_TESTS names test binaries to run whole instead.
emulated_tests() {
  # The Python references (numpy, onnx, onnxruntime) that tools/test.sh installed run natively.
  export PYTHONPATH="$PWD/.cache/py:$PWD/.cache/ort${PYTHONPATH:+:$PYTHONPATH}"
  if [ -n "${ELX_AARCH64_TESTS:-}" ]; then
    local args=()
    for t in $ELX_AARCH64_TESTS; do args+=(--test "$t"); done
    cargo test -q --target "$target" "${args[@]}"
    return
  fi
  cargo test -q --target "$target" --lib -- --skip eval::
  cargo test -q --target "$target" --test adapter --test bundle --test runtime_alloc
  cargo test -q --target "$target" --test subspace -- --skip topk::
  cargo test -q --target "$target" --test runtime -- --skip cli_bind:: --skip tinybert::text_batches_ \
    --skip import_hf:: --skip tokenizer_parity::
  cargo test -q --target "$target" --test finetune -- --skip cli:: --skip tract:: --skip exact::finetune_ \
    --skip exact::minilm_ --skip exact::tiny_bert_
  # The tiny Llama imported from its GGUF and HF folder, generating through a bound bundle
  # on ARM: transformers' logits and tokens, as on x86_64.
  cargo test -q --target "$target" --test decoder -- reference:: graph::
}

# The same runtime run on both architectures: the tiny BERT fixture, a bundle of task0..4,
# held-out task5 projected into it, pooled outputs compared within 1e-5.
compare_outputs() {
  local work
  work="$(mktemp -d)"
  local x86=target/debug/elx
  local arm=(qemu-aarch64 -L /usr/aarch64-linux-gnu "$target_dir/$target/debug/elx")
  "$x86" extract models/fixtures/adapters/task{0,1,2,3,4} -o "$work/d.elxb" >/dev/null
  "$x86" bind "$work/d.elxb" --base models/fixtures/tiny-bert/model.onnx >/dev/null
  "$x86" project models/fixtures/adapters/task5 --bundle "$work/d.elxb" -o "$work/t5.elxc" >/dev/null
  python3 tools/compare_arch_outputs.py ids models/fixtures/data/task5.safetensors test.input_ids 8 "$work/ids.npy"
  local run_args=(run --model models/fixtures/tiny-bert/model.onnx --bundle "$work/d.elxb" --task "$work/t5.elxc" --input "$work/ids.npy" --json)
  "$x86" "${run_args[@]}" >"$work/x86.jsonl"
  "${arm[@]}" "${run_args[@]}" >"$work/arm.jsonl"
  python3 tools/compare_arch_outputs.py compare "$work/x86.jsonl" "$work/arm.jsonl" 1e-5
  rm -rf "$work"
}

# The x86_64 `elx` (compare_outputs, tools/test-capi.sh): CI's x86_64 lane builds it with
# the suite; run alone, this script builds it.
host_elx() {
  if [ -z "${ELX_AARCH64_AWAIT_HOST_ELX:-}" ]; then
    [ -x target/debug/elx ] || cargo build -q --bin elx
    return
  fi
  local waited=0
  until [ -x target/debug/elx ]; do
    if [ "$waited" -ge 3600 ]; then
      echo "aarch64 lane: no target/debug/elx from the x86_64 lane after 1 h" >&2
      return 1
    fi
    sleep 5
    waited=$((waited + 5))
  done
}

step "aarch64: toolchain (apt, rustup target)" toolchain
step "aarch64: cross-build (tests, elx, libelx)" cross_build
step "aarch64: the x86_64 elx (built by the suite)" host_elx
step "aarch64: tests under qemu" emulated_tests
step "aarch64: x86_64 vs aarch64 outputs" compare_outputs
# examples/c and the C API test built with aarch64-linux-gnu-gcc against libelx (shared and
# static) and run under qemu, compared with the aarch64 `elx` under qemu (tools/test-capi.sh).
step "aarch64: C API from C under qemu" tools/test-capi.sh --target "$target"
# The Python wheel cross-built for aarch64, pip-installed into a venv of Debian's aarch64
# CPython and tested under qemu: the README's example and python/tests against the aarch64
# `elx` (tools/test-python.sh).
step "aarch64: Python wheel under qemu" tools/test-python.sh --target "$target"
