#!/usr/bin/env bash
# The exact commands that made the shipped weights (run from the repo root, CPU, 2 cores).
# Each checkpoint also records its own command line in its metadata (`mfaf models NAME`).
#
#   weights/train_commands.sh train      # both models, ~25-30 min each on 2 shared cores
#   weights/train_commands.sh eval       # OMBRIA test split + Sen1Floods11 chip, per model
#   weights/train_commands.sh ship       # copy best checkpoints into mfaf_cli/weights/ + manifest
#
# The shipped weight files and manifest.json are package data in mfaf_cli/weights/ (so wheels
# carry them); the model cards, logs and these scripts stay in weights/.
#
# Data: ../shared/data/ombria (S2 3-channel composite + S1 VV "after" PNG patches, 256x256;
# 156 train ids = 133 train + a seeded 15 % holdout of 23 for validation; 70 test ids).
# Training uses random 128 px crops of the 256 px patches (4x cheaper on CPU); validation and
# test run on whole patches. --photometric 0.15 jitters each band's stretch bounds and gamma
# so the models do not learn the look of OMBRIA's 8-bit product only (round 2; round 1 had
# no jitter and transferred worse to raw Sentinel GeoTIFFs: weights/README.md).
set -euo pipefail
DATA=../shared/data/ombria
S1F=../shared/data/sen1floods11_sample
COMMON=(--epochs 20 --batch-size 8 --tile 128 --photometric 0.15 --lr 1e-3 --weight-decay 0.01
        --schedule poly --grad-clip 1.0 --seed 0 --device cpu --threads 1)

case "${1:-}" in
train)
  mfaf train --dataset ombria --data-root "$DATA" --model mfafnet-s \
    --mmd paired --mmd-lambda 0.1 --mmd-warmup 0.05 -o runs/mfafnet-s-ombria-pj "${COMMON[@]}" \
    > runs/mfafnet-s-ombria-pj.log 2>&1 &
  mfaf train --dataset ombria --data-root "$DATA" --model unet \
    -o runs/unet-ombria-pj "${COMMON[@]}" > runs/unet-ombria-pj.log 2>&1 &
  wait
  ;;
eval)  # $2 = weights file, $3 = run dir for the outputs
  M=$2; R=$3
  mfaf evaluate --model "$M" --dataset ombria --data-root "$DATA" --split test --json --quiet \
    --plot "$R/cm_ombria_test.png" > "$R/eval_ombria_test.json"
  for b in 13,8,4 4,3,2; do   # S2 B12,B8,B4 (the composite OMBRIA looks like) and true colour
    mfaf evaluate --model "$M" --dataset sen1floods11 --data-root "$S1F" --split all \
      --bands optical=$b --bands sar=1 --json --quiet \
      --plot "$R/cm_s1f11_${b//,/_}.png" > "$R/eval_s1f11_${b//,/_}.json"
  done
  ;;
ship)  # $2 = run dir, $3 = name, $4 = --default or empty
  R=$2; N=$3
  python weights/make_shipped.py "$R" "$N" ${4:-} \
    --eval "$R/eval_ombria_test.json:ombria_test" \
    --eval "$R/eval_s1f11_13_8_4.json:sen1floods11_chip_B12_B8_B4" \
    --eval "$R/eval_s1f11_4_3_2.json:sen1floods11_chip_B4_B3_B2"
  ;;
*)
  echo "usage: $0 train | eval WEIGHTS RUN_DIR | ship RUN_DIR NAME [--default]" >&2
  exit 2
  ;;
esac
