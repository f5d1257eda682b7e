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

# The subset covers every pipeline stage; see README "Edge targets".
subset=(${ELX_AARCH64_TESTS:-})
if [ ${#subset[@]} -eq 0 ]; then
  for t in tests/adapter_*.rs tests/subspace_*.rs tests/bundle_*.rs tests/runtime_*.rs tests/finetune_*.rs; do
    [ -f "$t" ] && subset+=("$(basename "$t" .rs)")
  done
fi
args=()
for t in "${subset[@]}"; do args+=(--test "$t"); done
echo "aarch64: building and running under qemu: lib unit tests + ${subset[*]}"
cargo test --target "$target" --lib "${args[@]}"
