#!/usr/bin/env bash
# The exact commands that made the shipped weights (run from the repo root, CPU, 2 cores).
# Each checkpoint also records its own command line in its metadata (`mfaf models NAME`).
#
#   weights/train_commands.sh train      # 2 models x 2 seeds, all four side by side (~45 min)
#   weights/train_commands.sh eval RUN   # OMBRIA test + Sen1Floods11 chip + BigEarthNet false water
#   weights/train_commands.sh ship RUN NAME [--default]   # into mfaf_cli/weights/ (package data)
#
# Round 3 (issue 8): all 624 OMBRIA train ids (530 train + a seeded 15 % holdout of 94 for
# validation; the holdout depends on --seed), fixed normalisation in Sentinel units (OMBRIA's
# PNGs mapped by weights/fit_ombria_calibration.py), calibration jitter 0.25, MFAFNet-S with the
# head-free RBF MMD on its deep features. Random 128 px crops of the 256 px patches; validation
# on whole patches; the shipped checkpoint of each run is its best validation epoch.
# Round 4 (not shipped; weights/README.md): the same with --epochs 8 --photometric 0.5 and run
# names *-r4-s$seed. All eight runs' metrics, logs and evaluations are in weights/logs/.
# Issue 24 (per-pixel fallback): the SAR-only U-Net `unet-sar-ombria-water`, the same recipe
# (COMMON, OMBRIA, round 3) with --model unet-sar; one seed (seed 0), niced, 1 thread
# (`train-sar`, 2678 s), then `eval runs/unet-sar-r3-s0`, `ship-sar runs/unet-sar-r3-s0` with
# BY_NAME_ONLY and DESCRIPTION as in weights/README.md's card, and `wire-sar`.
set -euo pipefail
DATA=../shared/data/ombria
COMMON=(--epochs 6 --batch-size 8 --tile 128 --photometric 0.25 --normalisation fixed --lr 1e-3
        --weight-decay 0.01 --schedule poly --grad-clip 1.0 --device cpu --threads 1 --overwrite)

case "${1:-}" in
train)
  mkdir -p runs
  for seed in 0 1; do
    mfaf train --dataset ombria --data-root "$DATA" --model mfafnet-s --mmd rbf --mmd-lambda 0.1 \
      --mmd-warmup 0.05 -o "runs/mfafnet-s-r3-s$seed" --seed "$seed" "${COMMON[@]}" \
      > "runs/mfafnet-s-r3-s$seed.log" 2>&1 &
    mfaf train --dataset ombria --data-root "$DATA" --model unet \
      -o "runs/unet-r3-s$seed" --seed "$seed" "${COMMON[@]}" > "runs/unet-r3-s$seed.log" 2>&1 &
  done
  wait
  ;;
train-sar)  # issue 24: the SAR-only fallback (seed 0; add seed 1 where the CPU allows)
  mkdir -p runs
  for seed in ${SEEDS:-0}; do
    nice -n 10 mfaf train --dataset ombria --data-root "$DATA" --model unet-sar \
      -o "runs/unet-sar-r3-s$seed" --seed "$seed" "${COMMON[@]}" > "runs/unet-sar-r3-s$seed.log" 2>&1 &
  done
  wait
  ;;
train-dropout)  # issue 24 item 3: the modality-dropout alternative to a fallback model (not
  # shipped; scored by benchmarks/fallback_chip.py and weights/eval_model.py beside the SAR model)
  mkdir -p runs
  nice -n 10 mfaf train --dataset ombria --data-root "$DATA" --model mfafnet-s --mmd rbf \
    --mmd-lambda 0.1 --mmd-warmup 0.05 --modality-dropout 0.5 -o runs/mfafnet-s-drop-s0 --seed 0 \
    "${COMMON[@]}" > runs/mfafnet-s-drop-s0.log 2>&1
  ;;
resume-sar)  # issue 24: finish a cut run from its saved state
  nice -n 10 mfaf train --resume runs/unet-sar-r3-s0 --threads 1 >> runs/unet-sar-r3-s0.log 2>&1
  ;;
ship-sar)  # $2 = run dir (evaluated): ship it (the fallback of unet-ombria-water after wire-sar)
  # shipped from runs/unet-sar-r3-s0 (best val epoch 4) by name only: below per-patch SAR-Otsu
  python3 weights/make_shipped.py "$2" unet-sar-ombria-water --eval "$2/eval.json" \
    --by-name-only "${BY_NAME_ONLY-OMBRIA test water IoU 0.411 vs SAR-Otsu 0.468 (one threshold per patch); chip 0.566 vs 0.567}" \
    --description "${DESCRIPTION:-SAR-only U-Net (VV), OMBRIA (624 ids), fixed Sentinel normalisation, round 3 recipe, seed 0, best validation epoch (4 of 6): the fallback for missing optical; below per-patch SAR-Otsu on OMBRIA test}"
  ;;
wire-sar)  # the shipped fusion models' default fallback for missing optical, each the better of
  # two ways on OMBRIA test and the chip (weights/README.md): MFAFNet-S maps the pixels itself
  # (0.452 / 0.555-0.559 vs the SAR U-Net's 0.411 / 0.495); the U-Net uses the SAR U-Net
  # (its own `self` gives 0.331 / 0.496)
  python3 weights/set_fallback.py mfafnet-s-ombria-water optical=self
  python3 weights/set_fallback.py unet-ombria-water optical=unet-sar-ombria-water
  ;;
eval)  # $2 = run dir: writes RUN/eval.json
  python3 weights/eval_model.py "$2/best.safetensors" ../shared/data > "$2/eval.json"
  ;;
ship)  # $2 = run dir, $3 = name, $4 = --default or empty
  python3 weights/make_shipped.py "$2" "$3" ${4:-} --eval "$2/eval.json"
  ;;
*)
  echo "usage: $0 train | train-sar | resume-sar | eval RUN_DIR | ship RUN_DIR NAME [--default] | ship-sar RUN_DIR | wire-sar" >&2
  exit 2
  ;;
esac
