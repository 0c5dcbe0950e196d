#!/usr/bin/env bash
# Round 3 training (issue 8): fixed normalisation, head-free RBF MMD, 530 OMBRIA train ids.
set -u
DATA=../shared/data/ombria
COMMON=(--epochs 6 --batch-size 8 --tile 128 --photometric 0.25 --normalisation fixed --lr 1e-3
        --weight-decay 0.01 --schedule poly --grad-clip 1.0 --device cpu --threads 1 --overwrite)
for seed in 0 1; do
  nice -n -10 python3 -m mfaf_cli train --dataset ombria --data-root "$DATA" --model mfafnet-s \
    --mmd rbf --mmd-lambda 0.1 --mmd-warmup 0.05 -o runs/mfafnet-s-r3-s$seed --seed $seed "${COMMON[@]}" \
    > runs/mfafnet-s-r3-s$seed.log 2>&1 &
  nice -n -10 python3 -m mfaf_cli train --dataset ombria --data-root "$DATA" --model unet \
    -o runs/unet-r3-s$seed --seed $seed "${COMMON[@]}" > runs/unet-r3-s$seed.log 2>&1 &
done
wait
