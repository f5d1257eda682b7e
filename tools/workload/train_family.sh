#!/bin/sh
# Train every task of a family (default models/wordnet), two chains on two cores (one torch
# thread each), then write <family>/results.json. Run from the repository root:
#   PY=.cache/torchenv/bin/python nohup sh tools/workload/train_family.sh > .cache/train_family.log 2>&1 &
set -e
FAMILY=${FAMILY:-models/wordnet}
PY=${PY:-python3}
tasks=$($PY -c "import json,sys; print(' '.join(json.load(open('$FAMILY/data/summary.json'))['tasks']))")
chain() {
  for t in "$@"; do
    echo "== $t $(date -u +%H:%M:%S)"
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $PY tools/workload/train_family.py --family "$FAMILY" --task "$t" 2>&1 | grep '^{'
  done
}
even=""; odd=""; i=0
for t in $tasks; do
  if [ $((i % 2)) -eq 0 ]; then even="$even $t"; else odd="$odd $t"; fi
  i=$((i + 1))
done
chain $even &
chain $odd
wait
$PY tools/workload/train_family.py --family "$FAMILY" --aggregate
echo "== done $(date -u +%H:%M:%S)"
