#!/bin/sh
# Train workload adapters one after the other (one torch thread each), then
# write models/minilm/results.json. Run from the repository root:
#   nohup sh tools/workload/train_all.sh > .cache/train_all.log 2>&1 &
# TASKS="a b" limits/reorders the tasks (e.g. two chains on two cores);
# extra arguments (e.g. --steps 300) go to train_adapters.py.
set -e
cd tools/workload
for t in ${TASKS:-sentiment subjectivity convention2012 debate2016 name_gender language_id}; do
  echo "== $t $(date -u +%H:%M:%S)"
  HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python3 train_adapters.py --task "$t" \
    --data ../../models/minilm/data --out ../../models/minilm/adapters --pydata ../../.cache/pydata "$@"
done
python3 train_adapters.py --aggregate --out ../../models/minilm/adapters
echo "== done $(date -u +%H:%M:%S)"
