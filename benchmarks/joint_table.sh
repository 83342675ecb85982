#!/usr/bin/env bash
# Joint vs single-backbone distillation on CPU-sized backbones: the README's joint table.
#
#   SEEDS="0 1 2" STEPS=800 OUT=runs/joint-table bash benchmarks/joint_table.sh
#
# STAGE=distill runs only the distillations (start one per core with different
# SEEDS), STAGE=eval only the evaluation of the seeds in SEEDS; default: both.
# DRY_RUN=1 prints every command (one per line, shell-quoted) instead of running
# it: the smoke path, whose commands tests/test_benchmarks.py parses with lgm's
# own CLI; joint_table_summary.py --smoke covers the summary.
#
#   DRY_RUN=1 SEEDS=0 bash benchmarks/joint_table.sh
#
# Distilling backbones effnet_lite0 and effnet_lite1 (both any-resolution, so
# the whole table fits a CPU; issue 9's pair with opennsfw_resnet50 at 224 px
# does not), Fashion-MNIST, 1 image per class, the demo's settings (64 px seen
# whole, A = 4, lr 1e-2, init from real, exact real gradient over a cache of
# 2 views of 1,000 images per class). Sets: single lite0, single lite1, joint
# `all`, joint `sample`, one per seed. Every set is probed (SPEC §6, 5 probe
# seeds) on lite0, lite1 and lite2 (never distilled on) by `lgm crossmodel`;
# the real baselines (centroids, 5 random selections) are chosen on each
# evaluating backbone and probed on it. Finished runs are not redone. The table
# (mean ± std over the distillation seeds) is printed and written to OUT/table.md.
set -euo pipefail
SEEDS=${SEEDS:-"0 1 2"}
STEPS=${STEPS:-800}
OUT=${OUT:-runs/joint-table}
LGM=${LGM:-lgm}
PYTHON=${PYTHON:-python3}
STAGE=${STAGE:-all}
DRY_RUN=${DRY_RUN:-}
EVAL_BACKBONES=(effnet_lite0 effnet_lite1 effnet_lite2)
common=(--dataset fashion-mnist --steps "$STEPS" --augs 4 --lr 1e-2 --init real --res 64 --crop 64
        --real-features cached --real-gradient full --cache-per-class 1000 --cache-views 2 --no-progress)

run() {
  if [ -n "$DRY_RUN" ]; then printf '%q ' "$@"; echo; else "$@"; fi
}

runs=()
for seed in $SEEDS; do
  runs+=("$OUT/lite0_s$seed" "$OUT/lite1_s$seed" "$OUT/joint-all_s$seed" "$OUT/joint-sample_s$seed")
  [ "$STAGE" = eval ] && continue
  run $LGM distill "${common[@]}" --seed "$seed" --backbone effnet_lite0 --out "$OUT/lite0_s$seed"
  run $LGM distill "${common[@]}" --seed "$seed" --backbone effnet_lite1 --out "$OUT/lite1_s$seed"
  run $LGM distill "${common[@]}" --seed "$seed" --backbone effnet_lite0,effnet_lite1 --out "$OUT/joint-all_s$seed"
  run $LGM distill "${common[@]}" --seed "$seed" --backbone effnet_lite0,effnet_lite1 --backbone-schedule sample \
      --out "$OUT/joint-sample_s$seed"
done
[ "$STAGE" = distill ] && exit 0
run $LGM crossmodel "${runs[@]}" --backbone "${EVAL_BACKBONES[@]}" --out "$OUT/matrix"

for bb in "${EVAL_BACKBONES[@]}"; do
  bl="$OUT/baselines-$bb"
  [ -d "$bl/centroids" ] || run $LGM baselines --dataset fashion-mnist --backbone "$bb" --ipc 1 --res 64 --crop 64 \
      --random-seeds 5 --out "$bl"
  run $LGM crossmodel "$bl"/centroids "$bl"/random_s{0,1,2,3,4} --backbone "$bb" --out "$bl/eval"
done
if [ -n "$DRY_RUN" ]; then
  run $PYTHON "$(dirname "$0")/joint_table_summary.py" "$OUT"
else
  $PYTHON "$(dirname "$0")/joint_table_summary.py" "$OUT" | tee "$OUT/table.md"
fi
