#!/usr/bin/env bash
# Cross-builds eigenlorax for aarch64-unknown-linux-gnu (default features: tract, pure Rust)
# and runs a named subset of the test suite under qemu-user. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu

need_apt=()
command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || need_apt+=(qemu-user)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

# The subset covers every pipeline stage; see README "Edge targets". One test binary per
# stage (tests/<stage>/main.rs); tests are left out by module:
# * those that spawn the `elx` binary (runtime cli_bind, finetune cli): under cargo's runner
#   only the test binary itself goes through qemu. The CLI is checked below under qemu.
# * training through tract on tiny-BERT (finetune tract): 25 s natively and well over 10 min
#   emulated; the finetune grad/train modules cover the finetune steps, runtime tinybert the
#   tract runtime.
# * the MiniLM-sized import and tokenizer checks (runtime import_hf, tokenizer_parity): ~25 s
#   natively and many minutes emulated; the graph builder and the tokenizer are
#   architecture-independent Rust, and the x86_64 vs aarch64 comparison below runs the same
#   runtime on both.
# * exact gradients: the tiny-BERT check against f64 finite differences runs (its Python
#   reference runs natively); the CLI fallback spawns `elx`, and the MiniLM check is
#   MiniLM-sized, so both are left out.
# ELX_AARCH64_TESTS names test binaries to run instead (whole, nothing left out).
subset=(${ELX_AARCH64_TESTS:-})
# The Python references (numpy, onnx, onnxruntime) that tools/test.sh installed.
export PYTHONPATH="$PWD/.cache/py:$PWD/.cache/ort${PYTHONPATH:+:$PYTHONPATH}"
echo "aarch64: building and running under qemu: lib unit tests + ${subset[*]:-adapter subspace bundle runtime runtime_alloc finetune}"
cargo test --target "$target" --lib
if [ ${#subset[@]} -gt 0 ]; then
  args=()
  for t in "${subset[@]}"; do args+=(--test "$t"); done
  cargo test --target "$target" "${args[@]}"
else
  # The energy rule's 32-case check (pure f64 math, several minutes under qemu) runs on the
  # host suite only.
  cargo test --target "$target" --test adapter --test subspace --test bundle --test runtime_alloc \
    -- --skip topk::energy_rule_from_trace_and_top_values_matches_full_spectrum
  cargo test --target "$target" --test runtime -- --skip cli_bind:: --skip import_hf:: --skip tokenizer_parity::
  cargo test --target "$target" --test finetune -- --skip cli:: --skip tract:: --skip exact::finetune_ --skip exact::minilm_
fi

# The same runtime run on both architectures: the tiny BERT fixture, a bundle of task0..4,
# held-out task5 projected into it, pooled outputs compared within 1e-5.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cargo build -q --bin elx
cargo build -q --bin elx --target "$target"
x86=target/debug/elx
arm=(qemu-aarch64 -L /usr/aarch64-linux-gnu "target/$target/debug/elx")
"$x86" extract models/fixtures/adapters/task{0,1,2,3,4} -o "$work/d.elxb" >/dev/null
"$x86" bind "$work/d.elxb" --base models/fixtures/tiny-bert/model.onnx >/dev/null
"$x86" project models/fixtures/adapters/task5 --bundle "$work/d.elxb" -o "$work/t5.elxc" >/dev/null
python3 tools/compare_arch_outputs.py ids models/fixtures/data/task5.safetensors test.input_ids 8 "$work/ids.npy"
run_args=(run --model models/fixtures/tiny-bert/model.onnx --bundle "$work/d.elxb" --task "$work/t5.elxc" --input "$work/ids.npy" --json)
"$x86" "${run_args[@]}" > "$work/x86.jsonl"
"${arm[@]}" "${run_args[@]}" > "$work/arm.jsonl"
python3 tools/compare_arch_outputs.py compare "$work/x86.jsonl" "$work/arm.jsonl" 1e-5

# The C API cross-built for aarch64: examples/c and the C API test built with
# aarch64-linux-gnu-gcc against libelx (shared and static) and run under qemu, compared with
# the aarch64 `elx` run under qemu (tools/test-capi.sh).
tools/test-capi.sh --target "$target"
