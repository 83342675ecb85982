#!/usr/bin/env bash
# Joint vs single-backbone distillation on CPU-sized backbones: the README's joint table.
#
#   SEEDS="0 1 2" STEPS=800 OUT=runs/joint-table bash benchmarks/joint_table.sh
#
# STAGE=distill runs only the distillations (start one per core with different
# SEEDS), STAGE=eval only the evaluation of the seeds in SEEDS; default: both.
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
STAGE=${STAGE:-all}
EVAL_BACKBONES=(effnet_lite0 effnet_lite1 effnet_lite2)
common=(--dataset fashion-mnist --steps "$STEPS" --augs 4 --lr 1e-2 --init real --res 64 --crop 64
        --real-features cached --real-gradient full --cache-per-class 1000 --cache-views 2 --no-progress)

runs=()
for seed in $SEEDS; do
  runs+=("$OUT/lite0_s$seed" "$OUT/lite1_s$seed" "$OUT/joint-all_s$seed" "$OUT/joint-sample_s$seed")
  [ "$STAGE" = eval ] && continue
  $LGM distill "${common[@]}" --seed "$seed" --backbone effnet_lite0 --out "$OUT/lite0_s$seed"
  $LGM distill "${common[@]}" --seed "$seed" --backbone effnet_lite1 --out "$OUT/lite1_s$seed"
  $LGM distill "${common[@]}" --seed "$seed" --backbone effnet_lite0,effnet_lite1 --out "$OUT/joint-all_s$seed"
  $LGM distill "${common[@]}" --seed "$seed" --backbone effnet_lite0,effnet_lite1 --backbone-schedule sample \
      --out "$OUT/joint-sample_s$seed"
done
[ "$STAGE" = distill ] && exit 0
$LGM crossmodel "${runs[@]}" --backbone "${EVAL_BACKBONES[@]}" --out "$OUT/matrix"

for bb in "${EVAL_BACKBONES[@]}"; do
  bl="$OUT/baselines-$bb"
  [ -d "$bl/centroids" ] || $LGM baselines --dataset fashion-mnist --backbone "$bb" --ipc 1 --res 64 --crop 64 \
      --random-seeds 5 --out "$bl"
  $LGM crossmodel "$bl"/centroids "$bl"/random_s{0,1,2,3,4} --backbone "$bb" --out "$bl/eval"
done
python3 "$(dirname "$0")/joint_table_summary.py" "$OUT" | tee "$OUT/table.md"
