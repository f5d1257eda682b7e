#!/usr/bin/env bash
# The C API (capi/, include/eigenlorax.h) tested from C, on the host or, with
# `--target aarch64-unknown-linux-gnu`, cross-built and run under qemu-user
# (tools/test-aarch64.sh). Called by tools/test.sh after the Rust suite. It:
# * builds libelx (shared and static) and the `elx` CLI for the target;
# * on the host, checks include/eigenlorax.h against the code (capi/tests/header.rs);
# * builds examples/c/classify.c against the shared and against the static library, and
#   checks that both print exactly what `elx run --json` prints for the same two tasks and
#   texts, and that the task they train in slices (and resume from a checkpoint) is byte for
#   byte the task `elx finetune` trains on the same data;
# * builds capi/tests/c/api_test.c (bad input, threads) and runs it; its error for a missing
#   task file must be `elx run`'s.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/ci/steps.sh
target=""
if [ "${1:-}" = "--target" ]; then target=$2; fi

if [ -z "$target" ]; then
  cc=gcc
  run=()
  # tools/test.sh built libelx and `elx` in its one `cargo test "${suite_targets[@]}"`
  # (and ran capi/tests/header.rs there): asking that same build where they are compiles
  # nothing. A `cargo build` would resolve the features without the dev-dependencies and
  # compile the whole tree a second time (2 GB of disk, ~2 min).
  lib="$(cargo test -q "${suite_targets[@]}" --no-run --message-format=json |
    python3 -c 'import json, os, sys
dirs = [os.path.dirname(f) for line in sys.stdin for f in json.loads(line).get("filenames") or []
        if os.path.basename(f) == "libelx.so"]
print(dirs[0] if dirs else "")')"
  [ -n "$lib" ] || { echo "test-capi: the suite's build made no libelx.so" >&2; exit 1; }
  elx_bin=$PWD/target/debug/elx
else
  cc=aarch64-linux-gnu-gcc
  # tools/test-aarch64.sh cross-built the same selection (in its CARGO_TARGET_DIR, if set).
  lib="${CARGO_TARGET_DIR:-$PWD/target}/$target/debug"
  run=(qemu-aarch64 -L /usr/aarch64-linux-gnu -E "LD_LIBRARY_PATH=$lib")
  cargo build -q --target "$target" --workspace --lib --bins
fi
elx=("${run[@]}" "${elx_bin:-$lib/elx}")
host_elx=target/debug/elx
[ -x "$host_elx" ] || cargo build -q --bin elx

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
model=models/fixtures/tiny-bert/model.onnx
tok=tests/ort_support/tokenizer.json
# A bundle of task0..4 bound to the tiny BERT; tasks 1 and 5 with their heads, task 2 without.
"$host_elx" extract models/fixtures/adapters/task{0,1,2,3,4} -o "$work/d.elxb" >/dev/null
"$host_elx" bind "$work/d.elxb" --base "$model" >/dev/null
for t in 1 5; do
  "$host_elx" project models/fixtures/adapters/task$t --bundle "$work/d.elxb" -o "$work/t$t.elxc" \
    --head models/fixtures/adapters/task$t/head.safetensors >/dev/null
done
"$host_elx" project models/fixtures/adapters/task2 --bundle "$work/d.elxb" -o "$work/headless.elxc" >/dev/null

cflags=(-std=c99 -D_POSIX_C_SOURCE=200809L -O1 -Wall -Wextra -Werror -Iinclude)
"$cc" "${cflags[@]}" examples/c/classify.c -L"$lib" -lelx -o "$work/classify_shared"
# The static library needs the system libraries Rust's std links; tract's assembly objects
# carry no .note.GNU-stack, hence noexecstack.
"$cc" "${cflags[@]}" examples/c/classify.c "$lib/libelx.a" -lpthread -ldl -lm \
  -Wl,-z,noexecstack -o "$work/classify_static"
"$cc" "${cflags[@]}" capi/tests/c/api_test.c -L"$lib" -lelx -lpthread -lm -o "$work/api_test"
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

texts=(--text "hello world" --text "the movie" --text "unbelievable movies!" --text "hello, the world")
"${elx[@]}" run --model "$model" --bundle "$work/d.elxb" --tokenizer "$tok" \
  --task "$work/t1.elxc" --task "$work/t5.elxc" "${texts[@]}" --json >"$work/cli.jsonl"
for kind in shared static; do
  mkdir -p "$work/$kind"
  "${run[@]}" "$work/classify_$kind" "$model" "$work/d.elxb" "$tok" "$work/t1.elxc" "$work/t5.elxc" \
    "$work/$kind" >"$work/$kind/c.jsonl"
  python3 tools/compare_json_lines.py "$work/$kind/c.jsonl" "$work/cli.jsonl"
done
"${elx[@]}" finetune --model "$model" --bundle "$work/d.elxb" --tokenizer "$tok" \
  --train "$work/shared/train.jsonl" --val "$work/shared/val.jsonl" -o "$work/cli_ft.elxc" \
  --task ft --steps 6 --eval-every 2 --batch-size 4 --seed 3 >/dev/null
