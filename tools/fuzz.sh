#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded time (libFuzzer, nightly, ASan): the
# release check of BENCHMARKS.md "Fuzzing". CI does not run it: the stable test suite replays
# the committed corpus and regression inputs instead (tests/fuzz_replay.rs).
#
#   tools/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     # default 30 s each, every target
#   RUNS=1000000 tools/fuzz.sh 0 bundle                # a fixed number of executions instead
#   MERGE=1 tools/fuzz.sh 60                           # then merge new coverage into fuzz/corpus/
#   SANITIZER=none tools/fuzz.sh 60                    # no ASan (faster; for growing the corpus)
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`); both are
# installed when missing. Each run reads the committed corpus (fuzz/corpus/<target>/, read
# only) and fresh seeds made from models/fixtures (fuzz/scratch/<target>/, not committed, where
# libFuzzer writes what it finds). A crash leaves its input in fuzz/artifacts/<target>/ and
# fails the run: once fixed, copy that input into fuzz/regressions/<target>/, where every test
# run replays it for good.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(tensorfile peft kohya bundle coeffs checkpoint onnx_bind npy tokenizer gguf chat_template)
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
  # libFuzzer's instrumentation needs nightly; rustup fetches it from the Rust dist server.
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --quiet
fi

# Seeds. Bundles, coefficient files and checkpoints come from the elx binary of the tests.
# ELX=path picks the binary (e.g. under another CARGO_TARGET_DIR).
elx=""
for b in ${ELX:+"$ELX"} target/release/elx target/debug/elx; do
  if [ -x "$b" ]; then elx=$b; break; fi
done
if [ -z "$elx" ]; then
  cargo build --quiet --release
  elx=target/release/elx
fi
corpus=fuzz/scratch
rm -rf "$corpus"
for t in "${targets[@]}"; do mkdir -p "$corpus/$t" "fuzz/corpus/$t"; done
fx=models/fixtures
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$elx" extract $fx/adapters/task{0,1,2,3,4} -o "$work/b.elxb" --dtype f16 >/dev/null
"$elx" extract $fx/adapters/task{0,1,2,3,4} -o "$work/b8.elxb" --dtype int8 --center --pseudo 2 >/dev/null
"$elx" bind "$work/b.elxb" --base $fx/tiny-bert/model.onnx -o "$work/bound.elxb" >/dev/null
"$elx" project $fx/adapters/task4 --bundle "$work/b.elxb" --head $fx/adapters/task4/head.safetensors -o "$work/c.elxc" >/dev/null
seed() { [ -d "$corpus/$1" ] && cp "$2" "$corpus/$1/$3"; return 0; }
i=0
for a in $fx/adapters/task*; do
  i=$((i + 1))
  seed tensorfile "$a/adapter_model.safetensors" "adapter$i"
  seed tensorfile "$a/head.safetensors" "head$i"
  if [ -d "$corpus/peft" ]; then
    { cat "$a/adapter_config.json"; printf '\377'; cat "$a/adapter_model.safetensors"; } > "$corpus/peft/task$i"
  fi
done
for k in $fx/kohya/*.safetensors; do seed kohya "$k" "$(basename "$k")"; seed tensorfile "$k" "$(basename "$k")"; done
for b in b b8 bound; do seed bundle "$work/$b.elxb" "$b"; done
seed coeffs "$work/c.elxc" c
seed coeffs $fx/adapters/task4/head.safetensors head
for m in $fx/tiny-bert/model.onnx $fx/tiny-gpt2/model.onnx; do
  [ -f "$m" ] && seed onnx_bind "$m" "$(basename "$(dirname "$m")")"
done
if [ -d "$corpus/checkpoint" ]; then
  # A real checkpoint of a short run on the tiny BERT (pre-tokenized rows of task5).
  python3 - "$work/train.jsonl" <<'PY'
import json, random, sys
random.seed(0)
with open(sys.argv[1], "w") as fh:
    for i in range(16):
        fh.write(json.dumps({"input_ids": [1] + [random.randrange(5, 200) for _ in range(6)] + [2], "label": i % 2}) + "\n")
PY
  "$elx" finetune --model $fx/tiny-bert/model.onnx --bundle "$work/bound.elxb" --train "$work/train.jsonl" \
    --steps 4 --batch-size 4 --checkpoint "$work/ck" --checkpoint-every 2 -o "$work/ft.elxc" >/dev/null 2>&1 || true
  [ -f "$work/ck" ] && cp "$work/ck" "$corpus/checkpoint/ck"
fi
if [ -d "$corpus/npy" ]; then
  # Version 1.0 headers: int64 [2, 3], float32 [3], bool [2].
  python3 - "$corpus/npy" <<'PY'
import struct, sys
def npy(path, descr, shape, payload):
    h = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (descr, shape)
    h += " " * (63 - (10 + len(h)) % 64) + "\n"
    with open(path, "wb") as fh:
        fh.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h.encode() + payload)
npy(sys.argv[1] + "/i64", "<i8", "(2, 3)", struct.pack("<6q", 1, 7, 2, 1, 9, 2))
npy(sys.argv[1] + "/f32", "<f4", "(3,)", struct.pack("<3f", 0.5, -1.0, 2.0))
npy(sys.argv[1] + "/bool", "|b1", "(2,)", b"\x01\x00")
PY
fi
if [ -d "$corpus/tokenizer" ]; then
  printf 'w010 w011 w012' > "$corpus/tokenizer/a"
  printf '[CLS] w199 unknown-word \xc3\xa9\xe2\x80\x94' > "$corpus/tokenizer/b"
fi

status=0
for t in "${targets[@]}"; do
  if [ "$secs" -gt 0 ]; then limit=(-max_total_time="$secs"); else limit=(-runs="${RUNS:-1000000}"); fi
  echo "== fuzz $t (${limit[*]})"
  log=$work/$t.log
  rc=0
  cargo +nightly fuzz run --fuzz-dir fuzz -O -s "${SANITIZER:-address}" "$t" "$corpus/$t" "fuzz/corpus/$t" \
    -- "${limit[@]}" -print_final_stats=1 >"$log" 2>&1 || rc=$?
  grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|SUMMARY|==[0-9]+==ERROR)|panicked" "$log" || true
  if [ $rc -ne 0 ] || [ -n "$(ls -A "fuzz/artifacts/$t" 2>/dev/null)" ]; then
    tail -n 30 "$log" >&2
    echo "fuzz: $t found a crash: fuzz/artifacts/$t/" >&2
    status=1
  elif [ "${MERGE:-}" = 1 ]; then
    # Keep what adds coverage to the committed corpus (libFuzzer's -merge=1: the first folder
    # gains the inputs of the others that cover something new).
    mkdir -p "fuzz/corpus/$t"
    before=$(ls "fuzz/corpus/$t" | wc -l)
    cargo +nightly fuzz run --fuzz-dir fuzz -O -s "${SANITIZER:-address}" "$t" "fuzz/corpus/$t" "$corpus/$t" \
      -- -merge=1 >"$log.merge" 2>&1 || { tail -n 20 "$log.merge" >&2; status=1; }
    echo "merge $t: fuzz/corpus/$t $before -> $(ls "fuzz/corpus/$t" | wc -l) inputs"
  fi
done
exit $status