for f in shared/c_slices shared/c_resumed static/c_slices; do
  cmp "$work/cli_ft.elxc" "$work/$f.elxc"
done
echo "C example: elx run's output exactly; the task trained in slices (and resumed) is elx finetune's, byte for byte"

# The same on ONNX Runtime's CPU provider (host: libelx has the `ort` feature there and
# tools/test.sh installs libonnxruntime).
if [ -z "$target" ] && [ -n "${ORT_DYLIB_PATH:-}" ]; then
  mkdir -p "$work/ort"
  ELX_BACKEND=ort "$work/classify_shared" "$model" "$work/d.elxb" "$tok" "$work/t1.elxc" \
    "$work/t5.elxc" "$work/ort" >"$work/ort/c.jsonl" 2>"$work/ort/stderr"
  grep -q "engine: ONNX Runtime" "$work/ort/stderr"
  "$host_elx" run --backend ort --model "$model" --bundle "$work/d.elxb" --tokenizer "$tok" \
    --task "$work/t1.elxc" --task "$work/t5.elxc" "${texts[@]}" --json >"$work/ort/cli.jsonl"
  python3 tools/compare_json_lines.py "$work/ort/c.jsonl" "$work/ort/cli.jsonl"
  "$host_elx" finetune --backend ort --model "$model" --bundle "$work/d.elxb" --tokenizer "$tok" \
    --train "$work/ort/train.jsonl" --val "$work/ort/val.jsonl" -o "$work/ort/cli_ft.elxc" \
    --task ft --steps 6 --eval-every 2 --batch-size 4 --seed 3 >/dev/null
  cmp "$work/ort/cli_ft.elxc" "$work/ort/c_slices.elxc"
  cmp "$work/ort/cli_ft.elxc" "$work/ort/c_resumed.elxc"
  echo "C example on ONNX Runtime (CPU): elx run --backend ort's output exactly, elx finetune --backend ort's task"
fi

# examples/c/generate.c on the tiny Llama (tests/fixtures/tiny_llama): greedy, the text
# `elx generate --json` streams, piece by piece, and the same finish reason.
"$host_elx" import-gguf tests/fixtures/tiny_llama/tiny_llama.gguf -o "$work/llama" >/dev/null
"$cc" "${cflags[@]}" examples/c/generate.c -L"$lib" -lelx -o "$work/generate_c"
same_generation() { # C_OUTPUT CLI_JSONL
  python3 - "$1" "$2" <<'PY'
import json, sys
c = open(sys.argv[1], encoding="utf-8").read()
lines = [json.loads(l) for l in open(sys.argv[2], encoding="utf-8")]
text = "".join(l.get("text", "") for l in lines)
finish = {"stop": 0, "length": 1, "context": 2, "caller": 3}[lines[-1]["finish"]]
want = f"{text}\nfinish: {finish}\n"
assert c == want, f"C example {c!r} != elx generate {want!r}"
PY
}
"${run[@]}" "$work/generate_c" "$work/llama" "hello world" 12 >"$work/gen_c.txt"
"${elx[@]}" generate --model "$work/llama" --prompt "hello world" --max-tokens 12 --json \
  >"$work/gen_cli.jsonl"
same_generation "$work/gen_c.txt" "$work/gen_cli.jsonl"
echo "C generate example: elx generate's text and finish reason"
# 4-bit base weights on ONNX Runtime (elx_generator_open_weights): the tiny Llama's products
# reduce over 64 and 128 values, so every one is stored as Q4_1 blocks.
if [ -z "$target" ] && [ -n "${ORT_DYLIB_PATH:-}" ]; then
  ELX_BACKEND=ort ELX_WEIGHTS=q4_1 "$work/generate_c" "$work/llama" "hello world" 12 \
    >"$work/gen_c_q41.txt"
  "$host_elx" generate --model "$work/llama" --prompt "hello world" --max-tokens 12 --json \
    --backend ort --weights q4_1 >"$work/gen_cli_q41.jsonl"
  same_generation "$work/gen_c_q41.txt" "$work/gen_cli_q41.jsonl"
  if ELX_WEIGHTS=q4_1 "$work/generate_c" "$work/llama" "hello" 2 >/dev/null 2>"$work/q41_tract.err"; then
    echo "q4_1 weights on tract were not refused" >&2
    exit 1
  fi
  grep -q -- "--backend ort" "$work/q41_tract.err"
  echo "C generate example, q4_1 weights on ONNX Runtime: elx generate --weights q4_1's text"
fi

"${run[@]}" "$work/api_test" "$model" "$work/d.elxb" "$tok" "$work/t1.elxc" "$work/t5.elxc" \
  "$work/headless.elxc" >"$work/api.out"
want="$("${elx[@]}" run --model "$model" --bundle "$work/d.elxb" --task /nonexistent/task.elxc --text x 2>&1 >/dev/null || true)"
got="$(grep '^ERR-TASK ' "$work/api.out" | sed 's/^ERR-TASK /error: /')"
if [ "$want" != "$got" ]; then
  echo "the C API's error differs from elx run's: '$got' vs '$want'" >&2
  exit 1
fi
echo "C API test passed${target:+ ($target under qemu)}"
